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

use backend::process::resident_memory_bytes;

use crate::metrics::Metrics;
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
    let ready = if status.is_draining() {
        Err("draining")
    } else {
        Ok(())
    };
    if let Some(reply) = http_server::admin_route(method, path, || metrics.render(), ready) {
        return reply;
    }
    match path {
        "/status.json" => Reply::new(200, "application/json", status_json(status).to_string()),
        "/" => Reply::new(200, "text/html; charset=utf-8", STATUS_PAGE),
        _ => Reply::new(404, "text/plain", "not found\n"),
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
