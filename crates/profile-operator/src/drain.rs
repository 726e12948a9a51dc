//! The drain-time scaling policy (`spec.autoscaling.targetDrainSeconds`): a pure function from a
//! window of offset samples to a replica count and a reason.
//!
//! Every reconcile (every [`crate::reconcile::RESYNC`]) records one [`Sample`]: the time, the sum
//! of the topics' log-end offsets, the sum of the group's committed offsets and the consumers that
//! ran since the previous sample. From the window of recent samples the policy estimates
//! - the **produce rate**: log-end offset growth ÷ time over the newest minute of the window;
//! - the **consume rate per replica**: committed-offset growth ÷ replica-seconds, over the
//!   intervals in which the consumers were *busy* (the backlog at the start of the interval was at
//!   least what they consumed in it, and some was left at its end: a group that keeps up only
//!   shows the produce rate, not what it could do) and *settled* (the same number of consumers ran
//!   in the interval and in the one before: a membership change triggers a rebalance, which
//!   stalls consumption). The last such estimate is remembered ([`DrainInput::known_rate`]), so a
//!   group that has caught up keeps its sizing;
//!
//! and sizes the group so the backlog drains within the target while keeping up:
//! `needed = (produce + lag ÷ targetDrainSeconds) ÷ per-replica rate` consumers, rounded **up** to
//! a count that spreads the partitions evenly ([`even_spread`]; for 6 partitions: 1, 2, 3, 6 —
//! with 4 consumers two of them read 2 partitions, so the group is no faster than with 3), never
//! above the partitions or `maxReplicas` (then the fewest consumers with the most capacity below
//! them), never below `minReplicas`.
//!
//! Scale-up applies at once; scale-down only once `scaleDownDelaySeconds` (at least
//! [`MIN_SCALE_DOWN_DELAY_SECONDS`]) have passed since the last change: a change makes the group
//! rebalance (members leave and join, a crashed member's partitions wait for the session timeout,
//! 10 s by default in `profile-consumer`), and the rate measured across it is meaningless until
//! one full settled interval has been sampled after it.
//!
//! When no rate is known (a fresh window: the operator just started, the resource is new, the
//! offsets went backwards), or the busy consumers made no progress at all (stuck: more of them
//! would not help), the policy falls back to the `lagThreshold` rule of [`crate::scaling`], with
//! the same scale-down hold. Nothing to drain and nothing produced scales to `minReplicas`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::crd::Autoscaling;
use crate::scaling::target_replicas;

/// Shortest `scaleDownDelaySeconds` allowed with `targetDrainSeconds`: two resync intervals, so
/// one settled interval (no membership change in it or before it) is sampled after a change;
/// longer than the consumers' session timeout (10 s by default).
pub const MIN_SCALE_DOWN_DELAY_SECONDS: i64 = 60;

/// Samples older than this (seconds before the newest) leave the window.
pub const WINDOW_SECONDS: f64 = 300.0;

/// The produce rate is taken over the newest samples spanning this many seconds.
pub const PRODUCE_SECONDS: f64 = 60.0;

/// Most samples kept per resource.
pub const MAX_SAMPLES: usize = 32;

/// One observation of a consumer group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds (any fixed epoch; Unix time in the operator).
    pub time: f64,
    /// Sum of the log-end offsets (high watermarks) of all partitions.
    pub end_offsets: u64,
    /// Sum of the group's committed offsets (a partition never committed counts its low
    /// watermark, so `end_offsets - committed` is the lag).
    pub committed: u64,
    /// Consumers that ran during the interval ending at this sample (the ready replicas, when the
    /// rollout had settled); 0 when unknown or not settled, which excludes the interval and the
    /// next from the rate estimate.
    pub replicas: i32,
    /// Partitions of all topics together (0: unknown).
    pub partitions: u32,
}

impl Sample {
    /// Records not yet consumed.
    pub fn lag(&self) -> u64 {
        self.end_offsets.saturating_sub(self.committed)
    }
}

/// Everything the policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct DrainInput<'a> {
    /// The resource's autoscaling settings (`targetDrainSeconds` must be set).
    pub policy: &'a Autoscaling,
    /// The window, oldest first; the last one is now.
    pub samples: &'a [Sample],
    /// Per-replica consume rate (records/s) measured earlier, kept when the window has no busy
    /// interval.
    pub known_rate: Option<f64>,
    /// Replicas decided last time, `None` on the first decision.
    pub current: Option<i32>,
    /// When the replicas last changed (seconds, same epoch as the samples).
    pub last_scale: Option<f64>,
}

/// Why the policy chose its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Sized from the measured rates to drain the backlog within the target.
    DrainTarget,
    /// Nothing produced and nothing to drain: `minReplicas`.
    Idle,
    /// A lower count is wanted, held until the scale-down delay has passed.
    ScaleDownHeld,
    /// No consume rate known yet: the `lagThreshold` rule.
    RateUnknown,
    /// The busy consumers committed nothing: the `lagThreshold` rule.
    NoProgress,
    /// No sample at all (the lag could not be read): the last decision is held.
    NoSamples,
}

impl Reason {
    /// CamelCase name, as a condition reason and a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DrainTarget => "DrainTarget",
            Self::Idle => "Idle",
            Self::ScaleDownHeld => "ScaleDownHeld",
            Self::RateUnknown => "RateUnknown",
            Self::NoProgress => "NoProgress",
            Self::NoSamples => "NoSamples",
        }
    }

    /// Whether the count came from the fallback `lagThreshold` rule.
    pub fn is_fallback(self) -> bool {
        matches!(self, Self::RateUnknown | Self::NoProgress | Self::NoSamples)
    }
}

/// What the policy decided, with the figures behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Replicas to run now.
    pub replicas: i32,
    /// Why.
    pub reason: Reason,
    /// The count wanted before the scale-down hold.
    pub target: i32,
    /// Lag at the newest sample.
    pub lag: u64,
    /// Produce rate (records/s, see [`produce_rate`]), when the window has two samples.
    pub produce_rate: Option<f64>,
    /// Per-replica consume rate used (records/s).
    pub per_replica_rate: Option<f64>,
    /// Per-replica consume rate measured in this window (to remember as the next `known_rate`).
    pub measured_rate: Option<f64>,
}

impl Decision {
    /// One line for the status condition and the Event.
    pub fn message(&self, target_drain_seconds: i64) -> String {
        let rates = match (self.produce_rate, self.per_replica_rate) {
            (Some(p), Some(c)) => format!(", produce {p:.1}/s, {c:.1}/s per replica"),
            (Some(p), None) => format!(", produce {p:.1}/s, per-replica rate unknown"),
            _ => String::new(),
        };
        let why = match self.reason {
            Reason::DrainTarget => format!("drains the backlog within {target_drain_seconds} s"),
            Reason::Idle => "nothing to drain and nothing produced".to_owned(),
            Reason::ScaleDownHeld => format!(
                "holding until the scale-down delay has passed (then {})",
                self.target
            ),
            Reason::RateUnknown => "consume rate not measured yet: lag ÷ lagThreshold".to_owned(),
            Reason::NoProgress => "busy consumers committed nothing: lag ÷ lagThreshold".to_owned(),
            Reason::NoSamples => "no offsets read: holding".to_owned(),
        };
        format!(
            "{} replicas: {why} (lag {}{rates})",
            self.replicas, self.lag
        )
    }
}

/// The samples after the last discontinuity: a counter going backwards (topic recreated, offsets
/// deleted), a changed partition count, or a time not after the previous sample.
pub fn usable_window(samples: &[Sample]) -> &[Sample] {
    let mut start = samples.len().saturating_sub(1);
    while start > 0 {
        let (a, b) = (samples[start - 1], samples[start]);
        if b.end_offsets < a.end_offsets
            || b.committed < a.committed
            || b.partitions != a.partitions
            || b.time <= a.time
        {
            break;
        }
        start -= 1;
    }
    &samples[start..]
}

/// Per-replica consume rate over the busy, settled intervals of `window`, if it has any.
pub fn measured_rate(window: &[Sample]) -> Option<f64> {
    let mut consumed = 0.0;
    let mut replica_seconds = 0.0;
    for pair in window.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // The same consumers in this interval and the one before it.
        let settled = b.replicas > 0 && b.replicas == a.replicas;
        let done = b.committed.saturating_sub(a.committed);
        let busy = a.lag() >= done && b.lag() > 0;
        if settled && busy {
            consumed += done as f64;
            replica_seconds += f64::from(b.replicas) * (b.time - a.time);
        }
    }
    (replica_seconds > 0.0).then(|| consumed / replica_seconds)
}

/// Produce rate (records/s) over the last [`PRODUCE_SECONDS`] of `window` (at least its last two
/// samples), when it has two samples: recent enough to follow a burst's start and end.
pub fn produce_rate(window: &[Sample]) -> Option<f64> {
    let last = window.last()?;
    let first = window
        .iter()
        .rev()
        .skip(1)
        .find(|s| last.time - s.time >= PRODUCE_SECONDS)
        .or_else(|| window.iter().rev().nth(1))?;
    let dt = last.time - first.time;
    (dt > 0.0).then(|| last.end_offsets.saturating_sub(first.end_offsets) as f64 / dt)
}

/// `[lower, upper]`: `minReplicas` and `min(maxReplicas, partitions)` (partitions 0: no cap).
fn bounds(policy: &Autoscaling, partitions: u32) -> (i32, i32) {
    let max = policy.max_replicas.max(0);
    let upper = match i32::try_from(partitions) {
        Ok(p) if p > 0 => max.min(p),
        _ => max,
    };
    (policy.min_replicas.clamp(0, upper), upper)
}

/// Records/s `n` consumers drain from `partitions` equally loaded partitions, in units of one
/// consumer's rate: the busiest member reads `ceil(partitions / n)` partitions and bounds the
/// group, so 4 consumers on 6 partitions do what 3 do.
fn spread_capacity(n: i32, partitions: i32) -> f64 {
    let busiest = (partitions + n - 1) / n;
    f64::from(partitions) / f64::from(busiest)
}

/// The fewest consumers in `[lower, upper]` whose spread capacity reaches `needed` (in units of
/// one consumer's rate), else the fewest with the most capacity `upper` allows; for 6
/// partitions the counts are 1, 2, 3, 6. Partitions 0 (unknown): `ceil(needed)` clamped.
pub fn even_spread(needed: f64, partitions: u32, lower: i32, upper: i32) -> i32 {
    let p = i32::try_from(partitions).unwrap_or(0);
    if needed.is_nan() || needed <= 0.0 {
        return lower;
    }
    if p <= 0 || upper <= 0 {
        let n = if needed >= f64::from(upper) {
            upper
        } else {
            needed.ceil() as i32
        };
        return n.clamp(lower, upper);
    }
    let mut best = lower.max(1).min(upper);
    for n in lower.max(1)..=upper {
        let capacity = spread_capacity(n, p);
        if capacity >= needed {
            return n;
        }
        if capacity > spread_capacity(best, p) {
            best = n;
        }
    }
    best
}

/// The scale-down hold of both rules: `target` at once when it is higher (or on the first
/// decision), a lower one only once `delay` seconds have passed since `last_scale`.
fn hold(target: i32, current: Option<i32>, last_scale: Option<f64>, now: f64, delay: i64) -> i32 {
    match (current, last_scale) {
        (Some(c), Some(last)) if target < c && now - last < delay as f64 => c,
        _ => target,
    }
}

/// The `lagThreshold` rule ([`crate::scaling::desired_replicas`]) on plain seconds: also the
/// drain policy's fallback and the bench's baseline.
pub fn lag_rule(
    policy: &Autoscaling,
    lag: u64,
    partitions: u32,
    current: Option<i32>,
    last_scale: Option<f64>,
    now: f64,
) -> i32 {
    let target = target_replicas(policy, lag, partitions);
    hold(
        target,
        current,
        last_scale,
        now,
        policy.scale_down_delay_seconds,
    )
}

/// The drain policy.
pub fn decide(input: &DrainInput<'_>) -> Decision {
    let policy = input.policy;
    let Some(now) = input.samples.last().copied() else {
        let (lower, _) = bounds(policy, 0);
        let replicas = input.current.filter(|c| *c > 0).unwrap_or(lower);
        return Decision {
            replicas,
            reason: Reason::NoSamples,
            target: replicas,
            lag: 0,
            produce_rate: None,
            per_replica_rate: None,
            measured_rate: None,
        };
    };
    let window = usable_window(input.samples);
    let lag = now.lag();
    let produce = produce_rate(window);
    let measured = measured_rate(window);
    let delay = policy
        .scale_down_delay_seconds
        .max(MIN_SCALE_DOWN_DELAY_SECONDS);
    let (lower, upper) = bounds(policy, now.partitions);
    let per_replica = match measured {
        Some(r) if r > 0.0 => Some(r),
        Some(_) => None,
        None => input.known_rate.filter(|r| r.is_finite() && *r > 0.0),
    };
    let mut decision = Decision {
        replicas: 0,
        reason: Reason::DrainTarget,
        target: 0,
        lag,
        produce_rate: produce,
        per_replica_rate: per_replica,
        measured_rate: measured.filter(|r| *r > 0.0),
    };
    let target = match (produce, per_replica) {
        (Some(p), _) if p == 0.0 && lag == 0 => {
            decision.reason = Reason::Idle;
            lower
        }
        (Some(p), Some(rate)) => {
            let target_seconds = input.policy.target_drain_seconds.unwrap_or(1).max(1) as f64;
            let needed = (p + lag as f64 / target_seconds) / rate;
            even_spread(needed, now.partitions, lower, upper)
        }
        _ => {
            decision.reason = if measured.is_some() {
                Reason::NoProgress
            } else {
                Reason::RateUnknown
            };
            target_replicas(policy, lag, now.partitions)
        }
    };
    decision.target = target;
    decision.replicas = hold(target, input.current, input.last_scale, now.time, delay);
    if decision.replicas != target {
        decision.reason = Reason::ScaleDownHeld;
    }
    decision
}

/// What the operator keeps per resource between reconciles (in memory: a restart starts afresh).
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Recent samples, oldest first.
    pub samples: VecDeque<Sample>,
    /// The last per-replica rate measured.
    pub known_rate: Option<f64>,
}

impl Window {
    /// Adds `sample`, dropping those older than [`WINDOW_SECONDS`] before it and beyond
    /// [`MAX_SAMPLES`]; a sample not later than the newest replaces it (two reconciles at once).
    pub fn push(&mut self, sample: Sample) {
        if self
            .samples
            .back()
            .is_some_and(|last| last.time >= sample.time)
        {
            self.samples.pop_back();
        }
        self.samples.push_back(sample);
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|s| sample.time - s.time > WINDOW_SECONDS)
        {
            self.samples.pop_front();
        }
    }
}

/// The windows of all resources, keyed by resource (namespace/name and uid).
#[derive(Debug, Default)]
pub struct Windows(Mutex<HashMap<String, Window>>);

impl Windows {
    /// Records `sample` for `key`, decides with the window, remembers a measured rate.
    pub fn record_and_decide(
        &self,
        key: &str,
        sample: Sample,
        policy: &Autoscaling,
        current: Option<i32>,
        last_scale: Option<f64>,
    ) -> Decision {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let window = all.entry(key.to_owned()).or_default();
        window.push(sample);
        let samples: Vec<Sample> = window.samples.iter().copied().collect();
        let decision = decide(&DrainInput {
            policy,
            samples: &samples,
            known_rate: window.known_rate,
            current,
            last_scale,
        });
        if let Some(rate) = decision.measured_rate {
            window.known_rate = Some(rate);
        }
        decision
    }

    /// Forgets `key` (resource deleted or no longer in drain mode).
    pub fn forget(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Samples held for `key`.
    pub fn len(&self, key: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .map_or(0, |w| w.samples.len())
    }
}

/// The operator's side: samples from [`GroupLag`] readings and the status.
pub mod operator {
    use k8s_openapi::jiff::Timestamp;
    use kube::ResourceExt;

    use super::Sample;
    use crate::crd::{ProfileConsumer, ProfileConsumerStatus};
    use crate::lag::GroupLag;

    /// Seconds since the Unix epoch, as the samples' time.
    pub fn seconds(t: Timestamp) -> f64 {
        t.as_millisecond() as f64 / 1000.0
    }

    /// The sample of a reading taken `now`; the consumers that ran since the previous reconcile
    /// are its ready replicas when its rollout had settled (0 otherwise).
    pub fn sample(
        lag: &GroupLag,
        previous: Option<&ProfileConsumerStatus>,
        now: Timestamp,
    ) -> Sample {
        let replicas = previous
            .filter(|s| s.ready_replicas == s.desired_replicas && s.replicas == s.desired_replicas)
            .map_or(0, |s| s.ready_replicas);
        Sample {
            time: seconds(now),
            end_offsets: lag.end_offsets,
            committed: lag.committed,
            replicas,
            partitions: lag.partitions,
        }
    }

    /// Key of a resource's window: a resource recreated under the same name starts afresh.
    pub fn key(pc: &ProfileConsumer) -> String {
        format!(
            "{}/{}/{}",
            pc.namespace().unwrap_or_default(),
            pc.name_any(),
            pc.uid().unwrap_or_default()
        )
    }
}

#[cfg(test)]
#[path = "drain_tests.rs"]
mod tests;
