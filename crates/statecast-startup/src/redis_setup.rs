//! The Redis client of `REDIS_URL` and `REDIS_CA_FILE`, with TLS when the URL asks for it, and
//! the cache's [`Target`]: one Redis, or a Redis Cluster when `REDIS_URL` names several nodes,
//! comma-separated (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`; any nodes of the cluster, all
//! with the same scheme and credentials).
//!
//! redis-rs has no URL setting for a private CA, hence `REDIS_CA_FILE`. Building the client does
//! not connect; what a binary does when Redis is down differs (the API degrades, the
//! cache-refresh consumer waits), so connecting stays with each binary, which words a refused
//! handshake with [`REDIS_TLS_HINT`].

use std::path::{Path, PathBuf};

use redis::IntoConnectionInfo as _;
use statecast_cache::Target;

use crate::redact_url;

/// What to check when the TLS handshake with Redis failed (appended to the error).
pub const REDIS_TLS_HINT: &str = "; the TLS handshake failed: check that REDIS_CA_FILE names the \
    CA that signed the server's certificate (without it only the bundled Mozilla roots are \
    trusted) and that the host in REDIS_URL is a name (or IP) in that certificate";

/// `REDIS_URL` is not a Redis URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "REDIS_URL={url} is not a valid Redis URL ({reason}); expected \
     redis://[[user]:password@]host[:6379][/db], rediss://... for TLS, \
     redis+unix:///path/to/socket, or for a Redis Cluster several of its nodes' redis:// or \
     rediss:// URLs, comma-separated"
)]
pub struct RedisUrlError {
    /// `REDIS_URL`, password masked.
    pub url: String,
    /// What the Redis client said.
    pub reason: String,
}

impl RedisUrlError {
    /// Words `error`, which redis-rs gave for `url`.
    pub fn new(url: &str, error: &redis::RedisError) -> Self {
        Self {
            url: redact_url(url),
            reason: error.to_string(),
        }
    }
}

/// Why the Redis client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// `REDIS_URL` does not parse.
    #[error(transparent)]
    Url(#[from] RedisUrlError),
    /// `REDIS_CA_FILE` cannot be read or holds no usable certificate.
    #[error(
        "REDIS_CA_FILE {}: {source}; set it to a readable PEM file of the CA that signed the \
         Redis server's certificate, or unset it",
        path.display()
    )]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `REDIS_CA_FILE` is set, but `REDIS_URL` is plain `redis://`: the CA would be ignored.
    #[error(
        "REDIS_CA_FILE is set but REDIS_URL={url} is not a rediss:// (TLS) URL; use rediss:// \
         for TLS, or unset REDIS_CA_FILE"
    )]
    CaWithoutTls {
        /// `REDIS_URL`, password masked.
        url: String,
    },
}

/// The Redis client of `url` (`REDIS_URL`), trusting only the CA in `ca_file`
/// (`REDIS_CA_FILE`) when set, else the bundled Mozilla roots for `rediss://`.
pub fn client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, RedisSetupError> {
    let bad_url = |e: redis::RedisError| RedisSetupError::Url(RedisUrlError::new(url, &e));
    let info = url.into_connection_info().map_err(bad_url)?;
    let Some(path) = ca_file else {
        return redis::Client::open(info).map_err(bad_url);
    };
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(RedisSetupError::CaWithoutTls {
            url: redact_url(url),
        });
    }
    let ca = std::fs::read(path).map_err(|e| RedisSetupError::CaFile {
        path: path.to_owned(),
        source: e.into(),
    })?;
    // redis-rs would take a file without certificates as an empty trust store and then refuse
    // every server: say so now.
    if !ca.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(RedisSetupError::CaFile {
            path: path.to_owned(),
            source: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca),
    };
    redis::Client::build_with_tls(info, certificates).map_err(|e| RedisSetupError::CaFile {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// The cache's Redis of `url` (`REDIS_URL`) and `ca_file` (`REDIS_CA_FILE`): one Redis for one
/// URL (exactly [`client`]), a Redis Cluster seeded by every node named when the URL is several,
/// comma-separated.
pub fn target(url: &str, ca_file: Option<&Path>) -> Result<Target, RedisSetupError> {
    let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
    if nodes.len() < 2 {
        return Ok(Target::Single(client(url, ca_file)?));
    }
    let seeds = nodes
        .iter()
        .map(|node| {
            if node.is_empty() {
                Err(RedisSetupError::Url(RedisUrlError {
                    url: redact_url(url),
                    reason: "an empty node in the comma-separated list".to_owned(),
                }))
            } else {
                client(node, ca_file)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let certificates = match ca_file {
        Some(path) => Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path).map_err(|e| RedisSetupError::CaFile {
                path: path.to_owned(),
                source: e.into(),
            })?),
        }),
        None => None,
    };
    Target::cluster(seeds, certificates)
        .map_err(|e| RedisSetupError::Url(RedisUrlError::new(url, &e)))
}

/// Whether `client` speaks TLS (`rediss://`).
pub fn is_tls(client: &redis::Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_redis_url_is_named_masked_with_the_expected_shape() {
        let message = client("redis//:s3cret@cache", None)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("REDIS_URL=redis//:***@cache is not a valid Redis URL"),
            "{message}"
        );
        assert!(message.contains("expected redis://"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn a_redis_ca_with_a_plain_url_is_refused() {
        let error =
            client("redis://:s3cret@127.0.0.1:6379", Some(Path::new("/ca.pem"))).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(
                "REDIS_CA_FILE is set but REDIS_URL=redis://:***@127.0.0.1:6379 is not a \
                 rediss:// (TLS) URL"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_missing_redis_ca_file_is_named() {
        let error = client(
            "rediss://127.0.0.1:6380",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("REDIS_CA_FILE /nonexistent/ca.pem: "),
            "{message}"
        );
        assert!(
            message.contains("set it to a readable PEM file"),
            "{message}"
        );
    }

    #[test]
    fn a_redis_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("not-a-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        let error = client("rediss://127.0.0.1:6380", Some(&path)).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn one_url_is_one_redis_and_several_are_a_cluster_of_the_same_settings() {
        assert!(!target("redis://127.0.0.1:6379", None).unwrap().is_cluster());
        let cluster = target(
            "redis://:pw@127.0.0.1:7000, redis://:pw@127.0.0.1:7001",
            None,
        )
        .unwrap();
        assert!(cluster.is_cluster());
        assert_eq!(cluster.seeds().len(), 2);
        let message = target("redis://:s3cret@a:7000,,redis://b:7001", None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("empty node"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert_eq!(
            redact_url("redis://:one@a:7000,redis://:two@b:7001"),
            "redis://:***@a:7000,redis://:***@b:7001"
        );
        // Every node as one Redis would be: a CA with plain URLs is refused for a cluster too,
        // and so are nodes with different TLS modes.
        let error =
            target("redis://a:7000,redis://b:7001", Some(Path::new("/ca.pem"))).unwrap_err();
        assert!(
            matches!(error, RedisSetupError::CaWithoutTls { .. }),
            "{error}"
        );
        let message = target("redis://a:7000,rediss://b:7001", None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("TLS"), "{message}");
    }

    #[test]
    fn a_rediss_url_builds_a_tls_client() {
        assert!(is_tls(&client("rediss://127.0.0.1:6380", None).unwrap()));
        assert!(!is_tls(&client("redis://127.0.0.1:6379", None).unwrap()));
    }
}
