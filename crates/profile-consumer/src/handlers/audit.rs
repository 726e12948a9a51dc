//! `audit`: one row per applied event in the append-only `audit_log`, with the record's trace id
//! so an audit entry leads to the request that caused it.
//!
//! The row, the `processed_event` claim and the `applied_version` move commit in one
//! transaction, so a redelivered event is a `duplicate` and never a second row. Unlike the
//! state-keeping handlers, the audit log is a trail: every distinct event is recorded, also one
//! older than the user's last applied version (a dead letter replayed after a fix, say). Such a
//! row is counted `stale` (it arrived out of order), and `applied_version` does not move back.

use sqlx::PgPool;

use super::{Delivery, HandlerError, Outcome};
use crate::store::{self, VersionDecision};

/// The audit handler.
#[derive(Debug, Clone)]
pub struct Audit {
    pool: PgPool,
}

impl Audit {
    /// An audit handler writing to `pool` (migrated).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records `delivery` in `audit_log` once.
    #[tracing::instrument(name = "audit", skip_all, fields(event.id = %delivery.event.id), err)]
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        let event = delivery.event;
        let mut tx = self.pool.begin().await?;
        if !store::claim_event(&mut tx, delivery.group, event.id).await? {
            return Ok(Outcome::Duplicate);
        }
        let decision = store::advance_version(
            &mut tx,
            delivery.group,
            &event.subject,
            event.profileversion,
        )
        .await?;
        let snapshot = serde_json::to_value(&event.data)
            .map_err(|e| HandlerError::Rejected(format!("snapshot not serializable: {e}")))?;
        sqlx::query(
            "insert into audit_log \
             (event_id, event_type, user_id, version, event_time, trace_id, snapshot) \
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event.id)
        .bind(event.event_type.as_str())
        .bind(&event.subject)
        .bind(event.profileversion)
        .bind(event.time)
        .bind(delivery.trace_id)
        .bind(snapshot)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match decision {
            VersionDecision::Apply => Outcome::Processed,
            VersionDecision::Stale => Outcome::Stale,
        })
    }
}
