//! The PostgreSQL pool and the Redis connection of the handler, from `DATABASE_URL`,
//! `REDIS_URL` and `REDIS_CA_FILE`, with TLS when the URL asks for it; a `REDIS_URL` naming
//! several nodes, comma-separated, is a Redis Cluster (`statecast_cache::Target`).
//!
//! The consumer connects both at start and stops when it cannot, so every start-up failure
//! names the variable, its value (password masked) and what to check. Building the pool and
//! the client, and the wording, are `statecast-startup`'s, shared with the API; what is the
//! consumer's own is that Redis must answer at start (the cache-refresh handler has nothing to
//! do without it), so a Redis that is down stops the start too, and a refused TLS handshake is
//! not retried.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use statecast_cache::{Connection, Target};
use statecast_startup::redis_setup::is_tls;
use statecast_startup::{DatabaseError, REDIS_TLS_HINT, RedisSetupError, has_invalid_data};

/// How long the pool waits for its first connection at start.
const DATABASE_WAIT: Duration = Duration::from_secs(5);

/// Why the consumer could not set up or reach PostgreSQL or Redis at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// PostgreSQL refused the connection, could not be reached, failed the TLS check, or
    /// `DATABASE_URL` does not parse.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// `REDIS_URL` or `REDIS_CA_FILE` is unusable.
    #[error(transparent)]
    RedisSetup(#[from] RedisSetupError),
    /// Redis could not be reached, refused us, or failed the TLS check.
    #[error("cannot connect to Redis at REDIS_URL ({target}): {source}{hint}")]
    Redis {
        /// Host and port, and whether with TLS.
        target: String,
        /// What redis-rs reported.
        #[source]
        source: redis::RedisError,
        /// What to check.
        hint: &'static str,
    },
}

/// What to do when Redis did not answer (other than a refused TLS handshake).
const REDIS_DOWN_HINT: &str = "; check that Redis is up and reachable at the host and port in \
    REDIS_URL (and its password, if it needs one)";

/// The PostgreSQL pool of `url` (`DATABASE_URL`), connected once to prove it works.
pub(crate) async fn pg_pool(url: &str, options: PgPoolOptions) -> Result<PgPool, ConnectError> {
    Ok(statecast_startup::database::connect(url, options, DATABASE_WAIT, None).await?)
}

/// The Redis of `url` (`REDIS_URL`) and `ca_file` (`REDIS_CA_FILE`): one Redis, or a Redis
/// Cluster when the URL names several nodes.
pub(crate) fn redis_target(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Target, ConnectError> {
    Ok(statecast_startup::redis_setup::target(url, ca_file)?)
}

/// A connection to `redis` (a connection manager, or a cluster connection), connected once to
/// prove it works. A refused TLS handshake is not retried: waiting cannot fix a certificate.
/// A cluster's nodes share the settings of its seeds: the first seed is checked for TLS.
pub(crate) async fn redis_connection(redis: &Target) -> Result<Connection, ConnectError> {
    let client = &redis.seeds()[0];
    let tls = is_tls(client);
    let target = format!(
        "{}{}{}",
        client.get_connection_info().addr(),
        if redis.is_cluster() { ", cluster" } else { "" },
        if tls { ", TLS" } else { "" }
    );
    if tls {
        // One plain attempt first: the manager would retry a refused handshake with backoff.
        if let Err(source) = client.get_multiplexed_async_connection().await
            && has_invalid_data(&source)
        {
            return Err(ConnectError::Redis {
                target,
                source,
                hint: REDIS_TLS_HINT,
            });
        }
    }
    Connection::connect(redis)
        .await
        .map_err(|source| ConnectError::Redis {
            target,
            hint: if tls && has_invalid_data(&source) {
                REDIS_TLS_HINT
            } else {
                REDIS_DOWN_HINT
            },
            source,
        })
}
