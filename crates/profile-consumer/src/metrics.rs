//! Prometheus metrics of the consumer:
//! - `consumer_records_total{result}`: records by outcome (`processed`, `duplicate`, `stale`, `dlq`);
//! - `consumer_handler_duration_seconds`: time of each handler attempt (at a record, or at a
//!   whole batch);
//! - `consumer_batch_size`: records per batch a partition worker took from its queue;
//! - `consumer_retries_total{reason}`: failed attempts that will be retried, by what failed
//!   (`database`, `redis`, `smtp`, `kafka` for a dead letter not produced);
//! - `consumer_paused_partitions`: partitions paused while their record waits for a dependency;
//! - `consumer_lag{topic,partition}`: committed offset behind the high watermark, per assigned
//!   partition, from librdkafka's statistics (every `KAFKA_STATISTICS_INTERVAL_MS`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::Statistics;

/// What became of a record.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RecordResult {
    /// The effect was applied.
    Processed,
    /// The event had been handled before; nothing was done.
    Duplicate,
    /// A newer version had been applied; nothing was done.
    Stale,
    /// The record went to the dead-letter topic.
    Dlq,
}

impl RecordResult {
    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Dlq => "dlq",
        }
    }
}

impl EncodeLabelValue for RecordResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: RecordResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    topic: String,
    partition: String,
}

/// The consumer's metrics; cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    records: Family<ResultLabels, Counter>,
    handler_duration: Histogram,
    batch_size: Histogram,
    retries: Family<RetryLabels, Counter>,
    paused: Gauge,
    lag: Family<LagLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            records: Family::default(),
            handler_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 1, 2, 4, ... 512: the default CONSUMER_BATCH_MAX (200) falls in the last buckets.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            retries: Family::default(),
            paused: Gauge::default(),
            lag: Family::default(),
        }
    }
}

impl Metrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "consumer_records",
            "Records handled, by result",
            self.records.clone(),
        );
        registry.register(
            "consumer_handler_duration_seconds",
            "Duration of one handler attempt",
            self.handler_duration.clone(),
        );
        registry.register(
            "consumer_batch_size",
            "Records per batch a partition worker took from its queue",
            self.batch_size.clone(),
        );
        registry.register(
            "consumer_retries",
            "Failed attempts at a record that will be retried, by what failed",
            self.retries.clone(),
        );
        registry.register(
            "consumer_paused_partitions",
            "Partitions paused while their record waits for a dependency",
            self.paused.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records between the committed offset and the high watermark",
            self.lag.clone(),
        );
    }

    /// Counts one record's result.
    pub fn record(&self, result: RecordResult) {
        self.records.get_or_create(&ResultLabels { result }).inc();
    }

    /// The count of `result` so far.
    pub fn count(&self, result: RecordResult) -> u64 {
        self.records.get_or_create(&ResultLabels { result }).get()
    }

    /// Counts one failed attempt that will be retried; `reason` is what failed.
    pub fn retried(&self, reason: &'static str) {
        self.retries.get_or_create(&RetryLabels { reason }).inc();
    }

    /// Sets the number of paused partitions.
    pub fn set_paused(&self, partitions: i64) {
        self.paused.set(partitions);
    }

    /// Observes one handler attempt.
    pub fn observe_handler(&self, seconds: f64) {
        self.handler_duration.observe(seconds);
    }

    /// Observes the size of one batch.
    pub fn observe_batch(&self, records: usize) {
        self.batch_size.observe(records as f64);
    }

    /// Replaces the lag gauges with the partitions this consumer fetches now.
    pub fn update_lag(&self, statistics: &Statistics) {
        self.lag.clear();
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; negative lag is "unknown".
                if *partition < 0 || !p.desired || p.consumer_lag < 0 {
                    continue;
                }
                self.lag
                    .get_or_create(&LagLabels {
                        topic: topic.clone(),
                        partition: partition.to_string(),
                    })
                    .set(p.consumer_lag);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_are_counted_by_result_in_the_text_format() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.record(RecordResult::Stale);
        metrics.record(RecordResult::Processed);
        metrics.record(RecordResult::Processed);
        metrics.observe_handler(0.01);
        metrics.observe_batch(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"consumer_records_total{result="processed"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"consumer_records_total{result="stale"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("consumer_handler_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("consumer_batch_size_sum 3.0"), "{text}");
    }
}
