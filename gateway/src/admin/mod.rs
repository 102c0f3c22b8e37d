//! The admin HTTP server: what operators, Prometheus and HAProxy ask.
//!
//! - `/metrics`: Prometheus text exposition.
//! - `/healthz`: 200 while the process serves at all.
//! - `/readyz`: 200 while it takes new clients, 503 while draining (HAProxy
//!   and the balancer stop sending clients here at once).
//! - `/status.json`: the live numbers the status page draws.
//! - `/`: the status page, for a person.
//!
//! It runs on its own small runtime ([`backend::http_server`], hyper), far
//! from the reactor: a slow scraper cannot delay a websocket.

use std::net::SocketAddr;
use std::sync::Arc;

use backend::http_server::{self, Method, Reply};
use serde_json::json;

use crate::metrics::{resident_memory_bytes, Metrics};
use crate::status::Status;

/// Two threads, so one slow scrape does not block a health probe.
const THREADS: usize = 2;

/// Binds the admin address and serves it on background threads; returns the
/// bound address (useful with port 0).
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> std::io::Result<SocketAddr> {
    http_server::spawn(
        addr,
        THREADS,
        "admin",
        Arc::new(move |method: &Method, path: &str| serve(method, path, &metrics, &status)),
    )
}

fn serve(method: &Method, path: &str, metrics: &Metrics, status: &Status) -> Reply {
    if method != Method::GET {
        return text(404, "not found\n", "text/plain");
    }
    match path {
        "/metrics" => text(
            200,
            metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => text(200, "ok\n", "text/plain"),
        "/readyz" if status.is_draining() => text(503, "draining\n", "text/plain"),
        "/readyz" => text(200, "ready\n", "text/plain"),
        "/status.json" => text(200, status_json(status).to_string(), "application/json"),
        "/" => text(200, STATUS_PAGE, "text/html; charset=utf-8"),
        _ => text(404, "not found\n", "text/plain"),
    }
}

/// The page served at `/`; it polls `/status.json` and `/metrics`.
const STATUS_PAGE: &str = include_str!("status_page.html");

fn status_json(status: &Status) -> serde_json::Value {
    json!({
        "node": status.node_id,
        "backend": status.backend,
        "state": if status.is_draining() { "draining" } else { "ready" },
        "connections": status.open_connections(),
        "capacity": status.max_connections,
        "uptime_seconds": status.started.elapsed().as_secs(),
        "resident_memory_bytes": resident_memory_bytes(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn text(code: u16, body: impl Into<String>, content_type: &'static str) -> Reply {
    Reply::new(code, content_type, body)
}
