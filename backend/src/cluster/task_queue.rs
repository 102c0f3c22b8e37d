//! The master's [`TaskQueue`] over RabbitMQ: the engine's BFS sends fetch
//! tasks to `crawl.tasks` with `reply_to` set to this master's reply queue,
//! and one consumer of that queue ([`route_replies`]) hands each reply to
//! the job that asked, by the task's job key. It is the distributed twin of
//! [`LocalQueue`](crate::queue::LocalQueue): the engine cannot tell them
//! apart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::Channel;
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::amqp;
use crate::queue::{FetchReply, FetchTask, QueueError, TaskChannel, TaskQueue};

/// Reply senders by job key, for the jobs running in this master.
pub(super) type Router = Arc<Mutex<HashMap<String, Sender<FetchReply>>>>;

/// Spawns the consumer of the master's reply queue: each reply goes to the
/// job that sent the task; replies for a job no longer here are dropped.
pub(super) fn route_replies(mut replies: lapin::Consumer, router: Router) {
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = replies.next().await {
            match serde_json::from_slice::<FetchReply>(&delivery.data) {
                Ok(reply) => {
                    if let Some(tx) = router.lock().get(&reply.job) {
                        let _ = tx.send(reply);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "malformed fetch reply dropped"),
            }
        }
    });
}

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

impl AmqpTaskQueue {
    /// Tasks go out on `channel` to the `tasks` queue; replies come back on
    /// `reply_queue` and are routed through `router` (see
    /// [`route_replies`]). `handle` is the tokio runtime lapin runs on.
    pub(super) fn new(
        channel: Channel,
        tasks: String,
        reply_queue: String,
        router: Router,
        handle: Handle,
    ) -> AmqpTaskQueue {
        AmqpTaskQueue {
            inner: Arc::new(TaskQueueInner {
                channel,
                tasks,
                reply_queue,
                router,
                handle,
            }),
        }
    }
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
