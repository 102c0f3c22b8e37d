//! The `backend master` and `backend worker` processes: the crawl engine
//! spread over RabbitMQ, with Redis for the cache, leases and results.
//!
//! A master consumes `crawl.jobs` (small prefetch, manual acks) and runs
//! each job with the same [`Engine`] as the embedded mode, but over an
//! [`AmqpTaskQueue`] (tasks to `crawl.tasks`, replies to the master's own
//! queue) and a [`RedisCache`]. Per job it:
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
//!    runner's commit is refused), publishes it to the gateway's queue with
//!    a publisher confirm, and only then acks the job.
//!
//! A worker consumes `crawl.tasks` with prefetch = concurrency and manual
//! acks, fetches with [`Worker`], replies to the task's `reply_to`, then
//! acks: a worker killed mid-task leaves the task unacked and the broker
//! redelivers it.
//!
//! lapin runs on a tokio runtime owned by the process; the blocking crawl
//! code runs on tokio's blocking threads and reaches the broker through
//! `Handle::block_on`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::amqp::{self, Backoff, JobMsg, Names, ResultMsg, StoredResult};
use crate::engine::{Engine, EngineConfig};
use crate::job::{JobEvent, JobFailure};
use crate::queue::{FetchReply, FetchTask, QueueError, TaskChannel, TaskQueue};
use crate::redis_store::{Coordination, Lease, LeaseAttempt, RedisCache};
use crate::worker::Worker;

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
}

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerNodeConfig {
    pub amqp_url: String,
    pub names: Names,
    pub node_id: String,
    /// Tasks fetched at once (the `crawl.tasks` prefetch).
    pub concurrency: u16,
    pub engine: EngineConfig,
}

type SessionError = Box<dyn std::error::Error + Send + Sync>;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs a master until the process is killed, reconnecting with backoff.
pub fn run_master(cfg: MasterConfig) -> std::io::Result<()> {
    let rt = amqp::runtime("master-amqp", 2)?;
    let prefix = cfg.names.redis_prefix();
    let coord = Arc::new(Coordination::new(&cfg.redis_url, &prefix, cfg.lease_ttl));
    let cache = Arc::new(RedisCache::new(
        &cfg.redis_url,
        &prefix,
        cfg.engine.cache_ttl,
    ));
    let cfg = Arc::new(cfg);
    rt.block_on(async move {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            if let Err(e) = master_session(cfg.clone(), coord.clone(), cache.clone()).await {
                tracing::warn!(error = %e, "master lost the broker");
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    })
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
}

async fn master_session(
    cfg: Arc<MasterConfig>,
    coord: Arc<Coordination>,
    cache: Arc<RedisCache>,
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
    let mut replies = replies_ch
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
    let router: Router = Arc::new(Mutex::new(HashMap::new()));
    let r = router.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = replies.next().await {
            match serde_json::from_slice::<FetchReply>(&delivery.data) {
                Ok(reply) => {
                    if let Some(tx) = r.lock().get(&reply.job) {
                        let _ = tx.send(reply);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "malformed fetch reply dropped"),
            }
        }
    });

    let tasks = conn.create_channel().await?;
    let queue = AmqpTaskQueue {
        inner: Arc::new(TaskQueueInner {
            channel: tasks,
            tasks: cfg.names.tasks(),
            reply_queue,
            router,
            handle: Handle::current(),
        }),
    };
    let engine = Engine::with_parts(cfg.engine.clone(), Arc::new(queue), cache);

    let jobs_ch = conn.create_channel().await?;
    jobs_ch
        .basic_qos(cfg.jobs.max(1), BasicQosOptions::default())
        .await?;
    let mut jobs = jobs_ch
        .basic_consume(
            cfg.names.jobs().as_str().into(),
            format!("master-{}", cfg.node_id).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let ctx = Arc::new(MasterCtx {
        owner: format!("{}-{:08x}", cfg.node_id, fastrand::u32(..)),
        cfg,
        coord,
        engine,
        publish,
        handle: Handle::current(),
    });
    tracing::info!(node = %ctx.cfg.node_id, queue = %ctx.cfg.names.jobs(), "master consuming jobs");
    while let Some(delivery) = jobs.next().await {
        let delivery = delivery?;
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || ctx.handle_job(delivery));
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
        self.publish_confirmed(
            &self.cfg.names.dead_exchange(),
            &self.cfg.names.jobs(),
            &d.data,
            props,
        )
    }

    fn handle_job(&self, d: lapin::message::Delivery) {
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
                    self.send_result(&queue, &msg);
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
        let lease = loop {
            match self.coord.acquire(&job.token, &self.owner) {
                LeaseAttempt::Acquired(l) => break Some(l),
                LeaseAttempt::Unavailable => break None,
                LeaseAttempt::Busy => {
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
        let renewing = self.keep_renewed(lease.clone());
        let run_key = format!("{}#{}#{}", job.key, self.owner, epoch);
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
            self.engine.run(&run_key, &job.spec, &mut progress)
        }));
        renewing.store(false, Ordering::Relaxed);
        let event = match result {
            Ok(Ok(outcome)) => JobEvent::Done(outcome),
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
        self.finish(&d, &job, epoch, event);
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
    /// answered from the store) or fully answered.
    fn finish(&self, d: &lapin::message::Delivery, job: &JobMsg, epoch: u64, event: JobEvent) {
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
            return;
        }
        let msg = ResultMsg {
            key: job.key.clone(),
            token: job.token.clone(),
            event,
            epoch,
        };
        if !self.send_result(&job.reply_queue, &msg) {
            // Unacked: the broker redelivers and the store answers.
            return;
        }
        if poison {
            let reason = match &msg.event {
                JobEvent::Failed(f) => f.message.clone(),
                _ => String::new(),
            };
            if !self.dead_letter(d, &reason) {
                return;
            }
        }
        self.ack(d);
        self.coord.clear_attempts(&job.token);
        tracing::info!(job = %job.key, epoch, "job answered");
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

type Router = Arc<Mutex<HashMap<String, Sender<FetchReply>>>>;

struct TaskQueueInner {
    channel: Channel,
    tasks: String,
    reply_queue: String,
    router: Router,
    handle: Handle,
}

/// [`TaskQueue`] over RabbitMQ: tasks to `crawl.tasks` with `reply_to` set
/// to this master's reply queue; replies routed back by task job key.
#[derive(Clone)]
pub struct AmqpTaskQueue {
    inner: Arc<TaskQueueInner>,
}

impl TaskQueue for AmqpTaskQueue {
    fn open(&self) -> Result<Box<dyn TaskChannel>, QueueError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Box::new(AmqpTaskChannel {
            inner: self.inner.clone(),
            job: None,
            tx,
            rx,
        }))
    }
}

struct AmqpTaskChannel {
    inner: Arc<TaskQueueInner>,
    job: Option<String>,
    tx: Sender<FetchReply>,
    rx: Receiver<FetchReply>,
}

impl TaskChannel for AmqpTaskChannel {
    fn send(&mut self, task: FetchTask) -> Result<(), QueueError> {
        if self.job.as_deref() != Some(task.job.as_str()) {
            self.inner
                .router
                .lock()
                .insert(task.job.clone(), self.tx.clone());
            self.job = Some(task.job.clone());
        }
        let body = serde_json::to_vec(&task).map_err(|e| QueueError(e.to_string()))?;
        let inner = &self.inner;
        inner
            .handle
            .block_on(inner.channel.basic_publish(
                "".into(),
                inner.tasks.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                amqp::transient().with_reply_to(inner.reply_queue.as_str().into()),
            ))
            .map(|_| ())
            .map_err(|e| QueueError(e.to_string()))
    }

    fn recv_until(&mut self, deadline: Instant) -> Result<Option<FetchReply>, QueueError> {
        // Wait in slices so a lost broker ends the job at once (to be
        // redelivered) rather than at its deadline with a partial answer.
        loop {
            let slice = deadline.min(Instant::now() + Duration::from_millis(250));
            match self.rx.recv_deadline(slice) {
                Ok(r) => return Ok(Some(r)),
                Err(RecvTimeoutError::Timeout) if slice >= deadline => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    if !self.inner.channel.status().connected() {
                        return Err(QueueError("broker connection lost".into()));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(QueueError("reply channel closed".into()))
                }
            }
        }
    }
}

impl Drop for AmqpTaskChannel {
    fn drop(&mut self) {
        if let Some(job) = &self.job {
            self.inner.router.lock().remove(job);
        }
    }
}

/// Runs a worker until the process is killed, reconnecting with backoff.
pub fn run_worker(cfg: WorkerNodeConfig) -> std::io::Result<()> {
    let rt = amqp::runtime("worker-amqp", 2)?;
    let worker = Arc::new(Worker::new(cfg.engine.worker_config()));
    let cfg = Arc::new(cfg);
    rt.block_on(async move {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            if let Err(e) = worker_session(cfg.clone(), worker.clone()).await {
                tracing::warn!(error = %e, "worker lost the broker");
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

async fn worker_session(
    cfg: Arc<WorkerNodeConfig>,
    worker: Arc<Worker>,
) -> Result<(), SessionError> {
    let conn = amqp::connect(&cfg.amqp_url, &format!("worker {}", cfg.node_id)).await?;
    let ch = conn.create_channel().await?;
    amqp::declare_shared(&ch, &cfg.names).await?;
    ch.basic_qos(cfg.concurrency.max(1), BasicQosOptions::default())
        .await?;
    let mut tasks = ch
        .basic_consume(
            cfg.names.tasks().as_str().into(),
            format!("worker-{}", cfg.node_id).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(node = %cfg.node_id, concurrency = cfg.concurrency, "worker consuming tasks");
    while let Some(delivery) = tasks.next().await {
        let delivery = delivery?;
        let (worker, ch) = (worker.clone(), ch.clone());
        tokio::spawn(async move {
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

/// A job in the dead-letter queue, as `backend dead-letters` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub key: Option<String>,
    pub reason: Option<String>,
    pub body: String,
}

/// Reads the dead-letter queue without consuming it (the messages are
/// returned to the queue when the channel closes unacked).
pub fn list_dead_letters(amqp_url: &str, names: &Names) -> Result<Vec<DeadLetter>, SessionError> {
    let rt = amqp::runtime("dead-letters", 1)?;
    rt.block_on(async {
        let conn = amqp::connect(amqp_url, "dead-letters").await?;
        let ch = conn.create_channel().await?;
        amqp::declare_shared(&ch, names).await?;
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                names.dead().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await?
        {
            let d = &m.delivery;
            out.push(DeadLetter {
                key: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.to_string()),
                reason: amqp::header(&d.properties, "x-reason"),
                body: String::from_utf8_lossy(&d.data).into_owned(),
            });
        }
        let _ = ch.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
        Ok(out)
    })
}
