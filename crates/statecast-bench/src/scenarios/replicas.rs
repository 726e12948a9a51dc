//! Scenario 9: cache-hit GETs through two API replicas sharing one Redis, beside
//! `redis-benchmark` GET at the same total concurrency.
//!
//! One wrk per replica (one thread, half the connections each), run at the same time; the
//! replicas' throughputs add up, and each percentile reported is the worse of the two replicas'
//! (wrk gives percentiles, not samples, so the two distributions cannot be merged exactly).

use super::{Api, Bench, REDIS_DB_API};
use crate::tools::{at, read_wrk_json};

impl Bench {
    /// Scenario 9: cache-hit GET across two replicas (`a` is the warmed replica of scenario 1).
    pub(super) async fn scenario9(&mut self, a: &Api) -> anyhow::Result<()> {
        const S: &str = "9 cache-hit GET, two replicas";
        eprintln!("[bench] scenario 9: cache-hit GET across two replicas");
        // Started like every replica: measured once its near cache tracks (see `start_api`).
        let b = self.start_api("api-b", REDIS_DB_API, &[]).await?;
        let half = (self.args.concurrency / 2).max(1);
        let json_a = self.run_dir.join("wrk-get-hit-a.json");
        let json_b = self.run_dir.join("wrk-get-hit-b.json");
        let line_a = self.wrk_line_with("get.lua", &json_a, &a.base, 1, half);
        let line_b = self.wrk_line_with("get.lua", &json_b, &b.base, 1, half);
        self.report.command(
            S,
            format!("{} &  # replica A, at the same time as", line_a.render()),
        );
        self.report
            .command(S, format!("{}    # replica B", line_b.render()));
        let (ran_a, ran_b) = tokio::join!(line_a.output(&self.root), line_b.output(&self.root));
        b.proc.stop().await;
        ran_a?;
        ran_b?;
        let (wrk_a, wrk_b) = (read_wrk_json(&json_a)?, read_wrk_json(&json_b)?);
        self.warn_errors(
            S,
            wrk_a.error_count() + wrk_b.error_count(),
            wrk_a.requests + wrk_b.requests,
        );
        let rps = wrk_a.rps() + wrk_b.rps();
        let requests = (rps * self.args.duration_secs as f64).clamp(100_000.0, 2_000_000.0) as u64;
        let baseline = self.redis_get_baseline(S, requests).await?;
        let (pa, pb) = (wrk_a.percentiles_ms(), wrk_b.percentiles_ms());
        let worse = |p: f64| at(&pa, p).max(at(&pb, p));
        let what = "redis-benchmark GET of 200-byte values, same total concurrency, no pipelining";
        self.report.row(
            "9 cache-hit GET, two replicas: requests/s",
            "req/s",
            Some(rps),
            Some(baseline.rps),
            what,
        );
        self.report.row(
            "9 cache-hit GET, two replicas: p50 (worse replica)",
            "ms",
            Some(worse(50.0)),
            Some(at(&baseline.percentiles, 50.0)),
            what,
        );
        self.report.row(
            "9 cache-hit GET, two replicas: p99 (worse replica)",
            "ms",
            Some(worse(99.0)),
            Some(at(&baseline.percentiles, 99.0)),
            what,
        );
        self.report.note(format!(
            "9: two API replicas on one Redis (the cache scenario 1 warmed; B's near cache tracking before the run starts), one wrk each ({half} connections, 1 thread) \
             at the same time: replica A {:.0} req/s, replica B {:.0} req/s; wrk counted {} errors/non-2xx. On this \
             machine the two replicas, both wrk and Redis share the same cores, so a second replica adds no CPU.",
            wrk_a.rps(),
            wrk_b.rps(),
            wrk_a.error_count() + wrk_b.error_count()
        ));
        self.report.latency_plot(
            "s9-two-replicas.png",
            "9 cache-hit GET through two replicas vs redis-benchmark GET",
            &[
                ("replica A (wrk)", &pa),
                ("replica B (wrk)", &pb),
                ("redis-benchmark GET", &baseline.percentiles),
            ],
        );
        Ok(())
    }
}
