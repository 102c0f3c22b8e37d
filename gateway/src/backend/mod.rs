//! The seam between the reactor and whatever runs jobs.
//!
//! The reactor never waits on a backend: it calls [`Backend::submit`] or
//! [`Backend::resume`], which must return at once, and every answer comes
//! back later as a [`Reply`] through the [`ReplySink`], which queues it and
//! wakes the reactor's `mio::Waker`. Adapters: `echo` (answers at once, for
//! benchmarks), `embedded` (in-process crawl), `amqp` (RabbitMQ + Redis).

pub mod amqp;
pub mod echo;
pub mod embedded;

use std::sync::Arc;

use backend::job::{CrawlSpec, JobEvent};
use crossbeam_channel::Sender;

/// Identifies one websocket connection for its whole life. Slab tokens are
/// reused after a close; client ids never are, so a late reply for a closed
/// client cannot reach the connection that took over its slot.
pub type ClientId = u64;

/// Where a job's answers go and how the job is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTicket {
    /// The connection that submitted (or resumed) the job.
    pub client: ClientId,
    /// The job id as the client chose it; unique only per client.
    pub job_id: String,
    /// The gateway-wide key: node id, client id and job id, so that two
    /// clients' `JOB1` never meet in a backend, cache or queue.
    pub key: String,
    /// Proof of ownership the client needs to `resume` this job elsewhere.
    pub resume_token: String,
}

/// One answer from a backend about one job.
#[derive(Debug, Clone)]
pub struct Reply {
    pub ticket: JobTicket,
    pub event: JobEvent,
}

/// The way back from a backend to the reactor.
#[derive(Clone)]
pub struct ReplySink {
    replies: Sender<Reply>,
    waker: Arc<mio::Waker>,
}

impl ReplySink {
    pub fn new(replies: Sender<Reply>, waker: Arc<mio::Waker>) -> Self {
        ReplySink { replies, waker }
    }

    /// Queues a reply and wakes the reactor. Never blocks.
    pub fn send(&self, ticket: &JobTicket, event: JobEvent) {
        let reply = Reply {
            ticket: ticket.clone(),
            event,
        };
        if self.replies.send(reply).is_ok() {
            // A failed wake means the reactor is gone; the reply is moot.
            let _ = self.waker.wake();
        }
    }
}

/// What runs jobs for the gateway.
///
/// An adapter is built with the [`ReplySink`] it answers through. Both calls
/// are made from reader threads and must not block: hand the work to the
/// backend's own threads and answer through the sink.
pub trait Backend: Send + Sync {
    /// Short name for logs and metrics (`echo`, `embedded`, `amqp`).
    fn name(&self) -> &'static str;

    /// Runs a validated job. The first event for it must be
    /// [`JobEvent::Accepted`] (once the job is durable) or
    /// [`JobEvent::Failed`].
    fn submit(&self, ticket: JobTicket, spec: CrawlSpec);

    /// A client asks again for a job accepted earlier, perhaps on another
    /// connection or gateway, proving ownership with `ticket.resume_token`.
    /// Answers with the result if it is known, `Accepted` followed later by
    /// the result if the job still runs, or `Failed` with code `unknown_job`.
    fn resume(&self, ticket: JobTicket);
}
