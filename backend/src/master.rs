//! The master role: one job's level-synchronous BFS.
//!
//! The master decides; workers only fetch. For each level it hands the
//! level's pages to workers through a [`TaskChannel`], keeps at most a
//! window of tasks in flight (so concurrent jobs sharing workers take turns
//! instead of queueing behind one big level), collects the links, and
//! builds the next level from the URLs not seen before, in a deterministic
//! order (frontier order, then page order). It enforces the page budget
//! and the job deadline, and reports each finished level.
//!
//! The last level is never fetched: its URLs are known from the level
//! before, and fetching them would only discover level `depth`. So a crawl
//! of depth `d` fetches levels `0..d-1`, and depth 1 fetches nothing.
//!
//! Partial results: when the budget or the deadline stops the crawl, the
//! levels hold every URL reached so far; only the last one may be
//! incomplete, and `partial` says why.

use std::collections::HashSet;
use std::time::Instant;

use crate::job::{CrawlSpec, JobFailure};
use crate::queue::{wall_deadline_ms, FetchReply, FetchTask, TaskChannel};
use crate::urlnorm;

/// Why a crawl stopped before its depth.
pub const PARTIAL_BUDGET: &str = "page_budget";
pub const PARTIAL_DEADLINE: &str = "deadline";

/// What one BFS run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfsResult {
    pub levels: Vec<Vec<String>>,
    pub partial: Option<&'static str>,
    /// Pages handed to workers by this run.
    pub fetched: u32,
}

/// Everything one job run needs besides the channel to the workers.
pub struct BfsJob<'a> {
    /// For logs and task ids.
    pub key: &'a str,
    pub spec: &'a CrawlSpec,
    /// Levels already known (a cached shallower crawl to extend); the BFS
    /// starts from its last level. `None` or empty: from the seed.
    pub start: Option<Vec<Vec<String>>>,
    pub deadline: Instant,
    /// Tasks in flight at once for this job.
    pub window: usize,
}

/// Runs the BFS; `progress(level, pages)` is called when level `level`
/// (with `pages` URLs) is complete.
pub fn run_bfs(
    job: BfsJob<'_>,
    channel: &mut dyn TaskChannel,
    progress: &mut dyn FnMut(u32, u32),
) -> Result<BfsResult, JobFailure> {
    let spec = job.spec;
    let depth = spec.depth.max(1) as usize;
    let seed_host = url::Url::parse(&spec.url)
        .ok()
        .and_then(|u| urlnorm::host_of(&u).map(str::to_string))
        .ok_or_else(|| JobFailure::new("invalid_url", format!("bad seed {}", spec.url)))?;

    let mut levels = match job.start {
        Some(l) if !l.is_empty() => l,
        _ => vec![vec![spec.url.clone()]],
    };
    levels.truncate(depth);
    let mut seen: HashSet<String> = levels.iter().flatten().cloned().collect();
    let mut fetched: u32 = 0;
    let mut seq: u64 = 0;
    let window = job.window.max(1);
    let wall_deadline = wall_deadline_ms(job.deadline);

    while levels.len() < depth {
        let last = levels.len() - 1;
        let frontier_len = levels[last].len();
        let budget_left = spec.max_pages.saturating_sub(fetched) as usize;
        let take = frontier_len.min(budget_left);
        if take == 0 {
            return Ok(BfsResult {
                levels,
                partial: Some(PARTIAL_BUDGET),
                fetched,
            });
        }

        // Replies arrive in any order; slot them by frontier index so the
        // next level does not depend on worker timing.
        let base_seq = seq;
        let mut replies: Vec<Option<FetchReply>> = vec![None; take];
        let mut sent = 0usize;
        let mut received = 0usize;
        let mut timed_out = false;
        while received < take {
            while sent < take && sent - received < window {
                channel
                    .send(FetchTask {
                        job: job.key.to_string(),
                        seq,
                        url: levels[last][sent].clone(),
                        deadline_ms: wall_deadline,
                    })
                    .map_err(|e| JobFailure::new("backend_unavailable", e.to_string()))?;
                seq += 1;
                sent += 1;
            }
            match channel.recv_until(job.deadline) {
                Ok(Some(reply)) => {
                    let idx = reply.seq.wrapping_sub(base_seq) as usize;
                    // Ignore strays (an earlier level's late or duplicate
                    // reply, e.g. a broker redelivery).
                    if reply.seq >= base_seq && idx < take && replies[idx].is_none() {
                        replies[idx] = Some(reply);
                        received += 1;
                    }
                }
                Ok(None) => {
                    timed_out = true;
                    break;
                }
                Err(e) => return Err(JobFailure::new("backend_unavailable", e.to_string())),
            }
        }
        fetched += sent as u32;

        // The seed itself refused by the SSRF guard is the client's error,
        // not an empty site.
        if last == 0 {
            if let Some(Some(r)) = replies.first() {
                if r.reason.as_deref() == Some("private_address") {
                    return Err(JobFailure::new(
                        "private_address",
                        format!("{} resolves to a private address", spec.url),
                    ));
                }
            }
        }

        let mut next = Vec::new();
        for reply in replies.into_iter().flatten() {
            for link in reply.links {
                if spec.same_host {
                    let same = url::Url::parse(&link)
                        .ok()
                        .is_some_and(|u| urlnorm::host_of(&u) == Some(seed_host.as_str()));
                    if !same {
                        continue;
                    }
                }
                if seen.insert(link.clone()) {
                    next.push(link);
                }
            }
        }

        let stopped = if timed_out {
            Some(PARTIAL_DEADLINE)
        } else if take < frontier_len {
            Some(PARTIAL_BUDGET)
        } else {
            None
        };
        if next.is_empty() {
            // Ran out of links (or stopped before finding any).
            return Ok(BfsResult {
                levels,
                partial: stopped,
                fetched,
            });
        }
        levels.push(next);
        if stopped.is_some() {
            return Ok(BfsResult {
                levels,
                partial: stopped,
                fetched,
            });
        }
        let level = levels.len() - 1;
        progress(level as u32, levels[level].len() as u32);
    }
    Ok(BfsResult {
        levels,
        partial: None,
        fetched,
    })
}
