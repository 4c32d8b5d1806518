//! Why a TLS handshake failed, in words an operator can act on.
//!
//! rustls reports a failed handshake as an `io::Error` wrapping a [`rustls::Error`]; the
//! interesting part (whose certificate was refused, and why) is two levels down and named in
//! rustls' vocabulary. [`HandshakeFailure::classify`] turns it into a small, stable set of
//! causes with a metric-friendly name ([`HandshakeFailure::as_str`]) and a sentence
//! ([`Display`](std::fmt::Display)), the same for every legate binary.

use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError, PeerIncompatible};

/// The cause of a failed handshake, seen from the side that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The peer's certificate does not chain to a trusted CA.
    UnknownCa,
    /// The peer's certificate (or one in its chain) has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The peer's certificate is not valid for the name (or SANs) expected.
    NameMismatch,
    /// The peer's certificate was refused for another reason (bad signature, wrong key usage,
    /// unparsable).
    BadCertificate,
    /// We require a certificate and the peer sent none.
    NoCertificate,
    /// The peer requires a certificate and we sent none.
    CertificateRequired,
    /// The peer does not trust the CA of the certificate we sent.
    RejectedUnknownCa,
    /// The peer refused the certificate we sent (expired, bad, revoked, unsupported).
    RejectedCertificate,
    /// No TLS version in common.
    ProtocolVersion,
    /// No ALPN protocol in common.
    Alpn,
    /// Any other TLS protocol failure (no cipher suite in common, a malformed message, an
    /// alert not listed above).
    Protocol,
    /// The connection failed underneath TLS (closed, reset, timed out).
    Io,
}

impl HandshakeFailure {
    /// Classify the error a tokio-rustls handshake (or the first read after it) returned.
    pub fn classify(error: &io::Error) -> HandshakeFailure {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::from_rustls(tls),
            None => HandshakeFailure::Io,
        }
    }

    /// Classify a rustls error.
    pub fn from_rustls(error: &rustls::Error) -> HandshakeFailure {
        use HandshakeFailure as F;
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer => F::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => F::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    F::NotYetValid
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => F::NameMismatch,
                _ => F::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => F::NoCertificate,
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateRequired => F::CertificateRequired,
                AlertDescription::UnknownCA => F::RejectedUnknownCa,
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied => F::RejectedCertificate,
                AlertDescription::ProtocolVersion => F::ProtocolVersion,
                AlertDescription::NoApplicationProtocol => F::Alpn,
                _ => F::Protocol,
            },
            rustls::Error::PeerIncompatible(
                PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled,
            ) => F::ProtocolVersion,
            rustls::Error::NoApplicationProtocol => F::Alpn,
            _ => F::Protocol,
        }
    }

    /// A short name for metrics labels and logs, e.g. `unknown-ca`.
    pub fn as_str(self) -> &'static str {
        use HandshakeFailure as F;
        match self {
            F::UnknownCa => "unknown-ca",
            F::Expired => "expired",
            F::NotYetValid => "not-yet-valid",
            F::NameMismatch => "name-mismatch",
            F::BadCertificate => "bad-certificate",
            F::NoCertificate => "no-certificate",
            F::CertificateRequired => "certificate-required",
            F::RejectedUnknownCa => "rejected-unknown-ca",
            F::RejectedCertificate => "rejected-certificate",
            F::ProtocolVersion => "protocol-version",
            F::Alpn => "alpn",
            F::Protocol => "protocol",
            F::Io => "io",
        }
    }

    /// Whether the failure is about a certificate (either side's) rather than the protocol.
    pub fn is_certificate(self) -> bool {
        use HandshakeFailure as F;
        matches!(
            self,
            F::UnknownCa
                | F::Expired
                | F::NotYetValid
                | F::NameMismatch
                | F::BadCertificate
                | F::NoCertificate
                | F::CertificateRequired
                | F::RejectedUnknownCa
                | F::RejectedCertificate
        )
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeFailure as F;
        f.write_str(match self {
            F::UnknownCa => "the peer's certificate is signed by an unknown CA",
            F::Expired => "the peer's certificate has expired",
            F::NotYetValid => "the peer's certificate is not valid yet",
            F::NameMismatch => "the peer's certificate is not valid for the expected name",
            F::BadCertificate => "the peer's certificate is invalid",
            F::NoCertificate => "the peer sent no certificate",
            F::CertificateRequired => "the peer requires a client certificate and none was sent",
            F::RejectedUnknownCa => "the peer does not trust the CA of our certificate",
            F::RejectedCertificate => "the peer refused our certificate",
            F::ProtocolVersion => "no TLS version in common with the peer",
            F::Alpn => "no ALPN protocol in common with the peer",
            F::Protocol => "TLS protocol error",
            F::Io => "the connection failed during the handshake",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn classifies_what_rustls_reports() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                HandshakeFailure::UnknownCa,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                HandshakeFailure::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                HandshakeFailure::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
                HandshakeFailure::BadCertificate,
            ),
            (
                rustls::Error::NoCertificatesPresented,
                HandshakeFailure::NoCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                HandshakeFailure::CertificateRequired,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                HandshakeFailure::RejectedUnknownCa,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::BadCertificate),
                HandshakeFailure::RejectedCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                HandshakeFailure::ProtocolVersion,
            ),
            (rustls::Error::NoApplicationProtocol, HandshakeFailure::Alpn),
            (rustls::Error::DecryptError, HandshakeFailure::Protocol),
        ];
        for (error, want) in cases {
            assert_eq!(
                HandshakeFailure::classify(&io(error.clone())),
                want,
                "{error}"
            );
        }
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(HandshakeFailure::classify(&eof), HandshakeFailure::Io);
        assert!(HandshakeFailure::UnknownCa.is_certificate());
        assert!(!HandshakeFailure::Alpn.is_certificate());
        assert_eq!(HandshakeFailure::NameMismatch.as_str(), "name-mismatch");
    }
}
