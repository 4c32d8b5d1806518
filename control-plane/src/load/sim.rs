//! One simulated proxy: an ADS stream that subscribes and ACKs as a real proxy does.
//!
//! Both variants subscribe to all listeners and clusters (wildcard), then to the route
//! configurations their listeners name and the assignments of their EDS clusters, following
//! those names as they change. Every response is ACKed at once (state of the world: the
//! response's `version_info` and nonce with the current names; delta: its nonce). Nothing is
//! ever NACKed: the tool measures delivery, not validation.
//!
//! A stream reports into its [`StreamStats`] slot only through atomics, so the controller can
//! read 10,000 of them without stopping any.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use legate_snapshot::ResourceKind;
use legate_snapshot::refs::{cluster_references, listener_references};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::Mode;

/// Errors kept verbatim (the rest are only counted).
const ERRORS_KEPT: usize = 10;
/// Requests queued per stream before the stream waits (ACKs are one per response).
const REQUEST_BUFFER: usize = 16;

/// What one stream has done so far; written by its task, read by the controller.
#[derive(Debug, Default)]
pub(super) struct StreamStats {
    /// ACKs sent.
    pub(super) acks: AtomicU64,
    /// When the last ACK was sent, in µs since [`Shared::epoch`].
    pub(super) last_ack_us: AtomicU64,
    /// A hash of the configuration the stream has ACKed (all four types).
    pub(super) fingerprint: AtomicU64,
    pub(super) ready: AtomicBool,
    pub(super) ended: AtomicBool,
}

/// State shared by every stream and the controller.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) epoch: Instant,
    pub(super) streams: Box<[StreamStats]>,
    /// Streams that hold a complete initial configuration.
    pub(super) ready: AtomicUsize,
    pub(super) ended: AtomicUsize,
    /// When any stream last sent an ACK, in µs since `epoch`.
    pub(super) last_ack_us: AtomicU64,
    pub(super) error_count: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    pub(super) fn new(streams: usize) -> Self {
        Shared {
            epoch: Instant::now(),
            streams: (0..streams).map(|_| StreamStats::default()).collect(),
            ready: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            last_ack_us: AtomicU64::new(0),
            error_count: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(super) fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn error(&self, error: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < ERRORS_KEPT {
            errors.push(error);
        }
    }
}

/// One simulated proxy's stream, from open to end; `permit` (bounding how many streams
/// load their initial configuration at once) is released once it is ready.
pub(super) async fn run_stream(
    mode: Mode,
    channel: Channel,
    node: Node,
    index: usize,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let mut reporter = Reporter {
        shared: &shared,
        index,
        permit: Some(permit),
    };
    let id = node.id.clone();
    let result = match mode {
        Mode::Sotw => sotw(channel, node, &mut reporter).await,
        Mode::Delta => delta(channel, node, &mut reporter).await,
    };
    let error = match result {
        Ok(()) => format!("{id}: the server ended the stream"),
        Err(error) => format!("{id}: {error}"),
    };
    shared.error(error);
    shared.streams[index].ended.store(true, Ordering::Relaxed);
    shared.ended.fetch_add(1, Ordering::Relaxed);
}

/// Writes one stream's progress into its slot.
struct Reporter<'a> {
    shared: &'a Shared,
    index: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reporter<'_> {
    fn acked(&mut self, fingerprint: u64, ready: bool) {
        let now = self.shared.now_us();
        let stats = &self.shared.streams[self.index];
        stats.fingerprint.store(fingerprint, Ordering::Relaxed);
        stats.last_ack_us.store(now, Ordering::Relaxed);
        stats.acks.fetch_add(1, Ordering::Release);
        self.shared.last_ack_us.fetch_max(now, Ordering::Relaxed);
        if ready && !stats.ready.swap(true, Ordering::Relaxed) {
            self.shared.ready.fetch_add(1, Ordering::Relaxed);
            self.permit = None;
        }
    }
}

/// The kind a response is for, or an error for one the tool never asks for (the load meshes
/// carry no TLS, so a simulated proxy subscribes to no secrets).
fn kind_of(type_url: &str) -> Result<ResourceKind, String> {
    ResourceKind::from_type_url(type_url)
        .filter(|kind| *kind != ResourceKind::Secret)
        .ok_or_else(|| format!("response for a type never requested: {type_url}"))
}

/// The assignment an EDS cluster loads; `None` for other cluster types.
fn eds_name(any: &Any) -> Result<Option<String>, String> {
    let cluster = XdsCluster::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode a cluster: {e}"))?;
    Ok(cluster_references(&cluster).load_assignment)
}

/// The route configurations a listener's HTTP connection managers load by RDS.
fn rds_names(any: &Any) -> Result<Vec<String>, String> {
    let listener = XdsListener::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode a listener: {e}"))?;
    Ok(listener_references(&listener).route_configs)
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The request half of a stream (state of the world or delta requests).
struct Requests<T>(mpsc::Sender<T>);

impl<T> Requests<T> {
    fn open() -> (Self, ReceiverStream<T>) {
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        (Requests(tx), ReceiverStream::new(rx))
    }

    async fn send(&self, request: T) -> Result<(), String> {
        self.0
            .send(request)
            .await
            .map_err(|_| "the request stream closed".to_owned())
    }

    /// The first requests, as Envoy sends them: clusters then listeners, both wildcards,
    /// the node on the first only. Returns the kinds now awaiting an answer.
    async fn subscribe_wildcards(
        &self,
        node: &Node,
        request: impl Fn(Option<Node>, String) -> T,
    ) -> Result<[ResourceKind; 2], String> {
        let first = [ResourceKind::Cluster, ResourceKind::Listener];
        for kind in first {
            let node = (kind == ResourceKind::Cluster).then(|| node.clone());
            self.send(request(node, kind.type_url().to_owned())).await?;
        }
        Ok(first)
    }
}

// ---------------------------------------------------------------------------------------------
// State of the world

#[derive(Debug, Default)]
struct SotwType {
    /// Last response received: what the next request for the type carries.
    version: String,
    nonce: String,
    /// Subscribed names (RDS and EDS; LDS and CDS are wildcards).
    names: BTreeSet<String>,
    acked_version: String,
    acked: bool,
    /// A subscription was sent and not answered yet.
    awaiting: bool,
}

async fn sotw(channel: Channel, node: Node, reporter: &mut Reporter<'_>) -> Result<(), String> {
    let (requests, rx) = Requests::open();
    let send = |request| requests.send(request);
    let mut types: [SotwType; 5] = Default::default();
    for kind in requests
        .subscribe_wildcards(&node, |node, type_url| DiscoveryRequest {
            node,
            type_url,
            ..Default::default()
        })
        .await?
    {
        types[kind.index()].awaiting = true;
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut responses = client
        .stream_aggregated_resources(rx)
        .await
        .map_err(|s| format!("cannot open the stream: {}", s.message()))?
        .into_inner();

    while let Some(response) = responses
        .message()
        .await
        .map_err(|s| format!("stream failed: {} {}", s.code(), s.message()))?
    {
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = response;
        let kind = kind_of(&type_url)?;
        let i = kind.index();
        // Names the dependent type should now follow.
        let dependent = match kind {
            ResourceKind::Cluster => {
                let mut names = BTreeSet::new();
                for any in &resources {
                    names.extend(eds_name(any)?);
                }
                Some((ResourceKind::ClusterLoadAssignment, names))
            }
            ResourceKind::Listener => {
                let mut names = BTreeSet::new();
                for any in &resources {
                    names.extend(rds_names(any)?);
                }
                Some((ResourceKind::RouteConfiguration, names))
            }
            _ => None,
        };
        let state = &mut types[i];
        state.version.clone_from(&version_info);
        state.nonce.clone_from(&nonce);
        send(DiscoveryRequest {
            version_info: version_info.clone(),
            response_nonce: nonce,
            type_url: type_url.clone(),
            resource_names: state.names.iter().cloned().collect(),
            ..Default::default()
        })
        .await?;
        state.acked_version = version_info;
        state.acked = true;
        state.awaiting = false;

        if let Some((dependent, names)) = dependent
            && names != types[dependent.index()].names
        {
            let dep = &mut types[dependent.index()];
            dep.names = names;
            // An empty list after names unsubscribes; the server answers it with nothing.
            dep.awaiting = !dep.names.is_empty();
            send(DiscoveryRequest {
                version_info: dep.version.clone(),
                response_nonce: dep.nonce.clone(),
                type_url: dependent.type_url().to_owned(),
                resource_names: dep.names.iter().cloned().collect(),
                ..Default::default()
            })
            .await?;
        }

        let ready = types[ResourceKind::Cluster.index()].acked
            && types[ResourceKind::Listener.index()].acked
            && types.iter().all(|t| !t.awaiting);
        let acked: Vec<&str> = types.iter().map(|t| t.acked_version.as_str()).collect();
        reporter.acked(fingerprint(&acked), ready);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Delta

#[derive(Debug, Default)]
struct DeltaType {
    /// Name → version the client holds.
    held: BTreeMap<String, String>,
    /// Subscribed names (RDS and EDS; LDS and CDS are wildcards).
    names: BTreeSet<String>,
    acked: bool,
    awaiting: bool,
}

async fn delta(channel: Channel, node: Node, reporter: &mut Reporter<'_>) -> Result<(), String> {
    let (requests, rx) = Requests::open();
    let send = |request| requests.send(request);
    let mut types: [DeltaType; 5] = Default::default();
    for kind in requests
        .subscribe_wildcards(&node, |node, type_url| DeltaDiscoveryRequest {
            node,
            type_url,
            ..Default::default()
        })
        .await?
    {
        types[kind.index()].awaiting = true;
    }
    // Cluster → assignment name (EDS clusters only); listener → route configuration names.
    let mut eds_of_cluster: BTreeMap<String, String> = BTreeMap::new();
    let mut rds_of_listener: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut responses = client
        .delta_aggregated_resources(rx)
        .await
        .map_err(|s| format!("cannot open the stream: {}", s.message()))?
        .into_inner();

    while let Some(response) = responses
        .message()
        .await
        .map_err(|s| format!("stream failed: {} {}", s.code(), s.message()))?
    {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            ..
        } = response;
        let kind = kind_of(&type_url)?;
        let i = kind.index();
        for resource in resources {
            let any = resource.resource.unwrap_or_default();
            match kind {
                ResourceKind::Cluster => match eds_name(&any)? {
                    Some(eds) => drop(eds_of_cluster.insert(resource.name.clone(), eds)),
                    None => drop(eds_of_cluster.remove(&resource.name)),
                },
                ResourceKind::Listener => {
                    drop(rds_of_listener.insert(resource.name.clone(), rds_names(&any)?))
                }
                _ => {}
            }
            types[i].held.insert(resource.name, resource.version);
        }
        for name in &removed_resources {
            types[i].held.remove(name);
            match kind {
                ResourceKind::Cluster => drop(eds_of_cluster.remove(name)),
                ResourceKind::Listener => drop(rds_of_listener.remove(name)),
                _ => {}
            }
        }
        send(DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            ..Default::default()
        })
        .await?;
        types[i].acked = true;
        types[i].awaiting = false;

        let dependent = match kind {
            ResourceKind::Cluster => Some((
                ResourceKind::ClusterLoadAssignment,
                eds_of_cluster.values().cloned().collect(),
            )),
            ResourceKind::Listener => Some((
                ResourceKind::RouteConfiguration,
                rds_of_listener.values().flatten().cloned().collect(),
            )),
            _ => None,
        };
        if let Some((dependent, wanted)) = dependent {
            let wanted: BTreeSet<String> = wanted;
            let dep = &mut types[dependent.index()];
            let subscribe: Vec<String> = wanted.difference(&dep.names).cloned().collect();
            let unsubscribe: Vec<String> = dep.names.difference(&wanted).cloned().collect();
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                for name in &unsubscribe {
                    dep.held.remove(name);
                }
                dep.names = wanted;
                dep.awaiting = !subscribe.is_empty();
                send(DeltaDiscoveryRequest {
                    type_url: dependent.type_url().to_owned(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                })
                .await?;
            }
        }

        let ready = types[ResourceKind::Cluster.index()].acked
            && types[ResourceKind::Listener.index()].acked
            && types.iter().all(|t| !t.awaiting);
        let held: Vec<&BTreeMap<String, String>> = types.iter().map(|t| &t.held).collect();
        reporter.acked(fingerprint(&held), ready);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager as XdsHttpConnectionManager, Rds,
        http_connection_manager::RouteSpecifier,
    };
    use legate_snapshot::type_url;

    fn any<M: Message>(type_url: &str, message: &M) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value: message.encode_to_vec(),
        }
    }

    #[test]
    fn eds_names_of_clusters() {
        let check = |cluster: XdsCluster, expected: Option<&str>| {
            let got = eds_name(&any(type_url::CLUSTER, &cluster)).expect("decodes");
            assert_eq!(got.as_deref(), expected, "{cluster:?}");
        };
        let eds = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        check(
            XdsCluster {
                name: "a".into(),
                cluster_discovery_type: eds.clone(),
                ..Default::default()
            },
            Some("a"),
        );
        check(
            XdsCluster {
                name: "a".into(),
                cluster_discovery_type: eds,
                eds_cluster_config: Some(EdsClusterConfig {
                    service_name: "a-eds".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Some("a-eds"),
        );
        check(
            XdsCluster {
                name: "dns".into(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                    DiscoveryType::StrictDns as i32,
                )),
                ..Default::default()
            },
            None,
        );
    }

    #[test]
    fn rds_names_of_a_listener() {
        let hcm = XdsHttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "routes".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let listener = XdsListener {
            name: "outbound".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "hcm".into(),
                    config_type: Some(ConfigType::TypedConfig(any(
                        type_url::HTTP_CONNECTION_MANAGER,
                        &hcm,
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let names = rds_names(&any(type_url::LISTENER, &listener)).expect("decodes");
        assert_eq!(names, vec!["routes".to_owned()]);
    }
}
