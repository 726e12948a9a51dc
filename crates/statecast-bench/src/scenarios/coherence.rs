//! Scenario 10: near-cache coherence across two replicas, and the memory of a full near cache.
//!
//! Issue 16 asks that a GET through replica B right after a PUT through replica A stays almost
//! never stale with the near cache on (below 0.1 % of 10,000 sequential pairs), that a replica
//! never goes back to an older version, and for the window in which B may still answer the old
//! version. Every figure here is counted from what the HTTP client was told: the version in
//! the PUT's answer against the version in B's GET bodies, never from the replicas' metrics.
//!
//! Three runs of the same pairs, each with a replica B of its own beside the warmed replica A:
//! - **ours**: B as deployed, near cache on;
//! - **baseline**: B with `NEAR_CACHE_ENABLED=false`, so every read asks Redis, which the write
//!   invalidated before it answered (the guarantee the near cache must keep);
//! - **broken on purpose**: B on another Redis database, so A's invalidation of the shared entry
//!   never reaches what B serves. It shows that the count finds stale answers when they happen.
//!
//! Then (when scenario 6 runs too) B is filled past the near cache's default bounds, for scenario
//! 6's memory figure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use sqlx::Connection as _;

use super::{Api, Bench, MAIL_DOMAIN, REDIS_DB_API, REDIS_DB_COHERENCE_BROKEN};
use crate::procs::scrape;
use crate::tools::{Percentiles, at, percentiles_of};

/// How long B may keep answering an older version after a pair's PUT before the pair is
/// given up (counted as never fresh).
const FRESH_WITHIN: Duration = Duration::from_secs(2);
/// Pairs of the deliberately broken run: enough to show the count, few enough to be quick
/// (each waits the whole [`FRESH_WITHIN`] for a fresh answer that never comes: 50 take 100 s).
const BROKEN_PAIRS: usize = 50;
/// Profiles seeded to fill the near cache past its default bound (50,000 entries, 16 MiB).
const FILL_PROFILES: usize = 60_000;

/// What one run of sequential PUT-then-GET pairs found.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Pairs {
    /// Pairs run.
    pub(crate) pairs: usize,
    /// Pairs whose first GET through B answered an older version than the PUT's.
    pub(crate) stale: usize,
    /// Pairs in which B never answered the PUT's version within [`FRESH_WITHIN`].
    pub(crate) never_fresh: usize,
    /// GETs through B that answered an older version than one B had answered before.
    pub(crate) regressions: usize,
    /// Per pair that became fresh: ms from the PUT's answer to the end of B's first answer at
    /// (or above) the PUT's version; an upper bound of how long B could serve the old one.
    pub(crate) windows_ms: Vec<f64>,
}

impl Pairs {
    /// Stale answers as a percentage of the pairs.
    pub(crate) fn stale_percent(&self) -> f64 {
        if self.pairs == 0 {
            return f64::NAN;
        }
        100.0 * self.stale as f64 / self.pairs as f64
    }
}

/// Counts what B answered after one PUT: `put_version` is what the PUT's answer said,
/// `answers` the versions of B's GETs in order until the first fresh one (or the give-up), and
/// `highest` the highest version B answered for this id before (updated).
pub(crate) fn count_pair(
    tally: &mut Pairs,
    put_version: i64,
    answers: &[i64],
    highest: &mut i64,
    window_ms: Option<f64>,
) {
    tally.pairs += 1;
    for &v in answers {
        if v < *highest {
            tally.regressions += 1;
        }
        *highest = (*highest).max(v);
    }
    if answers.first().is_none_or(|&v| v < put_version) {
        tally.stale += 1;
    }
    match (answers.last(), window_ms) {
        (Some(&v), Some(ms)) if v >= put_version => tally.windows_ms.push(ms),
        _ => tally.never_fresh += 1,
    }
}

impl Bench {
    /// Scenario 10 (`a` is the warmed replica of scenario 1).
    pub(super) async fn scenario10(&mut self, a: &Api) -> anyhow::Result<()> {
        const S: &str = "10 near-cache coherence";
        let n = self.args.coherence_pairs.min(self.args.profiles);
        eprintln!("[bench] scenario 10: near-cache coherence, {n} PUT-then-GET pairs per run");

        let b = self.start_api("api-b-near", REDIS_DB_API, &[]).await?;
        let near_before = near_hits(&self.http, &b.base).await?;
        let ours = self.pairs(a, &b, 0, n).await?;
        let near_reads = near_hits(&self.http, &b.base).await? - near_before;
        if self.args.only.is_empty() || self.args.only.contains(&6) {
            self.near_cache_full(&b).await?;
        }
        b.proc.stop().await;

        let off = self
            .start_api(
                "api-b-off",
                REDIS_DB_API,
                &[("NEAR_CACHE_ENABLED", "false".to_owned())],
            )
            .await?;
        let baseline = self.pairs(a, &off, n, n).await?;
        off.proc.stop().await;

        let broken = self
            .start_api("api-b-broken", REDIS_DB_COHERENCE_BROKEN, &[])
            .await?;
        let broken_n = BROKEN_PAIRS.min(n);
        let wrong = self.pairs(a, &broken, 0, broken_n).await?;
        broken.proc.stop().await;

        self.report.command(
            S,
            format!(
                "statecast-bench: {n} times, for a fresh seeded id each: GET B twice (B's near cache holds the entry), \
                 PUT A (name changed; the answer's version v), then GET B until its body's version is >= v (at most \
                 {FRESH_WITHIN:?}); sequential, one connection each. Three replicas B in turn, each started before its pairs \
                 (and, near cache on, once it tracks): defaults; NEAR_CACHE_ENABLED=false; \
                 REDIS_URL=…/{REDIS_DB_COHERENCE_BROKEN} ({broken_n} pairs)"
            ),
        );
        let what = "a second replica with NEAR_CACHE_ENABLED=false (every read asks Redis)";
        self.report.row(
            "10 near-cache coherence: stale answers (first GET through B after a PUT through A)",
            "%",
            Some(ours.stale_percent()),
            Some(baseline.stale_percent()),
            what,
        );
        let window = |p: &Pairs| -> Percentiles { percentiles_of(&mut p.windows_ms.clone()) };
        let (wo, wb) = (window(&ours), window(&baseline));
        for p in [50.0, 99.0] {
            self.report.row(
                &format!(
                    "10 near-cache coherence: staleness bound p{p:.0} (PUT answer through A → B's first fresh answer)"
                ),
                "ms",
                Some(at(&wo, p)),
                Some(at(&wb, p)),
                what,
            );
        }
        self.report.row(
            "10 near-cache coherence: version regressions through B",
            "answers",
            Some(ours.regressions as f64),
            Some(baseline.regressions as f64),
            what,
        );
        self.report.row(
            "10 broken on purpose (B on another Redis database): stale answers",
            "%",
            Some(wrong.stale_percent()),
            None,
            "none: shows the count finds stale answers",
        );
        self.report.note(format!(
            "10: counted from the HTTP bodies: a pair is stale when B's first GET after A's PUT answered an older version \
             than the PUT's answer said. Ours: {} of {} pairs stale, {} never fresh within {FRESH_WITHIN:?}, {} regressions; \
             B answered {near_reads:.0} reads from its near tier (profile_cache_lookups_total{{tier=\"near\"}}, read only \
             to show the near cache was in use). Near cache off: {} of {} stale, {} never fresh. Broken on purpose \
             (B reads another Redis database, whose entry A's write does not touch): {} of {} stale, {} never fresh. \
             The bound is measured from the moment the PUT's answer arrived (the commit and A's invalidation of Redis \
             came before it) to the end of B's first answer at the new version, so it includes one GET round trip; \
             the pairs are sequential on loopback.",
            ours.stale,
            ours.pairs,
            ours.never_fresh,
            ours.regressions,
            baseline.stale,
            baseline.pairs,
            baseline.never_fresh,
            wrong.stale,
            wrong.pairs,
            wrong.never_fresh,
        ));
        self.report.latency_plot(
            "s10-coherence.png",
            "10 PUT through A → B's first fresh answer",
            &[("near cache on", &wo), ("near cache off", &wb)],
        );
        Ok(())
    }

    /// `n` sequential pairs over seeded ids `bench-{first}`… (wrapping over the seeded ones).
    async fn pairs(&self, a: &Api, b: &Api, first: usize, n: usize) -> anyhow::Result<Pairs> {
        let mut tally = Pairs::default();
        let mut highest: HashMap<String, i64> = HashMap::new();
        for i in 0..n {
            let id = format!("bench-{}", (first + i) % self.args.profiles);
            let top = highest.entry(id.clone()).or_insert(0);
            // Two reads: the first may fill B's near cache, the second is served from it.
            for _ in 0..2 {
                let v = self.version_through(b, &id).await?;
                if v < *top {
                    tally.regressions += 1;
                }
                *top = (*top).max(v);
            }
            let put_version = self.put_version(a, &id, i).await?;
            let written = Instant::now();
            let mut answers = Vec::new();
            let window = loop {
                let v = self.version_through(b, &id).await?;
                answers.push(v);
                if v >= put_version {
                    break Some(written.elapsed().as_secs_f64() * 1000.0);
                }
                if written.elapsed() > FRESH_WITHIN {
                    break None;
                }
            };
            count_pair(&mut tally, put_version, &answers, top, window);
        }
        Ok(tally)
    }

    /// The version B's GET body carries.
    async fn version_through(&self, api: &Api, id: &str) -> anyhow::Result<i64> {
        let response = self
            .http
            .get(format!("{}/v1/profiles/{id}", api.base))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {id} through {} answered {status}", api.proc.name);
        }
        version_of(&response.bytes().await?)
    }

    /// PUTs a changed name through `api`; the version its answer carries.
    async fn put_version(&self, api: &Api, id: &str, i: usize) -> anyhow::Result<i64> {
        version_of(&self.put_named(api, id, &format!("Bench {id} {i}")).await?)
    }

    /// Seeds [`FILL_PROFILES`] more profiles and reads each twice through `b`, so its near cache
    /// reaches its default bound; records B's RSS and what its gauges say it holds.
    async fn near_cache_full(&mut self, b: &Api) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.db_url).await?;
        let sql = format!(
            "INSERT INTO profile (id, name, email, country, version, updated_at) \
             SELECT 'bench-fill-' || g, 'Bench Fill User ' || g, 'bench-fill-' || g || '@{MAIL_DOMAIN}', 'PT', 1, now() \
             FROM generate_series(0, {}) AS g ON CONFLICT DO NOTHING",
            FILL_PROFILES - 1
        );
        let _ = sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .context("seed the near-cache fill profiles")?;
        conn.close().await?;
        let http = self.http.clone();
        let base = b.base.clone();
        let failures = futures::stream::iter((0..2).flat_map(|_| 0..FILL_PROFILES))
            .map(|i| {
                let http = http.clone();
                let url = format!("{base}/v1/profiles/bench-fill-{i}");
                async move {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => 0usize,
                        _ => 1,
                    }
                }
            })
            .buffer_unordered(64)
            .fold(0usize, |acc, f| async move { acc + f })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = format!("{}/metrics", b.base);
        let entries = scrape(&self.http, &metrics, "profile_near_cache_entries").await?;
        let bytes = scrape(&self.http, &metrics, "profile_near_cache_bytes").await?;
        self.memory.api_near_full = b.proc.rss_kib();
        self.memory.near_full = Some((entries, bytes));
        self.report.command(
            "6 RSS API: near cache full",
            format!(
                "psql {} -c \"{sql}\"   # then GET /v1/profiles/bench-fill-0..{} twice each through replica B \
                 (concurrency 64), then VmRSS and profile_near_cache_entries / profile_near_cache_bytes",
                self.db_url,
                FILL_PROFILES - 1
            ),
        );
        if failures > 0 {
            self.report.note(format!(
                "6: filling the near cache, {failures} of {} GETs failed",
                2 * FILL_PROFILES
            ));
        }
        Ok(())
    }
}

/// `version` of a profile body.
fn version_of(body: &[u8]) -> anyhow::Result<i64> {
    let value: serde_json::Value = serde_json::from_slice(body).context("profile body")?;
    value
        .get("version")
        .and_then(serde_json::Value::as_i64)
        .context("profile body without a version")
}

/// Reads served by the near tier so far.
async fn near_hits(http: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("profile_cache_lookups_total{") && l.contains("tier=\"near\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_stale_when_the_first_answer_is_older_than_the_put() {
        let mut t = Pairs::default();
        let mut top = 3;
        count_pair(&mut t, 4, &[4], &mut top, Some(0.3));
        count_pair(&mut t, 5, &[4, 4, 5], &mut top, Some(1.2));
        assert_eq!(
            (t.pairs, t.stale, t.never_fresh, t.regressions),
            (2, 1, 0, 0)
        );
        assert_eq!(t.windows_ms, vec![0.3, 1.2]);
        assert!((t.stale_percent() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn going_back_is_a_regression_and_never_fresh_is_counted() {
        let mut t = Pairs::default();
        let mut top = 7;
        count_pair(&mut t, 8, &[6, 7], &mut top, None);
        assert_eq!((t.stale, t.never_fresh, t.regressions), (1, 1, 1));
        assert!(t.windows_ms.is_empty());
    }

    #[test]
    fn reads_the_version_of_a_profile_body() {
        let body = br#"{"id":"a","name":"n","email":"a@b.c","country":"PT","version":12,"updated_at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(version_of(body).unwrap(), 12);
        assert!(version_of(b"{}").is_err());
    }
}
