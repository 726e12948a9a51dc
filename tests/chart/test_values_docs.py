"""values.yaml's comments against what the templates do.

Every key whose comment says it sets an environment variable (`(NAME)`, `(NAME; ...)`,
`NAME: ...`) is rendered with a distinctive value, and the variable must carry it in the
workloads the comment names. A comment that names a variable no entry here covers fails, so a
new claim gets a check. The claims in prose that used to be untrue (readiness, where logLevel and
api.cacheTtlSeconds reach, SMTP, key sources, the auth Secret's name) have a test each.
"""
import re

import pytest
import yaml

from conftest import CHART, run_helm, template_args

VALUES = CHART / "values.yaml"


def comment_claims(text: str) -> dict:
    """key path -> variables its comment says it sets (in parentheses, or as the first word)."""
    claims, path, comment = {}, [], []
    for line in text.splitlines():
        if re.match(r"^\s*#", line):
            comment.append(line.strip().lstrip("#").strip())
            continue
        m = re.match(r"^(\s*)(- )?([A-Za-z0-9_.-]+):", line)
        if m:
            level = len(m.group(1)) // 2
            # A list item's keys are under "[]": consumers.[].handler.
            path = path[:level] + (["[]", m.group(3)] if m.group(2) else [m.group(3)])
            joined = " ".join(comment)
            names = set(re.findall(r"\(([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)[);,]", joined))
            first = re.match(r"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", joined)
            if first:
                names.add(first.group(1))
            if names:
                claims[".".join(path)] = names
        comment = []
    return claims


KAFKA_OFF = ["--set", "kafka.enabled=false", "--set", "externalKafka.brokers=kafka-9.example:9093"]
SASL = KAFKA_OFF + ["--set", "externalKafka.security.protocol=sasl_ssl",
                    "--set", "externalKafka.security.sasl.mechanism=SCRAM-SHA-512",
                    "--set", "externalKafka.security.sasl.username=sentinel-user",
                    "--set", "connectionSecret.existingSecret=conn"]

# key -> (variable, helm arguments, value the variable must carry, where: components whose
# container env has it, and/or "consumers" for every ProfileConsumer's spec.env, or
# "cache-refresh" for the cache-refresh ones only).
DIRECT = {
    ("logLevel", "RUST_LOG"): (["--set", "logLevel=debug"], "debug", {"api", "operator", "consumers"}),
    ("api.cacheTtlSeconds", "CACHE_TTL_SECONDS"): (["--set", "api.cacheTtlSeconds=1234"], "1234", {"api", "cache-refresh"}),
    ("api.eventsTopic", "EVENTS_TOPIC"): (["--set", "api.eventsTopic=sentinel-topic"], "sentinel-topic", {"api"}),
    ("api.rateLimit.perSecond", "RATE_LIMIT_PER_SECOND"): (["--set", "api.rateLimit.perSecond=7"], "7", {"api"}),
    ("api.rateLimit.burst", "RATE_LIMIT_BURST"): (["--set", "api.rateLimit.burst=9"], "9", {"api"}),
    ("api.nearCache.enabled", "NEAR_CACHE_ENABLED"): (["--set", "api.nearCache.enabled=false"], "false", {"api"}),
    ("api.nearCache.maxEntries", "NEAR_CACHE_MAX_ENTRIES"): (["--set", "api.nearCache.maxEntries=1234"], "1234", {"api"}),
    ("api.nearCache.maxBytes", "NEAR_CACHE_MAX_BYTES"): (["--set", "api.nearCache.maxBytes=33554432"], "33554432", {"api"}),
    ("otel.resourceAttributes", "OTEL_RESOURCE_ATTRIBUTES"):
        (["--set", "otel.resourceAttributes=deployment.environment=sentinel"], "deployment.environment=sentinel", {"api", "operator"}),
    ("operator.leaseName", "LEASE_NAME"): (["--set", "operator.leaseName=sentinel-lease"], "sentinel-lease", {"operator"}),
    ("operator.consumerImage", "CONSUMER_IMAGE"): (["--set", "operator.consumerImage=example/sentinel:1"], "example/sentinel:1", {"operator"}),
    ("operator.consumerServiceAccount", "CONSUMER_SERVICE_ACCOUNT"):
        (["--set", "operator.consumerServiceAccount=sentinel-sa"], "sentinel-sa", {"operator"}),
    ("imagePullSecrets", "CONSUMER_IMAGE_PULL_SECRETS"):
        (["--set", "imagePullSecrets[0].name=sentinel-a", "--set", "imagePullSecrets[1].name=sentinel-b"], "sentinel-a,sentinel-b", {"operator"}),
    ("externalKafka.brokers", "KAFKA_BROKERS"): (KAFKA_OFF, "kafka-9.example:9093", {"api", "operator"}),
    ("externalKafka.security.protocol", "KAFKA_SECURITY_PROTOCOL"): (SASL, "sasl_ssl", {"api", "operator"}),
    ("externalKafka.security.sasl.mechanism", "KAFKA_SASL_MECHANISM"): (SASL, "SCRAM-SHA-512", {"api", "operator"}),
    ("externalKafka.security.sasl.username", "KAFKA_SASL_USERNAME"): (SASL, "sentinel-user", {"api", "operator"}),
    ("externalKafka.security.sasl.existingSecret", "KAFKA_SASL_PASSWORD_FILE"):
        (SASL, "/etc/statecast/kafka-sasl/password", {"api", "operator"}),
    ("externalKafka.security.tls.caSecret", "CONSUMER_KAFKA_CA_SECRET"):
        (KAFKA_OFF + ["--set", "externalKafka.security.protocol=ssl", "--set", "externalKafka.security.tls.caSecret=sentinel-ca"],
         "sentinel-ca", {"operator"}),
    ("kafka.heapOpts", "KAFKA_HEAP_OPTS"): (["--set", "kafka.heapOpts=-Xmx123m"], "-Xmx123m", {"kafka"}),
}
# Claims that are not "this key's value is that variable's", each with what it means instead and
# the test that checks it. (Prose claims without the parenthesis form, such as where logLevel and
# api.cacheTtlSeconds reach, the DLQ_TOPIC default, OTEL_SERVICE_NAME winning, have tests below.)
INDIRECT = {
    ("connectionSecret", "CONSUMER_SECRET"): "the Secret's name is the operator's CONSUMER_SECRET: test_the_connection_secret_name_is_the_operators_consumer_secret",
    ("consumers.[].handler", "CONSUMER_HANDLER"): "spec.handler, which the operator turns into CONSUMER_HANDLER (crates/profile-operator)",
    ("consumers.[].name", "SMTP_URL"): "the email consumer's SMTP_URL: test_an_email_consumer_without_smtp_fails_naming_the_values",
    ("externalKafka.security.tls.caSecret", "KAFKA_SSL_CA_LOCATION"): "tests/chart/test_kafka_security.py",
}


def test_every_variable_a_values_comment_names_is_covered_here():
    claims = {(key, name) for key, names in comment_claims(VALUES.read_text()).items() for name in names}
    uncovered = claims - set(DIRECT) - set(INDIRECT)
    assert not uncovered, f"values.yaml comments name these; add each to DIRECT or INDIRECT: {sorted(uncovered)}"
    stale = (set(DIRECT) | set(INDIRECT)) - claims
    assert not stale, f"no longer claimed by values.yaml, remove: {sorted(stale)}"


def render_args(helm, args):
    res = run_helm(helm, *template_args(*args))
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def container_env(objs, component):
    for obj in objs:
        if obj["kind"] in {"Deployment", "StatefulSet"} and obj["metadata"]["name"] == f"statecast-{component}":
            return {e["name"]: e.get("value") for c in obj["spec"]["template"]["spec"]["containers"]
                    for e in c.get("env", [])}
    raise AssertionError(f"no workload statecast-{component}")


def consumer_envs(objs):
    return {o["spec"]["handler"]: o["spec"].get("env", []) for o in objs if o["kind"] == "ProfileConsumer"}


@pytest.mark.parametrize("key,variable", sorted(DIRECT), ids=[f"{k}={v}" for k, v in sorted(DIRECT)])
def test_a_value_reaches_the_variable_its_comment_names(helm, key, variable):
    args, value, where = DIRECT[(key, variable)]
    objs = render_args(helm, args)
    for component in where - {"consumers", "cache-refresh"}:
        assert container_env(objs, component).get(variable) == value, (component, variable)
    for handler, env in consumer_envs(objs).items():
        values = [e.get("value") for e in env if e["name"] == variable]
        if "consumers" in where or ("cache-refresh" in where and handler == "cache-refresh"):
            assert values == [value], (handler, variable, env)
        else:
            assert values == [], (handler, variable, env)


def test_the_direct_check_itself_fails_for_a_variable_the_value_does_not_reach(helm):
    objs = render_args(helm, ["--set", "api.eventsTopic=sentinel-topic"])
    assert container_env(objs, "operator").get("EVENTS_TOPIC") != "sentinel-topic"
    claims = comment_claims("# Something (NOT_SET_ANYWHERE).\nsomething: 1\n")
    assert claims == {"something": {"NOT_SET_ANYWHERE"}}


def test_log_level_and_cache_ttl_reach_the_consumers_unless_their_env_sets_them(helm):
    objs = render_args(helm, [
        "--set", "logLevel=warn", "--set", "api.cacheTtlSeconds=600",
        "--set", "consumers[0].name=cr", "--set", "consumers[0].handler=cache-refresh",
        "--set", "consumers[0].groupId=g", "--set", "consumers[0].topics[0]=user-events",
        "--set", "consumers[0].env[0].name=RUST_LOG", "--set", "consumers[0].env[0].value=trace",
        "--set", "consumers[0].env[1].name=CACHE_TTL_SECONDS", "--set-string", "consumers[0].env[1].value=60",
        "--set", "consumers[1].name=au", "--set", "consumers[1].handler=audit",
        "--set", "consumers[1].groupId=h", "--set", "consumers[1].topics[0]=user-events"])
    envs = consumer_envs(objs)
    assert envs["cache-refresh"] == [{"name": "RUST_LOG", "value": "trace"}, {"name": "CACHE_TTL_SECONDS", "value": "60"}]
    assert envs["audit"] == [{"name": "RUST_LOG", "value": "warn"}]


def test_readiness_comment_says_what_readyz_decides():
    """/readyz fails only without PostgreSQL (crates/profile-api/src/routes.rs); the comment
    must not promise Redis and Kafka checks."""
    routes = (CHART.parents[1] / "crates/profile-api/src/routes.rs").read_text()
    readyz = routes.split("async fn readyz", 1)[1].split("\n}\n", 1)[0]
    assert re.search(r"if !matches!\(pg, Ok\(Ok\(\(\)\)\)\) \{\s*return Err\(ApiError::Unavailable\);", readyz)
    assert readyz.count("ApiError::Unavailable") == 1
    comment = VALUES.read_text().split("readinessProbe:", 1)[0].rsplit("\n  # Readiness probe", 1)[1]
    assert "PostgreSQL" in comment and "degraded" in comment, comment
    assert not re.search(r"(Redis|Kafka)[^.]*reachable", comment), comment


def test_an_email_consumer_without_smtp_fails_naming_the_values(helm):
    res = run_helm(helm, *template_args("--set", "mailpit.enabled=false"))
    assert res.returncode != 0
    assert "consumers[email] runs the email handler" in res.stderr and "externalSmtp.url" in res.stderr, res.stderr
    for ok in (["--set", "externalSmtp.url=smtps://u:p@smtp.example:465"],
               ["--set", "connectionSecret.existingSecret=conn"],
               ["--set", "consumers[0].name=email", "--set", "consumers[0].handler=email", "--set", "consumers[0].groupId=g",
                "--set", "consumers[0].topics[0]=user-events", "--set", "consumers[0].paused=true"]):
        res = run_helm(helm, *template_args("--set", "mailpit.enabled=false", *ok))
        assert res.returncode == 0, (ok, res.stderr)


def test_the_smtp_examples_use_tls():
    text = VALUES.read_text()
    for url in re.findall(r"smtps?://\S+", text.split("externalSmtp:", 1)[1].split("\n\n", 1)[0]):
        assert url.startswith("smtps://") or "tls=required" in url or "clear" in text, url
    assert "smtp://user:password@smtp.example:587?tls=required" in text
    readme = (CHART / "README.md").read_text()
    for url in re.findall(r'externalSmtp: \{url: "([^"]+)"', readme):
        assert url.startswith("smtps://") or "tls=required" in url, url


def test_generated_hs256_secret_with_a_jwks_url_fails(helm):
    res = run_helm(helm, *template_args("--set", "auth.disabled=false", "--set", "auth.generateHs256Secret=true",
                                        "--set", "auth.jwksUrl=https://issuer.example/jwks.json"))
    assert res.returncode != 0
    assert "auth.generateHs256Secret and auth.jwksUrl are both set" in res.stderr, res.stderr


def test_the_auth_secret_is_named_as_the_comment_says(helm):
    comment = VALUES.read_text().split("generateHs256Secret:", 1)[0].rsplit("auth:", 1)[1]
    name = re.search(r"kubectl get secret ([\w-]+)", comment).group(1)
    objs = render_args(helm, ["--set", "auth.disabled=false", "--set", "auth.generateHs256Secret=true"])
    assert name in {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}, name
    # ... and for another release name, the other name the comment gives.
    res = run_helm(helm, *template_args("--set", "auth.disabled=false", "--set", "auth.generateHs256Secret=true",
                                        release="prod"))
    assert res.returncode == 0, res.stderr
    assert "<release>-statecast-auth" in comment
    assert "name: prod-statecast-auth" in res.stdout


def test_the_connection_secret_name_is_the_operators_consumer_secret(helm):
    objs = render_args(helm, ["--set", "connectionSecret.name=sentinel-conn"])
    assert container_env(objs, "operator")["CONSUMER_SECRET"] == "sentinel-conn"
    assert "sentinel-conn" in {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}


def test_the_dlq_topic_default_is_the_consumers():
    config = (CHART.parents[1] / "crates/profile-consumer/src/config.rs").read_text()
    assert 'format!(\n                "{}.dlq"' in config
    values = yaml.safe_load(VALUES.read_text())
    assert values["topics"]["dlqTopic"] == values["api"]["eventsTopic"] + ".dlq"


def test_otel_service_name_is_set_so_resource_attributes_cannot_rename_the_service(helm):
    objs = render_args(helm, ["--set", "otel.resourceAttributes=service.name=mine"])
    assert container_env(objs, "api")["OTEL_SERVICE_NAME"] == "profile-api"


def test_consumers_comment_lists_the_fields_the_schema_requires():
    import json
    schema = json.loads((CHART / "values.schema.json").read_text())
    required = schema["properties"]["consumers"]["items"]["required"]
    comment = VALUES.read_text().split("\nconsumers:", 1)[0].rsplit("\n\n", 1)[1]
    before_optional = comment.split("optionally", 1)[0]
    m = re.search(r"required (.*?);", " ".join(l.lstrip("# ") for l in before_optional.splitlines()))
    assert m, comment
    for field in required:
        assert field in m.group(1), (field, m.group(1))
