//! Masters and workers in the membership registry: a real `backend worker`
//! and `backend master` (own redis-server, the shared RabbitMQ, a unique
//! namespace) appear in the status listing next to a gateway record, with
//! their role, id, state and capacity, and a SIGTERM removes their records.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backend::membership::{
    list_nodes, namespace_prefix, status, Heartbeat, HeartbeatConfig, Listing, Load, NodeState,
    Role,
};
use cluster_tests::support::{unique, wait_until, RedisServer};

/// A `backend` process, killed on drop if it has not exited.
struct Node(Child);

impl Node {
    fn start(role: &str, redis: &RedisServer, namespace: &str, extra: &[&str]) -> Node {
        let child = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args([role, "--node-id", &format!("{role}-t1")])
            .args(["--redis-url", &redis.url(), "--namespace", namespace])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("backend binary starts");
        Node(child)
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM");
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || matches!(self.0.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listing(redis: &RedisServer, prefix: &str) -> Listing {
    list_nodes(&mut redis.conn(), prefix, None).expect("registry readable")
}

#[test]
fn masters_and_workers_heartbeat_and_leave_on_sigterm() {
    let redis = RedisServer::start();
    let namespace = unique("members");
    let prefix = namespace_prefix(&namespace);

    // A gateway's record, written the way the gateway writes it, so the
    // listing is checked with all three roles.
    let mut gw = HeartbeatConfig::new(redis.url(), Role::Gateway, "gw-1");
    gw.key_prefix = prefix.clone();
    gw.url = "ws://127.0.0.1:5555/ws".into();
    let _gateway = Heartbeat::start(
        gw,
        std::sync::Arc::new(|| Load {
            connections: 1,
            capacity: 100,
            draining: false,
        }),
    )
    .unwrap();
    let mut worker = Node::start("worker", &redis, &namespace, &["--concurrency", "3"]);
    let mut master = Node::start("master", &redis, &namespace, &["--jobs", "2"]);

    assert!(
        wait_until(Duration::from_secs(20), || listing(&redis, &prefix)
            .nodes
            .len()
            == 3),
        "expected three nodes, got {:?}",
        listing(&redis, &prefix)
    );
    let nodes = listing(&redis, &prefix).nodes;
    let roles: Vec<(Role, &str)> = nodes
        .iter()
        .map(|n| (n.record.role, n.record.id.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            (Role::Gateway, "gw-1"),
            (Role::Master, "master-t1"),
            (Role::Worker, "worker-t1")
        ]
    );
    let m = &nodes[1].record;
    assert_eq!(
        (m.state, m.connections, m.capacity),
        (NodeState::Ready, 0, 2)
    );
    assert_eq!(m.pid, master.0.id());
    let w = &nodes[2].record;
    assert_eq!(
        (w.state, w.connections, w.capacity),
        (NodeState::Ready, 0, 3)
    );
    assert_eq!(w.pid, worker.0.id());

    // The table `gateway status` prints shows every role.
    let table = status::render_table(&listing(&redis, &prefix));
    for needle in [
        "gateway",
        "gw-1",
        "master",
        "master-t1",
        "0/2",
        "worker",
        "worker-t1",
        "0/3",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }

    // A clean exit removes the record at once (not after the TTL).
    worker.sigterm();
    master.sigterm();
    assert!(
        worker.wait_exit(Duration::from_secs(10)),
        "worker exits on SIGTERM"
    );
    assert!(
        master.wait_exit(Duration::from_secs(10)),
        "master exits on SIGTERM"
    );
    assert!(worker.0.try_wait().unwrap().unwrap().success());
    let left: Vec<Role> = listing(&redis, &prefix)
        .nodes
        .iter()
        .map(|n| n.record.role)
        .collect();
    assert_eq!(left, [Role::Gateway]);
}
