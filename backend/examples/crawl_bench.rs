//! Pages per second of the embedded engine against a generated site on
//! loopback (5,000 pages, fanout 20: depth 5 reaches and fetches them all).
//!
//! ```text
//! cargo run --release -p backend --example crawl_bench -- [workers] [rounds] [site-url]
//! ```
//!
//! Without `site-url` the fixture site runs in this process (its threads
//! then share the CPU and the RSS figure); with it, start the site apart:
//! `cargo run --release -p cluster-tests --bin fixture-site -- 5000 20`.
//! Each round uses a fresh engine, so nothing comes from the cache.

use std::time::{Duration, Instant};

use backend::engine::{validate, Engine, EngineConfig, Limits};
use cluster_tests::fixture::{FixtureOptions, FixtureSite};

const PAGES: usize = 5000;
const DEPTH: i64 = 5;

fn main() {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let external = args.next();
    let site = match external {
        Some(_) => None,
        None => Some(FixtureSite::start_with(FixtureOptions {
            generated: PAGES,
            fanout: 20,
            threads: 8,
            ..Default::default()
        })),
    };
    let seed = external.unwrap_or_else(|| {
        site.as_ref()
            .map(|s| s.url("/g/0.html"))
            .unwrap_or_default()
    });

    let config = EngineConfig {
        limits: Limits {
            max_depth: 5,
            max_pages: 100_000,
            allow_private: true,
            allow_addrs: vec![],
        },
        workers,
        job_window: workers * 2,
        job_timeout: Duration::from_secs(600),
        ..EngineConfig::default()
    };
    let spec = validate(&seed, DEPTH, &config.limits).expect("a valid seed");
    println!("seed {seed}, depth {DEPTH}, {workers} workers");
    let mut rates = Vec::new();
    for round in 1..=rounds {
        let engine = Engine::start(config.clone());
        let started = Instant::now();
        let out = engine.run("bench", &spec, &mut |_, _| {}).expect("crawl");
        let secs = started.elapsed().as_secs_f64();
        let total: usize = out.levels.iter().map(Vec::len).sum();
        // The last level is not fetched unless the crawl ran out of links.
        let fetched = if out.levels.len() < DEPTH as usize {
            total
        } else {
            total - out.levels.last().map_or(0, Vec::len)
        };
        let rate = fetched as f64 / secs;
        rates.push(rate);
        println!(
            "round {round}: {fetched} pages fetched, {total} urls in {} levels, {secs:.2} s, {rate:.0} pages/s, partial {:?}",
            out.levels.len(),
            out.partial
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median {:.0} pages/s; peak RSS {} (this process)",
        rates[rates.len() / 2],
        peak_rss()
    );
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
