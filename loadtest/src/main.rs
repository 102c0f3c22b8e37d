//! `loadtest` entry point: parse the command line and run either the
//! coordinator (what users start) or a worker (what the coordinator starts).

use clap::Parser;
use loadtest::cli::Cli;

fn main() {
    let cli = Cli::parse();
    let code = match &cli.worker {
        Some(spec) => loadtest::worker::run(spec),
        None => match loadtest::coordinator::main(&cli) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("loadtest: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}
