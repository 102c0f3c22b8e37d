//! Helpers shared by the end-to-end tests: starting binaries, services and fixture sites.

pub mod fixture;
pub mod support;
