//! The probe and metrics endpoints every Statecast workload serves besides its own work:
//! `/healthz` (the process runs), `/readyz` (the workload says it is ready) and `/metrics`
//! (Prometheus/OpenMetrics text of a `prometheus-client` registry).
//!
//! What "ready" means is the workload's business (a consumer joined its group, the operator found
//! its CRD); it flips [`ProbeState::ready`] and this module answers accordingly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Shared state of the endpoints.
#[derive(Clone)]
pub struct ProbeState {
    /// Metrics to export.
    pub registry: Arc<Registry>,
    /// Set by the workload once it is ready to do its job.
    pub ready: Arc<AtomicBool>,
}

/// `/healthz`, `/readyz` (503 with `not_ready` as the body until ready) and `/metrics`.
pub fn router(state: ProbeState, not_ready: &'static str) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move |State(state): State<ProbeState>| async move {
                if state.ready.load(Ordering::Relaxed) {
                    "ready".into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, not_ready).into_response()
                }
            }),
        )
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<ProbeState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
