//! The connection the Redis operations run on: a connection manager to one Redis, or a cluster
//! connection, behind one [`redis::aio::ConnectionLike`].
//!
//! The cluster connection routes each command by its key's slot (`EVALSHA` by its one key),
//! follows `MOVED`/`ASK` redirections, and refreshes its slot map when a node fails; a master
//! killed costs the commands of its slots errors (or retries) until its replica is promoted.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::target::Target;

/// A connection to the cache's Redis or Redis Cluster. Cheap to clone (clones share it).
#[derive(Clone)]
pub enum Connection {
    /// One Redis, reconnected by the manager.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Connection {
    /// A connection that connects at its first command (the API starts with Redis down), every
    /// connection attempt and answer within `timeout`.
    pub fn lazy(target: &Target, timeout: Duration) -> redis::RedisResult<Self> {
        match target {
            Target::Cluster(cluster) => Ok(Self::Cluster(
                cluster
                    .client()
                    .get_pending_async_connection_with_config(cluster_config(timeout)),
            )),
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?))
            }
        }
    }

    /// A connection, connected now: an error if the Redis (or no node of the cluster) answers.
    pub async fn connect(target: &Target) -> redis::RedisResult<Self> {
        match target {
            Target::Cluster(cluster) => Ok(Self::Cluster(
                cluster.client().get_async_connection().await?,
            )),
            Target::Single(client) => {
                Ok(Self::Single(ConnectionManager::new(client.clone()).await?))
            }
        }
    }
}

fn cluster_config(timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
}

impl From<ConnectionManager> for Connection {
    fn from(manager: ConnectionManager) -> Self {
        Self::Single(manager)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
