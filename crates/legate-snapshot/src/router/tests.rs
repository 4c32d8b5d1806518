use std::sync::Arc;
use std::time::Duration;

use crate::HeaderMatchName;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::{HostRewrite, Regex, RegexRewrite, RouteAction, UnanchoredRegex};

fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: Arc::from(name),
        domains: domains.iter().map(|d| Arc::from(*d)).collect(),
        routes,
        request_headers_to_add: Vec::new(),
        response_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_remove: Vec::new(),
        per_filter: std::sync::Arc::from([]),
    }
}

fn forward(cluster: &str) -> ForwardAction {
    ForwardAction {
        target: ClusterTarget::Single(Arc::from(cluster)),
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: HostRewrite::Keep,
        timeout: Some(Duration::from_secs(15)),
        idle_timeout: None,
        upgrades: Vec::new(),
        retry_policy: None,
        hedge_on_per_try_timeout: false,
        retry_buffer_limit: crate::DEFAULT_RETRY_BUFFER_LIMIT,
        retry_non_idempotent: false,
        grpc_timeout: None,
        hash_policy: Arc::from([]),
    }
}

fn route(name: &str, matcher: RouteMatch) -> Route {
    Route {
        name: Arc::from(name),
        matcher,
        action: RouteAction::Forward(forward("c")),
        request_headers_to_add: Vec::new(),
        response_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_remove: Vec::new(),
        per_filter: std::sync::Arc::from([]),
    }
}

fn path_only(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        case_sensitive: true,
        headers: Vec::new(),
        query_parameters: Vec::new(),
    }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(Arc::from(p))
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_bytes(value).expect("value"),
        );
    }
    map
}

fn string(pattern: StringPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        pattern,
        ignore_case,
    }
}

fn exact(v: &str) -> StringPattern {
    StringPattern::Exact(Arc::from(v))
}

fn regex(p: &str) -> StringPattern {
    StringPattern::Regex(Regex::new(p).expect("regex"))
}

// ---------------------------------------------------------------------------------------------
// Virtual hosts

fn domains_config() -> RouteConfig {
    RouteConfig::new(
        "rc",
        vec![
            vhost("exact", &["foo.com"], Vec::new()),
            vhost("dot-suffix", &["*.foo.com"], Vec::new()),
            vhost("dash-suffix", &["*-bar.foo.com"], Vec::new()),
            vhost("short-prefix", &["foo.*"], Vec::new()),
            vhost("long-prefix", &["foo.bar.*"], Vec::new()),
            vhost("any", &["*"], Vec::new()),
            vhost("ported", &["[::1]:8080", "exact.com:8080"], Vec::new()),
            vhost("com", &["*.com"], Vec::new()),
        ],
    )
}

#[test]
fn virtual_host_precedence() {
    let rc = domains_config();
    let long_upper = format!("{}.FOO.COM", "A".repeat(300));
    let cases: &[(&str, bool, &str)] = &[
        ("foo.com", false, "exact"),
        ("FOO.Com", false, "exact"),
        ("a.foo.com", false, "dot-suffix"),
        // The longest suffix wins.
        ("x-bar.foo.com", false, "dash-suffix"),
        // A wildcard stands for at least one character.
        ("-bar.foo.com", false, "dot-suffix"),
        (".foo.com", false, "com"),
        // Suffix wildcards beat prefix wildcards.
        ("foo.foo.com", false, "dot-suffix"),
        ("foo.org", false, "short-prefix"),
        ("foo.bar.baz", false, "long-prefix"),
        ("FOO.BAR.baz", false, "long-prefix"),
        ("elsewhere.org", false, "any"),
        ("", false, "any"),
        // Without stripping, the port is part of the host.
        ("foo.com:8080", false, "short-prefix"),
        ("foo.com:8080", true, "exact"),
        ("exact.com:8080", false, "ported"),
        ("exact.com:8080", true, "com"),
        ("[::1]:8080", false, "ported"),
        ("[::1]:8080", true, "any"),
        // Long hosts are lowercased on the heap.
        (&long_upper, false, "dot-suffix"),
    ];
    for (host, strip, expected) in cases {
        let got = rc.select_virtual_host(host, *strip).map(|v| &*v.name);
        assert_eq!(got, Some(*expected), "host {host:?} strip {strip}");
    }
}

#[test]
fn no_virtual_host_without_a_catch_all() {
    let rc = RouteConfig::new("rc", vec![vhost("exact", &["foo.com"], Vec::new())]);
    assert!(rc.select_virtual_host("bar.com", false).is_none());
    assert!(rc.select_virtual_host("foo.com:80", false).is_none());
    assert!(rc.select_virtual_host("foo.com:80", true).is_some());
}

#[test]
fn many_virtual_hosts() {
    let hosts: Vec<VirtualHost> = (0..5000)
        .map(|i| {
            let exact = format!("svc-{i}.example.com");
            let suffix = format!("*.ns-{i}.example.com");
            vhost(&format!("vh{i}"), &[&exact, &suffix], Vec::new())
        })
        .collect();
    let rc = RouteConfig::new("rc", hosts);
    assert_eq!(
        rc.select_virtual_host("svc-4321.example.com", false)
            .map(|v| &*v.name),
        Some("vh4321")
    );
    assert_eq!(
        rc.select_virtual_host("pod.ns-17.example.com:80", true)
            .map(|v| &*v.name),
        Some("vh17")
    );
    assert!(rc.select_virtual_host("nope.example.com", false).is_none());
}

#[test]
fn domain_index_builds_lazily_for_hand_built_configs() {
    let rc = RouteConfig {
        name: Arc::from("rc"),
        virtual_hosts: vec![vhost("a", &["a.com"], Vec::new())],
        response_headers_to_add: Vec::new(),
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_remove: Vec::new(),
        per_filter: Arc::from([]),
        domain_index: DomainIndex::default(),
    };
    assert!(!rc.domain_index.is_built());
    assert_eq!(
        rc.select_virtual_host("a.com", false).map(|v| &*v.name),
        Some("a")
    );
    assert!(rc.domain_index.is_built());
    // Derived data: equal whether built or not, and clones share the table.
    let fresh = RouteConfig::new("rc", rc.virtual_hosts.clone());
    assert_eq!(rc, fresh);
    assert!(rc.clone().domain_index.is_built());
    assert_eq!(
        format!("{:?}", rc.domain_index),
        "DomainIndex { built: true }"
    );
}

#[test]
fn strip_ports() {
    for (host, expected) in [
        ("a.com:80", "a.com"),
        ("a.com", "a.com"),
        ("a.com:", "a.com"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("10.0.0.1:443", "10.0.0.1"),
    ] {
        assert_eq!(strip_port(host), expected, "{host}");
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

#[test]
fn path_matching() {
    let sep = |p: &str| PathMatch::SeparatedPrefix(Arc::from(p));
    let exact_path = |p: &str| PathMatch::Exact(Arc::from(p));
    let re = |p: &str| PathMatch::Regex(Regex::new(p).expect("regex"));
    let cases: &[(PathMatch, bool, &str, Option<&str>, bool)] = &[
        (prefix("/api"), true, "/api/v1", None, true),
        (prefix("/api"), true, "/api", None, true),
        (prefix("/api"), true, "/apix", None, true),
        (prefix("/api"), true, "/ap", None, false),
        (prefix("/api"), true, "/API/v1", None, false),
        (prefix("/api"), false, "/API/v1", None, true),
        (prefix(""), true, "/anything", None, true),
        // A prefix reaching into the query compares with it, as Envoy does.
        (prefix("/a?x=1"), true, "/a", Some("x=1&y=2"), true),
        (prefix("/a?x=1"), true, "/a", Some("x=2"), false),
        (prefix("/a?x=1"), true, "/a", None, false),
        (prefix("/a?X=1"), false, "/a", Some("x=1"), true),
        (exact_path("/a"), true, "/a", Some("q=1"), true),
        (exact_path("/a"), true, "/a/", None, false),
        (exact_path("/a"), true, "/A", None, false),
        (exact_path("/a"), false, "/A", None, true),
        (re("/v[0-9]+/.*"), true, "/v1/users", None, true),
        (re("/v[0-9]+/.*"), true, "/v1", None, false),
        (re("/v[0-9]+"), true, "/v12/x", None, false),
        // case_sensitive does not apply to regexes.
        (re("/v[0-9]+"), false, "/V1", None, false),
        (sep("/api"), true, "/api", None, true),
        (sep("/api"), true, "/api/", None, true),
        (sep("/api"), true, "/api/x", Some("q"), true),
        (sep("/api"), true, "/apix", None, false),
        (sep("/api"), true, "/API/x", None, false),
        (sep("/api"), false, "/API/x", None, true),
    ];
    for (i, (matcher, case_sensitive, path, query, expected)) in cases.iter().enumerate() {
        assert_eq!(
            matcher.matches(path, *query, *case_sensitive),
            *expected,
            "case {i}: {matcher:?} cs={case_sensitive} {path:?} {query:?}"
        );
    }
}

#[test]
fn string_matching() {
    let cases: &[(StringPattern, bool, &str, bool)] = &[
        (exact("abc"), false, "abc", true),
        (exact("abc"), false, "ABC", false),
        (exact("abc"), true, "ABC", true),
        (exact(""), false, "", true),
        (StringPattern::Prefix(Arc::from("ab")), false, "abc", true),
        (StringPattern::Prefix(Arc::from("AB")), true, "abc", true),
        (
            StringPattern::Prefix(Arc::from("abcd")),
            false,
            "abc",
            false,
        ),
        (StringPattern::Suffix(Arc::from("bc")), false, "abc", true),
        (StringPattern::Suffix(Arc::from("BC")), true, "abc", true),
        (StringPattern::Suffix(Arc::from("BC")), false, "abc", false),
        (StringPattern::Contains(Arc::from("b")), false, "abc", true),
        (StringPattern::Contains(Arc::from("B")), true, "abc", true),
        (StringPattern::Contains(Arc::from("B")), false, "abc", false),
        (
            StringPattern::Contains(Arc::from("abcd")),
            true,
            "abc",
            false,
        ),
        (regex("a.c"), false, "abc", true),
        (regex("a.c"), false, "abcd", false),
        // ignore_case does not apply to regexes.
        (regex("a.c"), true, "ABC", false),
    ];
    for (i, (pattern, ic, value, expected)) in cases.iter().enumerate() {
        let m = string(pattern.clone(), *ic);
        assert_eq!(m.matches(value), *expected, "case {i}: {m:?} {value:?}");
    }
}

#[test]
fn header_matching() {
    let hm = |rule: HeaderMatchRule, invert: bool, missing_empty: bool| HeaderMatcher {
        name: HeaderMatchName::Header(HeaderName::from_static("x-h")),
        rule,
        invert,
        treat_missing_as_empty: missing_empty,
    };
    let s = |p| HeaderMatchRule::String(string(p, false));
    let range = |start, end| HeaderMatchRule::Range { start, end };
    let present = HeaderMatchRule::Present;
    let none: &[(&str, &[u8])] = &[];
    let one: &[(&str, &[u8])] = &[("x-h", b"a")];
    let two: &[(&str, &[u8])] = &[("x-h", b"a"), ("x-h", b"b"), ("other", b"z")];
    type Case<'a> = (HeaderMatcher, &'a [(&'a str, &'a [u8])], bool);
    let cases: Vec<Case<'_>> = vec![
        (hm(s(exact("a")), false, false), one, true),
        (hm(s(exact("b")), false, false), one, false),
        (hm(s(exact("a")), true, false), one, false),
        (hm(s(exact("b")), true, false), one, true),
        // An absent header fails a value rule even when inverted...
        (hm(s(exact("a")), false, false), none, false),
        (hm(s(exact("a")), true, false), none, false),
        // ...unless it is treated as empty.
        (hm(s(exact("")), false, true), none, true),
        (hm(s(exact("a")), true, true), none, true),
        (hm(s(exact("a")), false, true), none, false),
        (hm(present(true), false, false), one, true),
        (hm(present(true), false, false), none, false),
        (hm(present(false), false, false), none, true),
        (hm(present(false), false, false), one, false),
        (hm(present(true), true, false), none, true),
        (hm(present(true), true, false), one, false),
        // Several values are joined with ','.
        (hm(s(exact("a,b")), false, false), two, true),
        (hm(s(exact("a")), false, false), two, false),
        (hm(s(regex("a,.")), false, false), two, true),
        (hm(range(1, 10), false, false), &[("x-h", b"5")], true),
        (hm(range(1, 10), false, false), &[("x-h", b"+5")], true),
        (hm(range(1, 10), false, false), &[("x-h", b"10")], false),
        (hm(range(1, 10), false, false), &[("x-h", b"1")], true),
        (hm(range(-10, 0), false, false), &[("x-h", b"-1")], true),
        (hm(range(-10, 0), true, false), &[("x-h", b"-1")], false),
        (hm(range(1, 10), false, false), &[("x-h", b"5x")], false),
        (hm(range(1, 10), false, false), &[("x-h", b"")], false),
        (hm(range(1, 10), true, true), none, true),
        (
            hm(
                s(StringPattern::Contains(Arc::from("\u{fffd}"))),
                false,
                false,
            ),
            &[("x-h", b"a\xffb")],
            true,
        ),
    ];
    for (i, (matcher, pairs, expected)) in cases.iter().enumerate() {
        assert_eq!(
            matcher.matches(&headers(pairs)),
            *expected,
            "case {i}: {matcher:?} {pairs:?}"
        );
    }
}

#[test]
fn authority_matching_reads_the_host() {
    let matcher = HeaderMatcher {
        name: HeaderMatchName::Authority,
        rule: HeaderMatchRule::String(string(StringPattern::Suffix(Arc::from(".com")), true)),
        invert: false,
        treat_missing_as_empty: false,
    };
    let map = HeaderMap::new();
    let req = |host| RequestView {
        host,
        path: "/",
        query: None,
        headers: &map,
    };
    assert!(matcher.matches_request(&req("a.COM")));
    assert!(!matcher.matches_request(&req("a.org")));
    // A header map never holds pseudo-headers: absent there.
    assert!(!matcher.matches(&headers(&[("host", b"a.com")])));
}

#[test]
fn query_parameter_matching() {
    let qp = |name: &str, value: Option<StringPattern>| QueryParameterMatcher {
        name: Arc::from(name),
        value: value.map(|p| string(p, false)),
    };
    let cases: &[(QueryParameterMatcher, Option<&str>, bool)] = &[
        (qp("debug", None), Some("a=1&debug"), true),
        (qp("debug", None), Some("debug=0"), true),
        (qp("debug", None), Some("debugx=1"), false),
        (qp("debug", None), None, false),
        (qp("debug", None), Some(""), false),
        (qp("v", Some(exact("1"))), Some("v=1&v=2"), true),
        // The first occurrence decides.
        (qp("v", Some(exact("1"))), Some("v=2&v=1"), false),
        (qp("v", Some(exact(""))), Some("v"), true),
        (qp("v", Some(exact("a=b"))), Some("v=a=b"), true),
        // Nothing is percent-decoded.
        (qp("q", Some(exact("a b"))), Some("q=a%20b"), false),
        (qp("q", Some(exact("a%20b"))), Some("q=a%20b"), true),
        (qp("n", Some(regex("[0-9]+"))), Some("x&n=42"), true),
        (qp("n", Some(regex("[0-9]+"))), Some("n=4a"), false),
    ];
    for (i, (matcher, query, expected)) in cases.iter().enumerate() {
        assert_eq!(
            matcher.matches(*query),
            *expected,
            "case {i}: {matcher:?} {query:?}"
        );
    }
}

#[test]
fn first_matching_route_wins() {
    let with_header = RouteMatch {
        headers: vec![HeaderMatcher {
            name: HeaderMatchName::Header(HeaderName::from_static("x-canary")),
            rule: HeaderMatchRule::Present(true),
            invert: false,
            treat_missing_as_empty: false,
        }],
        ..path_only(prefix("/"))
    };
    let with_query = RouteMatch {
        query_parameters: vec![QueryParameterMatcher {
            name: Arc::from("v"),
            value: Some(string(exact("2"), false)),
        }],
        ..path_only(prefix("/api"))
    };
    let rc = RouteConfig::new(
        "rc",
        vec![vhost(
            "vh",
            &["*"],
            vec![
                route("canary", with_header),
                route("api-v2", with_query),
                route("api", path_only(prefix("/api"))),
                route("health", path_only(PathMatch::Exact(Arc::from("/healthz")))),
            ],
        )],
    );
    let plain = HeaderMap::new();
    let canary = headers(&[("x-canary", b"1")]);
    let cases: &[(&str, Option<&str>, &HeaderMap, Option<&str>)] = &[
        ("/api/x", None, &canary, Some("canary")),
        ("/api/x", Some("v=2"), &plain, Some("api-v2")),
        ("/api/x", Some("v=1"), &plain, Some("api")),
        ("/healthz", None, &plain, Some("health")),
        ("/other", None, &plain, None),
    ];
    for (path, query, headers, expected) in cases {
        let req = RequestView {
            host: "any.example",
            path,
            query: *query,
            headers,
        };
        let got = rc.select(&req, false).map(|(_, r)| &*r.name);
        assert_eq!(got, *expected, "{path} {query:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted clusters

fn weighted(entries: &[(&str, u32)]) -> ClusterTarget {
    ClusterTarget::Weighted {
        clusters: entries
            .iter()
            .map(|(name, weight)| WeightedCluster {
                name: Arc::from(*name),
                weight: *weight,
                request_headers_to_add: Vec::new(),
                request_headers_to_remove: Vec::new(),
                response_headers_to_add: Vec::new(),
                response_headers_to_remove: Vec::new(),
                host_rewrite: None,
            })
            .collect(),
        total: entries.iter().map(|(_, w)| u64::from(*w)).sum(),
    }
}

fn picked(target: &ClusterTarget, random: u64) -> &str {
    target.pick(random).map_or("<none>", |p| &**p.name)
}

#[test]
fn weighted_pick_boundaries() {
    let t = weighted(&[("a", 1), ("b", 2), ("c", 3)]);
    for (random, expected) in [
        (0, "a"),
        (1, "b"),
        (2, "b"),
        (3, "c"),
        (5, "c"),
        (6, "a"),
        (7, "b"),
        // 2^64 - 1 ≡ 3 (mod 6)
        (u64::MAX, "c"),
    ] {
        assert_eq!(picked(&t, random), expected, "random {random}");
    }
    let p = t.pick(4).expect("picked");
    assert_eq!(p.weighted.map(|w| w.weight), Some(3));
}

#[test]
fn weighted_pick_distribution() {
    let t = weighted(&[("a", 10), ("b", 30), ("c", 60)]);
    let mut counts = [0u32; 3];
    for random in 0..10_000u64 {
        match picked(&t, random.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            "a" => counts[0] += 1,
            "b" => counts[1] += 1,
            "c" => counts[2] += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Every residue class is hit equally often over a full cycle of 100 consecutive values.
    let mut exact = [0u32; 3];
    for random in 0..100u64 {
        let i = ["a", "b", "c"]
            .iter()
            .position(|n| *n == picked(&t, random))
            .expect("known");
        exact[i] += 1;
    }
    assert_eq!(exact, [10, 30, 60]);
    for (got, want) in counts.iter().zip([1000u32, 3000, 6000]) {
        assert!(got.abs_diff(want) < 300, "{counts:?}");
    }
}

#[test]
fn single_and_degenerate_targets() {
    let single = ClusterTarget::Single(Arc::from("only"));
    let p = single.pick(12345).expect("picked");
    assert_eq!((&**p.name, p.weighted.is_none()), ("only", true));
    assert!(weighted(&[]).pick(1).is_none());
    // A hand-built zero total still picks something.
    let zero = ClusterTarget::Weighted {
        clusters: match weighted(&[("a", 0), ("b", 0)]) {
            ClusterTarget::Weighted { clusters, .. } => clusters,
            ClusterTarget::Single(_) => unreachable!(),
        },
        total: 0,
    };
    assert_eq!(picked(&zero, 99), "b");
}

// ---------------------------------------------------------------------------------------------
// Rewrites

fn with_prefix_rewrite(p: &str) -> ForwardAction {
    ForwardAction {
        prefix_rewrite: Some(Arc::from(p)),
        ..forward("c")
    }
}

fn with_regex_rewrite(pattern: &str, substitution: &str) -> ForwardAction {
    ForwardAction {
        regex_rewrite: Some(RegexRewrite {
            pattern: UnanchoredRegex(regex::Regex::new(pattern).expect("regex")),
            substitution: Arc::from(substitution),
        }),
        ..forward("c")
    }
}

#[test]
fn path_rewrites() {
    let sep = PathMatch::SeparatedPrefix(Arc::from("/api"));
    let exact_old = PathMatch::Exact(Arc::from("/old"));
    let any_re = PathMatch::Regex(Regex::new("/.*").expect("regex"));
    let cases: &[(ForwardAction, &PathMatch, &str, Option<&str>)] = &[
        (
            with_prefix_rewrite("/v2"),
            &prefix("/api"),
            "/api/users?x=1",
            Some("/v2/users?x=1"),
        ),
        (
            with_prefix_rewrite("/"),
            &prefix("/api/"),
            "/api/users",
            Some("/users"),
        ),
        (
            with_prefix_rewrite("/v2"),
            &prefix("/api"),
            "/API/users",
            Some("/v2/users"),
        ),
        (with_prefix_rewrite("/v2"), &sep, "/api", Some("/v2")),
        (
            with_prefix_rewrite("/v2"),
            &sep,
            "/api/x?y",
            Some("/v2/x?y"),
        ),
        (
            with_prefix_rewrite("/new"),
            &exact_old,
            "/old?q",
            Some("/new?q"),
        ),
        (
            with_prefix_rewrite("/x"),
            &any_re,
            "/anything/here?k=v",
            Some("/x?k=v"),
        ),
        // A prefix reaching into the query replaces that part too.
        (
            with_prefix_rewrite("/v2"),
            &prefix("/a?b"),
            "/a?bc",
            Some("/v2c"),
        ),
        (
            with_regex_rewrite("^/old/(.*)$", "/new/\\1"),
            &prefix("/"),
            "/old/a/b?q=1",
            Some("/new/a/b?q=1"),
        ),
        (
            with_regex_rewrite("o", "0"),
            &prefix("/"),
            "/foo/boo?o=o",
            Some("/f00/b00?o=o"),
        ),
        (
            with_regex_rewrite("(a)(b)", "\\2\\1\\0"),
            &prefix("/"),
            "/ab",
            Some("/baab"),
        ),
        (
            with_regex_rewrite("x", "\\\\"),
            &prefix("/"),
            "/x",
            Some("/\\"),
        ),
        (with_regex_rewrite("zzz", "y"), &prefix("/"), "/abc", None),
        (forward("c"), &prefix("/"), "/abc", None),
    ];
    for (i, (action, matched, input, expected)) in cases.iter().enumerate() {
        assert_eq!(
            action.rewrite_path(matched, input).as_deref(),
            *expected,
            "case {i}: {input}"
        );
    }
}
