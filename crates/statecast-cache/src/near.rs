//! The near cache: a bounded in-process copy of Redis entries in each API replica, kept coherent
//! by Redis itself through server-assisted client-side caching.
//!
//! # How it stays coherent
//! A dedicated RESP3 connection runs `CLIENT TRACKING ON BCAST PREFIX profile:`: Redis then
//! pushes an `invalidate` message naming every `profile:*` key that changes or expires, whoever
//! changed it (another replica's write, a fill, the `cache-refresh` consumer). The push handler
//! runs in that connection's reader and drops the key at once. Four rules:
//! - **read-your-writes**: a write drops its key here ([`NearCache::written`]) before the write
//!   answers, so the writer's next read goes to Redis (and sees the write's marker);
//! - **no missed invalidations**: an entry is only kept if no invalidation of its key (and no
//!   change of the tracking connection) happened between the moment its Redis read was sent and
//!   the moment it was inserted ([`Ticket`]), so a push that overtook the read's reply cannot
//!   be lost;
//! - **monotonic**: per key, the highest version this replica has served is remembered
//!   ([`NearCache::observe`]); an entry older than that is never served from here, and the read
//!   path reloads when Redis or a coalesced load would answer older;
//! - **tracking lost, cache off**: when the tracking connection drops (the reader sees the
//!   socket close, or a health-check `PING` fails) every entry is flushed and the near tier is
//!   bypassed until a new connection tracks again; entries read while it was down are refused,
//!   since their invalidations could have been missed.
//!
//! # How soon another replica's write is seen
//! Redis writes a broadcast push in the same event-loop turn as the writer's reply (the push
//! first), so by the time a client that saw the write's answer asks this replica, the push is
//! already in the tracking socket. What can lag is this process applying it: with both runtime
//! workers busy, the connection's driver task runs only every so many tasks (that left 1.19 % of
//! `make bench` scenario 10's reads stale). So over plain TCP the tracking connection is opened
//! on a socket of our own (see `socket`), and a near hit is served only once every tracking
//! socket is *settled*, nothing unread in it and its driver not mid-poll; otherwise the hit
//! yields a few times for the driver to catch up, then Redis answers (see `Cache::get_through`).
//! Under TLS there is no such check, and a hit is served after one `yield_now`, which narrows
//! the window without closing it. Scenario 10 counts what is left from the HTTP answers.
//!
//! # On a Redis Cluster
//! Each master pushes the invalidations of its own keys only, so there is one tracking
//! connection per master, and "the tracking connection" of the rules above is all of them: the
//! near cache is used only while every master serving a slot has one, and losing any (a master
//! killed, a failover, a new master, any change of the set of masters) flushes and bypasses it
//! until all of the new set track (see `track`).
//!
//! # Bounds
//! Both by entries and by bytes, in one weighted [`quick_cache`] map: each entry weighs
//! `max(its estimated size, max_bytes / max_entries)` against a capacity of `max_bytes`, so
//! neither the total size nor the count can pass its bound. The high-water versions are kept for
//! as many keys. (`quick_cache`, not `moka`: at the default bound of 50,000 entries moka's
//! per-entry bookkeeping, several reference-counted nodes per key in each of the two maps, was
//! about as large as the entries themselves and put a full near cache over its RSS budget.)

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::sync::{EntryAction, EntryResult};
use redis::{PushInfo, PushKind, Value};

use crate::entry::{Entry, KEY_PREFIX, Kind};
use crate::target::Target;

/// Stripes of the invalidation generations (a key's stripe is its hash modulo this).
const STRIPES: usize = 1024;
/// Name of the tracking connection in `CLIENT LIST`.
pub const TRACKING_CLIENT_NAME: &str = "statecast-near-cache";
/// Fixed part of an entry's estimated size (the map's node, the `Entry`, the key's `String`).
const ENTRY_OVERHEAD: usize = 160;

/// Settings of a near cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearConfig {
    /// At most this many entries.
    pub max_entries: u64,
    /// At most this many bytes of entries (estimated).
    pub max_bytes: u64,
    /// The grace period of profile entries (`CACHE_STALE_GRACE_SECONDS`): a profile is kept
    /// until its soft expiry plus this, as in Redis.
    pub grace: Duration,
    /// How often the tracking connection is checked with `PING`, and the time limit of its
    /// commands.
    pub health_interval: Duration,
}

/// Which tier answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This replica's near cache.
    Near,
    /// Redis.
    Redis,
}

impl Tier {
    /// The `tier` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Near => "near",
            Self::Redis => "redis",
        }
    }
}

/// Taken before a Redis read whose answer may be kept: [`NearCache::offer`] refuses the answer
/// if anything could have invalidated it since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    stripe: usize,
    generation: u64,
}

/// The near cache of one replica. Cheap to clone.
#[derive(Clone)]
pub struct NearCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("config", &self.inner.config)
            .field("tracking", &self.is_tracking())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: NearConfig,
    entries: quick_cache::sync::Cache<String, Arc<Entry>, Weight>,
    /// Highest version served, by id.
    high_water: quick_cache::sync::Cache<String, i64>,
    /// Bumped by every invalidation of a key of the stripe.
    generations: Box<[AtomicU64]>,
    /// Bumped by every change of the tracking state and every flush.
    epoch: AtomicU64,
    /// Whether a tracking connection is up: only then are entries served or kept.
    tracking: AtomicBool,
    /// Redis's `CLIENT ID` of the (first) tracking connection (0 when down).
    client_id: AtomicI64,
    /// Every tracking connection while up: the node's `host:port` and its `CLIENT ID` there.
    clients: Mutex<Vec<(String, i64)>>,
    /// The sockets of the tracking connections while up, when every one is watched (plain
    /// TCP); empty otherwise (see `socket`).
    watches: std::sync::RwLock<Vec<Arc<socket::Watch>>>,
    /// The connection attempt whose state counts; pushes of older connections do not.
    current: Mutex<u64>,
    /// Invalidation pushes handled.
    invalidations: AtomicU64,
    /// Wakes the tracking task when its connection is lost (it then reconnects at once rather
    /// than at its next health check). Shared with the task, which holds no strong reference
    /// to the rest while it waits, so dropping the near cache ends it.
    wake: Arc<tokio::sync::Notify>,
    /// Test seam: pushes held back while `Some` (see [`NearCache::hold_invalidations`]).
    held: Mutex<Option<Vec<(u64, PushInfo)>>>,
}

impl NearCache {
    /// An empty near cache, not tracking yet (so bypassed) until [`NearCache::spawn_tracking`]
    /// has a connection up.
    pub fn new(config: NearConfig) -> Self {
        let max_entries = config.max_entries.max(1);
        let max_bytes = config.max_bytes.max(1);
        // Rounded up, so that max_bytes / floor (the most entries that fit) is at most max_entries.
        let floor = max_bytes.div_ceil(max_entries).max(1);
        let items = usize::try_from(max_entries).unwrap_or(usize::MAX);
        let entries = quick_cache::sync::Cache::with_weighter(items, max_bytes, Weight { floor });
        let generations = (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(Inner {
                config,
                entries,
                high_water: quick_cache::sync::Cache::new(items),
                generations,
                epoch: AtomicU64::new(0),
                tracking: AtomicBool::new(false),
                client_id: AtomicI64::new(0),
                clients: Mutex::new(Vec::new()),
                watches: std::sync::RwLock::new(Vec::new()),
                current: Mutex::new(0),
                invalidations: AtomicU64::new(0),
                wake: Arc::new(tokio::sync::Notify::new()),
                held: Mutex::new(None),
            }),
        }
    }

    /// Whether the tracking connection is up (entries are served and kept only then).
    pub fn is_tracking(&self) -> bool {
        self.inner.tracking.load(Ordering::SeqCst)
    }

    /// Redis's `CLIENT ID` of the tracking connection, while it is up (on a cluster: of the
    /// first master's).
    pub fn tracking_client_id(&self) -> Option<i64> {
        let id = self.inner.client_id.load(Ordering::SeqCst);
        (self.is_tracking() && id != 0).then_some(id)
    }

    /// Every tracking connection while up (one, or one per master of a cluster): the node's
    /// `host:port` and the connection's `CLIENT ID` there. Empty while down.
    pub fn tracking_clients(&self) -> Vec<(String, i64)> {
        if !self.is_tracking() {
            return Vec::new();
        }
        self.inner
            .clients
            .lock()
            .map(|clients| clients.clone())
            .unwrap_or_default()
    }

    /// Entries held (after pending evictions are applied).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.len() as u64
    }

    /// Their weight: the bytes counted against `max_bytes`.
    pub fn weighted_size(&self) -> u64 {
        self.inner.entries.weight()
    }

    /// Invalidation pushes received so far.
    pub fn invalidations(&self) -> u64 {
        self.inner.invalidations.load(Ordering::Relaxed)
    }

    /// Test seam: holds invalidation pushes back (as a slow network would) until
    /// [`NearCache::release_invalidations`], so tests can show what does not depend on a push
    /// arriving in time. Disconnections are never held. Production code never calls it.
    pub fn hold_invalidations(&self) {
        if let Ok(mut held) = self.inner.held.lock() {
            held.get_or_insert_with(Vec::new);
        }
    }

    /// Applies the pushes held since [`NearCache::hold_invalidations`] and stops holding.
    pub fn release_invalidations(&self) {
        let held = self.inner.held.lock().ok().and_then(|mut held| held.take());
        for (attempt, info) in held.unwrap_or_default() {
            self.inner.on_push(attempt, info);
        }
    }

    /// The entry of `id`, if held, servable at `now_ms` and not older than what was served.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Entry> {
        if !self.is_tracking() {
            return None;
        }
        let entry = self.inner.entries.get(id)?;
        if !self.keepable(id, &entry, now_ms) {
            self.inner.entries.remove(id);
            return None;
        }
        Some(Entry::clone(&entry))
    }

    /// Whether an entry of `id` is held while tracking (servable or not): a cheap check that
    /// clones nothing, for deciding whether a near hit is worth waiting for.
    pub fn holds(&self, id: &str) -> bool {
        self.is_tracking() && self.inner.entries.contains_key(id)
    }

    /// Whether a near hit may be served now as far as the tracking connections can tell:
    /// `Some(true)` if none has an invalidation waiting unapplied (nothing unread in its
    /// socket, its driver not mid-poll), `Some(false)` if one may, and `None` if they cannot
    /// tell (not plain TCP; see `socket`).
    pub fn settled(&self) -> Option<bool> {
        let watches = self.inner.watches.read().ok()?;
        if watches.is_empty() {
            return None;
        }
        Some(watches.iter().all(|watch| watch.settled()))
    }

    /// To take before reading `id` from Redis, for [`NearCache::offer`].
    pub fn ticket(&self, id: &str) -> Ticket {
        let stripe = stripe(id);
        // The epoch first: a flush bumps it after dropping the entries.
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let generation = self.inner.generations[stripe].load(Ordering::SeqCst);
        Ticket {
            epoch,
            stripe,
            generation,
        }
    }

    fn ticket_holds(&self, ticket: Ticket) -> bool {
        self.is_tracking()
            && self.inner.epoch.load(Ordering::SeqCst) == ticket.epoch
            && self.inner.generations[ticket.stripe].load(Ordering::SeqCst) == ticket.generation
    }

    /// Keeps `entry`, read from Redis under `ticket`, unless it could be out of date already.
    /// Returns whether it was kept.
    pub fn offer(&self, id: &str, entry: &Entry, ticket: Ticket, now_ms: i64) -> bool {
        if !self.ticket_holds(ticket) || !self.keepable(id, entry, now_ms) {
            return false;
        }
        let value = Arc::new(entry.clone());
        let kept = match self.inner.entries.entry(id, None, |_, held| {
            if held.v > entry.v {
                EntryAction::Retain(false)
            } else {
                *held = value.clone();
                EntryAction::Retain(true)
            }
        }) {
            EntryResult::Retained(kept) => kept,
            EntryResult::Vacant(guard) => guard.insert(value).is_ok(),
            // Not asked for (no `ReplaceWithGuard`, no timeout).
            EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => false,
        };
        // An invalidation that ran between the check and the insert may have missed the
        // insert: check again and drop it then.
        if kept && !self.ticket_holds(ticket) {
            self.inner.entries.remove(id);
            return false;
        }
        kept
    }

    /// A write of `id` at `version` on this replica: drops its entry (before the write answers)
    /// and never serves anything older from now on.
    pub fn written(&self, id: &str, version: i64) {
        self.invalidate(id);
        self.observe(id, version);
    }

    /// Records that `version` of `id` was served (the high-water mark only rises).
    pub fn observe(&self, id: &str, version: i64) {
        // The common case (a read at the mark) takes no key lock and allocates nothing.
        if self.high_water(id) >= version {
            return;
        }
        if let EntryResult::Vacant(guard) = self.inner.high_water.entry(id, None, |_, held| {
            *held = (*held).max(version);
            EntryAction::Retain(())
        }) {
            // Refused only if the mark was evicted meanwhile: nothing to keep then either.
            let _ = guard.insert(version);
        }
    }

    /// The highest version of `id` served by this replica (0 if none is remembered).
    pub fn high_water(&self, id: &str) -> i64 {
        self.inner.high_water.get(id).unwrap_or(0)
    }

    /// Drops the entry of `id`, and refuses answers to reads of it already under way.
    pub fn invalidate(&self, id: &str) {
        self.inner.generations[stripe(id)].fetch_add(1, Ordering::SeqCst);
        self.inner.entries.remove(id);
    }

    /// Drops every entry, and refuses answers to reads under way.
    pub fn flush(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner.entries.clear();
    }

    /// Servable at `now_ms` (a profile until soft expiry + grace, a negative entry until its
    /// soft expiry; markers never) and not older than the high-water mark.
    fn keepable(&self, id: &str, entry: &Entry, now_ms: i64) -> bool {
        let until = match entry.k {
            Kind::Profile => crate::entry::after(entry.soft, self.inner.config.grace),
            Kind::Negative => entry.soft,
            Kind::Invalidated => return false,
        };
        now_ms < until && entry.v >= self.high_water(id)
    }

    /// Keeps tracking connections to `target` up, for as long as this near cache lives: one
    /// to the Redis, or one to every master of a Redis Cluster (`track` says how the masters are
    /// found and followed through failovers). Each connects (RESP3), turns broadcast tracking of
    /// `profile:` on and is checked with `PING` every `health_interval`; on any loss the near
    /// cache is flushed and bypassed until all are back, reconnected with backoff.
    pub fn spawn_tracking(&self, target: impl Into<Target>) -> tokio::task::JoinHandle<()> {
        let target = target.into();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(track::track(weak, target))
    }
}

/// The weight of an entry: its estimated size, at least `max_bytes / max_entries` (so the count
/// is bounded too).
#[derive(Debug, Clone, Copy)]
struct Weight {
    floor: u64,
}

impl quick_cache::Weighter<String, Arc<Entry>> for Weight {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        (estimated_size(key, entry) as u64).max(self.floor)
    }
}

/// The estimated bytes of an entry.
fn estimated_size(key: &str, entry: &Entry) -> usize {
    let profile = entry.p.as_ref().map_or(0, |p| {
        p.id.len() + p.name.len() + p.email.len() + p.country.len() + 64
    });
    ENTRY_OVERHEAD + key.len() + profile
}

fn stripe(id: &str) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    // Modulo a power of two below usize::MAX: the cast keeps the low bits.
    (hasher.finish() as usize) % STRIPES
}

impl Inner {
    fn facade(self: &Arc<Self>) -> NearCache {
        NearCache {
            inner: self.clone(),
        }
    }

    /// The connections of `attempt` all track: `clients` are their nodes and `CLIENT ID`s.
    fn up(
        self: &Arc<Self>,
        attempt: u64,
        clients: Vec<(String, i64)>,
        watches: Vec<Arc<socket::Watch>>,
    ) {
        let Ok(current) = self.current.lock() else {
            return;
        };
        if *current != attempt {
            return;
        }
        self.facade().flush();
        let client_id = clients.first().map_or(0, |(_, id)| *id);
        self.client_id.store(client_id, Ordering::SeqCst);
        if let Ok(mut held) = self.clients.lock() {
            *held = clients.clone();
        }
        if let Ok(mut held) = self.watches.write() {
            *held = watches;
        }
        self.tracking.store(true, Ordering::SeqCst);
        tracing::info!(client_id, ?clients, "near cache: tracking");
    }

    /// Connection `attempt` is lost (or never came up).
    fn down(self: &Arc<Self>, attempt: u64, why: &str) {
        let Ok(current) = self.current.lock() else {
            return;
        };
        if *current != attempt {
            return;
        }
        let was = self.tracking.swap(false, Ordering::SeqCst);
        self.client_id.store(0, Ordering::SeqCst);
        if let Ok(mut held) = self.clients.lock() {
            held.clear();
        }
        if let Ok(mut held) = self.watches.write() {
            held.clear();
        }
        self.facade().flush();
        if was {
            tracing::warn!(
                why,
                "near cache: tracking lost; flushed and bypassed until it is back"
            );
        }
        // A stale permit only costs the task one early health check.
        self.wake.notify_one();
    }

    /// A push from connection `attempt`: applied now, unless invalidations are held.
    fn receive(self: &Arc<Self>, attempt: u64, info: PushInfo) {
        if info.kind == PushKind::Invalidate
            && let Ok(mut held) = self.held.lock()
            && let Some(queue) = held.as_mut()
        {
            queue.push((attempt, info));
            return;
        }
        self.on_push(attempt, info);
    }

    fn on_push(self: &Arc<Self>, attempt: u64, info: PushInfo) {
        match info.kind {
            PushKind::Invalidate => {
                self.invalidations.fetch_add(1, Ordering::Relaxed);
                for value in &info.data {
                    match value {
                        Value::Array(keys) => {
                            for key in keys {
                                if let Some(id) = key_id(key) {
                                    self.facade().invalidate(&id);
                                }
                            }
                        }
                        // FLUSHALL / FLUSHDB: every key.
                        Value::Nil => self.facade().flush(),
                        _ => {}
                    }
                }
            }
            PushKind::Disconnection => self.down(attempt, "connection closed"),
            _ => {}
        }
    }
}

/// The id of an invalidated key, if it is an entry key.
fn key_id(key: &Value) -> Option<String> {
    let raw = match key {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
        Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    raw.strip_prefix(KEY_PREFIX).map(str::to_owned)
}

mod socket;
mod track;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
