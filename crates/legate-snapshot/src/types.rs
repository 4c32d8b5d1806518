//! The validated runtime model. Plain immutable data: every type is `Clone + Debug + Eq`,
//! shared pieces sit behind `Arc`, and nothing here parses protos or does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::{ListenerTls, UpstreamTls};

/// The longest duration any configuration field may hold: one year. Validation refuses
/// longer values (xDS allows up to `i64::MAX` seconds), so a deadline computed from a
/// configured duration can never overflow an `Instant`; the proxy still adds with
/// saturation, because some waits come from upstream responses.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// From HCM `request_headers_timeout`: how long a request's headers may take to arrive
    /// once their first byte has. Unlike Envoy (off unless set), legate defaults to 10 s;
    /// `None` only when set to 0.
    pub request_headers_timeout: Option<Duration>,
    /// From an `envoy.filters.network.connection_limit` filter before the connection
    /// manager: connections open at once on this listener; `None`: no per-listener limit.
    pub max_connections: Option<u64>,
    /// From HCM `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// Whether to append the peer address to `x-forwarded-for`: as in Envoy, true when HCM
    /// `use_remote_address` is true and `skip_xff_append` is false.
    pub append_x_forwarded_for: bool,
    /// TLS termination, when the filter chains carry a `DownstreamTlsContext`; `None`:
    /// plaintext.
    pub tls: Option<Arc<ListenerTls>>,
    /// From HCM `access_log`: file loggers, formats compiled.
    pub access_logs: Vec<Arc<crate::AccessLog>>,
    /// From HCM `tracing` (provider `envoy.tracers.opentelemetry`); `None`: not traced.
    pub tracing: Option<Arc<Tracing>>,
    /// From HCM `http_filters`: the filters legate runs before the router, in order
    /// (optional filters legate does not implement are left out).
    pub http_filters: Arc<[crate::filter::HttpFilter]>,
}

/// HCM `tracing` with the OpenTelemetry provider: where spans go and which requests make
/// them. Percentages are parts per million (100% = 1,000,000).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tracing {
    /// `grpc_service.envoy_grpc.cluster_name`: the OTLP/gRPC collector's cluster.
    pub collector_cluster: Arc<str>,
    /// `grpc_service.timeout`: bound on one export call; `None`: legate's default.
    pub export_timeout: Option<Duration>,
    /// `service_name`, the `service.name` resource attribute.
    pub service_name: Arc<str>,
    /// `random_sampling`: requests without a parent decision that are traced.
    pub random_sampling_ppm: u32,
    /// `client_sampling`: requests with `x-client-trace-id` that are traced.
    pub client_sampling_ppm: u32,
    /// `overall_sampling`: applied after the other two.
    pub overall_sampling_ppm: u32,
    /// `custom_tags`: attributes added to every server span.
    pub custom_tags: Vec<CustomTag>,
    /// `spawn_upstream_span`: one CLIENT span per upstream attempt, whose context goes
    /// upstream; otherwise the server span's context does.
    pub spawn_upstream_span: bool,
}

/// One HCM `tracing.custom_tags` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CustomTag {
    pub tag: Arc<str>,
    pub value: CustomTagValue,
}

/// Where a custom tag's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomTagValue {
    Literal(Arc<str>),
    /// Read from the process environment when the configuration is applied.
    Environment {
        name: Arc<str>,
        default_value: Arc<str>,
    },
    RequestHeader {
        #[serde(serialize_with = "crate::types::ser_header_name")]
        name: http::HeaderName,
        default_value: Arc<str>,
    },
}

fn ser_header_name<S: serde::Serializer>(n: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

impl Listener {
    /// Names of the SDS secrets the listener needs.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.tls.iter().flat_map(|t| t.secret_names())
    }
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
    #[serde(serialize_with = "http_serde::names")]
    pub request_headers_to_remove: Vec<HeaderName>,
    #[serde(serialize_with = "http_serde::names")]
    pub response_headers_to_remove: Vec<HeaderName>,
    /// `typed_per_filter_config`: overrides of the listener's HTTP filters for every
    /// virtual host that has none of its own.
    pub per_filter: crate::filter::PerFilterConfigs,
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
    #[serde(serialize_with = "http_serde::names")]
    pub request_headers_to_remove: Vec<HeaderName>,
    #[serde(serialize_with = "http_serde::names")]
    pub response_headers_to_remove: Vec<HeaderName>,
    /// `typed_per_filter_config`: overrides of the listener's HTTP filters, by name.
    pub per_filter: crate::filter::PerFilterConfigs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(serialize_with = "http_serde::names")]
    pub request_headers_to_remove: Vec<HeaderName>,
    #[serde(serialize_with = "http_serde::names")]
    pub response_headers_to_remove: Vec<HeaderName>,
    /// `typed_per_filter_config`: overrides of the listener's HTTP filters, by name.
    pub per_filter: crate::filter::PerFilterConfigs,
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

/// Serialized with the compared string hidden when the header is sensitive
/// ([`is_sensitive_header`]): an exact match on `authorization` spells out a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatcher {
    pub name: HeaderMatchName,
    pub rule: HeaderMatchRule,
    pub invert: bool,
    /// `treat_missing_header_as_empty`.
    pub treat_missing_as_empty: bool,
}

impl Serialize for HeaderMatcher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let secret = matches!(&self.name, HeaderMatchName::Header(h) if is_sensitive_header(h))
            && matches!(self.rule, HeaderMatchRule::String(_));
        let mut st = s.serialize_struct("HeaderMatcher", 4)?;
        st.serialize_field("name", &self.name)?;
        if secret {
            st.serialize_field("rule", crate::tls::REDACTED)?;
        } else {
            st.serialize_field("rule", &self.rule)?;
        }
        st.serialize_field("invert", &self.invert)?;
        st.serialize_field("treat_missing_as_empty", &self.treat_missing_as_empty)?;
        st.end()
    }
}

/// What a [`HeaderMatcher`] reads: a header, or the request's authority (`:authority`,
/// which is not a header in `http`'s model).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HeaderMatchName {
    Authority,
    Header(HeaderName),
}

impl HeaderMatchName {
    /// The name as configured (lowercase), `:authority` for [`HeaderMatchName::Authority`].
    pub fn as_str(&self) -> &str {
        match self {
            HeaderMatchName::Authority => ":authority",
            HeaderMatchName::Header(h) => h.as_str(),
        }
    }
}

impl Serialize for HeaderMatchName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
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

/// The longest `safe_regex` pattern legate compiles, in bytes. Envoy bounds RE2's program
/// size instead; a length cap plus the compiled-size limits below bound the same thing.
pub const MAX_REGEX_LEN: usize = 1024;
/// Compiled program size limit for one configured regex (the `regex` crate's default is
/// 10 MiB; configured patterns are small).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy DFA cache limit for one configured regex (the crate's default is 2 MiB).
const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

/// Why a configured regex was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    #[error("pattern is {len} bytes, longer than legate's limit of {MAX_REGEX_LEN}")]
    TooLong { len: usize },
    /// Not a valid regex by itself (the parser's message, on one line).
    #[error("invalid regex: {0}")]
    Invalid(String),
    /// Valid, but its compiled program is over legate's size limit.
    #[error("invalid regex: compiled regex is over legate's limit of {limit} bytes")]
    TooBig { limit: usize },
}

/// Compile a configured pattern. Every configured regex comes through here (path and
/// header matchers, query parameter and string matchers, `regex_rewrite`, SAN matchers).
/// The pattern is first compiled on its own, exactly as written: wrapping an unchecked
/// pattern as `^(?:P)$` lets `x)|(?:.*` close the group early and match everything, where
/// RE2 and Envoy refuse it. Then, when `anchored`, it is compiled for whole-input matching.
fn compile_regex(
    pattern: &str,
    anchored: bool,
    ignore_case: bool,
) -> Result<regex::Regex, RegexError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(RegexError::TooLong { len: pattern.len() });
    }
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .case_insensitive(ignore_case)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => RegexError::TooBig { limit },
                e => RegexError::Invalid(one_line(&e)),
            })
    };
    let alone = build(pattern)?;
    if anchored {
        build(&format!("^(?:{pattern})$"))
    } else {
        Ok(alone)
    }
}

/// A `regex` error on one line, for NACK messages: the crate prints the pattern and a caret
/// on lines of their own, then `error: <what>`; only that last part is kept.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .or_else(|| text.lines().next())
        .unwrap_or_default()
        .trim()
        .to_owned()
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
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        Ok(Regex {
            source: Arc::from(pattern),
            compiled: compile_regex(pattern, true, false)?,
        })
    }

    /// Compile `pattern` for whole-input matching, ignoring ASCII and Unicode case.
    pub fn new_ignore_case(pattern: &str) -> Result<Self, RegexError> {
        Ok(Regex {
            source: Arc::from(pattern),
            compiled: compile_regex(pattern, true, true)?,
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
    /// The route's `retry_policy`, else the virtual host's (a route policy replaces the
    /// virtual host's whole, as in Envoy). `None`: no retries.
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// `hedge_policy.hedge_on_per_try_timeout` (route, else virtual host).
    pub hedge_on_per_try_timeout: bool,
    /// Largest request body kept in memory so it can be sent again on a retry or hedge
    /// (`request_body_buffer_limit`, else `per_request_buffer_limit_bytes`, route then
    /// virtual host; default [`DEFAULT_RETRY_BUFFER_LIMIT`]). A longer body is streamed and
    /// that request is not retried.
    pub retry_buffer_limit: u64,
    /// From route metadata `filter_metadata.legate.retry_non_idempotent`: allow retries and
    /// hedges of POST/PATCH (and other non-idempotent methods) that may have reached the
    /// upstream. Default false: such a request is retried only when it provably was not
    /// sent, or carries an `Idempotency-Key` header.
    pub retry_non_idempotent: bool,
    /// How a gRPC request's `grpc-timeout` header bounds it; `None`: the header is not read
    /// and a gRPC request times out like any other (Envoy's behaviour when neither
    /// `max_stream_duration.grpc_timeout_header_max` nor `max_grpc_timeout` is set).
    pub grpc_timeout: Option<GrpcTimeout>,
    /// `hash_policy`, in order; empty when unset. Read only when the picked cluster's
    /// policy hashes (RING_HASH, MAGLEV).
    pub hash_policy: Arc<[HashPolicy]>,
}

/// Where a route lets a gRPC request's `grpc-timeout` header set its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GrpcTimeout {
    /// The cap on the header's value; `None` when the field is 0 (the header is used as is).
    pub max: Option<Duration>,
    /// `true` for the deprecated `max_grpc_timeout`: the header's value (or no deadline at
    /// all when it is absent) replaces the route's `timeout`. `false` for
    /// `max_stream_duration.grpc_timeout_header_max`: the header's value is an extra bound
    /// next to the route's `timeout`, the earlier one applies.
    pub replaces_route_timeout: bool,
}

/// Default of [`ForwardAction::retry_buffer_limit`]: 1 MiB, Envoy's default connection buffer.
pub const DEFAULT_RETRY_BUFFER_LIMIT: u64 = 1024 * 1024;

/// Envoy's `config.route.v3.RetryPolicy`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Retries after the first attempt (`num_retries`, default 1).
    pub num_retries: u32,
    /// `per_try_timeout`: each attempt's deadline until its response has been received in
    /// full. `None` when unset or zero.
    pub per_try_timeout: Option<Duration>,
    /// `per_try_idle_timeout`: longest silence from the upstream within one attempt.
    pub per_try_idle_timeout: Option<Duration>,
    pub back_off: RetryBackOff,
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// `retriable_status_codes`, used with `retry_on: retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// `retriable_headers`: a response matching any of these is retried (with
    /// `retry_on: retriable-headers`).
    pub retriable_headers: Vec<HeaderMatcher>,
    /// `retriable_request_headers`: when non-empty, only requests matching one of these
    /// are retried.
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `retry_host_predicate` holds `envoy.retry_host_predicates.previous_hosts`: a retry
    /// avoids hosts already tried.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (default 1): how many times host selection is
    /// repeated to satisfy the host predicate.
    pub host_selection_retry_max_attempts: u32,
}

/// The `retry_on` conditions legate implements (comma-separated in Envoy's field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a reset, a timeout of an attempt, a connect failure.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504 responses and attempt timeouts.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or closed the connection before the response headers,
    /// or an attempt timed out.
    pub reset: bool,
    /// `reset-before-request`: a reset before the request was sent.
    pub reset_before_request: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes`.
    pub retriable_status_codes: bool,
    /// `retriable-headers`.
    pub retriable_headers: bool,
    /// `cancelled`: `grpc-status` 1 in the response headers.
    pub grpc_cancelled: bool,
    /// `deadline-exceeded`: `grpc-status` 4 in the response headers.
    pub grpc_deadline_exceeded: bool,
    /// `resource-exhausted`: `grpc-status` 8 in the response headers.
    pub grpc_resource_exhausted: bool,
    /// `internal`: `grpc-status` 13 in the response headers.
    pub grpc_internal: bool,
    /// `unavailable`: `grpc-status` 14 in the response headers.
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// Whether a `grpc-status` read from response headers is one of the gRPC conditions.
    pub fn grpc_status(&self, code: u32) -> bool {
        match code {
            1 => self.grpc_cancelled,
            4 => self.grpc_deadline_exceeded,
            8 => self.grpc_resource_exhausted,
            13 => self.grpc_internal,
            14 => self.grpc_unavailable,
            _ => false,
        }
    }

    /// Whether any gRPC condition is set.
    pub fn any_grpc(&self) -> bool {
        self.grpc_cancelled
            || self.grpc_deadline_exceeded
            || self.grpc_resource_exhausted
            || self.grpc_internal
            || self.grpc_unavailable
    }
}

/// `retry_back_off`: full-jitter exponential back-off between attempts
/// ([`RetryBackOff::delay`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RetryBackOff {
    /// `base_interval`, default 25 ms.
    pub base: Duration,
    /// `max_interval`, default 10 × base.
    pub max: Duration,
}

/// `rate_limited_retry_back_off`: wait what the upstream asks (e.g. `Retry-After`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimitedBackOff {
    pub reset_headers: Vec<ResetHeader>,
    /// `max_interval`, default 300 s: a longer interval in a header is ignored.
    pub max_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetHeader {
    #[serde(serialize_with = "http_serde::name")]
    pub name: HeaderName,
    pub format: ResetHeaderFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetHeaderFormat {
    /// Whole seconds to wait (`Retry-After: 3`).
    Seconds,
    /// A Unix timestamp in seconds to wait until.
    UnixTimestamp,
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

impl UnanchoredRegex {
    /// Compile `pattern` to match anywhere in the input, with the checks of [`Regex::new`].
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        compile_regex(pattern, false, false).map(UnanchoredRegex)
    }
}

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
    #[serde(serialize_with = "http_serde::names")]
    pub request_headers_to_remove: Vec<HeaderName>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(serialize_with = "http_serde::names")]
    pub response_headers_to_remove: Vec<HeaderName>,
    /// `host_rewrite_literal` of this weighted cluster.
    #[serde(serialize_with = "http_serde::opt_value")]
    pub host_rewrite: Option<HeaderValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRewrite {
    /// Keep the downstream Host/:authority.
    Keep,
    /// `host_rewrite_literal`.
    Literal(#[serde(serialize_with = "http_serde::value")] HeaderValue),
    /// `auto_host_rewrite`: the chosen endpoint's hostname (DNS clusters) or address.
    Auto,
    /// `host_rewrite_header`: the value of this request header, when present.
    Header(#[serde(serialize_with = "http_serde::name")] HeaderName),
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

/// A header to add, from `core.v3.HeaderValueOption`, parsed once at validation so the
/// request path only clones it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderValueOption {
    /// Lowercase; never a pseudo-header nor `host`.
    #[serde(serialize_with = "http_serde::name")]
    pub name: HeaderName,
    /// The literal value (`%%` already unescaped).
    #[serde(serialize_with = "http_serde::value")]
    pub value: HeaderValue,
    pub append: HeaderAppend,
}

/// Whether values of header `name` are treated as secrets: marked sensitive when the
/// snapshot is built (`HeaderValue::set_sensitive`), so `/config_dump` and `Debug` show
/// `[redacted]`, and HTTP/2 never adds them to the HPACK table. Envoy's
/// `HeaderValueOption` has no such flag, so the rule goes by name: `authorization`,
/// `proxy-authorization`, `cookie`, `set-cookie`, and any name containing `auth`, `token`,
/// `secret`, `key`, `password`, `session` or `credential` (e.g. `x-api-key`,
/// `x-auth-token`).
pub fn is_sensitive_header(name: &HeaderName) -> bool {
    const EXACT: [HeaderName; 4] = [
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        http::header::COOKIE,
        http::header::SET_COOKIE,
    ];
    const PARTS: [&str; 7] = [
        "auth",
        "token",
        "secret",
        "key",
        "password",
        "session",
        "credential",
    ];
    // Header names are lowercase once parsed.
    EXACT.contains(name) || PARTS.iter().any(|p| name.as_str().contains(p))
}

/// Serialization of the `http` types the snapshot keeps parsed (`http` has no serde support).
/// Values come from protobuf strings, so they are UTF-8 and print unchanged, except values
/// marked sensitive ([`is_sensitive_header`]), which print as `[redacted]`.
pub(crate) mod http_serde {
    use http::{HeaderName, HeaderValue};
    use serde::Serializer;

    pub(crate) fn name<S: Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(n.as_str())
    }

    pub(crate) fn opt_name<S: Serializer>(n: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => name(n, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn names<S: Serializer>(ns: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ns.iter().map(HeaderName::as_str))
    }

    pub(super) fn value<S: Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
        if v.is_sensitive() {
            return s.serialize_str(crate::tls::REDACTED);
        }
        s.serialize_str(&String::from_utf8_lossy(v.as_bytes()))
    }

    pub(super) fn opt_value<S: Serializer>(
        v: &Option<HeaderValue>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => value(v, s),
            None => s.serialize_none(),
        }
    }
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
    /// `circuit_breakers`: Envoy's defaults when unset.
    pub circuit_breakers: CircuitBreakers,
    /// `outlier_detection`; `None`: no passive ejection.
    pub outlier_detection: Option<OutlierDetection>,
    /// `health_checks` (HTTP and TCP).
    pub health_checks: Vec<HealthCheck>,
    /// `common_lb_config.healthy_panic_threshold` in permille (default 500 = 50%); 0
    /// disables panic mode.
    pub healthy_panic_threshold_permille: u32,
    /// The classic closed/open/half-open breaker, from `metadata.filter_metadata.legate
    /// .circuit_breaker` (xDS has no field for it).
    pub classic_breaker: Option<ClassicBreaker>,
    /// Endpoints from `load_assignment` (STATIC, STRICT_DNS) or from the matching
    /// ClusterLoadAssignment (EDS), after validation.
    pub load_assignment: LoadAssignment,
    /// `transport_socket` with an `UpstreamTlsContext`; `None`: plaintext.
    pub tls: Option<Arc<UpstreamTls>>,
}

impl Cluster {
    /// Names of the SDS secrets the cluster needs.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.tls.iter().flat_map(|t| t.secret_names())
    }
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
    /// `RING_HASH` (ketama ring, xxHash64 as Envoy's default): each host gets ring entries in
    /// proportion to its weight; a request's hash picks the first entry at or after it.
    RingHash {
        /// `minimum_ring_size` (default 1024), at most [`MAX_RING_SIZE`].
        min_ring_size: u64,
        /// `maximum_ring_size` (default and at most [`MAX_RING_SIZE`]).
        max_ring_size: u64,
    },
    /// `MAGLEV`: a lookup table of `table_size` entries (a prime, default 65537).
    Maglev {
        table_size: u64,
    },
}

impl LbPolicy {
    /// Whether the policy picks hosts by a request's hash (the route's `hash_policy`).
    pub fn is_hashing(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// Envoy's default `ring_hash_lb_config.minimum_ring_size`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's largest ring (and default `maximum_ring_size`): 8M entries.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Envoy's largest Maglev table (a prime).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// One entry of a route's `hash_policy`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HashPolicy {
    pub method: HashMethod,
    /// `terminal`: when this entry yields a hash, the entries after it are not evaluated.
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashMethod {
    /// The values of a request header (lowercase name); no hash when it is absent.
    Header {
        #[serde(serialize_with = "ser_header_name")]
        name: HeaderName,
    },
    /// A cookie's value. When the request has none and `ttl` is set, legate makes one and
    /// returns it in `Set-Cookie` (a session cookie when the ttl is zero).
    Cookie(CookieHash),
    /// The downstream connection's source IP address.
    SourceIp,
    /// The first value of a query parameter; no hash when it is absent.
    QueryParameter { name: Arc<str> },
}

/// `hash_policy.cookie`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CookieHash {
    pub name: Arc<str>,
    /// `ttl`: `None` never generates a cookie; zero generates a session cookie.
    pub ttl: Option<Duration>,
    /// `path` of a generated cookie; `None` when empty.
    pub path: Option<Arc<str>>,
    /// `attributes` of a generated cookie, `name` or `name=value`, in configuration order.
    pub attributes: Vec<(Arc<str>, Arc<str>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2: with prior knowledge in cleartext, offered as `h2` over TLS.
    Http2,
    /// `auto_config` over TLS: HTTP/2 when the host accepts `h2` in ALPN, else HTTP/1.1.
    /// (`auto_config` without TLS is HTTP/1.1, as in Envoy.)
    Auto,
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

/// `circuit_breakers`. Routes are all DEFAULT priority in legate (route `priority` is
/// refused), so only `default` limits traffic; `high` is validated and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
}

/// One `circuit_breakers.thresholds` entry, with Envoy's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// Open upstream connections across the cluster (default 1024).
    pub max_connections: u32,
    /// Requests waiting for a connection (default 1024).
    pub max_pending_requests: u32,
    /// Requests in flight (default 1024).
    pub max_requests: u32,
    /// Retries in flight (default 3); replaced by `retry_budget` when that is set.
    pub max_retries: u32,
    pub retry_budget: Option<RetryBudget>,
    /// `track_remaining`: publish remaining-capacity gauges (legate always does).
    pub track_remaining: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

/// `retry_budget`: retries in flight may be at most `budget_permille`/1000 of the requests
/// in flight (default 20%), but at least `min_retry_concurrency` (default 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RetryBudget {
    pub budget_permille: u32,
    pub min_retry_concurrency: u32,
}

/// `outlier_detection`, with Envoy's defaults. Percentages are whole percent (0-100) as in
/// Envoy; `success_rate_stdev_factor` is Envoy's integer (1900 = 1.9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// `interval` (10 s): how often success-rate and failure-percentage are evaluated and
    /// ejections expire.
    pub interval: Duration,
    /// `base_ejection_time` (30 s), multiplied by how many times the host was ejected.
    pub base_ejection_time: Duration,
    /// `max_ejection_time` (300 s).
    pub max_ejection_time: Duration,
    /// `max_ejection_time_jitter` (0).
    pub max_ejection_time_jitter: Duration,
    /// `max_ejection_percent` (10); at least one host may always be ejected.
    pub max_ejection_percent: u32,
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    /// `split_external_local_origin_errors` (false): when false, local-origin failures
    /// (connect failure, reset, timeout) count as 5xx (503/504) too.
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub failure_percentage_threshold: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    /// `successful_active_health_check_uneject_host` (true).
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
}

/// One entry of `health_checks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// `timeout` (required): a check not answered in time fails.
    pub timeout: Duration,
    /// `interval` (required).
    pub interval: Duration,
    /// `interval_jitter`: up to this much is added to each interval at random.
    pub interval_jitter: Duration,
    /// `interval_jitter_percent`: up to this share of `interval` is added at random.
    pub interval_jitter_percent: u32,
    /// `initial_jitter`: the first check of each host waits a random time up to this.
    pub initial_jitter: Duration,
    /// `unhealthy_interval`, `unhealthy_edge_interval`, `healthy_edge_interval`; `None`:
    /// `interval`.
    pub unhealthy_interval: Option<Duration>,
    pub unhealthy_edge_interval: Option<Duration>,
    pub healthy_edge_interval: Option<Duration>,
    /// Failed checks in a row that make a healthy host unhealthy (required).
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that make an unhealthy host healthy (required). A new host
    /// needs one, as in Envoy.
    pub healthy_threshold: u32,
    pub kind: HealthCheckKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http(HttpHealthCheck),
    /// Connect only (`tcp_health_check` with no send/receive payload).
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpHealthCheck {
    /// `host`; empty means the cluster name, as in Envoy.
    pub host: Arc<str>,
    pub path: Arc<str>,
    /// `expected_statuses` as half-open ranges `[start, end)`; default `[200, 201)`.
    pub expected_statuses: Vec<(u16, u16)>,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(serialize_with = "http_serde::names")]
    pub request_headers_to_remove: Vec<HeaderName>,
    /// `codec_client_type` HTTP2 (cleartext, prior knowledge) instead of HTTP/1.1.
    pub http2: bool,
}

/// The classic application-side circuit breaker, per cluster: closed until, over the last
/// `window`, at least `minimum_requests` requests finished and the share that failed
/// reached `failure_ratio_permille`; then open (every request answered 503 at once) for
/// `open_timeout`; then half-open, letting `half_open_max_requests` probes through: all
/// succeed and it closes, any fails and it opens again. Failures are 5xx responses and
/// local-origin failures (connect failure, reset, timeout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassicBreaker {
    pub failure_ratio_permille: u32,
    pub window: Duration,
    pub minimum_requests: u32,
    pub open_timeout: Duration,
    pub half_open_max_requests: u32,
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn sensitive_header_names() {
        for name in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "x-auth-token",
            "x-client-secret",
            "x-db-password",
            "x-session-id",
            "x-aws-credential",
        ] {
            assert!(
                is_sensitive_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in [
            "x-team",
            "content-type",
            "x-request-id",
            "user-agent",
            "host",
        ] {
            assert!(
                !is_sensitive_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn sensitive_values_serialize_redacted() {
        let mut secret = HeaderValue::from_static("Bearer hunter2");
        secret.set_sensitive(true);
        let opts = vec![
            HeaderValueOption {
                name: http::header::AUTHORIZATION,
                value: secret,
                append: HeaderAppend::OverwriteIfExistsOrAdd,
            },
            HeaderValueOption {
                name: HeaderName::from_static("x-team"),
                value: HeaderValue::from_static("blue"),
                append: HeaderAppend::AppendIfExistsOrAdd,
            },
        ];
        let matcher = HeaderMatcher {
            name: HeaderMatchName::Header(HeaderName::from_static("x-api-key")),
            rule: HeaderMatchRule::String(StringMatcher {
                pattern: StringPattern::Exact(Arc::from("k-123")),
                ignore_case: false,
            }),
            invert: false,
            treat_missing_as_empty: false,
        };
        let json = serde_json::to_string(&(&opts, &matcher)).expect("json");
        assert!(
            !json.contains("hunter2") && !json.contains("k-123"),
            "{json}"
        );
        assert!(json.contains(r#""value":"[redacted]""#), "{json}");
        assert!(json.contains(r#""value":"blue""#), "{json}");
        assert!(json.contains(r#""rule":"[redacted]""#), "{json}");
        assert!(!format!("{opts:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod regex_tests {
    use super::*;

    #[test]
    fn patterns_are_checked_on_their_own_before_anchoring() {
        // Accepted once wrapped as ^(?:x)|(?:.*)$, where it matches everything.
        assert!(matches!(
            Regex::new("x)|(?:.*"),
            Err(RegexError::Invalid(m)) if m == "unopened group"
        ));
        assert!(UnanchoredRegex::new("x)|(?:.*").is_err());
        let r = Regex::new("/a|/b").expect("valid");
        assert!(r.is_match("/a") && r.is_match("/b") && !r.is_match("/ab"));
        assert_eq!(
            Regex::new(&"a".repeat(MAX_REGEX_LEN + 1)).map(|_| ()),
            Err(RegexError::TooLong {
                len: MAX_REGEX_LEN + 1
            })
        );
        assert!(Regex::new(&"a".repeat(MAX_REGEX_LEN)).is_ok());
        assert_eq!(
            Regex::new("(?:\\w{100}){100}").map(|_| ()),
            Err(RegexError::TooBig {
                limit: REGEX_SIZE_LIMIT
            })
        );
    }
}
