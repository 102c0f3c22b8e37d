//! `--chart FILE.svg`: three stacked panels over time (open connections,
//! messages per second, p99 round trip), one line per run. Plain SVG text:
//! no plotting dependency for three polylines.

use crate::report::{Report, Sample};
use std::fmt::Write;

const W: f64 = 900.0;
const PANEL_H: f64 = 180.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

type Series = fn(&Sample) -> Option<f64>;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// Render the report's timelines.
pub fn svg(report: &Report) -> String {
    let panels: [(&str, Series); 3] = [
        ("open connections", |s| Some(s.open as f64)),
        ("messages sent per second", |s| Some(s.sent_per_s)),
        ("p99 round trip (ms)", |s| s.p99_ms),
    ];
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 20.0;
    let t_max = nice_max(
        report
            .runs
            .iter()
            .flat_map(|r| r.timeline.iter().map(|s| s.t))
            .fold(0.0, f64::max),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let legend: Vec<String> = report
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                r#"<tspan fill="{}">&#9632; {}</tspan>"#,
                COLORS[i % 4],
                esc(&r.label)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="14">loadtest: {}</text>"#,
        legend.join("  ")
    );
    let plot_w = W - LEFT - RIGHT;
    for (p, (title, series)) in panels.iter().enumerate() {
        let y0 = TOP + p as f64 * (PANEL_H + GAP);
        let v_max = nice_max(
            report
                .runs
                .iter()
                .flat_map(|r| r.timeline.iter().filter_map(series))
                .fold(0.0, f64::max),
        );
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{title}</text>"#,
            y0 - 6.0
        );
        for k in 0..=4 {
            let frac = k as f64 / 4.0;
            let y = y0 + PANEL_H * (1.0 - frac);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v_max * frac)
            );
        }
        for k in 0..=4 {
            let t = t_max * k as f64 / 4.0;
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{} s</text>"#,
                LEFT + plot_w * k as f64 / 4.0,
                y0 + PANEL_H + 14.0,
                fmt_num(t)
            );
        }
        // Dashed line where each run's hold phase starts.
        for (i, r) in report.runs.iter().enumerate() {
            if let Some(s) = r.timeline.iter().find(|s| s.phase == "hold") {
                let x = LEFT + plot_w * s.t / t_max;
                let _ = writeln!(
                    out,
                    r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="{}" stroke-dasharray="4 3"/>"#,
                    y0 + PANEL_H,
                    COLORS[i % 4]
                );
            }
        }
        for (i, r) in report.runs.iter().enumerate() {
            let pts: Vec<String> = r
                .timeline
                .iter()
                .filter_map(|s| series(s).map(|v| (s.t, v)))
                .map(|(t, v)| {
                    format!(
                        "{:.1},{:.1}",
                        LEFT + plot_w * t / t_max,
                        y0 + PANEL_H * (1.0 - v / v_max)
                    )
                })
                .collect();
            if !pts.is_empty() {
                let _ = writeln!(
                    out,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                    COLORS[i % 4],
                    pts.join(" ")
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.2}", v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(19_000.0), 20_000.0);
        assert_eq!(nice_max(2001.0), 2500.0);
        assert_eq!(nice_max(0.8), 1.0);
    }

    #[test]
    fn empty_report_is_valid_svg() {
        let s = svg(&Report {
            runs: vec![],
            comparison: vec![],
        });
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }
}
