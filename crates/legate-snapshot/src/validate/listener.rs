//! `Listener` → [`Listener`]: one TCP socket, one filter chain, one HTTP connection manager.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{
    Filter as XdsFilter, FilterChain as XdsFilterChain, FilterChainMatch,
    Listener as XdsListener, filter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as XdsRouter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier, StripPortMode,
    UpgradeConfig as XdsUpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as XdsHttpConnectionManager, HttpFilter as XdsHttpFilter,
    Rds as XdsRds, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::Message;

use super::common::{
    AddressRule, Ctx, address, at, core_http_options, enum_value, http1_options, http2_options,
    join, nonzero_duration, refuse, refuse_true, timeout,
};
use super::route::{ClusterRef, route_config_in};
use crate::{Codec, EndpointAddress, Listener, ResourceError, ResourceKind, RouteSource, type_url};

/// Envoy's default `stream_idle_timeout`.
const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
        // Ignored: without listener filters (refused) the timeout never runs.
        listener_filters_timeout: _,
        continue_on_listener_filters_timeout: _,
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
        additional_addresses, fcds_config, filter_chain_matcher, default_filter_chain,
        per_connection_buffer_limit_bytes, per_connection_buffer_high_watermark_timeout,
        deprecated_v1, listener_filters, socket_options, tcp_fast_open_queue_length,
        udp_listener_config, api_listener, connection_balance_config, tcp_backlog_size,
        max_connections_to_accept_per_socket_event, enable_mptcp, ignore_global_conn_limit,
        tcp_keepalive, listener_specifier,
    );
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

    let hcm = match filter_chains.as_slice() {
        [chain] => filter_chain(&mut cx, "filter_chains[0]", chain),
        [] => {
            cx.err("filter_chains", "exactly one filter chain is required");
            None
        }
        _ => {
            cx.err(
                "filter_chains",
                "more than one filter chain is not supported by legate",
            );
            None
        }
    };
    let Some(hcm) = hcm else {
        // The filter chain is only given up on after recording why.
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
        generate_request_id: hcm.generate_request_id,
        append_x_forwarded_for: hcm.append_x_forwarded_for,
    };
    cx.finish(ConvertedListener {
        listener,
        rds: hcm.rds,
        cluster_refs: hcm.cluster_refs,
    })
}

fn filter_chain(cx: &mut Ctx, field: &str, chain: &XdsFilterChain) -> Option<Hcm> {
    let XdsFilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        // Ignored: no effect on traffic.
        metadata: _,
        name: _,
        transport_socket,
        transport_socket_connect_timeout,
    } = chain;
    // An empty match matches every connection, which is what a single chain does anyway.
    if filter_chain_match
        .as_ref()
        .is_some_and(|m| *m != FilterChainMatch::default())
    {
        cx.unsupported(field, "filter_chain_match");
    }
    refuse!(cx, field; transport_socket, transport_socket_connect_timeout);
    refuse_true(cx, field, "use_proxy_proto", use_proxy_proto);
    match filters.as_slice() {
        [f] => network_filter(cx, &join(field, "filters[0]"), f),
        [] => {
            cx.err(
                join(field, "filters"),
                "exactly one filter (the http connection manager) is required",
            );
            None
        }
        _ => {
            cx.err(
                join(field, "filters"),
                "only one filter (the http connection manager) is supported by legate",
            );
            None
        }
    }
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
    stat_prefix: Arc<str>,
    codec: Codec,
    routes: RouteSource,
    strip_any_host_port: bool,
    upgrades: Vec<Arc<str>>,
    stream_idle_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    generate_request_id: bool,
    append_x_forwarded_for: bool,
    rds: Option<(String, Arc<str>)>,
    cluster_refs: Vec<ClusterRef>,
}

fn http_connection_manager(cx: &mut Ctx, field: &str, h: &XdsHttpConnectionManager) -> Hcm {
    let XdsHttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        // Ignored: tracing is configured in legate's bootstrap (telemetry), not per listener.
        tracing: _,
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
        // Ignored: access logging is configured in legate's bootstrap, not per listener.
        access_log: _,
        access_log_flush_interval: _,
        flush_access_log_on_new_request: _,
        access_log_options: _,
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
    // `server_header_transformation` (OVERWRITE) and `forward_client_cert_details` (SANITIZE)
    // are enums whose default is what legate does; other values are refused.
    refuse!(cx, field;
        http1_safe_max_connection_duration, http3_protocol_options, server_name,
        server_header_transformation, scheme_header_transformation, max_request_headers_kb,
        stream_flush_timeout, drain_timeout, drain_timeout_jitter, delayed_close_timeout,
        original_ip_detection_extensions, early_header_mutation_extensions,
        internal_address_config, via, preserve_external_request_id,
        always_set_request_id_in_response, forward_client_cert_details,
        set_current_client_cert_details, forward_client_cert_matcher, proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6, merge_slashes,
        request_id_extension, local_reply_config, strip_matching_host_port,
        stream_error_on_invalid_http_message, path_normalization_options,
        strip_trailing_host_dot, proxy_status_config, typed_header_validation_config,
        append_x_forwarded_port, append_local_overload, add_proxy_protocol_connection_state,
        forward_proto_config,
    );
    refuse_true(cx, field, "add_user_agent", add_user_agent);
    refuse_true(cx, field, "normalize_path", normalize_path);
    if nonzero_duration(request_headers_timeout) {
        cx.unsupported(field, "request_headers_timeout");
    }
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
    http_filter_chain(cx, field, http_filters);

    let (routes, rds, cluster_refs) = match route_specifier {
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
        generate_request_id: generate_request_id.is_none_or(|BoolValue { value }| value),
        // Envoy appends the peer to x-forwarded-for only with `use_remote_address` and
        // without `skip_xff_append`.
        append_x_forwarded_for: matches!(use_remote_address, Some(BoolValue { value: true }))
            && !*skip_xff_append,
        rds,
        cluster_refs,
    }
}

/// `http_filters`: the router last; other filters only when optional or disabled (then
/// they never run in legate, as Envoy skips an optional filter it does not know).
fn http_filter_chain(cx: &mut Ctx, field: &str, filters: &[XdsHttpFilter]) {
    let last = filters.len().saturating_sub(1);
    let mut router_seen = false;
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
                Ok(router) => router_filter(cx, &join(&ff, "typed_config"), &router),
                Err(e) => cx.err(
                    join(&ff, "typed_config"),
                    format!("cannot decode Router: {e}"),
                ),
            }
        } else if !*is_optional && !*disabled {
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
    if !router_seen {
        cx.err(
            join(field, "http_filters"),
            "must end with the router filter (envoy.filters.http.router)",
        );
    }
}

fn router_filter(cx: &mut Ctx, field: &str, r: &XdsRouter) {
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
