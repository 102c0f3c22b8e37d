//! Command-line flags of the `gateway` binary. Every flag can also be given
//! as a `GATEWAY_*` environment variable, so the same binary runs from a
//! shell, a systemd unit or the local cluster script.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// Which adapter runs the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Answers every crawl at once with `levels: [[url]]`; for benchmarks.
    Echo,
    /// Crawls in-process: master and worker threads, in-memory cache.
    Embedded,
    /// RabbitMQ masters and workers, Redis cache and result store.
    Amqp,
}

/// What to do instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print every live gateway, master and worker in the registry
    /// (`--redis-url`, `--namespace`) with its state, load and age.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Websocket gateway for long-running crawl jobs"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the websocket endpoint (`/ws` and `/`) listens on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:5555")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP server: /metrics, /healthz, /readyz and a
    /// status page at /.
    #[arg(long, env = "GATEWAY_ADMIN", default_value = "127.0.0.1:5556")]
    pub admin: SocketAddr,

    /// Which backend runs the jobs.
    #[arg(long, env = "GATEWAY_BACKEND", value_enum, default_value = "embedded")]
    pub backend: BackendKind,

    /// Open websocket connections above which new upgrades are refused with
    /// HTTP 503. One process may hold at most 20,000 file descriptors here.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,

    /// Seconds of silence from a client after which it is sent a websocket
    /// ping; a client that has not answered by the next interval is closed.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value_t = 30)]
    pub ping_interval: u32,

    /// Seconds without a message from a client (pongs do not count) after
    /// which it is closed, unless one of its jobs is still running. 0 = never.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value_t = 600)]
    pub idle_timeout: u32,

    /// Largest websocket message (and frame) a client may send, in bytes.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Bytes of results queued for a client that does not read them, after
    /// which the client is closed as too slow.
    #[arg(long, env = "GATEWAY_MAX_OUTBOUND_BYTES", default_value_t = 1024 * 1024)]
    pub max_outbound_bytes: usize,

    /// Seconds a new connection has to complete its websocket handshake.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u32,

    /// Jobs one connection may have running at once.
    #[arg(long, env = "GATEWAY_MAX_JOBS_PER_CONNECTION", default_value_t = 1)]
    pub max_jobs_per_connection: u8,

    /// Seconds over which connections are closed (code 1012) on SIGTERM, so
    /// that clients do not all reconnect elsewhere in the same instant.
    #[arg(long, env = "GATEWAY_DRAIN_WINDOW", default_value_t = 10)]
    pub drain_window: u32,

    /// Reader threads that handshake, parse and answer ready connections.
    /// Default: one per core.
    #[arg(long, env = "GATEWAY_READERS")]
    pub readers: Option<usize>,

    /// Name of this gateway in logs, metrics, job keys, its result queue and
    /// the registry; unique per cluster. Default: gw-<listen port>.
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,

    /// With the echo backend: milliseconds before each crawl is answered,
    /// to stand in for long-running jobs.
    #[arg(long, env = "GATEWAY_ECHO_DELAY_MS", default_value_t = 0)]
    pub echo_delay_ms: u64,

    /// Crawl limit: deepest crawl a client may ask for.
    #[arg(long, env = "GATEWAY_MAX_DEPTH", default_value_t = 5)]
    pub max_depth: u32,

    /// Crawl limit: pages fetched per job at most.
    #[arg(long, env = "GATEWAY_MAX_PAGES", default_value_t = 1000)]
    pub max_pages: u32,

    /// Embedded backend: threads fetching pages.
    #[arg(long, env = "GATEWAY_CRAWL_WORKERS", default_value_t = 8)]
    pub crawl_workers: usize,

    /// Embedded backend: jobs crawled at once; more wait their turn.
    #[arg(long, env = "GATEWAY_CRAWL_JOBS", default_value_t = 4)]
    pub crawl_jobs: usize,

    /// Seconds a crawl may run; then it answers with what it has
    /// (`"partial":"deadline"`).
    #[arg(long, env = "GATEWAY_JOB_TIMEOUT", default_value_t = 120)]
    pub job_timeout: u64,

    /// Do not obey robots.txt (it is obeyed by default).
    #[arg(long, env = "GATEWAY_IGNORE_ROBOTS")]
    pub ignore_robots: bool,

    /// Let crawls fetch private, loopback and link-local addresses. Only for
    /// tests against local fixture sites: a public gateway that fetches
    /// whatever clients name is an SSRF hole.
    #[arg(long, env = "GATEWAY_ALLOW_PRIVATE")]
    pub allow_private: bool,

    /// amqp backend: the RabbitMQ broker.
    #[arg(long, env = "GATEWAY_AMQP_URL", default_value = backend::amqp::DEFAULT_AMQP_URL)]
    pub amqp_url: String,

    /// Redis for the registry heartbeat (written whenever this is given, or
    /// `--public-url`, or the amqp backend) and, with the amqp backend, the
    /// shared cache and the result store. Default redis://127.0.0.1:6379.
    #[arg(long, global = true, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of queue names and Redis keys (registry included); must match
    /// the masters' and workers' `--namespace`.
    #[arg(long, global = true, env = "GATEWAY_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Websocket URL the balancer hands to clients (default
    /// `ws://<bound --listen>/ws`). Giving it, or choosing the amqp backend,
    /// turns on the registry heartbeat to `--redis-url`.
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl Config {
    /// `--node-id`, else `gw-<port>`; with port 0 (tests, scripts) the port
    /// is not known yet, so `gw-pid<pid>` keeps ids of one host apart.
    pub fn node_id(&self) -> String {
        match (&self.node_id, self.listen.port()) {
            (Some(id), _) => id.clone(),
            (None, 0) => format!("gw-pid{}", std::process::id()),
            (None, port) => format!("gw-{port}"),
        }
    }

    pub fn readers(&self) -> usize {
        self.readers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }

    /// The embedded crawl engine's settings.
    pub fn engine(&self) -> backend::engine::EngineConfig {
        backend::engine::EngineConfig {
            limits: self.crawl_limits(),
            respect_robots: !self.ignore_robots,
            job_timeout: std::time::Duration::from_secs(self.job_timeout.max(1)),
            workers: self.crawl_workers.max(1),
            masters: self.crawl_jobs.max(1),
            ..Default::default()
        }
    }

    pub fn redis_url(&self) -> String {
        self.redis_url
            .clone()
            .unwrap_or_else(|| backend::amqp::DEFAULT_REDIS_URL.to_string())
    }

    /// Whether this gateway announces itself in the Redis registry.
    pub fn heartbeat(&self) -> bool {
        self.redis_url.is_some() || self.public_url.is_some() || self.backend == BackendKind::Amqp
    }

    /// The amqp backend's settings.
    pub fn amqp(&self) -> crate::backend::amqp::AmqpConfig {
        let engine = self.engine();
        crate::backend::amqp::AmqpConfig {
            amqp_url: self.amqp_url.clone(),
            redis_url: self.redis_url(),
            namespace: self.namespace.clone(),
            node_id: self.node_id(),
            cache_ttl: engine.cache_ttl,
            result_ttl: engine.result_ttl,
            queue_expires: std::time::Duration::from_secs(300),
        }
    }

    pub fn crawl_limits(&self) -> backend::engine::Limits {
        backend::engine::Limits {
            max_depth: self.max_depth,
            max_pages: self.max_pages,
            allow_private: self.allow_private,
            allow_addrs: Vec::new(),
        }
    }
}
