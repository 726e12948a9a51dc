//! The consume loop: records are handed, in order, to one worker per assigned partition
//! ([`crate::partition`]), which applies the effects of what it has queued as one batch first
//! and stores the batch's last offset after. Partitions go on concurrently; a partition waiting
//! for a dependency is paused alone.
//!
//! Offsets: `enable.auto.commit=true` with `enable.auto.offset.store=false`. An offset is
//! *stored* only once the record's effect is durable (or its dead letter is acknowledged), and
//! librdkafka commits stored offsets in the background, on rebalance (our `pre_rebalance` also
//! commits synchronously before partitions are revoked) and on close. A crash can therefore
//! only replay records, and replays are made harmless by the handlers' dedup and version checks.
//!
//! Rebalances: a revoked partition's worker is retired (it stores nothing more), and a partition
//! assigned again gets a new worker that starts only after the old one finished, so one
//! partition's records are never handled twice at once.
//!
//! Shutdown: when the token is cancelled every worker finishes its in-flight batch (a batch or
//! record in its retry backoff is abandoned, unstored from there on, to be redelivered), then
//! the loop commits synchronously and closes the consumer, which leaves the group so its
//! partitions move at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, Statistics, TopicPartitionList};
use statecast_kafka::KafkaSecurity;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StartPosition};
use crate::dlq;
use crate::handlers::Handler;
use crate::metrics::Metrics;
use crate::partition::{Shared, Worker};
use crate::{Error, Result};

/// Runs the consumer and its HTTP endpoints until `shutdown` is cancelled or a fatal error.
///
/// Validates `config`, connects the handler's services (running migrations when it has a
/// database), serves `/healthz`, `/readyz` and `/metrics` on `METRICS_ADDR`, joins the group and
/// consumes. Returns after the consumer left its group and the HTTP server stopped.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    config.validate()?;
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));

    // Serve first: liveness does not wait for the services, readiness does.
    let listener = statecast_startup::listen::bind("METRICS_ADDR", config.metrics_addr).await?;
    let http_stop = shutdown.child_token();
    let router = crate::http::router(crate::http::AppState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    });
    let addr = config.metrics_addr;
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
    );

    let result = consume(&config, &metrics, ready, &shutdown).await;
    http_stop.cancel();
    let served = server
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| Error::Http { addr, source });
    result.and(served)
}

async fn consume(
    config: &Config,
    metrics: &Metrics,
    ready: Arc<AtomicBool>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let handler = tokio::select! {
        handler = Handler::connect(config) => handler?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let health = Arc::new(Health {
        assigned: AtomicBool::new(false),
        paused: AtomicUsize::new(0),
        ready,
        metrics: metrics.clone(),
    });
    let assignment = Arc::new(Assignment::default());
    let context = Context {
        health: health.clone(),
        metrics: metrics.clone(),
        assignment: assignment.clone(),
        start: config.start_position(),
    };
    let security = config.kafka_security()?;
    tracing::info!(kafka = ?security, "Kafka client settings");
    let consumer: Arc<StreamConsumer<Context>> = Arc::new(
        client_config(config, &security)
            .create_with_context(context)
            .map_err(|e| client_error("consumer", e))?,
    );
    let producer: FutureProducer = producer_config(config, &security)
        .create()
        .map_err(|e| client_error("dead-letter producer", e))?;
    let dlq_topic = config.dlq_topic();
    tokio::select! {
        checked = dlq::check_topic_exists(&producer, &dlq_topic) => checked.map_err(Error::Config)?,
        () = shutdown.cancelled() => return Ok(()),
    }
    let topics = config.topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(
        group = %config.kafka_group_id,
        topics = ?topics,
        handler = config.consumer_handler.as_str(),
        start_position = config.start_position().as_str(),
        "consuming"
    );

    let shared = Arc::new(Shared {
        consumer: consumer.clone(),
        handler,
        producer,
        metrics: metrics.clone(),
        health,
        group: config.kafka_group_id.clone(),
        dlq_topic,
        attempts: config.attempts(),
        batch_max: config.batch_max(),
        backoff: config.backoff(),
    });
    let mut workers: HashMap<(String, i32), Worker> = HashMap::new();
    // Workers of revoked partitions that may still be finishing a handler call.
    let mut retiring: HashMap<(String, i32), JoinHandle<()>> = HashMap::new();
    loop {
        let message = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = assignment.changed.notified() => {
                retire_unassigned(&assignment, &mut workers, &mut retiring);
                continue;
            }
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let key = (message.topic().to_owned(), message.partition());
        // The rebalance callbacks run inside `recv`, before any record of a new assignment is
        // returned, so the generation read here is the one this record belongs to.
        let Some(generation) = assignment.generation(&key) else {
            continue; // revoked meanwhile: the partition's new owner consumes it
        };
        if workers
            .get(&key)
            .is_some_and(|w| w.generation != generation)
            && let Some(old) = workers.remove(&key)
        {
            retiring.insert(key.clone(), old.retire());
        }
        let worker = workers.entry(key.clone()).or_insert_with(|| {
            let previous = retiring.remove(&key);
            Worker::start(shared.clone(), key.0.clone(), key.1, generation, previous)
        });
        worker.push(message);
        retiring.retain(|_, task| !task.is_finished());
    }
    for (_, worker) in workers.drain() {
        let _ = worker.stop().await;
    }
    for (_, task) in retiring.drain() {
        let _ = task.await;
    }
    drop(shared);
    close(consumer).await
}

/// Retires the workers whose partition is no longer assigned (or was assigned again since).
fn retire_unassigned(
    assignment: &Assignment,
    workers: &mut HashMap<(String, i32), Worker>,
    retiring: &mut HashMap<(String, i32), JoinHandle<()>>,
) {
    let stale: Vec<(String, i32)> = workers
        .iter()
        .filter(|(key, worker)| assignment.generation(key) != Some(worker.generation))
        .map(|(key, _)| key.clone())
        .collect();
    for key in stale {
        if let Some(worker) = workers.remove(&key) {
            tracing::info!(topic = %key.0, partition = key.1, "partition revoked: retiring its worker");
            retiring.insert(key, worker.retire());
        }
    }
}

/// The partitions this consumer owns, each with the generation of its latest assignment: a
/// partition revoked and assigned again gets a new generation, so its old worker is retired.
#[derive(Default)]
pub(crate) struct Assignment {
    partitions: Mutex<HashMap<(String, i32), u64>>,
    next: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Assignment {
    fn generation(&self, key: &(String, i32)) -> Option<u64> {
        self.lock().get(key).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), u64>> {
        // A panic while holding this lock leaves a consistent map: recover it.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn assign(&self, partitions: &TopicPartitionList) {
        let generation = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut map = self.lock();
        for element in partitions.elements() {
            map.insert(
                (element.topic().to_owned(), element.partition()),
                generation,
            );
        }
        drop(map);
        self.changed.notify_one();
    }

    fn revoke(&self, partitions: &TopicPartitionList) {
        let mut map = self.lock();
        for element in partitions.elements() {
            map.remove(&(element.topic().to_owned(), element.partition()));
        }
        drop(map);
        self.changed.notify_one();
    }
}

/// Readiness: the consumer is in its group and no partition is waiting for a dependency.
pub(crate) struct Health {
    assigned: AtomicBool,
    paused: AtomicUsize,
    ready: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Health {
    fn set_assigned(&self) {
        self.assigned.store(true, Ordering::SeqCst);
        self.refresh();
    }

    /// One partition paused (`true`) or resumed (`false`).
    pub(crate) fn partition_paused(&self, paused: bool) {
        if paused {
            self.paused.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = self
                .paused
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        self.refresh();
    }

    fn refresh(&self) {
        let paused = self.paused.load(Ordering::SeqCst);
        self.metrics
            .set_paused(i64::try_from(paused).unwrap_or(i64::MAX));
        self.ready.store(
            self.assigned.load(Ordering::SeqCst) && paused == 0,
            Ordering::SeqCst,
        );
    }
}

/// Commits the stored offsets and leaves the group (librdkafka's close), off the async threads.
async fn close(consumer: Arc<StreamConsumer<Context>>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        commit_stored(consumer.as_ref());
        consumer.unsubscribe();
        drop(consumer);
        tracing::info!("left the consumer group");
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))
}

/// For partitions the group has never committed, commits their current end, before they are
/// assigned: the group then starts there, and keeps starting there after a restart, instead of
/// re-reading the retained history (`earliest`) or skipping what came while it was down (a plain
/// `latest` reset, which is re-evaluated at every start until something is committed).
fn pin_new_partitions_at_the_end(
    consumer: &BaseConsumer<Context>,
    partitions: &TopicPartitionList,
) {
    let timeout = Duration::from_secs(10);
    let committed = match consumer.committed_offsets(partitions.clone(), timeout) {
        Ok(committed) => committed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read committed offsets; new partitions start from the beginning");
            return;
        }
    };
    let mut pinned = TopicPartitionList::new();
    for element in committed.elements() {
        if matches!(element.offset(), Offset::Offset(_)) {
            continue;
        }
        match consumer.fetch_watermarks(element.topic(), element.partition(), timeout) {
            Ok((_, high)) => {
                let _ = pinned.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(high),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, partition = element.partition(), "cannot read the end of a new partition")
            }
        }
    }
    if pinned.count() == 0 {
        return;
    }
    match consumer.commit(&pinned, CommitMode::Sync) {
        Ok(()) => tracing::info!(
            partitions = pinned.count(),
            "new group: starting at the current end (KAFKA_START_POSITION=latest)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot commit the start position of new partitions"),
    }
}

/// Synchronously commits the stored offsets; nothing stored is not an error.
fn commit_stored<C: Consumer<Context>>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "committing offsets failed"),
    }
}

/// A client librdkafka would not create, worded to name the variable that sets the refused
/// property (`KAFKA_SESSION_TIMEOUT_MS`, a `KAFKA_PROPERTY_*`, ...); other errors unchanged.
fn client_error(client: &'static str, error: KafkaError) -> Error {
    let (reason, property) = match &error {
        KafkaError::ClientConfig(_, description, key, value) => {
            let value = if statecast_kafka::settings::is_sensitive(key) {
                "***"
            } else {
                value.as_str()
            };
            (
                format!("{description} ({key}={value:?})"),
                Some(key.clone()),
            )
        }
        KafkaError::ClientCreation(reason) => (reason.clone(), quoted_property(reason)),
        _ => return Error::Kafka(error),
    };
    let fix = match property.as_deref() {
        Some(property) => format!("fix {}", variable_for_property(property)),
        None => "check the KAFKA_* settings (see docs/contracts.md)".to_owned(),
    };
    Error::KafkaClient {
        client,
        reason,
        fix,
    }
}

/// The librdkafka property a creation error is about: `... property "linger.ms" ...`.
fn quoted_property(reason: &str) -> Option<String> {
    let after = reason.split_once("property")?.1;
    let name = after.trim_start_matches([' ', ':']).strip_prefix('"')?;
    let name = name.split('"').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The setting that gives `property` its value in the consumer: its own variable, or the
/// pass-through one.
fn variable_for_property(property: &str) -> String {
    match property {
        "bootstrap.servers" | "metadata.broker.list" => "KAFKA_BROKERS".to_owned(),
        "group.id" => "KAFKA_GROUP_ID".to_owned(),
        "session.timeout.ms" | "heartbeat.interval.ms" => "KAFKA_SESSION_TIMEOUT_MS".to_owned(),
        "statistics.interval.ms" => "KAFKA_STATISTICS_INTERVAL_MS".to_owned(),
        other => format!(
            "{} (or --kafka-property {other}=...)",
            statecast_kafka::settings::env_var_for_property(other)
        ),
    }
}

/// The consumer's fetch and commit settings: the one place they are written. The consumer's
/// client ([`client_config`]) and the benchmark's bare baselines (`statecast-bench`) both apply
/// them, so a baseline is always configured like the consumer it is compared with.
///
/// - Offsets are stored by hand after a record's effect (`enable.auto.offset.store=false`) and
///   committed in the background every second.
/// - For `latest` the position is pinned and committed on assignment (Context), before
///   librdkafka looks for a committed offset; `earliest` is the reset in both cases.
/// - librdkafka waits up to 500 ms for a fetch to fill by default; a change event should not
///   wait for company (measured: propagation p50 ~350 ms with the default, see
///   docs/benchmarks.md).
pub const FETCH_AND_COMMIT: [(&str, &str); 5] = [
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("fetch.wait.max.ms", "50"),
];

/// The consumer's client settings: [`FETCH_AND_COMMIT`], group membership and metadata, then
/// the shared security and pass-through ones (statecast-kafka).
pub fn client_config(config: &Config, security: &KafkaSecurity) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.kafka_group_id);
    for (key, value) in FETCH_AND_COMMIT {
        client.set(key, value);
    }
    client
        // A subscribed topic created after the consumer started (the chart's topic Job runs
        // once Kafka is up) is seen at the next metadata refresh: 10 s, not librdkafka's 300 s.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set(
            "session.timeout.ms",
            config.kafka_session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (config.kafka_session_timeout_ms / 6)
                .clamp(100, 3000)
                .to_string(),
        )
        .set(
            "statistics.interval.ms",
            config.kafka_statistics_interval_ms.to_string(),
        )
        .set("partition.assignment.strategy", "range,roundrobin");
    security.apply(&mut client);
    client
}

/// The dead-letter producer's settings, then the shared ones (statecast-kafka).
fn producer_config(config: &Config, security: &KafkaSecurity) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        // One record per batch keeps the broker's high watermark right (see the tests' notes).
        .set("linger.ms", "0")
        .set("batch.num.messages", "1");
    security.apply(&mut client);
    client
}

/// librdkafka callbacks: the assignment, readiness, synchronous commit before revocation, lag
/// gauges.
pub(crate) struct Context {
    health: Arc<Health>,
    metrics: Metrics,
    assignment: Arc<Assignment>,
    start: StartPosition,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        self.metrics.update_lag(&statistics);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && self.start == StartPosition::Latest
        {
            pin_new_partitions_at_the_end(consumer, partitions);
        }
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked: committing stored offsets"
            );
            // Workers of these partitions store nothing from now on (they are retired).
            self.assignment.revoke(partitions);
            commit_stored(consumer);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                self.assignment.assign(partitions);
                self.health.set_assigned();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_property_names_the_variable_that_sets_it() {
        let error = client_error(
            "consumer",
            KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "Invalid value \"soon\" for configuration property \"linger.ms\"".into(),
                "linger.ms".into(),
                "soon".into(),
            ),
        );
        let message = error.to_string();
        assert!(
            message.starts_with("cannot create the Kafka consumer: Invalid value \"soon\""),
            "{message}"
        );
        assert!(
            message.ends_with("fix KAFKA_PROPERTY_LINGER_MS (or --kafka-property linger.ms=...)"),
            "{message}"
        );
        let session = client_error(
            "consumer",
            KafkaError::ClientCreation(
                "Configuration property \"session.timeout.ms\" value 1 is outside allowed range"
                    .into(),
            ),
        );
        assert!(
            session
                .to_string()
                .ends_with("fix KAFKA_SESSION_TIMEOUT_MS"),
            "{session}"
        );
    }

    #[test]
    fn a_secret_value_librdkafka_refused_is_masked() {
        let error = client_error(
            "dead-letter producer",
            KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "Invalid value".into(),
                "ssl.key.password".into(),
                "s3cret".into(),
            ),
        );
        let message = error.to_string();
        assert!(!message.contains("s3cret"), "{message}");
        assert!(message.contains("ssl.key.password=\"***\""), "{message}");
        assert!(
            message.contains("KAFKA_PROPERTY_SSL_KEY_PASSWORD"),
            "{message}"
        );
    }

    #[test]
    fn the_property_is_read_from_librdkafka_messages() {
        assert_eq!(
            quoted_property("No such configuration property: \"foo.bar\"").as_deref(),
            Some("foo.bar")
        );
        assert_eq!(quoted_property("something else"), None);
    }
}
