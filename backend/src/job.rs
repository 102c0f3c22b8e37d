//! The job and result types shared by the gateway and every backend.
//!
//! A client's `crawl` message becomes a [`CrawlSpec`] once the gateway has
//! validated it; the backend answers with [`JobEvent`]s. These types are also
//! the wire format between gateways, masters and workers, so they derive
//! serde.

use serde::{Deserialize, Serialize};

/// A validated crawl request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlSpec {
    /// The seed URL, already normalised (see the engine's URL rules).
    pub url: String,
    /// Number of BFS levels to return; `levels[0]` is the seed itself.
    pub depth: u32,
    /// Upper bound on pages fetched for this job.
    pub max_pages: u32,
    /// Follow only links to the seed's host.
    pub same_host: bool,
}

/// The answer to a crawl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlOutcome {
    pub url: String,
    pub depth: u32,
    /// `levels[i]` holds the URLs first reached at BFS level `i`.
    pub levels: Vec<Vec<String>>,
    /// Answered from the cache rather than crawled.
    pub cached: bool,
    /// Why the crawl stopped early (`page_budget`, `deadline`), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

/// A failure with a stable, machine-readable code (sent to clients as
/// `{"type":"error","code":...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    pub code: String,
    pub message: String,
}

impl JobFailure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        JobFailure {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What a backend reports about a job after it was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The job is durable; the client may disconnect and `resume` later.
    Accepted { cached: bool },
    /// A BFS level finished.
    Progress { level: u32, pages: u32 },
    /// The job finished.
    Done(CrawlOutcome),
    /// The job could not be run.
    Failed(JobFailure),
}
