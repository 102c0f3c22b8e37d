//! HTTP routes of the balancer, served by a few `tiny_http` threads.
//!
//! Handlers read only the in-memory view; nothing here blocks on Redis.

use super::metrics::{NodeLabels, RequestLabels};
use super::{Shared, Unusable};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tiny_http::{Header, Method, Request, Response, Server};

pub(super) fn run(shared: &Shared, server: &Server) {
    let mut rng = fastrand::Rng::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match server.recv() {
            Ok(request) => handle(shared, request, &mut rng),
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    tracing::debug!(error = %e, "accept failed");
                }
            }
        }
    }
}

struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(code: u16, value: serde_json::Value) -> Reply {
        Reply {
            code,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    fn error(code: u16, error: &str, message: &str) -> Reply {
        Reply::json(code, json!({ "error": error, "message": message }))
    }
}

fn handle(shared: &Shared, request: Request, rng: &mut fastrand::Rng) {
    let started = Instant::now();
    let path = request.url().split('?').next().unwrap_or("");
    let (route, reply) = match (request.method(), path) {
        (Method::Get, "/v1/gateway") => ("/v1/gateway", place(shared, rng)),
        // A probe must not count as a placement.
        (Method::Head, "/v1/gateway") => ("/v1/gateway", probe(shared)),
        (Method::Get | Method::Head, "/v1/gateways") => ("/v1/gateways", list(shared)),
        (Method::Get | Method::Head, "/metrics") => ("/metrics", metrics(shared)),
        (Method::Get | Method::Head, "/healthz") => ("/healthz", health(shared)),
        (Method::Get | Method::Head, "/readyz") => ("/readyz", ready(shared)),
        (Method::Get | Method::Head, _) => (
            "other",
            Reply::error(
                404,
                "not_found",
                "routes: /v1/gateway /v1/gateways /metrics /healthz /readyz",
            ),
        ),
        _ => (
            "other",
            Reply::error(405, "method_not_allowed", "only GET and HEAD"),
        ),
    };
    let code = reply.code;
    let response = Response::from_string(reply.body)
        .with_status_code(code)
        .with_header(header("Content-Type", reply.content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("Access-Control-Allow-Origin", "*"));
    // The client may have gone; nothing to do about it.
    let _ = request.respond(response);
    let m = &shared.metrics;
    m.requests
        .get_or_create(&RequestLabels { path: route, code })
        .inc();
    m.request_seconds.observe(started.elapsed().as_secs_f64());
}

fn header(name: &'static str, value: &'static str) -> Header {
    Header {
        field: name
            .parse()
            .unwrap_or_else(|_| unreachable!("static header name")),
        value: value
            .parse()
            .unwrap_or_else(|_| unreachable!("static header value")),
    }
}

fn place(shared: &Shared, rng: &mut fastrand::Rng) -> Reply {
    let view = match shared.usable_view() {
        Ok(v) => v,
        Err(Unusable::RegistryUnavailable) => {
            shared.metrics.no_gateway.inc();
            return Reply::error(
                503,
                "registry_unavailable",
                "the gateway registry (Redis) cannot be read; retry shortly",
            );
        }
    };
    match view.place(rng) {
        Some(g) => {
            let r = &g.entry.record;
            shared
                .metrics
                .placements
                .get_or_create(&NodeLabels { node: r.id.clone() })
                .inc();
            Reply::json(200, json!({ "url": r.url, "node": r.id }))
        }
        None => {
            shared.metrics.no_gateway.inc();
            Reply::error(
                503,
                "no_gateway",
                "no ready gateway with free capacity; retry shortly",
            )
        }
    }
}

fn probe(shared: &Shared) -> Reply {
    match shared.usable_view() {
        Ok(view) if !view.candidates.is_empty() => Reply::json(200, json!({})),
        Ok(_) => Reply::error(503, "no_gateway", "no ready gateway with free capacity"),
        Err(Unusable::RegistryUnavailable) => Reply::error(
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
    Reply::json(
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
    Reply {
        code: 200,
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body: shared.metrics.encode(),
    }
}

fn health(shared: &Shared) -> Reply {
    let (redis_up, view_age_ms) = view_status(shared);
    Reply::json(
        200,
        json!({ "status": "ok", "redis_up": redis_up, "view_age_ms": (view_age_ms != u64::MAX).then_some(view_age_ms) }),
    )
}

fn ready(shared: &Shared) -> Reply {
    match shared.usable_view() {
        Ok(_) => Reply::json(200, json!({ "status": "ready" })),
        Err(Unusable::RegistryUnavailable) => Reply::error(
            503,
            "registry_unavailable",
            "no recent view of the gateways",
        ),
    }
}
