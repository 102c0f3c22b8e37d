//! `scripts/cluster up|status|down` end to end: two gateways, the balancer
//! and HAProxy on private ports, state in a private directory, a private
//! redis-server. Clients get through HAProxy (and through the balancer when
//! this gateway build announces itself in the registry); `down` stops every
//! process `up` started.

use cluster_tests::gateway_proc::{http_get, ping, try_connect, Gateway};
use cluster_tests::support::{spare_port, wait_until, RedisServer, TempDir};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

struct Cluster {
    envs: Vec<(String, String)>,
    dir: PathBuf,
    up: bool,
}

impl Cluster {
    fn run(&self, args: &[&str]) -> Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster");
        Command::new(script)
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("scripts/cluster runs")
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.dir.join("pids"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.up {
            let _ = self.run(&["down"]);
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A base such that base+1, base+2, base+101 and base+102 are free.
fn port_base() -> u16 {
    loop {
        let base = 20_000 + fastrand::u16(0..300) * 100;
        let free = [1, 2, 101, 102]
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
}

#[test]
fn cluster_up_status_down() {
    let redis = RedisServer::start();
    let state = TempDir::new("cluster-test");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let profile_dir = exe.parent().expect("bin dir");
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let target = profile_dir.parent().expect("target dir");
    let (balancer, front, stats) = (spare_port(), spare_port(), spare_port());
    let base = port_base();
    let envs = [
        ("CARGO_TARGET_DIR", target.display().to_string()),
        ("PROFILE", profile),
        ("NO_BUILD", "1".into()),
        ("CLUSTER_DIR", state.0.display().to_string()),
        ("PORT_BASE", base.to_string()),
        ("REDIS_URL", redis.url()),
        ("GATEWAYS", "2".into()),
        ("MASTERS", "0".into()),
        ("WORKERS", "0".into()),
        ("BACKEND", "echo".into()),
        ("LB", "both".into()),
        ("BALANCER_ADDR", format!("127.0.0.1:{balancer}")),
        ("HAPROXY_ADDR", format!("127.0.0.1:{front}")),
        ("HAPROXY_STATS", format!("127.0.0.1:{stats}")),
    ];
    let mut cluster = Cluster {
        envs: envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        dir: state.0.clone(),
        up: true,
    };
    let out = cluster.run(&["up"]);
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = cluster.pids();
    assert_eq!(pids.len(), 4, "gw-1, gw-2, balancer, haproxy");

    let out = cluster.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for name in ["gw-1", "gw-2", "balancer", "haproxy"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{name} in {text}"
        );
    }

    // Through HAProxy.
    let url = format!("ws://127.0.0.1:{front}/ws");
    assert!(wait_until(Duration::from_secs(10), || {
        try_connect(&url)
            .and_then(|mut ws| ping(&mut ws, "via-haproxy"))
            .is_ok()
    }));
    // Through the balancer, when gateways announce themselves.
    if Gateway::supports(env!("CARGO_BIN_EXE_gateway"), "--public-url") {
        let ask = format!("http://127.0.0.1:{balancer}/v1/gateway");
        assert!(wait_until(Duration::from_secs(10), || {
            http_get(&ask).is_ok_and(|(code, _)| code == 200)
        }));
        let (_, body) = http_get(&ask).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut ws = try_connect(v["url"].as_str().unwrap()).unwrap();
        ping(&mut ws, "via-balancer").unwrap();
        // `status` shows the registry too.
        let out = cluster.run(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        for id in ["gw-1", "gw-2"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("gateway") && l.contains(id) && l.contains("ready")),
                "{id} in the registry listing: {text}"
            );
        }
    } else {
        eprintln!("note: gateway without --public-url; balancer path not checked");
    }

    let out = cluster.run(&["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.up = false;
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still running after down");
    }
    assert!(cluster.pids().is_empty());
}
