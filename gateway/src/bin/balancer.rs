//! `balancer`: answers `GET /v1/gateway` with a good gateway for a client.
//!
//! See `gateway::balancer` for the choice and the Redis refresh; this file
//! only parses flags, sets up logging and runs until killed.

use clap::Parser;
use gateway::balancer::{serve, Config};
use std::process::ExitCode;
use std::time::Duration;

/// Points websocket clients at a fresh, ready gateway with free capacity.
#[derive(Debug, Parser)]
#[command(name = "balancer", version)]
struct Args {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8000", env = "BALANCER_LISTEN")]
    listen: String,
    /// Redis holding the membership registry.
    #[arg(
        long,
        default_value = "redis://127.0.0.1:6379",
        env = "BALANCER_REDIS_URL"
    )]
    redis_url: String,
    /// Registry key prefix, verbatim (tests use a unique one per test).
    #[arg(
        long,
        default_value = "",
        env = "BALANCER_KEY_PREFIX",
        conflicts_with = "namespace"
    )]
    key_prefix: String,
    /// The cluster's `--namespace` (as given to gateways, masters and
    /// workers): registry keys then start with `<namespace>:`.
    #[arg(long, env = "BALANCER_NAMESPACE")]
    namespace: Option<String>,
    /// Milliseconds between registry reads.
    #[arg(long, default_value_t = 1000)]
    refresh_ms: u64,
    /// A gateway whose heartbeat is older than this (ms) gets no clients.
    #[arg(long, default_value_t = 5000)]
    fresh_ms: u64,
    /// Keep answering from the last good view this long (ms) while Redis fails.
    #[arg(long, default_value_t = 15000)]
    stale_grace_ms: u64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn main() -> ExitCode {
    backend::logging::init();
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        redis_url: args.redis_url,
        key_prefix: match args.namespace {
            Some(ns) => gateway::membership::namespace_prefix(&ns),
            None => args.key_prefix,
        },
        refresh_interval: Duration::from_millis(args.refresh_ms.max(10)),
        fresh: Duration::from_millis(args.fresh_ms),
        stale_grace: Duration::from_millis(args.stale_grace_ms),
        threads: args.threads.max(1),
    };
    match serve(config) {
        Ok(balancer) => {
            // Returns only if the refresh thread died: exit so a supervisor
            // restarts us rather than serve an ever older view.
            balancer.wait();
            eprintln!("balancer: the registry refresh stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("balancer: {e}");
            ExitCode::FAILURE
        }
    }
}
