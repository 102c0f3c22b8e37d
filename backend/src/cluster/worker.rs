//! The `backend worker` process: fetches pages for masters.
//!
//! A worker consumes `crawl.tasks` with prefetch = `--concurrency` and
//! manual acks, fetches with the same [`Worker`] as the embedded mode
//! (SSRF guard, robots.txt, link extraction), replies to the task's
//! `reply_to` queue, and only then acks: a worker killed mid-task leaves the
//! task unacked and the broker redelivers it to another worker. A task past
//! its deadline is answered `expired` without fetching (its master has
//! moved on). The worker keeps a heartbeat record in the registry (load =
//! tasks in flight) and counts its tasks in
//! [`WorkerMetrics`](super::metrics::WorkerMetrics), served with `--admin`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};

use super::admin::Readiness;
use super::metrics::{Metrics, MetricsRole};
use super::presence::{self, InFlight, Presence};
use super::{sessions_until_signal, NodeAdmin, SessionError};
use crate::amqp::{self, Names};
use crate::engine::EngineConfig;
use crate::membership::Role;
use crate::queue::{FetchReply, FetchTask};
use crate::worker::Worker;

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerNodeConfig {
    pub amqp_url: String,
    /// Redis of the membership registry (the worker uses Redis for nothing
    /// else).
    pub redis_url: String,
    pub names: Names,
    pub node_id: String,
    /// Tasks fetched at once (the `crawl.tasks` prefetch).
    pub concurrency: u16,
    pub engine: EngineConfig,
    /// Where the admin HTTP server listens (`--admin`); None: no server.
    pub admin: Option<SocketAddr>,
}

/// Runs a worker, reconnecting with backoff, until SIGTERM or SIGINT; then
/// removes its registry record and returns (unacked tasks go back to the
/// broker as the process exits).
pub fn run_worker(cfg: WorkerNodeConfig) -> std::io::Result<()> {
    let admin = NodeAdmin::start(MetricsRole::Worker, cfg.admin)?;
    let rt = amqp::runtime("worker-amqp", 2)?;
    let worker = Arc::new(Worker::new(cfg.engine.worker_config()));
    let in_flight = InFlight::default();
    let heartbeat = presence::start(
        Presence {
            redis_url: &cfg.redis_url,
            key_prefix: cfg.names.redis_prefix(),
            role: Role::Worker,
            id: &cfg.node_id,
            capacity: u64::from(cfg.concurrency.max(1)),
            admin: admin.record_addr(),
        },
        &in_flight,
    );
    admin.announce("worker", &cfg.node_id);
    let cfg = Arc::new(cfg);
    let signal = rt.block_on(sessions_until_signal("worker", || {
        worker_session(
            cfg.clone(),
            worker.clone(),
            in_flight.clone(),
            admin.metrics.clone(),
            admin.readiness.clone(),
        )
    }));
    admin.readiness.set_stopping();
    tracing::info!(node = %cfg.node_id, signal, "worker stopping");
    presence::stop(heartbeat);
    // Fetches still running are abandoned: their tasks are unacked and
    // will be redelivered.
    rt.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn worker_session(
    cfg: Arc<WorkerNodeConfig>,
    worker: Arc<Worker>,
    in_flight: InFlight,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<(), SessionError> {
    let conn = amqp::connect(&cfg.amqp_url, &format!("worker {}", cfg.node_id)).await?;
    let ch = conn.create_channel().await?;
    amqp::declare_shared(&ch, &cfg.names).await?;
    let mut tasks = amqp::consume_acked(
        &ch,
        &cfg.names.tasks(),
        &format!("worker-{}", cfg.node_id),
        cfg.concurrency,
    )
    .await?;
    // Ready (for `/readyz`) from here until this session ends, however.
    let _consuming = readiness.consuming();
    tracing::info!(node = %cfg.node_id, concurrency = cfg.concurrency, "worker consuming tasks");
    while let Some(delivery) = tasks.next().await {
        let delivery = delivery?;
        let (worker, ch, metrics) = (worker.clone(), ch.clone(), metrics.clone());
        let busy = in_flight.enter();
        tokio::spawn(async move {
            let _busy = busy;
            let task: FetchTask = match serde_json::from_slice(&delivery.data) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed task dropped");
                    metrics.worker.task("malformed", Some("not_a_task"));
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: false,
                            ..BasicNackOptions::default()
                        })
                        .await;
                    return;
                }
            };
            let Some(reply_to) = delivery
                .properties
                .reply_to()
                .as_ref()
                .map(|s| s.to_string())
            else {
                // Nobody to answer: acked so it is not redelivered forever.
                metrics.worker.task("malformed", Some("no_reply_to"));
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return;
            };
            let reply = if task.deadline_ms != 0 && now_ms() > task.deadline_ms {
                metrics.worker.task("expired", Some("expired"));
                FetchReply::failed(&task, "expired")
            } else {
                let t = task.clone();
                let started = Instant::now();
                let reply = match tokio::task::spawn_blocking(move || worker.handle(&t)).await {
                    Ok(r) => r,
                    Err(_) => FetchReply::failed(&task, "internal_error"),
                };
                metrics
                    .worker
                    .fetch_duration
                    .observe(started.elapsed().as_secs_f64());
                let outcome = if reply.reason.is_none() {
                    "ok"
                } else {
                    "failed"
                };
                metrics.worker.task(outcome, reply.reason.as_deref());
                reply
            };
            let Ok(body) = serde_json::to_vec(&reply) else {
                return;
            };
            let sent = ch
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    amqp::transient(),
                )
                .await;
            if sent.is_ok() {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Err("the broker ended the consumer".into())
}
