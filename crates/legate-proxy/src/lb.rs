//! Hosts and load balancing.
//!
//! A [`HostSet`] is an immutable view of a cluster's hosts, rebuilt when endpoints change
//! or a host's dynamic state changes (outlier ejection, active health check) and swapped
//! in whole. Picking a host reads only atomics: a shared round-robin cursor and the
//! per-host active request counts used by least-request.
//!
//! Which hosts take traffic follows Envoy: hosts that are available (EDS health not
//! unhealthy, not ejected by outlier detection, not failing active health checks) and
//! healthy first; available degraded hosts only when no healthy host is left; and every
//! host, whatever its state, when the share of available hosts falls below the cluster's
//! `healthy_panic_threshold` (panic mode).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

use http::uri::Authority;
use legate_snapshot::{HealthStatus, LbPolicy};

use crate::hash::HashTable;
use crate::resilience::outlier::HostOutlier;

/// One upstream host. Kept across endpoint updates while its address stays, so its active
/// request count survives; its dynamic state (`HostState`) survives even a change of
/// weight or EDS health.
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, computed once.
    pub authority: Authority,
    /// The name this host was resolved from (STRICT_DNS) or the EDS `hostname`.
    pub hostname: Option<Arc<str>>,
    pub weight: u32,
    /// Health as EDS (or the static config) reports it.
    pub health: HealthStatus,
    active: AtomicU32,
    pub(crate) state: Arc<HostState>,
}

/// What active health checking says about a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveHealth {
    /// Not checked yet (a new host, or health checks just configured).
    Pending,
    /// The last transition was to healthy (or the cluster has no health checks).
    Passed,
    /// Failing: not used unless the cluster is in panic.
    Failed,
}

impl ActiveHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveHealth::Pending => "pending",
            ActiveHealth::Passed => "passed",
            ActiveHealth::Failed => "failed",
        }
    }
}

/// Flag bits of [`HostState::flags`].
pub(crate) mod flag {
    /// Ejected by outlier detection.
    pub(crate) const EJECTED: u8 = 1;
    /// Failing active health checks (Envoy's FAILED_ACTIVE_HC).
    pub(crate) const HC_FAILED: u8 = 2;
    /// No active health check has completed yet (Envoy's PENDING_ACTIVE_HC).
    pub(crate) const HC_PENDING: u8 = 4;
    /// The last passing check asked for degraded (`x-envoy-degraded`).
    pub(crate) const HC_DEGRADED: u8 = 8;
    pub(crate) const HC_ALL: u8 = HC_FAILED | HC_PENDING | HC_DEGRADED;
}

/// The dynamic state of a host, shared by every [`Host`] value for the same address in a
/// cluster: flags set by outlier detection and active health checking, and the outlier
/// detector's counters. Only atomics are touched on the request path.
#[derive(Debug, Default)]
pub(crate) struct HostState {
    flags: AtomicU8,
    pub(crate) outlier: HostOutlier,
}

impl HostState {
    pub(crate) fn with_flags(flags: u8) -> Self {
        HostState {
            flags: AtomicU8::new(flags),
            outlier: HostOutlier::default(),
        }
    }

    pub(crate) fn flags(&self) -> u8 {
        self.flags.load(Ordering::Acquire)
    }

    pub(crate) fn has(&self, f: u8) -> bool {
        self.flags() & f != 0
    }

    /// Set `f`; whether it was clear before.
    pub(crate) fn set(&self, f: u8) -> bool {
        self.flags.fetch_or(f, Ordering::AcqRel) & f != f
    }

    /// Clear `f`; whether any of it was set before.
    pub(crate) fn clear(&self, f: u8) -> bool {
        self.flags.fetch_and(!f, Ordering::AcqRel) & f != 0
    }

    /// Replace the bits under `mask` by `value`; whether anything changed.
    pub(crate) fn replace(&self, mask: u8, value: u8) -> bool {
        let value = value & mask;
        let prev = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some((f & !mask) | value)
            })
            .unwrap_or_else(|f| f);
        prev & mask != value
    }
}

impl Host {
    pub fn new(
        addr: SocketAddr,
        hostname: Option<Arc<str>>,
        weight: u32,
        health: HealthStatus,
    ) -> Self {
        Self::with_state(addr, hostname, weight, health, Arc::default())
    }

    /// A host carrying the dynamic state of an earlier value for the same address.
    pub(crate) fn with_state(
        addr: SocketAddr,
        hostname: Option<Arc<str>>,
        weight: u32,
        health: HealthStatus,
        state: Arc<HostState>,
    ) -> Self {
        let authority = Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("invalid"));
        Host {
            addr,
            authority,
            hostname,
            weight: weight.max(1),
            health,
            active: AtomicU32::new(0),
            state,
        }
    }

    /// Requests in flight to this host.
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Count a request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    /// Ejected by outlier detection.
    pub fn is_ejected(&self) -> bool {
        self.state.has(flag::EJECTED)
    }

    /// How many times outlier detection has ejected this host.
    pub fn times_ejected(&self) -> u32 {
        self.state.outlier.times_ejected()
    }

    pub fn active_health(&self) -> ActiveHealth {
        let f = self.state.flags();
        if f & flag::HC_PENDING != 0 {
            ActiveHealth::Pending
        } else if f & flag::HC_FAILED != 0 {
            ActiveHealth::Failed
        } else {
            ActiveHealth::Passed
        }
    }

    /// Whether the host may take traffic outside panic mode: EDS does not say unhealthy,
    /// outlier detection has not ejected it and active health checking does not fail it.
    pub fn is_available(&self) -> bool {
        self.health != HealthStatus::Unhealthy && !self.state.has(flag::EJECTED | flag::HC_FAILED)
    }

    /// The health the load balancer sees: unhealthy when not available, degraded when EDS
    /// or an active health check says so.
    pub fn effective_health(&self) -> HealthStatus {
        if !self.is_available() {
            HealthStatus::Unhealthy
        } else if self.health == HealthStatus::Degraded || self.state.has(flag::HC_DEGRADED) {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }
}

/// Marks a request in flight on a host; dropping it ends the request.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Host>);

impl ActiveRequest {
    pub fn host(&self) -> &Arc<Host> {
        &self.0
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest weighted round-robin schedule we precompute; beyond it, weighted random.
const MAX_SCHEDULE: usize = 4096;

/// Hosts by state, each host counted once in the first state that applies, in this order:
/// ejected, failing (or pending) active health checks, unhealthy in EDS, degraded, healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub ejected: usize,
    pub hc_failed: usize,
    pub unhealthy: usize,
    pub degraded: usize,
    pub healthy: usize,
}

impl HostCounts {
    /// `(state label, count)` for `legate_cluster_hosts{state}`.
    pub fn by_label(&self) -> [(&'static str, usize); 5] {
        [
            ("healthy", self.healthy),
            ("degraded", self.degraded),
            ("unhealthy", self.unhealthy),
            ("hc_failed", self.hc_failed),
            ("ejected", self.ejected),
        ]
    }
}

/// An immutable set of hosts with what the balancers need precomputed.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    /// Indices into `hosts` eligible for traffic: healthy ones, or degraded ones when none
    /// is healthy; every host in panic mode.
    eligible: Vec<usize>,
    /// Weighted round-robin order over `eligible` (smoothly interleaved), empty when the
    /// weights are too uneven to expand, in which case weighted random is used.
    schedule: Vec<u32>,
    /// Cumulative weights over `eligible`, for weighted random choice.
    cumulative: Vec<u64>,
    equal_weights: bool,
    panic: bool,
    counts: HostCounts,
    /// By index into `hosts`: whether the host is eligible (for hash-based picks, which
    /// walk the table past the others).
    eligible_mask: Vec<bool>,
    /// The ring or Maglev table over `hosts` (RING_HASH and MAGLEV clusters), built when
    /// the membership changes and carried over when only host states do.
    table: Option<Arc<HashTable>>,
}

/// How far a hash-based pick walks the table looking for an eligible host before it
/// gives up on the table (a host too light to own a nearby entry): bounds the work of one
/// pick whatever the table size.
const MAX_TABLE_WALK: usize = 65_536;

impl HostSet {
    /// Precompute the eligible hosts from each host's current state. Panic mode (every
    /// host eligible) starts when healthy plus degraded hosts are fewer than
    /// `panic_threshold_permille`/1000 of all hosts, as Envoy's `healthy_panic_threshold`
    /// (degraded hosts count as available for this, as in Envoy); 0 disables it.
    pub fn new(hosts: Vec<Arc<Host>>, panic_threshold_permille: u32) -> Self {
        let mut counts = HostCounts::default();
        let mut healthy = Vec::new();
        let mut degraded = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let f = h.state.flags();
            if f & flag::EJECTED != 0 {
                counts.ejected += 1;
            } else if f & flag::HC_FAILED != 0 {
                counts.hc_failed += 1;
            } else if h.health == HealthStatus::Unhealthy {
                counts.unhealthy += 1;
            } else if h.health == HealthStatus::Degraded || f & flag::HC_DEGRADED != 0 {
                counts.degraded += 1;
                degraded.push(i);
            } else {
                counts.healthy += 1;
                healthy.push(i);
            }
        }
        let available = (healthy.len() + degraded.len()) as u64;
        let panic = panic_threshold_permille > 0
            && !hosts.is_empty()
            && available * 1000 < u64::from(panic_threshold_permille) * hosts.len() as u64;
        let eligible = if panic {
            (0..hosts.len()).collect()
        } else if healthy.is_empty() {
            degraded
        } else {
            healthy
        };
        let weights: Vec<u32> = eligible.iter().map(|&i| hosts[i].weight).collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut acc = 0u64;
        for w in &weights {
            acc += u64::from(*w);
            cumulative.push(acc);
        }
        let schedule = if equal_weights {
            (0..weights.len() as u32).collect()
        } else {
            smooth_schedule(&weights)
        };
        let mut eligible_mask = vec![false; hosts.len()];
        for &i in &eligible {
            eligible_mask[i] = true;
        }
        HostSet {
            hosts,
            eligible,
            schedule,
            cumulative,
            equal_weights,
            panic,
            counts,
            eligible_mask,
            table: None,
        }
    }

    /// Take `previous`'s hash table when it was built for the same hosts and policy.
    /// Whether the set needs no other table: it took one, or the policy does not hash;
    /// `false` leaves it to [`with_table`](Self::with_table) or
    /// [`with_built_table`](Self::with_built_table).
    pub(crate) fn reuse_table(&mut self, policy: &LbPolicy, previous: &HostSet) -> bool {
        if !policy.is_hashing() {
            return true;
        }
        match &previous.table {
            Some(t)
                if t.policy() == policy
                    && previous.hosts.len() == self.hosts.len()
                    && previous
                        .hosts
                        .iter()
                        .zip(&self.hosts)
                        .all(|(a, b)| Arc::ptr_eq(a, b)) =>
            {
                self.table = Some(t.clone());
                true
            }
            _ => false,
        }
    }

    /// The set with a table built now from its hosts for `policy`.
    pub(crate) fn with_table(mut self, policy: &LbPolicy) -> Self {
        self.table = HashTable::build(policy, &self.hosts).map(Arc::new);
        self
    }

    /// The set with a table built elsewhere for exactly these hosts.
    pub(crate) fn with_built_table(mut self, table: Arc<HashTable>) -> Self {
        self.table = Some(table);
        self
    }

    /// The hash table (RING_HASH and MAGLEV), once built.
    pub(crate) fn table(&self) -> Option<&Arc<HashTable>> {
        self.table.as_ref()
    }

    /// Pick by `hash` on the cluster's table: the host owning the hash's entry, or the
    /// next one around the table that is eligible and, when some eligible host is not in
    /// `avoid` (a retry's `previous_hosts`), not in `avoid`. Deterministic for a given
    /// hash, host set and `avoid`. Without a table (not built, no host) or when the bounded
    /// walk finds nothing, an eligible host chosen by the hash itself.
    pub fn pick_hashed(&self, hash: u64, avoid: &[SocketAddr]) -> Option<&Arc<Host>> {
        if self.eligible.is_empty() {
            return None;
        }
        let avoiding = !avoid.is_empty()
            && self
                .eligible
                .iter()
                .any(|&i| !avoid.contains(&self.hosts[i].addr));
        let usable = |i: usize| {
            self.eligible_mask.get(i).copied().unwrap_or(false)
                && !(avoiding && avoid.contains(&self.hosts[i].addr))
        };
        if let Some(t) = &self.table
            && let Some(i) = t.walk(hash, MAX_TABLE_WALK).find(|&i| usable(i))
        {
            return Some(&self.hosts[i]);
        }
        let candidates: Vec<usize> = self
            .eligible
            .iter()
            .copied()
            .filter(|&i| usable(i))
            .collect();
        let pool = if candidates.is_empty() {
            &self.eligible
        } else {
            &candidates
        };
        Some(&self.hosts[pool[(hash % pool.len() as u64) as usize]])
    }

    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
    }

    /// Whether the set balances across every host because too few are available.
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    pub fn counts(&self) -> HostCounts {
        self.counts
    }

    /// Choose a host, or `None` when no host can take traffic.
    pub fn pick(&self, policy: &LbPolicy, cursor: &AtomicUsize) -> Option<&Arc<Host>> {
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(&self.hosts[self.eligible[0]]);
        }
        let slot = match *policy {
            LbPolicy::RoundRobin => {
                if self.schedule.is_empty() {
                    self.weighted_random()
                } else {
                    let i = cursor.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
                    self.schedule[i] as usize
                }
            }
            LbPolicy::Random => self.weighted_random(),
            LbPolicy::LeastRequest {
                choice_count,
                active_request_bias_milli,
            } => self.least_request(choice_count.max(2), active_request_bias_milli),
            // A request without a hash lands on a random point of the table, as in Envoy.
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                return self.pick_hashed(fastrand::u64(..), &[]);
            }
        };
        Some(&self.hosts[self.eligible[slot]])
    }

    fn weighted_random(&self) -> usize {
        if self.equal_weights {
            return fastrand::usize(..self.eligible.len());
        }
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// Envoy's least-request: with equal weights, the fewest active requests among
    /// `choices` random hosts; with unequal weights, the highest
    /// `weight / (active + 1)^bias` among them.
    fn least_request(&self, choices: u32, bias_milli: u32) -> usize {
        let mut best = self.pick_for_choice();
        let mut best_score = self.score(best, bias_milli);
        for _ in 1..choices {
            let c = self.pick_for_choice();
            let s = self.score(c, bias_milli);
            if s > best_score {
                best = c;
                best_score = s;
            }
        }
        best
    }

    fn pick_for_choice(&self) -> usize {
        if self.equal_weights {
            fastrand::usize(..self.eligible.len())
        } else {
            self.weighted_random()
        }
    }

    fn score(&self, slot: usize, bias_milli: u32) -> f64 {
        let host = &self.hosts[self.eligible[slot]];
        let active = f64::from(host.active_requests()) + 1.0;
        if self.equal_weights {
            return -active;
        }
        let bias = f64::from(bias_milli) / 1000.0;
        let denom = if bias == 1.0 {
            active
        } else {
            active.powf(bias)
        };
        f64::from(host.weight) / denom
    }
}

/// Smooth weighted round robin expanded into one full cycle: each host appears `weight/g`
/// times (g the gcd of the weights), spread out rather than in runs. Empty when the cycle
/// would exceed [`MAX_SCHEDULE`].
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    if total as usize > MAX_SCHEDULE {
        return Vec::new();
    }
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Host::new(
                    SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
                    None,
                    *w,
                    HealthStatus::Healthy,
                ))
            })
            .collect()
    }

    fn counts(set: &HostSet, policy: LbPolicy, n: usize) -> Vec<usize> {
        let cursor = AtomicUsize::new(0);
        let mut c = vec![0; set.hosts.len()];
        for _ in 0..n {
            let h = set.pick(&policy, &cursor).expect("host");
            c[(h.addr.port() - 8000) as usize] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exact_with_equal_weights() {
        let set = HostSet::new(hosts(&[1, 1, 1]), 0);
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        let set = HostSet::new(hosts(&[3, 1]), 0);
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 400), vec![300, 100]);
        // Smooth: the light host is not starved for a whole run of the heavy one.
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn huge_weight_ratio_falls_back_to_random() {
        let set = HostSet::new(hosts(&[10_000, 1]), 0);
        assert!(set.schedule.is_empty());
        let c = counts(&set, LbPolicy::RoundRobin, 2000);
        assert!(c[0] > 1900, "{c:?}");
    }

    #[test]
    fn random_respects_weights() {
        let set = HostSet::new(hosts(&[3, 1]), 0);
        let c = counts(&set, LbPolicy::Random, 8000);
        let share = c[0] as f64 / 8000.0;
        assert!((0.70..0.80).contains(&share), "{c:?}");
    }

    #[test]
    fn least_request_avoids_busy_host() {
        let set = HostSet::new(hosts(&[1, 1]), 0);
        let _busy: Vec<_> = (0..10).map(|_| set.hosts[0].start_request()).collect();
        let policy = LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias_milli: 1000,
        };
        let c = counts(&set, policy, 1000);
        // Host 0 only wins when both random choices land on it (~1/4 of the time).
        assert!(c[1] > 650, "{c:?}");
        assert_eq!(set.hosts[0].active_requests(), 10);
    }

    #[test]
    fn unhealthy_hosts_are_skipped_and_degraded_used_last() {
        let mut hs = hosts(&[1, 1, 1]);
        hs[0] = Arc::new(Host::new(hs[0].addr, None, 1, HealthStatus::Unhealthy));
        hs[1] = Arc::new(Host::new(hs[1].addr, None, 1, HealthStatus::Degraded));
        let set = HostSet::new(hs.clone(), 0);
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 10), vec![0, 0, 10]);
        hs[2] = Arc::new(Host::new(hs[2].addr, None, 1, HealthStatus::Unhealthy));
        let set = HostSet::new(hs.clone(), 0);
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 10), vec![0, 10, 0]);
        hs[1] = Arc::new(Host::new(hs[1].addr, None, 1, HealthStatus::Unhealthy));
        let set = HostSet::new(hs, 0);
        assert!(
            set.pick(&LbPolicy::RoundRobin, &AtomicUsize::new(0))
                .is_none()
        );
    }

    fn picks(set: &HostSet, n: usize) -> Vec<usize> {
        counts(set, LbPolicy::RoundRobin, n)
    }

    #[test]
    fn panic_mode_balances_across_all_hosts_below_the_threshold() {
        let mut hs = hosts(&[1, 1, 1, 1]);
        for h in &mut hs[1..] {
            *h = Arc::new(Host::new(h.addr, None, 1, HealthStatus::Unhealthy));
        }
        // 1 of 4 available (25%) is below 50%: every host, unhealthy ones included.
        let set = HostSet::new(hs.clone(), 500);
        assert!(set.in_panic());
        assert_eq!(picks(&set, 400), vec![100, 100, 100, 100]);
        // Disabled: only the healthy host.
        let set = HostSet::new(hs.clone(), 0);
        assert!(!set.in_panic());
        assert_eq!(picks(&set, 10), vec![10, 0, 0, 0]);
        // Exactly at the threshold is not panic.
        hs[1] = Arc::new(Host::new(hs[1].addr, None, 1, HealthStatus::Healthy));
        let set = HostSet::new(hs.clone(), 500);
        assert!(!set.in_panic());
        assert_eq!(picks(&set, 10), vec![5, 5, 0, 0]);
        // Degraded hosts count as available for the threshold but are used only when no
        // healthy host is left.
        hs[1] = Arc::new(Host::new(hs[1].addr, None, 1, HealthStatus::Degraded));
        let set = HostSet::new(hs.clone(), 500);
        assert!(!set.in_panic());
        assert_eq!(picks(&set, 10), vec![10, 0, 0, 0]);
        // An empty set is not in panic and has nothing to pick.
        let set = HostSet::new(Vec::new(), 500);
        assert!(!set.in_panic());
        assert!(
            set.pick(&LbPolicy::RoundRobin, &AtomicUsize::new(0))
                .is_none()
        );
    }

    #[test]
    fn ejected_and_failing_hosts_are_unavailable_and_counted() {
        let hs = hosts(&[1, 1, 1, 1, 1]);
        hs[0].state.set(flag::EJECTED);
        hs[1].state.set(flag::HC_FAILED | flag::HC_PENDING);
        // Pending alone (checks just configured on a serving host) keeps it in service.
        hs[2].state.set(flag::HC_PENDING);
        hs[3].state.set(flag::HC_DEGRADED);
        let set = HostSet::new(hs.clone(), 500);
        assert!(!set.in_panic());
        assert_eq!(picks(&set, 10), vec![0, 0, 5, 0, 5]);
        assert_eq!(
            set.counts(),
            HostCounts {
                ejected: 1,
                hc_failed: 1,
                unhealthy: 0,
                degraded: 1,
                healthy: 2,
            }
        );
        assert!(!hs[0].is_available());
        assert_eq!(hs[1].active_health(), ActiveHealth::Pending);
        assert_eq!(hs[1].effective_health(), HealthStatus::Unhealthy);
        assert_eq!(hs[3].effective_health(), HealthStatus::Degraded);
        // Two of five available (40%) is below a 50% threshold once another fails.
        hs[4].state.set(flag::HC_FAILED);
        let set = HostSet::new(hs.clone(), 500);
        assert!(set.in_panic());
        assert_eq!(picks(&set, 50), vec![10, 10, 10, 10, 10]);
        // Passing again.
        assert!(hs[4].state.replace(flag::HC_ALL, 0));
        assert!(!hs[4].state.replace(flag::HC_ALL, 0));
        assert_eq!(hs[4].active_health(), ActiveHealth::Passed);
    }
}
