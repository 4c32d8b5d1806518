//! HCM `http_filters` and `typed_per_filter_config`: what legate keeps, in which order, and
//! the exact NACK text of what it refuses.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as XdsLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, HttpStatus, TokenBucket};
use envoy_types::pb::google::protobuf::{Any, Duration as XdsDuration, UInt32Value};

use super::{any, base, cors_filter, edit_hcm, errors, ok, rt, vh};
use envoy_types::pb::envoy::config::route::v3::RateLimit as XdsRateLimit;
use envoy_types::pb::envoy::config::route::v3::rate_limit::Action;
use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{
    ActionSpecifier, GenericKey, RequestHeaders,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

use crate::filter::{
    DescriptorAction, DescriptorEntry, FilterKind, LocalRateLimit, PerFilterConfig,
    TokenBucket as Bucket,
};
use crate::type_url;

fn bucket(max: u32, per_fill: u32, ms: i64) -> Option<TokenBucket> {
    Some(TokenBucket {
        max_tokens: max,
        tokens_per_fill: Some(UInt32Value { value: per_fill }),
        fill_interval: Some(XdsDuration {
            seconds: ms / 1000,
            nanos: i32::try_from((ms % 1000) * 1_000_000).expect("nanos"),
        }),
    })
}

fn percent(p: u32) -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: p,
            denominator: 0,
        }),
        runtime_key: "rl".to_owned(),
    })
}

fn limit(max: u32) -> XdsLocalRateLimit {
    XdsLocalRateLimit {
        stat_prefix: "rl".to_owned(),
        token_bucket: bucket(max, 1, 1000),
        filter_enabled: percent(100),
        filter_enforced: percent(100),
        ..Default::default()
    }
}

fn rl_filter(name: &str, l: &XdsLocalRateLimit) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            type_url::LOCAL_RATE_LIMIT,
            l,
        ))),
        ..Default::default()
    }
}

#[test]
fn local_rate_limit_is_kept_in_order_before_the_router() {
    let mut r = base();
    edit_hcm(&mut r, |h| {
        let mut disabled = rl_filter("second", &limit(5));
        disabled.disabled = true;
        h.http_filters.insert(0, disabled);
        let mut l = limit(3);
        l.status = Some(HttpStatus { code: 503 });
        l.enable_x_ratelimit_headers = 1;
        h.http_filters.insert(0, rl_filter("first", &l));
        let mut optional = cors_filter();
        optional.is_optional = true;
        h.http_filters.insert(1, optional);
    });
    let s = ok(&r);
    let f = &s.listeners[0].http_filters;
    assert_eq!(f.len(), 2);
    assert_eq!(&*f[0].name, "first");
    assert!(!f[0].disabled);
    let FilterKind::LocalRateLimit(l) = &f[0].config else {
        panic!("a local rate limit");
    };
    assert_eq!(
        **l,
        LocalRateLimit {
            stat_prefix: Arc::from("rl"),
            status: 503,
            token_bucket: Some(Bucket {
                max_tokens: 3,
                tokens_per_fill: 1,
                fill_interval: Duration::from_secs(1),
            }),
            enabled_ppm: 1_000_000,
            enforced_ppm: 1_000_000,
            request_headers_to_add_when_not_enforced: Vec::new(),
            response_headers_to_add: Vec::new(),
            x_ratelimit_headers: true,
            grpc_resource_exhausted: false,
            descriptors: Vec::new(),
            rate_limits: Vec::new(),
            always_consume_default: true,
            max_dynamic_descriptors: 20,
            retry_after_header: false,
        }
    );
    assert_eq!(&*f[1].name, "second");
    assert!(f[1].disabled);
}

#[test]
fn local_rate_limit_defaults_are_envoys() {
    let mut r = base();
    edit_hcm(&mut r, |h| {
        let l = XdsLocalRateLimit {
            stat_prefix: "rl".to_owned(),
            // Below 400: Envoy answers 429.
            status: Some(HttpStatus { code: 200 }),
            ..Default::default()
        };
        h.http_filters.insert(0, rl_filter("rl", &l));
    });
    let s = ok(&r);
    let FilterKind::LocalRateLimit(l) = &s.listeners[0].http_filters[0].config else {
        panic!("a local rate limit");
    };
    assert_eq!(l.status, 429);
    assert_eq!(l.token_bucket, None);
    // filter_enabled and filter_enforced: 0 % unless set.
    assert_eq!((l.enabled_ppm, l.enforced_ppm), (0, 0));
    assert!(!l.x_ratelimit_headers);
}

#[test]
fn per_filter_configs_on_virtual_hosts_and_routes() {
    let mut r = base();
    vh(&mut r)
        .typed_per_filter_config
        .insert("rl".to_owned(), any(type_url::LOCAL_RATE_LIMIT, &limit(7)));
    let disable = FilterConfig {
        config: None,
        is_optional: false,
        disabled: true,
    };
    rt(&mut r, 0)
        .typed_per_filter_config
        .insert("rl".to_owned(), any(type_url::FILTER_CONFIG, &disable));
    rt(&mut r, 0).typed_per_filter_config.insert(
        "other".to_owned(),
        any(type_url::FILTER_CONFIG, &FilterConfig::default()),
    );
    // An optional override legate does not know is left out.
    let optional = FilterConfig {
        config: Some(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
                .to_owned(),
            value: Vec::new(),
        }),
        is_optional: true,
        disabled: false,
    };
    rt(&mut r, 0)
        .typed_per_filter_config
        .insert("cors".to_owned(), any(type_url::FILTER_CONFIG, &optional));
    let s = ok(&r);
    let vhost = &s.route_configs["rc1"].virtual_hosts[0];
    let [(name, PerFilterConfig::Config(FilterKind::LocalRateLimit(l)))] = &*vhost.per_filter
    else {
        panic!("one override: {:?}", vhost.per_filter);
    };
    assert_eq!(&**name, "rl");
    assert_eq!(l.token_bucket.map(|b| b.max_tokens), Some(7));
    let route = &vhost.routes[0];
    assert_eq!(
        route
            .per_filter
            .iter()
            .map(|(n, c)| (&**n, c.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("other", PerFilterConfig::Enabled),
            ("rl", PerFilterConfig::Disabled)
        ]
    );
}

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

#[test]
fn descriptors_and_their_actions_are_kept() {
    let mut r = base();
    let l = XdsLocalRateLimit {
        descriptors: vec![
            LocalRateLimitDescriptor {
                entries: vec![entry("client", "gold")],
                token_bucket: bucket(100, 1, 1000),
                shadow_mode: false,
            },
            LocalRateLimitDescriptor {
                entries: vec![entry("client", "")],
                token_bucket: bucket(2, 1, 1000),
                shadow_mode: false,
            },
        ],
        rate_limits: vec![XdsRateLimit {
            actions: vec![
                Action {
                    action_specifier: Some(ActionSpecifier::RequestHeaders(RequestHeaders {
                        header_name: "X-Client".to_owned(),
                        descriptor_key: "client".to_owned(),
                        skip_if_absent: false,
                    })),
                },
                Action {
                    action_specifier: Some(ActionSpecifier::RemoteAddress(Default::default())),
                },
                Action {
                    action_specifier: Some(ActionSpecifier::GenericKey(GenericKey {
                        descriptor_value: "v".to_owned(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        }],
        max_dynamic_descriptors: Some(UInt32Value { value: 500 }),
        enable_retry_after_header: true,
        ..limit(3)
    };
    edit_hcm(&mut r, |h| h.http_filters.insert(0, rl_filter("rl", &l)));
    let s = ok(&r);
    let FilterKind::LocalRateLimit(got) = &s.listeners[0].http_filters[0].config else {
        panic!("a local rate limit");
    };
    let e = |k: &str, v: Option<&str>| DescriptorEntry {
        key: Arc::from(k),
        value: v.map(Arc::from),
    };
    assert_eq!(got.descriptors.len(), 2);
    assert_eq!(got.descriptors[0].entries, vec![e("client", Some("gold"))]);
    assert_eq!(
        got.descriptors[1].entries,
        vec![e("client", None)],
        "empty: any value"
    );
    assert_eq!(got.descriptors[1].token_bucket.max_tokens, 2);
    assert_eq!(
        got.rate_limits[0].actions,
        vec![
            DescriptorAction::RequestHeader {
                header: Arc::from("x-client"),
                key: Arc::from("client"),
                skip_if_absent: false,
            },
            DescriptorAction::RemoteAddress,
            DescriptorAction::GenericKey {
                key: Arc::from("generic_key"),
                value: Arc::from("v"),
            },
        ]
    );
    assert_eq!(got.max_dynamic_descriptors, 500);
    assert!(got.retry_after_header);
}

#[test]
fn refused_with_their_paths() {
    let hcm = "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[0]";
    let cases: Vec<(XdsLocalRateLimit, String)> = vec![
        (
            XdsLocalRateLimit {
                descriptors: vec![LocalRateLimitDescriptor::default()],
                ..limit(1)
            },
            format!("{hcm}.typed_config.descriptors[0].entries: needs 1 to 16 entries, has 0"),
        ),
        (
            XdsLocalRateLimit {
                descriptors: vec![LocalRateLimitDescriptor {
                    entries: vec![entry("user", "")],
                    token_bucket: None,
                    shadow_mode: false,
                }],
                ..limit(1)
            },
            format!("{hcm}.typed_config.descriptors[0].token_bucket: required"),
        ),
        (
            XdsLocalRateLimit {
                rate_limits: vec![XdsRateLimit {
                    actions: vec![Action {
                        action_specifier: Some(ActionSpecifier::DestinationCluster(
                            Default::default(),
                        )),
                    }],
                    ..Default::default()
                }],
                ..limit(1)
            },
            format!(
                "{hcm}.typed_config.rate_limits[0].actions[0]: not supported by legate \
                 (request_headers, remote_address and generic_key are)"
            ),
        ),
        (
            XdsLocalRateLimit {
                max_dynamic_descriptors: Some(UInt32Value { value: 0 }),
                ..limit(1)
            },
            format!("{hcm}.typed_config.max_dynamic_descriptors: 0 is not within 1..=100000"),
        ),
        (
            XdsLocalRateLimit {
                local_rate_limit_per_downstream_connection: true,
                ..limit(1)
            },
            format!(
                "{hcm}.typed_config.local_rate_limit_per_downstream_connection: not supported by legate"
            ),
        ),
        (
            XdsLocalRateLimit {
                token_bucket: bucket(1, 1, 10),
                ..limit(1)
            },
            format!(
                "{hcm}.typed_config.token_bucket.fill_interval: must be at least 50 ms (Envoy's limit for local rate limits)"
            ),
        ),
        (
            XdsLocalRateLimit {
                token_bucket: bucket(0, 1, 1000),
                ..limit(1)
            },
            format!("{hcm}.typed_config.token_bucket.max_tokens: must be greater than zero"),
        ),
        (
            XdsLocalRateLimit {
                stat_prefix: String::new(),
                ..limit(1)
            },
            format!("{hcm}.typed_config.stat_prefix: must not be empty"),
        ),
    ];
    for (l, expected) in cases {
        let mut r = base();
        edit_hcm(&mut r, |h| h.http_filters.insert(0, rl_filter("rl", &l)));
        assert_eq!(errors(&r), vec![expected]);
    }

    // So is a route configuration's entry, at its own path.
    let mut r = base();
    r.route_configs[0]
        .typed_per_filter_config
        .insert("cors".to_owned(), Any::default());
    assert_eq!(
        errors(&r),
        vec![
            "route configuration 'rc1': typed_per_filter_config[\"cors\"]: filter type '' is not supported by legate"
        ]
    );

    // A per-route configuration needs its own bucket.
    let mut r = base();
    let no_bucket = XdsLocalRateLimit {
        token_bucket: None,
        ..limit(1)
    };
    rt(&mut r, 0)
        .typed_per_filter_config
        .insert("rl".to_owned(), any(type_url::LOCAL_RATE_LIMIT, &no_bucket));
    assert_eq!(
        errors(&r),
        vec![
            "route configuration 'rc1': virtual_hosts[0].routes[0].typed_per_filter_config[\"rl\"].token_bucket: required in a per-route configuration"
        ]
    );

    // Two filters with one name could not be told apart by per-route overrides.
    let mut r = base();
    edit_hcm(&mut r, |h| {
        h.http_filters.insert(0, rl_filter("rl", &limit(1)));
        h.http_filters.insert(0, rl_filter("rl", &limit(2)));
    });
    assert_eq!(
        errors(&r),
        vec![
            "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[1].name: duplicate http filter name 'rl'"
        ]
    );
}

mod fault {
    use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay as XdsDelay;
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::{
        FaultDelaySecifier, HeaderDelay,
    };
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
        FaultAbort as XdsAbort, HttpFault,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, http_filter,
    };
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::super::{any, base, edit_hcm, errors, ok};
    use crate::filter::{Fault, FaultAbort, FaultDelay, FilterKind, Fraction};
    use crate::type_url;

    fn filter(f: &HttpFault) -> HttpFilter {
        HttpFilter {
            name: "envoy.filters.http.fault".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                type_url::FAULT,
                f,
            ))),
            ..Default::default()
        }
    }

    #[test]
    fn delay_abort_and_max_active_faults() {
        let mut r = base();
        let f = HttpFault {
            delay: Some(XdsDelay {
                percentage: Some(FractionalPercent {
                    numerator: 5,
                    denominator: 1,
                }),
                fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(HeaderDelay {})),
            }),
            abort: Some(XdsAbort {
                // Above the denominator: 100 %.
                percentage: Some(FractionalPercent {
                    numerator: 150,
                    denominator: 0,
                }),
                error_type: Some(ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            max_active_faults: Some(UInt32Value { value: 2 }),
            ..Default::default()
        };
        edit_hcm(&mut r, |h| h.http_filters.insert(0, filter(&f)));
        let s = ok(&r);
        let FilterKind::Fault(f) = &s.listeners[0].http_filters[0].config else {
            panic!("a fault filter");
        };
        assert_eq!(
            **f,
            Fault {
                delay: Some(FaultDelay {
                    fixed: None,
                    percentage: Fraction {
                        numerator: 5,
                        denominator: 10_000
                    },
                }),
                abort: Some(FaultAbort {
                    http_status: Some(503),
                    grpc_status: None,
                    percentage: Fraction {
                        numerator: 100,
                        denominator: 100
                    },
                }),
                max_active_faults: Some(2),
            }
        );
        assert_eq!(f.delay.as_ref().map(|d| d.percentage.ppm()), Some(500));
    }

    #[test]
    fn grpc_status_abort_is_kept() {
        let mut r = base();
        let f = HttpFault {
            abort: Some(XdsAbort {
                error_type: Some(ErrorType::GrpcStatus(8)),
                ..Default::default()
            }),
            ..Default::default()
        };
        edit_hcm(&mut r, |h| h.http_filters.insert(0, filter(&f)));
        let s = ok(&r);
        let FilterKind::Fault(f) = &s.listeners[0].http_filters[0].config else {
            panic!("a fault filter");
        };
        let abort = f.abort.as_ref().map(|a| (a.http_status, a.grpc_status));
        assert_eq!(abort, Some((None, Some(8))));
    }

    #[test]
    fn refused_with_their_paths() {
        let at =
            "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
        let cases = [
            (
                HttpFault {
                    headers: vec![HeaderMatcher::default()],
                    ..Default::default()
                },
                format!("{at}.headers: not supported by legate"),
            ),
            (
                HttpFault {
                    abort: Some(XdsAbort {
                        error_type: Some(ErrorType::GrpcStatus(17)),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                format!("{at}.abort.grpc_status: 17 is not a gRPC status code (0..=16)"),
            ),
            (
                HttpFault {
                    abort: Some(XdsAbort {
                        error_type: Some(ErrorType::HttpStatus(700)),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                format!("{at}.abort.http_status: 700 is not in 200..600"),
            ),
        ];
        for (f, expected) in cases {
            let mut r = base();
            edit_hcm(&mut r, |h| h.http_filters.insert(0, filter(&f)));
            assert_eq!(errors(&r), vec![expected]);
        }
    }
}
