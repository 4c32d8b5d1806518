//! What a certificate says about its holder, and legate's workload identity scheme.
//!
//! legate names a workload with a SPIFFE-style URI SAN, `spiffe://<trust-domain>/<path>`:
//! - `spiffe://<td>/node/<node-id>`: exactly one proxy, whose xDS `Node.id` must equal
//!   `<node-id>`;
//! - `spiffe://<td>/cluster/<name>`: a shared workload identity, valid for any `Node.id` whose
//!   `Node.cluster` is `<name>`;
//! - `spiffe://<td>/ns/<namespace>/sa/<account>`: Istio's shape, for upstream SAN checks.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::TlsError;

/// One subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

/// The parts of a certificate legate looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as an RFC 4514 string.
    pub subject: String,
    pub sans: Vec<San>,
    /// Validity bounds, seconds since the Unix epoch.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl CertInfo {
    /// The first URI SAN that parses as a SPIFFE id.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.sans.iter().find_map(|s| match s {
            San::Uri(u) => SpiffeId::parse(u),
            _ => None,
        })
    }
}

/// Read the subject, SANs and validity of a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, TlsError> {
    let bad = |message: String| TlsError::Certificate {
        what: "certificate".to_owned(),
        message,
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let mut sans = Vec::new();
    if let Some(ext) = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(San::Dns((*d).to_owned())),
                GeneralName::URI(u) => sans.push(San::Uri((*u).to_owned())),
                GeneralName::RFC822Name(e) => sans.push(San::Email((*e).to_owned())),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        sans.push(San::Ip(IpAddr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        sans.push(San::Ip(IpAddr::from(v6)));
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before_unix: validity.not_before.timestamp(),
        not_after_unix: validity.not_after.timestamp(),
    })
}

/// The longest SPIFFE id accepted (the SPIFFE spec's limit for the whole URI).
const MAX_SPIFFE_ID: usize = 2048;

/// A parsed `spiffe://<trust-domain>/<path>` identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    /// Path segments, none empty.
    pub segments: Vec<String>,
}

impl SpiffeId {
    /// Parse a SPIFFE id. The trust domain is lowercase letters, digits, `.`, `-` and `_`;
    /// the path has at least one segment and no empty, `.` or `..` segment, no query and no
    /// fragment.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        if uri.len() > MAX_SPIFFE_ID {
            return None;
        }
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return None;
        }
        let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
        let seg_ok = |s: &String| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@".contains(&b))
        };
        if !segments.iter().all(seg_ok) {
            return None;
        }
        Some(SpiffeId {
            trust_domain: td.to_owned(),
            segments,
        })
    }

    /// `spiffe://<td>/node/<id>`: the one node id this identity may claim.
    pub fn node_id(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [kind, id] if kind == "node" => Some(id),
            _ => None,
        }
    }

    /// `spiffe://<td>/cluster/<name>`: the node cluster this shared identity may claim.
    pub fn node_cluster(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [kind, name] if kind == "cluster" => Some(name),
            _ => None,
        }
    }

    /// `spiffe://<td>/admin/<name>`: an operator allowed to change legate-cp's state.
    pub fn admin(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [kind, name] if kind == "admin" => Some(name),
            _ => None,
        }
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/{}",
            self.trust_domain,
            self.segments.join("/")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{Authority, LeafSpec};

    #[test]
    fn spiffe_ids() {
        let id = SpiffeId::parse("spiffe://legate.local/node/proxy-1").expect("parses");
        assert_eq!(id.trust_domain, "legate.local");
        assert_eq!(id.node_id(), Some("proxy-1"));
        assert_eq!(id.node_cluster(), None);
        assert_eq!(id.to_string(), "spiffe://legate.local/node/proxy-1");
        let c = SpiffeId::parse("spiffe://td/cluster/web").expect("parses");
        assert_eq!(c.node_cluster(), Some("web"));
        let sa = SpiffeId::parse("spiffe://td/ns/default/sa/payments").expect("parses");
        assert_eq!(sa.node_id(), None);
        for bad in [
            "http://td/node/a",
            "spiffe://td",
            "spiffe://td/",
            "spiffe:///node/a",
            "spiffe://TD/node/a",
            "spiffe://td/node//a",
            "spiffe://td/node/../a",
            "spiffe://td/node/a?x=1",
            "spiffe://td/node/a#f",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
        let long = format!("spiffe://td/node/{}", "a".repeat(MAX_SPIFFE_ID));
        assert_eq!(SpiffeId::parse(&long), None);
    }

    #[test]
    fn inspect_reads_sans_and_validity() {
        let ca = Authority::new("ca").expect("ca");
        let leaf = ca
            .issue(
                &LeafSpec::new("n1")
                    .dns("payments.internal")
                    .uri("spiffe://legate.local/node/n1")
                    .ip("127.0.0.1".parse().expect("ip")),
            )
            .expect("leaf");
        let info = inspect(&leaf.cert_der).expect("inspect");
        assert!(info.sans.contains(&San::Dns("payments.internal".into())));
        assert!(
            info.sans
                .contains(&San::Ip("127.0.0.1".parse().expect("ip")))
        );
        assert_eq!(
            info.spiffe_id()
                .and_then(|s| s.node_id().map(str::to_owned)),
            Some("n1".to_owned())
        );
        assert!(info.not_after_unix > info.not_before_unix);
        assert!(info.subject.contains("n1"), "{}", info.subject);
        assert!(inspect(b"not a certificate").is_err());
    }
}
