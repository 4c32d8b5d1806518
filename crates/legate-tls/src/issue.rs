//! A small certificate authority on rcgen: the throwaway CA of `make run` (`legatectl certs`)
//! and the certificates tests need (wrong CA, wrong SAN, expired, client-only). ECDSA P-256
//! keys; leaf certificates are not CAs and carry the extended key usages their role needs.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::TlsError;

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Usable as a TLS server certificate.
    pub server: bool,
    /// Usable as a TLS client certificate.
    pub client: bool,
}

impl LeafSpec {
    /// A server-and-client certificate valid from an hour ago for a year.
    pub fn new(common_name: &str) -> Self {
        let now = SystemTime::now();
        LeafSpec {
            common_name: common_name.to_owned(),
            dns: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(365 * 24 * 3600),
            server: true,
            client: true,
        }
    }

    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Only a client certificate (no serverAuth usage).
    pub fn client_only(mut self) -> Self {
        self.server = false;
        self.client = true;
        self
    }
}

/// An issued certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate authority that can issue leaf certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

fn issue_err(name: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Issue {
        name: name.to_owned(),
        message: e.to_string(),
    }
}

impl Authority {
    /// A new self-signed CA valid from an hour ago for ten years.
    pub fn new(common_name: &str) -> Result<Authority, TlsError> {
        let now = SystemTime::now();
        Authority::new_valid(
            common_name,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(10 * 365 * 24 * 3600),
        )
    }

    /// A new self-signed CA valid between the two times.
    pub fn new_valid(
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Authority, TlsError> {
        let err = issue_err(common_name);
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(&err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().map_err(&err)?;
        let cert = params.self_signed(&key).map_err(&err)?;
        let key_pem = key.serialize_pem();
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its PEM certificate and key (to keep `.demo/` stable across runs).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, TlsError> {
        let err = issue_err("ca");
        let key = KeyPair::from_pem(key_pem).map_err(&err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(&err)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Only for writing the demo CA to disk.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issue a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, TlsError> {
        let err = issue_err(&spec.common_name);
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(&err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        for d in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into().map_err(&err)?));
        }
        for u in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.clone().try_into().map_err(&err)?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        let key = KeyPair::generate().map_err(&err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(&err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_round_trips_through_pem() {
        let ca = Authority::new("ca").expect("ca");
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
        let leaf = again
            .issue(&LeafSpec::new("x").dns("x.test"))
            .expect("leaf");
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{leaf:?}").contains("PRIVATE KEY"));
    }
}
