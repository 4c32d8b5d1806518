//! The one exponential back-off legate uses: between retries of a request (a route's
//! `retry_back_off`) and between reconnections to a control plane.
//!
//! Envoy's jittered exponential back-off: the ceiling doubles with every attempt from `base`
//! up to `max`, and the wait is drawn uniformly from `[0, ceiling]` ("full jitter"), so that
//! many clients that failed together do not come back together.

use std::time::Duration;

use crate::RetryBackOff;

impl RetryBackOff {
    /// The longest wait before retry number `retry` (0 for the first): `base × 2^retry`,
    /// never more than `max`. Saturates instead of overflowing for any `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random wait before retry number `retry`: uniform in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let nanos = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_up_to_max_and_saturates() {
        let b = RetryBackOff {
            base: ms(25),
            max: ms(250),
        };
        let ceilings: Vec<Duration> = (0..6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]
        );
        assert_eq!(b.ceiling(31), ms(250));
        assert_eq!(b.ceiling(u32::MAX), ms(250));
        let huge = RetryBackOff {
            base: Duration::MAX / 2,
            max: Duration::MAX,
        };
        assert_eq!(huge.ceiling(5), Duration::MAX);
        let zero = RetryBackOff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn delay_is_full_jitter_below_the_ceiling() {
        let b = RetryBackOff {
            base: ms(25),
            max: ms(250),
        };
        for _ in 0..200 {
            assert!(b.delay(0) <= ms(25));
            assert!(b.delay(1) <= ms(50));
            assert!(b.delay(40) <= ms(250));
        }
        // Full jitter: draws land in the lower half too, not only in [ceiling/2, ceiling]
        // (the odds that 200 uniform draws miss either half are 2^-199).
        let draws: Vec<Duration> = (0..200).map(|_| b.delay(3)).collect();
        assert!(draws.iter().any(|d| *d < ms(50)), "{draws:?}");
        assert!(draws.iter().any(|d| *d > ms(150)), "{draws:?}");
    }
}
