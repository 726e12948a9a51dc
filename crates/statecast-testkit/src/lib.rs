//! Test support for Statecast's integration tests, which run against the real PostgreSQL, Redis
//! and Kafka-protocol broker started by `scripts/stack up`.
//!
//! Isolation comes from names, not mocks: every test gets its own database ([`fresh_database`]),
//! its own topics ([`create_topic`] with a [`unique`] name) and its own consumer groups.
//! Outages are real too: [`FaultProxy`] sits between a client and PostgreSQL or Redis and can cut
//! every connection, [`PgProxy`] sits before PostgreSQL and counts, slows down or holds back
//! the answers to the statements its clients run, and [`PrivateBroker`] is a broker process of
//! the test's own that can be killed and restarted without disturbing other tests.
//!
//! # Layout
//! - connection settings: [`database_url`], [`redis_url`], [`kafka_brokers`], [`smtp_url`], [`maildir`]
//! - [`fresh_database`], [`create_topic`], [`unique`]
//! - [`FaultProxy`], [`PgProxy`], [`PrivateBroker`]
//! - [`secured`]: [`SecuredBroker`], a private broker behind TLS and/or SASL/SCRAM
//! - [`cel_violations`]: a CRD's CEL rules evaluated offline
//! - [`oneshot_get`]: a GET answered by an axum router in process
//! - [`cluster`]: the stack's Redis Cluster ([`redis_cluster_url`]) and [`PrivateCluster`], six
//!   nodes of a test's own for failover tests
//! - [`tls`]: the TLS-only PostgreSQL and Redis of the stack ([`tls::TlsStack`]) and a CA that
//!   signed none of their certificates ([`tls::OtherCa`])
#![allow(clippy::unwrap_used)]

mod cel_rules;
pub mod cluster;
pub mod pg_proxy;
pub mod ports;
pub mod secured;
pub mod tls;

pub use cel_rules::cel_violations;
pub use cluster::{PrivateCluster, redis_cluster_url};
pub use pg_proxy::PgProxy;
pub use ports::{free_port, free_port_runs, free_ports};
pub use secured::SecuredBroker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sqlx::Connection as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The stack's PostgreSQL database (`DATABASE_URL`).
pub fn database_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://statecast:statecast@127.0.0.1:5432/statecast",
    )
}

/// The stack's Redis (`REDIS_URL`).
pub fn redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:6379")
}

/// `host:port` of a service URL (`scheme://[user:password@]host:port[/path][?query]`), e.g. to
/// put a fault proxy in front of the stack's PostgreSQL or Redis, whatever port they are on.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, r)| r).to_owned()
}

/// The stack's broker (`KAFKA_BROKERS`).
pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

/// The stack's SMTP sink (`SMTP_URL`).
pub fn smtp_url() -> String {
    env_or("SMTP_URL", "smtp://127.0.0.1:2525")
}

/// The Maildir the SMTP sink delivers into (`STATECAST_MAILDIR`, default `.stack/mail`).
pub fn maildir() -> PathBuf {
    std::env::var_os("STATECAST_MAILDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".stack/mail"))
}

/// The workspace root of the checkout under test: the nearest folder holding `Cargo.lock`
/// above the running test's package (`CARGO_MANIFEST_DIR` as cargo and nextest set it at run
/// time). The compile-time path is only a fallback: a build cache shared by several checkouts
/// can hold test binaries compiled in another one.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// A name no other test uses: `prefix-<uuid v7 simple>` (valid as topic, group and database
/// name once lower-cased).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Creates an empty database of this test's own and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    let base = database_url();
    let name = unique("t").replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .with_context(|| format!("connect to {base}: is the stack up? (scripts/stack up)"))?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .context("create test database")?;
    let (prefix, _) = base
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    Ok(format!("{prefix}/{name}"))
}

/// Creates `name` with `partitions` partitions (the broker does not auto-create topics).
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("create topic")?;
    for result in results {
        if let Err((topic, code)) = result
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("cannot create topic {topic}: {code}");
        }
    }
    Ok(())
}

/// A TCP proxy whose upstream can be cut, to make a real service look down to one client.
///
/// While down, every proxied connection is closed and new ones are closed on accept.
pub struct FaultProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let upstream = upstream.to_owned();
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Ok(Self { addr, up, cut })
    }

    /// `host:port` clients should use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection and refuses new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A tansu broker of the test's own, on its own port, with its log in a SQLite file of its own.
///
/// Durable like a real broker: [`PrivateBroker::kill`] is a crash (SIGKILL), and
/// [`PrivateBroker::restart`] brings the same broker back with its topics, records and the
/// groups' committed offsets intact.
pub struct PrivateBroker {
    port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl PrivateBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        // Outside the ephemeral range: `restart` binds it again after the broker was down.
        let port = free_port()?;
        let dir = std::env::temp_dir().join(unique("statecast-broker"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create broker directory {}", dir.display()))?;
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's output (every start appends to it).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = tansu_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("open {}", self.log_path().display()))?;
        let child = tokio::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the working directory: tansu's SQLite URL takes a path after `//`.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            // Appended across restarts, kept when a test fails (see Drop).
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} (set TANSU_BIN)", bin.display()))?;
        self.child = Some(child);
        for _ in 0..300 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("private broker did not listen on port {}", self.port)
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Freezes the broker process (SIGSTOP): connections stay open but nothing answers, as in a
    /// long GC pause or a partition. Unlike [`PrivateBroker::kill`], its log survives.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Kills the broker if it runs, then starts it again on the same port and the same log.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // The child is killed on drop (kill_on_drop). Its SQLite log and its output go with it,
        // unless the test is failing: then both stay for the post-mortem.
        if std::thread::panicking() {
            eprintln!(
                "private broker kept for inspection: {} (output: {})",
                self.dir.display(),
                self.log_path().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    // Where scripts/stack builds it (scripts/tansu/build): the patched tansu, never another.
    let bin = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".cache/statecast/tools/tansu/tansu");
    if bin.exists() {
        bin
    } else {
        PathBuf::from("tansu")
    }
}

/// GETs `uri` from `router` in process (no socket) and returns the status and the body text.
pub async fn oneshot_get(router: axum::Router, uri: &str) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_is_taken_from_any_service_url() {
        assert_eq!(
            host_port("postgres://u:p@127.0.0.1:5433/db?sslmode=disable"),
            "127.0.0.1:5433"
        );
        assert_eq!(host_port("redis://127.0.0.1:6380"), "127.0.0.1:6380");
        assert_eq!(host_port("smtp://127.0.0.1:2526/"), "127.0.0.1:2526");
    }
}
