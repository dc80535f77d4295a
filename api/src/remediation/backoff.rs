//! Exponential backoff with jitter ("equal jitter": half fixed, half random), so retries of many
//! runs against a throttled AWS API spread out instead of arriving together.

use std::time::Duration;

use rand::Rng;

/// Delay before attempt `attempt + 1`, after `attempt` (≥ 1) failed: `base · 2^(attempt-1)`
/// capped at `cap`, then a random point in its upper half.
pub fn delay(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let full = base.saturating_mul(1 << exponent).min(cap);
    let half = full / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_stays_under_the_cap() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(30);
        for attempt in 1..40 {
            let d = delay(attempt, base, cap);
            assert!(d <= cap + Duration::from_millis(1), "{attempt}: {d:?}");
            let full = base.saturating_mul(1 << (attempt - 1).min(20)).min(cap);
            assert!(d >= full / 2, "{attempt}: {d:?}");
        }
        assert!(delay(1, base, cap) <= Duration::from_millis(201));
    }
}
