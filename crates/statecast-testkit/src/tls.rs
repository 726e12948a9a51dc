//! The TLS-only PostgreSQL and Redis of `scripts/stack up` (ports 5442 and 6389, certificates of
//! a CA made at the first `up` on the machine, under `~/.cache/statecast/tools/tls`), and a CA that signed none of them.
//!
//! Tests that need them fail (never skip) when `scripts/stack env` has not been evaluated: a
//! TLS test that passes by not running would hide exactly the regression it is for.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sqlx::Connection as _;

/// The variables `scripts/stack env` exports for the TLS servers.
const VARS: [&str; 3] = [
    "STATECAST_TLS_DATABASE_URL",
    "STATECAST_TLS_REDIS_URL",
    "STATECAST_TLS_CA",
];

/// Where the TLS servers are and the CA that signed their certificates.
#[derive(Debug, Clone)]
pub struct TlsStack {
    /// `postgres://...@127.0.0.1:5442/statecast?sslmode=verify-full&sslrootcert=<ca>`.
    pub database_url: String,
    /// `rediss://127.0.0.1:6389`.
    pub redis_url: String,
    /// PEM of the CA (for `REDIS_CA_FILE`, and the `sslrootcert` above).
    pub ca: PathBuf,
}

impl TlsStack {
    /// The TLS servers from `STATECAST_TLS_DATABASE_URL`, `STATECAST_TLS_REDIS_URL` and
    /// `STATECAST_TLS_CA`; an error saying how to get them when one is missing.
    pub fn from_env() -> anyhow::Result<Self> {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let missing: Vec<&str> = VARS.into_iter().filter(|v| get(v).is_none()).collect();
        if !missing.is_empty() {
            bail!(
                "{} not set: the TLS tests need the TLS PostgreSQL and Redis of the local stack; \
                 run `scripts/stack up` and `eval \"$(scripts/stack env)\"` first",
                missing.join(", ")
            );
        }
        let stack = Self {
            database_url: get(VARS[0]).unwrap_or_default(),
            redis_url: get(VARS[1]).unwrap_or_default(),
            ca: PathBuf::from(get(VARS[2]).unwrap_or_default()),
        };
        if !stack.ca.is_file() {
            bail!(
                "STATECAST_TLS_CA={} is not a file: run `scripts/stack up` and \
                 `eval \"$(scripts/stack env)\"` in this checkout",
                stack.ca.display()
            );
        }
        Ok(stack)
    }

    /// Creates an empty database of this test's own on the TLS PostgreSQL and returns its
    /// URL (same host, `sslmode` and `sslrootcert`).
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let mut admin = sqlx::PgConnection::connect(&self.database_url)
            .await
            .with_context(|| {
                format!(
                    "connect to the TLS PostgreSQL ({}): is the stack up? (scripts/stack up)",
                    without_password(&self.database_url)
                )
            })?;
        let name = crate::unique("t").replace('-', "_");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .context("create test database")?;
        with_database(&self.database_url, &name)
    }
}

/// `url` with its database name replaced by `name`, the query (`sslmode`, ...) kept.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (prefix, _) = base
        .rsplit_once('/')
        .filter(|(prefix, _)| prefix.contains("://") && !prefix.ends_with('/'))
        .context("the PostgreSQL URL has no database name")?;
    Ok(match query {
        Some(query) => format!("{prefix}/{name}?{query}"),
        None => format!("{prefix}/{name}"),
    })
}

/// `url` with `sslrootcert=` pointing at `ca` instead.
pub fn with_root_cert(url: &str, ca: &Path) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslrootcert="))
        .map(str::to_owned)
        .collect();
    params.push(format!("sslrootcert={}", ca.display()));
    format!("{base}?{}", params.join("&"))
}

/// `url` without the password of its user, for messages.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((_, host))) if rest.contains('@') => {
            let user = rest.split([':', '@']).next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        _ => url.to_owned(),
    }
}

/// A PEM file holding a freshly made CA that signed none of the stack's certificates: a client
/// trusting only it must refuse the stack's TLS servers. Removed when the value is dropped.
pub struct OtherCa {
    path: PathBuf,
}

impl OtherCa {
    /// Makes the CA and writes its certificate to a temporary file.
    pub fn new() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Statecast unrelated test CA");
        let cert = params.self_signed(&KeyPair::generate()?)?;
        let path = std::env::temp_dir().join(format!("{}.pem", crate::unique("other-ca")));
        std::fs::write(&path, cert.pem()).with_context(|| format!("write {}", path.display()))?;
        Ok(Self { path })
    }

    /// The PEM file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OtherCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_query_kept() {
        let url = "postgres://u:p@127.0.0.1:5442/statecast?sslmode=verify-full&sslrootcert=/ca.crt";
        assert_eq!(
            with_database(url, "t_1").unwrap(),
            "postgres://u:p@127.0.0.1:5442/t_1?sslmode=verify-full&sslrootcert=/ca.crt"
        );
        assert_eq!(
            with_database("postgres://h:1/db", "x").unwrap(),
            "postgres://h:1/x"
        );
        assert!(with_database("postgres://h:1", "x").is_err());
    }

    #[test]
    fn the_root_cert_is_replaced() {
        let url = "postgres://h/db?sslmode=verify-full&sslrootcert=/a.crt";
        assert_eq!(
            with_root_cert(url, Path::new("/b.crt")),
            "postgres://h/db?sslmode=verify-full&sslrootcert=/b.crt"
        );
    }

    #[test]
    fn messages_carry_no_password() {
        assert_eq!(
            without_password("postgres://statecast:secret@127.0.0.1:5442/x?sslmode=require"),
            "postgres://statecast@127.0.0.1:5442/x?sslmode=require"
        );
    }

    #[test]
    fn another_ca_is_a_pem_certificate() {
        let ca = OtherCa::new().unwrap();
        let pem = std::fs::read_to_string(ca.path()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let path = ca.path().to_owned();
        drop(ca);
        assert!(!path.exists());
    }
}
