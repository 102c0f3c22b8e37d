//! Reading the membership registry: who is alive, and how old is their news.
//!
//! Ages are computed against Redis' clock (`TIME`), the same clock writers
//! stamp their records with, so no two machines' clocks are ever compared.

use super::record::{index_key, NodeRecord, Role};
use redis::ConnectionLike;
use serde::Serialize;
use std::time::Duration;

/// One live node and how long ago it last wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEntry {
    /// The record as last written.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Redis now minus the record's timestamp (ms).
    pub age_ms: u64,
}

/// Every live node at one instant of Redis time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// Redis `TIME` when the listing was read (ms since the epoch).
    pub now_ms: u64,
    /// Live nodes sorted by role, then id.
    pub nodes: Vec<NodeEntry>,
}

/// Opens a synchronous connection with connect, read and write timeouts.
pub fn connect(redis_url: &str, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(redis_url)?;
    let conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// Redis' own clock in milliseconds since the Unix epoch.
pub fn redis_time_ms(conn: &mut dyn ConnectionLike) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
    Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

/// Lists live nodes, optionally of one role, with their ages.
///
/// Index entries whose expiry has passed are purged on the way; records that
/// do not parse (another program's keys, a newer incompatible version) are
/// skipped rather than failing the whole listing.
pub fn list_nodes(
    conn: &mut dyn ConnectionLike,
    prefix: &str,
    role: Option<Role>,
) -> redis::RedisResult<Listing> {
    let index = index_key(prefix);
    let ((secs, micros), members): ((u64, u64), Vec<(String, f64)>) = redis::pipe()
        .cmd("TIME")
        .cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(conn)?;
    let now_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
    let now = now_ms as f64;
    let (live, expired): (Vec<_>, Vec<_>) = members.into_iter().partition(|(_, exp)| *exp > now);
    if !expired.is_empty() {
        // Purge by score, not by member: a node that just re-wrote itself has
        // a fresh score and survives.
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(now_ms)
            .query::<()>(conn)?;
    }
    let keys: Vec<String> = live
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| match role {
            Some(r) => k.starts_with(&format!("{prefix}nodes:{r}:")),
            None => true,
        })
        .collect();
    let mut nodes = Vec::with_capacity(keys.len());
    if !keys.is_empty() {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(conn)?;
        for value in values.into_iter().flatten() {
            let Ok(record) = serde_json::from_str::<NodeRecord>(&value) else {
                continue;
            };
            if role.is_some_and(|r| r != record.role) {
                continue;
            }
            let age_ms = now_ms.saturating_sub(record.ts_ms);
            nodes.push(NodeEntry { record, age_ms });
        }
    }
    nodes.sort_by(|a, b| (a.record.role, &a.record.id).cmp(&(b.record.role, &b.record.id)));
    Ok(Listing { now_ms, nodes })
}
