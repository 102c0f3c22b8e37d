//! Worker process side: a child started by the coordinator with
//! `--worker SPEC_JSON`. It runs one `Engine`, writes `WorkerMsg` JSON lines
//! to stdout, and stops when stdin says `stop` or closes (so a dead
//! coordinator never leaves workers behind).

use crate::engine::Engine;
use crate::scenario::WorkerSpec;
use crate::stats::WorkerMsg;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Run a worker; returns the process exit code.
pub fn run(spec_json: &str) -> i32 {
    let spec: WorkerSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadtest worker: bad spec: {e}");
            return 2;
        }
    };
    let index = spec.index;
    let stdout = std::io::stdout();
    let mut emit = move |msg: WorkerMsg| {
        let mut out = stdout.lock();
        let line = serde_json::to_string(&msg).expect("messages serialise");
        // A closed stdout means the coordinator is gone; the stdin watcher
        // stops the loop in that case, so the error needs no handling here.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let (mut engine, waker) = match Engine::new(spec) {
        Ok(e) => e,
        Err(e) => {
            emit(WorkerMsg::Fatal {
                worker: index,
                message: e.to_string(),
            });
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.lock().read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim() == "stop" => break,
                    Ok(_) => {}
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = waker.wake();
        });
    }
    engine.run(&stop, &mut emit);
    0
}
