//! Telemetry shared by every Statecast binary: one call sets up structured logs and
//! OpenTelemetry tracing, and [`kafka`] carries W3C trace context through Kafka headers so one
//! trace runs from the HTTP request, through the outbox and the broker, into every consumer.
//!
//! # Layout
//! - [`TelemetryConfig`]: what to set up, from the standard `OTEL_*` variables or built in code.
//! - [`init_from_env`]: the one call of a binary; [`init`] / [`Telemetry`]: install the
//!   subscriber and tracer provider; flush on shutdown.
//! - [`logfmt`]: the JSON log line format that carries `trace_id` and `span_id`.
//! - [`kafka`]: injector and extractor of trace context over rdkafka headers.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics` of the workloads.
//!
//! With no OTLP endpoint configured nothing is exported and nothing is logged about it: spans
//! still get ids (so logs and Kafka headers carry them), they just go nowhere. A bad export
//! setting (say `OTEL_EXPORTER_OTLP_PROTOCOL=http`) is an error, but logging to stdout is set up
//! before it is returned and the error is logged, so no process ends up running without logs.

pub mod kafka;
pub mod logfmt;
pub mod probes;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Errors while setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP exporter could not be built (bad endpoint or protocol).
    #[error(
        "cannot build the OTLP exporter: {0}; set OTEL_EXPORTER_OTLP_ENDPOINT (or \
         OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) to a URL such as http://127.0.0.1:4317, or unset it"
    )]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`) names a protocol we do not speak.
    #[error(
        "{variable}={value:?} is not supported: set it to grpc (the default) or http/protobuf, \
         or unset it"
    )]
    Protocol {
        /// The variable that held the value.
        variable: &'static str,
        /// What it held.
        value: String,
    },
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

const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of the spans. [`TelemetryConfig::from_env`] resolves it: `OTEL_SERVICE_NAME`,
    /// else a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else the binary's default.
    pub service_name: String,
    /// OTLP traces endpoint, used exactly as given; `None` means spans are not exported. For
    /// `http/protobuf` this is the full URL (`.../v1/traces`): [`TelemetryConfig::from_env`]
    /// appends `/v1/traces` to `OTEL_EXPORTER_OTLP_ENDPOINT` but not to
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, as the OpenTelemetry specification asks.
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
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: `grpc`, the default, or `http/protobuf`),
    /// `OTEL_SDK_DISABLED`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, plus `RUST_LOG` and
    /// `LOG_FORMAT` (`json`|`pretty`).
    ///
    /// An unsupported protocol is an error (a bad explicit setting is refused, not ignored);
    /// [`init_from_env`] still sets up logging before returning it.
    pub fn from_env(default_service_name: &str) -> Result<Self, Error> {
        Self::from_vars(default_service_name, |name| std::env::var(name).ok())
    }

    /// [`TelemetryConfig::from_env`] over any variable lookup (tests pass a map).
    pub fn from_vars(
        default_service_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let var = |name: &str| non_empty(lookup(name));
        let mut config = Self::logs_only(default_service_name, &lookup);
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(config);
        }
        config.otlp_protocol = protocol(
            var(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
                .map(|v| (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, v))
                .or_else(|| {
                    var(OTEL_EXPORTER_OTLP_PROTOCOL).map(|v| (OTEL_EXPORTER_OTLP_PROTOCOL, v))
                }),
        )?;
        config.otlp_endpoint = traces_endpoint(
            config.otlp_protocol,
            var(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).as_deref(),
            var(OTEL_EXPORTER_OTLP_ENDPOINT).as_deref(),
        );
        Ok(config)
    }

    /// The logging part of the variables (never fails), with no span export: what [`init_from_env`]
    /// falls back to when the export settings are bad, so the error can still be logged.
    fn logs_only(default_service_name: &str, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| non_empty(lookup(name));
        let log_format = match var("LOG_FORMAT").as_deref() {
            Some("pretty") | Some("text") => LogFormat::Pretty,
            _ => LogFormat::Json,
        };
        Self {
            service_name: service_name(
                var(OTEL_SERVICE_NAME).as_deref(),
                var(OTEL_RESOURCE_ATTRIBUTES).as_deref(),
                default_service_name,
            ),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            log_format,
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
        }
    }
}

/// A trimmed value, `None` when empty.
fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The protocol named by `(variable, value)`; unset means gRPC.
fn protocol(setting: Option<(&'static str, String)>) -> Result<OtlpProtocol, Error> {
    match setting {
        None => Ok(OtlpProtocol::Grpc),
        Some((_, value)) if value == "grpc" => Ok(OtlpProtocol::Grpc),
        Some((_, value)) if value == "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        Some((variable, value)) => Err(Error::Protocol { variable, value }),
    }
}

/// The URL spans go to. The signal-specific variable is used as is; the base one is too for
/// gRPC, while for OTLP/HTTP it is a base URL that gets `/v1/traces` appended.
fn traces_endpoint(
    protocol: OtlpProtocol,
    traces: Option<&str>,
    base: Option<&str>,
) -> Option<String> {
    if let Some(traces) = traces {
        return Some(traces.to_owned());
    }
    let base = base?;
    Some(match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    })
}

/// `service.name`: `OTEL_SERVICE_NAME` wins, then a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
/// (parsed as the SDK's resource detector parses it), then the binary's default.
fn service_name(
    otel_service_name: Option<&str>,
    resource_attributes: Option<&str>,
    default: &str,
) -> String {
    let from_attributes = || {
        resource_attributes?
            .split_terminator(',')
            .filter_map(|entry| entry.split_once('='))
            .filter(|(key, _)| key.trim() == "service.name")
            .map(|(_, value)| value.trim())
            .rfind(|value| !value.is_empty())
    };
    otel_service_name
        .or_else(from_attributes)
        .unwrap_or(default)
        .to_owned()
}

/// Installed telemetry; call [`Telemetry::shutdown`] before exit so buffered spans are sent.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Reads the variables ([`TelemetryConfig::from_env`]) and [`init`]s telemetry: the one call a
/// binary makes.
///
/// Logging to stdout is set up even when the export settings are bad: the error is then logged
/// (naming the variable and the values it accepts) and returned, so a caller that refuses to
/// start says why, and a caller that carries on still has logs.
pub fn init_from_env(default_service_name: &str) -> Result<Telemetry, Error> {
    init_from_vars(
        default_service_name,
        |name| std::env::var(name).ok(),
        std::io::stdout,
    )
}

fn init_from_vars<W>(
    default_service_name: &str,
    lookup: impl Fn(&str) -> Option<String>,
    writer: W,
) -> Result<Telemetry, Error>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match TelemetryConfig::from_vars(default_service_name, &lookup) {
        Ok(config) => init_with_writer(&config, writer),
        Err(error) => {
            let logs_only = TelemetryConfig::logs_only(default_service_name, &lookup);
            init_with_writer(&logs_only, writer)?;
            tracing::error!(%error, "bad telemetry settings");
            Err(error)
        }
    }
}

/// Installs the global subscriber (logs to stdout + spans), tracer provider and W3C propagator.
///
/// When the exporter cannot be built, logging is installed anyway and the error is logged, then
/// returned.
///
/// Must run inside a Tokio runtime: the gRPC exporter needs one.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, Error> {
    init_with_writer(config, std::io::stdout)
}

fn init_with_writer<W>(config: &TelemetryConfig, writer: W) -> Result<Telemetry, Error>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (provider, failed) = match tracer_provider(config) {
        Ok(provider) => (provider, None),
        Err(error) => (provider_builder(config).build(), Some(error)),
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("statecast");
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let (filter, bad_filter) = match EnvFilter::try_new(&config.log_filter) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(logfmt::JsonWithTraceIds::default())
                    .with_writer(writer),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()?,
    }
    if let Some(error) = bad_filter {
        tracing::warn!(%error, filter = %config.log_filter, "RUST_LOG is not a valid filter; logging at info");
    }
    if let Some(error) = failed {
        tracing::error!(%error, "cannot export spans");
        return Err(error);
    }
    Ok(Telemetry { provider })
}

fn provider_builder(config: &TelemetryConfig) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    SdkTracerProvider::builder().with_resource(resource)
}

/// Builds the tracer provider alone (used by [`init`], and by tests that install their own
/// subscriber).
pub fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, Error> {
    let builder = provider_builder(config);
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
            .with_endpoint(endpoint.clone())
            .build()?,
    };
    Ok(builder.with_batch_exporter(exporter).build())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn config(pairs: &[(&str, &str)]) -> Result<TelemetryConfig, Error> {
        TelemetryConfig::from_vars("svc-default", vars(pairs))
    }

    #[test]
    fn an_unsupported_protocol_is_refused_naming_the_variable_and_the_allowed_values() {
        let error = config(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/json")]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\""),
            "{message}"
        );
        assert!(
            message.contains("grpc") && message.contains("http/protobuf"),
            "{message}"
        );
        let error = config(&[
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http"),
        ])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"http\""),
            "{error}"
        );
        // Disabled telemetry does not care.
        assert!(
            config(&[
                (OTEL_EXPORTER_OTLP_PROTOCOL, "http"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .is_ok()
        );
    }

    #[test]
    fn service_name_comes_from_otel_service_name_then_resource_attributes_then_the_default() {
        let name = |pairs: &[(&str, &str)]| config(pairs).unwrap().service_name;
        assert_eq!(name(&[]), "svc-default");
        assert_eq!(
            name(&[(
                OTEL_RESOURCE_ATTRIBUTES,
                "deployment.environment=prod, service.name = billing-api"
            )]),
            "billing-api"
        );
        assert_eq!(
            name(&[
                (OTEL_RESOURCE_ATTRIBUTES, "service.name=billing-api"),
                (OTEL_SERVICE_NAME, "from-env")
            ]),
            "from-env"
        );
        assert_eq!(
            name(&[
                (OTEL_RESOURCE_ATTRIBUTES, "team=a"),
                (OTEL_SERVICE_NAME, " ")
            ]),
            "svc-default"
        );
    }

    #[test]
    fn the_traces_endpoint_is_used_as_is_and_the_base_endpoint_gets_the_signal_path() {
        let endpoint = |pairs: &[(&str, &str)]| config(pairs).unwrap().otlp_endpoint;
        let http = (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf");
        assert_eq!(
            endpoint(&[
                http,
                (
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "http://c:4318/custom/traces"
                )
            ])
            .as_deref(),
            Some("http://c:4318/custom/traces")
        );
        assert_eq!(
            endpoint(&[http, (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318/")]).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&[
                http,
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://base:4318"),
                (
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "http://traces:4318/v1/traces"
                )
            ])
            .as_deref(),
            Some("http://traces:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317")]).as_deref(),
            Some("http://c:4317")
        );
        assert_eq!(endpoint(&[]), None);
        assert_eq!(
            endpoint(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4317"),
                ("OTEL_SDK_DISABLED", "TRUE")
            ]),
            None
        );
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Self;
        fn make_writer(&'w self) -> Self {
            self.clone()
        }
    }

    // The only test of this binary that installs the global subscriber.
    #[test]
    fn a_bad_protocol_still_sets_up_logging_and_logs_the_error() {
        let out = Captured::default();
        let result = init_from_vars(
            "svc",
            vars(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "bogus")]),
            out.clone(),
        );
        assert!(matches!(result, Err(Error::Protocol { .. })));
        tracing::info!("still logging");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            lines.iter().any(|l| l["level"] == "ERROR"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"bogus\"")
                        && e.contains("http/protobuf"))),
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l["message"] == "still logging"),
            "{text}"
        );
    }
}
