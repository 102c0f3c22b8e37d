//! The result cache: a crawl answered once is answered again for free.
//!
//! Semantics (DESIGN.md, "Cache"), kept here once for every store:
//! - key: the normalised seed URL (plus the options that change the
//!   answer, see [`cache_key`]);
//! - a hit needs cached depth >= requested depth and answers with the first
//!   `depth` levels; a crawl that ran out of links (fewer levels than its
//!   depth) is complete at any depth, so it answers deeper requests too;
//! - a hit refreshes the TTL;
//! - a shallower cached crawl is extended: the master resumes the BFS from
//!   its last level instead of starting over;
//! - a write never replaces a deeper entry with a shallower one.
//!
//! Stores implement the small [`ResultCache`] trait ([`MemoryCache`] here;
//! a Redis one later) and get the semantics from [`lookup`] and the
//! no-downgrade rule in their `put`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::job::CrawlSpec;

/// What is stored per seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedCrawl {
    /// The depth that was asked for when this was crawled.
    pub depth: u32,
    pub levels: Vec<Vec<String>>,
}

impl CachedCrawl {
    /// The crawl ran out of links before its depth: deeper levels are empty.
    pub fn is_exhausted(&self) -> bool {
        self.levels.len() < self.depth as usize
    }

    /// Whether this entry answers a request for `depth` levels.
    pub fn covers(&self, depth: u32) -> bool {
        self.depth >= depth || self.is_exhausted()
    }

    /// Whether storing `self` over `old` would lose nothing.
    pub fn supersedes(&self, old: &CachedCrawl) -> bool {
        self.depth >= old.depth || (self.is_exhausted() && !old.is_exhausted())
    }
}

/// The lease a cache write is made under: the job (its lease and epoch
/// keys) and the fencing epoch the runner was given. A write under an epoch
/// older than the job's newest is a stale runner's and is refused
/// (DESIGN.md, "Leases": everything a master writes is tagged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The job id the lease is taken on (the resume token).
    pub job: String,
    /// The epoch handed out with the lease.
    pub epoch: u64,
}

/// A store of crawl results with a TTL.
pub trait ResultCache: Send + Sync {
    /// The entry for `key`, refreshing its TTL.
    fn get(&self, key: &str) -> Option<CachedCrawl>;
    /// Stores `entry` unless a deeper one is already there (which then only
    /// has its TTL refreshed).
    fn put(&self, key: &str, entry: CachedCrawl);
    /// [`put`](Self::put) unless `fence` is stale; false when refused. A
    /// cache without leases (the embedded one) has nothing to fence against
    /// and just stores.
    fn put_fenced(&self, key: &str, entry: CachedCrawl, fence: &Fence) -> bool {
        let _ = fence;
        self.put(key, entry);
        true
    }
}

/// The cache key of a job: options that change the answer are part of it.
/// The page budget is not, because only complete crawls are stored.
pub fn cache_key(spec: &CrawlSpec) -> String {
    let scope = if spec.same_host { "host" } else { "all" };
    format!("crawl:{scope}:{}", spec.url)
}

/// The answer the cache gives for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Levels truncated to the requested depth.
    Hit(Vec<Vec<String>>),
    /// A shallower crawl to extend.
    Extend(CachedCrawl),
    Miss,
}

pub fn lookup(cache: &dyn ResultCache, key: &str, depth: u32) -> Lookup {
    match cache.get(key) {
        Some(entry) if entry.covers(depth) => {
            let mut levels = entry.levels;
            levels.truncate(depth as usize);
            Lookup::Hit(levels)
        }
        Some(entry) if !entry.levels.is_empty() => Lookup::Extend(entry),
        _ => Lookup::Miss,
    }
}

/// The in-process store of the embedded mode.
pub struct MemoryCache {
    ttl: Duration,
    max_entries: usize,
    map: Mutex<HashMap<String, (CachedCrawl, Instant)>>,
}

impl MemoryCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        MemoryCache {
            ttl,
            max_entries: max_entries.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// [`ResultCache::get`] at a given time (tests drive the clock).
    pub fn get_at(&self, key: &str, now: Instant) -> Option<CachedCrawl> {
        let mut map = self.map.lock();
        match map.get_mut(key) {
            Some((entry, expires)) if *expires > now => {
                *expires = now + self.ttl;
                Some(entry.clone())
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// [`ResultCache::put`] at a given time.
    pub fn put_at(&self, key: &str, entry: CachedCrawl, now: Instant) {
        let mut map = self.map.lock();
        if let Some((old, expires)) = map.get_mut(key) {
            if *expires > now && !entry.supersedes(old) {
                *expires = now + self.ttl;
                return;
            }
        }
        if map.len() >= self.max_entries && !map.contains_key(key) {
            map.retain(|_, (_, expires)| *expires > now);
            if map.len() >= self.max_entries {
                // Still full of live entries: drop the one closest to expiry.
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key.to_string(), (entry, now + self.ttl));
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResultCache for MemoryCache {
    fn get(&self, key: &str) -> Option<CachedCrawl> {
        self.get_at(key, Instant::now())
    }

    fn put(&self, key: &str, entry: CachedCrawl) {
        self.put_at(key, entry, Instant::now())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cached crawl from string literals (also used by the Redis cache's
    /// tests).
    pub(crate) fn crawl(depth: u32, levels: &[&[&str]]) -> CachedCrawl {
        CachedCrawl {
            depth,
            levels: levels
                .iter()
                .map(|l| l.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    fn three() -> CachedCrawl {
        crawl(3, &[&["s"], &["a", "b"], &["c"]])
    }

    #[test]
    fn miss_then_hit_with_truncation() {
        let c = MemoryCache::new(Duration::from_secs(60), 10);
        assert_eq!(lookup(&c, "k", 2), Lookup::Miss);
        c.put("k", three());
        assert_eq!(lookup(&c, "k", 3), Lookup::Hit(three().levels));
        assert_eq!(lookup(&c, "k", 1), Lookup::Hit(vec![vec!["s".to_string()]]));
        assert_eq!(
            lookup(&c, "k", 2),
            Lookup::Hit(three().levels[..2].to_vec())
        );
        assert_eq!(lookup(&c, "other", 1), Lookup::Miss);
    }

    #[test]
    fn deeper_request_extends() {
        let c = MemoryCache::new(Duration::from_secs(60), 10);
        c.put("k", three());
        assert_eq!(lookup(&c, "k", 4), Lookup::Extend(three()));
    }

    #[test]
    fn exhausted_crawl_answers_any_depth() {
        let c = MemoryCache::new(Duration::from_secs(60), 10);
        let small = crawl(3, &[&["s"], &["a"]]);
        c.put("k", small.clone());
        assert_eq!(lookup(&c, "k", 5), Lookup::Hit(small.levels.clone()));
        assert_eq!(lookup(&c, "k", 1), Lookup::Hit(small.levels[..1].to_vec()));
    }

    #[test]
    fn never_downgraded() {
        let c = MemoryCache::new(Duration::from_secs(60), 10);
        c.put("k", three());
        c.put("k", crawl(2, &[&["s"], &["x"]]));
        assert_eq!(c.get("k"), Some(three()));
        // Same or deeper depth replaces (fresher answer).
        let four = crawl(4, &[&["s"], &["a", "b"], &["c"], &["d"]]);
        c.put("k", four.clone());
        assert_eq!(c.get("k"), Some(four.clone()));
        // An exhausted crawl is complete at every depth: it may replace a
        // deeper, non-exhausted one...
        let done = crawl(2, &[&["s"]]);
        c.put("k", done.clone());
        assert_eq!(c.get("k"), Some(done.clone()));
        // ...but a non-exhausted shallower one never replaces it.
        c.put("k", crawl(1, &[&["s"]]));
        assert_eq!(c.get("k"), Some(done));
    }

    #[test]
    fn ttl_expires_and_hits_refresh_it() {
        let ttl = Duration::from_secs(10);
        let c = MemoryCache::new(ttl, 10);
        let t0 = Instant::now();
        c.put_at("k", three(), t0);
        // A hit at 8s moves expiry to 18s...
        assert!(c.get_at("k", t0 + Duration::from_secs(8)).is_some());
        assert!(c.get_at("k", t0 + Duration::from_secs(17)).is_some());
        // ...without a hit it expires 10s after the last one.
        assert!(c.get_at("k", t0 + Duration::from_secs(28)).is_none());
        assert!(c.is_empty());
        // An expired deeper entry does not block a shallower write.
        c.put_at("k", three(), t0);
        c.put_at("k", crawl(1, &[&["s"]]), t0 + Duration::from_secs(11));
        assert_eq!(
            c.get_at("k", t0 + Duration::from_secs(12)).map(|e| e.depth),
            Some(1)
        );
    }

    #[test]
    fn bounded() {
        let c = MemoryCache::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        c.put_at("a", three(), t0);
        c.put_at("b", three(), t0 + Duration::from_secs(1));
        c.put_at("c", three(), t0 + Duration::from_secs(2));
        assert_eq!(c.len(), 2);
        assert!(
            c.get_at("a", t0 + Duration::from_secs(3)).is_none(),
            "oldest evicted"
        );
    }

    #[test]
    fn key_includes_scope() {
        let spec = |same_host| CrawlSpec {
            url: "http://e.com/".into(),
            depth: 2,
            max_pages: 10,
            same_host,
        };
        assert_ne!(cache_key(&spec(true)), cache_key(&spec(false)));
        let mut deeper = spec(true);
        deeper.depth = 4;
        deeper.max_pages = 99;
        assert_eq!(cache_key(&spec(true)), cache_key(&deeper));
    }
}
