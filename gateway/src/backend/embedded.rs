//! The `embedded` backend: the whole crawl in the gateway process.
//!
//! This is what `gateway` runs out of the box: master threads (one job
//! each at a time, the rest queue) and worker threads connected by
//! crossbeam channels, with the in-memory result cache, all from
//! [`backend::engine::Engine`]. The reactor's calls return at once: a
//! cache hit is answered on the spot, anything else is queued for a master
//! thread, which reports each finished level and the result through the
//! [`ReplySink`].
//!
//! `resume` needs results to outlive the connection that asked, so every
//! job's outcome is kept for `result_ttl` under its resume token (the
//! token, random and known only to the client, is the proof of ownership).
//! A client that resumes a job still running is queued as a waiter and gets
//! the remaining progress and the result when it arrives.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::engine::{Engine, EngineConfig};
use backend::job::{CrawlSpec, JobEvent, JobFailure};
use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::{Backend, JobTicket, ReplySink};

/// How often finished results past their TTL are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Results kept at most: each holds a whole crawl, and a busy gateway
/// finishes many jobs per TTL. Past this the oldest results go first (their
/// owners get `unknown_job` on a late resume).
const MAX_RESULTS: usize = 20_000;

pub struct EmbeddedBackend {
    shared: Arc<Shared>,
    jobs: Sender<(JobTicket, CrawlSpec)>,
}

struct Shared {
    engine: Engine,
    sink: ReplySink,
    results: Mutex<Results>,
    result_ttl: Duration,
}

/// Jobs by resume token.
struct Results {
    by_token: HashMap<String, Stored>,
    last_sweep: Instant,
}

enum Stored {
    /// Still crawling; `waiters` resumed it from other connections.
    Running { waiters: Vec<JobTicket> },
    /// `Done` or `Failed`, kept until `expires` for late resumes.
    Finished { event: JobEvent, expires: Instant },
}

impl EmbeddedBackend {
    /// Starts the engine (worker threads, cache) and `config.masters`
    /// master threads.
    pub fn start(config: EngineConfig, sink: ReplySink) -> EmbeddedBackend {
        let masters = config.masters.max(1);
        let result_ttl = config.result_ttl;
        let shared = Arc::new(Shared {
            engine: Engine::start(config),
            sink,
            results: Mutex::new(Results {
                by_token: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            result_ttl,
        });
        let (jobs, queue) = crossbeam_channel::unbounded::<(JobTicket, CrawlSpec)>();
        for i in 0..masters {
            let (queue, shared) = (queue.clone(), shared.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("crawl-master-{i}"))
                .spawn(move || {
                    for (ticket, spec) in queue.iter() {
                        shared.run(ticket, spec);
                    }
                });
            if let Err(e) = spawned {
                // Fewer masters only means fewer jobs at once; none at all
                // shows up as `backend_unavailable` on submit.
                tracing::error!(error = %e, "could not start a crawl master thread");
            }
        }
        EmbeddedBackend { shared, jobs }
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }
}

impl Shared {
    fn run(&self, ticket: JobTicket, spec: CrawlSpec) {
        let mut progress = |level: u32, pages: u32| {
            let event = JobEvent::Progress { level, pages };
            self.sink.send(&ticket, event.clone());
            for waiter in self.waiters(&ticket.resume_token) {
                self.sink.send(&waiter, event.clone());
            }
        };
        // A bug in the engine must not leave the client waiting forever.
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.engine.run(&ticket.key, &spec, &mut progress)
        }));
        let event = match result {
            Ok(Ok(outcome)) => JobEvent::Done(outcome),
            Ok(Err(failure)) => JobEvent::Failed(failure),
            Err(_) => {
                tracing::error!(job = %ticket.key, url = %spec.url, "crawl panicked");
                JobEvent::Failed(JobFailure::new(
                    "internal_error",
                    "the crawl failed unexpectedly",
                ))
            }
        };
        let waiters = self.finish(&ticket.resume_token, event.clone());
        self.sink.send(&ticket, event.clone());
        for waiter in waiters {
            self.sink.send(&waiter, event.clone());
        }
    }

    fn waiters(&self, token: &str) -> Vec<JobTicket> {
        match self.results.lock().by_token.get(token) {
            Some(Stored::Running { waiters }) => waiters.clone(),
            _ => Vec::new(),
        }
    }

    /// Records the outcome and returns who else is waiting for it.
    fn finish(&self, token: &str, event: JobEvent) -> Vec<JobTicket> {
        let mut results = self.results.lock();
        let stored = Stored::Finished {
            event,
            expires: Instant::now() + self.result_ttl,
        };
        match results.by_token.insert(token.to_string(), stored) {
            Some(Stored::Running { waiters }) => waiters,
            _ => Vec::new(),
        }
    }

    fn store(&self, token: &str, stored: Stored) {
        let mut results = self.results.lock();
        let now = Instant::now();
        let full = results.by_token.len() >= MAX_RESULTS;
        if full || now.duration_since(results.last_sweep) >= SWEEP_EVERY {
            results.last_sweep = now;
            results.by_token.retain(|_, s| match s {
                Stored::Running { .. } => true,
                Stored::Finished { expires, .. } => *expires > now,
            });
        }
        if results.by_token.len() >= MAX_RESULTS {
            let oldest = results
                .by_token
                .iter()
                .filter_map(|(k, s)| match s {
                    Stored::Finished { expires, .. } => Some((*expires, k)),
                    Stored::Running { .. } => None,
                })
                .min()
                .map(|(_, k)| k.clone());
            if let Some(k) = oldest {
                results.by_token.remove(&k);
            }
        }
        results.by_token.insert(token.to_string(), stored);
    }
}

impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn submit(&self, ticket: JobTicket, spec: CrawlSpec) {
        let shared = &self.shared;
        // A memory lookup: cheap enough for the reader thread.
        if let Some(outcome) = shared.engine.cached(&spec) {
            let event = JobEvent::Done(outcome);
            let expires = Instant::now() + shared.result_ttl;
            shared.store(
                &ticket.resume_token,
                Stored::Finished {
                    event: event.clone(),
                    expires,
                },
            );
            shared
                .sink
                .send(&ticket, JobEvent::Accepted { cached: true });
            shared.sink.send(&ticket, event);
            return;
        }
        shared.store(
            &ticket.resume_token,
            Stored::Running {
                waiters: Vec::new(),
            },
        );
        shared
            .sink
            .send(&ticket, JobEvent::Accepted { cached: false });
        let token = ticket.resume_token.clone();
        if let Err(e) = self.jobs.send((ticket, spec)) {
            let (ticket, _) = e.into_inner();
            let event = JobEvent::Failed(JobFailure::new(
                "backend_unavailable",
                "no crawl master is running",
            ));
            shared.finish(&token, event.clone());
            shared.sink.send(&ticket, event);
        }
    }

    fn resume(&self, ticket: JobTicket) {
        let shared = &self.shared;
        let mut results = shared.results.lock();
        match results.by_token.get_mut(&ticket.resume_token) {
            Some(Stored::Finished { event, expires }) if *expires > Instant::now() => {
                let event = event.clone();
                drop(results);
                shared.sink.send(&ticket, event);
            }
            Some(Stored::Running { waiters }) => {
                // A client resuming twice on one connection waits once.
                waiters.retain(|w| !(w.client == ticket.client && w.job_id == ticket.job_id));
                waiters.push(ticket.clone());
                // Sent under the lock, so it goes out before the result:
                // the master needs the lock to take the waiters.
                shared
                    .sink
                    .send(&ticket, JobEvent::Accepted { cached: false });
            }
            _ => {
                drop(results);
                let failure = JobFailure::new(
                    "unknown_job",
                    "no such job for this token (finished results are kept for a limited time)",
                );
                shared.sink.send(&ticket, JobEvent::Failed(failure));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Reply;
    use crossbeam_channel::Receiver;

    fn backend(config: EngineConfig) -> (EmbeddedBackend, Receiver<Reply>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            EmbeddedBackend::start(config, ReplySink::new(tx, waker)),
            rx,
            poll,
        )
    }

    fn ticket(client: u64, job: &str, token: &str) -> JobTicket {
        JobTicket {
            client,
            job_id: job.into(),
            key: format!("gw-test/{client}/{job}"),
            resume_token: token.into(),
        }
    }

    fn next(rx: &Receiver<Reply>) -> Reply {
        rx.recv_timeout(Duration::from_secs(10)).expect("a reply")
    }

    #[test]
    fn unknown_token_is_refused() {
        let (b, rx, _poll) = backend(EngineConfig::default());
        b.resume(ticket(1, "J", "nope"));
        match next(&rx).event {
            JobEvent::Failed(f) => assert_eq!(f.code, "unknown_job"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn depth_one_needs_no_fetch_and_is_cached_after() {
        // Depth 1 is the seed alone: no fetch, so no network in this test.
        let (b, rx, _poll) = backend(EngineConfig::default());
        let spec = CrawlSpec {
            url: "https://example.com/".into(),
            depth: 1,
            max_pages: 10,
            same_host: false,
        };
        b.submit(ticket(1, "A", "t1"), spec.clone());
        assert_eq!(next(&rx).event, JobEvent::Accepted { cached: false });
        let done = next(&rx);
        assert_eq!(done.ticket.job_id, "A");
        let JobEvent::Done(outcome) = done.event else {
            panic!("expected Done")
        };
        assert_eq!(
            outcome.levels,
            vec![vec!["https://example.com/".to_string()]]
        );

        // Resume from another connection gets the stored result.
        b.resume(ticket(2, "A", "t1"));
        let r = next(&rx);
        assert_eq!(r.ticket.client, 2);
        assert!(matches!(r.event, JobEvent::Done(_)));

        // The same crawl again is a cache hit answered on the spot.
        b.submit(ticket(3, "B", "t2"), spec);
        assert_eq!(
            rx.try_recv().unwrap().event,
            JobEvent::Accepted { cached: true }
        );
        let JobEvent::Done(outcome) = rx.try_recv().unwrap().event else {
            panic!("expected Done")
        };
        assert!(outcome.cached);
    }
}
