//! `legatectl certs`: a throwaway certificate authority and the certificates a demo or a
//! test fleet needs, written as PEM files. No `openssl` required.
//!
//! Identities follow `legate_tls::identity`: proxies get `spiffe://<td>/node/<id>` (or the
//! shared `spiffe://<td>/cluster/<name>`), operators `spiffe://<td>/admin/<name>`, servers a
//! DNS name plus `localhost`/loopback addresses and `spiffe://<td>/ns/default/sa/<name>`.
//!
//! The CA in the output directory is kept when it is there (so certificates issued earlier
//! stay valid); leaves are issued anew on every run. Keys are written with mode 0600, every
//! file through a temporary name and a rename, so a reader never sees half a file.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use legate_tls::issue::{Authority, LeafSpec};
use legate_tls::{SpiffeId, TlsError};

/// What to issue.
#[derive(Clone, Debug, Default)]
pub struct CertsRequest {
    pub out: PathBuf,
    pub trust_domain: String,
    /// Server certificates, by DNS name.
    pub servers: Vec<String>,
    /// Proxy certificates for one node id each.
    pub nodes: Vec<String>,
    /// Proxy certificates shared by a node cluster.
    pub clusters: Vec<String>,
    /// Operator (admin API) certificates.
    pub admins: Vec<String>,
    /// Leaf validity; the CA lives ten years.
    pub validity: Duration,
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot write '{}': {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what} '{value}': {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// One file written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    /// The identity or names it carries, for the summary.
    pub subject: String,
}

fn check_name(what: &'static str, value: &str) -> Result<(), CertsError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CertsError::Invalid {
            what,
            value: value.to_owned(),
            why: "use letters, digits, '-', '.' and '_' only",
        })
    }
}

fn spiffe(td: &str, path: &str) -> Result<String, CertsError> {
    let uri = format!("spiffe://{td}/{path}");
    if SpiffeId::parse(&uri).is_none() {
        return Err(CertsError::Invalid {
            what: "identity",
            value: uri,
            why: "not a valid SPIFFE id (lowercase trust domain, non-empty path segments)",
        });
    }
    Ok(uri)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

fn load_or_create_ca(out: &Path, written: &mut Vec<Written>) -> Result<Authority, CertsError> {
    let cert = out.join("ca.pem");
    let key = out.join("ca.key");
    if let (Ok(c), Ok(k)) = (
        std::fs::read_to_string(&cert),
        std::fs::read_to_string(&key),
    ) {
        return Ok(Authority::from_pem(&c, &k)?);
    }
    let ca = Authority::new("legate demo CA")?;
    write_file(&key, ca.key_pem(), true)?;
    write_file(&cert, ca.cert_pem(), false)?;
    written.push(Written {
        path: cert,
        subject: "CA: legate demo CA".to_owned(),
    });
    Ok(ca)
}

/// Issue everything `req` asks for into `req.out`. Returns the certificate files written.
pub fn issue(req: &CertsRequest) -> Result<Vec<Written>, CertsError> {
    if SpiffeId::parse(&format!("spiffe://{}/x", req.trust_domain)).is_none() {
        return Err(CertsError::Invalid {
            what: "trust domain",
            value: req.trust_domain.clone(),
            why: "lowercase letters, digits, '-', '.' and '_'",
        });
    }
    std::fs::create_dir_all(&req.out).map_err(|source| CertsError::Write {
        path: req.out.clone(),
        source,
    })?;
    let mut written = Vec::new();
    let ca = load_or_create_ca(&req.out, &mut written)?;
    let now = SystemTime::now();
    let valid = |spec: LeafSpec| spec.valid(now - Duration::from_secs(3600), now + req.validity);
    let mut leaves: Vec<(String, LeafSpec, String)> = Vec::new();
    for name in &req.servers {
        check_name("server name", name)?;
        let uri = spiffe(&req.trust_domain, &format!("ns/default/sa/{name}"))?;
        let spec = LeafSpec::new(name)
            .dns(name)
            .dns("localhost")
            .ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
            .uri(&uri);
        leaves.push((name.clone(), valid(spec), format!("server {name}, {uri}")));
    }
    for (kind, list) in [
        ("node", &req.nodes),
        ("cluster", &req.clusters),
        ("admin", &req.admins),
    ] {
        for name in list {
            check_name(kind, name)?;
            let uri = spiffe(&req.trust_domain, &format!("{kind}/{name}"))?;
            let spec = LeafSpec::new(&format!("{kind} {name}"))
                .uri(&uri)
                .client_only();
            leaves.push((format!("{kind}-{name}"), valid(spec), uri));
        }
    }
    for (file, spec, subject) in leaves {
        let issued = ca.issue(&spec)?;
        let cert = req.out.join(format!("{file}.pem"));
        write_file(&req.out.join(format!("{file}.key")), &issued.key_pem, true)?;
        write_file(&cert, &issued.cert_pem, false)?;
        written.push(Written {
            path: cert,
            subject,
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_identities_and_keeps_the_ca() {
        let out = std::env::temp_dir().join(format!("legatectl-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let req = CertsRequest {
            out: out.clone(),
            trust_domain: "legate.local".into(),
            servers: vec!["legate-cp".into()],
            nodes: vec!["proxy-1".into()],
            clusters: vec!["web".into()],
            admins: vec!["ops".into()],
            validity: Duration::from_secs(86_400),
        };
        let first = issue(&req).expect("issue");
        assert_eq!(first.len(), 5, "{first:?}");
        let ca1 = std::fs::read_to_string(out.join("ca.pem")).expect("ca");
        let node = std::fs::read(out.join("node-proxy-1.pem")).expect("node");
        let certs = legate_tls::pem::certs(&node, "node").expect("pem");
        let info = legate_tls::identity::inspect(certs[0].as_ref()).expect("inspect");
        assert_eq!(
            info.spiffe_id()
                .and_then(|s| s.node_id().map(str::to_owned)),
            Some("proxy-1".to_owned())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("node-proxy-1.key"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = issue(&req).expect("again");
        assert_eq!(second.len(), 4, "the CA is reused: {second:?}");
        assert_eq!(
            std::fs::read_to_string(out.join("ca.pem")).expect("ca"),
            ca1
        );
        let bad = CertsRequest {
            nodes: vec!["a/b".into()],
            ..req
        };
        assert!(matches!(issue(&bad), Err(CertsError::Invalid { .. })));
        let _ = std::fs::remove_dir_all(&out);
    }
}
