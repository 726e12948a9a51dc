//! Telemetry shared by every Statecast binary: one call sets up structured logs and
//! OpenTelemetry tracing, and [`kafka`] carries W3C trace context through Kafka headers so one
//! trace runs from the HTTP request, through the outbox and the broker, into every consumer.
//!
//! # Layout
//! - [`TelemetryConfig`]: what to set up, from the standard `OTEL_*` variables or built in code.
//! - [`init`] / [`Telemetry`]: install the subscriber and tracer provider; flush on shutdown.
//! - [`logfmt`]: the JSON log line format that carries `trace_id` and `span_id`.
//! - [`kafka`]: injector and extractor of trace context over rdkafka headers.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics` of the workloads.
//!
//! With no OTLP endpoint configured nothing is exported and nothing is logged about it: spans
//! still get ids (so logs and Kafka headers carry them), they just go nowhere.

pub mod kafka;
pub mod logfmt;
pub mod probes;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Errors while setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP exporter could not be built (bad endpoint or protocol).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` names a protocol we do not speak.
    #[error("unsupported OTEL_EXPORTER_OTLP_PROTOCOL {0:?}: use grpc or http/protobuf")]
    Protocol(String),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, usually port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, usually port 4318.
    HttpProtobuf,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line with `trace_id`/`span_id` (the default: for machines).
    Json,
    /// Human-readable lines (set `LOG_FORMAT=pretty`).
    Pretty,
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
    pub service_name: String,
    /// OTLP endpoint; `None` means spans are not exported.
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    pub otlp_protocol: OtlpProtocol,
    /// Log line format.
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG` syntax).
    pub log_filter: String,
}

impl TelemetryConfig {
    /// Reads the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default,
    /// or `http/protobuf`), `OTEL_SDK_DISABLED`, plus `RUST_LOG` and `LOG_FORMAT` (`json`|`pretty`).
    /// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are read by the SDK's resource detector.
    pub fn from_env(default_service_name: &str) -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let otlp_endpoint = if disabled {
            None
        } else {
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        };
        let otlp_protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => return Err(Error::Protocol(other.to_owned())),
        };
        let log_format = match var("LOG_FORMAT").as_deref() {
            Some("pretty") | Some("text") => LogFormat::Pretty,
            _ => LogFormat::Json,
        };
        Ok(Self {
            service_name: default_service_name.to_owned(),
            otlp_endpoint,
            otlp_protocol,
            log_format,
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
        })
    }
}

/// Installed telemetry; call [`Telemetry::shutdown`] before exit so buffered spans are sent.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Installs the global subscriber (logs + spans), tracer provider and W3C propagator.
///
/// Must run inside a Tokio runtime: the gRPC exporter needs one.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, Error> {
    let provider = tracer_provider(config)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("statecast");
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer().event_format(logfmt::JsonWithTraceIds::default()),
            )
            .try_init()?,
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init()?,
    }
    Ok(Telemetry { provider })
}

/// Builds the tracer provider alone (used by [`init`], and by tests that install their own
/// subscriber).
pub fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, Error> {
    let resource = Resource::builder()
        .with_service_name(service_name(&config.service_name))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(builder.build());
    };
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?,
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()?,
    };
    Ok(builder.with_batch_exporter(exporter).build())
}

/// `OTEL_SERVICE_NAME` wins over the binary's default, as the specification asks.
fn service_name(default: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Telemetry {
    /// Flushes buffered spans and stops the exporter. Blocking work runs off the async threads.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        })
        .await;
    }

    /// The tracer provider, e.g. to flush in tests.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

/// The trace id of the current `tracing` span as 32 hex digits, if it has a valid one.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
