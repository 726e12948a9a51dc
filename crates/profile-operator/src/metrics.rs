//! Prometheus metrics of the reconciler (prometheus-client), served on `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

/// Label of the failures counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`Error::metric_label`] of the failure.
    pub error: String,
}

/// Label of the scaling decisions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`crate::drain::Reason::as_str`] of the decision.
    pub reason: String,
}

/// The reconciler's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// Duration of reconciles in seconds.
    pub duration: Histogram,
    /// Drain-mode scaling decisions, by reason.
    pub scaling_decisions: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            scaling_decisions: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics in `registry` under the `profile_operator` prefix.
    pub fn register(self, registry: &mut Registry) -> Self {
        let sub = registry.sub_registry_with_prefix("profile_operator");
        sub.register(
            "reconciles",
            "Reconciles of ProfileConsumer resources",
            self.reconciles.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Failed reconciles, by error kind",
            self.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            self.duration.clone(),
        );
        sub.register(
            "scaling_decisions",
            "Drain-mode (targetDrainSeconds) scaling decisions, by reason",
            self.scaling_decisions.clone(),
        );
        self
    }

    /// Counts a reconcile and returns a timer recording its duration when dropped.
    pub fn count_and_measure(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Counts a drain-mode scaling decision.
    pub fn scaling_decision(&self, reason: &str) {
        self.scaling_decisions
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failure(&self, error: &Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.metric_label().into(),
            })
            .inc();
    }
}

/// Records the time since its creation into the duration histogram when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_failures_and_durations_are_exported() {
        let mut registry = Registry::default();
        let metrics = Metrics::default().register(&mut registry);
        drop(metrics.count_and_measure());
        metrics.reconcile_failure(&Error::Kafka("down".into()));
        metrics.scaling_decision("DrainTarget");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("profile_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(text.contains(r#"profile_operator_reconcile_failures_total{error="kafka"} 1"#));
        assert!(text.contains("profile_operator_reconcile_duration_seconds_count 1"));
        assert!(
            text.contains(r#"profile_operator_scaling_decisions_total{reason="DrainTarget"} 1"#),
            "{text}"
        );
    }
}
