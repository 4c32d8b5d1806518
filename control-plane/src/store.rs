//! The control plane's state: mesh files from disk, plus changes made through the admin API,
//! persisted in the data directory before they are acknowledged.
//!
//! # Precedence
//!
//! Admin changes are kept as an overlay of per-field overrides, service by service (see
//! [`service_fields`] for what a field is). An admin change overrides only the
//! fields it names: `set-weights` the version weights, `apply` the fields whose value differs
//! from the files'. Everything else keeps coming from the files, so later edits of other
//! fields (headers, timeouts, endpoints) take effect.
//!
//! Each override records the files' value of its field when it was made. When the files
//! change that field later, the newer change wins, as with `kubectl apply`'s three-way merge:
//! the file's value serves and the override is dropped (and logged). A service removed from
//! the files loses its overrides with it, unless an `apply` created it (it was in no file):
//! such a service belongs to the admin API until `legatectl delete`. When a file starts to
//! define a service an `apply` created, the files own it from then on.
//!
//! Stored overrides never stop a start: the effective mesh is the files plus the overrides
//! that still fit. A service whose overrides no longer validate with the files (a prefix the
//! files now use, say) is served as the files have it (or not at all, when only the admin
//! API defined it); the conflict is reported, naming both sources, and the overrides stay
//! stored until they are reset, deleted, or fit again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use legate_model::{ConfigError, Location, Mesh, Problem, Service, Sources};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

const OVERLAY_FILE: &str = "overlay.yaml";
/// Where a whole-service overlay of an earlier release is kept after its migration.
const OVERLAY_V1_BACKUP: &str = "overlay.v1.yaml.bak";
/// The overlay format written by this release.
pub const OVERLAY_FORMAT: u32 = 2;

/// What the admin API changed, as persisted: per-field overrides by service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// [`OVERLAY_FORMAT`]; an overlay without it is a whole-service overlay of an earlier
    /// release, migrated on load.
    pub format: u32,
    /// Incremented on every persisted change.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceOverlay>,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay {
            format: OVERLAY_FORMAT,
            generation: 0,
            services: BTreeMap::new(),
        }
    }
}

/// The admin API's changes to one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverlay {
    /// Set when an `apply` created the service, in no mesh file: every field it has is an
    /// override, and it stays until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Change>,
    /// Field (see [`service_fields`]) → the admin's value.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldOverride>,
}

/// One field set by the admin API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOverride {
    /// The admin's value, as JSON; absent: the field is unset (its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The files' value when the override was made; absent: the files did not set it. A
    /// file edit that changes the field is noticed against this, and wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Value>,
    pub change: Change,
}

/// Which admin call made a change, when, and who called.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// `apply`, `set-weights`, or `migrated` (from an earlier release's overlay).
    pub op: String,
    pub at_unix_ms: u64,
    /// The caller's identity (`bearer token`, or an admin certificate's SPIFFE id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl Change {
    /// Now, by `caller`.
    pub fn now(op: &str, caller: Option<&str>) -> Change {
        Change {
            op: op.to_owned(),
            at_unix_ms: unix_ms(),
            caller: caller.map(str::to_owned),
        }
    }

    /// The time as RFC 3339 (UTC, seconds).
    pub fn time(&self) -> String {
        rfc3339(self.at_unix_ms)
    }
}

impl std::fmt::Display for Change {
    /// `admin change (set-weights at 2026-01-02T03:04:05Z by bearer token)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "admin change ({} at {}", self.op, self.time())?;
        if let Some(caller) = &self.caller {
            write!(f, " by {caller}")?;
        }
        f.write_str(")")
    }
}

/// A Unix time in milliseconds as RFC 3339 (UTC, seconds). Times past the year 9999 (a
/// damaged file, a hostile server) show as that limit rather than overflow.
pub fn rfc3339(unix_ms: u64) -> String {
    const MAX_MS: u64 = 253_402_300_799_000;
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms.min(MAX_MS));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ServiceOverlay {
    /// The newest change among its fields (and its creation).
    pub fn latest(&self) -> Option<&Change> {
        self.fields
            .values()
            .map(|f| &f.change)
            .chain(&self.created)
            .max_by_key(|c| c.at_unix_ms)
    }
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
    /// `--store etcd://`: etcd refused or did not answer.
    #[error("--store etcd: {0}")]
    Etcd(#[from] crate::etcd::EtcdError),
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

/// Parse, merge and validate mesh files (errors carry file, line and column), keeping where
/// each item was written.
pub fn load_mesh(files: &[(String, String)]) -> Result<(Mesh, Sources), StoreError> {
    legate_model::load_files_with_sources(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .map_err(StoreError::Config)
}

/// Fields of a service made of several overridable parts: `route.prefix`, `policies.timeout`.
const NESTED: [&str; 2] = ["route", "policies"];

/// A service as its overridable fields, each with its value as JSON; fields left unset are
/// absent. A field is a top-level key of the service (`lb_policy`, `endpoints`, `tls`), a
/// key of `route` or `policies` (`route.prefix`, `policies.retries`), `versions` (names and
/// endpoints) or `weights` (version → weight): `set-weights` overrides the weights without
/// taking the versions' endpoints from the files. The name is not a field.
pub fn service_fields(service: &Service) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Ok(Value::Object(map)) = serde_json::to_value(service) else {
        return out;
    };
    for (key, value) in map {
        match (key.as_str(), value) {
            ("name", _) => {}
            (nested, Value::Object(inner)) if NESTED.contains(&nested) => {
                for (k, v) in inner {
                    out.insert(format!("{nested}.{k}"), v);
                }
            }
            ("versions", Value::Array(versions)) => {
                let mut weights = serde_json::Map::new();
                let mut stripped = Vec::with_capacity(versions.len());
                for mut v in versions {
                    if let Value::Object(o) = &mut v
                        && let (Some(Value::String(name)), Some(w)) =
                            (o.get("name").cloned(), o.remove("weight"))
                    {
                        weights.insert(name, w);
                    }
                    stripped.push(v);
                }
                out.insert("versions".to_owned(), Value::Array(stripped));
                out.insert("weights".to_owned(), Value::Object(weights));
            }
            (key, value) => {
                out.insert(key.to_owned(), value);
            }
        }
    }
    out
}

/// The service named `name` with these fields ([`service_fields`]'s inverse). A version the
/// weights do not name gets weight 0.
pub fn service_from_fields(
    name: &str,
    fields: &BTreeMap<String, Value>,
) -> Result<Service, serde_json::Error> {
    let mut map = serde_json::Map::new();
    map.insert("name".to_owned(), Value::String(name.to_owned()));
    let weights = fields.get("weights").and_then(Value::as_object);
    for (field, value) in fields {
        match field.split_once('.') {
            Some((nested, key)) => {
                let entry = map
                    .entry(nested.to_owned())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                if let Value::Object(o) = entry {
                    o.insert(key.to_owned(), value.clone());
                }
            }
            None if field == "weights" => {}
            None if field == "versions" => {
                let mut versions = value.clone();
                if let Value::Array(list) = &mut versions {
                    for v in list {
                        if let Value::Object(o) = v {
                            let weight = o
                                .get("name")
                                .and_then(Value::as_str)
                                .and_then(|n| weights?.get(n))
                                .cloned()
                                .unwrap_or(Value::from(0));
                            o.insert("weight".to_owned(), weight);
                        }
                    }
                }
                map.insert(field.clone(), versions);
            }
            None => {
                map.insert(field.clone(), value.clone());
            }
        }
    }
    serde_json::from_value(Value::Object(map))
}

/// A field's path in a mesh, for locating it in a file: `weights` is where the first
/// version's weight is written.
fn field_path(index: usize, field: &str) -> String {
    match field {
        "weights" => format!("services[{index}].versions[0].weight"),
        _ => format!("services[{index}].{field}"),
    }
}

/// The service as the overlay makes it, from the files' definition (if any). `None` for
/// overrides of a service the files no longer define ([`rebase`] drops those).
pub fn overlay_service(
    name: &str,
    file: Option<&Service>,
    overlay: &ServiceOverlay,
) -> Option<Result<Service, serde_json::Error>> {
    if file.is_none() && overlay.created.is_none() {
        return None;
    }
    let mut fields = file.map(service_fields).unwrap_or_default();
    for (field, o) in &overlay.fields {
        match &o.value {
            Some(v) => fields.insert(field.clone(), v.clone()),
            None => fields.remove(field),
        };
    }
    Some(service_from_fields(name, &fields))
}

/// The overlay entry that makes `wanted` out of the files' `file` service, keeping the
/// change (time, caller) of overrides whose value stays the same. Fields equal to the files'
/// are not overridden. `None`: nothing to override.
pub fn diff_service(
    file: Option<&Service>,
    wanted: &Service,
    previous: Option<&ServiceOverlay>,
    change: &Change,
) -> Option<ServiceOverlay> {
    let from_file = file.map(service_fields).unwrap_or_default();
    let wanted_fields = service_fields(wanted);
    let mut out = ServiceOverlay {
        created: match file {
            Some(_) => None,
            None => Some(
                previous
                    .and_then(|p| p.created.clone())
                    .unwrap_or_else(|| change.clone()),
            ),
        },
        fields: BTreeMap::new(),
    };
    let names: std::collections::BTreeSet<&String> =
        from_file.keys().chain(wanted_fields.keys()).collect();
    for field in names {
        let (value, in_file) = (wanted_fields.get(field), from_file.get(field));
        if value == in_file {
            continue;
        }
        let kept = previous
            .and_then(|p| p.fields.get(field))
            .filter(|o| o.value.as_ref() == value && o.file.as_ref() == in_file)
            .map(|o| o.change.clone());
        out.fields.insert(
            field.clone(),
            FieldOverride {
                value: value.cloned(),
                file: in_file.cloned(),
                change: kept.unwrap_or_else(|| change.clone()),
            },
        );
    }
    (out.created.is_some() || !out.fields.is_empty()).then_some(out)
}

/// What [`rebase`] did to the overlay, to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebased {
    /// The files changed a field an admin change had set: the files' value serves now.
    FileWins {
        service: String,
        field: String,
        change: Change,
    },
    /// The service left the files: its overrides went with it.
    Removed {
        service: String,
        fields: Vec<String>,
    },
    /// The files now define a service an `apply` created: they own it from now on.
    Adopted { service: String, created: Change },
}

impl std::fmt::Display for Rebased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rebased::FileWins {
                service,
                field,
                change,
            } => write!(
                f,
                "the mesh files changed service `{service}` field `{field}`, which an {change} \
                 had set: the files' value serves now and the override is dropped"
            ),
            Rebased::Removed { service, fields } => write!(
                f,
                "service `{service}` was removed from the mesh files: its admin overrides ({}) \
                 are dropped",
                fields.join(", ")
            ),
            Rebased::Adopted { service, created } => write!(
                f,
                "service `{service}`, created by an {created}, is now defined in the mesh \
                 files, which own it from now on (admin values stay for the fields the files \
                 leave unset)"
            ),
        }
    }
}

/// Bring the overlay up to date with new mesh files: a field the files changed since its
/// override was made is the files' again, a service gone from the files loses its overrides
/// (unless an `apply` created it), and a created service that the files now define is theirs.
pub fn rebase(overlay: &mut Overlay, files: &Mesh) -> Vec<Rebased> {
    let mut notes = Vec::new();
    overlay.services.retain(|name, entry| {
        let Some(file) = files.services.iter().find(|s| &s.name == name) else {
            if entry.created.is_some() {
                return true;
            }
            notes.push(Rebased::Removed {
                service: name.clone(),
                fields: entry.fields.keys().cloned().collect(),
            });
            return false;
        };
        if let Some(created) = entry.created.take() {
            notes.push(Rebased::Adopted {
                service: name.clone(),
                created,
            });
        }
        let now = service_fields(file);
        entry.fields.retain(|field, o| {
            if now.get(field) == o.file.as_ref() {
                return true;
            }
            notes.push(Rebased::FileWins {
                service: name.clone(),
                field: field.clone(),
                change: o.change.clone(),
            });
            false
        });
        !entry.fields.is_empty()
    });
    notes
}

/// Stored admin changes to a service that do not fit the mesh files, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OverlayConflict {
    pub service: String,
    /// Names both sources: the file as `file:line:col`, the other as the admin change.
    pub message: String,
    /// The problems alone, each placed (the message without what happens to the service).
    #[serde(skip)]
    pub why: String,
}

/// The mesh served: the files with the overrides that fit, and the ones that do not.
#[derive(Clone, Debug)]
pub struct Effective {
    pub mesh: Mesh,
    pub conflicts: Vec<OverlayConflict>,
}

/// The files with the overlay applied. Overrides that do not fit (the result would not
/// validate) are left out and reported; the files alone always make a valid mesh, so this
/// cannot fail. Services are applied oldest change first, so of two admin services that
/// clash, the newer one is reported.
pub fn effective(base: &Mesh, sources: &Sources, overlay: &Overlay) -> Effective {
    let mut order: Vec<(&String, &ServiceOverlay)> = overlay.services.iter().collect();
    order.sort_by_key(|(name, o)| (o.latest().map_or(0, |c| c.at_unix_ms), *name));
    let put = |mesh: &mut Mesh, name: &str, entry: &ServiceOverlay| -> Result<(), String> {
        let file = base.services.iter().find(|s| s.name == name);
        let Some(service) = overlay_service(name, file, entry) else {
            return Ok(());
        };
        let service =
            service.map_err(|e| format!("the stored fields do not make a service: {e}"))?;
        match mesh.services.iter_mut().find(|s| s.name == name) {
            Some(existing) => *existing = service,
            None => mesh.services.push(service),
        }
        Ok(())
    };
    // Usually everything fits: one check.
    let mut all = base.clone();
    if order
        .iter()
        .all(|(name, entry)| put(&mut all, name, entry).is_ok())
        && all.check().is_ok()
    {
        return Effective {
            mesh: all,
            conflicts: Vec::new(),
        };
    }
    let mut mesh = base.clone();
    let mut conflicts = Vec::new();
    let mut applied: Vec<&str> = Vec::new();
    for (name, entry) in order {
        let mut candidate = mesh.clone();
        let outcome = put(&mut candidate, name, entry).and_then(|()| {
            candidate.check().map_err(|problems| {
                describe(&candidate, sources, overlay, name, &applied, &problems)
            })
        });
        match outcome {
            Ok(()) => {
                mesh = candidate;
                applied.push(name);
            }
            Err(why) => conflicts.push(OverlayConflict {
                service: name.clone(),
                why: why.clone(),
                message: format!(
                    "service `{name}` from an {} does not fit the mesh files and is {}: {why}",
                    entry
                        .latest()
                        .map_or_else(|| "admin change".to_owned(), ToString::to_string),
                    if base.services.iter().any(|s| &s.name == name) {
                        "served as the files define it"
                    } else {
                        "not served"
                    }
                ),
            }),
        }
    }
    Effective { mesh, conflicts }
}

/// Problems of `mesh` (the files plus the overrides of `applied` and `service`), each placed:
/// in its file as `file:line:col`, or at the admin change that set it. Then where the
/// service's prefix and cluster names are also taken, which the problems name only by
/// service.
fn describe(
    mesh: &Mesh,
    sources: &Sources,
    overlay: &Overlay,
    service: &str,
    applied: &[&str],
    problems: &[Problem],
) -> String {
    // Where another service's `field` comes from: its admin change, or its file.
    let origin = |index: usize, name: &str, field: &str| -> String {
        let entry = overlay.services.get(name);
        if (name == service || applied.contains(&name))
            && let Some(entry) = entry
            && (entry.created.is_some() || entry.fields.contains_key(field))
            && let Some(change) = entry.latest()
        {
            return format!("service `{name}` from an {change}");
        }
        match sources.locate(&field_path(index, field)) {
            Some(loc) => format!("service `{name}` at {loc} ({})", loc.path),
            None => format!("service `{name}`"),
        }
    };
    let mut parts: Vec<String> = problems
        .iter()
        .map(|p| match service_at(mesh, &p.path) {
            Some((s, tail)) if s.name == service => {
                if tail.is_empty() {
                    p.message.clone()
                } else {
                    format!("{tail}: {}", p.message)
                }
            }
            _ => match sources.locate(&p.path) {
                Some(loc) => format!("{loc}: {}: {}", loc.path, p.message),
                None => p.to_string(),
            },
        })
        .collect();
    let Some(s) = mesh.services.iter().find(|s| s.name == service) else {
        return parts.join("; ");
    };
    let prefix = s.prefix();
    let clusters = s.cluster_names();
    for (i, other) in mesh.services.iter().enumerate() {
        if other.name == service {
            continue;
        }
        if other.prefix() == prefix {
            parts.push(format!(
                "prefix `{prefix}` is taken by {}",
                origin(i, &other.name, "route.prefix")
            ));
        }
        let theirs = other.cluster_names();
        if let Some(c) = clusters.iter().find(|c| theirs.contains(c)) {
            parts.push(format!(
                "cluster name `{c}` is taken by {}",
                origin(i, &other.name, "versions")
            ));
        }
    }
    for (i, c) in mesh.clusters.iter().enumerate() {
        if clusters.contains(&c.name)
            && let Some(loc) = sources.locate(&format!("clusters[{i}].name"))
        {
            parts.push(format!(
                "cluster name `{}` is taken by the cluster at {loc} ({})",
                c.name, loc.path
            ));
        }
    }
    parts.join("; ")
}

/// Where the files define service `name`'s field (see [`service_fields`]), when they do.
pub fn locate_field(
    base: &Mesh,
    sources: &Sources,
    name: &str,
    fields: &[&str],
) -> Vec<Option<Location>> {
    let Some(index) = base.services.iter().position(|s| s.name == name) else {
        return vec![None; fields.len()];
    };
    let paths: Vec<String> = fields.iter().map(|f| field_path(index, f)).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    sources.locate_all(&refs)
}

/// The service a mesh field path is about, and the rest of the path (`route.prefix`).
fn service_at<'m>(mesh: &'m Mesh, path: &'m str) -> Option<(&'m Service, &'m str)> {
    let (index, tail) = path.strip_prefix("services[")?.split_once(']')?;
    let service = mesh.services.get(index.parse::<usize>().ok()?)?;
    Some((service, tail.trim_start_matches('.')))
}

/// The fields a warning about a service's timeouts comes from.
const TIMEOUT_FIELDS: [&str; 3] = ["policies.retries", "policies.timeout", "route.timeout"];

/// A warning about the mesh served ([`Mesh::warnings`]), placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The service it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `file:line:col: path: message`, or the admin change that set what it is about.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The mesh's warnings ([`Mesh::warnings`]), each placed in its file, or at the admin
/// change that set what it is about.
pub fn warnings(mesh: &Mesh, sources: &Sources, overlay: &Overlay) -> Vec<Warning> {
    mesh.warnings()
        .into_iter()
        .map(|p| {
            let service = service_at(mesh, &p.path);
            let name = service.map(|(s, _)| s.name.clone());
            if let Some((s, tail)) = service
                && let Some(entry) = overlay.services.get(&s.name)
                && (entry.created.is_some()
                    || TIMEOUT_FIELDS.iter().any(|f| entry.fields.contains_key(*f)))
                && let Some(change) = entry.latest()
            {
                return Warning {
                    service: name,
                    message: format!("{change}, service `{}` field {tail}: {}", s.name, p.message),
                };
            }
            let message = match sources.locate(&p.path) {
                Some(loc) => format!("{loc}: {}: {}", loc.path, p.message),
                None => p.to_string(),
            };
            Warning {
                service: name,
                message,
            }
        })
        .collect()
}

/// Why the stored overlay cannot be read.
fn overlay_error(path: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!(
        "{}: {message}; legate-cp does not start on admin changes it cannot read: fix the file, \
         or move it away to start from the mesh files alone",
        path.display()
    ))
}

/// Load the overlay from the data directory (empty when there is none). An overlay of an
/// earlier release (whole services, no `format`) is migrated against the files' `base`:
/// fields equal to the files' are dropped, the rest become overrides, and services in no
/// file become created ones; the old file is kept as `overlay.v1.yaml.bak` and the new one
/// written. The second value says what migrated, to log.
pub fn load_overlay(data_dir: &Path, base: &Mesh) -> Result<(Overlay, Option<String>), StoreError> {
    let path = data_dir.join(OVERLAY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Overlay::default(), None));
        }
        Err(e) => {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source: e,
            });
        }
    };
    let source = path.display().to_string();
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| overlay_error(&path, e))?;
    let format = value.get("format").and_then(serde_yaml_ng::Value::as_u64);
    match format {
        Some(f) if f == u64::from(OVERLAY_FORMAT) => {
            let overlay: Overlay =
                legate_model::parse_yaml(&text, &source).map_err(|e| overlay_error(&path, e))?;
            Ok((overlay, None))
        }
        Some(f) => Err(overlay_error(
            &path,
            format!("format {f} is not one this release reads (it writes format {OVERLAY_FORMAT})"),
        )),
        None => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct WholeServices {
                #[serde(default)]
                generation: u64,
                #[serde(default)]
                services: BTreeMap<String, Service>,
            }
            let old: WholeServices =
                legate_model::parse_yaml(&text, &source).map_err(|e| overlay_error(&path, e))?;
            let change = Change::now("migrated", None);
            let mut overlay = Overlay {
                format: OVERLAY_FORMAT,
                generation: old.generation,
                services: BTreeMap::new(),
            };
            for (name, service) in &old.services {
                let file = base.services.iter().find(|s| &s.name == name);
                if let Some(entry) = diff_service(file, service, None, &change) {
                    overlay.services.insert(name.clone(), entry);
                }
            }
            let backup = data_dir.join(OVERLAY_V1_BACKUP);
            std::fs::write(&backup, &text).map_err(|e| StoreError::Io {
                path: backup.display().to_string(),
                source: e,
            })?;
            save_overlay(data_dir, &overlay)?;
            let note = format!(
                "migrated {} from whole services to per-field overrides ({} of {} services \
                 keep overrides; the old file is kept as {}): fields equal to the mesh files \
                 follow the files from now on",
                path.display(),
                overlay.services.len(),
                old.services.len(),
                backup.display()
            );
            Ok((overlay, Some(note)))
        }
    }
}

/// Persist the overlay atomically: temporary file, fsync, rename, directory fsync.
pub fn save_overlay(data_dir: &Path, overlay: &Overlay) -> Result<(), StoreError> {
    let text = serde_yaml_ng::to_string(overlay).map_err(|e| StoreError::Other(e.to_string()))?;
    write_atomic(data_dir, OVERLAY_FILE, text.as_bytes())
}

/// Write `name` in the data directory atomically (temporary file, fsync, rename, directory
/// fsync): a crash leaves the old contents or the new, never a mix. Every file legate-cp
/// keeps in its data directory is written this way.
pub fn write_atomic(data_dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |p: &Path, e| StoreError::Io {
        path: p.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    let target = data_dir.join(name);
    let tmp = data_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
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
    route: {prefix: /payments/, timeout: 5s}
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

    fn files(text: &str) -> (Mesh, Sources) {
        load_mesh(&[("mesh.yaml".to_owned(), text.to_owned())]).expect("valid mesh")
    }

    fn service<'m>(mesh: &'m Mesh, name: &str) -> &'m Service {
        mesh.services
            .iter()
            .find(|s| s.name == name)
            .expect("service")
    }

    fn weights(mesh: &Mesh, name: &str) -> Vec<u32> {
        service(mesh, name)
            .versions
            .iter()
            .map(|v| v.weight)
            .collect()
    }

    /// `set-weights payments v1=90 v2=10` on `base`, as the owner records it.
    fn set_weights(base: &Mesh, overlay: &mut Overlay) {
        let mut mesh = base.clone();
        legate_model::set_weights(&mut mesh, "payments", &[("v1", 90), ("v2", 10)])
            .expect("weights");
        let change = Change::now("set-weights", Some("bearer token"));
        let entry = diff_service(
            Some(service(base, "payments")),
            service(&mesh, "payments"),
            overlay.services.get("payments"),
            &change,
        )
        .expect("an override");
        overlay.services.insert("payments".to_owned(), entry);
    }

    #[test]
    fn fields_round_trip_and_weights_are_their_own_field() {
        let (base, _) = files(BASE);
        let s = service(&base, "payments");
        let fields = service_fields(s);
        assert_eq!(
            fields.keys().map(String::as_str).collect::<Vec<_>>(),
            ["route.prefix", "route.timeout", "versions", "weights"]
        );
        assert_eq!(fields["weights"], serde_json::json!({"v1": 100, "v2": 0}));
        assert!(fields["versions"][0].get("weight").is_none());
        assert_eq!(
            &service_from_fields("payments", &fields).expect("service"),
            s
        );
    }

    #[test]
    fn set_weights_overrides_only_the_weights_and_a_file_edit_of_them_wins() {
        let (base, sources) = files(BASE);
        let mut overlay = Overlay::default();
        set_weights(&base, &mut overlay);
        let entry = &overlay.services["payments"];
        assert_eq!(entry.fields.keys().collect::<Vec<_>>(), ["weights"]);
        assert_eq!(
            weights(&effective(&base, &sources, &overlay).mesh, "payments"),
            [90, 10]
        );

        // The file changes the timeout and the endpoints: they serve, the weights stay.
        let edited = BASE
            .replace("timeout: 5s", "timeout: 7s")
            .replace("18083", "18084");
        let (base2, sources2) = files(&edited);
        let mut rebased = overlay.clone();
        assert_eq!(rebase(&mut rebased, &base2), vec![]);
        let eff = effective(&base2, &sources2, &rebased);
        assert!(eff.conflicts.is_empty());
        let s = service(&eff.mesh, "payments");
        assert_eq!(s.route.timeout, Some(Duration::from_secs(7)));
        assert_eq!(s.versions[1].endpoints[0].address, "127.0.0.1:18084");
        assert_eq!(weights(&eff.mesh, "payments"), [90, 10]);

        // The file changes the weights: the newer change wins and the override goes.
        let (base3, sources3) = files(
            &edited
                .replace("weight: 100", "weight: 50")
                .replace("weight: 0", "weight: 50"),
        );
        let notes = rebase(&mut rebased, &base3);
        assert!(
            matches!(&notes[..], [Rebased::FileWins { field, .. }] if field == "weights"),
            "{notes:?}"
        );
        assert!(rebased.services.is_empty());
        assert_eq!(
            weights(&effective(&base3, &sources3, &rebased).mesh, "payments"),
            [50, 50]
        );
    }

    #[test]
    fn removing_a_file_service_drops_its_overrides_but_not_a_created_service() {
        let (base, _) = files(BASE);
        let mut overlay = Overlay::default();
        set_weights(&base, &mut overlay);
        let created: Service =
            legate_model::parse_yaml("name: extra\nendpoints: [{address: 127.0.0.1:9}]\n", "doc")
                .expect("service");
        let entry = diff_service(None, &created, None, &Change::now("apply", None)).expect("entry");
        assert!(entry.created.is_some());
        overlay.services.insert("extra".to_owned(), entry);

        let (other, sources) =
            files("services:\n  - name: orders\n    endpoints: [{address: 127.0.0.1:3}]\n");
        let notes = rebase(&mut overlay, &other);
        assert!(
            matches!(&notes[..], [Rebased::Removed { service, .. }] if service == "payments"),
            "{notes:?}"
        );
        let eff = effective(&other, &sources, &overlay);
        let names: Vec<&str> = eff.mesh.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["orders", "extra"]);
    }

    #[test]
    fn apply_of_a_file_service_stores_the_differing_fields_and_identical_stores_nothing() {
        let (base, _) = files(BASE);
        let file = service(&base, "payments");
        let change = Change::now("apply", None);
        assert_eq!(diff_service(Some(file), file, None, &change), None);
        let mut wanted = file.clone();
        wanted.route.timeout = None;
        wanted.policies.timeout = Some(Duration::from_secs(2));
        let entry = diff_service(Some(file), &wanted, None, &change).expect("overrides");
        assert_eq!(
            entry.fields.keys().collect::<Vec<_>>(),
            ["policies.timeout", "route.timeout"]
        );
        assert_eq!(
            entry.fields["route.timeout"].value, None,
            "unset by the apply"
        );
        // Applying it again keeps each field's time.
        let later = Change::now("apply", Some("other"));
        let again = diff_service(Some(file), &wanted, Some(&entry), &later).expect("overrides");
        assert_eq!(again, entry);
    }

    #[test]
    fn a_conflicting_admin_service_is_left_out_and_both_sources_are_named() {
        let (base, sources) = files(BASE);
        let clash: Service = legate_model::parse_yaml(
            "name: other\nendpoints: [{address: 127.0.0.1:9}]\nroute: {prefix: /payments/}\n",
            "doc",
        )
        .expect("service");
        let mut overlay = Overlay::default();
        set_weights(&base, &mut overlay);
        let entry = diff_service(
            None,
            &clash,
            None,
            &Change::now("apply", Some("bearer token")),
        )
        .expect("entry");
        overlay.services.insert("other".to_owned(), entry);
        let eff = effective(&base, &sources, &overlay);
        // The files and the overrides that fit are served.
        assert_eq!(eff.mesh.services.len(), 1);
        assert_eq!(weights(&eff.mesh, "payments"), [90, 10]);
        assert_eq!(eff.conflicts.len(), 1);
        let m = &eff.conflicts[0].message;
        assert!(
            m.starts_with("service `other` from an admin change (apply at "),
            "{m}"
        );
        assert!(m.contains("by bearer token)"), "{m}");
        assert!(m.contains("is not served"), "{m}");
        assert!(
            m.contains("prefix `/payments/` is also the prefix of service `payments`"),
            "{m}"
        );
        assert!(
            m.contains("prefix `/payments/` is taken by service `payments` at mesh.yaml:7:21 (services[0].route.prefix)"),
            "{m}"
        );
        assert!(
            !m.contains("services[1]"),
            "no index that is in no file: {m}"
        );
    }

    #[test]
    fn overlay_survives_a_restart_and_an_old_whole_service_overlay_is_migrated() {
        let dir = temp_dir("overlay");
        let (base, sources) = files(BASE);
        let mut overlay = Overlay::default();
        set_weights(&base, &mut overlay);
        overlay.generation = 3;
        save_overlay(&dir, &overlay).expect("save");
        let (loaded, note) = load_overlay(&dir, &base).expect("load");
        assert_eq!((loaded, note), (overlay.clone(), None));

        // The release before wrote whole services.
        let mut whole = service(&effective(&base, &sources, &overlay).mesh, "payments").clone();
        whole.route.timeout = Some(Duration::from_secs(5));
        let old = format!(
            "generation: 3\nservices:\n  payments:\n{}",
            serde_yaml_ng::to_string(&whole)
                .expect("yaml")
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        std::fs::write(dir.join(OVERLAY_FILE), &old).expect("write");
        let (migrated, note) = load_overlay(&dir, &base).expect("migrates");
        assert!(note.is_some_and(|n| n.contains("migrated")));
        assert_eq!(
            migrated.services["payments"]
                .fields
                .keys()
                .collect::<Vec<_>>(),
            ["weights"]
        );
        assert_eq!(migrated.generation, 3);
        assert_eq!(
            std::fs::read_to_string(dir.join(OVERLAY_V1_BACKUP)).expect("backup"),
            old
        );
        assert_eq!(load_overlay(&dir, &base).expect("now format 2").1, None);

        std::fs::write(dir.join(OVERLAY_FILE), "format: 9\n").expect("write");
        let err = load_overlay(&dir, &base).expect_err("unknown format");
        assert!(err.to_string().contains("format 9"), "{err}");
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
        let (base, _) = files(BASE);
        assert_eq!(
            load_overlay(&dir, &base).expect("empty").0,
            Overlay::default()
        );
        let err = load_mesh(&[("m.yaml".to_owned(), "services:\n  - nme: x\n".to_owned())])
            .expect_err("unknown field");
        assert!(err.to_string().starts_with("m.yaml:2:5"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
