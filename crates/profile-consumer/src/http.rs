//! `/healthz` (the process runs), `/readyz` (the consumer joined its group and got an assignment,
//! possibly empty) and `/metrics` (Prometheus text format).

use axum::Router;

/// Shared state of the HTTP endpoints (metrics registry, readiness flag).
pub use statecast_telemetry::probes::ProbeState as AppState;

/// The router of the HTTP endpoints.
pub fn router(state: AppState) -> Router {
    statecast_telemetry::probes::router(state, "not yet in the consumer group")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, RecordResult};
    use axum::http::StatusCode;
    use prometheus_client::registry::Registry;
    use statecast_testkit::oneshot_get as get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn readyz_is_503_until_the_group_assigned_partitions_and_metrics_are_served() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.record(RecordResult::Dlq);
        let state = AppState {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let app = router(state.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#"consumer_records_total{result="dlq"} 1"#),
            "{body}"
        );
    }
}
