//! `statecast-traces`: `serve` receives OTLP traces (gRPC and HTTP/protobuf on one port) into
//! `TRACES_DIR`; `show [TRACE_ID]` prints the last write's trace (or the one given) as a tree.
//!
//! Exit codes: `0` on success (and after SIGTERM/SIGINT for `serve`); `1` when the store cannot
//! be used, the port cannot be bound, or there is no such trace (one stderr line saying what to
//! do); `2` for an invalid flag or variable value (the argument parser's message).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser as _;
use statecast_traces::{DEFAULT_DIR, DEFAULT_LISTEN_ADDR, DEFAULT_MAX_FILE_BYTES};

/// A local OpenTelemetry trace viewer: an OTLP receiver and a span-tree printer.
#[derive(Debug, clap::Parser)]
#[command(name = "statecast-traces", version, about)]
struct Cli {
    /// Directory of the span store (`spans.jsonl`, rotated to `spans.jsonl.1`).
    #[arg(long, env, default_value = DEFAULT_DIR, global = true)]
    traces_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Receive OTLP/gRPC and OTLP/HTTP (protobuf) traces and store every span.
    Serve {
        /// Address of the receiver: point OTEL_EXPORTER_OTLP_ENDPOINT at http://<this>, with
        /// OTEL_EXPORTER_OTLP_PROTOCOL grpc or http/protobuf.
        #[arg(long, env, default_value = DEFAULT_LISTEN_ADDR)]
        traces_listen_addr: std::net::SocketAddr,

        /// Size past which `spans.jsonl` is rotated to `spans.jsonl.1` (the older one dropped).
        #[arg(long, env, default_value_t = DEFAULT_MAX_FILE_BYTES)]
        traces_max_file_bytes: u64,
    },
    /// Print a trace as a tree of spans: the latest trace holding a write (PUT, PATCH, POST or
    /// DELETE server span) unless a trace id is given.
    Show {
        /// Trace id (32 hex digits) or a unique prefix of one.
        trace_id: Option<String>,

        /// Without a trace id: the trace that began last, whatever its request (a read, a
        /// probe), not only a write's.
        #[arg(long)]
        any: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            traces_listen_addr,
            traces_max_file_bytes,
        } => serve(cli.traces_dir, traces_listen_addr, traces_max_file_bytes).await,
        Command::Show { trace_id, any } => show(&cli.traces_dir, trace_id.as_deref(), any),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "statecast-traces failed");
            eprintln!("statecast-traces: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    dir: PathBuf,
    addr: std::net::SocketAddr,
    max_file_bytes: u64,
) -> statecast_traces::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let spans = statecast_traces::SpanStore::open(&dir, max_file_bytes)?;
    let listener = statecast_startup::listen::bind("TRACES_LISTEN_ADDR", addr).await?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        listen_addr = %local,
        dir = %dir.display(),
        "receiving OTLP/gRPC and OTLP/HTTP (protobuf) traces: OTEL_EXPORTER_OTLP_ENDPOINT=http://{local}"
    );
    statecast_traces::receiver::serve(listener, spans, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn show(dir: &std::path::Path, trace_id: Option<&str>, any: bool) -> statecast_traces::Result<()> {
    let spans = statecast_traces::store::read_spans(dir)?;
    let trace = statecast_traces::tree::select(spans, trace_id, any, dir)?;
    print!("{}", statecast_traces::tree::render(&trace));
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
