//! Start-up failures told the way the person starting the API needs them: which setting, its
//! value (credentials masked), what went wrong, and what to do about it. The constructors here
//! are pure so each message is unit-tested; `build` and `listen` call them.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::Error;

/// `url` with its password (user-info or `password=` parameter) replaced by `***`, for messages
/// and logs: `postgres://statecast:***@db:5432/statecast`. Errs on the side of masking: a value
/// too broken to parse (`redis//:pw@host`) still has everything between the first `:` and the last
/// `@` of its user-info masked.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.rfind('@') {
        Some(at) => {
            let start = head[..at].find("://").map_or(0, |i| i + 3);
            match head[start..at].find(':') {
                Some(colon) => format!("{}:***{}", &head[..start + colon], &head[at..]),
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// PostgreSQL could not be used at start. `waited` is how long the pool tried.
pub(crate) fn database(url: &str, error: &sqlx::Error, waited: Duration) -> Error {
    let (reason, fix) = match error {
        sqlx::Error::Configuration(e) => (
            e.to_string(),
            "DATABASE_URL must look like postgres://user:password@host:5432/database",
        ),
        sqlx::Error::PoolTimedOut => (
            format!("no connection within {} ms", waited.as_millis()),
            "check that PostgreSQL is up and reachable at that host and port \
             (DB_ACQUIRE_TIMEOUT_MS sets how long to wait)",
        ),
        sqlx::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => (
            e.to_string(),
            "nothing listens there: start PostgreSQL, or fix the host and port in DATABASE_URL",
        ),
        sqlx::Error::Io(e) => (
            e.to_string(),
            "check the host name and port in DATABASE_URL, and the network to it",
        ),
        sqlx::Error::Tls(e) => (
            format!("TLS: {e}"),
            "check sslmode (and sslrootcert) in DATABASE_URL against the server's TLS set-up",
        ),
        sqlx::Error::Database(e) => (
            e.message().to_owned(),
            match e.code().as_deref() {
                // invalid_password, invalid_authorization_specification
                Some("28P01" | "28000") => "check the user name and password in DATABASE_URL",
                // invalid_catalog_name
                Some("3D000") => "create the database, or fix its name in DATABASE_URL",
                _ => "see the PostgreSQL server log for why it refused the connection",
            },
        ),
        other => (
            other.to_string(),
            "check DATABASE_URL and that PostgreSQL is up",
        ),
    };
    Error::Database {
        url: redact_url(url),
        reason,
        fix: fix.to_owned(),
    }
}

/// `REDIS_URL` is not a Redis URL.
pub(crate) fn redis_url(url: &str, error: &redis::RedisError) -> Error {
    Error::RedisUrl {
        url: redact_url(url),
        reason: error.to_string(),
    }
}

/// The HTTP listener could not be bound.
pub(crate) fn listen(addr: SocketAddr, error: &io::Error) -> Error {
    let fix = match error.kind() {
        io::ErrorKind::AddrInUse => {
            "another process holds this port: stop it, or set LISTEN_ADDR to a free port"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: use a higher port such as 8080"
        }
        io::ErrorKind::AddrNotAvailable => {
            "no interface of this host has that address: use 0.0.0.0 (all of them) or one of \
             its addresses"
        }
        _ => "set LISTEN_ADDR to a host:port this process may bind, such as 0.0.0.0:8080",
    };
    Error::Listen {
        addr,
        reason: error.to_string(),
        fix,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_of_the_url_kept() {
        for (url, masked) in [
            (
                "postgres://statecast:s3cret@db.internal:5432/statecast",
                "postgres://statecast:***@db.internal:5432/statecast",
            ),
            (
                "postgres://statecast:p@ss@db:5432/db?sslmode=require",
                "postgres://statecast:***@db:5432/db?sslmode=require",
            ),
            (
                "postgres://db:5432/db?user=u&password=s3cret&sslmode=disable",
                "postgres://db:5432/db?user=u&password=***&sslmode=disable",
            ),
            ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("postgres://statecast@db/x", "postgres://statecast@db/x"),
            ("statecast:s3cret@db:5432/x", "statecast:***@db:5432/x"),
            ("redis//:s3cret@cache", "redis//:***@cache"),
        ] {
            assert_eq!(redact_url(url), masked);
        }
    }

    const URL: &str = "postgres://statecast:s3cret@10.1.2.3:5432/statecast";
    const MASKED: &str = "postgres://statecast:***@10.1.2.3:5432/statecast";

    #[test]
    fn an_unreachable_database_is_named_with_its_masked_url_and_a_fix() {
        let refused = sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let message = database(URL, &refused, Duration::from_secs(3)).to_string();
        assert!(
            message.starts_with(&format!(
                "cannot connect to PostgreSQL at {MASKED} (DATABASE_URL): "
            )),
            "{message}"
        );
        assert!(message.contains("start PostgreSQL"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");

        let timed_out = database(URL, &sqlx::Error::PoolTimedOut, Duration::from_millis(3000));
        let message = timed_out.to_string();
        assert!(message.contains(MASKED), "{message}");
        assert!(
            message.contains("no connection within 3000 ms")
                && message.contains("DB_ACQUIRE_TIMEOUT_MS"),
            "{message}"
        );
    }

    #[test]
    fn a_malformed_database_url_says_what_it_should_look_like() {
        let error = sqlx::Error::Configuration("relative URL without a base".into());
        let message = database("statecast:s3cret@db", &error, Duration::ZERO).to_string();
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
    fn a_bad_redis_url_is_named_with_the_expected_shape() {
        let error = redis::Client::open("redis//:s3cret@cache").unwrap_err();
        let message = redis_url("redis//:s3cret@cache", &error).to_string();
        assert!(
            message.starts_with("REDIS_URL=redis//:***@cache is not a valid Redis URL"),
            "{message}"
        );
        assert!(message.contains("redis://"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn a_taken_port_names_the_address_and_what_to_do() {
        let addr: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let message = listen(addr, &io::Error::from(io::ErrorKind::AddrInUse)).to_string();
        assert!(
            message.starts_with("cannot listen on 0.0.0.0:8080 (LISTEN_ADDR): "),
            "{message}"
        );
        assert!(
            message.contains("another process holds this port")
                && message.contains("set LISTEN_ADDR to a free port"),
            "{message}"
        );
    }
}
