//! cache-refresh: newer snapshots are written, older ones skipped, deletes tombstone.

use profile_consumer::HandlerKind;
use statecast_events::EventType;

use crate::support::{self, Running};

async fn get(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(redis).await.unwrap()
}

#[tokio::test]
async fn newer_snapshots_are_written_older_ones_skipped_and_deletes_tombstoned() {
    let topic = support::topic("cache", 1).await;
    let user = statecast_testkit::unique("cached");
    let key = format!("profile:{user}");
    let producer = support::producer();
    let v2 = support::event(EventType::UserUpdated, &user, 2, "new@example.com", "DE");
    let v1 = support::event(EventType::UserCreated, &user, 1, "old@example.com", "PT");
    support::produce(&producer, &topic, &v2).await;
    support::produce(&producer, &topic, &v1).await;
    support::produce(&producer, &topic, &v2).await;

    let mut config = support::config(&topic, HandlerKind::CacheRefresh, None);
    config.redis_url = Some(statecast_testkit::redis_url());
    let cache = Running::start(config);
    cache
        .wait_metric(r#"consumer_records_total{result="duplicate"}"#, 1.0)
        .await;
    assert_eq!(
        cache
            .metric(r#"consumer_records_total{result="stale"}"#)
            .await,
        1.0
    );
    assert_eq!(
        cache
            .metric(r#"consumer_records_total{result="processed"}"#)
            .await,
        1.0
    );

    let client = redis::Client::open(statecast_testkit::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let cached: serde_json::Value =
        serde_json::from_str(&get(&mut redis, &key).await.unwrap()).unwrap();
    assert_eq!(cached["version"], 2);
    assert_eq!(cached["country"], "DE");
    assert_eq!(cached["email"], "new@example.com");
    assert_eq!(cached["id"], user.as_str());
    assert!(cached["updatedAt"].is_string());
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0, "entries expire");

    let delete = support::event(EventType::UserDeleted, &user, 3, "", "");
    support::produce(&producer, &topic, &delete).await;
    // A late v2 after the delete must not resurrect the profile.
    let late = support::event(EventType::UserUpdated, &user, 2, "late@example.com", "FR");
    support::produce(&producer, &topic, &late).await;
    cache
        .wait_metric(r#"consumer_records_total{result="stale"}"#, 2.0)
        .await;
    assert_eq!(
        cache
            .metric(r#"consumer_records_total{result="processed"}"#)
            .await,
        2.0
    );
    assert_eq!(get(&mut redis, &key).await, None, "deleted");
    assert_eq!(
        get(&mut redis, &format!("{key}:tombstone"))
            .await
            .as_deref(),
        Some("3")
    );
    cache.stop().await;
}
