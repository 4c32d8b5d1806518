//! Conversion and consistency tests. Protos are built in code; each case edits a valid base
//! set and checks the exact error (or the converted model).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::HeaderMatchName;

use http::HeaderName;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, CustomClusterType, DiscoveryType, EdsClusterConfig,
    LbConfig, LbPolicy as XdsLbPolicy, LeastRequestLbConfig, RoundRobinLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as XdsCluster, LoadBalancingPolicy, OutlierDetection,
    load_balancing_policy,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::health_check;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ConfigSource, DataSource, HealthCheck,
    HealthStatus as XdsHealthStatus, HeaderValue, HeaderValueOption, Http2ProtocolOptions,
    HttpProtocolOptions as CoreHttpProtocolOptions, Locality, PathConfigSource, RuntimeDouble,
    SocketAddress, TransportSocket, TypedExtensionConfig, address, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener as XdsListener, ListenerFilter, filter,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, HostRewriteSpecifier, MaxStreamDuration,
    UpgradeConfig as RouteUpgradeConfig,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, FilterAction, HeaderMatcher as XdsHeaderMatcher,
    QueryParameterMatcher as XdsQueryParameterMatcher, RedirectAction as XdsRedirectAction,
    HedgePolicy, RetryPolicy, Route as XdsRoute, RouteAction as XdsRouteAction, RouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost, Vhds, WeightedCluster as XdsWeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, StripPortMode, UpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, ScopedRoutes, http_filter,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher as XdsStringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{Int64Range, Percent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as XdsDuration, UInt32Value};
use prost::Message;

use super::{Resources, build};

mod access_log;
mod credentials;
mod filters;
mod hashing;
mod resilience;
mod tls;
mod trace;
use crate::{
    Cluster, ClusterTarget, Codec, Discovery, DnsFamily, Endpoint, EndpointAddress, HeaderAppend,
    HeaderMatchRule, HeaderMatcher, HeaderValueOption as Hvo, HealthStatus, HostRewrite, LbPolicy,
    Listener, LoadAssignment, LocalityEndpoints, PathMatch, QueryParameterMatcher, RedirectAction,
    RouteAction, RouteConfig, RouteSource, Snapshot, StringMatcher, StringPattern,
    UpstreamProtocol, type_url,
};

// ---------------------------------------------------------------------------------------------
// Builders

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

fn dur(seconds: i64) -> Option<XdsDuration> {
    Some(XdsDuration { seconds, nanos: 0 })
}

fn yes() -> Option<BoolValue> {
    Some(BoolValue { value: true })
}

fn no() -> Option<BoolValue> {
    Some(BoolValue { value: false })
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn router_filter(router: &Router) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            type_url::ROUTER,
            router,
        ))),
        ..Default::default()
    }
}

fn cors_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.cors".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors".to_owned(),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: name.to_owned(),
    })
}

fn hcm(routes: RouteSpecifier) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "ingress".to_owned(),
        http_filters: vec![router_filter(&Router::default())],
        route_specifier: Some(routes),
        ..Default::default()
    }
}

fn listener(name: &str, port: u32, hcm: &HttpConnectionManager) -> XdsListener {
    XdsListener {
        name: name.to_owned(),
        address: socket("127.0.0.1", port),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(
                    type_url::HTTP_CONNECTION_MANAGER,
                    hcm,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(path: PathSpecifier, action: Action) -> XdsRoute {
    XdsRoute {
        r#match: Some(XdsRouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}

fn to_cluster(cluster: &str) -> Action {
    Action::Route(XdsRouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    })
}

fn weighted(entries: &[(&str, u32)]) -> Action {
    Action::Route(XdsRouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(XdsWeightedCluster {
            clusters: entries
                .iter()
                .map(|(name, w)| ClusterWeight {
                    name: (*name).to_owned(),
                    weight: u32v(*w),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    })
}

fn vhost(name: &str, domains: &[&str], routes: Vec<XdsRoute>) -> XdsVirtualHost {
    XdsVirtualHost {
        name: name.to_owned(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        routes,
        ..Default::default()
    }
}

fn lb_endpoint(ip: &str, port: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(XdsEndpoint {
            address: socket(ip, port),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn assignment(name: &str, endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn discovery(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

/// A valid set: listener `l1` (RDS `rc1`), route configuration `rc1` with one virtual host,
/// a STATIC cluster `static` and an EDS cluster `eds` with its assignment.
fn base() -> Resources {
    Resources {
        listeners: vec![listener("l1", 10000, &hcm(rds("rc1")))],
        route_configs: vec![RouteConfiguration {
            name: "rc1".to_owned(),
            virtual_hosts: vec![vhost(
                "vh1",
                &["Example.com", "*.example.com"],
                vec![
                    route(
                        PathSpecifier::Prefix("/api".to_owned()),
                        to_cluster("static"),
                    ),
                    route(
                        PathSpecifier::Prefix("/".to_owned()),
                        weighted(&[("eds", 80), ("static", 20)]),
                    ),
                ],
            )],
            ..Default::default()
        }],
        clusters: vec![
            XdsCluster {
                name: "static".to_owned(),
                cluster_discovery_type: discovery(DiscoveryType::Static),
                load_assignment: Some(assignment("static", vec![lb_endpoint("10.0.0.1", 80)])),
                ..Default::default()
            },
            XdsCluster {
                name: "eds".to_owned(),
                cluster_discovery_type: discovery(DiscoveryType::Eds),
                eds_cluster_config: Some(EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: String::new(),
                }),
                ..Default::default()
            },
        ],
        load_assignments: vec![assignment(
            "eds",
            vec![lb_endpoint("10.0.1.1", 8080), {
                let mut e = lb_endpoint("10.0.1.2", 8080);
                e.load_balancing_weight = u32v(2);
                e.health_status = XdsHealthStatus::Degraded as i32;
                e
            }],
        )],
        secrets: Vec::new(),
    }
}

// Accessors for editing the base set.

fn edit_hcm(r: &mut Resources, f: impl FnOnce(&mut HttpConnectionManager)) {
    let Some(filter::ConfigType::TypedConfig(a)) =
        &mut r.listeners[0].filter_chains[0].filters[0].config_type
    else {
        panic!("base listener has a typed hcm");
    };
    let mut h = HttpConnectionManager::decode(a.value.as_slice()).expect("hcm decodes");
    f(&mut h);
    a.value = h.encode_to_vec();
}

fn rc(r: &mut Resources) -> &mut RouteConfiguration {
    &mut r.route_configs[0]
}

fn vh(r: &mut Resources) -> &mut XdsVirtualHost {
    &mut r.route_configs[0].virtual_hosts[0]
}

fn rt(r: &mut Resources, i: usize) -> &mut XdsRoute {
    &mut r.route_configs[0].virtual_hosts[0].routes[i]
}

fn rmatch(r: &mut Resources) -> &mut XdsRouteMatch {
    rt(r, 0).r#match.as_mut().expect("base route has a match")
}

fn ra(r: &mut Resources, i: usize) -> &mut XdsRouteAction {
    match &mut rt(r, i).action {
        Some(Action::Route(a)) => a,
        _ => panic!("base route {i} forwards"),
    }
}

fn wc(r: &mut Resources) -> &mut XdsWeightedCluster {
    match &mut ra(r, 1).cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(w)) => w,
        _ => panic!("base route 1 is weighted"),
    }
}

fn cl<'a>(r: &'a mut Resources, name: &str) -> &'a mut XdsCluster {
    r.clusters
        .iter_mut()
        .find(|c| c.name == name)
        .expect("base cluster")
}

fn cla(r: &mut Resources) -> &mut ClusterLoadAssignment {
    &mut r.load_assignments[0]
}

fn lb_ep(r: &mut Resources) -> &mut LbEndpoint {
    &mut r.load_assignments[0].endpoints[0].lb_endpoints[0]
}

fn static_ep_address(r: &mut Resources) -> &mut Option<Address> {
    let la = cl(r, "static")
        .load_assignment
        .as_mut()
        .expect("static endpoints");
    match &mut la.endpoints[0].lb_endpoints[0].host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => &mut e.address,
        _ => panic!("base endpoint"),
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        ..Default::default()
    }
}

fn safe_regex(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_owned(),
        engine_type: None,
    }
}

fn ok(r: &Resources) -> Snapshot {
    match build("v1", r) {
        Ok(s) => s,
        Err(e) => panic!("unexpected errors: {e}"),
    }
}

fn errors(r: &Resources) -> Vec<String> {
    match build("v1", r) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The valid set

#[test]
fn base_set_converts() {
    let s = ok(&base());
    assert_eq!(s.version, "v1");

    let l = &s.listeners[0];
    let expected = Listener {
        tracing: None,
        name: Arc::from("l1"),
        address: "127.0.0.1:10000".parse::<SocketAddr>().expect("addr"),
        stat_prefix: Arc::from("ingress"),
        codec: Codec::Auto,
        routes: RouteSource::Rds(Arc::from("rc1")),
        strip_any_host_port: false,
        upgrades: Vec::new(),
        stream_idle_timeout: Some(Duration::from_secs(300)),
        request_timeout: None,
        idle_timeout: Some(Duration::from_secs(3600)),
        request_headers_timeout: Some(Duration::from_secs(10)),
        max_connections: None,
        generate_request_id: true,
        append_x_forwarded_for: false,
        tls: None,
        access_logs: Vec::new(),
        http_filters: Arc::from([]),
    };
    assert_eq!(**l, expected);

    let rc = &s.route_configs["rc1"];
    assert!(rc.domain_index.is_built());
    let vh = &rc.virtual_hosts[0];
    assert_eq!(
        vh.domains,
        vec![Arc::from("example.com"), Arc::from("*.example.com")]
    );
    let RouteAction::Forward(f) = &vh.routes[0].action else {
        panic!("forward");
    };
    assert_eq!(f.target, ClusterTarget::Single(Arc::from("static")));
    assert_eq!(f.timeout, Some(Duration::from_secs(15)));
    assert_eq!(f.idle_timeout, None);
    assert_eq!(f.host_rewrite, HostRewrite::Keep);
    assert!(vh.routes[0].matcher.case_sensitive);
    let RouteAction::Forward(f) = &vh.routes[1].action else {
        panic!("forward");
    };
    let ClusterTarget::Weighted { clusters, total } = &f.target else {
        panic!("weighted");
    };
    assert_eq!(*total, 100);
    assert_eq!(
        clusters
            .iter()
            .map(|c| (&*c.name, c.weight))
            .collect::<Vec<_>>(),
        vec![("eds", 80), ("static", 20)]
    );

    let defaults = |name: &str, discovery, load_assignment| Cluster {
        name: Arc::from(name),
        discovery,
        lb_policy: LbPolicy::RoundRobin,
        protocol: UpstreamProtocol::Http1,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Some(Duration::from_secs(3600)),
        max_requests_per_connection: None,
        circuit_breakers: crate::CircuitBreakers::default(),
        outlier_detection: None,
        health_checks: Vec::new(),
        healthy_panic_threshold_permille: 500,
        classic_breaker: None,
        load_assignment,
        tls: None,
    };
    let locality = |endpoints| LoadAssignment {
        localities: vec![LocalityEndpoints {
            region: Arc::from(""),
            zone: Arc::from(""),
            sub_zone: Arc::from(""),
            weight: None,
            endpoints,
        }],
    };
    let ep = |addr: &str, weight, health| Endpoint {
        address: EndpointAddress::Socket(addr.parse().expect("addr")),
        weight,
        health,
        hostname: None,
    };
    assert_eq!(
        *s.clusters["static"],
        defaults(
            "static",
            Discovery::Static,
            locality(vec![ep("10.0.0.1:80", 1, HealthStatus::Healthy)])
        )
    );
    assert_eq!(
        *s.clusters["eds"],
        defaults(
            "eds",
            Discovery::Eds {
                service_name: Arc::from("eds")
            },
            locality(vec![
                ep("10.0.1.1:8080", 1, HealthStatus::Healthy),
                ep("10.0.1.2:8080", 2, HealthStatus::Degraded),
            ])
        )
    );
}

#[test]
fn listeners_sorted_by_name() {
    let mut r = base();
    let h = hcm(rds("rc1"));
    r.listeners = vec![
        listener("zeta", 1, &h),
        listener("alpha", 2, &h),
        listener("mid", 3, &h),
    ];
    let names: Vec<String> = ok(&r)
        .listeners
        .iter()
        .map(|l| l.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
}

#[test]
fn empty_set_is_valid() {
    let s = ok(&Resources::default());
    assert_eq!(
        s,
        Snapshot {
            version: "v1".to_owned(),
            ..Snapshot::empty()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Accepted fields and their conversion

#[test]
fn listener_options_convert() {
    let mut r = base();
    edit_hcm(&mut r, |h| {
        h.codec_type = CodecType::Http2 as i32;
        h.strip_port_mode = Some(StripPortMode::StripAnyHostPort(true));
        h.stream_idle_timeout = dur(0);
        h.request_timeout = dur(0);
        h.common_http_protocol_options = Some(CoreHttpProtocolOptions {
            idle_timeout: dur(60),
            ..Default::default()
        });
        h.generate_request_id = no();
        h.use_remote_address = yes();
        h.xff_num_trusted_hops = 2;
        h.upgrade_configs = vec![UpgradeConfig {
            upgrade_type: "WebSocket".to_owned(),
            ..Default::default()
        }];
        // An optional filter legate does not know is skipped; so is a disabled one.
        let mut optional = cors_filter();
        optional.is_optional = true;
        let mut disabled = cors_filter();
        disabled.disabled = true;
        h.http_filters.insert(0, optional);
        h.http_filters.insert(0, disabled);
    });
    // An empty filter chain match matches everything: accepted.
    r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch::default());
    r.listeners[0].stat_prefix = "stats".to_owned();
    let s = ok(&r);
    let l = &s.listeners[0];
    assert_eq!(l.codec, Codec::Http2);
    assert!(l.strip_any_host_port);
    assert_eq!(l.stream_idle_timeout, None);
    assert_eq!(l.request_timeout, None);
    assert_eq!(l.idle_timeout, Some(Duration::from_secs(60)));
    assert!(!l.generate_request_id);
    assert!(l.append_x_forwarded_for);
    assert_eq!(l.upgrades, vec![Arc::from("websocket")]);

    edit_hcm(&mut r, |h| h.skip_xff_append = true);
    assert!(!ok(&r).listeners[0].append_x_forwarded_for);
}

#[test]
fn inline_route_config_converts() {
    let mut r = base();
    let inline = RouteConfiguration {
        name: "inline".to_owned(),
        virtual_hosts: vec![vhost(
            "all",
            &["*"],
            vec![route(
                PathSpecifier::Prefix("/".to_owned()),
                to_cluster("static"),
            )],
        )],
        ..Default::default()
    };
    edit_hcm(&mut r, |h| {
        h.route_specifier = Some(RouteSpecifier::RouteConfig(inline));
    });
    let s = ok(&r);
    let RouteSource::Inline(rc) = &s.listeners[0].routes else {
        panic!("inline");
    };
    assert_eq!(&*rc.name, "inline");
    assert_eq!(&*rc.virtual_hosts[0].domains[0], "*");
    assert!(Arc::ptr_eq(
        s.route_config_for(&s.listeners[0]).expect("inline routes"),
        rc
    ));
}

fn check_headers(option: HeaderValueOption, expected: Option<Hvo>) {
    let mut r = base();
    rc(&mut r).request_headers_to_add = vec![option];
    let s = ok(&r);
    assert_eq!(
        s.route_configs["rc1"].request_headers_to_add,
        expected.into_iter().collect::<Vec<_>>()
    );
}

#[test]
fn header_value_options() {
    let hvo = |name: &'static str, value: &'static str, append| Hvo {
        name: HeaderName::from_static(name),
        value: http::HeaderValue::from_static(value),
        append,
    };
    let with = |f: fn(&mut HeaderValueOption)| {
        let mut h = header("X-Team", "blue");
        f(&mut h);
        h
    };
    check_headers(
        header("X-Team", "blue"),
        Some(hvo("x-team", "blue", HeaderAppend::AppendIfExistsOrAdd)),
    );
    check_headers(
        with(|h| h.append_action = HeaderAppendAction::AddIfAbsent as i32),
        Some(hvo("x-team", "blue", HeaderAppend::AddIfAbsent)),
    );
    check_headers(
        with(|h| h.append_action = HeaderAppendAction::OverwriteIfExists as i32),
        Some(hvo("x-team", "blue", HeaderAppend::OverwriteIfExists)),
    );
    check_headers(
        with(|h| h.append = no()),
        Some(hvo("x-team", "blue", HeaderAppend::OverwriteIfExistsOrAdd)),
    );
    check_headers(
        with(|h| h.append = yes()),
        Some(hvo("x-team", "blue", HeaderAppend::AppendIfExistsOrAdd)),
    );
    check_headers(
        header("x-pct", "100%%"),
        Some(hvo("x-pct", "100%", HeaderAppend::AppendIfExistsOrAdd)),
    );
    // Envoy skips an empty value unless told to keep it.
    check_headers(header("x-empty", ""), None);
    check_headers(
        {
            let mut h = header("x-empty", "");
            h.keep_empty_value = true;
            h
        },
        Some(hvo("x-empty", "", HeaderAppend::AppendIfExistsOrAdd)),
    );
    check_headers(
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-raw".to_owned(),
                value: String::new(),
                raw_value: b"bytes".to_vec(),
            }),
            ..Default::default()
        },
        Some(hvo("x-raw", "bytes", HeaderAppend::AppendIfExistsOrAdd)),
    );
}

#[test]
fn route_matchers_convert() {
    let mut r = base();
    {
        let m = rmatch(&mut r);
        m.case_sensitive = no();
        m.headers = vec![
            XdsHeaderMatcher {
                name: "X-Canary".to_owned(),
                invert_match: true,
                treat_missing_header_as_empty: true,
                header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch("1".to_owned())),
            },
            XdsHeaderMatcher {
                name: "x-present".to_owned(),
                ..Default::default()
            },
            XdsHeaderMatcher {
                name: "x-n".to_owned(),
                header_match_specifier: Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
                    start: 1,
                    end: 10,
                })),
                ..Default::default()
            },
            XdsHeaderMatcher {
                name: ":authority".to_owned(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(XdsStringMatcher {
                    ignore_case: true,
                    match_pattern: Some(string_matcher::MatchPattern::Suffix(".com".to_owned())),
                })),
                ..Default::default()
            },
        ];
        m.query_parameters = vec![
            XdsQueryParameterMatcher {
                name: "debug".to_owned(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::PresentMatch(
                    true,
                )),
            },
            XdsQueryParameterMatcher {
                name: "v".to_owned(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    XdsStringMatcher {
                        ignore_case: false,
                        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(safe_regex(
                            "[0-9]+",
                        ))),
                    },
                )),
            },
        ];
    }
    rt(&mut r, 1).r#match = Some(XdsRouteMatch {
        path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/v1".to_owned())),
        ..Default::default()
    });
    let s = ok(&r);
    let routes = &s.route_configs["rc1"].virtual_hosts[0].routes;
    let m = &routes[0].matcher;
    assert!(!m.case_sensitive);
    assert_eq!(m.path, PathMatch::Prefix(Arc::from("/api")));
    let plain = |pattern| StringMatcher {
        pattern,
        ignore_case: false,
    };
    assert_eq!(
        m.headers,
        vec![
            HeaderMatcher {
                name: HeaderMatchName::Header(HeaderName::from_static("x-canary")),
                rule: HeaderMatchRule::String(plain(StringPattern::Exact(Arc::from("1")))),
                invert: true,
                treat_missing_as_empty: true,
            },
            HeaderMatcher {
                name: HeaderMatchName::Header(HeaderName::from_static("x-present")),
                rule: HeaderMatchRule::Present(true),
                invert: false,
                treat_missing_as_empty: false,
            },
            HeaderMatcher {
                name: HeaderMatchName::Header(HeaderName::from_static("x-n")),
                rule: HeaderMatchRule::Range { start: 1, end: 10 },
                invert: false,
                treat_missing_as_empty: false,
            },
            HeaderMatcher {
                name: HeaderMatchName::Authority,
                rule: HeaderMatchRule::String(StringMatcher {
                    pattern: StringPattern::Suffix(Arc::from(".com")),
                    ignore_case: true,
                }),
                invert: false,
                treat_missing_as_empty: false,
            },
        ]
    );
    assert_eq!(
        m.query_parameters[0],
        QueryParameterMatcher {
            name: Arc::from("debug"),
            value: None,
        }
    );
    assert!(matches!(
        &m.query_parameters[1].value,
        Some(StringMatcher { pattern: StringPattern::Regex(re), .. }) if re.as_str() == "[0-9]+"
    ));
    assert_eq!(
        routes[1].matcher.path,
        PathMatch::SeparatedPrefix(Arc::from("/v1"))
    );
}

/// `grpc_timeout_header_max` (v3) and the deprecated `max_grpc_timeout` both let the
/// `grpc-timeout` header set the deadline; zero means uncapped.
#[test]
fn grpc_timeout_fields_convert() {
    let forward_of =
        |s: &Snapshot, i: usize| match &s.route_configs["rc1"].virtual_hosts[0].routes[i].action {
            RouteAction::Forward(f) => f.grpc_timeout,
            other => panic!("{other:?}"),
        };
    let mut r = base();
    ra(&mut r, 0).max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: None,
        grpc_timeout_header_max: dur(3),
        grpc_timeout_header_offset: None,
    });
    #[allow(deprecated)]
    {
        ra(&mut r, 1).max_grpc_timeout = dur(0);
    }
    let s = ok(&r);
    assert_eq!(
        forward_of(&s, 0),
        Some(crate::GrpcTimeout {
            max: Some(Duration::from_secs(3)),
            replaces_route_timeout: false,
        })
    );
    assert_eq!(
        forward_of(&s, 1),
        Some(crate::GrpcTimeout {
            max: None,
            replaces_route_timeout: true,
        })
    );
    let mut r = base();
    ra(&mut r, 0).max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: None,
        grpc_timeout_header_max: dur(0),
        grpc_timeout_header_offset: None,
    });
    assert_eq!(
        forward_of(&ok(&r), 0),
        Some(crate::GrpcTimeout {
            max: None,
            replaces_route_timeout: false,
        })
    );
    assert_eq!(forward_of(&ok(&base()), 0), None);
}

#[test]
fn forward_options_convert() {
    let mut r = base();
    {
        let a = ra(&mut r, 0);
        a.timeout = dur(0);
        a.idle_timeout = dur(0);
        a.prefix_rewrite = "/v2".to_owned();
        a.host_rewrite_specifier = Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue {
            value: true,
        }));
        a.upgrade_configs = vec![RouteUpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            enabled: no(),
            connect_config: None,
        }];
    }
    {
        let a = ra(&mut r, 1);
        a.timeout = dur(2);
        a.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(safe_regex("^/old/(.*)$")),
            substitution: "/new/\\1".to_owned(),
        });
        a.host_rewrite_specifier =
            Some(HostRewriteSpecifier::HostRewriteHeader("X-Host".to_owned()));
    }
    // Zero weights are dropped; their cluster need not exist.
    wc(&mut r).clusters.push(ClusterWeight {
        name: "not-yet".to_owned(),
        weight: u32v(0),
        ..Default::default()
    });
    let s = ok(&r);
    let routes = &s.route_configs["rc1"].virtual_hosts[0].routes;
    let RouteAction::Forward(f0) = &routes[0].action else {
        panic!("forward");
    };
    assert_eq!(f0.timeout, None);
    assert_eq!(f0.idle_timeout, Some(Duration::ZERO));
    assert_eq!(f0.prefix_rewrite.as_deref(), Some("/v2"));
    assert_eq!(f0.host_rewrite, HostRewrite::Auto);
    assert_eq!(f0.upgrades, vec![(Arc::from("websocket"), false)]);
    let RouteAction::Forward(f1) = &routes[1].action else {
        panic!("forward");
    };
    assert_eq!(f1.timeout, Some(Duration::from_secs(2)));
    let rr = f1.regex_rewrite.as_ref().expect("regex rewrite");
    assert_eq!(rr.pattern.0.as_str(), "^/old/(.*)$");
    assert_eq!(&*rr.substitution, "/new/\\1");
    assert_eq!(
        f1.host_rewrite,
        HostRewrite::Header(HeaderName::from_static("x-host"))
    );
    let ClusterTarget::Weighted { clusters, total } = &f1.target else {
        panic!("weighted");
    };
    assert_eq!((clusters.len(), *total), (2, 100));
}

#[test]
fn direct_responses_and_redirects_convert() {
    let mut r = base();
    rt(&mut r, 0).action = Some(Action::DirectResponse(DirectResponseAction {
        status: 418,
        body: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString("teapot".to_owned())),
            ..Default::default()
        }),
        body_format: None,
    }));
    rt(&mut r, 1).action = Some(Action::Redirect(XdsRedirectAction {
        host_redirect: "example.org".to_owned(),
        port_redirect: 8443,
        response_code: RedirectResponseCode::PermanentRedirect as i32,
        strip_query: true,
        scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
        path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new".to_owned())),
    }));
    let s = ok(&r);
    let routes = &s.route_configs["rc1"].virtual_hosts[0].routes;
    assert_eq!(
        routes[0].action,
        RouteAction::Direct {
            status: 418,
            body: bytes::Bytes::from_static(b"teapot"),
        }
    );
    assert_eq!(
        routes[1].action,
        RouteAction::Redirect(RedirectAction {
            scheme: Some(Arc::from("https")),
            host: Some(Arc::from("example.org")),
            port: Some(8443),
            path: None,
            prefix_rewrite: Some(Arc::from("/new")),
            status: 308,
            strip_query: true,
        })
    );
    for (code, status) in [
        (RedirectResponseCode::MovedPermanently, 301),
        (RedirectResponseCode::Found, 302),
        (RedirectResponseCode::SeeOther, 303),
        (RedirectResponseCode::TemporaryRedirect, 307),
    ] {
        let mut r = base();
        rt(&mut r, 0).action = Some(Action::Redirect(XdsRedirectAction {
            response_code: code as i32,
            ..Default::default()
        }));
        let s = ok(&r);
        let RouteAction::Redirect(a) = &s.route_configs["rc1"].virtual_hosts[0].routes[0].action
        else {
            panic!("redirect");
        };
        assert_eq!(a.status, status);
    }
}

fn check_cluster(edit: fn(&mut XdsCluster), check: fn(&Cluster)) {
    let mut r = base();
    edit(cl(&mut r, "static"));
    check(&ok(&r).clusters["static"]);
}

#[test]
fn cluster_options_convert() {
    check_cluster(
        |c| {
            c.connect_timeout = Some(XdsDuration {
                seconds: 0,
                nanos: 250_000_000,
            });
            c.lb_policy = XdsLbPolicy::LeastRequest as i32;
            c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count: u32v(3),
                active_request_bias: Some(RuntimeDouble {
                    default_value: 1.5,
                    runtime_key: "ignored".to_owned(),
                }),
                slow_start_config: None,
            }));
            c.common_lb_config = Some(CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 50.0 }),
                ..Default::default()
            });
            c.alt_stat_name = "stats-only".to_owned();
        },
        |c| {
            assert_eq!(c.connect_timeout, Duration::from_millis(250));
            assert_eq!(
                c.lb_policy,
                LbPolicy::LeastRequest {
                    choice_count: 3,
                    active_request_bias_milli: 1500,
                }
            );
        },
    );
    check_cluster(
        |c| c.lb_policy = XdsLbPolicy::LeastRequest as i32,
        |c| {
            assert_eq!(
                c.lb_policy,
                LbPolicy::LeastRequest {
                    choice_count: 2,
                    active_request_bias_milli: 1000,
                }
            )
        },
    );
    check_cluster(
        |c| {
            c.lb_policy = XdsLbPolicy::RoundRobin as i32;
            c.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig::default()));
        },
        |c| assert_eq!(c.lb_policy, LbPolicy::RoundRobin),
    );
    check_cluster(
        |c| c.lb_policy = XdsLbPolicy::Random as i32,
        |c| assert_eq!(c.lb_policy, LbPolicy::Random),
    );
    // load_balancing_policy: the first policy legate knows wins.
    check_cluster(
        |c| {
            c.lb_policy = XdsLbPolicy::LoadBalancingPolicyConfig as i32;
            let policy = |type_url: &str, value: Vec<u8>| load_balancing_policy::Policy {
                typed_extension_config: Some(TypedExtensionConfig {
                    name: "p".to_owned(),
                    typed_config: Some(Any {
                        type_url: type_url.to_owned(),
                        value,
                    }),
                }),
            };
            c.load_balancing_policy = Some(LoadBalancingPolicy {
                policies: vec![
                    policy(
                        "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
                        Vec::new(),
                    ),
                    policy(
                        "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
                        LeastRequest {
                            choice_count: u32v(4),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    policy(
                        "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random",
                        Vec::new(),
                    ),
                ],
            });
        },
        |c| {
            assert_eq!(
                c.lb_policy,
                LbPolicy::LeastRequest {
                    choice_count: 4,
                    active_request_bias_milli: 1000,
                }
            )
        },
    );
    // Upstream HTTP/2 and options, the current way.
    check_cluster(
        |c| {
            c.typed_extension_protocol_options.insert(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                any(
                    type_url::HTTP_PROTOCOL_OPTIONS,
                    &HttpProtocolOptions {
                        common_http_protocol_options: Some(CoreHttpProtocolOptions {
                            idle_timeout: dur(0),
                            max_requests_per_connection: u32v(0),
                            ..Default::default()
                        }),
                        upstream_protocol_options: Some(
                            UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                                    Http2ProtocolOptions::default(),
                                )),
                            }),
                        ),
                        ..Default::default()
                    },
                ),
            );
        },
        |c| {
            assert_eq!(c.protocol, UpstreamProtocol::Http2);
            assert_eq!(c.idle_timeout, None);
            assert_eq!(c.max_requests_per_connection, None);
        },
    );
    // ... and the deprecated way.
    check_cluster(
        |c| {
            c.http2_protocol_options = Some(Http2ProtocolOptions::default());
            c.common_http_protocol_options = Some(CoreHttpProtocolOptions {
                idle_timeout: dur(90),
                ..Default::default()
            });
        },
        |c| {
            assert_eq!(c.protocol, UpstreamProtocol::Http2);
            assert_eq!(c.idle_timeout, Some(Duration::from_secs(90)));
            assert_eq!(c.max_requests_per_connection, None);
        },
    );
    // A plaintext transport socket is what legate does anyway.
    check_cluster(
        |c| {
            c.transport_socket = Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".to_owned(),
                config_type: None,
            })
        },
        |c| assert_eq!(c.protocol, UpstreamProtocol::Http1),
    );
}

#[test]
fn strict_dns_cluster_converts() {
    let mut r = base();
    r.clusters.push(XdsCluster {
        name: "dns".to_owned(),
        cluster_discovery_type: discovery(DiscoveryType::StrictDns),
        dns_refresh_rate: dur(30),
        dns_lookup_family: 1,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "dns".to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality {
                    region: "eu".to_owned(),
                    zone: "eu-1a".to_owned(),
                    sub_zone: String::new(),
                }),
                load_balancing_weight: u32v(3),
                lb_endpoints: vec![
                    {
                        let mut e = lb_endpoint("Backend.Svc.Local", 8080);
                        e.health_status = XdsHealthStatus::Draining as i32;
                        if let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) =
                            &mut e.host_identifier
                        {
                            ep.hostname = "backend".to_owned();
                        }
                        e
                    },
                    lb_endpoint("10.0.0.9", 8080),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = ok(&r);
    let c = &s.clusters["dns"];
    assert_eq!(
        c.discovery,
        Discovery::StrictDns {
            refresh_rate: Duration::from_secs(30),
            family: DnsFamily::V4Only,
        }
    );
    let l = &c.load_assignment.localities[0];
    assert_eq!((&*l.region, &*l.zone, l.weight), ("eu", "eu-1a", Some(3)));
    assert_eq!(
        l.endpoints[0],
        Endpoint {
            address: EndpointAddress::Dns {
                host: Arc::from("backend.svc.local"),
                port: 8080,
            },
            weight: 1,
            health: HealthStatus::Unhealthy,
            hostname: Some(Arc::from("backend")),
        }
    );
    assert_eq!(
        l.endpoints[1].address,
        EndpointAddress::Socket("10.0.0.9:8080".parse().expect("addr"))
    );
}

#[test]
fn eds_service_name_and_shared_assignments() {
    let mut r = base();
    cl(&mut r, "eds")
        .eds_cluster_config
        .as_mut()
        .expect("eds config")
        .service_name = "backend-v1".to_owned();
    cla(&mut r).cluster_name = "backend-v1".to_owned();
    let mut twin = cl(&mut r, "eds").clone();
    twin.name = "eds-twin".to_owned();
    r.clusters.push(twin);
    let s = ok(&r);
    assert_eq!(
        s.clusters["eds"].discovery,
        Discovery::Eds {
            service_name: Arc::from("backend-v1")
        }
    );
    assert_eq!(s.clusters["eds"].load_assignment.endpoints().count(), 2);
    assert_eq!(
        s.clusters["eds"].load_assignment,
        s.clusters["eds-twin"].load_assignment
    );
}

// ---------------------------------------------------------------------------------------------
// Refused and invalid fields: each case yields exactly one error, starting with the text given.

type Case = (fn(&mut Resources), &'static str);

fn check_cases(cases: &[Case]) {
    let mut failures = Vec::new();
    for (i, (edit, expected)) in cases.iter().enumerate() {
        let mut r = base();
        edit(&mut r);
        let got = errors(&r);
        if got.len() != 1 || !got[0].starts_with(expected) {
            failures.push(format!("case {i}: expected [{expected}]\n    got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn listener_fields_refused() {
    check_cases(&[
        (
            |r| r.listeners[0].per_connection_buffer_limit_bytes = u32v(1024),
            "listener 'l1': per_connection_buffer_limit_bytes: not supported by legate",
        ),
        (
            |r| {
                r.listeners[0].listener_filters = vec![ListenerFilter {
                    name: "envoy.filters.listener.proxy_protocol".to_owned(),
                    ..Default::default()
                }]
            },
            "listener 'l1': listener_filters[0]: listener filter 'envoy.filters.listener.proxy_protocol' is not supported by legate (only the tls inspector)",
        ),
        (
            |r| r.listeners[0].use_original_dst = yes(),
            "listener 'l1': use_original_dst: not supported by legate",
        ),
        (
            |r| r.listeners[0].api_listener = Some(Default::default()),
            "listener 'l1': api_listener: not supported by legate",
        ),
        (
            |r| r.listeners[0].socket_options = vec![Default::default()],
            "listener 'l1': socket_options: not supported by legate",
        ),
        (
            |r| r.listeners[0].bind_to_port = no(),
            "listener 'l1': bind_to_port: not supported by legate",
        ),
        (
            |r| r.listeners[0].address = socket("localhost", 80),
            "listener 'l1': address.socket_address.address: 'localhost' must be a numeric ip address",
        ),
        (
            |r| r.listeners[0].address = socket("127.0.0.1", 70000),
            "listener 'l1': address.socket_address.port_value: must be at most 65535",
        ),
        (
            |r| r.listeners[0].address = None,
            "listener 'l1': address: required",
        ),
        (
            |r| {
                let chain = r.listeners[0].filter_chains[0].clone();
                r.listeners[0].filter_chains.push(chain);
            },
            "listener 'l1': filter_chains: more than one filter chain is supported by legate only for TLS (chains selected by server_names)",
        ),
        (
            |r| {
                r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                    server_names: vec!["a.example".to_owned()],
                    ..Default::default()
                })
            },
            "listener 'l1': filter_chains[0].filter_chain_match.server_names: needs a TLS transport_socket (a server name is only known from a TLS ClientHello)",
        ),
        (
            |r| r.listeners[0].filter_chains[0].transport_socket = Some(Default::default()),
            "listener 'l1': filter_chains[0].transport_socket: '' is not supported by legate (only envoy.transport_sockets.raw_buffer and envoy.transport_sockets.tls)",
        ),
        (
            |r| {
                r.listeners[0].filter_chains[0].filters[0].config_type =
                    Some(filter::ConfigType::TypedConfig(Any {
                        type_url: "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".to_owned(),
                        value: Vec::new(),
                    }))
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config: network filter type 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy' is not supported by legate",
        ),
        (
            |r| r.listeners[0].name.clear(),
            "listener '': name: must not be empty",
        ),
    ]);
}

#[test]
fn http_connection_manager_fields_refused() {
    check_cases(&[
        (
            |r| edit_hcm(r, |h| h.request_timeout = dur(30)),
            "listener 'l1': filter_chains[0].filters[0].typed_config.request_timeout: not supported by legate (use the route timeout or stream_idle_timeout)",
        ),
        (
            |r| edit_hcm(r, |h| h.add_user_agent = yes()),
            "listener 'l1': filter_chains[0].filters[0].typed_config.add_user_agent: not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.codec_type = CodecType::Http3 as i32),
            "listener 'l1': filter_chains[0].filters[0].typed_config.codec_type: not supported by legate: HTTP3",
        ),
        (
            |r| edit_hcm(r, |h| h.codec_type = 42),
            "listener 'l1': filter_chains[0].filters[0].typed_config.codec_type: unknown value 42",
        ),
        (
            |r| edit_hcm(r, |h| h.stat_prefix.clear()),
            "listener 'l1': filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty",
        ),
        (
            |r| edit_hcm(r, |h| h.http_filters.insert(0, cors_filter())),
            "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[0]: http filter 'envoy.filters.http.cors' (type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors) is not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.http_filters.clear()),
            "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters: must end with the router filter",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    let mut optional = cors_filter();
                    optional.is_optional = true;
                    h.http_filters.push(optional);
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[0]: the router filter must be the last http filter",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.http_filters = vec![router_filter(&Router {
                        suppress_envoy_headers: true,
                        ..Default::default()
                    })]
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.suppress_envoy_headers: not supported by legate",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.route_specifier = Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(ConfigSource {
                            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                                ApiConfigSource::default(),
                            )),
                            ..Default::default()
                        }),
                        route_config_name: "rc1".to_owned(),
                    }))
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.rds.config_source.api_config_source: not supported by legate (use ads or self)",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.route_specifier = Some(RouteSpecifier::Rds(Rds {
                        config_source: None,
                        route_config_name: "rc1".to_owned(),
                    }))
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.rds.config_source: required",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.route_specifier = Some(RouteSpecifier::ScopedRoutes(ScopedRoutes::default()))
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.scoped_routes: not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.route_specifier = None),
            "listener 'l1': filter_chains[0].filters[0].typed_config: one of rds or route_config is required",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.upgrade_configs = vec![UpgradeConfig {
                        upgrade_type: "websocket".to_owned(),
                        enabled: no(),
                        filters: Vec::new(),
                    }]
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.upgrade_configs[0].enabled: false is not supported by legate",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.upgrade_configs = vec![UpgradeConfig {
                        upgrade_type: "websocket".to_owned(),
                        enabled: None,
                        filters: vec![cors_filter()],
                    }]
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.upgrade_configs[0].filters: not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.normalize_path = yes()),
            "listener 'l1': filter_chains[0].filters[0].typed_config.normalize_path: not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.server_name = "legate".to_owned()),
            "listener 'l1': filter_chains[0].filters[0].typed_config.server_name: not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.forward_client_cert_details = 2),
            "listener 'l1': filter_chains[0].filters[0].typed_config.forward_client_cert_details: not supported by legate",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.common_http_protocol_options = Some(CoreHttpProtocolOptions {
                        max_requests_per_connection: u32v(10),
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.common_http_protocol_options.max_requests_per_connection: not supported by legate",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.http2_protocol_options = Some(Http2ProtocolOptions {
                        max_concurrent_streams: u32v(10),
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.http2_protocol_options.max_concurrent_streams: not supported by legate",
        ),
        (
            |r| edit_hcm(r, |h| h.stream_idle_timeout = dur(-1)),
            "listener 'l1': filter_chains[0].filters[0].typed_config.stream_idle_timeout: must not be negative",
        ),
        (
            |r| edit_hcm(r, |h| h.path_with_escaped_slashes_action = 3),
            "listener 'l1': filter_chains[0].filters[0].typed_config.path_with_escaped_slashes_action: not supported by legate (only KEEP_UNCHANGED)",
        ),
        (
            |r| {
                let mut rds_source = ads();
                rds_source.resource_api_version = 1;
                edit_hcm(r, |h| {
                    h.route_specifier = Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(rds_source),
                        route_config_name: "rc1".to_owned(),
                    }))
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.rds.config_source.resource_api_version: v2 is not supported by legate",
        ),
        (
            |r| {
                edit_hcm(r, |h| {
                    h.route_specifier = Some(RouteSpecifier::RouteConfig(RouteConfiguration {
                        virtual_hosts: vec![vhost(
                            "all",
                            &["*"],
                            vec![
                                route(PathSpecifier::Prefix("/".to_owned()), to_cluster("static")),
                                route(
                                    PathSpecifier::Prefix("/".to_owned()),
                                    weighted(&[("static", 1), ("eds", 1), ("ghost", 1)]),
                                ),
                            ],
                        )],
                        ..Default::default()
                    }))
                })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[1].route.weighted_clusters.clusters[2].name: cluster 'ghost' not found",
        ),
    ]);
}

#[test]
fn route_configuration_fields_refused() {
    check_cases(&[
        (
            |r| rc(r).vhds = Some(Vhds::default()),
            "route configuration 'rc1': vhds: not supported by legate",
        ),
        (
            |r| rc(r).internal_only_headers = vec!["x-internal".to_owned()],
            "route configuration 'rc1': internal_only_headers: not supported by legate",
        ),
        (
            |r| rc(r).ignore_port_in_host_matching = true,
            "route configuration 'rc1': ignore_port_in_host_matching: not supported by legate",
        ),
        (
            |r| vh(r).retry_policy_typed_config = Some(Any::default()),
            "route configuration 'rc1': virtual_hosts[0].retry_policy_typed_config: not supported by legate",
        ),
        (
            |r| vh(r).require_tls = 2,
            "route configuration 'rc1': virtual_hosts[0].require_tls: not supported by legate",
        ),
        (
            |r| vh(r).rate_limits = vec![Default::default()],
            "route configuration 'rc1': virtual_hosts[0].rate_limits: not supported by legate",
        ),
        (
            |r| {
                vh(r)
                    .typed_per_filter_config
                    .insert("envoy.filters.http.cors".to_owned(), Any::default());
            },
            "route configuration 'rc1': virtual_hosts[0].typed_per_filter_config[\"envoy.filters.http.cors\"]: filter type '' is not supported by legate",
        ),
        (
            |r| {
                rc(r)
                    .virtual_hosts
                    .push(vhost("vh2", &["EXAMPLE.com"], Vec::new()))
            },
            "route configuration 'rc1': virtual_hosts[1].domains[0]: duplicate domain 'EXAMPLE.com', already in virtual host 'vh1'",
        ),
        (
            |r| {
                rc(r)
                    .virtual_hosts
                    .push(vhost("vh1", &["other.com"], Vec::new()))
            },
            "route configuration 'rc1': virtual_hosts[1].name: duplicate virtual host name 'vh1'",
        ),
        (
            |r| vh(r).domains[1] = "a*.example.com*".to_owned(),
            "route configuration 'rc1': virtual_hosts[0].domains[1]: 'a*.example.com*': a wildcard must be the whole domain, its first character or its last",
        ),
        (
            |r| vh(r).domains.clear(),
            "route configuration 'rc1': virtual_hosts[0].domains: at least one domain is required",
        ),
        (
            |r| {
                rt(r, 0)
                    .typed_per_filter_config
                    .insert("x".to_owned(), Any::default())
                    .map_or((), drop)
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].typed_per_filter_config[\"x\"]: filter type '' is not supported by legate",
        ),
        (
            |r| rmatch(r).runtime_fraction = Some(Default::default()),
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.runtime_fraction: not supported by legate",
        ),
        (
            |r| rmatch(r).grpc = Some(Default::default()),
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.grpc: not supported by legate",
        ),
        (
            |r| rmatch(r).path_specifier = Some(PathSpecifier::SafeRegex(safe_regex("(unclosed"))),
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex: ",
        ),
        // Valid only once wrapped as ^(?:P)$, where it would match every path: refused on
        // its own, as RE2 and Envoy refuse it (issue 13, item 5).
        (
            |r| rmatch(r).path_specifier = Some(PathSpecifier::SafeRegex(safe_regex("x)|(?:.*"))),
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex: unopened group",
        ),
        (
            |r| {
                rmatch(r).path_specifier =
                    Some(PathSpecifier::SafeRegex(safe_regex(&"a".repeat(1025))))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.safe_regex.regex: pattern is 1025 bytes, longer than legate's limit of 1024",
        ),
        (
            |r| {
                rmatch(r).path_specifier =
                    Some(PathSpecifier::SafeRegex(safe_regex("(?:\\w{100}){100}")))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex: compiled regex is over legate's limit of 1048576 bytes",
        ),
        (
            |r| {
                rmatch(r).headers = vec![XdsHeaderMatcher {
                    name: "x-a".to_owned(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        XdsStringMatcher {
                            ignore_case: false,
                            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(
                                safe_regex("x)|(?:.*"),
                            )),
                        },
                    )),
                    ..Default::default()
                }]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex: invalid regex: unopened group",
        ),
        (
            |r| {
                ra(r, 0).regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(safe_regex("x)|(?:.*")),
                    substitution: "/".to_owned(),
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.regex_rewrite.pattern.regex: invalid regex: unopened group",
        ),
        (
            |r| {
                rmatch(r).path_specifier =
                    Some(PathSpecifier::PathSeparatedPrefix("/a/".to_owned()))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.path_separated_prefix: '/a/' must not contain '?' or '#' nor end with '/'",
        ),
        (
            |r| rmatch(r).path_specifier = None,
            "route configuration 'rc1': virtual_hosts[0].routes[0].match: one of prefix, path, safe_regex or path_separated_prefix is required",
        ),
        (
            |r| rt(r, 0).r#match = None,
            "route configuration 'rc1': virtual_hosts[0].routes[0].match: required",
        ),
        (
            |r| {
                rmatch(r).headers = vec![XdsHeaderMatcher {
                    name: ":method".to_owned(),
                    header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch(
                        "GET".to_owned(),
                    )),
                    ..Default::default()
                }]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.headers[0].name: matching on pseudo-header ':method' is not supported by legate",
        ),
        (
            |r| {
                rmatch(r).headers = vec![XdsHeaderMatcher {
                    name: "x-a".to_owned(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch(String::new())),
                    ..Default::default()
                }]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.headers[0].prefix_match: must not be empty (use present_match)",
        ),
        (
            |r| {
                rmatch(r).headers = vec![XdsHeaderMatcher {
                    name: "x-a".to_owned(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        XdsStringMatcher {
                            ignore_case: false,
                            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(
                                safe_regex("[z-a]"),
                            )),
                        },
                    )),
                    ..Default::default()
                }]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex: invalid regex: ",
        ),
        (
            |r| {
                rmatch(r).query_parameters = vec![XdsQueryParameterMatcher {
                    name: "debug".to_owned(),
                    query_parameter_match_specifier: Some(
                        QueryParameterMatchSpecifier::PresentMatch(false),
                    ),
                }]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].match.query_parameters[0].present_match: false is not supported by legate",
        ),
        (
            |r| rt(r, 0).action = None,
            "route configuration 'rc1': virtual_hosts[0].routes[0]: one of route, redirect or direct_response is required",
        ),
        (
            |r| rt(r, 0).action = Some(Action::FilterAction(FilterAction::default())),
            "route configuration 'rc1': virtual_hosts[0].routes[0].filter_action: not supported by legate",
        ),
    ]);
}

#[test]
fn route_action_fields_refused() {
    check_cases(&[
        (
            |r| ra(r, 0).retry_policy_typed_config = Some(Any::default()),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.retry_policy_typed_config: not supported by legate",
        ),
        (
            |r| ra(r, 0).hash_policy = vec![HashPolicy::default()],
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.hash_policy[0]: one of header, cookie, connection_properties or query_parameter is required",
        ),
        (
            |r| ra(r, 0).request_mirror_policies = vec![Default::default()],
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.request_mirror_policies: not supported by legate",
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
            |r| ra(r, 0).max_stream_duration = Some(MaxStreamDuration::default()),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.max_stream_duration: only grpc_timeout_header_max is supported by legate; it must be set",
        ),
        (
            |r| {
                ra(r, 0).max_stream_duration = Some(MaxStreamDuration {
                    max_stream_duration: Some(XdsDuration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    grpc_timeout_header_max: Some(XdsDuration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    grpc_timeout_header_offset: None,
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.max_stream_duration.max_stream_duration: not supported by legate",
        ),
        (
            |r| {
                ra(r, 0).max_stream_duration = Some(MaxStreamDuration {
                    max_stream_duration: None,
                    grpc_timeout_header_max: Some(XdsDuration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    grpc_timeout_header_offset: None,
                });
                #[allow(deprecated)]
                {
                    ra(r, 0).max_grpc_timeout = Some(XdsDuration {
                        seconds: 5,
                        nanos: 0,
                    });
                }
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.max_grpc_timeout: cannot be combined with max_stream_duration.grpc_timeout_header_max (its replacement)",
        ),
        (
            |r| ra(r, 0).priority = 1,
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.priority: not supported by legate",
        ),
        (
            |r| ra(r, 0).cluster_not_found_response_code = 1,
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.cluster_not_found_response_code: not supported by legate",
        ),
        (
            |r| {
                ra(r, 0).cluster_specifier =
                    Some(ClusterSpecifier::ClusterHeader("x-cluster".to_owned()))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.cluster_header: not supported by legate",
        ),
        (
            |r| ra(r, 0).cluster_specifier = None,
            "route configuration 'rc1': virtual_hosts[0].routes[0].route: one of cluster or weighted_clusters is required",
        ),
        (
            |r| {
                ra(r, 0).host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewritePathRegex(
                    RegexMatchAndSubstitute::default(),
                ))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.host_rewrite_path_regex: not supported by legate",
        ),
        (
            |r| ra(r, 0).timeout = dur(-5),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.timeout: must not be negative",
        ),
        (
            |r| {
                let a = ra(r, 0);
                a.prefix_rewrite = "/x".to_owned();
                a.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(safe_regex("a")),
                    substitution: "b".to_owned(),
                });
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.regex_rewrite: cannot be combined with prefix_rewrite",
        ),
        (
            |r| {
                ra(r, 0).regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(safe_regex("/(a)")),
                    substitution: "/\\2".to_owned(),
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.regex_rewrite.substitution: \\2 refers to a capture group the pattern does not have",
        ),
        (
            |r| {
                ra(r, 0).regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(safe_regex("/a")),
                    substitution: "/\\n".to_owned(),
                })
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.regex_rewrite.substitution: a backslash must be followed by a digit or another backslash",
        ),
        (
            |r| {
                ra(r, 0).upgrade_configs = vec![RouteUpgradeConfig {
                    upgrade_type: "CONNECT".to_owned(),
                    enabled: None,
                    connect_config: Some(Default::default()),
                }]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.upgrade_configs[0].connect_config: not supported by legate",
        ),
        (
            |r| {
                for c in &mut wc(r).clusters {
                    c.weight = u32v(0);
                }
            },
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.clusters: at least one cluster needs a non-zero weight",
        ),
        (
            |r| wc(r).clusters[1].cluster_header = "x-cluster".to_owned(),
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.clusters[1].cluster_header: not supported by legate",
        ),
        (
            |r| wc(r).total_weight = u32v(99),
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.total_weight: is 99 but the weights sum to 100",
        ),
        (
            |r| wc(r).runtime_key_prefix = "routing.traffic_split".to_owned(),
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.runtime_key_prefix: not supported by legate",
        ),
        (
            |r| {
                wc(r).clusters[0].weight = u32v(u32::MAX);
            },
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.clusters: weights sum to 4294967315, above 4294967295",
        ),
        (
            |r| {
                rt(r, 0).action = Some(Action::DirectResponse(DirectResponseAction {
                    status: 100,
                    ..Default::default()
                }))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].direct_response.status: must be between 200 and 599",
        ),
        (
            |r| {
                rt(r, 0).action = Some(Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    body: Some(DataSource {
                        specifier: Some(data_source::Specifier::Filename("/etc/x".to_owned())),
                        ..Default::default()
                    }),
                    body_format: None,
                }))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].direct_response.body.filename: not supported by legate",
        ),
        (
            |r| {
                rt(r, 0).action = Some(Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    body: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineBytes(vec![b'x'; 5000])),
                        ..Default::default()
                    }),
                    body_format: None,
                }))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].direct_response.body: is 5000 bytes, above max_direct_response_body_size_bytes (4096)",
        ),
        (
            |r| {
                rt(r, 0).action = Some(Action::Redirect(XdsRedirectAction {
                    path_rewrite_specifier: Some(PathRewriteSpecifier::RegexRewrite(
                        RegexMatchAndSubstitute::default(),
                    )),
                    ..Default::default()
                }))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].redirect.regex_rewrite: not supported by legate",
        ),
        (
            |r| {
                rt(r, 0).action = Some(Action::Redirect(XdsRedirectAction {
                    port_redirect: 70000,
                    ..Default::default()
                }))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].redirect.port_redirect: must be at most 65535",
        ),
        (
            |r| {
                rt(r, 0).action = Some(Action::Redirect(XdsRedirectAction {
                    response_code: 9,
                    ..Default::default()
                }))
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].redirect.response_code: unknown value 9",
        ),
    ]);
}

#[test]
fn header_mutations_refused() {
    check_cases(&[
        (
            |r| rc(r).request_headers_to_add = vec![header(":path", "/x")],
            "route configuration 'rc1': request_headers_to_add[0].header.key: ':path': pseudo-headers and host may not be modified",
        ),
        (
            |r| {
                vh(r).response_headers_to_add = vec![header("x-ok", "a"), header("bad header", "a")]
            },
            "route configuration 'rc1': virtual_hosts[0].response_headers_to_add[1].header.key: 'bad header' is not a valid header name",
        ),
        (
            |r| {
                rt(r, 0).request_headers_to_add =
                    vec![header("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%")]
            },
            "route configuration 'rc1': virtual_hosts[0].routes[0].request_headers_to_add[0].header.value: substitution formatters (%...%) are not supported by legate",
        ),
        (
            |r| rt(r, 0).request_headers_to_add = vec![header("x-a", "line\nbreak")],
            "route configuration 'rc1': virtual_hosts[0].routes[0].request_headers_to_add[0].header.value: not a valid header value",
        ),
        (
            |r| {
                let mut h = header("x-a", "b");
                h.append = yes();
                h.append_action = HeaderAppendAction::AddIfAbsent as i32;
                rc(r).response_headers_to_add = vec![h];
            },
            "route configuration 'rc1': response_headers_to_add[0].append: cannot be combined with append_action",
        ),
        (
            |r| rc(r).request_headers_to_add = vec![HeaderValueOption::default()],
            "route configuration 'rc1': request_headers_to_add[0].header: required",
        ),
        (
            |r| rt(r, 1).response_headers_to_remove = vec!["Host".to_owned()],
            "route configuration 'rc1': virtual_hosts[0].routes[1].response_headers_to_remove[0]: 'Host': pseudo-headers and host may not be modified",
        ),
        (
            |r| wc(r).clusters[0].request_headers_to_add = vec![header("", "x")],
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.clusters[0].request_headers_to_add[0].header.key: must not be empty",
        ),
    ]);
}

#[test]
fn cluster_fields_refused() {
    check_cases(&[
        (
            |r| {
                cl(r, "static").outlier_detection = Some(OutlierDetection {
                    always_eject_one_host: yes(),
                    ..Default::default()
                })
            },
            "cluster 'static': outlier_detection.always_eject_one_host: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").circuit_breakers = Some(CircuitBreakers {
                    per_host_thresholds: vec![Default::default()],
                    ..Default::default()
                })
            },
            "cluster 'static': circuit_breakers.per_host_thresholds: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").health_checks = vec![HealthCheck {
                    health_checker: Some(health_check::HealthChecker::GrpcHealthCheck(
                        Default::default(),
                    )),
                    ..resilience::tcp_check()
                }]
            },
            "cluster 'static': health_checks[0].grpc_health_check: not supported by legate",
        ),
        (
            |r| cl(r, "static").lb_subset_config = Some(Default::default()),
            "cluster 'static': lb_subset_config: not supported by legate",
        ),
        (
            |r| cl(r, "static").lrs_server = Some(ads()),
            "cluster 'static': lrs_server: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").transport_socket = Some(TransportSocket {
                    name: "envoy.transport_sockets.alts".to_owned(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                        type_url:
                            "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts"
                                .to_owned(),
                        value: Vec::new(),
                    })),
                })
            },
            "cluster 'static': transport_socket.typed_config: transport socket type 'type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts' is not supported by legate (expected UpstreamTlsContext or RawBuffer)",
        ),
        (
            |r| cl(r, "static").lb_policy = XdsLbPolicy::ClusterProvided as i32,
            "cluster 'static': lb_policy: not supported by legate: CLUSTER_PROVIDED",
        ),
        (
            |r| cl(r, "static").lb_policy = XdsLbPolicy::LoadBalancingPolicyConfig as i32,
            "cluster 'static': lb_policy: load_balancing_policy is required with LOAD_BALANCING_POLICY_CONFIG",
        ),
        (
            |r| {
                let c = cl(r, "static");
                c.lb_policy = XdsLbPolicy::LeastRequest as i32;
                c.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig::default()));
            },
            "cluster 'static': round_robin_lb_config: does not apply to lb_policy LEAST_REQUEST or is not supported by legate",
        ),
        (
            |r| {
                let c = cl(r, "static");
                c.lb_policy = XdsLbPolicy::LeastRequest as i32;
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    choice_count: u32v(1),
                    ..Default::default()
                }));
            },
            "cluster 'static': least_request_lb_config.choice_count: must be at least 2",
        ),
        (
            |r| {
                let c = cl(r, "static");
                c.lb_policy = XdsLbPolicy::LeastRequest as i32;
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    active_request_bias: Some(RuntimeDouble {
                        default_value: -1.0,
                        runtime_key: String::new(),
                    }),
                    ..Default::default()
                }));
            },
            "cluster 'static': least_request_lb_config.active_request_bias: must be a finite number between 0 and 4294967",
        ),
        (
            |r| {
                cl(r, "static").load_balancing_policy = Some(LoadBalancingPolicy {
                    policies: vec![load_balancing_policy::Policy {
                        typed_extension_config: Some(TypedExtensionConfig {
                            name: "ring".to_owned(),
                            typed_config: Some(Any {
                                type_url: "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash".to_owned(),
                                value: Vec::new(),
                            }),
                        }),
                    }],
                })
            },
            "cluster 'static': load_balancing_policy.policies: none is supported by legate (round_robin, least_request or random)",
        ),
        (
            |r| cl(r, "static").cluster_discovery_type = discovery(DiscoveryType::LogicalDns),
            "cluster 'static': type: not supported by legate: LOGICAL_DNS (use STRICT_DNS)",
        ),
        (
            |r| {
                cl(r, "static").cluster_discovery_type = Some(ClusterDiscoveryType::ClusterType(
                    CustomClusterType::default(),
                ))
            },
            "cluster 'static': cluster_type: not supported by legate",
        ),
        (
            |r| cl(r, "static").connect_timeout = dur(0),
            "cluster 'static': connect_timeout: must be greater than zero",
        ),
        (
            |r| {
                let c = cl(r, "static");
                c.cluster_discovery_type = discovery(DiscoveryType::StrictDns);
                c.dns_refresh_rate = Some(XdsDuration {
                    seconds: 0,
                    nanos: 1000,
                });
            },
            "cluster 'static': dns_refresh_rate: must be at least 1ms",
        ),
        (
            |r| *static_ep_address(r) = socket("backend", 80),
            "cluster 'static': load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: 'backend' must be a numeric ip address (hostnames need a STRICT_DNS cluster)",
        ),
        (
            |r| {
                cl(r, "static").cluster_discovery_type = discovery(DiscoveryType::StrictDns);
                *static_ep_address(r) = socket("bad host", 80);
            },
            "cluster 'static': load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: 'bad host' is neither an ip address nor a valid hostname",
        ),
        (
            |r| {
                cl(r, "static")
                    .load_assignment
                    .as_mut()
                    .expect("endpoints")
                    .endpoints[0]
                    .priority = 1
            },
            "cluster 'static': load_assignment.endpoints[0].priority: only priority 0 is supported by legate",
        ),
        (
            |r| {
                cl(r, "static").common_lb_config = Some(CommonLbConfig {
                    healthy_panic_threshold: Some(Percent { value: 100.5 }),
                    ..Default::default()
                })
            },
            "cluster 'static': common_lb_config.healthy_panic_threshold: 100.5 is not between 0 and 100",
        ),
        (
            |r| {
                cl(r, "static").common_lb_config = Some(CommonLbConfig {
                    close_connections_on_host_set_change: true,
                    ..Default::default()
                })
            },
            "cluster 'static': common_lb_config.close_connections_on_host_set_change: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").typed_extension_protocol_options.insert(
                    "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".to_owned(),
                    Any::default(),
                );
            },
            "cluster 'static': typed_extension_protocol_options['envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions']: not supported by legate",
        ),
        (
            |r| {
                cl(r, "static").typed_extension_protocol_options.insert(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                    any(
                        type_url::HTTP_PROTOCOL_OPTIONS,
                        &HttpProtocolOptions {
                            upstream_protocol_options: Some(
                                UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                                    UseDownstreamHttpConfig::default(),
                                ),
                            ),
                            ..Default::default()
                        },
                    ),
                );
            },
            "cluster 'static': typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].use_downstream_protocol_config: not supported by legate",
        ),
        (
            |r| {
                let c = cl(r, "static");
                c.http2_protocol_options = Some(Http2ProtocolOptions::default());
                c.typed_extension_protocol_options.insert(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                    any(
                        type_url::HTTP_PROTOCOL_OPTIONS,
                        &HttpProtocolOptions {
                            upstream_protocol_options: Some(
                                UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                                        Http2ProtocolOptions::default(),
                                    )),
                                }),
                            ),
                            ..Default::default()
                        },
                    ),
                );
            },
            "cluster 'static': http2_protocol_options: cannot be combined with typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']",
        ),
        (
            |r| {
                cl(r, "static").http2_protocol_options = Some(Http2ProtocolOptions {
                    initial_stream_window_size: u32v(65535),
                    ..Default::default()
                })
            },
            "cluster 'static': http2_protocol_options.initial_stream_window_size: not supported by legate",
        ),
        (
            |r| {
                cl(r, "eds").eds_cluster_config = Some(EdsClusterConfig {
                    eds_config: Some(ConfigSource {
                        config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                            PathConfigSource::default(),
                        )),
                        ..Default::default()
                    }),
                    service_name: String::new(),
                })
            },
            "cluster 'eds': eds_cluster_config.eds_config.path_config_source: not supported by legate (use ads or self)",
        ),
        (
            |r| cl(r, "eds").load_assignment = Some(assignment("eds", Vec::new())),
            "cluster 'eds': load_assignment: not supported by legate on EDS clusters",
        ),
        (
            |r| cl(r, "static").eds_cluster_config = Some(EdsClusterConfig::default()),
            "cluster 'static': eds_cluster_config: only allowed on EDS clusters",
        ),
    ]);
}

#[test]
fn cluster_load_assignment_fields_refused() {
    check_cases(&[
        (
            |r| {
                cla(r).policy = Some(Policy {
                    drop_overloads: vec![DropOverload::default()],
                    ..Default::default()
                })
            },
            "cluster load assignment 'eds': policy.drop_overloads: not supported by legate",
        ),
        (
            |r| {
                cla(r)
                    .named_endpoints
                    .insert("a".to_owned(), XdsEndpoint::default());
            },
            "cluster load assignment 'eds': named_endpoints: not supported by legate",
        ),
        (
            |r| {
                if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
                    &mut lb_ep(r).host_identifier
                {
                    e.address = socket("backend", 80);
                }
            },
            "cluster load assignment 'eds': endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: 'backend' must be a numeric ip address (hostnames need a STRICT_DNS cluster)",
        ),
        (
            |r| {
                if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
                    &mut lb_ep(r).host_identifier
                {
                    e.address = socket("10.0.0.1", 0);
                }
            },
            "cluster load assignment 'eds': endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: must be between 1 and 65535",
        ),
        (
            |r| lb_ep(r).load_balancing_weight = u32v(0),
            "cluster load assignment 'eds': endpoints[0].lb_endpoints[0].load_balancing_weight: must be at least 1",
        ),
        (
            |r| {
                lb_ep(r).host_identifier =
                    Some(lb_endpoint::HostIdentifier::EndpointName("a".to_owned()))
            },
            "cluster load assignment 'eds': endpoints[0].lb_endpoints[0].endpoint_name: not supported by legate",
        ),
        (
            |r| lb_ep(r).health_status = 17,
            "cluster load assignment 'eds': endpoints[0].lb_endpoints[0].health_status: unknown value 17",
        ),
        (
            |r| cla(r).endpoints[0].load_balancing_weight = u32v(0),
            "cluster load assignment 'eds': endpoints[0].load_balancing_weight: must be at least 1",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Whole-set consistency

#[test]
fn consistency_errors() {
    check_cases(&[
        (
            |r| edit_hcm(r, |h| h.route_specifier = Some(rds("missing"))),
            "listener 'l1': filter_chains[0].filters[0].typed_config.rds.route_config_name: route configuration 'missing' not found",
        ),
        (
            |r| ra(r, 0).cluster_specifier = Some(ClusterSpecifier::Cluster("ghost".to_owned())),
            "route configuration 'rc1': virtual_hosts[0].routes[0].route.cluster: cluster 'ghost' not found",
        ),
        (
            |r| wc(r).clusters[1].name = "ghost".to_owned(),
            "route configuration 'rc1': virtual_hosts[0].routes[1].route.weighted_clusters.clusters[1].name: cluster 'ghost' not found",
        ),
        (
            |r| r.load_assignments.clear(),
            "cluster 'eds': name: cluster load assignment 'eds' not found",
        ),
        (
            |r| {
                cl(r, "eds")
                    .eds_cluster_config
                    .as_mut()
                    .expect("eds")
                    .service_name = "svc".to_owned()
            },
            "cluster 'eds': eds_cluster_config.service_name: cluster load assignment 'svc' not found",
        ),
        (
            |r| {
                let l = r.listeners[0].clone();
                r.listeners.push(l);
            },
            "listener 'l1': name: duplicate listener name",
        ),
        (
            |r| {
                let c = r.route_configs[0].clone();
                r.route_configs.push(c);
            },
            "route configuration 'rc1': name: duplicate route configuration name",
        ),
        (
            |r| {
                let c = r.clusters[0].clone();
                r.clusters.push(c);
            },
            "cluster 'static': name: duplicate cluster name",
        ),
        (
            |r| {
                let c = r.load_assignments[0].clone();
                r.load_assignments.push(c);
            },
            "cluster load assignment 'eds': cluster_name: duplicate cluster load assignment name",
        ),
        (
            |r| {
                let mut l = r.listeners[0].clone();
                l.name = "l2".to_owned();
                r.listeners.push(l);
            },
            "listener 'l2': address: 127.0.0.1:10000 is already used by listener 'l1'",
        ),
    ]);
}

#[test]
fn consistency_allowances() {
    // Port 0 never clashes.
    let mut r = base();
    r.listeners = vec![
        listener("a", 0, &hcm(rds("rc1"))),
        listener("b", 0, &hcm(rds("rc1"))),
    ];
    ok(&r);

    // `validate_clusters: false` leaves a missing cluster to a 503 at run time, as in Envoy.
    let mut r = base();
    ra(&mut r, 0).cluster_specifier = Some(ClusterSpecifier::Cluster("later".to_owned()));
    rc(&mut r).validate_clusters = no();
    ok(&r);

    // `self` is as good as `ads`: both mean legate's one stream.
    let mut r = base();
    let self_source = ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Self_(Default::default())),
        ..Default::default()
    };
    cl(&mut r, "eds").eds_cluster_config = Some(EdsClusterConfig {
        eds_config: Some(self_source),
        service_name: String::new(),
    });
    ok(&r);

    // An unused ClusterLoadAssignment is fine.
    let mut r = base();
    r.load_assignments
        .push(assignment("spare", vec![lb_endpoint("10.9.9.9", 80)]));
    ok(&r);
}

#[test]
fn references_to_invalid_resources_are_not_reported_twice() {
    let mut r = base();
    rc(&mut r).vhds = Some(Vhds::default());
    cl(&mut r, "static").outlier_detection = Some(OutlierDetection {
        monitors: vec![TypedExtensionConfig::default()],
        ..Default::default()
    });
    cla(&mut r)
        .named_endpoints
        .insert("x".to_owned(), XdsEndpoint::default());
    assert_eq!(
        errors(&r),
        [
            "route configuration 'rc1': vhds: not supported by legate",
            "cluster 'static': outlier_detection.monitors: not supported by legate",
            "cluster load assignment 'eds': named_endpoints: not supported by legate",
        ]
    );
}

#[test]
fn every_error_is_reported() {
    let mut r = base();
    r.listeners[0].per_connection_buffer_limit_bytes = u32v(1);
    edit_hcm(&mut r, |h| {
        h.via = "legate".to_owned();
        h.add_user_agent = yes();
    });
    vh(&mut r).cors = Some(Default::default());
    ra(&mut r, 0).retry_policy = Some(RetryPolicy {
        retry_on: "5xx,grpc-cancelled".to_owned(),
        ..Default::default()
    });
    ra(&mut r, 1).hedge_policy = Some(HedgePolicy {
        initial_requests: u32v(3),
        ..Default::default()
    });
    cl(&mut r, "static").health_checks = vec![HealthCheck::default()];
    cl(&mut r, "static").lb_policy = XdsLbPolicy::ClusterProvided as i32;
    lb_ep(&mut r).load_balancing_weight = u32v(0);
    let got = build("v1", &r).expect_err("invalid");
    assert_eq!(
        got.errors
            .iter()
            .map(|e| format!("{} {}", e.kind.as_str(), e.field))
            .collect::<Vec<_>>(),
        [
            "listener per_connection_buffer_limit_bytes",
            "listener filter_chains[0].filters[0].typed_config.via",
            "listener filter_chains[0].filters[0].typed_config.add_user_agent",
            "route configuration virtual_hosts[0].cors",
            "route configuration virtual_hosts[0].routes[0].route.retry_policy.retry_on",
            "route configuration virtual_hosts[0].routes[1].route.hedge_policy.initial_requests",
            "cluster health_checks[0].timeout",
            "cluster health_checks[0].interval",
            "cluster health_checks[0].unhealthy_threshold",
            "cluster health_checks[0].healthy_threshold",
            "cluster health_checks[0]",
            "cluster lb_policy",
            "cluster load assignment endpoints[0].lb_endpoints[0].load_balancing_weight",
        ]
    );
    assert_eq!(got.for_kind(crate::ResourceKind::Cluster).count(), 6);
    let text = got.to_string();
    assert!(
        text.contains("; cluster 'static': lb_policy: not supported by legate: CLUSTER_PROVIDED;")
    );
}

#[test]
fn single_resource_conversions() {
    let r = base();
    let l = Listener::try_from(&r.listeners[0]).expect("listener");
    assert_eq!(&*l.name, "l1");
    let rc = RouteConfig::try_from(&r.route_configs[0]).expect("route config");
    assert_eq!(rc.virtual_hosts.len(), 1);
    let c = Cluster::try_from(&r.clusters[1]).expect("cluster");
    assert_eq!(c.load_assignment.endpoints().count(), 0);
    let la = LoadAssignment::try_from(&r.load_assignments[0]).expect("assignment");
    assert_eq!(la.endpoints().count(), 2);
    let mut bad = r.clusters[0].clone();
    bad.outlier_detection = Some(OutlierDetection {
        detect_degraded_hosts: yes(),
        ..Default::default()
    });
    let e = Cluster::try_from(&bad).expect_err("refused");
    assert_eq!(
        e[0].to_string(),
        "cluster 'static': outlier_detection.detect_degraded_hosts: not supported by legate"
    );
}

#[test]
fn snapshot_serializes_without_the_index() {
    let s = ok(&base());
    let json = serde_json::to_value(&s).expect("serializes");
    let rc = &json["route_configs"]["rc1"];
    assert!(rc.get("domain_index").is_none());
    assert_eq!(rc["virtual_hosts"][0]["domains"][1], "*.example.com");
    // Equality ignores the derived index.
    let mut other = (*s.route_configs["rc1"]).clone();
    other.domain_index = Default::default();
    assert_eq!(other, *s.route_configs["rc1"]);
}

#[test]
fn a_requests_per_connection_limit_is_kept() {
    let c = XdsCluster {
        name: "capped".to_owned(),
        max_requests_per_connection: u32v(7),
        ..Default::default()
    };
    let c = Cluster::try_from(&c).expect("the pool enforces the limit");
    assert_eq!(c.max_requests_per_connection, Some(7));
}

// ---------------------------------------------------------------------------------------------
// Slow clients and connection limits (issue 13 item 2)

use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit as XdsConnectionLimit;

type LimitEdit = fn(&mut XdsConnectionLimit);

#[test]
fn request_headers_timeout_defaults_to_ten_seconds_and_zero_disables_it() {
    let s = ok(&base());
    assert_eq!(
        s.listeners[0].request_headers_timeout,
        Some(Duration::from_secs(10))
    );
    let mut r = base();
    edit_hcm(&mut r, |h| h.request_headers_timeout = dur(3));
    assert_eq!(
        ok(&r).listeners[0].request_headers_timeout,
        Some(Duration::from_secs(3))
    );
    let mut r = base();
    edit_hcm(&mut r, |h| h.request_headers_timeout = dur(0));
    assert_eq!(ok(&r).listeners[0].request_headers_timeout, None);
}

fn limit_filter(limit: XdsConnectionLimit) -> Filter {
    Filter {
        name: "envoy.filters.network.connection_limit".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            type_url::CONNECTION_LIMIT,
            &limit,
        ))),
    }
}

fn with_limit(r: &mut Resources, edit: impl FnOnce(&mut XdsConnectionLimit)) {
    let mut limit = XdsConnectionLimit {
        stat_prefix: "limit".to_owned(),
        max_connections: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 7 }),
        ..Default::default()
    };
    edit(&mut limit);
    r.listeners[0].filter_chains[0]
        .filters
        .insert(0, limit_filter(limit));
}

#[test]
fn a_connection_limit_filter_before_the_hcm_sets_the_listener_limit() {
    let mut r = base();
    with_limit(&mut r, |_| {});
    assert_eq!(ok(&r).listeners[0].max_connections, Some(7));
    assert_eq!(ok(&base()).listeners[0].max_connections, None);
}

#[test]
fn connection_limits_legate_cannot_honour_are_refused() {
    let cases: Vec<(LimitEdit, &str)> = vec![
        (
            |l| l.delay = dur(1),
            "listener 'l1': filter_chains[0].filters[0].typed_config.delay: not supported by legate (a connection over the limit is closed at once)",
        ),
        (
            |l| l.max_connections = None,
            "listener 'l1': filter_chains[0].filters[0].typed_config.max_connections: required",
        ),
        (
            |l| {
                l.max_connections =
                    Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 })
            },
            "listener 'l1': filter_chains[0].filters[0].typed_config.max_connections: must be at least 1",
        ),
        (
            |l| l.stat_prefix.clear(),
            "listener 'l1': filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty",
        ),
    ];
    for (edit, expected) in cases {
        let mut r = base();
        with_limit(&mut r, edit);
        assert_eq!(errors(&r), vec![expected.to_owned()]);
    }
    // Anything else before the connection manager is refused, and so is a limit after it.
    let mut r = base();
    let hcm = r.listeners[0].filter_chains[0].filters[0].clone();
    r.listeners[0].filter_chains[0].filters.insert(0, hcm);
    assert_eq!(
        errors(&r),
        vec!["listener 'l1': filter_chains[0].filters[0].typed_config: network filter type 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager' is not supported by legate before the http connection manager (only connection_limit)".to_owned()]
    );
}
