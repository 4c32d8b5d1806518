//! A real legate-cp xDS server on 127.0.0.1:0 and tonic clients speaking to it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource, Node};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use legate_cp::registry::{NodeRegistry, NodeStatus, TypeStatus};
use legate_cp::{NodeSnapshot, SnapshotCache, XdsServer};
use legate_snapshot::{Resources, type_url};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

pub const LDS: &str = type_url::LISTENER;
pub const RDS: &str = type_url::ROUTE_CONFIGURATION;
pub const CDS: &str = type_url::CLUSTER;
pub const EDS: &str = type_url::CLUSTER_LOAD_ASSIGNMENT;
pub const SDS: &str = type_url::SECRET;

/// How long "nothing more arrives" is watched for.
pub const SILENCE: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    pub cache: Arc<SnapshotCache>,
    pub registry: Arc<NodeRegistry>,
    _shutdown: oneshot::Sender<()>,
}

pub async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("has an address");
    let cache = Arc::new(SnapshotCache::new());
    let registry = Arc::new(NodeRegistry::new());
    let server = XdsServer::new(cache.clone(), registry.clone());
    let (shutdown, stop) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async {
            let _ = stop.await;
        };
        server.serve(listener, stop).await.expect("serves");
    });
    Server {
        addr,
        cache,
        registry,
        _shutdown: shutdown,
    }
}

impl Server {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("connects")
    }

    pub async fn sotw(&self, node: Node) -> SotwClient {
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel().await);
        let (tx, rx) = mpsc::channel(16);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("opens a stream")
            .into_inner();
        SotwClient {
            node: Some(node),
            tx,
            responses,
        }
    }

    pub async fn delta(&self, node: Node) -> DeltaClient {
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel().await);
        let (tx, rx) = mpsc::channel(16);
        let responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("opens a stream")
            .into_inner();
        DeltaClient {
            node: Some(node),
            tx,
            responses,
        }
    }

    /// Waits until `check` holds for the registry's view.
    pub async fn until(&self, what: &str, check: impl Fn(&[NodeStatus]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if check(&self.registry.nodes()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}; registry: {:#?}",
                self.registry.nodes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The status of `type_url` on the only stream of node `id`.
pub fn type_status<'a>(
    nodes: &'a [NodeStatus],
    id: &str,
    type_url: &str,
) -> Option<&'a TypeStatus> {
    nodes
        .iter()
        .find(|n| n.id == id)?
        .streams
        .first()?
        .types
        .iter()
        .find(|t| t.type_url == type_url)
}

pub fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: cluster.to_owned(),
        user_agent_name: "legate-cp-tests".to_owned(),
        ..Default::default()
    }
}

pub struct SotwClient {
    /// Sent with the first request only, as Envoy does.
    node: Option<Node>,
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub responses: Streaming<DiscoveryResponse>,
}

impl SotwClient {
    pub async fn send(&mut self, mut request: DiscoveryRequest) {
        request.node = self.node.take();
        self.tx.send(request).await.expect("stream open");
    }

    /// A first request (or a re-subscription): empty nonce.
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(request(type_url, names, "", "")).await;
    }

    pub async fn ack(&mut self, response: &DiscoveryResponse, names: &[&str]) {
        let req = request(
            &response.type_url,
            names,
            &response.version_info,
            &response.nonce,
        );
        self.send(req).await;
    }

    pub async fn nack(&mut self, response: &DiscoveryResponse, names: &[&str], accepted: &str) {
        let mut req = request(&response.type_url, names, accepted, &response.nonce);
        req.error_detail = Some(RpcStatus {
            code: 13,
            message: "listener 'x': something is wrong".to_owned(),
            details: vec![],
        });
        self.send(req).await;
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(PATIENCE, self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn expect_silence(&mut self) {
        if let Ok(message) = tokio::time::timeout(SILENCE, self.responses.message()).await {
            panic!(
                "expected no response, got {:?}",
                message.map(|m| m.map(|r| summary(&r)))
            );
        }
    }
}

pub fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// (type URL, names of the resources) of a response, for readable assertions.
pub fn summary(response: &DiscoveryResponse) -> (String, Vec<String>) {
    let names = response.resources.iter().map(resource_name).collect();
    (short(&response.type_url), names)
}

pub fn short(type_url: &str) -> String {
    match type_url {
        LDS => "lds",
        RDS => "rds",
        CDS => "cds",
        EDS => "eds",
        SDS => "sds",
        other => other,
    }
    .to_owned()
}

pub fn resource_name(any: &Any) -> String {
    match any.type_url.as_str() {
        LDS => {
            Listener::decode(any.value.as_slice())
                .expect("listener")
                .name
        }
        RDS => {
            RouteConfiguration::decode(any.value.as_slice())
                .expect("route")
                .name
        }
        CDS => Cluster::decode(any.value.as_slice()).expect("cluster").name,
        EDS => {
            ClusterLoadAssignment::decode(any.value.as_slice())
                .expect("cla")
                .cluster_name
        }
        SDS => {
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                any.value.as_slice(),
            )
            .expect("secret")
            .name
        }
        other => panic!("unexpected type {other}"),
    }
}

pub struct DeltaClient {
    node: Option<Node>,
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub responses: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        request.node = self.node.take();
        self.tx.send(request).await.expect("stream open");
    }

    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn unsubscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_unsubscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: "cluster 'a': bad".to_owned(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(PATIENCE, self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn expect_silence(&mut self) {
        if let Ok(message) = tokio::time::timeout(SILENCE, self.responses.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// (type, sent names, removed names) of a delta response.
pub fn delta_summary(response: &DeltaDiscoveryResponse) -> (String, Vec<String>, Vec<String>) {
    let names = response.resources.iter().map(|r| r.name.clone()).collect();
    (
        short(&response.type_url),
        names,
        response.removed_resources.clone(),
    )
}

// ---- resources ----

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: 2, // V3
        ..Default::default()
    }
}

pub fn cluster(name: &str, timeout_seconds: i64) -> Cluster {
    Cluster {
        name: name.to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: timeout_seconds,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

pub fn assignment(name: &str, hosts: usize, port_tag: u32) -> ClusterLoadAssignment {
    let endpoint = |i: usize| LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            hostname: format!("{name}-{port_tag}-host-{i:06}.example.internal"),
            ..Default::default()
        })),
        ..Default::default()
    };
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: (0..hosts).map(endpoint).collect(),
            load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: 1,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn listener(name: &str, route_config: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(ConfigType::TypedConfig(Any {
                    type_url: type_url::HTTP_CONNECTION_MANAGER.to_owned(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route(name: &str, domain: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".to_owned(),
            domains: vec![domain.to_owned()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A small mesh: clusters `a` and `b` with their assignments, listener `l1` → routes `r1`.
/// `generation` changes every cluster's connect timeout (not the assignments).
pub fn base(generation: i64) -> Resources {
    Resources {
        listeners: vec![listener("l1", "r1")],
        route_configs: vec![route("r1", "*")],
        clusters: vec![cluster("a", generation), cluster("b", generation)],
        load_assignments: vec![assignment("a", 1, 1), assignment("b", 1, 1)],
        secrets: Vec::new(),
    }
}

pub fn snapshot(resources: &Resources) -> Arc<NodeSnapshot> {
    Arc::new(NodeSnapshot::from_resources(resources))
}
