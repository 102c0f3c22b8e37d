//! The `echo` backend: answers every crawl with the seed alone
//! (`levels: [[url]]`), at once or after a fixed delay. No crawling, no
//! I/O: it measures the gateway itself, and with a delay it stands in for
//! long-running jobs (idle connections with a job in flight).

use std::collections::VecDeque;
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
                    // Every job waits the same delay, so they come due in
                    // the order they arrived: a queue, not a heap.
                    let mut due: VecDeque<(Instant, JobTicket, CrawlSpec)> = VecDeque::new();
                    loop {
                        let wait = due.front().map_or(Duration::from_secs(3600), |(at, _, _)| {
                            at.saturating_duration_since(Instant::now())
                        });
                        match rx.recv_timeout(wait) {
                            Ok(job) => due.push_back(job),
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                        while due.front().is_some_and(|(at, _, _)| *at <= Instant::now()) {
                            if let Some((_, ticket, spec)) = due.pop_front() {
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
