//! legate's xDS v3 client: ADS over gRPC, state-of-the-world or delta, with Envoy's ACK and
//! NACK rules, subscriptions that follow references, resource warming, reconnect with
//! capped exponential backoff and failover, and a last-known-good disk cache for cold
//! starts while the control plane is away: served at once when every control plane fails
//! before answering, after the initial fetch timeout when one is connected but silent, and
//! replaced whole by the control plane's configuration when it answers.
//!
//! The client owns the resource state; every accepted change is assembled with the static
//! resources into a complete set, validated by `legate-snapshot` and handed to a
//! [`SnapshotSink`] (the data plane) as one new snapshot. Nothing here is on the request path.

pub mod cache;
mod client;
pub mod error;
pub mod lrs;
pub mod state;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use client::{ActiveResources, LastError, XdsHandle, XdsStatus, start};
use envoy_types::pb::envoy::config::core::v3::Node;
pub use error::ApplyError;
use legate_snapshot::{Resources, Snapshot};

/// Which ADS variant to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `StreamAggregatedResources`.
    Sotw,
    /// `DeltaAggregatedResources`.
    Delta,
}

/// A mode that is neither `sotw` nor `delta`.
#[derive(Debug, thiserror::Error)]
#[error("unknown xDS mode '{0}', expected sotw or delta")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "sotw" => Ok(Mode::Sotw),
            "delta" => Ok(Mode::Delta),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

/// The default of [`XdsOptions::max_message_size`]: 64 MiB. A state-of-the-world CDS response
/// of 10,000 clusters as legate-cp compiles them (EDS, a circuit breaker and a timeout each)
/// is 2.4 MB, about 245 bytes a cluster; this leaves room for clusters twenty-five times that
/// size (TLS, health checks, outlier detection) where gRPC's 4 MiB default would send such a
/// fleet's proxies into a reconnect loop.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// How the client runs.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// Control plane URLs (`http://host:port` or `https://host:port`), tried in order.
    pub servers: Vec<String>,
    /// How `https://` servers are dialled (required when there is one).
    pub tls: Option<tls::TlsConnector>,
    pub mode: Mode,
    /// The node identity sent on every stream.
    pub node: Node,
    /// How long a referenced resource may take to arrive before the proxy serves without it
    /// (Envoy's `initial_fetch_timeout`), and how long a cold start waits for a connected
    /// control plane's first answer before serving from the cache. When every server fails
    /// before answering, the cache serves without waiting.
    pub initial_fetch_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Largest response accepted from a control plane, in bytes (gRPC's decode limit). A
    /// larger response ends the stream; the reason, naming this limit, shows in `/ready` and
    /// `/config_dump`.
    pub max_message_size: usize,
    /// HTTP/2 keepalive ping interval on the control plane connection.
    pub keepalive_interval: Duration,
    pub cache_dir: Option<PathBuf>,
    /// Resources from the bootstrap, always present beside the dynamic ones.
    pub static_resources: Resources,
}

/// Where snapshots go: the data plane.
pub trait SnapshotSink: Send + Sync + 'static {
    /// Make `snapshot` live, or say why not (the update is then NACKed).
    fn apply(
        &self,
        snapshot: Arc<Snapshot>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApplyError>> + Send + '_>>;
}
