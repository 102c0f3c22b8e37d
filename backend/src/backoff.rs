//! Capped exponential backoff with full jitter: the one implementation for
//! every reconnect loop in the workspace (RabbitMQ and Redis sessions in
//! `backend`, membership heartbeats, the gateway's example client, the load
//! tester's reconnecting connections).
//!
//! Full jitter (sleep a uniform random time in `[0, min(cap, base * 2^n)]`,
//! AWS architecture blog, "Exponential Backoff And Jitter") spreads the
//! retries of many processes that lost the same server at the same moment,
//! instead of letting them reconnect in lockstep.
//!
//! Two ways to use it: a [`Backoff`] counts its own failures (`next_delay`,
//! `reset`) for one reconnect loop; [`Backoff::ceiling_at`] and
//! [`Backoff::delay_at`] are stateless, for callers that keep one attempt
//! counter per connection and their own (seeded) random numbers.

use std::time::Duration;

/// Reconnect delay generator: `next_delay()` grows the ceiling, `reset()`
/// after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s: the broker and Redis reconnect loops.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The ceiling for retry number `attempt` (0 for the first retry):
    /// `min(cap, base * 2^attempt)`.
    pub fn ceiling_at(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay for retry number `attempt` given a uniform random `unit` in
    /// `[0, 1]` (values outside are clamped): `unit * ceiling_at(attempt)`.
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling_at(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The current ceiling: [`ceiling_at`](Self::ceiling_at) of the failures
    /// so far.
    pub fn ceiling(&self) -> Duration {
        self.ceiling_at(self.attempt)
    }

    /// The next delay: uniform in `[0, ceiling]`, then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// Number of failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2));
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn stateless_form_matches_and_stays_within_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling_at(0), Duration::from_millis(100));
        assert_eq!(b.ceiling_at(4), Duration::from_millis(1600));
        assert_eq!(b.ceiling_at(200), Duration::from_secs(2));
        assert_eq!(b.delay_at(1, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay_at(3, 7.0), Duration::from_millis(800));
        assert_eq!(b.delay_at(3, -1.0), Duration::ZERO);
        assert_eq!(Backoff::default().ceiling_at(10), Duration::from_secs(5));
    }
}
