//! The Statecast profile operator: reconciles `ProfileConsumer` resources
//! (`profileconsumers.statecast.dev/v1alpha1`) into `profile-consumer` Deployments and scales them
//! on consumer-group lag.
//!
//! # Layout
//! - [`crd`]: the `ProfileConsumer` types, their OpenAPI schema (with CEL rules) and the client-side
//!   validation the reconciler uses.
//! - [`deployment`]: the pure builder turning a resource and the operator settings into a Deployment.
//! - [`scaling`]: the pure lag-based scaling rule.
//! - [`drain`]: the pure drain-time scaling policy (`targetDrainSeconds`) and its sample windows.
//! - [`lag`]: reading a consumer group's lag and partition count from Kafka, behind a trait.
//! - [`reconcile`]: the controller loop, its `Context` and error policy.
//! - [`metrics`]: Prometheus metrics of the reconciler.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`leader`]: Lease-based leader election with fencing, so only one replica reconciles.
//! - [`config`]: command line and environment.

pub mod config;
pub mod crd;
pub mod deployment;
pub mod drain;
pub mod http;
pub mod lag;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod scaling;

/// Everything that can make a reconcile (or the start-up) fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API server failed.
    #[error("kubernetes API error: {0}")]
    Kube(#[source] Box<kube::Error>),

    /// Reading offsets or metadata from Kafka failed.
    #[error("kafka error: {0}")]
    Kafka(String),

    /// The resource misses something the API server always sets (name, namespace, uid).
    #[error("resource is missing {0}")]
    MissingObjectKey(&'static str),

    /// Serializing a resource failed.
    #[error("serialization error: {0}")]
    Serialization(#[from] serde_json::Error),

    /// The `ProfileConsumer` CRD is not installed in the cluster.
    #[error(
        "the CustomResourceDefinition profileconsumers.statecast.dev is not installed; \
         install it with `kubectl apply -f manifests/crd/` (or `profile-operator crd | kubectl apply -f -`)"
    )]
    CrdNotInstalled,

    /// Leader election failed.
    #[error("leader election error: {0}")]
    Leader(String),

    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(Box::new(e))
    }
}

impl Error {
    /// A short, low-cardinality label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Kafka(_) => "kafka",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Serialization(_) => "serialization",
            Error::CrdNotInstalled => "crd_not_installed",
            Error::Leader(_) => "leader",
            Error::Task(_) => "task",
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
