//! The cluster manager: long-lived per-cluster state (hosts, connection pool, DNS
//! resolution, stats) keyed by cluster name and carried across snapshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use legate_snapshot::{Cluster, Discovery, DnsFamily, EndpointAddress};
use legate_telemetry::{ByCodeClass, Gauge, Histogram};
use tokio::task::JoinHandle;

use crate::lb::{Host, HostSet};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::resilience::limits::{Resource, ResourceLimits};

/// Per-cluster metric handles, resolved once when the cluster is created.
#[derive(Debug)]
pub(crate) struct ClusterStats {
    pub(crate) requests: ByCodeClass,
    pub(crate) latency: Arc<Histogram>,
    pub(crate) open_connections: Arc<Gauge>,
}

/// Runtime state of one cluster.
pub struct ClusterRuntime {
    config: Arc<Cluster>,
    hosts: ArcSwap<HostSet>,
    cursor: AtomicUsize,
    pub(crate) pool: Arc<Pool>,
    /// Circuit-breaker counts, shared with the pool (connections, pending requests).
    pub(crate) limits: Arc<ResourceLimits>,
    pub(crate) stats: ClusterStats,
    dns: OnceLock<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        if let Some(task) = self.dns.get() {
            task.abort();
        }
    }
}

impl ClusterRuntime {
    pub fn config(&self) -> &Arc<Cluster> {
        &self.config
    }

    /// The current host set (a cheap `Arc` clone).
    pub fn hosts(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Pick a host by the cluster's load-balancing policy.
    pub(crate) fn pick(&self) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        set.pick(&self.config.lb_policy, &self.cursor).cloned()
    }

    fn new(config: Arc<Cluster>, metrics: &Metrics) -> Arc<Self> {
        let name: &str = &config.name;
        let stats = ClusterStats {
            requests: ByCodeClass::new(&metrics.upstream_requests, &[name]),
            latency: metrics.upstream_latency.get_or_create(&[name]),
            open_connections: metrics.upstream_connections_open.get_or_create(&[name]),
        };
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
        ));
        let initial = match config.discovery {
            Discovery::StrictDns { .. } => HostSet::default(),
            _ => host_set_from_config(&config, None),
        };
        let rt = Arc::new(ClusterRuntime {
            config,
            hosts: ArcSwap::from_pointee(initial),
            cursor: AtomicUsize::new(fastrand::usize(..1024)),
            pool,
            limits,
            stats,
            dns: OnceLock::new(),
        });
        // Spawned only once the Arc exists: the task holds a Weak and stops when the
        // cluster is dropped.
        if let Discovery::StrictDns {
            refresh_rate,
            family,
        } = rt.config.discovery
        {
            let task = tokio::spawn(resolve_loop(Arc::downgrade(&rt), refresh_rate, family));
            let _ = rt.dns.set(task);
        }
        rt
    }

    /// Whether a new definition can reuse this runtime (pool, stats, DNS task): everything
    /// but the endpoints of a non-DNS cluster must be the same.
    fn can_reuse_for(&self, new: &Cluster) -> bool {
        let old = &*self.config;
        old.name == new.name
            && old.discovery == new.discovery
            && old.lb_policy == new.lb_policy
            && old.protocol == new.protocol
            && old.connect_timeout == new.connect_timeout
            && old.idle_timeout == new.idle_timeout
            && old.max_requests_per_connection == new.max_requests_per_connection
            && (!matches!(new.discovery, Discovery::StrictDns { .. })
                || old.load_assignment == new.load_assignment)
    }

    /// A copy of this runtime's shared state under a new (compatible) definition.
    fn with_config(self: &Arc<Self>, config: Arc<Cluster>) -> Arc<Self> {
        if !matches!(config.discovery, Discovery::StrictDns { .. }) {
            let old = self.hosts.load();
            self.hosts
                .store(Arc::new(host_set_from_config(&config, Some(&old))));
        }
        self.limits.update(&config.circuit_breakers.default);
        // The pool and stats are shared by cloning the handles; the host set is shared by
        // pointer so both views see the same active-request counts.
        Arc::new(ClusterRuntime {
            config,
            hosts: ArcSwap::new(self.hosts.load_full()),
            cursor: AtomicUsize::new(0),
            pool: self.pool.clone(),
            limits: self.limits.clone(),
            stats: ClusterStats {
                requests: self.stats.requests.clone(),
                latency: self.stats.latency.clone(),
                open_connections: self.stats.open_connections.clone(),
            },
            dns: OnceLock::new(),
        })
    }
}

/// Build a host set from a static or EDS load assignment, keeping `Host`s that did not
/// change so their in-flight counts carry over.
fn host_set_from_config(config: &Cluster, old: Option<&HostSet>) -> HostSet {
    let mut hosts = Vec::new();
    for ep in config.load_assignment.endpoints() {
        if let EndpointAddress::Socket(addr) = ep.address {
            hosts.push(reuse_or_new(
                old,
                addr,
                ep.hostname.clone(),
                ep.weight,
                ep.health,
            ));
        }
    }
    HostSet::new(hosts)
}

fn reuse_or_new(
    old: Option<&HostSet>,
    addr: SocketAddr,
    hostname: Option<Arc<str>>,
    weight: u32,
    health: legate_snapshot::HealthStatus,
) -> Arc<Host> {
    if let Some(old) = old
        && let Some(h) = old.hosts.iter().find(|h| {
            h.addr == addr && h.weight == weight && h.health == health && h.hostname == hostname
        })
    {
        return h.clone();
    }
    Arc::new(Host::new(addr, hostname, weight, health))
}

/// Re-resolve a STRICT_DNS cluster's names every `refresh` until the cluster is dropped.
async fn resolve_loop(
    cluster: std::sync::Weak<ClusterRuntime>,
    refresh: Duration,
    family: DnsFamily,
) {
    loop {
        let Some(rt) = cluster.upgrade() else { return };
        let config = rt.config.clone();
        drop(rt);
        let mut hosts = Vec::new();
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
                        hosts.push((addr, host.clone(), ep.weight, ep.health));
                    }
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(cluster = %config.name, %host, %error, "dns resolution failed");
                }
            }
        }
        let Some(rt) = cluster.upgrade() else { return };
        // A failed lookup keeps the previous hosts for that cluster, as Envoy does.
        if !failed || !hosts.is_empty() {
            let old = rt.hosts.load_full();
            let set: Vec<Arc<Host>> = hosts
                .into_iter()
                .map(|(a, h, w, s)| reuse_or_new(Some(&old), a, Some(h), w, s))
                .collect();
            let changed = set.len() != old.hosts.len()
                || set
                    .iter()
                    .zip(old.hosts.iter())
                    .any(|(a, b)| !Arc::ptr_eq(a, b));
            if changed {
                rt.hosts.store(Arc::new(HostSet::new(set)));
            }
        }
        drop(rt);
        tokio::time::sleep(refresh).await;
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

/// Build the cluster map for a new snapshot from the previous one.
pub(crate) async fn reconcile(
    old: &HashMap<Arc<str>, Arc<ClusterRuntime>>,
    clusters: impl Iterator<Item = &Arc<Cluster>>,
    metrics: &Metrics,
) -> HashMap<Arc<str>, Arc<ClusterRuntime>> {
    let mut out = HashMap::new();
    let mut fresh_dns = Vec::new();
    for config in clusters {
        let rt = match old.get(&config.name) {
            Some(prev) if Arc::ptr_eq(&prev.config, config) || *prev.config == **config => {
                prev.clone()
            }
            Some(prev) if prev.can_reuse_for(config) => prev.with_config(config.clone()),
            _ => {
                let rt = ClusterRuntime::new(config.clone(), metrics);
                if rt.dns.get().is_some() {
                    fresh_dns.push(rt.clone());
                }
                rt
            }
        };
        out.insert(config.name.clone(), rt);
    }
    // A new DNS cluster warms until its first resolution (bounded), as in Envoy.
    for rt in fresh_dns {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while rt.hosts.load().hosts.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}
