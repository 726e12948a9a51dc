//! The tracking task: keeps `CLIENT TRACKING ON BCAST PREFIX profile:` on a RESP3 connection to
//! the Redis, or to every master of a Redis Cluster, and tells the near cache when it may be used.
//!
//! Each round is one *attempt*: it finds the nodes to track (the Redis; or the masters, from
//! `CLUSTER SLOTS` of the first seed or known node whose map covers all 16384 slots), connects to
//! each with a push handler tagged with the attempt, and only once every one tracks calls the near
//! cache up (which flushes it). Then every `health_interval` it `PING`s each connection and, on a
//! cluster, asks a tracked master for the slot map again. Any failure — a socket closed (the
//! handler's disconnection push, which also wakes this task), a `PING` unanswered, a set of
//! masters that is no longer the one tracked (a replica promoted, a master added or removed) —
//! ends the attempt: the near cache is flushed and bypassed, and the next attempt starts with
//! backoff. Pushes of an older attempt are ignored.
//!
//! A manual failover (or any promotion while the old master lives on): no connection closes, but
//! the next health check's slot map names the new master, and the attempt is ended and started
//! again on the new set. Meanwhile nothing is missed: a demoted master that replicates from the
//! new one keeps pushing the invalidations of the keys replication changes (Redis tracks writes
//! applied from its master like any other; checked on Redis 7.0).
//!
//! A master killed: its connection closes at once (or its `PING` fails within the interval), so
//! the near cache is off before its replica can be promoted and take writes; until then the
//! slot map still names the dead master, so attempts fail and retry; once the replica is
//! promoted, the next attempt tracks it. Writes a failover loses (acknowledged by the old master,
//! not yet replicated) are Redis's asynchronous replication; each replica's high-water marks
//! still keep what it serves from going backwards.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ProtocolVersion, PushInfo, Value};

use super::socket::{self, Watch};
use super::{Inner, TRACKING_CLIENT_NAME};
use crate::entry::KEY_PREFIX;
use crate::target::{Target, host_port};

/// Slots of a Redis Cluster.
const SLOTS: i64 = 16384;

/// A node: host and port.
type Node = (String, u16);

/// One tracking connection of an attempt.
struct Tracked {
    node: Node,
    conn: MultiplexedConnection,
    client_id: i64,
    /// Its socket, for the read path (plain TCP only).
    watch: Option<Arc<Watch>>,
}

/// Runs until the near cache is dropped.
pub(super) async fn track(weak: Weak<Inner>, target: Target) {
    let mut backoff = Duration::from_millis(50);
    let wake = match weak.upgrade() {
        Some(inner) => inner.wake.clone(),
        None => return,
    };
    // Nodes of the last slot map seen: asked for the next one when the seeds do not answer.
    let mut known: BTreeSet<Node> = BTreeSet::new();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let interval = inner.config.health_interval;
        let attempt = match inner.current.lock() {
            Ok(mut current) => {
                *current += 1;
                *current
            }
            Err(_) => return,
        };
        drop(inner);
        let pushes = weak.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(interval))
            .set_response_timeout(Some(interval))
            .set_push_sender(move |info: PushInfo| {
                if let Some(inner) = pushes.upgrade() {
                    inner.receive(attempt, info);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        match open(&target, &config, &mut known, interval).await {
            Ok(mut tracked) => {
                let Some(inner) = weak.upgrade() else { return };
                let clients = tracked
                    .iter()
                    .map(|t| (format!("{}:{}", t.node.0, t.node.1), t.client_id))
                    .collect();
                // Every connection watched, or none: one unwatched would make the check moot.
                let watches = tracked
                    .iter()
                    .map(|t| t.watch.clone())
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default();
                inner.up(attempt, clients, watches);
                drop(inner);
                backoff = Duration::from_millis(50);
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = wake.notified() => {}
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    if !inner.tracking.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Err(why) = check(&target, &mut tracked, &mut known).await {
                        inner.down(attempt, &why);
                        break;
                    }
                }
            }
            Err(why) => {
                let Some(inner) = weak.upgrade() else { return };
                inner.down(attempt, &why);
                tracing::debug!(why, "near cache: cannot track yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The tracking connections of one attempt: to the Redis, or to every master.
/// `limit` bounds each connect (the health interval, as for the crate's own connects).
async fn open(
    target: &Target,
    config: &AsyncConnectionConfig,
    known: &mut BTreeSet<Node>,
    limit: Duration,
) -> Result<Vec<Tracked>, String> {
    let nodes: Vec<(Node, redis::Client)> = match target {
        Target::Single(client) => {
            let node = host_port(client).unwrap_or_default();
            vec![(node, resp3(client).map_err(|e| e.to_string())?)]
        }
        Target::Cluster(_) => {
            let masters = masters(target, config, known).await?;
            masters
                .into_iter()
                .map(|(host, port)| {
                    let client = target.node(&host, port).map_err(|e| e.to_string())?;
                    Ok(((host, port), client))
                })
                .collect::<Result<_, String>>()?
        }
    };
    let mut tracked = Vec::with_capacity(nodes.len());
    for (node, client) in nodes {
        let (conn, client_id, watch) = connect(&client, config, limit)
            .await
            .map_err(|e| format!("{}:{}: {e}", node.0, node.1))?;
        tracked.push(Tracked {
            node,
            conn,
            client_id,
            watch,
        });
    }
    Ok(tracked)
}

/// A health check of an attempt's connections; on a cluster, also that the masters are still
/// the ones tracked.
async fn check(
    target: &Target,
    tracked: &mut [Tracked],
    known: &mut BTreeSet<Node>,
) -> Result<(), String> {
    for t in tracked.iter_mut() {
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut t.conn).await;
        ping.map_err(|e| format!("{}:{}: {e}", t.node.0, t.node.1))?;
    }
    if target.is_cluster() {
        let ours: BTreeSet<Node> = tracked.iter().map(|t| t.node.clone()).collect();
        if let Some(first) = tracked.first_mut() {
            let map = slot_map(&mut first.conn, &first.node.0).await?;
            known.extend(map.nodes.iter().cloned());
            if map.masters != ours {
                return Err(format!(
                    "the cluster's masters changed: tracking {ours:?}, now {:?}",
                    map.masters
                ));
            }
        }
    }
    Ok(())
}

/// The masters of the cluster: from the first seed or known node whose slot map covers every
/// slot.
async fn masters(
    target: &Target,
    config: &AsyncConnectionConfig,
    known: &mut BTreeSet<Node>,
) -> Result<BTreeSet<Node>, String> {
    let mut candidates: Vec<Node> = target.seeds().iter().filter_map(host_port).collect();
    candidates.extend(known.iter().cloned());
    let mut why = String::from("no node to ask");
    for (host, port) in candidates {
        let asked = async {
            let client = target.node(&host, port)?;
            client
                .get_multiplexed_async_connection_with_config(config)
                .await
        };
        let mut conn = match asked.await {
            Ok(conn) => conn,
            Err(error) => {
                why = format!("{host}:{port}: {error}");
                continue;
            }
        };
        match slot_map(&mut conn, &host).await {
            Ok(map) if map.covered == SLOTS => {
                known.extend(map.nodes);
                return Ok(map.masters);
            }
            Ok(map) => why = format!("{host}:{port} serves {} of {SLOTS} slots", map.covered),
            Err(error) => why = format!("{host}:{port}: {error}"),
        }
    }
    Err(format!("no slot map covering every slot: {why}"))
}

/// What `CLUSTER SLOTS` says.
#[derive(Debug, Default, PartialEq, Eq)]
struct SlotMap {
    /// The first node of each slot range.
    masters: BTreeSet<Node>,
    /// Every node named, replicas included.
    nodes: BTreeSet<Node>,
    /// Slots served.
    covered: i64,
}

async fn slot_map(conn: &mut MultiplexedConnection, asked: &str) -> Result<SlotMap, String> {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    parse_slots(&reply, asked).ok_or_else(|| format!("unexpected CLUSTER SLOTS answer: {reply:?}"))
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`. An empty
/// or `?` host (an endpoint the node does not know) is the host that was asked.
fn parse_slots(reply: &Value, asked: &str) -> Option<SlotMap> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut map = SlotMap::default();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
        map.covered += end - start + 1;
        for (i, node) in fields.iter().skip(2).enumerate() {
            let Value::Array(node) = node else {
                return None;
            };
            let host = text(node.first()?)?;
            let host = if host.is_empty() || host == "?" {
                asked.to_owned()
            } else {
                host
            };
            let port = u16::try_from(int(node.get(1)?)?).ok()?;
            if i == 0 {
                map.masters.insert((host.clone(), port));
            }
            map.nodes.insert((host, port));
        }
    }
    Some(map)
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// `client` speaking RESP3 (pushes need it).
fn resp3(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// A RESP3 connection tracking `profile:` keys in broadcast mode, its `CLIENT ID`, and (over
/// plain TCP) the [`Watch`] of its socket.
async fn connect(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    limit: Duration,
) -> redis::RedisResult<(MultiplexedConnection, i64, Option<Arc<Watch>>)> {
    let (mut conn, watch) = open_connection(client, config, limit).await?;
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(TRACKING_CLIENT_NAME)
        .query_async(&mut conn)
        .await?;
    let () = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(KEY_PREFIX)
        .query_async(&mut conn)
        .await?;
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    Ok((conn, id, watch))
}

/// The connection: over plain TCP on a socket of our own, with its driver spawned watched (see
/// `socket`); otherwise (TLS, a Unix socket) as the `redis` crate opens it, unwatched.
async fn open_connection(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    limit: Duration,
) -> redis::RedisResult<(MultiplexedConnection, Option<Arc<Watch>>)> {
    let info = client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        let conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        return Ok((conn, None));
    };
    let (stream, watch) = tokio::time::timeout(limit, socket::connect(host, *port))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (conn, driver) = tokio::time::timeout(
        limit,
        MultiplexedConnection::new_with_config(info.redis_settings(), stream, config.clone()),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    tokio::spawn(watch.watched(driver));
    Ok((conn, Some(Arc::new(watch))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    #[test]
    fn the_slot_map_names_the_first_node_of_each_range_as_its_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node("", 7001),
                node("?", 7004),
            ]),
        ]);
        let map = parse_slots(&reply, "10.0.0.1").unwrap();
        assert_eq!(map.covered, SLOTS);
        let masters: Vec<Node> = map.masters.into_iter().collect();
        assert_eq!(
            masters,
            vec![
                ("10.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7000)
            ]
        );
        assert_eq!(map.nodes.len(), 4);
        assert_eq!(parse_slots(&Value::Nil, "x"), None);
    }
}
