//! A scriptable xDS control plane for tests: a real gRPC server on `127.0.0.1:0` serving
//! `envoy.service.discovery.v3.AggregatedDiscoveryService`, both state of the world
//! (`StreamAggregatedResources`) and delta (`DeltaAggregatedResources`).
//!
//! It is a test peer, not a control plane: one resource set per type URL shared by every
//! client, no per-node snapshots, no debouncing. What it offers instead is control and
//! evidence:
//! - [`XdsServer::set`] replaces the resources of a type and pushes the change on every open
//!   stream subscribed to it (SotW: every subscribed resource; delta: only what that client
//!   lacks, plus `removed_resources`). [`XdsServer::set_mesh`] does it for a whole mesh in
//!   legate's authoring YAML.
//! - Every request is recorded in order ([`RecordedRequest`]), every response too
//!   ([`SentResponse`]); `wait_*` helpers block (bounded) until the client did something.
//! - Scripting hooks: raw responses with a chosen nonce or version, dropping every stream,
//!   shutting down and restarting on the same port (connections are cut, not drained), and
//!   refusing or hanging streams ([`Behavior`]).
//!
//! Serving rules, kept simple and predictable:
//! - A type the test never [`set`](XdsServer::set) is unknown: requests for it get no answer.
//! - SotW: LDS and CDS requests with no names (or `*`) are wildcard; RDS and EDS are named (an
//!   empty name list subscribes to nothing). A request is answered when its nonce is empty (a
//!   new subscription or a reconnect) or its names changed; an ACK or NACK of the latest
//!   nonce is not answered, and a request carrying an older nonce is ignored (as the xDS
//!   protocol says).
//! - Delta: the first request of a type seeds what the client holds from
//!   `initial_resource_versions`; resources are sent when the client's version differs from
//!   the server's. A first wildcard request is answered even when there is nothing to send.
//! - Each resource's version is a hash of its encoding unless given; each type's version is
//!   `v1`, `v2`, ... bumped on every `set` (or chosen with [`XdsServer::set_versioned`]).
//! - Nonces are `n1`, `n2`, ... unique for the server's lifetime, restarts included.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as XdsSecret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any;
use legate_snapshot::ResourceKind;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Status, Streaming};

/// Listener type URL (LDS).
pub const LDS: &str = legate_snapshot::type_url::LISTENER;
/// RouteConfiguration type URL (RDS).
pub const RDS: &str = legate_snapshot::type_url::ROUTE_CONFIGURATION;
/// Cluster type URL (CDS).
pub const CDS: &str = legate_snapshot::type_url::CLUSTER;
/// ClusterLoadAssignment type URL (EDS).
pub const EDS: &str = legate_snapshot::type_url::CLUSTER_LOAD_ASSIGNMENT;
/// Secret type URL (SDS).
pub const SDS: &str = legate_snapshot::type_url::SECRET;
/// The four types without TLS, in the order a mesh is pushed (make before break: clusters,
/// their endpoints, listeners, their routes): [`ResourceKind::WARM_ORDER`] without secrets.
pub const ALL_TYPES: [&str; 4] = [CDS, EDS, LDS, RDS];
/// The five types with secrets, in Envoy's warm order ([`ResourceKind::WARM_ORDER`]).
pub const ALL_TYPES_WITH_SECRETS: [&str; 5] = [CDS, EDS, SDS, LDS, RDS];

/// A short name for a type URL, for messages: `LDS`, `CDS`, ... or the URL itself.
pub fn short(type_url: &str) -> &str {
    ResourceKind::from_type_url(type_url).map_or(type_url, |kind| kind.service())
}

/// LDS and CDS subscribe by wildcard.
fn wildcard_type(type_url: &str) -> bool {
    ResourceKind::from_type_url(type_url).is_some_and(ResourceKind::is_wildcard)
}

/// Which ADS variant a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Sotw,
    Delta,
}

impl Mode {
    /// The value of legate's `--xds-mode`.
    pub fn as_arg(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

/// How the server treats streams, switchable at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Answer as described in the module docs.
    Serve,
    /// Fail every new stream at once with `UNAVAILABLE` (open streams are left alone).
    Refuse,
    /// Accept streams and record requests but never answer (pushes are not sent either).
    Hang,
}

// ---------------------------------------------------------------------------------------------
// Resources

/// One resource as the server holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Delta's per-resource version; by default a hash of the encoding.
    pub version: String,
    pub any: Any,
}

impl Resource {
    /// Wraps `message` as an `Any` of `type_url`, named `name`.
    pub fn new(type_url: &str, name: &str, message: &impl Message) -> Resource {
        Resource::from_any(
            name,
            Any {
                type_url: type_url.to_owned(),
                value: message.encode_to_vec(),
            },
        )
    }

    /// A resource from an already encoded `Any`; the version is a hash of its bytes.
    pub fn from_any(name: &str, any: Any) -> Resource {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        any.type_url.hash(&mut hasher);
        any.value.hash(&mut hasher);
        Resource {
            name: name.to_owned(),
            version: format!("{:016x}", hasher.finish()),
            any,
        }
    }

    /// Replaces the per-resource version.
    pub fn with_version(mut self, version: &str) -> Resource {
        self.version = version.to_owned();
        self
    }

    pub fn listener(l: &XdsListener) -> Resource {
        Resource::new(LDS, &l.name, l)
    }

    pub fn route_config(r: &XdsRouteConfiguration) -> Resource {
        Resource::new(RDS, &r.name, r)
    }

    pub fn cluster(c: &XdsCluster) -> Resource {
        Resource::new(CDS, &c.name, c)
    }

    pub fn load_assignment(c: &XdsClusterLoadAssignment) -> Resource {
        Resource::new(EDS, &c.cluster_name, c)
    }

    pub fn secret(s: &XdsSecret) -> Resource {
        Resource::new(SDS, &s.name, s)
    }

    /// Decodes the resource as `M` (panics if it is not one).
    pub fn decode<M: Message + Default>(&self) -> M {
        M::decode(self.any.value.as_slice()).unwrap_or_else(|error| {
            panic!(
                "resource {:?} ({}) does not decode as the requested type: {error}",
                self.name, self.any.type_url
            )
        })
    }
}

/// `inner` inside `depth` `discovery.v3.Resource` envelopes, as an `Any` of the envelope
/// type (`depth` 1 is the ordinary single wrapping).
///
/// Encoded by hand from the inside out in one buffer kept reversed, so building a hundred
/// thousand levels is linear: encoding level by level with prost would copy everything
/// inside at every level.
pub fn nested_wrappers(inner: &Any, depth: usize) -> Any {
    const ANY_TYPE_URL: u8 = 0x0a; // field 1, length-delimited
    const ANY_VALUE: u8 = 0x12; // field 2, length-delimited
    const RESOURCE_RESOURCE: u8 = 0x12; // discovery.v3.Resource.resource, field 2
    let url = legate_snapshot::type_url::RESOURCE_WRAPPER.as_bytes();
    fn prepend_varint(reversed: &mut Vec<u8>, mut n: usize) {
        let mut bytes = Vec::with_capacity(10);
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
        reversed.extend(bytes.iter().rev());
    }
    let mut reversed = inner.encode_to_vec();
    reversed.reverse();
    for level in 1..=depth.max(1) {
        // Resource { resource: <what is built so far> }
        let len = reversed.len();
        prepend_varint(&mut reversed, len);
        reversed.push(RESOURCE_RESOURCE);
        if level == depth.max(1) {
            break;
        }
        // Any { type_url: envelope, value: <that Resource> }
        let len = reversed.len();
        prepend_varint(&mut reversed, len);
        reversed.push(ANY_VALUE);
        reversed.extend(url.iter().rev());
        prepend_varint(&mut reversed, url.len());
        reversed.push(ANY_TYPE_URL);
    }
    reversed.reverse();
    Any {
        type_url: legate_snapshot::type_url::RESOURCE_WRAPPER.to_owned(),
        value: reversed,
    }
}

/// Parses and validates a mesh in legate's authoring format (`examples/mesh-reference.yaml`)
/// and compiles it to Envoy resources; panics listing every error.
pub fn mesh_resources(yaml: &str) -> legate_snapshot::Resources {
    match legate_model::load(yaml, "test-mesh.yaml") {
        Ok(mesh) => legate_model::compile(&mesh),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!(
                "invalid test mesh:\n{}\n----- mesh -----\n{yaml}",
                list.join("\n")
            )
        }
    }
}

/// The compiled resources per type URL, in [`ALL_TYPES`] order, with secrets (if any) after
/// the endpoints as in [`ALL_TYPES_WITH_SECRETS`].
pub fn by_type(r: &legate_snapshot::Resources) -> Vec<(&'static str, Vec<Resource>)> {
    let mut types = vec![
        (CDS, r.clusters.iter().map(Resource::cluster).collect()),
        (
            EDS,
            r.load_assignments
                .iter()
                .map(Resource::load_assignment)
                .collect(),
        ),
    ];
    if !r.secrets.is_empty() {
        types.push((SDS, r.secrets.iter().map(Resource::secret).collect()));
    }
    types.extend([
        (LDS, r.listeners.iter().map(Resource::listener).collect()),
        (
            RDS,
            r.route_configs.iter().map(Resource::route_config).collect(),
        ),
    ]);
    types
}

// ---------------------------------------------------------------------------------------------
// Records

/// `error_detail` of a NACK.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorDetail {
    pub code: i32,
    pub message: String,
}

/// One request as received, SotW or delta (fields of the other variant stay empty).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Position in the server's request log (0-based).
    pub seq: usize,
    pub stream: u64,
    pub mode: Mode,
    pub at: Instant,
    pub type_url: String,
    /// SotW `version_info`.
    pub version_info: String,
    pub response_nonce: String,
    /// SotW `resource_names`.
    pub resource_names: Vec<String>,
    /// Delta `resource_names_subscribe`.
    pub subscribe: Vec<String>,
    /// Delta `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// Delta `initial_resource_versions`.
    pub initial_resource_versions: BTreeMap<String, String>,
    pub error: Option<ErrorDetail>,
    pub node: Option<Node>,
}

impl RecordedRequest {
    pub fn is_nack(&self) -> bool {
        self.error.is_some()
    }

    /// Answers a response (non-empty nonce) without an error.
    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error.is_none()
    }

    /// Names as a set: SotW `resource_names`.
    pub fn names(&self) -> BTreeSet<String> {
        self.resource_names.iter().cloned().collect()
    }

    /// One line for logs and assertion messages.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "#{} stream {} {:?} {} ",
            self.seq,
            self.stream,
            self.mode,
            short(&self.type_url)
        );
        match self.mode {
            Mode::Sotw => {
                let _ = write!(
                    out,
                    "version={:?} nonce={:?} names={:?}",
                    self.version_info, self.response_nonce, self.resource_names
                );
            }
            Mode::Delta => {
                let _ = write!(
                    out,
                    "nonce={:?} subscribe={:?} unsubscribe={:?}",
                    self.response_nonce, self.subscribe, self.unsubscribe
                );
                if !self.initial_resource_versions.is_empty() {
                    let _ = write!(out, " initial={:?}", self.initial_resource_versions);
                }
            }
        }
        if let Some(e) = &self.error {
            let _ = write!(out, " NACK code={} message={:?}", e.code, e.message);
        }
        if let Some(node) = &self.node {
            let _ = write!(out, " node={:?}/{:?}", node.id, node.cluster);
        }
        out
    }
}

/// One response as sent.
#[derive(Clone, Debug)]
pub struct SentResponse {
    /// Position in the server's response log (0-based).
    pub seq: usize,
    pub stream: u64,
    pub mode: Mode,
    pub type_url: String,
    /// SotW `version_info`, delta `system_version_info`.
    pub version: String,
    pub nonce: String,
    /// Names of the resources carried (per-resource versions for delta).
    pub resources: Vec<(String, String)>,
    /// Delta `removed_resources`.
    pub removed: Vec<String>,
    /// Sent with [`XdsServer::send_raw_sotw`] / [`XdsServer::send_raw_delta`].
    pub raw: bool,
}

impl SentResponse {
    pub fn names(&self) -> Vec<String> {
        self.resources.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "#{} stream {} {:?} {} version={:?} nonce={:?} resources={:?} removed={:?}{}",
            self.seq,
            self.stream,
            self.mode,
            short(&self.type_url),
            self.version,
            self.nonce,
            self.names(),
            self.removed,
            if self.raw { " (raw)" } else { "" }
        )
    }
}

/// What one change of a type sent.
#[derive(Clone, Debug)]
pub struct Push {
    pub type_url: String,
    /// The type's version after the change.
    pub version: String,
    /// One entry per stream that got a response (none when nobody is subscribed).
    pub sent: Vec<SentResponse>,
}

impl Push {
    /// The nonce sent on the only stream; panics unless exactly one stream got it.
    #[track_caller]
    pub fn nonce(&self) -> &str {
        assert_eq!(
            self.sent.len(),
            1,
            "expected the {} push of version {} to reach exactly one stream: {:#?}",
            short(&self.type_url),
            self.version,
            self.sent
        );
        &self.sent[0].nonce
    }
}

/// A stream, open or closed.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    pub id: u64,
    pub mode: Mode,
    /// The node of the first request that carried one.
    pub node: Option<Node>,
    pub open: bool,
}

// ---------------------------------------------------------------------------------------------
// State

type SotwTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

enum Tx {
    Sotw(SotwTx),
    Delta(DeltaTx),
}

/// A stream's subscription to one type.
#[derive(Debug, Default)]
struct Sub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// SotW: the last nonce sent for this type on this stream.
    last_nonce: String,
    /// Delta: what the client holds, name → version.
    known: BTreeMap<String, String>,
}

impl Sub {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn subscribed(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }
}

struct Stream {
    id: u64,
    mode: Mode,
    node: Option<Node>,
    tx: Option<Tx>,
    subs: BTreeMap<String, Sub>,
}

#[derive(Clone, Debug, Default)]
struct TypeState {
    counter: u64,
    version: String,
    resources: BTreeMap<String, Resource>,
}

struct State {
    types: BTreeMap<String, TypeState>,
    streams: BTreeMap<u64, Stream>,
    requests: Vec<RecordedRequest>,
    responses: Vec<SentResponse>,
    next_stream: u64,
    next_nonce: u64,
    /// When each stream was asked for, refused ones included.
    attempts: Vec<Instant>,
    behavior: Behavior,
}

impl State {
    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        format!("n{}", self.next_nonce)
    }

    fn is_open(&self, id: u64) -> bool {
        self.streams.get(&id).is_some_and(|s| s.tx.is_some())
    }

    fn open_ids(&self, mode: Option<Mode>) -> Vec<u64> {
        self.streams
            .values()
            .filter(|s| s.tx.is_some() && mode.is_none_or(|m| m == s.mode))
            .map(|s| s.id)
            .collect()
    }

    /// Sends a SotW response of the current state of `type_url` to stream `id`.
    fn respond_sotw(&mut self, id: u64, type_url: &str) -> Option<SentResponse> {
        let t = self.types.get(type_url)?.clone();
        let sub = self.streams.get(&id)?.subs.get(type_url)?;
        if !sub.subscribed() {
            return None;
        }
        let resources: Vec<Any> = t
            .resources
            .values()
            .filter(|r| sub.wants(&r.name))
            .map(|r| r.any.clone())
            .collect();
        let response = DiscoveryResponse {
            version_info: t.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: self.nonce(),
            ..Default::default()
        };
        self.send_sotw(id, response, false)
    }

    fn send_sotw(
        &mut self,
        id: u64,
        response: DiscoveryResponse,
        raw: bool,
    ) -> Option<SentResponse> {
        let stream = self.streams.get_mut(&id)?;
        let Some(Tx::Sotw(tx)) = &stream.tx else {
            return None;
        };
        let record = SentResponse {
            seq: self.responses.len(),
            stream: id,
            mode: Mode::Sotw,
            type_url: response.type_url.clone(),
            version: response.version_info.clone(),
            nonce: response.nonce.clone(),
            resources: response
                .resources
                .iter()
                .map(|any| (resource_name(any), response.version_info.clone()))
                .collect(),
            removed: Vec::new(),
            raw,
        };
        let type_url = response.type_url.clone();
        if tx.send(Ok(response)).is_err() {
            stream.tx = None;
            return None;
        }
        stream.subs.entry(type_url).or_default().last_nonce = record.nonce.clone();
        self.responses.push(record.clone());
        Some(record)
    }

    /// Sends a delta response with what stream `id` lacks of `type_url`; with `force`, sends
    /// even an empty one.
    fn respond_delta(&mut self, id: u64, type_url: &str, force: bool) -> Option<SentResponse> {
        let t = self.types.get(type_url)?.clone();
        let sub = self.streams.get(&id)?.subs.get(type_url)?;
        let resources: Vec<XdsResource> = t
            .resources
            .values()
            .filter(|r| sub.wants(&r.name) && sub.known.get(&r.name) != Some(&r.version))
            .map(|r| XdsResource {
                name: r.name.clone(),
                version: r.version.clone(),
                resource: Some(r.any.clone()),
                ..Default::default()
            })
            .collect();
        let removed: Vec<String> = sub
            .known
            .keys()
            .filter(|name| !t.resources.contains_key(*name))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !force {
            return None;
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: t.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: self.nonce(),
            ..Default::default()
        };
        self.send_delta(id, response, false)
    }

    fn send_delta(
        &mut self,
        id: u64,
        response: DeltaDiscoveryResponse,
        raw: bool,
    ) -> Option<SentResponse> {
        let stream = self.streams.get_mut(&id)?;
        let Some(Tx::Delta(tx)) = &stream.tx else {
            return None;
        };
        let record = SentResponse {
            seq: self.responses.len(),
            stream: id,
            mode: Mode::Delta,
            type_url: response.type_url.clone(),
            version: response.system_version_info.clone(),
            nonce: response.nonce.clone(),
            resources: response
                .resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
            removed: response.removed_resources.clone(),
            raw,
        };
        let type_url = response.type_url.clone();
        if tx.send(Ok(response)).is_err() {
            stream.tx = None;
            return None;
        }
        let sub = stream.subs.entry(type_url).or_default();
        sub.last_nonce = record.nonce.clone();
        for (name, version) in &record.resources {
            sub.known.insert(name.clone(), version.clone());
        }
        for name in &record.removed {
            sub.known.remove(name);
        }
        self.responses.push(record.clone());
        Some(record)
    }

    /// Sends the current state of `type_url` to every open stream subscribed to it.
    fn push_all(&mut self, type_url: &str) -> Vec<SentResponse> {
        if self.behavior == Behavior::Hang {
            return Vec::new();
        }
        let mut sent = Vec::new();
        for id in self.open_ids(None) {
            let Some(stream) = self.streams.get(&id) else {
                continue;
            };
            if !stream.subs.contains_key(type_url) {
                continue;
            }
            let result = match stream.mode {
                Mode::Sotw => self.respond_sotw(id, type_url),
                Mode::Delta => self.respond_delta(id, type_url, false),
            };
            sent.extend(result);
        }
        sent
    }

    fn record(&mut self, mut request: RecordedRequest) {
        request.seq = self.requests.len();
        if let Some(stream) = self.streams.get_mut(&request.stream)
            && stream.node.is_none()
        {
            stream.node.clone_from(&request.node);
        }
        self.requests.push(request);
    }

    fn on_sotw(&mut self, id: u64, req: DiscoveryRequest) {
        if !self.is_open(id) {
            return;
        }
        self.record(RecordedRequest {
            seq: 0,
            stream: id,
            mode: Mode::Sotw,
            at: Instant::now(),
            type_url: req.type_url.clone(),
            version_info: req.version_info.clone(),
            response_nonce: req.response_nonce.clone(),
            resource_names: req.resource_names.clone(),
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            initial_resource_versions: BTreeMap::new(),
            error: req.error_detail.as_ref().map(|e| ErrorDetail {
                code: e.code,
                message: e.message.clone(),
            }),
            node: req.node.clone(),
        });
        if req.error_detail.is_some() {
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let sub = stream.subs.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != sub.last_nonce {
            // Answers a response that was superseded: ignored, as the protocol says.
            return;
        }
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (req.resource_names.is_empty() && wildcard_type(&req.type_url));
        let names: BTreeSet<String> = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        let changed = wildcard != sub.wildcard || names != sub.names;
        sub.wildcard = wildcard;
        sub.names = names;
        if self.behavior == Behavior::Hang {
            return;
        }
        if req.response_nonce.is_empty() || changed {
            self.respond_sotw(id, &req.type_url);
        }
    }

    fn on_delta(&mut self, id: u64, req: DeltaDiscoveryRequest) {
        if !self.is_open(id) {
            return;
        }
        self.record(RecordedRequest {
            seq: 0,
            stream: id,
            mode: Mode::Delta,
            at: Instant::now(),
            type_url: req.type_url.clone(),
            version_info: String::new(),
            response_nonce: req.response_nonce.clone(),
            resource_names: Vec::new(),
            subscribe: req.resource_names_subscribe.clone(),
            unsubscribe: req.resource_names_unsubscribe.clone(),
            initial_resource_versions: req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            error: req.error_detail.as_ref().map(|e| ErrorDetail {
                code: e.code,
                message: e.message.clone(),
            }),
            node: req.node.clone(),
        });
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let first = !stream.subs.contains_key(&req.type_url);
        let sub = stream.subs.entry(req.type_url.clone()).or_default();
        if first {
            sub.known = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            sub.wildcard = req.resource_names_subscribe.is_empty() && wildcard_type(&req.type_url);
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
            }
            // The client forgets it; a later subscription gets it again.
            if !sub.wants(name) {
                sub.known.remove(name);
            }
        }
        let force = first && sub.wildcard;
        if self.behavior == Behavior::Hang || req.error_detail.is_some() {
            return;
        }
        self.respond_delta(id, &req.type_url, force);
    }

    fn close(&mut self, id: u64) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.tx = None;
        }
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "----- xDS server state -----");
        for (type_url, t) in &self.types {
            let _ = writeln!(
                out,
                "{} version {:?}: {:?}",
                short(type_url),
                t.version,
                t.resources.keys().collect::<Vec<_>>()
            );
        }
        for s in self.streams.values() {
            let _ = writeln!(
                out,
                "stream {} {:?} {}",
                s.id,
                s.mode,
                if s.tx.is_some() { "open" } else { "closed" }
            );
        }
        // Interleave the two logs by time would need timestamps on responses; requests and
        // responses are shown separately, each in order, the most recent 60.
        let _ = writeln!(out, "----- requests (last 60) -----");
        for r in self.requests.iter().rev().take(60).rev() {
            let _ = writeln!(out, "{}", r.describe());
        }
        let _ = writeln!(out, "----- responses (last 60) -----");
        for r in self.responses.iter().rev().take(60).rev() {
            let _ = writeln!(out, "{}", r.describe());
        }
        out
    }
}

/// The name inside an `Any` of one of the five types (empty for others).
fn resource_name(any: &Any) -> String {
    let bytes = any.value.as_slice();
    let name = match any.type_url.as_str() {
        LDS => XdsListener::decode(bytes).map(|r| r.name),
        RDS => XdsRouteConfiguration::decode(bytes).map(|r| r.name),
        CDS => XdsCluster::decode(bytes).map(|r| r.name),
        EDS => XdsClusterLoadAssignment::decode(bytes).map(|r| r.cluster_name),
        SDS => XdsSecret::decode(bytes).map(|r| r.name),
        _ => Ok(String::new()),
    };
    name.unwrap_or_default()
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, so waiters wake up.
    events: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state and wakes waiters.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.events.send_modify(|n| *n += 1);
        out
    }

    fn open(&self, mode: Mode, tx: Tx) -> Result<u64, Status> {
        self.with(|st| {
            st.attempts.push(Instant::now());
            if st.behavior == Behavior::Refuse {
                return Err(Status::unavailable("the test xDS server refuses streams"));
            }
            st.next_stream += 1;
            let id = st.next_stream;
            st.streams.insert(
                id,
                Stream {
                    id,
                    mode,
                    node: None,
                    tx: Some(tx),
                    subs: BTreeMap::new(),
                },
            );
            Ok(id)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC service

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.shared.open(Mode::Sotw, Tx::Sotw(tx))?;
        let mut incoming = request.into_inner();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                shared.with(|st| st.on_sotw(id, req));
            }
            shared.with(|st| st.close(id));
        });
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.shared.open(Mode::Delta, Tx::Delta(tx))?;
        let mut incoming = request.into_inner();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                shared.with(|st| st.on_delta(id, req));
            }
            shared.with(|st| st.close(id));
        });
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A TCP connection the server can cut at once: after `kill`, reads and writes fail, so the
/// HTTP/2 connection dies as if the server process had gone (a graceful shutdown would wait
/// for the long-lived ADS streams forever).
struct KillableIo {
    inner: TcpStream,
    killed: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableIo {
    fn new(inner: TcpStream, mut kill: watch::Receiver<bool>) -> KillableIo {
        KillableIo {
            inner,
            killed: Box::pin(async move {
                let _ = kill.wait_for(|k| *k).await;
            }),
            dead: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection cut by the test xDS server",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for KillableIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// A serving instance (one per start or restart).
struct Running {
    stop: oneshot::Sender<()>,
    kill: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn serve(shared: Arc<Shared>, listener: TcpListener) -> Running {
    let (kill, kill_rx) = watch::channel(false);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let incoming = TcpListenerStream::new(listener).map(move |conn| {
        conn.map(|stream| {
            let _ = stream.set_nodelay(true);
            KillableIo::new(stream, kill_rx.clone())
        })
    });
    let service = AggregatedDiscoveryServiceServer::new(Service { shared });
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(error) = result {
            eprintln!("test xDS server stopped with an error: {error}");
        }
    });
    Running { stop, kill, task }
}

// ---------------------------------------------------------------------------------------------
// The server handle

/// The scriptable ADS server. Dropping it stops serving.
pub struct XdsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

/// How long a `wait_*` helper waits unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

impl XdsServer {
    /// Binds `127.0.0.1:0` and starts serving, with no resources and [`Behavior::Serve`].
    pub async fn start() -> XdsServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("test xDS server cannot bind 127.0.0.1:0: {error}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("test xDS server has no local address: {error}"));
        let (events, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                types: BTreeMap::new(),
                streams: BTreeMap::new(),
                requests: Vec::new(),
                responses: Vec::new(),
                next_stream: 0,
                next_nonce: 0,
                attempts: Vec::new(),
                behavior: Behavior::Serve,
            }),
            events,
        });
        let running = serve(shared.clone(), listener);
        XdsServer {
            shared,
            addr,
            running: Mutex::new(Some(running)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as legate's `--xds-server` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_running(&self) -> bool {
        self.running().is_some()
    }

    /// Stops listening and cuts every connection (clients see the connection fail, then
    /// `connection refused`). Resources and logs are kept for [`restart`](Self::restart).
    pub async fn shutdown(&self) {
        let Some(mut running) = self.running().take() else {
            return;
        };
        let _ = running.kill.send(true);
        let _ = running.stop.send(());
        self.shared.with(|st| {
            for stream in st.streams.values_mut() {
                stream.tx = None;
            }
        });
        if tokio::time::timeout(Duration::from_secs(5), &mut running.task)
            .await
            .is_err()
        {
            running.task.abort();
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port (after [`shutdown`](Self::shutdown)).
    pub async fn restart(&self) {
        assert!(
            !self.is_running(),
            "restart: the test xDS server is running"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("test xDS server cannot bind {} again: {error}", self.addr),
            }
        };
        *self.running() = Some(serve(self.shared.clone(), listener));
    }

    /// Switches how streams are treated (see [`Behavior`]).
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.with(|st| st.behavior = behavior);
    }

    // ---- resources -----------------------------------------------------------------------

    /// Replaces every resource of `type_url`, bumps its version and pushes the change.
    pub fn set(&self, type_url: &str, resources: Vec<Resource>) -> Push {
        self.update(type_url, None, |map| {
            map.clear();
            map.extend(resources.into_iter().map(|r| (r.name.clone(), r)));
        })
    }

    /// [`set`](Self::set) with a chosen type version.
    pub fn set_versioned(&self, type_url: &str, version: &str, resources: Vec<Resource>) -> Push {
        self.update(type_url, Some(version), |map| {
            map.clear();
            map.extend(resources.into_iter().map(|r| (r.name.clone(), r)));
        })
    }

    /// Adds or replaces some resources of `type_url`, keeping the others.
    pub fn upsert(&self, type_url: &str, resources: Vec<Resource>) -> Push {
        self.update(type_url, None, |map| {
            map.extend(resources.into_iter().map(|r| (r.name.clone(), r)));
        })
    }

    /// Removes some resources of `type_url`.
    pub fn remove(&self, type_url: &str, names: &[&str]) -> Push {
        self.update(type_url, None, |map| {
            for name in names {
                map.remove(*name);
            }
        })
    }

    fn update(
        &self,
        type_url: &str,
        version: Option<&str>,
        change: impl FnOnce(&mut BTreeMap<String, Resource>),
    ) -> Push {
        self.shared.with(|st| {
            let t = st.types.entry(type_url.to_owned()).or_default();
            change(&mut t.resources);
            t.counter += 1;
            t.version = match version {
                Some(v) => v.to_owned(),
                None => format!("v{}", t.counter),
            };
            let version = t.version.clone();
            let sent = st.push_all(type_url);
            Push {
                type_url: type_url.to_owned(),
                version,
                sent,
            }
        })
    }

    /// Re-sends the current state of `type_url` (same version, fresh nonces).
    pub fn push(&self, type_url: &str) -> Push {
        self.shared.with(|st| Push {
            type_url: type_url.to_owned(),
            version: st
                .types
                .get(type_url)
                .map(|t| t.version.clone())
                .unwrap_or_default(),
            sent: st.push_all(type_url),
        })
    }

    /// Sets every type from compiled resources, in [`ALL_TYPES`] order, skipping types whose
    /// resources are unchanged (so an RDS-only change pushes only RDS). Returns the pushes.
    pub fn set_resources(&self, resources: &legate_snapshot::Resources) -> Vec<Push> {
        let mut pushes = Vec::new();
        for (type_url, list) in by_type(resources) {
            let unchanged = self.shared.with(|st| {
                st.types.get(type_url).is_some_and(|t| {
                    t.resources.len() == list.len()
                        && list.iter().all(|r| t.resources.get(&r.name) == Some(r))
                })
            });
            if !unchanged {
                pushes.push(self.set(type_url, list));
            }
        }
        pushes
    }

    /// [`set_resources`](Self::set_resources) from a mesh in legate's authoring YAML.
    pub fn set_mesh(&self, yaml: &str) -> Vec<Push> {
        self.set_resources(&mesh_resources(yaml))
    }

    /// The current version of `type_url` (`None` if never set).
    pub fn version(&self, type_url: &str) -> Option<String> {
        self.shared
            .lock()
            .types
            .get(type_url)
            .map(|t| t.version.clone())
    }

    /// The current resources of `type_url`, by name.
    pub fn resources(&self, type_url: &str) -> Vec<Resource> {
        self.shared
            .lock()
            .types
            .get(type_url)
            .map(|t| t.resources.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The current per-resource versions of `type_url`, name → version.
    pub fn resource_versions(&self, type_url: &str) -> BTreeMap<String, String> {
        self.resources(type_url)
            .into_iter()
            .map(|r| (r.name, r.version))
            .collect()
    }

    // ---- raw responses -------------------------------------------------------------------

    /// A fresh nonce, as the server would use next.
    pub fn next_nonce(&self) -> String {
        self.shared.with(State::nonce)
    }

    /// Sends `response` as is on every open SotW stream (or only stream `stream`); an empty
    /// nonce is replaced by a fresh one. The stream's latest nonce for the type becomes this
    /// one.
    pub fn send_raw_sotw(
        &self,
        stream: Option<u64>,
        response: DiscoveryResponse,
    ) -> Vec<SentResponse> {
        self.shared.with(|st| {
            let ids: Vec<u64> = st
                .open_ids(Some(Mode::Sotw))
                .into_iter()
                .filter(|id| stream.is_none_or(|s| s == *id))
                .collect();
            let mut sent = Vec::new();
            for id in ids {
                let mut response = response.clone();
                if response.nonce.is_empty() {
                    response.nonce = st.nonce();
                }
                sent.extend(st.send_sotw(id, response, true));
            }
            sent
        })
    }

    /// Sends `response` as is on every open delta stream (or only stream `stream`); an empty
    /// nonce is replaced by a fresh one.
    pub fn send_raw_delta(
        &self,
        stream: Option<u64>,
        response: DeltaDiscoveryResponse,
    ) -> Vec<SentResponse> {
        self.shared.with(|st| {
            let ids: Vec<u64> = st
                .open_ids(Some(Mode::Delta))
                .into_iter()
                .filter(|id| stream.is_none_or(|s| s == *id))
                .collect();
            let mut sent = Vec::new();
            for id in ids {
                let mut response = response.clone();
                if response.nonce.is_empty() {
                    response.nonce = st.nonce();
                }
                sent.extend(st.send_delta(id, response, true));
            }
            sent
        })
    }

    // ---- streams ---------------------------------------------------------------------------

    /// Open streams.
    pub fn connected_streams(&self) -> usize {
        self.shared.lock().open_ids(None).len()
    }

    /// Every stream so far, open or closed, in order of opening.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.shared
            .lock()
            .streams
            .values()
            .map(|s| StreamInfo {
                id: s.id,
                mode: s.mode,
                node: s.node.clone(),
                open: s.tx.is_some(),
            })
            .collect()
    }

    /// Streams the clients tried to open, refused ones included.
    pub fn stream_attempts(&self) -> usize {
        self.shared.lock().attempts.len()
    }

    /// When each stream was asked for (refused ones included), in order.
    pub fn attempt_times(&self) -> Vec<Instant> {
        self.shared.lock().attempts.clone()
    }

    /// Ends every open stream with `UNAVAILABLE` (the connections stay up). Returns how
    /// many were open.
    pub fn drop_streams(&self) -> usize {
        self.shared.with(|st| {
            let mut dropped = 0;
            for stream in st.streams.values_mut() {
                let status = || Status::unavailable("stream dropped by the test xDS server");
                match stream.tx.take() {
                    Some(Tx::Sotw(tx)) => {
                        let _ = tx.send(Err(status()));
                        dropped += 1;
                    }
                    Some(Tx::Delta(tx)) => {
                        let _ = tx.send(Err(status()));
                        dropped += 1;
                    }
                    None => {}
                }
            }
            dropped
        })
    }

    // ---- records ---------------------------------------------------------------------------

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests of `type_url`, in order.
    pub fn requests_for(&self, type_url: &str) -> Vec<RecordedRequest> {
        self.filter_requests(|r| r.type_url == type_url)
    }

    /// ACKs of `type_url` (a nonce, no error), in order.
    pub fn acks_for(&self, type_url: &str) -> Vec<RecordedRequest> {
        self.filter_requests(|r| r.type_url == type_url && r.is_ack())
    }

    /// NACKs of `type_url`, in order.
    pub fn nacks_for(&self, type_url: &str) -> Vec<RecordedRequest> {
        self.filter_requests(|r| r.type_url == type_url && r.is_nack())
    }

    fn filter_requests(&self, pred: impl Fn(&RecordedRequest) -> bool) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| pred(r))
            .cloned()
            .collect()
    }

    /// Every response so far, in order.
    pub fn responses(&self) -> Vec<SentResponse> {
        self.shared.lock().responses.clone()
    }

    /// How many requests were recorded so far: pass it to
    /// [`wait_for_request_after`](Self::wait_for_request_after) to see only later ones.
    pub fn cursor(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The server's state and recent logs, for assertion messages.
    pub fn describe(&self) -> String {
        self.shared.lock().describe()
    }

    /// Waits until `check` returns `Some`, re-checking on every server event; panics with
    /// `what` and the server's logs after `timeout`.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> T {
        let mut events = self.shared.events.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(&self.shared.lock()) {
                return value;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                panic!(
                    "test xDS server: {what}: not within {timeout:?}\n{}",
                    self.describe()
                );
            }
            let _ = tokio::time::timeout(remaining, events.changed()).await;
        }
    }

    /// The first request (from the beginning of the log) matching `pred`.
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        self.wait_for_request_after(0, timeout, what, pred).await
    }

    /// The first request at or after position `cursor` matching `pred`.
    pub async fn wait_for_request_after(
        &self,
        cursor: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        self.wait_until(timeout, what, |st| {
            st.requests.iter().skip(cursor).find(|r| pred(r)).cloned()
        })
        .await
    }

    /// The answer (ACK or NACK) to the response with `nonce` on `stream`.
    pub async fn wait_for_answer(
        &self,
        stream: u64,
        nonce: &str,
        timeout: Duration,
    ) -> RecordedRequest {
        let what = format!("an ACK or NACK of nonce {nonce:?} on stream {stream}");
        self.wait_until(timeout, &what, |st| {
            st.requests
                .iter()
                .find(|r| r.stream == stream && r.response_nonce == nonce)
                .cloned()
        })
        .await
    }

    /// Waits until every stream that got `push` ACKed it; panics on a NACK, showing its
    /// message. Returns the ACKs.
    pub async fn wait_acked(&self, push: &Push, timeout: Duration) -> Vec<RecordedRequest> {
        let mut acks = Vec::new();
        for sent in &push.sent {
            let answer = self
                .wait_for_answer(sent.stream, &sent.nonce, timeout)
                .await;
            if let Some(error) = &answer.error {
                panic!(
                    "the {} push of version {} was NACKed on stream {}: {}\n{}",
                    short(&push.type_url),
                    push.version,
                    sent.stream,
                    error.message,
                    self.describe()
                );
            }
            acks.push(answer);
        }
        acks
    }

    /// [`wait_acked`](Self::wait_acked) for several pushes, in order.
    pub async fn wait_all_acked(&self, pushes: &[Push], timeout: Duration) {
        for push in pushes {
            self.wait_acked(push, timeout).await;
        }
    }

    /// Waits until every stream that got `push` NACKed it; panics on an ACK. Returns the
    /// NACKs.
    pub async fn wait_nacked(&self, push: &Push, timeout: Duration) -> Vec<RecordedRequest> {
        let mut nacks = Vec::new();
        for sent in &push.sent {
            let answer = self
                .wait_for_answer(sent.stream, &sent.nonce, timeout)
                .await;
            assert!(
                answer.is_nack(),
                "the {} push of version {} was ACKed on stream {}, expected a NACK: {}\n{}",
                short(&push.type_url),
                push.version,
                sent.stream,
                answer.describe(),
                self.describe()
            );
            nacks.push(answer);
        }
        nacks
    }

    /// Waits until at least `n` streams are open.
    pub async fn wait_for_streams(&self, n: usize, timeout: Duration) {
        self.wait_until(timeout, &format!("{n} open stream(s)"), |st| {
            (st.open_ids(None).len() >= n).then_some(())
        })
        .await;
    }

    /// Waits until a stream newer than `after` (a stream id; 0 for any) is open, and
    /// returns its id.
    pub async fn wait_for_new_stream(&self, after: u64, timeout: Duration) -> u64 {
        self.wait_until(timeout, &format!("a stream newer than {after}"), |st| {
            st.open_ids(None).into_iter().find(|id| *id > after)
        })
        .await
    }

    /// Waits until `type_url` got a response on stream `stream` and returns the latest one.
    pub async fn wait_for_response(
        &self,
        stream: u64,
        type_url: &str,
        timeout: Duration,
    ) -> SentResponse {
        let what = format!("a {} response on stream {stream}", short(type_url));
        self.wait_until(timeout, &what, |st| {
            st.responses
                .iter()
                .rev()
                .find(|r| r.stream == stream && r.type_url == type_url)
                .cloned()
        })
        .await
    }
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        if let Some(running) = self.running().take() {
            let _ = running.kill.send(true);
            let _ = running.stop.send(());
            running.task.abort();
        }
        if std::thread::panicking() {
            eprintln!(
                "\n===== test xDS server {} =====\n{}",
                self.addr,
                self.describe()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand encoding is what prost encodes for the same nesting.
    #[test]
    fn nested_wrappers_match_prost() {
        let inner = Any {
            type_url: CDS.to_owned(),
            value: vec![0x0a, 0x01, b'c'],
        };
        let mut expected = inner.clone();
        for _ in 0..3 {
            expected = Any {
                type_url: legate_snapshot::type_url::RESOURCE_WRAPPER.to_owned(),
                value: XdsResource {
                    resource: Some(expected),
                    ..Default::default()
                }
                .encode_to_vec(),
            };
        }
        assert_eq!(nested_wrappers(&inner, 3), expected);
        // Long enough for multi-byte lengths.
        let big = nested_wrappers(&inner, 300);
        let mut any = big;
        for _ in 0..300 {
            any = XdsResource::decode(any.value.as_slice())
                .expect("decodes")
                .resource
                .expect("wraps");
        }
        assert_eq!(any, inner);
    }
}
