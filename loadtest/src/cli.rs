//! The command line: flags, duration parsing (`30s`, `2m`, `500ms`) and the
//! checks that turn flags into a `Scenario` (loopback-only unless
//! `--allow-remote`, at most ~19,000 sockets per process).

use crate::scenario::{MessageKind, Scenario, Targets};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Sockets one process may hold: the hard fd limit here is 20,000.
pub const MAX_PER_PROCESS: usize = 19_000;

/// Event-driven websocket load generator: opens many connections from a few
/// mio event loops, holds them, sends pings or crawl jobs from a fraction of
/// them, and reports handshake and round-trip latency, throughput and memory
/// per connection (server, kernel and its own).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version)]
pub struct Cli {
    /// Websocket URL to connect to (repeatable; connections round-robin).
    #[arg(long = "url", value_name = "ws://HOST:PORT/PATH")]
    pub urls: Vec<String>,
    /// Balancer base URL; every connection asks it `GET /v1/gateway` first.
    #[arg(long, value_name = "http://HOST:PORT", conflicts_with = "urls")]
    pub balancer: Option<String>,
    /// Total connections to open (over all processes).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// New connections per second (over all processes).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Most connections in connect/handshake at the same time (over all
    /// processes). Keep it under the server's accept backlog (128 here):
    /// beyond it the kernel drops SYNs and the 1 s SYN retransmit shows up
    /// as handshake latency instead of the server's accept speed.
    #[arg(long, default_value_t = 100)]
    pub max_pending: usize,
    /// How long to hold all connections once they are open (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Pause after the last connection opened before measuring memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Deadline for opening all connections (default: twice the time the
    /// rate needs, plus 30 s).
    #[arg(long, value_parser = parse_duration)]
    pub ramp_timeout: Option<Duration>,
    /// Deadline for one connection's TCP connect plus websocket handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Fraction of connections that send messages (0..=1).
    #[arg(long, default_value_t = 0.0)]
    pub active: f64,
    /// Messages per second per active connection.
    #[arg(long, default_value_t = 1.0)]
    pub message_rate: f64,
    /// Message kind active connections send.
    #[arg(long, value_enum, default_value = "ping")]
    pub message: MessageKind,
    /// URL crawl messages ask for (the gateway refuses private addresses
    /// unless started with --allow-private).
    #[arg(long, default_value = "https://example.com/")]
    pub crawl_url: String,
    /// Depth crawl messages ask for.
    #[arg(long, default_value_t = 1)]
    pub depth: u32,
    /// Reconnect when the server closes or drops a connection (capped
    /// exponential backoff with full jitter).
    #[arg(long)]
    pub reconnect: bool,
    /// Backoff scale of the first reconnect.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Backoff cap.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Worker processes (default: enough to keep each under 19,000 sockets).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Server pid(s) to sample (VmRSS from /proc, CPU time from /proc/PID/stat).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Server admin base URL(s) to scrape `process_resident_memory_bytes` from.
    #[arg(long = "server-admin")]
    pub server_admins: Vec<String>,
    /// Run the same scenario against this second websocket URL afterwards and
    /// print both side by side with ratios.
    #[arg(long, value_name = "ws://HOST:PORT/PATH")]
    pub compare: Option<String>,
    /// Pid(s) of the comparison server.
    #[arg(long = "compare-pid")]
    pub compare_pids: Vec<u32>,
    /// Admin URL(s) of the comparison server.
    #[arg(long = "compare-admin")]
    pub compare_admins: Vec<String>,
    /// Label of the main target in the summary.
    #[arg(long, default_value = "target")]
    pub label: String,
    /// Label of the comparison target.
    #[arg(long, default_value = "compare")]
    pub compare_label: String,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Draw connections, messages/s and p99 over time as SVG here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    pub allow_remote: bool,
    /// Do not bind client sockets to spread 127.x.y.z source addresses.
    #[arg(long)]
    pub no_source_spread: bool,
    /// No live progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Seed for jitter and send phases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Internal: run as a worker process with this JSON spec.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

/// Parse `250ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Cli {
    /// Validate the flags and build the scenario for `targets`.
    pub fn scenario(&self, targets: Targets) -> Result<Scenario, String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err("--rate must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&self.active) {
            return Err("--active is a fraction between 0 and 1".into());
        }
        if self.active > 0.0 && !(self.message_rate > 0.0 && self.message_rate.is_finite()) {
            return Err("--message-rate must be positive when --active is".into());
        }
        let processes = self
            .processes
            .unwrap_or(self.connections.div_ceil(MAX_PER_PROCESS))
            .max(1);
        if self.connections.div_ceil(processes) > MAX_PER_PROCESS {
            return Err(format!(
                "{} connections over {processes} process(es) exceeds {MAX_PER_PROCESS} sockets per \
                 process (the fd limit is 20,000); raise --processes",
                self.connections
            ));
        }
        let ramp = self.ramp_timeout.unwrap_or_else(|| {
            Duration::from_secs_f64(2.0 * self.connections as f64 / self.rate + 30.0)
        });
        Ok(Scenario {
            targets,
            connections: self.connections,
            rate: self.rate,
            max_pending: self.max_pending.max(processes),
            hold_ms: self.hold.as_millis() as u64,
            settle_ms: self.settle.as_millis() as u64,
            ramp_timeout_ms: ramp.as_millis() as u64,
            handshake_timeout_ms: self.handshake_timeout.as_millis().max(1) as u64,
            active: self.active,
            message_rate: self.message_rate,
            message: self.message,
            crawl_url: self.crawl_url.clone(),
            depth: self.depth,
            reconnect: self.reconnect,
            backoff_base_ms: self.backoff_base.as_millis() as u64,
            backoff_max_ms: self.backoff_max.as_millis() as u64,
            processes,
            allow_remote: self.allow_remote,
            spread_sources: !self.no_source_spread,
            seed: self.seed,
        })
    }

    /// The main targets from `--url` / `--balancer`.
    pub fn targets(&self) -> Result<Targets, String> {
        match (&self.balancer, self.urls.is_empty()) {
            (Some(b), true) => Ok(Targets::Balancer(b.clone())),
            (None, false) => Ok(Targets::Urls(self.urls.clone())),
            (None, true) => Err("give --url ws://... (repeatable) or --balancer http://...".into()),
            (Some(_), false) => Err("--url and --balancer exclude each other".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn too_many_sockets_per_process_is_refused() {
        let cli = Cli::parse_from([
            "loadtest",
            "--url",
            "ws://127.0.0.1:1/",
            "--connections",
            "40000",
            "--processes",
            "2",
        ]);
        assert!(cli.scenario(cli.targets().unwrap()).is_err());
        let cli = Cli::parse_from([
            "loadtest",
            "--url",
            "ws://127.0.0.1:1/",
            "--connections",
            "40000",
        ]);
        assert_eq!(cli.scenario(cli.targets().unwrap()).unwrap().processes, 3);
    }
}
