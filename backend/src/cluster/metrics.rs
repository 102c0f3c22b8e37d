//! Every metric `backend master` and `backend worker` export, named in one
//! place so the names stay consistent and documented (docs/distributed.md).
//!
//! Names follow Prometheus conventions: a `backend_master_` or
//! `backend_worker_` prefix, `_seconds` for durations, `_bytes` for sizes;
//! `prometheus-client` appends `_total` to counters when it renders them.
//! The values are atomics, so the tokio and blocking threads that run jobs
//! and tasks update them without locks; the admin thread renders them on
//! each scrape of `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64};

use crate::process::resident_memory_bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a worker's task ended, and why.
///
/// `outcome` is `ok` (fetched, links read), `failed` (answered with a
/// reason: robots, HTTP status, network, ...), `expired` (past its deadline,
/// not fetched) or `malformed` (not a task; dropped). `reason` is the
/// reply's stable reason code (`none` when there is none); the codes are a
/// small fixed set (`http_<status>` at most adds the HTTP statuses), so the
/// label cannot grow without bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub outcome: &'static str,
    pub reason: String,
}

/// A counter as every metric here uses it.
type Count = Counter<u64, AtomicU64>;

/// A master's job-level numbers.
pub struct MasterMetrics {
    /// Jobs whose run began (lease taken or Redis down), not counting
    /// deliveries answered from the result store.
    pub jobs_started: Count,
    /// Jobs answered with a result (a crawl outcome, cached or not).
    pub jobs_completed: Count,
    /// Jobs answered with an error.
    pub jobs_failed: Count,
    /// Jobs moved to the dead-letter queue (poison or malformed).
    pub jobs_dead_lettered: Count,
    /// Deliveries the broker flagged as redelivered (a runner died or the
    /// job was requeued).
    pub jobs_redelivered: Count,
    /// Times a job's lease was found held by another runner.
    pub lease_conflicts: Count,
    /// Jobs answered entirely from the shared cache.
    pub cache_hits: Count,
    /// Jobs that had to crawl (at least in part).
    pub cache_misses: Count,
    /// From the start of a job's run to its answer.
    pub job_duration: Histogram,
}

impl MasterMetrics {
    fn new() -> MasterMetrics {
        MasterMetrics {
            jobs_started: Count::default(),
            jobs_completed: Count::default(),
            jobs_failed: Count::default(),
            jobs_dead_lettered: Count::default(),
            jobs_redelivered: Count::default(),
            lease_conflicts: Count::default(),
            cache_hits: Count::default(),
            cache_misses: Count::default(),
            // 5 ms .. ~11 min: from a cache hit to a job at its timeout.
            job_duration: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "backend_master_jobs_started",
            "Jobs whose run began",
            self.jobs_started.clone(),
        );
        r.register(
            "backend_master_jobs_completed",
            "Jobs answered with a result",
            self.jobs_completed.clone(),
        );
        r.register(
            "backend_master_jobs_failed",
            "Jobs answered with an error",
            self.jobs_failed.clone(),
        );
        r.register(
            "backend_master_jobs_dead_lettered",
            "Jobs moved to the dead-letter queue",
            self.jobs_dead_lettered.clone(),
        );
        r.register(
            "backend_master_jobs_redelivered",
            "Job deliveries flagged as redelivered by the broker",
            self.jobs_redelivered.clone(),
        );
        r.register(
            "backend_master_lease_conflicts",
            "Job leases found held by another runner",
            self.lease_conflicts.clone(),
        );
        r.register(
            "backend_master_cache_hits",
            "Jobs answered entirely from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "backend_master_cache_misses",
            "Jobs that crawled at least in part",
            self.cache_misses.clone(),
        );
        r.register(
            "backend_master_job_duration_seconds",
            "Run start to answer",
            self.job_duration.clone(),
        );
    }
}

/// A worker's task-level numbers.
pub struct WorkerMetrics {
    /// Tasks handled, by outcome and reason (see [`TaskLabels`]).
    pub tasks: Family<TaskLabels, Count>,
    /// Time spent fetching one task's page (robots.txt and redirects
    /// included); expired and malformed tasks are not timed.
    pub fetch_duration: Histogram,
}

impl WorkerMetrics {
    fn new() -> WorkerMetrics {
        WorkerMetrics {
            tasks: Family::default(),
            // 1 ms .. ~65 s: a fetch is bounded by the fetch timeout.
            fetch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "backend_worker_tasks",
            "Tasks handled, by outcome and reason",
            self.tasks.clone(),
        );
        r.register(
            "backend_worker_fetch_duration_seconds",
            "Time to fetch one task's page",
            self.fetch_duration.clone(),
        );
    }

    /// Counts one task.
    pub fn task(&self, outcome: &'static str, reason: Option<&str>) {
        let reason = match reason {
            Some(r) if !r.is_empty() => r.to_string(),
            _ => "none".to_string(),
        };
        self.tasks
            .get_or_create(&TaskLabels { outcome, reason })
            .inc();
    }
}

/// The metrics of one process: its role's and the process-wide ones. Only
/// the role's own family is registered, so a master does not export empty
/// worker series and the other way round.
pub struct Metrics {
    registry: Registry,
    pub master: MasterMetrics,
    pub worker: WorkerMetrics,
    resident_memory: Gauge<i64, AtomicI64>,
}

/// Which role's metrics a process exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsRole {
    Master,
    Worker,
}

impl Metrics {
    pub fn new(role: MetricsRole) -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            master: MasterMetrics::new(),
            worker: WorkerMetrics::new(),
            resident_memory: Gauge::default(),
        };
        match role {
            MetricsRole::Master => m.master.register(&mut m.registry),
            MetricsRole::Worker => m.worker.register(&mut m.registry),
        }
        m.registry.register(
            "process_resident_memory_bytes",
            "Resident memory",
            m.resident_memory.clone(),
        );
        m
    }

    /// The Prometheus text exposition of every metric, memory read now.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(4096);
        // Formatting into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_renders_its_names_only() {
        let m = Metrics::new(MetricsRole::Master);
        m.master.jobs_completed.inc();
        m.master.job_duration.observe(0.02);
        let text = m.render();
        for name in [
            "backend_master_jobs_started_total",
            "backend_master_jobs_completed_total 1",
            "backend_master_jobs_failed_total",
            "backend_master_jobs_dead_lettered_total",
            "backend_master_jobs_redelivered_total",
            "backend_master_lease_conflicts_total",
            "backend_master_cache_hits_total",
            "backend_master_cache_misses_total",
            "backend_master_job_duration_seconds_count 1",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(!text.contains("backend_worker_"), "{text}");
    }

    #[test]
    fn worker_counts_tasks_by_outcome_and_reason() {
        let m = Metrics::new(MetricsRole::Worker);
        m.worker.task("ok", None);
        m.worker.task("failed", Some("http_404"));
        m.worker.task("failed", Some("http_404"));
        m.worker.fetch_duration.observe(0.01);
        let text = m.render();
        assert!(
            text.contains(r#"backend_worker_tasks_total{outcome="ok",reason="none"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"backend_worker_tasks_total{outcome="failed",reason="http_404"} 2"#),
            "{text}"
        );
        assert!(text.contains("backend_worker_fetch_duration_seconds_count 1"));
        assert!(!text.contains("backend_master_"), "{text}");
        assert!(resident_memory_bytes().is_some_and(|b| b > 0));
    }
}
