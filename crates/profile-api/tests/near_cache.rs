//! The near cache of each replica against the real Redis: read-your-writes on the writer,
//! the invalidation push on another replica, never an older version after a newer one, a
//! killed tracking connection, the metrics by tier and the switch.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, body, start, user, version_of};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);

/// A replica whose near cache tracks.
async fn replica(config: profile_api::Config) -> TestApp {
    let t = start(config, false).await;
    let near = t
        .app
        .near_cache()
        .expect("near cache on by default")
        .clone();
    let up = common::eventually(WAIT, || async { near.is_tracking() }).await;
    assert!(up, "the near cache never tracked");
    t
}

/// Version, name and `x-cache` of a GET.
async fn read(t: &TestApp, id: &str) -> (i64, String, String) {
    let response = t.get(id).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let json: Value = response.json().await.unwrap();
    (
        version_of(&json),
        json["name"].as_str().unwrap().to_owned(),
        cache,
    )
}

async fn near_hits(t: &TestApp) -> f64 {
    t.metric(
        "profile_cache_lookups_total",
        "result=\"hit\",tier=\"near\"",
    )
    .await
}

/// Reads `id` until a read is answered by the near tier (the first fills Redis, the next fills
/// the near cache from Redis).
async fn cached_near(t: &TestApp, id: &str) {
    let before = near_hits(t).await;
    let served = common::eventually(WAIT, || async {
        read(t, id).await;
        near_hits(t).await > before
    })
    .await;
    assert!(served, "never answered from the near cache");
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(statecast_testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Sets `profile:{id}` to a profile entry of `version` named `name`, behind the API's back.
async fn set_entry(id: &str, version: i64, name: &str) {
    let entry = serde_json::json!({
        "v": version, "k": "p", "soft": statecast_cache::now_ms() + 3_600_000, "delta": 0,
        "p": {"id": id, "name": name, "email": "someone@example.com", "country": "PT",
              "version": version, "updatedAt": "2026-01-01T00:00:00Z"},
    });
    let _: () = redis::cmd("SET")
        .arg(statecast_cache::key(id))
        .arg(entry.to_string())
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_write_drops_its_replicas_near_entry_before_it_answers() {
    let t = replica(common::fresh_config("near-ryw").await).await;
    let near = t.app.near_cache().unwrap().clone();
    let id = user("near-ryw");
    t.put(&id, &body("v1")).await;
    cached_near(&t, &id).await;
    // Redis's push of the write's own invalidation is held back, as a slow network would:
    // the writer's next read must still see its write.
    near.hold_invalidations();
    for i in 2..=20 {
        let put = t.put(&id, &body(&format!("v{i}"))).await;
        assert_eq!(version_of(&put.json().await.unwrap()), i);
        let (version, name, _) = read(&t, &id).await;
        assert_eq!(
            (version, name.as_str()),
            (i, format!("v{i}").as_str()),
            "read after write {i}"
        );
        read(&t, &id).await; // and back into the near cache
    }
    near.release_invalidations();
}

#[tokio::test]
async fn another_replica_stops_serving_the_old_version_when_the_push_arrives() {
    let config = common::fresh_config("near-push").await;
    let a = replica(config.clone()).await;
    let b = replica(config).await;
    let id = user("near-push");
    let mut waits = Vec::new();
    a.put(&id, &body("v1")).await;
    for i in 2..=20 {
        cached_near(&b, &id).await;
        let written = Instant::now();
        a.put(&id, &body(&format!("v{i}"))).await;
        // Read B back to back: the first answer of version i ends the wait.
        let mut seen = None;
        while written.elapsed() < Duration::from_secs(2) {
            if read(&b, &id).await.0 == i {
                seen = Some(written.elapsed());
                break;
            }
        }
        waits.push(
            seen.unwrap_or_else(|| panic!("replica B still serves a version older than {i}")),
        );
    }
    waits.sort();
    println!(
        "write on A to the new version on B: p50 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
}

#[tokio::test]
async fn a_replica_never_serves_an_older_version_after_a_newer_one() {
    let t = replica(common::fresh_config("near-mono").await).await;
    let id = user("near-mono");
    t.put(&id, &body("v1")).await;
    t.put(&id, &body("v2")).await;
    cached_near(&t, &id).await;
    assert_eq!(read(&t, &id).await.0, 2);
    // An older entry lands in Redis (as a stale fill whose marker was lost would): its push
    // drops version 2 from the near cache, and Redis now answers version 1.
    set_entry(&id, 1, "v1").await;
    for _ in 0..10 {
        let (version, name, _) = read(&t, &id).await;
        assert_eq!((version, name.as_str()), (2, "v2"), "older after newer");
    }
}

#[tokio::test]
async fn a_killed_tracking_connection_flushes_the_near_cache_until_tracking_is_back() {
    let t = replica(common::fresh_config("near-kill").await).await;
    let near = t.app.near_cache().unwrap().clone();
    let id = user("near-kill");
    t.put(&id, &body("v1")).await;
    cached_near(&t, &id).await;
    let killed = near.tracking_client_id().unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(killed)
        .query_async(&mut redis().await)
        .await
        .unwrap();
    // A change whose invalidation the killed connection can never deliver.
    set_entry(&id, 2, "missed").await;
    let back = common::eventually(WAIT, || async {
        near.tracking_client_id().is_some_and(|id| id != killed)
    })
    .await;
    assert!(back, "tracking never came back");
    let (version, name, _) = read(&t, &id).await;
    assert_eq!(
        (version, name.as_str()),
        (2, "missed"),
        "an entry from before the drop was served"
    );
    assert_eq!(
        t.metric("profile_near_cache_tracking", "").await,
        1.0,
        "the gauge shows tracking"
    );
}

#[tokio::test]
async fn hits_are_counted_by_tier_and_the_switch_turns_the_near_cache_off() {
    let config = common::fresh_config("near-off").await;
    let on = replica(config.clone()).await;
    let id = user("near-off");
    on.put(&id, &body("v1")).await;
    cached_near(&on, &id).await;
    assert!(on.metric("profile_near_cache_entries", "").await >= 1.0);
    assert!(on.metric("profile_near_cache_bytes", "").await > 0.0);
    let off = start(
        profile_api::Config {
            near_cache_enabled: false,
            ..config
        },
        false,
    )
    .await;
    assert!(off.app.near_cache().is_none());
    for _ in 0..3 {
        assert_eq!(read(&off, &id).await.2, "hit");
    }
    assert_eq!(near_hits(&off).await, 0.0);
    assert_eq!(
        off.metric(
            "profile_cache_lookups_total",
            "result=\"hit\",tier=\"redis\""
        )
        .await,
        3.0
    );
    assert_eq!(off.metric("profile_near_cache_tracking", "").await, 0.0);
}

#[tokio::test]
async fn on_a_redis_cluster_each_replica_tracks_every_master_and_sees_the_others_writes() {
    // REDIS_URL naming several nodes: the stack's Redis Cluster (three masters, a replica each).
    let mut config = common::fresh_config("near-cluster").await;
    config.redis_url = statecast_testkit::redis_cluster_url().unwrap();
    let a = replica(config.clone()).await;
    let b = replica(config).await;
    for t in [&a, &b] {
        let near = t.app.near_cache().unwrap().clone();
        let all = common::eventually(WAIT, || async { near.tracking_clients().len() == 3 }).await;
        assert!(
            all,
            "not tracking every master: {:?}",
            near.tracking_clients()
        );
    }
    // Users enough that every master serves some of them.
    for n in 0..12 {
        let id = user(&format!("near-cluster-{n}"));
        a.put(&id, &body("v1")).await;
        for i in 2..=3 {
            cached_near(&b, &id).await;
            a.put(&id, &body(&format!("v{i}"))).await;
            let (version, _, _) = read(&a, &id).await;
            assert_eq!(version, i, "read-your-writes on A");
            let seen = common::eventually(Duration::from_secs(2), || async {
                read(&b, &id).await.0 == i
            })
            .await;
            assert!(
                seen,
                "replica B still serves a version older than {i} of {id}"
            );
        }
    }
}

#[tokio::test]
async fn through_a_failover_of_the_redis_cluster_two_replicas_answer_every_request_and_never_go_back()
 {
    // A private cluster: a master is killed while two replicas read and write; its replica is
    // promoted. Every request succeeds (the cache is bypassed while its slots are down), no
    // replica serves a version older than one it served or one it wrote, and both end on the
    // last write, served from their near caches again.
    let mut cluster = statecast_testkit::PrivateCluster::start().await.unwrap();
    let mut config = common::fresh_config("near-failover").await;
    config.redis_url = cluster.url();
    let a = replica(config.clone()).await;
    let b = replica(config).await;
    let id = user("near-failover");
    a.put(&id, &body("v1")).await;
    cached_near(&b, &id).await;
    let victim = cluster.master_of(&statecast_cache::key(&id)).unwrap();
    cluster.kill(victim);
    let killed = Instant::now();
    let mut last = 1;
    let (mut seen_a, mut seen_b) = (0, 0);
    while killed.elapsed() < Duration::from_secs(8) {
        last += 1;
        let put = a.put(&id, &body(&format!("v{last}"))).await;
        assert_eq!(version_of(&put.json().await.unwrap()), last, "write {last}");
        let (version, _, _) = read(&a, &id).await;
        assert!(version >= last, "A read {version} after writing {last}");
        seen_a = version;
        let (version, _, _) = read(&b, &id).await;
        assert!(version >= seen_b, "B went back from {seen_b} to {version}");
        seen_b = version;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen_a, last);
    for t in [&a, &b] {
        let near = t.app.near_cache().unwrap().clone();
        let back = common::eventually(Duration::from_secs(20), || async {
            near.tracking_clients().len() == 3
        })
        .await;
        assert!(back, "the near cache never tracked the new masters");
        let fresh = common::eventually(Duration::from_secs(5), || async {
            read(t, &id).await.0 == last
        })
        .await;
        assert!(fresh, "a replica does not serve the last write {last}");
        cached_near(t, &id).await;
        assert_eq!(read(t, &id).await.0, last);
    }
    cluster.restart(victim).await.unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
}
