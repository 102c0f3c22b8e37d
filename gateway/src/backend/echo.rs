//! The `echo` backend: answers every crawl with the seed alone
//! (`levels: [[url]]`), at once or after a fixed delay. No crawling, no
//! I/O: it measures the gateway itself, and with a delay it stands in for
//! long-running jobs (idle connections with a job in flight).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use backend::job::{CrawlOutcome, CrawlSpec, JobEvent, JobFailure};
use crossbeam_channel::{RecvTimeoutError, Sender};

use super::{Backend, JobTicket, ReplySink};
use crate::protocol::codes;

pub struct EchoBackend {
    sink: ReplySink,
    /// Jobs to answer later, when a delay is configured.
    delayed: Option<Sender<(Instant, JobTicket, CrawlSpec)>>,
    delay: Duration,
}

impl EchoBackend {
    pub fn new(sink: ReplySink, delay: Duration) -> std::io::Result<EchoBackend> {
        let delayed = if delay.is_zero() {
            None
        } else {
            let (tx, rx) = crossbeam_channel::unbounded();
            let timer_sink = sink.clone();
            std::thread::Builder::new()
                .name("echo-timer".into())
                .spawn(move || {
                    let mut due = BinaryHeap::new();
                    let mut seq = 0u64;
                    loop {
                        let wait = due
                            .peek()
                            .map(|Reverse((at, _, _)): &Reverse<(Instant, u64, _)>| {
                                at.saturating_duration_since(Instant::now())
                            })
                            .unwrap_or(Duration::from_secs(3600));
                        match rx.recv_timeout(wait) {
                            Ok((at, ticket, spec)) => {
                                seq += 1;
                                due.push(Reverse((at, seq, Job(ticket, spec))));
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                        while due
                            .peek()
                            .is_some_and(|Reverse((at, _, _))| *at <= Instant::now())
                        {
                            if let Some(Reverse((_, _, Job(ticket, spec)))) = due.pop() {
                                answer(&timer_sink, &ticket, spec);
                            }
                        }
                    }
                })?;
            Some(tx)
        };
        Ok(EchoBackend {
            sink,
            delayed,
            delay,
        })
    }
}

/// A delayed job; ordered only by its place in the heap's key.
struct Job(JobTicket, CrawlSpec);

impl PartialEq for Job {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

fn answer(sink: &ReplySink, ticket: &JobTicket, spec: CrawlSpec) {
    let outcome = CrawlOutcome {
        url: spec.url.clone(),
        depth: spec.depth,
        levels: vec![vec![spec.url]],
        cached: false,
        partial: None,
    };
    sink.send(ticket, JobEvent::Done(outcome));
}

impl Backend for EchoBackend {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn submit(&self, ticket: JobTicket, spec: CrawlSpec) {
        self.sink
            .send(&ticket, JobEvent::Accepted { cached: false });
        match &self.delayed {
            Some(timer) => {
                let _ = timer.send((Instant::now() + self.delay, ticket, spec));
            }
            None => answer(&self.sink, &ticket, spec),
        }
    }

    fn resume(&self, ticket: JobTicket) {
        // Echo keeps nothing, so there is never anything to resume.
        let failure = JobFailure::new(codes::UNKNOWN_JOB, "no such job for this token");
        self.sink.send(&ticket, JobEvent::Failed(failure));
    }
}
