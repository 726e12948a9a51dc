//! PostgreSQL: profile reads and the write transaction. Every change is one transaction that
//! locks the profile row, checks `If-Match`, bumps the version, and inserts the event into the
//! outbox, so a change and its event are committed together or not at all.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use statecast_events::{EventType, ProfileEvent, ProfileSnapshot};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::model::{Profile, ProfileInput};
use crate::problem::ApiError;
use crate::validate::{self, EtagCondition};

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    /// PostgreSQL cannot be reached (pool timeout, I/O error, server shutting down).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// No live profile with this id.
    #[error("profile {0:?} not found")]
    NotFound(String),
    /// `If-Match` did not match.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The merge patch left an invalid profile.
    #[error("invalid patch")]
    Rejected(Vec<crate::problem::FieldError>),
    /// Anything else.
    #[error("database error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable(e.to_string())
            }
            E::Protocol(_) => Self::Unavailable(e.to_string()),
            E::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                Self::Unavailable(e.to_string())
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Self::Unavailable
            }
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::PreconditionFailed(detail) => Self::PreconditionFailed(detail),
            StoreError::Rejected(errors) => Self::Validation(errors),
            StoreError::Internal(cause) => Self::Internal(cause),
        }
    }
}

/// Result of a read: the live profile, if any, and the row's version (the delete's version for a
/// deleted profile, 0 for one that never existed). Negative cache entries carry that version so
/// a later create's invalidation supersedes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// The profile, unless absent or deleted.
    pub(crate) profile: Option<Profile>,
    /// Version of the row (0 when there is none).
    pub(crate) version: i64,
}

impl From<&statecast_cache::Entry> for Loaded {
    /// The read result a cache entry stands for.
    fn from(entry: &statecast_cache::Entry) -> Self {
        Self {
            profile: entry.p.clone(),
            version: entry.v,
        }
    }
}

/// A requested change.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Create or replace.
    Put(ProfileInput),
    /// RFC 7396 merge patch of the writable fields.
    Patch(Value),
    /// Delete (the row stays as a tombstone to keep the version counting).
    Delete,
}

/// A committed change.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// The profile after the change (`None` after a delete).
    pub(crate) profile: Option<Profile>,
    /// Version after the change.
    pub(crate) version: i64,
    /// Whether the change created the profile.
    pub(crate) created: bool,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: Option<String>,
    email: Option<String>,
    country: Option<String>,
    version: i64,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl Row {
    fn live(self) -> Loaded {
        let version = self.version;
        let profile = match (self.deleted_at, self.name, self.email, self.country) {
            (None, Some(name), Some(email), Some(country)) if version > 0 => Some(Profile {
                id: self.id,
                name,
                email,
                country,
                version,
                updated_at: self.updated_at,
            }),
            _ => None,
        };
        Loaded { profile, version }
    }
}

const SELECT: &str =
    "SELECT id, name, email, country, version, updated_at, deleted_at FROM profile WHERE id = $1";

/// Reads one profile.
#[tracing::instrument(name = "db load profile", skip(pool), fields(otel.kind = "client", db.system.name = "postgresql"))]
pub(crate) async fn load(pool: &PgPool, id: &str) -> Result<Loaded, StoreError> {
    let row: Option<Row> = sqlx::query_as(SELECT).bind(id).fetch_optional(pool).await?;
    Ok(row.map(Row::live).unwrap_or(Loaded {
        profile: None,
        version: 0,
    }))
}

/// A change applied inside its still open transaction, with its outbox row: committing it is the
/// one step left. Dropping it rolls the change back.
pub(crate) struct Prepared {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    written: Written,
}

impl Prepared {
    /// The version the change writes.
    pub(crate) fn version(&self) -> i64 {
        self.written.version
    }

    /// Commits the change and its outbox row.
    #[tracing::instrument(name = "db commit", skip(self), fields(otel.kind = "client", db.system.name = "postgresql"))]
    pub(crate) async fn commit(self) -> Result<Written, StoreError> {
        self.tx.commit().await?;
        Ok(self.written)
    }
}

/// Applies `change` in one transaction with its outbox row, up to (not including) the commit.
#[tracing::instrument(name = "db write transaction", skip(pool, change, if_match), fields(otel.kind = "client", db.system.name = "postgresql"))]
pub(crate) async fn prepare(
    pool: &PgPool,
    id: &str,
    change: Change,
    if_match: Option<&EtagCondition>,
) -> Result<Prepared, StoreError> {
    let mut tx = pool.begin().await?;
    // A placeholder row (version 0, deleted) makes the row lock below work for creates too;
    // it disappears with a rollback.
    sqlx::query(
        "INSERT INTO profile (id, version, deleted_at) VALUES ($1, 0, now()) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let row: Row = sqlx::query_as(&format!("{SELECT} FOR UPDATE"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let current = row.live();
    let current_version = current.profile.as_ref().map(|p| p.version);
    if let Some(condition) = if_match
        && !condition.matches_strong(current_version)
    {
        return Err(StoreError::PreconditionFailed(match current_version {
            Some(v) => format!("If-Match does not match the current version {v}"),
            None => format!("profile {id:?} does not exist, so If-Match cannot match"),
        }));
    }
    let version = current.version + 1;
    // PostgreSQL keeps microseconds: round now so the response, cache and row agree.
    let now = Utc::now().trunc_subsecs(6);
    let (input, event_type) = match (change, &current.profile) {
        (Change::Put(input), Some(_)) => (Some(input), EventType::UserUpdated),
        (Change::Put(input), None) => (Some(input), EventType::UserCreated),
        (Change::Patch(patch), Some(profile)) => {
            let input = validate::apply_merge_patch(&crate::model::input_json(profile), &patch)
                .map_err(|e| match e {
                    ApiError::Validation(errors) => StoreError::Rejected(errors),
                    other => StoreError::Internal(other.to_string()),
                })?;
            (Some(input), EventType::UserUpdated)
        }
        (Change::Delete, Some(_)) => (None, EventType::UserDeleted),
        (Change::Patch(_) | Change::Delete, None) => {
            return Err(StoreError::NotFound(id.to_owned()));
        }
    };
    let profile = input.map(|input| Profile {
        id: id.to_owned(),
        name: input.name,
        email: input.email,
        country: input.country,
        version,
        updated_at: now,
    });
    match &profile {
        Some(p) => {
            sqlx::query(
                "UPDATE profile SET name = $2, email = $3, country = $4, version = $5, \
                 updated_at = $6, deleted_at = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(&p.name)
            .bind(&p.email)
            .bind(&p.country)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query(
                "UPDATE profile SET name = NULL, email = NULL, country = NULL, version = $2, \
                 updated_at = $3, deleted_at = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    let snapshot = match &profile {
        Some(p) => p.snapshot(),
        None => ProfileSnapshot {
            id: id.to_owned(),
            name: None,
            email: None,
            country: None,
            version,
            updated_at: None,
        },
    };
    let event = ProfileEvent::new(event_type, snapshot, now);
    let payload: Value = serde_json::from_slice(&event.to_json())
        .map_err(|e| StoreError::Internal(format!("event JSON: {e}")))?;
    let trace_context = statecast_telemetry::kafka::to_map(&tracing::Span::current().context());
    sqlx::query(
        "INSERT INTO outbox (event_id, user_id, event_type, payload, trace_context) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event.id)
    .bind(id)
    .bind(event_type.as_str())
    .bind(Json(payload))
    .bind(Json(trace_context))
    .execute(&mut *tx)
    .await?;
    Ok(Prepared {
        tx,
        written: Written {
            profile,
            version,
            created: event_type == EventType::UserCreated,
        },
    })
}

/// Whether PostgreSQL answers.
pub(crate) async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
