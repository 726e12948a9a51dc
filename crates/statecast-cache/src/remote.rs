//! The Redis operations: read an entry, write one through the compare-and-set, the fill lock,
//! and what the API's fills, the API's invalidations and the consumer's refreshes write.
//!
//! Every command may run under a timeout ([`Cache::lazy`]): a dead Redis then costs a request
//! at most that, and the API's read path bypasses the cache.
//!
//! The same operations run on one Redis or a Redis Cluster ([`Connection`]). Scripts go as
//! `EVALSHA`, routed by their one key; a node that does not know the script (`NOSCRIPT`: a
//! restarted node, a replica promoted after a failover, `SCRIPT FLUSH`) gets it as `EVAL` on the
//! same node, which also caches it there, so no command ever depends on every node being up.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::conn::Connection;
use crate::entry::{Entry, Profile, after, jittered, key, lock_key, millis, now_ms};
use crate::near::{NearCache, Tier};
use crate::script::{CAS, OnEqual, UNLOCK, Written};
use crate::target::Target;
use crate::{Error, Result};

/// The lifetimes of what is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Freshness of a profile entry (each write gets ±10 % jitter).
    pub ttl: Duration,
    /// How long a profile entry stays servable as stale after that (Redis TTL = soft + grace).
    pub grace: Duration,
    /// Lifetime of a negative entry (the API's fills of unknown ids).
    pub negative: Duration,
    /// Lifetime of the fill lock.
    pub lock: Duration,
    /// Lifetime of an invalidation marker: for the API longer than any read that could still
    /// fill; for the consumer the delete tombstone (`CACHE_TOMBSTONE_TTL_SECONDS`).
    pub marker: Duration,
}

/// One entry write: the value, its Redis TTL and the equal-version rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The entry.
    pub entry: Entry,
    /// Its Redis TTL.
    pub ttl: Duration,
    /// What to do if the cache holds the same version.
    pub on_equal: OnEqual,
}

impl Ttls {
    /// A profile entry of `version`, fresh for the jittered TTL (`jitter` in [0, 1)), then
    /// servable as stale for the grace period.
    fn profile_put(
        &self,
        profile: Profile,
        version: i64,
        now_ms: i64,
        jitter: f64,
        delta: u64,
        on_equal: OnEqual,
    ) -> Put {
        let soft = jittered(self.ttl, jitter);
        Put {
            entry: Entry::profile(profile, version, after(now_ms, soft), delta),
            ttl: soft + self.grace,
            on_equal,
        }
    }

    /// What the API's fill of a load result writes: the profile, or a negative entry. An equal
    /// version is overwritten (a refresh renews the entry; the marker of the version loaded
    /// is replaced by its profile).
    pub fn fill(
        &self,
        profile: Option<Profile>,
        version: i64,
        now_ms: i64,
        jitter: f64,
        delta: u64,
    ) -> Put {
        match profile {
            Some(profile) => {
                self.profile_put(profile, version, now_ms, jitter, delta, OnEqual::Replace)
            }
            None => Put {
                entry: Entry::negative(version, after(now_ms, self.negative), delta),
                ttl: self.negative,
                on_equal: OnEqual::Replace,
            },
        }
    }

    /// The invalidation marker of a change at `version`: refuses fills of older versions while
    /// it lives, and is not rewritten by a repeated invalidation.
    pub fn invalidation(&self, version: i64) -> Put {
        Put {
            entry: Entry::marker(version),
            ttl: self.marker,
            on_equal: OnEqual::Refuse,
        }
    }

    /// What the consumer's refresh from an event writes: the profile of a create or update
    /// (replacing the API's marker of the same version, but not an equal profile: that is a
    /// redelivery), or for a delete (`None`) a marker kept for [`Ttls::marker`], so an older
    /// event arriving late cannot resurrect the profile.
    pub fn refresh(&self, profile: Option<Profile>, version: i64, now_ms: i64, jitter: f64) -> Put {
        match profile {
            Some(profile) => {
                self.profile_put(profile, version, now_ms, jitter, 0, OnEqual::ReplaceMarker)
            }
            None => self.invalidation(version),
        }
    }
}

/// The Redis client of the cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    conn: Connection,
    timeout: Option<Duration>,
    ttls: Ttls,
    cas: redis::Script,
    unlock: redis::Script,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("timeout", &self.timeout)
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A lazily connecting client (the API starts even when Redis is down), every command under
    /// `timeout`. `target` (one Redis, or a cluster; a [`redis::Client`] is one Redis) carries
    /// the URL and TLS settings.
    pub fn lazy(target: impl Into<Target>, timeout: Duration, ttls: Ttls) -> Result<Self> {
        let conn = Connection::lazy(&target.into(), timeout)?;
        Ok(Self::with_connection(conn, Some(timeout), ttls))
    }

    /// A client over a connection manager the caller built (and proved, e.g. at start).
    pub fn with_manager(conn: ConnectionManager, timeout: Option<Duration>, ttls: Ttls) -> Self {
        Self::with_connection(Connection::Single(conn), timeout, ttls)
    }

    /// A client over a connection (one Redis or a cluster) the caller built.
    pub fn with_connection(conn: Connection, timeout: Option<Duration>, ttls: Ttls) -> Self {
        Self {
            conn,
            timeout,
            ttls,
            cas: redis::Script::new(CAS),
            unlock: redis::Script::new(UNLOCK),
        }
    }

    /// The lifetimes this client writes with.
    pub fn ttls(&self) -> &Ttls {
        &self.ttls
    }

    async fn run<T, F>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        Ok(self.within(fut).await??)
    }

    /// Redis's answer, if it came within the timeout.
    async fn within<T, F>(&self, fut: F) -> Result<redis::RedisResult<T>>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| Error::Timeout),
            None => Ok(fut.await),
        }
    }

    /// Runs `script` (whose source is `source`) on its one key `key`: `EVALSHA`, and `EVAL` on
    /// the same node when that node does not know the script.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        source: &str,
        key: String,
        args: &[String],
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        let call = |command: &str, body: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(body).arg(1).arg(&key).arg(args);
            cmd
        };
        let first: redis::RedisResult<T> = self
            .within(call("EVALSHA", script.get_hash()).query_async(&mut conn))
            .await?;
        match first {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.run(call("EVAL", source).query_async(&mut conn)).await
            }
            other => Ok(other?),
        }
    }

    /// The entry of `id`, if any.
    #[tracing::instrument(name = "cache get", skip(self), fields(otel.kind = "client", db.system.name = "redis"))]
    pub async fn get(&self, id: &str) -> Result<Option<Entry>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .run(redis::cmd("GET").arg(key(id)).query_async(&mut conn))
            .await?;
        Ok(match raw {
            Some(raw) => Some(Entry::from_json(&raw)?),
            None => None,
        })
    }

    /// The entry of `id` through `near`: from the near cache if it holds a servable one, else
    /// from Redis, kept in the near cache unless an invalidation could have overtaken the read.
    pub async fn get_through(&self, near: &NearCache, id: &str) -> Result<(Option<Entry>, Tier)> {
        if near.holds(id)
            && near_servable(near).await
            && let Some(entry) = near.get(id, now_ms())
        {
            return Ok((Some(entry), Tier::Near));
        }
        let ticket = near.ticket(id);
        let entry = self.get(id).await?;
        if let Some(entry) = &entry {
            near.offer(id, entry, ticket, now_ms());
        }
        Ok((entry, Tier::Redis))
    }

    /// Writes `put` for `id` through the version compare-and-set.
    #[tracing::instrument(name = "redis compare-and-set", skip(self, put), fields(otel.kind = "client", db.system.name = "redis", version = put.entry.v))]
    pub async fn put(&self, id: &str, put: &Put) -> Result<Written> {
        let args = [
            put.entry.v.to_string(),
            put.entry.to_json()?,
            millis(put.ttl).to_string(),
            put.on_equal.arg().to_owned(),
        ];
        let answer: i64 = self.invoke(&self.cas, CAS, key(id), &args).await?;
        Ok(Written::from_answer(answer))
    }

    /// Caches a load result (`profile` at `version`; `None`: no such profile) unless the cache
    /// holds a newer version. `started` is when the load began (its duration is XFetch's delta).
    ///
    /// A load that began more than half an invalidation marker's lifetime ago is not cached: a
    /// write that committed after the load read the row left a marker that refuses this fill
    /// only while the marker lives, and once it has expired nothing would stop the older version
    /// from being served for a whole TTL. Returns whether the entry was written.
    #[tracing::instrument(name = "cache fill", skip(self, profile, started), fields(otel.kind = "client", db.system.name = "redis"))]
    pub async fn fill(
        &self,
        id: &str,
        profile: Option<Profile>,
        version: i64,
        started: Instant,
    ) -> Result<bool> {
        let took = started.elapsed();
        if took >= self.ttls.marker / 2 {
            tracing::debug!(?took, "load too old to cache");
            return Ok(false);
        }
        let delta = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let put = self
            .ttls
            .fill(profile, version, now_ms(), rand_unit(), delta);
        Ok(self.put(id, &put).await?.is_written())
    }

    /// Marks `id` as changed at `version`: readers miss, older fills are refused.
    #[tracing::instrument(name = "cache invalidate", skip(self), fields(otel.kind = "client", db.system.name = "redis"))]
    pub async fn invalidate(&self, id: &str, version: i64) -> Result<()> {
        self.put(id, &self.ttls.invalidation(version)).await?;
        Ok(())
    }

    /// Writes what an event says of `id`: `profile` at `version`, or (`None`) its deletion.
    pub async fn refresh(
        &self,
        id: &str,
        profile: Option<Profile>,
        version: i64,
    ) -> Result<Written> {
        let put = self.ttls.refresh(profile, version, now_ms(), rand_unit());
        self.put(id, &put).await
    }

    /// Tries to take the cross-replica fill lock of `id`; returns whether we got it.
    pub async fn try_lock(&self, id: &str, token: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let reply: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(lock_key(id))
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.ttls.lock))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(reply.is_some())
    }

    /// Whether anyone holds the fill lock of `id` (it disappears when released or expired).
    pub async fn is_locked(&self, id: &str) -> Result<bool> {
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

    /// Releases the fill lock of `id` if `token` still holds it.
    pub async fn unlock(&self, id: &str, token: &str) -> Result<()> {
        let _: i64 = self
            .invoke(&self.unlock, UNLOCK, lock_key(id), &[token.to_owned()])
            .await?;
        Ok(())
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = self.run(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}

/// Uniform in [0, 1), for jitter.
fn rand_unit() -> f64 {
    rand::random::<f64>()
}

/// How many times a near hit waits for the tracking connections to settle before Redis answers
/// instead: each wait is one `yield_now`, which lets the connection's driver apply what it has
/// (on a busy replica, another replica's writes keep pushes arriving).
const SETTLE_TRIES: usize = 3;

/// Whether a near hit may be served now. Over plain TCP the tracking sockets say whether an
/// invalidation Redis wrote in the same event-loop turn as a writer's reply may still wait
/// unapplied (unread, or being handled): the hit waits for them to settle, a few yields at most,
/// and otherwise Redis answers the read. Under TLS there is no such check: the hit is served
/// after one `yield_now` (which defers this task until the runtime has polled its I/O driver,
/// waking the tracking reader first), which narrows the window without closing it.
async fn near_servable(near: &NearCache) -> bool {
    for _ in 0..SETTLE_TRIES {
        match near.settled() {
            Some(true) => return true,
            Some(false) => tokio::task::yield_now().await,
            None => {
                tokio::task::yield_now().await;
                return true;
            }
        }
    }
    near.settled() == Some(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
