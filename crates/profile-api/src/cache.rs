//! The Redis side of the read path: entry format, atomic fills and invalidations, the
//! cross-replica fill lock, and the pure decisions (TTL jitter, XFetch).
//!
//! Key `profile:{id}` holds JSON `{"v": version, "k": kind, "p": profile?, "soft": ms, "delta": ms}`:
//! - `k = "p"`: a profile, fresh until `soft` (unix ms), servable as stale for a grace period
//!   after (the Redis TTL is soft TTL + grace);
//! - `k = "n"`: no such profile (negative entry, short TTL);
//! - `k = "i"`: invalidated at version `v` by a write; reads treat it as a miss.
//!
//! Versions never go backwards in the cache: [`CAS_SCRIPT`] only writes when the cached version is
//! lower (or equal, for fills), so a slow fill from a read that started before a write committed
//! can never replace the write's invalidation marker or a newer entry. The marker itself expires,
//! so [`Cache::fill`] also drops results of loads older than half its lifetime.
//!
//! Every command runs under a short timeout: a dead Redis costs a request at most that, and the
//! read path then bypasses the cache.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::model::Profile;
use crate::store::Loaded;

/// Compare-and-set on the cached version. KEYS[1] = key; ARGV = version, value, ttl ms,
/// "1" to refuse an equal version (invalidation) or "0" to allow it (fill).
const CAS_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, d = pcall(cjson.decode, cur)
  if ok and type(d) == 'table' and tonumber(d.v) ~= nil then
    local have, want = tonumber(d.v), tonumber(ARGV[1])
    if have > want or (have == want and ARGV[4] == '1') then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Deletes the lock only if we still own it.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Redis failures; the read path treats them all as "cache unavailable".
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The command did not finish within the Redis timeout.
    #[error("redis timed out")]
    Timeout,
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A cached value is not an entry.
    #[error("bad cache entry: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Kind of a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A profile.
    #[serde(rename = "p")]
    Profile,
    /// No such profile.
    #[serde(rename = "n")]
    Negative,
    /// Invalidated by a write at version `v`.
    #[serde(rename = "i")]
    Invalidated,
}

/// A cached value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Version of the profile (or of the delete / write that invalidated it).
    pub(crate) v: i64,
    /// What the entry says.
    pub(crate) k: Kind,
    /// The profile, for `k = "p"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) p: Option<Profile>,
    /// Soft expiry, unix milliseconds.
    #[serde(default)]
    pub(crate) soft: i64,
    /// How long the load that produced it took, milliseconds (XFetch's delta).
    #[serde(default)]
    pub(crate) delta: u64,
}

impl Entry {
    /// The read result the entry stands for.
    pub(crate) fn loaded(&self) -> Loaded {
        Loaded {
            profile: self.p.clone(),
            version: self.v,
        }
    }

    /// Fresh: a profile or negative entry before its soft expiry.
    pub(crate) fn is_fresh(&self, now_ms: i64) -> bool {
        self.k != Kind::Invalidated && now_ms < self.soft
    }

    /// Servable: fresh, or a profile within its grace period (the key still exists).
    pub(crate) fn is_servable(&self, now_ms: i64) -> bool {
        self.is_fresh(now_ms) || self.k == Kind::Profile
    }
}

/// TTL with ±10 % jitter, so entries filled together do not expire together. `r` in [0, 1).
pub(crate) fn jittered(ttl: Duration, r: f64) -> Duration {
    ttl.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh early when
/// `now - delta * beta * ln(r) >= expiry`, `r` uniform in (0, 1]. Slow-to-compute entries and
/// entries close to expiry are refreshed earlier, by one request rather than all at once.
pub(crate) fn xfetch_due(now_ms: i64, expiry_ms: i64, delta_ms: u64, beta: f64, r: f64) -> bool {
    let r = r.clamp(f64::MIN_POSITIVE, 1.0);
    now_ms as f64 - delta_ms as f64 * beta * r.ln() >= expiry_ms as f64
}

/// Current time, unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// TTLs the cache applies.
#[derive(Debug, Clone)]
pub(crate) struct CacheTtls {
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) negative: Duration,
    pub(crate) lock: Duration,
    /// How long an invalidation marker lives: longer than any read that could still fill.
    pub(crate) marker: Duration,
}

/// The Redis cache client.
#[derive(Clone)]
pub(crate) struct Cache {
    conn: ConnectionManager,
    timeout: Duration,
    ttls: CacheTtls,
    cas: redis::Script,
    unlock: redis::Script,
}

fn key(id: &str) -> String {
    format!("profile:{id}")
}

fn lock_key(id: &str) -> String {
    format!("lock:profile:{id}")
}

impl Cache {
    /// A lazily connecting client: the API starts even when Redis is down. `client` comes
    /// from `connect::redis_client` (URL, TLS).
    pub(crate) fn new(
        client: redis::Client,
        timeout: Duration,
        ttls: CacheTtls,
    ) -> Result<Self, CacheError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            timeout,
            ttls,
            cas: redis::Script::new(CAS_SCRIPT),
            unlock: redis::Script::new(UNLOCK_SCRIPT),
        })
    }

    async fn run<T, F>(&self, fut: F) -> Result<T, CacheError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CacheError::Timeout),
        }
    }

    /// The entry for `id`, if any.
    #[tracing::instrument(name = "cache get", skip(self), fields(otel.kind = "client", db.system.name = "redis"))]
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Entry>, CacheError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .run(redis::cmd("GET").arg(key(id)).query_async(&mut conn))
            .await?;
        Ok(match raw {
            Some(raw) => Some(serde_json::from_str(&raw)?),
            None => None,
        })
    }

    async fn cas(
        &self,
        id: &str,
        entry: &Entry,
        ttl: Duration,
        refuse_equal: bool,
    ) -> Result<bool, CacheError> {
        let value = serde_json::to_string(entry)?;
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let written: i64 = self
            .run(
                self.cas
                    .key(key(id))
                    .arg(entry.v)
                    .arg(value)
                    .arg(ttl_ms)
                    .arg(if refuse_equal { "1" } else { "0" })
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(written == 1)
    }

    /// Caches a load result unless the cache already holds a newer version. `started` is when
    /// the load began (its duration is XFetch's delta).
    ///
    /// A load that began more than half an invalidation marker's lifetime ago is not cached: a
    /// write that committed after the load read the row left a marker that refuses this fill
    /// only while the marker lives, and once it has expired nothing would stop the older version
    /// from being served for a whole TTL. Returns whether the entry was written.
    #[tracing::instrument(name = "cache fill", skip(self, loaded, started), fields(otel.kind = "client", db.system.name = "redis"))]
    pub(crate) async fn fill(
        &self,
        id: &str,
        loaded: &Loaded,
        started: Instant,
    ) -> Result<bool, CacheError> {
        let took = started.elapsed();
        if took >= self.ttls.marker / 2 {
            tracing::debug!(?took, "load too old to cache");
            return Ok(false);
        }
        let delta = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let (entry, ttl) = match &loaded.profile {
            Some(profile) => {
                let soft = jittered(self.ttls.ttl, rand::random::<f64>());
                let entry = Entry {
                    v: loaded.version,
                    k: Kind::Profile,
                    p: Some(profile.clone()),
                    soft: now_ms() + i64::try_from(soft.as_millis()).unwrap_or(i64::MAX / 2),
                    delta,
                };
                (entry, soft + self.ttls.grace)
            }
            None => {
                let ttl = self.ttls.negative;
                let entry = Entry {
                    v: loaded.version,
                    k: Kind::Negative,
                    p: None,
                    soft: now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
                    delta,
                };
                (entry, ttl)
            }
        };
        self.cas(id, &entry, ttl, false).await
    }

    /// Marks `id` as changed at `version`: readers miss, older fills are refused.
    #[tracing::instrument(name = "cache invalidate", skip(self), fields(otel.kind = "client", db.system.name = "redis"))]
    pub(crate) async fn invalidate(&self, id: &str, version: i64) -> Result<(), CacheError> {
        let marker = Entry {
            v: version,
            k: Kind::Invalidated,
            p: None,
            soft: 0,
            delta: 0,
        };
        self.cas(id, &marker, self.ttls.marker, true).await?;
        Ok(())
    }

    /// Tries to take the cross-replica fill lock for `id`; returns whether we got it.
    pub(crate) async fn try_lock(&self, id: &str, token: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(self.ttls.lock.as_millis()).unwrap_or(2000);
        let reply: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(lock_key(id))
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(reply.is_some())
    }

    /// Whether anyone holds the fill lock of `id` (it disappears when released or expired).
    pub(crate) async fn is_locked(&self, id: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        let exists: i64 = self
            .run(
                redis::cmd("EXISTS")
                    .arg(lock_key(id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(exists == 1)
    }

    /// Releases the lock if we still hold it.
    pub(crate) async fn unlock(&self, id: &str, token: &str) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .run(
                self.unlock
                    .key(lock_key(id))
                    .arg(token)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Whether Redis answers.
    pub(crate) async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: String = self.run(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let ttl = Duration::from_secs(3600);
        assert_eq!(jittered(ttl, 0.0), Duration::from_secs(3240));
        assert!(jittered(ttl, 0.999_999) <= Duration::from_secs(3960));
        for _ in 0..1000 {
            let d = jittered(ttl, rand::random::<f64>());
            assert!(d >= Duration::from_secs(3240) && d <= Duration::from_secs(3960));
        }
    }

    #[test]
    fn xfetch_refreshes_early_only_near_expiry_and_more_for_slow_loads() {
        let expiry = 100_000;
        // r = 1 → ln(r) = 0: only at expiry itself.
        assert!(!xfetch_due(99_999, expiry, 1_000, 1.0, 1.0));
        assert!(xfetch_due(100_000, expiry, 1_000, 1.0, 1.0));
        // r = e^-1 → shift by delta * beta: due one delta before expiry.
        let r = (-1.0f64).exp();
        assert!(xfetch_due(99_000, expiry, 1_000, 1.0, r));
        assert!(!xfetch_due(98_900, expiry, 1_000, 1.0, r));
        // A slower load (bigger delta) or bigger beta refreshes earlier.
        assert!(xfetch_due(98_000, expiry, 2_000, 1.0, r));
        assert!(xfetch_due(98_000, expiry, 1_000, 2.0, r));
        // Far from expiry: practically never.
        let due = (0..10_000)
            .filter(|_| xfetch_due(0, expiry, 10, 1.0, 1.0 - rand::random::<f64>()))
            .count();
        assert_eq!(due, 0);
        // r = 0 is clamped to a finite shift rather than an infinite one.
        assert!(!xfetch_due(0, expiry, 10, 1.0, 0.0));
    }

    /// A client of the real Redis (`REDIS_URL`) whose invalidation markers live `marker`.
    fn real_cache(marker: Duration) -> Cache {
        let url = std::env::var("REDIS_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        let ttls = CacheTtls {
            ttl: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            negative: Duration::from_secs(30),
            lock: Duration::from_secs(2),
            marker,
        };
        Cache::new(
            redis::Client::open(url).unwrap(),
            Duration::from_secs(2),
            ttls,
        )
        .unwrap()
    }

    fn profile(id: &str, version: i64) -> Loaded {
        Loaded {
            profile: Some(Profile {
                id: id.to_owned(),
                name: format!("v{version}"),
                email: "someone@example.com".to_owned(),
                country: "PT".to_owned(),
                version,
                updated_at: chrono::Utc::now(),
            }),
            version,
        }
    }

    fn unique_id() -> String {
        format!("cas-{}", uuid::Uuid::now_v7().simple())
    }

    #[tokio::test]
    async fn a_fill_of_an_older_version_after_an_invalidation_is_refused_by_redis() {
        let cache = real_cache(Duration::from_secs(30));
        let id = unique_id();
        assert!(
            cache
                .fill(&id, &profile(&id, 1), Instant::now())
                .await
                .unwrap()
        );
        cache.invalidate(&id, 2).await.unwrap();
        // A read that loaded version 1 before version 2 committed fills late: refused.
        let started = Instant::now();
        assert!(!cache.fill(&id, &profile(&id, 1), started).await.unwrap());
        let entry = cache.get(&id).await.unwrap().unwrap();
        assert_eq!((entry.k, entry.v), (Kind::Invalidated, 2));
        // The committed version itself may fill; after it, neither an older fill nor a repeated
        // or older invalidation changes the entry.
        assert!(cache.fill(&id, &profile(&id, 2), started).await.unwrap());
        assert!(!cache.fill(&id, &profile(&id, 1), started).await.unwrap());
        cache.invalidate(&id, 1).await.unwrap();
        cache.invalidate(&id, 2).await.unwrap();
        let entry = cache.get(&id).await.unwrap().unwrap();
        assert_eq!((entry.k, entry.v), (Kind::Profile, 2));
        // A newer invalidation wins over the fill.
        cache.invalidate(&id, 3).await.unwrap();
        let entry = cache.get(&id).await.unwrap().unwrap();
        assert_eq!((entry.k, entry.v), (Kind::Invalidated, 3));
    }

    #[tokio::test]
    async fn a_fill_from_a_load_older_than_the_marker_is_refused_after_the_marker_expired() {
        let cache = real_cache(Duration::from_millis(400));
        let id = unique_id();
        // The load reads version 1, then version 2 commits and invalidates...
        let started = Instant::now();
        cache.invalidate(&id, 2).await.unwrap();
        // ... and the load's fill comes only after the marker has expired.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(cache.get(&id).await.unwrap(), None, "the marker expired");
        assert!(!cache.fill(&id, &profile(&id, 1), started).await.unwrap());
        assert_eq!(
            cache.get(&id).await.unwrap(),
            None,
            "version 1 must not be cached once nothing refuses it"
        );
    }

    #[test]
    fn entries_round_trip_and_know_freshness() {
        let entry = Entry {
            v: 3,
            k: Kind::Negative,
            p: None,
            soft: 1_000,
            delta: 5,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains("\"k\":\"n\""), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), entry);
        assert!(entry.is_fresh(999) && !entry.is_fresh(1_000));
        assert!(!entry.is_servable(1_000));
        let marker = Entry {
            k: Kind::Invalidated,
            ..entry
        };
        assert!(!marker.is_fresh(0) && !marker.is_servable(0));
    }
}
