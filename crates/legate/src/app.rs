//! Wiring: bootstrap → data plane + admin server → run until a shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use legate_proxy::{Dataplane, DataplaneOptions};
use legate_telemetry::Registry;

use crate::admin::{self, AdminState};
use crate::bootstrap::Bootstrap;

/// A started proxy.
pub struct App {
    pub dataplane: Arc<Dataplane>,
    pub admin_address: SocketAddr,
    admin_task: tokio::task::JoinHandle<()>,
}

/// Start the admin server and the data plane on the bootstrap's static resources.
pub async fn build(bootstrap: Bootstrap) -> anyhow::Result<App> {
    let registry = Arc::new(Registry::new());
    let dataplane = Arc::new(Dataplane::new(
        registry.clone(),
        DataplaneOptions {
            drain_timeout: bootstrap.drain_timeout,
        },
    ));
    let admin_listener = admin::bind(bootstrap.admin_address)
        .await
        .with_context(|| format!("cannot bind admin address {}", bootstrap.admin_address))?;
    let admin_address = admin_listener.local_addr()?;
    let state = Arc::new(AdminState {
        dataplane: dataplane.clone(),
        registry,
        node: bootstrap.node.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, state));
    tracing::info!(address = %admin_address, "admin server listening");

    let snapshot = legate_snapshot::build(
        static_version(&bootstrap.static_resources),
        &bootstrap.static_resources,
    )
    .map_err(|e| anyhow::anyhow!("invalid static resources: {e}"))?;
    dataplane
        .apply(Arc::new(snapshot))
        .await
        .context("cannot start the static configuration")?;

    if let Some(path) = &bootstrap.admin_address_path {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, admin_address.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(App {
        dataplane,
        admin_address,
        admin_task,
    })
}

impl App {
    /// Serve until SIGTERM or SIGINT, then drain and return.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await?;
        tracing::info!("shutting down: draining listeners");
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
