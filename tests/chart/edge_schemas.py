"""Minimal JSON schemas of the edge objects the chart renders, for offline validation.

No package on PyPI ships the Gateway API or Envoy Gateway CRD schemas, so these cover exactly
the fields the chart uses, transcribed from the CRDs (Gateway API v1 `Gateway`, `GatewayClass`,
`HTTPRoute`; Envoy Gateway v1.9 `api/v1alpha1` `SecurityPolicy` (jwt_types.go) and
`BackendTrafficPolicy` (ratelimit_types.go)). Every object refuses unknown fields, so a typo in a
template fails here; a field the chart starts using must be added here, from the CRD.
"""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def obj(props, required=()):
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


def string(**kw):
    return {"type": "string", **kw}


METADATA = obj({"name": string(pattern=DNS_LABEL, maxLength=253), "namespace": string(pattern=DNS_LABEL),
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
               required=["name"])


def resource(api_version, kind, spec, namespaced=True):
    meta = dict(METADATA)
    if namespaced:
        meta = {**METADATA, "required": ["name", "namespace"]}
    return obj({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": meta,
                "spec": spec}, required=["apiVersion", "kind", "metadata", "spec"])


# gateway.networking.k8s.io/v1 LocalPolicyTargetReferenceWithSectionName, as Envoy Gateway uses it.
TARGET_REFS = {"type": "array", "minItems": 1, "maxItems": 16, "items": obj({
    "group": {"const": "gateway.networking.k8s.io"},
    "kind": string(enum=["Gateway", "HTTPRoute", "GRPCRoute"]),
    "name": string(minLength=1, maxLength=253),
    "sectionName": string(pattern=DNS_LABEL),
}, required=["group", "kind", "name"])}

GATEWAY_CLASS = resource("gateway.networking.k8s.io/v1", "GatewayClass", obj({
    "controllerName": string(pattern=r"^[a-z0-9.-]+/[A-Za-z0-9/._-]+$", maxLength=253),
}, required=["controllerName"]), namespaced=False)

GATEWAY = resource("gateway.networking.k8s.io/v1", "Gateway", obj({
    "gatewayClassName": string(pattern=DNS_LABEL, maxLength=253),
    "listeners": {"type": "array", "minItems": 1, "maxItems": 64, "items": obj({
        "name": string(pattern=DNS_LABEL, maxLength=253),
        "hostname": string(pattern=HOSTNAME),
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "protocol": string(enum=["HTTP", "HTTPS", "TLS", "TCP", "UDP"]),
        "tls": obj({"mode": string(enum=["Terminate", "Passthrough"]),
                    "certificateRefs": {"type": "array", "maxItems": 64, "items": obj({
                        "group": string(), "kind": string(), "name": string(minLength=1),
                        "namespace": string()}, required=["name"])}}),
        "allowedRoutes": obj({"namespaces": obj({"from": string(enum=["All", "Same", "Selector"])})}),
    }, required=["name", "port", "protocol"])},
}, required=["gatewayClassName", "listeners"]))

HEADER_MATCH = obj({"name": string(minLength=1, maxLength=256),
                    "type": string(enum=["Exact", "RegularExpression", "Distinct"]),
                    "value": string(maxLength=1024), "invert": {"type": "boolean"}}, required=["name"])
RATE_LIMIT_RULES = {"type": "array", "maxItems": 16, "items": obj({
    "clientSelectors": {"type": "array", "maxItems": 8, "items": {
        **obj({"headers": {"type": "array", "maxItems": 16, "items": HEADER_MATCH},
               "sourceCIDR": obj({"type": string(enum=["Exact", "Distinct"]),
                                  "value": string(minLength=1, maxLength=256)}, required=["value"])}),
        # CEL rule of RateLimitSelectCondition: at least one of headers, methods, path, sourceCIDR.
        "minProperties": 1}},
    "limit": obj({"requests": {"type": "integer", "minimum": 0},
                  "unit": string(enum=["Second", "Minute", "Hour", "Day", "Month", "Year"])},
                 required=["requests", "unit"]),
}, required=["limit"])}

BACKEND_TRAFFIC_POLICY = resource("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy", obj({
    "targetRefs": TARGET_REFS,
    "rateLimit": obj({"type": string(enum=["Global", "Local"]),
                      "local": obj({"rules": RATE_LIMIT_RULES}),
                      "global": obj({"rules": {**RATE_LIMIT_RULES, "maxItems": 128}}, required=["rules"])}),
}, required=["targetRefs"]))

JWT_PROVIDER = obj({
    "name": string(minLength=1, maxLength=253),
    "issuer": string(maxLength=253),
    "audiences": {"type": "array", "maxItems": 8, "items": string()},
    "remoteJWKS": obj({"uri": string(minLength=1, maxLength=253, pattern=r"^https?://")}, required=["uri"]),
    "localJWKS": obj({"type": string(enum=["Inline", "ValueRef"]), "inline": string(),
                      "valueRef": obj({"group": {"const": ""}, "kind": {"const": "ConfigMap"},
                                       "name": string(minLength=1, maxLength=253)},
                                      required=["group", "kind", "name"])}, required=["type"]),
    "claimToHeaders": {"type": "array", "items": obj({"header": string(minLength=1), "claim": string(minLength=1)},
                                                     required=["header", "claim"])},
}, required=["name"])
# CEL rules of JWTProvider: exactly one of remoteJWKS and localJWKS.
JWT_PROVIDER["oneOf"] = [{"required": ["remoteJWKS"]}, {"required": ["localJWKS"]}]

SECURITY_POLICY = resource("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy", obj({
    "targetRefs": TARGET_REFS,
    "jwt": obj({"optional": {"type": "boolean"},
                "providers": {"type": "array", "minItems": 1, "maxItems": 4, "items": JWT_PROVIDER}},
               required=["providers"]),
}, required=["targetRefs"]))

SCHEMAS = {"GatewayClass": GATEWAY_CLASS, "Gateway": GATEWAY, "SecurityPolicy": SECURITY_POLICY,
           "BackendTrafficPolicy": BACKEND_TRAFFIC_POLICY}
