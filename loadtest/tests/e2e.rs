//! End to end: the real `loadtest` binary (two worker processes) against a
//! real server over loopback, checking the report's counts. Servers: the
//! `tokio-peer` binary of this crate, and the workspace's `gateway` binary
//! (found beside this test's target directory, built on demand).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server child killed on drop (the test's own child, by handle).
struct Server {
    child: Child,
    url: String,
    /// Admin base URL, when the server has one (the gateway).
    admin: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a server binary and read its address from its first stdout line
/// (`tokio-peer` prints `ADDR`, the gateway `listening ws=ws://ADDR/ws ...`).
fn start(bin: &Path, args: &[&str]) -> Server {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let mut reader = BufReader::new(stdout);
    // Bounded: the server prints this line right after binding; EOF ends it.
    reader.read_line(&mut line).expect("server stdout");
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines().map_while(Result::ok) {});
    let line = line.trim();
    let url = match line.split_whitespace().find_map(|w| w.strip_prefix("ws=")) {
        Some(ws) => ws.to_string(),
        None => format!("ws://{line}/ws"),
    };
    assert!(
        url.starts_with("ws://127.0.0.1:"),
        "unexpected server line {line:?}"
    );
    let admin = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .map(str::to_string);
    Server { child, url, admin }
}

/// Run the load tester and return its JSON report.
/// `probe` names the server to measure (`--server-pid P` or `--server-admin URL`).
fn loadtest(url: &str, probe: &[&str], extra: &[&str], name: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("loadtest-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let chart = dir.join("chart.svg");
    let mut args = vec![
        "--url",
        url,
        "--connections",
        "300",
        "--processes",
        "2",
        "--rate",
        "2000",
        "--hold",
        "2s",
        "--settle",
        "500ms",
        "--active",
        "0.5",
        "--message-rate",
        "4",
        "--quiet",
        "--ramp-timeout",
        "30s",
    ];
    args.extend_from_slice(probe);
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(&args)
        .arg("--report")
        .arg(&report)
        .arg("--chart")
        .arg(&chart)
        .output()
        .expect("running loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadtest failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("round trip"), "summary printed: {stdout}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    v
}

fn check_counts(v: &Value, answers_field: &str) {
    let run = &v["runs"][0];
    let c = &run["counters"];
    assert_eq!(c["opened"], 300, "{c}");
    assert_eq!(c["attempts"], 300);
    assert!(c["failed"].as_object().unwrap().is_empty(), "{c}");
    assert!(c["dropped"].as_object().unwrap().is_empty(), "{c}");
    assert_eq!(run["open_after_ramp"], 300);
    assert_eq!(run["open_at_end"], 300);
    assert_eq!(run["ramp_completed"], true);
    assert_eq!(run["handshake"]["count"], 300);
    // 150 active connections at 4/s for ~3 s: hundreds of messages, each
    // answered or still in flight at the stop.
    let sent = c["sent"].as_u64().unwrap();
    let answers = c[answers_field].as_u64().unwrap();
    let unanswered = run["unanswered"].as_u64().unwrap();
    assert!(sent >= 600, "sent {sent}");
    assert_eq!(sent, answers + unanswered, "{c}");
    assert!(unanswered <= 150);
    assert_eq!(run["rtt"]["count"].as_u64().unwrap(), answers);
    assert!(run["rtt"]["p50_ms"].as_f64().unwrap() <= run["rtt"]["p99_ms"].as_f64().unwrap());
    assert!(run["server"]["rss_after"].as_u64().unwrap() > 0);
    assert!(run["server"]["bytes_per_conn"].is_number());
    assert_eq!(run["client"]["processes"], 2);
    assert!(!run["timeline"].as_array().unwrap().is_empty());
}

#[test]
fn counts_against_tokio_peer() {
    let peer = start(
        Path::new(env!("CARGO_BIN_EXE_tokio-peer")),
        &["--listen", "127.0.0.1:0"],
    );
    let pid = peer.child.id().to_string();
    let v = loadtest(&peer.url, &["--server-pid", &pid], &[], "peer-ping");
    check_counts(&v, "pongs");
    let v = loadtest(
        &peer.url,
        &["--server-pid", &pid],
        &["--message", "crawl", "--crawl-url", "https://example.com/"],
        "peer-crawl",
    );
    check_counts(&v, "results");
    assert_eq!(
        v["runs"][0]["counters"]["accepted"],
        v["runs"][0]["counters"]["sent"]
    );
}

/// A stand-in balancer: answers every `GET /v1/gateway` with `url` (one
/// request per TCP connection, `Connection: close`).
fn fake_balancer(url: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            // Read until the end of the request head (a GET has no body).
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("{{\"url\":\"{url}\",\"node\":\"gw-test\"}}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn balancer_assigns_every_connection() {
    let peer = start(
        Path::new(env!("CARGO_BIN_EXE_tokio-peer")),
        &["--listen", "127.0.0.1:0"],
    );
    let balancer = fake_balancer(peer.url.clone());
    let dir = std::env::temp_dir().join(format!("loadtest-e2e-{}-balancer", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--balancer",
            &balancer,
            "--connections",
            "100",
            "--hold",
            "500ms",
            "--settle",
            "0s",
            "--quiet",
        ])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let c = &v["runs"][0]["counters"];
    assert_eq!(c["opened"], 100, "{c}");
    assert_eq!(c["nodes"]["gw-test"], 100, "{c}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reconnects_after_the_server_restarts() {
    let peer_bin = Path::new(env!("CARGO_BIN_EXE_tokio-peer"));
    let mut peer = start(peer_bin, &["--listen", "127.0.0.1:0"]);
    let url = peer.url.clone();
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let dir = std::env::temp_dir().join(format!("loadtest-e2e-{}-reconnect", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.json");
    let mut lt = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--url",
            &url,
            "--connections",
            "100",
            "--hold",
            "6s",
            "--settle",
            "0s",
            "--quiet",
        ])
        .args([
            "--reconnect",
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "400ms",
        ])
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) for the ramp, then restart the server on the same port.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = peer.child.kill();
    let _ = peer.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    peer = start(peer_bin, &["--listen", &addr]);
    let status = lt.wait().unwrap();
    assert!(status.success());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let run = &v["runs"][0];
    let c = &run["counters"];
    assert_eq!(
        c["dropped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        100,
        "{c}"
    );
    assert!(c["reconnects"].as_u64().unwrap() >= 100, "{c}");
    assert!(c["opened"].as_u64().unwrap() >= 200, "{c}");
    assert_eq!(run["open_at_end"], 100, "{c}");
    drop(peer);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_remote_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--url",
            "ws://192.0.2.1:80/ws",
            "--connections",
            "1",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

/// The workspace's gateway binary, built (a no-op when fresh) by the cargo
/// running this test into this test's own target directory
/// (`<target>/<profile>/deps/e2e-HASH` -> `<target>/<profile>/gateway`), so
/// the test never runs a stale gateway.
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "gateway", "--bin", "gateway"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build -p gateway");
    assert!(status.success(), "cargo build -p gateway failed");
    let bin = profile_dir.join("gateway");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

#[test]
fn counts_against_gateway() {
    let gw = start(
        &gateway_binary(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            "echo",
        ],
    );
    let pid = gw.child.id().to_string();
    let v = loadtest(&gw.url, &["--server-pid", &pid], &[], "gateway-ping");
    check_counts(&v, "pongs");
    // Memory from the admin endpoint's process_resident_memory_bytes this time.
    let admin = gw.admin.clone().expect("gateway prints its admin URL");
    let v = loadtest(
        &gw.url,
        &["--server-admin", &admin],
        &["--message", "crawl", "--crawl-url", "https://example.com/"],
        "gateway-crawl",
    );
    check_counts(&v, "results");
}
