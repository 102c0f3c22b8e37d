//! Starting the real `gateway` and `backend` binaries against the real
//! RabbitMQ and Redis, each test in its own namespace (queue names, Redis
//! keys), and talking to gateways like a client does.
//!
//! The binaries come from the same target directory as this test
//! (`cargo build --workspace --bins` first). Each process logs to
//! `<target>/cluster-logs/<namespace>-<name>.log`; tests wait on those logs
//! for readiness lines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `target/debug` (or wherever this test binary was built).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A namespace no other test (or test run) uses.
pub fn namespace(test: &str) -> String {
    cluster_tests::support::unique(&format!("t-{test}"))
}

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` (panics after `secs`).
    pub fn wait_log(&self, needle: &str, secs: u64) {
        wait_for(
            &format!("{needle:?} in {}", self.log.display()),
            secs,
            || self.log_text().contains(needle).then_some(()),
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn log_path(ns: &str, name: &str) -> PathBuf {
    let dir = target_dir().join("cluster-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{ns}-{name}.log"))
}

fn spawn(binary: &str, args: &[String], ns: &str, name: &str, stdout: Stdio) -> Proc {
    let log = log_path(ns, name);
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(bin(binary))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("CLUSTER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(stdout)
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    Proc { child, log }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A master in namespace `ns` (ready when its log says so).
pub fn master(ns: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args = strings(&[
        "master",
        "--namespace",
        ns,
        "--node-id",
        name,
        "--allow-private",
    ]);
    args.extend(strings(extra));
    let p = spawn("backend", &args, ns, name, Stdio::null());
    p.wait_log("master consuming jobs", 20);
    p
}

pub fn worker(ns: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args = strings(&[
        "worker",
        "--namespace",
        ns,
        "--node-id",
        name,
        "--allow-private",
        "--concurrency",
        "4",
    ]);
    args.extend(strings(extra));
    let p = spawn("backend", &args, ns, name, Stdio::null());
    p.wait_log("worker consuming tasks", 20);
    p
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

/// A gateway process with its websocket URL.
pub struct Gateway {
    pub proc: Proc,
    pub ws: String,
}

impl Gateway {
    /// An `amqp` gateway in `ns`; waits until it is connected to the broker
    /// (unless `extra` points it at a broker that is not there).
    pub fn start(ns: &str, name: &str, extra: &[&str]) -> Gateway {
        let g = Self::start_unready(ns, name, extra);
        g.proc.wait_log("gateway connected to the broker", 20);
        g
    }

    pub fn start_unready(ns: &str, name: &str, extra: &[&str]) -> Gateway {
        let mut args = strings(&[
            "--backend",
            "amqp",
            "--namespace",
            ns,
            "--node-id",
            name,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--readers",
            "2",
            "--allow-private",
        ]);
        args.extend(strings(extra));
        Self::spawn_gateway(&args, ns, name)
    }

    /// An embedded gateway (the reference answers).
    pub fn embedded(ns: &str, name: &str) -> Gateway {
        let args = strings(&[
            "--backend",
            "embedded",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--allow-private",
        ]);
        Self::spawn_gateway(&args, ns, name)
    }

    fn spawn_gateway(args: &[String], ns: &str, name: &str) -> Gateway {
        let mut proc = spawn("gateway", args, ns, name, Stdio::piped());
        let stdout = proc.child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("gateway prints its addresses");
        let ws = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("ws="))
            .unwrap_or_else(|| panic!("no ws= in {line:?}; see {}", proc.log.display()))
            .to_string();
        Gateway { proc, ws }
    }

    pub fn connect(&self) -> Client {
        let (mut client, _) = tungstenite::connect(&self.ws).expect("websocket connects");
        if let MaybeTlsStream::Plain(s) = client.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        client
    }
}

pub use cluster_tests::support::wait_for;

pub fn send_json(client: &mut Client, value: &Value) {
    client.send(Message::text(value.to_string())).expect("send");
}

/// The next text message; `None` on read timeout.
pub fn try_recv(client: &mut Client, timeout: Duration) -> Option<Value> {
    if let MaybeTlsStream::Plain(s) = client.get_mut() {
        s.set_read_timeout(Some(timeout)).unwrap();
    }
    loop {
        match client.read() {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).expect("JSON")),
            Ok(Message::Close(f)) => panic!("gateway closed the connection: {f:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

pub fn recv(client: &mut Client) -> Value {
    try_recv(client, Duration::from_secs(60)).expect("a message within 60 s")
}

/// Reads until the job's `result` or `error` (skipping progress).
pub fn final_answer(client: &mut Client) -> Value {
    loop {
        let m = recv(client);
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
    let first = recv(client);
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

/// A private `redis-server` on a spare port, for tests that stop Redis.
pub use cluster_tests::support::RedisServer;
