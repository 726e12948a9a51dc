//! Shared helpers: events, producers, in-process consumers, polling and scraping.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use profile_consumer::{Config, HandlerKind};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use statecast_events::{EventType, ProfileEvent, ProfileSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Creates a unique topic with `partitions` partitions and its dead-letter topic.
pub(crate) async fn topic(prefix: &str, partitions: i32) -> String {
    let brokers = statecast_testkit::kafka_brokers();
    let name = statecast_testkit::unique(prefix);
    statecast_testkit::create_topic(&brokers, &name, partitions)
        .await
        .unwrap();
    statecast_testkit::create_topic(&brokers, &format!("{name}.dlq"), 1)
        .await
        .unwrap();
    name
}

/// A free loopback address for a consumer's HTTP endpoints (outside the ephemeral range: the
/// consumer binds it later).
pub(crate) fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], statecast_testkit::free_port().unwrap()))
}

/// A consumer configuration with fast group timings, for `topic` and a unique group.
pub(crate) fn config(topic: &str, handler: HandlerKind, database_url: Option<&str>) -> Config {
    let mut config = Config::new(
        statecast_testkit::kafka_brokers(),
        statecast_testkit::unique(handler.as_str()),
        vec![topic.to_owned()],
        handler,
    );
    config.database_url = database_url.map(str::to_owned);
    config.metrics_addr = free_addr();
    config.kafka_session_timeout_ms = 6000;
    config.kafka_statistics_interval_ms = 1000;
    config.retry_base_backoff_ms = 50;
    // Tests produce before the consumer starts; the email handler's default (`latest`) would
    // skip those records. Tests of the start position set it themselves.
    config.kafka_start_position = Some(profile_consumer::StartPosition::Earliest);
    config
}

/// A consumer running in this process.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), profile_consumer::Error>>,
}

impl Running {
    pub(crate) fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let addr = config.metrics_addr;
        let task = tokio::spawn(profile_consumer::run(config, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// Starts and waits until the consumer joined its group.
    pub(crate) async fn ready(config: Config) -> Self {
        let running = Self::start(config);
        running.wait_ready().await;
        running
    }

    pub(crate) async fn wait_ready(&self) {
        let addr = self.addr;
        wait_until("consumer ready", Duration::from_secs(30), || async move {
            http_get(addr, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
        })
        .await;
    }

    /// A metric's value from `/metrics` (0 when absent or not serving yet).
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        match http_get(self.addr, "/metrics").await {
            Ok((_, body)) => metric_value(&body, series).unwrap_or(0.0),
            Err(_) => 0.0,
        }
    }

    /// `consumer_records_total{result}`: records this consumer ended with `result`.
    pub(crate) async fn records(&self, result: &str) -> f64 {
        self.metric(&records_series(result)).await
    }

    /// Waits until at least `at_least` records ended with `result`.
    pub(crate) async fn wait_records(&self, result: &str, at_least: f64) {
        self.wait_metric(&records_series(result), at_least).await;
    }

    pub(crate) async fn wait_metric(&self, series: &str, at_least: f64) {
        let what = format!("{series} >= {at_least}");
        wait_until(&what, Duration::from_secs(30), || async {
            self.metric(series).await >= at_least
        })
        .await;
    }

    /// Cancels and waits; shutdown must take less than 30 s.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("consumer did not stop within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// The value of the exact `series` (name with labels) in Prometheus text.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|value| value.split_whitespace().next()?.parse().ok())
}

/// `GET path` over plain HTTP/1.1; returns status and body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `condition` every 100 ms until it holds; panics after `timeout`.
pub(crate) async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An event about `user` at `version`.
pub(crate) fn event(
    event_type: EventType,
    user: &str,
    version: i64,
    email: &str,
    country: &str,
) -> ProfileEvent {
    let deleted = event_type == EventType::UserDeleted;
    let snapshot = ProfileSnapshot {
        id: user.to_owned(),
        name: (!deleted).then(|| format!("User {user}")),
        email: (!deleted).then(|| email.to_owned()),
        country: (!deleted).then(|| country.to_owned()),
        version,
        updated_at: (!deleted).then(Utc::now),
    };
    ProfileEvent::new(event_type, snapshot, Utc::now())
}

/// A producer that sends one record per batch.
pub(crate) fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", statecast_testkit::kafka_brokers())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("acks", "all")
        .create()
        .unwrap()
}

/// Produces `event` keyed by its user, with the contract's headers and a trace context.
pub(crate) async fn produce(producer: &FutureProducer, topic: &str, event: &ProfileEvent) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: statecast_events::headers::CONTENT_TYPE,
            value: Some(statecast_events::CLOUDEVENTS_CONTENT_TYPE),
        })
        .insert(Header {
            key: statecast_events::headers::TRACEPARENT,
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        });
    produce_raw(producer, topic, &event.subject, &event.to_json(), headers)
        .await
        .unwrap();
}

pub(crate) async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    headers: OwnedHeaders,
) -> anyhow::Result<()> {
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    if let Err((e, _)) = producer.send(record, Duration::from_secs(10)).await {
        bail!("produce to {topic}: {e}");
    }
    Ok(())
}

/// A pool on the test's database.
pub(crate) async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

pub(crate) async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Mails in the sink's Maildir whose text contains `needle` (case-insensitive).
pub(crate) fn mails_containing(needle: &str) -> usize {
    let needle = needle.to_ascii_lowercase();
    let dir = statecast_testkit::maildir().join("new");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter(|bytes| {
            String::from_utf8_lossy(bytes)
                .to_ascii_lowercase()
                .contains(&needle)
        })
        .count()
}

/// The series of `consumer_records_total` for one result label.
fn records_series(result: &str) -> String {
    format!(r#"consumer_records_total{{result="{result}"}}"#)
}
