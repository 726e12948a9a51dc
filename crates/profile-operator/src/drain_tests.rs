//! The drain policy as a pure function over recorded offset series.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::scaling::{ScaleInput, desired_replicas};

const STEP: f64 = 30.0;

fn policy(min: i32, max: i32, threshold: i64, target: i64) -> Autoscaling {
    Autoscaling {
        min_replicas: min,
        max_replicas: max,
        lag_threshold: threshold,
        scale_down_delay_seconds: 300,
        target_drain_seconds: Some(target),
    }
}

/// A series sampled every 30 s from `t = 0`: `(sum of end offsets, sum of committed offsets,
/// consumers in the interval ending there)`.
fn series(partitions: u32, points: &[(u64, u64, i32)]) -> Vec<Sample> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(end_offsets, committed, replicas))| Sample {
            time: i as f64 * STEP,
            end_offsets,
            committed,
            replicas,
            partitions,
        })
        .collect()
}

/// `n` samples: per 30 s, `produced` records arrive and `consumed` are committed, from
/// `(end, committed)`, with `replicas` consumers throughout.
fn linear(
    partitions: u32,
    n: usize,
    start: (u64, u64),
    produced: u64,
    consumed: u64,
    replicas: i32,
) -> Vec<Sample> {
    let points: Vec<_> = (0..n as u64)
        .map(|i| (start.0 + i * produced, start.1 + i * consumed, replicas))
        .collect();
    series(partitions, &points)
}

fn decide_on(
    policy: &Autoscaling,
    samples: &[Sample],
    known_rate: Option<f64>,
    current: Option<i32>,
    last_scale: Option<f64>,
) -> Decision {
    decide(&DrainInput {
        policy,
        samples,
        known_rate,
        current,
        last_scale,
    })
}

/// Long before every series: no scale-down hold applies.
const LONG_AGO: Option<f64> = Some(-10_000.0);

#[test]
fn steady_group_that_keeps_up_holds_its_count_from_the_known_rate() {
    // 120 records/s, two consumers keep up: the lag stays at 50.
    let p = policy(1, 10, 1000, 120);
    let s = linear(6, 6, (10_050, 10_000), 3600, 3600, 2);
    assert_eq!(
        measured_rate(&s),
        None,
        "a group that keeps up shows no capacity"
    );
    assert_eq!(produce_rate(&s), Some(120.0));
    let d = decide_on(&p, &s, Some(100.0), Some(2), LONG_AGO);
    // ceil((120 + 50/120) / 100) = 2, a divisor of 6.
    assert_eq!((d.replicas, d.reason), (2, Reason::DrainTarget), "{d:?}");
    assert_eq!(d.lag, 50);

    // Without a known rate (operator restarted): the lagThreshold rule, ceil(50 / 1000) = 1.
    let d = decide_on(&p, &s, None, Some(2), LONG_AGO);
    assert_eq!((d.replicas, d.reason), (1, Reason::RateUnknown), "{d:?}");
    assert!(d.reason.is_fallback());
}

#[test]
fn burst_scales_to_drain_within_the_target_capped_by_partitions() {
    // 500 records/s arrive, two busy consumers commit 100/s each; lag 20 000 → 65 000.
    let p = policy(1, 10, 20_000, 120);
    let s = linear(6, 6, (120_000, 100_000), 15_000, 6_000, 2);
    assert_eq!(measured_rate(&s), Some(100.0));
    assert_eq!(produce_rate(&s), Some(500.0));
    let d = decide_on(&p, &s, None, Some(2), Some(0.0));
    // ceil((500 + 65 000/120) / 100) = 11, capped by the 6 partitions (maxReplicas is 10).
    assert_eq!(
        (d.replicas, d.reason, d.target),
        (6, Reason::DrainTarget, 6)
    );
    assert_eq!(d.measured_rate, Some(100.0));
    assert_eq!(d.lag, 65_000);
    // The lag ÷ threshold rule on the same reading: ceil(65 000 / 20 000) = 4, which drains no
    // faster than 3 on 6 partitions and cannot keep up with 500/s.
    assert_eq!(lag_rule(&p, d.lag, 6, Some(2), Some(0.0), 150.0), 4);

    // A longer target needs fewer: ceil((500 + 65 000/3600) / 100) = 6 still (500/s alone
    // needs 5, rounded up to 6); at 250/s produced, 3.
    let relaxed = policy(1, 10, 20_000, 3600);
    let s = linear(6, 6, (120_000, 100_000), 7_500, 6_000, 2);
    let d = decide_on(&relaxed, &s, None, Some(2), Some(0.0));
    // ceil((250 + 27 500/3600) / 100) = 3.
    assert_eq!((d.replicas, d.reason), (3, Reason::DrainTarget), "{d:?}");
}

#[test]
fn slow_handler_gets_more_replicas_rounded_to_an_even_spread() {
    // The handler slowed to 30 records/s per consumer (a slow downstream); 90/s arrive.
    let p = policy(1, 12, 100_000, 600);
    let s6 = linear(6, 6, (13_000, 10_000), 2_700, 1_800, 2);
    assert_eq!(measured_rate(&s6), Some(30.0));
    let d = decide_on(&p, &s6, None, Some(2), Some(0.0));
    // ceil((90 + 7 500/600) / 30) = 4: not a divisor of 6 (two consumers would read 2
    // partitions, the group no faster than with 3), so 6.
    assert_eq!((d.replicas, d.reason), (6, Reason::DrainTarget), "{d:?}");
    // On 12 partitions 4 is even.
    let s12 = linear(12, 6, (13_000, 10_000), 2_700, 1_800, 2);
    assert_eq!(decide_on(&p, &s12, None, Some(2), Some(0.0)).replicas, 4);
    // The lag rule sees only 7 500 < 100 000 and keeps one replica.
    assert_eq!(lag_rule(&p, 7_500, 6, None, None, 0.0), 1);
}

#[test]
fn idle_group_scales_to_min_after_the_hold() {
    let p = policy(1, 10, 1000, 120);
    let s = linear(6, 6, (5_000, 5_000), 0, 0, 3);
    let d = decide_on(&p, &s, None, Some(3), LONG_AGO);
    assert_eq!((d.replicas, d.reason), (1, Reason::Idle), "{d:?}");
    assert_eq!(d.produce_rate, Some(0.0));
    // Within the delay of the last change: held.
    let d = decide_on(&p, &s, None, Some(3), Some(0.0));
    assert_eq!(
        (d.replicas, d.reason, d.target),
        (3, Reason::ScaleDownHeld, 1)
    );
    // minReplicas 0: no pods while idle.
    let zero = policy(0, 10, 1000, 120);
    assert_eq!(decide_on(&zero, &s, None, Some(3), LONG_AGO).replicas, 0);
}

#[test]
fn a_fresh_window_falls_back_to_the_lag_rule() {
    let p = policy(1, 10, 1000, 120);
    let one = series(6, &[(9_500, 5_000, 0)]);
    let d = decide_on(&p, &one, Some(100.0), None, None);
    // One sample: no produce rate yet, even with a known consume rate. ceil(4 500 / 1000) = 5.
    assert_eq!((d.replicas, d.reason), (5, Reason::RateUnknown), "{d:?}");
    assert_eq!(d.replicas, lag_rule(&p, 4_500, 6, None, None, 0.0));
}

#[test]
fn counter_reset_restarts_the_window() {
    // The topic was recreated at the 4th sample: offsets went back to near 0.
    let p = policy(1, 10, 1000, 120);
    let mut s = linear(6, 3, (120_000, 100_000), 15_000, 6_000, 2);
    s.extend(
        series(6, &[(2_000, 0, 2), (4_000, 1_000, 2)])
            .into_iter()
            .map(|x| Sample {
                time: x.time + 90.0,
                ..x
            }),
    );
    assert_eq!(usable_window(&s).len(), 2);
    assert_eq!(usable_window(&s)[0].end_offsets, 2_000);
    let d = decide_on(&p, &s, None, Some(2), LONG_AGO);
    // The pre-reset burst does not count; the one interval after the reset is busy (lag 2 000 at
    // its start ≥ 1 000 consumed, 3 000 left): 1 000 records / 60 replica-seconds.
    assert_eq!(d.measured_rate.map(|r| (r * 100.0).round()), Some(1667.0));
    assert_eq!(d.produce_rate, Some(2_000.0 / 30.0));

    // A reset at the newest sample leaves one sample: fallback.
    let mut s = linear(6, 4, (120_000, 100_000), 15_000, 6_000, 2);
    s.push(Sample {
        time: 4.0 * STEP,
        end_offsets: 10,
        committed: 0,
        replicas: 2,
        partitions: 6,
    });
    let d = decide_on(&p, &s, None, Some(2), LONG_AGO);
    assert_eq!(d.reason, Reason::RateUnknown, "{d:?}");
    // A changed partition count restarts it too.
    let mut s = linear(6, 4, (120_000, 100_000), 15_000, 6_000, 2);
    s[3].partitions = 12;
    assert_eq!(usable_window(&s).len(), 1);
}

#[test]
fn zero_partitions_means_no_cap_and_no_rounding() {
    let p = policy(1, 10, 20_000, 120);
    let s = linear(0, 6, (120_000, 100_000), 15_000, 6_000, 2);
    let d = decide_on(&p, &s, None, Some(2), Some(0.0));
    // 11 wanted, maxReplicas 10.
    assert_eq!((d.replicas, d.reason), (10, Reason::DrainTarget));
    let p = policy(1, 20, 20_000, 3600);
    let s = linear(0, 6, (120_000, 100_000), 12_000, 6_000, 2);
    // ceil((400 + 56 000/3600) / 100) = 5, kept as is.
    assert_eq!(decide_on(&p, &s, None, Some(2), Some(0.0)).replicas, 5);
}

#[test]
fn missing_samples_give_the_same_rates() {
    let p = policy(1, 10, 20_000, 120);
    let full = linear(6, 6, (120_000, 100_000), 15_000, 6_000, 2);
    let gappy: Vec<Sample> = full
        .iter()
        .enumerate()
        .filter(|(i, _)| ![2, 3].contains(i))
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(gappy.len(), 4);
    assert_eq!(measured_rate(&gappy), Some(100.0));
    assert_eq!(produce_rate(&gappy), Some(500.0));
    assert_eq!(
        decide_on(&p, &gappy, None, Some(2), Some(0.0)),
        decide_on(&p, &full, None, Some(2), Some(0.0))
    );
}

#[test]
fn busy_consumers_without_progress_fall_back_to_the_lag_rule() {
    // 5 000 records of lag, two consumers, nothing committed (stuck on a poison record or a
    // dead downstream): more consumers would not help.
    let p = policy(1, 10, 1000, 120);
    let s = linear(6, 6, (10_000, 5_000), 100, 0, 2);
    assert_eq!(measured_rate(&s), Some(0.0));
    let d = decide_on(&p, &s, Some(100.0), Some(2), LONG_AGO);
    assert_eq!(d.reason, Reason::NoProgress, "{d:?}");
    assert_eq!(d.replicas, lag_rule(&p, d.lag, 6, Some(2), LONG_AGO, 150.0));
}

#[test]
fn intervals_around_a_membership_change_are_left_out() {
    // 2 consumers at 100/s, then a scale-up to 4: the interval of the change stalls (rebalance)
    // and the one after it has new members; neither counts. Then 4 consumers at 100/s.
    let s = series(
        6,
        &[
            (200_000, 100_000, 2),
            (215_000, 106_000, 2),
            (230_000, 106_000, 0), // rollout in progress: not settled
            (245_000, 112_000, 4),
            (260_000, 124_000, 4),
            (275_000, 136_000, 4),
        ],
    );
    // (6 000 + 12 000 + 12 000) / (2·30 + 4·30 + 4·30) = 100.
    assert_eq!(measured_rate(&s), Some(100.0));
}

#[test]
fn scale_down_hold_is_at_least_the_rebalance_minimum() {
    let mut p = policy(1, 10, 1000, 120);
    p.scale_down_delay_seconds = 0;
    let s = linear(6, 3, (5_000, 5_000), 0, 0, 3);
    // Last change 59 s before the newest sample (t = 60).
    let d = decide_on(&p, &s, None, Some(3), Some(1.0));
    assert_eq!((d.replicas, d.reason), (3, Reason::ScaleDownHeld));
    let d = decide_on(&p, &s, None, Some(3), Some(0.0));
    assert_eq!((d.replicas, d.reason), (1, Reason::Idle));
    // Scale-up is never held.
    let burst = linear(6, 6, (120_000, 100_000), 15_000, 6_000, 2);
    let d = decide_on(&p, &burst, None, Some(2), Some(149.0));
    assert_eq!(d.replicas, 6);
}

#[test]
fn even_spread_rounds_up_to_counts_that_spread_partitions_evenly() {
    let rounded: Vec<i32> = (0..=7)
        .map(|n| even_spread(f64::from(n), 6, 1, 6))
        .collect();
    assert_eq!(rounded, [1, 1, 2, 3, 6, 6, 6, 6]);
    assert_eq!(even_spread(2.01, 6, 1, 6), 3);
    assert_eq!(even_spread(3.01, 6, 1, 6), 6);
    // maxReplicas 5 on 6 partitions: 4 or 5 wanted gives 3 (5 consumers are no faster).
    assert_eq!(even_spread(4.0, 6, 1, 5), 3);
    assert_eq!(even_spread(5.0, 6, 1, 5), 3);
    // minReplicas wins even when it spreads unevenly.
    assert_eq!(even_spread(1.0, 6, 4, 6), 4);
    // 7 partitions: 3 consumers (3, 2, 2) beat 2 (4, 3); 4 (2, 2, 2, 1) is the best below 7.
    assert_eq!(even_spread(2.0, 7, 1, 7), 3);
    assert_eq!(even_spread(5.0, 7, 1, 6), 4);
    assert_eq!(even_spread(5.0, 7, 1, 7), 7);
    // Unknown partitions: the clamp only.
    assert_eq!(even_spread(3.2, 0, 1, 10), 4);
    assert_eq!(even_spread(40.0, 0, 1, 10), 10);
    assert_eq!(even_spread(f64::INFINITY, 0, 1, 10), 10);
    assert_eq!(even_spread(f64::NAN, 6, 1, 6), 1);
}

#[test]
fn never_more_than_partitions_or_max_never_less_than_min() {
    for partitions in [0u32, 1, 2, 3, 4, 6, 7, 12] {
        for max in [1, 3, 5, 10] {
            for min in [0, 1, 2] {
                if min > max {
                    continue;
                }
                for (produced, consumed, replicas) in [
                    (0, 0, 1),
                    (3_600, 3_600, 2),
                    (15_000, 6_000, 2),
                    (100, 0, 3),
                ] {
                    let p = policy(min, max, 1000, 60);
                    let s = linear(
                        partitions,
                        6,
                        (50_000, 40_000),
                        produced,
                        consumed,
                        replicas,
                    );
                    for known in [None, Some(1.0), Some(1e9)] {
                        let d = decide_on(&p, &s, known, None, None);
                        let upper = if partitions == 0 {
                            max
                        } else {
                            max.min(partitions as i32)
                        };
                        assert!(d.replicas <= upper, "{partitions} {max} {d:?}");
                        assert!(d.replicas >= min.min(upper), "{partitions} {min} {d:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_fallback_is_the_lag_threshold_rule() {
    let at = |s: i64| k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).unwrap();
    let p = policy(1, 8, 100, 120);
    for lag in [0u64, 1, 99, 100, 101, 450, 10_000] {
        for partitions in [0u32, 3, 6] {
            for (current, last) in [(None, None), (Some(5), Some(-100)), (Some(5), Some(-400))] {
                let expected = desired_replicas(&ScaleInput {
                    policy: &p,
                    lag,
                    partitions,
                    current,
                    last_scale: last.map(at),
                    now: at(0),
                });
                let got = lag_rule(&p, lag, partitions, current, last.map(|s| s as f64), 0.0);
                assert_eq!(
                    got, expected,
                    "lag {lag}, partitions {partitions}, {current:?}"
                );
            }
        }
    }
}

#[test]
fn no_samples_holds_the_last_decision() {
    let p = policy(2, 10, 1000, 120);
    let d = decide_on(&p, &[], None, Some(4), None);
    assert_eq!((d.replicas, d.reason), (4, Reason::NoSamples));
    assert_eq!(decide_on(&p, &[], None, None, None).replicas, 2);
}

#[test]
fn huge_offsets_do_not_overflow() {
    let p = policy(1, 10, 1, 1);
    let s = series(6, &[(0, 0, 1), (u64::MAX, 0, 1), (u64::MAX, 1, 1)]);
    let d = decide_on(&p, &s, None, None, None);
    assert_eq!(d.replicas, 6);
    let d = decide_on(&p, &s, Some(f64::MIN_POSITIVE), None, None);
    assert_eq!(d.replicas, 6);
}

#[test]
fn windows_keep_recent_samples_and_remember_the_rate() {
    let p = policy(1, 10, 20_000, 120);
    let windows = Windows::default();
    let mut last = None;
    // A burst the two consumers cannot keep up with…
    for s in linear(6, 6, (120_000, 100_000), 15_000, 6_000, 2) {
        last = Some(windows.record_and_decide("ns/a/uid", s, &p, Some(2), Some(0.0)));
    }
    assert_eq!(last.unwrap().replicas, 6);
    // …then six consumers have caught up and keep up with 120/s: the burst's rate is remembered,
    // ceil((120 + 0/120) / 100) = 2 once the hold is over.
    let caught_up = linear(6, 12, (400_000, 400_000), 3_600, 3_600, 6);
    for s in caught_up {
        let s = Sample {
            time: s.time + 1_000.0,
            ..s
        };
        last = Some(windows.record_and_decide("ns/a/uid", s, &p, Some(6), Some(500.0)));
    }
    let d = last.unwrap();
    assert_eq!((d.replicas, d.reason), (2, Reason::DrainTarget), "{d:?}");
    assert_eq!(d.per_replica_rate, Some(100.0));
    // The window is bounded by age: 300 s at 30 s steps is 11 samples.
    assert_eq!(windows.len("ns/a/uid"), 11);
    windows.forget("ns/a/uid");
    assert_eq!(windows.len("ns/a/uid"), 0);
    let mut w = Window::default();
    for i in 0..100 {
        w.push(Sample {
            time: f64::from(i),
            end_offsets: 0,
            committed: 0,
            replicas: 1,
            partitions: 1,
        });
    }
    assert_eq!(w.samples.len(), MAX_SAMPLES);
    // A sample at the same time replaces the newest.
    let mut again = *w.samples.back().unwrap();
    again.committed = 7;
    w.push(again);
    assert_eq!(w.samples.len(), MAX_SAMPLES);
    assert_eq!(w.samples.back().unwrap().committed, 7);
}

#[test]
fn messages_say_why() {
    let p = policy(1, 10, 20_000, 120);
    let s = linear(6, 6, (120_000, 100_000), 15_000, 6_000, 2);
    let d = decide_on(&p, &s, None, Some(2), Some(0.0));
    assert_eq!(
        d.message(120),
        "6 replicas: drains the backlog within 120 s (lag 65000, produce 500.0/s, 100.0/s per replica)"
    );
    let d = decide_on(&p, &s[..1], None, None, None);
    assert!(
        d.message(120).contains("lag ÷ lagThreshold"),
        "{}",
        d.message(120)
    );
}
