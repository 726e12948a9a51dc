//! Redis Cluster for the tests: the stack's (`STATECAST_REDIS_CLUSTER_URL`, three masters with a
//! replica each on ports 7000..7005, started by `scripts/stack up`), and [`PrivateCluster`], six
//! `redis-server` processes of a test's own that it may kill and restart (failover tests) without
//! disturbing any other test.
//!
//! Tests that need the stack's cluster fail (never skip) when `scripts/stack env` has not been
//! evaluated: a cluster test that passes by not running would hide the regression it is for.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::unique;

/// The variable `scripts/stack env` exports for the stack's Redis Cluster.
pub const CLUSTER_VAR: &str = "STATECAST_REDIS_CLUSTER_URL";

/// The stack's Redis Cluster as `REDIS_URL` names one (its nodes' URLs, comma-separated); an
/// error saying how to get it when the variable is missing.
pub fn redis_cluster_url() -> anyhow::Result<String> {
    match std::env::var(CLUSTER_VAR).ok().filter(|v| !v.is_empty()) {
        Some(url) => Ok(url),
        None => bail!(
            "{CLUSTER_VAR} not set: the Redis Cluster tests need the Redis Cluster of the local \
             stack (three masters with a replica each); run `scripts/stack up` and \
             `eval \"$(scripts/stack env)\"` first"
        ),
    }
}

/// `CLUSTER INFO` field `field` of the node on `port`, if it answers.
pub fn cluster_info(port: u16, field: &str) -> Option<String> {
    let out = redis_cli(port, &["cluster", "info"]).ok()?;
    out.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}:")))
        .map(str::to_owned)
}

/// What `redis-cli -p <port> <args>` prints.
pub fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("run redis-cli (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Six `redis-server` nodes of the test's own on free ports, made a cluster of three masters
/// with a replica each; killed and removed when dropped (kept for inspection when the test
/// fails).
pub struct PrivateCluster {
    dir: PathBuf,
    /// Client port and cluster-bus port of each node.
    nodes: Vec<(u16, u16)>,
    children: Vec<Option<Child>>,
}

impl PrivateCluster {
    /// Starts the six nodes, creates the cluster and waits until every node says
    /// `cluster_state:ok`.
    pub async fn start() -> anyhow::Result<Self> {
        // Outside the ephemeral range, so no client's connection can take one before the node
        // binds it (or while a killed node is down).
        let ports = crate::free_ports(12)?;
        let nodes: Vec<(u16, u16)> = (0..6).map(|i| (ports[i], ports[i + 6])).collect();
        let dir = std::env::temp_dir().join(unique("statecast-cluster"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut cluster = Self {
            dir,
            children: (0..nodes.len()).map(|_| None).collect(),
            nodes,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_listening(i).await?;
        }
        let addrs: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("run redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let (port, bus) = self.nodes[i];
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start redis-server (apt-get install redis-server)")?;
        self.children[i] = Some(child);
        Ok(())
    }

    async fn wait_listening(&self, i: usize) -> anyhow::Result<()> {
        let port = self.nodes[i].0;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("redis-server did not listen on port {port}")
    }

    /// The client port of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    /// The cluster as `REDIS_URL` names one: every node, comma-separated.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes that run.
    fn alive(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .zip(&self.children)
            .filter(|(_, child)| child.is_some())
            .map(|((port, _), _)| *port)
            .collect()
    }

    /// The ports of the masters, as the running nodes report their own role.
    pub fn masters(&self) -> Vec<u16> {
        self.alive()
            .into_iter()
            .filter(|port| redis_cli(*port, &["role"]).is_ok_and(|role| role.starts_with("master")))
            .collect()
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> anyhow::Result<u16> {
        let slot: u16 = redis_cli(self.alive()[0], &["cluster", "keyslot", key])?
            .trim()
            .parse()?;
        // Each master is asked which slots it serves itself.
        for port in self.masters() {
            let nodes = redis_cli(port, &["cluster", "nodes"])?;
            let mine = nodes.lines().find(|line| line.contains("myself"));
            if mine.is_some_and(|line| owns(line, slot)) {
                return Ok(port);
            }
        }
        bail!("no master owns slot {slot} of {key}")
    }

    /// The port of a replica of the master on `port`, as the master reports it (`ROLE`).
    pub fn replica_of(&self, port: u16) -> anyhow::Result<u16> {
        let role = redis_cli(port, &["role"])?;
        let lines: Vec<&str> = role.lines().map(str::trim).collect();
        match lines.as_slice() {
            ["master", _offset, _host, replica, ..] => Ok(replica.parse()?),
            _ => bail!("the node on {port} is not a master with a replica: {role}"),
        }
    }

    /// Kills the node on `port` (SIGKILL), as a crash would.
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.nodes.iter().position(|(p, _)| *p == port)
            && let Some(mut child) = self.children[i].take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node on `port` again (same nodes.conf: it rejoins, as a replica if its
    /// replica was promoted meanwhile).
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|(p, _)| *p == port)
            .context("not a node of this cluster")?;
        self.kill(port);
        self.spawn(i)?;
        self.wait_listening(i).await
    }

    /// Waits until the running nodes all say `cluster_state:ok`, and, when all six run, three
    /// of them are masters (each with its replica).
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + limit;
        loop {
            let alive = self.alive();
            let ok = alive
                .iter()
                .all(|p| cluster_info(*p, "cluster_state").as_deref() == Some("ok"));
            let full = alive.len() < self.nodes.len() || {
                let masters = self.masters();
                masters.len() == 3
                    && masters.iter().all(|m| {
                        redis_cli(*m, &["role"]).is_ok_and(|role| role.lines().count() > 3)
                    })
            };
            if ok && full {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!(
                    "the private cluster in {} is not healthy after {limit:?}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (start, end) = range.split_once('-').unwrap_or((range, range));
        matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if s <= slot && slot <= e)
    })
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for mut child in self.children.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "private cluster kept for inspection: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_nodes_line_owns_the_slots_of_its_ranges() {
        let line = "id 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 6000";
        assert!(owns(line, 0) && owns(line, 5460) && owns(line, 6000));
        assert!(!owns(line, 5461) && !owns(line, 16383));
    }
}
