//! The read path, in one place: Redis first, PostgreSQL on a miss, then a fill. Stampede
//! protection has five parts:
//! 1. coalescing: one load per key in flight per replica ([`Inflight`]);
//! 2. a short Redis lock (`SET NX PX`) so one replica loads while the others poll the cache for
//!    as long as the lock lives (then one of them takes the lock over), serving what the cache
//!    holds as soon as it is servable;
//! 3. XFetch probabilistic early refresh (see [`statecast_cache::xfetch_due`]);
//! 4. stale-while-revalidate: past its soft expiry an entry is served as `stale` for a grace
//!    period while one background refresh runs;
//! 5. negative entries for unknown ids (superseded by a write's invalidation).
//!
//! Freshness: a write removes its key from [`Inflight`] after commit, so later readers never join
//! a load that started before it, and its invalidation marker carries the new version: a reader
//! that saw a marker at version N refuses any coalesced result older than N and reloads.
//! Redis errors never fail a read: it falls back to PostgreSQL with `x-cache: bypass`; so does a
//! read of an id whose invalidation could not reach Redis yet (see `AppState::after_write`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use statecast_cache::{Kind, Tier, now_ms, xfetch_due};
use tracing::Instrument;

use crate::AppState;
use crate::metrics::CacheResult;
use crate::store::{self, Loaded, StoreError};

/// Pause between looks at the cache while another replica holds the fill lock.
const LOCK_POLL_PAUSE: Duration = Duration::from_millis(20);
/// A replica waits for other replicas' fills at most this many lock lifetimes in all, then loads
/// itself: a lock expires after one lifetime, so this only ends waits behind a chain of holders
/// that all died or whose loads all outlived their locks.
const LOCK_WAIT_LIFETIMES: u32 = 2;

type SharedLoad = Shared<BoxFuture<'static, Result<Option<Loaded>, StoreError>>>;

/// Loads in flight on this replica, by mode and id.
#[derive(Default)]
pub(crate) struct Inflight {
    loads: Mutex<HashMap<(Mode, String), (u64, SharedLoad)>>,
    next: AtomicU64,
}

impl Inflight {
    /// Forgets the loads of `id` so later readers start fresh ones (called after a write).
    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut loads) = self.loads.lock() {
            for mode in [Mode::Fill, Mode::Bypass, Mode::Refresh] {
                loads.remove(&(mode, id.to_owned()));
            }
        }
    }

    fn finish(&self, key: &(Mode, String), load_id: u64) {
        if let Ok(mut loads) = self.loads.lock()
            && loads.get(key).is_some_and(|(id, _)| *id == load_id)
        {
            loads.remove(key);
        }
    }
}

/// What the shared load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Cache miss: lock, load, fill.
    Fill,
    /// Redis down: load only.
    Bypass,
    /// Background refresh of a stale or XFetch-due entry; skipped if another replica holds the lock.
    Refresh,
}

/// A profile read and how it was answered.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) loaded: Loaded,
    pub(crate) result: CacheResult,
    /// The cache tier whose entry answered (`None`: loaded from PostgreSQL).
    pub(crate) tier: Option<Tier>,
}

/// Reads profile `id` through the cache.
#[tracing::instrument(name = "read profile", skip(state))]
pub(crate) async fn get(state: &Arc<AppState>, id: &str) -> Result<Read, StoreError> {
    let now = now_ms();
    // `None`: skip the cache (an invalidation of this id has not reached Redis yet).
    let cached = if state.is_dirty(id) {
        None
    } else {
        Some(match &state.near {
            Some(near) => state.cache.get_through(near, id).await,
            None => state.cache.get(id).await.map(|entry| (entry, Tier::Redis)),
        })
    };
    let mut read = match cached {
        None | Some(Err(_)) => {
            if let Some(Err(error)) = &cached {
                tracing::debug!(%error, "cache unavailable, bypassing");
            }
            let loaded = required(shared(state, id, Mode::Bypass).await?)?;
            Read {
                loaded,
                result: CacheResult::Bypass,
                tier: None,
            }
        }
        Some(Ok((None, _))) => miss(state, id, 0).await?,
        Some(Ok((Some(entry), tier))) => match entry.k {
            Kind::Invalidated => miss(state, id, entry.v).await?,
            Kind::Profile | Kind::Negative if entry.is_fresh(now) => {
                let r = 1.0 - rand::random::<f64>();
                if entry.k == Kind::Profile
                    && xfetch_due(
                        now,
                        entry.soft,
                        entry.delta,
                        state.config.cache_xfetch_beta,
                        r,
                    )
                {
                    refresh_in_background(state, id);
                }
                let result = if entry.k == Kind::Profile {
                    CacheResult::Hit
                } else {
                    CacheResult::Negative
                };
                Read {
                    loaded: Loaded::from(&entry),
                    result,
                    tier: Some(tier),
                }
            }
            Kind::Profile => {
                refresh_in_background(state, id);
                Read {
                    loaded: Loaded::from(&entry),
                    result: CacheResult::Stale,
                    tier: Some(tier),
                }
            }
            Kind::Negative => miss(state, id, entry.v).await?,
        },
    };
    if let Some(near) = &state.near {
        // Never older than what this replica served already: an older answer (a coalesced load
        // that began before, an entry older than the mark) is read again from PostgreSQL.
        if read.loaded.version < near.high_water(id) {
            near.invalidate(id);
            read = Read {
                loaded: db_load(state, id).await?,
                result: CacheResult::Miss,
                tier: None,
            };
        }
        near.observe(id, read.loaded.version);
    }
    state.metrics.cache_lookup(read.result, read.tier);
    Ok(read)
}

/// A miss: join or start the shared load; if it is older than what the cache already told us
/// exists (`min_version`), load again directly.
async fn miss(state: &Arc<AppState>, id: &str, min_version: i64) -> Result<Read, StoreError> {
    let mut loaded = required(shared(state, id, Mode::Fill).await?)?;
    if loaded.version < min_version {
        loaded = db_load(state, id).await?;
    }
    Ok(Read {
        loaded,
        result: CacheResult::Miss,
        tier: None,
    })
}

fn required(loaded: Option<Loaded>) -> Result<Loaded, StoreError> {
    loaded.ok_or_else(|| StoreError::Internal("shared load returned nothing".to_owned()))
}

fn refresh_in_background(state: &Arc<AppState>, id: &str) {
    let state = state.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        if let Err(error) = shared(&state, &id, Mode::Refresh).await {
            tracing::debug!(%error, "background refresh failed");
        }
    });
}

/// Joins the load of `(mode, id)` in flight on this replica, or starts one. The load runs in its
/// own task so a caller that goes away does not cancel it for the others.
async fn shared(state: &Arc<AppState>, id: &str, mode: Mode) -> Result<Option<Loaded>, StoreError> {
    let key = (mode, id.to_owned());
    let load = {
        let mut loads = state
            .inflight
            .loads
            .lock()
            .map_err(|_| StoreError::Internal("in-flight map poisoned".to_owned()))?;
        match loads.get(&key) {
            Some((_, load)) => load.clone(),
            None => {
                let load_id = state.inflight.next.fetch_add(1, Ordering::Relaxed);
                let task_state = state.clone();
                let task_key = key.clone();
                let task = tokio::spawn(
                    async move {
                        let result = lead(&task_state, &task_key.1, task_key.0).await;
                        task_state.inflight.finish(&task_key, load_id);
                        result
                    }
                    .instrument(tracing::Span::current()),
                );
                let load = async move {
                    task.await
                        .unwrap_or_else(|e| Err(StoreError::Internal(format!("load task: {e}"))))
                }
                .boxed()
                .shared();
                loads.insert(key, (load_id, load.clone()));
                load
            }
        }
    };
    load.await
}

/// The one load of a key on this replica.
async fn lead(state: &Arc<AppState>, id: &str, mode: Mode) -> Result<Option<Loaded>, StoreError> {
    if mode == Mode::Bypass {
        return db_load(state, id).await.map(Some);
    }
    let token = uuid::Uuid::now_v7().to_string();
    let give_up = Instant::now() + state.config.lock_ttl() * LOCK_WAIT_LIFETIMES;
    let locked = loop {
        match state.cache.try_lock(id, &token).await {
            Ok(true) => break true,
            // Another replica is refreshing it already.
            Ok(false) if mode == Mode::Refresh => return Ok(None),
            Ok(false) => {}
            // Redis just went away: answer from PostgreSQL, skip the fill.
            Err(_) => return db_load(state, id).await.map(Some),
        }
        // Another replica is loading: wait for its fill as long as its lock lives.
        match wait_for_fill(state, id, give_up).await {
            Waited::Filled(loaded) => return Ok(Some(loaded)),
            // Released or expired without a servable fill: one of the waiters takes it over.
            Waited::LockGone => {}
            Waited::GaveUp => break false,
        }
    };
    if locked && mode == Mode::Fill {
        // Someone may have filled it between our miss and our lock.
        if let Ok(Some(entry)) = state.cache.get(id).await
            && entry.is_fresh(now_ms())
        {
            let _ = state.cache.unlock(id, &token).await;
            return Ok(Some(Loaded::from(&entry)));
        }
    }
    let started = Instant::now();
    let loaded = db_load(state, id).await;
    if let Ok(loaded) = &loaded
        && let Err(error) = state
            .cache
            .fill(id, loaded.profile.clone(), loaded.version, started)
            .await
    {
        tracing::debug!(%error, "cache fill failed");
    }
    if locked {
        let _ = state.cache.unlock(id, &token).await;
    }
    loaded.map(Some)
}

/// How a wait for another replica's fill ended.
enum Waited {
    /// The cache holds a servable entry (fresh, or a profile within its grace period).
    Filled(Loaded),
    /// The lock is gone (released or expired) and nothing servable was filled.
    LockGone,
    /// Waited until `give_up` (or Redis stopped answering about the lock).
    GaveUp,
}

/// Polls the cache while another replica holds the fill lock of `id`: as long as the lock
/// exists, but not past `give_up`. Loading ourselves any earlier would let every waiting replica
/// hit PostgreSQL whenever a load takes longer than a fixed wait.
async fn wait_for_fill(state: &Arc<AppState>, id: &str, give_up: Instant) -> Waited {
    loop {
        tokio::time::sleep(LOCK_POLL_PAUSE).await;
        if let Ok(Some(entry)) = state.cache.get(id).await
            && entry.is_servable(now_ms())
        {
            return Waited::Filled(Loaded::from(&entry));
        }
        if Instant::now() >= give_up {
            return Waited::GaveUp;
        }
        match state.cache.is_locked(id).await {
            Ok(true) => {}
            Ok(false) => return Waited::LockGone,
            Err(_) => return Waited::GaveUp,
        }
    }
}

async fn db_load(state: &Arc<AppState>, id: &str) -> Result<Loaded, StoreError> {
    state.metrics.db_load();
    store::load(&state.pool, id).await
}
