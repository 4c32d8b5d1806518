//! The load-report client: Envoy's `LoadReportingService.StreamLoadStats`.
//!
//! The proxy opens the stream with its node, the server answers with what it wants (the
//! clusters, or all of them; the interval) and the proxy then sends, every interval, each
//! wanted cluster's load since the previous report: attempts issued, succeeded, errored, in
//! progress, requests dropped, and latency in the bucket scheme of
//! [`legate_telemetry::load`]. A later answer replaces the settings. Counting never restarts
//! (Envoy's does, at every answer): load sent before a server answered, or while none was
//! reachable, goes in the next report, whose `load_report_interval` says how long it covers,
//! so the totals a server sees match the traffic. Everything here reads
//! counters the request path keeps as atomics ([`LoadSource`]); nothing here is on the
//! request path.
//!
//! The server is hostile input like any other: its interval is held within
//! [`MIN_INTERVAL`]..=[`MAX_INTERVAL`], its cluster list within [`MAX_CLUSTERS`] names, and
//! its answers within the xDS client's message size. The stream dials the same servers, with
//! the same TLS and node, as the xDS client (`client::dial`), and reconnects with
//! the same back-off. `report_endpoint_granularity` is accepted and not honoured: load is
//! counted per cluster on the request path, so it is reported as one locality (the
//! cluster's) without per-endpoint stats, which in Envoy's scheme only break the locality's
//! counts down (docs/load-reports.md says why).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterStats, EndpointLoadMetricStats, UpstreamLocalityStats,
};
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use legate_telemetry::load::{LATENCY_SUM_METRIC, LoadCounts, latency_metric_name};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::XdsOptions;
use crate::client::{Backoff, StreamError, dial};

/// The shortest reporting interval honoured; a server asking for less gets this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest reporting interval honoured.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The interval used when a server's answer names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Cluster names kept from one answer; the rest are ignored (and logged).
pub const MAX_CLUSTERS: usize = 100_000;

/// Where the load comes from: the data plane's clusters.
pub trait LoadSource: Send + Sync + 'static {
    /// Every current cluster's counters (cumulative).
    fn load(&self) -> Vec<(Arc<str>, LoadCounts)>;
}

/// What the server asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub clusters: Wanted,
    pub interval: Duration,
}

/// Which clusters to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    All,
    Named(HashSet<String>),
}

impl Settings {
    /// A server's answer made safe: the interval saturated into
    /// [`MIN_INTERVAL`]..=[`MAX_INTERVAL`], at most [`MAX_CLUSTERS`] names.
    pub fn from_response(response: LoadStatsResponse) -> Settings {
        let LoadStatsResponse {
            clusters,
            send_all_clusters,
            load_reporting_interval,
            report_endpoint_granularity: _,
        } = response;
        let interval = load_reporting_interval
            .map(|d| {
                let secs = u64::try_from(d.seconds).unwrap_or(0);
                let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
                Duration::from_secs(secs).saturating_add(Duration::from_nanos(nanos.into()))
            })
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
        let clusters = if send_all_clusters {
            Wanted::All
        } else {
            if clusters.len() > MAX_CLUSTERS {
                tracing::warn!(
                    asked = clusters.len(),
                    kept = MAX_CLUSTERS,
                    "load report server asked for too many clusters; reporting the first ones"
                );
            }
            Wanted::Named(clusters.into_iter().take(MAX_CLUSTERS).collect())
        };
        Settings { clusters, interval }
    }

    fn wants(&self, name: &str) -> bool {
        match &self.clusters {
            Wanted::All => true,
            Wanted::Named(names) => names.contains(name),
        }
    }
}

/// Start reporting to `servers` (tried in order, as the xDS client does), with the xDS
/// client's node, TLS and back-off settings from `options`.
pub fn start(
    options: XdsOptions,
    servers: Vec<String>,
    source: Arc<dyn LoadSource>,
) -> JoinHandle<()> {
    tokio::spawn(run(options, servers, source))
}

async fn run(options: XdsOptions, servers: Vec<String>, source: Arc<dyn LoadSource>) {
    if servers.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(options.backoff_base, options.backoff_max);
    let mut idx = 0usize;
    // Kept across streams and servers: what was not reported yet (no server was reachable,
    // or the server's answer came after the traffic) goes in the next stream's first report,
    // with its longer measured interval, instead of being dropped.
    let mut reporter = Reporter::new();
    loop {
        let url = &servers[idx % servers.len()];
        let mut answered = false;
        match stream(&options, url, source.as_ref(), &mut reporter, &mut answered).await {
            Ok(()) => tracing::info!(server = %url, "load report stream closed by the server"),
            Err(error) => {
                let message = crate::tls::error_chain(&error);
                tracing::warn!(server = %url, error = %message, "load report stream failed");
            }
        }
        if answered {
            backoff.reset();
        } else {
            idx = idx.wrapping_add(1);
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// One stream: open, wait for the settings, report every interval until it ends.
async fn stream(
    options: &XdsOptions,
    url: &str,
    source: &dyn LoadSource,
    reporter: &mut Reporter,
    answered: &mut bool,
) -> Result<(), StreamError> {
    let channel = dial(options, url).await?;
    let mut client = LoadReportingServiceClient::new(channel)
        .max_decoding_message_size(options.max_message_size);
    let (tx, rx) = mpsc::channel::<LoadStatsRequest>(2);
    // The first message says who we are; reports carry no node.
    send(
        &tx,
        LoadStatsRequest {
            node: Some(options.node.clone()),
            cluster_stats: Vec::new(),
        },
    )?;
    let mut responses = client
        .stream_load_stats(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut settings: Option<Settings> = None;
    let mut next = Instant::now();
    loop {
        let due = settings.as_ref().map(|_| next);
        tokio::select! {
            message = responses.message() => {
                let Some(response) = message? else { return Ok(()) };
                *answered = true;
                let new = Settings::from_response(response);
                tracing::debug!(interval = ?new.interval, "load report settings");
                // Unlike Envoy, which starts counting afresh from each answer (and so loses
                // what came before it), counting goes on from the last report sent.
                next = Instant::now() + new.interval;
                settings = Some(new);
            }
            () = sleep_until(due) => {
                let Some(current) = &settings else { continue };
                let report = reporter.report(source.load(), current);
                send(&tx, LoadStatsRequest { node: None, cluster_stats: report })?;
                next += current.interval;
                // A report that fell far behind (a stopped process) does not burst.
                let now = Instant::now();
                if next < now {
                    next = now + current.interval;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn send(tx: &mpsc::Sender<LoadStatsRequest>, req: LoadStatsRequest) -> Result<(), StreamError> {
    tx.try_send(req).map_err(|_| StreamError::QueueFull)
}

/// The previous reading of every cluster, and when it was taken.
#[derive(Debug)]
pub struct Reporter {
    last: HashMap<Arc<str>, (LoadCounts, Instant)>,
    /// When the previous reading was taken, or the reporter made: a cluster first seen now
    /// was created since then.
    previous: Instant,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new()
    }
}

impl Reporter {
    /// A reporter counting from now (the proxy's start: no cluster has load before it).
    pub fn new() -> Reporter {
        Reporter {
            last: HashMap::new(),
            previous: Instant::now(),
        }
    }

    /// The wanted clusters' load since the previous reading, leaving out clusters with
    /// nothing to say (the report itself is sent every interval, empty or not, as Envoy
    /// does). A cluster first seen counts from zero (it is new) and covers the time since the
    /// previous reading, or since the reporter was made: its load may be from any moment of
    /// that time, for example from before a server could be reached, and the server spreads
    /// it over that interval. Clusters that are gone are forgotten.
    pub fn report(
        &mut self,
        readings: Vec<(Arc<str>, LoadCounts)>,
        settings: &Settings,
    ) -> Vec<ClusterStats> {
        let now = Instant::now();
        let previous = std::mem::replace(&mut self.previous, now);
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(readings.len());
        for (name, counts) in readings {
            let (earlier, since) = self
                .last
                .get(&name)
                .copied()
                .unwrap_or((LoadCounts::default(), previous));
            if settings.wants(&name) {
                let delta = counts.since(&earlier);
                if delta != LoadCounts::default() {
                    out.push(cluster_stats(
                        &name,
                        &delta,
                        now.saturating_duration_since(since),
                    ));
                }
            }
            next.insert(name, (counts, now));
        }
        self.last = next;
        out
    }
}

/// One cluster's report, as one locality.
pub fn cluster_stats(name: &str, delta: &LoadCounts, interval: Duration) -> ClusterStats {
    let mut load_metric_stats = Vec::new();
    let completed: u64 = delta
        .latency_buckets
        .iter()
        .fold(0, |a, b| a.saturating_add(*b));
    if completed > 0 {
        load_metric_stats.push(EndpointLoadMetricStats {
            metric_name: LATENCY_SUM_METRIC.to_owned(),
            num_requests_finished_with_metric: completed,
            total_metric_value: delta.latency_sum_nanos as f64 / 1e6,
        });
    }
    for (i, &n) in delta.latency_buckets.iter().enumerate() {
        if n > 0 {
            load_metric_stats.push(EndpointLoadMetricStats {
                metric_name: latency_metric_name(i),
                num_requests_finished_with_metric: n,
                total_metric_value: n as f64,
            });
        }
    }
    ClusterStats {
        cluster_name: name.to_owned(),
        cluster_service_name: String::new(),
        upstream_locality_stats: vec![UpstreamLocalityStats {
            locality: None,
            total_successful_requests: delta.succeeded,
            total_requests_in_progress: delta.in_progress,
            total_error_requests: delta.errored,
            total_issued_requests: delta.issued,
            total_active_connections: 0,
            total_new_connections: 0,
            total_fail_connections: 0,
            cpu_utilization: None,
            mem_utilization: None,
            application_utilization: None,
            load_metric_stats,
            upstream_endpoint_stats: Vec::new(),
            priority: 0,
        }],
        total_dropped_requests: delta.dropped,
        dropped_requests: Vec::new(),
        load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn interval(seconds: i64, nanos: i32) -> Duration {
        Settings::from_response(LoadStatsResponse {
            load_reporting_interval: Some(PbDuration { seconds, nanos }),
            ..Default::default()
        })
        .interval
    }

    #[test]
    fn hostile_intervals_are_held_in_bounds() {
        assert_eq!(interval(0, 0), MIN_INTERVAL);
        assert_eq!(interval(-5, -1), MIN_INTERVAL);
        assert_eq!(interval(0, 1), MIN_INTERVAL);
        assert_eq!(interval(i64::MAX, i32::MAX), MAX_INTERVAL);
        assert_eq!(interval(5, 0), Duration::from_secs(5));
        let none = Settings::from_response(LoadStatsResponse::default());
        assert_eq!(none.interval, DEFAULT_INTERVAL);
    }

    #[test]
    fn cluster_lists_are_bounded() {
        let s = Settings::from_response(LoadStatsResponse {
            clusters: (0..MAX_CLUSTERS + 10).map(|i| i.to_string()).collect(),
            ..Default::default()
        });
        let Wanted::Named(names) = &s.clusters else {
            panic!("named")
        };
        assert_eq!(names.len(), MAX_CLUSTERS);
    }

    fn covered(stats: &ClusterStats) -> Duration {
        let d = stats.load_report_interval.expect("an interval");
        Duration::new(
            u64::try_from(d.seconds).expect("seconds"),
            u32::try_from(d.nanos).expect("nanos"),
        )
    }

    /// Load sent while no server could be reached (ten minutes from the start) is reported
    /// as covering those ten minutes, so the server spreads it over them; a cluster that
    /// appears later covers the time since the previous reading.
    #[tokio::test(start_paused = true)]
    async fn a_cluster_first_seen_covers_the_time_since_the_previous_reading() {
        let settings = Settings {
            clusters: Wanted::All,
            interval: MIN_INTERVAL,
        };
        let counts = |issued| LoadCounts {
            issued,
            succeeded: issued,
            ..LoadCounts::default()
        };
        let mut r = Reporter::new();
        tokio::time::advance(Duration::from_secs(600)).await;
        let first = r.report(vec![("a".into(), counts(50))], &settings);
        assert_eq!(covered(&first[0]), Duration::from_secs(600));
        tokio::time::advance(Duration::from_secs(5)).await;
        let next = r.report(
            vec![("a".into(), counts(60)), ("b".into(), counts(1))],
            &settings,
        );
        assert_eq!(next.len(), 2);
        assert!(
            next.iter().all(|c| covered(c) == Duration::from_secs(5)),
            "{next:?}"
        );
    }

    #[test]
    fn reports_carry_differences_of_wanted_clusters() {
        let settings = Settings {
            clusters: Wanted::Named(["a".to_owned()].into()),
            interval: MIN_INTERVAL,
        };
        let mut r = Reporter::new();
        let counts = |issued| LoadCounts {
            issued,
            succeeded: issued,
            ..LoadCounts::default()
        };
        // A cluster first seen counts from zero.
        let first = r.report(
            vec![("a".into(), counts(5)), ("b".into(), counts(5))],
            &settings,
        );
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].upstream_locality_stats[0].total_issued_requests, 5);
        let report = r.report(
            vec![("a".into(), counts(8)), ("b".into(), counts(9))],
            &settings,
        );
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].cluster_name, "a");
        assert_eq!(
            report[0].upstream_locality_stats[0].total_issued_requests,
            3
        );
        // Nothing new: nothing sent.
        let report = r.report(vec![("a".into(), counts(8))], &settings);
        assert!(report.is_empty());
    }
}
