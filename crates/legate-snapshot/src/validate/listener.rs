//! `Listener` → [`Listener`]: one TCP socket, one filter chain, one HTTP connection manager.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{
    Filter as XdsFilter, FilterChain as XdsFilterChain, FilterChainMatch,
    Listener as XdsListener, ListenerFilter as XdsListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector as XdsTlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext as XdsDownstreamTlsContext;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as XdsRouter;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit as XdsConnectionLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier, StripPortMode,
    UpgradeConfig as XdsUpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as XdsHttpConnectionManager, Rds as XdsRds,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt64Value};
use prost::Message;

use super::common::{
    AddressRule, Ctx, address, at, core_http_options, enum_value, http1_options, http2_options,
    join, nonzero_duration, refuse, refuse_true, timeout,
};
use super::route::{ClusterRef, route_config_in};
use super::tls::{self as tls_ctx, Transport, valid_server_name};
use crate::{
    Codec, DownstreamTls, EndpointAddress, Listener, ListenerTls, ResourceError, ResourceKind,
    RouteSource, TlsFilterChain, type_url,
};

/// Envoy's default `stream_idle_timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// legate's default HCM `request_headers_timeout`. Envoy leaves it off; a proxy that anyone on
/// the host can reach should not let a client that sends half a request line hold a
/// connection until the idle timeout, so legate does not.
const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
const TLS_INSPECTOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const TLS_INSPECTOR_NAME: &str = "envoy.filters.listener.tls_inspector";

/// A listener and what the consistency pass needs to check about it.
pub(super) struct ConvertedListener {
    pub(super) listener: Listener,
    /// The RDS route configuration it names, with the field path of the name.
    pub(super) rds: Option<(String, Arc<str>)>,
    /// Clusters named by an inline route configuration (field paths from the listener root),
    /// unless that configuration sets `validate_clusters: false`.
    pub(super) cluster_refs: Vec<ClusterRef>,
}

pub(super) fn listener(x: &XdsListener) -> Result<ConvertedListener, Vec<ResourceError>> {
    let XdsListener {
        name,
        address: listen_address,
        additional_addresses,
        // Ignored: statistics only.
        stat_prefix: _,
        stats_matcher: _,
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        // Ignored: no effect on traffic.
        metadata: _,
        deprecated_v1,
        // Ignored: MODIFY_ONLY only matters for hot restarts, which legate does not do.
        drain_type: _,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        // Ignored: only feeds statistics and tracing.
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        // Ignored: SO_REUSEPORT is a kernel load-spreading detail, not traffic behaviour.
        reuse_port: _,
        enable_reuse_port: _,
        // Ignored: access logging is configured in legate's bootstrap, not per listener.
        access_log: _,
        tcp_backlog_size,
        max_connections_to_accept_per_socket_event,
        bind_to_port,
        enable_mptcp,
        ignore_global_conn_limit,
        // Ignored: legate has no overload manager, so bypassing it changes nothing.
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
    } = x;
    let mut cx = Ctx::new(ResourceKind::Listener, name);
    if name.is_empty() {
        cx.err("name", "must not be empty");
    }
    refuse!(cx, "";
        additional_addresses, fcds_config, filter_chain_matcher,
        per_connection_buffer_limit_bytes, per_connection_buffer_high_watermark_timeout,
        deprecated_v1, socket_options, tcp_fast_open_queue_length,
        udp_listener_config, api_listener, connection_balance_config, tcp_backlog_size,
        max_connections_to_accept_per_socket_event, enable_mptcp, ignore_global_conn_limit,
        tcp_keepalive, listener_specifier,
    );
    if *continue_on_listener_filters_timeout {
        cx.err(
            "continue_on_listener_filters_timeout",
            "not supported by legate (a TLS handshake needs the whole ClientHello)",
        );
    }
    let tls_inspector = listener_filter_chain(&mut cx, listener_filters);
    refuse_true(&mut cx, "", "use_original_dst", use_original_dst);
    refuse_true(&mut cx, "", "transparent", transparent);
    refuse_true(&mut cx, "", "freebind", freebind);
    if matches!(bind_to_port, Some(BoolValue { value: false })) {
        cx.unsupported("", "bind_to_port");
    }

    let socket = match address(&mut cx, "address", listen_address, AddressRule::Listener) {
        Some(EndpointAddress::Socket(a)) => a,
        // Hostnames are refused for listeners; the placeholder never leaves this function.
        _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    };

    let client_hello_timeout = timeout(
        &mut cx,
        "listener_filters_timeout",
        listener_filters_timeout,
        Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
    );
    let Some((hcm, max_connections, tls)) = filter_chains_of(
        &mut cx,
        filter_chains,
        default_filter_chain.as_ref(),
        tls_inspector,
        client_hello_timeout,
    ) else {
        // The filter chains are only given up on after recording why.
        return Err(cx.into_errors());
    };
    let listener = Listener {
        name: Arc::from(name.as_str()),
        address: socket,
        stat_prefix: hcm.stat_prefix,
        codec: hcm.codec,
        routes: hcm.routes,
        strip_any_host_port: hcm.strip_any_host_port,
        upgrades: hcm.upgrades,
        stream_idle_timeout: hcm.stream_idle_timeout,
        request_timeout: hcm.request_timeout,
        idle_timeout: hcm.idle_timeout,
        request_headers_timeout: hcm.request_headers_timeout,
        max_connections,
        generate_request_id: hcm.generate_request_id,
        append_x_forwarded_for: hcm.append_x_forwarded_for,
        tls: tls.map(Arc::new),
        access_logs: hcm.access_logs,
        tracing: hcm.tracing,
        http_filters: hcm.http_filters,
    };
    cx.finish(ConvertedListener {
        listener,
        rds: hcm.rds,
        cluster_refs: hcm.cluster_refs,
    })
}

/// `listener_filters`: only the TLS inspector, which reads the ClientHello's server name for
/// filter chain selection (legate reads it for TLS chains in any case). Returns whether it is
/// there.
fn listener_filter_chain(cx: &mut Ctx, filters: &[XdsListenerFilter]) -> bool {
    let mut found = false;
    for (i, f) in filters.iter().enumerate() {
        let field = at("", "listener_filters", i);
        let XdsListenerFilter {
            name,
            filter_disabled,
            config_type,
        } = f;
        refuse!(cx, &field; filter_disabled);
        let inspector = match config_type {
            Some(listener_filter::ConfigType::TypedConfig(Any { type_url, value }))
                if type_url == TLS_INSPECTOR_TYPE_URL =>
            {
                match XdsTlsInspector::decode(value.as_slice()) {
                    Ok(XdsTlsInspector {
                        enable_ja3_fingerprinting,
                        enable_ja4_fingerprinting,
                        initial_read_buffer_size,
                        close_connection_on_client_hello_parsing_errors: _,
                        max_client_hello_size,
                    }) => {
                        let f = join(&field, "typed_config");
                        refuse_true(
                            cx,
                            &f,
                            "enable_ja3_fingerprinting",
                            &enable_ja3_fingerprinting,
                        );
                        refuse_true(
                            cx,
                            &f,
                            "enable_ja4_fingerprinting",
                            &enable_ja4_fingerprinting,
                        );
                        refuse!(cx, &f; initial_read_buffer_size, max_client_hello_size);
                        true
                    }
                    Err(e) => {
                        cx.err(
                            join(&field, "typed_config"),
                            format!("cannot decode TlsInspector: {e}"),
                        );
                        true
                    }
                }
            }
            None if name == TLS_INSPECTOR_NAME || name == "tls_inspector" => true,
            Some(listener_filter::ConfigType::TypedConfig(Any { type_url, .. })) => {
                cx.err(
                    &field,
                    format!(
                        "listener filter '{type_url}' is not supported by legate (only the tls inspector)"
                    ),
                );
                false
            }
            Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                cx.unsupported(&field, "config_discovery");
                false
            }
            None => {
                cx.err(
                    &field,
                    format!("listener filter '{name}' is not supported by legate (only the tls inspector)"),
                );
                false
            }
        };
        if inspector && found {
            cx.err(&field, "the tls inspector is listed twice");
        }
        found |= inspector;
    }
    found
}

/// One filter chain: its match, its transport socket and its network filters.
struct Chain<'a> {
    field: String,
    name: Arc<str>,
    server_names: Vec<Arc<str>>,
    transport: Transport<DownstreamTls>,
    handshake_timeout: Option<Duration>,
    filters: &'a [XdsFilter],
}

/// `filter_chains` (and `default_filter_chain`): one HTTP connection manager for the whole
/// listener, optionally behind a connection limit, and TLS termination when the chains carry
/// `DownstreamTlsContext`s. Several chains are accepted only as TLS chains told apart by
/// `server_names` (the certificate, client certificate rules and ALPN may differ; the network
/// filters may not).
fn filter_chains_of(
    cx: &mut Ctx,
    chains: &[XdsFilterChain],
    default_chain: Option<&XdsFilterChain>,
    tls_inspector: bool,
    client_hello_timeout: Option<Duration>,
) -> Option<(Hcm, Option<u64>, Option<ListenerTls>)> {
    if chains.is_empty() {
        cx.err("filter_chains", "at least one filter chain is required");
        return None;
    }
    let errors = cx.error_count();
    let mut all: Vec<Chain<'_>> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| filter_chain(cx, &at("", "filter_chains", i), c, false))
        .collect();
    if let Some(d) = default_chain {
        all.push(filter_chain(cx, "default_filter_chain", d, true));
    }

    // One connection manager: the first chain's, which every other chain must repeat.
    let (limit, hcm) = match all[0].filters {
        [f] => (
            None,
            network_filter(cx, &join(&all[0].field, "filters[0]"), f),
        ),
        [l, f] => (
            connection_limit_filter(cx, &join(&all[0].field, "filters[0]"), l),
            network_filter(cx, &join(&all[0].field, "filters[1]"), f),
        ),
        [] => {
            cx.err(
                join(&all[0].field, "filters"),
                "exactly one filter (the http connection manager) is required",
            );
            (None, None)
        }
        _ => {
            cx.err(
                join(&all[0].field, "filters"),
                "only the http connection manager, optionally after a connection_limit filter, is supported by legate",
            );
            (None, None)
        }
    };
    let first = decoded_filters(all[0].filters);
    for c in &all[1..] {
        if decoded_filters(c.filters) != first {
            cx.err(
                join(&c.field, "filters"),
                format!(
                    "must be the same as {}.filters: legate runs one http connection manager per listener (chains may differ in server_names and TLS only)",
                    all[0].field
                ),
            );
        }
    }

    let tls_count = all
        .iter()
        .filter(|c| matches!(c.transport, Transport::Tls(_)))
        .count();
    let plain_count = all
        .iter()
        .filter(|c| matches!(c.transport, Transport::Plaintext))
        .count();
    let tls = if tls_count == 0 {
        if all.len() > 1 {
            cx.err(
                "filter_chains",
                "more than one filter chain is supported by legate only for TLS (chains selected by server_names)",
            );
        }
        for c in &all {
            if !c.server_names.is_empty() {
                cx.err(
                    join(&c.field, "filter_chain_match.server_names"),
                    "needs a TLS transport_socket (a server name is only known from a TLS ClientHello)",
                );
            }
        }
        None
    } else {
        if plain_count > 0 {
            cx.err(
                "filter_chains",
                "mixing plaintext and TLS filter chains on one listener is not supported by legate",
            );
        }
        let uses_names = all.iter().any(|c| !c.server_names.is_empty());
        if uses_names && !tls_inspector {
            cx.err(
                "listener_filters",
                format!(
                    "server_names need the {TLS_INSPECTOR_NAME} listener filter (as in Envoy, without it the server name is never read)"
                ),
            );
        }
        if let Some(h) = &hcm {
            for c in &all {
                if let Transport::Tls(t) = &c.transport {
                    alpn_matches_codec(cx, &c.field, t, h.codec);
                }
            }
        }
        let mut seen: Vec<(Arc<str>, &str)> = Vec::new();
        let mut catch_all: Option<&str> = None;
        for c in all.iter().filter(|c| !c.field.starts_with("default")) {
            if c.server_names.is_empty() {
                if let Some(other) = catch_all {
                    cx.err(
                        join(&c.field, "filter_chain_match"),
                        format!(
                            "{other} already matches every server name (duplicate matching rules)"
                        ),
                    );
                }
                catch_all = Some(&c.field);
            }
            for n in &c.server_names {
                if let Some((_, other)) = seen.iter().find(|(s, _)| s == n) {
                    cx.err(
                        join(&c.field, "filter_chain_match.server_names"),
                        format!("'{n}' is already matched by {other} (duplicate matching rules)"),
                    );
                } else {
                    seen.push((n.clone(), &c.field));
                }
            }
        }
        let default_index = default_chain.map(|_| all.len() - 1);
        let chains: Vec<TlsFilterChain> = all
            .iter()
            .filter_map(|c| match &c.transport {
                Transport::Tls(t) => Some(TlsFilterChain {
                    name: c.name.clone(),
                    server_names: c.server_names.clone(),
                    handshake_timeout: c.handshake_timeout,
                    tls: t.clone(),
                }),
                _ => None,
            })
            .collect();
        Some(ListenerTls {
            chains,
            default_chain: default_index,
            client_hello_timeout,
        })
    };
    if cx.error_count() != errors {
        return None;
    }
    Some((hcm?, limit, tls))
}

/// A network filter decoded, to compare chains by meaning rather than encoding.
#[derive(PartialEq)]
enum DecodedFilter {
    Hcm(Box<XdsHttpConnectionManager>),
    Limit(XdsConnectionLimit),
    Other,
}

/// The chains' network filters decoded, to compare them by meaning rather than encoding.
fn decoded_filters(filters: &[XdsFilter]) -> Vec<DecodedFilter> {
    filters
        .iter()
        .map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(Any { type_url: t, value }))
                if t == type_url::HTTP_CONNECTION_MANAGER =>
            {
                XdsHttpConnectionManager::decode(value.as_slice())
                    .map_or(DecodedFilter::Other, |h| DecodedFilter::Hcm(Box::new(h)))
            }
            Some(filter::ConfigType::TypedConfig(Any { type_url: t, value }))
                if t == type_url::CONNECTION_LIMIT =>
            {
                XdsConnectionLimit::decode(value.as_slice())
                    .map_or(DecodedFilter::Other, DecodedFilter::Limit)
            }
            _ => DecodedFilter::Other,
        })
        .collect()
}

/// `envoy.filters.network.connection_limit` ahead of the connection manager: the most
/// connections the listener holds at once. Over it a connection is closed at once; a `delay`
/// before closing, and runtime flags, are refused.
fn connection_limit_filter(cx: &mut Ctx, field: &str, f: &XdsFilter) -> Option<u64> {
    // The name is informational, as for the connection manager.
    let XdsFilter {
        name: _,
        config_type,
    } = f;
    let field = join(field, "typed_config");
    let value = match config_type {
        Some(filter::ConfigType::TypedConfig(Any { type_url, value }))
            if type_url == type_url::CONNECTION_LIMIT =>
        {
            value
        }
        Some(filter::ConfigType::TypedConfig(Any { type_url, .. })) => {
            cx.err(
                &field,
                format!(
                    "network filter type '{type_url}' is not supported by legate before the http connection manager (only connection_limit)"
                ),
            );
            return None;
        }
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            cx.unsupported(&field, "config_discovery");
            return None;
        }
        None => {
            cx.err(&field, "required");
            return None;
        }
    };
    let XdsConnectionLimit {
        // Ignored: statistics only (legate counts refusals per listener).
        stat_prefix,
        max_connections,
        delay,
        runtime_enabled,
    } = match XdsConnectionLimit::decode(value.as_slice()) {
        Ok(l) => l,
        Err(e) => {
            cx.err(field, format!("cannot decode ConnectionLimit: {e}"));
            return None;
        }
    };
    if stat_prefix.is_empty() {
        cx.err(join(&field, "stat_prefix"), "must not be empty");
    }
    refuse!(cx, &field; runtime_enabled);
    if nonzero_duration(&delay) {
        cx.err(
            join(&field, "delay"),
            "not supported by legate (a connection over the limit is closed at once)",
        );
    }
    match max_connections {
        Some(UInt64Value { value }) if value >= 1 => Some(value),
        Some(_) => {
            cx.err(join(&field, "max_connections"), "must be at least 1");
            None
        }
        None => {
            cx.err(join(&field, "max_connections"), "required");
            None
        }
    }
}

/// ALPN offers only what the connection manager's codec serves.
fn alpn_matches_codec(cx: &mut Ctx, field: &str, tls: &DownstreamTls, codec: Codec) {
    let refused = match codec {
        Codec::Http1 => "h2",
        Codec::Http2 => "http/1.1",
        Codec::Auto => return,
    };
    if tls.alpn_protocols.iter().any(|p| **p == *refused) {
        cx.err(
            join(
                field,
                "transport_socket.typed_config.common_tls_context.alpn_protocols",
            ),
            format!(
                "offers {refused}, which the http connection manager's codec_type does not serve"
            ),
        );
    }
}

fn filter_chain<'a>(
    cx: &mut Ctx,
    field: &str,
    chain: &'a XdsFilterChain,
    default: bool,
) -> Chain<'a> {
    let XdsFilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        // Ignored: no effect on traffic.
        metadata: _,
        name,
        transport_socket,
        transport_socket_connect_timeout,
    } = chain;
    refuse_true(cx, field, "use_proxy_proto", use_proxy_proto);
    let server_names = match filter_chain_match {
        Some(m) if default && *m != FilterChainMatch::default() => {
            cx.err(
                join(field, "filter_chain_match"),
                "must be empty on the default filter chain",
            );
            Vec::new()
        }
        Some(m) => chain_match(cx, &join(field, "filter_chain_match"), m),
        None => Vec::new(),
    };
    let transport = match transport_socket {
        None => Transport::Plaintext,
        Some(ts) => tls_ctx::transport_socket(
            cx,
            &join(field, "transport_socket"),
            ts,
            tls_ctx::DOWNSTREAM_TLS_CONTEXT,
            |cx, f, x: &XdsDownstreamTlsContext| tls_ctx::downstream_tls_context(cx, f, x),
        ),
    };
    let handshake_timeout = match transport {
        Transport::Tls(_) => timeout(
            cx,
            &join(field, "transport_socket_connect_timeout"),
            transport_socket_connect_timeout,
            None,
        ),
        _ => {
            if nonzero_duration(transport_socket_connect_timeout) {
                cx.err(
                    join(field, "transport_socket_connect_timeout"),
                    "only applies to TLS filter chains",
                );
            }
            None
        }
    };
    Chain {
        field: field.to_owned(),
        name: Arc::from(if name.is_empty() {
            field
        } else {
            name.as_str()
        }),
        server_names,
        transport,
        handshake_timeout,
        filters,
    }
}

/// `filter_chain_match`: only `server_names` (and `transport_protocol: tls`, which a TLS
/// chain implies) are honoured.
fn chain_match(cx: &mut Ctx, field: &str, m: &FilterChainMatch) -> Vec<Arc<str>> {
    let FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    // `source_type` is an enum whose default (ANY) is what legate does.
    refuse!(cx, field;
        destination_port, prefix_ranges, address_suffix, suffix_len, direct_source_prefix_ranges,
        source_type, source_prefix_ranges, source_ports, application_protocols,
    );
    if !transport_protocol.is_empty() && transport_protocol != "tls" {
        cx.err(
            join(field, "transport_protocol"),
            format!("'{transport_protocol}' is not supported by legate (only tls, on TLS chains)"),
        );
    }
    let mut out: Vec<Arc<str>> = Vec::new();
    for (i, n) in server_names.iter().enumerate() {
        let f = at(field, "server_names", i);
        let lower = n.to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        if !valid_server_name(name) {
            cx.err(
                f,
                format!("'{n}' is not a DNS name or a '*.' wildcard followed by one"),
            );
        } else if out.iter().any(|o| **o == *lower) {
            cx.err(f, format!("duplicate server name '{n}'"));
        } else {
            out.push(Arc::from(lower));
        }
    }
    out
}

fn network_filter(cx: &mut Ctx, field: &str, f: &XdsFilter) -> Option<Hcm> {
    // The name is informational: Envoy picks the extension by the type of `typed_config`.
    let XdsFilter {
        name: _,
        config_type,
    } = f;
    match config_type {
        Some(filter::ConfigType::TypedConfig(Any { type_url, value })) => {
            let field = join(field, "typed_config");
            if type_url != type_url::HTTP_CONNECTION_MANAGER {
                cx.err(
                    &field,
                    format!(
                        "network filter type '{type_url}' is not supported by legate (only the http connection manager)"
                    ),
                );
                return None;
            }
            match XdsHttpConnectionManager::decode(value.as_slice()) {
                Ok(hcm) => Some(http_connection_manager(cx, &field, &hcm)),
                Err(e) => {
                    cx.err(field, format!("cannot decode HttpConnectionManager: {e}"));
                    None
                }
            }
        }
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            cx.unsupported(field, "config_discovery");
            None
        }
        None => {
            cx.err(join(field, "typed_config"), "required");
            None
        }
    }
}

/// What the listener takes from its HTTP connection manager.
struct Hcm {
    http_filters: Arc<[crate::filter::HttpFilter]>,
    stat_prefix: Arc<str>,
    codec: Codec,
    routes: RouteSource,
    strip_any_host_port: bool,
    upgrades: Vec<Arc<str>>,
    stream_idle_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    request_headers_timeout: Option<Duration>,
    generate_request_id: bool,
    append_x_forwarded_for: bool,
    rds: Option<(String, Arc<str>)>,
    cluster_refs: Vec<ClusterRef>,
    access_logs: Vec<Arc<crate::AccessLog>>,
    tracing: Option<Arc<crate::Tracing>>,
}

fn http_connection_manager(cx: &mut Ctx, field: &str, h: &XdsHttpConnectionManager) -> Hcm {
    let XdsHttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout,
        drain_timeout_jitter,
        delayed_close_timeout,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        // Accepted: legate does not derive a trusted client address from x-forwarded-for.
        xff_num_trusted_hops: _,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = h;
    // legate never replaces a request id it receives: `preserve_external_request_id: true`
    // is what it does; with the default (false) Envoy would replace the id of a client it deems
    // external, and legate, whose clients are the applications beside it, keeps it as well.
    let _ = preserve_external_request_id;
    // `server_header_transformation` (OVERWRITE) and `forward_client_cert_details` (SANITIZE)
    // are enums whose default is what legate does; other values are refused.
    refuse!(cx, field;
        http1_safe_max_connection_duration, http3_protocol_options, server_name,
        server_header_transformation, scheme_header_transformation, max_request_headers_kb,
        stream_flush_timeout, drain_timeout, drain_timeout_jitter, delayed_close_timeout,
        original_ip_detection_extensions, early_header_mutation_extensions,
        internal_address_config, via, always_set_request_id_in_response, forward_client_cert_details,
        set_current_client_cert_details, forward_client_cert_matcher, proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6, merge_slashes,
        request_id_extension, local_reply_config, strip_matching_host_port,
        stream_error_on_invalid_http_message, path_normalization_options,
        strip_trailing_host_dot, proxy_status_config, typed_header_validation_config,
        append_x_forwarded_port, append_local_overload, add_proxy_protocol_connection_state,
        forward_proto_config, access_log_flush_interval, flush_access_log_on_new_request,
        access_log_options,
    );
    refuse_true(cx, field, "add_user_agent", add_user_agent);
    refuse_true(cx, field, "normalize_path", normalize_path);
    let escaped = join(field, "path_with_escaped_slashes_action");
    if let Some(action) =
        enum_value::<PathWithEscapedSlashesAction>(cx, &escaped, *path_with_escaped_slashes_action)
        && !matches!(
            action,
            PathWithEscapedSlashesAction::ImplementationSpecificDefault
                | PathWithEscapedSlashesAction::KeepUnchanged
        )
    {
        cx.err(escaped, "not supported by legate (only KEEP_UNCHANGED)");
    }
    if let Some(o) = http_protocol_options {
        http1_options(cx, &join(field, "http_protocol_options"), o);
    }
    if let Some(o) = http2_protocol_options {
        http2_options(cx, &join(field, "http2_protocol_options"), o);
    }

    let codec = match enum_value::<CodecType>(cx, &join(field, "codec_type"), *codec_type) {
        Some(CodecType::Auto) | None => Codec::Auto,
        Some(CodecType::Http1) => Codec::Http1,
        Some(CodecType::Http2) => Codec::Http2,
        Some(CodecType::Http3) => {
            cx.err(join(field, "codec_type"), "not supported by legate: HTTP3");
            Codec::Auto
        }
    };
    if stat_prefix.is_empty() {
        cx.err(join(field, "stat_prefix"), "must not be empty");
    }
    let http_filters = super::filter::http_filters(cx, field, http_filters);

    let (routes, rds, mut cluster_refs) = match route_specifier {
        Some(RouteSpecifier::Rds(XdsRds {
            config_source,
            route_config_name,
        })) => {
            let rds_field = join(field, "rds");
            match config_source {
                Some(cs) => {
                    super::common::config_source(cx, &join(&rds_field, "config_source"), cs)
                }
                None => cx.err(join(&rds_field, "config_source"), "required"),
            }
            let name_field = join(&rds_field, "route_config_name");
            if route_config_name.is_empty() {
                cx.err(&name_field, "must not be empty");
            }
            let name: Arc<str> = Arc::from(route_config_name.as_str());
            (
                RouteSource::Rds(name.clone()),
                Some((name_field, name)),
                Vec::new(),
            )
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            let converted = route_config_in(cx, &join(field, "route_config"), rc);
            let refs = if converted.validate_clusters {
                converted.cluster_refs
            } else {
                Vec::new()
            };
            (RouteSource::Inline(Arc::new(converted.config)), None, refs)
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            cx.unsupported(field, "scoped_routes");
            (RouteSource::Rds(Arc::from("")), None, Vec::new())
        }
        None => {
            cx.err(field, "one of rds or route_config is required");
            (RouteSource::Rds(Arc::from("")), None, Vec::new())
        }
    };

    let common = core_http_options(
        cx,
        &join(field, "common_http_protocol_options"),
        common_http_protocol_options.as_ref(),
        false,
    );
    Hcm {
        http_filters: Arc::from(http_filters),
        stat_prefix: Arc::from(stat_prefix.as_str()),
        codec,
        routes,
        strip_any_host_port: matches!(strip_port_mode, Some(StripPortMode::StripAnyHostPort(true))),
        upgrades: listener_upgrades(cx, field, upgrade_configs),
        stream_idle_timeout: timeout(
            cx,
            &join(field, "stream_idle_timeout"),
            stream_idle_timeout,
            Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        ),
        request_timeout: {
            let t = timeout(cx, &join(field, "request_timeout"), request_timeout, None);
            if t.is_some() {
                // Not enforced yet: refused rather than silently ignored.
                cx.err(
                    join(field, "request_timeout"),
                    "not supported by legate (use the route timeout or stream_idle_timeout)",
                );
            }
            None
        },
        idle_timeout: common.idle_timeout,
        request_headers_timeout: timeout(
            cx,
            &join(field, "request_headers_timeout"),
            request_headers_timeout,
            Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
        ),
        generate_request_id: generate_request_id.is_none_or(|BoolValue { value }| value),
        // Envoy appends the peer to x-forwarded-for only with `use_remote_address` and
        // without `skip_xff_append`.
        append_x_forwarded_for: matches!(use_remote_address, Some(BoolValue { value: true }))
            && !*skip_xff_append,
        rds,
        tracing: tracing
            .as_ref()
            .and_then(|t| super::trace::tracing(cx, &join(field, "tracing"), t, &mut cluster_refs)),
        cluster_refs,
        access_logs: super::access_log::access_logs(cx, field, access_log),
    }
}

pub(super) fn router_filter(cx: &mut Ctx, field: &str, r: &XdsRouter) {
    let XdsRouter {
        // Ignored: statistics, tracing and logging only.
        dynamic_stats: _,
        start_child_span: _,
        upstream_log: _,
        upstream_log_options: _,
        suppress_grpc_request_failure_code_stats: _,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        upstream_http_filters,
        reject_connect_request_early_data,
    } = r;
    refuse!(cx, field;
        suppress_envoy_headers, strict_check_headers, respect_expected_rq_timeout,
        upstream_http_filters, reject_connect_request_early_data,
    );
}

/// HCM `upgrade_configs`: the upgrade types legate lets through on this listener. Routes may
/// disable one; Envoy's "disabled here, enabled per route" form is refused.
fn listener_upgrades(cx: &mut Ctx, field: &str, configs: &[XdsUpgradeConfig]) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for (i, u) in configs.iter().enumerate() {
        let f = at(field, "upgrade_configs", i);
        let XdsUpgradeConfig {
            upgrade_type,
            filters,
            enabled,
        } = u;
        refuse!(cx, &f; filters);
        if matches!(enabled, Some(BoolValue { value: false })) {
            cx.err(
                join(&f, "enabled"),
                "false is not supported by legate (leave the upgrade out, or disable it per route)",
            );
        }
        let kind = upgrade_type.to_ascii_lowercase();
        if kind.is_empty() {
            cx.err(join(&f, "upgrade_type"), "must not be empty");
        } else if out.iter().any(|k| **k == *kind) {
            cx.err(
                join(&f, "upgrade_type"),
                format!("duplicate upgrade type '{upgrade_type}'"),
            );
        } else {
            out.push(Arc::from(kind));
        }
    }
    out
}
