//! Drain end to end through the balancer: 2,000 clients attached to two
//! gateways (placed by the `balancer` binary from the Redis registry), each
//! with a job in flight; SIGTERM one gateway. Its clients get close 1012,
//! ask the balancer again (which no longer offers the draining gateway),
//! reconnect to the other one and resume (or resubmit, when the backend
//! cannot hand the job over). Every client ends on the surviving gateway
//! and every job gets its result.
//!
//! Needs the gateway's registry heartbeat (`--public-url` with
//! `--redis-url`/`--namespace`); skipped with a note on a build without it.

use cluster_tests::gateway_proc::{http_get, try_connect, Client as Ws, Gateway};
use cluster_tests::process::Proc;
use cluster_tests::support::{spare_port, unique_prefix, wait_until, RedisServer, TempDir};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tungstenite::Message;

const CLIENTS: usize = 2_000;

/// An echo gateway announcing itself in the registry; its public URL
/// names its websocket port, so both ports are chosen up front.
fn gateway(id: &str, redis: &RedisServer, namespace: &str, logs: &TempDir) -> Gateway {
    let ws = spare_port();
    let (listen, admin) = (
        format!("127.0.0.1:{ws}"),
        format!("127.0.0.1:{}", spare_port()),
    );
    let public = format!("ws://127.0.0.1:{ws}/ws");
    let redis_url = redis.url();
    let args = [
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--node-id",
        id,
        "--echo-delay-ms",
        "4000",
        "--drain-window",
        "3",
        "--max-connections",
        "5000",
        "--redis-url",
        &redis_url,
        "--namespace",
        namespace,
        "--public-url",
        &public,
    ];
    let log = logs.0.join(format!("{id}.log"));
    Gateway::start_logged(env!("CARGO_BIN_EXE_gateway"), &args, &log)
}

/// What one client saw.
#[derive(Debug, Default)]
struct Outcome {
    result: bool,
    nodes: Vec<String>,
    reconnects: u32,
    error: Option<String>,
}

struct Client {
    balancer: String,
    job: String,
    token: Option<String>,
    out: Outcome,
}

enum Step {
    Done,
    Reconnect(String),
}

impl Client {
    fn place(&mut self) -> Result<Ws, String> {
        let (code, body) = http_get(&format!("{}/v1/gateway", self.balancer))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("balancer {code}: {body}"));
        }
        let url = v["url"].as_str().ok_or("no url")?.to_string();
        let ws = try_connect(&url)?;
        self.out
            .nodes
            .push(v["node"].as_str().unwrap_or("?").to_string());
        Ok(ws)
    }

    fn submit(&self) -> Message {
        Message::text(
            json!({"type": "crawl", "id": self.job, "url": "https://example.com/", "depth": 1})
                .to_string(),
        )
    }

    /// Reads until the result or an interruption.
    fn follow(&mut self, ws: &mut Ws, accepted: &mut Option<&Barrier>) -> Step {
        loop {
            let text = match ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(f)) => {
                    return Step::Reconnect(format!("close {:?}", f.map(|f| u16::from(f.code))))
                }
                Ok(_) => continue,
                Err(e) => return Step::Reconnect(e.to_string()),
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("accepted") => {
                    self.token = v["token"].as_str().map(String::from);
                    if let Some(b) = accepted.take() {
                        b.wait();
                    }
                }
                Some("result") if v["id"] == self.job.as_str() => {
                    self.out.result = true;
                    return Step::Done;
                }
                Some("error") => match v["code"].as_str() {
                    Some("draining") => return Step::Reconnect("draining".into()),
                    Some("unknown_job") => {
                        // The echo backend keeps jobs in process: resubmit.
                        self.token = None;
                        if ws.send(self.submit()).is_err() {
                            return Step::Reconnect("send".into());
                        }
                    }
                    _ => {
                        self.out.error = Some(v.to_string());
                        return Step::Done;
                    }
                },
                _ => {}
            }
        }
    }

    fn run(
        mut self,
        connected: &Barrier,
        accepted: &Barrier,
        finished: &AtomicUsize,
    ) -> (Outcome, Option<Ws>) {
        let mut ws = match self.place() {
            Ok(ws) => ws,
            Err(e) => {
                self.out.error = Some(e);
                connected.wait();
                accepted.wait();
                return (self.out, None);
            }
        };
        connected.wait();
        let _ = ws.send(self.submit());
        let mut barrier = Some(accepted);
        let mut step = self.follow(&mut ws, &mut barrier);
        if let Some(b) = barrier.take() {
            // Interrupted before `accepted`: do not hold the others up.
            b.wait();
        }
        let mut backoff =
            gateway::membership::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(90);
        while let Step::Reconnect(why) = step {
            if Instant::now() > deadline {
                self.out.error = Some(format!("gave up after {why}"));
                break;
            }
            self.out.reconnects += 1;
            std::thread::sleep(backoff.next_delay());
            match self.place() {
                Ok(new) => {
                    ws = new;
                    let first = match &self.token {
                        Some(t) => Message::text(
                            json!({"type": "resume", "id": self.job, "token": t}).to_string(),
                        ),
                        None => self.submit(),
                    };
                    step = if ws.send(first).is_ok() {
                        self.follow(&mut ws, &mut None)
                    } else {
                        Step::Reconnect("send".into())
                    };
                }
                Err(e) => step = Step::Reconnect(e),
            }
        }
        finished.fetch_add(1, Ordering::SeqCst);
        (self.out, Some(ws))
    }
}

#[test]
fn sigterm_one_of_two_gateways_with_2000_clients_through_the_balancer() {
    let redis = RedisServer::start();
    let namespace = unique_prefix("drain").replace(':', "-");
    let logs = TempDir::new("drain-e2e");
    let mut a = gateway("gw-a", &redis, &namespace, &logs);
    let b = gateway("gw-b", &redis, &namespace, &logs);
    let port = spare_port();
    let _balancer = Proc::start(
        env!("CARGO_BIN_EXE_balancer"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &redis.url(),
            "--namespace",
            &namespace,
            "--refresh-ms",
            "200",
            "--threads",
            "4",
        ],
        Some(&logs.0.join("balancer.log")),
    );
    let balancer = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(15), || {
            http_get(&format!("{balancer}/v1/gateways"))
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .and_then(|v| {
                    v["gateways"]
                        .as_array()
                        .map(|g| g.iter().filter(|g| g["eligible"] == true).count())
                })
                == Some(2)
        }),
        "both gateways registered and eligible"
    );

    let connected = Arc::new(Barrier::new(CLIENTS + 1));
    let accepted = Arc::new(Barrier::new(CLIENTS + 1));
    let finished = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (c, a, f) = (connected.clone(), accepted.clone(), finished.clone());
            let client = Client {
                balancer: balancer.clone(),
                job: format!("job-{i}"),
                token: None,
                out: Outcome::default(),
            };
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || client.run(&c, &a, &f))
                .expect("client thread")
        })
        .collect();
    connected.wait();
    assert!(
        wait_until(Duration::from_secs(5), || {
            a.connections().unwrap_or(0) + b.connections().unwrap_or(0) == CLIENTS as u64
        }),
        "all clients attached"
    );
    let on_a = a.connections().unwrap_or(0);
    let on_b = b.connections().unwrap_or(0);
    assert!(
        on_a > 500 && on_b > 500,
        "balancer spread them: a={on_a} b={on_b}"
    );
    accepted.wait();

    // Every job is in flight (results come after 4 s): drain A.
    a.sigterm();
    assert!(
        wait_until(Duration::from_secs(60), || finished.load(Ordering::SeqCst)
            == CLIENTS),
        "clients finished: {}",
        finished.load(Ordering::SeqCst)
    );
    let outcomes: Vec<(Outcome, Option<Ws>)> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let lost: Vec<_> = outcomes
        .iter()
        .filter(|(o, _)| !o.result)
        .map(|(o, _)| o)
        .collect();
    assert!(
        lost.is_empty(),
        "{} jobs lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let moved = outcomes.iter().filter(|(o, _)| o.reconnects > 0).count();
    assert_eq!(moved as u64, on_a, "exactly A's clients moved");
    for (o, _) in &outcomes {
        assert_eq!(o.nodes.last().map(String::as_str), Some("gw-b"), "{o:?}");
    }
    // A is gone; B holds every client.
    assert!(a.wait_exit(Duration::from_secs(15)).is_some());
    assert!(wait_until(Duration::from_secs(5), || b.connections()
        == Some(CLIENTS as u64)));
    println!("drain: {on_a} clients moved from gw-a to gw-b, {CLIENTS} results, none lost");
}
