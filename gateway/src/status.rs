//! The few facts about this gateway that every part reads: how many
//! websockets are open and whether it is draining. The admission check, the
//! admin server (`/readyz`, the status page) and the registry heartbeat all
//! look here, so there is one answer to "is this gateway taking clients".

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

pub struct Status {
    pub node_id: String,
    pub backend: &'static str,
    pub started: Instant,
    pub max_connections: usize,
    open: AtomicUsize,
    draining: AtomicBool,
}

impl Status {
    pub fn new(node_id: String, backend: &'static str, max_connections: usize) -> Status {
        Status {
            node_id,
            backend,
            started: Instant::now(),
            max_connections,
            open: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Counts one more open websocket if there is room under
    /// `max_connections`; false when full.
    pub fn reserve_connection(&self) -> bool {
        let max = self.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release_connection(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit() {
        let status = Status::new("gw".into(), "echo", 2);
        assert!(status.reserve_connection());
        assert!(status.reserve_connection());
        assert!(!status.reserve_connection());
        status.release_connection();
        assert!(status.reserve_connection());
        assert_eq!(status.open_connections(), 2);
    }
}
