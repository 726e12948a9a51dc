//! `cache-refresh`: keeps the Profile API's cache entry `profile:{id}` in step with the events,
//! so reads after a change are served from the cache without a database round trip.
//!
//! The entry format, the compare-and-set and the TTL rules are `statecast-cache`'s, the same
//! code the API reads and fills with:
//! - create/update: the profile of the event's snapshot (the API's `GET` body), fresh for
//!   `CACHE_TTL_SECONDS` (±10 % jitter), servable as stale for `CACHE_STALE_GRACE_SECONDS` after;
//! - delete: the API's invalidation marker at the delete's version, kept for
//!   `CACHE_TOMBSTONE_TTL_SECONDS`: readers miss and load from PostgreSQL (and the API caches its
//!   own negative entry), while an older event arriving late cannot resurrect the profile.
//!   A snapshot missing a field the API's profile requires is written as a marker too.
//!
//! # Dedup and order
//! One atomic compare on the cached `v`: newer is written (`processed`); equal is a redelivery
//! or a value the API filled itself (`duplicate`) — except that a profile replaces an
//! invalidation marker of its own version, as the API's fills do; older is `stale`. No
//! `processed_event` table is needed: the compare makes every replay a no-op.
//!
//! A batch (the records of one poll of a partition) is written as one chain of compares per
//! user, in offset order, the chains concurrently: the multiplexed connection pipelines them.
//! A batch that fails half-way can be repeated whole, since a repeated compare is a no-op.

use std::collections::BTreeMap;
use std::time::Duration;

use statecast_cache::{Cache, Profile, Target, Written};
use statecast_events::{EventType, ProfileEvent};

use super::{Delivery, HandlerError, Outcome};

/// What the compare-and-set's answer means for the record.
pub fn outcome_of(written: Written) -> Outcome {
    match written {
        Written::Written => Outcome::Processed,
        Written::SameVersion => Outcome::Duplicate,
        Written::Older => Outcome::Stale,
    }
}

/// The profile `event` leaves cached: none for a delete or an incomplete snapshot.
pub fn profile_of(event: &ProfileEvent) -> Option<Profile> {
    match event.event_type {
        EventType::UserDeleted => None,
        _ => Profile::from_snapshot(&event.data),
    }
}

/// TTLs of what the handler writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtls {
    /// Freshness of a profile entry, milliseconds (before jitter).
    pub ttl_ms: u64,
    /// How long a profile entry stays servable as stale after that, milliseconds.
    pub grace_ms: u64,
    /// Lifetime of the delete marker, milliseconds.
    pub tombstone_ms: u64,
}

impl CacheTtls {
    /// The cache crate's lifetimes: the delete marker is the tombstone; the handler writes no
    /// negative entries and takes no fill lock.
    fn cache_ttls(self) -> statecast_cache::Ttls {
        statecast_cache::Ttls {
            ttl: Duration::from_millis(self.ttl_ms),
            grace: Duration::from_millis(self.grace_ms),
            negative: Duration::ZERO,
            lock: Duration::ZERO,
            marker: Duration::from_millis(self.tombstone_ms),
        }
    }
}

/// The cache-refresh handler.
#[derive(Debug, Clone)]
pub struct CacheRefresh {
    cache: Cache,
}

impl CacheRefresh {
    /// Connects `redis` (from `REDIS_URL` and `REDIS_CA_FILE`, TLS included; one Redis, or a
    /// Redis Cluster; a [`redis::Client`] is one Redis).
    pub async fn connect(redis: impl Into<Target>, ttls: CacheTtls) -> Result<Self, crate::Error> {
        let conn = crate::connect::redis_connection(&redis.into()).await?;
        Ok(Self {
            cache: Cache::with_connection(conn, None, ttls.cache_ttls()),
        })
    }

    /// Writes a batch of deliveries (offset order) that have no outcome yet, filling each slot
    /// of `outcomes` once its write is done: a retry after a failure (a master failing over)
    /// writes only the rest, so no record is counted twice. The first failure is returned.
    #[tracing::instrument(name = "cache-refresh batch", skip_all, fields(events = deliveries.len()), err)]
    pub async fn handle_batch(
        &self,
        deliveries: &[Delivery<'_>],
        outcomes: &mut [Option<Outcome>],
    ) -> Result<(), HandlerError> {
        let mut chains: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            if outcomes.get(i).is_some_and(Option::is_none) {
                chains
                    .entry(delivery.event.subject.as_str())
                    .or_default()
                    .push(i);
            }
        }
        let writes = chains.into_values().map(|chain| async move {
            let mut written = Vec::with_capacity(chain.len());
            for i in chain {
                let event = deliveries[i].event;
                match self
                    .cache
                    .refresh(&event.subject, profile_of(event), event.profileversion)
                    .await
                {
                    Ok(answer) => written.push((i, outcome_of(answer))),
                    // The user's later events wait for the retry, in order.
                    Err(e) => return (written, Some((i, HandlerError::from(e)))),
                }
            }
            (written, None)
        });
        let mut failed: Option<(usize, HandlerError)> = None;
        for (written, error) in futures::future::join_all(writes).await {
            for (i, outcome) in written {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(outcome);
                }
            }
            if let Some((i, error)) = error
                && failed.as_ref().is_none_or(|(first, _)| i < *first)
            {
                failed = Some((i, error));
            }
        }
        match failed {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    /// Writes `profile:{id}` if the event is newer than what is cached.
    #[tracing::instrument(name = "cache-refresh", skip_all, fields(event.id = %delivery.event.id), err)]
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        let event = delivery.event;
        let written = self
            .cache
            .refresh(&event.subject, profile_of(event), event.profileversion)
            .await?;
        Ok(outcome_of(written))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Utc;
    use statecast_events::ProfileSnapshot;

    const TTLS: CacheTtls = CacheTtls {
        ttl_ms: 3_600_000,
        grace_ms: 60_000,
        tombstone_ms: 86_400_000,
    };

    fn event(event_type: EventType, version: i64, complete: bool) -> ProfileEvent {
        let deleted = event_type == EventType::UserDeleted;
        ProfileEvent::new(
            event_type,
            ProfileSnapshot {
                id: "alice".into(),
                name: (!deleted).then(|| "Alice".into()),
                email: (!deleted && complete).then(|| "alice@example.com".into()),
                country: (!deleted).then(|| "PT".into()),
                version,
                updated_at: (!deleted).then(Utc::now),
            },
            Utc::now(),
        )
    }

    #[test]
    fn updates_are_cached_as_the_api_profile_with_the_configured_ttls() {
        let event = event(EventType::UserUpdated, 4, true);
        let profile = profile_of(&event).unwrap();
        assert_eq!(
            (profile.id.as_str(), profile.email.as_str()),
            ("alice", "alice@example.com")
        );
        assert_eq!(profile.version, 4);
        let put = TTLS.cache_ttls().refresh(Some(profile), 4, 1000, 0.5);
        let json: serde_json::Value = serde_json::from_str(&put.entry.to_json().unwrap()).unwrap();
        assert_eq!(
            (json["v"].as_i64(), json["k"].as_str()),
            (Some(4), Some("p"))
        );
        assert!(json["p"]["updatedAt"].is_string());
        assert_eq!(json["soft"], 1000 + 3_600_000);
        assert_eq!(put.ttl, Duration::from_millis(3_600_000 + 60_000));
    }

    #[test]
    fn deletes_and_incomplete_snapshots_become_tombstone_markers() {
        for event in [
            event(EventType::UserDeleted, 5, true),
            event(EventType::UserUpdated, 5, false),
        ] {
            assert_eq!(profile_of(&event), None);
            let put = TTLS.cache_ttls().refresh(None, 5, 1000, 0.5);
            assert_eq!(put.entry, statecast_cache::Entry::marker(5));
            assert_eq!(put.ttl, Duration::from_millis(86_400_000));
        }
    }

    #[test]
    fn script_answers_map_to_outcomes() {
        assert_eq!(outcome_of(Written::Written), Outcome::Processed);
        assert_eq!(outcome_of(Written::SameVersion), Outcome::Duplicate);
        assert_eq!(outcome_of(Written::Older), Outcome::Stale);
    }
}
