//! The websocket gateway: a mio reactor that holds many mostly idle client
//! connections for long-running jobs, hands the jobs to a pluggable
//! [`backend::Backend`] and pushes the answers back.
//!
//! - [`reactor`]: the event loop, connections, reader threads.
//! - [`ws`]: websocket handshake and frames on pooled buffers.
//! - [`protocol`]: the JSON client protocol and its error codes.
//! - [`backend`]: the `Backend` trait and its adapters.
//! - [`admin`], [`metrics`], [`status`]: what operators see.
//! - [`shutdown`]: signals start a drain.

pub mod admin;
pub mod backend;
pub mod balancer;
pub mod config;
pub mod membership;
pub mod metrics;
pub mod protocol;
pub mod reactor;
pub mod shutdown;
pub mod status;
pub mod ws;
