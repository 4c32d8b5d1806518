//! [`Mesh`] → Envoy v3 resources.
//!
//! The output is written for two consumers at once: real Envoy (which wants a stat prefix,
//! typed config on every filter, the router as the last HTTP filter) and gRPC's xDS client
//! (which only takes EDS clusters, with a weight on every locality). legate's own snapshot
//! validator accepts both shapes. Routes always come over RDS and static endpoints over EDS,
//! both from the ADS stream, so a control plane can update them without touching listeners.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog as XdsAccessLog;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as XdsLbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::core::v3::{
    Address as XdsAddress, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource,
    HeaderValue, HeaderValueOption, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as XdsCommonHttpProtocolOptions, SocketAddress, address, data_source,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as XdsClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint,
    LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener as XdsListener, filter,
};
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    MaxStreamDuration,
    ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, HedgePolicy, QueryParameterMatcher,
    RedirectAction as XdsRedirectAction, Route as XdsRoute, RouteAction,
    RouteConfiguration as XdsRouteConfiguration, RouteMatch as XdsRouteMatch,
    VirtualHost as XdsVirtualHost, WeightedCluster, header_matcher, query_parameter_matcher,
    route,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, StripPortMode, Tracing, UpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration as PbDuration, UInt32Value, UInt64Value,
};
use legate_snapshot::{Resources, type_url};
use prost::Message;

use crate::{
    Cluster, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DNS_REFRESH_RATE, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_REDIRECT_STATUS, Discovery, Endpoint, Forward, HeaderMatch, HeaderToAdd, LbPolicy,
    Listener, ListenerProtocol, Mesh, Redirect, Route, RouteConfig, RouteMatch, UpstreamProtocol,
    VirtualHost,
};

mod policies;
pub(crate) use policies::{circuit_breakers, outlier_detection};
mod telemetry;
mod tls;

/// Well-known extension names.
pub(crate) mod names {
    pub(crate) const HTTP_CONNECTION_MANAGER: &str =
        "envoy.filters.network.http_connection_manager";
    pub(crate) const CONNECTION_LIMIT: &str = "envoy.filters.network.connection_limit";
    pub(crate) const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
    pub(crate) const ROUTER: &str = "envoy.filters.http.router";
    pub(crate) const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
    pub(crate) const FAULT: &str = "envoy.filters.http.fault";
    pub(crate) const CREDENTIAL_INJECTOR: &str = "envoy.filters.http.credential_injector";
    pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
}

/// Compile a mesh into the Envoy resources a state-of-the-world client (legate or Envoy)
/// would hold.
///
/// The low-level layer comes out in the mesh's order: one Listener per listener, one
/// RouteConfiguration per route config, one Cluster per cluster, and one
/// ClusterLoadAssignment per `static` cluster (served over EDS). The services layer follows,
/// as [`Mesh::expand`] spells it: the outbound Listener (unless `listeners` has one of its
/// name), its RouteConfiguration with one route per service (plus its canary rules), and a
/// Cluster per version, sorted by name. The mesh should have passed [`Mesh::check`] (or
/// [`validate`](crate::validate)); an unchecked mesh still compiles, but to resources that
/// Envoy or `legate_snapshot::build` may refuse.
///
/// Clusters with `tls` get a TLS transport socket that names its certificates over SDS, and
/// the `Secret`s they name come out too (with file names as their data sources). A client
/// certificate chosen per node cluster (`tls.client_certificates`) is left to
/// [`compile_for_node_cluster`]: this is what a node no such rule selects gets.
pub fn compile(mesh: &Mesh) -> Resources {
    compile_for(mesh, None)
}

/// [`compile`] for the nodes whose `Node.cluster` is `node_cluster`: the same resources, with
/// the client certificates `tls.client_certificates` gives that node cluster (and only the
/// secrets those resources name).
pub fn compile_for_node_cluster(mesh: &Mesh, node_cluster: &str) -> Resources {
    compile_for(mesh, Some(node_cluster))
}

fn compile_for(mesh: &Mesh, node_cluster: Option<&str>) -> Resources {
    let generated = crate::services::generate(mesh);
    let tracing_spec = mesh.telemetry.as_ref().and_then(|t| t.tracing.as_ref());
    let tracing = tracing_spec.map(telemetry::hcm_tracing);
    let collector = tracing_spec.map(telemetry::collector_cluster);
    let access_log = telemetry::access_logs(mesh.telemetry.as_ref());
    // Listeners whose routes limit their rate or inject faults get those filters.
    let with = |pick: fn(&Route) -> bool| -> BTreeSet<&str> {
        mesh.route_configs
            .iter()
            .chain(&generated.route_config)
            .filter(|rc| rc.virtual_hosts.iter().flat_map(|vh| &vh.routes).any(pick))
            .map(|rc| rc.name.as_str())
            .collect()
    };
    let limited = with(|r| r.rate_limit.is_some());
    let faulty = with(|r| r.fault.is_some());
    // The distinct credentials of each route configuration's routes, in first-use order.
    let credentials_of = |rc_name: &str| -> Vec<&crate::Credentials> {
        let mut out: Vec<&crate::Credentials> = Vec::new();
        for rc in mesh
            .route_configs
            .iter()
            .chain(&generated.route_config)
            .filter(|rc| rc.name == rc_name)
        {
            for c in rc
                .virtual_hosts
                .iter()
                .flat_map(|vh| &vh.routes)
                .filter_map(|r| r.credentials.as_ref())
            {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    };
    let mut out = Resources {
        listeners: mesh
            .listeners
            .iter()
            .chain(&generated.listener)
            .map(|l| {
                let filters = HttpFilters {
                    fault: faulty.contains(l.route_config.as_str()),
                    rate_limit: limited.contains(l.route_config.as_str()),
                    credentials: credentials_of(&l.route_config),
                };
                listener(l, tracing.as_ref(), &access_log, filters)
            })
            .collect(),
        route_configs: mesh
            .route_configs
            .iter()
            .chain(&generated.route_config)
            .map(|rc| {
                let mut out = route_config(rc);
                disable_other_credentials(rc, &credentials_of(&rc.name), &mut out);
                out
            })
            .collect(),
        clusters: Vec::with_capacity(mesh.clusters.len() + generated.clusters.len()),
        load_assignments: Vec::new(),
        secrets: Vec::new(),
    };
    for c in mesh
        .clusters
        .iter()
        .chain(&generated.clusters)
        .chain(&collector)
    {
        let (xds, cla) = cluster(c, node_cluster);
        out.clusters.push(xds);
        out.load_assignments.extend(cla);
    }
    let named: BTreeSet<String> = out
        .clusters
        .iter()
        .map(legate_snapshot::refs::cluster_references)
        .chain(
            out.listeners
                .iter()
                .map(legate_snapshot::refs::listener_references),
        )
        .flat_map(|r| r.all_secrets().cloned().collect::<Vec<_>>())
        .collect();
    out.secrets = tls::secrets(&mesh.secrets, &named);
    out
}

pub(crate) fn any<M: Message>(type_url: &str, message: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    }
}

pub(crate) fn duration(d: Duration) -> PbDuration {
    PbDuration {
        // Validation bounds durations to 10 000 years, far inside i64.
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3.into(),
        ..Default::default()
    }
}

pub(crate) fn socket_address(host: &str, port: u16) -> XdsAddress {
    XdsAddress {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: Protocol::Tcp.into(),
            address: host.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// `ip:port`, `[v6]:port` or `host:port` → host and port. A malformed address (only in an
/// unchecked mesh) keeps its text as the host, for the consumer to refuse.
pub(crate) fn split_address(a: &str) -> (String, u16) {
    if let Ok(s) = a.parse::<SocketAddr>() {
        return (s.ip().to_string(), s.port());
    }
    match a.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(0)),
        None => (a.to_owned(), 0),
    }
}

/// The HTTP filters a listener needs before the router.
struct HttpFilters<'m> {
    fault: bool,
    rate_limit: bool,
    /// One credential injector each, disabled until a route enables it.
    credentials: Vec<&'m crate::Credentials>,
}

/// The router, typed config included: Envoy and gRPC both want it as the last HTTP filter.
pub(crate) fn router_filter() -> HttpFilter {
    HttpFilter {
        name: names::ROUTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            type_url::ROUTER,
            &Router::default(),
        ))),
        ..Default::default()
    }
}

fn listener(
    l: &Listener,
    tracing: Option<&Tracing>,
    access_log: &[XdsAccessLog],
    filters: HttpFilters<'_>,
) -> XdsListener {
    let hcm = HttpConnectionManager {
        tracing: tracing.cloned(),
        access_log: access_log.to_vec(),
        stat_prefix: l.name.clone(),
        codec_type: match l.protocol {
            ListenerProtocol::Auto => CodecType::Auto,
            ListenerProtocol::Http1 => CodecType::Http1,
            ListenerProtocol::Http2 => CodecType::Http2,
        }
        .into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: l.route_config.clone(),
        })),
        // Envoy requires the router, with its typed config, as the last filter.
        // Faults first (Envoy's advice), then the rate limit, then credentials (a limited
        // request waits for no token), then the router.
        http_filters: [
            filters.fault.then(policies::fault_filter),
            filters
                .rate_limit
                .then(|| policies::local_rate_limit_filter(&l.name)),
        ]
        .into_iter()
        .flatten()
        .chain(
            filters
                .credentials
                .iter()
                .map(|c| policies::credential_filter(c)),
        )
        .chain([router_filter()])
        .collect(),
        // The ambassador is the first proxy the request meets: the peer is the client, so
        // it is appended to x-forwarded-for (Envoy does this only with use_remote_address).
        use_remote_address: Some(BoolValue { value: true }),
        // With use_remote_address, Envoy replaces the request id of a client it deems
        // external (loopback included, unless internal_address_config says otherwise); in a
        // mesh the id the first hop made or received is kept, so hops' logs and spans agree.
        preserve_external_request_id: true,
        // Domains are written without ports; clients send `Host: name:port`.
        strip_port_mode: Some(StripPortMode::StripAnyHostPort(true)),
        upgrade_configs: if l.websocket {
            vec![UpgradeConfig {
                upgrade_type: "websocket".to_owned(),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        stream_idle_timeout: l.stream_idle_timeout.map(duration),
        request_headers_timeout: l.request_headers_timeout.map(duration),
        ..Default::default()
    };
    let (host, port) = split_address(&l.address);
    // A per-listener limit is Envoy's connection_limit network filter, ahead of the
    // connection manager (what a real Envoy and legate-snapshot both accept).
    let limit = l.max_connections.map(|n| Filter {
        name: names::CONNECTION_LIMIT.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            type_url::CONNECTION_LIMIT,
            &ConnectionLimit {
                stat_prefix: l.name.clone(),
                max_connections: Some(UInt64Value { value: n }),
                ..Default::default()
            },
        ))),
    });
    XdsListener {
        name: l.name.clone(),
        address: Some(socket_address(&host, port)),
        filter_chains: vec![FilterChain {
            filters: limit
                .into_iter()
                .chain([Filter {
                    name: names::HTTP_CONNECTION_MANAGER.to_owned(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(
                        type_url::HTTP_CONNECTION_MANAGER,
                        &hcm,
                    ))),
                }])
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy cannot enable a listener's filter on one route without a per-route configuration,
/// which the credential injector does not have; it can disable one. So each credential's
/// filter runs on the listener, and every route disables the credential filters that are
/// not its own (`FilterConfig {disabled: true}`).
fn disable_other_credentials(
    rc: &RouteConfig,
    credentials: &[&crate::Credentials],
    out: &mut XdsRouteConfiguration,
) {
    if credentials.is_empty() {
        return;
    }
    let names: Vec<String> = credentials
        .iter()
        .map(|c| policies::credential_filter_name(c))
        .collect();
    for (vh, xvh) in rc.virtual_hosts.iter().zip(&mut out.virtual_hosts) {
        for (r, xr) in vh.routes.iter().zip(&mut xvh.routes) {
            let own = r.credentials.as_ref().map(policies::credential_filter_name);
            for n in &names {
                if own.as_ref() != Some(n) {
                    xr.typed_per_filter_config
                        .insert(n.clone(), policies::credential_disabled());
                }
            }
        }
    }
}

fn route_config(rc: &RouteConfig) -> XdsRouteConfiguration {
    XdsRouteConfiguration {
        name: rc.name.clone(),
        virtual_hosts: rc.virtual_hosts.iter().map(virtual_host).collect(),
        ..Default::default()
    }
}

fn virtual_host(vh: &VirtualHost) -> XdsVirtualHost {
    let retries = vh.retries.as_ref();
    XdsVirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh
            .routes
            .iter()
            .map(|r| {
                let mut out = route(r);
                let own = r.forward.as_ref().map(|f| f.retries.as_ref());
                match (own, retries) {
                    // Route metadata is the only place legate reads the opt-in from: a route
                    // that takes the virtual host's retries gets the virtual host's.
                    (Some(None), Some(inherited)) => {
                        out.metadata = policies::route_metadata(inherited);
                    }
                    // A route's hedge policy replaces the virtual host's only when set: say
                    // "no hedging" when the route's retries replace hedging ones.
                    (Some(Some(own)), Some(inherited))
                        if inherited.hedge_on_per_try_timeout && !own.hedge_on_per_try_timeout =>
                    {
                        if let Some(route::Action::Route(a)) = &mut out.action {
                            a.hedge_policy = Some(HedgePolicy::default());
                        }
                    }
                    _ => {}
                }
                out
            })
            .collect(),
        request_headers_to_add: headers_to_add(&vh.request_headers_to_add),
        retry_policy: retries.map(policies::retry_policy),
        hedge_policy: retries.and_then(policies::hedge_policy),
        request_body_buffer_limit: retries
            .and_then(|r| r.buffer_limit)
            .map(|value| UInt64Value { value }),
        ..Default::default()
    }
}

fn headers_to_add(headers: &[HeaderToAdd]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|h| HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                // Values are literal in a mesh; Envoy reads `%...%` as a substitution command.
                value: h.value.replace('%', "%%"),
                ..Default::default()
            }),
            append_action: if h.append {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            }
            .into(),
            ..Default::default()
        })
        .collect()
}

pub(crate) fn route(r: &Route) -> XdsRoute {
    let action = if let Some(f) = &r.forward {
        Some(route::Action::Route(forward(f)))
    } else if let Some(d) = &r.direct_response {
        Some(route::Action::DirectResponse(DirectResponseAction {
            status: d.status,
            body: d.body.as_ref().map(|b| DataSource {
                specifier: Some(data_source::Specifier::InlineString(b.clone())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    } else {
        r.redirect
            .as_ref()
            .map(|rd| route::Action::Redirect(redirect(rd)))
    };
    let retries = r.forward.as_ref().and_then(|f| f.retries.as_ref());
    XdsRoute {
        name: r.name.clone().unwrap_or_default(),
        r#match: Some(route_match(&r.matcher)),
        action,
        request_headers_to_add: headers_to_add(&r.request_headers_to_add),
        request_body_buffer_limit: retries
            .and_then(|r| r.buffer_limit)
            .map(|value| UInt64Value { value }),
        metadata: retries.and_then(policies::route_metadata),
        typed_per_filter_config: r
            .rate_limit
            .iter()
            .map(|rl| {
                (
                    names::LOCAL_RATE_LIMIT.to_owned(),
                    policies::local_rate_limit(rl),
                )
            })
            .chain(
                r.fault
                    .iter()
                    .map(|f| (names::FAULT.to_owned(), policies::fault(f))),
            )
            .collect(),
        ..Default::default()
    }
}

fn regex(pattern: &str) -> RegexMatcher {
    // No engine: Envoy's default, RE2.
    RegexMatcher {
        regex: pattern.to_owned(),
        engine_type: None,
    }
}

/// The one string rule set (validation guarantees at most one), in a fixed order.
fn string_matcher(
    exact: &Option<String>,
    prefix: &Option<String>,
    suffix: &Option<String>,
    contains: &Option<String>,
    re: &Option<String>,
) -> Option<StringMatcher> {
    let pattern = if let Some(v) = exact {
        MatchPattern::Exact(v.clone())
    } else if let Some(v) = prefix {
        MatchPattern::Prefix(v.clone())
    } else if let Some(v) = suffix {
        MatchPattern::Suffix(v.clone())
    } else if let Some(v) = contains {
        MatchPattern::Contains(v.clone())
    } else {
        MatchPattern::SafeRegex(regex(re.as_deref()?))
    };
    Some(StringMatcher {
        ignore_case: false,
        match_pattern: Some(pattern),
    })
}

pub(crate) fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        header_match_specifier: match h.present {
            Some(present) => Some(header_matcher::HeaderMatchSpecifier::PresentMatch(present)),
            None => string_matcher(&h.exact, &h.prefix, &h.suffix, &h.contains, &h.regex)
                .map(header_matcher::HeaderMatchSpecifier::StringMatch),
        },
        ..Default::default()
    }
}

fn route_match(m: &RouteMatch) -> XdsRouteMatch {
    let path = if let Some(p) = &m.path {
        PathSpecifier::Path(p.clone())
    } else if let Some(r) = &m.regex {
        PathSpecifier::SafeRegex(regex(r))
    } else if let Some(p) = &m.separated_prefix {
        PathSpecifier::PathSeparatedPrefix(p.clone())
    } else {
        PathSpecifier::Prefix(m.prefix.clone().unwrap_or_else(|| "/".to_owned()))
    };
    XdsRouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.case_sensitive.map(|value| BoolValue { value }),
        headers: m.headers.iter().map(header_matcher).collect(),
        query_parameters: m
            .query
            .iter()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: match q.present {
                    Some(present) => Some(
                        query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(
                            present,
                        ),
                    ),
                    None => string_matcher(&q.exact, &q.prefix, &q.suffix, &q.contains, &q.regex)
                        .map(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch),
                },
            })
            .collect(),
        ..Default::default()
    }
}

fn forward(f: &Forward) -> RouteAction {
    let target = match &f.cluster {
        Some(name) => ClusterSpecifier::Cluster(name.clone()),
        None => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: f
                .weighted
                .iter()
                .map(|w| ClusterWeight {
                    name: w.cluster.clone(),
                    weight: Some(UInt32Value { value: w.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let host_rewrite = match (&f.host_rewrite, f.auto_host_rewrite) {
        (Some(host), _) => Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone())),
        (None, true) => Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue {
            value: true,
        })),
        (None, false) => None,
    };
    RouteAction {
        cluster_specifier: Some(target),
        prefix_rewrite: f.prefix_rewrite.clone().unwrap_or_default(),
        host_rewrite_specifier: host_rewrite,
        timeout: f.timeout.map(duration),
        idle_timeout: f.idle_timeout.map(duration),
        max_stream_duration: f.grpc_timeout_max.map(|max| MaxStreamDuration {
            grpc_timeout_header_max: Some(duration(max)),
            ..Default::default()
        }),
        retry_policy: f.retries.as_ref().map(policies::retry_policy),
        hedge_policy: f.retries.as_ref().and_then(policies::hedge_policy),
        hash_policy: f.hash.iter().map(policies::hash_policy).collect(),
        ..Default::default()
    }
}

fn redirect(r: &Redirect) -> XdsRedirectAction {
    let status = match r.status.unwrap_or(DEFAULT_REDIRECT_STATUS) {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    let path = if let Some(p) = &r.path {
        Some(PathRewriteSpecifier::PathRedirect(p.clone()))
    } else {
        r.prefix_rewrite
            .as_ref()
            .map(|p| PathRewriteSpecifier::PrefixRewrite(p.clone()))
    };
    XdsRedirectAction {
        scheme_rewrite_specifier: r
            .scheme
            .as_ref()
            .map(|s| SchemeRewriteSpecifier::SchemeRedirect(s.clone())),
        host_redirect: r.host.clone().unwrap_or_default(),
        port_redirect: r.port.map(u32::from).unwrap_or(0),
        path_rewrite_specifier: path,
        response_code: status.into(),
        strip_query: r.strip_query,
    }
}

fn cluster(
    c: &Cluster,
    node_cluster: Option<&str>,
) -> (XdsCluster, Option<XdsClusterLoadAssignment>) {
    let protocol_options = HttpProtocolOptions {
        common_http_protocol_options: Some(XdsCommonHttpProtocolOptions {
            idle_timeout: Some(duration(c.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT))),
            max_requests_per_connection: c
                .max_requests_per_connection
                .filter(|&n| n > 0)
                .map(|value| UInt32Value { value }),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(match c.protocol {
                    UpstreamProtocol::Http1 => {
                        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
                    }
                    UpstreamProtocol::Http2 => {
                        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
                    }
                }),
            },
        )),
        ..Default::default()
    };
    let mut xds = XdsCluster {
        name: c.name.clone(),
        connect_timeout: Some(duration(
            c.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )),
        lb_policy: match c.lb_policy {
            LbPolicy::RoundRobin => XdsLbPolicy::RoundRobin,
            LbPolicy::LeastRequest => XdsLbPolicy::LeastRequest,
            LbPolicy::Random => XdsLbPolicy::Random,
            LbPolicy::RingHash => XdsLbPolicy::RingHash,
            LbPolicy::Maglev => XdsLbPolicy::Maglev,
        }
        .into(),
        typed_extension_protocol_options: HashMap::from([(
            names::HTTP_PROTOCOL_OPTIONS.to_owned(),
            any(type_url::HTTP_PROTOCOL_OPTIONS, &protocol_options),
        )]),
        ..Default::default()
    };
    policies::cluster_policies(c, &mut xds);
    xds.transport_socket = c
        .tls
        .as_ref()
        .map(|t| tls::transport_socket(t, c.protocol, node_cluster));
    let assignment = load_assignment(&c.name, &c.endpoints);
    match c.discovery {
        // Served over EDS rather than inline: gRPC's xDS client takes only EDS clusters,
        // and a control plane can then move endpoints without resending the cluster.
        Discovery::Static => {
            xds.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into()));
            xds.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: c.name.clone(),
            });
            (xds, Some(assignment))
        }
        Discovery::StrictDns => {
            xds.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns.into()));
            // Deprecated in favour of the `envoy.clusters.dns` extension, which Envoy 1.40
            // still maps this field onto; the plain field is what every consumer reads.
            #[allow(deprecated)]
            {
                xds.dns_refresh_rate = Some(duration(
                    c.dns_refresh_rate.unwrap_or(DEFAULT_DNS_REFRESH_RATE),
                ));
            }
            xds.load_assignment = Some(assignment);
            (xds, None)
        }
    }
}

/// All endpoints in one locality. The locality carries weight 1: gRPC's xDS client drops a
/// locality without a positive weight, and Envoy ignores locality weights unless locality
/// weighted balancing is on.
pub(crate) fn load_assignment(cluster: &str, endpoints: &[Endpoint]) -> XdsClusterLoadAssignment {
    let lb_endpoints: Vec<LbEndpoint> = endpoints
        .iter()
        .map(|e| {
            let (host, port) = split_address(&e.address);
            LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(XdsEndpoint {
                    address: Some(socket_address(&host, port)),
                    ..Default::default()
                })),
                load_balancing_weight: Some(UInt32Value { value: e.weight }),
                ..Default::default()
            }
        })
        .collect();
    XdsClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: if lb_endpoints.is_empty() {
            Vec::new()
        } else {
            vec![LocalityLbEndpoints {
                // gRPC's xDS client refuses a locality group without `locality` (seen with
                // grpcio 1.85: "endpoints[0].locality error:field not present").
                locality: Some(Locality::default()),
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint;
    use envoy_types::pb::envoy::config::route::v3::route::Action;

    use super::*;

    const REFERENCE: &str = include_str!("../../../examples/mesh-reference.yaml");

    fn reference() -> Resources {
        match crate::load(REFERENCE, "mesh-reference.yaml") {
            Ok(mesh) => compile(&mesh),
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

    fn decode<M: Message + Default>(a: &Any, type_url: &str) -> M {
        assert_eq!(a.type_url, type_url);
        M::decode(&a.value[..]).expect("decodes")
    }

    fn hcm(l: &XdsListener) -> HttpConnectionManager {
        let [chain] = &l.filter_chains[..] else {
            panic!("one filter chain expected")
        };
        let Some(f) = chain.filters.last() else {
            panic!("a filter expected")
        };
        assert_eq!(f.name, names::HTTP_CONNECTION_MANAGER);
        let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
            panic!("typed config expected")
        };
        decode(a, type_url::HTTP_CONNECTION_MANAGER)
    }

    fn pb(secs: i64, nanos: i32) -> Option<PbDuration> {
        Some(PbDuration {
            seconds: secs,
            nanos,
        })
    }

    fn routes(r: &Resources) -> &[XdsRoute] {
        &r.route_configs[0].virtual_hosts[0].routes
    }

    fn route_action(r: &XdsRoute) -> &RouteAction {
        match &r.action {
            Some(Action::Route(a)) => a,
            other => panic!("forward expected, got {other:?}"),
        }
    }

    #[test]
    fn reference_compiles_to_every_resource() {
        let r = reference();
        let names = |v: Vec<&str>| v.join(",");
        assert_eq!(
            names(r.listeners.iter().map(|l| &l.name[..]).collect()),
            "outbound,admin-only"
        );
        assert_eq!(
            names(r.route_configs.iter().map(|l| &l.name[..]).collect()),
            "outbound,internal"
        );
        assert_eq!(
            names(r.clusters.iter().map(|l| &l.name[..]).collect()),
            "payments-v1,payments-v2,api,ledger"
        );
        // Static clusters only: DNS clusters carry their endpoints inline.
        assert_eq!(
            names(
                r.load_assignments
                    .iter()
                    .map(|l| &l.cluster_name[..])
                    .collect()
            ),
            "payments-v1,payments-v2,ledger"
        );
        // The secrets a cluster names (a node outside `billing` is given proxy-client).
        assert_eq!(
            names(r.secrets.iter().map(|s| &s.name[..]).collect()),
            "internal-ca,proxy-client"
        );
    }

    #[test]
    fn telemetry_access_log_compiles_to_the_file_logger_legate_accepts() {
        let text = format!(
            "{REFERENCE}\ntelemetry:\n  access_log:\n    path: /dev/stdout\n    \
             json: {{code: '%RESPONSE_CODE%', flags: '%RESPONSE_FLAGS%'}}\n"
        );
        let mesh = crate::load(&text, "mesh.yaml").expect("mesh loads");
        let r = compile(&mesh);
        for l in &r.listeners {
            assert_eq!(hcm(l).access_log.len(), 1, "every listener logs");
        }
        let s = legate_snapshot::build("v", &r).expect("legate accepts it");
        let log = &s.listeners[0].access_logs[0];
        assert_eq!(&*log.path, "/dev/stdout");
        assert!(matches!(
            &log.format,
            legate_snapshot::access_log::LogFormat::Json(f) if f.len() == 2
        ));
        // Without telemetry, nothing is logged.
        assert!(
            reference()
                .listeners
                .iter()
                .all(|l| hcm(l).access_log.is_empty())
        );
    }

    #[test]
    fn listener_runs_an_hcm_over_rds() {
        let r = reference();
        let l = &r.listeners[0];
        assert_eq!(l.address, Some(socket_address("127.0.0.1", 15001)));
        let h = hcm(l);
        assert_eq!(h.stat_prefix, "outbound");
        assert_eq!(h.codec_type, i32::from(CodecType::Auto));
        let Some(RouteSpecifier::Rds(rds)) = &h.route_specifier else {
            panic!("rds expected")
        };
        assert_eq!(rds.route_config_name, "outbound");
        let source = rds.config_source.as_ref().expect("config source");
        assert_eq!(
            source.config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
        );
        assert_eq!(source.resource_api_version, i32::from(ApiVersion::V3));
        let router = h.http_filters.last().expect("filters");
        assert_eq!(router.name, names::ROUTER);
        let Some(http_filter::ConfigType::TypedConfig(a)) = &router.config_type else {
            panic!("router typed config expected")
        };
        let _: Router = decode(a, type_url::ROUTER);
        assert_eq!(
            h.strip_port_mode,
            Some(StripPortMode::StripAnyHostPort(true))
        );
        assert_eq!(h.upgrade_configs.len(), 1);
        assert_eq!(h.upgrade_configs[0].upgrade_type, "websocket");
        assert_eq!(h.stream_idle_timeout, pb(300, 0));

        let h = hcm(&r.listeners[1]);
        assert_eq!(h.codec_type, i32::from(CodecType::Http1));
        assert!(h.upgrade_configs.is_empty());
        assert_eq!(h.stream_idle_timeout, None);
        assert_eq!(r.listeners[1].address, Some(socket_address("127.0.0.1", 0)));
    }

    #[test]
    fn routes_carry_matches_and_actions() {
        let r = reference();
        let vh = &r.route_configs[0].virtual_hosts[0];
        assert_eq!(
            vh.domains,
            ["payments", "payments.internal", "*.payments.internal"]
        );
        let [add] = &vh.request_headers_to_add[..] else {
            panic!("one header")
        };
        assert_eq!(
            add.append_action,
            i32::from(HeaderAppendAction::OverwriteIfExistsOrAdd)
        );
        let rs = routes(&r);
        assert_eq!(rs.len(), 7);

        // The canary.
        let canary = &rs[0];
        assert_eq!(canary.name, "payments-canary");
        let m = canary.r#match.as_ref().expect("match");
        assert_eq!(
            m.path_specifier,
            Some(PathSpecifier::Prefix("/payments/".into()))
        );
        assert_eq!(m.case_sensitive, Some(BoolValue { value: true }));
        let exact = |v: &str| StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::Exact(v.into())),
        };
        assert_eq!(
            m.headers[0].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                "1"
            )))
        );
        assert!(!m.headers[0].invert_match);
        assert_eq!(
            m.headers[1].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
        );
        assert!(m.headers[1].invert_match);
        assert_eq!(m.headers[2].name, "x-client");
        assert_eq!(
            m.headers[2].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    ignore_case: false,
                    match_pattern: Some(MatchPattern::SafeRegex(regex("curl/.*|wget/.*"))),
                }
            ))
        );
        assert_eq!(m.query_parameters[0].name, "version");
        let a = route_action(canary);
        assert_eq!(
            a.cluster_specifier,
            Some(ClusterSpecifier::Cluster("payments-v2".into()))
        );
        assert_eq!(a.prefix_rewrite, "/");
        assert_eq!(
            a.host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral(
                "payments.internal".into()
            ))
        );
        assert_eq!(a.timeout, pb(5, 0));
        let values: Vec<(&str, &str, i32)> = canary
            .request_headers_to_add
            .iter()
            .map(|h| {
                let hv = h.header.as_ref().expect("header");
                (&hv.key[..], &hv.value[..], h.append_action)
            })
            .collect();
        let append = i32::from(HeaderAppendAction::AppendIfExistsOrAdd);
        assert_eq!(
            values,
            [
                ("x-canary-route", "yes", append),
                ("x-canary-share", "100%%", append)
            ]
        );

        // Weighted.
        let a = route_action(&rs[1]);
        let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
            panic!("weighted expected")
        };
        let split: Vec<(&str, Option<u32>)> = w
            .clusters
            .iter()
            .map(|c| (&c.name[..], c.weight.as_ref().map(|w| w.value)))
            .collect();
        assert_eq!(
            split,
            [("payments-v1", Some(90)), ("payments-v2", Some(10))]
        );
        assert_eq!(a.timeout, pb(2, 500_000_000));

        // Separated prefix, auto host rewrite, disabled timeout.
        assert_eq!(
            rs[2]
                .r#match
                .as_ref()
                .and_then(|m| m.path_specifier.clone()),
            Some(PathSpecifier::PathSeparatedPrefix("/api".into()))
        );
        let a = route_action(&rs[2]);
        assert_eq!(
            a.host_rewrite_specifier,
            Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue {
                value: true
            }))
        );
        assert_eq!(a.timeout, pb(0, 0));
        assert_eq!(a.prefix_rewrite, "");

        // Regex, case-insensitive; no timeout set means Envoy's default.
        let m = rs[3].r#match.as_ref().expect("match");
        assert_eq!(
            m.path_specifier,
            Some(PathSpecifier::SafeRegex(regex("/orders/[0-9]+")))
        );
        assert_eq!(m.case_sensitive, Some(BoolValue { value: false }));
        assert_eq!(route_action(&rs[3]).timeout, None);

        // Direct response.
        let Some(Action::DirectResponse(d)) = &rs[4].action else {
            panic!("direct response expected")
        };
        assert_eq!(d.status, 200);
        assert_eq!(
            d.body.as_ref().and_then(|b| b.specifier.clone()),
            Some(data_source::Specifier::InlineString("pong\n".into()))
        );
        assert_eq!(
            rs[4]
                .r#match
                .as_ref()
                .and_then(|m| m.path_specifier.clone()),
            Some(PathSpecifier::Path("/ping".into()))
        );

        // Redirects.
        let Some(Action::Redirect(rd)) = &rs[5].action else {
            panic!("redirect expected")
        };
        assert_eq!(
            rd,
            &XdsRedirectAction {
                path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect("/new".into())),
                response_code: RedirectResponseCode::MovedPermanently.into(),
                ..Default::default()
            }
        );
        let Some(Action::Redirect(rd)) = &rs[6].action else {
            panic!("redirect expected")
        };
        assert_eq!(
            rd,
            &XdsRedirectAction {
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect(
                    "https".into()
                )),
                host_redirect: "docs.example.com".into(),
                port_redirect: 8443,
                path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/v2/".into())),
                response_code: RedirectResponseCode::PermanentRedirect.into(),
                strip_query: true,
            }
        );

        // A route without `match` matches everything.
        let internal = &r.route_configs[1].virtual_hosts[0].routes[0];
        assert_eq!(
            internal
                .r#match
                .as_ref()
                .and_then(|m| m.path_specifier.clone()),
            Some(PathSpecifier::Prefix("/".into()))
        );
    }

    fn protocol_options(c: &XdsCluster) -> HttpProtocolOptions {
        let a = c
            .typed_extension_protocol_options
            .get(names::HTTP_PROTOCOL_OPTIONS)
            .expect("protocol options");
        decode(a, type_url::HTTP_PROTOCOL_OPTIONS)
    }

    fn endpoints(cla: &XdsClusterLoadAssignment) -> Vec<(XdsAddress, u32)> {
        let [locality] = &cla.endpoints[..] else {
            panic!("one locality expected")
        };
        // gRPC's xDS client ignores localities without a positive weight.
        assert_eq!(
            locality.load_balancing_weight,
            Some(UInt32Value { value: 1 })
        );
        locality
            .lb_endpoints
            .iter()
            .map(|e: &LbEndpoint| {
                let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!("endpoint expected")
                };
                (
                    ep.address.clone().expect("address"),
                    e.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                )
            })
            .collect()
    }

    #[test]
    fn static_clusters_use_eds() {
        let r = reference();
        let c = &r.clusters[0];
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into()))
        );
        assert_eq!(
            c.eds_cluster_config,
            Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: "payments-v1".into(),
            })
        );
        assert_eq!(c.load_assignment, None);
        assert_eq!(c.connect_timeout, pb(1, 0));
        assert_eq!(c.lb_policy, i32::from(XdsLbPolicy::RoundRobin));
        let o = protocol_options(c);
        let common = o.common_http_protocol_options.expect("common options");
        assert_eq!(common.idle_timeout, pb(60, 0));
        assert_eq!(
            common.max_requests_per_connection,
            Some(UInt32Value { value: 1000 })
        );
        assert_eq!(
            o.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                        Http1ProtocolOptions::default()
                    )),
                }
            ))
        );

        let cla = &r.load_assignments[0];
        assert_eq!(cla.cluster_name, "payments-v1");
        assert_eq!(
            endpoints(cla),
            [
                (socket_address("127.0.0.1", 8081), 1),
                (socket_address("127.0.0.1", 8082), 2)
            ]
        );
        assert_eq!(
            endpoints(&r.load_assignments[1]),
            [(socket_address("::1", 8083), 1)]
        );
        assert_eq!(
            r.clusters[1].lb_policy,
            i32::from(XdsLbPolicy::LeastRequest)
        );
        // Defaults.
        assert_eq!(r.clusters[1].connect_timeout, pb(5, 0));
        let common = protocol_options(&r.clusters[1])
            .common_http_protocol_options
            .expect("common options");
        assert_eq!(common.idle_timeout, pb(3600, 0));
    }

    #[test]
    fn dns_clusters_carry_endpoints_inline() {
        let r = reference();
        let c = &r.clusters[2];
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns.into()))
        );
        assert_eq!(c.eds_cluster_config, None);
        #[allow(deprecated)]
        let refresh = c.dns_refresh_rate;
        assert_eq!(refresh, pb(5, 0));
        assert_eq!(c.lb_policy, i32::from(XdsLbPolicy::Random));
        let cla = c.load_assignment.as_ref().expect("inline endpoints");
        assert_eq!(cla.cluster_name, "api");
        assert_eq!(
            endpoints(cla),
            [
                (socket_address("api.internal", 8080), 1),
                (socket_address("api-backup.internal", 8080), 3)
            ]
        );
        let o = protocol_options(c);
        assert_eq!(
            o.common_http_protocol_options
                .and_then(|c| c.max_requests_per_connection),
            None
        );
        assert_eq!(
            o.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default()
                    )),
                }
            ))
        );
    }

    #[test]
    fn empty_static_cluster_has_no_locality() {
        let mesh = crate::parse_mesh("clusters: [{name: empty}]", "m.yaml").expect("parses");
        let r = compile(&mesh);
        assert!(r.load_assignments[0].endpoints.is_empty());
    }

    /// The compiled reference passes legate's own validator, and means what the mesh says.
    #[test]
    fn reference_builds_a_snapshot() {
        use std::sync::Arc;

        use legate_snapshot as snap;

        let snapshot = match snap::build("v1", &reference()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let names: Vec<&str> = snapshot.listeners.iter().map(|l| &*l.name).collect();
        assert_eq!(names, ["admin-only", "outbound"]);
        let l = &snapshot.listeners[1];
        assert_eq!(l.address, "127.0.0.1:15001".parse().expect("address"));
        assert_eq!(&*l.stat_prefix, "outbound");
        assert_eq!(l.codec, snap::Codec::Auto);
        assert_eq!(l.routes, snap::RouteSource::Rds(Arc::from("outbound")));
        assert!(l.strip_any_host_port);
        assert_eq!(l.upgrades, [Arc::from("websocket")]);
        assert_eq!(l.stream_idle_timeout, Some(Duration::from_secs(300)));
        assert!(snapshot.listeners[0].upgrades.is_empty());
        assert_eq!(snapshot.listeners[0].codec, snap::Codec::Http1);

        let rc = snapshot.route_config_for(l).expect("route config");
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.routes.len(), 7);
        let snap::RouteAction::Forward(f) = &vh.routes[0].action else {
            panic!("forward expected")
        };
        assert_eq!(
            f.target,
            snap::ClusterTarget::Single(Arc::from("payments-v2"))
        );
        assert_eq!(f.prefix_rewrite.as_deref(), Some("/"));
        assert_eq!(
            f.host_rewrite,
            snap::HostRewrite::Literal(http::HeaderValue::from_static("payments.internal"))
        );
        assert_eq!(f.timeout, Some(Duration::from_secs(5)));
        // The virtual host's retries, inherited.
        let p = f.retry_policy.as_deref().expect("retry policy");
        assert_eq!((p.num_retries, p.previous_hosts), (2, true));
        assert_eq!(f.retry_buffer_limit, 1_048_576);
        // `%` written in the mesh arrives as a literal `%`.
        let share = &vh.routes[0].request_headers_to_add[1];
        assert_eq!(
            (share.name.as_str(), share.value.to_str().expect("ascii")),
            ("x-canary-share", "100%")
        );
        assert_eq!(share.append, snap::HeaderAppend::AppendIfExistsOrAdd);
        assert_eq!(
            vh.request_headers_to_add[0].append,
            snap::HeaderAppend::OverwriteIfExistsOrAdd
        );
        let snap::RouteAction::Forward(f) = &vh.routes[1].action else {
            panic!("forward expected")
        };
        let snap::ClusterTarget::Weighted { clusters, total } = &f.target else {
            panic!("weighted expected")
        };
        assert_eq!(*total, 100);
        assert_eq!(clusters.len(), 2);
        // Its own retries, replacing the virtual host's.
        let p = f.retry_policy.as_deref().expect("retry policy");
        assert!(p.retry_on.gateway_error && !p.retry_on.five_xx);
        assert_eq!(f.idle_timeout, Some(Duration::from_secs(30)));
        let timeout = |i: usize| match &vh.routes[i].action {
            snap::RouteAction::Forward(f) => f.timeout,
            other => panic!("forward expected, got {other:?}"),
        };
        assert_eq!(timeout(2), None, "0s disables the timeout");
        assert_eq!(timeout(3), Some(Duration::from_secs(15)), "Envoy's default");
        assert_eq!(
            vh.routes[2].matcher.path,
            snap::PathMatch::SeparatedPrefix(Arc::from("/api"))
        );
        assert!(!vh.routes[3].matcher.case_sensitive);
        assert!(matches!(
            vh.routes[4].action,
            snap::RouteAction::Direct { status: 200, .. }
        ));
        let snap::RouteAction::Redirect(rd) = &vh.routes[6].action else {
            panic!("redirect expected")
        };
        assert_eq!(rd.status, 308);
        assert_eq!(rd.port, Some(8443));

        let c = &snapshot.clusters["payments-v1"];
        assert_eq!(
            c.discovery,
            snap::Discovery::Eds {
                service_name: Arc::from("payments-v1")
            }
        );
        assert_eq!(c.lb_policy, snap::LbPolicy::RoundRobin);
        assert_eq!(c.protocol, snap::UpstreamProtocol::Http1);
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.max_requests_per_connection, Some(1000));
        // The policies as written (each field's mapping is tested in compile/policies.rs).
        let budget = c
            .circuit_breakers
            .default
            .retry_budget
            .expect("retry budget");
        assert_eq!(budget.budget_permille, 200);
        let outlier = c.outlier_detection.as_ref().expect("outlier detection");
        assert_eq!(outlier.consecutive_5xx, 5);
        assert_eq!(c.health_checks.len(), 1);
        assert_eq!(c.healthy_panic_threshold_permille, 500);
        assert_eq!(
            c.classic_breaker.as_ref().map(|b| b.failure_ratio_permille),
            Some(500)
        );
        let eps: Vec<(String, u32)> = c
            .load_assignment
            .endpoints()
            .map(|e| (e.address.to_string(), e.weight))
            .collect();
        assert_eq!(
            eps,
            [("127.0.0.1:8081".into(), 1), ("127.0.0.1:8082".into(), 2)]
        );
        assert_eq!(c.load_assignment.localities[0].weight, Some(1));

        let c = &snapshot.clusters["payments-v2"];
        assert!(matches!(c.lb_policy, snap::LbPolicy::LeastRequest { .. }));
        assert_eq!(c.health_checks[0].kind, snap::HealthCheckKind::Tcp);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));

        let c = &snapshot.clusters["api"];
        assert!(matches!(
            c.discovery,
            snap::Discovery::StrictDns { refresh_rate, .. } if refresh_rate == Duration::from_secs(5)
        ));
        assert_eq!(c.lb_policy, snap::LbPolicy::Random);
        assert_eq!(c.protocol, snap::UpstreamProtocol::Http2);
        assert_eq!(c.max_requests_per_connection, None);
        let eps: Vec<String> = c
            .load_assignment
            .endpoints()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(eps, ["api.internal:8080", "api-backup.internal:8080"]);
    }

    /// Corners of the format that pass [`Mesh::check`] must pass the snapshot validator too.
    #[test]
    fn corner_cases_build_a_snapshot() {
        let body = "x".repeat(4096);
        let text = format!(
            "\
listeners:
  - {{name: a, address: '[::1]:0', route_config: rc, protocol: http2, stream_idle_timeout: 0s}}
  - {{name: b, address: '0.0.0.0:15002', route_config: empty}}
route_configs:
  - name: empty
    virtual_hosts: []
  - name: rc
    virtual_hosts:
      - name: v6
        domains: ['[::1]', 'foo-*', '*-bar.example', EXAMPLE.com]
      - name: vh
        domains: ['*']
        routes:
          - match:
              path: /exact
              headers:
                - {{name: ':authority', suffix: .internal}}
                - {{name: x-absent, present: false}}
                - {{name: X-Upper, contains: a}}
              query:
                - {{name: q, regex: '[0-9]+'}}
                - {{name: p, present: true}}
                - {{name: e, exact: ''}}
            forward: {{cluster: dns, prefix_rewrite: /other}}
          - match: {{separated_prefix: /sep, case_sensitive: false}}
            forward:
              weighted: [{{cluster: s, weight: 0}}, {{cluster: dns, weight: 1}}]
          - match: {{prefix: /r}}
            redirect: {{prefix_rewrite: /s, status: 307}}
          - match: {{separated_prefix: /h}}
            redirect: {{host: other.example}}
          - match: {{prefix: /p}}
            redirect: {{port: 8080, status: 302}}
          - match: {{prefix: /q}}
            redirect: {{strip_query: true, status: 303}}
          - match: {{prefix: /big}}
            direct_response: {{status: 599, body: '{body}'}}
          - direct_response: {{status: 204}}
clusters:
  - name: s
    idle_timeout: 0s
  - name: dns
    discovery: strict_dns
    dns_refresh_rate: 1ms
    lb_policy: least_request
    endpoints:
      - address: 10.1.2.3:80
      - address: under_score.example.:80
        weight: 100
"
        );
        let mesh = match crate::load(&text, "corners.yaml") {
            Ok(m) => m,
            Err(errors) => panic!("{errors:?}"),
        };
        let snapshot = match legate_snapshot::build("v1", &compile(&mesh)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(snapshot.clusters["s"].idle_timeout, None, "0s disables");
        assert_eq!(
            snapshot.listeners[0].stream_idle_timeout, None,
            "0s disables"
        );
    }

    /// `policies.rate_limit` compiles to the local rate limit filter on the listener (no
    /// bucket of its own) and a per-route configuration on each of the service's routes,
    /// which legate's snapshot reads back; a mesh without one gets no such filter.
    #[test]
    fn rate_limit_policy_compiles_to_local_ratelimit() {
        use legate_snapshot::filter::{FilterKind, PerFilterConfig, TokenBucket};
        let text = "\
services:
  - name: pay
    endpoints: [{address: '127.0.0.1:8080'}]
    policies:
      rate_limit: {requests: 100, per: 1s, burst: 20}
  - name: other
    endpoints: [{address: '127.0.0.1:8081'}]
";
        let mesh = match crate::load(text, "rl.yaml") {
            Ok(m) => m,
            Err(errors) => panic!("{errors:?}"),
        };
        let snapshot = match legate_snapshot::build("v1", &compile(&mesh)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let filters = &snapshot.listeners[0].http_filters;
        assert_eq!(filters.len(), 1);
        assert_eq!(&*filters[0].name, names::LOCAL_RATE_LIMIT);
        let FilterKind::LocalRateLimit(l) = &filters[0].config else {
            panic!("a local rate limit");
        };
        assert_eq!(
            l.token_bucket, None,
            "the listener's filter limits nothing itself"
        );
        let rc = snapshot
            .route_configs
            .values()
            .next()
            .expect("route config");
        let routes = &rc.virtual_hosts[0].routes;
        let pay = routes
            .iter()
            .find(|r| &*r.name == "pay")
            .expect("pay route");
        let [(name, PerFilterConfig::Config(FilterKind::LocalRateLimit(l)))] = &*pay.per_filter
        else {
            panic!("one override: {:?}", pay.per_filter);
        };
        assert_eq!(&**name, names::LOCAL_RATE_LIMIT);
        assert_eq!(
            l.token_bucket,
            Some(TokenBucket {
                max_tokens: 20,
                tokens_per_fill: 100,
                fill_interval: Duration::from_secs(1),
            })
        );
        assert_eq!((l.enabled_ppm, l.enforced_ppm), (1_000_000, 1_000_000));
        assert!(l.x_ratelimit_headers);
        let other = routes
            .iter()
            .find(|r| &*r.name == "other")
            .expect("other route");
        assert!(other.per_filter.is_empty());

        let plain = crate::load(
            "services: [{name: web, endpoints: [{address: '127.0.0.1:8080'}]}]",
            "p.yaml",
        )
        .expect("loads");
        let r = compile(&plain);
        let snapshot = legate_snapshot::build("v1", &r).expect("legate accepts it");
        assert!(snapshot.listeners[0].http_filters.is_empty());
    }

    /// `rate_limit.per_header` compiles to a wildcard descriptor fed by a `request_headers`
    /// action, the default bucket only for requests without the header.
    #[test]
    fn per_header_rate_limit_compiles_to_a_wildcard_descriptor() {
        use legate_snapshot::filter::{
            DescriptorAction, DescriptorEntry, FilterKind, PerFilterConfig,
        };
        use std::sync::Arc;
        let text = "\
services:
  - name: pay
    endpoints: [{address: '127.0.0.1:8080'}]
    policies:
      rate_limit: {requests: 10, per: 1s, per_header: X-Api-Key, max_keys: 50}
";
        let mesh = crate::load(text, "rl.yaml").unwrap_or_else(|e| panic!("{e:?}"));
        let snapshot = legate_snapshot::build("v1", &compile(&mesh)).expect("legate accepts it");
        let rc = snapshot
            .route_configs
            .values()
            .next()
            .expect("route config");
        let route = &rc.virtual_hosts[0].routes[0];
        let [(_, PerFilterConfig::Config(FilterKind::LocalRateLimit(l)))] = &*route.per_filter
        else {
            panic!("one override: {:?}", route.per_filter);
        };
        assert_eq!(l.descriptors.len(), 1);
        assert_eq!(
            l.descriptors[0].entries,
            vec![DescriptorEntry {
                key: Arc::from("per_header"),
                value: None
            }]
        );
        assert_eq!(Some(l.descriptors[0].token_bucket), l.token_bucket);
        assert_eq!(
            l.rate_limits[0].actions,
            vec![DescriptorAction::RequestHeader {
                header: Arc::from("x-api-key"),
                key: Arc::from("per_header"),
                skip_if_absent: false,
            }]
        );
        assert!(!l.always_consume_default);
        assert_eq!(l.max_dynamic_descriptors, 50);

        let bad = "services:\n  - name: pay\n    endpoints: []\n    policies:\n      \
                   rate_limit: {requests: 1, per: 1s, max_keys: 5}\n";
        let errors = crate::load(bad, "bad.yaml").expect_err("max_keys without per_header");
        assert!(
            format!("{errors:?}").contains("`max_keys` counts `per_header` values"),
            "{errors:?}"
        );
    }

    /// `policies.fault` compiles to the fault filter on the listener (first, without faults
    /// of its own) and a per-route `HTTPFault`, which legate's snapshot reads back.
    #[test]
    fn fault_policy_compiles_to_the_fault_filter() {
        use legate_snapshot::filter::{FilterKind, Fraction, PerFilterConfig};
        let text = "\
services:
  - name: pay
    endpoints: [{address: '127.0.0.1:8080'}]
    policies:
      rate_limit: {requests: 100, per: 1s}
      fault:
        delay: {duration: 50ms, percent: 12.5}
        abort: {status: 503}
        max_active: 4
";
        let mesh = match crate::load(text, "f.yaml") {
            Ok(m) => m,
            Err(errors) => panic!("{errors:?}"),
        };
        let snapshot = match legate_snapshot::build("v1", &compile(&mesh)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let names: Vec<&str> = snapshot.listeners[0]
            .http_filters
            .iter()
            .map(|f| &*f.name)
            .collect();
        assert_eq!(names, vec![names::FAULT, names::LOCAL_RATE_LIMIT]);
        let rc = snapshot
            .route_configs
            .values()
            .next()
            .expect("route config");
        let pay = &rc.virtual_hosts[0].routes[0];
        let Some((_, PerFilterConfig::Config(FilterKind::Fault(f)))) =
            pay.per_filter.iter().find(|(n, _)| &**n == names::FAULT)
        else {
            panic!("a fault override: {:?}", pay.per_filter);
        };
        let delay = f.delay.as_ref().expect("delay");
        assert_eq!(delay.fixed, Some(Duration::from_millis(50)));
        assert_eq!(delay.percentage.ppm(), 125_000);
        let abort = f.abort.as_ref().expect("abort");
        assert_eq!(abort.http_status, Some(503));
        assert_eq!(
            abort.percentage,
            Fraction {
                numerator: 1_000_000,
                denominator: 1_000_000
            }
        );
        assert_eq!(f.max_active_faults, Some(4));
    }

    /// `rate_limit` is checked where it is written.
    #[test]
    fn rate_limit_policy_is_checked() {
        let text = "\
services:
  - name: pay
    endpoints: [{address: '127.0.0.1:8080'}]
    policies:
      rate_limit: {requests: 0, per: 10ms, burst: 0}
";
        let errors = match crate::load(text, "rl.yaml") {
            Ok(_) => panic!("accepted"),
            Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        assert_eq!(
            errors,
            vec![
                "rl.yaml:5:30: services[0].policies.rate_limit.requests: `requests` must be at least 1",
                "rl.yaml:5:51: services[0].policies.rate_limit.burst: `burst` must be at least 1",
                "rl.yaml:5:38: services[0].policies.rate_limit.per: `per` must be at least 50ms (Envoy's shortest refill interval); found 10ms",
            ]
        );
    }

    /// `policies.credentials` compiles to one disabled credential injector per distinct
    /// credential on the listener, enabled by the routes that use it, and SDS generic
    /// secrets; legate's snapshot reads them back.
    #[test]
    fn credentials_policy_compiles_to_credential_injectors() {
        use legate_snapshot::filter::{Credential, FilterKind, PerFilterConfig};
        let text = "\
secrets:
  - {name: pay-key, value: keys/pay}
  - {name: idp-client, value: keys/idp}
clusters:
  - {name: idp, endpoints: [{address: '127.0.0.1:9000'}]}
services:
  - name: pay
    endpoints: [{address: '127.0.0.1:8080'}]
    policies:
      credentials: {header: x-api-key, secret: pay-key, overwrite: false}
  - name: ledger
    endpoints: [{address: '127.0.0.1:8081'}]
    policies:
      credentials:
        oauth2: {token_url: 'http://idp.example/oauth/token', cluster: idp, client_id: legate, client_secret: idp-client, scopes: [read, write]}
  - name: other
    endpoints: [{address: '127.0.0.1:8082'}]
";
        let mesh = match crate::load(text, "cred.yaml") {
            Ok(m) => m,
            Err(errors) => panic!("{errors:?}"),
        };
        let r = compile(&mesh);
        let mut secrets: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
        secrets.sort();
        assert_eq!(secrets, ["idp-client", "pay-key"]);
        let snapshot = match legate_snapshot::build("v1", &r) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let filters = &snapshot.listeners[0].http_filters;
        assert_eq!(filters.len(), 2, "{filters:?}");
        assert!(filters.iter().all(|f| !f.disabled));
        let rc = snapshot
            .route_configs
            .values()
            .next()
            .expect("route config");
        let routes = &rc.virtual_hosts[0].routes;
        for (service, generic) in [("pay", true), ("ledger", false)] {
            let route = routes.iter().find(|r| &*r.name == service).expect("route");
            // Each route disables the other credential's filter.
            let [(other, PerFilterConfig::Disabled)] = &*route.per_filter else {
                panic!("{service}: {:?}", route.per_filter);
            };
            let f = filters
                .iter()
                .find(|f| f.name != *other)
                .expect("its filter");
            let FilterKind::CredentialInjector(c) = &f.config else {
                panic!("a credential injector");
            };
            match &c.credential {
                Credential::Generic(g) => {
                    assert!(generic);
                    assert!(!c.overwrite);
                    assert_eq!(&*g.header, "x-api-key");
                    assert_eq!(&*g.secret.name, "pay-key");
                    assert!(g.secret.value.is_some(), "the secret is resolved");
                }
                Credential::Oauth2(o) => {
                    assert!(!generic);
                    assert!(c.overwrite);
                    assert_eq!(
                        (&*o.cluster, &*o.authority, &*o.path),
                        ("idp", "idp.example", "/oauth/token")
                    );
                    assert_eq!(o.scopes.len(), 2);
                    assert_eq!(&*o.client_secret.name, "idp-client");
                }
            }
        }
        let other = routes.iter().find(|r| &*r.name == "other").expect("other");
        assert_eq!(other.per_filter.len(), 2, "both disabled");
        assert!(
            other
                .per_filter
                .iter()
                .all(|(_, c)| *c == PerFilterConfig::Disabled)
        );
    }

    /// `credentials` is checked where it is written.
    #[test]
    fn credentials_policy_is_checked() {
        let text = "\
secrets:
  - {name: ca, ca: ca.pem}
services:
  - name: pay
    endpoints: [{address: '127.0.0.1:8080'}]
    policies:
      credentials: {secret: ca, header: 'bad header'}
  - name: ledger
    endpoints: [{address: '127.0.0.1:8081'}]
    policies:
      credentials: {oauth2: {token_url: 'idp/token', cluster: idp, client_id: '', client_secret: nope, scopes: ['a b']}}
";
        let errors = match crate::load(text, "cred.yaml") {
            Ok(_) => panic!("accepted"),
            Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        assert_eq!(
            errors,
            vec![
                "cred.yaml:7:29: services[0].policies.credentials.secret: secret `ca` is not a credential: this takes a secret with `value`",
                "cred.yaml:7:41: services[0].policies.credentials.header: `bad header` is not a valid header name",
                "cred.yaml:11:98: services[1].policies.credentials.oauth2.client_secret: unknown secret `nope`",
                "cred.yaml:11:41: services[1].policies.credentials.oauth2.token_url: `idp/token` is not an http:// or https:// URL with a host",
                "cred.yaml:11:79: services[1].policies.credentials.oauth2.client_id: must not be empty",
                "cred.yaml:11:63: services[1].policies.credentials.oauth2.cluster: unknown cluster `idp`",
                "cred.yaml:11:113: services[1].policies.credentials.oauth2.scopes[0]: `a b` is not an OAuth2 scope (RFC 6749 §3.3)",
            ]
        );
    }

    /// A listener's connection limit compiles to Envoy's connection_limit network filter
    /// ahead of the connection manager, and its request-headers timeout to the HCM field;
    /// legate's snapshot reads both back.
    #[test]
    fn listener_limits_compile_to_envoy_fields() {
        let text = "\
listeners:
  - {name: a, address: '127.0.0.1:0', route_config: rc, max_connections: 3, request_headers_timeout: 2s}
  - {name: b, address: '127.0.0.1:0', route_config: rc}
route_configs:
  - {name: rc, virtual_hosts: []}
";
        let mesh = match crate::load(text, "limits.yaml") {
            Ok(m) => m,
            Err(errors) => panic!("{errors:?}"),
        };
        let r = compile(&mesh);
        let filters = &r.listeners[0].filter_chains[0].filters;
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0].name, names::CONNECTION_LIMIT);
        let Some(filter::ConfigType::TypedConfig(a)) = &filters[0].config_type else {
            panic!("typed config expected")
        };
        let limit: ConnectionLimit = decode(a, type_url::CONNECTION_LIMIT);
        assert_eq!(limit.max_connections, Some(UInt64Value { value: 3 }));
        assert_eq!(limit.delay, None);
        assert_eq!(hcm(&r.listeners[0]).request_headers_timeout, pb(2, 0));
        assert_eq!(r.listeners[1].filter_chains[0].filters.len(), 1);

        let snapshot = match legate_snapshot::build("v1", &r) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let by_name = |n: &str| {
            snapshot
                .listeners
                .iter()
                .find(|l| &*l.name == n)
                .expect("listener")
                .clone()
        };
        assert_eq!(by_name("a").max_connections, Some(3));
        assert_eq!(
            by_name("a").request_headers_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(by_name("b").max_connections, None);

        let zero = text.replace("max_connections: 3", "max_connections: 0");
        let errors = crate::load(&zero, "limits.yaml").expect_err("0 refused");
        assert!(
            format!("{errors:?}")
                .contains("listeners[0].max_connections\", message: \"must be at least 1"),
            "{errors:?}"
        );
    }

    /// The demos' meshes pass both validators: `legate-cp` serves `cp-demo.yaml`, and
    /// `legate --config demo.yaml` runs the mesh in that bootstrap file.
    #[test]
    fn demo_meshes_build_a_snapshot() {
        #[derive(serde::Deserialize)]
        struct Bootstrap {
            mesh: Mesh,
        }
        let cp_demo = include_str!("../../../examples/cp-demo.yaml");
        let demo = include_str!("../../../examples/demo.yaml");
        let meshes = [
            (crate::load(cp_demo, "cp-demo.yaml"), "cp-demo"),
            (
                crate::parse_yaml::<Bootstrap>(demo, "demo.yaml")
                    .map_err(|e| vec![e])
                    .and_then(|b| {
                        crate::validate_at(&b.mesh, demo, "demo.yaml", "mesh")?;
                        Ok(b.mesh)
                    }),
                "demo",
            ),
        ];
        for (mesh, name) in meshes {
            let mesh = match mesh {
                Ok(m) => m,
                Err(errors) => panic!("{name}: {errors:?}"),
            };
            if let Err(e) = legate_snapshot::build("v1", &compile(&mesh)) {
                panic!("{name}: {e}");
            }
        }
    }

    #[test]
    fn mesh_round_trips_through_yaml() {
        let mesh = crate::load(REFERENCE, "ref.yaml").expect("loads");
        let text = serde_yaml_ng::to_string(&mesh).expect("serializes");
        let again = crate::load(&text, "again.yaml").expect("reloads");
        assert_eq!(mesh, again);
        // Defaults are not written back.
        assert!(!text.contains("websocket: true"), "{text}");
    }
}
