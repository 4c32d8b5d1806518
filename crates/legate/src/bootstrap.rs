//! The bootstrap: command-line flags and the optional YAML file, merged into one
//! [`Bootstrap`]. Flags win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM'd legate keeps accepting while `/ready` answers 503. Envoy's
/// `--drain-time-s` defaults to 600 s, sized for fleets behind slow load balancers; an
/// ambassador's clients are local and notice at their next request.
pub const DEFAULT_DRAIN_TIME: Duration = Duration::from_secs(5);
/// Downstream connections open at once over all listeners.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// legate: an outbound HTTP proxy (ambassador) configured by Envoy's xDS v3 API or by a
/// static mesh file.
#[derive(Debug, Parser)]
#[command(name = "legate", version, about)]
pub struct Args {
    /// Bootstrap file (YAML): node identity, admin address and a static mesh.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration and exit: 0 when valid, 1 with the errors otherwise.
    #[arg(long)]
    pub validate: bool,

    /// Node id (overrides `node.id`).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// Node cluster (overrides `node.cluster`).
    #[arg(long, value_name = "NAME")]
    pub node_cluster: Option<String>,

    /// Admin server address (overrides `admin.address`; default 127.0.0.1:15000).
    #[arg(long, value_name = "ADDR")]
    pub admin_address: Option<SocketAddr>,

    /// Once the admin server listens, write `admin=ADDR` to this file (useful with port 0);
    /// legate-cp's --address-file writes the same format.
    #[arg(long, value_name = "FILE")]
    pub address_file: Option<PathBuf>,

    /// Envoy's flag, kept for tools written for Envoy: the bound admin address alone, as
    /// Envoy writes it. --address-file is the documented form.
    #[arg(long, value_name = "FILE", hide = true)]
    pub admin_address_path: Option<PathBuf>,

    /// How long in-flight requests may take to finish on shutdown (overrides
    /// `drain_timeout`; default 10s).
    #[arg(long, value_name = "DURATION", value_parser = legate_model::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// On SIGTERM, how long to keep accepting connections while `/ready` answers 503,
    /// HTTP/1.1 answers carry `Connection: close` and HTTP/2 connections get a GOAWAY,
    /// before the listeners close and `drain_timeout` starts (overrides `drain_time`;
    /// default 5s; 0 skips it).
    #[arg(long, value_name = "DURATION", value_parser = legate_model::parse_duration)]
    pub drain_time: Option<Duration>,

    /// Downstream connections open at once over all listeners; more are closed as soon as
    /// they are accepted and counted in legate_downstream_connections_refused_total
    /// (overrides `max_connections`; default 10000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// xDS control plane (`http://host:port`, or `https://host:port` for TLS); repeat for
    /// failover, tried in order. Overrides `xds.servers`.
    #[arg(long = "xds-server", value_name = "URL")]
    pub xds_servers: Vec<String>,

    /// Load-report (LRS) server: where legate sends per-cluster load
    /// (`envoy.service.load_stats.v3.LoadReportingService`), with the xDS client's TLS and
    /// node; repeat for failover (overrides `xds.lrs_servers`; default: the xDS servers).
    /// `none` turns load reports off.
    #[arg(long = "lrs-server", value_name = "URL")]
    pub lrs_servers: Vec<String>,

    /// CA bundle (PEM) that https:// control planes' certificates must chain to (overrides
    /// `xds.ca`; default: Mozilla's root CAs).
    #[arg(long, value_name = "FILE")]
    pub xds_ca: Option<PathBuf>,

    /// Client certificate chain (PEM) presented to https:// control planes, for mTLS
    /// (overrides `xds.cert`; needs --xds-key).
    #[arg(long, value_name = "FILE")]
    pub xds_cert: Option<PathBuf>,

    /// Private key (PEM) of --xds-cert (overrides `xds.key`).
    #[arg(long, value_name = "FILE")]
    pub xds_key: Option<PathBuf>,

    /// The name control planes' certificates are checked against and sent as SNI (overrides
    /// `xds.server_name`; default: the host of each server URL).
    #[arg(long, value_name = "NAME")]
    pub xds_server_name: Option<String>,

    /// ADS variant: `sotw` (state of the world) or `delta` (overrides `xds.mode`; default
    /// sotw).
    #[arg(long, value_name = "MODE")]
    pub xds_mode: Option<legate_xds::Mode>,

    /// Directory for the last-known-good xDS cache, served at start when no control plane
    /// can be reached (overrides `xds.cache_dir`).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// How long to wait for referenced xDS resources, and at start for a connected control
    /// plane's first answer before serving from the cache; an unreachable one is not waited
    /// for (overrides `xds.initial_fetch_timeout`; default 15s).
    #[arg(long, value_name = "DURATION", value_parser = legate_model::parse_duration)]
    pub initial_fetch_timeout: Option<Duration>,

    /// Longest wait between reconnection attempts (overrides `xds.backoff_max`; default
    /// 30s).
    #[arg(long, value_name = "DURATION", value_parser = legate_model::parse_duration)]
    pub xds_backoff_max: Option<Duration>,

    /// Largest xDS response accepted from a control plane: bytes, or with KiB/MiB (overrides
    /// `xds.max_message_size`; default 64MiB, which holds 10,000 clusters with room to spare).
    #[arg(long, value_name = "SIZE", value_parser = legate_model::parse_size)]
    pub xds_max_message_size: Option<usize>,

    /// Worker threads of the proxy's runtime (default: one per CPU). `--concurrency 1` is
    /// the equivalent of Envoy's `--concurrency 1`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    #[command(flatten)]
    pub log: legate_telemetry::cli::LogArgs,

    /// Memory for request bodies kept for retries, all requests together (e.g. 256MiB, the
    /// default). A body that does not fit is sent once, without retries.
    #[arg(long, value_name = "SIZE", value_parser = legate_model::parse_size)]
    pub retry_buffer_limit: Option<usize>,

    /// The same, per downstream connection (default 16MiB).
    #[arg(long, value_name = "SIZE", value_parser = legate_model::parse_size)]
    pub retry_buffer_connection_limit: Option<usize>,
}

/// Budgets for request bodies kept in memory for retries, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBuffers {
    /// `--retry-buffer-limit`.
    pub global: u64,
    /// `--retry-buffer-connection-limit`.
    pub connection: u64,
}

impl RetryBuffers {
    fn from_args(args: &Args) -> Self {
        let bytes = |flag: Option<usize>, default: u64| {
            flag.map_or(default, |n| u64::try_from(n).unwrap_or(u64::MAX))
        };
        RetryBuffers {
            global: bytes(
                args.retry_buffer_limit,
                legate_proxy::DEFAULT_RETRY_BUFFER_LIMIT,
            ),
            connection: bytes(
                args.retry_buffer_connection_limit,
                legate_proxy::DEFAULT_CONNECTION_RETRY_BUFFER_LIMIT,
            ),
        }
    }
}

/// The bootstrap file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    #[serde(default)]
    pub node: NodeFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default, with = "legate_model::units::option")]
    pub drain_timeout: Option<Duration>,
    #[serde(default, with = "legate_model::units::option")]
    pub drain_time: Option<Duration>,
    pub max_connections: Option<u64>,
    /// The static mesh, in the authoring format.
    #[serde(default)]
    pub mesh: Option<legate_model::Mesh>,
    /// The control plane, if any.
    #[serde(default)]
    pub xds: Option<XdsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsFile {
    #[serde(default)]
    pub servers: Vec<String>,
    /// Load-report servers; default: `servers`; `[none]`: no load reports.
    #[serde(default)]
    pub lrs_servers: Option<Vec<String>>,
    pub mode: Option<legate_xds::Mode>,
    pub cache_dir: Option<PathBuf>,
    #[serde(default, with = "legate_model::units::option")]
    pub initial_fetch_timeout: Option<Duration>,
    #[serde(default, with = "legate_model::units::option")]
    pub backoff_max: Option<Duration>,
    /// Largest response accepted from a control plane, e.g. `64MiB`.
    #[serde(default, deserialize_with = "size_opt")]
    pub max_message_size: Option<usize>,
    /// CA bundle for https:// servers; relative paths are relative to the bootstrap file.
    pub ca: Option<PathBuf>,
    /// Client certificate chain for mTLS.
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// Verify servers' certificates against this name instead of the URL host.
    pub server_name: Option<String>,
}

/// A size in the bootstrap file: `64MiB`, `512KiB` or a number of bytes.
fn size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(usize),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(s)) => legate_model::parse_size(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub id: Option<String>,
    pub cluster: Option<String>,
    #[serde(default)]
    pub locality: Option<LocalityFile>,
    /// Free-form metadata sent to the control plane.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityFile {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub sub_zone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub address: Option<SocketAddr>,
}

/// The node identity legate presents.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub locality: Option<LocalityFile>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The control plane connection, when one is configured.
#[derive(Clone, Debug)]
pub struct XdsBootstrap {
    pub servers: Vec<String>,
    /// Load-report (LRS) servers, tried in order; empty: no load reports.
    pub lrs_servers: Vec<String>,
    pub mode: legate_xds::Mode,
    pub cache_dir: Option<PathBuf>,
    pub initial_fetch_timeout: Duration,
    pub backoff_max: Duration,
    /// Largest response accepted from a control plane, in bytes.
    pub max_message_size: usize,
    /// How https:// servers are dialled; set when one of the servers is https://.
    pub tls: Option<legate_xds::tls::XdsTls>,
}

/// Everything `app::build` needs.
#[derive(Debug)]
pub struct Bootstrap {
    pub node: Node,
    pub admin_address: SocketAddr,
    /// `--address-file`: `admin=ADDR` once the admin server listens.
    pub address_file: Option<PathBuf>,
    /// `--admin-address-path`: the bare address, as Envoy writes it.
    pub admin_address_path: Option<PathBuf>,
    pub drain_timeout: Duration,
    /// How long the process drain keeps accepting before the listeners close.
    pub drain_time: Duration,
    /// Downstream connections open at once over all listeners.
    pub max_connections: u64,
    /// The static resources compiled from the file's mesh.
    pub static_resources: legate_snapshot::Resources,
    pub retry_buffers: RetryBuffers,
    pub xds: Option<XdsBootstrap>,
}

/// Errors loading the bootstrap; the config ones carry file, line and column.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<legate_model::ConfigError>),
    #[error("{0}")]
    Invalid(String),
}

impl Bootstrap {
    /// Merge flags and file into a bootstrap, validating the static mesh all the way to a
    /// runtime snapshot so `--validate` checks exactly what would run.
    pub fn load(args: &Args) -> Result<Bootstrap, BootstrapError> {
        let (mut file, resources, doc) = match &args.config {
            Some(path) => {
                let source = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| BootstrapError::Read {
                    path: source.clone(),
                    source: e,
                })?;
                let mesh_document = is_mesh_document(&text);
                let file: BootstrapFile = if mesh_document {
                    // A mesh file, as legate-cp reads it: the static mesh of a default
                    // bootstrap, validated and located exactly as legate-cp would.
                    let mesh =
                        legate_model::load(&text, &source).map_err(BootstrapError::Config)?;
                    BootstrapFile {
                        mesh: Some(mesh),
                        ..BootstrapFile::default()
                    }
                } else {
                    legate_model::parse_yaml(&text, &source)
                        .map_err(|e| BootstrapError::Config(vec![e]))?
                };
                if let Some(mesh) = &file.mesh {
                    warn_rollouts_need_legate_cp(mesh, mesh_document);
                }
                let resources = match &file.mesh {
                    // Validated by `load` above, with the mesh's own paths.
                    Some(mesh) if mesh_document => legate_model::compile(mesh),
                    Some(mesh) => {
                        legate_model::validate_at(mesh, &text, &source, "mesh")
                            .map_err(BootstrapError::Config)?;
                        legate_model::compile(mesh)
                    }
                    None => legate_snapshot::Resources::default(),
                };
                let doc = Document {
                    text,
                    source,
                    dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                };
                (file, resources, Some(doc))
            }
            None => (
                BootstrapFile::default(),
                legate_snapshot::Resources::default(),
                None,
            ),
        };
        let mut xds_file = file.xds.take().unwrap_or_default();
        let (servers, servers_from_flags) = if args.xds_servers.is_empty() {
            (std::mem::take(&mut xds_file.servers), false)
        } else {
            (args.xds_servers.clone(), true)
        };
        for (i, s) in servers.iter().enumerate() {
            let setting = if servers_from_flags {
                Setting::Flag("--xds-server")
            } else {
                Setting::File(format!("xds.servers[{i}]"))
            };
            check_server_url(s, &setting, doc.as_ref())?;
        }
        let (lrs_servers, lrs_setting) = match (&args.lrs_servers[..], xds_file.lrs_servers.take())
        {
            ([], None) => (servers.clone(), None),
            ([], Some(file)) => (file, Some(false)),
            (flags, _) => (flags.to_vec(), Some(true)),
        };
        let lrs_servers = if lrs_servers.iter().any(|s| s == "none") {
            Vec::new()
        } else {
            lrs_servers
        };
        if let Some(from_flags) = lrs_setting {
            for (i, s) in lrs_servers.iter().enumerate() {
                let setting = if from_flags {
                    Setting::Flag("--lrs-server")
                } else {
                    Setting::File(format!("xds.lrs_servers[{i}]"))
                };
                if servers.is_empty() {
                    return Err(setting.error(
                        doc.as_ref(),
                        "load reports need a control plane (--xds-server or xds.servers), \
                         whose TLS and node they share"
                            .to_owned(),
                    ));
                }
                check_server_url(s, &setting, doc.as_ref())?;
            }
        }
        let dialled: Vec<String> = servers.iter().chain(&lrs_servers).cloned().collect();
        let tls = xds_tls(args, &mut xds_file, doc.as_ref(), &dialled)?;
        let xds = (!servers.is_empty()).then(|| XdsBootstrap {
            servers,
            lrs_servers,
            mode: args
                .xds_mode
                .or(xds_file.mode)
                .unwrap_or(legate_xds::Mode::Sotw),
            cache_dir: args.cache_dir.clone().or(xds_file.cache_dir),
            initial_fetch_timeout: args
                .initial_fetch_timeout
                .or(xds_file.initial_fetch_timeout)
                .unwrap_or(DEFAULT_INITIAL_FETCH_TIMEOUT),
            backoff_max: args
                .xds_backoff_max
                .or(xds_file.backoff_max)
                .unwrap_or(DEFAULT_BACKOFF_MAX),
            max_message_size: args
                .xds_max_message_size
                .or(xds_file.max_message_size)
                .unwrap_or(legate_xds::DEFAULT_MAX_MESSAGE_SIZE),
            tls,
        });
        if args.config.is_none() && xds.is_none() {
            return Err(BootstrapError::Invalid(
                "no configuration: pass --config FILE or --xds-server URL".to_owned(),
            ));
        }
        // The compiled mesh must also pass the same validation xDS resources do.
        let snapshot = legate_snapshot::build("static", &resources)
            .map_err(|e| BootstrapError::Invalid(format!("invalid static resources: {e}")))?;
        if xds.is_none() && snapshot.listeners.is_empty() {
            return Err(BootstrapError::Invalid(format!(
                "nothing to serve: {} has no listeners (mesh.listeners, or mesh.services with \
                 their outbound listener) and no control plane (xds.servers or --xds-server)",
                doc.as_ref().map_or("the bootstrap", |d| d.source.as_str())
            )));
        }
        let default_admin: SocketAddr = DEFAULT_ADMIN_ADDRESS
            .parse()
            .map_err(|_| BootstrapError::Invalid("bad default admin address".to_owned()))?;
        let (admin_address, admin_setting) = match (args.admin_address, file.admin.address) {
            (Some(a), _) => (a, "--admin-address"),
            (None, Some(a)) => (a, "admin.address"),
            (None, None) => (
                default_admin,
                "the default; change it with --admin-address or admin.address",
            ),
        };
        for l in &snapshot.listeners {
            if !shares_port(l.address, admin_address) {
                continue;
            }
            let field = file
                .mesh
                .as_ref()
                .and_then(|m| {
                    if let Some(i) = m.listeners.iter().position(|x| *x.name == *l.name) {
                        Some(format!("mesh.listeners[{i}].address"))
                    } else {
                        m.proxy
                            .as_ref()
                            .filter(|p| p.listener_name() == &*l.name)
                            .map(|_| "mesh.proxy.listener.address".to_owned())
                    }
                })
                .unwrap_or_else(|| "mesh".to_owned());
            return Err(Setting::File(field).error(
                doc.as_ref(),
                format!(
                    "listener '{}' on {} clashes with the admin address {admin_address} \
                     ({admin_setting}): they cannot share a port",
                    l.name, l.address
                ),
            ));
        }
        Ok(Bootstrap {
            node: Node {
                id: args
                    .node_id
                    .clone()
                    .or(file.node.id)
                    .unwrap_or_else(|| "legate".to_owned()),
                cluster: args
                    .node_cluster
                    .clone()
                    .or(file.node.cluster)
                    .unwrap_or_else(|| "legate".to_owned()),
                locality: file.node.locality,
                metadata: file.node.metadata.unwrap_or_default(),
            },
            admin_address,
            address_file: args.address_file.clone(),
            admin_address_path: args.admin_address_path.clone(),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            drain_time: args
                .drain_time
                .or(file.drain_time)
                .unwrap_or(DEFAULT_DRAIN_TIME),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            static_resources: resources,
            retry_buffers: RetryBuffers::from_args(args),
            xds,
        })
    }
}

/// Whether sockets bound to `a` and `b` would fight over one port: the same port (not 0,
/// which the OS picks) on the same address, or on a wildcard address that covers the other
/// (`0.0.0.0` covers every IPv4 address; `::` every address, IPv4 included, as Linux binds
/// it dual-stack by default).
fn shares_port(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let covers = |wide: std::net::IpAddr, other: std::net::IpAddr| {
        wide.is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

/// The top-level keys of a bootstrap file ([`BootstrapFile`]'s fields).
const BOOTSTRAP_KEYS: [&str; 7] = [
    "node",
    "admin",
    "drain_timeout",
    "drain_time",
    "max_connections",
    "mesh",
    "xds",
];

/// Whether `--config` names a mesh file (the format legate-cp reads: `listeners`,
/// `services`, `proxy`, ... at the top level) rather than a bootstrap file (the mesh under
/// `mesh:`): a mapping none of whose keys is a bootstrap key. A document that mixes them is
/// read as a bootstrap file, whose error then names the mesh key out of place.
/// A `rollout:` block is run by legate-cp's rollout controller; a proxy reading the mesh
/// itself serves the weights as written and says so, rather than ignoring the block silently.
fn warn_rollouts_need_legate_cp(mesh: &legate_model::Mesh, mesh_document: bool) {
    let prefix = if mesh_document { "" } else { "mesh." };
    for (i, s) in mesh.services.iter().enumerate() {
        if s.rollout.is_some() {
            tracing::warn!(
                field = %format!("{prefix}services[{i}].rollout"),
                service = %s.name,
                "a rollout is run by legate-cp; this proxy serves the service's weights as written"
            );
        }
    }
}

fn is_mesh_document(text: &str) -> bool {
    match serde_yaml_ng::from_str::<serde_yaml_ng::Mapping>(text) {
        Ok(map) => {
            !map.is_empty()
                && map
                    .keys()
                    .all(|k| k.as_str().is_none_or(|k| !BOOTSTRAP_KEYS.contains(&k)))
        }
        Err(_) => false,
    }
}

/// The bootstrap file's text, for locating errors in it, and its directory, for resolving
/// relative paths.
struct Document {
    text: String,
    source: String,
    dir: PathBuf,
}

/// Where a setting was given, so its errors can point there.
enum Setting {
    Flag(&'static str),
    /// A field path in the bootstrap file.
    File(String),
}

impl Setting {
    fn error(&self, doc: Option<&Document>, message: String) -> BootstrapError {
        match (self, doc) {
            (Setting::File(path), Some(doc)) => {
                BootstrapError::Config(vec![legate_model::ConfigError::locate(
                    &doc.text,
                    &doc.source,
                    path.as_str(),
                    message,
                )])
            }
            (Setting::File(path), None) => BootstrapError::Invalid(format!("{path}: {message}")),
            (Setting::Flag(flag), _) => BootstrapError::Invalid(format!("{flag}: {message}")),
        }
    }
}

/// A path setting: the flag when given, else the file's value (relative to the file).
fn path_setting(
    flag: &Option<PathBuf>,
    flag_name: &'static str,
    file: Option<PathBuf>,
    field: &str,
    doc: Option<&Document>,
) -> Option<(PathBuf, Setting)> {
    match (flag, file) {
        (Some(path), _) => Some((path.clone(), Setting::Flag(flag_name))),
        (None, Some(path)) => {
            let path = match doc {
                Some(doc) if path.is_relative() => doc.dir.join(path),
                _ => path,
            };
            Some((path, Setting::File(format!("xds.{field}"))))
        }
        (None, None) => None,
    }
}

/// The TLS settings for https:// control planes, each file read and checked now so
/// A control plane URL: `http://host:port` or `https://host:port`.
fn check_server_url(
    s: &str,
    setting: &Setting,
    doc: Option<&Document>,
) -> Result<(), BootstrapError> {
    let ok = s.parse::<http::Uri>().ok().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
    });
    if ok {
        return Ok(());
    }
    Err(setting.error(
        doc,
        format!("'{s}' is not a control plane URL: expected http://host:port or https://host:port"),
    ))
}

/// `--validate` and start-up report a bad one with its flag or its line in the file.
fn xds_tls(
    args: &Args,
    file: &mut XdsFile,
    doc: Option<&Document>,
    servers: &[String],
) -> Result<Option<legate_xds::tls::XdsTls>, BootstrapError> {
    let ca = path_setting(&args.xds_ca, "--xds-ca", file.ca.take(), "ca", doc);
    let cert = path_setting(&args.xds_cert, "--xds-cert", file.cert.take(), "cert", doc);
    let key = path_setting(&args.xds_key, "--xds-key", file.key.take(), "key", doc);
    let server_name = match (&args.xds_server_name, file.server_name.take()) {
        (Some(name), _) => Some((name.clone(), Setting::Flag("--xds-server-name"))),
        (None, Some(name)) => Some((name, Setting::File("xds.server_name".to_owned()))),
        (None, None) => None,
    };
    let any_https = servers.iter().any(|s| s.starts_with("https://"));
    if !any_https {
        let given = [&ca, &cert, &key]
            .into_iter()
            .flatten()
            .map(|(_, setting)| setting)
            .chain(server_name.as_ref().map(|(_, setting)| setting))
            .next();
        return match given {
            Some(setting) => Err(setting.error(
                doc,
                "is set, but no xds server uses https://, so it would not be used".to_owned(),
            )),
            None => Ok(None),
        };
    }
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some((_, setting)), None) => {
            return Err(setting.error(
                doc,
                "a client certificate needs its private key (--xds-key or xds.key)".to_owned(),
            ));
        }
        (None, Some((_, setting))) => {
            return Err(setting.error(
                doc,
                "a private key needs its certificate (--xds-cert or xds.cert)".to_owned(),
            ));
        }
        (None, None) => None,
    };
    // Each file on its own first, so an error names the setting it came from.
    if let Some((path, setting)) = &ca {
        legate_tls::pem::read_file(path, "CA bundle")
            .and_then(|pem| legate_tls::pem::root_store(&pem, "CA bundle"))
            .map_err(|e| setting.error(doc, e.to_string()))?;
    }
    if let Some(((cert, cert_setting), (key, key_setting))) = &identity {
        legate_tls::pem::read_file(cert, "certificate")
            .and_then(|pem| legate_tls::pem::certs(&pem, "certificate"))
            .map_err(|e| cert_setting.error(doc, e.to_string()))?;
        legate_tls::pem::read_file(key, "private key")
            .and_then(|pem| legate_tls::pem::private_key(&pem, "private key").map(drop))
            .map_err(|e| key_setting.error(doc, e.to_string()))?;
    }
    if let Some((name, setting)) = &server_name
        && legate_tls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(setting.error(doc, format!("'{name}' is not a DNS name or IP address")));
    }
    let files = legate_tls::files::ClientFiles {
        ca: ca.as_ref().map(|(path, _)| path.clone()),
        identity: identity
            .as_ref()
            .map(|((cert, _), (key, _))| (cert.clone(), key.clone())),
        alpn: vec![b"h2".to_vec()],
    };
    // Then together: a key that does not match its certificate.
    if let Err(e) = files.load("client certificate") {
        let blame = identity
            .as_ref()
            .map(|(_, (_, key_setting))| key_setting)
            .or(ca.as_ref().map(|(_, setting)| setting));
        return Err(match blame {
            Some(setting) => setting.error(doc, e.to_string()),
            None => BootstrapError::Invalid(format!("xds tls: {e}")),
        });
    }
    Ok(Some(legate_xds::tls::XdsTls {
        files,
        server_name: server_name.map(|(name, _)| name),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_tls::issue::{Authority, LeafSpec};

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path = std::env::temp_dir()
                .join(format!("legate-bootstrap-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&path).expect("dir");
            Dir(path)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn args(config: Option<&Path>, extra: &[&str]) -> Args {
        let mut argv = vec!["legate".to_owned()];
        if let Some(path) = config {
            argv.push("--config".to_owned());
            argv.push(path.display().to_string());
        }
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        Args::parse_from(argv)
    }

    fn error(args: &Args) -> String {
        match Bootstrap::load(args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    }

    /// A CA and a client certificate for node `n1`, written to `dir`.
    fn certs(dir: &Dir) -> (PathBuf, PathBuf, PathBuf) {
        let ca = Authority::new("ca").expect("ca");
        let leaf = ca
            .issue(
                &LeafSpec::new("n1")
                    .uri("spiffe://legate.local/node/n1")
                    .client_only(),
            )
            .expect("leaf");
        (
            dir.write("ca.pem", ca.cert_pem()),
            dir.write("n1.pem", &leaf.cert_pem),
            dir.write("n1.key", &leaf.key_pem),
        )
    }

    #[test]
    fn shares_port_covers_wildcards_of_the_right_family() {
        let check = |a: &str, b: &str, expected: bool| {
            let (a, b): (SocketAddr, SocketAddr) = (a.parse().expect("a"), b.parse().expect("b"));
            assert_eq!(shares_port(a, b), expected, "{a} vs {b}");
            assert_eq!(shares_port(b, a), expected, "{b} vs {a}");
        };
        check("127.0.0.1:15000", "127.0.0.1:15000", true);
        check("0.0.0.0:15000", "127.0.0.1:15000", true);
        check("[::]:15000", "127.0.0.1:15000", true);
        check("[::]:15000", "[::1]:15000", true);
        check("0.0.0.0:15000", "[::1]:15000", false);
        check("127.0.0.2:15000", "127.0.0.1:15000", false);
        check("127.0.0.1:15001", "127.0.0.1:15000", false);
        check("127.0.0.1:0", "127.0.0.1:0", false);
    }

    #[test]
    fn tls_from_the_file_resolves_relative_paths() {
        let dir = Dir::new("relative");
        certs(&dir);
        let config = dir.write(
            "legate.yaml",
            "xds:\n  servers: [\"https://localhost:15010\"]\n  ca: ca.pem\n  cert: n1.pem\n  key: n1.key\n  server_name: cp.internal\n",
        );
        let bootstrap = Bootstrap::load(&args(Some(&config), &[])).expect("valid");
        let tls = bootstrap.xds.and_then(|x| x.tls).expect("tls settings");
        assert_eq!(tls.files.ca, Some(dir.0.join("ca.pem")));
        assert_eq!(
            tls.files.identity,
            Some((dir.0.join("n1.pem"), dir.0.join("n1.key")))
        );
        assert_eq!(tls.server_name.as_deref(), Some("cp.internal"));
    }

    #[test]
    fn retry_buffer_budgets_default_and_parse_sizes() {
        let xds = ["--xds-server", "http://127.0.0.1:1"];
        let b = Bootstrap::load(&args(None, &xds)).expect("valid");
        assert_eq!(
            b.retry_buffers,
            RetryBuffers {
                global: 256 << 20,
                connection: 16 << 20
            }
        );
        let mut set = xds.to_vec();
        set.extend([
            "--retry-buffer-limit",
            "1MiB",
            "--retry-buffer-connection-limit",
            "64KiB",
        ]);
        let b = Bootstrap::load(&args(None, &set)).expect("valid");
        assert_eq!(
            b.retry_buffers,
            RetryBuffers {
                global: 1 << 20,
                connection: 64 << 10
            }
        );
        let bad = Args::try_parse_from(["legate", "--retry-buffer-limit", "lots"]);
        assert!(bad.is_err());
    }

    #[test]
    fn flags_win_and_name_themselves_in_errors() {
        let dir = Dir::new("flags");
        let (ca, cert, key) = certs(&dir);
        let (ca, cert, key) = (
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        );
        let ok = args(
            None,
            &[
                "--xds-server",
                "https://127.0.0.1:1",
                "--xds-ca",
                &ca,
                "--xds-cert",
                &cert,
                "--xds-key",
                &key,
            ],
        );
        let tls = Bootstrap::load(&ok)
            .expect("valid")
            .xds
            .and_then(|x| x.tls)
            .expect("tls");
        assert!(tls.files.identity.is_some());

        let message = error(&args(
            None,
            &["--xds-server", "https://127.0.0.1:1", "--xds-cert", &cert],
        ));
        assert!(
            message.starts_with("--xds-cert: a client certificate needs its private key"),
            "{message}"
        );
        let message = error(&args(
            None,
            &[
                "--xds-server",
                "https://127.0.0.1:1",
                "--xds-ca",
                &cert,
                "--xds-cert",
                &cert,
                "--xds-key",
                &ca,
            ],
        ));
        assert!(message.starts_with("--xds-key: "), "{message}");
        assert!(message.contains("no PEM private key"), "{message}");
        let message = error(&args(
            None,
            &["--xds-server", "http://127.0.0.1:1", "--xds-ca", &ca],
        ));
        assert!(
            message.starts_with("--xds-ca: is set, but no xds server uses https://"),
            "{message}"
        );
        let message = error(&args(None, &["--xds-server", "ftp://127.0.0.1:1"]));
        assert!(
            message.starts_with("--xds-server: 'ftp://127.0.0.1:1' is not a control plane URL"),
            "{message}"
        );
    }

    #[test]
    fn bootstrap_keys_are_the_file_fields() {
        // serde lists the fields it knows when it meets an unknown one.
        let e = legate_model::parse_yaml::<BootstrapFile>("x: 1\n", "b.yaml").expect_err("x");
        let listed: Vec<String> = e
            .message
            .split('`')
            .skip(3)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert_eq!(listed, BOOTSTRAP_KEYS, "{e}");
        assert!(is_mesh_document("proxy: {}\nservices: []\n"));
        assert!(!is_mesh_document("node: {id: a}\nservices: []\n"));
        assert!(!is_mesh_document("{}"));
        assert!(!is_mesh_document(""));
    }

    #[test]
    fn file_errors_carry_line_and_column() {
        let dir = Dir::new("lines");
        let (_, cert, _) = certs(&dir);
        let config = dir.write(
            "legate.yaml",
            &format!(
                "node: {{id: n1}}\nxds:\n  servers: [\"https://localhost:1\"]\n  cert: {}\n  key: missing.key\n",
                cert.display()
            ),
        );
        let message = error(&args(Some(&config), &[]));
        let want = format!(
            "{}:5:8: xds.key: private key: cannot read '",
            config.display()
        );
        assert!(message.starts_with(&want), "{message}");
        // A flag replaces the file's setting, and then the file's broken value is not read.
        let other = Dir::new("lines-other");
        let (ca, _, key) = certs(&other);
        let fixed = args(
            Some(&config),
            &[
                "--xds-key",
                &key.display().to_string(),
                "--xds-ca",
                &ca.display().to_string(),
            ],
        );
        let message = error(&fixed);
        // The key belongs to a freshly issued certificate, not to `cert`: refused together.
        assert!(
            message.starts_with("--xds-key: client certificate: "),
            "{message}"
        );
    }
}
