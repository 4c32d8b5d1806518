//! Reading TLS material from its snapshot sources, and keeping values built from it current
//! while its files change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use legate_snapshot::{CertificateValidation, DataSource, SanType, TlsCertificate};
use legate_tls::config::{CertifiedKey, SanCheck};
use legate_tls::reload::Current;
use legate_tls::rustls::RootCertStore;
use legate_tls::{San, TlsError};

/// How often watched certificate files are checked for new contents.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The bytes of a source: a file (bounded; blocking) or inline bytes.
pub(crate) fn read(source: &DataSource, what: &str) -> Result<Vec<u8>, TlsError> {
    match source {
        DataSource::Filename(path) => legate_tls::pem::read_file(Path::new(&**path), what),
        DataSource::Inline(bytes) => Ok(bytes.to_vec()),
    }
}

/// A certificate chain and its key, with the leaf's `not_after` (seconds since the epoch).
pub(crate) fn certified_key(
    cert: &TlsCertificate,
    what: &str,
) -> Result<(CertifiedKey, i64), TlsError> {
    let chain = read(&cert.certificate_chain, &format!("{what} certificate"))?;
    let key = read(&cert.private_key.0, &format!("{what} private key"))?;
    let ck = CertifiedKey::from_pem(&chain, &key, what)?;
    let not_after = ck
        .chain
        .first()
        .map(|leaf| legate_tls::identity::inspect(leaf.as_ref()))
        .transpose()?
        .map_or(0, |info| info.not_after_unix);
    Ok((ck, not_after))
}

/// The trust store of a CA bundle.
pub(crate) fn root_store(ca: &DataSource, what: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let pem = read(ca, what)?;
    Ok(Arc::new(legate_tls::pem::root_store(&pem, what)?))
}

/// The file names among `sources`, to watch.
pub(crate) fn files<'a>(sources: impl IntoIterator<Item = &'a DataSource>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for s in sources {
        if let DataSource::Filename(p) = s {
            let p = PathBuf::from(&**p);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The sources a certificate and a validation context read.
pub(crate) fn sources<'a>(
    cert: Option<&'a TlsCertificate>,
    validation: Option<&'a CertificateValidation>,
) -> Vec<&'a DataSource> {
    let mut out = Vec::new();
    if let Some(c) = cert {
        out.push(&c.certificate_chain);
        out.push(&c.private_key.0);
    }
    if let Some(ca) = validation.and_then(|v| v.trusted_ca.as_ref()) {
        out.push(ca);
    }
    out
}

/// Build a value now and keep it current: rebuilt whenever one of `files` changes (none:
/// built once). Blocking: run it in `spawn_blocking`.
pub(crate) fn watched<T, F>(files: Vec<PathBuf>, build: F) -> Result<Current<T>, TlsError>
where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T, TlsError> + Send + Sync + 'static,
{
    if files.is_empty() {
        return Ok(Arc::new(ArcSwap::from_pointee(build()?)));
    }
    legate_tls::reload::watch(files, RELOAD_INTERVAL, build)
}

/// A validation context's SAN matchers as a rustls-side rule.
#[derive(Debug)]
pub(crate) struct SanRule(pub(crate) CertificateValidation);

impl SanCheck for SanRule {
    fn accepts(&self, sans: &[San]) -> bool {
        let typed: Vec<(SanType, String)> = sans
            .iter()
            .map(|s| match s {
                San::Dns(d) => (SanType::Dns, d.clone()),
                San::Uri(u) => (SanType::Uri, u.clone()),
                San::Ip(ip) => (SanType::IpAddress, ip.to_string()),
                San::Email(e) => (SanType::Email, e.clone()),
            })
            .collect();
        self.0.accepts(typed.iter().map(|(t, v)| (*t, v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_snapshot::{SanMatcher, StringMatcher, StringPattern};

    #[test]
    fn san_rule_converts_every_kind() {
        let rule = SanRule(CertificateValidation {
            trusted_ca: None,
            system_roots: false,
            match_typed_subject_alt_names: vec![SanMatcher {
                san_type: SanType::IpAddress,
                matcher: StringMatcher {
                    pattern: StringPattern::Exact(Arc::from("10.1.2.3")),
                    ignore_case: false,
                },
            }],
        });
        assert!(rule.accepts(&[San::Ip("10.1.2.3".parse().expect("ip"))]));
        assert!(!rule.accepts(&[San::Dns("10.1.2.3".to_owned())]));
        assert!(!rule.accepts(&[]));
    }
}
