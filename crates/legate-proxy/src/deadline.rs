//! Deadlines from durations that come from configuration or from an upstream.
//!
//! `Instant + Duration` panics when the sum does not fit. Validation caps configured
//! durations at [`legate_snapshot::MAX_DURATION`], but waits an upstream asks for
//! (`Retry-After`, rate-limit reset headers) and sums of several durations are only bounded
//! by policy, so every deadline on the request path, in health checking and in the breakers
//! is computed here, saturating instead of panicking.

use std::time::Duration;

use legate_snapshot::MAX_DURATION;
use tokio::time::Instant;

/// `now + wait`, with `wait` cut to [`MAX_DURATION`]; `now` itself if even that does not
/// fit (a clock near its end).
pub(crate) fn after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(MAX_DURATION)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_waits_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        assert_eq!(after(now, Duration::MAX), now + MAX_DURATION);
        assert_eq!(
            after(now, Duration::from_secs(i64::MAX as u64)),
            now + MAX_DURATION
        );
    }
}
