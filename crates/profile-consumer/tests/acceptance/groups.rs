//! Groups: every group receives every event; replicas of one group split the partitions.

use std::time::Duration;

use profile_consumer::HandlerKind;
use statecast_events::EventType;

use crate::support::{self, Running};

#[tokio::test]
async fn two_groups_each_receive_every_event() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("groups", 2).await;
    let producer = support::producer();
    for i in 0..20 {
        let event = support::event(
            EventType::UserCreated,
            &format!("u{i}"),
            1,
            "x@example.com",
            "PT",
        );
        support::produce(&producer, &topic, &event).await;
    }
    let first = support::config(&topic, HandlerKind::Audit, Some(&db));
    let second = support::config(&topic, HandlerKind::Audit, Some(&db));
    let (group_a, group_b) = (first.kafka_group_id.clone(), second.kafka_group_id.clone());
    let a = Running::start(first);
    let b = Running::start(second);
    a.wait_records("processed", 20.0).await;
    b.wait_records("processed", 20.0).await;

    let pool = support::pool(&db).await;
    for group in [&group_a, &group_b] {
        let seen: i64 =
            sqlx::query_scalar("select count(*) from processed_event where consumer_group = $1")
                .bind(group)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(seen, 20, "group {group} saw every event once");
    }
    // Both groups audit into one table: each group's trail has its own row of every event
    // (nothing but the group's own dedup decides; no unique index hides a second row).
    assert_eq!(
        support::count(
            &pool,
            "select count(*) from (select event_id from audit_log group by event_id having count(*) = 2) t"
        )
        .await,
        20
    );
    let rows_with_trace = support::count(
        &pool,
        "select count(*) from audit_log where trace_id = '4bf92f3577b34da6a3ce929d0e0e4736'",
    )
    .await;
    assert_eq!(
        rows_with_trace, 40,
        "trace id taken from the traceparent header"
    );

    // Lag gauges come from librdkafka statistics (every second in tests) once offsets commit.
    support::wait_until("lag gauges at zero", Duration::from_secs(20), || async {
        let (_, body) = support::http_get(a.addr, "/metrics").await.unwrap();
        (0..2).all(|p| {
            support::metric_value(
                &body,
                &format!(r#"consumer_lag{{topic="{topic}",partition="{p}"}}"#),
            ) == Some(0.0)
        })
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_replicas_in_one_group_split_the_partitions_and_process_each_event_once() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("replicas", 4).await;
    let first = support::config(&topic, HandlerKind::Audit, Some(&db));
    let mut second = support::config(&topic, HandlerKind::Audit, Some(&db));
    second.kafka_group_id = first.kafka_group_id.clone();

    let a = Running::ready(first).await;
    let b = Running::ready(second).await;
    // The first replica rejoins in the rebalance the second one's join started.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let producer = support::producer();
    for i in 0..40 {
        let event = support::event(
            EventType::UserCreated,
            &format!("user-{i}"),
            1,
            "x@example.com",
            "PT",
        );
        support::produce(&producer, &topic, &event).await;
    }
    let pool = support::pool(&db).await;
    support::wait_until("40 audit rows", Duration::from_secs(30), || async {
        support::count(&pool, "select count(*) from audit_log").await == 40
    })
    .await;
    let (by_a, by_b) = (a.records("processed").await, b.records("processed").await);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both replicas got partitions: {by_a} + {by_b}"
    );
    assert_eq!(by_a + by_b, 40.0, "each event processed exactly once");
    assert_eq!(
        a.records("duplicate").await + b.records("duplicate").await,
        0.0
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_new_group_starting_at_latest_skips_the_history_and_keeps_its_start_across_a_restart() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("latest", 2).await;
    let producer = support::producer();
    let produce = |from: usize, n: usize| {
        let (producer, topic) = (&producer, &topic);
        async move {
            for i in from..from + n {
                let event = support::event(
                    EventType::UserCreated,
                    &format!("l{i}"),
                    1,
                    "l@example.com",
                    "PT",
                );
                support::produce(producer, topic, &event).await;
            }
        }
    };
    produce(0, 5).await; // history the new group must not see
    let mut config = support::config(&topic, HandlerKind::Audit, Some(&db));
    config.kafka_start_position = Some(profile_consumer::StartPosition::Latest);
    let first = Running::ready(config.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.stop().await; // it consumed nothing, yet its start is kept
    produce(5, 3).await; // while the group is down
    config.metrics_addr = support::free_addr();
    let second = Running::ready(config).await;
    produce(8, 2).await;
    second.wait_records("processed", 5.0).await;
    let pool = support::pool(&db).await;
    let users: Vec<String> = sqlx::query_scalar("select user_id from audit_log order by user_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        users,
        ["l5", "l6", "l7", "l8", "l9"],
        "after the first start, nothing else"
    );
    second.stop().await;
}
