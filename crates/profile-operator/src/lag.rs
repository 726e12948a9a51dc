//! Reading a consumer group's lag from Kafka.
//!
//! Lag of a partition = high watermark − the group's committed offset; a partition the group has
//! never committed counts as `high − low` (everything retained is still to be read, as consumers
//! start from the earliest offset). The rdkafka calls block, so [`LagReader`] is synchronous and
//! the reconciler calls it inside `spawn_blocking`; tests replace it with a stub.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use statecast_kafka::KafkaSecurity;

use crate::{Error, Result};

/// Lag and size of a group's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLag {
    /// Records not yet committed, over all partitions of all topics.
    pub lag: u64,
    /// Partitions of all topics together.
    pub partitions: u32,
    /// Sum of the partitions' log-end offsets (high watermarks).
    pub end_offsets: u64,
    /// Sum of the group's committed offsets, a partition never committed counting its low
    /// watermark: `end_offsets - committed == lag`.
    pub committed: u64,
}

/// Reads a group's lag; blocking.
pub trait LagReader: Send + Sync + 'static {
    /// Lag of `group_id` on `topics`. Fails when a topic does not exist or Kafka is unreachable.
    fn read_lag(&self, group_id: &str, topics: &[String]) -> Result<GroupLag>;
}

/// [`LagReader`] talking to Kafka with rdkafka.
#[derive(Debug, Clone)]
pub struct KafkaLagReader {
    brokers: String,
    timeout: Duration,
    security: KafkaSecurity,
}

impl KafkaLagReader {
    /// A plaintext reader for the cluster at `brokers` (bootstrap servers), with a per-call
    /// `timeout`.
    pub fn new(brokers: impl Into<String>, timeout: Duration) -> Self {
        Self {
            brokers: brokers.into(),
            timeout,
            security: KafkaSecurity::default(),
        }
    }

    /// The same reader connecting with `security` (TLS, SASL, pass-through properties).
    pub fn with_security(self, security: KafkaSecurity) -> Self {
        Self { security, ..self }
    }
}

fn kafka(context: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error + '_ {
    move |e| Error::Kafka(format!("{context}: {e}"))
}

impl LagReader for KafkaLagReader {
    fn read_lag(&self, group_id: &str, topics: &[String]) -> Result<GroupLag> {
        // A consumer that never subscribes: it only looks up offsets, so it never joins the group.
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false");
        self.security.apply(&mut config);
        let consumer: BaseConsumer = config.create().map_err(kafka("creating consumer"))?;

        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), self.timeout)
                .map_err(kafka("fetching metadata"))?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .ok_or_else(|| Error::Kafka(format!("topic {topic:?} does not exist")))?;
            for partition in found.partitions() {
                tpl.add_partition(topic, partition.id());
            }
        }

        let committed = consumer
            .committed_offsets(tpl, self.timeout)
            .map_err(kafka("reading committed offsets"))?;

        let mut lag = 0u64;
        let mut partitions = 0u32;
        let (mut end_offsets, mut committed_sum) = (0u64, 0u64);
        for elem in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(elem.topic(), elem.partition(), self.timeout)
                .map_err(kafka("fetching watermarks"))?;
            let from = match elem.offset() {
                Offset::Offset(o) if o >= 0 => o.clamp(low, high),
                _ => low,
            };
            lag = lag.saturating_add(u64::try_from(high - from).unwrap_or(0));
            end_offsets = end_offsets.saturating_add(u64::try_from(high).unwrap_or(0));
            committed_sum = committed_sum.saturating_add(u64::try_from(from).unwrap_or(0));
            partitions += 1;
        }
        Ok(GroupLag {
            lag,
            partitions,
            end_offsets,
            committed: committed_sum,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Against the real broker at `KAFKA_BROKERS` (default 127.0.0.1:9092).

    use super::*;
    use crate::crd::Autoscaling;
    use crate::scaling::{ScaleInput, desired_replicas};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    fn brokers() -> String {
        std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
    }

    #[tokio::test]
    async fn lag_of_a_fresh_group_on_the_real_broker_drives_the_scaling_rule() {
        let bootstrap = brokers();
        let topic = format!("operator-lag-{}", uuid::Uuid::now_v7());
        let partitions = 4;

        // Topics are not auto-created on the tansu broker: create it explicitly.
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

        // One record per batch (linger.ms=0, batch.num.messages=1): the tansu broker's high
        // watermark is only right when every batch holds a single record.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        let sends = (0..1000).map(|i| {
            let key = format!("user-{i}");
            let producer = &producer;
            let topic = &topic;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(&key)
                            .payload("{}")
                            .partition(i % partitions),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }

        let reader = KafkaLagReader::new(bootstrap.clone(), Duration::from_secs(10));
        let group = format!("{topic}.group");
        let topics = vec![topic.clone()];
        let lag = tokio::task::spawn_blocking(move || reader.read_lag(&group, &topics))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            lag,
            GroupLag {
                lag: 1000,
                partitions: 4,
                end_offsets: 1000,
                committed: 0,
            }
        );

        let policy = Autoscaling {
            min_replicas: 1,
            max_replicas: 10,
            lag_threshold: 100,
            scale_down_delay_seconds: 300,
            target_drain_seconds: None,
        };
        let desired = desired_replicas(&ScaleInput {
            policy: &policy,
            lag: lag.lag,
            partitions: lag.partitions,
            current: None,
            last_scale: None,
            now: k8s_openapi::jiff::Timestamp::now(),
        });
        // ceil(1000 / 100) = 10, capped by the 4 partitions.
        assert_eq!(desired, 4);

        // The group commits partition 0 up to its end: its 250 records no longer count.
        let committer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap.clone())
            .set("group.id", format!("{topic}.group"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&topic, 0, Offset::Offset(250))
            .unwrap();
        committer
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
        let reader = KafkaLagReader::new(bootstrap.clone(), Duration::from_secs(10));
        let group = format!("{topic}.group");
        let lag = tokio::task::spawn_blocking(move || reader.read_lag(&group, &[topic]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lag.lag, 750);
        assert_eq!((lag.end_offsets, lag.committed), (1000, 250));
    }

    #[test]
    fn missing_topic_is_an_error() {
        let reader = KafkaLagReader::new(brokers(), Duration::from_secs(5));
        let err = reader
            .read_lag("g", &[format!("missing-{}", uuid::Uuid::now_v7())])
            .unwrap_err();
        assert!(matches!(err, Error::Kafka(_)), "{err}");
    }
}
