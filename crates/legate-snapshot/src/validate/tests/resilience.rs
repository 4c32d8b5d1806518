//! Resilience fields: retries, hedging, retry buffers and route metadata on the route side;
//! circuit breakers, outlier detection, health checks, the panic threshold and the classic
//! breaker on the cluster side. Accepted fields are checked for their exact converted values
//! (defaults included), refused ones for their exact error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::HeaderMatchName;

use http::HeaderName;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds as XdsThresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as XdsRetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers as XdsCircuitBreakers, OutlierDetection as XdsOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::health_check::{
    HealthChecker, HttpHealthCheck as XdsHttpHealthCheck, Payload, TcpHealthCheck, TlsOptions,
    payload,
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthCheck as XdsHealthCheck, Metadata, RequestMethod, RoutingPriority, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader as XdsResetHeader, ResetHeaderFormat as XdsFormat,
    RetryBackOff as XdsRetryBackOff, RetryHostPredicate, RetryPriority, retry_host_predicate,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as XdsHeaderMatcher, HedgePolicy, RetryPolicy as XdsRetryPolicy,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, FractionalPercent, Int64Range, Percent};
use envoy_types::pb::google::protobuf::{
    Any, Duration as XdsDuration, Struct, UInt32Value, UInt64Value, Value, value,
};

use super::{Resources, any, base, build, cl, dur, errors, header, no, ok, ra, rt, u32v, vh, yes};
use crate::{
    CircuitBreakers, ClassicBreaker, Cluster, ForwardAction, HeaderAppend, HeaderMatchRule,
    HeaderMatcher, HeaderValueOption, HealthCheck, HealthCheckKind, HttpHealthCheck,
    OutlierDetection, RateLimitedBackOff, ResetHeader, ResetHeaderFormat, RetryBackOff,
    RetryBudget, RetryOn, RetryPolicy, RouteAction, Snapshot, Thresholds,
};

// ---------------------------------------------------------------------------------------------
// Builders

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn xms(millis: i32) -> Option<XdsDuration> {
    Some(XdsDuration {
        seconds: 0,
        nanos: millis * 1_000_000,
    })
}

fn policy(retry_on: &str) -> XdsRetryPolicy {
    XdsRetryPolicy {
        retry_on: retry_on.to_owned(),
        ..Default::default()
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(value::Kind::NumberValue(n)),
    }
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s.to_owned())),
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(value::Kind::BoolValue(b)),
    }
}

fn object(fields: &[(&str, Value)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

/// Metadata with `fields` under `namespace`.
fn metadata(namespace: &str, fields: &[(&str, Value)]) -> Option<Metadata> {
    Some(Metadata {
        filter_metadata: HashMap::from([(namespace.to_owned(), object(fields))]),
        typed_filter_metadata: HashMap::new(),
    })
}

/// Cluster metadata carrying `legate.circuit_breaker` with `fields`.
fn breaker(fields: &[(&str, Value)]) -> Option<Metadata> {
    metadata(
        "legate",
        &[(
            "circuit_breaker",
            Value {
                kind: Some(value::Kind::StructValue(object(fields))),
            },
        )],
    )
}

/// The smallest valid health check: connect-only TCP.
pub(super) fn tcp_check() -> XdsHealthCheck {
    XdsHealthCheck {
        timeout: dur(1),
        interval: dur(5),
        unhealthy_threshold: u32v(3),
        healthy_threshold: u32v(2),
        health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck::default())),
        ..Default::default()
    }
}

fn http_check(http: XdsHttpHealthCheck) -> XdsHealthCheck {
    XdsHealthCheck {
        health_checker: Some(HealthChecker::HttpHealthCheck(http)),
        ..tcp_check()
    }
}

fn healthz() -> XdsHttpHealthCheck {
    XdsHttpHealthCheck {
        path: "/healthz".to_owned(),
        ..Default::default()
    }
}

fn forward(s: &Snapshot, route: usize) -> &ForwardAction {
    match &s.route_configs["rc1"].virtual_hosts[0].routes[route].action {
        RouteAction::Forward(f) => f,
        other => panic!("route {route} forwards, got {other:?}"),
    }
}

fn retry_policy(s: &Snapshot, route: usize) -> &RetryPolicy {
    forward(s, route)
        .retry_policy
        .as_deref()
        .expect("a retry policy")
}

fn static_cluster(r: &Resources) -> Arc<Cluster> {
    ok(r).clusters["static"].clone()
}

/// Envoy's defaults for a `retry_policy` with nothing but `retry_on`.
fn default_policy(retry_on: RetryOn) -> RetryPolicy {
    RetryPolicy {
        retry_on,
        num_retries: 1,
        per_try_timeout: None,
        per_try_idle_timeout: None,
        back_off: RetryBackOff {
            base: ms(25),
            max: ms(250),
        },
        rate_limited_back_off: None,
        retriable_status_codes: Vec::new(),
        retriable_headers: Vec::new(),
        retriable_request_headers: Vec::new(),
        previous_hosts: false,
        host_selection_retry_max_attempts: 1,
    }
}

/// Each case must yield exactly this one error.
type Case = (fn(&mut Resources), &'static str);

fn check_refusals(cases: &[Case]) {
    let mut failures = Vec::new();
    for (i, (edit, expected)) in cases.iter().enumerate() {
        let mut r = base();
        edit(&mut r);
        let got = errors(&r);
        if got != [*expected] {
            failures.push(format!("case {i}: expected [{expected}]\n    got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Routes: accepted

#[test]
fn routes_without_policies_get_the_defaults() {
    let s = ok(&base());
    for route in 0..2 {
        let f = forward(&s, route);
        assert_eq!(f.retry_policy, None);
        assert!(!f.hedge_on_per_try_timeout);
        assert_eq!(f.retry_buffer_limit, crate::DEFAULT_RETRY_BUFFER_LIMIT);
        assert!(!f.retry_non_idempotent);
    }
}

#[test]
fn an_empty_retry_policy_gets_envoys_defaults() {
    let mut r = base();
    ra(&mut r, 0).retry_policy = Some(XdsRetryPolicy::default());
    assert_eq!(
        *retry_policy(&ok(&r), 0),
        default_policy(RetryOn::default())
    );
}

#[test]
fn every_retry_policy_field_converts() {
    let mut r = base();
    ra(&mut r, 0).retry_policy = Some(XdsRetryPolicy {
        retry_on: "5xx, gateway-error,reset,reset-before-request,connect-failure,refused-stream,\
                   retriable-4xx,retriable-status-codes,retriable-headers,cancelled,\
                   deadline-exceeded,resource-exhausted,internal,unavailable"
            .to_owned(),
        num_retries: u32v(4),
        per_try_timeout: xms(750),
        per_try_idle_timeout: dur(2),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                &PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![409, 503],
        retry_back_off: Some(XdsRetryBackOff {
            base_interval: xms(100),
            max_interval: dur(3),
        }),
        rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
            reset_headers: vec![
                XdsResetHeader {
                    name: "Retry-After".to_owned(),
                    format: XdsFormat::Seconds as i32,
                },
                XdsResetHeader {
                    name: "X-RateLimit-Reset".to_owned(),
                    format: XdsFormat::UnixTimestamp as i32,
                },
            ],
            max_interval: dur(60),
        }),
        retriable_headers: vec![XdsHeaderMatcher {
            name: "X-Upstream-Retry".to_owned(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch("yes".to_owned())),
            ..Default::default()
        }],
        retriable_request_headers: vec![XdsHeaderMatcher {
            name: "x-retry-ok".to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let s = ok(&r);
    let exact = |name: &'static str, value: &str| HeaderMatcher {
        name: HeaderMatchName::Header(HeaderName::from_static(name)),
        rule: HeaderMatchRule::String(crate::StringMatcher {
            pattern: crate::StringPattern::Exact(Arc::from(value)),
            ignore_case: false,
        }),
        invert: false,
        treat_missing_as_empty: false,
    };
    assert_eq!(
        *retry_policy(&s, 0),
        RetryPolicy {
            retry_on: RetryOn {
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
            },
            num_retries: 4,
            per_try_timeout: Some(ms(750)),
            per_try_idle_timeout: Some(secs(2)),
            back_off: RetryBackOff {
                base: ms(100),
                max: secs(3),
            },
            rate_limited_back_off: Some(RateLimitedBackOff {
                reset_headers: vec![
                    ResetHeader {
                        name: HeaderName::from_static("retry-after"),
                        format: ResetHeaderFormat::Seconds,
                    },
                    ResetHeader {
                        name: HeaderName::from_static("x-ratelimit-reset"),
                        format: ResetHeaderFormat::UnixTimestamp,
                    },
                ],
                max_interval: secs(60),
            }),
            retriable_status_codes: vec![409, 503],
            retriable_headers: vec![exact("x-upstream-retry", "yes")],
            retriable_request_headers: vec![HeaderMatcher {
                name: HeaderMatchName::Header(HeaderName::from_static("x-retry-ok")),
                rule: HeaderMatchRule::Present(true),
                invert: false,
                treat_missing_as_empty: false,
            }],
            previous_hosts: true,
            host_selection_retry_max_attempts: 5,
        }
    );
}

#[test]
fn retry_policy_value_variants() {
    // (edit, check) on the route-0 policy `5xx` otherwise empty.
    type Variant = (fn(&mut XdsRetryPolicy), fn(&RetryPolicy));
    let variants: &[Variant] = &[
        // Zero timeouts mean none.
        (
            |p| {
                p.per_try_timeout = dur(0);
                p.per_try_idle_timeout = dur(0);
            },
            |p| assert_eq!((p.per_try_timeout, p.per_try_idle_timeout), (None, None)),
        ),
        // No retries at all is allowed.
        (
            |p| p.num_retries = u32v(0),
            |p| assert_eq!(p.num_retries, 0),
        ),
        // max_interval defaults to ten times the base.
        (
            |p| {
                p.retry_back_off = Some(XdsRetryBackOff {
                    base_interval: xms(40),
                    max_interval: None,
                })
            },
            |p| {
                assert_eq!(
                    p.back_off,
                    RetryBackOff {
                        base: ms(40),
                        max: ms(400)
                    }
                )
            },
        ),
        // Equal base and max are fine; below 1 ms rounds up to 1 ms, as in Envoy.
        (
            |p| {
                p.retry_back_off = Some(XdsRetryBackOff {
                    base_interval: Some(XdsDuration {
                        seconds: 0,
                        nanos: 1000,
                    }),
                    max_interval: Some(XdsDuration {
                        seconds: 0,
                        nanos: 1000,
                    }),
                })
            },
            |p| {
                assert_eq!(
                    p.back_off,
                    RetryBackOff {
                        base: ms(1),
                        max: ms(1)
                    }
                )
            },
        ),
        // Rate-limited back-off: max_interval defaults to 300 s.
        (
            |p| {
                p.rate_limited_retry_back_off = Some(RateLimitedRetryBackOff {
                    reset_headers: vec![XdsResetHeader {
                        name: "retry-after".to_owned(),
                        format: XdsFormat::Seconds as i32,
                    }],
                    max_interval: None,
                })
            },
            |p| {
                assert_eq!(
                    p.rate_limited_back_off,
                    Some(RateLimitedBackOff {
                        reset_headers: vec![ResetHeader {
                            name: HeaderName::from_static("retry-after"),
                            format: ResetHeaderFormat::Seconds,
                        }],
                        max_interval: secs(300),
                    })
                )
            },
        ),
        // previous_hosts by name alone.
        (
            |p| {
                p.retry_host_predicate = vec![RetryHostPredicate {
                    name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
                    config_type: None,
                }]
            },
            |p| assert!(p.previous_hosts),
        ),
        // refresh_cluster_on_retry false is what legate does.
        (
            |p| p.refresh_cluster_on_retry = false,
            |p| {
                assert_eq!(
                    *p,
                    default_policy(RetryOn {
                        five_xx: true,
                        ..RetryOn::default()
                    })
                )
            },
        ),
        (
            |p| p.retriable_status_codes = vec![100, 599],
            |p| assert_eq!(p.retriable_status_codes, [100, 599]),
        ),
    ];
    for (edit, check) in variants {
        let mut r = base();
        let mut p = policy("5xx");
        edit(&mut p);
        ra(&mut r, 0).retry_policy = Some(p);
        check(retry_policy(&ok(&r), 0));
    }
}

#[test]
fn a_route_policy_replaces_the_virtual_hosts() {
    let mut r = base();
    vh(&mut r).retry_policy = Some(XdsRetryPolicy {
        num_retries: u32v(3),
        ..policy("connect-failure")
    });
    vh(&mut r).hedge_policy = Some(HedgePolicy {
        hedge_on_per_try_timeout: true,
        ..Default::default()
    });
    // Route 0 sets its own policies: nothing is merged from the virtual host's.
    ra(&mut r, 0).retry_policy = Some(policy("reset"));
    ra(&mut r, 0).hedge_policy = Some(HedgePolicy::default());
    let s = ok(&r);
    assert_eq!(
        *retry_policy(&s, 0),
        default_policy(RetryOn {
            reset: true,
            ..RetryOn::default()
        })
    );
    assert!(!forward(&s, 0).hedge_on_per_try_timeout);
    assert_eq!(
        *retry_policy(&s, 1),
        RetryPolicy {
            num_retries: 3,
            ..default_policy(RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            })
        }
    );
    assert!(forward(&s, 1).hedge_on_per_try_timeout);
}

#[test]
fn hedge_policy_variants() {
    let mut r = base();
    ra(&mut r, 0).hedge_policy = Some(HedgePolicy {
        initial_requests: u32v(1),
        additional_request_chance: Some(FractionalPercent {
            numerator: 0,
            denominator: 1,
        }),
        hedge_on_per_try_timeout: true,
    });
    let s = ok(&r);
    assert!(forward(&s, 0).hedge_on_per_try_timeout);
    assert!(!forward(&s, 1).hedge_on_per_try_timeout);
}

#[test]
fn retry_buffer_limits() {
    // (vhost deprecated, vhost current, route deprecated, route current) → route 0's limit.
    type Limits = (Option<u32>, Option<u64>, Option<u32>, Option<u64>);
    let cases: &[(Limits, u64)] = &[
        ((None, None, None, None), 1024 * 1024),
        ((Some(4096), None, None, None), 4096),
        ((None, Some(8 << 20), None, None), 8 << 20),
        // The deprecated field is capped by Envoy's default connection buffer.
        ((Some(u32::MAX), None, None, None), 1024 * 1024),
        // The current field wins over the deprecated one at the same level.
        ((Some(4096), Some(100), None, None), 100),
        ((None, None, Some(10), Some(20)), 20),
        // The route wins over the virtual host, whichever field each uses.
        ((None, Some(8 << 20), Some(512), None), 512),
        ((Some(4096), None, None, Some(0)), 0),
    ];
    for &((vd, vc, rd, rc), expected) in cases {
        let mut r = base();
        vh(&mut r).per_request_buffer_limit_bytes = vd.map(|value| UInt32Value { value });
        vh(&mut r).request_body_buffer_limit = vc.map(|value| UInt64Value { value });
        rt(&mut r, 0).per_request_buffer_limit_bytes = rd.map(|value| UInt32Value { value });
        rt(&mut r, 0).request_body_buffer_limit = rc.map(|value| UInt64Value { value });
        let s = ok(&r);
        assert_eq!(
            forward(&s, 0).retry_buffer_limit,
            expected,
            "{:?}",
            (vd, vc, rd, rc)
        );
        // Route 1 sees only the virtual host's.
        let vhost_limit = vc.or(vd.map(|v| u64::from(v).min(1024 * 1024)));
        assert_eq!(
            forward(&s, 1).retry_buffer_limit,
            vhost_limit.unwrap_or(1024 * 1024)
        );
    }
}

#[test]
fn retry_buffer_limit_above_the_maximum_is_refused() {
    let mut r = base();
    vh(&mut r).request_body_buffer_limit = Some(UInt64Value { value: 1 << 40 });
    rt(&mut r, 0).request_body_buffer_limit = Some(UInt64Value {
        value: 64 * 1024 * 1024 + 1,
    });
    let errors = errors(&r).join("\n");
    assert!(
        errors.contains(
            "route configuration 'rc1': virtual_hosts[0].request_body_buffer_limit: \
             1099511627776 bytes is above legate's maximum of 67108864 (64 MiB) for a request \
             body kept in memory for retries"
        ),
        "{errors}"
    );
    assert!(
        errors.contains(
            "route configuration 'rc1': virtual_hosts[0].routes[0].request_body_buffer_limit: \
             67108865 bytes is above legate's maximum"
        ),
        "{errors}"
    );
    // The maximum itself is accepted.
    let mut r = base();
    rt(&mut r, 0).request_body_buffer_limit = Some(UInt64Value {
        value: 64 * 1024 * 1024,
    });
    assert_eq!(forward(&ok(&r), 0).retry_buffer_limit, 64 * 1024 * 1024);
}

#[test]
fn route_metadata_allows_retrying_non_idempotent_requests() {
    let mut r = base();
    rt(&mut r, 0).metadata = metadata("legate", &[("retry_non_idempotent", boolean(true))]);
    // Other namespaces belong to others, whatever they hold.
    rt(&mut r, 1).metadata = metadata("acme", &[("retry_non_idempotent", text("anything"))]);
    let s = ok(&r);
    assert!(forward(&s, 0).retry_non_idempotent);
    assert!(!forward(&s, 1).retry_non_idempotent);

    let mut r = base();
    rt(&mut r, 0).metadata = metadata("legate", &[("retry_non_idempotent", boolean(false))]);
    assert!(!forward(&ok(&r), 0).retry_non_idempotent);
}

// ---------------------------------------------------------------------------------------------
// Routes: refused

const ROUTE0: &str = "route configuration 'rc1': virtual_hosts[0].routes[0]";

#[test]
fn retry_policy_fields_refused() {
    let cases: &[Case] = &[
        (
            |r| ra(r, 0).retry_policy = Some(policy("5xx,grpc-cancelled")),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_on: unknown retry condition 'grpc-cancelled'",
        ),
        (
            |r| ra(r, 0).retry_policy = Some(policy("envoy-ratelimited")),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_on: 'envoy-ratelimited' is not supported by legate",
        ),
        (
            |r| ra(r, 0).retry_policy = Some(policy("http3-post-connect-failure")),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_on: 'http3-post-connect-failure' is not supported by legate",
        ),
        (
            |r| ra(r, 0).retry_policy = Some(policy("5XX")),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_on: unknown retry condition '5XX'",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_priority: Some(RetryPriority::default()),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_priority: not supported by legate",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_options_predicates: vec![TypedExtensionConfig::default()],
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_options_predicates: not supported by legate",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    refresh_cluster_on_retry: true,
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.refresh_cluster_on_retry: not supported by legate",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_host_predicate: vec![RetryHostPredicate {
                        name: "envoy.retry_host_predicates.omit_canary_hosts".to_owned(),
                        config_type: None,
                    }],
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0]: 'envoy.retry_host_predicates.omit_canary_hosts' is not supported by legate (only envoy.retry_host_predicates.previous_hosts)",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_host_predicate: vec![RetryHostPredicate {
                        name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
                        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(Any {
                            type_url: "type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig".to_owned(),
                            value: Vec::new(),
                        })),
                    }],
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0]: 'type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig' is not supported by legate (only envoy.retry_host_predicates.previous_hosts)",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    host_selection_retry_max_attempts: -1,
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.host_selection_retry_max_attempts: must not be negative",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    host_selection_retry_max_attempts: i64::from(u32::MAX) + 1,
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.host_selection_retry_max_attempts: must be at most 4294967295",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retriable_status_codes: vec![503, 600],
                    ..policy("retriable-status-codes")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes[1]: 600 is not between 100 and 599",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retriable_status_codes: vec![99],
                    ..policy("retriable-status-codes")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes[0]: 99 is not between 100 and 599",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    per_try_timeout: dur(-1),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.per_try_timeout: must not be negative",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    per_try_idle_timeout: dur(-1),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.per_try_idle_timeout: must not be negative",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_back_off: Some(XdsRetryBackOff {
                        base_interval: None,
                        max_interval: dur(1),
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval: required",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_back_off: Some(XdsRetryBackOff {
                        base_interval: dur(0),
                        max_interval: None,
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval: must be greater than zero",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retry_back_off: Some(XdsRetryBackOff {
                        base_interval: dur(1),
                        max_interval: xms(500),
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.max_interval: must not be less than base_interval",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    rate_limited_retry_back_off: Some(RateLimitedRetryBackOff::default()),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.rate_limited_retry_back_off.reset_headers: at least one reset header is required",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                        reset_headers: vec![XdsResetHeader::default()],
                        max_interval: None,
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.rate_limited_retry_back_off.reset_headers[0].name: must not be empty",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                        reset_headers: vec![XdsResetHeader {
                            name: "Retry After".to_owned(),
                            format: 0,
                        }],
                        max_interval: None,
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.rate_limited_retry_back_off.reset_headers[0].name: 'Retry After' is not a valid header name: ' ' is not allowed (letters, digits and !#$%&'*+-.^_`|~ only)",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                        reset_headers: vec![XdsResetHeader {
                            name: "retry-after".to_owned(),
                            format: 7,
                        }],
                        max_interval: None,
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.rate_limited_retry_back_off.reset_headers[0].format: unknown value 7",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
                        reset_headers: vec![XdsResetHeader {
                            name: "retry-after".to_owned(),
                            format: 0,
                        }],
                        max_interval: dur(0),
                    }),
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.rate_limited_retry_back_off.max_interval: must be greater than zero",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retriable_headers: vec![XdsHeaderMatcher {
                        name: ":path".to_owned(),
                        ..Default::default()
                    }],
                    ..policy("retriable-headers")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retriable_headers[0].name: matching on pseudo-header ':path' is not supported by legate",
        ),
        (
            |r| {
                ra(r, 0).retry_policy = Some(XdsRetryPolicy {
                    retriable_request_headers: vec![XdsHeaderMatcher {
                        name: "x-retry".to_owned(),
                        header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch(
                            String::new(),
                        )),
                        ..Default::default()
                    }],
                    ..policy("5xx")
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.retriable_request_headers[0].prefix_match: must not be empty (use present_match)",
        ),
        // The virtual host's policy is checked where it is written.
        (
            |r| vh(r).retry_policy = Some(policy("gateway-error,bogus")),
            "route configuration 'rc1': virtual_hosts[0].retry_policy.retry_on: unknown retry condition 'bogus'",
        ),
    ];
    check_refusals(cases);
}

#[test]
fn hedge_and_buffer_fields_refused() {
    check_refusals(&[
        (
            |r| {
                ra(r, 0).hedge_policy = Some(HedgePolicy {
                    initial_requests: u32v(0),
                    ..Default::default()
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.hedge_policy.initial_requests: must be at least 1",
        ),
        (
            |r| {
                ra(r, 0).hedge_policy = Some(HedgePolicy {
                    initial_requests: u32v(2),
                    ..Default::default()
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.hedge_policy.initial_requests: 2 is not supported by legate (only 1)",
        ),
        (
            |r| {
                ra(r, 0).hedge_policy = Some(HedgePolicy {
                    additional_request_chance: Some(FractionalPercent {
                        numerator: 5,
                        denominator: 0,
                    }),
                    ..Default::default()
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.hedge_policy.additional_request_chance: not supported by legate",
        ),
        (
            |r| {
                vh(r).hedge_policy = Some(HedgePolicy {
                    initial_requests: u32v(4),
                    ..Default::default()
                })
            },
            "route configuration 'rc1': virtual_hosts[0].hedge_policy.initial_requests: 4 is not supported by legate (only 1)",
        ),
        (
            |r| vh(r).retry_policy_typed_config = Some(Any::default()),
            "route configuration 'rc1': virtual_hosts[0].retry_policy_typed_config: not supported by legate",
        ),
        (
            |r| vh(r).include_is_timeout_retry_header = true,
            "route configuration 'rc1': virtual_hosts[0].include_is_timeout_retry_header: not supported by legate",
        ),
        (
            |r| vh(r).include_request_attempt_count = true,
            "route configuration 'rc1': virtual_hosts[0].include_request_attempt_count: not supported by legate",
        ),
    ]);
}

#[test]
fn route_metadata_refused() {
    check_refusals(&[
        (
            |r| rt(r, 0).metadata = metadata("legate", &[("retry_nonidempotent", boolean(true))]),
            "route configuration 'rc1': virtual_hosts[0].routes[0].metadata.filter_metadata['legate'].retry_nonidempotent: unknown key 'retry_nonidempotent' (legate knows retry_non_idempotent on routes)",
        ),
        (
            |r| rt(r, 0).metadata = metadata("legate", &[("retry_non_idempotent", text("true"))]),
            "route configuration 'rc1': virtual_hosts[0].routes[0].metadata.filter_metadata['legate'].retry_non_idempotent: must be a bool, not a string",
        ),
        (
            |r| {
                rt(r, 0).metadata = Some(Metadata {
                    filter_metadata: HashMap::new(),
                    typed_filter_metadata: HashMap::from([("legate".to_owned(), Any::default())]),
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].metadata.typed_filter_metadata['legate']: not supported by legate (use filter_metadata)",
        ),
        // Routes that do not forward still have their legate keys checked.
        (
            |r| {
                rt(r, 0).action =
                    Some(super::Action::DirectResponse(super::DirectResponseAction {
                        status: 200,
                        ..Default::default()
                    }));
                rt(r, 0).metadata = metadata("legate", &[("circuit_breaker", boolean(true))]);
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].metadata.filter_metadata['legate'].circuit_breaker: unknown key 'circuit_breaker' (legate knows retry_non_idempotent on routes)",
        ),
    ]);
    // Every unknown key is named, in key order.
    let mut r = base();
    rt(&mut r, 0).metadata = metadata("legate", &[("zz", boolean(true)), ("aa", number(1.0))]);
    let got = errors(&r);
    assert_eq!(got.len(), 2);
    assert!(got[0].starts_with(&format!("{ROUTE0}.metadata.filter_metadata['legate'].aa:")));
    assert!(got[1].starts_with(&format!("{ROUTE0}.metadata.filter_metadata['legate'].zz:")));
}

// ---------------------------------------------------------------------------------------------
// Clusters: accepted

#[test]
fn clusters_without_policies_get_the_defaults() {
    let c = static_cluster(&base());
    assert_eq!(
        c.circuit_breakers,
        CircuitBreakers {
            default: Thresholds {
                max_connections: 1024,
                max_pending_requests: 1024,
                max_requests: 1024,
                max_retries: 3,
                retry_budget: None,
                track_remaining: false,
            },
            high: Thresholds::default(),
        }
    );
    assert_eq!(c.outlier_detection, None);
    assert_eq!(c.health_checks, []);
    assert_eq!(c.healthy_panic_threshold_permille, 500);
    assert_eq!(c.classic_breaker, None);
    assert_eq!(c.max_requests_per_connection, None);
}

#[test]
fn circuit_breakers_convert() {
    let mut r = base();
    cl(&mut r, "static").circuit_breakers = Some(XdsCircuitBreakers {
        thresholds: vec![
            XdsThresholds {
                priority: RoutingPriority::High as i32,
                max_connections: u32v(10),
                ..Default::default()
            },
            XdsThresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: u32v(100),
                max_pending_requests: u32v(50),
                max_requests: u32v(200),
                max_retries: u32v(0),
                retry_budget: Some(XdsRetryBudget {
                    budget_percent: Some(Percent { value: 12.5 }),
                    budget_interval: dur(0),
                    min_retry_concurrency: u32v(1),
                }),
                track_remaining: true,
                max_connection_pools: None,
            },
        ],
        per_host_thresholds: Vec::new(),
    });
    assert_eq!(
        static_cluster(&r).circuit_breakers,
        CircuitBreakers {
            default: Thresholds {
                max_connections: 100,
                max_pending_requests: 50,
                max_requests: 200,
                max_retries: 0,
                retry_budget: Some(RetryBudget {
                    budget_permille: 125,
                    min_retry_concurrency: 1,
                }),
                track_remaining: true,
            },
            high: Thresholds {
                max_connections: 10,
                ..Thresholds::default()
            },
        }
    );

    // An empty retry budget takes Envoy's 20% and 3.
    let mut r = base();
    cl(&mut r, "static").circuit_breakers = Some(XdsCircuitBreakers {
        thresholds: vec![XdsThresholds {
            retry_budget: Some(XdsRetryBudget::default()),
            ..Default::default()
        }],
        per_host_thresholds: Vec::new(),
    });
    assert_eq!(
        static_cluster(&r).circuit_breakers.default.retry_budget,
        Some(RetryBudget {
            budget_permille: 200,
            min_retry_concurrency: 3,
        })
    );
}

#[test]
fn outlier_detection_converts() {
    // An empty message: every default.
    let mut r = base();
    cl(&mut r, "static").outlier_detection = Some(XdsOutlierDetection::default());
    assert_eq!(
        static_cluster(&r).outlier_detection,
        Some(OutlierDetection {
            interval: secs(10),
            base_ejection_time: secs(30),
            max_ejection_time: secs(300),
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
        })
    );

    // Every field set.
    let mut r = base();
    cl(&mut r, "static").outlier_detection = Some(XdsOutlierDetection {
        consecutive_5xx: u32v(0),
        interval: xms(500),
        base_ejection_time: dur(5),
        max_ejection_percent: u32v(100),
        enforcing_consecutive_5xx: u32v(1),
        enforcing_success_rate: u32v(2),
        success_rate_minimum_hosts: u32v(3),
        success_rate_request_volume: u32v(4),
        success_rate_stdev_factor: u32v(1000),
        consecutive_gateway_failure: u32v(6),
        enforcing_consecutive_gateway_failure: u32v(7),
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: u32v(8),
        enforcing_consecutive_local_origin_failure: u32v(9),
        enforcing_local_origin_success_rate: u32v(10),
        failure_percentage_threshold: u32v(11),
        enforcing_failure_percentage: u32v(12),
        enforcing_failure_percentage_local_origin: u32v(13),
        failure_percentage_minimum_hosts: u32v(14),
        failure_percentage_request_volume: u32v(15),
        max_ejection_time: dur(60),
        max_ejection_time_jitter: xms(250),
        successful_active_health_check_uneject_host: no(),
        monitors: Vec::new(),
        always_eject_one_host: no(),
        detect_degraded_hosts: no(),
    });
    assert_eq!(
        static_cluster(&r).outlier_detection,
        Some(OutlierDetection {
            interval: ms(500),
            base_ejection_time: secs(5),
            max_ejection_time: secs(60),
            max_ejection_time_jitter: ms(250),
            max_ejection_percent: 100,
            consecutive_5xx: 0,
            enforcing_consecutive_5xx: 1,
            consecutive_gateway_failure: 6,
            enforcing_consecutive_gateway_failure: 7,
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 8,
            enforcing_consecutive_local_origin_failure: 9,
            success_rate_minimum_hosts: 3,
            success_rate_request_volume: 4,
            success_rate_stdev_factor: 1000,
            enforcing_success_rate: 2,
            enforcing_local_origin_success_rate: 10,
            failure_percentage_threshold: 11,
            enforcing_failure_percentage: 12,
            enforcing_failure_percentage_local_origin: 13,
            failure_percentage_minimum_hosts: 14,
            failure_percentage_request_volume: 15,
            successful_active_health_check_uneject_host: false,
        })
    );

    // Without max_ejection_time, a base above 300 s is also the maximum.
    let mut r = base();
    cl(&mut r, "static").outlier_detection = Some(XdsOutlierDetection {
        base_ejection_time: dur(400),
        ..Default::default()
    });
    let o = static_cluster(&r)
        .outlier_detection
        .clone()
        .expect("outlier");
    assert_eq!(
        (o.base_ejection_time, o.max_ejection_time),
        (secs(400), secs(400))
    );
}

#[test]
fn health_checks_convert() {
    let mut r = base();
    cl(&mut r, "static").health_checks = vec![
        XdsHealthCheck {
            timeout: xms(500),
            interval: dur(10),
            initial_jitter: dur(1),
            interval_jitter: xms(100),
            interval_jitter_percent: 20,
            unhealthy_threshold: u32v(2),
            healthy_threshold: u32v(3),
            reuse_connection: no(),
            no_traffic_interval: dur(60),
            no_traffic_healthy_interval: dur(120),
            unhealthy_interval: dur(30),
            unhealthy_edge_interval: dur(2),
            healthy_edge_interval: dur(4),
            event_log_path: "/dev/null".to_owned(),
            always_log_health_check_failures: true,
            always_log_health_check_success: true,
            health_checker: Some(HealthChecker::HttpHealthCheck(XdsHttpHealthCheck {
                host: "health.internal".to_owned(),
                path: "/ready?full=1".to_owned(),
                request_headers_to_add: vec![header("x-probe", "legate")],
                request_headers_to_remove: vec!["X-Trace".to_owned()],
                expected_statuses: vec![
                    Int64Range {
                        start: 200,
                        end: 300,
                    },
                    Int64Range {
                        start: 503,
                        end: 504,
                    },
                ],
                codec_client_type: CodecClientType::Http2 as i32,
                method: RequestMethod::Get as i32,
                response_buffer_size: Some(UInt64Value { value: 2048 }),
                ..Default::default()
            })),
            ..Default::default()
        },
        tcp_check(),
        http_check(healthz()),
    ];
    let c = static_cluster(&r);
    assert_eq!(
        c.health_checks,
        [
            HealthCheck {
                timeout: ms(500),
                interval: secs(10),
                interval_jitter: ms(100),
                interval_jitter_percent: 20,
                initial_jitter: secs(1),
                unhealthy_interval: Some(secs(30)),
                unhealthy_edge_interval: Some(secs(2)),
                healthy_edge_interval: Some(secs(4)),
                unhealthy_threshold: 2,
                healthy_threshold: 3,
                kind: HealthCheckKind::Http(HttpHealthCheck {
                    host: Arc::from("health.internal"),
                    path: Arc::from("/ready?full=1"),
                    expected_statuses: vec![(200, 300), (503, 504)],
                    request_headers_to_add: vec![HeaderValueOption {
                        name: HeaderName::from_static("x-probe"),
                        value: http::HeaderValue::from_static("legate"),
                        append: HeaderAppend::AppendIfExistsOrAdd,
                    }],
                    request_headers_to_remove: vec![HeaderName::from_static("x-trace")],
                    http2: true,
                }),
            },
            HealthCheck {
                timeout: secs(1),
                interval: secs(5),
                interval_jitter: Duration::ZERO,
                interval_jitter_percent: 0,
                initial_jitter: Duration::ZERO,
                unhealthy_interval: None,
                unhealthy_edge_interval: None,
                healthy_edge_interval: None,
                unhealthy_threshold: 3,
                healthy_threshold: 2,
                kind: HealthCheckKind::Tcp,
            },
            HealthCheck {
                timeout: secs(1),
                interval: secs(5),
                interval_jitter: Duration::ZERO,
                interval_jitter_percent: 0,
                initial_jitter: Duration::ZERO,
                unhealthy_interval: None,
                unhealthy_edge_interval: None,
                healthy_edge_interval: None,
                unhealthy_threshold: 3,
                healthy_threshold: 2,
                // The host stays empty: it means the cluster name.
                kind: HealthCheckKind::Http(HttpHealthCheck {
                    host: Arc::from(""),
                    path: Arc::from("/healthz"),
                    expected_statuses: vec![(200, 201)],
                    request_headers_to_add: Vec::new(),
                    request_headers_to_remove: Vec::new(),
                    http2: false,
                }),
            },
        ]
    );

    // Health checks on every discovery type.
    let mut r = base();
    cl(&mut r, "eds").health_checks = vec![tcp_check()];
    assert_eq!(ok(&r).clusters["eds"].health_checks.len(), 1);
    let mut r = base();
    {
        let c = cl(&mut r, "static");
        c.cluster_discovery_type = super::discovery(super::DiscoveryType::StrictDns);
        c.health_checks = vec![tcp_check()];
    }
    assert_eq!(static_cluster(&r).health_checks.len(), 1);
}

#[test]
fn panic_thresholds_convert() {
    for (percent, permille) in [
        (0.0, 0),
        (12.34, 123),
        (50.0, 500),
        (99.96, 1000),
        (100.0, 1000),
    ] {
        let mut r = base();
        cl(&mut r, "static").common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: percent }),
            ..Default::default()
        });
        assert_eq!(
            static_cluster(&r).healthy_panic_threshold_permille,
            permille,
            "{percent}"
        );
    }
    // A common_lb_config without a threshold keeps the default.
    let mut r = base();
    cl(&mut r, "static").common_lb_config = Some(CommonLbConfig::default());
    assert_eq!(static_cluster(&r).healthy_panic_threshold_permille, 500);
}

#[test]
fn classic_breakers_convert() {
    let defaults = ClassicBreaker {
        failure_ratio_permille: 500,
        window: secs(10),
        minimum_requests: 20,
        open_timeout: secs(30),
        half_open_max_requests: 3,
    };
    let cases: Vec<(Vec<(&str, Value)>, ClassicBreaker)> = vec![
        (Vec::new(), defaults.clone()),
        (
            vec![
                ("failure_ratio", number(0.25)),
                ("window", text("500ms")),
                ("minimum_requests", number(5.0)),
                ("open_timeout", text("1m")),
                ("half_open_max_requests", number(1.0)),
            ],
            ClassicBreaker {
                failure_ratio_permille: 250,
                window: ms(500),
                minimum_requests: 5,
                open_timeout: secs(60),
                half_open_max_requests: 1,
            },
        ),
        // Durations as the JSON form of google.protobuf.Duration, or as seconds.
        (
            vec![
                ("failure_ratio", number(1.0)),
                ("window", text("0.250s")),
                ("open_timeout", number(1.5)),
            ],
            ClassicBreaker {
                failure_ratio_permille: 1000,
                window: ms(250),
                open_timeout: ms(1500),
                ..defaults.clone()
            },
        ),
        (
            vec![("window", text("2h")), ("failure_ratio", number(0.001))],
            ClassicBreaker {
                failure_ratio_permille: 1,
                window: secs(7200),
                ..defaults.clone()
            },
        ),
    ];
    for (fields, expected) in cases {
        let mut r = base();
        cl(&mut r, "static").metadata = breaker(&fields);
        assert_eq!(
            static_cluster(&r).classic_breaker,
            Some(expected),
            "{fields:?}"
        );
    }
    // Other namespaces are ignored; the legate namespace without keys sets nothing.
    let mut r = base();
    cl(&mut r, "static").metadata = metadata("envoy.lb", &[("canary", boolean(true))]);
    assert_eq!(static_cluster(&r).classic_breaker, None);
    let mut r = base();
    cl(&mut r, "static").metadata = metadata("legate", &[]);
    assert_eq!(static_cluster(&r).classic_breaker, None);
}

// ---------------------------------------------------------------------------------------------
// Clusters: refused

#[test]
fn circuit_breaker_fields_refused() {
    check_refusals(&[
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(XdsCircuitBreakers {
                    thresholds: vec![XdsThresholds::default(), XdsThresholds::default()],
                    per_host_thresholds: Vec::new(),
                })
            },
            "cluster 'static': circuit_breakers.thresholds[1].priority: duplicate priority DEFAULT (already set by thresholds[0])",
        ),
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(XdsCircuitBreakers {
                    thresholds: vec![XdsThresholds {
                        priority: 5,
                        ..Default::default()
                    }],
                    per_host_thresholds: Vec::new(),
                })
            },
            "cluster 'static': circuit_breakers.thresholds[0].priority: unknown value 5",
        ),
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(XdsCircuitBreakers {
                    thresholds: vec![XdsThresholds {
                        max_connection_pools: u32v(4),
                        ..Default::default()
                    }],
                    per_host_thresholds: Vec::new(),
                })
            },
            "cluster 'static': circuit_breakers.thresholds[0].max_connection_pools: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(XdsCircuitBreakers {
                    thresholds: vec![XdsThresholds {
                        retry_budget: Some(XdsRetryBudget {
                            budget_percent: Some(Percent { value: 101.0 }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    per_host_thresholds: Vec::new(),
                })
            },
            "cluster 'static': circuit_breakers.thresholds[0].retry_budget.budget_percent: 101 is not between 0 and 100",
        ),
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(XdsCircuitBreakers {
                    thresholds: vec![XdsThresholds {
                        retry_budget: Some(XdsRetryBudget {
                            budget_interval: dur(1),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    per_host_thresholds: Vec::new(),
                })
            },
            "cluster 'static': circuit_breakers.thresholds[0].retry_budget.budget_interval: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(XdsCircuitBreakers {
                    thresholds: Vec::new(),
                    per_host_thresholds: vec![XdsThresholds::default()],
                })
            },
            "cluster 'static': circuit_breakers.per_host_thresholds: not supported by legate",
        ),
    ]);
}

#[test]
fn outlier_detection_fields_refused() {
    check_refusals(&[
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    interval: dur(0),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    base_ejection_time: dur(0),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.base_ejection_time: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    max_ejection_time: dur(0),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.max_ejection_time: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    base_ejection_time: dur(60),
                    max_ejection_time: dur(30),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.max_ejection_time: must not be less than base_ejection_time",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    base_ejection_time: dur(400),
                    max_ejection_time: dur(300),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.max_ejection_time: must not be less than base_ejection_time",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    max_ejection_time_jitter: dur(-1),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.max_ejection_time_jitter: must not be negative",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    max_ejection_percent: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.max_ejection_percent: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_consecutive_5xx: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_consecutive_5xx: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_success_rate: u32v(200),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_success_rate: 200 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_consecutive_gateway_failure: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_consecutive_gateway_failure: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_consecutive_local_origin_failure: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_consecutive_local_origin_failure: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_local_origin_success_rate: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_local_origin_success_rate: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    failure_percentage_threshold: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.failure_percentage_threshold: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_failure_percentage: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_failure_percentage: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    enforcing_failure_percentage_local_origin: u32v(101),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.enforcing_failure_percentage_local_origin: 101 is above 100",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    monitors: vec![TypedExtensionConfig::default()],
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.monitors: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    always_eject_one_host: yes(),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.always_eject_one_host: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").outlier_detection = Some(XdsOutlierDetection {
                    detect_degraded_hosts: yes(),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.detect_degraded_hosts: not supported by legate",
        ),
    ]);
}

#[test]
fn health_check_fields_refused() {
    check_refusals(&[
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    timeout: None,
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].timeout: required",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    timeout: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].timeout: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    interval: None,
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].interval: required",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    interval: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    unhealthy_threshold: None,
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].unhealthy_threshold: required",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    unhealthy_threshold: u32v(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].unhealthy_threshold: must be at least 1",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    healthy_threshold: None,
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].healthy_threshold: required",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    healthy_threshold: u32v(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].healthy_threshold: must be at least 1",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    initial_jitter: dur(-1),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].initial_jitter: must not be negative",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    no_traffic_interval: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].no_traffic_interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    no_traffic_healthy_interval: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].no_traffic_healthy_interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    unhealthy_interval: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].unhealthy_interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    unhealthy_edge_interval: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].unhealthy_edge_interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    healthy_edge_interval: dur(0),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].healthy_edge_interval: must be greater than zero",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    alt_port: u32v(8081),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].alt_port: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    tls_options: Some(TlsOptions::default()),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].tls_options: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    transport_socket_match_criteria: Some(Struct::default()),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].transport_socket_match_criteria: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    health_checker: None,
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0]: one of http_health_check or tcp_health_check is required",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    health_checker: Some(HealthChecker::CustomHealthCheck(Default::default())),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].custom_health_check: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    health_checker: Some(HealthChecker::GrpcHealthCheck(Default::default())),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].grpc_health_check: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                        send: Some(Payload {
                            payload: Some(payload::Payload::Text("50494E47".to_owned())),
                        }),
                        ..Default::default()
                    })),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].tcp_health_check.send: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                        receive: vec![Payload::default()],
                        ..Default::default()
                    })),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].tcp_health_check.receive: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![XdsHealthCheck {
                    health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                        proxy_protocol_config: Some(Default::default()),
                        ..Default::default()
                    })),
                    ..tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].tcp_health_check.proxy_protocol_config: not supported by legate",
        ),
        (
            |r| cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck::default())],
            "cluster 'static': health_checks[0].http_health_check.path: required",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    path: "healthz".to_owned(),
                    ..Default::default()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.path: 'healthz' is not a path starting with '/'",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    host: "bad\nhost".to_owned(),
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.host: 'bad\nhost' is not a valid host",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    expected_statuses: vec![Int64Range {
                        start: 99,
                        end: 200,
                    }],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.expected_statuses[0]: [99, 200) is not a non-empty range within [100, 600)",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    expected_statuses: vec![
                        Int64Range {
                            start: 200,
                            end: 201,
                        },
                        Int64Range {
                            start: 500,
                            end: 601,
                        },
                    ],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.expected_statuses[1]: [500, 601) is not a non-empty range within [100, 600)",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    expected_statuses: vec![Int64Range {
                        start: 200,
                        end: 200,
                    }],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.expected_statuses[0]: [200, 200) is not a non-empty range within [100, 600)",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    retriable_statuses: vec![Int64Range {
                        start: 500,
                        end: 501,
                    }],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.retriable_statuses: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    send: Some(Payload::default()),
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.send: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    receive: vec![Payload::default()],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.receive: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    service_name_matcher: Some(Default::default()),
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.service_name_matcher: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    codec_client_type: CodecClientType::Http3 as i32,
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.codec_client_type: not supported by legate: HTTP3",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    method: RequestMethod::Head as i32,
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.method: not supported by legate: HEAD (only GET)",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    method: RequestMethod::Connect as i32,
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.method: CONNECT is not allowed",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    request_headers_to_add: vec![header(":path", "/x")],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.request_headers_to_add[0].header.key: ':path': pseudo-headers and host may not be modified",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![http_check(XdsHttpHealthCheck {
                    request_headers_to_remove: vec!["bad header".to_owned()],
                    ..healthz()
                })]
            },
            "cluster 'static': health_checks[0].http_health_check.request_headers_to_remove[0]: 'bad header' is not a valid header name: ' ' is not allowed (letters, digits and !#$%&'*+-.^_`|~ only)",
        ),
        // The second check is named by its index.
        (
            |r| {
                cl(r, "static").health_checks = vec![
                    tcp_check(),
                    XdsHealthCheck {
                        interval: None,
                        ..tcp_check()
                    },
                ]
            },
            "cluster 'static': health_checks[1].interval: required",
        ),
    ]);
}

#[test]
fn panic_threshold_and_lb_fields_refused() {
    check_refusals(&[
        (
            |r| {
                cl(r, "static").common_lb_config = Some(CommonLbConfig {
                    healthy_panic_threshold: Some(Percent { value: -1.0 }),
                    ..Default::default()
                })
            },
            "cluster 'static': common_lb_config.healthy_panic_threshold: -1 is not between 0 and 100",
        ),
        (
            |r| {
                cl(r, "static").common_lb_config = Some(CommonLbConfig {
                    healthy_panic_threshold: Some(Percent { value: f64::NAN }),
                    ..Default::default()
                })
            },
            "cluster 'static': common_lb_config.healthy_panic_threshold: NaN is not between 0 and 100",
        ),
        (
            |r| {
                cl(r, "static").common_lb_config = Some(CommonLbConfig {
                    ignore_new_hosts_until_first_hc: true,
                    ..Default::default()
                })
            },
            "cluster 'static': common_lb_config.ignore_new_hosts_until_first_hc: not supported by legate",
        ),
    ]);
}

#[test]
fn cluster_metadata_refused() {
    check_refusals(&[
        (
            |r| cl(r, "static").metadata = metadata("legate", &[("breaker", boolean(true))]),
            "cluster 'static': metadata.filter_metadata['legate'].breaker: unknown key 'breaker' (legate knows circuit_breaker on clusters)",
        ),
        (
            |r| {
                cl(r, "static").metadata =
                    metadata("legate", &[("retry_non_idempotent", boolean(true))])
            },
            "cluster 'static': metadata.filter_metadata['legate'].retry_non_idempotent: unknown key 'retry_non_idempotent' (legate knows circuit_breaker on clusters)",
        ),
        (
            |r| cl(r, "static").metadata = metadata("legate", &[("circuit_breaker", text("on"))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker: must be a struct, not a string",
        ),
        (
            |r| {
                cl(r, "static").metadata = Some(Metadata {
                    filter_metadata: HashMap::new(),
                    typed_filter_metadata: HashMap::from([("legate".to_owned(), Any::default())]),
                })
            },
            "cluster 'static': metadata.typed_filter_metadata['legate']: not supported by legate (use filter_metadata)",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("ratio", number(0.5))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.ratio: unknown key 'ratio' (legate knows failure_ratio, window, minimum_requests, open_timeout and half_open_max_requests)",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("failure_ratio", number(0.0))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.failure_ratio: 0 is not greater than 0 and at most 1",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("failure_ratio", number(1.5))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.failure_ratio: 1.5 is not greater than 0 and at most 1",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("failure_ratio", number(0.0001))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.failure_ratio: 0.0001 is below the smallest ratio, 0.001",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("failure_ratio", text("0.5"))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.failure_ratio: must be a number, not a string",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("window", text("10"))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.window: '10' is not a duration (e.g. 10s, 500ms)",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("window", text("0s"))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.window: must be greater than zero",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("window", number(-1.0))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.window: -1 is not a duration",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("window", boolean(true))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.window: must be a duration string or a number of seconds, not a bool",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("open_timeout", text("0ms"))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.open_timeout: must be greater than zero",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("minimum_requests", number(0.0))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.minimum_requests: 0 is not a whole number between 1 and 4294967295",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("minimum_requests", number(2.5))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.minimum_requests: 2.5 is not a whole number between 1 and 4294967295",
        ),
        (
            |r| cl(r, "static").metadata = breaker(&[("half_open_max_requests", number(0.0))]),
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.half_open_max_requests: 0 is not a whole number between 1 and 4294967295",
        ),
        (
            |r| {
                cl(r, "static").metadata =
                    breaker(&[("half_open_max_requests", Value { kind: None })])
            },
            "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.half_open_max_requests: must be a number, not null",
        ),
    ]);
}

#[test]
fn one_error_per_problem_across_resilience_fields() {
    // Every resilience error in one set is reported, each once.
    let mut r = base();
    ra(&mut r, 0).retry_policy = Some(policy("5xx,grpc-cancelled,bogus"));
    cl(&mut r, "static").outlier_detection = Some(XdsOutlierDetection {
        interval: dur(0),
        max_ejection_percent: u32v(200),
        ..Default::default()
    });
    cl(&mut r, "static").metadata =
        breaker(&[("window", text("x")), ("failure_ratio", number(2.0))]);
    let got = build("v1", &r).expect_err("invalid");
    assert_eq!(
        got.errors
            .iter()
            .map(|e| e.field.as_str())
            .collect::<Vec<_>>(),
        [
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on",
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on",
            "outlier_detection.max_ejection_percent",
            "outlier_detection.interval",
            "metadata.filter_metadata['legate'].circuit_breaker.failure_ratio",
            "metadata.filter_metadata['legate'].circuit_breaker.window",
        ]
    );
}

/// Durations an Instant cannot hold (xDS allows `i64::MAX` seconds) are refused with the
/// field path wherever they appear, so no deadline computed from them can overflow.
#[test]
fn absurd_durations_are_refused() {
    const HUGE: i64 = i64::MAX;
    let limit = "longer than legate's limit of one year (31536000s)";
    let mut r = base();
    ra(&mut r, 0).timeout = dur(HUGE);
    ra(&mut r, 0).retry_policy = Some(XdsRetryPolicy {
        per_try_timeout: dur(HUGE),
        ..Default::default()
    });
    cl(&mut r, "static").health_checks = vec![XdsHealthCheck {
        interval: dur(HUGE),
        ..tcp_check()
    }];
    cl(&mut r, "static").outlier_detection = Some(XdsOutlierDetection {
        base_ejection_time: dur(HUGE),
        ..Default::default()
    });
    cl(&mut r, "static").metadata = breaker(&[("open_timeout", number(1e18))]);
    let got = errors(&r);
    for field in [
        "route configuration 'rc1': virtual_hosts[0].routes[0].route.timeout: 9223372036854775807s",
        "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy.per_try_timeout: 9223372036854775807s",
        "cluster 'static': health_checks[0].interval: 9223372036854775807s",
        "cluster 'static': outlier_detection.base_ejection_time: 9223372036854775807s",
        "cluster 'static': metadata.filter_metadata['legate'].circuit_breaker.open_timeout: 1000000000000000000s",
    ] {
        assert!(
            got.iter()
                .any(|e| e.starts_with(field) && e.ends_with(limit)),
            "no error for {field} in {got:#?}"
        );
    }
    assert_eq!(got.len(), 5, "{got:#?}");

    // One year exactly is still accepted.
    let mut r = base();
    ra(&mut r, 0).timeout = dur(365 * 24 * 3600);
    ok(&r);
}
