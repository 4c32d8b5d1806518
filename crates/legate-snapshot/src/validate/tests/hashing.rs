//! Consistent hashing: RING_HASH and MAGLEV clusters and the route's `hash_policy`.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy as XdsLbPolicy, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as XdsHashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, CookieAttribute, FilterState, Header, PolicySpecifier,
    QueryParameter,
};
use envoy_types::pb::google::protobuf::{Duration as XdsDuration, UInt64Value};

use super::{Resources, base, cl, errors, ok, ra};
use crate::{CookieHash, HashMethod, HashPolicy, LbPolicy, RouteAction, Snapshot};

/// An edit of the base resources.
type Edit = Box<dyn Fn(&mut Resources)>;

fn u64v(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

fn ring(min: Option<u64>, max: Option<u64>) -> impl Fn(&mut Resources) {
    move |r| {
        let c = cl(r, "static");
        c.lb_policy = XdsLbPolicy::RingHash as i32;
        c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: min.and_then(u64v),
            maximum_ring_size: max.and_then(u64v),
            hash_function: HashFunction::XxHash as i32,
        }));
    }
}

fn maglev(size: Option<u64>) -> impl Fn(&mut Resources) {
    move |r| {
        let c = cl(r, "static");
        c.lb_policy = XdsLbPolicy::Maglev as i32;
        c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
            table_size: size.and_then(u64v),
        }));
    }
}

fn policy_of(edit: impl Fn(&mut Resources)) -> LbPolicy {
    let mut r = base();
    edit(&mut r);
    ok(&r).clusters["static"].lb_policy
}

fn errors_of(edit: impl Fn(&mut Resources)) -> Vec<String> {
    let mut r = base();
    edit(&mut r);
    errors(&r)
}

#[test]
fn ring_hash_and_maglev_convert_with_envoy_defaults() {
    let rh = |min, max| LbPolicy::RingHash {
        min_ring_size: min,
        max_ring_size: max,
    };
    assert_eq!(policy_of(ring(None, None)), rh(1024, 8 * 1024 * 1024));
    assert_eq!(policy_of(ring(Some(16), Some(64))), rh(16, 64));
    // No lb_config at all: the defaults.
    assert_eq!(
        policy_of(|r: &mut Resources| cl(r, "static").lb_policy = XdsLbPolicy::RingHash as i32),
        rh(1024, 8 * 1024 * 1024)
    );
    assert_eq!(
        policy_of(maglev(None)),
        LbPolicy::Maglev { table_size: 65537 }
    );
    assert_eq!(
        policy_of(maglev(Some(251))),
        LbPolicy::Maglev { table_size: 251 }
    );
    assert_eq!(
        policy_of(maglev(Some(5_000_011))),
        LbPolicy::Maglev {
            table_size: 5_000_011
        }
    );
    assert!(policy_of(maglev(None)).is_hashing());
    assert!(!LbPolicy::Random.is_hashing());
}

#[test]
fn hostile_or_wrong_sizes_are_refused() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(ring(Some(8 * 1024 * 1024 + 1), None)),
            "cluster 'static': ring_hash_lb_config.minimum_ring_size: 8388609 is above the largest ring, 8388608",
        ),
        (
            Box::new(ring(None, Some(u64::MAX))),
            "cluster 'static': ring_hash_lb_config.maximum_ring_size: 18446744073709551615 is above the largest ring, 8388608",
        ),
        (
            Box::new(ring(Some(0), None)),
            "cluster 'static': ring_hash_lb_config.minimum_ring_size: must be at least 1",
        ),
        (
            Box::new(ring(Some(100), Some(10))),
            "cluster 'static': ring_hash_lb_config.minimum_ring_size: 100 is above maximum_ring_size (10)",
        ),
        (
            Box::new(|r: &mut Resources| {
                ring(None, None)(r);
                if let Some(LbConfig::RingHashLbConfig(c)) = &mut cl(r, "static").lb_config {
                    c.hash_function = HashFunction::MurmurHash2 as i32;
                }
            }),
            "cluster 'static': ring_hash_lb_config.hash_function: not supported by legate: MURMUR_HASH_2",
        ),
        (
            Box::new(maglev(Some(65536))),
            "cluster 'static': maglev_lb_config.table_size: 65536 is not a prime",
        ),
        (
            Box::new(maglev(Some(1))),
            "cluster 'static': maglev_lb_config.table_size: 1 is not a prime",
        ),
        (
            Box::new(maglev(Some(5_000_012))),
            "cluster 'static': maglev_lb_config.table_size: 5000012 is above the largest table, 5000011",
        ),
        (
            Box::new(|r: &mut Resources| {
                maglev(None)(r);
                cl(r, "static").lb_policy = XdsLbPolicy::RingHash as i32;
            }),
            "cluster 'static': maglev_lb_config: does not apply to lb_policy RING_HASH",
        ),
    ];
    for (edit, expected) in cases {
        let got = errors_of(edit);
        assert!(
            got.len() == 1 && got[0].starts_with(expected),
            "expected [{expected}], got {got:#?}"
        );
    }
}

fn hp(p: PolicySpecifier, terminal: bool) -> XdsHashPolicy {
    XdsHashPolicy {
        terminal,
        policy_specifier: Some(p),
    }
}

fn hash_policy_of(s: &Snapshot) -> Vec<HashPolicy> {
    match &s.route_configs["rc1"].virtual_hosts[0].routes[0].action {
        RouteAction::Forward(f) => f.hash_policy.to_vec(),
        other => panic!("a forward action, got {other:?}"),
    }
}

#[test]
fn hash_policies_convert_in_order() {
    let mut r = base();
    ra(&mut r, 0).hash_policy = vec![
        hp(
            PolicySpecifier::Header(Header {
                header_name: "X-User".to_owned(),
                regex_rewrite: None,
            }),
            true,
        ),
        hp(
            PolicySpecifier::Cookie(Cookie {
                name: "session".to_owned(),
                ttl: Some(XdsDuration {
                    seconds: 3600,
                    nanos: 0,
                }),
                path: "/".to_owned(),
                attributes: vec![
                    CookieAttribute {
                        name: "SameSite".to_owned(),
                        value: "Lax".to_owned(),
                    },
                    CookieAttribute {
                        name: "Secure".to_owned(),
                        value: String::new(),
                    },
                ],
            }),
            false,
        ),
        hp(
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
            false,
        ),
        hp(
            PolicySpecifier::QueryParameter(QueryParameter {
                name: "user".to_owned(),
            }),
            false,
        ),
    ];
    let got = hash_policy_of(&ok(&r));
    assert_eq!(
        got,
        vec![
            HashPolicy {
                method: HashMethod::Header {
                    name: http::HeaderName::from_static("x-user")
                },
                terminal: true,
            },
            HashPolicy {
                method: HashMethod::Cookie(CookieHash {
                    name: "session".into(),
                    ttl: Some(Duration::from_secs(3600)),
                    path: Some("/".into()),
                    attributes: vec![
                        ("SameSite".into(), "Lax".into()),
                        ("Secure".into(), "".into())
                    ],
                }),
                terminal: false,
            },
            HashPolicy {
                method: HashMethod::SourceIp,
                terminal: false,
            },
            HashPolicy {
                method: HashMethod::QueryParameter {
                    name: "user".into()
                },
                terminal: false,
            },
        ]
    );
    // Unset: empty.
    assert!(hash_policy_of(&ok(&base())).is_empty());
}

#[test]
fn hash_policy_fields_refused() {
    let cookie = |name: &str, path: &str| {
        PolicySpecifier::Cookie(Cookie {
            name: name.to_owned(),
            ttl: None,
            path: path.to_owned(),
            attributes: Vec::new(),
        })
    };
    let pre = "route configuration 'rc1': virtual_hosts[0].routes[0].route.hash_policy";
    let cases: Vec<(Vec<XdsHashPolicy>, String)> = vec![
        (
            vec![hp(
                PolicySpecifier::FilterState(FilterState {
                    key: "k".to_owned(),
                }),
                false,
            )],
            format!("{pre}[0].filter_state: not supported by legate"),
        ),
        (
            vec![hp(
                PolicySpecifier::Header(Header {
                    header_name: "x-user".to_owned(),
                    regex_rewrite: Some(Default::default()),
                }),
                false,
            )],
            format!("{pre}[0].header.regex_rewrite: not supported by legate"),
        ),
        (
            vec![hp(
                PolicySpecifier::Header(Header {
                    header_name: "bad name".to_owned(),
                    regex_rewrite: None,
                }),
                false,
            )],
            format!("{pre}[0].header.header_name: 'bad name' is not a valid header name"),
        ),
        (
            vec![hp(
                PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: false }),
                false,
            )],
            format!("{pre}[0].connection_properties.source_ip: must be true"),
        ),
        (
            vec![hp(
                PolicySpecifier::QueryParameter(QueryParameter {
                    name: String::new(),
                }),
                false,
            )],
            format!("{pre}[0].query_parameter.name: must not be empty"),
        ),
        (
            vec![hp(cookie("a;b", ""), false)],
            format!("{pre}[0].cookie.name: ';' is not allowed in a cookie name"),
        ),
        (
            vec![hp(cookie("id", "/a;Domain=evil"), false)],
            format!("{pre}[0].cookie.path: ';' is not allowed in a cookie attribute"),
        ),
        (
            vec![hp(cookie("id", "/\r\n"), false)],
            format!("{pre}[0].cookie.path: '\\r' is not allowed in a cookie attribute"),
        ),
        (
            vec![hp(cookie("", ""), false); 17],
            format!("{pre}: 17 entries, at most 16 are allowed"),
        ),
    ];
    for (policies, expected) in cases {
        let mut r = base();
        ra(&mut r, 0).hash_policy = policies;
        let got = errors(&r);
        assert!(
            got.len() == 1 && got[0].starts_with(&expected),
            "expected [{expected}], got {got:#?}"
        );
    }
}
