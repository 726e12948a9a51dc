//! Where the cache lives: one Redis, or a Redis Cluster named by some of its nodes (the seeds).
//!
//! `REDIS_URL` naming one node is one Redis, exactly as it has always been; naming several,
//! comma-separated (`redis://a:7000,redis://b:7001`), is a Redis Cluster, any of whose nodes
//! may be named (the client learns the rest from them). [`Target`] is what the Redis operations
//! ([`crate::Cache`]) and the near cache's tracking ([`crate::NearCache::spawn_tracking`])
//! connect to; building one from the settings (TLS, `REDIS_CA_FILE`) is `statecast-startup`'s.
//!
//! Every script touches one key (see [`crate::script`]), so no key needs a hash tag: a script's
//! keys are always in one slot.

use redis::cluster::ClusterClient;
use redis::{ConnectionAddr, ConnectionInfo, ProtocolVersion, TlsCertificates};

/// One Redis, or a Redis Cluster. Cheap to clone; building one does not connect.
// Built once at start and cloned a few times: the size of the cluster variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Target {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster.
    Cluster(Cluster),
}

/// A Redis Cluster: its seeds, and the cluster client over them.
#[derive(Clone)]
pub struct Cluster {
    /// The nodes `REDIS_URL` names, each with the connection settings (TLS included) that every
    /// node of the cluster is reached with.
    seeds: Vec<redis::Client>,
    client: ClusterClient,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seeds: Vec<String> = self
            .seeds()
            .iter()
            .map(|c| c.get_connection_info().addr().to_string())
            .collect();
        f.debug_struct("Target")
            .field("cluster", &self.is_cluster())
            .field("seeds", &seeds)
            .finish()
    }
}

impl From<redis::Client> for Target {
    fn from(client: redis::Client) -> Self {
        Self::Single(client)
    }
}

impl Target {
    /// A Redis Cluster reached through `seeds` (at least one), with `certificates` (a private CA)
    /// for every node when the seeds speak TLS.
    pub fn cluster(
        seeds: Vec<redis::Client>,
        certificates: Option<TlsCertificates>,
    ) -> redis::RedisResult<Self> {
        let infos: Vec<ConnectionInfo> = seeds
            .iter()
            .map(|c| c.get_connection_info().clone())
            .collect();
        let mut builder = ClusterClient::builder(infos)
            // Failover: a killed master's slots answer nothing until its replica is promoted
            // (cluster-node-timeout plus an election); retry briefly, refreshing the slots.
            .retries(6)
            .min_retry_wait(50)
            .max_retry_wait(1000);
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates);
        }
        Ok(Self::Cluster(Cluster {
            client: builder.build()?,
            seeds,
        }))
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The nodes named: the one Redis, or the cluster's seeds.
    pub fn seeds(&self) -> &[redis::Client] {
        match self {
            Self::Single(client) => std::slice::from_ref(client),
            Self::Cluster(cluster) => &cluster.seeds,
        }
    }

    /// A RESP3 client of the node at `host:port`, with the settings of the first seed (TLS, CA,
    /// user and password): how the near cache reaches each master of a cluster.
    pub(crate) fn node(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        let info = self.seeds()[0].get_connection_info().clone();
        let addr = match info.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        redis::Client::open(info.set_addr(addr).set_redis_settings(settings))
    }
}

impl Cluster {
    /// The cluster client over the seeds.
    pub(crate) fn client(&self) -> &ClusterClient {
        &self.client
    }
}

/// `host:port` of a client's node (the key the near cache tracks each master under).
pub(crate) fn host_port(client: &redis::Client) -> Option<(String, u16)> {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_redis_and_a_cluster_reaches_every_node_like_its_first_seed() {
        let single = Target::from(redis::Client::open("redis://127.0.0.1:6379").unwrap());
        assert!(!single.is_cluster());
        assert_eq!(single.seeds().len(), 1);
        let seeds = ["redis://:pw@127.0.0.1:7000", "redis://:pw@127.0.0.1:7001"]
            .map(|u| redis::Client::open(u).unwrap())
            .to_vec();
        let cluster = Target::cluster(seeds, None).unwrap();
        assert!(cluster.is_cluster());
        let node = cluster.node("10.0.0.9", 7005).unwrap();
        assert_eq!(host_port(&node), Some(("10.0.0.9".to_owned(), 7005)));
        let info = node.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().protocol(), ProtocolVersion::RESP3);
        let tls = Target::cluster(
            vec![redis::Client::open("rediss://127.0.0.1:7000").unwrap()],
            None,
        )
        .unwrap();
        assert!(matches!(
            tls.node("127.0.0.1", 7001)
                .unwrap()
                .get_connection_info()
                .addr(),
            ConnectionAddr::TcpTls { port: 7001, .. }
        ));
    }
}
