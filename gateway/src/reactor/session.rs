//! Buffers a connection holds only while it is busy, and the pool they come
//! from.
//!
//! A session is checked out when a connection has bytes to read or write
//! and goes back once its input is fully consumed (no frame half received,
//! no fragmented message in progress) and its output fully written. The
//! pool keeps a bounded number of sessions warm so a burst of activity does
//! not turn into a burst of allocations.

use parking_lot::Mutex;

use crate::ws::codec::Fragments;

/// Capacity new session buffers start with; grown on demand up to the
/// message size limit.
const INITIAL_CAPACITY: usize = 4096;

/// Buffers above this size are not pooled, so one huge message does not pin
/// its memory forever.
const MAX_POOLED_CAPACITY: usize = 64 * 1024;

#[derive(Default)]
pub struct Session {
    /// Bytes read and not yet consumed: `inbound[consumed..]` is live.
    pub inbound: Vec<u8>,
    pub consumed: usize,
    /// Bytes to write: `outbound[written..]` is pending.
    pub outbound: Vec<u8>,
    pub written: usize,
    pub fragments: Option<Fragments>,
}

impl Session {
    /// Nothing is kept that must outlive this activation.
    pub fn is_drained(&self) -> bool {
        self.consumed == self.inbound.len()
            && self.written == self.outbound.len()
            && self.fragments.is_none()
    }

    /// Bytes queued for the client and not yet written.
    pub fn pending_output(&self) -> usize {
        self.outbound.len() - self.written
    }

    /// Drops consumed input so the buffer does not grow with the stream.
    pub fn compact_inbound(&mut self) {
        if self.consumed > 0 {
            self.inbound.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    /// Drops written output.
    pub fn compact_outbound(&mut self) {
        if self.written == self.outbound.len() {
            self.outbound.clear();
            self.written = 0;
        } else if self.written > 0 {
            self.outbound.drain(..self.written);
            self.written = 0;
        }
    }
}

pub struct SessionPool {
    /// Boxed because a connection holds its session as a `Box`: checking
    /// out and giving back move a pointer, not the buffers' headers.
    #[allow(clippy::vec_box)]
    free: Mutex<Vec<Box<Session>>>,
    keep: usize,
}

impl SessionPool {
    /// A pool that keeps at most `keep` idle sessions.
    pub fn new(keep: usize) -> SessionPool {
        SessionPool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    pub fn checkout(&self) -> Box<Session> {
        self.free.lock().pop().unwrap_or_else(|| {
            Box::new(Session {
                inbound: Vec::with_capacity(INITIAL_CAPACITY),
                outbound: Vec::with_capacity(INITIAL_CAPACITY),
                ..Session::default()
            })
        })
    }

    pub fn give_back(&self, mut session: Box<Session>) {
        if session.inbound.capacity() > MAX_POOLED_CAPACITY
            || session.outbound.capacity() > MAX_POOLED_CAPACITY
        {
            return;
        }
        session.inbound.clear();
        session.outbound.clear();
        session.consumed = 0;
        session.written = 0;
        session.fragments = None;
        let mut free = self.free.lock();
        if free.len() < self.keep {
            free.push(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_and_bounds() {
        let pool = SessionPool::new(1);
        let a = pool.checkout();
        let b = pool.checkout();
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.free.lock().len(), 1);
        let mut big = pool.checkout();
        big.inbound.reserve(MAX_POOLED_CAPACITY * 2);
        pool.give_back(big);
        assert_eq!(pool.free.lock().len(), 0);
    }

    #[test]
    fn drained_only_when_everything_is_consumed() {
        let mut s = Session::default();
        assert!(s.is_drained());
        s.inbound.extend_from_slice(b"ab");
        assert!(!s.is_drained());
        s.consumed = 2;
        s.compact_inbound();
        assert!(s.is_drained());
        s.outbound.extend_from_slice(b"xy");
        s.written = 1;
        assert_eq!(s.pending_output(), 1);
        s.compact_outbound();
        assert_eq!(s.outbound, b"y");
    }
}
