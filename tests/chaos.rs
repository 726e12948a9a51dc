//! Reliability suite (issue 8): drive the whole local system, break its parts on purpose, count.
//!
//! Every scenario runs real processes (`profile-api`, `profile-consumer`) against the stack's
//! PostgreSQL, Redis and SMTP sink and a broker of its own, ends in an assertion, and appends one
//! row (scenario, operations, lost, duplicated, 5xx, verdict) to the report that `scripts/chaos`
//! prints. `CHAOS_SCALE=full` runs the sizes the issue names (5,000 writes over 200 users, 2,000
//! fuzz requests); the default is a smaller subset that `make test` runs in a few minutes.
//!
//! The local broker (tansu) keeps its log in memory, so a killed broker forgets everything not
//! yet consumed; the broker fault mid-stream is therefore a freeze (SIGSTOP/SIGCONT), which keeps
//! the log. A real kill and restart with an outbox backlog is covered by the Profile API's
//! broker-outage test and by `tests/trace.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use statecast_events::{EventType, ProfileEvent, ProfileSnapshot};
use statecast_system_tests::system::{System, SystemOptions, TOPIC, get_text, metric};
use statecast_testkit as kit;

fn full() -> bool {
    std::env::var("CHAOS_SCALE").is_ok_and(|s| s == "full")
}

/// One row of the printed table.
struct Row<'a> {
    scenario: &'a str,
    operations: usize,
    lost: usize,
    duplicated: usize,
    server_errors: usize,
}

impl Row<'_> {
    /// Appends the row to the report and fails the test if anything was lost, doubled or 5xx.
    fn record_and_assert(&self) {
        let verdict = if self.lost == 0 && self.duplicated == 0 && self.server_errors == 0 {
            "pass"
        } else {
            "FAIL"
        };
        let line = format!(
            "| {} | {} | {} | {} | {} | {} |",
            self.scenario, self.operations, self.lost, self.duplicated, self.server_errors, verdict
        );
        println!("{line}");
        let path = std::env::var_os("CHAOS_REPORT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("statecast-chaos-report.md"));
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
        assert_eq!(verdict, "pass", "{line}");
    }
}

const COUNTRIES: [&str; 4] = ["PT", "DE", "FR", "US"];

fn body(user: &str, i: usize) -> String {
    format!(
        r#"{{"name":"User {i}","email":"{user}@example.com","country":"{}"}}"#,
        COUNTRIES[i % COUNTRIES.len()]
    )
}

/// Outcome of a stream of PUTs.
#[derive(Default)]
struct Writes {
    /// (user, version) of every acknowledged write.
    acked: Vec<(String, i64)>,
    server_errors: usize,
    /// Non-2xx answers that were 503 problem+json with Retry-After (expected during outages).
    unavailable: usize,
    other: usize,
}

/// PUTs `ops` writes over `users` users with `concurrency` clients; `during(done)` is called as
/// writes complete, to inject faults at chosen points.
async fn write_stream(
    api_url: &str,
    users: usize,
    ops: usize,
    concurrency: usize,
    prefix: &str,
    during: impl Fn(usize) + Send + Sync + 'static,
) -> Writes {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let during = Arc::new(during);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, during) = (client.clone(), next.clone(), during.clone());
        let url = api_url.to_owned();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut out = Writes::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= ops {
                    break;
                }
                during(i);
                let user = format!("{prefix}{}", i % users);
                let response = client
                    .put(format!("{url}/v1/profiles/{user}"))
                    .header("content-type", "application/json")
                    .body(body(&user, i))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let json: serde_json::Value = r.json().await.unwrap_or_default();
                        let version = json["version"].as_i64().unwrap_or(-1);
                        out.acked.push((user, version));
                    }
                    Ok(r) if r.status().as_u16() == 503 => {
                        let problem = r
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
                        if problem && r.headers().contains_key("retry-after") {
                            out.unavailable += 1;
                        } else {
                            out.server_errors += 1;
                        }
                    }
                    Ok(r) if r.status().is_server_error() => out.server_errors += 1,
                    _ => out.other += 1,
                }
            }
            out
        }));
    }
    let mut all = Writes::default();
    for task in tasks {
        let part = task.await.unwrap();
        all.acked.extend(part.acked);
        all.server_errors += part.server_errors;
        all.unavailable += part.unavailable;
        all.other += part.other;
    }
    all
}

/// Polls `check` every 500 ms until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (lost, duplicated) of `expected` (user, version) pairs in the audit log.
async fn audit_gaps(pool: &sqlx::PgPool, expected: &HashSet<(String, i64)>) -> (usize, usize) {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select user_id, version, count(*) from audit_log group by user_id, version",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let seen: HashMap<(String, i64), i64> = rows.into_iter().map(|(u, v, c)| ((u, v), c)).collect();
    let lost = expected.iter().filter(|k| !seen.contains_key(*k)).count();
    let duplicated = seen.values().map(|c| (*c - 1).max(0) as usize).sum();
    (lost, duplicated)
}

async fn processed_count(pool: &sqlx::PgPool, group: &str) -> usize {
    sqlx::query_scalar::<_, i64>("select count(*) from processed_event where consumer_group = $1")
        .bind(group)
        .fetch_one(pool)
        .await
        .unwrap_or(0) as usize
}

/// The profile version cached in Redis for `user`: the API's cache entry is
/// `{"v": version, "k": "p", "p": profile, ...}` (`"k": "i"` marks an invalidated entry).
async fn cached_version(redis: &mut redis::aio::MultiplexedConnection, user: &str) -> Option<i64> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("profile:{user}"))
        .query_async(redis)
        .await
        .ok()?;
    let value: serde_json::Value = serde_json::from_str(&raw?).ok()?;
    (value["k"] == "p")
        .then(|| value["p"]["version"].as_i64())
        .flatten()
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(kit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Scenario 1: the broker freezes mid-stream; every acknowledged write reaches every group once,
/// in per-user order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_frozen_mid_stream_loses_and_doubles_nothing() {
    let (ops, users) = if full() { (5_000, 200) } else { (600, 60) };
    let system = Arc::new(System::start(SystemOptions::default()).await.unwrap());
    let prefix = kit::unique("s1").replace('-', "_") + "_";
    let broker = system.clone();
    let writes = write_stream(&system.api_url, users, ops, 16, &prefix, move |i| {
        if i == ops / 3 {
            broker.broker.pause();
        } else if i == 2 * ops / 3 {
            broker.broker.resume();
        }
    })
    .await;
    system.broker.resume();
    assert_eq!(
        writes.other + writes.unavailable,
        0,
        "every write answered 2xx"
    );

    let expected: HashSet<(String, i64)> = writes.acked.iter().cloned().collect();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (user, version) in &writes.acked {
        let entry = last.entry(user.clone()).or_default();
        *entry = (*entry).max(*version);
    }
    let pool = system.pool().await.unwrap();
    let total = expected.len();
    let groups: Vec<(String, String)> = system
        .consumers
        .iter()
        .map(|c| (c.handler.to_owned(), c.group.clone()))
        .collect();
    let mut conn = redis().await;
    // The email group is the slowest (one SMTP transaction per event, ~20/s against the local
    // sink; docs/benchmarks.md), so the wait grows with the stream.
    let wait = Duration::from_secs(60 + (total as u64) / 10);
    eventually(wait, || {
        let (pool, groups) = (&pool, &groups);
        async move {
            let mut done = true;
            for (handler, group) in groups {
                if handler != "cache-refresh" && processed_count(pool, group).await < total {
                    done = false;
                }
            }
            done
        }
    })
    .await;
    let (mut lost, duplicated) = audit_gaps(&pool, &expected).await;
    for (handler, group) in &groups {
        if handler != "cache-refresh" {
            lost += total.saturating_sub(processed_count(&pool, group).await);
        }
    }
    let mut cache_lost = 0;
    for (user, version) in &last {
        if cached_version(&mut conn, user).await != Some(*version) {
            cache_lost += 1;
        }
    }
    // Per-user order: nothing was skipped as stale, and audit rows are in version order. The
    // relay may publish an event again after a failed send (at-least-once); PostgreSQL handlers
    // recognise such a redelivery by its event id (a duplicate), while cache-refresh, which
    // deduplicates by version alone, counts an old redelivery as stale: it is left out here.
    let mut stale = 0.0;
    for consumer in system
        .consumers
        .iter()
        .filter(|c| c.handler != "cache-refresh")
    {
        let text = get_text(&format!("{}/metrics", consumer.url))
            .await
            .unwrap();
        stale += metric(&text, "consumer_records_total", &["stale"]);
    }
    let order: Vec<(String, i64)> =
        sqlx::query_as("select user_id, version from audit_log order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut seen: HashMap<&str, i64> = HashMap::new();
    let mut out_of_order = 0;
    for (user, version) in &order {
        let previous = seen.insert(user, *version).unwrap_or(0);
        if *version <= previous {
            out_of_order += 1;
        }
    }
    assert_eq!(stale, 0.0, "events applied out of order");
    assert_eq!(out_of_order, 0, "audit rows out of per-user order");
    Row {
        scenario: "1 broker frozen (SIGSTOP) during writes",
        operations: ops,
        lost: lost + cache_lost,
        duplicated,
        server_errors: writes.server_errors,
    }
    .record_and_assert();
}

/// Scenario 2: Redis disappears during a read load; no 5xx, reads fall back, the cache refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cut_during_reads_gives_no_server_error_and_the_cache_refills() {
    let proxy = kit::FaultProxy::start(redis_host_port().as_str())
        .await
        .unwrap();
    let system = System::start(SystemOptions {
        handlers: vec![],
        api_redis_addr: Some(proxy.addr().to_string()),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let users = 50;
    let prefix = kit::unique("s2").replace('-', "_") + "_";
    let seeded = write_stream(&system.api_url, users, users, 8, &prefix, |_| {}).await;
    assert_eq!(seeded.acked.len(), users);

    let seconds = if full() { 20 } else { 9 };
    let client = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, url, prefix) = (client.clone(), system.api_url.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            let (mut reads, mut errors, mut bypass) = (0usize, 0usize, 0usize);
            let mut i = t;
            while started.elapsed() < Duration::from_secs(seconds) {
                i += 7;
                let r = client
                    .get(format!("{url}/v1/profiles/{prefix}{}", i % users))
                    .send()
                    .await;
                reads += 1;
                match r {
                    Ok(r) if r.status().as_u16() == 200 => {
                        if r.headers().get("x-cache").is_some_and(|v| v == "bypass") {
                            bypass += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (reads, errors, bypass)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    proxy.restore();
    let (mut reads, mut errors, mut bypass) = (0, 0, 0);
    for task in tasks {
        let (r, e, b) = task.await.unwrap();
        reads += r;
        errors += e;
        bypass += b;
    }
    assert!(
        bypass > 0,
        "no read was served from PostgreSQL while Redis was cut"
    );
    let url = format!("{}/v1/profiles/{prefix}0", system.api_url);
    let refilled = eventually(Duration::from_secs(20), || {
        let (client, url) = (&client, &url);
        async move {
            let _ = client.get(url).send().await;
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.headers().get("x-cache").is_some_and(|v| v == "hit"))
        }
    })
    .await;
    assert!(refilled, "the cache did not refill after Redis came back");
    Row {
        scenario: "2 Redis cut during reads",
        operations: reads,
        lost: 0,
        duplicated: 0,
        server_errors: errors,
    }
    .record_and_assert();
}

fn redis_host_port() -> String {
    kit::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned()
}

fn postgres_host_port() -> String {
    let url = kit::database_url();
    let after_at = url.rsplit_once('@').map(|(_, r)| r).unwrap_or(&url);
    after_at.split('/').next().unwrap_or(after_at).to_owned()
}

/// Scenario 3: PostgreSQL disappears during writes: 503 problem+json meanwhile, nothing
/// half-applied, nothing acknowledged lost, writes succeed after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_during_writes_half_applies_and_loses_nothing() {
    let proxy = kit::FaultProxy::start(postgres_host_port().as_str())
        .await
        .unwrap();
    let system = Arc::new(
        System::start(SystemOptions {
            handlers: vec![],
            api_database_addr: Some(proxy.addr().to_string()),
            ..SystemOptions::default()
        })
        .await
        .unwrap(),
    );
    let proxy = Arc::new(proxy);
    let (ops, users) = if full() { (3_000, 200) } else { (600, 60) };
    let prefix = kit::unique("s3").replace('-', "_") + "_";
    let cut = proxy.clone();
    let writes = write_stream(&system.api_url, users, ops, 8, &prefix, move |i| {
        if i == ops / 3 {
            cut.cut();
        } else if i == 2 * ops / 3 {
            cut.restore();
        }
    })
    .await;
    proxy.restore();
    assert!(
        writes.unavailable > 0,
        "no write was refused while PostgreSQL was cut"
    );
    // After recovery every user accepts a write again.
    let after = write_stream(&system.api_url, users, users, 8, &prefix, |_| {}).await;
    let mut acked: HashMap<String, usize> = HashMap::new();
    for (user, _) in writes.acked.iter().chain(after.acked.iter()) {
        *acked.entry(user.clone()).or_default() += 1;
    }
    let pool = system.pool().await.unwrap();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select p.id, p.version, (select count(*) from outbox o where o.user_id = p.id) \
         from profile p where p.id like $1",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&pool)
    .await
    .unwrap();
    let (mut lost, mut half) = (0, 0);
    let versions: HashMap<String, (i64, i64)> =
        rows.into_iter().map(|(id, v, o)| (id, (v, o))).collect();
    for (user, count) in &acked {
        let (version, events) = versions.get(user).copied().unwrap_or((0, 0));
        if (version as usize) < *count {
            lost += count - version as usize;
        }
        // Atomic: every applied change has its event, and no event lacks its change.
        if version != events {
            half += 1;
        }
    }
    assert_eq!(after.acked.len(), users, "writes after recovery succeed");
    assert_eq!(
        half, 0,
        "a change without its outbox event (or the reverse)"
    );
    Row {
        scenario: "3 PostgreSQL cut during writes",
        operations: ops + users,
        lost: lost + half,
        duplicated: 0,
        server_errors: writes.server_errors + after.server_errors,
    }
    .record_and_assert();
}

/// Scenario 4: the audit consumer is SIGKILLed every few seconds while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_repeatedly_misses_and_doubles_nothing() {
    let (ops, users) = if full() { (5_000, 200) } else { (800, 80) };
    let mut system = System::start(SystemOptions {
        handlers: vec!["audit"],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let prefix = kit::unique("s4").replace('-', "_") + "_";
    let api_url = system.api_url.clone();
    let writer =
        tokio::spawn(async move { write_stream(&api_url, users, ops, 8, &prefix, |_| {}).await });
    let mut kills = 0;
    while !writer.is_finished() || kills < 3 {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        if let Some(position) = system.consumers.iter().position(|c| c.handler == "audit") {
            let consumer = system.consumers.remove(position);
            consumer.service.kill().await;
            kills += 1;
        }
        system.start_consumer("audit").await.unwrap();
    }
    let writes = writer.await.unwrap();
    let expected: HashSet<(String, i64)> = writes.acked.iter().cloned().collect();
    let pool = system.pool().await.unwrap();
    eventually(Duration::from_secs(180), || {
        let pool = &pool;
        let expected = &expected;
        async move { audit_gaps(pool, expected).await.0 == 0 }
    })
    .await;
    let (lost, duplicated) = audit_gaps(&pool, &expected).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(kills >= 3);
    Row {
        scenario: "4 consumer SIGKILLed every 2.5 s",
        operations: ops,
        lost,
        duplicated: duplicated + (rows as usize).saturating_sub(expected.len()),
        server_errors: writes.server_errors,
    }
    .record_and_assert();
}

fn event(user: &str, version: i64, country: &str) -> ProfileEvent {
    let event_type = if version == 1 {
        EventType::UserCreated
    } else {
        EventType::UserUpdated
    };
    ProfileEvent::new(
        event_type,
        ProfileSnapshot {
            id: user.to_owned(),
            name: Some(format!("{user} v{version}")),
            email: Some(format!("{user}@example.com")),
            country: Some(country.to_owned()),
            version,
            updated_at: Some(chrono::Utc::now()),
        },
        chrono::Utc::now(),
    )
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("application/cloudevents+json"),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Scenario 5: duplicated and reordered events straight into the topic end in the in-order state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_and_reordered_events_end_in_the_in_order_state() {
    let users = if full() { 200 } else { 40 };
    let versions = 5;
    let system = System::start(SystemOptions {
        handlers: vec!["audit", "analytics", "cache-refresh"],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let producer = producer(&system.broker.brokers());
    let mut rng = StdRng::seed_from_u64(5);
    let prefix = kit::unique("s5").replace('-', "_") + "_";
    let mut in_order: BTreeMap<String, (i64, &str)> = BTreeMap::new();
    let mut injected = 0;
    for u in 0..users {
        let user = format!("{prefix}{u}");
        let events: Vec<ProfileEvent> = (1..=versions)
            .map(|v| event(&user, v, COUNTRIES[(u + v as usize) % COUNTRIES.len()]))
            .collect();
        in_order.insert(
            user.clone(),
            (
                versions,
                COUNTRIES[(u + versions as usize) % COUNTRIES.len()],
            ),
        );
        // Every event twice, in a random order.
        let mut deliveries: Vec<&ProfileEvent> = events.iter().chain(events.iter()).collect();
        deliveries.shuffle(&mut rng);
        for e in deliveries {
            send(&producer, TOPIC, &user, &e.to_json()).await;
            injected += 1;
        }
    }
    let pool = system.pool().await.unwrap();
    let expected_changes = (users as i64) * versions;
    eventually(Duration::from_secs(120), || {
        let pool = &pool;
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "select sum(changes)::bigint from analytics_daily_changes",
            )
            .fetch_one(pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
                >= expected_changes
                && sqlx::query_scalar::<_, i64>(
                    "select count(*) from analytics_profile_state where version = $1",
                )
                .bind(versions)
                .fetch_one(pool)
                .await
                .unwrap_or(0)
                    >= users as i64
        }
    })
    .await;
    let state: HashMap<String, (i64, Option<String>)> =
        sqlx::query_as::<_, (String, i64, Option<String>)>(
            "select user_id, version, country from analytics_profile_state",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, v, c)| (u, (v, c)))
        .collect();
    let mut conn = redis().await;
    let mut wrong = 0;
    for (user, (version, country)) in &in_order {
        let got = state.get(user);
        if got != Some(&(*version, Some((*country).to_owned()))) {
            wrong += 1;
        }
        if cached_version(&mut conn, user).await != Some(*version) {
            wrong += 1;
        }
    }
    let mut expected_countries: HashMap<&str, i64> = HashMap::new();
    for (_, country) in in_order.values() {
        *expected_countries.entry(country).or_default() += 1;
    }
    let countries: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("select country, profiles from analytics_country")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (country, count) in &expected_countries {
        if countries.get(*country).copied().unwrap_or(0) != *count {
            wrong += 1;
        }
    }
    let changes: i64 = sqlx::query_scalar::<_, Option<i64>>(
        "select sum(changes)::bigint from analytics_daily_changes",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .unwrap_or(0);
    let audit_rows: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(audit_rows <= expected_changes, "an event audited twice");
    Row {
        scenario: "5 duplicated + reordered events injected",
        operations: injected,
        lost: wrong + (expected_changes - changes.min(expected_changes)) as usize,
        duplicated: (changes - expected_changes).max(0) as usize,
        server_errors: 0,
    }
    .record_and_assert();
}

/// Scenario 6: poison records land in the DLQ with reasons; good records around them are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_land_in_the_dlq_and_processing_continues() {
    let system = System::start(SystemOptions {
        handlers: vec!["audit"],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let producer = producer(&system.broker.brokers());
    let prefix = kit::unique("s6").replace('-', "_") + "_";
    let good_per_round = 5;
    let rounds = if full() { 40 } else { 10 };
    let mut mismatched = event("x", 2, "PT");
    mismatched.profileversion = 3;
    let poisons: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x81],
        Vec::new(),
        br#"{"specversion":"1.0","id":"nope","type":"UserUpdated"}"#.to_vec(),
        mismatched.to_json(),
    ];
    let (mut good, mut poison) = (0usize, 0usize);
    for round in 0..rounds {
        for g in 0..good_per_round {
            let user = format!("{prefix}{round}_{g}");
            send(&producer, TOPIC, &user, &event(&user, 1, "PT").to_json()).await;
            good += 1;
        }
        let bad = &poisons[round % poisons.len()];
        send(&producer, TOPIC, &format!("{prefix}poison{round}"), bad).await;
        poison += 1;
    }
    let pool = system.pool().await.unwrap();
    eventually(Duration::from_secs(120), || {
        let pool = &pool;
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from audit_log")
                .fetch_one(pool)
                .await
                .unwrap_or(0) as usize
                >= good
        }
    })
    .await;
    let audited: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();

    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", system.broker.brokers())
        .set("group.id", kit::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{TOPIC}.dlq")]).unwrap();
    let mut with_reason = 0;
    let mut dead = 0;
    while dead < poison {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(30), dlq.recv()).await
        else {
            break;
        };
        dead += 1;
        let key_ok = message
            .key()
            .is_some_and(|k| k.starts_with(format!("{prefix}poison").as_bytes()));
        let reason = message
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == "dlq-reason" && h.value.is_some()));
        if key_ok && reason {
            with_reason += 1;
        }
    }
    Row {
        scenario: "6 poison records injected",
        operations: good + poison,
        lost: good.saturating_sub(audited as usize) + poison.saturating_sub(with_reason),
        duplicated: (audited as usize).saturating_sub(good),
        server_errors: 0,
    }
    .record_and_assert();
}

/// One generated request of the fuzz run.
struct Case {
    method: reqwest::Method,
    path: String,
    content_type: Option<&'static str>,
    precondition: Option<(&'static str, String)>,
    body: Vec<u8>,
}

fn nested(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn random_json(rng: &mut StdRng, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match rng.random_range(0..if depth > 3 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::from(rng.random::<i64>()),
        3 => Value::from("x".repeat(rng.random_range(0..300))),
        4 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "name",
                "email",
                "country",
                "id",
                "version",
                "updatedAt",
                "zzz",
            ];
            Value::Object(
                (0..rng.random_range(0..5))
                    .map(|_| {
                        (
                            keys[rng.random_range(0..keys.len())].to_owned(),
                            random_json(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

fn generate(rng: &mut StdRng, known: &str) -> Case {
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
        reqwest::Method::POST,
        reqwest::Method::OPTIONS,
    ];
    let method = methods[rng.random_range(0..methods.len())].clone();
    let id = match rng.random_range(0..8) {
        0 => known.to_owned(),
        1 => "a".repeat(rng.random_range(60..80)),
        2 => "%C3%A9t%C3%A9".to_owned(),
        3 => "..%2F..%2Fetc".to_owned(),
        4 => "%00".to_owned(),
        5 => "a%20b".to_owned(),
        _ => format!("fz{}", rng.random_range(0..50)),
    };
    let path = match rng.random_range(0..10) {
        0 => format!("/v1/profiles/{id}/extra"),
        1 => "/v1/profiles/".to_owned(),
        2 => format!("/v2/profiles/{id}"),
        _ => format!("/v1/profiles/{id}"),
    };
    let content_type = [
        Some("application/json"),
        Some("application/merge-patch+json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ][rng.random_range(0..6)];
    let body: Vec<u8> = match rng.random_range(0..10) {
        0 => br#"{"name":"Fuzz","email":"fuzz@example.com","country":"PT"}"#.to_vec(),
        1 => nested(rng.random_range(50..3_000)).into_bytes(),
        2 => format!(r#"{{"name":"{}"}}"#, "x".repeat(70 * 1024)).into_bytes(),
        3 => (0..rng.random_range(1..200))
            .map(|_| rng.random())
            .collect(),
        4 => br#"{"name": 5, "email": [], "country": {}}"#.to_vec(),
        5 => br#"{"name":"Fuzz","email":"fuzz@example.com","country":"PT""#.to_vec(),
        6 => Vec::new(),
        _ => serde_json::to_vec(&random_json(rng, 0)).unwrap_or_default(),
    };
    let precondition = match rng.random_range(0..5) {
        0 => Some(("if-match", format!("\"{}\"", rng.random_range(-2..5)))),
        1 => Some(("if-none-match", "garbage, \"".to_owned())),
        2 => Some(("if-match", "*".to_owned())),
        _ => None,
    };
    Case {
        method,
        path,
        content_type,
        precondition,
        body,
    }
}

/// Scenario 7: generated bad input never yields a 5xx or a non-problem error, and the API lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_bad_input_never_yields_a_server_error() {
    let system = System::start(SystemOptions {
        handlers: vec![],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let known = kit::unique("fz").replace('-', "_");
    // A fresh connection per request: a server may close a connection whose request body it did
    // not read (a 404 or 405 ignores the body), and a pooled client would then blame the *next*
    // request on that connection for the close.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let created = client
        .put(format!("{}/v1/profiles/{known}", system.api_url))
        .header("content-type", "application/json")
        .body(r#"{"name":"Known","email":"known@example.com","country":"PT"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let mut rng = StdRng::seed_from_u64(7);
    let requests = if full() { 5_000 } else { 2_000 };
    let (mut server_errors, mut not_problem, mut failures) = (0, 0, Vec::new());
    for _ in 0..requests {
        let case = generate(&mut rng, &known);
        let mut request = client
            .request(
                case.method.clone(),
                format!("{}{}", system.api_url, case.path),
            )
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        if let Some((name, value)) = &case.precondition {
            request = request.header(*name, value.as_str());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                server_errors += 1;
                failures.push(format!(
                    "{} {} ({} body bytes, {:?}): transport error {e:?}",
                    case.method,
                    case.path,
                    case.body.len(),
                    case.content_type
                ));
                continue;
            }
        };
        let status = response.status();
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        if status.is_server_error() {
            server_errors += 1;
            failures.push(format!("{} {} -> {status}", case.method, case.path));
        } else if status.is_client_error() {
            let text = response.text().await.unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if !problem || json["status"].as_u64() != Some(u64::from(status.as_u16())) {
                not_problem += 1;
                failures.push(format!(
                    "{} {} -> {status} not problem+json: {}",
                    case.method,
                    case.path,
                    text.chars().take(120).collect::<String>()
                ));
            }
        }
    }
    let alive = client
        .get(format!("{}/healthz", system.api_url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(alive, "the API died under generated input");
    assert!(failures.is_empty(), "{failures:#?}");
    Row {
        scenario: "7 generated bad input (seeded fuzz)",
        operations: requests,
        lost: not_problem,
        duplicated: 0,
        server_errors,
    }
    .record_and_assert();
}

/// Scenario 8: invalid ProfileConsumer resources are refused by the CRD: by its OpenAPI schema,
/// or, for the cross-field rules, by its CEL rules (evaluated offline, as the API server would
/// after the schema accepted the object). The operator's own copy of the rules must agree.
#[test]
fn invalid_profile_consumers_are_refused_by_the_crd() {
    let root = kit::workspace_root();
    let crd: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("manifests/crd/profileconsumers.statecast.dev.yaml"))
            .unwrap(),
    )
    .unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let validator = jsonschema::validator_for(schema).unwrap();
    let mut refused = 0;
    let mut accepted_invalid = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(root.join("manifests/examples/invalid")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let object: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let schema_refuses = !validator.is_valid(&object);
        let cel_refuses =
            !schema_refuses && !kit::cel_violations(schema, &object).unwrap().is_empty();
        let spec: Result<profile_operator::crd::ProfileConsumerSpec, _> =
            serde_json::from_value(object["spec"].clone());
        let operator_refuses = spec.map(|s| s.validate().is_err()).unwrap_or(true);
        assert!(
            operator_refuses,
            "{}: the operator's rules accept it",
            path.display()
        );
        if schema_refuses || cel_refuses {
            refused += 1;
        } else {
            accepted_invalid.push(path.display().to_string());
        }
    }
    assert!(files >= 5, "expected at least 5 invalid examples");
    Row {
        scenario: "8 invalid ProfileConsumer resources",
        operations: files,
        lost: accepted_invalid.len(),
        duplicated: 0,
        server_errors: 0,
    }
    .record_and_assert();
    assert_eq!(refused, files, "accepted: {accepted_invalid:?}");
}
