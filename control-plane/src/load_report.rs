//! Load reported by the fleet (LRS), kept per node and cluster over a sliding window and
//! aggregated per service version: what `GET /v1/load`, `legatectl top` and the canary judge
//! read.
//!
//! Reports are hostile input. Only clusters of the published mesh are kept (a report names
//! every cluster its sender has; the rest say nothing about a service version); at most
//! [`MAX_CLUSTERS_PER_REPORT`] entries of one report are looked at, at most [`MAX_SERIES`]
//! (node, cluster) series are kept in all, and an entry whose counts no proxy could have
//! produced in the time it covers ([`MAX_REQUESTS_PER_SECOND`], [`MAX_LATENCY_MS`]) is
//! refused whole. Every entry left out is counted by reason ([`Ignored`]). All sums saturate.
//!
//! Each kept entry covers the `load_report_interval` it states, ending when it arrives: its
//! load is spread evenly over those seconds, so a report arriving after an outage (a long
//! interval) counts in proportion to how much of it lies inside a window, rather than all in
//! the second it arrived. Entries arriving in the same second for the same series are merged,
//! and a series keeps at most [`MAX_ENTRIES_PER_SERIES`] (the oldest are merged, spread over
//! the union of what they covered), so memory is bounded by `MAX_SERIES` ×
//! `MAX_ENTRIES_PER_SERIES` entries whatever the nodes send and how fast.
//!
//! Latency arrives in legate's bucket scheme ([`legate_telemetry::load`]); a report without
//! it (Envoy's) still counts requests, and its latency is simply unknown.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterStats;
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use legate_telemetry::load::{LATENCY_SUM_METRIC, latency_bucket_of, quantile_ms};
use legate_telemetry::{Counter, Gauge, LATENCY_BUCKET_COUNT};
use tokio::sync::Notify;

/// Entries read from one report; the rest are ignored ([`Ignored::TooManyClusters`]).
pub const MAX_CLUSTERS_PER_REPORT: usize = 10_000;
/// (node, cluster) series kept in all; an entry that would start another is ignored
/// ([`Ignored::SeriesLimit`]) until old ones leave the window.
pub const MAX_SERIES: usize = 50_000;
/// Entries (reports, merged per second) kept per series.
pub const MAX_ENTRIES_PER_SERIES: usize = 64;
/// Localities read per cluster of a report.
pub const MAX_LOCALITIES: usize = 1_000;
/// Load metrics read per locality.
pub const MAX_METRICS: usize = 100;
/// Requests (issued, completed, dropped, in progress) one node may report for one cluster per
/// second of the interval a report covers; more is not a proxy's load.
pub const MAX_REQUESTS_PER_SECOND: u64 = 1_000_000;
/// The longest mean latency a report may state (one day, in ms).
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;
/// The longest `load_report_interval` a report may state (30 days); whatever such a report
/// says lies almost all before any window.
pub const MAX_COVERED: Duration = Duration::from_secs(30 * 86_400);
/// The version shown for a service with `endpoints` and no versions.
pub const NO_VERSION: &str = "-";
/// The window kept unless told otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The reporting interval legate-cp asks for unless told otherwise (`--lrs-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Why a cluster entry of a report was not kept (the `reason` of
/// `legate_cp_lrs_ignored_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Not a cluster of the published mesh.
    UnknownCluster,
    /// Past [`MAX_CLUSTERS_PER_REPORT`] in its report.
    TooManyClusters,
    /// Counts, latencies or interval beyond [`MAX_REQUESTS_PER_SECOND`], [`MAX_LATENCY_MS`]
    /// or [`MAX_COVERED`].
    Implausible,
    /// It would have started a series past [`MAX_SERIES`].
    SeriesLimit,
}

impl Ignored {
    pub const ALL: [Ignored; 4] = [
        Ignored::UnknownCluster,
        Ignored::TooManyClusters,
        Ignored::Implausible,
        Ignored::SeriesLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::UnknownCluster => "unknown_cluster",
            Ignored::TooManyClusters => "too_many_clusters",
            Ignored::Implausible => "implausible",
            Ignored::SeriesLimit => "series_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where the store counts what it keeps and leaves out (legate-cp's Prometheus metrics, or
/// counters of its own).
#[derive(Clone, Debug, Default)]
pub struct LoadMetrics {
    /// (node, cluster) series held (`legate_cp_lrs_series`).
    pub series: Arc<Gauge>,
    /// Entries ignored, per [`Ignored`] in [`Ignored::ALL`]'s order
    /// (`legate_cp_lrs_ignored_total`).
    pub ignored: [Arc<Counter>; 4],
    /// Reports received over LRS that were not relayed to the other replicas (the relay's
    /// queue full, or over a batch's bound; `legate_cp_lrs_relay_dropped_total`).
    pub relay_dropped: Arc<Counter>,
}

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

    /// `part / whole` of this load (counts rounded down).
    fn share(&self, part: u64, whole: u64) -> Load {
        let whole = whole.max(1);
        let part = part.min(whole);
        let f = |n: u64| {
            u64::try_from(u128::from(n) * u128::from(part) / u128::from(whole)).unwrap_or(n)
        };
        Load {
            issued: f(self.issued),
            succeeded: f(self.succeeded),
            errored: f(self.errored),
            dropped: f(self.dropped),
            latency_buckets: self.latency_buckets.map(f),
            latency_count: f(self.latency_count),
            latency_sum_ms: self.latency_sum_ms * part as f64 / whole as f64,
        }
    }

    /// One cluster's entry of a report, covering `seconds`; `None` when its counts could not
    /// be a proxy's (see [`MAX_REQUESTS_PER_SECOND`], [`MAX_LATENCY_MS`], [`MAX_COVERED`]).
    fn from_report(stats: &ClusterStats, seconds: u64) -> Option<(Load, u64)> {
        let mut load = Load {
            dropped: stats.total_dropped_requests,
            ..Load::default()
        };
        let mut in_progress = 0u64;
        for locality in stats.upstream_locality_stats.iter().take(MAX_LOCALITIES) {
            load.issued = load.issued.saturating_add(locality.total_issued_requests);
            load.succeeded = load
                .succeeded
                .saturating_add(locality.total_successful_requests);
            load.errored = load.errored.saturating_add(locality.total_error_requests);
            in_progress = in_progress.saturating_add(locality.total_requests_in_progress);
            for metric in locality.load_metric_stats.iter().take(MAX_METRICS) {
                let n = metric.num_requests_finished_with_metric;
                if metric.metric_name == LATENCY_SUM_METRIC {
                    let v = metric.total_metric_value;
                    if !(v.is_finite() && v >= 0.0) {
                        return None;
                    }
                    load.latency_count = load.latency_count.saturating_add(n);
                    load.latency_sum_ms += v;
                } else if let Some(i) = latency_bucket_of(&metric.metric_name) {
                    load.latency_buckets[i] = load.latency_buckets[i].saturating_add(n);
                }
            }
        }
        let plausible = load.plausible(seconds) && in_progress <= MAX_REQUESTS_PER_SECOND;
        plausible.then_some((load, in_progress))
    }

    /// Whether a proxy could have sent this much to one cluster in `seconds`
    /// ([`MAX_REQUESTS_PER_SECOND`], [`MAX_LATENCY_MS`], [`MAX_COVERED`]).
    fn plausible(&self, seconds: u64) -> bool {
        let most = MAX_REQUESTS_PER_SECOND.saturating_mul(seconds);
        let bucketed = self
            .latency_buckets
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b));
        let counts = [
            self.issued,
            self.succeeded,
            self.errored,
            self.dropped,
            self.latency_count,
            bucketed,
        ];
        seconds <= MAX_COVERED.as_secs()
            && counts.iter().all(|&n| n <= most)
            && self.latency_sum_ms <= self.latency_count as f64 * MAX_LATENCY_MS
    }
}

/// The whole seconds a report's `load_report_interval` covers: at least one (a missing,
/// negative or sub-second interval is the second it arrived in), rounded to the nearest.
fn covered_seconds(stats: &ClusterStats) -> u64 {
    let Some(d) = &stats.load_report_interval else {
        return 1;
    };
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let half_up = u64::from(d.nanos >= 500_000_000);
    secs.saturating_add(half_up).max(1)
}

/// One version of a service over a window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VersionLoad {
    /// The version's name; `-` for a service with `endpoints` and no versions.
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
    /// Their ids.
    #[serde(skip)]
    pub nodes: BTreeSet<String>,
}

/// A service's versions over a window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceLoad {
    pub service: String,
    pub window_seconds: f64,
    pub versions: Vec<VersionLoad>,
}

/// What one report said for one cluster, spread over the seconds `to - len + 1 ..= to`
/// (seconds since the store's start; the first may lie before it).
#[derive(Debug)]
struct Entry {
    to: u64,
    len: u64,
    load: Load,
}

impl Entry {
    /// The share of this entry's load in seconds `from..=to` (`None`: no overlap); `from`
    /// is before the store's start when the window reaches back further.
    fn within(&self, from: i128, to: u64) -> Option<Load> {
        let first = i128::from(self.to) - i128::from(self.len) + 1;
        let lo = first.max(from);
        let hi = i128::from(self.to.min(to));
        if hi < lo {
            return None;
        }
        let overlap = u64::try_from(hi - lo + 1).unwrap_or(u64::MAX);
        Some(if overlap >= self.len {
            self.load.clone()
        } else {
            self.load.share(overlap, self.len)
        })
    }
}

#[derive(Debug, Default)]
struct Series {
    /// Oldest first, by `to`.
    entries: VecDeque<Entry>,
    in_progress: u64,
}

impl Series {
    /// Adds `entry`, merged into the last one when it arrived in the same second; `false`
    /// (and nothing changes) when the merged entry would not be plausible: many entries for
    /// one cluster in one report or one second are held to the bound of one.
    fn push(&mut self, entry: Entry) -> bool {
        match self.entries.back_mut() {
            Some(last) if last.to == entry.to => {
                let mut merged = last.load.clone();
                merged.add(&entry.load);
                let len = last.len.max(entry.len);
                if !merged.plausible(len) {
                    return false;
                }
                last.load = merged;
                last.len = len;
            }
            _ => self.entries.push_back(entry),
        }
        if self.entries.len() > MAX_ENTRIES_PER_SERIES
            && let (Some(a), Some(b)) = (self.entries.pop_front(), self.entries.pop_front())
        {
            // One entry spread over what both covered.
            let start =
                (i128::from(a.to) - i128::from(a.len)).min(i128::from(b.to) - i128::from(b.len));
            let len = u64::try_from(i128::from(b.to) - start).unwrap_or(b.len);
            let mut load = a.load;
            load.add(&b.load);
            self.entries.push_front(Entry {
                to: b.to,
                len,
                load,
            });
        }
        true
    }

    /// Drops entries that end before second `oldest`; `true` when nothing is left.
    fn prune(&mut self, oldest: u64) -> bool {
        while self.entries.front().is_some_and(|e| e.to < oldest) {
            self.entries.pop_front();
        }
        self.entries.is_empty()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// node id → cluster → series.
    nodes: HashMap<String, HashMap<String, Series>>,
    /// Series in `nodes`.
    series: usize,
    /// cluster → (service, version), from the published mesh.
    versions: HashMap<String, (String, String)>,
}

/// The fleet's load: written by LRS streams, read by the admin API.
#[derive(Debug)]
pub struct LoadStore {
    start: Instant,
    window: Duration,
    inner: Mutex<Inner>,
    metrics: LoadMetrics,
    /// Woken after every report kept: the rollout controller judges on arrival.
    reported: Notify,
    /// Where reports received over LRS are also sent, for the other replicas
    /// ([`crate::etcd::Etcd::spawn_load_relay`]); unset on a single legate-cp.
    relay: std::sync::OnceLock<tokio::sync::mpsc::Sender<LoadStatsRequest>>,
}

/// A cluster's load summed over nodes: the load, attempts in progress at each node's latest
/// report, and the nodes that reported.
pub type ClusterLoad = (Load, u64, BTreeSet<String>);

impl LoadStore {
    pub fn new(window: Duration) -> LoadStore {
        LoadStore::with_metrics(window, LoadMetrics::default())
    }

    /// A store that counts in `metrics`.
    pub fn with_metrics(window: Duration, metrics: LoadMetrics) -> LoadStore {
        LoadStore {
            start: Instant::now(),
            window: window.max(Duration::from_secs(1)),
            inner: Mutex::default(),
            metrics,
            reported: Notify::new(),
            relay: std::sync::OnceLock::new(),
        }
    }

    /// Send every report received over LRS from now on to `relay` too (dropped, not waited
    /// for, when it is full: the request path of an LRS stream never waits on etcd).
    pub fn relay_to(&self, relay: tokio::sync::mpsc::Sender<LoadStatsRequest>) {
        let _ = self.relay.set(relay);
    }

    /// Notified (one permit, see [`Notify::notify_one`]) after each report that kept
    /// something: whoever judges on fresh load waits on it.
    pub fn reported(&self) -> &Notify {
        &self.reported
    }

    /// The longest window kept.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Cluster entries ignored for `reason` so far.
    pub fn ignored(&self, reason: Ignored) -> u64 {
        self.metrics.ignored[reason.index()].get()
    }

    /// (node, cluster) series held.
    pub fn series(&self) -> usize {
        self.lock().series
    }

    /// Which service and version each cluster serves: `(cluster, service, version)`,
    /// replacing the previous mapping (the published mesh's clusters: `<service>-<version>`,
    /// and a service's own name, version `-`, when it has no versions).
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

    fn count(&self, reason: Ignored, n: u64) {
        if n > 0 {
            self.metrics.ignored[reason.index()].add(n);
        }
    }

    /// Record one report `node` sent this replica over LRS (and relay it, see
    /// [`relay_to`](Self::relay_to)).
    pub fn record(&self, node: &str, stats: &[ClusterStats]) {
        self.record_at(node, stats, Instant::now());
        if let Some(relay) = self.relay.get()
            && !stats.is_empty()
            && relay
                .try_send(crate::etcd::relayed_report(node, stats))
                .is_err()
        {
            self.metrics.relay_dropped.inc();
        }
    }

    /// Count reports received here and not relayed to the other replicas.
    pub fn relay_dropped(&self, n: u64) {
        self.metrics.relay_dropped.add(n);
    }

    /// Record a report another replica received (not relayed again).
    pub fn record_relayed(&self, node: &str, stats: &[ClusterStats]) {
        self.record_at(node, stats, Instant::now());
    }

    pub fn record_at(&self, node: &str, stats: &[ClusterStats], at: Instant) {
        if stats.is_empty() {
            return;
        }
        let now = self.second(at);
        let oldest = now.saturating_sub(self.window.as_secs());
        let mut ignored = [0u64; 4];
        ignored[Ignored::TooManyClusters.index()] =
            stats.len().saturating_sub(MAX_CLUSTERS_PER_REPORT) as u64;
        let mut guard = self.lock();
        let inner = &mut *guard;
        for s in stats.iter().take(MAX_CLUSTERS_PER_REPORT) {
            if !inner.versions.contains_key(&s.cluster_name) {
                ignored[Ignored::UnknownCluster.index()] += 1;
                continue;
            }
            let len = covered_seconds(s);
            let Some((load, in_progress)) = Load::from_report(s, len) else {
                ignored[Ignored::Implausible.index()] += 1;
                continue;
            };
            let clusters = inner.nodes.entry(node.to_owned()).or_default();
            let series = match clusters.get_mut(&s.cluster_name) {
                Some(series) => series,
                None if inner.series >= MAX_SERIES => {
                    ignored[Ignored::SeriesLimit.index()] += 1;
                    continue;
                }
                None => {
                    inner.series += 1;
                    clusters.entry(s.cluster_name.clone()).or_default()
                }
            };
            if !series.push(Entry { to: now, len, load }) {
                ignored[Ignored::Implausible.index()] += 1;
                continue;
            }
            series.in_progress = in_progress;
            series.prune(oldest);
        }
        if inner.nodes.get(node).is_some_and(HashMap::is_empty) {
            inner.nodes.remove(node);
        }
        self.metrics
            .series
            .set(i64::try_from(inner.series).unwrap_or(i64::MAX));
        drop(guard);
        for reason in Ignored::ALL {
            self.count(reason, ignored[reason.index()]);
        }
        self.reported.notify_one();
    }

    /// Every node's load per cluster over the last `window` (at most the store's window).
    pub fn clusters(&self, window: Duration) -> BTreeMap<String, ClusterLoad> {
        self.clusters_at(window, Instant::now())
    }

    fn clusters_at(&self, window: Duration, at: Instant) -> BTreeMap<String, ClusterLoad> {
        let now = self.second(at);
        let span = window.min(self.window).as_secs().max(1);
        // The window is the `span` seconds ending with the current one, some of which may be
        // before the store started (an entry can cover them).
        let from = i128::from(now) + 1 - i128::from(span);
        self.clusters_from(from, now)
    }

    /// Every node's load per cluster in seconds `from..=now` (since the store's start).
    fn clusters_from(&self, from: i128, now: u64) -> BTreeMap<String, ClusterLoad> {
        let keep = self.window.as_secs();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut removed = 0usize;
        let mut out: BTreeMap<String, ClusterLoad> = BTreeMap::new();
        inner.nodes.retain(|node, clusters| {
            clusters.retain(|name, series| {
                if series.prune(now.saturating_sub(keep)) {
                    removed += 1;
                    return false;
                }
                let mut load = Load::default();
                let mut any = false;
                for entry in &series.entries {
                    if let Some(part) = entry.within(from, now) {
                        load.add(&part);
                        any = true;
                    }
                }
                if any {
                    let entry = out.entry(name.clone()).or_default();
                    entry.0.add(&load);
                    entry.1 = entry.1.saturating_add(series.in_progress);
                    entry.2.insert(node.clone());
                }
                true
            });
            !clusters.is_empty()
        });
        inner.series = inner.series.saturating_sub(removed);
        self.metrics
            .series
            .set(i64::try_from(inner.series).unwrap_or(i64::MAX));
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
        self.service_load(service, &clusters, span)
    }

    /// A service's load per version since `since`: the whole seconds after the one `since`
    /// falls in, up to the current one (a report's load is spread over the seconds it
    /// covers, so load from before `since` is left out to the second). Bounded by the
    /// store's window: what is older is gone. Empty until a second has passed.
    pub fn service_since(&self, service: &str, since: Instant) -> ServiceLoad {
        self.service_since_at(service, since, Instant::now())
    }

    pub fn service_since_at(&self, service: &str, since: Instant, at: Instant) -> ServiceLoad {
        let now = self.second(at);
        let first = self.second(since).saturating_add(1);
        let seconds = now.saturating_add(1).saturating_sub(first);
        let clusters = if seconds == 0 {
            BTreeMap::new()
        } else {
            self.clusters_from(i128::from(first), now)
        };
        let span = Duration::from_secs(seconds.min(self.window.as_secs()));
        self.service_load(service, &clusters, span)
    }

    fn service_load(
        &self,
        service: &str,
        clusters: &BTreeMap<String, ClusterLoad>,
        span: Duration,
    ) -> ServiceLoad {
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
                    requests_per_second: load.issued as f64 / span.as_secs_f64().max(1.0),
                    error_percent: (completed > 0)
                        .then(|| load.errored as f64 * 100.0 / completed as f64),
                    p50_ms: quantile_ms(&load.latency_buckets, 0.5),
                    p99_ms: quantile_ms(&load.latency_buckets, 0.99),
                    nodes_reporting: nodes.len(),
                    nodes,
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
    fn reports_are_relayed_and_those_that_do_not_fit_are_counted() {
        let metrics = LoadMetrics::default();
        let store = LoadStore::with_metrics(Duration::from_secs(60), metrics.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        store.relay_to(tx);
        store.record("n1", &[report("a-v1", 1, 0, None)]);
        store.record("n2", &[report("a-v1", 2, 0, None)]);
        // A relayed report is recorded, never relayed again.
        store.record_relayed("n3", &[report("a-v1", 3, 0, None)]);
        let relayed = rx.try_recv().expect("the first report is relayed");
        assert_eq!(relayed.node.map(|n| n.id).as_deref(), Some("n1"));
        assert!(rx.try_recv().is_err(), "only one fits the queue");
        assert_eq!(metrics.relay_dropped.get(), 1);
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
    fn load_since_an_instant_leaves_out_what_came_before_it() {
        let store = LoadStore::new(Duration::from_secs(60));
        store.set_versions([("a-v2".into(), "a".into(), "v2".into())]);
        let t0 = store.start;
        let s = |n: u64| t0 + Duration::from_secs(n);
        store.record_at("n1", &[report("a-v2", 10, 0, None)], s(1));
        store.record_at("n1", &[report("a-v2", 5, 5, None)], s(3));
        store.record_at("n2", &[report("a-v2", 1, 0, None)], s(3));
        // Since 2.5 s: the reports of second 3 only, from both nodes.
        let since = t0 + Duration::from_millis(2500);
        let v = &store.service_since_at("a", since, s(3)).versions[0];
        assert_eq!((v.load.succeeded, v.load.errored), (6, 5), "{v:?}");
        assert_eq!(v.nodes, BTreeSet::from(["n1".to_owned(), "n2".to_owned()]));
        assert_eq!(v.nodes_reporting, 2);
        // Nothing yet within the second `since` falls in.
        let v = &store.service_since_at("a", s(3), s(3)).versions[0];
        assert_eq!((v.load.issued, v.nodes_reporting), (0, 0), "{v:?}");
        // Since the store's start: every report after its first second.
        let v = &store.service_since_at("a", t0, s(3)).versions[0];
        assert_eq!(v.load.issued, 21, "{v:?}");
    }

    fn interval(mut stats: ClusterStats, seconds: i64, nanos: i32) -> ClusterStats {
        stats.load_report_interval =
            Some(envoy_types::pb::google::protobuf::Duration { seconds, nanos });
        stats
    }

    fn known(store: &LoadStore, n: usize) {
        store.set_versions((0..n).map(|i| (format!("c{i}"), format!("c{i}"), "-".to_owned())));
    }

    #[test]
    fn hostile_reports_are_bounded() {
        let store = LoadStore::new(Duration::from_secs(60));
        known(&store, 10);
        let t0 = store.start;
        // A huge list: only the mesh's clusters are kept, only the first
        // MAX_CLUSTERS_PER_REPORT entries are looked at.
        let many: Vec<ClusterStats> = (0..MAX_CLUSTERS_PER_REPORT + 5)
            .map(|i| report(&format!("c{i}"), 1, 0, None))
            .collect();
        store.record_at("n", &many, t0);
        assert_eq!(store.series(), 10);
        assert_eq!(store.ignored(Ignored::TooManyClusters), 5);
        assert_eq!(
            store.ignored(Ignored::UnknownCluster),
            (MAX_CLUSTERS_PER_REPORT - 10) as u64
        );
        // Absurd counts are refused whole, whatever interval they claim to cover.
        let absurd = [
            report("c0", u64::MAX, 0, None),
            report("c0", 0, 0, Some(("legate.latency_ms.le_inf", u64::MAX))),
            interval(report("c0", u64::MAX / 2, 0, None), i64::MAX / 2, 0),
        ];
        let mut nan = report("c1", 1, 0, None);
        nan.upstream_locality_stats[0]
            .load_metric_stats
            .push(EndpointLoadMetricStats {
                metric_name: LATENCY_SUM_METRIC.to_owned(),
                num_requests_finished_with_metric: 1,
                total_metric_value: f64::NAN,
            });
        let mut slow = report("c1", 1, 0, None);
        slow.upstream_locality_stats[0]
            .load_metric_stats
            .push(EndpointLoadMetricStats {
                metric_name: LATENCY_SUM_METRIC.to_owned(),
                num_requests_finished_with_metric: 1,
                total_metric_value: 1e300,
            });
        let mut busy = report("c1", 1, 0, None);
        busy.upstream_locality_stats[0].total_requests_in_progress = u64::MAX;
        store.record_at("n", &absurd, t0);
        store.record_at("n", &[nan, slow, busy], t0);
        assert_eq!(store.ignored(Ignored::Implausible), 6);
        // Many entries for one cluster in a second are held to the bound of one.
        let full = report("c2", MAX_REQUESTS_PER_SECOND / 2, 0, None);
        store.record_at("n", &vec![full; 10], t0);
        // (c2 already had 1 in that second: one more half fits, the other nine do not.)
        assert_eq!(store.ignored(Ignored::Implausible), 6 + 9);
        let c2 = &store.clusters_at(Duration::from_secs(60), t0)["c2"];
        assert_eq!(c2.0.issued, 1 + MAX_REQUESTS_PER_SECOND / 2, "{c2:?}");
        let c0 = &store.clusters_at(Duration::from_secs(60), t0)["c0"];
        assert_eq!(c0.0.issued, 1, "{c0:?}");
        // Reports faster than once a second share an entry; a series keeps a bounded number.
        for _ in 0..1000 {
            store.record_at("n", &many[..1], t0);
        }
        assert_eq!(store.lock().nodes["n"]["c0"].entries.len(), 1);
        for s in 1..1000 {
            store.record_at("n", &many[..1], t0 + Duration::from_secs(s));
        }
        let c0 = &store.clusters_at(Duration::from_secs(60), t0 + Duration::from_secs(999));
        assert_eq!(c0["c0"].0.issued, 60, "{c0:?}");
        // With a window longer than a series' entries, the oldest are merged: totals stay.
        let hour = LoadStore::new(Duration::from_secs(3600));
        known(&hour, 1);
        for s in 0..1000 {
            hour.record_at("n", &many[..1], hour.start + Duration::from_secs(s));
        }
        assert_eq!(
            hour.lock().nodes["n"]["c0"].entries.len(),
            MAX_ENTRIES_PER_SERIES
        );
        let end = hour.start + Duration::from_secs(999);
        assert_eq!(
            hour.clusters_at(Duration::from_secs(3600), end)["c0"]
                .0
                .issued,
            1000
        );
        assert_eq!(
            hour.clusters_at(Duration::from_secs(10), end)["c0"]
                .0
                .issued,
            10
        );
    }

    #[test]
    fn series_are_bounded_across_nodes() {
        let store = LoadStore::new(Duration::from_secs(60));
        known(&store, 10);
        let t0 = store.start;
        let all: Vec<ClusterStats> = (0..10)
            .map(|i| report(&format!("c{i}"), 1, 0, None))
            .collect();
        let nodes = MAX_SERIES / 10 + 1;
        for n in 0..nodes {
            store.record_at(&format!("node-{n}"), &all, t0);
        }
        assert_eq!(store.series(), MAX_SERIES);
        assert_eq!(store.ignored(Ignored::SeriesLimit), 10);
        // A node that has its series keeps reporting; past the window they are freed.
        store.record_at("node-0", &all, t0 + Duration::from_secs(1));
        assert_eq!(store.ignored(Ignored::SeriesLimit), 10);
        let later = t0 + Duration::from_secs(120);
        assert!(store.clusters_at(Duration::from_secs(60), later).is_empty());
        assert_eq!(store.series(), 0);
        store.record_at(&format!("node-{}", nodes - 1), &all, later);
        assert_eq!(store.series(), 10);
    }

    #[test]
    fn a_report_after_an_outage_is_spread_over_the_time_it_covers() {
        let store = LoadStore::new(Duration::from_secs(60));
        known(&store, 2);
        let t0 = store.start;
        let at = t0 + Duration::from_secs(100);
        // 100 requests over the last 50 s, then 3,600 over the last hour.
        store.record_at("n", &[interval(report("c0", 100, 0, None), 50, 0)], at);
        store.record_at("n", &[interval(report("c1", 3600, 0, None), 3600, 0)], at);
        let ten = store.clusters_at(Duration::from_secs(10), at);
        assert_eq!(ten["c0"].0.issued, 20, "{ten:?}");
        assert_eq!(ten["c1"].0.issued, 10, "{ten:?}");
        let minute = store.clusters_at(Duration::from_secs(60), at);
        assert_eq!(minute["c0"].0.issued, 100, "{minute:?}");
        assert_eq!(minute["c1"].0.issued, 60, "{minute:?}");
        // The per-version view has the same rate over any window.
        store.set_versions([("c0".to_owned(), "s".to_owned(), "v1".to_owned())]);
        for w in [10, 25, 50] {
            let v = &store
                .service_window_at("s", Duration::from_secs(w), at)
                .versions[0];
            assert!((v.requests_per_second - 2.0).abs() < 1e-9, "{w}s: {v:?}");
        }
        // Just after legate-cp started, a window still reaches back its whole length.
        let fresh = LoadStore::new(Duration::from_secs(60));
        known(&fresh, 1);
        let one = fresh.start + Duration::from_secs(1);
        fresh.record_at("n", &[interval(report("c0", 100, 0, None), 20, 0)], one);
        assert_eq!(
            fresh.clusters_at(Duration::from_secs(60), one)["c0"]
                .0
                .issued,
            100
        );
        assert_eq!(
            fresh.clusters_at(Duration::from_secs(10), one)["c0"]
                .0
                .issued,
            50
        );
        // Sub-second and missing intervals are the second the report arrived in.
        assert_eq!(covered_seconds(&report("c0", 1, 0, None)), 1);
        assert_eq!(
            covered_seconds(&interval(report("c0", 1, 0, None), 0, 1)),
            1
        );
        assert_eq!(
            covered_seconds(&interval(report("c0", 1, 0, None), -9, -1)),
            1
        );
        assert_eq!(
            covered_seconds(&interval(report("c0", 1, 0, None), 4, 600_000_000)),
            5
        );
    }
}
