//! A late, older version is counted as stale: skipped by the state-keeping handlers, recorded
//! by the audit trail.

use profile_consumer::HandlerKind;
use statecast_events::EventType;

use crate::support::{self, Running};

#[tokio::test]
async fn version_2_after_version_3_is_counted_stale_skipped_by_state_and_kept_in_the_trail() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("order", 1).await;
    let producer = support::producer();
    let v3 = support::event(EventType::UserUpdated, "ordered", 3, "o@example.com", "DE");
    let v2 = support::event(EventType::UserUpdated, "ordered", 2, "o@example.com", "FR");
    support::produce(&producer, &topic, &v3).await;
    support::produce(&producer, &topic, &v2).await;

    let audit = Running::start(support::config(&topic, HandlerKind::Audit, Some(&db)));
    let analytics = Running::start(support::config(&topic, HandlerKind::Analytics, Some(&db)));
    for consumer in [&audit, &analytics] {
        consumer.wait_records("stale", 1.0).await;
        assert_eq!(consumer.records("processed").await, 1.0);
    }

    let pool = support::pool(&db).await;
    let versions: Vec<i64> = sqlx::query_scalar("select version from audit_log order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        versions,
        vec![3, 2],
        "the trail records every distinct event"
    );
    let applied: i64 = sqlx::query_scalar(
        "select version from applied_version where user_id = 'ordered' and consumer_group like 'audit%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, 3, "the applied version never moves back");
    let (country, version): (String, i64) = sqlx::query_as(
        "select country, version from analytics_profile_state where user_id = 'ordered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((country.as_str(), version), ("DE", 3));
    assert_eq!(
        support::count(
            &pool,
            "select count(*) from analytics_country where country = 'FR' and profiles > 0"
        )
        .await,
        0
    );
    assert_eq!(
        support::count(
            &pool,
            "select sum(changes)::bigint from analytics_daily_changes"
        )
        .await,
        2,
        "a stale event is still a change of its day"
    );
    audit.stop().await;
    analytics.stop().await;
}

#[tokio::test]
async fn a_user_moving_country_and_deleted_moves_the_counters() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("moves", 1).await;
    let producer = support::producer();
    for event in [
        support::event(EventType::UserCreated, "mover", 1, "m@example.com", "PT"),
        support::event(EventType::UserCreated, "stayer", 1, "s@example.com", "PT"),
        support::event(EventType::UserUpdated, "mover", 2, "m@example.com", "DE"),
        support::event(EventType::UserDeleted, "stayer", 2, "", ""),
    ] {
        support::produce(&producer, &topic, &event).await;
    }
    let analytics = Running::start(support::config(&topic, HandlerKind::Analytics, Some(&db)));
    analytics.wait_records("processed", 4.0).await;
    let pool = support::pool(&db).await;
    let pt = support::count(
        &pool,
        "select profiles from analytics_country where country = 'PT'",
    )
    .await;
    let de = support::count(
        &pool,
        "select profiles from analytics_country where country = 'DE'",
    )
    .await;
    assert_eq!((pt, de), (0, 1));
    analytics.stop().await;
}
