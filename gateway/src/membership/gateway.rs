//! The gateway's own heartbeat: the glue between [`crate::status::Status`]
//! (open connections, limit, draining) and the generic [`Heartbeat`].

use super::{Heartbeat, HeartbeatConfig, Load, Role};
use crate::status::Status;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Starts announcing this gateway in the registry at `redis_url`.
///
/// `public_url` is what clients are told to connect to (`--public-url`, or
/// `ws://<listen>/ws`). The record follows `status` by itself: connection
/// counts at every tick, and `start_draining()` within 100 ms. Keep the
/// handle alive; dropping it (or `shutdown`) removes the record.
pub fn start_gateway_heartbeat(
    redis_url: &str,
    key_prefix: &str,
    status: Arc<Status>,
    admin: SocketAddr,
    public_url: String,
) -> io::Result<Heartbeat> {
    let mut config = HeartbeatConfig::new(redis_url, Role::Gateway, status.node_id.clone());
    config.key_prefix = key_prefix.to_string();
    config.admin = admin.to_string();
    config.url = public_url;
    config.started = status.started;
    let capacity = u64::try_from(status.max_connections).unwrap_or(u64::MAX);
    Heartbeat::start(
        config,
        Arc::new(move || Load {
            connections: u64::try_from(status.open_connections()).unwrap_or(u64::MAX),
            capacity,
            draining: status.is_draining(),
        }),
    )
}
