//! The pure scaling rule.
//!
//! Target = `ceil(lag / lagThreshold)` clamped to `[minReplicas, min(maxReplicas, partitions)]`:
//! a consumer group never uses more members than partitions, so more pods would idle. Scale-up
//! applies at once; scale-down only once `scaleDownDelaySeconds` have passed since the last change,
//! so a burst that is drained quickly does not make the pods flap.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::Autoscaling;

/// Everything the rule looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleInput<'a> {
    /// The resource's autoscaling settings.
    pub policy: &'a Autoscaling,
    /// Records not yet committed by the group, over all partitions.
    pub lag: u64,
    /// Partitions of all topics together; 0 means unknown (no cap).
    pub partitions: u32,
    /// Replicas decided last time (`status.desiredReplicas`), `None` on the first reconcile.
    pub current: Option<i32>,
    /// When the replicas last changed (`status.lastScaleTime`).
    pub last_scale: Option<Timestamp>,
    /// Now.
    pub now: Timestamp,
}

/// `ceil(lag / threshold)` clamped to `[min, min(max, partitions)]`, ignoring the delay.
pub fn target_replicas(policy: &Autoscaling, lag: u64, partitions: u32) -> i32 {
    let threshold = u64::try_from(policy.lag_threshold.max(1)).unwrap_or(1);
    let wanted = i32::try_from(lag.div_ceil(threshold)).unwrap_or(i32::MAX);
    let max = policy.max_replicas.max(0);
    let upper = match i32::try_from(partitions) {
        Ok(0) => max,
        Ok(p) => max.min(p),
        Err(_) => max,
    };
    let lower = policy.min_replicas.clamp(0, upper);
    wanted.clamp(lower, upper)
}

/// Replicas to run now: the target at once when it is higher (or on the first decision), the
/// target when lower only after the scale-down delay, else the current count.
pub fn desired_replicas(input: &ScaleInput<'_>) -> i32 {
    let target = target_replicas(input.policy, input.lag, input.partitions);
    let Some(current) = input.current else {
        return target;
    };
    if target >= current {
        return target;
    }
    let delay = SignedDuration::from_secs(input.policy.scale_down_delay_seconds.max(0));
    match input.last_scale {
        Some(last) if input.now.duration_since(last) < delay => current,
        _ => target,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(min: i32, max: i32, threshold: i64) -> Autoscaling {
        Autoscaling {
            min_replicas: min,
            max_replicas: max,
            lag_threshold: threshold,
            scale_down_delay_seconds: 300,
            target_drain_seconds: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn input(policy: &Autoscaling, lag: u64, partitions: u32) -> ScaleInput<'_> {
        ScaleInput {
            policy,
            lag,
            partitions,
            current: None,
            last_scale: None,
            now: at(0),
        }
    }

    #[test]
    fn zero_lag_gives_min_replicas() {
        assert_eq!(desired_replicas(&input(&policy(1, 10, 100), 0, 8)), 1);
        assert_eq!(desired_replicas(&input(&policy(0, 10, 100), 0, 8)), 0);
    }

    #[test]
    fn lag_is_divided_by_the_threshold_rounding_up() {
        assert_eq!(desired_replicas(&input(&policy(1, 10, 100), 101, 8)), 2);
        assert_eq!(desired_replicas(&input(&policy(1, 10, 100), 300, 8)), 3);
    }

    #[test]
    fn lag_above_max_gives_max_replicas() {
        assert_eq!(
            desired_replicas(&input(&policy(1, 5, 100), 1_000_000, 50)),
            5
        );
    }

    #[test]
    fn never_more_replicas_than_partitions() {
        assert_eq!(desired_replicas(&input(&policy(1, 10, 100), 1000, 4)), 4);
        // Even min is capped by the partitions.
        assert_eq!(desired_replicas(&input(&policy(6, 10, 100), 0, 4)), 4);
    }

    #[test]
    fn unknown_partition_count_does_not_cap() {
        assert_eq!(desired_replicas(&input(&policy(1, 10, 100), 1000, 0)), 10);
    }

    #[test]
    fn scale_up_is_immediate() {
        let p = policy(1, 10, 100);
        let mut i = input(&p, 800, 16);
        i.current = Some(2);
        i.last_scale = Some(at(-1));
        assert_eq!(desired_replicas(&i), 8);
    }

    #[test]
    fn scale_down_waits_for_the_delay() {
        let p = policy(1, 10, 100);
        let mut i = input(&p, 0, 16);
        i.current = Some(8);
        i.last_scale = Some(at(-299));
        assert_eq!(desired_replicas(&i), 8, "299 s after the last change");
        i.last_scale = Some(at(-300));
        assert_eq!(desired_replicas(&i), 1, "300 s after the last change");
        i.last_scale = None;
        assert_eq!(desired_replicas(&i), 1, "no recorded change");
    }

    #[test]
    fn huge_lag_does_not_overflow() {
        assert_eq!(desired_replicas(&input(&policy(1, 10, 1), u64::MAX, 0)), 10);
    }
}
