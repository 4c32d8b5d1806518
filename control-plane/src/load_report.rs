//! Load reported by the fleet (LRS), kept per node and cluster over a sliding window and
//! aggregated per service version: what `GET /v1/load`, `legatectl top` and the canary judge
//! read.
//!
//! Reports are hostile input. Each is folded into one-second slots per (node, cluster), so a
//! node reporting faster than asked costs no more memory; slots older than the window are
//! dropped on every write and read. A report names at most [`MAX_CLUSTERS_PER_REPORT`]
//! clusters and a node at most [`MAX_CLUSTERS_PER_NODE`]; more are ignored and counted. All
//! sums saturate. Memory is bounded by nodes × clusters per node × window seconds.
//!
//! Latency arrives in legate's bucket scheme ([`legate_telemetry::load`]); a report without
//! it (Envoy's) still counts requests, and its latency is simply unknown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterStats;
use legate_telemetry::LATENCY_BUCKET_COUNT;
use legate_telemetry::load::{LATENCY_SUM_METRIC, latency_bucket_of, quantile_ms};

/// Clusters read from one report; the rest are ignored.
pub const MAX_CLUSTERS_PER_REPORT: usize = 10_000;
/// Distinct clusters kept per node.
pub const MAX_CLUSTERS_PER_NODE: usize = 10_000;
/// Localities read per cluster of a report.
pub const MAX_LOCALITIES: usize = 1_000;
/// Load metrics read per locality.
pub const MAX_METRICS: usize = 100;
/// The window kept unless told otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The reporting interval legate-cp asks for unless told otherwise (`--lrs-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Load over some time: sums of what reports said.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Load {
    pub issued: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub dropped: u64,
    /// Per latency bucket (legate's scheme), overflow last.
    pub latency_buckets: [u64; LATENCY_BUCKET_COUNT],
    /// Attempts with a latency, and the sum of their latencies (ms).
    pub latency_count: u64,
    pub latency_sum_ms: f64,
}

impl Load {
    fn add(&mut self, other: &Load) {
        self.issued = self.issued.saturating_add(other.issued);
        self.succeeded = self.succeeded.saturating_add(other.succeeded);
        self.errored = self.errored.saturating_add(other.errored);
        self.dropped = self.dropped.saturating_add(other.dropped);
        for (a, b) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *a = a.saturating_add(b);
        }
        self.latency_count = self.latency_count.saturating_add(other.latency_count);
        self.latency_sum_ms += other.latency_sum_ms;
    }

    /// One cluster's report, whatever its values say.
    fn from_report(stats: &ClusterStats) -> Load {
        let mut load = Load {
            dropped: stats.total_dropped_requests,
            ..Load::default()
        };
        for locality in stats.upstream_locality_stats.iter().take(MAX_LOCALITIES) {
            load.issued = load.issued.saturating_add(locality.total_issued_requests);
            load.succeeded = load
                .succeeded
                .saturating_add(locality.total_successful_requests);
            load.errored = load.errored.saturating_add(locality.total_error_requests);
            for metric in locality.load_metric_stats.iter().take(MAX_METRICS) {
                let n = metric.num_requests_finished_with_metric;
                if metric.metric_name == LATENCY_SUM_METRIC {
                    load.latency_count = load.latency_count.saturating_add(n);
                    let v = metric.total_metric_value;
                    if v.is_finite() && v >= 0.0 {
                        load.latency_sum_ms += v;
                    }
                } else if let Some(i) = latency_bucket_of(&metric.metric_name) {
                    load.latency_buckets[i] = load.latency_buckets[i].saturating_add(n);
                }
            }
        }
        load
    }
}

/// One version of a service over a window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VersionLoad {
    pub version: String,
    pub cluster: String,
    #[serde(flatten)]
    pub load: Load,
    /// Attempts in progress at each reporting node's latest report, summed.
    pub in_progress: u64,
    /// Issued attempts per second over the window.
    pub requests_per_second: f64,
    /// Errored over completed attempts, in percent (`None`: none completed).
    pub error_percent: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Nodes that reported load for this version within the window.
    pub nodes_reporting: usize,
}

/// A service's versions over a window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceLoad {
    pub service: String,
    pub window_seconds: f64,
    pub versions: Vec<VersionLoad>,
}

#[derive(Debug, Default)]
struct Series {
    /// (second since the store's start, load in it), oldest first.
    slots: VecDeque<(u64, Load)>,
    in_progress: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// node id → cluster → series.
    nodes: HashMap<String, HashMap<String, Series>>,
    /// cluster → (service, version), from the published mesh.
    versions: HashMap<String, (String, String)>,
}

/// The fleet's load: written by LRS streams, read by the admin API.
#[derive(Debug)]
pub struct LoadStore {
    start: Instant,
    window: Duration,
    inner: Mutex<Inner>,
    ignored: AtomicU64,
}

impl LoadStore {
    pub fn new(window: Duration) -> LoadStore {
        LoadStore {
            start: Instant::now(),
            window: window.max(Duration::from_secs(1)),
            inner: Mutex::default(),
            ignored: AtomicU64::new(0),
        }
    }

    /// The longest window kept.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Cluster entries ignored because a report or a node named too many clusters.
    pub fn clusters_ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    /// Which service and version each cluster serves: `(cluster, service, version)`,
    /// replacing the previous mapping (the published mesh's clusters `<service>-<version>`).
    pub fn set_versions(&self, clusters: impl IntoIterator<Item = (String, String, String)>) {
        let map = clusters.into_iter().map(|(c, s, v)| (c, (s, v))).collect();
        self.lock().versions = map;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    /// Record one report from `node`.
    pub fn record(&self, node: &str, stats: &[ClusterStats]) {
        self.record_at(node, stats, Instant::now());
    }

    pub fn record_at(&self, node: &str, stats: &[ClusterStats], at: Instant) {
        if stats.is_empty() {
            return;
        }
        let now = self.second(at);
        let oldest = now.saturating_sub(self.window.as_secs());
        let mut ignored = stats.len().saturating_sub(MAX_CLUSTERS_PER_REPORT) as u64;
        let mut inner = self.lock();
        let clusters = inner.nodes.entry(node.to_owned()).or_default();
        for s in stats.iter().take(MAX_CLUSTERS_PER_REPORT) {
            if !clusters.contains_key(&s.cluster_name) && clusters.len() >= MAX_CLUSTERS_PER_NODE {
                ignored += 1;
                continue;
            }
            let series = clusters.entry(s.cluster_name.clone()).or_default();
            let load = Load::from_report(s);
            series.in_progress = s
                .upstream_locality_stats
                .iter()
                .take(MAX_LOCALITIES)
                .fold(0u64, |a, l| a.saturating_add(l.total_requests_in_progress));
            match series.slots.back_mut() {
                Some((sec, slot)) if *sec == now => slot.add(&load),
                _ => series.slots.push_back((now, load)),
            }
            prune(series, oldest);
        }
        clusters.retain(|_, s| !s.slots.is_empty());
        if ignored > 0 {
            self.ignored.fetch_add(ignored, Ordering::Relaxed);
        }
    }

    /// Every node's load per cluster over the last `window` (at most the store's window).
    pub fn clusters(&self, window: Duration) -> BTreeMap<String, (Load, u64, usize)> {
        self.clusters_at(window, Instant::now())
    }

    fn clusters_at(&self, window: Duration, at: Instant) -> BTreeMap<String, (Load, u64, usize)> {
        let now = self.second(at);
        let keep = self.window.as_secs();
        let span = window.min(self.window).as_secs().max(1);
        // A slot is inside when it is less than `span` seconds old.
        let from = now.saturating_add(1).saturating_sub(span);
        let mut inner = self.lock();
        let mut out: BTreeMap<String, (Load, u64, usize)> = BTreeMap::new();
        inner.nodes.retain(|_, clusters| {
            clusters.retain(|name, series| {
                prune(series, now.saturating_sub(keep));
                let mut load = Load::default();
                let mut any = false;
                for (sec, slot) in &series.slots {
                    if *sec >= from {
                        load.add(slot);
                        any = true;
                    }
                }
                if any {
                    let entry = out.entry(name.clone()).or_default();
                    entry.0.add(&load);
                    entry.1 = entry.1.saturating_add(series.in_progress);
                    entry.2 += 1;
                }
                !series.slots.is_empty()
            });
            !clusters.is_empty()
        });
        out
    }

    /// A service's load per version over the last `window` (at most the store's window),
    /// versions in name order; a version nobody reported for has zero load.
    pub fn service_window(&self, service: &str, window: Duration) -> ServiceLoad {
        self.service_window_at(service, window, Instant::now())
    }

    pub fn service_window_at(&self, service: &str, window: Duration, at: Instant) -> ServiceLoad {
        let span = window.min(self.window).max(Duration::from_secs(1));
        let clusters = self.clusters_at(span, at);
        let mut wanted: Vec<(String, String)> = self
            .lock()
            .versions
            .iter()
            .filter(|(_, (s, _))| s == service)
            .map(|(c, (_, v))| (v.clone(), c.clone()))
            .collect();
        wanted.sort();
        let versions = wanted
            .into_iter()
            .map(|(version, cluster)| {
                let (load, in_progress, nodes) =
                    clusters.get(&cluster).cloned().unwrap_or_default();
                let completed = load.succeeded.saturating_add(load.errored);
                VersionLoad {
                    requests_per_second: load.issued as f64 / span.as_secs_f64(),
                    error_percent: (completed > 0)
                        .then(|| load.errored as f64 * 100.0 / completed as f64),
                    p50_ms: quantile_ms(&load.latency_buckets, 0.5),
                    p99_ms: quantile_ms(&load.latency_buckets, 0.99),
                    nodes_reporting: nodes,
                    in_progress,
                    version,
                    cluster,
                    load,
                }
            })
            .collect();
        ServiceLoad {
            service: service.to_owned(),
            window_seconds: span.as_secs_f64(),
            versions,
        }
    }

    /// The services with at least one version, in name order.
    pub fn services(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .lock()
            .versions
            .values()
            .map(|(s, _)| s.clone())
            .collect();
        s.sort();
        s.dedup();
        s
    }
}

fn prune(series: &mut Series, oldest: u64) {
    while series.slots.front().is_some_and(|(sec, _)| *sec < oldest) {
        series.slots.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        EndpointLoadMetricStats, UpstreamLocalityStats,
    };

    fn report(cluster: &str, ok: u64, err: u64, bucket: Option<(&str, u64)>) -> ClusterStats {
        ClusterStats {
            cluster_name: cluster.to_owned(),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                total_issued_requests: ok.saturating_add(err),
                total_successful_requests: ok,
                total_error_requests: err,
                load_metric_stats: bucket
                    .map(|(name, n)| EndpointLoadMetricStats {
                        metric_name: name.to_owned(),
                        num_requests_finished_with_metric: n,
                        total_metric_value: n as f64,
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn aggregates_per_version_over_the_window() {
        let store = LoadStore::new(Duration::from_secs(60));
        store.set_versions([
            ("a-v1".into(), "a".into(), "v1".into()),
            ("a-v2".into(), "a".into(), "v2".into()),
        ]);
        let t0 = store.start;
        store.record_at(
            "n1",
            &[report(
                "a-v1",
                90,
                10,
                Some(("legate.latency_ms.le_100", 100)),
            )],
            t0,
        );
        store.record_at(
            "n2",
            &[report("a-v1", 10, 0, None)],
            t0 + Duration::from_secs(1),
        );
        store.record_at(
            "n2",
            &[report("a-v2", 5, 5, None)],
            t0 + Duration::from_secs(30),
        );
        let at = t0 + Duration::from_secs(30);
        let load = store.service_window_at("a", Duration::from_secs(60), at);
        assert_eq!(load.versions.len(), 2);
        let v1 = &load.versions[0];
        assert_eq!(
            (v1.load.issued, v1.load.succeeded, v1.load.errored),
            (110, 100, 10)
        );
        assert_eq!(v1.nodes_reporting, 2);
        let p50 = v1.p50_ms.expect("a p50");
        assert!(p50 > 50.0 && p50 <= 100.0, "{p50}");
        assert_eq!(load.versions[1].error_percent, Some(50.0));
        // A 10 s window holds only the latest report.
        let recent = store.service_window_at("a", Duration::from_secs(10), at);
        assert_eq!(recent.versions[0].load.issued, 0);
        assert_eq!(recent.versions[1].load.issued, 10);
        // Past the window, everything is gone, and so is the memory.
        let later =
            store.service_window_at("a", Duration::from_secs(60), t0 + Duration::from_secs(200));
        assert!(later.versions.iter().all(|v| v.load.issued == 0));
        assert!(store.lock().nodes.is_empty());
    }

    #[test]
    fn hostile_reports_are_bounded() {
        let store = LoadStore::new(Duration::from_secs(60));
        let t0 = store.start;
        let many: Vec<ClusterStats> = (0..MAX_CLUSTERS_PER_REPORT + 5)
            .map(|i| {
                report(
                    &format!("c{i}"),
                    u64::MAX,
                    u64::MAX,
                    Some(("legate.latency_ms.le_inf", u64::MAX)),
                )
            })
            .collect();
        store.record_at("n", &many, t0);
        store.record_at("n", &many[..2], t0);
        assert_eq!(store.lock().nodes["n"].len(), MAX_CLUSTERS_PER_NODE);
        assert_eq!(store.clusters_ignored(), 5);
        // Reports faster than once a second share a slot.
        for _ in 0..1000 {
            store.record_at("n", &many[..1], t0);
        }
        assert_eq!(store.lock().nodes["n"]["c0"].slots.len(), 1);
        let c0 = &store.clusters_at(Duration::from_secs(60), t0)["c0"].0;
        assert_eq!(c0.issued, u64::MAX);
        // Nonsense metric values are ignored.
        let mut bad = report("x", 1, 0, None);
        bad.upstream_locality_stats[0]
            .load_metric_stats
            .push(EndpointLoadMetricStats {
                metric_name: LATENCY_SUM_METRIC.to_owned(),
                num_requests_finished_with_metric: 1,
                total_metric_value: f64::NAN,
            });
        assert_eq!(Load::from_report(&bad).latency_sum_ms, 0.0);
    }
}
