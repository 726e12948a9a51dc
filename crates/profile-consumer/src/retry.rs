//! The exponential backoff between attempts at a record (and at a dead-letter produce).
//!
//! Capped, with jitter: during an outage every partition of every replica retries against the
//! same dependency, and without jitter they would all knock at once when it comes back.

use std::time::Duration;

/// `base * 2^(n-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// A schedule starting at `base` and never longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The pause after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// [`Backoff::delay`] with "equal jitter": half the delay, plus `unit` (in `[0, 1)`, drawn
    /// by the caller) of the other half. Never below half the delay, never above it.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let delay = self.delay(attempt);
        let half = delay / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let schedule: Vec<u128> = (1..=8).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(schedule, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.delay(0), Duration::from_millis(100));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_between_half_the_delay_and_the_delay() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff.jittered(3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff.jittered(3, 0.5), Duration::from_millis(300));
        assert_eq!(backoff.jittered(3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff.jittered(40, 0.99), Duration::from_millis(4975));
        assert_eq!(backoff.jittered(1, 7.0), Duration::from_millis(100));
    }
}
