//! The balancer's picture of the fleet, rebuilt from Redis about once a
//! second and shared read-only with the request threads.

use super::choice::eligible;
use crate::membership::{Listing, NodeEntry, NodeState};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One gateway as the balancer sees it.
#[derive(Debug)]
pub struct GatewayView {
    /// The record and its age when the view was read.
    pub entry: NodeEntry,
    /// Whether it could receive clients when the view was read.
    pub eligible: bool,
    /// Clients this balancer sent to it since the view was read.
    pub placed: AtomicU64,
}

impl GatewayView {
    /// Free capacity minus what this balancer already handed out.
    pub fn free_now(&self) -> u64 {
        self.entry
            .record
            .free()
            .saturating_sub(self.placed.load(Ordering::Relaxed))
    }
}

/// An immutable snapshot of all gateways; only `placed` counters move.
#[derive(Debug)]
pub struct View {
    /// Every gateway, sorted by id.
    pub gateways: Vec<GatewayView>,
    /// Indices into `gateways` of the eligible ones.
    pub candidates: Vec<usize>,
    /// When the view was read from Redis.
    pub read_at: Instant,
}

/// Per-state counts for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Ready, fresh and with free capacity.
    pub eligible: u64,
    /// Said they are draining.
    pub draining: u64,
    /// Heartbeat older than the freshness limit.
    pub stale: u64,
    /// Ready and fresh but full.
    pub full: u64,
}

impl View {
    /// A view with no gateways.
    pub fn empty() -> View {
        View {
            gateways: Vec::new(),
            candidates: Vec::new(),
            read_at: Instant::now(),
        }
    }

    /// Builds a view from a gateway listing; `fresh_ms` is the freshness
    /// limit.
    pub fn from_listing(listing: Listing, fresh_ms: u64) -> View {
        let gateways: Vec<GatewayView> = listing
            .nodes
            .into_iter()
            .map(|entry| GatewayView {
                eligible: eligible(&entry.record, entry.age_ms, fresh_ms),
                entry,
                placed: AtomicU64::new(0),
            })
            .collect();
        let candidates = (0..gateways.len())
            .filter(|&i| gateways[i].eligible)
            .collect();
        View {
            gateways,
            candidates,
            read_at: Instant::now(),
        }
    }

    /// How many gateways are in each state, given the freshness limit.
    pub fn counts(&self, fresh_ms: u64) -> Counts {
        let mut c = Counts::default();
        for g in &self.gateways {
            if g.eligible {
                c.eligible += 1;
            } else if g.entry.record.state == NodeState::Draining {
                c.draining += 1;
            } else if g.entry.age_ms > fresh_ms {
                c.stale += 1;
            } else {
                c.full += 1;
            }
        }
        c
    }

    /// Picks a gateway and counts the placement.
    pub fn place(&self, rng: &mut fastrand::Rng) -> Option<&GatewayView> {
        let n = self.candidates.len();
        let i = super::choice::pick(n, |k| self.gateways[self.candidates[k]].free_now(), rng)?;
        let g = &self.gateways[self.candidates[i]];
        g.placed.fetch_add(1, Ordering::Relaxed);
        Some(g)
    }

    /// The `/v1/gateways` body.
    pub fn describe(&self) -> Vec<GatewayInfo<'_>> {
        let elapsed = u64::try_from(self.read_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.gateways
            .iter()
            .map(|g| {
                let r = &g.entry.record;
                GatewayInfo {
                    id: &r.id,
                    url: &r.url,
                    admin: &r.admin,
                    state: r.state.as_str(),
                    connections: r.connections,
                    capacity: r.capacity,
                    free: r.free(),
                    placed_since_refresh: g.placed.load(Ordering::Relaxed),
                    age_ms: g.entry.age_ms.saturating_add(elapsed),
                    eligible: g.eligible,
                    version: &r.version,
                }
            })
            .collect()
    }
}

/// One gateway in `GET /v1/gateways`.
#[derive(Debug, Serialize)]
pub struct GatewayInfo<'a> {
    /// Node id.
    pub id: &'a str,
    /// Public websocket URL.
    pub url: &'a str,
    /// Admin address.
    pub admin: &'a str,
    /// `ready` or `draining`.
    pub state: &'a str,
    /// Open connections at its last heartbeat.
    pub connections: u64,
    /// Its connection limit.
    pub capacity: u64,
    /// `capacity - connections`.
    pub free: u64,
    /// Clients this balancer sent it since the last refresh.
    pub placed_since_refresh: u64,
    /// Age of its heartbeat now (ms).
    pub age_ms: u64,
    /// Whether it receives new clients.
    pub eligible: bool,
    /// Its version.
    pub version: &'a str,
}
