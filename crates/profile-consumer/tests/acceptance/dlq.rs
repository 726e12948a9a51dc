//! Poison records go to the dead-letter topic and the consumer goes on.

use std::time::Duration;

use profile_consumer::HandlerKind;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::{ClientConfig, Message};
use statecast_events::EventType;

use crate::support::{self, Running};

#[tokio::test]
async fn a_poison_record_lands_in_the_dlq_with_its_reason_and_the_next_record_is_processed() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("poison", 1).await;
    let producer = support::producer();
    let headers = OwnedHeaders::new().insert(Header {
        key: "x-origin",
        value: Some("test"),
    });
    support::produce_raw(&producer, &topic, "poison-key", b"not json", headers)
        .await
        .unwrap();
    let next = support::event(
        EventType::UserCreated,
        "after-poison",
        1,
        "a@example.com",
        "PT",
    );
    support::produce(&producer, &topic, &next).await;

    let config = support::config(&topic, HandlerKind::Audit, Some(&db));
    let group = config.kafka_group_id.clone();
    let audit = Running::start(config);
    audit.wait_records("dlq", 1.0).await;
    audit.wait_records("processed", 1.0).await;
    let pool = support::pool(&db).await;
    assert_eq!(
        support::count(&pool, "select count(*) from audit_log").await,
        1
    );

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", statecast_testkit::kafka_brokers())
        .set("group.id", statecast_testkit::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("a dead letter within 30 s")
        .unwrap();
    assert_eq!(letter.key(), Some(&b"poison-key"[..]));
    assert_eq!(letter.payload(), Some(&b"not json"[..]));
    let headers = letter.headers().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header("x-origin").as_deref(),
        Some("test"),
        "original headers kept"
    );
    assert_eq!(header("dlq-reason").as_deref(), Some("undecodable"));
    assert_eq!(header("dlq-source-topic").as_deref(), Some(topic.as_str()));
    assert_eq!(header("dlq-source-partition").as_deref(), Some("0"));
    assert_eq!(header("dlq-source-offset").as_deref(), Some("0"));
    assert_eq!(
        header("dlq-consumer-group").as_deref(),
        Some(group.as_str())
    );
    assert_eq!(header("dlq-attempts").as_deref(), Some("0"));
    assert!(header("dlq-error").is_some_and(|e| e.contains("not a profile event")));
    audit.stop().await;
}

/// The database URL of `db` through a fault proxy of its own.
async fn via_proxy(db: &str) -> (statecast_testkit::FaultProxy, String) {
    let (prefix, name) = db.rsplit_once('/').unwrap();
    let (credentials, upstream) = prefix.rsplit_once('@').unwrap();
    let proxy = statecast_testkit::FaultProxy::start(upstream)
        .await
        .unwrap();
    let url = format!("{credentials}@{}/{name}", proxy.addr());
    (proxy, url)
}

/// Records in `topic` (every partition), from the broker's watermarks: what really landed
/// there, whatever the consumer counted.
async fn records_in(topic: &str) -> i64 {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", statecast_testkit::kafka_brokers())
            .create()
            .unwrap();
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut total = 0;
        for partition in metadata.topics()[0].partitions() {
            let (low, high) = client
                .fetch_watermarks(&topic, partition.id(), Duration::from_secs(10))
                .unwrap();
            total += high - low;
        }
        total
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_database_cut_far_longer_than_the_retry_budget_dead_letters_nothing_and_loses_nothing() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let (proxy, url) = via_proxy(&db).await;
    let topic = support::topic("cut", 2).await;
    let mut config = support::config(&topic, HandlerKind::Audit, Some(&url));
    // The old budget: 2 attempts, 100 ms apart. The cut lasts 40 times that.
    config.max_retries = 2;
    config.retry_max_backoff_ms = 200;
    let audit = Running::ready(config).await;
    proxy.cut();
    let producer = support::producer();
    let mut ids = Vec::new();
    for i in 0..20 {
        let event = support::event(
            EventType::UserCreated,
            &format!("cut-{i}"),
            1,
            "c@example.com",
            "PT",
        );
        ids.push(event.id);
        support::produce(&producer, &topic, &event).await;
    }
    audit
        .wait_metric("consumer_retries_total{reason=\"database\"}", 3.0)
        .await;
    audit.wait_metric("consumer_paused_partitions", 1.0).await;
    let (status, _) = support::http_get(audit.addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "not ready while the database is cut");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(audit.records("dlq").await, 0.0);
    proxy.restore();

    audit.wait_records("processed", 20.0).await;
    let pool = support::pool(&db).await;
    let recorded: Vec<uuid::Uuid> = sqlx::query_scalar("select event_id from audit_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut missing: Vec<_> = ids.iter().filter(|id| !recorded.contains(id)).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "events without their audit row: {missing:?}"
    );
    assert_eq!(recorded.len(), 20, "one row per event");
    assert_eq!(
        records_in(&format!("{topic}.dlq")).await,
        0,
        "nothing in the dead-letter topic"
    );
    support::wait_until("ready again", Duration::from_secs(10), || async {
        support::http_get(audit.addr, "/readyz")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(audit.metric("consumer_paused_partitions").await, 0.0);
    audit.stop().await;
}

/// Produces `event` to `partition` of `topic` explicitly.
async fn produce_to(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    event: &statecast_events::ProfileEvent,
) {
    let payload = event.to_json();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .partition(partition)
                .key(&event.subject)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

#[tokio::test]
async fn a_record_waiting_for_its_dependency_pauses_only_its_partition() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("pause", 2).await;
    let mut config = support::config(&topic, HandlerKind::Audit, Some(&db));
    config.retry_max_backoff_ms = 200;
    let audit = Running::ready(config).await;
    // The dependency of one record is "down": a serialization failure (SQLSTATE 40001, a
    // transient error) for as long as the flag is set.
    let pool = support::pool(&db).await;
    sqlx::raw_sql(
        "create table blocked (on_ boolean not null); insert into blocked values (true); \
         create function refuse_stuck() returns trigger language plpgsql as $$ begin \
           if new.user_id = 'stuck' and (select on_ from blocked) then \
             raise exception 'stuck is busy' using errcode = '40001'; end if; \
           return new; end $$; \
         create trigger refuse_stuck before insert on audit_log \
           for each row execute function refuse_stuck();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let producer = support::producer();
    let ev = |user: &str| support::event(EventType::UserCreated, user, 1, "p@example.com", "PT");
    produce_to(&producer, &topic, 0, &ev("stuck")).await;
    for i in 0..5 {
        produce_to(&producer, &topic, 0, &ev(&format!("behind-{i}"))).await;
        produce_to(&producer, &topic, 1, &ev(&format!("free-{i}"))).await;
    }
    // Partition 1 flows; partition 0 waits behind its stuck record, in order.
    support::wait_until("partition 1 handled", Duration::from_secs(30), || async {
        support::count(
            &pool,
            "select count(*) from audit_log where user_id like 'free-%'",
        )
        .await
            == 5
    })
    .await;
    audit.wait_metric("consumer_paused_partitions", 1.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        support::count(
            &pool,
            "select count(*) from audit_log where user_id like 'behind-%'"
        )
        .await,
        0,
        "records behind the stuck one wait for it"
    );
    assert_eq!(audit.records("dlq").await, 0.0);
    sqlx::query("update blocked set on_ = false")
        .execute(&pool)
        .await
        .unwrap();
    support::wait_until("partition 0 handled", Duration::from_secs(30), || async {
        support::count(&pool, "select count(*) from audit_log").await == 11
    })
    .await;
    let order: Vec<String> = sqlx::query_scalar(
        "select user_id from audit_log where user_id = 'stuck' or user_id like 'behind-%' order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(order[0], "stuck", "per-partition order kept: {order:?}");
    assert_eq!(audit.metric("consumer_paused_partitions").await, 0.0);
    audit.stop().await;
}

#[tokio::test]
async fn an_unknown_failure_is_dead_lettered_after_max_retries_and_replayed_once_fixed() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("unknown", 1).await;
    let mut config = support::config(&topic, HandlerKind::Audit, Some(&db));
    config.max_retries = 3;
    let group = config.kafka_group_id.clone();
    let audit = Running::ready(config).await;
    // A broken schema (SQLSTATE 42P01, undefined table) is neither an outage nor a bad event.
    let pool = support::pool(&db).await;
    sqlx::query("alter table audit_log rename to audit_log_away")
        .execute(&pool)
        .await
        .unwrap();
    let producer = support::producer();
    let event = support::event(EventType::UserCreated, "unlucky", 1, "u@example.com", "PT");
    support::produce(&producer, &topic, &event).await;
    audit.wait_records("dlq", 1.0).await;
    assert_eq!(records_in(&format!("{topic}.dlq")).await, 1);

    // The bug is fixed; the dead letter goes back to its topic and is applied.
    sqlx::query("alter table audit_log_away rename to audit_log")
        .execute(&pool)
        .await
        .unwrap();
    let args = profile_consumer::replay::ReplayArgs {
        kafka_brokers: statecast_testkit::kafka_brokers(),
        kafka: Default::default(),
        kafka_group_id: group.clone(),
        dlq_topic: format!("{topic}.dlq"),
        dry_run: false,
    };
    let summary = profile_consumer::replay::replay(&args).await.unwrap();
    assert_eq!(summary.replayed, 1);
    audit.wait_records("processed", 1.0).await;
    let recorded: Vec<uuid::Uuid> = sqlx::query_scalar("select event_id from audit_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        vec![event.id],
        "the replay carries the original event id"
    );
    // A second replay has nothing left to do.
    let again = profile_consumer::replay::replay(&args).await.unwrap();
    assert_eq!(again.replayed, 0);
    audit.stop().await;
}

#[tokio::test]
async fn a_missing_dead_letter_topic_stops_start_up_naming_it() {
    let topic = support::topic("nodlq", 1).await;
    let mut config = support::config(&topic, HandlerKind::Analytics, None);
    config.database_url = Some(statecast_testkit::fresh_database().await.unwrap());
    let missing = statecast_testkit::unique("no-such-dlq");
    config.dlq_topic = Some(missing.clone());
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        profile_consumer::run(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("start-up did not end");
    let error = result.expect_err("a consumer without its dead-letter topic started");
    assert!(
        matches!(error, profile_consumer::Error::Config(_)),
        "{error}"
    );
    assert!(error.to_string().contains(&missing), "{error}");
}
