//! Masters and workers in the membership registry: the glue between a
//! process's in-flight counter and the generic
//! [`Heartbeat`](crate::membership::Heartbeat), so `gateway status` shows
//! every role (the gateway's own glue is `gateway::membership`).
//!
//! The record's `connections` is the jobs (master) or tasks (worker) being
//! handled right now, `capacity` the prefetch (`--jobs`, `--concurrency`).
//! `admin` is the bound `--admin` address (empty without one); masters and
//! workers have no public URL, so that field stays empty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::membership::{Heartbeat, HeartbeatConfig, Load, Role};

/// Jobs or tasks in flight, counted by RAII guards so that every exit path
/// (panic, early return, lost broker) gives the slot back.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    /// Counts one more until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One job or task in flight; see [`InFlight::enter`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicU64>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The record's identity and where it is written.
pub(super) struct Presence<'a> {
    pub redis_url: &'a str,
    /// Registry key prefix (the namespace's Redis prefix).
    pub key_prefix: String,
    pub role: Role,
    pub id: &'a str,
    pub capacity: u64,
    /// Bound admin HTTP address (`host:port`), or empty.
    pub admin: String,
}

/// Starts the heartbeat thread. A bad Redis URL is logged, not fatal: the
/// node still works, it is just not listed (the same as Redis being down).
pub(super) fn start(p: Presence<'_>, in_flight: &InFlight) -> Option<Heartbeat> {
    let mut config = HeartbeatConfig::new(p.redis_url, p.role, p.id);
    config.key_prefix = p.key_prefix;
    config.admin = p.admin;
    let (count, capacity) = (in_flight.clone(), p.capacity);
    let load = Arc::new(move || Load {
        connections: count.get(),
        capacity,
        draining: false,
    });
    match Heartbeat::start(config, load) {
        Ok(hb) => Some(hb),
        Err(e) => {
            tracing::warn!(error = %e, "no membership heartbeat");
            None
        }
    }
}

/// Marks the node draining and removes its record: the clean-exit path.
pub(super) fn stop(heartbeat: Option<Heartbeat>) {
    if let Some(mut hb) = heartbeat {
        hb.set_draining();
        if !hb.shutdown(Duration::from_secs(2)) {
            tracing::warn!("heartbeat record not removed; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_give_back() {
        let f = InFlight::default();
        let a = f.enter();
        let b = f.enter();
        assert_eq!(f.get(), 2);
        drop(a);
        assert_eq!(f.get(), 1);
        drop(b);
        assert_eq!(f.get(), 0);
    }
}
