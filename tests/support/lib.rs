//! Support for the cross-component tests in `tests/`: a real OTLP/gRPC trace receiver built on
//! the OpenTelemetry protobuf definitions, and helpers that run the real `profile-api` and
//! `profile-consumer` binaries as processes.
//!
//! # Layout
//! - [`effects`]: counting effects downstream, for the reliability table.
//! - [`system`]: the API and the consumers as processes on a private broker ([`system::System`]).
//! - [`OtlpReceiver`]: collects every span exported to it, with its service name.
//! - [`Service`]: a running binary with its log file; killed on drop.
//! - [`binary`], [`free_port`], [`wait_http_ok`].

pub mod effects;
pub mod system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    /// The span as sent.
    pub span: Span,
}

impl ReceivedSpan {
    /// Trace id as 32 hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Span id as 16 hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Parent span id as 16 hex digits, empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string, integer or boolean attribute rendered as a string.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|value| match value {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/gRPC receiver running inside the test process.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[derive(Clone)]
struct Collector(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        self.0
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpReceiver {
    /// Serves OTLP/gRPC on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Collector(spans.clone()));
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Self { addr, spans })
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Polls until `done` holds for the received spans, or fails after `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if let Some(result) = done(&spans) {
                return Ok(result);
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{}:{}({})", s.service, s.span.name, s.trace_id()))
                    .collect();
                bail!("spans never matched within {timeout:?}; received: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Path of a workspace binary built next to the running test (`target/debug/NAME`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port outside the ephemeral range, for a server this test starts (see
/// `statecast_testkit::ports`).
pub fn free_port() -> anyhow::Result<u16> {
    statecast_testkit::free_port()
}

/// A binary running as a child process, logging to a file; killed when dropped.
pub struct Service {
    child: tokio::process::Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Service {
    /// Starts `binary` with `env` (on top of the test's environment), logs to `log`.
    pub fn start(binary: &Path, env: &[(&str, String)], log: PathBuf) -> anyhow::Result<Self> {
        Self::start_with_args(binary, &[], env, log)
    }

    /// [`Service::start`] with command-line arguments (a subcommand, flags).
    pub fn start_with_args(
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(Self { child, log })
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        Ok(tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("did not exit after SIGTERM")??)
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub async fn kill(mut self) {
        self.crash().await;
    }

    /// Kills the process with SIGKILL and waits for it to be gone, keeping the handle (and its
    /// log); nothing happens if it already exited.
    pub async fn crash(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The log written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `url` until it answers 2xx, or fails after `timeout`.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(host_port(url)?).await {
            drop(stream);
            if http_get_status(url)
                .await
                .is_ok_and(|s| (200..300).contains(&s))
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not answer 2xx within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("http:// URL expected")?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// Status code of a plain HTTP/1.1 GET (no client library needed for probes).
async fn http_get_status(url: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = host_port(url)?;
    let path = url
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .unwrap_or("/");
    let mut stream = tokio::net::TcpStream::connect(&host).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let status = std::str::from_utf8(&head[9..12])?.parse()?;
    Ok(status)
}
