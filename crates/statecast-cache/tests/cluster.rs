//! The cache on a real Redis Cluster: the stack's (three masters with a replica each,
//! `STATECAST_REDIS_CLUSTER_URL`) for the version rules and the near cache, and a private one of
//! the test's own for failover, where a master is killed and its replica promoted.
//!
//! Without the stack's cluster these tests fail, saying to run `scripts/stack up`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use statecast_cache::fixtures::{TTLS, profile};
use statecast_cache::{Cache, Kind, NearCache, NearConfig, Target, Tier, Written, key, now_ms};
use statecast_testkit::{PrivateCluster, redis_cluster_url};

/// The cluster of `url` (its nodes, comma-separated).
fn target(url: &str) -> Target {
    let seeds = url
        .split(',')
        .map(|node| redis::Client::open(node).unwrap())
        .collect();
    Target::cluster(seeds, None).unwrap()
}

fn stack_cluster() -> Target {
    target(&redis_cluster_url().unwrap())
}

fn cache(target: &Target) -> Cache {
    Cache::lazy(target.clone(), Duration::from_secs(2), TTLS).unwrap()
}

fn unique_id() -> String {
    format!("cluster-{}", uuid::Uuid::now_v7().simple())
}

/// Ids enough that every master serves some of them (the slots of 40 random keys miss one of
/// three masters with probability 3 * (2/3)^40, about 1e-7).
fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| unique_id()).collect()
}

async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

async fn tracking_near(target: &Target, masters: usize) -> NearCache {
    let near = NearCache::new(NearConfig {
        max_entries: 10_000,
        max_bytes: 1 << 24,
        grace: TTLS.grace,
        health_interval: Duration::from_millis(200),
    });
    near.spawn_tracking(target.clone());
    assert!(
        until(Duration::from_secs(10), || near.tracking_clients().len()
            == masters)
        .await,
        "tracking never came up on {masters} masters: {:?}",
        near.tracking_clients()
    );
    near
}

#[tokio::test]
async fn the_version_rules_and_the_fill_lock_hold_on_every_master_of_the_cluster() {
    let target = stack_cluster();
    let cache = cache(&target);
    cache.ping().await.unwrap();
    for id in ids(40) {
        let started = Instant::now();
        assert!(
            cache
                .fill(&id, Some(profile(&id, 1)), 1, started)
                .await
                .unwrap()
        );
        cache.invalidate(&id, 2).await.unwrap();
        assert!(
            !cache
                .fill(&id, Some(profile(&id, 1)), 1, started)
                .await
                .unwrap(),
            "a fill older than the marker is refused"
        );
        let entry = cache.get(&id).await.unwrap().unwrap();
        assert_eq!((entry.k, entry.v), (Kind::Invalidated, 2));
        let refresh = |v: i64| cache.refresh(&id, Some(profile(&id, v)), v);
        assert_eq!(
            refresh(2).await.unwrap(),
            Written::Written,
            "replaces its marker"
        );
        assert_eq!(refresh(2).await.unwrap(), Written::SameVersion);
        assert_eq!(refresh(1).await.unwrap(), Written::Older);
        assert_eq!(cache.refresh(&id, None, 3).await.unwrap(), Written::Written);
        assert_eq!(refresh(2).await.unwrap(), Written::Older, "no resurrection");
        // The fill lock: one owner, released only by it.
        assert!(cache.try_lock(&id, "a").await.unwrap());
        assert!(!cache.try_lock(&id, "b").await.unwrap());
        cache.unlock(&id, "b").await.unwrap();
        assert!(cache.is_locked(&id).await.unwrap());
        cache.unlock(&id, "a").await.unwrap();
        assert!(!cache.is_locked(&id).await.unwrap());
    }
}

#[tokio::test]
async fn scripts_a_node_does_not_know_are_sent_again_on_that_node() {
    // A promoted replica or a restarted node may not have the scripts: SCRIPT FLUSH on every
    // node of the private cluster stands for that (the stack's is shared with other tests).
    let cluster = PrivateCluster::start().await.unwrap();
    let target = target(&cluster.url());
    let cache = cache(&target);
    let ids = ids(40);
    for id in &ids {
        cache.refresh(id, Some(profile(id, 1)), 1).await.unwrap();
    }
    for port in cluster.ports() {
        statecast_testkit::cluster::redis_cli(port, &["script", "flush"]).unwrap();
    }
    for id in &ids {
        assert_eq!(
            cache.refresh(id, Some(profile(id, 2)), 2).await.unwrap(),
            Written::Written
        );
        assert!(cache.try_lock(id, "t").await.unwrap());
        cache.unlock(id, "t").await.unwrap();
        assert!(!cache.is_locked(id).await.unwrap());
    }
}

#[tokio::test]
async fn every_master_pushes_its_invalidations_to_the_near_caches_of_two_replicas() {
    let target = stack_cluster();
    // Two API replicas, each with its near cache and its client; a third client stands for the
    // cache-refresh consumer.
    let (near_a, near_b) = (
        tracking_near(&target, 3).await,
        tracking_near(&target, 3).await,
    );
    let (a, b, consumer) = (cache(&target), cache(&target), cache(&target));
    let nodes: BTreeSet<String> = near_a
        .tracking_clients()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(nodes.len(), 3, "one tracking connection per master");
    let ids = ids(40);
    for id in &ids {
        consumer.refresh(id, Some(profile(id, 1)), 1).await.unwrap();
        for (near, cache) in [(&near_a, &a), (&near_b, &b)] {
            assert_eq!(cache.get_through(near, id).await.unwrap().1, Tier::Redis);
            let (entry, tier) = cache.get_through(near, id).await.unwrap();
            assert_eq!((entry.map(|e| e.v), tier), (Some(1), Tier::Near));
        }
    }
    // Replica A writes (its own entry goes at once), the consumer refreshes: B learns of both
    // from the push of whichever master serves the key.
    for id in &ids {
        near_a.written(id, 2);
        a.invalidate(id, 2).await.unwrap();
        assert!(
            until(Duration::from_secs(5), || near_b
                .get(id, now_ms())
                .is_none())
            .await,
            "replica B still serves version 1 of {} (master of its slot pushed nothing)",
            key(id)
        );
        let (entry, tier) = b.get_through(&near_b, id).await.unwrap();
        assert_eq!(
            (entry.map(|e| (e.k, e.v)), tier),
            (Some((Kind::Invalidated, 2)), Tier::Redis)
        );
        consumer.refresh(id, Some(profile(id, 2)), 2).await.unwrap();
        for (near, cache) in [(&near_a, &a), (&near_b, &b)] {
            let served = until(Duration::from_secs(5), || {
                near.get(id, now_ms()).is_none_or(|e| e.v == 2)
            })
            .await;
            assert!(
                served,
                "an old entry of {id} outlived the consumer's refresh"
            );
            let (entry, _) = cache.get_through(near, id).await.unwrap();
            assert_eq!(entry.map(|e| e.v), Some(2));
        }
    }
}

#[tokio::test]
async fn a_killed_master_flushes_the_near_cache_and_its_promoted_replica_serves_reads_and_writes() {
    let mut cluster = PrivateCluster::start().await.unwrap();
    let target = target(&cluster.url());
    let near = tracking_near(&target, 3).await;
    let (mine, elsewhere) = (cache(&target), cache(&target));
    let id = unique_id();
    let victim = cluster.master_of(&key(&id)).unwrap();
    elsewhere
        .refresh(&id, Some(profile(&id, 1)), 1)
        .await
        .unwrap();
    mine.get_through(&near, &id).await.unwrap();
    let (_, tier) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!(tier, Tier::Near);
    let before: BTreeSet<String> = near
        .tracking_clients()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(before.contains(&format!("127.0.0.1:{victim}")));

    let killed = Instant::now();
    cluster.kill(victim);
    // Its tracking connection closed: flushed and bypassed at once, long before the promotion.
    assert!(
        until(Duration::from_secs(2), || !near.is_tracking()).await,
        "the near cache still tracks after its master on {victim} was killed"
    );
    assert!(near.get(&id, now_ms()).is_none(), "flushed");
    println!("near cache off {:?} after the kill", killed.elapsed());

    // Writes and reads of the victim's slots come back once its replica is promoted (node
    // timeout 2 s plus an election), within a bounded time.
    let mut written = None;
    while killed.elapsed() < Duration::from_secs(30) {
        if let Ok(w) = elsewhere.refresh(&id, Some(profile(&id, 2)), 2).await {
            written = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Version 1 may have been lost with the master (replication is asynchronous): 2 is newer
    // either way.
    assert_eq!(
        written,
        Some(Written::Written),
        "no write within 30 s of the kill"
    );
    println!("writes back {:?} after the kill", killed.elapsed());
    // Never version 1 from the near cache, while it is down or once it is back.
    let back = Instant::now();
    let mut tracked_again = false;
    while back.elapsed() < Duration::from_secs(20) {
        let (entry, tier) = mine.get_through(&near, &id).await.unwrap();
        assert_eq!(entry.map(|e| e.v), Some(2), "served from {tier:?}");
        if near.tracking_clients().len() == 3 && tier == Tier::Near {
            tracked_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tracked_again,
        "the near cache never tracked the new master set: {:?}",
        near.tracking_clients()
    );
    let after: BTreeSet<String> = near
        .tracking_clients()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !after.contains(&format!("127.0.0.1:{victim}")),
        "still tracking the dead master"
    );
    println!(
        "tracking again {:?} after the kill: {after:?}",
        killed.elapsed()
    );
    // And the promoted master's invalidations reach it.
    elsewhere.invalidate(&id, 3).await.unwrap();
    assert!(
        until(Duration::from_secs(5), || near.get(&id, now_ms()).is_none()).await,
        "the promoted master's invalidation did not arrive"
    );

    // The killed node comes back as a replica: the cluster is whole again.
    cluster.restart(victim).await.unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
    assert_eq!(cluster.masters().len(), 3);
    assert!(
        !cluster.masters().contains(&victim),
        "the old master rejoined as a replica"
    );
    let (entry, _) = mine.get_through(&near, &id).await.unwrap();
    assert_eq!(entry.map(|e| (e.k, e.v)), Some((Kind::Invalidated, 3)));
}

#[tokio::test]
async fn a_manual_failover_moves_tracking_to_the_new_master_set() {
    // No connection closes here: the old master lives on as a replica. Only the health check's
    // slot map shows that the masters changed.
    let cluster = PrivateCluster::start().await.unwrap();
    let target = target(&cluster.url());
    let near = tracking_near(&target, 3).await;
    let cache = cache(&target);
    let id = unique_id();
    let old = cluster.master_of(&key(&id)).unwrap();
    let new = cluster.replica_of(old).unwrap();
    cache.refresh(&id, Some(profile(&id, 1)), 1).await.unwrap();
    statecast_testkit::cluster::redis_cli(new, &["cluster", "failover"]).unwrap();
    let promoted = until(Duration::from_secs(10), || cluster.masters().contains(&new)).await;
    assert!(promoted, "the replica on {new} was not promoted");
    let tracked = until(Duration::from_secs(10), || {
        let nodes: BTreeSet<String> = near
            .tracking_clients()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        nodes.len() == 3 && nodes.contains(&format!("127.0.0.1:{new}"))
    })
    .await;
    assert!(
        tracked,
        "the near cache does not track the new master on {new}: {:?}",
        near.tracking_clients()
    );
    assert!(
        near.tracking_clients()
            .iter()
            .all(|(n, _)| n != &format!("127.0.0.1:{old}")),
        "still tracking the old master {old}"
    );
    // The new master's pushes arrive.
    cache.get_through(&near, &id).await.unwrap();
    let (_, tier) = cache.get_through(&near, &id).await.unwrap();
    assert_eq!(tier, Tier::Near);
    cache.refresh(&id, Some(profile(&id, 2)), 2).await.unwrap();
    assert!(
        until(Duration::from_secs(5), || near
            .get(&id, now_ms())
            .is_none_or(|e| e.v == 2))
        .await,
        "the new master's invalidation did not arrive"
    );
}
