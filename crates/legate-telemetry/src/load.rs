//! The load-report (LRS) vocabulary both planes share: a cluster's counters as the proxy
//! reads them, and how upstream latency travels in Envoy's `load_metric_stats`.
//!
//! Latency scheme: every report carries, per locality, one `EndpointLoadMetricStats` per
//! bucket of [`LATENCY_BUCKETS`] that had an observation in the
//! interval, named `legate.latency_ms.le_<bound in ms>` (`le_0.5` ... `le_10000`, and
//! `le_inf` for the overflow bucket). Both its `num_requests_finished_with_metric` and its
//! `total_metric_value` are the number of attempts completed in the interval whose latency
//! fell in that bucket, above the previous bound: per-bucket counts, not cumulative. One more
//! metric, `legate.latency_ms` ([`LATENCY_SUM_METRIC`]), carries all completed attempts in
//! `num_requests_finished_with_metric` and the sum of their latencies in milliseconds in
//! `total_metric_value`, so the mean is exact. A percentile is known to the precision of the
//! bucket it falls in ([`quantile_ms`] interpolates linearly inside it, as Prometheus'
//! `histogram_quantile` does).

use crate::{LATENCY_BUCKET_COUNT, LATENCY_BUCKETS};

/// The metric that carries the count and the sum (ms) of the completed attempts' latencies.
pub const LATENCY_SUM_METRIC: &str = "legate.latency_ms";

/// Prefix of the latency bucket metrics' names.
pub const LATENCY_METRIC_PREFIX: &str = "legate.latency_ms.le_";

/// A reading of one cluster's load counters: cumulative since the cluster was created,
/// except `in_progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Upstream attempts handed to the connection pool.
    pub issued: u64,
    /// Attempts answered with a status below 500.
    pub succeeded: u64,
    /// Attempts answered with a 5xx, or failed locally (connect error, reset, timeout).
    pub errored: u64,
    /// Attempts issued and not yet completed.
    pub in_progress: u64,
    /// Requests the cluster refused without an attempt (no healthy host, overflow, open
    /// breaker).
    pub dropped: u64,
    /// Completed attempts per latency bucket (not cumulative), overflow bucket last.
    pub latency_buckets: [u64; LATENCY_BUCKET_COUNT],
    /// Sum of the completed attempts' latencies, in nanoseconds.
    pub latency_sum_nanos: u64,
}

impl LoadCounts {
    /// What happened between `earlier` and `self` (`in_progress` is `self`'s). Counters
    /// that went backwards (a cluster removed and re-created) count from zero.
    pub fn since(&self, earlier: &LoadCounts) -> LoadCounts {
        let d = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        LoadCounts {
            issued: d(self.issued, earlier.issued),
            succeeded: d(self.succeeded, earlier.succeeded),
            errored: d(self.errored, earlier.errored),
            in_progress: self.in_progress,
            dropped: d(self.dropped, earlier.dropped),
            latency_buckets: std::array::from_fn(|i| {
                d(self.latency_buckets[i], earlier.latency_buckets[i])
            }),
            latency_sum_nanos: d(self.latency_sum_nanos, earlier.latency_sum_nanos),
        }
    }
}

/// The name of latency bucket `i` (`0..LATENCY_BUCKET_COUNT`).
pub fn latency_metric_name(i: usize) -> String {
    match LATENCY_BUCKETS.get(i) {
        Some(bound) => format!("{LATENCY_METRIC_PREFIX}{}", bound * 1000.0),
        None => format!("{LATENCY_METRIC_PREFIX}inf"),
    }
}

/// The bucket a latency metric's name stands for; `None` for any other name.
pub fn latency_bucket_of(name: &str) -> Option<usize> {
    let bound = name.strip_prefix(LATENCY_METRIC_PREFIX)?;
    if bound == "inf" {
        return Some(LATENCY_BUCKETS.len());
    }
    (0..LATENCY_BUCKETS.len()).find(|&i| latency_metric_name(i) == name)
}

/// Upper bound of bucket `i` in milliseconds (`None` for the overflow bucket).
pub fn bucket_bound_ms(i: usize) -> Option<f64> {
    LATENCY_BUCKETS.get(i).map(|b| b * 1000.0)
}

/// The `q` quantile (0..=1) of per-bucket counts, in milliseconds, interpolated linearly
/// inside its bucket; a quantile in the overflow bucket is that bucket's lower bound.
/// `None` without observations.
pub fn quantile_ms(buckets: &[u64; LATENCY_BUCKET_COUNT], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().fold(0u64, |a, b| a.saturating_add(*b));
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        let upto = below.saturating_add(n);
        if n > 0 && upto as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                bucket_bound_ms(i - 1).unwrap_or(0.0)
            };
            let Some(upper) = bucket_bound_ms(i) else {
                return Some(lower);
            };
            let within = (rank - below as f64) / n as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below = upto;
    }
    bucket_bound_ms(LATENCY_BUCKETS.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip() {
        assert_eq!(latency_metric_name(0), "legate.latency_ms.le_0.5");
        assert_eq!(latency_metric_name(4), "legate.latency_ms.le_10");
        assert_eq!(latency_metric_name(14), "legate.latency_ms.le_inf");
        for i in 0..LATENCY_BUCKET_COUNT {
            assert_eq!(latency_bucket_of(&latency_metric_name(i)), Some(i));
        }
        assert_eq!(latency_bucket_of("legate.latency_ms.le_7"), None);
        assert_eq!(latency_bucket_of("cpu"), None);
    }

    #[test]
    fn quantiles_fall_in_their_bucket() {
        let mut b = [0u64; LATENCY_BUCKET_COUNT];
        assert_eq!(quantile_ms(&b, 0.5), None);
        // 99 in (50, 100] ms, 1 in (250, 500] ms.
        b[7] = 99;
        b[9] = 1;
        let p50 = quantile_ms(&b, 0.5).expect("a quantile");
        assert!(p50 > 50.0 && p50 <= 100.0, "{p50}");
        let p99 = quantile_ms(&b, 0.99).expect("a quantile");
        assert!(p99 > 50.0 && p99 <= 100.0, "{p99}");
        let p999 = quantile_ms(&b, 0.999).expect("a quantile");
        assert!(p999 > 250.0 && p999 <= 500.0, "{p999}");
        b[14] = 1000;
        assert_eq!(quantile_ms(&b, 0.99), Some(10_000.0));
    }

    #[test]
    fn differences_survive_a_reset() {
        let mut a = LoadCounts {
            issued: 10,
            ..LoadCounts::default()
        };
        let b = LoadCounts {
            issued: 3,
            ..LoadCounts::default()
        };
        assert_eq!(b.since(&a).issued, 3);
        a.issued = 1;
        assert_eq!(b.since(&a).issued, 2);
    }
}
