//! The reactor: one thread that owns the `mio::Poll`, the listener and the
//! slab of connections, and never reads, parses or writes a websocket
//! itself.
//!
//! It accepts connections, turns readiness, backend replies and timers into
//! [`Work`](readers::Work) for the reader threads, and takes connections
//! back when the readers are done with them. A connection is either idle in
//! its slot (owned by the reactor) or busy with a reader (its slot collects
//! whatever happens meanwhile); LIFECYCLE.md beside this file has the whole
//! state machine.

mod conn;
mod handler;
mod readers;
mod session;

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::engine::JobOptions;
use backend::job::{CrawlSpec, JobFailure};
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::RwLock;
use slab::Slab;
use tracing::{debug, info, warn};

use self::conn::{Conn, Phase};
use self::readers::{CloseKind, Command, Finished, Returned, Verdict, Work};
use self::session::SessionPool;
use crate::backend::{Backend, ClientId, Reply, ReplySink};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::status::Status;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// Seconds a connection in `Closing` waits for the client's close frame.
const CLOSE_GRACE: u32 = 5;

/// How often timers are checked: pings, timeouts, drain steps.
const TICK: Duration = Duration::from_millis(100);

/// Idle sessions the pool keeps warm.
const POOLED_SESSIONS: usize = 256;

/// Limits every reader enforces.
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_outbound_bytes: usize,
    pub max_jobs_per_connection: u8,
    /// Caps on crawl requests; the crawl engine applies them.
    pub crawl: backend::engine::Limits,
}

/// Seconds since the gateway started: four bytes per timestamp per
/// connection instead of an `Instant`'s sixteen.
pub struct Clock(Instant);

impl Clock {
    pub fn now(&self) -> u32 {
        self.0.elapsed().as_secs() as u32
    }
}

/// What the reader threads share.
pub struct Shared {
    pub node_id: String,
    pub limits: Limits,
    pub backend: Box<dyn Backend>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub sessions: SessionPool,
    pub clock: Clock,
}

impl Shared {
    fn validate(
        &self,
        url: &str,
        depth: i64,
        options: &JobOptions,
    ) -> Result<CrawlSpec, JobFailure> {
        backend::engine::validate_with(url, depth, options, &self.limits.crawl)
    }
}

/// A connection's slot in the slab. `Pending` is kept no larger than
/// `Conn`, so the slab costs one `Conn` per connection.
enum Slot {
    /// Owned by the reactor, waiting for something to happen.
    Idle(Conn),
    /// With a reader; what happened since is collected here.
    Busy(Pending),
}

#[derive(Default)]
struct Pending {
    readable: bool,
    replies: Vec<Reply>,
    command: Option<Command>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.readable && self.replies.is_empty() && self.command.is_none()
    }

    fn add_command(&mut self, command: Command) {
        // A close outranks a ping.
        if !matches!(self.command, Some(Command::Close(_))) {
            self.command = Some(command);
        }
    }
}

/// What `tick` decided for an idle connection.
enum Due {
    Drop(&'static str),
    Send(Command),
}

struct Drain {
    /// Every connection has been asked to close by then.
    window_end: Instant,
    /// The process exits by then whatever is left.
    give_up: Instant,
}

/// Things outside the reactor need to reach it: the admin server, signal
/// handlers and tests.
#[derive(Clone)]
pub struct Handle {
    pub local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Starts the drain: stop accepting, close everyone over the window, exit.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    slots: Slab<Slot>,
    /// Client id to slab token. Tokens are reused after a close and client
    /// ids never are, so replies are routed through here.
    clients: RwLock<HashMap<ClientId, Token>>,
    shared: Arc<Shared>,
    work: Sender<Work>,
    finished: Receiver<Returned>,
    replies: Receiver<Reply>,
    handle: Handle,
    next_client: ClientId,
    /// Sockets held at most (websockets plus handshakes in progress), so the
    /// process never runs out of descriptors.
    max_sockets: usize,
    accept_paused: bool,
    ping_interval: u32,
    idle_timeout: u32,
    handshake_timeout: u32,
    drain_window: Duration,
    drain: Option<Drain>,
}

impl Reactor {
    /// Binds the listener, builds the backend with its way back to the
    /// reactor, and starts the reader threads.
    pub fn bind(
        config: &Config,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
        make_backend: impl FnOnce(ReplySink) -> std::io::Result<Box<dyn Backend>>,
    ) -> std::io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;

        let (reply_tx, replies) = crossbeam_channel::unbounded();
        let backend = make_backend(ReplySink::new(reply_tx, waker.clone()))?;
        let limits = Limits {
            max_message_bytes: config.max_message_bytes,
            max_outbound_bytes: config.max_outbound_bytes,
            max_jobs_per_connection: config.max_jobs_per_connection.max(1),
            crawl: config.crawl_limits(),
        };
        let shared = Arc::new(Shared {
            node_id: config.node_id(),
            limits,
            backend,
            metrics,
            status,
            sessions: SessionPool::new(POOLED_SESSIONS),
            clock: Clock(Instant::now()),
        });
        let (work, work_rx) = crossbeam_channel::unbounded();
        let (finished_tx, finished) = crossbeam_channel::unbounded();
        readers::spawn(
            config.readers(),
            shared.clone(),
            work_rx,
            finished_tx,
            waker.clone(),
        )?;

        let handshake_slack = (config.max_connections / 32).max(64);
        Ok(Reactor {
            poll,
            listener: Some(listener),
            // Untouched capacity costs address space, not resident memory.
            slots: Slab::with_capacity(config.max_connections + handshake_slack),
            clients: RwLock::new(HashMap::with_capacity(
                config.max_connections + handshake_slack,
            )),
            shared,
            work,
            finished,
            replies,
            handle: Handle {
                local_addr,
                shutdown: Arc::new(AtomicBool::new(false)),
                waker,
            },
            next_client: 1,
            max_sockets: config.max_connections + handshake_slack,
            accept_paused: false,
            ping_interval: config.ping_interval.max(1),
            idle_timeout: config.idle_timeout,
            handshake_timeout: config.handshake_timeout.max(1),
            drain_window: Duration::from_secs(config.drain_window.into()),
            drain: None,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs until a drain has finished.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => {
                        // Errors and hang-ups surface as a failed read.
                        if event.is_readable() || event.is_writable() || event.is_error() {
                            self.dispatch(token, |pending| pending.readable = true);
                        }
                    }
                }
            }
            // The waker only says "look"; look every turn, it is two try_recvs.
            self.take_back_finished();
            self.route_replies();
            if self.drain.is_none() && self.handle.shutdown.load(Ordering::Acquire) {
                self.start_drain();
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + TICK;
                if self.drain_finished() {
                    info!(node = %self.shared.node_id, "drained, exiting");
                    return Ok(());
                }
            }
        }
    }

    fn accept(&mut self) {
        if self.accept_paused {
            return;
        }
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == ErrorKind::Interrupted
                        || e.kind() == ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE): try again next tick
                    // rather than spin on a listener that stays readable.
                    warn!(error = %e, "accept failed; pausing accepts for a tick");
                    self.accept_paused = true;
                    return;
                }
            };
            self.shared.metrics.connections_accepted.inc();
            if self.slots.len() >= self.max_sockets {
                self.shared.metrics.refused("over_capacity");
                debug!(%peer, "socket limit reached, dropping new connection");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let entry = self.slots.vacant_entry();
            let token = Token(entry.key());
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
                warn!(error = %e, "could not register a new connection");
                continue;
            }
            let id = self.next_client;
            self.next_client += 1;
            self.clients.write().insert(id, token);
            entry.insert(Slot::Idle(Conn::new(stream, id, self.shared.clock.now())));
            debug!(client = id, %peer, "connection accepted");
        }
    }

    /// Records what happened to a connection and hands it to a reader if
    /// the reactor holds it.
    fn dispatch(&mut self, token: Token, note: impl FnOnce(&mut Pending)) {
        let Some(slot) = self.slots.get_mut(token.0) else {
            return;
        };
        match slot {
            Slot::Busy(pending) => note(pending),
            Slot::Idle(_) => {
                let mut pending = Pending::default();
                note(&mut pending);
                if let Slot::Idle(conn) = std::mem::replace(slot, Slot::Busy(Pending::default())) {
                    self.send_work(token, conn, pending);
                }
            }
        }
    }

    fn send_work(&self, token: Token, conn: Conn, pending: Pending) {
        let work = Work {
            token,
            conn,
            readable: pending.readable,
            replies: pending.replies,
            command: pending.command,
        };
        // The readers live as long as the reactor holds the sender.
        let _ = self.work.send(work);
    }

    fn take_back_finished(&mut self) {
        while let Ok(returned) = self.finished.try_recv() {
            let Finished {
                token,
                conn,
                verdict,
            } = match returned {
                Returned::Finished(finished) => finished,
                Returned::Lost {
                    token,
                    client,
                    was_open,
                } => {
                    self.forget(token, client, was_open, "reader_panic");
                    continue;
                }
            };
            match verdict {
                Verdict::Drop(reason) => self.close(token, conn, reason),
                Verdict::Keep { more } => {
                    let Some(slot) = self.slots.get_mut(token.0) else {
                        continue;
                    };
                    let Slot::Busy(pending) = slot else { continue };
                    pending.readable |= more;
                    if pending.is_empty() {
                        *slot = Slot::Idle(conn);
                    } else {
                        let pending = std::mem::take(pending);
                        self.send_work(token, conn, pending);
                    }
                }
            }
        }
    }

    fn route_replies(&mut self) {
        while let Ok(reply) = self.replies.try_recv() {
            let token = self.clients.read().get(&reply.ticket.client).copied();
            match token {
                Some(token) => self.dispatch(token, |pending| pending.replies.push(reply)),
                None => {
                    debug!(client = reply.ticket.client, job = %reply.ticket.job_id, "reply for a gone client dropped")
                }
            }
        }
    }

    fn close(&mut self, token: Token, mut conn: Conn, reason: &'static str) {
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.forget(token, conn.id, conn.phase != Phase::Handshaking, reason);
    }

    /// Frees everything the reactor holds for a connection that is gone.
    fn forget(&mut self, token: Token, client: ClientId, was_open: bool, reason: &'static str) {
        if self.slots.contains(token.0) {
            self.slots.remove(token.0);
        }
        self.clients.write().remove(&client);
        if was_open {
            self.shared.status.release_connection();
            self.shared.metrics.connections_open.dec();
        }
        self.shared.metrics.closed(reason);
        debug!(client, reason, "connection closed");
    }

    /// Pings quiet clients, closes dead and idle ones, enforces deadlines.
    fn tick(&mut self) {
        let now = self.shared.clock.now();
        if self.accept_paused {
            self.accept_paused = false;
            self.accept();
        }
        // Connections opened in the same second fall quiet in the same
        // second; pinging them all in one tick stalls everyone else's round
        // trips. So each tick pings little more than its share of one
        // interval, and the rest are pinged in the ticks that follow.
        let ticks_per_interval =
            (u64::from(self.ping_interval) * 1000 / TICK.as_millis() as u64).max(1);
        let mut ping_budget = (self.slots.len() as u64 * 5 / 4)
            .div_ceil(ticks_per_interval)
            .max(16);
        let mut due = Vec::new();
        for (key, slot) in self.slots.iter() {
            let Slot::Idle(conn) = slot else { continue };
            let action = match conn.phase {
                Phase::Handshaking if now - conn.last_active >= self.handshake_timeout => {
                    Some(Due::Drop("handshake_timeout"))
                }
                Phase::Closing if now - conn.ping_sent >= CLOSE_GRACE => Some(Due::Drop("closed")),
                Phase::Open
                    if conn.ping_outstanding && now - conn.ping_sent >= self.ping_interval =>
                {
                    Some(Due::Drop("ping_timeout"))
                }
                Phase::Open
                    if self.idle_timeout > 0
                        && conn.jobs.is_none()
                        && now - conn.last_active >= self.idle_timeout =>
                {
                    Some(Due::Send(Command::Close(CloseKind::IdleTimeout)))
                }
                Phase::Open
                    if !conn.ping_outstanding
                        && now - conn.last_seen >= self.ping_interval
                        && ping_budget > 0 =>
                {
                    ping_budget -= 1;
                    Some(Due::Send(Command::Ping))
                }
                _ => None,
            };
            if let Some(action) = action {
                due.push((Token(key), action));
            }
        }
        for (token, action) in due {
            match action {
                Due::Send(Command::Ping) => self.ping(token, now),
                Due::Send(command) => self.dispatch(token, |pending| pending.add_command(command)),
                Due::Drop(reason) => {
                    if let Some(Slot::Idle(conn)) = self.slots.try_remove(token.0) {
                        self.close(token, conn, reason);
                    }
                }
            }
        }
        if self.drain.is_some() {
            self.drain_step();
        }
    }

    /// Pings a quiet connection. A ping is two bytes on a socket that has
    /// nothing queued, so the reactor writes it itself rather than paying a
    /// hand-over to a reader; anything unusual goes the reader's way.
    fn ping(&mut self, token: Token, now: u32) {
        let Some(Slot::Idle(conn)) = self.slots.get_mut(token.0) else {
            return self.dispatch(token, |pending| pending.add_command(Command::Ping));
        };
        if conn.session.is_some() {
            return self.dispatch(token, |pending| pending.add_command(Command::Ping));
        }
        match (&conn.stream).write(&crate::ws::codec::EMPTY_PING) {
            Ok(2) => {
                conn.ping_outstanding = true;
                conn.ping_sent = now;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.dispatch(token, |pending| pending.add_command(Command::Ping))
            }
            // Half a frame or a broken socket: the client is gone or not
            // reading at all.
            _ => {
                if let Some(Slot::Idle(conn)) = self.slots.try_remove(token.0) {
                    self.close(token, conn, "slow_consumer");
                }
            }
        }
    }

    fn start_drain(&mut self) {
        info!(node = %self.shared.node_id, open = self.shared.status.open_connections(), "draining");
        // Close the listener first: once anyone can see "draining" (/readyz,
        // the registry), no new connection reaches this gateway.
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shared.status.start_draining();
        self.shared.metrics.draining.set(1);
        let now = Instant::now();
        self.drain = Some(Drain {
            window_end: now + self.drain_window,
            give_up: now + self.drain_window + Duration::from_secs(u64::from(CLOSE_GRACE) + 5),
        });
    }

    /// Closes this step's share of the remaining connections, so the whole
    /// fleet of clients does not reconnect elsewhere in the same instant.
    fn drain_step(&mut self) {
        let Some(drain) = &self.drain else { return };
        let steps_left = (drain
            .window_end
            .saturating_duration_since(Instant::now())
            .as_millis()
            / 100)
            .max(1);
        let open: Vec<Token> = self
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Idle(conn) if conn.phase == Phase::Open))
            .map(|(key, _)| Token(key))
            .collect();
        let this_step = open.len().div_ceil(steps_left as usize);
        let close = Command::Close(CloseKind::Restarting);
        for token in open.into_iter().take(this_step) {
            self.dispatch(token, |pending| pending.add_command(close));
        }
    }

    fn drain_finished(&self) -> bool {
        match &self.drain {
            Some(drain) => self.slots.is_empty() || Instant::now() >= drain.give_up,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_costs_no_more_than_its_connection() {
        assert!(std::mem::size_of::<Pending>() <= std::mem::size_of::<Conn>());
        assert_eq!(std::mem::size_of::<Slot>(), std::mem::size_of::<Conn>());
    }
}
