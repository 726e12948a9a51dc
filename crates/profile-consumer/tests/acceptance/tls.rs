//! The consumer over TLS to the stack's TLS-only PostgreSQL (5442) and Redis (6389) (issue 14):
//! the audit handler with `sslmode=verify-full&sslrootcert=<ca>` and the cache-refresh handler
//! with `rediss://` and `REDIS_CA_FILE` apply events, and a certificate from another CA or a
//! host the certificate does not name stops the start with an error naming the variable. Needs
//! `scripts/stack up` and `eval "$(scripts/stack env)"`; fails (never skips) without them.

use std::time::Duration;

use profile_consumer::{Config, HandlerKind};
use statecast_events::EventType;
use statecast_testkit::tls::{OtherCa, TlsStack, with_root_cert};
use tokio_util::sync::CancellationToken;

use crate::support::{self, Running};

fn stack() -> TlsStack {
    TlsStack::from_env().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Why the consumer refused to start with `config` (it must refuse, and soon).
async fn refusal(config: Config) -> String {
    let run = profile_consumer::run(config, CancellationToken::new());
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(())) => panic!("the consumer started with a TLS peer it must refuse"),
        Ok(Err(error)) => error.to_string(),
        Err(_) => panic!("the consumer neither started nor refused within 20 s"),
    }
}

#[tokio::test]
async fn audit_and_cache_refresh_apply_events_over_verified_tls() {
    let stack = stack();
    let database = stack.fresh_database().await.unwrap();
    let topic = support::topic("tls", 1).await;
    let user = statecast_testkit::unique("tls");
    let event = support::event(EventType::UserCreated, &user, 1, "tls@example.com", "PT");
    support::produce(&support::producer(), &topic, &event).await;

    let audit = Running::start(support::config(&topic, HandlerKind::Audit, Some(&database)));
    let mut config = support::config(&topic, HandlerKind::CacheRefresh, None);
    config.redis_url = Some(stack.redis_url.clone());
    config.redis_ca_file = Some(stack.ca.clone());
    let cache = Running::start(config);
    audit.wait_records("processed", 1.0).await;
    cache.wait_records("processed", 1.0).await;

    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("select count(*) from audit_log where user_id = $1")
        .bind(&user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the audit row was written over TLS");
    // The server accepts only TLS over TCP (hostssl); the consumer's pool says so too.
    let (plain,): (i64,) = sqlx::query_as(
        "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid)
         where a.datname = current_database() and not s.ssl",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(plain, 0);

    let ca = std::fs::read(&stack.ca).unwrap();
    let client = redis::Client::build_with_tls(
        stack.redis_url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        },
    )
    .unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("profile:{user}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&raw.unwrap()).unwrap();
    assert_eq!(entry["v"], 1, "the entry was written over rediss://");

    audit.stop().await;
    cache.stop().await;
}

#[tokio::test]
async fn a_postgres_certificate_from_another_ca_is_refused_naming_database_url() {
    let stack = stack();
    let other = OtherCa::new().unwrap();
    let database = with_root_cert(&stack.database_url, other.path());
    let config = support::config("unused", HandlerKind::Audit, Some(&database));
    let error = refusal(config).await;
    assert!(
        error.starts_with(
            "cannot connect to PostgreSQL at postgres://statecast:***@127.0.0.1:5442/"
        ) && error.contains("sslmode=verify-full")
            && error.contains("(DATABASE_URL)"),
        "{error}"
    );
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(
        error.contains("check that sslrootcert= in DATABASE_URL names the CA"),
        "says what to check: {error}"
    );
}

#[tokio::test]
async fn a_postgres_host_the_certificate_does_not_name_is_refused() {
    let stack = stack();
    let database = stack.database_url.replace("@127.0.0.1:", "@localhost:");
    let config = support::config("unused", HandlerKind::Audit, Some(&database));
    let error = refusal(config).await;
    assert!(
        error.starts_with(
            "cannot connect to PostgreSQL at postgres://statecast:***@localhost:5442/"
        ) && error.contains("sslmode=verify-full")
            && error.contains("(DATABASE_URL)"),
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
    let mut config = support::config("unused", HandlerKind::CacheRefresh, None);
    config.redis_url = Some(stack.redis_url.clone());
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
async fn a_redis_host_the_certificate_does_not_name_is_refused() {
    let stack = stack();
    let mut config = support::config("unused", HandlerKind::CacheRefresh, None);
    config.redis_url = Some(stack.redis_url.replace("127.0.0.1", "localhost"));
    config.redis_ca_file = Some(stack.ca.clone());
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
