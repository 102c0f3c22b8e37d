//! The heartbeat record every node writes, and the Redis keys it lives under.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of process a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds client websockets.
    Gateway,
    /// Runs crawl jobs (BFS by level).
    Master,
    /// Fetches pages for masters.
    Worker,
}

impl Role {
    /// The lowercase name used in keys and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }

    /// Parses `gateway`, `master` or `worker`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "gateway" => Some(Role::Gateway),
            "master" => Some(Role::Master),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Accepting clients or jobs.
    Ready,
    /// Shutting down: finishing or handing off, accepting nothing new.
    Draining,
}

impl NodeState {
    /// The lowercase name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's heartbeat, stored as JSON.
///
/// `connections` is the node's current load: open websockets for a gateway,
/// jobs or tasks in flight for a master or worker. `capacity` is the most it
/// will take (`--max-connections` for a gateway). Times are Redis
/// milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id, unique per role (e.g. `gw-1`).
    pub id: String,
    /// Gateway, master or worker.
    pub role: Role,
    /// Admin HTTP address (`host:port`): metrics, health, status page.
    #[serde(default)]
    pub admin: String,
    /// Public websocket URL clients should use (gateways only).
    #[serde(default)]
    pub url: String,
    /// Current load.
    #[serde(default)]
    pub connections: u64,
    /// Maximum load.
    #[serde(default)]
    pub capacity: u64,
    /// Ready or draining.
    pub state: NodeState,
    /// Software version.
    #[serde(default)]
    pub version: String,
    /// Process start, in Redis time (ms).
    #[serde(default)]
    pub started_at_ms: u64,
    /// When this record was written, from Redis `TIME` (ms).
    pub ts_ms: u64,
    /// Process id, to find the process on its host.
    #[serde(default)]
    pub pid: u32,
}

impl NodeRecord {
    /// Capacity minus load, never negative.
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.connections)
    }
}

/// The registry key prefix of a cluster `--namespace`: `"<ns>:"`, or nothing
/// for the empty namespace (the same rule as the backend's Redis keys).
pub fn namespace_prefix(namespace: &str) -> String {
    match namespace.trim() {
        "" => String::new(),
        ns => format!("{ns}:"),
    }
}

/// The key holding one node's record.
pub fn record_key(prefix: &str, role: Role, id: &str) -> String {
    format!("{prefix}nodes:{role}:{id}")
}

/// The sorted set indexing all record keys by expiry time.
pub fn index_key(prefix: &str) -> String {
    format!("{prefix}nodes:index")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_names() {
        let r = NodeRecord {
            id: "gw-1".into(),
            role: Role::Gateway,
            admin: "127.0.0.1:5556".into(),
            url: "ws://127.0.0.1:5555/ws".into(),
            connections: 3,
            capacity: 10,
            state: NodeState::Draining,
            version: "0.1.0".into(),
            started_at_ms: 1,
            ts_ms: 2,
            pid: 42,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""role":"gateway""#) && s.contains(r#""state":"draining""#));
        assert_eq!(serde_json::from_str::<NodeRecord>(&s).unwrap(), r);
        assert_eq!(r.free(), 7);
        assert_eq!(record_key("t:", Role::Worker, "w1"), "t:nodes:worker:w1");
        assert_eq!(index_key(""), "nodes:index");
        assert_eq!(namespace_prefix(" t1 "), "t1:");
        assert_eq!(namespace_prefix(""), "");
        assert_eq!(Role::parse("master"), Some(Role::Master));
        assert_eq!(Role::parse("x"), None);
    }
}
