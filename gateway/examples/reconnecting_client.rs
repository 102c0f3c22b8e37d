//! A client that survives gateway restarts: the reconnect behaviour the
//! project recommends, in one file to copy from.
//!
//! 1. Ask the balancer (`GET /v1/gateway`) which gateway to use.
//! 2. Connect, submit the job, keep the `token` from `accepted`.
//! 3. On close 1012 (the gateway drains), an `error` with code `draining`,
//!    or a dropped connection: wait a capped exponential backoff with full
//!    jitter, ask the balancer again, reconnect, and send
//!    `{"type":"resume","id":..,"token":..}`, which answers with the result
//!    even from another gateway.
//!
//! ```text
//! cargo run -p gateway --example reconnecting_client -- \
//!     --balancer http://127.0.0.1:8000 --url https://example.com/ --depth 2
//! cargo run -p gateway --example reconnecting_client -- \
//!     --gateway ws://127.0.0.1:8080/ws --url https://example.com/   # via HAProxy
//! ```

use clap::Parser;
use gateway::membership::Backoff;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Crawl one URL through the gateway fleet, reconnecting as needed.
#[derive(Debug, Parser)]
struct Args {
    /// Balancer base URL; asked for a gateway before every connection.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    balancer: String,
    /// Connect to this websocket URL instead of asking the balancer
    /// (e.g. HAProxy's `ws://127.0.0.1:8080/ws`).
    #[arg(long)]
    gateway: Option<String>,
    /// Page to crawl.
    #[arg(long)]
    url: String,
    /// BFS depth.
    #[arg(long, default_value_t = 1)]
    depth: u32,
    /// Job id (unique per client).
    #[arg(long, default_value = "job-1")]
    id: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Why a connection ended before the result arrived.
enum Interruption {
    /// The gateway asked us to go elsewhere (1012, or error code `draining`).
    Moved,
    /// The connection failed or dropped.
    Lost(String),
}

/// One job, carried across as many connections as it takes.
struct JobClient {
    args: Args,
    http: ureq::Agent,
    backoff: Backoff,
    /// Set once a gateway accepted the job: from then on we `resume`.
    token: Option<String>,
}

impl JobClient {
    fn new(args: Args) -> JobClient {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        JobClient {
            args,
            http,
            // 250 ms doubling to 30 s, full jitter: a fleet of clients cut
            // off at once does not come back at once.
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            token: None,
        }
    }

    /// Runs until the result (or a final error) arrives.
    fn run(&mut self) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(self.args.timeout_secs);
        while Instant::now() < deadline {
            match self.attempt() {
                Ok(result) => return Ok(result),
                Err(Interruption::Moved) => eprintln!("gateway is draining; moving"),
                Err(Interruption::Lost(why)) => eprintln!("connection lost: {why}"),
            }
            let delay = self.backoff.next_delay();
            eprintln!("reconnecting in {} ms", delay.as_millis());
            std::thread::sleep(delay);
        }
        Err("gave up: timeout".into())
    }

    /// Where to connect: the fixed URL, or the balancer's pick.
    fn gateway_url(&self) -> Result<String, Interruption> {
        if let Some(url) = &self.args.gateway {
            return Ok(url.clone());
        }
        let url = format!("{}/v1/gateway", self.args.balancer.trim_end_matches('/'));
        let mut resp = self
            .http
            .get(&url)
            .call()
            .map_err(|e| Interruption::Lost(format!("balancer: {e}")))?;
        let status = resp.status().as_u16();
        let body: Value = resp
            .body_mut()
            .read_to_string()
            .ok()
            .and_then(|b| serde_json::from_str(&b).ok())
            .ok_or_else(|| Interruption::Lost("balancer answered no JSON".into()))?;
        match (status, body["url"].as_str()) {
            (200, Some(ws)) => {
                eprintln!("balancer: use {} ({ws})", body["node"]);
                Ok(ws.to_string())
            }
            _ => Err(Interruption::Lost(format!("balancer {status}: {body}"))),
        }
    }

    fn crawl_message(&self) -> Value {
        json!({"type": "crawl", "id": self.args.id, "url": self.args.url, "depth": self.args.depth})
    }

    /// One connection: submit or resume, then read until the result.
    fn attempt(&mut self) -> Result<Value, Interruption> {
        let url = self.gateway_url()?;
        let (mut ws, _) =
            tungstenite::connect(url.as_str()).map_err(|e| Interruption::Lost(e.to_string()))?;
        let first = match &self.token {
            Some(token) => json!({"type": "resume", "id": self.args.id, "token": token}),
            None => self.crawl_message(),
        };
        send(&mut ws, &first)?;
        loop {
            let msg = ws.read().map_err(|e| Interruption::Lost(e.to_string()))?;
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(frame) => {
                    return Err(match frame {
                        Some(f) if f.code == CloseCode::Restart || f.code == CloseCode::Again => {
                            Interruption::Moved
                        }
                        other => Interruption::Lost(format!("closed: {other:?}")),
                    })
                }
                _ => continue,
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("accepted") => {
                    // Talking to a gateway again: the next outage starts
                    // its backoff from the bottom.
                    self.backoff.reset();
                    if let Some(t) = v["token"].as_str() {
                        self.token = Some(t.to_string());
                    }
                    eprintln!("accepted (cached: {})", v["cached"]);
                }
                Some("progress") => {
                    eprintln!("progress: level {} pages {}", v["level"], v["pages"])
                }
                Some("result") => {
                    let _ = ws.close(None);
                    return Ok(v);
                }
                Some("error") => match v["code"].as_str() {
                    Some("draining") => return Err(Interruption::Moved),
                    Some("backend_unavailable") => {
                        return Err(Interruption::Lost("backend unavailable".into()))
                    }
                    Some("unknown_job") if self.token.is_some() => {
                        // No gateway knows the job any more (e.g. an
                        // in-process backend died with its gateway): submit
                        // it again on this connection.
                        eprintln!("resume refused; submitting again");
                        self.token = None;
                        send(&mut ws, &self.crawl_message())?;
                    }
                    _ => {
                        eprintln!("job failed: {v}");
                        return Ok(v);
                    }
                },
                _ => {}
            }
        }
    }
}

fn send(ws: &mut Ws, v: &Value) -> Result<(), Interruption> {
    ws.send(Message::text(v.to_string()))
        .map_err(|e| Interruption::Lost(e.to_string()))
}

fn main() {
    let mut client = JobClient::new(Args::parse());
    match client.run() {
        Ok(result) => println!("{result}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
