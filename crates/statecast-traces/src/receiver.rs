//! The OTLP receiver: the OTLP/gRPC `TraceService` and the OTLP/HTTP route `POST /v1/traces`
//! (protobuf bodies), both on one port, plus `GET /healthz`. Every span received is appended to
//! the [`SpanStore`] before the export is answered, so a trace shown after a flush is complete
//! up to what the services had sent.
//!
//! One port serves both protocols because the gRPC server also accepts HTTP/1.1: an
//! `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4327` works with either
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (with `http/protobuf`, the exporter appends `/v1/traces`).

use std::future::Future;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::net::TcpListener;

use crate::{Result, SpanStore, span};

/// The protobuf media type of OTLP/HTTP.
const PROTOBUF: &str = "application/x-protobuf";

/// Stores `request`'s spans; the error is for the exporter (it retries on `unavailable`).
async fn store(store: &SpanStore, request: ExportTraceServiceRequest) -> Result<usize, String> {
    let spans = span::from_request(request);
    let count = spans.len();
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.append(&spans))
        .await
        .map_err(|e| format!("storing spans failed: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok(count)
}

#[derive(Clone)]
struct Grpc(SpanStore);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let count = store(&self.0, request.into_inner())
            .await
            .map_err(tonic::Status::unavailable)?;
        tracing::debug!(spans = count, protocol = "grpc", "stored");
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// `POST /v1/traces`: OTLP/HTTP with a protobuf body.
async fn http_export(
    axum::extract::State(spans): axum::extract::State<SpanStore>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with(PROTOBUF) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-type {content_type:?} is not supported: this receiver takes OTLP/HTTP \
                 with protobuf bodies ({PROTOBUF}, OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf) \
                 or OTLP/gRPC (grpc)\n"
            ),
        )
            .into_response();
    }
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
    {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed bodies are not supported: unset OTEL_EXPORTER_OTLP_COMPRESSION\n",
        )
            .into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an OTLP ExportTraceServiceRequest: {e}\n"),
            )
                .into_response();
        }
    };
    match store(&spans, request).await {
        Ok(count) => {
            tracing::debug!(spans = count, protocol = "http/protobuf", "stored");
            (
                [(header::CONTENT_TYPE, PROTOBUF)],
                ExportTraceServiceResponse {
                    partial_success: None,
                }
                .encode_to_vec(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// The routes of both protocols and `/healthz`.
fn routes(spans: SpanStore) -> tonic::service::Routes {
    let http = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .with_state(spans.clone());
    let grpc = tonic::service::Routes::new(TraceServiceServer::new(Grpc(spans)))
        .into_axum_router()
        .merge(http);
    tonic::service::Routes::from(grpc)
}

/// Serves OTLP/gRPC and OTLP/HTTP on `listener` into `spans` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    spans: SpanStore,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes(spans))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(service: &str, name: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(service.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![7; 16],
                        span_id: vec![1; 8],
                        name: name.into(),
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A receiver on a free port storing into a fresh directory.
    async fn start() -> (std::net::SocketAddr, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "statecast-traces-receiver-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let spans = SpanStore::open(&dir, 1 << 20).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, spans, std::future::pending()));
        (addr, dir)
    }

    #[tokio::test]
    async fn grpc_and_http_protobuf_exports_on_one_port_are_both_stored() {
        let (addr, dir) = start().await;
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client
            .export(request("svc-grpc", "over grpc"))
            .await
            .unwrap();

        let http = reqwest::Client::new();
        let response = http
            .post(format!("http://{addr}/v1/traces"))
            .header("content-type", PROTOBUF)
            .body(request("svc-http", "over http").encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            PROTOBUF
        );
        ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();

        let stored: Vec<(String, String)> = crate::store::read_spans(&dir)
            .unwrap()
            .into_iter()
            .map(|s| (s.service, s.name))
            .collect();
        assert_eq!(
            stored,
            [
                ("svc-grpc".to_owned(), "over grpc".to_owned()),
                ("svc-http".to_owned(), "over http".to_owned())
            ]
        );
        let health = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn otlp_json_is_refused_saying_which_protocols_work() {
        let (addr, dir) = start().await;
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/traces"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 415);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("http/protobuf") && text.contains("grpc"),
            "{text}"
        );
        assert!(crate::store::read_spans(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
