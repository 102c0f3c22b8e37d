//! The report: every figure of a run as serialisable data, and the
//! arithmetic behind them (percentiles from HDR histograms, rates over a
//! window, bytes per connection, comparison ratios). Kept free of I/O so the
//! unit tests can check it against known inputs.

use crate::probe::SockStat;
use crate::scenario::Scenario;
use crate::stats::Counters;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Summarise a histogram of microseconds (all zero when empty).
pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// Events per second over a window (0 for an empty window).
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Memory growth divided over connections (`None` without data).
pub fn per_conn(before: Option<u64>, after: Option<u64>, conns: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if conns > 0 => Some((a as f64 - b as f64) / conns as f64),
        _ => None,
    }
}

/// `a / b`, when both exist and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// One second of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub phase: String,
    pub open: u64,
    pub pending: u64,
    pub opened_per_s: f64,
    pub sent_per_s: f64,
    pub answers_per_s: f64,
    /// p99 round trip of this second (None without answers).
    pub p99_ms: Option<f64>,
    pub failed: u64,
    pub dropped: u64,
}

/// Server-side figures (present when a pid or admin URL was given).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerFigures {
    /// Resident memory before connecting, after all opened and settled, and
    /// at the end of the hold.
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub rss_end: Option<u64>,
    /// (rss_after - rss_before) / connections open.
    pub bytes_per_conn: Option<f64>,
    /// CPU seconds the server used during the hold, and as % of one core.
    pub cpu_hold_seconds: Option<f64>,
    pub cpu_hold_percent: Option<f64>,
}

/// Kernel socket figures (`/proc/net/sockstat`, client and server sides).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelFigures {
    pub before: SockStat,
    pub after: SockStat,
    /// TCP buffer memory growth per connection (both ends together).
    pub tcp_mem_per_conn: Option<f64>,
    /// Slab growth per connection (both ends together, system-wide: noisy).
    #[serde(default)]
    pub slab_per_conn: Option<f64>,
}

/// The load tester's own use (all worker processes together).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientFigures {
    pub processes: usize,
    pub cpu_seconds: f64,
    /// CPU as % of one core over the whole run.
    pub cpu_percent: f64,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    pub peak_rss_bytes: u64,
    /// (rss_end - rss_start) / connections open at the end.
    pub bytes_per_conn: Option<f64>,
}

/// Everything about one run against one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub target: String,
    pub scenario: Scenario,
    /// Totals over the whole run.
    pub counters: Counters,
    /// Every connection's first attempt resolved before the ramp deadline.
    pub ramp_completed: bool,
    /// Seconds from start until every first attempt resolved.
    pub ramp_seconds: f64,
    /// Handshakes completed per second during the ramp.
    pub handshakes_per_sec: f64,
    pub open_after_ramp: u64,
    pub open_at_end: u64,
    pub peak_open: u64,
    pub hold_seconds: f64,
    pub handshake: Latency,
    /// Round trips over the whole run, and during the hold only.
    pub rtt: Latency,
    pub rtt_hold: Latency,
    /// Rates over the hold window.
    pub sent_per_sec: f64,
    pub answers_per_sec: f64,
    pub results_per_sec: f64,
    /// Messages without an answer when the run stopped.
    pub unanswered: u64,
    pub server: ServerFigures,
    pub kernel: KernelFigures,
    pub client: ClientFigures,
    pub timeline: Vec<Sample>,
    /// Problems worth a look (worker failures, timeouts).
    pub notes: Vec<String>,
}

/// One line of a side-by-side comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub figure: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// a / b.
    pub ratio: Option<f64>,
}

/// The whole report: one run, or two with their comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub runs: Vec<RunReport>,
    pub comparison: Vec<Row>,
}

/// How to read one compared figure out of a run.
type Figure = (&'static str, fn(&RunReport) -> Option<f64>);

/// The figures compared between two runs.
pub fn compare(a: &RunReport, b: &RunReport) -> Vec<Row> {
    let figures: Vec<Figure> = vec![
        ("opened", |r| Some(r.counters.opened as f64)),
        ("failed", |r| Some(r.counters.failed_total() as f64)),
        ("time to open all (s)", |r| Some(r.ramp_seconds)),
        ("handshakes/s", |r| Some(r.handshakes_per_sec)),
        ("handshake p50 (ms)", |r| Some(r.handshake.p50_ms)),
        ("handshake p99 (ms)", |r| Some(r.handshake.p99_ms)),
        ("rtt p50 (ms)", |r| {
            (r.rtt.count > 0).then_some(r.rtt.p50_ms)
        }),
        ("rtt p99 (ms)", |r| {
            (r.rtt.count > 0).then_some(r.rtt.p99_ms)
        }),
        ("rtt max (ms)", |r| {
            (r.rtt.count > 0).then_some(r.rtt.max_ms)
        }),
        ("answers/s", |r| Some(r.answers_per_sec)),
        ("server RSS before (MiB)", |r| r.server.rss_before.map(mib)),
        ("server RSS after (MiB)", |r| r.server.rss_after.map(mib)),
        ("server bytes/conn", |r| r.server.bytes_per_conn),
        ("server CPU in hold (s)", |r| r.server.cpu_hold_seconds),
        ("kernel TCP mem bytes/conn", |r| r.kernel.tcp_mem_per_conn),
        ("kernel slab bytes/conn", |r| r.kernel.slab_per_conn),
        ("loadtest CPU (s)", |r| Some(r.client.cpu_seconds)),
        ("loadtest bytes/conn", |r| r.client.bytes_per_conn),
    ];
    figures
        .into_iter()
        .map(|(name, f)| {
            let (x, y) = (f(a), f(b));
            Row {
                figure: name.to_string(),
                a: x,
                b: y,
                ratio: ratio(x, y),
            }
        })
        .collect()
}

/// Bytes to MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// Assemble runs and, for two, their comparison.
    pub fn new(runs: Vec<RunReport>) -> Report {
        let comparison = match runs.as_slice() {
            [a, b] => compare(a, b),
            _ => Vec::new(),
        };
        Report { runs, comparison }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, record_us};

    #[test]
    fn percentiles_of_one_to_a_thousand() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us);
        }
        let l = latency(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.min_ms, 0.001);
        assert_eq!(l.p50_ms, 0.5);
        assert_eq!(l.p90_ms, 0.9);
        assert_eq!(l.p99_ms, 0.99);
        assert_eq!(l.p999_ms, 0.999);
        assert_eq!(l.max_ms, 1.0);
        assert!((l.mean_ms - 0.5005).abs() < 1e-9);
    }

    #[test]
    fn one_outlier_shows_only_at_the_tail() {
        let mut h = new_histogram();
        for _ in 0..999 {
            record_us(&mut h, 200);
        }
        record_us(&mut h, 50_000);
        let l = latency(&h);
        assert_eq!(l.p50_ms, 0.2);
        assert_eq!(l.p99_ms, 0.2);
        // 3 significant figures: 50 ms lands in a bucket within 0.1%.
        assert!((l.max_ms - 50.0).abs() <= 0.05, "{}", l.max_ms);
        assert!((l.p999_ms - 0.2).abs() < 1e-9);
    }

    #[test]
    fn empty_histogram_is_zero() {
        assert_eq!(latency(&new_histogram()), Latency::default());
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(rate(19_000, 9.5), 2000.0);
        assert_eq!(rate(5, 0.0), 0.0);
        assert_eq!(
            per_conn(Some(10_000_000), Some(11_900_000), 19_000),
            Some(100.0)
        );
        assert_eq!(per_conn(Some(1), None, 10), None);
        assert_eq!(per_conn(Some(1), Some(2), 0), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
