"""The kind scripts' logic, run against recorded fakes of docker, kind, kubectl, helm and curl
(tests/chart/fakes.py): what they call, in which order, and that their retries re-evaluate the
condition, give up with a message, and pass once it holds. Issue 14, items 2-4.
"""
import json
import re
import subprocess

import pytest

from conftest import ROOT
from fakes import FakeTools

KIND_UP = ROOT / "scripts/kind-up"
KIND_DOWN = ROOT / "scripts/kind-down"
KIND_E2E = ROOT / "scripts/kind-e2e"


def index_of(lines, pattern):
    found = [n for n, line in enumerate(lines) if re.search(pattern, line)]
    assert found, f"no call matching {pattern!r} in:\n" + "\n".join(lines)
    return found[0]


# --- kind-up -----------------------------------------------------------------------------------

def kind_up_fakes(tmp_path, consumers=("0/1\n1/1\n", "1/1\n1/1\n")):
    fakes = FakeTools(tmp_path)
    fakes.on("kind", r"^get clusters$", "")
    fakes.on("kubectl", r"^create namespace", "apiVersion: v1\nkind: Namespace\n")
    fakes.on("kubectl", r"get secret statecast-demo-jwt-key$", 1)
    fakes.on("kubectl", r"get statefulset -o name",
             "statefulset.apps/statecast-kafka\nstatefulset.apps/statecast-postgresql\n")
    fakes.on("kubectl", r"get profileconsumers -o jsonpath", *consumers)
    return fakes


def test_kind_up_builds_without_attestations_then_loads_and_installs(tmp_path):
    fakes = kind_up_fakes(tmp_path)
    res = fakes.run(KIND_UP, env={"IMAGE": "ghcr.io/statecast/statecast:dev"})
    assert res.returncode == 0, res.stderr
    lines = fakes.lines()
    build = lines[index_of(lines, r"^docker build ")]
    # kind#3795: an attestation manifest in the index breaks `ctr images import` under the
    # containerd image store; without one the image loads under either store.
    for flag in ("--provenance=false", "--sbom=false", "--load", "-t ghcr.io/statecast/statecast:dev"):
        assert flag in build.split(" ") or flag in build, build
    assert build.endswith(str(ROOT))
    order = [index_of(lines, p) for p in (
        r"^docker info", r"^docker buildx version", r"^kind create cluster --name statecast --config .*kind-config\.yaml",
        r"^docker build ", r"^kind load docker-image ghcr\.io/statecast/statecast:dev --name statecast$",
        r"^helm upgrade --install eg oci://docker\.io/envoyproxy/gateway-helm --version v1\.9\.3",
        r"envoy-gateway-system wait --for=condition=Available deployment/envoy-gateway",
        r"^kubectl -n statecast create secret generic statecast-demo-jwt-key",
        r"^helm upgrade --install statecast .*charts/statecast .*--values .*values-kind\.yaml"
        r" --set image\.repository=ghcr\.io/statecast/statecast --set image\.tag=dev --wait",
        r"rollout status statefulset\.apps/statecast-kafka", r"rollout status statefulset\.apps/statecast-postgresql",
        r"wait --for=condition=complete job -l app\.kubernetes\.io/component=kafka-topics,app\.kubernetes\.io/instance=statecast",
        r"get profileconsumers -o jsonpath")]
    assert order == sorted(order), "\n".join(lines)
    # The consumers were not ready on the first look: kind-up looked again after a sleep.
    assert len([line for line in lines if "get profileconsumers -o jsonpath" in line]) == 2
    assert fakes.lines("sleep") == ["sleep 5"]
    assert "http://localhost:8080" in res.stdout


def test_kind_up_reuses_an_existing_cluster(tmp_path):
    fakes = kind_up_fakes(tmp_path)
    fakes.rules.insert(0, {"tool": "kind", "pattern": "^get clusters$",
                           "answers": [{"stdout": "other\nstatecast\n", "rc": 0, "stderr": ""}]})
    res = fakes.run(KIND_UP)
    assert res.returncode == 0, res.stderr
    assert not [line for line in fakes.lines("kind") if "create cluster" in line]
    assert "reusing it" in res.stderr


def test_kind_up_gives_up_on_consumers_that_never_get_ready_with_a_message(tmp_path):
    fakes = kind_up_fakes(tmp_path, consumers=("0/1\n1/1\n",))
    res = fakes.run(KIND_UP, env={"CONSUMERS_TIMEOUT_S": "30", "RETRY_INTERVAL": "5"})
    assert res.returncode == 1
    assert "consumers not ready after 30 s" in res.stderr, res.stderr
    assert len([line for line in fakes.lines() if "get profileconsumers -o jsonpath" in line]) == 6  # 30 / 5
    assert fakes.lines("sleep") == ["sleep 5"] * 5


@pytest.mark.parametrize("broken,message", [
    ("info", "the Docker engine is not reachable"),
    ("buildx version", "docker buildx is missing"),
])
def test_kind_up_stops_before_building_without_a_usable_docker(tmp_path, broken, message):
    fakes = kind_up_fakes(tmp_path)
    fakes.on("docker", f"^{broken}", 1)
    res = fakes.run(KIND_UP)
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert not [line for line in fakes.lines("docker") if line.startswith("docker build ")]
    assert not fakes.lines("kind") or "create" not in " ".join(fakes.lines("kind"))


def test_kind_up_names_a_missing_tool(tmp_path):
    fakes = kind_up_fakes(tmp_path)
    fakes.without("kind")
    res = fakes.run(KIND_UP)
    if res.returncode == 0:
        pytest.skip("a real kind is on PATH")
    assert "kind is not on PATH" in res.stderr, res.stderr


# --- kind-down ---------------------------------------------------------------------------------

def test_kind_down_deletes_only_an_existing_cluster(tmp_path):
    fakes = FakeTools(tmp_path)
    fakes.on("kind", r"^get clusters$", "statecast\n", "")
    assert fakes.run(KIND_DOWN).returncode == 0
    assert fakes.lines("kind") == ["kind get clusters", "kind delete cluster --name statecast"]
    res = fakes.run(KIND_DOWN)
    assert res.returncode == 0 and "no kind cluster named statecast" in res.stderr
    assert fakes.lines("kind")[2:] == ["kind get clusters"]


# --- kind-e2e ----------------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SERVER = ("profile-api", "server", "PUT /v1/profiles/{id}")
SEND = ("profile-api", "producer", "send user-events")


def process(handler):
    return (f"profile-consumer-{handler}", "consumer", "process user-events")


def trace(*spans, trace_id=TRACE_ID):
    """A Jaeger /api/traces/{id} answer (the v1 JSON the UI uses) holding `spans`
    (service, span.kind, operation name), plus a kubelet-probe-like span to ignore."""
    spans = [*spans, ("profile-api", "server", "GET /readyz")]
    services = sorted({s for s, _, _ in spans})
    processes = {f"p{n}": {"serviceName": s, "tags": []} for n, s in enumerate(services)}
    pid = {s: f"p{n}" for n, s in enumerate(services)}
    return json.dumps({"data": [{"traceID": trace_id, "processes": processes, "spans": [
        {"traceID": trace_id, "spanID": f"{n:016x}", "operationName": op, "processID": pid[s],
         "tags": [{"key": "span.kind", "type": "string", "value": kind}]}
        for n, (s, kind, op) in enumerate(spans)]}]})


def pcons(*specs):
    return json.dumps({"items": [{"metadata": {"name": name}, "spec": {"topics": ["user-events"], **spec}}
                                 for name, spec in specs]})


DECLARED = pcons(("audit", {"handler": "audit", "replicas": 2}),
                 ("statecast-audit", {"handler": "audit", "replicas": 1}),
                 ("statecast-analytics", {"handler": "analytics", "autoscaling": {"maxReplicas": 3}}),
                 ("statecast-email", {"handler": "email", "replicas": 1, "paused": True}),
                 ("statecast-idle", {"handler": "email", "replicas": 0}),
                 ("statecast-cache-refresh", {"handler": "cache-refresh", "replicas": 1}),
                 ("other-topic", {"handler": "email", "topics": ["other"]}))
COMPLETE = trace(SERVER, SEND, process("audit"), process("audit"), process("analytics"), process("cache-refresh"))


def e2e_fakes(tmp_path, ready=("", "0", "1"), audit=("", f"row:{TRACE_ID}\n"), traces=(22, COMPLETE),
              replicas=("2", "3"), gone=("deployment.apps/profile-consumer-audit\n", ""), gateway=""):
    fakes = FakeTools(tmp_path)
    k = "^-n statecast "
    fakes.on("kubectl", k + r"create --dry-run=client -f \S+audit-fixed-replicas\.yaml -o jsonpath=\{\.metadata\.name\}$", "audit")
    fakes.on("kubectl", k + r"get profileconsumer audit -o jsonpath=\{\.status\.readyReplicas\}$", *ready)
    fakes.on("kubectl", k + r"get pod -l app\.kubernetes\.io/instance=statecast,app\.kubernetes\.io/component=postgresql",
             "statecast-postgresql-0")
    fakes.on("kubectl", k + r"exec statecast-postgresql-0 -c postgresql -- sh -c .*from audit_log where user_id = 'e2e-", *audit)
    fakes.on("kubectl", k + r"get profileconsumers -o json$", DECLARED)
    fakes.on("kubectl", k + r"get profileconsumer audit -o jsonpath=\{\.spec\.replicas\}$", "2")
    fakes.on("kubectl", k + r"get deployment profile-consumer-audit -o jsonpath=\{\.spec\.replicas\}$", *replicas)
    fakes.on("kubectl", k + r"get deployment profile-consumer-audit --ignore-not-found -o name$", *gone)
    fakes.on("kubectl", r"^-n envoy-gateway-system get svc -o name", gateway)
    fakes.on("curl", r"-X PUT .* http://localhost:8080/v1/profiles/e2e-", 7, 0)
    fakes.on("curl", rf"http://localhost:16686/api/traces/{TRACE_ID} ", *traces)
    return fakes


def count(fakes, pattern):
    return len([line for line in fakes.lines() if re.search(pattern, line)])


def test_kind_e2e_passes_once_every_condition_holds_retrying_each_afresh(tmp_path):
    incomplete = trace(SERVER, SEND, process("audit"), process("analytics"))  # cache-refresh not yet
    fakes = e2e_fakes(tmp_path, traces=(22, incomplete, COMPLETE))
    res = fakes.run(KIND_E2E)
    assert res.returncode == 0, res.stderr
    assert "PASS" in res.stderr
    lines = fakes.lines()
    # Each wait ran its check again until it held: ready on the 3rd look, PUT on the 2nd try,
    # the audit row on the 2nd query, the complete trace on the 3rd fetch, ...
    assert count(fakes, r"readyReplicas") == 3
    assert count(fakes, r"-X PUT") == 2
    assert count(fakes, r"from audit_log") == 2
    assert count(fakes, rf"api/traces/{TRACE_ID}") == 3
    # ... the Deployment's replicas on the 2nd, its absence on the 2nd.
    assert count(fakes, r"get deployment profile-consumer-audit -o jsonpath") == 2
    assert count(fakes, r"get deployment profile-consumer-audit --ignore-not-found") == 2
    assert fakes.lines("sleep") == ["sleep 2"] * 8  # 2 + 1 + 1 + 2 + 1 + 1 retries
    # The trace is the one the audit row names, not any profile-api trace since the PUT.
    assert not [line for line in lines if "service=profile-api" in line]
    order = [index_of(lines, p) for p in (
        r"^kubectl -n statecast apply -f \S+audit-fixed-replicas\.yaml$", r"-X PUT", r"from audit_log",
        rf"api/traces/{TRACE_ID}", r"^kubectl -n statecast scale pcon/audit --replicas=3$",
        r"get deployment profile-consumer-audit -o jsonpath",
        r"^kubectl -n statecast delete profileconsumer audit", r"--ignore-not-found")]
    assert order == sorted(order), "\n".join(lines)
    assert "no Envoy Gateway proxy" in res.stderr


def test_kind_e2e_requires_a_process_span_from_every_declared_consumer_service(tmp_path):
    without_cache_refresh = trace(SERVER, SEND, process("audit"), process("analytics"))
    fakes = e2e_fakes(tmp_path, traces=(without_cache_refresh,))
    res = fakes.run(KIND_E2E, env={"TIMEOUT_S": "10"})
    assert res.returncode == 1
    assert f"trace {TRACE_ID} in Jaeger lacks (service|kind|span): profile-consumer-cache-refresh|consumer|process user-events" \
        in res.stderr, res.stderr
    assert count(fakes, rf"api/traces/{TRACE_ID}") == 5  # 10 s / 2 s
    assert "profile-consumer-email" not in res.stderr, "paused and 0-replica consumers are not required"


@pytest.mark.parametrize("spans,missing", [
    ((SEND, process("audit"), process("analytics"), process("cache-refresh")), "profile-api|server|PUT /v1/profiles/{id}"),
    ((SERVER, process("audit"), process("analytics"), process("cache-refresh")), "profile-api|producer|send user-events"),
    ((SERVER, SEND, ("profile-consumer-audit", "internal", "process user-events"), process("analytics"),
      process("cache-refresh")), "profile-consumer-audit|consumer|process user-events"),
], ids=["no-server-span", "no-send-span", "wrong-span-kind"])
def test_kind_e2e_requires_the_api_server_and_send_spans(tmp_path, spans, missing):
    fakes = e2e_fakes(tmp_path, traces=(trace(*spans),))
    res = fakes.run(KIND_E2E, env={"TIMEOUT_S": "4"})
    assert res.returncode == 1 and missing in res.stderr, res.stderr


def test_kind_e2e_fails_when_the_audit_row_has_no_trace_id(tmp_path):
    fakes = e2e_fakes(tmp_path, audit=("row:\n",))
    res = fakes.run(KIND_E2E)
    assert res.returncode == 1 and "has no trace id" in res.stderr, res.stderr
    assert not count(fakes, r"api/traces")


@pytest.mark.parametrize("change,message,attempts", [
    ({"ready": ("0",)}, "ProfileConsumer audit has no ready replica after 120 s", (r"readyReplicas", 60)),
    ({"audit": ("",)}, "no audit_log row for e2e-", (r"from audit_log", 30)),
    ({"replicas": ("2",)}, "deployment/profile-consumer-audit did not follow pcon/audit to 3 replicas in 60 s",
     (r"get deployment profile-consumer-audit -o jsonpath", 30)),
    ({"gone": ("deployment.apps/profile-consumer-audit\n",)}, "deployment/profile-consumer-audit is still there 60 s after deleting pcon/audit",
     (r"--ignore-not-found", 30)),
], ids=["never-ready", "no-audit-row", "deployment-does-not-scale", "deployment-stays"])
def test_kind_e2e_gives_up_on_a_condition_that_never_holds_with_a_message(tmp_path, change, message, attempts):
    fakes = e2e_fakes(tmp_path, **change)
    res = fakes.run(KIND_E2E)
    assert res.returncode == 1
    assert f"kind-e2e: FAIL: {message}" in res.stderr, res.stderr
    pattern, n = attempts
    assert count(fakes, pattern) == n, "tries = seconds / RETRY_INTERVAL"


def test_kind_e2e_gateway_checks_send_a_fresh_request_on_every_try(tmp_path):
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(key)], check=True, capture_output=True)
    fakes = e2e_fakes(tmp_path, gateway="service/envoy-statecast-statecast-gateway-1234\n")
    # The proxy is not routing yet (503), then refuses the request without a token (401).
    fakes.rules.insert(0, {"tool": "curl", "pattern": r"-w %\{http_code\} -H authorization: Bearer \S+ http://localhost:8888/",
                           "answers": [{"stdout": s, "rc": 0, "stderr": ""} for s in ("200", "200", "200", "429")]})
    fakes.on("curl", r"-w %\{http_code\} http://localhost:8888/v1/profiles/e2e-", "503", "503", "401")
    res = fakes.run(KIND_E2E, env={"KEY_FILE": str(key)})
    assert res.returncode == 0, res.stderr
    assert count(fakes, r"-w %\{http_code\} http://localhost:8888") == 3
    assert count(fakes, r"authorization: Bearer") == 4
    assert count(fakes, r"port-forward service/envoy-statecast-statecast-gateway-1234 8888:80") == 1
    assert "gateway: 401 without a token, 200 with one, 429 past the per-subject limit" in res.stderr


def test_kind_e2e_gateway_without_401_fails_with_a_message(tmp_path):
    fakes = e2e_fakes(tmp_path, gateway="service/envoy-gw\n")
    fakes.on("curl", r"-w %\{http_code\} http://localhost:8888/", "200")
    res = fakes.run(KIND_E2E)
    assert res.returncode == 1
    assert "the gateway did not answer 401 to a request without a token" in res.stderr, res.stderr
    assert count(fakes, r"-w %\{http_code\} http://localhost:8888") == 15
