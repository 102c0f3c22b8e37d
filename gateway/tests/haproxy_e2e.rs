//! HAProxy in front of two real gateways, configured by
//! `haproxy/gen-config`: clients connect through it and are spread over
//! both; once one gateway is SIGTERM'd it receives no new client (the
//! refused connection is redispatched, then the `/readyz` check takes it out
//! of the pool), and its own clients are closed with 1012.

use cluster_tests::gateway_proc::{ping, try_connect, Gateway};
use cluster_tests::haproxy::Haproxy;
use cluster_tests::support::{wait_until, TempDir};
use std::time::Duration;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

const ACCEPTED: &str = "gateway_connections_accepted_total";

#[test]
fn clients_spread_through_haproxy_and_a_draining_gateway_gets_none() {
    let a = Gateway::start(
        GATEWAY,
        &[
            "--backend",
            "echo",
            "--node-id",
            "gw-a",
            "--drain-window",
            "3",
        ],
    );
    let b = Gateway::start(
        GATEWAY,
        &[
            "--backend",
            "echo",
            "--node-id",
            "gw-b",
            "--drain-window",
            "3",
        ],
    );
    let hp = Haproxy::start(&[(a.ws_port, a.admin_port), (b.ws_port, b.admin_port)]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = hp.server_states();
            s.get("gw-1").is_some_and(|v| v.starts_with("UP"))
                && s.get("gw-2").is_some_and(|v| v.starts_with("UP"))
        }),
        "both gateways UP in HAProxy: {:?}",
        hp.server_states()
    );

    // Clients connect through HAProxy, talk to a gateway, and are spread.
    let mut first = Vec::new();
    for i in 0..20 {
        let mut ws = try_connect(&hp.ws_url()).expect("connect through haproxy");
        ping(&mut ws, &format!("first-{i}")).expect("pong through haproxy");
        first.push(ws);
    }
    assert!(wait_until(Duration::from_secs(5), || {
        a.connections().unwrap_or(0) + b.connections().unwrap_or(0) == 20
    }));
    let on_a = a.connections().unwrap();
    let on_b = b.connections().unwrap();
    assert!(
        on_a >= 5 && on_b >= 5,
        "leastconn spreads: a={on_a} b={on_b}"
    );

    // Drain A; new clients, arriving at once, all end up on B.
    a.sigterm();
    // Drained means: it says so (its listener is closed by then).
    assert!(
        wait_until(Duration::from_secs(5), || a.status()["state"] == "draining"),
        "A reports draining"
    );
    let accepted_a = a.metric(ACCEPTED);
    let mut second = Vec::new();
    for i in 0..20 {
        let mut ws = try_connect(&hp.ws_url()).expect("connect during a drain");
        ping(&mut ws, &format!("second-{i}")).expect("pong during a drain");
        second.push(ws);
    }
    assert!(
        wait_until(Duration::from_secs(5), || b.connections()
            == Some(on_b + 20)),
        "all 20 new clients on B: b={:?}",
        b.connections()
    );
    if let Some(now) = a.try_metric(ACCEPTED) {
        assert_eq!(
            now, accepted_a,
            "the draining gateway accepted a new client"
        );
    }
    // HAProxy's /readyz check takes A out of the pool.
    assert!(
        wait_until(Duration::from_secs(5), || {
            hp.server_states()
                .get("gw-1")
                .is_some_and(|v| v.starts_with("DOWN"))
        }),
        "A marked DOWN: {:?}",
        hp.server_states()
    );

    // A's own clients are told to reconnect (1012), spread over its window;
    // B's are untouched.
    for ws in &mut first {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        }
    }
    let mut codes = Vec::new();
    let mut open: Vec<_> = first.into_iter().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while codes.len() < on_a as usize && std::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for mut ws in open {
            match ws.read() {
                Ok(tungstenite::Message::Close(f)) => codes.push(f.map(|f| u16::from(f.code))),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    still.push(ws)
                }
                Ok(_) => still.push(ws),
                Err(_) => codes.push(None),
            }
        }
        open = still;
    }
    assert_eq!(codes.len(), on_a as usize, "A's clients closed: {codes:?}");
    assert!(
        codes.iter().all(|c| *c == Some(1012)),
        "close codes {codes:?}"
    );
    assert_eq!(open.len(), on_b as usize);
    for (i, ws) in open.iter_mut().chain(second.iter_mut()).enumerate() {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        }
        ping(ws, &format!("after-{i}")).expect("B's clients still served");
    }
}

#[test]
fn generated_configs_pass_haproxy_check() {
    let gen = concat!(env!("CARGO_MANIFEST_DIR"), "/../haproxy/gen-config");
    let dir = TempDir::new("haproxy-check");
    for (i, args) in [
        vec!["1", "7001", "7101"],
        vec!["10", "7001", "7101"],
        vec!["--servers", "5555:5556,6555:6556"],
    ]
    .iter()
    .enumerate()
    {
        let out = std::process::Command::new(gen)
            .args(args)
            .output()
            .expect("gen-config");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for needle in [
            "timeout tunnel",
            "timeout client-fin",
            "balance leastconn",
            "option httpchk GET /readyz",
            "maxconn 9900",
        ] {
            assert!(text.contains(needle), "{needle} missing for {args:?}");
        }
        let cfg = dir.0.join(format!("{i}.cfg"));
        std::fs::write(&cfg, &out.stdout).unwrap();
        let check = std::process::Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&cfg)
            .output()
            .expect("haproxy installed (scripts/test installs it)");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // The checked-in default is what the generator makes for the cluster.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../haproxy/haproxy.cfg"
    ))
    .unwrap();
    let out = std::process::Command::new(gen)
        .args(["3", "7001", "7101"])
        .output()
        .unwrap();
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&shipped), body(&String::from_utf8_lossy(&out.stdout)));
    assert!(!std::process::Command::new(gen)
        .arg("x")
        .output()
        .unwrap()
        .status
        .success());
}
