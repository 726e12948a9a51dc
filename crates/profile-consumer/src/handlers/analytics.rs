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
//! The tables are not keyed by group: run one analytics group per database.

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
}
