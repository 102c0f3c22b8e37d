//! The distributed backend end to end: real `gateway --backend amqp`,
//! `backend master` and `backend worker` processes against the real
//! RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379), each test in its
//! own namespace. Services a test stops are its own: a private
//! `redis-server`, and a TCP proxy in front of the shared broker.
//!
//! Run: `cargo build --workspace --bins && cargo test -p cluster-tests`.

mod common;

use std::time::{Duration, Instant};

use cluster_tests::fixture::{FixtureOptions, FixtureSite};
use common::*;
use serde_json::json;

fn expected(site: &FixtureSite, seed: &str, depth: usize) -> Vec<Vec<String>> {
    site.expected_levels(seed, depth, true)
        .into_iter()
        .map(|l| l.into_iter().collect())
        .collect()
}

/// (1) The same levels as the embedded backend and as the fixture's own
/// expectation, through a gateway, a master and two workers.
#[test]
fn crawl_matches_embedded_backend() {
    let ns = namespace("parity");
    let site = FixtureSite::start();
    let _w1 = worker(&ns, "w1", &[]);
    let _w2 = worker(&ns, "w2", &[]);
    let _m = master(&ns, "m1", &[]);
    let gw = gateway(&ns, "gw1", &[]);
    let reference = embedded_gateway(&ns, "embedded");

    let seed = site.url("/");
    let mut c = gw.connect();
    let (accepted, result) = crawl(&mut c, "J1", &seed, 3);
    assert_eq!(accepted["cached"], false);
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(result["cached"], false);

    let mut e = reference.connect();
    let (_, embedded) = crawl(&mut e, "J1", &seed, 3);
    assert_eq!(
        result["levels"], embedded["levels"],
        "same levels, same order"
    );
    assert_eq!(level_sets(&result), expected(&site, "/", 3));
}

/// (2) A second client's identical request, on another gateway, is
/// answered from the shared Redis cache.
#[test]
fn second_gateway_answers_from_shared_cache() {
    let ns = namespace("cache");
    let site = FixtureSite::start();
    let _w = worker(&ns, "w1", &[]);
    let _m = master(&ns, "m1", &[]);
    let g1 = gateway(&ns, "gw1", &[]);
    let g2 = gateway(&ns, "gw2", &[]);
    let seed = site.url("/a.html");

    let (_, first) = crawl(&mut g1.connect(), "A", &seed, 2);
    assert_eq!(first["cached"], false);
    let fetched = site.total_hits();

    let (accepted, second) = crawl(&mut g2.connect(), "A", &seed, 2);
    assert_eq!(accepted["cached"], true, "{accepted}");
    assert_eq!(second["cached"], true);
    assert_eq!(second["levels"], first["levels"]);
    // A shallower request is a hit too, truncated.
    let (_, shallow) = crawl(&mut g2.connect(), "B", &seed, 1);
    assert_eq!(shallow["cached"], true);
    assert_eq!(shallow["levels"], json!([[seed]]));
    assert_eq!(site.total_hits(), fetched, "no page fetched again");
}

/// (3) `kill -9` of the master mid-job: another master takes the job over
/// after the lease expires; the client gets exactly one, complete result.
#[test]
fn master_killed_mid_job_is_taken_over() {
    let ns = namespace("master-kill");
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(3),
        ..Default::default()
    });
    let _w1 = worker(&ns, "w1", &[]);
    let _w2 = worker(&ns, "w2", &[]);
    let lease = ["--lease-ms", "1500"];
    let mut m1 = master(&ns, "m1", &lease);
    let gw = gateway(&ns, "gw1", &[]);
    let mut c = gw.connect();
    send_json(&mut c, &crawl_msg("J", &site.url("/"), 3));
    assert_eq!(recv_json(&mut c)["type"], "accepted");
    m1.wait_log("job started", 20);
    // The slow page is being fetched: the job is mid-run.
    wait_for("slow page fetch", 20, || {
        (site.hits("/slow.html") > 0).then_some(())
    });
    let m2 = master(&ns, "m2", &lease);
    m1.kill9();

    let result = final_answer(&mut c);
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(level_sets(&result), expected(&site, "/", 3));
    m2.wait_log("job answered", 5);
    // Exactly one result.
    while let Some(extra) = try_recv(&mut c, Duration::from_secs(3)) {
        assert_ne!(extra["type"], "result", "a second result: {extra}");
        assert_ne!(extra["type"], "error", "an error after the result: {extra}");
    }
}

/// (4) `kill -9` of a worker mid-task: the broker redelivers the task to
/// another worker and the result is complete.
#[test]
fn worker_killed_mid_task_is_redelivered() {
    let ns = namespace("worker-kill");
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(3),
        ..Default::default()
    });
    let mut w1 = worker(&ns, "w1", &[]);
    let _m = master(&ns, "m1", &[]);
    let gw = gateway(&ns, "gw1", &[]);
    let mut c = gw.connect();
    send_json(&mut c, &crawl_msg("J", &site.url("/slow.html"), 2));
    assert_eq!(recv_json(&mut c)["type"], "accepted");
    wait_for("slow page fetch", 20, || {
        (site.hits("/slow.html") > 0).then_some(())
    });
    w1.kill9();
    let _w2 = worker(&ns, "w2", &[]);
    let result = final_answer(&mut c);
    assert_eq!(result["type"], "result", "{result}");
    assert!(result.get("partial").is_none(), "{result}");
    assert_eq!(level_sets(&result), expected(&site, "/slow.html", 2));
    assert_eq!(
        site.hits("/slow.html"),
        2,
        "fetched again by the second worker"
    );
}

/// (5) `kill -9` of the accepting gateway: the client resumes on another
/// gateway with its token; a wrong token gets `unknown_job`.
#[test]
fn resume_on_another_gateway_after_kill() {
    let ns = namespace("resume");
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(2),
        ..Default::default()
    });
    let _w = worker(&ns, "w1", &[]);
    let _m = master(&ns, "m1", &[]);
    let mut g1 = gateway(&ns, "gw1", &[]);
    let g2 = gateway(&ns, "gw2", &[]);
    let mut c = g1.connect();
    send_json(&mut c, &crawl_msg("J", &site.url("/"), 3));
    let accepted = recv_json(&mut c);
    assert_eq!(accepted["type"], "accepted");
    let token = accepted["token"].as_str().unwrap().to_string();
    g1.proc.kill9();

    let mut c2 = g2.connect();
    send_json(
        &mut c2,
        &json!({"type": "resume", "id": "J", "token": token}),
    );
    let result = final_answer(&mut c2);
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(level_sets(&result), expected(&site, "/", 3));

    // Resuming a finished job answers at once, again.
    let mut c3 = g2.connect();
    send_json(
        &mut c3,
        &json!({"type": "resume", "id": "J", "token": token}),
    );
    assert_eq!(final_answer(&mut c3)["levels"], result["levels"]);

    for wrong in ["0123456789abcdef0123456789abcdef", "nope", ""] {
        send_json(
            &mut c3,
            &json!({"type": "resume", "id": "K", "token": wrong}),
        );
        let e = recv_json(&mut c3);
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "unknown_job", "{e}");
    }
}

/// (6) The gateway's broker connection cut (through a proxy) while jobs
/// are queued: no accepted job is lost; while it is down new jobs get
/// `backend_unavailable` and the connection stays up.
#[test]
fn broker_cut_loses_no_accepted_job() {
    let ns = namespace("cut");
    let site = FixtureSite::start();
    let proxy = Proxy::start("127.0.0.1:5672");
    let url = proxy.amqp_url();
    let gw = gateway(&ns, "gw1", &["--amqp-url", &url]);
    // No master yet: the jobs wait in crawl.jobs.
    let seeds = ["/", "/a.html", "/b.html", "/c.html"];
    let mut clients = Vec::new();
    for (i, s) in seeds.iter().enumerate() {
        let mut c = gw.connect();
        send_json(&mut c, &crawl_msg(&format!("J{i}"), &site.url(s), 2));
        let a = recv_json(&mut c);
        assert_eq!(a["type"], "accepted", "{a}");
        clients.push(c);
    }
    proxy.cut();
    // New jobs fail clearly; the connection stays up.
    let mut probe = gw.connect();
    let failed = wait_for("backend_unavailable", 20, || {
        send_json(&mut probe, &crawl_msg("late", &site.url("/d.html"), 2));
        let m = recv_json(&mut probe);
        (m["code"] == "backend_unavailable").then_some(m)
    });
    assert_eq!(failed["type"], "error");
    send_json(&mut probe, &json!({"type": "ping", "id": "p"}));
    assert_eq!(recv_json(&mut probe)["type"], "pong");

    let _w = worker(&ns, "w1", &[]);
    let _m = master(&ns, "m1", &[]);
    std::thread::sleep(Duration::from_secs(2));
    proxy.restore();
    for (i, c) in clients.iter_mut().enumerate() {
        let r = final_answer(c);
        assert_eq!(r["type"], "result", "job {i}: {r}");
        assert_eq!(level_sets(&r), expected(&site, seeds[i], 2), "job {i}");
    }
}

/// (7) Redis stopped: jobs still complete; the cache is used again once it
/// is back.
#[test]
fn jobs_complete_without_redis() {
    let ns = namespace("redis-down");
    let site = FixtureSite::start();
    let mut redis = RedisServer::start();
    let r = redis.url();
    let args = ["--redis-url", r.as_str()];
    let _w = worker(&ns, "w1", &[]);
    let _m = master(&ns, "m1", &args);
    let gw = gateway(&ns, "gw1", &args);

    let (_, first) = crawl(&mut gw.connect(), "A", &site.url("/a.html"), 2);
    assert_eq!(first["type"], "result", "{first}");
    redis.stop();
    let (_, down) = crawl(&mut gw.connect(), "B", &site.url("/b.html"), 2);
    assert_eq!(down["type"], "result", "{down}");
    assert_eq!(level_sets(&down), expected(&site, "/b.html", 2));

    redis.restart();
    // Once the processes have reconnected (backoff), a result is cached
    // and the same request is answered from the cache.
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (_, r) = crawl(&mut gw.connect(), &format!("C{n}"), &site.url("/c.html"), 2);
        assert_eq!(r["type"], "result", "{r}");
        if r["cached"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cache never came back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (8) A job that keeps killing its runner lands in the dead-letter queue
/// with the reason and its client gets an error.
#[test]
fn poison_job_is_dead_lettered() {
    let ns = namespace("poison");
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(3),
        ..Default::default()
    });
    let _w = worker(&ns, "w1", &[]);
    let flags = ["--lease-ms", "1000", "--max-attempts", "1"];
    let mut m1 = master(&ns, "m1", &flags);
    let gw = gateway(&ns, "gw1", &[]);
    let mut c = gw.connect();
    send_json(&mut c, &crawl_msg("P", &site.url("/slow.html"), 2));
    assert_eq!(recv_json(&mut c)["type"], "accepted");
    m1.wait_log("job started", 20);
    m1.kill9();
    let _m2 = master(&ns, "m2", &flags);
    let e = final_answer(&mut c);
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "job_failed", "{e}");
    let dead = wait_for("a dead letter", 10, || {
        let d = dead_letters(&ns);
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["reason"].as_str().unwrap_or("").contains("gave up"),
        "{}",
        dead[0]
    );
}

/// Latencies in ms → (p50, p99).
fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Runs `jobs` crawls over `clients` connections (one job in flight each);
/// returns (jobs/s, p50 ms, p99 ms, cached answers).
fn drive(gw: &Gateway, urls: &[String], depth: u32, clients: usize) -> (f64, f64, f64, usize) {
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = (0..clients)
        .map(|i| urls.iter().skip(i).step_by(clients).cloned().collect())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, urls)| {
            let mut c = gw.connect();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut cached = 0;
                for (n, u) in urls.iter().enumerate() {
                    let t = Instant::now();
                    let (_, r) = crawl(&mut c, &format!("c{i}-{n}"), u, depth);
                    assert_eq!(r["type"], "result", "{r}");
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    cached += usize::from(r["cached"] == true);
                }
                (lat, cached)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut cached = 0;
    for h in handles {
        let (l, c) = h.join().unwrap();
        all.extend(l);
        cached += c;
    }
    let secs = started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(all);
    (urls.len() as f64 / secs, p50, p99, cached)
}

/// The benchmark: 1 gateway, 2 masters, 4 workers; depth-1 and depth-2
/// crawls of fixture pages through RabbitMQ, then the same requests again
/// answered from the Redis cache. Prints figures.
///
/// `cargo build --release --workspace --bins && cargo test --release -p cluster-tests --test distributed -- --ignored bench --nocapture`
#[test]
#[ignore]
fn bench_distributed() {
    let ns = namespace("bench");
    let site = FixtureSite::start_with(FixtureOptions {
        generated: 4000,
        fanout: 4,
        threads: 16,
        ..Default::default()
    });
    let _workers: Vec<_> = (0..4).map(|i| worker(&ns, &format!("w{i}"), &[])).collect();
    let _masters: Vec<_> = (0..2)
        .map(|i| master(&ns, &format!("m{i}"), &["--jobs", "16"]))
        .collect();
    let gw = gateway(&ns, "gw1", &["--max-pages", "1000"]);
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let clients = 16;
    let d1: Vec<String> = (0..jobs)
        .map(|i| site.url(&format!("/g/{i}.html")))
        .collect();
    let d2: Vec<String> = (jobs..2 * jobs)
        .map(|i| site.url(&format!("/g/{i}.html")))
        .collect();
    let report = |name: &str, (rate, p50, p99, cached): (f64, f64, f64, usize)| {
        println!("{name:<28} {jobs} jobs, {clients} clients: {rate:8.1} jobs/s  p50 {p50:7.2} ms  p99 {p99:7.2} ms  cached {cached}");
    };
    report("depth 1 via RabbitMQ", drive(&gw, &d1, 1, clients));
    report("depth 2 via RabbitMQ", drive(&gw, &d2, 2, clients));
    report("depth 1 cache hits", drive(&gw, &d1, 1, clients));
    report("depth 2 cache hits", drive(&gw, &d2, 2, clients));
}
