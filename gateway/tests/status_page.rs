//! The status page at the admin address, in a real browser (headless
//! Chromium, Debian's `chromium` package; installed by `scripts/test`):
//! it loads, runs its polling script, shows the live connection count and
//! state, and the count moves when clients connect.

use cluster_tests::gateway_proc::{try_connect, Gateway};
use cluster_tests::support::{wait_until, TempDir};
use std::process::Command;
use std::time::Duration;

fn chromium() -> String {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| panic!("no chromium: scripts/test installs it"))
        .to_string()
}

/// Loads `url` headless, lets its scripts run for a few (virtual) seconds,
/// and returns the DOM.
fn dump_dom(browser: &str, url: &str) -> String {
    let profile = TempDir::new("chromium-profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Text of the element with `id` (the first text node after its tag).
fn text_of<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].trim())
}

fn samples(dom: &str) -> u32 {
    text_of(dom, "samples")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn status_page_shows_live_connections_in_chromium() {
    let browser = chromium();
    let gw = Gateway::start(
        env!("CARGO_BIN_EXE_gateway"),
        &[
            "--backend",
            "echo",
            "--node-id",
            "gw-page",
            "--drain-window",
            "20",
        ],
    );
    let page = format!("{}/", gw.admin);

    let dom = dump_dom(&browser, &page);
    assert_eq!(text_of(&dom, "node"), Some("gw-page"), "{dom}");
    assert_eq!(text_of(&dom, "state"), Some("ready"));
    assert_eq!(text_of(&dom, "connections"), Some("0"));
    assert!(
        samples(&dom) >= 2,
        "the page keeps polling: {} samples",
        samples(&dom)
    );
    assert!(
        text_of(&dom, "memory").is_some_and(|m| m.ends_with("iB")),
        "memory shown"
    );

    let clients: Vec<_> = (0..3)
        .map(|_| try_connect(&gw.ws).expect("connect"))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || gw.connections() == Some(3)));
    let dom = dump_dom(&browser, &page);
    assert_eq!(text_of(&dom, "connections"), Some("3"), "the count moved");
    assert_eq!(text_of(&dom, "capacity").map(|c| !c.is_empty()), Some(true));

    // Draining shows as such: with clients still attached the gateway keeps
    // serving its admin page through its drain window.
    gw.sigterm();
    assert!(wait_until(Duration::from_secs(5), || gw.status()["state"]
        == "draining"));
    let dom = dump_dom(&browser, &page);
    assert_eq!(text_of(&dom, "state"), Some("draining"));
    drop(clients);
}
