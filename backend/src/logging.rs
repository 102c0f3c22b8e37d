//! One log setup for every binary of the project (`gateway`, `balancer`,
//! `backend`): `tracing` lines on stderr, level from `RUST_LOG` (default
//! `info`), so stdout stays free for the machine-readable lines scripts and
//! tests read.

/// Installs the subscriber; call once at the start of `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
