//! Prometheus metrics (names are part of the contract): cache results by tier, the near cache,
//! database loads, HTTP traffic and the outbox. Rendered in the text format at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a profile read was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// From a fresh cache entry.
    Hit,
    /// Loaded from PostgreSQL (directly or by joining another request's load).
    Miss,
    /// From an entry past its soft expiry, refreshed in the background.
    Stale,
    /// Redis unavailable: read straight from PostgreSQL.
    Bypass,
    /// A cached "no such profile".
    Negative,
}

impl CacheResult {
    /// Label value and `x-cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
            Self::Negative => "negative",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    result: String,
    /// `near`, `redis`, or `none` (answered from PostgreSQL).
    tier: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// All metrics of one replica.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cache_lookups: Family<LookupLabels, Counter>,
    near_cache_entries: Gauge,
    near_cache_bytes: Gauge,
    near_cache_tracking: Gauge,
    db_loads: Counter,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily,
    outbox_pending: Gauge,
    outbox_published: Counter,
    outbox_publish_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let cache_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "profile_cache_lookups",
            "Profile reads by how they were answered and which cache tier answered",
            cache_lookups.clone(),
        );
        let near_cache_entries = Gauge::default();
        registry.register(
            "profile_near_cache_entries",
            "Entries in this replica's near cache",
            near_cache_entries.clone(),
        );
        let near_cache_bytes = Gauge::default();
        registry.register(
            "profile_near_cache_bytes",
            "Estimated bytes of this replica's near-cache entries",
            near_cache_bytes.clone(),
        );
        let near_cache_tracking = Gauge::default();
        registry.register(
            "profile_near_cache_tracking",
            "1 while the near cache's invalidation tracking connection is up (else it is bypassed)",
            near_cache_tracking.clone(),
        );
        let db_loads = Counter::default();
        registry.register(
            "profile_db_loads",
            "Profile loads from PostgreSQL on the read path",
            db_loads.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template and status",
            http_requests.clone(),
        );
        let http_duration = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "outbox_pending",
            "Outbox rows not yet published (as seen by the relay leader)",
            outbox_pending.clone(),
        );
        let outbox_published = Counter::default();
        registry.register(
            "outbox_published",
            "Outbox events acknowledged by Kafka",
            outbox_published.clone(),
        );
        let outbox_publish_errors = Counter::default();
        registry.register(
            "outbox_publish_errors",
            "Outbox publish attempts that failed (retried later)",
            outbox_publish_errors.clone(),
        );
        Self {
            registry,
            cache_lookups,
            near_cache_entries,
            near_cache_bytes,
            near_cache_tracking,
            db_loads,
            http_requests,
            http_duration,
            outbox_pending,
            outbox_published,
            outbox_publish_errors,
        }
    }

    /// Counts one profile read, by the tier whose entry answered (`None`: PostgreSQL).
    pub fn cache_lookup(&self, result: CacheResult, tier: Option<statecast_cache::Tier>) {
        self.cache_lookups
            .get_or_create(&LookupLabels {
                result: result.as_str().to_owned(),
                tier: tier
                    .map_or("none", statecast_cache::Tier::as_str)
                    .to_owned(),
            })
            .inc();
    }

    /// Sets the near-cache gauges (at each scrape).
    pub fn set_near_cache(&self, near: &statecast_cache::NearCache) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.near_cache_entries.set(gauge(near.entry_count()));
        self.near_cache_bytes.set(gauge(near.weighted_size()));
        self.near_cache_tracking.set(i64::from(near.is_tracking()));
    }

    /// Counts one PostgreSQL load on the read path.
    pub fn db_load(&self) {
        self.db_loads.inc();
    }

    /// Records one HTTP request.
    pub fn http_request(&self, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Sets the number of unpublished outbox rows.
    pub fn set_outbox_pending(&self, pending: i64) {
        self.outbox_pending.set(pending);
    }

    /// Counts published events.
    pub fn outbox_published(&self, n: u64) {
        self.outbox_published.inc_by(n);
    }

    /// Counts failed publish attempts.
    pub fn outbox_publish_error(&self) {
        self.outbox_publish_errors.inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("cannot encode metrics");
        }
        out
    }
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// 1 ms to ~8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}
