//! The effects. Each handler turns one decoded [`ProfileEvent`] into an [`Outcome`], applying its
//! effect at most once per consumer group (dedup) and only for versions newer than the last one
//! applied for the user (order). Failures are [`HandlerError`]s, each of an [`ErrorClass`]: the
//! consume loop retries transient ones without end and dead-letters permanent ones.
//!
//! # Layout
//! - [`audit`]: append-only `audit_log` (PostgreSQL).
//! - [`analytics`]: per-country and per-day aggregates (PostgreSQL).
//! - [`email`]: "your profile changed" mails (SMTP; PostgreSQL outbox for dedup).
//! - [`cache_refresh`]: `profile:{id}` in Redis, version-compared by `statecast-cache`.

pub mod analytics;
pub mod audit;
pub mod cache_refresh;
pub mod email;
pub mod smtp;

use statecast_events::ProfileEvent;

use crate::config::{Config, HandlerKind};
use crate::metrics::RecordResult;
use crate::store::{self, VersionBook, VersionDecision};

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The effect was applied.
    Processed,
    /// The group had handled this event already.
    Duplicate,
    /// A newer version of the user had been applied already.
    Stale,
}

impl From<Outcome> for RecordResult {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Processed => RecordResult::Processed,
            Outcome::Duplicate => RecordResult::Duplicate,
            Outcome::Stale => RecordResult::Stale,
        }
    }
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// PostgreSQL failed ([`HandlerError::class`] tells whether retrying can help).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A cache operation failed (Redis, or a value that is not an entry).
    #[error("{0}")]
    Cache(#[from] statecast_cache::Error),
    /// The SMTP server failed or answered with an error.
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The SMTP server could not be reached, or did not answer in time (transient).
    #[error("smtp: {0}")]
    SmtpConnect(String),
    /// The event can never be applied (permanent: dead-lettered at once).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A batch's version decisions were overtaken by a concurrent transaction (transient: the
    /// batch is rolled back and retried).
    #[error("database: {0}")]
    Contended(&'static str),
}

/// Whether retrying a failed record can help: decides between waiting and dead-lettering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A dependency is down or overloaded (connection refused or lost, timeout, pool exhausted,
    /// SMTP 4xx, Redis loading or failing over): retried without end, the partition paused,
    /// never dead-lettered. Giving up would turn an outage into lost effects.
    Transient,
    /// Retrying cannot help (undecodable, refused by the handler or by the database's
    /// constraints, SMTP 5xx): dead-lettered at once, to be replayed once fixed.
    Permanent,
    /// Neither is known (an unexpected server error): retried `MAX_RETRIES` times, then
    /// dead-lettered as `retries-exhausted`.
    Unknown,
}

impl HandlerError {
    /// How the consume loop treats this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Database(e) => classify_sqlx(e),
            Self::Redis(e) | Self::Cache(statecast_cache::Error::Redis(e)) => classify_redis(e),
            Self::Cache(statecast_cache::Error::Timeout) => ErrorClass::Transient,
            // A cached value that cannot be decoded, or an entry that cannot be encoded.
            Self::Cache(statecast_cache::Error::Decode(_)) => ErrorClass::Permanent,
            Self::Smtp(e) if e.is_permanent() => ErrorClass::Permanent,
            // 4xx, and everything below a reply: connection, TLS, timeout, shutdown.
            Self::Smtp(_) | Self::SmtpConnect(_) => ErrorClass::Transient,
            Self::Rejected(_) => ErrorClass::Permanent,
            Self::Contended(_) => ErrorClass::Transient,
        }
    }

    /// A short label for the span's `error.type` and `consumer_retries_total{reason}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Database(_) | Self::Contended(_) => "database",
            Self::Redis(_) | Self::Cache(_) => "redis",
            Self::Smtp(_) | Self::SmtpConnect(_) => "smtp",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// sqlx errors: transport and pool trouble is transient; for a server error the SQLSTATE class
/// decides (PostgreSQL's appendix A).
fn classify_sqlx(error: &sqlx::Error) -> ErrorClass {
    use sqlx::Error as E;
    match error {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => ErrorClass::Transient,
        E::Database(db) => db
            .code()
            .map_or(ErrorClass::Unknown, |code| classify_sqlstate(&code)),
        // A query that does not fit the schema or a value that does not decode: a bug or a
        // bad event, not an outage.
        E::RowNotFound
        | E::TypeNotFound { .. }
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnNotFound(_)
        | E::ColumnDecode { .. }
        | E::Encode(_)
        | E::Decode(_)
        | E::Configuration(_)
        | E::InvalidArgument(_) => ErrorClass::Permanent,
        _ => ErrorClass::Unknown,
    }
}

/// By SQLSTATE class: `08` connection, `40` serialization failure or deadlock, `53` out of
/// resources (too many connections, disk full), `57` operator intervention (shutdown, cannot
/// connect now), `58` system error, `55P03` lock not available, `25006` read-only transaction (a
/// failover in progress) are transient; `22` data exception and `23` integrity violation are
/// permanent.
fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        "55P03" | "25006" => ErrorClass::Transient,
        _ => match code.get(..2) {
            Some("08" | "40" | "53" | "57" | "58") => ErrorClass::Transient,
            Some("22" | "23") => ErrorClass::Permanent,
            _ => ErrorClass::Unknown,
        },
    }
}

/// Redis errors: whatever redis-rs itself would retry or reconnect for (I/O, dropped or
/// refused connections, loading, failover, cluster trouble) and timeouts are transient;
/// client-side misuse is permanent; other server errors (a failing script) are unknown.
fn classify_redis(error: &redis::RedisError) -> ErrorClass {
    use redis::{ErrorKind, RetryMethod};
    if error.is_timeout() || error.is_io_error() || error.is_connection_refusal() {
        return ErrorClass::Transient;
    }
    match (error.retry_method(), error.kind()) {
        (RetryMethod::NoRetry, ErrorKind::Client | ErrorKind::UnexpectedReturnType) => {
            ErrorClass::Permanent
        }
        (RetryMethod::NoRetry, _) => ErrorClass::Unknown,
        _ => ErrorClass::Transient,
    }
}

/// What a committed batch did with each delivery, from its decisions (`None`: a duplicate).
pub(crate) fn outcomes(decisions: Vec<Option<VersionDecision>>) -> Vec<Outcome> {
    decisions
        .into_iter()
        .map(|decision| match decision {
            None => Outcome::Duplicate,
            Some(VersionDecision::Apply) => Outcome::Processed,
            Some(VersionDecision::Stale) => Outcome::Stale,
        })
        .collect()
}

/// The bookkeeping half of a PostgreSQL batch, inside its transaction: every event claimed in
/// one statement, the claimed ones' users locked and their versions decided in offset order.
/// `None` is a duplicate (handled before, or a repeat within the batch).
pub(crate) async fn claim_and_decide(
    tx: &mut sqlx::PgConnection,
    group: &str,
    deliveries: &[Delivery<'_>],
) -> Result<(Vec<Option<VersionDecision>>, VersionBook), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = deliveries.iter().map(|d| d.event.id).collect();
    let claimed = store::claim_events(tx, group, &ids).await?;
    let users: Vec<String> = deliveries
        .iter()
        .zip(&claimed)
        .filter(|(_, claimed)| **claimed)
        .map(|(d, _)| d.event.subject.clone())
        .collect();
    let mut book = VersionBook::new(store::lock_versions(tx, group, &users).await?);
    let decisions = deliveries
        .iter()
        .zip(claimed)
        .map(|(d, claimed)| claimed.then(|| book.decide(&d.event.subject, d.event.profileversion)))
        .collect();
    Ok((decisions, book))
}

/// Writes the versions a batch moved; a concurrent first insert of a user voids the batch.
pub(crate) async fn store_batch_versions(
    tx: &mut sqlx::PgConnection,
    group: &str,
    book: &VersionBook,
) -> Result<(), HandlerError> {
    if store::store_versions(tx, group, book).await? {
        Ok(())
    } else {
        Err(HandlerError::Contended(
            "another transaction moved a user's version during the batch",
        ))
    }
}

/// One event to handle, with what the handlers need besides the event.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The decoded event.
    pub event: &'a ProfileEvent,
    /// The consumer group, the scope of dedup and order.
    pub group: &'a str,
    /// The trace id of the record's `traceparent`, for the audit trail.
    pub trace_id: Option<&'a str>,
}

/// The configured handler.
#[derive(Debug, Clone)]
pub enum Handler {
    /// See [`audit`].
    Audit(audit::Audit),
    /// See [`analytics`].
    Analytics(analytics::Analytics),
    /// See [`email`].
    Email(email::Email),
    /// See [`cache_refresh`].
    CacheRefresh(cache_refresh::CacheRefresh),
}

impl Handler {
    /// Connects what the configured handler needs and runs the migrations (PostgreSQL handlers).
    pub async fn connect(config: &Config) -> Result<Self, crate::Error> {
        let missing = |var: &str| crate::Error::Config(format!("{var} is not set"));
        let pool = || async {
            let url = config
                .database_url
                .as_deref()
                .ok_or_else(|| missing("DATABASE_URL"))?;
            let pool = crate::connect::pg_pool(
                url,
                sqlx::postgres::PgPoolOptions::new().max_connections(4),
            )
            .await?;
            crate::store::migrate(&pool).await?;
            Ok::<_, crate::Error>(pool)
        };
        Ok(match config.consumer_handler {
            HandlerKind::Audit => Self::Audit(audit::Audit::new(pool().await?)),
            HandlerKind::Analytics => Self::Analytics(analytics::Analytics::new(pool().await?)),
            HandlerKind::Email => {
                let url = config
                    .smtp_url
                    .as_deref()
                    .ok_or_else(|| missing("SMTP_URL"))?;
                let settings = crate::config::smtp_settings(url)?;
                let ca = match &config.smtp_ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        crate::Error::Config(format!(
                            "SMTP_CA_FILE {}: {e}; set it to a readable PEM file of extra \
                             roots, or unset it",
                            path.display()
                        ))
                    })?),
                    None => None,
                };
                Self::Email(email::Email::new(
                    pool().await?,
                    &settings,
                    ca.as_deref(),
                    &config.mail_from,
                )?)
            }
            HandlerKind::CacheRefresh => {
                let url = config
                    .redis_url
                    .as_deref()
                    .ok_or_else(|| missing("REDIS_URL"))?;
                let ttls = cache_refresh::CacheTtls {
                    ttl_ms: config.cache_ttl_seconds.saturating_mul(1000),
                    grace_ms: config.cache_stale_grace_seconds.saturating_mul(1000),
                    tombstone_ms: config.cache_tombstone_ttl_seconds.saturating_mul(1000),
                };
                let redis = crate::connect::redis_target(url, config.redis_ca_file.as_deref())?;
                Self::CacheRefresh(cache_refresh::CacheRefresh::connect(redis, ttls).await?)
            }
        })
    }

    /// Applies `delivery` once.
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        match self {
            Self::Audit(h) => h.handle(delivery).await,
            Self::Analytics(h) => h.handle(delivery).await,
            Self::Email(h) => h.handle(delivery).await,
            Self::CacheRefresh(h) => h.handle(delivery).await,
        }
    }

    /// Applies the events of one partition's batch, given in offset order, each once, and
    /// fills `outcomes` (one slot per delivery). The PostgreSQL handlers are all or nothing
    /// (one transaction): every slot is filled on success, none on an error. `cache-refresh`
    /// is not atomic: a slot is filled as soon as its write is done, and a retry with the same
    /// slots skips the records already written, so each is counted once. Whatever an error
    /// leaves behind, a retry or the one-at-a-time path ([`Handler::handle`]) recognises it
    /// (claims roll back; a mail sent is marked, an unsent reservation is resent).
    pub async fn handle_batch(
        &self,
        group: &str,
        deliveries: &[Delivery<'_>],
        outcomes: &mut [Option<Outcome>],
    ) -> Result<(), HandlerError> {
        let all = match self {
            Self::Audit(h) => h.handle_batch(group, deliveries).await?,
            Self::Analytics(h) => h.handle_batch(group, deliveries).await?,
            Self::Email(h) => h.handle_batch(group, deliveries).await?,
            Self::CacheRefresh(h) => return h.handle_batch(deliveries, outcomes).await,
        };
        for (slot, outcome) in outcomes.iter_mut().zip(all) {
            *slot = Some(outcome);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_their_class() {
        assert_eq!(classify_sqlstate("08006"), ErrorClass::Transient); // connection failure
        assert_eq!(classify_sqlstate("40001"), ErrorClass::Transient); // serialization
        assert_eq!(classify_sqlstate("40P01"), ErrorClass::Transient); // deadlock
        assert_eq!(classify_sqlstate("53300"), ErrorClass::Transient); // too many connections
        assert_eq!(classify_sqlstate("57P01"), ErrorClass::Transient); // admin shutdown
        assert_eq!(classify_sqlstate("55P03"), ErrorClass::Transient); // lock not available
        assert_eq!(classify_sqlstate("23505"), ErrorClass::Permanent); // unique violation
        assert_eq!(classify_sqlstate("22001"), ErrorClass::Permanent); // string too long
        assert_eq!(classify_sqlstate("42P01"), ErrorClass::Unknown); // undefined table
    }

    #[test]
    fn transport_failures_are_transient_and_refusals_permanent() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            HandlerError::Database(sqlx::Error::Io(io())).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            HandlerError::Database(sqlx::Error::PoolTimedOut).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            HandlerError::Redis(redis::RedisError::from(io())).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            HandlerError::SmtpConnect("timed out".into()).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            HandlerError::Rejected("bad address".into()).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            HandlerError::Database(sqlx::Error::RowNotFound).class(),
            ErrorClass::Permanent
        );
        let script: redis::RedisError = (redis::ErrorKind::Client, "misuse").into();
        assert_eq!(HandlerError::Redis(script).class(), ErrorClass::Permanent);
        // Through the cache crate: the same classes, and the same `redis` label.
        let cache = HandlerError::Cache(statecast_cache::Error::Redis(io().into()));
        assert_eq!(
            (cache.class(), cache.kind()),
            (ErrorClass::Transient, "redis")
        );
        let timeout = HandlerError::Cache(statecast_cache::Error::Timeout);
        assert_eq!(timeout.class(), ErrorClass::Transient);
    }
}
