//! The pure Deployment builder: a `ProfileConsumer`, the operator's [`Settings`] and the desired
//! replica count in, the `profile-consumer` Deployment out. No I/O, so every field is unit-tested.
//!
//! Kafka security ([`ConsumerKafka`]): the consumers get the operator's own protocol, SASL
//! mechanism and user name and its `KAFKA_PROPERTY_*` variables as plain values; the password
//! only as a `secretKeyRef` to the consumer Secret, and the CA only as a mounted Secret key.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use statecast_kafka::{SaslMechanism, SecurityProtocol};

use crate::crd::ProfileConsumer;
use crate::{Error, Result};

/// Name of the consumer container.
pub const CONTAINER_NAME: &str = "consumer";
/// Port of the consumer's `/healthz`, `/readyz` and `/metrics`.
pub const METRICS_PORT: i32 = 9090;
/// Value of `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGED_BY: &str = "profile-operator";
/// Keys of the consumer Secret passed to the consumers, each optional.
pub const SECRET_KEYS: [&str; 3] = ["DATABASE_URL", "REDIS_URL", "SMTP_URL"];
/// Key of the consumer Secret holding the SASL password, passed as `KAFKA_SASL_PASSWORD` (optional)
/// when the protocol uses SASL.
pub const SASL_PASSWORD_KEY: &str = "KAFKA_SASL_PASSWORD";
/// Directory the Kafka CA Secret key is mounted at (read-only) in the consumer pods.
pub const KAFKA_CA_DIR: &str = "/etc/statecast/kafka-ca";
/// File name of the CA inside [`KAFKA_CA_DIR`], whatever the Secret's key is called.
pub const KAFKA_CA_FILE: &str = "ca.crt";
/// Name of the CA volume in the consumer pods.
const KAFKA_CA_VOLUME: &str = "kafka-ca";

/// What the builder needs from the operator's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `KAFKA_BROKERS` passed to the consumers.
    pub kafka_brokers: String,
    /// Image used unless the resource sets `spec.image`.
    pub consumer_image: String,
    /// Secret in the resource's namespace holding `DATABASE_URL`, `REDIS_URL`, `SMTP_URL`.
    pub consumer_secret: String,
    /// Forwarded as `OTEL_EXPORTER_OTLP_ENDPOINT` when set.
    pub otel_endpoint: Option<String>,
    /// Forwarded as `OTEL_EXPORTER_OTLP_PROTOCOL` when set.
    pub otel_protocol: Option<String>,
    /// Secrets (in the resource's namespace) set as the pods' `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// ServiceAccount of the pods; `None` means the namespace's default.
    pub service_account: Option<String>,
    /// Kafka security passed to the consumers (the operator's own).
    pub kafka: ConsumerKafka,
}

/// The Kafka client settings of every consumer: the operator's own, minus its secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerKafka {
    /// `KAFKA_SECURITY_PROTOCOL`; left out when plaintext (the consumers' default), so a plaintext
    /// operator renders the same Deployments as before these settings existed.
    pub protocol: SecurityProtocol,
    /// `KAFKA_SASL_MECHANISM`, with a SASL protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// `KAFKA_SASL_USERNAME`, with a SASL protocol (not a secret). The password is never copied:
    /// consumers read key [`SASL_PASSWORD_KEY`] of the consumer Secret.
    pub sasl_username: Option<String>,
    /// `KAFKA_PROPERTY_*` variables by name, passed as plain values (only properties that hold no
    /// secret; see `config`).
    pub properties: BTreeMap<String, String>,
    /// Secret key with the brokers' CA, mounted at [`KAFKA_CA_DIR`]/[`KAFKA_CA_FILE`] and named by
    /// `KAFKA_SSL_CA_LOCATION` when the protocol uses TLS; `None` means the system CAs.
    pub ca: Option<SecretKeyRef>,
}

/// One key of a Secret in the resource's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Secret name.
    pub secret: String,
    /// Key in the Secret.
    pub key: String,
}

impl ConsumerKafka {
    /// The CA to mount: only with TLS (a consumer refuses `KAFKA_SSL_CA_LOCATION` without it).
    fn mounted_ca(&self) -> Option<&SecretKeyRef> {
        self.ca.as_ref().filter(|_| self.protocol.uses_tls())
    }

    /// The consumers' Kafka security variables, in a fixed order.
    fn env(&self, consumer_secret: &str) -> Vec<EnvVar> {
        let mut vars = vec![];
        if self.protocol != SecurityProtocol::Plaintext {
            vars.push(env("KAFKA_SECURITY_PROTOCOL", self.protocol.as_str()));
        }
        if self.protocol.uses_sasl() {
            if let Some(mechanism) = self.sasl_mechanism {
                vars.push(env("KAFKA_SASL_MECHANISM", mechanism.as_str()));
            }
            if let Some(username) = &self.sasl_username {
                vars.push(env("KAFKA_SASL_USERNAME", username));
            }
            vars.push(secret_env(consumer_secret, SASL_PASSWORD_KEY));
        }
        if self.mounted_ca().is_some() {
            vars.push(env(
                "KAFKA_SSL_CA_LOCATION",
                format!("{KAFKA_CA_DIR}/{KAFKA_CA_FILE}"),
            ));
        }
        vars.extend(self.properties.iter().map(|(name, value)| env(name, value)));
        vars
    }
}

/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;

/// `value` as a label value: unchanged when it fits in [`MAX_LABEL_VALUE`] characters, else its
/// first 52 characters (without trailing `-`, `_`, `.`), `-` and 10 hex digits of a stable hash
/// (64-bit FNV-1a) of the whole value, so two long names sharing a prefix stay distinct and the
/// label never changes between operator versions. Resource names only hold characters valid in
/// a label value.
pub fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_owned();
    }
    const HASH_DIGITS: usize = 10;
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut end = MAX_LABEL_VALUE - HASH_DIGITS - 1;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = value[..end].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let hex = format!("{hash:016x}");
    format!("{prefix}-{}", &hex[..HASH_DIGITS])
}

/// Labels selecting the pods of one resource. Never change: a Deployment's selector is immutable
/// (a name of at most 63 characters is its own label value, as it always was).
pub fn selector_labels(pc: &ProfileConsumer) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "profile-consumer".into()),
        (
            "app.kubernetes.io/instance".into(),
            label_value(&pc.name_any()),
        ),
    ])
}

/// The pods' selector as a string (`key=value,...`), as a HorizontalPodAutoscaler reads it from
/// the scale subresource (`status.selector`).
pub fn selector_string(pc: &ProfileConsumer) -> String {
    selector_labels(pc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// All `app.kubernetes.io/*` labels of the Deployment and its pods.
pub fn labels(pc: &ProfileConsumer) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pc);
    labels.insert(
        "app.kubernetes.io/component".into(),
        pc.spec.handler.as_str().into(),
    );
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "statecast".into());
    labels
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn secret_env(secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: key.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Environment of the consumer container: the operator's variables, with `spec.env` merged in.
/// Each name appears once: server-side apply refuses a list-map with a duplicate key
/// (`duplicate entries for key [name=...]`), so a user entry replaces the operator's entry of
/// that name in place (the whole `EnvVar`, `value` or `valueFrom`), a new name is appended, and
/// of two user entries with one name the later wins.
pub fn consumer_env(pc: &ProfileConsumer, settings: &Settings, group_id: &str) -> Vec<EnvVar> {
    let spec = &pc.spec;
    let handler = spec.handler.as_str();
    let mut vars = vec![
        env("KAFKA_BROKERS", &settings.kafka_brokers),
        env("KAFKA_GROUP_ID", group_id),
        env("KAFKA_TOPICS", spec.topics.join(",")),
        env("CONSUMER_HANDLER", handler),
    ];
    if let Some(dlq) = &spec.dlq_topic {
        vars.push(env("DLQ_TOPIC", dlq));
    }
    if let Some(start) = spec.start_position {
        vars.push(env("KAFKA_START_POSITION", start.as_str()));
    }
    vars.push(env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")));
    vars.extend(
        SECRET_KEYS
            .iter()
            .map(|key| secret_env(&settings.consumer_secret, key)),
    );
    vars.extend(settings.kafka.env(&settings.consumer_secret));
    if let Some(endpoint) = &settings.otel_endpoint {
        vars.push(env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    }
    if let Some(protocol) = &settings.otel_protocol {
        vars.push(env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol));
    }
    vars.push(env(
        "OTEL_SERVICE_NAME",
        format!("profile-consumer-{handler}"),
    ));
    for user in &spec.env {
        match vars.iter_mut().find(|v| v.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => vars.push(user.clone()),
        }
    }
    vars
}

fn http_probe(path: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(METRICS_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        ..Probe::default()
    }
}

/// Builds the Deployment of `pc` with `desired` replicas (0 when the resource is paused).
///
/// Fails only when the resource lacks the name, namespace or uid the owner reference needs.
pub fn build(
    pc: &ProfileConsumer,
    settings: &Settings,
    group_id: &str,
    desired: i32,
) -> Result<Deployment> {
    let owner = pc
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let labels = labels(pc);
    let replicas = if pc.spec.paused { 0 } else { desired };
    let image = pc
        .spec
        .image
        .clone()
        .unwrap_or_else(|| settings.consumer_image.clone());

    // The root filesystem is read-only; give the process a writable /tmp.
    let mut volume_mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    if let Some(ca) = settings.kafka.mounted_ca() {
        volume_mounts.push(VolumeMount {
            name: KAFKA_CA_VOLUME.into(),
            mount_path: KAFKA_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        // Not optional: without its CA a consumer cannot verify the brokers, so the pod waits
        // (event FailedMount naming the Secret) instead of starting and failing its handshakes.
        volumes.push(Volume {
            name: KAFKA_CA_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.secret.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: KAFKA_CA_FILE.into(),
                    mode: None,
                    user: None,
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }

    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(image),
        command: Some(vec!["profile-consumer".into()]),
        env: Some(consumer_env(pc, settings, group_id)),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 5)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        resources: pc.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };

    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(pc.deployment_name()),
            namespace: Some(pc.namespace_or_err()?),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(pc)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // Consumers never call the Kubernetes API: no token in the pods.
                    automount_service_account_token: Some(false),
                    service_account_name: settings.service_account.clone(),
                    image_pull_secrets: Some(
                        settings
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect(),
                    )
                    .filter(|secrets: &Vec<_>| !secrets.is_empty()),
                    // The consumer finishes its in-flight batch and commits within 30 s of SIGTERM.
                    termination_grace_period_seconds: Some(40),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{Handler, ProfileConsumerSpec};

    pub(crate) fn settings() -> Settings {
        Settings {
            kafka_brokers: "kafka:9092".into(),
            consumer_image: "ghcr.io/statecast/statecast:0.1.0".into(),
            consumer_secret: "statecast-consumer".into(),
            otel_endpoint: None,
            otel_protocol: None,
            image_pull_secrets: vec![],
            service_account: None,
            kafka: ConsumerKafka::default(),
        }
    }

    pub(crate) fn spec() -> ProfileConsumerSpec {
        ProfileConsumerSpec {
            handler: Handler::Audit,
            group_id: None,
            topics: vec!["user-events".into()],
            replicas: Some(2),
            autoscaling: None,
            image: None,
            env: vec![],
            resources: None,
            dlq_topic: None,
            paused: false,
            start_position: None,
        }
    }

    pub(crate) fn resource(name: &str, spec: ProfileConsumerSpec) -> ProfileConsumer {
        let mut pc = ProfileConsumer::new(name, spec);
        pc.metadata.namespace = Some("default".into());
        pc.metadata.uid = Some(format!("uid-{name}"));
        pc.metadata.generation = Some(1);
        pc
    }

    fn env_value(d: &Deployment, name: &str) -> Option<String> {
        container(d)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec.template.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn deployment_is_owned_by_the_resource_and_labelled() {
        let pc = resource("audit", spec());
        let d = build(&pc, &settings(), "default.audit", 2).unwrap();
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ProfileConsumer");
        assert_eq!(owner.api_version, "statecast.dev/v1alpha1");
        assert_eq!(owner.name, "audit");
        assert_eq!(owner.uid, "uid-audit");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(d.metadata.name.as_deref(), Some("profile-consumer-audit"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("default"));
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "profile-consumer");
        assert_eq!(labels["app.kubernetes.io/instance"], "audit");
        assert_eq!(labels["app.kubernetes.io/component"], "audit");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "profile-operator");
        assert_eq!(labels["app.kubernetes.io/part-of"], "statecast");
        let spec = &d.spec;
        assert_eq!(spec.selector.match_labels.as_ref().unwrap().len(), 2);
        assert_eq!(spec.replicas, Some(2));
    }

    #[test]
    fn consumer_env_is_complete_and_user_env_comes_last() {
        let mut s = spec();
        s.handler = Handler::CacheRefresh;
        s.topics = vec!["a".into(), "b".into()];
        s.dlq_topic = Some("a.dlq".into());
        s.env = vec![EnvVar {
            name: "MAX_RETRIES".into(),
            value: Some("3".into()),
            value_from: None,
        }];
        let mut cfg = settings();
        cfg.otel_endpoint = Some("http://otel:4317".into());
        cfg.otel_protocol = Some("grpc".into());
        let d = build(&resource("cr", s), &cfg, "g1", 1).unwrap();
        let names: Vec<_> = container(&d)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "KAFKA_BROKERS",
                "KAFKA_GROUP_ID",
                "KAFKA_TOPICS",
                "CONSUMER_HANDLER",
                "DLQ_TOPIC",
                "METRICS_ADDR",
                "DATABASE_URL",
                "REDIS_URL",
                "SMTP_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_SERVICE_NAME",
                "MAX_RETRIES",
            ]
        );
        assert_eq!(env_value(&d, "KAFKA_BROKERS").unwrap(), "kafka:9092");
        assert_eq!(env_value(&d, "KAFKA_GROUP_ID").unwrap(), "g1");
        assert_eq!(env_value(&d, "KAFKA_TOPICS").unwrap(), "a,b");
        assert_eq!(env_value(&d, "CONSUMER_HANDLER").unwrap(), "cache-refresh");
        assert_eq!(env_value(&d, "DLQ_TOPIC").unwrap(), "a.dlq");
        assert_eq!(env_value(&d, "METRICS_ADDR").unwrap(), "0.0.0.0:9090");
        assert_eq!(
            env_value(&d, "OTEL_SERVICE_NAME").unwrap(),
            "profile-consumer-cache-refresh"
        );
        let db = container(&d).env.as_ref().unwrap()[6].clone();
        let secret = db.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(secret.name, "statecast-consumer");
        assert_eq!(secret.key, "DATABASE_URL");
        assert_eq!(secret.optional, Some(true));
    }

    #[test]
    fn optional_env_is_left_out_when_unset() {
        let d = build(&resource("cr", spec()), &settings(), "g", 1).unwrap();
        assert!(env_value(&d, "DLQ_TOPIC").is_none());
        let names: Vec<_> = container(&d)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("OTEL_EXPORTER")));
    }

    #[test]
    fn pod_is_restricted_and_probed_on_the_metrics_port() {
        let d = build(&resource("cr", spec()), &settings(), "g", 1).unwrap();
        let pod = d.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = container(&d);
        assert_eq!(c.name, "consumer");
        assert_eq!(c.command.as_ref().unwrap(), &["profile-consumer"]);
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/statecast/statecast:0.1.0")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("metrics"), 9090)
        );
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::Int(9090));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn paused_resource_gets_zero_replicas_and_image_override_is_used() {
        let mut s = spec();
        s.paused = true;
        s.image = Some("registry.local/consumer:dev".into());
        let d = build(&resource("cr", s), &settings(), "g", 3).unwrap();
        assert_eq!(d.spec.replicas, Some(0));
        assert_eq!(
            container(&d).image.as_deref(),
            Some("registry.local/consumer:dev")
        );
    }

    /// Merge keys of the list-maps (`x-kubernetes-list-type: map`, or a strategic-merge key) found
    /// in the objects the operator builds: server-side apply refuses a list with a duplicate key.
    const LIST_MAP_KEYS: &[(&str, &[&str])] = &[
        ("containers", &["name"]),
        ("initContainers", &["name"]),
        ("ephemeralContainers", &["name"]),
        ("env", &["name"]),
        // A Service's ports are keyed by port+protocol instead.
        ("ports", &["containerPort", "protocol"]),
        ("volumes", &["name"]),
        ("volumeMounts", &["mountPath"]),
        ("volumeDevices", &["devicePath"]),
        ("imagePullSecrets", &["name"]),
        ("ownerReferences", &["uid"]),
        ("hostAliases", &["ip"]),
        ("resourceClaims", &["name"]),
        (
            "topologySpreadConstraints",
            &["topologyKey", "whenUnsatisfiable"],
        ),
        ("conditions", &["type"]),
    ];

    /// Every duplicate key of a list-map anywhere in `value`, as `path: key`.
    pub(crate) fn list_map_duplicates(value: &serde_json::Value) -> Vec<String> {
        fn walk(path: &str, value: &serde_json::Value, found: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(fields) => {
                    for (name, child) in fields {
                        let child_path = format!("{path}.{name}");
                        let service_ports = name == "ports"
                            && child.as_array().is_some_and(|ports| {
                                !ports.iter().any(|p| p.get("containerPort").is_some())
                            });
                        let keys = if service_ports {
                            Some(&["port", "protocol"][..])
                        } else {
                            LIST_MAP_KEYS
                                .iter()
                                .find(|(list, _)| list == name)
                                .map(|(_, keys)| *keys)
                        };
                        if let (Some(keys), Some(items)) = (keys, child.as_array()) {
                            let mut seen = std::collections::BTreeSet::new();
                            for item in items {
                                // A missing `protocol` means TCP, as the API server defaults it.
                                let key: Vec<String> = keys
                                    .iter()
                                    .map(|k| match (item.get(*k), *k) {
                                        (Some(v), _) => v.to_string(),
                                        (None, "protocol") => "\"TCP\"".to_owned(),
                                        (None, _) => "null".to_owned(),
                                    })
                                    .collect();
                                if !seen.insert(key.clone()) {
                                    found.push(format!("{child_path}: {}", key.join("+")));
                                }
                            }
                        }
                        walk(&child_path, child, found);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(&format!("{path}[{i}]"), item, found);
                    }
                }
                _ => {}
            }
        }
        let mut found = vec![];
        walk("", value, &mut found);
        found
    }

    fn user_env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    #[test]
    fn the_start_position_reaches_the_consumers_only_when_set() {
        let mut s = spec();
        let d = build(&resource("cr", s.clone()), &settings(), "g", 1).unwrap();
        assert_eq!(env_value(&d, "KAFKA_START_POSITION"), None);
        s.start_position = Some(crate::crd::StartPosition::Latest);
        let d = build(&resource("cr", s), &settings(), "g", 1).unwrap();
        assert_eq!(
            env_value(&d, "KAFKA_START_POSITION").as_deref(),
            Some("latest")
        );
    }

    #[test]
    fn user_env_replaces_the_operators_entry_in_place_so_each_name_appears_once() {
        let mut s = spec();
        s.env = vec![
            user_env("KAFKA_BROKERS", "other-kafka:9092"),
            user_env("MAX_RETRIES", "3"),
            user_env("DATABASE_URL", "postgres://override"),
        ];
        let d = build(&resource("cr", s), &settings(), "g", 1).unwrap();
        let env = container(&d).env.as_ref().unwrap();
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "duplicate env names: {names:?}");
        // In place: the operator's order is kept, the user's new names come last.
        assert_eq!(names[0], "KAFKA_BROKERS");
        assert_eq!(names.last(), Some(&"MAX_RETRIES"));
        assert_eq!(env_value(&d, "KAFKA_BROKERS").unwrap(), "other-kafka:9092");
        let db = env.iter().find(|e| e.name == "DATABASE_URL").unwrap();
        assert_eq!(db.value.as_deref(), Some("postgres://override"));
        assert!(
            db.value_from.is_none(),
            "the user's entry replaces the whole EnvVar"
        );
    }

    #[test]
    fn built_objects_have_no_duplicate_list_map_keys() {
        let mut s = spec();
        s.env = vec![
            user_env("KAFKA_BROKERS", "other:9092"),
            user_env("KAFKA_GROUP_ID", "x"),
            user_env("OTEL_SERVICE_NAME", "mine"),
            user_env("SMTP_URL", "smtp://x"),
        ];
        let mut cfg = settings();
        cfg.otel_endpoint = Some("http://otel:4317".into());
        let d = build(&resource("cr", s), &cfg, "g", 1).unwrap();
        let value = serde_json::to_value(&d).unwrap();
        assert_eq!(list_map_duplicates(&value), Vec::<String>::new());
    }

    #[test]
    fn the_list_map_check_itself_finds_duplicates() {
        let value = serde_json::json!({"spec": {"template": {"spec": {
            "containers": [
                {"name": "a", "env": [{"name": "X"}, {"name": "X"}],
                 "ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "TCP"}],
                 "volumeMounts": [{"mountPath": "/tmp", "name": "a"}, {"mountPath": "/tmp", "name": "b"}]},
                {"name": "a"}
            ],
            "volumes": [{"name": "v"}, {"name": "v"}],
            "imagePullSecrets": [{"name": "r"}, {"name": "r"}]
        }}}});
        let found = list_map_duplicates(&value);
        assert_eq!(found.len(), 6, "{found:?}");
    }

    #[test]
    fn pod_gets_the_configured_pull_secrets_and_service_account() {
        let mut cfg = settings();
        cfg.image_pull_secrets = vec!["regcred".into(), "mirror".into()];
        cfg.service_account = Some("statecast-consumer".into());
        let d = build(&resource("cr", spec()), &cfg, "g", 1).unwrap();
        let pod = d.spec.template.spec.as_ref().unwrap();
        let secrets: Vec<_> = pod
            .image_pull_secrets
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(secrets, ["regcred", "mirror"]);
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("statecast-consumer")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        // Unset: nothing rendered (an empty list would still be a managed field).
        let d = build(&resource("cr", spec()), &settings(), "g", 1).unwrap();
        let pod = d.spec.template.spec.as_ref().unwrap();
        assert!(pod.image_pull_secrets.is_none());
        assert!(pod.service_account_name.is_none());
    }

    #[test]
    fn pod_does_not_mount_a_service_account_token() {
        let d = build(&resource("cr", spec()), &settings(), "g", 1).unwrap();
        let pod = d.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    /// A valid label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
    fn is_label_value(v: &str) -> bool {
        v.len() <= 63
            && (v.is_empty()
                || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
    }

    #[test]
    fn label_value_keeps_short_values_and_cuts_long_ones_with_a_stable_hash() {
        assert_eq!(label_value("audit"), "audit");
        let exactly = "a".repeat(63);
        assert_eq!(label_value(&exactly), exactly);
        let long = format!("{}.-x", "b".repeat(60));
        let cut = label_value(&long);
        assert_eq!(cut.len(), 52 + 1 + 10, "{cut}");
        assert!(cut.starts_with(&"b".repeat(52)), "{cut}");
        assert!(is_label_value(&cut), "{cut}");
        // Pinned: the label selects existing pods, so the hash must never change.
        assert_eq!(
            label_value(&"c".repeat(100)),
            format!("{}-22d88743e6", "c".repeat(52))
        );
        assert_ne!(label_value(&"c".repeat(100)), label_value(&"c".repeat(101)));
    }

    #[test]
    fn long_names_make_valid_distinct_and_stable_label_values() {
        // Resource names may have 253 characters; label values only 63.
        let long_a = format!("{}-a", "consumer".repeat(30));
        let long_b = format!("{}-b", "consumer".repeat(30));
        let a = resource(&long_a, spec());
        let b = resource(&long_b, spec());
        for pc in [&a, &b] {
            let d = build(pc, &settings(), "g", 1).unwrap();
            let pod_labels = d.spec.template.metadata.as_ref().unwrap();
            for labels in [
                d.metadata.labels.as_ref().unwrap(),
                d.spec.selector.match_labels.as_ref().unwrap(),
                pod_labels.labels.as_ref().unwrap(),
            ] {
                for (key, value) in labels {
                    assert!(
                        is_label_value(value),
                        "{key}={value:?} is not a valid label value"
                    );
                }
            }
        }
        let instance =
            |pc: &ProfileConsumer| selector_labels(pc)["app.kubernetes.io/instance"].clone();
        assert_ne!(
            instance(&a),
            instance(&b),
            "truncation must not merge two resources"
        );
        assert_eq!(
            instance(&a),
            instance(&a.clone()),
            "the label must be stable"
        );
        // Short names are used as they are.
        assert_eq!(instance(&resource("audit", spec())), "audit");
    }

    fn sasl_ssl() -> Settings {
        let mut cfg = settings();
        cfg.kafka = ConsumerKafka {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("statecast".into()),
            properties: BTreeMap::from([
                (
                    "KAFKA_PROPERTY_CLIENT_ID".into(),
                    "statecast-consumer".into(),
                ),
                ("KAFKA_PROPERTY_FETCH_WAIT_MAX_MS".into(), "100".into()),
            ]),
            ca: Some(SecretKeyRef {
                secret: "kafka-ca".into(),
                key: "tls.ca".into(),
            }),
        };
        cfg
    }

    fn env_entry(d: &Deployment, name: &str) -> Option<EnvVar> {
        container(d)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .cloned()
    }

    fn env_names(d: &Deployment) -> Vec<String> {
        container(d)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.template.spec.as_ref().unwrap()
    }

    #[test]
    fn a_sasl_ssl_operator_passes_its_settings_and_only_a_reference_to_the_password() {
        let d = build(&resource("cr", spec()), &sasl_ssl(), "g", 1).unwrap();
        assert_eq!(
            env_value(&d, "KAFKA_SECURITY_PROTOCOL").as_deref(),
            Some("sasl_ssl")
        );
        assert_eq!(
            env_value(&d, "KAFKA_SASL_MECHANISM").as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(
            env_value(&d, "KAFKA_SASL_USERNAME").as_deref(),
            Some("statecast")
        );
        assert_eq!(
            env_value(&d, "KAFKA_PROPERTY_CLIENT_ID").as_deref(),
            Some("statecast-consumer")
        );
        assert_eq!(
            env_value(&d, "KAFKA_PROPERTY_FETCH_WAIT_MAX_MS").as_deref(),
            Some("100")
        );
        let password = env_entry(&d, "KAFKA_SASL_PASSWORD").unwrap();
        assert_eq!(password.value, None, "never inline");
        assert_eq!(
            password.value_from.unwrap().secret_key_ref.unwrap(),
            SecretKeySelector {
                name: "statecast-consumer".into(),
                key: "KAFKA_SASL_PASSWORD".into(),
                optional: Some(true),
            }
        );
        assert_eq!(env_entry(&d, "KAFKA_SASL_PASSWORD_FILE"), None);
        // The CA: the Secret's key mounted read-only as ca.crt, and named by the variable.
        assert_eq!(
            env_value(&d, "KAFKA_SSL_CA_LOCATION").as_deref(),
            Some("/etc/statecast/kafka-ca/ca.crt")
        );
        let mount = container(&d)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/etc/statecast/kafka-ca")
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod(&d)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("kafka-ca"));
        assert_eq!(
            secret.items.as_ref().unwrap(),
            &[KeyToPath {
                key: "tls.ca".into(),
                path: "ca.crt".into(),
                mode: None,
                user: None,
            }]
        );
        assert_eq!(secret.optional, None, "a missing CA Secret holds the pod");
        // The security variables sit between the Secret's keys and OTEL_*.
        let names = env_names(&d);
        let at = |name: &str| names.iter().position(|n| n == name).unwrap();
        assert!(at("SMTP_URL") < at("KAFKA_SECURITY_PROTOCOL"));
        assert!(at("KAFKA_PROPERTY_FETCH_WAIT_MAX_MS") < at("OTEL_SERVICE_NAME"));
        let value = serde_json::to_value(&d).unwrap();
        assert_eq!(list_map_duplicates(&value), Vec::<String>::new());
    }

    #[test]
    fn a_plaintext_operator_adds_no_security_env_or_volume_but_passes_its_properties() {
        let d = build(&resource("cr", spec()), &settings(), "g", 1).unwrap();
        assert!(
            !env_names(&d)
                .iter()
                .any(|n| n.starts_with("KAFKA_S") || n.starts_with("KAFKA_PROPERTY_")),
            "{:?}",
            env_names(&d)
        );
        assert_eq!(pod(&d).volumes.as_ref().unwrap().len(), 1);
        assert_eq!(container(&d).volume_mounts.as_ref().unwrap().len(), 1);

        let mut cfg = settings();
        cfg.kafka.properties =
            BTreeMap::from([("KAFKA_PROPERTY_CLIENT_ID".into(), "statecast".into())]);
        // A CA Secret without TLS is not mounted: the consumer would refuse KAFKA_SSL_CA_LOCATION.
        cfg.kafka.ca = Some(SecretKeyRef {
            secret: "kafka-ca".into(),
            key: "ca.crt".into(),
        });
        let d = build(&resource("cr", spec()), &cfg, "g", 1).unwrap();
        assert_eq!(
            env_value(&d, "KAFKA_PROPERTY_CLIENT_ID").as_deref(),
            Some("statecast")
        );
        assert_eq!(env_entry(&d, "KAFKA_SECURITY_PROTOCOL"), None);
        assert_eq!(env_entry(&d, "KAFKA_SSL_CA_LOCATION"), None);
        assert_eq!(pod(&d).volumes.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn ssl_gets_no_password_and_sasl_plaintext_no_ca() {
        let mut cfg = sasl_ssl();
        cfg.kafka.protocol = SecurityProtocol::Ssl;
        cfg.kafka.sasl_mechanism = None;
        cfg.kafka.sasl_username = None;
        cfg.kafka.ca = None;
        let d = build(&resource("cr", spec()), &cfg, "g", 1).unwrap();
        assert_eq!(
            env_value(&d, "KAFKA_SECURITY_PROTOCOL").as_deref(),
            Some("ssl")
        );
        for name in [
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            // No CA Secret: the consumer's default `probe` (the system CAs).
            "KAFKA_SSL_CA_LOCATION",
        ] {
            assert_eq!(env_entry(&d, name), None, "{name}");
        }

        let mut cfg = sasl_ssl();
        cfg.kafka.protocol = SecurityProtocol::SaslPlaintext;
        let d = build(&resource("cr", spec()), &cfg, "g", 1).unwrap();
        assert!(env_entry(&d, "KAFKA_SASL_PASSWORD").is_some());
        assert_eq!(env_entry(&d, "KAFKA_SSL_CA_LOCATION"), None);
        assert_eq!(pod(&d).volumes.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn spec_env_overrides_the_kafka_settings_in_place_and_each_name_appears_once() {
        let without = build(&resource("cr", spec()), &sasl_ssl(), "g", 1).unwrap();
        let mut s = spec();
        let tenant_password = EnvVar {
            name: "KAFKA_SASL_PASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "tenant-a-kafka".into(),
                    key: "password".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        };
        s.env = vec![
            user_env("KAFKA_SASL_USERNAME", "tenant-a"),
            tenant_password.clone(),
            user_env("KAFKA_PROPERTY_CLIENT_ID", "tenant-a"),
            user_env("KAFKA_SSL_CA_LOCATION", "probe"),
            // An empty value counts as unset for the consumer: this is how a resource drops one.
            user_env("KAFKA_SASL_MECHANISM", ""),
            user_env("KAFKA_PROPERTY_CLIENT_RACK", "eu-west-1a"),
        ];
        let d = build(&resource("cr", s), &sasl_ssl(), "g", 1).unwrap();
        let names = env_names(&d);
        assert_eq!(
            names[..names.len() - 1],
            env_names(&without)[..],
            "overrides keep the operator's order"
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("KAFKA_PROPERTY_CLIENT_RACK")
        );
        assert_eq!(
            env_value(&d, "KAFKA_SASL_USERNAME").as_deref(),
            Some("tenant-a")
        );
        assert_eq!(env_entry(&d, "KAFKA_SASL_PASSWORD"), Some(tenant_password));
        assert_eq!(
            env_value(&d, "KAFKA_PROPERTY_CLIENT_ID").as_deref(),
            Some("tenant-a")
        );
        assert_eq!(
            env_value(&d, "KAFKA_SSL_CA_LOCATION").as_deref(),
            Some("probe")
        );
        assert_eq!(env_value(&d, "KAFKA_SASL_MECHANISM").as_deref(), Some(""));
        let value = serde_json::to_value(&d).unwrap();
        assert_eq!(list_map_duplicates(&value), Vec::<String>::new());
    }

    #[test]
    fn resource_without_uid_cannot_own_a_deployment() {
        let mut pc = resource("cr", spec());
        pc.metadata.uid = None;
        assert!(matches!(
            build(&pc, &settings(), "g", 1),
            Err(Error::MissingObjectKey(_))
        ));
    }
}
