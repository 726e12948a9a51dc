//! Configuration: every knob is a `--flag` and an environment variable (see `.env.sample`), and
//! [`Config::for_tests`] builds one in code with small timeouts for the test suites.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// `RELAY_BATCH_SIZE`'s default. A batch costs a handful of database round trips and one wait
/// for the broker's acknowledgements whatever its size, so a backlog drains faster in larger
/// batches (`make bench` scenario 8); a batch not full is sent at once, so a lone write is not
/// delayed by it.
pub const DEFAULT_RELAY_BATCH_SIZE: i64 = 1000;

/// Settings of one API replica.
#[derive(Debug, Clone, Parser)]
#[command(name = "profile-api", version, about = "The Statecast Profile API")]
pub struct Config {
    /// PostgreSQL, the source of truth. TLS:
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` (see docs/contracts.md).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://statecast:statecast@127.0.0.1:5432/statecast"
    )]
    pub database_url: String,
    /// Redis, the read cache; `rediss://` for TLS; several nodes' URLs, comma-separated, for a
    /// Redis Cluster.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PEM of the CA that signed the Redis server's certificate, for a `rediss://` URL; it
    /// replaces the bundled Mozilla roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Kafka security (TLS, SASL) and librdkafka pass-through, shared with every workload
    /// (`statecast-kafka`); validated by [`crate::build`] before anything connects.
    #[command(flatten)]
    pub kafka: statecast_kafka::KafkaSecurityArgs,
    /// Topic the relay publishes profile events to.
    #[arg(long, env = "EVENTS_TOPIC", default_value = "user-events")]
    pub events_topic: String,
    /// HTTP listen address.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,
    /// Soft TTL of a cached profile; each fill gets ±10 % jitter.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value_t = 3600)]
    pub cache_ttl_seconds: u64,
    /// How long past its soft expiry an entry may still be served (`x-cache: stale`) while it is
    /// refreshed in the background.
    #[arg(long, env = "CACHE_STALE_GRACE_SECONDS", default_value_t = 60)]
    pub cache_stale_grace_seconds: u64,
    /// TTL of "no such profile" entries.
    #[arg(long, env = "CACHE_NEGATIVE_TTL_SECONDS", default_value_t = 30)]
    pub cache_negative_ttl_seconds: u64,
    /// XFetch beta: above 1 refreshes earlier, below 1 later.
    #[arg(long, env = "CACHE_XFETCH_BETA", default_value_t = 1.0)]
    pub cache_xfetch_beta: f64,
    /// TTL of the cross-replica fill lock (`SET NX PX`).
    #[arg(long, env = "CACHE_LOCK_TTL_MS", default_value_t = 2000)]
    pub cache_lock_ttl_ms: u64,
    /// Time limit of a single Redis command; a dead Redis costs at most this per request.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 200)]
    pub redis_timeout_ms: u64,
    /// The near cache: a bounded in-process copy of Redis entries, kept coherent by Redis's
    /// invalidation pushes (`CLIENT TRACKING`, RESP3). `false`: every read asks Redis.
    #[arg(long, env = "NEAR_CACHE_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub near_cache_enabled: bool,
    /// Most entries the near cache holds (the least used go first).
    #[arg(long, env = "NEAR_CACHE_MAX_ENTRIES", default_value_t = 50_000)]
    pub near_cache_max_entries: u64,
    /// Most bytes (estimated) of near-cache entries.
    #[arg(long, env = "NEAR_CACHE_MAX_BYTES", default_value_t = 16_777_216)]
    pub near_cache_max_bytes: u64,
    /// Whole-request time limit (503 problem when exceeded).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Maximum PostgreSQL connections of the pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,
    /// How long a request waits for a PostgreSQL connection before answering 503.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3000)]
    pub db_acquire_timeout_ms: u64,
    /// Relay polling fallback when no NOTIFY arrives (and standby leader-lock retry period).
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub relay_poll_interval_ms: u64,
    /// Outbox rows taken per relay batch.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = DEFAULT_RELAY_BATCH_SIZE)]
    pub relay_batch_size: i64,
    /// Published outbox rows older than this are deleted by the relay leader (0 keeps them).
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 168)]
    pub outbox_retention_hours: u32,
    /// librdkafka `message.timeout.ms`: how long a publish may take before the relay retries.
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_message_timeout_ms: u64,
    /// Run without authentication (logged loudly at start). Never the default.
    #[arg(long, env = "AUTH_DISABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_disabled: bool,
    /// Shared secret of HS256 bearer tokens.
    #[arg(long, env = "AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,
    /// JWKS URL for RS256/ES256 bearer tokens (keys cached, refetched on an unknown `kid`).
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// Required `iss` of tokens, when set.
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` of tokens, when set.
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Tolerated clock skew for `exp`/`nbf`, in seconds.
    #[arg(long, env = "AUTH_LEEWAY_SECONDS", default_value_t = 30)]
    pub auth_leeway_seconds: u64,
    /// GETs need no token.
    #[arg(long, env = "PUBLIC_READS", default_value_t = false, action = clap::ArgAction::Set)]
    pub public_reads: bool,
    /// Sustained requests per second per subject (or per address for anonymous reads); 0 = off.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 100)]
    pub rate_limit_per_second: u32,
    /// Burst size per subject.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Proxies (IP addresses and CIDR networks, comma-separated) whose forwarding header names
    /// the client, for the rate limit and the request log. Empty: the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: crate::TrustedProxies,
    /// The header trusted proxies append the client address to: `x-forwarded-for` or
    /// `forwarded` (RFC 7239). The other one is ignored.
    #[arg(long, env = "TRUSTED_PROXY_HEADER", default_value = "x-forwarded-for")]
    pub trusted_proxy_header: crate::ForwardingHeader,
}

impl Config {
    /// A configuration for tests: given services, an ephemeral port, short timeouts and a fast
    /// relay poll.
    pub fn for_tests(database_url: &str, redis_url: &str, brokers: &str, topic: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            redis_url: redis_url.to_owned(),
            redis_ca_file: None,
            kafka_brokers: brokers.to_owned(),
            kafka: statecast_kafka::KafkaSecurityArgs::default(),
            events_topic: topic.to_owned(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cache_ttl_seconds: 3600,
            cache_stale_grace_seconds: 60,
            cache_negative_ttl_seconds: 30,
            cache_xfetch_beta: 1.0,
            cache_lock_ttl_ms: 2000,
            // Not the 200 ms default: tests that expect `x-cache: hit` run beside the whole suite
            // on two cores, where a Redis answer can take longer and the read would bypass.
            redis_timeout_ms: 2000,
            near_cache_enabled: true,
            near_cache_max_entries: 50_000,
            near_cache_max_bytes: 16_777_216,
            request_timeout_ms: 10_000,
            db_pool_size: 10,
            db_acquire_timeout_ms: 1000,
            relay_poll_interval_ms: 100,
            relay_batch_size: DEFAULT_RELAY_BATCH_SIZE,
            outbox_retention_hours: 168,
            kafka_message_timeout_ms: 5000,
            auth_disabled: true,
            auth_hs256_secret: None,
            auth_jwks_url: None,
            auth_issuer: None,
            auth_audience: None,
            auth_leeway_seconds: 30,
            public_reads: false,
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            trusted_proxies: crate::TrustedProxies::default(),
            trusted_proxy_header: crate::ForwardingHeader::XForwardedFor,
        }
    }

    /// The authentication and rate-limit part.
    pub fn auth_settings(&self) -> crate::auth::AuthSettings {
        crate::auth::AuthSettings {
            disabled: self.auth_disabled,
            hs256_secret: self.auth_hs256_secret.clone(),
            jwks_url: self.auth_jwks_url.clone(),
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            public_reads: self.public_reads,
            leeway_seconds: self.auth_leeway_seconds,
            rate_limit_per_second: self.rate_limit_per_second,
            rate_limit_burst: self.rate_limit_burst,
        }
    }

    pub(crate) fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }
    pub(crate) fn stale_grace(&self) -> Duration {
        Duration::from_secs(self.cache_stale_grace_seconds)
    }
    pub(crate) fn negative_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_negative_ttl_seconds)
    }
    pub(crate) fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.cache_lock_ttl_ms)
    }
    pub(crate) fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub(crate) fn relay_poll_interval(&self) -> Duration {
        Duration::from_millis(self.relay_poll_interval_ms)
    }
}
