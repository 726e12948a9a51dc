//! Start-up of the Statecast binaries, told the way the person starting one needs it: which
//! setting, its value (credentials masked), what went wrong, and what to do about it.
//!
//! `profile-api` and `profile-consumer` both open a PostgreSQL pool from `DATABASE_URL`, build a
//! Redis client from `REDIS_URL` / `REDIS_CA_FILE` and bind an HTTP listener; this crate does
//! those three things once, so the same mistake gets the same message in both (the wording is a
//! contract: `docs/contracts.md`). The error constructors are pure and unit-tested here; each
//! binary's start-up tests run the real binary against each mistake.
//!
//! # Layout
//! - [`redact_url`]: a URL with its password replaced by `***`, for messages and logs.
//! - [`database`]: [`database::connect`] opens the pool of `DATABASE_URL`, and a
//!   [`DatabaseError`] names the real cause (connection refused, unknown database, TLS) instead
//!   of "pool timed out".
//! - [`redis_setup`]: [`redis_setup::client`] builds the client of `REDIS_URL` and
//!   `REDIS_CA_FILE`; [`RedisSetupError`] says what is wrong with either.
//! - [`listen`]: [`listen::bind`] binds `LISTEN_ADDR`, `METRICS_ADDR`, ...; a [`ListenError`]
//!   names the variable and what to do about a taken or forbidden port.
//! - [`has_invalid_data`]: whether an error is a TLS handshake that rustls refused.

pub mod database;
pub mod listen;
pub mod redis_setup;

pub use database::DatabaseError;
pub use listen::ListenError;
pub use redis_setup::{REDIS_TLS_HINT, RedisSetupError, RedisUrlError};

/// `url` with its password (user-info or `password=` parameter) replaced by `***`, for messages
/// and logs: `postgres://statecast:***@db:5432/statecast`. Errs on the side of masking: a value
/// too broken to parse (`redis//:pw@host`) still has everything between the first `:` and the last
/// `@` of its user-info masked. Works for any URL with user-info (`smtp://`, `redis://`, ...).
pub fn redact_url(url: &str) -> String {
    // A Redis Cluster's REDIS_URL lists several URLs, each with its password.
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
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

/// Whether `error` or one of its sources is an I/O error of kind `InvalidData`: how
/// tokio-rustls reports a handshake rustls refused (unknown issuer, wrong name, bad record).
pub fn has_invalid_data(error: &(dyn std::error::Error + 'static)) -> bool {
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
            (
                "smtp://bob:s3cret@relay:587?tls=required",
                "smtp://bob:***@relay:587?tls=required",
            ),
        ] {
            assert_eq!(redact_url(url), masked);
        }
    }

    #[test]
    fn invalid_data_is_found_among_the_sources() {
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!has_invalid_data(&plain));
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "UnknownIssuer");
        assert!(has_invalid_data(&tls));
        let wrapped = sqlx::Error::Io(tls);
        assert!(has_invalid_data(&wrapped));
    }
}
