//! What a run does, as plain data: the coordinator builds a `Scenario` from
//! the command line and hands each worker process its share as a
//! `WorkerSpec` (serialised as JSON on the worker's command line).

use serde::{Deserialize, Serialize};

/// Kind of application message active connections send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// `{"type":"ping","id":..}` answered by `pong`.
    Ping,
    /// `{"type":"crawl",..}` answered by `accepted` then `result`.
    Crawl,
}

/// Where connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    /// Fixed websocket URLs; connection `i` uses `urls[i % len]`.
    Urls(Vec<String>),
    /// A balancer base URL asked `GET /v1/gateway` once per connection.
    Balancer(String),
}

impl Targets {
    /// A short human label.
    pub fn label(&self) -> String {
        match self {
            Targets::Urls(u) if u.len() == 1 => u[0].clone(),
            Targets::Urls(u) => format!("{} (+{} more)", u[0], u.len() - 1),
            Targets::Balancer(b) => format!("balancer {b}"),
        }
    }
}

/// The load a run applies (for all processes together).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub targets: Targets,
    pub connections: usize,
    /// New connections per second (all processes together).
    pub rate: f64,
    /// Most connections in connect/handshake at once (all processes).
    pub max_pending: usize,
    pub hold_ms: u64,
    pub settle_ms: u64,
    pub ramp_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// Fraction of connections that send messages.
    pub active: f64,
    /// Messages per second per active connection.
    pub message_rate: f64,
    pub message: MessageKind,
    pub crawl_url: String,
    pub depth: u32,
    pub reconnect: bool,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub processes: usize,
    pub allow_remote: bool,
    /// Spread client source addresses over 127.0.0.0/8.
    pub spread_sources: bool,
    pub seed: u64,
}

/// One worker process's share of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    /// Global index of this worker's first connection.
    pub first: usize,
    /// Number of connections this worker owns.
    pub count: usize,
    pub rate: f64,
    pub max_pending: usize,
    /// The worker exits by itself after this long whatever happens.
    pub lifetime_ms: u64,
    pub scenario: Scenario,
}

impl Scenario {
    /// Split the scenario over its processes: connection counts differ by at
    /// most one, rate and pending limit are divided evenly.
    pub fn split(&self) -> Vec<WorkerSpec> {
        let p = self.processes.max(1);
        let lifetime_ms = self.ramp_timeout_ms + self.settle_ms + self.hold_ms + 60_000;
        let mut first = 0;
        (0..p)
            .map(|index| {
                let count = self.connections / p + usize::from(index < self.connections % p);
                let spec = WorkerSpec {
                    index,
                    first,
                    count,
                    rate: self.rate / p as f64,
                    max_pending: (self.max_pending / p).max(1),
                    lifetime_ms,
                    scenario: self.clone(),
                };
                first += count;
                spec
            })
            .collect()
    }

    /// Whether global connection `i` is one of the active (sending) ones:
    /// exactly `round(active * N)` of them, evenly spread.
    pub fn is_active(&self, i: usize) -> bool {
        let a = self.active.clamp(0.0, 1.0);
        ((i + 1) as f64 * a).floor() > (i as f64 * a).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(n: usize, p: usize, active: f64) -> Scenario {
        Scenario {
            targets: Targets::Urls(vec!["ws://127.0.0.1:1/ws".into()]),
            connections: n,
            rate: 1000.0,
            max_pending: 100,
            hold_ms: 1000,
            settle_ms: 0,
            ramp_timeout_ms: 1000,
            handshake_timeout_ms: 1000,
            active,
            message_rate: 1.0,
            message: MessageKind::Ping,
            crawl_url: String::new(),
            depth: 1,
            reconnect: false,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            processes: p,
            allow_remote: false,
            spread_sources: true,
            seed: 1,
        }
    }

    #[test]
    fn split_covers_every_connection_once() {
        let specs = scenario(100_001, 6, 0.0).split();
        assert_eq!(specs.iter().map(|s| s.count).sum::<usize>(), 100_001);
        assert_eq!(specs[1].first, specs[0].count);
        assert!(specs.iter().all(|s| (16_666..=16_667).contains(&s.count)));
    }

    #[test]
    fn active_fraction_is_exact() {
        let s = scenario(100_000, 1, 0.01);
        assert_eq!((0..100_000).filter(|&i| s.is_active(i)).count(), 1000);
        let all = scenario(10, 1, 1.0);
        assert!((0..10).all(|i| all.is_active(i)));
        let none = scenario(10, 1, 0.0);
        assert!(!(0..10).any(|i| none.is_active(i)));
    }
}
