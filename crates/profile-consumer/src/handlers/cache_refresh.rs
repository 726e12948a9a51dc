//! `cache-refresh`: keeps the Profile API's cache entry `profile:{id}` in step with the events,
//! so reads after a change are served from the cache without a database round trip.
//!
//! # Value format (shared with `crates/profile-api/src/cache.rs`)
//! `profile:{id}` holds JSON `{"v": version, "k": kind, "p": profile?, "soft": unix ms,
//! "delta": ms}`:
//! - create/update: `k = "p"` with `p = {"id","name","email","country","version","updatedAt"}`
//!   (the API's `GET` body, taken from the event's snapshot), `soft = now + CACHE_TTL_SECONDS`
//!   (±10 % jitter, like the API), Redis TTL = soft TTL + `CACHE_STALE_GRACE_SECONDS`;
//! - delete: `k = "i"` — the API's invalidation marker — at the delete's version, kept for
//!   `CACHE_TOMBSTONE_TTL_SECONDS`: readers miss and load from PostgreSQL (and the API caches its
//!   own negative entry), while an older event arriving late cannot resurrect the profile.
//!   A snapshot missing a field the API's profile requires is written as a marker too.
//!
//! # Dedup and order
//! One atomic compare in a Lua script on the cached `v`: newer is written (`processed`); equal is
//! a redelivery or a value the API filled itself (`duplicate`) — except that a profile replaces
//! an invalidation marker of its own version, as the API's fills do; older is `stale`. No
//! `processed_event` table is needed: the compare makes every replay a no-op.

use chrono::{DateTime, Utc};
use redis::Script;
use redis::aio::ConnectionManager;
use serde::Serialize;
use statecast_events::{EventType, ProfileEvent};

use super::{Delivery, HandlerError, Outcome};

/// Compare and write. KEYS: entry. ARGV: version, value, "1" when the value is a profile (it
/// may replace an invalidation marker of the same version), TTL in milliseconds.
/// Returns 1 written, 0 same version, -1 older.
const SCRIPT: &str = r"
local incoming = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, d = pcall(cjson.decode, cur)
  if ok and type(d) == 'table' and tonumber(d.v) ~= nil then
    local have = tonumber(d.v)
    if have > incoming then return -1 end
    if have == incoming and not (ARGV[3] == '1' and d.k == 'i') then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
return 1
";

/// The cache entry key of a user (the API's key).
pub fn cache_key(user_id: &str) -> String {
    format!("profile:{user_id}")
}

/// What the script's answer means.
pub fn outcome_of(answer: i64) -> Outcome {
    match answer {
        1 => Outcome::Processed,
        0 => Outcome::Duplicate,
        _ => Outcome::Stale,
    }
}

/// The API's cached profile (`crates/profile-api/src/model.rs` `Profile`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CachedProfile<'a> {
    id: &'a str,
    name: &'a str,
    email: &'a str,
    country: &'a str,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// The API's cache entry (`crates/profile-api/src/cache.rs` `Entry`).
#[derive(Debug, Serialize)]
struct Entry<'a> {
    v: i64,
    k: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<CachedProfile<'a>>,
    soft: i64,
    delta: u64,
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

/// The value to write for `event`, whether it is a profile, and its Redis TTL in milliseconds.
/// `jitter` is uniform in [0, 1).
pub fn entry_for(
    event: &ProfileEvent,
    ttls: CacheTtls,
    now_ms: i64,
    jitter: f64,
) -> (String, bool, u64) {
    let data = &event.data;
    let profile = match (
        event.event_type,
        &data.name,
        &data.email,
        &data.country,
        data.updated_at,
    ) {
        (EventType::UserDeleted, ..) => None,
        (_, Some(name), Some(email), Some(country), Some(updated_at)) => Some(CachedProfile {
            id: &data.id,
            name,
            email,
            country,
            version: data.version,
            updated_at,
        }),
        _ => None,
    };
    let is_profile = profile.is_some();
    let (entry, ttl_ms) = if is_profile {
        let soft_ms = (ttls.ttl_ms as f64 * (0.9 + 0.2 * jitter.clamp(0.0, 1.0))) as u64;
        let entry = Entry {
            v: event.profileversion,
            k: "p",
            p: profile,
            soft: now_ms.saturating_add(i64::try_from(soft_ms).unwrap_or(i64::MAX / 2)),
            delta: 0,
        };
        (entry, soft_ms.saturating_add(ttls.grace_ms))
    } else {
        let entry = Entry {
            v: event.profileversion,
            k: "i",
            p: None,
            soft: 0,
            delta: 0,
        };
        (entry, ttls.tombstone_ms)
    };
    // Plain structs of strings and numbers always serialize.
    let value = serde_json::to_string(&entry).unwrap_or_default();
    (value, is_profile, ttl_ms.max(1))
}

/// The cache-refresh handler.
#[derive(Clone)]
pub struct CacheRefresh {
    redis: ConnectionManager,
    script: Script,
    ttls: CacheTtls,
}

impl std::fmt::Debug for CacheRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRefresh")
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

impl CacheRefresh {
    /// Connects `client` (from `REDIS_URL` and `REDIS_CA_FILE`, TLS included).
    pub async fn connect(client: redis::Client, ttls: CacheTtls) -> Result<Self, crate::Error> {
        let redis = crate::connect::redis_manager(client).await?;
        Ok(Self {
            redis,
            script: Script::new(SCRIPT),
            ttls,
        })
    }

    /// Writes `profile:{id}` if the event is newer than what is cached.
    #[tracing::instrument(name = "cache-refresh", skip_all, fields(event.id = %delivery.event.id), err)]
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        let event = delivery.event;
        let (value, is_profile, ttl_ms) = entry_for(
            event,
            self.ttls,
            Utc::now().timestamp_millis(),
            rand::random::<f64>(),
        );
        self.write(
            &event.subject,
            event.profileversion,
            value,
            is_profile,
            ttl_ms,
        )
        .await
    }

    #[tracing::instrument(name = "redis compare-and-set", skip(self, value), fields(otel.kind = "client", db.system.name = "redis"), err)]
    async fn write(
        &self,
        user_id: &str,
        version: i64,
        value: String,
        is_profile: bool,
        ttl_ms: u64,
    ) -> Result<Outcome, HandlerError> {
        let mut redis = self.redis.clone();
        let answer: i64 = self
            .script
            .key(cache_key(user_id))
            .arg(version)
            .arg(value)
            .arg(if is_profile { "1" } else { "0" })
            .arg(ttl_ms)
            .invoke_async(&mut redis)
            .await?;
        Ok(outcome_of(answer))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
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
    fn updates_are_cached_in_the_api_entry_format() {
        let (value, is_profile, ttl) =
            entry_for(&event(EventType::UserUpdated, 4, true), TTLS, 1000, 0.5);
        let json: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert!(is_profile);
        assert_eq!(json["v"], 4);
        assert_eq!(json["k"], "p");
        assert_eq!(json["p"]["id"], "alice");
        assert_eq!(json["p"]["email"], "alice@example.com");
        assert_eq!(json["p"]["version"], 4);
        assert!(json["p"]["updatedAt"].is_string());
        assert_eq!(json["soft"], 1000 + 3_600_000);
        assert_eq!(ttl, 3_600_000 + 60_000);
    }

    #[test]
    fn deletes_and_incomplete_snapshots_become_invalidation_markers() {
        for event in [
            event(EventType::UserDeleted, 5, true),
            event(EventType::UserUpdated, 5, false),
        ] {
            let (value, is_profile, ttl) = entry_for(&event, TTLS, 1000, 0.5);
            let json: serde_json::Value = serde_json::from_str(&value).unwrap();
            assert!(!is_profile);
            assert_eq!(
                (json["v"].as_i64(), json["k"].as_str()),
                (Some(5), Some("i"))
            );
            assert!(json.get("p").is_none());
            assert_eq!(ttl, 86_400_000);
        }
    }

    #[test]
    fn script_answers_map_to_outcomes() {
        assert_eq!(cache_key("alice"), "profile:alice");
        assert_eq!(outcome_of(1), Outcome::Processed);
        assert_eq!(outcome_of(0), Outcome::Duplicate);
        assert_eq!(outcome_of(-1), Outcome::Stale);
    }
}
