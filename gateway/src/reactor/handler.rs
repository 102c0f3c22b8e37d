//! What the gateway does with a client's message and with a backend's reply.
//!
//! Runs on reader threads while they hold the connection. Everything it says
//! to the client is appended to the connection's outbound buffer as a text
//! frame; nothing here blocks (the backend's `submit` and `resume` return at
//! once).

use backend::job::{JobEvent, JobFailure};
use tracing::{debug, info, warn};

use super::conn::Conn;
use super::Shared;
use crate::backend::{JobTicket, Reply};
use crate::protocol::{self, codes, Request};
use crate::ws::codec;

fn send(shared: &Shared, out: &mut Vec<u8>, message: &str) {
    codec::text(out, message);
    shared.metrics.messages_sent.inc();
}

fn send_error(
    shared: &Shared,
    conn: &Conn,
    out: &mut Vec<u8>,
    id: Option<&str>,
    failure: &JobFailure,
) {
    shared.metrics.error(&failure.code);
    warn!(client = conn.id, job = id.unwrap_or(""), code = %failure.code, message = %failure.message, "error sent");
    send(shared, out, &protocol::error(id, failure));
}

pub fn on_binary(shared: &Shared, conn: &Conn, out: &mut Vec<u8>, len: usize) {
    let failure = JobFailure::new(
        codes::BINARY_NOT_SUPPORTED,
        format!("binary message of {len} bytes ignored; send JSON text"),
    );
    send_error(shared, conn, out, None, &failure);
}

pub fn on_text(shared: &Shared, conn: &mut Conn, out: &mut Vec<u8>, text: &str) {
    let request = match protocol::parse(text) {
        Ok(request) => request,
        Err(rejection) => {
            return send_error(
                shared,
                conn,
                out,
                rejection.id.as_deref(),
                &rejection.failure,
            )
        }
    };
    match request {
        Request::Ping { id } => send(shared, out, &protocol::pong(&id)),
        Request::Crawl {
            id,
            url,
            depth,
            options,
        } => {
            if let Err(failure) = admit_job(shared, conn, &id) {
                return send_error(shared, conn, out, Some(&id), &failure);
            }
            let spec = match shared.validate(&url, depth, &options) {
                Ok(spec) => spec,
                Err(failure) => return send_error(shared, conn, out, Some(&id), &failure),
            };
            let ticket = shared.ticket(conn.id, &id, new_resume_token());
            info!(client = conn.id, job = %id, url = %spec.url, depth = spec.depth, "job submitted");
            conn.add_job(&id);
            shared.metrics.jobs_submitted.inc();
            shared.backend.submit(ticket, spec);
        }
        Request::Resume { id, token } => {
            if let Err(failure) = admit_job(shared, conn, &id) {
                return send_error(shared, conn, out, Some(&id), &failure);
            }
            info!(client = conn.id, job = %id, "job resume asked");
            conn.add_job(&id);
            shared.backend.resume(shared.ticket(conn.id, &id, token));
        }
    }
}

/// Whether this connection may start (or resume) one more job.
fn admit_job(shared: &Shared, conn: &Conn, job_id: &str) -> Result<(), JobFailure> {
    if shared.status.is_draining() {
        return Err(JobFailure::new(
            codes::DRAINING,
            "gateway is shutting down; reconnect and retry",
        ));
    }
    if conn.has_job(job_id) {
        return Err(JobFailure::new(
            codes::DUPLICATE_JOB,
            "a job with this id is already running here",
        ));
    }
    let limit = usize::from(shared.limits.max_jobs_per_connection);
    if conn.jobs_in_flight() >= limit {
        return Err(JobFailure::new(
            codes::TOO_MANY_JOBS,
            format!("at most {limit} job(s) may run per connection; wait for a result"),
        ));
    }
    Ok(())
}

/// Passes a backend's reply on to the client it belongs to.
pub fn deliver(shared: &Shared, conn: &mut Conn, out: &mut Vec<u8>, reply: Reply) {
    let Reply { ticket, event } = reply;
    let id = ticket.job_id.as_str();
    match event {
        JobEvent::Accepted { cached } => {
            debug!(client = conn.id, job = id, cached, "job accepted");
            send(
                shared,
                out,
                &protocol::accepted(id, &ticket.resume_token, cached),
            );
        }
        JobEvent::Progress { level, pages } => {
            send(shared, out, &protocol::progress(id, level, pages))
        }
        JobEvent::Done(outcome) => {
            if let Some(took) = conn.finish_job(id) {
                shared.metrics.job_duration.observe(took.as_secs_f64());
            }
            if outcome.cached {
                shared.metrics.cache_hits.inc();
            }
            shared.metrics.answered("result");
            info!(
                client = conn.id,
                job = id,
                cached = outcome.cached,
                levels = outcome.levels.len(),
                "job answered"
            );
            send(shared, out, &protocol::result(id, &outcome));
        }
        JobEvent::Failed(failure) => {
            conn.finish_job(id);
            shared.metrics.answered("error");
            send_error(shared, conn, out, Some(id), &failure);
        }
    }
}

/// 128 random bits, hex: proof of ownership for `resume`.
fn new_resume_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness is a broken host; refuse to hand out guessable tokens.
        panic!("the operating system's random source failed");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Shared {
    fn ticket(&self, client: u64, job_id: &str, resume_token: String) -> JobTicket {
        JobTicket {
            client,
            job_id: job_id.to_string(),
            key: format!("{}/{}/{}", self.node_id, client, job_id),
            resume_token,
        }
    }
}
