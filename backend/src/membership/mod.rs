//! Membership: every gateway, master and worker announces itself in Redis.
//!
//! It lives in `backend` (not in `gateway`) because all three roles write
//! records and `backend` cannot depend on `gateway`; the gateway keeps only
//! its glue (`gateway::membership`, which re-exports this module).
//!
//! Each process runs a [`Heartbeat`] publisher on its own thread. It writes a
//! [`NodeRecord`] (id, role, addresses, load, capacity, state, version,
//! started-at) every few seconds with a TTL, so a node that dies simply
//! disappears. Timestamps come from Redis' own clock (`TIME`), never from the
//! writer's or reader's wall clock, so ages are immune to clock skew between
//! machines (the Crawlab `nodes` trap).
//!
//! The reader side ([`list_nodes`]) is shared by the balancer and by the
//! `gateway status` command ([`status::run`]).
//!
//! # Redis layout
//!
//! With a key prefix `P` (empty by default; [`namespace_prefix`] of the
//! binaries' `--namespace`, so tests and several clusters can share one
//! Redis):
//!
//! - `P nodes:<role>:<id>`: a string holding the record as JSON, written with
//!   `SET ... PX <ttl>`. This key is the source of truth: when it expires the
//!   node is gone.
//! - `P nodes:index`: a sorted set whose members are the record keys above and
//!   whose scores are their expiry times in Redis milliseconds. It lets a
//!   reader find every node without `SCAN`; readers ignore and purge entries
//!   whose score has passed. Record and index are written in one
//!   `MULTI`/`EXEC`.

mod heartbeat;
mod record;
mod registry;
pub mod status;

pub use crate::backoff::Backoff;
pub use heartbeat::{Heartbeat, HeartbeatConfig, Load, LoadSource};
pub use record::{index_key, namespace_prefix, record_key, NodeRecord, NodeState, Role};
pub use registry::{connect, list_nodes, redis_time_ms, Listing, NodeEntry};
