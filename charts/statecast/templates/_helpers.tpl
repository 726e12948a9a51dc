{{/*
The chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "statecast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every object: "<release>-<chart>", or the release name when it already
contains the chart name. Truncated to 63 characters.
*/}}
{{- define "statecast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's objects: "<fullname>-<component>", truncated to 63 characters.
Call with (dict "root" $ "component" "api").
*/}}
{{- define "statecast.componentName" -}}
{{- if not .component }}
{{- fail "statecast.componentName: the component argument is required" }}
{{- end }}
{{- printf "%s-%s" (include "statecast.fullname" .root | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" | trunc 63 }}
{{- end }}

{{/*
"<chart>-<version>" for the helm.sh/chart label, truncated to 63 characters.
*/}}
{{- define "statecast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object. Call with (dict "root" $ "component" "api").
*/}}
{{- define "statecast.labels" -}}
helm.sh/chart: {{ include "statecast.chart" .root }}
{{ include "statecast.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: statecast
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "root" $ "component" "api").
*/}}
{{- define "statecast.selectorLabels" -}}
{{- if not .component }}
{{- fail "statecast.selectorLabels: the component argument is required" }}
{{- end -}}
app.kubernetes.io/name: {{ include "statecast.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The Statecast image reference: repository plus digest, or tag (default: the chart appVersion).
*/}}
{{- define "statecast.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
A bundled service's image reference. Call with one service's image values.
*/}}
{{- define "statecast.bundledImage" -}}
{{- if not (and .repository .tag) }}
{{- fail "statecast.bundledImage: image.repository and image.tag are required" }}
{{- end }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/*
Kafka bootstrap servers: the bundled broker's Service, or externalKafka.brokers. Fails when
Kafka is disabled and no external brokers are set.
*/}}
{{- define "statecast.kafkaBrokers" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s.%s.svc:9092" (include "statecast.componentName" (dict "root" . "component" "kafka")) .Release.Namespace }}
{{- else if .Values.externalKafka.brokers }}
{{- .Values.externalKafka.brokers }}
{{- else }}
{{- fail "kafka.enabled is false but externalKafka.brokers is empty: set externalKafka.brokers to your Kafka bootstrap servers (host:port[,host:port]) or set kafka.enabled=true" }}
{{- end }}
{{- end }}

{{/*
The OTLP endpoint: otel.endpoint, else the bundled Jaeger's OTLP/gRPC port, else empty.
*/}}
{{- define "statecast.otelEndpoint" -}}
{{- if .Values.otel.endpoint }}
{{- .Values.otel.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s.%s.svc:4317" (include "statecast.componentName" (dict "root" . "component" "jaeger")) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
OpenTelemetry env vars for one service. Call with (dict "root" $ "service" "profile-api").
Renders nothing when there is no endpoint.
*/}}
{{- define "statecast.otelEnv" -}}
{{- $endpoint := include "statecast.otelEndpoint" .root }}
{{- if $endpoint }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .root.Values.otel.protocol | quote }}
{{- with .root.Values.otel.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- end }}

{{/*
Name of the Secret with DATABASE_URL, REDIS_URL and SMTP_URL (the operator's CONSUMER_SECRET).
*/}}
{{- define "statecast.connectionSecretName" -}}
{{- default .Values.connectionSecret.name .Values.connectionSecret.existingSecret | trunc 63 }}
{{- end }}

{{/*
The names of .Values.imagePullSecrets, comma-separated: the operator's
CONSUMER_IMAGE_PULL_SECRETS, set on every consumer pod.
*/}}
{{- define "statecast.consumerImagePullSecrets" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{/*
Name of the generated Secret holding the bundled PostgreSQL and Redis passwords.
*/}}
{{- define "statecast.credentialsSecretName" -}}
{{- include "statecast.componentName" (dict "root" . "component" "credentials") }}
{{- end }}

{{/*
Name of the Secret with the API's AUTH_* settings.
*/}}
{{- define "statecast.authSecretName" -}}
{{- default (include "statecast.componentName" (dict "root" . "component" "auth")) .Values.auth.existingSecret }}
{{- end }}

{{/*
Non-empty when the chart should create the auth Secret: some AUTH_* key is configured.
*/}}
{{- define "statecast.authSecretWanted" -}}
{{- $a := .Values.auth }}
{{- if or $a.existingSecret $a.generateHs256Secret $a.jwksUrl $a.issuer $a.audience }}true{{ end }}
{{- end }}

{{/*
Name of the edge objects (Gateway, HTTPRoute, SecurityPolicy, BackendTrafficPolicy).
*/}}
{{- define "statecast.gatewayName" -}}
{{- include "statecast.componentName" (dict "root" . "component" "gateway") }}
{{- end }}

{{/*
The JWKS URI the gateway fetches keys from: gateway.jwt.remoteJwksUri, else auth.jwksUrl.
Empty when the gateway reads a local JWKS from a ConfigMap.
*/}}
{{- define "statecast.gatewayJwksUri" -}}
{{- default .Values.auth.jwksUrl .Values.gateway.jwt.remoteJwksUri }}
{{- end }}

{{/*
The APIs ("group/version/Kind") the gateway objects need: Gateway, HTTPRoute and SecurityPolicy,
plus BackendTrafficPolicy with gateway.rateLimit.enabled and GatewayClass with
gateway.createGatewayClass. Space-separated.
*/}}
{{- define "statecast.gatewayApis" -}}
{{- $apis := list "gateway.networking.k8s.io/v1/Gateway" "gateway.networking.k8s.io/v1/HTTPRoute" "gateway.envoyproxy.io/v1alpha1/SecurityPolicy" }}
{{- if .Values.gateway.rateLimit.enabled }}
{{- $apis = append $apis "gateway.envoyproxy.io/v1alpha1/BackendTrafficPolicy" }}
{{- end }}
{{- if .Values.gateway.createGatewayClass }}
{{- $apis = append $apis "gateway.networking.k8s.io/v1/GatewayClass" }}
{{- end }}
{{- join " " $apis }}
{{- end }}

{{/*
The APIs of statecast.gatewayApis the cluster does not serve (.Capabilities.APIVersions; with
`helm template`, the --api-versions given). Space-separated, empty when all are there.
*/}}
{{- define "statecast.gatewayMissingApis" -}}
{{- $missing := list }}
{{- range splitList " " (include "statecast.gatewayApis" .) }}
{{- if not ($.Capabilities.APIVersions.Has .) }}
{{- $missing = append $missing . }}
{{- end }}
{{- end }}
{{- join " " $missing }}
{{- end }}

{{/*
"true" when the gateway objects render: gateway.enabled and every API they need is served. All
or nothing: a Gateway and HTTPRoute without their SecurityPolicy would expose the API without
the token check, and a kind the cluster lacks fails the whole install ("no matches for kind").
*/}}
{{- define "statecast.gatewayRendered" -}}
{{- if and .Values.gateway.enabled (not (include "statecast.gatewayMissingApis" .)) }}true{{ end }}
{{- end }}

{{/*
"true" when the api.httpRoute HTTPRoute renders: api.httpRoute.enabled and the cluster serves
gateway.networking.k8s.io/v1 HTTPRoute.
*/}}
{{- define "statecast.apiHttpRouteRendered" -}}
{{- if and .Values.api.httpRoute.enabled (.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1/HTTPRoute") }}true{{ end }}
{{- end }}

{{/*
Checks the gateway values that the schema cannot express; fails naming the value to set.
*/}}
{{- define "statecast.validateGateway" -}}
{{- $g := .Values.gateway }}
{{- if $g.enabled }}
{{- $uri := include "statecast.gatewayJwksUri" . }}
{{- if and (not $uri) (not $g.jwt.localJwksConfigMap) }}
{{- fail "gateway.enabled is true but the gateway has no JWT keys: set gateway.jwt.remoteJwksUri (https://issuer/.well-known/jwks.json), auth.jwksUrl or gateway.jwt.localJwksConfigMap" }}
{{- end }}
{{- if and $g.jwt.remoteJwksUri $g.jwt.localJwksConfigMap }}
{{- fail "gateway.jwt.remoteJwksUri and gateway.jwt.localJwksConfigMap are both set: Envoy Gateway takes exactly one JWKS source per provider" }}
{{- end }}
{{- if and $g.rateLimit.enabled (eq $g.rateLimit.clientKey "jwtSub") $g.jwt.optional }}
{{- fail "gateway.rateLimit.clientKey=jwtSub needs gateway.jwt.optional=false: without a required token a client can send its own x-jwt-sub header and pick its rate-limit bucket; use clientKey=sourceIP with optional tokens" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks values that the schema cannot express; fails with a message naming the value to set.
Included by every template that depends on them so that `helm template` fails early.
*/}}
{{- define "statecast.validate" -}}
{{- $existing := .Values.connectionSecret.existingSecret }}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalPostgresql.url) (not $existing) }}
{{- fail "postgresql.enabled is false but externalPostgresql.url is empty: set externalPostgresql.url (postgres://user:password@host:5432/db) or connectionSecret.existingSecret, or set postgresql.enabled=true" }}
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.url) (not $existing) }}
{{- fail "redis.enabled is false but externalRedis.url is empty: set externalRedis.url (redis://host:6379) or connectionSecret.existingSecret, or set redis.enabled=true" }}
{{- end }}
{{- if and (not .Values.kafka.enabled) (not .Values.externalKafka.brokers) }}
{{- fail "kafka.enabled is false but externalKafka.brokers is empty: set externalKafka.brokers to your Kafka bootstrap servers (host:port[,host:port]) or set kafka.enabled=true" }}
{{- end }}
{{- if and .Values.postgresql.enabled .Values.postgresql.auth.existingSecret (not $existing) }}
{{- fail "postgresql.auth.existingSecret is set, so the chart cannot build DATABASE_URL: also set connectionSecret.existingSecret to a Secret holding DATABASE_URL, REDIS_URL and SMTP_URL" }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.auth.existingSecret (not $existing) }}
{{- fail "redis.auth.existingSecret is set, so the chart cannot build REDIS_URL: also set connectionSecret.existingSecret to a Secret holding DATABASE_URL, REDIS_URL and SMTP_URL" }}
{{- end }}
{{- if and .Values.auth.generateHs256Secret .Values.auth.jwksUrl (not .Values.auth.existingSecret) }}
{{- fail "auth.generateHs256Secret and auth.jwksUrl are both set, but the API takes exactly one key source (AUTH_HS256_SECRET or AUTH_JWKS_URL) and would refuse to start: keep one of them" }}
{{- end }}
{{- if and (not .Values.auth.disabled) (not .Values.auth.existingSecret) (not .Values.auth.generateHs256Secret) (not .Values.auth.jwksUrl) }}
{{- fail "auth.disabled is false but no key is configured: set auth.jwksUrl, auth.existingSecret or auth.generateHs256Secret=true (or auth.disabled=true for a demo)" }}
{{- end }}
{{- include "statecast.validateGateway" . }}
{{- $names := list }}
{{- range .Values.consumers }}
{{- if has .name $names }}
{{- fail (printf "consumers: the name %q is used twice; every consumer needs a unique name" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- if and (hasKey . "replicas") (hasKey . "autoscaling") }}
{{- fail (printf "consumers[%s]: set either replicas or autoscaling, not both" .name) }}
{{- end }}
{{- if and (eq .handler "email") (not .paused) (not $.Values.mailpit.enabled) (not $.Values.externalSmtp.url) (not $existing) }}
{{- fail (printf "consumers[%s] runs the email handler, which needs SMTP_URL, but mailpit.enabled is false and externalSmtp.url is empty: set externalSmtp.url (smtp://user:password@host:587?tls=required), or connectionSecret.existingSecret with SMTP_URL, or remove or pause the consumer" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod-level security context of a bundled service running as `uid` (restricted Pod Security
Standard). Call with (dict "root" $ "uid" 999).
*/}}
{{- define "statecast.bundledPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  {{- toYaml .root.Values.bundledSecurity.seccompProfile | nindent 2 }}
{{- end }}

{{/*
Container security context of a bundled service. Call with (dict "readOnlyRootFilesystem" true).
*/}}
{{- define "statecast.bundledSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnlyRootFilesystem }}
capabilities:
  drop: ["ALL"]
{{- end }}
