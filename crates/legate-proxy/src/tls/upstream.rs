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
//! cause}` and answers `upstream-tls-certificate` (the server's certificate was refused, or
//! the server refused ours) or `upstream-tls-handshake` (versions, ALPN, anything else). The
//! request was never sent, so retry policies may send it again like a connect failure.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use legate_snapshot::UpstreamTls;
use legate_telemetry::Counter;
use legate_tls::TlsError;
use legate_tls::config::{ClientParams, NameCheck, Roots, TlsVersion, client_config};
use legate_tls::pki_types::ServerName;
use legate_tls::reload::Current;
use legate_tls::rustls::client::Resumption;
use legate_tls::rustls::{AlertDescription, CertificateError, ClientConfig, Error as RustlsError};
use legate_tls::tokio_rustls::TlsConnector;
use legate_tls::tokio_rustls::client::TlsStream;
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

/// Why an upstream handshake failed: the `cause` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The server's chain does not lead to a trusted CA.
    UnknownCa,
    /// The server's certificate is expired or not valid yet.
    Expired,
    /// The server's certificate is not valid for the name or SANs asked for.
    NameMismatch,
    /// Anything else wrong with the server's certificate.
    BadCertificate,
    /// The server refused our certificate (or its absence).
    PeerRejectedCertificate,
    /// No TLS version in common.
    ProtocolVersion,
    /// No ALPN protocol in common, or the wrong one.
    Alpn,
    /// The handshake did not finish within `connect_timeout`.
    Timeout,
    /// Anything else: the peer is not speaking TLS, closed, broke the protocol.
    Handshake,
}

impl Cause {
    pub(crate) const ALL: [Cause; 9] = [
        Cause::UnknownCa,
        Cause::Expired,
        Cause::NameMismatch,
        Cause::BadCertificate,
        Cause::PeerRejectedCertificate,
        Cause::ProtocolVersion,
        Cause::Alpn,
        Cause::Timeout,
        Cause::Handshake,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Cause::UnknownCa => "unknown_ca",
            Cause::Expired => "expired",
            Cause::NameMismatch => "name_mismatch",
            Cause::BadCertificate => "bad_certificate",
            Cause::PeerRejectedCertificate => "peer_rejected_certificate",
            Cause::ProtocolVersion => "protocol_version",
            Cause::Alpn => "alpn",
            Cause::Timeout => "timeout",
            Cause::Handshake => "handshake",
        }
    }

    /// The local reply this cause answers with.
    pub(crate) fn error(self) -> ProxyError {
        match self {
            Cause::UnknownCa
            | Cause::Expired
            | Cause::NameMismatch
            | Cause::BadCertificate
            | Cause::PeerRejectedCertificate => ProxyError::UpstreamTlsCertificate,
            Cause::ProtocolVersion | Cause::Alpn | Cause::Handshake => {
                ProxyError::UpstreamTlsHandshake
            }
            Cause::Timeout => ProxyError::ConnectTimeout,
        }
    }
}

/// The cause of a rustls error.
pub(crate) fn cause_of(e: &RustlsError) -> Cause {
    match e {
        RustlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => Cause::UnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Cause::Expired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Cause::NameMismatch
            }
            _ => Cause::BadCertificate,
        },
        RustlsError::AlertReceived(alert) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied => Cause::PeerRejectedCertificate,
            AlertDescription::ProtocolVersion => Cause::ProtocolVersion,
            AlertDescription::NoApplicationProtocol => Cause::Alpn,
            _ => Cause::Handshake,
        },
        RustlsError::PeerIncompatible(p) => {
            use legate_tls::rustls::PeerIncompatible as P;
            match p {
                P::ServerDoesNotSupportTls12Or13
                | P::ServerTlsVersionIsDisabledByOurConfig
                | P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled => Cause::ProtocolVersion,
                _ => Cause::Handshake,
            }
        }
        RustlsError::NoApplicationProtocol => Cause::Alpn,
        _ => Cause::Handshake,
    }
}

/// The rustls error inside an I/O error, if any.
fn rustls_error(e: &io::Error) -> Option<&RustlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<RustlsError>())
}

/// A TLS failure that surfaced after the handshake, in a hyper error: with TLS 1.3 a server
/// refusing the client certificate says so only after the client finished its side. The
/// server rejected the connection before reading any request from it.
pub(crate) fn after_handshake(e: &(dyn std::error::Error + 'static)) -> Option<Cause> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && let Some(r) = rustls_error(io)
        {
            return Some(cause_of(r));
        }
        if let Some(r) = cause.downcast_ref::<RustlsError>() {
            return Some(cause_of(r));
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
    failures: [Arc<Counter>; Cause::ALL.len()],
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
        let failures = Cause::ALL.map(|c| {
            metrics
                .upstream_tls_handshake_failures
                .get_or_create(&[&name, c.label()])
        });
        Arc::new(ClusterTls {
            name,
            spec: ArcSwap::new(spec),
            current: ArcSwap::new(current),
            failures,
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
    pub(crate) fn failed(&self, cause: Cause) {
        if let Some(i) = Cause::ALL.iter().position(|c| *c == cause) {
            self.failures[i].inc();
        }
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
        let fail = |cause: Cause| {
            self.failed(cause);
            cause.error()
        };
        let stream = match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
            Err(_) => {
                tracing::debug!(cluster = %self.name, %addr, "upstream tls handshake timed out");
                return Err(fail(Cause::Timeout));
            }
            Ok(Err(error)) => {
                let cause = rustls_error(&error).map_or(Cause::Handshake, cause_of);
                tracing::debug!(cluster = %self.name, %addr, %error, cause = cause.label(), "upstream tls handshake failed");
                return Err(fail(cause));
            }
            Ok(Ok(stream)) => stream,
        };
        let negotiated = stream.get_ref().1.alpn_protocol();
        let h2 = negotiated == Some(b"h2");
        // A server that picks HTTP/1.1 for an HTTP/2 cluster cannot be spoken to; one that
        // picks nothing gets HTTP/2 with prior knowledge, as Envoy does.
        if alpn == Alpn::H2 && negotiated.is_some() && !h2 {
            tracing::debug!(cluster = %self.name, %addr, "upstream refused h2 in ALPN");
            return Err(fail(Cause::Alpn));
        }
        Ok((stream, h2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_map_to_the_two_errors() {
        let cases = [
            (
                RustlsError::InvalidCertificate(CertificateError::UnknownIssuer),
                Cause::UnknownCa,
            ),
            (
                RustlsError::InvalidCertificate(CertificateError::Expired),
                Cause::Expired,
            ),
            (
                RustlsError::InvalidCertificate(CertificateError::NotValidForName),
                Cause::NameMismatch,
            ),
            (
                RustlsError::AlertReceived(AlertDescription::CertificateRequired),
                Cause::PeerRejectedCertificate,
            ),
            (
                RustlsError::AlertReceived(AlertDescription::ProtocolVersion),
                Cause::ProtocolVersion,
            ),
            (RustlsError::NoApplicationProtocol, Cause::Alpn),
            (RustlsError::HandshakeNotComplete, Cause::Handshake),
        ];
        for (e, want) in cases {
            assert_eq!(cause_of(&e), want, "{e:?}");
        }
        assert_eq!(
            Cause::NameMismatch.error().code(),
            "upstream-tls-certificate"
        );
        assert_eq!(
            Cause::ProtocolVersion.error().code(),
            "upstream-tls-handshake"
        );
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            RustlsError::AlertReceived(AlertDescription::BadCertificate),
        );
        assert_eq!(
            after_handshake(&wrapped),
            Some(Cause::PeerRejectedCertificate)
        );
        let plain = io::Error::other("reset");
        assert_eq!(after_handshake(&plain), None);
    }
}
