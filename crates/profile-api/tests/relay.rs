//! The outbox relay against the shared broker: record shape and trace context, and two replicas
//! relaying at once without duplicates or reordering.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::{body, start, user};
use statecast_testkit as testkit;

/// Spans need a subscriber with the OpenTelemetry layer to get ids; install one per binary.
fn telemetry() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let config = statecast_telemetry::TelemetryConfig {
            service_name: "profile-api-test".to_owned(),
            otlp_endpoint: None,
            otlp_protocol: statecast_telemetry::OtlpProtocol::Grpc,
            log_format: statecast_telemetry::LogFormat::Pretty,
            log_filter: "warn,profile_api=info".to_owned(),
        };
        // The telemetry handle only flushes exports; there are none here.
        std::mem::forget(statecast_telemetry::init(&config).unwrap());
    });
}

#[tokio::test]
async fn records_are_cloudevents_keyed_by_user_and_continue_the_request_trace() {
    telemetry();
    let config = common::fresh_config("record").await;
    let brokers = config.kafka_brokers.clone();
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 1).await.unwrap();
    let t = start(config, true).await;
    let id = user("record");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = t
        .http
        .put(t.url(&format!("/v1/profiles/{id}")))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&body("Traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let received = common::consume(&brokers, &topic, 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1);
    let record = &received[0];
    assert_eq!(record.key, id);
    assert_eq!(
        record.event.event_type,
        statecast_events::EventType::UserCreated
    );
    assert_eq!(record.event.data.name.as_deref(), Some("Traced"));
    assert_eq!(
        record.headers["content-type"],
        "application/cloudevents+json"
    );
    let traceparent = &record.headers["traceparent"];
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the record continues the caller's trace: {traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the record's parent is the relay's send span, not the caller's span"
    );
    let (trace_context,): (serde_json::Value,) =
        sqlx::query_as("SELECT trace_context FROM outbox WHERE user_id = $1")
            .bind(&id)
            .fetch_one(t.app.pool())
            .await
            .unwrap();
    assert!(
        trace_context["traceparent"]
            .as_str()
            .unwrap()
            .contains(trace_id)
    );
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_event_once_in_user_order() {
    let config = common::fresh_config("tworelays").await;
    let brokers = config.kafka_brokers.clone();
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 3).await.unwrap();
    let a = start(config.clone(), true).await;
    let b = start(config, true).await;

    let users: Vec<String> = (0..20).map(|_| user("two")).collect();
    let mut writes = Vec::new();
    for round in 0..5 {
        for (i, id) in users.iter().enumerate() {
            let replica = if (i + round) % 2 == 0 { &a } else { &b };
            writes.push(async move {
                // Writes to one user stay sequential; different users interleave.
                replica
                    .put(id, &body(&format!("round {round}")))
                    .await
                    .status()
            });
        }
        for status in futures::future::join_all(writes.drain(..)).await {
            assert!(status.is_success());
        }
    }
    let received = common::consume(&brokers, &topic, 100, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 100);
    common::assert_ordered_and_unique(&received);
    // Nothing more arrives: no duplicate was published late.
    let extra = common::consume(&brokers, &topic, 101, Duration::from_secs(3)).await;
    assert_eq!(extra.len(), 100, "a duplicate was published");
    let published =
        a.metric("outbox_published_total", "").await + b.metric("outbox_published_total", "").await;
    assert_eq!(published, 100.0);
}

#[tokio::test]
async fn a_standby_relay_takes_over_when_the_leader_stops() {
    let config = common::fresh_config("failover").await;
    let brokers = config.kafka_brokers.clone();
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 1).await.unwrap();
    let first = start(config.clone(), true).await;
    let id = user("failover");
    first.put(&id, &body("v1")).await;
    // The first replica is the only relay, so it is the leader once this arrives.
    assert_eq!(
        common::consume(&brokers, &topic, 1, Duration::from_secs(30))
            .await
            .len(),
        1
    );

    let second = start(config, true).await;
    first.shutdown.cancel();
    drop(first);
    for round in 2..=4 {
        let response = second.put(&id, &body(&format!("v{round}"))).await;
        assert!(response.status().is_success());
    }
    let received = common::consume(&brokers, &topic, 4, Duration::from_secs(30)).await;
    let versions: Vec<i64> = received.iter().map(|r| r.event.profileversion).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    common::assert_ordered_and_unique(&received);
}
