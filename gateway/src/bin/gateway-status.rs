//! `gateway-status`: every live node of every role with its state, load and
//! age, read from the Redis registry (the same listing as
//! `gateway status`; see `gateway::membership::status`).

use clap::Parser;
use gateway::membership::{namespace_prefix, status};
use std::process::ExitCode;

/// List the live gateways, masters and workers of a cluster.
#[derive(Debug, Parser)]
#[command(name = "gateway-status", version)]
struct Args {
    /// Redis holding the membership registry.
    #[arg(
        long,
        default_value = "redis://127.0.0.1:6379",
        env = "GATEWAY_REDIS_URL"
    )]
    redis_url: String,
    /// The cluster's `--namespace`.
    #[arg(long, default_value = "", env = "GATEWAY_NAMESPACE")]
    namespace: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match status::run_with_prefix(
        &args.redis_url,
        &namespace_prefix(&args.namespace),
        args.json,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-status: {e}");
            ExitCode::FAILURE
        }
    }
}
