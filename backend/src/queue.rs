//! The only way the master talks to workers: fetch tasks out, replies back.
//!
//! The master owns a job; workers are stateless page fetchers. They meet
//! only through [`TaskQueue`], so the same master code runs against
//! in-process worker threads (crossbeam channels, [`LocalQueue`], the
//! embedded mode) and against workers in other processes (a RabbitMQ
//! `crawl.tasks` queue with a per-master reply queue, a later adapter).
//! [`FetchTask`] and [`FetchReply`] are serde types for that reason.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::worker::Worker;

/// One page to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTask {
    /// The job this page belongs to (for logs and for matching replies).
    pub job: String,
    /// The master's number for this task, echoed in the reply.
    pub seq: u64,
    /// The normalised URL to fetch.
    pub url: String,
    /// Wall-clock milliseconds since the Unix epoch after which the master
    /// no longer waits for the answer, so a worker may skip the task. Wall
    /// clock because the task may cross machines; 0 means no deadline.
    #[serde(default)]
    pub deadline_ms: u64,
}

/// What a worker found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchReply {
    pub job: String,
    pub seq: u64,
    /// The URL of the task.
    pub url: String,
    /// Where redirects ended, when they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_url: Option<String>,
    /// HTTP status of the last response, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Absolute, normalised http(s) links, deduplicated, in page order.
    pub links: Vec<String>,
    /// Why there are no links, when the page was not an HTML page fetched
    /// successfully: `robots`, `not_html`, `http_404`, `private_address`,
    /// `timeout`, `too_many_redirects`, `bad_redirect`, `network`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FetchReply {
    pub fn failed(task: &FetchTask, reason: impl Into<String>) -> Self {
        FetchReply {
            job: task.job.clone(),
            seq: task.seq,
            url: task.url.clone(),
            final_url: None,
            status: None,
            links: Vec::new(),
            reason: Some(reason.into()),
        }
    }
}

/// The transport failed (broker gone, worker pool shut down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueError(pub String);

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task queue: {}", self.0)
    }
}

impl std::error::Error for QueueError {}

/// Where masters send work. One [`TaskChannel`] per running job, so that
/// replies reach the master that asked.
pub trait TaskQueue: Send + Sync {
    fn open(&self) -> Result<Box<dyn TaskChannel>, QueueError>;
}

/// One job's conversation with the workers.
pub trait TaskChannel: Send {
    fn send(&mut self, task: FetchTask) -> Result<(), QueueError>;
    /// The next reply, or `Ok(None)` once `deadline` has passed.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<FetchReply>, QueueError>;
}

/// Milliseconds since the Unix epoch for a monotonic deadline.
pub fn wall_deadline_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    let at = SystemTime::now() + left;
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Envelope {
    task: FetchTask,
    reply: Sender<FetchReply>,
}

/// The in-process queue: one shared crossbeam channel that all worker
/// threads take tasks from; each envelope carries its job's reply sender.
#[derive(Clone)]
pub struct LocalQueue {
    tasks: Sender<Envelope>,
}

impl TaskQueue for LocalQueue {
    fn open(&self) -> Result<Box<dyn TaskChannel>, QueueError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Box::new(LocalChannel {
            tasks: self.tasks.clone(),
            reply_tx: tx,
            reply_rx: rx,
        }))
    }
}

struct LocalChannel {
    tasks: Sender<Envelope>,
    reply_tx: Sender<FetchReply>,
    reply_rx: Receiver<FetchReply>,
}

impl TaskChannel for LocalChannel {
    fn send(&mut self, task: FetchTask) -> Result<(), QueueError> {
        self.tasks
            .send(Envelope {
                task,
                reply: self.reply_tx.clone(),
            })
            .map_err(|_| QueueError("worker pool is gone".into()))
    }

    fn recv_until(&mut self, deadline: Instant) -> Result<Option<FetchReply>, QueueError> {
        // We hold a reply sender ourselves, so the channel never reports
        // disconnection; a dead pool shows up as a timeout, which the
        // master's deadline handles.
        match self.reply_rx.recv_deadline(deadline) {
            Ok(r) => Ok(Some(r)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(QueueError("reply channel closed".into())),
        }
    }
}

/// Worker threads serving a [`LocalQueue`]. They stop when every handle to
/// the queue is dropped.
pub struct WorkerPool {
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` threads running `worker` and returns the queue that feeds
    /// them.
    pub fn start(n: usize, worker: Arc<Worker>) -> (LocalQueue, WorkerPool) {
        let (tx, rx) = crossbeam_channel::unbounded::<Envelope>();
        let threads = (0..n.max(1))
            .map(|i| {
                let (rx, worker) = (rx.clone(), worker.clone());
                std::thread::Builder::new()
                    .name(format!("crawl-worker-{i}"))
                    .spawn(move || {
                        for Envelope { task, reply } in rx.iter() {
                            let answer = if task.deadline_ms != 0 && now_ms() > task.deadline_ms {
                                FetchReply::failed(&task, "expired")
                            } else {
                                // A parser bug on some page must cost that
                                // page, not a worker thread.
                                catch_unwind(AssertUnwindSafe(|| worker.handle(&task)))
                                    .unwrap_or_else(|_| FetchReply::failed(&task, "internal_error"))
                            };
                            // The master may have given up on the job.
                            let _ = reply.send(answer);
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        (LocalQueue { tasks: tx }, WorkerPool { threads })
    }

    /// Waits for the threads; call after every handle to the queue is gone,
    /// or it waits forever. A thread busy with a fetch finishes it first.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
