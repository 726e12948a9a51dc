//! The `ProfileConsumer` custom resource (`profileconsumers.statecast.dev/v1alpha1`, short name
//! `pcon`: `pc` is PriorityClass's, so `kubectl get pc` would never list these).
//!
//! The OpenAPI schema is generated from these types: every field's doc comment becomes its
//! `description` (what `kubectl explain` shows), `#[schemars(...)]` attributes add OpenAPI checks
//! (`minItems`, `pattern`, `minimum`) and `#[schemars(transform = ...)]` adds CEL rules
//! (`x-kubernetes-validations`). [`ProfileConsumerSpec::validate`] repeats every rule in Rust, so
//! the reconciler refuses a resource the API server would have refused (e.g. one created before
//! the CRD was updated) with `Degraded`/`InvalidSpec` instead of acting on it.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Error, Result};

/// Pattern of a valid Kafka topic name (the broker also refuses `.` and `..`).
pub const TOPIC_PATTERN: &str = r"^[a-zA-Z0-9._-]{1,249}$";

/// Full name of the CRD, as checked at start-up.
pub const CRD_NAME: &str = "profileconsumers.statecast.dev";

/// Desired state of a group of profile consumers: which handler runs, on which topics, in which
/// consumer group, and how many replicas (fixed, or from the group's lag).
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "statecast.dev",
    version = "v1alpha1",
    kind = "ProfileConsumer",
    plural = "profileconsumers",
    shortname = "pcon",
    namespaced,
    status = "ProfileConsumerStatus",
    doc = "A ProfileConsumer runs a Deployment of `profile-consumer` pods with one handler on a set of \
           Kafka topics in one consumer group, scaled to a fixed count or on the group's lag.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name": "Handler", "type": "string", "jsonPath": ".spec.handler", "description": "Handler the consumers run"}"#,
    printcolumn = r#"{"name": "Group", "type": "string", "jsonPath": ".status.groupId", "description": "Effective consumer group"}"#,
    printcolumn = r#"{"name": "Topics", "type": "string", "jsonPath": ".spec.topics", "description": "Topics consumed"}"#,
    printcolumn = r#"{"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas", "description": "Replicas the operator asked for"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready consumer pods"}"#,
    printcolumn = r#"{"name": "Lag", "type": "integer", "jsonPath": ".status.lag", "description": "Records not yet consumed by the group"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[schemars(transform = spec_rules)]
#[serde(rename_all = "camelCase")]
pub struct ProfileConsumerSpec {
    /// Handler the consumers run: `audit` (append to the audit log), `analytics` (update
    /// aggregates), `email` (send notification emails) or `cache-refresh` (refresh the Redis cache).
    pub handler: Handler,

    /// Kafka consumer group. Defaults to `<namespace>.<name>`. Two ProfileConsumers in one
    /// namespace with the same group but different topics conflict: the later one is refused
    /// (`Degraded`/`GroupConflict`) and the operator creates, changes or deletes no Deployment for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub group_id: Option<String>,

    /// Kafka topics to consume (at least one), e.g. `user-events`.
    #[schemars(length(min = 1), inner(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$")))]
    pub topics: Vec<String>,

    /// Fixed number of consumer pods when `autoscaling` is not set (default 1). Changed by
    /// `kubectl scale` or a HorizontalPodAutoscaler (scale subresource). With `autoscaling` it
    /// must stay at its default 1: the operator decides the count from the lag.
    #[serde(default = "default_replicas", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Scale the consumers on the consumer group's lag instead of a fixed `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Container image of the consumers. Defaults to the operator's `CONSUMER_IMAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Extra environment variables of the consumer container, e.g. `MAX_RETRIES`. An entry named
    /// like one the operator sets (e.g. `KAFKA_BROKERS`) replaces it; each name appears once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// CPU and memory requests and limits of the consumer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Dead-letter topic. Defaults (in the consumer) to `<first topic>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub dlq_topic: Option<String>,

    /// Stop all consumer pods (replicas 0) without deleting the resource; offsets are kept.
    #[serde(default)]
    pub paused: bool,

    /// Where the group starts reading a partition it has never committed: `earliest` (the
    /// retained history) or `latest` (only what is produced after the group first starts).
    /// Defaults per handler: `latest` for `email` (a new or renamed group must not mail every
    /// user again), `earliest` for the others. No effect once the group has committed offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_position: Option<StartPosition>,
}

/// `spec.startPosition` (`KAFKA_START_POSITION` of the consumers).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum StartPosition {
    Earliest,
    Latest,
}

impl StartPosition {
    /// The value of `KAFKA_START_POSITION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Which processing the consumer pods run (`CONSUMER_HANDLER`).
// No doc comments on the variants: they would turn the schema into a `oneOf`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Handler {
    Audit,
    Analytics,
    Email,
    CacheRefresh,
}

impl Handler {
    /// The name used in the CRD, in `CONSUMER_HANDLER` and in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Audit => "audit",
            Handler::Analytics => "analytics",
            Handler::Email => "email",
            Handler::CacheRefresh => "cache-refresh",
        }
    }
}

impl std::fmt::Display for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lag-based scaling: desired replicas = ceil(lag / lagThreshold), clamped to
/// [minReplicas, min(maxReplicas, partitions)]; with `targetDrainSeconds`, sized from measured
/// rates to drain the lag within that time ([`crate::drain`]).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(transform = autoscaling_rules)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest consumer pods, even with no lag (0 allowed: no pods while the group is idle).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most consumer pods. The operator never runs more pods than the topics have partitions.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Lag (records not yet consumed) one replica is expected to handle.
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,

    /// Seconds since the last scale change before the operator scales down (scale-up is
    /// immediate). Default 300.
    #[serde(default = "default_scale_down_delay_seconds")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: i64,

    /// Drain mode: seconds within which the backlog should be consumed. The operator measures
    /// the produce rate and each consumer's rate from successive offsets and runs
    /// `ceil((produce + lag / targetDrainSeconds) / rate per consumer)` replicas, rounded up to a
    /// count that spreads the partitions evenly. Until a rate has been measured (a new resource,
    /// an operator restart) it uses the `lagThreshold` rule. Requires `scaleDownDelaySeconds` of
    /// at least 60, so a rebalance settles and is measured before scaling down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_drain_seconds: Option<i64>,
}

/// `spec.replicas` when unset. The schema defaults it, so the scale subresource (whose `GET`
/// fails when `specReplicasPath` holds nothing) works on every resource.
pub const DEFAULT_REPLICAS: i32 = 1;

/// CEL rule against a fixed replica count together with `autoscaling`. `replicas` is defaulted
/// (to [`DEFAULT_REPLICAS`]) before validation, so only a value other than the default counts.
pub const REPLICAS_RULE: &str =
    "!has(self.autoscaling) || !has(self.replicas) || self.replicas == 1";

/// CEL rules of the spec, enforced by the API server (`x-kubernetes-validations`).
fn spec_rules(schema: &mut schemars::Schema) {
    schema.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": REPLICAS_RULE,
            "message": "set either replicas or autoscaling, not both",
        }]),
    );
}

/// CEL rule against a drain target with a scale-down delay too short for a rebalance to settle
/// ([`crate::drain::MIN_SCALE_DOWN_DELAY_SECONDS`]). `scaleDownDelaySeconds` is defaulted first.
pub const DRAIN_DELAY_RULE: &str =
    "!has(self.targetDrainSeconds) || self.scaleDownDelaySeconds >= 60";

/// Message of [`DRAIN_DELAY_RULE`], also the reconciler's `InvalidSpec` message.
pub const DRAIN_DELAY_MESSAGE: &str = "targetDrainSeconds needs scaleDownDelaySeconds >= 60 (a rebalance must settle before scaling down)";

/// CEL rules of `autoscaling`, enforced by the API server (`x-kubernetes-validations`).
fn autoscaling_rules(schema: &mut schemars::Schema) {
    schema.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must not be greater than maxReplicas",
        }, {
            "rule": DRAIN_DELAY_RULE,
            "message": DRAIN_DELAY_MESSAGE,
        }]),
    );
}

fn default_replicas() -> Option<i32> {
    Some(DEFAULT_REPLICAS)
}

fn default_min_replicas() -> i32 {
    1
}

fn default_scale_down_delay_seconds() -> i64 {
    300
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProfileConsumerStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Effective consumer group (`spec.groupId` or `<namespace>.<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,

    /// Label selector of the consumer pods as a string (`key=value,...`): the scale
    /// subresource's `labelSelectorPath`, which a HorizontalPodAutoscaler needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Consumer pods that exist (the Deployment's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,

    /// Consumer pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Replicas the operator asked for (0 when paused).
    #[serde(default)]
    pub desired_replicas: i32,

    /// Records in the topics not yet committed by the group, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,

    /// Partitions of all topics together, when they could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,

    /// When `desiredReplicas` last changed; scale-down waits `scaleDownDelaySeconds` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// `Ready`, `Progressing` and `Degraded`, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Is `name` a topic name Kafka accepts?
pub fn is_valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ProfileConsumerSpec {
    /// Checks every rule of the CRD schema (OpenAPI and CEL) in Rust. The reconciler uses it so a
    /// resource the API server would refuse is reported (`Degraded`/`InvalidSpec`), not acted on.
    pub fn validate(&self) -> Result<(), String> {
        if self.topics.is_empty() {
            return Err("topics must list at least one topic".into());
        }
        for topic in self.topics.iter().chain(&self.dlq_topic) {
            if !is_valid_topic(topic) {
                return Err(format!(
                    "{topic:?} is not a valid Kafka topic name ({TOPIC_PATTERN})"
                ));
            }
        }
        if self.group_id.as_deref() == Some("") {
            return Err("groupId must not be empty".into());
        }
        if self.image.as_deref() == Some("") {
            return Err("image must not be empty".into());
        }
        if let Some(r) = self.replicas
            && r < 0
        {
            return Err("replicas must be >= 0".into());
        }
        if let Some(a) = &self.autoscaling {
            if self.replicas.is_some_and(|r| r != DEFAULT_REPLICAS) {
                return Err("set either replicas or autoscaling, not both".into());
            }
            if a.min_replicas < 0 {
                return Err("autoscaling.minReplicas must be >= 0".into());
            }
            if a.max_replicas < 1 {
                return Err("autoscaling.maxReplicas must be >= 1".into());
            }
            if a.min_replicas > a.max_replicas {
                return Err("minReplicas must not be greater than maxReplicas".into());
            }
            if a.lag_threshold < 1 {
                return Err("autoscaling.lagThreshold must be >= 1".into());
            }
            if a.scale_down_delay_seconds < 0 {
                return Err("autoscaling.scaleDownDelaySeconds must be >= 0".into());
            }
            if let Some(t) = a.target_drain_seconds {
                if t < 1 {
                    return Err("autoscaling.targetDrainSeconds must be >= 1".into());
                }
                if a.scale_down_delay_seconds < crate::drain::MIN_SCALE_DOWN_DELAY_SECONDS {
                    return Err(DRAIN_DELAY_MESSAGE.into());
                }
            }
        }
        Ok(())
    }
}

impl ProfileConsumer {
    /// Namespace of the resource (always set for a namespaced resource read from the API).
    pub fn namespace_or_err(&self) -> Result<String> {
        self.namespace()
            .ok_or(Error::MissingObjectKey("metadata.namespace"))
    }

    /// The consumer group: `spec.groupId`, or `<namespace>.<name>`.
    pub fn effective_group_id(&self) -> Result<String> {
        match &self.spec.group_id {
            Some(g) => Ok(g.clone()),
            None => Ok(format!("{}.{}", self.namespace_or_err()?, self.name_any())),
        }
    }

    /// Name of the Deployment the operator manages for this resource.
    pub fn deployment_name(&self) -> String {
        format!("profile-consumer-{}", self.name_any())
    }
}

/// The CRD as YAML, exactly as checked in at `manifests/crd/profileconsumers.statecast.dev.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ProfileConsumer::crd())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A file of the checkout under test. The run-time manifest dir comes first: a build cache
    /// shared by several checkouts can hold this test compiled in another one.
    fn repo_file(relative: &str) -> String {
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        format!("{dir}/../../{relative}")
    }

    #[test]
    fn checked_in_crd_matches_the_rust_types() {
        let generated = crd_yaml().unwrap();
        let crd_file = repo_file("manifests/crd/profileconsumers.statecast.dev.yaml");
        let on_disk = std::fs::read_to_string(&crd_file)
            .unwrap_or_else(|error| panic!("cannot read {crd_file}: {error}"));
        assert!(
            generated == on_disk,
            "{crd_file} is out of date; regenerate it with\n  \
             cargo run -p profile-operator -- crd > manifests/crd/profileconsumers.statecast.dev.yaml"
        );
    }

    fn walk_descriptions(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let p = format!("{path}.{name}");
                if sub.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk_descriptions(&p, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk_descriptions(&format!("{path}[]"), items, missing);
        }
    }

    #[test]
    fn every_spec_and_status_field_has_a_description() {
        let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = vec![];
        for part in ["spec", "status"] {
            walk_descriptions(part, &schema["properties"][part], &mut missing);
        }
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    #[test]
    fn crd_has_status_and_scale_subresources_and_cel_rules() {
        let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["statusReplicasPath"],
            ".status.replicas"
        );
        assert!(v["subresources"]["status"].is_object());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "pcon");
        let text = serde_json::to_string(&crd).unwrap();
        assert!(text.contains("self.minReplicas <= self.maxReplicas"));
        assert!(text.contains(REPLICAS_RULE));
        let columns: Vec<_> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            columns,
            [
                "Handler", "Group", "Topics", "Desired", "Ready", "Lag", "Age"
            ]
        );
    }

    /// Short names of built-in resources (`kubectl api-resources`, Kubernetes 1.34).
    const BUILTIN_SHORT_NAMES: &[&str] = &[
        "cs", "cm", "ep", "ev", "limits", "ns", "no", "pvc", "pv", "po", "rc", "quota", "sa",
        "svc", "crd", "crds", "ds", "deploy", "rs", "sts", "hpa", "cj", "csr", "ing", "netpol",
        "pdb", "pc", "sc", "vac",
    ];

    #[test]
    fn short_name_does_not_shadow_a_builtin_resource() {
        let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
        let short: Vec<_> = crd["spec"]["names"]["shortNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(short, ["pcon"]);
        for name in &short {
            assert!(
                !BUILTIN_SHORT_NAMES.contains(&name.as_str()),
                "short name {name:?} is taken by a built-in resource"
            );
        }
    }

    #[test]
    fn scale_subresource_serves_an_hpa_and_works_without_replicas_set() {
        let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        // An HPA needs the pods' selector, as a string, from the scale subresource.
        assert_eq!(
            v["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        let schema = &v["schema"]["openAPIV3Schema"]["properties"];
        assert_eq!(schema["status"]["properties"]["selector"]["type"], "string");
        // GET /scale fails when specReplicasPath holds nothing: the schema defaults it.
        assert_eq!(schema["spec"]["properties"]["replicas"]["default"], 1);
        // A defaulted replicas does not break the rule against setting both.
        let autoscaled = serde_json::json!({
            "apiVersion": "statecast.dev/v1alpha1", "kind": "ProfileConsumer",
            "metadata": {"name": "a"},
            "spec": {"handler": "audit", "topics": ["t"],
                     "autoscaling": {"maxReplicas": 3, "lagThreshold": 10}},
        });
        assert_eq!(cel_check(&autoscaled), Vec::<String>::new());
        let pc: ProfileConsumer = serde_json::from_value(autoscaled).unwrap();
        assert_eq!(pc.spec.validate(), Ok(()));
    }

    fn examples(dir: &str) -> Vec<(String, String)> {
        let dir = repo_file(&format!("manifests/examples/{dir}"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn schema_validator() -> jsonschema::Validator {
        let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
        jsonschema::validator_for(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]).unwrap()
    }

    /// The Rust check of a manifest: it deserializes and its spec passes [`ProfileConsumerSpec::validate`].
    fn rust_check(text: &str) -> Result<(), String> {
        let pc: ProfileConsumer = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        pc.spec.validate()
    }

    #[test]
    fn valid_examples_are_accepted_by_the_schema_and_the_operator() {
        let validator = schema_validator();
        let files = examples("");
        assert!(files.len() >= 3);
        for (path, text) in files {
            let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let errors: Vec<_> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{path} refused by the schema: {errors:?}"
            );
            assert_eq!(
                rust_check(&text),
                Ok(()),
                "{path} refused by spec.validate()"
            );
            assert_eq!(
                cel_check(&value),
                Vec::<String>::new(),
                "{path} refused by the CRD's CEL rules"
            );
        }
    }

    /// Every (rule, message) pair of `x-kubernetes-validations` under `node`.
    fn collect_rules(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match node {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if key == "x-kubernetes-validations" {
                        for rule in value.as_array().into_iter().flatten() {
                            out.push((
                                rule["rule"].as_str().unwrap_or_default().to_owned(),
                                rule["message"].as_str().unwrap_or_default().to_owned(),
                            ));
                        }
                    } else {
                        collect_rules(value, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| collect_rules(i, out)),
            _ => {}
        }
    }

    /// The CRD's own CEL rules evaluated against `object` (the checked-in CRD is the generated
    /// one, see `checked_in_crd_matches_the_rust_types`).
    fn cel_check(object: &serde_json::Value) -> Vec<String> {
        let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
        statecast_testkit::cel_violations(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            object,
        )
        .unwrap()
    }

    /// Files marked `cel-only:` break a CEL rule, which JSON Schema cannot evaluate: the schema
    /// accepts them, the CRD's CEL rules refuse them, and so does the same rule written in Rust
    /// in `spec.validate()`.
    #[test]
    fn invalid_examples_are_refused() {
        let validator = schema_validator();
        let files = examples("invalid");
        assert!(files.len() >= 5);
        for (path, text) in files {
            assert!(
                text.starts_with("# Invalid: "),
                "{path} must say why it is invalid"
            );
            let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            if text.contains("\n# cel-only:") {
                assert!(
                    validator.is_valid(&value),
                    "{path}: expected only CEL to refuse it"
                );
                // Refused by exactly the rule the file names, with that rule's message.
                let named = text
                    .lines()
                    .find_map(|l| l.strip_prefix("# cel-only: refused by the CEL rule `"))
                    .and_then(|l| l.split('`').next())
                    .unwrap_or_default();
                let crd = serde_json::to_value(ProfileConsumer::crd()).unwrap();
                let mut rules = Vec::new();
                collect_rules(&crd, &mut rules);
                let message = rules
                    .iter()
                    .find(|(rule, _)| rule == named)
                    .map(|(_, message)| message.clone())
                    .unwrap_or_else(|| panic!("{path} names {named:?}, not a rule of the CRD"));
                let violations = cel_check(&value);
                assert_eq!(violations.len(), 1, "{path}: {violations:?}");
                assert!(violations[0].ends_with(&message), "{path}: {violations:?}");
            } else {
                assert!(!validator.is_valid(&value), "{path} accepted by the schema");
            }
            assert!(
                rust_check(&text).is_err(),
                "{path} accepted by spec.validate()"
            );
        }
    }

    #[test]
    fn drain_delay_rule_names_the_policy_minimum() {
        let minimum = crate::drain::MIN_SCALE_DOWN_DELAY_SECONDS.to_string();
        assert!(DRAIN_DELAY_RULE.ends_with(&format!(">= {minimum}")));
        assert!(DRAIN_DELAY_MESSAGE.contains(&format!(">= {minimum}")));
        // The default delay (300) passes the rule when only the target is set.
        let drain = serde_json::json!({
            "apiVersion": "statecast.dev/v1alpha1", "kind": "ProfileConsumer",
            "metadata": {"name": "a"},
            "spec": {"handler": "audit", "topics": ["t"],
                     "autoscaling": {"maxReplicas": 3, "lagThreshold": 10,
                                     "scaleDownDelaySeconds": 300, "targetDrainSeconds": 60}},
        });
        assert_eq!(cel_check(&drain), Vec::<String>::new());
        let pc: ProfileConsumer = serde_json::from_value(drain).unwrap();
        assert_eq!(pc.spec.validate(), Ok(()));
        let mut spec = pc.spec.clone();
        spec.autoscaling.as_mut().unwrap().target_drain_seconds = Some(0);
        assert!(spec.validate().is_err());
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_valid_topic("user-events"));
        assert!(is_valid_topic("user_events.dlq"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic(".."));
        assert!(!is_valid_topic("user events"));
        assert!(!is_valid_topic(&"a".repeat(250)));
    }
}
