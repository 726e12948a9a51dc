//! The consume loop: one record at a time, effect first, offset after.
//!
//! Offsets: `enable.auto.commit=true` with `enable.auto.offset.store=false`. An offset is
//! *stored* only once the record's effect is durable (or its dead letter is acknowledged), and
//! librdkafka commits stored offsets in the background, on rebalance (our `pre_rebalance` also
//! commits synchronously before partitions are revoked) and on close. A crash can therefore
//! only replay records, and replays are made harmless by the handlers' dedup and version checks.
//!
//! Shutdown: when the token is cancelled the loop finishes the in-flight record (a record in
//! its retry backoff is abandoned, unstored, to be redelivered), commits synchronously and
//! closes the consumer, which leaves the group so its partitions move at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Statistics};
use statecast_events::ProfileEvent;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::dlq::{self, DeadLetter, Reason};
use crate::handlers::{Delivery, Handler};
use crate::metrics::{Metrics, RecordResult};
use crate::retry::Backoff;
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
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| Error::Http {
            addr: config.metrics_addr,
            source,
        })?;
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
    let context = Context {
        ready,
        metrics: metrics.clone(),
    };
    let consumer: StreamConsumer<Context> = consumer_config(config).create_with_context(context)?;
    let producer: FutureProducer = producer_config(config).create()?;
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
        "consuming"
    );

    let worker = Worker {
        handler,
        producer,
        metrics: metrics.clone(),
        group: config.kafka_group_id.clone(),
        dlq_topic: config.dlq_topic(),
        attempts: config.attempts(),
        backoff: config.backoff(),
        shutdown: shutdown.clone(),
    };
    loop {
        let message = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                if worker.process(&message).await == Disposition::Done
                    && let Err(e) = consumer.store_offset_from_message(&message)
                {
                    // The partition was revoked meanwhile; its new owner replays the record.
                    tracing::warn!(error = %e, "cannot store the offset");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    close(consumer).await
}

/// Commits the stored offsets and leaves the group (librdkafka's close), off the async threads.
async fn close(consumer: StreamConsumer<Context>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        commit_stored(&consumer);
        consumer.unsubscribe();
        drop(consumer);
        tracing::info!("left the consumer group");
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))
}

/// Synchronously commits the stored offsets; nothing stored is not an error.
fn commit_stored<C: Consumer<Context>>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "committing offsets failed"),
    }
}

fn consumer_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.kafka_group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        // librdkafka waits up to 500 ms for a fetch to fill by default; a change event should not
        // wait for company (measured: propagation p50 ~350 ms with the default, see
        // docs/benchmarks.md).
        .set("fetch.wait.max.ms", "50")
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
    client
}

fn producer_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        // One record per batch keeps the broker's high watermark right (see the tests' notes).
        .set("linger.ms", "0")
        .set("batch.num.messages", "1");
    client
}

/// librdkafka callbacks: readiness, synchronous commit before revocation, lag gauges.
struct Context {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        self.metrics.update_lag(&statistics);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked: committing stored offsets"
            );
            commit_stored(consumer);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                self.ready.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Whether the record's offset may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Its effect is durable, or its dead letter acknowledged.
    Done,
    /// Shutdown interrupted it: leave it for redelivery.
    Abandoned,
}

/// Processes records one at a time.
struct Worker {
    handler: Handler,
    producer: FutureProducer,
    metrics: Metrics,
    group: String,
    dlq_topic: String,
    attempts: u32,
    backoff: Backoff,
    shutdown: CancellationToken,
}

impl Worker {
    async fn process(&self, message: &BorrowedMessage<'_>) -> Disposition {
        let span = crate::telemetry::record_span(message, &self.group);
        self.process_in_span(message, &span)
            .instrument(span.clone())
            .await
    }

    async fn process_in_span(
        &self,
        message: &BorrowedMessage<'_>,
        span: &tracing::Span,
    ) -> Disposition {
        let event = match ProfileEvent::from_json(message.payload().unwrap_or_default()) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable record");
                span.record("error.type", "undecodable");
                return self
                    .dead_letter(message, Reason::Undecodable, e.to_string(), 0)
                    .await;
            }
        };
        span.record("messaging.message.id", tracing::field::display(event.id));
        let trace_id = crate::telemetry::record_trace_id(message.headers());
        let delivery = Delivery {
            event: &event,
            group: &self.group,
            trace_id: trace_id.as_deref(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.handler.handle(delivery).await;
            self.metrics
                .observe_handler(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(outcome) => {
                    tracing::info!(?outcome, attempt, "record handled");
                    self.metrics.record(outcome.into());
                    return Disposition::Done;
                }
                Err(e) => e,
            };
            span.record("error.type", error.kind());
            if error.is_permanent() {
                tracing::warn!(error = %error, "record rejected");
                return self
                    .dead_letter(message, Reason::Rejected, error.to_string(), attempt)
                    .await;
            }
            if attempt >= self.attempts {
                tracing::error!(error = %error, attempt, "giving up on the record");
                return self
                    .dead_letter(
                        message,
                        Reason::RetriesExhausted,
                        error.to_string(),
                        attempt,
                    )
                    .await;
            }
            let pause = self.backoff.delay(attempt);
            tracing::warn!(error = %error, attempt, ?pause, "handler failed; retrying");
            if self.pause(pause).await.is_err() {
                return Disposition::Abandoned;
            }
        }
    }

    /// Produces the dead letter until the broker acknowledges it (or shutdown).
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: Reason,
        error: String,
        attempts: u32,
    ) -> Disposition {
        let letter = DeadLetter {
            reason,
            error,
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            group: self.group.clone(),
            attempts,
        };
        let mut failures = 0;
        loop {
            match dlq::send(&self.producer, &self.dlq_topic, message, &letter).await {
                Ok(()) => {
                    self.metrics.record(RecordResult::Dlq);
                    return Disposition::Done;
                }
                Err(e) => {
                    failures += 1;
                    let pause = self.backoff.delay(failures);
                    tracing::error!(error = %e, dlq = %self.dlq_topic, ?pause, "dead letter not produced; retrying");
                    if self.pause(pause).await.is_err() {
                        return Disposition::Abandoned;
                    }
                }
            }
        }
    }

    /// Sleeps, or fails at once when shutdown is requested.
    async fn pause(&self, pause: Duration) -> Result<(), ()> {
        tokio::select! {
            () = tokio::time::sleep(pause) => Ok(()),
            () = self.shutdown.cancelled() => Err(()),
        }
    }
}
