//! Measurements from outside the sockets: a server's resident memory (from
//! `/proc/PID/status` or its Prometheus `process_resident_memory_bytes`) and
//! CPU time (`/proc/PID/stat`), the kernel's TCP memory (`/proc/net/sockstat`)
//! and this process's own CPU and memory.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// A `kB` field of a `/proc/.../status` file, in bytes.
fn status_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resident memory of a process in bytes.
pub fn pid_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&text, "VmRSS")
}

/// utime + stime of a `/proc/PID/stat` line, in seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// CPU seconds (user + system) a process has used.
pub fn pid_cpu(pid: u32) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `process_resident_memory_bytes` from a Prometheus text exposition.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Resident memory scraped from an admin endpoint (`{base}/metrics`).
pub fn admin_rss(agent: &ureq::Agent, base: &str) -> Option<u64> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let body = agent
        .get(&url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    parse_metric(&body, "process_resident_memory_bytes").map(|v| v as u64)
}

/// Kernel socket figures from `/proc/net/sockstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SockStat {
    /// `sockets: used`.
    pub sockets_used: u64,
    /// `TCP: inuse`.
    pub tcp_inuse: u64,
    /// `TCP: mem`, converted from pages to bytes.
    pub tcp_mem_bytes: u64,
    /// Kernel slab memory (`Slab:` of /proc/meminfo): where socket, inode,
    /// file and epoll structures live. System-wide, so noisy.
    #[serde(default)]
    pub slab_bytes: u64,
}

/// Parse `/proc/net/sockstat` text.
pub fn parse_sockstat(text: &str) -> SockStat {
    let mut s = SockStat::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let head = words.next().unwrap_or("");
        let pairs: Vec<&str> = words.collect();
        for kv in pairs.chunks(2) {
            let [k, v] = kv else { continue };
            let v: u64 = v.parse().unwrap_or(0);
            match (head, *k) {
                ("sockets:", "used") => s.sockets_used = v,
                ("TCP:", "inuse") => s.tcp_inuse = v,
                ("TCP:", "mem") => s.tcp_mem_bytes = v * 4096,
                _ => {}
            }
        }
    }
    s
}

/// The kernel's socket figures now.
pub fn sockstat() -> SockStat {
    let mut s = std::fs::read_to_string("/proc/net/sockstat")
        .map(|t| parse_sockstat(&t))
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.slab_bytes = status_field(&meminfo, "Slab").unwrap_or(0);
    s
}

/// This process's CPU time and memory.
pub fn self_usage() -> crate::stats::SelfUsage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    crate::stats::SelfUsage {
        cpu_seconds: std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat_cpu(&s))
            .unwrap_or(0.0),
        rss_bytes: status_field(&status, "VmRSS").unwrap_or(0),
        peak_rss_bytes: status_field(&status, "VmHWM").unwrap_or(0),
    }
}

/// The soft "Max open files" limit of this process (from /proc/self/limits).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How to observe one server (any combination of pids and admin URLs; the
/// pids win for memory when both are given).
#[derive(Debug, Clone, Default)]
pub struct ServerProbe {
    pub pids: Vec<u32>,
    pub admins: Vec<String>,
}

impl ServerProbe {
    /// Whether there is anything to observe.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.admins.is_empty()
    }

    /// Total resident memory of the server processes.
    pub fn rss(&self) -> Option<u64> {
        if !self.pids.is_empty() {
            return self.pids.iter().map(|&p| pid_rss(p)).sum();
        }
        if self.admins.is_empty() {
            return None;
        }
        let agent = crate::target::http_agent(Duration::from_secs(5));
        self.admins.iter().map(|a| admin_rss(&agent, a)).sum()
    }

    /// Total CPU seconds of the server processes (pids only).
    pub fn cpu(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| pid_cpu(p)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_command_with_spaces() {
        let line = "1234 (my gate way) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(line), Some(3.0));
    }

    #[test]
    fn metric_is_found() {
        let text =
            "# HELP process_resident_memory_bytes x\n# TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_total 1\nprocess_resident_memory_bytes 4.5e6\n";
        assert_eq!(
            parse_metric(text, "process_resident_memory_bytes"),
            Some(4.5e6)
        );
        assert_eq!(parse_metric(text, "missing"), None);
    }

    #[test]
    fn sockstat_parses() {
        let text =
            "sockets: used 391\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 7\nUDP: inuse 1 mem 2\n";
        let s = parse_sockstat(text);
        assert_eq!(
            s,
            SockStat {
                sockets_used: 391,
                tcp_inuse: 12,
                tcp_mem_bytes: 7 * 4096,
                slab_bytes: 0
            }
        );
        assert!(sockstat().slab_bytes > 0);
    }

    #[test]
    fn own_usage_is_visible() {
        let u = self_usage();
        assert!(u.rss_bytes > 0);
        assert!(pid_rss(std::process::id()).is_some());
        assert!(open_files_limit().unwrap_or(0) > 0);
    }
}
