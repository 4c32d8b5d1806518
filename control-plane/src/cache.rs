//! Snapshots by node selector, and one watch per connected node.
//!
//! A node is served the snapshot set for its exact id, else the one for its cluster, else the
//! default. Every open stream holds a `tokio::sync::watch` receiver for its node: a watch
//! keeps only the latest value, so a slow or stuck stream never delays the others and never
//! queues snapshots; when it gets to run again it sees the newest one. Any change to the
//! selectors re-evaluates every open watch, so removing a node's own snapshot falls it back
//! to its cluster's or the default, and a content-identical snapshot wakes no one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use envoy_types::pb::envoy::config::core::v3::Node;
use serde::Serialize;
use tokio::sync::watch;

use crate::resources::NodeSnapshot;

/// The selector a snapshot is stored under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum NodeKey {
    /// Nodes whose `node.id` is exactly this.
    Id(String),
    /// Nodes whose `node.cluster` is exactly this.
    Cluster(String),
    /// Every other node.
    Default,
}

/// The stored selectors, as one value so several can be changed at once ([`SnapshotCache::update`]).
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub default: Option<Arc<NodeSnapshot>>,
    pub by_id: BTreeMap<String, Arc<NodeSnapshot>>,
    pub by_cluster: BTreeMap<String, Arc<NodeSnapshot>>,
}

impl Selectors {
    /// The snapshot a node with this id and cluster is served: id, then cluster, then default.
    /// Empty ids and clusters match nothing.
    pub fn lookup(&self, id: &str, cluster: &str) -> Option<&Arc<NodeSnapshot>> {
        let by_id = (!id.is_empty()).then(|| self.by_id.get(id)).flatten();
        let by_cluster = (!cluster.is_empty())
            .then(|| self.by_cluster.get(cluster))
            .flatten();
        by_id.or(by_cluster).or(self.default.as_ref())
    }

    pub fn get(&self, key: &NodeKey) -> Option<&Arc<NodeSnapshot>> {
        match key {
            NodeKey::Id(id) => self.by_id.get(id),
            NodeKey::Cluster(cluster) => self.by_cluster.get(cluster),
            NodeKey::Default => self.default.as_ref(),
        }
    }

    pub fn set(&mut self, key: NodeKey, snapshot: Arc<NodeSnapshot>) -> Option<Arc<NodeSnapshot>> {
        match key {
            NodeKey::Id(id) => self.by_id.insert(id, snapshot),
            NodeKey::Cluster(cluster) => self.by_cluster.insert(cluster, snapshot),
            NodeKey::Default => self.default.replace(snapshot),
        }
    }

    pub fn remove(&mut self, key: &NodeKey) -> Option<Arc<NodeSnapshot>> {
        match key {
            NodeKey::Id(id) => self.by_id.remove(id),
            NodeKey::Cluster(cluster) => self.by_cluster.remove(cluster),
            NodeKey::Default => self.default.take(),
        }
    }

    /// Every selector with its snapshot's version, for status pages.
    pub fn versions(&self) -> Vec<(NodeKey, String)> {
        let ids = self
            .by_id
            .iter()
            .map(|(id, s)| (NodeKey::Id(id.clone()), s.version().to_owned()));
        let clusters = self
            .by_cluster
            .iter()
            .map(|(c, s)| (NodeKey::Cluster(c.clone()), s.version().to_owned()));
        let default = self
            .default
            .iter()
            .map(|s| (NodeKey::Default, s.version().to_owned()));
        ids.chain(clusters).chain(default).collect()
    }
}

/// What a stream watches: the latest snapshot for its node, or `None` while there is none.
pub type SnapshotWatch = watch::Receiver<Option<Arc<NodeSnapshot>>>;

/// Per-node snapshots shared by every stream of the xDS server.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    selectors: Selectors,
    /// One sender per (node id, node cluster) with open streams; receivers are per stream.
    watches: HashMap<(String, String), watch::Sender<Option<Arc<NodeSnapshot>>>>,
}

impl SnapshotCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain data updated in single statements: a panic elsewhere cannot
        // leave it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes any number of selectors at once; open watches are re-evaluated once, after.
    pub fn update<R>(&self, change: impl FnOnce(&mut Selectors) -> R) -> R {
        let mut inner = self.lock();
        let result = change(&mut inner.selectors);
        inner.notify();
        result
    }

    pub fn set(&self, key: NodeKey, snapshot: impl Into<Arc<NodeSnapshot>>) {
        let snapshot = snapshot.into();
        self.update(|s| s.set(key, snapshot));
    }

    pub fn remove(&self, key: &NodeKey) -> Option<Arc<NodeSnapshot>> {
        self.update(|s| s.remove(key))
    }

    pub fn set_default(&self, snapshot: impl Into<Arc<NodeSnapshot>>) {
        self.set(NodeKey::Default, snapshot);
    }

    pub fn set_for_id(&self, id: impl Into<String>, snapshot: impl Into<Arc<NodeSnapshot>>) {
        self.set(NodeKey::Id(id.into()), snapshot);
    }

    pub fn set_for_cluster(
        &self,
        cluster: impl Into<String>,
        snapshot: impl Into<Arc<NodeSnapshot>>,
    ) {
        self.set(NodeKey::Cluster(cluster.into()), snapshot);
    }

    pub fn remove_default(&self) -> Option<Arc<NodeSnapshot>> {
        self.remove(&NodeKey::Default)
    }

    pub fn remove_for_id(&self, id: &str) -> Option<Arc<NodeSnapshot>> {
        self.remove(&NodeKey::Id(id.to_owned()))
    }

    pub fn remove_for_cluster(&self, cluster: &str) -> Option<Arc<NodeSnapshot>> {
        self.remove(&NodeKey::Cluster(cluster.to_owned()))
    }

    /// The snapshot stored under exactly this selector.
    pub fn get(&self, key: &NodeKey) -> Option<Arc<NodeSnapshot>> {
        self.lock().selectors.get(key).cloned()
    }

    /// A copy of every selector.
    pub fn selectors(&self) -> Selectors {
        self.lock().selectors.clone()
    }

    /// The snapshot this node is served now.
    pub fn snapshot_for(&self, node: &Node) -> Option<Arc<NodeSnapshot>> {
        self.lock()
            .selectors
            .lookup(&node.id, &node.cluster)
            .cloned()
    }

    /// A receiver that always holds the latest snapshot for this node. Streams of the same
    /// node share one sender; it is dropped once none of them is open.
    pub fn watch(&self, node: &Node) -> SnapshotWatch {
        let mut inner = self.lock();
        inner.watches.retain(|_, tx| tx.receiver_count() > 0);
        let current = inner.selectors.lookup(&node.id, &node.cluster).cloned();
        let key = (node.id.clone(), node.cluster.clone());
        match inner.watches.get(&key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(current);
                inner.watches.insert(key, tx);
                rx
            }
        }
    }

    /// Number of distinct nodes with an open watch.
    pub fn watched_nodes(&self) -> usize {
        let inner = self.lock();
        inner
            .watches
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

impl Inner {
    fn notify(&mut self) {
        let Inner { selectors, watches } = self;
        watches.retain(|(id, cluster), tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            let next = selectors.lookup(id, cluster);
            tx.send_if_modified(|current| {
                let same = match (current.as_ref(), next) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.version() == b.version(),
                    _ => false,
                };
                if !same {
                    *current = next.cloned();
                }
                !same
            });
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use legate_snapshot::Resources;

    fn snapshot(cluster: &str) -> Arc<NodeSnapshot> {
        Arc::new(NodeSnapshot::from_resources(&Resources {
            clusters: vec![Cluster {
                name: cluster.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    fn node(id: &str, cluster: &str) -> Node {
        Node {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            ..Default::default()
        }
    }

    fn version(w: &SnapshotWatch) -> Option<String> {
        w.borrow().as_ref().map(|s| s.version().to_owned())
    }

    #[test]
    fn id_then_cluster_then_default() {
        let cache = SnapshotCache::new();
        let n = node("n1", "c1");
        assert!(cache.snapshot_for(&n).is_none());
        let (d, c, i) = (snapshot("d"), snapshot("c"), snapshot("i"));
        cache.set_default(d.clone());
        assert_eq!(cache.snapshot_for(&n), Some(d.clone()));
        cache.set_for_cluster("c1", c.clone());
        assert_eq!(cache.snapshot_for(&n), Some(c.clone()));
        cache.set_for_id("n1", i.clone());
        assert_eq!(cache.snapshot_for(&n), Some(i));
        assert_eq!(cache.snapshot_for(&node("n2", "c1")), Some(c.clone()));
        assert_eq!(cache.snapshot_for(&node("n2", "c2")), Some(d.clone()));
        cache.remove_for_id("n1");
        assert_eq!(cache.snapshot_for(&n), Some(c));
        cache.remove_for_cluster("c1");
        assert_eq!(cache.snapshot_for(&n), Some(d));
        cache.remove_default();
        assert!(cache.snapshot_for(&n).is_none());
    }

    #[test]
    fn empty_id_or_cluster_matches_nothing_but_the_default() {
        let cache = SnapshotCache::new();
        cache.set_for_id("", snapshot("x"));
        cache.set_for_cluster("", snapshot("y"));
        assert!(cache.snapshot_for(&node("", "")).is_none());
    }

    #[tokio::test]
    async fn watches_follow_selector_changes() {
        let cache = SnapshotCache::new();
        let mut w = cache.watch(&node("n1", "c1"));
        let mut other = cache.watch(&node("n2", "c2"));
        assert_eq!(version(&w), None);

        let (d, c, i) = (snapshot("d"), snapshot("c"), snapshot("i"));
        cache.set_default(d.clone());
        w.changed().await.expect("changed");
        assert_eq!(version(&w), Some(d.version().to_owned()));
        other.changed().await.expect("changed");

        cache.set_for_id("n1", i.clone());
        w.changed().await.expect("changed");
        assert_eq!(version(&w), Some(i.version().to_owned()));
        // A selector that does not apply to n2 does not wake it.
        assert!(!other.has_changed().expect("open"));

        cache.set_for_cluster("c1", c.clone());
        assert!(
            !w.has_changed().expect("open"),
            "id still wins over cluster"
        );
        cache.remove_for_id("n1");
        w.changed().await.expect("changed");
        assert_eq!(version(&w), Some(c.version().to_owned()));
    }

    #[tokio::test]
    async fn identical_content_wakes_no_one_and_closed_watches_are_dropped() {
        let cache = SnapshotCache::new();
        cache.set_default(snapshot("a"));
        let mut w = cache.watch(&node("n", ""));
        w.borrow_and_update();
        cache.set_default(snapshot("a"));
        assert!(!w.has_changed().expect("open"));
        let second = cache.watch(&node("n", ""));
        assert_eq!(cache.watched_nodes(), 1);
        drop(w);
        drop(second);
        cache.set_default(snapshot("b"));
        assert_eq!(cache.watched_nodes(), 0);
    }

    #[test]
    fn update_changes_several_selectors_at_once() {
        let cache = SnapshotCache::new();
        cache.update(|s| {
            s.set(NodeKey::Default, snapshot("d"));
            s.set(NodeKey::Id("a".into()), snapshot("a"));
        });
        let keys: Vec<NodeKey> = cache
            .selectors()
            .versions()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![NodeKey::Id("a".into()), NodeKey::Default]);
    }
}
