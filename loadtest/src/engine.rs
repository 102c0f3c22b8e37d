//! The worker's event loop: one `mio::Poll` over all of this worker's
//! client sockets. It paces new connections (`rate`, `max_pending`), runs
//! timers (handshake deadlines, message sends, reconnects) from one binary
//! heap, hands readiness to `Conn`, and emits a `Tick` every second.

use crate::conn::{io_reason, Conn, Outcome, Phase, Shared};
use crate::probe;
use crate::rng::Rng;
use crate::scenario::{MessageKind, Targets, WorkerSpec};
use crate::stats::{new_histogram, record_us, to_pairs, WorkerMsg, WorkerTotals};
use crate::target::{ask_balancer, http_agent, Assignment, Target};
use backend::backoff::Backoff;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token of the waker that interrupts `poll` when the coordinator says stop.
pub const WAKER: Token = Token(usize::MAX);
/// Connections per client source address.
const PER_SOURCE: usize = 1000;
/// How long to wait for answers to messages in flight after `stop`.
const DRAIN: Duration = Duration::from_secs(1);
/// How often figures go to the coordinator (it samples once a second; a
/// finer tick keeps its view fresh).
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Start a reconnect attempt.
    Start,
    /// Connect + handshake deadline.
    Deadline,
    /// Send the next message.
    Send,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    slot: usize,
    gen: u32,
    kind: TimerKind,
}

/// The source address of connection `slot` of worker `index`: 127.W.X.Y,
/// a different /16 per worker and a new address every `PER_SOURCE` sockets.
pub fn source_ip(index: usize, slot: usize) -> Ipv4Addr {
    let w = (100 + index % 150) as u8;
    let n = slot / PER_SOURCE;
    Ipv4Addr::new(127, w, (1 + n / 250 % 250) as u8, (1 + n % 250) as u8)
}

/// One worker's event loop and everything it owns.
pub struct Engine {
    spec: WorkerSpec,
    poll: Poll,
    conns: Vec<Conn>,
    targets: Vec<Target>,
    target_index: HashMap<String, u32>,
    balancer: Option<Receiver<Result<Assignment, String>>>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Slots ready to start but held back by `max_pending` or the balancer.
    deferred: VecDeque<usize>,
    /// Slots whose last read stopped at its bound.
    again: Vec<usize>,
    next_start: usize,
    t0: Instant,
    pending: usize,
    open: usize,
    resolved: usize,
    sh: Shared,
    handshake: Histogram<u64>,
    handshake_tick: Histogram<u64>,
    backoff: Backoff,
    message: String,
    stopping: bool,
    usage_start: crate::stats::SelfUsage,
}

impl Engine {
    /// Build the engine; `waker` lets another thread interrupt `poll`.
    pub fn new(spec: WorkerSpec) -> io::Result<(Engine, Arc<Waker>)> {
        if let Some(limit) = probe::open_files_limit() {
            // A few descriptors go to stdio, epoll, the waker and HTTP.
            if spec.count as u64 + 32 > limit {
                return Err(io::Error::other(format!(
                    "{} sockets need more than this process's open-files limit of {limit}; \
                     use more --processes",
                    spec.count
                )));
            }
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let sc = &spec.scenario;
        let mut targets = Vec::new();
        let mut target_index = HashMap::new();
        let mut balancer = None;
        match &sc.targets {
            Targets::Urls(urls) => {
                for u in urls {
                    let t = Target::new(u, sc.allow_remote).map_err(io::Error::other)?;
                    target_index.insert(u.clone(), targets.len() as u32);
                    targets.push(t);
                }
            }
            Targets::Balancer(base) => balancer = Some(spawn_balancer_client(base.clone())),
        }
        let n_targets = targets.len().max(1);
        let conns = (0..spec.count)
            .map(|i| {
                let g = spec.first + i;
                Conn::new(sc.is_active(g), (g % n_targets) as u32)
            })
            .collect();
        let message = match sc.message {
            MessageKind::Ping => "{\"type\":\"ping\",\"id\":\"{id}\"}".to_string(),
            MessageKind::Crawl => format!(
                "{{\"type\":\"crawl\",\"id\":\"{{id}}\",\"url\":{},\"depth\":{}}}",
                serde_json::to_string(&sc.crawl_url).expect("string serialises"),
                sc.depth
            ),
        };
        let sh = Shared {
            counters: Default::default(),
            rtt: new_histogram(),
            rtt_tick: new_histogram(),
            rng: Rng::new(sc.seed ^ ((spec.index as u64 + 1) << 32)),
            readbuf: vec![0; 64 * 1024],
            scratch: Vec::with_capacity(512),
        };
        let backoff = Backoff::new(
            Duration::from_millis(sc.backoff_base_ms),
            Duration::from_millis(sc.backoff_max_ms),
        );
        let engine = Engine {
            poll,
            conns,
            targets,
            target_index,
            balancer,
            timers: BinaryHeap::new(),
            deferred: VecDeque::new(),
            again: Vec::new(),
            next_start: 0,
            t0: Instant::now(),
            pending: 0,
            open: 0,
            resolved: 0,
            sh,
            handshake: new_histogram(),
            handshake_tick: new_histogram(),
            backoff,
            message,
            stopping: false,
            usage_start: probe::self_usage(),
            spec,
        };
        Ok((engine, waker))
    }

    fn start_due(&self, k: usize) -> Instant {
        self.t0 + Duration::from_secs_f64(k as f64 / self.spec.rate)
    }

    /// Run until `stop` is set (or the worker's lifetime ends), emitting
    /// messages through `emit`; the last one is `Final`.
    pub fn run(&mut self, stop: &AtomicBool, emit: &mut dyn FnMut(WorkerMsg)) {
        let lifetime = self.t0 + Duration::from_millis(self.spec.lifetime_ms);
        let mut events = Events::with_capacity(1024);
        let mut next_tick = self.t0 + TICK;
        let mut drain_until: Option<Instant> = None;
        if self.spec.count == 0 {
            emit(WorkerMsg::Ramped {
                worker: self.spec.index,
                opened: 0,
                failed: 0,
            });
        }
        loop {
            let now = Instant::now();
            if !self.stopping && (stop.load(Ordering::Relaxed) || now >= lifetime) {
                self.stopping = true;
                drain_until = Some(now + DRAIN);
            }
            if let Some(until) = drain_until {
                let waiting: usize = self.conns.iter().map(|c| c.inflight.len()).sum();
                if now >= until || waiting == 0 {
                    break;
                }
            }
            if !self.stopping {
                self.pump_starts(now, emit);
            }
            self.fire_timers(now, emit);
            for slot in std::mem::take(&mut self.again) {
                self.readable(slot, emit);
            }
            if now >= next_tick {
                self.tick(emit);
                next_tick += TICK;
                if next_tick < now {
                    next_tick = now + TICK;
                }
            }
            let mut wake = next_tick.min(now + Duration::from_millis(100));
            if let Some(Reverse(t)) = self.timers.peek() {
                wake = wake.min(t.at);
            }
            if !self.stopping
                && self.next_start < self.conns.len()
                && self.pending < self.spec.max_pending
            {
                wake = wake.min(self.start_due(self.next_start));
            }
            if !self.deferred.is_empty() || !self.again.is_empty() {
                wake = wake.min(now + Duration::from_millis(5));
            }
            if let Some(until) = drain_until {
                wake = wake.min(until);
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    emit(WorkerMsg::Fatal {
                        worker: self.spec.index,
                        message: format!("poll: {e}"),
                    });
                    break;
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let slot = ev.token().0;
                if ev.is_writable() || ev.is_error() {
                    let out = self.conns[slot].on_writable(&mut self.sh);
                    self.outcome(slot, out, emit);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.readable(slot, emit);
                }
            }
        }
        let unanswered = self.conns.iter().map(|c| c.inflight.len() as u64).sum();
        emit(WorkerMsg::Final {
            worker: self.spec.index,
            totals: WorkerTotals {
                counters: self.sh.counters.clone(),
                open: self.open as u64,
                unanswered,
                rtt: to_pairs(&self.sh.rtt),
                handshake: to_pairs(&self.handshake),
                usage_start: self.usage_start.clone(),
                usage: probe::self_usage(),
            },
        });
    }

    fn readable(&mut self, slot: usize, emit: &mut dyn FnMut(WorkerMsg)) {
        if self.conns[slot].stream.is_none() {
            return;
        }
        let out = self.conns[slot].on_readable(&mut self.sh, Instant::now());
        if self.conns[slot].again {
            self.again.push(slot);
        }
        self.outcome(slot, out, emit);
    }

    fn tick(&mut self, emit: &mut dyn FnMut(WorkerMsg)) {
        emit(WorkerMsg::Tick {
            worker: self.spec.index,
            counters: self.sh.counters.clone(),
            open: self.open as u64,
            pending: self.pending as u64,
            rtt: to_pairs(&self.sh.rtt_tick),
            handshake: to_pairs(&self.handshake_tick),
        });
        self.sh.rtt_tick.reset();
        self.handshake_tick.reset();
    }

    /// Start first attempts on schedule and deferred (re)starts, within the
    /// pending limit.
    fn pump_starts(&mut self, now: Instant, emit: &mut dyn FnMut(WorkerMsg)) {
        while self.pending < self.spec.max_pending {
            if let Some(slot) = self.deferred.pop_front() {
                if !self.start(slot, now, emit) {
                    self.deferred.push_front(slot);
                    return;
                }
                continue;
            }
            if self.next_start < self.conns.len() && self.start_due(self.next_start) <= now {
                let slot = self.next_start;
                self.next_start += 1;
                if !self.start(slot, now, emit) {
                    self.deferred.push_back(slot);
                    return;
                }
                continue;
            }
            return;
        }
    }

    /// Pick the target of an attempt; `None` means "not yet" (no balancer
    /// answer available), `Some(Err)` a failed attempt.
    fn pick_target(&mut self, slot: usize) -> Option<Result<u32, String>> {
        let Some(rx) = &self.balancer else {
            return Some(Ok(self.conns[slot].target));
        };
        let answer = match rx.try_recv() {
            Ok(a) => a,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err("balancer_client_gone".into()),
        };
        let assignment = match answer {
            Ok(a) => a,
            Err(_) => return Some(Err("balancer_error".into())),
        };
        *self
            .sh
            .counters
            .nodes
            .entry(assignment.node.clone())
            .or_default() += 1;
        if let Some(&i) = self.target_index.get(&assignment.url) {
            return Some(Ok(i));
        }
        match Target::new(&assignment.url, self.spec.scenario.allow_remote) {
            Ok(t) => {
                let i = self.targets.len() as u32;
                self.target_index.insert(assignment.url, i);
                self.targets.push(t);
                Some(Ok(i))
            }
            Err(_) => Some(Err("balancer_bad_url".into())),
        }
    }

    /// Start an attempt on `slot`; false if it must wait.
    fn start(&mut self, slot: usize, now: Instant, emit: &mut dyn FnMut(WorkerMsg)) -> bool {
        let target = match self.pick_target(slot) {
            None => return false,
            Some(Ok(t)) => t,
            Some(Err(reason)) => {
                self.sh.counters.attempts += 1;
                self.pending += 1;
                self.outcome(slot, Outcome::Failed(reason), emit);
                return true;
            }
        };
        self.sh.counters.attempts += 1;
        self.pending += 1;
        self.conns[slot].target = target;
        self.conns[slot].started = now;
        match self.connect(slot, target) {
            Ok(()) => {
                let conn = &self.conns[slot];
                let at = now + Duration::from_millis(self.spec.scenario.handshake_timeout_ms);
                self.timers.push(Reverse(Timer {
                    at,
                    slot,
                    gen: conn.gen,
                    kind: TimerKind::Deadline,
                }));
            }
            Err(reason) => self.outcome(slot, Outcome::Failed(reason), emit),
        }
        true
    }

    fn connect(&mut self, slot: usize, target: u32) -> Result<(), String> {
        let t = &self.targets[target as usize];
        let (request, accept) = t.request().map_err(|_| "bad_request".to_string())?;
        let addr = t.addr;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| io_reason(&e))?;
        sock.set_nonblocking(true).map_err(|e| io_reason(&e))?;
        sock.set_tcp_nodelay(true).map_err(|e| io_reason(&e))?;
        if let (true, IpAddr::V4(ip)) = (self.spec.scenario.spread_sources, addr.ip()) {
            if ip.is_loopback() {
                let src = SocketAddr::new(IpAddr::V4(source_ip(self.spec.index, slot)), 0);
                sock.bind(&SockAddr::from(src))
                    .map_err(|e| format!("bind_{}", io_reason(&e)))?;
            }
        }
        match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_reason(&e)),
        }
        let mut stream = mio::net::TcpStream::from_std(sock.into());
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| io_reason(&e))?;
        self.conns[slot].begin(stream, request, accept, Instant::now());
        Ok(())
    }

    fn fire_timers(&mut self, now: Instant, emit: &mut dyn FnMut(WorkerMsg)) {
        // Bounded per pass so sockets are served even when many timers fire.
        for _ in 0..10_000 {
            match self.timers.peek() {
                Some(Reverse(t)) if t.at <= now => {}
                _ => return,
            }
            let Reverse(t) = self.timers.pop().expect("peeked");
            let conn = &self.conns[t.slot];
            if conn.gen != t.gen {
                continue;
            }
            match t.kind {
                TimerKind::Start => {
                    if conn.phase == Phase::Waiting && !self.stopping {
                        self.sh.counters.reconnects += 1;
                        self.deferred.push_back(t.slot);
                    }
                }
                TimerKind::Deadline => {
                    let reason = match conn.phase {
                        Phase::Connecting => "connect_timeout",
                        Phase::Handshaking => "handshake_timeout",
                        _ => continue,
                    };
                    self.outcome(t.slot, Outcome::Failed(reason.into()), emit);
                }
                TimerKind::Send => {
                    if conn.phase != Phase::Open || self.stopping {
                        continue;
                    }
                    let interval = Duration::from_secs_f64(1.0 / self.spec.scenario.message_rate);
                    let conn = &mut self.conns[t.slot];
                    conn.seq += 1;
                    let id = conn.seq;
                    let text = self.message.replace("{id}", &id.to_string());
                    let out = conn.send_message(&text, id, &mut self.sh, now);
                    let gen = conn.gen;
                    // Keep the schedule (no drift); if far behind, restart from now.
                    let mut at = t.at + interval;
                    if at < now {
                        at = now + interval;
                    }
                    self.timers.push(Reverse(Timer {
                        at,
                        slot: t.slot,
                        gen,
                        kind: TimerKind::Send,
                    }));
                    self.outcome(t.slot, out, emit);
                }
            }
        }
    }

    /// Apply the result of an event to the worker's books.
    fn outcome(&mut self, slot: usize, out: Outcome, emit: &mut dyn FnMut(WorkerMsg)) {
        let now = Instant::now();
        match out {
            Outcome::Continue => {}
            Outcome::Opened => {
                self.pending -= 1;
                self.open += 1;
                self.sh.counters.opened += 1;
                let conn = &mut self.conns[slot];
                let us = now.saturating_duration_since(conn.started).as_micros() as u64;
                record_us(&mut self.handshake, us);
                record_us(&mut self.handshake_tick, us);
                conn.attempt = 0;
                if conn.active && !self.stopping {
                    let phase = self.sh.rng.next_f64() / self.spec.scenario.message_rate;
                    let at = now + Duration::from_secs_f64(phase);
                    let gen = conn.gen;
                    self.timers.push(Reverse(Timer {
                        at,
                        slot,
                        gen,
                        kind: TimerKind::Send,
                    }));
                }
                self.resolve(slot, emit);
            }
            Outcome::Failed(reason) => {
                self.pending -= 1;
                *self.sh.counters.failed.entry(reason).or_default() += 1;
                self.close(slot);
                self.resolve(slot, emit);
                self.maybe_reconnect(slot, now);
            }
            Outcome::Dropped(reason) => {
                self.open -= 1;
                *self.sh.counters.dropped.entry(reason).or_default() += 1;
                self.close(slot);
                self.maybe_reconnect(slot, now);
            }
        }
    }

    fn resolve(&mut self, slot: usize, emit: &mut dyn FnMut(WorkerMsg)) {
        if !self.conns[slot].resolved {
            self.conns[slot].resolved = true;
            self.resolved += 1;
            if self.resolved == self.conns.len() {
                let c = &self.sh.counters;
                emit(WorkerMsg::Ramped {
                    worker: self.spec.index,
                    opened: c.opened,
                    failed: c.failed_total(),
                });
            }
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut stream) = self.conns[slot].reset() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
    }

    fn maybe_reconnect(&mut self, slot: usize, now: Instant) {
        if !self.spec.scenario.reconnect || self.stopping {
            return;
        }
        let conn = &mut self.conns[slot];
        // Per-connection attempt counter and the worker's seeded generator, so
        // a run's reconnect schedule is reproducible from `--seed`.
        let delay = self.backoff.delay_at(conn.attempt, self.sh.rng.next_f64());
        conn.attempt = conn.attempt.saturating_add(1);
        let gen = conn.gen;
        self.timers.push(Reverse(Timer {
            at: now + delay,
            slot,
            gen,
            kind: TimerKind::Start,
        }));
    }
}

/// A thread that keeps a few balancer answers ready, one per future
/// connection, so the event loop never blocks on HTTP.
fn spawn_balancer_client(base: String) -> Receiver<Result<Assignment, String>> {
    let (tx, rx) = sync_channel(64);
    std::thread::spawn(move || {
        let agent = http_agent(Duration::from_secs(5));
        let mut errors = 0u64;
        loop {
            let answer = ask_balancer(&agent, &base);
            let failed = answer.is_err();
            if let Err(e) = &answer {
                // The report counts them; the first few are worth reading.
                errors += 1;
                if errors <= 3 {
                    eprintln!("loadtest worker: {e}");
                }
            }
            if tx.send(answer).is_err() {
                return;
            }
            if failed {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::source_ip;
    use std::net::Ipv4Addr;

    #[test]
    fn sources_spread_and_stay_loopback() {
        assert_eq!(source_ip(0, 0), Ipv4Addr::new(127, 100, 1, 1));
        assert_eq!(source_ip(0, 999), Ipv4Addr::new(127, 100, 1, 1));
        assert_eq!(source_ip(0, 1000), Ipv4Addr::new(127, 100, 1, 2));
        assert_eq!(source_ip(5, 18_999), Ipv4Addr::new(127, 105, 1, 19));
        assert!(source_ip(149, 10_000_000).is_loopback());
    }
}
