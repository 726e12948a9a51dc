//! The compare-and-set rules against the real Redis (`REDIS_URL`), and the pure builders.

use super::*;
use crate::entry::Kind;
use crate::fixtures::{TTLS, profile};

/// A client of the real Redis whose invalidation markers live `marker`.
fn real_cache(marker: Duration) -> Cache {
    let client = redis::Client::open(statecast_testkit::redis_url()).unwrap();
    Cache::lazy(client, Duration::from_secs(2), Ttls { marker, ..TTLS }).unwrap()
}

fn unique_id() -> String {
    format!("cas-{}", uuid::Uuid::now_v7().simple())
}

async fn fill(cache: &Cache, id: &str, version: i64, started: Instant) -> bool {
    cache
        .fill(id, Some(profile(id, version)), version, started)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fill_of_an_older_version_after_an_invalidation_is_refused_by_redis() {
    let cache = real_cache(Duration::from_secs(30));
    let id = unique_id();
    assert!(fill(&cache, &id, 1, Instant::now()).await);
    cache.invalidate(&id, 2).await.unwrap();
    // A read that loaded version 1 before version 2 committed fills late: refused.
    let started = Instant::now();
    assert!(!fill(&cache, &id, 1, started).await);
    let entry = cache.get(&id).await.unwrap().unwrap();
    assert_eq!((entry.k, entry.v), (Kind::Invalidated, 2));
    // The committed version itself may fill; after it, neither an older fill nor a repeated
    // or older invalidation changes the entry.
    assert!(fill(&cache, &id, 2, started).await);
    assert!(!fill(&cache, &id, 1, started).await);
    cache.invalidate(&id, 1).await.unwrap();
    cache.invalidate(&id, 2).await.unwrap();
    let entry = cache.get(&id).await.unwrap().unwrap();
    assert_eq!((entry.k, entry.v), (Kind::Profile, 2));
    // A newer invalidation wins over the fill.
    cache.invalidate(&id, 3).await.unwrap();
    let entry = cache.get(&id).await.unwrap().unwrap();
    assert_eq!((entry.k, entry.v), (Kind::Invalidated, 3));
}

#[tokio::test]
async fn a_fill_from_a_load_older_than_the_marker_is_refused_after_the_marker_expired() {
    let cache = real_cache(Duration::from_millis(400));
    let id = unique_id();
    // The load reads version 1, then version 2 commits and invalidates...
    let started = Instant::now();
    cache.invalidate(&id, 2).await.unwrap();
    // ... and the load's fill comes only after the marker has expired.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cache.get(&id).await.unwrap(), None, "the marker expired");
    assert!(!fill(&cache, &id, 1, started).await);
    assert_eq!(
        cache.get(&id).await.unwrap(),
        None,
        "version 1 must not be cached once nothing refuses it"
    );
}

#[tokio::test]
async fn refreshes_write_newer_skip_equal_and_older_and_replace_only_a_marker_of_their_version() {
    let cache = real_cache(Duration::from_secs(30));
    let id = unique_id();
    let refresh = |version: i64| cache.refresh(&id, Some(profile(&id, version)), version);
    assert_eq!(refresh(2).await.unwrap(), Written::Written);
    assert_eq!(
        refresh(2).await.unwrap(),
        Written::SameVersion,
        "redelivery"
    );
    assert_eq!(refresh(1).await.unwrap(), Written::Older);
    // A delete leaves a marker an older event cannot overwrite.
    assert_eq!(cache.refresh(&id, None, 3).await.unwrap(), Written::Written);
    assert_eq!(refresh(2).await.unwrap(), Written::Older);
    assert_eq!(
        cache.refresh(&id, None, 3).await.unwrap(),
        Written::SameVersion
    );
    // The API's marker of version 5 is replaced by the event of version 5, once.
    cache.invalidate(&id, 5).await.unwrap();
    assert_eq!(refresh(5).await.unwrap(), Written::Written);
    let entry = cache.get(&id).await.unwrap().unwrap();
    assert_eq!((entry.k, entry.v), (Kind::Profile, 5));
    assert_eq!(refresh(5).await.unwrap(), Written::SameVersion);
}

#[tokio::test]
async fn the_fill_lock_has_one_owner_and_only_the_owner_releases_it() {
    let cache = real_cache(Duration::from_secs(30));
    let id = unique_id();
    assert!(!cache.is_locked(&id).await.unwrap());
    assert!(cache.try_lock(&id, "a").await.unwrap());
    assert!(!cache.try_lock(&id, "b").await.unwrap());
    cache.unlock(&id, "b").await.unwrap();
    assert!(cache.is_locked(&id).await.unwrap(), "b does not own it");
    cache.unlock(&id, "a").await.unwrap();
    assert!(!cache.is_locked(&id).await.unwrap());
    cache.ping().await.unwrap();
}

#[tokio::test]
async fn a_value_that_is_not_an_entry_is_overwritten_and_reads_as_a_decode_error() {
    let cache = real_cache(Duration::from_secs(30));
    let id = unique_id();
    let client = redis::Client::open(statecast_testkit::redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(key(&id))
        .arg("not json")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(matches!(cache.get(&id).await, Err(Error::Decode(_))));
    assert!(fill(&cache, &id, 1, Instant::now()).await);
    assert_eq!(cache.get(&id).await.unwrap().unwrap().v, 1);
}

#[test]
fn refreshes_are_written_in_the_entry_format_with_the_jittered_ttl_plus_grace() {
    let put = TTLS.refresh(Some(profile("alice", 4)), 4, 1000, 0.5);
    assert_eq!(put.entry.k, Kind::Profile);
    assert_eq!(put.entry.v, 4);
    assert_eq!(put.entry.soft, 1000 + 3_600_000);
    assert_eq!(put.ttl, Duration::from_millis(3_600_000 + 60_000));
    assert_eq!(put.on_equal, OnEqual::ReplaceMarker);
    let json: serde_json::Value = serde_json::from_str(&put.entry.to_json().unwrap()).unwrap();
    assert_eq!(json["p"]["id"], "alice");
    assert!(json["p"]["updatedAt"].is_string());
    // A delete: a marker, kept for the tombstone lifetime.
    let put = TTLS.refresh(None, 5, 1000, 0.5);
    assert_eq!(put.entry, Entry::marker(5));
    assert_eq!(put.ttl, TTLS.marker);
    assert_eq!(put.on_equal, OnEqual::Refuse);
}

#[test]
fn fills_of_unknown_ids_are_negative_entries_of_the_negative_ttl() {
    let put = TTLS.fill(None, 0, 1000, 0.5, 3);
    assert_eq!(put.entry, Entry::negative(0, 1000 + 30_000, 3));
    assert_eq!(put.ttl, TTLS.negative);
    assert_eq!(put.on_equal, OnEqual::Replace);
    let put = TTLS.fill(Some(profile("a", 1)), 1, 1000, 0.0, 3);
    assert_eq!(put.entry.soft, 1000 + 3_240_000, "-10 % at jitter 0");
    assert_eq!(put.entry.delta, 3);
}
