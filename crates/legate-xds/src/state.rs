//! The client's resource state, independent of the wire variant (state-of-the-world or
//! delta): what is accepted per type, what is subscribed, what is warming, and how a
//! proposed update is validated before it is accepted.
//!
//! Secrets (SDS over ADS) follow the same rules as route configurations and load assignments:
//! they are subscribed by the names accepted clusters and listeners reference
//! ([`legate_snapshot::refs`]), and a cluster or listener whose secret has not arrived warms.
//! Secrets are kept encoded like everything else and never appear in a `Debug` rendering,
//! a log line or a status page.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as XdsSecret;
use envoy_types::pb::envoy::service::discovery::v3::Resource as XdsResourceWrapper;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use legate_snapshot::refs::{self, References};
use legate_snapshot::{
    Cluster, Listener, LoadAssignment, ResourceKind, Resources, RouteConfig, Snapshot,
};
use prost::Message;

use crate::error::{ResourceError, StaticConflict, UpdateError};

/// A decoded resource.
///
/// Boxed: the generated structs are large (a `Cluster` is kilobytes inline) and thousands
/// are kept in sorted maps, whose nodes would otherwise hold eleven of the largest each.
/// No `Debug`: a secret's private key must never reach a log line.
#[derive(Clone, PartialEq)]
pub enum Decoded {
    Listener(Box<XdsListener>),
    RouteConfiguration(Box<XdsRouteConfiguration>),
    Cluster(Box<XdsCluster>),
    ClusterLoadAssignment(Box<XdsClusterLoadAssignment>),
    Secret(Box<XdsSecret>),
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, name) = match self {
            Decoded::Listener(r) => ("listener", &r.name),
            Decoded::RouteConfiguration(r) => ("route configuration", &r.name),
            Decoded::Cluster(r) => ("cluster", &r.name),
            Decoded::ClusterLoadAssignment(r) => ("cluster load assignment", &r.cluster_name),
            Decoded::Secret(r) => ("secret", &r.name),
        };
        write!(f, "{kind} '{name}'")
    }
}

impl Decoded {
    /// Decode `any` (not wrapped) as `kind`; returns the resource's own name with it.
    fn decode(kind: ResourceKind, any: &Any) -> Result<(String, Decoded), ResourceError> {
        if any.type_url != kind.type_url() {
            return Err(ResourceError::WrongType {
                found: any.type_url.clone(),
                expected: kind.type_url(),
            });
        }
        let bytes = any.value.as_slice();
        let err = |source| ResourceError::Decode { kind, source };
        Ok(match kind {
            ResourceKind::Secret => {
                let r = XdsSecret::decode(bytes).map_err(err)?;
                (r.name.clone(), Decoded::Secret(Box::new(r)))
            }
            ResourceKind::Listener => {
                let r = XdsListener::decode(bytes).map_err(err)?;
                (r.name.clone(), Decoded::Listener(Box::new(r)))
            }
            ResourceKind::RouteConfiguration => {
                let r = XdsRouteConfiguration::decode(bytes).map_err(err)?;
                (r.name.clone(), Decoded::RouteConfiguration(Box::new(r)))
            }
            ResourceKind::Cluster => {
                let r = XdsCluster::decode(bytes).map_err(err)?;
                (r.name.clone(), Decoded::Cluster(Box::new(r)))
            }
            ResourceKind::ClusterLoadAssignment => {
                let r = XdsClusterLoadAssignment::decode(bytes).map_err(err)?;
                (
                    r.cluster_name.clone(),
                    Decoded::ClusterLoadAssignment(Box::new(r)),
                )
            }
        })
    }

    /// Validate this resource on its own (references are checked with the whole set);
    /// returns what it makes the client subscribe to (a listener's RDS route configurations
    /// and SDS secrets, an EDS cluster's load assignment and SDS secrets).
    fn check(&self) -> Result<References, Vec<legate_snapshot::ResourceError>> {
        match self {
            Decoded::Listener(r) => Listener::try_from(&**r).map(|_| refs::listener_references(r)),
            Decoded::RouteConfiguration(r) => {
                RouteConfig::try_from(&**r).map(|_| References::default())
            }
            Decoded::Cluster(r) => Cluster::try_from(&**r).map(|_| refs::cluster_references(r)),
            Decoded::ClusterLoadAssignment(r) => {
                LoadAssignment::try_from(&**r).map(|_| References::default())
            }
            // A secret on its own is a set with nothing else in it; what names it is checked
            // with the whole set.
            Decoded::Secret(r) if r.name.is_empty() => {
                Err(vec![legate_snapshot::ResourceError::new(
                    ResourceKind::Secret,
                    "",
                    "name",
                    "a secret needs a name",
                )])
            }
            Decoded::Secret(r) => {
                let alone = Resources {
                    secrets: vec![(**r).clone()],
                    ..Resources::default()
                };
                legate_snapshot::build("secret", &alone).map_err(|e| e.errors)?;
                certificate_matches_key(r)?;
                Ok(References::default())
            }
        }
    }

    /// Whether the resource holds private key material: a secret other than a validation
    /// context, or a cluster or listener with a key inline in its TLS context. Such resources
    /// are never written to the disk cache.
    fn is_private(&self) -> bool {
        match self {
            Decoded::Secret(r) => refs::secret_is_private(r),
            Decoded::Cluster(r) => refs::cluster_holds_private_key(r),
            Decoded::Listener(r) => refs::listener_holds_private_key(r),
            Decoded::RouteConfiguration(_) | Decoded::ClusterLoadAssignment(_) => false,
        }
    }
}

/// A certificate secret whose chain and key are inline must hold a key that belongs to its
/// leaf certificate: found on arrival, the SDS update carrying it is refused by name, rather
/// than the pair failing later when the data plane builds a TLS configuration from it (and
/// refusing whichever update happened to trigger that). File sources are read, and checked,
/// by the data plane.
fn certificate_matches_key(secret: &XdsSecret) -> Result<(), Vec<legate_snapshot::ResourceError>> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    let Some(Type::TlsCertificate(cert)) = &secret.r#type else {
        return Ok(());
    };
    let (Some(chain), Some(key)) = (
        inline_bytes(cert.certificate_chain.as_ref()),
        inline_bytes(cert.private_key.as_ref()),
    ) else {
        return Ok(());
    };
    legate_tls::config::CertifiedKey::from_pem(chain, key, "tls_certificate")
        .and_then(|pair| pair.check("tls_certificate"))
        .map_err(|e| {
            vec![legate_snapshot::ResourceError::new(
                ResourceKind::Secret,
                &secret.name,
                "tls_certificate.private_key",
                e.to_string(),
            )]
        })
}

/// The bytes of an inline data source (`None` for a file or an environment variable).
fn inline_bytes(
    source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
) -> Option<&[u8]> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match source?.specifier.as_ref()? {
        Specifier::InlineBytes(b) => Some(b),
        Specifier::InlineString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A resource as received, decoded but not yet checked.
pub struct Received {
    /// The resource's own name.
    pub name: String,
    any: Any,
    decoded: Decoded,
}

impl Received {
    /// Decode `any` as `kind`, unwrapping one `discovery.v3.Resource` envelope if present.
    ///
    /// Exactly one level: an envelope inside an envelope is refused, not unwrapped. Each
    /// level is a fresh decode of the bytes inside (an `Any`'s value is opaque to prost, so
    /// prost's own nesting limit never sees the depth), and unwrapping them one by one cost a
    /// stack frame and a copy of the rest per level: a response of a few megabytes nested a
    /// hundred thousand times overflowed the stack or asked for gigabytes.
    pub fn decode(kind: ResourceKind, any: &Any) -> Result<Received, ResourceError> {
        let wrapper = legate_snapshot::type_url::RESOURCE_WRAPPER;
        if any.type_url != wrapper {
            return Received::decode_bare(kind, any);
        }
        let envelope =
            XdsResourceWrapper::decode(any.value.as_slice()).map_err(ResourceError::Wrapper)?;
        let inner = envelope
            .resource
            .ok_or_else(|| ResourceError::EmptyWrapper(envelope.name.clone()))?;
        if inner.type_url == wrapper {
            return Err(ResourceError::NestedWrapper(envelope.name));
        }
        Received::decode_bare(kind, &inner)
    }

    fn decode_bare(kind: ResourceKind, any: &Any) -> Result<Received, ResourceError> {
        let (name, decoded) = Decoded::decode(kind, any)?;
        Ok(Received {
            name,
            any: any.clone(),
            decoded,
        })
    }

    /// Validate the resource on its own (the NACK message on failure) and keep it as
    /// received, without the decoded message.
    pub fn check(self, version: String) -> Result<Stored, ResourceError> {
        let refs = self.decoded.check().map_err(ResourceError::Invalid)?;
        Ok(Stored {
            version,
            private: self.decoded.is_private(),
            any: Arc::new(self.any),
            refs: Box::new(refs),
            last_updated: SystemTime::now(),
        })
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("resource", &self.decoded)
            .finish_non_exhaustive()
    }
}

/// One accepted resource: its encoding as received (out of any envelope) and the names it
/// refers to. The decoded message is not kept: prost's structs are several times the size
/// of their encoding (a decoded `Cluster` is kilobytes, most of it empty optional fields),
/// and at 10,000 clusters they were half of the proxy's memory. Snapshots decode again.
#[derive(Clone, PartialEq)]
pub struct Stored {
    pub version: String,
    /// Shared with what `/config_dump` shows (`XdsHandle::active_resources`).
    pub any: Arc<Any>,
    /// What a listener or cluster makes the client subscribe to (boxed: most resources name
    /// nothing or one name, and thousands are kept).
    pub refs: Box<References>,
    /// Holds private key material: never written to the disk cache.
    pub private: bool,
    /// When this resource last changed (received with different contents), for
    /// `/config_dump`'s `last_updated`.
    pub last_updated: SystemTime,
}

impl std::fmt::Debug for Stored {
    // The encoding is left out: a secret's carries its private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("version", &self.version)
            .field("type_url", &self.any.type_url)
            .field("bytes", &self.any.value.len())
            .field("refs", &self.refs)
            .field("private", &self.private)
            .field("last_updated", &self.last_updated)
            .finish()
    }
}

impl Stored {
    /// The message again; it decoded when received, so failing now means memory corruption
    /// or a bug, and the resource is left out (logged).
    fn decode(&self, kind: ResourceKind) -> Option<Decoded> {
        match Decoded::decode(kind, &self.any) {
            Ok((_, decoded)) => Some(decoded),
            Err(error) => {
                tracing::error!(%error, "an accepted resource no longer decodes; left out");
                None
            }
        }
    }
}

/// The last rejected update of a type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Nack {
    pub version_info: String,
    pub nonce: String,
    pub message: String,
    #[serde(with = "unix_seconds")]
    pub at: SystemTime,
}

/// What `/config_dump` and the metrics show per type.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TypeStatus {
    pub type_url: String,
    /// SotW `version_info` of the last accepted response (delta: `system_version_info`).
    pub version_info: String,
    #[serde(with = "unix_seconds_opt")]
    pub last_update: Option<SystemTime>,
    pub last_nack: Option<Nack>,
    pub resources: usize,
    pub accepted: u64,
    pub rejected: u64,
}

/// Accepted state of one type.
#[derive(Debug, Default)]
pub struct TypeState {
    pub resources: BTreeMap<String, Stored>,
    /// Last accepted `version_info`.
    pub version_info: String,
    /// Last nonce received.
    pub nonce: String,
    /// Names subscribed (RDS and EDS only).
    pub subscribed: BTreeSet<String>,
    pub status: TypeStatus,
}

/// An update that passed validation and may be committed.
#[derive(Debug)]
pub struct Proposal {
    pub kind: ResourceKind,
    pub resources: BTreeMap<String, Stored>,
    pub version_info: String,
    pub nonce: String,
}

/// A full resource set ready to build, and what in it is still warming.
#[derive(Debug)]
pub struct Assembled {
    pub resources: Resources,
    /// RDS/EDS/SDS names referenced but not received, whose initial fetch timeout has not
    /// expired yet.
    pub warming: Vec<(ResourceKind, String)>,
    /// Clusters and listeners left out of `resources` because a secret they name has not
    /// arrived (and no longer warms): kind, name and the missing secret.
    pub left_out: Vec<(ResourceKind, String, String)>,
}

/// The whole client state.
#[derive(Debug)]
pub struct XdsState {
    pub types: BTreeMap<ResourceKind, TypeState>,
    static_resources: Resources,
    initial_fetch_timeout: Duration,
    /// When each RDS/EDS/SDS name was first wanted, for the initial fetch timeout.
    wanted_since: HashMap<(ResourceKind, String), Instant>,
}

impl XdsState {
    pub fn new(static_resources: Resources, initial_fetch_timeout: Duration) -> Self {
        let types = ResourceKind::WARM_ORDER
            .into_iter()
            .map(|k| {
                let state = TypeState {
                    status: TypeStatus {
                        type_url: k.type_url().to_owned(),
                        ..TypeStatus::default()
                    },
                    ..TypeState::default()
                };
                (k, state)
            })
            .collect();
        XdsState {
            types,
            static_resources,
            initial_fetch_timeout,
            wanted_since: HashMap::new(),
        }
    }

    pub fn get(&self, kind: ResourceKind) -> &TypeState {
        // Every kind is inserted in `new`.
        &self.types[&kind]
    }

    fn get_mut(&mut self, kind: ResourceKind) -> &mut TypeState {
        self.types.entry(kind).or_default()
    }

    /// Validate the new full set of `kind` resources (after merging the response into
    /// what was accepted). The error is the NACK message.
    pub fn propose(
        &self,
        kind: ResourceKind,
        resources: BTreeMap<String, Stored>,
        version_info: String,
        nonce: String,
    ) -> Result<Proposal, UpdateError> {
        // Each resource was checked on its own when received (`Received::check`).
        let conflicts: Vec<StaticConflict> = resources
            .keys()
            .filter(|name| self.static_name_taken(kind, name))
            .map(|name| StaticConflict {
                kind,
                name: name.clone(),
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(UpdateError::StaticConflict(conflicts));
        }
        // The whole set must still be consistent with this update in place.
        let mut types = self.snapshot_of_types();
        types.insert(kind, &resources);
        let assembled = self.assemble_from(&types, true);
        legate_snapshot::build("candidate", &assembled.resources)?;
        Ok(Proposal {
            kind,
            resources,
            version_info,
            nonce,
        })
    }

    fn static_name_taken(&self, kind: ResourceKind, name: &str) -> bool {
        let s = &self.static_resources;
        match kind {
            ResourceKind::Listener => s.listeners.iter().any(|r| r.name == name),
            ResourceKind::RouteConfiguration => s.route_configs.iter().any(|r| r.name == name),
            ResourceKind::Cluster => s.clusters.iter().any(|r| r.name == name),
            ResourceKind::ClusterLoadAssignment => {
                s.load_assignments.iter().any(|r| r.cluster_name == name)
            }
            ResourceKind::Secret => s.secrets.iter().any(|r| r.name == name),
        }
    }

    fn snapshot_of_types(&self) -> BTreeMap<ResourceKind, &BTreeMap<String, Stored>> {
        self.types.iter().map(|(k, t)| (*k, &t.resources)).collect()
    }

    /// A proposal that skips validation, for state restored from the cache (validated as a
    /// whole when its snapshot is built).
    pub fn propose_unchecked(
        &self,
        kind: ResourceKind,
        resources: BTreeMap<String, Stored>,
        version_info: String,
    ) -> Proposal {
        Proposal {
            kind,
            resources,
            version_info,
            nonce: String::new(),
        }
    }

    /// A copy of one type's state, to restore if what follows a commit fails.
    pub fn save(&self, kind: ResourceKind) -> TypeState {
        let t = self.get(kind);
        TypeState {
            resources: t.resources.clone(),
            version_info: t.version_info.clone(),
            nonce: t.nonce.clone(),
            subscribed: t.subscribed.clone(),
            status: t.status.clone(),
        }
    }

    /// Put back a type's state saved with [`XdsState::save`].
    pub fn restore(&mut self, kind: ResourceKind, saved: TypeState) {
        *self.get_mut(kind) = saved;
    }

    /// Accept a proposal.
    pub fn commit(&mut self, p: Proposal) {
        let t = self.get_mut(p.kind);
        let mut resources = p.resources;
        // A resource sent again unchanged keeps the time it last changed, as Envoy's
        // `last_updated` does.
        for (name, new) in &mut resources {
            if let Some(old) = t.resources.get(name)
                && old.any == new.any
            {
                new.last_updated = old.last_updated;
            }
        }
        t.resources = resources;
        t.version_info = p.version_info.clone();
        t.nonce = p.nonce;
        t.status.version_info = p.version_info;
        t.status.last_update = Some(SystemTime::now());
        t.status.resources = t.resources.len();
        t.status.accepted += 1;
    }

    /// Record a rejected response.
    pub fn reject(
        &mut self,
        kind: ResourceKind,
        version_info: String,
        nonce: String,
        message: String,
    ) {
        let t = self.get_mut(kind);
        t.nonce = nonce.clone();
        t.status.rejected += 1;
        t.status.last_nack = Some(Nack {
            version_info,
            nonce,
            message,
            at: SystemTime::now(),
        });
    }

    /// RDS names referenced by accepted listeners, EDS names by accepted clusters, and SDS
    /// names by both (static ones included), not provided statically: what should be
    /// subscribed.
    pub fn wanted(&self, kind: ResourceKind) -> BTreeSet<String> {
        let st = &self.static_resources;
        let static_refs = || {
            st.listeners
                .iter()
                .map(refs::listener_references)
                .chain(st.clusters.iter().map(refs::cluster_references))
        };
        match kind {
            ResourceKind::RouteConfiguration => self
                .referenced(ResourceKind::Listener)
                .flat_map(|r| r.route_configs.clone())
                .chain(static_refs().flat_map(|r| r.route_configs))
                .filter(|n| !st.route_configs.iter().any(|r| r.name == *n))
                .collect(),
            ResourceKind::ClusterLoadAssignment => self
                .referenced(ResourceKind::Cluster)
                .filter_map(|r| r.load_assignment.clone())
                .chain(static_refs().filter_map(|r| r.load_assignment))
                .filter(|n| !st.load_assignments.iter().any(|r| r.cluster_name == *n))
                .collect(),
            ResourceKind::Secret => self
                .referenced(ResourceKind::Cluster)
                .chain(self.referenced(ResourceKind::Listener))
                .flat_map(|r| r.all_secrets().cloned().collect::<Vec<_>>())
                .chain(static_refs().flat_map(|r| r.all_secrets().cloned().collect::<Vec<_>>()))
                .filter(|n| !st.secrets.iter().any(|r| r.name == *n))
                .collect(),
            ResourceKind::Listener | ResourceKind::Cluster => BTreeSet::new(),
        }
    }

    /// What accepted `kind` resources refer to.
    fn referenced(&self, kind: ResourceKind) -> impl Iterator<Item = &References> + '_ {
        self.get(kind).resources.values().map(|s| &*s.refs)
    }

    /// Update the subscription of `kind` to `wanted`, dropping resources no longer wanted.
    /// Returns (added, removed) names; both empty when nothing changed.
    pub fn resubscribe(&mut self, kind: ResourceKind) -> (Vec<String>, Vec<String>) {
        let wanted = self.wanted(kind);
        let now = Instant::now();
        let t = self.get_mut(kind);
        let added: Vec<String> = wanted.difference(&t.subscribed).cloned().collect();
        let removed: Vec<String> = t.subscribed.difference(&wanted).cloned().collect();
        t.resources.retain(|name, _| wanted.contains(name));
        t.status.resources = t.resources.len();
        t.subscribed = wanted;
        for name in &added {
            self.wanted_since.entry((kind, name.clone())).or_insert(now);
        }
        for name in &removed {
            self.wanted_since.remove(&(kind, name.clone()));
        }
        (added, removed)
    }

    /// The full set to run: static plus accepted dynamic resources, with references that
    /// have not arrived handled as Envoy does once their initial fetch timeout passed
    /// (a missing route configuration serves as an empty one, a missing load assignment
    /// as no endpoints). Routes delivered over RDS do not require their clusters to exist
    /// (Envoy's `validate_clusters` default for RDS): such requests get a 503. A cluster or
    /// listener whose secret is missing is left out of the set: there is no stand-in for a
    /// certificate, and connecting without one would be worse than not connecting.
    pub fn assemble(&self) -> Assembled {
        self.assemble_from(&self.snapshot_of_types(), false)
    }

    /// [`assemble`](Self::assemble) with every missing reference treated as timed out: for a
    /// cold start from the cache, which holds no private secrets.
    pub fn assemble_now(&self) -> Assembled {
        self.assemble_from(&self.snapshot_of_types(), true)
    }

    fn assemble_from(
        &self,
        types: &BTreeMap<ResourceKind, &BTreeMap<String, Stored>>,
        ignore_warming: bool,
    ) -> Assembled {
        let mut r = self.static_resources.clone();
        // What each cluster and listener names, index for index with `r`: read once from the
        // static ones, kept from receipt for the dynamic ones.
        let mut cluster_refs: Vec<References> =
            r.clusters.iter().map(refs::cluster_references).collect();
        let mut listener_refs: Vec<References> =
            r.listeners.iter().map(refs::listener_references).collect();
        let empty = BTreeMap::new();
        let of = |k| types.get(&k).copied().unwrap_or(&empty);
        for (kind, s) in ResourceKind::WARM_ORDER
            .into_iter()
            .flat_map(|k| of(k).values().map(move |s| (k, s)))
        {
            match s.decode(kind) {
                Some(Decoded::Cluster(c)) => {
                    r.clusters.push(*c);
                    cluster_refs.push((*s.refs).clone());
                }
                Some(Decoded::ClusterLoadAssignment(c)) => r.load_assignments.push(*c),
                Some(Decoded::Listener(l)) => {
                    r.listeners.push(*l);
                    listener_refs.push((*s.refs).clone());
                }
                Some(Decoded::RouteConfiguration(rc)) => {
                    let mut rc = *rc;
                    if rc.validate_clusters.is_none() {
                        rc.validate_clusters = Some(BoolValue { value: false });
                    }
                    r.route_configs.push(rc);
                }
                Some(Decoded::Secret(secret)) => r.secrets.push(*secret),
                None => {}
            }
        }
        let mut warming = Vec::new();
        let now = Instant::now();
        let waits =
            |kind: ResourceKind, name: &str| !ignore_warming && !self.expired(kind, name, now);

        // Missing SDS: warm, then leave out what needs the secret.
        let have_secrets: BTreeSet<&str> = r.secrets.iter().map(|x| x.name.as_str()).collect();
        let missing_secrets: BTreeSet<&String> = cluster_refs
            .iter()
            .chain(&listener_refs)
            .flat_map(|x| &x.secrets)
            .filter(|name| !have_secrets.contains(name.as_str()))
            .collect();
        let mut gone = BTreeSet::new();
        for name in missing_secrets {
            if waits(ResourceKind::Secret, name) {
                warming.push((ResourceKind::Secret, name.clone()));
            } else {
                gone.insert(name.clone());
            }
        }
        // Missing credential secrets: warm, then serve without them (the credential is
        // unavailable until they arrive, as in Envoy).
        let missing_credentials: BTreeSet<&String> = listener_refs
            .iter()
            .flat_map(|x| &x.credential_secrets)
            .filter(|name| !have_secrets.contains(name.as_str()))
            .collect();
        for name in missing_credentials {
            if waits(ResourceKind::Secret, name) {
                warming.push((ResourceKind::Secret, name.clone()));
            }
        }
        let mut left_out = Vec::new();
        if !gone.is_empty() {
            let missing = |x: &References| x.secrets.iter().find(|s| gone.contains(*s)).cloned();
            let clusters = std::mem::take(&mut r.clusters);
            for (c, refs) in clusters.into_iter().zip(std::mem::take(&mut cluster_refs)) {
                match missing(&refs) {
                    Some(secret) => left_out.push((ResourceKind::Cluster, c.name, secret)),
                    None => {
                        r.clusters.push(c);
                        cluster_refs.push(refs);
                    }
                }
            }
            let listeners = std::mem::take(&mut r.listeners);
            for (l, refs) in listeners
                .into_iter()
                .zip(std::mem::take(&mut listener_refs))
            {
                match missing(&refs) {
                    Some(secret) => left_out.push((ResourceKind::Listener, l.name, secret)),
                    None => {
                        r.listeners.push(l);
                        listener_refs.push(refs);
                    }
                }
            }
        }

        // Missing RDS: warm, then serve an empty route configuration.
        let have_routes: BTreeSet<String> =
            r.route_configs.iter().map(|x| x.name.clone()).collect();
        let missing_routes: BTreeSet<&String> = listener_refs
            .iter()
            .flat_map(|x| &x.route_configs)
            .filter(|name| !have_routes.contains(*name))
            .collect();
        for name in missing_routes {
            if waits(ResourceKind::RouteConfiguration, name) {
                warming.push((ResourceKind::RouteConfiguration, name.clone()));
            }
            r.route_configs.push(XdsRouteConfiguration {
                name: name.clone(),
                validate_clusters: Some(BoolValue { value: false }),
                ..XdsRouteConfiguration::default()
            });
        }
        // Missing EDS: warm, then serve no endpoints.
        let have_cla: BTreeSet<&str> = r
            .load_assignments
            .iter()
            .map(|x| x.cluster_name.as_str())
            .collect();
        let missing_cla: BTreeSet<&String> = cluster_refs
            .iter()
            .filter_map(|x| x.load_assignment.as_ref())
            .filter(|name| !have_cla.contains(name.as_str()))
            .collect();
        let mut stand_ins = Vec::new();
        for name in missing_cla {
            if waits(ResourceKind::ClusterLoadAssignment, name) {
                warming.push((ResourceKind::ClusterLoadAssignment, name.clone()));
            }
            stand_ins.push(XdsClusterLoadAssignment {
                cluster_name: name.clone(),
                ..XdsClusterLoadAssignment::default()
            });
        }
        r.load_assignments.extend(stand_ins);
        Assembled {
            resources: r,
            warming,
            left_out,
        }
    }

    fn expired(&self, kind: ResourceKind, name: &str, now: Instant) -> bool {
        match self.wanted_since.get(&(kind, name.to_owned())) {
            Some(since) => now.duration_since(*since) >= self.initial_fetch_timeout,
            // Not subscribed yet: it will be; count from now.
            None => false,
        }
    }

    /// The earliest moment a warming name times out.
    pub fn next_warming_deadline(&self, warming: &[(ResourceKind, String)]) -> Option<Instant> {
        warming
            .iter()
            .filter_map(|(k, n)| self.wanted_since.get(&(*k, n.clone())))
            .map(|since| *since + self.initial_fetch_timeout)
            .min()
    }

    /// A version string for a built snapshot: the accepted versions per type.
    pub fn combined_version(&self) -> String {
        let mut parts = Vec::new();
        for k in ResourceKind::WARM_ORDER {
            let t = self.get(k);
            if !t.version_info.is_empty() {
                parts.push(format!(
                    "{}={}",
                    k.service().to_ascii_lowercase(),
                    t.version_info
                ));
            }
        }
        if parts.is_empty() {
            "static".to_owned()
        } else {
            parts.join(",")
        }
    }

    /// Build the snapshot for the assembled set.
    pub fn build(
        &self,
        assembled: &Assembled,
    ) -> Result<Snapshot, legate_snapshot::InvalidSnapshot> {
        legate_snapshot::build(self.combined_version(), &assembled.resources)
    }

    /// Status per type, for `/config_dump` and metrics.
    pub fn status(&self) -> Vec<TypeStatus> {
        ResourceKind::WARM_ORDER
            .into_iter()
            .map(|k| self.get(k).status.clone())
            .collect()
    }
}

mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        s.serialize_f64(secs)
    }
}

mod unix_seconds_opt {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_seconds::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
listeners:
  - {name: out, address: 127.0.0.1:0, route_config: routes-a}
route_configs:
  - name: routes-a
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            forward: {cluster: web}
  - name: routes-b
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            forward: {cluster: web}
clusters:
  - name: web
    endpoints: [{address: 127.0.0.1:8080}]
"#;

    fn resources() -> Resources {
        let mesh = legate_model::parse_mesh(MESH, "test").expect("mesh");
        legate_model::compile(&mesh)
    }

    fn stored<M: Message>(kind: ResourceKind, m: &M) -> (String, Stored) {
        let any = Any {
            type_url: kind.type_url().to_owned(),
            value: m.encode_to_vec(),
        };
        let received = Received::decode(kind, &any).expect("decode");
        let name = received.name.clone();
        (name, received.check("1".to_owned()).expect("valid"))
    }

    fn accept<M: Message>(state: &mut XdsState, kind: ResourceKind, items: &[M]) {
        let set = items.iter().map(|m| stored(kind, m)).collect();
        let p = state
            .propose(kind, set, "1".to_owned(), "n".to_owned())
            .expect("valid");
        state.commit(p);
    }

    /// `/config_dump`'s `last_updated`: when a resource last changed, not when it was last
    /// sent again unchanged (as Envoy's).
    #[test]
    fn an_unchanged_resource_keeps_its_last_updated() {
        let r = resources();
        let mut state = XdsState::new(Resources::default(), Duration::from_secs(1));
        let commit = |state: &mut XdsState, c: &XdsCluster, at: SystemTime| {
            let (name, mut s) = stored(ResourceKind::Cluster, c);
            s.last_updated = at;
            let p = state.propose_unchecked(
                ResourceKind::Cluster,
                BTreeMap::from([(name.clone(), s)]),
                "v".to_owned(),
            );
            state.commit(p);
            state.get(ResourceKind::Cluster).resources[&name].last_updated
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(5);
        let t2 = t1 + Duration::from_secs(5);
        let mut c = r.clusters[0].clone();
        assert_eq!(commit(&mut state, &c, t0), t0);
        assert_eq!(commit(&mut state, &c, t1), t0, "unchanged: kept");
        c.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 9,
            nanos: 0,
        });
        assert_eq!(commit(&mut state, &c, t2), t2, "changed: updated");
    }

    #[test]
    fn subscriptions_follow_references_and_warming_ends_when_resources_arrive() {
        let r = resources();
        let mut state = XdsState::new(Resources::default(), Duration::from_secs(60));
        accept(&mut state, ResourceKind::Cluster, &r.clusters);
        let (added, removed) = state.resubscribe(ResourceKind::ClusterLoadAssignment);
        assert_eq!((added, removed), (vec!["web".to_owned()], vec![]));
        accept(&mut state, ResourceKind::Listener, &r.listeners);
        let (added, _) = state.resubscribe(ResourceKind::RouteConfiguration);
        assert_eq!(added, vec!["routes-a".to_owned()]);
        // Neither the endpoints nor the routes are here yet: both warm.
        let a = state.assemble();
        assert_eq!(
            a.warming,
            vec![
                (ResourceKind::RouteConfiguration, "routes-a".to_owned()),
                (ResourceKind::ClusterLoadAssignment, "web".to_owned()),
            ]
        );
        accept(
            &mut state,
            ResourceKind::ClusterLoadAssignment,
            &r.load_assignments,
        );
        accept(
            &mut state,
            ResourceKind::RouteConfiguration,
            &r.route_configs[..1],
        );
        let a = state.assemble();
        assert!(a.warming.is_empty(), "{:?}", a.warming);
        let snapshot = state.build(&a).expect("builds");
        assert_eq!(snapshot.listeners.len(), 1);
        assert_eq!(snapshot.version, "cds=1,eds=1,lds=1,rds=1");
    }

    #[test]
    fn unsubscribed_resources_are_dropped() {
        let r = resources();
        let mut state = XdsState::new(Resources::default(), Duration::from_secs(60));
        accept(&mut state, ResourceKind::Cluster, &r.clusters);
        accept(&mut state, ResourceKind::Listener, &r.listeners);
        state.resubscribe(ResourceKind::RouteConfiguration);
        accept(
            &mut state,
            ResourceKind::RouteConfiguration,
            &r.route_configs[..1],
        );
        let mut moved = r.listeners[0].clone();
        // Point the listener at routes-b: routes-a is unsubscribed and forgotten.
        let hcm_any = match &moved.filter_chains[0].filters[0].config_type {
            Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a),
            ) => a.clone(),
            _ => panic!("typed config"),
        };
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        };
        let mut hcm = HttpConnectionManager::decode(hcm_any.value.as_slice()).expect("hcm");
        if let Some(RouteSpecifier::Rds(rds)) = &mut hcm.route_specifier {
            rds.route_config_name = "routes-b".to_owned();
        }
        moved.filter_chains[0].filters[0].config_type = Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(Any {
                type_url: hcm_any.type_url,
                value: hcm.encode_to_vec(),
            }),
        );
        accept(&mut state, ResourceKind::Listener, &[moved]);
        let (added, removed) = state.resubscribe(ResourceKind::RouteConfiguration);
        assert_eq!(added, vec!["routes-b".to_owned()]);
        assert_eq!(removed, vec!["routes-a".to_owned()]);
        assert!(
            state
                .get(ResourceKind::RouteConfiguration)
                .resources
                .is_empty()
        );
    }

    /// One `discovery.v3.Resource` envelope is unwrapped; an envelope inside it is refused
    /// by name without being opened.
    #[test]
    fn one_level_of_resource_wrapper_only() {
        let cluster = &resources().clusters[0];
        let bare = Any {
            type_url: ResourceKind::Cluster.type_url().to_owned(),
            value: cluster.encode_to_vec(),
        };
        let wrap = |any: Any, name: &str| Any {
            type_url: legate_snapshot::type_url::RESOURCE_WRAPPER.to_owned(),
            value: XdsResourceWrapper {
                name: name.to_owned(),
                resource: Some(any),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        let once = Received::decode(ResourceKind::Cluster, &wrap(bare.clone(), "web"))
            .expect("one level is unwrapped");
        assert_eq!(once.name, cluster.name);
        assert_eq!(once.any, bare, "kept out of its envelope");
        let twice = wrap(wrap(bare, "inner"), "outer");
        let err = Received::decode(ResourceKind::Cluster, &twice).expect_err("two levels");
        assert!(matches!(&err, ResourceError::NestedWrapper(name) if name == "outer"));
        assert_eq!(
            err.to_string(),
            "resource wrapper 'outer' wraps another resource wrapper: only one level of \
             envoy.service.discovery.v3.Resource is allowed"
        );
    }

    #[test]
    fn invalid_update_is_refused_with_resource_and_field() {
        let r = resources();
        let mut bad = r.clusters[0].clone();
        bad.lb_policy = 6; // CLUSTER_PROVIDED
        let any = Any {
            type_url: ResourceKind::Cluster.type_url().to_owned(),
            value: bad.encode_to_vec(),
        };
        let received = Received::decode(ResourceKind::Cluster, &any).expect("decodes");
        assert_eq!(received.name, "web");
        let err = received
            .check("2".to_owned())
            .expect_err("CLUSTER_PROVIDED is refused");
        assert!(matches!(&err, ResourceError::Invalid(errors) if errors.len() == 1));
        let err = err.to_string();
        assert!(err.contains("cluster 'web'"), "{err}");
        assert!(err.contains("lb_policy"), "{err}");
    }

    #[test]
    fn missing_references_serve_empty_after_the_fetch_timeout() {
        let r = resources();
        let mut state = XdsState::new(Resources::default(), Duration::ZERO);
        accept(&mut state, ResourceKind::Cluster, &r.clusters);
        state.resubscribe(ResourceKind::ClusterLoadAssignment);
        accept(&mut state, ResourceKind::Listener, &r.listeners);
        state.resubscribe(ResourceKind::RouteConfiguration);
        let a = state.assemble();
        assert!(a.warming.is_empty());
        let snapshot = state.build(&a).expect("builds with empty stand-ins");
        let web = snapshot.clusters.get("web").expect("cluster");
        assert_eq!(web.load_assignment.endpoints().count(), 0);
        assert!(snapshot.route_configs.contains_key("routes-a"));
    }

    #[test]
    fn names_clashing_with_static_resources_are_refused() {
        let r = resources();
        let state = XdsState::new(r.clone(), Duration::from_secs(60));
        let set = [stored(ResourceKind::Cluster, &r.clusters[0])]
            .into_iter()
            .collect();
        let err = state
            .propose(ResourceKind::Cluster, set, "1".to_owned(), "n".to_owned())
            .expect_err("clash");
        assert!(matches!(&err, UpdateError::StaticConflict(c) if c[0].name == r.clusters[0].name));
        let err = err.to_string();
        assert!(err.contains("static"), "{err}");
    }

    mod secrets {
        use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
        use envoy_types::pb::envoy::config::core::v3::{
            AggregatedConfigSource, ConfigSource, DataSource, TransportSocket,
        };
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, CommonTlsContext, SdsSecretConfig, TlsCertificate,
            UpstreamTlsContext, secret,
        };

        use super::*;

        /// A real certificate and key (a secret's contents may be parsed when checked).
        fn issued() -> &'static (String, legate_tls::issue::Issued) {
            static ISSUED: std::sync::OnceLock<(String, legate_tls::issue::Issued)> =
                std::sync::OnceLock::new();
            ISSUED.get_or_init(|| {
                let ca = legate_tls::issue::Authority::new("test ca").expect("ca");
                let leaf = ca
                    .issue(&legate_tls::issue::LeafSpec::new("client").client_only())
                    .expect("leaf");
                (ca.cert_pem().to_owned(), leaf)
            })
        }

        fn sds(name: &str) -> SdsSecretConfig {
            SdsSecretConfig {
                name: name.to_owned(),
                sds_config: Some(ConfigSource {
                    config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..ConfigSource::default()
                }),
            }
        }

        /// `web` from the mesh, with a TLS transport socket naming its client certificate
        /// and CA over SDS.
        fn tls_cluster(name: &str, cert: Option<&str>, ca: &str) -> XdsCluster {
            let mut c = resources().clusters[0].clone();
            c.name = name.to_owned();
            let ctx = UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: cert.into_iter().map(sds).collect(),
                    validation_context_type: Some(
                        ValidationContextType::ValidationContextSdsSecretConfig(sds(ca)),
                    ),
                    ..CommonTlsContext::default()
                }),
                ..UpstreamTlsContext::default()
            };
            c.transport_socket = Some(TransportSocket {
                name: "envoy.transport_sockets.tls".to_owned(),
                config_type: Some(ConfigType::TypedConfig(Any {
                    type_url: legate_snapshot::type_url::UPSTREAM_TLS_CONTEXT.to_owned(),
                    value: ctx.encode_to_vec(),
                })),
            });
            c
        }

        fn inline(text: &str) -> Option<DataSource> {
            Some(DataSource {
                specifier: Some(Specifier::InlineString(text.to_owned())),
                ..DataSource::default()
            })
        }

        fn cert_secret(name: &str) -> XdsSecret {
            XdsSecret {
                name: name.to_owned(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(&issued().1.cert_pem),
                    private_key: inline(&issued().1.key_pem),
                    ..TlsCertificate::default()
                })),
            }
        }

        fn ca_secret(name: &str) -> XdsSecret {
            XdsSecret {
                name: name.to_owned(),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: inline(&issued().0),
                        ..CertificateValidationContext::default()
                    },
                )),
            }
        }

        /// Stored as the client would store it, without the per-resource validation (which
        /// belongs to `legate-snapshot` and is exercised by its own tests).
        fn unchecked<M: Message>(kind: ResourceKind, m: &M) -> (String, Stored) {
            let any = Any {
                type_url: kind.type_url().to_owned(),
                value: m.encode_to_vec(),
            };
            let received = Received::decode(kind, &any).expect("decodes");
            let stored = Stored {
                version: "1".to_owned(),
                private: received.decoded.is_private(),
                refs: Box::new(match &received.decoded {
                    Decoded::Cluster(c) => refs::cluster_references(c),
                    Decoded::Listener(l) => refs::listener_references(l),
                    _ => References::default(),
                }),
                any: Arc::new(any),
                last_updated: SystemTime::now(),
            };
            (received.name, stored)
        }

        fn set<M: Message>(state: &mut XdsState, kind: ResourceKind, items: &[M]) {
            let set = items.iter().map(|m| unchecked(kind, m)).collect();
            let p = state.propose_unchecked(kind, set, "1".to_owned());
            state.commit(p);
        }

        #[test]
        fn secrets_named_by_clusters_are_subscribed_and_warm_until_they_arrive() {
            let r = resources();
            let mut state = XdsState::new(Resources::default(), Duration::from_secs(60));
            set(
                &mut state,
                ResourceKind::Cluster,
                &[tls_cluster("web", Some("client"), "ca")],
            );
            let (added, removed) = state.resubscribe(ResourceKind::Secret);
            assert_eq!(added, vec!["ca".to_owned(), "client".to_owned()]);
            assert!(removed.is_empty());
            state.resubscribe(ResourceKind::ClusterLoadAssignment);
            let a = state.assemble();
            assert_eq!(
                a.warming,
                vec![
                    (ResourceKind::Secret, "ca".to_owned()),
                    (ResourceKind::Secret, "client".to_owned()),
                    (ResourceKind::ClusterLoadAssignment, "web".to_owned()),
                ]
            );
            assert!(a.left_out.is_empty());

            set(
                &mut state,
                ResourceKind::ClusterLoadAssignment,
                &r.load_assignments,
            );
            set(&mut state, ResourceKind::Secret, &[ca_secret("ca")]);
            let a = state.assemble();
            assert_eq!(a.warming, vec![(ResourceKind::Secret, "client".to_owned())]);
            set(
                &mut state,
                ResourceKind::Secret,
                &[ca_secret("ca"), cert_secret("client")],
            );
            let a = state.assemble();
            assert!(a.warming.is_empty(), "{:?}", a.warming);
            assert_eq!(a.resources.secrets.len(), 2);
            assert_eq!(a.resources.clusters.len(), 1);

            // The cluster stops naming its client certificate: unsubscribed and forgotten.
            set(
                &mut state,
                ResourceKind::Cluster,
                &[tls_cluster("web", None, "ca")],
            );
            let (added, removed) = state.resubscribe(ResourceKind::Secret);
            assert!(added.is_empty());
            assert_eq!(removed, vec!["client".to_owned()]);
            let kept: Vec<&String> = state.get(ResourceKind::Secret).resources.keys().collect();
            assert_eq!(kept, vec!["ca"]);
        }

        #[test]
        fn a_cluster_whose_secret_never_arrives_is_left_out_after_the_fetch_timeout() {
            let r = resources();
            let mut state = XdsState::new(Resources::default(), Duration::ZERO);
            let mut plain = r.clusters[0].clone();
            plain.name = "plain".to_owned();
            set(
                &mut state,
                ResourceKind::Cluster,
                &[tls_cluster("secure", Some("client"), "ca"), plain],
            );
            state.resubscribe(ResourceKind::Secret);
            state.resubscribe(ResourceKind::ClusterLoadAssignment);
            set(&mut state, ResourceKind::Secret, &[ca_secret("ca")]);
            let a = state.assemble();
            assert!(a.warming.is_empty(), "{:?}", a.warming);
            assert_eq!(
                a.left_out,
                vec![(
                    ResourceKind::Cluster,
                    "secure".to_owned(),
                    "client".to_owned()
                )]
            );
            let names: Vec<&str> = a
                .resources
                .clusters
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(names, vec!["plain"]);
            // What the left-out cluster needed is neither warmed nor stood in for.
            assert!(
                a.resources
                    .load_assignments
                    .iter()
                    .all(|la| la.cluster_name != "secure")
            );
        }

        #[test]
        fn static_secrets_are_not_subscribed() {
            let statics = Resources {
                secrets: vec![ca_secret("ca")],
                ..Resources::default()
            };
            let mut state = XdsState::new(statics, Duration::from_secs(60));
            set(
                &mut state,
                ResourceKind::Cluster,
                &[tls_cluster("web", Some("client"), "ca")],
            );
            assert_eq!(
                state.wanted(ResourceKind::Secret),
                BTreeSet::from(["client".to_owned()])
            );
            let set = [unchecked(ResourceKind::Secret, &ca_secret("ca"))]
                .into_iter()
                .collect();
            let err = state
                .propose(ResourceKind::Secret, set, "1".to_owned(), "n".to_owned())
                .expect_err("clash");
            assert!(matches!(&err, UpdateError::StaticConflict(c) if c[0].name == "ca"));
            let err = err.to_string();
            assert!(err.contains("secret 'ca'"), "{err}");
        }

        #[test]
        fn private_material_is_flagged_and_never_printed() {
            let any = |s: &XdsSecret| Any {
                type_url: ResourceKind::Secret.type_url().to_owned(),
                value: s.encode_to_vec(),
            };
            let received = Received::decode(ResourceKind::Secret, &any(&cert_secret("client")))
                .expect("decodes");
            assert_eq!(received.name, "client");
            // Any run of the key's base64 body would do; its second line is distinctive.
            let key_line = issued().1.key_pem.lines().nth(1).expect("key body");
            assert!(!format!("{received:?}").contains(key_line));
            let stored = received.check("7".to_owned()).expect("accepted");
            assert!(stored.private);
            let shown = format!("{stored:?}");
            assert!(!shown.contains(key_line), "{shown}");
            let ca = Received::decode(ResourceKind::Secret, &any(&ca_secret("ca")))
                .expect("decodes")
                .check("7".to_owned())
                .expect("accepted");
            assert!(!ca.private);
            // A key that is not the certificate's is refused by name, without echoing it.
            let other = legate_tls::issue::Authority::new("other")
                .expect("ca")
                .issue(&legate_tls::issue::LeafSpec::new("other"))
                .expect("leaf");
            let mut mismatched = cert_secret("client");
            if let Some(secret::Type::TlsCertificate(c)) = &mut mismatched.r#type {
                c.private_key = inline(&other.key_pem);
            }
            let err = Received::decode(ResourceKind::Secret, &any(&mismatched))
                .expect("decodes")
                .check("8".to_owned())
                .expect_err("mismatch");
            assert!(matches!(&err, ResourceError::Invalid(_)));
            let err = err.to_string();
            assert!(
                err.starts_with("secret 'client': tls_certificate.private_key: "),
                "{err}"
            );
            assert!(
                !err.contains(other.key_pem.lines().nth(1).expect("body")),
                "{err}"
            );
            let unnamed = Received::decode(ResourceKind::Secret, &any(&ca_secret("")))
                .expect("decodes")
                .check("7".to_owned())
                .expect_err("a secret needs a name");
            assert!(unnamed.to_string().contains("secret ''"), "{unnamed}");
        }
    }
}
