//! The embedded backend end to end: a real `gateway` process crawling the
//! fixture site over loopback, driven by a real websocket client. Levels
//! are compared, set for set and level for level, with the BFS computed
//! from the fixture's declared link graph.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_tests::fixture::{FixtureOptions, FixtureSite};
use cluster_tests::gateway_proc::*;
use serde_json::{json, Value};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// An embedded gateway allowed to fetch the loopback fixture.
fn gateway(extra: &[&str]) -> Gateway {
    let mut args = vec!["--backend", "embedded", "--allow-private"];
    if !extra.contains(&"--crawl-workers") {
        args.extend(["--crawl-workers", "4"]);
    }
    args.extend_from_slice(extra);
    Gateway::start(GATEWAY, &args)
}

fn connect(gw: &Gateway) -> Client {
    let mut c = gw.connect();
    with_timeout(&mut c, 30);
    c
}

/// What a crawl produced on the wire.
struct Answer {
    accepted: Value,
    progress: Vec<(u64, u64)>,
    last: Value,
}

fn crawl(c: &mut Client, id: &str, request: Value) -> Answer {
    let mut msg = request;
    msg["type"] = json!("crawl");
    msg["id"] = json!(id);
    send_json(c, &msg);
    let accepted = recv_json(c);
    if accepted["type"] == "error" {
        return Answer {
            last: accepted.clone(),
            accepted,
            progress: Vec::new(),
        };
    }
    assert_eq!(
        (accepted["type"].as_str(), accepted["id"].as_str()),
        (Some("accepted"), Some(id)),
        "{accepted}"
    );
    let (progress, last) = until_result(c, id);
    Answer {
        accepted,
        progress,
        last,
    }
}

/// Reads progress messages up to the result (or error) for `id`.
fn until_result(c: &mut Client, id: &str) -> (Vec<(u64, u64)>, Value) {
    let mut progress = Vec::new();
    loop {
        let m = recv_json(c);
        assert_eq!(m["id"], id, "{m}");
        match m["type"].as_str() {
            Some("progress") => {
                progress.push((m["level"].as_u64().unwrap(), m["pages"].as_u64().unwrap()))
            }
            Some("result") | Some("error") => return (progress, m),
            _ => panic!("unexpected {m}"),
        }
    }
}

fn levels(result: &Value) -> Vec<BTreeSet<String>> {
    result["levels"]
        .as_array()
        .expect("levels")
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn error_code(c: &mut Client, url: &str, depth: i64) -> String {
    let a = crawl(c, "bad", json!({"url": url, "depth": depth}));
    assert_eq!(a.last["type"], "error", "{url} {depth}: {}", a.last);
    a.last["code"].as_str().unwrap().to_string()
}

#[test]
fn crawls_are_exact_cached_and_extended() {
    let site = FixtureSite::start();
    let gw = gateway(&[]);
    let mut c = connect(&gw);
    let seed = site.url("/");

    // Depth 1, 2, 3 in turn: each deeper one extends the one before.
    for depth in 1..=3usize {
        let a = crawl(
            &mut c,
            &format!("D{depth}"),
            json!({"url": seed, "depth": depth}),
        );
        assert_eq!(a.accepted["cached"], false, "depth {depth}");
        assert_eq!(a.last["type"], "result", "{}", a.last);
        assert_eq!(a.last["cached"], false);
        assert_eq!(a.last["depth"], depth);
        let expected = site.expected_levels("/", depth, true);
        assert_eq!(levels(&a.last), expected, "depth {depth}");
        // Progress for the level this request added (the others came from
        // the cache).
        let want: Vec<(u64, u64)> = (depth > 1)
            .then(|| (depth as u64 - 1, expected[depth - 1].len() as u64))
            .into_iter()
            .collect();
        assert_eq!(a.progress, want, "depth {depth}");
    }
    assert_eq!(site.hits("/"), 1, "extensions never refetch the seed");
    let fetched = site.total_hits();

    // Asked again, at the same or a smaller depth: from the cache.
    for depth in [3usize, 2] {
        let a = crawl(
            &mut c,
            &format!("C{depth}"),
            json!({"url": seed, "depth": depth}),
        );
        assert_eq!(a.accepted["cached"], true);
        assert_eq!(a.last["cached"], true);
        assert_eq!(levels(&a.last), site.expected_levels("/", depth, true));
        assert!(a.progress.is_empty());
    }
    assert_eq!(site.total_hits(), fetched, "cache hits fetch nothing");

    // A fresh gateway crawling depth 3 at once gives the same answer, with
    // one progress message per level.
    let gw2 = gateway(&[]);
    let mut c2 = connect(&gw2);
    let a = crawl(&mut c2, "F3", json!({"url": seed, "depth": 3}));
    let expected = site.expected_levels("/", 3, true);
    assert_eq!(levels(&a.last), expected);
    assert_eq!(
        a.progress,
        vec![(1, expected[1].len() as u64), (2, expected[2].len() as u64)]
    );
}

#[test]
fn seed_form_and_options_work() {
    let site = FixtureSite::start();
    let gw = gateway(&[]);
    let mut c = connect(&gw);
    send_json(
        &mut c,
        &json!({"jobId": "S1", "urlToCrawl": site.url("/b.html"), "depthToCrawl": 2}),
    );
    assert_eq!(recv_json(&mut c)["type"], "accepted");
    let (_, result) = until_result(&mut c, "S1");
    assert_eq!(levels(&result), site.expected_levels("/b.html", 2, true));

    let a = crawl(
        &mut c,
        "H",
        json!({"url": site.url("/other-host.html"), "depth": 2, "same_host": true}),
    );
    assert_eq!(
        levels(&a.last),
        site.expected_levels("/other-host.html", 2, true)
    );
}

#[test]
fn budget_and_deadline_give_partial_results() {
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(30),
        ..Default::default()
    });
    let gw = gateway(&["--job-timeout", "1"]);
    let mut c = connect(&gw);

    let a = crawl(
        &mut c,
        "B",
        json!({"url": site.url("/"), "depth": 3, "max_pages": 2}),
    );
    assert_eq!(a.last["type"], "result", "{}", a.last);
    assert_eq!(a.last["partial"], "page_budget");
    let expected = site.expected_levels("/", 3, true);
    let got = levels(&a.last);
    assert_eq!(got[..2], expected[..2]);
    assert!(got[2].is_subset(&expected[2]));

    let started = Instant::now();
    let a = crawl(
        &mut c,
        "T",
        json!({"url": site.url("/slow.html"), "depth": 2}),
    );
    assert_eq!(a.last["partial"], "deadline", "{}", a.last);
    assert_eq!(
        levels(&a.last),
        vec![BTreeSet::from([site.url("/slow.html")])]
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Partial answers are not cached.
    let a = crawl(
        &mut c,
        "B2",
        json!({"url": site.url("/"), "depth": 3, "max_pages": 2}),
    );
    assert_eq!(a.accepted["cached"], false);
}

#[test]
fn bad_requests_get_their_codes() {
    let site = FixtureSite::start();
    // No --allow-private here: the guard is on, as in production.
    let gw = Gateway::start(GATEWAY, &["--backend", "embedded"]);
    let mut c = connect(&gw);
    assert_eq!(error_code(&mut c, "not a url", 2), "invalid_url");
    assert_eq!(
        error_code(&mut c, "ftp://example.com/", 2),
        "unsupported_scheme"
    );
    assert_eq!(error_code(&mut c, "https://example.com/", 6), "too_deep");
    assert_eq!(
        error_code(&mut c, "https://example.com/", 0),
        "invalid_depth"
    );
    assert_eq!(error_code(&mut c, &site.url("/"), 2), "private_address");
    assert_eq!(
        error_code(&mut c, &site.url("/").replace("127.0.0.1", "localhost"), 2),
        "private_address"
    );
    assert_eq!(
        error_code(&mut c, "http://[::ffff:10.0.0.1]/", 2),
        "private_address"
    );
    assert_eq!(site.total_hits(), 0, "nothing was fetched");
    // The connection is still good.
    send_json(&mut c, &json!({"type": "ping", "id": "p"}));
    assert_eq!(recv_json(&mut c), json!({"type": "pong", "id": "p"}));
}

#[test]
fn resume_from_another_connection() {
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_millis(1500),
        ..Default::default()
    });
    let gw = gateway(&[]);
    let mut a = connect(&gw);
    send_json(
        &mut a,
        &json!({"type": "crawl", "id": "R", "url": site.url("/slow.html"), "depth": 2}),
    );
    let accepted = recv_json(&mut a);
    assert_eq!(accepted["type"], "accepted");
    let token = accepted["token"].as_str().unwrap().to_string();
    drop(a);

    let mut b = connect(&gw);
    send_json(
        &mut b,
        &json!({"type": "resume", "id": "R", "token": token}),
    );
    let first = recv_json(&mut b);
    // Still running: accepted, then the result; already done: the result.
    let result = if first["type"] == "accepted" {
        until_result(&mut b, "R").1
    } else {
        first
    };
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(levels(&result), site.expected_levels("/slow.html", 2, true));

    // Once finished, a resume answers at once; a wrong token gets nothing.
    send_json(
        &mut b,
        &json!({"type": "resume", "id": "R", "token": token}),
    );
    assert_eq!(recv_json(&mut b)["type"], "result");
    send_json(
        &mut b,
        &json!({"type": "resume", "id": "R", "token": "0".repeat(32)}),
    );
    assert_eq!(recv_json(&mut b)["code"], "unknown_job");
}

/// Pages per second through the gateway against a 5,000-page site, and the
/// gateway's peak memory. `cargo test --release -p gateway --test
/// embedded_e2e -- --ignored --nocapture bench`
#[test]
#[ignore]
fn bench_5000_pages() {
    let site = FixtureSite::start_with(FixtureOptions {
        generated: 5000,
        fanout: 20,
        ..Default::default()
    });
    let workers = std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "16".into());
    let gw = gateway(&["--crawl-workers", &workers, "--max-pages", "100000"]);
    let mut c = connect(&gw);
    let started = Instant::now();
    let a = crawl(
        &mut c,
        "bench",
        json!({"url": site.url("/g/0.html"), "depth": 5}),
    );
    let secs = started.elapsed().as_secs_f64();
    let pages: usize = levels(&a.last).iter().map(BTreeSet::len).sum();
    assert_eq!(pages, 5000, "{}", a.last["partial"]);
    let rss = std::fs::read_to_string(format!("/proc/{}/status", gw.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "embedded gateway, {workers} workers: {pages} pages in {secs:.2} s = {:.0} pages/s; gateway peak RSS {rss}",
        pages as f64 / secs
    );
}
