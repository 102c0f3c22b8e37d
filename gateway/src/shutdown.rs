//! SIGTERM and SIGINT start a drain instead of killing the process, so
//! clients are told to reconnect (close 1012) and spread over a window.
//! A second signal while draining exits at once.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use crate::reactor::Handle;

pub fn on_signals_drain(handle: Handle) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    info!(signal, "shutdown requested; draining");
                    handle.shutdown();
                } else {
                    warn!(signal, "second signal; exiting now");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}
