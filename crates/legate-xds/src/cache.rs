//! Last-known-good xDS configuration, kept on disk for cold starts.
//!
//! After every accepted update the client writes the full dynamic resource set here. At start
//! the proxy serves from it at once when every control plane fails before answering, or after
//! the initial fetch timeout when one is connected but silent, and a control plane's
//! configuration replaces it once the stream answers (`docs/xds.md`, "Last-known-good cache"). The file is all or nothing: a file that fails any check (magic, format version,
//! length, SHA-256, protobuf decode, node id) is refused whole, never half-loaded.
//!
//! File layout (all integers big-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `LEGATEC1` |
//! | 4 | format version (`1`) |
//! | 32 | SHA-256 of the payload |
//! | 8 | payload length |
//! | n | payload: a protobuf `CacheFileProto` (defined below) |
//!
//! Nothing may follow the payload.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

/// Name of the cache file inside the cache directory.
pub const FILE_NAME: &str = "xds-cache.bin";

/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"LEGATEC1";
const MAGIC_LEN: usize = MAGIC.len();
const VERSION_LEN: usize = 4;
const CHECKSUM_LEN: usize = 32;
const LENGTH_LEN: usize = 8;
const HEADER_LEN: usize = MAGIC_LEN + VERSION_LEN + CHECKSUM_LEN + LENGTH_LEN;

/// How many unique temp-file names `write` tries before giving up.
const TEMP_ATTEMPTS: usize = 16;

/// The full dynamic resource set last accepted from the control plane.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedConfig {
    /// Node id the resources were served to; a cache for another node is refused.
    pub node_id: String,
    /// One entry per xDS resource type.
    pub types: Vec<CachedType>,
    /// When the cache was written (by the writer's clock).
    pub written_at: SystemTime,
}

/// The accepted state of one xDS resource type.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedType {
    /// e.g. `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
    pub type_url: String,
    /// `version_info` of the last accepted response for this type.
    pub version_info: String,
    pub resources: Vec<CachedResource>,
}

/// One accepted resource, kept as the wire `Any` so it can be revalidated on load.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedResource {
    pub name: String,
    /// Per-resource version (delta xDS); empty under state-of-the-world.
    pub version: String,
    pub resource: Any,
}

/// Why the cache could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// There is no cache file: the normal first start, not worth a warning.
    #[error("no xds cache file at {}", path.display())]
    Missing { path: PathBuf },

    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `read xds cache file`.
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("xds cache file {} does not start with the LEGATEC1 magic", path.display())]
    BadMagic { path: PathBuf },

    #[error(
        "xds cache file {} has unsupported format version {version} (this build reads {FORMAT_VERSION})",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, version: u32 },

    #[error(
        "xds cache file {} is truncated: expected {expected} bytes, found {actual}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error(
        "xds cache file {} has {extra} trailing bytes after its payload",
        path.display()
    )]
    TrailingBytes { path: PathBuf, extra: u64 },

    #[error("xds cache file {} failed its sha-256 payload checksum", path.display())]
    ChecksumMismatch { path: PathBuf },

    #[error("xds cache file {} payload does not decode: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },

    #[error(
        "xds cache file {} has an out-of-range written_at ({seconds}s, {nanos}ns)",
        path.display()
    )]
    InvalidTimestamp {
        path: PathBuf,
        seconds: i64,
        nanos: u32,
    },

    #[error(
        "xds cache file {} belongs to node {found:?}, expected {expected:?}",
        path.display()
    )]
    WrongNode {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

impl CacheError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::Io { .. } => "io",
            Self::BadMagic { .. } => "bad_magic",
            Self::UnsupportedFormat { .. } => "unsupported_format",
            Self::Truncated { .. } => "truncated",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::ChecksumMismatch { .. } => "checksum",
            // A well-formed protobuf carrying an impossible value is still a payload that
            // does not decode into a config.
            Self::Decode { .. } | Self::InvalidTimestamp { .. } => "decode",
            Self::WrongNode { .. } => "wrong_node",
        }
    }

    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Missing { path }
            | Self::Io { path, .. }
            | Self::BadMagic { path }
            | Self::UnsupportedFormat { path, .. }
            | Self::Truncated { path, .. }
            | Self::TrailingBytes { path, .. }
            | Self::ChecksumMismatch { path }
            | Self::Decode { path, .. }
            | Self::InvalidTimestamp { path, .. }
            | Self::WrongNode { path, .. } => path,
        }
    }
}

/// The path of the cache file inside `dir`.
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `config` to `<dir>/xds-cache.bin` atomically and returns that path.
///
/// The data goes to a uniquely named temp file in `dir`, is synced, then renamed over the
/// target, and the directory is synced so the rename survives a crash. A reader therefore sees
/// either the previous complete file or the new complete file.
pub fn write(dir: &Path, config: &CachedConfig) -> Result<PathBuf, CacheError> {
    fs::create_dir_all(dir).map_err(|source| CacheError::Io {
        op: "create xds cache directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let target = file_path(dir);
    let bytes = encode_file(config);

    let (tmp_path, mut tmp) = create_temp(dir)?;
    let written = tmp
        .write_all(&bytes)
        .map_err(|source| CacheError::Io {
            op: "write xds cache temp file",
            path: tmp_path.clone(),
            source,
        })
        .and_then(|()| {
            tmp.sync_all().map_err(|source| CacheError::Io {
                op: "sync xds cache temp file",
                path: tmp_path.clone(),
                source,
            })
        });
    drop(tmp);
    let renamed = written.and_then(|()| {
        fs::rename(&tmp_path, &target).map_err(|source| CacheError::Io {
            op: "rename xds cache temp file over",
            path: target.clone(),
            source,
        })
    });
    if let Err(error) = renamed {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp_path);
        return Err(error);
    }

    sync_dir(dir)?;
    Ok(target)
}

/// Writes the cache off the async runtime's threads, one file at a time, newest first.
///
/// A write ends in two `fsync`s and encodes the whole resource set, which at 10,000 clusters
/// is megabytes: done inline it would stall the thread that serves requests (with
/// `--concurrency 1` there is only one). [`Writer::submit`] only stores the configuration;
/// a task hands it to the blocking pool. Writes never overlap, and a configuration submitted
/// while one is being written replaces any older one still waiting, so a later configuration
/// is never overtaken by an earlier one and the file ends on the last one submitted.
#[derive(Debug)]
pub struct Writer {
    latest: tokio::sync::watch::Sender<Option<Arc<CachedConfig>>>,
}

impl Writer {
    /// Starts the writing task for `<dir>/xds-cache.bin` on the current runtime. It ends
    /// once the `Writer` is dropped and the last submitted configuration is written.
    pub fn spawn(dir: PathBuf) -> (Writer, tokio::task::JoinHandle<()>) {
        Writer::spawn_with(dir, write)
    }

    /// [`spawn`](Self::spawn) with the function that writes (tests stand in a slow disk).
    fn spawn_with<W>(dir: PathBuf, write: W) -> (Writer, tokio::task::JoinHandle<()>)
    where
        W: Fn(&Path, &CachedConfig) -> Result<PathBuf, CacheError> + Send + Sync + 'static,
    {
        let write = Arc::new(write);
        let (latest, mut rx) = tokio::sync::watch::channel(None::<Arc<CachedConfig>>);
        let task = tokio::spawn(async move {
            // `changed` reports an unseen value before it reports a closed channel, so the
            // configuration submitted just before the `Writer` was dropped is still written.
            while rx.changed().await.is_ok() {
                let Some(config) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let (dir, write) = (dir.clone(), write.clone());
                match tokio::task::spawn_blocking(move || write(&dir, &config)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "cannot write the xDS cache"),
                    Err(error) => tracing::error!(%error, "the xDS cache write task failed"),
                }
            }
        });
        (Writer { latest }, task)
    }

    /// Queues `config` to be written, replacing one that waits; returns at once.
    pub fn submit(&self, config: CachedConfig) {
        // Stores the value even if the task has gone (the runtime is shutting down).
        self.latest.send_replace(Some(Arc::new(config)));
    }
}

/// Loads `<dir>/xds-cache.bin`, verifying it completely before returning anything.
///
/// Returns [`CacheError::Missing`] when there is no file, so callers can treat that as "no
/// cache" without logging; every other error means a file exists and was refused.
pub fn load(dir: &Path, expected_node_id: &str) -> Result<CachedConfig, CacheError> {
    let path = file_path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(CacheError::Missing { path });
        }
        Err(source) => {
            return Err(CacheError::Io {
                op: "read xds cache file",
                path,
                source,
            });
        }
    };
    let config = decode_file(&bytes, &path)?;
    if config.node_id != expected_node_id {
        return Err(CacheError::WrongNode {
            path,
            found: config.node_id,
            expected: expected_node_id.to_owned(),
        });
    }
    Ok(config)
}

fn encode_file(config: &CachedConfig) -> Vec<u8> {
    let payload = CacheFileProto::from_config(config).encode_to_vec();
    let checksum = Sha256::digest(&payload);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(checksum.as_slice());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

fn decode_file(bytes: &[u8], path: &Path) -> Result<CachedConfig, CacheError> {
    let truncated = |expected: u64| CacheError::Truncated {
        path: path.to_path_buf(),
        expected,
        actual: bytes.len() as u64,
    };

    // A file cut inside the magic is truncated if what is there matches, bad otherwise.
    let magic_seen = bytes.len().min(MAGIC_LEN);
    if bytes[..magic_seen] != MAGIC[..magic_seen] {
        return Err(CacheError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let Some((_, rest)) = bytes.split_first_chunk::<MAGIC_LEN>() else {
        return Err(truncated(HEADER_LEN as u64));
    };
    let Some((version, rest)) = rest.split_first_chunk::<VERSION_LEN>() else {
        return Err(truncated(HEADER_LEN as u64));
    };
    let version = u32::from_be_bytes(*version);
    if version != FORMAT_VERSION {
        return Err(CacheError::UnsupportedFormat {
            path: path.to_path_buf(),
            version,
        });
    }
    let Some((checksum, rest)) = rest.split_first_chunk::<CHECKSUM_LEN>() else {
        return Err(truncated(HEADER_LEN as u64));
    };
    let Some((length, rest)) = rest.split_first_chunk::<LENGTH_LEN>() else {
        return Err(truncated(HEADER_LEN as u64));
    };
    let declared = u64::from_be_bytes(*length);
    let present = rest.len() as u64;
    if present < declared {
        return Err(truncated((HEADER_LEN as u64).saturating_add(declared)));
    }
    if present > declared {
        return Err(CacheError::TrailingBytes {
            path: path.to_path_buf(),
            extra: present - declared,
        });
    }
    let payload = rest;

    if Sha256::digest(payload).as_slice() != checksum.as_slice() {
        return Err(CacheError::ChecksumMismatch {
            path: path.to_path_buf(),
        });
    }
    let proto = CacheFileProto::decode(payload).map_err(|source| CacheError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    proto.into_config(path)
}

/// Creates a new, uniquely named temp file in `dir` (never reusing an existing name).
fn create_temp(dir: &Path) -> Result<(PathBuf, File), CacheError> {
    let mut last_error = None;
    for _ in 0..TEMP_ATTEMPTS {
        let name = format!(
            ".{FILE_NAME}.{}.{:016x}.tmp",
            std::process::id(),
            fastrand::u64(..)
        );
        let path = dir.join(name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            // The resource set can carry inline secrets: keep it private to the proxy's user.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                last_error = Some((path, error));
            }
            Err(source) => {
                return Err(CacheError::Io {
                    op: "create xds cache temp file",
                    path,
                    source,
                });
            }
        }
    }
    let (path, source) = last_error.unwrap_or_else(|| {
        (
            dir.to_path_buf(),
            io::Error::from(io::ErrorKind::AlreadyExists),
        )
    });
    Err(CacheError::Io {
        op: "create xds cache temp file",
        path,
        source,
    })
}

/// Makes the rename durable: on Unix a rename is only persistent once the directory is synced.
fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    #[cfg(unix)]
    {
        let io_error = |source| CacheError::Io {
            op: "sync xds cache directory",
            path: dir.to_path_buf(),
            source,
        };
        File::open(dir)
            .map_err(io_error)?
            .sync_all()
            .map_err(io_error)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `written_at` as a protobuf-`Timestamp`-style pair: whole seconds since the Unix epoch (may be
/// negative) and a non-negative nanosecond part below one second.
fn to_timestamp(time: SystemTime) -> (i64, u32) {
    // Seconds beyond i64 cannot come from a real clock; saturate rather than fail the write.
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let seconds = i64::try_from(before.as_secs())
                .unwrap_or(i64::MAX)
                .saturating_neg();
            match before.subsec_nanos() {
                0 => (seconds, 0),
                nanos => (seconds.saturating_sub(1), 1_000_000_000 - nanos),
            }
        }
    }
}

fn from_timestamp(seconds: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let base = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)?
    } else {
        UNIX_EPOCH.checked_sub(whole)?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

// The payload schema, written by hand so the crate needs no protoc. Tags are part of the file
// format: never renumber, only add.

#[derive(Clone, PartialEq, prost::Message)]
struct CacheFileProto {
    #[prost(string, tag = "1")]
    node_id: String,
    #[prost(message, repeated, tag = "2")]
    types: Vec<CachedTypeProto>,
    #[prost(int64, tag = "3")]
    written_at_seconds: i64,
    #[prost(uint32, tag = "4")]
    written_at_nanos: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CachedTypeProto {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    version_info: String,
    #[prost(message, repeated, tag = "3")]
    resources: Vec<CachedResourceProto>,
}

/// The `Any` is stored flattened (type URL and bytes) so that every decoded message maps to a
/// resource: there is no "absent resource" state to reject.
#[derive(Clone, PartialEq, prost::Message)]
struct CachedResourceProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(string, tag = "3")]
    resource_type_url: String,
    #[prost(bytes = "vec", tag = "4")]
    resource_value: Vec<u8>,
}

impl CacheFileProto {
    fn from_config(config: &CachedConfig) -> Self {
        let CachedConfig {
            node_id,
            types,
            written_at,
        } = config;
        let (written_at_seconds, written_at_nanos) = to_timestamp(*written_at);
        Self {
            node_id: node_id.clone(),
            types: types
                .iter()
                .map(|ty| CachedTypeProto {
                    type_url: ty.type_url.clone(),
                    version_info: ty.version_info.clone(),
                    resources: ty
                        .resources
                        .iter()
                        .map(|res| CachedResourceProto {
                            name: res.name.clone(),
                            version: res.version.clone(),
                            resource_type_url: res.resource.type_url.clone(),
                            resource_value: res.resource.value.clone(),
                        })
                        .collect(),
                })
                .collect(),
            written_at_seconds,
            written_at_nanos,
        }
    }

    fn into_config(self, path: &Path) -> Result<CachedConfig, CacheError> {
        let Self {
            node_id,
            types,
            written_at_seconds,
            written_at_nanos,
        } = self;
        let written_at = from_timestamp(written_at_seconds, written_at_nanos).ok_or_else(|| {
            CacheError::InvalidTimestamp {
                path: path.to_path_buf(),
                seconds: written_at_seconds,
                nanos: written_at_nanos,
            }
        })?;
        let types = types
            .into_iter()
            .map(|ty| CachedType {
                type_url: ty.type_url,
                version_info: ty.version_info,
                resources: ty
                    .resources
                    .into_iter()
                    .map(|res| CachedResource {
                        name: res.name,
                        version: res.version,
                        resource: Any {
                            type_url: res.resource_type_url,
                            value: res.resource_value,
                        },
                    })
                    .collect(),
            })
            .collect();
        Ok(CachedConfig {
            node_id,
            types,
            written_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "legate-xds-cache-{label}-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            fs::create_dir_all(&path).expect("create test dir");
            Self(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const NODE: &str = "node-a";

    fn sample(node_id: &str) -> CachedConfig {
        CachedConfig {
            node_id: node_id.to_owned(),
            types: vec![
                CachedType {
                    type_url: legate_snapshot::type_url::CLUSTER.to_owned(),
                    version_info: "v7".to_owned(),
                    resources: vec![
                        CachedResource {
                            name: "backend".to_owned(),
                            version: "abc".to_owned(),
                            resource: Any {
                                type_url: legate_snapshot::type_url::CLUSTER.to_owned(),
                                value: vec![0x0a, 0x07, b'b', b'a', b'c', b'k', b'e', b'n', b'd'],
                            },
                        },
                        CachedResource {
                            name: "empty".to_owned(),
                            version: String::new(),
                            resource: Any::default(),
                        },
                    ],
                },
                CachedType {
                    type_url: legate_snapshot::type_url::LISTENER.to_owned(),
                    version_info: "v3".to_owned(),
                    resources: Vec::new(),
                },
            ],
            written_at: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        }
    }

    fn write_sample(dir: &TempDir) -> PathBuf {
        write(dir.path(), &sample(NODE)).expect("write cache")
    }

    /// Overwrites the cache file with raw bytes.
    fn put(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).expect("write raw file");
    }

    /// A structurally valid file around an arbitrary payload.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(Sha256::digest(payload).as_slice());
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn load_err(dir: &TempDir) -> CacheError {
        load(dir.path(), NODE).expect_err("load must fail")
    }

    fn assert_mentions_path(error: &CacheError, path: &Path) {
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{message:?} does not name {}",
            path.display()
        );
        assert_eq!(error.path(), path);
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new("round-trip");
        let path = write_sample(&dir);
        assert_eq!(path, dir.path().join("xds-cache.bin"));
        assert_eq!(load(dir.path(), NODE).expect("load"), sample(NODE));
    }

    #[test]
    fn round_trip_preserves_times_around_the_epoch() {
        let dir = TempDir::new("times");
        for written_at in [
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::new(5, 1),
            UNIX_EPOCH - Duration::from_secs(86_400),
            UNIX_EPOCH + Duration::new(0, 999_999_999),
        ] {
            let config = CachedConfig {
                written_at,
                ..sample(NODE)
            };
            write(dir.path(), &config).expect("write");
            assert_eq!(load(dir.path(), NODE).expect("load"), config);
        }
    }

    #[test]
    fn write_creates_missing_directories() {
        let dir = TempDir::new("nested");
        let nested = dir.path().join("a").join("b");
        let path = write(&nested, &sample(NODE)).expect("write");
        assert!(path.is_file());
        assert_eq!(load(&nested, NODE).expect("load"), sample(NODE));
    }

    #[test]
    fn overwrite_is_atomic_and_leaves_no_temp_files() {
        let dir = TempDir::new("overwrite");
        write_sample(&dir);
        let mut second = sample(NODE);
        second.types.truncate(1);
        second.types[0].version_info = "v8".to_owned();
        write(dir.path(), &second).expect("second write");

        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, vec![FILE_NAME.to_owned()]);
        assert_eq!(load(dir.path(), NODE).expect("load"), second);
    }

    #[test]
    fn flipped_payload_byte_fails_checksum() {
        let dir = TempDir::new("flip");
        let path = write_sample(&dir);
        let mut bytes = fs::read(&path).expect("read");
        bytes[HEADER_LEN + 3] ^= 0x01;
        put(&path, &bytes);
        let error = load_err(&dir);
        assert!(
            matches!(error, CacheError::ChecksumMismatch { .. }),
            "{error:?}"
        );
        assert_eq!(error.reason(), "checksum");
        assert_mentions_path(&error, &path);
    }

    #[test]
    fn flipped_checksum_byte_fails_checksum() {
        let dir = TempDir::new("flip-sum");
        let path = write_sample(&dir);
        let mut bytes = fs::read(&path).expect("read");
        bytes[MAGIC_LEN + VERSION_LEN] ^= 0x80;
        put(&path, &bytes);
        assert!(matches!(
            load_err(&dir),
            CacheError::ChecksumMismatch { .. }
        ));
    }

    #[test]
    fn truncation_is_refused() {
        let dir = TempDir::new("truncated");
        let path = write_sample(&dir);
        let full = fs::read(&path).expect("read");
        // Cut inside the magic, the version, the checksum, the length and the payload.
        for len in [
            0,
            3,
            MAGIC_LEN + 2,
            HEADER_LEN - 9,
            HEADER_LEN - 1,
            full.len() - 1,
        ] {
            put(&path, &full[..len]);
            let error = load_err(&dir);
            match &error {
                CacheError::Truncated {
                    expected, actual, ..
                } => {
                    assert_eq!(*actual, len as u64);
                    assert!(*expected > *actual, "{error}");
                }
                other => panic!("cut at {len}: expected Truncated, got {other:?}"),
            }
            assert_eq!(error.reason(), "truncated");
            assert_mentions_path(&error, &path);
        }
    }

    #[test]
    fn bad_magic_is_refused() {
        let dir = TempDir::new("magic");
        let path = write_sample(&dir);
        let mut bytes = fs::read(&path).expect("read");
        bytes[0] = b'X';
        put(&path, &bytes);
        let error = load_err(&dir);
        assert!(matches!(error, CacheError::BadMagic { .. }), "{error:?}");
        assert_eq!(error.reason(), "bad_magic");
        assert_mentions_path(&error, &path);

        // Short garbage is bad magic, not truncation.
        put(&path, b"{}");
        assert!(matches!(load_err(&dir), CacheError::BadMagic { .. }));
    }

    #[test]
    fn unsupported_format_version_is_refused() {
        let dir = TempDir::new("format");
        let path = write_sample(&dir);
        let mut bytes = fs::read(&path).expect("read");
        bytes[MAGIC_LEN..MAGIC_LEN + VERSION_LEN].copy_from_slice(&2u32.to_be_bytes());
        put(&path, &bytes);
        let error = load_err(&dir);
        assert!(
            matches!(error, CacheError::UnsupportedFormat { version: 2, .. }),
            "{error:?}"
        );
        assert_eq!(error.reason(), "unsupported_format");
        assert_mentions_path(&error, &path);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let dir = TempDir::new("trailing");
        let path = write_sample(&dir);
        let mut bytes = fs::read(&path).expect("read");
        bytes.extend_from_slice(&[0, 0, 0]);
        put(&path, &bytes);
        let error = load_err(&dir);
        assert!(
            matches!(error, CacheError::TrailingBytes { extra: 3, .. }),
            "{error:?}"
        );
        assert_eq!(error.reason(), "trailing_bytes");
        assert_mentions_path(&error, &path);
    }

    #[test]
    fn wrong_node_is_refused() {
        let dir = TempDir::new("node");
        let path = write_sample(&dir);
        let error = load(dir.path(), "node-b").expect_err("other node");
        match &error {
            CacheError::WrongNode {
                found, expected, ..
            } => {
                assert_eq!(found, NODE);
                assert_eq!(expected, "node-b");
            }
            other => panic!("expected WrongNode, got {other:?}"),
        }
        assert_eq!(error.reason(), "wrong_node");
        assert_mentions_path(&error, &path);
    }

    #[test]
    fn missing_file_is_distinguishable() {
        let dir = TempDir::new("missing");
        let error = load_err(&dir);
        assert!(matches!(error, CacheError::Missing { .. }), "{error:?}");
        assert_eq!(error.reason(), "missing");
        assert_mentions_path(&error, &dir.path().join(FILE_NAME));

        // A cache directory that was never created is the same "no cache" case.
        let absent = dir.path().join("never-created");
        assert!(matches!(
            load(&absent, NODE),
            Err(CacheError::Missing { .. })
        ));
    }

    #[test]
    fn checksummed_garbage_fails_to_decode() {
        let dir = TempDir::new("decode");
        let path = file_path(dir.path());
        // Field 2 (types) claims 100 bytes but has 1.
        put(&path, &frame(&[0x12, 100, 0]));
        let error = load_err(&dir);
        assert!(matches!(error, CacheError::Decode { .. }), "{error:?}");
        assert_eq!(error.reason(), "decode");
        assert_mentions_path(&error, &path);
    }

    #[test]
    fn out_of_range_timestamp_is_refused() {
        let dir = TempDir::new("timestamp");
        let path = file_path(dir.path());
        let payload = CacheFileProto {
            node_id: NODE.to_owned(),
            types: Vec::new(),
            written_at_seconds: 1,
            written_at_nanos: 1_000_000_000,
        }
        .encode_to_vec();
        put(&path, &frame(&payload));
        let error = load_err(&dir);
        assert!(
            matches!(error, CacheError::InvalidTimestamp { .. }),
            "{error:?}"
        );
        assert_eq!(error.reason(), "decode");
    }

    #[test]
    fn io_error_names_the_path() {
        let dir = TempDir::new("io");
        // The cache path is a directory: it exists but cannot be read as a file.
        let path = file_path(dir.path());
        fs::create_dir(&path).expect("mkdir");
        let error = load_err(&dir);
        assert!(matches!(error, CacheError::Io { .. }), "{error:?}");
        assert_eq!(error.reason(), "io");
        assert_mentions_path(&error, &path);

        // Writing cannot rename over a directory either, and must not leave its temp file.
        let write_error = write(dir.path(), &sample(NODE)).expect_err("rename over dir");
        assert_eq!(write_error.reason(), "io");
        let leftovers = fs::read_dir(dir.path()).expect("read dir").count();
        assert_eq!(leftovers, 1, "only the blocking directory remains");
    }

    /// Writes run one at a time and the newest wins: after many quick submissions the file
    /// holds the last one, never an earlier one that finished late.
    #[tokio::test(flavor = "current_thread")]
    async fn writer_ends_on_the_last_submission() {
        let dir = TempDir::new("writer");
        let (writer, task) = Writer::spawn(dir.path().to_path_buf());
        let versioned = |n: usize| {
            let mut config = sample(NODE);
            config.types[0].version_info = format!("v{n}");
            config
        };
        for n in 0..50 {
            writer.submit(versioned(n));
            if n % 7 == 0 {
                // Let a write start now and then, so later ones queue behind it.
                tokio::task::yield_now().await;
            }
        }
        drop(writer);
        task.await.expect("writer task");
        assert_eq!(load(dir.path(), NODE).expect("load"), versioned(49));
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    /// A write that blocks (an fsync on a slow disk) does not hold the runtime's thread:
    /// timers fire and tasks run on a single-threaded runtime while it is stuck. Were the
    /// write run on that thread, the test could not release it and it would time out.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_write_does_not_hold_the_runtime() {
        let dir = TempDir::new("writer-blocked");
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered_tx = std::sync::Mutex::new(Some(entered_tx));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let (writer, task) = Writer::spawn_with(dir.path().to_path_buf(), move |dir, config| {
            if let Some(tx) = entered_tx.lock().expect("lock").take() {
                let _ = tx.send(());
            }
            let released = release_rx
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(30));
            assert!(released.is_ok(), "the write was never released");
            write(dir, config)
        });
        writer.submit(sample(NODE));
        tokio::time::timeout(Duration::from_secs(30), entered_rx)
            .await
            .expect("the write starts")
            .expect("entered");
        // The write is stuck; the runtime is not.
        let answer = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            42
        })
        .await
        .expect("task");
        assert_eq!(answer, 42);
        release_tx.send(()).expect("release");
        drop(writer);
        task.await.expect("writer task");
        assert_eq!(load(dir.path(), NODE).expect("load"), sample(NODE));
    }

    #[test]
    fn file_layout_matches_the_documented_header() {
        let dir = TempDir::new("layout");
        let path = write_sample(&dir);
        let bytes = fs::read(&path).expect("read");
        assert_eq!(&bytes[..8], b"LEGATEC1");
        assert_eq!(&bytes[8..12], &1u32.to_be_bytes());
        let payload = &bytes[HEADER_LEN..];
        assert_eq!(&bytes[12..44], Sha256::digest(payload).as_slice());
        assert_eq!(&bytes[44..52], &(payload.len() as u64).to_be_bytes());
    }
}

/// Decoding hostile files: random bytes and every kind of damage to a valid file are refused
/// with a typed error, whole, and never panic. `make test` runs a few hundred cases of each
/// (proptest's default); `make fuzz` sets `PROPTEST_CASES` for a longer run.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const PATH: &str = "/nonexistent/xds-cache.bin";

    fn decode(bytes: &[u8]) -> Result<CachedConfig, CacheError> {
        decode_file(bytes, Path::new(PATH))
    }

    /// Every refusal is one of the file-level reasons and names the file.
    fn assert_refused(result: Result<CachedConfig, CacheError>) -> Result<(), TestCaseError> {
        match result {
            Ok(config) => Err(TestCaseError::fail(format!(
                "damaged file accepted as {config:?}"
            ))),
            Err(error) => {
                prop_assert!(
                    matches!(
                        error.reason(),
                        "bad_magic"
                            | "unsupported_format"
                            | "truncated"
                            | "trailing_bytes"
                            | "checksum"
                            | "decode"
                    ),
                    "{error:?}"
                );
                prop_assert_eq!(error.path(), Path::new(PATH));
                Ok(())
            }
        }
    }

    fn any_resource() -> impl Strategy<Value = CachedResource> {
        (
            "[a-z0-9.-]{0,12}",
            "[a-z0-9]{0,6}",
            "[a-zA-Z./]{0,40}",
            vec(any::<u8>(), 0..48),
        )
            .prop_map(|(name, version, type_url, value)| CachedResource {
                name,
                version,
                resource: Any { type_url, value },
            })
    }

    fn any_config() -> impl Strategy<Value = CachedConfig> {
        let ty = (
            "[a-zA-Z./]{0,40}",
            "[a-z0-9]{0,6}",
            vec(any_resource(), 0..4),
        )
            .prop_map(|(type_url, version_info, resources)| CachedType {
                type_url,
                version_info,
                resources,
            });
        (
            "[a-z0-9-]{1,16}",
            vec(ty, 0..4),
            -4_000_000_000i64..4_000_000_000,
            0u32..1_000_000_000,
        )
            .prop_map(|(node_id, types, seconds, nanos)| CachedConfig {
                node_id,
                types,
                written_at: from_timestamp(seconds, nanos).expect("in range"),
            })
    }

    /// The sections of a file, in order: magic, format version, checksum, length, payload.
    fn sections(file: &[u8]) -> Vec<&[u8]> {
        let bounds = [
            0,
            MAGIC_LEN,
            MAGIC_LEN + VERSION_LEN,
            MAGIC_LEN + VERSION_LEN + CHECKSUM_LEN,
            HEADER_LEN,
            file.len(),
        ];
        bounds.windows(2).map(|w| &file[w[0]..w[1]]).collect()
    }

    /// Ways a file gets damaged: on disk, by a crash mid-write, by a careless edit.
    #[derive(Clone, Debug)]
    enum Damage {
        FlipBit { at: Index, bit: u8 },
        Truncate { at: Index },
        Append { garbage: Vec<u8> },
        Overwrite { at: Index, bytes: Vec<u8> },
        Remove { at: Index, len: usize },
        Insert { at: Index, bytes: Vec<u8> },
        SwapSections { a: usize, b: usize },
        SwapPayloadHalves { at: Index },
    }

    fn any_damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Damage::FlipBit { at, bit }),
            any::<Index>().prop_map(|at| Damage::Truncate { at }),
            vec(any::<u8>(), 1..64).prop_map(|garbage| Damage::Append { garbage }),
            (any::<Index>(), vec(any::<u8>(), 1..16))
                .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
            (any::<Index>(), 1usize..32).prop_map(|(at, len)| Damage::Remove { at, len }),
            (any::<Index>(), vec(any::<u8>(), 1..16))
                .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
            (0usize..5, 0usize..5).prop_map(|(a, b)| Damage::SwapSections { a, b }),
            any::<Index>().prop_map(|at| Damage::SwapPayloadHalves { at }),
        ]
    }

    fn damage(file: &[u8], how: &Damage) -> Vec<u8> {
        let mut out = file.to_vec();
        match how {
            Damage::FlipBit { at, bit } => out[at.index(file.len())] ^= 1 << bit,
            Damage::Truncate { at } => out.truncate(at.index(file.len())),
            Damage::Append { garbage } => out.extend_from_slice(garbage),
            Damage::Overwrite { at, bytes } => {
                let start = at.index(file.len());
                let end = (start + bytes.len()).min(file.len());
                out[start..end].copy_from_slice(&bytes[..end - start]);
            }
            Damage::Remove { at, len } => {
                let start = at.index(file.len());
                out.drain(start..(start + len).min(file.len()));
            }
            Damage::Insert { at, bytes } => {
                let start = at.index(file.len());
                out.splice(start..start, bytes.iter().copied());
            }
            Damage::SwapSections { a, b } => {
                let mut parts = sections(file);
                parts.swap(*a, *b);
                out = parts.concat();
            }
            Damage::SwapPayloadHalves { at } => {
                let payload = &file[HEADER_LEN..];
                let mid = at.index(payload.len().max(1)).min(payload.len());
                out.truncate(HEADER_LEN);
                out.extend_from_slice(&payload[mid..]);
                out.extend_from_slice(&payload[..mid]);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn valid_files_round_trip(config in any_config()) {
            prop_assert_eq!(decode(&encode_file(&config)).expect("valid file"), config);
        }

        #[test]
        fn random_bytes_are_refused(bytes in vec(any::<u8>(), 0..2048)) {
            assert_refused(decode(&bytes))?;
        }

        #[test]
        fn random_bytes_behind_a_valid_header_are_refused(
            version in prop_oneof![Just(FORMAT_VERSION), any::<u32>()],
            rest in vec(any::<u8>(), 0..2048),
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&version.to_be_bytes());
            bytes.extend_from_slice(&rest);
            assert_refused(decode(&bytes))?;
        }

        /// Any change to a valid file's bytes is caught before a single resource is
        /// returned: nothing is half-loaded.
        #[test]
        fn damaged_files_are_refused_whole(config in any_config(), how in any_damage()) {
            let file = encode_file(&config);
            let damaged = damage(&file, &how);
            if damaged == file {
                // Swapping a section with itself, or two equal halves: not damage.
                prop_assert_eq!(decode(&damaged).expect("unchanged file"), config);
            } else {
                assert_refused(decode(&damaged))?;
            }
        }

        /// A payload damaged and then given a matching checksum (what a buggy or hostile
        /// writer produces) decodes into a whole configuration or is refused; it never
        /// panics. The resources in it are validated again when the cache is served.
        #[test]
        fn reframed_damaged_payloads_never_panic(config in any_config(), how in any_damage()) {
            let file = encode_file(&config);
            let damaged = damage(&file, &how);
            let payload = damaged.get(HEADER_LEN..).unwrap_or_default();
            let mut reframed = MAGIC.to_vec();
            reframed.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            reframed.extend_from_slice(Sha256::digest(payload).as_slice());
            reframed.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            reframed.extend_from_slice(payload);
            match decode(&reframed) {
                // Whatever decoded is a complete configuration: it encodes to a file that
                // decodes to itself.
                Ok(decoded) => prop_assert_eq!(
                    decode(&encode_file(&decoded)).expect("re-encoded"),
                    decoded
                ),
                Err(error) => prop_assert_eq!(error.reason(), "decode", "{:?}", error),
            }
        }
    }

    /// Truncation at every length, not only the ones proptest happens to pick.
    #[test]
    fn truncation_at_every_length_is_refused() {
        let config = CachedConfig {
            node_id: "node-a".to_owned(),
            types: vec![CachedType {
                type_url: legate_snapshot::type_url::CLUSTER.to_owned(),
                version_info: "v1".to_owned(),
                resources: vec![CachedResource {
                    name: "backend".to_owned(),
                    version: "1".to_owned(),
                    resource: Any {
                        type_url: legate_snapshot::type_url::CLUSTER.to_owned(),
                        value: vec![0x0a, 0x07, b'b', b'a', b'c', b'k', b'e', b'n', b'd'],
                    },
                }],
            }],
            written_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let file = encode_file(&config);
        for len in 0..file.len() {
            match decode(&file[..len]) {
                Err(CacheError::Truncated { actual, .. }) => assert_eq!(actual, len as u64),
                other => panic!("cut at {len} of {}: {other:?}", file.len()),
            }
        }
    }
}
