//! `Cluster` → [`Cluster`]: discovery, load balancing policy, upstream HTTP protocol and
//! timeouts, and the resilience settings (circuit breakers, outlier detection, health checks,
//! panic threshold, classic breaker). EDS endpoints are attached later, by the whole-set pass.

mod breakers;
mod health;
mod outlier;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType,
    DnsLookupFamily, EdsClusterConfig, LbConfig, LbPolicy as XdsLbPolicy, LeastRequestLbConfig,
    MaglevLbConfig, RingHashLbConfig, RoundRobinLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction as RingHashFunction;
use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy;
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster as XdsCluster, LoadBalancingPolicy as XdsLoadBalancingPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    RuntimeDouble, TypedExtensionConfig,
    UpstreamHttpProtocolOptions as XdsUpstreamHttpProtocolOptions,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext as XdsUpstreamTlsContext;
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest as XdsLeastRequest;
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::least_request::SelectionMethod;
use envoy_types::pb::envoy::extensions::load_balancing_policies::random::v3::Random as XdsRandom;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin as XdsRoundRobin;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as XdsHttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::{Any, Duration as XdsDuration, UInt32Value, UInt64Value};
use prost::Message;

use super::common::{
    AddressRule, CoreHttpOptions, Ctx, at, config_source, core_http_options, duration, enum_value,
    header_name, http1_options, http2_options, join, percent_permille, refuse, refuse_true,
};
use super::endpoint::load_assignment_in;
use super::tls::{self as tls_ctx, AutoSni, Transport};
use crate::{
    Cluster, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MIN_RING_SIZE, Discovery, DnsFamily, LbPolicy,
    LoadAssignment, MAX_MAGLEV_TABLE_SIZE, MAX_RING_SIZE, ResourceError, ResourceKind,
    UpstreamProtocol, type_url,
};

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `common_lb_config.healthy_panic_threshold`, 50%.
const DEFAULT_PANIC_THRESHOLD_PERMILLE: u32 = 500;
/// Envoy's default `dns_refresh_rate`.
const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);
/// The `typed_extension_protocol_options` key legate reads.
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const ROUND_ROBIN_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
const LEAST_REQUEST_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
const RANDOM_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random";

pub(super) fn cluster(x: &XdsCluster) -> Result<Cluster, Vec<ResourceError>> {
    let XdsCluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        // Ignored: statistics only.
        alt_stat_name: _,
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_jitter,
        dns_failure_refresh_rate,
        respect_dns_ttl,
        dns_lookup_family,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        // Ignored: legate does not gate readiness on individual clusters warming.
        wait_for_warm_on_init: _,
        outlier_detection,
        // Ignored: only ORIGINAL_DST clusters (refused) use it.
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        // Only `filter_metadata.legate` is read; other namespaces have no effect on traffic.
        metadata,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        // Accepted and ignored: a host leaves as soon as EDS drops it, health checked or not
        // (Envoy's behaviour with this set to true).
        ignore_health_on_host_removal: _,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        // Ignored: statistics only.
        track_timeout_budgets: _,
        upstream_config,
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = x;
    let mut cx = Ctx::new(ResourceKind::Cluster, name);
    if name.is_empty() {
        cx.err("name", "must not be empty");
    }
    // `protocol_selection` is an enum whose default (USE_CONFIGURED_PROTOCOL) is what legate
    // does; USE_DOWNSTREAM_PROTOCOL is refused.
    refuse!(cx, "";
        transport_socket_matches, transport_socket_matcher, per_connection_buffer_limit_bytes,
        per_connection_buffer_high_watermark_timeout, dns_jitter, dns_failure_refresh_rate,
        respect_dns_ttl, dns_resolvers, use_tcp_for_dns_lookups, dns_resolution_config,
        typed_dns_resolver_config, upstream_bind_config, lb_subset_config, protocol_selection,
        upstream_connection_options, close_connections_on_host_health_failure, filters,
        lrs_server, lrs_report_endpoint_metrics, upstream_config, preconnect_policy,
        connection_pool_per_downstream_connection, queuing_policies,
    );
    let deprecated_auto_sni = upstream_http_protocol_options
        .as_ref()
        .map(|o| upstream_http_options(&mut cx, "upstream_http_protocol_options", o));
    let healthy_panic_threshold_permille = match common_lb_config {
        Some(c) => common_lb(&mut cx, "common_lb_config", c),
        None => DEFAULT_PANIC_THRESHOLD_PERMILLE,
    };
    let circuit_breakers =
        breakers::circuit_breakers(&mut cx, "circuit_breakers", circuit_breakers.as_ref());
    let outlier_detection = outlier_detection
        .as_ref()
        .and_then(|o| outlier::outlier_detection(&mut cx, "outlier_detection", o));
    let health_checks: Vec<crate::HealthCheck> = health_checks
        .iter()
        .enumerate()
        .filter_map(|(i, h)| health::health_check(&mut cx, &at("", "health_checks", i), h))
        .collect();
    let classic_breaker = breakers::classic_breaker(&mut cx, "metadata", metadata.as_ref());

    let connect_timeout = match connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) => match duration(&mut cx, "connect_timeout", d) {
            Some(d) if d.is_zero() => {
                cx.err("connect_timeout", "must be greater than zero");
                DEFAULT_CONNECT_TIMEOUT
            }
            Some(d) => d,
            None => DEFAULT_CONNECT_TIMEOUT,
        },
    };

    let kind = match cluster_discovery_type {
        None => Some(DiscoveryType::Static),
        Some(ClusterDiscoveryType::Type(t)) => enum_value::<DiscoveryType>(&mut cx, "type", *t),
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            cx.unsupported("", "cluster_type");
            None
        }
    };
    let discovery = match kind {
        Some(DiscoveryType::Static) => Some(Discovery::Static),
        Some(DiscoveryType::StrictDns) => Some(Discovery::StrictDns {
            refresh_rate: dns_refresh(&mut cx, dns_refresh_rate),
            family: dns_family(&mut cx, *dns_lookup_family),
        }),
        Some(DiscoveryType::Eds) => Some(Discovery::Eds {
            service_name: eds(&mut cx, name, eds_cluster_config.as_ref()),
        }),
        Some(DiscoveryType::LogicalDns) => {
            cx.err(
                "type",
                "not supported by legate: LOGICAL_DNS (use STRICT_DNS)",
            );
            None
        }
        Some(DiscoveryType::OriginalDst) => {
            cx.err("type", "not supported by legate: ORIGINAL_DST");
            None
        }
        None => None,
    };
    if eds_cluster_config.is_some() && !matches!(discovery, Some(Discovery::Eds { .. }) | None) {
        cx.err("eds_cluster_config", "only allowed on EDS clusters");
    }

    let load_assignment = match (&discovery, load_assignment) {
        (Some(Discovery::Eds { .. }), Some(_)) => {
            cx.err(
                "load_assignment",
                "not supported by legate on EDS clusters (send a ClusterLoadAssignment)",
            );
            empty_assignment()
        }
        (Some(Discovery::Static), Some(la)) => {
            load_assignment_in(&mut cx, "load_assignment", la, AddressRule::EndpointIp)
        }
        (Some(Discovery::StrictDns { .. }), Some(la)) => load_assignment_in(
            &mut cx,
            "load_assignment",
            la,
            AddressRule::EndpointIpOrHostname,
        ),
        _ => empty_assignment(),
    };

    let lb_policy = lb(
        &mut cx,
        *lb_policy,
        lb_config.as_ref(),
        load_balancing_policy.as_ref(),
    );
    let http = upstream_http(
        &mut cx,
        typed_extension_protocol_options,
        DeprecatedHttp {
            http: http_protocol_options.as_ref(),
            http2: http2_protocol_options.as_ref(),
            common: common_http_protocol_options.as_ref(),
            max_requests_per_connection: max_requests_per_connection.as_ref(),
        },
    );

    let auto_sni = match (deprecated_auto_sni, http.auto_sni) {
        (Some(_), Some((field, a))) => {
            cx.err(
                "upstream_http_protocol_options",
                format!("cannot be combined with {field}"),
            );
            a
        }
        (Some(a), None) | (None, Some((_, a))) => a,
        (None, None) => AutoSni::default(),
    };
    let tls = match transport_socket {
        None => None,
        Some(ts) => match tls_ctx::transport_socket(
            &mut cx,
            "transport_socket",
            ts,
            tls_ctx::UPSTREAM_TLS_CONTEXT,
            |cx, f, x: &XdsUpstreamTlsContext| tls_ctx::upstream_tls_context(cx, f, x, &auto_sni),
        ) {
            Transport::Tls(t) => Some(Arc::new(t)),
            Transport::Plaintext | Transport::Invalid => None,
        },
    };
    // `auto_config` picks the protocol by ALPN, which only TLS has: in cleartext it is
    // HTTP/1.1, as in Envoy.
    let protocol = match http.protocol {
        UpstreamProtocol::Auto if tls.is_none() => UpstreamProtocol::Http1,
        p => p,
    };

    let cluster = Cluster {
        name: Arc::from(name.as_str()),
        discovery: discovery.unwrap_or(Discovery::Static),
        lb_policy,
        protocol,
        connect_timeout,
        idle_timeout: http.idle_timeout,
        max_requests_per_connection: http.max_requests_per_connection,
        circuit_breakers,
        outlier_detection,
        health_checks,
        healthy_panic_threshold_permille,
        classic_breaker,
        load_assignment,
        tls,
    };
    cx.finish(cluster)
}

fn empty_assignment() -> LoadAssignment {
    LoadAssignment {
        localities: Vec::new(),
    }
}

fn dns_refresh(cx: &mut Ctx, rate: &Option<XdsDuration>) -> Duration {
    let Some(rate) = rate else {
        return DEFAULT_DNS_REFRESH_RATE;
    };
    match duration(cx, "dns_refresh_rate", rate) {
        Some(d) if d < Duration::from_millis(1) => {
            cx.err("dns_refresh_rate", "must be at least 1ms");
            DEFAULT_DNS_REFRESH_RATE
        }
        Some(d) => d,
        None => DEFAULT_DNS_REFRESH_RATE,
    }
}

fn dns_family(cx: &mut Ctx, family: i32) -> DnsFamily {
    match enum_value::<DnsLookupFamily>(cx, "dns_lookup_family", family) {
        Some(DnsLookupFamily::Auto) | None => DnsFamily::Auto,
        Some(DnsLookupFamily::V4Only) => DnsFamily::V4Only,
        Some(DnsLookupFamily::V6Only) => DnsFamily::V6Only,
        Some(DnsLookupFamily::V4Preferred) => DnsFamily::V4Preferred,
        Some(DnsLookupFamily::All) => DnsFamily::All,
    }
}

/// The ClusterLoadAssignment name an EDS cluster reads: `service_name`, else its own name.
fn eds(cx: &mut Ctx, name: &str, config: Option<&EdsClusterConfig>) -> Arc<str> {
    let Some(EdsClusterConfig {
        eds_config,
        service_name,
    }) = config
    else {
        return Arc::from(name);
    };
    if let Some(source) = eds_config {
        config_source(cx, "eds_cluster_config.eds_config", source);
    }
    if service_name.is_empty() {
        Arc::from(name)
    } else {
        Arc::from(service_name.as_str())
    }
}

/// `UpstreamHttpProtocolOptions`: how the TLS server name follows each request. Only TLS
/// clusters use it (as in Envoy, it does nothing in cleartext).
fn upstream_http_options(cx: &mut Ctx, field: &str, o: &XdsUpstreamHttpProtocolOptions) -> AutoSni {
    let XdsUpstreamHttpProtocolOptions {
        auto_sni,
        auto_san_validation,
        override_auto_sni_header,
    } = o;
    let header = if override_auto_sni_header.is_empty() {
        None
    } else {
        header_name(
            cx,
            &join(field, "override_auto_sni_header"),
            override_auto_sni_header,
        )
    };
    AutoSni {
        auto_sni: *auto_sni,
        header,
        auto_san_validation: *auto_san_validation,
    }
}

/// `common_lb_config`; returns the panic threshold in permille.
fn common_lb(cx: &mut Ctx, field: &str, c: &CommonLbConfig) -> u32 {
    let CommonLbConfig {
        healthy_panic_threshold,
        // Ignored: legate applies host set changes at once; batching them is a timing detail.
        update_merge_window: _,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = c;
    // A new host is unhealthy until its first check passes and counts as such towards the
    // panic threshold; excluding it instead is not implemented.
    refuse!(cx, field;
        ignore_new_hosts_until_first_hc, close_connections_on_host_set_change,
        consistent_hashing_lb_config, override_host_status, locality_config_specifier,
    );
    healthy_panic_threshold
        .as_ref()
        .and_then(|p| percent_permille(cx, &join(field, "healthy_panic_threshold"), p))
        .unwrap_or(DEFAULT_PANIC_THRESHOLD_PERMILLE)
}

/// `lb_policy` + `lb_config`, or `load_balancing_policy`.
fn lb(
    cx: &mut Ctx,
    lb_policy: i32,
    lb_config: Option<&LbConfig>,
    typed: Option<&XdsLoadBalancingPolicy>,
) -> LbPolicy {
    let policy = enum_value::<XdsLbPolicy>(cx, "lb_policy", lb_policy);
    if let Some(typed) = typed {
        if !matches!(
            policy,
            Some(XdsLbPolicy::RoundRobin | XdsLbPolicy::LoadBalancingPolicyConfig) | None
        ) {
            cx.err("lb_policy", "cannot be combined with load_balancing_policy");
        }
        if lb_config.is_some() {
            cx.err("lb_config", "cannot be combined with load_balancing_policy");
        }
        return typed_lb(cx, "load_balancing_policy", typed);
    }
    let config_name = lb_config.map(|c| match c {
        LbConfig::RingHashLbConfig(_) => "ring_hash_lb_config",
        LbConfig::MaglevLbConfig(_) => "maglev_lb_config",
        LbConfig::OriginalDstLbConfig(_) => "original_dst_lb_config",
        LbConfig::LeastRequestLbConfig(_) => "least_request_lb_config",
        LbConfig::RoundRobinLbConfig(_) => "round_robin_lb_config",
    });
    match policy {
        Some(XdsLbPolicy::RoundRobin) => match lb_config {
            Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig { slow_start_config })) => {
                refuse!(cx, "round_robin_lb_config"; slow_start_config);
                LbPolicy::RoundRobin
            }
            _ => {
                mismatched_lb_config(cx, config_name, "ROUND_ROBIN");
                LbPolicy::RoundRobin
            }
        },
        Some(XdsLbPolicy::LeastRequest) => match lb_config {
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count,
                active_request_bias,
                slow_start_config,
            })) => {
                let field = "least_request_lb_config";
                refuse!(cx, field; slow_start_config);
                least_request(
                    cx,
                    field,
                    choice_count.as_ref(),
                    active_request_bias.as_ref(),
                )
            }
            _ => {
                mismatched_lb_config(cx, config_name, "LEAST_REQUEST");
                least_request(cx, "least_request_lb_config", None, None)
            }
        },
        Some(XdsLbPolicy::Random) => {
            mismatched_lb_config(cx, config_name, "RANDOM");
            LbPolicy::Random
        }
        Some(XdsLbPolicy::RingHash) => match lb_config {
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size,
                hash_function,
                maximum_ring_size,
            })) => {
                let field = "ring_hash_lb_config";
                let f = join(field, "hash_function");
                if let Some(RingHashFunction::MurmurHash2) =
                    enum_value::<RingHashFunction>(cx, &f, *hash_function)
                {
                    cx.err(f, "not supported by legate: MURMUR_HASH_2 (XX_HASH is)");
                }
                ring_hash(
                    cx,
                    field,
                    minimum_ring_size.as_ref(),
                    maximum_ring_size.as_ref(),
                )
            }
            _ => {
                mismatched_lb_config(cx, config_name, "RING_HASH");
                ring_hash(cx, "ring_hash_lb_config", None, None)
            }
        },
        Some(XdsLbPolicy::Maglev) => match lb_config {
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig { table_size })) => {
                maglev(cx, "maglev_lb_config", table_size.as_ref())
            }
            _ => {
                mismatched_lb_config(cx, config_name, "MAGLEV");
                maglev(cx, "maglev_lb_config", None)
            }
        },
        Some(XdsLbPolicy::LoadBalancingPolicyConfig) => {
            cx.err(
                "lb_policy",
                "load_balancing_policy is required with LOAD_BALANCING_POLICY_CONFIG",
            );
            LbPolicy::RoundRobin
        }
        Some(other) => {
            cx.err(
                "lb_policy",
                format!("not supported by legate: {}", other.as_str_name()),
            );
            LbPolicy::RoundRobin
        }
        None => LbPolicy::RoundRobin,
    }
}

/// An `lb_config` that does not belong to the policy (or that legate does not implement).
fn mismatched_lb_config(cx: &mut Ctx, config: Option<&str>, policy: &str) {
    if let Some(config) = config {
        cx.err(
            config,
            format!("does not apply to lb_policy {policy} or is not supported by legate"),
        );
    }
}

/// Least request: `choice_count` defaults to 2 (at least 2), `active_request_bias` to 1.0.
/// A bias `runtime_key` is ignored: legate has no runtime, so the default value applies, as it
/// does in Envoy when the key is absent.
fn least_request(
    cx: &mut Ctx,
    field: &str,
    choice_count: Option<&UInt32Value>,
    active_request_bias: Option<&RuntimeDouble>,
) -> LbPolicy {
    let choice_count = match choice_count {
        None => 2,
        Some(UInt32Value { value }) if *value < 2 => {
            cx.err(join(field, "choice_count"), "must be at least 2");
            2
        }
        Some(UInt32Value { value }) => *value,
    };
    let bias = match active_request_bias {
        None => 1.0,
        Some(RuntimeDouble {
            default_value,
            runtime_key: _,
        }) => *default_value,
    };
    let milli = bias * 1000.0;
    let active_request_bias_milli =
        if bias.is_finite() && bias >= 0.0 && milli <= f64::from(u32::MAX) {
            // In range by the check above; rounding quantizes to thousandths.
            milli.round() as u32
        } else {
            cx.err(
                join(field, "active_request_bias"),
                "must be a finite number between 0 and 4294967",
            );
            1000
        };
    LbPolicy::LeastRequest {
        choice_count,
        active_request_bias_milli,
    }
}

/// Ring hash sizes: both at most [`MAX_RING_SIZE`] (Envoy's bound; a larger ring is memory a
/// control plane could make legate spend per cluster), the minimum at least 1 and not above
/// the maximum.
fn ring_hash(
    cx: &mut Ctx,
    field: &str,
    min: Option<&UInt64Value>,
    max: Option<&UInt64Value>,
) -> LbPolicy {
    let mut size = |name: &str, v: Option<&UInt64Value>, default: u64| match v {
        None => default,
        Some(UInt64Value { value }) if *value > MAX_RING_SIZE => {
            cx.err(
                join(field, name),
                format!("{value} is above the largest ring, {MAX_RING_SIZE}"),
            );
            default
        }
        Some(UInt64Value { value: 0 }) => {
            cx.err(join(field, name), "must be at least 1");
            default
        }
        Some(UInt64Value { value }) => *value,
    };
    let min_ring_size = size("minimum_ring_size", min, DEFAULT_MIN_RING_SIZE);
    let max_ring_size = size("maximum_ring_size", max, MAX_RING_SIZE);
    if min_ring_size > max_ring_size {
        cx.err(
            join(field, "minimum_ring_size"),
            format!("{min_ring_size} is above maximum_ring_size ({max_ring_size})"),
        );
    }
    LbPolicy::RingHash {
        min_ring_size: min_ring_size.min(max_ring_size),
        max_ring_size,
    }
}

/// Maglev's table size: a prime (the table is built from permutations modulo it), at most
/// [`MAX_MAGLEV_TABLE_SIZE`] as in Envoy.
fn maglev(cx: &mut Ctx, field: &str, size: Option<&UInt64Value>) -> LbPolicy {
    let table_size = match size {
        None => DEFAULT_MAGLEV_TABLE_SIZE,
        Some(UInt64Value { value }) if *value > MAX_MAGLEV_TABLE_SIZE => {
            cx.err(
                join(field, "table_size"),
                format!("{value} is above the largest table, {MAX_MAGLEV_TABLE_SIZE}"),
            );
            DEFAULT_MAGLEV_TABLE_SIZE
        }
        Some(UInt64Value { value }) if !is_prime(*value) => {
            cx.err(join(field, "table_size"), format!("{value} is not a prime"));
            DEFAULT_MAGLEV_TABLE_SIZE
        }
        Some(UInt64Value { value }) => *value,
    };
    LbPolicy::Maglev { table_size }
}

/// Trial division: the values are bounded by [`MAX_MAGLEV_TABLE_SIZE`], so at most ~1,100
/// divisions.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1 + u64::from(d > 2);
    }
    true
}

/// `load_balancing_policy`: as Envoy does, the first policy legate implements wins and the
/// ones before it, unknown to legate, are skipped.
fn typed_lb(cx: &mut Ctx, field: &str, p: &XdsLoadBalancingPolicy) -> LbPolicy {
    let XdsLoadBalancingPolicy { policies } = p;
    for (
        i,
        Policy {
            typed_extension_config,
        },
    ) in policies.iter().enumerate()
    {
        let Some(TypedExtensionConfig {
            name: _,
            typed_config: Some(Any { type_url, value }),
        }) = typed_extension_config
        else {
            continue;
        };
        let f = format!("{field}.policies[{i}].typed_extension_config.typed_config");
        let decode_error = |cx: &mut Ctx, e: prost::DecodeError| {
            cx.err(&f, format!("cannot decode {type_url}: {e}"));
            LbPolicy::RoundRobin
        };
        match type_url.as_str() {
            ROUND_ROBIN_TYPE_URL => {
                return match XdsRoundRobin::decode(value.as_slice()) {
                    Ok(XdsRoundRobin {
                        slow_start_config,
                        locality_lb_config,
                    }) => {
                        refuse!(cx, &f; slow_start_config, locality_lb_config);
                        LbPolicy::RoundRobin
                    }
                    Err(e) => decode_error(cx, e),
                };
            }
            LEAST_REQUEST_TYPE_URL => {
                return match XdsLeastRequest::decode(value.as_slice()) {
                    Ok(XdsLeastRequest {
                        choice_count,
                        active_request_bias,
                        slow_start_config,
                        locality_lb_config,
                        enable_full_scan,
                        selection_method,
                    }) => {
                        refuse!(cx, &f; slow_start_config, locality_lb_config);
                        refuse_true(cx, &f, "enable_full_scan", &enable_full_scan);
                        let sm = join(&f, "selection_method");
                        if let Some(SelectionMethod::FullScan) =
                            enum_value::<SelectionMethod>(cx, &sm, selection_method)
                        {
                            cx.err(sm, "not supported by legate: FULL_SCAN");
                        }
                        least_request(cx, &f, choice_count.as_ref(), active_request_bias.as_ref())
                    }
                    Err(e) => decode_error(cx, e),
                };
            }
            RANDOM_TYPE_URL => {
                return match XdsRandom::decode(value.as_slice()) {
                    Ok(XdsRandom { locality_lb_config }) => {
                        refuse!(cx, &f; locality_lb_config);
                        LbPolicy::Random
                    }
                    Err(e) => decode_error(cx, e),
                };
            }
            _ => {}
        }
    }
    cx.err(
        join(field, "policies"),
        "none is supported by legate (round_robin, least_request or random)",
    );
    LbPolicy::RoundRobin
}

/// The deprecated cluster-level HTTP options.
struct DeprecatedHttp<'a> {
    http: Option<&'a envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions>,
    http2: Option<&'a envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions>,
    common: Option<&'a envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions>,
    max_requests_per_connection: Option<&'a UInt32Value>,
}

struct UpstreamHttp {
    protocol: UpstreamProtocol,
    idle_timeout: Option<Duration>,
    max_requests_per_connection: Option<u32>,
    /// `upstream_http_protocol_options` of the typed options, with its field path.
    auto_sni: Option<(String, AutoSni)>,
}

fn upstream_http(
    cx: &mut Ctx,
    typed: &HashMap<String, Any>,
    deprecated: DeprecatedHttp<'_>,
) -> UpstreamHttp {
    let mut keys: Vec<&String> = typed.keys().collect();
    keys.sort();
    let mut options = None;
    for key in keys {
        let field = format!("typed_extension_protocol_options['{key}']");
        if key != HTTP_PROTOCOL_OPTIONS_KEY {
            cx.err(field, super::common::UNSUPPORTED);
            continue;
        }
        let Any { type_url, value } = &typed[key];
        if type_url != type_url::HTTP_PROTOCOL_OPTIONS {
            cx.err(
                field,
                format!(
                    "expected {}, got '{type_url}'",
                    type_url::HTTP_PROTOCOL_OPTIONS
                ),
            );
            continue;
        }
        match XdsHttpProtocolOptions::decode(value.as_slice()) {
            Ok(o) => options = Some((field, o)),
            Err(e) => cx.err(field, format!("cannot decode HttpProtocolOptions: {e}")),
        }
    }

    let DeprecatedHttp {
        http,
        http2,
        common,
        max_requests_per_connection,
    } = deprecated;
    if let Some((field, options)) = options {
        for (set, name) in [
            (http.is_some(), "http_protocol_options"),
            (http2.is_some(), "http2_protocol_options"),
            (common.is_some(), "common_http_protocol_options"),
        ] {
            if set {
                cx.err(name, format!("cannot be combined with {field}"));
            }
        }
        let mut out = typed_http_options(cx, &field, &options);
        if let Some(UInt32Value { value }) = max_requests_per_connection {
            if out.max_requests_per_connection.is_some() {
                cx.err(
                    "max_requests_per_connection",
                    format!("cannot be combined with {field}.common_http_protocol_options.max_requests_per_connection"),
                );
            } else {
                out.max_requests_per_connection = (*value > 0).then_some(*value);
            }
        }
        return out;
    }

    if let Some(o) = http {
        http1_options(cx, "http_protocol_options", o);
    }
    if let Some(o) = http2 {
        http2_options(cx, "http2_protocol_options", o);
    }
    if http.is_some() && http2.is_some() {
        cx.err(
            "http2_protocol_options",
            "cannot be combined with http_protocol_options",
        );
    }
    let CoreHttpOptions {
        idle_timeout,
        max_requests_per_connection: from_common,
    } = core_http_options(cx, "common_http_protocol_options", common, true);
    let max_requests = match (max_requests_per_connection, from_common) {
        (Some(_), Some(_)) => {
            cx.err(
                "max_requests_per_connection",
                "cannot be combined with common_http_protocol_options.max_requests_per_connection",
            );
            from_common
        }
        (Some(UInt32Value { value }), None) => (*value > 0).then_some(*value),
        (None, m) => m,
    };
    UpstreamHttp {
        protocol: if http2.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        },
        idle_timeout,
        max_requests_per_connection: max_requests,
        auto_sni: None,
    }
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.
fn typed_http_options(cx: &mut Ctx, field: &str, o: &XdsHttpProtocolOptions) -> UpstreamHttp {
    let XdsHttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = o;
    refuse!(cx, field;
        http_filters, header_validation_config, outlier_detection, request_mirror_policies,
        hash_policy, retry_policy,
    );
    let auto_sni = upstream_http_protocol_options.as_ref().map(|u| {
        let f = join(field, "upstream_http_protocol_options");
        let a = upstream_http_options(cx, &f, u);
        (f, a)
    });
    let protocol = match upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config,
        })) => {
            let f = join(field, "explicit_http_config");
            match protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(o)) => {
                    http1_options(cx, &join(&f, "http_protocol_options"), o);
                    UpstreamProtocol::Http1
                }
                Some(ProtocolConfig::Http2ProtocolOptions(o)) => {
                    http2_options(cx, &join(&f, "http2_protocol_options"), o);
                    UpstreamProtocol::Http2
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    cx.unsupported(&f, "http3_protocol_options");
                    UpstreamProtocol::Http1
                }
                None => {
                    cx.err(
                        f,
                        "one of http_protocol_options or http2_protocol_options is required",
                    );
                    UpstreamProtocol::Http1
                }
            }
        }
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
            cx.unsupported(field, "use_downstream_protocol_config");
            UpstreamProtocol::Http1
        }
        Some(UpstreamProtocolOptions::AutoConfig(AutoHttpConfig {
            http_protocol_options,
            http2_protocol_options,
            http3_protocol_options,
            alternate_protocols_cache_options,
        })) => {
            let f = join(field, "auto_config");
            refuse!(cx, &f; http3_protocol_options, alternate_protocols_cache_options);
            if let Some(o) = http_protocol_options {
                http1_options(cx, &join(&f, "http_protocol_options"), o);
            }
            if let Some(o) = http2_protocol_options {
                http2_options(cx, &join(&f, "http2_protocol_options"), o);
            }
            UpstreamProtocol::Auto
        }
        None => {
            cx.err(
                field,
                "explicit_http_config is required (upstream_protocol_options)",
            );
            UpstreamProtocol::Http1
        }
    };
    let common = core_http_options(
        cx,
        &join(field, "common_http_protocol_options"),
        common_http_protocol_options.as_ref(),
        true,
    );
    UpstreamHttp {
        protocol,
        idle_timeout: common.idle_timeout,
        max_requests_per_connection: common.max_requests_per_connection,
        auto_sni,
    }
}
