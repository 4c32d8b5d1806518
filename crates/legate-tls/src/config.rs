//! rustls configurations on the aws-lc-rs provider.
//!
//! aws-lc-rs rather than ring: it offers the hybrid post-quantum key exchange
//! (X25519MLKEM768, preferred) that current Envoy/BoringSSL peers negotiate, rustls has
//! deprecated its ring provider for lacking it, and its handshakes are faster; it builds with
//! the C compiler alone on Linux.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::TlsError;
use crate::identity::{San, inspect};

/// The process-wide crypto provider (aws-lc-rs' default cipher suites and key exchanges).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A TLS protocol version legate can speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// The versions between `min` and `max` inclusive (both default to the full 1.2..=1.3 range).
pub fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Vec<&'static SupportedProtocolVersion> {
    let min = min.unwrap_or(TlsVersion::V1_2);
    let max = max.unwrap_or(TlsVersion::V1_3);
    let mut out = Vec::new();
    if min <= TlsVersion::V1_3 && TlsVersion::V1_3 <= max {
        out.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::V1_2 && TlsVersion::V1_2 <= max {
        out.push(&rustls::version::TLS12);
    }
    out
}

/// A decision on a peer's subject alternative names, taken after its chain verified.
pub trait SanCheck: Send + Sync + fmt::Debug {
    /// Whether the peer with these SANs is acceptable.
    fn accepts(&self, sans: &[San]) -> bool;
}

/// How the server certificate's identity is checked once its chain is trusted.
#[derive(Clone, Debug)]
pub enum NameCheck {
    /// The certificate must be valid for the name the connection was opened with (SNI), as
    /// browsers and `curl` check.
    ServerName,
    /// The certificate's SANs must satisfy the rule (Envoy's `match_typed_subject_alt_names`).
    Sans(Arc<dyn SanCheck>),
    /// The chain alone (Envoy's behaviour with a `trusted_ca` and no SAN matchers).
    ChainOnly,
}

/// Where trusted roots come from.
#[derive(Clone, Debug)]
pub enum Roots {
    /// The configured CA bundle.
    Custom(Arc<RootCertStore>),
    /// Mozilla's root program (webpki-roots), for public services.
    WebPki,
}

impl Roots {
    fn store(&self) -> Arc<RootCertStore> {
        match self {
            Roots::Custom(r) => r.clone(),
            Roots::WebPki => {
                static WEBPKI: OnceLock<Arc<RootCertStore>> = OnceLock::new();
                WEBPKI
                    .get_or_init(|| {
                        Arc::new(RootCertStore {
                            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                        })
                    })
                    .clone()
            }
        }
    }
}

/// Verifies a server's chain against [`Roots`], then its identity with a [`NameCheck`].
/// Expiry and chain errors come back as rustls' own [`CertificateError`]s; a SAN mismatch as
/// [`CertificateError::NotValidForName`].
#[derive(Debug)]
pub struct PeerVerifier {
    roots: Arc<RootCertStore>,
    names: NameCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    pub fn new(roots: &Roots, names: NameCheck) -> Self {
        PeerVerifier {
            roots: roots.store(),
            names,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match &self.names {
            NameCheck::ServerName => rustls::client::verify_server_name(&parsed, server_name)?,
            NameCheck::ChainOnly => {}
            NameCheck::Sans(check) => {
                let info = inspect(end_entity.as_ref()).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                if !check.accepts(&info.sans) {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A certificate chain (leaf first) and its private key.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl CertifiedKey {
    /// Parse a PEM chain and key; `what` names their origin in errors.
    pub fn from_pem(chain: &[u8], key: &[u8], what: &str) -> Result<Self, TlsError> {
        Ok(CertifiedKey {
            chain: crate::pem::certs(chain, &format!("{what} certificate"))?,
            key: crate::pem::private_key(key, &format!("{what} private key"))?,
        })
    }

    /// Check that the key is usable and belongs to the leaf certificate, as a handshake
    /// would need: catches a pair caught half-rotated, or a key file swapped for another's.
    /// `what` names their origin in errors, which never contain key material.
    pub fn check(&self, what: &str) -> Result<(), TlsError> {
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
            .map(drop)
            .map_err(rustls_err(what))
    }
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Everything a client configuration is made of.
#[derive(Debug)]
pub struct ClientParams {
    pub roots: Roots,
    pub names: NameCheck,
    /// Presented when the server asks (mTLS).
    pub client_cert: Option<CertifiedKey>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

fn rustls_err(what: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |source| TlsError::Rustls {
        what: what.to_owned(),
        source,
    }
}

fn checked_versions(
    what: &str,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let v = versions(min, max);
    if v.is_empty() {
        return Err(TlsError::Verifier {
            what: what.to_owned(),
            message: format!("no TLS version between {min:?} and {max:?}"),
        });
    }
    Ok(v)
}

/// Build a client configuration. `what` names the setting in errors.
pub fn client_config(params: ClientParams, what: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let versions = checked_versions(what, params.min_version, params.max_version)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(rustls_err(what))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(&params.roots, params.names)));
    let mut config = match params.client_cert {
        Some(ck) => builder
            .with_client_auth_cert(ck.chain, ck.key)
            .map_err(rustls_err(what))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = params.alpn;
    Ok(Arc::new(config))
}

/// Whether and how a server asks for client certificates.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    None,
    /// Verified against the roots when presented; connections without one are allowed.
    Optional(Arc<RootCertStore>),
    /// Required and verified against the roots.
    Required(Arc<RootCertStore>),
    /// Verified against the roots, then its SANs checked by `sans` (Envoy's
    /// `match_typed_subject_alt_names` on a listener); `required`: connections without a
    /// certificate are refused.
    Checked {
        roots: Arc<RootCertStore>,
        required: bool,
        sans: Arc<dyn SanCheck>,
    },
}

/// A client certificate verifier that adds a SAN rule to the chain check.
#[derive(Debug)]
struct SanCheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Arc<dyn SanCheck>,
}

impl ClientCertVerifier for SanCheckedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = inspect(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if !self.sans.accepts(&info.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Everything a server configuration is made of.
#[derive(Debug)]
pub struct ServerParams {
    pub cert: CertifiedKey,
    pub client_auth: ClientAuth,
    pub alpn: Vec<Vec<u8>>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
}

/// Build a server configuration. `what` names the setting in errors.
pub fn server_config(params: ServerParams, what: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let versions = checked_versions(what, params.min_version, params.max_version)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(rustls_err(what))?;
    let verifier_err = |e: rustls::server::VerifierBuilderError| TlsError::Verifier {
        what: what.to_owned(),
        message: e.to_string(),
    };
    let builder = match params.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(verifier_err)?,
        ),
        ClientAuth::Required(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(verifier_err)?,
        ),
        ClientAuth::Checked {
            roots,
            required,
            sans,
        } => {
            let chain = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let chain = if required {
                chain
            } else {
                chain.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(Arc::new(SanCheckedClientVerifier {
                inner: chain.build().map_err(verifier_err)?,
                sans,
            }))
        }
    };
    let mut config = builder
        .with_single_cert(params.cert.chain, params.cert.key)
        .map_err(rustls_err(what))?;
    config.alpn_protocols = params.alpn;
    Ok(Arc::new(config))
}

/// The leaf certificate a peer presented on a finished handshake, inspected.
pub fn peer_info(certs: Option<&[CertificateDer<'_>]>) -> Option<crate::CertInfo> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| inspect(leaf.as_ref()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{Authority, LeafSpec};

    #[test]
    fn a_key_must_belong_to_its_certificate() {
        let ca = Authority::new("ca").expect("ca");
        let a = ca.issue(&LeafSpec::new("a")).expect("a");
        let b = ca.issue(&LeafSpec::new("b")).expect("b");
        let pair = |cert: &str, key: &str| {
            CertifiedKey::from_pem(cert.as_bytes(), key.as_bytes(), "test").expect("parses")
        };
        pair(&a.cert_pem, &a.key_pem).check("a").expect("matches");
        let err = pair(&a.cert_pem, &b.key_pem)
            .check("a with b's key")
            .expect_err("mismatch");
        let text = err.to_string();
        assert!(text.starts_with("a with b's key: "), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");
    }
}
