//! The test stack's broker as a crash-tolerant broker: a private tansu (SQLite log) SIGKILLed
//! and restarted keeps its records and the groups' committed offsets, and takes an idempotent
//! producer back after the producer's messages timed out while it was down (librdkafka then
//! bumps its epoch itself, KIP-360: unpatched tansu 0.6.0 panicked in its storage task and
//! failed every request afterwards, `scripts/tansu/storage-epoch-bump.patch`). What `make
//! chaos` scenario 1 needs of the broker, checked at a size that runs in seconds. And a fetch
//! waiting for records is answered when they are produced, not at the end of its
//! `fetch.wait.max.ms` (`scripts/tansu/storage-fetch-wake.patch`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use statecast_testkit as kit;

fn producer(brokers: &str, timeout_ms: u32) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .unwrap()
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &str,
) -> Result<(), String> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// Every record of `topic` (one partition), read from the start by a fresh group.
async fn records(brokers: &str, topic: &str, expected: usize) -> Vec<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", kit::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut values = Vec::new();
    while values.len() < expected {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into())
            }
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => panic!(
                "only {} of {expected} records of {topic} within 30 s",
                values.len()
            ),
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_committed_offsets_survive_a_sigkill_and_restart() {
    let mut broker = kit::PrivateBroker::start().await.unwrap();
    let brokers = broker.brokers();
    let topic = kit::unique("durable");
    kit::create_topic(&brokers, &topic, 1).await.unwrap();
    let p = producer(&brokers, 10_000);
    for i in 0..20 {
        send(&p, &topic, "k", &format!("r{i}")).await.unwrap();
    }
    let group = kit::unique("durable-group");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        consumer.commit_message(&m, CommitMode::Sync).unwrap();
    }
    drop(consumer);
    drop(p);

    broker.kill().await;
    broker.restart().await.unwrap();

    let all = records(&brokers, &topic, 20).await;
    assert_eq!(all, (0..20).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(&topic, 0);
    let committed = tokio::task::spawn_blocking(move || {
        reader.committed_offsets(partitions, Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        committed.elements().first().map(|e| e.offset()),
        Some(Offset::Offset(5)),
        "the group's committed offset after the restart; broker output: {}",
        broker.log_path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_whose_messages_timed_out_produces_after_a_broker_restart() {
    let mut broker = kit::PrivateBroker::start().await.unwrap();
    let brokers = broker.brokers();
    let topic = kit::unique("epoch");
    kit::create_topic(&brokers, &topic, 1).await.unwrap();
    // The relay's situation: a short message timeout, retries from its own outbox.
    let p = producer(&brokers, 2000);
    send(&p, &topic, "k", "before").await.unwrap();

    broker.kill().await;
    let timed_out = send(&p, &topic, "k", "while-down").await;
    assert!(timed_out.is_err(), "a send to a dead broker succeeded");
    broker.restart().await.unwrap();

    // The same producer (now with a bumped epoch) and a second client must both be served.
    let mut after = Err(String::new());
    for _ in 0..10 {
        after = send(&p, &topic, "k", "after").await;
        if after.is_ok() {
            break;
        }
    }
    let log = std::fs::read_to_string(broker.log_path()).unwrap_or_default();
    assert_eq!(after, Ok(()), "broker output:\n{log}");
    assert!(!log.contains("panicked"), "the broker panicked:\n{log}");
    let values = records(&brokers, &topic, 2).await;
    assert_eq!(values, ["before", "after"]);
}

/// A consumer waits for records with fetch.wait.max.ms = 10 s; each record, produced while such
/// a fetch waits, must reach it long before the wait ends. Unpatched tansu answered a waiting
/// fetch only when its wait ran out (each record here would take about 9.8 s), and slept out
/// the wait even after a read that found records; every propagation figure carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_is_answered_when_a_record_is_produced_not_when_its_wait_ends() {
    const WAIT_MS: u64 = 10_000;
    let brokers = kit::kafka_brokers();
    let topic = kit::unique("fetch-wake");
    kit::create_topic(&brokers, &topic, 1).await.unwrap();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", kit::unique("fetch-wake"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", WAIT_MS.to_string())
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let p = producer(&brokers, 30_000);
    // Warm-up: group join, offset look-up, the first fetch.
    send(&p, &topic, "k", "warm-up").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await;
    assert!(
        matches!(first, Ok(Ok(_))),
        "the warm-up record never came: {first:?}"
    );

    let mut latencies = Vec::new();
    for i in 0..8 {
        // The consumer's next fetch is waiting by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = std::time::Instant::now();
        send(&p, &topic, "k", &format!("r{i}")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(2 * WAIT_MS), consumer.recv())
            .await
            .expect("no record within twice the fetch wait")
            .unwrap();
        assert_eq!(got.payload(), Some(format!("r{i}").as_bytes()));
        latencies.push(sent.elapsed());
    }
    // A third of the wait: wide enough for a loaded machine, far below what a fetch answered
    // by its timeout takes.
    let bound = Duration::from_millis(WAIT_MS / 3);
    assert!(
        latencies.iter().all(|l| *l < bound),
        "records reached a waiting fetch after {latencies:?} (fetch.wait.max.ms {WAIT_MS}; bound {bound:?})"
    );
}
