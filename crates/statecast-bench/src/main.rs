//! `statecast-bench`: the benchmark command behind `make bench`.
//!
//! Starts the release builds of the Profile API and the consumers as processes against the local
//! stack (`scripts/stack up`), with a fresh database, fresh topics and Redis databases of its own
//! (so it never disturbs tests), runs each scenario with an established load tool (`wrk`,
//! `redis-benchmark`, `pgbench`, a bare rdkafka consumer), prints one table (scenario, ours,
//! baseline, ratio), writes `docs/benchmarks.md` with the exact commands, and draws one PNG per
//! scenario into `docs/bench/` with `scripts/bench-plot.py`.
//!
//! It reports; it never asserts on timings.
//!
//! # Layout
//! - `procs`: child processes, ports, `/metrics`, VmRSS.
//! - `tools`: wrk / redis-benchmark / pgbench command lines and parsers.
//! - `report`: table, notes, commands, plot specs, `docs/benchmarks.md`.
//! - `scenarios`: the scenarios.
//! - `fair`: the baselines' Kafka client settings, taken from the consumer's and the relay's own
//!   configuration functions (never copied), and the check that they match.
//! - `capacity`: `docs/capacity.md`, derived from `docs/benchmarks.md` (`--capacity-only` writes
//!   it again from the file on disk).
//! - `autoscaling`: section 7, the operator's autoscaling rules over a simulated burst (no
//!   services; `--autoscaling-only` runs just it).

mod autoscaling;
mod capacity;
mod fair;
mod procs;
mod report;
mod scenarios;
mod tools;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

/// Command-line options; the defaults are what `make bench` runs.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "statecast-bench",
    about = "Run Statecast's benchmarks and write docs/benchmarks.md"
)]
pub struct Args {
    /// Directory holding the release `profile-api` and `profile-consumer`.
    #[arg(long, env = "STATECAST_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Repository root (where docs/ and scripts/ are).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Python with matplotlib, for the plots.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Seconds of each load run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Connections of the HTTP, Redis and PostgreSQL load runs.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Profiles seeded for the read and write scenarios.
    #[arg(long, default_value_t = 10_000)]
    pub profiles: usize,
    /// Sequential PUTs of fresh ids in the propagation part of scenario 3.
    #[arg(long, default_value_t = 200)]
    pub propagation_puts: usize,
    /// Events produced for scenario 4.
    #[arg(long, default_value_t = 20_000)]
    pub consumer_events: usize,
    /// Longest a consumer may take in scenario 4 before its rate is taken from what it did.
    #[arg(long, default_value_t = 30)]
    pub consumer_cap_secs: u64,
    /// Concurrent GETs of the stampede.
    #[arg(long, default_value_t = 500)]
    pub stampede: usize,
    /// Outbox rows the relay drains in scenario 8 (and the bare producer sends).
    #[arg(long, env = "BENCH_DRAIN_ROWS", default_value_t = 100_000)]
    pub drain_rows: usize,
    /// Longest wait for either topic of scenario 8 to hold every record.
    #[arg(long, default_value_t = 300)]
    pub drain_cap_secs: u64,
    /// Sequential PUT-then-GET pairs of each run of scenario 10 (at most --profiles).
    #[arg(long, default_value_t = 10_000)]
    pub coherence_pairs: usize,
    /// Run only these scenarios (comma-separated numbers, e.g. `--only 4,8`) and write nothing
    /// under docs/: a partial run must not replace the whole report.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u32>,
    /// Write nothing under docs/ (print the table only).
    #[arg(long)]
    pub no_docs: bool,
    /// Run only section 7 (the autoscaling simulation, no services), print it and replace that
    /// section of docs/benchmarks.md in place (unless --no-docs).
    #[arg(long)]
    pub autoscaling_only: bool,
    /// Only write docs/capacity.md again from the docs/benchmarks.md on disk (no services).
    #[arg(long)]
    pub capacity_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let root = match &args.root {
        Some(root) => root.clone(),
        // `cargo run` sets the manifest dir at run time; the compile-time one may name another
        // checkout when the build cache is shared.
        None => std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("../.."),
    }
    .canonicalize()
    .context("repository root")?;
    if args.capacity_only {
        let benchmarks = std::fs::read_to_string(root.join("docs/benchmarks.md"))
            .context("read docs/benchmarks.md")?;
        let path = root.join("docs/capacity.md");
        std::fs::write(&path, capacity::render(&benchmarks, capacity::EXAMPLE))?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    if args.autoscaling_only {
        let simulation = autoscaling::simulate();
        println!("{}", simulation.text());
        if !args.no_docs {
            let path = root.join("docs/benchmarks.md");
            let doc = std::fs::read_to_string(&path).unwrap_or_default();
            std::fs::write(&path, autoscaling::splice(&doc, &simulation.markdown()))?;
            println!("wrote section 7 of {}", path.display());
        }
        return Ok(());
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/statecast/target")
                });
            target.join("release")
        }
    };
    let mut args = args;
    if !args.only.is_empty() && !args.no_docs {
        eprintln!("[bench] --only: docs/ is left as it is");
        args.no_docs = true;
    }
    let mut bench = scenarios::Bench::new(args.clone(), root, bin_dir).await?;
    let outcome = bench.run_all().await;
    bench.cleanup().await;
    if let Err(error) = &outcome {
        bench
            .report
            .note(format!("the run stopped early: {error:#}"));
        eprintln!("[bench] run stopped early: {error:#}");
    }
    let took = started.elapsed();
    bench.finish(took).await?;
    outcome
}
