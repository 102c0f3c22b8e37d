//! A web site with a known link graph, served over real HTTP on loopback.
//!
//! Crawl tests need a site whose BFS levels are known in advance and that
//! exercises every rule of the crawler: relative links, `<base href>`,
//! fragments, absolute links with odd spelling, redirects (chains, loops,
//! one to a private address), a non-HTML file, a slow page, a 404, a
//! robots.txt that disallows a path, and cycles. Each page declares, next
//! to its HTML, the site paths its links must resolve to; the expected BFS
//! ([`FixtureSite::expected_levels`]) is computed from those declarations,
//! never from the crawler's own URL code, so the two are checked against
//! each other.
//!
//! A generated part (`/g/<i>.html`, a `fanout`-ary tree with links back to
//! the root and the parent) gives larger graphs and the benchmark's site.
//! Requests are counted per path so tests can tell what was fetched.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// Site paths under this prefix are disallowed by the fixture's robots.txt.
pub const DISALLOWED_PREFIX: &str = "/private/";

/// How redirects are followed, as the crawler does by default.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone)]
enum Page {
    /// An HTML page and the site paths its links resolve to.
    Html {
        body: String,
        out: Vec<String>,
        slow: bool,
    },
    /// A redirect; `target` is the site path it leads to, if on this site.
    Redirect {
        status: u16,
        location: String,
        target: Option<String>,
    },
    /// A non-HTML document (whatever it contains, it has no links).
    Text {
        content_type: &'static str,
        body: String,
    },
    /// A non-2xx status with an HTML body (whose links must not be followed).
    Status { status: u16, body: String },
}

/// Options of a fixture site.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// How long `/slow.html` takes to answer.
    pub slow: Duration,
    /// Pages in the generated part (`/g/0.html` ...); 0 for none.
    pub generated: usize,
    /// Child links per generated page.
    pub fanout: usize,
    /// Runtime threads answering requests.
    pub threads: usize,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            slow: Duration::from_millis(200),
            generated: 0,
            fanout: 4,
            threads: 8,
        }
    }
}

struct State {
    pages: RwLock<HashMap<String, Page>>,
    hits: Mutex<HashMap<String, u32>>,
    slow: Duration,
}

/// A running fixture site; stops when dropped.
pub struct FixtureSite {
    addr: SocketAddr,
    base: String,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl FixtureSite {
    /// The hand-made site, no generated part.
    pub fn start() -> FixtureSite {
        Self::start_with(FixtureOptions::default())
    }

    pub fn start_with(options: FixtureOptions) -> FixtureSite {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fixture site");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("fixture address");
        let base = format!("http://{addr}");
        let mut pages = hand_made(&base);
        generated(&mut pages, options.generated, options.fanout);
        let state = Arc::new(State {
            pages: RwLock::new(pages),
            hits: Mutex::new(HashMap::new()),
            slow: options.slow,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads.max(1))
            .enable_all()
            .build()
            .expect("fixture runtime");
        let (stop, stopped) = watch::channel(false);
        let server_state = state.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(accept_loop(listener, server_state, stopped));
            // Dropping the runtime here cancels open connections and
            // pending slow answers.
        });
        FixtureSite {
            addr,
            base,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The absolute URL of a site path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Requests received for a path (with its query, as requested).
    pub fn hits(&self, path: &str) -> u32 {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all, robots.txt included.
    pub fn total_hits(&self) -> u32 {
        self.state.hits.lock().unwrap().values().sum()
    }

    /// Makes `path` redirect (302) to an arbitrary location, e.g. an address
    /// a test controls.
    pub fn add_redirect(&self, path: &str, location: &str) {
        let page = Page::Redirect {
            status: 302,
            location: location.to_string(),
            target: None,
        };
        self.state
            .pages
            .write()
            .unwrap()
            .insert(path.to_string(), page);
    }

    /// The BFS levels a correct crawl from `seed` (a site path) finds, as
    /// sets of absolute URLs: `levels[0]` = {seed}; a URL appears at the
    /// first level it is reached; pages disallowed by robots.txt (when
    /// `robots`), redirect loops, 404s and non-HTML documents are listed
    /// but contribute no links; a redirect contributes its target's links.
    pub fn expected_levels(&self, seed: &str, depth: usize, robots: bool) -> Vec<BTreeSet<String>> {
        let pages = self.state.pages.read().unwrap();
        let mut seen = BTreeSet::from([seed.to_string()]);
        let mut levels = vec![BTreeSet::from([seed.to_string()])];
        while levels.len() < depth {
            let mut next = BTreeSet::new();
            for path in levels.last().unwrap() {
                for link in out_links(&pages, path, robots, 0) {
                    if seen.insert(link.clone()) {
                        next.insert(link);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            levels.push(next);
        }
        levels
            .into_iter()
            .map(|l| l.into_iter().map(|p| self.url(&p)).collect())
            .collect()
    }

    /// The site paths `path`'s fetch yields links to (see
    /// [`FixtureSite::expected_levels`]).
    pub fn expected_links(&self, path: &str, robots: bool) -> Vec<String> {
        let pages = self.state.pages.read().unwrap();
        out_links(&pages, path, robots, 0)
            .into_iter()
            .map(|p| self.url(&p))
            .collect()
    }
}

impl Drop for FixtureSite {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn out_links(pages: &HashMap<String, Page>, path: &str, robots: bool, hops: usize) -> Vec<String> {
    if robots && path.starts_with(DISALLOWED_PREFIX) {
        return Vec::new();
    }
    match pages.get(path) {
        Some(Page::Html { out, .. }) => out.clone(),
        Some(Page::Redirect {
            target: Some(t), ..
        }) if hops < MAX_REDIRECTS => out_links(pages, t, robots, hops + 1),
        _ => Vec::new(),
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let (state, stopped) = (state.clone(), stopped.clone());
        tokio::spawn(async move {
            let service =
                service_fn(move |request| respond(state.clone(), stopped.clone(), request));
            // A client that went away is not the fixture's problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let page = state.pages.read().unwrap().get(&path).cloned();
    let html = "text/html; charset=utf-8";
    let (status, content_type, location, body) = match page {
        Some(Page::Html { body, slow, .. }) => {
            if slow {
                tokio::select! {
                    _ = tokio::time::sleep(state.slow) => {}
                    _ = stopped.changed() => {}
                }
            }
            (200, html, None, body)
        }
        Some(Page::Redirect {
            status, location, ..
        }) => (status, "text/plain", Some(location), "moved".into()),
        Some(Page::Text { content_type, body }) => (200, content_type, None, body),
        Some(Page::Status { status, body }) => (status, html, None, body),
        None => (
            404,
            html,
            None,
            r#"<a href="/never-from-404.html">x</a>"#.to_string(),
        ),
    };
    let mut response = Response::builder()
        .status(status)
        .header("Content-Type", content_type);
    if let Some(location) = location {
        response = response.header("Location", location);
    }
    let body = Full::new(Bytes::from(body));
    Ok(response
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from("bad fixture header")))))
}

fn html(links: &[&str]) -> String {
    let anchors: String = links
        .iter()
        .map(|h| format!("<a href=\"{h}\">link</a>\n"))
        .collect();
    format!("<!doctype html><html><head><title>t</title></head><body>\n{anchors}</body></html>")
}

fn page(body: String, out: &[&str]) -> Page {
    Page::Html {
        body,
        out: out.iter().map(|s| s.to_string()).collect(),
        slow: false,
    }
}

fn redirect(status: u16, location: &str, target: Option<&str>) -> Page {
    Page::Redirect {
        status,
        location: location.to_string(),
        target: target.map(str::to_string),
    }
}

/// The hand-made part. Every `out` list is written by hand from the HTML
/// next to it.
fn hand_made(base: &str) -> HashMap<String, Page> {
    let mut p = HashMap::new();
    let mut add = |path: &str, page: Page| {
        p.insert(path.to_string(), page);
    };
    let upper_base = base.replace("http://", "HTTP://");
    add(
        "/robots.txt",
        Page::Text {
            content_type: "text/plain",
            body: "User-agent: *\nDisallow: /private/\n".into(),
        },
    );
    add(
        "/",
        page(
            format!(
                r##"<!doctype html><html><head><title>home</title></head><body>
                <a href="a.html">relative</a>
                <a href="/b.html#section">fragment</a>
                <a href="{base}/c.html">absolute</a>
                <a href="./a.html">duplicate</a>
                <a href="#top">self</a>
                <a href="mailto:someone@example.com">mail</a>
                <a href="javascript:void(0)">js</a>
                <a href="ftp://example.com/file">ftp</a>
                <a href="http://[::1">broken</a>
                <a href="/redirect">redirect</a>
                <a href="/files/data.txt">text file</a>
                <a href="/missing.html">404</a>
                <map><area href="/private/secret.html"></map>
                <a href="/slow.html">slow</a>
                <a href="{upper_base}/Upper.html">odd spelling</a>
                <a href="/q?b=2&amp;a=1">query</a>
                <a href="  /spaces.html  ">spaces</a>
                <script>document.write('<a href="/from-script.html">no</a>')</script>
                <!-- <a href="/from-comment.html">no</a> -->
                </body></html>"##
            ),
            &[
                "/a.html",
                "/b.html",
                "/c.html",
                "/",
                "/redirect",
                "/files/data.txt",
                "/missing.html",
                "/private/secret.html",
                "/slow.html",
                "/Upper.html",
                "/q?b=2&a=1",
                "/spaces.html",
            ],
        ),
    );
    add(
        "/a.html",
        page(
            html(&["/", "sub/d.html", "../e.html", "a.html#x"]),
            &["/", "/sub/d.html", "/e.html", "/a.html"],
        ),
    );
    add(
        "/b.html",
        page(
            r#"<html><head><base href="/sub/"></head><body>
               <a href="d.html">d</a><a href="f.html">f</a><a href="/a.html">a</a>
               </body></html>"#
                .into(),
            &["/sub/d.html", "/sub/f.html", "/a.html"],
        ),
    );
    add(
        "/c.html",
        page(
            html(&["/r1", "/loop1", "c.html"]),
            &["/r1", "/loop1", "/c.html"],
        ),
    );
    // Links of a redirect target resolve against the target, not the link.
    add(
        "/redirect",
        redirect(301, "/sub/g.html", Some("/sub/g.html")),
    );
    add("/sub/g.html", page(html(&["h.html"]), &["/sub/h.html"]));
    add("/r1", redirect(302, "/r2", Some("/r2")));
    add(
        "/r2",
        redirect(307, &format!("{base}/sub/i.html"), Some("/sub/i.html")),
    );
    add("/sub/i.html", page(html(&["../j.html"]), &["/j.html"]));
    add("/loop1", redirect(302, "/loop2", Some("/loop2")));
    add("/loop2", redirect(302, "/loop1", Some("/loop1")));
    add(
        "/files/data.txt",
        Page::Text {
            content_type: "text/plain",
            body: r#"<a href="/never-from-text.html">not a link</a>"#.into(),
        },
    );
    add(
        "/private/secret.html",
        page(html(&["only-here.html"]), &["/private/only-here.html"]),
    );
    add("/private/only-here.html", page(html(&["/"]), &["/"]));
    add(
        "/slow.html",
        Page::Html {
            body: html(&["/after-slow.html"]),
            out: vec!["/after-slow.html".into()],
            slow: true,
        },
    );
    add(
        "/sub/d.html",
        page(html(&["../a.html", "e.html"]), &["/a.html", "/sub/e.html"]),
    );
    add("/sub/f.html", page(html(&["/"]), &["/"]));
    add(
        "/e.html",
        page(
            html(&["/sub/d.html", "/deep1.html"]),
            &["/sub/d.html", "/deep1.html"],
        ),
    );
    add(
        "/deep1.html",
        page(html(&["/deep2.html"]), &["/deep2.html"]),
    );
    add("/deep2.html", page(html(&["/"]), &["/"]));
    for leaf in [
        "/sub/h.html",
        "/sub/e.html",
        "/j.html",
        "/after-slow.html",
        "/Upper.html",
        "/q?b=2&a=1",
        "/spaces.html",
    ] {
        add(leaf, page(html(&[]), &[]));
    }
    // Another host name for the same server: for the same-host option.
    let other = base.replace("127.0.0.1", "localhost");
    add(
        "/other-host.html",
        Page::Html {
            body: html(&[&format!("{other}/a.html"), "/a.html"]),
            out: vec!["/a.html".into()],
            slow: false,
        },
    );
    add(
        "/server-error.html",
        Page::Status {
            status: 500,
            body: html(&["/never-from-500.html"]),
        },
    );
    // Only reachable from /guard.html: redirects the guard must refuse
    // before connecting.
    // (/to-trap is meant to be pointed by the test, with `add_redirect`, at
    // a loopback listener the test watches.)
    add(
        "/guard.html",
        page(html(&["/to-ten", "/to-trap"]), &["/to-ten", "/to-trap"]),
    );
    add("/to-ten", redirect(302, "http://10.0.0.1/", None));
    add("/to-trap", redirect(302, "http://127.0.0.2:9/", None));
    p
}

/// `/g/<i>.html` for i < n: children `fanout*i+1 ..= fanout*i+fanout`,
/// plus the root and the parent (cycles); relative links with fragments.
fn generated(pages: &mut HashMap<String, Page>, n: usize, fanout: usize) {
    for i in 0..n {
        let mut hrefs = Vec::new();
        let mut out = Vec::new();
        for c in (fanout * i + 1)..=(fanout * i + fanout) {
            if c < n {
                hrefs.push(format!("{c}.html#p{i}"));
                out.push(format!("/g/{c}.html"));
            }
        }
        hrefs.push("/g/0.html".to_string());
        out.push("/g/0.html".to_string());
        if i > 0 {
            let parent = (i - 1) / fanout.max(1);
            hrefs.push(format!("../g/{parent}.html"));
            out.push(format!("/g/{parent}.html"));
        }
        let refs: Vec<&str> = hrefs.iter().map(String::as_str).collect();
        pages.insert(
            format!("/g/{i}.html"),
            Page::Html {
                body: html(&refs),
                out,
                slow: false,
            },
        );
    }
}
