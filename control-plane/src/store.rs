//! The control plane's state: mesh files from disk, plus changes made through the admin API,
//! persisted in the data directory before they are acknowledged.
//!
//! Admin changes are kept as an overlay of whole services (name → definition after the
//! change). The effective mesh is the files with the overlay applied on top, so an edit of
//! a mesh file and an admin change compose, and a restart rebuilds the same mesh.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use legate_model::{ConfigError, Mesh, Problem, Service};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const OVERLAY_FILE: &str = "overlay.yaml";

/// What the admin API changed, as persisted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Incremented on every persisted change.
    #[serde(default)]
    pub generation: u64,
    /// Services as the admin API last set them, by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("{0}: no mesh files (*.yaml, *.yml) in the directory")]
    NoMeshFiles(String),
    #[error("{0}")]
    Other(String),
}

/// The mesh files as read, in name order, with a digest of exactly the bytes read: the
/// watcher compares digests (never file times or sizes) to tell whether anything changed, so
/// a file caught half-written is noticed again once it is whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshFiles {
    /// (path, contents).
    pub files: Vec<(String, String)>,
    pub digest: [u8; 32],
}

impl MeshFiles {
    /// The paths read, in order.
    pub fn paths(&self) -> Vec<String> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// Whether a directory entry named `name` is a mesh file: `*.yaml` or `*.yml`, not hidden.
///
/// Hidden names cover what editors and tools leave beside a file they edit: Emacs' lock
/// (`.#mesh.yaml`, a dangling symbolic link) and Vim's swap files (`.mesh.yaml.swp`, `.swx`),
/// and the temporary files of atomic writers (`.mesh.yaml.XXXX`); the extension rule covers
/// backups (`mesh.yaml~`), autosaves (`#mesh.yaml#`), Vim's write probe (`4913`) and
/// `*.tmp`. Also the hidden entries of a Kubernetes ConfigMap volume (`..data`).
pub fn is_mesh_file_name(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml")
}

/// Read every mesh file: `path` is a file, or a directory whose mesh files
/// ([`is_mesh_file_name`]) are read in name order. A directory without any is an error:
/// removing every mesh file does not remove every resource (see [`legate_model::parse_mesh`]
/// for how to serve nothing on purpose).
pub fn read_mesh_files(path: &Path) -> Result<MeshFiles, StoreError> {
    let io = |p: &Path, e| StoreError::Io {
        path: p.display().to_string(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io(path, e))?
            .filter_map(Result::ok)
            .filter(|e| is_mesh_file_name(&e.file_name()))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
            files.push((p.display().to_string(), text));
        }
        if files.is_empty() {
            return Err(StoreError::NoMeshFiles(path.display().to_string()));
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        files.push((path.display().to_string(), text));
    }
    let mut hash = Sha256::new();
    for (name, text) in &files {
        for part in [name.as_bytes(), text.as_bytes()] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
    }
    Ok(MeshFiles {
        files,
        digest: hash.finalize().into(),
    })
}

/// Parse, merge and validate mesh files (errors carry file, line and column).
pub fn load_mesh(files: &[(String, String)]) -> Result<Mesh, StoreError> {
    legate_model::load_files(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .map_err(StoreError::Config)
}

/// The files with the overlay applied; the whole result is validated.
pub fn effective(base: &Mesh, overlay: &Overlay) -> Result<Mesh, StoreError> {
    let mut mesh = base.clone();
    for service in overlay.services.values() {
        legate_model::apply_service(&mut mesh, service.clone()).map_err(StoreError::Invalid)?;
    }
    Ok(mesh)
}

/// Load the overlay from the data directory (empty when there is none).
pub fn load_overlay(data_dir: &Path) -> Result<Overlay, StoreError> {
    let path = data_dir.join(OVERLAY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => legate_model::parse_yaml(&text, &path.display().to_string())
            .map_err(|e| StoreError::Config(vec![e])),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
        Err(e) => Err(StoreError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// Persist the overlay atomically: temporary file, fsync, rename, directory fsync.
pub fn save_overlay(data_dir: &Path, overlay: &Overlay) -> Result<(), StoreError> {
    let io = |p: &Path, e| StoreError::Io {
        path: p.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    let text = serde_yaml_ng::to_string(overlay).map_err(|e| StoreError::Other(e.to_string()))?;
    let target = data_dir.join(OVERLAY_FILE);
    let tmp = data_dir.join(format!(".{OVERLAY_FILE}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
services:
  - name: payments
    versions:
      - {name: v1, weight: 100, endpoints: [{address: 127.0.0.1:18081}]}
      - {name: v2, weight: 0, endpoints: [{address: 127.0.0.1:18083}]}
"#;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "legate-cp-store-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn overlay_survives_a_restart_and_applies_on_top_of_files() {
        let dir = temp_dir("overlay");
        let base = load_mesh(&[("base.yaml".to_owned(), BASE.to_owned())]).expect("base");
        let mut eff = effective(&base, &Overlay::default()).expect("effective");
        legate_model::set_weights(&mut eff, "payments", &[("v1", 90), ("v2", 10)])
            .expect("weights");
        let mut overlay = Overlay::default();
        let svc = eff
            .services
            .iter()
            .find(|s| s.name == "payments")
            .cloned()
            .expect("service");
        overlay.services.insert(svc.name.clone(), svc);
        overlay.generation = 1;
        save_overlay(&dir, &overlay).expect("save");
        let loaded = load_overlay(&dir).expect("load");
        assert_eq!(loaded, overlay);
        let again = effective(&base, &loaded).expect("effective");
        assert_eq!(again, eff);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(OVERLAY_FILE)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn editor_files_are_not_mesh_files() {
        for name in ["mesh.yaml", "b.yml", "10-payments.yaml"] {
            assert!(is_mesh_file_name(name.as_ref()), "{name}");
        }
        for name in [
            ".#mesh.yaml",
            ".mesh.yaml.swp",
            ".mesh.yaml.swx",
            "mesh.yaml~",
            "#mesh.yaml#",
            "4913",
            "mesh.yaml.tmp",
            ".hidden.yaml",
            "..data",
            "README.md",
        ] {
            assert!(!is_mesh_file_name(name.as_ref()), "{name}");
        }
    }

    #[test]
    fn a_directory_without_mesh_files_is_an_error_and_digests_follow_the_bytes() {
        let dir = temp_dir("nofiles");
        std::fs::write(dir.join(".#mesh.yaml"), "x").expect("write");
        let err = read_mesh_files(&dir).expect_err("no mesh files");
        assert!(matches!(err, StoreError::NoMeshFiles(_)), "{err}");
        std::fs::write(dir.join("mesh.yaml"), "services: []\n").expect("write");
        let a = read_mesh_files(&dir).expect("read");
        assert_eq!(a.paths(), vec![dir.join("mesh.yaml").display().to_string()]);
        std::fs::write(dir.join("mesh.yaml"), "listeners: []\n").expect("write");
        let b = read_mesh_files(&dir).expect("read");
        assert_ne!(a.digest, b.digest, "same length, other bytes");
        assert_eq!(b, read_mesh_files(&dir).expect("read"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_overlay_is_empty_and_bad_files_name_line_and_column() {
        let dir = temp_dir("missing");
        assert_eq!(load_overlay(&dir).expect("empty"), Overlay::default());
        let err = load_mesh(&[("m.yaml".to_owned(), "services:\n  - nme: x\n".to_owned())])
            .expect_err("unknown field");
        assert!(err.to_string().starts_with("m.yaml:2:5"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
