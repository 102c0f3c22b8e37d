//! Redis in the distributed mode: the shared result cache, the result store
//! that `resume` reads on any gateway, leases with fencing epochs, and job
//! attempt counters.
//!
//! Redis is an optimisation and a coordination aid, not a dependency of
//! correctness for "the job runs": every call goes through [`RedisLink`],
//! which answers `None` while Redis is unreachable (and reconnects with
//! capped, jittered backoff), so jobs still run without a cache or leases;
//! the broker's at-least-once delivery is what keeps accepted jobs alive.
//!
//! All calls are synchronous and short (timeouts of a few hundred ms); they
//! run on the backend's own threads, never on the gateway's reactor or
//! reader threads.
//!
//! Leases (DESIGN.md, "Leases instead of a lock server"): a runner takes
//! `lease:<job>` with `SET NX PX` and, in the same script, a fencing epoch
//! from `INCR epoch:<job>`; it renews the lease while it runs. Every result
//! write is a fenced commit: refused when a newer epoch exists, so a stale
//! runner (paused, partitioned, lease lost) cannot overwrite the answer of
//! the runner that took over. Cache writes made under a lease are fenced the
//! same way ([`ResultCache::put_fenced`]).

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Script;

use crate::amqp::StoredResult;
use crate::backoff::Backoff;
use crate::cache::{CachedCrawl, Fence, ResultCache};

/// One lazily (re)connected Redis connection.
pub struct RedisLink {
    client: Option<redis::Client>,
    conn: Option<redis::Connection>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    timeout: Duration,
}

impl RedisLink {
    pub fn new(url: &str) -> RedisLink {
        let client = match redis::Client::open(url) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, url, "bad Redis URL: running without Redis");
                None
            }
        };
        RedisLink {
            client,
            conn: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            retry_at: None,
            timeout: Duration::from_millis(500),
        }
    }

    fn connection(&mut self) -> Option<&mut redis::Connection> {
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            let client = self.client.as_ref()?;
            match client.get_connection_with_timeout(self.timeout) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(self.timeout));
                    let _ = c.set_write_timeout(Some(self.timeout));
                    if self.retry_at.is_some() {
                        tracing::info!("Redis is back");
                    }
                    self.backoff.reset();
                    self.retry_at = None;
                    self.conn = Some(c);
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Redis unreachable");
                    self.retry_at = Some(Instant::now() + delay);
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    /// Runs `f` on the connection; `None` if Redis is unreachable or the
    /// call failed (the connection is then dropped and retried later).
    pub fn run<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let conn = self.connection()?;
        match f(conn) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "Redis call failed");
                self.conn = None;
                let delay = self.backoff.next_delay();
                self.retry_at = Some(Instant::now() + delay);
                None
            }
        }
    }
}

/// Compare-and-set for the cache: write unless the stored entry is deeper
/// (the same rule as [`CachedCrawl::supersedes`]); otherwise only refresh
/// its TTL. KEYS: entry[, the job's epoch key]. ARGV: entry JSON, depth,
/// exhausted (0/1), ttl ms[, the writer's epoch]. With the epoch key, a
/// writer whose epoch is older than the job's newest is refused (-1): the
/// same fence as the result store's, in the same script so no takeover can
/// slip between check and write.
const CACHE_PUT: &str = r#"
if KEYS[2] then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if current > tonumber(ARGV[5]) then return -1 end
end
local old = redis.call('GET', KEYS[1])
if old then
  local ok, o = pcall(cjson.decode, old)
  if ok and type(o) == 'table' and type(o.depth) == 'number' and type(o.levels) == 'table' then
    local od = o.depth
    local oex = #o.levels < od
    local nd = tonumber(ARGV[2])
    local nex = ARGV[3] == '1'
    if not (nd >= od or (nex and not oex)) then
      redis.call('PEXPIRE', KEYS[1], ARGV[4])
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 1
"#;

/// The shared result cache (DESIGN.md, "Cache") in Redis.
pub struct RedisCache {
    link: Mutex<RedisLink>,
    prefix: String,
    ttl: Duration,
    script: Script,
}

impl RedisCache {
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> RedisCache {
        RedisCache {
            link: Mutex::new(RedisLink::new(url)),
            prefix: prefix.to_string(),
            ttl,
            script: Script::new(CACHE_PUT),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

impl ResultCache for RedisCache {
    fn get(&self, key: &str) -> Option<CachedCrawl> {
        let k = self.key(key);
        let raw: Option<String> = self.link.lock().run(|c| {
            redis::cmd("GETEX")
                .arg(&k)
                .arg("PX")
                .arg(ms(self.ttl))
                .query(c)
        })?;
        // A corrupt entry is a miss, never a panic.
        serde_json::from_str(&raw?).ok()
    }

    fn put(&self, key: &str, entry: CachedCrawl) {
        self.store(key, entry, None);
    }

    fn put_fenced(&self, key: &str, entry: CachedCrawl, fence: &Fence) -> bool {
        self.store(key, entry, Some(fence))
    }
}

impl RedisCache {
    /// The cache write, fenced or not. False only when refused as stale;
    /// Redis being down is not a refusal (the write is just lost, as every
    /// cache write is then).
    fn store(&self, key: &str, entry: CachedCrawl, fence: Option<&Fence>) -> bool {
        let Ok(json) = serde_json::to_string(&entry) else {
            return true;
        };
        let k = self.key(key);
        let written: Option<i64> = self.link.lock().run(|c| {
            let mut call = self.script.key(&k);
            call.arg(json)
                .arg(entry.depth)
                .arg(if entry.is_exhausted() { 1 } else { 0 })
                .arg(ms(self.ttl));
            if let Some(f) = fence {
                // The key Coordination keeps the job's epochs under.
                call.key(format!("{}epoch:{}", self.prefix, f.job))
                    .arg(f.epoch);
            }
            call.invoke(c)
        });
        written != Some(-1)
    }
}

/// Takes the lease and a new epoch atomically. KEYS: lease, epoch.
/// ARGV: owner, ttl ms, epoch key ttl ms. Returns the epoch or 0.
const LEASE_ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local e = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2])
return e
"#;

/// Renews the lease if we still hold it. KEYS: lease. ARGV: value, ttl ms.
const LEASE_RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Deletes the lease if we still hold it. KEYS: lease. ARGV: value.
const LEASE_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// A fenced write: refused when a newer epoch than ours was handed out.
/// KEYS: epoch, target. ARGV: our epoch, value, ttl ms.
const FENCED_SET: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job: String,
    pub owner: String,
    pub epoch: u64,
}

impl Lease {
    fn value(&self) -> String {
        format!("{}|{}", self.owner, self.epoch)
    }
}

/// The outcome of a lease attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    Acquired(Lease),
    /// Another runner holds it.
    Busy,
    /// Redis is unreachable: run without a lease (at-least-once still
    /// holds through the broker).
    Unavailable,
}

/// Leases, fencing, the result store and attempt counters.
pub struct Coordination {
    link: Mutex<RedisLink>,
    prefix: String,
    lease_ttl: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
    fenced: Script,
}

/// How long epochs and attempt counters are kept: longer than any job.
const BOOKKEEPING_TTL: Duration = Duration::from_secs(24 * 3600);

impl Coordination {
    pub fn new(url: &str, prefix: &str, lease_ttl: Duration) -> Coordination {
        Coordination {
            link: Mutex::new(RedisLink::new(url)),
            prefix: prefix.to_string(),
            lease_ttl,
            acquire: Script::new(LEASE_ACQUIRE),
            renew: Script::new(LEASE_RENEW),
            release: Script::new(LEASE_RELEASE),
            fenced: Script::new(FENCED_SET),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    fn k(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    pub fn acquire(&self, job: &str, owner: &str) -> LeaseAttempt {
        let (lk, ek) = (self.k("lease", job), self.k("epoch", job));
        let r: Option<u64> = self.link.lock().run(|c| {
            self.acquire
                .key(&lk)
                .key(&ek)
                .arg(owner)
                .arg(ms(self.lease_ttl))
                .arg(ms(BOOKKEEPING_TTL))
                .invoke(c)
        });
        match r {
            None => LeaseAttempt::Unavailable,
            Some(0) => LeaseAttempt::Busy,
            Some(epoch) => LeaseAttempt::Acquired(Lease {
                job: job.to_string(),
                owner: owner.to_string(),
                epoch,
            }),
        }
    }

    /// `Some(true)` renewed, `Some(false)` lost, `None` Redis unreachable.
    pub fn renew(&self, lease: &Lease) -> Option<bool> {
        let lk = self.k("lease", &lease.job);
        let r: Option<i64> = self.link.lock().run(|c| {
            self.renew
                .key(&lk)
                .arg(lease.value())
                .arg(ms(self.lease_ttl))
                .invoke(c)
        });
        r.map(|v| v == 1)
    }

    pub fn release(&self, lease: &Lease) {
        let lk = self.k("lease", &lease.job);
        let _: Option<i64> = self
            .link
            .lock()
            .run(|c| self.release.key(&lk).arg(lease.value()).invoke(c));
    }

    /// The newest epoch handed out for `job`.
    pub fn current_epoch(&self, job: &str) -> Option<u64> {
        let ek = self.k("epoch", job);
        let r: Option<Option<u64>> = self
            .link
            .lock()
            .run(|c| redis::cmd("GET").arg(&ek).query(c));
        r.map(|v| v.unwrap_or(0))
    }

    /// Writes `value` under `key` (with `ttl`) only if no epoch newer than
    /// `epoch` exists for `job`. `Some(false)`: refused as stale.
    pub fn fenced_set(
        &self,
        job: &str,
        epoch: u64,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Option<bool> {
        let ek = self.k("epoch", job);
        let r: Option<i64> = self.link.lock().run(|c| {
            self.fenced
                .key(&ek)
                .key(key)
                .arg(epoch)
                .arg(value)
                .arg(ms(ttl))
                .invoke(c)
        });
        r.map(|v| v == 1)
    }

    pub fn result_key(&self, token: &str) -> String {
        self.k("result", token)
    }

    /// Records a job's final event for `resume`, fenced by its epoch.
    pub fn commit_result(
        &self,
        job: &str,
        epoch: u64,
        token: &str,
        stored: &StoredResult,
        ttl: Duration,
    ) -> Option<bool> {
        let value = serde_json::to_string(stored).ok()?;
        self.fenced_set(job, epoch, &self.result_key(token), &value, ttl)
    }

    /// The result store entry for a token; `Some(None)`: no such entry;
    /// `None`: Redis unreachable.
    pub fn stored(&self, token: &str) -> Option<Option<StoredResult>> {
        let k = self.result_key(token);
        let raw: Option<String> = self
            .link
            .lock()
            .run(|c| redis::cmd("GET").arg(&k).query::<Option<String>>(c))?;
        Some(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Writes a result store entry unconditionally (gateway side: the
    /// "running" marker and cache-hit answers).
    pub fn store(&self, token: &str, stored: &StoredResult, ttl: Duration) -> Option<()> {
        let k = self.result_key(token);
        let value = serde_json::to_string(stored).ok()?;
        self.link.lock().run(|c| {
            redis::cmd("SET")
                .arg(&k)
                .arg(value)
                .arg("PX")
                .arg(ms(ttl))
                .query::<()>(c)
        })
    }

    /// Counts one more delivery of `job`; `None` without Redis.
    pub fn attempt(&self, job: &str) -> Option<u64> {
        let k = self.k("attempts", job);
        self.link.lock().run(|c| {
            let n: u64 = redis::cmd("INCR").arg(&k).query(c)?;
            redis::cmd("PEXPIRE")
                .arg(&k)
                .arg(ms(BOOKKEEPING_TTL))
                .query::<()>(c)?;
            Ok(n)
        })
    }

    pub fn clear_attempts(&self, job: &str) {
        let k = self.k("attempts", job);
        let _: Option<()> = self.link.lock().run(|c| redis::cmd("DEL").arg(&k).query(c));
    }
}

/// Against the real Redis at 127.0.0.1:6379, each test under its own key
/// prefix.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::crawl;
    use crate::cache::{lookup, Lookup};
    use crate::job::JobEvent;

    const URL: &str = "redis://127.0.0.1:6379";

    fn prefix(test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("unit-{test}-{}-{nanos}:", std::process::id())
    }

    #[test]
    fn cache_has_memory_cache_semantics() {
        let c = RedisCache::new(URL, &prefix("cache"), Duration::from_secs(60));
        let three = crawl(3, &[&["s"], &["a", "b"], &["c"]]);
        assert_eq!(lookup(&c, "k", 2), Lookup::Miss);
        c.put("k", three.clone());
        assert_eq!(lookup(&c, "k", 3), Lookup::Hit(three.levels.clone()));
        assert_eq!(lookup(&c, "k", 1), Lookup::Hit(vec![vec!["s".to_string()]]));
        assert_eq!(lookup(&c, "k", 4), Lookup::Extend(three.clone()));
        // Never downgraded...
        c.put("k", crawl(2, &[&["s"], &["x"]]));
        assert_eq!(c.get("k"), Some(three.clone()));
        // ...same or deeper replaces...
        let four = crawl(4, &[&["s"], &["a", "b"], &["c"], &["d"]]);
        c.put("k", four.clone());
        assert_eq!(c.get("k"), Some(four));
        // ...an exhausted crawl replaces a deeper open one, not the reverse.
        let done = crawl(2, &[&["s"]]);
        c.put("k", done.clone());
        assert_eq!(c.get("k"), Some(done.clone()));
        c.put("k", crawl(1, &[&["s"]]));
        assert_eq!(c.get("k"), Some(done.clone()));
        assert_eq!(lookup(&c, "k", 5), Lookup::Hit(done.levels));
    }

    #[test]
    fn cache_ttl_expires_and_hits_refresh_it() {
        let c = RedisCache::new(URL, &prefix("ttl"), Duration::from_millis(300));
        c.put("k", crawl(1, &[&["s"]]));
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(150));
            assert!(c.get("k").is_some(), "a hit refreshes the TTL");
        }
        std::thread::sleep(Duration::from_millis(450));
        assert!(c.get("k").is_none());
    }

    #[test]
    fn redis_down_is_a_miss_not_an_error() {
        let c = RedisCache::new("redis://127.0.0.1:1", "x:", Duration::from_secs(1));
        c.put("k", crawl(1, &[&["s"]]));
        assert_eq!(c.get("k"), None);
        let co = Coordination::new("redis://127.0.0.1:1", "x:", Duration::from_secs(1));
        assert_eq!(co.acquire("j", "me"), LeaseAttempt::Unavailable);
    }

    #[test]
    fn one_lease_holder_and_fenced_writes() {
        let p = prefix("lease");
        let co = Coordination::new(URL, &p, Duration::from_millis(400));
        let LeaseAttempt::Acquired(a) = co.acquire("job", "a") else {
            panic!("first acquire")
        };
        assert_eq!(co.acquire("job", "b"), LeaseAttempt::Busy);
        // Renewal keeps it past its TTL.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(co.renew(&a), Some(true));
        }
        assert_eq!(co.acquire("job", "b"), LeaseAttempt::Busy);
        // Without renewal it expires and b takes over with a newer epoch.
        std::thread::sleep(Duration::from_millis(500));
        let LeaseAttempt::Acquired(b) = co.acquire("job", "b") else {
            panic!("takeover")
        };
        assert!(b.epoch > a.epoch);
        assert_eq!(co.renew(&a), Some(false), "a's lease is gone");
        // a's late write is refused; b's goes through.
        let ttl = Duration::from_secs(10);
        let stored = |n: u32| StoredResult {
            key: "k".into(),
            event: Some(JobEvent::Progress { level: n, pages: n }),
        };
        assert_eq!(
            co.commit_result("job", a.epoch, "tok", &stored(1), ttl),
            Some(false)
        );
        assert_eq!(co.stored("tok"), Some(None));
        assert_eq!(
            co.commit_result("job", b.epoch, "tok", &stored(2), ttl),
            Some(true)
        );
        assert_eq!(co.stored("tok"), Some(Some(stored(2))));
        // The cache is fenced the same way: a's late cache write is refused,
        // b's (and an unfenced one) goes through.
        let cache = RedisCache::new(URL, &p, ttl);
        let entry = |depth| crawl(depth, &[&["s"], &["a"], &["b"], &["c"]]);
        let fence = |l: &Lease| Fence {
            job: "job".into(),
            epoch: l.epoch,
        };
        assert!(!cache.put_fenced("ck", entry(3), &fence(&a)));
        assert_eq!(cache.get("ck"), None, "stale runner wrote the cache");
        assert!(cache.put_fenced("ck", entry(2), &fence(&b)));
        assert_eq!(cache.get("ck"), Some(entry(2)));
        assert!(!cache.put_fenced("ck", entry(3), &fence(&a)));
        assert_eq!(
            cache.get("ck"),
            Some(entry(2)),
            "stale deeper write refused"
        );
        cache.put("ck", entry(3));
        assert_eq!(cache.get("ck"), Some(entry(3)));
        // a cannot release b's lease; b can.
        co.release(&a);
        assert_eq!(co.acquire("job", "c"), LeaseAttempt::Busy);
        co.release(&b);
        assert!(matches!(co.acquire("job", "c"), LeaseAttempt::Acquired(l) if l.epoch > b.epoch));
    }

    #[test]
    fn attempts_count_and_clear() {
        let co = Coordination::new(URL, &prefix("attempts"), Duration::from_secs(1));
        assert_eq!(co.attempt("j"), Some(1));
        assert_eq!(co.attempt("j"), Some(2));
        co.clear_attempts("j");
        assert_eq!(co.attempt("j"), Some(1));
    }
}
