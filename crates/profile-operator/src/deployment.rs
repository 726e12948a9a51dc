//! The pure Deployment builder: a `ProfileConsumer`, the operator's [`Settings`] and the desired
//! replica count in, the `profile-consumer` Deployment out. No I/O, so every field is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

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
}

/// Labels selecting the pods of one resource. Never change: a Deployment's selector is immutable.
pub fn selector_labels(pc: &ProfileConsumer) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "profile-consumer".into()),
        ("app.kubernetes.io/instance".into(), pc.name_any()),
    ])
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

/// Environment of the consumer container: the operator's variables, then `spec.env` (a later
/// duplicate wins in Kubernetes, so the user can override).
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
    vars.push(env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")));
    vars.extend(
        SECRET_KEYS
            .iter()
            .map(|key| secret_env(&settings.consumer_secret, key)),
    );
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
    vars.extend(spec.env.iter().cloned());
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
        // The root filesystem is read-only; give the process a writable /tmp.
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
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
        spec: Some(DeploymentSpec {
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
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
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
        &d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
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
        let spec = d.spec.as_ref().unwrap();
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
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
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
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(0));
        assert_eq!(
            container(&d).image.as_deref(),
            Some("registry.local/consumer:dev")
        );
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
