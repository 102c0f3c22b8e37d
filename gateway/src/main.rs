//! `gateway`: run the websocket gateway. With no flags it listens on
//! 127.0.0.1:5555 (websockets) and 127.0.0.1:5556 (admin) and needs nothing
//! else running.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gateway::backend::amqp::AmqpBackend;
use gateway::backend::echo::EchoBackend;
use gateway::backend::embedded::EmbeddedBackend;
use gateway::backend::Backend;
use gateway::config::{BackendKind, Command, Config};
use gateway::metrics::Metrics;
use gateway::reactor::Reactor;
use gateway::status::Status;
use tracing::{error, info};

fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Status { json }) = config.command {
        let prefix = gateway::membership::namespace_prefix(&config.namespace);
        return match gateway::membership::status::run_with_prefix(
            &config.redis_url(),
            &prefix,
            json,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway status: {e}");
                ExitCode::FAILURE
            }
        };
    }
    backend::logging::init();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "gateway failed");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> std::io::Result<()> {
    let node_id = config.node_id();
    let backend_name = match config.backend {
        BackendKind::Echo => "echo",
        BackendKind::Embedded => "embedded",
        BackendKind::Amqp => "amqp",
    };
    let metrics = Arc::new(Metrics::default());
    let status = Arc::new(Status::new(
        node_id.clone(),
        backend_name,
        config.max_connections,
    ));
    let backend_kind = config.backend;
    let engine = config.engine();
    let amqp = config.amqp();
    let echo_delay = std::time::Duration::from_millis(config.echo_delay_ms);
    let reactor = Reactor::bind(&config, metrics.clone(), status.clone(), |sink| {
        let backend: Box<dyn Backend> = match backend_kind {
            BackendKind::Echo => Box::new(EchoBackend::new(sink, echo_delay)?),
            BackendKind::Embedded => Box::new(EmbeddedBackend::start(engine, sink)),
            BackendKind::Amqp => Box::new(AmqpBackend::start(amqp, sink)?),
        };
        Ok(backend)
    })?;
    let admin = gateway::admin::spawn(config.admin, metrics, status.clone())?;
    let ws_addr = reactor.handle().local_addr;
    let _heartbeat = if config.heartbeat() {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{ws_addr}/ws"));
        let prefix = gateway::membership::namespace_prefix(&config.namespace);
        Some(gateway::membership::start_gateway_heartbeat(
            &config.redis_url(),
            &prefix,
            status,
            admin,
            public_url,
        )?)
    } else {
        None
    };
    gateway::shutdown::on_signals_drain(reactor.handle())?;
    let ws = ws_addr;
    info!(node = %node_id, backend = backend_name, %ws, %admin, "gateway listening");
    // One machine-readable line on stdout, for scripts and tests that start
    // the gateway on port 0.
    println!("listening ws=ws://{ws}/ws admin=http://{admin}");
    let _ = std::io::stdout().flush();
    reactor.run()
}
