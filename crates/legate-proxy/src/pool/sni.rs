//! `auto_sni`: the TLS server name of a new connection comes from the request (its `Host`,
//! or the header `override_auto_sni_header` names when the request has it), so connections
//! are pooled per name: one protocol pool per server name, all sharing the cluster's circuit
//! breakers. A request whose name is not a DNS name (an IP address, nothing) uses the pool
//! without a per-request name (the configured `sni`, else the host's address).
//!
//! Names come from downstream requests, so the number of pools is bounded
//! ([`MAX_NAMES`]); past it, a pool chosen at random is dropped (its connections finish
//! what they carry and close).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{HeaderName, Request, Response, header};
use legate_tls::pki_types::ServerName;

use super::{Common, Inner, PoolTls, UpstreamBody, leaf, send_leaf};
use crate::body::RequestBody;
use crate::error::ProxyError;

/// The most server names pooled at once per cluster.
const MAX_NAMES: usize = 256;

pub(crate) struct SniPools {
    common: Common,
    header: Option<HeaderName>,
    /// Requests without a usable name.
    default: Inner,
    by_name: Mutex<HashMap<Arc<str>, Arc<Inner>>>,
}

impl SniPools {
    pub(super) fn new(common: Common, header: Option<HeaderName>) -> Arc<Self> {
        // `leaf` picks each pool's ALPN offer from the protocol.
        let default = leaf(common.with_alpn(crate::tls::upstream::Alpn::Both));
        Arc::new(SniPools {
            common,
            header,
            default,
            by_name: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Inner>>> {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let Some(name) = server_name(&req, self.header.as_ref()) else {
            return send_leaf(&self.default, addr, req).await;
        };
        let pool = self.pool_for(name);
        send_leaf(&pool, addr, req).await
    }

    fn pool_for(&self, name: String) -> Arc<Inner> {
        let mut pools = self.lock();
        if let Some(p) = pools.get(name.as_str()) {
            return p.clone();
        }
        if pools.len() >= MAX_NAMES {
            let victim = pools.keys().nth(fastrand::usize(..pools.len())).cloned();
            if let Some(v) = victim {
                pools.remove(&v);
            }
        }
        let sni = ServerName::try_from(name.clone()).ok();
        let common = Common {
            settings: self.common.settings.clone(),
            open: self.common.open.clone(),
            limits: self.common.limits.clone(),
            tls: self.common.tls.as_ref().map(|t| PoolTls {
                sni: sni.clone(),
                ..t.clone()
            }),
        };
        let pool = Arc::new(leaf(common));
        pools.insert(Arc::from(name), pool.clone());
        pool
    }
}

/// The DNS name a request asks for: the override header when present and not empty, else
/// `Host` (or the URI's authority), without its port; lowercase. `None` for IP addresses and
/// anything that is not a DNS name.
fn server_name(req: &Request<RequestBody>, header: Option<&HeaderName>) -> Option<String> {
    let from_header = header
        .and_then(|h| req.headers().get(h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let raw = match from_header {
        Some(v) => v,
        None => match req.headers().get(header::HOST) {
            Some(h) => h.to_str().ok()?,
            None => req.uri().authority()?.as_str(),
        },
    };
    if raw.starts_with('[') {
        return None;
    }
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.parse::<std::net::IpAddr>().is_err()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, other: Option<(&'static str, &str)>) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::Empty);
        if let Some(h) = host {
            r.headers_mut()
                .insert(header::HOST, h.parse().expect("host"));
        }
        if let Some((k, v)) = other {
            r.headers_mut().insert(k, v.parse().expect("value"));
        }
        r
    }

    #[test]
    fn names_from_requests() {
        type Case = (
            Option<&'static str>,
            Option<(&'static str, &'static str)>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: [Case; 8] = [
            (Some("API.example.com"), None, None, Some("api.example.com")),
            (
                Some("api.example.com:8443"),
                None,
                None,
                Some("api.example.com"),
            ),
            (Some("10.0.0.1:80"), None, None, None),
            (Some("[::1]:80"), None, None, None),
            (Some("bad_name"), None, None, None),
            (None, None, None, None),
            (
                Some("a.example.com"),
                Some(("x-sni", "b.example.com")),
                Some("x-sni"),
                Some("b.example.com"),
            ),
            (
                Some("a.example.com"),
                Some(("x-sni", "")),
                Some("x-sni"),
                Some("a.example.com"),
            ),
        ];
        for (host, other, header, want) in cases {
            assert_eq!(
                server_name(
                    &req(host, other),
                    header.map(HeaderName::from_static).as_ref()
                )
                .as_deref(),
                want,
                "{host:?} {other:?}"
            );
        }
    }
}
