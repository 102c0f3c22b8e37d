//! The reference backend of the gateway: a level-synchronous BFS web crawler.
//!
//! The gateway only knows the types in [`job`]; everything else here is the
//! engine that turns a [`job::CrawlSpec`] into a [`job::CrawlOutcome`].

pub mod job;
