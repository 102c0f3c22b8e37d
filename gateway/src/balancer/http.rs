//! HTTP routes of the balancer, served by [`backend::http_server`] (hyper on
//! a small tokio runtime).
//!
//! Handlers read only the in-memory view; nothing here blocks on Redis, so
//! they run directly on the runtime's worker threads.
//!
//! Why hyper and not `tiny_http`: `tiny_http` gives every connection a
//! thread from a pool that hands queued connections out only when a thread
//! is free, and its accept thread can queue a connection behind threads
//! that each stay busy for the whole life of a keep-alive connection. A
//! burst of new keep-alive clients was then left unanswered until some other
//! client hung up: 2-3 s in `balancer_bench`, past the loadtest's 5 s
//! timeout in the 100k run. In `http_server` a connection is a task, never
//! waiting for another connection to end.

use super::metrics::{NodeLabels, RequestLabels};
use super::{Shared, Unusable};
use backend::http_server::{Method, Reply};
use serde_json::json;
use std::time::Instant;

/// Every answer says this besides its content type.
const HEADERS: [(&str, &str); 2] = [
    ("cache-control", "no-store"),
    ("access-control-allow-origin", "*"),
];

fn json(code: u16, value: serde_json::Value) -> Reply {
    Reply::new(code, "application/json", value.to_string())
}

fn error(code: u16, error: &str, message: &str) -> Reply {
    json(code, json!({ "error": error, "message": message }))
}

/// Routes one request (hyper sends no body for HEAD but keeps the
/// Content-Length of GET).
pub(super) fn handle(shared: &Shared, method: &Method, path: &str) -> Reply {
    let started = Instant::now();
    let (route, mut reply) = match (method, path) {
        (&Method::GET, "/v1/gateway") => ("/v1/gateway", place(shared)),
        // A probe must not count as a placement.
        (&Method::HEAD, "/v1/gateway") => ("/v1/gateway", probe(shared)),
        (&Method::GET | &Method::HEAD, "/v1/gateways") => ("/v1/gateways", list(shared)),
        (&Method::GET | &Method::HEAD, "/metrics") => ("/metrics", metrics(shared)),
        (&Method::GET | &Method::HEAD, "/healthz") => ("/healthz", health(shared)),
        (&Method::GET | &Method::HEAD, "/readyz") => ("/readyz", ready(shared)),
        (&Method::GET | &Method::HEAD, _) => (
            "other",
            error(
                404,
                "not_found",
                "routes: /v1/gateway /v1/gateways /metrics /healthz /readyz",
            ),
        ),
        _ => (
            "other",
            error(405, "method_not_allowed", "only GET and HEAD"),
        ),
    };
    reply.headers.extend(HEADERS);
    let m = &shared.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            path: route,
            code: reply.status,
        })
        .inc();
    m.request_seconds.observe(started.elapsed().as_secs_f64());
    reply
}

fn place(shared: &Shared) -> Reply {
    let view = match shared.usable_view() {
        Ok(v) => v,
        Err(Unusable::RegistryUnavailable) => {
            shared.metrics.no_gateway.inc();
            return error(
                503,
                "registry_unavailable",
                "the gateway registry (Redis) cannot be read; retry shortly",
            );
        }
    };
    // The thread's generator, forked: cheap, and no lock shared by workers.
    match view.place(&mut fastrand::Rng::new()) {
        Some(g) => {
            let r = &g.entry.record;
            shared
                .metrics
                .placements
                .get_or_create(&NodeLabels { node: r.id.clone() })
                .inc();
            json(200, json!({ "url": r.url, "node": r.id }))
        }
        None => {
            shared.metrics.no_gateway.inc();
            error(
                503,
                "no_gateway",
                "no ready gateway with free capacity; retry shortly",
            )
        }
    }
}

fn probe(shared: &Shared) -> Reply {
    match shared.usable_view() {
        Ok(view) if !view.candidates.is_empty() => json(200, json!({})),
        Ok(_) => error(503, "no_gateway", "no ready gateway with free capacity"),
        Err(Unusable::RegistryUnavailable) => error(
            503,
            "registry_unavailable",
            "no recent view of the gateways",
        ),
    }
}

fn view_status(shared: &Shared) -> (bool, u64) {
    let last_ok = *shared.last_ok.lock();
    let age_ms = last_ok.map_or(u64::MAX, |t| {
        u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
    });
    (shared.metrics.redis_up.get() == 1, age_ms)
}

fn list(shared: &Shared) -> Reply {
    let (redis_up, view_age_ms) = view_status(shared);
    let view = shared.view.read().clone();
    let usable = shared.usable_view().is_ok();
    json(
        200,
        json!({
            "redis_up": redis_up,
            "view_age_ms": (view_age_ms != u64::MAX).then_some(view_age_ms),
            "serving_stale": usable && !redis_up,
            "usable": usable,
            "gateways": view.describe(),
        }),
    )
}

fn metrics(shared: &Shared) -> Reply {
    let (_, age_ms) = view_status(shared);
    let age = if age_ms == u64::MAX {
        -1.0
    } else {
        age_ms as f64 / 1000.0
    };
    shared.metrics.view_age_seconds.set(age);
    Reply::new(
        200,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        shared.metrics.encode(),
    )
}

fn health(shared: &Shared) -> Reply {
    let (redis_up, view_age_ms) = view_status(shared);
    json(
        200,
        json!({ "status": "ok", "redis_up": redis_up, "view_age_ms": (view_age_ms != u64::MAX).then_some(view_age_ms) }),
    )
}

fn ready(shared: &Shared) -> Reply {
    match shared.usable_view() {
        Ok(_) => json(200, json!({ "status": "ready" })),
        Err(Unusable::RegistryUnavailable) => error(
            503,
            "registry_unavailable",
            "no recent view of the gateways",
        ),
    }
}
