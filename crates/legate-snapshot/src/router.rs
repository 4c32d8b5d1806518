//! Route selection on the validated model, per request, with Envoy's semantics.
//!
//! - [`RouteConfig::select_virtual_host`]: exact domain, then the longest suffix wildcard
//!   (`*.foo.com`, `*-bar.foo.com`), then the longest prefix wildcard (`foo.*`), then `*`.
//!   A wildcard stands for at least one character. Hosts compare ASCII case-insensitively.
//! - [`VirtualHost::select_route`]: the first route whose path, headers and query parameters
//!   all match.
//! - [`ClusterTarget::pick`]: weighted choice from a random number the caller supplies.
//! - [`ForwardAction::rewrite_path`]: `prefix_rewrite` / `regex_rewrite`.
//!
//! Selection does not allocate, except to join a header that appears more than once (Envoy
//! matches such headers on their values joined with `,`) and to lowercase a host longer than
//! 256 bytes that has uppercase letters. Rewrites allocate the new path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use http::HeaderMap;

use crate::{
    ClusterTarget, ForwardAction, HeaderMatchName, HeaderMatchRule, HeaderMatcher, PathMatch,
    QueryParameterMatcher, Route, RouteConfig, RouteMatch, StringMatcher, StringPattern,
    VirtualHost, WeightedCluster,
};

/// What route matching reads from a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Host / `:authority`, as received (port included).
    pub host: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl RouteConfig {
    /// A route configuration with no header mutations, its domain index built at once.
    pub fn new(name: impl Into<Arc<str>>, virtual_hosts: Vec<VirtualHost>) -> Self {
        let domain_index = DomainIndex::default();
        domain_index.table(&virtual_hosts);
        RouteConfig {
            name: name.into(),
            virtual_hosts,
            response_headers_to_add: Vec::new(),
            request_headers_to_add: Vec::new(),
            request_headers_to_remove: Vec::new(),
            response_headers_to_remove: Vec::new(),
            per_filter: Arc::from([]),
            domain_index,
        }
    }

    /// The virtual host serving `host`. With `strip_port` (HCM `strip_any_host_port`) a
    /// `:port` suffix is ignored; without it the port is part of the host, so `foo.com:8080`
    /// matches only a `foo.com:8080` domain or a wildcard.
    pub fn select_virtual_host(&self, host: &str, strip_port: bool) -> Option<&VirtualHost> {
        let host = if strip_port {
            self::strip_port(host)
        } else {
            host
        };
        let table = self.domain_index.table(&self.virtual_hosts);
        let i = with_ascii_lowercase(host.as_bytes(), |h| table.find(h))?;
        self.virtual_hosts.get(i)
    }

    /// The virtual host and route for a request.
    pub fn select(
        &self,
        req: &RequestView<'_>,
        strip_port: bool,
    ) -> Option<(&VirtualHost, &Route)> {
        let vhost = self.select_virtual_host(req.host, strip_port)?;
        Some((vhost, vhost.select_route(req)?))
    }
}

/// `host` without a trailing `:port`, as Envoy strips it: the last `:` starts the port unless
/// a `]` (closing an IPv6 literal) comes after it.
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon) if host.rfind(']').is_none_or(|close| close < colon) => &host[..colon],
        _ => host,
    }
}

/// Run `f` on `s` lowercased (ASCII), on the stack unless it is long and needs changing.
fn with_ascii_lowercase<R>(s: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 256;
    if !s.iter().any(u8::is_ascii_uppercase) {
        return f(s);
    }
    if s.len() <= STACK {
        let mut buf = [0u8; STACK];
        let lower = &mut buf[..s.len()];
        lower.copy_from_slice(s);
        lower.make_ascii_lowercase();
        f(lower)
    } else {
        f(&s.to_ascii_lowercase())
    }
}

/// Domain lookup table for one [`RouteConfig`], derived from its virtual hosts.
///
/// It lives inside `RouteConfig` so a snapshot carries it, but it is derived data: it compares
/// equal to any other index and is not serialized, which keeps `RouteConfig: Eq + Serialize`
/// meaning "same configuration". It is built once, by [`RouteConfig::new`] (as validation
/// does) or on the first lookup; clones share it.
#[derive(Clone, Default)]
pub struct DomainIndex {
    table: OnceLock<Arc<DomainTable>>,
}

impl DomainIndex {
    /// Whether the table has been built yet.
    pub fn is_built(&self) -> bool {
        self.table.get().is_some()
    }

    fn table(&self, vhosts: &[VirtualHost]) -> &DomainTable {
        self.table
            .get_or_init(|| Arc::new(DomainTable::new(vhosts)))
    }
}

impl PartialEq for DomainIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DomainIndex {}

impl fmt::Debug for DomainIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainIndex")
            .field("built", &self.is_built())
            .finish()
    }
}

/// Lowercase domains → virtual host index. Wildcards are grouped by the length of their
/// fixed part, longest first, so a lookup probes one hash map per distinct length.
struct DomainTable {
    exact: HashMap<Box<[u8]>, usize>,
    /// `*suffix` domains; the key is `suffix`.
    suffixes: Vec<Wildcards>,
    /// `prefix*` domains; the key is `prefix`.
    prefixes: Vec<Wildcards>,
    /// The `*` domain.
    any: Option<usize>,
}

struct Wildcards {
    len: usize,
    by_key: HashMap<Box<[u8]>, usize>,
}

impl DomainTable {
    fn new(vhosts: &[VirtualHost]) -> Self {
        let mut exact = HashMap::new();
        let mut suffixes: BTreeMap<usize, HashMap<Box<[u8]>, usize>> = BTreeMap::new();
        let mut prefixes: BTreeMap<usize, HashMap<Box<[u8]>, usize>> = BTreeMap::new();
        let mut any = None;
        for (i, vh) in vhosts.iter().enumerate() {
            for domain in &vh.domains {
                let d = domain.to_ascii_lowercase().into_bytes();
                // Validation refuses duplicates; for hand-built configs the first one wins.
                if d == b"*" {
                    any.get_or_insert(i);
                } else if let Some(suffix) = d.strip_prefix(b"*") {
                    suffixes
                        .entry(suffix.len())
                        .or_default()
                        .entry(suffix.into())
                        .or_insert(i);
                } else if let Some(prefix) = d.strip_suffix(b"*") {
                    prefixes
                        .entry(prefix.len())
                        .or_default()
                        .entry(prefix.into())
                        .or_insert(i);
                } else {
                    exact.entry(d.into_boxed_slice()).or_insert(i);
                }
            }
        }
        let longest_first = |m: BTreeMap<usize, HashMap<Box<[u8]>, usize>>| {
            m.into_iter()
                .rev()
                .map(|(len, by_key)| Wildcards { len, by_key })
                .collect()
        };
        DomainTable {
            exact,
            suffixes: longest_first(suffixes),
            prefixes: longest_first(prefixes),
            any,
        }
    }

    /// `host` is lowercase.
    fn find(&self, host: &[u8]) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        // `<` not `<=`: the wildcard must stand for at least one character.
        for w in self.suffixes.iter().filter(|w| w.len < host.len()) {
            if let Some(&i) = w.by_key.get(&host[host.len() - w.len..]) {
                return Some(i);
            }
        }
        for w in self.prefixes.iter().filter(|w| w.len < host.len()) {
            if let Some(&i) = w.by_key.get(&host[..w.len]) {
                return Some(i);
            }
        }
        self.any
    }
}

impl VirtualHost {
    /// The first route matching the request.
    pub fn select_route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

impl RouteMatch {
    /// Path, every header matcher and every query parameter matcher.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path, req.query, self.case_sensitive)
            && self.headers.iter().all(|h| h.matches_request(req))
            && self.query_parameters.iter().all(|q| q.matches(req.query))
    }
}

impl PathMatch {
    /// `path` has no query string; `case_sensitive` applies to all but regexes. A prefix is
    /// compared with the path and query together, as Envoy does (it matters only for a prefix
    /// that contains `?`).
    pub fn matches(&self, path: &str, query: Option<&str>, case_sensitive: bool) -> bool {
        let path = path.as_bytes();
        match self {
            PathMatch::Prefix(p) => {
                let p = p.as_bytes();
                if p.len() <= path.len() {
                    return starts_with(path, p, !case_sensitive);
                }
                // The prefix runs past the path: compare the rest with `?query`.
                let (head, tail) = p.split_at(path.len());
                let Some(query) = query else {
                    return false;
                };
                eq_bytes(path, head, !case_sensitive)
                    && tail.first() == Some(&b'?')
                    && starts_with(query.as_bytes(), &tail[1..], !case_sensitive)
            }
            PathMatch::Exact(p) => eq_bytes(path, p.as_bytes(), !case_sensitive),
            PathMatch::Regex(r) => std::str::from_utf8(path).is_ok_and(|p| r.is_match(p)),
            PathMatch::SeparatedPrefix(p) => {
                let p = p.as_bytes();
                starts_with(path, p, !case_sensitive)
                    && (path.len() == p.len() || path[p.len()] == b'/')
            }
        }
    }
}

fn eq_bytes(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

fn starts_with(s: &[u8], prefix: &[u8], ignore_case: bool) -> bool {
    s.len() >= prefix.len() && eq_bytes(&s[..prefix.len()], prefix, ignore_case)
}

fn ends_with(s: &[u8], suffix: &[u8], ignore_case: bool) -> bool {
    s.len() >= suffix.len() && eq_bytes(&s[s.len() - suffix.len()..], suffix, ignore_case)
}

impl StringMatcher {
    /// Envoy's `StringMatcher`: `ignore_case` is ASCII-only and does not apply to regexes.
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        let v = value.as_bytes();
        match &self.pattern {
            StringPattern::Exact(p) => eq_bytes(v, p.as_bytes(), ic),
            StringPattern::Prefix(p) => starts_with(v, p.as_bytes(), ic),
            StringPattern::Suffix(p) => ends_with(v, p.as_bytes(), ic),
            StringPattern::Contains(p) if ic => {
                let p = p.as_bytes();
                p.is_empty() || v.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p))
            }
            StringPattern::Contains(p) => value.contains(&**p),
            StringPattern::Regex(r) => r.is_match(value),
        }
    }
}

impl HeaderMatcher {
    /// Match against a header map. A header present several times is matched on its values
    /// joined with `,`; a value that is not UTF-8 is read lossily.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let HeaderMatchName::Header(name) = &self.name else {
            // `:authority` is not in a header map (requests match it through
            // `matches_request`).
            return self.matches_value(None);
        };
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return self.matches_value(None);
        };
        let Some(second) = values.next() else {
            return self.matches_value(Some(&String::from_utf8_lossy(first.as_bytes())));
        };
        let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
        for v in std::iter::once(second).chain(values) {
            joined.push(',');
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        self.matches_value(Some(&joined))
    }

    /// Match against a request: `:authority` reads the request's host, other names its
    /// headers.
    pub fn matches_request(&self, req: &RequestView<'_>) -> bool {
        match &self.name {
            HeaderMatchName::Authority => self.matches_value(Some(req.host)),
            HeaderMatchName::Header(_) => self.matches(req.headers),
        }
    }

    /// Match against the header's value, `None` when absent. As in Envoy: a presence rule
    /// compares presence (then `invert`); any other rule fails on an absent header unless
    /// `treat_missing_as_empty`, whatever `invert` says.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let value = match (&self.rule, value) {
            (HeaderMatchRule::Present(want), v) => return (v.is_some() == *want) != self.invert,
            (_, Some(v)) => v,
            (_, None) if self.treat_missing_as_empty => "",
            (_, None) => return false,
        };
        let matched = match &self.rule {
            HeaderMatchRule::String(m) => m.matches(value),
            HeaderMatchRule::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
            }
            HeaderMatchRule::Present(_) => false,
        };
        matched != self.invert
    }
}

impl QueryParameterMatcher {
    /// Envoy's rule: the query splits at `&`, each parameter at its first `=` (none means an
    /// empty value); nothing is percent-decoded; the first parameter with the name decides.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        let value = query
            .split('&')
            .map(|param| param.split_once('=').unwrap_or((param, "")))
            .find(|(key, _)| *key == &*self.name)
            .map(|(_, value)| value);
        match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v),
        }
    }
}

/// The cluster a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickedCluster<'a> {
    pub name: &'a Arc<str>,
    /// The weighted entry (its header mutations and host rewrite apply), if any.
    pub weighted: Option<&'a WeightedCluster>,
}

impl ClusterTarget {
    /// Choose the cluster for a request. `random` is any uniformly distributed number; with
    /// weights, as in Envoy, `random % total` falls in the entry whose cumulative range covers
    /// it. `None` only for an empty weighted list, which validation never produces.
    pub fn pick(&self, random: u64) -> Option<PickedCluster<'_>> {
        match self {
            ClusterTarget::Single(name) => Some(PickedCluster {
                name,
                weighted: None,
            }),
            ClusterTarget::Weighted { clusters, total } => {
                let last = clusters.last()?;
                let point = random.checked_rem(*total).unwrap_or(0);
                let mut end = 0u64;
                let chosen = clusters
                    .iter()
                    .find(|c| {
                        end += u64::from(c.weight);
                        point < end
                    })
                    .unwrap_or(last);
                Some(PickedCluster {
                    name: &chosen.name,
                    weighted: Some(chosen),
                })
            }
        }
    }
}

impl ForwardAction {
    /// The new path and query after `prefix_rewrite` or `regex_rewrite`, or `None` when
    /// neither applies. `matched` is the route's path matcher; `path_and_query` the request's.
    ///
    /// `prefix_rewrite` replaces the matched prefix (for `prefix` and `path_separated_prefix`)
    /// or the whole path (for `path` and `safe_regex`). `regex_rewrite` replaces every match in
    /// the path. The query string is kept.
    pub fn rewrite_path(&self, matched: &PathMatch, path_and_query: &str) -> Option<String> {
        let (path, query) = match path_and_query.find('?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, ""),
        };
        let new_path = if let Some(rewrite) = &self.prefix_rewrite {
            match matched {
                PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => {
                    if p.len() > path.len() {
                        // A prefix running into the query replaces part of it too.
                        let rest = path_and_query.get(p.len()..)?;
                        return Some(format!("{rewrite}{rest}"));
                    }
                    format!("{rewrite}{}", path.get(p.len()..)?)
                }
                PathMatch::Exact(_) | PathMatch::Regex(_) => rewrite.to_string(),
            }
        } else if let Some(rr) = &self.regex_rewrite {
            let re = &rr.pattern.0;
            let mut out = String::with_capacity(path.len() + rr.substitution.len());
            let mut last = 0;
            let mut any = false;
            for caps in re.captures_iter(path) {
                let Some(m) = caps.get(0) else { continue };
                any = true;
                out.push_str(&path[last..m.start()]);
                expand_substitution(&rr.substitution, &caps, &mut out);
                last = m.end();
            }
            if !any {
                return None;
            }
            out.push_str(&path[last..]);
            out
        } else {
            return None;
        };
        Some(new_path + query)
    }
}

/// An RE2 rewrite string: `\0`..`\9` insert capture groups, `\\` a backslash.
fn expand_substitution(substitution: &str, caps: &regex::Captures<'_>, out: &mut String) {
    let mut chars = substitution.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(d @ '0'..='9') => {
                if let Some(m) = caps.get(usize::from(d as u8 - b'0')) {
                    out.push_str(m.as_str());
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
}

#[cfg(test)]
mod tests;
