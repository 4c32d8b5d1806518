//! A token bucket shared by every worker: one atomic, no lock.
//!
//! The state is the instant (in nanoseconds since the bucket's epoch) at which the bucket
//! was, or will be, empty if nothing else is taken. The tokens at `now` are the time
//! elapsed since then divided by the time one token takes to refill, capped at the
//! bucket's size. Taking a token moves that instant one token's time later. Tokens refill
//! continuously at `tokens_per_fill / fill_interval`, as Envoy's atomic token bucket does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use legate_snapshot::filter::TokenBucket;
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Bucket {
    config: TokenBucket,
    epoch: Instant,
    /// Nanoseconds one token takes to refill; at least 1.
    per_token: u64,
    /// `max_tokens * per_token`: how far back the empty instant can lie.
    full_span: u64,
    empty_at: AtomicU64,
}

/// What taking a token said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) allowed: bool,
    /// Tokens left after this request.
    pub(crate) remaining: u32,
    /// Until the next token is there.
    pub(crate) next_token: Duration,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(config: TokenBucket) -> Self {
        let interval = u64::try_from(config.fill_interval.as_nanos()).unwrap_or(u64::MAX);
        let per_token = (interval / u64::from(config.tokens_per_fill.max(1))).max(1);
        let full_span = per_token.saturating_mul(u64::from(config.max_tokens));
        Bucket {
            config,
            epoch: Instant::now(),
            per_token,
            full_span,
            // Time starts at `full_span` (see `now`), so zero here means full.
            empty_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn config(&self) -> TokenBucket {
        self.config
    }

    /// Tokens per second, for ordering buckets from the most restrictive.
    pub(crate) fn fill_rate(&self) -> f64 {
        1e9 / self.per_token as f64
    }

    /// Nanoseconds from the epoch to `at`, shifted by `full_span` so that a new bucket is
    /// full without a negative instant.
    fn offset(&self, at: Instant) -> u64 {
        let since =
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        since.saturating_add(self.full_span)
    }

    /// Take one token if there is one.
    pub(crate) fn take(&self) -> Taken {
        self.take_at(Instant::now())
    }

    fn take_at(&self, at: Instant) -> Taken {
        let now = self.offset(at);
        let mut current = self.empty_at.load(Ordering::Relaxed);
        loop {
            // A bucket idle for long is full, not fuller.
            let start = current.max(now.saturating_sub(self.full_span));
            let elapsed = now.saturating_sub(start);
            let tokens = elapsed / self.per_token;
            let until_next = self.per_token - elapsed % self.per_token;
            if tokens == 0 {
                return Taken {
                    allowed: false,
                    remaining: 0,
                    next_token: Duration::from_nanos(until_next),
                };
            }
            let next = start.saturating_add(self.per_token);
            match self.empty_at.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Taken {
                        allowed: true,
                        remaining: u32::try_from(tokens - 1).unwrap_or(u32::MAX),
                        next_token: Duration::from_nanos(until_next),
                    };
                }
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(max: u32, per_fill: u32, interval_ms: u64) -> Bucket {
        Bucket::new(TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(interval_ms),
        })
    }

    #[test]
    fn starts_full_then_refuses() {
        let b = bucket(3, 1, 1000);
        let r: Vec<_> = (0..4).map(|_| b.take_at(b.epoch)).collect();
        assert_eq!(
            r.iter()
                .map(|t| (t.allowed, t.remaining))
                .collect::<Vec<_>>(),
            vec![(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(r[3].next_token, Duration::from_secs(1));
    }

    #[test]
    fn refills_at_the_configured_rate_and_no_further_than_full() {
        let b = bucket(2, 2, 1000);
        let at = |ms: u64| b.epoch + Duration::from_millis(ms);
        assert!(b.take_at(at(0)).allowed);
        assert!(b.take_at(at(0)).allowed);
        assert!(!b.take_at(at(0)).allowed);
        // Two tokens a second: one every 500 ms.
        let t = b.take_at(at(499));
        assert!(!t.allowed);
        assert_eq!(t.next_token, Duration::from_millis(1));
        let t = b.take_at(at(500));
        assert!(t.allowed);
        assert_eq!(t.remaining, 0);
        // A long idle time fills the bucket to max_tokens only.
        assert_eq!(b.take_at(at(3_600_000)).remaining, 1);
        assert_eq!(b.take_at(at(3_600_000)).remaining, 0);
        assert!(!b.take_at(at(3_600_000)).allowed);
        // A clock read before the last one (another thread's) takes nothing it should not.
        assert!(!b.take_at(at(3_599_999)).allowed);
    }

    #[test]
    fn shared_between_threads_gives_out_exactly_max_tokens() {
        let b = std::sync::Arc::new(bucket(1000, 1, 3_600_000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.take().allowed).count())
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(allowed, 1000);
    }
}
