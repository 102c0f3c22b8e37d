//! Masters and workers in the membership registry: a real `backend worker`
//! and `backend master` (own redis-server, the shared RabbitMQ, a unique
//! namespace) appear in the status listing next to a gateway record, with
//! their role, id, state and capacity, and a SIGTERM removes their records.

use std::time::Duration;

use backend::membership::{
    list_nodes, namespace_prefix, status, Heartbeat, HeartbeatConfig, Listing, Load, NodeState,
    Role,
};
use cluster_tests::process::Proc;
use cluster_tests::support::{unique, wait_until, RedisServer};

/// A `backend <role>` node of the registry under test; killed on drop.
fn node(role: &str, redis: &RedisServer, namespace: &str, extra: &[&str]) -> Proc {
    let (id, url) = (format!("{role}-t1"), redis.url());
    let mut args = vec![role, "--node-id", &id, "--redis-url", &url];
    args.extend(["--namespace", namespace]);
    args.extend_from_slice(extra);
    Proc::start(env!("CARGO_BIN_EXE_backend"), &args, None)
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
    let mut worker = node("worker", &redis, &namespace, &["--concurrency", "3"]);
    let mut master = node("master", &redis, &namespace, &["--jobs", "2"]);

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
    assert_eq!(m.pid, master.pid());
    let w = &nodes[2].record;
    assert_eq!(
        (w.state, w.connections, w.capacity),
        (NodeState::Ready, 0, 3)
    );
    assert_eq!(w.pid, worker.pid());

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
        worker
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "worker exits cleanly on SIGTERM"
    );
    assert!(
        master.wait_exit(Duration::from_secs(10)).is_some(),
        "master exits on SIGTERM"
    );
    let left: Vec<Role> = listing(&redis, &prefix)
        .nodes
        .iter()
        .map(|n| n.record.role)
        .collect();
    assert_eq!(left, [Role::Gateway]);
}
