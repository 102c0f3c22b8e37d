//! The coordinator: validates the command line, then for the main target
//! (and the `--compare` target) starts the worker processes, walks the
//! phases (ramp, settle, hold, stop) each with a deadline, samples the server
//! and the kernel between phases, keeps the per-second timeline and prints
//! the live progress line, and finally assembles, prints and writes the
//! report and chart.

use crate::cli::Cli;
use crate::probe::{self, ServerProbe};
use crate::report::{
    self, per_conn, rate, ClientFigures, KernelFigures, Report, RunReport, Sample, ServerFigures,
};
use crate::scenario::{Scenario, Targets};
use crate::stats::{add_pairs, new_histogram, Counters, WorkerMsg, WorkerTotals};
use crate::target::{check_http, Target};
use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long workers get to send their final figures after `stop`.
const FINAL_DEADLINE: Duration = Duration::from_secs(15);

/// Entry point of a normal invocation; returns the exit code.
pub fn main(cli: &Cli) -> Result<i32, String> {
    let primary = cli.scenario(cli.targets()?)?;
    validate(&primary, &cli.server_admins)?;
    let compare = match &cli.compare {
        Some(url) => {
            let s = cli.scenario(Targets::Urls(vec![url.clone()]))?;
            validate(&s, &cli.compare_admins)?;
            Some(s)
        }
        None => None,
    };
    let mut runs = Vec::new();
    let probe = ServerProbe {
        pids: cli.server_pids.clone(),
        admins: cli.server_admins.clone(),
    };
    runs.push(run(&cli.label, primary, &probe, cli.quiet)?);
    if let Some(s) = compare {
        // Let the first run's sockets go before measuring the baseline again.
        std::thread::sleep(Duration::from_secs(2));
        let probe = ServerProbe {
            pids: cli.compare_pids.clone(),
            admins: cli.compare_admins.clone(),
        };
        runs.push(run(&cli.compare_label, s, &probe, cli.quiet)?);
    }
    let report = Report::new(runs);
    println!("{}", crate::summary::render(&report));
    if let Some(path) = &cli.report {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.chart {
        std::fs::write(path, crate::chart::svg(&report))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let broken = report
        .runs
        .iter()
        .any(|r| r.notes.iter().any(|n| n.starts_with("worker")));
    Ok(if broken { 1 } else { 0 })
}

/// Check every address a scenario will touch before starting anything.
fn validate(s: &Scenario, admins: &[String]) -> Result<(), String> {
    match &s.targets {
        Targets::Urls(urls) => {
            for u in urls {
                Target::new(u, s.allow_remote)?;
            }
        }
        Targets::Balancer(b) => check_http(b, s.allow_remote)?,
    }
    for a in admins {
        check_http(a, s.allow_remote)?;
    }
    Ok(())
}

enum Event {
    Msg(Box<WorkerMsg>),
    /// A worker's stdout closed (it exited).
    Gone(usize),
}

/// What the coordinator knows about its workers while a run goes on.
struct Live {
    counters: Vec<Counters>,
    open: Vec<u64>,
    pending: Vec<u64>,
    ramped: Vec<Option<(u64, u64)>>,
    last_ramped: Option<Instant>,
    finals: Vec<Option<WorkerTotals>>,
    gone: Vec<bool>,
    notes: Vec<String>,
    rtt_second: Histogram<u64>,
    /// Round trips reported during the hold phase only (tick granularity).
    rtt_hold: Histogram<u64>,
    timeline: Vec<Sample>,
    prev: Counters,
    prev_at: Instant,
    t0: Instant,
    next_sample: Instant,
    phase: &'static str,
    target_n: usize,
    quiet: bool,
}

impl Live {
    fn new(workers: usize, target_n: usize, quiet: bool) -> Live {
        let now = Instant::now();
        Live {
            counters: vec![Counters::default(); workers],
            open: vec![0; workers],
            pending: vec![0; workers],
            ramped: vec![None; workers],
            last_ramped: None,
            finals: (0..workers).map(|_| None).collect(),
            gone: vec![false; workers],
            notes: Vec::new(),
            rtt_second: new_histogram(),
            rtt_hold: new_histogram(),
            timeline: Vec::new(),
            prev: Counters::default(),
            prev_at: now,
            t0: now,
            next_sample: now + Duration::from_secs(1),
            phase: "ramp",
            target_n,
            quiet,
        }
    }

    fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.counters {
            t.add(c);
        }
        t
    }

    fn all_ramped(&self) -> bool {
        self.ramped
            .iter()
            .zip(&self.gone)
            .all(|(r, g)| r.is_some() || *g)
    }

    fn all_final(&self) -> bool {
        self.finals
            .iter()
            .zip(&self.gone)
            .all(|(f, g)| f.is_some() || *g)
    }

    fn apply(&mut self, ev: Event) {
        let ev = match ev {
            Event::Msg(m) => Ok(*m),
            Event::Gone(w) => Err(w),
        };
        match ev {
            Err(w) => {
                if !self.gone[w] && self.finals[w].is_none() {
                    self.notes
                        .push(format!("worker {w} exited without final figures"));
                }
                self.gone[w] = true;
            }
            Ok(WorkerMsg::Tick {
                worker,
                counters,
                open,
                pending,
                rtt,
                ..
            }) => {
                self.counters[worker] = counters;
                self.open[worker] = open;
                self.pending[worker] = pending;
                add_pairs(&mut self.rtt_second, &rtt);
                if self.phase == "hold" {
                    add_pairs(&mut self.rtt_hold, &rtt);
                }
            }
            Ok(WorkerMsg::Ramped {
                worker,
                opened,
                failed,
            }) => {
                self.ramped[worker] = Some((opened, failed));
                self.last_ramped = Some(Instant::now());
            }
            Ok(WorkerMsg::Final { worker, totals }) => {
                self.counters[worker] = totals.counters.clone();
                self.open[worker] = totals.open;
                self.finals[worker] = Some(totals);
            }
            Ok(WorkerMsg::Fatal { worker, message }) => {
                self.notes
                    .push(format!("worker {worker} failed: {message}"));
            }
        }
    }

    /// Close the current second: timeline sample and progress line.
    fn sample(&mut self) {
        let now = Instant::now();
        let total = self.total();
        let dt = now.duration_since(self.prev_at).as_secs_f64().max(1e-3);
        let p99 = (!self.rtt_second.is_empty())
            .then(|| self.rtt_second.value_at_quantile(0.99) as f64 / 1000.0);
        let s = Sample {
            t: now.duration_since(self.t0).as_secs_f64(),
            phase: self.phase.to_string(),
            open: self.open.iter().sum(),
            pending: self.pending.iter().sum(),
            opened_per_s: (total.opened - self.prev.opened) as f64 / dt,
            sent_per_s: (total.sent - self.prev.sent) as f64 / dt,
            answers_per_s: (total.answers() - self.prev.answers()) as f64 / dt,
            p99_ms: p99,
            failed: total.failed_total(),
            dropped: total.dropped_total(),
        };
        if !self.quiet {
            eprintln!(
                "[{:>6.1}s] {:<6} open {:>6}/{} pending {:>4} failed {} dropped {} | new/s {:>6.0} | \
                 msg/s {:>6.0} ans/s {:>6.0} p99 {} | reconnects {}",
                s.t,
                s.phase,
                s.open,
                self.target_n,
                s.pending,
                s.failed,
                s.dropped,
                s.opened_per_s,
                s.sent_per_s,
                s.answers_per_s,
                p99.map(|v| format!("{v:.2}ms")).unwrap_or_else(|| "-".into()),
                total.reconnects
            );
        }
        self.timeline.push(s);
        self.rtt_second.reset();
        self.prev = total;
        self.prev_at = now;
        self.next_sample += Duration::from_secs(1);
        if self.next_sample < now {
            self.next_sample = now + Duration::from_secs(1);
        }
    }

    /// Process worker messages until `until` or until `done` holds.
    fn pump(&mut self, rx: &Receiver<Event>, until: Instant, done: impl Fn(&Live) -> bool) {
        loop {
            if done(self) {
                return;
            }
            let now = Instant::now();
            if now >= self.next_sample {
                self.sample();
            }
            if now >= until {
                return;
            }
            let wait = until.min(self.next_sample).saturating_duration_since(now);
            match rx.recv_timeout(wait) {
                Ok(ev) => self.apply(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Start one worker process and a thread forwarding its JSON lines.
fn spawn_worker(
    spec_json: String,
    index: usize,
    tx: std::sync::mpsc::Sender<Event>,
) -> Result<(Child, ChildStdin), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .arg("--worker")
        .arg(spec_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting worker {index}: {e}"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<WorkerMsg>(&line) {
                Ok(msg) => {
                    if tx.send(Event::Msg(Box::new(msg))).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("loadtest: worker {index} sent {line:?}: {e}"),
            }
        }
        let _ = tx.send(Event::Gone(index));
    });
    Ok((child, stdin))
}

/// One run of a scenario against one target.
pub fn run(
    label: &str,
    sc: Scenario,
    server: &ServerProbe,
    quiet: bool,
) -> Result<RunReport, String> {
    if !quiet {
        eprintln!(
            "loadtest: {label}: {} connections to {} at {}/s over {} process(es), hold {:.0}s",
            sc.connections,
            sc.targets.label(),
            sc.rate,
            sc.processes,
            sc.hold_ms as f64 / 1000.0
        );
    }
    for &pid in &server.pids {
        if probe::pid_rss(pid).is_none() {
            return Err(format!(
                "--server-pid/--compare-pid {pid}: no such process (or /proc unreadable)"
            ));
        }
    }
    let rss_before = server.rss();
    let sock_before = probe::sockstat();
    let specs = sc.split();
    let (tx, rx) = channel();
    let mut children = Vec::new();
    let mut live = Live::new(specs.len(), sc.connections, quiet);
    for spec in &specs {
        let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        match spawn_worker(json, spec.index, tx.clone()) {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        }
    }
    drop(tx);

    // Ramp: until every first attempt resolved, or the deadline.
    let ramp_deadline = live.t0 + Duration::from_millis(sc.ramp_timeout_ms);
    live.pump(&rx, ramp_deadline, Live::all_ramped);
    let ramp_completed = live.all_ramped() && live.ramped.iter().all(Option::is_some);
    let ramp_end = if ramp_completed {
        live.last_ramped.unwrap_or_else(Instant::now)
    } else {
        Instant::now()
    };
    let ramp_seconds = ramp_end.duration_since(live.t0).as_secs_f64();
    if !ramp_completed {
        live.notes.push(format!(
            "ramp deadline of {:.0}s passed before every connection was tried",
            ramp_seconds
        ));
    }
    let opened_in_ramp: u64 = live.ramped.iter().flatten().map(|r| r.0).sum();

    // Settle, then measure memory with everything open.
    live.phase = "settle";
    live.pump(
        &rx,
        Instant::now() + Duration::from_millis(sc.settle_ms),
        |_| false,
    );
    // Ticks lag by up to 250 ms; with no settle time the ramp reports are fresher.
    let open_after_ramp: u64 = live
        .open
        .iter()
        .sum::<u64>()
        .max(opened_in_ramp.min(sc.connections as u64));
    let rss_after = server.rss();
    let sock_after = probe::sockstat();

    // Hold.
    live.phase = "hold";
    let cpu0 = server.cpu();
    let hold_start = Instant::now();
    let at_hold_start = live.total();
    live.pump(&rx, hold_start + Duration::from_millis(sc.hold_ms), |_| {
        false
    });
    let hold_seconds = hold_start.elapsed().as_secs_f64();
    let cpu1 = server.cpu();
    let rss_end = server.rss();
    let at_hold_end = live.total();

    // Stop and collect.
    live.phase = "stop";
    for (_, stdin) in &mut children {
        let _ = stdin.write_all(b"stop\n");
        let _ = stdin.flush();
    }
    live.pump(&rx, Instant::now() + FINAL_DEADLINE, Live::all_final);
    stop_all(&mut children);

    // Assemble.
    let mut counters = Counters::default();
    let mut rtt = new_histogram();
    let mut handshake = new_histogram();
    let mut client = ClientFigures {
        processes: specs.len(),
        ..Default::default()
    };
    let (mut open_at_end, mut unanswered) = (0, 0);
    for (w, f) in live.finals.iter().enumerate() {
        match f {
            Some(f) => {
                counters.add(&f.counters);
                add_pairs(&mut rtt, &f.rtt);
                add_pairs(&mut handshake, &f.handshake);
                open_at_end += f.open;
                unanswered += f.unanswered;
                client.cpu_seconds += f.usage.cpu_seconds;
                client.rss_start_bytes += f.usage_start.rss_bytes;
                client.rss_end_bytes += f.usage.rss_bytes;
                client.peak_rss_bytes += f.usage.peak_rss_bytes;
            }
            None => {
                counters.add(&live.counters[w]);
                live.notes
                    .push(format!("worker {w}: no final figures, using its last tick"));
            }
        }
    }
    let wall = live.t0.elapsed().as_secs_f64();
    client.cpu_percent = 100.0 * client.cpu_seconds / wall.max(1e-3);
    client.bytes_per_conn = per_conn(
        Some(client.rss_start_bytes),
        Some(client.rss_end_bytes),
        open_at_end,
    );
    let cpu_hold_seconds = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let server_figures = ServerFigures {
        rss_before,
        rss_after,
        rss_end,
        bytes_per_conn: per_conn(rss_before, rss_after, open_after_ramp),
        cpu_hold_seconds,
        cpu_hold_percent: cpu_hold_seconds.map(|c| 100.0 * c / hold_seconds.max(1e-3)),
    };
    let kernel = KernelFigures {
        before: sock_before,
        after: sock_after,
        tcp_mem_per_conn: per_conn(
            Some(sock_before.tcp_mem_bytes),
            Some(sock_after.tcp_mem_bytes),
            open_after_ramp,
        ),
        slab_per_conn: per_conn(
            Some(sock_before.slab_bytes),
            Some(sock_after.slab_bytes),
            open_after_ramp,
        ),
    };
    let peak_open = live
        .timeline
        .iter()
        .map(|s| s.open)
        .max()
        .unwrap_or(0)
        .max(open_after_ramp);
    Ok(RunReport {
        label: label.to_string(),
        target: sc.targets.label(),
        ramp_completed,
        ramp_seconds,
        handshakes_per_sec: rate(opened_in_ramp, ramp_seconds),
        open_after_ramp,
        open_at_end,
        peak_open,
        hold_seconds,
        handshake: report::latency(&handshake),
        rtt: report::latency(&rtt),
        rtt_hold: report::latency(&live.rtt_hold),
        sent_per_sec: rate(at_hold_end.sent - at_hold_start.sent, hold_seconds),
        answers_per_sec: rate(
            at_hold_end.answers() - at_hold_start.answers(),
            hold_seconds,
        ),
        results_per_sec: rate(at_hold_end.results - at_hold_start.results, hold_seconds),
        unanswered,
        counters,
        server: server_figures,
        kernel,
        client,
        timeline: live.timeline,
        notes: live.notes,
        scenario: sc,
    })
}

/// Close the workers' stdin (they stop on EOF), wait a little, then kill
/// the ones still running (each by its own handle).
fn stop_all(children: &mut Vec<(Child, ChildStdin)>) {
    let mut list: Vec<Child> = children
        .drain(..)
        .map(|(c, stdin)| {
            drop(stdin);
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !list.is_empty() {
        list.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut c in list {
        let _ = c.kill();
        let _ = c.wait();
    }
}
