//! Envoy's circuit breakers: per-cluster counts of connections, pending requests, requests
//! and retries against the `circuit_breakers.thresholds` of DEFAULT priority.
//!
//! Acquiring is one `fetch_add` (undone when over the limit); the guard gives the slot back
//! on drop. Limits can change under live traffic ([`ResourceLimits::update`]): counts carry
//! over and only new acquisitions see the new maximum.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use legate_snapshot::Thresholds;
use legate_telemetry::Gauge;

/// One of the four limited resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

impl Resource {
    pub(crate) const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::PendingRequests,
        Resource::Requests,
        Resource::Retries,
    ];

    /// The `resource` label of the remaining-capacity gauge.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::PendingRequests => "pending_requests",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Remaining-capacity gauges, one per [`Resource`] in [`Resource::ALL`] order.
pub(crate) type RemainingGauges = [Arc<Gauge>; 4];

/// Live counts and limits of one cluster.
#[derive(Debug)]
pub(crate) struct ResourceLimits {
    in_use: [AtomicU32; 4],
    max: [AtomicU32; 4],
    /// Retry budget as (permille of active requests, minimum concurrency); permille 0
    /// means no budget (the `max_retries` limit applies).
    budget_permille: AtomicU32,
    budget_min: AtomicU32,
    remaining: RemainingGauges,
}

impl ResourceLimits {
    pub(crate) fn new(t: &Thresholds, remaining: RemainingGauges) -> Arc<Self> {
        let limits = Arc::new(ResourceLimits {
            in_use: Default::default(),
            max: Default::default(),
            budget_permille: AtomicU32::new(0),
            budget_min: AtomicU32::new(0),
            remaining,
        });
        limits.update(t);
        limits
    }

    /// Apply new thresholds; in-flight counts are kept.
    pub(crate) fn update(&self, t: &Thresholds) {
        let maxima = [
            t.max_connections,
            t.max_pending_requests,
            t.max_requests,
            t.max_retries,
        ];
        for (slot, v) in self.max.iter().zip(maxima) {
            slot.store(v, Ordering::Relaxed);
        }
        let (permille, min) = t.retry_budget.map_or((0, 0), |b| {
            (b.budget_permille.max(1), b.min_retry_concurrency)
        });
        self.budget_permille.store(permille, Ordering::Relaxed);
        self.budget_min.store(min, Ordering::Relaxed);
        for r in Resource::ALL {
            self.publish(r);
        }
    }

    /// The limit currently applying to `r`. For retries under a budget it depends on the
    /// requests in flight.
    pub(crate) fn max(&self, r: Resource) -> u32 {
        if r == Resource::Retries {
            let permille = self.budget_permille.load(Ordering::Relaxed);
            if permille > 0 {
                let active = u64::from(self.in_use(Resource::Requests))
                    + u64::from(self.in_use(Resource::PendingRequests));
                let budget = u32::try_from(active * u64::from(permille) / 1000).unwrap_or(u32::MAX);
                return budget.max(self.budget_min.load(Ordering::Relaxed));
            }
        }
        self.max[r.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn in_use(&self, r: Resource) -> u32 {
        self.in_use[r.index()].load(Ordering::Relaxed)
    }

    /// Take one unit of `r`, or `None` when the limit is reached.
    pub(crate) fn try_acquire(self: &Arc<Self>, r: Resource) -> Option<LimitGuard> {
        let max = self.max(r);
        let prev = self.in_use[r.index()].fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.in_use[r.index()].fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.publish(r);
        Some(LimitGuard {
            limits: self.clone(),
            resource: r,
        })
    }

    fn release(&self, r: Resource) {
        self.in_use[r.index()].fetch_sub(1, Ordering::AcqRel);
        self.publish(r);
    }

    fn publish(&self, r: Resource) {
        let remaining = i64::from(self.max(r)) - i64::from(self.in_use(r));
        self.remaining[r.index()].set(remaining.max(0));
    }
}

/// One unit of a limited resource, given back on drop.
#[derive(Debug)]
pub(crate) struct LimitGuard {
    limits: Arc<ResourceLimits>,
    resource: Resource,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.limits.release(self.resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_snapshot::RetryBudget;

    fn gauges() -> RemainingGauges {
        std::array::from_fn(|_| Arc::new(Gauge::default()))
    }

    #[test]
    fn acquire_up_to_the_limit_then_refuse_and_release_on_drop() {
        let t = Thresholds {
            max_requests: 2,
            ..Thresholds::default()
        };
        let l = ResourceLimits::new(&t, gauges());
        let a = l.try_acquire(Resource::Requests).expect("first");
        let b = l.try_acquire(Resource::Requests).expect("second");
        assert!(l.try_acquire(Resource::Requests).is_none());
        assert_eq!(l.remaining[Resource::Requests.index()].get(), 0);
        drop(a);
        assert_eq!(l.remaining[Resource::Requests.index()].get(), 1);
        let _c = l.try_acquire(Resource::Requests).expect("after release");
        drop(b);
        assert_eq!(l.in_use(Resource::Requests), 1);
    }

    #[test]
    fn retry_budget_scales_with_active_requests() {
        let t = Thresholds {
            retry_budget: Some(RetryBudget {
                budget_permille: 200,
                min_retry_concurrency: 1,
            }),
            ..Thresholds::default()
        };
        let l = ResourceLimits::new(&t, gauges());
        // No traffic: the minimum applies.
        assert_eq!(l.max(Resource::Retries), 1);
        let reqs: Vec<_> = (0..20)
            .map(|_| l.try_acquire(Resource::Requests).expect("request"))
            .collect();
        assert_eq!(l.max(Resource::Retries), 4);
        let retries: Vec<_> = (0..4)
            .map(|_| l.try_acquire(Resource::Retries).expect("retry"))
            .collect();
        assert!(l.try_acquire(Resource::Retries).is_none());
        drop(retries);
        drop(reqs);
    }

    #[test]
    fn update_changes_limits_but_keeps_counts() {
        let l = ResourceLimits::new(&Thresholds::default(), gauges());
        let _a = l.try_acquire(Resource::Connections).expect("conn");
        l.update(&Thresholds {
            max_connections: 1,
            ..Thresholds::default()
        });
        assert!(l.try_acquire(Resource::Connections).is_none());
        assert_eq!(l.in_use(Resource::Connections), 1);
    }
}
