//! Hosts and load balancing.
//!
//! A [`HostSet`] is an immutable view of a cluster's hosts, rebuilt when endpoints change
//! and swapped in whole. Picking a host reads only atomics: a shared round-robin cursor and
//! the per-host active request counts used by least-request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use http::uri::Authority;
use legate_snapshot::{HealthStatus, LbPolicy};

/// One upstream host. Kept across endpoint updates while its address stays, so its active
/// request count survives.
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, computed once.
    pub authority: Authority,
    /// The name this host was resolved from (STRICT_DNS) or the EDS `hostname`.
    pub hostname: Option<Arc<str>>,
    pub weight: u32,
    pub health: HealthStatus,
    active: AtomicU32,
}

impl Host {
    pub fn new(
        addr: SocketAddr,
        hostname: Option<Arc<str>>,
        weight: u32,
        health: HealthStatus,
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

/// An immutable set of hosts with what the balancers need precomputed.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    /// Indices into `hosts` eligible for traffic: healthy ones, or degraded ones when none
    /// is healthy.
    eligible: Vec<usize>,
    /// Weighted round-robin order over `eligible` (smoothly interleaved), empty when the
    /// weights are too uneven to expand, in which case weighted random is used.
    schedule: Vec<u32>,
    /// Cumulative weights over `eligible`, for weighted random choice.
    cumulative: Vec<u64>,
    equal_weights: bool,
}

impl HostSet {
    pub fn new(hosts: Vec<Arc<Host>>) -> Self {
        let mut eligible: Vec<usize> = (0..hosts.len())
            .filter(|&i| hosts[i].health == HealthStatus::Healthy)
            .collect();
        if eligible.is_empty() {
            eligible = (0..hosts.len())
                .filter(|&i| hosts[i].health == HealthStatus::Degraded)
                .collect();
        }
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
        HostSet {
            hosts,
            eligible,
            schedule,
            cumulative,
            equal_weights,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
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
        let set = HostSet::new(hosts(&[1, 1, 1]));
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        let set = HostSet::new(hosts(&[3, 1]));
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 400), vec![300, 100]);
        // Smooth: the light host is not starved for a whole run of the heavy one.
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn huge_weight_ratio_falls_back_to_random() {
        let set = HostSet::new(hosts(&[10_000, 1]));
        assert!(set.schedule.is_empty());
        let c = counts(&set, LbPolicy::RoundRobin, 2000);
        assert!(c[0] > 1900, "{c:?}");
    }

    #[test]
    fn random_respects_weights() {
        let set = HostSet::new(hosts(&[3, 1]));
        let c = counts(&set, LbPolicy::Random, 8000);
        let share = c[0] as f64 / 8000.0;
        assert!((0.70..0.80).contains(&share), "{c:?}");
    }

    #[test]
    fn least_request_avoids_busy_host() {
        let set = HostSet::new(hosts(&[1, 1]));
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
        let set = HostSet::new(hs.clone());
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 10), vec![0, 0, 10]);
        hs[2] = Arc::new(Host::new(hs[2].addr, None, 1, HealthStatus::Unhealthy));
        let set = HostSet::new(hs.clone());
        assert_eq!(counts(&set, LbPolicy::RoundRobin, 10), vec![0, 10, 0]);
        hs[1] = Arc::new(Host::new(hs[1].addr, None, 1, HealthStatus::Unhealthy));
        let set = HostSet::new(hs);
        assert!(
            set.pick(&LbPolicy::RoundRobin, &AtomicUsize::new(0))
                .is_none()
        );
    }
}
