//! Building the Redis client from `REDIS_URL` and `REDIS_CA_FILE`, with TLS when the URL asks
//! for it (PostgreSQL takes TLS from `DATABASE_URL` alone: `lib.rs`'s `connect`, whose errors
//! `startup` words).
//!
//! Why a module of its own: a TLS mistake (a CA that did not sign the server's certificate, a
//! host the certificate does not name) is a configuration error that waiting cannot fix, so it
//! must stop the start with a message naming the variable to change, unlike a service that is
//! merely down. PostgreSQL takes its CA from the URL (`sslrootcert=`); redis-rs has no URL
//! setting for one, hence `REDIS_CA_FILE`.

use std::path::{Path, PathBuf};

use redis::IntoConnectionInfo as _;

/// Why the API could not set up or reach PostgreSQL or Redis at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `REDIS_URL` does not parse.
    #[error("REDIS_URL is not a usable Redis URL: {0}")]
    RedisUrl(#[source] redis::RedisError),
    /// `REDIS_CA_FILE` cannot be read or holds no usable certificate.
    #[error("REDIS_CA_FILE {}: {source}", path.display())]
    RedisCaFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `REDIS_CA_FILE` is set, but `REDIS_URL` is plain `redis://`: the CA would be ignored.
    #[error("REDIS_CA_FILE is set but REDIS_URL is not a rediss:// (TLS) URL")]
    RedisCaWithoutTls,
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

const REDIS_TLS_HINT: &str = "; the TLS handshake failed: check that REDIS_CA_FILE names the CA \
    that signed the server's certificate (without it only the bundled Mozilla roots are trusted) \
    and that the host in REDIS_URL is a name (or IP) in that certificate";

/// The Redis client of `url` (`REDIS_URL`), trusting only the CA in `ca_file`
/// (`REDIS_CA_FILE`) when set, else the bundled Mozilla roots for `rediss://`.
pub(crate) fn redis_client(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<redis::Client, ConnectError> {
    let info = url.into_connection_info().map_err(ConnectError::RedisUrl)?;
    let Some(path) = ca_file else {
        return redis::Client::open(info).map_err(ConnectError::RedisUrl);
    };
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(ConnectError::RedisCaWithoutTls);
    }
    let ca = std::fs::read(path).map_err(|e| ConnectError::RedisCaFile {
        path: path.to_owned(),
        source: e.into(),
    })?;
    // redis-rs would take a file without certificates as an empty trust store and then refuse
    // every server: say so now.
    if !ca.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(ConnectError::RedisCaFile {
            path: path.to_owned(),
            source: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca),
    };
    redis::Client::build_with_tls(info, certificates).map_err(|e| ConnectError::RedisCaFile {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Whether `client` speaks TLS (`rediss://`).
fn is_tls(client: &redis::Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    )
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

/// Whether `error` or one of its sources is an I/O error of kind `InvalidData`: how
/// tokio-rustls reports a handshake rustls refused (unknown issuer, wrong name, bad record).
fn has_invalid_data(error: &(dyn std::error::Error + 'static)) -> bool {
    /// What redis-rs gives as the source of its I/O errors: the `io::Error` in an `Arc`.
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut next = Some(error);
    while let Some(e) = next {
        let io = e.downcast_ref::<std::io::Error>().or_else(|| {
            e.downcast_ref::<Shared>()
                .and_then(|shared| shared.downcast_ref::<std::io::Error>())
        });
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_ca_with_a_plain_url_is_refused() {
        let error = redis_client("redis://127.0.0.1:6379", Some(Path::new("/ca.pem"))).unwrap_err();
        assert!(error.to_string().contains("REDIS_CA_FILE"), "{error}");
        assert!(error.to_string().contains("rediss://"), "{error}");
    }

    #[test]
    fn a_missing_redis_ca_file_is_named() {
        let error = redis_client(
            "rediss://127.0.0.1:6380",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("REDIS_CA_FILE /nonexistent/ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn a_redis_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("not-a-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        let error = redis_client("rediss://127.0.0.1:6380", Some(&path)).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn a_rediss_url_builds_a_tls_client() {
        let client = redis_client("rediss://127.0.0.1:6380", None).unwrap();
        assert!(is_tls(&client));
        assert!(!is_tls(
            &redis_client("redis://127.0.0.1:6379", None).unwrap()
        ));
    }
}
