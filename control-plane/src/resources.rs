//! What one node is served: the five resource types as `Any`s, each with a content version.
//!
//! Versions are content hashes, never counters: a resource's version is the SHA-256 of its
//! canonical encoding (module `canonical`: map entries sorted by key), a type's `version_info` hashes its sorted
//! (name, version) pairs, and the snapshot's version hashes the five type versions. The same
//! resources therefore carry the same versions in every run of legate-cp, so a restart pushes
//! nothing new and a delta client's `initial_resource_versions` match.
//!
//! A snapshot holds only the secrets its own clusters and listeners name
//! ([`legate_snapshot::refs`]): a node is never sent a secret that nothing it receives uses.

mod canonical;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::collections::BTreeSet;

use envoy_types::pb::google::protobuf::Any;
use legate_snapshot::refs::{cluster_references, listener_references};
use legate_snapshot::{ResourceKind, Resources};
use prost::{Message, Name};
use sha2::{Digest, Sha256};

/// One encoded resource and its content version.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// First 16 hex digits of the SHA-256 of `any.value`.
    pub version: String,
    pub any: Any,
}

/// All resources of one type, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeSnapshot {
    version_info: String,
    resources: BTreeMap<String, Resource>,
}

impl TypeSnapshot {
    fn new(resources: BTreeMap<String, Resource>) -> Self {
        let mut hasher = Sha256::new();
        for (name, resource) in &resources {
            // Length-prefixed, so no two different sets hash the same input.
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            hasher.update(resource.version.as_bytes());
        }
        TypeSnapshot {
            version_info: short_hex(&hasher.finalize()),
            resources,
        }
    }

    /// The type's `version_info`: a hash over its sorted (name, version) pairs.
    pub fn version_info(&self) -> &str {
        &self.version_info
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resources.contains_key(name)
    }

    /// Resources in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Resource)> {
        self.resources.iter().map(|(n, r)| (n.as_str(), r))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// Everything served to one node, immutable once built; shared as `Arc<NodeSnapshot>`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSnapshot {
    /// Indexed by [`ResourceKind::index`].
    types: [TypeSnapshot; 5],
    version: String,
    /// EDS cluster name → the ClusterLoadAssignment name it loads.
    eds_of_cluster: BTreeMap<String, String>,
    /// Listener name → the RouteConfiguration names its HTTP connection managers load by RDS.
    rds_of_listener: BTreeMap<String, Vec<String>>,
}

impl NodeSnapshot {
    /// Encodes every resource canonically (maps sorted by key) and computes the versions.
    /// Resources are not validated here. A name given twice keeps its first resource, as
    /// `legate_snapshot::build` does. Secrets that no cluster or listener of the set names
    /// over SDS are dropped: what a node is entitled to is what its configuration uses.
    pub fn from_resources(resources: &Resources) -> Self {
        let Resources {
            listeners,
            route_configs,
            clusters,
            load_assignments,
            secrets,
        } = resources;
        let mut types: [TypeSnapshot; 5] = Default::default();
        types[ResourceKind::Listener.index()] =
            encode_all(ResourceKind::Listener, listeners, |l| &l.name);
        types[ResourceKind::RouteConfiguration.index()] =
            encode_all(ResourceKind::RouteConfiguration, route_configs, |r| &r.name);
        types[ResourceKind::Cluster.index()] =
            encode_all(ResourceKind::Cluster, clusters, |c| &c.name);
        types[ResourceKind::ClusterLoadAssignment.index()] =
            encode_all(ResourceKind::ClusterLoadAssignment, load_assignments, |c| {
                &c.cluster_name
            });
        let named: BTreeSet<String> = clusters
            .iter()
            .map(cluster_references)
            .chain(listeners.iter().map(listener_references))
            .flat_map(|r| r.all_secrets().cloned().collect::<Vec<_>>())
            .collect();
        let entitled: Vec<_> = secrets
            .iter()
            .filter(|s| named.contains(&s.name))
            .cloned()
            .collect();
        types[ResourceKind::Secret.index()] =
            encode_all(ResourceKind::Secret, &entitled, |s| &s.name);

        let mut hasher = Sha256::new();
        for kind in ResourceKind::WARM_ORDER {
            hasher.update(types[kind.index()].version_info.as_bytes());
            hasher.update([0]);
        }
        let version = short_hex(&hasher.finalize());

        let mut eds_of_cluster = BTreeMap::new();
        for cluster in clusters.iter().rev() {
            match cluster_references(cluster).load_assignment {
                Some(eds) => eds_of_cluster.insert(cluster.name.clone(), eds),
                None => eds_of_cluster.remove(&cluster.name),
            };
        }
        let mut rds_of_listener = BTreeMap::new();
        for listener in listeners.iter().rev() {
            rds_of_listener.insert(
                listener.name.clone(),
                listener_references(listener).route_configs,
            );
        }

        NodeSnapshot {
            types,
            version,
            eds_of_cluster,
            rds_of_listener,
        }
    }

    /// A snapshot with no resources at all.
    pub fn empty() -> Self {
        Self::from_resources(&Resources::default())
    }

    /// The resources of one type.
    pub fn get(&self, kind: ResourceKind) -> &TypeSnapshot {
        &self.types[kind.index()]
    }

    /// The resources of the type a type URL names, if we serve it.
    pub fn by_type_url(&self, url: &str) -> Option<&TypeSnapshot> {
        ResourceKind::from_type_url(url).map(|kind| self.get(kind))
    }

    /// A hash over the five types' versions; delta responses carry it as
    /// `system_version_info`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The ClusterLoadAssignment name a cluster loads over EDS (`None` for a cluster that is
    /// not an EDS cluster).
    pub fn eds_name_of_cluster(&self, cluster: &str) -> Option<&str> {
        self.eds_of_cluster.get(cluster).map(String::as_str)
    }

    /// The RouteConfiguration names a listener loads over RDS.
    pub fn rds_names_of_listener(&self, listener: &str) -> &[String] {
        self.rds_of_listener
            .get(listener)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

fn encode_all<M: Message + Name>(
    kind: ResourceKind,
    messages: &[M],
    name: impl Fn(&M) -> &String,
) -> TypeSnapshot {
    let mut resources = BTreeMap::new();
    for message in messages {
        resources
            .entry(name(message).clone())
            .or_insert_with(|| encode(kind.type_url(), message));
    }
    TypeSnapshot::new(resources)
}

fn encode<M: Message + Name>(type_url: &str, message: &M) -> Resource {
    let value = canonical::canonicalize(&M::full_name(), &message.encode_to_vec());
    Resource {
        version: short_hex(&Sha256::digest(&value)),
        any: Any {
            type_url: type_url.to_owned(),
            value,
        },
    }
}

/// The first 16 hex digits of a digest.
fn short_hex(digest: &[u8]) -> String {
    let mut out = String::with_capacity(16);
    for byte in digest.iter().take(8) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests;
