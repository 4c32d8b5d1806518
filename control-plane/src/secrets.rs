//! The certificate files a mesh's `secrets` name, read on legate-cp's disk and served over
//! SDS.
//!
//! The model compiles `secrets` to `Secret` resources whose data sources are file names; this
//! module reads those files (each bounded by [`legate_tls::pem::MAX_PEM_BYTES`]), checks them
//! as a handshake would (the PEM parses, a key belongs to its certificate, a CA bundle holds
//! usable trust anchors) and puts their contents inline, which is what proxies are sent.
//! Relative file names are relative to the mesh's location: the mesh directory, or the
//! directory of a single mesh file.
//!
//! Rotation is noticed the same way: the control plane reads the files whenever their
//! directory changes, and on its periodic re-check ([`SecretFiles::read_unchecked`]), and,
//! when their [`SecretFiles::fingerprint`] changed, checks and republishes them. A pair caught
//! half-written fails its checks, and the last good contents keep being served until the
//! next change finds it whole.
//!
//! Nothing here logs or renders key material; `legatectl` and the JSON API show secrets
//! through `legate-config-dump`, which redacts private keys as Envoy does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret as XdsSecret, secret};
use legate_model::Mesh;
use legate_tls::TlsError;
use legate_tls::config::CertifiedKey;
use sha2::{Digest, Sha256};

/// Why the mesh's secrets cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret '{name}': {source}")]
    Invalid {
        name: String,
        #[source]
        source: TlsError,
    },
    /// A file the compiled resources name that was not read with the mesh's secrets (a bug
    /// in how they were put together, not an operator error).
    #[error("secret '{name}': file '{}' was not read", path.display())]
    NotRead { name: String, path: PathBuf },
    /// A credential `value` file holds nothing but white space.
    #[error("secret '{name}': the value file is empty")]
    EmptyValue { name: String },
}

/// The contents of every file the mesh's `secrets` name, read and checked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretFiles {
    /// Path as written in the mesh → contents.
    contents: BTreeMap<String, Vec<u8>>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFiles")
            .field("files", &self.contents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The directory relative secret file names are read from, for mesh `config` (a file or a
/// directory of mesh files).
pub fn base_dir(config: &Path) -> PathBuf {
    if config.is_dir() {
        config.to_path_buf()
    } else {
        config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

impl SecretFiles {
    /// Read and check the files of every entry of `mesh.secrets`. Blocking: a few small files,
    /// read from the control plane's file watcher and admin calls, never from a stream.
    pub fn read(mesh: &Mesh, base: &Path) -> Result<SecretFiles, SecretError> {
        let files = SecretFiles::read_unchecked(mesh, base)?;
        files.check(mesh)?;
        Ok(files)
    }

    /// Read the files (bounded) without checking them: enough to see whether anything changed
    /// since the last [`fingerprint`](Self::fingerprint), which the watcher does every tick.
    pub fn read_unchecked(mesh: &Mesh, base: &Path) -> Result<SecretFiles, SecretError> {
        let mut contents = BTreeMap::new();
        for s in &mesh.secrets {
            for (path, what) in [
                (&s.cert, "cert"),
                (&s.key, "key"),
                (&s.ca, "ca"),
                (&s.value, "value"),
            ] {
                let Some(path) = path else { continue };
                if contents.contains_key(path) {
                    continue;
                }
                let bytes =
                    legate_tls::pem::read_file(&base.join(path), what).map_err(|source| {
                        SecretError::Invalid {
                            name: s.name.clone(),
                            source,
                        }
                    })?;
                contents.insert(path.clone(), bytes);
            }
        }
        let mut hash = Sha256::new();
        for (path, bytes) in &contents {
            hash.update((path.len() as u64).to_le_bytes());
            hash.update(path.as_bytes());
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
        Ok(SecretFiles {
            contents,
            fingerprint: hash.finalize().into(),
        })
    }

    /// Check the contents as a handshake would: certificates parse, a key belongs to its
    /// certificate, a CA bundle holds usable trust anchors.
    pub fn check(&self, mesh: &Mesh) -> Result<(), SecretError> {
        let file = |path: &Option<String>| path.as_ref().and_then(|p| self.contents.get(p));
        for s in &mesh.secrets {
            let invalid = |source| SecretError::Invalid {
                name: s.name.clone(),
                source,
            };
            if let Some(bytes) = file(&s.value) {
                if bytes.trim_ascii().is_empty() {
                    return Err(SecretError::EmptyValue {
                        name: s.name.clone(),
                    });
                }
                continue;
            }
            match (file(&s.cert), file(&s.key), file(&s.ca)) {
                (Some(chain), Some(key), _) => {
                    CertifiedKey::from_pem(chain, key, "cert and key")
                        .and_then(|pair| pair.check("cert and key"))
                        .map_err(invalid)?;
                }
                (None, None, Some(bundle)) => {
                    legate_tls::pem::root_store(bundle, "ca").map_err(invalid)?;
                }
                // The model's validation refuses every other shape.
                _ => {}
            }
        }
        Ok(())
    }

    /// A hash of every file's name and contents: changes when a file is rotated.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Replace the file names in compiled secrets with the files' contents, as proxies are
    /// sent them.
    pub fn inline(&self, secrets: &mut [XdsSecret]) -> Result<(), SecretError> {
        for s in secrets {
            let name = s.name.clone();
            let sources: Vec<&mut Option<DataSource>> = match &mut s.r#type {
                Some(secret::Type::TlsCertificate(c)) => {
                    vec![&mut c.certificate_chain, &mut c.private_key]
                }
                Some(secret::Type::ValidationContext(v)) => vec![&mut v.trusted_ca],
                Some(secret::Type::GenericSecret(g)) => vec![&mut g.secret],
                _ => Vec::new(),
            };
            for source in sources.into_iter().flatten() {
                let Some(Specifier::Filename(path)) = &source.specifier else {
                    continue;
                };
                let bytes = self
                    .contents
                    .get(path)
                    .ok_or_else(|| SecretError::NotRead {
                        name: name.clone(),
                        path: PathBuf::from(path),
                    })?;
                source.specifier = Some(Specifier::InlineBytes(bytes.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use legate_tls::issue::{Authority, LeafSpec};

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "legate-cp-secrets-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Dir(dir)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).expect("write");
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MESH: &str = "\
secrets:
  - {name: ca, ca: ca.pem}
  - {name: client, cert: client.pem, key: client.key}
clusters:
  - name: up
    endpoints: [{address: 127.0.0.1:8443}]
    tls: {ca: ca, client_certificate: client}
";

    fn setup(tag: &str) -> (Dir, Authority, Mesh) {
        let dir = Dir::new(tag);
        let ca = Authority::new("test ca").expect("ca");
        let leaf = ca
            .issue(&LeafSpec::new("client").client_only())
            .expect("leaf");
        dir.write("ca.pem", ca.cert_pem());
        dir.write("client.pem", &leaf.cert_pem);
        dir.write("client.key", &leaf.key_pem);
        let mesh = legate_model::load(MESH, "m.yaml").expect("mesh");
        (dir, ca, mesh)
    }

    #[test]
    fn files_are_read_checked_and_inlined() {
        let (dir, ca, mesh) = setup("inline");
        let files = SecretFiles::read(&mesh, &dir.0).expect("reads");
        let mut r = legate_model::compile(&mesh);
        files.inline(&mut r.secrets).expect("inlines");
        let Some(secret::Type::ValidationContext(v)) = &r.secrets[0].r#type else {
            panic!("ca first");
        };
        assert_eq!(
            v.trusted_ca.as_ref().and_then(|d| d.specifier.clone()),
            Some(Specifier::InlineBytes(ca.cert_pem().as_bytes().to_vec()))
        );
        // As legatectl and the JSON API show it: Envoy's redaction of the key's bytes.
        let shown = legate_config_dump::any_json(&envoy_types::pb::google::protobuf::Any {
            type_url: legate_snapshot::type_url::SECRET.to_owned(),
            value: prost::Message::encode_to_vec(&r.secrets[1]),
        })
        .expect("renders")
        .to_string();
        assert!(shown.contains("W3JlZGFjdGVkXQ=="), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let shown = format!("{files:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    #[test]
    fn rotation_changes_the_fingerprint_and_a_half_written_pair_is_refused() {
        let (dir, ca, mesh) = setup("rotate");
        let before = SecretFiles::read(&mesh, &dir.0).expect("reads");
        assert_eq!(
            before.fingerprint(),
            SecretFiles::read(&mesh, &dir.0)
                .expect("reads")
                .fingerprint()
        );
        let next = ca
            .issue(&LeafSpec::new("client-2").client_only())
            .expect("leaf");
        dir.write("client.pem", &next.cert_pem);
        let err = SecretFiles::read(&mesh, &dir.0).expect_err("old key, new cert");
        let text = err.to_string();
        assert!(
            text.starts_with("secret 'client': cert and key: "),
            "{text}"
        );
        dir.write("client.key", &next.key_pem);
        let after = SecretFiles::read(&mesh, &dir.0).expect("reads");
        assert_ne!(before.fingerprint(), after.fingerprint());
    }

    #[test]
    fn missing_and_bad_files_name_the_secret() {
        let (dir, _ca, mesh) = setup("bad");
        dir.write("ca.pem", "not pem");
        let text = SecretFiles::read(&mesh, &dir.0)
            .expect_err("bad ca")
            .to_string();
        assert_eq!(text, "secret 'ca': ca: no PEM certificate found");
        std::fs::remove_file(dir.0.join("ca.pem")).expect("rm");
        let text = SecretFiles::read(&mesh, &dir.0)
            .expect_err("missing")
            .to_string();
        assert!(text.starts_with("secret 'ca': ca: cannot read '"), "{text}");
    }
}
