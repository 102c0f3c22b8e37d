//! The figures a worker keeps and streams to the coordinator: counters
//! (cumulative, merged by addition), latency histograms shipped as
//! `(value, count)` pairs (compact, and lossless for HDR histograms), and the
//! JSON-lines message types of the worker-to-coordinator channel.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Highest latency the histograms track, in microseconds (one hour).
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Record a latency, clamped into the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_US));
}

/// A histogram as `(value, count)` pairs of its recorded buckets.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Add pairs into a histogram.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = h.record_n(value.clamp(1, MAX_US), count);
    }
}

/// Cumulative counters of one worker (or, summed, of a run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Connection attempts started (first tries and reconnects).
    pub attempts: u64,
    /// Websocket handshakes completed.
    pub opened: u64,
    /// Attempts that never opened, by reason.
    pub failed: BTreeMap<String, u64>,
    /// Open connections lost, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Reconnect attempts started.
    pub reconnects: u64,
    /// Application messages sent.
    pub sent: u64,
    /// `pong` answers received.
    pub pongs: u64,
    /// `accepted` answers received.
    pub accepted: u64,
    /// `result` answers received.
    pub results: u64,
    /// `error` answers received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Other text messages received.
    pub other: u64,
    /// Websocket pings from the server (answered with pongs).
    pub server_pings: u64,
    /// Bytes written and read on all sockets.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Gateways assigned by the balancer, by node id.
    pub nodes: BTreeMap<String, u64>,
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

impl Counters {
    /// Add another worker's counters.
    pub fn add(&mut self, o: &Counters) {
        self.attempts += o.attempts;
        self.opened += o.opened;
        add_map(&mut self.failed, &o.failed);
        add_map(&mut self.dropped, &o.dropped);
        self.reconnects += o.reconnects;
        self.sent += o.sent;
        self.pongs += o.pongs;
        self.accepted += o.accepted;
        self.results += o.results;
        add_map(&mut self.errors, &o.errors);
        self.other += o.other;
        self.server_pings += o.server_pings;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        add_map(&mut self.nodes, &o.nodes);
    }

    /// Total failed attempts.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Total dropped connections.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Answers that complete a round trip (pong for ping, result for crawl).
    pub fn answers(&self) -> u64 {
        self.pongs + self.results
    }
}

/// A worker's own resource use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SelfUsage {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident memory now and at peak.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// One JSON line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Every 250 ms: cumulative counters, sockets open now, and the round
    /// trips and handshakes recorded since the previous tick.
    Tick {
        worker: usize,
        counters: Counters,
        open: u64,
        pending: u64,
        rtt: Vec<(u64, u64)>,
        handshake: Vec<(u64, u64)>,
    },
    /// Every connection of this worker has had its first attempt resolved.
    Ramped {
        worker: usize,
        opened: u64,
        failed: u64,
    },
    /// Last message: totals and full histograms.
    Final { worker: usize, totals: WorkerTotals },
    /// The worker could not run.
    Fatal { worker: usize, message: String },
}

/// A worker's totals when it stops: cumulative counters, sockets still
/// open, full histograms, and its own resource usage at start and end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerTotals {
    pub counters: Counters,
    pub open: u64,
    pub unanswered: u64,
    pub rtt: Vec<(u64, u64)>,
    pub handshake: Vec<(u64, u64)>,
    /// Own usage when the engine started, and at the end (sockets open).
    pub usage_start: SelfUsage,
    pub usage: SelfUsage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let mut h = new_histogram();
        for v in [1, 5, 5, 900, 12_345, 2_000_000] {
            record_us(&mut h, v);
        }
        let mut back = new_histogram();
        add_pairs(&mut back, &to_pairs(&h));
        assert_eq!(back.len(), 6);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }

    #[test]
    fn counters_add() {
        let mut a = Counters {
            opened: 2,
            ..Default::default()
        };
        a.failed.insert("refused".into(), 1);
        let mut b = Counters {
            opened: 3,
            pongs: 4,
            ..Default::default()
        };
        b.failed.insert("refused".into(), 2);
        b.failed.insert("timeout".into(), 1);
        a.add(&b);
        assert_eq!(a.opened, 5);
        assert_eq!(a.failed_total(), 4);
        assert_eq!(a.failed["refused"], 3);
        assert_eq!(a.answers(), 4);
    }

    #[test]
    fn messages_are_json_lines() {
        let m = WorkerMsg::Ramped {
            worker: 1,
            opened: 10,
            failed: 0,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.contains("\"kind\":\"ramped\""));
        assert!(matches!(
            serde_json::from_str(&line).unwrap(),
            WorkerMsg::Ramped { opened: 10, .. }
        ));
    }
}
