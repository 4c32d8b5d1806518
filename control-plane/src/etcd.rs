//! Shared state in etcd, for several legate-cp replicas behind one address
//! (`--store etcd://HOST:PORT[,HOST:PORT...]`).
//!
//! # What is stored
//!
//! Under the prefix (`--etcd-prefix`, default `/legate/`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `state` | [`SharedState`] as JSON: the admin overlay and the rollouts | any replica, compare-and-swap on the revision it read |
//! | `leader` | the leading replica's id, attached to its lease | the election ([`Etcd::spawn_election`]) |
//! | `audit/<term>/<n>` | [`AuditEntry`] as JSON, one per write the leader made as leader | the leader, in the same transaction as the write |
//! | `load/<replica>` | the load reports a replica received lately ([`LoadBatch`]) | every replica, every [`RELAY_INTERVAL`] it received any |
//!
//! # How replicas agree
//!
//! One document holds everything admin changes and rollouts persist, so one
//! compare-and-swap decides between two replicas changing it at once: each write compares
//! the document's `mod_revision` with the revision its replica last read, and the loser
//! learns it ([`EtcdError::Conflict`]), reads again and retries or reports the conflict
//! (the state owner, [`crate::app`], decides which). Every replica follows the document
//! ([`Etcd::spawn_follower`]: a watch, and a read every [`PROBE_INTERVAL`] as a safety net and
//! health check) and compiles what it reads with the same mesh files, so every replica
//! publishes the same snapshots with the same content-hash versions: a proxy that fails over
//! from one replica to another is re-sent nothing.
//!
//! # The leader
//!
//! Singletons (the rollout controller's ticks, rollouts declared in the mesh files) run on
//! one replica, elected with a lease of `--leader-lease`: the replica whose transaction
//! creates the `leader` key (attached to its lease) leads until the lease ends. The key's
//! create revision is the *term*. The leader keeps its lease alive every third of the TTL,
//! and stops acting as leader as soon as it cannot show that the lease is alive: at the
//! send time of the oldest unanswered keep-alive plus the TTL, less a tenth, which is before
//! etcd can have let the lease expire and another replica win. Every write the leader makes
//! as leader is also fenced: the transaction compares the `leader` key's create revision
//! with its term, so a leader that was frozen past its lease writes nothing once it wakes.
//! Each fenced write puts an [`AuditEntry`] in the same transaction: the audit trail's
//! revisions show that terms never interleave.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use etcd_client::{
    Channel, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use legate_tls::files::ClientFiles;
use legate_xds::tls::{TlsConnector, XdsTls};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::load_report::LoadStore;
use crate::store::{Overlay, unix_ms};
use legate_telemetry::Gauge;

/// The format of [`SharedState`] this release reads and writes.
pub const STATE_FORMAT: u32 = 1;
/// Longest one etcd request may take before the replica treats etcd as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a follower reads the state even without a watch event, and so checks etcd.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a replica sends the load reports it received to the others.
pub const RELAY_INTERVAL: Duration = Duration::from_millis(500);
/// Largest value written: etcd refuses requests over 1.5 MiB by default
/// (`--max-request-bytes`), and the transaction carries a little more than the value.
pub const MAX_VALUE_BYTES: usize = 1_400_000;
/// Load reports relayed in one batch; more in one interval are left out (and counted).
const MAX_RELAYED_REPORTS: usize = 5_000;
/// How long audit entries are kept (their lease's TTL).
const AUDIT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Shortest lease the election accepts (etcd's own minimum is about 1.5 s on default
/// timings).
pub const MIN_LEASE: Duration = Duration::from_secs(2);

/// Where legate-cp keeps admin changes and rollouts (`--store`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// Files in the data directory: one machine.
    Dir,
    /// An etcd cluster: `host:port` endpoints.
    Etcd(Vec<String>),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    /// `dir`, or `etcd://HOST:PORT[,HOST:PORT...]`.
    fn from_str(s: &str) -> Result<StoreUrl, String> {
        if s == "dir" {
            return Ok(StoreUrl::Dir);
        }
        let Some(list) = s.strip_prefix("etcd://") else {
            return Err(format!(
                "`{s}`: expected `dir` or `etcd://HOST:PORT[,HOST:PORT...]`"
            ));
        };
        let mut endpoints = Vec::new();
        for endpoint in list.split(',') {
            let endpoint = endpoint.trim();
            let port = endpoint
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty() && !host.contains('/'))
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .filter(|port| *port != 0);
            if port.is_none() {
                return Err(format!(
                    "`{endpoint}` in `{s}`: each etcd endpoint is HOST:PORT (e.g. \
                     etcd-0.etcd:2379)"
                ));
            }
            endpoints.push(endpoint.to_owned());
        }
        if endpoints.len() > 16 {
            return Err(format!(
                "{} etcd endpoints: at most 16 are accepted",
                endpoints.len()
            ));
        }
        Ok(StoreUrl::Etcd(endpoints))
    }
}

/// TLS to etcd: the CA that signed etcd's certificates, and a client certificate when etcd
/// requires one (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `host:port`, one per member.
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    /// Every key starts with it; several meshes can share one etcd with different prefixes.
    pub prefix: String,
    /// This replica's name, in the `leader` key, the audit trail and the logs.
    pub replica: String,
    /// The leader's lease TTL: how long a dead leader holds the singletons.
    pub lease: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No answer in time, or a transport error: etcd is unreachable from this replica.
    #[error("etcd is unreachable: {0}")]
    Unavailable(String),
    /// The document changed since this replica read it.
    #[error(
        "the shared state changed on another replica (revision {actual}, this replica had read {expected})"
    )]
    Conflict { expected: i64, actual: i64 },
    /// A fenced write from a replica that no longer leads.
    #[error("this replica is no longer the leader (term {term})")]
    NotLeader { term: i64 },
    /// What etcd holds does not read, or what would be written is too large.
    #[error("{0}")]
    Invalid(String),
}

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        EtcdError::Unavailable(e.to_string())
    }
}

/// The shared document at `<prefix>state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedState {
    pub format: u32,
    pub overlay: Overlay,
    /// The rollouts, in [`crate::rollout::Rollouts::to_value`]'s form.
    pub rollouts: serde_json::Value,
}

impl SharedState {
    /// Parse a stored document; one that does not read is refused whole.
    pub fn parse(bytes: &[u8]) -> Result<SharedState, EtcdError> {
        let state: SharedState = serde_json::from_slice(bytes).map_err(|e| {
            EtcdError::Invalid(format!("the shared state in etcd does not read: {e}"))
        })?;
        if state.format != STATE_FORMAT {
            return Err(EtcdError::Invalid(format!(
                "the shared state in etcd has format {}, and this release reads format \
                 {STATE_FORMAT}: run the same release on every replica",
                state.format
            )));
        }
        Ok(state)
    }
}

/// The document as read, with the revision it was written at (its `mod_revision`).
#[derive(Clone, Debug)]
pub struct Stored {
    pub revision: i64,
    pub state: SharedState,
}

/// A leadership term: the `leader` key's create revision, and the leases involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub revision: i64,
    /// The lease the `leader` key is attached to.
    pub lease: i64,
    /// The lease audit entries of this term are attached to (kept 24 h).
    pub audit_lease: i64,
}

/// One write the leader made as leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub replica: String,
    pub term: i64,
    pub at_unix_ms: u64,
    /// What was written, e.g. `rollout payments: step 2 of 3`.
    pub what: String,
}

/// Whether etcd answers this replica, for `/ready` and `legate_cp_store_up`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    up: AtomicBool,
    /// Why it is down (empty when up).
    reason: Mutex<String>,
    /// `legate_cp_store_up`.
    gauge: std::sync::OnceLock<Arc<Gauge>>,
}

impl StoreHealth {
    pub fn up() -> Arc<StoreHealth> {
        let health = StoreHealth::default();
        health.up.store(true, Ordering::Relaxed);
        Arc::new(health)
    }

    /// Keep `gauge` at 1 while etcd answers, 0 while it does not.
    pub fn report_to(&self, gauge: Arc<Gauge>) {
        gauge.set(i64::from(self.is_up()));
        let _ = self.gauge.set(gauge);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why etcd is unreachable; `None` when it answers.
    pub fn down_reason(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        Some(
            self.reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    fn set(&self, result: Result<(), &EtcdError>) {
        match result {
            Ok(()) => {
                if let Some(g) = self.gauge.get() {
                    g.set(1);
                }
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("etcd answers again: admin changes are accepted");
                }
            }
            Err(e) => {
                *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = e.to_string();
                if let Some(g) = self.gauge.get() {
                    g.set(0);
                }
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "etcd is unreachable: serving the last configuration, refusing admin changes");
                }
            }
        }
    }
}

/// A connection to etcd, shared by the state owner (whose calls block its own thread, see
/// [`Etcd::read`]) and the tasks this module spawns on the main runtime.
pub struct Etcd {
    client: Client,
    runtime: tokio::runtime::Handle,
    options: EtcdOptions,
    pub health: Arc<StoreHealth>,
    leader: watch::Receiver<Option<Term>>,
    leader_tx: watch::Sender<Option<Term>>,
    audit_seq: AtomicU64,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.options.endpoints)
            .field("prefix", &self.options.prefix)
            .field("replica", &self.options.replica)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Connect (lazily: nothing is sent until the first request) on the current runtime,
    /// which runs every task and request of this connection.
    pub async fn connect(options: EtcdOptions) -> Result<Arc<Etcd>, EtcdError> {
        // A member cut off from the others answers nothing rather than old data.
        let connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = match &options.tls {
            None => {
                let endpoints: Vec<String> = options
                    .endpoints
                    .iter()
                    .map(|e| format!("http://{e}"))
                    .collect();
                timed(Client::connect(endpoints, Some(connect))).await?
            }
            Some(tls) => {
                let channel = tls_channel(&options.endpoints, tls)?;
                timed(Client::from_channel(Channel::Tonic(channel), Some(connect))).await?
            }
        };
        let (leader_tx, leader) = watch::channel(None);
        Ok(Arc::new(Etcd {
            client,
            runtime: tokio::runtime::Handle::current(),
            options,
            health: StoreHealth::up(),
            leader,
            leader_tx,
            audit_seq: AtomicU64::new(0),
        }))
    }

    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.options.prefix)
    }

    /// The current term, when this replica leads.
    pub fn term(&self) -> Option<Term> {
        *self.leader.borrow()
    }

    /// Changes of leadership.
    pub fn leadership(&self) -> watch::Receiver<Option<Term>> {
        self.leader.clone()
    }

    /// Run `fut` on the connection's runtime and wait for it on this thread, which must not
    /// be one of that runtime's (the state owner's thread is not).
    fn block<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, EtcdError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let result = tokio::time::timeout(REQUEST_TIMEOUT, fut)
                .await
                .unwrap_or_else(|_| Err(no_answer()));
            let _ = tx.send(result);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(EtcdError::Unavailable("the runtime stopped".to_owned())))
    }

    /// The shared state; `None` when no replica wrote it yet.
    pub async fn read_async(&self) -> Result<Option<Stored>, EtcdError> {
        let result = read_state(self.client.clone(), self.key("state")).await;
        self.health.set(result.as_ref().map(|_| ()));
        result
    }

    /// [`read_async`](Self::read_async), from the state owner's thread.
    pub fn read(&self) -> Result<Option<Stored>, EtcdError> {
        let result = self.block(read_state(self.client.clone(), self.key("state")));
        self.health.set(result.as_ref().map(|_| ()));
        result
    }

    /// Write the first shared state, when there is none yet (at start, before the state
    /// owner runs); `Conflict` when another replica was first.
    pub async fn create_async(&self, state: &SharedState) -> Result<i64, EtcdError> {
        let result = self.write_txn(state, 0, None)?.await;
        self.note_write(&result);
        result
    }

    /// Write `state` if the document is still at `expected` (0: absent). `fence`: the term
    /// this write is made under as leader, and what it is for the audit trail. Returns the
    /// document's new revision. From the state owner's thread.
    pub fn write(
        &self,
        state: &SharedState,
        expected: i64,
        fence: Option<(Term, String)>,
    ) -> Result<i64, EtcdError> {
        let result = self.block(self.write_txn(state, expected, fence)?);
        self.note_write(&result);
        result
    }

    /// A lost race or a lost term is an answer: etcd is up.
    fn note_write(&self, result: &Result<i64, EtcdError>) {
        match result {
            Ok(_) | Err(EtcdError::Conflict { .. } | EtcdError::NotLeader { .. }) => {
                self.health.set(Ok(()));
            }
            Err(e) => self.health.set(Err(e)),
        }
    }

    /// The compare-and-swap transaction of [`write`](Self::write), ready to run.
    fn write_txn(
        &self,
        state: &SharedState,
        expected: i64,
        fence: Option<(Term, String)>,
    ) -> Result<impl std::future::Future<Output = Result<i64, EtcdError>> + Send + 'static, EtcdError>
    {
        let bytes = serde_json::to_vec(state).map_err(|e| EtcdError::Invalid(e.to_string()))?;
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(EtcdError::Invalid(format!(
                "the shared state would be {} bytes, more than one etcd request carries ({} \
                 bytes): fewer admin changes, or move services into the mesh files",
                bytes.len(),
                MAX_VALUE_BYTES
            )));
        }
        let state_key = self.key("state");
        let leader_key = self.key("leader");
        let mut compares = vec![if expected == 0 {
            Compare::version(state_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(state_key.clone(), CompareOp::Equal, expected)
        }];
        let mut ops = vec![TxnOp::put(state_key.clone(), bytes, None)];
        let term = fence.as_ref().map(|(t, _)| t.revision);
        if let Some((t, what)) = fence {
            compares.push(Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                t.revision,
            ));
            ops.push(self.audit_op(t, what)?);
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(vec![
            TxnOp::get(state_key, None),
            TxnOp::get(leader_key, None),
        ]);
        let mut client = self.client.clone();
        Ok(async move {
            let response = timed(client.txn(txn)).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() {
                return Ok(revision);
            }
            let mut kvs = response.op_responses().into_iter().map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.create_revision())),
                _ => None,
            });
            let state = kvs.next().flatten();
            let leader = kvs.next().flatten();
            if let Some(term) = term
                && leader.map(|(_, created)| created) != Some(term)
            {
                return Err(EtcdError::NotLeader { term });
            }
            Err(EtcdError::Conflict {
                expected,
                actual: state.map_or(0, |(modified, _)| modified),
            })
        })
    }

    /// The put of one audit entry of `term`.
    fn audit_op(&self, term: Term, what: String) -> Result<TxnOp, EtcdError> {
        let n = self.audit_seq.fetch_add(1, Ordering::Relaxed);
        let entry = AuditEntry {
            replica: self.options.replica.clone(),
            term: term.revision,
            at_unix_ms: unix_ms(),
            what,
        };
        let value = serde_json::to_vec(&entry).map_err(|e| EtcdError::Invalid(e.to_string()))?;
        Ok(TxnOp::put(
            self.key(&format!("audit/{:020}/{n:010}", term.revision)),
            value,
            Some(PutOptions::new().with_lease(term.audit_lease)),
        ))
    }

    /// Follow the shared state: every revision newer than `known` is sent to `to` (by a
    /// watch, and by a read every [`PROBE_INTERVAL`], which also keeps [`StoreHealth`]).
    pub fn spawn_follower(self: &Arc<Self>, known: i64, to: mpsc::Sender<Stored>) {
        let etcd = self.clone();
        self.runtime
            .spawn(async move { etcd.follow(known, to).await });
    }

    async fn follow(self: Arc<Self>, mut known: i64, to: mpsc::Sender<Stored>) {
        let key = self.key("state");
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut client = self.client.clone();
            let from = WatchOptions::new().with_start_revision(known.saturating_add(1));
            let mut stream = timed(client.watch(key.clone(), Some(from))).await.ok();
            loop {
                let event = async {
                    match stream.as_mut() {
                        Some(s) => s.message().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    message = event => match message {
                        Ok(Some(response)) => {
                            if response.canceled() {
                                // Compacted past `known`, say: the probe reads the latest.
                                stream = None;
                                continue;
                            }
                            for e in response.events() {
                                let (EventType::Put, Some(kv)) = (e.event_type(), e.kv()) else {
                                    continue;
                                };
                                if kv.mod_revision() <= known {
                                    continue;
                                }
                                match SharedState::parse(kv.value()) {
                                    Ok(state) => {
                                        known = kv.mod_revision();
                                        if to.send(Stored { revision: known, state }).await.is_err() {
                                            return;
                                        }
                                    }
                                    Err(error) => tracing::error!(%error, revision = kv.mod_revision(), "shared state not applied"),
                                }
                            }
                        }
                        _ => {
                            stream = None;
                        }
                    },
                    _ = probe.tick() => {
                        match self.read_async().await {
                            Ok(Some(stored)) if stored.revision > known => {
                                known = stored.revision;
                                if to.send(stored).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(EtcdError::Invalid(error)) => {
                                tracing::error!(%error, "shared state not applied");
                            }
                            Err(_) => {}
                        }
                        if stream.is_none() {
                            // Watch again from what is known now.
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Campaign for leadership for as long as the runtime runs; [`leadership`](Self::leadership)
    /// tells the outcome.
    pub fn spawn_election(self: &Arc<Self>, gauge: Arc<Gauge>) {
        let etcd = self.clone();
        self.runtime.spawn(async move { etcd.elect(gauge).await });
    }

    async fn elect(self: Arc<Self>, gauge: Arc<Gauge>) {
        let ttl = self.options.lease.max(MIN_LEASE);
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let margin = ttl / 10;
        let tick = (ttl / 3).min(Duration::from_secs(1));
        let leader_key = self.key("leader");
        let mut client = self.client.clone();
        loop {
            let granted_at = Instant::now();
            let Ok(lease) = timed(client.lease_grant(ttl_secs, None)).await else {
                tokio::time::sleep(tick).await;
                continue;
            };
            let lease = lease.id();
            let Ok((mut keeper, mut answers)) = timed(client.lease_keep_alive(lease)).await else {
                tokio::time::sleep(tick).await;
                continue;
            };
            let audit_ttl = i64::try_from(AUDIT_RETENTION.as_secs()).unwrap_or(86_400);
            let Ok(audit_lease) = timed(client.lease_grant(audit_ttl, None)).await else {
                let _ = timed(client.lease_revoke(lease)).await;
                tokio::time::sleep(tick).await;
                continue;
            };
            let audit_lease = audit_lease.id();
            let mut valid_until = granted_at + ttl - margin;
            let mut unanswered: VecDeque<Instant> = VecDeque::new();
            let mut leading: Option<Term> = None;
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let lost = loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if unanswered.len() < 8 && keeper.keep_alive().await.is_ok() {
                            unanswered.push_back(Instant::now());
                        }
                        if leading.is_none() {
                            match self.campaign(&mut client, &leader_key, lease, audit_lease).await {
                                Ok(Some(term)) => {
                                    tracing::info!(replica = %self.options.replica, term = term.revision, "this replica is now the leader: it runs the rollouts");
                                    leading = Some(term);
                                    gauge.set(1);
                                    let _ = self.leader_tx.send(Some(term));
                                }
                                Ok(None) => {}
                                Err(error) => tracing::debug!(%error, "campaign for leadership failed"),
                            }
                        }
                    }
                    answer = answers.message() => match answer {
                        Ok(Some(a)) if a.ttl() > 0 => {
                            tracing::trace!(ttl = a.ttl(), unanswered = unanswered.len(), "lease kept alive");
                            if let Some(sent) = unanswered.pop_front() {
                                let granted = Duration::from_secs(u64::try_from(a.ttl()).unwrap_or(0));
                                valid_until = valid_until.max(sent + granted.saturating_sub(margin));
                            }
                        }
                        Ok(Some(_)) => break "etcd says the lease has expired",
                        _ => break "the lease keep-alive stream ended",
                    },
                    () = tokio::time::sleep_until(valid_until.into()) => {
                        break "the lease could not be renewed in time (etcd unreachable?)";
                    }
                }
            };
            if leading.take().is_some() {
                gauge.set(0);
                let _ = self.leader_tx.send(None);
                tracing::warn!(replica = %self.options.replica, reason = lost, "this replica is no longer the leader");
            } else {
                tracing::debug!(reason = lost, "election lease lost");
            }
            // Let another replica take over now rather than at the lease's end, if etcd
            // can be told.
            let _ = timed(client.lease_revoke(lease)).await;
        }
    }

    /// One attempt to create the `leader` key; the term when this replica holds it (also
    /// when an earlier attempt created it and its answer was lost). `audit_lease`: the lease
    /// for the term's audit entries, granted before.
    async fn campaign(
        &self,
        client: &mut Client,
        leader_key: &str,
        lease: i64,
        audit_lease: i64,
    ) -> Result<Option<Term>, EtcdError> {
        let txn = Txn::new()
            .when(vec![Compare::version(leader_key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                leader_key,
                self.options.replica.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else(vec![TxnOp::get(leader_key, None)]);
        let response = timed(client.txn(txn)).await?;
        let revision = if response.succeeded() {
            response.header().map_or(0, |h| h.revision())
        } else {
            let held = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .filter(|kv| kv.lease() == lease)
                    .map(|kv| kv.create_revision()),
                _ => None,
            });
            match held {
                Some(revision) => revision,
                None => return Ok(None),
            }
        };
        let term = Term {
            revision,
            lease,
            audit_lease,
        };
        // The first entry of the term, fenced like every other; the term is this replica's
        // whether or not it is written.
        let audit = Txn::new()
            .when(vec![Compare::create_revision(
                leader_key,
                CompareOp::Equal,
                revision,
            )])
            .and_then(vec![self.audit_op(term, "elected".to_owned())?]);
        if let Err(error) = timed(client.txn(audit)).await {
            tracing::warn!(%error, "the election was not written to the audit trail");
        }
        Ok(Some(term))
    }

    /// Share the load reports this replica receives with the others, and record theirs in
    /// `load`: every replica sees the whole fleet's load, so the leader judges rollouts on
    /// it wherever the proxies report.
    pub fn spawn_load_relay(self: &Arc<Self>, load: Arc<LoadStore>) {
        let (tx, rx) = mpsc::channel(MAX_RELAYED_REPORTS);
        load.relay_to(tx);
        let etcd = self.clone();
        let sender = load.clone();
        self.runtime
            .spawn(async move { etcd.send_load(rx, sender).await });
        let etcd = self.clone();
        self.runtime
            .spawn(async move { etcd.receive_load(load).await });
    }

    async fn send_load(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<LoadStatsRequest>,
        load: Arc<LoadStore>,
    ) {
        let key = self.key(&format!("load/{}", self.options.replica));
        let mut client = self.client.clone();
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = LoadBatch {
                reports: vec![first],
            };
            let until = tokio::time::Instant::now() + RELAY_INTERVAL;
            let mut dropped = 0u64;
            while let Ok(Some(report)) = tokio::time::timeout_at(until, rx.recv()).await {
                if batch.reports.len() < MAX_RELAYED_REPORTS {
                    batch.reports.push(report);
                } else {
                    dropped += 1;
                }
            }
            let mut bytes = batch.encode_to_vec();
            while bytes.len() > MAX_VALUE_BYTES && batch.reports.len() > 1 {
                let keep = batch.reports.len() / 2;
                dropped += (batch.reports.len() - keep) as u64;
                batch.reports.truncate(keep);
                bytes = batch.encode_to_vec();
            }
            load.relay_dropped(dropped);
            if let Err(error) = timed(client.put(key.clone(), bytes, None)).await {
                tracing::debug!(%error, "load reports not relayed");
            }
        }
    }

    async fn receive_load(self: Arc<Self>, load: Arc<LoadStore>) {
        let prefix = self.key("load/");
        let own = self.key(&format!("load/{}", self.options.replica));
        loop {
            let mut client = self.client.clone();
            let watch =
                timed(client.watch(prefix.clone(), Some(WatchOptions::new().with_prefix())));
            let Ok(mut stream) = watch.await else {
                tokio::time::sleep(PROBE_INTERVAL).await;
                continue;
            };
            while let Ok(Some(response)) = stream.message().await {
                for e in response.events() {
                    let (EventType::Put, Some(kv)) = (e.event_type(), e.kv()) else {
                        continue;
                    };
                    if kv.key() == own.as_bytes() {
                        continue;
                    }
                    match LoadBatch::decode(kv.value()) {
                        Ok(batch) => {
                            for report in batch.reports.iter().take(MAX_RELAYED_REPORTS) {
                                if let Some(node) = &report.node {
                                    load.record_relayed(&node.id, &report.cluster_stats);
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, key = %String::from_utf8_lossy(kv.key()), "relayed load reports do not decode")
                        }
                    }
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

/// Load reports relayed between replicas: Envoy's own `LoadStatsRequest`s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoadBatch {
    #[prost(message, repeated, tag = "1")]
    pub reports: Vec<LoadStatsRequest>,
}

/// A relayed report: `node`'s cluster stats as its replica received them.
pub fn relayed_report(
    node: &str,
    stats: &[envoy_types::pb::envoy::config::endpoint::v3::ClusterStats],
) -> LoadStatsRequest {
    LoadStatsRequest {
        node: Some(Node {
            id: node.to_owned(),
            ..Node::default()
        }),
        cluster_stats: stats.to_vec(),
    }
}

/// Why a request got no answer in time.
fn no_answer() -> EtcdError {
    EtcdError::Unavailable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
}

/// One etcd request, bounded by [`REQUEST_TIMEOUT`].
async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| no_answer())?
        .map_err(EtcdError::from)
}

async fn read_state(mut client: Client, key: String) -> Result<Option<Stored>, EtcdError> {
    let response = timed(client.get(key, None::<GetOptions>)).await?;
    let Some(kv) = response.kvs().first() else {
        return Ok(None);
    };
    Ok(Some(Stored {
        revision: kv.mod_revision(),
        state: SharedState::parse(kv.value())?,
    }))
}

/// A channel to etcd over TLS: legate-xds's connector (tokio-rustls, the files re-read when
/// they change), dialling the members in turn; a connection that fails or dies (HTTP/2
/// keep-alive) is replaced by one to the next member.
fn tls_channel(
    endpoints: &[String],
    tls: &EtcdTls,
) -> Result<tonic::transport::Channel, EtcdError> {
    let identity = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(EtcdError::Invalid(
                "--etcd-cert and --etcd-key go together".to_owned(),
            ));
        }
    };
    let settings = XdsTls {
        files: ClientFiles {
            ca: Some(tls.ca.clone()),
            identity,
            alpn: vec![b"h2".to_vec()],
        },
        server_name: None,
    };
    let connector = TlsConnector::from_settings(&settings)
        .map_err(|e| EtcdError::Invalid(format!("etcd tls: {e}")))?;
    let first = endpoints
        .first()
        .ok_or_else(|| EtcdError::Invalid("no etcd endpoint".to_owned()))?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{first}"))
        .map_err(|e| EtcdError::Invalid(format!("etcd endpoint {first}: {e}")))?
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(REQUEST_TIMEOUT)
        .keep_alive_while_idle(true);
    let members = Members {
        endpoints: endpoints.to_vec().into(),
        next: Arc::default(),
        connector,
    };
    Ok(endpoint.connect_with_connector_lazy(members))
}

/// Dials the etcd members in turn, starting after the one dialled last.
#[derive(Clone)]
struct Members {
    endpoints: Arc<[String]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    connector: TlsConnector,
}

impl tower_service::Service<http::Uri> for Members {
    type Response = <TlsConnector as tower_service::Service<http::Uri>>::Response;
    type Error = EtcdError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, EtcdError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), EtcdError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.endpoints.len();
            let start = this.next.fetch_add(1, Ordering::Relaxed);
            let mut errors = Vec::new();
            for i in 0..n {
                let endpoint = &this.endpoints[(start + i) % n];
                let uri: http::Uri = format!("https://{endpoint}")
                    .parse()
                    .map_err(|e| EtcdError::Invalid(format!("etcd endpoint {endpoint}: {e}")))?;
                let mut connector = this.connector.clone();
                match tokio::time::timeout(REQUEST_TIMEOUT, connector.call(uri)).await {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => errors.push(format!(
                        "{endpoint}: no handshake within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    )),
                }
            }
            Err(EtcdError::Unavailable(errors.join("; ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        assert_eq!("dir".parse::<StoreUrl>(), Ok(StoreUrl::Dir));
        assert_eq!(
            "etcd://127.0.0.1:2379,etcd-1.etcd:2379".parse::<StoreUrl>(),
            Ok(StoreUrl::Etcd(vec![
                "127.0.0.1:2379".to_owned(),
                "etcd-1.etcd:2379".to_owned()
            ]))
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://:2379",
            "etcd://h:0",
            "http://h:1",
            "etcd://h:1/x",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_document_of_another_format_is_refused_whole() {
        let err = SharedState::parse(br#"{"format":2,"overlay":{"format":2},"rollouts":null}"#)
            .expect_err("format 2");
        assert!(err.to_string().contains("format 2"), "{err}");
        assert!(SharedState::parse(b"{").is_err());
        let ok = SharedState::parse(br#"{"format":1,"overlay":{"format":2},"rollouts":null}"#)
            .expect("format 1");
        assert_eq!(ok.overlay, Overlay::default());
    }
}
