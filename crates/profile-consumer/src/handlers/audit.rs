//! `audit`: one row per applied event in the append-only `audit_log`, with the record's trace id
//! so an audit entry leads to the request that caused it.
//!
//! The row, the `processed_event` claim and the `applied_version` move commit in one
//! transaction, so a redelivered event is a `duplicate` and never a second row. Unlike the
//! state-keeping handlers, the audit log is a trail: every distinct event is recorded, also one
//! older than the user's last applied version (a dead letter replayed after a fix, say). Such a
//! row is counted `stale` (it arrived out of order), and `applied_version` does not move back.
//!
//! A batch (the records of one poll of a partition) is one transaction: one claim statement,
//! the versions locked once, one multi-row insert.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

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

    /// Records a batch of deliveries (offset order) in `audit_log` in one transaction.
    #[tracing::instrument(name = "audit batch", skip_all, fields(events = deliveries.len()), err)]
    pub async fn handle_batch(
        &self,
        group: &str,
        deliveries: &[Delivery<'_>],
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let (decisions, book) = super::claim_and_decide(&mut tx, group, deliveries).await?;
        let mut rows = AuditRows::default();
        for (delivery, decision) in deliveries.iter().zip(&decisions) {
            if decision.is_some() {
                rows.push(delivery)?;
            }
        }
        super::store_batch_versions(&mut tx, group, &book).await?;
        if !rows.event_id.is_empty() {
            sqlx::query(
                "insert into audit_log \
                 (event_id, event_type, user_id, version, event_time, trace_id, snapshot) \
                 select e, t, u, v, w, r, s::jsonb from unnest(\
                 $1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], \
                 $6::text[], $7::text[]) as b(e, t, u, v, w, r, s)",
            )
            .bind(&rows.event_id)
            .bind(&rows.event_type)
            .bind(&rows.user_id)
            .bind(&rows.version)
            .bind(&rows.event_time)
            .bind(&rows.trace_id)
            .bind(&rows.snapshot)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(super::outcomes(decisions))
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

/// The columns of a batch's `audit_log` rows, bound as arrays.
#[derive(Default)]
struct AuditRows {
    event_id: Vec<Uuid>,
    event_type: Vec<&'static str>,
    user_id: Vec<String>,
    version: Vec<i64>,
    event_time: Vec<DateTime<Utc>>,
    trace_id: Vec<Option<String>>,
    snapshot: Vec<String>,
}

impl AuditRows {
    fn push(&mut self, delivery: &Delivery<'_>) -> Result<(), HandlerError> {
        let event = delivery.event;
        let snapshot = serde_json::to_string(&event.data)
            .map_err(|e| HandlerError::Rejected(format!("snapshot not serializable: {e}")))?;
        self.event_id.push(event.id);
        self.event_type.push(event.event_type.as_str());
        self.user_id.push(event.subject.clone());
        self.version.push(event.profileversion);
        self.event_time.push(event.time);
        self.trace_id.push(delivery.trace_id.map(str::to_owned));
        self.snapshot.push(snapshot);
        Ok(())
    }
}
