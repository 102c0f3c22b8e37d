//! Balancer: the choice function (spread, never a draining, stale or full
//! gateway, nothing when empty) and the `balancer` binary end to end against
//! a private redis-server, including a Redis outage.

use cluster_tests::gateway_proc::http_get;
use cluster_tests::process::Proc;
use cluster_tests::support::{spare_port, unique_prefix, wait_until, RedisServer};
use gateway::balancer::view::View;
use gateway::membership::{
    Heartbeat, HeartbeatConfig, Listing, Load, NodeEntry, NodeRecord, NodeState, Role,
};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn record(id: &str, connections: u64, capacity: u64, state: NodeState) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        role: Role::Gateway,
        admin: String::new(),
        url: format!("ws://127.0.0.1:1/{id}"),
        connections,
        capacity,
        state,
        version: "test".into(),
        started_at_ms: 0,
        ts_ms: 0,
        pid: 0,
    }
}

fn listing(nodes: Vec<(NodeRecord, u64)>) -> Listing {
    Listing {
        now_ms: 0,
        nodes: nodes
            .into_iter()
            .map(|(record, age_ms)| NodeEntry { record, age_ms })
            .collect(),
    }
}

/// Places `total` clients on `n` equal gateways; every `refresh_every`
/// placements the view is rebuilt with the gateways' true loads, as the
/// refresh thread does. Returns placements per gateway.
fn simulate(n: usize, total: u64, refresh_every: u64, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut load = vec![0u64; n];
    let mut view = View::empty();
    for k in 0..total {
        if k % refresh_every == 0 {
            let nodes = (0..n)
                .map(|i| {
                    (
                        record(&format!("gw-{i}"), load[i], 100_000, NodeState::Ready),
                        0,
                    )
                })
                .collect();
            view = View::from_listing(listing(nodes), 5_000);
        }
        let g = view.place(&mut rng).expect("a gateway");
        let i: usize = g.entry.record.id[3..].parse().unwrap();
        load[i] += 1;
    }
    load
}

fn assert_within(counts: &[u64], tolerance: f64) {
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    for &c in counts {
        let dev = (c as f64 - mean).abs() / mean;
        assert!(
            dev <= tolerance,
            "{counts:?}: {c} is {:.2}% off the mean {mean}",
            dev * 100.0
        );
    }
}

#[test]
fn p2c_spreads_10000_over_6_within_5_percent() {
    // Refreshed once per second at ~1,000 placements/s, or never in between.
    for (refresh_every, seed) in [(1_000, 1), (10_000, 2), (1, 3)] {
        let counts = simulate(6, 10_000, refresh_every, seed);
        assert_eq!(counts.iter().sum::<u64>(), 10_000);
        assert_within(&counts, 0.05);
    }
}

#[test]
fn p2c_spreads_100000_over_6() {
    let counts = simulate(6, 100_000, 1_000, 42);
    let mean = 100_000.0 / 6.0;
    let worst = counts
        .iter()
        .map(|&c| (c as f64 - mean).abs() / mean * 100.0)
        .fold(0.0, f64::max);
    println!("100000 placements over 6 gateways: {counts:?}, worst deviation {worst:.3}%");
    assert_within(&counts, 0.01);
}

#[test]
fn uneven_start_is_levelled_without_herding() {
    // gw-0 starts full-ish; a stale view must not send everything to the
    // single emptiest node, and the busy one gets least.
    let nodes = vec![
        (record("gw-0", 900, 1000, NodeState::Ready), 0),
        (record("gw-1", 100, 1000, NodeState::Ready), 0),
        (record("gw-2", 100, 1000, NodeState::Ready), 0),
        (record("gw-3", 0, 1000, NodeState::Ready), 0),
    ];
    let view = View::from_listing(listing(nodes), 5_000);
    let mut rng = fastrand::Rng::with_seed(9);
    let mut counts: HashMap<String, u64> = HashMap::new();
    for _ in 0..600 {
        *counts
            .entry(view.place(&mut rng).unwrap().entry.record.id.clone())
            .or_default() += 1;
    }
    assert!(counts.get("gw-3").copied().unwrap_or(0) < 400, "{counts:?}");
    assert!(counts.get("gw-0").copied().unwrap_or(0) < 20, "{counts:?}");
    assert!(counts.get("gw-1").copied().unwrap_or(0) > 100, "{counts:?}");
}

#[test]
fn never_picks_draining_stale_full_or_unknown() {
    let mut master = record("m-1", 0, 100, NodeState::Ready);
    master.role = Role::Master;
    let mut no_url = record("gw-nourl", 0, 100, NodeState::Ready);
    no_url.url.clear();
    let nodes = vec![
        (record("gw-draining", 0, 1000, NodeState::Draining), 0),
        (record("gw-stale", 0, 1000, NodeState::Ready), 6_000),
        (record("gw-full", 1000, 1000, NodeState::Ready), 0),
        (record("gw-nocap", 0, 0, NodeState::Ready), 0),
        (record("gw-good", 10, 1000, NodeState::Ready), 4_000),
        (record("gw-good2", 500, 1000, NodeState::Ready), 0),
        (master, 0),
        (no_url, 0),
    ];
    let view = View::from_listing(listing(nodes), 5_000);
    let counts = view.counts(5_000);
    assert_eq!((counts.eligible, counts.draining, counts.stale), (2, 1, 1));
    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..1_400 {
        let id = &view.place(&mut rng).unwrap().entry.record.id;
        assert!(id == "gw-good" || id == "gw-good2", "picked {id}");
    }
}

#[test]
fn nothing_when_empty_or_all_full() {
    let mut rng = fastrand::Rng::with_seed(1);
    assert!(View::empty().place(&mut rng).is_none());
    let view = View::from_listing(
        listing(vec![(record("gw-0", 2, 3, NodeState::Ready), 0)]),
        5_000,
    );
    assert!(view.place(&mut rng).is_some());
    // The balancer counts its own placements: the last free slot is gone.
    assert!(view.place(&mut rng).is_none());
}

/// The `balancer` binary on a spare port; killed on drop.
struct Balancer {
    _proc: Proc,
    port: u16,
}

impl Balancer {
    fn start(redis: &RedisServer, prefix: &str, extra: &[&str]) -> Balancer {
        let port = spare_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_balancer"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis-url", &redis.url(), "--key-prefix", prefix])
            .args(["--refresh-ms", "100", "--fresh-ms", "2000"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let b = Balancer {
            _proc: Proc::spawn(cmd, None),
            port,
        };
        assert!(wait_until(Duration::from_secs(10), || http_get(
            &b.url("/healthz")
        )
        .is_ok()));
        b
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = http_get(&self.url(path)).expect("balancer answers");
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    fn metrics(&self) -> String {
        http_get(&self.url("/metrics")).unwrap().1
    }
}

fn gateway_heartbeat(redis: &RedisServer, prefix: &str, id: &str, connections: u64) -> Heartbeat {
    let mut c = HeartbeatConfig::new(redis.url(), Role::Gateway, id);
    c.key_prefix = prefix.into();
    c.url = format!("ws://127.0.0.1:9/{id}/ws");
    c.admin = "127.0.0.1:9".into();
    c.interval = Duration::from_millis(200);
    c.ttl = Duration::from_secs(2);
    Heartbeat::start(
        c,
        Arc::new(move || Load {
            connections,
            capacity: 10_000,
            draining: false,
        }),
    )
    .unwrap()
}

#[test]
fn http_end_to_end_with_drain_and_redis_outage() {
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("balancer-http");
    let b = Balancer::start(&redis, &prefix, &["--stale-grace-ms", "1500"]);

    // No gateways: 503 with a JSON error.
    assert!(wait_until(Duration::from_secs(3), || b
        .get("/v1/gateway")
        .0
        == 503));
    let (code, body) = b.get("/v1/gateway");
    assert_eq!(code, 503);
    assert_eq!(body["error"], "no_gateway");

    let gw_a = gateway_heartbeat(&redis, &prefix, "gw-a", 0);
    let _gw_b = gateway_heartbeat(&redis, &prefix, "gw-b", 0);
    assert!(wait_until(Duration::from_secs(3), || {
        b.get("/v1/gateways").1["gateways"]
            .as_array()
            .is_some_and(|g| g.len() == 2)
    }));
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let (code, body) = b.get("/v1/gateway");
        assert_eq!(code, 200, "{body}");
        let node = body["node"].as_str().unwrap().to_string();
        assert_eq!(body["url"], format!("ws://127.0.0.1:9/{node}/ws"));
        *seen.entry(node).or_default() += 1;
    }
    assert!(seen["gw-a"] > 60 && seen["gw-b"] > 60, "{seen:?}");
    let (_, list) = b.get("/v1/gateways");
    let first = &list["gateways"][0];
    assert_eq!(first["id"], "gw-a");
    assert_eq!(first["state"], "ready");
    assert_eq!(first["capacity"], 10_000);
    assert!(first["age_ms"].as_u64().unwrap() < 2_000);
    assert_eq!(list["redis_up"], true);

    // gw-a drains: within a refresh or two it gets nobody.
    gw_a.set_draining();
    assert!(wait_until(Duration::from_secs(2), || {
        b.get("/v1/gateways").1["gateways"][0]["state"] == "draining"
    }));
    for _ in 0..100 {
        assert_eq!(b.get("/v1/gateway").1["node"], "gw-b");
    }
    let m = b.metrics();
    assert!(m.contains("balancer_redis_up 1"), "{m}");
    assert!(m.contains("balancer_gateways{state=\"draining\"} 1"), "{m}");
    assert!(
        m.contains("balancer_placements_total{node=\"gw-b\"}"),
        "{m}"
    );

    // Redis goes away: the last good view keeps serving, and says so...
    redis.stop();
    assert!(wait_until(Duration::from_secs(2), || b
        .metrics()
        .contains("balancer_redis_up 0")));
    let (code, body) = b.get("/v1/gateway");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["node"], "gw-b");
    let m = b.metrics();
    assert!(m.contains("balancer_serving_stale_view 1"), "{m}");
    assert_eq!(b.get("/v1/gateways").1["serving_stale"], true);
    // ...but not forever.
    assert!(wait_until(Duration::from_secs(4), || b
        .get("/v1/gateway")
        .0
        == 503));
    assert_eq!(b.get("/v1/gateway").1["error"], "registry_unavailable");
    assert_eq!(b.get("/readyz").0, 503);
    assert_eq!(b.get("/healthz").0, 200);
    assert_eq!(b.get("/nope").0, 404);
}

/// Sends `GET /v1/gateway` on `stream` (keep-alive) and returns when the whole
/// answer is in: status, raw head and body.
fn read_answer(stream: &mut std::net::TcpStream) -> std::io::Result<(u16, String, String)> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = text[end + 4..end + 4 + length].to_string();
            return Ok((code, head, body));
        }
    }
}

/// 2,000 new keep-alive connections at once, all held open until every one
/// has its placement: none may wait long. (A thread-per-connection server
/// strands a burst like this behind connections that stay open, and a
/// 128-deep accept backlog drops SYNs, which the client retries after 1 s.)
#[test]
fn burst_of_new_connections_is_answered_promptly() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Instant;
    const THREADS: usize = 20;
    const PER_THREAD: usize = 100;

    let redis = RedisServer::start();
    let prefix = unique_prefix("balancer-burst");
    let b = Balancer::start(&redis, &prefix, &[]);
    let _gw = gateway_heartbeat(&redis, &prefix, "gw-a", 0);
    assert!(wait_until(Duration::from_secs(3), || b
        .get("/v1/gateway")
        .0
        == 200));

    let addr = format!("127.0.0.1:{}", b.port);
    let go = Arc::new(std::sync::Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (addr, go) = (addr.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                // Open every connection and send its request before reading
                // any answer, so the server sees the whole burst at once.
                let mut open = Vec::with_capacity(PER_THREAD);
                for _ in 0..PER_THREAD {
                    let sent = Instant::now();
                    let mut s = TcpStream::connect(&addr).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.write_all(b"GET /v1/gateway HTTP/1.1\r\nHost: balancer\r\n\r\n")
                        .expect("send");
                    open.push((s, sent));
                }
                // Read in order: a later answer's time includes reading the
                // earlier ones, so these latencies are upper bounds.
                let mut worst = Duration::ZERO;
                for (s, sent) in &mut open {
                    let (code, head, body) = read_answer(s).expect("an answer");
                    assert_eq!(code, 200, "{body}");
                    assert!(
                        head.to_ascii_lowercase()
                            .contains("access-control-allow-origin: *"),
                        "{head}"
                    );
                    worst = worst.max(sent.elapsed());
                }
                worst
            })
        })
        .collect();
    let worst = workers
        .into_iter()
        .map(|w| w.join().expect("burst client"))
        .max()
        .unwrap();
    eprintln!(
        "slowest of {} new connections: {worst:?}",
        THREADS * PER_THREAD
    );
    assert!(
        worst < Duration::from_secs(1),
        "slowest of {} new connections took {worst:?}",
        THREADS * PER_THREAD
    );

    // HEAD is a probe: 200, no body, and not counted as a placement.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"HEAD /v1/gateway HTTP/1.1\r\nHost: balancer\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "a body after HEAD: {answer}");
    let placed = format!(
        "balancer_placements_total{{node=\"gw-a\"}} {}",
        THREADS * PER_THREAD + 1
    );
    assert!(b.metrics().contains(&placed), "{placed}");
}
