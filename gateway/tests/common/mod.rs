//! Starting a real `gateway` process and talking to it like a client would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

pub struct Gateway {
    child: Child,
    /// `ws://127.0.0.1:PORT/ws`
    pub ws: String,
    /// `http://127.0.0.1:PORT`
    pub admin: String,
}

impl Gateway {
    /// Starts the gateway on free ports with extra flags; the echo backend
    /// unless the flags name another.
    pub fn start(args: &[&str]) -> Gateway {
        let backend: &[&str] = if args.contains(&"--backend") {
            &[]
        } else {
            &["--backend", "echo"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--readers",
                "2",
            ])
            .args(backend)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("gateway prints its addresses");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        Gateway {
            ws: field("ws="),
            admin: field("admin="),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Client {
        let (client, response) = tungstenite::connect(&self.ws).expect("websocket connects");
        assert_eq!(response.status(), 101);
        client
    }

    /// Value of a metric line that starts with `prefix` (name plus labels);
    /// 0 when absent.
    pub fn metric(&self, prefix: &str) -> f64 {
        let body = ureq::get(&format!("{}/metrics", self.admin))
            .call()
            .expect("metrics answer")
            .into_body()
            .read_to_string()
            .expect("metrics body");
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, v| sum + v)
    }

    /// Waits until `metric(prefix)` satisfies `ok`, or panics after 10 s.
    pub fn wait_metric(&self, prefix: &str, ok: impl Fn(f64) -> bool) -> f64 {
        wait_for(&format!("metric {prefix}"), || {
            let v = self.metric(prefix);
            ok(v).then_some(v)
        })
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns Some, or panics after 10 s.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    cluster_tests::support::wait_for(what, 10, check)
}

pub fn send_json(client: &mut Client, value: &Value) {
    client.send(Message::text(value.to_string())).expect("send");
}

/// The next text message, parsed; skips websocket pings and pongs.
pub fn recv_json(client: &mut Client) -> Value {
    loop {
        match client.read().expect("read") {
            Message::Text(text) => return serde_json::from_str(&text).expect("gateway sends JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Reads until the gateway's close frame; returns its code and reason.
pub fn recv_close(client: &mut Client) -> (u16, String) {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// Sets a read timeout so a missing answer fails the test instead of hanging.
pub fn with_timeout(client: &mut Client, secs: u64) {
    if let MaybeTlsStream::Plain(stream) = client.get_mut() {
        stream
            .set_read_timeout(Some(Duration::from_secs(secs)))
            .unwrap();
    }
}
