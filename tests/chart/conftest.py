"""Fixtures for the chart tests: the two pinned Helm binaries and cached renderings.

Run through `scripts/chart-check`, which fetches the pinned tools and sets STATECAST_HELM3,
STATECAST_HELM4 and STATECAST_SHELLCHECK.
"""
import functools
import os
import pathlib
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/statecast"
VALUES = pathlib.Path(__file__).resolve().parent / "values"
RELEASE = "statecast"
NAMESPACE = "statecast"

# The Gateway API and Envoy Gateway kinds the chart can render, as a cluster with Envoy Gateway
# installed (scripts/kind-up) serves them: "group/version" and "group/version/Kind".
GATEWAY_KINDS = ["gateway.networking.k8s.io/v1/GatewayClass", "gateway.networking.k8s.io/v1/Gateway",
                 "gateway.networking.k8s.io/v1/HTTPRoute", "gateway.envoyproxy.io/v1alpha1/SecurityPolicy",
                 "gateway.envoyproxy.io/v1alpha1/BackendTrafficPolicy"]
GATEWAY_APIS = sorted({k.rsplit("/", 1)[0] for k in GATEWAY_KINDS} | set(GATEWAY_KINDS))


def api_versions(apis) -> list:
    """`helm template` arguments making the cluster serve `apis` (.Capabilities.APIVersions)."""
    return [arg for api in apis for arg in ("--api-versions", api)]


# Named value sets rendered by the tests: the values arguments of each (also given to `helm lint`).
SCENARIOS = {
    "default": [],
    "external": ["-f", str(VALUES / "external.yaml")],
    "autoscaling": ["-f", str(VALUES / "autoscaling.yaml")],
    "kind": ["-f", str(CHART / "values-kind.yaml")],
    "kind-bare": ["-f", str(CHART / "values-kind.yaml")],
    "gateway": ["-f", str(VALUES / "gateway.yaml")],
    "external-kafka-sasl-ssl": ["-f", str(CHART / "values-external-kafka-sasl-ssl.yaml")],
}
# The APIs beyond the built-in ones the cluster of each scenario serves. "kind" is the cluster
# scripts/kind-up makes (Envoy Gateway installed before the chart), "kind-bare" a fresh kind cluster.
SCENARIO_APIS = {"autoscaling": GATEWAY_APIS, "kind": GATEWAY_APIS, "gateway": GATEWAY_APIS}

HELM_ENV = {"helm3": "STATECAST_HELM3", "helm4": "STATECAST_HELM4"}


def helm_path(name: str) -> str:
    """Path of a pinned helm binary, from the environment chart-check sets."""
    path = os.environ.get(HELM_ENV[name])
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"{HELM_ENV[name]} is not set to an executable helm: run these tests through scripts/chart-check")
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    """Runs helm with a clean, throwaway configuration (no repositories, no kubeconfig)."""
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/statecast-helm/cache",
           "HELM_CONFIG_HOME": "/tmp/statecast-helm/config",
           "HELM_DATA_HOME": "/tmp/statecast-helm/data", "KUBECONFIG": "/dev/null"}
    return subprocess.run([helm_path(helm), *args], capture_output=True, text=True, env=env)


def template_args(*extra: str, release: str = RELEASE) -> list:
    return ["template", release, str(CHART), "--namespace", NAMESPACE, *extra]


@functools.lru_cache(maxsize=None)
def render(helm: str, scenario: str) -> tuple:
    """The objects `helm template` renders for a scenario (tests included, CRDs not)."""
    res = run_helm(helm, *template_args(*SCENARIOS[scenario], *api_versions(SCENARIO_APIS.get(scenario, []))))
    if res.returncode != 0:
        pytest.fail(f"{helm} template ({scenario}) failed:\n{res.stderr}")
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d)


@pytest.fixture(params=sorted(HELM_ENV))
def helm(request) -> str:
    """Each test taking `helm` runs under Helm 3 and Helm 4."""
    return request.param


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request) -> str:
    """Each test taking `scenario` runs for every value set."""
    return request.param
