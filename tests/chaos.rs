//! Reliability suite (issue 8): drive the whole local system, break its parts on purpose, count.
//!
//! Every scenario runs real processes (`profile-api`, `profile-consumer`) against the stack's
//! PostgreSQL, Redis and SMTP sink and a broker of its own, ends in an assertion, and appends one
//! row (scenario, operations, lost, duplicated, 5xx, verdict) to the report that `scripts/chaos`
//! prints. `CHAOS_SCALE=full` runs the sizes the issue names (5,000 writes over 200 users, 2,000
//! fuzz requests); the default is a smaller subset that `make test` runs in a few minutes.
//!
//! The local broker (tansu) keeps its log in SQLite, so a killed broker restarts with its topics,
//! records and committed offsets: scenario 1 is a real SIGKILL and restart, 1b a freeze.
//!
//! Counts come from `statecast_system_tests::effects` (downstream effects against acknowledged
//! writes), never from the consumers' own bookkeeping; `table_rows_fail_when_the_guarantee_is_broken`
//! breaks a handler on purpose and checks the row says FAIL.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use statecast_events::{EventType, ProfileEvent, ProfileSnapshot};
use statecast_system_tests::effects::{self, Expected};
use statecast_system_tests::system::{System, SystemOptions, TOPIC};
use statecast_testkit as kit;

fn full() -> bool {
    std::env::var("CHAOS_SCALE").is_ok_and(|s| s == "full")
}

/// A count of the table: measured, or `n/a` where the column does not apply to the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Measured(usize),
    NotApplicable,
}

use Count::{Measured, NotApplicable};

impl Count {
    fn is_zero(self) -> bool {
        matches!(self, Measured(0) | NotApplicable)
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Measured(n) => write!(f, "{n}"),
            NotApplicable => f.write_str("n/a"),
        }
    }
}

/// The table's header, as `scripts/chaos` prints it.
const HEADER: &str =
    "| scenario | operations | lost | duplicated | dead-lettered | wrong answers | 5xx | verdict |";

/// One row of the printed table. Every count comes from a source the code under test does not
/// write for bookkeeping: what the client was told (acknowledged writes, answers) against what
/// happened downstream (effect rows per event id, mails per Message-ID in the SMTP sink,
/// records in the dead-letter topic).
struct Row<'a> {
    scenario: &'a str,
    operations: usize,
    /// Acknowledged changes whose effect is missing somewhere.
    lost: Count,
    /// Effects applied more than once (counted before any unique constraint could hide them).
    duplicated: Count,
    /// Records of live events in the dead-letter topic (poison records excepted).
    dead_lettered: Count,
    /// Answers or verdicts that were wrong without being a loss: a non-problem error, a stale
    /// read, an invalid resource accepted.
    wrong: Count,
    server_errors: Count,
}

impl Row<'_> {
    fn passes(&self) -> bool {
        [
            self.lost,
            self.duplicated,
            self.dead_lettered,
            self.wrong,
            self.server_errors,
        ]
        .iter()
        .all(|c| c.is_zero())
    }

    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.operations,
            self.lost,
            self.duplicated,
            self.dead_lettered,
            self.wrong,
            self.server_errors,
            if self.passes() { "pass" } else { "FAIL" }
        )
    }

    /// Appends the row to the report and fails the test if anything was lost, doubled,
    /// dead-lettered, wrong or 5xx.
    fn record_and_assert(&self) {
        let line = self.line();
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
        assert!(self.passes(), "{line}");
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

impl Writes {
    /// Every write sent, whatever its answer.
    fn attempted(&self) -> usize {
        self.acked.len() + self.server_errors + self.unavailable + self.other
    }
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
    let targets = Targets::new(&[api_url.to_owned()]);
    write_stream_to(&targets, users, ops, concurrency, prefix, during).await
}

/// The API replicas a write stream spreads its requests over; changed while it runs as
/// replicas die and start.
#[derive(Clone)]
struct Targets(Arc<std::sync::Mutex<Vec<String>>>);

impl Targets {
    fn new(urls: &[String]) -> Self {
        Self(Arc::new(std::sync::Mutex::new(urls.to_vec())))
    }

    /// The replica for write `i` (round robin over the current ones).
    fn pick(&self, i: usize) -> String {
        let urls = self.0.lock().unwrap();
        urls[i % urls.len()].clone()
    }

    fn add(&self, url: &str) {
        self.0.lock().unwrap().push(url.to_owned());
    }

    fn remove(&self, url: &str) {
        self.0.lock().unwrap().retain(|u| u != url);
    }
}

/// [`write_stream`] over several replicas: write `i` goes to `targets.pick(i)`. A write that
/// fails in transport (its replica died) is not retried: it may or may not have committed.
async fn write_stream_to(
    targets: &Targets,
    users: usize,
    ops: usize,
    concurrency: usize,
    prefix: &str,
    during: impl Fn(usize) + Send + Sync + 'static,
) -> Writes {
    write_stream_while(targets, users, concurrency, prefix, during, move |i| {
        i < ops
    })
    .await
}

/// [`write_stream_to`] for as long as `more(i)` says write `i` is wanted: for faults that must
/// land while writes are still flowing however slow the machine, the stream runs until the
/// faults are done rather than for a fixed count.
async fn write_stream_while(
    targets: &Targets,
    users: usize,
    concurrency: usize,
    prefix: &str,
    during: impl Fn(usize) + Send + Sync + 'static,
    more: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> Writes {
    let more = Arc::new(more);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let during = Arc::new(during);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, during) = (client.clone(), next.clone(), during.clone());
        let (targets, more) = (targets.clone(), more.clone());
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut out = Writes::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if !more(i) {
                    break;
                }
                during(i);
                let user = format!("{prefix}{}", i % users);
                let url = targets.pick(i);
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
                    Ok(_) => out.other += 1,
                    Err(_) => {
                        // The replica is gone (killed): do not spin through the stream.
                        out.other += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
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

/// How the broker fails in scenario 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerFault {
    /// SIGKILL a third of the way in, restart (same durable log) two thirds in.
    Crash,
    /// SIGSTOP a third of the way in, SIGCONT two thirds in: connections stay open, nothing
    /// answers (a long GC pause, a network partition).
    Freeze,
}

/// Scenario 1: the broker crashes (1) or freezes (1b) mid-stream; every acknowledged write
/// reaches every group once, in per-user order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_and_restarted_mid_stream_loses_and_doubles_nothing() {
    broker_fault_mid_stream(
        BrokerFault::Crash,
        "1 broker SIGKILLed and restarted during writes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_frozen_mid_stream_loses_and_doubles_nothing() {
    broker_fault_mid_stream(
        BrokerFault::Freeze,
        "1b broker frozen (SIGSTOP) during writes",
    )
    .await;
}

async fn broker_fault_mid_stream(fault: BrokerFault, scenario: &'static str) {
    let (ops, users) = if full() { (5_000, 200) } else { (600, 60) };
    let mut system = System::start(SystemOptions::default()).await.unwrap();
    let prefix = kit::unique("s1").replace('-', "_") + "_";
    let progress = Progress::default();
    let writer = {
        let (url, during) = (system.api_url.clone(), progress.callback());
        tokio::spawn(async move { write_stream(&url, users, ops, 16, &prefix, during).await })
    };
    progress.reached(ops / 3).await;
    match fault {
        BrokerFault::Crash => system.broker.kill().await,
        BrokerFault::Freeze => system.broker.pause(),
    }
    // Writes go on meanwhile: the API commits them with their outbox rows (the wait fails if
    // they stall while the broker is down).
    progress.reached(2 * ops / 3).await;
    match fault {
        BrokerFault::Crash => system.broker.restart().await.unwrap(),
        BrokerFault::Freeze => system.broker.resume(),
    }
    let writes = writer.await.unwrap();
    assert_eq!(
        writes.other + writes.unavailable,
        0,
        "every write answered 2xx"
    );

    let pool = system.pool().await.unwrap();
    let expected = Expected::from_acked(&pool, &writes.acked).await.unwrap();
    // The email group is the slowest, so the wait grows with the stream.
    let wait = Duration::from_secs(90 + (expected.total() as u64) / 10);
    let witness = system.witness().await.unwrap();
    let effects = witness.settle(&expected, wait).await.unwrap();
    let missing =
        effects::sample_missing(&expected, &effects::audit_effects(&pool).await.unwrap(), 5);
    println!("{scenario}: {effects:?}; audit missing e.g. {missing:?}");
    Row {
        scenario,
        operations: ops,
        lost: Measured(effects.lost()),
        duplicated: Measured(effects.duplicated()),
        dead_lettered: Measured(effects.dead_letters),
        // Audit rows and mails out of per-user order.
        wrong: Measured(effects.out_of_order()),
        server_errors: Measured(writes.server_errors),
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
            let (mut reads, mut errors, mut bypass, mut wrong) = (0usize, 0usize, 0usize, 0usize);
            let mut i = t;
            while started.elapsed() < Duration::from_secs(seconds) {
                i += 7;
                let r = client
                    .get(format!("{url}/v1/profiles/{prefix}{}", i % users))
                    .send()
                    .await;
                reads += 1;
                let user = format!("{prefix}{}", i % users);
                match r {
                    Ok(r) if r.status().as_u16() == 200 => {
                        if r.headers().get("x-cache").is_some_and(|v| v == "bypass") {
                            bypass += 1;
                        }
                        // The answer must be the acknowledged profile (version 1, its id).
                        let json: serde_json::Value = r.json().await.unwrap_or_default();
                        if json["id"] != user.as_str() || json["version"] != 1 {
                            wrong += 1;
                        }
                    }
                    Ok(r) if r.status().is_server_error() => errors += 1,
                    _ => wrong += 1,
                }
            }
            (reads, errors, bypass, wrong)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    proxy.restore();
    let (mut reads, mut errors, mut bypass, mut wrong) = (0, 0, 0, 0);
    for task in tasks {
        let (r, e, b, w) = task.await.unwrap();
        reads += r;
        errors += e;
        bypass += b;
        wrong += w;
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
        lost: NotApplicable,
        duplicated: NotApplicable,
        dead_lettered: NotApplicable,
        wrong: Measured(wrong),
        server_errors: Measured(errors),
    }
    .record_and_assert();
}

fn redis_host_port() -> String {
    kit::host_port(&kit::redis_url())
}

fn postgres_host_port() -> String {
    kit::host_port(&kit::database_url())
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
    // Two events for one change (same user and version) would be a duplicate downstream.
    let doubled: i64 = sqlx::query_scalar(
        "select count(*) - count(distinct (user_id, payload->>'profileversion')) \
         from outbox where user_id like $1",
    )
    .bind(format!("{prefix}%"))
    .fetch_one(&pool)
    .await
    .unwrap();
    Row {
        scenario: "3 PostgreSQL cut during writes",
        operations: ops + users,
        lost: Measured(lost),
        duplicated: Measured(usize::try_from(doubled).unwrap_or(usize::MAX)),
        dead_lettered: NotApplicable,
        // A change without its outbox event, or an event without its change.
        wrong: Measured(half),
        server_errors: Measured(writes.server_errors + after.server_errors),
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
    let pool = system.pool().await.unwrap();
    let expected = Expected::from_acked(&pool, &writes.acked).await.unwrap();
    eventually(Duration::from_secs(180), || {
        let (pool, expected) = (&pool, &expected);
        async move {
            let effects = effects::audit_effects(pool).await.unwrap_or_default();
            effects::tally(expected, &effects).lost == 0
        }
    })
    .await;
    let audit = effects::tally(&expected, &effects::audit_effects(&pool).await.unwrap());
    let dead = effects::records_in_topic(&system.broker.brokers(), &format!("{TOPIC}.dlq"))
        .await
        .unwrap();
    assert!(kills >= 3);
    if audit.lost > 0 {
        // Which consumer should have had the partitions, and what it said.
        for consumer in &system.consumers {
            let log = consumer.service.log_text();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            println!(
                "--- {} ({}) log tail:\n{}",
                consumer.handler,
                consumer.group,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    Row {
        scenario: "4 consumer SIGKILLed every 2.5 s",
        operations: ops,
        lost: Measured(audit.lost),
        duplicated: Measured(audit.duplicated),
        dead_lettered: Measured(dead),
        wrong: NotApplicable,
        server_errors: Measured(writes.server_errors),
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
    let (audit_rows, audited_events): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct event_id) from audit_log")
            .fetch_one(&pool)
            .await
            .unwrap();
    let dead = effects::records_in_topic(&system.broker.brokers(), &format!("{TOPIC}.dlq"))
        .await
        .unwrap();
    Row {
        scenario: "5 duplicated + reordered events injected",
        operations: injected,
        lost: Measured(
            (expected_changes - changes.min(expected_changes)) as usize
                + (expected_changes - audited_events.min(expected_changes)) as usize,
        ),
        duplicated: Measured(
            (changes - expected_changes).max(0) as usize
                + (audit_rows - audited_events).max(0) as usize,
        ),
        dead_lettered: Measured(dead),
        // Final state different from the in-order one (analytics state, cache, country counts).
        wrong: Measured(wrong),
        server_errors: NotApplicable,
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
    let (audited, audited_events): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct event_id) from audit_log")
            .fetch_one(&pool)
            .await
            .unwrap();
    let in_dlq = effects::records_in_topic(&system.broker.brokers(), &format!("{TOPIC}.dlq"))
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
        lost: Measured(good.saturating_sub(audited_events as usize)),
        duplicated: Measured((audited - audited_events).max(0) as usize),
        // Good records in the dead-letter topic: everything there beyond the poison.
        dead_lettered: Measured(in_dlq.saturating_sub(poison)),
        // Poison records not dead-lettered with their key and reason.
        wrong: Measured(poison.saturating_sub(with_reason)),
        server_errors: NotApplicable,
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
        lost: NotApplicable,
        duplicated: NotApplicable,
        dead_lettered: NotApplicable,
        // 4xx answers that are not problem+json with their status.
        wrong: Measured(not_problem),
        server_errors: Measured(server_errors),
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
        lost: NotApplicable,
        duplicated: NotApplicable,
        dead_lettered: NotApplicable,
        // Invalid resources the CRD would accept.
        wrong: Measured(accepted_invalid.len()),
        server_errors: NotApplicable,
    }
    .record_and_assert();
    assert_eq!(refused, files, "accepted: {accepted_invalid:?}");
}

/// Scenario 9: every consumer's dependencies (PostgreSQL; Redis for cache-refresh; SMTP for
/// email) cut for far longer than the old retry budget (5 attempts, ~1.5 s) while events flow:
/// consumers report not ready, nothing is dead-lettered, every effect is there once afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_dependencies_cut_for_long_dead_letter_nothing_and_lose_nothing() {
    let (ops, users) = if full() { (2_000, 100) } else { (300, 40) };
    let database = kit::FaultProxy::start(&postgres_host_port()).await.unwrap();
    let redis_proxy = kit::FaultProxy::start(&redis_host_port()).await.unwrap();
    let smtp = kit::FaultProxy::start(&kit::host_port(&kit::smtp_url()))
        .await
        .unwrap();
    let system = System::start(SystemOptions {
        consumer_database_addr: Some(database.addr().to_string()),
        consumer_redis_addr: Some(redis_proxy.addr().to_string()),
        consumer_smtp_addr: Some(smtp.addr().to_string()),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let prefix = kit::unique("s9").replace('-', "_") + "_";
    let first = write_stream(&system.api_url, users, ops / 2, 8, &prefix, |_| {}).await;
    for proxy in [&database, &redis_proxy, &smtp] {
        proxy.cut();
    }
    let second = {
        let url = system.api_url.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move { write_stream(&url, users, ops / 2, 8, &prefix, |_| {}).await })
    };
    // Every consumer notices (its records fail) and says so on /readyz.
    let all_unready = eventually(Duration::from_secs(60), || {
        let consumers = &system.consumers;
        async move {
            let mut unready = 0;
            for consumer in consumers {
                if kit_status(&format!("{}/readyz", consumer.url)).await == Some(503) {
                    unready += 1;
                }
            }
            unready == consumers.len()
        }
    })
    .await;
    let mut writes = second.await.unwrap();
    tokio::time::sleep(Duration::from_secs(if full() { 20 } else { 8 })).await;
    for proxy in [&database, &redis_proxy, &smtp] {
        proxy.restore();
    }
    assert!(
        all_unready,
        "not every consumer reported not ready during the cut"
    );
    writes.acked.extend(first.acked);
    writes.server_errors += first.server_errors;

    let pool = system.pool().await.unwrap();
    let expected = Expected::from_acked(&pool, &writes.acked).await.unwrap();
    let witness = system.witness().await.unwrap();
    let effects = witness
        .settle(&expected, Duration::from_secs(120))
        .await
        .unwrap();
    let mut ready_again = 0;
    for consumer in &system.consumers {
        if kit_status(&format!("{}/readyz", consumer.url)).await == Some(200) {
            ready_again += 1;
        }
    }
    println!("9: {effects:?}, ready again {ready_again}");
    Row {
        scenario: "9 consumers' PostgreSQL, Redis and SMTP cut during writes",
        operations: ops,
        lost: Measured(effects.lost()),
        duplicated: Measured(effects.duplicated()),
        dead_lettered: Measured(effects.dead_letters),
        // Consumers not ready again after the dependencies came back, and effects out of
        // per-user order.
        wrong: Measured(system.consumers.len() - ready_again + effects.out_of_order()),
        server_errors: Measured(writes.server_errors),
    }
    .record_and_assert();
}

/// The relay leader's session in the system's database (the backend holding the advisory
/// lock): its pid, when its open transaction began (if one is open), and whether that
/// transaction has taken a batch's rows (`FOR UPDATE SKIP LOCKED`, the last statement before
/// the sends).
async fn relay_leader(pool: &sqlx::PgPool) -> Option<(i32, Option<String>, bool)> {
    sqlx::query_as::<_, (i32, Option<String>, bool)>(
        "select a.pid, a.xact_start::text, a.query like '%FOR UPDATE SKIP LOCKED%' \
         from pg_locks l join pg_stat_activity a on a.pid = l.pid \
         where l.locktype = 'advisory' and l.granted and l.objsubid = 1 \
           and l.database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

/// The transaction relay leader `pid` has open, if any, and whether it took a batch's rows.
async fn leader_transaction(pool: &sqlx::PgPool, pid: i32) -> Option<(String, bool)> {
    let (leader, started, took_rows) = relay_leader(pool).await?;
    (leader == pid).then_some((started?, took_rows))
}

/// Waits for the moment to kill relay leader `pid` mid-batch: inside the transaction of a batch
/// (its rows taken `FOR UPDATE`, not yet marked published), preferably once the topic has grown
/// since the batch began, i.e. once the broker has acknowledged part of the batch, so that the
/// standby must send those records again. The broker acknowledges a batch in a few steps, some
/// seconds apart here, and the relay marks the rows right after the last one, so such a moment is
/// not always caught: after 5 s any batch in progress with rows left to publish will do. Returns
/// whether the preferred moment was caught.
async fn mid_batch(pool: &sqlx::PgPool, pid: i32, topic: &effects::TopicSize) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let give_up = deadline + Duration::from_secs(30);
    let mut batches = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the relay leader was never seen inside a batch with rows to publish"
        );
        let Some((batch, true)) = leader_transaction(pool, pid).await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        if tokio::time::Instant::now() > deadline {
            if unpublished(pool).await.is_empty() {
                continue;
            }
            println!("10: no batch caught with records on the broker among {batches}");
            return false;
        }
        batches += 1;
        let at_start = topic.now();
        loop {
            let grown = at_start >= 0 && topic.now() > at_start;
            if leader_transaction(pool, pid).await.map(|(t, _)| t) != Some(batch.clone()) {
                break;
            }
            if grown {
                return true;
            }
            // Gently: the broker serves the whole system.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until a relay other than `not` leads; returns its backend pid.
async fn wait_for_leader(pool: &sqlx::PgPool, not: Option<i32>, timeout: Duration) -> i32 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some((pid, _, _)) = relay_leader(pool).await
            && Some(pid) != not
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relay took the leader lock within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Event ids of the outbox not marked published.
async fn unpublished(pool: &sqlx::PgPool) -> HashSet<String> {
    sqlx::query_scalar("select event_id::text from outbox where published_at is null")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// A write stream's progress, for faults at chosen points.
#[derive(Clone, Default)]
struct Progress(Arc<AtomicUsize>);

impl Progress {
    fn callback(&self) -> impl Fn(usize) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |i| {
            seen.fetch_max(i, Ordering::SeqCst);
        }
    }

    /// Waits until write `n` has started (the stream must not stall for two minutes).
    async fn reached(&self, n: usize) {
        let wait = async {
            while self.0.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .unwrap_or_else(|_| panic!("the write stream stalled before write {n}"));
    }
}

/// Scenario 10: the API replica leading the relay is SIGKILLed in the middle of a batch (rows
/// taken, sends in flight) while a second replica stands by; writes go on through both. The
/// standby takes over and re-sends what the dead leader had not marked published: every
/// acknowledged write reaches every group once, in per-user order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_leader_killed_mid_batch_loses_doubles_and_reorders_nothing() {
    let (ops, users, kills) = if full() {
        (5_000, 200, 3)
    } else {
        (600, 60, 1)
    };
    // The relay's own send timeout (10 s): a send that times out makes librdkafka bump its
    // idempotent producer's epoch itself, which the patched broker accepts
    // (scripts/tansu/storage-epoch-bump.patch, tests/broker.rs).
    let mut system = System::start(SystemOptions::default()).await.unwrap();
    let pool = system.pool().await.unwrap();
    // The system's replica is the only relay so far: it leads; the next one stands by.
    let mut leader_pid = wait_for_leader(&pool, None, Duration::from_secs(30)).await;
    let mut replicas = vec![system.start_api_replica().await.unwrap()];
    let targets = Targets::new(&[system.api_url.clone(), replicas[0].url.clone()]);
    let prefix = kit::unique("s10").replace('-', "_") + "_";
    let progress = Progress::default();
    // At least `ops` writes, and on until the last kill: on a loaded machine a fixed count can
    // end before a batch is caught, and a kill then cuts nothing.
    let kills_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (targets, during) = (targets.clone(), progress.callback());
        let done = kills_done.clone();
        let more = move |i| i < ops || !done.load(Ordering::SeqCst);
        tokio::spawn(
            async move { write_stream_while(&targets, users, 16, &prefix, during, more).await },
        )
    };
    let topic_size = effects::TopicSize::new(&system.broker.brokers(), TOPIC).unwrap();
    let (mut sent_unmarked, mut batches_cut, mut caught_sending) = (0, 0, 0);
    for k in 0..kills {
        // Early enough that the burst is still on when the kill comes (see `mid_batch`).
        progress.reached(ops * (k + 1) / (kills + 2)).await;
        // Catch the leader inside a batch: its transaction open on the rows it took, part of
        // them on the broker already.
        if mid_batch(&pool, leader_pid, &topic_size).await {
            caught_sending += 1;
        }
        if k == 0 {
            targets.remove(&system.api_url);
            system.kill_api().await;
        } else {
            targets.remove(&replicas[k - 1].url);
            replicas[k - 1].service.crash().await;
        }
        batches_cut += 1;
        // What the dead leader sent but never marked (the broker appends what reached it): the
        // new leader sends it again. Read before the new leader can publish (it waits out two
        // heartbeats, 2 s, after taking the lock).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let left = unpublished(&pool).await;
        let brokers = system.broker.brokers();
        match effects::high_watermarks(&brokers, TOPIC).await {
            Ok(highs) => match effects::topic_records_until(&brokers, TOPIC, highs).await {
                Ok(in_topic) => {
                    sent_unmarked += in_topic
                        .iter()
                        .filter(|r| left.contains(&r.event_id))
                        .count();
                }
                Err(error) => println!("10: cannot read the topic after kill {k}: {error}"),
            },
            // Only the evidence of re-sent records is lost; the row's counts come later.
            Err(error) => println!("10: no watermarks after kill {k}: {error}"),
        }
        leader_pid = wait_for_leader(&pool, Some(leader_pid), Duration::from_secs(30)).await;
        if k + 1 < kills {
            let standby = system.start_api_replica().await.unwrap();
            targets.add(&standby.url);
            replicas.push(standby);
        }
    }
    kills_done.store(true, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    let expected = Expected::from_acked(&pool, &writes.acked).await.unwrap();
    let wait = Duration::from_secs(90 + (expected.total() as u64) / 10);
    let effects = system
        .witness()
        .await
        .unwrap()
        .settle(&expected, wait)
        .await
        .unwrap();
    println!(
        "10: {} writes acknowledged ({} cut off by the kills, {} of them committed), \
         {batches_cut} batches cut ({caught_sending} after the broker acknowledged part of \
         them), {sent_unmarked} records sent but not marked published at the kills; {effects:?}",
        writes.acked.len(),
        writes.other,
        expected.committed() - expected.total()
    );
    assert_eq!(writes.unavailable, 0, "no write was refused");
    Row {
        scenario: "10 relay leader SIGKILLed mid-batch, standby takes over",
        operations: writes.attempted(),
        lost: Measured(effects.lost()),
        duplicated: Measured(effects.duplicated()),
        dead_lettered: Measured(effects.dead_letters),
        // Audit rows and mails out of per-user order.
        wrong: Measured(effects.out_of_order()),
        server_errors: Measured(writes.server_errors),
    }
    .record_and_assert();
}

/// Scenario 11: the API is SIGKILLed during a burst of writes and started again (as its
/// supervisor would). Checked against PostgreSQL and the topic itself: every write acknowledged
/// before a kill has its outbox event, its record in the topic and its audit row; no event
/// (outbox row or record) exists without its committed change, and no committed change lacks
/// its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_killed_during_a_write_burst_keeps_every_acknowledged_write_and_invents_none() {
    let (ops, users, kills) = if full() {
        (5_000, 200, 3)
    } else {
        (600, 60, 1)
    };
    let mut system = System::start(SystemOptions {
        handlers: vec!["audit"],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let prefix = kit::unique("s11").replace('-', "_") + "_";
    let progress = Progress::default();
    let writer = {
        let (url, during, prefix) = (system.api_url.clone(), progress.callback(), prefix.clone());
        tokio::spawn(async move { write_stream(&url, users, ops, 16, &prefix, during).await })
    };
    for k in 0..kills {
        progress.reached(ops * (k + 1) / (kills + 1)).await;
        system.kill_api().await;
        system.restart_api().await.unwrap();
    }
    let writes = writer.await.unwrap();
    let pool = system.pool().await.unwrap();
    // The restarted API's relay publishes what the killed one left behind.
    let drained = eventually(Duration::from_secs(120), || {
        let pool = &pool;
        async move { unpublished(pool).await.is_empty() }
    })
    .await;
    assert!(drained, "the outbox was not published after the restart");
    let expected = Expected::from_acked(&pool, &writes.acked).await.unwrap();
    let records = effects::topic_records(&system.broker.brokers(), TOPIC)
        .await
        .unwrap();
    let effects = system
        .witness()
        .await
        .unwrap()
        .settle(&expected, Duration::from_secs(120))
        .await
        .unwrap();
    let audit = effects::audit_effects(&pool).await.unwrap();
    let in_topic: HashMap<&str, &effects::TopicRecord> =
        records.iter().map(|r| (r.event_id.as_str(), r)).collect();
    // Acknowledged writes whose event is missing from the outbox, the topic or the audit trail.
    let lost = expected.without_event
        + expected
            .events
            .keys()
            .filter(|id| !in_topic.contains_key(id.as_str()) || !audit.contains_key(*id))
            .count();
    // The committed state: each user's version, and every outbox event.
    let committed: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("select id, version from profile where id like $1")
            .bind(format!("{prefix}%"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let outbox: Vec<(String, String, i64)> = sqlx::query_as(
        "select event_id::text, user_id, (payload->>'profileversion')::bigint from outbox",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let by_event: HashMap<&str, (&str, i64)> = outbox
        .iter()
        .map(|(id, user, version)| (id.as_str(), (user.as_str(), *version)))
        .collect();
    let has_change = |user: &str, version: i64| {
        committed
            .get(user)
            .is_some_and(|v| (1..=*v).contains(&version))
    };
    // Records without their outbox event or its committed change.
    let invented_records = records
        .iter()
        .filter(|r| {
            by_event.get(r.event_id.as_str()) != Some(&(r.user.as_str(), r.version))
                || !has_change(&r.user, r.version)
        })
        .map(|r| r.event_id.as_str())
        .collect::<HashSet<_>>()
        .len();
    // Outbox events without their committed change, and events never published.
    let invented_events = outbox.iter().filter(|(_, u, v)| !has_change(u, *v)).count();
    let unpublished_events = outbox
        .iter()
        .filter(|(id, _, _)| !in_topic.contains_key(id.as_str()))
        .count();
    // Committed changes without their event: a user at version v has events 1..=v.
    let mut versions: HashMap<&str, HashSet<i64>> = HashMap::new();
    for (_, user, version) in &outbox {
        versions.entry(user.as_str()).or_default().insert(*version);
    }
    let changes_without_event: usize = committed
        .iter()
        .map(|(user, v)| {
            let have = versions.get(user.as_str());
            (1..=*v)
                .filter(|n| !have.is_some_and(|h| h.contains(n)))
                .count()
        })
        .sum();
    let doubled_events = outbox.len() - versions.values().map(HashSet::len).sum::<usize>();
    let unacknowledged = outbox.len().saturating_sub(expected.events.len());
    println!(
        "11: {} of {ops} writes acknowledged, {} cut off by {kills} kills, {unacknowledged} \
         committed without an answer; {} records for {} events in the topic; \
         invented records {invented_records}, invented events {invented_events}, \
         unpublished {unpublished_events}, changes without event {changes_without_event}; {effects:?}",
        writes.acked.len(),
        writes.other,
        records.len(),
        in_topic.len()
    );
    Row {
        scenario: "11 API SIGKILLed during a write burst",
        operations: ops,
        lost: Measured(lost),
        // Audit rows beyond one per event, and two outbox events for one change.
        duplicated: Measured(effects.duplicated() + doubled_events),
        dead_lettered: Measured(effects.dead_letters),
        // Events without their committed change, committed changes without their event.
        wrong: Measured(
            invented_records + invented_events + unpublished_events + changes_without_event,
        ),
        server_errors: Measured(writes.server_errors),
    }
    .record_and_assert();
}

/// The read path's load: the one statement a cache miss runs (the write path's ends in
/// `FOR UPDATE`).
fn is_load(sql: &str) -> bool {
    sql.contains("FROM profile WHERE id = $1") && !sql.contains("FOR UPDATE")
}

/// Scenario 12 (and its mutation): three API replicas behind a PostgreSQL slowed to 500 ms per
/// statement (a proxy that reads the wire protocol), 300 concurrent GETs of one cold key spread
/// over them: one database load in all, counted by the proxy from the statements it forwards.
/// With `steal_lock`, the cross-replica fill lock is deleted as soon as it is taken.
async fn slow_database_stampede(steal_lock: bool) -> Row<'static> {
    let keys = if full() { 10 } else { 2 };
    let readers = 300;
    let proxy = kit::PgProxy::start(&postgres_host_port()).await.unwrap();
    let system = System::start(SystemOptions {
        handlers: vec![],
        api_database_addr: Some(proxy.addr().to_string()),
        // What is under test is the slow PostgreSQL. With the default 200 ms budget, Redis
        // commands of debug builds answering 300 requests on two shared cores time out now
        // and then; each timeout sends its replica to PostgreSQL (`x-cache: bypass`, or a load
        // without the lock), which is the designed fallback but not this scenario's fault.
        api_env: vec![("REDIS_TIMEOUT_MS", "2000".to_owned())],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let b = system.start_api_replica().await.unwrap();
    let c = system.start_api_replica().await.unwrap();
    let urls = [system.api_url.clone(), b.url.clone(), c.url.clone()];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(readers)
        .build()
        .unwrap();
    let mut conn = redis().await;
    let prefix = kit::unique("s12").replace('-', "_") + "_";
    let (mut extra_loads, mut wrong, mut server_errors) = (0, 0, 0);
    for k in 0..keys {
        let user = format!("{prefix}{k}");
        let created = client
            .put(format!("{}/v1/profiles/{user}", urls[0]))
            .header("content-type", "application/json")
            .body(body(&user, k))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        // Cold: every other key holds the write's invalidation marker, the rest nothing at all
        // (evicted or expired).
        if k % 2 == 1 {
            let _: i64 = redis::cmd("DEL")
                .arg(format!("profile:{user}"))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        proxy.slow_down(Duration::from_millis(500));
        let before = proxy.executes_of(is_load);
        let started = tokio::time::Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let thief = steal_lock.then(|| {
            let (done, user) = (done.clone(), user.clone());
            tokio::spawn(async move {
                let mut conn = redis().await;
                while !done.load(Ordering::SeqCst) {
                    let _: redis::RedisResult<i64> = redis::cmd("DEL")
                        .arg(format!("lock:profile:{user}"))
                        .query_async(&mut conn)
                        .await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        });
        let reads = (0..readers).map(|i| {
            let (client, url, user) = (client.clone(), urls[i % urls.len()].clone(), user.clone());
            async move {
                match client.get(format!("{url}/v1/profiles/{user}")).send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        let how = r
                            .headers()
                            .get("x-cache")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        let json: serde_json::Value = r.json().await.unwrap_or_default();
                        // The acknowledged profile: its id, version 1.
                        if json["id"] == user.as_str() && json["version"] == 1 {
                            (0, 0, how)
                        } else {
                            (1, 0, how)
                        }
                    }
                    Ok(r) if r.status().is_server_error() => (0, 1, String::new()),
                    _ => (1, 0, String::new()),
                }
            }
        });
        // How the answers were served (x-cache), to tell a fill from a bypass of a slow Redis.
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for (w, e, how) in futures::future::join_all(reads).await {
            wrong += w;
            server_errors += e;
            *served.entry(how).or_default() += 1;
        }
        done.store(true, Ordering::SeqCst);
        if let Some(thief) = thief {
            thief.await.unwrap();
        }
        let took = started.elapsed();
        proxy.slow_down(Duration::ZERO);
        let loads = proxy.executes_of(is_load) - before;
        println!(
            "12: key {k}: {loads} database loads for {readers} reads in {took:?}, served {served:?}"
        );
        assert!(
            took >= Duration::from_millis(500),
            "the reads did not wait for the slowed database"
        );
        extra_loads += usize::try_from(loads).unwrap().saturating_sub(1);
        // No load at all would mean an answer came from nowhere.
        if loads == 0 {
            wrong += 1;
        }
    }
    Row {
        scenario: if steal_lock {
            "mutation: fill lock stolen, slow database"
        } else {
            "12 three replicas, PostgreSQL at 500 ms/query, 300 GETs of a cold key"
        },
        operations: readers * keys,
        lost: NotApplicable,
        // Database loads beyond the one per cold key (counted by the proxy).
        duplicated: Measured(extra_loads),
        dead_lettered: NotApplicable,
        wrong: Measured(wrong),
        server_errors: Measured(server_errors),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_behind_a_slow_database_load_a_cold_key_once() {
    slow_database_stampede(false).await.record_and_assert();
}

/// The row of scenario 12 fails when the fill lock does not hold: every replica loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stampede_row_fails_when_the_fill_lock_is_stolen() {
    let row = slow_database_stampede(true).await;
    println!("{}", row.line());
    assert!(
        matches!(row.duplicated, Measured(n) if n > 0),
        "a stolen lock must show as extra loads: {}",
        row.line()
    );
    assert!(!row.passes(), "the row must fail: {}", row.line());
}

/// Fill attempts (`EVALSHA` of the compare-and-set script with the fill flag) and accepted
/// writes (the script's `SET`) of `profile:{user}` at `version`, in Redis `MONITOR` lines.
fn fills_seen(lines: &[String], user: &str, version: i64) -> (usize, usize) {
    let key = format!("\"profile:{user}\"");
    let attempted = lines
        .iter()
        .filter(|l| {
            (l.contains("\"EVALSHA\"") || l.contains("\"EVAL\""))
                && l.contains(&format!("{key} \"{version}\" "))
                && l.ends_with("\"0\"")
        })
        .count();
    let written = lines
        .iter()
        .filter(|l| {
            l.contains(&format!("lua] \"SET\" {key}"))
                && l.contains(&format!("\\\"v\\\":{version},\\\"k\\\":\\\"p\\\""))
        })
        .count();
    (attempted, written)
}

/// Scenario 13 (and its mutation): a read loads version N-1 on one replica, version N is written
/// (and invalidated) through another, and only then does the read's fill reach Redis: the real
/// API's compare-and-set refuses it. The proxy in front of the reader holds its load's answer
/// until the write is done, so the fill is forced late every time; the verdict is read from
/// Redis itself (the key, and `MONITOR`'s record of the fill and of any write it made). With
/// `lose_marker`, the write's invalidation marker is deleted before the fill arrives.
async fn stale_fill_after_invalidation(lose_marker: bool) -> Row<'static> {
    let (rounds, per_round) = if full() { (25, 8) } else { (3, 8) };
    let proxy = kit::PgProxy::start(&postgres_host_port()).await.unwrap();
    let system = System::start(SystemOptions {
        handlers: vec![],
        // As in scenario 12: a Redis timeout of a starved debug build would skip the fill
        // (bypass) instead of racing it.
        api_env: vec![("REDIS_TIMEOUT_MS", "2000".to_owned())],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    // The reader goes through the proxy; the writer (the system's replica) does not.
    let reader = system
        .start_api_replica_with(&[(
            "DATABASE_URL",
            system.database_url_via(&proxy.addr().to_string()),
        )])
        .await
        .unwrap();
    let writer = system.api_url.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let prefix = kit::unique("s13").replace('-', "_") + "_";
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let monitor = {
        let mut monitor = redis::Client::open(kit::redis_url())
            .unwrap()
            .get_async_monitor()
            .await
            .unwrap();
        let (lines, prefix) = (lines.clone(), prefix.clone());
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let mut stream = monitor.on_message::<String>();
            while let Some(line) = stream.next().await {
                if line.contains(&prefix) {
                    lines.lock().unwrap().push(line);
                }
            }
        })
    };
    let put = |url: String, user: String, i: usize| {
        let client = client.clone();
        async move {
            let r = client
                .put(format!("{url}/v1/profiles/{user}"))
                .header("content-type", "application/json")
                .body(body(&user, i))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            (status, json["version"].as_i64().unwrap_or(-1))
        }
    };
    let get = |url: String, user: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("{url}/v1/profiles/{user}"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            (status, json["version"].as_i64().unwrap_or(-1))
        }
    };
    let mut conn = redis().await;
    let (mut accepted, mut stale_reads, mut server_errors, mut races) = (0, 0, 0, 0);
    let mut attempts = Vec::new();
    for round in 0..rounds {
        // N-1 is 1, 2 or 3: the users are written that often first.
        let older = (round % 3 + 1) as i64;
        let users: Vec<String> = (0..per_round)
            .map(|u| format!("{prefix}{round}_{u}"))
            .collect();
        for user in &users {
            for i in 0..older {
                let (status, _) = put(writer.clone(), user.clone(), i as usize).await;
                assert!(
                    status == 200 || status == 201,
                    "seed write answered {status}"
                );
            }
        }
        // Each read misses (the cache holds the last write's marker), loads version N-1 on the
        // reader, and its answer waits in the proxy.
        proxy.hold_answers_to("FROM profile WHERE id = $1");
        let reads: Vec<_> = users
            .iter()
            .map(|user| tokio::spawn(get(reader.url.clone(), user.clone())))
            .collect();
        let held = eventually(Duration::from_secs(20), || async {
            proxy.held() >= per_round as u64
        })
        .await;
        assert!(
            held,
            "the reads' loads were not all held ({})",
            proxy.held()
        );
        // Version N commits and is invalidated meanwhile.
        for user in &users {
            let (status, version) = put(writer.clone(), user.clone(), 9).await;
            assert_eq!((status, version), (200, older + 1));
            if lose_marker {
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("profile:{user}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        proxy.release();
        for read in reads {
            let (status, version) = read.await.unwrap();
            if status >= 500 {
                server_errors += 1;
            }
            // It loaded before the write committed: the older version is its honest answer.
            assert_eq!((status, version), (200, older), "the held read's answer");
            races += 1;
        }
        for user in &users {
            // Read Redis directly: the fill of N-1 must not have replaced the marker of N.
            let raw: Option<String> = redis::cmd("GET")
                .arg(format!("profile:{user}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let entry: serde_json::Value = raw
                .and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or_default();
            let cached_older = entry["k"] == "p" && entry["v"].as_i64().is_some_and(|v| v <= older);
            let (attempted, written) = fills_seen(&lines.lock().unwrap(), user, older);
            attempts.push(attempted);
            if cached_older || written > 0 {
                accepted += 1;
            }
            // And every later read, on either replica, answers version N.
            for url in [&reader.url, &writer] {
                let (status, version) = get(url.clone(), user.clone()).await;
                if status >= 500 {
                    server_errors += 1;
                } else if version != older + 1 {
                    stale_reads += 1;
                }
            }
        }
    }
    monitor.abort();
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for n in &attempts {
        *seen.entry(*n).or_default() += 1;
    }
    println!(
        "13: {races} forced fills, {accepted} accepted by Redis, {stale_reads} later reads older \
         than the last write; races by fill attempts MONITOR saw: {seen:?}"
    );
    // Each race must have reached Redis with its old version, or the row proves nothing.
    assert!(
        attempts.iter().all(|n| *n >= 1),
        "a forced fill never reached Redis: {attempts:?}"
    );
    Row {
        scenario: if lose_marker {
            "mutation: invalidation marker lost before a stale fill"
        } else {
            "13 fill of version N-1 forced after the invalidation of N (real Redis)"
        },
        operations: races,
        lost: NotApplicable,
        duplicated: NotApplicable,
        dead_lettered: NotApplicable,
        // Stale fills Redis accepted, and reads that then answered an older version.
        wrong: Measured(accepted + stale_reads),
        server_errors: Measured(server_errors),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fill_of_an_older_version_forced_after_an_invalidation_is_refused() {
    stale_fill_after_invalidation(false)
        .await
        .record_and_assert();
}

/// The row of scenario 13 fails when the write's invalidation marker is gone: the stale fill
/// lands and later reads answer the older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stale_fill_row_fails_when_the_invalidation_marker_is_lost() {
    let row = stale_fill_after_invalidation(true).await;
    println!("{}", row.line());
    assert!(
        matches!(row.wrong, Measured(n) if n > 0),
        "a stale fill must show: {}",
        row.line()
    );
    assert!(!row.passes(), "the row must fail: {}", row.line());
}

async fn kit_status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

/// The table itself: a handler broken on purpose must make its row fail. The breakage is done
/// in the database, under the real consumer: a trigger that deletes every dedup claim as soon
/// as it is made (dedup disabled), and one that silently drops some audit rows (effect skipped).
/// Batches of one record: a batch also drops a second delivery of an event inside itself
/// without asking the database, which the trigger cannot disable, so with batching on the
/// duplicated count would depend on how the deliveries fell into batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn table_rows_fail_when_the_guarantee_is_broken() {
    let system = System::start(SystemOptions {
        handlers: vec!["audit"],
        consumer_env: vec![("CONSUMER_BATCH_MAX", "1".to_owned())],
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let pool = system.pool().await.unwrap();
    sqlx::raw_sql(
        "create function forget_claim() returns trigger language plpgsql as $$ begin \
           delete from processed_event where consumer_group = new.consumer_group and event_id = new.event_id; \
           return null; end $$; \
         create trigger forget_claim after insert on processed_event \
           for each row execute function forget_claim(); \
         create function skip_effect() returns trigger language plpgsql as $$ begin \
           if new.user_id like '%skip%' then return null; end if; return new; end $$; \
         create trigger skip_effect before insert on audit_log \
           for each row execute function skip_effect();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let producer = producer(&system.broker.brokers());
    let prefix = kit::unique("mut").replace('-', "_") + "_";
    let mut expected = Expected::default();
    for u in 0..10 {
        let user = if u < 2 {
            format!("{prefix}skip{u}")
        } else {
            format!("{prefix}{u}")
        };
        let e = event(&user, 1, "PT");
        expected.events.insert(e.id.to_string(), (user.clone(), 1));
        expected.last.insert(user.clone(), 1);
        // Delivered twice, as after a crash before the offset commit.
        send(&producer, TOPIC, &user, &e.to_json()).await;
        send(&producer, TOPIC, &user, &e.to_json()).await;
    }
    eventually(Duration::from_secs(60), || {
        let pool = &pool;
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from audit_log")
                .fetch_one(pool)
                .await
                .unwrap_or(0)
                >= 16
        }
    })
    .await;
    let audit = effects::tally(&expected, &effects::audit_effects(&pool).await.unwrap());
    let row = Row {
        scenario: "mutation: dedup disabled, two effects skipped",
        operations: 20,
        lost: Measured(audit.lost),
        duplicated: Measured(audit.duplicated),
        dead_lettered: NotApplicable,
        wrong: NotApplicable,
        server_errors: NotApplicable,
    };
    println!("{}", row.line());
    assert_eq!(audit.lost, 2, "the two skipped effects are counted lost");
    assert_eq!(
        audit.duplicated, 8,
        "every redelivery of the other eight is counted"
    );
    assert!(!row.passes(), "the row must fail: {}", row.line());
}

#[test]
fn the_chaos_script_prints_the_columns_the_rows_have() {
    let script = std::fs::read_to_string(kit::workspace_root().join("scripts/chaos")).unwrap();
    assert!(
        script.contains(HEADER),
        "scripts/chaos prints another header than {HEADER}"
    );
    let columns = HEADER.matches('|').count() - 1;
    let row = Row {
        scenario: "x",
        operations: 1,
        lost: Measured(0),
        duplicated: NotApplicable,
        dead_lettered: Measured(0),
        wrong: Measured(0),
        server_errors: NotApplicable,
    };
    assert_eq!(row.line().matches('|').count() - 1, columns);
    assert!(row.passes());
    assert!(row.line().contains("| n/a |"));
}
