//! `/healthz` (the process is alive), `/readyz` (start-up checks passed: client built, CRD
//! installed) and `/metrics` (Prometheus text format).
//!
//! Readiness does not depend on leadership: a standby replica is healthy and ready to take over.

use axum::Router;

/// Shared state of the HTTP endpoints (metrics registry, readiness flag).
pub use statecast_telemetry::probes::ProbeState as AppState;

/// The router of the HTTP endpoints.
pub fn router(state: AppState) -> Router {
    statecast_telemetry::probes::router(state, "starting")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use axum::http::StatusCode;
    use prometheus_client::registry::Registry;
    use statecast_testkit::oneshot_get as get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn state() -> AppState {
        let mut registry = Registry::default();
        Metrics::default().register(&mut registry);
        AppState {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    #[tokio::test]
    async fn probes_and_metrics_are_served() {
        let state = state();
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
        assert!(body.contains("profile_operator_reconciles_total"), "{body}");
    }
}
