//! The `backend master` process: runs crawl jobs from `crawl.jobs`.
//!
//! A master consumes `crawl.jobs` (small prefetch, manual acks) and runs
//! each job with the same [`Engine`] as the embedded mode, but over an
//! [`AmqpTaskQueue`] (fetches done by workers) and a [`RedisCache`] shared
//! by every master and gateway. Per job it:
//!
//! 1. counts the delivery (Redis); past `max_attempts` the job is poison:
//!    it goes to `crawl.jobs.dead` with the reason and its gateway gets an
//!    error;
//! 2. looks in the result store: a job whose result was stored by a runner
//!    that died before acking is answered again, not re-run;
//! 3. takes the lease (waiting while another live runner holds it) and
//!    renews it while it runs;
//! 4. runs the engine (which checks the cache first and extends shallower
//!    cached crawls);
//! 5. commits the result to the store with its fencing epoch (a stale
//!    runner's commit is refused; its cache write is fenced the same way),
//!    publishes it to the gateway's queue with a publisher confirm, and only
//!    then acks the job.
//!
//! The master keeps a heartbeat record in the registry (load = jobs in
//! flight, capacity = `--jobs`) and counts what it does in
//! [`MasterMetrics`](super::metrics::MasterMetrics), served with `--admin`.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::runtime::Handle;

use super::admin::Readiness;
use super::metrics::{Metrics, MetricsRole};
use super::presence::{self, InFlight, Presence};
use super::task_queue::{route_replies, AmqpTaskQueue, Router};
use super::{sessions_until_signal, NodeAdmin, SessionError};
use crate::amqp::{self, JobMsg, Names, ResultMsg, StoredResult};
use crate::cache::Fence;
use crate::engine::{Engine, EngineConfig};
use crate::job::{JobEvent, JobFailure};
use crate::membership::Role;
use crate::redis_store::{Coordination, Lease, LeaseAttempt, RedisCache};

/// Settings of a master process.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub names: Names,
    pub node_id: String,
    /// Jobs run at once (the `crawl.jobs` prefetch).
    pub jobs: u16,
    pub engine: EngineConfig,
    pub lease_ttl: Duration,
    /// Deliveries of one job after which it is dead-lettered.
    pub max_attempts: u64,
    /// Where the admin HTTP server listens (`--admin`); None: no server.
    pub admin: Option<SocketAddr>,
}

/// Runs a master, reconnecting with backoff, until SIGTERM or SIGINT; then
/// removes its registry record and returns. Jobs still running are
/// abandoned unacked: the broker redelivers them and their leases run out,
/// exactly as if the master had been killed.
pub fn run_master(cfg: MasterConfig) -> std::io::Result<()> {
    let admin = NodeAdmin::start(MetricsRole::Master, cfg.admin)?;
    let rt = amqp::runtime("master-amqp", 2)?;
    let prefix = cfg.names.redis_prefix();
    let coord = Arc::new(Coordination::new(&cfg.redis_url, &prefix, cfg.lease_ttl));
    let cache = Arc::new(RedisCache::new(
        &cfg.redis_url,
        &prefix,
        cfg.engine.cache_ttl,
    ));
    let in_flight = InFlight::default();
    let heartbeat = presence::start(
        Presence {
            redis_url: &cfg.redis_url,
            key_prefix: prefix,
            role: Role::Master,
            id: &cfg.node_id,
            capacity: u64::from(cfg.jobs.max(1)),
            admin: admin.record_addr(),
        },
        &in_flight,
    );
    admin.announce("master", &cfg.node_id);
    let cfg = Arc::new(cfg);
    let signal = rt.block_on(sessions_until_signal("master", || {
        master_session(
            cfg.clone(),
            coord.clone(),
            cache.clone(),
            in_flight.clone(),
            admin.metrics.clone(),
            admin.readiness.clone(),
        )
    }));
    admin.readiness.set_stopping();
    tracing::info!(node = %cfg.node_id, signal, "master stopping");
    presence::stop(heartbeat);
    rt.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

/// What every job handler of one broker session shares.
struct MasterCtx {
    cfg: Arc<MasterConfig>,
    coord: Arc<Coordination>,
    engine: Engine,
    /// Confirm-mode channel for results and dead letters.
    publish: Channel,
    handle: Handle,
    owner: String,
    metrics: Arc<Metrics>,
}

async fn master_session(
    cfg: Arc<MasterConfig>,
    coord: Arc<Coordination>,
    cache: Arc<RedisCache>,
    in_flight: InFlight,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<(), SessionError> {
    let conn = amqp::connect(&cfg.amqp_url, &format!("master {}", cfg.node_id)).await?;
    let publish = conn.create_channel().await?;
    amqp::declare_shared(&publish, &cfg.names).await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // Replies from workers, routed to the job that asked by task.job.
    let replies_ch = conn.create_channel().await?;
    let reply_queue = cfg.names.master_replies(&cfg.node_id);
    amqp::declare_reply_queue(&replies_ch, &reply_queue).await?;
    let replies = replies_ch
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let router: Router = Arc::default();
    route_replies(replies, router.clone());

    let tasks = conn.create_channel().await?;
    let queue = AmqpTaskQueue::new(
        tasks,
        cfg.names.tasks(),
        reply_queue,
        router,
        Handle::current(),
    );
    let engine = Engine::with_parts(cfg.engine.clone(), Arc::new(queue), cache);

    let jobs_ch = conn.create_channel().await?;
    let mut jobs = amqp::consume_acked(
        &jobs_ch,
        &cfg.names.jobs(),
        &format!("master-{}", cfg.node_id),
        cfg.jobs,
    )
    .await?;
    let ctx = Arc::new(MasterCtx {
        owner: format!("{}-{:08x}", cfg.node_id, fastrand::u32(..)),
        cfg,
        coord,
        engine,
        publish,
        handle: Handle::current(),
        metrics,
    });
    // Ready (for `/readyz`) from here until this session ends, however.
    let _consuming = readiness.consuming();
    tracing::info!(node = %ctx.cfg.node_id, queue = %ctx.cfg.names.jobs(), "master consuming jobs");
    while let Some(delivery) = jobs.next().await {
        let delivery = delivery?;
        let ctx = ctx.clone();
        let busy = in_flight.enter();
        tokio::task::spawn_blocking(move || {
            let _busy = busy;
            ctx.handle_job(delivery)
        });
    }
    Err("the broker ended the consumer".into())
}

impl MasterCtx {
    fn ack(&self, d: &lapin::message::Delivery) {
        if let Err(e) = self.handle.block_on(d.ack(BasicAckOptions::default())) {
            tracing::warn!(error = %e, "ack failed (the job will be redelivered)");
        }
    }

    fn requeue(&self, d: &lapin::message::Delivery) {
        let _ = self.handle.block_on(d.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        }));
    }

    /// Publishes with a publisher confirm; true once the broker has it.
    fn publish_confirmed(
        &self,
        exchange: &str,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> bool {
        let r = self.handle.block_on(async {
            self.publish
                .basic_publish(
                    exchange.into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?
                .await
        });
        match r {
            Ok(c) if c.is_ack() => true,
            Ok(_) => {
                tracing::warn!(queue, "broker nacked a publish");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, queue, "publish failed");
                false
            }
        }
    }

    fn send_result(&self, queue: &str, msg: &ResultMsg) -> bool {
        let Ok(body) = serde_json::to_vec(msg) else {
            return false;
        };
        self.publish_confirmed("", queue, &body, amqp::persistent())
    }

    /// Moves a job to the dead-letter queue with the reason.
    fn dead_letter(&self, d: &lapin::message::Delivery, reason: &str) -> bool {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-reason"),
            AMQPValue::LongString(reason.into()),
        );
        let mut props = amqp::persistent().with_headers(headers);
        if let Some(rq) = d.properties.reply_to() {
            props = props.with_reply_to(rq.clone());
        }
        if let Some(c) = d.properties.correlation_id() {
            props = props.with_correlation_id(c.clone());
        }
        let moved = self.publish_confirmed(
            &self.cfg.names.dead_exchange(),
            &self.cfg.names.jobs(),
            &d.data,
            props,
        );
        if moved {
            self.metrics.master.jobs_dead_lettered.inc();
        }
        moved
    }

    fn handle_job(&self, d: lapin::message::Delivery) {
        if d.redelivered {
            self.metrics.master.jobs_redelivered.inc();
        }
        let job: JobMsg = match serde_json::from_slice(&d.data) {
            Ok(j) => j,
            Err(e) => {
                let reason = format!("malformed job: {e}");
                tracing::error!(%reason, "dead-lettering a job");
                let key = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.to_string());
                let queue = d.properties.reply_to().as_ref().map(|s| s.to_string());
                if let (Some(key), Some(queue)) = (key, queue) {
                    let msg = ResultMsg {
                        key,
                        token: String::new(),
                        event: JobEvent::Failed(JobFailure::new("job_failed", reason.clone())),
                        epoch: 0,
                    };
                    if self.send_result(&queue, &msg) {
                        self.metrics.master.jobs_failed.inc();
                    }
                }
                if self.dead_letter(&d, &reason) {
                    self.ack(&d);
                }
                return;
            }
        };
        let attempts = self.coord.attempt(&job.token).unwrap_or(1);
        if attempts > self.cfg.max_attempts {
            let reason = format!(
                "gave up after {} deliveries (the job keeps failing or killing its runner)",
                attempts - 1
            );
            tracing::error!(job = %job.key, %reason, "dead-lettering a job");
            // The newest epoch: no runner is left to fence against (they
            // kept dying), and an older epoch's write would be refused.
            let epoch = self.coord.current_epoch(&job.token).unwrap_or(0);
            let failure = JobFailure::new("job_failed", reason.clone());
            self.finish(&d, &job, epoch, JobEvent::Failed(failure));
            return;
        }
        if self.answered_before(&d, &job) {
            return;
        }
        // One conflict per delivery, however long the wait: the counter says
        // how often runners collide, not how long they poll.
        let mut conflicted = false;
        let lease = loop {
            match self.coord.acquire(&job.token, &self.owner) {
                LeaseAttempt::Acquired(l) => break Some(l),
                LeaseAttempt::Unavailable => break None,
                LeaseAttempt::Busy => {
                    if !conflicted {
                        conflicted = true;
                        self.metrics.master.lease_conflicts.inc();
                    }
                    // Another runner holds it: it finishes (and we find its
                    // result) or dies (and its lease runs out).
                    std::thread::sleep(Duration::from_millis(250));
                    if self.answered_before(&d, &job) {
                        return;
                    }
                    if !self.publish.status().connected() {
                        return;
                    }
                }
            }
        };
        let epoch = lease.as_ref().map_or(0, |l| l.epoch);
        tracing::info!(job = %job.key, url = %job.spec.url, depth = job.spec.depth, epoch, attempts, "job started");
        self.metrics.master.jobs_started.inc();
        let started = Instant::now();
        let renewing = self.keep_renewed(lease.clone());
        let run_key = format!("{}#{}#{}", job.key, self.owner, epoch);
        // Without a lease (Redis down) there is no epoch to fence with.
        let fence = lease.as_ref().map(|l| Fence {
            job: job.token.clone(),
            epoch: l.epoch,
        });
        let mut progress = |level: u32, pages: u32| {
            let msg = ResultMsg {
                key: job.key.clone(),
                token: job.token.clone(),
                event: JobEvent::Progress { level, pages },
                epoch,
            };
            if let Ok(body) = serde_json::to_vec(&msg) {
                // Progress is a courtesy: not confirmed, not persistent.
                let _ = self.handle.block_on(self.publish.basic_publish(
                    "".into(),
                    job.reply_queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    amqp::transient(),
                ));
            }
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.engine
                .run_fenced(&run_key, &job.spec, fence.as_ref(), &mut progress)
        }));
        renewing.store(false, Ordering::Relaxed);
        let event = match result {
            Ok(Ok(outcome)) => {
                if outcome.cached {
                    self.metrics.master.cache_hits.inc();
                } else {
                    self.metrics.master.cache_misses.inc();
                }
                JobEvent::Done(outcome)
            }
            Ok(Err(f)) if f.code == "backend_unavailable" => {
                // The broker went away under the job: not the client's
                // failure. Leave it to the redelivery.
                tracing::warn!(job = %job.key, error = %f, "job interrupted; requeued");
                if let Some(l) = &lease {
                    self.coord.release(l);
                }
                self.requeue(&d);
                return;
            }
            Ok(Err(f)) => JobEvent::Failed(f),
            Err(_) => {
                tracing::error!(job = %job.key, "crawl panicked; requeued");
                if let Some(l) = &lease {
                    self.coord.release(l);
                }
                self.requeue(&d);
                return;
            }
        };
        if self.finish(&d, &job, epoch, event) {
            self.metrics
                .master
                .job_duration
                .observe(started.elapsed().as_secs_f64());
        }
        if let Some(l) = &lease {
            self.coord.release(l);
        }
    }

    /// A stored final result from an earlier run: send it again and ack.
    fn answered_before(&self, d: &lapin::message::Delivery, job: &JobMsg) -> bool {
        let Some(Some(StoredResult {
            event: Some(event), ..
        })) = self.coord.stored(&job.token)
        else {
            return false;
        };
        tracing::info!(job = %job.key, "job already answered; result sent again");
        let epoch = self.coord.current_epoch(&job.token).unwrap_or(0);
        let msg = ResultMsg {
            key: job.key.clone(),
            token: job.token.clone(),
            event,
            epoch,
        };
        if self.send_result(&job.reply_queue, &msg) {
            self.ack(d);
            self.coord.clear_attempts(&job.token);
        }
        true
    }

    /// Commit (fenced), publish (confirmed), ack: in that order, so that a
    /// crash anywhere leaves the job either unacked (redelivered, and then
    /// answered from the store) or fully answered. True once answered and
    /// acked (only then is it counted completed or failed: an unacked job
    /// comes back and is counted by the run that answers it).
    fn finish(
        &self,
        d: &lapin::message::Delivery,
        job: &JobMsg,
        epoch: u64,
        event: JobEvent,
    ) -> bool {
        let poison = matches!(&event, JobEvent::Failed(f) if f.code == "job_failed");
        let stored = StoredResult {
            key: job.key.clone(),
            event: Some(event.clone()),
        };
        let ttl = self.cfg.engine.result_ttl;
        if let Some(false) = self
            .coord
            .commit_result(&job.token, epoch, &job.token, &stored, ttl)
        {
            tracing::warn!(job = %job.key, epoch, "stale runner: a newer epoch owns this job; result dropped");
            self.ack(d);
            return false;
        }
        let msg = ResultMsg {
            key: job.key.clone(),
            token: job.token.clone(),
            event,
            epoch,
        };
        if !self.send_result(&job.reply_queue, &msg) {
            // Unacked: the broker redelivers and the store answers.
            return false;
        }
        if poison {
            let reason = match &msg.event {
                JobEvent::Failed(f) => f.message.clone(),
                _ => String::new(),
            };
            if !self.dead_letter(d, &reason) {
                return false;
            }
        }
        self.ack(d);
        self.coord.clear_attempts(&job.token);
        match &msg.event {
            JobEvent::Failed(_) => self.metrics.master.jobs_failed.inc(),
            _ => self.metrics.master.jobs_completed.inc(),
        };
        tracing::info!(job = %job.key, epoch, "job answered");
        true
    }

    /// Renews the lease every third of its TTL until the flag is cleared.
    fn keep_renewed(&self, lease: Option<Lease>) -> Arc<AtomicBool> {
        let running = Arc::new(AtomicBool::new(true));
        let Some(lease) = lease else {
            return running;
        };
        let (flag, coord) = (running.clone(), self.coord.clone());
        let every = coord.lease_ttl() / 3;
        std::thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                if !flag.load(Ordering::Relaxed) {
                    break;
                }
                if coord.renew(&lease) == Some(false) {
                    tracing::warn!(epoch = lease.epoch, "lease lost; the result will be fenced");
                    break;
                }
            }
        });
        running
    }
}
