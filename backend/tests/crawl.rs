//! The engine against a real HTTP site on loopback: levels compared, set for
//! set and level for level, with the BFS computed from the fixture's
//! declared link graph.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use backend::engine::{validate_with, Engine, EngineConfig, JobOptions, Limits};
use backend::guard::GuardPolicy;
use backend::job::CrawlSpec;
use backend::queue::FetchTask;
use backend::worker::{Worker, WorkerConfig};
use cluster_tests::fixture::{FixtureOptions, FixtureSite};

fn config() -> EngineConfig {
    EngineConfig {
        limits: Limits {
            max_depth: 10,
            max_pages: 10_000,
            allow_private: true,
            allow_addrs: vec![],
        },
        workers: 4,
        fetch_timeout: Duration::from_secs(5),
        job_timeout: Duration::from_secs(30),
        ..EngineConfig::default()
    }
}

fn spec(url: &str, depth: i64, options: JobOptions) -> CrawlSpec {
    validate_with(url, depth, &options, &config().limits).unwrap()
}

fn sets(levels: &[Vec<String>]) -> Vec<BTreeSet<String>> {
    levels
        .iter()
        .map(|l| {
            let s: BTreeSet<String> = l.iter().cloned().collect();
            assert_eq!(s.len(), l.len(), "duplicates within a level: {l:?}");
            s
        })
        .collect()
}

fn run(engine: &Engine, spec: &CrawlSpec) -> backend::job::CrawlOutcome {
    engine.run("test", spec, &mut |_, _| {}).unwrap()
}

fn page_hits(site: &FixtureSite) -> u32 {
    site.total_hits() - site.hits("/robots.txt")
}

#[test]
fn levels_match_the_graph() {
    let site = FixtureSite::start();
    for depth in 1..=5usize {
        // A fresh engine per depth: no cache between them.
        let engine = Engine::start(config());
        let mut progress = Vec::new();
        let out = engine
            .run(
                "t",
                &spec(&site.url("/"), depth as i64, JobOptions::default()),
                &mut |l, p| progress.push((l, p)),
            )
            .unwrap();
        let expected = site.expected_levels("/", depth, true);
        assert_eq!(sets(&out.levels), expected, "depth {depth}");
        assert_eq!(out.levels.len(), expected.len());
        assert_eq!(out.partial, None);
        assert!(!out.cached);
        let want: Vec<(u32, u32)> = expected
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, l)| (i as u32, l.len() as u32))
            .collect();
        assert_eq!(
            progress, want,
            "one progress report per level after the seed"
        );
    }
    // The depth requested is the depth answered, while links last.
    assert_eq!(site.expected_levels("/", 3, true).len(), 3);
    // Nothing from scripts, comments, text files or error pages, ever.
    for path in [
        "/from-script.html",
        "/from-comment.html",
        "/never-from-text.html",
        "/never-from-404.html",
        "/never-from-500.html",
    ] {
        assert_eq!(site.hits(path), 0, "{path}");
    }
    // robots.txt is obeyed: the disallowed page is listed, never fetched.
    assert_eq!(site.hits("/private/secret.html"), 0);
}

#[test]
fn robots_can_be_switched_off() {
    let site = FixtureSite::start();
    let engine = Engine::start(EngineConfig {
        respect_robots: false,
        ..config()
    });
    let out = run(&engine, &spec(&site.url("/"), 3, JobOptions::default()));
    let expected = site.expected_levels("/", 3, false);
    assert_ne!(
        expected,
        site.expected_levels("/", 3, true),
        "the fixture must tell the two apart"
    );
    assert_eq!(sets(&out.levels), expected);
    assert!(out.levels[2].contains(&site.url("/private/only-here.html")));
    assert_eq!(site.hits("/robots.txt"), 0);
}

#[test]
fn generated_site_matches_at_every_depth() {
    let site = FixtureSite::start_with(FixtureOptions {
        generated: 400,
        fanout: 4,
        ..Default::default()
    });
    let engine = Engine::start(config());
    for depth in [1, 2, 3, 6] {
        let out = run(
            &engine,
            &spec(&site.url("/g/0.html"), depth, JobOptions::default()),
        );
        assert_eq!(
            sets(&out.levels),
            site.expected_levels("/g/0.html", depth as usize, true),
            "depth {depth}"
        );
    }
}

#[test]
fn same_host_option() {
    let site = FixtureSite::start();
    let engine = Engine::start(config());
    let seed = site.url("/other-host.html");
    let all = run(&engine, &spec(&seed, 2, JobOptions::default()));
    let other = site.url("/a.html").replace("127.0.0.1", "localhost");
    assert_eq!(
        sets(&all.levels)[1],
        BTreeSet::from([site.url("/a.html"), other])
    );
    let same = run(
        &engine,
        &spec(
            &seed,
            2,
            JobOptions {
                same_host: Some(true),
                ..Default::default()
            },
        ),
    );
    assert!(!same.cached, "same-host crawls are cached apart");
    assert_eq!(
        sets(&same.levels),
        site.expected_levels("/other-host.html", 2, true)
    );
}

#[test]
fn cache_hits_truncates_and_extends() {
    let site = FixtureSite::start();
    let engine = Engine::start(config());
    let seed = site.url("/");

    let first = run(&engine, &spec(&seed, 2, JobOptions::default()));
    assert!(!first.cached);
    let after_first = page_hits(&site);
    assert_eq!(site.hits("/"), 1);

    let again = run(&engine, &spec(&seed, 2, JobOptions::default()));
    assert!(again.cached);
    assert_eq!(again.levels, first.levels);
    assert_eq!(page_hits(&site), after_first, "a hit fetches nothing");

    let shallow = run(&engine, &spec(&seed, 1, JobOptions::default()));
    assert!(shallow.cached);
    assert_eq!(shallow.levels, vec![vec![seed.clone()]]);
    assert!(engine
        .cached(&spec(&seed, 2, JobOptions::default()))
        .is_some());
    assert!(engine
        .cached(&spec(&seed, 3, JobOptions::default()))
        .is_none());

    let deeper = run(&engine, &spec(&seed, 3, JobOptions::default()));
    assert!(!deeper.cached);
    assert_eq!(sets(&deeper.levels), site.expected_levels("/", 3, true));
    assert_eq!(
        deeper.levels[..2],
        first.levels[..],
        "extension keeps the cached levels"
    );
    assert_eq!(
        site.hits("/"),
        1,
        "the extension starts from the cached last level, not the seed"
    );

    // The deeper crawl now answers the shallower request too.
    let back = run(&engine, &spec(&seed, 2, JobOptions::default()));
    assert!(back.cached);
    assert_eq!(back.levels, first.levels);
    assert_eq!(
        engine
            .cached(&spec(&seed, 3, JobOptions::default()))
            .unwrap()
            .levels,
        deeper.levels
    );
}

#[test]
fn identical_concurrent_jobs_crawl_once() {
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_millis(300),
        ..Default::default()
    });
    let engine = Engine::start(config());
    let spec = spec(&site.url("/"), 3, JobOptions::default());
    let start = std::sync::Barrier::new(4);
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    run(&engine, &spec)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert_eq!(site.hits("/"), 1, "the seed was fetched once");
    assert_eq!(site.hits("/slow.html"), 1);
    assert_eq!(outcomes.iter().filter(|o| !o.cached).count(), 1);
    for o in &outcomes {
        assert_eq!(sets(&o.levels), site.expected_levels("/", 3, true));
    }
}

#[test]
fn page_budget_gives_a_partial_result() {
    let site = FixtureSite::start();
    let engine = Engine::start(config());
    let options = JobOptions {
        max_pages: Some(3),
        ..Default::default()
    };
    let out = run(&engine, &spec(&site.url("/"), 3, options.clone()));
    assert_eq!(out.partial.as_deref(), Some("page_budget"));
    let expected = site.expected_levels("/", 3, true);
    assert_eq!(sets(&out.levels[..2]), expected[..2]);
    assert!(sets(&out.levels)[2].is_subset(&expected[2]));
    assert!(!out.levels[2].is_empty());
    assert_eq!(page_hits(&site), 3, "the budget bounds the pages fetched");
    // Partial answers are not cached.
    assert!(engine.cached(&spec(&site.url("/"), 3, options)).is_none());
}

#[test]
fn deadline_gives_a_partial_result() {
    let site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(20),
        ..Default::default()
    });
    let engine = Engine::start(EngineConfig {
        job_timeout: Duration::from_millis(300),
        ..config()
    });
    let started = Instant::now();
    let out = run(
        &engine,
        &spec(&site.url("/slow.html"), 2, JobOptions::default()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the job deadline is enforced"
    );
    assert_eq!(out.partial.as_deref(), Some("deadline"));
    assert_eq!(out.levels, vec![vec![site.url("/slow.html")]]);
}

fn worker(config: WorkerConfig) -> Worker {
    Worker::new(config)
}

fn task(url: String) -> FetchTask {
    FetchTask {
        job: "t".into(),
        seq: 7,
        url,
        deadline_ms: 0,
    }
}

fn open_config() -> WorkerConfig {
    WorkerConfig {
        guard: GuardPolicy {
            allow_private: true,
            allow_addrs: vec![],
        },
        ..Default::default()
    }
}

#[test]
fn worker_reports_what_happened() {
    let site = FixtureSite::start();
    let w = worker(open_config());
    let fetch = |path: &str| w.handle(&task(site.url(path)));

    let home = fetch("/");
    assert_eq!(home.reason, None);
    assert_eq!(home.seq, 7);
    assert_eq!(home.status, Some(200));
    let links: BTreeSet<String> = home.links.iter().cloned().collect();
    assert_eq!(links.len(), home.links.len(), "links are deduplicated");
    assert_eq!(links, site.expected_links("/", true).into_iter().collect());

    let cases = [
        ("/files/data.txt", "not_html"),
        ("/missing.html", "http_404"),
        ("/server-error.html", "http_500"),
        ("/loop1", "too_many_redirects"),
        ("/private/secret.html", "robots"),
    ];
    for (path, reason) in cases {
        let r = fetch(path);
        assert_eq!(r.reason.as_deref(), Some(reason), "{path}");
        assert!(r.links.is_empty(), "{path}");
    }

    let moved = fetch("/r1");
    assert_eq!(
        moved.final_url.as_deref(),
        Some(site.url("/sub/i.html").as_str())
    );
    assert_eq!(
        moved.links,
        vec![site.url("/j.html")],
        "links resolve against the final URL"
    );

    let slow_site = FixtureSite::start_with(FixtureOptions {
        slow: Duration::from_secs(20),
        ..Default::default()
    });
    let impatient = worker(WorkerConfig {
        fetch_timeout: Duration::from_millis(200),
        ..open_config()
    });
    let r = impatient.handle(&task(slow_site.url("/slow.html")));
    assert_eq!(r.reason.as_deref(), Some("timeout"));

    // A closed port.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = w.handle(&task(format!("http://{closed}/")));
    assert!(
        matches!(
            r.reason.as_deref(),
            Some("connection_refused") | Some("network")
        ),
        "{r:?}"
    );
}

#[test]
fn body_size_cap_keeps_the_start_of_a_page() {
    let site = FixtureSite::start();
    // "/" lists /a.html first; a cap of a few hundred bytes keeps only the
    // first links and must not fail the fetch.
    let w = worker(WorkerConfig {
        max_body_bytes: 200,
        ..open_config()
    });
    let r = w.handle(&task(site.url("/")));
    assert_eq!(r.reason, None);
    assert!(r.links.contains(&site.url("/a.html")));
    assert!(!r.links.contains(&site.url("/spaces.html")));
}

#[test]
fn guard_refuses_private_targets_before_connecting() {
    let site = FixtureSite::start();
    // A listener the crawler must never reach: loopback, so that even a
    // broken guard connects nowhere outside this machine.
    let trap = TcpListener::bind("127.0.0.2:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    site.add_redirect(
        "/to-trap",
        &format!("http://{}/", trap.local_addr().unwrap()),
    );

    // Only the fixture's own address is allowed.
    let strict = WorkerConfig {
        guard: GuardPolicy {
            allow_private: false,
            allow_addrs: vec!["127.0.0.1".parse().unwrap()],
        },
        fetch_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let w = worker(strict.clone());
    assert_eq!(
        w.handle(&task(site.url("/guard.html"))).reason,
        None,
        "allowed address"
    );
    for path in ["/to-trap", "/to-ten"] {
        let r = w.handle(&task(site.url(path)));
        assert_eq!(r.reason.as_deref(), Some("private_address"), "{path}");
    }
    let r = w.handle(&task(format!("http://127.0.0.3:{}/", site.addr().port())));
    assert_eq!(r.reason.as_deref(), Some("private_address"), "literal");
    assert_eq!(
        trap.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the refused redirect never connected"
    );

    // Control: with the trap's address allowed, the same redirect connects.
    let mut lax = strict;
    lax.guard.allow_addrs.push("127.0.0.2".parse().unwrap());
    let r = worker(lax).handle(&task(site.url("/to-trap")));
    assert_eq!(
        r.reason.as_deref(),
        Some("timeout"),
        "the trap accepts but never answers"
    );
    assert!(
        trap.accept().is_ok(),
        "the trap does see a connection when allowed"
    );
}

#[test]
fn engine_refuses_a_private_seed() {
    let site = FixtureSite::start();
    let engine = Engine::start(EngineConfig {
        limits: Limits::default(),
        ..config()
    });
    // A name that resolves to loopback passes validation's literal check
    // only when spelled as a name; the fetch refuses it.
    let seed = site.url("/").replace("127.0.0.1", "localhost");
    let spec = CrawlSpec {
        url: seed,
        depth: 2,
        max_pages: 10,
        same_host: false,
    };
    let err = engine.run("t", &spec, &mut |_, _| {}).unwrap_err();
    assert_eq!(err.code, "private_address");
    assert_eq!(site.total_hits(), 0);
}
