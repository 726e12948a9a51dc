//! The effects. Each handler turns one decoded [`ProfileEvent`] into an [`Outcome`], applying its
//! effect at most once per consumer group (dedup) and only for versions newer than the last one
//! applied for the user (order). Failures are [`HandlerError`]s: the consume loop retries them
//! with backoff and dead-letters the record when attempts run out or the error is permanent.
//!
//! # Layout
//! - [`audit`]: append-only `audit_log` (PostgreSQL).
//! - [`analytics`]: per-country and per-day aggregates (PostgreSQL).
//! - [`email`]: "your profile changed" mails (SMTP; PostgreSQL outbox for dedup).
//! - [`cache_refresh`]: `profile:{id}` in Redis, version-compared in a Lua script.

pub mod analytics;
pub mod audit;
pub mod cache_refresh;
pub mod email;
pub mod smtp;

use statecast_events::ProfileEvent;

use crate::config::{Config, HandlerKind};
use crate::metrics::RecordResult;

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
    /// PostgreSQL failed (transient: retried).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed (transient: retried).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The SMTP server failed (transient: retried).
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The SMTP server could not be reached, or did not answer in time (transient: retried).
    #[error("smtp: {0}")]
    SmtpConnect(String),
    /// The event can never be applied (permanent: dead-lettered at once).
    #[error("rejected: {0}")]
    Rejected(String),
}

impl HandlerError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// A short label for the span's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Database(_) => "database",
            Self::Redis(_) => "redis",
            Self::Smtp(_) | Self::SmtpConnect(_) => "smtp",
            Self::Rejected(_) => "rejected",
        }
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
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect(url)
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
                let settings = email::SmtpSettings::parse(url)
                    .map_err(|e| crate::Error::Config(format!("SMTP_URL: {e}")))?;
                let ca = match &config.smtp_ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        crate::Error::Config(format!("SMTP_CA_FILE {}: {e}", path.display()))
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
                Self::CacheRefresh(cache_refresh::CacheRefresh::connect(url, ttls).await?)
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
}
