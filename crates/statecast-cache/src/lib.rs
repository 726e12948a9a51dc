//! The profile cache, in one place: what the Profile API reads and fills and the
//! `cache-refresh` consumer writes, and the API's near cache in front of it. Both sides use this crate, so the entry format, the version
//! rules and the scripts cannot drift apart.
//!
//! Versions never go backwards in the cache: every write goes through one compare-and-set
//! ([`script::CAS`]) on the cached version, so a slow fill from a read that started before a
//! write committed can never replace the write's invalidation marker or a newer entry, and a
//! late event can never overwrite a newer one. The marker itself expires, so
//! [`Cache::fill`] also drops results of loads older than half its lifetime.
//!
//! # Layout
//! - [`entry`]: keys (`profile:{id}`, `lock:profile:{id}`), [`Entry`] and its JSON, the cached
//!   [`Profile`] (the API's `GET` body), freshness, TTL jitter and XFetch.
//! - [`script`]: the Lua compare-and-set and lock release, [`OnEqual`] and [`Written`].
//! - `target`: [`Target`], one Redis or a Redis Cluster (`REDIS_URL` naming several nodes).
//! - `conn`: [`Connection`], a connection manager or a cluster connection behind one interface.
//! - `remote`: [`Cache`], the Redis operations (get, put, fill, invalidate, refresh, fill
//!   lock, ping) with an optional per-command timeout, and [`Ttls`] / [`Put`], what each write
//!   writes.
//! - [`near`]: [`NearCache`], the bounded in-process tier of each API replica in front of Redis,
//!   kept coherent by RESP3 server-assisted client-side caching (`CLIENT TRACKING` broadcast
//!   invalidations on a dedicated connection, one per master on a cluster); its module doc
//!   states its four rules.
//! - [`Error`]: the one error enum.

mod conn;
pub mod entry;
#[cfg(any(test, feature = "fixtures"))]
#[doc(hidden)]
pub mod fixtures;
pub mod near;
mod remote;
pub mod script;
mod target;

pub use conn::Connection;
pub use entry::{Entry, Kind, Profile, jittered, key, lock_key, now_ms, xfetch_due};
pub use near::{NearCache, NearConfig, Tier};
pub use remote::{Cache, Put, Ttls};
pub use script::{OnEqual, Written};
pub use target::{Cluster, Target};

/// Why a cache operation failed. Callers treat every variant as "cache unavailable" (the API
/// bypasses the cache) or as a retryable failure (the consumer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command did not finish within the configured timeout.
    #[error("redis timed out")]
    Timeout,
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A cached value is not an entry (or an entry could not be encoded).
    #[error("bad cache entry: {0}")]
    Decode(#[from] serde_json::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
