//! rustls configurations made from certificate files named on a command line or in a bootstrap
//! file, and kept current with [`crate::reload::watch`]: a rotated file applies
//! to the next connection (accepted or dialled), connections already open keep theirs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};

use crate::TlsError;
use crate::config::{
    CertifiedKey, ClientAuth, ClientParams, NameCheck, Roots, ServerParams, client_config,
    server_config,
};
use crate::reload::{self, Current};

/// How often watched certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A server's certificate chain and key, and the CA bundle client certificates must chain to
/// (when set, a client certificate is required).
#[derive(Clone, Debug)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// With a client CA: let clients without a certificate in (they are judged otherwise,
    /// e.g. on a token); a certificate that is presented is still verified.
    pub client_cert_optional: bool,
    /// ALPN protocols accepted, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl ServerFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }

    /// Read the files and build the configuration. Blocking; `what` names the setting in
    /// errors.
    pub fn load(&self, what: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let cert = crate::pem::read_file(&self.cert, &format!("{what} certificate"))?;
        let key = crate::pem::read_file(&self.key, &format!("{what} private key"))?;
        let client_auth = match &self.client_ca {
            Some(path) => {
                let label = format!("{what} client CA");
                let pem = crate::pem::read_file(path, &label)?;
                let roots = Arc::new(crate::pem::root_store(&pem, &label)?);
                if self.client_cert_optional {
                    ClientAuth::Optional(roots)
                } else {
                    ClientAuth::Required(roots)
                }
            }
            None => ClientAuth::None,
        };
        server_config(
            ServerParams {
                cert: CertifiedKey::from_pem(&cert, &key, what)?,
                client_auth,
                alpn: self.alpn.clone(),
                min_version: None,
                max_version: None,
            },
            what,
        )
    }

    /// [`load`](Self::load) now (blocking: call it at start-up), then again whenever one of
    /// the files changes. Must run inside a tokio runtime.
    pub fn watch(
        self,
        what: &str,
        interval: Duration,
    ) -> Result<Current<Arc<ServerConfig>>, TlsError> {
        let what = what.to_owned();
        reload::watch(self.paths(), interval, move || self.load(&what))
    }
}

/// What a client trusts and presents: a CA bundle (Mozilla's roots when absent), and an
/// optional certificate and key for mTLS. The server's certificate is checked against the
/// name the connection is opened with.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    pub ca: Option<PathBuf>,
    /// Certificate chain and key, presented when the server asks.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl ClientFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.ca.iter().cloned().collect();
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        paths
    }

    /// Read the files and build the configuration. Blocking; `what` names the setting in
    /// errors.
    pub fn load(&self, what: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = match &self.ca {
            Some(path) => {
                let label = format!("{what} CA");
                let pem = crate::pem::read_file(path, &label)?;
                Roots::Custom(Arc::new(crate::pem::root_store(&pem, &label)?))
            }
            None => Roots::WebPki,
        };
        let client_cert = match &self.identity {
            Some((cert, key)) => {
                let cert = crate::pem::read_file(cert, &format!("{what} certificate"))?;
                let key = crate::pem::read_file(key, &format!("{what} private key"))?;
                Some(CertifiedKey::from_pem(&cert, &key, what)?)
            }
            None => None,
        };
        client_config(
            ClientParams {
                roots,
                names: NameCheck::ServerName,
                client_cert,
                alpn: self.alpn.clone(),
                min_version: None,
                max_version: None,
            },
            what,
        )
    }

    /// [`load`](Self::load) now (blocking: call it at start-up), then again whenever one of
    /// the files changes. Must run inside a tokio runtime.
    pub fn watch(
        self,
        what: &str,
        interval: Duration,
    ) -> Result<Current<Arc<ClientConfig>>, TlsError> {
        let what = what.to_owned();
        reload::watch(self.paths(), interval, move || self.load(&what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{Authority, LeafSpec};

    #[test]
    fn loads_both_sides_and_names_the_setting_in_errors() {
        let dir = std::env::temp_dir().join(format!("legate-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = Authority::new("ca").expect("ca");
        let leaf = ca
            .issue(&LeafSpec::new("cp").dns("localhost"))
            .expect("leaf");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let ca_path = write("ca.pem", ca.cert_pem());
        let cert = write("cert.pem", &leaf.cert_pem);
        let key = write("key.pem", &leaf.key_pem);
        let server = ServerFiles {
            client_cert_optional: false,
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(ca_path.clone()),
            alpn: vec![b"h2".to_vec()],
        };
        let config = server.load("--xds-tls").expect("server config");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let client = ClientFiles {
            ca: Some(ca_path),
            identity: Some((cert.clone(), key)),
            alpn: vec![b"h2".to_vec()],
        };
        client.load("xds").expect("client config");

        let broken = ServerFiles {
            key: dir.join("missing.pem"),
            ..server
        };
        let message = match broken.load("--xds-tls") {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert!(
            message.starts_with("--xds-tls private key: cannot read"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
