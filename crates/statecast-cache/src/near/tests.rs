//! The near cache's rules against the real Redis (`REDIS_URL`): a tracking connection of its
//! own per test, and a second client standing for the other replicas and the consumer.

use std::time::Instant;

use super::*;
use crate::Cache;
use crate::entry::{key, now_ms};
use crate::fixtures::{TTLS, profile};

const WAIT: Duration = Duration::from_secs(5);

fn client() -> redis::Client {
    redis::Client::open(statecast_testkit::redis_url()).unwrap()
}

fn cache() -> Cache {
    Cache::lazy(client(), Duration::from_secs(2), TTLS).unwrap()
}

fn config(max_entries: u64, max_bytes: u64) -> NearConfig {
    NearConfig {
        max_entries,
        max_bytes,
        grace: TTLS.grace,
        health_interval: Duration::from_millis(200),
    }
}

/// A near cache whose tracking connection is up.
async fn tracking(config: NearConfig) -> NearCache {
    let near = NearCache::new(config);
    near.spawn_tracking(client());
    assert!(until(|| near.is_tracking()).await, "tracking never came up");
    near
}

async fn until(mut check: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + WAIT;
    while Instant::now() < give_up {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    check()
}

fn unique_id() -> String {
    format!("near-{}", uuid::Uuid::now_v7().simple())
}

/// Writes version `version` of `id` to Redis as the consumer would.
async fn write(cache: &Cache, id: &str, version: i64) {
    let put = TTLS.refresh(Some(profile(id, version)), version, now_ms(), 0.5);
    assert!(cache.put(id, &put).await.unwrap().is_written());
}

/// The window the socket watch closes: a write answered elsewhere whose push is in the tracking
/// socket but not yet applied, because the connection's driver has not run. A current-thread
/// runtime and a blocking writer keep the driver from running between the write's answer and
/// the read, so a near hit served here would be the old version.
#[tokio::test(flavor = "current_thread")]
async fn a_write_answered_elsewhere_is_not_served_old_while_its_push_waits_unread() {
    let near = tracking(config(1000, 1 << 20)).await;
    let mine = cache();
    let mut blocking = client().get_connection().unwrap();
    let mut stale = 0;
    for round in 0..50 {
        let id = unique_id();
        write(&mine, &id, 1).await;
        mine.get_through(&near, &id).await.unwrap();
        let (_, tier) = mine.get_through(&near, &id).await.unwrap();
        assert_eq!(tier, Tier::Near, "round {round}: held near");
        assert_eq!(near.settled(), Some(true), "round {round}: nothing pending");
        // Another replica's write, answered before this read begins; no await in between.
        let put = TTLS.refresh(Some(profile(&id, 2)), 2, now_ms(), 0.5);
        let () = redis::cmd("SET")
            .arg(key(&id))
            .arg(put.entry.to_json().unwrap())
            .arg("PX")
            .arg(put.ttl.as_millis().to_string())
            .query(&mut blocking)
            .unwrap();
        let (entry, _) = mine.get_through(&near, &id).await.unwrap();
        if entry.map(|e| e.v) != Some(2) {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "reads that served the version before a write already answered"
    );
}

#[tokio::test]
async fn an_entry_is_served_near_until_a_change_made_elsewhere_is_pushed() {
    let near = tracking(config(1000, 1 << 20)).await;
    let (mine, elsewhere) = (cache(), cache());
    let id = unique_id();
    write(&elsewhere, &id, 1).await;
    let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!((entry.map(|e| e.v), tier), (Some(1), Tier::Redis));
    let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!((entry.map(|e| e.v), tier), (Some(1), Tier::Near));
    // Another replica's write: Redis pushes the invalidation, the entry goes.
    let written = Instant::now();
    elsewhere.invalidate(&id, 2).await.unwrap();
    assert!(
        until(|| near.get(&id, now_ms()).is_none()).await,
        "the near cache still holds version 1 after the write's push"
    );
    println!("invalidation seen after {:?}", written.elapsed());
    let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!(
        (entry.map(|e| (e.k, e.v)), tier),
        (Some((Kind::Invalidated, 2)), Tier::Redis)
    );
}

#[tokio::test]
async fn an_answer_overtaken_by_an_invalidation_of_its_key_is_not_kept() {
    let near = tracking(config(1000, 1 << 20)).await;
    let (mine, elsewhere) = (cache(), cache());
    let id = unique_id();
    write(&elsewhere, &id, 1).await;
    // The read is sent, then the key changes and the push arrives before the answer is kept.
    let ticket = near.ticket(&id);
    let answer = mine.get(&id).await.unwrap().unwrap();
    let pushes = near.invalidations();
    write(&elsewhere, &id, 2).await;
    assert!(until(|| near.invalidations() > pushes).await, "no push");
    assert!(!near.offer(&id, &answer, ticket, now_ms()));
    assert!(near.get(&id, now_ms()).is_none());
    // A read sent after the push is kept.
    let ticket = near.ticket(&id);
    let answer = mine.get(&id).await.unwrap().unwrap();
    assert!(near.offer(&id, &answer, ticket, now_ms()));
    assert_eq!(near.get(&id, now_ms()).map(|e| e.v), Some(2));
    // A local write drops it and refuses answers already under way.
    let ticket = near.ticket(&id);
    near.written(&id, 3);
    assert!(near.get(&id, now_ms()).is_none());
    assert!(!near.offer(&id, &answer, ticket, now_ms()));
}

#[tokio::test]
async fn nothing_older_than_the_highest_version_served_is_kept_or_served() {
    let near = tracking(config(1000, 1 << 20)).await;
    let mine = cache();
    let id = unique_id();
    write(&mine, &id, 2).await;
    let (entry, _) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!(entry.map(|e| e.v), Some(2));
    assert_eq!(near.get(&id, now_ms()).map(|e| e.v), Some(2), "kept");
    // Version 3 was served (from elsewhere): version 2 is neither served nor kept any more.
    near.observe(&id, 3);
    assert_eq!(near.high_water(&id), 3);
    near.observe(&id, 1);
    assert_eq!(near.high_water(&id), 3, "the mark never goes down");
    assert!(near.get(&id, now_ms()).is_none());
    let ticket = near.ticket(&id);
    let answer = mine.get(&id).await.unwrap().unwrap();
    assert!(!near.offer(&id, &answer, ticket, now_ms()));
    // And a kept newer entry is not replaced by an older answer.
    let other = unique_id();
    let newer = TTLS
        .fill(Some(profile(&other, 5)), 5, now_ms(), 0.5, 0)
        .entry;
    let older = TTLS
        .fill(Some(profile(&other, 4)), 4, now_ms(), 0.5, 0)
        .entry;
    let ticket = near.ticket(&other);
    assert!(near.offer(&other, &newer, ticket, now_ms()));
    assert!(!near.offer(&other, &older, ticket, now_ms()));
    assert_eq!(near.get(&other, now_ms()).map(|e| e.v), Some(5));
}

#[tokio::test]
async fn a_killed_tracking_connection_flushes_and_bypasses_the_near_cache_until_it_is_back() {
    let near = tracking(config(1000, 1 << 20)).await;
    let (mine, elsewhere) = (cache(), cache());
    let id = unique_id();
    write(&elsewhere, &id, 1).await;
    mine.get_through(&near, &id).await.unwrap();
    let (_, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!(tier, Tier::Near);
    let killed = near.tracking_client_id().unwrap();
    let mut admin = client().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(killed)
        .query_async(&mut admin)
        .await
        .unwrap();
    // A change whose invalidation the killed connection can never deliver.
    write(&elsewhere, &id, 2).await;
    // Down, or (on a slow machine) already back on a new connection.
    let noticed = until(|| near.tracking_client_id() != Some(killed)).await;
    assert!(noticed, "the drop went unnoticed");
    let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!(
        (entry.map(|e| e.v), tier),
        (Some(2), Tier::Redis),
        "bypassed while down"
    );
    assert!(near.get(&id, now_ms()).is_none(), "nothing kept while down");
    assert!(
        until(|| near.tracking_client_id().is_some_and(|id| id != killed)).await,
        "tracking never came back"
    );
    // Version 1 was flushed: it must not come back with the new connection.
    let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!((entry.map(|e| e.v), tier), (Some(2), Tier::Redis));
    let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!((entry.map(|e| e.v), tier), (Some(2), Tier::Near));
}

/// Offers `near` a small profile of a new id.
fn offer_small(near: &NearCache) {
    let id = unique_id();
    let entry = TTLS.fill(Some(profile(&id, 1)), 1, now_ms(), 0.5, 0).entry;
    near.offer(&id, &entry, near.ticket(&id), now_ms());
}

#[tokio::test]
async fn the_near_cache_is_bounded_by_entries_and_by_bytes() {
    // By entries: small profiles, at most 10 of them.
    let near = tracking(config(10, 1 << 20)).await;
    for i in 0..200 {
        offer_small(&near);
        assert!(
            near.entry_count() <= 10,
            "{} entries after {i}",
            near.entry_count()
        );
    }
    assert!(near.entry_count() > 0);
    // By entries at the default bounds, where max_bytes / max_entries is not whole (16 MiB /
    // 50,000 is 335.5): a floor rounded down to 335 let 50,080 small entries fit.
    let near = tracking(config(50_000, 16 << 20)).await;
    for _ in 0..60_000 {
        offer_small(&near);
    }
    assert!(
        (45_000..=50_000).contains(&near.entry_count()),
        "{} entries, bound 50,000",
        near.entry_count()
    );
    // By bytes: ~2 KiB profiles against 8 KiB.
    let near = tracking(config(1000, 8192)).await;
    for _ in 0..200 {
        let id = unique_id();
        let mut big = profile(&id, 1);
        big.name = "x".repeat(2000);
        let entry = TTLS.fill(Some(big), 1, now_ms(), 0.5, 0).entry;
        near.offer(&id, &entry, near.ticket(&id), now_ms());
        assert!(
            near.weighted_size() <= 8192,
            "{} bytes",
            near.weighted_size()
        );
        assert!(near.entry_count() <= 4);
    }
}

#[tokio::test]
async fn held_invalidations_are_applied_on_release() {
    let near = tracking(config(1000, 1 << 20)).await;
    let (mine, elsewhere) = (cache(), cache());
    let id = unique_id();
    write(&elsewhere, &id, 1).await;
    mine.get_through(&near, &id).await.unwrap();
    near.hold_invalidations();
    let pushes = near.invalidations();
    write(&elsewhere, &id, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(near.invalidations(), pushes, "held");
    assert_eq!(near.get(&id, now_ms()).map(|e| e.v), Some(1));
    near.release_invalidations();
    assert!(near.get(&id, now_ms()).is_none());
}

#[test]
fn only_entry_keys_name_an_id_and_sizes_grow_with_the_profile() {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    assert_eq!(key_id(&bulk(&key("alice"))), Some("alice".to_owned()));
    assert_eq!(key_id(&bulk("lock:profile:alice")), None);
    assert_eq!(key_id(&Value::Nil), None);
    let small = TTLS.fill(Some(profile("a", 1)), 1, 0, 0.5, 0).entry;
    let mut big = profile("a", 1);
    big.name = "x".repeat(1000);
    let big = TTLS.fill(Some(big), 1, 0, 0.5, 0).entry;
    assert!(estimated_size("a", &big) >= estimated_size("a", &small) + 990);
}
