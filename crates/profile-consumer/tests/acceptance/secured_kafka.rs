//! The consumer workload over `sasl_ssl` (issue 17): against a [`SecuredBroker`] (tansu with
//! SASL/SCRAM behind TLS, a CA made for the test), the audit handler joins its group, applies an
//! event, dead-letters a poison record through its dead-letter producer and commits both
//! offsets, all over the one configuration of `statecast-kafka`. Checked from outside: the
//! audit row in PostgreSQL, the dead letter read back from the DLQ topic, and the group's
//! committed offset read with a client of the test's own.

use std::time::Duration;

use profile_consumer::HandlerKind;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use statecast_events::EventType;
use statecast_testkit::secured::{SecuredBroker, Security};

use crate::support::{self, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_consumer_consumes_dead_letters_and_commits_over_sasl_ssl() {
    let broker = tokio::task::spawn_blocking(|| SecuredBroker::start(Security::SaslSsl))
        .await
        .unwrap()
        .unwrap();
    let security = broker.kafka_security().unwrap();
    let topic = statecast_testkit::unique("sasl");
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 1).await.unwrap();
    broker.create_topic(&dlq, 1).await.unwrap();

    let producer: FutureProducer = security
        .client_config(&broker.brokers())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("acks", "all")
        .create()
        .unwrap();
    support::produce_raw(
        &producer,
        &topic,
        "poison",
        b"not json",
        OwnedHeaders::new(),
    )
    .await
    .unwrap();
    let user = statecast_testkit::unique("sasl");
    let event = support::event(EventType::UserCreated, &user, 1, "sasl@example.com", "PT");
    support::produce(&producer, &topic, &event).await;

    let database = statecast_testkit::fresh_database().await.unwrap();
    let mut config = support::config(&topic, HandlerKind::Audit, Some(&database));
    config.kafka_brokers = broker.brokers();
    config.kafka = broker.args();
    let group = config.kafka_group_id.clone();
    let audit = Running::start(config);
    audit.wait_records("processed", 1.0).await;
    audit.wait_records("dlq", 1.0).await;

    let pool = support::pool(&database).await;
    let rows = support::count(
        &pool,
        &format!("select count(*) from audit_log where user_id = '{user}'"),
    )
    .await;
    assert_eq!(rows, 1, "the event's audit row");

    let reader: StreamConsumer = security
        .client_config(&broker.brokers())
        .set("group.id", statecast_testkit::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[dlq.as_str()]).unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("no dead letter within 30 s")
        .unwrap();
    assert_eq!(dead.key(), Some(&b"poison"[..]));
    assert_eq!(dead.payload(), Some(&b"not json"[..]));

    // Both offsets committed by the group, over sasl_ssl.
    let committed: BaseConsumer = security
        .client_config(&broker.brokers())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(&topic, 0);
    support::wait_until(
        "the group's committed offset 2",
        Duration::from_secs(30),
        || {
            let offsets = committed.committed_offsets(partitions.clone(), Duration::from_secs(5));
            let offset = offsets
                .ok()
                .and_then(|o| o.elements().first().map(|e| e.offset()));
            async move { offset == Some(Offset::Offset(2)) }
        },
    )
    .await;
    audit.stop().await;
}
