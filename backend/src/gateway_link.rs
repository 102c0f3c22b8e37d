//! A gateway's connection to RabbitMQ, with a synchronous, non-blocking
//! face: the gateway's `amqp` adapter hands jobs to [`GatewayLink::publish`]
//! and gets callbacks; lapin and its tokio runtime stay on the link's own
//! threads, never on the reactor or reader threads.
//!
//! - Jobs are published persistent, to the durable `crawl.jobs`, on a
//!   confirm-mode channel; the callback reports success only after the
//!   broker's confirm (that is when the client may be told `accepted`).
//! - Results are consumed from the gateway's own durable queue
//!   `gateway.<node>.done` (with `x-expires`), acked after the callback.
//! - The connection is re-established with capped, jittered exponential
//!   backoff; while it is down, publishes fail at once (the adapter answers
//!   `backend_unavailable`), and results wait in the durable queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use tokio::sync::mpsc;

use crate::amqp::{self, JobMsg, Names, ResultMsg};
use crate::backoff::Backoff;

/// Called with each result message for this gateway.
pub type OnResult = Arc<dyn Fn(ResultMsg) + Send + Sync>;
/// Called once per publish: `Ok` after the broker confirmed it.
pub type OnConfirm = Box<dyn FnOnce(Result<(), String>) + Send>;

pub struct GatewayLinkConfig {
    pub amqp_url: String,
    pub names: Names,
    pub node_id: String,
    /// How long the result queue outlives its last consumer.
    pub queue_expires: Duration,
}

pub struct GatewayLink {
    jobs: mpsc::UnboundedSender<(JobMsg, OnConfirm)>,
    up: Arc<AtomicBool>,
    reply_queue: String,
    _runtime: tokio::runtime::Runtime,
}

impl GatewayLink {
    pub fn start(cfg: GatewayLinkConfig, on_result: OnResult) -> std::io::Result<GatewayLink> {
        let runtime = amqp::runtime("gw-amqp", 1)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let reply_queue = cfg.names.gateway_done(&cfg.node_id);
        runtime.spawn(run(cfg, rx, on_result, up.clone()));
        Ok(GatewayLink {
            jobs: tx,
            up,
            reply_queue,
            _runtime: runtime,
        })
    }

    /// The queue results for this gateway go to.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Whether the broker connection is up right now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Publishes a job; never blocks.
    pub fn publish(&self, job: JobMsg, done: OnConfirm) {
        if let Err(e) = self.jobs.send((job, done)) {
            let (_, done) = e.0;
            done(Err("the broker link is shut down".into()));
        }
    }
}

async fn run(
    cfg: GatewayLinkConfig,
    mut jobs: mpsc::UnboundedReceiver<(JobMsg, OnConfirm)>,
    on_result: OnResult,
    up: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::default();
    loop {
        match session(&cfg, &mut jobs, &on_result, &up).await {
            Ok(()) => return, // the gateway dropped the link
            Err(e) => tracing::warn!(error = %e, "gateway lost the broker"),
        }
        up.store(false, Ordering::Relaxed);
        // While down: fail every publish at once, retry after the backoff.
        let until = tokio::time::Instant::now() + backoff.next_delay();
        loop {
            match tokio::time::timeout_at(until, jobs.recv()).await {
                Ok(Some((_, done))) => done(Err("the message broker is unreachable".into())),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if up.load(Ordering::Relaxed) {
            backoff.reset();
        }
    }
}

type SessionError = Box<dyn std::error::Error + Send + Sync>;

async fn session(
    cfg: &GatewayLinkConfig,
    jobs: &mut mpsc::UnboundedReceiver<(JobMsg, OnConfirm)>,
    on_result: &OnResult,
    up: &Arc<AtomicBool>,
) -> Result<(), SessionError> {
    let conn = amqp::connect(&cfg.amqp_url, &format!("gateway {}", cfg.node_id)).await?;
    let publish = conn.create_channel().await?;
    amqp::declare_shared(&publish, &cfg.names).await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = conn.create_channel().await?;
    let queue = cfg.names.gateway_done(&cfg.node_id);
    amqp::declare_gateway_queue(&consume, &queue, cfg.queue_expires).await?;
    let mut results = amqp::consume_acked(&consume, &queue, "", 256).await?;
    up.store(true, Ordering::Relaxed);
    tracing::info!(node = %cfg.node_id, %queue, "gateway connected to the broker");
    let jobs_queue = cfg.names.jobs();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some((job, done)) = job else { return Ok(()) };
                if !publish.status().connected() {
                    done(Err("the message broker is unreachable".into()));
                    return Err("publish channel closed".into());
                }
                let (channel, queue) = (publish.clone(), jobs_queue.clone());
                tokio::spawn(async move {
                    let body = match serde_json::to_vec(&job) {
                        Ok(b) => b,
                        Err(e) => return done(Err(e.to_string())),
                    };
                    let props = amqp::persistent()
                        .with_correlation_id(job.key.as_str().into())
                        .with_reply_to(job.reply_queue.as_str().into());
                    let confirm = async {
                        channel
                            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, props)
                            .await?
                            .await
                    };
                    match confirm.await {
                        Ok(c) if c.is_ack() => done(Ok(())),
                        Ok(_) => done(Err("the broker refused the job".into())),
                        Err(e) => done(Err(format!("the message broker is unreachable ({e})"))),
                    }
                });
            }
            delivery = results.next() => {
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err("the broker ended the result consumer".into()),
                };
                match serde_json::from_slice::<ResultMsg>(&delivery.data) {
                    Ok(msg) => on_result(msg),
                    Err(e) => tracing::warn!(error = %e, "malformed result message dropped"),
                }
                // Acked after the reply is queued for the reactor: a gateway
                // killed before this gets the message again (if it comes
                // back with the same node id); the client's `resume` is
                // answered from Redis anyway.
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
    }
}
