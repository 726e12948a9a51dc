"""Kafka client security in the chart (externalKafka.security, externalKafka.properties): the API
and the operator get the settings, the operator the consumers' CA, and no password is ever a
rendered value. The operator's side (what consumers get) is unit-tested in
crates/profile-operator/src/deployment.rs.
"""
import pytest
import yaml

from conftest import render, run_helm, template_args
from test_edge import plain_secret_env

SASL_SSL = "external-kafka-sasl-ssl"
DEPLOYMENTS = ("statecast-api", "statecast-operator")
# Enough of the example's settings to turn an external plaintext install into a SASL one.
EXTERNAL = ["--set", "kafka.enabled=false", "--set", "externalKafka.brokers=k:9093"]


def deployment(objs, name):
    found = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one Deployment/{name}, found {len(found)}"
    return found[0]["spec"]["template"]["spec"]


def env_of(pod):
    return {e["name"]: e for e in pod["containers"][0].get("env") or []}


def rendered(helm, *args):
    res = run_helm(helm, *template_args(*args))
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def fails(helm, *args):
    res = run_helm(helm, *template_args(*args))
    assert res.returncode != 0, f"helm template {' '.join(args)} unexpectedly succeeded"
    return res.stderr


def test_sasl_ssl_example_sets_the_protocol_user_and_mounted_password_and_ca(helm):
    objs = render(helm, SASL_SSL)
    for name in DEPLOYMENTS:
        pod = deployment(objs, name)
        env = env_of(pod)
        assert env["KAFKA_BROKERS"]["value"].endswith(":9093")
        assert env["KAFKA_SECURITY_PROTOCOL"] == {"name": "KAFKA_SECURITY_PROTOCOL", "value": "sasl_ssl"}
        assert env["KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert env["KAFKA_SASL_USERNAME"]["value"] == "statecast"
        assert env["KAFKA_SASL_PASSWORD_FILE"]["value"] == "/etc/statecast/kafka-sasl/password"
        assert "KAFKA_SASL_PASSWORD" not in env, "the password is a file, never an env var"
        assert env["KAFKA_SSL_CA_LOCATION"]["value"] == "/etc/statecast/kafka-ca/ca.crt"
        assert env["KAFKA_PROPERTY_CLIENT_RACK"]["value"] == "eu-west-1a"
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        ca = mounts["/etc/statecast/kafka-ca"]
        assert ca["readOnly"] is True
        assert volumes[ca["name"]]["secret"] == {"secretName": "kafka-ca",
                                                 "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        sasl = mounts["/etc/statecast/kafka-sasl"]
        assert sasl["readOnly"] is True
        assert volumes[sasl["name"]]["secret"] == {
            "secretName": "statecast-connection",
            "items": [{"key": "KAFKA_SASL_PASSWORD", "path": "password"}]}
    op = env_of(deployment(objs, "statecast-operator"))
    # The operator mounts the same CA into consumer pods and points them at the connection Secret.
    assert op["CONSUMER_KAFKA_CA_SECRET"]["value"] == "kafka-ca"
    assert op["CONSUMER_KAFKA_CA_KEY"]["value"] == "ca.crt"
    assert op["CONSUMER_SECRET"]["value"] == "statecast-connection"


def test_sasl_ssl_example_renders_no_password_anywhere(helm):
    objs = render(helm, SASL_SSL)
    assert not [o for o in objs if o["kind"] in {"StatefulSet", "Job"}], "no bundled service"
    # The chart renders no Secret holding connection strings or the Kafka password.
    for obj in objs:
        if obj["kind"] == "Secret":
            keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            assert not keys & {"KAFKA_SASL_PASSWORD", "DATABASE_URL", "REDIS_URL", "SMTP_URL"}, obj["metadata"]
    # Every env entry naming a password or secret is a secretKeyRef, never a value.
    assert plain_secret_env(objs) == []
    # The password reaches the pods only as a mounted key of the Secret.
    for name in DEPLOYMENTS:
        env = env_of(deployment(objs, name))
        assert not [n for n in env if n == "KAFKA_SASL_PASSWORD" or n.startswith("KAFKA_PROPERTY_SASL")]
    # And there is no value key to put a password into.
    stderr = fails(helm, *EXTERNAL, "--set", "externalKafka.security.sasl.password=hunter2")
    assert "values don't meet the specifications of the schema" in stderr, stderr
    assert "password" in stderr, stderr


def test_default_install_is_plaintext_with_nothing_mounted(helm):
    objs = render(helm, "default")
    for name in DEPLOYMENTS:
        pod = deployment(objs, name)
        env = env_of(pod)
        assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "plaintext"
        assert not [n for n in env if n.startswith(("KAFKA_SASL", "KAFKA_SSL", "KAFKA_PROPERTY_", "CONSUMER_KAFKA_CA"))]
        assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]


def test_ssl_without_a_ca_uses_the_system_cas_and_mounts_nothing(helm):
    objs = rendered(helm, *EXTERNAL, "--set", "externalKafka.security.protocol=ssl")
    for name in DEPLOYMENTS:
        pod = deployment(objs, name)
        env = env_of(pod)
        assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "ssl"
        assert not [n for n in env if n.startswith(("KAFKA_SASL", "KAFKA_SSL", "CONSUMER_KAFKA_CA"))]
        assert "volumes" not in pod


def test_properties_become_kafka_property_variables(helm):
    objs = rendered(helm, *EXTERNAL, "--set", "externalKafka.properties.client\\.id=statecast",
                    "--set", "externalKafka.properties.fetch\\.wait\\.max\\.ms=100")
    for name in DEPLOYMENTS:
        env = env_of(deployment(objs, name))
        assert env["KAFKA_PROPERTY_CLIENT_ID"]["value"] == "statecast"
        assert env["KAFKA_PROPERTY_FETCH_WAIT_MAX_MS"]["value"] == "100"


SASL = [*EXTERNAL, "--set", "externalKafka.security.protocol=sasl_ssl",
        "--set", "externalKafka.security.sasl.mechanism=SCRAM-SHA-256",
        "--set", "externalKafka.security.sasl.username=statecast"]


@pytest.mark.parametrize("args,expected", [
    (["--set", "externalKafka.security.protocol=sasl_ssl"], "kafka.enabled is true"),
    ([*EXTERNAL, "--set", "externalKafka.security.protocol=sasl_ssl"], "externalKafka.security.sasl.mechanism"),
    ([*SASL], "externalKafka.security.sasl.existingSecret"),
    ([*SASL, "--set", "externalKafka.security.sasl.existingSecret=kafka-user"], "connectionSecret.existingSecret"),
    ([*EXTERNAL, "--set", "externalKafka.security.sasl.username=x"], "does not use SASL"),
    ([*EXTERNAL, "--set", "externalKafka.security.protocol=sasl_plaintext",
      "--set", "externalKafka.security.sasl.mechanism=PLAIN", "--set", "externalKafka.security.sasl.username=x",
      "--set", "connectionSecret.existingSecret=conn", "--set", "externalKafka.security.tls.caSecret=ca"],
     "does not use TLS"),
    ([*EXTERNAL, "--set", "externalKafka.properties.group\\.id=x"], "externalKafka.properties.group.id cannot be passed through"),
    ([*EXTERNAL, "--set", "externalKafka.properties.ssl\\.key\\.password=x"], "looks secret"),
    ([*EXTERNAL, "--set", "externalKafka.security.protocol=tls"], "/externalKafka/security/protocol"),
    ([*EXTERNAL, "--set", "externalKafka.properties.Client_Id=x"], "'Client_Id' does not match pattern"),
], ids=["bundled-kafka", "no-mechanism", "no-password-secret", "no-consumer-password", "sasl-without-sasl",
        "ca-without-tls", "reserved-property", "secret-property", "bad-protocol", "bad-property-name"])
def test_impossible_kafka_security_fails_naming_the_value(helm, args, expected):
    stderr = fails(helm, *args)
    assert expected in stderr, stderr


def test_sasl_password_secret_defaults_to_the_connection_secret(helm):
    objs = rendered(helm, *SASL, "--set", "connectionSecret.existingSecret=conn")
    volumes = {v["name"]: v for v in deployment(objs, "statecast-api")["volumes"]}
    assert volumes["kafka-sasl"]["secret"]["secretName"] == "conn"
