//! The bootstrap: command-line flags and the optional YAML file, merged into one
//! [`Bootstrap`]. Flags win over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
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

    /// Write the admin server's bound address to this file once it listens (useful with
    /// port 0).
    #[arg(long, value_name = "FILE")]
    pub admin_address_path: Option<PathBuf>,

    /// How long in-flight requests may take to finish on shutdown (overrides
    /// `drain_timeout`; default 10s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// xDS control plane (`http://host:port`); repeat for failover, tried in order.
    /// Overrides `xds.servers`.
    #[arg(long = "xds-server", value_name = "URL")]
    pub xds_servers: Vec<String>,

    /// ADS variant: `sotw` (state of the world) or `delta` (overrides `xds.mode`; default
    /// sotw).
    #[arg(long, value_name = "MODE")]
    pub xds_mode: Option<legate_xds::Mode>,

    /// Directory for the last-known-good xDS cache (overrides `xds.cache_dir`).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// How long to wait for referenced xDS resources, and for a control plane at start
    /// before serving from the cache (overrides `xds.initial_fetch_timeout`; default 15s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub initial_fetch_timeout: Option<Duration>,

    /// Longest wait between reconnection attempts (overrides `xds.backoff_max`; default
    /// 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub xds_backoff_max: Option<Duration>,

    /// Worker threads of the proxy's runtime (default: one per CPU). `--concurrency 1` is
    /// the equivalent of Envoy's `--concurrency 1`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Log filter, in `RUST_LOG` syntax (default: info, or RUST_LOG when set).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The bootstrap file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    #[serde(default)]
    pub node: NodeFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
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
    pub mode: Option<legate_xds::Mode>,
    pub cache_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub initial_fetch_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
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
    pub mode: legate_xds::Mode,
    pub cache_dir: Option<PathBuf>,
    pub initial_fetch_timeout: Duration,
    pub backoff_max: Duration,
}

/// Everything `app::build` needs.
#[derive(Debug)]
pub struct Bootstrap {
    pub node: Node,
    pub admin_address: SocketAddr,
    pub admin_address_path: Option<PathBuf>,
    pub drain_timeout: Duration,
    /// The static resources compiled from the file's mesh.
    pub static_resources: legate_snapshot::Resources,
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
        let (mut file, resources) = match &args.config {
            Some(path) => {
                let source = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| BootstrapError::Read {
                    path: source.clone(),
                    source: e,
                })?;
                let file: BootstrapFile = legate_model::parse_yaml(&text, &source)
                    .map_err(|e| BootstrapError::Config(vec![e]))?;
                let resources = match &file.mesh {
                    Some(mesh) => {
                        legate_model::validate_at(mesh, &text, &source, "mesh")
                            .map_err(BootstrapError::Config)?;
                        legate_model::compile(mesh)
                    }
                    None => legate_snapshot::Resources::default(),
                };
                (file, resources)
            }
            None => (
                BootstrapFile::default(),
                legate_snapshot::Resources::default(),
            ),
        };
        let xds_file = file.xds.take().unwrap_or_default();
        let servers = if args.xds_servers.is_empty() {
            xds_file.servers
        } else {
            args.xds_servers.clone()
        };
        for s in &servers {
            let ok = s
                .parse::<http::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(BootstrapError::Invalid(format!(
                    "xds server '{s}': expected http://host:port"
                )));
            }
        }
        let xds = (!servers.is_empty()).then(|| XdsBootstrap {
            servers,
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
        });
        if args.config.is_none() && xds.is_none() {
            return Err(BootstrapError::Invalid(
                "no configuration: pass --config FILE or --xds-server URL".to_owned(),
            ));
        }
        // The compiled mesh must also pass the same validation xDS resources do.
        legate_snapshot::build("static", &resources)
            .map_err(|e| BootstrapError::Invalid(format!("invalid static resources: {e}")))?;
        let default_admin: SocketAddr = DEFAULT_ADMIN_ADDRESS
            .parse()
            .map_err(|_| BootstrapError::Invalid("bad default admin address".to_owned()))?;
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
            admin_address: args
                .admin_address
                .or(file.admin.address)
                .unwrap_or(default_admin),
            admin_address_path: args.admin_address_path.clone(),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            static_resources: resources,
            xds,
        })
    }
}
