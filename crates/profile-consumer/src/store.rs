//! The two tables that make PostgreSQL effects exactly-once and ordered, used inside the
//! handler's own transaction so the bookkeeping commits (or rolls back) with the effect:
//!
//! - `processed_event (consumer_group, event_id)`: an event a group has handled. A redelivery
//!   (after a crash between commit and offset commit, a rebalance, or a producer retry) finds
//!   its row and is a `duplicate`.
//! - `applied_version (consumer_group, user_id, version)`: the highest version a group applied
//!   per user. An event at or below it is `stale`: a late arrival whose state was superseded.

use sqlx::PgConnection;
use uuid::Uuid;

/// Whether an event's version may be applied on top of what the group applied last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionDecision {
    /// Newer than anything applied: apply it.
    Apply,
    /// At or below the last applied version: skip it.
    Stale,
}

/// The pure rule: apply only versions strictly above the last applied one.
pub fn decide(last_applied: Option<i64>, incoming: i64) -> VersionDecision {
    match last_applied {
        Some(last) if incoming <= last => VersionDecision::Stale,
        _ => VersionDecision::Apply,
    }
}

/// Records that `group` handles `event_id`; `false` when it already did (a duplicate).
///
/// Concurrent claims of one event serialize on the primary key: the second waits for the
/// first transaction and then sees the conflict.
#[tracing::instrument(skip(tx), err)]
pub async fn claim_event(
    tx: &mut PgConnection,
    group: &str,
    event_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into processed_event (consumer_group, event_id) values ($1, $2) \
         on conflict do nothing",
    )
    .bind(group)
    .bind(event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Moves the group's version of `user_id` to `version` if that is newer, locking the row for
/// the rest of the transaction.
#[tracing::instrument(skip(tx), err)]
pub async fn advance_version(
    tx: &mut PgConnection,
    group: &str,
    user_id: &str,
    version: i64,
) -> Result<VersionDecision, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar(
        "select version from applied_version \
         where consumer_group = $1 and user_id = $2 for update",
    )
    .bind(group)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if decide(last, version) == VersionDecision::Stale {
        return Ok(VersionDecision::Stale);
    }
    // The guard repeats the rule for the race of two first-ever inserts of one user.
    let moved = sqlx::query(
        "insert into applied_version (consumer_group, user_id, version) values ($1, $2, $3) \
         on conflict (consumer_group, user_id) do update \
         set version = excluded.version, updated_at = now() \
         where applied_version.version < excluded.version",
    )
    .bind(group)
    .bind(user_id)
    .bind(version)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(if moved == 1 {
        VersionDecision::Apply
    } else {
        VersionDecision::Stale
    })
}

/// Runs the consumer's migrations (versions `2xxxx`), ignoring the API's (`1xxxx`) that share
/// the `_sqlx_migrations` table.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_versions_above_the_last_applied_one_are_applied() {
        assert_eq!(decide(None, 1), VersionDecision::Apply);
        assert_eq!(decide(Some(3), 4), VersionDecision::Apply);
        assert_eq!(decide(Some(3), 3), VersionDecision::Stale);
        assert_eq!(decide(Some(3), 2), VersionDecision::Stale);
    }
}
