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

use super::{any, duration, header_matcher};
use crate::{
    Breaker, CircuitBreakers, Cluster, DEFAULT_BACKOFF_BASE, DEFAULT_BREAKER_FAILURE_RATIO,
    DEFAULT_BREAKER_HALF_OPEN_MAX_REQUESTS, DEFAULT_BREAKER_MINIMUM_REQUESTS,
    DEFAULT_BREAKER_OPEN_TIMEOUT, DEFAULT_BREAKER_WINDOW, DEFAULT_HEALTH_CHECK_INTERVAL,
    DEFAULT_HEALTH_CHECK_TIMEOUT, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_UNHEALTHY_THRESHOLD,
    HealthCheck, OutlierDetection, Retries, UpstreamProtocol,
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
    xds.circuit_breakers = c.circuit_breakers.as_ref().map(circuit_breakers);
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
    let checker = match (&h.http, &h.tcp) {
        (Some(http), _) => HealthChecker::HttpHealthCheck(XdsHttpHealthCheck {
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
        }),
        (None, _) => HealthChecker::TcpHealthCheck(XdsTcpHealthCheck::default()),
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
        health_checker: Some(checker),
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
