//! The heartbeat publisher: one thread per process keeps its record alive.
//!
//! The thread owns a synchronous Redis connection (nothing else in the
//! process waits on it). Every `interval` it asks the [`LoadSource`] for the
//! live numbers, reads Redis `TIME`, and writes the record with a TTL. When
//! Redis is unreachable it reconnects with capped exponential backoff and
//! full jitter. A change of the load source's `draining` flag is written
//! within 100 ms (a draining gateway must leave the balancer's candidate set
//! at once); [`Heartbeat::notify`] forces a write now, and
//! [`Heartbeat::shutdown`] deletes the record on a clean exit.

use super::record::{index_key, record_key, NodeRecord, NodeState, Role};
use super::registry::{connect, redis_time_ms};
use crate::backoff::Backoff;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Live numbers for the record, sampled at every write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Open connections (gateway) or jobs/tasks in flight (master/worker).
    pub connections: u64,
    /// Maximum of the above.
    pub capacity: u64,
    /// True once the node stopped taking new work.
    pub draining: bool,
}

/// Where the publisher gets the live numbers; called on the heartbeat thread,
/// so it must be cheap and must not block (read a few atomics).
pub type LoadSource = Arc<dyn Fn() -> Load + Send + Sync>;

/// What a node says about itself, apart from the live numbers.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// Namespace for keys (`""` by default); see the module docs.
    pub key_prefix: String,
    /// Node id, unique per role.
    pub id: String,
    /// Gateway, master or worker.
    pub role: Role,
    /// Admin HTTP address (`host:port`).
    pub admin: String,
    /// Public websocket URL (gateways), e.g. `ws://127.0.0.1:5555/ws`.
    pub url: String,
    /// Software version.
    pub version: String,
    /// Time between writes.
    pub interval: Duration,
    /// Record lifetime; a node silent this long disappears. Keep it several
    /// intervals long so one slow write does not drop the node.
    pub ttl: Duration,
    /// When the process started (reported as `started_at_ms` in Redis time).
    pub started: Instant,
}

impl HeartbeatConfig {
    /// Defaults: interval 2 s, TTL 10 s, empty prefix, this crate's version.
    pub fn new(redis_url: impl Into<String>, role: Role, id: impl Into<String>) -> Self {
        HeartbeatConfig {
            redis_url: redis_url.into(),
            key_prefix: String::new(),
            id: id.into(),
            role,
            admin: String::new(),
            url: String::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            interval: Duration::from_secs(2),
            ttl: Duration::from_secs(10),
            started: Instant::now(),
        }
    }
}

/// How often the thread looks at the draining flag between writes.
const STATE_POLL: Duration = Duration::from_millis(100);

enum Command {
    Notify,
    Stop(Sender<()>),
}

#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    connected: AtomicBool,
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
}

/// Handle to the publisher thread. Dropping it stops the thread and removes
/// the record (waiting at most one second).
pub struct Heartbeat {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Validates the URL and starts the thread; the first write happens at
    /// once. Redis being down is not an error: the thread keeps retrying.
    pub fn start(config: HeartbeatConfig, load: LoadSource) -> io::Result<Heartbeat> {
        redis::Client::open(config.redis_url.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if config.interval.is_zero() || config.ttl <= config.interval {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "heartbeat ttl must be longer than a non-zero interval",
            ));
        }
        let (tx, rx) = bounded(16);
        let shared = Arc::new(Shared::default());
        let worker = Publisher {
            config,
            load,
            shared: shared.clone(),
            conn: None,
            started_at_ms: None,
        };
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || worker.run(rx))?;
        Ok(Heartbeat {
            commands: tx,
            shared,
            thread: Some(thread),
        })
    }

    /// Writes the record now instead of at the next tick.
    pub fn notify(&self) {
        // A full queue already holds a pending write.
        let _ = self.commands.try_send(Command::Notify);
    }

    /// Marks the node draining (whatever the load source says) and writes at
    /// once.
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// True while the last write succeeded.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Successful and failed writes so far.
    pub fn writes(&self) -> (u64, u64) {
        (
            self.shared.writes_ok.load(Ordering::Relaxed),
            self.shared.writes_failed.load(Ordering::Relaxed),
        )
    }

    /// Stops the thread and deletes the record, waiting at most `timeout`.
    /// Returns true if the record was removed (or Redis was already gone and
    /// the thread stopped) within the time.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let (done_tx, done_rx) = bounded(1);
        if self.commands.send(Command::Stop(done_tx)).is_err() {
            return thread.join().is_ok();
        }
        match done_rx.recv_timeout(timeout) {
            Ok(()) => thread.join().is_ok(),
            // The thread is stuck in a Redis call; leave it (it is detached).
            Err(_) => false,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

struct Publisher {
    config: HeartbeatConfig,
    load: LoadSource,
    shared: Arc<Shared>,
    conn: Option<redis::Connection>,
    started_at_ms: Option<u64>,
}

impl Publisher {
    fn run(mut self, commands: Receiver<Command>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut next = Instant::now();
        // The draining flag as last written; None while Redis is failing.
        let mut written: Option<bool> = None;
        loop {
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(STATE_POLL);
            match commands.recv_timeout(wait) {
                Ok(Command::Notify) => {}
                Err(RecvTimeoutError::Timeout) => {
                    // Between ticks, write early only when the node started
                    // or stopped draining, so the balancer and HAProxy hear
                    // it within STATE_POLL without the caller's help.
                    if Instant::now() < next && written.is_none_or(|d| d == self.draining()) {
                        continue;
                    }
                }
                Ok(Command::Stop(done)) => {
                    self.remove();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.remove();
                    return;
                }
            }
            match self.write() {
                Ok(draining) => {
                    written = Some(draining);
                    self.shared.writes_ok.fetch_add(1, Ordering::Relaxed);
                    self.shared.connected.store(true, Ordering::Relaxed);
                    backoff.reset();
                    next = Instant::now() + self.config.interval;
                }
                Err(e) => {
                    self.shared.writes_failed.fetch_add(1, Ordering::Relaxed);
                    self.shared.connected.store(false, Ordering::Relaxed);
                    self.conn = None;
                    written = None;
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 || backoff.attempts().is_multiple_of(20) {
                        tracing::warn!(
                            node = %self.config.id,
                            error = %e,
                            retry_ms = delay.as_millis() as u64,
                            "heartbeat write failed"
                        );
                    }
                    next = Instant::now() + delay;
                }
            }
        }
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.is_none() {
            let timeout = self
                .config
                .interval
                .clamp(Duration::from_millis(200), Duration::from_secs(2));
            self.conn = Some(connect(&self.config.redis_url, timeout)?);
        }
        Ok(self.conn.as_mut().expect("connection was just set"))
    }

    fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst) || (self.load)().draining
    }

    /// Writes the record; returns the draining flag it wrote.
    fn write(&mut self) -> redis::RedisResult<bool> {
        let load = (self.load)();
        let draining = load.draining || self.shared.draining.load(Ordering::SeqCst);
        let key = record_key(&self.config.key_prefix, self.config.role, &self.config.id);
        let index = index_key(&self.config.key_prefix);
        let ttl_ms = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let started = self.config.started;
        let conn = self.connection()?;
        let now_ms = redis_time_ms(conn)?;
        let uptime_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        let started_at_ms = *self
            .started_at_ms
            .get_or_insert(now_ms.saturating_sub(uptime_ms));
        let record = NodeRecord {
            id: self.config.id.clone(),
            role: self.config.role,
            admin: self.config.admin.clone(),
            url: self.config.url.clone(),
            connections: load.connections,
            capacity: load.capacity,
            state: if draining {
                NodeState::Draining
            } else {
                NodeState::Ready
            },
            version: self.config.version.clone(),
            started_at_ms,
            ts_ms: now_ms,
            pid: std::process::id(),
        };
        let json = serde_json::to_string(&record).unwrap_or_default();
        let conn = self.connection()?;
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(&index)
            .arg(now_ms.saturating_add(ttl_ms))
            .arg(&key)
            .ignore()
            .query::<()>(conn)?;
        Ok(draining)
    }

    fn remove(&mut self) {
        let key = record_key(&self.config.key_prefix, self.config.role, &self.config.id);
        let index = index_key(&self.config.key_prefix);
        let result = self.connection().and_then(|conn| {
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&key)
                .ignore()
                .cmd("ZREM")
                .arg(&index)
                .arg(&key)
                .ignore()
                .query::<()>(conn)
        });
        if let Err(e) = result {
            tracing::warn!(node = %self.config.id, error = %e, "could not remove heartbeat record; it will expire");
        }
    }
}
