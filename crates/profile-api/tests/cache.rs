//! The read path against real Redis: hits and misses, read-your-writes under concurrent writers,
//! stampede protection (within a replica and across replicas behind a slow database),
//! stale-while-revalidate, negative caching, writes whose request is cut off during the commit,
//! and Redis outages.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{body, start, user, version_of};
use reqwest::StatusCode;
use serde_json::Value;
use statecast_testkit::{FaultProxy, PgProxy};

fn x_cache(response: &reqwest::Response) -> String {
    let Some(value) = response.headers().get("x-cache") else {
        panic!("no x-cache header on a {} answer", response.status());
    };
    value.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn first_read_misses_then_hits() {
    let t = start(common::fresh_config("hit").await, false).await;
    let id = user("hit");
    t.put(&id, &body("A")).await;
    let first = t.get(&id).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(x_cache(&first), "miss");
    let second = t.get(&id).await;
    assert_eq!(x_cache(&second), "hit");
    assert_eq!(version_of(&second.json().await.unwrap()), 1);
    assert_eq!(
        t.metric("profile_cache_lookups_total", "result=\"hit\"")
            .await,
        1.0
    );
    assert_eq!(
        t.metric("profile_cache_lookups_total", "result=\"miss\"")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_read_after_a_write_never_returns_an_older_version_even_with_concurrent_writers() {
    let t = Arc::new(start(common::fresh_config("ryw").await, false).await);
    let id = user("ryw");
    t.put(&id, &body("start")).await;
    t.get(&id).await; // cached at version 1
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let (t, id) = (t.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            for i in 0..20 {
                let put = t.put(&id, &body(&format!("w{writer}-{i}"))).await;
                assert_eq!(put.status(), StatusCode::OK);
                seen = seen.max(version_of(&put.json().await.unwrap()));
                let got = t.get(&id).await;
                assert_eq!(got.status(), StatusCode::OK);
                let got = version_of(&got.json().await.unwrap());
                assert!(
                    got >= seen,
                    "writer {writer} read version {got} after writing {seen}"
                );
                seen = got;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last = t.get(&id).await;
    assert_eq!(version_of(&last.json().await.unwrap()), 1 + 8 * 20);
}

#[tokio::test]
async fn two_hundred_concurrent_reads_of_a_cold_key_load_the_database_once() {
    let t = Arc::new(start(common::fresh_config("stampede").await, false).await);
    let id = user("stampede");
    t.put(&id, &body("A")).await;
    let before = t.metric("profile_db_loads_total", "").await;
    let reads = (0..200).map(|_| {
        let (t, id) = (t.clone(), id.clone());
        tokio::spawn(async move { t.get(&id).await.status() })
    });
    for status in futures::future::join_all(reads).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let after = t.metric("profile_db_loads_total", "").await;
    assert_eq!(
        after - before,
        1.0,
        "one database load for 200 concurrent cold reads"
    );
}

#[tokio::test]
async fn two_replicas_share_one_load_through_the_redis_lock_or_the_fill() {
    let config = common::fresh_config("replicas").await;
    let a = Arc::new(start(config.clone(), false).await);
    let b = Arc::new(start(config, false).await);
    let id = user("replicas");
    a.put(&id, &body("A")).await;
    let reads = (0..100).map(|i| {
        let t = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tokio::spawn(async move { t.get(&id).await.status() })
    });
    for status in futures::future::join_all(reads).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let loads =
        a.metric("profile_db_loads_total", "").await + b.metric("profile_db_loads_total", "").await;
    assert!(
        loads <= 2.0,
        "{loads} loads for 100 reads over two replicas"
    );
}

#[tokio::test]
async fn unknown_ids_are_negatively_cached_until_created() {
    let t = start(common::fresh_config("neg").await, false).await;
    let id = user("neg");
    assert_eq!(t.get(&id).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(t.get(&id).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        t.metric("profile_cache_lookups_total", "result=\"negative\"")
            .await,
        1.0
    );
    assert_eq!(t.metric("profile_db_loads_total", "").await, 1.0);
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    let got = t.get(&id).await;
    assert_eq!(
        got.status(),
        StatusCode::OK,
        "the PUT invalidated the negative entry"
    );
}

#[tokio::test]
async fn expired_entries_are_served_stale_and_refreshed_in_the_background() {
    let mut config = common::fresh_config("stale").await;
    config.cache_ttl_seconds = 1;
    let t = start(config, false).await;
    let id = user("stale");
    t.put(&id, &body("A")).await;
    assert_eq!(x_cache(&t.get(&id).await), "miss");
    // Past the soft TTL (≤ 1.1 s with jitter) but within the grace period.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let stale = t.get(&id).await;
    assert_eq!(x_cache(&stale), "stale");
    assert_eq!(stale.status(), StatusCode::OK);
    let refreshed = common::eventually(Duration::from_secs(5), || async {
        x_cache(&t.get(&id).await) == "hit"
    })
    .await;
    assert!(
        refreshed,
        "the background refresh never produced a fresh entry"
    );
}

#[tokio::test]
async fn with_redis_down_reads_bypass_the_cache_and_writes_succeed() {
    let proxy = FaultProxy::start(&statecast_testkit::host_port(
        &statecast_testkit::redis_url(),
    ))
    .await
    .unwrap();
    let mut config = common::fresh_config("redisdown").await;
    config.redis_url = format!("redis://{}", proxy.addr());
    let t = start(config, false).await;
    let id = user("redisdown");
    t.put(&id, &body("A")).await;
    assert_eq!(x_cache(&t.get(&id).await), "miss");
    assert_eq!(x_cache(&t.get(&id).await), "hit");

    proxy.cut();
    for _ in 0..5 {
        let got = t.get(&id).await;
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(x_cache(&got), "bypass");
    }
    let put = t.put(&id, &body("B")).await;
    assert_eq!(put.status(), StatusCode::OK);
    let got = t.get(&id).await;
    assert_eq!(x_cache(&got), "bypass");
    let got: Value = got.json().await.unwrap();
    assert_eq!((got["name"].as_str(), version_of(&got)), (Some("B"), 2));
    let ready: Value = t.get_json("/readyz").await;
    assert_eq!(ready["redis"], "down");
    assert_eq!(ready["status"], "degraded");

    proxy.restore();
    // The write's invalidation is retried once Redis is back: no reader sees version 1 again.
    let back = common::eventually(Duration::from_secs(10), || async {
        let got = t.get(&id).await;
        let cache = x_cache(&got);
        let version = version_of(&got.json().await.unwrap());
        assert_eq!(version, 2, "a stale version came back from the cache");
        cache == "hit"
    })
    .await;
    assert!(back, "the cache never came back");
}

#[tokio::test]
async fn a_write_whose_request_times_out_during_the_commit_still_invalidates_the_cache() {
    let mut config = common::fresh_config("commit").await;
    // Long enough for every other request of the test on a loaded machine; the slow commit
    // below takes twice as long.
    config.request_timeout_ms = 2_000;
    let db = sqlx::PgPool::connect(&config.database_url).await.unwrap();
    let t = start(config, false).await;
    let id = user("commit");
    assert_eq!(t.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    t.get(&id).await;
    assert_eq!(x_cache(&t.get(&id).await), "hit", "version 1 is cached");
    // Test hook: the commit of a change that names a profile "slow" takes 4 s (a deferred
    // constraint trigger runs at commit), far past the 2 s request timeout.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.name = 'slow' THEN PERFORM pg_sleep(4); END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON profile \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
    )
    .execute(&db)
    .await
    .unwrap();
    let put = t.put(&id, &body("slow")).await;
    assert_eq!(
        put.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the request timed out while the commit ran"
    );
    let committed = common::eventually(Duration::from_secs(10), || async {
        let (version,): (i64,) = sqlx::query_as("SELECT version FROM profile WHERE id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
        version == 2
    })
    .await;
    assert!(committed, "the commit was under way and landed");
    // The invalidation after the commit was not cancelled with the request: the cache no
    // longer serves version 1.
    let invalidated = common::eventually(Duration::from_secs(5), || async {
        version_of(&t.get(&id).await.json().await.unwrap()) == 2
    })
    .await;
    assert!(
        invalidated,
        "the cache still serves version 1 after version 2 committed"
    );
}

#[tokio::test]
async fn two_replicas_behind_a_slow_database_load_a_cold_key_once() {
    let mut config = common::fresh_config("slowdb").await;
    let upstream = statecast_testkit::host_port(&config.database_url);
    let proxy = PgProxy::start(&upstream).await.unwrap();
    config.database_url = proxy.url(&config.database_url, &upstream);
    let a = Arc::new(start(config.clone(), false).await);
    let b = Arc::new(start(config, false).await);
    let id = user("slowdb");
    assert_eq!(a.put(&id, &body("A")).await.status(), StatusCode::CREATED);
    // Every statement now takes at least 500 ms, longer than the old fixed 300 ms wait.
    proxy.slow_down(Duration::from_millis(500));
    let before = proxy.executes();
    let metric_before =
        a.metric("profile_db_loads_total", "").await + b.metric("profile_db_loads_total", "").await;
    let reads = (0..100).map(|i| {
        let t = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tokio::spawn(async move {
            let got = t.get(&id).await;
            (got.status(), version_of(&got.json().await.unwrap()))
        })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap(), (StatusCode::OK, 1));
    }
    let loads = proxy.executes() - before;
    let metric = a.metric("profile_db_loads_total", "").await
        + b.metric("profile_db_loads_total", "").await
        - metric_before;
    assert_eq!(
        (loads, metric),
        (1, 1.0),
        "statements seen by the database proxy, and the API's own count of loads"
    );
}
