//! Serves the fixture site with a generated part on loopback until killed,
//! for benchmarks: `fixture-site [pages] [fanout]` prints the seed URL.

use cluster_tests::fixture::{FixtureOptions, FixtureSite};

fn main() {
    let mut args = std::env::args().skip(1);
    let pages = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let fanout = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let site = FixtureSite::start_with(FixtureOptions {
        generated: pages,
        fanout,
        threads: 16,
        ..Default::default()
    });
    println!("{}", site.url("/g/0.html"));
    loop {
        std::thread::park();
    }
}
