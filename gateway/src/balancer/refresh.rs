//! The refresh thread: reads the gateway registry about once a second and
//! swaps in a new view. The only place the balancer talks to Redis.

use super::view::View;
use super::Shared;
use crate::membership::{connect, list_nodes, Role};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn run(shared: &Shared) {
    let config = &shared.config;
    let timeout = config
        .refresh_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut conn: Option<redis::Connection> = None;
    let mut failures: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => Ok(c),
            None => connect(&config.redis_url, timeout).map(|c| conn.insert(c)),
        }
        .and_then(|c| list_nodes(c, &config.key_prefix, Some(Role::Gateway)));
        shared.metrics.refreshes.inc();
        match result {
            Ok(listing) => {
                let view = View::from_listing(listing, shared.fresh_ms());
                shared.metrics.set_counts(view.counts(shared.fresh_ms()));
                *shared.view.write() = Arc::new(view);
                *shared.last_ok.lock() = Some(Instant::now());
                shared.metrics.redis_up.set(1);
                shared.metrics.serving_stale.set(0);
                if failures > 0 {
                    tracing::info!(failures, "registry reachable again");
                }
                failures = 0;
            }
            Err(e) => {
                conn = None;
                failures += 1;
                shared.metrics.refresh_errors.inc();
                shared.metrics.redis_up.set(0);
                let usable = shared.usable_view().is_ok();
                shared
                    .metrics
                    .serving_stale
                    .set(i64::from(usable && failures > 0));
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, serving_stale = usable, "registry read failed");
                }
            }
        }
        let rest = config.refresh_interval.saturating_sub(started.elapsed());
        sleep_unless_stopped(shared, rest);
    }
}

fn sleep_unless_stopped(shared: &Shared, total: Duration) {
    let deadline = Instant::now() + total;
    while !shared.stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
