//! Outlier detection (passive health checking), with Envoy's semantics.
//!
//! The request path reports each attempt's [`Outcome`] to [`Detector::record`], which only
//! bumps atomics on the host ([`HostOutlier`]) and says when a consecutive-failure
//! threshold was just reached. The cluster then asks [`Detector::eject`] under its host
//! update lock, and rebuilds its host set when a host was ejected. Every `interval` the
//! cluster's outlier task calls [`Detector::on_interval`]: ejections that have run their
//! time are lifted, success-rate and failure-percentage outliers are ejected, and hosts
//! that stayed in service have their ejection multiplier lowered.
//!
//! As in Envoy:
//! - consecutive counters eject the moment they reach their threshold, if the
//!   `enforcing_*` roll (a percentage) passes;
//! - an ejection is refused when it would take the ejected share of hosts above
//!   `max_ejection_percent`, unless no host is ejected yet (at least one host may always
//!   be ejected);
//! - a host stays ejected for `base_ejection_time × multiplier`, capped at
//!   `max(max_ejection_time, base_ejection_time)`, plus a random jitter up to
//!   `max_ejection_time_jitter`; the multiplier goes up at each ejection and down by one at
//!   each interval the host spends in service (at least an interval after its return);
//! - with `split_external_local_origin_errors` false, local-origin failures count as 5xx
//!   (connect failure and reset as 503, timeout as 504); with it true they feed
//!   `consecutive_local_origin_failure` and the local-origin success rate instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use legate_snapshot::OutlierDetection;
use legate_telemetry::{Counter, Family};
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::lb::{Host, flag};

/// How one attempt to a host ended, as reported by the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Response headers arrived with this status.
    Response(u16),
    /// The attempt failed before any response, on our side of the wire.
    LocalOrigin(LocalFailure),
}

/// A local-origin failure (Envoy's `LOCAL_ORIGIN_*` results).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LocalFailure {
    ConnectFailure,
    Timeout,
    Reset,
}

impl LocalFailure {
    /// The status a local failure counts as when local and external errors are not split.
    fn as_status(self) -> u16 {
        match self {
            LocalFailure::ConnectFailure | LocalFailure::Reset => 503,
            LocalFailure::Timeout => 504,
        }
    }

    /// The local failure a request-path error stands for; `None` for errors that say
    /// nothing about the host (overflows, no route, bad request).
    pub(crate) fn from_error(e: ProxyError) -> Option<Self> {
        match e {
            ProxyError::ConnectFailure
            | ProxyError::UpstreamTlsHandshake
            | ProxyError::UpstreamTlsCertificate => Some(LocalFailure::ConnectFailure),
            ProxyError::ConnectTimeout
            | ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout => Some(LocalFailure::Timeout),
            ProxyError::UpstreamReset
            | ProxyError::ResetBeforeRequest
            | ProxyError::RefusedStream
            | ProxyError::ProtocolError => Some(LocalFailure::Reset),
            _ => None,
        }
    }
}

/// Why a host was ejected; the `reason` label of `legate_outlier_ejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl Reason {
    pub(crate) const ALL: [Reason; 7] = [
        Reason::Consecutive5xx,
        Reason::ConsecutiveGatewayFailure,
        Reason::ConsecutiveLocalOriginFailure,
        Reason::SuccessRate,
        Reason::SuccessRateLocalOrigin,
        Reason::FailurePercentage,
        Reason::FailurePercentageLocalOrigin,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Reason::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Reason::SuccessRate => "success_rate",
            Reason::SuccessRateLocalOrigin => "success_rate_local_origin",
            Reason::FailurePercentage => "failure_percentage",
            Reason::FailurePercentageLocalOrigin => "failure_percentage_local_origin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Consecutive thresholds reached by one report (a 503 can reach both the gateway-failure
/// and the 5xx threshold; Envoy evaluates the gateway one first).
pub(crate) type Triggered = [Option<Reason>; 2];

/// Requests and successes counted during the current interval.
#[derive(Debug, Default)]
struct Bucket {
    total: AtomicU64,
    success: AtomicU64,
}

impl Bucket {
    fn add(&self, success: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if success {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far, starting a new interval.
    fn take(&self) -> (u64, u64) {
        let total = self.total.swap(0, Ordering::Relaxed);
        let success = self.success.swap(0, Ordering::Relaxed);
        (total, success.min(total))
    }
}

/// Ejection bookkeeping, touched only when ejecting, unejecting and at interval ticks.
#[derive(Debug, Default)]
struct Ejection {
    at: Option<Instant>,
    jitter: Duration,
    /// Envoy's ejection time back-off: the multiplier of `base_ejection_time`.
    multiplier: u32,
    unejected_at: Option<Instant>,
}

/// The outlier detector's state of one host. Lives in the host's shared state so it
/// survives endpoint updates that keep the address.
#[derive(Debug, Default)]
pub(crate) struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    external: Bucket,
    local: Bucket,
    times_ejected: AtomicU32,
    ejection: Mutex<Ejection>,
}

impl HostOutlier {
    pub(crate) fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    fn ejection(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }

    /// The current ejection multiplier (for tests and diagnostics).
    #[cfg(test)]
    fn multiplier(&self) -> u32 {
        self.ejection().multiplier
    }
}

/// `*counter += 1`; whether it just reached `threshold` (exactly once per run, even with
/// concurrent reports; a threshold of 0 never triggers).
fn bump(counter: &AtomicU32, threshold: u32) -> bool {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

/// Envoy's `featureEnabled(percent)`.
fn roll(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && fastrand::u32(..100) < percent)
}

/// Which success-rate monitor a computation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    External,
    Local,
}

/// One cluster's outlier detector: its configuration and metric handles. The per-host
/// state lives on the hosts; a configuration change makes a new detector.
#[derive(Debug)]
pub(crate) struct Detector {
    config: OutlierDetection,
    ejections: [Arc<Counter>; 7],
}

impl Detector {
    pub(crate) fn new(
        config: OutlierDetection,
        ejections: &Family<Counter>,
        cluster: &str,
    ) -> Self {
        Detector {
            config,
            ejections: Reason::ALL.map(|r| ejections.get_or_create(&[cluster, r.label()])),
        }
    }

    pub(crate) fn config(&self) -> &OutlierDetection {
        &self.config
    }

    /// Count one attempt's outcome. Atomics only; returns the consecutive thresholds this
    /// report reached, for the caller to [`eject`](Self::eject).
    pub(crate) fn record(&self, host: &Host, outcome: Outcome) -> Triggered {
        let o = &host.state.outlier;
        let c = &self.config;
        match outcome {
            Outcome::Response(status) => {
                if c.split_external_local_origin_errors {
                    // The connection worked: a local-origin success.
                    o.local.add(true);
                    o.consecutive_local.store(0, Ordering::Relaxed);
                }
                self.http_status(o, status)
            }
            Outcome::LocalOrigin(failure) => {
                if c.split_external_local_origin_errors {
                    o.local.add(false);
                    let hit = bump(&o.consecutive_local, c.consecutive_local_origin_failure);
                    [hit.then_some(Reason::ConsecutiveLocalOriginFailure), None]
                } else {
                    self.http_status(o, failure.as_status())
                }
            }
        }
    }

    fn http_status(&self, o: &HostOutlier, status: u16) -> Triggered {
        let c = &self.config;
        if (500..600).contains(&status) {
            o.external.add(false);
            let gateway = if (502..=504).contains(&status) {
                bump(&o.consecutive_gateway, c.consecutive_gateway_failure)
            } else {
                o.consecutive_gateway.store(0, Ordering::Relaxed);
                false
            };
            let five_xx = bump(&o.consecutive_5xx, c.consecutive_5xx);
            [
                gateway.then_some(Reason::ConsecutiveGatewayFailure),
                five_xx.then_some(Reason::Consecutive5xx),
            ]
        } else {
            o.external.add(true);
            o.consecutive_5xx.store(0, Ordering::Relaxed);
            o.consecutive_gateway.store(0, Ordering::Relaxed);
            [None, None]
        }
    }

    fn enforcing(&self, reason: Reason) -> u32 {
        let c = &self.config;
        match reason {
            Reason::Consecutive5xx => c.enforcing_consecutive_5xx,
            Reason::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            Reason::ConsecutiveLocalOriginFailure => c.enforcing_consecutive_local_origin_failure,
            Reason::SuccessRate => c.enforcing_success_rate,
            Reason::SuccessRateLocalOrigin => c.enforcing_local_origin_success_rate,
            Reason::FailurePercentage => c.enforcing_failure_percentage,
            Reason::FailurePercentageLocalOrigin => c.enforcing_failure_percentage_local_origin,
        }
    }

    fn max_ejection_time(&self) -> Duration {
        self.config
            .max_ejection_time
            .max(self.config.base_ejection_time)
    }

    /// How long an ejection with this multiplier and jitter lasts.
    fn ejection_time(&self, multiplier: u32, jitter: Duration) -> Duration {
        self.config
            .base_ejection_time
            .saturating_mul(multiplier)
            .min(self.max_ejection_time())
            .saturating_add(jitter)
    }

    /// Eject `host` for `reason` if it is one of `hosts`, not ejected already, the
    /// ejected share allows it and the enforcement roll passes. Call with the cluster's
    /// host update lock held. Returns whether the host was ejected.
    pub(crate) fn eject(
        &self,
        hosts: &[Arc<Host>],
        host: &Host,
        reason: Reason,
        now: Instant,
    ) -> bool {
        if !hosts.iter().any(|h| Arc::ptr_eq(&h.state, &host.state)) || host.is_ejected() {
            // Removed meanwhile, or ejected by another report: leave its counters alone.
            return false;
        }
        let o = &host.state.outlier;
        // As Envoy: the consecutive counter starts over whether or not the host goes out.
        match reason {
            Reason::Consecutive5xx => o.consecutive_5xx.store(0, Ordering::Relaxed),
            Reason::ConsecutiveGatewayFailure => o.consecutive_gateway.store(0, Ordering::Relaxed),
            Reason::ConsecutiveLocalOriginFailure => {
                o.consecutive_local.store(0, Ordering::Relaxed)
            }
            _ => {}
        }
        let ejected = hosts.iter().filter(|h| h.is_ejected()).count();
        let max_percent = u64::from(self.config.max_ejection_percent.min(100));
        let allowed =
            ejected == 0 || (ejected as u64 + 1) * 100 <= max_percent * hosts.len() as u64;
        if !allowed || !roll(self.enforcing(reason)) {
            return false;
        }
        {
            let mut e = o.ejection();
            e.at = Some(now);
            let jitter_ms =
                u64::try_from(self.config.max_ejection_time_jitter.as_millis()).unwrap_or(u64::MAX);
            e.jitter = if jitter_ms == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(fastrand::u64(..=jitter_ms))
            };
            let base = self.config.base_ejection_time;
            if base.saturating_mul(e.multiplier) < self.max_ejection_time().saturating_add(base) {
                e.multiplier += 1;
            }
        }
        o.times_ejected.fetch_add(1, Ordering::Relaxed);
        host.state.set(flag::EJECTED);
        self.ejections[reason.index()].inc();
        tracing::info!(host = %host.addr, reason = reason.label(), "outlier detection ejected host");
        true
    }

    /// Return an ejected host to service. Whether it was ejected.
    pub(crate) fn uneject(&self, host: &Host, now: Instant) -> bool {
        if !host.state.clear(flag::EJECTED) {
            return false;
        }
        let o = &host.state.outlier;
        // Start the counters over so a few errors do not eject it again at once.
        o.reset_consecutive();
        o.ejection().unejected_at = Some(now);
        tracing::info!(host = %host.addr, "outlier detection returned host to service");
        true
    }

    /// The periodic sweep. Returns whether any host changed state.
    pub(crate) fn on_interval(&self, hosts: &[Arc<Host>], now: Instant) -> bool {
        let mut changed = false;
        let mut external = Vec::with_capacity(hosts.len());
        let mut local = Vec::with_capacity(hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            if h.is_ejected() {
                let due = {
                    let e = h.state.outlier.ejection();
                    e.at.is_none_or(|at| {
                        now.saturating_duration_since(at)
                            >= self.ejection_time(e.multiplier, e.jitter)
                    })
                };
                if due {
                    changed |= self.uneject(h, now);
                }
            }
            let o = &h.state.outlier;
            let ext = o.external.take();
            let loc = o.local.take();
            if !h.is_ejected() {
                external.push((i, ext));
                local.push((i, loc));
            }
        }
        changed |= self.rate_ejections(hosts, &external, Origin::External, now);
        changed |= self.rate_ejections(hosts, &local, Origin::Local, now);
        // A host that has been back in service for an interval earns its multiplier down.
        for h in hosts {
            if h.is_ejected() {
                continue;
            }
            let mut e = h.state.outlier.ejection();
            if e.multiplier > 0
                && e.unejected_at
                    .is_some_and(|u| now.saturating_duration_since(u) >= self.config.interval)
            {
                e.multiplier -= 1;
            }
        }
        changed
    }

    /// Success-rate and failure-percentage ejection over one interval's counts
    /// (`(host index, (requests, successes))`, hosts not ejected).
    fn rate_ejections(
        &self,
        hosts: &[Arc<Host>],
        samples: &[(usize, (u64, u64))],
        origin: Origin,
        now: Instant,
    ) -> bool {
        let c = &self.config;
        let n = hosts.len();
        if n < c.success_rate_minimum_hosts as usize
            && n < c.failure_percentage_minimum_hosts as usize
        {
            return false;
        }
        let mut sr = Vec::new();
        let mut fp = Vec::new();
        let mut sum = 0.0;
        for &(i, (total, success)) in samples {
            if total == 0 {
                continue;
            }
            let rate = success as f64 * 100.0 / total as f64;
            if total >= u64::from(c.success_rate_request_volume) {
                sr.push((i, rate));
                sum += rate;
            }
            if total >= u64::from(c.failure_percentage_request_volume) {
                fp.push((i, rate));
            }
        }
        let mut changed = false;
        if !sr.is_empty() && sr.len() >= c.success_rate_minimum_hosts as usize {
            let threshold = success_rate_threshold(sum, &sr, c.success_rate_stdev_factor);
            let reason = match origin {
                Origin::External => Reason::SuccessRate,
                Origin::Local => Reason::SuccessRateLocalOrigin,
            };
            for &(i, rate) in &sr {
                if rate < threshold {
                    changed |= self.eject(hosts, &hosts[i], reason, now);
                }
            }
        }
        if !fp.is_empty() && fp.len() >= c.failure_percentage_minimum_hosts as usize {
            let reason = match origin {
                Origin::External => Reason::FailurePercentage,
                Origin::Local => Reason::FailurePercentageLocalOrigin,
            };
            for &(i, rate) in &fp {
                if 100.0 - rate >= f64::from(c.failure_percentage_threshold) {
                    changed |= self.eject(hosts, &hosts[i], reason, now);
                }
            }
        }
        changed
    }
}

/// `mean − stdev_factor/1000 × stdev` of the success rates (population deviation), below
/// which a host is an outlier.
fn success_rate_threshold(sum: f64, rates: &[(usize, f64)], stdev_factor: u32) -> f64 {
    let n = rates.len() as f64;
    let mean = sum / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    mean - f64::from(stdev_factor) / 1000.0 * variance.sqrt()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use legate_snapshot::HealthStatus;

    use super::*;

    fn hosts(n: usize) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                Arc::new(Host::new(
                    SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    None,
                    1,
                    HealthStatus::Healthy,
                ))
            })
            .collect()
    }

    fn detector(config: OutlierDetection) -> (Detector, Arc<Family<Counter>>) {
        let registry = legate_telemetry::Registry::new();
        let family = registry.family("test_ejections_total", "test", &["cluster", "reason"]);
        (Detector::new(config, &family, "c"), family)
    }

    fn ejections(family: &Family<Counter>, reason: Reason) -> u64 {
        family.get_or_create(&["c", reason.label()]).get()
    }

    /// Report `outcome` `n` times; eject on every trigger as the cluster does.
    fn report(
        d: &Detector,
        hosts: &[Arc<Host>],
        i: usize,
        outcome: Outcome,
        n: usize,
        now: Instant,
    ) {
        for _ in 0..n {
            for reason in d.record(&hosts[i], outcome).into_iter().flatten() {
                d.eject(hosts, &hosts[i], reason, now);
            }
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn consecutive_5xx_ejects_at_the_threshold_and_a_success_resets_the_run() {
        let (d, family) = detector(OutlierDetection::default());
        let hs = hosts(3);
        let now = Instant::now();
        report(&d, &hs, 0, Outcome::Response(500), 4, now);
        report(&d, &hs, 0, Outcome::Response(200), 1, now);
        report(&d, &hs, 0, Outcome::Response(500), 4, now);
        assert!(!hs[0].is_ejected());
        report(&d, &hs, 0, Outcome::Response(500), 1, now);
        assert!(hs[0].is_ejected());
        assert_eq!(hs[0].times_ejected(), 1);
        assert_eq!(ejections(&family, Reason::Consecutive5xx), 1);
        // 4xx is not a failure.
        report(&d, &hs, 1, Outcome::Response(404), 10, now);
        assert!(!hs[1].is_ejected());
    }

    #[test]
    fn local_origin_failures_count_as_5xx_unless_split() {
        let (d, family) = detector(OutlierDetection {
            enforcing_consecutive_gateway_failure: 100,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        });
        let hs = hosts(3);
        let now = Instant::now();
        report(
            &d,
            &hs,
            0,
            Outcome::LocalOrigin(LocalFailure::Timeout),
            5,
            now,
        );
        assert!(hs[0].is_ejected());
        // 504 is a gateway failure: that threshold is evaluated first.
        assert_eq!(ejections(&family, Reason::ConsecutiveGatewayFailure), 1);
        // A 500 breaks the gateway run but not the 5xx one.
        report(
            &d,
            &hs,
            1,
            Outcome::LocalOrigin(LocalFailure::ConnectFailure),
            3,
            now,
        );
        report(&d, &hs, 1, Outcome::Response(500), 2, now);
        assert!(hs[1].is_ejected());
        assert_eq!(ejections(&family, Reason::Consecutive5xx), 1);

        let (d, family) = detector(OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 3,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        });
        let hs = hosts(3);
        report(
            &d,
            &hs,
            0,
            Outcome::LocalOrigin(LocalFailure::Reset),
            2,
            now,
        );
        // A response (even a 5xx) proves the connection works.
        report(&d, &hs, 0, Outcome::Response(503), 1, now);
        report(
            &d,
            &hs,
            0,
            Outcome::LocalOrigin(LocalFailure::Reset),
            2,
            now,
        );
        assert!(!hs[0].is_ejected());
        report(
            &d,
            &hs,
            0,
            Outcome::LocalOrigin(LocalFailure::Reset),
            1,
            now,
        );
        assert!(hs[0].is_ejected());
        assert_eq!(ejections(&family, Reason::ConsecutiveLocalOriginFailure), 1);
        // Split: local failures are not 5xx.
        report(
            &d,
            &hs,
            1,
            Outcome::LocalOrigin(LocalFailure::ConnectFailure),
            2,
            now,
        );
        report(&d, &hs, 1, Outcome::Response(500), 4, now);
        assert!(!hs[1].is_ejected());
    }

    #[test]
    fn enforcing_zero_detects_but_does_not_eject() {
        // Default: gateway failures detected, never enforced; the 5xx run still ejects.
        let (d, family) = detector(OutlierDetection {
            consecutive_5xx: 10,
            ..OutlierDetection::default()
        });
        let hs = hosts(2);
        let now = Instant::now();
        report(&d, &hs, 0, Outcome::Response(502), 5, now);
        assert!(!hs[0].is_ejected());
        assert_eq!(ejections(&family, Reason::ConsecutiveGatewayFailure), 0);
        report(&d, &hs, 0, Outcome::Response(502), 5, now);
        assert!(hs[0].is_ejected());
    }

    #[test]
    fn max_ejection_percent_caps_ejections_but_one_is_always_allowed() {
        let (d, _) = detector(OutlierDetection {
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        });
        let hs = hosts(4);
        let now = Instant::now();
        for i in 0..4 {
            report(&d, &hs, i, Outcome::Response(503), 5, now);
        }
        let ejected: Vec<bool> = hs.iter().map(|h| h.is_ejected()).collect();
        assert_eq!(ejected, vec![true, true, false, false]);

        // 10% of 3 hosts is less than one host: the first ejection still happens.
        let (d, _) = detector(OutlierDetection::default());
        let hs = hosts(3);
        for i in 0..3 {
            report(&d, &hs, i, Outcome::Response(500), 5, now);
        }
        assert_eq!(hs.iter().filter(|h| h.is_ejected()).count(), 1);
        // A removed host's report does nothing.
        let gone = hosts(4).pop().expect("host");
        assert!(!d.eject(&hs, &gone, Reason::Consecutive5xx, now));
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let (d, _) = detector(OutlierDetection {
            interval: secs(1),
            base_ejection_time: secs(10),
            max_ejection_time: secs(25),
            ..OutlierDetection::default()
        });
        let hs = hosts(2);
        let t0 = Instant::now();
        // Check every second from `from` until unejected; return when.
        let out_for = |from: Instant| -> u64 {
            for s in 1..=100u64 {
                if d.on_interval(&hs, from + secs(s)) {
                    assert!(!hs[0].is_ejected());
                    return s;
                }
            }
            panic!("never unejected");
        };
        report(&d, &hs, 0, Outcome::Response(500), 5, t0);
        assert!(hs[0].is_ejected());
        assert!(!d.on_interval(&hs, t0 + Duration::from_millis(9_999)));
        assert_eq!(out_for(t0), 10);
        // Ejected again right away: twice the base.
        let t1 = t0 + secs(10);
        report(&d, &hs, 0, Outcome::Response(500), 5, t1);
        assert_eq!(hs[0].state.outlier.multiplier(), 2);
        assert_eq!(out_for(t1), 20);
        // Third time: 30 s capped at max_ejection_time.
        let t2 = t1 + secs(20);
        report(&d, &hs, 0, Outcome::Response(500), 5, t2);
        assert_eq!(out_for(t2), 25);
        assert_eq!(hs[0].times_ejected(), 3);
    }

    #[test]
    fn staying_in_service_lowers_the_multiplier() {
        let (d, _) = detector(OutlierDetection {
            interval: secs(10),
            base_ejection_time: secs(10),
            ..OutlierDetection::default()
        });
        let hs = hosts(2);
        let t0 = Instant::now();
        report(&d, &hs, 0, Outcome::Response(500), 5, t0);
        assert!(d.on_interval(&hs, t0 + secs(10)));
        report(&d, &hs, 0, Outcome::Response(500), 5, t0 + secs(10));
        assert!(d.on_interval(&hs, t0 + secs(30)));
        assert_eq!(hs[0].state.outlier.multiplier(), 2);
        // The tick right after the return does not count: a full interval must pass.
        d.on_interval(&hs, t0 + secs(35));
        assert_eq!(hs[0].state.outlier.multiplier(), 2);
        d.on_interval(&hs, t0 + secs(40));
        assert_eq!(hs[0].state.outlier.multiplier(), 1);
        d.on_interval(&hs, t0 + secs(50));
        assert_eq!(hs[0].state.outlier.multiplier(), 0);
        d.on_interval(&hs, t0 + secs(60));
        assert_eq!(hs[0].state.outlier.multiplier(), 0);
        // Next ejection is back to the base time.
        let t = t0 + secs(60);
        report(&d, &hs, 0, Outcome::Response(500), 5, t);
        assert!(!d.on_interval(&hs, t + secs(9)));
        assert!(d.on_interval(&hs, t + secs(10)));
    }

    #[test]
    fn jitter_extends_the_ejection_within_its_bound() {
        let (d, _) = detector(OutlierDetection {
            base_ejection_time: secs(10),
            max_ejection_time_jitter: secs(5),
            ..OutlierDetection::default()
        });
        let hs = hosts(2);
        let t0 = Instant::now();
        report(&d, &hs, 0, Outcome::Response(500), 5, t0);
        assert!(!d.on_interval(&hs, t0 + Duration::from_millis(9_999)));
        assert!(d.on_interval(&hs, t0 + secs(15)));
    }

    /// Give host `i` `total` requests of which `ok` succeed in this interval.
    fn traffic(d: &Detector, hs: &[Arc<Host>], i: usize, total: usize, ok: usize) {
        for n in 0..total {
            let status = if n < ok { 200 } else { 500 };
            // Only the success-rate buckets matter here: no consecutive ejection.
            let _ = d.record(&hs[i], Outcome::Response(status));
            hs[i].state.outlier.reset_consecutive();
        }
    }

    #[test]
    fn success_rate_ejects_hosts_below_mean_minus_stdev_factor() {
        let (d, family) = detector(OutlierDetection::default());
        let hs = hosts(5);
        let now = Instant::now();
        // Rates {50, 100, 100, 100, 100}: mean 90, stdev 20, threshold 90 - 1.9 × 20 = 52.
        traffic(&d, &hs, 0, 100, 50);
        for i in 1..5 {
            traffic(&d, &hs, i, 100, 100);
        }
        assert!(d.on_interval(&hs, now));
        assert!(hs[0].is_ejected());
        assert_eq!(hs.iter().filter(|h| h.is_ejected()).count(), 1);
        assert_eq!(ejections(&family, Reason::SuccessRate), 1);

        // {53, 100, ...}: mean 90.6, stdev 18.8; a factor of 3.0 puts the threshold at
        // 34.2, so 53% stays (with the default 1.9 it would be 54.9).
        let (d, _) = detector(OutlierDetection {
            success_rate_stdev_factor: 3000,
            ..OutlierDetection::default()
        });
        let hs = hosts(5);
        traffic(&d, &hs, 0, 100, 53);
        for i in 1..5 {
            traffic(&d, &hs, i, 100, 100);
        }
        assert!(!d.on_interval(&hs, now));
    }

    #[test]
    fn success_rate_needs_request_volume_and_minimum_hosts() {
        let (d, _) = detector(OutlierDetection::default());
        let hs = hosts(5);
        let now = Instant::now();
        // Host 4 has too few requests: only four hosts qualify, fewer than the minimum 5.
        traffic(&d, &hs, 0, 100, 10);
        for i in 1..4 {
            traffic(&d, &hs, i, 100, 100);
        }
        traffic(&d, &hs, 4, 99, 99);
        assert!(!d.on_interval(&hs, now));
        assert!(!hs[0].is_ejected());
        // Counts start over each interval: last interval's traffic does not carry.
        traffic(&d, &hs, 4, 1, 1);
        assert!(!d.on_interval(&hs, now));

        // Four hosts suffice when the minimum is four (with a factor of 1.0: one outlier
        // among four is never below mean - 1.9 stdev).
        let (d, _) = detector(OutlierDetection {
            success_rate_minimum_hosts: 4,
            success_rate_stdev_factor: 1000,
            ..OutlierDetection::default()
        });
        traffic(&d, &hs, 0, 100, 10);
        for i in 1..4 {
            traffic(&d, &hs, i, 100, 100);
        }
        assert!(d.on_interval(&hs, now));
        assert!(hs[0].is_ejected());
    }

    #[test]
    fn failure_percentage_ejects_at_the_threshold() {
        let config = OutlierDetection {
            enforcing_failure_percentage: 100,
            enforcing_success_rate: 0,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let (d, family) = detector(config.clone());
        let hs = hosts(5);
        let now = Instant::now();
        traffic(&d, &hs, 0, 50, 5); // 90% failures
        traffic(&d, &hs, 1, 50, 10); // 80%
        traffic(&d, &hs, 2, 100, 15); // exactly 85%
        traffic(&d, &hs, 3, 50, 50);
        traffic(&d, &hs, 4, 50, 50);
        assert!(d.on_interval(&hs, now));
        let ejected: Vec<bool> = hs.iter().map(|h| h.is_ejected()).collect();
        assert_eq!(ejected, vec![true, false, true, false, false]);
        assert_eq!(ejections(&family, Reason::FailurePercentage), 2);

        // Not enough hosts with the request volume: nothing happens.
        let (d, _) = detector(config);
        let hs = hosts(5);
        traffic(&d, &hs, 0, 50, 0);
        for i in 1..4 {
            traffic(&d, &hs, i, 50, 50);
        }
        traffic(&d, &hs, 4, 49, 49);
        assert!(!d.on_interval(&hs, now));
    }

    #[test]
    fn success_rate_threshold_matches_envoy_example() {
        let rates = [(0, 50.0), (1, 100.0), (2, 100.0), (3, 100.0), (4, 100.0)];
        let t = success_rate_threshold(450.0, &rates, 1900);
        assert!((t - 52.0).abs() < 1e-9, "{t}");
    }

    #[test]
    fn uneject_resets_counters() {
        let (d, _) = detector(OutlierDetection::default());
        let hs = hosts(2);
        let now = Instant::now();
        report(&d, &hs, 0, Outcome::Response(500), 5, now);
        report(&d, &hs, 0, Outcome::Response(500), 4, now);
        assert!(d.uneject(&hs[0], now));
        assert!(!d.uneject(&hs[0], now));
        report(&d, &hs, 0, Outcome::Response(500), 4, now);
        assert!(!hs[0].is_ejected());
    }

    #[test]
    fn local_failures_map_from_proxy_errors() {
        assert_eq!(
            LocalFailure::from_error(ProxyError::ConnectFailure),
            Some(LocalFailure::ConnectFailure)
        );
        assert_eq!(
            LocalFailure::from_error(ProxyError::PerTryTimeout),
            Some(LocalFailure::Timeout)
        );
        assert_eq!(
            LocalFailure::from_error(ProxyError::UpstreamReset),
            Some(LocalFailure::Reset)
        );
        assert_eq!(
            LocalFailure::from_error(ProxyError::OverflowMaxRequests),
            None
        );
    }
}
