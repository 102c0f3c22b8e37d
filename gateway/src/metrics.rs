//! Every metric the gateway exports, named in one place.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds`,
//! `_bytes`); the text is rendered by `prometheus-client` on each scrape of
//! the admin server's `/metrics`. Counters are atomics, so reader threads
//! and the reactor update them without locks.

use std::sync::atomic::{AtomicI64, AtomicU64};

use backend::process::resident_memory_bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Websockets past the handshake and not yet closed.
    pub connections_open: Gauge<i64, AtomicI64>,
    /// TCP connections accepted (before any handshake).
    pub connections_accepted: Counter<u64, AtomicU64>,
    /// Connections ended, by why (client_close, eof, idle_timeout, ...).
    pub connections_closed: Family<ReasonLabel, Counter<u64, AtomicU64>>,
    /// Handshakes refused with an HTTP status, by why.
    pub handshakes_refused: Family<ReasonLabel, Counter<u64, AtomicU64>>,
    pub messages_received: Counter<u64, AtomicU64>,
    pub messages_sent: Counter<u64, AtomicU64>,
    pub jobs_submitted: Counter<u64, AtomicU64>,
    /// Jobs answered, by outcome (result, error).
    pub jobs_answered: Family<OutcomeLabel, Counter<u64, AtomicU64>>,
    /// Results that came from the cache rather than a crawl.
    pub cache_hits: Counter<u64, AtomicU64>,
    /// Error frames sent, by their code.
    pub errors: Family<CodeLabel, Counter<u64, AtomicU64>>,
    /// From submit to result, as the connection saw it.
    pub job_duration: Histogram,
    pub draining: Gauge<i64, AtomicI64>,
    pub resident_memory: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_closed: Family::default(),
            handshakes_refused: Family::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            jobs_submitted: Counter::default(),
            jobs_answered: Family::default(),
            cache_hits: Counter::default(),
            errors: Family::default(),
            job_duration: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            draining: Gauge::default(),
            resident_memory: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "gateway_connections_open",
            "Open websocket connections",
            m.connections_open.clone(),
        );
        r.register(
            "gateway_connections_accepted",
            "TCP connections accepted",
            m.connections_accepted.clone(),
        );
        r.register(
            "gateway_connections_closed",
            "Connections closed, by reason",
            m.connections_closed.clone(),
        );
        r.register(
            "gateway_handshakes_refused",
            "Upgrades refused, by reason",
            m.handshakes_refused.clone(),
        );
        r.register(
            "gateway_messages_received",
            "Websocket messages from clients",
            m.messages_received.clone(),
        );
        r.register(
            "gateway_messages_sent",
            "Websocket messages to clients",
            m.messages_sent.clone(),
        );
        r.register(
            "gateway_jobs_submitted",
            "Jobs handed to the backend",
            m.jobs_submitted.clone(),
        );
        r.register(
            "gateway_jobs_answered",
            "Jobs answered, by outcome",
            m.jobs_answered.clone(),
        );
        r.register(
            "gateway_cache_hits",
            "Results answered from the cache",
            m.cache_hits.clone(),
        );
        r.register(
            "gateway_errors",
            "Error messages sent, by code",
            m.errors.clone(),
        );
        r.register(
            "gateway_job_duration_seconds",
            "Submit to result",
            m.job_duration.clone(),
        );
        r.register(
            "gateway_draining",
            "1 while the gateway drains",
            m.draining.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory",
            m.resident_memory.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.handshakes_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    pub fn answered(&self, outcome: &'static str) {
        self.jobs_answered
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The Prometheus text exposition of every metric, memory read now.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
        let mut out = String::with_capacity(4096);
        // Formatting into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
