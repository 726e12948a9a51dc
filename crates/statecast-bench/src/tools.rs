//! The established load tools and what we read from them: `wrk` (summary and percentiles from
//! the Lua `done()` hook in `lua/done.lua`), `redis-benchmark --csv`, and `pgbench` (tps from its
//! report, latency percentiles from its per-transaction log, `-l`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::procs::rss_kib;

/// Latency percentiles, `(percentile, milliseconds)`.
pub(crate) type Percentiles = Vec<(f64, f64)>;

/// The percentiles every latency series reports.
pub(crate) const PERCENTILES: [f64; 7] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// [`PERCENTILES`] of unsorted samples (milliseconds).
pub(crate) fn percentiles_of(samples: &mut [f64]) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    PERCENTILES
        .iter()
        .map(|&p| (p, percentile(samples, p)))
        .collect()
}

/// Looks up percentile `p` in a series.
pub(crate) fn at(series: &Percentiles, p: f64) -> f64 {
    series
        .iter()
        .find(|(q, _)| (q - p).abs() < 1e-9)
        .map_or(f64::NAN, |(_, ms)| *ms)
}

/// A command line, as run and as documented.
#[derive(Debug, Clone)]
pub(crate) struct CommandLine {
    /// Environment assignments shown before the program.
    pub(crate) env: Vec<(String, String)>,
    /// Program and arguments.
    pub(crate) argv: Vec<String>,
}

impl CommandLine {
    /// `program args...` with no extra environment.
    pub(crate) fn new(argv: &[&str]) -> Self {
        Self {
            env: Vec::new(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Adds an environment variable.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Shell-like rendering for the report.
    pub(crate) fn render(&self) -> String {
        let quote = |s: &str| {
            if s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%,+".contains(c))
            {
                s.to_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        self.env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .chain(self.argv.iter().map(|a| quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self, cwd: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(cwd)
            .kill_on_drop(true);
        command
    }

    /// Runs to completion; returns stdout. Fails on a non-zero exit.
    pub(crate) async fn output(&self, cwd: &Path) -> anyhow::Result<String> {
        let out = self
            .command(cwd)
            .output()
            .await
            .with_context(|| format!("run {}", self.argv[0]))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.render(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs to completion while sampling the resident memory of `watch` every 250 ms; returns
    /// stdout and the peak VmRSS (KiB) seen.
    pub(crate) async fn output_watching(
        &self,
        cwd: &Path,
        watch: &[u32],
    ) -> anyhow::Result<(String, Vec<u64>)> {
        let mut child = self
            .command(cwd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", self.argv[0]))?;
        let mut peaks = vec![0u64; watch.len()];
        let mut stdout = child.stdout.take().context("stdout")?;
        let reader = tokio::spawn(async move {
            let mut buf = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut buf).await;
            buf
        });
        let status = loop {
            for (peak, pid) in peaks.iter_mut().zip(watch) {
                *peak = (*peak).max(rss_kib(*pid).unwrap_or(0));
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let out = reader.await.unwrap_or_default();
        if !status.success() {
            bail!("{} failed ({status})", self.render());
        }
        Ok((out, peaks))
    }
}

/// What the `done()` hook of `lua/done.lua` writes.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WrkSummary {
    /// Completed requests.
    pub(crate) requests: u64,
    /// Run time, microseconds.
    pub(crate) duration_us: u64,
    /// Socket errors and non-2xx/3xx responses.
    pub(crate) errors: WrkErrors,
    /// `(percentile, microseconds)`.
    pub(crate) percentiles: Vec<(f64, f64)>,
}

/// wrk's error counters.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WrkErrors {
    /// Connect errors.
    pub(crate) connect: u64,
    /// Read errors.
    pub(crate) read: u64,
    /// Write errors.
    pub(crate) write: u64,
    /// Non-2xx/3xx responses.
    pub(crate) status: u64,
    /// Timeouts.
    pub(crate) timeout: u64,
}

impl WrkSummary {
    /// Requests per second.
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Percentiles in milliseconds.
    pub(crate) fn percentiles_ms(&self) -> Percentiles {
        self.percentiles
            .iter()
            .map(|(p, us)| (*p, us / 1000.0))
            .collect()
    }

    /// Every error counter summed.
    pub(crate) fn error_count(&self) -> u64 {
        let e = &self.errors;
        e.connect + e.read + e.write + e.status + e.timeout
    }
}

/// Reads the JSON the wrk `done()` hook wrote.
pub(crate) fn read_wrk_json(path: &Path) -> anyhow::Result<WrkSummary> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("wrk summary {} (did the done() hook run?)", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// One row of `redis-benchmark --csv`.
#[derive(Debug, Clone)]
pub(crate) struct RedisBenchRow {
    /// Requests per second.
    pub(crate) rps: f64,
    /// p50, p95, p99 and max, milliseconds.
    pub(crate) percentiles: Percentiles,
}

/// Parses `redis-benchmark --csv` (Redis 7: test, rps, avg, min, p50, p95, p99, max).
pub(crate) fn parse_redis_csv(text: &str) -> anyhow::Result<RedisBenchRow> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("empty redis-benchmark output")?
        .split(',')
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    let row: Vec<String> = lines
        .next()
        .context("redis-benchmark printed no result row")?
        .split(',')
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    let field = |name: &str| -> anyhow::Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("redis-benchmark CSV has no {name} column"))?;
        Ok(row.get(i).context("short CSV row")?.parse()?)
    };
    Ok(RedisBenchRow {
        rps: field("rps")?,
        percentiles: vec![
            (50.0, field("p50_latency_ms")?),
            (95.0, field("p95_latency_ms")?),
            (99.0, field("p99_latency_ms")?),
            (100.0, field("max_latency_ms")?),
        ],
    })
}

/// Parses `tps = 1234.5 (without initial connection time)` from pgbench's report.
pub(crate) fn parse_pgbench_tps(text: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .context("pgbench printed no tps line")
}

/// Transaction latencies (milliseconds) from every pgbench log file whose name starts with
/// `prefix` (`-l --log-prefix=prefix`: one file per thread).
pub(crate) fn read_pgbench_logs(prefix: &Path) -> anyhow::Result<Vec<f64>> {
    let dir = prefix.parent().context("log prefix has no directory")?;
    let stem = prefix
        .file_name()
        .and_then(|s| s.to_str())
        .context("log prefix has no file name")?;
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path: PathBuf = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|s| s.to_str())
            .is_some_and(|name| name.starts_with(&format!("{stem}.")));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            // client_id transaction_no time_us script_no time_epoch time_us_frac
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse::<f64>().ok())
            {
                latencies.push(us / 1000.0);
            }
        }
    }
    if latencies.is_empty() {
        bail!("no pgbench log lines under {}", prefix.display());
    }
    Ok(latencies)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles_of(&mut samples);
        assert_eq!(at(&p, 50.0), 50.0);
        assert_eq!(at(&p, 99.0), 99.0);
        assert_eq!(at(&p, 99.99), 100.0);
    }

    #[test]
    fn parses_redis_benchmark_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"GET\",\"81234.56\",\"0.700\",\"0.100\",\"0.655\",\"1.100\",\"1.500\",\"4.000\"\n";
        let row = parse_redis_csv(csv).unwrap();
        assert_eq!(row.rps, 81234.56);
        assert_eq!(at(&row.percentiles, 99.0), 1.5);
    }

    #[test]
    fn parses_pgbench_tps() {
        let out = "latency average = 3.1 ms\ninitial connection time = 40.2 ms\ntps = 20512.345678 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(out).unwrap(), 20512.345678);
    }

    #[test]
    fn renders_commands_for_a_shell() {
        let c = CommandLine::new(&["pgbench", "-f", "a b.sql"]).env("PGPASSWORD", "x");
        assert_eq!(c.render(), "PGPASSWORD=x pgbench -f 'a b.sql'");
    }
}
