//! The Statecast Profile API: user profiles over HTTP, PostgreSQL as the source of truth, Redis
//! as a read-through cache with stampede protection, and a transactional outbox relayed to Kafka
//! as CloudEvents (`statecast-events`).
//!
//! Why this shape: the cache is an optimisation that may fail or lag (reads then go to
//! PostgreSQL), while the outbox makes "the change happened" and "the event will be published"
//! one atomic fact, so a broker outage delays events but never loses them or fails a write.
//!
//! # Layout
//! - [`config`]: [`Config`], every knob as flag + env var (`.env.sample` lists them).
//! - `connect`: the Redis TLS check at start ([`ConnectError`]); the PostgreSQL pool, the
//!   Redis client and the wording of start-up errors (the setting, its masked value and the fix)
//!   are `statecast-startup`'s, shared with the consumer.
//! - `client`: the client address (TCP peer, or the forwarded one behind `TRUSTED_PROXIES`).
//! - `routes`: router, handlers, layers (server spans, metrics, timeout, body limit) and
//!   problem-aware extractors.
//! - [`problem`]: [`problem::ApiError`], the one error enum, as RFC 9457 problem+json.
//! - [`model`]: [`model::Profile`] and [`model::ProfileInput`], the JSON shapes.
//! - `validate`: pure input checks (ids, fields, merge patch, ETags).
//! - the cache itself, the near cache of each replica included (Redis entries, compare-and-set fills/invalidations in Lua, the fill lock,
//!   XFetch, jitter) is the `statecast-cache` crate's, shared with the `cache-refresh` consumer.
//! - `read`: the read path with coalescing, lock, XFetch, stale-while-revalidate, negative cache.
//! - `store`: PostgreSQL reads and the write transaction (change + outbox row).
//! - [`relay`]: the single-leader outbox relay to Kafka (why single-leader: see its module doc);
//!   public for [`relay::producer_config`], which the benchmark's bare producer uses too.
//! - `main.rs`: parse [`Config`], init telemetry, [`build`], [`listen`], serve + relay until
//!   SIGTERM/SIGINT; a start-up error goes to the log and stderr, exit code 1.
//! - [`metrics`]: Prometheus metrics.
//! - [`openapi`]: the generated OpenAPI 3.1 document.
//!
//! # Use from tests
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio_util::sync::CancellationToken;
//! let config = profile_api::Config::for_tests(
//!     "postgres://statecast:statecast@127.0.0.1:5432/t_x", "redis://127.0.0.1:6379",
//!     "127.0.0.1:9092", "user-events-test");
//! let app = profile_api::build(config).await?;
//! let shutdown = CancellationToken::new();
//! let relay = app.spawn_relay(shutdown.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = tokio::spawn(app.clone().serve(listener, shutdown.clone()));
//! // ... talk HTTP to addr ...
//! shutdown.cancel();
//! # let _ = (relay, server, addr); Ok(()) }
//! ```

pub mod auth;
pub mod config;
mod connect;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod problem;
mod store;

mod client;
mod read;
pub mod relay;
mod routes;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use client::{ForwardingHeader, ForwardingHeaderError, TrustedProxies, TrustedProxiesError};
pub use config::Config;
pub use connect::ConnectError;
pub use metrics::Metrics;
pub use routes::BODY_LIMIT;
pub use statecast_cache::Error as CacheError;

/// Why the API could not start (or stopped serving). The start-up variants name the setting,
/// its value with credentials masked, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL cannot be used at start: unreachable, refusing us, or `DATABASE_URL` unusable.
    #[error(transparent)]
    Database(#[from] statecast_startup::DatabaseError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The Redis URL is invalid.
    #[error("cannot set up the Redis client: {0}")]
    Cache(#[from] statecast_cache::Error),
    /// Redis's TLS certificate does not verify; the message names the variable to check.
    #[error("{0}")]
    Connect(#[from] connect::ConnectError),
    /// `REDIS_URL` or `REDIS_CA_FILE` is unusable (Redis being down is fine: reads then bypass
    /// the cache).
    #[error(transparent)]
    Redis(#[from] statecast_startup::RedisSetupError),
    /// The HTTP listener cannot be bound.
    #[error(transparent)]
    Listen(#[from] statecast_startup::ListenError),
    /// Serving HTTP failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    /// The authentication settings cannot work (e.g. no key source and no explicit opt-out).
    #[error("{0}")]
    Auth(#[from] auth::AuthConfigError),
    /// The Kafka settings cannot work (the message names the variable).
    #[error("{0}")]
    Kafka(#[from] statecast_kafka::ConfigError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared by every handler and the relay.
pub(crate) struct AppState {
    pub(crate) config: Config,
    /// Validated from `config.kafka` at start; applied to every producer the relay creates.
    pub(crate) kafka: statecast_kafka::KafkaSecurity,
    pub(crate) pool: PgPool,
    pub(crate) cache: statecast_cache::Cache,
    /// This replica's near cache in front of Redis (`None`: `NEAR_CACHE_ENABLED=false`).
    pub(crate) near: Option<statecast_cache::NearCache>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) inflight: read::Inflight,
    pub(crate) auth: Arc<auth::Auth>,
    /// Ids whose invalidation has not reached Redis yet, with the version written.
    pub(crate) dirty: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl AppState {
    /// Applies a change: the transaction runs in the caller's future (a timeout or a client
    /// going away before the commit rolls it back), but the commit and the cache invalidation
    /// after it run in a task of their own that the caller awaits. So dropping the request
    /// future once the commit is under way can no longer leave a committed change without its
    /// invalidation (the cache would serve the old version until its TTL).
    pub(crate) async fn write(
        self: &Arc<Self>,
        id: &str,
        change: store::Change,
        if_match: Option<&validate::EtagCondition>,
    ) -> Result<store::Written, store::StoreError> {
        let prepared = store::prepare(&self.pool, id, change, if_match).await?;
        let state = self.clone();
        let id = id.to_owned();
        let finish = async move {
            let version = prepared.version();
            let committed = prepared.commit().await;
            if committed.is_ok()
                && let Some(near) = &state.near
            {
                // This replica answers this version from now on; nothing older.
                near.observe(&id, version);
            }
            // A failed commit may still have committed (the connection broke after sending
            // it): invalidating a version that never landed only costs a few cache misses.
            state.after_write(&id, version).await;
            committed
        };
        tokio::spawn(finish.instrument(tracing::Span::current()))
            .await
            .unwrap_or_else(|e| Err(store::StoreError::Internal(format!("commit task: {e}"))))
    }

    /// After a commit: forget in-flight loads of `id` and mark the cache entry invalid at
    /// `version`. If Redis fails, the write still succeeds: the id is remembered as "dirty" (reads
    /// of it on this replica bypass the cache, so none can see the older cached version) and the
    /// invalidation is retried in the background until it lands or the old entry has expired.
    pub(crate) async fn after_write(self: &Arc<Self>, id: &str, version: i64) {
        self.inflight.forget(id);
        // Read-your-writes without waiting for Redis's push: the near entry goes first.
        if let Some(near) = &self.near {
            near.invalidate(id);
        }
        if let Err(error) = self.cache.invalidate(id, version).await {
            tracing::warn!(%error, id, version, "cache invalidation failed; retrying in background");
            if let Ok(mut dirty) = self.dirty.lock() {
                let entry = dirty.entry(id.to_owned()).or_insert(version);
                *entry = (*entry).max(version);
            }
            let state = self.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                let give_up = std::time::Instant::now()
                    + state.config.cache_ttl().mul_f64(1.1)
                    + state.config.stale_grace();
                let mut pause = Duration::from_millis(50);
                while std::time::Instant::now() < give_up {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    if state.cache.invalidate(&id, version).await.is_ok() {
                        break;
                    }
                }
                if let Ok(mut dirty) = state.dirty.lock()
                    && dirty.get(&id).is_some_and(|v| *v <= version)
                {
                    dirty.remove(&id);
                }
            });
        }
    }

    /// Whether reads of `id` must bypass the cache (an invalidation has not reached Redis yet).
    pub(crate) fn is_dirty(&self, id: &str) -> bool {
        self.dirty
            .lock()
            .map(|d| d.contains_key(id))
            .unwrap_or(true)
    }
}

/// One API replica: HTTP router, relay and their shared state. Cheap to clone.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
}

/// How often the near cache's tracking connection is checked with `PING` (a silently dead
/// connection could miss invalidations; a closed one is noticed at once).
const NEAR_CACHE_HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the migrations of this crate (versions 1xxxx), ignoring other crates' rows in the shared
/// `_sqlx_migrations` table.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// Validates the Kafka settings, checks the Redis URL (the client connects lazily), connects to
/// PostgreSQL (which must be up), and runs the migrations. Kafka is only contacted by the relay.
pub async fn build(config: Config) -> Result<App> {
    let kafka = statecast_kafka::KafkaSecurity::from_args(&config.kafka)?;
    tracing::info!(kafka = ?kafka, "Kafka client settings");
    let auth = Arc::new(auth::Auth::new(&config.auth_settings())?);
    let ttls = statecast_cache::Ttls {
        ttl: config.cache_ttl(),
        grace: config.stale_grace(),
        negative: config.negative_ttl(),
        lock: config.lock_ttl(),
        marker: (config.request_timeout() * 3).max(Duration::from_secs(30)),
    };
    // One Redis, or a Redis Cluster when REDIS_URL names several nodes.
    let redis =
        statecast_startup::redis_setup::target(&config.redis_url, config.redis_ca_file.as_deref())?;
    // Redis being down only degrades the API, but a TLS certificate that does not verify is a
    // configuration error: find out now and refuse to start, naming REDIS_URL / REDIS_CA_FILE.
    // (A cluster's nodes share the settings of its seeds: the first seed is checked.)
    connect::check_redis_tls(
        &redis.seeds()[0],
        config.redis_timeout().max(Duration::from_secs(1)),
    )
    .await?;
    let near = config.near_cache_enabled.then(|| {
        let near = statecast_cache::NearCache::new(statecast_cache::NearConfig {
            max_entries: config.near_cache_max_entries,
            max_bytes: config.near_cache_max_bytes,
            grace: config.stale_grace(),
            health_interval: NEAR_CACHE_HEALTH_INTERVAL,
        });
        // Bypassed until its tracking connection is up; the task ends with the near cache.
        near.spawn_tracking(redis.clone());
        near
    });
    let cache = statecast_cache::Cache::lazy(redis, config.redis_timeout(), ttls)?;
    let pool = connect(&config).await?;
    migrate(&pool).await?;
    Ok(App {
        state: Arc::new(AppState {
            config,
            kafka,
            pool,
            cache,
            near,
            metrics: Arc::new(Metrics::new()),
            inflight: read::Inflight::default(),
            auth,
            dirty: std::sync::Mutex::default(),
        }),
    })
}

/// The pool, with at least one connection open; a failure names `DATABASE_URL` (masked), the
/// real cause and the fix.
async fn connect(config: &Config) -> Result<PgPool> {
    Ok(statecast_startup::database::connect(
        &config.database_url,
        PgPoolOptions::new().max_connections(config.db_pool_size),
        Duration::from_millis(config.db_acquire_timeout_ms),
        Some("DB_ACQUIRE_TIMEOUT_MS"),
    )
    .await?)
}

/// Binds the HTTP listener of `LISTEN_ADDR`; a failure names the address and what to do.
pub async fn listen(addr: std::net::SocketAddr) -> Result<TcpListener> {
    Ok(statecast_startup::listen::bind("LISTEN_ADDR", addr).await?)
}

impl App {
    /// The HTTP API, for `tower::ServiceExt::oneshot` or a server.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Starts the outbox relay; it stops (after finishing its batch) when `shutdown` fires.
    pub fn spawn_relay(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(relay::run(self.state.clone(), shutdown))
    }

    /// Serves HTTP on `listener` until `shutdown`, then drains in-flight requests.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        // Peer addresses (or, behind a trusted proxy, forwarded ones) key the rate limit of
        // anonymous requests and appear in the request log.
        axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
        Ok(())
    }

    /// The PostgreSQL pool (tests inspect the outbox with it).
    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// This replica's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// This replica's near cache, if enabled (tests and diagnostics: its tracking connection's
    /// client id, its size).
    pub fn near_cache(&self) -> Option<&statecast_cache::NearCache> {
        self.state.near.as_ref()
    }
}
