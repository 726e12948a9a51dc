//! The consumer workloads of Statecast: one binary, four handlers (`audit`, `analytics`, `email`,
//! `cache-refresh`), each an independent consumer group reading profile events from Kafka.
//!
//! Every handler is at-least-once on the wire and exactly-once in effect: offsets are stored only
//! after the effect is durable, each event id is recorded with its effect (or, for Redis, made a
//! no-op by a version compare), and a user's events are never applied at or below the last
//! applied version. Records that cannot be handled go to a dead-letter topic, and the consumer
//! moves on. Consumers never call back into the Profile API: the event carries the snapshot.
//!
//! # Layout
//! - [`config`]: command line and environment ([`Config`]).
//! - `connect`: the PostgreSQL pool and the Redis connection from their URLs, TLS included,
//!   and start-up errors naming the variable, its masked value and the fix ([`ConnectError`];
//!   the pool, the client and the wording are `statecast-startup`'s, shared with the API).
//! - [`consumer`]: the consume loop, rebalance hooks and graceful shutdown ([`run`]); the client
//!   settings ([`consumer::client_config`], [`consumer::FETCH_AND_COMMIT`], which the
//!   benchmark's bare baselines apply too).
//! - `batch`: what one partition's batch is (the records already queued, up to
//!   `CONSUMER_BATCH_MAX`).
//! - `partition`: one worker per assigned partition; where a failure is retried, paused on or
//!   dead-lettered.
//! - [`retry`]: the exponential backoff schedule.
//! - [`dlq`]: dead-letter records and their headers; [`replay`]: `profile-consumer dlq replay`.
//! - [`store`]: the PostgreSQL dedup (`processed_event`) and order (`applied_version`) tables.
//! - [`handlers`]: the effects, one module per handler.
//! - [`metrics`]: Prometheus metrics; [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`telemetry`]: the per-record `process {topic}` span and trace-id helpers.

mod batch;
pub mod config;
mod connect;
pub mod consumer;
pub mod dlq;
pub mod handlers;
pub mod http;
pub mod metrics;
mod partition;
pub mod replay;
pub mod retry;
pub mod store;
pub mod telemetry;

pub use config::{Config, HandlerKind, StartPosition};
pub use connect::ConnectError;
pub use consumer::run;

/// Everything that can stop the consumer (start-up and fatal errors). Per-record failures are
/// [`handlers::HandlerError`]s and never end the process. Each start-up variant names the
/// variable to fix (its value with passwords masked) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is incomplete or inconsistent; the message names the variable.
    #[error("configuration error: {0}")]
    Config(String),

    /// PostgreSQL could not be reached at start-up.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// The consumer's migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// Redis could not be reached at start-up.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),

    /// PostgreSQL or Redis cannot be used as configured (unreachable, bad URL, a TLS
    /// certificate that does not verify); the message names the variable.
    #[error("{0}")]
    Connect(#[from] connect::ConnectError),

    /// The Kafka client could not be created or subscribed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// librdkafka refused a setting while creating a client; names the variable that sets it.
    #[error("cannot create the Kafka {client}: {reason}; {fix}")]
    KafkaClient {
        /// `consumer` or `dead-letter producer`.
        client: &'static str,
        /// What librdkafka said (a secret-looking value masked).
        reason: String,
        /// Which variable to fix.
        fix: String,
    },

    /// `METRICS_ADDR` could not be bound.
    #[error(transparent)]
    Listen(#[from] statecast_startup::ListenError),

    /// The HTTP server failed while serving.
    #[error("http server error on {addr}: {source}")]
    Http {
        /// `METRICS_ADDR`.
        addr: std::net::SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },

    /// A background task panicked.
    #[error("background task failed: {0}")]
    Task(String),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
