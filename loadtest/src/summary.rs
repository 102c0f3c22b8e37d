//! The readable end-of-run summary: one block per run, then (with
//! `--compare`) a side-by-side table with ratios.

use crate::report::{mib, Latency, Report, RunReport};
use std::collections::BTreeMap;
use std::fmt::Write;

fn map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn lat(l: &Latency) -> String {
    if l.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    )
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.1}{unit}"))
        .unwrap_or_else(|| "n/a".into())
}

fn run(r: &RunReport, out: &mut String) {
    let c = &r.counters;
    let s = &r.scenario;
    let _ = writeln!(out, "== {} ({}) ==", r.label, r.target);
    let _ = writeln!(
        out,
        "scenario     {} connections, {}/s, hold {:.0}s, active {:.2}% at {}/s ({:?}), {} process(es){}",
        s.connections,
        s.rate,
        r.hold_seconds,
        s.active * 100.0,
        s.message_rate,
        s.message,
        s.processes,
        if s.reconnect { ", reconnect" } else { "" }
    );
    let _ = writeln!(
        out,
        "connections  opened {} of {} ({} attempts, {} reconnects); open after ramp {}, at end {}",
        c.opened, s.connections, c.attempts, c.reconnects, r.open_after_ramp, r.open_at_end
    );
    let _ = writeln!(
        out,
        "failed       {} ({})",
        c.failed_total(),
        map(&c.failed)
    );
    let _ = writeln!(
        out,
        "dropped      {} ({})",
        c.dropped_total(),
        map(&c.dropped)
    );
    if !c.nodes.is_empty() {
        let _ = writeln!(out, "balancer     {}", map(&c.nodes));
    }
    let _ = writeln!(
        out,
        "ramp         all tried in {:.2}s{}; {:.0} handshakes/s",
        r.ramp_seconds,
        if r.ramp_completed {
            ""
        } else {
            " (DEADLINE HIT)"
        },
        r.handshakes_per_sec
    );
    let _ = writeln!(out, "handshake    {}", lat(&r.handshake));
    let _ = writeln!(out, "round trip   {}", lat(&r.rtt));
    let _ = writeln!(out, "  in hold    {}", lat(&r.rtt_hold));
    let _ = writeln!(
        out,
        "messages     sent {} ({:.0}/s in hold), answers {} ({:.0}/s), accepted {}, results {} ({:.0}/s), \
         unanswered {}, errors {}",
        c.sent,
        r.sent_per_sec,
        c.answers(),
        r.answers_per_sec,
        c.accepted,
        c.results,
        r.results_per_sec,
        r.unanswered,
        map(&c.errors)
    );
    let _ = writeln!(out, "server pings {} answered", c.server_pings);
    let sv = &r.server;
    if sv.rss_before.is_some() || sv.cpu_hold_seconds.is_some() {
        let _ = writeln!(
            out,
            "server       RSS {} -> {} (end {}) = {} per connection; CPU in hold {} ({})",
            opt(sv.rss_before.map(mib), " MiB"),
            opt(sv.rss_after.map(mib), " MiB"),
            opt(sv.rss_end.map(mib), " MiB"),
            opt(sv.bytes_per_conn, " B"),
            opt(sv.cpu_hold_seconds.map(|c| c * 1000.0), " ms"),
            opt(sv.cpu_hold_percent, "% of a core"),
        );
    }
    let k = &r.kernel;
    let _ = writeln!(
        out,
        "kernel       TCP sockets {} -> {}, TCP buffers {:.1} -> {:.1} MiB ({} per connection), slab {:.1} -> {:.1} \
         MiB ({} per connection; both ends, system-wide)",
        k.before.tcp_inuse,
        k.after.tcp_inuse,
        mib(k.before.tcp_mem_bytes),
        mib(k.after.tcp_mem_bytes),
        opt(k.tcp_mem_per_conn, " B"),
        mib(k.before.slab_bytes),
        mib(k.after.slab_bytes),
        opt(k.slab_per_conn, " B")
    );
    let cl = &r.client;
    let _ = writeln!(
        out,
        "loadtest     {} process(es), CPU {:.2}s ({:.1}% of a core), RSS {:.1} -> {:.1} MiB = {} per connection",
        cl.processes,
        cl.cpu_seconds,
        cl.cpu_percent,
        mib(cl.rss_start_bytes),
        mib(cl.rss_end_bytes),
        opt(cl.bytes_per_conn, " B")
    );
    for n in &r.notes {
        let _ = writeln!(out, "note         {n}");
    }
}

/// The whole summary as text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for r in &report.runs {
        run(r, &mut out);
        out.push('\n');
    }
    if let [a, b] = report.runs.as_slice() {
        let _ = writeln!(out, "== {} vs {} ==", a.label, b.label);
        let _ = writeln!(
            out,
            "{:<28} {:>14} {:>14} {:>10}",
            "figure", a.label, b.label, "a/b"
        );
        let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
        for row in &report.comparison {
            let _ = writeln!(
                out,
                "{:<28} {:>14} {:>14} {:>10}",
                row.figure,
                f(row.a),
                f(row.b),
                row.ratio
                    .map(|v| format!("{v:.3}x"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
    }
    out
}
