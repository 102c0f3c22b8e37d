//! HTTP routes of the balancer, served by hyper on a small tokio runtime.
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
//! timeout in the 100k run. Here a connection is a task, never waiting for
//! another connection to end.

use super::metrics::{NodeLabels, RequestLabels};
use super::{Shared, Unusable};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Accepts connections until the runtime is shut down; each connection is
/// served by its own task.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or memory: the pending connection stays
                // in the backlog; pause instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Answers are one small write each; don't let Nagle hold one back
        // waiting for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let reply = handle(&shared, &request);
                async move { Ok::<_, Infallible>(reply) }
            });
            // Errors are clients going away mid-request; nothing to do.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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

fn handle(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method();
    let (route, reply) = match (method, request.uri().path()) {
        (&Method::GET, "/v1/gateway") => ("/v1/gateway", place(shared)),
        // A probe must not count as a placement.
        (&Method::HEAD, "/v1/gateway") => ("/v1/gateway", probe(shared)),
        (&Method::GET | &Method::HEAD, "/v1/gateways") => ("/v1/gateways", list(shared)),
        (&Method::GET | &Method::HEAD, "/metrics") => ("/metrics", metrics(shared)),
        (&Method::GET | &Method::HEAD, "/healthz") => ("/healthz", health(shared)),
        (&Method::GET | &Method::HEAD, "/readyz") => ("/readyz", ready(shared)),
        (&Method::GET | &Method::HEAD, _) => (
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
    // hyper sends no body for HEAD but keeps the Content-Length of GET.
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    let m = &shared.metrics;
    m.requests
        .get_or_create(&RequestLabels { path: route, code })
        .inc();
    m.request_seconds.observe(started.elapsed().as_secs_f64());
    response
}

fn place(shared: &Shared) -> Reply {
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
    // The thread's generator, forked: cheap, and no lock shared by workers.
    match view.place(&mut fastrand::Rng::new()) {
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
