//! `RouteConfiguration` → [`RouteConfig`], standalone (RDS) or inline in an HTTP connection
//! manager, in which case errors belong to the listener and carry the HCM's field path.

mod hash;
mod retry;
pub use retry::MAX_RETRY_BUFFER_LIMIT;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::DataSource as XdsDataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, MaxStreamDuration, UpgradeConfig as XdsUpgradeConfig,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier as WeightedHostRewrite;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction as XdsDirectResponseAction, HeaderMatcher as XdsHeaderMatcher,
    QueryParameterMatcher as XdsQueryParameterMatcher, RedirectAction as XdsRedirectAction,
    Route as XdsRoute, RouteAction as XdsRouteAction, RouteConfiguration as XdsRouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost,
    WeightedCluster as XdsWeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as XdsDuration, UInt32Value};

use http::HeaderValue;

use super::common::{
    Ctx, at, duration, enum_value, header_name, header_value, headers_to_add, headers_to_remove,
    join, refuse, regex, regex_pattern, string_matcher, timeout,
};
use crate::{
    ClusterTarget, ForwardAction, GrpcTimeout, HeaderMatchName, HeaderMatchRule, HeaderMatcher,
    HostRewrite, PathMatch, QueryParameterMatcher, RedirectAction, RegexRewrite, ResourceError,
    ResourceKind, Route, RouteAction, RouteConfig, RouteMatch, StringMatcher, StringPattern,
    UnanchoredRegex, VirtualHost, WeightedCluster,
};

/// Envoy's default for a route's `timeout`.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default for `max_direct_response_body_size_bytes`.
const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// A route naming a cluster, kept for the whole-set consistency pass.
#[derive(Clone, Debug)]
pub(super) struct ClusterRef {
    /// Field path of the cluster name, inside the resource that holds the route.
    pub(super) field: String,
    pub(super) cluster: Arc<str>,
}

pub(super) struct ConvertedRouteConfig {
    pub(super) config: RouteConfig,
    pub(super) cluster_refs: Vec<ClusterRef>,
    /// `validate_clusters`: legate checks cluster references unless this is explicitly false
    /// (then a route to a missing cluster answers 503 at run time, as in Envoy).
    pub(super) validate_clusters: bool,
}

/// A standalone (RDS) route configuration.
pub(super) fn route_configuration(
    x: &XdsRouteConfiguration,
) -> Result<ConvertedRouteConfig, Vec<ResourceError>> {
    let mut cx = Ctx::new(ResourceKind::RouteConfiguration, &x.name);
    if x.name.is_empty() {
        cx.err("name", "must not be empty");
    }
    let converted = route_config_in(&mut cx, "", x);
    cx.finish(converted)
}

/// A route configuration at `base` inside the resource `cx` reports on.
pub(super) fn route_config_in(
    cx: &mut Ctx,
    base: &str,
    x: &XdsRouteConfiguration,
) -> ConvertedRouteConfig {
    let XdsRouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        ignore_port_in_host_matching,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        // Ignored: no effect on traffic.
        metadata: _,
        route_specifiers,
    } = x;
    refuse!(cx, base;
        vhds, internal_only_headers, most_specific_header_mutations_wins,
        cluster_specifier_plugins, request_mirror_policies, ignore_port_in_host_matching,
        vhost_header, ignore_path_parameters_in_path_matching, route_specifiers,
    );
    let max_body = max_direct_response_body_size_bytes
        .map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |UInt32Value { value }| {
            value
        });
    check_unique_hosts(cx, base, virtual_hosts);

    let mut cluster_refs = Vec::new();
    let vhosts: Vec<VirtualHost> = virtual_hosts
        .iter()
        .enumerate()
        .filter_map(|(i, vh)| {
            virtual_host(
                cx,
                &at(base, "virtual_hosts", i),
                vh,
                max_body,
                &mut cluster_refs,
            )
        })
        .collect();

    let mut config = RouteConfig::new(name.as_str(), vhosts);
    config.per_filter = super::filter::per_filter_configs(cx, base, typed_per_filter_config);
    config.request_headers_to_add =
        headers_to_add(cx, base, "request_headers_to_add", request_headers_to_add);
    config.response_headers_to_add =
        headers_to_add(cx, base, "response_headers_to_add", response_headers_to_add);
    config.request_headers_to_remove = headers_to_remove(
        cx,
        base,
        "request_headers_to_remove",
        request_headers_to_remove,
    );
    config.response_headers_to_remove = headers_to_remove(
        cx,
        base,
        "response_headers_to_remove",
        response_headers_to_remove,
    );
    ConvertedRouteConfig {
        config,
        cluster_refs,
        validate_clusters: validate_clusters.is_none_or(|BoolValue { value }| value),
    }
}

/// Virtual host names and domains must be unique across a route configuration, as Envoy
/// requires; domains compare case-insensitively.
fn check_unique_hosts(cx: &mut Ctx, base: &str, vhosts: &[XdsVirtualHost]) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut domains: HashMap<String, &str> = HashMap::new();
    for (i, vh) in vhosts.iter().enumerate() {
        let field = at(base, "virtual_hosts", i);
        if !vh.name.is_empty()
            && let Some(first) = names.insert(&vh.name, i)
        {
            names.insert(&vh.name, first);
            cx.err(
                join(&field, "name"),
                format!("duplicate virtual host name '{}'", vh.name),
            );
        }
        for (j, d) in vh.domains.iter().enumerate() {
            let lower = d.to_ascii_lowercase();
            if let Some(other) = domains.get(&lower) {
                cx.err(
                    at(&field, "domains", j),
                    format!("duplicate domain '{d}', already in virtual host '{other}'"),
                );
            } else {
                domains.insert(lower, &vh.name);
            }
        }
    }
}

fn virtual_host(
    cx: &mut Ctx,
    field: &str,
    v: &XdsVirtualHost,
    max_body: u32,
    refs: &mut Vec<ClusterRef>,
) -> Option<VirtualHost> {
    let XdsVirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        // Ignored: virtual clusters only name request classes for statistics.
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        // Ignored: no effect on traffic.
        metadata: _,
        route_specifiers,
    } = v;
    let before = cx.error_count();
    refuse!(cx, field;
        matcher, require_tls, rate_limits, cors,
        include_request_attempt_count, include_attempt_count_in_response,
        retry_policy_typed_config, include_is_timeout_retry_header, request_mirror_policies,
        route_specifiers,
    );
    let inherited = retry::virtual_host(
        cx,
        field,
        retry_policy.as_ref(),
        hedge_policy.as_ref(),
        per_request_buffer_limit_bytes.as_ref(),
        request_body_buffer_limit.as_ref(),
    );
    if name.is_empty() {
        cx.err(join(field, "name"), "must not be empty");
    }
    if domains.is_empty() {
        cx.err(join(field, "domains"), "at least one domain is required");
    }
    let domains: Vec<Arc<str>> = domains
        .iter()
        .enumerate()
        .filter_map(|(i, d)| domain(cx, &at(field, "domains", i), d))
        .collect();
    let routes: Vec<Route> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            route(
                cx,
                &at(field, "routes", i),
                r,
                RouteEnv {
                    max_body,
                    inherited: &inherited,
                },
                refs,
            )
        })
        .collect();
    let vhost = VirtualHost {
        per_filter: super::filter::per_filter_configs(cx, field, typed_per_filter_config),
        name: Arc::from(name.as_str()),
        domains,
        routes,
        request_headers_to_add: headers_to_add(
            cx,
            field,
            "request_headers_to_add",
            request_headers_to_add,
        ),
        response_headers_to_add: headers_to_add(
            cx,
            field,
            "response_headers_to_add",
            response_headers_to_add,
        ),
        request_headers_to_remove: headers_to_remove(
            cx,
            field,
            "request_headers_to_remove",
            request_headers_to_remove,
        ),
        response_headers_to_remove: headers_to_remove(
            cx,
            field,
            "response_headers_to_remove",
            response_headers_to_remove,
        ),
    };
    (cx.error_count() == before).then_some(vhost)
}

/// A domain: exact, `*` alone, a leading `*` (`*.foo.com`, `*-bar.foo.com`) or a trailing
/// `*` (`foo.*`). Lowercased: hosts match case-insensitively.
fn domain(cx: &mut Ctx, field: &str, d: &str) -> Option<Arc<str>> {
    let lower = d.to_ascii_lowercase();
    if lower.is_empty() {
        cx.err(field, "must not be empty");
        return None;
    }
    let stars = lower.bytes().filter(|&b| b == b'*').count();
    let wildcard_ok = stars == 0
        || lower == "*"
        || (stars == 1 && (lower.starts_with('*') || lower.ends_with('*')));
    if !wildcard_ok {
        cx.err(
            field,
            format!("'{d}': a wildcard must be the whole domain, its first character or its last"),
        );
        return None;
    }
    if lower
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
    {
        cx.err(field, format!("'{d}' is not a valid domain"));
        return None;
    }
    Some(Arc::from(lower))
}

/// What a route takes from its route configuration and virtual host.
#[derive(Clone, Copy)]
struct RouteEnv<'a> {
    max_body: u32,
    inherited: &'a retry::Resilience,
}

fn route(
    cx: &mut Ctx,
    field: &str,
    r: &XdsRoute,
    env: RouteEnv<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Option<Route> {
    let RouteEnv {
        max_body,
        inherited,
    } = env;
    let XdsRoute {
        name,
        r#match,
        // Only `filter_metadata.legate` is read; other namespaces have no effect on traffic.
        metadata,
        // Ignored: no effect on traffic (tracing decoration, statistics).
        decorator: _,
        tracing: _,
        stat_prefix: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = r;
    let before = cx.error_count();
    refuse!(cx, field; route_specifiers);
    let per_filter = super::filter::per_filter_configs(cx, field, typed_per_filter_config);
    let inherited = retry::route(
        cx,
        field,
        inherited,
        metadata.as_ref(),
        per_request_buffer_limit_bytes.as_ref(),
        request_body_buffer_limit.as_ref(),
    );
    let matcher = match r#match {
        Some(m) => route_match(cx, &join(field, "match"), m),
        None => {
            cx.err(join(field, "match"), "required");
            None
        }
    };
    let action = match action {
        Some(Action::Route(a)) => {
            forward(cx, &join(field, "route"), a, &inherited, refs).map(RouteAction::Forward)
        }
        Some(Action::Redirect(a)) => {
            redirect(cx, &join(field, "redirect"), a).map(RouteAction::Redirect)
        }
        Some(Action::DirectResponse(a)) => {
            direct_response(cx, &join(field, "direct_response"), a, max_body)
        }
        Some(Action::FilterAction(_)) => {
            cx.unsupported(field, "filter_action");
            None
        }
        Some(Action::NonForwardingAction(_)) => {
            cx.unsupported(field, "non_forwarding_action");
            None
        }
        None => {
            cx.err(
                field,
                "one of route, redirect or direct_response is required",
            );
            None
        }
    };
    let request_headers_to_add =
        headers_to_add(cx, field, "request_headers_to_add", request_headers_to_add);
    let response_headers_to_add = headers_to_add(
        cx,
        field,
        "response_headers_to_add",
        response_headers_to_add,
    );
    let request_headers_to_remove = headers_to_remove(
        cx,
        field,
        "request_headers_to_remove",
        request_headers_to_remove,
    );
    let response_headers_to_remove = headers_to_remove(
        cx,
        field,
        "response_headers_to_remove",
        response_headers_to_remove,
    );
    if cx.error_count() != before {
        return None;
    }
    Some(Route {
        name: Arc::from(name.as_str()),
        matcher: matcher?,
        action: action?,
        request_headers_to_add,
        response_headers_to_add,
        request_headers_to_remove,
        response_headers_to_remove,
        per_filter,
    })
}

fn route_match(cx: &mut Ctx, field: &str, m: &XdsRouteMatch) -> Option<RouteMatch> {
    let XdsRouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    let before = cx.error_count();
    refuse!(cx, field;
        runtime_fraction, cookies, grpc, tls_context, dynamic_metadata, filter_state,
    );
    let path = match path_specifier {
        Some(PathSpecifier::Prefix(p)) => Some(PathMatch::Prefix(Arc::from(p.as_str()))),
        Some(PathSpecifier::Path(p)) => Some(PathMatch::Exact(Arc::from(p.as_str()))),
        Some(PathSpecifier::SafeRegex(r)) => {
            regex(cx, &join(field, "safe_regex"), r).map(PathMatch::Regex)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            // Envoy's rule: no `?` or `#`, at least two bytes, and no trailing `/`.
            let ok = p.len() >= 2 && !p.contains(['?', '#']) && !p.ends_with('/');
            if ok {
                Some(PathMatch::SeparatedPrefix(Arc::from(p.as_str())))
            } else {
                cx.err(
                    join(field, "path_separated_prefix"),
                    format!("'{p}' must not contain '?' or '#' nor end with '/'"),
                );
                None
            }
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            cx.unsupported(field, "connect_matcher");
            None
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            cx.unsupported(field, "path_match_policy");
            None
        }
        None => {
            cx.err(
                field,
                "one of prefix, path, safe_regex or path_separated_prefix is required",
            );
            None
        }
    };
    let headers: Vec<HeaderMatcher> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_matcher(cx, &at(field, "headers", i), h))
        .collect();
    let query_parameters: Vec<QueryParameterMatcher> = query_parameters
        .iter()
        .enumerate()
        .filter_map(|(i, q)| query_parameter_matcher(cx, &at(field, "query_parameters", i), q))
        .collect();
    if cx.error_count() != before {
        return None;
    }
    Some(RouteMatch {
        path: path?,
        case_sensitive: case_sensitive.is_none_or(|BoolValue { value }| value),
        headers,
        query_parameters,
    })
}

fn header_matcher(cx: &mut Ctx, field: &str, h: &XdsHeaderMatcher) -> Option<HeaderMatcher> {
    let XdsHeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    // The request view gives the authority; the other pseudo-headers are not matched.
    let match_name = if name.eq_ignore_ascii_case(":authority") {
        Some(HeaderMatchName::Authority)
    } else if name.starts_with(':') {
        cx.err(
            join(field, "name"),
            format!("matching on pseudo-header '{name}' is not supported by legate"),
        );
        None
    } else {
        header_name(cx, &join(field, "name"), name).map(HeaderMatchName::Header)
    };
    let non_empty = |cx: &mut Ctx, f: &str, v: &str| -> Option<Arc<str>> {
        if v.is_empty() {
            cx.err(join(field, f), "must not be empty (use present_match)");
            None
        } else {
            Some(Arc::from(v))
        }
    };
    let plain = |pattern| {
        HeaderMatchRule::String(StringMatcher {
            pattern,
            ignore_case: false,
        })
    };
    let rule = match header_match_specifier {
        // No specifier: a presence match, as Envoy documents.
        None => Some(HeaderMatchRule::Present(true)),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => Some(HeaderMatchRule::Present(*p)),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => {
            Some(plain(StringPattern::Exact(Arc::from(v.as_str()))))
        }
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => non_empty(cx, "prefix_match", v)
            .map(StringPattern::Prefix)
            .map(plain),
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => non_empty(cx, "suffix_match", v)
            .map(StringPattern::Suffix)
            .map(plain),
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => non_empty(cx, "contains_match", v)
            .map(StringPattern::Contains)
            .map(plain),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            regex(cx, &join(field, "safe_regex_match"), r)
                .map(StringPattern::Regex)
                .map(plain)
        }
        Some(HeaderMatchSpecifier::RangeMatch(Int64Range { start, end })) => {
            Some(HeaderMatchRule::Range {
                start: *start,
                end: *end,
            })
        }
        Some(HeaderMatchSpecifier::StringMatch(m)) => {
            string_matcher(cx, &join(field, "string_match"), m).map(HeaderMatchRule::String)
        }
    };
    Some(HeaderMatcher {
        name: match_name?,
        rule: rule?,
        invert: *invert_match,
        treat_missing_as_empty: *treat_missing_header_as_empty,
    })
}

fn query_parameter_matcher(
    cx: &mut Ctx,
    field: &str,
    q: &XdsQueryParameterMatcher,
) -> Option<QueryParameterMatcher> {
    let XdsQueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = q;
    if name.is_empty() {
        cx.err(join(field, "name"), "must not be empty");
    }
    let value = match query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(m)) => {
            Some(string_matcher(cx, &join(field, "string_match"), m)?)
        }
        Some(QueryParameterMatchSpecifier::PresentMatch(true)) | None => None,
        Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
            // Envoy treats `false` like `true`; say so rather than guess what was meant.
            cx.err(
                join(field, "present_match"),
                "false is not supported by legate (Envoy reads it as true)",
            );
            return None;
        }
    };
    if name.is_empty() {
        return None;
    }
    Some(QueryParameterMatcher {
        name: Arc::from(name.as_str()),
        value,
    })
}

fn forward(
    cx: &mut Ctx,
    field: &str,
    a: &XdsRouteAction,
    inherited: &retry::Resilience,
    refs: &mut Vec<ClusterRef>,
) -> Option<ForwardAction> {
    let XdsRouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout: route_timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = a;
    let before = cx.error_count();
    // `cluster_not_found_response_code` and `priority` are enums whose default (503, DEFAULT)
    // is what legate does; any other value is refused.
    refuse!(cx, field;
        cluster_not_found_response_code, metadata_match, path_rewrite_policy, path_rewrite,
        append_x_forwarded_host, flush_timeout, early_data_policy, retry_policy_typed_config,
        request_mirror_policies, priority, rate_limits, include_vh_rate_limits, cors, grpc_timeout_offset, internal_redirect_policy, internal_redirect_action,
        max_internal_redirects,
    );
    let grpc_timeout = grpc_timeout(cx, field, max_grpc_timeout, max_stream_duration);
    let hash_policy = hash::hash_policies(cx, field, hash_policy);
    let resilience = retry::route_action(
        cx,
        field,
        inherited,
        retry_policy.as_ref(),
        hedge_policy.as_ref(),
    );
    let target = match cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => {
            if name.is_empty() {
                cx.err(join(field, "cluster"), "must not be empty");
                None
            } else {
                let name: Arc<str> = Arc::from(name.as_str());
                refs.push(ClusterRef {
                    field: join(field, "cluster"),
                    cluster: name.clone(),
                });
                Some(ClusterTarget::Single(name))
            }
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            weighted_clusters(cx, &join(field, "weighted_clusters"), w, refs)
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            cx.unsupported(field, "cluster_header");
            None
        }
        Some(ClusterSpecifier::ClusterSpecifierPlugin(_)) => {
            cx.unsupported(field, "cluster_specifier_plugin");
            None
        }
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            cx.unsupported(field, "inline_cluster_specifier_plugin");
            None
        }
        None => {
            cx.err(field, "one of cluster or weighted_clusters is required");
            None
        }
    };
    let prefix_rewrite = (!prefix_rewrite.is_empty()).then(|| Arc::from(prefix_rewrite.as_str()));
    let regex_rewrite = match regex_rewrite {
        Some(_) if prefix_rewrite.is_some() => {
            cx.err(
                join(field, "regex_rewrite"),
                "cannot be combined with prefix_rewrite",
            );
            None
        }
        Some(rr) => regex_substitution(cx, &join(field, "regex_rewrite"), rr),
        None => None,
    };
    let host_rewrite = match host_rewrite_specifier {
        None => HostRewrite::Keep,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            host_literal(cx, &join(field, "host_rewrite_literal"), h)
                .map_or(HostRewrite::Keep, HostRewrite::Literal)
        }
        Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue { value: true })) => HostRewrite::Auto,
        Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue { value: false })) => {
            HostRewrite::Keep
        }
        Some(HostRewriteSpecifier::HostRewriteHeader(h)) => {
            header_name(cx, &join(field, "host_rewrite_header"), h)
                .map_or(HostRewrite::Keep, HostRewrite::Header)
        }
        Some(HostRewriteSpecifier::HostRewritePathRegex(_)) => {
            cx.unsupported(field, "host_rewrite_path_regex");
            HostRewrite::Keep
        }
        Some(HostRewriteSpecifier::HostRewrite(_)) => {
            cx.unsupported(field, "host_rewrite");
            HostRewrite::Keep
        }
    };
    let timeout = timeout(
        cx,
        &join(field, "timeout"),
        route_timeout,
        Some(DEFAULT_ROUTE_TIMEOUT),
    );
    // Unset inherits the listener's stream idle timeout; zero (kept as zero) disables it.
    let idle_timeout = idle_timeout
        .as_ref()
        .and_then(|d| duration(cx, &join(field, "idle_timeout"), d));
    let upgrades = route_upgrades(cx, field, upgrade_configs);
    if cx.error_count() != before {
        return None;
    }
    Some(ForwardAction {
        target: target?,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        timeout,
        idle_timeout,
        upgrades,
        retry_buffer_limit: resilience.retry_buffer_limit(),
        retry_policy: resilience.retry_policy,
        hedge_on_per_try_timeout: resilience.hedge_on_per_try_timeout,
        retry_non_idempotent: resilience.retry_non_idempotent,
        grpc_timeout,
        hash_policy,
    })
}

/// `max_stream_duration.grpc_timeout_header_max` (Envoy v3's field) or the deprecated
/// `max_grpc_timeout`: whether, and up to what, a gRPC request's `grpc-timeout` header sets
/// its deadline. Zero means "the header's value, uncapped". The other fields of
/// `max_stream_duration` are refused.
fn grpc_timeout(
    cx: &mut Ctx,
    field: &str,
    max_grpc_timeout: &Option<XdsDuration>,
    max_stream_duration: &Option<MaxStreamDuration>,
) -> Option<GrpcTimeout> {
    let from_header_max = match max_stream_duration {
        None => None,
        Some(m) => {
            let f = join(field, "max_stream_duration");
            let MaxStreamDuration {
                max_stream_duration,
                grpc_timeout_header_max,
                grpc_timeout_header_offset,
            } = m;
            refuse!(cx, &f; max_stream_duration, grpc_timeout_header_offset);
            match grpc_timeout_header_max {
                Some(d) => {
                    duration(cx, &join(&f, "grpc_timeout_header_max"), d).map(|d| GrpcTimeout {
                        max: (!d.is_zero()).then_some(d),
                        replaces_route_timeout: false,
                    })
                }
                None => {
                    cx.err(
                        f,
                        "only grpc_timeout_header_max is supported by legate; it must be set",
                    );
                    None
                }
            }
        }
    };
    let from_max_grpc = max_grpc_timeout.as_ref().and_then(|d| {
        duration(cx, &join(field, "max_grpc_timeout"), d).map(|d| GrpcTimeout {
            max: (!d.is_zero()).then_some(d),
            replaces_route_timeout: true,
        })
    });
    match (from_header_max, from_max_grpc) {
        (Some(_), Some(_)) => {
            cx.err(
                join(field, "max_grpc_timeout"),
                "cannot be combined with max_stream_duration.grpc_timeout_header_max \
                 (its replacement)",
            );
            None
        }
        (a, b) => a.or(b),
    }
}

fn route_upgrades(
    cx: &mut Ctx,
    field: &str,
    configs: &[XdsUpgradeConfig],
) -> Vec<(Arc<str>, bool)> {
    let mut out: Vec<(Arc<str>, bool)> = Vec::new();
    for (i, u) in configs.iter().enumerate() {
        let f = at(field, "upgrade_configs", i);
        let XdsUpgradeConfig {
            upgrade_type,
            enabled,
            connect_config,
        } = u;
        refuse!(cx, &f; connect_config);
        let kind = upgrade_type.to_ascii_lowercase();
        if kind.is_empty() {
            cx.err(join(&f, "upgrade_type"), "must not be empty");
            continue;
        }
        if out.iter().any(|(k, _)| **k == *kind) {
            cx.err(
                join(&f, "upgrade_type"),
                format!("duplicate upgrade type '{upgrade_type}'"),
            );
            continue;
        }
        out.push((
            Arc::from(kind),
            enabled.is_none_or(|BoolValue { value }| value),
        ));
    }
    out
}

fn weighted_clusters(
    cx: &mut Ctx,
    field: &str,
    w: &XdsWeightedCluster,
    refs: &mut Vec<ClusterRef>,
) -> Option<ClusterTarget> {
    let XdsWeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    let before = cx.error_count();
    refuse!(cx, field; runtime_key_prefix, random_value_specifier);
    if clusters.is_empty() {
        cx.err(join(field, "clusters"), "at least one cluster is required");
        return None;
    }
    let mut kept = Vec::with_capacity(clusters.len());
    let mut total: u64 = 0;
    for (i, c) in clusters.iter().enumerate() {
        let f = at(field, "clusters", i);
        let ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        let entry_errors = cx.error_count();
        refuse!(cx, &f; cluster_header, metadata_match, typed_per_filter_config);
        if name.is_empty() && cluster_header.is_empty() {
            cx.err(join(&f, "name"), "must not be empty");
        }
        let weight = weight.map_or(0, |UInt32Value { value }| value);
        total += u64::from(weight);
        let host_rewrite = match host_rewrite_specifier {
            Some(WeightedHostRewrite::HostRewriteLiteral(h)) => {
                host_literal(cx, &join(&f, "host_rewrite_literal"), h)
            }
            None => None,
        };
        let entry = WeightedCluster {
            name: Arc::from(name.as_str()),
            weight,
            request_headers_to_add: headers_to_add(
                cx,
                &f,
                "request_headers_to_add",
                request_headers_to_add,
            ),
            request_headers_to_remove: headers_to_remove(
                cx,
                &f,
                "request_headers_to_remove",
                request_headers_to_remove,
            ),
            response_headers_to_add: headers_to_add(
                cx,
                &f,
                "response_headers_to_add",
                response_headers_to_add,
            ),
            response_headers_to_remove: headers_to_remove(
                cx,
                &f,
                "response_headers_to_remove",
                response_headers_to_remove,
            ),
            host_rewrite,
        };
        // Zero-weight entries never receive traffic: dropped, and their cluster need not exist.
        if cx.error_count() == entry_errors && weight > 0 {
            refs.push(ClusterRef {
                field: join(&f, "name"),
                cluster: entry.name.clone(),
            });
            kept.push(entry);
        }
    }
    if let Some(UInt32Value { value }) = total_weight
        && u64::from(*value) != total
    {
        cx.err(
            join(field, "total_weight"),
            format!("is {value} but the weights sum to {total}"),
        );
    }
    if total == 0 {
        cx.err(
            join(field, "clusters"),
            "at least one cluster needs a non-zero weight",
        );
    } else if total > u64::from(u32::MAX) {
        cx.err(
            join(field, "clusters"),
            format!("weights sum to {total}, above {}", u32::MAX),
        );
    }
    if cx.error_count() != before {
        return None;
    }
    Some(ClusterTarget::Weighted {
        clusters: kept,
        total,
    })
}

/// `regex_rewrite`: an unanchored pattern and an RE2-style substitution (`\0`..`\9` name
/// capture groups, `\\` is a backslash), checked here so rewriting cannot fail later.
fn regex_substitution(
    cx: &mut Ctx,
    field: &str,
    rr: &RegexMatchAndSubstitute,
) -> Option<RegexRewrite> {
    let RegexMatchAndSubstitute {
        pattern,
        substitution,
    } = rr;
    let Some(pattern) = pattern else {
        cx.err(join(field, "pattern"), "required");
        return None;
    };
    let source = regex_pattern(cx, &join(field, "pattern"), pattern)?;
    let compiled = match UnanchoredRegex::new(source) {
        Ok(r) => r,
        Err(e) => {
            cx.err(join(field, "pattern.regex"), e.to_string());
            return None;
        }
    };
    let groups = compiled.0.captures_len();
    let mut chars = substitution.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        match chars.next() {
            Some('\\') => {}
            Some(d @ '0'..='9') => {
                let n = usize::from(d as u8 - b'0');
                if n >= groups {
                    cx.err(
                        join(field, "substitution"),
                        format!("\\{n} refers to a capture group the pattern does not have"),
                    );
                    return None;
                }
            }
            _ => {
                cx.err(
                    join(field, "substitution"),
                    "a backslash must be followed by a digit or another backslash",
                );
                return None;
            }
        }
    }
    Some(RegexRewrite {
        pattern: compiled,
        substitution: Arc::from(substitution.as_str()),
    })
}

fn host_literal(cx: &mut Ctx, field: &str, host: &str) -> Option<HeaderValue> {
    if host.is_empty() {
        cx.err(field, "must not be empty");
        return None;
    }
    header_value(cx, field, host)
}

fn redirect(cx: &mut Ctx, field: &str, r: &XdsRedirectAction) -> Option<RedirectAction> {
    let XdsRedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = r;
    let before = cx.error_count();
    let scheme = match scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some(Arc::from("https")),
        Some(SchemeRewriteSpecifier::HttpsRedirect(false)) | None => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => {
            let lower = s.to_ascii_lowercase();
            let valid = lower.starts_with(|c: char| c.is_ascii_alphabetic())
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            if valid {
                Some(Arc::from(lower))
            } else {
                cx.err(
                    join(field, "scheme_redirect"),
                    format!("'{s}' is not a valid scheme"),
                );
                None
            }
        }
    };
    let host = if host_redirect.is_empty() {
        None
    } else {
        host_literal(cx, &join(field, "host_redirect"), host_redirect)
            .map(|_| Arc::from(host_redirect.as_str()))
    };
    let port = match *port_redirect {
        0 => None,
        p => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                cx.err(join(field, "port_redirect"), "must be at most 65535");
                None
            }
        },
    };
    let (path, prefix_rewrite) = match path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) => (Some(Arc::from(p.as_str())), None),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => (None, Some(Arc::from(p.as_str()))),
        Some(PathRewriteSpecifier::RegexRewrite(_)) => {
            cx.unsupported(field, "regex_rewrite");
            (None, None)
        }
        Some(PathRewriteSpecifier::PathRewrite(_)) => {
            cx.unsupported(field, "path_rewrite");
            (None, None)
        }
        None => (None, None),
    };
    let status =
        enum_value::<RedirectResponseCode>(cx, &join(field, "response_code"), *response_code).map(
            |code| match code {
                RedirectResponseCode::MovedPermanently => 301,
                RedirectResponseCode::Found => 302,
                RedirectResponseCode::SeeOther => 303,
                RedirectResponseCode::TemporaryRedirect => 307,
                RedirectResponseCode::PermanentRedirect => 308,
            },
        );
    if cx.error_count() != before {
        return None;
    }
    Some(RedirectAction {
        scheme,
        host,
        port,
        path,
        prefix_rewrite,
        status: status?,
        strip_query: *strip_query,
    })
}

fn direct_response(
    cx: &mut Ctx,
    field: &str,
    d: &XdsDirectResponseAction,
    max_body: u32,
) -> Option<RouteAction> {
    let XdsDirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    let before = cx.error_count();
    refuse!(cx, field; body_format);
    let status = match u16::try_from(*status) {
        Ok(s) if (200..600).contains(&s) => s,
        _ => {
            cx.err(join(field, "status"), "must be between 200 and 599");
            0
        }
    };
    let body = match body {
        None => Bytes::new(),
        Some(XdsDataSource {
            watched_directory,
            specifier,
        }) => {
            let bf = join(field, "body");
            refuse!(cx, &bf; watched_directory);
            match specifier {
                Some(Specifier::InlineString(s)) => Bytes::from(s.clone()),
                Some(Specifier::InlineBytes(b)) => Bytes::from(b.clone()),
                Some(Specifier::Filename(_)) => {
                    cx.unsupported(&bf, "filename");
                    Bytes::new()
                }
                Some(Specifier::EnvironmentVariable(_)) => {
                    cx.unsupported(&bf, "environment_variable");
                    Bytes::new()
                }
                None => Bytes::new(),
            }
        }
    };
    if body.len() > max_body as usize {
        cx.err(
            join(field, "body"),
            format!(
                "is {} bytes, above max_direct_response_body_size_bytes ({max_body})",
                body.len()
            ),
        );
    }
    (cx.error_count() == before).then_some(RouteAction::Direct { status, body })
}
