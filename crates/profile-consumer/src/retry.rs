//! The exponential backoff between attempts at a record (and at a dead-letter produce).
//!
//! Deterministic on purpose: one consumer retries one record at a time, so there is no herd to
//! spread with jitter, and a fixed schedule is easy to reason about and to test.

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
}
