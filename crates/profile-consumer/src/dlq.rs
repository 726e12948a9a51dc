//! Dead letters: a record the consumer cannot handle is copied to the dead-letter topic with its
//! original key, value and headers, plus `dlq-*` headers saying where it came from and why, so
//! it can be inspected and replayed. The source offset is stored only after the broker
//! acknowledged the dead letter; if producing fails the consumer retries and does not move on.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;

/// How long the start-up check waits for the broker's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses to start when the broker says the dead-letter topic does not exist: without it the
/// first poison record would block its partition for good (the consumer never skips a record it
/// could not dead-letter). A broker that does not answer in time is not an error here (the
/// consumer waits for it like for the source topics); only a definite "unknown topic" is.
///
/// On brokers that auto-create topics this metadata request creates the topic, as a produce
/// would.
pub async fn check_topic_exists(producer: &FutureProducer, topic: &str) -> Result<(), String> {
    let producer = producer.clone();
    let name = topic.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&name), CHECK_TIMEOUT)
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .map(|t| (t.error(), t.partitions().len()))
            })
    })
    .await
    .map_err(|e| format!("metadata task failed: {e}"))?;
    match answer {
        Ok(Some((None, partitions))) if partitions > 0 => Ok(()),
        Ok(Some((Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), _))) => {
            Err(format!(
                "the dead-letter topic {topic:?} does not exist on the broker; create it \
                 (or set DLQ_TOPIC / spec.dlqTopic to one that exists)"
            ))
        }
        Ok(other) => {
            tracing::warn!(dlq = %topic, answer = ?other, "could not confirm the dead-letter topic; going on");
            Ok(())
        }
        Err(error) => {
            tracing::warn!(dlq = %topic, %error, "no broker at KAFKA_BROKERS answered the dead-letter topic check; going on (check the addresses and that the brokers are up)");
            Ok(())
        }
    }
}

/// Why a record was dead-lettered (the `dlq-reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The value is not a profile event.
    Undecodable,
    /// The handler refused the event for good (e.g. an invalid e-mail address).
    Rejected,
    /// The handler failed `MAX_RETRIES` times.
    RetriesExhausted,
}

impl Reason {
    /// The `dlq-reason` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
            Self::RetriesExhausted => "retries-exhausted",
        }
    }
}

/// Where a dead letter came from and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: Reason,
    /// The last error, as text.
    pub error: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The consumer group that gave up.
    pub group: String,
    /// Attempts made (0 for undecodable records: nothing was attempted).
    pub attempts: u32,
}

/// Largest `dlq-error` value; longer messages are cut at a character boundary.
const MAX_ERROR_LEN: usize = 1024;

impl DeadLetter {
    /// The `dlq-*` headers, in a fixed order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut error = self.error.clone();
        if error.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        vec![
            ("dlq-reason", self.reason.as_str().to_owned()),
            ("dlq-error", error),
            ("dlq-source-topic", self.topic.clone()),
            ("dlq-source-partition", self.partition.to_string()),
            ("dlq-source-offset", self.offset.to_string()),
            ("dlq-consumer-group", self.group.clone()),
            ("dlq-attempts", self.attempts.to_string()),
        ]
    }
}

/// The original headers followed by the dead-letter headers.
pub fn record_headers<M: Message>(message: &M, letter: &DeadLetter) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original.iter() {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    for (key, value) in letter.headers() {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// Produces the dead letter of `message` and waits for the broker's acknowledgement.
#[tracing::instrument(skip_all, fields(dlq.topic = %dlq_topic, dlq.reason = letter.reason.as_str()), err)]
pub async fn send<M: Message>(
    producer: &FutureProducer,
    dlq_topic: &str,
    message: &M,
    letter: &DeadLetter,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(dlq_topic).headers(record_headers(message, letter));
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_headers_say_where_from_and_why() {
        let letter = DeadLetter {
            reason: Reason::RetriesExhausted,
            error: "database is down".into(),
            topic: "user-events".into(),
            partition: 3,
            offset: 42,
            group: "audit".into(),
            attempts: 5,
        };
        let headers = letter.headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("dlq-reason"), Some("retries-exhausted"));
        assert_eq!(get("dlq-error"), Some("database is down"));
        assert_eq!(get("dlq-source-topic"), Some("user-events"));
        assert_eq!(get("dlq-source-partition"), Some("3"));
        assert_eq!(get("dlq-source-offset"), Some("42"));
        assert_eq!(get("dlq-consumer-group"), Some("audit"));
        assert_eq!(get("dlq-attempts"), Some("5"));
        assert_eq!(headers.len(), 7);
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let letter = DeadLetter {
            reason: Reason::Undecodable,
            error: "é".repeat(1000),
            topic: "t".into(),
            partition: 0,
            offset: 0,
            group: "g".into(),
            attempts: 0,
        };
        let error = &letter.headers()[1].1;
        assert!(error.len() <= MAX_ERROR_LEN);
        assert!(error.chars().all(|c| c == 'é'));
    }
}
