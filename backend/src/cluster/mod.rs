//! The `backend master` and `backend worker` processes: the crawl engine
//! spread over RabbitMQ, with Redis for the cache, leases, results and the
//! membership registry.
//!
//! One file per job:
//!
//! - [`master`]: consumes `crawl.jobs` and runs each job with the same
//!   [`Engine`](crate::engine::Engine) as the embedded mode, under a lease
//!   with a fencing epoch; the job is acked only once its result is stored
//!   and published (the per-job steps are in that module's docs);
//! - [`task_queue`]: the [`TaskQueue`](crate::queue::TaskQueue) a master's
//!   engine sends fetch tasks through (`crawl.tasks` out, the master's own
//!   reply queue back);
//! - [`worker`]: consumes `crawl.tasks`, fetches, replies, then acks, so a
//!   worker killed mid-task leaves the task to be redelivered;
//! - [`dead_letters`]: `backend dead-letters`, reading the dead-letter queue
//!   without consuming it;
//! - [`presence`]: the heartbeat record both roles keep in the
//!   [membership registry](crate::membership), so `gateway status` lists
//!   them next to the gateways;
//! - [`admin`] and [`metrics`]: the optional admin HTTP server (`--admin`:
//!   `/metrics`, `/healthz`, `/readyz`) and the metrics it renders.
//!
//! This module holds what master and worker share: the reconnect loop
//! around a broker session and the clean exit on SIGTERM/SIGINT (the
//! heartbeat record is removed; unacked jobs and tasks go back to the
//! broker when the connection closes).
//!
//! lapin runs on a tokio runtime owned by the process; the blocking crawl
//! code runs on tokio's blocking threads and reaches the broker through
//! `Handle::block_on`.

pub mod admin;
mod dead_letters;
mod master;
pub mod metrics;
mod presence;
mod task_queue;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;

pub use dead_letters::{list_dead_letters, DeadLetter};
pub use master::{run_master, MasterConfig};
pub use presence::InFlight;
pub use task_queue::AmqpTaskQueue;
pub use worker::{run_worker, WorkerNodeConfig};

type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// What a node's admin side is made of: its metrics, its readiness, and
/// the address the admin server bound (None without `--admin`).
struct NodeAdmin {
    metrics: Arc<metrics::Metrics>,
    readiness: Arc<admin::Readiness>,
    bound: Option<SocketAddr>,
}

impl NodeAdmin {
    /// Creates the metrics and readiness and, with an address, starts the
    /// admin server. A bind failure is fatal: the operator asked for the
    /// endpoint, and a node nobody can probe would look dead to them.
    fn start(role: metrics::MetricsRole, addr: Option<SocketAddr>) -> std::io::Result<NodeAdmin> {
        let metrics = Arc::new(metrics::Metrics::new(role));
        let readiness = Arc::new(admin::Readiness::default());
        let bound =
            match addr {
                Some(a) => Some(admin::spawn(a, metrics.clone(), readiness.clone()).map_err(
                    |e| std::io::Error::new(e.kind(), format!("admin server on {a}: {e}")),
                )?),
                None => None,
            };
        Ok(NodeAdmin {
            metrics,
            readiness,
            bound,
        })
    }

    /// The registry record's `admin` field: `host:port`, or empty.
    fn record_addr(&self) -> String {
        self.bound.map(|a| a.to_string()).unwrap_or_default()
    }

    /// The startup line: a log line for people and, with `--admin`, a
    /// stdout line (`admin=http://ADDR`) for scripts and tests, the way the
    /// gateway prints its bound addresses.
    fn announce(&self, role: &str, node: &str) {
        match self.bound {
            Some(a) => {
                tracing::info!(role, node, admin = %a, "{role} started");
                println!("started role={role} node={node} admin=http://{a}");
            }
            None => tracing::info!(role, node, admin = "off", "{role} started"),
        }
    }
}

/// How long a session must have lasted for its end to count as a fresh
/// failure (backoff back to its first step) rather than a flapping broker.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Runs `session` again and again, sleeping a backoff between broker
/// losses, until SIGTERM or SIGINT arrives. Returns the signal's name.
async fn sessions_until_signal<F, Fut>(role: &'static str, mut session: F) -> &'static str
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), SessionError>>,
{
    let reconnecting = async {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            if let Err(e) = session().await {
                tracing::warn!(role, error = %e, "lost the broker");
            }
            if started.elapsed() > STABLE_SESSION {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    };
    tokio::select! {
        never = reconnecting => never,
        signal = shutdown_signal() => signal,
    }
}

/// The first of SIGTERM and SIGINT. Pending forever if the handlers cannot
/// be installed (the process then only dies by being killed, as before).
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "no signal handlers; exit by kill only");
            std::future::pending().await
        }
    }
}
