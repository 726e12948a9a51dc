"""Tests of the edge: the API gateway (Gateway API + Envoy Gateway policies) and secret handling.

Issue 9: authentication, routing and rate limiting live in an API gateway that holds no domain
logic; secrets reach workloads only through Kubernetes Secrets. Runs under Helm 3 and Helm 4.
"""
import base64
import copy
import re

import jsonschema
import pytest

from conftest import CHART, GATEWAY_APIS, ROOT, SCENARIOS, api_versions, render, run_helm, template_args
import edge_schemas

EDGE_KINDS = {"Gateway", "GatewayClass", "HTTPRoute", "SecurityPolicy", "BackendTrafficPolicy"}
ENVOY_GATEWAY_VERSION = "v1.9.3"
# Env names that must never carry a literal value: they come from a Secret by secretKeyRef.
SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|DATABASE_URL|REDIS_URL")
# Env vars whose names match SECRET_ENV but hold no secret, and why.
NOT_SECRET_ENV = {"CONSUMER_SECRET": "the *name* of the Secret the operator mounts into consumers (docs/contracts.md)",
                  "CONSUMER_IMAGE_PULL_SECRETS": "the *names* of the image pull Secrets of the consumer pods",
                  "CONSUMER_KAFKA_CA_SECRET": "the *name* of the Secret holding the Kafka CA of the consumers",
                  "KAFKA_SASL_PASSWORD_FILE": "the *path* of the mounted password file"}


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind):
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def helm_fails(helm, *args):
    res = run_helm(helm, *template_args(*args))
    assert res.returncode != 0, f"helm template {' '.join(args)} unexpectedly succeeded"
    return res.stderr


# --- structure ---------------------------------------------------------------------------------

def test_edge_objects_validate_against_the_minimal_crd_schemas(helm, scenario, capsys):
    checked = 0
    for obj in render(helm, scenario):
        schema = edge_schemas.SCHEMAS.get(obj["kind"])
        if schema is None:
            continue
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']} ({scenario}): {errors}"
        checked += 1
    if checked:
        with capsys.disabled():
            print(f"\n  [{helm}/{scenario}] {checked} Gateway/GatewayClass/SecurityPolicy/BackendTrafficPolicy "
                  "checked against tests/chart/edge_schemas.py: no offline schema of the Gateway API or "
                  "Envoy Gateway CRDs exists on PyPI, so the fields the chart uses are transcribed from the CRDs")


def test_the_edge_schemas_themselves_refuse_bad_objects(helm):
    objs = render(helm, "kind")
    policy = one(objs, "SecurityPolicy")
    limit = one(objs, "BackendTrafficPolicy")
    gateway = one(objs, "Gateway")
    check = {"SecurityPolicy": policy, "BackendTrafficPolicy": limit, "Gateway": gateway}
    for kind, obj in check.items():
        assert not list(jsonschema.Draft7Validator(edge_schemas.SCHEMAS[kind]).iter_errors(obj)), kind

    def refused(kind, obj, change):
        bad = copy.deepcopy(obj)
        change(bad)
        return list(jsonschema.Draft7Validator(edge_schemas.SCHEMAS[kind]).iter_errors(bad))

    provider = lambda o: o["spec"]["jwt"]["providers"][0]  # noqa: E731
    rule = lambda o: o["spec"]["rateLimit"]["local"]["rules"][0]  # noqa: E731
    assert refused("SecurityPolicy", policy, lambda o: provider(o).update(remoteJWKS={"uri": "https://x"}))
    assert refused("SecurityPolicy", policy, lambda o: provider(o).pop("localJWKS"))
    assert refused("SecurityPolicy", policy, lambda o: provider(o).update(audience="typo"))
    assert refused("SecurityPolicy", policy, lambda o: o["spec"].pop("targetRefs"))
    assert refused("BackendTrafficPolicy", limit, lambda o: rule(o)["clientSelectors"][0]["headers"][0].update(type="Unique"))
    assert refused("BackendTrafficPolicy", limit, lambda o: rule(o)["limit"].update(unit="Week"))
    assert refused("BackendTrafficPolicy", limit, lambda o: rule(o).update(clientSelectors=[{}]))
    assert refused("Gateway", gateway, lambda o: o["spec"]["listeners"][0].update(port=0))


# --- what renders --------------------------------------------------------------------------------

def test_kind_values_render_gateway_route_jwt_and_per_subject_rate_limit(helm):
    objs = render(helm, "kind")
    gateway = one(objs, "Gateway")
    route = one(objs, "HTTPRoute")
    policy = one(objs, "SecurityPolicy")
    limit = one(objs, "BackendTrafficPolicy")
    assert not by_kind(objs, "GatewayClass"), "kind-up creates the GatewayClass"
    assert gateway["apiVersion"] == route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert policy["apiVersion"] == limit["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert gateway["spec"]["gatewayClassName"] == "eg"
    listener, = gateway["spec"]["listeners"]
    assert (listener["name"], listener["protocol"], listener["port"]) == ("http", "HTTP", 80)

    # The route hangs off the chart's Gateway and sends /v1/ to the API Service only.
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": gateway["metadata"]["name"], "sectionName": "http"}]
    rule, = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1/"}}]
    assert rule["backendRefs"] == [{"name": "statecast-api", "port": 8080}]

    # Both policies attach to that route.
    for p in (policy, limit):
        assert p["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                            "name": route["metadata"]["name"]}]
    jwt = policy["spec"]["jwt"]
    assert jwt["optional"] is False
    provider, = jwt["providers"]
    assert provider["issuer"] == "https://statecast.kind.local"
    assert provider["audiences"] == ["statecast"]
    assert provider["localJWKS"] == {"type": "ValueRef",
                                     "valueRef": {"group": "", "kind": "ConfigMap", "name": "statecast-demo-jwks"}}
    assert provider["claimToHeaders"] == [{"header": "x-jwt-sub", "claim": "sub"}]

    rate = limit["spec"]["rateLimit"]
    assert rate["type"] == "Local" and set(rate) == {"type", "local"}
    rl_rule, = rate["local"]["rules"]
    assert rl_rule["clientSelectors"] == [{"headers": [{"name": "x-jwt-sub", "type": "Distinct"}]}]
    assert rl_rule["limit"] == {"requests": 5, "unit": "Second"}


def test_gateway_options_render_remote_jwks_https_global_source_ip_and_class(helm):
    objs = render(helm, "gateway")
    gateway_class = one(objs, "GatewayClass")
    assert gateway_class["metadata"]["name"] == "eg" and "namespace" not in gateway_class["metadata"]
    assert gateway_class["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    listener, = one(objs, "Gateway")["spec"]["listeners"]
    assert (listener["name"], listener["protocol"], listener["port"]) == ("https", "HTTPS", 443)
    assert listener["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "statecast-edge-tls"}]
    route = one(objs, "HTTPRoute")
    assert route["spec"]["hostnames"] == ["api.statecast.example.com"]
    assert route["spec"]["parentRefs"][0]["sectionName"] == "https"
    provider, = one(objs, "SecurityPolicy")["spec"]["jwt"]["providers"]
    assert provider["remoteJWKS"] == {"uri": "https://issuer.example.com/.well-known/jwks.json"}
    assert "localJWKS" not in provider
    assert provider["audiences"] == ["statecast", "statecast-admin"]
    rate = one(objs, "BackendTrafficPolicy")["spec"]["rateLimit"]
    assert rate["type"] == "Global" and set(rate) == {"type", "global"}
    rl_rule, = rate["global"]["rules"]
    assert rl_rule["clientSelectors"] == [{"sourceCIDR": {"type": "Distinct", "value": "0.0.0.0/0"}}]
    assert rl_rule["limit"] == {"requests": 100, "unit": "Minute"}
    api = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "statecast-api")
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["RATE_LIMIT_PER_SECOND"]["value"], env["RATE_LIMIT_BURST"]["value"]) == ("50", "100")
    assert env["AUTH_JWKS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "statecast-edge-auth"


def test_the_gateway_jwks_falls_back_to_auth_jwks_url(helm):
    res = run_helm(helm, *template_args("-f", str(ROOT / "tests/chart/values/external.yaml"),
                                        "--set", "gateway.enabled=true", *api_versions(GATEWAY_APIS),
                                        "--show-only", "templates/gateway-securitypolicy.yaml"))
    assert res.returncode == 0, res.stderr
    assert "uri: \"https://issuer.example.com/.well-known/jwks.json\"" in res.stdout


@pytest.mark.parametrize("scenario_name", ["default", "external", "autoscaling"])
def test_nothing_of_the_gateway_renders_when_disabled(helm, scenario_name):
    objs = render(helm, scenario_name)
    kinds = {o["kind"] for o in objs} & EDGE_KINDS
    expected = {"HTTPRoute"} if scenario_name == "autoscaling" else set()  # api.httpRoute, not the gateway
    assert kinds == expected, kinds
    assert not [o for o in objs if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "gateway"]
    api = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "statecast-api")
    env = {e["name"] for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not env & {"RATE_LIMIT_PER_SECOND", "RATE_LIMIT_BURST"}, "null keeps the API's own defaults"


# --- values that must fail ---------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--set", "gateway.rateLimit.type=Fixed"], ["/gateway/rateLimit/type", "Local"]),
    (["--set", "gateway.rateLimit.unit=Week"], ["/gateway/rateLimit/unit", "Second"]),
    (["--set", "gateway.rateLimit.requests=0"], ["/gateway/rateLimit/requests", "minimum"]),
    (["--set", "gateway.rateLimit.clientKey=cookie"], ["/gateway/rateLimit/clientKey", "jwtSub"]),
    (["--set", "gateway.jwt.remoteJwksUri=ftp://issuer/jwks"], ["/gateway/jwt/remoteJwksUri"]),
    (["--set", "gateway.hostnames[0]=Bad_Host"], ["/gateway/hostnames/0"]),
    (["--set", "gateway.listener.port=70000"], ["/gateway/listener/port", "maximum"]),
    (["--set", "gateway.enabled=yes"], ["/gateway/enabled", "boolean"]),
    (["--set", "gateway.bogus=1"], ["bogus", "not allowed"]),
    (["--set", "auth.hs256Secret=plain-text"], ["hs256Secret", "not allowed"]),
], ids=["rl-type", "rl-unit", "rl-requests", "rl-key", "jwks-scheme", "hostname", "port", "enabled-type",
        "unknown-key", "no-plain-hs256-value"])
def test_values_schema_rejects_bad_gateway_values_with_a_clear_message(helm, args, expected):
    stderr = helm_fails(helm, *args)
    assert "values don't meet the specifications of the schema" in stderr, stderr
    for text in expected:
        assert text in stderr, stderr


@pytest.mark.parametrize("args,expected", [
    (["--set", "gateway.enabled=true"], "gateway.jwt.remoteJwksUri"),
    (["--set", "gateway.enabled=true", "--set", "gateway.jwt.remoteJwksUri=https://i/jwks",
      "--set", "gateway.jwt.localJwksConfigMap=jwks"], "both set"),
    (["--set", "gateway.enabled=true", "--set", "gateway.jwt.remoteJwksUri=https://i/jwks",
      "--set", "gateway.jwt.optional=true"], "clientKey=sourceIP"),
    (["--set", "gateway.enabled=true", "--set", "gateway.jwt.remoteJwksUri=https://i/jwks",
      "--set", "gateway.listener.protocol=HTTPS"], "gateway.listener.tlsSecretName"),
], ids=["no-keys", "two-key-sources", "spoofable-key", "https-without-cert"])
def test_inconsistent_gateway_values_fail_naming_the_value(helm, args, expected):
    stderr = helm_fails(helm, *args)
    assert expected in stderr, stderr


def test_values_schema_accepts_the_gateway_examples(helm):
    for name in ("kind", "gateway"):
        res = run_helm(helm, "lint", "--strict", str(CHART), *SCENARIOS[name])
        assert res.returncode == 0, res.stdout + res.stderr


# --- secrets -------------------------------------------------------------------------------------

def env_lists(obj):
    """(where, env list) of every container of a workload, and a ProfileConsumer's spec.env."""
    kind = obj["kind"]
    if kind == "ProfileConsumer":
        yield "spec.env", obj["spec"].get("env") or []
        return
    spec = obj.get("spec") or {}
    if kind == "Pod":
        pod = spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        pod = spec["template"]["spec"]
    elif kind == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    else:
        return
    for field in ("initContainers", "containers"):
        for c in pod.get(field) or []:
            yield f"{field}[{c['name']}]", c.get("env") or []


def plain_secret_env(objs):
    found = []
    for obj in objs:
        for where, env in env_lists(obj):
            for var in env:
                if not SECRET_ENV.search(var["name"]) or var["name"] in NOT_SECRET_ENV:
                    continue
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if "value" in var or not ref:
                    found.append(f"{obj['kind']}/{obj['metadata']['name']} {where} {var['name']}")
    return found


def test_no_workload_or_profileconsumer_has_a_secret_as_a_plain_env_value(helm, scenario):
    objs = render(helm, scenario)
    assert any(True for o in objs for _ in env_lists(o))
    found = plain_secret_env(objs)
    assert not found, (f"({scenario}) env vars matching {SECRET_ENV.pattern} must come from a Secret by "
                       f"secretKeyRef, found plain values: {found}")


def test_the_plain_secret_check_itself_catches_literals():
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "env": [
        {"name": "AUTH_HS256_SECRET", "value": "x"}, {"name": "REDIS_URL", "value": "redis://"},
        {"name": "API_TOKEN", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "CONSUMER_SECRET", "value": "statecast-consumer"}]}]}}
    pc = {"kind": "ProfileConsumer", "metadata": {"name": "pc"},
          "spec": {"env": [{"name": "DATABASE_URL", "value": "postgres://u:p@h/db"}]}}
    found = " ".join(plain_secret_env([pod, pc]))
    for name in ("AUTH_HS256_SECRET", "REDIS_URL", "API_TOKEN", "ProfileConsumer/pc spec.env DATABASE_URL"):
        assert name in found
    assert "DB_PASSWORD" not in found and "CONSUMER_SECRET" not in found


def test_a_generated_hs256_secret_lives_only_in_the_auth_secret(helm):
    objs = render(helm, "autoscaling")
    secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "statecast-auth")
    value = base64.b64decode(secret["data"]["AUTH_HS256_SECRET"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{64}", value)
    api = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "statecast-api")
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AUTH_HS256_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "statecast-auth"
    for o in objs:
        if o["kind"] != "Secret":
            assert value not in str(o), f"{o['kind']}/{o['metadata']['name']} contains the HS256 secret"


# --- kind path and docs --------------------------------------------------------------------------

def test_kind_up_installs_a_pinned_envoy_gateway_before_the_chart():
    text = (ROOT / "scripts/kind-up").read_text()
    assert f'ENVOY_GATEWAY_VERSION="${{ENVOY_GATEWAY_VERSION:-{ENVOY_GATEWAY_VERSION}}}"' in text
    install_eg = text.index("oci://docker.io/envoyproxy/gateway-helm")
    assert "-n envoy-gateway-system --create-namespace" in text or "--namespace envoy-gateway-system" in text
    assert "deployment/envoy-gateway" in text, "kind-up waits for the Envoy Gateway deployment"
    assert "GatewayClass" in text and "gateway.envoyproxy.io/gatewayclass-controller" in text
    assert "statecast-demo-jwks" in text
    install_chart = text.index('helm upgrade --install "$RELEASE"')
    assert install_eg < install_chart
    assert ENVOY_GATEWAY_VERSION in (ROOT / "docs/edge.md").read_text()


def test_notes_show_how_to_call_the_api_through_the_gateway_with_a_token(helm, tmp_path):
    from test_chart import rendered_notes
    notes = rendered_notes(helm, tmp_path, "-f", str(CHART / "values-kind.yaml"), *api_versions(GATEWAY_APIS))
    for text in ("statecast-gateway", "scripts/chart/demo-token", "authorization: Bearer", "429"):
        assert text in notes, notes
    assert "statecast-gateway" not in rendered_notes(helm, tmp_path / "d")
