//! Resilience policies → the Envoy fields that carry them.
//!
//! Route side: `retries` becomes the RouteAction's `retry_policy` and `hedge_policy`, and
//! the Route's `request_body_buffer_limit` and `metadata.filter_metadata.legate
//! .retry_non_idempotent`. Cluster side: `circuit_breakers` (DEFAULT priority),
//! `outlier_detection`, `health_checks`, `common_lb_config.healthy_panic_threshold`, and the
//! classic breaker as `metadata.filter_metadata.legate.circuit_breaker`, the one policy xDS
//! has no field for. Unset fields stay unset, so Envoy's defaults apply.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers as XdsCircuitBreakers;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as XdsOutlierDetection;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as XdsRetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    HealthChecker, HttpHealthCheck as XdsHttpHealthCheck, TcpHealthCheck as XdsTcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthCheck as XdsHealthCheck, Metadata, RoutingPriority,
};
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader, ResetHeaderFormat, RetryBackOff, RetryHostPredicate,
    retry_host_predicate,
};
use envoy_types::pb::envoy::config::route::v3::{HedgePolicy, RetryPolicy};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range, Percent};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, UInt32Value, Value, value};

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::RateLimit as XdsRouteRateLimit;
use envoy_types::pb::envoy::config::route::v3::rate_limit::Action;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{
    ActionSpecifier, RequestHeaders,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as XdsLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
use envoy_types::pb::google::protobuf::Any;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay as XdsFaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as XdsFaultAbort, HttpFault as XdsHttpFault,
};

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as XdsHashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie as HashCookie, Header as HashHeader, PolicySpecifier,
    QueryParameter as HashQuery,
};

use super::{any, duration, header_matcher};
use crate::{
    Breaker, CircuitBreakers, Cluster, DEFAULT_BACKOFF_BASE, DEFAULT_BREAKER_FAILURE_RATIO,
    DEFAULT_BREAKER_HALF_OPEN_MAX_REQUESTS, DEFAULT_BREAKER_MINIMUM_REQUESTS,
    DEFAULT_BREAKER_OPEN_TIMEOUT, DEFAULT_BREAKER_WINDOW, DEFAULT_HEALTH_CHECK_INTERVAL,
    DEFAULT_HEALTH_CHECK_TIMEOUT, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_RETRY_BUDGET,
    DEFAULT_UNHEALTHY_THRESHOLD, Fault, HealthCheck, OutlierDetection, RateLimit, Retries,
    UpstreamProtocol,
};

/// Extension and metadata names.
pub(crate) mod names {
    pub(crate) const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
    pub(crate) const PREVIOUS_HOSTS_TYPE_URL: &str =
        "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
    /// The `filter_metadata` namespace legate reads its own settings from.
    pub(crate) const LEGATE: &str = "legate";
    pub(crate) const RETRY_NON_IDEMPOTENT: &str = "retry_non_idempotent";
    pub(crate) const CIRCUIT_BREAKER: &str = "circuit_breaker";
}

fn u32v(v: Option<u32>) -> Option<UInt32Value> {
    v.map(|value| UInt32Value { value })
}

pub(crate) fn retry_policy(r: &Retries) -> RetryPolicy {
    RetryPolicy {
        retry_on: r.on.join(","),
        num_retries: u32v(r.attempts),
        per_try_timeout: r.per_try_timeout.map(duration),
        per_try_idle_timeout: r.per_try_idle_timeout.map(duration),
        retry_host_predicate: if r.previous_hosts {
            vec![RetryHostPredicate {
                name: names::PREVIOUS_HOSTS.to_owned(),
                config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
                    names::PREVIOUS_HOSTS_TYPE_URL,
                    &PreviousHostsPredicate {},
                ))),
            }]
        } else {
            Vec::new()
        },
        host_selection_retry_max_attempts: r.host_selection_attempts.map_or(0, i64::from),
        retriable_status_codes: r.status_codes.clone(),
        // Envoy requires `base_interval` whenever the message is set.
        retry_back_off: r.backoff.map(|b| RetryBackOff {
            base_interval: Some(duration(b.base.unwrap_or(DEFAULT_BACKOFF_BASE))),
            max_interval: b.max.map(duration),
        }),
        rate_limited_retry_back_off: r.retry_after.as_ref().map(|ra| RateLimitedRetryBackOff {
            reset_headers: ra
                .header_names()
                .into_iter()
                .map(|name| ResetHeader {
                    name: name.to_owned(),
                    format: ResetHeaderFormat::Seconds.into(),
                })
                .collect(),
            max_interval: ra.max_interval.map(duration),
        }),
        retriable_headers: r.response_headers.iter().map(header_matcher).collect(),
        ..Default::default()
    }
}

pub(crate) fn hedge_policy(r: &Retries) -> Option<HedgePolicy> {
    r.hedge_on_per_try_timeout.then(|| HedgePolicy {
        hedge_on_per_try_timeout: true,
        ..Default::default()
    })
}

/// `filter_metadata.legate.retry_non_idempotent: true` when the retries allow it.
pub(crate) fn route_metadata(r: &Retries) -> Option<Metadata> {
    r.non_idempotent
        .then(|| legate_metadata(names::RETRY_NON_IDEMPOTENT, value::Kind::BoolValue(true)))
}

fn legate_metadata(key: &str, kind: value::Kind) -> Metadata {
    Metadata {
        filter_metadata: HashMap::from([(
            names::LEGATE.to_owned(),
            Struct {
                fields: HashMap::from([(key.to_owned(), Value { kind: Some(kind) })]),
            },
        )]),
        ..Default::default()
    }
}

/// Set the cluster's policy fields on `xds`.
pub(crate) fn cluster_policies(c: &Cluster, xds: &mut XdsCluster) {
    let mut limits = c.circuit_breakers.clone().unwrap_or_default();
    if limits.max_retries.is_none() && limits.retry_budget.is_none() {
        limits.retry_budget = Some(DEFAULT_RETRY_BUDGET);
    }
    xds.circuit_breakers = Some(circuit_breakers(&limits));
    xds.outlier_detection = c.outlier_detection.as_ref().map(outlier_detection);
    xds.health_checks = c
        .health_check
        .iter()
        .map(|h| health_check(h, c.protocol))
        .collect();
    xds.common_lb_config = c.panic_threshold.map(|value| CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value }),
        ..Default::default()
    });
    xds.metadata = c.breaker.as_ref().map(breaker_metadata);
}

pub(crate) fn circuit_breakers(cb: &CircuitBreakers) -> XdsCircuitBreakers {
    XdsCircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default.into(),
            max_connections: u32v(cb.max_connections),
            max_pending_requests: u32v(cb.max_pending_requests),
            max_requests: u32v(cb.max_requests),
            max_retries: u32v(cb.max_retries),
            retry_budget: cb.retry_budget.map(|b| XdsRetryBudget {
                budget_percent: b.percent.map(|value| Percent { value }),
                min_retry_concurrency: u32v(b.min_concurrency),
                budget_interval: None,
            }),
            ..Default::default()
        }],
        per_host_thresholds: Vec::new(),
    }
}

pub(crate) fn outlier_detection(o: &OutlierDetection) -> XdsOutlierDetection {
    // Every field, so one added to the model and forgotten here does not compile.
    let OutlierDetection {
        consecutive_5xx,
        consecutive_gateway_failure,
        consecutive_local_origin_failure,
        enforcing_consecutive_5xx,
        enforcing_consecutive_gateway_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_success_rate,
        enforcing_local_origin_success_rate,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter,
        max_ejection_percent,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        failure_percentage_threshold,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        split_external_local_origin_errors,
        successful_active_health_check_uneject_host,
    } = *o;
    XdsOutlierDetection {
        consecutive_5xx: u32v(consecutive_5xx),
        consecutive_gateway_failure: u32v(consecutive_gateway_failure),
        consecutive_local_origin_failure: u32v(consecutive_local_origin_failure),
        enforcing_consecutive_5xx: u32v(enforcing_consecutive_5xx),
        enforcing_consecutive_gateway_failure: u32v(enforcing_consecutive_gateway_failure),
        enforcing_consecutive_local_origin_failure: u32v(
            enforcing_consecutive_local_origin_failure,
        ),
        enforcing_success_rate: u32v(enforcing_success_rate),
        enforcing_local_origin_success_rate: u32v(enforcing_local_origin_success_rate),
        enforcing_failure_percentage: u32v(enforcing_failure_percentage),
        enforcing_failure_percentage_local_origin: u32v(enforcing_failure_percentage_local_origin),
        interval: interval.map(duration),
        base_ejection_time: base_ejection_time.map(duration),
        max_ejection_time: max_ejection_time.map(duration),
        max_ejection_time_jitter: max_ejection_time_jitter.map(duration),
        max_ejection_percent: u32v(max_ejection_percent),
        success_rate_minimum_hosts: u32v(success_rate_minimum_hosts),
        success_rate_request_volume: u32v(success_rate_request_volume),
        success_rate_stdev_factor: u32v(success_rate_stdev_factor),
        failure_percentage_threshold: u32v(failure_percentage_threshold),
        failure_percentage_minimum_hosts: u32v(failure_percentage_minimum_hosts),
        failure_percentage_request_volume: u32v(failure_percentage_request_volume),
        split_external_local_origin_errors: split_external_local_origin_errors.unwrap_or_default(),
        successful_active_health_check_uneject_host: successful_active_health_check_uneject_host
            .map(|value| BoolValue { value }),
        ..Default::default()
    }
}

/// Envoy requires the timing and both thresholds: the defaults are written out.
pub(crate) fn health_check(h: &HealthCheck, cluster_protocol: UpstreamProtocol) -> XdsHealthCheck {
    // Neither (only in an unchecked mesh) leaves the checker out, for the consumer to refuse.
    let checker = match (&h.http, &h.tcp) {
        (Some(http), _) => Some(HealthChecker::HttpHealthCheck(XdsHttpHealthCheck {
            host: http.host.clone().unwrap_or_default(),
            path: http.path.clone(),
            expected_statuses: http
                .expected_statuses
                .iter()
                .map(|r| Int64Range {
                    start: i64::from(r.first),
                    // Envoy's ranges are half-open.
                    end: i64::from(r.last) + 1,
                })
                .collect(),
            codec_client_type: match http.protocol.unwrap_or(cluster_protocol) {
                UpstreamProtocol::Http1 => CodecClientType::Http1,
                UpstreamProtocol::Http2 => CodecClientType::Http2,
            }
            .into(),
            ..Default::default()
        })),
        (None, Some(_)) => Some(HealthChecker::TcpHealthCheck(XdsTcpHealthCheck::default())),
        (None, None) => None,
    };
    XdsHealthCheck {
        timeout: Some(duration(h.timeout.unwrap_or(DEFAULT_HEALTH_CHECK_TIMEOUT))),
        interval: Some(duration(
            h.interval.unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL),
        )),
        interval_jitter: h.jitter.map(duration),
        initial_jitter: h.initial_jitter.map(duration),
        unhealthy_threshold: Some(UInt32Value {
            value: h.unhealthy_threshold.unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD),
        }),
        healthy_threshold: Some(UInt32Value {
            value: h.healthy_threshold.unwrap_or(DEFAULT_HEALTHY_THRESHOLD),
        }),
        health_checker: checker,
        ..Default::default()
    }
}

/// Every field written out, defaults applied: the breaker means the same whoever reads it.
pub(crate) fn breaker_metadata(b: &Breaker) -> Metadata {
    let number = |n: f64| Value {
        kind: Some(value::Kind::NumberValue(n)),
    };
    let text = |d: Duration| Value {
        kind: Some(value::Kind::StringValue(duration_text(d))),
    };
    let fields = HashMap::from([
        (
            "failure_ratio".to_owned(),
            number(b.failure_ratio.unwrap_or(DEFAULT_BREAKER_FAILURE_RATIO)),
        ),
        (
            "window".to_owned(),
            text(b.window.unwrap_or(DEFAULT_BREAKER_WINDOW)),
        ),
        (
            "minimum_requests".to_owned(),
            number(f64::from(
                b.minimum_requests
                    .unwrap_or(DEFAULT_BREAKER_MINIMUM_REQUESTS),
            )),
        ),
        (
            "open_timeout".to_owned(),
            text(b.open_timeout.unwrap_or(DEFAULT_BREAKER_OPEN_TIMEOUT)),
        ),
        (
            "half_open_max_requests".to_owned(),
            number(f64::from(
                b.half_open_max_requests
                    .unwrap_or(DEFAULT_BREAKER_HALF_OPEN_MAX_REQUESTS),
            )),
        ),
    ]);
    legate_metadata(
        names::CIRCUIT_BREAKER,
        value::Kind::StructValue(Struct { fields }),
    )
}

/// A duration as the JSON mapping of `google.protobuf.Duration` writes it: seconds with a
/// fraction of 3, 6 or 9 digits when there is one (`10s`, `0.250s`).
pub(crate) fn duration_text(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        format!("{secs}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{secs}.{nanos:09}s")
    }
}

/// The listener's `envoy.filters.http.local_ratelimit`: no bucket of its own, so it limits
/// only the routes that carry a configuration (`typed_per_filter_config`).
pub(crate) fn local_rate_limit_filter(listener: &str) -> HttpFilter {
    let config = XdsLocalRateLimit {
        stat_prefix: format!("{listener}_local_rate_limit"),
        ..Default::default()
    };
    HttpFilter {
        name: super::names::LOCAL_RATE_LIMIT.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            legate_snapshot::type_url::LOCAL_RATE_LIMIT,
            &config,
        ))),
        ..Default::default()
    }
}

/// A route's rate limit as the filter's per-route configuration: always enabled and
/// enforced (Envoy's defaults are 0 %), with the `x-ratelimit-*` headers.
pub(crate) fn local_rate_limit(rl: &RateLimit) -> Any {
    let all = || {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: DenominatorType::Hundred.into(),
            }),
            runtime_key: String::new(),
        })
    };
    let bucket = TokenBucket {
        max_tokens: rl.max_tokens(),
        tokens_per_fill: Some(UInt32Value { value: rl.requests }),
        fill_interval: Some(duration(rl.per)),
    };
    let mut config = XdsLocalRateLimit {
        stat_prefix: "route_local_rate_limit".to_owned(),
        token_bucket: Some(bucket),
        filter_enabled: all(),
        filter_enforced: all(),
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03.into(),
        ..Default::default()
    };
    if let Some(header) = &rl.per_header {
        // One bucket per value (a descriptor whose value is left out), the default bucket
        // only for requests without the header.
        config.descriptors = vec![LocalRateLimitDescriptor {
            entries: vec![Entry {
                key: PER_HEADER_KEY.to_owned(),
                value: String::new(),
            }],
            token_bucket: Some(bucket),
            shadow_mode: false,
        }];
        config.rate_limits = vec![XdsRouteRateLimit {
            actions: vec![Action {
                action_specifier: Some(ActionSpecifier::RequestHeaders(RequestHeaders {
                    header_name: header.clone(),
                    descriptor_key: PER_HEADER_KEY.to_owned(),
                    skip_if_absent: false,
                })),
            }],
            ..Default::default()
        }];
        config.always_consume_default_token_bucket = Some(BoolValue { value: false });
        config.max_dynamic_descriptors = Some(UInt32Value {
            value: rl.max_keys.unwrap_or(crate::DEFAULT_RATE_LIMIT_MAX_KEYS),
        });
    }
    any(legate_snapshot::type_url::LOCAL_RATE_LIMIT, &config)
}

/// The descriptor key of `rate_limit.per_header`'s values.
const PER_HEADER_KEY: &str = "per_header";

/// The listener's `envoy.filters.http.fault`: no fault of its own, so only routes that carry
/// a configuration (`typed_per_filter_config`) see faults.
pub(crate) fn fault_filter() -> HttpFilter {
    HttpFilter {
        name: super::names::FAULT.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            legate_snapshot::type_url::FAULT,
            &XdsHttpFault::default(),
        ))),
        ..Default::default()
    }
}

/// A percentage (0 to 100, validated) in millionths, Envoy's finest denominator.
fn per_million(percent: Option<f64>) -> Option<FractionalPercent> {
    let p = percent.unwrap_or(100.0).clamp(0.0, 100.0);
    Some(FractionalPercent {
        // In 0..=1_000_000 by the clamp.
        numerator: (p * 10_000.0).round() as u32,
        denominator: DenominatorType::Million.into(),
    })
}

/// A route's faults as the filter's per-route configuration.
pub(crate) fn fault(f: &Fault) -> Any {
    let config = XdsHttpFault {
        delay: f.delay.map(|d| XdsFaultDelay {
            percentage: per_million(d.percent),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.duration))),
        }),
        abort: f.abort.map(|a| XdsFaultAbort {
            percentage: per_million(a.percent),
            error_type: Some(ErrorType::HttpStatus(u32::from(a.status))),
            ..Default::default()
        }),
        max_active_faults: f.max_active.map(|value| UInt32Value { value }),
        ..Default::default()
    };
    any(legate_snapshot::type_url::FAULT, &config)
}

/// A mesh `hash` as one Envoy `hash_policy` entry.
pub(crate) fn hash_policy(h: &crate::Hash) -> XdsHashPolicy {
    let spec = match h {
        crate::Hash::Header(name) => PolicySpecifier::Header(HashHeader {
            header_name: name.clone(),
            regex_rewrite: None,
        }),
        crate::Hash::Cookie(c) => PolicySpecifier::Cookie(HashCookie {
            name: c.name.clone(),
            ttl: c.ttl.map(duration),
            path: c.path.clone().unwrap_or_default(),
            attributes: Vec::new(),
        }),
        crate::Hash::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
        crate::Hash::Query(name) => {
            PolicySpecifier::QueryParameter(HashQuery { name: name.clone() })
        }
    };
    XdsHashPolicy {
        terminal: false,
        policy_specifier: Some(spec),
    }
}

/// The listener filter name of a credential: Envoy's filter name, then a hash of the
/// credential, so routes with the same credential share one filter (and one token).
pub(crate) fn credential_filter_name(c: &crate::Credentials) -> String {
    // FNV-1a over the credential's debug form: stable for a given configuration.
    let text = format!("{c:?}");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}.{hash:016x}", super::names::CREDENTIAL_INJECTOR)
}

/// A credential's `envoy.filters.http.credential_injector` on the listener; the routes that
/// do not use it disable it ([`credential_disabled`]). Its secrets are SDS generic secrets
/// over ADS.
pub(crate) fn credential_filter(c: &crate::Credentials) -> HttpFilter {
    use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
    use envoy_types::pb::envoy::config::core::v3::{HttpUri, TypedExtensionConfig};
    use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
    use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
    use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::OAuth2 as XdsOAuth2;
    use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::o_auth2::{
        ClientCredentials, FlowType,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
    use legate_snapshot::type_url;
    let sds = |name: &str| {
        Some(SdsSecretConfig {
            name: name.to_owned(),
            sds_config: Some(super::ads()),
        })
    };
    let (name, typed) = match (&c.secret, &c.oauth2) {
        (_, Some(o)) => (
            "envoy.http.injected_credentials.oauth2",
            any(
                type_url::OAUTH2_CREDENTIAL,
                &XdsOAuth2 {
                    token_endpoint: Some(HttpUri {
                        uri: o.token_url.clone(),
                        timeout: Some(duration(o.timeout.unwrap_or(Duration::from_secs(5)))),
                        http_upstream_type: Some(HttpUpstreamType::Cluster(o.cluster.clone())),
                    }),
                    scopes: o.scopes.clone(),
                    token_fetch_retry_interval: o.retry_interval.map(duration),
                    flow_type: Some(FlowType::ClientCredentials(ClientCredentials {
                        client_id: o.client_id.clone(),
                        client_secret: sds(&o.client_secret),
                        auth_type: 0,
                    })),
                    ..Default::default()
                },
            ),
        ),
        (secret, None) => (
            "envoy.http.injected_credentials.generic",
            any(
                type_url::GENERIC_CREDENTIAL,
                &Generic {
                    credential: sds(secret.as_deref().unwrap_or_default()),
                    header: c.header.clone().unwrap_or_default(),
                    header_value_prefix: c.prefix.clone().unwrap_or_default(),
                },
            ),
        ),
    };
    let config = CredentialInjector {
        overwrite: c.overwrite.unwrap_or(true),
        allow_request_without_credential: c.allow_without.unwrap_or(false),
        credential: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(typed),
        }),
    };
    HttpFilter {
        name: credential_filter_name(c),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            type_url::CREDENTIAL_INJECTOR,
            &config,
        ))),
        ..Default::default()
    }
}

/// What turns a listener's credential filter off for one route.
pub(crate) fn credential_disabled() -> Any {
    use envoy_types::pb::envoy::config::route::v3::FilterConfig;
    any(
        legate_snapshot::type_url::FILTER_CONFIG,
        &FilterConfig {
            disabled: true,
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::{
        HeaderMatcher, Route as XdsRoute, RouteAction,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt64Value};
    use std::sync::Arc;

    use legate_snapshot::{self as snap, Resources};

    use super::*;
    use crate::{compile, compile_for_grpc};

    /// Every policy, on a service with two versions and a canary rule.
    const SERVICES: &str = "\
services:
  - name: payments
    protocol: http2
    max_requests_per_connection: 100
    versions:
      - {name: v1, weight: 90, endpoints: [{address: 127.0.0.1:18081}]}
      - {name: v2, weight: 10, endpoints: [{address: 127.0.0.1:18083}]}
    route:
      canary:
        - {version: v2, headers: [{name: x-canary, exact: '1'}]}
    policies:
      timeout: 5s
      idle_timeout: 30s
      retries:
        on: [5xx, reset, connect-failure, retriable-status-codes, retriable-headers]
        attempts: 2
        per_try_timeout: 500ms
        per_try_idle_timeout: 200ms
        backoff: {base: 50ms, max: 1s}
        retry_after: {headers: [retry-after, x-retry-in], max_interval: 10s}
        status_codes: [429]
        response_headers: [{name: x-retry, exact: 'yes'}]
        previous_hosts: true
        host_selection_attempts: 3
        hedge_on_per_try_timeout: true
        non_idempotent: true
        buffer_limit: 65536
      circuit_breakers:
        max_connections: 100
        max_pending_requests: 10
        max_requests: 200
        retry_budget: {percent: 25, min_concurrency: 5}
      outlier_detection:
        consecutive_5xx: 3
        consecutive_gateway_failure: 4
        consecutive_local_origin_failure: 2
        enforcing_consecutive_5xx: 90
        enforcing_consecutive_gateway_failure: 80
        enforcing_consecutive_local_origin_failure: 70
        enforcing_success_rate: 60
        enforcing_local_origin_success_rate: 50
        enforcing_failure_percentage: 40
        enforcing_failure_percentage_local_origin: 30
        interval: 5s
        base_ejection_time: 15s
        max_ejection_time: 2m
        max_ejection_time_jitter: 1s
        max_ejection_percent: 50
        success_rate_minimum_hosts: 3
        success_rate_request_volume: 20
        success_rate_stdev_factor: 1500
        failure_percentage_threshold: 60
        failure_percentage_minimum_hosts: 2
        failure_percentage_request_volume: 10
        split_external_local_origin_errors: true
        successful_active_health_check_uneject_host: false
      health_check:
        http: {path: /healthz, host: payments.internal, expected_statuses: [200, '200-299']}
        interval: 5s
        timeout: 1s
        jitter: 500ms
        initial_jitter: 2s
        healthy_threshold: 2
        unhealthy_threshold: 4
      panic_threshold: 25
      breaker:
        failure_ratio: 0.25
        window: 20s
        minimum_requests: 10
        open_timeout: 1500ms
        half_open_max_requests: 3
";

    /// The low-level layer, with the defaults of each policy.
    const LOW_LEVEL: &str = "\
listeners: [{name: out, address: '127.0.0.1:0', route_config: rc}]
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ['*']
        routes:
          - match: {prefix: /a/}
            forward:
              cluster: web
              idle_timeout: 0s
              retries: {on: [gateway-error], retry_after: true, backoff: {max: 1s}}
          - forward: {cluster: web}
clusters:
  - name: web
    endpoints: [{address: 127.0.0.1:8080}]
    circuit_breakers: {max_retries: 5}
    outlier_detection: {}
    health_check: {tcp: {}}
    panic_threshold: 0
    breaker: {}
";

    fn load(text: &str) -> crate::Mesh {
        match crate::load(text, "mesh.yaml") {
            Ok(m) => m,
            Err(errors) => panic!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    fn pb(secs: i64, nanos: i32) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: secs,
            nanos,
        })
    }

    fn u32v(value: u32) -> Option<UInt32Value> {
        Some(UInt32Value { value })
    }

    fn routes(r: &Resources) -> &[XdsRoute] {
        &r.route_configs[0].virtual_hosts[0].routes
    }

    fn action(r: &XdsRoute) -> &RouteAction {
        match &r.action {
            Some(Action::Route(a)) => a,
            other => panic!("forward expected, got {other:?}"),
        }
    }

    fn cluster<'r>(r: &'r Resources, name: &str) -> &'r XdsCluster {
        r.clusters.iter().find(|c| c.name == name).expect("cluster")
    }

    fn legate_struct(m: &Metadata) -> &Struct {
        assert_eq!(m.filter_metadata.len(), 1);
        &m.filter_metadata[names::LEGATE]
    }

    #[test]
    fn service_retries_compile_onto_every_route() {
        let r = compile(&load(SERVICES));
        let rs = routes(&r);
        assert_eq!(rs.len(), 2, "the canary rule and the weighted route");
        let expected = RetryPolicy {
            retry_on: "5xx,reset,connect-failure,retriable-status-codes,retriable-headers".into(),
            num_retries: u32v(2),
            per_try_timeout: pb(0, 500_000_000),
            per_try_idle_timeout: pb(0, 200_000_000),
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
                    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.\
                     PreviousHostsPredicate",
                    &PreviousHostsPredicate {},
                ))),
            }],
            host_selection_retry_max_attempts: 3,
            retriable_status_codes: vec![429],
            retry_back_off: Some(RetryBackOff {
                base_interval: pb(0, 50_000_000),
                max_interval: pb(1, 0),
            }),
            rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                reset_headers: vec![
                    ResetHeader {
                        name: "retry-after".into(),
                        format: ResetHeaderFormat::Seconds.into(),
                    },
                    ResetHeader {
                        name: "x-retry-in".into(),
                        format: ResetHeaderFormat::Seconds.into(),
                    },
                ],
                max_interval: pb(10, 0),
            }),
            retriable_headers: vec![HeaderMatcher {
                name: "x-retry".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact("yes".into())),
                    ignore_case: false,
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        for route in rs {
            let a = action(route);
            assert_eq!(a.retry_policy.as_ref(), Some(&expected), "{}", route.name);
            assert_eq!(
                a.hedge_policy,
                Some(HedgePolicy {
                    hedge_on_per_try_timeout: true,
                    ..Default::default()
                })
            );
            assert_eq!(a.timeout, pb(5, 0));
            assert_eq!(a.idle_timeout, pb(30, 0));
            assert_eq!(
                route.request_body_buffer_limit,
                Some(UInt64Value { value: 65536 })
            );
            let metadata = route.metadata.as_ref().expect("route metadata");
            assert_eq!(
                legate_struct(metadata).fields["retry_non_idempotent"],
                Value {
                    kind: Some(value::Kind::BoolValue(true))
                }
            );
        }
    }

    #[test]
    fn service_cluster_policies_compile_onto_every_version() {
        let r = compile(&load(SERVICES));
        for name in ["payments-v1", "payments-v2"] {
            let c = cluster(&r, name);
            assert_eq!(
                c.circuit_breakers,
                Some(XdsCircuitBreakers {
                    thresholds: vec![Thresholds {
                        priority: RoutingPriority::Default.into(),
                        max_connections: u32v(100),
                        max_pending_requests: u32v(10),
                        max_requests: u32v(200),
                        max_retries: None,
                        retry_budget: Some(XdsRetryBudget {
                            budget_percent: Some(Percent { value: 25.0 }),
                            min_retry_concurrency: u32v(5),
                            budget_interval: None,
                        }),
                        ..Default::default()
                    }],
                    per_host_thresholds: Vec::new(),
                })
            );
            assert_eq!(
                c.outlier_detection,
                Some(XdsOutlierDetection {
                    consecutive_5xx: u32v(3),
                    consecutive_gateway_failure: u32v(4),
                    consecutive_local_origin_failure: u32v(2),
                    enforcing_consecutive_5xx: u32v(90),
                    enforcing_consecutive_gateway_failure: u32v(80),
                    enforcing_consecutive_local_origin_failure: u32v(70),
                    enforcing_success_rate: u32v(60),
                    enforcing_local_origin_success_rate: u32v(50),
                    enforcing_failure_percentage: u32v(40),
                    enforcing_failure_percentage_local_origin: u32v(30),
                    interval: pb(5, 0),
                    base_ejection_time: pb(15, 0),
                    max_ejection_time: pb(120, 0),
                    max_ejection_time_jitter: pb(1, 0),
                    max_ejection_percent: u32v(50),
                    success_rate_minimum_hosts: u32v(3),
                    success_rate_request_volume: u32v(20),
                    success_rate_stdev_factor: u32v(1500),
                    failure_percentage_threshold: u32v(60),
                    failure_percentage_minimum_hosts: u32v(2),
                    failure_percentage_request_volume: u32v(10),
                    split_external_local_origin_errors: true,
                    successful_active_health_check_uneject_host: Some(BoolValue { value: false }),
                    ..Default::default()
                })
            );
            assert_eq!(
                c.health_checks,
                [XdsHealthCheck {
                    timeout: pb(1, 0),
                    interval: pb(5, 0),
                    interval_jitter: pb(0, 500_000_000),
                    initial_jitter: pb(2, 0),
                    unhealthy_threshold: u32v(4),
                    healthy_threshold: u32v(2),
                    health_checker: Some(HealthChecker::HttpHealthCheck(XdsHttpHealthCheck {
                        host: "payments.internal".into(),
                        path: "/healthz".into(),
                        expected_statuses: vec![
                            Int64Range {
                                start: 200,
                                end: 201
                            },
                            Int64Range {
                                start: 200,
                                end: 300
                            },
                        ],
                        // The service speaks HTTP/2, so does its probe.
                        codec_client_type: CodecClientType::Http2.into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }]
            );
            assert_eq!(
                c.common_lb_config,
                Some(CommonLbConfig {
                    healthy_panic_threshold: Some(Percent { value: 25.0 }),
                    ..Default::default()
                })
            );
            let metadata = c.metadata.as_ref().expect("cluster metadata");
            let Some(value::Kind::StructValue(breaker)) =
                &legate_struct(metadata).fields["circuit_breaker"].kind
            else {
                panic!("struct expected")
            };
            let field = |k: &str| breaker.fields[k].kind.clone().expect("value");
            assert_eq!(breaker.fields.len(), 5);
            assert_eq!(field("failure_ratio"), value::Kind::NumberValue(0.25));
            assert_eq!(field("window"), value::Kind::StringValue("20s".into()));
            assert_eq!(field("minimum_requests"), value::Kind::NumberValue(10.0));
            assert_eq!(
                field("open_timeout"),
                value::Kind::StringValue("1.500s".into())
            );
            assert_eq!(
                field("half_open_max_requests"),
                value::Kind::NumberValue(3.0)
            );
        }
    }

    #[test]
    fn low_level_policies_and_defaults() {
        let r = compile(&load(LOW_LEVEL));
        let rs = routes(&r);
        let a = action(&rs[0]);
        assert_eq!(
            a.retry_policy,
            Some(RetryPolicy {
                retry_on: "gateway-error".into(),
                // Envoy requires a base with a max.
                retry_back_off: Some(RetryBackOff {
                    base_interval: pb(0, 25_000_000),
                    max_interval: pb(1, 0),
                }),
                rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                    reset_headers: vec![ResetHeader {
                        name: "retry-after".into(),
                        format: ResetHeaderFormat::Seconds.into(),
                    }],
                    max_interval: None,
                }),
                ..Default::default()
            })
        );
        assert_eq!(a.idle_timeout, pb(0, 0), "0s disables, and is sent as such");
        assert_eq!(a.hedge_policy, None);
        assert_eq!(rs[0].metadata, None);
        assert_eq!(rs[0].request_body_buffer_limit, None);
        // No policies, no fields.
        let b = action(&rs[1]);
        assert_eq!((&b.retry_policy, b.idle_timeout), (&None, None));

        let c = cluster(&r, "web");
        let thresholds = &c.circuit_breakers.as_ref().expect("breakers").thresholds;
        assert_eq!(
            thresholds[..],
            [Thresholds {
                max_retries: u32v(5),
                ..Default::default()
            }]
        );
        assert_eq!(c.outlier_detection, Some(XdsOutlierDetection::default()));
        assert_eq!(
            c.health_checks,
            [XdsHealthCheck {
                timeout: pb(1, 0),
                interval: pb(10, 0),
                unhealthy_threshold: u32v(3),
                healthy_threshold: u32v(1),
                health_checker: Some(HealthChecker::TcpHealthCheck(XdsTcpHealthCheck::default())),
                ..Default::default()
            }]
        );
        assert_eq!(
            c.common_lb_config
                .as_ref()
                .and_then(|l| l.healthy_panic_threshold),
            Some(Percent { value: 0.0 })
        );
        // The breaker's defaults, written out.
        assert_eq!(
            c.metadata,
            Some(breaker_metadata(&Breaker {
                failure_ratio: Some(0.5),
                window: Some(Duration::from_secs(10)),
                minimum_requests: Some(20),
                open_timeout: Some(Duration::from_secs(30)),
                half_open_max_requests: Some(3),
            }))
        );
    }

    #[test]
    fn clusters_without_policies_set_only_the_default_retry_budget() {
        let r = compile(&load("clusters: [{name: c}]"));
        let c = &r.clusters[0];
        let budget = XdsRetryBudget {
            budget_percent: Some(Percent { value: 20.0 }),
            min_retry_concurrency: u32v(3),
            budget_interval: None,
        };
        let thresholds = &c.circuit_breakers.as_ref().expect("limits").thresholds;
        assert_eq!(thresholds.len(), 1);
        assert_eq!(thresholds[0].retry_budget, Some(budget));
        assert_eq!(
            thresholds[0],
            Thresholds {
                retry_budget: thresholds[0].retry_budget,
                ..Default::default()
            }
        );
        assert_eq!(c.outlier_detection, None);
        assert!(c.health_checks.is_empty());
        assert_eq!(c.common_lb_config, None);
        assert_eq!(c.metadata, None);
    }

    #[test]
    fn grpc_clusters_get_limits_and_ejection_and_routes_no_retries() {
        let r = compile_for_grpc(&load(SERVICES));
        let http = compile(&load(SERVICES));
        for name in ["payments-v1", "payments-v2"] {
            let (g, h) = (cluster(&r, name), cluster(&http, name));
            assert_eq!(g.circuit_breakers, h.circuit_breakers);
            assert_eq!(g.outlier_detection, h.outlier_detection);
            assert!(g.health_checks.is_empty());
            assert_eq!((&g.common_lb_config, &g.metadata), (&None, &None));
        }
        for route in routes(&r) {
            let a = action(route);
            assert_eq!((&a.retry_policy, &a.hedge_policy), (&None, &None));
            assert_eq!((a.timeout, a.idle_timeout), (None, None));
            assert_eq!(route.metadata, None);
            assert_eq!(route.request_body_buffer_limit, None);
        }
    }

    #[test]
    fn route_timeout_is_the_same_as_the_policy() {
        let text = "services: [{name: a, endpoints: [], route: {timeout: 3s}}]";
        let r = compile(&load(text));
        assert_eq!(action(&routes(&r)[0]).timeout, pb(3, 0));
    }

    #[test]
    fn durations_as_text() {
        for (d, text) in [
            (Duration::from_secs(10), "10s"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1.500s"),
            (Duration::from_millis(250), "0.250s"),
            (Duration::from_micros(1), "0.000001s"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
        ] {
            assert_eq!(duration_text(d), text);
        }
    }

    #[test]
    fn policies_round_trip_through_yaml() {
        for text in [SERVICES, LOW_LEVEL, HASHED] {
            let mesh = load(text);
            let written = serde_yaml_ng::to_string(&mesh).expect("serializes");
            assert_eq!(load(&written), mesh, "{written}");
        }
        let written = serde_yaml_ng::to_string(&load(LOW_LEVEL)).expect("serializes");
        assert!(written.contains("retry_after: true"), "{written}");
        let written = serde_yaml_ng::to_string(&load(SERVICES)).expect("serializes");
        assert!(written.contains("- 200\n"), "{written}");
        assert!(written.contains("- 200-299\n"), "{written}");
    }
    // legate's own validator accepts the compiled policies and reads them as written.

    fn build(text: &str) -> snap::Snapshot {
        match snap::build("v1", &compile(&load(text))) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn forward(route: &snap::Route) -> &snap::ForwardAction {
        match &route.action {
            snap::RouteAction::Forward(f) => f,
            other => panic!("forward expected, got {other:?}"),
        }
    }

    fn outbound_routes(s: &snap::Snapshot) -> &[snap::Route] {
        let l = &s.listeners[0];
        &s.route_config_for(l).expect("route config").virtual_hosts[0].routes
    }

    #[test]
    fn grpc_timeout_max_compiles_to_the_header_cap() {
        let s = build(
            "services:
  - {name: a, endpoints: [{address: 127.0.0.1:8080}], policies: {grpc_timeout_max: 30s}}
  - {name: b, endpoints: [{address: 127.0.0.1:8081}], policies: {grpc_timeout_max: 0s}}
  - {name: c, endpoints: [{address: 127.0.0.1:8082}]}
",
        );
        let by_cluster = |name: &str| {
            outbound_routes(&s)
                .iter()
                .map(forward)
                .find(|f| format!("{:?}", f.target).contains(&format!("{name:?}")))
                .unwrap_or_else(|| panic!("a route to {name}"))
                .grpc_timeout
        };
        let capped = |max| {
            Some(snap::GrpcTimeout {
                max,
                replaces_route_timeout: false,
            })
        };
        assert_eq!(by_cluster("a"), capped(Some(Duration::from_secs(30))));
        assert_eq!(by_cluster("b"), capped(None), "0s: no cap");
        assert_eq!(by_cluster("c"), None, "unset: grpc-timeout is not read");
    }

    #[test]
    fn snapshot_reads_service_retries() {
        let s = build(SERVICES);
        let routes = outbound_routes(&s);
        assert_eq!(routes.len(), 2);
        for route in routes {
            let f = forward(route);
            assert_eq!(f.timeout, Some(Duration::from_secs(5)));
            assert_eq!(f.idle_timeout, Some(Duration::from_secs(30)));
            assert!(f.hedge_on_per_try_timeout);
            assert_eq!(f.retry_buffer_limit, 65536);
            assert!(f.retry_non_idempotent);
            let p = f.retry_policy.as_deref().expect("retry policy");
            assert_eq!(
                *p,
                snap::RetryPolicy {
                    retry_on: snap::RetryOn {
                        five_xx: true,
                        reset: true,
                        connect_failure: true,
                        retriable_status_codes: true,
                        retriable_headers: true,
                        ..Default::default()
                    },
                    num_retries: 2,
                    per_try_timeout: Some(Duration::from_millis(500)),
                    per_try_idle_timeout: Some(Duration::from_millis(200)),
                    back_off: snap::RetryBackOff {
                        base: Duration::from_millis(50),
                        max: Duration::from_secs(1),
                    },
                    rate_limited_back_off: Some(snap::RateLimitedBackOff {
                        reset_headers: vec![
                            snap::ResetHeader {
                                name: http::header::RETRY_AFTER,
                                format: snap::ResetHeaderFormat::Seconds,
                            },
                            snap::ResetHeader {
                                name: http::HeaderName::from_static("x-retry-in"),
                                format: snap::ResetHeaderFormat::Seconds,
                            },
                        ],
                        max_interval: Duration::from_secs(10),
                    }),
                    retriable_status_codes: vec![429],
                    retriable_headers: vec![snap::HeaderMatcher {
                        name: snap::HeaderMatchName::Header(http::HeaderName::from_static(
                            "x-retry"
                        )),
                        rule: snap::HeaderMatchRule::String(snap::StringMatcher {
                            pattern: snap::StringPattern::Exact(Arc::from("yes")),
                            ignore_case: false,
                        }),
                        invert: false,
                        treat_missing_as_empty: false,
                    }],
                    retriable_request_headers: Vec::new(),
                    previous_hosts: true,
                    host_selection_retry_max_attempts: 3,
                }
            );
        }
    }

    #[test]
    fn snapshot_reads_service_cluster_policies() {
        let s = build(SERVICES);
        for name in ["payments-v1", "payments-v2"] {
            let c = &s.clusters[name];
            assert_eq!(c.max_requests_per_connection, Some(100));
            assert_eq!(
                c.circuit_breakers.default,
                snap::Thresholds {
                    max_connections: 100,
                    max_pending_requests: 10,
                    max_requests: 200,
                    max_retries: 3,
                    retry_budget: Some(snap::RetryBudget {
                        budget_permille: 250,
                        min_retry_concurrency: 5,
                    }),
                    track_remaining: false,
                }
            );
            assert_eq!(c.circuit_breakers.high, snap::Thresholds::default());
            assert_eq!(
                c.outlier_detection,
                Some(snap::OutlierDetection {
                    interval: Duration::from_secs(5),
                    base_ejection_time: Duration::from_secs(15),
                    max_ejection_time: Duration::from_secs(120),
                    max_ejection_time_jitter: Duration::from_secs(1),
                    max_ejection_percent: 50,
                    consecutive_5xx: 3,
                    enforcing_consecutive_5xx: 90,
                    consecutive_gateway_failure: 4,
                    enforcing_consecutive_gateway_failure: 80,
                    split_external_local_origin_errors: true,
                    consecutive_local_origin_failure: 2,
                    enforcing_consecutive_local_origin_failure: 70,
                    success_rate_minimum_hosts: 3,
                    success_rate_request_volume: 20,
                    success_rate_stdev_factor: 1500,
                    enforcing_success_rate: 60,
                    enforcing_local_origin_success_rate: 50,
                    failure_percentage_threshold: 60,
                    enforcing_failure_percentage: 40,
                    enforcing_failure_percentage_local_origin: 30,
                    failure_percentage_minimum_hosts: 2,
                    failure_percentage_request_volume: 10,
                    successful_active_health_check_uneject_host: false,
                })
            );
            assert_eq!(
                c.health_checks,
                [snap::HealthCheck {
                    timeout: Duration::from_secs(1),
                    interval: Duration::from_secs(5),
                    interval_jitter: Duration::from_millis(500),
                    interval_jitter_percent: 0,
                    initial_jitter: Duration::from_secs(2),
                    unhealthy_interval: None,
                    unhealthy_edge_interval: None,
                    healthy_edge_interval: None,
                    unhealthy_threshold: 4,
                    healthy_threshold: 2,
                    kind: snap::HealthCheckKind::Http(snap::HttpHealthCheck {
                        host: Arc::from("payments.internal"),
                        path: Arc::from("/healthz"),
                        expected_statuses: vec![(200, 201), (200, 300)],
                        request_headers_to_add: Vec::new(),
                        request_headers_to_remove: Vec::new(),
                        http2: true,
                    }),
                }]
            );
            assert_eq!(c.healthy_panic_threshold_permille, 250);
            assert_eq!(
                c.classic_breaker,
                Some(snap::ClassicBreaker {
                    failure_ratio_permille: 250,
                    window: Duration::from_secs(20),
                    minimum_requests: 10,
                    open_timeout: Duration::from_millis(1500),
                    half_open_max_requests: 3,
                })
            );
        }
    }

    #[test]
    fn snapshot_reads_low_level_policies_and_defaults() {
        let s = build(LOW_LEVEL);
        let routes = outbound_routes(&s);
        let f = forward(&routes[0]);
        assert_eq!(f.idle_timeout, Some(Duration::ZERO), "0s: disabled");
        assert!(!f.hedge_on_per_try_timeout);
        assert!(!f.retry_non_idempotent);
        assert_eq!(f.retry_buffer_limit, snap::DEFAULT_RETRY_BUFFER_LIMIT);
        let p = f.retry_policy.as_deref().expect("retry policy");
        assert_eq!(
            p.retry_on,
            snap::RetryOn {
                gateway_error: true,
                ..Default::default()
            }
        );
        assert_eq!(p.num_retries, 1, "Envoy's default");
        assert_eq!(
            p.back_off,
            snap::RetryBackOff {
                base: Duration::from_millis(25),
                max: Duration::from_secs(1),
            }
        );
        assert_eq!(
            p.rate_limited_back_off,
            Some(snap::RateLimitedBackOff {
                reset_headers: vec![snap::ResetHeader {
                    name: http::header::RETRY_AFTER,
                    format: snap::ResetHeaderFormat::Seconds,
                }],
                max_interval: Duration::from_secs(300),
            })
        );
        assert!(!p.previous_hosts);
        assert_eq!(p.host_selection_retry_max_attempts, 1);
        assert_eq!(forward(&routes[1]).retry_policy, None);

        let c = &s.clusters["web"];
        assert_eq!(
            c.circuit_breakers.default,
            snap::Thresholds {
                max_retries: 5,
                ..Default::default()
            }
        );
        assert_eq!(c.outlier_detection, Some(snap::OutlierDetection::default()));
        assert_eq!(
            c.health_checks,
            [snap::HealthCheck {
                timeout: Duration::from_secs(1),
                interval: Duration::from_secs(10),
                interval_jitter: Duration::ZERO,
                interval_jitter_percent: 0,
                initial_jitter: Duration::ZERO,
                unhealthy_interval: None,
                unhealthy_edge_interval: None,
                healthy_edge_interval: None,
                unhealthy_threshold: 3,
                healthy_threshold: 1,
                kind: snap::HealthCheckKind::Tcp,
            }]
        );
        assert_eq!(c.healthy_panic_threshold_permille, 0);
        assert_eq!(
            c.classic_breaker,
            Some(snap::ClassicBreaker {
                failure_ratio_permille: 500,
                window: Duration::from_secs(10),
                minimum_requests: 20,
                open_timeout: Duration::from_secs(30),
                half_open_max_requests: 3,
            })
        );
        assert_eq!(c.max_requests_per_connection, None);
    }

    #[test]
    fn max_retries_or_a_budget_of_its_own_replace_the_default_budget() {
        let s = build(
            "services:
  - {name: a, endpoints: [{address: 127.0.0.1:8080}], policies: {circuit_breakers: {max_retries: 7}}}
  - name: b
    endpoints: [{address: 127.0.0.1:8081}]
    policies: {circuit_breakers: {retry_budget: {percent: 50, min_concurrency: 1}}}
",
        );
        let a = &s.clusters["a"].circuit_breakers.default;
        assert_eq!((a.max_retries, a.retry_budget), (7, None));
        let b = &s.clusters["b"].circuit_breakers.default;
        assert_eq!(
            b.retry_budget,
            Some(snap::RetryBudget {
                budget_permille: 500,
                min_retry_concurrency: 1,
            })
        );
    }

    #[test]
    fn snapshot_defaults_without_policies() {
        let s = build("services: [{name: web, endpoints: [{address: 127.0.0.1:8080}]}]");
        let f = forward(&outbound_routes(&s)[0]);
        assert_eq!(f.retry_policy, None);
        assert_eq!(f.idle_timeout, None);
        let c = &s.clusters["web"];
        // Envoy's limits, with legate-cp's retry budget in place of `max_retries`.
        let mut limits = snap::CircuitBreakers::default();
        limits.default.retry_budget = Some(snap::RetryBudget {
            budget_permille: 200,
            min_retry_concurrency: 3,
        });
        assert_eq!(c.circuit_breakers, limits);
        assert_eq!(c.outlier_detection, None);
        assert!(c.health_checks.is_empty());
        assert_eq!(c.healthy_panic_threshold_permille, 500);
        assert_eq!(c.classic_breaker, None);
    }
    const VIRTUAL_HOST: &str = "\
listeners: [{name: out, address: '127.0.0.1:0', route_config: rc}]
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ['*']
        retries:
          on: [reset]
          attempts: 3
          per_try_timeout: 1s
          hedge_on_per_try_timeout: true
          non_idempotent: true
          buffer_limit: 4096
        routes:
          - match: {prefix: /own/}
            forward: {cluster: web, retries: {on: [5xx]}}
          - match: {path: /ping}
            direct_response: {status: 200}
          - forward: {cluster: web}
clusters: [{name: web}]
";

    #[test]
    fn virtual_host_retries_compile_onto_the_virtual_host() {
        let r = compile(&load(VIRTUAL_HOST));
        let vh = &r.route_configs[0].virtual_hosts[0];
        assert_eq!(
            vh.retry_policy,
            Some(RetryPolicy {
                retry_on: "reset".into(),
                num_retries: u32v(3),
                per_try_timeout: pb(1, 0),
                ..Default::default()
            })
        );
        assert_eq!(
            vh.hedge_policy.map(|h| h.hedge_on_per_try_timeout),
            Some(true)
        );
        assert_eq!(
            vh.request_body_buffer_limit,
            Some(UInt64Value { value: 4096 })
        );
        // The opt-in is route metadata: only the route that takes the virtual host's
        // retries gets it.
        let rs = &vh.routes;
        assert_eq!((&rs[0].metadata, &rs[1].metadata), (&None, &None));
        assert_eq!(
            rs[2].metadata,
            route_metadata(&Retries {
                non_idempotent: true,
                ..Default::default()
            })
        );
        assert_eq!(action(&rs[2]).retry_policy, None, "inherited, not copied");
        // The route's own retries replace the virtual host's hedging too.
        assert_eq!(action(&rs[0]).hedge_policy, Some(HedgePolicy::default()));
        assert_eq!(action(&rs[2]).hedge_policy, None);
    }

    #[test]
    fn snapshot_reads_virtual_host_retries() {
        let s = build(VIRTUAL_HOST);
        let routes = outbound_routes(&s);
        let own = forward(&routes[0]);
        let p = own.retry_policy.as_deref().expect("own retry policy");
        assert_eq!(
            (p.retry_on.five_xx, p.retry_on.reset, p.num_retries),
            (true, false, 1)
        );
        assert!(!own.hedge_on_per_try_timeout && !own.retry_non_idempotent);
        assert_eq!(own.retry_buffer_limit, 4096, "inherited, as in Envoy");
        let inherited = forward(&routes[2]);
        let p = inherited.retry_policy.as_deref().expect("inherited policy");
        assert_eq!((p.retry_on.reset, p.num_retries), (true, 3));
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(1)));
        assert!(inherited.hedge_on_per_try_timeout && inherited.retry_non_idempotent);
        assert_eq!(inherited.retry_buffer_limit, 4096);
    }

    /// Hashing services: RING_HASH / MAGLEV clusters and one `hash_policy` entry on every
    /// route, read back by legate as written; gRPC nodes get RING_HASH and header hashes only.
    const HASHED: &str = "\
services:
  - name: carts
    lb_policy: ring_hash
    versions:
      - {name: v1, weight: 90, endpoints: [{address: 127.0.0.1:18081}]}
      - {name: v2, weight: 10, endpoints: [{address: 127.0.0.1:18083}]}
    route:
      canary:
        - {version: v2, headers: [{name: x-canary, exact: '1'}]}
    policies:
      hash: {header: x-user}
  - name: sessions
    lb_policy: maglev
    endpoints: [{address: 127.0.0.1:18082}]
    policies:
      hash: {cookie: {name: sticky, ttl: 1h, path: /}}
  - name: by-ip
    lb_policy: ring_hash
    endpoints: [{address: 127.0.0.1:18084}]
    policies:
      hash: source_ip
  - name: by-query
    lb_policy: maglev
    endpoints: [{address: 127.0.0.1:18085}]
    policies:
      hash: {query: user}
";

    #[test]
    fn hash_policies_compile_and_are_read_back() {
        let s = build(HASHED);
        for name in ["carts-v1", "carts-v2", "by-ip"] {
            assert_eq!(
                s.clusters[name].lb_policy,
                snap::LbPolicy::RingHash {
                    min_ring_size: 1024,
                    max_ring_size: 8 * 1024 * 1024
                },
                "{name}"
            );
        }
        for name in ["sessions", "by-query"] {
            assert_eq!(
                s.clusters[name].lb_policy,
                snap::LbPolicy::Maglev { table_size: 65537 }
            );
        }
        let mut seen = Vec::new();
        for route in outbound_routes(&s) {
            let f = forward(route);
            assert_eq!(f.hash_policy.len(), 1, "{}", route.name);
            seen.push((route.name.to_string(), f.hash_policy[0].method.clone()));
        }
        let header = snap::HashMethod::Header {
            name: http::HeaderName::from_static("x-user"),
        };
        assert!(
            seen.contains(&("carts-canary-0".to_owned(), header.clone())),
            "{seen:?}"
        );
        assert!(seen.contains(&("carts".to_owned(), header)), "{seen:?}");
        assert!(
            seen.contains(&(
                "sessions".to_owned(),
                snap::HashMethod::Cookie(snap::CookieHash {
                    name: "sticky".into(),
                    ttl: Some(Duration::from_secs(3600)),
                    path: Some("/".into()),
                    attributes: Vec::new(),
                })
            )),
            "{seen:?}"
        );
        assert!(seen.contains(&("by-ip".to_owned(), snap::HashMethod::SourceIp)));
        assert!(seen.contains(&(
            "by-query".to_owned(),
            snap::HashMethod::QueryParameter {
                name: "user".into()
            }
        )));
    }

    #[test]
    fn grpc_nodes_get_ring_hash_and_header_hashes_only() {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, LbPolicy};
        let r: Resources = compile_for_grpc(&load(HASHED));
        {
            for c in &r.clusters {
                assert_eq!(c.lb_policy, i32::from(LbPolicy::RingHash), "{}", c.name);
                let Some(LbConfig::RingHashLbConfig(rh)) = &c.lb_config else {
                    panic!("{}: ring_hash_lb_config expected", c.name);
                };
                assert_eq!(rh.minimum_ring_size, Some(UInt64Value { value: 1024 }));
            }
            for rc in &r.route_configs {
                for route in rc.virtual_hosts.iter().flat_map(|v| &v.routes) {
                    let Some(Action::Route(a)) = &route.action else {
                        continue;
                    };
                    let carts = route.name.starts_with("carts");
                    assert_eq!(a.hash_policy.len(), usize::from(carts), "{}", route.name);
                }
            }
        }
    }
}
