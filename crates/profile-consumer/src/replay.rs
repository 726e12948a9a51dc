//! `profile-consumer dlq replay`: republishes a group's dead letters to the topic they came
//! from, so that records refused by a bug are handled again once the bug is fixed.
//!
//! Each dead letter of the group (header `dlq-consumer-group`) goes back to its
//! `dlq-source-topic` with its original key, value (so the same event id) and headers, the
//! `dlq-*` headers left out and `dlq-replayed-from: <dlq topic>/<partition>/<offset>` added.
//! Every group reads the record again: the others recognise the event id and count a
//! duplicate; the replaying group applies it (the audit trail records it even if a newer
//! version was applied since; state-keeping handlers keep last-write-wins).
//!
//! Progress is the offset of the replay's own consumer group, `<group>.dlq-replay`, committed
//! after each republished record is acknowledged: running the command again replays only dead
//! letters that arrived since. It reads up to the high watermarks taken at start, then stops.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::DEFAULT_BROKERS;
use crate::{Error, Result};

/// How long one poll, and the metadata and watermark requests, may wait.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `profile-consumer dlq replay` arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "profile-consumer dlq replay",
    about = "Republish a consumer group's dead letters to their source topic"
)]
pub struct ReplayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    pub kafka_brokers: String,

    /// Kafka security and pass-through, as for the consumer (`statecast-kafka`).
    #[command(flatten)]
    pub kafka: statecast_kafka::KafkaSecurityArgs,

    /// The consumer group whose dead letters are replayed.
    #[arg(long, env = "KAFKA_GROUP_ID")]
    pub kafka_group_id: String,

    /// The dead-letter topic to read.
    #[arg(long, env = "DLQ_TOPIC", default_value = "user-events.dlq")]
    pub dlq_topic: String,

    /// Only count what would be replayed.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Dead letters of the group republished (or, in a dry run, that would be).
    pub replayed: u64,
    /// Dead letters of other groups, passed over.
    pub other_groups: u64,
}

/// Replays the dead letters of `args.kafka_group_id` that no earlier replay handled.
pub async fn replay(args: &ReplayArgs) -> Result<ReplaySummary> {
    let security = crate::config::kafka_security(&args.kafka)?;
    let mut consumer = ClientConfig::new();
    consumer
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("group.id", format!("{}.dlq-replay", args.kafka_group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    security.apply(&mut consumer);
    let consumer: BaseConsumer = consumer.create()?;
    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0");
    security.apply(&mut producer);
    let producer: FutureProducer = producer.create()?;
    let ends = blocking({
        let client = security.client_config(&args.kafka_brokers);
        let topic = args.dlq_topic.clone();
        move || high_watermarks(client, &topic)
    })
    .await??;
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment.add_partition(&args.dlq_topic, *partition);
    }
    // Explicit assignment with the replay group's committed offsets (or the earliest).
    let committed = consumer.committed_offsets(assignment.clone(), TIMEOUT)?;
    consumer.assign(&committed)?;
    let mut positions: HashMap<i32, i64> = HashMap::new();
    for element in committed.elements() {
        if let Offset::Offset(offset) = element.offset() {
            positions.insert(element.partition(), offset);
        }
    }

    let mut summary = ReplaySummary::default();
    let done = |positions: &HashMap<i32, i64>| {
        ends.iter()
            .all(|(partition, end)| positions.get(partition).copied().unwrap_or(0) >= *end)
    };
    let mut idle_polls = 0;
    while !done(&positions) {
        let Some(message) = consumer.poll(TIMEOUT) else {
            idle_polls += 1;
            if idle_polls >= 3 {
                return Err(Error::Config(format!(
                    "the dead-letter topic {} stopped answering before its end",
                    args.dlq_topic
                )));
            }
            continue;
        };
        idle_polls = 0;
        let message = message?;
        positions.insert(message.partition(), message.offset() + 1);
        let group = header(&message, "dlq-consumer-group");
        if group.as_deref() != Some(args.kafka_group_id.as_str()) {
            summary.other_groups += 1;
        } else if let Some(source) = header(&message, "dlq-source-topic") {
            summary.replayed += 1;
            if !args.dry_run {
                republish(&producer, &source, &args.dlq_topic, &message).await?;
            }
        } else {
            tracing::warn!(
                offset = message.offset(),
                "dead letter without dlq-source-topic; skipped"
            );
            summary.other_groups += 1;
        }
        if !args.dry_run {
            consumer.store_offset(&args.dlq_topic, message.partition(), message.offset())?;
        }
    }
    if !args.dry_run && summary.replayed + summary.other_groups > 0 {
        consumer.commit_consumer_state(CommitMode::Sync)?;
    }
    Ok(summary)
}

async fn republish<M: Message>(
    producer: &FutureProducer,
    source: &str,
    dlq_topic: &str,
    message: &M,
) -> Result<()> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter().filter(|h| !h.key.starts_with("dlq-")) {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let from = format!("{dlq_topic}/{}/{}", message.partition(), message.offset());
    headers = headers.insert(Header {
        key: "dlq-replayed-from",
        value: Some(from.as_bytes()),
    });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(source).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|(e, _)| Error::Kafka(e))
}

fn header<M: Message>(message: &M, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// High watermark of every partition of `topic`, from a fresh client made of `client`.
fn high_watermarks(client: ClientConfig, topic: &str) -> Result<HashMap<i32, i64>> {
    let client: BaseConsumer = client.create()?;
    let metadata = client.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .ok_or_else(|| Error::Config(format!("the dead-letter topic {topic} does not exist")))?;
    let mut ends = HashMap::new();
    for partition in partitions {
        let (_, high) = client.fetch_watermarks(topic, partition, TIMEOUT)?;
        ends.insert(partition, high);
    }
    Ok(ends)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))
}
