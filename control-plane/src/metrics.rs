//! legate-cp's Prometheus metrics, on legate's own registry (`legate-telemetry`), the one
//! that renders legate's `/stats/prometheus`: one metrics approach across the project.
//!
//! What is counted, and where it is recorded:
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `legate_cp_xds_streams` | gauge | `mode`, `node_cluster` | [`crate::registry`]: a stream registers / its handle drops |
//! | `legate_cp_xds_pushes_total` | counter | `mode`, `type_url` | a response sent on a stream |
//! | `legate_cp_xds_resources_sent_total` | counter | `mode`, `type_url` | the resources in those responses |
//! | `legate_cp_xds_ack_latency_seconds` | histogram | `type_url` | the ACK of the version last pushed for that type on that stream |
//! | `legate_cp_xds_nacks_total` | counter | `node_cluster`, `type_url` | a NACK |
//! | `legate_cp_xds_refusals_total` | counter | `reason` | an xDS stream or TLS handshake refused for its identity |
//! | `legate_cp_admin_changes_total` | counter | `operation`, `outcome` | [`crate::app::ControlPlane`]'s change calls |
//! | `legate_cp_admin_refusals_total` | counter | `reason` | the admin API's authorization point and TLS handshakes |
//! | `legate_cp_mesh_reloads_total` | counter | `outcome` | a settled version of the mesh files: applied, unchanged or refused |
//! | `legate_cp_lrs_reports_total` | counter | none | [`CpMetrics::lrs_report_received`] |
//! | `legate_cp_lrs_series` | gauge | none | [`crate::load_report::LoadStore`]: (node, cluster) series held |
//! | `legate_cp_lrs_ignored_total` | counter | `reason` | [`crate::load_report::LoadStore`]: report entries left out |
//! | `legate_cp_lrs_relay_dropped_total` | counter | none | [`crate::load_report::LoadStore`] and [`crate::etcd`]: reports not relayed to other replicas |
//! | `legate_cp_store_up` | gauge | none | [`crate::etcd::StoreHealth`]: etcd answers (always 1 with the data directory) |
//! | `legate_cp_leader` | gauge | none | [`crate::etcd::Etcd::spawn_election`]: this replica runs the rollout controller |
//!
//! **Bounded labels.** Node ids are not labels: a fleet's node ids (pod names) grow without
//! bound over time. Streams and NACKs are labelled with the node's *cluster* instead, and
//! only the first [`MAX_NODE_CLUSTER_LABELS`] distinct node clusters seen since start get
//! their own value; later ones are counted under [`OTHER_NODE_CLUSTERS`]. Values are cut
//! to 256 characters. Per-node detail (which node NACKed what, and why) is in the admin
//! API (`legatectl status`, `/v1/nodes`), not in the metrics. Every other label takes a
//! fixed set of values (modes, the five type URLs, refusal reasons, outcomes).
//!
//! **Serving.** [`serve`] answers `GET /metrics` on a listener of its own
//! (`--metrics-address`, loopback by default), without authentication, as Envoy's admin port
//! and istiod's monitoring port do: Prometheus scrapes without credentials, and the admin
//! API's authorization stays what it was. Nothing here is secret (counts, node cluster
//! names, type URLs, reasons); to expose it on a non-loopback address is the operator's
//! choice of `--metrics-address`.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use legate_snapshot::ResourceKind;
use legate_telemetry::{Counter, Family, Gauge, Histogram, Registry};
use tokio::net::TcpListener;

use crate::registry::StreamMode;

/// Distinct node clusters that get a label value of their own (see the module docs).
pub const MAX_NODE_CLUSTER_LABELS: usize = 64;
/// The `node_cluster` value of every node cluster past [`MAX_NODE_CLUSTER_LABELS`].
pub const OTHER_NODE_CLUSTERS: &str = "_other";

/// Where the outcome of an admin change is counted (`operation` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOperation {
    Apply,
    SetWeights,
    Reset,
    Delete,
    /// Starting or steering a canary rollout.
    Rollout,
}

impl AdminOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminOperation::Apply => "apply",
            AdminOperation::SetWeights => "set_weights",
            AdminOperation::Reset => "reset",
            AdminOperation::Delete => "delete",
            AdminOperation::Rollout => "rollout",
        }
    }
}

/// What became of a settled version of the mesh files (`outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshReload {
    /// Applied, and what is served changed: pushed.
    Applied,
    /// Applied, but nothing served changed (a comment, formatting): nothing pushed.
    Unchanged,
    /// Refused (unreadable, invalid): the last good configuration stays.
    Refused,
}

impl MeshReload {
    fn as_str(self) -> &'static str {
        match self {
            MeshReload::Applied => "applied",
            MeshReload::Unchanged => "unchanged",
            MeshReload::Refused => "refused",
        }
    }
}

/// legate-cp's metrics. One per process ([`crate::app::ControlPlane::metrics`]); a
/// [`crate::NodeRegistry`] made on its own (tests, the load simulator) has a private one.
pub struct CpMetrics {
    registry: Registry,
    streams: Arc<Family<Gauge>>,
    /// By mode (SotW, delta), then by [`ResourceKind::index`].
    pushes: [[Arc<Counter>; 5]; 2],
    /// Resources those responses carried, indexed the same way.
    resources_sent: [[Arc<Counter>; 5]; 2],
    ack_latency: [Arc<Histogram>; 5],
    nacks: Arc<Family<Counter>>,
    xds_refusals: Arc<Family<Counter>>,
    admin_changes: Arc<Family<Counter>>,
    admin_refusals: Arc<Family<Counter>>,
    mesh_reloads: Arc<Family<Counter>>,
    lrs_reports: Arc<Counter>,
    lrs_load: crate::load_report::LoadMetrics,
    rollback_latency: Arc<Histogram>,
    rollout_decisions: Arc<Family<Counter>>,
    store_up: Arc<Gauge>,
    leader: Arc<Gauge>,
    /// Node clusters given a label value of their own, at most [`MAX_NODE_CLUSTER_LABELS`].
    node_clusters: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for CpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpMetrics").finish_non_exhaustive()
    }
}

impl Default for CpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn mode_label(mode: StreamMode) -> &'static str {
    match mode {
        StreamMode::Sotw => "sotw",
        StreamMode::Delta => "delta",
    }
}

impl CpMetrics {
    pub fn new() -> CpMetrics {
        let registry = Registry::new();
        let streams = registry.family::<Gauge>(
            "legate_cp_xds_streams",
            "xDS streams open, by mode (sotw or delta) and node cluster (the first 64 node \
             clusters seen; later ones as _other).",
            &["mode", "node_cluster"],
        );
        let pushes_family = registry.family::<Counter>(
            "legate_cp_xds_pushes_total",
            "xDS responses sent, by stream mode and resource type.",
            &["mode", "type_url"],
        );
        let pushes = [StreamMode::Sotw, StreamMode::Delta].map(|mode| {
            ResourceKind::WARM_ORDER
                .map(|kind| pushes_family.get_or_create(&[mode_label(mode), kind.type_url()]))
        });
        let resources_family = registry.family::<Counter>(
            "legate_cp_xds_resources_sent_total",
            "Resources sent in xDS responses, by stream mode and resource type (a delta \
             response carries only what the client does not hold).",
            &["mode", "type_url"],
        );
        let resources_sent = [StreamMode::Sotw, StreamMode::Delta].map(|mode| {
            ResourceKind::WARM_ORDER
                .map(|kind| resources_family.get_or_create(&[mode_label(mode), kind.type_url()]))
        });
        let ack_family = registry.family::<Histogram>(
            "legate_cp_xds_ack_latency_seconds",
            "Time from sending a version of a resource type on a stream to the client's ACK \
             of that version.",
            &["type_url"],
        );
        let ack_latency =
            ResourceKind::WARM_ORDER.map(|kind| ack_family.get_or_create(&[kind.type_url()]));
        let nacks = registry.family::<Counter>(
            "legate_cp_xds_nacks_total",
            "xDS responses a client rejected, by node cluster (the first 64 seen; later ones \
             as _other) and resource type.",
            &["node_cluster", "type_url"],
        );
        let xds_refusals = registry.family::<Counter>(
            "legate_cp_xds_refusals_total",
            "xDS streams and TLS handshakes refused for the identity they presented, by \
             reason.",
            &["reason"],
        );
        let admin_changes = registry.family::<Counter>(
            "legate_cp_admin_changes_total",
            "Admin changes (apply, set_weights, reset, delete) by outcome: ok, or why it was \
             refused (unknown_service, invalid, precondition, stopped).",
            &["operation", "outcome"],
        );
        for op in [
            AdminOperation::Apply,
            AdminOperation::SetWeights,
            AdminOperation::Reset,
            AdminOperation::Delete,
            AdminOperation::Rollout,
        ] {
            admin_changes.get_or_create(&[op.as_str(), "ok"]);
        }
        let admin_refusals = registry.family::<Counter>(
            "legate_cp_admin_refusals_total",
            "Admin API requests and connections refused before any handler ran, by reason \
             (no-credentials, wrong-token, not-admin, cross-origin, tls-handshake, ...).",
            &["reason"],
        );
        let mesh_reloads = registry.family::<Counter>(
            "legate_cp_mesh_reloads_total",
            "Settled versions of the mesh files, by outcome: applied (pushed), unchanged \
             (nothing served changed) or refused (the last good configuration stays).",
            &["outcome"],
        );
        for outcome in [
            MeshReload::Applied,
            MeshReload::Unchanged,
            MeshReload::Refused,
        ] {
            mesh_reloads.get_or_create(&[outcome.as_str()]);
        }
        let lrs_reports = registry
            .family::<Counter>(
                "legate_cp_lrs_reports_total",
                "Load reports (LRS LoadStatsRequest messages) received.",
                &[],
            )
            .get_or_create(&[]);
        let lrs_series = registry
            .family::<Gauge>(
                "legate_cp_lrs_series",
                "Load report series (node, cluster) legate-cp holds.",
                &[],
            )
            .get_or_create(&[]);
        let lrs_ignored = registry.family::<Counter>(
            "legate_cp_lrs_ignored_total",
            "Cluster entries of load reports left out, by reason.",
            &["reason"],
        );
        let relay_dropped = registry
            .family::<Counter>(
                "legate_cp_lrs_relay_dropped_total",
                "Load reports received over LRS and not relayed to the other replicas \
                 (--store etcd://): the relay's queue was full, or a half second held more \
                 than a batch carries.",
                &[],
            )
            .get_or_create(&[]);
        let lrs_load = crate::load_report::LoadMetrics {
            series: lrs_series,
            ignored: crate::load_report::Ignored::ALL
                .map(|reason| lrs_ignored.get_or_create(&[reason.as_str()])),
            relay_dropped,
        };
        let rollback_latency = registry
            .family::<Histogram>(
                "legate_cp_rollout_rollback_seconds",
                "Canary rollbacks: time from the load report that failed a step (or the abort) \
                 to every node serving the service having ACKed the rollback's weights.",
                &[],
            )
            .get_or_create(&[]);
        let rollout_decisions = registry.family::<Counter>(
            "legate_cp_rollout_decisions_total",
            "Canary rollout decisions recorded, by verdict (pass, fail, inconclusive, manual).",
            &["verdict"],
        );
        for verdict in ["pass", "fail", "inconclusive", "manual"] {
            rollout_decisions.get_or_create(&[verdict]);
        }
        let store_up = registry
            .family::<Gauge>(
                "legate_cp_store_up",
                "1 while the store of admin changes and rollouts answers (the data directory \
                 always; etcd with --store etcd://), 0 while admin changes are refused for it.",
                &[],
            )
            .get_or_create(&[]);
        store_up.set(1);
        let leader = registry
            .family::<Gauge>(
                "legate_cp_leader",
                "1 while this legate-cp runs the rollout controller: always on a single \
                 legate-cp; with --store etcd://, on the replica holding the leader lease.",
                &[],
            )
            .get_or_create(&[]);
        leader.set(1);
        CpMetrics {
            store_up,
            leader,
            rollback_latency,
            rollout_decisions,
            registry,
            streams,
            pushes,
            resources_sent,
            ack_latency,
            nacks,
            xds_refusals,
            admin_changes,
            admin_refusals,
            mesh_reloads,
            lrs_reports,
            lrs_load,
            node_clusters: Mutex::new(BTreeSet::new()),
        }
    }

    /// `legate_cp_leader`, for the election to keep (0 until it wins).
    pub fn leader_gauge(&self) -> Arc<Gauge> {
        self.leader.set(0);
        self.leader.clone()
    }

    /// Keep `legate_cp_store_up` as `health` says.
    pub fn watch_store(&self, health: Arc<crate::etcd::StoreHealth>) {
        health.report_to(self.store_up.clone());
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.registry.render()
    }

    /// The `node_cluster` label value for a node's cluster: itself (cut to 256 characters)
    /// while fewer than [`MAX_NODE_CLUSTER_LABELS`] have been given out, else
    /// [`OTHER_NODE_CLUSTERS`].
    pub fn node_cluster_label(&self, cluster: &str) -> String {
        let mut value = cluster.to_owned();
        crate::registry::clip(&mut value);
        let mut seen = self
            .node_clusters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&value) {
            return value;
        }
        if seen.len() < MAX_NODE_CLUSTER_LABELS {
            seen.insert(value.clone());
            return value;
        }
        OTHER_NODE_CLUSTERS.to_owned()
    }

    /// The open-streams gauge of this mode and node cluster label: the caller increments
    /// it while the stream is open and decrements it when it ends.
    pub(crate) fn stream_gauge(&self, mode: StreamMode, node_cluster_label: &str) -> Arc<Gauge> {
        self.streams
            .get_or_create(&[mode_label(mode), node_cluster_label])
    }

    /// A response of `resources` resources of `kind` was sent.
    pub(crate) fn pushed(&self, mode: StreamMode, kind: ResourceKind, resources: usize) {
        let m = match mode {
            StreamMode::Sotw => 0,
            StreamMode::Delta => 1,
        };
        self.pushes[m][kind.index()].inc();
        self.resources_sent[m][kind.index()].add(u64::try_from(resources).unwrap_or(u64::MAX));
    }

    pub(crate) fn acked(&self, kind: ResourceKind, after: Duration) {
        self.ack_latency[kind.index()].observe(after);
    }

    pub(crate) fn nacked(&self, node_cluster_label: &str, kind: ResourceKind) {
        self.nacks
            .get_or_create(&[node_cluster_label, kind.type_url()])
            .inc();
    }

    pub(crate) fn xds_refused(&self, reason: &'static str) {
        self.xds_refusals.get_or_create(&[reason]).inc();
    }

    /// Counts an admin change; `outcome` is `ok` or the refusal's
    /// [`crate::app::ChangeError::outcome`].
    pub fn admin_change(&self, operation: AdminOperation, outcome: &'static str) {
        self.admin_changes
            .get_or_create(&[operation.as_str(), outcome])
            .inc();
    }

    /// Counts an admin request or connection refused before any handler ran.
    pub fn admin_refused(&self, reason: &'static str) {
        self.admin_refusals.get_or_create(&[reason]).inc();
    }

    pub fn mesh_reload(&self, outcome: MeshReload) {
        self.mesh_reloads.get_or_create(&[outcome.as_str()]).inc();
    }

    /// Counts one load report (`LoadStatsRequest`) received on an LRS stream: call it once
    /// per message read, whatever it holds, before validating it, so that refused reports
    /// are counted too. Lock-free.
    pub fn lrs_report_received(&self) {
        self.lrs_reports.inc();
    }

    /// Load reports counted by [`lrs_report_received`](Self::lrs_report_received) so far
    /// (what `GET /v1/load` and `GetLoad` show as `reports_received`).
    pub fn lrs_reports_received(&self) -> u64 {
        self.lrs_reports.get()
    }

    /// A rollback took this long to be ACKed everywhere.
    pub fn rollback_latency(&self, latency: std::time::Duration) {
        self.rollback_latency.observe(latency);
    }

    /// A rollout decision was recorded.
    pub fn rollout_decision(&self, verdict: crate::rollout::Verdict) {
        let label = match verdict {
            crate::rollout::Verdict::Pass => "pass",
            crate::rollout::Verdict::Fail => "fail",
            crate::rollout::Verdict::Inconclusive => "inconclusive",
            crate::rollout::Verdict::Manual => "manual",
        };
        self.rollout_decisions.get_or_create(&[label]).inc();
    }

    /// Where the load store counts its series and what it leaves out.
    pub fn load_metrics(&self) -> crate::load_report::LoadMetrics {
        self.lrs_load.clone()
    }
}

/// Most connections served at once on the metrics listener; more wait in the backlog.
const MAX_CONNECTIONS: usize = 32;
/// A request's head must arrive within this of the connection opening or of the previous
/// response (hyper's header read timeout, also between keep-alive requests).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long whatever it does, so a client that stops reading
/// holds a slot for a bounded time; Prometheus reconnects.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Request line plus headers.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Whether legate-cp should get new xDS streams: `Err` names why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serve `GET /metrics` and `GET /ready` (and `HEAD`) on `listener`, without authentication
/// (see the module docs), until the task is dropped. HTTP/1.1 only; request bodies are never
/// read. `/ready` answers 200 `ready`, or 503 with `ready`'s reason.
pub async fn serve(listener: TcpListener, metrics: Arc<CpMetrics>, ready: Readiness) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "metrics listener cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (metrics, ready) = (metrics.clone(), ready.clone());
                async move { Ok::<_, Infallible>(respond(&metrics, &*ready, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), svc);
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn respond(
    metrics: &CpMetrics,
    ready: &(dyn Fn() -> Result<(), String> + Send + Sync),
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        res
    };
    let path = req.uri().path();
    if path != "/metrics" && path != "/ready" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "legate-cp: GET /metrics, GET /ready\n".to_owned(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET or HEAD\n".to_owned(),
        );
        res.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    if path == "/ready" {
        return match ready() {
            Ok(()) => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".to_owned(),
            ),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {why}\n"),
            ),
        };
    }
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cluster_labels_are_bounded() {
        let m = CpMetrics::new();
        for i in 0..MAX_NODE_CLUSTER_LABELS {
            assert_eq!(m.node_cluster_label(&format!("c{i}")), format!("c{i}"));
        }
        // Past the bound: every new cluster shares one value; the known ones keep theirs.
        assert_eq!(m.node_cluster_label("late-1"), OTHER_NODE_CLUSTERS);
        assert_eq!(m.node_cluster_label("late-2"), OTHER_NODE_CLUSTERS);
        assert_eq!(m.node_cluster_label("c3"), "c3");
        // A long value is cut.
        let m = CpMetrics::new();
        let long = "x".repeat(10_000);
        assert!(m.node_cluster_label(&long).chars().count() <= 257);
    }

    #[test]
    fn every_family_renders_before_anything_happens() {
        let text = CpMetrics::new().render();
        for name in [
            "legate_cp_xds_streams",
            "legate_cp_xds_pushes_total",
            "legate_cp_xds_ack_latency_seconds",
            "legate_cp_xds_nacks_total",
            "legate_cp_xds_refusals_total",
            "legate_cp_admin_changes_total",
            "legate_cp_admin_refusals_total",
            "legate_cp_mesh_reloads_total",
            "legate_cp_lrs_reports_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
        assert!(text.contains("legate_cp_lrs_reports_total 0\n"), "{text}");
        assert!(
            text.contains("legate_cp_mesh_reloads_total{outcome=\"refused\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn counts_admin_changes_and_lrs_reports() {
        let m = CpMetrics::new();
        m.admin_change(AdminOperation::SetWeights, "ok");
        m.admin_change(AdminOperation::Apply, "invalid");
        m.lrs_report_received();
        m.lrs_report_received();
        let text = m.render();
        assert!(text.contains(
            "legate_cp_admin_changes_total{operation=\"set_weights\",outcome=\"ok\"} 1\n"
        ));
        assert!(text.contains(
            "legate_cp_admin_changes_total{operation=\"apply\",outcome=\"invalid\"} 1\n"
        ));
        assert!(text.contains("legate_cp_lrs_reports_total 2\n"), "{text}");
    }
}
