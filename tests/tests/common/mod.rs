//! What the distributed tests add to the shared harnesses
//! (`cluster_tests::process`, `cluster_tests::gateway_proc`): masters,
//! workers and `amqp` gateways against the real RabbitMQ and Redis, each
//! test in its own namespace (queue names, Redis keys); crawl requests and
//! answers; a TCP proxy a test can cut.
//!
//! The binaries come from the same target directory as this test
//! (`cargo build --workspace --bins` first). Each process logs to
//! `<target>/cluster-logs/<namespace>-<name>.log`; tests wait on those logs
//! for readiness lines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub use cluster_tests::gateway_proc::*;
pub use cluster_tests::process::{bin, target_dir, Proc};
pub use cluster_tests::support::wait_for;
/// A private `redis-server` on a spare port, for tests that stop Redis.
pub use cluster_tests::support::RedisServer;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A namespace no other test (or test run) uses.
pub fn namespace(test: &str) -> String {
    cluster_tests::support::unique(&format!("t-{test}"))
}

fn log_path(ns: &str, name: &str) -> PathBuf {
    let dir = target_dir().join("cluster-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{ns}-{name}.log"))
}

/// `<lead> --namespace <ns> --node-id <name> --allow-private <extra>`: how
/// each process joins its test's namespace.
fn node_args<'a>(lead: &[&'a str], ns: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = lead.to_vec();
    args.extend(["--namespace", ns, "--node-id", name, "--allow-private"]);
    args.extend_from_slice(extra);
    args
}

/// `backend <role>` in namespace `ns`, ready when its log says `ready`.
fn backend(role: &str, ns: &str, name: &str, extra: &[&str], ready: &str) -> Proc {
    let args = node_args(&[role], ns, name, extra);
    let p = Proc::start(bin("backend"), &args, Some(&log_path(ns, name)));
    p.wait_log(ready, 20);
    p
}

/// A master in namespace `ns` (ready when its log says so).
pub fn master(ns: &str, name: &str, extra: &[&str]) -> Proc {
    backend("master", ns, name, extra, "master consuming jobs")
}

pub fn worker(ns: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--concurrency", "4"];
    args.extend_from_slice(extra);
    backend("worker", ns, name, &args, "worker consuming tasks")
}

/// The jobs in the namespace's dead-letter queue (JSON objects).
pub fn dead_letters(ns: &str) -> Vec<Value> {
    let out = Command::new(bin("backend"))
        .args(["dead-letters", "--namespace", ns])
        .env("RUST_LOG", "warn")
        .output()
        .expect("backend dead-letters");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An `amqp` gateway in `ns`; waits until it is connected to the broker.
pub fn gateway(ns: &str, name: &str, extra: &[&str]) -> Gateway {
    let g = gateway_unready(ns, name, extra);
    g.proc.wait_log("gateway connected to the broker", 20);
    g
}

/// An `amqp` gateway in `ns`, not waited for (`extra` may point it at a
/// broker that is not there).
pub fn gateway_unready(ns: &str, name: &str, extra: &[&str]) -> Gateway {
    let args = node_args(&["--backend", "amqp"], ns, name, extra);
    Gateway::start_logged(bin("gateway"), &args, &log_path(ns, name))
}

/// An embedded gateway (the reference answers).
pub fn embedded_gateway(ns: &str, name: &str) -> Gateway {
    let args = ["--backend", "embedded", "--allow-private"];
    Gateway::start_logged(bin("gateway"), &args, &log_path(ns, name))
}

/// Reads until the job's `result` or `error` (skipping progress).
pub fn final_answer(client: &mut Client) -> Value {
    loop {
        let m = recv_json(client);
        match m["type"].as_str() {
            Some("result") | Some("error") => return m,
            _ => continue,
        }
    }
}

pub fn crawl_msg(id: &str, url: &str, depth: u32) -> Value {
    json!({"type": "crawl", "id": id, "url": url, "depth": depth})
}

/// Submits a crawl; returns (`accepted` or `error`, final answer or the same error).
pub fn crawl(client: &mut Client, id: &str, url: &str, depth: u32) -> (Value, Value) {
    send_json(client, &crawl_msg(id, url, depth));
    let first = recv_json(client);
    if first["type"] == "error" {
        return (first.clone(), first);
    }
    assert_eq!(first["type"], "accepted", "{first}");
    (first, final_answer(client))
}

/// `levels` of a result as sorted sets (order inside a level depends on
/// link order, which both backends share, but sets make failures readable).
pub fn level_sets(result: &Value) -> Vec<Vec<String>> {
    result["levels"]
        .as_array()
        .unwrap_or_else(|| panic!("no levels in {result}"))
        .iter()
        .map(|l| {
            let mut v: Vec<String> = l
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        })
        .collect()
}

/// A TCP proxy in front of a service, that a test can cut (close every
/// connection and refuse new ones) and restore.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut list = cs.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { port, cut, conns }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
