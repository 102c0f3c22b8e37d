//! The one small HTTP server of the workspace: the gateway's admin server,
//! the balancer and the admin server of `backend master`/`backend worker`
//! all serve through it.
//!
//! Why it exists: each of them answers a few short routes from in-memory
//! state, and each needs the same things done right once: hyper HTTP/1 with
//! one task per connection (a thread-per-connection pool, as `tiny_http`
//! had, strands a burst of new keep-alive clients until others hang up), a
//! [`LISTEN_BACKLOG`]-deep accept queue (`std` and `tokio` offer only 128 and
//! 1024), `TCP_NODELAY`, and its own small tokio runtime so it never shares
//! threads with a reactor or the broker's runtime (a slow scraper cannot
//! delay a websocket or a job).
//!
//! A route is a plain function of method and path returning a [`Reply`];
//! handlers must not block for long (they run on the runtime's workers).
//! hyper sends no body for `HEAD` but keeps the `Content-Length` of the body.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use hyper::Method;

/// Accept queue length asked of the kernel (which caps it at
/// `net.core.somaxconn`). The standard library's 128 overflows when a few
/// thousand clients connect at once; each dropped SYN costs that client a
/// 1 s (then 3 s, 7 s) retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// One answer: status, `Content-Type`, body and any further headers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Further headers; names in lower case (`cache-control`).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Reply {
    /// A reply with no further headers.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// The routes every admin server answers alike: only GET is served,
/// `/metrics` (rendered on demand), `/healthz`, and `/readyz` from
/// `ready` (`Err(why)` is a 503 saying why). `None` for any other GET path,
/// which the caller routes itself.
pub fn admin_route(
    method: &Method,
    path: &str,
    metrics: impl FnOnce() -> String,
    ready: Result<(), &'static str>,
) -> Option<Reply> {
    if method != Method::GET {
        return Some(Reply::new(404, "text/plain", "not found\n"));
    }
    Some(match (path, ready) {
        ("/metrics", _) => Reply::new(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(),
        ),
        ("/healthz", _) => Reply::new(200, "text/plain", "ok\n"),
        ("/readyz", Ok(())) => Reply::new(200, "text/plain", "ready\n"),
        ("/readyz", Err(why)) => Reply::new(503, "text/plain", format!("{why}\n")),
        _ => return None,
    })
}

/// Routes a request by method and path (without the query string).
pub type Handler = Arc<dyn Fn(&Method, &str) -> Reply + Send + Sync>;

/// A running server; dropping it (or [`Server::shutdown`]) closes the
/// listener and every connection.
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl Server {
    /// The bound address (the real port with `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving. Handlers never block, so this returns at once.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds the first address `listen` resolves to that accepts and serves it
/// with `handler` on a runtime of `threads` workers named `name`.
pub fn start(
    listen: impl ToSocketAddrs,
    threads: usize,
    name: &str,
    handler: Handler,
) -> io::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        // Registering the listener needs the runtime's reactor.
        let _entered = runtime.enter();
        bind(listen)?
    };
    let addr = listener.local_addr()?;
    runtime.spawn(serve(listener, handler));
    Ok(Server {
        runtime: Some(runtime),
        addr,
    })
}

/// [`start`] for a server that lives as long as the process; returns the
/// bound address.
pub fn spawn(
    addr: SocketAddr,
    threads: usize,
    name: &str,
    handler: Handler,
) -> io::Result<SocketAddr> {
    let server = start(addr, threads, name, handler)?;
    let bound = server.local_addr();
    // Never stopped: keep the runtime (and its threads) running.
    std::mem::forget(server);
    Ok(bound)
}

fn bind(listen: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
    for addr in listen.to_socket_addrs()? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std does: a restarted server must not wait out TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Accepts connections until the runtime is shut down; each connection is
/// served by its own task.
async fn serve(listener: TcpListener, handler: Handler) {
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
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let reply = handler(request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response(reply)) }
            });
            // Errors are clients going away mid-request; nothing to do.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    for (name, value) in reply.headers {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}
