//! legate's data plane: listeners, routing, the cluster manager, load balancing and
//! upstream connection pools.
//!
//! [`Dataplane::apply`] takes a validated [`Snapshot`] and makes it live in one step: new
//! listeners are bound first (a bind failure rejects the whole snapshot), clusters that
//! persist keep their pools and host state, and the new view is published through one
//! `ArcSwap`. A request loads that view once and keeps it to its end. Listeners that
//! disappear or move stop accepting and drain their connections in the background.

mod access_log;
mod body;
mod cluster;
mod connector;
mod deadline;
mod error;
mod filters;
mod forward;
mod grpc;
mod hash;
mod headers;
pub mod lb;
mod listener;
mod load;
mod metrics;
mod pool;
mod resilience;
mod service;
mod tls;
mod trace;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use legate_snapshot::{Listener, RouteConfig, Snapshot};
use legate_telemetry::{ByCodeClass, Counter, Registry};

pub use body::{BodyTimeout, BoxError, Downstream, Held, RequestBody, ResponseBody};
pub use cluster::ClusterRuntime;
pub use error::ProxyError;
pub use load::LoadCounts;
pub use metrics::Metrics;

use listener::{ConnLimit, ListenerHandle};

/// What a listener serves: its definition and its resolved routes.
#[derive(Debug)]
pub(crate) struct ListenerView {
    pub(crate) config: Arc<Listener>,
    pub(crate) routes: Arc<RouteConfig>,
    pub(crate) requests: ByCodeClass,
    /// gRPC requests by `grpc-status`.
    pub(crate) grpc_requests: Arc<grpc::ByGrpcStatus>,
    /// The listener's access logs with their writers; empty when it logs nothing.
    pub(crate) logs: access_log::Logs,
    /// The HCM's tracing, when configured and its collector cluster is known.
    pub(crate) tracer: Option<Arc<trace::Tracer>>,
    /// The HTTP filters before the router, resolved against `routes`.
    pub(crate) filters: filters::Chain,
}

/// Everything a request needs, swapped as one unit.
#[derive(Debug)]
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub clusters: HashMap<Arc<str>, Arc<ClusterRuntime>>,
    pub(crate) listeners: HashMap<Arc<str>, Arc<ListenerView>>,
}

pub(crate) struct Shared {
    pub(crate) active: ArcSwap<Active>,
    pub(crate) metrics: Metrics,
    /// The process's budget for request bodies kept for retries.
    pub(crate) retry_buffers: Arc<body::BufferBudget>,
    /// Each downstream connection's budget for the same, in bytes.
    pub(crate) connection_retry_buffer_limit: u64,
    local_replies: Vec<(ProxyError, Arc<Counter>)>,
    /// The certificates legate presents, for their expiry gauges.
    expiry: Arc<tls::expiry::Expiry>,
    /// Downstream connections open on all listeners, and `--max-connections`.
    pub(crate) connections: Arc<ConnLimit>,
    /// Set when the process starts draining: answers tell clients to reconnect elsewhere.
    pub(crate) draining: AtomicBool,
    /// Access log files and their writer threads.
    pub(crate) access_logs: access_log::Sinks,
}

impl Shared {
    /// A fresh retry buffer budget for a new downstream connection.
    pub(crate) fn connection_retry_buffers(&self) -> Arc<body::BufferBudget> {
        body::BufferBudget::new(self.connection_retry_buffer_limit, None)
    }

    pub(crate) fn local_reply(&self, e: ProxyError) -> &Counter {
        self.local_replies
            .iter()
            .find(|(k, _)| *k == e)
            .map(|(_, c)| &**c)
            .unwrap_or(&self.local_replies[0].1)
    }
}

/// Why a snapshot could not be made live. The text carries the cause (it is also the NACK
/// message), so the cause is not repeated as the error's `source`: an error chain printed
/// whole (`{:#}`) would show it twice.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("listener '{name}': cannot bind {address}: {error}")]
    Bind {
        name: String,
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("listener '{name}': route configuration '{route}' is missing")]
    MissingRoutes { name: String, route: String },
    /// TLS material could not be read or used (a missing file, a key that does not match
    /// its certificate, a bad CA bundle).
    #[error("{kind} '{name}': {error}")]
    Tls {
        kind: &'static str,
        name: String,
        error: legate_tls::TlsError,
    },
}

/// Settings of the data plane that do not come from xDS.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    /// How long a stopped listener lets its connections finish; those still open then are
    /// closed.
    pub drain_timeout: Duration,
    /// Request bodies kept in memory for retries, all requests together, in bytes
    /// ([`DEFAULT_RETRY_BUFFER_LIMIT`]). A body that does not fit is sent once, unretried.
    pub retry_buffer_limit: u64,
    /// The same for the requests of one downstream connection
    /// ([`DEFAULT_CONNECTION_RETRY_BUFFER_LIMIT`]).
    pub connection_retry_buffer_limit: u64,
    /// Downstream connections open at once over all listeners (`--max-connections`); more
    /// are closed as soon as they are accepted. `None`: no limit.
    pub max_connections: Option<u64>,
}

/// Default of [`DataplaneOptions::retry_buffer_limit`]: 256 MiB.
pub const DEFAULT_RETRY_BUFFER_LIMIT: u64 = 256 * 1024 * 1024;
/// Default of [`DataplaneOptions::connection_retry_buffer_limit`]: 16 MiB, sixteen
/// requests at the default route limit (1 MiB).
pub const DEFAULT_CONNECTION_RETRY_BUFFER_LIMIT: u64 = 16 * 1024 * 1024;

/// The running data plane.
pub struct Dataplane {
    shared: Arc<Shared>,
    options: DataplaneOptions,
    listeners: tokio::sync::Mutex<HashMap<Arc<str>, ListenerHandle>>,
    applied: AtomicBool,
    /// Export pipelines for traces, reused across snapshots while their collector holds.
    tracers: std::sync::Mutex<trace::Tracers>,
    span_stats: trace::SpanStats,
    /// Token buckets of the live configuration, kept across snapshots that keep them.
    buckets: std::sync::Mutex<filters::Buckets>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").finish_non_exhaustive()
    }
}

impl Dataplane {
    pub fn new(registry: Arc<Registry>, options: DataplaneOptions) -> Self {
        let metrics = Metrics::new(registry);
        let local_replies = ProxyError::ALL
            .into_iter()
            .map(|e| (e, metrics.local_replies.get_or_create(&[e.code()])))
            .collect();
        let active = Active {
            snapshot: Arc::new(Snapshot::empty()),
            clusters: HashMap::new(),
            listeners: HashMap::new(),
        };
        let metrics_dropped = metrics.access_log_dropped.clone();
        let expiry = tls::expiry::Expiry::new(metrics.tls_certificate_expiry.clone());
        let span_stats = trace::SpanStats::new(&metrics.tracing_spans);
        let retry_buffers = body::BufferBudget::new(
            options.retry_buffer_limit,
            Some(metrics.retry_buffer_bytes.get_or_create(&[])),
        );
        Dataplane {
            shared: Arc::new(Shared {
                active: ArcSwap::from_pointee(active),
                retry_buffers,
                connection_retry_buffer_limit: options.connection_retry_buffer_limit,
                metrics,
                local_replies,
                expiry,
                connections: Arc::new(ConnLimit::new(options.max_connections)),
                draining: AtomicBool::new(false),
                access_logs: access_log::Sinks::new(metrics_dropped),
            }),
            options,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            applied: AtomicBool::new(false),
            tracers: std::sync::Mutex::new(trace::Tracers::default()),
            buckets: std::sync::Mutex::new(filters::Buckets::default()),
            span_stats,
        }
    }

    /// The live view.
    pub fn active(&self) -> Arc<Active> {
        self.shared.active.load_full()
    }

    /// Whether a snapshot has been applied and the proxy is not draining (the proxy is
    /// ready).
    pub fn is_ready(&self) -> bool {
        self.applied.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Whether [`Dataplane::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Start the process drain, as Envoy's does: not ready any more, listeners keep
    /// accepting, HTTP/1.1 answers carry `Connection: close` and HTTP/2 connections get a
    /// GOAWAY. [`Dataplane::shutdown`] then stops the listeners.
    pub async fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for h in self.listeners.lock().await.values() {
            h.drain();
        }
    }

    /// Reopen every access log file before its next line (SIGUSR1, after logrotate moved
    /// the files).
    pub fn reopen_access_logs(&self) {
        self.shared.access_logs.reopen();
    }

    /// Bound addresses of the live listeners, by name.
    pub async fn listener_addresses(&self) -> Vec<(Arc<str>, SocketAddr)> {
        let listeners = self.listeners.lock().await;
        let mut out: Vec<_> = listeners
            .iter()
            .map(|(name, h)| (name.clone(), h.local_addr))
            .collect();
        out.sort();
        out
    }

    /// Make `snapshot` live. On error nothing changes.
    pub async fn apply(&self, snapshot: Arc<Snapshot>) -> Result<(), ApplyError> {
        let mut listeners = self.listeners.lock().await;
        let old = self.shared.active.load_full();

        // Tracers first: a listener's view holds its own.
        let mut tracers = self
            .tracers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update(&snapshot, &self.span_stats);
        // Resolve every listener's routes before touching anything.
        let mut chains = filters::Builder::new(
            &self
                .buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Arc::downgrade(&self.shared),
            self.shared.metrics.oauth2_token_fetches.clone(),
        );
        let mut views = HashMap::new();
        for l in &snapshot.listeners {
            let routes = snapshot
                .route_config_for(l)
                .ok_or_else(|| ApplyError::MissingRoutes {
                    name: l.name.to_string(),
                    route: match &l.routes {
                        legate_snapshot::RouteSource::Rds(n) => n.to_string(),
                        legate_snapshot::RouteSource::Inline(rc) => rc.name.to_string(),
                    },
                })?
                .clone();
            let requests = ByCodeClass::new(&self.shared.metrics.downstream_requests, &[&l.name]);
            let rate_limited = self
                .shared
                .metrics
                .local_rate_limited
                .get_or_create(&[&l.name]);
            let filters = chains.chain(l, &routes, &rate_limited);
            views.insert(
                l.name.clone(),
                Arc::new(ListenerView {
                    config: l.clone(),
                    routes,
                    requests,
                    grpc_requests: Arc::new(grpc::ByGrpcStatus::new(
                        &self.shared.metrics.grpc_requests,
                        &l.name,
                    )),
                    logs: self.shared.access_logs.resolve(&l.access_logs),
                    tracer: tracers.remove(&l.name),
                    filters,
                }),
            );
        }

        // TLS material, read off the request path; a failure leaves the old state untouched.
        let mut cluster_tls = HashMap::new();
        for c in snapshot.clusters.values() {
            let Some(spec) = &c.tls else { continue };
            let unchanged = old
                .clusters
                .get(&c.name)
                .and_then(|rt| rt.tls.as_ref())
                .is_some_and(|t| *t.spec() == **spec);
            if unchanged {
                continue;
            }
            let current =
                tls::upstream::prepare(spec.clone(), c.name.clone(), self.shared.expiry.clone())
                    .await
                    .map_err(|error| ApplyError::Tls {
                        kind: "cluster",
                        name: c.name.to_string(),
                        error,
                    })?;
            cluster_tls.insert(c.name.clone(), current);
        }
        let mut listener_tls = HashMap::new();
        for l in &snapshot.listeners {
            let Some(spec) = &l.tls else { continue };
            let existing = listeners
                .get(&l.name)
                .and_then(|h| h.tls.load_full())
                .filter(|rt| *rt.spec == **spec);
            let runtime = match existing {
                Some(rt) => rt,
                None => tls::downstream::prepare(
                    spec.clone(),
                    l.name.clone(),
                    self.shared.expiry.clone(),
                    &self.shared.metrics,
                )
                .await
                .map_err(|error| ApplyError::Tls {
                    kind: "listener",
                    name: l.name.to_string(),
                    error,
                })?,
            };
            listener_tls.insert(l.name.clone(), runtime);
        }

        // Bind what is new or moved; a failure leaves the old state untouched. A listener
        // re-created on an address that a listener going away holds (a new codec, a rename)
        // takes that socket over: without SO_REUSEPORT a second bind would fail.
        let new_names: std::collections::HashSet<&Arc<str>> =
            snapshot.listeners.iter().map(|l| &l.name).collect();
        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            let same = listeners
                .get(&l.name)
                .is_some_and(|h| h.config.address == l.address && h.config.codec == l.codec);
            if same {
                continue;
            }
            let handover = listeners
                .values()
                .find(|h| {
                    l.address.port() != 0
                        && h.config.address == l.address
                        && (h.config.name == l.name || !new_names.contains(&h.config.name))
                })
                .map(|h| h.socket.clone());
            let socket = match handover {
                Some(s) => s,
                None => Arc::new(listener::bind(l.address).map_err(|error| ApplyError::Bind {
                    name: l.name.to_string(),
                    address: l.address,
                    error,
                })?),
            };
            bound.push((l.clone(), socket));
        }

        let clusters = cluster::reconcile(
            &old.clusters,
            snapshot.clusters.values(),
            &self.shared.metrics,
            cluster_tls,
        )
        .await;
        self.shared.active.store(Arc::new(Active {
            snapshot: snapshot.clone(),
            clusters,
            listeners: views.clone(),
        }));
        chains.finish(
            &mut self
                .buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );

        // Retire listeners that went away or are replaced by a new bind.
        let replaced: Vec<Arc<str>> = bound.iter().map(|(l, _)| l.name.clone()).collect();
        let retired: Vec<Arc<str>> = listeners
            .keys()
            .filter(|n| !new_names.contains(n) || replaced.contains(n))
            .cloned()
            .collect();
        for name in retired {
            if let Some(h) = listeners.remove(&name) {
                tracing::info!(listener = %name, address = %h.local_addr, "draining listener");
                h.stop(self.options.drain_timeout);
            }
        }
        for (config, socket) in bound {
            let Some(view) = views.get(&config.name).cloned() else {
                continue;
            };
            let tls = listener_tls.get(&config.name).cloned();
            let draining = self.is_draining();
            let handle = listener::spawn(self.shared.clone(), view, socket, tls, draining);
            tracing::info!(listener = %config.name, address = %handle.local_addr, "listening");
            listeners.insert(config.name.clone(), handle);
        }
        // Keep handles' config current for listeners that stayed; their next connections
        // use the new TLS configuration.
        for (name, h) in listeners.iter_mut() {
            if let Some(v) = views.get(name) {
                h.view.store(v.clone());
                h.config = v.config.clone();
                h.limit.set_max(v.config.max_connections);
            }
            h.tls.store(listener_tls.get(name).cloned());
        }
        // Files no longer named: their writers stop once the last view and request using
        // them (a draining listener's) are gone.
        self.shared.access_logs.retain(&snapshot.listeners);
        // Forget the certificates of what went away.
        self.shared.expiry.retain("cluster", |n| {
            snapshot
                .clusters
                .get(n)
                .and_then(|c| c.tls.as_ref())
                .is_some_and(|t| t.certificate.is_some())
        });
        let labels: std::collections::HashSet<String> = snapshot
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref().map(|t| (l, t)))
            .flat_map(|(l, t)| tls::downstream::labels(&l.name, t))
            .collect();
        self.shared
            .expiry
            .retain("listener", |n| labels.contains(n));
        self.applied.store(true, Ordering::Release);
        // The previous view may be the last owner of thousands of clusters and their
        // runtimes: free them off the runtime's threads (a request still using it keeps it
        // alive and frees it itself).
        drop(listeners);
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    /// Stop accepting on every listener and wait, at most `drain_timeout`, for in-flight
    /// requests to finish; then close the connections still open.
    pub async fn shutdown(&self) {
        let mut listeners = self.listeners.lock().await;
        let waits: Vec<_> = listeners
            .drain()
            .map(|(_, h)| h.stop(self.options.drain_timeout))
            .collect();
        for w in waits {
            let _ = w.await;
        }
    }
}
