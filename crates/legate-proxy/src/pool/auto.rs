//! The auto pool (`auto_config` over TLS): HTTP/2 to hosts that accept `h2` in ALPN,
//! HTTP/1.1 to the others.
//!
//! What a host chose is remembered. The first request to a host not known yet dials a probe
//! connection offering both protocols and hands it, by what the host picked, to the HTTP/2
//! or the HTTP/1.1 pool, which then carry the host's requests (offering only their own
//! protocol). A handshake failure forgets the host, so a host that changed its mind is asked
//! again. Upgrades (WebSocket) always take HTTP/1.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, Uri, Version};
use tokio::time::Instant;

use super::http1::H1Pool;
use super::http2::H2Pool;
use super::{Common, UpstreamBody};
use crate::body::RequestBody;
use crate::connector;
use crate::error::ProxyError;
use crate::resilience::limits::Resource;
use crate::tls::upstream::Alpn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chosen {
    Http1,
    H2,
}

/// The most hosts whose choice is remembered; beyond it the table starts over (a host then
/// costs one more probe).
const MAX_KNOWN: usize = 4096;

pub(crate) struct AutoPool {
    common: Common,
    h1: Arc<H1Pool>,
    h2: Arc<H2Pool>,
    known: Mutex<HashMap<SocketAddr, Chosen>>,
}

impl AutoPool {
    pub(super) fn new(common: Common) -> Arc<Self> {
        Arc::new(AutoPool {
            h1: H1Pool::new(common.with_alpn(Alpn::Http1)),
            h2: H2Pool::new(common.with_alpn(Alpn::H2)),
            common: common.with_alpn(Alpn::Both),
            known: Mutex::new(HashMap::new()),
        })
    }

    fn known(&self) -> MutexGuard<'_, HashMap<SocketAddr, Chosen>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, addr: SocketAddr, chosen: Option<Chosen>) {
        let mut known = self.known();
        match chosen {
            Some(c) => {
                if known.len() >= MAX_KNOWN && !known.contains_key(&addr) {
                    known.clear();
                }
                known.insert(addr, c);
            }
            None => {
                known.remove(&addr);
            }
        }
    }

    /// Send `req` (built for HTTP/1.1: origin form and `Host`) by the protocol `addr` chose.
    pub(super) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let upgrade =
            req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE);
        let mut chosen = self.known().get(&addr).copied();
        if chosen.is_none() && !upgrade {
            chosen = Some(self.probe(addr).await?);
        }
        let res = match chosen {
            Some(Chosen::H2) if !upgrade => self
                .h2
                .send(addr, as_h2(req)?)
                .await
                .map(|r| r.map(UpstreamBody::new)),
            _ => self.h1.send(addr, req).await,
        };
        if matches!(
            res,
            Err(ProxyError::UpstreamTlsHandshake | ProxyError::UpstreamTlsCertificate)
        ) {
            self.remember(addr, None);
        }
        res
    }

    /// Dial `addr` offering both protocols and give the connection to the pool of the one it
    /// picked.
    async fn probe(self: &Arc<Self>, addr: SocketAddr) -> Result<Chosen, ProxyError> {
        let Some(tls) = &self.common.tls else {
            return Ok(Chosen::Http1);
        };
        // Waiting for a connection holds a pending-request slot, as in the other pools.
        let _pending = self
            .common
            .limits
            .try_acquire(Resource::PendingRequests)
            .ok_or(ProxyError::OverflowMaxPendingRequests)?;
        let timeout = self.common.settings.connect_timeout;
        let deadline = crate::deadline::after(Instant::now(), timeout);
        let tcp = connector::connect(addr, timeout).await?;
        let (stream, h2) = tls.connect(tcp, addr, deadline).await?;
        let chosen = if h2 {
            self.h2.adopt(addr, stream).await?;
            Chosen::H2
        } else {
            self.h1.adopt(addr, stream).await?;
            Chosen::Http1
        };
        self.remember(addr, Some(chosen));
        Ok(chosen)
    }
}

/// An HTTP/1.1-form request as HTTP/2: `Host` becomes the `https` URI's authority.
fn as_h2(mut req: Request<RequestBody>) -> Result<Request<RequestBody>, ProxyError> {
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h: &HeaderValue| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
        .ok_or(ProxyError::BadRequest)?;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::builder()
        .scheme(Scheme::HTTPS)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest)?;
    *req.version_mut() = Version::HTTP_2;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h1_requests_become_h2() {
        let mut req = Request::new(RequestBody::Empty);
        *req.uri_mut() = Uri::from_static("/a?b=c");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("svc.internal:8443"));
        req.headers_mut()
            .insert("x-other", HeaderValue::from_static("1"));
        let out = as_h2(req).expect("converts");
        assert_eq!(out.uri(), "https://svc.internal:8443/a?b=c");
        assert_eq!(out.version(), Version::HTTP_2);
        assert!(!out.headers().contains_key(header::HOST));
        assert!(out.headers().contains_key("x-other"));
    }
}
