//! An `haproxy` process in front of test gateways, configured by the
//! repository's `haproxy/gen-config` exactly as a deployment would be, with
//! its stats CSV read back so tests can see which servers it considers UP.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::gateway_proc::http_get;
use crate::support::{spare_port, wait_until, TempDir};

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
