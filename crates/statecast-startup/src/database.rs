//! The PostgreSQL pool of `DATABASE_URL`, and why it could not be opened.
//!
//! A sqlx pool that cannot connect retries until its acquire timeout and then reports only
//! "pool timed out while waiting for an open connection": no address, no cause. [`connect`]
//! makes one direct attempt after such a time-out to learn the cause (connection refused, an
//! unknown host, a database that does not exist, a certificate that does not verify), and
//! [`DatabaseError`] words it with the masked URL and the fix.

use std::io;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::{has_invalid_data, redact_url};

/// What to check when the TLS handshake with PostgreSQL failed.
const TLS_FIX: &str = "the TLS handshake failed: check that sslrootcert= in DATABASE_URL names \
    the CA that signed the server's certificate, that the server has TLS on and, with \
    sslmode=verify-full, that the URL's host is a name (or IP) in that certificate";

/// PostgreSQL could not be used at start: unreachable, refusing us, or `DATABASE_URL` unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot connect to PostgreSQL at {url} (DATABASE_URL): {reason}; {fix}")]
pub struct DatabaseError {
    /// `DATABASE_URL`, password masked.
    pub url: String,
    /// What went wrong.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

impl DatabaseError {
    /// Words `error`, met while connecting to `url`. `waited` is how long the pool tried;
    /// `timeout_variable` names the setting of that time, if the binary has one.
    pub fn new(
        url: &str,
        error: &sqlx::Error,
        waited: Duration,
        timeout_variable: Option<&str>,
    ) -> Self {
        // sqlx reports a refused certificate as its own TLS error or as the I/O error
        // `InvalidData` of rustls, possibly wrapped.
        let tls = matches!(error, sqlx::Error::Tls(_)) || has_invalid_data(error);
        let (reason, fix) = match error {
            sqlx::Error::Tls(e) => (format!("TLS: {e}"), TLS_FIX.to_owned()),
            sqlx::Error::Io(e) if tls => (e.to_string(), TLS_FIX.to_owned()),
            other if tls => (other.to_string(), TLS_FIX.to_owned()),
            sqlx::Error::Configuration(e) => (
                e.to_string(),
                "DATABASE_URL must look like postgres://user:password@host:5432/database"
                    .to_owned(),
            ),
            sqlx::Error::PoolTimedOut => (
                format!("no connection within {} ms", waited.as_millis()),
                format!(
                    "check that PostgreSQL is up and reachable at that host and port{}",
                    timeout_variable
                        .map(|v| format!(" ({v} sets how long to wait)"))
                        .unwrap_or_default()
                ),
            ),
            sqlx::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => (
                e.to_string(),
                "nothing listens there: start PostgreSQL, or fix the host and port in \
                 DATABASE_URL"
                    .to_owned(),
            ),
            sqlx::Error::Io(e) => (
                e.to_string(),
                "check the host name and port in DATABASE_URL, and the network to it".to_owned(),
            ),
            sqlx::Error::Database(e) => (
                e.message().to_owned(),
                match e.code().as_deref() {
                    // invalid_password, invalid_authorization_specification
                    Some("28P01" | "28000") => "check the user name and password in DATABASE_URL",
                    // invalid_catalog_name
                    Some("3D000") => "create the database, or fix its name in DATABASE_URL",
                    _ => "see the PostgreSQL server log for why it refused the connection",
                }
                .to_owned(),
            ),
            other => (
                other.to_string(),
                "check DATABASE_URL and that PostgreSQL is up".to_owned(),
            ),
        };
        Self {
            url: redact_url(url),
            reason,
            fix,
        }
    }
}

/// The pool of `url` (`DATABASE_URL`) built from `options`, with at least one connection open.
///
/// `waited` is the pool's acquire timeout (set on `options` here); `timeout_variable` names the
/// setting of it in messages, if the binary has one.
pub async fn connect(
    url: &str,
    options: PgPoolOptions,
    waited: Duration,
    timeout_variable: Option<&str>,
) -> Result<PgPool, DatabaseError> {
    let fail = |e: &sqlx::Error| DatabaseError::new(url, e, waited, timeout_variable);
    let connect = PgConnectOptions::from_str(url).map_err(|e| fail(&e))?;
    let connected = options
        .acquire_timeout(waited)
        .connect_with(connect.clone())
        .await;
    match connected {
        Ok(pool) => Ok(pool),
        Err(sqlx::Error::PoolTimedOut) => {
            // The pool retried until its timeout and kept no cause ("pool timed out"): one direct
            // attempt tells what is wrong (connection refused, unknown host...).
            let cause = match tokio::time::timeout(waited, connect.connect()).await {
                Ok(Err(cause)) => cause,
                Ok(Ok(_)) | Err(_) => sqlx::Error::PoolTimedOut,
            };
            Err(fail(&cause))
        }
        Err(e) => Err(fail(&e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const URL: &str = "postgres://statecast:s3cret@10.1.2.3:5432/statecast";
    const MASKED: &str = "postgres://statecast:***@10.1.2.3:5432/statecast";

    #[test]
    fn an_unreachable_database_is_named_with_its_masked_url_and_a_fix() {
        let refused = sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let message = DatabaseError::new(URL, &refused, Duration::from_secs(3), None).to_string();
        assert!(
            message.starts_with(&format!(
                "cannot connect to PostgreSQL at {MASKED} (DATABASE_URL): "
            )),
            "{message}"
        );
        assert!(message.contains("start PostgreSQL"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");

        let timed_out = DatabaseError::new(
            URL,
            &sqlx::Error::PoolTimedOut,
            Duration::from_millis(3000),
            Some("DB_ACQUIRE_TIMEOUT_MS"),
        );
        let message = timed_out.to_string();
        assert!(message.contains(MASKED), "{message}");
        assert!(
            message.contains("no connection within 3000 ms")
                && message.contains("DB_ACQUIRE_TIMEOUT_MS sets how long to wait"),
            "{message}"
        );
        let without_variable =
            DatabaseError::new(URL, &sqlx::Error::PoolTimedOut, Duration::ZERO, None);
        assert!(
            without_variable
                .to_string()
                .ends_with("reachable at that host and port"),
            "{without_variable}"
        );
    }

    #[test]
    fn a_malformed_database_url_says_what_it_should_look_like() {
        let error = sqlx::Error::Configuration("relative URL without a base".into());
        let message =
            DatabaseError::new("statecast:s3cret@db", &error, Duration::ZERO, None).to_string();
        assert!(
            message.contains("statecast:***@db (DATABASE_URL)"),
            "{message}"
        );
        assert!(
            message.contains("postgres://user:password@host:5432/database"),
            "{message}"
        );
    }

    #[test]
    fn a_refused_certificate_says_what_to_check() {
        let error = sqlx::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        let message = DatabaseError::new(URL, &error, Duration::ZERO, None).to_string();
        assert!(message.contains("UnknownIssuer"), "{message}");
        assert!(
            message.contains("check that sslrootcert= in DATABASE_URL"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_reported_as_refused_not_as_a_pool_time_out() {
        // Port 1 on loopback: nothing listens there.
        let error = connect(
            "postgres://statecast:s3cret@127.0.0.1:1/statecast",
            PgPoolOptions::new().max_connections(1),
            Duration::from_millis(300),
            None,
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(
                "cannot connect to PostgreSQL at postgres://statecast:***@127.0.0.1:1/statecast \
                 (DATABASE_URL): "
            ),
            "{message}"
        );
        assert!(
            message.contains("start PostgreSQL, or fix the host and port"),
            "{message}"
        );
    }
}
