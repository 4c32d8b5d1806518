//! The `legate-cp` program: mesh files (watched) plus persisted admin changes → compiled
//! snapshots in the cache → xDS streams; and the admin API over gRPC and JSON.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use legate_model::{Mesh, Service};
use legate_proto::admin::admin_server::Admin;
use legate_proto::admin::{
    ApplyRequest, ApplyResponse, GetNodeRequest, GetNodeResponse, ListNodesRequest,
    ListNodesResponse, Nack as PbNack, NodeStatus as PbNodeStatus, Refusal as PbRefusal,
    RefusalCount as PbRefusalCount, Resource as PbResource, SetWeightsRequest,
    TypeStatus as PbTypeStatus,
};
use tonic::{Request, Response, Status};

use crate::secrets::SecretFiles;
use crate::store::{self, Overlay, StoreError};
use crate::{NodeKey, NodeRegistry, NodeSnapshot, SnapshotCache};

/// Why a weight change was refused.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("unknown service '{0}'")]
    UnknownService(String),
    /// The weights do not fit the service, or the result does not validate.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for WeightsError {
    fn from(message: String) -> Self {
        WeightsError::Invalid(message)
    }
}

/// How `legate-cp` runs.
#[derive(Clone, Debug)]
pub struct CpOptions {
    /// A mesh file or a directory of them.
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// Nodes in this cluster are gRPC xDS clients and get API listeners per service.
    pub grpc_cluster: String,
    /// How often mesh files are checked for changes.
    pub watch_interval: Duration,
}

struct State {
    base: Mesh,
    overlay: Overlay,
    effective: Mesh,
    files: Vec<(String, SystemTime, u64)>,
    /// The certificate files' fingerprint of the last publish (rotation republishes).
    secrets: [u8; 32],
}

/// The control plane's configuration side.
pub struct ControlPlane {
    pub cache: Arc<SnapshotCache>,
    pub registry: Arc<NodeRegistry>,
    options: CpOptions,
    state: Mutex<State>,
}

fn signature(files: &[(String, String)]) -> Vec<(String, SystemTime, u64)> {
    files
        .iter()
        .map(|(name, text)| {
            let modified = std::fs::metadata(name)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (name.clone(), modified, text.len() as u64)
        })
        .collect()
}

impl ControlPlane {
    /// Load mesh files and persisted changes, and publish the first snapshots. A bad file
    /// here is fatal (there is no last good configuration yet).
    pub fn load(options: CpOptions) -> Result<Arc<Self>, StoreError> {
        let files = store::read_mesh_files(&options.config)?;
        let base = store::load_mesh(&files)?;
        let overlay = store::load_overlay(&options.data_dir)?;
        let effective = store::effective(&base, &overlay)?;
        let secrets = SecretFiles::read(&effective, &crate::secrets::base_dir(&options.config))
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let cp = Arc::new(ControlPlane {
            cache: Arc::new(SnapshotCache::new()),
            registry: Arc::new(NodeRegistry::new()),
            state: Mutex::new(State {
                base,
                overlay,
                effective: effective.clone(),
                files: signature(&files),
                secrets: secrets.fingerprint(),
            }),
            options,
        });
        cp.publish(&effective, &secrets)
            .map_err(StoreError::Other)?;
        Ok(cp)
    }

    /// Read the certificate files `mesh`'s secrets name.
    fn read_secrets(&self, mesh: &Mesh) -> Result<SecretFiles, String> {
        SecretFiles::read(mesh, &crate::secrets::base_dir(&self.options.config))
            .map_err(|e| e.to_string())
    }

    /// The proxy resources of `mesh` for the nodes of `node_cluster` (`None`: nodes no TLS
    /// rule selects), with the secrets' contents in place, checked with legate's own
    /// validation.
    fn proxy_resources(
        mesh: &Mesh,
        node_cluster: Option<&str>,
        secrets: &SecretFiles,
    ) -> Result<legate_snapshot::Resources, String> {
        let mut resources = match node_cluster {
            Some(nc) => legate_model::compile_for_node_cluster(mesh, nc),
            None => legate_model::compile(mesh),
        };
        secrets
            .inline(&mut resources.secrets)
            .map_err(|e| e.to_string())?;
        legate_snapshot::build("candidate", &resources).map_err(|e| e.to_string())?;
        Ok(resources)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Compile `mesh` for proxies (default, and one snapshot per node cluster that a TLS
    /// client certificate rule names) and for gRPC clients (their cluster), checking the
    /// proxy resources with legate's own validation first. All selectors change at once.
    fn publish(&self, mesh: &Mesh, secrets: &SecretFiles) -> Result<(), String> {
        let grpc_cluster = &self.options.grpc_cluster;
        let node_clusters = mesh.client_certificate_node_clusters();
        if node_clusters.contains(grpc_cluster) {
            return Err(format!(
                "node cluster '{grpc_cluster}' is for gRPC clients, which are not served TLS \
                 services: it cannot have a client certificate rule"
            ));
        }
        let default = NodeSnapshot::from_resources(&Self::proxy_resources(mesh, None, secrets)?);
        let mut by_cluster = Vec::with_capacity(node_clusters.len());
        for nc in node_clusters {
            let resources = Self::proxy_resources(mesh, Some(&nc), secrets)?;
            by_cluster.push((nc, NodeSnapshot::from_resources(&resources)));
        }
        let grpc = NodeSnapshot::from_resources(&legate_model::compile_for_grpc(mesh));
        self.cache.update(|s| {
            // Node clusters a rule named before and no longer does fall back to the default.
            s.by_cluster.retain(|nc, _| nc == grpc_cluster);
            s.set(NodeKey::Default, Arc::new(default));
            s.set(NodeKey::Cluster(grpc_cluster.clone()), Arc::new(grpc));
            for (nc, snapshot) in by_cluster {
                s.set(NodeKey::Cluster(nc), Arc::new(snapshot));
            }
        });
        Ok(())
    }

    /// Poll the mesh files; a valid change is published, an invalid one is logged with
    /// file, line and column and the last good configuration stays.
    pub async fn watch_files(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.options.watch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            let files = match store::read_mesh_files(&self.options.config) {
                Ok(f) => f,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        tracing::error!(error = %msg, "cannot read mesh files; keeping the last good configuration");
                        last_error = Some(msg);
                    }
                    continue;
                }
            };
            let sig = signature(&files);
            if sig == self.state().files {
                self.watch_secrets(&mut last_error);
                continue;
            }
            let result = store::load_mesh(&files).and_then(|base| {
                let overlay = self.state().overlay.clone();
                let effective = store::effective(&base, &overlay)?;
                let secrets = self.read_secrets(&effective).map_err(StoreError::Other)?;
                self.publish(&effective, &secrets)
                    .map_err(StoreError::Other)?;
                Ok((base, effective, secrets.fingerprint()))
            });
            let mut st = self.state();
            st.files = sig;
            match result {
                Ok((base, effective, secrets)) => {
                    st.base = base;
                    st.effective = effective;
                    st.secrets = secrets;
                    last_error = None;
                    tracing::info!("mesh files changed: new configuration pushed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "mesh files refused; keeping the last good configuration");
                    last_error = Some(e.to_string());
                }
            }
        }
    }

    /// Re-read the certificate files of the effective mesh; when their contents changed
    /// (rotation), publish again. Files that do not check out (a pair caught half-written)
    /// leave the last good ones served, and are tried again on the next tick.
    fn watch_secrets(&self, last_error: &mut Option<String>) {
        let effective = self.state().effective.clone();
        if effective.secrets.is_empty() {
            return;
        }
        let base = crate::secrets::base_dir(&self.options.config);
        let result = SecretFiles::read_unchecked(&effective, &base)
            .map_err(|e| e.to_string())
            .and_then(|secrets| {
                if secrets.fingerprint() == self.state().secrets {
                    return Ok(false);
                }
                secrets.check(&effective).map_err(|e| e.to_string())?;
                self.publish(&effective, &secrets)?;
                self.state().secrets = secrets.fingerprint();
                Ok(true)
            });
        match result {
            Ok(changed) => {
                if changed {
                    tracing::info!("certificate files changed: new secrets pushed");
                }
                *last_error = None;
            }
            Err(e) => {
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(error = %e, "certificate files not applied; keeping the last good ones");
                    *last_error = Some(e);
                }
            }
        }
    }

    /// Validate `change` on a copy of the effective mesh, persist, publish. On error nothing
    /// changes.
    /// The closure's own error type is kept (a weight change tells an unknown service from
    /// an invalid result); failures after it are messages.
    fn change<E: From<String>>(
        &self,
        change: impl FnOnce(&mut Mesh, &mut Overlay) -> Result<Vec<String>, E>,
    ) -> Result<(u64, Vec<String>), E> {
        let mut st = self.state();
        let mut overlay = st.overlay.clone();
        let mut mesh = st.effective.clone();
        let changes = change(&mut mesh, &mut overlay)?;
        let effective = store::effective(&st.base, &overlay).map_err(|e| e.to_string())?;
        // Check it compiles and validates before persisting anything.
        let secrets = self.read_secrets(&effective)?;
        Self::proxy_resources(&effective, None, &secrets)?;
        overlay.generation += 1;
        store::save_overlay(&self.options.data_dir, &overlay).map_err(|e| e.to_string())?;
        self.publish(&effective, &secrets)?;
        st.overlay = overlay;
        st.effective = effective;
        st.secrets = secrets.fingerprint();
        Ok((st.overlay.generation, changes))
    }

    /// Insert or replace the services of a mesh document.
    pub fn apply(&self, document: &str, source: &str) -> Result<(u64, Vec<String>), String> {
        let doc: Mesh = legate_model::parse_yaml(document, source).map_err(|e| e.to_string())?;
        if doc.services.is_empty() {
            return Err(format!("{source}: no services to apply"));
        }
        if !doc.listeners.is_empty() || !doc.clusters.is_empty() || !doc.route_configs.is_empty() {
            return Err(format!(
                "{source}: only services can be applied through the admin API; edit mesh files for listeners, routes and clusters"
            ));
        }
        self.change(|mesh, overlay| {
            let mut changes = Vec::new();
            for svc in doc.services {
                let existed = mesh.services.iter().any(|s| s.name == svc.name);
                legate_model::apply_service(mesh, svc.clone()).map_err(|ps| {
                    ps.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })?;
                changes.push(format!(
                    "service {} {}",
                    svc.name,
                    if existed { "updated" } else { "created" }
                ));
                overlay.services.insert(svc.name.clone(), svc);
            }
            Ok(changes)
        })
    }

    /// Set a service's version weights.
    pub fn set_weights(
        &self,
        service: &str,
        weights: &[(String, u32)],
    ) -> Result<(u64, Vec<String>), WeightsError> {
        let known = self
            .state()
            .effective
            .services
            .iter()
            .any(|s| s.name == service);
        if !known {
            return Err(WeightsError::UnknownService(service.to_owned()));
        }
        self.change(|mesh, overlay| {
            legate_model::set_weights(mesh, service, weights)
                .map_err(|p| WeightsError::Invalid(p.to_string()))?;
            let svc: Service = mesh
                .services
                .iter()
                .find(|s| s.name == service)
                .cloned()
                .ok_or_else(|| WeightsError::UnknownService(service.to_owned()))?;
            let desc: Vec<String> = weights.iter().map(|(v, w)| format!("{v}={w}")).collect();
            overlay.services.insert(service.to_owned(), svc);
            Ok(vec![format!(
                "service {service} weights {}",
                desc.join(" ")
            )])
        })
    }

    /// The resources a node (id, cluster) is served.
    pub fn node_resources(&self, id: &str, cluster: &str) -> Option<Vec<PbResource>> {
        let node = envoy_types::pb::envoy::config::core::v3::Node {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            ..Default::default()
        };
        let snapshot = self.cache.snapshot_for(&node)?;
        let mut out = Vec::new();
        for kind in legate_snapshot::ResourceKind::WARM_ORDER {
            for (name, r) in snapshot.get(kind).iter() {
                out.push(PbResource {
                    type_url: kind.type_url().to_owned(),
                    name: name.to_owned(),
                    version: r.version.clone(),
                    json: render(kind, &r.any),
                });
            }
        }
        Some(out)
    }

    pub fn nodes(&self) -> Vec<PbNodeStatus> {
        self.registry
            .nodes()
            .into_iter()
            .map(|n| {
                let newest = n.streams.iter().max_by_key(|s| s.connected_since_unix_ms);
                PbNodeStatus {
                    id: n.id.clone(),
                    cluster: n.cluster.clone(),
                    user_agent: newest
                        .map(|s| s.user_agent_name.clone())
                        .unwrap_or_default(),
                    streams: u32::try_from(n.streams.len()).unwrap_or(u32::MAX),
                    mode: newest
                        .map(|s| match s.mode {
                            crate::StreamMode::Sotw => "sotw",
                            crate::StreamMode::Delta => "delta",
                        })
                        .unwrap_or_default()
                        .to_owned(),
                    connected_since_unix_ms: newest
                        .map(|s| i64::try_from(s.connected_since_unix_ms).unwrap_or(i64::MAX))
                        .unwrap_or(0),
                    identity: newest.and_then(|s| s.identity.clone()).unwrap_or_default(),
                    types: newest
                        .map(|s| {
                            s.types
                                .iter()
                                .map(|t| PbTypeStatus {
                                    type_url: t.type_url.clone(),
                                    sent_version: t.sent_version.clone().unwrap_or_default(),
                                    acked_version: t.acked_version.clone().unwrap_or_default(),
                                    acked_at_unix_ms: t
                                        .acked_at_unix_ms
                                        .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                                    last_nack: t.last_nack.as_ref().map(|k| PbNack {
                                        version: k.version.clone(),
                                        message: k.message.clone(),
                                        at_unix_ms: i64::try_from(k.at_unix_ms).unwrap_or(i64::MAX),
                                    }),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }
}

impl ControlPlane {
    /// Recently refused xDS streams and handshakes (oldest first) and counts by reason.
    pub fn refusals(&self) -> (Vec<PbRefusal>, Vec<PbRefusalCount>) {
        let recent = self
            .registry
            .recent_refusals()
            .into_iter()
            .map(|e| PbRefusal {
                node_id: e.refusal.node_id,
                node_cluster: e.refusal.node_cluster,
                identity: e.refusal.identity.unwrap_or_default(),
                peer: e.refusal.peer.map(|p| p.to_string()).unwrap_or_default(),
                reason: e.refusal.reason.as_str().to_owned(),
                message: e.refusal.message,
                at_unix_ms: i64::try_from(e.at_unix_ms).unwrap_or(i64::MAX),
            })
            .collect();
        let counts = self
            .registry
            .refusal_counts()
            .into_iter()
            .map(|(reason, count)| PbRefusalCount {
                reason: reason.as_str().to_owned(),
                count,
            })
            .collect();
        (recent, counts)
    }
}

/// A readable JSON rendering: legate's validated model where it applies, else the proto's
/// debug form.
fn render(
    kind: legate_snapshot::ResourceKind,
    any: &envoy_types::pb::google::protobuf::Any,
) -> String {
    use legate_snapshot::ResourceKind;
    use prost::Message;
    let bytes = any.value.as_slice();
    let value = match kind {
        ResourceKind::Cluster => {
            envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(bytes)
                .ok()
                .and_then(|c| legate_snapshot::Cluster::try_from(&c).ok())
                .and_then(|c| serde_json::to_value(c).ok())
        }
        ResourceKind::RouteConfiguration => {
            envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(bytes)
                .ok()
                .and_then(|c| legate_snapshot::RouteConfig::try_from(&c).ok())
                .and_then(|c| serde_json::to_value(c).ok())
        }
        ResourceKind::Listener => {
            envoy_types::pb::envoy::config::listener::v3::Listener::decode(bytes)
                .ok()
                .and_then(|c| legate_snapshot::Listener::try_from(&c).ok())
                .and_then(|c| serde_json::to_value(c).ok())
        }
        ResourceKind::ClusterLoadAssignment => {
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(bytes)
                .ok()
                .and_then(|c| legate_snapshot::LoadAssignment::try_from(&c).ok())
                .and_then(|c| serde_json::to_value(c).ok())
        }
        ResourceKind::Secret => {
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(bytes)
                .ok()
                .map(|s| crate::secrets::describe(&s))
        }
    };
    value.map(|v| v.to_string()).unwrap_or_else(|| {
        serde_json::Value::String(format!("{} bytes of {}", any.value.len(), any.type_url))
            .to_string()
    })
}

/// The gRPC admin service.
#[derive(Clone)]
pub struct AdminService(pub Arc<ControlPlane>);

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let (refused, refusal_counts) = self.0.refusals();
        Ok(Response::new(ListNodesResponse {
            nodes: self.0.nodes(),
            refused,
            refusal_counts,
        }))
    }

    async fn get_node(
        &self,
        req: Request<GetNodeRequest>,
    ) -> Result<Response<GetNodeResponse>, Status> {
        let req = req.into_inner();
        if req.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id is required"));
        }
        let cluster = if req.node_cluster.is_empty() {
            self.0
                .registry
                .nodes()
                .into_iter()
                .find(|n| n.id == req.node_id)
                .map(|n| n.cluster)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "unknown node '{}': not connected (pass its cluster to see what it would get)",
                        req.node_id
                    ))
                })?
        } else {
            req.node_cluster
        };
        let resources = self
            .0
            .node_resources(&req.node_id, &cluster)
            .ok_or_else(|| {
                Status::not_found(format!("no configuration for node '{}'", req.node_id))
            })?;
        Ok(Response::new(GetNodeResponse {
            node_id: req.node_id,
            resources,
        }))
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let req = req.into_inner();
        let source = if req.source.is_empty() {
            "request".to_owned()
        } else {
            req.source
        };
        let (generation, changes) = self
            .0
            .apply(&req.document, &source)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(ApplyResponse {
            generation,
            changes,
        }))
    }

    async fn set_weights(
        &self,
        req: Request<SetWeightsRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let req = req.into_inner();
        let mut weights: Vec<(String, u32)> = req.weights.into_iter().collect();
        weights.sort();
        let (generation, changes) =
            self.0
                .set_weights(&req.service, &weights)
                .map_err(|e| match e {
                    WeightsError::UnknownService(_) => Status::not_found(e.to_string()),
                    WeightsError::Invalid(_) => Status::invalid_argument(e.to_string()),
                })?;
        Ok(Response::new(ApplyResponse {
            generation,
            changes,
        }))
    }
}

/// Weights from `{"v1": 90, "v2": 10}`.
pub fn parse_weights(body: &[u8]) -> Result<Vec<(String, u32)>, String> {
    let map: HashMap<String, u32> = serde_json::from_slice(body)
        .map_err(|e| format!("body must be a JSON object of version to weight: {e}"))?;
    let mut w: Vec<(String, u32)> = map.into_iter().collect();
    w.sort();
    Ok(w)
}

/// Bind helper used by the binary.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
