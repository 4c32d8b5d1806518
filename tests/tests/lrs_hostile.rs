//! legate-cp's load report server (LRS) against streams no honest proxy opens, over real gRPC
//! streams to a real legate-cp: a stream that never names its node, one without a node, an
//! oversized node id, reports naming ten thousand clusters, counts and latencies no proxy
//! could produce, and reports sent as fast as the stream takes them. legate-cp refuses what
//! it refuses with a status that says why, keeps what it holds bounded (its series and its
//! memory), and goes on aggregating the honest nodes' load exactly.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterStats, EndpointLoadMetricStats, UpstreamLocalityStats,
};
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use legate_tests::cp::ControlPlane;
use legate_tests::eventually;
use legate_tests::process::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(15);

const MESH: &str = r#"
proxy:
  listener: {name: outbound, address: 127.0.0.1:0, protocol: auto}
services:
  - name: payments
    versions:
      - {name: v1, weight: 50, endpoints: [{address: 127.0.0.1:1}]}
      - {name: v2, weight: 50, endpoints: [{address: 127.0.0.1:1}]}
    route: {prefix: /payments/, timeout: 5s}
"#;

/// Nodes that each send one report naming [`FLOOD_CLUSTERS`] clusters.
const FLOODERS: usize = 20;
/// Entries in a flood report: payments-v2 first, then names the mesh does not have.
const FLOOD_CLUSTERS: usize = 10_500;
/// Reports the fast node sends back to back.
const FAST_REPORTS: u64 = 500;

/// One open LRS stream.
struct Lrs {
    tx: mpsc::Sender<LoadStatsRequest>,
    responses: Streaming<LoadStatsResponse>,
}

impl Lrs {
    /// Opens a stream whose first message is `first` (none at all when `None`).
    async fn open(channel: &Channel, first: Option<LoadStatsRequest>) -> Lrs {
        let (tx, rx) = mpsc::channel(64);
        if let Some(first) = first {
            tx.send(first).await.expect("queue the first request");
        }
        let responses = LoadReportingServiceClient::new(channel.clone())
            .stream_load_stats(ReceiverStream::new(rx))
            .await
            .expect("legate-cp accepts the stream")
            .into_inner();
        Lrs { tx, responses }
    }

    /// Opens a stream as node `id` and checks legate-cp's one answer.
    async fn node(channel: &Channel, id: &str) -> Lrs {
        let mut lrs = Lrs::open(channel, Some(hello(Some(id)))).await;
        let settings = tokio::time::timeout(WAIT, lrs.responses.message())
            .await
            .expect("settings in time")
            .expect("settings")
            .expect("a response");
        assert!(settings.send_all_clusters, "{settings:?}");
        assert_eq!(
            settings.load_reporting_interval,
            Some(PbDuration {
                seconds: 1,
                nanos: 0
            })
        );
        lrs
    }

    async fn send(&self, cluster_stats: Vec<ClusterStats>) {
        self.tx
            .send(LoadStatsRequest {
                node: None,
                cluster_stats,
            })
            .await
            .expect("stream open");
    }

    /// The status that ends the stream.
    async fn refusal(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Err(status)) => status,
            other => panic!("expected the stream to be refused, got {other:?}"),
        }
    }
}

fn hello(id: Option<&str>) -> LoadStatsRequest {
    LoadStatsRequest {
        node: id.map(|id| Node {
            id: id.to_owned(),
            cluster: "web".to_owned(),
            ..Default::default()
        }),
        cluster_stats: Vec::new(),
    }
}

/// One cluster's load over the last `seconds`.
fn stats(cluster: &str, succeeded: u64, errored: u64, seconds: i64) -> ClusterStats {
    ClusterStats {
        cluster_name: cluster.to_owned(),
        upstream_locality_stats: vec![UpstreamLocalityStats {
            total_issued_requests: succeeded.saturating_add(errored),
            total_successful_requests: succeeded,
            total_error_requests: errored,
            ..Default::default()
        }],
        load_report_interval: Some(PbDuration { seconds, nanos: 0 }),
        ..Default::default()
    }
}

fn in_progress(mut s: ClusterStats, n: u64) -> ClusterStats {
    s.upstream_locality_stats[0].total_requests_in_progress = n;
    s
}

async fn channel(cp: &ControlPlane) -> Channel {
    tonic::transport::Endpoint::from_shared(cp.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to legate-cp's xDS port")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn version(cp: &ControlPlane, v: &str) -> serde_json::Value {
    let load = cp
        .get_json("/v1/load?service=payments")
        .await
        .unwrap_or_else(|e| panic!("GET /v1/load: {e}"));
    load["services"][0]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["version"] == v))
        .cloned()
        .unwrap_or_else(|| panic!("no payments {v} in {load}"))
}

#[tokio::test]
async fn hostile_load_reports_are_refused_or_bounded_and_honest_load_stays_exact() {
    let dir = TempDir::new("lrs-hostile");
    let config = dir.write("mesh.yaml", MESH);
    let cp = ControlPlane::start_with(&config, &dir.path().join("data"), &["--lrs-interval", "1s"])
        .await;
    let channel = channel(&cp).await;
    let rss_before = rss_kib(cp.pid());

    // An honest node, which has no xDS stream: LRS may open first, so it is not refused.
    let honest = Lrs::node(&channel, "honest").await;
    honest.send(vec![stats("payments-v1", 9, 1, 1)]).await;

    // A stream that never names its node is ended after two reporting intervals (2 s at
    // least), rather than holding a stream permit for ever.
    let mut silent = Lrs::open(&channel, None).await;
    let status = silent.refusal().await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("the first load report must name its node within 2s"),
        "{status:?}"
    );
    // No node, and a node id past --xds-max-name-length.
    let status = Lrs::open(&channel, Some(hello(None))).await.refusal().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "the first load report must name its node");
    let long = "n".repeat(5000);
    let status = Lrs::open(&channel, Some(hello(Some(&long))))
        .await
        .refusal()
        .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("--xds-max-name-length"),
        "{status:?}"
    );

    // A report past --xds-max-request-size (4 MiB by default) is refused by gRPC, and the
    // sender is told so.
    let mut big = Lrs::node(&channel, "big").await;
    big.send(vec![stats(&"x".repeat(5 << 20), 1, 0, 1)]).await;
    let status = big.refusal().await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");

    // Reports naming 10,500 clusters: only the mesh's are kept, only 10,000 read.
    let mut flood: Vec<ClusterStats> = vec![stats("payments-v2", 5, 0, 1)];
    flood.extend((1..FLOOD_CLUSTERS).map(|i| stats(&format!("not-in-the-mesh-{i:05}"), 1, 0, 1)));
    let mut flooders = Vec::new();
    for n in 0..FLOODERS {
        let lrs = Lrs::node(&channel, &format!("flood-{n}")).await;
        lrs.send(flood.clone()).await;
        flooders.push(lrs);
    }

    // Counts and latencies no proxy could produce are refused whole; the stream stays open.
    let liar = Lrs::node(&channel, "liar").await;
    let mut nan = stats("payments-v1", 1, 0, 1);
    nan.upstream_locality_stats[0].load_metric_stats = vec![EndpointLoadMetricStats {
        metric_name: "legate.latency_ms".to_owned(),
        num_requests_finished_with_metric: 1,
        total_metric_value: f64::NAN,
    }];
    liar.send(vec![
        stats("payments-v1", u64::MAX, u64::MAX, 1),
        stats("payments-v1", u64::MAX / 4, 0, i64::MAX),
        in_progress(stats("payments-v1", 1, 0, -5), u64::MAX),
        nan,
    ])
    .await;

    // A node reporting as fast as the stream takes it, each report claiming a millisecond.
    let fast = Lrs::node(&channel, "fast").await;
    for _ in 0..FAST_REPORTS {
        let mut s = stats("payments-v2", 1, 0, 0);
        s.load_report_interval = Some(PbDuration {
            seconds: 0,
            nanos: 1_000_000,
        });
        fast.send(vec![s]).await;
    }

    // Everything read (every node's hello and report, the refused streams' first messages)
    // and recorded.
    let expected_reports = (1 + 1) + 2 + 1 + 2 * FLOODERS as u64 + 2 + 1 + FAST_REPORTS;
    let want = [
        ("unknown_cluster", (FLOODERS * 9_999) as u64),
        (
            "too_many_clusters",
            (FLOODERS * (FLOOD_CLUSTERS - 10_000)) as u64,
        ),
        ("implausible", 4),
        ("series_limit", 0),
    ];
    // honest: payments-v1; each flooder and fast: payments-v2; liar: none.
    let want_series = (1 + FLOODERS + 1) as u64;
    eventually(WAIT, "every report read and recorded", || async {
        let m = cp.metrics().await;
        let read = m.get_or_zero("legate_cp_lrs_reports_total", &[]) as u64;
        let got: Vec<(&str, u64)> = want
            .iter()
            .map(|(reason, _)| {
                let n = m.get_or_zero("legate_cp_lrs_ignored_total", &[("reason", reason)]);
                (*reason, n as u64)
            })
            .collect();
        let series = m.get_or_zero("legate_cp_lrs_series", &[]) as u64;
        let v2 = version(&cp, "v2").await;
        let fast_done = v2["issued"].as_u64() == Some(5 * FLOODERS as u64 + FAST_REPORTS);
        if read == expected_reports && got == want && series == want_series && fast_done {
            Ok(())
        } else {
            Err(format!(
                "read {read} of {expected_reports}; ignored {got:?}, want {want:?}; \
                 series {series}, want {want_series}; v2 {v2}"
            ))
        }
    })
    .await;
    let grown = rss_kib(cp.pid()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "legate-cp grew by {grown} KiB");

    // The honest load is exact; the liar's is nowhere.
    let v1 = version(&cp, "v1").await;
    assert_eq!(v1["issued"].as_u64(), Some(10), "{v1}");
    assert_eq!(v1["errored"].as_u64(), Some(1), "{v1}");
    assert_eq!(v1["in_progress"].as_u64(), Some(0), "{v1}");
    assert_eq!(v1["nodes_reporting"].as_u64(), Some(1), "{v1}");
    let v2 = version(&cp, "v2").await;
    assert_eq!(
        v2["issued"].as_u64(),
        Some(5 * FLOODERS as u64 + FAST_REPORTS),
        "{v2}"
    );
    assert_eq!(
        v2["nodes_reporting"].as_u64(),
        Some(FLOODERS as u64 + 1),
        "{v2}"
    );

    // legate-cp still takes new streams and counts them.
    let late = Lrs::node(&channel, "honest-2").await;
    late.send(vec![stats("payments-v1", 7, 0, 1)]).await;
    eventually(WAIT, "the new node's load", || async {
        let v1 = version(&cp, "v1").await;
        if v1["issued"].as_u64() == Some(17) && v1["nodes_reporting"].as_u64() == Some(2) {
            Ok(())
        } else {
            Err(v1.to_string())
        }
    })
    .await;
    drop((honest, liar, fast, late, flooders));
}
