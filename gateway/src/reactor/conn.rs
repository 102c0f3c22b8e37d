//! What the gateway keeps per connection, sized for the idle case.
//!
//! An idle, handshaken connection is a [`Conn`]: its socket, its id, three
//! timestamps, a few flags and two empty pointers. Buffers live in a
//! [`Session`](super::session::Session) checked out only while there are
//! bytes to read or write; the jobs a connection is waiting for live in a
//! box allocated only while there are some. See LIFECYCLE.md beside this file.

use std::time::Instant;

use mio::net::TcpStream;

use super::session::Session;
use crate::backend::ClientId;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; the HTTP upgrade request has not been answered yet.
    Handshaking,
    /// A websocket.
    Open,
    /// Our close frame is sent (or being sent); waiting for the client's
    /// close frame or EOF, with a deadline.
    Closing,
}

/// A job this connection is waiting for.
#[derive(Debug)]
pub struct InFlight {
    pub job_id: Box<str>,
    pub since: Instant,
}

/// One client connection.
pub struct Conn {
    pub stream: TcpStream,
    pub id: ClientId,
    pub phase: Phase,
    /// A ping was sent at `ping_sent` and no frame has arrived since.
    pub ping_outstanding: bool,
    /// Gateway-clock seconds when the client last sent any bytes.
    pub last_seen: u32,
    /// Gateway-clock seconds of the client's last message, or of the accept
    /// while handshaking; drives the idle timeout.
    pub last_active: u32,
    /// Gateway-clock seconds when our ping, or our close frame, went out.
    pub ping_sent: u32,
    /// Jobs submitted or resumed and not yet answered. Boxed so the idle
    /// case costs one pointer, not an empty `Vec`'s three words.
    #[allow(clippy::box_collection)]
    pub jobs: Option<Box<Vec<InFlight>>>,
    /// Buffers, present only while the connection has work in progress.
    pub session: Option<Box<Session>>,
}

impl Conn {
    pub fn new(stream: TcpStream, id: ClientId, now: u32) -> Conn {
        Conn {
            stream,
            id,
            phase: Phase::Handshaking,
            ping_outstanding: false,
            last_seen: now,
            last_active: now,
            ping_sent: now,
            jobs: None,
            session: None,
        }
    }

    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.as_ref().map_or(0, |jobs| jobs.len())
    }

    pub fn has_job(&self, job_id: &str) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.iter().any(|j| &*j.job_id == job_id))
    }

    pub fn add_job(&mut self, job_id: &str) {
        let entry = InFlight {
            job_id: job_id.into(),
            since: Instant::now(),
        };
        self.jobs.get_or_insert_with(Default::default).push(entry);
    }

    /// Forgets a finished job; returns how long it ran.
    pub fn finish_job(&mut self, job_id: &str) -> Option<std::time::Duration> {
        let jobs = self.jobs.as_mut()?;
        let index = jobs.iter().position(|j| &*j.job_id == job_id)?;
        let job = jobs.swap_remove(index);
        if jobs.is_empty() {
            self.jobs = None;
        }
        Some(job.since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_is_a_few_words() {
        // socket, id, phase and flags, three timestamps, two pointers; mio
        // adds a selector id to each socket in debug builds.
        let mio_debug = if cfg!(debug_assertions) { 8 } else { 0 };
        assert!(
            std::mem::size_of::<Conn>() <= 48 + mio_debug,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
