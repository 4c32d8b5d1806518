//! Upstream TLS: a cluster's rustls client configuration, the handshake after the TCP
//! connect (bounded by the same `connect_timeout`), and what a failed handshake means.
//!
//! Verification (see `FIELDS.md` for the Envoy fields):
//! - no validation context: the server certificate must chain to Mozilla's roots and be valid
//!   for the name sent (the SNI, else the host's IP address). Envoy verifies nothing then;
//!   legate never connects unverified;
//! - `trusted_ca` without SAN matchers: the chain only (Envoy's behaviour);
//! - `trusted_ca` with `match_typed_subject_alt_names`: the chain, then one matcher must
//!   match one SAN;
//! - `auto_san_validation`: the chain, then the name sent (which `auto_sni` took from the
//!   request) instead of the SAN matchers.
//!
//! A failed handshake is counted in `legate_upstream_tls_handshake_failures_total{cluster,
//! cause}` (the cause as `legate_tls::HandshakeFailure` names it, or `timeout`) and answers
//! `upstream-tls-certificate` (the server's certificate was refused, or the server refused
//! ours) or `upstream-tls-handshake` (versions, ALPN, anything else). The request was never
//! sent, so retry policies may send it again like a connect failure.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use legate_snapshot::UpstreamTls;
use legate_telemetry::{Counter, Family};
use legate_tls::config::{ClientParams, NameCheck, Roots, TlsVersion, client_config};
use legate_tls::pki_types::ServerName;
use legate_tls::reload::Current;
use legate_tls::rustls::client::Resumption;
use legate_tls::rustls::{ClientConfig, Error as RustlsError};
use legate_tls::tokio_rustls::TlsConnector;
use legate_tls::tokio_rustls::client::TlsStream;
use legate_tls::{HandshakeFailure, TlsError};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::expiry::Expiry;
use super::material::{self, SanRule};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Which ALPN protocols a connection offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    H2,
    /// `h2`, then `http/1.1` (auto_config).
    Both,
}

impl Alpn {
    fn index(self) -> usize {
        match self {
            Alpn::Http1 => 0,
            Alpn::H2 => 1,
            Alpn::Both => 2,
        }
    }

    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// A cluster's client configurations (one per ALPN offer) and the server name it sends.
#[derive(Debug)]
pub(crate) struct ClientTls {
    configs: [Arc<ClientConfig>; 3],
    sni: Option<ServerName<'static>>,
}

fn version(v: legate_snapshot::TlsVersion) -> TlsVersion {
    match v {
        legate_snapshot::TlsVersion::V1_2 => TlsVersion::V1_2,
        legate_snapshot::TlsVersion::V1_3 => TlsVersion::V1_3,
    }
}

/// Build the client configurations of `spec`, reading its files (blocking), and record the
/// client certificate's expiry.
pub(crate) fn build_client(
    spec: &UpstreamTls,
    cluster: &str,
    expiry: &Expiry,
) -> Result<ClientTls, TlsError> {
    let what = format!("cluster '{cluster}'");
    let (roots, names) = match &spec.validation {
        None => (Roots::WebPki, NameCheck::ServerName),
        Some(v) => {
            let roots = match &v.trusted_ca {
                Some(ca) => Roots::Custom(material::root_store(ca, &format!("{what} trusted_ca"))?),
                None => Roots::WebPki,
            };
            let names = if spec.auto_san_validation {
                NameCheck::ServerName
            } else if v.match_typed_subject_alt_names.is_empty() {
                NameCheck::ChainOnly
            } else {
                NameCheck::Sans(Arc::new(SanRule(v.clone())))
            };
            (roots, names)
        }
    };
    let client_cert = match &spec.certificate {
        Some(c) => {
            let (key, not_after) = material::certified_key(c, &format!("{what} client"))?;
            expiry.record("cluster", cluster, "client", not_after);
            Some(key)
        }
        None => None,
    };
    let base = client_config(
        ClientParams {
            roots,
            names,
            client_cert,
            alpn: Vec::new(),
            min_version: Some(version(spec.params.min_version)),
            max_version: Some(version(spec.params.max_version)),
        },
        &what,
    )?;
    let variant = |alpn: Alpn| {
        let mut c = (*base).clone();
        c.alpn_protocols = alpn.protocols();
        if spec.max_session_keys == 0 {
            c.resumption = Resumption::disabled();
        }
        Arc::new(c)
    };
    let sni = spec
        .sni
        .as_ref()
        .and_then(|s| ServerName::try_from(s.to_string()).ok());
    Ok(ClientTls {
        configs: [variant(Alpn::Http1), variant(Alpn::H2), variant(Alpn::Both)],
        sni,
    })
}

/// Build `spec`'s configurations off the request path, watching its files.
pub(crate) async fn prepare(
    spec: Arc<UpstreamTls>,
    cluster: Arc<str>,
    expiry: Arc<Expiry>,
) -> Result<Current<ClientTls>, TlsError> {
    let task = tokio::task::spawn_blocking(move || {
        let files = material::files(material::sources(
            spec.certificate.as_ref(),
            spec.validation.as_ref(),
        ));
        material::watched(files, move || build_client(&spec, &cluster, &expiry))
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(TlsError::Verifier {
            what: "tls".to_owned(),
            message: format!("building the configuration failed: {e}"),
        }),
    }
}

/// Why an upstream handshake failed: legate-tls' cause, or the connect timeout running out
/// during the handshake. `label` is the metric's `cause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Tls(HandshakeFailure),
    Timeout,
}

impl Failure {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::Tls(f) => f.as_str(),
            Failure::Timeout => "timeout",
        }
    }

    /// The local reply: a refused certificate (either side's) or any other TLS failure; a
    /// handshake that outlived `connect_timeout` is a connect timeout.
    pub(crate) fn error(self) -> ProxyError {
        match self {
            Failure::Tls(f) if f.is_certificate() => ProxyError::UpstreamTlsCertificate,
            Failure::Tls(_) => ProxyError::UpstreamTlsHandshake,
            Failure::Timeout => ProxyError::ConnectTimeout,
        }
    }
}

/// A TLS failure that surfaced after the handshake, in a hyper error: with TLS 1.3 a server
/// refusing the client certificate says so only after the client finished its side. The
/// server rejected the connection before reading any request from it.
pub(crate) fn after_handshake(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<RustlsError>())
        {
            return Some(Failure::Tls(HandshakeFailure::from_rustls(r)));
        }
        if let Some(r) = cause.downcast_ref::<RustlsError>() {
            return Some(Failure::Tls(HandshakeFailure::from_rustls(r)));
        }
        source = cause.source();
    }
    None
}

/// The TLS of one cluster: its definition and current configurations, shared by every pool
/// and the health checker of the cluster across compatible definitions.
pub(crate) struct ClusterTls {
    name: Arc<str>,
    spec: ArcSwap<UpstreamTls>,
    /// The outer swap is a new definition; the inner one, a file rotation.
    current: ArcSwap<ArcSwap<ClientTls>>,
    /// `legate_upstream_tls_handshake_failures_total`; members are made on a cluster's first
    /// failure of each cause (failures are rare, and off the successful path).
    failures: Arc<Family<Counter>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    pub(crate) fn new(
        name: Arc<str>,
        spec: Arc<UpstreamTls>,
        current: Current<ClientTls>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        Arc::new(ClusterTls {
            name,
            spec: ArcSwap::new(spec),
            current: ArcSwap::new(current),
            failures: metrics.upstream_tls_handshake_failures.clone(),
        })
    }

    /// The definition the current configurations were built from.
    pub(crate) fn spec(&self) -> Arc<UpstreamTls> {
        self.spec.load_full()
    }

    /// Use configurations built for a new definition on new connections.
    pub(crate) fn install(&self, spec: Arc<UpstreamTls>, current: Current<ClientTls>) {
        self.current.store(current);
        self.spec.store(spec);
    }

    /// Count a failed handshake.
    pub(crate) fn failed(&self, failure: Failure) {
        self.failures
            .get_or_create(&[&self.name, failure.label()])
            .inc();
    }

    /// The TLS handshake on a connected socket, within `deadline`. `sni`: a name chosen per
    /// request (`auto_sni`); otherwise the configured `sni`, else the host's address. Returns
    /// the stream and whether `h2` was negotiated.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        sni: Option<&ServerName<'static>>,
        alpn: Alpn,
        deadline: Instant,
    ) -> Result<(TlsStream<TcpStream>, bool), ProxyError> {
        let client = self.current.load().load_full();
        let name = sni
            .or(client.sni.as_ref())
            .cloned()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let connector = TlsConnector::from(client.configs[alpn.index()].clone());
        let fail = |failure: Failure| {
            self.failed(failure);
            failure.error()
        };
        let stream = match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
            Err(_) => {
                tracing::debug!(cluster = %self.name, %addr, "upstream tls handshake timed out");
                return Err(fail(Failure::Timeout));
            }
            Ok(Err(error)) => {
                let failure = Failure::Tls(HandshakeFailure::classify(&error));
                tracing::debug!(cluster = %self.name, %addr, %error, cause = failure.label(), "upstream tls handshake failed");
                return Err(fail(failure));
            }
            Ok(Ok(stream)) => stream,
        };
        let negotiated = stream.get_ref().1.alpn_protocol();
        let h2 = negotiated == Some(b"h2");
        // A server that picks HTTP/1.1 for an HTTP/2 cluster cannot be spoken to; one that
        // picks nothing gets HTTP/2 with prior knowledge, as Envoy does.
        if alpn == Alpn::H2 && negotiated.is_some() && !h2 {
            tracing::debug!(cluster = %self.name, %addr, "upstream refused h2 in ALPN");
            return Err(fail(Failure::Tls(HandshakeFailure::Alpn)));
        }
        Ok((stream, h2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_tls::rustls::{AlertDescription, CertificateError};

    #[test]
    fn failures_answer_with_the_two_errors() {
        let cases = [
            (HandshakeFailure::UnknownCa, "upstream-tls-certificate"),
            (HandshakeFailure::NameMismatch, "upstream-tls-certificate"),
            (
                HandshakeFailure::CertificateRequired,
                "upstream-tls-certificate",
            ),
            (HandshakeFailure::ProtocolVersion, "upstream-tls-handshake"),
            (HandshakeFailure::Alpn, "upstream-tls-handshake"),
            (HandshakeFailure::Io, "upstream-tls-handshake"),
        ];
        for (f, code) in cases {
            assert_eq!(Failure::Tls(f).error().code(), code, "{f:?}");
        }
        assert_eq!(Failure::Timeout.error().code(), "connect-timeout");
        assert_eq!(Failure::Timeout.label(), "timeout");
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            RustlsError::AlertReceived(AlertDescription::BadCertificate),
        );
        assert_eq!(
            after_handshake(&wrapped),
            Some(Failure::Tls(HandshakeFailure::RejectedCertificate))
        );
        let expired = io::Error::new(
            io::ErrorKind::InvalidData,
            RustlsError::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(
            after_handshake(&expired).map(Failure::label),
            Some("expired")
        );
        assert_eq!(after_handshake(&io::Error::other("reset")), None);
    }
}
