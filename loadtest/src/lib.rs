//! `loadtest`: an event-driven websocket load generator for the gateway.
//!
//! One coordinator process (`coordinator`) re-executes itself as worker
//! processes (`worker`), each of which runs a single mio event loop
//! (`engine`) over thousands of client sockets (`conn`). Workers stream their
//! figures back as JSON lines (`stats`); the coordinator samples the server
//! and the kernel (`probe`), aggregates (`report`), prints (`summary`) and
//! draws (`chart`). The binary `tokio-peer` is the comparison server.

pub mod chart;
pub mod cli;
pub mod conn;
pub mod coordinator;
pub mod engine;
pub mod probe;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod stats;
pub mod summary;
pub mod target;
pub mod wire;
pub mod worker;
