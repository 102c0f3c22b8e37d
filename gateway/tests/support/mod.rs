//! Helpers shared by the membership, balancer and cluster tests: a real
//! gateway process, websocket and HTTP clients, HAProxy. The private
//! `redis-server`, spare ports, unique prefixes, polling and temp dirs are
//! the workspace-wide ones from `cluster_tests::support`, re-exported.
#![allow(dead_code)]

// Each test binary uses a different subset of the re-exports.
#[allow(unused_imports)]
pub use cluster_tests::support::{spare_port, unique_prefix, wait_until, RedisServer, TempDir};

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A real `gateway` process on ports chosen by the kernel; killed on drop.
pub struct GatewayProc {
    child: std::process::Child,
    /// `ws://127.0.0.1:PORT/ws`
    pub ws: String,
    /// `http://127.0.0.1:PORT`
    pub admin: String,
    pub ws_port: u16,
    pub admin_port: u16,
}

impl GatewayProc {
    /// Starts `gateway --listen 127.0.0.1:0 --admin 127.0.0.1:0 <args>` and
    /// reads the addresses it prints.
    pub fn start(args: &[&str]) -> GatewayProc {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
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
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("gateway prints its addresses");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let (ws, admin) = (field("ws="), field("admin="));
        let port = |url: &str| -> u16 {
            url.rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in {url}"))
        };
        GatewayProc {
            ws_port: port(&ws),
            admin_port: port(&admin),
            ws,
            admin,
            child,
        }
    }

    /// True if this gateway build accepts `flag` (features another issue
    /// wires, such as `--public-url`).
    pub fn supports(flag: &str) -> bool {
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
            .unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/status.json`, or Null when the admin server does not answer.
    pub fn status(&self) -> serde_json::Value {
        http_get(&format!("{}/status.json", self.admin))
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Open websockets according to `/status.json` (None if unreachable).
    pub fn connections(&self) -> Option<u64> {
        self.status()["connections"].as_u64()
    }

    /// Sum of the samples of a metric family (`name` up to the labels).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&format!("{}/metrics", self.admin)).ok()?;
        Some(
            body.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{']))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Sends SIGTERM: the gateway drains.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {}", self.pid());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))))
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A websocket client over a plain TCP stream.
pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// Connects a websocket client, with a read timeout for later reads.
pub fn ws_connect(url: &str) -> Result<Ws, String> {
    let (ws, response) = tungstenite::connect(url).map_err(|e| e.to_string())?;
    if response.status() != 101 {
        return Err(format!("status {}", response.status()));
    }
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    }
    Ok(ws)
}

/// Sends `{"type":"ping","id":..}` and waits for the matching pong.
pub fn ws_ping(ws: &mut Ws, id: &str) -> Result<(), String> {
    let msg = serde_json::json!({"type": "ping", "id": id}).to_string();
    ws.send(tungstenite::Message::text(msg))
        .map_err(|e| e.to_string())?;
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            tungstenite::Message::Text(t) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["type"] == "pong" && v["id"] == id {
                    return Ok(());
                }
            }
            tungstenite::Message::Close(c) => return Err(format!("closed: {c:?}")),
            _ => {}
        }
    }
}

/// Reads until the server closes; returns the close code (None on a drop).
pub fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                return frame.map(|f| u16::from(f.code));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// An `haproxy` process running a generated configuration; killed on drop.
pub struct Haproxy {
    child: Child,
    pub front: u16,
    pub stats: u16,
    _dir: TempDir,
}

impl Haproxy {
    /// Generates a config for `(ws_port, admin_port)` pairs with
    /// `haproxy/gen-config --servers` and runs HAProxy with it.
    pub fn start(servers: &[(u16, u16)]) -> Haproxy {
        assert!(
            Command::new("haproxy").arg("-v").output().is_ok(),
            "haproxy is not installed: scripts/test installs it"
        );
        let (front, stats) = (spare_port(), spare_port());
        let list: Vec<String> = servers.iter().map(|(w, a)| format!("{w}:{a}")).collect();
        let gen = concat!(env!("CARGO_MANIFEST_DIR"), "/../haproxy/gen-config");
        let out = Command::new(gen)
            .args(["--servers", &list.join(",")])
            .env("BIND", format!("127.0.0.1:{front}"))
            .env("STATS", format!("127.0.0.1:{stats}"))
            .env("CHECK_MS", "200")
            .output()
            .expect("haproxy/gen-config runs");
        assert!(out.status.success(), "gen-config failed: {out:?}");
        let dir = TempDir::new("haproxy-test");
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(&cfg, &out.stdout).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let hp = Haproxy {
            child,
            front,
            stats,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                front
            ))
            .is_ok()),
            "haproxy did not listen"
        );
        hp
    }

    /// `ws://127.0.0.1:<front>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.front)
    }

    /// Server name -> status (`UP`, `DOWN`, `UP 1/2`, ...) from the stats CSV.
    pub fn server_states(&self) -> std::collections::HashMap<String, String> {
        let mut states = std::collections::HashMap::new();
        let Ok((_, csv)) = http_get(&format!("http://127.0.0.1:{}/;csv", self.stats)) else {
            return states;
        };
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return states;
        };
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.get(px) == Some(&"gateways") && f.get(sv).is_some_and(|s| s.starts_with("gw-")) {
                states.insert(f[sv].to_string(), f.get(st).unwrap_or(&"").to_string());
            }
        }
        states
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
