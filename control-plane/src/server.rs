//! The xDS v3 gRPC services: ADS (state of the world and delta) and the per-type LDS, RDS,
//! CDS, EDS and SDS services for clients that do not aggregate.
//!
//! Every stream runs as its own task with its own protocol state (`sotw` or `delta`) and
//! reads two inputs: the client's requests and the cache's watch for its node. One turn of
//! its loop takes every request already received, applies them, then answers from the latest
//! snapshot in warm order (CDS, EDS, SDS, LDS, RDS).
//!
//! Secrets: a node's snapshot holds only the secrets its own clusters and listeners name
//! (`resources`), so a request for any other secret name gets nothing for that name; the
//! stream logs it once per name. Responses go through a small channel into the
//! gRPC response body; a client that stops reading blocks only its own task, and since a
//! watch keeps only the newest snapshot, nothing queues up behind it.
//!
//! With [`NodeAuth`] set (client certificates required), the first request of every stream is
//! checked against the connection's certificate ([`identity`]) and later requests may not
//! change the node; a stream that fails is refused with `PermissionDenied`, logged and
//! recorded in the registry. Connections come from [`tls::incoming`] (TCP or TLS).
//!
//! Shutdown: when the future given to [`XdsServer::serve`] completes, the listener closes and
//! every stream is ended at once with `UNAVAILABLE` ("legate-cp is shutting down"), the code
//! gRPC defines as transient (retry with backoff): legate and Envoy keep the configuration
//! they hold and reconnect, to this server once it is back or to the next one they list.
//! Streams are not left to end on their own: a proxy's stream never does, and tonic's
//! graceful shutdown waits for every stream.

mod delta;
pub mod identity;
mod lrs;
mod sotw;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use futures_util::{FutureExt, StreamExt};
use legate_snapshot::ResourceKind;
use legate_tls::reload::Current;
use legate_tls::rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status, Streaming};

use crate::cache::SnapshotCache;
use crate::registry::{NodeRegistry, Refusal, StreamHandle, StreamMode};
use crate::resources::NodeSnapshot;
pub use identity::{DEFAULT_TRUST_DOMAIN, NodeAuth, NodeRefusal};
pub use tls::XdsPeer;

/// Responses buffered per stream beyond what HTTP/2 flow control holds. Small on purpose: a
/// stream that cannot send waits, and then answers from the newest snapshot.
const RESPONSE_BUFFER: usize = 4;

/// The identifier put in every response's `control_plane`, unless changed.
pub const DEFAULT_IDENTIFIER: &str = "legate-cp";

/// What one client may cost the server. Every limit has a flag of `legate-cp`; a client that
/// reaches one is refused with `RESOURCE_EXHAUSTED` and a message naming the limit and the
/// flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdsLimits {
    /// Open xDS streams, all services and clients together (`--xds-max-streams`).
    pub max_streams: usize,
    /// Resource names one stream may subscribe to, all types together; for delta, names the
    /// client says it holds (`initial_resource_versions`) count too
    /// (`--xds-max-names-per-stream`).
    pub max_names_per_stream: usize,
    /// Largest request accepted, in bytes: gRPC's decode limit (`--xds-max-request-size`).
    pub max_request_size: usize,
    /// Longest resource name a request may carry, in bytes (`--xds-max-name-length`).
    /// Together with `max_names_per_stream` it bounds what a delta stream's subscriptions,
    /// which grow across requests, can hold.
    pub max_name_length: usize,
}

impl Default for XdsLimits {
    /// Room for a fleet of 10,000 proxies with 10,000 clusters each: twice the streams, ten
    /// times the names an EDS client of such a configuration subscribes to, and gRPC's
    /// usual 4 MiB per request (a NACK message and 100,000 names of 40 bytes fit).
    fn default() -> Self {
        XdsLimits {
            max_streams: 20_000,
            max_names_per_stream: 100_000,
            max_request_size: 4 << 20,
            max_name_length: 4 << 10,
        }
    }
}

/// The xDS server: cheap to clone, every clone serves the same cache and registry.
#[derive(Clone, Debug)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

#[derive(Clone, Debug)]
struct Shared {
    cache: Arc<SnapshotCache>,
    registry: Arc<NodeRegistry>,
    identifier: String,
    /// Set when client certificates are required: the nodes each may speak for.
    node_auth: Option<NodeAuth>,
    limits: XdsLimits,
    /// One permit per open stream, `limits.max_streams` in all.
    streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled once the server is told to stop: every stream ends, new ones are refused.
    stopping: CancellationToken,
    /// Where load reports go, and the interval asked of every node (LRS is served only when
    /// set).
    load: Option<(Arc<crate::load_report::LoadStore>, std::time::Duration)>,
}

/// The response body of every streaming method.
pub type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

impl XdsServer {
    pub fn new(cache: Arc<SnapshotCache>, registry: Arc<NodeRegistry>) -> Self {
        Self::with_identifier(cache, registry, DEFAULT_IDENTIFIER)
    }

    /// `identifier` is sent as `control_plane.identifier` (Envoy logs it).
    pub fn with_identifier(
        cache: Arc<SnapshotCache>,
        registry: Arc<NodeRegistry>,
        identifier: impl Into<String>,
    ) -> Self {
        let limits = XdsLimits::default();
        XdsServer {
            shared: Arc::new(Shared {
                cache,
                registry,
                identifier: identifier.into(),
                node_auth: None,
                streams: Arc::new(tokio::sync::Semaphore::new(limits.max_streams)),
                limits,
                stopping: CancellationToken::new(),
                load: None,
            }),
        }
    }

    /// Serve with these limits instead of [`XdsLimits::default`].
    pub fn with_limits(self, limits: XdsLimits) -> Self {
        self.with_shared(|s| {
            s.streams = Arc::new(tokio::sync::Semaphore::new(limits.max_streams));
            s.limits = limits;
        })
    }

    /// Check every stream's node against its client certificate. Only meaningful with
    /// [`serve_tls`](Self::serve_tls) and a client CA: any other stream is refused.
    pub fn with_node_auth(self, node_auth: NodeAuth) -> Self {
        self.with_shared(|s| s.node_auth = Some(node_auth))
    }

    /// Serve Envoy's `LoadReportingService` on the same port, with the same limits and node
    /// checks as xDS: every node is asked for all its clusters every `interval`, and what it
    /// reports goes to `store`.
    pub fn with_load_reports(
        self,
        store: Arc<crate::load_report::LoadStore>,
        interval: std::time::Duration,
    ) -> Self {
        self.with_shared(|s| s.load = Some((store, interval)))
    }

    /// A server like this one with `edit` applied to a copy of its shared state (builders
    /// run before serving, so nothing holds the old state but `self`).
    fn with_shared(self, edit: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = (*self.shared).clone();
        edit(&mut shared);
        XdsServer {
            shared: Arc::new(shared),
        }
    }

    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.shared.cache
    }

    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.shared.registry
    }

    pub fn ads_service(&self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }

    pub fn lds_service(&self) -> ListenerDiscoveryServiceServer<XdsServer> {
        ListenerDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }

    pub fn rds_service(&self) -> RouteDiscoveryServiceServer<XdsServer> {
        RouteDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }

    pub fn cds_service(&self) -> ClusterDiscoveryServiceServer<XdsServer> {
        ClusterDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }

    pub fn eds_service(&self) -> EndpointDiscoveryServiceServer<XdsServer> {
        EndpointDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }

    pub fn sds_service(&self) -> SecretDiscoveryServiceServer<XdsServer> {
        SecretDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }

    /// Adds ADS and the five per-type services to a tonic server.
    pub fn add_services(&self, builder: &mut tonic::transport::Server) -> Router {
        let lrs = self.shared.load.is_some().then(|| self.lrs_service());
        builder
            .add_service(self.ads_service())
            .add_service(self.lds_service())
            .add_service(self.rds_service())
            .add_service(self.cds_service())
            .add_service(self.eds_service())
            .add_service(self.sds_service())
            .add_optional_service(lrs)
    }

    /// Serves every xDS service on `listener` until `shutdown` completes; then every stream
    /// is ended with `UNAVAILABLE`, and this returns once their connections have closed (a
    /// client that does not read its stream can hold that up: bound the wait).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let shutdown = self.ending_streams(shutdown);
        let mut builder = tonic::transport::Server::builder();
        self.add_services(&mut builder)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
            .await
    }

    /// `shutdown`, then every stream told to end: tonic's own graceful shutdown only stops
    /// accepting and waits for streams, and an xDS stream lasts as long as its client.
    fn ending_streams(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = ()> + Send {
        let stopping = self.shared.stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    }

    /// Serves every xDS service over TLS on `listener` until `shutdown` completes (and ends
    /// the streams as [`serve`](Self::serve) does). Each
    /// connection is accepted with the configuration current at that moment (see
    /// [`legate_tls::files::ServerFiles::watch`]).
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Current<Arc<ServerConfig>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = tls::incoming(listener, Some(tls), self.shared.registry.clone());
        let shutdown = self.ending_streams(shutdown);
        let mut builder = tonic::transport::Server::builder();
        self.add_services(&mut builder)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    fn spawn_sotw(
        &self,
        scope: Option<ResourceKind>,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<ResponseStream<DiscoveryResponse>, Status> {
        let protocol = sotw::Sotw::new(scope, self.control_plane());
        self.spawn(protocol, request)
    }

    fn spawn_delta(
        &self,
        scope: Option<ResourceKind>,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<ResponseStream<DeltaDiscoveryResponse>, Status> {
        let protocol = delta::Delta::new(scope, self.control_plane());
        self.spawn(protocol, request)
    }

    fn control_plane(&self) -> Option<ControlPlane> {
        Some(ControlPlane {
            identifier: self.shared.identifier.clone(),
        })
    }

    /// Whether a new stream (xDS or LRS) may start: not while stopping, and not beyond
    /// `--xds-max-streams` open at once. The permit is held by the stream's task until it
    /// ends; the peer is who opened it.
    fn admit<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, XdsPeer), Status> {
        // Between the signal and the listener's closing, and on connections still open.
        if self.shared.stopping.is_cancelled() {
            return Err(Status::unavailable(crate::SHUTTING_DOWN));
        }
        let Ok(permit) = Arc::clone(&self.shared.streams).try_acquire_owned() else {
            let max = self.shared.limits.max_streams;
            tracing::warn!(
                peer = ?request.remote_addr(),
                max_streams = max,
                "xds stream refused: the stream limit is reached (--xds-max-streams)"
            );
            return Err(Status::resource_exhausted(format!(
                "legate-cp serves at most {max} xDS streams at once (--xds-max-streams)"
            )));
        };
        // Connections from `tls::incoming` carry an `XdsPeer`; tonic's own TCP listener (plain
        // `serve`) only the socket addresses.
        let peer = request
            .extensions()
            .get::<XdsPeer>()
            .cloned()
            .unwrap_or_else(|| XdsPeer {
                remote: request.remote_addr(),
                ..XdsPeer::default()
            });
        Ok((permit, peer))
    }

    fn spawn<P: Protocol>(
        &self,
        protocol: P,
        request: Request<Streaming<P::Request>>,
    ) -> Result<ResponseStream<P::Response>, Status> {
        let (permit, peer) = self.admit(&request)?;
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            run(shared, protocol, peer, request.into_inner(), tx).await;
            drop(permit);
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// What differs between state of the world and delta; the stream loop is shared.
trait Protocol: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    const MODE: StreamMode;

    fn node(request: &Self::Request) -> Option<&Node>;

    /// The length of the longest resource name the request carries (subscriptions, and for
    /// delta the names the client says it holds).
    fn longest_name(request: &Self::Request) -> usize;

    /// Applies one request (subscription change, ACK or NACK). An error ends the stream.
    fn handle(&mut self, request: Self::Request, stream: &StreamHandle) -> Result<(), Status>;

    /// Everything that should be sent now, in warm order.
    fn respond(&mut self, snapshot: &NodeSnapshot, stream: &StreamHandle) -> Vec<Self::Response>;

    /// How many resource names the stream holds subscriptions (or, for delta, versions) for,
    /// all types together.
    fn subscribed_names(&self) -> usize;
}

/// Refuses a stream whose subscriptions grew past the limit.
fn check_names(subscribed: usize, limits: &XdsLimits) -> Result<(), Status> {
    let max = limits.max_names_per_stream;
    if subscribed > max {
        return Err(Status::resource_exhausted(format!(
            "the stream subscribes to {subscribed} resource names, more than the {max} \
             legate-cp allows per stream (--xds-max-names-per-stream)"
        )));
    }
    Ok(())
}

/// Refuses a request that carries a resource name longer than the limit.
fn check_name_length(longest: usize, limits: &XdsLimits) -> Result<(), Status> {
    let max = limits.max_name_length;
    if longest > max {
        return Err(Status::resource_exhausted(format!(
            "the request carries a resource name of {longest} bytes, longer than the {max} \
             legate-cp allows (--xds-max-name-length)"
        )));
    }
    Ok(())
}

/// Records, logs and answers a refused stream.
async fn refuse<R>(
    shared: &Shared,
    peer: &XdsPeer,
    node: &Node,
    refusal: &NodeRefusal,
    tx: &mpsc::Sender<Result<R, Status>>,
) {
    let identity = peer.certificate.as_deref().map(identity::identity_label);
    let remote = peer.remote.map(|r| r.to_string());
    // Whatever the client sent, the log line stays short.
    let (mut node_id, mut node_cluster) = (node.id.clone(), node.cluster.clone());
    crate::registry::clip(&mut node_id);
    crate::registry::clip(&mut node_cluster);
    tracing::warn!(
        peer = remote.as_deref().unwrap_or("-"),
        node.id = %node_id,
        node.cluster = %node_cluster,
        identity = identity.as_deref().unwrap_or("-"),
        reason = refusal.reason().as_str(),
        %refusal,
        "xds stream refused"
    );
    shared.registry.refused(Refusal {
        node_id,
        node_cluster,
        identity,
        peer: peer.remote,
        reason: refusal.reason(),
        message: refusal.to_string(),
    });
    let _ = tx
        .send(Err(Status::permission_denied(format!(
            "xds stream refused: {refusal}"
        ))))
        .await;
}

async fn run<P: Protocol>(
    shared: Arc<Shared>,
    mut protocol: P,
    peer: XdsPeer,
    mut requests: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    let first = tokio::select! {
        first = requests.message() => first,
        () = tx.closed() => return,
        () = shared.stopping.cancelled() => {
            let _ = tx.try_send(Err(Status::unavailable(crate::SHUTTING_DOWN)));
            return;
        }
    };
    let first = match first {
        Ok(Some(first)) => first,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(%status, "xds stream failed before its first request");
            return;
        }
    };
    let node = P::node(&first).cloned().unwrap_or_default();
    let identity = match &shared.node_auth {
        Some(auth) => match auth.check(peer.certificate.as_deref(), P::node(&first)) {
            Ok(identity) => Some(identity),
            Err(refusal) => return refuse(&shared, &peer, &node, &refusal, &tx).await,
        },
        None => None,
    };
    let stream = shared
        .registry
        .register_with_identity(&node, P::MODE, identity.clone());
    let mut snapshots = shared.cache.watch(&node);
    tracing::info!(
        node.id = %node.id,
        node.cluster = %node.cluster,
        user_agent = %node.user_agent_name,
        mode = ?P::MODE,
        stream = stream.id(),
        identity = identity.as_deref().unwrap_or("-"),
        "xds stream opened"
    );

    let mut received = vec![first];
    let mut open = true;
    let mut shown_version: Option<String> = None;
    let reason = loop {
        // Everything the client already sent is applied before answering, so a burst of
        // requests gets one answer per type, in warm order.
        while open {
            match requests.next().now_or_never() {
                Some(Some(Ok(request))) => received.push(request),
                Some(Some(Err(status))) => {
                    tracing::debug!(%status, "xds request stream failed");
                    open = false;
                }
                Some(None) => open = false,
                None => break,
            }
        }
        let mut stop = None;
        for request in received.drain(..) {
            if shared.node_auth.is_some()
                && let Err(refusal) = identity::check_unchanged(&node, P::node(&request))
            {
                stop = Some(Err(refusal));
                break;
            }
            if let Err(status) = check_name_length(P::longest_name(&request), &shared.limits)
                .and_then(|()| protocol.handle(request, &stream))
                .and_then(|()| check_names(protocol.subscribed_names(), &shared.limits))
            {
                stop = Some(Ok(status));
                break;
            }
        }
        match stop {
            None => {}
            Some(Ok(status)) => {
                let reason = format!("refused a request: {}", status.message());
                let _ = tx.send(Err(status)).await;
                break reason;
            }
            Some(Err(refusal)) => {
                refuse(&shared, &peer, &node, &refusal, &tx).await;
                break format!("refused: {refusal}");
            }
        }

        let snapshot = snapshots.borrow_and_update().clone();
        let version = snapshot.as_ref().map(|s| s.version().to_owned());
        if version != shown_version {
            stream.snapshot(version.as_deref());
            shown_version = version;
        }
        if let Some(snapshot) = snapshot {
            for response in protocol.respond(&snapshot, &stream) {
                // A client that does not read must not keep the stream from ending.
                let sent = tokio::select! {
                    sent = tx.send(Ok(response)) => sent.is_ok(),
                    () = shared.stopping.cancelled() => false,
                };
                if !sent {
                    break;
                }
            }
        }
        if !open {
            break "client closed its side".to_owned();
        }
        if tx.is_closed() {
            break "client went away".to_owned();
        }

        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => received.push(request),
                Some(Err(status)) => break format!("request stream failed: {status}"),
                None => break "client closed its side".to_owned(),
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break "snapshot cache dropped".to_owned();
                }
            }
            () = tx.closed() => break "client went away".to_owned(),
            () = shared.stopping.cancelled() => {
                // Not waiting for room: a client that does not read gets its stream reset
                // when the process exits.
                let _ = tx.try_send(Err(Status::unavailable(crate::SHUTTING_DOWN)));
                break crate::SHUTTING_DOWN.to_owned();
            }
        }
    };
    tracing::info!(node.id = %node.id, stream = stream.id(), reason, "xds stream closed");
}

/// Secret names a stream has already logged as not served; past this many it stops logging
/// each one (a client may ask for any number of names).
const UNSERVED_LOGGED: usize = 256;

/// Logs, once per name and stream, each secret a client subscribes to that its node's snapshot
/// does not hold: the node is not entitled to it (no cluster or listener it receives names
/// it), so it gets nothing for that name.
fn log_unserved_secrets<'a>(
    requested: impl IntoIterator<Item = &'a String>,
    snapshot: &NodeSnapshot,
    stream: &StreamHandle,
    logged: &mut std::collections::HashSet<String>,
) {
    let secrets = snapshot.get(ResourceKind::Secret);
    for name in requested {
        if secrets.contains(name) || logged.len() >= UNSERVED_LOGGED || logged.contains(name) {
            continue;
        }
        logged.insert(name.clone());
        let (node_id, node_cluster) = stream.node();
        tracing::warn!(
            stream = stream.id(),
            node.id = %node_id,
            node.cluster = %node_cluster,
            secret = %name,
            "not serving a secret this node is not entitled to (nothing it receives names it)"
        );
    }
}

/// Which type a request is for: `scope` is the type of a per-type service (whose requests may
/// leave `type_url` empty), `None` for ADS. `Ok(None)`: a type we do not serve, ignored.
fn resolve_kind(
    scope: Option<ResourceKind>,
    type_url: &str,
) -> Result<Option<ResourceKind>, Status> {
    match scope {
        Some(kind) if type_url.is_empty() || type_url == kind.type_url() => Ok(Some(kind)),
        Some(kind) => Err(Status::invalid_argument(format!(
            "this service serves only {}, not {type_url}",
            kind.type_url()
        ))),
        None => {
            let kind = ResourceKind::from_type_url(type_url);
            if kind.is_none() {
                tracing::warn!(
                    type_url,
                    "ignoring a request for a type legate-cp does not serve"
                );
            }
            Ok(kind)
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.spawn_sotw(None, request).map(Response::new)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.spawn_delta(None, request).map(Response::new)
    }
}

/// A per-type service: the same stream handlers, restricted to one type. The unary Fetch
/// methods are not offered: every peer we serve streams.
macro_rules! per_type_service {
    ($service:ident, $kind:expr, $stream_ty:ident, $stream:ident, $delta_ty:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $service for XdsServer {
            type $stream_ty = ResponseStream<DiscoveryResponse>;
            type $delta_ty = ResponseStream<DeltaDiscoveryResponse>;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream_ty>, Status> {
                self.spawn_sotw(Some($kind), request).map(Response::new)
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_ty>, Status> {
                self.spawn_delta(Some($kind), request).map(Response::new)
            }

            async fn $fetch(
                &self,
                _request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented(
                    "legate-cp serves xDS over streams only",
                ))
            }
        }
    };
}

per_type_service!(
    ListenerDiscoveryService,
    ResourceKind::Listener,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    ResourceKind::RouteConfiguration,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
per_type_service!(
    ClusterDiscoveryService,
    ResourceKind::Cluster,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    SecretDiscoveryService,
    ResourceKind::Secret,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);
per_type_service!(
    EndpointDiscoveryService,
    ResourceKind::ClusterLoadAssignment,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
