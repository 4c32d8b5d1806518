//! The resilience part of a route: `retry_policy` and `hedge_policy` (route, else virtual
//! host), the retry buffer limits, and legate's own keys in route metadata.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Metadata as XdsMetadata;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader as XdsResetHeader,
    ResetHeaderFormat as XdsResetHeaderFormat, RetryBackOff as XdsRetryBackOff, RetryHostPredicate,
    retry_host_predicate,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as XdsHeaderMatcher, HedgePolicy as XdsHedgePolicy, RetryPolicy as XdsRetryPolicy,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Any, UInt32Value, UInt64Value};

use super::super::common::{
    Ctx, at, duration, enum_value, header_name, join, legate_metadata, refuse, timeout, value_bool,
};
use super::header_matcher;
use crate::{
    HeaderMatcher, RateLimitedBackOff, ResetHeader, ResetHeaderFormat, RetryBackOff, RetryOn,
    RetryPolicy,
};

/// The one retry host predicate legate implements.
const PREVIOUS_HOSTS_NAME: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// Envoy's back-off when `retry_back_off` is unset.
const DEFAULT_BACK_OFF: RetryBackOff = RetryBackOff {
    base: Duration::from_millis(25),
    max: Duration::from_millis(250),
};
/// Envoy rounds shorter back-off intervals up to this.
const MIN_BACK_OFF: Duration = Duration::from_millis(1);
/// Envoy's default `rate_limited_retry_back_off.max_interval`.
const DEFAULT_RATE_LIMITED_MAX: Duration = Duration::from_secs(300);
/// The largest `request_body_buffer_limit` accepted: one request's retry copy. A body is
/// held in memory whole while its attempts run, so a control plane must not be able to ask
/// for gigabytes; larger values are refused (NACK), not silently capped. The proxy's global
/// and per-connection retry buffer budgets bound the sum over requests.
pub const MAX_RETRY_BUFFER_LIMIT: u64 = 64 * 1024 * 1024;
/// The route metadata key (under `legate`) that allows retrying non-idempotent requests.
const RETRY_NON_IDEMPOTENT: &str = "retry_non_idempotent";

/// The resilience settings a virtual host hands down to its routes, and that a route
/// replaces with its own.
#[derive(Clone, Debug, Default)]
pub(super) struct Resilience {
    pub(super) retry_policy: Option<Arc<RetryPolicy>>,
    pub(super) hedge_on_per_try_timeout: bool,
    /// From `request_body_buffer_limit` / `per_request_buffer_limit_bytes`; `None` when
    /// neither is set.
    pub(super) buffer_limit: Option<u64>,
    /// Route metadata `legate.retry_non_idempotent` (routes only).
    pub(super) retry_non_idempotent: bool,
}

impl Resilience {
    /// The effective buffer limit.
    pub(super) fn retry_buffer_limit(&self) -> u64 {
        self.buffer_limit
            .unwrap_or(crate::DEFAULT_RETRY_BUFFER_LIMIT)
    }
}

/// The virtual host's policies, which its routes inherit unless they set their own.
pub(super) fn virtual_host(
    cx: &mut Ctx,
    field: &str,
    retry: Option<&XdsRetryPolicy>,
    hedge: Option<&XdsHedgePolicy>,
    per_request_buffer_limit_bytes: Option<&UInt32Value>,
    request_body_buffer_limit: Option<&UInt64Value>,
) -> Resilience {
    Resilience {
        retry_policy: retry
            .and_then(|r| retry_policy(cx, &join(field, "retry_policy"), r))
            .map(Arc::new),
        hedge_on_per_try_timeout: hedge
            .is_some_and(|h| hedge_policy(cx, &join(field, "hedge_policy"), h)),
        buffer_limit: buffer_limit(
            cx,
            field,
            per_request_buffer_limit_bytes,
            request_body_buffer_limit,
        ),
        retry_non_idempotent: false,
    }
}

/// A route's own buffer limit and metadata on top of what its virtual host gives.
pub(super) fn route(
    cx: &mut Ctx,
    field: &str,
    vhost: &Resilience,
    metadata: Option<&XdsMetadata>,
    per_request_buffer_limit_bytes: Option<&UInt32Value>,
    request_body_buffer_limit: Option<&UInt64Value>,
) -> Resilience {
    Resilience {
        retry_policy: vhost.retry_policy.clone(),
        hedge_on_per_try_timeout: vhost.hedge_on_per_try_timeout,
        buffer_limit: buffer_limit(
            cx,
            field,
            per_request_buffer_limit_bytes,
            request_body_buffer_limit,
        )
        .or(vhost.buffer_limit),
        retry_non_idempotent: route_metadata(cx, &join(field, "metadata"), metadata),
    }
}

/// A route action's `retry_policy` and `hedge_policy`, each replacing the inherited one whole
/// when set (as in Envoy: nothing is merged).
pub(super) fn route_action(
    cx: &mut Ctx,
    field: &str,
    inherited: &Resilience,
    retry: Option<&XdsRetryPolicy>,
    hedge: Option<&XdsHedgePolicy>,
) -> Resilience {
    let retry_policy = match retry {
        Some(r) => retry_policy(cx, &join(field, "retry_policy"), r).map(Arc::new),
        None => inherited.retry_policy.clone(),
    };
    let hedge_on_per_try_timeout = match hedge {
        Some(h) => hedge_policy(cx, &join(field, "hedge_policy"), h),
        None => inherited.hedge_on_per_try_timeout,
    };
    Resilience {
        retry_policy,
        hedge_on_per_try_timeout,
        ..inherited.clone()
    }
}

/// `request_body_buffer_limit` wins over the deprecated `per_request_buffer_limit_bytes`.
/// Envoy caps the deprecated field by the listener's `per_connection_buffer_limit_bytes`,
/// which legate does not let one set, so by its default. A value above
/// [`MAX_RETRY_BUFFER_LIMIT`] is refused.
fn buffer_limit(
    cx: &mut Ctx,
    field: &str,
    deprecated: Option<&UInt32Value>,
    current: Option<&UInt64Value>,
) -> Option<u64> {
    match (current, deprecated) {
        (Some(UInt64Value { value }), _) if *value > MAX_RETRY_BUFFER_LIMIT => {
            cx.err(
                join(field, "request_body_buffer_limit"),
                format!(
                    "{value} bytes is above legate's maximum of {MAX_RETRY_BUFFER_LIMIT} (64 MiB) \
                     for a request body kept in memory for retries"
                ),
            );
            None
        }
        (Some(UInt64Value { value }), _) => Some(*value),
        (None, Some(UInt32Value { value })) => {
            Some(u64::from(*value).min(crate::DEFAULT_RETRY_BUFFER_LIMIT))
        }
        (None, None) => None,
    }
}

/// `metadata.filter_metadata.legate` of a route: only `retry_non_idempotent` is known.
fn route_metadata(cx: &mut Ctx, field: &str, metadata: Option<&XdsMetadata>) -> bool {
    let mut retry_non_idempotent = false;
    for (path, key, value) in legate_metadata(cx, field, metadata) {
        if key == RETRY_NON_IDEMPOTENT {
            retry_non_idempotent = value_bool(cx, &path, value).unwrap_or(false);
        } else {
            cx.err(
                path,
                format!("unknown key '{key}' (legate knows {RETRY_NON_IDEMPOTENT} on routes)"),
            );
        }
    }
    retry_non_idempotent
}

/// `hedge_policy`: only hedging on a per-try timeout is implemented.
fn hedge_policy(cx: &mut Ctx, field: &str, h: &XdsHedgePolicy) -> bool {
    let XdsHedgePolicy {
        initial_requests,
        additional_request_chance,
        hedge_on_per_try_timeout,
    } = h;
    match initial_requests {
        None | Some(UInt32Value { value: 1 }) => {}
        Some(UInt32Value { value: 0 }) => {
            cx.err(join(field, "initial_requests"), "must be at least 1");
        }
        Some(UInt32Value { value }) => cx.err(
            join(field, "initial_requests"),
            format!("{value} is not supported by legate (only 1)"),
        ),
    }
    if let Some(FractionalPercent {
        numerator,
        denominator: _,
    }) = additional_request_chance
        && *numerator != 0
    {
        cx.unsupported(field, "additional_request_chance");
    }
    *hedge_on_per_try_timeout
}

/// `retry_policy`, validated.
fn retry_policy(cx: &mut Ctx, field: &str, r: &XdsRetryPolicy) -> Option<RetryPolicy> {
    let XdsRetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = r;
    let before = cx.error_count();
    refuse!(cx, field; retry_priority, retry_options_predicates, refresh_cluster_on_retry);
    let retry_on = conditions(cx, &join(field, "retry_on"), retry_on);
    let previous_hosts = host_predicates(cx, field, retry_host_predicate);
    let host_selection_retry_max_attempts = match *host_selection_retry_max_attempts {
        // Unset: Envoy's documented default of one more selection.
        0 => 1,
        n => match u32::try_from(n) {
            Ok(n) => n,
            Err(_) if n < 0 => {
                cx.err(
                    join(field, "host_selection_retry_max_attempts"),
                    "must not be negative",
                );
                1
            }
            Err(_) => {
                cx.err(
                    join(field, "host_selection_retry_max_attempts"),
                    format!("must be at most {}", u32::MAX),
                );
                1
            }
        },
    };
    let retriable_status_codes: Vec<u16> = retriable_status_codes
        .iter()
        .enumerate()
        .filter_map(|(i, &code)| match u16::try_from(code) {
            Ok(c) if (100..=599).contains(&c) => Some(c),
            _ => {
                cx.err(
                    at(field, "retriable_status_codes", i),
                    format!("{code} is not between 100 and 599"),
                );
                None
            }
        })
        .collect();
    let back_off = match retry_back_off {
        Some(b) => back_off(cx, &join(field, "retry_back_off"), b),
        None => DEFAULT_BACK_OFF,
    };
    let rate_limited_back_off = rate_limited_retry_back_off
        .as_ref()
        .and_then(|b| rate_limited(cx, &join(field, "rate_limited_retry_back_off"), b));
    let retriable_headers = header_matchers(cx, field, "retriable_headers", retriable_headers);
    let retriable_request_headers = header_matchers(
        cx,
        field,
        "retriable_request_headers",
        retriable_request_headers,
    );
    let policy = RetryPolicy {
        retry_on,
        num_retries: num_retries.map_or(1, |UInt32Value { value }| value),
        per_try_timeout: timeout(cx, &join(field, "per_try_timeout"), per_try_timeout, None),
        per_try_idle_timeout: timeout(
            cx,
            &join(field, "per_try_idle_timeout"),
            per_try_idle_timeout,
            None,
        ),
        back_off,
        rate_limited_back_off,
        retriable_status_codes,
        retriable_headers,
        retriable_request_headers,
        previous_hosts,
        host_selection_retry_max_attempts,
    };
    (cx.error_count() == before).then_some(policy)
}

/// What a `retry_on` entry means to legate.
enum Condition {
    Supported(fn(&mut RetryOn)),
    /// An Envoy condition legate does not implement.
    Unsupported,
}

fn condition(name: &str) -> Option<Condition> {
    use Condition::{Supported, Unsupported};
    Some(match name {
        "5xx" => Supported(|r| r.five_xx = true),
        "gateway-error" => Supported(|r| r.gateway_error = true),
        "reset" => Supported(|r| r.reset = true),
        "reset-before-request" => Supported(|r| r.reset_before_request = true),
        "connect-failure" => Supported(|r| r.connect_failure = true),
        "refused-stream" => Supported(|r| r.refused_stream = true),
        "retriable-4xx" => Supported(|r| r.retriable_4xx = true),
        "retriable-status-codes" => Supported(|r| r.retriable_status_codes = true),
        "retriable-headers" => Supported(|r| r.retriable_headers = true),
        // Envoy's gRPC conditions (as in x-envoy-retry-grpc-on): `grpc-status` in the
        // response headers.
        "cancelled" => Supported(|r| r.grpc_cancelled = true),
        "deadline-exceeded" => Supported(|r| r.grpc_deadline_exceeded = true),
        "resource-exhausted" => Supported(|r| r.grpc_resource_exhausted = true),
        "internal" => Supported(|r| r.grpc_internal = true),
        "unavailable" => Supported(|r| r.grpc_unavailable = true),
        "envoy-ratelimited" | "http3-post-connect-failure" => Unsupported,
        _ => return None,
    })
}

/// `retry_on`: comma-separated, blanks around names ignored, as Envoy parses it.
fn conditions(cx: &mut Ctx, field: &str, retry_on: &str) -> RetryOn {
    let mut on = RetryOn::default();
    for name in retry_on.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match condition(name) {
            Some(Condition::Supported(set)) => set(&mut on),
            Some(Condition::Unsupported) => {
                cx.err(field, format!("'{name}' is not supported by legate"));
            }
            None => cx.err(field, format!("unknown retry condition '{name}'")),
        }
    }
    on
}

/// `retry_host_predicate`: only `previous_hosts` is implemented.
fn host_predicates(cx: &mut Ctx, field: &str, predicates: &[RetryHostPredicate]) -> bool {
    let mut previous_hosts = false;
    for (i, p) in predicates.iter().enumerate() {
        let RetryHostPredicate { name, config_type } = p;
        let known = match config_type {
            Some(retry_host_predicate::ConfigType::TypedConfig(Any { type_url, value: _ })) => {
                type_url == PREVIOUS_HOSTS_TYPE_URL
            }
            None => name == PREVIOUS_HOSTS_NAME,
        };
        if known {
            previous_hosts = true;
        } else {
            let what = match config_type {
                Some(retry_host_predicate::ConfigType::TypedConfig(Any { type_url, value: _ })) => {
                    type_url.as_str()
                }
                None => name.as_str(),
            };
            cx.err(
                at(field, "retry_host_predicate", i),
                format!("'{what}' is not supported by legate (only {PREVIOUS_HOSTS_NAME})"),
            );
        }
    }
    previous_hosts
}

/// `retry_back_off`: `base_interval` is required; `max_interval` defaults to 10 × base.
fn back_off(cx: &mut Ctx, field: &str, b: &XdsRetryBackOff) -> RetryBackOff {
    let XdsRetryBackOff {
        base_interval,
        max_interval,
    } = b;
    let base = match base_interval {
        None => {
            cx.err(join(field, "base_interval"), "required");
            return DEFAULT_BACK_OFF;
        }
        Some(d) => match duration(cx, &join(field, "base_interval"), d) {
            Some(d) if d.is_zero() => {
                cx.err(join(field, "base_interval"), "must be greater than zero");
                return DEFAULT_BACK_OFF;
            }
            Some(d) => d,
            None => return DEFAULT_BACK_OFF,
        },
    };
    let max = match max_interval {
        None => base.saturating_mul(10),
        Some(d) => match duration(cx, &join(field, "max_interval"), d) {
            Some(d) if d < base => {
                cx.err(
                    join(field, "max_interval"),
                    "must not be less than base_interval",
                );
                return DEFAULT_BACK_OFF;
            }
            Some(d) => d,
            None => return DEFAULT_BACK_OFF,
        },
    };
    RetryBackOff {
        base: base.max(MIN_BACK_OFF),
        max: max.max(MIN_BACK_OFF),
    }
}

/// `rate_limited_retry_back_off`.
fn rate_limited(
    cx: &mut Ctx,
    field: &str,
    b: &RateLimitedRetryBackOff,
) -> Option<RateLimitedBackOff> {
    let RateLimitedRetryBackOff {
        reset_headers,
        max_interval,
    } = b;
    let before = cx.error_count();
    if reset_headers.is_empty() {
        cx.err(
            join(field, "reset_headers"),
            "at least one reset header is required",
        );
    }
    let reset_headers: Vec<ResetHeader> = reset_headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| reset_header(cx, &at(field, "reset_headers", i), h))
        .collect();
    let max_interval = match max_interval {
        None => DEFAULT_RATE_LIMITED_MAX,
        Some(d) => match duration(cx, &join(field, "max_interval"), d) {
            Some(d) if d.is_zero() => {
                cx.err(join(field, "max_interval"), "must be greater than zero");
                DEFAULT_RATE_LIMITED_MAX
            }
            Some(d) => d,
            None => DEFAULT_RATE_LIMITED_MAX,
        },
    };
    (cx.error_count() == before).then_some(RateLimitedBackOff {
        reset_headers,
        max_interval,
    })
}

fn reset_header(cx: &mut Ctx, field: &str, h: &XdsResetHeader) -> Option<ResetHeader> {
    let XdsResetHeader { name, format } = h;
    let format =
        enum_value::<XdsResetHeaderFormat>(cx, &join(field, "format"), *format).map(|f| match f {
            XdsResetHeaderFormat::Seconds => ResetHeaderFormat::Seconds,
            XdsResetHeaderFormat::UnixTimestamp => ResetHeaderFormat::UnixTimestamp,
        });
    let name = header_name(cx, &join(field, "name"), name);
    Some(ResetHeader {
        name: name?,
        format: format?,
    })
}

fn header_matchers(
    cx: &mut Ctx,
    base: &str,
    field: &str,
    matchers: &[XdsHeaderMatcher],
) -> Vec<HeaderMatcher> {
    matchers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| header_matcher(cx, &at(base, field, i), m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_condition_sets_its_flag() {
        let mut cx = Ctx::new(crate::ResourceKind::RouteConfiguration, "rc");
        let on = conditions(
            &mut cx,
            "f",
            "5xx, gateway-error,reset,reset-before-request,connect-failure,refused-stream,\
             retriable-4xx,retriable-status-codes,retriable-headers,,cancelled, \
             deadline-exceeded,resource-exhausted,internal,unavailable",
        );
        assert_eq!(cx.error_count(), 0);
        assert_eq!(
            on,
            RetryOn {
                five_xx: true,
                gateway_error: true,
                reset: true,
                reset_before_request: true,
                connect_failure: true,
                refused_stream: true,
                retriable_4xx: true,
                retriable_status_codes: true,
                retriable_headers: true,
                grpc_cancelled: true,
                grpc_deadline_exceeded: true,
                grpc_resource_exhausted: true,
                grpc_internal: true,
                grpc_unavailable: true,
            }
        );
    }

    #[test]
    fn buffer_limit_precedence() {
        fn limit(cx: &mut Ctx, d: Option<u32>, c: Option<u64>) -> Option<u64> {
            let d = d.map(|value| UInt32Value { value });
            let c = c.map(|value| UInt64Value { value });
            buffer_limit(cx, "vh", d.as_ref(), c.as_ref())
        }
        let cx = &mut Ctx::new(crate::ResourceKind::RouteConfiguration, "rc");
        assert_eq!(limit(cx, None, None), None);
        assert_eq!(limit(cx, Some(10), None), Some(10));
        assert_eq!(
            limit(cx, Some(u32::MAX), None),
            Some(crate::DEFAULT_RETRY_BUFFER_LIMIT)
        );
        assert_eq!(limit(cx, Some(10), Some(1 << 20)), Some(1 << 20));
        let max = MAX_RETRY_BUFFER_LIMIT;
        assert_eq!(limit(cx, None, Some(max)), Some(max));
        assert_eq!(cx.error_count(), 0);
        // Above the maximum: refused, whichever other field is set.
        assert_eq!(limit(cx, Some(10), Some(1 << 40)), None);
        assert_eq!(limit(cx, None, Some(max + 1)), None);
        assert_eq!(cx.error_count(), 2);
    }
}
