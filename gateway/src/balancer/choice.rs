//! Choosing a gateway: power of two choices on free capacity.
//!
//! Picking the least-loaded gateway from a view that is up to a second old
//! sends every client of that second to the same node (herding). Picking two
//! at random and keeping the one with more free capacity spreads clients
//! almost as evenly as a perfect least-loaded choice while staying robust to
//! stale numbers: the fullest node is never chosen, and no node is chosen by
//! every request. The balancer also counts its own placements since the last
//! refresh (`placed`) so a burst between two refreshes sees its own effect.

use crate::membership::{NodeRecord, NodeState, Role};

/// True if a record may receive new clients: a gateway, ready, with a public
/// URL, free capacity, and a heartbeat no older than `fresh_ms`.
///
/// A capacity of 0 means "unknown" and makes the gateway ineligible: the
/// balancer cannot weigh what it cannot measure.
pub fn eligible(record: &NodeRecord, age_ms: u64, fresh_ms: u64) -> bool {
    record.role == Role::Gateway
        && record.state == NodeState::Ready
        && age_ms <= fresh_ms
        && !record.url.is_empty()
        && record.free() > 0
}

/// Chooses one of `n` candidates by power of two choices; `free(i)` is the
/// free capacity of candidate `i`. Returns `None` when `n == 0` or nothing
/// has free capacity.
pub fn pick(n: usize, free: impl Fn(usize) -> u64, rng: &mut fastrand::Rng) -> Option<usize> {
    let best = match n {
        0 => return None,
        1 => 0,
        _ => {
            let a = rng.usize(..n);
            let mut b = rng.usize(..n - 1);
            if b >= a {
                b += 1;
            }
            // `a` is uniformly random, so ties split evenly.
            if free(a) >= free(b) {
                a
            } else {
                b
            }
        }
    };
    if free(best) > 0 {
        return Some(best);
    }
    // Both samples are full (only possible when most are): take the freest.
    (0..n).max_by_key(|&i| free(i)).filter(|&i| free(i) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_full() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(pick(0, |_| 10, &mut rng), None);
        assert_eq!(pick(1, |_| 0, &mut rng), None);
        assert_eq!(pick(1, |_| 3, &mut rng), Some(0));
        assert_eq!(pick(4, |_| 0, &mut rng), None);
        for _ in 0..100 {
            assert_eq!(pick(4, |i| u64::from(i == 2), &mut rng), Some(2));
        }
    }

    #[test]
    fn never_picks_the_fullest_of_many() {
        let mut rng = fastrand::Rng::with_seed(7);
        let free = [100, 90, 80, 5];
        for _ in 0..10_000 {
            assert_ne!(pick(4, |i| free[i], &mut rng), Some(3));
        }
    }
}
