"""The kind scripts' logic, run against recorded fakes of docker, kind, kubectl, helm and curl
(tests/chart/fakes.py): what they call, in which order, and that their retries re-evaluate the
condition, give up with a message, and pass once it holds. Issue 14, items 2-4.
"""
import json
import re

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
