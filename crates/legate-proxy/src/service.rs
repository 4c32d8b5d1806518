//! The request path: route, pick a cluster and a host, forward, stream the answer back.
//!
//! One `Arc<Active>` is loaded per request and used to its end, so a config swap in the
//! middle of a request never mixes two configurations. Nothing here parses configuration
//! or takes a lock.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use legate_snapshot::router::RequestView;
use legate_snapshot::{
    ClusterTarget, ForwardAction, HostRewrite, RedirectAction, Route, RouteAction,
    UpstreamProtocol, VirtualHost,
};

use crate::access_log::{Pending, Record, Trail};
use crate::body::{BodyMeter, Downstream, RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::forward;
use crate::headers;
use crate::{Active, ListenerView, Shared};

/// What a connection knows about where it was accepted.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    /// The listener's own view: what a request uses once the live configuration no longer
    /// has the listener (it is draining).
    pub(crate) listener: Arc<arc_swap::ArcSwap<ListenerView>>,
    pub(crate) peer: SocketAddr,
    /// The listening socket's address.
    pub(crate) local: SocketAddr,
    /// The peer's address as an `x-forwarded-for` entry.
    pub(crate) peer_ip: HeaderValue,
    /// Requests on the connection, for its idle timeout.
    pub(crate) activity: Arc<crate::listener::Activity>,
    /// Whether the connection is TLS (`x-forwarded-proto: https`).
    pub(crate) tls: bool,
    /// This connection's budget for request bodies kept for retries.
    pub(crate) retry_buffers: Arc<crate::body::BufferBudget>,
}

pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let open = ctx.activity.begin();
    let active = ctx.shared.active.load_full();
    // Prefer the live configuration's view (loaded with its clusters, in one piece); a
    // listener being drained keeps the view it had last.
    let own = ctx.listener.load();
    let view = match active
        .listeners
        .get(&own.config.name)
        .filter(|v| v.config.address == own.config.address)
    {
        Some(v) => v.clone(),
        None => arc_swap::Guard::into_inner(own),
    };
    // The request id first, as Envoy's connection manager sets it before tracing: the span,
    // the access log line and the upstream all see the same one.
    if view.config.generate_request_id {
        headers::ensure_request_id(req.headers_mut());
    }
    // Sampled or not is decided here, before anything is allocated for the trace.
    let span = view.tracer.as_ref().and_then(|t| t.start(&req));
    let mut trail = Trail::default();
    let grpc = crate::grpc::is_grpc(req.headers());
    if !view.logs.is_empty() {
        let mut res =
            handle_logged(&ctx, &active, &view, req, open, trail, span.as_ref(), grpc).await;
        end_span_with_body(span, &mut res);
        return Ok(res);
    }
    let forwarded = route_and_forward(&ctx, &active, &view, req, None, &mut trail, span.as_ref());
    let mut res = match forwarded.await {
        Ok(mut res) => {
            // An upstream body keeps the request open until it ends.
            if let ResponseBody::Upstream { held, .. } = res.body_mut() {
                held.open = Some(open);
            }
            res
        }
        Err(e) => {
            ctx.shared.local_reply(e).inc();
            e.response_for(grpc)
        }
    };
    view.requests.record(res.status().as_u16());
    if grpc {
        count_grpc(&view, &mut res);
    }
    end_span_with_body(span, &mut res);
    Ok(res)
}

/// Count a gRPC request by its status: now, when the response headers carry it (a
/// trailers-only response, a local reply) or the response is not gRPC at all (then the
/// status a client reads from its HTTP status); else when its trailers pass.
fn count_grpc(view: &ListenerView, res: &mut Response<ResponseBody>) {
    if let Some(status) = crate::grpc::status(res.headers()) {
        view.grpc_requests.record(status);
        return;
    }
    let status = res.status();
    match res.body_mut() {
        ResponseBody::Upstream { held, .. } if status == StatusCode::OK => {
            held.tail().grpc = Some(crate::grpc::Tally::new(view.grpc_requests.clone()));
        }
        _ => view
            .grpc_requests
            .record(crate::grpc::status_for_http(status)),
    }
}

/// The server span takes the response's status now and ends with its body: an upstream
/// body carries it to its end (or until the client leaves), a local reply ends it here.
fn end_span_with_body(span: Option<crate::trace::ServerSpan>, res: &mut Response<ResponseBody>) {
    let Some(mut span) = span else { return };
    span.respond(res.status(), res.headers());
    if let ResponseBody::Upstream { held, .. } = res.body_mut() {
        held.tail().span = Some(span);
    }
}

/// [`handle`] on a listener with access logs: the same, plus a [`Record`] of the request
/// whose line is written when the response ends.
#[allow(clippy::too_many_arguments)]
async fn handle_logged(
    ctx: &ConnCtx,
    active: &Active,
    view: &ListenerView,
    req: Request<Incoming>,
    open: crate::listener::OpenRequest,
    mut trail: Trail,
    trace: Option<&crate::trace::ServerSpan>,
    grpc: bool,
) -> Response<ResponseBody> {
    let wall = std::time::SystemTime::now();
    let start = tokio::time::Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let version = req.version();
    let mut req_headers = req.headers().clone();
    let meter = BodyMeter::new(start);
    if http_body::Body::is_end_stream(req.body()) {
        meter.end();
    }
    let result = route_and_forward(
        ctx,
        active,
        view,
        req,
        Some(meter.clone()),
        &mut trail,
        trace,
    )
    .await;
    let (mut res, cause, transport_failure, response_start) = match result {
        Ok(res) => {
            let cause = res
                .headers()
                .get("x-legate-error")
                .and_then(|v| {
                    ProxyError::ALL
                        .into_iter()
                        .find(|e| e.code().as_bytes() == v.as_bytes())
                })
                .map(ProxyError::code);
            (res, cause, None, Some(start.elapsed()))
        }
        Err(e) => {
            ctx.shared.local_reply(e).inc();
            trail.flags.insert(e.response_flag());
            (
                e.response_for(grpc),
                Some(e.code()),
                e.transport_failure(),
                None,
            )
        }
    };
    view.requests.record(res.status().as_u16());
    if grpc {
        count_grpc(view, &mut res);
    }
    // The request id sent upstream, generated here or the client's: the one the upstream
    // logs too (Envoy logs the one its connection manager set).
    if let Some(id) = trail.request_id.take() {
        req_headers.insert(&headers::X_REQUEST_ID, id);
    }
    let record = Record {
        wall,
        start,
        method,
        uri,
        version,
        req_headers,
        status: res.status().as_u16(),
        resp_headers: res.headers().clone(),
        cause,
        transport_failure,
        request_body: meter,
        response_start,
        trail,
        bytes_sent: 0,
        peer: ctx.peer,
        local: ctx.local,
        trace_id: trace.map(crate::trace::ServerSpan::trace_id),
    };
    let mut pending = Pending::new(view.logs.clone(), record);
    match res.body_mut() {
        ResponseBody::Upstream { held, body } => {
            pending.expected = http_body::Body::size_hint(body).exact();
            held.open = Some(open);
            held.tail().log = Some(pending);
        }
        ResponseBody::Full(b) => {
            // A local reply is written whole: its line goes now.
            pending.record.bytes_sent = b.as_ref().map_or(0, |b| b.len() as u64);
            pending.completed = true;
            drop(pending);
        }
    }
    res
}

async fn route_and_forward(
    ctx: &ConnCtx,
    active: &Active,
    view: &ListenerView,
    mut req: Request<Incoming>,
    meter: Option<Arc<BodyMeter>>,
    trail: &mut Trail,
    trace: Option<&crate::trace::ServerSpan>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Owned (a reference-counted copy), so the request can be taken apart later.
    let host_value = request_host(&req).ok_or(ProxyError::BadRequest)?;
    let host = host_value.to_str().map_err(|_| ProxyError::BadRequest)?;
    let vhost = view
        .routes
        .select_virtual_host(host, view.config.strip_any_host_port);
    let route = vhost.and_then(|vhost| {
        vhost.select_route(&RequestView {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        })
    });
    // The HTTP filters run before the router, as in Envoy: also for a request no route
    // matched (then with their listener configuration).
    let mut added = crate::filters::ResponseHeaders::default();
    if !view.filters.is_empty() {
        let decision = view
            .filters
            .decode(
                crate::filters::Request {
                    grpc: crate::grpc::is_grpc(req.headers()),
                    origin: crate::filters::Origin {
                        remote: ctx.peer.ip(),
                    },
                    headers: req.headers_mut(),
                    routes: &view.routes,
                    vhost,
                    route,
                },
                &mut added,
                &mut trail.flags,
            )
            .await;
        if let crate::filters::Decision::Reply(cause, res) = decision {
            ctx.shared.local_reply(cause).inc();
            trail.route = route.map(|r| r.name.clone());
            return Ok(*res);
        }
    }
    let (Some(vhost), Some(route)) = (vhost, route) else {
        return Err(ProxyError::NoRoute);
    };
    trail.route = Some(route.name.clone());
    let mut res = dispatch(
        ctx, active, view, vhost, route, req, host_value, meter, trail, trace,
    )
    .await?;
    added.apply(res.headers_mut());
    Ok(res)
}

/// The router: the matched route's action.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    ctx: &ConnCtx,
    active: &Active,
    view: &ListenerView,
    vhost: &VirtualHost,
    route: &Route,
    mut req: Request<Incoming>,
    host_value: HeaderValue,
    meter: Option<Arc<BodyMeter>>,
    trail: &mut Trail,
    trace: Option<&crate::trace::ServerSpan>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = host_value.to_str().map_err(|_| ProxyError::BadRequest)?;
    match &route.action {
        RouteAction::Direct { status, body } => {
            let mut res = Response::new(ResponseBody::full(body.clone()));
            *res.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            finish_response_headers(res.headers_mut(), view, vhost, route, None);
            Ok(res)
        }
        RouteAction::Redirect(r) => Ok(redirect(r, &route.matcher.path, &req, host)),
        RouteAction::Forward(fwd) => {
            let random = match &fwd.target {
                ClusterTarget::Single(_) => 0,
                ClusterTarget::Weighted { .. } => fastrand::u64(..),
            };
            let picked = fwd.target.pick(random).ok_or(ProxyError::ClusterNotFound)?;
            let (cluster_name, weighted) = (picked.name, picked.weighted);
            trail.cluster = Some(cluster_name.clone());
            let cluster = active
                .clusters
                .get(cluster_name)
                .ok_or(ProxyError::ClusterNotFound)?;
            let upgrade = upgrade_type(&req, view, fwd)?;
            let on_downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let (parts, body) = req.into_parts();
            let tpl = Template::new(
                ctx, view, vhost, route, fwd, weighted, host_value, parts, upgrade, cluster,
            )?;
            if !view.logs.is_empty() {
                trail.request_id = tpl.headers().get(&headers::X_REQUEST_ID).cloned();
            }
            let stream_idle = match fwd.idle_timeout {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => view.config.stream_idle_timeout,
            };
            let timeout = crate::grpc::request_timeout(
                fwd,
                crate::grpc::is_grpc(tpl.headers()),
                tpl.headers(),
            );
            let mut res = forward::forward(forward::Request {
                budgets: crate::body::Budgets {
                    global: &ctx.shared.retry_buffers,
                    connection: &ctx.retry_buffers,
                },
                cluster,
                fwd,
                tpl,
                body: Downstream::new(body, meter),
                upgrade,
                timeout,
                stream_idle,
                trail,
                trace,
            })
            .await?;

            if res.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(down) = on_downstream_upgrade
            {
                let up = hyper::upgrade::on(&mut res);
                let (mut parts, body) = res.into_parts();
                // The host stays counted as busy while the tunnel is open.
                let held = match body {
                    ResponseBody::Upstream { held, .. } => held,
                    ResponseBody::Full(_) => crate::body::Held::default(),
                };
                tokio::spawn(async move {
                    let _held = held;
                    match tokio::try_join!(down, up) {
                        Ok((down, up)) => {
                            let mut down = TokioIo::new(down);
                            let mut up = TokioIo::new(up);
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                        Err(error) => tracing::debug!(%error, "upgrade failed"),
                    }
                });
                parts.headers.remove(header::TRANSFER_ENCODING);
                return Ok(Response::from_parts(parts, ResponseBody::empty()));
            }

            let (mut parts, body) = res.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, false);
            finish_response_headers(&mut parts.headers, view, vhost, route, weighted);
            parts.version = Version::HTTP_11;
            Ok(Response::from_parts(parts, body))
        }
    }
}

/// How the upstream `Host` / `:authority` is chosen for each attempt.
enum HostHeader {
    /// The request's own `Host` header, left where it is in the copied headers.
    Kept,
    /// The same for every host (literal, from a header, or the HTTP/2 `:authority` of a
    /// request without `Host`); `None` leaves it unset.
    Fixed(Option<HeaderValue>),
    /// `auto_host_rewrite`: the chosen host's name or address.
    Auto,
}

/// Everything of the upstream request that does not depend on the host, built once and
/// stamped out per attempt.
pub(crate) struct Template {
    method: http::Method,
    path_and_query: PathAndQuery,
    headers: http::HeaderMap,
    host: HostHeader,
    protocol: UpstreamProtocol,
    /// `https` for TLS clusters (HTTP/2's `:scheme`).
    scheme: Scheme,
}

impl Template {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &ConnCtx,
        view: &ListenerView,
        vhost: &VirtualHost,
        route: &Route,
        fwd: &ForwardAction,
        weighted: Option<&legate_snapshot::WeightedCluster>,
        host_value: HeaderValue,
        parts: http::request::Parts,
        upgrade: bool,
        cluster: &crate::ClusterRuntime,
    ) -> Result<Self, ProxyError> {
        let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path_and_query = match fwd.rewrite_path(&route.matcher.path, original) {
            Some(rewritten) => {
                PathAndQuery::try_from(rewritten).map_err(|_| ProxyError::BadRequest)?
            }
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let mut headers = parts.headers;
        headers::strip_hop_by_hop(&mut headers, upgrade);
        if view.config.append_x_forwarded_for {
            headers::append_forwarded_for(&mut headers, &ctx.peer_ip);
        }
        headers::set_forwarded_proto(&mut headers, ctx.tls);
        if view.config.generate_request_id {
            headers::ensure_request_id(&mut headers);
        }
        let mut host = match (
            &fwd.host_rewrite,
            weighted.and_then(|w| w.host_rewrite.as_ref()),
        ) {
            (_, Some(literal)) => HostHeader::Fixed(Some(literal.clone())),
            (HostRewrite::Keep, None) => HostHeader::Fixed(Some(host_value)),
            (HostRewrite::Literal(l), None) => HostHeader::Fixed(Some(l.clone())),
            (HostRewrite::Auto, None) => HostHeader::Auto,
            (HostRewrite::Header(h), None) => {
                HostHeader::Fixed(headers.get(h).cloned().or(Some(host_value)))
            }
        };
        let rc = &view.routes;
        if let Some(w) = weighted {
            headers::apply(
                &mut headers,
                &w.request_headers_to_remove,
                &w.request_headers_to_add,
            );
        }
        headers::apply(
            &mut headers,
            &route.request_headers_to_remove,
            &route.request_headers_to_add,
        );
        headers::apply(
            &mut headers,
            &vhost.request_headers_to_remove,
            &vhost.request_headers_to_add,
        );
        headers::apply(
            &mut headers,
            &rc.request_headers_to_remove,
            &rc.request_headers_to_add,
        );
        // Usually the request's own `Host` is what goes upstream: leave it in place rather
        // than insert it again for every attempt.
        if let HostHeader::Fixed(Some(v)) = &host {
            let mut present = headers.get_all(header::HOST).iter();
            if present.next() == Some(v) && present.next().is_none() {
                host = HostHeader::Kept;
            }
        }
        Ok(Template {
            method: parts.method,
            path_and_query,
            headers,
            host,
            protocol: cluster.config().protocol,
            scheme: if cluster.config().tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
        })
    }

    pub(crate) fn method(&self) -> &http::Method {
        &self.method
    }

    pub(crate) fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    /// The `Host` to set for `host`; `None` when the request's own stays (or none is set).
    fn host_value(&self, host: &crate::lb::Host) -> Option<HeaderValue> {
        match &self.host {
            HostHeader::Kept => None,
            HostHeader::Fixed(v) => v.clone(),
            HostHeader::Auto => match &host.hostname {
                Some(name) => HeaderValue::from_str(name).ok(),
                None => HeaderValue::from_str(host.authority.as_str()).ok(),
            },
        }
    }

    /// The upstream request for `host`. `last` moves the headers out instead of copying
    /// them (no further attempt will need them).
    pub(crate) fn build(
        &mut self,
        host: &crate::lb::Host,
        body: RequestBody,
        last: bool,
    ) -> Result<Request<RequestBody>, ProxyError> {
        let mut headers = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        let absolute = |authority: Authority| {
            Uri::builder()
                .scheme(self.scheme.clone())
                .authority(authority)
                .path_and_query(self.path_and_query.clone())
                .build()
                .map_err(|_| ProxyError::BadRequest)
        };
        // Both protocols dial the host address the pool is given. HTTP/1.1 sends `Host` and
        // an origin-form target (CONNECT keeps the authority form); HTTP/2 sends the URI's
        // authority as `:authority`, which replaces `Host`. Auto is built as HTTP/1.1; the
        // pool turns it into HTTP/2 for hosts that chose h2.
        let uri = match self.protocol {
            UpstreamProtocol::Http1 | UpstreamProtocol::Auto => {
                if let Some(h) = self.host_value(host) {
                    headers.insert(header::HOST, h);
                }
                if self.method == http::Method::CONNECT {
                    absolute(host.authority.clone())?
                } else {
                    Uri::from(self.path_and_query.clone())
                }
            }
            UpstreamProtocol::Http2 => {
                let kept = headers.remove(header::HOST);
                let value = match self.host {
                    HostHeader::Kept => kept,
                    _ => self.host_value(host),
                };
                absolute(
                    value
                        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                        .unwrap_or_else(|| host.authority.clone()),
                )?
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = match self.protocol {
            UpstreamProtocol::Http1 | UpstreamProtocol::Auto => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        *req.headers_mut() = headers;
        Ok(req)
    }
}

fn finish_response_headers(
    h: &mut http::HeaderMap,
    view: &ListenerView,
    vhost: &VirtualHost,
    route: &Route,
    weighted: Option<&legate_snapshot::WeightedCluster>,
) {
    if let Some(w) = weighted {
        headers::apply(h, &w.response_headers_to_remove, &w.response_headers_to_add);
    }
    headers::apply(
        h,
        &route.response_headers_to_remove,
        &route.response_headers_to_add,
    );
    headers::apply(
        h,
        &vhost.response_headers_to_remove,
        &vhost.response_headers_to_add,
    );
    let rc = &view.routes;
    headers::apply(
        h,
        &rc.response_headers_to_remove,
        &rc.response_headers_to_add,
    );
}

/// `Host`, or `:authority` for HTTP/2 requests that carry no `Host`.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(h) = req.headers().get(header::HOST) {
        return Some(h.clone());
    }
    req.uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// Whether this request upgrades, and whether that is allowed. `h2c` upgrades are never
/// passed on (the hop-by-hop strip drops them).
fn upgrade_type(
    req: &Request<Incoming>,
    view: &ListenerView,
    fwd: &ForwardAction,
) -> Result<bool, ProxyError> {
    if req.version() != Version::HTTP_11 {
        return Ok(false);
    }
    let Some(up) = req.headers().get(header::UPGRADE) else {
        return Ok(false);
    };
    let Ok(up) = up.to_str() else {
        return Err(ProxyError::BadRequest);
    };
    if up.eq_ignore_ascii_case("h2c") {
        return Ok(false);
    }
    // As in Envoy: the listener must list the type and the route must not disable it.
    let listener_allows = view
        .config
        .upgrades
        .iter()
        .any(|t| t.eq_ignore_ascii_case(up));
    let route_disables = fwd
        .upgrades
        .iter()
        .any(|(t, enabled)| !enabled && t.eq_ignore_ascii_case(up));
    if listener_allows && !route_disables {
        Ok(true)
    } else {
        Err(ProxyError::UpgradeNotAllowed)
    }
}

fn redirect(
    r: &RedirectAction,
    matched: &legate_snapshot::PathMatch,
    req: &Request<Incoming>,
    host: &str,
) -> Response<ResponseBody> {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let (host_only, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host.starts_with('[') => (h, p.parse::<u16>().ok()),
        _ => (host, None),
    };
    let new_host = r.host.as_deref().unwrap_or(host_only);
    let port = r.port.or(port);
    let path = req.uri().path();
    let new_path: String = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.to_string(),
        (None, Some(prefix)) => match matched {
            legate_snapshot::PathMatch::Prefix(p)
            | legate_snapshot::PathMatch::SeparatedPrefix(p) => {
                format!("{prefix}{}", path.get(p.len()..).unwrap_or(""))
            }
            _ => prefix.to_string(),
        },
        (None, None) => path.to_owned(),
    };
    let mut location = format!("{scheme}://{new_host}");
    if let Some(p) = port {
        let default = if scheme == "https" { 443 } else { 80 };
        if p != default {
            location.push_str(&format!(":{p}"));
        }
    }
    location.push_str(&new_path);
    if !r.strip_query
        && let Some(q) = req.uri().query()
    {
        location.push('?');
        location.push_str(q);
    }
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}
