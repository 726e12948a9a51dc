//! Section 7: the operator's two autoscaling rules over a simulated burst, side by side.
//!
//! A deterministic simulation, no services: a consumer group on 6 equally loaded partitions,
//! each consumer handling a fixed number of records per second, a produce rate with a burst, and
//! the operator deciding every 30 s (its resync interval). The drain policy is the operator's own
//! code (`profile_operator::drain`, with its in-memory sample window); the baseline is the
//! `lagThreshold` rule (`ceil(lag / lagThreshold)`, KEDA's Kafka scaler's rule) with the same
//! scale-down delay. Both see the same traffic, each on its own simulated group.

use std::fmt::Write as _;

use profile_operator::crd::Autoscaling;
use profile_operator::drain::{self, Reason, Sample, Windows};

/// Seconds between two decisions (the operator's resync).
pub(crate) const STEP_SECONDS: u32 = 30;
/// Decisions simulated (30 minutes).
pub(crate) const STEPS: u32 = 60;
/// Partitions of the topic.
pub(crate) const PARTITIONS: u32 = 6;
/// Records per second one consumer handles.
pub(crate) const PER_CONSUMER: f64 = 100.0;
/// Produce rate outside the burst, records per second.
pub(crate) const BASE_RATE: f64 = 150.0;
/// Produce rate during the burst.
pub(crate) const BURST_RATE: f64 = 500.0;
/// The burst: `[start, end)` in seconds.
pub(crate) const BURST: (u32, u32) = (300, 720);
/// Seconds of an interval in which a group that just changed size consumes nothing (pods
/// starting, the group rebalancing).
pub(crate) const REBALANCE_PAUSE: f64 = 10.0;
/// A backlog at or below this counts as drained.
pub(crate) const DRAINED: f64 = 1_000.0;

/// The ProfileConsumer's `autoscaling` in the simulation (the lag rule ignores the target).
pub(crate) fn policy() -> Autoscaling {
    Autoscaling {
        min_replicas: 1,
        max_replicas: 10,
        lag_threshold: 10_000,
        scale_down_delay_seconds: 300,
        target_drain_seconds: Some(120),
    }
}

fn produce_rate(t: u32) -> f64 {
    if (BURST.0..BURST.1).contains(&t) {
        BURST_RATE
    } else {
        BASE_RATE
    }
}

/// Records/s `n` consumers get through on `PARTITIONS` equally loaded partitions: the busiest
/// member, with `ceil(partitions / n)` of them, bounds the group.
fn capacity(n: i32) -> f64 {
    if n <= 0 {
        return 0.0;
    }
    let p = i32::try_from(PARTITIONS).unwrap_or(1);
    let n = n.min(p);
    let busiest = (p + n - 1) / n;
    PER_CONSUMER * f64::from(p) / f64::from(busiest)
}

/// One simulated group under one rule.
#[derive(Debug, Clone, Default)]
struct Group {
    end: f64,
    committed: f64,
    replicas: i32,
    changed_at_start: bool,
    last_scale: Option<f64>,
    decided: bool,
}

impl Group {
    fn lag(&self) -> f64 {
        self.end - self.committed
    }

    /// Runs one interval starting at `t`.
    fn advance(&mut self, t: u32) {
        let dt = f64::from(STEP_SECONDS);
        self.end += produce_rate(t) * dt;
        let working = if self.changed_at_start {
            dt - REBALANCE_PAUSE
        } else {
            dt
        };
        let can = capacity(self.replicas) * working;
        self.committed += can.min(self.lag());
    }

    fn sample(&self, t: u32) -> Sample {
        Sample {
            time: f64::from(t),
            end_offsets: self.end as u64,
            committed: self.committed as u64,
            // As the operator records it: 0 when the interval began with a change.
            replicas: if self.changed_at_start {
                0
            } else {
                self.replicas
            },
            partitions: PARTITIONS,
        }
    }

    fn apply(&mut self, replicas: i32, t: u32) -> bool {
        let changed = self.decided && replicas != self.replicas;
        if changed || !self.decided {
            self.last_scale = Some(f64::from(t));
        }
        self.changed_at_start = changed;
        self.replicas = replicas;
        self.decided = true;
        changed
    }
}

/// One row of the printed table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub(crate) t: u32,
    pub(crate) produce: f64,
    pub(crate) drain_lag: u64,
    pub(crate) drain_replicas: i32,
    pub(crate) drain_reason: Reason,
    pub(crate) rule_lag: u64,
    pub(crate) rule_replicas: i32,
}

/// Summary of one rule over the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub(crate) peak_lag: u64,
    /// Seconds from the burst's start until the lag is first at or below [`DRAINED`] after its
    /// peak.
    pub(crate) drain_seconds: Option<u32>,
    pub(crate) replica_seconds: u64,
    pub(crate) scale_changes: u32,
    pub(crate) max_replicas: i32,
}

/// The simulation's result.
#[derive(Debug, Clone)]
pub(crate) struct Simulation {
    pub(crate) steps: Vec<Step>,
    pub(crate) drain: Summary,
    pub(crate) rule: Summary,
}

fn summarize(lags: &[(u32, f64)], replicas: &[i32], changes: u32) -> Summary {
    let peak_lag = lags.iter().map(|(_, l)| *l).fold(0.0, f64::max) as u64;
    let peak_at = lags
        .iter()
        .filter(|(t, _)| *t >= BURST.0)
        .fold(
            (0, 0.0),
            |best, &(t, l)| if l > best.1 { (t, l) } else { best },
        )
        .0;
    let drain_seconds = lags
        .iter()
        .find(|(t, l)| *t > peak_at && *l <= DRAINED)
        .map(|(t, _)| t - BURST.0);
    Summary {
        peak_lag,
        drain_seconds,
        replica_seconds: replicas
            .iter()
            .map(|r| u64::try_from(*r).unwrap_or(0) * u64::from(STEP_SECONDS))
            .sum(),
        scale_changes: changes,
        max_replicas: replicas.iter().copied().max().unwrap_or(0),
    }
}

/// Runs the simulation.
pub(crate) fn simulate() -> Simulation {
    let policy = policy();
    let windows = Windows::default();
    let (mut d, mut r) = (Group::default(), Group::default());
    let mut steps = Vec::new();
    let (mut d_lags, mut r_lags, mut d_reps, mut r_reps) = (vec![], vec![], vec![], vec![]);
    let (mut d_changes, mut r_changes) = (0, 0);
    for i in 0..=STEPS {
        let t = i * STEP_SECONDS;
        let now = f64::from(t);
        let decision = windows.record_and_decide(
            "sim",
            d.sample(t),
            &policy,
            d.decided.then_some(d.replicas),
            d.last_scale,
        );
        let rule = drain::lag_rule(
            &policy,
            r.lag() as u64,
            PARTITIONS,
            r.decided.then_some(r.replicas),
            r.last_scale,
            now,
        );
        d_changes += u32::from(d.apply(decision.replicas, t));
        r_changes += u32::from(r.apply(rule, t));
        steps.push(Step {
            t,
            produce: produce_rate(t),
            drain_lag: d.lag() as u64,
            drain_replicas: d.replicas,
            drain_reason: decision.reason,
            rule_lag: r.lag() as u64,
            rule_replicas: r.replicas,
        });
        d_lags.push((t, d.lag()));
        r_lags.push((t, r.lag()));
        if i < STEPS {
            d_reps.push(d.replicas);
            r_reps.push(r.replicas);
            d.advance(t);
            r.advance(t);
        }
    }
    Simulation {
        steps,
        drain: summarize(&d_lags, &d_reps, d_changes),
        rule: summarize(&r_lags, &r_reps, r_changes),
    }
}

/// Title of the section in `docs/benchmarks.md`.
pub(crate) const TITLE: &str = "## 7 Autoscaling: drain target vs lag ÷ threshold (simulated)";

fn seconds(s: Option<u32>) -> String {
    s.map_or("not drained in the run".to_owned(), |s| format!("{s} s"))
}

impl Simulation {
    /// The per-step table and the summary, as plain text (also inside the Markdown section).
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>6} {:>9} | {:>8} {:>8} {:<13} | {:>8} {:>8}",
            "t (s)", "produce/s", "lag", "replicas", "reason", "lag", "replicas"
        );
        let _ = writeln!(
            out,
            "{:>6} {:>9} | {:^31} | {:^17}",
            "", "", "drain target (120 s)", "lag ÷ 10000"
        );
        for s in &self.steps {
            let _ = writeln!(
                out,
                "{:>6} {:>9.0} | {:>8} {:>8} {:<13} | {:>8} {:>8}",
                s.t,
                s.produce,
                s.drain_lag,
                s.drain_replicas,
                s.drain_reason.as_str(),
                s.rule_lag,
                s.rule_replicas
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<30} {:>24} {:>24}",
            "", "drain target (120 s)", "lag ÷ 10000"
        );
        let rows: [(&str, String, String); 5] = [
            (
                "peak lag (records)",
                self.drain.peak_lag.to_string(),
                self.rule.peak_lag.to_string(),
            ),
            (
                "time to drain (from burst start)",
                seconds(self.drain.drain_seconds),
                seconds(self.rule.drain_seconds),
            ),
            (
                "replica-seconds",
                self.drain.replica_seconds.to_string(),
                self.rule.replica_seconds.to_string(),
            ),
            (
                "scale changes",
                self.drain.scale_changes.to_string(),
                self.rule.scale_changes.to_string(),
            ),
            (
                "most replicas",
                self.drain.max_replicas.to_string(),
                self.rule.max_replicas.to_string(),
            ),
        ];
        for (what, a, b) in rows {
            let _ = writeln!(out, "{what:<30} {a:>24} {b:>24}");
        }
        out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }

    /// The section of `docs/benchmarks.md`, from [`TITLE`] to the end of its text.
    pub(crate) fn markdown(&self) -> String {
        let p = policy();
        let mut md = String::new();
        let _ = writeln!(md, "{TITLE}\n");
        let _ = writeln!(
            md,
            "Generated by `statecast-bench` (also alone: `statecast-bench --autoscaling-only`); a \
             deterministic simulation, no services. What it shows: how the operator's two \
             `ProfileConsumer` autoscaling modes react to the same burst. A consumer group reads \
             {PARTITIONS} equally loaded partitions; each consumer handles {PER_CONSUMER:.0} \
             records/s, and a group of n consumers is bounded by its busiest member (⌈{PARTITIONS}/n⌉ \
             partitions), so 4 consumers do what 3 do. Records arrive at {BASE_RATE:.0}/s, and at \
             {BURST_RATE:.0}/s from t = {} s to t = {} s. The operator decides every {STEP_SECONDS} s \
             (its resync); an interval that starts with a size change loses its first \
             {REBALANCE_PAUSE:.0} s to pods starting and the rebalance. Both modes use \
             minReplicas {}, maxReplicas {}, scaleDownDelaySeconds {}.\n",
            BURST.0, BURST.1, p.min_replicas, p.max_replicas, p.scale_down_delay_seconds
        );
        let _ = writeln!(
            md,
            "- **drain target** (`targetDrainSeconds: {}`): the operator's `drain` policy itself, \
             fed the simulated offsets — produce rate and per-consumer rate from successive \
             offsets, replicas = ⌈(produce + lag ÷ target) ÷ per-consumer rate⌉ rounded up to an \
             even spread (1, 2, 3 or 6), the `lagThreshold` rule until a rate has been measured \
             (`RateUnknown`);\n\
             - **lag ÷ threshold** (`lagThreshold: {}`, KEDA's Kafka scaler's rule): \
             ⌈lag ÷ {}⌉ capped by the partitions.\n",
            p.target_drain_seconds.unwrap_or_default(),
            p.lag_threshold,
            p.lag_threshold
        );
        let _ = writeln!(
            md,
            "Lag and replicas after each decision; the reason is the drain policy's. Time to drain \
             counts from the burst's start until the lag, past its peak, is at most {DRAINED:.0} \
             records; \
             replica-seconds is the sum of replicas × {STEP_SECONDS} s over the run. The figures \
             follow from the model above, not from a cluster: they compare the rules, not \
             absolute timings.\n"
        );
        let _ = writeln!(md, "```text\n{}```", self.text());
        md
    }
}

/// `doc` with its section 7 replaced by `section` (or `section` added before `## Exact
/// commands`, or at the end).
pub(crate) fn splice(doc: &str, section: &str) -> String {
    let section = section.trim_end();
    if let Some(start) = doc.find(TITLE) {
        let rest = &doc[start + TITLE.len()..];
        let end = rest
            .find("\n## ")
            .map_or(doc.len(), |i| start + TITLE.len() + i + 1);
        return format!("{}{section}\n\n{}", &doc[..start], &doc[end..]);
    }
    match doc.find("## Exact commands") {
        Some(i) => format!("{}{section}\n\n{}", &doc[..i], &doc[i..]),
        None => format!("{}\n{section}\n", doc.trim_end()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn simulation_is_deterministic_and_respects_the_partitions() {
        let a = simulate();
        let b = simulate();
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.steps.len(), usize::try_from(STEPS).unwrap() + 1);
        for s in &a.steps {
            assert!(s.drain_replicas <= 6 && s.rule_replicas <= 6, "{s:?}");
            assert!(s.drain_replicas >= 1 && s.rule_replicas >= 1, "{s:?}");
            // The drain policy only runs counts that spread 6 partitions evenly (the fallback
            // may not).
            if !s.drain_reason.is_fallback() {
                assert!([1, 2, 3, 6].contains(&s.drain_replicas), "{s:?}");
            }
        }
        let text = a.text();
        assert!(text.contains("peak lag"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
        assert!(a.markdown().starts_with(TITLE));
    }

    #[test]
    fn the_section_is_spliced_in_place() {
        let doc = "# B\n\n## Notes\n\n- x\n\n## Exact commands\n\nfoo\n";
        let once = splice(doc, &format!("{TITLE}\n\nFIRST\n"));
        assert!(once.contains("FIRST\n\n## Exact commands"), "{once}");
        let twice = splice(&once, &format!("{TITLE}\n\nSECOND\n"));
        assert!(!twice.contains("FIRST"), "{twice}");
        assert!(twice.contains("- x\n\n## 7 Autoscaling"), "{twice}");
        assert!(twice.contains("SECOND\n\n## Exact commands"), "{twice}");
        assert_eq!(twice.matches(TITLE).count(), 1);
        assert_eq!(splice("# B\n", "S\n"), "# B\nS\n");
    }
}
