//! The admin HTTP server of real `backend master` and `backend worker`
//! processes (`--admin 127.0.0.1:0`, the shared RabbitMQ and Redis, a
//! unique namespace): the bound address is printed and written into the
//! registry record, `/healthz` answers, `/readyz` turns 200 once the node
//! consumes (and is 503 while its broker is unreachable), `/metrics` has the
//! documented names, and one crawl through an `amqp` gateway moves the
//! master's job counters and the worker's task counters.
//!
//! The gateway binary comes from the same target directory
//! (`cargo build --workspace --bins` first).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use backend::membership::{self, list_nodes, namespace_prefix, status, Role};
use cluster_tests::fixture::FixtureSite;
use cluster_tests::gateway_proc::{http_get, recv_json, send_json, Gateway};
use cluster_tests::process::{bin, target_dir, Proc};
use cluster_tests::support::{spare_port, unique, wait_for};
use serde_json::json;

const REDIS: &str = "redis://127.0.0.1:6379";

/// A `backend <role>` with `--admin 127.0.0.1:0`, and the `http://ADDR` it
/// printed on stdout; killed on drop.
struct Node {
    proc: Proc,
    admin: String,
}

impl Node {
    fn start(role: &str, ns: &str, id: &str, extra: &[&str]) -> Node {
        let dir = target_dir().join("cluster-logs");
        let _ = std::fs::create_dir_all(&dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backend"));
        cmd.args([role, "--admin", "127.0.0.1:0", "--namespace", ns])
            .args(["--node-id", id, "--allow-private", "--redis-url", REDIS])
            .args(extra)
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd, Some(&dir.join(format!("{ns}-{id}.log"))));
        let mut out = BufReader::new(proc.child().stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        // Keep reading so a later stdout write never meets a closed pipe.
        std::thread::spawn(move || for _ in out.lines().map_while(Result::ok) {});
        let admin = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("admin="))
            .unwrap_or_else(|| panic!("{role} printed no admin= in {line:?}"))
            .to_string();
        assert!(line.contains(&format!("role={role} node={id}")), "{line}");
        Node { proc, admin }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("{}{path}", self.admin)).ok()
    }

    fn status(&self, path: &str) -> u16 {
        self.get(path).map_or(0, |(code, _)| code)
    }

    /// The metrics text (panics when the server does not answer).
    fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("no /metrics from {}: {other:?}", self.admin),
        }
    }

    /// Sum of the metric lines that start with `prefix`.
    fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn wait_ready(&self) {
        wait_for(&format!("{}/readyz 200", self.admin), 20, || {
            (self.status("/readyz") == 200).then_some(())
        });
    }
}

/// `host:port` of `http://host:port`.
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

#[test]
fn masters_and_workers_serve_metrics_health_and_readiness() {
    let ns = unique("t-admin");
    let worker = Node::start("worker", &ns, "w-admin", &["--concurrency", "2"]);
    let master = Node::start("master", &ns, "m-admin", &["--jobs", "2"]);
    for node in [&worker, &master] {
        assert_eq!(node.status("/healthz"), 200, "{}", node.admin);
        node.wait_ready();
        assert_eq!(node.status("/nope"), 404);
    }

    let text = master.metrics();
    for name in [
        "backend_master_jobs_started_total",
        "backend_master_jobs_completed_total",
        "backend_master_jobs_failed_total",
        "backend_master_jobs_dead_lettered_total",
        "backend_master_jobs_redelivered_total",
        "backend_master_lease_conflicts_total",
        "backend_master_cache_hits_total",
        "backend_master_cache_misses_total",
        "backend_master_job_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from master\n{text}");
    }
    assert!(master.metric("process_resident_memory_bytes") > 0.0);
    let text = worker.metrics();
    for name in [
        "backend_worker_fetch_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from worker\n{text}");
    }

    // The registry records carry the bound admin addresses, so `gateway
    // status` shows them.
    let prefix = namespace_prefix(&ns);
    let listing = wait_for("both records with their admin address", 20, || {
        let mut conn = membership::connect(REDIS, Duration::from_secs(2)).ok()?;
        let l = list_nodes(&mut conn, &prefix, None).ok()?;
        let admins: Vec<(Role, String)> = l
            .nodes
            .iter()
            .map(|n| (n.record.role, n.record.admin.clone()))
            .collect();
        (admins
            == [
                (Role::Master, host_port(&master.admin).to_string()),
                (Role::Worker, host_port(&worker.admin).to_string()),
            ])
        .then_some(l)
    });
    let table = status::render_table(&listing);
    for admin in [&master.admin, &worker.admin] {
        assert!(
            table.contains(host_port(admin)),
            "{admin} missing from\n{table}"
        );
    }

    // One crawl through an `amqp` gateway moves both nodes' counters.
    let site = FixtureSite::start();
    let log = target_dir()
        .join("cluster-logs")
        .join(format!("{ns}-gw.log"));
    let gw_args = [
        "--backend",
        "amqp",
        "--namespace",
        &ns,
        "--node-id",
        "gw-admin",
    ];
    let gw = Gateway::start_logged(
        bin("gateway"),
        &[&gw_args[..], &["--allow-private"]].concat(),
        &log,
    );
    gw.proc.wait_log("gateway connected to the broker", 20);
    let mut client = gw.connect();
    send_json(
        &mut client,
        &json!({"type": "crawl", "id": "J1", "url": site.url("/"), "depth": 2}),
    );
    let answer = loop {
        let m = recv_json(&mut client);
        match m["type"].as_str() {
            Some("result") | Some("error") => break m,
            _ => continue,
        }
    };
    assert_eq!(answer["type"], "result", "{answer}");

    // The master acks after answering, so its counters may trail the
    // client's answer by a moment.
    wait_for("master jobs_completed 1", 10, || {
        (master.metric("backend_master_jobs_completed_total") == 1.0).then_some(())
    });
    assert_eq!(master.metric("backend_master_jobs_started_total"), 1.0);
    assert_eq!(master.metric("backend_master_cache_misses_total"), 1.0);
    assert_eq!(master.metric("backend_master_jobs_failed_total"), 0.0);
    assert_eq!(
        master.metric("backend_master_job_duration_seconds_count"),
        1.0
    );
    let fetched = worker.metric("backend_worker_tasks_total");
    assert!(fetched >= 1.0, "worker tasks: {}", worker.metrics());
    assert!(worker.metric(r#"backend_worker_tasks_total{outcome="ok""#) >= 1.0);
    assert_eq!(
        worker.metric("backend_worker_fetch_duration_seconds_count"),
        fetched
    );

    // A clean exit still works with the admin threads running.
    for mut node in [worker, master] {
        node.proc.sigterm();
        assert!(
            node.proc
                .wait_exit(Duration::from_secs(10))
                .is_some_and(|s| s.success()),
            "{} exits cleanly on SIGTERM",
            node.admin
        );
    }
}

#[test]
fn not_ready_while_the_broker_is_unreachable() {
    let ns = unique("t-admin-nobroker");
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", spare_port());
    let worker = Node::start("worker", &ns, "w-nobroker", &["--amqp-url", &amqp]);
    assert_eq!(worker.status("/healthz"), 200);
    // Give the worker time to try (and fail) a broker session.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(worker.status("/readyz"), 503);
    assert!(worker.metrics().contains("process_resident_memory_bytes"));
}
