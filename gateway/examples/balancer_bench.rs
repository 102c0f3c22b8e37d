//! Balancer benchmark: requests per second, latency percentiles, and how
//! evenly the placements spread.
//!
//! Registers `--gateways` simulated gateways (real heartbeats, equal
//! capacity) in Redis under a private key prefix, starts the balancer in
//! this process on a free port, and sends `--requests` `GET /v1/gateway`
//! over `--clients` keep-alive connections.
//!
//! ```text
//! cargo run --release -p gateway --example balancer_bench -- \
//!     --redis-url redis://127.0.0.1:6379 --requests 100000 --clients 8
//! ```

use clap::Parser;
use gateway::balancer::{serve, Config};
use gateway::membership::{Heartbeat, HeartbeatConfig, Load, Role};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Redis for the registry (a private key prefix is used).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Simulated gateways.
    #[arg(long, default_value_t = 6)]
    gateways: usize,
    /// Total requests.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// Concurrent keep-alive clients (threads).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Balancer HTTP threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let args = Args::parse();
    let prefix = format!("bench:{}:", std::process::id());
    let beats: Vec<Heartbeat> = (0..args.gateways)
        .map(|i| {
            let mut c = HeartbeatConfig::new(&args.redis_url, Role::Gateway, format!("gw-{i}"));
            c.key_prefix = prefix.clone();
            c.url = format!("ws://127.0.0.1:{}/ws", 7001 + i);
            c.interval = Duration::from_millis(500);
            c.ttl = Duration::from_secs(3);
            Heartbeat::start(
                c,
                Arc::new(|| Load {
                    connections: 0,
                    capacity: 1_000_000,
                    draining: false,
                }),
            )
            .expect("heartbeat")
        })
        .collect();
    let balancer = serve(Config {
        listen: "127.0.0.1:0".into(),
        redis_url: args.redis_url.clone(),
        key_prefix: prefix,
        threads: args.threads,
        ..Config::default()
    })
    .expect("balancer");
    let url = format!("http://{}/v1/gateway", balancer.local_addr());
    let ready = Instant::now();
    loop {
        let agent = ureq::Agent::new_with_defaults();
        if agent.get(&url).call().is_ok() {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "balancer never offered a gateway"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let per_client = args.requests / args.clients.max(1);
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut lat = Vec::with_capacity(per_client);
                let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
                let mut errors = 0u64;
                for _ in 0..per_client {
                    let t = Instant::now();
                    let body = agent
                        .get(&url)
                        .call()
                        .ok()
                        .filter(|r| r.status() == 200)
                        .and_then(|mut r| r.body_mut().read_to_string().ok());
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    match body.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) {
                        Some(v) => {
                            *nodes
                                .entry(v["node"].as_str().unwrap_or("?").to_string())
                                .or_default() += 1
                        }
                        None => errors += 1,
                    }
                }
                (lat, nodes, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in threads {
        let (l, n, e) = t.join().expect("client");
        lat.extend(l);
        for (k, v) in n {
            *nodes.entry(k).or_default() += v;
        }
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let total = lat.len();
    println!(
        "{total} requests, {} clients, {} balancer threads: {:.0} req/s; latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; errors {errors}",
        args.clients,
        args.threads,
        total as f64 / elapsed,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0),
    );
    let placed: u64 = nodes.values().sum();
    let mean = placed as f64 / nodes.len().max(1) as f64;
    let worst = nodes
        .values()
        .map(|&n| (n as f64 - mean).abs() / mean * 100.0)
        .fold(0.0, f64::max);
    println!(
        "spread over {} gateways: {nodes:?}; worst deviation from the mean {worst:.2}%",
        nodes.len()
    );
    balancer.shutdown();
    drop(beats);
}
