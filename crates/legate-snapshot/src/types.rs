//! The validated runtime model. Plain immutable data: every type is `Clone + Debug + Eq`,
//! shared pieces sit behind `Arc`, and nothing here parses protos or does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

/// Everything the proxy executes, swapped as one unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// A version string for the whole set (xDS versions joined, or a content hash).
    pub version: String,
    /// Listeners sorted by name.
    pub listeners: Vec<Arc<Listener>>,
    /// Route configurations by name.
    pub route_configs: BTreeMap<Arc<str>, Arc<RouteConfig>>,
    /// Clusters by name.
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
}

impl Snapshot {
    /// An empty snapshot: nothing is listened on and nothing routes.
    pub fn empty() -> Self {
        Snapshot {
            version: String::new(),
            listeners: Vec::new(),
            route_configs: BTreeMap::new(),
            clusters: BTreeMap::new(),
        }
    }

    /// The route configuration a listener serves.
    pub fn route_config_for<'a>(&'a self, listener: &'a Listener) -> Option<&'a Arc<RouteConfig>> {
        match &listener.routes {
            RouteSource::Inline(rc) => Some(rc),
            RouteSource::Rds(name) => self.route_configs.get(name),
        }
    }
}

/// A TCP listener running an HTTP connection manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub stat_prefix: Arc<str>,
    pub codec: Codec,
    pub routes: RouteSource,
    /// From HCM `strip_any_host_port`: drop `:port` from Host before matching domains.
    pub strip_any_host_port: bool,
    /// Upgrade types (lowercase, e.g. `websocket`) allowed through, from HCM `upgrade_configs`.
    pub upgrades: Vec<Arc<str>>,
    /// From HCM `stream_idle_timeout`; `None` disables it.
    pub stream_idle_timeout: Option<Duration>,
    /// From HCM `request_timeout`; `None` disables it.
    pub request_timeout: Option<Duration>,
    /// From HCM `common_http_protocol_options.idle_timeout` (downstream connection idle).
    pub idle_timeout: Option<Duration>,
    /// From HCM `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// Whether to append the peer address to `x-forwarded-for`: as in Envoy, true when HCM
    /// `use_remote_address` is true and `skip_xff_append` is false.
    pub append_x_forwarded_for: bool,
}

/// Downstream codec, from HCM `codec_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// HTTP/1.1, or HTTP/2 with prior knowledge detected from the connection preface.
    Auto,
    Http1,
    Http2,
}

/// Where a listener's routes come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// `rds.route_config_name`, resolved in [`Snapshot::route_configs`].
    Rds(Arc<str>),
    /// `route_config` inline in the HCM.
    Inline(Arc<RouteConfig>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteConfig {
    pub name: Arc<str>,
    /// In configuration order; domain lookup follows Envoy's precedence (see `router.rs`).
    pub virtual_hosts: Vec<VirtualHost>,
    /// Headers added to every response (`response_headers_to_add`).
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Headers added to every upstream request (`request_headers_to_add`).
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<Arc<str>>,
    pub response_headers_to_remove: Vec<Arc<str>>,
    /// Domain lookup table derived from `virtual_hosts` (see [`crate::router::DomainIndex`]):
    /// built by [`RouteConfig::new`], or on first lookup when the struct is written out by
    /// hand. Never compared nor serialized; rebuild it (`DomainIndex::default()`) after
    /// changing `virtual_hosts` in place.
    #[serde(skip)]
    pub domain_index: crate::router::DomainIndex,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VirtualHost {
    pub name: Arc<str>,
    /// Lowercased domains as configured: exact, `*.suffix`, `prefix.*` or `*`.
    pub domains: Vec<Arc<str>>,
    pub routes: Vec<Route>,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<Arc<str>>,
    pub response_headers_to_remove: Vec<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<Arc<str>>,
    pub response_headers_to_remove: Vec<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `case_sensitive` (default true) applies to prefix and exact path matching.
    pub case_sensitive: bool,
    /// All must match.
    pub headers: Vec<HeaderMatcher>,
    /// All must match.
    pub query_parameters: Vec<QueryParameterMatcher>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(Arc<str>),
    /// Exact match of the path without the query string.
    Exact(Arc<str>),
    /// The regex must match the whole path (without the query string).
    Regex(Regex),
    /// `path_separated_prefix`: the prefix, then end of path or `/`.
    SeparatedPrefix(Arc<str>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderMatcher {
    /// Lowercase header name.
    pub name: Arc<str>,
    pub rule: HeaderMatchRule,
    pub invert: bool,
    /// `treat_missing_header_as_empty`.
    pub treat_missing_as_empty: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderMatchRule {
    /// Header present (any value) when `true`; absent when `false`.
    Present(bool),
    String(StringMatcher),
    /// `range_match`: value parses as an integer in `[start, end)`.
    Range {
        start: i64,
        end: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryParameterMatcher {
    pub name: Arc<str>,
    /// `None` means `present_match`: the parameter exists with any value.
    pub value: Option<StringMatcher>,
}

/// Envoy's `type.matcher.v3.StringMatcher`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StringMatcher {
    pub pattern: StringPattern,
    pub ignore_case: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringPattern {
    Exact(Arc<str>),
    Prefix(Arc<str>),
    Suffix(Arc<str>),
    Contains(Arc<str>),
    /// Whole-string match.
    Regex(Regex),
}

/// A compiled regular expression compared and printed by its source pattern. Compiled
/// anchored so it must match the whole input, as Envoy's `safe_regex` does.
#[derive(Clone)]
pub struct Regex {
    source: Arc<str>,
    compiled: regex::Regex,
}

impl Regex {
    /// Compile `pattern` for whole-input matching.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        let compiled = regex::Regex::new(&format!("^(?:{pattern})$"))?;
        Ok(Regex {
            source: Arc::from(pattern),
            compiled,
        })
    }

    /// Compile `pattern` for whole-input matching, ignoring ASCII and Unicode case.
    pub fn new_ignore_case(pattern: &str) -> Result<Self, regex::Error> {
        let compiled = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .case_insensitive(true)
            .build()?;
        Ok(Regex {
            source: Arc::from(pattern),
            compiled,
        })
    }

    pub fn is_match(&self, input: &str) -> bool {
        self.compiled.is_match(input)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.source, f)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.compiled.as_str() == other.compiled.as_str()
    }
}

impl Eq for Regex {}

impl Serialize for Regex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Forward(ForwardAction),
    /// `direct_response`: answer locally.
    Direct {
        status: u16,
        body: Bytes,
    },
    /// `redirect`: answer with a redirect.
    Redirect(RedirectAction),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForwardAction {
    pub target: ClusterTarget,
    /// `prefix_rewrite`: replaces the matched prefix (or the whole exact path).
    pub prefix_rewrite: Option<Arc<str>>,
    /// `regex_rewrite`: every match of `pattern` in the path replaced by `substitution`.
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: HostRewrite,
    /// Whole-request timeout; `None` means disabled (Envoy's `timeout: 0s`). Envoy's default
    /// when the field is unset is 15 s, applied during validation.
    pub timeout: Option<Duration>,
    /// `idle_timeout` of the stream on this route: `None` when unset (the listener's
    /// `stream_idle_timeout` applies), `Some(Duration::ZERO)` when set to 0 (disabled).
    pub idle_timeout: Option<Duration>,
    /// Per-route overrides from `upgrade_configs` (lowercase type, enabled). As in Envoy, an
    /// upgrade passes only when the listener lists its type and this route does not disable
    /// it; a route cannot enable a type the listener does not list.
    pub upgrades: Vec<(Arc<str>, bool)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegexRewrite {
    /// Unanchored: matches anywhere in the path.
    pub pattern: UnanchoredRegex,
    pub substitution: Arc<str>,
}

/// A regex that is not anchored, compared and printed by its source.
#[derive(Clone)]
pub struct UnanchoredRegex(pub regex::Regex);

impl fmt::Debug for UnanchoredRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl PartialEq for UnanchoredRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for UnanchoredRegex {}

impl Serialize for UnanchoredRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterTarget {
    Single(Arc<str>),
    /// Weights are all > 0 after validation (zero-weight entries are dropped) and
    /// `total` is their sum.
    Weighted {
        clusters: Vec<WeightedCluster>,
        total: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WeightedCluster {
    pub name: Arc<str>,
    pub weight: u32,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<Arc<str>>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<Arc<str>>,
    pub host_rewrite: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRewrite {
    /// Keep the downstream Host/:authority.
    Keep,
    /// `host_rewrite_literal`.
    Literal(Arc<str>),
    /// `auto_host_rewrite`: the chosen endpoint's hostname (DNS clusters) or address.
    Auto,
    /// `host_rewrite_header`: the value of this request header, when present.
    Header(Arc<str>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RedirectAction {
    pub scheme: Option<Arc<str>>,
    pub host: Option<Arc<str>>,
    pub port: Option<u16>,
    pub path: Option<Arc<str>>,
    pub prefix_rewrite: Option<Arc<str>>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    pub strip_query: bool,
}

/// A header to add, from `core.v3.HeaderValueOption`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderValueOption {
    /// Lowercase, validated as an HTTP header name.
    pub name: Arc<str>,
    /// Validated as an HTTP header value.
    pub value: Arc<str>,
    pub append: HeaderAppend,
}

/// `HeaderValueOption.append_action` (and the deprecated `append` flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderAppend {
    /// Append to existing values, or add if absent.
    AppendIfExistsOrAdd,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace existing values, or add.
    OverwriteIfExistsOrAdd,
    /// Replace only when present.
    OverwriteIfExists,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cluster {
    pub name: Arc<str>,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    /// Upstream connection idle timeout (`common_http_protocol_options.idle_timeout`);
    /// Envoy's default is one hour. `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection`; `None` is unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// Endpoints from `load_assignment` (STATIC, STRICT_DNS) or from the matching
    /// ClusterLoadAssignment (EDS), after validation.
    pub load_assignment: LoadAssignment,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    Static,
    /// STRICT_DNS: every hostname re-resolved every `refresh_rate`; each address it
    /// resolves to becomes a host.
    StrictDns {
        refresh_rate: Duration,
        /// From `dns_lookup_family`.
        family: DnsFamily,
    },
    /// EDS: endpoints from the ClusterLoadAssignment named `service_name`. Validation stores
    /// the effective name: `eds_cluster_config.service_name`, or the cluster name when empty.
    Eds {
        service_name: Arc<str>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    /// Power of two choices; with unequal weights, weight / (active + 1)^bias as Envoy does.
    LeastRequest {
        choice_count: u32,
        /// Quantized: the bias × 1000.
        active_request_bias_milli: u32,
    },
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    /// Cleartext HTTP/2 with prior knowledge.
    Http2,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadAssignment {
    /// Localities in configuration order; only priority 0 is accepted for now.
    pub localities: Vec<LocalityEndpoints>,
}

impl LoadAssignment {
    /// All endpoints across localities.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.localities.iter().flat_map(|l| l.endpoints.iter())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalityEndpoints {
    pub region: Arc<str>,
    pub zone: Arc<str>,
    pub sub_zone: Arc<str>,
    /// `load_balancing_weight`, `None` when unset.
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: EndpointAddress,
    /// `load_balancing_weight`, 1 when unset; always >= 1.
    pub weight: u32,
    pub health: HealthStatus,
    /// `endpoint.hostname`, used by `auto_host_rewrite`.
    pub hostname: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// A name to resolve (STRICT_DNS only).
    Dns {
        host: Arc<str>,
        port: u16,
    },
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Socket(a) => write!(f, "{a}"),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// EDS health status as Envoy reduces it: UNKNOWN and HEALTHY are used, DEGRADED is used
/// after healthy hosts, the rest are not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}
