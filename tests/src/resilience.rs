//! Helpers for the resilience tests (`tests/resilience*.rs`): Envoy's own resilience fields
//! set on compiled mesh resources, a proxy on the test control plane, the demo upstream's
//! fault controls and charge ledger, misbehaving peers the demo cannot play (a listener that
//! never accepts, an upstream that stalls after its headers), and bounded concurrent load.
//!
//! Resources start from the authoring YAML ([`svc_mesh`]) and are then edited as Envoy
//! messages, so a test states exactly the Envoy fields it is about ([`retry`],
//! [`thresholds`], [`outlier`], [`http_health_check`], ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    HealthChecker, HttpHealthCheck, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RetryBackOff, RetryHostPredicate, retry_host_predicate,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, Route, RouteAction};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Struct, UInt32Value, Value};
use legate_snapshot::Resources;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::client::{HttpClient, HttpResponse, ReqBody, empty};
use crate::config::{ClusterSpec, single_vhost_mesh};
use crate::demo::Charges;
use crate::eventually;
use crate::metrics::Metrics;
use crate::process::{Legate, Upstream, XdsFlags};
use crate::xds_server::{Mode, XdsServer, mesh_resources};

/// Upper bound of every wait in these helpers.
pub const WAIT: Duration = Duration::from_secs(10);
/// The cluster every [`svc_mesh`] route forwards to.
pub const SVC: &str = "svc";
/// The type URL of Envoy's `previous_hosts` retry host predicate.
pub const PREVIOUS_HOSTS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// The name of Envoy's `previous_hosts` retry host predicate.
pub const PREVIOUS_HOSTS_NAME: &str = "envoy.retry_host_predicates.previous_hosts";

// ---------------------------------------------------------------------------------------------
// Resources

/// One listener `outbound` whose single route (`prefix: /`, route timeout 10 s) forwards to
/// the round-robin HTTP/1.1 cluster `svc` over `endpoints` (connect timeout 1 s), compiled
/// to Envoy resources.
pub fn svc_mesh(endpoints: &[SocketAddr]) -> Resources {
    svc_mesh_with(crate::config::cluster(SVC, endpoints))
}

/// [`svc_mesh`] over a cluster the caller built (its name must be [`SVC`]).
pub fn svc_mesh_with(cluster: ClusterSpec) -> Resources {
    assert_eq!(
        cluster.name, SVC,
        "svc_mesh_with needs a cluster named {SVC}"
    );
    mesh_resources(&single_vhost_mesh(
        &format!("- match: {{prefix: /}}\n  forward: {{cluster: {SVC}, timeout: 10s}}"),
        &[cluster],
    ))
}

/// The only route of the only virtual host of the first route configuration.
pub fn route(res: &mut Resources) -> &mut Route {
    res.route_configs
        .first_mut()
        .and_then(|rc| rc.virtual_hosts.first_mut())
        .and_then(|vh| vh.routes.first_mut())
        .expect("the mesh has a route")
}

/// The forwarding action of [`route`].
pub fn route_action(res: &mut Resources) -> &mut RouteAction {
    match route(res).action.as_mut() {
        Some(Action::Route(action)) => action,
        other => panic!("the first route does not forward: {other:?}"),
    }
}

/// The cluster called `name`.
pub fn cluster_mut<'r>(res: &'r mut Resources, name: &str) -> &'r mut XdsCluster {
    res.clusters
        .iter_mut()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name} in the resources"))
}

/// The EDS load assignment of the cluster called `name`.
pub fn load_assignment_mut<'r>(
    res: &'r mut Resources,
    name: &str,
) -> &'r mut ClusterLoadAssignment {
    res.load_assignments
        .iter_mut()
        .find(|c| c.cluster_name == name)
        .unwrap_or_else(|| panic!("no load assignment for {name} in the resources"))
}

/// Sets the EDS `health_status` of endpoint number `index` (in the order given to the mesh)
/// of cluster `name`.
pub fn set_endpoint_health(res: &mut Resources, name: &str, index: usize, status: HealthStatus) {
    let cla = load_assignment_mut(res, name);
    let endpoint = cla
        .endpoints
        .iter_mut()
        .flat_map(|locality| locality.lb_endpoints.iter_mut())
        .nth(index)
        .unwrap_or_else(|| panic!("cluster {name} has no endpoint number {index}"));
    endpoint.health_status = status.into();
}

/// Edits the HTTP connection manager of every listener (decoded from and re-encoded into
/// its `typed_config`).
pub fn edit_hcm(res: &mut Resources, edit: impl Fn(&mut HttpConnectionManager)) {
    for listener in &mut res.listeners {
        for chain in &mut listener.filter_chains {
            for filter in &mut chain.filters {
                if let Some(ConfigType::TypedConfig(any)) = filter.config_type.as_mut() {
                    let mut hcm = HttpConnectionManager::decode(any.value.as_slice())
                        .unwrap_or_else(|error| {
                            panic!("the listener filter is not an HCM ({error}): {any:?}")
                        });
                    edit(&mut hcm);
                    any.value = hcm.encode_to_vec();
                }
            }
        }
    }
}

/// `m` packed as an `Any` of `type_url`.
pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

/// Puts an HTTP filter named `name` (its configuration `config` of `type_url`) first in
/// every listener's chain, replacing a filter of that name.
pub fn set_http_filter<M: Message>(res: &mut Resources, name: &str, type_url: &str, config: &M) {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, http_filter,
    };
    let filter = HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(type_url, config))),
        ..Default::default()
    };
    edit_hcm(res, |h| {
        h.http_filters.retain(|f| f.name != name);
        h.http_filters.insert(0, filter.clone());
    });
}

/// A local rate limit (`envoy.filters.http.local_ratelimit`) of one token refilled once an
/// hour, enabled and enforced for every request: the second request is limited.
pub fn one_token_an_hour()
-> envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit {
    envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit {
        stat_prefix: "rl".to_owned(),
        token_bucket: Some(envoy_types::pb::envoy::r#type::v3::TokenBucket {
            max_tokens: 1,
            tokens_per_fill: u32v(1),
            fill_interval: Some(ms(3_600_000)),
        }),
        filter_enabled: runtime_percent(100),
        filter_enforced: runtime_percent(100),
        ..Default::default()
    }
}

/// A runtime percentage of `p` % (the runtime key is never read by legate or Envoy here).
pub fn runtime_percent(
    p: u32,
) -> Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent> {
    Some(
        envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
            default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                numerator: p,
                denominator: 0,
            }),
            runtime_key: "test".to_owned(),
        },
    )
}

/// A protobuf duration of `ms` milliseconds.
pub fn ms(ms: u64) -> PbDuration {
    let d = Duration::from_millis(ms);
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

pub fn percent(value: f64) -> Option<Percent> {
    Some(Percent { value })
}

/// `retry_policy` with `retry_on` and `num_retries`, and a short back-off (5 ms, up to
/// 20 ms) so tests do not wait on Envoy's default.
pub fn retry(retry_on: &str, num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        retry_on: retry_on.to_owned(),
        num_retries: u32v(num_retries),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(ms(5)),
            max_interval: Some(ms(20)),
        }),
        ..Default::default()
    }
}

/// [`retry`] that also avoids the hosts already tried (Envoy's `previous_hosts` predicate).
pub fn retry_other_hosts(retry_on: &str, num_retries: u32) -> RetryPolicy {
    let mut policy = retry(retry_on, num_retries);
    policy.retry_host_predicate = vec![previous_hosts()];
    policy.host_selection_retry_max_attempts = 5;
    policy
}

/// Envoy's `previous_hosts` retry host predicate, by typed config.
pub fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: PREVIOUS_HOSTS_NAME.to_owned(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(Any {
            type_url: PREVIOUS_HOSTS_TYPE_URL.to_owned(),
            value: Vec::new(),
        })),
    }
}

/// Sets the DEFAULT-priority circuit-breaker thresholds of cluster `name`.
pub fn set_thresholds(res: &mut Resources, name: &str, thresholds: Thresholds) {
    cluster_mut(res, name).circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        per_host_thresholds: Vec::new(),
    });
}

/// DEFAULT-priority thresholds with nothing set (Envoy's defaults).
pub fn thresholds() -> Thresholds {
    Thresholds::default()
}

/// Outlier detection with every detector switched off (enforcing 0 %), a 300 ms interval,
/// a 1 s base ejection time and no cap on the share of ejected hosts: a test turns on the
/// detector it is about.
pub fn outlier() -> OutlierDetection {
    OutlierDetection {
        interval: Some(ms(300)),
        base_ejection_time: Some(ms(1000)),
        max_ejection_percent: u32v(100),
        enforcing_consecutive_5xx: u32v(0),
        enforcing_consecutive_gateway_failure: u32v(0),
        enforcing_consecutive_local_origin_failure: u32v(0),
        enforcing_success_rate: u32v(0),
        enforcing_local_origin_success_rate: u32v(0),
        enforcing_failure_percentage: u32v(0),
        enforcing_failure_percentage_local_origin: u32v(0),
        ..Default::default()
    }
}

/// An active HTTP health check of `path` every `interval_ms` (timeout 500 ms, no jitter).
pub fn http_health_check(
    path: &str,
    interval_ms: u64,
    unhealthy: u32,
    healthy: u32,
) -> HealthCheck {
    HealthCheck {
        timeout: Some(ms(500)),
        interval: Some(ms(interval_ms)),
        unhealthy_threshold: u32v(unhealthy),
        healthy_threshold: u32v(healthy),
        health_checker: Some(HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: path.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An active TCP (connect only) health check every `interval_ms` (timeout 500 ms).
pub fn tcp_health_check(interval_ms: u64, unhealthy: u32, healthy: u32) -> HealthCheck {
    HealthCheck {
        timeout: Some(ms(500)),
        interval: Some(ms(interval_ms)),
        unhealthy_threshold: u32v(unhealthy),
        healthy_threshold: u32v(healthy),
        health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck::default())),
        ..Default::default()
    }
}

/// Sets `common_lb_config.healthy_panic_threshold` of cluster `name`.
pub fn set_panic_threshold(res: &mut Resources, name: &str, value: f64) {
    cluster_mut(res, name).common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: percent(value),
        ..Default::default()
    });
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(b)),
    }
}

/// `metadata.filter_metadata.legate = {key: value}`.
pub fn legate_metadata(key: &str, value: Value) -> Metadata {
    let mut fields = BTreeMap::new();
    fields.insert(key.to_owned(), value);
    let mut filter_metadata = std::collections::HashMap::new();
    filter_metadata.insert(
        "legate".to_owned(),
        Struct {
            fields: fields.into_iter().collect(),
        },
    );
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

/// Route metadata that lets non-idempotent requests be retried.
pub fn retry_non_idempotent() -> Metadata {
    legate_metadata("retry_non_idempotent", boolean(true))
}

/// The classic breaker's settings, as cluster metadata `legate.circuit_breaker`.
#[derive(Clone, Debug)]
pub struct ClassicBreaker {
    pub failure_ratio: f64,
    pub window: &'static str,
    pub minimum_requests: u32,
    pub open_timeout: &'static str,
    pub half_open_max_requests: u32,
}

impl ClassicBreaker {
    pub fn metadata(&self) -> Metadata {
        let fields = [
            ("failure_ratio", number(self.failure_ratio)),
            ("window", string(self.window)),
            ("minimum_requests", number(f64::from(self.minimum_requests))),
            ("open_timeout", string(self.open_timeout)),
            (
                "half_open_max_requests",
                number(f64::from(self.half_open_max_requests)),
            ),
        ];
        legate_metadata(
            "circuit_breaker",
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                })),
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy on a test control plane

/// A test ADS server and a `legate` configured by it (state of the world).
pub struct Rig {
    pub server: XdsServer,
    pub legate: Legate,
    addr: SocketAddr,
}

impl Rig {
    /// Serves `res`, starts legate on it and waits for the `outbound` listener.
    pub async fn start(res: &Resources) -> Rig {
        Rig::start_with_args(res, &[]).await
    }

    /// [`start`](Self::start) with more `legate` flags (e.g. `--retry-buffer-limit`).
    pub async fn start_with_args(res: &Resources, args: &[&str]) -> Rig {
        let server = XdsServer::start().await;
        server.set_resources(res);
        let flags = args
            .iter()
            .fold(XdsFlags::new(&server.url(), Mode::Sotw), |f, a| f.arg(a));
        let legate = Legate::start_xds(&flags).await;
        let addr = eventually(WAIT, "listener outbound is bound", || async {
            legate
                .try_listener_addr("outbound")
                .await
                .ok_or_else(|| "not listed by GET /listeners yet".to_owned())
        })
        .await;
        Rig {
            server,
            legate,
            addr,
        }
    }

    /// Pushes `res` and waits until legate ACKed every type.
    pub async fn apply(&self, res: &Resources) {
        let pushes = self.server.set_resources(res);
        self.server.wait_all_acked(&pushes, WAIT).await;
    }

    /// `http://LISTENER{path}` of the `outbound` listener.
    /// The `outbound` listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn metrics(&self) -> Metrics {
        self.legate.metrics().await
    }

    /// A counter or gauge summed over the samples with `labels`, 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().await.get_or_zero(name, labels)
    }

    /// `legate_upstream_retries_total{cluster=svc}`.
    pub async fn retries(&self) -> u64 {
        self.metric("legate_upstream_retries_total", &[("cluster", SVC)])
            .await as u64
    }

    /// `GET path` through the proxy with a fresh HTTP/1.1 client, timing the exchange.
    pub async fn get(&self, path: &str) -> (HttpResponse, Duration) {
        timed(HttpClient::http1().get(&self.url(path))).await
    }

    /// Any request through the proxy with a fresh HTTP/1.1 client.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> HttpResponse {
        HttpClient::http1()
            .request(method, &self.url(path), headers, body)
            .await
    }

    /// The proxy's captured output and state, for assertion messages.
    pub fn describe(&self) -> String {
        self.legate.describe()
    }
}

/// Runs `fut`, returning its output and how long it took.
pub async fn timed<T>(fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = fut.await;
    (out, start.elapsed())
}

/// `n` `GET url` at once, each on its own connection; responses in start order.
pub async fn concurrent_gets(url: &str, n: usize) -> Vec<anyhow::Result<HttpResponse>> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move {
                HttpClient::http1()
                    .with_timeout(WAIT)
                    .try_request("GET", &url, &[], empty())
                    .await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        out.push(
            handle
                .await
                .unwrap_or_else(|error| Err(anyhow::anyhow!("request task failed: {error}"))),
        );
    }
    out
}

/// `(status, x-legate-error)` of a response, for compact assertions.
pub fn outcome(r: &HttpResponse) -> (u16, Option<String>) {
    (r.status.as_u16(), r.legate_error().map(str::to_owned))
}

// ---------------------------------------------------------------------------------------------
// The demo upstream's fault controls and charge ledger

/// `POST /control` on the upstream itself (not through legate) with `settings`; panics
/// unless it answers 2xx.
pub async fn control(upstream: &Upstream, settings: serde_json::Value) {
    let body = settings.to_string();
    let response = upstream
        .client()
        .request(
            "POST",
            &upstream.url("/control"),
            &[("content-type", "application/json")],
            crate::client::full(body.clone()),
        )
        .await;
    assert!(
        response.status.is_success(),
        "POST /control {body} on {}: {}",
        upstream.name(),
        response.describe()
    );
}

/// `GET /charges` on the upstream itself.
pub async fn charges(upstream: &Upstream) -> Charges {
    let response = upstream.client().get(&upstream.url("/charges")).await;
    serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!(
            "bad /charges answer from {} ({error}): {}",
            upstream.name(),
            response.describe()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Peers the demo upstream cannot play

/// A listener on 127.0.0.1 whose accept queue is full and never drained, so a new connection
/// attempt gets no SYN-ACK and hangs until the connector's timeout. Keep it (and the
/// connections filling it) alive for as long as the address is in use.
pub struct Unaccepting {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Unaccepting {
    /// Binds with a backlog of 1, then connects until a connection attempt no longer
    /// completes within 200 ms (at most 16 tries). Returns `None` if the queue never filled
    /// (then the kernel accepts beyond the backlog and a connect timeout cannot be provoked).
    pub async fn start() -> Option<Unaccepting> {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind("127.0.0.1:0".parse().ok()?).ok()?;
        let listener = socket.listen(1).ok()?;
        let addr = listener.local_addr().ok()?;
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(_)) => return None,
                Err(_) => {
                    return Some(Unaccepting {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    });
                }
            }
        }
        None
    }
}

/// An HTTP/1.1 upstream that answers every request with `200`, a `content-length` of
/// `announced` bytes, sends `sent` of them, then holds the connection silent for up to 20 s.
/// Counts requests.
pub struct StallingUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StallingUpstream {
    pub async fn start(announced: usize, sent: usize) -> StallingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:0: {error}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("cannot read a bound address: {error}"));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            // Bounded: at most 64 connections, and the task ends once the owner is dropped.
            for _ in 0..64 {
                let Ok(Ok((mut stream, _))) =
                    tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
                else {
                    return;
                };
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let count = count.clone();
                let stopping = stopping.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {announced}\r\nx-upstream: stalling\r\n\r\n"
                    )
                    .into_bytes();
                    response.extend(std::iter::repeat_n(b'x', sent.min(announced)));
                    if stream.write_all(&response).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                    for _ in 0..200 {
                        if stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
            }
        });
        StallingUpstream {
            addr,
            requests,
            stop,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for StallingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads a response head, then its body until it ends or fails: the status, the bytes
/// received, and the error that ended the body early, if any.
pub async fn get_partial(url: &str, timeout: Duration) -> (u16, usize, Option<String>) {
    let client = HttpClient::http1().with_timeout(timeout);
    let req = crate::client::build_request("GET", url, &[], empty())
        .unwrap_or_else(|error| panic!("GET {url}: {error:#}"));
    let response = client
        .try_send(req)
        .await
        .unwrap_or_else(|error| panic!("GET {url}: no response head: {error:#}"));
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut received = 0usize;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, http_body_util::BodyExt::frame(&mut body)).await {
            Err(_) => {
                return (
                    status,
                    received,
                    Some("body not finished in time".to_owned()),
                );
            }
            Ok(None) => return (status, received, None),
            Ok(Some(Err(error))) => return (status, received, Some(format!("{error:#}"))),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded load

/// What a [`Load`] run saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub sent: usize,
    pub ok: usize,
    /// Responses by status code, and transport errors under 0.
    pub by_status: BTreeMap<u16, usize>,
    /// Non-200 outcomes by `x-legate-error` (or `upstream` for the upstream's own answer).
    pub failures: BTreeMap<String, usize>,
    /// 200s by answering upstream.
    pub by_upstream: BTreeMap<String, usize>,
    pub elapsed: Duration,
    /// The first failures of each kind, described.
    pub samples: Vec<String>,
}

impl LoadReport {
    pub fn success_ratio(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.ok as f64 / self.sent as f64
    }
}

/// `total` `GET url` from `concurrency` workers (each with its own keep-alive client), for at
/// most `max` in all; runs in the background so a test can change things mid-run.
pub struct Load {
    done: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<LoadReport>,
}

impl Load {
    pub fn spawn(url: &str, total: usize, concurrency: usize, max: Duration) -> Load {
        let done = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let url = url.to_owned();
        let finished = done.clone();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let deadline = start + max;
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (url, next, finished) = (url.clone(), next.clone(), finished.clone());
                    tokio::spawn(async move {
                        let client = HttpClient::http1().with_timeout(Duration::from_secs(5));
                        let mut report = LoadReport::default();
                        while next.fetch_add(1, Ordering::SeqCst) < total
                            && Instant::now() < deadline
                        {
                            report.sent += 1;
                            match client.try_get(&url).await {
                                Ok(r) if r.status == 200 => {
                                    report.ok += 1;
                                    *report.by_status.entry(200).or_default() += 1;
                                    let name = r.upstream().unwrap_or("?").to_owned();
                                    *report.by_upstream.entry(name).or_default() += 1;
                                }
                                Ok(r) => {
                                    *report.by_status.entry(r.status.as_u16()).or_default() += 1;
                                    let reason = r.legate_error().unwrap_or("upstream").to_owned();
                                    let seen = report.failures.entry(reason).or_default();
                                    *seen += 1;
                                    if *seen <= 2 {
                                        report.samples.push(r.describe());
                                    }
                                }
                                Err(error) => {
                                    *report.by_status.entry(0).or_default() += 1;
                                    *report.failures.entry("transport".to_owned()).or_default() +=
                                        1;
                                    if report.samples.len() < 5 {
                                        report.samples.push(format!("{error:#}"));
                                    }
                                }
                            }
                            finished.fetch_add(1, Ordering::SeqCst);
                        }
                        report
                    })
                })
                .collect();
            let mut all = LoadReport::default();
            for worker in workers {
                let Ok(report) = worker.await else { continue };
                all.sent += report.sent;
                all.ok += report.ok;
                for (k, v) in report.by_status {
                    *all.by_status.entry(k).or_default() += v;
                }
                for (k, v) in report.failures {
                    *all.failures.entry(k).or_default() += v;
                }
                for (k, v) in report.by_upstream {
                    *all.by_upstream.entry(k).or_default() += v;
                }
                all.samples.extend(report.samples);
            }
            all.samples.truncate(20);
            all.elapsed = start.elapsed();
            all
        });
        Load { done, handle }
    }

    /// Requests finished so far.
    pub fn completed(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests finished (or the run ended), bounded by `timeout`.
    pub async fn wait_completed(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.completed() < n && !self.handle.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn finish(self) -> LoadReport {
        self.handle
            .await
            .unwrap_or_else(|error| panic!("the load task failed: {error}"))
    }
}
