//! The `backend worker` process: fetches pages for masters.
//!
//! A worker consumes `crawl.tasks` with prefetch = `--concurrency` and
//! manual acks, fetches with the same [`Worker`] as the embedded mode
//! (SSRF guard, robots.txt, link extraction), replies to the task's
//! `reply_to` queue, and only then acks: a worker killed mid-task leaves the
//! task unacked and the broker redelivers it to another worker. A task past
//! its deadline is answered `expired` without fetching (its master has
//! moved on). The worker keeps a heartbeat record in the registry (load =
//! tasks in flight).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};

use super::presence::{self, InFlight, Presence};
use super::{sessions_until_signal, SessionError};
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
}

/// Runs a worker, reconnecting with backoff, until SIGTERM or SIGINT; then
/// removes its registry record and returns (unacked tasks go back to the
/// broker as the process exits).
pub fn run_worker(cfg: WorkerNodeConfig) -> std::io::Result<()> {
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
        },
        &in_flight,
    );
    let cfg = Arc::new(cfg);
    let signal = rt.block_on(sessions_until_signal("worker", || {
        worker_session(cfg.clone(), worker.clone(), in_flight.clone())
    }));
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
    tracing::info!(node = %cfg.node_id, concurrency = cfg.concurrency, "worker consuming tasks");
    while let Some(delivery) = tasks.next().await {
        let delivery = delivery?;
        let (worker, ch) = (worker.clone(), ch.clone());
        let busy = in_flight.enter();
        tokio::spawn(async move {
            let _busy = busy;
            let task: FetchTask = match serde_json::from_slice(&delivery.data) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed task dropped");
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
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return;
            };
            let reply = if task.deadline_ms != 0 && now_ms() > task.deadline_ms {
                FetchReply::failed(&task, "expired")
            } else {
                let t = task.clone();
                match tokio::task::spawn_blocking(move || worker.handle(&t)).await {
                    Ok(r) => r,
                    Err(_) => FetchReply::failed(&task, "internal_error"),
                }
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
