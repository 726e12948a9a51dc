//! cache-refresh: newer snapshots are written in the Profile API's entry format, older ones
//! skipped, deletes leave an invalidation marker that older events cannot overwrite.

use profile_consumer::HandlerKind;
use statecast_events::EventType;

use crate::support::{self, Running};

async fn get(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> serde_json::Value {
    let raw: Option<String> = redis::cmd("GET").arg(key).query_async(redis).await.unwrap();
    serde_json::from_str(&raw.unwrap_or_else(|| "null".into())).unwrap()
}

#[tokio::test]
async fn newer_snapshots_are_written_older_ones_skipped_and_deletes_leave_a_marker() {
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
    cache.wait_records("duplicate", 1.0).await;
    assert_eq!(cache.records("stale").await, 1.0);
    assert_eq!(cache.records("processed").await, 1.0);

    let client = redis::Client::open(statecast_testkit::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let entry = get(&mut redis, &key).await;
    assert_eq!(entry["v"], 2);
    assert_eq!(entry["k"], "p");
    assert_eq!(entry["p"]["version"], 2);
    assert_eq!(entry["p"]["country"], "DE");
    assert_eq!(entry["p"]["email"], "new@example.com");
    assert_eq!(entry["p"]["id"], user.as_str());
    assert!(entry["p"]["updatedAt"].is_string());
    assert!(entry["soft"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
    let ttl: i64 = redis::cmd("PTTL")
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
    cache.wait_records("stale", 2.0).await;
    assert_eq!(cache.records("processed").await, 2.0);
    let marker = get(&mut redis, &key).await;
    assert_eq!(
        (marker["v"].as_i64(), marker["k"].as_str()),
        (Some(3), Some("i"))
    );
    assert!(marker.get("p").is_none());

    // The API invalidated at version 5 on a write; the event of that write fills the entry.
    let api_marker = r#"{"v":5,"k":"i","soft":0,"delta":0}"#;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(api_marker)
        .query_async(&mut redis)
        .await
        .unwrap();
    let v5 = support::event(EventType::UserUpdated, &user, 5, "five@example.com", "ES");
    support::produce(&producer, &topic, &v5).await;
    cache.wait_records("processed", 3.0).await;
    let entry = get(&mut redis, &key).await;
    assert_eq!(
        (entry["v"].as_i64(), entry["k"].as_str()),
        (Some(5), Some("p"))
    );
    assert_eq!(entry["p"]["country"], "ES");
    cache.stop().await;
}

#[tokio::test]
async fn on_a_redis_cluster_the_entries_land_on_the_master_of_their_slot() {
    // REDIS_URL naming several nodes is a Redis Cluster (the stack's: three masters with a
    // replica each).
    let cluster_url = statecast_testkit::redis_cluster_url().unwrap();
    let topic = support::topic("cache-cluster", 1).await;
    let users: Vec<String> = (0..12)
        .map(|_| statecast_testkit::unique("cached-cluster"))
        .collect();
    let producer = support::producer();
    for user in &users {
        let v2 = support::event(EventType::UserUpdated, user, 2, "new@example.com", "DE");
        let v1 = support::event(EventType::UserCreated, user, 1, "old@example.com", "PT");
        support::produce(&producer, &topic, &v2).await;
        support::produce(&producer, &topic, &v1).await;
    }
    let mut config = support::config(&topic, HandlerKind::CacheRefresh, None);
    config.redis_url = Some(cluster_url.clone());
    let cache = Running::start(config);
    cache.wait_records("stale", 12.0).await;
    assert_eq!(cache.records("processed").await, 12.0);

    let nodes: Vec<&str> = cluster_url.split(',').collect();
    let client = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut redis = client.get_async_connection().await.unwrap();
    for user in &users {
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("profile:{user}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&raw.unwrap()).unwrap();
        assert_eq!(
            (entry["v"].as_i64(), entry["k"].as_str()),
            (Some(2), Some("p"))
        );
        assert_eq!(entry["p"]["country"], "DE");
    }
    cache.stop().await;
}

#[tokio::test]
async fn a_master_killed_under_the_consumer_costs_retries_not_records() {
    // A private cluster: the test kills one of its masters; its replica is promoted in a few
    // seconds, and the records of that master's slots are retried (transient) until it is.
    let mut cluster = statecast_testkit::PrivateCluster::start().await.unwrap();
    let topic = support::topic("cache-failover", 1).await;
    let users: Vec<String> = (0..12)
        .map(|_| statecast_testkit::unique("cached-failover"))
        .collect();
    let producer = support::producer();
    for user in &users {
        let v1 = support::event(EventType::UserCreated, user, 1, "old@example.com", "PT");
        support::produce(&producer, &topic, &v1).await;
    }
    let mut config = support::config(&topic, HandlerKind::CacheRefresh, None);
    config.redis_url = Some(cluster.url());
    let cache = Running::start(config);
    cache.wait_records("processed", 12.0).await;

    let victim = cluster.master_of(&format!("profile:{}", users[0])).unwrap();
    cluster.kill(victim);
    for user in &users {
        let v2 = support::event(EventType::UserUpdated, user, 2, "new@example.com", "DE");
        support::produce(&producer, &topic, &v2).await;
    }
    cache.wait_records("processed", 24.0).await;
    assert_eq!(cache.records("dlq").await, 0.0, "nothing dead-lettered");

    let url = cluster.url();
    let nodes: Vec<&str> = url.split(',').collect();
    let client = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut redis = client.get_async_connection().await.unwrap();
    for user in &users {
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("profile:{user}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&raw.unwrap()).unwrap();
        assert_eq!(entry["v"].as_i64(), Some(2), "{user}: {entry}");
    }
    cache.stop().await;
    cluster.restart(victim).await.unwrap();
    cluster
        .wait_healthy(std::time::Duration::from_secs(30))
        .await
        .unwrap();
}
