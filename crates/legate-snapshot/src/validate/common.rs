//! Helpers shared by the per-resource conversions: error collection with field paths, the
//! "is this field set" test behind [`refuse!`], and conversions of the small messages several
//! resources embed (durations, config sources, socket addresses, header mutations, string and
//! regex matchers).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Metadata as XdsMetadata;
use envoy_types::pb::envoy::config::core::v3::address::Address as XdsAddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{
    Address as XdsAddress, AggregatedConfigSource, ApiVersion, ConfigSource as XdsConfigSource,
    HeaderValue as XdsHeaderValue, HeaderValueOption as XdsHeaderValueOption,
    Http1ProtocolOptions as XdsHttp1ProtocolOptions,
    Http2ProtocolOptions as XdsHttp2ProtocolOptions, HttpProtocolOptions as XdsHttpProtocolOptions,
    SelfConfigSource, SocketAddress as XdsSocketAddress,
};
use envoy_types::pb::envoy::r#type::matcher::v3::regex_matcher::{EngineType, GoogleRe2};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher as XdsRegexMatcher, StringMatcher as XdsStringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{
    BoolValue, Duration as XdsDuration, Struct, UInt32Value, Value,
};
use http::{HeaderName, HeaderValue};

use crate::{
    EndpointAddress, HeaderAppend, HeaderValueOption, MAX_DURATION, Regex, ResourceError,
    ResourceKind, StringMatcher, StringPattern, is_sensitive_header,
};

/// The message for a field that is set but that legate does not implement.
pub(super) const UNSUPPORTED: &str = "not supported by legate";

/// Collects every error found in one resource. Conversions keep going after an error so that
/// one NACK lists all problems.
pub(super) struct Ctx {
    kind: ResourceKind,
    name: String,
    errors: Vec<ResourceError>,
}

impl Ctx {
    pub(super) fn new(kind: ResourceKind, name: &str) -> Self {
        Ctx {
            kind,
            name: name.to_owned(),
            errors: Vec::new(),
        }
    }

    pub(super) fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ResourceError::new(
            self.kind,
            self.name.clone(),
            field,
            message,
        ));
    }

    /// `base.field` is set but legate does not implement it.
    pub(super) fn unsupported(&mut self, base: &str, field: &str) {
        // `stringify!` keeps the raw-identifier prefix of fields such as `r#match`.
        let field = field.trim_start_matches("r#");
        self.err(join(base, field), UNSUPPORTED);
    }

    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(super) fn into_errors(self) -> Vec<ResourceError> {
        self.errors
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, Vec<ResourceError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// `base.field`, or `field` at the root.
pub(super) fn join(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

/// `base.field[i]`.
pub(super) fn at(base: &str, field: &str, i: usize) -> String {
    join(base, &format!("{field}[{i}]"))
}

/// Whether a proto field differs from its default, i.e. whether the sender set it.
pub(super) trait IsSet {
    fn is_set(&self) -> bool;
}

impl<T: IsSet + ?Sized> IsSet for &T {
    fn is_set(&self) -> bool {
        (**self).is_set()
    }
}

impl<T> IsSet for Option<T> {
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl<T> IsSet for Vec<T> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl<K, V> IsSet for std::collections::HashMap<K, V> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for String {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl IsSet for bool {
    fn is_set(&self) -> bool {
        *self
    }
}

macro_rules! impl_is_set_number {
    ($($t:ty),*) => {
        $(impl IsSet for $t {
            fn is_set(&self) -> bool {
                *self != 0
            }
        })*
    };
}
impl_is_set_number!(i32, u32, i64, u64);

/// Refuse every listed local binding (named after its proto field) that is set:
/// `refuse!(cx, base; outlier_detection, health_checks)`.
macro_rules! refuse {
    ($cx:expr, $base:expr; $($field:ident),+ $(,)?) => {{
        $(
            if $crate::validate::common::IsSet::is_set(&$field) {
                $cx.unsupported($base, stringify!($field));
            }
        )+
    }};
}
pub(super) use refuse;

/// Refuse a `BoolValue` only when it is `true`: for fields whose default is `false`, an explicit
/// `false` asks for what legate does anyway.
pub(super) fn refuse_true(cx: &mut Ctx, base: &str, field: &str, value: &Option<BoolValue>) {
    if matches!(value, Some(BoolValue { value: true })) {
        cx.unsupported(base, field);
    }
}

/// A proto enum value, or an error naming the unknown number.
pub(super) fn enum_value<E: TryFrom<i32>>(cx: &mut Ctx, field: &str, value: i32) -> Option<E> {
    match E::try_from(value) {
        Ok(v) => Some(v),
        Err(_) => {
            cx.err(field, format!("unknown value {value}"));
            None
        }
    }
}

/// A `google.protobuf.Duration`; negative, malformed and absurd (over [`MAX_DURATION`])
/// values are errors. Every duration field of every resource is read through here.
pub(super) fn duration(cx: &mut Ctx, field: &str, d: &XdsDuration) -> Option<Duration> {
    let XdsDuration { seconds, nanos } = *d;
    if seconds < 0 || nanos < 0 {
        cx.err(field, "must not be negative");
        return None;
    }
    if nanos > 999_999_999 {
        cx.err(field, "nanos must be below one second");
        return None;
    }
    capped_duration(
        cx,
        field,
        Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs()),
    )
}

/// Refuse a duration longer than [`MAX_DURATION`] (one year): for the durations legate
/// reads from other encodings (metadata strings), and through [`duration`] for protobuf ones.
pub(super) fn capped_duration(cx: &mut Ctx, field: &str, d: Duration) -> Option<Duration> {
    if d > MAX_DURATION {
        cx.err(
            field,
            format!(
                "{}s is longer than legate's limit of one year ({}s)",
                d.as_secs(),
                MAX_DURATION.as_secs()
            ),
        );
        return None;
    }
    Some(d)
}

/// A timeout where unset means `default` and zero means disabled (`None`), as Envoy reads
/// most of its timeouts.
pub(super) fn timeout(
    cx: &mut Ctx,
    field: &str,
    value: &Option<XdsDuration>,
    default: Option<Duration>,
) -> Option<Duration> {
    match value {
        None => default,
        Some(d) => match duration(cx, field, d) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => default,
        },
    }
}

/// A duration that must be greater than zero when set; `None` when unset or invalid.
pub(super) fn positive_duration(
    cx: &mut Ctx,
    field: &str,
    value: &Option<XdsDuration>,
) -> Option<Duration> {
    let d = duration(cx, field, value.as_ref()?)?;
    if d.is_zero() {
        cx.err(field, "must be greater than zero");
        return None;
    }
    Some(d)
}

/// A duration field set to something other than zero (Envoy's "disabled").
pub(super) fn nonzero_duration(value: &Option<XdsDuration>) -> bool {
    matches!(value, Some(d) if d.seconds != 0 || d.nanos != 0)
}

/// The `filter_metadata` namespace legate reads its own settings from (route and cluster
/// metadata), since xDS has no field for them.
pub(super) const LEGATE_NAMESPACE: &str = "legate";

/// `metadata.filter_metadata['legate']` as `(path, key, value)` sorted by key, so errors come
/// out in a stable order. Other namespaces belong to other consumers and are ignored;
/// `typed_filter_metadata['legate']` is refused, as legate reads only the `Struct` form.
pub(super) fn legate_metadata<'a>(
    cx: &mut Ctx,
    field: &str,
    metadata: Option<&'a XdsMetadata>,
) -> Vec<(String, &'a str, &'a Value)> {
    let Some(XdsMetadata {
        filter_metadata,
        typed_filter_metadata,
    }) = metadata
    else {
        return Vec::new();
    };
    if typed_filter_metadata.contains_key(LEGATE_NAMESPACE) {
        cx.err(
            join(
                field,
                &format!("typed_filter_metadata['{LEGATE_NAMESPACE}']"),
            ),
            "not supported by legate (use filter_metadata)",
        );
    }
    let Some(settings) = filter_metadata.get(LEGATE_NAMESPACE) else {
        return Vec::new();
    };
    let base = join(field, &format!("filter_metadata['{LEGATE_NAMESPACE}']"));
    struct_fields(&base, settings)
}

/// The fields of a `Struct` as `(path, key, value)`, sorted by key.
pub(super) fn struct_fields<'a>(base: &str, s: &'a Struct) -> Vec<(String, &'a str, &'a Value)> {
    let mut fields: Vec<(String, &str, &Value)> = s
        .fields
        .iter()
        .map(|(k, v)| (join(base, k), k.as_str(), v))
        .collect();
    fields.sort_by(|a, b| a.1.cmp(b.1));
    fields
}

/// What a `google.protobuf.Value` holds, for error messages.
pub(super) fn value_kind(v: &Value) -> &'static str {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => "null",
        Some(Kind::NumberValue(_)) => "a number",
        Some(Kind::StringValue(_)) => "a string",
        Some(Kind::BoolValue(_)) => "a bool",
        Some(Kind::StructValue(_)) => "a struct",
        Some(Kind::ListValue(_)) => "a list",
    }
}

/// A `Value` that must be a bool.
pub(super) fn value_bool(cx: &mut Ctx, field: &str, v: &Value) -> Option<bool> {
    match &v.kind {
        Some(Kind::BoolValue(b)) => Some(*b),
        _ => {
            cx.err(field, format!("must be a bool, not {}", value_kind(v)));
            None
        }
    }
}

/// A `type.v3.Percent` (0 to 100) in permille, rounded to the nearest.
pub(super) fn percent_permille(cx: &mut Ctx, field: &str, p: &Percent) -> Option<u32> {
    let Percent { value } = *p;
    if !(0.0..=100.0).contains(&value) {
        cx.err(field, format!("{value} is not between 0 and 100"));
        return None;
    }
    // In 0..=1000 by the check above.
    Some((value * 10.0).round() as u32)
}

/// Legate receives every resource on its one ADS stream: a config source must say `ads` or
/// `self` (both mean "this stream" for legate).
pub(super) fn config_source(cx: &mut Ctx, field: &str, source: &XdsConfigSource) {
    let XdsConfigSource {
        authorities,
        // Ignored: legate waits for its first snapshot however long it takes.
        initial_fetch_timeout: _,
        resource_api_version,
        config_source_specifier,
    } = source;
    refuse!(cx, field; authorities);
    if let Some(version) = enum_value::<ApiVersion>(
        cx,
        &join(field, "resource_api_version"),
        *resource_api_version,
    ) && version == ApiVersion::V2
    {
        cx.err(
            join(field, "resource_api_version"),
            "v2 is not supported by legate",
        );
    }
    match config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
        | Some(ConfigSourceSpecifier::Self_(SelfConfigSource {
            transport_api_version: _,
        })) => {}
        Some(ConfigSourceSpecifier::Path(_)) => cx.err(
            join(field, "path"),
            "not supported by legate (use ads or self)",
        ),
        Some(ConfigSourceSpecifier::PathConfigSource(_)) => cx.err(
            join(field, "path_config_source"),
            "not supported by legate (use ads or self)",
        ),
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => cx.err(
            join(field, "api_config_source"),
            "not supported by legate (use ads or self)",
        ),
        None => cx.err(field, "one of ads or self is required"),
    }
}

/// Which socket addresses a position accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddressRule {
    /// A listener: numeric IP; port 0 asks the OS for a port.
    Listener,
    /// An upstream endpoint with a numeric IP and a non-zero port.
    EndpointIp,
    /// A STRICT_DNS endpoint: an IP or a hostname, and a non-zero port.
    EndpointIpOrHostname,
}

/// `core.v3.Address` holding a `socket_address`.
pub(super) fn address(
    cx: &mut Ctx,
    field: &str,
    value: &Option<XdsAddress>,
    rule: AddressRule,
) -> Option<EndpointAddress> {
    let Some(XdsAddress { address }) = value else {
        cx.err(field, "required");
        return None;
    };
    match address {
        Some(XdsAddressKind::SocketAddress(sa)) => {
            socket_address(cx, &join(field, "socket_address"), sa, rule)
        }
        Some(XdsAddressKind::Pipe(_)) => {
            cx.unsupported(field, "pipe");
            None
        }
        Some(XdsAddressKind::EnvoyInternalAddress(_)) => {
            cx.unsupported(field, "envoy_internal_address");
            None
        }
        None => {
            cx.err(join(field, "socket_address"), "required");
            None
        }
    }
}

fn socket_address(
    cx: &mut Ctx,
    field: &str,
    sa: &XdsSocketAddress,
    rule: AddressRule,
) -> Option<EndpointAddress> {
    let XdsSocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    let before = cx.error_count();
    refuse!(cx, field; resolver_name, ipv4_compat, network_namespace_filepath);
    if let Some(p) = enum_value::<Protocol>(cx, &join(field, "protocol"), *protocol)
        && p != Protocol::Tcp
    {
        cx.err(join(field, "protocol"), "only tcp is supported by legate");
    }
    let port = match port_specifier {
        Some(PortSpecifier::PortValue(p)) => match u16::try_from(*p) {
            Ok(0) if rule != AddressRule::Listener => {
                cx.err(join(field, "port_value"), "must be between 1 and 65535");
                None
            }
            Ok(p) => Some(p),
            Err(_) => {
                cx.err(join(field, "port_value"), "must be at most 65535");
                None
            }
        },
        Some(PortSpecifier::NamedPort(_)) => {
            cx.unsupported(field, "named_port");
            None
        }
        None => {
            cx.err(join(field, "port_value"), "required");
            None
        }
    };
    let host = if let Ok(ip) = address.parse::<IpAddr>() {
        Some(Host::Ip(ip))
    } else if address.is_empty() {
        cx.err(join(field, "address"), "required");
        None
    } else if rule == AddressRule::EndpointIpOrHostname {
        if valid_hostname(address) {
            Some(Host::Name(address.to_ascii_lowercase()))
        } else {
            cx.err(
                join(field, "address"),
                format!("'{address}' is neither an ip address nor a valid hostname"),
            );
            None
        }
    } else {
        let why = match rule {
            AddressRule::Listener => "must be a numeric ip address",
            _ => "must be a numeric ip address (hostnames need a STRICT_DNS cluster)",
        };
        cx.err(join(field, "address"), format!("'{address}' {why}"));
        None
    };
    if cx.error_count() != before {
        return None;
    }
    match (host?, port?) {
        (Host::Ip(ip), port) => Some(EndpointAddress::Socket(SocketAddr::new(ip, port))),
        (Host::Name(host), port) => Some(EndpointAddress::Dns {
            host: Arc::from(host),
            port,
        }),
    }
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Letters, digits, `-`, `_` and `.`, in non-empty labels of at most 63 bytes.
fn valid_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A header name from the configuration, parsed once: lowercased, then refused when empty,
/// a pseudo-header or not an RFC 9110 token. Every header name the snapshot keeps goes
/// through here.
pub(super) fn header_name(cx: &mut Ctx, field: &str, name: &str) -> Option<HeaderName> {
    if name.is_empty() {
        cx.err(field, "must not be empty");
        return None;
    }
    if name.starts_with(':') {
        cx.err(
            field,
            format!("'{name}': pseudo-headers are not allowed here"),
        );
        return None;
    }
    match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            let bad = name
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)))
                .map_or_else(String::new, |c| format!(": {c:?} is not allowed"));
            cx.err(
                field,
                format!("'{name}' is not a valid header name{bad} (letters, digits and !#$%&'*+-.^_`|~ only)"),
            );
            None
        }
    }
}

/// A header value from the configuration, parsed once; the error names the first byte
/// HTTP does not allow (control characters other than tab, and DEL).
pub(super) fn header_value(cx: &mut Ctx, field: &str, value: &str) -> Option<HeaderValue> {
    match HeaderValue::from_str(value) {
        Ok(v) => Some(v),
        Err(_) => {
            let (at, b) = value
                .bytes()
                .enumerate()
                .find(|&(_, b)| (b < 0x20 && b != b'\t') || b == 0x7f)
                .unwrap_or((0, 0));
            cx.err(
                field,
                format!("not a valid header value: byte 0x{b:02x} at offset {at} is not allowed"),
            );
            None
        }
    }
}

/// A lowercase header name that legate may set or remove: a valid HTTP header name that is
/// neither a pseudo-header nor `host` (which Envoy refuses too: use the host rewrites).
pub(super) fn mutable_header_name(cx: &mut Ctx, field: &str, name: &str) -> Option<HeaderName> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        cx.err(
            field,
            format!("'{name}': pseudo-headers and host may not be modified"),
        );
        return None;
    }
    header_name(cx, field, name)
}

/// `request_headers_to_remove` / `response_headers_to_remove`.
pub(super) fn headers_to_remove(
    cx: &mut Ctx,
    base: &str,
    field: &str,
    names: &[String],
) -> Vec<HeaderName> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| mutable_header_name(cx, &at(base, field, i), n))
        .collect()
}

/// `request_headers_to_add` / `response_headers_to_add`.
pub(super) fn headers_to_add(
    cx: &mut Ctx,
    base: &str,
    field: &str,
    options: &[XdsHeaderValueOption],
) -> Vec<HeaderValueOption> {
    options
        .iter()
        .enumerate()
        .filter_map(|(i, o)| header_value_option(cx, &at(base, field, i), o))
        .collect()
}

/// One `HeaderValueOption`. `None` for an error, and also for an empty value without
/// `keep_empty_value`, which Envoy skips at run time.
fn header_value_option(
    cx: &mut Ctx,
    field: &str,
    option: &XdsHeaderValueOption,
) -> Option<HeaderValueOption> {
    let XdsHeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = option;
    let before = cx.error_count();
    let action =
        enum_value::<HeaderAppendAction>(cx, &join(field, "append_action"), *append_action);
    // The deprecated `append` wins when set, and Envoy refuses it next to an explicit action.
    let append = match (append, action) {
        (Some(_), Some(a)) if a != HeaderAppendAction::AppendIfExistsOrAdd => {
            cx.err(
                join(field, "append"),
                "cannot be combined with append_action",
            );
            HeaderAppend::AppendIfExistsOrAdd
        }
        (Some(BoolValue { value: true }), _) => HeaderAppend::AppendIfExistsOrAdd,
        (Some(BoolValue { value: false }), _) => HeaderAppend::OverwriteIfExistsOrAdd,
        (None, Some(HeaderAppendAction::AppendIfExistsOrAdd) | None) => {
            HeaderAppend::AppendIfExistsOrAdd
        }
        (None, Some(HeaderAppendAction::AddIfAbsent)) => HeaderAppend::AddIfAbsent,
        (None, Some(HeaderAppendAction::OverwriteIfExistsOrAdd)) => {
            HeaderAppend::OverwriteIfExistsOrAdd
        }
        (None, Some(HeaderAppendAction::OverwriteIfExists)) => HeaderAppend::OverwriteIfExists,
    };
    let Some(XdsHeaderValue {
        key,
        value,
        raw_value,
    }) = header
    else {
        cx.err(join(field, "header"), "required");
        return None;
    };
    let hfield = join(field, "header");
    let name = mutable_header_name(cx, &join(&hfield, "key"), key);
    let value = match (value.is_empty(), raw_value.is_empty()) {
        (_, true) => Some(value.as_str()),
        (true, false) => match std::str::from_utf8(raw_value) {
            Ok(v) => Some(v),
            Err(_) => {
                cx.err(join(&hfield, "raw_value"), "must be utf-8 for legate");
                None
            }
        },
        (false, false) => {
            cx.err(join(&hfield, "raw_value"), "cannot be combined with value");
            None
        }
    };
    let value_field = if raw_value.is_empty() {
        "value"
    } else {
        "raw_value"
    };
    let value = value.and_then(|v| literal_header_value(cx, &join(&hfield, value_field), v));
    if cx.error_count() != before {
        return None;
    }
    let (name, mut value) = (name?, value?);
    if value.is_empty() && !*keep_empty_value {
        return None;
    }
    value.set_sensitive(is_sensitive_header(&name));
    Some(HeaderValueOption {
        name,
        value,
        append,
    })
}

/// Envoy reads `%...%` in header values as substitution commands, which legate does not
/// implement: only `%%` (a literal `%`) is accepted, and unescaped here.
fn literal_header_value(cx: &mut Ctx, field: &str, value: &str) -> Option<HeaderValue> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        if rest[i + 1..].starts_with('%') {
            out.push('%');
            rest = &rest[i + 2..];
        } else {
            cx.err(
                field,
                "substitution formatters (%...%) are not supported by legate; write %% for a literal %",
            );
            return None;
        }
    }
    out.push_str(rest);
    header_value(cx, field, &out)
}

/// `type.matcher.v3.RegexMatcher`, compiled for whole-input matching.
pub(super) fn regex(cx: &mut Ctx, field: &str, m: &XdsRegexMatcher) -> Option<Regex> {
    let pattern = regex_pattern(cx, field, m)?;
    match Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            cx.err(join(field, "regex"), e.to_string());
            None
        }
    }
}

/// The pattern of a `RegexMatcher`, with its (deprecated, no-op) engine checked.
pub(super) fn regex_pattern<'a>(
    cx: &mut Ctx,
    field: &str,
    m: &'a XdsRegexMatcher,
) -> Option<&'a str> {
    let XdsRegexMatcher { regex, engine_type } = m;
    // `google_re2` and its `max_program_size` are deprecated no-ops in Envoy.
    let (Some(EngineType::GoogleRe2(GoogleRe2 {
        max_program_size: _,
    }))
    | None) = engine_type;
    if regex.is_empty() {
        cx.err(join(field, "regex"), "must not be empty");
        return None;
    }
    Some(regex)
}

/// `type.matcher.v3.StringMatcher`.
pub(super) fn string_matcher(
    cx: &mut Ctx,
    field: &str,
    m: &XdsStringMatcher,
) -> Option<StringMatcher> {
    let XdsStringMatcher {
        ignore_case,
        match_pattern,
    } = m;
    let non_empty = |cx: &mut Ctx, name: &str, v: &str| -> Option<Arc<str>> {
        if v.is_empty() {
            cx.err(join(field, name), "must not be empty");
            None
        } else {
            Some(Arc::from(v))
        }
    };
    let pattern = match match_pattern {
        Some(MatchPattern::Exact(v)) => StringPattern::Exact(Arc::from(v.as_str())),
        Some(MatchPattern::Prefix(v)) => StringPattern::Prefix(non_empty(cx, "prefix", v)?),
        Some(MatchPattern::Suffix(v)) => StringPattern::Suffix(non_empty(cx, "suffix", v)?),
        Some(MatchPattern::Contains(v)) => StringPattern::Contains(non_empty(cx, "contains", v)?),
        Some(MatchPattern::SafeRegex(r)) => {
            StringPattern::Regex(regex(cx, &join(field, "safe_regex"), r)?)
        }
        Some(MatchPattern::Custom(_)) => {
            cx.unsupported(field, "custom");
            return None;
        }
        None => {
            cx.err(
                field,
                "one of exact, prefix, suffix, contains or safe_regex is required",
            );
            return None;
        }
    };
    Some(StringMatcher {
        pattern,
        ignore_case: *ignore_case,
    })
}

/// What legate takes from `core.v3.HttpProtocolOptions`.
pub(super) struct CoreHttpOptions {
    /// `idle_timeout`: unset means Envoy's default of one hour, zero disables.
    pub(super) idle_timeout: Option<Duration>,
    /// `max_requests_per_connection`: `None` when unset or zero (unlimited).
    pub(super) max_requests_per_connection: Option<u32>,
}

/// Envoy's default connection idle timeout, downstream and upstream.
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `core.v3.HttpProtocolOptions`. `max_requests_per_connection` is honoured upstream only.
pub(super) fn core_http_options(
    cx: &mut Ctx,
    field: &str,
    o: Option<&XdsHttpProtocolOptions>,
    upstream: bool,
) -> CoreHttpOptions {
    let Some(XdsHttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    }) = o
    else {
        return CoreHttpOptions {
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_requests_per_connection: None,
        };
    };
    // `headers_with_underscores_action` defaults to ALLOW, which is what legate does.
    refuse!(cx, field;
        max_connection_duration, max_connection_duration_jitter, max_headers_count,
        max_response_headers_kb, max_stream_duration, headers_with_underscores_action,
    );
    if !upstream {
        refuse!(cx, field; max_requests_per_connection);
    }
    CoreHttpOptions {
        idle_timeout: timeout(
            cx,
            &join(field, "idle_timeout"),
            idle_timeout,
            Some(DEFAULT_IDLE_TIMEOUT),
        ),
        max_requests_per_connection: max_requests_per_connection
            .and_then(|UInt32Value { value }| (value > 0).then_some(value)),
    }
}

/// `core.v3.Http1ProtocolOptions`: legate speaks HTTP/1.1 with its defaults only.
pub(super) fn http1_options(cx: &mut Ctx, field: &str, o: &XdsHttp1ProtocolOptions) {
    let XdsHttp1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser: _, // parser choice, no behaviour of its own
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = o;
    refuse!(cx, field;
        allow_absolute_url, accept_http_10, default_host_for_http_10, header_key_format,
        enable_trailers, allow_chunked_length, override_stream_error_on_invalid_http_message,
        send_fully_qualified_url, allow_custom_methods, ignore_http_11_upgrade,
    );
}

/// `core.v3.Http2ProtocolOptions`: legate speaks HTTP/2 with its defaults only.
pub(super) fn http2_options(cx: &mut Ctx, field: &str, o: &XdsHttp2ProtocolOptions) {
    let XdsHttp2ProtocolOptions {
        hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames,
        max_outbound_control_frames,
        max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec: _, // codec implementation choice, no behaviour of its own
        max_metadata_size,
        enable_huffman_encoding,
        max_header_field_size_kb,
        disallow_obs_text,
        stream_reset_burst,
        stream_reset_rate,
    } = o;
    refuse!(cx, field;
        hpack_table_size, max_concurrent_streams, initial_stream_window_size,
        initial_connection_window_size, allow_connect, allow_metadata, max_outbound_frames,
        max_outbound_control_frames, max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent,
        stream_error_on_invalid_http_messaging, override_stream_error_on_invalid_http_message,
        custom_settings_parameters, connection_keepalive, max_metadata_size,
        enable_huffman_encoding, max_header_field_size_kb, disallow_obs_text,
        stream_reset_burst, stream_reset_rate,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_duration(seconds: i64, nanos: i32, expected: Result<Duration, &str>) {
        let mut cx = Ctx::new(ResourceKind::Cluster, "c");
        let got = duration(&mut cx, "f", &XdsDuration { seconds, nanos });
        match expected {
            Ok(d) => {
                assert_eq!(got, Some(d));
                assert_eq!(cx.error_count(), 0);
            }
            Err(msg) => {
                assert_eq!(got, None);
                let errors = cx.finish(()).expect_err("an error");
                assert_eq!(errors[0].to_string(), format!("cluster 'c': f: {msg}"));
            }
        }
    }

    #[test]
    fn durations() {
        check_duration(0, 0, Ok(Duration::ZERO));
        check_duration(5, 0, Ok(Duration::from_secs(5)));
        check_duration(1, 500_000_000, Ok(Duration::from_millis(1500)));
        check_duration(31_536_000, 0, Ok(MAX_DURATION));
        check_duration(
            31_536_000,
            1,
            Err("31536000s is longer than legate's limit of one year (31536000s)"),
        );
        check_duration(
            i64::MAX,
            999_999_999,
            Err("9223372036854775807s is longer than legate's limit of one year (31536000s)"),
        );
        check_duration(i64::MIN, 0, Err("must not be negative"));
        check_duration(0, 1_000_000_000, Err("nanos must be below one second"));
        check_duration(-1, 0, Err("must not be negative"));
        check_duration(0, -1, Err("must not be negative"));
        check_duration(0, 1_000_000_000, Err("nanos must be below one second"));
    }

    #[test]
    fn timeouts() {
        let mut cx = Ctx::new(ResourceKind::Cluster, "c");
        let d = |s| {
            Some(XdsDuration {
                seconds: s,
                nanos: 0,
            })
        };
        let def = Some(Duration::from_secs(15));
        assert_eq!(timeout(&mut cx, "t", &None, def), def);
        assert_eq!(timeout(&mut cx, "t", &d(0), def), None);
        assert_eq!(
            timeout(&mut cx, "t", &d(3), def),
            Some(Duration::from_secs(3))
        );
        assert_eq!(timeout(&mut cx, "t", &d(-3), def), def);
        assert_eq!(cx.error_count(), 1);
    }

    #[test]
    fn joins() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(at("a", "b", 2), "a.b[2]");
        assert_eq!(at("", "b", 0), "b[0]");
    }

    #[test]
    fn hostnames() {
        for ok in [
            "a",
            "a.b",
            "svc-1.ns.svc.cluster.local",
            "a_b.c",
            "example.com.",
        ] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", "a b", "a/b", "a:80", &"x".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn literal_header_values() {
        let mut cx = Ctx::new(ResourceKind::Cluster, "c");
        let lit = |cx: &mut Ctx, v: &str| {
            literal_header_value(cx, "v", v).map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(lit(&mut cx, "a").as_deref(), Some("a"));
        assert_eq!(lit(&mut cx, "100%%").as_deref(), Some("100%"));
        assert_eq!(lit(&mut cx, "%%a%%b").as_deref(), Some("%a%b"));
        assert_eq!(cx.error_count(), 0);
        assert_eq!(literal_header_value(&mut cx, "v", "%REQ(x)%"), None);
        assert_eq!(literal_header_value(&mut cx, "v", "50%"), None);
        assert_eq!(literal_header_value(&mut cx, "v", "a\nb"), None);
        assert_eq!(cx.error_count(), 3);
        let errors = cx.into_errors();
        assert!(
            errors[2]
                .to_string()
                .contains("byte 0x0a at offset 1 is not allowed"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn header_names() {
        let mut cx = Ctx::new(ResourceKind::Cluster, "c");
        assert_eq!(
            header_name(&mut cx, "n", "X-Foo").map(|h| h.as_str().to_owned()),
            Some("x-foo".to_owned())
        );
        assert_eq!(header_name(&mut cx, "n", "a b"), None);
        assert_eq!(header_name(&mut cx, "n", ":path"), None);
        assert_eq!(mutable_header_name(&mut cx, "n", "Host"), None);
        let errors: Vec<String> = cx.into_errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("' ' is not allowed"), "{errors:?}");
    }
}
