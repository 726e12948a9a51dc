//! The scenarios of issues 7 and 16 and the set-up they share; scenario 8 (relay drain) is in
//! `drain`, scenario 9 (cache-hit GET across two replicas) in `replicas`, scenario 10 (near-cache
//! coherence, and the full near cache of scenario 6) in `coherence`.
//!
//! Isolation: one fresh PostgreSQL database per run (a second one for scenario 4), fresh topics,
//! fresh consumer groups, and Redis databases 11-15 (the stack and the tests use 0), which the
//! run flushes before and after. Seeding is plain SQL (no events), so the consumers start on an
//! empty topic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Connection as _;
use statecast_events::{EventType, ProfileEvent, ProfileSnapshot};
use statecast_testkit as testkit;

use crate::procs::{Proc, free_port, scrape, wait_ready, wait_until};
use crate::report::Report;
use crate::tools::{
    CommandLine, Percentiles, WrkSummary, at, parse_pgbench_tps, parse_redis_csv, percentiles_of,
    read_pgbench_logs, read_wrk_json,
};
use crate::{Args, fair};

mod coherence;
mod drain;
mod replicas;

/// Redis database of the API under scenarios 1, 3, 5 (and of the cache-refresh consumer).
const REDIS_DB_API: u8 = 11;
/// Redis database of the redis-benchmark baseline.
const REDIS_DB_BASELINE: u8 = 12;
/// Redis database of the cache-miss API (scenario 2).
const REDIS_DB_MISS: u8 = 13;
/// Redis database of scenario 4's cache-refresh consumer.
const REDIS_DB_CONSUMERS: u8 = 14;
/// Redis database of scenario 10's deliberately broken replica (A's writes never touch it).
const REDIS_DB_COHERENCE_BROKEN: u8 = 15;
/// The gauge that is 1 while an API replica's near cache tracks invalidations (it is bypassed
/// until then).
const NEAR_TRACKING: &str = "profile_near_cache_tracking";
/// Mail domain of every profile the benchmark writes (its mails are removed afterwards).
const MAIL_DOMAIN: &str = "bench.example.com";

/// Event `i` of a benchmark stream over `users` users (`{prefix}{i % users}`, each at versions
/// 1, 2, …: UserCreated, then UserUpdated), addressed to [`MAIL_DOMAIN`]: what scenarios 4 and 8
/// produce and the email baseline mails.
fn bench_event(prefix: &str, i: usize, users: usize, now: DateTime<Utc>) -> ProfileEvent {
    let user = format!("{prefix}{}", i % users);
    let version = i64::try_from(i / users + 1).unwrap_or(i64::MAX);
    let kind = if version == 1 {
        EventType::UserCreated
    } else {
        EventType::UserUpdated
    };
    let snapshot = ProfileSnapshot {
        id: user.clone(),
        name: Some(format!("Bench {user}")),
        email: Some(format!("{user}@{MAIL_DOMAIN}")),
        country: Some("PT".to_owned()),
        version,
        updated_at: Some(now),
    };
    ProfileEvent::new(kind, snapshot, now)
}
/// The four consumer handlers.
const HANDLERS: [&str; 4] = ["audit", "analytics", "email", "cache-refresh"];

/// Resident memory samples, KiB.
#[derive(Debug, Default)]
struct Memory {
    api_idle: Option<u64>,
    api_s1: Option<u64>,
    consumer_idle: Option<u64>,
    consumer_s1: Option<u64>,
    consumer_s4: Option<u64>,
    /// The API with its near cache filled past its default bound (scenario 10).
    api_near_full: Option<u64>,
    /// What that replica's gauges said it held: entries, bytes.
    near_full: Option<(f64, f64)>,
}

/// A running API replica.
struct Api {
    proc: Proc,
    base: String,
    /// The environment it was started with (its relay's producer settings derive from it).
    env: Vec<(&'static str, String)>,
}

/// A benchmark run.
pub(crate) struct Bench {
    args: Args,
    root: PathBuf,
    bin_dir: PathBuf,
    run_dir: PathBuf,
    http: reqwest::Client,
    /// What the run found.
    pub(crate) report: Report,
    db_url: String,
    extra_dbs: Vec<String>,
    /// The run's own broker: the bench writes and reads hundreds of thousands of records, which
    /// would slow the shared broker the tests use, and tansu deletes a large topic so slowly
    /// (minutes, blocking every other request) that cleaning up there froze it. Killed, with its
    /// SQLite log, when the run ends.
    broker: Option<testkit::PrivateBroker>,
    brokers: String,
    redis_host: String,
    topic: String,
    smtp_url: String,
    memory: Memory,
    procs: Vec<Proc>,
}

fn redis_url(host: &str, db: u8) -> String {
    format!("{host}/{db}")
}

fn ms_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

impl Bench {
    /// Prepares a run: run directory, fresh database and topics, flushed Redis databases.
    pub(crate) async fn new(args: Args, root: PathBuf, bin_dir: PathBuf) -> anyhow::Result<Self> {
        for bin in ["profile-api", "profile-consumer"] {
            if !bin_dir.join(bin).exists() {
                bail!(
                    "{} missing: cargo build --release -p profile-api -p profile-consumer",
                    bin_dir.join(bin).display()
                );
            }
        }
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        let run_dir = home
            .join(".cache/statecast/bench")
            .join(Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
        std::fs::create_dir_all(&run_dir).context("run directory")?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()?;
        let db_url = testkit::fresh_database().await?;
        let broker = testkit::PrivateBroker::start()
            .await
            .context("start the bench's own broker (tansu; scripts/stack up builds it)")?;
        let brokers = broker.brokers();
        let topic = testkit::unique("bench-events");
        testkit::create_topic(&brokers, &topic, 6).await?;
        testkit::create_topic(&brokers, &format!("{topic}.dlq"), 1).await?;
        let redis_host = testkit::redis_url().trim_end_matches('/').to_owned();
        let bench = Self {
            args,
            root,
            bin_dir,
            run_dir,
            http,
            report: Report::default(),
            db_url,
            extra_dbs: Vec::new(),
            broker: Some(broker),
            brokers,
            redis_host,
            topic,
            smtp_url: testkit::smtp_url(),
            memory: Memory::default(),
            procs: Vec::new(),
        };
        bench.flush_redis().await?;
        eprintln!("[bench] run directory {}", bench.run_dir.display());
        Ok(bench)
    }

    async fn redis(&self, db: u8) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(redis_url(&self.redis_host, db))?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    async fn flush_redis(&self) -> anyhow::Result<()> {
        for db in [
            REDIS_DB_API,
            REDIS_DB_BASELINE,
            REDIS_DB_MISS,
            REDIS_DB_CONSUMERS,
            REDIS_DB_COHERENCE_BROKEN,
        ] {
            let mut conn = self.redis(db).await?;
            let () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Runs every scenario in an order that keeps them from disturbing one another.
    pub(crate) async fn run_all(&mut self) -> anyhow::Result<()> {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        self.report.note(format!(
            "The API runs with AUTH_DISABLED=true and RATE_LIMIT_PER_SECOND=0 (no per-subject rate limit: the load tools \
             are one subject), so token checks and the limiter are not in its figures. Everything runs on one machine with {cores} cores: the load tools, the services under test, PostgreSQL, \
             Redis and the broker compete for the same CPUs, so the load generator takes CPU from whatever it \
             measures (ours and the baselines alike). Release builds; RUST_LOG=warn; no OpenTelemetry export."
        ));
        self.report.note(
            "The broker is tansu (Kafka protocol, SQLite storage), a broker of the run's own started from the build scripts/stack makes, not Apache Kafka: consumer \
             throughput and propagation include its behaviour. PostgreSQL runs with fsync=off and \
             synchronous_commit=off (scripts/stack), which flatters every write figure, ours and pgbench's alike.",
        );
        self.report.note(format!(
            "wrk ({}-s runs, 2 threads, {} connections) is a closed-loop tool: its percentiles carry coordinated \
             omission. {} profiles are seeded with one SQL INSERT (no events), then each is read once so the \
             cache holds it. Fresh database, topics, consumer groups and Redis databases {REDIS_DB_API}-{REDIS_DB_COHERENCE_BROKEN} \
             per run, removed afterwards.",
            self.args.duration_secs, self.args.concurrency, self.args.profiles
        ));
        let only = self.args.only.clone();
        let wants = |n: u32| only.is_empty() || only.contains(&n);
        // Scenarios 1, 3, 5, 9 and 10 share one API replica and the seeded profiles (2 reads them
        // too).
        if [1, 3, 5, 9, 10].into_iter().any(wants) {
            let api = self.start_api("api", REDIS_DB_API, &[]).await?;
            self.seed().await?;
            self.warm(&api).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.memory.api_idle = api.proc.rss_kib();
            if wants(1) {
                self.scenario1(&api).await?;
            }
            if wants(9) {
                self.scenario9(&api).await?;
            }
            if wants(10) {
                self.scenario10(&api).await?;
            }
            if wants(5) {
                self.scenario5(&api).await?;
            }
            if wants(3) {
                self.scenario3(&api).await?;
            }
            api.proc.stop().await;
        }
        if wants(2) {
            if ![1, 3, 5, 9, 10].into_iter().any(wants) {
                self.seed().await?;
            }
            let miss_api = self
                .start_api(
                    "api-miss",
                    REDIS_DB_MISS,
                    &[
                        ("CACHE_TTL_SECONDS", "0".to_owned()),
                        ("CACHE_STALE_GRACE_SECONDS", "0".to_owned()),
                    ],
                )
                .await?;
            self.scenario2(&miss_api).await?;
            miss_api.proc.stop().await;
        }
        if wants(4) {
            self.scenario4().await?;
        }
        if wants(8) {
            // The broker may not keep up with a large drain (tansu); the other scenarios still run.
            if let Err(error) = self.scenario8().await {
                eprintln!("[bench] scenario 8 failed: {error:#}");
                self.report
                    .note(format!("8: the scenario failed and has no rows: {error:#}"));
            }
        }
        if wants(6) {
            self.scenario6();
        }
        if wants(7) {
            self.scenario7();
        }
        Ok(())
    }

    /// Section 7: the autoscaling simulation (deterministic, no services).
    fn scenario7(&mut self) {
        let simulation = crate::autoscaling::simulate();
        println!("\n{}\n{}", crate::autoscaling::TITLE, simulation.text());
        let what = "lag ÷ lagThreshold rule (KEDA's), same simulated burst";
        let (d, r) = (simulation.drain, simulation.rule);
        self.report.row(
            "7 autoscaling (simulated burst): peak lag",
            "records",
            Some(d.peak_lag as f64),
            Some(r.peak_lag as f64),
            what,
        );
        self.report.row(
            "7 autoscaling (simulated burst): replica-seconds",
            "replica·s",
            Some(d.replica_seconds as f64),
            Some(r.replica_seconds as f64),
            what,
        );
        self.report.row(
            "7 autoscaling (simulated burst): time to drain from the burst start",
            "s",
            d.drain_seconds.map(f64::from),
            r.drain_seconds.map(f64::from),
            what,
        );
        self.report.sections.push(simulation.markdown());
    }

    async fn start_api(
        &mut self,
        name: &str,
        redis_db: u8,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<Api> {
        let port = free_port()?;
        let mut env: Vec<(&'static str, String)> = vec![
            ("DATABASE_URL", self.db_url.clone()),
            ("REDIS_URL", redis_url(&self.redis_host, redis_db)),
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("EVENTS_TOPIC", self.topic.clone()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("AUTH_DISABLED", "true".to_owned()),
            // 0 turns the per-subject rate limit off: the load tools are one subject.
            ("RATE_LIMIT_PER_SECOND", "0".to_owned()),
        ];
        env.retain(|(key, _)| !extra.iter().any(|(other, _)| other == key));
        env.extend(extra.iter().cloned());
        let line = CommandLine {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            argv: vec![self.bin_dir.join("profile-api").display().to_string()],
        };
        self.report
            .command("services", format!("RUST_LOG=warn {}", line.render()));
        let mut proc = Proc::spawn(name, &self.bin_dir.join("profile-api"), &env, &self.run_dir)?;
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(
            &self.http,
            &mut proc,
            &format!("{base}/healthz"),
            Duration::from_secs(60),
        )
        .await?;
        // It answers once it listens, but its near cache is bypassed until its tracking
        // connection is up: a replica is measured once that is (unless the near cache is off).
        let near_off = env
            .iter()
            .any(|(key, value)| *key == "NEAR_CACHE_ENABLED" && value == "false");
        if !near_off {
            let metrics = format!("{base}/metrics");
            let http = &self.http;
            wait_until(
                &mut proc,
                "track invalidations (profile_near_cache_tracking 1)",
                Duration::from_secs(30),
                || async {
                    scrape(http, &metrics, NEAR_TRACKING)
                        .await
                        .is_ok_and(|tracking| tracking >= 1.0)
                },
            )
            .await?;
        }
        Ok(Api { proc, base, env })
    }

    fn consumer_env(
        &self,
        handler: &str,
        group: &str,
        topic: &str,
        db_url: &str,
        redis_db: u8,
        port: u16,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("KAFKA_GROUP_ID", group.to_owned()),
            ("KAFKA_TOPICS", topic.to_owned()),
            ("DLQ_TOPIC", format!("{topic}.dlq")),
            ("CONSUMER_HANDLER", handler.to_owned()),
            ("DATABASE_URL", db_url.to_owned()),
            ("REDIS_URL", redis_url(&self.redis_host, redis_db)),
            ("SMTP_URL", self.smtp_url.clone()),
            ("METRICS_ADDR", format!("127.0.0.1:{port}")),
        ]
    }

    async fn start_consumer(
        &mut self,
        handler: &str,
        topic: &str,
        db_url: &str,
        redis_db: u8,
        scenario: &str,
        start_position: &'static str,
    ) -> anyhow::Result<(Proc, String, String)> {
        let port = free_port()?;
        let group = testkit::unique(&format!("bench-{handler}"));
        let mut env = self.consumer_env(handler, &group, topic, db_url, redis_db, port);
        // Every group is new: `earliest` where it must read what the scenario produced before it
        // started (the email handler's default, `latest`, would skip all of it), `latest` where
        // the topic holds earlier scenarios' records it must not drain first.
        env.push(("KAFKA_START_POSITION", start_position.to_owned()));
        self.check_fair_consumer(scenario, handler, &env)?;
        let line = CommandLine {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            argv: vec![self.bin_dir.join("profile-consumer").display().to_string()],
        };
        self.report
            .command(scenario, format!("RUST_LOG=warn {}", line.render()));
        let name = format!("consumer-{handler}-{}", &group[group.len() - 6..]);
        let mut proc = Proc::spawn(
            &name,
            &self.bin_dir.join("profile-consumer"),
            &env,
            &self.run_dir,
        )?;
        let metrics = format!("http://127.0.0.1:{port}/metrics");
        wait_ready(
            &self.http,
            &mut proc,
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(60),
        )
        .await?;
        Ok((proc, group, metrics))
    }

    /// Notes (once per scenario) the fetch and commit settings the consumers and the bare
    /// baselines share, and warns loudly if `env`'s consumer differs from the bare one on any.
    fn check_fair_consumer(
        &mut self,
        scenario: &str,
        handler: &str,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<()> {
        let ours = fair::consumer_config(env)?;
        let bare = fair::bare_consumer_config(&self.brokers, "bench-bare");
        let differences = fair::differences(&bare, &ours, fair::is_fetch_or_commit);
        if !differences.is_empty() {
            eprintln!(
                "[bench] WARNING {scenario}: the bare consumer differs from {handler}: {differences:?}"
            );
            self.report.note(format!(
                "WARNING {scenario}: the bare consumer baseline is not configured like the {handler} consumer: {}",
                differences.join("; ")
            ));
        }
        let number = scenario.split_whitespace().next().unwrap_or(scenario);
        let text = format!(
            "{number}: the bare rdkafka consumers of the baselines use the consumers' own fetch and commit settings \
             (profile_consumer::consumer::FETCH_AND_COMMIT, checked against each consumer's client configuration \
             at start): {}; they store each record's offset by hand as the consumers do after an effect.",
            fair::describe(&ours, fair::is_fetch_or_commit)
        );
        if !self.report.notes.contains(&text) {
            self.report.note(text);
        }
        Ok(())
    }

    async fn seed(&mut self) -> anyhow::Result<()> {
        let n = self.args.profiles;
        let mut conn = sqlx::PgConnection::connect(&self.db_url).await?;
        let sql = format!(
            "INSERT INTO profile (id, name, email, country, version, updated_at) \
             SELECT 'bench-' || g, 'Bench User ' || g, 'bench-' || g || '@{MAIL_DOMAIN}', 'PT', 1, now() \
             FROM generate_series(0, {}) AS g",
            n - 1
        );
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .context("seed profiles")?;
        sqlx::query("ANALYZE profile").execute(&mut conn).await?;
        self.report
            .command("seed", format!("psql {} -c \"{sql}\"", self.db_url));
        eprintln!("[bench] seeded {n} profiles");
        Ok(())
    }

    /// GETs every seeded profile once (concurrency 64) so the cache holds them all.
    async fn warm(&mut self, api: &Api) -> anyhow::Result<()> {
        let http = self.http.clone();
        let base = api.base.clone();
        let failures = futures::stream::iter(0..self.args.profiles)
            .map(|i| {
                let http = http.clone();
                let url = format!("{base}/v1/profiles/bench-{i}");
                async move {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => 0usize,
                        _ => 1,
                    }
                }
            })
            .buffer_unordered(64)
            .fold(0usize, |acc, f| async move { acc + f })
            .await;
        if failures > 0 {
            self.report.note(format!(
                "warm-up: {failures} of {} GETs failed",
                self.args.profiles
            ));
        }
        eprintln!("[bench] cache warmed");
        Ok(())
    }

    fn wrk_line(&self, script: &str, json: &Path, base: &str) -> CommandLine {
        self.wrk_line_with(script, json, base, 2, self.args.concurrency)
    }

    /// [`Self::wrk_line`] with `threads` threads and `connections` connections.
    fn wrk_line_with(
        &self,
        script: &str,
        json: &Path,
        base: &str,
        threads: usize,
        connections: usize,
    ) -> CommandLine {
        CommandLine::new(&[
            "wrk",
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{}s", self.args.duration_secs),
            "--latency",
            "-s",
            &format!("crates/statecast-bench/lua/{script}"),
            base,
        ])
        .env("BENCH_PROFILES", &self.args.profiles.to_string())
        .env("BENCH_LUA_DIR", "crates/statecast-bench/lua")
        .env("WRK_JSON", &json.display().to_string())
    }

    /// Runs `script` under pgbench as the baseline of a wrk run and reports requests/s and p99
    /// side by side; returns (ours, baseline) latency percentiles for the plot.
    async fn against_pgbench(
        &mut self,
        scenario: &str,
        label: &str,
        wrk: &WrkSummary,
        script: &str,
        what: &str,
    ) -> anyhow::Result<(Percentiles, Percentiles)> {
        let prefix = self
            .run_dir
            .join(format!("pgbench-{}", script.trim_end_matches(".sql")));
        let pg = self.pgbench_line(script, &prefix, &[]);
        self.report.command(scenario, pg.render());
        let out = pg.output(&self.root).await?;
        let tps = parse_pgbench_tps(&out)?;
        let baseline = percentiles_of(&mut read_pgbench_logs(&prefix)?);
        let ours = wrk.percentiles_ms();
        self.report.row(
            &format!("{label}: requests/s"),
            "req/s",
            Some(wrk.rps()),
            Some(tps),
            what,
        );
        self.report.row(
            &format!("{label}: p99"),
            "ms",
            Some(at(&ours, 99.0)),
            Some(at(&baseline, 99.0)),
            what,
        );
        Ok((ours, baseline))
    }

    fn pgbench_line(&self, script: &str, log_prefix: &Path, extra: &[&str]) -> CommandLine {
        let mut argv: Vec<String> = vec![
            "pgbench".into(),
            "-n".into(),
            "-c".into(),
            self.args.concurrency.to_string(),
            "-j".into(),
            "2".into(),
            "-T".into(),
            self.args.duration_secs.to_string(),
            "-f".into(),
            format!("crates/statecast-bench/sql/{script}"),
            "-D".into(),
            format!("profiles={}", self.args.profiles),
            "-l".into(),
            format!("--log-prefix={}", log_prefix.display()),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv.push(self.db_url.clone());
        CommandLine {
            env: Vec::new(),
            argv,
        }
    }

    /// Scenario 1: cache-hit GET vs redis-benchmark GET; also the API's memory under load.
    async fn scenario1(&mut self, api: &Api) -> anyhow::Result<()> {
        const S: &str = "1 cache-hit GET";
        eprintln!("[bench] scenario 1: cache-hit GET");
        let metrics = format!("{}/metrics", api.base);
        let hits0 = cache_lookups(&self.http, &metrics).await?;
        let json = self.run_dir.join("wrk-get-hit.json");
        let line = self.wrk_line("get.lua", &json, &api.base);
        self.report.command(S, line.render());
        let (_, peaks) = line.output_watching(&self.root, &[api.proc.pid()]).await?;
        self.memory.api_s1 = peaks.first().copied();
        let wrk = read_wrk_json(&json)?;
        self.warn_errors(S, wrk.error_count(), wrk.requests);
        let hits1 = cache_lookups(&self.http, &metrics).await?;
        let lookups: f64 = hits1.values().sum::<f64>() - hits0.values().sum::<f64>();
        let hit =
            hits1.get("hit").copied().unwrap_or(0.0) - hits0.get("hit").copied().unwrap_or(0.0);
        self.report.note(format!(
            "1: the API answered {:.1} % of {lookups:.0} reads from a fresh cache entry (x-cache: hit); wrk counted {} errors/non-2xx.",
            100.0 * hit / lookups.max(1.0),
            wrk.error_count()
        ));

        let requests =
            (wrk.rps() * self.args.duration_secs as f64).clamp(100_000.0, 2_000_000.0) as u64;
        let baseline = self.redis_get_baseline(S, requests).await?;

        let ours = wrk.percentiles_ms();
        let what = "redis-benchmark GET of 200-byte values, same concurrency, no pipelining";
        self.report.row(
            "1 cache-hit GET: requests/s",
            "req/s",
            Some(wrk.rps()),
            Some(baseline.rps),
            what,
        );
        self.report.row(
            "1 cache-hit GET: p50",
            "ms",
            Some(at(&ours, 50.0)),
            Some(at(&baseline.percentiles, 50.0)),
            what,
        );
        self.report.row(
            "1 cache-hit GET: p99",
            "ms",
            Some(at(&ours, 99.0)),
            Some(at(&baseline.percentiles, 99.0)),
            what,
        );
        self.report.latency_plot(
            "s1-cache-hit.png",
            "1 cache-hit GET /v1/profiles/{id} vs redis-benchmark GET",
            &[
                ("API (wrk)", &ours),
                ("redis-benchmark GET", &baseline.percentiles),
            ],
        );
        self.scenario1_half_load(api, baseline.rps / 2.0).await
    }

    /// Scenario 1 at half load: the same GETs paced to `rate` requests/s (half of
    /// redis-benchmark's GET ops/s), for the p99 target at that load. wrk has no rate option:
    /// each connection pauses between requests (get-paced.lua). A first run with the pause
    /// `connections ÷ rate` shows the latency the pause must leave room for; the second,
    /// reported, run pauses that much less.
    async fn scenario1_half_load(&mut self, api: &Api, rate: f64) -> anyhow::Result<()> {
        const S: &str = "1 cache-hit GET";
        let connections = self.args.concurrency as f64;
        let cycle_us = 1e6 * connections / rate.max(1.0);
        let mut gap_us = cycle_us;
        let mut last = None;
        for run in ["calibrate", "measure"] {
            let json = self.run_dir.join(format!("wrk-get-half-{run}.json"));
            let line = self
                .wrk_line("get-paced.lua", &json, &api.base)
                .env("BENCH_GAP_US", &format!("{gap_us:.0}"));
            self.report.command(S, line.render());
            line.output(&self.root).await?;
            let wrk = read_wrk_json(&json)?;
            self.warn_errors(S, wrk.error_count(), wrk.requests);
            // A connection's cycle is its request's latency plus its pause.
            let latency_us = (1e6 * connections / wrk.rps().max(1.0) - gap_us).max(0.0);
            gap_us = (cycle_us - latency_us).max(0.0);
            last = Some(wrk);
        }
        let Some(wrk) = last else { return Ok(()) };
        let paced = wrk.percentiles_ms();
        self.report.row(
            "1 cache-hit GET paced to half of redis-benchmark's ops/s: requests/s sent",
            "req/s",
            Some(wrk.rps()),
            Some(rate),
            "the pace asked for (below 1× when the API cannot keep it)",
        );
        self.report.row(
            "1 cache-hit GET paced to half of redis-benchmark's ops/s: p99",
            "ms",
            Some(at(&paced, 99.0)),
            None,
            "none (the target is 2 ms; redis-benchmark cannot be paced)",
        );
        self.report.note(format!(
            "1 at half load: wrk paced to {rate:.0} req/s (half of redis-benchmark's GET ops/s) by pausing each of its \
             {connections:.0} connections between requests (crates/statecast-bench/lua/get-paced.lua, pause calibrated \
             by a first run); it sent {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors/non-2xx. A paused closed loop \
             does not send what a stall would have delayed, so its p99 is a lower bound of an open-loop one.",
            wrk.rps(),
            at(&paced, 50.0),
            at(&paced, 99.0),
            wrk.error_count(),
        ));
        Ok(())
    }

    /// The baseline of the cache-hit GETs: `redis-benchmark` GET of `requests` requests over
    /// as many keys as profiles, 200-byte values, the same concurrency, no pipelining.
    async fn redis_get_baseline(
        &mut self,
        scenario: &str,
        requests: u64,
    ) -> anyhow::Result<crate::tools::RedisBenchRow> {
        let host_port = self.redis_host.trim_start_matches("redis://").to_owned();
        let (host, port) = host_port.split_once(':').unwrap_or((&host_port, "6379"));
        let db = REDIS_DB_BASELINE.to_string();
        let c = self.args.concurrency.to_string();
        let r = self.args.profiles.to_string();
        let fill = CommandLine::new(&[
            "redis-benchmark",
            "-h",
            host,
            "-p",
            port,
            "--dbnum",
            &db,
            "-t",
            "set",
            "-c",
            &c,
            "-r",
            &r,
            "-n",
            "100000",
            "-d",
            "200",
            "-q",
        ]);
        self.report.command(scenario, fill.render());
        fill.output(&self.root).await?;
        let get = CommandLine::new(&[
            "redis-benchmark",
            "-h",
            host,
            "-p",
            port,
            "--dbnum",
            &db,
            "-t",
            "get",
            "-c",
            &c,
            "-P",
            "1",
            "-r",
            &r,
            "-n",
            &requests.to_string(),
            "--csv",
        ]);
        self.report.command(scenario, get.render());
        parse_redis_csv(&get.output(&self.root).await?)
    }

    /// Scenario 2: cache-miss GET vs pgbench select-only on the same table.
    async fn scenario2(&mut self, api: &Api) -> anyhow::Result<()> {
        const S: &str = "2 cache-miss GET";
        eprintln!("[bench] scenario 2: cache-miss GET");
        let metrics = format!("{}/metrics", api.base);
        let before = cache_lookups(&self.http, &metrics).await?;
        let json = self.run_dir.join("wrk-get-miss.json");
        let line = self.wrk_line("get.lua", &json, &api.base);
        self.report.command(S, line.render());
        line.output(&self.root).await?;
        let wrk = read_wrk_json(&json)?;
        self.warn_errors(S, wrk.error_count(), wrk.requests);
        let after = cache_lookups(&self.http, &metrics).await?;
        let total: f64 = after.values().sum::<f64>() - before.values().sum::<f64>();
        let mut shares: Vec<String> = after
            .iter()
            .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| format!("{k} {:.1} %", 100.0 * v / total.max(1.0)))
            .collect();
        shares.sort();
        self.report.note(format!(
            "2: the API has no switch to disable its cache, so this replica runs with CACHE_TTL_SECONDS=0 and \
             CACHE_STALE_GRACE_SECONDS=0: every fill expires after 1 ms and a read takes the full miss path \
             (Redis GET, fill lock, PostgreSQL load, compare-and-set fill, unlock). Reads by outcome: {}; \
             wrk counted {} errors/non-2xx. The API's pool is its default DB_POOL_SIZE=10, pgbench has {} connections.",
            shares.join(", "),
            wrk.error_count(),
            self.args.concurrency
        ));

        let (ours, baseline) = self
            .against_pgbench(
                S,
                "2 cache-miss GET",
                &wrk,
                "select.sql",
                "pgbench select-only, same query and table",
            )
            .await?;
        self.report.latency_plot(
            "s2-cache-miss.png",
            "2 cache-miss GET vs pgbench SELECT",
            &[("API (wrk)", &ours), ("pgbench SELECT", &baseline)],
        );
        Ok(())
    }

    /// Scenario 3: propagation to the four consumers, then PUT throughput vs pgbench.
    async fn scenario3(&mut self, api: &Api) -> anyhow::Result<()> {
        const S: &str = "3 writes";
        eprintln!("[bench] scenario 3: propagation");
        let mut consumers = Vec::new();
        for handler in HANDLERS {
            let topic = self.topic.clone();
            let db = self.db_url.clone();
            let (proc, group, metrics) = self
                // `latest`: the shared topic holds the earlier scenarios' writes (scenario 10's
                // 30,000), which `earliest` made every consumer drain before the measured ones,
                // so the p99s measured that backlog.
                .start_consumer(handler, &topic, &db, REDIS_DB_API, S, "latest")
                .await?;
            consumers.push((handler, proc, group, metrics));
        }
        // Warm-up writes, one every 500 ms until every consumer has handled one: a group
        // starting at `latest` skips what was written before it was assigned its partitions,
        // so one write could be missed, and the first one seen proves the group reads the end.
        let deadline = Instant::now() + Duration::from_secs(60);
        'warm: loop {
            let warm_id = format!("prop-warm-{}", uuid::Uuid::now_v7().simple());
            self.put(api, &warm_id).await?;
            let round = Instant::now() + Duration::from_millis(500);
            while Instant::now() < round {
                let mut handled = 0;
                for (_, _, _, metrics) in &consumers {
                    if scrape(&self.http, metrics, "consumer_records_total")
                        .await
                        .unwrap_or(0.0)
                        >= 1.0
                    {
                        handled += 1;
                    }
                }
                if handled == consumers.len() {
                    break 'warm;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if Instant::now() > deadline {
                bail!("the consumers did not all handle a warm-up event within 60 s");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((_, proc, _, _)) = consumers.iter().find(|(h, ..)| *h == "audit") {
            self.memory.consumer_idle = proc.rss_kib();
        }

        let mut redis = self.redis(REDIS_DB_API).await?;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let mut responded: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut cache_ms = Vec::new();
        let mut cache_missing = 0usize;
        let loop_deadline = Instant::now() + Duration::from_secs(150);
        for i in 0..self.args.propagation_puts {
            if Instant::now() > loop_deadline {
                self.report.note(format!(
                    "3: propagation loop stopped after {i} PUTs (150 s limit)"
                ));
                break;
            }
            jitter().await;
            let id = format!("prop-{i}-{suffix}");
            self.put(api, &id).await?;
            let at_response = Utc::now();
            responded.insert(id.clone(), at_response);
            let key = format!("profile:{id}");
            let poll_deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let raw: Option<String> =
                    redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
                if raw.as_deref().is_some_and(refreshed_entry) {
                    cache_ms.push(ms_between(at_response, Utc::now()));
                    break;
                }
                if Instant::now() > poll_deadline {
                    cache_missing += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let ids: Vec<String> = responded.keys().cloned().collect();
        let groups: HashMap<&str, String> = consumers
            .iter()
            .map(|(h, _, g, _)| (*h, g.clone()))
            .collect();
        let mut effects: Vec<(&str, Vec<f64>, usize)> = Vec::new();
        let mut pool = sqlx::PgConnection::connect(&self.db_url).await?;
        for handler in ["relay", "audit", "analytics", "email"] {
            let group = groups.get(handler).cloned().unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(30);
            let rows = loop {
                let rows: Vec<(String, DateTime<Utc>)> = match handler {
                    "relay" => sqlx::query_as(
                        "SELECT user_id, published_at FROM outbox \
                         WHERE published_at IS NOT NULL AND user_id = ANY($1)",
                    )
                    .bind(&ids)
                    .fetch_all(&mut pool)
                    .await?,
                    "audit" => sqlx::query_as("SELECT user_id, recorded_at FROM audit_log WHERE user_id = ANY($1)")
                        .bind(&ids)
                        .fetch_all(&mut pool)
                        .await?,
                    "analytics" => sqlx::query_as(
                        "SELECT o.user_id, p.processed_at FROM processed_event p \
                         JOIN outbox o ON o.event_id = p.event_id \
                         WHERE p.consumer_group = $1 AND o.user_id = ANY($2)",
                    )
                    .bind(&group)
                    .bind(&ids)
                    .fetch_all(&mut pool)
                    .await?,
                    _ => sqlx::query_as(
                        "SELECT o.user_id, e.sent_at FROM email_outbox e \
                         JOIN outbox o ON o.event_id = e.event_id \
                         WHERE e.consumer_group = $1 AND e.sent_at IS NOT NULL AND o.user_id = ANY($2)",
                    )
                    .bind(&group)
                    .bind(&ids)
                    .fetch_all(&mut pool)
                    .await?,
                };
                if rows.len() >= ids.len() || Instant::now() > deadline {
                    break rows;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            let ms: Vec<f64> = rows
                .iter()
                .filter_map(|(id, at)| responded.get(id).map(|r| ms_between(*r, *at)))
                .collect();
            let missing = ids.len().saturating_sub(ms.len());
            effects.push((handler, ms, missing));
        }
        effects.push(("cache-refresh", cache_ms, cache_missing));
        for (_, proc, _, _) in consumers {
            proc.stop().await;
        }
        self.report.command(
            S,
            format!(
                "# then {} sequential PUTs of fresh ids (statecast-bench, reqwest); effect times: \
                 audit_log.recorded_at, processed_event.processed_at (analytics), email_outbox.sent_at, \
                 and a 1 ms Redis poll of profile:{{id}} for cache-refresh",
                self.args.propagation_puts
            ),
        );
        let round_trip = match self.bare_round_trips(50, &api.env).await {
            Ok(p) => Some(p),
            Err(error) => {
                self.report.note(format!(
                    "3: bare produce → consume baseline failed: {error:#}"
                ));
                None
            }
        };
        self.report.command(
            S,
            "# baseline: 50 sequential records through a bare rdkafka FutureProducer → StreamConsumer \
             (the relay's producer settings, profile_api::relay::producer_config; the consumers' fetch and \
             commit settings, profile_consumer::consumer::FETCH_AND_COMMIT; fresh 6-partition topic), time \
             from the send to recv()"
                .to_owned(),
        );
        let mut series: Vec<(String, Percentiles)> = Vec::new();
        if let Some(p) = &round_trip {
            series.push(("bare produce → consume".to_owned(), p.clone()));
        }
        for (handler, mut ms, missing) in effects {
            if missing > 0 {
                self.report.note(format!(
                    "3: {handler} showed no effect for {missing} of {} PUTs within the wait",
                    ids.len()
                ));
            }
            if ms.is_empty() {
                continue;
            }
            let p = percentiles_of(&mut ms);
            if handler == "relay" {
                self.report.note(format!(
                    "3: the relay picked each outbox row up (outbox.published_at, stamped with now() at the start of \
                     its publishing transaction) {:.2} ms (p50) / {:.2} ms (p99) after the PUT's response arrived \
                     (negative: before it), so propagation time is spent between the broker and the consumers; \
                     compare the bare produce → consume baseline, configured the same way (see below).",
                    at(&p, 50.0),
                    at(&p, 99.0)
                ));
                continue;
            }
            let (what, base50, base99) = match (&round_trip, handler) {
                (Some(rt), _) => (
                    "bare rdkafka produce → consume, the relay's producer and the consumers' fetch/commit settings",
                    Some(at(rt, 50.0)),
                    Some(at(rt, 99.0)),
                ),
                (None, _) => ("none", None, None),
            };
            self.report.row(
                &format!("3 propagation → {handler}: p50"),
                "ms",
                Some(at(&p, 50.0)),
                base50,
                what,
            );
            self.report.row(
                &format!("3 propagation → {handler}: p99"),
                "ms",
                Some(at(&p, 99.0)),
                base99,
                what,
            );
            series.push((format!("propagation → {handler}"), p));
        }
        self.report.note(
            "3: propagation runs from the moment the PUT's response arrived to the consumer's effect, over sequential PUTs of \
             fresh ids 0-250 ms apart (random, so they do not phase-lock with the consumers' fetch cycles). PostgreSQL's now() \
             is the start of the consumer's transaction, so audit/analytics (now() defaults) understate by that \
             transaction's duration; email's sent_at is stamped after the SMTP transaction.",
        );

        // PUT throughput with the consumers stopped.
        eprintln!("[bench] scenario 3: PUT throughput");
        let json = self.run_dir.join("wrk-put.json");
        let line = self.wrk_line("put.lua", &json, &api.base);
        self.report.command(S, line.render());
        line.output(&self.root).await?;
        let wrk = read_wrk_json(&json)?;
        self.warn_errors(S, wrk.error_count(), wrk.requests);
        let (ours, baseline) = self
            .against_pgbench(
                S,
                "3 PUT",
                &wrk,
                "write.sql",
                "pgbench running the API's write transaction",
            )
            .await?;
        self.report.note(format!(
            "3: PUTs ran with the consumers stopped (the relay still publishes every event); wrk counted {} errors/non-2xx.",
            wrk.error_count()
        ));
        self.report.latency_plot(
            "s3-writes.png",
            "3 PUT /v1/profiles/{id} vs pgbench running the same transaction",
            &[
                ("PUT (wrk)", &ours),
                ("pgbench write transaction", &baseline),
            ],
        );
        let plot: Vec<(&str, &Percentiles)> = series
            .iter()
            .map(|(label, p)| (label.as_str(), p))
            .collect();
        self.report.latency_plot(
            "s3-propagation.png",
            "3 propagation: PUT response → each consumer's effect",
            &plot,
        );
        Ok(())
    }

    /// Flags a load run whose answers were not what it meant to measure.
    fn warn_errors(&mut self, scenario: &str, errors: u64, requests: u64) {
        if errors > 0 {
            eprintln!(
                "[bench] WARNING {scenario}: {errors} of {requests} requests failed or were not 2xx"
            );
            self.report.note(format!(
                "WARNING {scenario}: {errors} of {requests} requests failed or were not 2xx; its figures \
                 partly measure error answers"
            ));
        }
    }

    async fn put(&self, api: &Api, id: &str) -> anyhow::Result<()> {
        self.put_named(api, id, &format!("Bench {id}"))
            .await
            .map(drop)
    }

    /// PUTs profile `id`, named `name`, through `api`: the answer's body, or an error if it is
    /// not a success.
    async fn put_named(&self, api: &Api, id: &str, name: &str) -> anyhow::Result<Vec<u8>> {
        let body = serde_json::json!({
            "name": name,
            "email": format!("{id}@{MAIL_DOMAIN}"),
            "country": "PT",
        });
        let response = self
            .http
            .put(format!("{}/v1/profiles/{id}", api.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            bail!("PUT {id} answered {status}");
        }
        Ok(bytes.to_vec())
    }

    /// Scenario 4: records/s of one replica per handler vs a bare rdkafka consumer.
    async fn scenario4(&mut self) -> anyhow::Result<()> {
        const S: &str = "4 consumer throughput";
        eprintln!("[bench] scenario 4: consumer throughput");
        let n = self.args.consumer_events;
        let db = testkit::fresh_database().await?;
        self.extra_dbs.push(db.clone());
        let topic = testkit::unique("bench-consume");
        testkit::create_topic(&self.brokers, &topic, 6).await?;
        testkit::create_topic(&self.brokers, &format!("{topic}.dlq"), 1).await?;
        self.produce(&topic, n).await?;
        self.report.command(
            S,
            format!("# {n} events ({} users × versions 1..10, UserCreated then UserUpdated, keyed by user) produced to {topic} (6 partitions) by statecast-bench (rdkafka FutureProducer)", (n / 10).max(1)),
        );

        let mut bars = Vec::new();
        let cap = Duration::from_secs(self.args.consumer_cap_secs);
        let baseline = self.bare_consumer(&topic, n, cap).await?;
        self.report.command(
            S,
            format!("# baseline: bare rdkafka StreamConsumer (fresh group, the consumers' fetch and commit settings, no handler) counting {n} records of {topic}"),
        );
        for handler in HANDLERS {
            let (mut proc, _group, metrics) = self
                .start_consumer(handler, &topic, &db, REDIS_DB_CONSUMERS, S, "earliest")
                .await?;
            let mut first: Option<(Instant, f64)> = None;
            let mut last;
            let mut peak = 0u64;
            let give_up = Instant::now() + cap + Duration::from_secs(30);
            loop {
                proc.check_alive()?;
                let count = scrape(&self.http, &metrics, "consumer_records_total")
                    .await
                    .unwrap_or(0.0);
                let now = Instant::now();
                peak = peak.max(proc.rss_kib().unwrap_or(0));
                if count > 0.0 && first.is_none() {
                    first = Some((now, count));
                }
                last = (now, count);
                let capped = first.is_some_and(|(t0, _)| now.duration_since(t0) > cap);
                if count >= n as f64 || capped || now > give_up {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if handler == "audit" {
                self.memory.consumer_s4 = Some(peak);
            }
            proc.stop().await;
            let rate = first.and_then(|(t0, c0)| {
                let secs = last.0.duration_since(t0).as_secs_f64();
                (secs > 0.0).then(|| (last.1 - c0) / secs)
            });
            if last.1 < n as f64 {
                self.report.note(format!(
                    "4: {handler} handled {:.0} of {n} records before the {}-s cap; its rate is over what it did",
                    last.1, self.args.consumer_cap_secs
                ));
            }
            if let Some(rate) = rate {
                bars.push((handler.to_owned(), rate));
            }
            // A replica that handled nothing within the cap handled 0 records/s.
            let rate = Some(rate.unwrap_or(0.0));
            self.report.row(
                &format!("4 consumer {handler}: records/s per replica"),
                "rec/s",
                rate,
                baseline,
                "bare rdkafka StreamConsumer, same fetch/commit settings, no handler",
            );
            if handler == "email" {
                // What bounds email is the SMTP server: its own baseline is a bare sender.
                self.report.command(
                    S,
                    format!(
                        "# baseline of email: {n} mails composed by the email handler's compose(), sent to {} by its \
                         SMTP client (profile_consumer::handlers::smtp::Mailer), {} at once, no consumer or database",
                        self.smtp_url,
                        profile_consumer::handlers::smtp::MAX_CONNECTIONS
                    ),
                );
                let now = Utc::now();
                let users = (n / 10).max(1);
                let events: Vec<ProfileEvent> = (0..n)
                    .map(|i| bench_event("bench-mail-", i, users, now))
                    .collect();
                let mails = fair::bare_mailer(&self.smtp_url, &events).await?;
                self.report.row(
                    "4 consumer email against a bare SMTP sender: mails/s per replica",
                    "mails/s",
                    rate,
                    Some(mails),
                    "the email handler's SMTP client alone sending as many mails to the same sink, no consumer or database",
                );
            }
        }
        if let Some(b) = baseline {
            bars.push(("bare rdkafka".to_owned(), b));
        }
        self.report.note(
            "4: a replica's rate runs from its first handled record to the last (process start-up and group join \
             excluded), read from consumer_records_total (all results) on /metrics every 50 ms, so a fast handler's \
             figure carries ±50 ms of that sampling; each handler has its own replica, group and tables. The bare \
             baseline runs from its partition assignment to its last record and does no work per record. The email \
             handler sends one mail per record to the stack's SMTP sink (aiosmtpd), which bounds it.",
        );
        self.report.bar_plot(
            "s4-consumers.png",
            "4 consumer throughput, one replica",
            "records/s",
            &bars,
        );
        Ok(())
    }

    async fn produce(&self, topic: &str, n: usize) -> anyhow::Result<()> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("message.timeout.ms", "30000")
            .create()?;
        let users = (n / 10).max(1);
        let now = Utc::now();
        let failures = futures::stream::iter(0..n)
            .map(|i| {
                let producer = producer.clone();
                let topic = topic.to_owned();
                async move {
                    let event = bench_event("bench4-", i, users, now);
                    let user = event.data.id.clone();
                    let payload = event.to_json();
                    let headers = OwnedHeaders::new().insert(Header {
                        key: statecast_events::headers::CONTENT_TYPE,
                        value: Some(statecast_events::CLOUDEVENTS_CONTENT_TYPE),
                    });
                    let record = FutureRecord::to(&topic)
                        .key(&user)
                        .payload(&payload)
                        .headers(headers);
                    usize::from(
                        producer
                            .send(record, Duration::from_secs(30))
                            .await
                            .is_err(),
                    )
                }
            })
            .buffered(1000)
            .fold(0usize, |acc, f| async move { acc + f })
            .await;
        if failures > 0 {
            bail!("{failures} of {n} events were not produced");
        }
        Ok(())
    }

    async fn bare_consumer(
        &self,
        topic: &str,
        n: usize,
        cap: Duration,
    ) -> anyhow::Result<Option<f64>> {
        let assigned = AssignClock::default();
        let consumer: StreamConsumer<AssignClock> =
            fair::bare_consumer_config(&self.brokers, &testkit::unique("bench-bare"))
                .create_with_context(assigned.clone())?;
        consumer.subscribe(&[topic])?;
        let mut count = 0usize;
        let give_up = Instant::now() + cap + Duration::from_secs(30);
        while count < n && Instant::now() < give_up {
            match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                Ok(Ok(message)) => {
                    let _ = message.payload();
                    // As the consumer does after each effect (enable.auto.offset.store=false).
                    let _ = consumer.store_offset_from_message(&message);
                    count += 1;
                }
                Ok(Err(error)) => eprintln!("[bench] bare consumer: {error}"),
                Err(_) => {}
            }
        }
        let done = Instant::now();
        Ok(assigned.at().and_then(|t0| {
            let secs = done.duration_since(t0).as_secs_f64();
            (secs > 0.0 && count > 0).then(|| count as f64 / secs)
        }))
    }

    /// Produce → receive latency of a bare rdkafka producer and StreamConsumer configured like
    /// the relay's producer (`api_env`'s) and the consumers' fetch and commit settings: the
    /// broker and client floor under every propagation figure.
    async fn bare_round_trips(
        &self,
        samples: usize,
        api_env: &[(&'static str, String)],
    ) -> anyhow::Result<Percentiles> {
        let topic = testkit::unique("bench-roundtrip");
        testkit::create_topic(&self.brokers, &topic, 6).await?;
        let assigned = AssignClock::default();
        let consumer: Arc<StreamConsumer<AssignClock>> = Arc::new(
            fair::bare_consumer_config(&self.brokers, &testkit::unique("bench-roundtrip"))
                .create_with_context(assigned.clone())?,
        );
        consumer.subscribe(&[topic.as_str()])?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        let reader = {
            let consumer = consumer.clone();
            tokio::spawn(async move {
                while let Ok(message) = consumer.recv().await {
                    let _ = consumer.store_offset_from_message(&message);
                    let key = message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    if tx.send((key, Instant::now())).is_err() {
                        break;
                    }
                }
            })
        };
        let producer: FutureProducer = fair::relay_producer_config(api_env)?.create()?;
        let mut latencies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Sample 0 is a warm-up (assignment, offset look-up); it is not counted.
        for i in 0..=samples {
            if Instant::now() > deadline {
                break;
            }
            let key = format!("rt-{i}");
            let record = FutureRecord::to(&topic).key(&key).payload("x");
            // From the send, as ours runs from the PUT's answer, before the relay produces.
            let sent = Instant::now();
            if producer
                .send(record, Duration::from_secs(10))
                .await
                .is_err()
            {
                continue;
            }
            let wait = if i == 0 { 30 } else { 5 };
            while let Ok(Some((got, at))) =
                tokio::time::timeout(Duration::from_secs(wait), rx.recv()).await
            {
                if got == key {
                    if i > 0 {
                        latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                    }
                    break;
                }
            }
            jitter().await;
        }
        reader.abort();
        if assigned.at().is_none() || latencies.is_empty() {
            bail!("bare round trip: no record came back");
        }
        Ok(percentiles_of(&mut latencies))
    }

    /// Scenario 5: 500 concurrent GETs of one key right after it was removed from the cache.
    async fn scenario5(&mut self, api: &Api) -> anyhow::Result<()> {
        const S: &str = "5 stampede";
        eprintln!("[bench] scenario 5: stampede");
        let n = self.args.stampede;
        let id = "bench-42";
        let url = format!("{}/v1/profiles/{id}", api.base);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(n + 16)
            .timeout(Duration::from_secs(30))
            .build()?;
        // Open n connections first, so the burst measures the read path rather than TCP set-up.
        burst(&client, &format!("{}/healthz", api.base), n).await;
        let _ = client.get(&url).send().await?.bytes().await?;
        let metrics = format!("{}/metrics", api.base);
        let mut redis = self.redis(REDIS_DB_API).await?;
        let loads0 = scrape(&self.http, &metrics, "profile_db_loads_total").await?;
        let _: i64 = redis::cmd("DEL")
            .arg(format!("profile:{id}"))
            .arg(format!("lock:profile:{id}"))
            .query_async(&mut redis)
            .await?;
        let results = burst(&client, &url, n).await;
        let loads1 = scrape(&self.http, &metrics, "profile_db_loads_total").await?;
        let mut latencies: Vec<f64> = results.iter().map(|(ms, _, _)| *ms).collect();
        let failed = results.iter().filter(|(_, ok, _)| !ok).count();
        let mut by_cache: HashMap<String, usize> = HashMap::new();
        for (_, _, cache) in &results {
            *by_cache.entry(cache.clone()).or_default() += 1;
        }
        let mut by_cache: Vec<String> = by_cache
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        by_cache.sort();
        self.warn_errors(S, failed as u64, n as u64);
        let ours = percentiles_of(&mut latencies);
        self.report.command(
            S,
            format!(
                "redis-cli -n {REDIS_DB_API} DEL profile:{id} lock:profile:{id}   # then {n} concurrent GET {url} \
                 (statecast-bench, reqwest, connections opened beforehand), profile_db_loads_total read before and after"
            ),
        );

        // "Off": every request loads from PostgreSQL through a pool of the API's size (10).
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&self.db_url)
            .await?;
        let _ = sqlx::query("SELECT 1").execute(&pool).await?;
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let pool = pool.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let start = Instant::now();
                    let ok = sqlx::query(
                        "SELECT id, name, email, country, version, updated_at, deleted_at FROM profile WHERE id = $1",
                    )
                    .bind("bench-42")
                    .fetch_optional(&pool)
                    .await
                    .is_ok();
                    (start.elapsed().as_secs_f64() * 1000.0, ok)
                })
            })
            .collect();
        let mut off = Vec::new();
        for task in tasks {
            if let Ok((ms, true)) = task.await {
                off.push(ms);
            }
        }
        let off_loads = off.len();
        let off_p = percentiles_of(&mut off);
        pool.close().await;
        self.report.command(
            S,
            format!("# baseline: {n} concurrent SELECTs of {id} (the API's read query) through a 10-connection sqlx pool (statecast-bench)"),
        );
        let what = "no protection: every request loads (direct SELECTs, pool of 10)";
        self.report.row(
            "5 stampede: database loads",
            "loads",
            Some(loads1 - loads0),
            Some(off_loads as f64),
            what,
        );
        self.report.row(
            "5 stampede: p99",
            "ms",
            Some(at(&ours, 99.0)),
            Some(at(&off_p, 99.0)),
            what,
        );
        self.report.note(format!(
            "5: the API has no switch to turn stampede protection off, so \"off\" is the load every request would \
             make without it: {n} concurrent direct PostgreSQL SELECTs through a pool of the API's default size (10). \
             The burst's answers by x-cache: {}; {failed} failed.",
            by_cache.join(", ")
        ));
        self.report.latency_plot(
            "s5-stampede.png",
            "5 stampede: 500 concurrent GETs of one just-expired key",
            &[
                ("API, protection on", &ours),
                ("500 direct SELECTs (off)", &off_p),
            ],
        );
        Ok(())
    }

    /// Scenario 6: resident memory, from the samples the other scenarios took.
    fn scenario6(&mut self) {
        let m = &self.memory;
        let what = "none";
        let rows = [
            ("6 RSS API: idle", m.api_idle),
            ("6 RSS API: under scenario 1", m.api_s1),
            (
                "6 RSS API: near cache filled past its default bound (scenario 10)",
                m.api_near_full,
            ),
            ("6 RSS consumer (audit): idle", m.consumer_idle),
            (
                "6 RSS consumer (audit): under scenario 4",
                m.consumer_s4.or(m.consumer_s1),
            ),
        ];
        let bars: Vec<(String, f64)> = rows
            .iter()
            .filter_map(|(label, kib)| {
                mib(*kib).map(|v| (label.trim_start_matches("6 RSS ").to_owned(), v))
            })
            .collect();
        for (label, kib) in rows {
            self.report.row(label, "MiB", mib(kib), None, what);
        }
        self.report.note(
            "6: VmRSS from /proc/PID/status; \"under load\" is the peak of samples every 250 ms (scenario 1) or 50 ms \
             (scenario 4). The consumer does nothing during scenario 1, so its loaded figure is taken under scenario 4. \
             Issue 16's targets: the API below 30 MiB idle and below 64 MiB with a full near cache at its default bound.",
        );
        if let Some((entries, bytes)) = m.near_full {
            self.report.note(format!(
                "6: the full near cache held {entries:.0} entries, {:.1} MiB by its own estimate (profile_near_cache_entries, \
                 profile_near_cache_bytes), against the defaults NEAR_CACHE_MAX_ENTRIES=50000 and NEAR_CACHE_MAX_BYTES=16 MiB.",
                bytes / 1_048_576.0
            ));
        }
        self.report
            .bar_plot("s6-memory.png", "6 resident memory (VmRSS)", "MiB", &bars);
    }

    /// Stops what is still running, drops the databases, flushes the Redis databases and removes
    /// the benchmark's mails from the SMTP sink's Maildir.
    pub(crate) async fn cleanup(&mut self) {
        for proc in self.procs.drain(..) {
            proc.stop().await;
        }
        if let Err(error) = self.flush_redis().await {
            eprintln!("[bench] cleanup: flush redis: {error}");
        }
        let base = testkit::database_url();
        if let Ok(mut admin) = sqlx::PgConnection::connect(&base).await {
            for url in std::iter::once(self.db_url.clone()).chain(self.extra_dbs.clone()) {
                if let Some((_, name)) = url.rsplit_once('/') {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            }
        }
        // Its topics go with it: no DeleteTopics on tansu (see `broker`).
        if let Some(mut broker) = self.broker.take() {
            broker.kill().await;
        }
        let mut removed = 0usize;
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(testkit::maildir().join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if std::fs::read_to_string(&path).is_ok_and(|text| text.contains(MAIL_DOMAIN))
                    && std::fs::remove_file(&path).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            eprintln!("[bench] removed {removed} benchmark mails from the SMTP sink");
        }
    }

    /// Prints the table, writes results.json, the plots and docs/benchmarks.md.
    pub(crate) async fn finish(&mut self, took: Duration) -> anyhow::Result<()> {
        let took = format!("{:.0} s", took.as_secs_f64());
        let table = self.report.text_table();
        println!("\n{table}");
        println!(
            "whole run: {took}; logs and raw results: {}",
            self.run_dir.display()
        );
        let results = self.run_dir.join("results.json");
        std::fs::write(&results, serde_json::to_vec_pretty(&self.report)?)?;
        if self.args.no_docs {
            return Ok(());
        }
        let out_dir = self.root.join("docs/bench");
        std::fs::create_dir_all(&out_dir)?;
        let plot = CommandLine::new(&[
            &self.args.python.display().to_string(),
            "scripts/bench-plot.py",
            &results.display().to_string(),
            "docs/bench",
        ]);
        let plots: Vec<String> = match plot.output(&self.root).await {
            Ok(out) => out
                .lines()
                .map(str::to_owned)
                .filter(|l| l.ends_with(".png"))
                .collect(),
            Err(error) => {
                eprintln!("[bench] plots not drawn: {error:#}");
                self.report.note(format!("plots not drawn: {error}"));
                Vec::new()
            }
        };
        let machine = machine_facts().await;
        let md = self.report.markdown(&machine, &plots, &took);
        std::fs::write(self.root.join("docs/benchmarks.md"), &md)?;
        std::fs::write(
            self.root.join("docs/capacity.md"),
            crate::capacity::render(&md, crate::capacity::EXAMPLE),
        )?;
        println!(
            "wrote docs/benchmarks.md, docs/capacity.md and {} plots in docs/bench/",
            plots.len()
        );
        Ok(())
    }
}

/// Whether a `profile:{id}` value was written by the cache-refresh consumer (its format has
/// `version`) or is a profile entry of the API's own format (`k = "p"`) — not the API's
/// invalidation marker.
fn refreshed_entry(raw: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
        return false;
    };
    value
        .get("version")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|v| v >= 1)
        || value.get("k").and_then(serde_json::Value::as_str) == Some("p")
}

/// A random pause of 0-250 ms between sequential writes, so they do not phase-lock with the
/// consumers' fetch cycles (fetch.wait.max.ms, `profile_consumer::consumer::FETCH_AND_COMMIT`).
async fn jitter() {
    let ms: u64 = rand::random_range(0..250);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Remembers when a consumer first got partitions assigned.
#[derive(Clone, Default)]
struct AssignClock(Arc<std::sync::Mutex<Option<Instant>>>);

impl AssignClock {
    fn at(&self) -> Option<Instant> {
        self.0.lock().ok().and_then(|t| *t)
    }
}

impl rdkafka::ClientContext for AssignClock {}

impl rdkafka::consumer::ConsumerContext for AssignClock {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if matches!(rebalance, rdkafka::consumer::Rebalance::Assign(_))
            && let Ok(mut at) = self.0.lock()
        {
            at.get_or_insert_with(Instant::now);
        }
    }
}

/// `profile_cache_lookups_total` by result label.
async fn cache_lookups(http: &reqwest::Client, url: &str) -> anyhow::Result<HashMap<String, f64>> {
    let text = http.get(url).send().await?.text().await?;
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("profile_cache_lookups_total{"))
    {
        let label = line
            .split("result=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?");
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(label.to_owned()).or_default() += value;
        }
    }
    Ok(out)
}

/// `n` GETs of `url` released together; `(milliseconds, success, x-cache)` each.
async fn burst(client: &reqwest::Client, url: &str, n: usize) -> Vec<(f64, bool, String)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let cache = response
                            .headers()
                            .get("x-cache")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        let _ = response.bytes().await;
                        (start.elapsed().as_secs_f64() * 1000.0, ok, cache)
                    }
                    Err(_) => (
                        start.elapsed().as_secs_f64() * 1000.0,
                        false,
                        "error".to_owned(),
                    ),
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(result) = task.await {
            out.push(result);
        }
    }
    out
}

/// Date, cores, CPU model, memory and tool versions, for the report.
async fn machine_facts() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("unknown".to_owned(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let version = |argv: &[&str]| {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        async move {
            let out = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .await
                .ok()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines().next().map(|l| l.trim().to_owned())
        }
    };
    let mut tools = Vec::new();
    for argv in [
        &["wrk", "-v"][..],
        &["redis-benchmark", "--version"],
        &["pgbench", "--version"],
        &["redis-server", "--version"],
    ] {
        if let Some(v) = version(argv).await {
            tools.push(v);
        }
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    if let Some(v) = version(&[
        &home.join(".cargo/bin/tansu").display().to_string(),
        "--version",
    ])
    .await
    {
        tools.push(format!("broker: {v}"));
    }
    vec![
        (
            "date".to_owned(),
            Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ),
        ("cores (nproc)".to_owned(), cores.to_string()),
        ("CPU".to_owned(), model),
        ("memory".to_owned(), memory),
        ("tools".to_owned(), tools.join("; ")),
        (
            "kernel session autogroups".to_owned(),
            autogroups(
                std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
                    .ok()
                    .as_deref(),
            ),
        ),
        (
            "build".to_owned(),
            "release (`cargo build --release`), services on loopback next to the load tools"
                .to_owned(),
        ),
    ]
}

/// The report's line on the kernel's session autogroups, from
/// `/proc/sys/kernel/sched_autogroup_enabled`: on, they let an idle Redis or PostgreSQL (each in
/// its own session) wait up to about a second for a CPU while the bench's session saturates the
/// cores, which is the machine's doing and not the code's (`scripts/bench` turns them off).
fn autogroups(setting: Option<&str>) -> String {
    match setting.map(str::trim) {
        Some("0") => "off (kernel.sched_autogroup_enabled=0) during the run".to_owned(),
        Some("1") => "**on** (kernel.sched_autogroup_enabled=1): Redis and PostgreSQL, each in its own session, \
                      can wait up to about a second for a CPU while the load saturates the cores, so latency tails \
                      include the kernel's scheduling (see README, \"Reliability and benchmarks\")"
            .to_owned(),
        Some(other) => format!("kernel.sched_autogroup_enabled={other}"),
        None => "not a setting of this kernel".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_whether_session_autogroups_were_on() {
        assert!(autogroups(Some("0\n")).starts_with("off"));
        assert!(autogroups(Some("1\n")).starts_with("**on**"));
        assert_eq!(autogroups(Some("2")), "kernel.sched_autogroup_enabled=2");
        assert_eq!(autogroups(None), "not a setting of this kernel");
    }

    #[test]
    fn recognises_refreshed_cache_entries_but_not_markers() {
        assert!(refreshed_entry(r#"{"id":"a","version":1}"#));
        assert!(refreshed_entry(r#"{"v":1,"k":"p","p":{}}"#));
        assert!(!refreshed_entry(r#"{"v":1,"k":"i","soft":0}"#));
        assert!(!refreshed_entry("garbage"));
    }
}
