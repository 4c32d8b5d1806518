//! The `legate-cp` program: mesh files (watched) plus persisted admin changes → compiled
//! snapshots in the cache → xDS streams; and the admin API over gRPC and JSON.
//!
//! The configuration state (the files' mesh, the admin overlay, what was published) has one
//! owner: a thread of its own (`Owner`) that takes file changes and admin changes one at a
//! time, in the order they come, and is the only one that publishes. Admin calls send it a
//! command and await the reply; the file watcher only wakes it. So a change is always built
//! on the state the previous one left, and what is served is what is persisted.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use legate_model::{Mesh, Sources};
use legate_proto::admin::admin_server::Admin;
use legate_proto::admin::{
    AdminChange as PbChange, ApplyRequest, ApplyResponse, FieldSource as PbFieldSource,
    GetNodeRequest, GetNodeResponse, GetServiceResponse, ListNodesRequest, ListNodesResponse,
    Nack as PbNack, NodeStatus as PbNodeStatus, Refusal as PbRefusal,
    RefusalCount as PbRefusalCount, Resource as PbResource, ServiceRequest, SetWeightsRequest,
    TypeStatus as PbTypeStatus,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::etcd::{Etcd, EtcdError, SharedState, Stored, Term};
use crate::load_report::LoadStore;
use crate::metrics::{AdminOperation, CpMetrics, MeshReload};
use crate::rollout::{self, Fleet, NodeAck, Rollouts, StartRequest};
use crate::secrets::SecretFiles;
use crate::store::{self, Change, MeshFiles, Overlay, OverlayConflict, StoreError, Warning};
use crate::watch::{Settle, Verdict, Watcher};
use crate::{NodeKey, NodeRegistry, NodeSnapshot, SnapshotCache};

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("unknown service '{0}'")]
    UnknownService(String),
    /// The change does not fit the service, or the result does not validate.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but not for this service as it stands (deleting a service the files define,
    /// changing the weights of one that is rolling out).
    #[error("{0}")]
    Precondition(String),
    /// Nothing of that name (a rollout of a service that has none).
    #[error("{0}")]
    NotFound(String),
    /// The state's owner is gone (it panicked, or legate-cp is stopping).
    #[error("{STOPPED}")]
    Stopped,
    /// Another replica changed the same service at the same time (`--store etcd://`):
    /// nothing was applied.
    #[error("{0}")]
    Conflict(String),
    /// The shared store (etcd) cannot be reached: nothing was applied.
    #[error("{0}")]
    Unavailable(String),
}

const STOPPED: &str = "the control plane's state owner has stopped";

impl ChangeError {
    /// The `outcome` label of `legate_cp_admin_changes_total` for this refusal.
    pub fn outcome(&self) -> &'static str {
        match self {
            ChangeError::UnknownService(_) => "unknown_service",
            ChangeError::Invalid(_) => "invalid",
            ChangeError::Precondition(_) => "precondition",
            ChangeError::NotFound(_) => "not_found",
            ChangeError::Stopped => "stopped",
            ChangeError::Conflict(_) => "conflict",
            ChangeError::Unavailable(_) => "store_unavailable",
        }
    }
}

impl From<String> for ChangeError {
    fn from(message: String) -> Self {
        ChangeError::Invalid(message)
    }
}

impl From<ChangeError> for Status {
    fn from(e: ChangeError) -> Status {
        match e {
            ChangeError::UnknownService(_) | ChangeError::NotFound(_) => {
                Status::not_found(e.to_string())
            }
            ChangeError::Invalid(_) => Status::invalid_argument(e.to_string()),
            ChangeError::Precondition(_) => Status::failed_precondition(e.to_string()),
            ChangeError::Stopped | ChangeError::Unavailable(_) => {
                Status::unavailable(e.to_string())
            }
            ChangeError::Conflict(_) => Status::aborted(e.to_string()),
        }
    }
}

/// What an admin change did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// The overlay's generation after it (unchanged when nothing changed).
    pub generation: u64,
    /// One line per service: created, updated (and which fields), unchanged, reset, deleted.
    pub changes: Vec<String>,
    /// Warnings about the services changed.
    pub warnings: Vec<String>,
}

/// Where a service's values come from, for `legatectl get service`.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    /// `files`, or `admin` (an `apply` created it).
    pub origin: &'static str,
    /// Where the files define it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<ChangeView>,
    pub fields: Vec<FieldView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    pub warnings: Vec<String>,
}

/// One field of a service and its source.
#[derive(Clone, Debug, Serialize)]
pub struct FieldView {
    pub field: String,
    /// `null`: unset (the default).
    pub value: serde_json::Value,
    /// `file` or `admin`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeView>,
    /// False for an admin value stored but not served (it conflicts with the files).
    pub served: bool,
}

/// An admin change as shown.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeView {
    pub op: String,
    pub at_unix_ms: u64,
    /// RFC 3339.
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl From<&Change> for ChangeView {
    fn from(c: &Change) -> Self {
        ChangeView {
            op: c.op.clone(),
            at_unix_ms: c.at_unix_ms,
            at: c.time(),
            caller: c.caller.clone(),
        }
    }
}

impl From<&ChangeView> for PbChange {
    fn from(c: &ChangeView) -> Self {
        PbChange {
            op: c.op.clone(),
            at_unix_ms: i64::try_from(c.at_unix_ms).unwrap_or(i64::MAX),
            caller: c.caller.clone().unwrap_or_default(),
        }
    }
}

impl From<Outcome> for ApplyResponse {
    fn from(o: Outcome) -> Self {
        ApplyResponse {
            generation: o.generation,
            changes: o.changes,
            warnings: o.warnings,
        }
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
    /// How long changed mesh files must keep the same contents before they are applied.
    pub settle: Duration,
    /// How often the files are read even without a change notification (inotify can miss
    /// changes: queue overflow, network filesystems, a watched directory replaced).
    pub recheck_interval: Duration,
    /// How much reported load is kept ([`crate::load_report::LoadStore`]).
    pub load_window: Duration,
    /// `--store etcd://`: the connection and the shared state as read at start
    /// ([`shared_state`]); `None`: the data directory holds the state.
    pub shared: Option<SharedStart>,
}

/// What a replica sharing its state in etcd starts from.
#[derive(Clone, Debug)]
pub struct SharedStart {
    pub etcd: Arc<Etcd>,
    pub stored: Stored,
}

impl CpOptions {
    /// The defaults of the `legate-cp` flags: settle 1 s, re-check every 30 s, load kept
    /// 60 s.
    pub fn new(config: PathBuf, data_dir: PathBuf, grpc_cluster: String) -> CpOptions {
        CpOptions {
            config,
            data_dir,
            grpc_cluster,
            settle: Duration::from_secs(1),
            recheck_interval: Duration::from_secs(30),
            load_window: crate::load_report::DEFAULT_WINDOW,
            shared: None,
        }
    }
}

/// Where the mesh files stand, for `GET /v1/mesh`: what was applied last, and the last
/// refusal since then.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MeshStatus {
    /// `--config`: a file or a directory.
    pub config: String,
    /// The files of the configuration applied last, in order.
    pub files: Vec<String>,
    /// SHA-256 of the names and bytes of those files.
    pub digest: String,
    pub applied_at_unix_ms: u64,
    /// The admin overlay's generation.
    pub generation: u64,
    /// The newest refusal, cleared when a later version of the files is applied.
    pub refused: Option<MeshRefusal>,
    /// Refused versions of the files since start.
    pub refusals: u64,
    /// Stored admin changes that do not fit the files, and are not served.
    pub conflicts: Vec<OverlayConflict>,
    /// Warnings about the mesh served (files and admin changes).
    pub warnings: Vec<Warning>,
    /// `inotify` (the platform's notifications) or `polling`.
    pub watch: &'static str,
    pub settle_ms: u64,
    /// Where admin changes and rollouts are kept.
    pub store: StoreStatus,
}

/// The store of admin changes and rollouts, for `GET /v1/mesh`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStatus {
    /// `dir` or `etcd`.
    pub kind: &'static str,
    /// etcd: this replica's name, whether it leads (runs the rollout controller), and why
    /// etcd is unreachable, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    pub leader: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// A version of the mesh files that was not applied.
#[derive(Clone, Debug, Serialize)]
pub struct MeshRefusal {
    pub error: String,
    pub digest: String,
    pub at_unix_ms: u64,
}

type Changed = Result<Outcome, ChangeError>;

/// What the owner is asked to do, with where to send the answer. `caller` is who asked
/// (recorded with the change).
enum Command {
    Apply {
        document: String,
        source: String,
        caller: Option<String>,
        reply: oneshot::Sender<Changed>,
    },
    SetWeights {
        service: String,
        weights: Vec<(String, u32)>,
        caller: Option<String>,
        reply: oneshot::Sender<Changed>,
    },
    Reset {
        service: String,
        reply: oneshot::Sender<Changed>,
    },
    Delete {
        service: String,
        reply: oneshot::Sender<Changed>,
    },
    GetService {
        service: String,
        reply: oneshot::Sender<Option<ServiceView>>,
    },
    StartRollout {
        service: String,
        request: StartRequest,
        caller: Option<String>,
        reply: oneshot::Sender<Result<serde_json::Value, ChangeError>>,
    },
    SteerRollout {
        service: String,
        action: rollout::Action,
        caller: Option<String>,
        reply: oneshot::Sender<Result<serde_json::Value, ChangeError>>,
    },
    Rollouts {
        /// `None`: every rollout.
        service: Option<String>,
        reply: oneshot::Sender<Result<Vec<serde_json::Value>, ChangeError>>,
    },
}

/// Admin commands waiting for the owner; a caller past this waits for room.
const COMMAND_QUEUE: usize = 64;

/// The control plane's configuration side, as the admin API and the binary see it.
pub struct ControlPlane {
    pub cache: Arc<SnapshotCache>,
    pub registry: Arc<NodeRegistry>,
    /// What `/metrics` serves; the registry counts into it too.
    pub metrics: Arc<CpMetrics>,
    /// The fleet's load reports, with the published mesh's cluster → service version map.
    pub load: Arc<LoadStore>,
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<MeshStatus>>,
    /// Cancelled by [`ControlPlane::shut_down`]: the owner stops, changes are refused.
    stopping: CancellationToken,
    /// Cancelled when the owner has stopped.
    owner_done: CancellationToken,
    /// `--store etcd://`: the connection (health, leadership).
    etcd: Option<Arc<Etcd>>,
}

/// The configuration state, owned by [`Owner`] alone.
struct State {
    base: Mesh,
    /// Where the files wrote each item of `base`.
    sources: Sources,
    overlay: Overlay,
    effective: Mesh,
    /// Stored admin changes left out of `effective`.
    conflicts: Vec<OverlayConflict>,
    warnings: Vec<Warning>,
    /// Digest of the mesh files last decided on (applied or refused).
    seen: [u8; 32],
    /// The certificate files' fingerprint of the last publish (rotation republishes).
    secrets: [u8; 32],
}

/// The one owner of the configuration state: applies file changes and admin commands in
/// order, persists, publishes. Runs on a thread of its own with a single-threaded runtime,
/// so the blocking parts (file reads, compiling, the overlay's fsync) never hold up the
/// runtime that serves xDS and the admin API.
struct Owner {
    options: CpOptions,
    cache: Arc<SnapshotCache>,
    load: Arc<LoadStore>,
    status: Arc<Mutex<MeshStatus>>,
    state: State,
    settle: Settle,
    watcher: Watcher,
    wake: Arc<Notify>,
    /// The last file or certificate error logged, to log each one once.
    last_error: Option<String>,
    metrics: Arc<CpMetrics>,
    /// Who ACKed what: a rollout step waits for every node's ACK.
    registry: Arc<NodeRegistry>,
    /// The canary rollouts, driven by this owner ([`crate::rollout`]).
    rollouts: Rollouts,
    /// Fingerprints of declared rollouts not started, already logged (once each).
    declared_logged: BTreeSet<String>,
    /// `--store etcd://`: the state shared with the other replicas.
    shared: Option<Shared>,
}

/// The state a replica shares with the others through etcd ([`crate::etcd`]).
struct Shared {
    etcd: Arc<Etcd>,
    /// The revision of the shared document this replica last read or wrote.
    revision: i64,
    /// The document's halves as at `revision`: a write changes one and keeps the other.
    overlay: Overlay,
    rollouts: serde_json::Value,
    /// Newer revisions, as the follower reads them; taken by [`Owner::run`].
    events: Option<mpsc::Receiver<Stored>>,
    /// Writes are made as leader (the rollout controller's): fenced by the term.
    fenced: bool,
}

/// Attempts of one admin change when other replicas keep changing the shared state.
const MAX_SHARED_ATTEMPTS: usize = 5;

impl Shared {
    /// Write the overlay or the rollouts (the other half as last known), compare-and-swap
    /// on the revision last read.
    fn write(
        &mut self,
        overlay: Option<&Overlay>,
        rollouts: Option<serde_json::Value>,
        what: impl FnOnce() -> String,
    ) -> Result<(), ChangeError> {
        let state = SharedState {
            format: crate::etcd::STATE_FORMAT,
            overlay: overlay.cloned().unwrap_or_else(|| self.overlay.clone()),
            rollouts: rollouts.unwrap_or_else(|| self.rollouts.clone()),
        };
        let fence = if self.fenced {
            match self.etcd.term() {
                Some(term) => Some((term, what())),
                None => {
                    return Err(ChangeError::Conflict(
                        "this replica is no longer the leader: the rollout controller runs on \
                         the one that is"
                            .to_owned(),
                    ));
                }
            }
        } else {
            None
        };
        match self.etcd.write(&state, self.revision, fence) {
            Ok(revision) => {
                self.revision = revision;
                self.overlay = state.overlay;
                self.rollouts = state.rollouts;
                Ok(())
            }
            Err(e @ (EtcdError::Conflict { .. } | EtcdError::NotLeader { .. })) => {
                Err(ChangeError::Conflict(e.to_string()))
            }
            Err(e @ EtcdError::Unavailable(_)) => {
                Err(ChangeError::Unavailable(unavailable(&e.to_string())))
            }
            Err(EtcdError::Invalid(e)) => Err(ChangeError::Invalid(e)),
        }
    }
}

/// The refusal of an admin change while etcd cannot be reached.
fn unavailable(why: &str) -> String {
    format!(
        "{why}; admin changes are refused until it answers (nothing was applied; proxies keep \
         being served the last configuration)"
    )
}

/// The shared state to start a replica from: what etcd holds, or, when no replica wrote it
/// yet, this replica's data directory (admin changes and rollouts of a single legate-cp that
/// moves to etcd) or nothing, written as the first version.
pub async fn shared_state(etcd: &Etcd, options: &CpOptions) -> Result<Stored, StoreError> {
    loop {
        if let Some(stored) = etcd.read_async().await? {
            return Ok(stored);
        }
        let files = store::read_mesh_files(&options.config)?;
        let (base, _) = store::load_mesh(&files.files)?;
        let (overlay, _) = store::load_overlay(&options.data_dir, &base)?;
        let rollouts = Rollouts::load(&options.data_dir)?;
        let seeded = !overlay.services.is_empty() || rollouts.services().next().is_some();
        let state = SharedState {
            format: crate::etcd::STATE_FORMAT,
            overlay,
            rollouts: rollouts.to_value(),
        };
        match etcd.create_async(&state).await {
            Ok(revision) => {
                if seeded {
                    tracing::info!(
                        data_dir = %options.data_dir.display(),
                        "etcd held no shared state: the admin changes and rollouts of the data directory are its first version"
                    );
                }
                return Ok(Stored { revision, state });
            }
            // Another replica wrote the first version meanwhile: read it.
            Err(EtcdError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

use store::unix_ms;

impl ControlPlane {
    /// Load mesh files and persisted changes, publish the first snapshots, and start the
    /// state's owner (which watches the files from then on). A bad file here is fatal
    /// (there is no last good configuration yet).
    pub fn load(options: CpOptions) -> Result<Arc<Self>, StoreError> {
        let files = store::read_mesh_files(&options.config)?;
        let (base, sources) = store::load_mesh(&files.files)?;
        let (mut overlay, rollouts, shared) = match &options.shared {
            None => {
                let (overlay, migrated) = store::load_overlay(&options.data_dir, &base)?;
                if let Some(note) = migrated {
                    tracing::warn!("{note}");
                }
                (overlay, Rollouts::load(&options.data_dir)?, None)
            }
            Some(start) => {
                let rollouts =
                    Rollouts::from_value(start.stored.state.rollouts.clone()).map_err(|e| {
                        StoreError::Other(format!(
                            "the rollouts in etcd do not check out ({e}): legate-cp does not \
                             start on rollout state it cannot read"
                        ))
                    })?;
                let shared = Shared {
                    etcd: start.etcd.clone(),
                    revision: start.stored.revision,
                    overlay: start.stored.state.overlay.clone(),
                    rollouts: start.stored.state.rollouts.clone(),
                    events: None,
                    fenced: false,
                };
                (start.stored.state.overlay.clone(), rollouts, Some(shared))
            }
        };
        // The files may have changed while legate-cp was down.
        let notes = store::rebase(&mut overlay, &base);
        for note in &notes {
            tracing::info!("{note}");
        }
        if !notes.is_empty() {
            overlay.generation += 1;
            // With etcd, the owner writes it once it runs.
            if shared.is_none() {
                store::save_overlay(&options.data_dir, &overlay)?;
            }
        }
        let mut effective = store::effective(&base, &sources, &overlay);
        let base_dir = crate::secrets::base_dir(&options.config);
        let secrets = match SecretFiles::read(&effective.mesh, &base_dir) {
            Ok(secrets) => secrets,
            Err(e) if !overlay.services.is_empty() => {
                // Stored admin changes never stop a start: the files alone, if they can.
                fall_back_to_files(&mut effective, &base, &overlay, &e.to_string());
                SecretFiles::read(&effective.mesh, &base_dir)
                    .map_err(|e| StoreError::Other(e.to_string()))?
            }
            Err(e) => return Err(StoreError::Other(e.to_string())),
        };
        let warnings = store::warnings(&effective.mesh, &sources, &overlay);
        let etcd = options.shared.as_ref().map(|s| s.etcd.clone());
        let cache = Arc::new(SnapshotCache::new());
        let metrics = Arc::new(CpMetrics::new());
        let registry = Arc::new(NodeRegistry::with_metrics(metrics.clone()));
        let load = Arc::new(LoadStore::with_metrics(
            options.load_window,
            metrics.load_metrics(),
        ));
        let wake = Arc::new(Notify::new());
        let watcher = Watcher::new(wake.clone());
        let status = Arc::new(Mutex::new(MeshStatus {
            config: options.config.display().to_string(),
            files: files.paths(),
            digest: hex(&files.digest),
            applied_at_unix_ms: unix_ms(),
            generation: overlay.generation,
            refused: None,
            refusals: 0,
            conflicts: Vec::new(),
            warnings: Vec::new(),
            watch: if watcher.is_active() {
                "inotify"
            } else {
                "polling"
            },
            settle_ms: u64::try_from(options.settle.as_millis()).unwrap_or(u64::MAX),
            store: StoreStatus::default(),
        }));
        let mut owner = Owner {
            settle: Settle::new(options.settle),
            options,
            cache: cache.clone(),
            load: load.clone(),
            status: status.clone(),
            state: State {
                base,
                sources,
                overlay,
                effective: effective.mesh.clone(),
                conflicts: Vec::new(),
                warnings: Vec::new(),
                seen: files.digest,
                secrets: secrets.fingerprint(),
            },
            watcher,
            wake,
            last_error: None,
            metrics: metrics.clone(),
            registry: registry.clone(),
            rollouts,
            declared_logged: BTreeSet::new(),
            shared,
        };
        if let Err(e) = owner.publish(&effective.mesh, &secrets) {
            if owner.state.overlay.services.is_empty() {
                return Err(StoreError::Other(e));
            }
            let base = owner.state.base.clone();
            fall_back_to_files(&mut effective, &base, &owner.state.overlay, &e);
            let secrets = owner
                .read_secrets(&effective.mesh)
                .map_err(StoreError::Other)?;
            owner
                .publish(&effective.mesh, &secrets)
                .map_err(StoreError::Other)?;
            owner.state.effective = effective.mesh.clone();
            owner.state.secrets = secrets.fingerprint();
        }
        owner.report(effective.conflicts, warnings);
        owner.watch_dirs();
        if let Some(shared) = &mut owner.shared {
            let (tx, rx) = mpsc::channel(16);
            shared.etcd.spawn_follower(shared.revision, tx);
            shared.events = Some(rx);
            shared.etcd.spawn_election(metrics.leader_gauge());
            shared.etcd.spawn_load_relay(load.clone());
            metrics.watch_store(shared.etcd.health.clone());
        }
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Other(format!("cannot start the state owner: {e}")))?;
        let (stopping, owner_done) = (CancellationToken::new(), CancellationToken::new());
        let (stop, done) = (stopping.clone(), owner_done.clone());
        std::thread::Builder::new()
            .name("legate-cp-state".to_owned())
            .spawn(move || {
                // Also when the owner panics.
                let _done = done.drop_guard();
                runtime.block_on(owner.run(rx, stop));
            })
            .map_err(|e| StoreError::Other(format!("cannot start the state owner: {e}")))?;
        Ok(Arc::new(ControlPlane {
            cache,
            registry,
            metrics,
            load,
            commands,
            status,
            stopping,
            owner_done,
            etcd,
        }))
    }

    /// Whether this replica should get new xDS streams (`/ready`): `Err` with the reason
    /// when it is shutting down, or when etcd cannot be reached (`--store etcd://`: the
    /// other replicas may have newer configuration).
    pub fn ready(&self) -> Result<(), String> {
        if self.is_shutting_down() {
            return Err("legate-cp is shutting down".to_owned());
        }
        if let Some(why) = self.etcd.as_ref().and_then(|e| e.health.down_reason()) {
            return Err(why);
        }
        Ok(())
    }

    /// `--store etcd://`: the connection.
    pub fn etcd(&self) -> Option<&Arc<Etcd>> {
        self.etcd.as_ref()
    }

    /// Stop taking changes, for good: admin changes are refused from now on (see
    /// [`is_shutting_down`](Self::is_shutting_down)), the state owner finishes the change it
    /// is applying, if any, stops watching the mesh files and answers the commands still
    /// queued with an error. Returns once the owner has stopped.
    pub async fn shut_down(&self) {
        self.stopping.cancel();
        self.owner_done.cancelled().await;
    }

    /// Whether [`shut_down`](Self::shut_down) was called: the admin API refuses changes.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Where the mesh files stand: applied, refused, how they are watched.
    pub fn mesh_status(&self) -> MeshStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.store = match &self.etcd {
            None => StoreStatus {
                kind: "dir",
                replica: None,
                leader: true,
                unreachable: None,
            },
            Some(etcd) => StoreStatus {
                kind: "etcd",
                replica: Some(etcd.options().replica.clone()),
                leader: etcd.term().is_some(),
                unreachable: etcd.health.down_reason(),
            },
        };
        status
    }

    /// Send a command to the owner and await its answer.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Counts a change's outcome in `legate_cp_admin_changes_total`.
    fn counted(&self, operation: AdminOperation, changed: Changed) -> Changed {
        let outcome = match &changed {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics.admin_change(operation, outcome);
        changed
    }

    /// Insert or replace the services of a mesh document.
    pub async fn apply(&self, document: &str, source: &str, caller: Option<String>) -> Changed {
        let changed = self
            .ask(|reply| Command::Apply {
                document: document.to_owned(),
                source: source.to_owned(),
                caller,
                reply,
            })
            .await
            .unwrap_or(Err(ChangeError::Stopped));
        self.counted(AdminOperation::Apply, changed)
    }

    /// Set a service's version weights.
    pub async fn set_weights(
        &self,
        service: &str,
        weights: &[(String, u32)],
        caller: Option<String>,
    ) -> Changed {
        let changed = self
            .ask(|reply| Command::SetWeights {
                service: service.to_owned(),
                weights: weights.to_vec(),
                caller,
                reply,
            })
            .await
            .unwrap_or(Err(ChangeError::Stopped));
        self.counted(AdminOperation::SetWeights, changed)
    }

    /// Drop a service's admin changes.
    pub async fn reset(&self, service: &str) -> Changed {
        let changed = self
            .ask(|reply| Command::Reset {
                service: service.to_owned(),
                reply,
            })
            .await
            .unwrap_or(Err(ChangeError::Stopped));
        self.counted(AdminOperation::Reset, changed)
    }

    /// Remove a service an `apply` created.
    pub async fn delete(&self, service: &str) -> Changed {
        let changed = self
            .ask(|reply| Command::Delete {
                service: service.to_owned(),
                reply,
            })
            .await
            .unwrap_or(Err(ChangeError::Stopped));
        self.counted(AdminOperation::Delete, changed)
    }

    /// Start a canary rollout of `service`; its status once the first step's weights are
    /// set.
    pub async fn start_rollout(
        &self,
        service: &str,
        request: StartRequest,
        caller: Option<String>,
    ) -> Result<serde_json::Value, ChangeError> {
        let changed = self
            .ask(|reply| Command::StartRollout {
                service: service.to_owned(),
                request,
                caller,
                reply,
            })
            .await
            .unwrap_or(Err(ChangeError::Stopped));
        self.metrics.admin_change(
            AdminOperation::Rollout,
            changed.as_ref().map_or_else(ChangeError::outcome, |_| "ok"),
        );
        changed
    }

    /// Pause, resume, abort or promote the rollout of `service`; its status after.
    pub async fn steer_rollout(
        &self,
        service: &str,
        action: rollout::Action,
        caller: Option<String>,
    ) -> Result<serde_json::Value, ChangeError> {
        let changed = self
            .ask(|reply| Command::SteerRollout {
                service: service.to_owned(),
                action,
                caller,
                reply,
            })
            .await
            .unwrap_or(Err(ChangeError::Stopped));
        self.metrics.admin_change(
            AdminOperation::Rollout,
            changed.as_ref().map_or_else(ChangeError::outcome, |_| "ok"),
        );
        changed
    }

    /// The status of the rollout of `service`, or of every rollout.
    pub async fn rollouts(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, ChangeError> {
        self.ask(|reply| Command::Rollouts {
            service: service.map(str::to_owned),
            reply,
        })
        .await
        .unwrap_or(Err(ChangeError::Stopped))
    }

    /// A service with where each value comes from; `None` for an unknown one.
    pub async fn service(&self, service: &str) -> Result<Option<ServiceView>, ChangeError> {
        self.ask(|reply| Command::GetService {
            service: service.to_owned(),
            reply,
        })
        .await
        .ok_or(ChangeError::Stopped)
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
                    json: render(&r.any),
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

impl Owner {
    /// Take commands and file changes until every [`ControlPlane`] handle is gone or
    /// `stopping` is cancelled.
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stopping: CancellationToken) {
        let poll = if self.watcher.is_active() {
            self.options.recheck_interval
        } else {
            // Without notifications, polling is all there is.
            self.options.settle.max(Duration::from_millis(250))
        };
        let mut recheck = Instant::now() + poll;
        let mut settle_at: Option<Instant> = None;
        let (load, registry) = (self.load.clone(), self.registry.clone());
        let mut shared_events = self.shared.as_mut().and_then(|s| s.events.take());
        let mut leadership = self.shared.as_ref().map(|s| s.etcd.leadership());
        if let Some(shared) = &mut self.shared
            && shared.overlay != self.state.overlay
        {
            // Overrides of fields the files changed while no replica ran were dropped at
            // load: store that.
            let overlay = self.state.overlay.clone();
            if let Err(error) = shared.write(Some(&overlay), None, String::new) {
                tracing::warn!(%error, "the rebased admin overlay was not written to etcd");
            }
        }
        self.drive_rollouts();
        self.start_declared_rollouts();
        loop {
            let deadline = settle_at.map_or(recheck, |at| at.min(recheck));
            let leader = self.is_leader();
            let watching = leader && self.rollouts.is_watching();
            let rollout_at = self.rollouts.next_deadline().filter(|_| leader);
            tokio::select! {
                // Before anything else: nothing is applied once legate-cp is stopping.
                biased;
                () = stopping.cancelled() => {
                    tracing::info!("configuration state closed: mesh files no longer watched, admin changes refused");
                    return;
                }
                // Then the rollouts, ahead of queued commands and file changes: a failing
                // report rolls back at once.
                () = load.reported().notified(), if watching => self.drive_rollouts(),
                () = registry.changed().notified(), if watching => self.drive_rollouts(),
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                Some(stored) = recv_opt(&mut shared_events) => {
                    self.apply_stored(stored);
                    self.drive_rollouts();
                    self.start_declared_rollouts();
                }
                Some(term) = leadership_changed(&mut leadership) => self.leadership_changed(term),
                // After commands: a deadline that keeps firing must not starve them.
                () = sleep_until_opt(rollout_at), if rollout_at.is_some() => self.drive_rollouts(),
                () = self.wake.notified() => {
                    settle_at = self.check_files();
                    self.start_declared_rollouts();
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    if Instant::now() >= recheck {
                        recheck = Instant::now() + poll;
                    }
                    settle_at = self.check_files();
                    self.start_declared_rollouts();
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        // A caller that went away no longer wants the answer; the change stands.
        match command {
            Command::Apply {
                document,
                source,
                caller,
                reply,
            } => {
                // The services it names, for a lost race with another replica (etcd only:
                // the document is parsed again by `apply`).
                let services: Vec<String> = match &self.shared {
                    Some(_) => legate_model::parse_yaml::<Mesh>(&document, &source)
                        .map(|doc| doc.services.into_iter().map(|s| s.name).collect())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                let changed = self.shared_change(&services, |o| {
                    o.apply(&document, &source, caller.as_deref())
                });
                let _ = reply.send(changed);
                self.start_declared_rollouts();
            }
            Command::SetWeights {
                service,
                weights,
                caller,
                reply,
            } => {
                let changed = self.shared_change(std::slice::from_ref(&service), |o| {
                    match o.rollouts.refuse_manual(&service) {
                        Some(refusal) => Err(ChangeError::Precondition(refusal)),
                        None => o.set_weights(&service, &weights, caller.as_deref(), "set-weights"),
                    }
                });
                let _ = reply.send(changed);
            }
            Command::Reset { service, reply } => {
                let changed = self.shared_change(std::slice::from_ref(&service), |o| {
                    match o.rollouts.refuse_manual(&service) {
                        Some(refusal) => Err(ChangeError::Precondition(refusal)),
                        None => o.reset(&service),
                    }
                });
                let _ = reply.send(changed);
            }
            Command::Delete { service, reply } => {
                let changed = self.shared_change(std::slice::from_ref(&service), |o| {
                    match o.rollouts.refuse_manual(&service) {
                        Some(refusal) => Err(ChangeError::Precondition(refusal)),
                        None => o.delete(&service),
                    }
                });
                let _ = reply.send(changed);
            }
            Command::GetService { service, reply } => {
                let _ = reply.send(self.service_view(&service));
            }
            Command::StartRollout {
                service,
                request,
                caller,
                reply,
            } => {
                let changed = self.shared_change(std::slice::from_ref(&service), |o| {
                    o.start_rollout(&service, request.clone(), caller.as_deref(), None)
                });
                let _ = reply.send(changed);
            }
            Command::SteerRollout {
                service,
                action,
                caller,
                reply,
            } => {
                let changed = self.shared_change(std::slice::from_ref(&service), |o| {
                    let mut rollouts = std::mem::take(&mut o.rollouts);
                    let steered =
                        rollouts.steer(&service, action, o, caller.as_deref(), Instant::now());
                    o.rollouts = rollouts;
                    steered?;
                    o.save_rollouts()?;
                    Ok(o.rollouts.view(&service, o).unwrap_or_default())
                });
                let _ = reply.send(changed);
            }
            Command::Rollouts { service, reply } => {
                let views = match service {
                    Some(s) => match self.rollouts.view(&s, self) {
                        Some(v) => Ok(vec![v]),
                        None => Err(ChangeError::NotFound(format!("service {s} has no rollout"))),
                    },
                    None => Ok(self
                        .rollouts
                        .services()
                        .filter_map(|s| self.rollouts.view(s, self))
                        .collect()),
                };
                let _ = reply.send(views);
            }
        }
    }

    /// Run an admin change of `services`. With etcd, a change refused because another
    /// replica wrote the shared state first is run again on what it wrote, unless that
    /// write changed one of the same services: then it is refused, never applied over a
    /// change its caller has not seen. Refused at once while etcd is unreachable.
    fn shared_change<T>(
        &mut self,
        services: &[String],
        mut change: impl FnMut(&mut Self) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let Some(shared) = &self.shared else {
            return change(self);
        };
        if let Some(why) = shared.etcd.health.down_reason() {
            return Err(ChangeError::Unavailable(unavailable(&why)));
        }
        for _ in 0..MAX_SHARED_ATTEMPTS {
            let before = self.stamp(services);
            match change(self) {
                Err(ChangeError::Conflict(why)) => {
                    self.refresh_shared();
                    if self.stamp(services) != before {
                        return Err(ChangeError::Conflict(format!(
                            "{} changed on another replica while this change was made ({why}): \
                             nothing was applied; look at it (`legatectl get service`) and try \
                             again",
                            services.join(", ")
                        )));
                    }
                }
                other => return other,
            }
        }
        Err(ChangeError::Conflict(format!(
            "the shared state kept changing on other replicas: tried {MAX_SHARED_ATTEMPTS} \
             times, nothing was applied; try again"
        )))
    }

    /// What other replicas may have changed of `services`: their overrides and rollouts.
    fn stamp(
        &self,
        services: &[String],
    ) -> Vec<(Option<store::ServiceOverlay>, Option<serde_json::Value>)> {
        services
            .iter()
            .map(|s| {
                (
                    self.state.overlay.services.get(s).cloned(),
                    self.rollouts
                        .get(s)
                        .and_then(|r| serde_json::to_value(r).ok()),
                )
            })
            .collect()
    }

    /// Whether this replica runs the singletons (the rollout controller): always without
    /// etcd; with it, while it holds the leader lease.
    fn is_leader(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.etcd.term().is_some())
    }

    /// This replica became the leader (`Some`) or stopped being it.
    fn leadership_changed(&mut self, term: Option<Term>) {
        if term.is_none() {
            return;
        }
        // Take over from the newest state: the previous leader's last writes.
        self.refresh_shared();
        let replica = self
            .shared
            .as_ref()
            .map(|s| s.etcd.options().replica.clone())
            .unwrap_or_default();
        self.rollouts
            .take_over(&format!("replica {replica} took over as leader"));
        self.drive_rollouts();
        self.start_declared_rollouts();
    }

    /// Read the shared state now (after a write lost to another replica's).
    fn refresh_shared(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        match shared.etcd.read() {
            Ok(Some(stored)) => self.apply_stored(stored),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot read the shared state"),
        }
    }

    /// Serve a newer revision of the shared state: the overlay on this replica's files,
    /// and the rollouts. The same document and the same files compile to the same snapshots
    /// on every replica.
    fn apply_stored(&mut self, stored: Stored) {
        let Some(shared) = &mut self.shared else {
            return;
        };
        if stored.revision <= shared.revision {
            return;
        }
        shared.revision = stored.revision;
        shared.overlay = stored.state.overlay.clone();
        shared.rollouts = stored.state.rollouts.clone();
        match Rollouts::from_value(stored.state.rollouts) {
            Ok(rollouts) => self.rollouts.adopt(rollouts),
            Err(error) => {
                tracing::error!(%error, revision = stored.revision, "the rollouts in etcd do not check out: kept the ones this replica had");
            }
        }
        let mut overlay = stored.state.overlay;
        let notes = store::rebase(&mut overlay, &self.state.base);
        let effective = store::effective(&self.state.base, &self.state.sources, &overlay);
        let published = self.read_secrets(&effective.mesh).and_then(|secrets| {
            let changed = effective.mesh != self.state.effective
                || secrets.fingerprint() != self.state.secrets;
            if changed {
                self.publish(&effective.mesh, &secrets)?;
            }
            Ok((secrets.fingerprint(), changed))
        });
        match published {
            Ok((secrets, changed)) => {
                let generation = self.serve_overlay(overlay, effective, secrets);
                if changed {
                    tracing::info!(
                        revision = stored.revision,
                        generation,
                        "shared state changed in etcd: new configuration pushed"
                    );
                }
            }
            Err(error) => {
                tracing::error!(%error, revision = stored.revision, "the shared state in etcd does not compile with this replica's files: keeping the last good configuration");
                return;
            }
        }
        if !notes.is_empty() {
            for note in &notes {
                tracing::info!("{note}");
            }
            let mut overlay = self.state.overlay.clone();
            overlay.generation += 1;
            if let Some(shared) = &mut self.shared
                && shared.write(Some(&overlay), None, String::new).is_ok()
            {
                self.state.overlay = overlay;
            }
        }
    }

    /// Take `overlay` as the state, once its `effective` mesh (and certificate files with
    /// fingerprint `secrets`) is published: conflicts and warnings reported, directories
    /// watched. Returns its generation.
    fn serve_overlay(
        &mut self,
        overlay: Overlay,
        effective: store::Effective,
        secrets: [u8; 32],
    ) -> u64 {
        let warnings = store::warnings(&effective.mesh, &self.state.sources, &overlay);
        self.state.overlay = overlay;
        self.state.effective = effective.mesh;
        self.state.secrets = secrets;
        let generation = self.state.overlay.generation;
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation = generation;
        self.report(effective.conflicts, warnings);
        self.watch_dirs();
        generation
    }

    /// Persist the admin overlay: in the data directory, or etcd.
    fn persist_overlay(&mut self, overlay: &Overlay) -> Result<(), ChangeError> {
        match &mut self.shared {
            None => store::save_overlay(&self.options.data_dir, overlay)
                .map_err(|e| ChangeError::Invalid(e.to_string())),
            Some(shared) => shared.write(Some(overlay), None, || {
                format!("admin overlay generation {}", overlay.generation)
            }),
        }
    }

    /// Move the rollouts on (set weights, see ACKs in, judge) and persist what changed.
    /// Only the leader does, with its writes fenced by its term.
    fn drive_rollouts(&mut self) {
        if !self.is_leader() {
            return;
        }
        self.set_fenced(true);
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.tick(self, Instant::now());
        self.rollouts = rollouts;
        let saved = self.save_rollouts();
        self.set_fenced(false);
        if let Err(e) = saved {
            tracing::error!(error = %e, "cannot persist the rollouts");
            if matches!(e, ChangeError::Conflict(_)) {
                // Another replica wrote first (a steer, say): go on from what it wrote.
                self.refresh_shared();
            }
        }
    }

    /// Make the writes that follow the leader's (fenced), or anyone's.
    fn set_fenced(&mut self, fenced: bool) {
        if let Some(shared) = &mut self.shared {
            shared.fenced = fenced;
        }
    }

    fn save_rollouts(&mut self) -> Result<(), ChangeError> {
        let Some(shared) = &mut self.shared else {
            return self
                .rollouts
                .save(&self.options.data_dir)
                .map_err(|e| ChangeError::Invalid(format!("cannot persist the rollout: {e}")));
        };
        if !self.rollouts.is_dirty() {
            return Ok(());
        }
        let rollouts = &self.rollouts;
        shared.write(None, Some(rollouts.to_value()), || rollouts.summary())?;
        self.rollouts.saved();
        Ok(())
    }

    /// Start the rollouts the served mesh declares (`rollout:` on a service) that have not
    /// run yet: each block once, known by its fingerprint, so a finished rollout is not
    /// started again by the same block, and a changed block starts a new one (once the
    /// previous has finished).
    fn start_declared_rollouts(&mut self) {
        if !self.is_leader() {
            return;
        }
        self.set_fenced(true);
        self.start_declared();
        self.set_fenced(false);
    }

    fn start_declared(&mut self) {
        let declared: Vec<(String, legate_model::ServiceRollout)> = self
            .state
            .effective
            .services
            .iter()
            .filter_map(|s| s.rollout.clone().map(|r| (s.name.clone(), r)))
            .collect();
        for (service, block) in declared {
            let text = serde_json::to_vec(&(&service, &block)).unwrap_or_default();
            let fingerprint = hex(&Sha256::digest(&text).into())[..16].to_owned();
            if self.rollouts.declared_started(&service, &fingerprint) {
                continue;
            }
            if let Some(r) = self.rollouts.get(&service)
                && r.state.is_active()
            {
                if self.declared_logged.insert(fingerprint) {
                    tracing::warn!(
                        service,
                        "the mesh files declare a rollout, but another rollout of the service is {}: not started",
                        r.state.as_str()
                    );
                }
                continue;
            }
            let request = StartRequest::from(&block);
            let started = self.start_rollout(
                &service,
                request,
                Some("mesh files"),
                Some(fingerprint.clone()),
            );
            match started {
                Ok(_) => tracing::info!(service, "rollout declared in the mesh files started"),
                Err(error) => {
                    if self.declared_logged.insert(fingerprint) {
                        tracing::error!(service, %error, "the rollout the mesh files declare was not started");
                    }
                }
            }
        }
    }

    fn start_rollout(
        &mut self,
        service: &str,
        request: StartRequest,
        caller: Option<&str>,
        declared: Option<String>,
    ) -> Result<serde_json::Value, ChangeError> {
        let Some(weights) = Fleet::weights(self, service) else {
            return if self
                .state
                .effective
                .services
                .iter()
                .any(|s| s.name == service)
            {
                Err(ChangeError::Invalid(format!(
                    "service `{service}` has a single version (`endpoints`): a rollout needs                      `versions`"
                )))
            } else {
                Err(ChangeError::UnknownService(service.to_owned()))
            };
        };
        let definition = request
            .definition(service, &weights)
            .map_err(ChangeError::Invalid)?;
        if definition.interval() > self.options.load_window {
            return Err(ChangeError::Invalid(format!(
                "interval: {} is longer than the load legate-cp keeps (--lrs-window {})",
                humantime::format_duration(definition.interval()),
                humantime::format_duration(self.options.load_window)
            )));
        }
        let mut rollouts = std::mem::take(&mut self.rollouts);
        let started = rollouts.start(definition, declared, self, caller, Instant::now());
        self.rollouts = rollouts;
        started?;
        self.save_rollouts()?;
        Ok(self.rollouts.view(service, self).unwrap_or_default())
    }

    /// Read the mesh files and decide: unchanged (then look at the certificate files), still
    /// settling (returns when to look again), or stable for the settle interval (apply or
    /// refuse it). A read error settles like contents do, so a file being replaced is not
    /// reported while it is.
    fn check_files(&mut self) -> Option<Instant> {
        let read = store::read_mesh_files(&self.options.config);
        let digest = match &read {
            Ok(files) => files.digest,
            Err(e) => Sha256::digest(e.to_string().as_bytes()).into(),
        };
        match self.settle.observe(digest, self.state.seen, Instant::now()) {
            Verdict::Unchanged => {
                self.check_secrets();
                None
            }
            Verdict::Wait(until) => Some(until),
            Verdict::Apply => {
                self.state.seen = digest;
                match read {
                    Ok(files) => self.apply_files(&files),
                    Err(e) => self.refuse(&e.to_string(), &digest),
                }
                None
            }
        }
    }

    /// Publish the files' mesh with the overlay on top, or keep the last good one. Overrides
    /// of fields the files changed are dropped (the newer change wins); nothing is pushed
    /// when what is served stays the same.
    fn apply_files(&mut self, files: &MeshFiles) {
        let result = store::load_mesh(&files.files).and_then(|(base, sources)| {
            let mut overlay = self.state.overlay.clone();
            let notes = store::rebase(&mut overlay, &base);
            let effective = store::effective(&base, &sources, &overlay);
            let secrets = self
                .read_secrets(&effective.mesh)
                .map_err(StoreError::Other)?;
            let changed = effective.mesh != self.state.effective
                || secrets.fingerprint() != self.state.secrets;
            if changed {
                self.publish(&effective.mesh, &secrets)
                    .map_err(StoreError::Other)?;
            }
            Ok((
                base,
                sources,
                overlay,
                notes,
                effective,
                secrets.fingerprint(),
                changed,
            ))
        });
        match result {
            Ok((base, sources, mut overlay, notes, effective, secrets, changed)) => {
                for note in &notes {
                    tracing::info!("{note}");
                }
                if overlay != self.state.overlay {
                    overlay.generation += 1;
                    if let Err(error) = self.persist_overlay(&overlay) {
                        // Served as computed; a restart computes the same from the files.
                        tracing::error!(%error, "cannot persist the admin overlay after a file change");
                    }
                }
                let warnings = store::warnings(&effective.mesh, &sources, &overlay);
                self.state.base = base;
                self.state.sources = sources;
                self.state.overlay = overlay;
                self.state.effective = effective.mesh;
                self.state.secrets = secrets;
                self.last_error = None;
                {
                    let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                    status.files = files.paths();
                    status.digest = hex(&files.digest);
                    status.applied_at_unix_ms = unix_ms();
                    status.refused = None;
                    status.generation = self.state.overlay.generation;
                }
                self.report(effective.conflicts, warnings);
                self.watch_dirs();
                if changed {
                    self.metrics.mesh_reload(MeshReload::Applied);
                    tracing::info!(digest = %hex(&files.digest), "mesh files changed: new configuration pushed");
                } else {
                    self.metrics.mesh_reload(MeshReload::Unchanged);
                    tracing::info!(digest = %hex(&files.digest), "mesh files changed, but not what is served: nothing pushed");
                }
            }
            Err(e) => self.refuse(&e.to_string(), &files.digest),
        }
    }

    /// Keep conflicts and warnings for `GET /v1/mesh` and `get service`, logging each new
    /// one once (and each conflict that went away).
    fn report(&mut self, conflicts: Vec<OverlayConflict>, warnings: Vec<Warning>) {
        for c in &conflicts {
            if !self.state.conflicts.contains(c) {
                tracing::warn!(service = %c.service, "{}", c.message);
            }
        }
        for old in &self.state.conflicts {
            if !conflicts.iter().any(|c| c.service == old.service) {
                let now = if self.state.overlay.services.contains_key(&old.service) {
                    "its admin changes fit again and are served"
                } else {
                    "its admin changes are gone"
                };
                tracing::info!(service = %old.service, "conflict resolved: {now}");
            }
        }
        for w in &warnings {
            if !self.state.warnings.contains(w) {
                tracing::warn!("{w}");
            }
        }
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.conflicts = conflicts.clone();
        status.warnings = warnings.clone();
        drop(status);
        self.state.conflicts = conflicts;
        self.state.warnings = warnings;
    }

    fn refuse(&mut self, error: &str, digest: &[u8; 32]) {
        tracing::error!(%error, "mesh files refused; keeping the last good configuration");
        self.metrics.mesh_reload(MeshReload::Refused);
        self.last_error = Some(error.to_owned());
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.refusals = status.refusals.saturating_add(1);
        status.refused = Some(MeshRefusal {
            error: error.to_owned(),
            digest: hex(digest),
            at_unix_ms: unix_ms(),
        });
    }

    /// Watch the directory of the mesh files and those of the certificate files the
    /// effective mesh names.
    fn watch_dirs(&mut self) {
        let base = crate::secrets::base_dir(&self.options.config);
        let mut dirs = BTreeSet::from([base.clone()]);
        for s in &self.state.effective.secrets {
            for path in [&s.cert, &s.key, &s.ca].into_iter().flatten() {
                if let Some(parent) = base.join(path).parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
        }
        self.watcher.watch_dirs(dirs);
    }

    /// Read the certificate files `mesh`'s secrets name.
    fn read_secrets(&self, mesh: &Mesh) -> Result<SecretFiles, String> {
        SecretFiles::read(mesh, &crate::secrets::base_dir(&self.options.config))
            .map_err(|e| e.to_string())
    }

    /// Re-read the certificate files of the effective mesh; when their contents changed
    /// (rotation), publish again. Files that do not check out (a pair caught half-written)
    /// leave the last good ones served, and are tried again on the next change or check.
    fn check_secrets(&mut self) {
        if self.state.effective.secrets.is_empty() {
            return;
        }
        let base = crate::secrets::base_dir(&self.options.config);
        let effective = &self.state.effective;
        let result = SecretFiles::read_unchecked(effective, &base)
            .map_err(|e| e.to_string())
            .and_then(|secrets| {
                if secrets.fingerprint() == self.state.secrets {
                    return Ok(None);
                }
                secrets.check(effective).map_err(|e| e.to_string())?;
                self.publish(effective, &secrets)?;
                Ok(Some(secrets.fingerprint()))
            });
        match result {
            Ok(changed) => {
                if let Some(fingerprint) = changed {
                    self.state.secrets = fingerprint;
                    tracing::info!("certificate files changed: new secrets pushed");
                }
                self.last_error = None;
            }
            Err(e) => {
                if self.last_error.as_deref() != Some(&e) {
                    tracing::warn!(error = %e, "certificate files not applied; keeping the last good ones");
                    self.last_error = Some(e);
                }
            }
        }
    }

    /// Validate `overlay` with the files, persist it, publish. A service in `touched` that
    /// does not fit is refused, naming both sources; on error nothing changes.
    fn commit(&mut self, mut overlay: Overlay, touched: &[String]) -> Result<u64, ChangeError> {
        let effective = store::effective(&self.state.base, &self.state.sources, &overlay);
        if let Some(c) = effective
            .conflicts
            .iter()
            .find(|c| touched.contains(&c.service))
        {
            return Err(ChangeError::Invalid(format!(
                "service `{}` conflicts with the mesh files: {}",
                c.service, c.why
            )));
        }
        // Check it compiles and validates before persisting anything.
        let secrets = self.read_secrets(&effective.mesh)?;
        Self::proxy_resources(&effective.mesh, None, &secrets)?;
        overlay.generation += 1;
        self.persist_overlay(&overlay)?;
        self.publish(&effective.mesh, &secrets)?;
        let generation = self.serve_overlay(overlay, effective, secrets.fingerprint());
        tracing::info!(generation, services = ?touched, "admin change: new configuration pushed");
        Ok(generation)
    }

    /// The outcome of a change to `touched` (or of none, when it is empty).
    fn outcome(&mut self, overlay: Overlay, touched: Vec<String>, changes: Vec<String>) -> Changed {
        let generation = if touched.is_empty() {
            self.state.overlay.generation
        } else {
            self.commit(overlay, &touched)?
        };
        let warnings = self
            .state
            .warnings
            .iter()
            .filter(|w| w.service.as_ref().is_some_and(|s| touched.contains(s)))
            .map(ToString::to_string)
            .collect();
        Ok(Outcome {
            generation,
            changes,
            warnings,
        })
    }

    /// Insert or replace the services of a mesh document. Each service replaces the one of
    /// its name as a whole; of a service the files define, only the fields that differ
    /// from the files' are stored (and override them). A service served exactly as applied
    /// is "unchanged": nothing is persisted or pushed.
    fn apply(&mut self, document: &str, source: &str, caller: Option<&str>) -> Changed {
        let doc: Mesh = legate_model::parse_yaml(document, source).map_err(|e| e.to_string())?;
        let mut others = Vec::new();
        for (section, present) in [
            ("proxy", doc.proxy.is_some()),
            ("listeners", !doc.listeners.is_empty()),
            ("route_configs", !doc.route_configs.is_empty()),
            ("clusters", !doc.clusters.is_empty()),
            ("secrets", !doc.secrets.is_empty()),
        ] {
            if present {
                others.push(format!("`{section}`"));
            }
        }
        if !others.is_empty() {
            return Err(ChangeError::Invalid(format!(
                "{source}: the admin API applies `services` only, and this document also has {}: \
                 put those in the mesh files (nothing was applied)",
                others.join(", ")
            )));
        }
        if doc.services.is_empty() {
            return Err(ChangeError::Invalid(format!(
                "{source}: no services to apply"
            )));
        }
        let mut names = BTreeSet::new();
        if let Some(twice) = doc.services.iter().find(|s| !names.insert(&s.name)) {
            return Err(ChangeError::Invalid(format!(
                "{source}: service `{}` is given twice",
                twice.name
            )));
        }
        for svc in &doc.services {
            let Some(refusal) = self.rollouts.refuse_manual(&svc.name) else {
                continue;
            };
            let weights = |s: &legate_model::Service| -> Vec<(String, u32)> {
                s.versions
                    .iter()
                    .map(|v| (v.name.clone(), v.weight))
                    .collect()
            };
            let current = self
                .state
                .effective
                .services
                .iter()
                .find(|s| s.name == svc.name);
            if current.map(weights) != Some(weights(svc)) {
                return Err(ChangeError::Precondition(format!(
                    "{source}: {refusal} (the document changes its weights; nothing was applied)"
                )));
            }
        }
        let change = Change::now("apply", caller);
        let mut overlay = self.state.overlay.clone();
        let (mut touched, mut changes) = (Vec::new(), Vec::new());
        for svc in doc.services {
            let name = svc.name.clone();
            let conflicting = self.state.conflicts.iter().any(|c| c.service == name);
            let current = self
                .state
                .effective
                .services
                .iter()
                .find(|s| s.name == name);
            if current == Some(&svc) && !conflicting {
                changes.push(format!("service {name} unchanged"));
                continue;
            }
            let file = self.state.base.services.iter().find(|s| s.name == name);
            match store::diff_service(file, &svc, overlay.services.get(&name), &change) {
                Some(entry) => overlay.services.insert(name.clone(), entry),
                None => overlay.services.remove(&name),
            };
            changes.push(match current {
                Some(current) => {
                    let (was, now) = (store::service_fields(current), store::service_fields(&svc));
                    let fields: BTreeSet<&String> = was
                        .keys()
                        .chain(now.keys())
                        .filter(|f| was.get(*f) != now.get(*f))
                        .collect();
                    let fields: Vec<&str> = fields.into_iter().map(String::as_str).collect();
                    format!("service {name} updated ({})", fields.join(", "))
                }
                None => format!("service {name} created"),
            });
            touched.push(name);
        }
        self.outcome(overlay, touched, changes)
    }

    /// Set a service's version weights: an override of its `weights` alone.
    fn set_weights(
        &mut self,
        service: &str,
        weights: &[(String, u32)],
        caller: Option<&str>,
        op: &str,
    ) -> Changed {
        // A service whose stored changes conflict is changed as stored (not as served), so
        // the conflict is reported rather than its other overrides silently dropped.
        let stored = self
            .state
            .conflicts
            .iter()
            .any(|c| c.service == service)
            .then(|| {
                let file = self.state.base.services.iter().find(|s| s.name == service);
                store::overlay_service(service, file, self.state.overlay.services.get(service)?)
            })
            .flatten()
            .and_then(Result::ok);
        let served = self
            .state
            .effective
            .services
            .iter()
            .find(|s| s.name == service);
        let Some(current) = stored.as_ref().or(served) else {
            return Err(ChangeError::UnknownService(service.to_owned()));
        };
        let mut mesh = Mesh {
            services: vec![current.clone()],
            ..Mesh::default()
        };
        legate_model::set_weights(&mut mesh, service, weights)
            .map_err(|p| ChangeError::Invalid(p.to_string()))?;
        let wanted = mesh.services.remove(0);
        let desc: Vec<String> = weights.iter().map(|(v, w)| format!("{v}={w}")).collect();
        if &wanted == current && stored.is_none() {
            return self.outcome(
                self.state.overlay.clone(),
                Vec::new(),
                vec![format!(
                    "service {service} weights unchanged ({})",
                    desc.join(" ")
                )],
            );
        }
        let change = Change::now(op, caller);
        let file = self.state.base.services.iter().find(|s| s.name == service);
        let mut overlay = self.state.overlay.clone();
        match store::diff_service(file, &wanted, overlay.services.get(service), &change) {
            Some(entry) => overlay.services.insert(service.to_owned(), entry),
            None => overlay.services.remove(service),
        };
        self.outcome(
            overlay,
            vec![service.to_owned()],
            vec![format!("service {service} weights {}", desc.join(" "))],
        )
    }

    /// Drop a service's admin changes: the files' values serve again.
    fn reset(&mut self, service: &str) -> Changed {
        let in_files = self.state.base.services.iter().any(|s| s.name == service);
        let Some(entry) = self.state.overlay.services.get(service) else {
            if in_files {
                return self.outcome(
                    self.state.overlay.clone(),
                    Vec::new(),
                    vec![format!(
                        "service {service} unchanged: it has no admin changes"
                    )],
                );
            }
            return Err(ChangeError::UnknownService(service.to_owned()));
        };
        if !in_files {
            let created = entry
                .created
                .as_ref()
                .map_or_else(|| "an admin change".to_owned(), ToString::to_string);
            return Err(ChangeError::Precondition(format!(
                "service `{service}` was created by an {created} and is in no mesh file, so it \
                 has no file values to return to: remove it with `legatectl delete {service}`"
            )));
        }
        let fields: Vec<String> = entry.fields.keys().cloned().collect();
        let mut overlay = self.state.overlay.clone();
        overlay.services.remove(service);
        self.outcome(
            overlay,
            vec![service.to_owned()],
            vec![format!(
                "service {service} reset: {} from the mesh files again",
                fields.join(", ")
            )],
        )
    }

    /// Remove a service an `apply` created. A service the files define is theirs to remove.
    fn delete(&mut self, service: &str) -> Changed {
        if let Some(index) = self
            .state
            .base
            .services
            .iter()
            .position(|s| s.name == service)
        {
            let at = self
                .state
                .sources
                .locate(&format!("services[{index}]"))
                .map_or_else(String::new, |l| format!(" at {l}"));
            return Err(ChangeError::Precondition(format!(
                "service `{service}` is defined in the mesh files{at}: remove it there \
                 (`legatectl reset {service}` drops its admin changes)"
            )));
        }
        if !self.state.overlay.services.contains_key(service) {
            return Err(ChangeError::UnknownService(service.to_owned()));
        }
        let mut overlay = self.state.overlay.clone();
        overlay.services.remove(service);
        self.outcome(
            overlay,
            vec![service.to_owned()],
            vec![format!("service {service} deleted")],
        )
    }

    /// A service with where each of its values comes from.
    fn service_view(&self, name: &str) -> Option<ServiceView> {
        let state = &self.state;
        let index = state.base.services.iter().position(|s| s.name == name);
        let file = index.map(|i| &state.base.services[i]);
        let entry = state.overlay.services.get(name);
        if file.is_none() && entry.is_none() {
            return None;
        }
        let conflict = state.conflicts.iter().find(|c| c.service == name);
        let file_fields = file.map(store::service_fields).unwrap_or_default();
        let names: BTreeSet<&String> = file_fields
            .keys()
            .chain(entry.iter().flat_map(|e| e.fields.keys()))
            .collect();
        let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
        let locations = store::locate_field(&state.base, &state.sources, name, &names);
        let mut fields = Vec::new();
        for (field, location) in names.iter().zip(locations) {
            let admin = entry.and_then(|e| e.fields.get(*field));
            if let Some(o) = admin {
                fields.push(FieldView {
                    field: (*field).to_owned(),
                    value: o.value.clone().unwrap_or(serde_json::Value::Null),
                    source: if o.change.op == rollout::OP {
                        "rollout"
                    } else {
                        "admin"
                    },
                    location: None,
                    change: Some((&o.change).into()),
                    served: conflict.is_none(),
                });
            }
            // A file value shows when it serves: no override, or one that is not served.
            if let Some(v) = file_fields.get(*field)
                && (admin.is_none() || conflict.is_some())
            {
                fields.push(FieldView {
                    field: (*field).to_owned(),
                    value: v.clone(),
                    source: "file",
                    location: location.map(|l| l.to_string()),
                    change: None,
                    served: true,
                });
            }
        }
        Some(ServiceView {
            name: name.to_owned(),
            origin: if file.is_some() { "files" } else { "admin" },
            location: index
                .and_then(|i| state.sources.locate(&format!("services[{i}]")))
                .map(|l| l.to_string()),
            created: entry.and_then(|e| e.created.as_ref()).map(Into::into),
            fields,
            conflict: conflict.map(|c| c.message.clone()),
            warnings: state
                .warnings
                .iter()
                .filter(|w| w.service.as_deref() == Some(name))
                .map(ToString::to_string)
                .collect(),
        })
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

    /// Compile `mesh` ([`Snapshots::compile`]) and publish the result: all selectors change
    /// at once.
    fn publish(&self, mesh: &Mesh, secrets: &SecretFiles) -> Result<(), String> {
        let grpc_cluster = &self.options.grpc_cluster;
        let snapshots = Snapshots::compile(mesh, secrets, grpc_cluster)?;
        if mesh.listeners.is_empty() && mesh.services.is_empty() {
            // Allowed (an explicit empty list, e.g. `services: []`), but never quietly.
            tracing::warn!(
                config = %self.options.config.display(),
                "serving no listeners and no services: every proxy is sent an empty configuration"
            );
        }
        // A service with `endpoints` and no versions is one cluster named after it: its
        // version shows as `-`.
        self.load.set_versions(mesh.services.iter().flat_map(|svc| {
            let names: Vec<String> = if svc.versions.is_empty() {
                vec![crate::load_report::NO_VERSION.to_owned()]
            } else {
                svc.versions.iter().map(|v| v.name.clone()).collect()
            };
            svc.cluster_names()
                .into_iter()
                .zip(names)
                .map(|(cluster, version)| (cluster, svc.name.clone(), version))
        }));
        self.cache.update(|s| {
            // Node clusters a rule named before and no longer does fall back to the default.
            s.by_cluster.retain(|nc, _| nc == grpc_cluster);
            s.set(NodeKey::Default, Arc::new(snapshots.default));
            s.set(
                NodeKey::Cluster(grpc_cluster.clone()),
                Arc::new(snapshots.grpc),
            );
            for (nc, snapshot) in snapshots.by_cluster {
                s.set(NodeKey::Cluster(nc), Arc::new(snapshot));
            }
        });
        Ok(())
    }
}

/// The next revision of the shared state; never, without etcd.
async fn recv_opt(events: &mut Option<mpsc::Receiver<Stored>>) -> Option<Stored> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// The next change of leadership; never, without etcd.
async fn leadership_changed(
    leadership: &mut Option<tokio::sync::watch::Receiver<Option<Term>>>,
) -> Option<Option<Term>> {
    match leadership {
        Some(rx) => {
            rx.changed().await.ok()?;
            Some(*rx.borrow_and_update())
        }
        None => std::future::pending().await,
    }
}

/// Sleep until `at`; forever when there is none (the branch is disabled then anyway).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Fleet for Owner {
    fn weights(&self, service: &str) -> Option<Vec<(String, u32)>> {
        let svc = self
            .state
            .effective
            .services
            .iter()
            .find(|s| s.name == service)?;
        (!svc.versions.is_empty()).then(|| {
            svc.versions
                .iter()
                .map(|v| (v.name.clone(), v.weight))
                .collect()
        })
    }

    fn set_weights(&mut self, service: &str, weights: &[(String, u32)]) -> Result<(), ChangeError> {
        Owner::set_weights(self, service, weights, None, rollout::OP).map(|_| ())
    }

    /// The route configuration carries the weights: a node has them once it ACKed the
    /// route configuration version it is served now. Nodes whose snapshot has none of the
    /// service's clusters do not serve it.
    fn acks(&self, service: &str) -> std::collections::BTreeMap<String, NodeAck> {
        use legate_snapshot::ResourceKind;
        let clusters = self
            .state
            .effective
            .services
            .iter()
            .find(|s| s.name == service)
            .map(legate_model::Service::cluster_names)
            .unwrap_or_default();
        self.registry
            .acked(ResourceKind::RouteConfiguration)
            .into_iter()
            .filter_map(|(id, (cluster, acked))| {
                let node = envoy_types::pb::envoy::config::core::v3::Node {
                    id: id.clone(),
                    cluster,
                    ..Default::default()
                };
                let snapshot = self.cache.snapshot_for(&node)?;
                let served = snapshot.get(ResourceKind::Cluster);
                if !clusters.iter().any(|c| served.contains(c)) {
                    return None;
                }
                let routes = snapshot
                    .get(ResourceKind::RouteConfiguration)
                    .version_info();
                let current = acked.as_deref() == Some(routes);
                Some((id, NodeAck { acked, current }))
            })
            .collect()
    }

    fn load_since(&self, service: &str, since: Instant) -> crate::load_report::ServiceLoad {
        self.load.service_since(service, since)
    }

    fn rolled_back(&self, latency: Duration) {
        self.metrics.rollback_latency(latency);
    }

    fn decided(&self, verdict: rollout::Verdict) {
        self.metrics.rollout_decision(verdict);
    }
}

/// Serve the files alone when the stored admin changes, together, cannot be published:
/// every stored service is reported as not fitting.
fn fall_back_to_files(
    effective: &mut store::Effective,
    base: &Mesh,
    overlay: &Overlay,
    error: &str,
) {
    effective.mesh = base.clone();
    effective.conflicts = overlay
        .services
        .iter()
        .map(|(name, entry)| {
            let change = entry
                .latest()
                .map_or_else(|| "admin change".to_owned(), ToString::to_string);
            OverlayConflict {
                service: name.clone(),
                why: error.to_owned(),
                message: format!(
                    "service `{name}` from an {change} is not served: the mesh files with the \
                     stored admin changes do not compile ({error}); serving the files alone"
                ),
            }
        })
        .collect();
}

/// The snapshots one configuration compiles to: what [`ControlPlane`] publishes and what
/// `legate-cp --validate` reports.
#[derive(Debug)]
pub struct Snapshots {
    /// For proxy nodes no TLS client-certificate rule selects.
    pub default: NodeSnapshot,
    /// For the proxy nodes of each node cluster a client-certificate rule names.
    pub by_cluster: Vec<(String, NodeSnapshot)>,
    /// For the gRPC clients of `--grpc-cluster`.
    pub grpc: NodeSnapshot,
}

impl Snapshots {
    /// Compile `mesh` for proxies (default, and one snapshot per node cluster that a TLS
    /// client certificate rule names) and for gRPC clients (their cluster), checking the
    /// proxy resources with legate's own validation first.
    pub fn compile(
        mesh: &Mesh,
        secrets: &SecretFiles,
        grpc_cluster: &str,
    ) -> Result<Snapshots, String> {
        let node_clusters = mesh.client_certificate_node_clusters();
        if node_clusters.contains(grpc_cluster) {
            return Err(format!(
                "node cluster '{grpc_cluster}' is for gRPC clients, which are not served TLS \
                 services: it cannot have a client certificate rule"
            ));
        }
        let default = NodeSnapshot::from_resources(&Owner::proxy_resources(mesh, None, secrets)?);
        let mut by_cluster = Vec::with_capacity(node_clusters.len());
        for nc in node_clusters {
            let resources = Owner::proxy_resources(mesh, Some(&nc), secrets)?;
            by_cluster.push((nc, NodeSnapshot::from_resources(&resources)));
        }
        let grpc = NodeSnapshot::from_resources(&legate_model::compile_for_grpc(mesh));
        Ok(Snapshots {
            default,
            by_cluster,
            grpc,
        })
    }
}

/// What `legate-cp --validate` checked: the files, the stored admin changes, and the
/// snapshots they compile to.
#[derive(Debug)]
pub struct Validated {
    pub files: Vec<String>,
    /// Services the files define.
    pub file_services: usize,
    /// Services the stored admin overlay creates or overrides fields of, and its generation.
    pub overlay_services: usize,
    pub generation: u64,
    /// What a start would report without refusing to start: the overlay's migration and
    /// rebase notes, stored admin changes that do not fit the files (each naming both
    /// sources), and the mesh's warnings.
    pub notes: Vec<String>,
    pub conflicts: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshots: Snapshots,
}

impl ControlPlane {
    /// Everything [`ControlPlane::load`] checks, without starting, binding or writing
    /// anything: read, merge and validate the mesh files, read the stored rollouts, put the
    /// stored admin changes on
    /// top (in memory: a migration or rebase is reported, not saved), read the certificate
    /// files, and compile every snapshot. As at a start, stored admin changes that do not
    /// fit are reported in [`Validated::conflicts`] rather than failing.
    pub fn validate(options: &CpOptions) -> Result<Validated, StoreError> {
        let files = store::read_mesh_files(&options.config)?;
        let (base, sources) = store::load_mesh(&files.files)?;
        let (mut overlay, migrated) = match &options.shared {
            None => {
                let loaded = store::load_overlay(&options.data_dir, &base)?;
                // A rollout file a start would refuse is refused here too.
                Rollouts::load(&options.data_dir)?;
                loaded
            }
            Some(start) => {
                Rollouts::from_value(start.stored.state.rollouts.clone()).map_err(|e| {
                    StoreError::Other(format!("the rollouts in etcd do not check out: {e}"))
                })?;
                (start.stored.state.overlay.clone(), None)
            }
        };
        let mut notes: Vec<String> = migrated.into_iter().collect();
        notes.extend(
            store::rebase(&mut overlay, &base)
                .iter()
                .map(ToString::to_string),
        );
        let mut effective = store::effective(&base, &sources, &overlay);
        let base_dir = crate::secrets::base_dir(&options.config);
        let compile = |mesh: &Mesh| {
            SecretFiles::read(mesh, &base_dir)
                .map_err(|e| e.to_string())
                .and_then(|secrets| Snapshots::compile(mesh, &secrets, &options.grpc_cluster))
        };
        let snapshots = match compile(&effective.mesh) {
            Ok(snapshots) => snapshots,
            Err(e) if !overlay.services.is_empty() => {
                fall_back_to_files(&mut effective, &base, &overlay, &e);
                compile(&effective.mesh).map_err(StoreError::Other)?
            }
            Err(e) => return Err(StoreError::Other(e)),
        };
        let warnings = store::warnings(&effective.mesh, &sources, &overlay);
        Ok(Validated {
            files: files.paths(),
            file_services: base.services.len(),
            overlay_services: overlay.services.len(),
            generation: overlay.generation,
            notes,
            conflicts: effective.conflicts.into_iter().map(|c| c.message).collect(),
            warnings: warnings.iter().map(ToString::to_string).collect(),
            snapshots,
        })
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

/// A resource in Envoy's JSON, as legate's `/config_dump` shows it (`@type`, proto3 JSON
/// mapping, private keys and sensitive header values redacted), so what a node is served
/// can be compared with what it runs.
fn render(any: &envoy_types::pb::google::protobuf::Any) -> String {
    match legate_config_dump::any_json(any) {
        Ok(v) => v.to_string(),
        Err(e) => serde_json::json!({ "@type": any.type_url, "error": e.to_string() }).to_string(),
    }
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
        let caller = caller_of(&req);
        let req = req.into_inner();
        let source = if req.source.is_empty() {
            "request".to_owned()
        } else {
            req.source
        };
        let outcome = self.0.apply(&req.document, &source, caller).await?;
        Ok(Response::new(outcome.into()))
    }

    async fn set_weights(
        &self,
        req: Request<SetWeightsRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let caller = caller_of(&req);
        let req = req.into_inner();
        let mut weights: Vec<(String, u32)> = req.weights.into_iter().collect();
        weights.sort();
        let outcome = self.0.set_weights(&req.service, &weights, caller).await?;
        Ok(Response::new(outcome.into()))
    }

    async fn get_load(
        &self,
        req: Request<legate_proto::admin::GetLoadRequest>,
    ) -> Result<Response<legate_proto::admin::GetLoadResponse>, Status> {
        use legate_proto::admin as pb;
        let req = req.into_inner();
        let store = &self.0.load;
        let window = match req.window_ms {
            0 => store.window(),
            ms => Duration::from_millis(ms),
        };
        let services = if req.service.is_empty() {
            store.services()
        } else {
            vec![req.service]
        };
        let services = services
            .iter()
            .map(|s| {
                let l = store.service_window(s, window);
                pb::ServiceLoad {
                    service: l.service,
                    window_seconds: l.window_seconds,
                    versions: l
                        .versions
                        .into_iter()
                        .map(|v| pb::VersionLoad {
                            version: v.version,
                            cluster: v.cluster,
                            issued: v.load.issued,
                            succeeded: v.load.succeeded,
                            errored: v.load.errored,
                            dropped: v.load.dropped,
                            in_progress: v.in_progress,
                            requests_per_second: v.requests_per_second,
                            error_percent: v.error_percent,
                            p50_ms: v.p50_ms,
                            p99_ms: v.p99_ms,
                            nodes_reporting: u32::try_from(v.nodes_reporting).unwrap_or(u32::MAX),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::GetLoadResponse {
            services,
            reports_received: self.0.metrics.lrs_reports_received(),
        }))
    }

    async fn get_service(
        &self,
        req: Request<ServiceRequest>,
    ) -> Result<Response<GetServiceResponse>, Status> {
        let name = req.into_inner().name;
        let view = self
            .0
            .service(&name)
            .await?
            .ok_or_else(|| Status::not_found(ChangeError::UnknownService(name).to_string()))?;
        Ok(Response::new(GetServiceResponse {
            name: view.name,
            origin: view.origin.to_owned(),
            location: view.location.unwrap_or_default(),
            created: view.created.as_ref().map(Into::into),
            fields: view
                .fields
                .iter()
                .map(|f| PbFieldSource {
                    field: f.field.clone(),
                    value_json: if f.value.is_null() {
                        String::new()
                    } else {
                        f.value.to_string()
                    },
                    source: f.source.to_owned(),
                    location: f.location.clone().unwrap_or_default(),
                    change: f.change.as_ref().map(Into::into),
                    served: f.served,
                })
                .collect(),
            conflict: view.conflict.unwrap_or_default(),
            warnings: view.warnings,
        }))
    }

    async fn start_rollout(
        &self,
        req: Request<legate_proto::admin::StartRolloutRequest>,
    ) -> Result<Response<legate_proto::admin::RolloutResponse>, Status> {
        let caller = caller_of(&req);
        let req = req.into_inner();
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let request = StartRequest {
            to: req.to,
            from: nonempty(req.from),
            steps: req.steps,
            interval: req.interval,
            max_error_rate: rollout::Rate(req.max_error_rate),
            max_p99: nonempty(req.max_p99),
            min_requests: req.min_requests,
        };
        let status = self.0.start_rollout(&req.service, request, caller).await?;
        Ok(Response::new(legate_proto::admin::RolloutResponse {
            rollout: Some(pb_rollout(status)),
        }))
    }

    async fn steer_rollout(
        &self,
        req: Request<legate_proto::admin::SteerRolloutRequest>,
    ) -> Result<Response<legate_proto::admin::RolloutResponse>, Status> {
        let caller = caller_of(&req);
        let req = req.into_inner();
        let action = rollout::Action::parse(&req.action).ok_or_else(|| {
            Status::invalid_argument(format!(
                "action '{}': expected pause, resume, abort or promote",
                req.action.chars().take(100).collect::<String>()
            ))
        })?;
        let status = self.0.steer_rollout(&req.service, action, caller).await?;
        Ok(Response::new(legate_proto::admin::RolloutResponse {
            rollout: Some(pb_rollout(status)),
        }))
    }

    async fn get_rollouts(
        &self,
        req: Request<legate_proto::admin::GetRolloutsRequest>,
    ) -> Result<Response<legate_proto::admin::GetRolloutsResponse>, Status> {
        let service = req.into_inner().service;
        let list = self
            .0
            .rollouts((!service.is_empty()).then_some(service.as_str()))
            .await?;
        Ok(Response::new(legate_proto::admin::GetRolloutsResponse {
            rollouts: list.into_iter().map(pb_rollout).collect(),
        }))
    }

    async fn reset_service(
        &self,
        req: Request<ServiceRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let outcome = self.0.reset(&req.into_inner().name).await?;
        Ok(Response::new(outcome.into()))
    }

    async fn delete_service(
        &self,
        req: Request<ServiceRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let outcome = self.0.delete(&req.into_inner().name).await?;
        Ok(Response::new(outcome.into()))
    }
}

/// A rollout's status for the gRPC API: the key fields, and the whole as JSON.
fn pb_rollout(status: serde_json::Value) -> legate_proto::admin::Rollout {
    legate_proto::admin::Rollout {
        service: status["service"].as_str().unwrap_or_default().to_owned(),
        state: status["state"].as_str().unwrap_or_default().to_owned(),
        step: status["step"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        status_json: status.to_string(),
    }
}

/// Who made an admin call, as the admin server recorded it once authorized.
#[derive(Clone, Debug)]
pub struct CallerId(pub String);

fn caller_of<T>(req: &Request<T>) -> Option<String> {
    req.extensions().get::<CallerId>().map(|c| c.0.clone())
}

/// Weights from `{"v1": 90, "v2": 10}`, each read as a mesh file's weight is.
pub fn parse_weights(body: &[u8]) -> Result<Vec<(String, u32)>, String> {
    #[derive(serde::Deserialize)]
    struct Weight(#[serde(deserialize_with = "legate_model::units::weight")] u32);
    let map: HashMap<String, Weight> = serde_json::from_slice(body)
        .map_err(|e| format!("body must be a JSON object of version to weight: {e}"))?;
    let mut w: Vec<(String, u32)> = map.into_iter().map(|(v, Weight(w))| (v, w)).collect();
    w.sort();
    Ok(w)
}

/// Bind helper used by the binary.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
