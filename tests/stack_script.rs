//! `scripts/stack up` on a machine where nothing runs yet: every service on a port of its own,
//! state in a folder of its own, so no server the rest of the suite uses is reused.
//!
//! Every other test runs after `scripts/test` brought the stack up, usually by reusing servers
//! that were already listening; the path a brand-new machine takes (nothing on any port) is
//! exercised only here. A `set -e` script fails there in ways a warm machine never shows: once,
//! a `grep` for the pid of a broker that was not running ended `up` before the broker started,
//! and CI failed in 2 s while every local run passed.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const SERVICES: [&str; 6] = [
    "PG_PORT",
    "REDIS_PORT",
    "KAFKA_PORT",
    "SMTP_PORT",
    "PG_TLS_PORT",
    "REDIS_TLS_PORT",
];

/// Nodes of the stack's Redis Cluster, on `REDIS_CLUSTER_PORT`..+5 (bus: `REDIS_CLUSTER_BUS_PORT`..+5).
const CLUSTER_NODES: u16 = 6;

/// A stack of its own: its folder and ports, stopped (and its folder removed) when dropped,
/// also when the test fails half way.
struct PrivateStack {
    dir: PathBuf,
    ports: HashMap<&'static str, u16>,
}

impl PrivateStack {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("statecast-stack-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        // A port for each service and two runs of six for the cluster's nodes and their bus,
        // all distinct and outside the ephemeral range: the script binds them later, and a port
        // a client's connection can draw in between once kept a cluster node from starting.
        let mut lengths = vec![1; SERVICES.len()];
        lengths.extend([CLUSTER_NODES as usize; 2]);
        let starts = statecast_testkit::free_port_runs(&lengths).unwrap();
        let mut ports: HashMap<&'static str, u16> = SERVICES
            .iter()
            .copied()
            .zip(starts.iter().copied())
            .collect();
        ports.insert("REDIS_CLUSTER_PORT", starts[SERVICES.len()]);
        ports.insert("REDIS_CLUSTER_BUS_PORT", starts[SERVICES.len() + 1]);
        Self { dir, ports }
    }

    fn run(&self, verb: &str) -> Output {
        self.run_with(verb, &[])
    }

    fn run_with(&self, verb: &str, extra: &[(&str, &str)]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
        let mut cmd = Command::new("bash");
        cmd.arg(script).arg(verb).env("STACK_DIR", &self.dir);
        // A superuser the caller's environment names is not this stack's: ours trusts loopback.
        cmd.env_remove("PGUSER").env_remove("PGPASSWORD");
        for (name, port) in &self.ports {
            cmd.env(name, port.to_string());
        }
        cmd.envs(extra.iter().copied());
        cmd.output().unwrap()
    }

    fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    /// The client ports of the cluster's nodes.
    fn cluster_ports(&self) -> Vec<u16> {
        let base = self.port("REDIS_CLUSTER_PORT");
        (0..CLUSTER_NODES).map(|i| base + i).collect()
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        // The PostgreSQL clusters may live outside the folder (under /var/tmp, behind a link).
        let outside: Vec<PathBuf> = ["postgres", "postgres-tls"]
            .iter()
            .filter_map(|name| std::fs::read_link(self.dir.join(name)).ok())
            .collect();
        let _ = self.run("down");
        for path in outside {
            let _ = std::fs::remove_dir_all(&path);
            if let Some(parent) = path.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `NAME=value` pairs of `scripts/stack env`.
fn exports(output: &Output) -> HashMap<String, String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

#[tokio::test]
async fn stack_up_starts_every_service_from_nothing_and_down_stops_them() {
    let stack = PrivateStack::new();
    for name in SERVICES {
        assert!(
            !listening(stack.port(name)),
            "{name} port taken before the test"
        );
    }
    for port in stack.cluster_ports() {
        assert!(
            !listening(port),
            "cluster port {port} taken before the test"
        );
    }

    let up = stack.run("up");
    assert!(
        up.status.success(),
        "scripts/stack up failed:\n{}",
        text(&up)
    );
    for name in SERVICES {
        assert!(
            listening(stack.port(name)),
            "{name} not listening after up:\n{}",
            text(&up)
        );
    }
    for port in stack.cluster_ports() {
        assert!(
            listening(port),
            "cluster node {port} not listening after up:\n{}",
            text(&up)
        );
    }

    // A second `up` reuses what the first started: it succeeds and starts nothing.
    let again = stack.run("up");
    assert!(
        again.status.success(),
        "second up failed:\n{}",
        text(&again)
    );
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again_err.contains("starting on"),
        "second up started a service:\n{again_err}"
    );

    let status = stack.run("status");
    let status_out = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status_out.matches("(started by this script").count(),
        SERVICES.len() + usize::from(CLUSTER_NODES),
        "status:\n{status_out}"
    );
    assert!(
        status_out.contains("redis-cluster: cluster_state:ok"),
        "status:\n{status_out}"
    );
    assert_eq!(
        status_out.matches(", master)").count(),
        3,
        "status:\n{status_out}"
    );

    // What `env` prints is how the tests and `make dev` reach the services: each must answer.
    let env = exports(&stack.run("env"));
    let pool = sqlx::PgPool::connect(&env["DATABASE_URL"]).await.unwrap();
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
    pool.close().await;

    let redis = redis::Client::open(env["REDIS_URL"].as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // The cluster: three masters with a replica each, every node `cluster_state:ok`, and a
    // cluster client over the exported nodes reads what it wrote.
    let nodes: Vec<&str> = env["STATECAST_REDIS_CLUSTER_URL"].split(',').collect();
    assert_eq!(nodes.len(), usize::from(CLUSTER_NODES), "{nodes:?}");
    for node in &nodes {
        let client = redis::Client::open(*node).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{node}: {info}");
        assert!(info.contains("cluster_size:3"), "{node}: {info}");
    }
    let cluster = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut conn = cluster.get_async_connection().await.unwrap();
    for i in 0..20 {
        let key = format!("stack-script-{i}");
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        let back: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(back, i);
    }

    let partitions = user_events_partitions(env["KAFKA_BROKERS"].clone()).await;
    assert_eq!(
        partitions, 6,
        "user-events should have been created with 6 partitions"
    );

    let tls = sqlx::PgPool::connect(&env["STATECAST_TLS_DATABASE_URL"])
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&tls)
        .await
        .unwrap();
    assert_eq!(one, 1);
    tls.close().await;

    let down = stack.run("down");
    assert!(
        down.status.success(),
        "scripts/stack down failed:\n{}",
        text(&down)
    );
    for name in SERVICES {
        assert!(
            !listening(stack.port(name)),
            "{name} still listening after down"
        );
    }
    for port in stack.cluster_ports() {
        assert!(
            !listening(port),
            "cluster node {port} still listening after down"
        );
    }
    assert!(
        !stack.dir.join("redis-cluster").exists(),
        "down leaves the cluster's nodes.conf behind: the next up would not create it afresh"
    );
}

/// Partitions of `user-events` on the broker at `brokers`.
async fn user_events_partitions(brokers: String) -> usize {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some("user-events"), Duration::from_secs(10))
            .unwrap();
        metadata.topics()[0].partitions().len()
    })
    .await
    .unwrap()
}

/// tansu's SQLite log slows down as it grows until consumer-group sessions time out; `up`
/// starts the broker on an empty log past `KAFKA_LOG_MAX_MB`, whether it is down (a log left
/// on disk) or running.
#[tokio::test]
async fn stack_up_starts_the_broker_on_an_empty_log_once_its_log_is_too_large() {
    let stack = PrivateStack::new();
    // A 2 MB "log" that is not SQLite at all: tansu would not start on it.
    let log = stack.dir.join("kafka/tansu.db");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, vec![0u8; 2 << 20]).unwrap();
    let up = stack.run_with("up", &[("KAFKA_LOG_MAX_MB", "1")]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(said.contains("starting on an empty log"), "{said}");
    let brokers = format!("127.0.0.1:{}", stack.port("KAFKA_PORT"));
    assert_eq!(user_events_partitions(brokers.clone()).await, 6);

    // Running, and over the limit (0 MB): stopped and started again on an empty log.
    let again = stack.run_with("up", &[("KAFKA_LOG_MAX_MB", "0")]);
    assert!(
        again.status.success(),
        "second up failed:\n{}",
        text(&again)
    );
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("restarting it on an empty log"), "{said}");
    assert_eq!(user_events_partitions(brokers).await, 6);

    // Under the limit: left as it is.
    let kept = stack.run_with("up", &[("KAFKA_LOG_MAX_MB", "1000")]);
    assert!(kept.status.success(), "third up failed:\n{}", text(&kept));
    assert!(!String::from_utf8_lossy(&kept.stderr).contains("empty log"));
}
