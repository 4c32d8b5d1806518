//! The ADS stream loop: connect, subscribe, validate, ACK or NACK, apply, cache, reconnect.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use legate_snapshot::ResourceKind;
use legate_telemetry::{Counter, Family, Gauge, Registry};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::cache::{self, CachedConfig, CachedResource, CachedType};
use crate::error::{ResourceError, RestoreError, UpdateError};
use crate::state::{Received, Stored, XdsState};
use crate::{Mode, SnapshotSink, XdsOptions};

/// gRPC code Envoy puts in a NACK's `error_detail` (INTERNAL).
const NACK_CODE: i32 = 13;

/// What `/config_dump` shows of the client.
#[derive(Clone, Debug, serde::Serialize)]
pub struct XdsStatus {
    pub connected: bool,
    pub server: Option<String>,
    pub mode: &'static str,
    /// Where the live configuration came from: `xds`, `cache`, `static` or `none`.
    pub source: &'static str,
    /// While the disk cache serves (`source` is `cache`): why, and how old it is. The
    /// configuration is stale until a control plane answers; then this is `null` again.
    pub cache: Option<CacheServed>,
    pub types: Vec<crate::state::TypeStatus>,
    /// Why the last connection or stream to a control plane failed (kept while connected
    /// again, for the record).
    pub last_error: Option<LastError>,
}

/// The disk cache as the live configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CacheServed {
    /// Why the cache serves: `unreachable` (every control plane failed before answering)
    /// or `initial_fetch_timeout` (one accepted the stream but had not answered in time).
    pub reason: &'static str,
    /// The cached configuration's version (its types' versions combined).
    pub version: String,
    /// When the cache file was written, by the clock of the legate that wrote it.
    pub written_at_unix_ms: u64,
}

/// Why a cold start turned to the disk cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColdStart {
    /// Every control plane failed before answering: refused, not resolved, a failed TLS
    /// handshake, a stream that ended first.
    Unreachable,
    /// A control plane is connected but sent nothing within the initial fetch timeout.
    FetchTimeout,
}

impl ColdStart {
    fn as_str(self) -> &'static str {
        match self {
            ColdStart::Unreachable => "unreachable",
            ColdStart::FetchTimeout => "initial_fetch_timeout",
        }
    }
}

/// What became of an attempt to serve the disk cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheOutcome {
    Served,
    /// No cache file: the normal first start.
    Missing,
    /// Refused or not applicable; already logged with its reason.
    Refused,
}

/// A failed connection or stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LastError {
    pub server: String,
    /// The error and its causes.
    pub message: String,
    /// For TLS failures, the cause (`unknown-ca`, `expired`, `name-mismatch`, ...).
    pub tls_cause: Option<&'static str>,
    pub at_unix_ms: u64,
}

struct Metrics {
    connected: Arc<Gauge>,
    updates: Arc<Family<Counter>>,
    since_update: Arc<Gauge>,
    cache_failures: Arc<Family<Counter>>,
    restarts: Arc<Counter>,
    tls_failures: Arc<Family<Counter>>,
    serving_cache: Arc<Gauge>,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        let connected = registry
            .family::<Gauge>(
                "legate_xds_connected",
                "Whether an ADS stream to a control plane is up (1) or not (0).",
                &[],
            )
            .get_or_create(&[]);
        let since_update = registry
            .family::<Gauge>(
                "legate_xds_seconds_since_last_update",
                "Seconds since the last accepted xDS update (-1 before the first).",
                &[],
            )
            .get_or_create(&[]);
        since_update.set(-1);
        let restarts = registry
            .family::<Counter>(
                "legate_xds_stream_restarts_total",
                "ADS streams that ended and were retried.",
                &[],
            )
            .get_or_create(&[]);
        let serving_cache = registry
            .family::<Gauge>(
                "legate_xds_serving_cache",
                "Whether the live configuration is the disk cache (1), stale until a control \
                 plane answers, or not (0).",
                &[],
            )
            .get_or_create(&[]);
        Metrics {
            serving_cache,
            connected,
            updates: registry.family(
                "legate_xds_updates_total",
                "xDS responses accepted or rejected, by type.",
                &["type_url", "result"],
            ),
            since_update,
            cache_failures: registry.family(
                "legate_xds_cache_load_failures_total",
                "Disk cache files refused at start, by reason.",
                &["reason"],
            ),
            restarts,
            tls_failures: registry.family(
                "legate_xds_tls_failures_total",
                "Connections to a control plane that failed for a TLS reason, by cause.",
                &["cause"],
            ),
        }
    }
}

/// Shared between the client task, the cold-start task and the admin server.
struct Shared {
    options: XdsOptions,
    sink: Arc<dyn SnapshotSink>,
    status: Mutex<XdsStatus>,
    metrics: Metrics,
    /// Serialises snapshot applications from the stream and from the cache.
    apply_lock: tokio::sync::Mutex<()>,
    /// Set once a snapshot from the control plane is live; the cache is then never used.
    applied_from_xds: AtomicBool,
    /// Told by the stream loop when every server failed before answering, so the cold start
    /// serves the cache at once instead of waiting out the initial fetch timeout.
    unreachable: tokio::sync::Notify,
    last_update: Mutex<Option<Instant>>,
    ready: tokio::sync::watch::Sender<bool>,
    /// Writes the disk cache off the runtime's threads, in order (when a cache is set).
    cache_writer: Option<cache::Writer>,
    /// The dynamic resources of the configuration that is live, for `/config_dump`.
    active: Mutex<Arc<ActiveResources>>,
}

impl Shared {
    fn set_status(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Whether any configuration (from xDS, the cache or the static resources) is live.
    fn serving(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .source
            != "none"
    }

    /// Record `state` as the one live: called once the data plane applied it.
    fn set_active(&self, state: &XdsState) {
        let mut active = ActiveResources::default();
        for kind in ResourceKind::WARM_ORDER {
            let t = state.get(kind);
            if !t.version_info.is_empty() {
                active.versions.push((kind, t.version_info.clone()));
            }
            active
                .resources
                .extend(t.resources.values().map(|s| legate_config_dump::Resource {
                    kind,
                    origin: legate_config_dump::Origin::Dynamic {
                        version: s.version.clone(),
                    },
                    last_updated: Some(s.last_updated),
                    any: s.any.clone(),
                }));
        }
        *self.active.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(active);
    }
}

/// The resources received from control planes (or restored from the cache) that the live
/// configuration was built from, as `/config_dump` lists them under `dynamic_active_*`.
#[derive(Clone, Debug, Default)]
pub struct ActiveResources {
    /// `version_info` of the last accepted response, per type.
    pub versions: Vec<(ResourceKind, String)>,
    pub resources: Vec<legate_config_dump::Resource>,
}

/// A running client.
#[derive(Clone)]
pub struct XdsHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsHandle").finish_non_exhaustive()
    }
}

impl XdsHandle {
    pub fn status(&self) -> XdsStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The dynamic resources of the live configuration (none before the first).
    pub fn active_resources(&self) -> Arc<ActiveResources> {
        self.shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves once a configuration (from the control plane or the cache) is live.
    pub async fn wait_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// Start the client: the stream loop, the cold-start fallback and the staleness gauge.
pub fn start(options: XdsOptions, sink: Arc<dyn SnapshotSink>, registry: &Registry) -> XdsHandle {
    let (ready, _) = tokio::sync::watch::channel(false);
    // The task ends with the client, after the last write it was given.
    let cache_writer = options
        .cache_dir
        .clone()
        .map(|dir| cache::Writer::spawn(dir).0);
    let shared = Arc::new(Shared {
        status: Mutex::new(XdsStatus {
            connected: false,
            server: None,
            mode: options.mode.as_str(),
            source: "none",
            cache: None,
            types: Vec::new(),
            last_error: None,
        }),
        metrics: Metrics::new(registry),
        options,
        sink,
        apply_lock: tokio::sync::Mutex::new(()),
        applied_from_xds: AtomicBool::new(false),
        unreachable: tokio::sync::Notify::new(),
        last_update: Mutex::new(None),
        ready,
        cache_writer,
        active: Mutex::new(Arc::default()),
    });
    tokio::spawn(run(shared.clone()));
    tokio::spawn(cold_start(shared.clone()));
    tokio::spawn(staleness(shared.clone()));
    XdsHandle { shared }
}

async fn staleness(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let last = *shared
            .last_update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = last {
            shared
                .metrics
                .since_update
                .set(i64::try_from(t.elapsed().as_secs()).unwrap_or(i64::MAX));
        }
    }
}

/// Serve something while no control plane has delivered a configuration: the disk cache as
/// soon as every control plane has failed before answering (there is nothing to wait for),
/// otherwise once the initial fetch timeout passes (a connected control plane may still
/// answer); at the timeout, without a usable cache, the static resources alone (if any).
/// Whatever serves, a control plane's configuration replaces it when it arrives; once one is
/// live, nothing here runs (`applied_from_xds`, checked under `apply_lock`).
async fn cold_start(shared: Arc<Shared>) {
    let timeout = tokio::time::sleep(shared.options.initial_fetch_timeout);
    tokio::pin!(timeout);
    // The cache is read at most once: a refused one is logged once, not again at the timeout.
    let mut cache_tried = false;
    tokio::select! {
        () = &mut timeout => {}
        () = shared.unreachable.notified() => {
            if let Some(dir) = shared.options.cache_dir.clone() {
                let _guard = shared.apply_lock.lock().await;
                if shared.applied_from_xds.load(Ordering::Acquire) {
                    return;
                }
                cache_tried = true;
                match serve_cache(&shared, dir, ColdStart::Unreachable).await {
                    CacheOutcome::Served => return,
                    CacheOutcome::Missing => tracing::warn!(
                        "no control plane is reachable and there is no xDS cache to serve: \
                         not ready until a control plane answers"
                    ),
                    CacheOutcome::Refused => {}
                }
            }
            timeout.await;
        }
    }
    let _guard = shared.apply_lock.lock().await;
    if shared.applied_from_xds.load(Ordering::Acquire) {
        return;
    }
    let mut cache_missing = shared.options.cache_dir.is_none();
    if !cache_tried && let Some(dir) = shared.options.cache_dir.clone() {
        match serve_cache(&shared, dir, ColdStart::FetchTimeout).await {
            CacheOutcome::Served => return,
            CacheOutcome::Missing => cache_missing = true,
            CacheOutcome::Refused => {}
        }
    }
    let s = &shared.options.static_resources;
    if s.listeners.is_empty() && s.clusters.is_empty() {
        if cache_missing {
            tracing::warn!(
                timeout = ?shared.options.initial_fetch_timeout,
                "no control plane answered within the initial fetch timeout and there is no \
                 xDS cache to serve: not ready until a control plane answers"
            );
        }
        return;
    }
    let state = XdsState::new(s.clone(), shared.options.initial_fetch_timeout);
    let built = blocking(move || state.build(&state.assemble())).await;
    let applied: Result<(), RestoreError> = match built {
        Ok(snapshot) => shared
            .sink
            .apply(Arc::new(snapshot))
            .await
            .map_err(Into::into),
        Err(e) => Err(e.into()),
    };
    match applied {
        Ok(()) => {
            tracing::warn!("no control plane answered: serving the static resources alone");
            shared.set_status(|st| st.source = "static");
            let _ = shared.ready.send(true);
        }
        Err(error) => tracing::error!(%error, "cannot apply the static resources"),
    }
}

/// Load and apply the cache. The caller holds `apply_lock` and has checked that nothing
/// from a control plane is live. A refused cache is counted and logged here, once.
async fn serve_cache(
    shared: &Arc<Shared>,
    dir: std::path::PathBuf,
    why: ColdStart,
) -> CacheOutcome {
    let node_id = shared.options.node.id.clone();
    let path = cache::file_path(&dir);
    let cached = match tokio::task::spawn_blocking(move || cache::load(&dir, &node_id)).await {
        Ok(Ok(c)) => c,
        Ok(Err(cache::CacheError::Missing { .. })) => return CacheOutcome::Missing,
        Ok(Err(error)) => {
            shared
                .metrics
                .cache_failures
                .get_or_create(&[error.reason()])
                .inc();
            tracing::error!(%error, "xDS cache refused; waiting for a control plane");
            return CacheOutcome::Refused;
        }
        Err(error) => {
            tracing::error!(%error, "xDS cache load task failed");
            return CacheOutcome::Refused;
        }
    };
    let written_at_unix_ms = unix_ms(cached.written_at);
    let age_s = SystemTime::now()
        .duration_since(cached.written_at)
        .unwrap_or_default()
        .as_secs();
    let mut state = XdsState::new(
        shared.options.static_resources.clone(),
        shared.options.initial_fetch_timeout,
    );
    let (state, built) = blocking(move || {
        let built = restore(&mut state, &cached).and_then(|()| {
            // Everything referenced was cached with it except private secrets, which the
            // cache never holds: what needs them is left out until the control plane sends
            // them.
            let assembled = state.assemble_now();
            log_left_out(&assembled);
            state.build(&assembled).map_err(RestoreError::from)
        });
        (state, built)
    })
    .await;
    let snapshot = match built {
        Ok(s) => s,
        Err(error) => {
            shared
                .metrics
                .cache_failures
                .get_or_create(&["invalid"])
                .inc();
            tracing::error!(
                %error,
                path = %path.display(),
                "xDS cache refused whole: its resources do not validate; waiting for a control plane"
            );
            return CacheOutcome::Refused;
        }
    };
    match shared.sink.apply(Arc::new(snapshot)).await {
        Ok(()) => {
            let version = state.combined_version();
            match why {
                ColdStart::Unreachable => tracing::warn!(
                    %version,
                    age_s,
                    "no control plane is reachable: serving the last good configuration from \
                     the xDS cache until one answers"
                ),
                ColdStart::FetchTimeout => tracing::warn!(
                    %version,
                    age_s,
                    timeout = ?shared.options.initial_fetch_timeout,
                    "no control plane answered within the initial fetch timeout: serving the \
                     last good configuration from the xDS cache until one answers"
                ),
            }
            shared.metrics.serving_cache.set(1);
            shared.set_status(|s| {
                s.source = "cache";
                s.cache = Some(CacheServed {
                    reason: why.as_str(),
                    version,
                    written_at_unix_ms,
                });
                s.types = state.status();
            });
            shared.set_active(&state);
            let _ = shared.ready.send(true);
            CacheOutcome::Served
        }
        Err(error) => {
            tracing::error!(%error, "cannot apply the cached configuration");
            CacheOutcome::Refused
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a time before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Load a cache file into a fresh state, as accepted resources.
fn restore(state: &mut XdsState, cached: &CachedConfig) -> Result<(), RestoreError> {
    for t in &cached.types {
        let Some(kind) = ResourceKind::from_type_url(&t.type_url) else {
            return Err(RestoreError::UnknownType(t.type_url.clone()));
        };
        let mut resources = BTreeMap::new();
        for r in &t.resources {
            let received = Received::decode(kind, &r.resource)?;
            let name = received.name.clone();
            resources.insert(name, received.check(r.version.clone())?);
        }
        let p = state.propose_unchecked(kind, resources, t.version_info.clone());
        state.commit(p);
    }
    state.resubscribe(ResourceKind::RouteConfiguration);
    state.resubscribe(ResourceKind::ClusterLoadAssignment);
    state.resubscribe(ResourceKind::Secret);
    Ok(())
}

/// Say which clusters and listeners are not served for want of a secret.
fn log_left_out(assembled: &crate::state::Assembled) {
    for (kind, name, secret) in &assembled.left_out {
        tracing::warn!(
            kind = kind.as_str(),
            name,
            secret,
            "left out of the configuration: its secret has not arrived"
        );
    }
}

/// The stream loop: one stream at a time, failing over across servers with backoff.
async fn run(shared: Arc<Shared>) {
    let opts = &shared.options;
    let mut state = XdsState::new(opts.static_resources.clone(), opts.initial_fetch_timeout);
    if opts.servers.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(opts.backoff_base, opts.backoff_max);
    let mut idx = 0usize;
    // Servers that failed in a row without answering; a full round of them means no control
    // plane can be reached, and the cold start need not wait for one.
    let mut unanswered = 0usize;
    loop {
        let url = opts.servers[idx % opts.servers.len()].clone();
        let mut session = Session {
            shared: &shared,
            state: &mut state,
            url: url.clone(),
            received: false,
            started: Instant::now(),
            warming_deadline: None,
            initial_done: false,
            initial_timeout_passed: false,
            seen: Default::default(),
            last_resubscribe: BTreeMap::new(),
        };
        let result = match opts.mode {
            Mode::Sotw => session.run_sotw().await,
            Mode::Delta => session.run_delta().await,
        };
        let received = session.received;
        shared.metrics.connected.set(0);
        shared.set_status(|s| {
            s.connected = false;
            s.server = None;
        });
        match result {
            Ok(()) => tracing::info!(server = %url, "ADS stream closed by the server"),
            Err(error) => stream_failed(&shared, &url, &error),
        }
        shared.metrics.restarts.inc();
        if received {
            // The stream worked: start the backoff over and retry the same server first.
            backoff.reset();
            unanswered = 0;
        } else {
            idx += 1;
            unanswered = unanswered.saturating_add(1);
            if unanswered == opts.servers.len() {
                shared.unreachable.notify_one();
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Logs a failed connection or stream with its whole cause, and records it for `/ready` and
/// `/config_dump`.
fn stream_failed(shared: &Shared, url: &str, error: &StreamError) {
    let mut message = crate::tls::error_chain(error);
    let mut tls_cause = crate::tls::tls_cause(error);
    // A refusal that arrived as an alert after the handshake reaches us only as a closed
    // connection: the connection recorded it.
    let recorded = shared.options.tls.as_ref().and_then(|t| t.take_failure());
    if let (None, Some(failure)) = (tls_cause, recorded) {
        message = format!(
            "{message}: tls: {} [{}]",
            failure.cause,
            failure.cause.as_str()
        );
        if !message.contains(&failure.detail) {
            message = format!("{message}: {}", failure.detail);
        }
        tls_cause = Some(failure.cause);
    }
    match tls_cause {
        Some(cause) => {
            shared
                .metrics
                .tls_failures
                .get_or_create(&[cause.as_str()])
                .inc();
            tracing::warn!(server = %url, tls_cause = cause.as_str(), error = %message, "ADS stream failed: {cause}");
        }
        None => tracing::warn!(server = %url, error = %message, "ADS stream failed"),
    }
    let at_unix_ms = unix_ms(SystemTime::now());
    shared.set_status(|s| {
        s.last_error = Some(LastError {
            server: url.to_owned(),
            message,
            tls_cause: tls_cause.map(legate_tls::HandshakeFailure::as_str),
            at_unix_ms,
        });
    });
}

/// A channel to the control plane at `url` with the xDS client's settings: connect timeout,
/// keepalive, and for `https://` its TLS (client certificate and CA), so every stream to a
/// control plane (ADS, load reports) speaks with the same identity.
pub(crate) async fn dial(opts: &XdsOptions, url: &str) -> Result<Channel, StreamError> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_timeout(opts.keepalive_interval.max(Duration::from_secs(1)))
        .keep_alive_while_idle(true);
    if endpoint.uri().scheme_str() == Some("https") {
        let connector = opts.tls.clone().ok_or(StreamError::NoTls)?;
        // Only failures of this session's connection explain its end.
        drop(connector.take_failure());
        return Ok(endpoint.connect_with_connector(connector).await?);
    }
    Ok(endpoint.connect().await?)
}

/// Reconnection back-off: legate's one exponential back-off with full jitter
/// ([`legate_snapshot::RetryBackOff::delay`]), counting attempts since the last stream that
/// worked.
pub(crate) struct Backoff {
    policy: legate_snapshot::RetryBackOff,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            policy: legate_snapshot::RetryBackOff { base, max },
            attempt: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        wait
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    // The status itself is shown as the next link of the chain (`tls::error_chain`).
    #[error("stream error")]
    Status(#[from] tonic::Status),
    #[error("an https:// control plane needs TLS settings")]
    NoTls,
    #[error("request queue to the control plane is full")]
    QueueFull,
    /// A response larger than the client accepts (gRPC reports it as `OUT_OF_RANGE`).
    #[error(
        "a response exceeded the client's limit of {limit} bytes \
         (raise --xds-max-message-size or xds.max_message_size)"
    )]
    TooLarge {
        limit: usize,
        #[source]
        status: tonic::Status,
    },
}

impl StreamError {
    /// A failure of the response stream: a message over the decode limit is told apart, so
    /// the operator learns which setting to change.
    fn from_response(status: tonic::Status, limit: usize) -> StreamError {
        if status.code() == tonic::Code::OutOfRange {
            StreamError::TooLarge { limit, status }
        } else {
            StreamError::Status(status)
        }
    }
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    state: &'a mut XdsState,
    url: String,
    received: bool,
    started: Instant,
    warming_deadline: Option<Instant>,
    /// Whether the first full configuration (CDS and LDS answered) arrived on this client.
    initial_done: bool,
    /// Whether this session's initial fetch timeout has passed (it fires once).
    initial_timeout_passed: bool,
    seen: std::collections::BTreeSet<ResourceKind>,
    /// Subscription changes (added, removed) not yet sent, for delta.
    last_resubscribe: BTreeMap<ResourceKind, (Vec<String>, Vec<String>)>,
}

impl Session<'_> {
    async fn channel(&self) -> Result<Channel, StreamError> {
        dial(&self.shared.options, &self.url).await
    }

    fn connected(&self) {
        self.shared.metrics.connected.set(1);
        let url = self.url.clone();
        self.shared.set_status(|s| {
            s.connected = true;
            s.server = Some(url);
        });
        tracing::info!(server = %self.url, mode = self.shared.options.mode.as_str(), "ADS stream up");
    }

    fn names(&self, kind: ResourceKind) -> Vec<String> {
        if kind.is_wildcard() {
            Vec::new()
        } else {
            self.state.get(kind).subscribed.iter().cloned().collect()
        }
    }

    fn subscribed_anything(&self, kind: ResourceKind) -> bool {
        kind.is_wildcard() || !self.state.get(kind).subscribed.is_empty()
    }

    // ---- state of the world -------------------------------------------------------------

    async fn run_sotw(&mut self) -> Result<(), StreamError> {
        let channel = self.channel().await?;
        let limit = self.shared.options.max_message_size;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(limit);
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        let mut first = true;
        for kind in ResourceKind::WARM_ORDER {
            if !self.subscribed_anything(kind) {
                continue;
            }
            // On reconnect, the last accepted version with an empty nonce, as Envoy does.
            let req = DiscoveryRequest {
                version_info: self.state.get(kind).version_info.clone(),
                node: first.then(|| self.shared.options.node.clone()),
                resource_names: self.names(kind),
                type_url: kind.type_url().to_owned(),
                ..Default::default()
            };
            first = false;
            send(&tx, req)?;
        }
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.connected();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                msg = stream.message() => match msg.map_err(|s| StreamError::from_response(s, limit))? {
                    Some(resp) => {
                        self.received = true;
                        self.on_sotw(&tx, resp).await?;
                    }
                    None => return Ok(()),
                },
                () = sleep_until(deadline) => self.on_deadline().await,
            }
        }
    }

    async fn on_sotw(
        &mut self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        mut resp: DiscoveryResponse,
    ) -> Result<(), StreamError> {
        let Some(kind) = ResourceKind::from_type_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of a type legate does not consume");
            return Ok(());
        };
        // Decoding and checking every resource is the bulk of a large update: off the
        // runtime's threads (`off_thread`).
        let resources = std::mem::take(&mut resp.resources);
        let version_info = resp.version_info.clone();
        let (proposed, errors) = off_thread(self.state, move |state| {
            let mut errors = Vec::new();
            let mut incoming = BTreeMap::new();
            let t = state.get(kind);
            let mut names = HashSet::new();
            for any in &resources {
                let received = match Received::decode(kind, any) {
                    Ok(received) => received,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let name = received.name.clone();
                if !names.insert(name.clone()) {
                    errors.push(ResourceError::Duplicate { kind, name });
                    continue;
                }
                // RDS and EDS: a resource not asked for is ignored, not checked.
                if !kind.is_wildcard() && !t.subscribed.contains(&name) {
                    continue;
                }
                match received.check(version_info.clone()) {
                    Ok(stored) => drop(incoming.insert(name, stored)),
                    Err(e) => errors.push(e),
                }
            }
            // LDS and CDS responses are the whole set; RDS and EDS responses carry the
            // requested resources, and one that is absent is not removed by omission.
            let proposed = if kind.is_wildcard() {
                incoming
            } else {
                let mut all = t.resources.clone();
                all.extend(incoming);
                all
            };
            (proposed, errors)
        })
        .await;
        let outcome = if errors.is_empty() {
            self.accept(
                kind,
                proposed,
                resp.version_info.clone(),
                resp.nonce.clone(),
            )
            .await
        } else {
            Err(UpdateError::Resources(errors))
        };
        match outcome {
            Ok(changed) => {
                send(
                    tx,
                    DiscoveryRequest {
                        version_info: resp.version_info,
                        resource_names: self.names(kind),
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        ..Default::default()
                    },
                )?;
                for k in changed {
                    let t = self.state.get(k);
                    send(
                        tx,
                        DiscoveryRequest {
                            version_info: t.version_info.clone(),
                            resource_names: self.names(k),
                            type_url: k.type_url().to_owned(),
                            response_nonce: t.nonce.clone(),
                            ..Default::default()
                        },
                    )?;
                }
            }
            Err(error) => {
                let message = error.to_string();
                self.reject(kind, &resp.version_info, &resp.nonce, &message);
                send(
                    tx,
                    DiscoveryRequest {
                        version_info: self.state.get(kind).version_info.clone(),
                        resource_names: self.names(kind),
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        error_detail: Some(RpcStatus {
                            code: NACK_CODE,
                            message,
                            details: Vec::new(),
                        }),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    // ---- delta -------------------------------------------------------------------------

    async fn run_delta(&mut self) -> Result<(), StreamError> {
        let channel = self.channel().await?;
        let limit = self.shared.options.max_message_size;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(limit);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        let mut first = true;
        for kind in ResourceKind::WARM_ORDER {
            if !self.subscribed_anything(kind) {
                continue;
            }
            let t = self.state.get(kind);
            let req = DeltaDiscoveryRequest {
                node: first.then(|| self.shared.options.node.clone()),
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: self.names(kind),
                initial_resource_versions: t
                    .resources
                    .iter()
                    .map(|(n, s)| (n.clone(), s.version.clone()))
                    .collect(),
                ..Default::default()
            };
            first = false;
            send(&tx, req)?;
        }
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.connected();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                msg = stream.message() => match msg.map_err(|s| StreamError::from_response(s, limit))? {
                    Some(resp) => {
                        self.received = true;
                        self.on_delta(&tx, resp).await?;
                    }
                    None => return Ok(()),
                },
                () = sleep_until(deadline) => self.on_deadline().await,
            }
        }
    }

    async fn on_delta(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        mut resp: DeltaDiscoveryResponse,
    ) -> Result<(), StreamError> {
        let Some(kind) = ResourceKind::from_type_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of a type legate does not consume");
            return Ok(());
        };
        // As for state of the world: decoded and checked off the runtime's threads.
        let resources = std::mem::take(&mut resp.resources);
        let removed = std::mem::take(&mut resp.removed_resources);
        let (proposed, errors) = off_thread(self.state, move |state| {
            let mut errors = Vec::new();
            let t = state.get(kind);
            let mut proposed = t.resources.clone();
            for r in &resources {
                let Some(any) = &r.resource else {
                    errors.push(ResourceError::NoBody {
                        kind,
                        name: r.name.clone(),
                    });
                    continue;
                };
                let received = match Received::decode(kind, any) {
                    Ok(received) => received,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let name = received.name.clone();
                if !r.name.is_empty() && r.name != name {
                    errors.push(ResourceError::NamedInside {
                        kind,
                        outer: r.name.clone(),
                        inner: name,
                    });
                    continue;
                }
                if !kind.is_wildcard() && !t.subscribed.contains(&name) {
                    continue;
                }
                match received.check(r.version.clone()) {
                    Ok(stored) => drop(proposed.insert(name, stored)),
                    Err(e) => errors.push(e),
                }
            }
            for name in &removed {
                proposed.remove(name);
            }
            (proposed, errors)
        })
        .await;
        let outcome = if errors.is_empty() {
            self.accept(
                kind,
                proposed,
                resp.system_version_info.clone(),
                resp.nonce.clone(),
            )
            .await
        } else {
            Err(UpdateError::Resources(errors))
        };
        match outcome {
            Ok(changed) => {
                send(
                    tx,
                    DeltaDiscoveryRequest {
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        ..Default::default()
                    },
                )?;
                for (k, added, removed) in changed
                    .into_iter()
                    .filter_map(|k| self.pending_changes(k).map(|(a, r)| (k, a, r)))
                {
                    send(
                        tx,
                        DeltaDiscoveryRequest {
                            type_url: k.type_url().to_owned(),
                            resource_names_subscribe: added,
                            resource_names_unsubscribe: removed,
                            ..Default::default()
                        },
                    )?;
                }
            }
            Err(error) => {
                let message = error.to_string();
                self.reject(kind, &resp.system_version_info, &resp.nonce, &message);
                send(
                    tx,
                    DeltaDiscoveryRequest {
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        error_detail: Some(RpcStatus {
                            code: NACK_CODE,
                            message,
                            details: Vec::new(),
                        }),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    /// The initial fetch timeout or a warming deadline passed: apply what there is.
    async fn on_deadline(&mut self) {
        self.warming_deadline = None;
        if !self.initial_done
            && !self.initial_timeout_passed
            && Instant::now() >= self.started + self.shared.options.initial_fetch_timeout
        {
            self.initial_timeout_passed = true;
            if !self.seen.is_empty() {
                tracing::info!("initial fetch timeout: applying the configuration received so far");
            }
        }
        if let Err(error) = self.try_apply().await {
            tracing::error!(%error, "cannot apply the configuration after the fetch timeout");
        }
    }

    fn pending_changes(&mut self, kind: ResourceKind) -> Option<(Vec<String>, Vec<String>)> {
        let (added, removed) = self.last_resubscribe.remove(&kind)?;
        Some((added, removed))
    }

    // ---- shared by both variants ---------------------------------------------------------

    /// Validate and commit an update of `kind`, re-derive subscriptions, and apply the
    /// result unless something is still warming. Returns the kinds whose subscription
    /// changed. On error nothing changed and the message is the NACK text.
    async fn accept(
        &mut self,
        kind: ResourceKind,
        proposed: BTreeMap<String, Stored>,
        version_info: String,
        nonce: String,
    ) -> Result<Vec<ResourceKind>, UpdateError> {
        // Checking the whole set builds a candidate snapshot: off the runtime's threads.
        let proposal = off_thread(self.state, move |state| {
            state.propose(kind, proposed, version_info, nonce)
        })
        .await?;
        let dependents: &[ResourceKind] = match kind {
            ResourceKind::Listener => &[ResourceKind::Secret, ResourceKind::RouteConfiguration],
            ResourceKind::Cluster => &[ResourceKind::ClusterLoadAssignment, ResourceKind::Secret],
            _ => &[],
        };
        let saved_kind = self.state.save(kind);
        let saved_dependents: Vec<_> = dependents
            .iter()
            .map(|d| (*d, self.state.save(*d)))
            .collect();
        self.state.commit(proposal);
        let mut changed = Vec::new();
        let mut resubscribed = Vec::new();
        for &dep in dependents {
            let (added, removed) = self.state.resubscribe(dep);
            if !added.is_empty() || !removed.is_empty() {
                changed.push(dep);
                resubscribed.push((dep, added, removed));
            }
        }
        self.seen.insert(kind);
        if let Err(error) = self.try_apply().await {
            // Not live (a listener could not bind, say): undo and NACK.
            self.state.restore(kind, saved_kind);
            for (dep, t) in saved_dependents {
                self.state.restore(dep, t);
            }
            return Err(error);
        }
        for (dep, added, removed) in resubscribed {
            self.last_resubscribe.insert(dep, (added, removed));
        }
        self.shared
            .metrics
            .updates
            .get_or_create(&[kind.type_url(), "accepted"])
            .inc();
        *self
            .shared
            .last_update
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.shared.metrics.since_update.set(0);
        let types = self.state.status();
        self.shared.set_status(|s| s.types = types);
        Ok(changed)
    }

    fn reject(&mut self, kind: ResourceKind, version: &str, nonce: &str, message: &str) {
        tracing::warn!(type_url = kind.type_url(), version, %message, "rejecting xDS update");
        self.state.reject(
            kind,
            version.to_owned(),
            nonce.to_owned(),
            message.to_owned(),
        );
        self.shared
            .metrics
            .updates
            .get_or_create(&[kind.type_url(), "rejected"])
            .inc();
        let types = self.state.status();
        self.shared.set_status(|s| s.types = types);
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self.warming_deadline {
            Some(d) => Some(d),
            None if !self.initial_done && !self.initial_timeout_passed => {
                Some(self.started + self.shared.options.initial_fetch_timeout)
            }
            None => None,
        }
    }

    /// Apply the assembled state if it is complete. Before the first configuration from a
    /// control plane is live, wait for both CDS and LDS, so a proxy that serves from its
    /// cache (or its static resources) is not left with half a configuration. Only when
    /// nothing serves at all does the initial fetch timeout make what arrived so far live,
    /// as Envoy does; a session that received nothing leaves the cold start to serve.
    async fn try_apply(&mut self) -> Result<(), UpdateError> {
        if !self.initial_done {
            let both = self.seen.contains(&ResourceKind::Cluster)
                && self.seen.contains(&ResourceKind::Listener);
            let partial_after_timeout =
                self.initial_timeout_passed && !self.seen.is_empty() && !self.shared.serving();
            if !both
                && !partial_after_timeout
                && !self.shared.applied_from_xds.load(Ordering::Acquire)
            {
                return Ok(());
            }
            self.initial_done = true;
        }
        // Assembling decodes every accepted resource and building validates them all: at
        // 10,000 clusters that is the longest step of an update, so it runs off the
        // runtime's threads, and so does dropping the decoded set.
        let built = off_thread(self.state, |state| {
            let assembled = state.assemble();
            if !assembled.warming.is_empty() {
                return Err((
                    state.next_warming_deadline(&assembled.warming),
                    assembled.warming,
                ));
            }
            log_left_out(&assembled);
            Ok(state.build(&assembled))
        })
        .await;
        let snapshot = match built {
            Err((deadline, warming)) => {
                self.warming_deadline = deadline;
                tracing::debug!(?warming, "waiting for referenced resources");
                return Ok(());
            }
            Ok(built) => {
                // Nothing warms any more: a deadline set while something did would only
                // rebuild the same snapshot when it passed.
                self.warming_deadline = None;
                built?
            }
        };
        let (version, clusters) = (snapshot.version.clone(), snapshot.clusters.len());
        let _guard = self.shared.apply_lock.lock().await;
        self.shared.sink.apply(Arc::new(snapshot)).await?;
        tracing::info!(%version, clusters, "applied xDS configuration");
        if !self.shared.applied_from_xds.swap(true, Ordering::AcqRel) && self.shared.serving() {
            tracing::info!(%version, "the control plane's configuration replaces the one served at start");
        }
        self.shared.metrics.serving_cache.set(0);
        let _ = self.shared.ready.send(true);
        self.shared.set_status(|s| {
            s.source = "xds";
            s.cache = None;
        });
        self.shared.set_active(self.state);
        drop(_guard);
        self.write_cache();
        Ok(())
    }

    /// Hands the state just applied to the cache writer, which writes it off the runtime's
    /// threads and never lets an older state overtake a newer one (`cache::Writer`).
    fn write_cache(&self) {
        let Some(writer) = &self.shared.cache_writer else {
            return;
        };
        let config = CachedConfig {
            node_id: self.shared.options.node.id.clone(),
            types: ResourceKind::WARM_ORDER
                .into_iter()
                .map(|k| {
                    let t = self.state.get(k);
                    CachedType {
                        type_url: k.type_url().to_owned(),
                        version_info: t.version_info.clone(),
                        // Private key material never goes to disk (docs/xds.md).
                        resources: t
                            .resources
                            .iter()
                            .filter(|(_, s)| !s.private)
                            .map(|(name, s)| CachedResource {
                                name: name.clone(),
                                version: s.version.clone(),
                                resource: (*s.any).clone(),
                            })
                            .collect(),
                    }
                })
                .collect(),
            written_at: SystemTime::now(),
        };
        writer.submit(config);
    }
}

/// Runs `work` on tokio's blocking pool and waits for it, so CPU-heavy steps (decoding and
/// validating thousands of resources, building a snapshot) never hold a runtime thread: with
/// `--concurrency 1` the only one, which also serves every request. A panic in `work` goes on
/// in the caller, as if it had run inline.
async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(work).await {
        Ok(out) => out,
        // Cancelled only when the runtime shuts down, which drops the caller too.
        Err(error) => std::panic::resume_unwind(
            error
                .try_into_panic()
                .unwrap_or_else(|error| Box::new(error.to_string())),
        ),
    }
}

/// [`blocking`] with the client state lent to `work`: it is moved out for the duration and
/// put back, and the stream loop awaits it, so nothing sees the empty stand-in.
async fn off_thread<R: Send + 'static>(
    state: &mut XdsState,
    work: impl FnOnce(&mut XdsState) -> R + Send + 'static,
) -> R {
    let stand_in = XdsState::new(legate_snapshot::Resources::default(), Duration::ZERO);
    let mut lent = std::mem::replace(state, stand_in);
    let (back, out) = blocking(move || {
        let out = work(&mut lent);
        (lent, out)
    })
    .await;
    *state = back;
    out
}

fn send<T>(tx: &mpsc::Sender<T>, req: T) -> Result<(), StreamError> {
    tx.try_send(req).map_err(|_| StreamError::QueueFull)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for i in 0..40u32 {
            let ceiling = Duration::from_millis(100u64 << i.min(3));
            let d = b.next();
            assert!(d <= ceiling, "{i}: {d:?} vs {ceiling:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
        // Full jitter: some first waits fall below half the ceiling (an "equal jitter"
        // draw from [ceiling/2, ceiling] never does; 200 uniform draws all miss with odds
        // 2^-200).
        let firsts: Vec<Duration> = (0..200)
            .map(|_| {
                b.reset();
                b.next()
            })
            .collect();
        assert!(
            firsts.iter().any(|d| *d < Duration::from_millis(50)),
            "{firsts:?}"
        );
    }
}
