//! Helpers shared by the end-to-end tests: starting binaries, services and fixture sites.

pub mod fixture;
pub mod gateway_proc;
pub mod haproxy;
pub mod process;
pub mod support;
