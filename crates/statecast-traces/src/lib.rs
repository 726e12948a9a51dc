//! A local trace viewer that needs no Docker: `statecast-traces serve` is an OTLP receiver that
//! stores every span it is sent as one JSON line, and `statecast-traces show [TRACE_ID]` prints
//! a trace from that store as a tree of spans with service, name and duration.
//!
//! Why it exists: in a cluster the chart deploys Jaeger, but Jaeger and the OpenTelemetry
//! Collector cannot be obtained on our development machines, so `make dev` starts this receiver
//! and points the API and the four consumers at it; `make trace` then shows the last write's
//! trace (the HTTP request, the relay's `send user-events`, one `process user-events` per
//! consumer) in the terminal.
//!
//! It speaks what our binaries export (`statecast-telemetry`): OTLP/gRPC and OTLP/HTTP with
//! protobuf bodies, both on one port (`http://127.0.0.1:4327` by default, chosen beside the
//! standard 4317/4318 so a real collector can still run). OTLP/HTTP with JSON bodies is refused
//! with a message saying which protocols work.
//!
//! # Layout
//! - [`span`]: [`StoredSpan`], the stored form of a span, and its conversion from OTLP.
//! - [`store`]: [`SpanStore`] appends spans to `spans.jsonl` (rotated to `spans.jsonl.1`);
//!   [`store::read_spans`] reads both back.
//! - [`receiver`]: the OTLP/gRPC service and the OTLP/HTTP route, served by [`receiver::serve`].
//! - [`tree`]: which trace to show ([`tree::select`]: the latest with a write, or a given id)
//!   and its rendering as a tree ([`tree::render`]).
//! - `main.rs`: the command line (`serve`, `show`).

pub mod receiver;
pub mod span;
pub mod store;
pub mod tree;

pub use span::{SpanKind, SpanStatus, StoredSpan};
pub use store::SpanStore;

use std::path::PathBuf;

/// Default `TRACES_LISTEN_ADDR`: one port for OTLP/gRPC and OTLP/HTTP, beside the standard
/// 4317 (gRPC) and 4318 (HTTP) so a collector on those ports does not collide.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:4327";
/// Default `TRACES_DIR`, relative to the working directory (the project root under `make`).
pub const DEFAULT_DIR: &str = ".stack/traces";
/// Default `TRACES_MAX_FILE_BYTES` (64 MiB): `spans.jsonl` is rotated to `spans.jsonl.1` beyond it.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 67_108_864;

/// Why serving or showing traces failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's directory or files cannot be read or written.
    #[error("{}: {source}; check TRACES_DIR (--traces-dir) and its permissions", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `TRACES_LISTEN_ADDR` cannot be bound.
    #[error(transparent)]
    Listen(#[from] statecast_startup::ListenError),
    /// Serving stopped with an error.
    #[error("OTLP receiver: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Nothing has been stored yet.
    #[error(
        "no spans in {}: is `statecast-traces serve` running (make dev starts it) and are the \
         services' OTEL_EXPORTER_OTLP_ENDPOINT pointed at it?",
        dir.display()
    )]
    NoSpans {
        /// `TRACES_DIR`.
        dir: PathBuf,
    },
    /// Spans are stored, but none is a write's server span.
    #[error(
        "no write in the {spans} spans of {}: make a PUT, PATCH, POST or DELETE request to the \
         API (or pass a trace id, or --any for the latest trace of any request)",
        dir.display()
    )]
    NoWrite {
        /// `TRACES_DIR`.
        dir: PathBuf,
        /// How many spans are stored.
        spans: usize,
    },
    /// No stored trace has the id asked for.
    #[error("no trace {id} in {}: check the id (32 hex digits, or a unique prefix)", dir.display())]
    UnknownTrace {
        /// The id asked for.
        id: String,
        /// `TRACES_DIR`.
        dir: PathBuf,
    },
    /// The prefix asked for matches several traces.
    #[error("{id} matches {count} traces; give more digits of the trace id")]
    AmbiguousTrace {
        /// The prefix asked for.
        id: String,
        /// How many traces it matches.
        count: usize,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
