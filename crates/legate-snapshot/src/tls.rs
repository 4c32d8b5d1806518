//! TLS in the runtime model: what a cluster needs to open TLS connections to its hosts
//! ([`UpstreamTls`]) and what a listener needs to terminate TLS ([`ListenerTls`]), plus the
//! two decisions that need no I/O and are tested here: whether a peer's subject alternative
//! names satisfy a validation context ([`CertificateValidation::accepts`]) and which filter
//! chain a ClientHello's server name selects ([`ListenerTls::select`]).
//!
//! Certificates, keys and CA bundles stay [`DataSource`]s: file names or inline bytes. The
//! proxy reads the files (and watches them) when a snapshot is applied; nothing here opens a
//! file. Neither `Debug` nor `Serialize` ever prints inline bytes, and a private key held
//! inline is shown as `[redacted]`, so `/config_dump` and logs never carry key material.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::StringMatcher;

/// Where TLS material comes from (`config.core.v3.DataSource`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum DataSource {
    /// `filename`: read by the proxy, and read again whenever its contents change.
    Filename(Arc<str>),
    /// `inline_bytes` or `inline_string`.
    Inline(Bytes),
}

impl fmt::Debug for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Filename(path) => f.debug_tuple("Filename").field(path).finish(),
            DataSource::Inline(bytes) => write!(f, "Inline(<{} bytes>)", bytes.len()),
        }
    }
}

impl Serialize for DataSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match self {
            DataSource::Filename(path) => map.serialize_entry("filename", &**path)?,
            DataSource::Inline(bytes) => {
                map.serialize_entry("inline", &format!("<{} bytes>", bytes.len()))?
            }
        }
        map.end()
    }
}

/// A private key's source. Printed and serialized as its file name, or `[redacted]` when it
/// is inline.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PrivateKey(pub DataSource);

pub(crate) const REDACTED: &str = "[redacted]";

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            DataSource::Filename(path) => f.debug_tuple("Filename").field(path).finish(),
            DataSource::Inline(_) => f.write_str(REDACTED),
        }
    }
}

impl Serialize for PrivateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match &self.0 {
            DataSource::Filename(path) => map.serialize_entry("filename", &**path)?,
            DataSource::Inline(_) => map.serialize_entry("inline", REDACTED)?,
        }
        map.end()
    }
}

/// A certificate chain (leaf first) and its private key (`TlsCertificate`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TlsCertificate {
    pub certificate_chain: DataSource,
    pub private_key: PrivateKey,
}

/// The kind of subject alternative name a matcher looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    Dns,
    Uri,
    IpAddress,
    Email,
}

/// One `match_typed_subject_alt_names` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
}

impl SanMatcher {
    /// Whether one SAN of the certificate satisfies this matcher. A DNS SAN with a leading
    /// wildcard (`*.example.com`) satisfies an exact matcher for a name one label deeper
    /// (`api.example.com`), as Envoy evaluates RFC 6125 wildcards; `*` only covers a whole
    /// left-most label.
    pub fn matches(&self, san_type: SanType, value: &str) -> bool {
        if san_type != self.san_type {
            return false;
        }
        if self.matcher.matches(value) {
            return true;
        }
        if san_type == SanType::Dns
            && let crate::StringPattern::Exact(wanted) = &self.matcher.pattern
            && let Some(suffix) = value.strip_prefix("*.")
            && let Some((label, rest)) = wanted.split_once('.')
        {
            return !label.is_empty() && !suffix.is_empty() && rest.eq_ignore_ascii_case(suffix);
        }
        false
    }
}

/// How a peer certificate is verified (`CertificateValidationContext`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertificateValidation {
    /// `trusted_ca`: the CA bundle. `None` with [`Self::system_roots`]: Mozilla's root
    /// program; `None` without it only happens before SDS resolution fills it in.
    pub trusted_ca: Option<DataSource>,
    /// `system_root_certs`: trust Mozilla's roots (webpki-roots) rather than a bundle.
    pub system_roots: bool,
    /// `match_typed_subject_alt_names`: when not empty, at least one must match.
    pub match_typed_subject_alt_names: Vec<SanMatcher>,
}

impl CertificateValidation {
    /// Whether a certificate with these SANs passes the SAN matchers (any one matching any
    /// SAN); true when there are no matchers.
    pub fn accepts<'a>(&self, sans: impl IntoIterator<Item = (SanType, &'a str)> + Clone) -> bool {
        self.match_typed_subject_alt_names.is_empty()
            || self.match_typed_subject_alt_names.iter().any(|m| {
                sans.clone()
                    .into_iter()
                    .any(|(kind, value)| m.matches(kind, value))
            })
    }

    /// Envoy's merge of a `combined_validation_context`: the SDS context's `trusted_ca`
    /// replaces the default's, and their SAN matchers are concatenated.
    pub fn merged_with(&self, dynamic: &CertificateValidation) -> CertificateValidation {
        let mut out = self.clone();
        if dynamic.trusted_ca.is_some() {
            out.trusted_ca = dynamic.trusted_ca.clone();
        }
        out.system_roots |= dynamic.system_roots;
        out.match_typed_subject_alt_names
            .extend(dynamic.match_typed_subject_alt_names.iter().cloned());
        out
    }
}

/// A TLS protocol version legate speaks (1.2 and 1.3 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1_2")]
    V1_2,
    #[serde(rename = "TLSv1_3")]
    V1_3,
}

/// `tls_params` with Envoy's defaults applied: TLS 1.2 to 1.2 for clients (upstream), 1.2 to
/// 1.3 for servers (downstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TlsParams {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

impl TlsParams {
    /// Envoy's client default.
    pub const UPSTREAM_DEFAULT: TlsParams = TlsParams {
        min_version: TlsVersion::V1_2,
        max_version: TlsVersion::V1_2,
    };
    /// Envoy's server default.
    pub const DOWNSTREAM_DEFAULT: TlsParams = TlsParams {
        min_version: TlsVersion::V1_2,
        max_version: TlsVersion::V1_3,
    };
}

/// A cluster's `transport_socket` with `UpstreamTlsContext`, plus the TLS settings of its
/// `upstream_http_protocol_options`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// `sni`: the server name sent (and, without a validation context, verified).
    pub sni: Option<Arc<str>>,
    /// `auto_sni`: the server name comes from each request's Host (or the header below), so
    /// connections are pooled per name.
    pub auto_sni: bool,
    /// `override_auto_sni_header` (lowercase): read instead of Host when present and not
    /// empty.
    #[serde(serialize_with = "crate::types::http_serde::opt_name")]
    pub auto_sni_header: Option<http::HeaderName>,
    /// `auto_san_validation`: the server certificate must be valid for the name sent,
    /// instead of the SAN matchers.
    pub auto_san_validation: bool,
    /// The client certificate presented when the server asks (mTLS).
    pub certificate: Option<TlsCertificate>,
    /// The SDS secret the certificate comes from.
    pub certificate_sds: Option<Arc<str>>,
    /// `None`: Mozilla's roots and the server name (a deliberate difference: Envoy does not
    /// verify at all without a validation context).
    pub validation: Option<CertificateValidation>,
    /// The SDS secret the validation context comes from (merged into `validation`).
    pub validation_sds: Option<Arc<str>>,
    /// `alpn_protocols` as configured. What is offered follows the cluster's protocol, as
    /// Envoy's HTTP pools override the list: `h2`, `http/1.1`, or both for auto.
    pub alpn_protocols: Vec<Arc<str>>,
    pub params: TlsParams,
    /// `max_session_keys` (default 1): 0 disables session resumption.
    pub max_session_keys: u32,
}

impl UpstreamTls {
    /// Names of the SDS secrets this context needs.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.certificate_sds
            .iter()
            .chain(self.validation_sds.iter())
            .map(|s| &**s)
    }
}

/// A filter chain's `transport_socket` with `DownstreamTlsContext`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DownstreamTls {
    /// The server certificate. Always set once [`crate::build`] resolved SDS.
    pub certificate: Option<TlsCertificate>,
    pub certificate_sds: Option<Arc<str>>,
    /// How client certificates are verified when presented (or required).
    pub validation: Option<CertificateValidation>,
    pub validation_sds: Option<Arc<str>>,
    /// `require_client_certificate`.
    pub require_client_certificate: bool,
    /// `alpn_protocols` offered, in preference order (`h2`, `http/1.1`); none: no ALPN.
    pub alpn_protocols: Vec<Arc<str>>,
    pub params: TlsParams,
}

impl DownstreamTls {
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.certificate_sds
            .iter()
            .chain(self.validation_sds.iter())
            .map(|s| &**s)
    }
}

/// One TLS filter chain of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsFilterChain {
    /// `name`, or `filter_chains[i]` / `default_filter_chain` when unnamed.
    pub name: Arc<str>,
    /// `filter_chain_match.server_names`, lowercase: exact names and `*.suffix` wildcards.
    /// Empty: any server name (and none).
    pub server_names: Vec<Arc<str>>,
    /// `transport_socket_connect_timeout`: the whole handshake, ClientHello included.
    pub handshake_timeout: Option<Duration>,
    pub tls: DownstreamTls,
}

/// How a listener terminates TLS: its filter chains, selected by the ClientHello's server
/// name. Every chain runs the same HTTP connection manager (the listener's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// In configuration order; `default_filter_chain`, when set, is the last one.
    pub chains: Vec<TlsFilterChain>,
    /// Index in `chains` of `default_filter_chain`.
    pub default_chain: Option<usize>,
    /// `listener_filters_timeout` (Envoy's default 15 s): how long the ClientHello may take.
    pub client_hello_timeout: Option<Duration>,
}

impl ListenerTls {
    /// The chain for a ClientHello with server name `sni`, Envoy's way: an exact name, then
    /// the longest matching `*.suffix` wildcard (`a.b.example.com` tries `*.b.example.com`,
    /// then `*.example.com`, then `*.com`), then a chain without server names, then the
    /// default chain. `None`: the connection is closed.
    pub fn select(&self, sni: Option<&str>) -> Option<usize> {
        let regular = match self.default_chain {
            Some(d) => &self.chains[..d.min(self.chains.len())],
            None => &self.chains[..],
        };
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let named = |name: &str| {
                regular
                    .iter()
                    .position(|c| c.server_names.iter().any(|n| **n == *name))
            };
            if let Some(i) = named(&sni) {
                return Some(i);
            }
            let mut rest = sni.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(i) = named(&format!("*.{parent}")) {
                    return Some(i);
                }
                rest = parent;
            }
        }
        regular
            .iter()
            .position(|c| c.server_names.is_empty())
            .or(self.default_chain)
    }

    /// Names of the SDS secrets its chains need.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.chains.iter().flat_map(|c| c.tls.secret_names())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StringPattern;

    fn exact(s: &str) -> StringMatcher {
        StringMatcher {
            pattern: StringPattern::Exact(Arc::from(s)),
            ignore_case: false,
        }
    }

    fn chain(name: &str, server_names: &[&str]) -> TlsFilterChain {
        TlsFilterChain {
            name: Arc::from(name),
            server_names: server_names.iter().map(|n| Arc::from(*n)).collect(),
            handshake_timeout: None,
            tls: DownstreamTls {
                certificate: None,
                certificate_sds: None,
                validation: None,
                validation_sds: None,
                require_client_certificate: false,
                alpn_protocols: Vec::new(),
                params: TlsParams::DOWNSTREAM_DEFAULT,
            },
        }
    }

    #[test]
    fn server_name_selection_follows_envoy() {
        let tls = ListenerTls {
            chains: vec![
                chain("api", &["api.example.com"]),
                chain("wild", &["*.example.com"]),
                chain("deep", &["*.b.example.com"]),
                chain("any", &[]),
                chain("default", &[]),
            ],
            default_chain: Some(4),
            client_hello_timeout: None,
        };
        let cases = [
            (Some("api.example.com"), Some(0)),
            (Some("API.Example.com."), Some(0)),
            (Some("www.example.com"), Some(1)),
            (Some("a.b.example.com"), Some(2)),
            (Some("x.a.example.com"), Some(1)),
            (Some("example.com"), Some(3)),
            (Some("other.org"), Some(3)),
            (None, Some(3)),
        ];
        for (sni, want) in cases {
            assert_eq!(tls.select(sni), want, "{sni:?}");
        }
        // Without a catch-all chain, the default takes what nothing else matches...
        let no_catch_all = ListenerTls {
            chains: vec![chain("api", &["api.example.com"]), chain("default", &[])],
            default_chain: Some(1),
            client_hello_timeout: None,
        };
        assert_eq!(no_catch_all.select(Some("other.org")), Some(1));
        assert_eq!(no_catch_all.select(None), Some(1));
        // ...and without a default either, the connection has no chain.
        let strict = ListenerTls {
            chains: vec![chain("api", &["api.example.com"])],
            default_chain: None,
            client_hello_timeout: None,
        };
        assert_eq!(strict.select(Some("other.org")), None);
        assert_eq!(strict.select(None), None);
    }

    #[test]
    fn san_matchers() {
        let v = CertificateValidation {
            trusted_ca: None,
            system_roots: false,
            match_typed_subject_alt_names: vec![
                SanMatcher {
                    san_type: SanType::Uri,
                    matcher: exact("spiffe://td/ns/a/sa/b"),
                },
                SanMatcher {
                    san_type: SanType::Dns,
                    matcher: exact("api.example.com"),
                },
            ],
        };
        let cases: [(&[(SanType, &str)], bool); 7] = [
            (&[(SanType::Uri, "spiffe://td/ns/a/sa/b")], true),
            (&[(SanType::Dns, "spiffe://td/ns/a/sa/b")], false),
            (&[(SanType::Dns, "api.example.com")], true),
            (&[(SanType::Dns, "*.example.com")], true),
            (&[(SanType::Dns, "*.other.com")], false),
            (&[(SanType::Email, "a@b"), (SanType::Dns, "x.y")], false),
            (&[], false),
        ];
        for (sans, want) in cases {
            assert_eq!(v.accepts(sans.iter().copied()), want, "{sans:?}");
        }
        let any = CertificateValidation {
            match_typed_subject_alt_names: Vec::new(),
            ..v.clone()
        };
        assert!(any.accepts(std::iter::empty()));
        // A wildcard covers exactly one label.
        let deep = SanMatcher {
            san_type: SanType::Dns,
            matcher: exact("a.b.example.com"),
        };
        assert!(!deep.matches(SanType::Dns, "*.example.com"));
    }

    #[test]
    fn key_material_is_never_printed() {
        let cert = TlsCertificate {
            certificate_chain: DataSource::Inline(Bytes::from_static(b"CERT-PEM")),
            private_key: PrivateKey(DataSource::Inline(Bytes::from_static(b"KEY-PEM-SECRET"))),
        };
        let debug = format!("{cert:?}");
        let json = serde_json::to_string(&cert).expect("json");
        for text in [&debug, &json] {
            assert!(!text.contains("KEY-PEM"), "{text}");
            assert!(!text.contains("CERT-PEM"), "{text}");
        }
        assert!(json.contains("[redacted]"), "{json}");
        let files = TlsCertificate {
            certificate_chain: DataSource::Filename(Arc::from("/etc/tls/cert.pem")),
            private_key: PrivateKey(DataSource::Filename(Arc::from("/etc/tls/key.pem"))),
        };
        let json = serde_json::to_string(&files).expect("json");
        assert_eq!(
            json,
            r#"{"certificate_chain":{"filename":"/etc/tls/cert.pem"},"private_key":{"filename":"/etc/tls/key.pem"}}"#
        );
    }
}
