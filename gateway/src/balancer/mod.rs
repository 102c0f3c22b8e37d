//! The balancer: tells a client which gateway to connect to.
//!
//! `GET /v1/gateway` answers `{"url":"ws://host:port/ws","node":"gw-1"}`,
//! chosen by power of two choices on free capacity among fresh, ready
//! gateways ([`choice`]); 503 with a JSON error when there is none.
//! `GET /v1/gateways` lists every gateway with its load and age; `/metrics`
//! and `/healthz` are for operators.
//!
//! A refresh thread ([`refresh`]) reads the membership registry from Redis
//! about once a second and publishes an immutable [`view::View`]; requests
//! ([`http`], hyper on a tokio runtime with `threads` workers) only read that
//! view, so requests never wait on Redis.
//! When Redis fails the balancer keeps answering from its last good view for
//! `stale_grace`, and says so in its metrics
//! (`balancer_serving_stale_view`, `balancer_redis_up`).

pub mod choice;
mod http;
pub mod metrics;
mod refresh;
pub mod view;

use backend::http_server::{self, Method};
use metrics::Metrics;
use parking_lot::{Mutex, RwLock};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use view::View;

/// Balancer settings (the `balancer` binary's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: String,
    /// Registry location.
    pub redis_url: String,
    /// Registry key prefix (namespace).
    pub key_prefix: String,
    /// Time between registry reads.
    pub refresh_interval: Duration,
    /// A gateway whose heartbeat is older than this gets no clients.
    pub fresh: Duration,
    /// How long to keep answering from the last good view while Redis fails.
    pub stale_grace: Duration,
    /// HTTP worker threads (the tokio runtime's workers).
    pub threads: usize,
}

/// Accept queue length asked of the kernel; see [`backend::http_server`].
pub use backend::http_server::LISTEN_BACKLOG;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: String::new(),
            refresh_interval: Duration::from_secs(1),
            fresh: Duration::from_secs(5),
            stale_grace: Duration::from_secs(15),
            threads: 4,
        }
    }
}

/// State shared by the refresh thread and the request threads.
struct Shared {
    config: Config,
    view: RwLock<Arc<View>>,
    /// When the last registry read succeeded (None: never).
    last_ok: Mutex<Option<Instant>>,
    metrics: Metrics,
    stop: AtomicBool,
}

/// Why there is no usable view.
enum Unusable {
    /// Redis has not answered for longer than the grace period (or ever).
    RegistryUnavailable,
}

impl Shared {
    /// The view to answer from, unless it is too old to trust.
    fn usable_view(&self) -> Result<Arc<View>, Unusable> {
        let last_ok = *self.last_ok.lock();
        match last_ok {
            Some(t) if t.elapsed() <= self.config.stale_grace + self.config.refresh_interval => {
                Ok(self.view.read().clone())
            }
            _ => Err(Unusable::RegistryUnavailable),
        }
    }

    fn fresh_ms(&self) -> u64 {
        u64::try_from(self.config.fresh.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A running balancer: the HTTP runtime plus the refresh thread.
pub struct Balancer {
    shared: Arc<Shared>,
    /// Serves HTTP; dropping it closes the listener and every connection.
    http: Option<http_server::Server>,
    addr: SocketAddr,
    refresh: Option<JoinHandle<()>>,
}

/// Binds the listener and starts serving.
pub fn serve(config: Config) -> io::Result<Balancer> {
    redis::Client::open(config.redis_url.as_str())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let shared = Arc::new(Shared {
        view: RwLock::new(Arc::new(View::empty())),
        last_ok: Mutex::new(None),
        metrics: Metrics::new(),
        stop: AtomicBool::new(false),
        config,
    });
    let s = shared.clone();
    let server = http_server::start(
        shared.config.listen.as_str(),
        shared.config.threads,
        "balancer-http",
        Arc::new(move |method: &Method, path: &str| http::handle(&s, method, path)),
    )
    .map_err(|e| io::Error::other(format!("cannot listen on {}: {e}", shared.config.listen)))?;
    let addr = server.local_addr();
    let s = shared.clone();
    let refresh = std::thread::Builder::new()
        .name("balancer-refresh".into())
        .spawn(move || refresh::run(&s))?;
    tracing::info!(listen = %addr, redis = %shared.config.redis_url, "balancer serving");
    Ok(Balancer {
        shared,
        http: Some(server),
        addr,
        refresh: Some(refresh),
    })
}

impl Balancer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the balancer stops. It does not on its own: this
    /// returns only if the refresh thread died (a panic), after which the
    /// view would go stale, so the caller should exit and be restarted.
    pub fn wait(mut self) {
        if let Some(t) = self.refresh.take() {
            if t.join().is_err() {
                tracing::error!("the refresh thread panicked");
            }
        }
    }

    /// Stops serving and the refresh thread, and waits for them.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.http.take() {
            server.shutdown();
        }
        if let Some(t) = self.refresh.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
