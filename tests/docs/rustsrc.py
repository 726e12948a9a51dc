"""What the shipped binaries really read and expose, extracted from their Rust source.

Read, not compiled: clap `#[arg(...)]` definitions (variable, flag, default), direct environment
reads (`std::env::var("X")`, the telemetry crate's lookups), Prometheus metric registrations and
header names. The code is regular enough for this; each extractor is tested against the real tree
(`test_docs.py`) so a change of style that hides a definition fails a test instead of passing
silently.

Test code is left out: `#[cfg(test)]` modules (to the end of the file, as this project writes
them) and files only such modules include (`reconcile_tests.rs`).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The shipped binaries (one image holds all three, docs/contracts.md) and the library crates
# they link whose code runs in them. statecast-bench (`make bench`) and statecast-testkit are
# development tools, not part of what a user configures.
BINARIES = {
    "profile-api": ["profile-api", "statecast-kafka", "statecast-telemetry"],
    "profile-consumer": ["profile-consumer", "statecast-kafka", "statecast-telemetry"],
    "profile-operator": ["profile-operator", "statecast-kafka", "statecast-telemetry"],
}


@dataclasses.dataclass(frozen=True)
class Arg:
    """One clap argument read from an environment variable."""
    crate: str
    struct: str
    field: str
    env: str
    flag: str
    default: str | None       # the default as text ("3600", "user-events"), None without one
    optional: bool            # Option<...>: absent means unset
    boolean: bool
    path: str


@dataclasses.dataclass(frozen=True)
class Metric:
    crate: str
    name: str                 # as exposed: `_total` added to counters, prefixes applied
    kind: str                 # counter | gauge | histogram
    labels: tuple
    help: str


def production_source(path: pathlib.Path) -> str:
    """The file without its `#[cfg(test)]` module(s): this project puts them last."""
    text = path.read_text()
    match = re.search(r"^#\[cfg\(test\)\]\s*\n(?:#\[[^\n]*\]\s*\n)*mod ", text, re.M)
    return text[: match.start()] if match else text


def crate_files(crate: str, root: pathlib.Path = ROOT) -> list:
    src = root / "crates" / crate / "src"
    test_only = set()
    for path in src.rglob("*.rs"):
        for name in re.findall(r"#\[cfg\(test\)\]\s*(?:#\[[^\n]*\]\s*)*mod (\w+);", path.read_text()):
            test_only.add(name)
    return sorted(p for p in src.rglob("*.rs") if p.stem not in test_only)


def _consts(text: str) -> dict:
    """`const NAME: T = value;` of a file, values as text; `concat!("a", env!("CARGO_PKG_VERSION"))`
    becomes "a<version>" (what the docs write)."""
    out = {}
    for name, value in re.findall(r"const (\w+):\s*[^=]+=\s*(.+?);\s*$", text, re.M | re.S):
        value = value.strip()
        if value.startswith("concat!"):
            parts = re.findall(r'env!\("CARGO_PKG_VERSION"\)|"((?:[^"\\]|\\.)*)"', value)
            value = "".join(p if p else "<version>" for p in parts)
            out[name] = value
        elif value.startswith('"'):
            out[name] = value.strip('"')
        else:
            out[name] = value.replace("_", "")
    return out


_ARG = re.compile(
    r"#\[arg\((?P<args>(?:[^()\"]|\"(?:[^\"\\]|\\.)*\"|\([^()]*\))*)\)\]\s*"
    r"(?:#\[[^\]]*\]\s*|///[^\n]*\n\s*)*"
    r"pub (?P<field>\w+):\s*(?P<ty>[^\n]+?),?\s*\n")
_STRUCT = re.compile(r"pub struct (\w+)")


def _attr(args: str, key: str):
    m = re.search(rf"\b{key}\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^,]+)", args)
    return m.group(1).strip() if m else None


def clap_args(crates, root: pathlib.Path = ROOT) -> list:
    """Every `#[arg(..., env = "X", ...)]` of the crates' production code."""
    out = []
    consts = {}
    for crate in crates:
        for path in crate_files(crate, root):
            consts.update(_consts(production_source(path)))
    for crate in crates:
        for path in crate_files(crate, root):
            text = production_source(path)
            for m in _ARG.finditer(text):
                args = m.group("args")
                env = _attr(args, "env")
                if env is None:
                    continue
                structs = _STRUCT.findall(text[: m.start()])
                long = _attr(args, "long")
                field = m.group("field")
                flag = "--" + (long.strip('"') if long else field.replace("_", "-"))
                if not re.search(r"\blong\b", args):
                    flag = ""
                default = _attr(args, "default_value") or _attr(args, "default_value_t")
                if default is not None:
                    if default.startswith('"'):
                        default = default.strip('"')
                    elif default in consts:
                        default = consts[default]
                    else:
                        default = default.replace("_", "")
                ty = m.group("ty").strip()
                out.append(Arg(crate=crate, struct=structs[-1] if structs else "", field=field,
                               env=env.strip('"'), flag=flag, default=default,
                               optional=ty.startswith("Option<"), boolean=ty == "bool",
                               path=str(path.relative_to(root))))
    return out


def binary_args(binary: str, root: pathlib.Path = ROOT) -> list:
    return clap_args(BINARIES[binary], root)


def flags(crates, root: pathlib.Path = ROOT) -> set:
    """Every long flag of the crates (with or without an environment variable)."""
    out = set()
    for crate in crates:
        for path in crate_files(crate, root):
            text = production_source(path)
            for m in _ARG.finditer(text):
                args = m.group("args")
                if not re.search(r"\blong\b", args):
                    continue
                long = _attr(args, "long")
                out.add("--" + (long.strip('"') if long else m.group("field").replace("_", "-")))
    return out


# Direct reads of the environment: std::env::var("X"), var_os("X"), and lookups through a closure
# or a constant (`var("LOG_FORMAT")`, `var(OTEL_SERVICE_NAME)` with `const OTEL_SERVICE_NAME: &str`).
_ENV_CALL = re.compile(r"\b(?:env::var|env::var_os|var_os|var|lookup)\(\s*(\"[A-Z][A-Z0-9_]*\"|[A-Z][A-Z0-9_]*)\s*\)")


def env_reads(crates, root: pathlib.Path = ROOT) -> dict:
    """Variable -> files, for every environment variable read outside clap."""
    out = {}
    for crate in crates:
        for path in crate_files(crate, root):
            text = production_source(path)
            consts = _consts(text)
            for token in _ENV_CALL.findall(text):
                name = token.strip('"') if token.startswith('"') else consts.get(token)
                if name and re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                    out.setdefault(name, set()).add(str(path.relative_to(root)))
            # Prefixes matched against every variable (KAFKA_PROPERTY_<NAME>).
            for const, value in consts.items():
                if const.endswith("ENV_PREFIX"):
                    out.setdefault(value + "*", set()).add(str(path.relative_to(root)))
    return out


def binary_env(binary: str, root: pathlib.Path = ROOT) -> dict:
    """Variable -> where, for everything the binary reads (clap and direct reads)."""
    out = {}
    for arg in binary_args(binary, root):
        out.setdefault(arg.env, set()).add(arg.path)
    for name, paths in env_reads(BINARIES[binary], root).items():
        out.setdefault(name, set()).update(paths)
    return out


def all_env(root: pathlib.Path = ROOT) -> dict:
    out = {}
    for binary in BINARIES:
        for name, paths in binary_env(binary, root).items():
            out.setdefault(name, set()).update(paths)
    return out


_REGISTER = re.compile(r"\b(\w+)\.register\(\s*\"(\w+)\",\s*\"((?:[^\"\\]|\\.)*)\",\s*(?:self\.)?(\w+)\.clone\(\)")


def metrics(crate: str, root: pathlib.Path = ROOT) -> list:
    """The metrics a crate registers, named as the Prometheus text format shows them."""
    out = []
    for path in crate_files(crate, root):
        text = re.sub(r"//[^\n]*", "", production_source(path))
        aliases = dict(re.findall(r"type (\w+) = ([^;]+);", text))
        prefixes = dict(re.findall(r"let (\w+) = \w+\.sub_registry_with_prefix\(\"(\w+)\"\)", text))
        for registry, name, help_text, var in _REGISTER.findall(text):
            ty = (re.search(rf"^\s*(?:pub )?{var}:\s*([^\n]+?),?\s*$", text, re.M)
                  or re.search(rf"let {var} = ([^;]+);", text))
            if ty is None:
                raise AssertionError(f"{path}: cannot find the type of {var} (metric {name})")
            ty = ty.group(1)
            ty = aliases.get(ty.strip(), ty)
            kind = ("histogram" if "Histogram" in ty else "counter" if "Counter" in ty
                    else "gauge" if "Gauge" in ty else None)
            if kind is None:
                raise AssertionError(f"{path}: metric {name} is neither counter, gauge nor histogram: {ty}")
            labels = ()
            family = re.search(r"Family<\s*(?:::)?(\w+)", ty)
            if family:
                struct = re.search(rf"struct {family.group(1)}\s*\{{([^}}]*)\}}", text)
                if struct is None:
                    raise AssertionError(f"{path}: cannot find the label set {family.group(1)}")
                labels = tuple(re.findall(r"(?:pub )?(\w+):", struct.group(1)))
            full = (prefixes[registry] + "_" if registry in prefixes else "") + name
            if kind == "counter":
                full += "_total"
            out.append(Metric(crate=crate, name=full, kind=kind, labels=labels, help=help_text))
    return out


def all_metrics(root: pathlib.Path = ROOT) -> dict:
    return {binary: metrics(binary, root) for binary in BINARIES}


def header_names(root: pathlib.Path = ROOT) -> set:
    """Header names the binaries set or read: lower-case string literals shaped like header
    names, and `http::header::NAME` constants (as `if-none-match`)."""
    out = set()
    for binary, crates in BINARIES.items():
        for crate in crates:
            for path in crate_files(crate, root):
                text = production_source(path)
                out.update(h.replace("_", "-").lower()
                           for h in re.findall(r"header::([A-Z][A-Z_]+)\b", text))
                out.update(s.lower() for s in re.findall(r"\"([A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)\"", text))
    return out
