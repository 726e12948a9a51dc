//! `cache-refresh`: keeps the Profile API's cache entry `profile:{id}` in step with the events,
//! so reads after a change see it without waiting for the TTL.
//!
//! The value is the JSON the API's `GET /v1/profiles/{id}` returns — the event's snapshot,
//! `{"id","name","email","country","version","updatedAt"}` — written with `SET .. EX
//! CACHE_TTL_SECONDS`. On `UserDeleted` the entry is removed and a tombstone
//! `profile:{id}:tombstone` holding the delete's version is kept for
//! `CACHE_TOMBSTONE_TTL_SECONDS`, so an older event arriving late cannot resurrect the profile.
//!
//! Dedup and order are one atomic compare in a Lua script: the incoming version is compared
//! with the higher of the cached entry's `version` and the tombstone's. Newer is written
//! (`processed`), equal is a redelivery or a value the API already cached (`duplicate`), older is
//! `stale`. No `processed_event` table is needed: the compare makes every replay a no-op.

use redis::Script;
use redis::aio::ConnectionManager;
use statecast_events::EventType;

use super::{Delivery, HandlerError, Outcome};

/// Atomic version compare and write. KEYS: entry, tombstone. ARGV: version, value (empty for a
/// delete), entry TTL, tombstone TTL. Returns 1 written, 0 same version, -1 older.
const SCRIPT: &str = r"
local incoming = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[2]) or '')
local cached = redis.call('GET', KEYS[1])
if cached then
  local ok, value = pcall(cjson.decode, cached)
  if ok and type(value) == 'table' and tonumber(value['version']) then
    local version = tonumber(value['version'])
    if current == nil or version > current then current = version end
  end
end
if current ~= nil then
  if incoming == current then return 0 end
  if incoming < current then return -1 end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
end
return 1
";

/// The cache entry key of a user.
pub fn cache_key(user_id: &str) -> String {
    format!("profile:{user_id}")
}

/// The tombstone key of a deleted user.
pub fn tombstone_key(user_id: &str) -> String {
    format!("profile:{user_id}:tombstone")
}

/// What the script's answer means.
pub fn outcome_of(answer: i64) -> Outcome {
    match answer {
        1 => Outcome::Processed,
        0 => Outcome::Duplicate,
        _ => Outcome::Stale,
    }
}

/// The cache-refresh handler.
#[derive(Clone)]
pub struct CacheRefresh {
    redis: ConnectionManager,
    script: Script,
    ttl_seconds: u64,
    tombstone_ttl_seconds: u64,
}

impl std::fmt::Debug for CacheRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRefresh")
            .field("ttl_seconds", &self.ttl_seconds)
            .field("tombstone_ttl_seconds", &self.tombstone_ttl_seconds)
            .finish_non_exhaustive()
    }
}

impl CacheRefresh {
    /// Connects to Redis at `url`.
    pub async fn connect(
        url: &str,
        ttl_seconds: u64,
        tombstone_ttl_seconds: u64,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let redis = ConnectionManager::new(client).await?;
        Ok(Self {
            redis,
            script: Script::new(SCRIPT),
            ttl_seconds: ttl_seconds.max(1),
            tombstone_ttl_seconds: tombstone_ttl_seconds.max(1),
        })
    }

    /// Writes (or deletes) `profile:{id}` if the event is newer than what is cached.
    #[tracing::instrument(name = "cache-refresh", skip_all, fields(event.id = %delivery.event.id), err)]
    pub async fn handle(&self, delivery: Delivery<'_>) -> Result<Outcome, HandlerError> {
        let event = delivery.event;
        let value = match event.event_type {
            EventType::UserDeleted => String::new(),
            EventType::UserCreated | EventType::UserUpdated => serde_json::to_string(&event.data)
                .map_err(|e| {
                HandlerError::Rejected(format!("snapshot not serializable: {e}"))
            })?,
        };
        let mut redis = self.redis.clone();
        let answer: i64 = self
            .script
            .key(cache_key(&event.subject))
            .key(tombstone_key(&event.subject))
            .arg(event.profileversion)
            .arg(value)
            .arg(self.ttl_seconds)
            .arg(self.tombstone_ttl_seconds)
            .invoke_async(&mut redis)
            .await?;
        Ok(outcome_of(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_script_answers() {
        assert_eq!(cache_key("alice"), "profile:alice");
        assert_eq!(tombstone_key("alice"), "profile:alice:tombstone");
        assert_eq!(outcome_of(1), Outcome::Processed);
        assert_eq!(outcome_of(0), Outcome::Duplicate);
        assert_eq!(outcome_of(-1), Outcome::Stale);
    }
}
