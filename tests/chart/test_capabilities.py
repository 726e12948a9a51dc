"""Issue 14, item 1: the chart installs on a cluster without the Gateway API or Envoy Gateway.

`helm install -f values-kind.yaml` on a fresh kind cluster failed with "no matches for kind
Gateway": the gateway objects rendered although their CRDs were absent. They now render only
when the cluster serves every API they need (.Capabilities.APIVersions, which `helm template`
takes from --api-versions), all or nothing, and NOTES.txt warns first when gateway.enabled is set
but the APIs are missing. Runs under Helm 3 and Helm 4.
"""
import kubernetes_validate
import pytest
import yaml

from conftest import (CHART, GATEWAY_APIS, SCENARIOS, api_versions, run_helm, template_args)
from test_chart import KUBE_VERSION, rendered_notes

# Our own CRD: the one kind beyond the built-in ones a plain cluster gets from this chart (crds/).
OWN_KINDS = {("statecast.dev/v1alpha1", "ProfileConsumer")}
EDGE_KINDS = {"Gateway", "GatewayClass", "HTTPRoute", "SecurityPolicy", "BackendTrafficPolicy"}
# Value sets a user of a plain cluster installs with; the gateway ones enable every edge object.
PLAIN_SCENARIOS = ["default", "kind-bare"]
ALL_EDGE = ["--set", "gateway.createGatewayClass=true", "--set", "api.httpRoute.enabled=true",
            "--set", "api.httpRoute.parentRefs[0].name=public"]


def rendered(helm, *args):
    res = run_helm(helm, *template_args(*args))
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def known_to_a_plain_cluster(obj) -> bool:
    """Built-in kinds of Kubernetes KUBE_VERSION (those kubernetes-validate has a schema for), plus
    our own CRD."""
    if (obj["apiVersion"], obj["kind"]) in OWN_KINDS:
        return True
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=False)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        pass  # known kind; field validation is test_chart's business
    return True


def unknown_kinds(objs):
    return sorted({f"{o['apiVersion']} {o['kind']}" for o in objs if not known_to_a_plain_cluster(o)})


def test_the_plain_cluster_check_itself_refuses_gateway_kinds():
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g"}}
    policy = {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "p"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    pc = {"apiVersion": "statecast.dev/v1alpha1", "kind": "ProfileConsumer", "metadata": {"name": "c"}}
    assert unknown_kinds([gateway, policy, pod, pc]) == ["gateway.envoyproxy.io/v1alpha1 SecurityPolicy",
                                                         "gateway.networking.k8s.io/v1 Gateway"]


@pytest.mark.parametrize("scenario_name", PLAIN_SCENARIOS)
@pytest.mark.parametrize("extra", [[], ALL_EDGE], ids=["values", "values+every-edge-option"])
def test_on_a_plain_cluster_only_builtin_kinds_and_our_crd_render(helm, scenario_name, extra):
    objs = rendered(helm, *SCENARIOS[scenario_name], *extra)
    assert len(objs) > 10
    assert not unknown_kinds(objs), (f"({scenario_name}) kinds a plain cluster does not serve would fail "
                                     f"the install with 'no matches for kind': {unknown_kinds(objs)}")


def test_with_the_gateway_apis_served_the_kind_values_render_the_gateway(helm):
    objs = rendered(helm, *SCENARIOS["kind-bare"], *api_versions(GATEWAY_APIS))
    kinds = sorted(o["kind"] for o in objs if o["kind"] in EDGE_KINDS)
    assert kinds == ["BackendTrafficPolicy", "Gateway", "HTTPRoute", "SecurityPolicy"]
    objs = rendered(helm, *SCENARIOS["kind-bare"], *ALL_EDGE, *api_versions(GATEWAY_APIS))
    kinds = sorted(o["kind"] for o in objs if o["kind"] in EDGE_KINDS)
    assert kinds == ["BackendTrafficPolicy", "Gateway", "GatewayClass", "HTTPRoute", "HTTPRoute", "SecurityPolicy"]


def test_with_the_gateway_apis_served_the_default_values_render_no_gateway(helm):
    objs = rendered(helm, *SCENARIOS["default"], *api_versions(GATEWAY_APIS))
    assert not {o["kind"] for o in objs} & EDGE_KINDS


def test_the_gateway_is_all_or_nothing_without_envoy_gateway(helm):
    """Gateway API alone (e.g. a cloud's built-in Gateway API): without the SecurityPolicy the route
    would expose the API with no token check, so none of the gateway renders."""
    gateway_api_only = [a for a in GATEWAY_APIS if a.startswith("gateway.networking.k8s.io")]
    objs = rendered(helm, *SCENARIOS["kind-bare"], *api_versions(gateway_api_only))
    assert not {o["kind"] for o in objs} & EDGE_KINDS
    # api.httpRoute needs only the Gateway API.
    objs = rendered(helm, *SCENARIOS["kind-bare"], *ALL_EDGE, *api_versions(gateway_api_only))
    assert [o["kind"] for o in objs if o["kind"] in EDGE_KINDS] == ["HTTPRoute"]


def test_bad_gateway_values_still_fail_on_a_plain_cluster(helm):
    res = run_helm(helm, *template_args("--set", "gateway.enabled=true"))
    assert res.returncode != 0 and "gateway.jwt.remoteJwksUri" in res.stderr, res.stderr
    res = run_helm(helm, *template_args("--set", "api.httpRoute.enabled=true"))
    assert res.returncode != 0 and "api.httpRoute.parentRefs" in res.stderr, res.stderr


def test_notes_warn_first_when_the_gateway_apis_are_missing(helm, tmp_path):
    notes = rendered_notes(helm, tmp_path / "bare", *SCENARIOS["kind-bare"], *ALL_EDGE)
    first, second = [line for line in notes.splitlines() if line.startswith("WARNING")][:2]
    assert first.startswith("WARNING: gateway.enabled=true but the cluster does not serve")
    for api in ("gateway.networking.k8s.io/v1/Gateway", "gateway.envoyproxy.io/v1alpha1/SecurityPolicy",
                "gateway.envoyproxy.io/v1alpha1/BackendTrafficPolicy", "gateway.networking.k8s.io/v1/GatewayClass"):
        assert api in first
    assert second.startswith("WARNING: api.httpRoute.enabled=true but the cluster does not serve")
    assert "statecast-gateway" not in notes, "no gateway instructions when the gateway is not installed"
    served = rendered_notes(helm, tmp_path / "served", *SCENARIOS["kind-bare"], *api_versions(GATEWAY_APIS))
    assert "does not serve" not in served and "statecast-gateway" in served
