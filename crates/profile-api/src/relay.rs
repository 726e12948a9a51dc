//! The outbox relay: publishes committed outbox rows to Kafka and stamps them `published_at`.
//!
//! Why a single leader: `SELECT ... FOR UPDATE SKIP LOCKED` alone lets two replicas take
//! different batches at once, and a user's later event in replica B's batch could reach Kafka
//! before an earlier one still in flight in replica A's batch. So replicas elect one publisher
//! with a session-level PostgreSQL advisory lock held on a dedicated connection; the others stand
//! by and retry the lock every poll interval. If the leader dies its session ends, the lock is
//! released and a standby takes over. (A leader whose connection dies mid-batch may publish some
//! rows again: delivery is at least once, consumers deduplicate on the event id.)
//!
//! Fencing: a leader whose session ends (killed, timed out, cut off) must stop publishing before
//! a standby starts, or the standby's newer events could be overtaken by the old leader's retried
//! older ones. So the leader checks on its session that it still holds the lock before each batch
//! and every heartbeat while the batch's sends are in flight (a check that fails or takes longer
//! than a heartbeat counts as lost); on loss it abandons the sends and destroys the producer,
//! which purges everything librdkafka still queues or retries. A replica that takes the lock
//! waits out the old leader's detection time ([`takeover_delay`]: a heartbeat plus the check's
//! time limit) before its first batch. What this cannot fence: bytes already on their way to
//! the broker, and a leader process frozen as a whole (only broker-side fencing, a transactional
//! producer, stops those).
//!
//! Ordering within the leader: rows are taken in id order (a user's rows are in commit order,
//! since the write transaction locks the profile row), grouped by user; each user's rows are sent
//! one after another, each awaited before the next (different users in parallel), and a user's
//! chain stops at its first failure, so a later version never overtakes an earlier one. Rows are
//! marked only after the broker acknowledged them; the rest are retried with backoff. The
//! producer is idempotent (`enable.idempotence`, `acks=all`).
//!
//! Wake-ups: PostgreSQL `LISTEN outbox` (a trigger notifies on insert), with polling as fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use sqlx::{Connection as _, PgConnection};
use statecast_events::{CLOUDEVENTS_CONTENT_TYPE, headers};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use statecast_kafka::KafkaSecurity;

use crate::{AppState, Config};

/// Advisory lock key of the relay leader ("statecast outbox relay").
const LEADER_LOCK: i64 = 0x5354_4341_5354_5231;
/// NOTIFY channel the outbox trigger uses.
const CHANNEL: &str = "outbox";
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the leader deletes published rows past retention.
const CLEANUP_EVERY: Duration = Duration::from_secs(600);
/// How often a leader draining full batches counts the rows still pending (`outbox_pending`).
/// The count reads the whole unpublished index: against a 100,000-row backlog it took longer
/// than the batch it followed, so it is not taken after every batch (a batch that leaves
/// nothing to drain, or fails, is still followed by one).
const COUNT_PENDING_EVERY: Duration = Duration::from_secs(1);

/// How often a leader with sends in flight checks that it still holds the lock, and how long one
/// check may take: the poll interval, within 50 ms to 1 s.
fn heartbeat(state: &AppState) -> Duration {
    state
        .config
        .relay_poll_interval()
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// How long a new leader waits before publishing: by then a previous leader whose session ended
/// has noticed (one heartbeat, plus one check timing out) and stopped.
fn takeover_delay(state: &AppState) -> Duration {
    heartbeat(state) * 2 + Duration::from_millis(50)
}

/// Relay failures; all are retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// PostgreSQL failed (connection lost: leadership is lost too).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The Kafka producer could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The session no longer holds the leader lock, or did not say so within a heartbeat.
    #[error("lost the leader lock")]
    LostLeadership,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: uuid::Uuid,
    user_id: String,
    payload: Json<Value>,
    trace_context: Json<HashMap<String, String>>,
}

/// Runs the relay until `shutdown`; a batch in progress is finished first.
pub(crate) async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(
        state.config.database_url.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    let mut producer: Option<FutureProducer> = None;
    // The dedicated session holding (or trying to take) the leader lock.
    let mut session: Option<PgConnection> = None;
    while !shutdown.is_cancelled() {
        let conn = match session.as_mut() {
            Some(conn) => conn,
            None => match PgConnection::connect(&state.config.database_url).await {
                Ok(conn) => session.insert(conn),
                Err(error) => {
                    tracing::warn!(%error, "relay cannot connect to PostgreSQL");
                    pause(
                        MAX_BACKOFF.min(state.config.relay_poll_interval() * 5),
                        &shutdown,
                    )
                    .await;
                    continue;
                }
            },
        };
        match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Standby: keep the session, retry the lock each poll interval.
                pause(state.config.relay_poll_interval(), &shutdown).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "relay cannot take the leader lock");
                session = None;
                pause(state.config.relay_poll_interval(), &shutdown).await;
                continue;
            }
        }
        tracing::info!("outbox relay is the leader");
        if let Err(error) = lead(&state, conn, &mut producer, &wake, &shutdown).await {
            tracing::warn!(%error, "outbox relay lost its leadership; stopping its sends");
            // Whatever librdkafka still queues or retries would be published after a standby
            // took over: destroying the producer purges it.
            fence(producer.take()).await;
            pause(MIN_BACKOFF, &shutdown).await;
        }
        // Ending the session releases the advisory lock (on shutdown or after an error).
        if let Some(conn) = session.take() {
            let _ = conn.close().await;
        }
    }
    if let Some(conn) = session.take() {
        let _ = conn.close().await;
    }
    if let Some(producer) = producer {
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }
    let _ = listener.await;
}

/// Destroys a producer without flushing: its queued and in-flight messages are purged.
async fn fence(producer: Option<FutureProducer>) {
    if let Some(producer) = producer {
        // Dropping purges, then waits up to 500 ms for the purge's reports: not on a runtime thread.
        let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
    }
}

/// Whether this session still holds the leader lock; `false` too when the check fails or takes
/// longer than `limit` (a session that cannot answer may already have been ended by the server).
async fn holds_lock(conn: &mut PgConnection, limit: Duration) -> bool {
    let check = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND pid = pg_backend_pid() AND classid = ($1 >> 32)::oid \
         AND objid = ($1 & 4294967295)::oid AND objsubid = 1)",
    )
    .bind(LEADER_LOCK)
    .fetch_one(&mut *conn);
    matches!(tokio::time::timeout(limit, check).await, Ok(Ok(true)))
}

/// Publishes batches while we are the leader.
/// Consecutive failed batches after which the producer is recreated.
const RECREATE_AFTER_FAILED_BATCHES: u32 = 3;

async fn lead(
    state: &Arc<AppState>,
    conn: &mut PgConnection,
    producer: &mut Option<FutureProducer>,
    wake: &Notify,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let mut backoff = MIN_BACKOFF;
    let mut failed_batches = 0u32;
    let mut last_cleanup: Option<Instant> = None;
    let mut last_count: Option<Instant> = None;
    // A previous leader may not have noticed yet that its session ended.
    pause(takeover_delay(state), shutdown).await;
    while !shutdown.is_cancelled() {
        if last_cleanup.is_none_or(|at| at.elapsed() >= CLEANUP_EVERY) {
            last_cleanup = Some(Instant::now());
            delete_old_rows(state, conn).await?;
        }
        if producer.is_none() {
            match new_producer(state) {
                Ok(p) => *producer = Some(p),
                Err(error) => {
                    tracing::warn!(%error, "cannot create the Kafka producer");
                    pause(backoff, shutdown).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let Some(p) = producer.as_ref() else {
            continue;
        };
        let (taken, failed) = publish_batch(state, conn, p).await?;
        let full = taken >= state.config.relay_batch_size;
        if failed || !full || last_count.is_none_or(|at| at.elapsed() >= COUNT_PENDING_EVERY) {
            last_count = Some(Instant::now());
            if let Ok(pending) = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            )
            .fetch_one(&mut *conn)
            .await
            {
                state.metrics.set_outbox_pending(pending);
            }
        }
        if failed {
            failed_batches += 1;
            if let Some((code, reason)) = p.client().fatal_error() {
                tracing::error!(?code, %reason, "Kafka producer failed fatally; recreating it");
                *producer = None;
            } else if failed_batches >= RECREATE_AFTER_FAILED_BATCHES {
                // An idempotent producer can wedge without a fatal error when the broker it knew
                // was replaced (its producer id is unknown to the new one): every send times out.
                // A fresh producer gets a fresh id; the outbox rows are simply sent again.
                tracing::warn!(
                    failed_batches,
                    "publishing keeps failing; recreating the Kafka producer"
                );
                *producer = None;
                failed_batches = 0;
            }
            pause(backoff, shutdown).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = MIN_BACKOFF;
        failed_batches = 0;
        if !full {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(state.config.relay_poll_interval()) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
    Ok(())
}

/// Deletes published rows past the retention period.
async fn delete_old_rows(state: &AppState, conn: &mut PgConnection) -> Result<(), RelayError> {
    let hours = state.config.outbox_retention_hours;
    if hours == 0 {
        return Ok(());
    }
    let deleted = sqlx::query(
        "DELETE FROM outbox WHERE published_at IS NOT NULL \
         AND published_at < now() - make_interval(hours => $1)",
    )
    .bind(i32::try_from(hours).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if deleted > 0 {
        tracing::info!(deleted, "deleted published outbox rows past retention");
    }
    Ok(())
}

/// The relay's producer settings: idempotent, `acks=all`, up to five requests in flight (the
/// most idempotence keeps in order), `linger.ms=1`, librdkafka's default batch size and no
/// compression; then the shared security and pass-through settings (statecast-kafka). The
/// benchmark's bare producer baseline (`statecast-bench`) is built by this function too.
pub fn producer_config(config: &Config, security: &KafkaSecurity) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set(
            "message.timeout.ms",
            config.kafka_message_timeout_ms.to_string(),
        )
        .set("linger.ms", "1");
    // Security and pass-through last: the shared settings of every workload (statecast-kafka).
    security.apply(&mut client);
    client
}

fn new_producer(state: &AppState) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    producer_config(&state.config, &state.kafka).create()
}

/// Takes one batch, publishes it, marks what was acknowledged. Returns (rows taken, any failed).
async fn publish_batch(
    state: &Arc<AppState>,
    conn: &mut PgConnection,
    producer: &FutureProducer,
) -> Result<(i64, bool), RelayError> {
    let mut tx = conn.begin().await?;
    if !holds_lock(&mut tx, heartbeat(state)).await {
        return Err(RelayError::LostLeadership);
    }
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT id, event_id, user_id, payload, trace_context FROM outbox \
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(state.config.relay_batch_size)
    .fetch_all(&mut *tx)
    .await?;
    let taken = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    if rows.is_empty() {
        tx.commit().await?;
        return Ok((0, false));
    }
    // Group by user, keeping id order inside each group.
    let mut order: Vec<String> = Vec::new();
    let mut by_user: HashMap<String, Vec<OutboxRow>> = HashMap::new();
    for row in rows {
        if !by_user.contains_key(&row.user_id) {
            order.push(row.user_id.clone());
        }
        by_user.entry(row.user_id.clone()).or_default().push(row);
    }
    let chains = order.into_iter().filter_map(|user| by_user.remove(&user)).map(|chain| async move {
        let mut acked = Vec::with_capacity(chain.len());
        for row in &chain {
            match send(state, producer, row).await {
                Ok(()) => acked.push(row.id),
                Err(error) => {
                    state.metrics.outbox_publish_error();
                    tracing::warn!(%error, event_id = %row.event_id, "publish failed; will retry");
                    return (acked, true);
                }
            }
        }
        (acked, false)
    });
    // Sends in flight, with the lock checked every heartbeat: on loss the sends are abandoned
    // (and the caller destroys the producer) before a standby starts publishing.
    let sends = join_all(chains);
    tokio::pin!(sends);
    let results = loop {
        tokio::select! {
            results = &mut sends => break results,
            () = tokio::time::sleep(heartbeat(state)) => {
                if !holds_lock(&mut tx, heartbeat(state)).await {
                    return Err(RelayError::LostLeadership);
                }
            }
        }
    };
    let failed = results.iter().any(|(_, failed)| *failed);
    let acked: Vec<i64> = results.into_iter().flat_map(|(ids, _)| ids).collect();
    if !acked.is_empty() {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&acked)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    state
        .metrics
        .outbox_published(u64::try_from(acked.len()).unwrap_or(0));
    Ok((taken, failed))
}

/// Publishes one event in a PRODUCER span whose parent is the request that wrote it.
async fn send(
    state: &AppState,
    producer: &FutureProducer,
    row: &OutboxRow,
) -> Result<(), rdkafka::error::KafkaError> {
    let topic = state.config.events_topic.as_str();
    let span = tracing::info_span!(
        "send user-events",
        otel.kind = "producer",
        otel.name = %format!("send {topic}"),
        messaging.system = "kafka",
        "messaging.operation.type" = "send",
        messaging.destination.name = %topic,
        messaging.message.id = %row.event_id,
        messaging.kafka.message.key = %row.user_id,
    );
    let parent = statecast_telemetry::kafka::from_map(&row.trace_context.0);
    let _ = span.set_parent(parent);
    let payload = serde_json::to_vec(&row.payload.0).unwrap_or_default();
    let record_headers = statecast_telemetry::kafka::inject(
        &span.context(),
        OwnedHeaders::new().insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(CLOUDEVENTS_CONTENT_TYPE),
        }),
    );
    let record = FutureRecord::to(topic)
        .key(&row.user_id)
        .payload(&payload)
        .headers(record_headers);
    producer
        .send(record, Timeout::Never)
        .instrument(span)
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// Forwards NOTIFYs on the outbox channel to `wake`, reconnecting as needed.
async fn listen(url: String, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect(&url).await {
            Ok(listener) => listener,
            Err(_) => {
                pause(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            pause(Duration::from_secs(1), &shutdown).await;
            continue;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                notification = listener.recv() => match notification {
                    Ok(_) => wake.notify_one(),
                    Err(_) => break,
                },
            }
        }
    }
}

async fn pause(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = shutdown.cancelled() => {}
    }
}
