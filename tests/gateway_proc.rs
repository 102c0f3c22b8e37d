//! Starting a real `gateway` process and talking to it like a client and an
//! operator would: the one harness for every crate's tests. A [`Gateway`]
//! listens on ports the kernel picks (it prints them on stdout), answers
//! metric, `/status.json` and signal requests, and is killed on drop; the
//! free functions are the websocket (tungstenite) and admin HTTP clients.
//!
//! Tests in the gateway package pass `env!("CARGO_BIN_EXE_gateway")` as the
//! binary; others pass `cluster_tests::process::bin("gateway")`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::process::Proc;

/// A websocket client over a plain TCP stream.
pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// Flags a test gateway gets unless its args name them: kernel-chosen
/// ports, two readers (the same on every machine) and the echo backend.
const DEFAULTS: [(&str, &str); 4] = [
    ("--listen", "127.0.0.1:0"),
    ("--admin", "127.0.0.1:0"),
    ("--readers", "2"),
    ("--backend", "echo"),
];

/// A running `gateway` process; killed on drop.
pub struct Gateway {
    pub proc: Proc,
    /// `ws://127.0.0.1:PORT/ws`
    pub ws: String,
    /// `http://127.0.0.1:PORT`
    pub admin: String,
    pub ws_port: u16,
    pub admin_port: u16,
}

impl Gateway {
    /// Starts `bin` with `args` plus the defaults they do not name
    /// (`--listen`/`--admin 127.0.0.1:0`, `--readers 2`, `--backend echo`)
    /// and reads the addresses it prints. Stderr is inherited.
    pub fn start(bin: impl AsRef<Path>, args: &[&str]) -> Gateway {
        Self::launch(bin.as_ref(), args, None)
    }

    /// Like [`Gateway::start`], with stderr in `log` (see [`Proc::spawn`]
    /// for the log level).
    pub fn start_logged(bin: impl AsRef<Path>, args: &[&str], log: &Path) -> Gateway {
        Self::launch(bin.as_ref(), args, Some(log))
    }

    fn launch(bin: &Path, args: &[&str], log: Option<&Path>) -> Gateway {
        let mut cmd = Command::new(bin);
        for (flag, value) in DEFAULTS {
            if !args.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(args).stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd, log);
        let stdout = proc.child().stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        // Keep reading so a later stdout write never meets a closed pipe.
        std::thread::spawn(move || for _ in reader.lines().map_while(Result::ok) {});
        let see = match &proc.log {
            Some(p) => format!("; see {}", p.display()),
            None => String::new(),
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("gateway printed no {name} in {line:?}{see}"))
                .to_string()
        };
        let (ws, admin) = (field("ws="), field("admin="));
        Gateway {
            ws_port: port(&ws),
            admin_port: port(&admin),
            ws,
            admin,
            proc,
        }
    }

    /// True if the gateway at `bin` accepts `flag` (its `--help` names it).
    pub fn supports(bin: impl AsRef<Path>, flag: &str) -> bool {
        Command::new(bin.as_ref())
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
            .unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// A websocket client (see [`connect`]).
    pub fn connect(&self) -> Client {
        connect(&self.ws)
    }

    /// Sum of the metric lines that start with `prefix` (a name, or a name
    /// and the start of its labels); 0 when none does. Panics when the
    /// admin server does not answer.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.try_metric(prefix)
            .unwrap_or_else(|| panic!("no /metrics from {}", self.admin))
    }

    /// [`Gateway::metric`], or `None` when the admin server does not answer.
    pub fn try_metric(&self, prefix: &str) -> Option<f64> {
        let (code, body) = http_get(&format!("{}/metrics", self.admin)).ok()?;
        (code == 200).then(|| {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
    }

    /// Waits until `metric(prefix)` satisfies `ok`, or panics after 10 s.
    pub fn wait_metric(&self, prefix: &str, ok: impl Fn(f64) -> bool) -> f64 {
        crate::support::wait_for(&format!("metric {prefix}"), 10, || {
            let v = self.metric(prefix);
            ok(v).then_some(v)
        })
    }

    /// `/status.json`, or Null when the admin server does not answer.
    pub fn status(&self) -> Value {
        http_get(&format!("{}/status.json", self.admin))
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null)
    }

    /// Open websockets according to `/status.json` (None if unreachable).
    pub fn connections(&self) -> Option<u64> {
        self.status()["connections"].as_u64()
    }

    /// `kill -s <signal>`.
    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// SIGTERM: the gateway drains.
    pub fn sigterm(&self) {
        self.proc.sigterm();
    }

    /// Its exit status once it has exited within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(within)
    }
}

/// The port of `scheme://host:PORT[/path]`.
fn port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// GET `url`, returning status and body; never an error for 4xx/5xx.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Connects a websocket client (101 or an error) with a 60 s read timeout,
/// so a missing answer fails the test instead of hanging it.
pub fn try_connect(url: &str) -> Result<Client, String> {
    let (mut client, response) = tungstenite::connect(url).map_err(|e| e.to_string())?;
    if response.status() != 101 {
        return Err(format!("status {}", response.status()));
    }
    with_timeout(&mut client, 60);
    Ok(client)
}

/// [`try_connect`], panicking on failure.
pub fn connect(url: &str) -> Client {
    try_connect(url).unwrap_or_else(|e| panic!("websocket to {url}: {e}"))
}

/// Sets the read timeout for later reads.
pub fn with_timeout(client: &mut Client, secs: u64) {
    set_read_timeout(client, Some(Duration::from_secs(secs)));
}

fn set_read_timeout(client: &mut Client, timeout: Option<Duration>) {
    if let MaybeTlsStream::Plain(stream) = client.get_mut() {
        stream.set_read_timeout(timeout).expect("set_read_timeout");
    }
}

pub fn send_json(client: &mut Client, value: &Value) {
    client.send(Message::text(value.to_string())).expect("send");
}

/// The next text message, parsed; skips websocket pings and pongs, panics
/// on a close, a binary message or a read error (such as the timeout).
pub fn recv_json(client: &mut Client) -> Value {
    loop {
        match client.read().expect("read") {
            Message::Text(text) => return serde_json::from_str(&text).expect("gateway sends JSON"),
            Message::Close(f) => panic!("gateway closed the connection: {f:?}"),
            Message::Binary(b) => panic!("unexpected binary message {b:?}"),
            _ => continue,
        }
    }
}

/// The next text message, or `None` when none comes within `timeout`; the
/// client's read timeout is restored afterwards.
pub fn try_recv(client: &mut Client, timeout: Duration) -> Option<Value> {
    let before = match client.get_ref() {
        MaybeTlsStream::Plain(s) => s.read_timeout().ok().flatten(),
        _ => None,
    };
    set_read_timeout(client, Some(timeout));
    let got = loop {
        match client.read() {
            Ok(Message::Text(text)) => break Some(serde_json::from_str(&text).expect("JSON")),
            Ok(Message::Close(f)) => panic!("gateway closed the connection: {f:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    set_read_timeout(client, before);
    got
}

/// Reads until the gateway's close frame; returns its code and reason
/// (1005 without a frame body).
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

/// Sends `{"type":"ping","id":..}` and waits for the matching pong.
pub fn ping(client: &mut Client, id: &str) -> Result<(), String> {
    let msg = serde_json::json!({"type": "ping", "id": id}).to_string();
    client.send(Message::text(msg)).map_err(|e| e.to_string())?;
    loop {
        match client.read().map_err(|e| e.to_string())? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["type"] == "pong" && v["id"] == id {
                    return Ok(());
                }
            }
            Message::Close(c) => return Err(format!("closed: {c:?}")),
            _ => {}
        }
    }
}
