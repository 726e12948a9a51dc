#!/usr/bin/env python3
"""Writes charts/statecast/values.schema.json.

The schema is kept as Python because JSON has no comments and a lot of repetition; edit this file
and run `scripts/chart-check --gen-schema` (tests fail if the JSON is stale).
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "charts/statecast/values.schema.json"


def obj(desc, props, required=None, extra=False):
    o = {"type": "object", "description": desc, "properties": props, "additionalProperties": extra}
    if required:
        o["required"] = required
    return o


def s(desc, **kw):
    return {"type": "string", "description": desc, **kw}


def b(desc):
    return {"type": "boolean", "description": desc}


def i(desc, minimum=None, maximum=None):
    o = {"type": "integer", "description": desc}
    if minimum is not None:
        o["minimum"] = minimum
    if maximum is not None:
        o["maximum"] = maximum
    return o


def free(desc, typ="object"):
    return {"type": typ, "description": desc}


PULL = s("Kubernetes image pull policy.", enum=["Always", "IfNotPresent", "Never"])
QUANTITY = {"type": ["string", "integer", "number"], "description": "A Kubernetes quantity."}
SERVICE_TYPE = s("Service type.", enum=["ClusterIP", "NodePort", "LoadBalancer"])
NODE_PORT = {"type": ["integer", "null"], "minimum": 30000, "maximum": 32767,
             "description": "Node port (30000-32767) when the type is NodePort; null lets Kubernetes choose."}
INT_OR_PERCENT = {"type": ["integer", "string", "null"], "pattern": "^[0-9]+%$", "minimum": 0,
                  "description": "An integer or a percentage such as 50%."}


def resources(desc="Container resources (requests and limits)."):
    return obj(desc, {
        "requests": {"type": "object", "description": "Resource requests.",
                     "additionalProperties": QUANTITY},
        "limits": {"type": "object", "description": "Resource limits.",
                   "additionalProperties": QUANTITY},
    })


def bundled_image(desc):
    return obj(desc, {
        "repository": s("Image repository.", minLength=1),
        "tag": s("Image tag.", minLength=1),
        "pullPolicy": PULL,
    }, required=["repository", "tag"])


def persistence(desc):
    return obj(desc, {
        "enabled": b("Use a PersistentVolumeClaim; false means an emptyDir."),
        "storageClass": s("StorageClass; empty means the cluster default."),
        "size": s("Volume size, e.g. 2Gi.", pattern="^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"),
    })


def ui_service(desc):
    return obj(desc, {"type": SERVICE_TYPE, "nodePort": NODE_PORT})


DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
HOSTNAME = "^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
POD_SC = free("Pod-level security context (a PodSecurityContext).")
SC = free("Container security context (a SecurityContext).")
PROBE = obj("Probe timing.", {
    "periodSeconds": i("Seconds between probes.", 1),
    "failureThreshold": i("Failures tolerated.", 1),
})
ENV_LIST = {"type": "array", "description": "Extra environment variables (a list of EnvVar).",
            "items": {"type": "object", "required": ["name"],
                      "properties": {"name": s("Variable name.", minLength=1)}}}
AUTOSCALING_CONSUMER = obj("Lag-based autoscaling done by the operator (instead of replicas).", {
    "minReplicas": i("Lowest replica count.", 0),
    "maxReplicas": i("Highest replica count.", 1),
    "lagThreshold": i("Consumer-group lag per replica that triggers a scale-up.", 1),
    "scaleDownDelaySeconds": i("Seconds the lag must stay low before scaling down.", 0),
    "targetDrainSeconds": i("Drain mode: size replicas from measured produce and consume rates so the "
                            "lag drains within this many seconds (needs scaleDownDelaySeconds >= 60).", 1),
}, required=["maxReplicas", "lagThreshold"])  # what the CRD requires (minReplicas defaults to 1)

CONSUMER = obj("One ProfileConsumer (statecast.dev/v1alpha1).", {
    "name": s("Resource name suffix (the resource is <fullname>-<name>).",
              pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=40),
    "handler": s("Handler run by profile-consumer.", enum=["audit", "analytics", "email", "cache-refresh"]),
    "groupId": s("Kafka consumer group.", minLength=1),
    "topics": {"type": "array", "description": "Topics consumed.", "minItems": 1,
               "items": s("A topic name.", minLength=1)},
    "replicas": i("Consumer pods (use either replicas or autoscaling).", 0),
    "autoscaling": AUTOSCALING_CONSUMER,
    "image": s("Consumer image; empty means the operator's CONSUMER_IMAGE."),
    "env": ENV_LIST,
    "resources": resources("Consumer container resources."),
    "dlqTopic": s("Dead-letter topic; default <first topic>.dlq."),
    "paused": b("Scale the consumer to zero without deleting it."),
    "startPosition": s("Where a new group starts: earliest (history) or latest (only new events); default latest for email, earliest otherwise.", enum=["earliest", "latest"]),
}, required=["name", "handler", "groupId", "topics"])

SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Statecast Helm chart values",
    **obj("Values of the Statecast chart; see values.yaml for the documentation of each key.", {
        "global": free("Global values shared with subcharts (unused)."),
        "nameOverride": s("Override of the chart name in resource names.", maxLength=40),
        "fullnameOverride": s("Override of the full resource-name prefix.", maxLength=63),
        "commonLabels": {"type": "object", "description": "Labels added to every object.",
                         "additionalProperties": {"type": "string"}},
        "image": obj("The Statecast image.", {
            "repository": s("Image repository.", minLength=1),
            "tag": s("Image tag; empty means the chart appVersion."),
            "digest": s("Image digest; overrides the tag.", pattern="^(sha256:[a-f0-9]{64})?$"),
            "pullPolicy": PULL,
        }, required=["repository"]),
        "imagePullSecrets": {"type": "array", "description": "Image pull secrets.",
                             "items": obj("A Secret reference.", {"name": s("Secret name.", minLength=1)},
                                          required=["name"])},
        "otel": obj("OpenTelemetry export.", {
            "endpoint": s("OTLP endpoint URL; empty means the bundled Jaeger (if enabled).",
                          pattern="^(https?://.+)?$"),
            "protocol": s("OTLP protocol.", enum=["grpc", "http/protobuf"]),
            "resourceAttributes": s("OTEL_RESOURCE_ATTRIBUTES."),
        }),
        "logLevel": s("RUST_LOG filter.", minLength=1),
        "auth": obj("Edge security of the Profile API.", {
            "disabled": b("Accept requests without a token (demo only)."),
            "generateHs256Secret": b("Generate a random HS256 secret into the auth Secret (kept across upgrades)."),
            "jwksUrl": s("JWKS URL.", pattern="^(https?://.+)?$"),
            "issuer": s("Expected iss claim."),
            "audience": s("Expected aud claim."),
            "publicReads": b("Allow reads without a token."),
            "existingSecret": s("Existing Secret with the AUTH_* keys."),
        }),
        "connectionSecret": obj("The Secret with DATABASE_URL, REDIS_URL and SMTP_URL.", {
            "name": s("Name of the Secret the chart creates.", minLength=1, maxLength=253),
            "existingSecret": s("Name of an existing Secret to use instead."),
        }),
        "api": obj("The Profile API.", {
            "replicaCount": i("Number of API pods (must be 0 or more).", 0),
            "cacheTtlSeconds": i("Cache TTL in seconds.", 1),
            "eventsTopic": s("Kafka topic for profile events.", minLength=1),
            "rateLimit": obj("The API's in-process rate limit.", {
                "perSecond": {"type": ["integer", "null"], "minimum": 1,
                              "description": "RATE_LIMIT_PER_SECOND; null keeps the API default."},
                "burst": {"type": ["integer", "null"], "minimum": 1,
                          "description": "RATE_LIMIT_BURST; null keeps the API default."},
            }),
            "nearCache": obj("The near cache in each API pod (NEAR_CACHE_*); null keeps the API default.", {
                "enabled": {"type": ["boolean", "null"],
                            "description": "NEAR_CACHE_ENABLED; null keeps the API default (true)."},
                "maxEntries": {"type": ["integer", "null"], "minimum": 1,
                               "description": "NEAR_CACHE_MAX_ENTRIES; null keeps the API default (50000)."},
                "maxBytes": {"type": ["integer", "null"], "minimum": 1,
                             "description": "NEAR_CACHE_MAX_BYTES; null keeps the API default (16777216)."},
            }),
            "extraEnv": ENV_LIST,
            "resources": resources(),
            "podAnnotations": free("Pod annotations."),
            "podLabels": free("Extra pod labels."),
            "nodeSelector": free("Node selector."),
            "tolerations": free("Tolerations.", "array"),
            "affinity": free("Affinity."),
            "topologySpreadConstraints": free("Topology spread constraints.", "array"),
            "podSecurityContext": POD_SC,
            "securityContext": SC,
            "livenessProbe": PROBE,
            "readinessProbe": PROBE,
            "startupProbe": PROBE,
            "service": obj("The API Service.", {
                "type": SERVICE_TYPE,
                "port": i("Service port.", 1, 65535),
                "nodePort": NODE_PORT,
                "annotations": free("Service annotations."),
            }),
            "ingress": obj("Ingress for the API.", {
                "enabled": b("Render an Ingress."),
                "className": s("IngressClass name."),
                "annotations": free("Ingress annotations."),
                "hosts": {"type": "array", "description": "Host rules.", "items": obj("A host rule.", {
                    "host": s("Host name.", minLength=1),
                    "paths": {"type": "array", "description": "Paths.", "items": obj("A path.", {
                        "path": s("Path.", pattern="^/"),
                        "pathType": s("Path type.", enum=["Prefix", "Exact", "ImplementationSpecific"]),
                    }, required=["path", "pathType"])},
                }, required=["host", "paths"])},
                "tls": free("Ingress TLS entries.", "array"),
            }),
            "httpRoute": obj("Gateway API HTTPRoute for the API.", {
                "enabled": b("Render an HTTPRoute."),
                "annotations": free("HTTPRoute annotations."),
                "parentRefs": {"type": "array", "description": "Gateways the route attaches to.",
                               "items": {"type": "object", "required": ["name"],
                                         "description": "A ParentReference.",
                                         "properties": {"name": s("Gateway name.", minLength=1)}}},
                "hostnames": {"type": "array", "description": "Host names.", "items": s("A host name.")},
                "matches": free("HTTPRouteMatch list.", "array"),
            }),
            "autoscaling": obj("HorizontalPodAutoscaler for the API.", {
                "enabled": b("Render an HPA."),
                "minReplicas": i("Lowest replica count.", 1),
                "maxReplicas": i("Highest replica count.", 1),
                "targetCPUUtilizationPercentage": i("Target CPU utilisation (%).", 1, 100),
                "targetMemoryUtilizationPercentage": {"type": ["integer", "null"], "minimum": 1,
                                                      "maximum": 100,
                                                      "description": "Target memory utilisation (%)."},
            }),
            "podDisruptionBudget": obj("PodDisruptionBudget for the API.", {
                "enabled": b("Render a PDB."),
                "minAvailable": INT_OR_PERCENT,
                "maxUnavailable": INT_OR_PERCENT,
            }),
        }),
        "operator": obj("The profile operator.", {
            "enabled": b("Render the operator."),
            "replicaCount": i("Operator pods (0 or more).", 0),
            "watchNamespace": s("Namespace to watch; empty means all."),
            "leaseName": s("Leader-election Lease name.", minLength=1),
            "consumerImage": s("Default consumer image."),
            "consumerServiceAccount": s("ServiceAccount of the consumer pods; empty means the namespace's default.",
                                        pattern=DNS_SUBDOMAIN),
            "extraEnv": ENV_LIST,
            "resources": resources(),
            "serviceAccount": obj("The operator's ServiceAccount.", {"annotations": free("Annotations.")}),
            "podAnnotations": free("Pod annotations."),
            "podLabels": free("Extra pod labels."),
            "nodeSelector": free("Node selector."),
            "tolerations": free("Tolerations.", "array"),
            "affinity": free("Affinity."),
            "podSecurityContext": POD_SC,
            "securityContext": SC,
            "service": obj("The operator's metrics Service.", {"port": i("Service port.", 1, 65535)}),
        }),
        "gateway": obj("API gateway: Gateway API resources plus Envoy Gateway JWT and rate-limit policies.", {
            "enabled": b("Render the Gateway, HTTPRoute, SecurityPolicy and BackendTrafficPolicy."),
            "className": s("GatewayClass name (Envoy Gateway's quickstart uses eg).", pattern=DNS_LABEL),
            "createGatewayClass": b("Also render the GatewayClass."),
            "controllerName": s("GatewayClass controller name.", pattern="^[a-z0-9.-]+/[A-Za-z0-9/._-]+$"),
            "listener": obj("The Gateway listener.", {
                "port": i("Listener port (1-65535).", 1, 65535),
                "protocol": s("Listener protocol.", enum=["HTTP", "HTTPS"]),
                "tlsSecretName": s("TLS Secret for HTTPS."),
            }),
            "hostnames": {"type": "array", "description": "Host names served (lower-case DNS names, optionally *.-prefixed).",
                          "items": s("A host name such as api.example.com.", pattern=HOSTNAME)},
            "annotations": {"type": "object", "description": "Gateway annotations.",
                            "additionalProperties": {"type": "string"}},
            "jwt": obj("JWT authentication at the gateway (SecurityPolicy).", {
                "providerName": s("JWT provider name.", minLength=1, maxLength=253),
                "issuer": s("Expected iss claim; empty means not checked.", maxLength=253),
                "audiences": {"type": "array", "maxItems": 8, "description": "Accepted aud claims (at most 8).",
                              "items": s("An audience.", minLength=1)},
                "remoteJwksUri": s("JWKS URI (http:// or https://); empty means auth.jwksUrl.",
                                   pattern="^(https?://.+)?$", maxLength=253),
                "localJwksConfigMap": s("ConfigMap holding the JWKS under key jwks.", pattern="^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"),
                "optional": b("Let requests without a token through."),
                "subjectHeader": s("Header receiving the sub claim.", pattern="^[a-z0-9][a-z0-9-]*$"),
            }),
            "rateLimit": obj("Per-client rate limiting (BackendTrafficPolicy).", {
                "enabled": b("Render the BackendTrafficPolicy."),
                "type": s("Local (per Envoy replica) or Global (shared, needs Envoy Gateway's rate-limit service with Redis).",
                          enum=["Local", "Global"]),
                "clientKey": s("What identifies a client: jwtSub or sourceIP.", enum=["jwtSub", "sourceIP"]),
                "requests": i("Requests per unit per client (at least 1).", 1),
                "unit": s("Rate-limit unit.", enum=["Second", "Minute", "Hour"]),
            }),
        }),
        "consumers": {"type": "array", "description": "ProfileConsumer resources to render.",
                      "items": CONSUMER},
        "topics": obj("Topics created by the kafka-topics Job (it waits for Kafka, then creates them).", {
            "partitions": i("Partitions of the events and DLQ topics.", 1),
            "replicationFactor": i("Replication factor.", 1),
            "dlqTopic": s("Dead-letter topic.", minLength=1),
        }),
        "externalPostgresql": obj("External PostgreSQL.", {
            "url": s("postgres:// URL.", pattern="^(postgres(ql)?://.+)?$")}),
        "externalRedis": obj("External Redis.", {"url": s(
            "redis:// or rediss:// URL; for a Redis Cluster, several nodes' URLs, comma-separated.",
            pattern="^(rediss?://[^,]+(,rediss?://[^,]+)*)?$")}),
        "externalKafka": obj("External Kafka: brokers and the client security of the API, the operator "
                             "and the consumers.", {
            "brokers": s("Comma-separated host:port list.",
                         pattern="^([^,:\\s]+:[0-9]+(,[^,:\\s]+:[0-9]+)*)?$"),
            "security": obj("Security of the connection (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, "
                            "KAFKA_SSL_CA_LOCATION).", {
                "protocol": s("KAFKA_SECURITY_PROTOCOL; anything but plaintext needs kafka.enabled=false.",
                              enum=["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]),
                "sasl": obj("SASL authentication, with sasl_plaintext and sasl_ssl.", {
                    "mechanism": s("KAFKA_SASL_MECHANISM; empty without SASL.",
                                   enum=["", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]),
                    "username": s("KAFKA_SASL_USERNAME; empty without SASL."),
                    "existingSecret": s("Secret holding the password; empty means connectionSecret.existingSecret.",
                                        pattern=DNS_SUBDOMAIN),
                    "passwordKey": s("Key of existingSecret holding the password.", minLength=1),
                }),
                "tls": obj("TLS, with ssl and sasl_ssl.", {
                    "caSecret": s("Secret holding the brokers' CA (PEM); empty means the system CAs.",
                                  pattern=DNS_SUBDOMAIN),
                    "caKey": s("Key of caSecret holding the PEM.", minLength=1),
                }),
            }),
            "properties": {"type": "object",
                           "description": "Other librdkafka properties (name: value), each passed as "
                                          "KAFKA_PROPERTY_<NAME>; no secrets.",
                           "propertyNames": {"pattern": "^[a-z0-9]+(\\.[a-z0-9]+)*$"},
                           "additionalProperties": {"type": ["string", "integer", "number", "boolean"]}},
        }),
        "externalSmtp": obj("External SMTP.", {"url": s("smtp:// or smtps:// URL.",
                                                        pattern="^(smtps?://.+)?$")}),
        "bundledSecurity": obj("Security settings of the bundled services.", {
            "seccompProfile": obj("Seccomp profile.", {
                "type": s("Seccomp profile type allowed by the restricted Pod Security Standard.",
                          enum=["RuntimeDefault", "Localhost"]),
                "localhostProfile": s("Profile path when type is Localhost."),
            }, required=["type"]),
        }),
        "postgresql": obj("Bundled PostgreSQL.", {
            "enabled": b("Run PostgreSQL in the cluster."),
            "image": bundled_image("PostgreSQL image."),
            "auth": obj("Database credentials.", {
                "username": s("User.", minLength=1),
                "database": s("Database.", minLength=1),
                "password": s("Password; empty means generated."),
                "existingSecret": s("Existing Secret with key `password`."),
            }),
            "persistence": persistence("PostgreSQL storage."),
            "resources": resources(),
        }),
        "redis": obj("Bundled Redis.", {
            "enabled": b("Run Redis in the cluster."),
            "image": bundled_image("Redis image."),
            "auth": obj("Redis authentication.", {
                "password": s("Password; empty means generated."),
                "existingSecret": s("Existing Secret with key `password`."),
            }),
            "resources": resources(),
        }),
        "kafka": obj("Bundled Kafka (KRaft).", {
            "enabled": b("Run Kafka in the cluster."),
            "image": bundled_image("Kafka image."),
            "clusterId": s("KRaft cluster id (22-character base64 UUID).", pattern="^[A-Za-z0-9_-]{22}$"),
            "heapOpts": s("KAFKA_HEAP_OPTS."),
            "persistence": persistence("Kafka storage."),
            "resources": resources(),
        }),
        "jaeger": obj("Bundled Jaeger v2.", {
            "enabled": b("Run Jaeger in the cluster."),
            "image": bundled_image("Jaeger image."),
            "uiService": ui_service("Jaeger UI Service."),
            "resources": resources(),
        }),
        "mailpit": obj("Bundled Mailpit.", {
            "enabled": b("Run Mailpit in the cluster."),
            "image": bundled_image("Mailpit image."),
            "uiService": ui_service("Mailpit UI Service."),
            "resources": resources(),
        }),
        "tests": obj("The helm test Pod.", {
            "enabled": b("Render the test Pod."),
            "curlImage": s("curl image.", minLength=1),
            "psqlImage": s("psql image; empty means the bundled postgresql image."),
            "profileBody": s("JSON body of the PUT request.", minLength=2),
            "timeoutSeconds": i("Seconds to wait for the audit row.", 1),
        }),
    }),
}


def render() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
