//! A child process that a test owns: the one way every test starts a
//! workspace binary (`gateway`, `backend`, `balancer`), signals it, waits
//! for it to exit, reads its log, and is sure it dies with the test.
//!
//! Binaries of the test's own package come from `env!("CARGO_BIN_EXE_<name>")`;
//! other packages' binaries from [`bin`], which looks next to the running
//! test binary (`cargo build --workspace --bins` first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The profile directory the running test binary was built into
/// (`target/debug`, `target/release`, ...).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// `target/<profile>/<name>`, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A child process, killed (and reaped) when dropped.
pub struct Proc {
    child: Child,
    /// Where its stderr goes, when not inherited.
    pub log: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd`. With a `log` file, stderr goes there and `RUST_LOG`
    /// defaults to `$CLUSTER_LOG` or `info` (tests wait for readiness
    /// lines); without, stderr is inherited and `RUST_LOG` defaults to
    /// `$RUST_LOG` or `warn`. A `RUST_LOG` set on `cmd` wins. Stdout is
    /// whatever `cmd` says (inherited unless set).
    pub fn spawn(mut cmd: Command, log: Option<&Path>) -> Proc {
        let level = match log {
            Some(_) => std::env::var("CLUSTER_LOG").unwrap_or_else(|_| "info".into()),
            None => std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        };
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        if let Some(path) = log {
            let file = std::fs::File::create(path)
                .unwrap_or_else(|e| panic!("log file {}: {e}", path.display()));
            cmd.stderr(file);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()));
        Proc {
            child,
            log: log.map(Path::to_path_buf),
        }
    }

    /// Spawns `program args...` with stdout discarded (see [`Proc::spawn`]).
    pub fn start(program: impl AsRef<Path>, args: &[&str], log: Option<&Path>) -> Proc {
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args).stdout(Stdio::null());
        Self::spawn(cmd, log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process itself, e.g. to take its stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// `kill -s <signal>`, e.g. `TERM`, `STOP`.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {signal} {}", self.pid());
    }

    /// SIGTERM: a gateway drains, a backend node leaves cleanly.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status once it has exited within `within`; `None` if it is
    /// still running then.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far (empty without a log file).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits until the log holds `needle` (panics after `secs`).
    pub fn wait_log(&self, needle: &str, secs: u64) {
        let file = self.log.as_ref().expect("a process with a log file");
        crate::support::wait_for(&format!("{needle:?} in {}", file.display()), secs, || {
            self.log_text().contains(needle).then_some(())
        });
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
