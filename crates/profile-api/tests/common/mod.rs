//! Shared set-up of the acceptance tests: one API replica on an ephemeral port over the real
//! PostgreSQL (a fresh database), Redis and broker (a fresh topic).
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use profile_api::{App, Config};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};
use serde_json::{Value, json};
use statecast_events::ProfileEvent;
use statecast_testkit as testkit;
use tokio_util::sync::CancellationToken;

/// A running replica; stops on drop.
pub struct TestApp {
    pub app: App,
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config for a fresh database and a fresh topic on the shared broker.
pub async fn fresh_config(prefix: &str) -> Config {
    let database = testkit::fresh_database().await.unwrap();
    let topic = testkit::unique(prefix);
    let brokers = testkit::kafka_brokers();
    Config::for_tests(&database, &testkit::redis_url(), &brokers, &topic)
}

/// Builds and serves a replica; with `relay`, also runs its outbox relay.
pub async fn start(config: Config, relay: bool) -> TestApp {
    let app = profile_api::build(config).await.unwrap();
    let shutdown = CancellationToken::new();
    if relay {
        app.spawn_relay(shutdown.clone());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(app.clone().serve(listener, shutdown.clone()));
    TestApp {
        app,
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        shutdown,
    }
}

/// A unique profile id.
pub fn user(prefix: &str) -> String {
    testkit::unique(prefix)
}

pub fn body(name: &str) -> Value {
    json!({"name": name, "email": "someone@example.com", "country": "PT"})
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn put(&self, id: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/v1/profiles/{id}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, id: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/profiles/{id}")))
            .send()
            .await
            .unwrap()
    }

    /// The body of `GET path` as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The body of `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path).await).unwrap()
    }

    /// A metric's value from `/metrics` (sum over label sets that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.get_text("/metrics").await, name, labels)
    }
}

pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

pub fn version_of(value: &Value) -> i64 {
    value["version"].as_i64().unwrap()
}

/// One record as the consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub event: ProfileEvent,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning with a fresh group until `expected` records arrived or
/// `timeout` passed.
pub async fn consume(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Received> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", testkit::unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => {
                let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap();
                let event = ProfileEvent::from_json(message.payload().unwrap_or_default()).unwrap();
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Received {
                    key,
                    event,
                    headers,
                });
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => break,
        }
    }
    out
}

/// Checks the delivery guarantees: per-user versions strictly increasing, no event id twice.
pub fn assert_ordered_and_unique(received: &[Received]) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for r in received {
        assert_eq!(r.key, r.event.subject, "record key must be the user id");
        assert!(
            ids.insert(r.event.id),
            "event {} delivered twice",
            r.event.id
        );
        let previous = last
            .insert(r.key.as_str(), r.event.profileversion)
            .unwrap_or(0);
        assert!(
            r.event.profileversion > previous,
            "user {}: version {} after {}",
            r.key,
            r.event.profileversion,
            previous
        );
    }
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
