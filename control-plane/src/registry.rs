//! Who is connected and what they accepted: per-stream status for the admin API.
//!
//! Control path only, so one mutex is enough. Each stream registers when its first request
//! names the node and holds a [`StreamHandle`]; dropping the handle (the stream ended, for
//! whatever reason) removes the stream. NACKs are also kept in a short history that outlives
//! the stream, so a proxy that rejected a config and went away is still visible. Streams and
//! TLS handshakes refused for their identity are kept the same way ([`NodeRegistry::refused`]),
//! with a count per reason since start.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use legate_snapshot::ResourceKind;
use legate_telemetry::Gauge;
use serde::Serialize;

use crate::metrics::CpMetrics;

/// How many NACKs [`NodeRegistry::recent_nacks`] keeps.
const NACK_HISTORY: usize = 128;
/// How many refusals [`NodeRegistry::recent_refusals`] keeps.
const REFUSAL_HISTORY: usize = 128;
/// The default of [`NodeRegistry::set_nack_message_limit`]: NACK messages are kept up to
/// this many bytes. A client may send megabytes of text; Envoy's own messages name each
/// refused resource and field, and the first few kilobytes say what went wrong.
pub const DEFAULT_NACK_MESSAGE_LIMIT: usize = 4 << 10;
/// Node ids and clusters in refusals are cut to this many characters: they come from whoever
/// connected, and are kept after the stream ends.
const REFUSAL_FIELD_CHARS: usize = 256;

/// State-of-the-world or incremental.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    Sotw,
    Delta,
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// The version the client rejected (what we sent with `nonce`).
    pub version: String,
    pub nonce: String,
    /// `error_detail.code` (Envoy sends 13, gRPC clients 3).
    pub code: i32,
    pub message: String,
    pub at_unix_ms: u64,
}

/// One NACK in the history, with whom it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NackEvent {
    pub node_id: String,
    pub node_cluster: String,
    pub stream_id: u64,
    pub type_url: String,
    #[serde(flatten)]
    pub nack: Nack,
}

/// Why a stream or connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReason {
    /// The TLS handshake failed for a TLS reason (no client certificate, unknown CA, ...).
    TlsHandshake,
    /// Client certificates are required and the connection has none.
    NoCertificate,
    /// The certificate carries no SPIFFE id, or more than one.
    NoIdentity,
    /// The SPIFFE id belongs to another trust domain.
    TrustDomain,
    /// The SPIFFE id names neither a node nor a node cluster.
    NotANodeIdentity,
    /// The stream's first request carries no node.
    NoNode,
    /// A `/node/<id>` identity claimed another node id.
    NodeId,
    /// A `/cluster/<name>` identity claimed a node of another cluster.
    NodeCluster,
    /// A later request on the stream named a different node than the first.
    NodeChanged,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::TlsHandshake => "tls-handshake",
            RefusalReason::NoCertificate => "no-certificate",
            RefusalReason::NoIdentity => "no-identity",
            RefusalReason::TrustDomain => "trust-domain",
            RefusalReason::NotANodeIdentity => "not-a-node-identity",
            RefusalReason::NoNode => "no-node",
            RefusalReason::NodeId => "node-id",
            RefusalReason::NodeCluster => "node-cluster",
            RefusalReason::NodeChanged => "node-changed",
        }
    }
}

/// A refused xDS stream or TLS connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The node the stream claimed (empty for a refused handshake).
    pub node_id: String,
    pub node_cluster: String,
    /// The client certificate's SPIFFE id, or its subject when it has none.
    pub identity: Option<String>,
    pub peer: Option<SocketAddr>,
    pub reason: RefusalReason,
    /// What the client was told.
    pub message: String,
}

/// A refusal and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusalEvent {
    #[serde(flatten)]
    pub refusal: Refusal,
    pub at_unix_ms: u64,
}

/// What one stream sent and the client accepted, for one resource type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    pub type_url: String,
    /// The type's `version_info` in the last response sent.
    pub sent_version: Option<String>,
    /// The version of the last response the client ACKed.
    pub acked_version: Option<String>,
    /// When that ACK arrived.
    pub acked_at_unix_ms: Option<u64>,
    pub last_nack: Option<Nack>,
}

/// One open xDS stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamStatus {
    pub stream_id: u64,
    pub mode: StreamMode,
    pub user_agent_name: String,
    pub user_agent_version: String,
    pub connected_since_unix_ms: u64,
    /// The client certificate's SPIFFE id, when the stream came over mTLS.
    pub identity: Option<String>,
    /// Version of the snapshot this stream serves now, if the node has one.
    pub snapshot_version: Option<String>,
    /// Only the types the client asked for, in warm order.
    pub types: Vec<TypeStatus>,
}

/// A node (id and cluster) with its open streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub cluster: String,
    pub streams: Vec<StreamStatus>,
}

#[derive(Debug)]
pub struct NodeRegistry {
    next_id: AtomicU64,
    /// NACK messages are kept up to this many bytes.
    nack_message_limit: AtomicUsize,
    inner: Mutex<Inner>,
    /// Streams, pushes, ACK latency, NACKs and refusals are counted here as they happen.
    metrics: Arc<CpMetrics>,
    /// Notified (one permit) when a stream ACKs, opens or ends: the rollout controller waits
    /// on it for every node to have ACKed new weights.
    changed: tokio::sync::Notify,
}

impl Default for NodeRegistry {
    fn default() -> Self {
        NodeRegistry::with_metrics(Arc::new(CpMetrics::new()))
    }
}

#[derive(Debug, Default)]
struct Inner {
    streams: BTreeMap<u64, Entry>,
    nacks: VecDeque<NackEvent>,
    refusals: VecDeque<RefusalEvent>,
    refusal_counts: BTreeMap<RefusalReason, u64>,
}

#[derive(Debug)]
struct Entry {
    node_id: String,
    node_cluster: String,
    status: StreamStatus,
    types: BTreeMap<ResourceKind, TypeStatus>,
    /// Per [`ResourceKind::index`]: the version last pushed and when, until its ACK.
    pushed: [Option<(String, Instant)>; 5],
}

impl NodeRegistry {
    /// A registry with metrics of its own (tests, the load simulator).
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that counts into `metrics` (legate-cp's, served on `/metrics`).
    pub fn with_metrics(metrics: Arc<CpMetrics>) -> Self {
        NodeRegistry {
            next_id: AtomicU64::new(0),
            nack_message_limit: AtomicUsize::new(DEFAULT_NACK_MESSAGE_LIMIT),
            inner: Mutex::new(Inner::default()),
            metrics,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Notified after an ACK, a new stream or a stream's end.
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Per connected node id: the version of `kind` its newest stream ACKed last (`None`:
    /// none yet), with the node's cluster.
    pub fn acked(&self, kind: ResourceKind) -> BTreeMap<String, (String, Option<String>)> {
        let inner = self.lock();
        let mut newest: BTreeMap<&str, &Entry> = BTreeMap::new();
        for entry in inner.streams.values() {
            let e = newest.entry(&entry.node_id).or_insert(entry);
            if entry.status.stream_id > e.status.stream_id {
                *e = entry;
            }
        }
        newest
            .into_iter()
            .map(|(id, e)| {
                let acked = e.types.get(&kind).and_then(|t| t.acked_version.clone());
                (id.to_owned(), (e.node_cluster.clone(), acked))
            })
            .collect()
    }

    /// Where this registry counts.
    pub fn metrics(&self) -> &Arc<CpMetrics> {
        &self.metrics
    }

    /// Keep NACK messages up to `bytes` (`--xds-max-nack-message`); longer ones are cut at a
    /// character boundary and marked.
    pub fn set_nack_message_limit(&self, bytes: usize) {
        self.nack_message_limit.store(bytes, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data updated in single statements: a panic cannot leave it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every node with open streams, by id then cluster.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let inner = self.lock();
        let mut nodes: BTreeMap<(&str, &str), Vec<StreamStatus>> = BTreeMap::new();
        for entry in inner.streams.values() {
            let mut status = entry.status.clone();
            status.types = ResourceKind::WARM_ORDER
                .iter()
                .filter_map(|kind| entry.types.get(kind).cloned())
                .collect();
            nodes
                .entry((&entry.node_id, &entry.node_cluster))
                .or_default()
                .push(status);
        }
        nodes
            .into_iter()
            .map(|((id, cluster), streams)| NodeStatus {
                id: id.to_owned(),
                cluster: cluster.to_owned(),
                streams,
            })
            .collect()
    }

    /// The last NACKs received (oldest first), including from streams since closed.
    pub fn recent_nacks(&self) -> Vec<NackEvent> {
        self.lock().nacks.iter().cloned().collect()
    }

    /// The last refusals (oldest first).
    pub fn recent_refusals(&self) -> Vec<RefusalEvent> {
        self.lock().refusals.iter().cloned().collect()
    }

    /// Refusals since start, by reason.
    pub fn refusal_counts(&self) -> BTreeMap<RefusalReason, u64> {
        self.lock().refusal_counts.clone()
    }

    /// Records a refused stream or connection.
    pub fn refused(&self, mut refusal: Refusal) {
        clip(&mut refusal.node_id);
        clip(&mut refusal.node_cluster);
        self.metrics.xds_refused(refusal.reason.as_str());
        let mut inner = self.lock();
        *inner.refusal_counts.entry(refusal.reason).or_default() += 1;
        if inner.refusals.len() == REFUSAL_HISTORY {
            inner.refusals.pop_front();
        }
        inner.refusals.push_back(RefusalEvent {
            refusal,
            at_unix_ms: now_unix_ms(),
        });
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Registers a stream; it stays listed until the handle is dropped.
    pub fn register(self: &Arc<Self>, node: &Node, mode: StreamMode) -> StreamHandle {
        self.register_with_identity(node, mode, None)
    }

    /// Registers a stream that came with a verified identity (mTLS).
    pub fn register_with_identity(
        self: &Arc<Self>,
        node: &Node,
        mode: StreamMode,
        identity: Option<String>,
    ) -> StreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let user_agent_version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                .unwrap_or_default(),
            None => String::new(),
        };
        let entry = Entry {
            node_id: node.id.clone(),
            node_cluster: node.cluster.clone(),
            status: StreamStatus {
                stream_id: id,
                mode,
                user_agent_name: node.user_agent_name.clone(),
                user_agent_version,
                connected_since_unix_ms: now_unix_ms(),
                identity,
                snapshot_version: None,
                types: Vec::new(),
            },
            types: BTreeMap::new(),
            pushed: Default::default(),
        };
        let node_cluster_label = self.metrics.node_cluster_label(&node.cluster);
        let open = self.metrics.stream_gauge(mode, &node_cluster_label);
        open.inc();
        self.lock().streams.insert(id, entry);
        self.changed.notify_one();
        StreamHandle {
            registry: Arc::clone(self),
            id,
            mode,
            node_cluster_label,
            open,
        }
    }
}

/// A registered stream; updates its status, and unregisters it when dropped.
#[derive(Debug)]
pub struct StreamHandle {
    registry: Arc<NodeRegistry>,
    id: u64,
    mode: StreamMode,
    /// The node's cluster as the metrics label it (bounded, see [`crate::metrics`]).
    node_cluster_label: String,
    /// The open-streams gauge this stream counts in, decremented on drop.
    open: Arc<Gauge>,
}

impl StreamHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node id and cluster the stream registered with.
    pub fn node(&self) -> (String, String) {
        let inner = self.registry.lock();
        inner
            .streams
            .get(&self.id)
            .map(|e| (e.node_id.clone(), e.node_cluster.clone()))
            .unwrap_or_default()
    }

    fn with_type(&self, kind: ResourceKind, f: impl FnOnce(&mut TypeStatus)) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.streams.get_mut(&self.id) {
            let status = entry.types.entry(kind).or_insert_with(|| TypeStatus {
                type_url: kind.type_url().to_owned(),
                ..TypeStatus::default()
            });
            f(status);
        }
    }

    /// The client asked for this type (shown even before anything is sent).
    pub fn requested(&self, kind: ResourceKind) {
        self.with_type(kind, |_| {});
    }

    pub fn snapshot(&self, version: Option<&str>) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.streams.get_mut(&self.id) {
            entry.status.snapshot_version = version.map(str::to_owned);
        }
    }

    /// A response carrying `version` of this type, with `resources` resources, was sent (a
    /// push).
    pub fn sent(&self, kind: ResourceKind, version: &str, resources: usize) {
        self.registry.metrics.pushed(self.mode, kind, resources);
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.streams.get_mut(&self.id) {
            entry.pushed[kind.index()] = Some((version.to_owned(), Instant::now()));
        }
        drop(inner);
        self.with_type(kind, |t| t.sent_version = Some(version.to_owned()));
    }

    /// The client ACKed `version` of this type. When it is the version last pushed, the
    /// time since that push is the ACK latency; a repeated ACK of it is not timed again.
    pub fn acked(&self, kind: ResourceKind, version: &str) {
        let mut inner = self.registry.lock();
        let pushed_at = inner.streams.get_mut(&self.id).and_then(|entry| {
            let slot = &mut entry.pushed[kind.index()];
            match slot {
                Some((pushed, _)) if pushed == version => slot.take().map(|(_, at)| at),
                _ => None,
            }
        });
        drop(inner);
        if let Some(at) = pushed_at {
            self.registry.metrics.acked(kind, at.elapsed());
        }
        self.with_type(kind, |t| {
            t.acked_version = Some(version.to_owned());
            t.acked_at_unix_ms = Some(now_unix_ms());
        });
        self.registry.changed.notify_one();
    }

    /// Records a NACK; returns its message as kept (cut to the registry's limit), which is
    /// also what should be logged.
    pub fn nacked(
        &self,
        kind: ResourceKind,
        version: &str,
        nonce: &str,
        code: i32,
        message: &str,
    ) -> String {
        self.registry.metrics.nacked(&self.node_cluster_label, kind);
        let limit = self.registry.nack_message_limit.load(Ordering::Relaxed);
        let message = truncate(message, limit);
        let nack = Nack {
            version: version.to_owned(),
            nonce: truncate(nonce, REFUSAL_FIELD_CHARS),
            code,
            message: message.clone(),
            at_unix_ms: now_unix_ms(),
        };
        self.with_type(kind, |t| t.last_nack = Some(nack.clone()));
        let mut inner = self.registry.lock();
        let Some(entry) = inner.streams.get(&self.id) else {
            return message;
        };
        let event = NackEvent {
            node_id: entry.node_id.clone(),
            node_cluster: entry.node_cluster.clone(),
            stream_id: self.id,
            type_url: kind.type_url().to_owned(),
            nack,
        };
        if inner.nacks.len() == NACK_HISTORY {
            inner.nacks.pop_front();
        }
        inner.nacks.push_back(event);
        message
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.lock().streams.remove(&self.id);
        self.open.dec();
        self.registry.changed.notify_one();
    }
}

/// `s` cut to at most `limit` bytes at a character boundary, with a marker saying how long it
/// was; `s` itself when it fits.
pub(crate) fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated: {} bytes in all]", &s[..end], s.len())
}

/// Cuts `s` to [`REFUSAL_FIELD_CHARS`] characters.
pub(crate) fn clip(s: &mut String) {
    if let Some((index, _)) = s.char_indices().nth(REFUSAL_FIELD_CHARS) {
        s.truncate(index);
        s.push('…');
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_char_boundary_and_says_so() {
        assert_eq!(truncate("short", 16), "short");
        // 'é' is two bytes: a cut at 3 would split it.
        assert_eq!(truncate("abécd", 3), "ab… [truncated: 6 bytes in all]");
        assert_eq!(truncate("abcdef", 4), "abcd… [truncated: 6 bytes in all]");
    }

    #[test]
    fn streams_register_update_and_leave() {
        let registry = Arc::new(NodeRegistry::new());
        let node = Node {
            id: "n1".into(),
            cluster: "c1".into(),
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("1.40".into())),
            ..Default::default()
        };
        let a = registry.register(&node, StreamMode::Sotw);
        let b = registry.register(&node, StreamMode::Delta);
        a.sent(ResourceKind::Cluster, "v1", 1);
        a.acked(ResourceKind::Cluster, "v1");
        a.requested(ResourceKind::Listener);
        b.nacked(ResourceKind::Listener, "v2", "7", 13, "bad listener");

        let nodes = registry.nodes();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].streams.len(), 2);
        let sa = &nodes[0].streams[0];
        assert_eq!(sa.user_agent_version, "1.40");
        assert_eq!(sa.types.len(), 2);
        assert_eq!(sa.types[0].type_url, ResourceKind::Cluster.type_url());
        assert_eq!(sa.types[0].acked_version.as_deref(), Some("v1"));
        let nack = nodes[0].streams[1].types[0]
            .last_nack
            .clone()
            .expect("nack");
        assert_eq!((nack.version.as_str(), nack.code), ("v2", 13));
        let json = serde_json::to_value(&nodes).expect("serializes");
        assert_eq!(json[0]["streams"][1]["mode"], "delta");

        drop(a);
        drop(b);
        assert!(registry.nodes().is_empty());
        let history = registry.recent_nacks();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].node_id, "n1");
        assert_eq!(history[0].nack.message, "bad listener");
    }

    #[test]
    fn refusals_are_kept_bounded_and_counted() {
        let registry = NodeRegistry::new();
        for i in 0..REFUSAL_HISTORY + 5 {
            registry.refused(Refusal {
                node_id: format!("n{i}"),
                node_cluster: "c".repeat(1000),
                identity: Some("spiffe://legate.local/node/a".into()),
                peer: Some("127.0.0.1:1".parse().expect("addr")),
                reason: if i % 2 == 0 {
                    RefusalReason::NodeId
                } else {
                    RefusalReason::TlsHandshake
                },
                message: "no".into(),
            });
        }
        let recent = registry.recent_refusals();
        assert_eq!(recent.len(), REFUSAL_HISTORY);
        assert_eq!(recent[0].refusal.node_id, "n5");
        assert_eq!(
            recent[0].refusal.node_cluster.chars().count(),
            REFUSAL_FIELD_CHARS + 1
        );
        let counts = registry.refusal_counts();
        assert_eq!(counts[&RefusalReason::NodeId], 67);
        assert_eq!(counts[&RefusalReason::TlsHandshake], 66);
        let json = serde_json::to_value(&recent[0]).expect("serializes");
        assert_eq!(json["reason"], "tls-handshake");
        assert_eq!(json["peer"], "127.0.0.1:1");
    }

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    #[test]
    fn streams_pushes_acks_and_nacks_are_counted() {
        let registry = Arc::new(NodeRegistry::new());
        let node = |id: &str| Node {
            id: id.into(),
            cluster: "web".into(),
            ..Default::default()
        };
        let a = registry.register(&node("a"), StreamMode::Sotw);
        let b = registry.register(&node("b"), StreamMode::Delta);
        let cds = ResourceKind::Cluster;
        let lds = ResourceKind::Listener;
        a.sent(cds, "v1", 1);
        a.sent(cds, "v2", 1);
        // An ACK of an older version is not timed; the one of the version last pushed is,
        // once.
        a.acked(cds, "v1");
        a.acked(cds, "v2");
        a.acked(cds, "v2");
        b.sent(lds, "v1", 1);
        b.nacked(lds, "v1", "1", 13, "bad");
        let text = registry.metrics().render();
        let cds_url = cds.type_url();
        let lds_url = lds.type_url();
        let get = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("{s}:\n{text}"));
        assert_eq!(
            get("legate_cp_xds_streams{mode=\"sotw\",node_cluster=\"web\"}"),
            1.0
        );
        assert_eq!(
            get("legate_cp_xds_streams{mode=\"delta\",node_cluster=\"web\"}"),
            1.0
        );
        assert_eq!(
            get(&format!(
                "legate_cp_xds_pushes_total{{mode=\"sotw\",type_url=\"{cds_url}\"}}"
            )),
            2.0
        );
        assert_eq!(
            get(&format!(
                "legate_cp_xds_pushes_total{{mode=\"delta\",type_url=\"{lds_url}\"}}"
            )),
            1.0
        );
        assert_eq!(
            get(&format!(
                "legate_cp_xds_ack_latency_seconds_count{{type_url=\"{cds_url}\"}}"
            )),
            1.0
        );
        assert_eq!(
            get(&format!(
                "legate_cp_xds_nacks_total{{node_cluster=\"web\",type_url=\"{lds_url}\"}}"
            )),
            1.0
        );
        // A NACK leaves the push un-ACKed: nothing timed for listeners.
        assert_eq!(
            get(&format!(
                "legate_cp_xds_ack_latency_seconds_count{{type_url=\"{lds_url}\"}}"
            )),
            0.0
        );
        drop(a);
        drop(b);
        let text = registry.metrics().render();
        assert_eq!(
            sample(
                &text,
                "legate_cp_xds_streams{mode=\"sotw\",node_cluster=\"web\"}"
            ),
            Some(0.0),
            "{text}"
        );
        registry.refused(Refusal {
            node_id: "x".into(),
            node_cluster: String::new(),
            identity: None,
            peer: None,
            reason: RefusalReason::NodeId,
            message: "no".into(),
        });
        assert_eq!(
            sample(
                &registry.metrics().render(),
                "legate_cp_xds_refusals_total{reason=\"node-id\"}"
            ),
            Some(1.0)
        );
    }
}
