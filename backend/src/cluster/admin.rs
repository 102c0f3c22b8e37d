//! The admin HTTP server of `backend master` and `backend worker` (`--admin
//! ADDR`): what Prometheus and operators ask a backend node.
//!
//! - `/metrics`: Prometheus text exposition (see [`super::metrics`]).
//! - `/healthz`: 200 while the process serves at all.
//! - `/readyz`: 200 while the node is connected to the broker and consuming
//!   its queue, 503 before that, between broker sessions and once it is
//!   shutting down; so a probe tells a node that takes work from one that
//!   merely runs.
//!
//! It runs on its own small runtime ([`crate::http_server`], as the gateway's
//! admin server does), apart from the tokio runtime that talks to the broker:
//! a slow scraper cannot delay a job, and a stuck broker runtime still
//! answers `/healthz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::metrics::Metrics;
use crate::http_server::{self, Method, Reply};

/// Two threads, so one slow scrape does not block a health probe.
const THREADS: usize = 2;

/// Whether the node takes work right now; read by `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    /// Marks the node consuming until the guard is dropped (the broker
    /// session ended, by error or not).
    pub fn consuming(self: &Arc<Self>) -> ConsumingGuard {
        self.consuming.store(true, Ordering::SeqCst);
        ConsumingGuard(self.clone())
    }

    /// The node is shutting down: not ready from now on, whatever the
    /// session says.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.consuming.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }
}

/// One broker session that consumes; see [`Readiness::consuming`].
#[derive(Debug)]
pub struct ConsumingGuard(Arc<Readiness>);

impl Drop for ConsumingGuard {
    fn drop(&mut self) {
        self.0.consuming.store(false, Ordering::SeqCst);
    }
}

/// Binds `addr` and serves it on background threads; returns the bound
/// address (the real port with `:0`).
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> std::io::Result<SocketAddr> {
    http_server::spawn(
        addr,
        THREADS,
        "admin",
        Arc::new(move |method: &Method, path: &str| serve(method, path, &metrics, &readiness)),
    )
}

fn serve(method: &Method, path: &str, metrics: &Metrics, readiness: &Readiness) -> Reply {
    let ready = if readiness.is_ready() {
        Ok(())
    } else {
        Err("not consuming")
    };
    http_server::admin_route(method, path, || metrics.render(), ready)
        .unwrap_or_else(|| Reply::new(404, "text/plain", "not found\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::metrics::MetricsRole;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn ready_only_while_consuming_and_not_stopping() {
        let readiness = Arc::new(Readiness::default());
        let metrics = Arc::new(Metrics::new(MetricsRole::Worker));
        let addr = spawn("127.0.0.1:0".parse().unwrap(), metrics, readiness.clone()).unwrap();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 503"));
        let session = readiness.consuming();
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 200"));
        drop(session);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 503"));
        let _session = readiness.consuming();
        readiness.set_stopping();
        assert!(get(addr, "/readyz").starts_with("HTTP/1.0 503"));
        assert!(get(addr, "/metrics").contains("process_resident_memory_bytes"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.0 404"));
    }
}
