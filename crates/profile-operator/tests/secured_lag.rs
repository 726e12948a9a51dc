//! The operator's lag reader over SASL/SCRAM + TLS, configured only through the shared Kafka
//! settings (`statecast-kafka`), against a private secured broker.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use profile_operator::lag::{GroupLag, KafkaLagReader, LagReader};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use statecast_testkit::secured::{SecuredBroker, Security};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_read_over_sasl_ssl_and_a_wrong_password_is_an_error() {
    let broker = SecuredBroker::start(Security::SaslSsl).unwrap();
    let security = broker.kafka_security().unwrap();
    let topic = statecast_testkit::unique("secured-lag");
    broker.create_topic(&topic, 2).await.unwrap();

    let mut config = security.client_config(&broker.brokers());
    config.set("linger.ms", "0").set("batch.num.messages", "1");
    let producer: FutureProducer = config.create().unwrap();
    for i in 0..10 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload("{}")
                    .partition(i % 2),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let group = format!("{topic}.group");
    let mut config = security.client_config(&broker.brokers());
    config
        .set("group.id", &group)
        .set("enable.auto.commit", "false");
    let committer: BaseConsumer = config.create().unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(3))
        .unwrap();
    committer.commit(&offsets, CommitMode::Sync).unwrap();

    let reader =
        KafkaLagReader::new(broker.brokers(), Duration::from_secs(10)).with_security(security);
    let (g, t) = (group.clone(), vec![topic.clone()]);
    let lag = tokio::task::spawn_blocking(move || reader.read_lag(&g, &t))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nbroker log:\n{}", broker.log()));
    // 5 + 5 records; partition 0 committed at 3.
    assert_eq!(
        lag,
        GroupLag {
            lag: 7,
            partitions: 2,
            end_offsets: 10,
            committed: 3,
        }
    );

    let wrong = statecast_kafka::KafkaSecurity::from_parts(
        &statecast_kafka::KafkaSecurityArgs {
            kafka_sasl_password: Some("wrong".into()),
            ..broker.args()
        },
        [],
    )
    .unwrap();
    let reader = KafkaLagReader::new(broker.brokers(), Duration::from_secs(3)).with_security(wrong);
    let result = tokio::task::spawn_blocking(move || reader.read_lag(&group, &[topic]))
        .await
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}
