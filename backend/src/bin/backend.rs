//! `backend master` and `backend worker`: the crawl engine's two roles as
//! processes, meeting through RabbitMQ (`crawl.jobs`, `crawl.tasks`) and
//! Redis (cache, result store, leases). See `backend::cluster`.
//!
//! Masters and workers heartbeat into the membership registry at
//! `--redis-url` under `--namespace` (see `backend::membership`), so
//! `gateway status` lists them; SIGTERM or SIGINT removes the record and
//! exits.
//!
//! With `--admin ADDR` a master or worker also serves `/metrics`,
//! `/healthz` and `/readyz` there (off by default: every node would
//! otherwise need a port of its own), puts the bound address into its
//! registry record and prints `started role=.. node=.. admin=http://ADDR`
//! on stdout.
//!
//! Every flag can also be given as a `BACKEND_*` environment variable.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use backend::amqp::{Names, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use backend::cluster::{run_master, run_worker, MasterConfig, WorkerNodeConfig};
use backend::engine::{EngineConfig, Limits};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "backend",
    version,
    about = "Crawl masters and workers over RabbitMQ and Redis"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Consume crawl jobs, run their BFS through workers, answer gateways.
    Master(MasterArgs),
    /// Fetch pages for masters.
    Worker(WorkerArgs),
    /// Print the dead-letter queue's jobs (one JSON object per line)
    /// without removing them.
    DeadLetters(Common),
}

#[derive(Debug, Clone, Args)]
struct Common {
    #[arg(long, env = "BACKEND_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    amqp_url: String,
    #[arg(long, env = "BACKEND_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis_url: String,
    /// Name in logs and queue names. Default: <role>-<pid>.
    #[arg(long, env = "BACKEND_NODE_ID")]
    node_id: Option<String>,
    /// Prefix of every queue, exchange and Redis key (for several
    /// deployments or test runs on one broker). Must match the gateways'.
    #[arg(long, env = "BACKEND_NAMESPACE", default_value = "")]
    namespace: String,
    /// Let crawls fetch private, loopback and link-local addresses (tests
    /// against local fixture sites only).
    #[arg(long, env = "BACKEND_ALLOW_PRIVATE")]
    allow_private: bool,
    /// Do not obey robots.txt.
    #[arg(long, env = "BACKEND_IGNORE_ROBOTS")]
    ignore_robots: bool,
}

/// The admin HTTP flag, shared by masters and workers (not by
/// `dead-letters`, which serves nothing).
#[derive(Debug, Clone, Args)]
struct Admin {
    /// Serve /metrics, /healthz and /readyz on this address (e.g.
    /// 127.0.0.1:7201; port 0 picks one). Default: no admin server.
    #[arg(long, env = "BACKEND_ADMIN")]
    admin: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct MasterArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    admin: Admin,
    /// Jobs run at once (prefetch on crawl.jobs).
    #[arg(long, env = "BACKEND_JOBS", default_value_t = 4)]
    jobs: u16,
    /// Lease time to live in milliseconds; a dead master's job is taken
    /// over after at most this long.
    #[arg(long, env = "BACKEND_LEASE_MS", default_value_t = 5000)]
    lease_ms: u64,
    /// Deliveries of one job before it is dead-lettered.
    #[arg(long, env = "BACKEND_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u64,
    /// Seconds a crawl may run before it answers with what it has.
    #[arg(long, env = "BACKEND_JOB_TIMEOUT", default_value_t = 120)]
    job_timeout: u64,
    /// Tasks one job keeps in flight.
    #[arg(long, env = "BACKEND_JOB_WINDOW", default_value_t = 32)]
    job_window: usize,
    /// Seconds cached crawls and stored results live.
    #[arg(long, env = "BACKEND_CACHE_TTL", default_value_t = 600)]
    cache_ttl: u64,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    admin: Admin,
    /// Pages fetched at once (prefetch on crawl.tasks).
    #[arg(long, env = "BACKEND_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
}

fn engine(common: &Common) -> EngineConfig {
    EngineConfig {
        limits: Limits {
            allow_private: common.allow_private,
            ..Limits::default()
        },
        respect_robots: !common.ignore_robots,
        ..EngineConfig::default()
    }
}

fn main() -> ExitCode {
    backend::logging::init();
    let pid = std::process::id();
    let result = match Cli::parse().role {
        Role::Master(a) => {
            let mut engine = engine(&a.common);
            engine.job_timeout = Duration::from_secs(a.job_timeout.max(1));
            engine.job_window = a.job_window.max(1);
            engine.cache_ttl = Duration::from_secs(a.cache_ttl.max(1));
            engine.result_ttl = engine.cache_ttl;
            run_master(MasterConfig {
                node_id: a.common.node_id.clone().unwrap_or(format!("master-{pid}")),
                names: Names::new(&a.common.namespace),
                amqp_url: a.common.amqp_url,
                redis_url: a.common.redis_url,
                jobs: a.jobs,
                engine,
                lease_ttl: Duration::from_millis(a.lease_ms.max(100)),
                max_attempts: a.max_attempts.max(1),
                admin: a.admin.admin,
            })
        }
        Role::DeadLetters(c) => {
            match backend::cluster::list_dead_letters(&c.amqp_url, &Names::new(&c.namespace)) {
                Ok(list) => {
                    for d in list {
                        println!("{}", serde_json::to_string(&d).unwrap_or_default());
                    }
                    Ok(())
                }
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        }
        Role::Worker(a) => run_worker(WorkerNodeConfig {
            node_id: a.common.node_id.clone().unwrap_or(format!("worker-{pid}")),
            names: Names::new(&a.common.namespace),
            engine: engine(&a.common),
            amqp_url: a.common.amqp_url,
            redis_url: a.common.redis_url,
            concurrency: a.concurrency,
            admin: a.admin.admin,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "backend failed");
            ExitCode::FAILURE
        }
    }
}
