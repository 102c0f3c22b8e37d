//! Heartbeats against a private redis-server: records appear with Redis-clock
//! ages, draining shows at once, a clean exit removes the record, a hung node
//! expires by itself, a Redis restart is survived, and the status listing
//! shows every role.

use cluster_tests::support::{unique_prefix, wait_until, RedisServer};
use gateway::membership::{
    list_nodes, record_key, status, Heartbeat, HeartbeatConfig, Load, LoadSource, NodeState, Role,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(redis: &RedisServer, prefix: &str, role: Role, id: &str) -> HeartbeatConfig {
    let mut c = HeartbeatConfig::new(redis.url(), role, id);
    c.key_prefix = prefix.to_string();
    c.admin = "127.0.0.1:5556".into();
    c.url = format!("ws://127.0.0.1:5555/{id}");
    c.interval = Duration::from_millis(100);
    c.ttl = Duration::from_millis(500);
    c
}

fn fixed(connections: u64, capacity: u64) -> LoadSource {
    Arc::new(move || Load {
        connections,
        capacity,
        draining: false,
    })
}

#[test]
fn record_appears_updates_drains_and_is_removed() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("hb");
    let conns = Arc::new(AtomicU64::new(7));
    let c2 = conns.clone();
    let load: LoadSource = Arc::new(move || Load {
        connections: c2.load(Ordering::Relaxed),
        capacity: 100,
        draining: false,
    });
    let mut cfg = config(&redis, &prefix, Role::Gateway, "gw-1");
    cfg.interval = Duration::from_secs(5); // only notify() writes after the first
    cfg.ttl = Duration::from_secs(15);
    let mut hb = Heartbeat::start(cfg, load).unwrap();
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(3), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes.len() == 1
    }));
    let listing = list_nodes(&mut conn, &prefix, Some(Role::Gateway)).unwrap();
    let n = &listing.nodes[0];
    assert_eq!(n.record.id, "gw-1");
    assert_eq!(n.record.role, Role::Gateway);
    assert_eq!(n.record.state, NodeState::Ready);
    assert_eq!((n.record.connections, n.record.capacity), (7, 100));
    assert_eq!(n.record.url, "ws://127.0.0.1:5555/gw-1");
    assert_eq!(n.record.pid, std::process::id());
    assert!(n.age_ms < 2_000, "age {}", n.age_ms);
    assert!(n.record.started_at_ms <= n.record.ts_ms);
    assert!(hb.is_connected());
    assert!(list_nodes(&mut conn, &prefix, Some(Role::Worker))
        .unwrap()
        .nodes
        .is_empty());

    // notify() pushes new numbers without waiting for the 5 s tick.
    conns.store(9, Ordering::Relaxed);
    hb.notify();
    assert!(wait_until(Duration::from_millis(500), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes[0]
            .record
            .connections
            == 9
    }));

    // Draining is visible at once.
    let t = Instant::now();
    hb.set_draining();
    assert!(wait_until(Duration::from_millis(500), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes[0]
            .record
            .state
            == NodeState::Draining
    }));
    assert!(t.elapsed() < Duration::from_millis(500));

    // A clean exit removes the record and its index entry.
    assert!(hb.shutdown(Duration::from_secs(2)));
    assert!(list_nodes(&mut conn, &prefix, None)
        .unwrap()
        .nodes
        .is_empty());
    let card: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}nodes:index"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(card, 0);
}

#[test]
fn hung_node_expires_by_itself() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("expiry");
    let hang = Arc::new(AtomicBool::new(false));
    let h2 = hang.clone();
    // The load source blocks forever once `hang` is set: the process is
    // alive but wedged, and stops writing.
    let load: LoadSource = Arc::new(move || {
        while h2.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        Load {
            connections: 1,
            capacity: 10,
            draining: false,
        }
    });
    let mut hb = Heartbeat::start(config(&redis, &prefix, Role::Worker, "w-1"), load).unwrap();
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(3), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes.len() == 1
    }));
    hang.store(true, Ordering::Relaxed);
    let hung_at = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || {
        list_nodes(&mut conn, &prefix, None)
            .unwrap()
            .nodes
            .is_empty()
    }));
    // Gone after about one TTL (500 ms), not before it.
    let gone_after = hung_at.elapsed();
    assert!(gone_after >= Duration::from_millis(250), "{gone_after:?}");
    let exists: bool = redis::cmd("EXISTS")
        .arg(record_key(&prefix, Role::Worker, "w-1"))
        .query(&mut conn)
        .unwrap();
    assert!(!exists);
    // The index entry is purged by the reader.
    let card: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}nodes:index"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(card, 0);
    hang.store(false, Ordering::Relaxed);
    hb.shutdown(Duration::from_secs(2));
}

#[test]
fn survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let prefix = unique_prefix("restart");
    let hb = Heartbeat::start(config(&redis, &prefix, Role::Master, "m-1"), fixed(2, 4)).unwrap();
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(3), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes.len() == 1
    }));
    redis.stop();
    assert!(wait_until(Duration::from_secs(3), || !hb.is_connected()));
    let (_, failed) = hb.writes();
    assert!(failed >= 1);
    // A new, empty Redis on the same port: the node writes itself back.
    let redis2 = RedisServer::start_on(port);
    let mut conn = redis2.conn();
    assert!(
        wait_until(Duration::from_secs(8), || {
            list_nodes(&mut conn, &prefix, None).unwrap().nodes.len() == 1
        }),
        "heartbeat did not come back after a Redis restart"
    );
    assert!(hb.is_connected());
    drop(hb);
    assert!(list_nodes(&mut conn, &prefix, None)
        .unwrap()
        .nodes
        .is_empty());
}

#[test]
fn ages_come_from_the_redis_clock() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("age");
    let mut conn = redis.conn();
    let now = gateway::membership::redis_time_ms(&mut conn).unwrap();
    // A record stamped 3 s ago (as if written by a node whose last beat was
    // 3 s ago) reads back with age ~3 s, whatever this machine's clock says.
    let key = record_key(&prefix, Role::Gateway, "old");
    let rec = serde_json::json!({
        "id": "old", "role": "gateway", "state": "ready", "ts_ms": now - 3000,
        "connections": 1, "capacity": 2
    });
    redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(rec.to_string())
        .arg("PX")
        .arg(10_000)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{prefix}nodes:index"))
        .arg(now + 10_000)
        .arg(&key)
        .ignore()
        // Garbage under the prefix must not break the listing.
        .cmd("SET")
        .arg(format!("{prefix}nodes:gateway:junk"))
        .arg("{not json")
        .ignore()
        .cmd("ZADD")
        .arg(format!("{prefix}nodes:index"))
        .arg(now + 10_000)
        .arg(format!("{prefix}nodes:gateway:junk"))
        .ignore()
        .query::<()>(&mut conn)
        .unwrap();
    let listing = list_nodes(&mut conn, &prefix, None).unwrap();
    assert_eq!(listing.nodes.len(), 1);
    let age = listing.nodes[0].age_ms;
    assert!((3000..4000).contains(&age), "age {age}");
}

#[test]
fn status_lists_every_role() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("status");
    let mut beats = Vec::new();
    for (role, id) in [
        (Role::Worker, "w-1"),
        (Role::Gateway, "gw-2"),
        (Role::Master, "m-1"),
        (Role::Gateway, "gw-1"),
    ] {
        beats.push(Heartbeat::start(config(&redis, &prefix, role, id), fixed(3, 10)).unwrap());
    }
    beats[1].set_draining();
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(3), || {
        let l = list_nodes(&mut conn, &prefix, None).unwrap();
        l.nodes.len() == 4
            && l.nodes
                .iter()
                .any(|n| n.record.state == NodeState::Draining)
    }));
    let listing = list_nodes(&mut conn, &prefix, None).unwrap();
    let ids: Vec<&str> = listing.nodes.iter().map(|n| n.record.id.as_str()).collect();
    assert_eq!(ids, ["gw-1", "gw-2", "m-1", "w-1"]);
    let table = status::render_table(&listing);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("ROLE") && lines[0].contains("AGE"));
    assert!(
        lines[2].starts_with("gateway")
            && lines[2].contains("gw-2")
            && lines[2].contains("draining")
    );
    assert!(lines[3].starts_with("master") && lines[3].contains("3/10 (30%)"));
    let json: serde_json::Value = serde_json::from_str(&status::render_json(&listing)).unwrap();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(json["nodes"][3]["role"], "worker");
    assert!(json["nodes"][0]["age_ms"].as_u64().unwrap() < 2000);
    // The command entry point works against a real Redis too.
    status::run_with_prefix(&redis.url(), &prefix, true).unwrap();
    assert!(status::run("redis://127.0.0.1:1", false).is_err());
}

#[test]
fn draining_flag_of_the_load_source_is_written_at_once() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("drainflag");
    let draining = Arc::new(AtomicBool::new(false));
    let d2 = draining.clone();
    let load: LoadSource = Arc::new(move || Load {
        connections: 0,
        capacity: 1,
        draining: d2.load(Ordering::Relaxed),
    });
    let mut cfg = config(&redis, &prefix, Role::Gateway, "gw-d");
    cfg.interval = Duration::from_secs(5);
    cfg.ttl = Duration::from_secs(15);
    let _hb = Heartbeat::start(cfg, load).unwrap();
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(3), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes.len() == 1
    }));
    let t = Instant::now();
    draining.store(true, Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(1), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes[0]
            .record
            .state
            == NodeState::Draining
    }));
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn gateway_status_lists_a_namespace() {
    let redis = RedisServer::start();
    let namespace = unique_prefix("statusbin").replace(':', "-");
    let prefix = gateway::membership::namespace_prefix(&namespace);
    let _gw =
        Heartbeat::start(config(&redis, &prefix, Role::Gateway, "gw-9"), fixed(4, 8)).unwrap();
    let _w = Heartbeat::start(config(&redis, &prefix, Role::Worker, "w-9"), fixed(1, 2)).unwrap();
    let mut conn = redis.conn();
    assert!(wait_until(Duration::from_secs(3), || {
        list_nodes(&mut conn, &prefix, None).unwrap().nodes.len() == 2
    }));
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "status",
                "--redis-url",
                &redis.url(),
                "--namespace",
                &namespace,
            ])
            .args(extra)
            .output()
            .expect("gateway status runs")
    };
    let out = run(&[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("gateway") && l.contains("gw-9") && l.contains("4/8 (50%)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("worker") && l.contains("w-9")),
        "{text}"
    );
    let out = run(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2));
    // Another namespace sees nothing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "status",
            "--redis-url",
            &redis.url(),
            "--namespace",
            "other",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no live nodes\n");
}
