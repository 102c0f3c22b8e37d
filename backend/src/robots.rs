//! robots.txt: asked once per origin, remembered for a while.
//!
//! A crawler that ignores robots.txt gets its operator blocked (or worse),
//! so the worker obeys it by default. Rules are parsed by `texting_robots`
//! (Google's matching rules: longest match wins, `Allow` wins ties) and
//! cached per origin (scheme, host, port), as RFC 9309 scopes them. Errors
//! follow the RFC too: a missing file (4xx) allows everything, an
//! unreachable one (5xx, network failure) disallows everything for a short
//! while ([`UNAVAILABLE_TTL`]), so a struggling site is not hammered page
//! after page, yet a passing failure does not hide a site for an hour.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use texting_robots::Robot;
use url::Url;

/// Google's limit; content past it is ignored.
pub const MAX_ROBOTS_BYTES: u64 = 500 * 1024;

/// How long an unreachable robots.txt keeps its origin closed.
pub const UNAVAILABLE_TTL: Duration = Duration::from_secs(60);

/// The rules for one origin.
pub enum Rules {
    AllowAll,
    /// robots.txt could not be had; `reason` says why (the worker reports it
    /// for every page of the origin, e.g. `private_address`, `timeout`).
    Unavailable {
        reason: String,
    },
    Parsed(Box<Robot>),
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rules::AllowAll => write!(f, "AllowAll"),
            Rules::Unavailable { reason } => write!(f, "Unavailable({reason})"),
            Rules::Parsed(_) => write!(f, "Parsed"),
        }
    }
}

/// What robots.txt says about one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Disallowed,
    /// No robots.txt could be fetched: the page is not fetched either.
    Unavailable(String),
}

impl Rules {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Rules::Unavailable { .. })
    }

    /// Builds the rules from a robots.txt response (`status` 0 is never
    /// passed: fetch errors become [`Rules::Unavailable`] at the caller).
    pub fn from_response(agent: &str, status: u16, body: &[u8]) -> Rules {
        match status {
            200..=299 => match Robot::new(agent, body) {
                Ok(robot) => Rules::Parsed(Box::new(robot)),
                // Unparseable rules say nothing: treat as absent.
                Err(_) => Rules::AllowAll,
            },
            400..=499 => Rules::AllowAll,
            _ => Rules::Unavailable {
                reason: format!("robots_http_{status}"),
            },
        }
    }

    pub fn verdict(&self, url: &Url) -> Verdict {
        match self {
            Rules::AllowAll => Verdict::Allowed,
            Rules::Unavailable { reason } => Verdict::Unavailable(reason.clone()),
            Rules::Parsed(robot) => {
                if robot.allowed(url.as_str()) {
                    Verdict::Allowed
                } else {
                    Verdict::Disallowed
                }
            }
        }
    }
}

/// The robots.txt location for a URL's origin.
pub fn robots_url(url: &Url) -> Url {
    let mut r = url.clone();
    r.set_path("/robots.txt");
    r.set_query(None);
    r.set_fragment(None);
    r
}

struct Entry {
    rules: OnceLock<Arc<Rules>>,
    born: Instant,
}

/// Rules per origin, shared by all worker threads of a process.
pub struct RobotsCache {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    ttl: Duration,
    unavailable_ttl: Duration,
    max_entries: usize,
}

impl Entry {
    /// Fresh while its rules are being fetched, then for the TTL that fits
    /// what was fetched.
    fn fresh(&self, now: Instant, ttl: Duration, unavailable_ttl: Duration) -> bool {
        let ttl = match self.rules.get() {
            Some(r) if r.is_unavailable() => unavailable_ttl.min(ttl),
            _ => ttl,
        };
        now.duration_since(self.born) < ttl
    }
}

impl RobotsCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self::with_unavailable_ttl(ttl, UNAVAILABLE_TTL, max_entries)
    }

    pub fn with_unavailable_ttl(
        ttl: Duration,
        unavailable_ttl: Duration,
        max_entries: usize,
    ) -> Self {
        RobotsCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            unavailable_ttl,
            max_entries: max_entries.max(1),
        }
    }

    /// The rules for `url`'s origin; `fetch` runs at most once per origin
    /// and period even when many threads ask at the same moment (the others
    /// wait for its answer instead of fetching robots.txt again).
    pub fn rules(&self, url: &Url, fetch: impl FnOnce(&Url) -> Rules) -> Arc<Rules> {
        let origin = url.origin().ascii_serialization();
        let now = Instant::now();
        let entry = {
            let mut map = self.entries.lock();
            let fresh = map
                .get(&origin)
                .filter(|e| e.fresh(now, self.ttl, self.unavailable_ttl))
                .cloned();
            match fresh {
                Some(e) => e,
                None => {
                    if map.len() >= self.max_entries {
                        map.retain(|_, e| e.fresh(now, self.ttl, self.unavailable_ttl));
                        if map.len() >= self.max_entries {
                            map.clear();
                        }
                    }
                    let e = Arc::new(Entry {
                        rules: OnceLock::new(),
                        born: now,
                    });
                    map.insert(origin, e.clone());
                    e
                }
            }
        };
        entry
            .rules
            .get_or_init(|| Arc::new(fetch(&robots_url(url))))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn rules_follow_robots_txt() {
        let txt = b"User-agent: *\nDisallow: /private/\nAllow: /private/open.html\n\n\
                    User-agent: othercrawler\nDisallow: /\n";
        let rules = Rules::from_response("gateway-crawler", 200, txt);
        let v = |s: &str| rules.verdict(&url(s));
        assert_eq!(v("http://h/"), Verdict::Allowed);
        assert_eq!(v("http://h/public/x.html"), Verdict::Allowed);
        assert_eq!(v("http://h/private/x.html"), Verdict::Disallowed);
        assert_eq!(v("http://h/private/open.html"), Verdict::Allowed);
        assert_eq!(v("http://h/private"), Verdict::Allowed);

        let other = Rules::from_response("othercrawler", 200, txt);
        assert_eq!(other.verdict(&url("http://h/")), Verdict::Disallowed);
    }

    #[test]
    fn agent_specific_group_wins_and_wildcards_match() {
        let txt = b"User-agent: *\nDisallow: /\n\nUser-agent: gateway-crawler\nDisallow: /*.pdf$\n";
        let rules = Rules::from_response("gateway-crawler", 200, txt);
        assert_eq!(rules.verdict(&url("http://h/a.html")), Verdict::Allowed);
        assert_eq!(rules.verdict(&url("http://h/doc.pdf")), Verdict::Disallowed);
        assert_eq!(
            rules.verdict(&url("http://h/doc.pdf?x=1")),
            Verdict::Allowed
        );
    }

    #[test]
    fn status_codes_per_rfc_9309() {
        assert_eq!(
            Rules::from_response("a", 404, b"").verdict(&url("http://h/x")),
            Verdict::Allowed
        );
        assert_eq!(
            Rules::from_response("a", 503, b"").verdict(&url("http://h/x")),
            Verdict::Unavailable("robots_http_503".into())
        );
        // Garbage is not a rule.
        let junk = Rules::from_response("a", 200, &[0xff, 0xfe, 0x00, b'\n', b':']);
        assert_eq!(junk.verdict(&url("http://h/x")), Verdict::Allowed);
    }

    #[test]
    fn robots_location() {
        assert_eq!(
            robots_url(&url("https://h:8443/a/b?c=d#e")).as_str(),
            "https://h:8443/robots.txt"
        );
    }

    #[test]
    fn cache_fetches_once_per_origin_and_expires() {
        let cache = RobotsCache::new(Duration::from_secs(3600), 100);
        let calls = AtomicUsize::new(0);
        let fetch = |u: &Url| {
            calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(u.path(), "/robots.txt");
            Rules::from_response("a", 200, b"User-agent: *\nDisallow: /x\n")
        };
        let r1 = cache.rules(&url("http://h/x/1"), fetch);
        let r2 = cache.rules(&url("http://h/y"), fetch);
        let _ = cache.rules(&url("http://h:81/y"), fetch);
        let _ = cache.rules(&url("https://h/y"), fetch);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one fetch per origin");
        assert_eq!(r1.verdict(&url("http://h/x/1")), Verdict::Disallowed);
        assert_eq!(r2.verdict(&url("http://h/y")), Verdict::Allowed);

        let expired = RobotsCache::new(Duration::ZERO, 100);
        let _ = expired.rules(&url("http://h/"), fetch);
        let _ = expired.rules(&url("http://h/"), fetch);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "expired entries are fetched again"
        );
    }

    #[test]
    fn unreachable_robots_are_asked_again_sooner() {
        let cache =
            RobotsCache::with_unavailable_ttl(Duration::from_secs(3600), Duration::ZERO, 100);
        let calls = AtomicUsize::new(0);
        let down = |_: &Url| {
            calls.fetch_add(1, Ordering::SeqCst);
            Rules::Unavailable {
                reason: "timeout".into(),
            }
        };
        let r = cache.rules(&url("http://down/"), down);
        assert_eq!(
            r.verdict(&url("http://down/")),
            Verdict::Unavailable("timeout".into())
        );
        let _ = cache.rules(&url("http://down/"), down);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "failures are not kept for the full TTL"
        );
        let up = |_: &Url| {
            calls.fetch_add(1, Ordering::SeqCst);
            Rules::AllowAll
        };
        let _ = cache.rules(&url("http://up/"), up);
        let _ = cache.rules(&url("http://up/"), up);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "answers are");
    }

    #[test]
    fn concurrent_askers_share_one_fetch() {
        let cache = Arc::new(RobotsCache::new(Duration::from_secs(60), 10));
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.rules(&url("http://h/"), |_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Rules::AllowAll
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
