//! Who is connected and what they accepted: per-stream status for the admin API.
//!
//! Control path only, so one mutex is enough. Each stream registers when its first request
//! names the node and holds a [`StreamHandle`]; dropping the handle (the stream ended, for
//! whatever reason) removes the stream. NACKs are also kept in a short history that outlives
//! the stream, so a proxy that rejected a config and went away is still visible.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use legate_snapshot::ResourceKind;
use serde::Serialize;

use crate::resources::WARM_ORDER;

/// How many NACKs [`NodeRegistry::recent_nacks`] keeps.
const NACK_HISTORY: usize = 128;

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

#[derive(Debug, Default)]
pub struct NodeRegistry {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: BTreeMap<u64, Entry>,
    nacks: VecDeque<NackEvent>,
}

#[derive(Debug)]
struct Entry {
    node_id: String,
    node_cluster: String,
    status: StreamStatus,
    types: BTreeMap<ResourceKind, TypeStatus>,
}

impl NodeRegistry {
    pub fn new() -> Self {
        Self::default()
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
            status.types = WARM_ORDER
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

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Registers a stream; it stays listed until the handle is dropped.
    pub fn register(self: &Arc<Self>, node: &Node, mode: StreamMode) -> StreamHandle {
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
                snapshot_version: None,
                types: Vec::new(),
            },
            types: BTreeMap::new(),
        };
        self.lock().streams.insert(id, entry);
        StreamHandle {
            registry: Arc::clone(self),
            id,
        }
    }
}

/// A registered stream; updates its status, and unregisters it when dropped.
#[derive(Debug)]
pub struct StreamHandle {
    registry: Arc<NodeRegistry>,
    id: u64,
}

impl StreamHandle {
    pub fn id(&self) -> u64 {
        self.id
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

    pub fn sent(&self, kind: ResourceKind, version: &str) {
        self.with_type(kind, |t| t.sent_version = Some(version.to_owned()));
    }

    pub fn acked(&self, kind: ResourceKind, version: &str) {
        self.with_type(kind, |t| {
            t.acked_version = Some(version.to_owned());
            t.acked_at_unix_ms = Some(now_unix_ms());
        });
    }

    pub fn nacked(&self, kind: ResourceKind, version: &str, nonce: &str, code: i32, message: &str) {
        let nack = Nack {
            version: version.to_owned(),
            nonce: nonce.to_owned(),
            code,
            message: message.to_owned(),
            at_unix_ms: now_unix_ms(),
        };
        self.with_type(kind, |t| t.last_nack = Some(nack.clone()));
        let mut inner = self.registry.lock();
        let Some(entry) = inner.streams.get(&self.id) else {
            return;
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
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.lock().streams.remove(&self.id);
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
        a.sent(ResourceKind::Cluster, "v1");
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
}
