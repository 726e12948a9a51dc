//! Child processes of the benchmark: the Profile API and consumers in release mode, started with
//! environment variables, logged to the run directory, stopped with SIGTERM; plus the small
//! probes the scenarios need (free ports, `/metrics` counters, resident memory).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A service process the benchmark started.
pub(crate) struct Proc {
    /// Short name, also the log file name.
    pub(crate) name: String,
    child: Child,
    pid: u32,
}

impl Proc {
    /// Starts `bin` with `env` (on top of a clean `RUST_LOG=warn`, no `OTEL_*`), logging to
    /// `<log_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &str,
        bin: &Path,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))
            .with_context(|| format!("log file of {name}"))?;
        let err = log.try_clone()?;
        let mut command = Command::new(bin);
        for (key, _) in std::env::vars() {
            if key.starts_with("OTEL_") {
                command.env_remove(&key);
            }
        }
        command
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| {
            format!("start {} (build it: cargo build --release)", bin.display())
        })?;
        let pid = child.id().context("child has no pid")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
        })
    }

    /// Process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory (VmRSS) in KiB, if the process is alive.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// Fails if the process has exited (it crashed or refused its configuration).
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early with {status}; see its log in the run directory",
                self.name
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub(crate) async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// VmRSS of `pid` in KiB, from `/proc/PID/status`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}

/// Waits until `url` answers 200, checking that `proc` is still alive.
pub(crate) async fn wait_ready(
    http: &reqwest::Client,
    proc: &mut Proc,
    url: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    wait_until(proc, &format!("answer {url}"), limit, || async {
        http.get(url)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await
}

/// Polls `probe` every 50 ms until it holds, failing once `limit` has passed (saying `proc`
/// did not `what`) or as soon as `proc` has exited.
pub(crate) async fn wait_until<F, Fut>(
    proc: &mut Proc,
    what: &str,
    limit: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        proc.check_alive()?;
        if probe().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} did not {what} within {limit:?}", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of every sample of metric `name` (all label sets) in a Prometheus text page.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        // From 0.0, not `sum()`: a float sum of nothing is -0.0, which printed as "-0 of 20000".
        .fold(0.0, |total, value| total + value)
}

/// Fetches `/metrics` at `url` and sums metric `name`.
pub(crate) async fn scrape(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = http.get(url).send().await?.text().await?;
    Ok(metric_sum(&text, name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_labels_only() {
        let text = "# HELP consumer_records Records\n\
                    consumer_records_total{result=\"processed\"} 7\n\
                    consumer_records_total{result=\"stale\"} 2\n\
                    consumer_records_total_other 100\n\
                    profile_db_loads_total 3\n";
        assert_eq!(metric_sum(text, "consumer_records_total"), 9.0);
        assert_eq!(metric_sum(text, "profile_db_loads_total"), 3.0);
        assert!(metric_sum(text, "absent_total").is_sign_positive());
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
