//! The reference backend of the gateway: a level-synchronous BFS web crawler.
//!
//! The gateway only needs the types in [`job`] and two calls:
//!
//! - [`engine::validate`] (or [`engine::validate_with`] for per-job options)
//!   turns a client's `url` and `depth` into a [`job::CrawlSpec`] or a
//!   [`job::JobFailure`] with a stable code (`invalid_url`,
//!   `unsupported_scheme`, `invalid_depth`, `too_deep`, `private_address`),
//!   without I/O, under the caps in [`engine::Limits`].
//! - [`engine::Engine::start`] builds the embedded engine from an
//!   [`engine::EngineConfig`] (worker threads, memory cache);
//!   [`engine::Engine::cached`] answers from the cache alone and
//!   [`engine::Engine::run`] runs a job to the end (blocking, on the
//!   caller's thread), reporting finished levels as it goes.
//!
//! Inside, the roles are kept apart so they can later run in separate
//! processes: [`master`] owns one job's BFS and talks to workers only
//! through [`queue::TaskQueue`] ([`queue::FetchTask`] out,
//! [`queue::FetchReply`] back; [`queue::LocalQueue`] is the crossbeam
//! implementation); [`worker`] fetches one page ([`guard`] refuses private
//! addresses, [`robots`] obeys robots.txt, [`extract`] reads links);
//! [`cache`] holds results behind [`cache::ResultCache`]; [`urlnorm`] gives
//! every URL one spelling.
//!
//! The distributed mode reuses all of it: [`amqp`] (topology, wire
//! messages), [`redis_store`] (shared cache, result store, leases with
//! fencing) and [`cluster`] (the `backend master` and `backend worker`
//! processes); [`gateway_link`] is the gateway's side of the broker.
//! [`membership`] is the Redis registry every gateway, master and worker
//! heartbeats into, [`backoff`] the one reconnect backoff of the
//! workspace and [`http_server`] its one HTTP server.

pub mod amqp;
pub mod backoff;
pub mod cache;
pub mod cluster;
pub mod engine;
pub mod extract;
pub mod gateway_link;
pub mod guard;
pub mod http_server;
pub mod job;
pub mod logging;
pub mod master;
pub mod membership;
pub mod process;
pub mod queue;
pub mod redis_store;
pub mod robots;
pub mod urlnorm;
pub mod worker;
