//! Building the PostgreSQL pool and the Redis client from `DATABASE_URL`, `REDIS_URL` and
//! `REDIS_CA_FILE`, with TLS when the URL asks for it.
//!
//! The consumer connects both at start and stops when it cannot, so every start-up failure
//! names the variable to look at and, for a refused TLS handshake (a CA that did not sign the
//! server's certificate, a host the certificate does not name), what to check. PostgreSQL takes
//! its CA from the URL (`sslrootcert=`); redis-rs has no URL setting for one, hence
//! `REDIS_CA_FILE`. The API has the same rules (`profile_api::ConnectError`).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use redis::IntoConnectionInfo as _;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

/// Why the consumer could not set up or reach PostgreSQL or Redis at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `DATABASE_URL` does not parse (or names a CA file that cannot be used).
    #[error("DATABASE_URL is not a usable PostgreSQL URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    /// PostgreSQL refused the connection, could not be reached, or failed the TLS check.
    #[error("cannot connect to PostgreSQL at DATABASE_URL ({target}): {source}{hint}")]
    Database {
        /// Host, port and sslmode (never the password).
        target: String,
        /// What sqlx reported.
        #[source]
        source: sqlx::Error,
        /// What to check, for TLS failures.
        hint: &'static str,
    },
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

const PG_TLS_HINT: &str = "; the TLS handshake failed: check that sslrootcert= in DATABASE_URL \
    names the CA that signed the server's certificate, that the server has TLS on and, with \
    sslmode=verify-full, that the URL's host is a name (or IP) in that certificate";

const REDIS_TLS_HINT: &str = "; the TLS handshake failed: check that REDIS_CA_FILE names the CA \
    that signed the server's certificate (without it only the bundled Mozilla roots are trusted) \
    and that the host in REDIS_URL is a name (or IP) in that certificate";

/// The PostgreSQL pool of `url` (`DATABASE_URL`), connected once to prove it works.
pub(crate) async fn pg_pool(url: &str, options: PgPoolOptions) -> Result<PgPool, ConnectError> {
    let connect = PgConnectOptions::from_str(url).map_err(ConnectError::DatabaseUrl)?;
    let target = pg_target(&connect);
    options
        .connect_with(connect)
        .await
        .map_err(|source| ConnectError::Database {
            target,
            hint: if is_pg_tls_failure(&source) {
                PG_TLS_HINT
            } else {
                ""
            },
            source,
        })
}

/// `host:port, sslmode=...` of `options`, for messages (no user or password).
fn pg_target(options: &PgConnectOptions) -> String {
    let mode = match options.get_ssl_mode() {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    };
    format!(
        "{}:{}, sslmode={mode}",
        options.get_host(),
        options.get_port()
    )
}

/// Whether `error` is a failed TLS negotiation: sqlx's own TLS errors, or the I/O error
/// `InvalidData` that rustls reports a certificate it refuses as.
fn is_pg_tls_failure(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Tls(_)) || has_invalid_data(error)
}

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

/// A connection manager of `client`, connected once to prove it works. A refused TLS
/// handshake is not retried: waiting cannot fix a certificate.
pub(crate) async fn redis_manager(
    client: redis::Client,
) -> Result<ConnectionManager, ConnectError> {
    let tls = is_tls(&client);
    let target = format!(
        "{}{}",
        client.get_connection_info().addr(),
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
    ConnectionManager::new(client)
        .await
        .map_err(|source| ConnectError::Redis {
            target,
            hint: if tls && has_invalid_data(&source) {
                REDIS_TLS_HINT
            } else {
                ""
            },
            source,
        })
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
    fn pg_target_names_host_port_and_sslmode_but_no_password() {
        let options = PgConnectOptions::from_str(
            "postgres://u:secret@db.example:6543/x?sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        let target = pg_target(&options);
        assert_eq!(target, "db.example:6543, sslmode=verify-full");
    }

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
