//! One worker per assigned partition: records of a partition are handled in order, a batch at
//! a time (what is queued when the worker is ready, see `batch`), while the other partitions go
//! on concurrently. A batch's decodable records are applied together ([`Handler::handle_batch`]:
//! one transaction for the PostgreSQL handlers); an undecodable one is dead-lettered in its
//! place, between the records before it and those after. This is where a failure is decided:
//!
//! - **transient** (a dependency down): retried without end with capped, jittered exponential
//!   backoff. The partition is paused in librdkafka meanwhile (it fetches nothing more; the
//!   others keep flowing) and counts as not ready, and resumed after the record succeeds.
//!   Nothing is dead-lettered for an outage, however long.
//! - **permanent** (undecodable, refused): dead-lettered at once.
//! - **unknown**: retried `MAX_RETRIES` times, then dead-lettered as `retries-exhausted`.
//!
//! For a batch: a transient failure retries the whole batch (paused, as above); a permanent or
//! unknown one rolls it back and applies its records one at a time, as above, so a poison
//! record is dead-lettered alone and the others are applied.
//!
//! Offsets are stored in order, after the batch: the last offset whose record (and every one
//! before it) has its effect durable or its dead letter acknowledged. Never by a worker that
//! was retired (its partition revoked): the new owner replays from the committed offset, and
//! the handlers' dedup makes the replay harmless.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::TraceContextExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use statecast_events::ProfileEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::consumer::{Context, Health};
use crate::dlq::{self, DeadLetter, Reason};
use crate::handlers::{Delivery, ErrorClass, Handler, Outcome};
use crate::metrics::{Metrics, RecordResult};
use crate::retry::Backoff;

/// What every partition worker of one consumer shares.
pub(crate) struct Shared {
    pub(crate) consumer: Arc<StreamConsumer<Context>>,
    pub(crate) handler: Handler,
    pub(crate) producer: FutureProducer,
    pub(crate) metrics: Metrics,
    pub(crate) health: Arc<Health>,
    pub(crate) group: String,
    pub(crate) dlq_topic: String,
    /// Attempts at a record whose failure is of [`ErrorClass::Unknown`].
    pub(crate) attempts: u32,
    /// Most records per batch (`CONSUMER_BATCH_MAX`, at least 1).
    pub(crate) batch_max: usize,
    pub(crate) backoff: Backoff,
}

/// The running worker of one partition, as the consume loop holds it.
pub(crate) struct Worker {
    /// The assignment generation it was started for.
    pub(crate) generation: u64,
    records: mpsc::UnboundedSender<OwnedMessage>,
    /// Last offset handed to the worker: guards against a redelivery after pause/resume.
    last_offset: i64,
    retire: CancellationToken,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Worker {
    /// Starts the worker of `topic`/`partition`. It begins only once `previous` (the worker of
    /// an earlier assignment of the same partition, if any) has finished, so that two workers
    /// never handle one partition's records at the same time.
    pub(crate) fn start(
        shared: Arc<Shared>,
        topic: String,
        partition: i32,
        generation: u64,
        previous: Option<JoinHandle<()>>,
    ) -> Self {
        let (records, inbox) = mpsc::unbounded_channel();
        let retire = CancellationToken::new();
        let stop = CancellationToken::new();
        let run = PartitionRun {
            shared,
            topic,
            partition,
            retire: retire.clone(),
            stop: stop.clone(),
            paused: false,
        };
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            run.run(inbox).await;
        });
        Self {
            generation,
            records,
            last_offset: -1,
            retire,
            stop,
            task,
        }
    }

    /// Queues a record (in offset order); a record at or below the last one queued is a
    /// redelivery of this assignment and dropped.
    pub(crate) fn push(&mut self, message: OwnedMessage) {
        if message.offset() <= self.last_offset {
            return;
        }
        self.last_offset = message.offset();
        // The receiver lives as long as the task; after it ended the record is left unstored.
        let _ = self.records.send(message);
    }

    /// Stops the worker: it finishes the handler call in progress (a record in backoff is
    /// abandoned), stores nothing more and drops what is queued. Returns its task to await.
    pub(crate) fn retire(self) -> JoinHandle<()> {
        self.retire.cancel();
        self.task
    }

    /// Stops the worker for shutdown: like [`Worker::retire`], but the batch in progress is
    /// finished (a record in its retry backoff abandoned, with the rest of the batch) and what
    /// of it is done has its offset stored (the partition is still ours), so a restart does
    /// not replay it.
    pub(crate) fn stop(self) -> JoinHandle<()> {
        self.stop.cancel();
        self.task
    }
}

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Its effect is durable, or its dead letter acknowledged: store its offset.
    Done,
    /// Retirement or shutdown interrupted it: leave it for redelivery.
    Abandoned,
}

/// What became of a batch applied together.
enum Together {
    /// Every record's effect is durable.
    Applied,
    /// Nothing was applied and retrying the batch cannot help: apply it one record at a time.
    Refused,
    /// Retirement or shutdown interrupted its retries.
    Abandoned,
}

struct PartitionRun {
    shared: Arc<Shared>,
    topic: String,
    partition: i32,
    retire: CancellationToken,
    stop: CancellationToken,
    /// Whether this worker paused its partition (and counts in the not-ready partitions).
    paused: bool,
}

/// A decoded record of a batch, with its span and trace id.
struct Decoded<'a> {
    message: &'a OwnedMessage,
    event: ProfileEvent,
    trace_id: Option<String>,
    span: tracing::Span,
}

/// How far a batch (or part of it) got: the last offset that may be stored, and whether the
/// rest was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    done: Option<i64>,
    disposition: Disposition,
}

impl PartitionRun {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<OwnedMessage>) {
        loop {
            let first = tokio::select! {
                biased;
                () = self.retire.cancelled() => break,
                () = self.stop.cancelled() => break,
                message = inbox.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let batch = crate::batch::drain_ready(first, &mut inbox, self.shared.batch_max);
            self.shared.metrics.observe_batch(batch.len());
            let progress = self.process_batch(&batch).await;
            if self.retire.is_cancelled() {
                break;
            }
            if let Some(offset) = progress.done
                && let Err(e) =
                    self.shared
                        .consumer
                        .store_offset(&self.topic, self.partition, offset)
            {
                // The partition was revoked meanwhile; its new owner replays the records.
                tracing::warn!(error = %e, "cannot store the offset");
            }
            if progress.disposition == Disposition::Abandoned {
                break;
            }
        }
        self.set_paused(false);
    }

    /// Decodes a batch and applies it in order: runs of decodable records together, each
    /// undecodable one dead-lettered in its place.
    async fn process_batch(&mut self, batch: &[OwnedMessage]) -> Progress {
        let mut done = None;
        let mut run: Vec<Decoded<'_>> = Vec::with_capacity(batch.len());
        for message in batch {
            let span = crate::telemetry::record_span(message, &self.shared.group);
            let event = match ProfileEvent::from_json(message.payload().unwrap_or_default()) {
                Ok(event) => event,
                Err(e) => {
                    let before = self.apply_run(&run).await;
                    run.clear();
                    done = before.done.or(done);
                    if before.disposition == Disposition::Abandoned {
                        return Progress {
                            done,
                            disposition: Disposition::Abandoned,
                        };
                    }
                    let disposition = async {
                        tracing::warn!(error = %e, "undecodable record");
                        span.record("error.type", "undecodable");
                        self.dead_letter(message, Reason::Undecodable, e.to_string(), 0)
                            .await
                    }
                    .instrument(span.clone())
                    .await;
                    if disposition == Disposition::Abandoned {
                        return Progress { done, disposition };
                    }
                    done = Some(message.offset());
                    continue;
                }
            };
            span.record("messaging.message.id", tracing::field::display(event.id));
            run.push(Decoded {
                trace_id: crate::telemetry::record_trace_id(message.headers()),
                message,
                event,
                span,
            });
        }
        let last = self.apply_run(&run).await;
        Progress {
            done: last.done.or(done),
            disposition: last.disposition,
        }
    }

    /// Applies consecutive decoded records: together, or one at a time after a batch failure
    /// that is not transient (or when there is only one).
    async fn apply_run(&mut self, run: &[Decoded<'_>]) -> Progress {
        let last = run.last().map(|d| d.message.offset());
        match run {
            [] => {
                return Progress {
                    done: None,
                    disposition: Disposition::Done,
                };
            }
            [one] => {
                let disposition = self.process_one(one).instrument(one.span.clone()).await;
                return Progress {
                    done: (disposition == Disposition::Done).then_some(last).flatten(),
                    disposition,
                };
            }
            _ => {}
        }
        let mut outcomes = vec![None; run.len()];
        match self.process_together(run, &mut outcomes).await {
            Together::Applied => {
                return Progress {
                    done: last,
                    disposition: Disposition::Done,
                };
            }
            Together::Abandoned => {
                return Progress {
                    done: None,
                    disposition: Disposition::Abandoned,
                };
            }
            Together::Refused => {}
        }
        let mut done = None;
        for (record, outcome) in run.iter().zip(outcomes) {
            if self.retire.is_cancelled() {
                return Progress {
                    done,
                    disposition: Disposition::Abandoned,
                };
            }
            if let Some(outcome) = outcome {
                // Applied by the batch attempt before it failed (cache-refresh).
                self.shared.metrics.record(outcome.into());
                done = Some(record.message.offset());
                continue;
            }
            let disposition = self
                .process_one(record)
                .instrument(record.span.clone())
                .await;
            if disposition == Disposition::Abandoned {
                return Progress { done, disposition };
            }
            done = Some(record.message.offset());
        }
        Progress {
            done,
            disposition: Disposition::Done,
        }
    }

    /// Applies `run` in one handler call, retrying it whole while the failure is transient.
    async fn process_together(
        &mut self,
        run: &[Decoded<'_>],
        outcomes: &mut [Option<Outcome>],
    ) -> Together {
        let shared = self.shared.clone();
        let deliveries: Vec<Delivery<'_>> = run
            .iter()
            .map(|d| Delivery {
                event: &d.event,
                group: &shared.group,
                trace_id: d.trace_id.as_deref(),
            })
            .collect();
        let span = tracing::info_span!(
            "process batch",
            otel.name = %format!("process {}", self.topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.name = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %self.topic,
            messaging.consumer.group.name = %shared.group,
            messaging.destination.partition.id = %self.partition,
            messaging.batch.message_count = run.len(),
            error.type = tracing::field::Empty,
        );
        for record in run {
            // The batch's work is linked to every record's span (and so to its producer).
            span.add_link(record.span.context().span().span_context().clone());
        }
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let started = Instant::now();
            let result = shared
                .handler
                .handle_batch(&shared.group, &deliveries, outcomes)
                .instrument(span.clone())
                .await;
            shared
                .metrics
                .observe_handler(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(()) => {
                    for (record, outcome) in run.iter().zip(outcomes.iter()) {
                        let Some(outcome) = *outcome else { continue };
                        record.span.in_scope(|| {
                            tracing::info!(?outcome, attempt, batch = run.len(), "record handled");
                        });
                        shared.metrics.record(outcome.into());
                    }
                    self.set_paused(false);
                    return Together::Applied;
                }
                Err(e) => e,
            };
            span.record("error.type", error.kind());
            if error.class() != ErrorClass::Transient {
                tracing::warn!(
                    parent: &span,
                    error = %error,
                    class = ?error.class(),
                    records = run.len(),
                    "batch failed; applying its records one at a time"
                );
                return Together::Refused;
            }
            self.set_paused(true);
            shared.metrics.retried(error.kind());
            let pause = shared.backoff.jittered(attempt, rand::random());
            tracing::warn!(parent: &span, error = %error, attempt, ?pause, "batch failed; retrying");
            if self.sleep(pause).await.is_err() {
                return Together::Abandoned;
            }
        }
    }

    /// Applies one decoded record, with the per-record retry and dead-letter rules.
    async fn process_one(&mut self, record: &Decoded<'_>) -> Disposition {
        let message = record.message;
        let span = &record.span;
        let shared = self.shared.clone();
        let delivery = Delivery {
            event: &record.event,
            group: &shared.group,
            trace_id: record.trace_id.as_deref(),
        };
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let started = Instant::now();
            let result = shared.handler.handle(delivery).await;
            self.shared
                .metrics
                .observe_handler(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(outcome) => {
                    tracing::info!(?outcome, attempt, "record handled");
                    self.shared.metrics.record(outcome.into());
                    self.set_paused(false);
                    return Disposition::Done;
                }
                Err(e) => e,
            };
            span.record("error.type", error.kind());
            match error.class() {
                ErrorClass::Permanent => {
                    tracing::warn!(error = %error, "record rejected");
                    return self
                        .dead_letter(message, Reason::Rejected, error.to_string(), attempt)
                        .await;
                }
                ErrorClass::Unknown if attempt >= self.shared.attempts => {
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
                ErrorClass::Transient => self.set_paused(true),
                ErrorClass::Unknown => {}
            }
            self.shared.metrics.retried(error.kind());
            let pause = self.shared.backoff.jittered(attempt, rand::random());
            tracing::warn!(error = %error, attempt, ?pause, class = ?error.class(), "handler failed; retrying");
            if self.sleep(pause).await.is_err() {
                return Disposition::Abandoned;
            }
        }
    }

    /// Produces the dead letter until the broker acknowledges it (or retirement).
    async fn dead_letter(
        &mut self,
        message: &OwnedMessage,
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
            group: self.shared.group.clone(),
            attempts,
        };
        let mut failures = 0;
        loop {
            match dlq::send(
                &self.shared.producer,
                &self.shared.dlq_topic,
                message,
                &letter,
            )
            .await
            {
                Ok(()) => {
                    self.shared.metrics.record(RecordResult::Dlq);
                    self.set_paused(false);
                    return Disposition::Done;
                }
                Err(e) => {
                    failures += 1;
                    // The broker is a dependency too: hold the partition, never skip the record.
                    self.set_paused(true);
                    self.shared.metrics.retried("kafka");
                    let pause = self.shared.backoff.jittered(failures, rand::random());
                    tracing::error!(error = %e, dlq = %self.shared.dlq_topic, ?pause, "dead letter not produced; retrying");
                    if self.sleep(pause).await.is_err() {
                        return Disposition::Abandoned;
                    }
                }
            }
        }
    }

    /// Pauses or resumes fetching for the partition, and counts it in readiness.
    fn set_paused(&mut self, paused: bool) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        let mut list = TopicPartitionList::new();
        // The position is not used by pause/resume; librdkafka resumes at the next record the
        // application has not yet been given.
        let _ = list.add_partition_offset(&self.topic, self.partition, Offset::Invalid);
        let result = if paused {
            self.shared.consumer.pause(&list)
        } else {
            self.shared.consumer.resume(&list)
        };
        if let Err(e) = result {
            // A revoked partition cannot be paused; its worker is about to retire.
            tracing::debug!(error = %e, paused, "pause/resume of the partition failed");
        }
        self.shared.health.partition_paused(paused);
        if paused {
            tracing::warn!(
                topic = %self.topic,
                partition = self.partition,
                "partition paused until its dependency is back"
            );
        } else {
            tracing::info!(topic = %self.topic, partition = self.partition, "partition resumed");
        }
    }

    /// Sleeps, or fails at once when the worker is retired (or the consumer shuts down).
    async fn sleep(&self, pause: std::time::Duration) -> Result<(), ()> {
        tokio::select! {
            () = tokio::time::sleep(pause) => Ok(()),
            () = self.retire.cancelled() => Err(()),
            () = self.stop.cancelled() => Err(()),
        }
    }
}
