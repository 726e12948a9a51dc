//! `kill -9` in the middle of a run loses nothing and duplicates nothing.

use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use statecast_events::{EventType, ProfileEvent};
use tokio::sync::oneshot;

use crate::support;

const EVENTS: i64 = 1000;
/// The consumers' `KAFKA_SESSION_TIMEOUT_MS`.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Waits, after a kill at `killed_at`, until the killed member's session has expired (and 2 s
/// more), so the restarted consumer joins a group with no member left.
///
/// Restarted sooner, it raced the expiry in tansu (patched 0.6.0): in one fresh-clone run its
/// join completed a generation 3 s later with the dead member still in it, 0 partitions for the
/// newcomer, and no later generation when the dead member then expired, so it waited with no
/// partitions until the test timed out. A member dying while another holds on is the survivor
/// test below; this test is about what the restart applies.
async fn after_the_session(killed_at: Instant) {
    let until = killed_at + SESSION_TIMEOUT + Duration::from_secs(2);
    tokio::time::sleep_until(until.into()).await;
}

/// Produces `groups` (each group's events one after another, in order: one user's versions),
/// paced, ten groups at a time 5 ms apart, so the consumer is busy with arriving records when it
/// is killed; everything from group `gate` on is held back until `killed` fires.
///
/// So the kill lands in the middle of the stream by construction, however fast the consumer is
/// (unpaced, it applied 1,000 records between two 100-ms polls, and a kill meant for the middle
/// found them all applied) and however slow a loaded machine makes it.
async fn produce_gated(
    producer: &FutureProducer,
    topic: &str,
    groups: Vec<Vec<ProfileEvent>>,
    gate: usize,
    killed: oneshot::Receiver<()>,
) {
    let mut killed = Some(killed);
    for (at, chunk) in groups.chunks(10).enumerate() {
        if at * 10 >= gate
            && let Some(killed) = killed.take()
        {
            killed.await.expect("the test kills the consumer");
        }
        let sends = chunk.iter().map(|group| async move {
            for event in group {
                support::produce(producer, topic, event).await;
            }
        });
        futures::future::join_all(sends).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `condition` every 5 ms (the consumer applies records far faster than
/// [`support::wait_until`]'s 100 ms) until it holds; panics after `timeout`.
async fn wait_closely<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where consumer `name`'s log goes: printed by [`logs_on_failure`] if the test fails, so a
/// stalled group (who was assigned what, rebalance errors) can be read afterwards.
fn log_path(group: &str, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{group}-{name}.log"))
}

/// Prints both consumers' logs when dropped during a panic; removes them otherwise.
struct LogsOnFailure(Vec<std::path::PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        for path in &self.0 {
            if std::thread::panicking() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("--- {}\n{text}", path.display());
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn spawn(
    topic: &str,
    group: &str,
    db: &str,
    name: &str,
) -> (tokio::process::Child, std::net::SocketAddr) {
    spawn_handler(topic, group, db, name, "audit")
}

fn spawn_handler(
    topic: &str,
    group: &str,
    db: &str,
    name: &str,
    handler: &str,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let addr = support::free_addr();
    let log = std::fs::File::create(log_path(group, name)).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_profile-consumer"))
        .env("KAFKA_BROKERS", statecast_testkit::kafka_brokers())
        .env("KAFKA_GROUP_ID", group)
        .env("KAFKA_TOPICS", topic)
        .env("CONSUMER_HANDLER", handler)
        .env("DATABASE_URL", db)
        .env("METRICS_ADDR", addr.to_string())
        .env(
            "KAFKA_SESSION_TIMEOUT_MS",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .env("RUST_LOG", "warn,profile_consumer=info")
        .env("OTEL_SDK_DISABLED", "true")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, addr)
}

/// Waits until the consumer serving `addr` is in its group, and a few heartbeats more.
///
/// The first consumer of a kill test is started before the events are produced, so the kill
/// lands in the middle of the stream (see [`produce_gated`]) and not in the member's first
/// moments in the group: tansu (patched 0.6.0), under the load of
/// the whole suite, did not expire a member SIGKILLed right after its join, and the restarted
/// consumer then waited with no partitions until the test timed out (also with
/// `CONSUMER_BATCH_MAX=1`; no record was lost or doubled).
async fn settled(addr: std::net::SocketAddr) {
    support::wait_until(
        "first consumer ready",
        Duration::from_secs(60),
        || async move {
            support::http_get(addr, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn kill_9_in_the_middle_of_1000_events_then_restart_applies_each_exactly_once() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("crash", 2).await;
    let group = statecast_testkit::unique("crash");
    let _logs = LogsOnFailure(vec![log_path(&group, "first"), log_path(&group, "second")]);
    let producer = support::producer();
    let groups = (0..EVENTS)
        .map(|i| {
            vec![support::event(
                EventType::UserCreated,
                &format!("c{i}"),
                1,
                "c@example.com",
                "PT",
            )]
        })
        .collect();
    let (mut first, first_addr) = spawn(&topic, &group, &db, "first");
    settled(first_addr).await;
    let (kill, killed) = oneshot::channel();
    let half = usize::try_from(EVENTS / 2).unwrap();
    let sending = tokio::spawn({
        let topic = topic.clone();
        async move { produce_gated(&producer, &topic, groups, half, killed).await }
    });

    let pool = support::pool(&db).await;
    let rows = |pool: sqlx::PgPool| async move {
        // The table exists once the consumer migrated.
        sqlx::query_scalar::<_, i64>("select count(*) from audit_log")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };

    wait_closely("200 rows", Duration::from_secs(60), || async {
        rows(pool.clone()).await >= 200
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let killed_at = Instant::now();
    let at_kill = rows(pool.clone()).await;
    eprintln!("killed after {at_kill} rows, with at most {half} produced");
    kill.send(()).unwrap();
    sending.await.unwrap();
    after_the_session(killed_at).await;

    let restarted_at = Instant::now();
    let (mut second, second_addr) = spawn(&topic, &group, &db, "second");
    support::wait_until("1000 rows", Duration::from_secs(90), || async {
        rows(pool.clone()).await >= EVENTS
    })
    .await;
    eprintln!("restart to 1000 rows: {:?}", restarted_at.elapsed());
    // A moment for anything that would double-apply to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let distinct = support::count(&pool, "select count(distinct event_id) from audit_log").await;
    let total = support::count(&pool, "select count(*) from audit_log").await;
    let users = support::count(&pool, "select count(distinct user_id) from audit_log").await;
    let claimed = support::count(&pool, "select count(*) from processed_event").await;
    assert_eq!(
        (total, distinct, users, claimed),
        (EVENTS, EVENTS, EVENTS, EVENTS)
    );

    let (_, metrics) = support::http_get(second_addr, "/metrics").await.unwrap();
    let replayed = support::metric_value(&metrics, r#"consumer_records_total{result="duplicate"}"#);
    eprintln!("records replayed after the kill and skipped as duplicates: {replayed:?}");

    // Graceful stop: SIGTERM, out within 30 s, exit code 0.
    let pid = second.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .expect("stopped within 30 s after SIGTERM")
        .unwrap();
    eprintln!("SIGTERM to exit: {:?}", signalled.elapsed());
    assert!(exit.success(), "{exit:?}");
}

/// The same for the analytics handler, whose batch is one transaction of aggregate deltas: a
/// kill in the middle of a batch must leave none of it, or all of it, applied.
#[tokio::test]
async fn kill_9_in_the_middle_of_analytics_batches_then_restart_counts_each_event_once() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("crash-analytics", 2).await;
    let group = statecast_testkit::unique("crash-analytics");
    let _logs = LogsOnFailure(vec![log_path(&group, "first"), log_path(&group, "second")]);
    let producer = support::producer();
    // Users get two versions each, the second moving them from PT to DE.
    let groups = (0..EVENTS / 2)
        .map(|i| {
            let user = format!("a{i}");
            vec![
                support::event(EventType::UserCreated, &user, 1, "a@example.com", "PT"),
                support::event(EventType::UserUpdated, &user, 2, "a@example.com", "DE"),
            ]
        })
        .collect();
    let (mut first, first_addr) = spawn_handler(&topic, &group, &db, "first", "analytics");
    settled(first_addr).await;
    let (kill, killed) = oneshot::channel();
    let half_of_users = usize::try_from(EVENTS / 4).unwrap();
    let sending = tokio::spawn({
        let topic = topic.clone();
        async move { produce_gated(&producer, &topic, groups, half_of_users, killed).await }
    });

    let pool = support::pool(&db).await;
    let changes = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "select coalesce(sum(changes), 0)::bigint from analytics_daily_changes",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
    };
    wait_closely("200 changes", Duration::from_secs(60), || async {
        changes(pool.clone()).await >= 200
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let killed_at = Instant::now();
    let at_kill = changes(pool.clone()).await;
    kill.send(()).unwrap();
    sending.await.unwrap();
    after_the_session(killed_at).await;

    let (_second, addr) = spawn_handler(&topic, &group, &db, "second", "analytics");
    support::wait_until("1000 changes", Duration::from_secs(90), || async {
        changes(pool.clone()).await >= EVENTS
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(changes(pool.clone()).await, EVENTS);
    let claimed = support::count(&pool, "select count(*) from processed_event").await;
    let de = support::count(
        &pool,
        "select coalesce(sum(profiles), 0)::bigint from analytics_country where country = 'DE'",
    )
    .await;
    let pt = support::count(
        &pool,
        "select coalesce(sum(profiles), 0)::bigint from analytics_country where country = 'PT'",
    )
    .await;
    let states = support::count(
        &pool,
        "select count(*) from analytics_profile_state where version = 2 and country = 'DE'",
    )
    .await;
    assert_eq!(
        (claimed, de, pt, states),
        (EVENTS, EVENTS / 2, 0, EVENTS / 2)
    );
    let (_, metrics) = support::http_get(addr, "/metrics").await.unwrap();
    eprintln!(
        "killed after {at_kill} changes; replayed as duplicates after the restart: {:?}",
        support::metric_value(&metrics, r#"consumer_records_total{result="duplicate"}"#)
    );
}

/// `consumer_records_total{result="processed"}` of the consumer serving `addr`.
async fn processed(addr: std::net::SocketAddr) -> f64 {
    support::http_get(addr, "/metrics")
        .await
        .ok()
        .and_then(|(_, body)| {
            support::metric_value(&body, r#"consumer_records_total{result="processed"}"#)
        })
        .unwrap_or(0.0)
}

/// The group must recover when every member holding a partition dies at once: the idle
/// survivor gets them all. (tansu 0.6.0 removed expired members without a new generation, so
/// the survivor kept its empty assignment for ever: scripts/tansu/group-expiry.patch.)
#[tokio::test]
async fn the_idle_survivor_takes_every_partition_after_the_members_holding_them_are_killed() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("survivor", 2).await;
    let group = statecast_testkit::unique("survivor");
    let names = ["member-0", "member-1", "member-2"];
    let _logs = LogsOnFailure(names.iter().map(|n| log_path(&group, n)).collect());
    let mut members = Vec::new();
    for name in names {
        let (child, addr) = spawn(&topic, &group, &db, name);
        support::wait_until("member ready", Duration::from_secs(60), || async move {
            support::http_get(addr, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
        })
        .await;
        members.push((child, addr));
    }
    // Let the joins settle into one generation: 2 partitions, 3 members, one idle.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let producer = support::producer();
    let pool = support::pool(&db).await;
    let produce = |from: usize| {
        let (producer, topic) = (&producer, &topic);
        async move {
            for i in from..from + 40 {
                let event = support::event(
                    EventType::UserCreated,
                    &format!("s{i}"),
                    1,
                    "s@example.com",
                    "PT",
                );
                support::produce(producer, topic, &event).await;
            }
        }
    };
    produce(0).await;
    support::wait_until("40 audit rows", Duration::from_secs(60), || async {
        support::count(&pool, "select count(*) from audit_log").await == 40
    })
    .await;
    let mut holders = Vec::new();
    let mut idle = Vec::new();
    for (child, addr) in members {
        if processed(addr).await > 0.0 {
            holders.push(child);
        } else {
            idle.push((child, addr));
        }
    }
    assert_eq!(idle.len(), 1, "one of three members holds no partition");
    for mut holder in holders {
        holder.kill().await.unwrap(); // SIGKILL: no leave-group, the session has to expire
    }
    produce(40).await;
    let started = Instant::now();
    support::wait_until("80 audit rows", Duration::from_secs(90), || async {
        support::count(&pool, "select count(*) from audit_log").await == 80
    })
    .await;
    println!("survivor took over in {:?}", started.elapsed());
    // The survivor counts a batch after its transaction commits, so its counter can trail the
    // rows by a moment (under load, beside two busy processes, it read 20 of 40 right after the
    // 80th row): wait for it, then check it handled all 40, not more.
    let survivor = idle[0].1;
    support::wait_until(
        "the survivor's count",
        Duration::from_secs(10),
        || async move { processed(survivor).await >= 40.0 },
    )
    .await;
    assert_eq!(processed(survivor).await, 40.0);
}
