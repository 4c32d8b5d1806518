//! The cluster manager: long-lived per-cluster state (hosts, connection pool, DNS
//! resolution, outlier detection, active health checks, stats) keyed by cluster name and
//! carried across snapshots.
//!
//! A [`ClusterRuntime`] is one definition of a cluster. A compatible new definition
//! ([`ClusterRuntime::with_config`]) makes a new runtime that shares the old one's
//! [`ClusterHosts`]: the host set, its dynamic state and the background tasks (DNS
//! refresh, outlier sweeps, health checks), which hold only a `Weak` to it and stop when
//! the last runtime sharing it is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use legate_snapshot::{Cluster, Discovery, DnsFamily, EndpointAddress, HealthStatus};
use legate_telemetry::{ByCodeClass, Counter, Gauge, Histogram};
use legate_tls::reload::Current;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::body::Overflow;
use crate::hash::HashTable;
use crate::lb::{Host, HostSet, HostState, flag};
use crate::load::{ClusterLoad, LoadCounts};
use crate::metrics::Metrics;
use crate::pool::{Pool, Settings};
use crate::resilience::breaker::ClassicBreakerState;
use crate::resilience::health;
use crate::resilience::limits::{Resource, ResourceLimits};
use crate::resilience::outlier::{Detector, Outcome};
use crate::tls::upstream::{ClientTls, ClusterTls};

/// Per-cluster metric handles, resolved once when the cluster is created (never on the
/// request path) and shared by the cluster's later compatible definitions.
#[derive(Clone, Debug)]
pub(crate) struct ClusterStats {
    pub(crate) requests: ByCodeClass,
    pub(crate) latency: Arc<Histogram>,
    pub(crate) open_connections: Arc<Gauge>,
    /// `legate_upstream_retries_total`.
    pub(crate) retries: Arc<Counter>,
    /// `legate_upstream_retry_overflow_total`.
    pub(crate) retry_overflow: Arc<Counter>,
    /// `legate_upstream_hedges_total`.
    pub(crate) hedges: Arc<Counter>,
    /// `legate_retry_buffer_overflow_total`, in [`Overflow::ALL`] order.
    pub(crate) buffer_overflow: [Arc<Counter>; 3],
    /// Load-report counters (LRS).
    pub(crate) load: Arc<ClusterLoad>,
}

impl ClusterStats {
    /// Count a request whose body was not kept for retries.
    pub(crate) fn buffer_overflow(&self, why: Overflow) {
        let i = Overflow::ALL.iter().position(|o| *o == why).unwrap_or(0);
        self.buffer_overflow[i].inc();
    }

    fn new(metrics: &Metrics, name: &str) -> Self {
        ClusterStats {
            requests: ByCodeClass::new(&metrics.upstream_requests, &[name]),
            latency: metrics.upstream_latency.get_or_create(&[name]),
            open_connections: metrics.upstream_connections_open.get_or_create(&[name]),
            retries: metrics.upstream_retries.get_or_create(&[name]),
            retry_overflow: metrics.upstream_retry_overflow.get_or_create(&[name]),
            hedges: metrics.upstream_hedges.get_or_create(&[name]),
            buffer_overflow: Overflow::ALL.map(|why| {
                metrics
                    .retry_buffer_overflow
                    .get_or_create(&[name, why.label()])
            }),
            load: Arc::new(ClusterLoad::default()),
        }
    }
}

/// Metric handles for the host set and its health, resolved once per cluster.
#[derive(Debug)]
pub(crate) struct HostMetrics {
    /// `legate_cluster_hosts{state}`, in [`crate::lb::HostCounts::by_label`] order.
    by_state: [Arc<Gauge>; 5],
    ejected: Arc<Gauge>,
    panic: Arc<Gauge>,
    panic_picks: Arc<Counter>,
    /// `legate_health_checks_total{result="success"}` and `{result="failure"}`.
    pub(crate) health_checks: [Arc<Counter>; 2],
}

impl HostMetrics {
    fn new(metrics: &Metrics, name: &str) -> Self {
        HostMetrics {
            by_state: crate::lb::HostCounts::default()
                .by_label()
                .map(|(state, _)| metrics.cluster_hosts.get_or_create(&[name, state])),
            ejected: metrics.outlier_ejected_hosts.get_or_create(&[name]),
            panic: metrics.cluster_panic.get_or_create(&[name]),
            panic_picks: metrics.lb_panic.get_or_create(&[name]),
            health_checks: ["success", "failure"]
                .map(|result| metrics.health_checks.get_or_create(&[name, result])),
        }
    }
}

/// Background tasks of a cluster, aborted when its [`ClusterHosts`] is dropped.
#[derive(Debug, Default)]
struct Tasks {
    dns: Option<JoinHandle<()>>,
    outlier: Option<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
}

impl Tasks {
    fn abort_all(&mut self) {
        for t in [self.dns.take(), self.outlier.take(), self.health.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}

/// The hosts of a cluster and everything that decides which of them take traffic. Shared
/// by every runtime of the cluster and reached by its background tasks through a `Weak`.
#[derive(Debug)]
pub(crate) struct ClusterHosts {
    pub(crate) name: Arc<str>,
    /// The newest definition, for the background tasks.
    config: ArcSwap<Cluster>,
    hosts: ArcSwap<HostSet>,
    cursor: AtomicUsize,
    /// Held while a new host set is built from the current one and stored, so that a
    /// membership change and a host state change never overwrite each other.
    update: Mutex<()>,
    panic_permille: AtomicU32,
    outlier: ArcSwapOption<Detector>,
    /// Wakes the health checker when hosts come or go.
    pub(crate) membership: Arc<Notify>,
    /// The cluster's TLS, for the health checker's connections.
    pub(crate) tls: ArcSwapOption<ClusterTls>,
    pub(crate) metrics: HostMetrics,
    tasks: Mutex<Tasks>,
    /// Itself, for the background builds of large hash tables.
    me: Weak<ClusterHosts>,
    /// A background build of a large hash table is running (`build_tables`).
    building: AtomicBool,
}

impl Drop for ClusterHosts {
    fn drop(&mut self) {
        self.tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .abort_all();
    }
}

impl ClusterHosts {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.update.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current host set.
    pub(crate) fn current(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// The newest definition of the cluster.
    pub(crate) fn config(&self) -> Arc<Cluster> {
        self.config.load_full()
    }

    pub(crate) fn outlier(&self) -> Option<Arc<Detector>> {
        self.outlier.load_full()
    }

    /// Store a set built from `hosts` (their current state) and publish its gauges. Call
    /// with the update lock held.
    fn store(&self, hosts: Vec<Arc<Host>>) {
        // The hash table is rebuilt only when the membership (or a weight) changed, which
        // is never on the request path; a state change reuses the previous one. A large
        // table (a hostile or generous ring size) is built on the blocking pool, so that
        // the thread applying the change (on `--concurrency 1` the only one) keeps serving;
        // until it is in place picks use the hash directly (`HostSet::pick_hashed`).
        let policy = self.config.load().lb_policy;
        let mut set = HostSet::new(hosts, self.panic_permille.load(Ordering::Relaxed));
        let set = match set.reuse_table(&policy, &self.hosts.load()) {
            true => set,
            false if !HashTable::is_large(&policy, &set.hosts) => set.with_table(&policy),
            false => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    // One build at a time per cluster: a membership change while one runs
                    // is picked up when it ends, so a burst of updates never holds several
                    // large tables in memory at once.
                    if !self.building.swap(true, Ordering::AcqRel) {
                        let me = self.me.clone();
                        rt.spawn_blocking(move || build_tables(&me, &policy));
                    }
                    set
                }
                Err(_) => set.with_table(&policy),
            },
        };
        self.publish(set);
    }

    /// Store `set` and publish its gauges. Call with the update lock held.
    fn publish(&self, set: HostSet) {
        let counts = set.counts();
        for (g, (_, n)) in self.metrics.by_state.iter().zip(counts.by_label()) {
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics
            .ejected
            .set(i64::try_from(counts.ejected).unwrap_or(i64::MAX));
        self.metrics.panic.set(i64::from(set.in_panic()));
        self.hosts.store(Arc::new(set));
    }

    /// Rebuild the host set from the same hosts, after a state change.
    fn rebuild(&self) {
        let _g = self.lock();
        self.store(self.hosts.load().hosts.clone());
    }

    /// Replace the membership by what `f` returns (built from the current set), if it
    /// differs; the health checker is told.
    fn update_membership(&self, f: impl FnOnce(&HostSet) -> Vec<Arc<Host>>) {
        let _g = self.lock();
        let old = self.hosts.load_full();
        let new = f(&old);
        let changed = !same_hosts(&new, &old.hosts);
        // Always rebuilt: the panic threshold may have changed with the definition.
        self.store(new);
        if changed {
            self.membership.notify_one();
        }
    }

    /// Run `f` on the current hosts under the update lock; rebuild when it says a host's
    /// state changed.
    pub(crate) fn modify(&self, f: impl FnOnce(&[Arc<Host>]) -> bool) {
        let _g = self.lock();
        let set = self.hosts.load_full();
        if f(&set.hosts) {
            self.store(set.hosts.clone());
        }
    }

    /// Record an active health check verdict: the host's `HC_*` flags become `flags`; on a
    /// passing check of a host not failing, an outlier ejection is lifted when
    /// `successful_active_health_check_uneject_host` says so (as Envoy).
    pub(crate) fn set_active_health(&self, host: &Host, flags: u8, passed: bool) {
        self.modify(|hosts| {
            if !hosts.iter().any(|h| Arc::ptr_eq(&h.state, &host.state)) {
                return false;
            }
            let mut changed = host.state.replace(flag::HC_ALL, flags);
            if passed
                && flags & flag::HC_FAILED == 0
                && host.is_ejected()
                && let Some(d) = self.outlier()
                && d.config().successful_active_health_check_uneject_host
            {
                changed |= d.uneject(host, Instant::now());
            }
            changed
        });
    }
}

/// The background builder of large hash tables: builds one for the cluster's current
/// hosts and puts it in place if they are still the cluster's; otherwise (they changed while
/// it ran) starts over with the new ones, until the current set has its table.
fn build_tables(me: &Weak<ClusterHosts>, policy: &legate_snapshot::LbPolicy) {
    loop {
        let Some(shared) = me.upgrade() else { return };
        // Read under the lock: the change that asked for this build is stored by then.
        let hosts = {
            let _g = shared.lock();
            shared.hosts.load().hosts.clone()
        };
        let table = HashTable::build(policy, &hosts).map(Arc::new);
        let _g = shared.lock();
        let current = shared.hosts.load_full();
        if same_hosts(&current.hosts, &hosts) || current.table().is_some() {
            if let Some(table) = table.filter(|_| same_hosts(&current.hosts, &hosts)) {
                let set = HostSet::new(
                    current.hosts.clone(),
                    shared.panic_permille.load(Ordering::Relaxed),
                )
                .with_built_table(table);
                shared.publish(set);
            }
            shared.building.store(false, Ordering::Release);
            return;
        }
    }
}

/// The same host values (not only addresses) in the same order.
fn same_hosts(a: &[Arc<Host>], b: &[Arc<Host>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Runtime state of one cluster.
pub struct ClusterRuntime {
    config: Arc<Cluster>,
    shared: Arc<ClusterHosts>,
    /// The cluster's TLS (shared by its pools across definitions), when it has any.
    pub(crate) tls: Option<Arc<ClusterTls>>,
    /// This definition's outlier detector (`None`: not configured, reports are dropped).
    outlier: Option<Arc<Detector>>,
    pub(crate) pool: Arc<Pool>,
    /// Circuit-breaker counts, shared with the pool (connections, pending requests).
    pub(crate) limits: Arc<ResourceLimits>,
    /// The classic closed/open/half-open breaker, when the cluster's metadata asks for one.
    pub(crate) classic: Option<Arc<ClassicBreakerState>>,
    pub(crate) stats: ClusterStats,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl ClusterRuntime {
    pub fn config(&self) -> &Arc<Cluster> {
        &self.config
    }

    /// The classic breaker's state (`closed`, `open`, `half_open`), when it has one.
    pub fn breaker_state(&self) -> Option<&'static str> {
        self.classic.as_ref().map(|b| b.state().as_str())
    }

    /// The cluster's load-report counters as of now (see `load.rs`).
    pub fn load_counts(&self) -> LoadCounts {
        let (issued, succeeded, errored, in_progress, dropped) = self.stats.load.read();
        let (latency_buckets, latency_sum_nanos) = self.stats.latency.buckets();
        LoadCounts {
            issued,
            succeeded,
            errored,
            in_progress,
            dropped,
            latency_buckets,
            latency_sum_nanos,
        }
    }

    /// The current host set (a cheap `Arc` clone).
    pub fn hosts(&self) -> Arc<HostSet> {
        self.shared.current()
    }

    /// Pick a host by the cluster's load-balancing policy; `hash` is the request's hash
    /// for RING_HASH and MAGLEV (`None`: a random point of the table).
    pub(crate) fn pick(&self, hash: Option<u64>) -> Option<Arc<Host>> {
        let set = self.shared.hosts.load();
        let host = match hash {
            Some(h) if self.config.lb_policy.is_hashing() => set.pick_hashed(h, &[])?,
            _ => set.pick(&self.config.lb_policy, &self.shared.cursor)?,
        };
        if set.in_panic() {
            self.shared.metrics.panic_picks.inc();
        }
        Some(host.clone())
    }

    /// Pick a host, picking again up to `attempts` more times while the pick is one of
    /// `avoid` (Envoy's `previous_hosts` retry predicate with
    /// `host_selection_retry_max_attempts`). When every pick is avoided, the last stands.
    /// A hashing cluster walks its table from the request's hash to the next host not
    /// avoided instead (Envoy also walks the ring), so where a key's retry goes is
    /// deterministic and spends no attempts.
    pub(crate) fn pick_avoiding(
        &self,
        avoid: &[SocketAddr],
        attempts: u32,
        hash: Option<u64>,
    ) -> Option<Arc<Host>> {
        let set = self.shared.hosts.load();
        let policy = &self.config.lb_policy;
        if policy.is_hashing() {
            let host = set.pick_hashed(hash.unwrap_or_else(|| fastrand::u64(..)), avoid)?;
            if set.in_panic() {
                self.shared.metrics.panic_picks.inc();
            }
            return Some(host.clone());
        }
        let mut host = set.pick(policy, &self.shared.cursor)?;
        for _ in 0..attempts {
            if !avoid.contains(&host.addr) {
                break;
            }
            host = set.pick(policy, &self.shared.cursor)?;
        }
        if set.in_panic() {
            self.shared.metrics.panic_picks.inc();
        }
        Some(host.clone())
    }

    /// Report how an attempt to `host` ended, for outlier detection: once per attempt,
    /// when its response headers arrive or when it fails locally. One branch when the
    /// cluster has no outlier detection; otherwise atomics, and the host-set lock only when
    /// a consecutive-failure threshold is reached.
    pub(crate) fn report(&self, host: &Arc<Host>, outcome: Outcome) {
        let Some(d) = &self.outlier else { return };
        for reason in d.record(host, outcome).into_iter().flatten() {
            self.shared
                .modify(|hosts| d.eject(hosts, host, reason, Instant::now()));
        }
    }

    pub(crate) fn new(
        config: Arc<Cluster>,
        metrics: &Metrics,
        tls: Option<Arc<ClusterTls>>,
    ) -> Arc<Self> {
        let name: &str = &config.name;
        let stats = ClusterStats::new(metrics, name);
        let remaining = Resource::ALL.map(|r| {
            metrics
                .circuit_breaker_remaining
                .get_or_create(&[name, r.label()])
        });
        let limits = ResourceLimits::new(&config.circuit_breakers.default, remaining);
        let pool = Arc::new(Pool::new(
            &config,
            stats.open_connections.clone(),
            limits.clone(),
            tls.clone(),
        ));
        let outlier = config
            .outlier_detection
            .clone()
            .map(|o| Arc::new(Detector::new(o, &metrics.outlier_ejections, name)));
        let shared = Arc::new_cyclic(|me| ClusterHosts {
            me: me.clone(),
            building: AtomicBool::new(false),
            name: config.name.clone(),
            config: ArcSwap::new(config.clone()),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            cursor: AtomicUsize::new(fastrand::usize(..1024)),
            update: Mutex::new(()),
            panic_permille: AtomicU32::new(config.healthy_panic_threshold_permille),
            outlier: ArcSwapOption::new(outlier.clone()),
            membership: Arc::new(Notify::new()),
            tls: ArcSwapOption::new(tls.clone()),
            metrics: HostMetrics::new(metrics, name),
            tasks: Mutex::new(Tasks::default()),
        });
        shared.update_membership(|_| match config.discovery {
            Discovery::StrictDns { .. } => Vec::new(),
            _ => hosts_from_config(&config, None),
        });
        // Spawned only once the Arc exists: the tasks hold a Weak and stop when the
        // cluster is dropped.
        {
            let mut tasks = shared.tasks();
            if let Discovery::StrictDns {
                refresh_rate,
                family,
            } = config.discovery
            {
                tasks.dns = Some(tokio::spawn(resolve_loop(
                    Arc::downgrade(&shared),
                    refresh_rate,
                    family,
                )));
            }
            if outlier.is_some() {
                tasks.outlier = Some(tokio::spawn(outlier_loop(Arc::downgrade(&shared))));
            }
            if !config.health_checks.is_empty() {
                tasks.health = Some(health::spawn(&shared, config.health_checks.clone()));
            }
        }
        let classic = config
            .classic_breaker
            .as_ref()
            .map(|c| Arc::new(ClassicBreakerState::new(c)));
        Arc::new(ClusterRuntime {
            config,
            shared,
            tls,
            outlier,
            pool,
            limits,
            classic,
            stats,
        })
    }

    /// Whether a new definition can reuse this runtime's hosts (and stats, DNS task): the
    /// discovery, load balancing policy and, for DNS clusters, the names must be the same.
    /// Everything else (the endpoints of a non-DNS cluster, circuit breakers, outlier
    /// detection, health checks, the panic threshold, the connection settings and TLS) is
    /// reconfigured in place; different connection settings get a new pool.
    fn can_reuse_for(&self, new: &Cluster) -> bool {
        let old = &*self.config;
        old.name == new.name
            && old.discovery == new.discovery
            && old.lb_policy == new.lb_policy
            && (!matches!(new.discovery, Discovery::StrictDns { .. })
                || old.load_assignment == new.load_assignment)
    }

    /// A runtime for a new (compatible) definition sharing this one's hosts, limits, stats
    /// and tasks, and its pool unless the connection settings changed. Outlier detection and
    /// health checking are reconfigured when their settings changed; `tls` is the cluster's
    /// TLS for the new definition (the same object when it only got new certificates).
    pub(crate) fn with_config(
        self: &Arc<Self>,
        config: Arc<Cluster>,
        metrics: &Metrics,
        tls: Option<Arc<ClusterTls>>,
    ) -> Arc<Self> {
        let shared = &self.shared;
        let old = shared.config.swap(config.clone());
        shared
            .panic_permille
            .store(config.healthy_panic_threshold_permille, Ordering::Relaxed);

        // Health checks first, so hosts added below start in the right state.
        let hc_changed = old.health_checks != config.health_checks;
        if hc_changed {
            let mut tasks = shared.tasks();
            if let Some(t) = tasks.health.take() {
                t.abort();
            }
            let hosts = shared.current();
            if config.health_checks.is_empty() {
                for h in &hosts.hosts {
                    h.state.clear(flag::HC_ALL);
                }
            } else {
                if old.health_checks.is_empty() {
                    // Hosts already serving keep serving until a check says otherwise.
                    for h in &hosts.hosts {
                        h.state.set(flag::HC_PENDING);
                    }
                }
                tasks.health = Some(health::spawn(shared, config.health_checks.clone()));
            }
        }

        if old.outlier_detection != config.outlier_detection {
            let detector = config
                .outlier_detection
                .clone()
                .map(|o| Arc::new(Detector::new(o, &metrics.outlier_ejections, &config.name)));
            shared.outlier.store(detector.clone());
            let mut tasks = shared.tasks();
            if let Some(t) = tasks.outlier.take() {
                t.abort();
            }
            if detector.is_some() {
                tasks.outlier = Some(tokio::spawn(outlier_loop(Arc::downgrade(shared))));
            } else {
                for h in &shared.current().hosts {
                    h.state.clear(flag::EJECTED);
                }
            }
        }

        if matches!(config.discovery, Discovery::StrictDns { .. }) {
            shared.rebuild();
        } else {
            shared.update_membership(|old| hosts_from_config(&config, Some(old)));
        }
        self.limits.update(&config.circuit_breakers.default);
        // The classic breaker keeps its state across compatible changes.
        let classic = match (&self.classic, &config.classic_breaker) {
            (Some(state), Some(c)) => {
                state.update(c);
                Some(state.clone())
            }
            (None, Some(c)) => Some(Arc::new(ClassicBreakerState::new(c))),
            (_, None) => None,
        };
        shared.tls.store(tls.clone());
        let same_tls = match (&self.tls, &tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let pool = if same_tls
            && Settings::from_cluster(&self.config) == Settings::from_cluster(&config)
        {
            self.pool.clone()
        } else {
            // Connections of the old pool finish what they carry and close.
            Arc::new(Pool::new(
                &config,
                self.stats.open_connections.clone(),
                self.limits.clone(),
                tls.clone(),
            ))
        };
        // The stats are shared by cloning the handles.
        Arc::new(ClusterRuntime {
            classic,
            outlier: shared.outlier(),
            config,
            shared: shared.clone(),
            tls,
            pool,
            limits: self.limits.clone(),
            stats: self.stats.clone(),
        })
    }
}

/// The flags a host new to `config` starts with: failing and pending its first active
/// health check when the cluster has any (as Envoy), so it gets traffic once one passes.
fn initial_flags(config: &Cluster) -> u8 {
    if config.health_checks.is_empty() {
        0
    } else {
        flag::HC_FAILED | flag::HC_PENDING
    }
}

/// The hosts of a static or EDS load assignment, keeping `Host`s that did not change so
/// their in-flight counts carry over.
fn hosts_from_config(config: &Cluster, old: Option<&HostSet>) -> Vec<Arc<Host>> {
    let initial = initial_flags(config);
    let mut hosts = Vec::new();
    for ep in config.load_assignment.endpoints() {
        if let EndpointAddress::Socket(addr) = ep.address {
            hosts.push(reuse_or_new(
                old,
                addr,
                ep.hostname.clone(),
                ep.weight,
                ep.health,
                initial,
            ));
        }
    }
    hosts
}

/// The old `Host` when nothing changed; a new one carrying the old one's dynamic state
/// (ejection, health checks) when only its weight, name or EDS health did; a fresh one
/// with `initial` flags for a new address.
fn reuse_or_new(
    old: Option<&HostSet>,
    addr: SocketAddr,
    hostname: Option<Arc<str>>,
    weight: u32,
    health: HealthStatus,
    initial: u8,
) -> Arc<Host> {
    let same_addr = old.and_then(|o| o.hosts.iter().find(|h| h.addr == addr));
    if let Some(h) = same_addr {
        if h.weight == weight.max(1) && h.health == health && h.hostname == hostname {
            return h.clone();
        }
        return Arc::new(Host::with_state(
            addr,
            hostname,
            weight,
            health,
            h.state.clone(),
        ));
    }
    Arc::new(Host::with_state(
        addr,
        hostname,
        weight,
        health,
        Arc::new(HostState::with_flags(initial)),
    ))
}

/// Re-resolve a STRICT_DNS cluster's names every `refresh` until the cluster is dropped.
async fn resolve_loop(cluster: Weak<ClusterHosts>, refresh: Duration, family: DnsFamily) {
    loop {
        let Some(shared) = cluster.upgrade() else {
            return;
        };
        let config = shared.config();
        drop(shared);
        let mut resolved = Vec::new();
        let mut failed = false;
        for ep in config.load_assignment.endpoints() {
            let (host, port) = match &ep.address {
                EndpointAddress::Dns { host, port } => (host.clone(), *port),
                EndpointAddress::Socket(a) => (Arc::from(a.ip().to_string()), a.port()),
            };
            match tokio::net::lookup_host((&*host, port)).await {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = filter_family(addrs.collect(), family);
                    for addr in addrs {
                        resolved.push((addr, host.clone(), ep.weight, ep.health));
                    }
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(cluster = %config.name, %host, %error, "dns resolution failed");
                }
            }
        }
        let Some(shared) = cluster.upgrade() else {
            return;
        };
        // A failed lookup keeps the previous hosts for that cluster, as Envoy does.
        if !failed || !resolved.is_empty() {
            let initial = initial_flags(&shared.config());
            shared.update_membership(|old| {
                resolved
                    .into_iter()
                    .map(|(a, h, w, s)| reuse_or_new(Some(old), a, Some(h), w, s, initial))
                    .collect()
            });
        }
        drop(shared);
        tokio::time::sleep(refresh).await;
    }
}

/// Run the outlier detector's interval sweep until the cluster is dropped or loses its
/// outlier detection.
async fn outlier_loop(cluster: Weak<ClusterHosts>) {
    loop {
        let Some(interval) = cluster
            .upgrade()
            .and_then(|c| c.outlier())
            .map(|d| d.config().interval.max(Duration::from_millis(1)))
        else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(shared) = cluster.upgrade() else {
            return;
        };
        let Some(d) = shared.outlier() else { return };
        shared.modify(|hosts| d.on_interval(hosts, Instant::now()));
    }
}

fn filter_family(mut addrs: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    let v4: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv6).collect();
    match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::All => addrs,
        // AUTO prefers v6 in Envoy, V4_PREFERRED prefers v4; either falls back to the other.
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
    }
}

/// The TLS of `config` for the new snapshot: the previous object, with the configurations
/// `prepared` for a changed definition installed, or a new one.
fn cluster_tls(
    config: &Cluster,
    previous: Option<&Arc<ClusterRuntime>>,
    prepared: &mut HashMap<Arc<str>, Current<ClientTls>>,
    metrics: &Metrics,
) -> Option<Arc<ClusterTls>> {
    let spec = config.tls.as_ref()?;
    let existing = previous.and_then(|rt| rt.tls.clone());
    match (existing, prepared.remove(&config.name)) {
        (Some(t), None) => Some(t),
        (Some(t), Some(current)) => {
            t.install(spec.clone(), current);
            Some(t)
        }
        (None, Some(current)) => Some(ClusterTls::new(
            config.name.clone(),
            spec.clone(),
            current,
            metrics,
        )),
        // `Dataplane::apply` prepares every definition it has no configuration for.
        (None, None) => None,
    }
}

/// Build the cluster map for a new snapshot from the previous one. `prepared` holds the TLS
/// configurations built for new or changed TLS definitions.
/// Clusters reconciled between two yields to the scheduler.
const RECONCILE_BATCH: usize = 256;

pub(crate) async fn reconcile(
    old: &HashMap<Arc<str>, Arc<ClusterRuntime>>,
    clusters: impl Iterator<Item = &Arc<Cluster>>,
    metrics: &Metrics,
    mut prepared: HashMap<Arc<str>, Current<ClientTls>>,
) -> HashMap<Arc<str>, Arc<ClusterRuntime>> {
    let mut out = HashMap::new();
    let mut fresh = Vec::new();
    for (i, config) in clusters.enumerate() {
        // A new runtime takes microseconds, ten thousand of them tens of milliseconds: let
        // the requests that share this thread (all of them with `--concurrency 1`) through
        // between batches. The view is swapped only once the loop is done.
        if i % RECONCILE_BATCH == RECONCILE_BATCH - 1 {
            tokio::task::yield_now().await;
        }
        let previous = old.get(&config.name);
        let tls = cluster_tls(config, previous, &mut prepared, metrics);
        let rt = match previous {
            Some(prev) if Arc::ptr_eq(&prev.config, config) || *prev.config == **config => {
                prev.clone()
            }
            Some(prev) if prev.can_reuse_for(config) => {
                prev.with_config(config.clone(), metrics, tls)
            }
            _ => {
                let rt = ClusterRuntime::new(config.clone(), metrics, tls);
                if matches!(config.discovery, Discovery::StrictDns { .. })
                    || !config.health_checks.is_empty()
                    || config.lb_policy.is_hashing()
                {
                    fresh.push(rt.clone());
                }
                rt
            }
        };
        out.insert(config.name.clone(), rt);
    }
    // A cluster that went away takes its series with it (requests still running on it
    // count into members no longer rendered; the name coming back starts from zero).
    for name in old.keys().filter(|n| !out.contains_key(*n)) {
        tracing::debug!(cluster = %name, "cluster removed; dropping its metric series");
        metrics.registry.remove_label_value("cluster", name);
    }
    // A new cluster warms (bounded) until its first DNS resolution and until every host
    // has had its first health check, as in Envoy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for rt in fresh {
        while !is_warm(&rt) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}

fn is_warm(rt: &ClusterRuntime) -> bool {
    let set = rt.shared.hosts.load();
    if matches!(rt.config.discovery, Discovery::StrictDns { .. }) && set.hosts.is_empty() {
        return false;
    }
    // A large hash table is built in the background; requests wait for it (bounded, as
    // for the rest of warming) so that the first ones already land where later ones will.
    if rt.config.lb_policy.is_hashing() && !set.hosts.is_empty() && set.table().is_none() {
        return false;
    }
    !set.hosts.iter().any(|h| h.state.has(flag::HC_PENDING))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Cluster definitions and metrics for tests.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use legate_snapshot::{
        CircuitBreakers, Cluster, Discovery, Endpoint, EndpointAddress, HealthStatus, LbPolicy,
        LoadAssignment, LocalityEndpoints, UpstreamProtocol,
    };
    use legate_telemetry::Registry;

    use crate::metrics::Metrics;

    pub(crate) fn metrics() -> Metrics {
        Metrics::new(Arc::new(Registry::new()))
    }

    /// A static round-robin cluster of healthy endpoints at `addrs`.
    pub(crate) fn cluster(name: &str, addrs: &[SocketAddr]) -> Cluster {
        Cluster {
            name: Arc::from(name),
            discovery: Discovery::Static,
            lb_policy: LbPolicy::RoundRobin,
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: None,
            max_requests_per_connection: None,
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            health_checks: Vec::new(),
            healthy_panic_threshold_permille: 500,
            classic_breaker: None,
            tls: None,
            load_assignment: LoadAssignment {
                localities: vec![LocalityEndpoints {
                    region: Arc::from(""),
                    zone: Arc::from(""),
                    sub_zone: Arc::from(""),
                    weight: None,
                    endpoints: addrs
                        .iter()
                        .map(|a| Endpoint {
                            address: EndpointAddress::Socket(*a),
                            weight: 1,
                            health: HealthStatus::Healthy,
                            hostname: None,
                        })
                        .collect(),
                }],
            },
        }
    }

    /// Wait, at most `limit`, until `f` holds.
    pub(crate) async fn until(limit: Duration, what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use legate_snapshot::{HealthStatus, LbPolicy, OutlierDetection};

    use super::testing::{cluster, metrics, until};
    use super::*;
    use crate::resilience::outlier::LocalFailure;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_hash_table_is_built_in_the_background() {
        let ring = |min| LbPolicy::RingHash {
            min_ring_size: min,
            max_ring_size: legate_snapshot::MAX_RING_SIZE,
        };
        // Small: built at once, where the hosts were stored.
        let mut c = cluster("small", &addrs(3));
        c.lb_policy = ring(1024);
        let rt = ClusterRuntime::new(Arc::new(c), &metrics(), None);
        assert_eq!(rt.hosts().table().map(|t| t.len()), Some(3 * 1024));

        // Large: picks work before it is in place (by the hash alone), and it arrives.
        let mut c = cluster("large", &addrs(3));
        c.lb_policy = ring(100_000);
        let rt = ClusterRuntime::new(Arc::new(c), &metrics(), None);
        assert!(rt.pick(Some(42)).is_some());
        until(Duration::from_secs(20), "the ring is installed", || {
            rt.hosts().table().is_some()
        })
        .await;
        let table = rt.hosts().table().cloned().expect("table");
        assert_eq!(table.len(), 300_000);
        let first = rt.pick(Some(42)).expect("host");
        // A state change (an ejection) keeps the same table.
        rt.shared.modify(|hosts| hosts[0].state.set(flag::EJECTED));
        assert!(Arc::ptr_eq(rt.hosts().table().expect("table"), &table));
        if first.addr != rt.hosts().hosts[0].addr {
            assert_eq!(rt.pick(Some(42)).expect("host").addr, first.addr);
        }

        // Membership changes in a burst: one build at a time, and the last hosts get theirs.
        let m = metrics();
        let mut current = rt.clone();
        for n in [4, 5, 6] {
            let mut c = cluster("large", &addrs(n));
            c.lb_policy = ring(100_000);
            current = current.with_config(Arc::new(c), &m, None);
        }
        until(Duration::from_secs(30), "the last hosts' ring", || {
            current.hosts().table().map(|t| t.len()) == Some(600_000)
        })
        .await;
        until(Duration::from_secs(5), "the builder is done", || {
            !current.shared.building.load(Ordering::Acquire)
        })
        .await;
    }

    fn port_counts(
        rt: &ClusterRuntime,
        n: usize,
        pick: impl Fn() -> Option<Arc<Host>>,
    ) -> Vec<usize> {
        let mut c = vec![0; rt.hosts().hosts.len()];
        for _ in 0..n {
            let h = pick().expect("host");
            c[usize::from(h.addr.port() - 7000)] += 1;
        }
        c
    }

    #[tokio::test]
    async fn pick_avoiding_skips_tried_hosts_within_the_attempts() {
        let m = metrics();
        let rt = ClusterRuntime::new(Arc::new(cluster("c", &addrs(3))), &m, None);
        let a = addrs(3);
        // Round robin: two avoided hosts need up to two more picks.
        let c = port_counts(&rt, 30, || rt.pick_avoiding(&a[..2], 2, None));
        assert_eq!(c, vec![0, 0, 30]);
        // No extra attempts: a plain pick.
        let c = port_counts(&rt, 30, || rt.pick_avoiding(&a[..2], 0, None));
        assert_eq!(c, vec![10, 10, 10]);
        // Everything avoided: the last pick stands.
        let c = port_counts(&rt, 30, || rt.pick_avoiding(&a, 5, None));
        assert_eq!(c.iter().sum::<usize>(), 30);
    }

    fn outlier(base: Duration, interval: Duration) -> OutlierDetection {
        OutlierDetection {
            interval,
            base_ejection_time: base,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }
    }

    #[tokio::test]
    async fn reports_eject_a_host_and_the_sweep_returns_it() {
        let m = metrics();
        let mut c = cluster("c", &addrs(3));
        c.outlier_detection = Some(outlier(
            Duration::from_millis(100),
            Duration::from_millis(20),
        ));
        let rt = ClusterRuntime::new(Arc::new(c), &m, None);
        let h0 = rt.hosts().hosts[0].clone();
        for _ in 0..4 {
            rt.report(&h0, Outcome::LocalOrigin(LocalFailure::ConnectFailure));
        }
        assert!(!h0.is_ejected());
        rt.report(&h0, Outcome::Response(503));
        assert!(h0.is_ejected());
        assert_eq!(port_counts(&rt, 20, || rt.pick(None)), vec![0, 10, 10]);
        let gauge = |state: &str| m.cluster_hosts.get_or_create(&["c", state]).get();
        assert_eq!(gauge("ejected"), 1);
        assert_eq!(gauge("healthy"), 2);
        assert_eq!(m.outlier_ejected_hosts.get_or_create(&["c"]).get(), 1);
        assert_eq!(
            m.outlier_ejections
                .get_or_create(&["c", "consecutive_5xx"])
                .get(),
            1
        );
        until(Duration::from_secs(3), "unejected", || !h0.is_ejected()).await;
        assert_eq!(port_counts(&rt, 30, || rt.pick(None)), vec![10, 10, 10]);
        assert_eq!(gauge("ejected"), 0);
    }

    #[tokio::test]
    async fn no_outlier_detection_ignores_reports() {
        let m = metrics();
        let rt = ClusterRuntime::new(Arc::new(cluster("c", &addrs(2))), &m, None);
        let h0 = rt.hosts().hosts[0].clone();
        for _ in 0..50 {
            rt.report(&h0, Outcome::Response(500));
        }
        assert!(!h0.is_ejected());
    }

    #[tokio::test]
    async fn panic_when_too_many_hosts_are_ejected() {
        let m = metrics();
        let mut c = cluster("c", &addrs(2));
        c.outlier_detection = Some(outlier(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ));
        let rt = ClusterRuntime::new(Arc::new(c), &m, None);
        let h0 = rt.hosts().hosts[0].clone();
        for _ in 0..5 {
            rt.report(&h0, Outcome::Response(500));
        }
        // One of two left is 50%: not panic.
        assert!(!rt.hosts().in_panic());
        assert_eq!(port_counts(&rt, 10, || rt.pick(None)), vec![0, 10]);
        let h1 = rt.hosts().hosts[1].clone();
        for _ in 0..5 {
            rt.report(&h1, Outcome::Response(500));
        }
        assert!(h1.is_ejected());
        assert!(rt.hosts().in_panic());
        assert_eq!(port_counts(&rt, 10, || rt.pick(None)), vec![5, 5]);
        assert_eq!(m.cluster_panic.get_or_create(&["c"]).get(), 1);
        assert_eq!(m.lb_panic.get_or_create(&["c"]).get(), 10);
    }

    #[tokio::test]
    async fn host_state_survives_compatible_updates_and_follows_the_config() {
        let m = metrics();
        let mut c = cluster("c", &addrs(3));
        c.outlier_detection = Some(outlier(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ));
        let rt = ClusterRuntime::new(Arc::new(c.clone()), &m, None);
        let h0 = rt.hosts().hosts[0].clone();
        for _ in 0..5 {
            rt.report(&h0, Outcome::Response(500));
        }
        assert!(h0.is_ejected());

        // EDS changes host 0's weight and drops host 2: host 0 stays ejected.
        let mut c2 = c.clone();
        c2.load_assignment.localities[0].endpoints[0].weight = 5;
        c2.load_assignment.localities[0].endpoints.pop();
        let rt2 = rt.with_config(Arc::new(c2.clone()), &m, None);
        let set = rt2.hosts();
        assert_eq!(set.hosts.len(), 2);
        assert_eq!(set.hosts[0].weight, 5);
        assert!(set.hosts[0].is_ejected());
        assert_eq!(set.hosts[0].times_ejected(), 1);
        // Both runtimes see the same hosts and detector state.
        assert!(Arc::ptr_eq(&rt.hosts(), &rt2.hosts()));

        // EDS says host 1 is unhealthy: with host 0 ejected nothing is available -> panic.
        let mut c3 = c2.clone();
        c3.load_assignment.localities[0].endpoints[1].health = HealthStatus::Unhealthy;
        let rt3 = rt2.with_config(Arc::new(c3.clone()), &m, None);
        assert!(rt3.hosts().in_panic());
        // Without panic there is no host at all.
        let mut c4 = c3.clone();
        c4.healthy_panic_threshold_permille = 0;
        let rt4 = rt3.with_config(Arc::new(c4.clone()), &m, None);
        assert!(rt4.pick(None).is_none());

        // Outlier detection removed: the ejection is lifted and reports are ignored.
        let mut c5 = c4.clone();
        c5.outlier_detection = None;
        c5.load_assignment.localities[0].endpoints[1].health = HealthStatus::Healthy;
        let rt5 = rt4.with_config(Arc::new(c5), &m, None);
        assert!(!rt5.hosts().hosts[0].is_ejected());
        let h = rt5.hosts().hosts[1].clone();
        for _ in 0..10 {
            rt5.report(&h, Outcome::Response(500));
        }
        assert!(!h.is_ejected());
        assert_eq!(
            port_counts(&rt5, 12, || rt5.pick(None))
                .iter()
                .sum::<usize>(),
            12
        );
    }

    #[tokio::test]
    async fn a_tls_change_keeps_the_hosts_and_the_pool() {
        use arc_swap::ArcSwap;
        use bytes::Bytes;
        use legate_snapshot::{
            CertificateValidation, DataSource, PrivateKey, TlsCertificate, TlsParams, UpstreamTls,
        };
        use legate_tls::issue::{Authority, LeafSpec};

        use crate::tls::expiry::Expiry;
        use crate::tls::upstream::build_client;

        let m = metrics();
        let expiry = Expiry::new(m.tls_certificate_expiry.clone());
        let ca = Authority::new("ca").expect("ca");
        let inline = |s: &str| DataSource::Inline(Bytes::copy_from_slice(s.as_bytes()));
        let spec = |cn: &str| {
            let leaf = ca.issue(&LeafSpec::new(cn).client_only()).expect("leaf");
            UpstreamTls {
                sni: Some(Arc::from("up.test")),
                auto_sni: false,
                auto_sni_header: None,
                auto_san_validation: false,
                certificate: Some(TlsCertificate {
                    certificate_chain: inline(&leaf.cert_pem),
                    private_key: PrivateKey(inline(&leaf.key_pem)),
                }),
                certificate_sds: None,
                validation: Some(CertificateValidation {
                    trusted_ca: Some(inline(ca.cert_pem())),
                    system_roots: false,
                    match_typed_subject_alt_names: Vec::new(),
                }),
                validation_sds: None,
                alpn_protocols: Vec::new(),
                params: TlsParams::UPSTREAM_DEFAULT,
                max_session_keys: 1,
            }
        };
        let prepared = |s: &UpstreamTls| {
            let current = Arc::new(ArcSwap::from_pointee(
                build_client(s, "c", &expiry).expect("client config"),
            ));
            HashMap::from([(Arc::from("c"), current)])
        };
        let (one, two) = (spec("one"), spec("two"));
        let mut c1 = cluster("c", &addrs(2));
        c1.tls = Some(Arc::new(one.clone()));
        let first = reconcile(
            &HashMap::new(),
            [Arc::new(c1.clone())].iter(),
            &m,
            prepared(&one),
        )
        .await;
        let rt1 = first["c"].clone();
        let tls1 = rt1.tls.clone().expect("tls");

        // A new client certificate: the same hosts, pool and TLS object, now on the new
        // definition.
        let mut c2 = c1.clone();
        c2.tls = Some(Arc::new(two.clone()));
        let second = reconcile(&first, [Arc::new(c2.clone())].iter(), &m, prepared(&two)).await;
        let rt2 = second["c"].clone();
        assert!(Arc::ptr_eq(&rt1.hosts(), &rt2.hosts()));
        assert!(Arc::ptr_eq(&rt1.pool, &rt2.pool));
        assert!(Arc::ptr_eq(&tls1, rt2.tls.as_ref().expect("tls")));
        assert_eq!(*tls1.spec(), two);

        // TLS off: a new (plaintext) pool, the same hosts.
        let mut c3 = c2.clone();
        c3.tls = None;
        let third = reconcile(&second, [Arc::new(c3)].iter(), &m, HashMap::new()).await;
        let rt3 = third["c"].clone();
        assert!(Arc::ptr_eq(&rt2.hosts(), &rt3.hosts()));
        assert!(!Arc::ptr_eq(&rt2.pool, &rt3.pool));
        assert!(rt3.tls.is_none());
    }

    #[tokio::test]
    async fn background_tasks_stop_with_the_last_runtime() {
        let m = metrics();
        let mut c = cluster("c", &addrs(1));
        c.outlier_detection = Some(outlier(Duration::from_secs(1), Duration::from_millis(10)));
        let rt = ClusterRuntime::new(Arc::new(c.clone()), &m, None);
        let weak = Arc::downgrade(&rt.shared);
        let mut c2 = c.clone();
        c2.circuit_breakers.default.max_requests = 7;
        let rt2 = rt.with_config(Arc::new(c2), &m, None);
        drop(rt);
        // Still shared by rt2, and its task keeps running through the sweep.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(weak.upgrade().is_some());
        drop(rt2);
        assert!(weak.upgrade().is_none());
    }
}
