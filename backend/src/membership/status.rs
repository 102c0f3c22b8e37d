//! `gateway status`: every live node of every role, like `jubactl -c status`.
//!
//! Prints a table for a person, or the raw listing as JSON (`--json`) for
//! scripts. A node whose last heartbeat is older than [`STALE_AFTER_MS`] is
//! flagged `stale`: it is probably dying and will vanish when its TTL ends.

use super::registry::{connect, list_nodes, Listing};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

/// Age beyond which a record is shown as stale (the balancer's default
/// freshness limit).
pub const STALE_AFTER_MS: u64 = 5_000;

/// Connects, lists all nodes and prints them to stdout.
pub fn run(redis_url: &str, json: bool) -> io::Result<()> {
    run_with_prefix(redis_url, "", json)
}

/// [`run`] for a cluster started with `--namespace` (see
/// [`namespace_prefix`](super::namespace_prefix)), or with a raw key prefix.
pub fn run_with_prefix(redis_url: &str, key_prefix: &str, json: bool) -> io::Result<()> {
    let listing = connect(redis_url, Duration::from_secs(2))
        .and_then(|mut conn| list_nodes(&mut conn, key_prefix, None))
        .map_err(|e| io::Error::other(format!("cannot read the registry at {redis_url}: {e}")))?;
    let text = if json {
        render_json(&listing)
    } else {
        render_table(&listing)
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// The listing as one JSON document (`{"now_ms":..,"nodes":[..]}`) and a
/// newline.
pub fn render_json(listing: &Listing) -> String {
    let mut s = serde_json::to_string_pretty(listing).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// The listing as an aligned table, one node per line.
pub fn render_table(listing: &Listing) -> String {
    if listing.nodes.is_empty() {
        return "no live nodes\n".to_string();
    }
    let header = [
        "ROLE", "ID", "STATE", "LOAD", "AGE", "UPTIME", "VERSION", "ADMIN", "URL",
    ];
    let mut rows: Vec<[String; 9]> = vec![header.map(String::from)];
    for n in &listing.nodes {
        let r = &n.record;
        let mut state = r.state.to_string();
        if n.age_ms > STALE_AFTER_MS {
            state.push_str(",stale");
        }
        let load = if r.capacity > 0 {
            format!(
                "{}/{} ({}%)",
                r.connections,
                r.capacity,
                r.connections * 100 / r.capacity
            )
        } else {
            r.connections.to_string()
        };
        rows.push([
            r.role.to_string(),
            r.id.clone(),
            state,
            load,
            human_ms(n.age_ms),
            human_ms(listing.now_ms.saturating_sub(r.started_at_ms)),
            r.version.clone(),
            dash(&r.admin),
            dash(&r.url),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// `850ms`, `4.2s`, `3m07s`, `2h05m`, `3d04h`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{}s", s, (ms % 1000) / 100),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{NodeEntry, NodeRecord, NodeState, Role};

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(4_250), "4.2s");
        assert_eq!(human_ms(187_000), "3m07s");
        assert_eq!(human_ms(7_500_000), "2h05m");
        assert_eq!(human_ms(273_600_000), "3d04h");
    }

    #[test]
    fn table_marks_stale_and_draining() {
        let rec = |id: &str, state| NodeRecord {
            id: id.into(),
            role: Role::Gateway,
            admin: "127.0.0.1:1".into(),
            url: "ws://x/ws".into(),
            connections: 5,
            capacity: 10,
            state,
            version: "0.1.0".into(),
            started_at_ms: 0,
            ts_ms: 0,
            pid: 1,
        };
        let listing = Listing {
            now_ms: 60_000,
            nodes: vec![
                NodeEntry {
                    record: rec("gw-1", NodeState::Ready),
                    age_ms: 100,
                },
                NodeEntry {
                    record: rec("gw-2", NodeState::Draining),
                    age_ms: 9_000,
                },
            ],
        };
        let t = render_table(&listing);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ROLE"));
        assert!(
            lines[1].contains("gw-1")
                && lines[1].contains("ready ")
                && lines[1].contains("5/10 (50%)")
        );
        assert!(lines[2].contains("draining,stale"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&render_json(&listing)).unwrap();
        assert_eq!(j["nodes"][1]["state"], "draining");
        assert_eq!(j["nodes"][1]["age_ms"], 9000);
        assert_eq!(render_table(&Listing::default()), "no live nodes\n");
    }
}
