"""The documentation against the code, offline: every variable, flag, default, metric, header and
port the documents name exists with that value, and every variable the binaries read is in
docs/contracts.md. Each check also runs on a made-up document it must refuse (the `*_fails_*`
self-tests), so none of them can pass by finding nothing.

Run by `scripts/docs-check` (a step of `make test`).
"""
import pathlib
import re

import pytest

import checks
import docsrc
import rustsrc

ROOT = rustsrc.ROOT


def docs() -> dict:
    return {doc: docsrc.read(doc) for doc in docsrc.DOCS}


ENV = rustsrc.all_env()
ARGS = [a for binary in rustsrc.BINARIES for a in rustsrc.binary_args(binary)]
FLAGS = rustsrc.flags([c for crates in rustsrc.BINARIES.values() for c in crates])
METRICS = rustsrc.all_metrics()


def report(problems):
    assert not problems, "\n".join(problems)


# --- the extractors see what is there (a change of code style must not hide definitions) -----

def test_the_extractors_find_the_settings_they_must():
    by_binary = {b: {a.env: a for a in rustsrc.binary_args(b)} for b in rustsrc.BINARIES}
    assert by_binary["profile-api"]["CACHE_TTL_SECONDS"].default == "3600"
    assert by_binary["profile-api"]["AUTH_DISABLED"].boolean
    assert by_binary["profile-consumer"]["KAFKA_GROUP_ID"].default is None
    assert not by_binary["profile-consumer"]["KAFKA_GROUP_ID"].optional
    assert by_binary["profile-consumer"]["MAX_RETRIES"].default == "5"
    assert by_binary["profile-operator"]["CONSUMER_IMAGE"].default == "ghcr.io/statecast/statecast:<version>"
    assert by_binary["profile-operator"]["KAFKA_SECURITY_PROTOCOL"].default == "plaintext"
    # Every #[arg(... env = ...)] of the binaries' crates was parsed into an Arg.
    for crates in rustsrc.BINARIES.values():
        for crate in crates:
            count = sum(len(re.findall(r"#\[arg\([^\]]*\benv\b", rustsrc.production_source(p)))
                        for p in rustsrc.crate_files(crate))
            assert count == len(rustsrc.clap_args([crate])), crate
    for name in ["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "RUST_LOG", "LOG_FORMAT", "OTEL_SDK_DISABLED", "HOSTNAME", "KAFKA_PROPERTY_*"]:
        assert name in ENV, name
    # Test-only reads (REDIS_URL in the cache tests, CARGO_MANIFEST_DIR) are not the binaries'.
    assert "CARGO_MANIFEST_DIR" not in ENV


def test_the_metric_extractor_finds_every_registration():
    for binary in rustsrc.BINARIES:
        registered = sum(len(re.findall(r"\.register\(\s*\"", rustsrc.production_source(p)))
                         for p in rustsrc.crate_files(binary))
        assert registered == len(METRICS[binary]), binary
    names = {m.name: m for ms in METRICS.values() for m in ms}
    assert names["consumer_records_total"].labels == ("result",)
    assert names["http_request_duration_seconds"].kind == "histogram"
    assert "profile_operator_reconciles_total" in names


# --- documents -> code ----------------------------------------------------------------------

def test_every_variable_the_docs_name_exists():
    all_docs = docs() | {p: docsrc.read(p) for p in docsrc.ENV_SAMPLES}
    report(checks.check_env_names(all_docs, ENV))


def test_every_documented_default_is_the_codes():
    report(checks.check_table_defaults(docs(), ARGS, ENV))


@pytest.mark.parametrize("sample", sorted(docsrc.ENV_SAMPLES))
def test_env_samples_list_every_setting_with_its_default(sample):
    binary = docsrc.ENV_SAMPLES[sample]
    report(checks.check_env_sample(sample, docsrc.read(sample), rustsrc.binary_args(binary),
                                   rustsrc.binary_env(binary)))


def test_every_setting_is_a_flag_of_the_same_name():
    report(checks.check_flags_follow_variables(ARGS))


def test_every_flag_the_docs_name_exists():
    report(checks.check_flags(docs(), FLAGS))


def test_every_metric_the_docs_name_is_registered_with_those_labels():
    report(checks.check_metrics(docs(), METRICS))


def test_the_metric_list_of_operations_md_is_the_codes():
    report(checks.check_metrics_table(docsrc.read("docs/operations.md"), METRICS))


def test_every_header_the_docs_name_is_sent_or_read():
    report(checks.check_headers(docs(), rustsrc.header_names()))


# --- code -> documents ----------------------------------------------------------------------

def test_every_variable_the_binaries_read_is_in_contracts_md():
    report(checks.check_contracts_list_every_variable(docsrc.read("docs/contracts.md"), checks.env_by_crate()))


def test_the_startup_errors_quoted_are_the_messages_the_code_prints():
    report(checks.check_startup_messages(docsrc.read("docs/operations.md"), checks.binaries_source()))


def test_the_documented_label_values_are_the_codes():
    """'`metric{label}` is `a`, `b` or `c`' in docs/operations.md: each value is a string the
    binary's code holds."""
    report(check_label_values(docsrc.read("docs/operations.md")))


def check_label_values(text):
    problems = []
    names = {m.name: binary for binary, ms in METRICS.items() for m in ms}
    for name, label, values in re.findall(r"`(\w+)\{(\w+)\}` is ((?:`[^`]+`(?:, | or )?)+)", text):
        binary = names.get(name)
        if binary is None:
            problems.append(f"{name}: no such metric")
            continue
        source = "\n".join(rustsrc.production_source(p) for p in rustsrc.crate_files(binary))
        for value in re.findall(r"`([^`]+)`", values):
            if f'"{value}"' not in source:
                problems.append(f"{name}{{{label}}}: value {value!r} occurs nowhere in {binary}")
    return problems


def check_server_side_apply(all_docs):
    """manifests/install/statecast.yaml (and the CRD) must be applied with --server-side, as the
    manifest's header says: every `kubectl apply ... manifests/...` the docs show has it."""
    header = docsrc.read("manifests/install/statecast.yaml").split("\n---", 1)[0]
    assert "kubectl apply --server-side" in header
    return [f"{doc}:{line}: {span!r} lacks --server-side"
            for doc, text in all_docs.items() for line, span in docsrc.code_spans(text, doc)
            if "kubectl apply" in span and "manifests/" in span and "--server-side" not in span]


def test_every_kubectl_apply_of_the_manifests_is_server_side():
    report(check_server_side_apply(docs()))


def test_a_client_side_apply_fails():
    doc = {"fake.md": "Plain kubectl: `kubectl apply -f\nmanifests/install/`."}
    assert check_server_side_apply(doc)
    # A span over a line break is one span.
    assert docsrc.inline_spans("a `kubectl apply\n-f x` b") == [(1, "kubectl apply -f x")]


# --- ports, prerequisites --------------------------------------------------------------------

def stack_ports() -> dict:
    text = docsrc.read("scripts/stack")
    return {name: int(port) for name, port in re.findall(r'^(\w+_PORT)="\$\{\w+:-(\d+)\}"', text, re.M)}


def test_the_local_stack_table_shows_the_ports_scripts_stack_uses():
    report(checks.check_stack_table(docsrc.read("README.md"), stack_ports()))


def test_the_ports_table_matches_the_code_and_scripts():
    report(checks.check_ports_table(docsrc.read("docs/operations.md"), ARGS, ROOT))


def test_the_readme_prerequisites_match_cargo_toml_and_scripts_test():
    report(checks.check_prerequisites(docsrc.read("README.md"), ROOT))


# --- self-tests: each check refuses a document that is wrong ---------------------------------

def test_a_nonexistent_variable_fails():
    doc = {"fake.md": "Set `KAFKA_BROKER_LIST` to the brokers, or `STATECAST_NO_SUCH_THING=1`."}
    problems = checks.check_env_names(doc, ENV)
    assert any("KAFKA_BROKER_LIST" in p for p in problems), problems
    assert any("STATECAST_NO_SUCH_THING" in p for p in problems), problems
    # ... while real ones (a binary's, a script's) pass.
    assert checks.check_env_names({"ok.md": "`CACHE_TTL_SECONDS`, `STATECAST_NEED_GB`, `KAFKA_PROPERTY_CLIENT_ID`"}, ENV) == []


def test_a_wrong_default_fails():
    doc = {"fake.md": "## profile-api (crate `crates/profile-api`)\n"
                      "| env | default | meaning |\n|---|---|---|\n"
                      "| `CACHE_TTL_SECONDS` | `600` | |\n"
                      "| `EVENTS_TOPIC` | `user-events` | |\n"
                      "| `REDIS_TIMEOUT_MS`, `REQUEST_TIMEOUT_MS` | `200`, `9999` | |\n"
                      "| `NO_SUCH_SETTING` | `1` | |\n"
                      "| `AUTH_ISSUER` | `https://issuer/` | |\n"
                      "| `LISTEN_ADDR` | required | |\n"
                      "| `DB_POOL_SIZE` | about ten | |\n"}
    problems = checks.check_table_defaults(doc, ARGS, ENV)
    text = "\n".join(problems)
    assert "CACHE_TTL_SECONDS default is documented as '600', the code's is '3600'" in text, text
    assert "REQUEST_TIMEOUT_MS default is documented as '9999'" in text, text
    assert "NO_SUCH_SETTING is not a setting" in text, text
    assert "AUTH_ISSUER" in text and "LISTEN_ADDR is documented as required" in text, text
    assert "DB_POOL_SIZE" in text and "COMPUTED_DEFAULTS" in text, text
    assert "EVENTS_TOPIC" not in text and "REDIS_TIMEOUT_MS" not in text, text
    # A consumer setting is not looked up among the API's.
    wrong_binary = {"fake.md": "## profile-operator (crate `crates/profile-operator`)\n"
                               "| env | default | meaning |\n|---|---|---|\n| `MAX_RETRIES` | `5` | |\n"}
    assert any("MAX_RETRIES is not a setting of ['profile-operator'" in p
               for p in checks.check_table_defaults(wrong_binary, ARGS, ENV))


def test_a_script_table_with_a_wrong_default_or_an_unread_variable_fails():
    doc = {"fake.md": "## Contract fuzzer (`scripts/contract-fuzz`)\n| env | default | meaning |\n|---|---|---|\n"
                      "| `CONTRACT_FUZZ_SEED` | `20261201` | |\n"
                      "| `STATECAST_TOOLS` | `~/.cache/statecast/tools` | |\n"}
    assert checks.check_table_defaults(doc, ARGS, ENV) == []
    doc = {"fake.md": "## Contract fuzzer (`scripts/contract-fuzz`)\n| env | default | meaning |\n|---|---|---|\n"
                      "| `CONTRACT_FUZZ_SEED` | `42` | |\n"
                      "| `CONTRACT_FUZZ_NO_SUCH` | `1` | |\n"}
    text = "\n".join(checks.check_table_defaults(doc, ARGS, ENV))
    assert "CONTRACT_FUZZ_SEED default is documented as ['42']" in text, text
    assert "contract-fuzz does not read CONTRACT_FUZZ_NO_SUCH" in text, text


def test_a_stale_computed_default_fails(tmp_path, monkeypatch):
    cell = "`latest` for `email`, `earliest` otherwise"
    doc = {"fake.md": "## profile-consumer (crate `crates/profile-consumer`)\n| env | default |\n|---|---|\n"
                      f"| `KAFKA_START_POSITION` | {cell} |\n"}
    assert checks.check_table_defaults(doc, ARGS, ENV) == []
    monkeypatch.setitem(checks.COMPUTED_DEFAULTS, ("KAFKA_START_POSITION", cell),
                        ("crates/profile-consumer/src/config.rs", r"no such code"))
    assert any("no longer computes it" in p for p in checks.check_table_defaults(doc, ARGS, ENV))


def test_an_env_sample_with_a_wrong_default_or_a_missing_setting_fails():
    args = rustsrc.binary_args("profile-api")
    sample = docsrc.read("crates/profile-api/.env.sample")
    wrong = sample.replace("CACHE_TTL_SECONDS=3600", "CACHE_TTL_SECONDS=60").replace("DB_POOL_SIZE=10\n", "")
    wrong += "\nNO_SUCH_SETTING=1\n"
    problems = "\n".join(checks.check_env_sample("x.env.sample", wrong, args, rustsrc.binary_env("profile-api")))
    assert "CACHE_TTL_SECONDS=60 but the default is '3600'" in problems, problems
    assert "DB_POOL_SIZE" in problems and "not listed" in problems, problems
    assert "NO_SUCH_SETTING is not a setting" in problems, problems


def test_a_setting_whose_flag_differs_from_its_variable_fails():
    arg = ARGS[0]
    odd = rustsrc.Arg(**{**arg.__dict__, "flag": "--brokers"})
    assert checks.check_flags_follow_variables([odd])


def test_a_nonexistent_flag_fails():
    doc = {"fake.md": "Run `profile-consumer --kafka-group-ids audit` or `--no-such-flag`, then\n"
                      "```sh\nKAFKA_BROKERS=x profile-api \\\n  --listen-adress 0.0.0.0:80\n```\n"
                      "and `scripts/chart-check --render-everything`."}
    problems = "\n".join(checks.check_flags(doc, FLAGS))
    for flag in ["--kafka-group-ids", "--no-such-flag", "--listen-adress", "--render-everything"]:
        assert flag in problems, (flag, problems)
    assert checks.check_flags({"ok.md": "`profile-consumer dlq replay --kafka-group-id g --dry-run`"}, FLAGS) == []


def test_a_nonexistent_metric_or_wrong_labels_fail():
    doc = {"fake.md": "`consumer_records_total{reason}`, `outbox_lag_seconds`, `consumer_lag{topic,partition}`"}
    problems = "\n".join(checks.check_metrics(doc, METRICS))
    assert "consumer_records_total has labels {result}, not {reason}" in problems, problems
    assert "outbox_lag_seconds is registered by no binary" in problems, problems
    assert "consumer_lag" not in problems, problems


def test_a_stale_metric_table_fails():
    text = docsrc.read("docs/operations.md").replace("`consumer_lag`", "`consumer_lag_records`")
    assert checks.check_metrics_table(text, METRICS)


def test_a_nonexistent_header_fails():
    doc = {"fake.md": "Answers carry `x-request-id` and `X-Cache-Status`; `dlq-why` says why; `x-cache: hit`."}
    problems = "\n".join(checks.check_headers(doc, rustsrc.header_names()))
    assert "x-request-id" in problems and "dlq-why" in problems, problems
    assert "x-cache:" not in problems and "header x-cache " not in problems, problems


def test_an_undocumented_variable_fails():
    contracts = docsrc.read("docs/contracts.md").replace("`RELAY_BATCH_SIZE`", "`RELAY_BATCH`")
    problems = checks.check_contracts_list_every_variable(contracts, checks.env_by_crate())
    assert any("RELAY_BATCH_SIZE (profile-api) is not documented" in p for p in problems), problems
    no_telemetry = re.sub(r"## Telemetry \(every binary\)[\s\S]*?(?=\n## )", "", docsrc.read("docs/contracts.md"))
    assert any("no section '## Telemetry" in p
               for p in checks.check_contracts_list_every_variable(no_telemetry, checks.env_by_crate()))


def test_a_message_the_code_does_not_print_fails():
    ops = docsrc.read("docs/operations.md")
    wrong = ops.replace("another process holds this port", "the port is busy")
    problems = checks.check_startup_messages(wrong, checks.binaries_source())
    assert any("the port is busy" in p for p in problems), problems


def test_a_wrong_label_value_fails():
    assert check_label_values("`consumer_records_total{result}` is `processed` or `skipped`")
    assert check_label_values("`consumer_records_total{result}` is `processed` or `dlq`") == []


def test_wrong_ports_and_prerequisites_fail():
    readme = docsrc.read("README.md")
    assert checks.check_stack_table(readme.replace("127.0.0.1:6379`", "127.0.0.1:6380`"), stack_ports())
    ops = docsrc.read("docs/operations.md")
    assert checks.check_ports_table(ops.replace("| 9092 |", "| 9093 |"), ARGS, ROOT)
    assert checks.check_ports_table(ops.replace("| 8080 | Profile API", "| 8081 | Profile API"), ARGS, ROOT)
    assert checks.check_prerequisites(re.sub(r"below\s+12 GB", "below 5 GB", readme), ROOT)
    assert checks.check_prerequisites(readme.replace("Rust ≥ 1.89", "Rust ≥ 1.80"), ROOT)


# --- "nothing of ours deletes topics" (README, tansu deviations) ------------------------------

# tansu 0.6.0 freezes for minutes while it deletes a topic from a large log, answering nothing:
# the README promises that no code, test or script of ours sends DeleteTopics to a broker.
TOPIC_DELETION = re.compile(r"\bdelete_topics\s*\(|\btopic\s+delete\b|kafka-topics[^\n]*--delete")


def topic_deletions(files) -> list:
    found = []
    for path in files:
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if TOPIC_DELETION.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def sources():
    here = pathlib.Path(__file__).resolve()
    for folder in ["crates", "tests", "scripts", "charts"]:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".rs", ".py", ".sh", ".yaml", ".tpl", ""}:
                if path.resolve() != here:
                    yield path


def test_nothing_deletes_topics_on_a_broker():
    files = list(sources())
    assert len(files) > 100, "the scan found too few files to mean anything"
    report(topic_deletions(files))


def test_a_topic_deletion_is_found(tmp_path):
    rs = tmp_path / "cleanup.rs"
    rs.write_text("admin.delete_topics(&names, &options).await?;\n")
    sh = tmp_path / "cleanup"
    sh.write_text('"$bin" topic delete bench-1 --broker "$url"\n')
    kept = tmp_path / "fine.rs"
    kept.write_text("testkit::create_topic(&brokers, &topic, 6).await?;\n")
    assert len(topic_deletions([rs, sh, kept])) == 2
