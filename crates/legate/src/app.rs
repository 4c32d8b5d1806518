//! Wiring: bootstrap → data plane + admin server → run until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node as XdsNode, node};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use legate_proxy::{Dataplane, DataplaneOptions};
use legate_snapshot::Snapshot;
use legate_telemetry::Registry;
use legate_xds::{ApplyError, SnapshotSink, XdsOptions};

use crate::admin::{self, AdminState};
use crate::bootstrap::{Bootstrap, Node};

/// The data plane as the xDS client's sink.
struct DataplaneSink(Arc<Dataplane>);

impl SnapshotSink for DataplaneSink {
    fn apply(
        &self,
        snapshot: Arc<Snapshot>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApplyError>> + Send + '_>> {
        Box::pin(async move { self.0.apply(snapshot).await.map_err(ApplyError::new) })
    }
}

/// The data plane's clusters as the load-report client reads them: their atomics, no lock.
struct DataplaneLoad(Arc<Dataplane>);

impl legate_xds::lrs::LoadSource for DataplaneLoad {
    fn load(&self) -> Vec<(Arc<str>, legate_proxy::LoadCounts)> {
        self.0
            .active()
            .clusters
            .iter()
            .map(|(name, cluster)| (name.clone(), cluster.load_counts()))
            .collect()
    }
}

/// Capabilities legate announces to control planes.
const CLIENT_FEATURES: &[&str] = &[
    // Accepts resources wrapped in discovery.v3.Resource in state-of-the-world responses.
    "xds.config.resource-in-sotw",
    // Load reports honour `send_all_clusters`, as Envoy announces it.
    "envoy.lrs.supports_send_all_clusters",
];

/// The node identity sent on every ADS stream.
fn node_proto(node: &Node) -> XdsNode {
    XdsNode {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        metadata: (!node.metadata.is_empty()).then(|| Struct {
            fields: node
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
        locality: node.locality.as_ref().map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }),
        user_agent_name: "legate".to_owned(),
        user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        client_features: CLIENT_FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        ..XdsNode::default()
    }
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// A started proxy.
pub struct App {
    pub dataplane: Arc<Dataplane>,
    pub admin_address: SocketAddr,
    admin_task: tokio::task::JoinHandle<()>,
    drain_time: Duration,
}

/// Start the admin server and the data plane on the bootstrap's static resources.
pub async fn build(bootstrap: Bootstrap) -> anyhow::Result<App> {
    let registry = Arc::new(Registry::new());
    let dataplane = Arc::new(Dataplane::new(
        registry.clone(),
        DataplaneOptions {
            drain_timeout: bootstrap.drain_timeout,
            retry_buffer_limit: bootstrap.retry_buffers.global,
            connection_retry_buffer_limit: bootstrap.retry_buffers.connection,
            max_connections: Some(bootstrap.max_connections),
        },
    ));
    // SIGUSR1 reopens the access log files (logrotate's postrotate), as Envoy's admin
    // `/reopen_logs` does. Installed before anything listens: SIGUSR1's default action
    // would end the process.
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot install the SIGUSR1 handler")?;
    let reopen = dataplane.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening access logs");
            reopen.reopen_access_logs();
        }
    });
    let admin_listener = admin::bind(bootstrap.admin_address)
        .await
        .with_context(|| format!("cannot bind admin address {}", bootstrap.admin_address))?;
    let admin_address = admin_listener.local_addr()?;
    let xds = match &bootstrap.xds {
        Some(x) => {
            let tls = match x.tls.clone() {
                Some(settings) => Some(
                    tokio::task::spawn_blocking(move || {
                        legate_xds::tls::TlsConnector::from_settings(&settings)
                    })
                    .await
                    .context("loading the xDS TLS files")?
                    .context("invalid xDS TLS settings")?,
                ),
                None => None,
            };
            let options = XdsOptions {
                servers: x.servers.clone(),
                tls,
                mode: x.mode,
                node: node_proto(&bootstrap.node),
                initial_fetch_timeout: x.initial_fetch_timeout,
                backoff_base: Duration::from_millis(250),
                backoff_max: x.backoff_max,
                max_message_size: x.max_message_size,
                keepalive_interval: Duration::from_secs(30),
                cache_dir: x.cache_dir.clone(),
                static_resources: bootstrap.static_resources.clone(),
            };
            tracing::info!(
                servers = ?x.servers,
                mode = x.mode.as_str(),
                tls = x.tls.is_some(),
                client_certificate = x.tls.as_ref().is_some_and(|t| t.files.identity.is_some()),
                "starting the xDS client"
            );
            if !x.lrs_servers.is_empty() {
                tracing::info!(servers = ?x.lrs_servers, "starting the load report client");
                legate_xds::lrs::start(
                    options.clone(),
                    x.lrs_servers.clone(),
                    Arc::new(DataplaneLoad(dataplane.clone())),
                );
            }
            Some(legate_xds::start(
                options,
                Arc::new(DataplaneSink(dataplane.clone())),
                &registry,
            ))
        }
        None => None,
    };
    let state = Arc::new(AdminState {
        dataplane: dataplane.clone(),
        registry,
        node: bootstrap.node.clone(),
        dump: crate::dump::StaticDump::new(&bootstrap, node_proto(&bootstrap.node), admin_address),
        xds,
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, state));
    tracing::info!(address = %admin_address, "admin server listening");

    if bootstrap.xds.is_none() {
        // A large static mesh takes as long to build as a large xDS update: off the
        // runtime's threads, as the xDS client does (the admin server already runs on them).
        let resources = bootstrap.static_resources.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            legate_snapshot::build(static_version(&resources), &resources)
        })
        .await
        .context("building the static configuration")?
        .map_err(|e| anyhow::anyhow!("invalid static resources: {e}"))?;
        dataplane
            .apply(Arc::new(snapshot))
            .await
            .context("cannot start the static configuration")?;
    }

    if let Some(path) = &bootstrap.address_file {
        legate_telemetry::cli::write_address_file(path, &[("admin", admin_address)])
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &bootstrap.admin_address_path {
        legate_telemetry::cli::write_atomically(path, admin_address.to_string().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(App {
        dataplane,
        admin_address,
        admin_task,
        drain_time: bootstrap.drain_time,
    })
}

impl App {
    /// Serve until SIGTERM or SIGINT, then drain as Envoy does and return: `/ready` answers
    /// 503 and listeners keep accepting for `drain_time` while clients are told to go
    /// (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY); then the listeners close, in-flight
    /// requests get `drain_timeout` to finish, and what is still open is closed. A second
    /// signal skips the rest of the drain window.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await?;
        tracing::info!(drain_time = ?self.drain_time, "shutting down: draining");
        self.dataplane.drain().await;
        tokio::select! {
            () = tokio::time::sleep(self.drain_time) => {}
            res = shutdown_signal() => res?,
        }
        tracing::info!("drain window over: closing listeners");
        self.dataplane.shutdown().await;
        self.admin_task.abort();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// A stable version for a static resource set: a hash of its encoding.
fn static_version(r: &legate_snapshot::Resources) -> String {
    use prost::Message;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in &r.listeners {
        l.encode_to_vec().hash(&mut h);
    }
    for x in &r.route_configs {
        x.encode_to_vec().hash(&mut h);
    }
    for x in &r.clusters {
        x.encode_to_vec().hash(&mut h);
    }
    for x in &r.load_assignments {
        x.encode_to_vec().hash(&mut h);
    }
    format!("static-{:016x}", h.finish())
}
