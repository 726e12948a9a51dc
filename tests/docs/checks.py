"""The documentation checks. Each takes the documents as {path: text} (and the code facts) and
returns the problems it found as lines naming the document, the line and what is wrong, so
`test_docs.py` can run it on the real tree and, in its self-tests, on made-up documents that
must fail.
"""
from __future__ import annotations

import pathlib
import re

import docsrc
import rustsrc

ROOT = rustsrc.ROOT

# Where variables that no binary reads may legitimately come from (the local stack's, the
# scripts' and the tests' own variables, the chart's containers): a documented name must occur
# as a word in one of these.
OTHER_SOURCES = ["scripts", "Makefile", "tests", "crates/statecast-testkit/src", "charts/statecast/templates",
                 ".ci"]

# Defaults the docs describe in words (or with a placeholder the code computes), each with the
# place in the code that computes it: the pattern must occur in the file, so the entry fails once
# the code changes. Keyed by (variable, the default cell as written).
COMPUTED_DEFAULTS = {
    ("DLQ_TOPIC", "`<first topic>.dlq`"):
        ("crates/profile-consumer/src/config.rs", r'format!\(\s*"\{\}\.dlq"'),
    ("KAFKA_START_POSITION", "`latest` for `email`, `earliest` otherwise"):
        ("crates/profile-consumer/src/config.rs",
         r"Self::Email => StartPosition::Latest,\s*Self::Audit \| Self::Analytics \| Self::CacheRefresh => StartPosition::Earliest"),
    ("KAFKA_SSL_CA_LOCATION", "`probe` with `ssl`/`sasl_ssl`"):
        ("crates/statecast-kafka/src/settings.rs", r'pub const CA_PROBE: &str = "probe";'),
    ("KAFKA_SSL_CA_LOCATION", "`probe` (system CAs) with TLS"):
        ("crates/statecast-kafka/src/settings.rs", r'pub const CA_PROBE: &str = "probe";'),
    ("OTEL_SERVICE_NAME", "the binary's name"):
        ("crates/statecast-telemetry/src/lib.rs", r"otel_service_name\s*\.or_else\(from_attributes\)\s*\.unwrap_or\(default\)"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "`grpc`"):
        ("crates/statecast-telemetry/src/lib.rs", r"None => Ok\(OtlpProtocol::Grpc\)"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "`OTEL_EXPORTER_OTLP_PROTOCOL`"):
        ("crates/statecast-telemetry/src/lib.rs", r"var\(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL\)[\s\S]*?\.or_else\(\|\| \{\s*var\(OTEL_EXPORTER_OTLP_PROTOCOL\)"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "`OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces` for `http/protobuf`)"):
        ("crates/statecast-telemetry/src/lib.rs", r'OtlpProtocol::HttpProtobuf => format!\("\{\}/v1/traces"'),
    ("RUST_LOG", "`info`"):
        ("crates/statecast-telemetry/src/lib.rs", r'var\("RUST_LOG"\)\.unwrap_or_else\(\|\| "info"\.to_owned\(\)\)'),
    ("RUST_LOG", "`info,kube=warn`"):
        ("crates/profile-operator/src/main.rs", r'if std::env::var_os\("RUST_LOG"\)\.is_none\(\) \{\s*telemetry_config\.log_filter = "info,kube=warn"'),
    ("LOG_FORMAT", "`json`"):
        ("crates/statecast-telemetry/src/lib.rs", r"_ => LogFormat::Json"),
    ("OTEL_SDK_DISABLED", "`false`"):
        ("crates/statecast-telemetry/src/lib.rs", r'var\("OTEL_SDK_DISABLED"\)\.is_some_and\(\|v\| v\.eq_ignore_ascii_case\("true"\)\)'),
    ("HOSTNAME", "set by the container runtime"):
        ("crates/profile-operator/src/main.rs", r'\.or_else\(\|\| std::env::var\("HOSTNAME"\)\.ok\(\)\)'),
}

# Headers the binaries send or read through a library rather than a literal of their own.
HEADER_EVIDENCE = {
    "traceparent": ("crates/statecast-telemetry/src/lib.rs", r"TraceContextPropagator::new\(\)"),
    "tracestate": ("crates/statecast-telemetry/src/lib.rs", r"TraceContextPropagator::new\(\)"),
    "message-id": ("crates/profile-consumer/src/handlers/email.rs", r"\.message_id\("),
}

# contracts.md sections: which binary's (or shared crate's) variables each must list.
CONTRACT_SECTIONS = {
    "profile-api": "profile-api (crate `crates/profile-api`)",
    "profile-consumer": "profile-consumer (crate `crates/profile-consumer`)",
    "profile-operator": "profile-operator (crate `crates/profile-operator`)",
    "statecast-kafka": "Kafka client settings",
    "statecast-telemetry": "Telemetry (every binary)",
}


def scope_of(section: str):
    """The crates whose settings a table under this heading describes; None means any."""
    s = section.lower()
    for binary, crates in rustsrc.BINARIES.items():
        if s.startswith(binary):
            return crates
    if "kafka client settings" in s or "secured kafka" in s:
        return ["statecast-kafka"]
    if s.startswith("telemetry"):
        return ["statecast-telemetry"]
    return None


def _word_in_sources(name: str) -> bool:
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")
    for source in OTHER_SOURCES:
        base = ROOT / source
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()] if base.exists() else []
        for path in files:
            if "__pycache__" in path.parts or path.suffix in {".pyc"} or (ROOT / "tests/docs") in path.parents:
                continue
            try:
                if pattern.search(path.read_text(errors="ignore")):
                    return True
            except OSError:
                continue
    return False


def known_env(name: str, env: dict) -> bool:
    """Whether a documented name (possibly `X_*` or `X_<NAME>`) is something the code reads."""
    if name in env:
        return True
    prefixes = [p[:-1] for p in env if p.endswith("*")]
    if name.endswith("_*") or name.endswith(">"):
        stem = name[: name.rfind("_") + 1]
        return any(n.startswith(stem) for n in env) or any(stem.startswith(p) or p.startswith(stem) for p in prefixes)
    return any(name.startswith(p) for p in prefixes)


def check_env_names(docs: dict, env: dict, other_sources=_word_in_sources) -> list:
    """Every variable a document names is read by a binary, or used by a script, a test or the
    chart (the stack's `STATECAST_TLS_*`, `scripts/test`'s `STATECAST_NEED_GB`, ...)."""
    problems = []
    for doc, text in docs.items():
        mentions = (docsrc.env_mentions(text, doc) if not doc.endswith(".env.sample")
                    else [docsrc.Mention(doc, n, name, "") for n, name, _ in docsrc.env_sample(text)])
        for m in mentions:
            if not known_env(m.text, env) and not other_sources(m.text):
                problems.append(f"{doc}:{m.line}: {m.text} is read by no binary, script, test or template")
    return problems


def check_contracts_list_every_variable(contracts: str, env_by_crate: dict) -> list:
    """Every variable a binary reads is named (in a code span) in its section of contracts.md."""
    problems = []
    sections = {}
    current = ""
    for line in contracts.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
        sections.setdefault(current, []).append(line)
    for crate, names in env_by_crate.items():
        title = CONTRACT_SECTIONS[crate]
        if title not in sections:
            problems.append(f"docs/contracts.md: no section '## {title}' for {crate}")
            continue
        spans = {s for _, s in docsrc.code_spans("\n".join(sections[title]))}
        named = set()
        for span in spans:
            named.update(re.findall(docsrc.ENV_NAME + r"|[A-Z][A-Z0-9]+", span))
        for name in sorted(names):
            wanted = name[:-1] + "<NAME>" if name.endswith("*") else name
            if wanted not in named:
                problems.append(f"docs/contracts.md, section '{title}': {wanted} ({crate}) is not documented")
    return problems


def env_by_crate(root: pathlib.Path = ROOT) -> dict:
    """Variables grouped by the crate that reads them: a binary's own, or a shared crate's."""
    out = {}
    for binary, crates in rustsrc.BINARIES.items():
        for crate in crates:
            for arg in rustsrc.clap_args([crate], root):
                out.setdefault(crate, set()).add(arg.env)
            for name in rustsrc.env_reads([crate], root):
                out.setdefault(crate, set()).add(name)
    return out


def _norm(value: str) -> str:
    value = value.strip().strip('"')
    try:
        return repr(float(value.replace("_", "")))
    except ValueError:
        return value


def _placeholder_match(doc_value: str, code_value: str) -> bool:
    if "<" not in doc_value:
        return _norm(doc_value) == _norm(code_value)
    pattern = "".join(".+" if part.startswith("<") else re.escape(part)
                      for part in re.split(r"(<[^>]+>)", doc_value))
    return re.fullmatch(pattern, code_value) is not None or doc_value == code_value


def _computed(name: str, cell: str, root: pathlib.Path) -> str | None:
    """None when the described default is backed by COMPUTED_DEFAULTS, else the problem."""
    entry = COMPUTED_DEFAULTS.get((name, cell.strip()))
    if entry is None:
        return f"default {cell!r} of {name} is neither a literal of the code nor listed in COMPUTED_DEFAULTS"
    path, pattern = entry
    if not re.search(pattern, (root / path).read_text()):
        return f"default {cell!r} of {name}: {path} no longer computes it (/{pattern}/ not found)"
    return None


def check_table_defaults(docs: dict, args: list, env: dict, root: pathlib.Path = ROOT) -> list:
    """Every `| env | default |` row: each variable exists in the binaries of its section (with
    the flag, when the row names one) and has the default the row states."""
    problems = []
    for doc, text in docs.items():
        for row in docsrc.tables(text, doc):
            where = f"{doc}:{row.line}"
            scope = scope_of(row.section)
            in_scope = [a for a in args if scope is None or a.crate in scope]
            names = [n for n in row.names if not n.startswith("--")]
            flags = [n.split()[0] for n in row.names if n.startswith("--")]
            for flag in flags:
                if not any(a.flag == flag for a in args) and flag not in rustsrc.flags(
                        [c for cs in rustsrc.BINARIES.values() for c in cs], root):
                    problems.append(f"{where}: flag {flag} does not exist")
            for flag in flags:
                env_of_flag = {a.env for a in in_scope if a.flag == flag}
                if names and env_of_flag and not env_of_flag & set(names):
                    problems.append(f"{where}: {flag} is the flag of {sorted(env_of_flag)}, not of {names}")
            plain = [n for n in names if not (n.endswith("*") or n.endswith(">"))]
            for name in names:
                if name not in plain:
                    if not known_env(name, env):
                        problems.append(f"{where}: {name} matches no variable")
                    continue
                scoped_env = env if scope is None else rustsrc.env_reads(scope, root)
                if not any(a.env == name for a in in_scope) and name not in scoped_env:
                    problems.append(f"{where}: {name} is not a setting of {scope or 'any binary'}")
            if not row.has_default_column:
                continue
            kind, value = docsrc.parse_default(row.default)
            if kind == "literal" and len(value) != len(plain):
                if len(plain) == 1:
                    kind, value = "described", row.default
                else:
                    problems.append(f"{where}: {len(value)} defaults for {len(plain)} variables {plain}: "
                                    "give one per variable")
                    continue
            for i, name in enumerate(plain):
                defs = [a for a in in_scope if a.env == name]
                if kind == "none":
                    if not defs:
                        continue  # a direct read (RUST_LOG, HOSTNAME, ...): no clap default
                    bad = [a for a in defs if a.default not in (None, "")]
                    if value == "required":
                        bad += [a for a in defs if a.optional or a.boolean]
                    if len(bad) == len(defs):
                        problems.append(f"{where}: {name} is documented as {value or 'without a default'} "
                                        f"but the code's default is {bad[0].default!r}"
                                        + (" and it is optional" if bad[0].default is None else ""))
                elif kind == "literal":
                    doc_value = value[i]
                    with_default = [a for a in defs if a.default is not None]
                    if with_default:
                        if not any(_placeholder_match(doc_value, a.default) for a in with_default):
                            problems.append(f"{where}: {name} default is documented as {doc_value!r}, "
                                            f"the code's is {with_default[0].default!r} ({with_default[0].path})")
                    else:
                        problem = _computed(name, f"`{doc_value}`", root)
                        if problem:
                            problems.append(f"{where}: {problem}")
                else:
                    problem = _computed(name, value, root)
                    if problem:
                        problems.append(f"{where}: {problem}")
    return problems


def check_env_sample(name: str, text: str, args: list, env: dict) -> list:
    """A `.env.sample`: every line is a setting of its binary; an active `NAME=value` line whose
    setting has a default shows that default; and every setting of the binary is listed."""
    problems = []
    listed = set()
    for line, var, value in docsrc.env_sample(text):
        listed.add(var)
        defs = [a for a in args if a.env == var]
        if not defs and not known_env(var, env):
            problems.append(f"{name}:{line}: {var} is not a setting of this binary")
            continue
        with_default = [a for a in defs if a.default is not None]
        if value is not None and with_default and not any(_norm(a.default) == _norm(value) for a in with_default):
            problems.append(f"{name}:{line}: {var}={value} but the default is {with_default[0].default!r}")
    for arg in args:
        if arg.env not in listed:
            problems.append(f"{name}: {arg.env} ({arg.path}) is not listed")
    return problems


def check_flags_follow_variables(args: list) -> list:
    """'Every setting is a flag and an environment variable' of the same name."""
    return [f"{a.path}: {a.env} has flag {a.flag or '(none)'}, not --{a.env.lower().replace('_', '-')}"
            for a in args if a.flag != "--" + a.env.lower().replace("_", "-")]


BINARY_WORDS = ("profile-api", "profile-consumer", "profile-operator")


def check_flags(docs: dict, binary_flags: set, root: pathlib.Path = ROOT) -> list:
    """Flags of the binaries the docs name exist; so do flags given to `scripts/NAME`."""
    problems = []
    for doc, text in docs.items():
        for m in docsrc.flag_mentions(text, doc):
            script = re.search(r"scripts/([\w-]+)", m.context)
            if script:
                path = root / "scripts" / script.group(1)
                if path.is_file() and m.text not in path.read_text():
                    problems.append(f"{doc}:{m.line}: scripts/{script.group(1)} has no {m.text}")
                continue
            command = docsrc.command_of(m.context)
            ours = command.rsplit("/", 1)[-1] in BINARY_WORDS or command == m.text
            if ours and m.text not in binary_flags:
                problems.append(f"{doc}:{m.line}: {m.text} is a flag of no binary ({m.context!r})")
    return problems


def check_metrics(docs: dict, metrics: dict) -> list:
    """Every metric a document names is registered by a binary, with the labels it gives."""
    problems = []
    known = {m.name: m for ms in metrics.values() for m in ms}
    for doc, text in docs.items():
        for m in docsrc.metric_mentions(text, doc):
            metric = known.get(m.text)
            if metric is None:
                problems.append(f"{doc}:{m.line}: metric {m.text} is registered by no binary")
            elif m.context and tuple(sorted(m.context.split(","))) != tuple(sorted(metric.labels)):
                problems.append(f"{doc}:{m.line}: {m.text} has labels {{{','.join(metric.labels)}}}, "
                                f"not {{{m.context}}}")
    return problems


def metrics_table(metrics: dict) -> str:
    """The generated list of docs/operations.md, between its metrics markers."""
    lines = ["| binary | metric | type | labels | meaning |", "|---|---|---|---|---|"]
    for binary, ms in metrics.items():
        for m in ms:
            labels = ", ".join(f"`{l}`" for l in m.labels)
            lines.append(f"| `{binary}` | `{m.name}` | {m.kind} | {labels} | {m.help} |")
    return "\n".join(lines)


METRICS_BEGIN = "<!-- metrics:begin (generated by scripts/docs-check --write; do not edit) -->"
METRICS_END = "<!-- metrics:end -->"


def check_metrics_table(text: str, metrics: dict) -> list:
    if METRICS_BEGIN not in text or METRICS_END not in text:
        return ["docs/operations.md: no generated metrics table (markers missing)"]
    current = text.split(METRICS_BEGIN, 1)[1].split(METRICS_END, 1)[0].strip()
    if current != metrics_table(metrics):
        return ["docs/operations.md: the metrics table differs from the code: run scripts/docs-check --write"]
    return []


def write_metrics_table(path: pathlib.Path, metrics: dict) -> None:
    text = path.read_text()
    head, rest = text.split(METRICS_BEGIN, 1)
    _, tail = rest.split(METRICS_END, 1)
    path.write_text(f"{head}{METRICS_BEGIN}\n{metrics_table(metrics)}\n{METRICS_END}{tail}")


def check_headers(docs: dict, names: set, root: pathlib.Path = ROOT) -> list:
    problems = []
    for doc, text in docs.items():
        for m in docsrc.header_mentions(text, doc):
            name = m.text.lower()
            if name.endswith("*"):
                if not any(n.startswith(name[:-1]) for n in names):
                    problems.append(f"{doc}:{m.line}: no header starts with {m.text[:-1]}")
                continue
            if name in names:
                continue
            evidence = HEADER_EVIDENCE.get(name)
            if evidence and re.search(evidence[1], (root / evidence[0]).read_text()):
                continue
            if name in chart_words(root):
                continue  # the edge's (Envoy Gateway's) header, set by the chart
            problems.append(f"{doc}:{m.line}: header {m.text} is neither sent nor read by a binary or the chart")
    return problems


def _section(text: str, heading: str) -> str:
    """The lines under a `#...` heading (any level) up to the next heading of that level or higher."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s+(.*)$", line)
        if m and m.group(2).strip() == heading:
            level = len(m.group(1))
            out = []
            for rest in lines[i + 1:]:
                n = re.match(r"^(#+)\s", rest)
                if n and len(n.group(1)) <= level:
                    break
                out.append(rest)
            return "\n".join(out)
    return ""


def check_stack_table(readme: str, ports: dict) -> list:
    """The README's local stack table shows exactly the ports `scripts/stack` defaults to."""
    section = _section(readme, "Local stack")
    table = "\n".join(l for l in section.splitlines() if l.startswith("|"))
    shown = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", table)}
    problems = [f"README.md, Local stack: port {p} is not a default of scripts/stack ({sorted(ports.values())})"
                for p in sorted(shown - set(ports.values()))]
    problems += [f"README.md, Local stack: {name}={p} (scripts/stack) is missing from the table"
                 for name, p in sorted(ports.items()) if p not in shown]
    return problems


def _script_defaults(root: pathlib.Path) -> dict:
    """`VAR="${VAR:-value}"` defaults of every script, VAR -> [(script, value)]."""
    out = {}
    for path in sorted((root / "scripts").iterdir()):
        if path.is_file():
            for var, value in re.findall(r'^\s*(\w+)="\$\{\w+:-([^}]*)\}"', path.read_text(errors="ignore"), re.M):
                out.setdefault(var, []).append((f"scripts/{path.name}", value))
    return out


def check_ports_table(text: str, args: list, root: pathlib.Path = ROOT) -> list:
    """docs/operations.md's ports table: each port is the default of a variable its row names
    (a binary's `*_ADDR`, a script's `*_PORT`), or, for a range, the first port a script named
    in the row counts up from; and every default port of the binaries and the stack is listed."""
    problems = []
    section = _section(text, "Ports")
    rows = [docsrc._split_row(l) for l in section.splitlines() if l.startswith("|")][2:]
    if not rows:
        return ["docs/operations.md: no ports table under a 'Ports' heading"]
    scripts = _script_defaults(root)
    listed = set()
    for cells in rows:
        port_cell, rest = cells[0].strip(), " ".join(cells[1:])
        m = re.fullmatch(r"(\d+)(?:\s*[–-]\s*(\d+))?", port_cell)
        if not m:
            problems.append(f"docs/operations.md, Ports: {port_cell!r} is not a port or range")
            continue
        port = int(m.group(1))
        listed.update(range(port, int(m.group(2) or port) + 1))
        variables = set(re.findall(r"`(?:\w+=)?([A-Z][A-Z0-9_]+)", rest))
        ok = any(a.env in variables and a.default and a.default.endswith(f":{port}") for a in args)
        ok |= any(v == str(port) for var in variables for _, v in scripts.get(var, []))
        for script in re.findall(r"`(scripts/[\w-]+)`", rest):
            if m.group(2) and re.search(rf"\bport={port}\b", (root / script).read_text()):
                ok = True
        if not ok:
            problems.append(f"docs/operations.md, Ports: {port_cell} is the default of none of "
                            f"{sorted(variables) or 'the variables'} its row names")
    wanted = {int(v) for var, vs in scripts.items() if var.endswith("_PORT") for s, v in vs
              if s == "scripts/stack" and v.isdigit()}
    wanted |= {int(a.default.rsplit(":", 1)[1]) for a in args if a.env.endswith("_ADDR") and a.default}
    problems += [f"docs/operations.md, Ports: default port {p} is missing" for p in sorted(wanted - listed)]
    return problems


def check_prerequisites(readme: str, root: pathlib.Path = ROOT) -> list:
    """The Rust version and the free disk space the README asks for are the ones Cargo.toml and
    scripts/test ask for."""
    problems = []
    readme = re.sub(r"\s+", " ", readme)
    rust = re.search(r'^rust-version\s*=\s*"([^"]+)"', (root / "Cargo.toml").read_text(), re.M).group(1)
    said = re.findall(r"Rust (?:toolchain )?≥ ?(\d+\.\d+)", readme)
    if not said:
        problems.append("README.md: names no minimum Rust version (Rust ≥ X.Y)")
    problems += [f"README.md: Rust ≥ {v}, but Cargo.toml's rust-version is {rust}" for v in said if v != rust]
    need = re.search(r"STATECAST_NEED_GB:-(\d+)", (root / "scripts/test").read_text()).group(1)
    gb = re.findall(r"below (\d+) GB", readme)
    if not gb:
        problems.append("README.md: does not say how much free disk scripts/test needs (below N GB)")
    problems += [f"README.md: below {g} GB, but scripts/test stops below {need} GB" for g in gb if g != need]
    return problems


def binaries_source(root: pathlib.Path = ROOT) -> str:
    """The production source of every binary, string continuations (`\\` + line break) joined."""
    crates = sorted({c for cs in rustsrc.BINARIES.values() for c in cs})
    text = "\n".join(rustsrc.production_source(p) for c in crates for p in rustsrc.crate_files(c, root))
    return re.sub(r"\\\n\s*", "", text)


def check_startup_messages(text: str, source: str) -> list:
    """The start-up error table of docs/operations.md quotes messages the code prints: every
    literal piece of a quoted message (between `<placeholders>`) occurs in the binaries' source."""
    problems = []
    section = _section(text, "Start-up errors")
    rows = [docsrc._split_row(l) for l in section.splitlines() if l.startswith("|")][2:]
    if not rows:
        return ["docs/operations.md: no start-up error table under 'Start-up errors'"]
    for cells in rows:
        spans = re.findall(r"`([^`]+)`", cells[0])
        if not spans:
            problems.append(f"docs/operations.md, Start-up errors: {cells[0].strip()!r} quotes no message")
        for span in spans:
            # Messages are composed (`{what}: {reason}; {fix}`): compare the pieces between
            # placeholders and separators.
            for piece in re.split(r"<[^>]+>|; |: ", span):
                piece = piece.strip()
                if len(piece) >= 6 and piece not in source:
                    problems.append(f"docs/operations.md, Start-up errors: {piece!r} is printed by no binary")
    return problems


def chart_words(root: pathlib.Path = ROOT) -> set:
    """Lower-case header-shaped words of the chart's templates and values."""
    chart = root / "charts/statecast"
    words = set()
    for path in [chart / "values.yaml", *sorted((chart / "templates").rglob("*"))]:
        if path.is_file():
            words.update(w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+", path.read_text()))
    return words
