//! Real outages: PostgreSQL cut by a fault proxy, and a private broker killed and restarted.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{body, start, user, version_of};
use reqwest::StatusCode;
use statecast_testkit::{self as testkit, FaultProxy, PrivateBroker};

#[tokio::test]
async fn with_postgres_down_cached_reads_work_and_writes_fail_cleanly_with_503() {
    let direct = testkit::fresh_database().await.unwrap();
    let upstream = testkit::host_port(&direct);
    let proxy = FaultProxy::start(&upstream).await.unwrap();
    let via_proxy = direct.replace(&upstream, &proxy.addr().to_string());
    assert_ne!(via_proxy, direct);
    let config = profile_api::Config::for_tests(
        &via_proxy,
        &testkit::redis_url(),
        &testkit::kafka_brokers(),
        &testkit::unique("pgdown"),
    );
    let t = start(config, false).await;
    let id = user("pgdown");
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    t.get(&id).await; // now cached

    proxy.cut();
    let cached = t.get(&id).await;
    assert_eq!(cached.status(), StatusCode::OK);
    assert_eq!(version_of(&cached.json().await.unwrap()), 1);

    let url = t.url(&format!("/v1/profiles/{id}"));
    let attempts = [
        t.http.put(&url).json(&body("B")),
        t.http
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"name":"C"}"#),
        t.http.delete(&url),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 503);
    }
    let uncached = t.get(&user("uncached")).await;
    assert_eq!(uncached.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore();
    let db = sqlx::PgPool::connect(&direct).await.unwrap();
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM profile WHERE id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(version, 1, "no failed write left a change behind");
    let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox WHERE user_id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(events, 1, "no failed write left an event behind");

    let recovered = common::eventually(Duration::from_secs(10), || async {
        t.put(&id, &body("D")).await.status() == StatusCode::OK
    })
    .await;
    assert!(
        recovered,
        "writes did not recover after PostgreSQL came back"
    );
    assert_eq!(version_of(&t.get(&id).await.json().await.unwrap()), 2);
}

#[tokio::test]
async fn events_written_during_a_broker_outage_are_all_delivered_in_order_afterwards() {
    let mut broker = PrivateBroker::start().await.unwrap();
    let brokers = broker.brokers();
    let mut config = common::fresh_config("outage").await;
    config.kafka_brokers = brokers.clone();
    // Short enough that sends fail (and are counted) while the broker is down, instead of
    // waiting in librdkafka's queue for the broker to come back.
    config.kafka_message_timeout_ms = 1000;
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 3).await.unwrap();
    let t = start(config, true).await;

    broker.kill().await;
    let users: Vec<String> = (0..20).map(|_| user("outage")).collect();
    for round in 0..5 {
        for id in &users {
            let response = t.put(id, &body(&format!("round {round}"))).await;
            assert!(
                response.status().is_success(),
                "write failed during the outage"
            );
        }
    }
    let pending = common::eventually(Duration::from_secs(10), || async {
        t.metric("outbox_pending", "").await > 0.0
    })
    .await;
    assert!(pending, "outbox_pending never showed the backlog");
    // The relay must have tried, failed and counted it before the broker returns; otherwise
    // the outage was too short to prove anything.
    let errors_seen = common::eventually(Duration::from_secs(15), || async {
        t.metric("outbox_publish_errors_total", "").await > 0.0
    })
    .await;
    assert!(
        errors_seen,
        "no publish error was counted during the outage"
    );

    broker.restart().await.unwrap();
    let mut created = false;
    for _ in 0..50 {
        if testkit::create_topic(&brokers, &topic, 3).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created, "could not re-create the topic");

    let received = common::consume(&brokers, &topic, 100, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 100, "every write's event arrives");
    common::assert_ordered_and_unique(&received);
    for id in &users {
        let versions: Vec<i64> = received
            .iter()
            .filter(|r| &r.key == id)
            .map(|r| r.event.profileversion)
            .collect();
        assert_eq!(versions, [1, 2, 3, 4, 5], "user {id}");
    }
    let drained = common::eventually(Duration::from_secs(10), || async {
        t.metric("outbox_pending", "").await == 0.0
    })
    .await;
    assert!(drained, "outbox_pending did not return to 0");
}
