//! The Redis TLS check at start (of the first node, for a Redis Cluster: every node is reached
//! with the same settings). The Redis client itself (`REDIS_URL`, `REDIS_CA_FILE`) and the
//! PostgreSQL pool (TLS from `DATABASE_URL` alone) are built by `statecast-startup`, which the
//! consumer shares.
//!
//! Why a check of its own: Redis being down only degrades the API, so the client connects
//! lazily; but a TLS mistake (a CA that did not sign the server's certificate, a host the
//! certificate does not name) is a configuration error that waiting cannot fix, so it must stop
//! the start with a message naming the variable to change.

use statecast_startup::redis_setup::is_tls;
use statecast_startup::{REDIS_TLS_HINT, has_invalid_data};

/// Why the API could not reach Redis as configured at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Redis refused the TLS handshake (the certificate did not verify).
    #[error("cannot connect to Redis at REDIS_URL ({target}, TLS): {source}{hint}")]
    RedisTls {
        /// Host and port.
        target: String,
        /// What redis-rs reported.
        #[source]
        source: redis::RedisError,
        /// What to check.
        hint: &'static str,
    },
}

/// For a `rediss://` client: one connection attempt within `limit`, an error when the TLS
/// handshake is refused. Any other failure (Redis down, slow) is only logged: it degrades the
/// API, which starts anyway and connects later.
pub(crate) async fn check_redis_tls(
    client: &redis::Client,
    limit: std::time::Duration,
) -> Result<(), ConnectError> {
    if !is_tls(client) {
        return Ok(());
    }
    match tokio::time::timeout(limit, client.get_multiplexed_async_connection()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) if has_invalid_data(&source) => Err(ConnectError::RedisTls {
            target: client.get_connection_info().addr().to_string(),
            source,
            hint: REDIS_TLS_HINT,
        }),
        Ok(Err(error)) => {
            tracing::warn!(%error, "Redis not reachable at start; reads bypass the cache until it is");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                ?limit,
                "Redis did not answer at start; reads bypass the cache until it does"
            );
            Ok(())
        }
    }
}
