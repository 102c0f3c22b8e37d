//! The worker role: fetch one page, return its links.
//!
//! Workers are stateless apart from caches (robots.txt rules, idle HTTP
//! connections), so any number of them can serve any number of masters,
//! in-process threads now and separate processes later. A worker never
//! fails a task: every outcome, including a refused or broken fetch, is a
//! [`FetchReply`] with a `reason`, and nothing read from the network can
//! make it panic.
//!
//! Redirects are followed here, one hop at a time, rather than by the HTTP
//! client, so that every hop is checked against robots.txt and resolved
//! through the SSRF guard ([`GuardedResolver`]) before anything connects.

use std::io::Read;
use std::time::Duration;

use ureq::unversioned::transport::DefaultConnector;
use ureq::Agent;
use url::Url;

use crate::extract::Extractor;
use crate::guard::{GuardPolicy, GuardedResolver, PrivateAddress};
use crate::queue::{FetchReply, FetchTask};
use crate::robots::{RobotsCache, Rules, Verdict, MAX_ROBOTS_BYTES};
use crate::urlnorm;

/// How a worker fetches.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub guard: GuardPolicy,
    /// Obey robots.txt (on by default).
    pub respect_robots: bool,
    /// Whole-request limit per hop: resolve, connect, headers and body.
    pub fetch_timeout: Duration,
    pub max_redirects: u32,
    /// Bytes of a page that are parsed; the rest is not read.
    pub max_body_bytes: u64,
    /// Sent as `User-Agent`; its first word (before `/`) is the name matched
    /// against robots.txt groups.
    pub user_agent: String,
    pub robots_ttl: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            guard: GuardPolicy::default(),
            respect_robots: true,
            fetch_timeout: Duration::from_secs(10),
            max_redirects: 5,
            max_body_bytes: 2 * 1024 * 1024,
            user_agent: concat!("gateway-crawler/", env!("CARGO_PKG_VERSION")).to_string(),
            robots_ttl: Duration::from_secs(3600),
        }
    }
}

/// One page fetcher, shared by all worker threads of a process.
pub struct Worker {
    agent: Agent,
    robots: RobotsCache,
    robots_agent: String,
    config: WorkerConfig,
}

/// A fetch that produced no usable page.
struct Failure {
    reason: String,
    status: Option<u16>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            status: None,
        }
    }
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Worker {
        let agent_config = Agent::config_builder()
            // An environment proxy would fetch on our behalf, past the guard.
            .proxy(None)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .http_status_as_error(false)
            .timeout_global(Some(config.fetch_timeout))
            .user_agent(config.user_agent.as_str())
            .accept("text/html,application/xhtml+xml;q=0.9,*/*;q=0.1")
            // Many workers crawl one site at once: keep their connections.
            .max_idle_connections(256)
            .max_idle_connections_per_host(64)
            .build();
        let agent = Agent::with_parts(
            agent_config,
            DefaultConnector::default(),
            GuardedResolver::new(config.guard.clone()),
        );
        let robots_agent = config
            .user_agent
            .split(['/', ' '])
            .next()
            .unwrap_or("*")
            .to_string();
        Worker {
            agent,
            robots: RobotsCache::new(config.robots_ttl, 10_000),
            robots_agent,
            config,
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Fetches the task's page and extracts its links.
    pub fn handle(&self, task: &FetchTask) -> FetchReply {
        let Ok(url) = Url::parse(&task.url) else {
            return FetchReply::failed(task, "invalid_url");
        };
        let reply = match self.fetch_links(url) {
            Ok((final_url, status, links)) => FetchReply {
                final_url: (final_url.as_str() != task.url).then(|| final_url.into()),
                status: Some(status),
                links,
                reason: None,
                ..FetchReply::failed(task, "")
            },
            Err(f) => FetchReply {
                status: f.status,
                ..FetchReply::failed(task, f.reason)
            },
        };
        tracing::debug!(job = %task.job, url = %task.url, reason = ?reply.reason, links = reply.links.len(), "fetched");
        reply
    }

    fn fetch_links(&self, url: Url) -> Result<(Url, u16, Vec<String>), Failure> {
        let (url, response) = self.get_following(url, self.config.respect_robots)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(Failure {
                reason: format!("http_{status}"),
                status: Some(status),
            });
        }
        let is_html = match response.body().mime_type() {
            // No Content-Type: browsers sniff; assume the common case.
            None => true,
            Some(m) => {
                let m = m.trim().to_ascii_lowercase();
                m == "text/html" || m == "application/xhtml+xml"
            }
        };
        if !is_html {
            return Err(Failure {
                reason: "not_html".into(),
                status: Some(status),
            });
        }
        let mut body = response
            .into_body()
            .into_reader()
            .take(self.config.max_body_bytes);
        let mut extractor = Extractor::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => extractor.write(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Failure {
                        reason: classify_io(&e),
                        status: Some(status),
                    })
                }
            }
        }
        Ok((url.clone(), status, extractor.finish(&url)))
    }

    /// GETs `url`, following redirects one hop at a time, each hop checked
    /// against robots.txt when `robots` is set; returns the final URL and
    /// the first non-redirect response.
    fn get_following(
        &self,
        mut url: Url,
        robots: bool,
    ) -> Result<(Url, ureq::http::Response<ureq::Body>), Failure> {
        for _hop in 0..=self.config.max_redirects {
            if robots {
                match self.robots_verdict(&url) {
                    Verdict::Allowed => {}
                    Verdict::Disallowed => return Err(Failure::new("robots")),
                    Verdict::Unavailable(reason) => return Err(Failure::new(reason)),
                }
            }
            let response = self
                .agent
                .get(url.as_str())
                .call()
                .map_err(|e| Failure::new(classify(&e)))?;
            let status = response.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Ok((url, response));
            }
            let next = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| urlnorm::resolve(&url, loc));
            match next {
                Some(next) => url = next,
                None => {
                    return Err(Failure {
                        reason: "bad_redirect".into(),
                        status: Some(status),
                    })
                }
            }
        }
        Err(Failure::new("too_many_redirects"))
    }

    fn robots_verdict(&self, url: &Url) -> Verdict {
        let rules = self
            .robots
            .rules(url, |robots_url| self.fetch_robots(robots_url.clone()));
        rules.verdict(url)
    }

    fn fetch_robots(&self, robots_url: Url) -> Rules {
        match self.get_following(robots_url, false) {
            Ok((_, response)) => {
                let status = response.status().as_u16();
                let mut body = Vec::new();
                let read = response
                    .into_body()
                    .into_reader()
                    .take(MAX_ROBOTS_BYTES)
                    .read_to_end(&mut body);
                match read {
                    Ok(_) => Rules::from_response(&self.robots_agent, status, &body),
                    Err(e) => Rules::Unavailable {
                        reason: classify_io(&e),
                    },
                }
            }
            // RFC 9309: after too many redirects, act as if there were no file.
            Err(f) if f.reason == "too_many_redirects" || f.reason == "bad_redirect" => {
                Rules::AllowAll
            }
            Err(f) => Rules::Unavailable { reason: f.reason },
        }
    }
}

/// Stable reason codes for transport failures.
fn classify(e: &ureq::Error) -> String {
    use ureq::Error as E;
    match e {
        E::Other(inner) if inner.downcast_ref::<PrivateAddress>().is_some() => {
            "private_address".into()
        }
        E::Timeout(_) => "timeout".into(),
        E::HostNotFound => "dns".into(),
        E::Io(io) => classify_io(io),
        E::Tls(_) | E::Rustls(_) | E::Pem(_) => "tls".into(),
        E::TooManyRedirects => "too_many_redirects".into(),
        E::LargeResponseHeader(..) => "too_large".into(),
        E::BadUri(_) => "invalid_url".into(),
        E::Protocol(_) => "protocol".into(),
        _ => "network".into(),
    }
}

fn classify_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    if let Some(inner) = e.get_ref() {
        if inner.downcast_ref::<PrivateAddress>().is_some() {
            return "private_address".into();
        }
        if let Some(ureq::Error::Timeout(_)) = inner.downcast_ref::<ureq::Error>() {
            return "timeout".into();
        }
    }
    match e.kind() {
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::ConnectionRefused => "connection_refused".into(),
        _ => "network".into(),
    }
}
