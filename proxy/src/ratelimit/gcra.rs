//! The GCRA arithmetic, shared by the in-process limiter and mirrored line for line by the
//! Redis script in [`super::shared`]. Pure: no clock, no I/O.

use std::time::Duration;

use super::{Limit, RateDecision};

/// Decides one request at `now` against a bucket whose theoretical arrival time is `tat`
/// (both in nanoseconds on the same clock; `tat` ≤ `now` means the bucket is full).
///
/// Returns the new TAT to store when the request is admitted (`None` when refused: a refused
/// request spends nothing) and the decision.
pub(crate) fn decide(tat: u64, now: u64, limit: Limit) -> (Option<u64>, RateDecision) {
    let interval = limit.interval_ns();
    let burst = u64::from(limit.burst.max(1));
    // The burst tolerance: how far ahead of `now` the TAT may run.
    let tolerance = interval.saturating_mul(burst);
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(interval);
    let allow_at = new_tat.saturating_sub(tolerance);
    if now < allow_at {
        return (
            None,
            RateDecision {
                allowed: false,
                limit: limit.burst.max(1),
                remaining: 0,
                reset: Duration::from_nanos(tat - now),
                retry_after: Some(Duration::from_nanos(allow_at - now)),
            },
        );
    }
    // `allow_at <= now` means `new_tat - now <= tolerance`.
    let remaining = (tolerance - (new_tat - now)) / interval;
    (
        Some(new_tat),
        RateDecision {
            allowed: true,
            limit: limit.burst.max(1),
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(new_tat - now),
            retry_after: None,
        },
    )
}
