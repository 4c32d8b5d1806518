//! Envoy v3 resources → legate's validated, immutable runtime snapshot.
//!
//! This is the only door from the wire format into the proxy. Every field legate honours
//! is checked once here; every field that would change behaviour but that legate does not
//! implement is refused with an error naming the resource and the field path, so a control
//! plane written for Envoy never gets silently different behaviour. The crate does no I/O
//! and has no async: it is cheap to unit-test and to fuzz.
//!
//! Entry point: [`build`] takes a full [`Resources`] set and returns a [`Snapshot`] or an
//! [`InvalidSnapshot`] listing every problem. Route matching on the validated model lives in
//! [`router`], so the request path never touches protos.

mod types;
pub use types::*;

pub mod filter;

mod tls;
pub use tls::*;

pub mod access_log;
pub use access_log::AccessLog;

mod backoff;

mod error;
pub use error::{InvalidSnapshot, ResourceError};

mod kind;
pub use kind::ResourceKind;

mod validate;
pub use validate::{DEFAULT_ROUTE_TIMEOUT, MAX_RETRY_BUFFER_LIMIT, Resources, build};

pub mod refs;
pub mod router;

/// Type URLs of the resources legate consumes and of the typed configs inside them. The one
/// table of them: [`ResourceKind::type_url`] and [`ResourceKind::from_type_url`] map the five
/// resource types to and from these.
pub mod type_url {
    /// The `discovery.v3.Resource` envelope a control plane may wrap a resource in.
    pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE_CONFIGURATION: &str =
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const CLUSTER_LOAD_ASSIGNMENT: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    pub const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    pub const CONNECTION_LIMIT: &str =
        "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";
    /// The one HCM tracing provider legate implements (`envoy.tracers.opentelemetry`).
    pub const OPENTELEMETRY_CONFIG: &str =
        "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    pub const LOCAL_RATE_LIMIT: &str =
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
    pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
    pub const CREDENTIAL_INJECTOR: &str = "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector";
    pub const GENERIC_CREDENTIAL: &str =
        "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic";
    pub const OAUTH2_CREDENTIAL: &str =
        "type.googleapis.com/envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2";
    /// The wrapper a `typed_per_filter_config` entry may use to disable or enable a filter.
    pub const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
    pub const UPSTREAM_TLS_CONTEXT: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
    pub const DOWNSTREAM_TLS_CONTEXT: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
    pub const HTTP_PROTOCOL_OPTIONS: &str =
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    pub const FILE_ACCESS_LOG: &str =
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
}
