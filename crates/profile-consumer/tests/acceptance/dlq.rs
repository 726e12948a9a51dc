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

#[tokio::test]
async fn a_handler_failing_max_retries_times_dead_letters_the_record() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let (prefix, name) = db.rsplit_once('/').unwrap();
    let upstream = prefix
        .rsplit_once('@')
        .map(|(_, host)| host.to_owned())
        .unwrap();
    let proxy = statecast_testkit::FaultProxy::start(&upstream)
        .await
        .unwrap();
    let credentials = prefix.rsplit_once('@').unwrap().0;
    let via_proxy = format!("{credentials}@{}/{name}", proxy.addr());

    let topic = support::topic("retries", 1).await;
    let mut config = support::config(&topic, HandlerKind::Audit, Some(&via_proxy));
    config.max_retries = 3;
    let audit = Running::ready(config).await;
    proxy.cut();
    let producer = support::producer();
    let event = support::event(EventType::UserCreated, "unlucky", 1, "u@example.com", "PT");
    support::produce(&producer, &topic, &event).await;
    audit.wait_records("dlq", 1.0).await;

    proxy.restore();
    let next = support::event(EventType::UserCreated, "lucky", 1, "l@example.com", "PT");
    support::produce(&producer, &topic, &next).await;
    audit.wait_records("processed", 1.0).await;
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
