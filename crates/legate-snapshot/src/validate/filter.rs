//! HCM `http_filters` and `typed_per_filter_config` → [`crate::filter`] types.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::FilterConfig as XdsFilterConfig;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as XdsLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as XdsRouter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter as XdsHttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, TokenBucket as XdsTokenBucket,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;

use super::common::{Ctx, at, duration, enum_value, headers_to_add, join, refuse};
use crate::filter::{
    DescriptorAction, DescriptorActions, DescriptorEntry, Fault, FaultAbort, FaultDelay,
    FilterKind, Fraction, HttpFilter, LocalDescriptor, LocalRateLimit, PerFilterConfig,
    PerFilterConfigs, TokenBucket,
};
use crate::type_url;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay as XdsFaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as XdsFaultAbort, HttpFault as XdsHttpFault,
};

/// Envoy refuses a local rate limit bucket that refills more often than this.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);
/// Per-filter overrides one virtual host or route may carry: far more than any filter chain
/// has filters, and a bound on what a control plane can make every request scan.
const MAX_PER_FILTER_CONFIGS: usize = 64;
/// Filters one HCM may chain.
const MAX_HTTP_FILTERS: usize = 64;

/// `http_filters`: the router last; filters legate implements are kept in order; others only
/// when optional or disabled (then they never run in legate, as Envoy skips an optional
/// filter it does not know).
pub(super) fn http_filters(
    cx: &mut Ctx,
    field: &str,
    filters: &[XdsHttpFilter],
) -> Vec<HttpFilter> {
    if filters.len() > MAX_HTTP_FILTERS {
        cx.err(
            join(field, "http_filters"),
            format!(
                "{} filters is more than legate's limit of {MAX_HTTP_FILTERS}",
                filters.len()
            ),
        );
        return Vec::new();
    }
    let last = filters.len().saturating_sub(1);
    let mut router_seen = false;
    let mut out: Vec<HttpFilter> = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let ff = at(field, "http_filters", i);
        let XdsHttpFilter {
            name,
            is_optional,
            disabled,
            config_type,
        } = f;
        let typed = match config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        if name.is_empty() {
            cx.err(join(&ff, "name"), "must not be empty");
        } else if out.iter().any(|o| *o.name == **name) {
            cx.err(
                join(&ff, "name"),
                format!("duplicate http filter name '{name}'"),
            );
        }
        if let Some(Any { type_url, value }) = typed
            && type_url == type_url::ROUTER
        {
            router_seen = true;
            if *disabled {
                cx.err(
                    join(&ff, "disabled"),
                    "the router filter cannot be disabled",
                );
            }
            if i != last {
                cx.err(&ff, "the router filter must be the last http filter");
            }
            match XdsRouter::decode(value.as_slice()) {
                Ok(router) => {
                    super::listener::router_filter(cx, &join(&ff, "typed_config"), &router)
                }
                Err(e) => cx.err(
                    join(&ff, "typed_config"),
                    format!("cannot decode Router: {e}"),
                ),
            }
            continue;
        }
        let known = typed.and_then(|any| filter_kind(cx, &join(&ff, "typed_config"), any, false));
        match known {
            Some(Some(config)) => out.push(HttpFilter {
                name: Arc::from(name.as_str()),
                disabled: *disabled,
                config,
            }),
            // Known but invalid: the error is recorded.
            Some(None) => {}
            None if *is_optional || *disabled => {}
            None => {
                let kind = match (typed, config_type) {
                    (Some(any), _) => any.type_url.clone(),
                    (None, Some(http_filter::ConfigType::ConfigDiscovery(_))) => {
                        "config_discovery".to_owned()
                    }
                    _ => "no typed_config".to_owned(),
                };
                cx.err(
                    &ff,
                    format!("http filter '{name}' ({kind}) is not supported by legate"),
                );
            }
        }
    }
    if !router_seen {
        cx.err(
            join(field, "http_filters"),
            "must end with the router filter (envoy.filters.http.router)",
        );
    }
    out
}

/// A filter configuration legate implements: `None` when the type is not one of them,
/// `Some(None)` when it is but the configuration is invalid (errors recorded).
fn filter_kind(
    cx: &mut Ctx,
    field: &str,
    any: &Any,
    per_route: bool,
) -> Option<Option<FilterKind>> {
    let Any { type_url, value } = any;
    match type_url.as_str() {
        type_url::LOCAL_RATE_LIMIT => Some(match XdsLocalRateLimit::decode(value.as_slice()) {
            Ok(l) => local_rate_limit(cx, field, &l, per_route)
                .map(|l| FilterKind::LocalRateLimit(Arc::new(l))),
            Err(e) => {
                cx.err(field, format!("cannot decode LocalRateLimit: {e}"));
                None
            }
        }),
        type_url::FAULT => Some(match XdsHttpFault::decode(value.as_slice()) {
            Ok(f) => fault(cx, field, &f).map(|f| FilterKind::Fault(Arc::new(f))),
            Err(e) => {
                cx.err(field, format!("cannot decode HTTPFault: {e}"));
                None
            }
        }),
        type_url::CREDENTIAL_INJECTOR => Some(
            super::credential::credential_injector(cx, field, any, per_route)
                .map(|c| FilterKind::CredentialInjector(Arc::new(c))),
        ),
        _ => None,
    }
}

fn fault(cx: &mut Ctx, field: &str, f: &XdsHttpFault) -> Option<Fault> {
    let XdsHttpFault {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        response_rate_limit,
        // Ignored: legate has no runtime layer; Envoy without a value for the key uses the
        // configured one too.
        delay_percent_runtime: _,
        abort_percent_runtime: _,
        delay_duration_runtime: _,
        abort_http_status_runtime: _,
        max_active_faults_runtime: _,
        response_rate_limit_percent_runtime: _,
        abort_grpc_status_runtime: _,
        // Ignored: statistics only.
        disable_downstream_cluster_stats: _,
        filter_metadata,
    } = f;
    let before = cx.error_count();
    refuse!(cx, field; upstream_cluster, headers, downstream_nodes, response_rate_limit, filter_metadata);
    let delay = delay.as_ref().and_then(|d| {
        let f = join(field, "delay");
        let XdsFaultDelay {
            percentage,
            fault_delay_secifier,
        } = d;
        let fixed = match fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(d)) => {
                Some(duration(cx, &join(&f, "fixed_delay"), d)?)
            }
            Some(FaultDelaySecifier::HeaderDelay(_)) => None,
            None => {
                cx.err(&f, "one of fixed_delay or header_delay is required");
                return None;
            }
        };
        Some(FaultDelay {
            fixed,
            percentage: fraction(cx, &join(&f, "percentage"), percentage.as_ref())?,
        })
    });
    let abort = abort.as_ref().and_then(|a| {
        let f = join(field, "abort");
        let XdsFaultAbort {
            percentage,
            response_body,
            error_type,
        } = a;
        refuse!(cx, &f; response_body);
        let (http_status, grpc_status) = match error_type {
            Some(ErrorType::HttpStatus(code)) => match u16::try_from(*code) {
                Ok(c) if (200..600).contains(&c) => (Some(c), None),
                _ => {
                    cx.err(
                        join(&f, "http_status"),
                        format!("{code} is not in 200..600"),
                    );
                    return None;
                }
            },
            Some(ErrorType::HeaderAbort(_)) => (None, None),
            // gRPC's codes are 0..=16; Envoy takes any number and sends it as is, legate
            // refuses what no gRPC client understands.
            Some(ErrorType::GrpcStatus(code)) if *code <= 16 => (None, Some(*code)),
            Some(ErrorType::GrpcStatus(code)) => {
                cx.err(
                    join(&f, "grpc_status"),
                    format!("{code} is not a gRPC status code (0..=16)"),
                );
                return None;
            }
            None => {
                cx.err(
                    &f,
                    "one of http_status, grpc_status or header_abort is required",
                );
                return None;
            }
        };
        Some(FaultAbort {
            http_status,
            grpc_status,
            percentage: fraction(cx, &join(&f, "percentage"), percentage.as_ref())?,
        })
    });
    let out = Fault {
        delay,
        abort,
        max_active_faults: max_active_faults.map(|UInt32Value { value }| value),
    };
    (cx.error_count() == before).then_some(out)
}

/// A `FractionalPercent` as written; unset is 0 %, as in Envoy.
fn fraction(cx: &mut Ctx, field: &str, p: Option<&FractionalPercent>) -> Option<Fraction> {
    let Some(FractionalPercent {
        numerator,
        denominator,
    }) = p.copied()
    else {
        return Some(Fraction {
            numerator: 0,
            denominator: 100,
        });
    };
    let denominator =
        match enum_value::<DenominatorType>(cx, &join(field, "denominator"), denominator)? {
            DenominatorType::Hundred => 100,
            DenominatorType::TenThousand => 10_000,
            DenominatorType::Million => 1_000_000,
        };
    Some(Fraction {
        numerator: numerator.min(denominator),
        denominator,
    })
}

/// `typed_per_filter_config` of a virtual host or route. Entries are sorted by name so the
/// result does not depend on the map's order.
pub(super) fn per_filter_configs(
    cx: &mut Ctx,
    base: &str,
    map: &HashMap<String, Any>,
) -> PerFilterConfigs {
    let field = join(base, "typed_per_filter_config");
    if map.len() > MAX_PER_FILTER_CONFIGS {
        cx.err(
            &field,
            format!(
                "{} entries is more than legate's limit of {MAX_PER_FILTER_CONFIGS}",
                map.len()
            ),
        );
        return Arc::from([]);
    }
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(any) = map.get(name) else { continue };
        let f = format!("{field}[\"{name}\"]");
        if let Some(c) = per_filter_config(cx, &f, any) {
            out.push((Arc::from(name.as_str()), c));
        }
    }
    Arc::from(out)
}

fn per_filter_config(cx: &mut Ctx, field: &str, any: &Any) -> Option<PerFilterConfig> {
    if any.type_url == type_url::FILTER_CONFIG {
        let XdsFilterConfig {
            config,
            is_optional,
            disabled,
        } = match XdsFilterConfig::decode(any.value.as_slice()) {
            Ok(c) => c,
            Err(e) => {
                cx.err(field, format!("cannot decode FilterConfig: {e}"));
                return None;
            }
        };
        if disabled {
            return Some(PerFilterConfig::Disabled);
        }
        let Some(inner) = config else {
            return Some(PerFilterConfig::Enabled);
        };
        let inner_field = join(field, "config");
        return match filter_kind(cx, &inner_field, &inner, true) {
            Some(k) => k.map(PerFilterConfig::Config),
            // Envoy skips an optional override it does not know.
            None if is_optional => None,
            None => {
                cx.err(
                    inner_field,
                    format!(
                        "filter type '{}' is not supported by legate",
                        inner.type_url
                    ),
                );
                None
            }
        };
    }
    match filter_kind(cx, field, any, true) {
        Some(k) => k.map(PerFilterConfig::Config),
        None => {
            cx.err(
                field,
                format!("filter type '{}' is not supported by legate", any.type_url),
            );
            None
        }
    }
}

fn local_rate_limit(
    cx: &mut Ctx,
    field: &str,
    l: &XdsLocalRateLimit,
    per_route: bool,
) -> Option<LocalRateLimit> {
    let XdsLocalRateLimit {
        stat_prefix,
        status,
        token_bucket,
        filter_enabled,
        filter_enforced,
        request_headers_to_add_when_not_enforced,
        response_headers_to_add,
        descriptors,
        stage,
        local_rate_limit_per_downstream_connection,
        local_cluster_rate_limit,
        enable_x_ratelimit_headers,
        vh_rate_limits,
        always_consume_default_token_bucket,
        rate_limited_as_resource_exhausted,
        rate_limits,
        max_dynamic_descriptors,
        enable_retry_after_header,
    } = l;
    let before = cx.error_count();
    // The route's and virtual host's `rate_limits` are not read: descriptors come from the
    // filter's own `rate_limits` (which Envoy prefers when both are set).
    refuse!(cx, field; stage, local_rate_limit_per_downstream_connection, vh_rate_limits);
    if local_cluster_rate_limit.is_some() {
        cx.unsupported(field, "local_cluster_rate_limit");
    }
    let max_dynamic_descriptors = match max_dynamic_descriptors {
        None => DEFAULT_MAX_DYNAMIC_DESCRIPTORS,
        Some(UInt32Value { value }) if (1..=MAX_DYNAMIC_DESCRIPTORS).contains(value) => *value,
        Some(UInt32Value { value }) => {
            cx.err(
                join(field, "max_dynamic_descriptors"),
                format!("{value} is not within 1..={MAX_DYNAMIC_DESCRIPTORS}"),
            );
            DEFAULT_MAX_DYNAMIC_DESCRIPTORS
        }
    };
    let descriptors = local_descriptors(cx, field, descriptors);
    let rate_limits = descriptor_actions(cx, field, rate_limits);
    if stat_prefix.is_empty() {
        cx.err(join(field, "stat_prefix"), "must not be empty");
    }
    let status = match status {
        None => 429,
        Some(HttpStatus { code }) => match u16::try_from(*code) {
            // Envoy answers 429 for anything below 400.
            Ok(c) if (400..=599).contains(&c) => c,
            Ok(c) if c < 400 => 429,
            _ => {
                cx.err(
                    join(field, "status.code"),
                    format!("{code} is not an HTTP status"),
                );
                429
            }
        },
    };
    let token_bucket = match token_bucket {
        Some(b) => token_bucket_of(cx, &join(field, "token_bucket"), b),
        None if per_route => {
            cx.err(
                join(field, "token_bucket"),
                "required in a per-route configuration",
            );
            None
        }
        None => None,
    };
    let x_ratelimit_headers = match enum_value::<XRateLimitHeadersRfcVersion>(
        cx,
        &join(field, "enable_x_ratelimit_headers"),
        *enable_x_ratelimit_headers,
    ) {
        Some(XRateLimitHeadersRfcVersion::DraftVersion03) => true,
        Some(XRateLimitHeadersRfcVersion::Off) | None => false,
    };
    let out = LocalRateLimit {
        stat_prefix: Arc::from(stat_prefix.as_str()),
        status,
        token_bucket,
        enabled_ppm: runtime_fraction(cx, &join(field, "filter_enabled"), filter_enabled.as_ref()),
        enforced_ppm: runtime_fraction(
            cx,
            &join(field, "filter_enforced"),
            filter_enforced.as_ref(),
        ),
        request_headers_to_add_when_not_enforced: headers_to_add(
            cx,
            field,
            "request_headers_to_add_when_not_enforced",
            request_headers_to_add_when_not_enforced,
        ),
        response_headers_to_add: headers_to_add(
            cx,
            field,
            "response_headers_to_add",
            response_headers_to_add,
        ),
        x_ratelimit_headers,
        grpc_resource_exhausted: *rate_limited_as_resource_exhausted,
        descriptors,
        rate_limits,
        always_consume_default: always_consume_default_token_bucket.is_none_or(|b| b.value),
        max_dynamic_descriptors,
        retry_after_header: *enable_retry_after_header,
    };
    (cx.error_count() == before).then_some(out)
}

/// Envoy's default `max_dynamic_descriptors`.
const DEFAULT_MAX_DYNAMIC_DESCRIPTORS: u32 = 20;
/// legate's bound on it: each distinct value is a bucket held in memory.
const MAX_DYNAMIC_DESCRIPTORS: u32 = 100_000;
/// Bounds on the descriptor configuration a request is checked against.
const MAX_DESCRIPTORS: usize = 64;
const MAX_ENTRIES: usize = 16;

fn local_descriptors(
    cx: &mut Ctx,
    field: &str,
    list: &[envoy_types::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor],
) -> Vec<LocalDescriptor> {
    if list.len() > MAX_DESCRIPTORS {
        cx.err(
            join(field, "descriptors"),
            format!(
                "{} descriptors is more than legate's limit of {MAX_DESCRIPTORS}",
                list.len()
            ),
        );
        return Vec::new();
    }
    let mut out: Vec<LocalDescriptor> = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let f = at(field, "descriptors", i);
        if d.shadow_mode {
            cx.unsupported(&f, "shadow_mode");
        }
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            cx.err(
                join(&f, "entries"),
                format!("needs 1 to {MAX_ENTRIES} entries, has {}", d.entries.len()),
            );
            continue;
        }
        let mut entries = Vec::with_capacity(d.entries.len());
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                cx.err(join(&at(&f, "entries", j), "key"), "must not be empty");
            }
            entries.push(DescriptorEntry {
                key: Arc::from(e.key.as_str()),
                value: (!e.value.is_empty()).then(|| Arc::from(e.value.as_str())),
            });
        }
        let Some(token_bucket) = d
            .token_bucket
            .as_ref()
            .and_then(|b| token_bucket_of(cx, &join(&f, "token_bucket"), b))
        else {
            if d.token_bucket.is_none() {
                cx.err(join(&f, "token_bucket"), "required");
            }
            continue;
        };
        if out.iter().any(|o| o.entries == entries) {
            cx.err(&f, "the same entries as an earlier descriptor");
            continue;
        }
        out.push(LocalDescriptor {
            entries,
            token_bucket,
        });
    }
    out
}

fn descriptor_actions(
    cx: &mut Ctx,
    base: &str,
    list: &[envoy_types::pb::envoy::config::route::v3::RateLimit],
) -> Vec<DescriptorActions> {
    use envoy_types::pb::envoy::config::route::v3::RateLimit as XdsRateLimit;
    use envoy_types::pb::envoy::config::route::v3::rate_limit::action::ActionSpecifier;
    if list.len() > MAX_DESCRIPTORS {
        cx.err(
            join(base, "rate_limits"),
            format!(
                "{} entries is more than legate's limit of {MAX_DESCRIPTORS}",
                list.len()
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let f = at(base, "rate_limits", i);
        let XdsRateLimit {
            stage,
            disable_key,
            actions,
            limit,
            hits_addend,
            apply_on_stream_done,
            x_ratelimit_option,
        } = r;
        if stage.is_some_and(|s| s.value != 0) {
            cx.unsupported(&f, "stage");
        }
        refuse!(cx, &f; disable_key, limit, hits_addend, apply_on_stream_done, x_ratelimit_option);
        if actions.is_empty() || actions.len() > MAX_ENTRIES {
            cx.err(
                join(&f, "actions"),
                format!("needs 1 to {MAX_ENTRIES} actions, has {}", actions.len()),
            );
            continue;
        }
        let mut kept = Vec::with_capacity(actions.len());
        for (j, a) in actions.iter().enumerate() {
            let af = at(&f, "actions", j);
            match &a.action_specifier {
                Some(ActionSpecifier::RequestHeaders(h)) => {
                    if http::HeaderName::from_bytes(h.header_name.as_bytes()).is_err() {
                        cx.err(
                            join(&af, "request_headers.header_name"),
                            format!("{:?} is not a header name", h.header_name),
                        );
                        continue;
                    }
                    if h.descriptor_key.is_empty() {
                        cx.err(
                            join(&af, "request_headers.descriptor_key"),
                            "must not be empty",
                        );
                        continue;
                    }
                    kept.push(DescriptorAction::RequestHeader {
                        header: Arc::from(h.header_name.to_ascii_lowercase().as_str()),
                        key: Arc::from(h.descriptor_key.as_str()),
                        skip_if_absent: h.skip_if_absent,
                    });
                }
                Some(ActionSpecifier::RemoteAddress(_)) => {
                    kept.push(DescriptorAction::RemoteAddress);
                }
                Some(ActionSpecifier::GenericKey(g)) => {
                    if !g.default_value.is_empty() {
                        cx.unsupported(&join(&af, "generic_key"), "default_value");
                    }
                    let key = if g.descriptor_key.is_empty() {
                        "generic_key"
                    } else {
                        g.descriptor_key.as_str()
                    };
                    kept.push(DescriptorAction::GenericKey {
                        key: Arc::from(key),
                        value: Arc::from(g.descriptor_value.as_str()),
                    });
                }
                Some(_) => {
                    cx.err(
                        &af,
                        "not supported by legate (request_headers, remote_address and \
                         generic_key are)",
                    );
                }
                None => cx.err(&af, "an action is required"),
            }
        }
        out.push(DescriptorActions { actions: kept });
    }
    out
}

fn token_bucket_of(cx: &mut Ctx, field: &str, b: &XdsTokenBucket) -> Option<TokenBucket> {
    let XdsTokenBucket {
        max_tokens,
        tokens_per_fill,
        fill_interval,
    } = b;
    if *max_tokens == 0 {
        cx.err(join(field, "max_tokens"), "must be greater than zero");
    }
    let tokens_per_fill = match tokens_per_fill {
        None => 1,
        Some(UInt32Value { value: 0 }) => {
            cx.err(join(field, "tokens_per_fill"), "must be greater than zero");
            1
        }
        Some(UInt32Value { value }) => *value,
    };
    let interval_field = join(field, "fill_interval");
    let fill_interval = match fill_interval {
        None => {
            cx.err(&interval_field, "required");
            return None;
        }
        Some(d) => duration(cx, &interval_field, d)?,
    };
    if fill_interval < MIN_FILL_INTERVAL {
        cx.err(
            interval_field,
            format!(
                "must be at least {} ms (Envoy's limit for local rate limits)",
                MIN_FILL_INTERVAL.as_millis()
            ),
        );
        return None;
    }
    (*max_tokens > 0).then_some(TokenBucket {
        max_tokens: *max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

/// A `RuntimeFractionalPercent` in parts per million: its `default_value`, since legate has
/// no runtime layer to look `runtime_key` up in (Envoy, without a runtime value for the key,
/// uses the default too). Unset: 0, Envoy's "off for safety".
fn runtime_fraction(cx: &mut Ctx, field: &str, r: Option<&RuntimeFractionalPercent>) -> u32 {
    let Some(RuntimeFractionalPercent {
        default_value,
        runtime_key: _,
    }) = r
    else {
        return 0;
    };
    match default_value {
        None => 0,
        Some(p) => fraction_ppm(cx, &join(field, "default_value"), p),
    }
}

/// A `FractionalPercent` in parts per million; above 100 % reads as 100 %, as in Envoy.
pub(super) fn fraction_ppm(cx: &mut Ctx, field: &str, p: &FractionalPercent) -> u32 {
    let FractionalPercent {
        numerator,
        denominator,
    } = *p;
    let per_million =
        match enum_value::<DenominatorType>(cx, &join(field, "denominator"), denominator) {
            Some(DenominatorType::Hundred) => 10_000,
            Some(DenominatorType::TenThousand) => 100,
            Some(DenominatorType::Million) => 1,
            None => return 0,
        };
    numerator.saturating_mul(per_million).min(1_000_000)
}
