//! The admin server: readiness, health, config dump, cluster and listener state, and
//! Prometheus metrics. Plain HTTP/1.1 on its own address (loopback by default), as Envoy's.
//!
//! `/config_dump` is Envoy's (`legate-config-dump`: the Envoy resources in Envoy's JSON, with
//! `?resource=`, `?mask=` and `?include_eds`); legate's own view, the validated snapshot and
//! the xDS client's state, is `/legate_internal`.
//!
//! Bounds, whoever can reach the address: [`MAX_CONNECTIONS`] connections at once (more are
//! closed as soon as they are accepted), a request's head within [`HEADER_READ_TIMEOUT`],
//! which is also how long a keep-alive connection may sit idle, [`MAX_HEAD_BYTES`] and
//! [`MAX_HEADERS`] for the head, and [`MAX_REQUEST_TIME`] to answer one request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use legate_proxy::Dataplane;
use legate_telemetry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use crate::bootstrap::Node;

pub(crate) struct AdminState {
    pub(crate) dataplane: Arc<Dataplane>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) node: Node,
    pub(crate) dump: crate::dump::StaticDump,
    pub(crate) xds: Option<legate_xds::XdsHandle>,
}

/// Connections the admin server holds at once.
pub const MAX_CONNECTIONS: usize = 64;
/// From a request's first byte (or the end of the previous answer on a keep-alive
/// connection) to its last header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request line and headers together.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Headers per request.
pub const MAX_HEADERS: usize = 32;
/// The longest one connection's request may take to be answered (a `/config_dump` of a
/// large configuration included); past it the answer is a 503.
pub const MAX_REQUEST_TIME: Duration = Duration::from_secs(30);

/// Serve the admin API on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_headers(MAX_HEADERS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    match tokio::time::timeout(MAX_REQUEST_TIME, handle(state, req)).await {
                        Ok(res) => res,
                        Err(_) => Ok(text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the admin request took too long\n".into(),
                        )),
                    }
                }
            });
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%error, %peer, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into()));
    }
    let res = match req.uri().path() {
        "/ready" => {
            if state.dataplane.is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: draining\n".into(),
                )
            } else if state.dataplane.is_ready() {
                // Ready on the disk cache too (serving it is the point), but say it is stale.
                let cached = state.xds.as_ref().and_then(|x| x.status().cache);
                match cached {
                    Some(c) => text(
                        StatusCode::OK,
                        format!(
                            "ready: serving the xDS cache (version {}, reason {}) until a \
                             control plane answers\n",
                            c.version, c.reason
                        ),
                    ),
                    None => text(StatusCode::OK, "ready\n".into()),
                }
            } else {
                // Why the control plane has not delivered, when it failed: unreachable, a TLS
                // refusal (with its cause), a stream refused for the node's identity.
                let why = state
                    .xds
                    .as_ref()
                    .and_then(|x| x.status().last_error)
                    .map(|e| format!("; xds server {}: {}", e.server, e.message))
                    .unwrap_or_default();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: no configuration yet{why}\n"),
                )
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/config_dump" => config_dump(&state, req.uri().query().unwrap_or("")).await,
        "/legate_internal" => {
            let active = state.dataplane.active();
            let xds = state.xds.as_ref().map(|x| x.status());
            json_response(&json!({
                "version": active.snapshot.version,
                "node": state.node,
                "xds": xds,
                "snapshot": &*active.snapshot,
            }))
        }
        "/clusters" => {
            let active = state.dataplane.active();
            let mut names: Vec<_> = active.clusters.keys().cloned().collect();
            names.sort();
            let clusters: Vec<_> = names
                .iter()
                .filter_map(|n| active.clusters.get(n))
                .map(|c| {
                    let set = c.hosts();
                    let checked = !c.config().health_checks.is_empty();
                    let hosts: Vec<_> = set
                        .hosts
                        .iter()
                        .map(|h| {
                            json!({
                                "address": h.addr.to_string(),
                                "hostname": h.hostname.as_deref(),
                                "weight": h.weight,
                                // EDS health, then what the load balancer makes of it
                                // with outlier detection and active health checks.
                                "health": h.health,
                                "effective_health": h.effective_health(),
                                "ejected": h.is_ejected(),
                                "times_ejected": h.times_ejected(),
                                "hc": checked.then(|| h.active_health().as_str()),
                                "active_requests": h.active_requests(),
                            })
                        })
                        .collect();
                    json!({
                        "name": c.config().name,
                        "lb_policy": c.config().lb_policy,
                        "protocol": c.config().protocol,
                        "panic": set.in_panic(),
                        "breaker": c.breaker_state(),
                        "hosts": hosts,
                    })
                })
                .collect();
            json_response(&json!({ "clusters": clusters }))
        }
        "/listeners" => {
            let list: Vec<_> = state
                .dataplane
                .listener_addresses()
                .await
                .into_iter()
                .map(|(name, addr)| json!({"name": name, "address": addr.to_string()}))
                .collect();
            json_response(&serde_json::Value::Array(list))
        }
        "/stats/prometheus" | "/metrics" => {
            let mut res = Response::new(Full::new(Bytes::from(state.registry.render())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        "/" => text(
            StatusCode::OK,
            "legate admin: /ready /healthz /config_dump /legate_internal /clusters /listeners \
             /stats/prometheus\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(res)
}

/// Envoy's `/config_dump`: rendered off the runtime's threads (a large configuration takes
/// a while to decode and write, and the admin server shares the data plane's threads).
async fn config_dump(state: &AdminState, query: &str) -> Response<Full<Bytes>> {
    let query = match legate_config_dump::Query::parse(query) {
        Ok(q) => q,
        Err(e) => return dump_error(&e),
    };
    let inputs = state.dump.inputs(state.xds.as_ref());
    match tokio::task::spawn_blocking(move || legate_config_dump::render(&inputs, &query)).await {
        Ok(Ok(body)) => {
            let mut res = Response::new(Full::new(Bytes::from(body)));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            res
        }
        Ok(Err(e)) => dump_error(&e),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("config dump failed: {e}\n"),
        ),
    }
}

fn dump_error(e: &legate_config_dump::DumpError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, format!("{e}\n"))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json_response(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut res = Response::new(Full::new(Bytes::from(body)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

/// Bind the admin address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
