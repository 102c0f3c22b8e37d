//! Membership, gateway side: the registry itself (records, heartbeats,
//! listing, status table) is role-independent and lives in
//! [`backend::membership`], re-exported here so gateway code keeps one path;
//! this module adds only the gateway's glue ([`start_gateway_heartbeat`]).

mod gateway;

pub use backend::membership::*;
pub use gateway::start_gateway_heartbeat;
