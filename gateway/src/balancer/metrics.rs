//! The balancer's Prometheus metrics (`GET /metrics`).
//!
//! Besides request counts and latency, it reports the health of its view of
//! the fleet: whether Redis answered the last refresh, how old the view is,
//! and whether it is serving a stale view through a Redis outage.

use super::view::Counts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of `balancer_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route (`/v1/gateway`, ..., or `other`).
    pub path: &'static str,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of `balancer_placements`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Gateway id.
    pub node: String,
}

/// Labels of `balancer_gateways`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `eligible`, `draining`, `stale` or `full`.
    pub state: &'static str,
}

/// All balancer metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Requests served, by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer a request.
    pub request_seconds: Histogram,
    /// Clients sent to each gateway.
    pub placements: Family<NodeLabels, Counter>,
    /// `/v1/gateway` requests answered 503.
    pub no_gateway: Counter,
    /// Registry reads.
    pub refreshes: Counter,
    /// Registry reads that failed.
    pub refresh_errors: Counter,
    /// 1 if the last registry read succeeded.
    pub redis_up: Gauge,
    /// 1 while answering from a view kept through a Redis failure.
    pub serving_stale: Gauge,
    /// Seconds since the last successful registry read.
    pub view_age_seconds: Gauge<f64, AtomicU64>,
    /// Gateways in the current view, by state.
    pub gateways: Family<StateLabels, Gauge>,
}

impl Metrics {
    /// Creates and registers every metric under the `balancer_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("balancer");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Histogram::new([
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
            ]),
            placements: Family::default(),
            no_gateway: Counter::default(),
            refreshes: Counter::default(),
            refresh_errors: Counter::default(),
            redis_up: Gauge::default(),
            serving_stale: Gauge::default(),
            view_age_seconds: Gauge::default(),
            gateways: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request",
            m.request_seconds.clone(),
        );
        registry.register(
            "placements",
            "Clients sent to each gateway",
            m.placements.clone(),
        );
        registry.register(
            "no_gateway",
            "Placement requests answered 503 (no eligible gateway)",
            m.no_gateway.clone(),
        );
        registry.register(
            "refreshes",
            "Registry reads from Redis",
            m.refreshes.clone(),
        );
        registry.register(
            "refresh_errors",
            "Registry reads that failed",
            m.refresh_errors.clone(),
        );
        registry.register(
            "redis_up",
            "1 if the last registry read succeeded",
            m.redis_up.clone(),
        );
        registry.register(
            "serving_stale_view",
            "1 while answering from the last good view during a Redis failure",
            m.serving_stale.clone(),
        );
        registry.register(
            "view_age_seconds",
            "Seconds since the last successful registry read",
            m.view_age_seconds.clone(),
        );
        registry.register(
            "gateways",
            "Gateways in the current view by state",
            m.gateways.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records the per-state gateway counts of a new view.
    pub fn set_counts(&self, c: Counts) {
        for (state, n) in [
            ("eligible", c.eligible),
            ("draining", c.draining),
            ("stale", c.stale),
            ("full", c.full),
        ] {
            self.gateways
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
