//! The two tables that make PostgreSQL effects exactly-once and ordered, used inside the
//! handler's own transaction so the bookkeeping commits (or rolls back) with the effect:
//!
//! - `processed_event (consumer_group, event_id)`: an event a group has handled. A redelivery
//!   (after a crash between commit and offset commit, a rebalance, or a producer retry) finds
//!   its row and is a `duplicate`.
//! - `applied_version (consumer_group, user_id, version)`: the highest version a group applied
//!   per user. An event at or below it is `stale`: a late arrival whose state was superseded.
//!
//! The batch forms ([`claim_events`], [`lock_versions`], [`VersionBook`], [`store_versions`])
//! do the same for the records of one poll in a few statements: the claims in one `insert`,
//! the versions read and locked once, folded in offset order in memory (so an event sees the
//! ones before it in its batch) and written once.

use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Claims every event of a batch in one statement. Returns, in input order, whether each one
/// was claimed now: `false` for an event the group handled before, and for a repeat of an id
/// earlier in the same batch (a producer retry), so only its first occurrence takes effect.
#[tracing::instrument(skip_all, fields(events = ids.len()), err)]
pub async fn claim_events(
    tx: &mut PgConnection,
    group: &str,
    ids: &[Uuid],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut seen = HashSet::with_capacity(ids.len());
    let distinct: Vec<Uuid> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let claimed: Vec<Uuid> = sqlx::query_scalar(
        "insert into processed_event (consumer_group, event_id) \
         select $1, id from unnest($2::uuid[]) as t(id) \
         on conflict do nothing returning event_id",
    )
    .bind(group)
    .bind(&distinct)
    .fetch_all(&mut *tx)
    .await?;
    let mut claimed: HashSet<Uuid> = claimed.into_iter().collect();
    // `remove`: a repeat of an id in the batch finds it gone and counts as a duplicate.
    Ok(ids.iter().map(|id| claimed.remove(id)).collect())
}

/// The group's last applied versions of `users`, locking their rows for the rest of the
/// transaction (in user order, so two batches lock in the same order).
#[tracing::instrument(skip_all, fields(users = users.len()), err)]
pub async fn lock_versions(
    tx: &mut PgConnection,
    group: &str,
    users: &[String],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut users = users.to_vec();
    users.sort_unstable();
    users.dedup();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select user_id, version from applied_version \
         where consumer_group = $1 and user_id = any($2) order by user_id for update",
    )
    .bind(group)
    .bind(&users)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The version decisions of one batch, folded in offset order from the locked versions: each
/// event is decided against the last applied version *including* the batch's earlier events.
#[derive(Debug, Default)]
pub struct VersionBook {
    last: HashMap<String, i64>,
    moved: BTreeMap<String, i64>,
}

impl VersionBook {
    /// Starts from the versions [`lock_versions`] read.
    pub fn new(last: HashMap<String, i64>) -> Self {
        Self {
            last,
            moved: BTreeMap::new(),
        }
    }

    /// Decides the next event of `user` (in offset order) and moves the version if applied.
    pub fn decide(&mut self, user: &str, version: i64) -> VersionDecision {
        let decision = decide(self.last.get(user).copied(), version);
        if decision == VersionDecision::Apply {
            self.last.insert(user.to_owned(), version);
            self.moved.insert(user.to_owned(), version);
        }
        decision
    }

    /// The users whose version moved, with their new version, in user order.
    pub fn moved(&self) -> &BTreeMap<String, i64> {
        &self.moved
    }
}

/// Writes the versions a [`VersionBook`] moved. `false` when some row did not move: another
/// transaction inserted a user's first version meanwhile (the rows [`lock_versions`] found
/// none of were not locked), so the batch's decisions are void and it must be retried.
#[tracing::instrument(skip_all, fields(users = book.moved().len()), err)]
pub async fn store_versions(
    tx: &mut PgConnection,
    group: &str,
    book: &VersionBook,
) -> Result<bool, sqlx::Error> {
    if book.moved().is_empty() {
        return Ok(true);
    }
    let (users, versions): (Vec<&str>, Vec<i64>) = book
        .moved()
        .iter()
        .map(|(user, version)| (user.as_str(), *version))
        .unzip();
    let moved = sqlx::query(
        "insert into applied_version (consumer_group, user_id, version) \
         select $1, u, v from unnest($2::text[], $3::bigint[]) as t(u, v) \
         on conflict (consumer_group, user_id) do update \
         set version = excluded.version, updated_at = now() \
         where applied_version.version < excluded.version",
    )
    .bind(group)
    .bind(&users)
    .bind(&versions)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(usize::try_from(moved).is_ok_and(|moved| moved == users.len()))
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

    #[test]
    fn a_batch_decides_each_event_against_the_ones_before_it() {
        let mut book = VersionBook::new(HashMap::from([("a".to_owned(), 3)]));
        let decisions: Vec<VersionDecision> =
            [("a", 2), ("a", 4), ("b", 1), ("a", 4), ("b", 3), ("b", 2)]
                .iter()
                .map(|(user, version)| book.decide(user, *version))
                .collect();
        use VersionDecision::{Apply, Stale};
        assert_eq!(decisions, vec![Stale, Apply, Apply, Stale, Apply, Stale]);
        let moved: Vec<(&str, i64)> = book.moved().iter().map(|(u, v)| (u.as_str(), *v)).collect();
        assert_eq!(moved, vec![("a", 4), ("b", 3)]);
    }
}
