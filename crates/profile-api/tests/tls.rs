//! The API over TLS to the stack's TLS-only PostgreSQL (5442) and Redis (6389) (issue 14):
//! `sslmode=verify-full&sslrootcert=<ca>` and `rediss://` with `REDIS_CA_FILE` work end to end,
//! and a certificate from another CA, or a host the certificate does not name, stops the start
//! with an error naming the variable to fix. Needs `scripts/stack up` and
//! `eval "$(scripts/stack env)"`; fails (never skips) without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{body, start, user, version_of};
use profile_api::Config;
use reqwest::StatusCode;
use statecast_testkit as testkit;
use statecast_testkit::tls::{OtherCa, TlsStack, with_root_cert};

fn stack() -> TlsStack {
    TlsStack::from_env().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A config on a fresh database of the TLS PostgreSQL and the TLS Redis with the stack's CA.
async fn tls_config(stack: &TlsStack) -> Config {
    let database = stack.fresh_database().await.unwrap();
    let mut config = Config::for_tests(
        &database,
        &stack.redis_url,
        &testkit::kafka_brokers(),
        &testkit::unique("tls"),
    );
    config.redis_ca_file = Some(stack.ca.clone());
    config
}

/// Why `build` refused `config` (it must refuse).
async fn refusal(config: Config) -> String {
    match profile_api::build(config).await {
        Ok(_) => panic!("build accepted a TLS peer it must refuse"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn the_api_writes_and_caches_over_verified_tls() {
    let stack = stack();
    let t = start(tls_config(&stack).await, false).await;
    let id = user("tls");
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    let first = t.get(&id).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "miss");
    let second = t.get(&id).await;
    assert_eq!(
        second.headers()["x-cache"],
        "hit",
        "the entry went through rediss://"
    );
    assert_eq!(version_of(&second.json().await.unwrap()), 1);
    let ready = t.get_json("/readyz").await;
    assert_eq!(ready["postgres"], "up");
    assert_eq!(ready["redis"], "up");

    // The server only accepts TLS over TCP (hostssl), and says so of every pool connection.
    let (ssl, total): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where s.ssl), count(*) from pg_stat_ssl s
         join pg_stat_activity a using (pid) where a.datname = current_database()",
    )
    .fetch_one(t.app.pool())
    .await
    .unwrap();
    assert!(total >= 1);
    assert_eq!(ssl, total, "every connection of the pool is TLS");
}

#[tokio::test]
async fn a_postgres_certificate_from_another_ca_is_refused_naming_database_url() {
    let stack = stack();
    let other = OtherCa::new().unwrap();
    let mut config = tls_config(&stack).await;
    config.database_url = with_root_cert(&config.database_url, other.path());
    let error = refusal(config).await;
    assert!(
        error.starts_with(
            "cannot connect to PostgreSQL at postgres://statecast:***@127.0.0.1:5442/"
        ) && error.contains("(DATABASE_URL)"),
        "{error}"
    );
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(
        error.contains("sslrootcert="),
        "says what to check: {error}"
    );
}

#[tokio::test]
async fn a_postgres_host_the_certificate_does_not_name_is_refused() {
    let stack = stack();
    let mut config = tls_config(&stack).await;
    // The stack's certificate names IP 127.0.0.1 only.
    config.database_url = config.database_url.replace("@127.0.0.1:", "@localhost:");
    let error = refusal(config).await;
    assert!(
        error.starts_with(
            "cannot connect to PostgreSQL at postgres://statecast:***@localhost:5442/"
        ) && error.contains("(DATABASE_URL)"),
        "{error}"
    );
    assert!(
        error.contains("certificate not valid for name \"localhost\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_redis_certificate_from_another_ca_is_refused_naming_redis_ca_file() {
    let stack = stack();
    let other = OtherCa::new().unwrap();
    let mut config = tls_config(&stack).await;
    config.redis_ca_file = Some(other.path().to_owned());
    let error = refusal(config).await;
    assert!(
        error.starts_with("cannot connect to Redis at REDIS_URL (127.0.0.1:6389, TLS)"),
        "{error}"
    );
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(
        error.contains("REDIS_CA_FILE"),
        "says what to check: {error}"
    );
}

#[tokio::test]
async fn rediss_without_the_ca_trusts_only_public_roots_and_is_refused() {
    let stack = stack();
    let mut config = tls_config(&stack).await;
    config.redis_ca_file = None;
    let error = refusal(config).await;
    assert!(error.contains("REDIS_URL"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_redis_host_the_certificate_does_not_name_is_refused() {
    let stack = stack();
    let mut config = tls_config(&stack).await;
    config.redis_url = stack.redis_url.replace("127.0.0.1", "localhost");
    let error = refusal(config).await;
    assert!(
        error.starts_with("cannot connect to Redis at REDIS_URL (localhost:6389, TLS)"),
        "{error}"
    );
    assert!(
        error.contains("certificate not valid for name \"localhost\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_redis_ca_file_with_a_plain_redis_url_is_refused() {
    let stack = stack();
    let mut config = tls_config(&stack).await;
    config.redis_url = testkit::redis_url();
    let error = refusal(config).await;
    assert_eq!(
        error,
        format!(
            "REDIS_CA_FILE is set but REDIS_URL={} is not a rediss:// (TLS) URL; use rediss:// \
             for TLS, or unset REDIS_CA_FILE",
            testkit::redis_url()
        )
    );
}

/// The near cache's tracking connection is a RESP3 connection of its own, built from the
/// API's Redis client: over `rediss://` it must keep the TLS settings and the CA, or the near
/// cache would stay bypassed (or, worse, another replica's writes would go unseen).
#[tokio::test]
async fn the_near_cache_tracks_over_tls_and_sees_another_replicas_write() {
    let stack = stack();
    let config = tls_config(&stack).await;
    let (a, b) = (
        start(config.clone(), false).await,
        start(config, false).await,
    );
    for t in [&a, &b] {
        let near = t
            .app
            .near_cache()
            .expect("near cache on by default")
            .clone();
        let up = common::eventually(Duration::from_secs(5), || async { near.is_tracking() }).await;
        assert!(up, "the near cache never tracked over rediss://");
    }
    let id = user("tls-near");
    assert_eq!(a.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    let near_hits = || async {
        b.metric(
            "profile_cache_lookups_total",
            "result=\"hit\",tier=\"near\"",
        )
        .await
    };
    let before = near_hits().await;
    let served_near = common::eventually(Duration::from_secs(5), || async {
        assert_eq!(b.get(&id).await.status(), StatusCode::OK);
        near_hits().await > before
    })
    .await;
    assert!(served_near, "B never answered from its near cache over TLS");
    assert_eq!(a.put(&id, &body("B")).await.status(), StatusCode::OK);
    // The push comes over the TLS tracking connection; B must answer version 2 from now on.
    let fresh = common::eventually(Duration::from_secs(5), || async {
        version_of(&b.get(&id).await.json().await.unwrap()) == 2
    })
    .await;
    assert!(
        fresh,
        "B kept answering version 1: no invalidation over TLS"
    );
    assert_eq!(b.metric("profile_near_cache_tracking", "").await, 1.0);
}
