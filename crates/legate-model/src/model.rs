//! The mesh document as written: plain serde types, every struct `deny_unknown_fields`.
//!
//! Choices that are "exactly one of" (route action, path match, string match) are separate
//! optional fields rather than serde enums: serde would answer a mistake with a generic
//! "data did not match any variant", while [`Mesh::check`] names the conflicting fields and
//! [`validate`](crate::validate) points at their line. Defaults the compiler applies are
//! `None` here, so a mesh serializes back to what its author wrote.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod policies;
pub use policies::*;
mod tls;
pub use tls::*;
mod telemetry;
pub use telemetry::*;

/// Upstream connect timeout when a cluster does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream connection idle timeout when a cluster does not set one (Envoy's default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// STRICT_DNS re-resolution interval when a cluster does not set one (Envoy's default).
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);
/// Redirect status when a redirect does not set one (Envoy's default).
pub const DEFAULT_REDIRECT_STATUS: u32 = 301;

/// A whole mesh: what one proxy (or every proxy of a control plane) serves.
///
/// Two layers, which may be mixed in one document: the low-level `listeners`,
/// `route_configs` and `clusters` (Envoy's resources, nearly one to one), and the `services`
/// layer with its `proxy` section, which [`compile`](crate::compile) expands into the same
/// resources (see [`Mesh::expand`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_configs: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
    /// Services reached through the proxies' outbound listener (and by gRPC clients as
    /// `xds:///<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// The outbound listener for `services`; its defaults apply when services exist and this
    /// is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    /// Certificate files that `tls` settings name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
    /// Traces and access logs for every listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
}

/// A TCP listener serving HTTP with the routes of one route config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners; also the stats prefix.
    pub name: String,
    /// `ip:port`; port 0 asks the OS for one.
    pub address: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: ListenerProtocol,
    /// Name of an entry in [`Mesh::route_configs`].
    pub route_config: String,
    /// Let `Upgrade: websocket` requests through.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub websocket: bool,
    /// Envoy's default (5 minutes) when unset; `0s` disables.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_idle_timeout: Option<Duration>,
    /// How long a request's headers may take from their first byte (HCM
    /// `request_headers_timeout`): 10 s when unset, `0s` disables it.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_headers_timeout: Option<Duration>,
    /// Connections the listener holds at once; more are closed as soon as they are
    /// accepted. Compiled to an `envoy.filters.network.connection_limit` filter. No limit
    /// of its own when unset (the proxy's `--max-connections` still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
}

/// Downstream HTTP versions a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the connection preface.
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique among route configs.
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Unique within its route config.
    pub name: String,
    /// Host names this virtual host answers: exact, `*.suffix`, `prefix.*` or `*`. Each
    /// domain may appear once per route config.
    pub domains: Vec<String>,
    /// Headers added to every request forwarded through this virtual host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderToAdd>,
    /// Retries of the routes that forward without `retries` of their own (a route's replaces
    /// these whole, as in Envoy; only `buffer_limit` is inherited by such a route when it
    /// does not set one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A match and exactly one action: `forward`, `direct_response` or `redirect`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matches every path when left out.
    #[serde(rename = "match", default, skip_serializing_if = "is_default")]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Headers added to requests this route forwards, after the virtual host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderToAdd>,
    /// A token bucket of this route's own on each proxy (Envoy's local rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Delays and aborts injected on purpose (Envoy's fault filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// A credential added to every request of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

/// At most one of `prefix`, `path`, `regex`, `separated_prefix`; none means `prefix: /`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The exact path, without the query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A regular expression that must match the whole path (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The prefix, then the end of the path or a `/`: `/api` matches `/api` and `/api/x`,
    /// not `/apix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separated_prefix: Option<String>,
    /// Envoy's default (true) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    /// All must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// All must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
}

// The rule fields are repeated in both matchers rather than shared through
// `#[serde(flatten)]`: flatten buffers the mapping, which loses `deny_unknown_fields` and the
// position of errors inside it.

/// A request header rule: `name` and exactly one of `exact`, `prefix`, `suffix`, `contains`,
/// `regex`, `present`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// A header name, or one of the pseudo-headers `:authority`, `:method`, `:path`,
    /// `:scheme`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Must match the whole value (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: present with any value; `false`: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Match when the rule does not.
    #[serde(default, skip_serializing_if = "is_default")]
    pub invert: bool,
}

/// A query parameter rule: `name` and exactly one of `exact`, `prefix`, `suffix`,
/// `contains`, `regex`, `present`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Must match the whole value (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: present with any value; `false`: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Send the request upstream, to `cluster` or split over `weighted`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted: Vec<WeightedTarget>,
    /// Replaces the matched prefix (or the whole path of a `path` match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Host/:authority sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Send the chosen endpoint's host name (DNS clusters) or address as Host.
    #[serde(default, skip_serializing_if = "is_default")]
    pub auto_host_rewrite: bool,
    /// Whole-request timeout; Envoy's default (15 s) when unset, `0s` disables it.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Longest silence on the request's stream; the listener's `stream_idle_timeout` when
    /// unset, `0s` disables it.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Honour a gRPC client's `grpc-timeout` as the request's deadline, capped at this
    /// (`0s`: no cap); the route's `timeout` still applies when shorter. Unset: the header is
    /// ignored, as in Envoy. Compiles to `max_stream_duration.grpc_timeout_header_max`.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_max: Option<Duration>,
    /// No retries when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// What requests are hashed on, for `ring_hash` and `maglev` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub cluster: String,
    /// Relative to the sum of the list; zero takes no traffic, but not all may be zero.
    #[serde(deserialize_with = "crate::units::weight")]
    pub weight: u32,
}

/// Answer locally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// 200 to 599.
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Answer with a redirect to the same URL with the given parts replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Replaces the whole path; not with `prefix_rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replaces the matched prefix; not with `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub strip_query: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
}

/// A header added to forwarded requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderToAdd {
    pub name: String,
    pub value: String,
    /// `true` (Envoy's default): add a value beside existing ones; `false`: replace them.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub append: bool,
}

/// A named set of upstream endpoints and how to connect to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique among clusters.
    pub name: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub discovery: Discovery,
    #[serde(default, skip_serializing_if = "is_default")]
    pub lb_policy: LbPolicy,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: UpstreamProtocol,
    /// [`DEFAULT_CONNECT_TIMEOUT`] when unset.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Upstream connection idle timeout; [`DEFAULT_IDLE_TIMEOUT`] when unset, `0s` disables.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Requests per upstream connection before it is closed; unset or 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// `strict_dns` only; [`DEFAULT_DNS_REFRESH_RATE`] when unset.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_refresh_rate: Option<Duration>,
    /// Limits on connections and requests open at once; Envoy's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Passive ejection of failing hosts; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active probing of every host; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Below this percent of healthy hosts, balance over all of them (Envoy's
    /// `healthy_panic_threshold`, default 50); 0 to 100, 0 disables panic mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<f64>,
    /// The classic closed/open/half-open breaker; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// TLS to the endpoints; plaintext when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// Where a cluster's endpoints come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Fixed `ip:port` endpoints, served to proxies over EDS.
    #[default]
    Static,
    /// `host:port` endpoints, each name re-resolved periodically; every address becomes a
    /// host.
    StrictDns,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// The less loaded of two random endpoints.
    LeastRequest,
    Random,
    /// Consistent hashing on a ring (Envoy's RING_HASH, default sizes): requests with the
    /// same key (the route's or service's `hash`) reach the same endpoint, and adding or
    /// removing an endpoint moves about 1/N of the keys.
    RingHash,
    /// Consistent hashing with a Maglev table (Envoy's MAGLEV, 65537 entries).
    Maglev,
}

impl LbPolicy {
    /// Whether requests are placed by their `hash`.
    pub fn is_hashing(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

/// The HTTP version spoken to a cluster's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge.
    Http2,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port` for `static` clusters, `host:port` for `strict_dns`.
    pub address: String,
    /// At least 1.
    #[serde(
        default = "one",
        deserialize_with = "crate::units::weight",
        skip_serializing_if = "is_one"
    )]
    pub weight: u32,
}

/// Name of the outbound listener when `proxy.listener.name` is not set.
pub const DEFAULT_PROXY_LISTENER: &str = "outbound";
/// Address of the outbound listener when `proxy.listener.address` is not set.
pub const DEFAULT_PROXY_ADDRESS: &str = "127.0.0.1:15001";
/// Name of the services' route config when `proxy.route_config` is not set.
pub const DEFAULT_PROXY_ROUTE_CONFIG: &str = "outbound";
/// What a service's route prefix is replaced with when `route.rewrite` is not set.
pub const DEFAULT_SERVICE_REWRITE: &str = "/";

/// An upstream service: one or more versions of the same backend, the route clients reach it
/// by, and the policies pushed for it.
///
/// Each version becomes a cluster named `<service>-<version>`; a service written with
/// `endpoints` instead of `versions` becomes one cluster named `<service>`. The cluster
/// settings (`protocol` to `dns_refresh_rate`) mean what they mean on a [`Cluster`] and apply
/// to every version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique among services; lowercase letters, digits and `-` (a DNS label), since gRPC
    /// clients dial it as `xds:///<name>`.
    pub name: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: UpstreamProtocol,
    #[serde(default, skip_serializing_if = "is_default")]
    pub lb_policy: LbPolicy,
    /// [`DEFAULT_CONNECT_TIMEOUT`] when unset.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// [`DEFAULT_IDLE_TIMEOUT`] when unset, `0s` disables.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Unset or 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub discovery: Discovery,
    /// `strict_dns` only; [`DEFAULT_DNS_REFRESH_RATE`] when unset.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_refresh_rate: Option<Duration>,
    /// The endpoints of a single-version service; not with `versions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
    /// Versions sharing the traffic by weight; not with `endpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<Version>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub route: ServiceRoute,
    #[serde(default, skip_serializing_if = "is_default")]
    pub policies: Policies,
    /// TLS to every version's endpoints, as on a [`Cluster`]; plaintext when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// A canary rollout legate-cp runs when this block appears, and not again once that
    /// same block's rollout has finished (docs/canary.md). Compiles to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ServiceRollout>,
}

/// A service's `rollout:` block: the values `legatectl canary start` takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRollout {
    /// The new version.
    pub to: String,
    /// The version it replaces; the one with the highest weight when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Percent of traffic to `to` at each step, ascending, the last 100.
    pub steps: Vec<u32>,
    /// How long each step is judged (required).
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// `to`'s error rate above which a step fails: `1%`.
    pub max_error_rate: String,
    /// `to`'s p99 latency above which a step fails; latency is not judged when unset.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_p99: Option<Duration>,
    /// Completed requests to `to` a step needs to pass or fail.
    pub min_requests: u64,
}

/// One version of a service, with its share of the traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Unique within the service; a DNS label like the service name.
    pub name: String,
    /// Relative to the sum over the service's versions; 0 takes no traffic (but keeps its
    /// cluster), not all may be 0.
    #[serde(deserialize_with = "crate::units::weight")]
    pub weight: u32,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// How clients reach a service through the outbound listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    /// Path prefix; `/<service>/` when unset. Unique among services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Replaces the prefix before the request goes upstream; [`DEFAULT_SERVICE_REWRITE`] when
    /// unset. Writing the prefix itself keeps the path as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Whole-request timeout; Envoy's default (15 s) when unset, `0s` disables it. The same
    /// as `policies.timeout` (kept for meshes written before it); set one of the two.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Requests matching a rule go to its version whatever the weights; tried in order,
    /// before the weighted split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<CanaryRule>,
}

/// Send requests whose headers all match to one version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRule {
    /// At least one; the same rules as a route's `match.headers`.
    pub headers: Vec<HeaderMatch>,
    /// One of the service's `versions`.
    pub version: String,
}

/// Per-service policies, pushed by the control plane with the routes and clusters.
///
/// `request_headers_to_add`, the timeouts and `retries` apply to every route of the service
/// (its canary rules too); the others to every cluster it compiles to (each version), and
/// mean what they mean on a [`Cluster`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Added to every request sent to the service (through its canary rules too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderToAdd>,
    /// Whole-request timeout, retries included; Envoy's default (15 s) when unset, `0s`
    /// disables it. Not with `route.timeout`, which says the same.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Longest silence on a request's stream; the listener's `stream_idle_timeout` when
    /// unset, `0s` disables it.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Honour a gRPC client's `grpc-timeout` as the request's deadline, capped at this
    /// (`0s`: no cap); the route's `timeout` still applies when shorter. Unset: the header is
    /// ignored, as in Envoy. Compiles to `max_stream_duration.grpc_timeout_header_max`.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_timeout_max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Percent, as on a [`Cluster`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// On every route of the service (each canary rule's route has a bucket of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// On every route of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// What requests are hashed on; needs `lb_policy: ring_hash` or `maglev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
    /// On every route of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

/// The outbound listener every proxy node gets, serving the services' routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    #[serde(default, skip_serializing_if = "is_default")]
    pub listener: ProxyListener,
    /// Name of the generated route config; [`DEFAULT_PROXY_ROUTE_CONFIG`] when unset. No
    /// entry of `route_configs` may have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<String>,
}

impl Proxy {
    /// The listener's name, default applied.
    pub fn listener_name(&self) -> &str {
        self.listener
            .name
            .as_deref()
            .unwrap_or(DEFAULT_PROXY_LISTENER)
    }

    /// The listener's address, default applied.
    pub fn address(&self) -> &str {
        self.listener
            .address
            .as_deref()
            .unwrap_or(DEFAULT_PROXY_ADDRESS)
    }

    /// The route config's name, default applied.
    pub fn route_config_name(&self) -> &str {
        self.route_config
            .as_deref()
            .unwrap_or(DEFAULT_PROXY_ROUTE_CONFIG)
    }
}

/// The outbound [`Listener`], its name, address and route config defaulted. When `listeners`
/// already has one of that name, that one is used as written and this is ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyListener {
    /// [`DEFAULT_PROXY_LISTENER`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ip:port`; [`DEFAULT_PROXY_ADDRESS`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: ListenerProtocol,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub websocket: bool,
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_idle_timeout: Option<Duration>,
    /// How long a request's headers may take from their first byte (HCM
    /// `request_headers_timeout`): 10 s when unset, `0s` disables it.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_headers_timeout: Option<Duration>,
    /// Connections the listener holds at once; more are closed as soon as they are
    /// accepted. Compiled to an `envoy.filters.network.connection_limit` filter. No limit
    /// of its own when unset (the proxy's `--max-connections` still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
}

impl Default for ProxyListener {
    fn default() -> Self {
        ProxyListener {
            name: None,
            address: None,
            protocol: ListenerProtocol::default(),
            websocket: true,
            stream_idle_timeout: None,
            request_headers_timeout: None,
            max_connections: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}
