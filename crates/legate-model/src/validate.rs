//! Semantic checks on a parsed [`Mesh`]: everything serde cannot see.
//!
//! Every check that Envoy (or legate's snapshot validator) would refuse, or that would make
//! a configuration silently do nothing (a domain with a port on listeners that strip ports,
//! a redirect that changes nothing), is reported here with the field path the author wrote,
//! so mistakes surface at load time with a line number rather than as a NACK.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::locate::Locator;
use policies::ClusterPolicies;

mod policies;
mod tls;
use crate::{
    COLLECTOR_CLUSTER, ConfigError, DirectResponse, Discovery, Endpoint, Forward, HeaderMatch,
    HeaderToAdd, Listener, ListenerProtocol, Mesh, Problem, QueryMatch, Redirect, Route,
    RouteConfig, RouteMatch, Service, VirtualHost,
};

/// Envoy's default `max_direct_response_body_size_bytes`.
const MAX_DIRECT_RESPONSE_BODY: usize = 4096;
/// The largest `google.protobuf.Duration` (10 000 years).
const MAX_DURATION_SECS: u64 = 315_576_000_000;

impl Mesh {
    /// Every semantic problem, with field paths relative to the mesh and no positions.
    ///
    /// For meshes built in code; for meshes read from a text use [`validate`] (or [`load`]),
    /// which adds lines and columns.
    ///
    /// [`load`]: crate::load
    pub fn check(&self) -> Result<(), Vec<Problem>> {
        let generated = crate::services::generate(self);
        let mut c = Checker {
            mesh: self,
            generated_route_config: generated.route_config.map(|rc| rc.name),
            generated_clusters: generated.clusters.into_iter().map(|c| c.name).collect(),
            problems: Vec::new(),
        };
        c.mesh();
        if c.problems.is_empty() {
            Ok(())
        } else {
            Err(c.problems)
        }
    }
}

/// Check a mesh parsed from `text` (the whole document), with every error located in it.
pub fn validate(mesh: &Mesh, text: &str, source: &str) -> Result<(), Vec<ConfigError>> {
    validate_at(mesh, text, source, "")
}

/// Like [`validate`], for a mesh found at field path `at` inside a bigger document (e.g.
/// `mesh` in the `legate` bootstrap file). Error paths start with `at`.
pub fn validate_at(
    mesh: &Mesh,
    text: &str,
    source: &str,
    at: &str,
) -> Result<(), Vec<ConfigError>> {
    let Err(problems) = mesh.check() else {
        return Ok(());
    };
    let locator = Locator::new(text);
    Err(problems
        .into_iter()
        .map(|p| {
            let path = match (at.is_empty(), p.path.is_empty()) {
                (true, _) => p.path,
                (false, true) => at.to_owned(),
                (false, false) if p.path.starts_with('[') => format!("{at}{}", p.path),
                (false, false) => format!("{at}.{}", p.path),
            };
            let (line, column) = locator.position(&path);
            ConfigError {
                source: source.to_owned(),
                line,
                column,
                path,
                message: p.message,
            }
        })
        .collect())
}

struct Checker<'m> {
    mesh: &'m Mesh,
    /// What the services layer adds, which low-level listeners and routes may name.
    generated_route_config: Option<String>,
    generated_clusters: HashSet<String>,
    problems: Vec<Problem>,
}

impl<'m> Checker<'m> {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn mesh(&mut self) {
        let mesh = self.mesh;
        self.unique_names(
            "listeners",
            "listener",
            mesh.listeners.iter().map(|l| &l.name[..]),
        );
        let mut bound: HashMap<SocketAddr, &str> = HashMap::new();
        for (i, l) in mesh.listeners.iter().enumerate() {
            self.listener(&format!("listeners[{i}]"), l, &mut bound);
        }
        self.unique_names(
            "route_configs",
            "route config",
            mesh.route_configs.iter().map(|r| &r.name[..]),
        );
        for (i, rc) in mesh.route_configs.iter().enumerate() {
            self.route_config(&format!("route_configs[{i}]"), rc);
        }
        self.unique_names(
            "clusters",
            "cluster",
            mesh.clusters.iter().map(|c| &c.name[..]),
        );
        for (i, c) in mesh.clusters.iter().enumerate() {
            if c.name == COLLECTOR_CLUSTER {
                self.report(format!("clusters[{i}].name"), reserved("cluster"));
            }
            self.cluster(&format!("clusters[{i}]"), c);
        }
        self.services();
        self.secrets();
        self.proxy(&bound);
        self.telemetry();
    }

    /// `telemetry.tracing`: the collector is a `host:port` (it becomes the endpoint of the
    /// collector's cluster, static for an `ip:port`, re-resolved for a name).
    fn telemetry(&mut self) {
        let Some(t) = self
            .mesh
            .telemetry
            .as_ref()
            .and_then(|t| t.tracing.as_ref())
        else {
            return;
        };
        if let Err(m) = check_dns_address(&t.collector) {
            self.report("telemetry.tracing.collector", m);
        }
    }

    /// Names must be non-empty and unique; the duplicate is reported, naming the first.
    fn unique_names<'a>(&mut self, list: &str, what: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            let path = format!("{list}[{i}].name");
            if name.is_empty() {
                self.report(path, format!("{what} name is empty"));
            } else if let Some(first) = seen.get(name) {
                self.report(
                    path,
                    format!("duplicate {what} name `{name}` (first at index {first})"),
                );
            } else {
                seen.insert(name, i);
            }
        }
    }

    fn listener<'a>(
        &mut self,
        path: &str,
        l: &'a Listener,
        bound: &mut HashMap<SocketAddr, &'a str>,
    ) {
        match l.address.parse::<SocketAddr>() {
            Err(_) => self.report(
                format!("{path}.address"),
                format!("`{}` is not an ip:port address", l.address),
            ),
            Ok(addr) if addr.port() != 0 => {
                if let Some(other) = bound.insert(addr, &l.name) {
                    self.report(
                        format!("{path}.address"),
                        format!("address {addr} is also used by listener `{other}`"),
                    );
                }
            }
            Ok(_) => {}
        }
        if !self
            .mesh
            .route_configs
            .iter()
            .any(|rc| rc.name == l.route_config)
            && self.generated_route_config.as_ref() != Some(&l.route_config)
        {
            self.report(
                format!("{path}.route_config"),
                format!("unknown route config `{}`", l.route_config),
            );
        }
        self.duration(
            &format!("{path}.stream_idle_timeout"),
            l.stream_idle_timeout,
        );
        self.duration(
            &format!("{path}.request_headers_timeout"),
            l.request_headers_timeout,
        );
        self.max_connections(&format!("{path}.max_connections"), l.max_connections);
    }

    fn max_connections(&mut self, path: &str, n: Option<u64>) {
        if n == Some(0) {
            self.report(path, "must be at least 1 (leave it out for no limit)");
        }
    }

    fn route_config(&mut self, path: &str, rc: &RouteConfig) {
        self.unique_names(
            &format!("{path}.virtual_hosts"),
            "virtual host",
            rc.virtual_hosts.iter().map(|v| &v.name[..]),
        );
        // Envoy refuses a domain that appears twice in one route configuration.
        let mut domains: HashMap<String, &str> = HashMap::new();
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtual_hosts[{i}]");
            self.virtual_host(&vpath, vh);
            for (j, d) in vh.domains.iter().enumerate() {
                if let Some(other) = domains.insert(d.to_ascii_lowercase(), &vh.name) {
                    self.report(
                        format!("{vpath}.domains[{j}]"),
                        format!("domain `{d}` is also in virtual host `{other}`"),
                    );
                }
            }
        }
    }

    fn virtual_host(&mut self, path: &str, vh: &VirtualHost) {
        if vh.domains.is_empty() {
            self.report(
                format!("{path}.domains"),
                "a virtual host needs at least one domain (`*` matches any)",
            );
        }
        for (i, d) in vh.domains.iter().enumerate() {
            if let Err(message) = check_domain(d) {
                self.report(format!("{path}.domains[{i}]"), message);
            }
        }
        self.headers_to_add(
            &format!("{path}.request_headers_to_add"),
            &vh.request_headers_to_add,
        );
        if let Some(r) = &vh.retries {
            self.retries(&format!("{path}.retries"), r);
        }
        for (i, r) in vh.routes.iter().enumerate() {
            self.route(&format!("{path}.routes[{i}]"), r);
        }
    }

    fn route(&mut self, path: &str, r: &Route) {
        let is_regex = self.route_match(&format!("{path}.match"), &r.matcher);
        let actions: Vec<&str> = [
            ("forward", r.forward.is_some()),
            ("direct_response", r.direct_response.is_some()),
            ("redirect", r.redirect.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match actions[..] {
            [] => self.report(
                path,
                "a route needs one of `forward`, `direct_response`, `redirect`",
            ),
            [_] => {}
            _ => self.report(
                path,
                format!("a route takes one action, found {}", backticked(&actions)),
            ),
        }
        if let Some(f) = &r.forward {
            self.forward(&format!("{path}.forward"), f, is_regex);
        }
        if let Some(rl) = &r.rate_limit {
            self.rate_limit(&format!("{path}.rate_limit"), rl);
        }
        if let Some(f) = &r.fault {
            self.fault(&format!("{path}.fault"), f);
        }
        if let Some(c) = &r.credentials {
            self.credentials(&format!("{path}.credentials"), c);
        }
        if let Some(d) = &r.direct_response {
            self.direct_response(&format!("{path}.direct_response"), d);
        }
        if let Some(rd) = &r.redirect {
            self.redirect(&format!("{path}.redirect"), rd, is_regex);
        }
        self.headers_to_add(
            &format!("{path}.request_headers_to_add"),
            &r.request_headers_to_add,
        );
    }

    /// Returns whether the route matches by regex (prefix rewrites cannot apply then).
    fn route_match(&mut self, path: &str, m: &RouteMatch) -> bool {
        let set: Vec<(&str, &str)> = [
            ("prefix", &m.prefix),
            ("path", &m.path),
            ("regex", &m.regex),
            ("separated_prefix", &m.separated_prefix),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_deref().map(|v| (name, v)))
        .collect();
        if set.len() > 1 {
            let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
            self.report(
                path,
                format!("a match takes one path rule, found {}", backticked(&names)),
            );
        }
        for &(name, value) in &set {
            let field = format!("{path}.{name}");
            match name {
                "regex" if value.is_empty() => self.report(field, "regex is empty"),
                "regex" => {
                    // The check the proxy applies to `safe_regex` (validation of the
                    // pattern on its own, size limits), so the mesh refuses what xDS would.
                    if let Err(e) = legate_snapshot::Regex::new(value) {
                        self.report(field, e.to_string());
                    }
                }
                _ if !value.starts_with('/') => {
                    self.report(field, format!("`{value}` does not start with `/`"));
                }
                _ if value.contains(['?', '#']) => self.report(
                    field,
                    format!("`{value}` contains `?` or `#`, which never occur in a path"),
                ),
                "separated_prefix" if value.len() > 1 && value.ends_with('/') => {
                    self.report(
                        field,
                        format!(
                            "`{value}` ends with `/`; a separated prefix is matched up to a \
                             `/`, so write it without one (or use `prefix`)"
                        ),
                    );
                }
                _ => {}
            }
        }
        for (i, h) in m.headers.iter().enumerate() {
            self.header_match(&format!("{path}.headers[{i}]"), h);
        }
        for (i, q) in m.query.iter().enumerate() {
            self.query_match(&format!("{path}.query[{i}]"), q);
        }
        m.regex.is_some()
    }

    fn header_match(&mut self, path: &str, h: &HeaderMatch) {
        // legate's request view exposes `:authority` (the Host) but no other pseudo-header.
        if h.name.starts_with(':') {
            if !h.name.eq_ignore_ascii_case(":authority") {
                self.report(
                    format!("{path}.name"),
                    format!(
                        "matching on pseudo-header `{}` is not supported by legate (only \
                         `:authority`)",
                        h.name
                    ),
                );
            }
        } else if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            self.report(
                format!("{path}.name"),
                format!("`{}` is not a valid header name", h.name),
            );
        }
        self.value_rule(
            path,
            [
                ("exact", h.exact.as_deref()),
                ("prefix", h.prefix.as_deref()),
                ("suffix", h.suffix.as_deref()),
                ("contains", h.contains.as_deref()),
                ("regex", h.regex.as_deref()),
            ],
            h.present,
        );
    }

    fn query_match(&mut self, path: &str, q: &QueryMatch) {
        if q.name.is_empty() {
            self.report(format!("{path}.name"), "query parameter name is empty");
        }
        self.value_rule(
            path,
            [
                ("exact", q.exact.as_deref()),
                ("prefix", q.prefix.as_deref()),
                ("suffix", q.suffix.as_deref()),
                ("contains", q.contains.as_deref()),
                ("regex", q.regex.as_deref()),
            ],
            q.present,
        );
        if q.present == Some(false) {
            self.report(
                format!("{path}.present"),
                "a query parameter match can require presence only (`present: true`)",
            );
        }
    }

    /// Exactly one rule of a header or query match, and a valid regex.
    fn value_rule(
        &mut self,
        path: &str,
        strings: [(&str, Option<&str>); 5],
        present: Option<bool>,
    ) {
        let mut set: Vec<&str> = strings
            .iter()
            .filter_map(|(name, v)| v.map(|_| *name))
            .collect();
        if present.is_some() {
            set.push("present");
        }
        match set[..] {
            [] => self.report(
                path,
                "a match needs one of `exact`, `prefix`, `suffix`, `contains`, `regex`, \
                 `present`",
            ),
            [_] => {}
            _ => self.report(
                path,
                format!("a match takes one rule, found {}", backticked(&set)),
            ),
        }
        for (name, value) in strings {
            match (name, value) {
                ("regex", Some("")) => self.report(format!("{path}.regex"), "regex is empty"),
                ("regex", Some(re)) => {
                    if let Err(e) = legate_snapshot::Regex::new(re) {
                        self.report(format!("{path}.regex"), e.to_string());
                    }
                }
                ("prefix" | "suffix" | "contains", Some("")) => self.report(
                    format!("{path}.{name}"),
                    format!("empty `{name}` matches everything; use `present: true`"),
                ),
                _ => {}
            }
        }
    }

    fn forward(&mut self, path: &str, f: &Forward, is_regex: bool) {
        match (&f.cluster, f.weighted.is_empty()) {
            (None, true) => self.report(path, "a forward needs `cluster` or `weighted`"),
            (Some(_), false) => self.report(
                path,
                "a forward takes one of `cluster` and `weighted`, found both",
            ),
            (Some(name), true) => self.cluster_ref(&format!("{path}.cluster"), name),
            (None, false) => {
                let mut total: u64 = 0;
                for (i, w) in f.weighted.iter().enumerate() {
                    self.cluster_ref(&format!("{path}.weighted[{i}].cluster"), &w.cluster);
                    total += u64::from(w.weight);
                }
                if total == 0 {
                    self.report(
                        format!("{path}.weighted"),
                        "weights are all zero: no cluster would get traffic",
                    );
                } else if total > u64::from(u32::MAX) {
                    self.report(
                        format!("{path}.weighted"),
                        format!("weights add up to {total}, more than {}", u32::MAX),
                    );
                }
            }
        }
        if let Some(h) = &f.hash {
            self.hash(&format!("{path}.hash"), h);
        }
        if let Some(rewrite) = &f.prefix_rewrite {
            let field = format!("{path}.prefix_rewrite");
            if is_regex {
                self.report(
                    field,
                    "`prefix_rewrite` needs a `prefix`, `path` or `separated_prefix` match, \
                     not `regex`",
                );
            } else if let Err(m) = check_value(rewrite) {
                self.report(field, m);
            }
        }
        if let Some(host) = &f.host_rewrite {
            if f.auto_host_rewrite {
                self.report(
                    path,
                    "a forward takes one of `host_rewrite` and `auto_host_rewrite`, found both",
                );
            }
            let field = format!("{path}.host_rewrite");
            if host.is_empty() {
                self.report(field, "host is empty");
            } else if let Err(m) = check_value(host) {
                self.report(field, m);
            }
        }
        self.duration(&format!("{path}.timeout"), f.timeout);
        self.duration(&format!("{path}.idle_timeout"), f.idle_timeout);
        self.duration(&format!("{path}.grpc_timeout_max"), f.grpc_timeout_max);
        if let Some(r) = &f.retries {
            self.retries(&format!("{path}.retries"), r);
        }
    }

    pub(super) fn cluster_ref(&mut self, path: &str, name: &str) {
        if !self.mesh.clusters.iter().any(|c| c.name == name)
            && !self.generated_clusters.contains(name)
        {
            self.report(path, format!("unknown cluster `{name}`"));
        }
    }

    fn direct_response(&mut self, path: &str, d: &DirectResponse) {
        if !(200..=599).contains(&d.status) {
            self.report(
                format!("{path}.status"),
                format!("status {} is out of range 200-599", d.status),
            );
        }
        if let Some(body) = &d.body
            && body.len() > MAX_DIRECT_RESPONSE_BODY
        {
            self.report(
                format!("{path}.body"),
                format!(
                    "body is {} bytes, more than Envoy's limit of {MAX_DIRECT_RESPONSE_BODY}",
                    body.len()
                ),
            );
        }
    }

    fn redirect(&mut self, path: &str, r: &Redirect, is_regex: bool) {
        if let Some(status) = r.status
            && !matches!(status, 301 | 302 | 303 | 307 | 308)
        {
            self.report(
                format!("{path}.status"),
                format!("redirect status {status} is not one of 301, 302, 303, 307, 308"),
            );
        }
        if let Some(scheme) = &r.scheme {
            let mut chars = scheme.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !valid {
                self.report(
                    format!("{path}.scheme"),
                    format!("`{scheme}` is not a URL scheme"),
                );
            }
        }
        if let Some(host) = &r.host
            && (host.is_empty() || host.contains(['/', '?', '#', '@', ' ']))
        {
            self.report(
                format!("{path}.host"),
                format!("`{host}` is not a host name"),
            );
        }
        if r.port == Some(0) {
            self.report(
                format!("{path}.port"),
                "port 0 is not a port to redirect to",
            );
        }
        if r.path.is_some() && r.prefix_rewrite.is_some() {
            self.report(
                path,
                "a redirect takes one of `path` and `prefix_rewrite`, found both",
            );
        }
        if let Some(p) = &r.path
            && !p.starts_with('/')
        {
            self.report(
                format!("{path}.path"),
                format!("`{p}` does not start with `/`"),
            );
        }
        if r.prefix_rewrite.is_some() && is_regex {
            self.report(
                format!("{path}.prefix_rewrite"),
                "`prefix_rewrite` needs a `prefix`, `path` or `separated_prefix` match, not \
                 `regex`",
            );
        }
        let changes_something = r.scheme.is_some()
            || r.host.is_some()
            || r.port.is_some()
            || r.path.is_some()
            || r.prefix_rewrite.is_some()
            || r.strip_query;
        if !changes_something {
            self.report(
                path,
                "a redirect to the same URL loops; set `scheme`, `host`, `port`, `path`, \
                 `prefix_rewrite` or `strip_query`",
            );
        }
    }

    fn headers_to_add(&mut self, path: &str, headers: &[HeaderToAdd]) {
        for (i, h) in headers.iter().enumerate() {
            let name_path = format!("{path}[{i}].name");
            if h.name.starts_with(':') || h.name.eq_ignore_ascii_case("host") {
                self.report(
                    name_path,
                    format!(
                        "`{}` cannot be added (Envoy does not modify pseudo-headers or host; \
                         use `host_rewrite`)",
                        h.name
                    ),
                );
            } else if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                self.report(
                    name_path,
                    format!("`{}` is not a valid header name", h.name),
                );
            }
            if let Err(m) = check_value(&h.value) {
                self.report(format!("{path}[{i}].value"), m);
            }
        }
    }

    fn cluster(&mut self, path: &str, c: &crate::Cluster) {
        self.cluster_settings(
            path,
            c.discovery,
            c.connect_timeout,
            c.idle_timeout,
            c.dns_refresh_rate,
        );
        self.cluster_policies(
            path,
            &ClusterPolicies {
                circuit_breakers: c.circuit_breakers.as_ref(),
                outlier_detection: c.outlier_detection.as_ref(),
                health_check: c.health_check.as_ref(),
                panic_threshold: c.panic_threshold,
                breaker: c.breaker.as_ref(),
            },
        );
        if let Some(tls) = &c.tls {
            self.upstream_tls(&format!("{path}.tls"), tls);
        }
        self.endpoints(&format!("{path}.endpoints"), c.discovery, &c.endpoints);
    }

    /// The settings clusters and services share, as fields of `path`.
    fn cluster_settings(
        &mut self,
        path: &str,
        discovery: Discovery,
        connect_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        dns_refresh_rate: Option<Duration>,
    ) {
        match connect_timeout {
            Some(Duration::ZERO) => self.report(
                format!("{path}.connect_timeout"),
                "connect timeout must be greater than 0s",
            ),
            t => self.duration(&format!("{path}.connect_timeout"), t),
        }
        self.duration(&format!("{path}.idle_timeout"), idle_timeout);
        match (discovery, dns_refresh_rate) {
            (Discovery::Static, Some(_)) => self.report(
                format!("{path}.dns_refresh_rate"),
                "`dns_refresh_rate` applies to `strict_dns` clusters only",
            ),
            (Discovery::StrictDns, Some(rate)) if rate < Duration::from_millis(1) => self.report(
                format!("{path}.dns_refresh_rate"),
                "DNS refresh rate must be at least 1ms",
            ),
            (_, rate) => self.duration(&format!("{path}.dns_refresh_rate"), rate),
        }
    }

    /// An endpoint list at `path`.
    fn endpoints(&mut self, path: &str, discovery: Discovery, endpoints: &[Endpoint]) {
        let mut seen = HashSet::new();
        let mut total: u64 = 0;
        for (i, e) in endpoints.iter().enumerate() {
            let epath = format!("{path}[{i}]");
            let checked = match discovery {
                Discovery::Static => check_socket_address(&e.address),
                Discovery::StrictDns => check_dns_address(&e.address),
            };
            if let Err(m) = checked {
                self.report(format!("{epath}.address"), m);
            } else if !seen.insert(&e.address) {
                self.report(
                    format!("{epath}.address"),
                    format!("endpoint `{}` is listed twice", e.address),
                );
            }
            if e.weight == 0 {
                self.report(
                    format!("{epath}.weight"),
                    "endpoint weight must be at least 1",
                );
            }
            total += u64::from(e.weight);
        }
        if total > u64::from(u32::MAX) {
            self.report(
                path,
                format!("endpoint weights add up to {total}, more than {}", u32::MAX),
            );
        }
    }

    fn services(&mut self) {
        let mesh = self.mesh;
        self.unique_names(
            "services",
            "service",
            mesh.services.iter().map(|s| &s.name[..]),
        );
        // Cluster names and prefixes already taken, with who took them. A service whose name
        // is a duplicate (reported above) takes none: its clash is that one.
        let mut clusters: HashMap<String, String> = mesh
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    "the name of an entry in `clusters`".to_owned(),
                )
            })
            .collect();
        clusters
            .entry(COLLECTOR_CLUSTER.to_owned())
            .or_insert_with(|| "reserved for the trace collector (`telemetry.tracing`)".to_owned());
        let mut prefixes: HashMap<String, &str> = HashMap::new();
        let mut names = HashSet::new();
        for (i, s) in mesh.services.iter().enumerate() {
            let path = format!("services[{i}]");
            let owned = self.service(&path, s);
            if s.name.is_empty() || !names.insert(&s.name[..]) {
                continue;
            }
            if s.name == COLLECTOR_CLUSTER {
                self.report(format!("{path}.name"), reserved("service"));
                continue;
            }
            for (name_path, cluster) in owned {
                match clusters.get(&cluster) {
                    Some(owner) => {
                        self.report(
                            name_path,
                            format!("cluster name `{cluster}` is also {owner}"),
                        );
                    }
                    None => {
                        let owner = format!("generated by service `{}`", s.name);
                        clusters.insert(cluster, owner);
                    }
                }
            }
            let prefix = s.prefix();
            if let Some(other) = prefixes.insert(prefix.clone(), &s.name) {
                self.report(
                    format!("{path}.route.prefix"),
                    format!("prefix `{prefix}` is also the prefix of service `{other}`"),
                );
            }
        }
    }

    /// Checks one service; returns its clusters' names, each with the path of the name that
    /// makes it (the service's or a version's).
    fn service(&mut self, path: &str, s: &Service) -> Vec<(String, String)> {
        if !s.name.is_empty()
            && let Err(m) = check_label("service", &s.name)
        {
            self.report(format!("{path}.name"), m);
        }
        self.cluster_settings(
            path,
            s.discovery,
            s.connect_timeout,
            s.idle_timeout,
            s.dns_refresh_rate,
        );
        let mut owned = Vec::new();
        match (&s.endpoints, s.versions.is_empty()) {
            (Some(_), false) => self.report(
                path,
                "a service takes one of `endpoints` and `versions`, found both",
            ),
            (None, true) => self.report(
                path,
                "a service needs `endpoints` (a single version) or `versions`",
            ),
            (Some(endpoints), true) => {
                self.endpoints(&format!("{path}.endpoints"), s.discovery, endpoints);
                owned.push((format!("{path}.name"), s.name.clone()));
            }
            (None, false) => {}
        }
        if !s.versions.is_empty() {
            let vpath = format!("{path}.versions");
            self.unique_names(&vpath, "version", s.versions.iter().map(|v| &v.name[..]));
            let mut seen = HashSet::new();
            let mut total: u64 = 0;
            for (j, v) in s.versions.iter().enumerate() {
                let p = format!("{vpath}[{j}]");
                if !v.name.is_empty() {
                    if let Err(m) = check_label("version", &v.name) {
                        self.report(format!("{p}.name"), m);
                    }
                    if seen.insert(&v.name) {
                        owned.push((format!("{p}.name"), s.version_cluster(&v.name)));
                    }
                }
                self.endpoints(&format!("{p}.endpoints"), s.discovery, &v.endpoints);
                total += u64::from(v.weight);
            }
            if let Some(message) = version_weights_problem(total) {
                self.report(vpath, message);
            }
        }
        self.service_route(&format!("{path}.route"), s);
        self.service_policies(&format!("{path}.policies"), s);
        if let Some(tls) = &s.tls {
            self.upstream_tls(&format!("{path}.tls"), tls);
        }
        if let Some(r) = &s.rollout {
            self.service_rollout(&format!("{path}.rollout"), s, r);
        }
        owned
    }

    /// A `rollout:` block, by the rules legate-cp's admin API applies ([`crate::rollout`]).
    fn service_rollout(&mut self, path: &str, s: &Service, r: &crate::ServiceRollout) {
        if s.versions.is_empty() {
            self.report(path, "a rollout needs `versions`");
            return;
        }
        let names: Vec<&str> = s.versions.iter().map(|v| &v.name[..]).collect();
        for (field, version) in [("to", Some(&r.to)), ("from", r.from.as_ref())] {
            if let Some(v) = version
                && !names.contains(&v.as_str())
            {
                self.report(
                    format!("{path}.{field}"),
                    format!(
                        "service `{}` has no version `{v}` (it has {})",
                        s.name,
                        backticked(&names)
                    ),
                );
            }
        }
        if r.from.as_ref() == Some(&r.to) {
            self.report(
                format!("{path}.from"),
                format!("from and to are the same version `{}`", r.to),
            );
        }
        if let Some(m) = crate::rollout::steps_problem(&r.steps) {
            self.report(format!("{path}.steps"), m);
        }
        match r.interval {
            None => self.report(
                format!("{path}.interval"),
                "required: how long each step is judged",
            ),
            Some(i) => {
                if let Some(m) = crate::rollout::interval_problem(i) {
                    self.report(format!("{path}.interval"), m);
                }
            }
        }
        if let Err(m) = crate::rollout::parse_percent(&r.max_error_rate) {
            self.report(format!("{path}.max_error_rate"), m);
        }
        if r.max_p99.is_some_and(|d| d.is_zero()) {
            self.report(format!("{path}.max_p99"), "must be above 0");
        }
        if r.min_requests == 0 {
            self.report(
                format!("{path}.min_requests"),
                "must be at least 1 (a rollout never promotes on silence)",
            );
        }
    }

    fn service_policies(&mut self, path: &str, s: &Service) {
        let p = &s.policies;
        self.headers_to_add(
            &format!("{path}.request_headers_to_add"),
            &p.request_headers_to_add,
        );
        self.duration(&format!("{path}.timeout"), p.timeout);
        if p.timeout.is_some() && s.route.timeout.is_some() {
            self.report(
                format!("{path}.timeout"),
                "the timeout is also set in `route.timeout`; set it in one place",
            );
        }
        self.duration(&format!("{path}.idle_timeout"), p.idle_timeout);
        self.duration(&format!("{path}.grpc_timeout_max"), p.grpc_timeout_max);
        if let Some(r) = &p.retries {
            self.retries(&format!("{path}.retries"), r);
        }
        if let Some(rl) = &p.rate_limit {
            self.rate_limit(&format!("{path}.rate_limit"), rl);
        }
        if let Some(f) = &p.fault {
            self.fault(&format!("{path}.fault"), f);
        }
        if let Some(h) = &p.hash {
            self.hash(&format!("{path}.hash"), h);
            if !s.lb_policy.is_hashing() {
                self.report(
                    format!("{path}.hash"),
                    "a hash needs `lb_policy: ring_hash` or `maglev` (other policies ignore it)",
                );
            }
        }
        if let Some(c) = &p.credentials {
            self.credentials(&format!("{path}.credentials"), c);
        }
        self.cluster_policies(
            path,
            &ClusterPolicies {
                circuit_breakers: p.circuit_breakers.as_ref(),
                outlier_detection: p.outlier_detection.as_ref(),
                health_check: p.health_check.as_ref(),
                panic_threshold: p.panic_threshold,
                breaker: p.breaker.as_ref(),
            },
        );
    }

    fn service_route(&mut self, path: &str, s: &Service) {
        let r = &s.route;
        for (field, value) in [("prefix", &r.prefix), ("rewrite", &r.rewrite)] {
            let Some(value) = value else { continue };
            let field = format!("{path}.{field}");
            if !value.starts_with('/') {
                self.report(field, format!("`{value}` does not start with `/`"));
            } else if value.contains(['?', '#']) {
                self.report(
                    field,
                    format!("`{value}` contains `?` or `#`, which never occur in a path"),
                );
            } else if let Err(m) = check_value(value) {
                self.report(field, m);
            }
        }
        self.duration(&format!("{path}.timeout"), r.timeout);
        for (k, rule) in r.canary.iter().enumerate() {
            let cpath = format!("{path}.canary[{k}]");
            if rule.headers.is_empty() {
                self.report(
                    format!("{cpath}.headers"),
                    "a canary rule needs at least one header match (without one it would take \
                     all the traffic)",
                );
            }
            for (h, m) in rule.headers.iter().enumerate() {
                self.header_match(&format!("{cpath}.headers[{h}]"), m);
            }
            if s.versions.is_empty() {
                self.report(
                    format!("{cpath}.version"),
                    format!(
                        "service `{}` has a single version (`endpoints`); canary rules need \
                         `versions`",
                        s.name
                    ),
                );
            } else if !s.versions.iter().any(|v| v.name == rule.version) {
                let known: Vec<&str> = s.versions.iter().map(|v| &v.name[..]).collect();
                self.report(
                    format!("{cpath}.version"),
                    format!(
                        "service `{}` has no version `{}` (it has {})",
                        s.name,
                        rule.version,
                        backticked(&known)
                    ),
                );
            }
        }
    }

    /// The outbound listener and route config the services layer adds.
    fn proxy(&mut self, bound: &HashMap<SocketAddr, &str>) {
        let mesh = self.mesh;
        let Some(proxy) = mesh.proxy_in_effect() else {
            return;
        };
        let rc = proxy.route_config_name();
        if rc.is_empty() {
            self.report("proxy.route_config", "route config name is empty");
        }
        for (k, other) in mesh.route_configs.iter().enumerate() {
            if other.name == rc {
                self.report(
                    format!("route_configs[{k}].name"),
                    format!(
                        "route config name `{rc}` is taken by the services' route config \
                         (set `proxy.route_config` to another name)"
                    ),
                );
            }
        }
        let name = proxy.listener_name();
        let l = &proxy.listener;
        if name.is_empty() {
            self.report("proxy.listener.name", "listener name is empty");
        } else if let Some(k) = mesh.listeners.iter().position(|other| other.name == name) {
            let written = &mesh.listeners[k];
            if written.route_config != rc {
                self.report(
                    format!("listeners[{k}].route_config"),
                    format!(
                        "listener `{name}` stands for the services' outbound listener but \
                         routes with `{}`; the services' routes are in `{rc}` (or set \
                         `proxy.listener.name` to another name)",
                        written.route_config
                    ),
                );
            }
            // That listener is used as written; settings here would be silently ignored.
            let set = l.address.is_some()
                || l.protocol != ListenerProtocol::default()
                || !l.websocket
                || l.stream_idle_timeout.is_some()
                || l.request_headers_timeout.is_some()
                || l.max_connections.is_some();
            if set {
                self.report(
                    "proxy.listener",
                    format!(
                        "listener `{name}` is defined in `listeners`, which is used as \
                         written; set its address and options there"
                    ),
                );
            }
            return;
        }
        let address = proxy.address();
        match address.parse::<SocketAddr>() {
            Err(_) => self.report(
                "proxy.listener.address",
                format!("`{address}` is not an ip:port address"),
            ),
            Ok(addr) if addr.port() != 0 => {
                if let Some(other) = bound.get(&addr) {
                    let default = if l.address.is_none() {
                        " (the default; set `proxy.listener.address`)"
                    } else {
                        ""
                    };
                    self.report(
                        "proxy.listener.address",
                        format!("address {addr}{default} is also used by listener `{other}`"),
                    );
                }
            }
            Ok(_) => {}
        }
        self.duration("proxy.listener.stream_idle_timeout", l.stream_idle_timeout);
        self.duration(
            "proxy.listener.request_headers_timeout",
            l.request_headers_timeout,
        );
        self.max_connections("proxy.listener.max_connections", l.max_connections);
    }

    fn duration(&mut self, path: &str, d: Option<Duration>) {
        if let Some(d) = d
            && d.as_secs() > MAX_DURATION_SECS
        {
            self.report(path, "duration is longer than 10000 years");
        }
    }
}

/// What is wrong with a service's version weights adding up to `total`, if anything: a mesh
/// file and `legatectl set-weights` are refused with the same words.
pub(crate) fn version_weights_problem(total: u64) -> Option<String> {
    if total == 0 {
        Some("version weights are all zero: no version would get traffic".to_owned())
    } else if total > u64::from(u32::MAX) {
        Some(format!(
            "version weights add up to {total}, more than {}",
            u32::MAX
        ))
    } else {
        None
    }
}

/// `a`, `b` → "`a` and `b`".
pub(crate) fn backticked(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Service and version names become cluster names, gRPC targets (`xds:///<name>`) and stat
/// names: a DNS label keeps them valid in all three.
/// What a cluster or service named [`COLLECTOR_CLUSTER`] is told.
fn reserved(what: &str) -> String {
    format!(
        "{what} name `{COLLECTOR_CLUSTER}` is reserved for the trace collector's cluster \
         (`telemetry.tracing`)"
    )
}

fn check_label(what: &str, name: &str) -> Result<(), String> {
    let valid = name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid {what} name (lowercase letters, digits and `-`, at most \
             63, not starting or ending with `-`)"
        ))
    }
}

fn check_value(value: &str) -> Result<(), String> {
    match http::HeaderValue::from_str(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{value:?} is not a valid header value (control characters or line breaks)"
        )),
    }
}

/// Envoy's domain forms: `*`, `*suffix`, `prefix*` or exact. Listeners strip the port from
/// Host before matching, so a domain with one would never match.
fn check_domain(d: &str) -> Result<(), String> {
    if d.is_empty() {
        return Err("domain is empty".into());
    }
    if d.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control() || c == '/') {
        return Err(format!("`{d}` is not a host name"));
    }
    let stars = d.matches('*').count();
    if d != "*" && (stars > 1 || (stars == 1 && !d.starts_with('*') && !d.ends_with('*'))) {
        return Err(format!(
            "`{d}`: a wildcard is `*` alone, or one `*` at the start or the end"
        ));
    }
    let bracketed_ip = d.starts_with('[') && d.ends_with(']');
    if d.contains(':') && !bracketed_ip {
        return Err(format!(
            "`{d}` has a port; listeners match the host without its port, so write it \
             without one"
        ));
    }
    Ok(())
}

fn check_socket_address(a: &str) -> Result<(), String> {
    match a.parse::<SocketAddr>() {
        Err(_) => Err(format!(
            "`{a}` is not an ip:port address (static clusters take IP addresses; use \
             `discovery: strict_dns` for host names)"
        )),
        Ok(s) if s.port() == 0 => Err(format!("`{a}` has port 0")),
        Ok(_) => Ok(()),
    }
}

/// `host:port` with a DNS name (or an IP, which resolves to itself).
fn check_dns_address(a: &str) -> Result<(), String> {
    if let Ok(s) = a.parse::<SocketAddr>() {
        return if s.port() == 0 {
            Err(format!("`{a}` has port 0"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!("`{a}` is not a host:port address"));
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("`{a}` does not end with a port 1-65535")),
        Ok(_) => {}
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!("`{host}` is not a valid DNS name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_mesh;

    /// Check `text` and return its problems as `line:column: path: message`.
    fn problems(text: &str) -> Vec<String> {
        let mesh = match parse_mesh(text, "m.yaml") {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        match validate(&mesh, text, "m.yaml") {
            Ok(()) => vec![],
            Err(errors) => errors
                .iter()
                .map(|e| {
                    let s = e.to_string();
                    s.strip_prefix("m.yaml:").unwrap_or(&s).to_owned()
                })
                .collect(),
        }
    }

    const GOOD: &str = "\
listeners:
  - name: out
    address: 127.0.0.1:15001
    route_config: rc
route_configs:
  - name: rc
    virtual_hosts:
      - name: vh
        domains: ['*']
        routes:
          - forward: {cluster: a}
clusters:
  - name: a
    endpoints: [{address: 127.0.0.1:8080}]
";

    #[test]
    fn good_mesh_passes() {
        assert_eq!(problems(GOOD), Vec::<String>::new());
    }

    #[test]
    fn trace_collector_is_host_port_and_its_cluster_name_is_reserved() {
        let text = |collector: &str| {
            format!("{GOOD}telemetry:\n  tracing: {{collector: '{collector}'}}\n")
        };
        for ok in [
            "127.0.0.1:4317",
            "otel-collector.observability:4317",
            "[::1]:4317",
        ] {
            assert_eq!(problems(&text(ok)), Vec::<String>::new(), "{ok}");
        }
        for (bad, message) in [
            ("127.0.0.1", "`127.0.0.1` is not a host:port address"),
            (
                "collector:0",
                "`collector:0` does not end with a port 1-65535",
            ),
            (
                "collector:65536",
                "`collector:65536` does not end with a port 1-65535",
            ),
            ("127.0.0.1:0", "`127.0.0.1:0` has port 0"),
            ("bad host:4317", "`bad host` is not a valid DNS name"),
            ("", "`` is not a host:port address"),
        ] {
            assert_eq!(
                problems(&text(bad)),
                [format!("16:24: telemetry.tracing.collector: {message}")],
                "{bad}"
            );
        }

        // The name is reserved whether or not tracing is on: a cluster, a service, and a
        // service version whose generated cluster would take it.
        assert_eq!(
            problems("clusters:\n  - name: legate-trace-collector\n    endpoints: []\n"),
            [
                "2:11: clusters[0].name: cluster name `legate-trace-collector` is reserved for the \
              trace collector's cluster (`telemetry.tracing`)"
            ]
        );
        let text = "\
services:
  - name: legate-trace-collector
    endpoints: [{address: 127.0.0.1:8081}]
    route: {prefix: /a/}
  - name: legate-trace
    versions:
      - {name: collector, weight: 1, endpoints: [{address: 127.0.0.1:8082}]}
    route: {prefix: /b/}
";
        assert_eq!(
            problems(text),
            [
                "2:11: services[0].name: service name `legate-trace-collector` is reserved for \
                 the trace collector's cluster (`telemetry.tracing`)",
                "7:16: services[1].versions[0].name: cluster name `legate-trace-collector` is \
                 also reserved for the trace collector (`telemetry.tracing`)",
            ]
        );
    }

    #[test]
    fn unknown_references() {
        let text = "\
listeners:
  - name: out
    address: 127.0.0.1:15001
    route_config: nope
route_configs:
  - name: rc
    virtual_hosts:
      - name: vh
        domains: ['*']
        routes:
          - forward: {cluster: missing}
          - forward:
              weighted:
                - {cluster: a, weight: 1}
                - {cluster: gone, weight: 1}
clusters:
  - name: a
";
        assert_eq!(
            problems(text),
            [
                "4:19: listeners[0].route_config: unknown route config `nope`",
                "11:32: route_configs[0].virtual_hosts[0].routes[0].forward.cluster: \
                 unknown cluster `missing`",
                "15:29: route_configs[0].virtual_hosts[0].routes[1].forward.weighted[1]\
                 .cluster: unknown cluster `gone`",
            ]
        );
    }

    #[test]
    fn duplicates() {
        let text = "\
listeners:
  - {name: out, address: '127.0.0.1:1', route_config: rc}
  - {name: out, address: '127.0.0.1:1', route_config: rc}
  - {name: any1, address: '127.0.0.1:0', route_config: rc}
  - {name: any2, address: '127.0.0.1:0', route_config: rc}
route_configs:
  - name: rc
    virtual_hosts:
      - {name: vh, domains: [a.example, '*']}
      - {name: vh, domains: [A.example]}
clusters:
  - name: c
  - name: c
    endpoints:
      - address: 10.0.0.1:80
      - address: 10.0.0.1:80
";
        assert_eq!(
            problems(text),
            [
                "3:12: listeners[1].name: duplicate listener name `out` (first at index 0)",
                "3:26: listeners[1].address: address 127.0.0.1:1 is also used by listener `out`",
                "10:16: route_configs[0].virtual_hosts[1].name: duplicate virtual host name \
                 `vh` (first at index 0)",
                "10:30: route_configs[0].virtual_hosts[1].domains[0]: domain `A.example` is \
                 also in virtual host `vh`",
                "13:11: clusters[1].name: duplicate cluster name `c` (first at index 0)",
                "16:18: clusters[1].endpoints[1].address: endpoint `10.0.0.1:80` is listed twice",
            ]
        );
    }

    #[test]
    fn addresses() {
        let text = "\
listeners:
  - {name: l, address: 'localhost:80', route_config: rc}
route_configs: [{name: rc, virtual_hosts: []}]
clusters:
  - name: s
    endpoints:
      - address: payments:80
      - address: 10.0.0.1
      - address: 10.0.0.1:0
      - address: '[::1]:8080'
  - name: d
    discovery: strict_dns
    endpoints:
      - address: payments.svc.cluster.local:80
      - address: 10.0.0.2:80
      - address: payments
      - address: pay ments:80
      - address: -bad.example:80
      - address: good.example:99999
";
        assert_eq!(
            problems(text),
            [
                "2:24: listeners[0].address: `localhost:80` is not an ip:port address",
                "7:18: clusters[0].endpoints[0].address: `payments:80` is not an ip:port \
                 address (static clusters take IP addresses; use `discovery: strict_dns` for \
                 host names)",
                "8:18: clusters[0].endpoints[1].address: `10.0.0.1` is not an ip:port address \
                 (static clusters take IP addresses; use `discovery: strict_dns` for host names)",
                "9:18: clusters[0].endpoints[2].address: `10.0.0.1:0` has port 0",
                "16:18: clusters[1].endpoints[2].address: `payments` is not a host:port address",
                "17:18: clusters[1].endpoints[3].address: `pay ments` is not a valid DNS name",
                "18:18: clusters[1].endpoints[4].address: `-bad.example` is not a valid DNS name",
                "19:18: clusters[1].endpoints[5].address: `good.example:99999` does not end \
                 with a port 1-65535",
            ]
        );
    }

    #[test]
    fn forwards_and_weights() {
        let text = "\
route_configs:
  - name: rc
    virtual_hosts:
      - name: vh
        domains: ['*']
        routes:
          - forward: {}
          - forward: {cluster: a, weighted: [{cluster: a, weight: 1}]}
          - forward:
              weighted: [{cluster: a, weight: 0}, {cluster: a, weight: 0}]
          - forward: {cluster: a, host_rewrite: x, auto_host_rewrite: true}
          - match: {regex: '/x/.*'}
            forward: {cluster: a, prefix_rewrite: /}
          - forward:
              weighted: [{cluster: a, weight: 4294967295}, {cluster: a, weight: 1}]
clusters:
  - name: a
";
        assert_eq!(
            problems(text),
            [
                "7:22: route_configs[0].virtual_hosts[0].routes[0].forward: a forward needs \
                 `cluster` or `weighted`",
                "8:22: route_configs[0].virtual_hosts[0].routes[1].forward: a forward takes \
                 one of `cluster` and `weighted`, found both",
                "10:25: route_configs[0].virtual_hosts[0].routes[2].forward.weighted: weights \
                 are all zero: no cluster would get traffic",
                "11:22: route_configs[0].virtual_hosts[0].routes[3].forward: a forward takes \
                 one of `host_rewrite` and `auto_host_rewrite`, found both",
                "13:51: route_configs[0].virtual_hosts[0].routes[4].forward.prefix_rewrite: \
                 `prefix_rewrite` needs a `prefix`, `path` or `separated_prefix` match, not \
                 `regex`",
                "15:25: route_configs[0].virtual_hosts[0].routes[5].forward.weighted: weights \
                 add up to 4294967296, more than 4294967295",
            ]
        );
    }

    #[test]
    fn matches() {
        let text = "\
route_configs:
  - name: rc
    virtual_hosts:
      - name: vh
        domains: ['*']
        routes:
          - match: {prefix: /a, path: /b}
            direct_response: {status: 200}
          - match:
              regex: '/(unclosed'
            direct_response: {status: 200}
          - match:
              prefix: api
              headers:
                - {name: 'bad header', exact: x}
                - {name: x-a}
                - {name: x-b, exact: '1', prefix: '1'}
                - {name: x-m, regex: '(GET'}
                - {name: ':method', regex: ''}
                - {name: x-c, present: false, invert: true}
              query:
                - {name: debug, present: false}
                - {name: '', contains: ''}
            direct_response: {status: 200}
          - match: {separated_prefix: /api/}
            direct_response: {status: 200}
";
        assert_eq!(
            problems(text),
            [
                "7:20: route_configs[0].virtual_hosts[0].routes[0].match: a match takes one \
                 path rule, found `prefix` and `path`",
                "10:22: route_configs[0].virtual_hosts[0].routes[1].match.regex: invalid regex: \
                 unclosed group",
                "13:23: route_configs[0].virtual_hosts[0].routes[2].match.prefix: `api` does \
                 not start with `/`",
                "15:26: route_configs[0].virtual_hosts[0].routes[2].match.headers[0].name: \
                 `bad header` is not a valid header name",
                "16:19: route_configs[0].virtual_hosts[0].routes[2].match.headers[1]: a match \
                 needs one of `exact`, `prefix`, `suffix`, `contains`, `regex`, `present`",
                "17:19: route_configs[0].virtual_hosts[0].routes[2].match.headers[2]: a match \
                 takes one rule, found `exact` and `prefix`",
                "18:38: route_configs[0].virtual_hosts[0].routes[2].match.headers[3].regex: \
                 invalid regex: unclosed group",
                "19:26: route_configs[0].virtual_hosts[0].routes[2].match.headers[4].name: \
                 matching on pseudo-header `:method` is not supported by legate (only \
                 `:authority`)",
                "19:44: route_configs[0].virtual_hosts[0].routes[2].match.headers[4].regex: \
                 regex is empty",
                "22:42: route_configs[0].virtual_hosts[0].routes[2].match.query[0].present: a \
                 query parameter match can require presence only (`present: true`)",
                "23:26: route_configs[0].virtual_hosts[0].routes[2].match.query[1].name: query \
                 parameter name is empty",
                "23:40: route_configs[0].virtual_hosts[0].routes[2].match.query[1].contains: \
                 empty `contains` matches everything; use `present: true`",
                "25:39: route_configs[0].virtual_hosts[0].routes[3].match.separated_prefix: \
                 `/api/` ends with `/`; a separated prefix is matched up to a `/`, so write it \
                 without one (or use `prefix`)",
            ]
        );
    }

    #[test]
    fn actions_and_statuses() {
        let text = "\
route_configs:
  - name: rc
    virtual_hosts:
      - name: vh
        domains: []
        routes:
          - match: {prefix: /}
          - direct_response: {status: 200}
            redirect: {path: /x}
          - direct_response: {status: 700}
          - redirect: {status: 200, path: x, prefix_rewrite: /y, port: 0}
          - redirect: {}
          - redirect: {scheme: '1http'}
";
        assert_eq!(
            problems(text),
            [
                "5:18: route_configs[0].virtual_hosts[0].domains: a virtual host needs at \
                 least one domain (`*` matches any)",
                "7:13: route_configs[0].virtual_hosts[0].routes[0]: a route needs one of \
                 `forward`, `direct_response`, `redirect`",
                "8:13: route_configs[0].virtual_hosts[0].routes[1]: a route takes one action, \
                 found `direct_response` and `redirect`",
                "10:39: route_configs[0].virtual_hosts[0].routes[2].direct_response.status: \
                 status 700 is out of range 200-599",
                "11:32: route_configs[0].virtual_hosts[0].routes[3].redirect.status: redirect \
                 status 200 is not one of 301, 302, 303, 307, 308",
                "11:72: route_configs[0].virtual_hosts[0].routes[3].redirect.port: port 0 is \
                 not a port to redirect to",
                "11:23: route_configs[0].virtual_hosts[0].routes[3].redirect: a redirect takes \
                 one of `path` and `prefix_rewrite`, found both",
                "11:43: route_configs[0].virtual_hosts[0].routes[3].redirect.path: `x` does not \
                 start with `/`",
                "12:23: route_configs[0].virtual_hosts[0].routes[4].redirect: a redirect to the \
                 same URL loops; set `scheme`, `host`, `port`, `path`, `prefix_rewrite` or \
                 `strip_query`",
                "13:32: route_configs[0].virtual_hosts[0].routes[5].redirect.scheme: `1http` is \
                 not a URL scheme",
            ]
        );
    }

    #[test]
    fn domains_and_headers() {
        let text = "\
route_configs:
  - name: rc
    virtual_hosts:
      - name: vh
        domains: ['a.*.example', 'example.com:8080', '', '*.ok.example', 'ok-*', '[::1]']
        request_headers_to_add:
          - {name: ':path', value: x}
          - {name: Host, value: x}
          - {name: 'x y', value: x}
          - {name: x-ok, value: \"line\\nbreak\"}
          - {name: x-pct, value: '50%'}   # literal, escaped by the compiler
        routes:
          - direct_response: {status: 204}
            request_headers_to_add: [{name: x-fine, value: yes, append: false}]
";
        assert_eq!(
            problems(text),
            [
                "5:19: route_configs[0].virtual_hosts[0].domains[0]: `a.*.example`: a wildcard \
                 is `*` alone, or one `*` at the start or the end",
                "5:34: route_configs[0].virtual_hosts[0].domains[1]: `example.com:8080` has a \
                 port; listeners match the host without its port, so write it without one",
                "5:54: route_configs[0].virtual_hosts[0].domains[2]: domain is empty",
                "7:20: route_configs[0].virtual_hosts[0].request_headers_to_add[0].name: \
                 `:path` cannot be added (Envoy does not modify pseudo-headers or host; use \
                 `host_rewrite`)",
                "8:20: route_configs[0].virtual_hosts[0].request_headers_to_add[1].name: \
                 `Host` cannot be added (Envoy does not modify pseudo-headers or host; use \
                 `host_rewrite`)",
                "9:20: route_configs[0].virtual_hosts[0].request_headers_to_add[2].name: `x y` \
                 is not a valid header name",
                "10:33: route_configs[0].virtual_hosts[0].request_headers_to_add[3].value: \
                 \"line\\nbreak\" is not a valid header value (control characters or line \
                 breaks)",
            ]
        );
    }

    #[test]
    fn cluster_settings() {
        let text = "\
clusters:
  - name: a
    connect_timeout: 0s
    dns_refresh_rate: 1s
    endpoints:
      - {address: 10.0.0.1:80, weight: 0}
  - name: b
    discovery: strict_dns
    dns_refresh_rate: 0s
    idle_timeout: 400000000000s
";
        assert_eq!(
            problems(text),
            [
                "3:22: clusters[0].connect_timeout: connect timeout must be greater than 0s",
                "4:23: clusters[0].dns_refresh_rate: `dns_refresh_rate` applies to \
                 `strict_dns` clusters only",
                "6:40: clusters[0].endpoints[0].weight: endpoint weight must be at least 1",
                "10:19: clusters[1].idle_timeout: duration is longer than 10000 years",
                "9:23: clusters[1].dns_refresh_rate: DNS refresh rate must be at least 1ms",
            ]
        );
    }

    #[test]
    fn nested_mesh_paths_and_positions() {
        let text = "\
admin: 127.0.0.1:9901
mesh:
  clusters:
    - name: a
    - name: a
";
        #[derive(serde::Deserialize)]
        struct Boot {
            #[allow(dead_code)]
            admin: String,
            mesh: Mesh,
        }
        let boot: Boot = crate::parse_yaml(text, "p.yaml").expect("should succeed");
        let errors = validate_at(&boot.mesh, text, "p.yaml", "mesh").expect_err("should fail");
        assert_eq!(
            errors[0].to_string(),
            "p.yaml:5:13: mesh.clusters[1].name: duplicate cluster name `a` (first at \
             index 0)"
        );
    }

    #[test]
    fn check_without_text() {
        let mut mesh = crate::parse_mesh(GOOD, "m.yaml").expect("should succeed");
        assert_eq!(mesh.check(), Ok(()));
        mesh.listeners[0].route_config = "other".into();
        assert_eq!(
            mesh.check().expect_err("should fail"),
            vec![Problem {
                path: "listeners[0].route_config".into(),
                message: "unknown route config `other`".into(),
            }]
        );
    }

    #[test]
    fn services() {
        let text = "\
services:
  - name: Payments
    versions:
      - {name: v1, weight: 0, endpoints: [{address: 'localhost:80'}]}
      - {name: v1, weight: 0}
      - {name: v_2, weight: 0}
    route:
      prefix: payments
      rewrite: ''
      canary:
        - {version: v3, headers: []}
  - name: orders
    endpoints: []
    versions: [{name: a, weight: 1}]
  - name: orders
    endpoints: [{address: 127.0.0.1:80}]
  - name: bare
    route: {prefix: /orders/}
  - name: single
    connect_timeout: 0s
    endpoints: [{address: 127.0.0.1:80, weight: 0}]
    route:
      canary:
        - version: v1
          headers: [{name: x-canary}]
    policies:
      request_headers_to_add: [{name: Host, value: x}]
  - name: dns
    discovery: strict_dns
    dns_refresh_rate: 0s
    endpoints: [{address: 'dns:80'}, {address: 'bad host:80'}]
";
        assert_eq!(
            problems(text),
            [
                "15:11: services[2].name: duplicate service name `orders` (first at index 1)",
                "2:11: services[0].name: `Payments` is not a valid service name (lowercase \
                 letters, digits and `-`, at most 63, not starting or ending with `-`)",
                "5:16: services[0].versions[1].name: duplicate version name `v1` (first at \
                 index 0)",
                "4:53: services[0].versions[0].endpoints[0].address: `localhost:80` is not an \
                 ip:port address (static clusters take IP addresses; use `discovery: \
                 strict_dns` for host names)",
                "6:16: services[0].versions[2].name: `v_2` is not a valid version name \
                 (lowercase letters, digits and `-`, at most 63, not starting or ending with \
                 `-`)",
                "3:5: services[0].versions: version weights are all zero: no version would \
                 get traffic",
                "8:15: services[0].route.prefix: `payments` does not start with `/`",
                "9:16: services[0].route.rewrite: `` does not start with `/`",
                "11:34: services[0].route.canary[0].headers: a canary rule needs at least one \
                 header match (without one it would take all the traffic)",
                "11:21: services[0].route.canary[0].version: service `Payments` has no \
                 version `v3` (it has `v1`, `v1` and `v_2`)",
                "12:5: services[1]: a service takes one of `endpoints` and `versions`, found \
                 both",
                "17:5: services[3]: a service needs `endpoints` (a single version) or \
                 `versions`",
                "18:21: services[3].route.prefix: prefix `/orders/` is also the prefix of \
                 service `orders`",
                "20:22: services[4].connect_timeout: connect timeout must be greater than 0s",
                "21:49: services[4].endpoints[0].weight: endpoint weight must be at least 1",
                "25:21: services[4].route.canary[0].headers[0]: a match needs one of `exact`, \
                 `prefix`, `suffix`, `contains`, `regex`, `present`",
                "24:20: services[4].route.canary[0].version: service `single` has a single \
                 version (`endpoints`); canary rules need `versions`",
                "27:39: services[4].policies.request_headers_to_add[0].name: `Host` cannot be \
                 added (Envoy does not modify pseudo-headers or host; use `host_rewrite`)",
                "30:23: services[5].dns_refresh_rate: DNS refresh rate must be at least 1ms",
                "31:48: services[5].endpoints[1].address: `bad host` is not a valid DNS name",
            ]
        );
    }

    #[test]
    fn generated_names_and_references() {
        let text = "\
listeners:
  - {name: edge, address: '127.0.0.1:15001', route_config: outbound}
  - {name: ops, address: '127.0.0.1:15002', route_config: ops}
route_configs:
  - name: outbound
    virtual_hosts: []
  - name: ops
    virtual_hosts:
      - name: all
        domains: ['*']
        routes:
          - forward: {cluster: web-v1}
          - forward: {cluster: web-v9}
clusters:
  - name: web-v2
services:
  - name: web
    versions:
      - {name: v1, weight: 1}
      - {name: v2, weight: 1}
  - name: web-v1
    endpoints: []
  - name: a-b
    versions: [{name: c, weight: 1}]
  - name: a
    versions: [{name: b-c, weight: 1}]
";
        assert_eq!(
            problems(text),
            [
                "13:32: route_configs[1].virtual_hosts[0].routes[1].forward.cluster: unknown \
                 cluster `web-v9`",
                "20:16: services[0].versions[1].name: cluster name `web-v2` is also the name \
                 of an entry in `clusters`",
                "21:11: services[1].name: cluster name `web-v1` is also generated by service \
                 `web`",
                "26:23: services[3].versions[0].name: cluster name `a-b-c` is also generated \
                 by service `a-b`",
                "5:11: route_configs[0].name: route config name `outbound` is taken by the \
                 services' route config (set `proxy.route_config` to another name)",
                "1:1: proxy.listener.address: address 127.0.0.1:15001 (the default; set \
                 `proxy.listener.address`) is also used by listener `edge`",
            ]
        );
    }

    #[test]
    fn proxy_section() {
        // The mesh-reference layout (an `outbound` listener with its own route config), plus
        // services: the services' routes would be unreachable.
        let text = "\
listeners:
  - {name: outbound, address: '127.0.0.1:15001', route_config: mine}
route_configs: [{name: mine, virtual_hosts: []}]
services: [{name: web, endpoints: []}]
";
        assert_eq!(
            problems(text),
            [
                "2:64: listeners[0].route_config: listener `outbound` stands for the services' \
              outbound listener but routes with `mine`; the services' routes are in \
              `outbound` (or set `proxy.listener.name` to another name)"
            ]
        );
        let text = "\
listeners:
  - {name: outbound, address: '127.0.0.1:15001', route_config: outbound}
proxy:
  listener: {address: '127.0.0.1:15009', protocol: http2}
";
        assert_eq!(
            problems(text),
            [
                "4:13: proxy.listener: listener `outbound` is defined in `listeners`, which is \
              used as written; set its address and options there"
            ]
        );
        let text = "\
proxy:
  listener:
    name: ''
  route_config: ''
";
        assert_eq!(
            problems(text),
            [
                "4:17: proxy.route_config: route config name is empty",
                "3:11: proxy.listener.name: listener name is empty",
            ]
        );
        let text = "\
proxy:
  listener: {address: 'localhost:15001', stream_idle_timeout: 400000000000s}
";
        assert_eq!(
            problems(text),
            [
                "2:23: proxy.listener.address: `localhost:15001` is not an ip:port address",
                "2:63: proxy.listener.stream_idle_timeout: duration is longer than 10000 years",
            ]
        );
        // A written listener of another name on the proxy's address.
        let text = "\
listeners: [{name: l, address: '127.0.0.1:15009', route_config: outbound}]
proxy:
  listener: {address: '127.0.0.1:15009'}
";
        assert_eq!(
            problems(text),
            [
                "3:23: proxy.listener.address: address 127.0.0.1:15009 is also used by \
              listener `l`"
            ]
        );
    }

    #[test]
    fn unknown_keys_in_services_are_parse_errors() {
        for (text, expected) in [
            (
                "services:\n  - name: a\n    endpoints: []\n    policies:\n      retry: {}\n",
                "m.yaml:5:7: services[0].policies.retry: unknown field `retry`, expected one of \
                 `request_headers_to_add`, `timeout`, `idle_timeout`, `grpc_timeout_max`, \
                 `retries`, \
                 `circuit_breakers`, `outlier_detection`, `health_check`, `panic_threshold`, \
                 `breaker`, `rate_limit`, `fault`, `hash`, `credentials`",
            ),
            (
                "services:\n  - name: a\n    endpoints: []\n    policies:\n      retries: 3\n",
                "m.yaml:5:16: services[0].policies.retries: invalid type: integer `3`, expected \
                 struct Retries",
            ),
            (
                "services:\n  - name: a\n    versions: [{name: v1, wieght: 1}]\n",
                "m.yaml:3:27: services[0].versions[0].wieght: unknown field `wieght`, expected \
                 one of `name`, `weight`, `endpoints`",
            ),
            (
                "services:\n  - name: a\n    versions: [{name: v1}]\n",
                "m.yaml:3:16: services[0].versions[0]: missing field `weight`",
            ),
            (
                "proxy:\n  listener: {port: 1}\n",
                "m.yaml:2:14: proxy.listener.port: unknown field `port`, expected one of \
                 `name`, `address`, `protocol`, `websocket`, `stream_idle_timeout`, `request_headers_timeout`, `max_connections`",
            ),
        ] {
            let e = parse_mesh(text, "m.yaml").expect_err("should fail");
            assert_eq!(e.to_string(), expected);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(backticked(&["a"]), "`a`");
        assert_eq!(backticked(&["a", "b", "c"]), "`a`, `b` and `c`");
        assert!(check_domain("*").is_ok());
        assert!(check_domain("*-bar.example").is_ok());
        assert!(check_domain("foo.*").is_ok());
        assert!(check_domain("*.*").is_err());
        assert!(check_dns_address("localhost:80").is_ok());
        assert!(check_dns_address("a_b.internal.:80").is_ok());
        assert!(check_dns_address("[::1]:80").is_ok());
        assert!(check_dns_address(":80").is_err());
    }
}
