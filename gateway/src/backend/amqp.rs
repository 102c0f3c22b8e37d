//! The `amqp` backend: jobs run by `backend master` / `backend worker`
//! processes behind RabbitMQ, with the shared cache and the result store in
//! Redis.
//!
//! The reactor's calls return at once. Redis work (cache lookups, the
//! result store, polling for resumed jobs) runs on two `gw-redis` threads
//! fed by a channel; RabbitMQ work runs on the [`GatewayLink`]'s own tokio
//! thread. Answers come back through the [`ReplySink`].
//!
//! `submit`: a cache hit (shared Redis cache, same semantics as the
//! embedded mode) is answered at once and stored for `resume`; otherwise a
//! "running" marker is stored under the resume token, the job is published
//! (persistent, confirmed) and `accepted` is sent only after the broker's
//! confirm. While the broker is down the job fails with
//! `backend_unavailable` and the connection stays up. While Redis is down
//! jobs skip the cache and still run.
//!
//! Results arrive on this gateway's own queue and go to the submitting
//! connection and to any connection here that resumed the job; a job is
//! answered once per connection (duplicates from a redelivered job find no
//! pending entry). A client that reconnected to another gateway resumes
//! with its token: that gateway reads the result store (written by the
//! master, keyed by token) and polls it while the job still runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::amqp::{JobMsg, Names, ResultMsg, StoredResult};
use backend::cache::{cache_key, lookup, Lookup};
use backend::gateway_link::{GatewayLink, GatewayLinkConfig};
use backend::job::{CrawlOutcome, CrawlSpec, JobEvent, JobFailure};
use backend::redis_store::{Coordination, RedisCache};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::{Backend, JobTicket, ReplySink};

/// Settings of the adapter.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub namespace: String,
    pub node_id: String,
    pub cache_ttl: Duration,
    pub result_ttl: Duration,
    /// How long this gateway's result queue outlives it.
    pub queue_expires: Duration,
}

/// How often resumed jobs running elsewhere are looked up in Redis.
const POLL_EVERY: Duration = Duration::from_millis(300);
const REDIS_THREADS: usize = 2;

enum Cmd {
    Submit(JobTicket, CrawlSpec),
    Resume(JobTicket),
    /// Overwrite a token's "running" marker with a final event.
    Store(String, StoredResult),
}

/// A job published from here.
struct Pending {
    ticket: JobTicket,
    /// The broker confirmed it and the client was told `accepted`.
    accepted: bool,
    /// Events that beat the confirm (a fast master), sent after `accepted`.
    held: Vec<JobEvent>,
}

struct Shared {
    sink: ReplySink,
    /// Jobs published from here, by key, until their result arrives.
    pending: Mutex<HashMap<String, Pending>>,
    /// Connections here that resumed a job, by token.
    waiters: Mutex<HashMap<String, Vec<JobTicket>>>,
}

impl Shared {
    /// Delivers a job's event to its submitter and its resumers here; a
    /// final event removes them, so each gets it once.
    fn deliver(&self, key: &str, token: &str, event: JobEvent) {
        let last = matches!(event, JobEvent::Done(_) | JobEvent::Failed(_));
        let owner = {
            let mut pending = self.pending.lock();
            match pending.get_mut(key) {
                Some(p) if !p.accepted => {
                    p.held.push(event.clone());
                    None
                }
                Some(_) if last => pending.remove(key).map(|p| p.ticket),
                Some(p) => Some(p.ticket.clone()),
                None => None,
            }
        };
        let waiters = if token.is_empty() {
            Vec::new()
        } else if last {
            self.waiters.lock().remove(token).unwrap_or_default()
        } else {
            self.waiters.lock().get(token).cloned().unwrap_or_default()
        };
        for t in owner.iter().chain(waiters.iter()) {
            self.sink.send(t, event.clone());
        }
    }
}

pub struct AmqpBackend {
    cmds: Sender<Cmd>,
    shared: Arc<Shared>,
    _link: Arc<GatewayLink>,
}

impl AmqpBackend {
    pub fn start(cfg: AmqpConfig, sink: ReplySink) -> std::io::Result<AmqpBackend> {
        let names = Names::new(&cfg.namespace);
        let shared = Arc::new(Shared {
            sink,
            pending: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let link = Arc::new(GatewayLink::start(
            GatewayLinkConfig {
                amqp_url: cfg.amqp_url.clone(),
                names: names.clone(),
                node_id: cfg.node_id.clone(),
                queue_expires: cfg.queue_expires,
            },
            Arc::new(move |msg: ResultMsg| s.deliver(&msg.key, &msg.token, msg.event)),
        )?);
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..REDIS_THREADS {
            let worker = RedisWorker {
                cfg: cfg.clone(),
                cache: RedisCache::new(&cfg.redis_url, &names.redis_prefix(), cfg.cache_ttl),
                coord: Coordination::new(
                    &cfg.redis_url,
                    &names.redis_prefix(),
                    Duration::from_secs(5),
                ),
                shared: shared.clone(),
                link: link.clone(),
                cmds: tx.clone(),
                poller: i == 0,
            };
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("gw-redis-{i}"))
                .spawn(move || worker.run(rx))?;
        }
        Ok(AmqpBackend {
            cmds: tx,
            shared,
            _link: link,
        })
    }
}

/// A token as the gateway hands them out (32 hex digits); anything else
/// cannot name a job and is refused without a Redis round trip.
fn plausible_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unknown_job() -> JobEvent {
    JobEvent::Failed(JobFailure::new(
        "unknown_job",
        "no such job for this token (finished results are kept for a limited time)",
    ))
}

fn unavailable(message: &str) -> JobEvent {
    JobEvent::Failed(JobFailure::new("backend_unavailable", message))
}

impl Backend for AmqpBackend {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn submit(&self, ticket: JobTicket, spec: CrawlSpec) {
        if let Err(e) = self.cmds.send(Cmd::Submit(ticket, spec)) {
            if let Cmd::Submit(ticket, _) = e.into_inner() {
                self.shared
                    .sink
                    .send(&ticket, unavailable("the backend is shut down"));
            }
        }
    }

    fn resume(&self, ticket: JobTicket) {
        if !plausible_token(&ticket.resume_token) {
            self.shared.sink.send(&ticket, unknown_job());
            return;
        }
        if let Err(e) = self.cmds.send(Cmd::Resume(ticket)) {
            if let Cmd::Resume(ticket) = e.into_inner() {
                self.shared
                    .sink
                    .send(&ticket, unavailable("the backend is shut down"));
            }
        }
    }
}

struct RedisWorker {
    cfg: AmqpConfig,
    cache: RedisCache,
    coord: Coordination,
    shared: Arc<Shared>,
    link: Arc<GatewayLink>,
    cmds: Sender<Cmd>,
    poller: bool,
}

impl RedisWorker {
    fn run(self, rx: Receiver<Cmd>) {
        let mut last_poll = Instant::now();
        loop {
            match rx.recv_timeout(POLL_EVERY) {
                Ok(Cmd::Submit(ticket, spec)) => self.submit(ticket, spec),
                Ok(Cmd::Resume(ticket)) => self.resume(ticket),
                Ok(Cmd::Store(token, stored)) => {
                    self.coord.store(&token, &stored, self.cfg.result_ttl);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.poller && last_poll.elapsed() >= POLL_EVERY {
                last_poll = Instant::now();
                self.poll_waiters();
            }
        }
    }

    fn submit(&self, ticket: JobTicket, spec: CrawlSpec) {
        let sink = &self.shared.sink;
        if let Lookup::Hit(levels) = lookup(&self.cache, &cache_key(&spec), spec.depth) {
            let event = JobEvent::Done(CrawlOutcome {
                url: spec.url.clone(),
                depth: spec.depth,
                levels,
                cached: true,
                partial: None,
            });
            let stored = StoredResult {
                key: ticket.key.clone(),
                event: Some(event.clone()),
            };
            self.coord
                .store(&ticket.resume_token, &stored, self.cfg.result_ttl);
            sink.send(&ticket, JobEvent::Accepted { cached: true });
            sink.send(&ticket, event);
            return;
        }
        if !self.link.is_up() {
            sink.send(
                &ticket,
                unavailable("the message broker is unreachable; retry later"),
            );
            return;
        }
        let running = StoredResult {
            key: ticket.key.clone(),
            event: None,
        };
        self.coord
            .store(&ticket.resume_token, &running, self.cfg.result_ttl);
        let job = JobMsg {
            key: ticket.key.clone(),
            token: ticket.resume_token.clone(),
            spec,
            reply_queue: self.link.reply_queue().to_string(),
        };
        // Registered before publishing: the result may beat the confirm.
        self.shared.pending.lock().insert(
            ticket.key.clone(),
            Pending {
                ticket: ticket.clone(),
                accepted: false,
                held: Vec::new(),
            },
        );
        let (shared, cmds) = (self.shared.clone(), self.cmds.clone());
        self.link.publish(
            job,
            Box::new(move |confirmed| match confirmed {
                Ok(()) => {
                    // Under the lock, so `accepted` precedes held events.
                    let mut pending = shared.pending.lock();
                    shared
                        .sink
                        .send(&ticket, JobEvent::Accepted { cached: false });
                    let mut finished = false;
                    if let Some(p) = pending.get_mut(&ticket.key) {
                        p.accepted = true;
                        for event in p.held.drain(..) {
                            finished |= matches!(event, JobEvent::Done(_) | JobEvent::Failed(_));
                            shared.sink.send(&ticket, event);
                        }
                    }
                    if finished {
                        pending.remove(&ticket.key);
                    }
                }
                Err(message) => {
                    shared.pending.lock().remove(&ticket.key);
                    let event = unavailable(&message);
                    let stored = StoredResult {
                        key: ticket.key.clone(),
                        event: Some(event.clone()),
                    };
                    let _ = cmds.send(Cmd::Store(ticket.resume_token.clone(), stored));
                    shared.sink.send(&ticket, event);
                }
            }),
        );
    }

    fn resume(&self, ticket: JobTicket) {
        let sink = &self.shared.sink;
        match self.coord.stored(&ticket.resume_token) {
            Some(Some(StoredResult {
                event: Some(event), ..
            })) => sink.send(&ticket, event),
            Some(Some(StoredResult { event: None, .. })) => self.wait(ticket),
            Some(None) => sink.send(&ticket, unknown_job()),
            None => {
                // Redis is down: only a job published from here is known.
                let known = self
                    .shared
                    .pending
                    .lock()
                    .values()
                    .any(|p| p.ticket.resume_token == ticket.resume_token);
                if known {
                    self.wait(ticket);
                } else {
                    sink.send(
                        &ticket,
                        unavailable("the result store is unreachable; retry later"),
                    );
                }
            }
        }
    }

    fn wait(&self, ticket: JobTicket) {
        let mut waiters = self.shared.waiters.lock();
        let list = waiters.entry(ticket.resume_token.clone()).or_default();
        // A client resuming twice on one connection waits once.
        list.retain(|w| !(w.client == ticket.client && w.job_id == ticket.job_id));
        list.push(ticket.clone());
        // Under the lock, so it goes out before the result.
        self.shared
            .sink
            .send(&ticket, JobEvent::Accepted { cached: false });
    }

    /// Answers resumed jobs whose result reached the store (the master
    /// writes it before publishing to the accepting gateway, which may be
    /// gone).
    fn poll_waiters(&self) {
        let tokens: Vec<String> = self.shared.waiters.lock().keys().cloned().collect();
        for token in tokens {
            if let Some(Some(StoredResult {
                key,
                event: Some(event),
            })) = self.coord.stored(&token)
            {
                self.shared.deliver(&key, &token, event);
            } else if let Some(None) = self.coord.stored(&token) {
                // The marker expired: the job is lost to us.
                let gone = self
                    .shared
                    .waiters
                    .lock()
                    .remove(&token)
                    .unwrap_or_default();
                for t in gone {
                    self.shared.sink.send(&t, unknown_job());
                }
            }
        }
    }
}
