//! Per-cluster load counters for load reporting (LRS): what a reporter reads and sends as
//! Envoy's `UpstreamLocalityStats`, kept as a handful of atomics per cluster so the request
//! path pays a few relaxed increments per attempt.
//!
//! Counts are cumulative from the cluster's creation (they survive compatible redefinitions,
//! like the cluster's other stats); a reporter keeps the previous reading and sends the
//! difference. An attempt is *issued* when it is handed to the pool, and *completes* when its
//! response headers arrive (succeeded: status below 500; errored: a 5xx or a local failure
//! such as a connect error or a timeout). An attempt abandoned before either (the loser of a
//! hedge, a request whose client went away) leaves *in progress* and is counted as neither,
//! so `issued = succeeded + errored + in progress + abandoned` over any interval. *Dropped*
//! counts requests the cluster refused without sending anything: no healthy host, a
//! circuit-breaker overflow, an open classic breaker. Latency of the completed attempts is in
//! the cluster's `legate_upstream_request_duration_seconds` histogram, whose buckets the
//! reporter reads the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ProxyError;
pub use legate_telemetry::load::LoadCounts;

/// The atomics of one cluster.
#[derive(Debug, Default)]
pub(crate) struct ClusterLoad {
    issued: AtomicU64,
    succeeded: AtomicU64,
    errored: AtomicU64,
    /// Attempts issued and not yet completed or abandoned.
    in_progress: AtomicU64,
    dropped: AtomicU64,
}

impl ClusterLoad {
    /// An attempt is handed to the pool.
    pub(crate) fn begin(self: &Arc<Self>) -> Attempt {
        self.issued.fetch_add(1, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        Attempt {
            load: Some(Arc::clone(self)),
        }
    }

    /// A request refused by the cluster without an attempt.
    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.issued.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.errored.load(Ordering::Relaxed),
            self.in_progress.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// One attempt in progress; dropping it unfinished counts it as abandoned.
#[derive(Debug)]
pub(crate) struct Attempt {
    load: Option<Arc<ClusterLoad>>,
}

impl Attempt {
    /// The attempt completed: `ok` when the upstream answered below 500.
    pub(crate) fn finish(mut self, ok: bool) {
        if let Some(load) = self.load.take() {
            let counter = if ok { &load.succeeded } else { &load.errored };
            counter.fetch_add(1, Ordering::Relaxed);
            load.in_progress.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(load) = self.load.take() {
            load.in_progress.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether a request that failed with `e` was refused by its cluster before any attempt.
pub(crate) fn refused_unsent(e: ProxyError) -> bool {
    matches!(
        e,
        ProxyError::NoHealthyUpstream | ProxyError::OverflowMaxRequests | ProxyError::CircuitOpen
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_move_between_counters() {
        let load = Arc::new(ClusterLoad::default());
        let a = load.begin();
        let b = load.begin();
        let c = load.begin();
        assert_eq!(load.read(), (3, 0, 0, 3, 0));
        a.finish(true);
        b.finish(false);
        drop(c);
        load.dropped();
        assert_eq!(load.read(), (3, 1, 1, 0, 1));
    }
}
