//! Turning a client's crawl request into a job the backend accepts.
//!
//! The rules about URLs belong to the crawl engine; this module applies the
//! gateway's configured caps on top.

use backend::job::{CrawlSpec, JobFailure};

use crate::reactor::Limits;

pub fn validate(url: &str, depth: i64, limits: &Limits) -> Result<CrawlSpec, JobFailure> {
    if depth < 1 {
        return Err(JobFailure::new("invalid_depth", "depth must be at least 1"));
    }
    if depth > i64::from(limits.max_depth) {
        return Err(JobFailure::new("too_deep", format!("depth may be at most {}", limits.max_depth)));
    }
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(JobFailure::new("invalid_url", "not an absolute URL"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(JobFailure::new("unsupported_scheme", "only http and https are crawled"));
    }
    Ok(CrawlSpec { url: url.to_string(), depth: depth as u32, max_pages: limits.max_pages, same_host: false })
}
