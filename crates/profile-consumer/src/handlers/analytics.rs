//! `analytics`: aggregates that stay right under duplicates and reordering.
//!
//! - `analytics_profile_state (user_id, country, version, deleted)`: the latest applied state per
//!   user. An event moves it only when its version is newer ([`crate::store::advance_version`]).
//! - `analytics_country (country, profiles)`: live profiles per country. Moving a user between
//!   countries decrements the old one and increments the new one; a delete decrements.
//! - `analytics_daily_changes (day, changes)`: changes per UTC day of the event time. Every
//!   distinct event counts once, stale ones included (the change did happen, it just arrived
//!   late), duplicates never (the `processed_event` claim).
//!
//! All of it commits in one transaction with the claim, so a crash never leaves half an update.
//! A batch (the records of one poll of a partition) is one transaction too: the claimed
//! events are folded in offset order in memory, from the locked rows of their users, and
//! written as one statement per table, as country and day deltas.
//! The tables are not keyed by group: run one analytics group per database.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use sqlx::{PgConnection, PgPool};
use statecast_events::{EventType, ProfileEvent};

use super::{Delivery, HandlerError, Outcome};
use crate::store::{self, VersionDecision};

/// The analytics handler.
#[derive(Debug, Clone)]
pub struct Analytics {
    pool: PgPool,
}

/// A user's counted state: the country they count in, if live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Country of the profile.
    pub country: Option<String>,
    /// Whether the profile is deleted (counted nowhere).
    pub deleted: bool,
}

impl Counted {
    /// The country this state counts in, if any.
    pub fn counts_in(&self) -> Option<&str> {
        if self.deleted {
            None
        } else {
            self.country.as_deref()
        }
    }

    /// The state after `event`, given the state before (a delete keeps the last country).
    pub fn after(before: Option<&Counted>, event: &ProfileEvent) -> Counted {
        match event.event_type {
            EventType::UserDeleted => Counted {
                country: before.and_then(|b| b.country.clone()),
                deleted: true,
            },
            EventType::UserCreated | EventType::UserUpdated => Counted {
                country: event.data.country.clone(),
                deleted: false,
            },
        }
    }
}

impl Analytics {
    /// An analytics handler writing to `pool` (migrated).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Folds a batch of deliveries (offset order) into the aggregates in one transaction.
    #[tracing::instrument(name = "analytics batch", skip_all, fields(events = deliveries.len()), err)]
    pub async fn handle_batch(
        &self,
        group: &str,
        deliveries: &[Delivery<'_>],
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let (decisions, book) = super::claim_and_decide(&mut tx, group, deliveries).await?;
        let applied: Vec<&ProfileEvent> = deliveries
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| **d == Some(VersionDecision::Apply))
            .map(|(d, _)| d.event)
            .collect();
        let mut fold = Fold::new(lock_states(&mut tx, &applied).await?);
        for (delivery, decision) in deliveries.iter().zip(&decisions) {
            match decision {
                None => {}
                Some(VersionDecision::Stale) => fold.count_change(delivery.event),
                Some(VersionDecision::Apply) => {
                    fold.count_change(delivery.event);
                    fold.apply(delivery.event);
                }
            }
        }
        super::store_batch_versions(&mut tx, group, &book).await?;
        write_fold(&mut tx, &fold).await?;
        tx.commit().await?;
        Ok(super::outcomes(decisions))
    }

    /// Folds `delivery` into the aggregates once.
    #[tracing::instrument(name = "analytics", skip_all, fields(event.id = %delivery.event.id), err)]
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        let event = delivery.event;
        let mut tx = self.pool.begin().await?;
        if !store::claim_event(&mut tx, delivery.group, event.id).await? {
            return Ok(Outcome::Duplicate);
        }
        count_daily_change(&mut tx, event).await?;
        let outcome = match store::advance_version(
            &mut tx,
            delivery.group,
            &event.subject,
            event.profileversion,
        )
        .await?
        {
            VersionDecision::Stale => Outcome::Stale,
            VersionDecision::Apply => {
                apply_state(&mut tx, event).await?;
                Outcome::Processed
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}

#[tracing::instrument(skip_all, err)]
async fn count_daily_change(tx: &mut PgConnection, event: &ProfileEvent) -> sqlx::Result<()> {
    sqlx::query(
        "insert into analytics_daily_changes (day, changes) values ($1, 1) \
         on conflict (day) do update set changes = analytics_daily_changes.changes + 1",
    )
    .bind(event.time.date_naive())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all, err)]
async fn apply_state(tx: &mut PgConnection, event: &ProfileEvent) -> sqlx::Result<()> {
    let before: Option<(Option<String>, bool)> = sqlx::query_as(
        "select country, deleted from analytics_profile_state where user_id = $1 for update",
    )
    .bind(&event.subject)
    .fetch_optional(&mut *tx)
    .await?;
    let before = before.map(|(country, deleted)| Counted { country, deleted });
    let after = Counted::after(before.as_ref(), event);
    let old = before.as_ref().and_then(Counted::counts_in);
    let new = after.counts_in();
    if old != new {
        if let Some(country) = old {
            sqlx::query("update analytics_country set profiles = profiles - 1 where country = $1")
                .bind(country)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(country) = new {
            sqlx::query(
                "insert into analytics_country (country, profiles) values ($1, 1) \
                 on conflict (country) do update set profiles = analytics_country.profiles + 1",
            )
            .bind(country)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query(
        "insert into analytics_profile_state (user_id, country, version, deleted) \
         values ($1, $2, $3, $4) on conflict (user_id) do update \
         set country = excluded.country, version = excluded.version, deleted = excluded.deleted \
         where analytics_profile_state.version < excluded.version",
    )
    .bind(&event.subject)
    .bind(&after.country)
    .bind(event.profileversion)
    .bind(after.deleted)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A batch's effect on the aggregates, folded in offset order.
#[derive(Debug, Default)]
struct Fold {
    /// Per user: the state after the batch's applied events, with its version.
    states: BTreeMap<String, (Counted, i64)>,
    /// Per user: the state the table held (locked), the start of the fold.
    before: HashMap<String, Counted>,
    /// Live profiles per country, plus or minus.
    countries: BTreeMap<String, i64>,
    /// Changes per day.
    days: BTreeMap<NaiveDate, i64>,
}

impl Fold {
    fn new(before: HashMap<String, Counted>) -> Self {
        Self {
            before,
            ..Self::default()
        }
    }

    fn count_change(&mut self, event: &ProfileEvent) {
        *self.days.entry(event.time.date_naive()).or_default() += 1;
    }

    /// An event whose version applies: the user's counted country may change.
    fn apply(&mut self, event: &ProfileEvent) {
        let before = match self.states.get(&event.subject) {
            Some((state, _)) => Some(state.clone()),
            None => self.before.get(&event.subject).cloned(),
        };
        let after = Counted::after(before.as_ref(), event);
        let old = before.as_ref().and_then(Counted::counts_in);
        let new = after.counts_in();
        if old != new {
            if let Some(country) = old {
                *self.countries.entry(country.to_owned()).or_default() -= 1;
            }
            if let Some(country) = new {
                *self.countries.entry(country.to_owned()).or_default() += 1;
            }
        }
        self.states
            .insert(event.subject.clone(), (after, event.profileversion));
    }
}

/// The counted states of the users of `events`, locked (in user order).
async fn lock_states(
    tx: &mut PgConnection,
    events: &[&ProfileEvent],
) -> sqlx::Result<HashMap<String, Counted>> {
    if events.is_empty() {
        return Ok(HashMap::new());
    }
    let mut users: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let rows: Vec<(String, Option<String>, bool)> = sqlx::query_as(
        "select user_id, country, deleted from analytics_profile_state \
         where user_id = any($1) order by user_id for update",
    )
    .bind(&users)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(user, country, deleted)| (user, Counted { country, deleted }))
        .collect())
}

/// Writes a batch's fold: one statement per table, rows in key order (the same lock order for
/// every batch). A decrement of a country without a row is dropped, as a single event's is.
#[tracing::instrument(skip_all, err)]
async fn write_fold(tx: &mut PgConnection, fold: &Fold) -> sqlx::Result<()> {
    if !fold.days.is_empty() {
        let (days, changes): (Vec<NaiveDate>, Vec<i64>) =
            fold.days.iter().map(|(d, n)| (*d, *n)).unzip();
        sqlx::query(
            "insert into analytics_daily_changes (day, changes) \
             select d, n from unnest($1::date[], $2::bigint[]) as t(d, n) \
             on conflict (day) do update \
             set changes = analytics_daily_changes.changes + excluded.changes",
        )
        .bind(&days)
        .bind(&changes)
        .execute(&mut *tx)
        .await?;
    }
    // A country touched with a net zero is still written, as one event at a time would
    // have created its row.
    let (countries, deltas): (Vec<&str>, Vec<i64>) =
        fold.countries.iter().map(|(c, d)| (c.as_str(), *d)).unzip();
    if !countries.is_empty() {
        sqlx::query(
            "insert into analytics_country (country, profiles) \
             select c, d from unnest($1::text[], $2::bigint[]) as t(c, d) \
             where d >= 0 or exists (select 1 from analytics_country a where a.country = t.c) \
             on conflict (country) do update \
             set profiles = analytics_country.profiles + excluded.profiles",
        )
        .bind(&countries)
        .bind(&deltas)
        .execute(&mut *tx)
        .await?;
    }
    if !fold.states.is_empty() {
        let mut users = Vec::with_capacity(fold.states.len());
        let mut countries = Vec::with_capacity(fold.states.len());
        let mut versions = Vec::with_capacity(fold.states.len());
        let mut deleted = Vec::with_capacity(fold.states.len());
        for (user, (state, version)) in &fold.states {
            users.push(user.as_str());
            countries.push(state.country.as_deref());
            versions.push(*version);
            deleted.push(state.deleted);
        }
        sqlx::query(
            "insert into analytics_profile_state (user_id, country, version, deleted) \
             select u, c, v, x from unnest($1::text[], $2::text[], $3::bigint[], $4::bool[]) \
             as t(u, c, v, x) on conflict (user_id) do update \
             set country = excluded.country, version = excluded.version, \
             deleted = excluded.deleted \
             where analytics_profile_state.version < excluded.version",
        )
        .bind(&users)
        .bind(&countries)
        .bind(&versions)
        .bind(&deleted)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use statecast_events::ProfileSnapshot;

    fn event(event_type: EventType, country: Option<&str>, version: i64) -> ProfileEvent {
        ProfileEvent::new(
            event_type,
            ProfileSnapshot {
                id: "u".into(),
                name: None,
                email: None,
                country: country.map(Into::into),
                version,
                updated_at: None,
            },
            Utc::now(),
        )
    }

    #[test]
    fn a_move_counts_in_the_new_country_and_a_delete_counts_nowhere() {
        let created = Counted::after(None, &event(EventType::UserCreated, Some("PT"), 1));
        assert_eq!(created.counts_in(), Some("PT"));
        let moved = Counted::after(
            Some(&created),
            &event(EventType::UserUpdated, Some("DE"), 2),
        );
        assert_eq!(moved.counts_in(), Some("DE"));
        let deleted = Counted::after(Some(&moved), &event(EventType::UserDeleted, None, 3));
        assert_eq!(deleted.counts_in(), None);
        assert_eq!(deleted.country.as_deref(), Some("DE"));
    }

    #[test]
    fn a_batch_folds_a_users_events_in_order_into_country_deltas() {
        let before = HashMap::from([(
            "u".to_owned(),
            Counted {
                country: Some("PT".into()),
                deleted: false,
            },
        )]);
        let mut fold = Fold::new(before);
        for event in [
            event(EventType::UserUpdated, Some("DE"), 2),
            event(EventType::UserUpdated, Some("FR"), 3),
            event(EventType::UserDeleted, None, 4),
        ] {
            fold.count_change(&event);
            fold.apply(&event);
        }
        let deltas: Vec<(&str, i64)> = fold
            .countries
            .iter()
            .filter(|(_, d)| **d != 0)
            .map(|(c, d)| (c.as_str(), *d))
            .collect();
        // PT lost the user; DE and FR had them for a moment; nobody counts them now.
        assert_eq!(deltas, vec![("PT", -1)]);
        let (state, version) = &fold.states["u"];
        assert_eq!((state.counts_in(), *version), (None, 4));
        assert_eq!(fold.days.values().sum::<i64>(), 3);
    }
}
