//! Reconnect delays: capped exponential backoff with full jitter (AWS
//! architecture blog, "Exponential Backoff And Jitter"): the delay is uniform
//! in `[0, min(cap, base * 2^attempt))`, so a server restart does not bring
//! every client back in the same instant.

use crate::rng::Rng;
use std::time::Duration;

/// Backoff policy.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay scale of the first retry.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling for retry number `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.min(30)).unwrap_or(u64::MAX);
        let ms = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap)
    }

    /// A jittered delay for retry number `attempt`.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Duration {
        self.ceiling(attempt).mul_f64(rng.next_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(1600));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(200), Duration::from_secs(2));
    }

    #[test]
    fn delay_is_within_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let mut rng = Rng::new(1);
        for attempt in 0..10 {
            for _ in 0..100 {
                assert!(b.delay(attempt, &mut rng) < b.ceiling(attempt));
            }
        }
    }
}
