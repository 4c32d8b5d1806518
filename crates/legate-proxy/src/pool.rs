//! Upstream connection pools, one per cluster, with Envoy's connection and circuit-breaker
//! semantics.
//!
//! - HTTP/1.1 ([`http1`]): per host a LIFO list of idle keep-alive connections built on
//!   `hyper::client::conn::http1`. A response body gives its connection back when it ends;
//!   a body dropped early, a `101 Switching Protocols` or a connection that has carried
//!   `max_requests_per_connection` requests is not reused. With `max_connections` reached, a
//!   request waits for a connection of its host to come back.
//! - HTTP/2 ([`http2`]): one multiplexed connection per host, dialled by address so the
//!   request's `:authority` can be the logical host; concurrent first requests share one
//!   dial.
//! - auto (`auto_config`, TLS only) ([`auto`]): the first connection to a host offers both
//!   `h2` and `http/1.1` in ALPN; what the host picks sends that connection, and the host's
//!   later requests, to the HTTP/2 or the HTTP/1.1 pool.
//! - `auto_sni` ([`sni`]): one pool per server name taken from the requests.
//!
//! Every protocol: a request waiting for a connection (being dialled, or to come back) holds
//! a `max_pending_requests` slot and fails with [`ProxyError::OverflowMaxPendingRequests`]
//! when there is none; every connection holds a `max_connections` slot for as long as its
//! socket lives, except that a host with no connection at all may always open one (as
//! Envoy does, so one busy host cannot starve the others forever). A TLS cluster dials TCP,
//! then completes the TLS handshake within the same `connect_timeout`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use legate_snapshot::{Cluster, UpstreamProtocol};
use legate_telemetry::Gauge;
use legate_tls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::resilience::limits::ResourceLimits;
use crate::tls::upstream::{Alpn, ClusterTls};

mod auto;
mod http1;
mod http2;
mod sni;
#[cfg(test)]
mod tests;

/// The connection pool of one cluster.
pub(crate) struct Pool {
    inner: Inner,
}

enum Inner {
    Http1(Arc<http1::H1Pool>),
    Http2(Arc<http2::H2Pool>),
    Auto(Arc<auto::AutoPool>),
    /// `auto_sni`: a pool per server name.
    BySni(Arc<sni::SniPools>),
}

/// What a pool takes from its cluster's definition. Two definitions with equal settings can
/// share a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    /// Idle connections older than this are closed.
    idle_timeout: Option<Duration>,
    /// A connection that has carried this many requests is closed after the last one.
    max_requests_per_connection: Option<u32>,
    /// Whether connections are TLS.
    tls: bool,
    /// `auto_sni`, and the header it reads instead of Host.
    auto_sni: Option<Option<http::HeaderName>>,
}

impl Settings {
    pub(crate) fn from_cluster(c: &Cluster) -> Self {
        Settings {
            protocol: c.protocol,
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            max_requests_per_connection: c.max_requests_per_connection,
            tls: c.tls.is_some(),
            auto_sni: c
                .tls
                .as_ref()
                .filter(|t| t.auto_sni)
                .map(|t| t.auto_sni_header.clone()),
        }
    }
}

/// How a pool's connections do TLS: the cluster's configurations, the ALPN offer and, with
/// `auto_sni`, the server name of this pool.
#[derive(Clone, Debug)]
pub(crate) struct PoolTls {
    pub(crate) cluster: Arc<ClusterTls>,
    pub(crate) alpn: Alpn,
    pub(crate) sni: Option<ServerName<'static>>,
}

impl PoolTls {
    /// The handshake on a connected socket, within `deadline`.
    async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(legate_tls::tokio_rustls::client::TlsStream<TcpStream>, bool), ProxyError> {
        self.cluster
            .connect(tcp, addr, self.sni.as_ref(), self.alpn, deadline)
            .await
    }
}

/// What every protocol's pools share: settings, the open-connections gauge, the cluster's
/// circuit-breaker counts and, for TLS clusters, how to do TLS.
struct Common {
    settings: Settings,
    open: Arc<Gauge>,
    limits: Arc<ResourceLimits>,
    tls: Option<PoolTls>,
}

impl Common {
    fn with_alpn(&self, alpn: Alpn) -> Common {
        Common {
            settings: self.settings.clone(),
            open: self.open.clone(),
            limits: self.limits.clone(),
            tls: self.tls.as_ref().map(|t| PoolTls { alpn, ..t.clone() }),
        }
    }
}

impl Pool {
    /// The pool of a cluster; `tls` must be given for a TLS cluster.
    pub(crate) fn new(
        config: &Cluster,
        open: Arc<Gauge>,
        limits: Arc<ResourceLimits>,
        tls: Option<Arc<ClusterTls>>,
    ) -> Self {
        let settings = Settings::from_cluster(config);
        let common = Common {
            settings,
            open,
            limits,
            tls: tls.map(|cluster| PoolTls {
                cluster,
                alpn: Alpn::Http1,
                sni: None,
            }),
        };
        if let (Some(header), Some(_)) = (&common.settings.auto_sni, &common.tls) {
            let header = header.clone();
            return Pool {
                inner: Inner::BySni(sni::SniPools::new(common, header)),
            };
        }
        Pool {
            inner: leaf(common),
        }
    }

    #[cfg(test)]
    fn with_settings(settings: Settings, open: Arc<Gauge>, limits: Arc<ResourceLimits>) -> Self {
        Pool {
            inner: leaf(Common {
                settings,
                open,
                limits,
                tls: None,
            }),
        }
    }

    /// Send `req` to `addr`. For HTTP/1.1 (and auto) the request is in origin form with its
    /// `Host` set (an absolute URI is sent in origin form); for HTTP/2 its authority is sent
    /// as `:authority` and the connection goes to `addr`.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        match &self.inner {
            Inner::Http1(pool) => pool.send(addr, req).await,
            Inner::Http2(pool) => Ok(pool.send(addr, req).await?.map(UpstreamBody::new)),
            // Boxed: their futures hold both protocols' (and the TLS dial's); inline they would
            // make every request's future several times larger, plaintext ones included.
            Inner::Auto(pool) => Box::pin(pool.send(addr, req)).await,
            Inner::BySni(pools) => Box::pin(pools.send(addr, req)).await,
        }
    }
}

/// The pool for one protocol (and one server name).
fn leaf(common: Common) -> Inner {
    match common.settings.protocol {
        UpstreamProtocol::Http1 => Inner::Http1(http1::H1Pool::new(common.with_alpn(Alpn::Http1))),
        UpstreamProtocol::Http2 => Inner::Http2(http2::H2Pool::new(common.with_alpn(Alpn::H2))),
        // Without TLS, validation has already made auto HTTP/1.1.
        UpstreamProtocol::Auto if common.tls.is_none() => {
            Inner::Http1(http1::H1Pool::new(common.with_alpn(Alpn::Http1)))
        }
        UpstreamProtocol::Auto => Inner::Auto(auto::AutoPool::new(common)),
    }
}

/// Send on a per-protocol pool (never a per-name one).
async fn send_leaf(
    inner: &Inner,
    addr: SocketAddr,
    req: Request<RequestBody>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    match inner {
        Inner::Http1(pool) => pool.send(addr, req).await,
        Inner::Http2(pool) => Ok(pool.send(addr, req).await?.map(UpstreamBody::new)),
        Inner::Auto(pool) => Box::pin(pool.send(addr, req)).await,
        Inner::BySni(_) => Err(ProxyError::BadRequest),
    }
}

/// An upstream response body. For HTTP/1.1 it carries its connection and gives it back to
/// the pool when the body has been read to its end.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<http1::Lease>,
}

impl UpstreamBody {
    fn new(inner: Incoming) -> Self {
        UpstreamBody { inner, lease: None }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if this.lease.is_some() {
            match &res {
                Poll::Ready(None) => this.release(),
                // A body of known length is over with its last byte: hyper's server does
                // not poll again for the end, so give the connection back now.
                Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
                // The connection is broken: dropping the lease closes it.
                Poll::Ready(Some(Err(_))) => this.lease = None,
                _ => {}
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Classify a request that failed after it may have been written (or a response body
/// that failed part way).
pub(crate) fn classify(e: &hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return ProxyError::ProtocolError;
    }
    if e.is_timeout() {
        return ProxyError::UpstreamTimeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2e) = cause.downcast_ref::<h2::Error>() {
            return classify_h2(h2e);
        }
        source = cause.source();
    }
    ProxyError::UpstreamReset
}

/// [`classify`], counting a TLS failure that surfaced after the handshake: with TLS 1.3 a
/// server that refuses our client certificate says so when the client first reads. The
/// server refused the connection before reading any request from it.
fn classify_with_tls(e: &hyper::Error, tls: Option<&PoolTls>) -> ProxyError {
    if let Some(tls) = tls
        && let Some(failure) = crate::tls::upstream::after_handshake(e)
    {
        tls.cluster.failed(failure);
        return failure.error();
    }
    classify(e)
}

fn classify_h2(e: &h2::Error) -> ProxyError {
    match e.reason() {
        // The upstream says it did not process the stream.
        Some(h2::Reason::REFUSED_STREAM) if e.is_remote() => ProxyError::RefusedStream,
        // A graceful GOAWAY fails exactly the streams above its last-stream-id, which the
        // upstream promises it never processed (a GOAWAY with an error code fails processed
        // streams too, so it proves nothing).
        Some(h2::Reason::NO_ERROR) if e.is_go_away() && e.is_remote() => ProxyError::RefusedStream,
        // The upstream broke the protocol and h2 tore the connection or stream down.
        Some(
            h2::Reason::PROTOCOL_ERROR
            | h2::Reason::FRAME_SIZE_ERROR
            | h2::Reason::COMPRESSION_ERROR
            | h2::Reason::FLOW_CONTROL_ERROR,
        ) if e.is_library() => ProxyError::ProtocolError,
        _ => ProxyError::UpstreamReset,
    }
}
