{{- /*
Kafka client security of the API and the operator (externalKafka.security and
externalKafka.properties; docs/contracts.md, "Kafka client settings"), and what the operator
passes on to the consumers. Secrets never become env values: the SASL password is a mounted
Secret key (KAFKA_SASL_PASSWORD_FILE), the CA a mounted Secret key (KAFKA_SSL_CA_LOCATION).
*/ -}}

{{/*
Directory the SASL password is mounted at; the file is always named "password".
*/}}
{{- define "statecast.kafkaSaslDir" -}}
/etc/statecast/kafka-sasl
{{- end }}

{{/*
Directory the Kafka CA is mounted at (the operator mounts consumers' CA at the same path); the
file is always named "ca.crt".
*/}}
{{- define "statecast.kafkaCaDir" -}}
/etc/statecast/kafka-ca
{{- end }}

{{/*
The protocol in effect: externalKafka.security.protocol with an external Kafka, plaintext with
the bundled one (validated by statecast.validateKafkaSecurity).
*/}}
{{- define "statecast.kafkaProtocol" -}}
{{- if .Values.kafka.enabled }}plaintext{{ else }}{{ .Values.externalKafka.security.protocol }}{{ end }}
{{- end }}

{{/*
Non-empty when the protocol in effect uses SASL.
*/}}
{{- define "statecast.kafkaUsesSasl" -}}
{{- if hasPrefix "sasl_" (include "statecast.kafkaProtocol" .) }}true{{ end }}
{{- end }}

{{/*
Non-empty when the protocol in effect uses TLS.
*/}}
{{- define "statecast.kafkaUsesTls" -}}
{{- if hasSuffix "ssl" (include "statecast.kafkaProtocol" .) }}true{{ end }}
{{- end }}

{{/*
Secret holding the SASL password of the API and the operator: externalKafka.security.sasl.existingSecret,
else connectionSecret.existingSecret.
*/}}
{{- define "statecast.kafkaSaslSecret" -}}
{{- default .Values.connectionSecret.existingSecret .Values.externalKafka.security.sasl.existingSecret }}
{{- end }}

{{/*
Non-empty when a CA Secret is mounted: a TLS protocol and externalKafka.security.tls.caSecret.
*/}}
{{- define "statecast.kafkaMountsCa" -}}
{{- if and (include "statecast.kafkaUsesTls" .) .Values.externalKafka.security.tls.caSecret }}true{{ end }}
{{- end }}

{{/*
Checks the Kafka security values that the schema cannot express; fails naming the value to set.
The binaries refuse the same combinations at start, but only after a rollout.
*/}}
{{- define "statecast.validateKafkaSecurity" -}}
{{- $s := .Values.externalKafka.security }}
{{- $protocol := $s.protocol }}
{{- if and .Values.kafka.enabled (ne $protocol "plaintext") }}
{{- fail (printf "externalKafka.security.protocol is %s but kafka.enabled is true: the bundled Kafka speaks plaintext only; set kafka.enabled=false and externalKafka.brokers" $protocol) }}
{{- end }}
{{- if not .Values.kafka.enabled }}
{{- if hasPrefix "sasl_" $protocol }}
{{- if not $s.sasl.mechanism }}
{{- fail (printf "externalKafka.security.protocol is %s but externalKafka.security.sasl.mechanism is empty: set SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN" $protocol) }}
{{- end }}
{{- if not $s.sasl.username }}
{{- fail (printf "externalKafka.security.protocol is %s but externalKafka.security.sasl.username is empty" $protocol) }}
{{- end }}
{{- if not (include "statecast.kafkaSaslSecret" .) }}
{{- fail (printf "externalKafka.security.protocol is %s but no Secret holds the password: set externalKafka.security.sasl.existingSecret (or connectionSecret.existingSecret); passwords never go into values" $protocol) }}
{{- end }}
{{- if and .Values.operator.enabled (not .Values.connectionSecret.existingSecret) }}
{{- fail (printf "externalKafka.security.protocol is %s: consumers read their password from key KAFKA_SASL_PASSWORD of the connection Secret, which the chart cannot put there; set connectionSecret.existingSecret to a Secret holding DATABASE_URL, REDIS_URL, SMTP_URL and KAFKA_SASL_PASSWORD" $protocol) }}
{{- end }}
{{- else if or $s.sasl.mechanism $s.sasl.username $s.sasl.existingSecret }}
{{- fail (printf "externalKafka.security.sasl is set but externalKafka.security.protocol=%s does not use SASL: use sasl_ssl (or sasl_plaintext), or clear externalKafka.security.sasl" $protocol) }}
{{- end }}
{{- if and $s.tls.caSecret (not (hasSuffix "ssl" $protocol)) }}
{{- fail (printf "externalKafka.security.tls.caSecret is set but externalKafka.security.protocol=%s does not use TLS: use ssl or sasl_ssl, or clear externalKafka.security.tls.caSecret" $protocol) }}
{{- end }}
{{- end }}
{{- /* Mirrors statecast-kafka: reserved properties have a setting of their own or a guarantee depending on them. */ -}}
{{- $reserved := list "bootstrap.servers" "metadata.broker.list" "security.protocol" "sasl.mechanism" "sasl.mechanisms" "sasl.username" "sasl.password" "ssl.ca.location" "group.id" "enable.auto.commit" "enable.auto.offset.store" "enable.idempotence" "acks" "request.required.acks" }}
{{- range $name, $value := .Values.externalKafka.properties }}
{{- if has $name $reserved }}
{{- fail (printf "externalKafka.properties.%s cannot be passed through: it has a value of its own (externalKafka.brokers, externalKafka.security) or a guarantee of the workloads depends on it (docs/contracts.md)" $name) }}
{{- end }}
{{- if regexMatch "password|secret|jaas|oauthbearer\\.config|^ssl\\.key|\\.pem$" $name }}
{{- fail (printf "externalKafka.properties.%s looks secret and would be a plain env value readable by anyone who can read the Deployments: pass it by secretKeyRef in api.extraEnv and operator.extraEnv (and ProfileConsumer env) instead" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Kafka security env of the API and the operator: the protocol, with SASL the mechanism, user and
KAFKA_SASL_PASSWORD_FILE, with a CA Secret KAFKA_SSL_CA_LOCATION, and one KAFKA_PROPERTY_<NAME>
per externalKafka.properties entry.
*/}}
{{- define "statecast.kafkaEnv" -}}
{{- $s := .Values.externalKafka.security }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ include "statecast.kafkaProtocol" . | quote }}
{{- if include "statecast.kafkaUsesSasl" . }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $s.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ $s.sasl.username | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "%s/password" (include "statecast.kafkaSaslDir" .) | quote }}
{{- end }}
{{- if include "statecast.kafkaMountsCa" . }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "%s/ca.crt" (include "statecast.kafkaCaDir" .) | quote }}
{{- end }}
{{- if not .Values.kafka.enabled }}
{{- range $name, $value := .Values.externalKafka.properties }}
- name: {{ printf "KAFKA_PROPERTY_%s" ($name | upper | replace "." "_") }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's settings for the consumers' CA (CONSUMER_KAFKA_CA_SECRET, CONSUMER_KAFKA_CA_KEY);
nothing without a mounted CA. The protocol, SASL user and properties reach the consumers from the
operator's own env; their password from key KAFKA_SASL_PASSWORD of the connection Secret.
*/}}
{{- define "statecast.consumerKafkaEnv" -}}
{{- if include "statecast.kafkaMountsCa" . }}
- name: CONSUMER_KAFKA_CA_SECRET
  value: {{ .Values.externalKafka.security.tls.caSecret | quote }}
- name: CONSUMER_KAFKA_CA_KEY
  value: {{ .Values.externalKafka.security.tls.caKey | quote }}
{{- end }}
{{- end }}

{{/*
Volume mounts of the SASL password and the CA (read-only); empty when neither is used.
*/}}
{{- define "statecast.kafkaVolumeMounts" -}}
{{- if include "statecast.kafkaUsesSasl" . }}
- name: kafka-sasl
  mountPath: {{ include "statecast.kafkaSaslDir" . }}
  readOnly: true
{{- end }}
{{- if include "statecast.kafkaMountsCa" . }}
- name: kafka-ca
  mountPath: {{ include "statecast.kafkaCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Volumes of the SASL password and the CA: one key of each Secret, under a fixed file name.
*/}}
{{- define "statecast.kafkaVolumes" -}}
{{- $s := .Values.externalKafka.security }}
{{- if include "statecast.kafkaUsesSasl" . }}
- name: kafka-sasl
  secret:
    secretName: {{ include "statecast.kafkaSaslSecret" . }}
    items:
      - key: {{ $s.sasl.passwordKey }}
        path: password
{{- end }}
{{- if include "statecast.kafkaMountsCa" . }}
- name: kafka-ca
  secret:
    secretName: {{ $s.tls.caSecret }}
    items:
      - key: {{ $s.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end }}
