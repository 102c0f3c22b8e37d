//! The admin HTTP server: what operators, Prometheus and HAProxy ask.
//!
//! - `/metrics`: Prometheus text exposition.
//! - `/healthz`: 200 while the process serves at all.
//! - `/readyz`: 200 while it takes new clients, 503 while draining (HAProxy
//!   and the balancer stop sending clients here at once).
//! - `/status.json`: the live numbers the status page draws.
//! - `/`: the status page, for a person.
//!
//! It runs on its own threads with `tiny_http`, far from the reactor: a slow
//! scraper cannot delay a websocket.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};
use tracing::warn;

use crate::metrics::{resident_memory_bytes, Metrics};
use crate::status::Status;

const THREADS: usize = 2;

/// Binds the admin address and serves it on background threads; returns the
/// bound address (useful with port 0).
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> std::io::Result<SocketAddr> {
    let server = Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let server = Arc::new(server);
    for i in 0..THREADS {
        let (server, metrics, status) = (server.clone(), metrics.clone(), status.clone());
        std::thread::Builder::new()
            .name(format!("admin-{i}"))
            .spawn(move || {
                for request in server.incoming_requests() {
                    serve(request, &metrics, &status);
                }
            })?;
    }
    Ok(bound)
}

fn serve(request: Request, metrics: &Metrics, status: &Status) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let response = match (request.method(), path.as_str()) {
        (Method::Get, "/metrics") => text(
            200,
            metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (Method::Get, "/healthz") => text(200, "ok\n".into(), "text/plain"),
        (Method::Get, "/readyz") if status.is_draining() => {
            text(503, "draining\n".into(), "text/plain")
        }
        (Method::Get, "/readyz") => text(200, "ready\n".into(), "text/plain"),
        (Method::Get, "/status.json") => {
            text(200, status_json(status).to_string(), "application/json")
        }
        (Method::Get, "/") => text(200, STATUS_PAGE.into(), "text/html; charset=utf-8"),
        _ => text(404, "not found\n".into(), "text/plain"),
    };
    if let Err(e) = request.respond(response) {
        warn!(error = %e, "admin response failed");
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

fn text(code: u16, body: String, content_type: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(body).with_status_code(code);
    if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
        response.add_header(header);
    }
    response
}
