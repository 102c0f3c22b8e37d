//! The engine: validation, the cache and the BFS put together.
//!
//! This is what a deployment runs: the gateway calls [`validate`] on every
//! client request (cheap, no I/O), and whoever runs jobs (the embedded
//! backend's threads, later an AMQP master process) calls [`Engine::run`].
//! The engine checks the cache, extends a shallower cached crawl, runs the
//! master's BFS against whatever [`TaskQueue`] it was given, and stores
//! complete results.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cache::{cache_key, lookup, CachedCrawl, Fence, Lookup, MemoryCache, ResultCache};
use crate::guard::{self, GuardPolicy};
use crate::job::{CrawlOutcome, CrawlSpec, JobFailure};
use crate::master::{run_bfs, BfsJob};
use crate::queue::{TaskQueue, WorkerPool};
use crate::urlnorm::{self, UrlError};
use crate::worker::{Worker, WorkerConfig};

/// Server-side caps on what a client may ask for. The gateway needs only
/// these to validate requests, whatever backend runs the jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest crawl a client may request (default 5).
    pub max_depth: u32,
    /// Page budget cap per job; also the budget when the client names none.
    pub max_pages: u32,
    /// Fetch private, loopback and link-local addresses (`--allow-private`).
    pub allow_private: bool,
    /// Private addresses allowed anyway (exact matches).
    pub allow_addrs: Vec<IpAddr>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 5,
            max_pages: 1000,
            allow_private: false,
            allow_addrs: Vec::new(),
        }
    }
}

impl Limits {
    pub fn guard(&self) -> GuardPolicy {
        GuardPolicy {
            allow_private: self.allow_private,
            allow_addrs: self.allow_addrs.clone(),
        }
    }
}

/// Per-job options a client may set; each is capped by [`Limits`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// Page budget (capped at `Limits::max_pages`).
    pub max_pages: Option<u32>,
    /// Follow only links to the seed's host (default false).
    pub same_host: Option<bool>,
}

/// Checks a client's crawl request and turns it into a [`CrawlSpec`], with
/// stable error codes: `invalid_url`, `unsupported_scheme`,
/// `invalid_depth` (0 or negative), `too_deep`, `private_address` (IP
/// literals and `localhost` that the guard would refuse; names resolving to
/// private addresses are refused when fetched). Does no I/O.
pub fn validate(url: &str, depth: i64, limits: &Limits) -> Result<CrawlSpec, JobFailure> {
    validate_with(url, depth, &JobOptions::default(), limits)
}

/// [`validate`] with per-job options.
pub fn validate_with(
    url: &str,
    depth: i64,
    options: &JobOptions,
    limits: &Limits,
) -> Result<CrawlSpec, JobFailure> {
    let parsed = urlnorm::normalize(url).map_err(|e| match e {
        UrlError::Invalid => JobFailure::new(
            "invalid_url",
            format!("not an absolute http(s) URL: {url:?}"),
        ),
        UrlError::UnsupportedScheme => JobFailure::new(
            "unsupported_scheme",
            "only http and https URLs can be crawled",
        ),
    })?;
    if depth <= 0 {
        return Err(JobFailure::new(
            "invalid_depth",
            format!("depth must be at least 1, got {depth}"),
        ));
    }
    if depth > i64::from(limits.max_depth) {
        return Err(JobFailure::new(
            "too_deep",
            format!("depth {depth} exceeds the maximum of {}", limits.max_depth),
        ));
    }
    if let Some(host) = parsed.host() {
        guard::check_literal(&host, &limits.guard())
            .map_err(|e| JobFailure::new("private_address", e.to_string()))?;
    }
    let max_pages = options
        .max_pages
        .unwrap_or(limits.max_pages)
        .clamp(1, limits.max_pages.max(1));
    Ok(CrawlSpec {
        url: parsed.into(),
        depth: depth as u32,
        max_pages,
        same_host: options.same_host.unwrap_or(false),
    })
}

/// Everything the engine and the embedded backend can be told.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: Limits,
    /// Obey robots.txt (default on).
    pub respect_robots: bool,
    /// Wall time a job may take; then it ends with `partial: "deadline"`.
    pub job_timeout: Duration,
    /// Time limit per HTTP request (each redirect hop).
    pub fetch_timeout: Duration,
    pub max_redirects: u32,
    pub max_body_bytes: u64,
    pub user_agent: String,
    /// Worker threads fetching pages (embedded mode).
    pub workers: usize,
    /// Jobs crawled at once (embedded mode); more wait in a queue.
    pub masters: usize,
    /// Tasks one job keeps in flight.
    pub job_window: usize,
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    /// How long a finished job's result stays available to `resume`.
    pub result_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let w = WorkerConfig::default();
        EngineConfig {
            limits: Limits::default(),
            respect_robots: true,
            job_timeout: Duration::from_secs(120),
            fetch_timeout: w.fetch_timeout,
            max_redirects: w.max_redirects,
            max_body_bytes: w.max_body_bytes,
            user_agent: w.user_agent,
            workers: 16,
            masters: 8,
            job_window: 32,
            cache_ttl: Duration::from_secs(600),
            cache_max_entries: 10_000,
            result_ttl: Duration::from_secs(600),
        }
    }
}

impl EngineConfig {
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            guard: self.limits.guard(),
            respect_robots: self.respect_robots,
            fetch_timeout: self.fetch_timeout,
            max_redirects: self.max_redirects,
            max_body_bytes: self.max_body_bytes,
            user_agent: self.user_agent.clone(),
            ..WorkerConfig::default()
        }
    }
}

/// Runs crawl jobs: cache, extension, BFS.
pub struct Engine {
    config: EngineConfig,
    queue: Arc<dyn TaskQueue>,
    cache: Arc<dyn ResultCache>,
    /// One turn per cache key: jobs for the same seed run one after the
    /// other in this process, so the second of two identical requests is
    /// answered from (or extends) the first's result instead of fetching
    /// the same pages again. Popular URLs arrive in bursts.
    turns: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    _pool: Option<WorkerPool>,
}

impl Engine {
    /// The embedded engine: in-process worker threads and a memory cache.
    pub fn start(config: EngineConfig) -> Engine {
        let worker = Arc::new(Worker::new(config.worker_config()));
        let (queue, pool) = WorkerPool::start(config.workers, worker);
        let cache = Arc::new(MemoryCache::new(config.cache_ttl, config.cache_max_entries));
        Engine {
            config,
            queue: Arc::new(queue),
            cache,
            turns: Mutex::default(),
            _pool: Some(pool),
        }
    }

    /// An engine over other parts (remote workers, a shared cache).
    pub fn with_parts(
        config: EngineConfig,
        queue: Arc<dyn TaskQueue>,
        cache: Arc<dyn ResultCache>,
    ) -> Engine {
        Engine {
            config,
            queue,
            cache,
            turns: Mutex::default(),
            _pool: None,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn cache(&self) -> &Arc<dyn ResultCache> {
        &self.cache
    }

    /// The cached answer, if the cache alone can give it (a hit refreshes
    /// the TTL).
    pub fn cached(&self, spec: &CrawlSpec) -> Option<CrawlOutcome> {
        match lookup(self.cache.as_ref(), &cache_key(spec), spec.depth) {
            Lookup::Hit(levels) => Some(outcome(spec, levels, true, None)),
            _ => None,
        }
    }

    /// Runs a job to the end (blocking): answers from the cache, extends a
    /// shallower cached crawl, or crawls from the seed. `progress(level,
    /// pages)` is called per level finished by this run. Partial results
    /// (budget, deadline) are answered but not cached.
    pub fn run(
        &self,
        key: &str,
        spec: &CrawlSpec,
        progress: &mut dyn FnMut(u32, u32),
    ) -> Result<CrawlOutcome, JobFailure> {
        self.run_fenced(key, spec, None, progress)
    }

    /// [`run`](Self::run) under a lease: the cache write at the end is
    /// fenced by `fence` (a distributed master's epoch), so a runner that
    /// lost its job to a newer one cannot overwrite the cache either.
    pub fn run_fenced(
        &self,
        key: &str,
        spec: &CrawlSpec,
        fence: Option<&Fence>,
        progress: &mut dyn FnMut(u32, u32),
    ) -> Result<CrawlOutcome, JobFailure> {
        // Time spent waiting for the turn counts against the job's deadline.
        let started = Instant::now();
        let ckey = cache_key(spec);
        let turn = self.turns.lock().entry(ckey.clone()).or_default().clone();
        let result = {
            let _turn = turn.lock();
            self.run_in_turn(key, spec, &ckey, fence, started, progress)
        };
        let mut turns = self.turns.lock();
        // Clones are taken under this lock: two left means the map's and ours.
        if Arc::strong_count(&turn) == 2 {
            turns.remove(&ckey);
        }
        result
    }

    fn run_in_turn(
        &self,
        key: &str,
        spec: &CrawlSpec,
        ckey: &str,
        fence: Option<&Fence>,
        started: Instant,
        progress: &mut dyn FnMut(u32, u32),
    ) -> Result<CrawlOutcome, JobFailure> {
        let start = match lookup(self.cache.as_ref(), ckey, spec.depth) {
            Lookup::Hit(levels) => return Ok(outcome(spec, levels, true, None)),
            Lookup::Extend(entry) => Some(entry.levels),
            Lookup::Miss => None,
        };
        let extended = start.is_some();
        let mut channel = self
            .queue
            .open()
            .map_err(|e| JobFailure::new("backend_unavailable", e.to_string()))?;
        let result = run_bfs(
            BfsJob {
                key,
                spec,
                start,
                deadline: started + self.config.job_timeout,
                window: self.config.job_window,
            },
            channel.as_mut(),
            progress,
        )?;
        tracing::info!(
            job = key,
            url = %spec.url,
            depth = spec.depth,
            levels = result.levels.len(),
            fetched = result.fetched,
            extended,
            partial = ?result.partial,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "crawl finished"
        );
        if result.partial.is_none() {
            let entry = CachedCrawl {
                depth: spec.depth,
                levels: result.levels.clone(),
            };
            match fence {
                None => self.cache.put(ckey, entry),
                Some(f) => {
                    if !self.cache.put_fenced(ckey, entry, f) {
                        tracing::warn!(
                            job = key,
                            epoch = f.epoch,
                            "stale runner: cache write refused"
                        );
                    }
                }
            }
        }
        Ok(outcome(spec, result.levels, false, result.partial))
    }
}

fn outcome(
    spec: &CrawlSpec,
    levels: Vec<Vec<String>>,
    cached: bool,
    partial: Option<&str>,
) -> CrawlOutcome {
    CrawlOutcome {
        url: spec.url.clone(),
        depth: spec.depth,
        levels,
        cached,
        partial: partial.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<CrawlSpec, JobFailure>) -> String {
        r.map(|_| "ok".to_string()).unwrap_or_else(|e| e.code)
    }

    #[test]
    fn validation_codes() {
        let l = Limits::default();
        assert_eq!(code(validate("https://example.com/", 2, &l)), "ok");
        assert_eq!(code(validate("not a url", 2, &l)), "invalid_url");
        assert_eq!(code(validate("", 2, &l)), "invalid_url");
        assert_eq!(code(validate("example.com/path", 2, &l)), "invalid_url");
        assert_eq!(
            code(validate("ftp://example.com/", 2, &l)),
            "unsupported_scheme"
        );
        assert_eq!(
            code(validate("javascript:alert(1)", 2, &l)),
            "unsupported_scheme"
        );
        assert_eq!(
            code(validate("https://example.com/", 0, &l)),
            "invalid_depth"
        );
        assert_eq!(
            code(validate("https://example.com/", -3, &l)),
            "invalid_depth"
        );
        assert_eq!(code(validate("https://example.com/", 5, &l)), "ok");
        assert_eq!(code(validate("https://example.com/", 6, &l)), "too_deep");
        assert_eq!(
            code(validate("https://example.com/", i64::MAX, &l)),
            "too_deep"
        );
        assert_eq!(
            code(validate("http://127.0.0.1:8080/", 2, &l)),
            "private_address"
        );
        assert_eq!(
            code(validate("http://localhost/", 2, &l)),
            "private_address"
        );
        assert_eq!(code(validate("http://[::1]/", 2, &l)), "private_address");
        assert_eq!(
            code(validate("http://169.254.169.254/latest/meta-data", 2, &l)),
            "private_address"
        );
        let open = Limits {
            allow_private: true,
            ..Limits::default()
        };
        assert_eq!(code(validate("http://127.0.0.1:8080/", 2, &open)), "ok");
    }

    #[test]
    fn validation_normalises_and_caps() {
        let l = Limits {
            max_pages: 50,
            ..Limits::default()
        };
        let spec = validate("HTTPS://Example.com:443/a/../b#frag", 3, &l).unwrap();
        assert_eq!(
            spec,
            CrawlSpec {
                url: "https://example.com/b".into(),
                depth: 3,
                max_pages: 50,
                same_host: false
            }
        );
        let opts = JobOptions {
            max_pages: Some(10_000),
            same_host: Some(true),
        };
        let spec = validate_with("https://example.com/", 1, &opts, &l).unwrap();
        assert_eq!((spec.max_pages, spec.same_host), (50, true));
        let opts = JobOptions {
            max_pages: Some(0),
            same_host: None,
        };
        assert_eq!(
            validate_with("https://example.com/", 1, &opts, &l)
                .unwrap()
                .max_pages,
            1
        );
    }
}
