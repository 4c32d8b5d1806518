//! PEM input, bounded: a certificate file or inline value over [`MAX_PEM_BYTES`] is refused
//! before it is parsed.

use std::io::Read;
use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// The largest PEM input accepted (a CA bundle of a few hundred certificates fits).
pub const MAX_PEM_BYTES: usize = 1 << 20;

/// Read a PEM file whole, refusing one over [`MAX_PEM_BYTES`]. Blocking: call it from
/// start-up code or `spawn_blocking`.
pub fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what: what.to_owned(),
            path: path.to_owned(),
            limit: MAX_PEM_BYTES,
        });
    }
    Ok(buf)
}

fn check_len(pem: &[u8], what: &str) -> Result<(), TlsError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            message: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Every certificate in `pem`, in order (leaf first for a chain). At least one is required.
pub fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    check_len(pem, what)?;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1). The error never contains key
/// material.
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_len(pem, what)?;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            what: what.to_owned(),
        },
        other => TlsError::Pem {
            what: what.to_owned(),
            message: other.to_string(),
        },
    })
}

/// A trust store of every certificate in `pem`. A bundle where no certificate is a usable
/// trust anchor is refused.
pub fn root_store(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem, what)? {
        roots.add(cert).map_err(|e| TlsError::Certificate {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{Authority, LeafSpec};

    #[test]
    fn parses_what_the_authority_issues() {
        let ca = Authority::new("test ca").expect("ca");
        let leaf = ca
            .issue(&LeafSpec::new("leaf").dns("localhost"))
            .expect("leaf");
        assert_eq!(
            certs(leaf.cert_pem.as_bytes(), "cert")
                .expect("certs")
                .len(),
            1
        );
        private_key(leaf.key_pem.as_bytes(), "key").expect("key");
        assert_eq!(
            root_store(ca.cert_pem().as_bytes(), "ca")
                .expect("roots")
                .len(),
            1
        );
    }

    #[test]
    fn refuses_empty_and_garbage() {
        assert!(matches!(
            certs(b"", "tls.cert"),
            Err(TlsError::NoCertificate { what }) if what == "tls.cert"
        ));
        assert!(matches!(
            private_key(b"hello", "tls.key"),
            Err(TlsError::NoPrivateKey { .. })
        ));
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(certs(bad, "c"), Err(TlsError::Pem { .. })));
        let huge = vec![b'a'; MAX_PEM_BYTES + 1];
        assert!(matches!(certs(&huge, "c"), Err(TlsError::Pem { .. })));
    }

    #[test]
    fn key_errors_never_echo_the_input() {
        let secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY";
        let message = match private_key(secret, "k") {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert!(!message.contains("c2VjcmV0"), "{message}");
    }

    #[test]
    fn file_size_is_bounded() {
        let dir = std::env::temp_dir().join(format!("legate-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("big.pem");
        std::fs::write(&path, vec![b'a'; MAX_PEM_BYTES + 10]).expect("write");
        assert!(matches!(
            read_file(&path, "f"),
            Err(TlsError::TooLarge { .. })
        ));
        assert!(matches!(
            read_file(&dir.join("missing.pem"), "f"),
            Err(TlsError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
