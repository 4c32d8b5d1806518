//! The services layer: expansion into low-level resources, and the edits the control plane's
//! admin API makes to it.
//!
//! A service is shorthand for resources the low-level layer can already say: one [`Cluster`]
//! per version, and routes in the outbound route config that split its prefix over them.
//! Expanding to [`Mesh`] values first (rather than straight to Envoy messages) keeps one
//! compiler for both layers and lets validation reason about the generated names.

use std::cmp::Reverse;
use std::time::Duration;

use crate::{
    Cluster, Endpoint, Forward, Listener, Mesh, Problem, Proxy, Route, RouteConfig, RouteMatch,
    Service, VirtualHost, WeightedTarget,
};

/// Name of the single virtual host of the generated route config.
pub(crate) const SERVICES_VIRTUAL_HOST: &str = "services";

impl Service {
    /// The cluster of one version: `<service>-<version>`.
    pub fn version_cluster(&self, version: &str) -> String {
        format!("{}-{version}", self.name)
    }

    /// The names of the service's clusters, in the order its versions are written (the
    /// service's own name when it has `endpoints` instead of `versions`).
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters().into_iter().map(|(name, _)| name).collect()
    }

    /// The route prefix, default applied.
    pub fn prefix(&self) -> String {
        self.route
            .prefix
            .clone()
            .unwrap_or_else(|| format!("/{}/", self.name))
    }

    /// The whole-request timeout, from `policies` or (as written before policies had it)
    /// `route`.
    pub fn timeout(&self) -> Option<Duration> {
        self.policies.timeout.or(self.route.timeout)
    }

    /// Each cluster with its endpoints.
    pub(crate) fn clusters(&self) -> Vec<(String, &[Endpoint])> {
        if self.versions.is_empty() {
            let endpoints = self.endpoints.as_deref().unwrap_or_default();
            vec![(self.name.clone(), endpoints)]
        } else {
            self.versions
                .iter()
                .map(|v| (self.version_cluster(&v.name), &v.endpoints[..]))
                .collect()
        }
    }

    /// A low-level cluster with the service's settings.
    pub(crate) fn cluster(&self, name: String, endpoints: &[Endpoint]) -> Cluster {
        Cluster {
            name,
            discovery: self.discovery,
            lb_policy: self.lb_policy,
            protocol: self.protocol,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_requests_per_connection: self.max_requests_per_connection,
            dns_refresh_rate: self.dns_refresh_rate,
            circuit_breakers: self.policies.circuit_breakers.clone(),
            outlier_detection: self.policies.outlier_detection.clone(),
            health_check: self.policies.health_check.clone(),
            panic_threshold: self.policies.panic_threshold,
            breaker: self.policies.breaker,
            tls: self.tls.clone(),
            endpoints: endpoints.to_vec(),
        }
    }

    /// Where the weighted route sends requests. Zero-weight versions are left out: gRPC
    /// clients subscribe to the clusters named by routes, and would otherwise hold (and
    /// warm) one that takes no traffic.
    fn split(&self) -> Forward {
        if self.versions.is_empty() {
            return Forward {
                cluster: Some(self.name.clone()),
                ..Forward::default()
            };
        }
        Forward {
            weighted: self
                .versions
                .iter()
                .filter(|v| v.weight > 0)
                .map(|v| WeightedTarget {
                    cluster: self.version_cluster(&v.name),
                    weight: v.weight,
                })
                .collect(),
            ..Forward::default()
        }
    }

    /// The canary routes, then the weighted one, all under `prefix`.
    ///
    /// `http` adds what only HTTP proxies apply: the prefix rewrite, the timeouts, the
    /// retries and the header additions. gRPC's xDS client ignores the rewrite and the
    /// headers, takes its deadlines from the application rather than from `timeout`, and
    /// reads `retry_on` as gRPC status names, which an HTTP retry policy does not have.
    pub(crate) fn routes(&self, prefix: &str, http: bool) -> Vec<Route> {
        let finish = |mut forward: Forward| {
            if http {
                forward.prefix_rewrite = Some(
                    self.route
                        .rewrite
                        .clone()
                        .unwrap_or_else(|| crate::DEFAULT_SERVICE_REWRITE.to_owned()),
                );
                forward.timeout = self.timeout();
                forward.idle_timeout = self.policies.idle_timeout;
                forward.grpc_timeout_max = self.policies.grpc_timeout_max;
                forward.retries = self.policies.retries.clone();
                forward.hash = self.policies.hash.clone();
            } else if let Some(h @ crate::Hash::Header(_)) = &self.policies.hash {
                // gRPC hashes on headers only (gRFC A42) and ignores other policies.
                forward.hash = Some(h.clone());
            }
            forward
        };
        let headers_to_add = if http {
            self.policies.request_headers_to_add.clone()
        } else {
            Vec::new()
        };
        let mut routes: Vec<Route> = self
            .route
            .canary
            .iter()
            .enumerate()
            .map(|(i, rule)| Route {
                name: Some(format!("{}-canary-{i}", self.name)),
                matcher: RouteMatch {
                    prefix: Some(prefix.to_owned()),
                    headers: rule.headers.clone(),
                    ..RouteMatch::default()
                },
                forward: Some(finish(Forward {
                    cluster: Some(self.version_cluster(&rule.version)),
                    ..Forward::default()
                })),
                request_headers_to_add: headers_to_add.clone(),
                rate_limit: self.policies.rate_limit.clone().filter(|_| http),
                fault: self.policies.fault.filter(|_| http),
                credentials: self.policies.credentials.clone().filter(|_| http),
                ..Route::default()
            })
            .collect();
        routes.push(Route {
            name: Some(self.name.clone()),
            matcher: RouteMatch {
                prefix: Some(prefix.to_owned()),
                ..RouteMatch::default()
            },
            forward: Some(finish(self.split())),
            request_headers_to_add: headers_to_add,
            rate_limit: self.policies.rate_limit.clone().filter(|_| http),
            fault: self.policies.fault.filter(|_| http),
            credentials: self.policies.credentials.clone().filter(|_| http),
            ..Route::default()
        });
        routes
    }
}

/// What the services layer adds to a mesh, in low-level terms.
#[derive(Debug, Default)]
pub(crate) struct Generated {
    /// The outbound listener, unless `listeners` already has one of its name.
    pub(crate) listener: Option<Listener>,
    pub(crate) route_config: Option<RouteConfig>,
    /// Sorted by name.
    pub(crate) clusters: Vec<Cluster>,
}

impl Mesh {
    /// The proxy section in effect: as written, or the defaults when there are services but
    /// no `proxy`. `None` when the mesh uses only the low-level layer.
    pub fn proxy_in_effect(&self) -> Option<Proxy> {
        match &self.proxy {
            Some(p) => Some(p.clone()),
            None if !self.services.is_empty() => Some(Proxy::default()),
            None => None,
        }
    }

    /// The same mesh in low-level terms only: the services and proxy section replaced by the
    /// listener, route config and clusters they stand for, appended after the written ones.
    ///
    /// [`compile`](crate::compile) of either gives the same resources.
    pub fn expand(&self) -> Mesh {
        let g = generate(self);
        let mut out = Mesh {
            listeners: self.listeners.clone(),
            route_configs: self.route_configs.clone(),
            clusters: self.clusters.clone(),
            services: Vec::new(),
            proxy: None,
            secrets: self.secrets.clone(),
            telemetry: self.telemetry.clone(),
        };
        out.listeners.extend(g.listener);
        out.route_configs.extend(g.route_config);
        out.clusters.extend(g.clusters);
        out
    }
}

/// Expand the services layer. Output is ordered by name (routes by prefix), not by the
/// order services are written or were applied, so content hashes stay stable.
pub(crate) fn generate(mesh: &Mesh) -> Generated {
    let Some(proxy) = mesh.proxy_in_effect() else {
        return Generated::default();
    };
    let listener = if mesh
        .listeners
        .iter()
        .any(|l| l.name == proxy.listener_name())
    {
        None
    } else {
        Some(Listener {
            name: proxy.listener_name().to_owned(),
            address: proxy.address().to_owned(),
            protocol: proxy.listener.protocol,
            route_config: proxy.route_config_name().to_owned(),
            websocket: proxy.listener.websocket,
            stream_idle_timeout: proxy.listener.stream_idle_timeout,
            request_headers_timeout: proxy.listener.request_headers_timeout,
            max_connections: proxy.listener.max_connections,
        })
    };

    // First match wins: longer prefixes first, so `/api/v2/` is not shadowed by `/api/`.
    let mut by_prefix: Vec<(String, &Service)> =
        mesh.services.iter().map(|s| (s.prefix(), s)).collect();
    by_prefix.sort_by(|(pa, a), (pb, b)| {
        (Reverse(pa.len()), pa, &a.name).cmp(&(Reverse(pb.len()), pb, &b.name))
    });
    let routes = by_prefix
        .iter()
        .flat_map(|(prefix, s)| s.routes(prefix, true))
        .collect();
    let route_config = RouteConfig {
        name: proxy.route_config_name().to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: SERVICES_VIRTUAL_HOST.to_owned(),
            // Clients address the proxy itself (`127.0.0.1:15001/payments/...`), so any Host.
            domains: vec!["*".to_owned()],
            request_headers_to_add: Vec::new(),
            retries: None,
            routes,
        }],
    };

    let mut clusters: Vec<Cluster> = mesh
        .services
        .iter()
        .flat_map(|s| {
            s.clusters()
                .into_iter()
                .map(move |(name, endpoints)| s.cluster(name, endpoints))
        })
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Generated {
        listener,
        route_config: Some(route_config),
        clusters,
    }
}

/// Set the traffic split of a service: every version's weight, by name.
///
/// Every version must be given exactly once, and not every weight may be zero. On error the
/// mesh is left unchanged and the problem names the service's field path.
pub fn set_weights<S: AsRef<str>>(
    mesh: &mut Mesh,
    service: &str,
    weights: &[(S, u32)],
) -> Result<(), Problem> {
    let problem = |path: String, message: String| Problem { path, message };
    let Some(index) = mesh.services.iter().position(|s| s.name == service) else {
        return Err(problem(
            "services".into(),
            format!("unknown service `{service}`"),
        ));
    };
    let s = &mesh.services[index];
    let path = format!("services[{index}].versions");
    if s.versions.is_empty() {
        return Err(problem(
            format!("services[{index}]"),
            format!(
                "service `{service}` has a single version (`endpoints`); weights need `versions`"
            ),
        ));
    }
    let mut new = vec![None; s.versions.len()];
    for (version, weight) in weights {
        let version = version.as_ref();
        let Some(j) = s.versions.iter().position(|v| v.name == version) else {
            let known: Vec<&str> = s.versions.iter().map(|v| &v.name[..]).collect();
            return Err(problem(
                path,
                format!(
                    "service `{service}` has no version `{version}` (it has {})",
                    crate::validate::backticked(&known)
                ),
            ));
        };
        if new[j].replace(*weight).is_some() {
            return Err(problem(path, format!("version `{version}` is given twice")));
        }
    }
    let missing: Vec<&str> = s
        .versions
        .iter()
        .zip(&new)
        .filter(|(_, w)| w.is_none())
        .map(|(v, _)| &v.name[..])
        .collect();
    if !missing.is_empty() {
        return Err(problem(
            path,
            format!(
                "every version needs a weight; missing {}",
                crate::validate::backticked(&missing)
            ),
        ));
    }
    let new: Vec<u32> = new.into_iter().flatten().collect();
    let total: u64 = new.iter().map(|&w| u64::from(w)).sum();
    if let Some(message) = crate::validate::version_weights_problem(total) {
        return Err(problem(path, message));
    }
    for (v, w) in mesh.services[index].versions.iter_mut().zip(new) {
        v.weight = w;
    }
    Ok(())
}

/// Insert a service, or replace the one of the same name (keeping its place), if the mesh
/// that results passes [`Mesh::check`]. On error the mesh is left unchanged.
pub fn apply_service(mesh: &mut Mesh, service: Service) -> Result<(), Vec<Problem>> {
    let mut candidate = mesh.clone();
    match candidate
        .services
        .iter_mut()
        .find(|s| s.name == service.name)
    {
        Some(existing) => *existing = service,
        None => candidate.services.push(service),
    }
    candidate.check()?;
    *mesh = candidate;
    Ok(())
}

/// Remove a service by name, if the mesh that results passes [`Mesh::check`] (a low-level
/// route may still forward to one of its clusters). On error the mesh is left unchanged.
pub fn remove_service(mesh: &mut Mesh, name: &str) -> Result<Service, Vec<Problem>> {
    let Some(index) = mesh.services.iter().position(|s| s.name == name) else {
        return Err(vec![Problem {
            path: "services".into(),
            message: format!("unknown service `{name}`"),
        }]);
    };
    let mut candidate = mesh.clone();
    let removed = candidate.services.remove(index);
    candidate.check()?;
    *mesh = candidate;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, LbPolicy as XdsLbPolicy,
    };
    use envoy_types::pb::envoy::config::route::v3::Route as XdsRoute;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    use legate_snapshot as snap;

    use super::*;
    use crate::{
        CanaryRule, DEFAULT_PROXY_ADDRESS, Discovery, HeaderMatch, HeaderToAdd, LbPolicy,
        ListenerProtocol, UpstreamProtocol, Version, compile,
    };

    const REFERENCE: &str = include_str!("../../../examples/mesh-services.yaml");

    fn load(text: &str) -> Mesh {
        match crate::load(text, "mesh.yaml") {
            Ok(m) => m,
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

    fn reference() -> Mesh {
        load(REFERENCE)
    }

    fn service<'m>(mesh: &'m Mesh, name: &str) -> &'m Service {
        mesh.services
            .iter()
            .find(|s| s.name == name)
            .expect("service")
    }

    fn weights(mesh: &Mesh, name: &str) -> Vec<(String, u32)> {
        service(mesh, name)
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect()
    }

    #[test]
    fn reference_parses_every_field() {
        let mesh = reference();
        assert_eq!(mesh.services.len(), 3);
        let p = service(&mesh, "payments");
        assert_eq!(p.protocol, UpstreamProtocol::Http1);
        assert_eq!(p.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(p.max_requests_per_connection, Some(1000));
        assert_eq!(p.discovery, Discovery::Static);
        assert_eq!(p.endpoints, None);
        assert_eq!(
            weights(&mesh, "payments"),
            [("v1".to_owned(), 90), ("v2".to_owned(), 10)]
        );
        assert_eq!(p.versions[0].endpoints[1].weight, 2);
        assert_eq!(p.route.prefix.as_deref(), Some("/payments/"));
        assert_eq!(p.route.rewrite.as_deref(), Some("/"));
        assert_eq!(p.route.timeout, None);
        assert_eq!(p.timeout(), Some(Duration::from_secs(5)));
        assert_eq!(p.policies.idle_timeout, Some(Duration::from_secs(30)));
        let retries = p.policies.retries.as_ref().expect("retries");
        assert_eq!(retries.on, ["5xx", "reset", "connect-failure"]);
        assert_eq!(retries.attempts, Some(2));
        assert!(p.policies.circuit_breakers.is_some());
        assert!(p.policies.outlier_detection.is_some());
        assert!(p.policies.health_check.is_some());
        assert_eq!(p.policies.panic_threshold, Some(50.0));
        assert!(p.policies.breaker.is_some());
        assert_eq!(
            p.route.canary,
            [CanaryRule {
                version: "v2".into(),
                headers: vec![HeaderMatch {
                    name: "x-canary".into(),
                    exact: Some("1".into()),
                    ..HeaderMatch::default()
                }],
            }]
        );
        assert_eq!(
            p.policies.request_headers_to_add,
            [
                HeaderToAdd {
                    name: "x-team".into(),
                    value: "payments".into(),
                    append: true
                },
                HeaderToAdd {
                    name: "x-route".into(),
                    value: "outbound".into(),
                    append: false
                },
            ]
        );
        assert_eq!(
            p.cluster_names(),
            ["payments-v1".to_owned(), "payments-v2".to_owned()]
        );

        let o = service(&mesh, "orders");
        assert_eq!(o.discovery, Discovery::StrictDns);
        assert_eq!(o.dns_refresh_rate, Some(Duration::from_secs(10)));
        assert_eq!(o.cluster_names(), ["orders".to_owned()]);
        assert_eq!(o.prefix(), "/orders/", "default prefix");

        let proxy = mesh.proxy.as_ref().expect("proxy");
        assert_eq!(proxy.listener_name(), "outbound");
        assert_eq!(proxy.address(), "127.0.0.1:15001");
        assert_eq!(proxy.route_config_name(), "outbound");
        assert_eq!(proxy.listener.protocol, ListenerProtocol::Auto);
        assert_eq!(
            proxy.listener.stream_idle_timeout,
            Some(Duration::from_secs(300))
        );
    }

    fn names<'a>(it: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
        it.map(|s| &s[..]).collect()
    }

    fn route_action(r: &XdsRoute) -> &envoy_types::pb::envoy::config::route::v3::RouteAction {
        match &r.action {
            Some(Action::Route(a)) => a,
            other => panic!("forward expected, got {other:?}"),
        }
    }

    fn split(r: &XdsRoute) -> Vec<(&str, u32)> {
        match &route_action(r).cluster_specifier {
            Some(ClusterSpecifier::WeightedClusters(w)) => w
                .clusters
                .iter()
                .map(|c| (&c.name[..], c.weight.as_ref().map_or(0, |w| w.value)))
                .collect(),
            Some(ClusterSpecifier::Cluster(c)) => vec![(&c[..], 1)],
            other => panic!("cluster expected, got {other:?}"),
        }
    }

    fn prefix(r: &XdsRoute) -> &str {
        match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
            Some(PathSpecifier::Prefix(p)) => p,
            other => panic!("prefix expected, got {other:?}"),
        }
    }

    fn headers_added(r: &XdsRoute) -> Vec<(&str, &str)> {
        r.request_headers_to_add
            .iter()
            .map(|h| {
                let hv = h.header.as_ref().expect("header");
                (&hv.key[..], &hv.value[..])
            })
            .collect()
    }

    fn cluster<'r>(r: &'r Resources, name: &str) -> &'r XdsCluster {
        r.clusters.iter().find(|c| c.name == name).expect("cluster")
    }

    use legate_snapshot::Resources;

    #[test]
    fn compiles_a_cluster_per_version_and_a_route_per_service() {
        let r = compile(&reference());
        assert_eq!(
            names(r.listeners.iter().map(|l| &l.name)),
            ["internal", "outbound"]
        );
        assert_eq!(
            names(r.route_configs.iter().map(|l| &l.name)),
            ["internal", "outbound"]
        );
        // Written clusters first, then the generated ones by name.
        assert_eq!(
            names(r.clusters.iter().map(|c| &c.name)),
            [
                "legacy",
                "catalog-experimental",
                "catalog-next",
                "catalog-stable",
                "orders",
                "payments-v1",
                "payments-v2"
            ]
        );
        // The DNS service carries its endpoints inline.
        assert_eq!(
            names(r.load_assignments.iter().map(|c| &c.cluster_name)),
            [
                "legacy",
                "catalog-experimental",
                "catalog-next",
                "catalog-stable",
                "payments-v1",
                "payments-v2"
            ]
        );
        let dns = cluster(&r, "orders");
        assert_eq!(
            dns.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns.into()))
        );
        #[allow(deprecated)]
        let refresh = dns.dns_refresh_rate;
        assert_eq!(
            refresh,
            Some(PbDuration {
                seconds: 10,
                nanos: 0
            })
        );
        let eds = cluster(&r, "payments-v1");
        assert_eq!(
            eds.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into()))
        );
        assert_eq!(
            eds.connect_timeout,
            Some(PbDuration {
                seconds: 1,
                nanos: 0
            })
        );
        assert_eq!(
            cluster(&r, "catalog-next").lb_policy,
            i32::from(XdsLbPolicy::LeastRequest)
        );
        let cla = &r.load_assignments[4];
        assert_eq!(cla.cluster_name, "payments-v1");
        assert_eq!(cla.endpoints.len(), 1, "one locality");
        assert_eq!(
            cla.endpoints[0].load_balancing_weight.map(|w| w.value),
            Some(1)
        );
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);

        let vh = &r.route_configs[1].virtual_hosts[0];
        assert_eq!(vh.name, SERVICES_VIRTUAL_HOST);
        assert_eq!(vh.domains, ["*"]);
        let routes: Vec<(&str, &str)> =
            vh.routes.iter().map(|r| (&r.name[..], prefix(r))).collect();
        // Longest prefix first; each service's canary rules before its split.
        assert_eq!(
            routes,
            [
                ("catalog-canary-0", "/catalog/v2/"),
                ("catalog", "/catalog/v2/"),
                ("payments-canary-0", "/payments/"),
                ("payments", "/payments/"),
                ("orders", "/orders/"),
            ]
        );

        // The zero-weight version is left out of the split, but reachable by its canary.
        assert_eq!(
            split(&vh.routes[1]),
            [("catalog-stable", 3), ("catalog-next", 1)]
        );
        assert_eq!(split(&vh.routes[0]), [("catalog-experimental", 1)]);
        let canary = vh.routes[0].r#match.as_ref().expect("match");
        assert_eq!(
            names(canary.headers.iter().map(|h| &h.name)),
            ["x-canary", "x-internal"]
        );
        let a = route_action(&vh.routes[1]);
        assert_eq!(a.prefix_rewrite, "/catalog/v2/");
        assert_eq!(a.timeout, Some(PbDuration::default()));

        assert_eq!(
            split(&vh.routes[3]),
            [("payments-v1", 90), ("payments-v2", 10)]
        );
        assert_eq!(split(&vh.routes[2]), [("payments-v2", 1)]);
        for r in &vh.routes[2..4] {
            let a = route_action(r);
            assert_eq!(a.prefix_rewrite, "/");
            assert_eq!(
                a.timeout,
                Some(PbDuration {
                    seconds: 5,
                    nanos: 0
                })
            );
            assert_eq!(
                headers_added(r),
                [("x-team", "payments"), ("x-route", "outbound")]
            );
        }

        // Defaults: rewrite to `/`, Envoy's timeout, a single cluster.
        let a = route_action(&vh.routes[4]);
        assert_eq!(
            a.cluster_specifier,
            Some(ClusterSpecifier::Cluster("orders".into()))
        );
        assert_eq!(a.prefix_rewrite, "/");
        assert_eq!(a.timeout, None);
        assert!(vh.routes[4].request_headers_to_add.is_empty());
    }

    /// The compiled services pass legate's own validator, and mean what the mesh says.
    #[test]
    fn compiled_services_build_a_snapshot() {
        let snapshot = match snap::build("v1", &compile(&reference())) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let l = snapshot
            .listeners
            .iter()
            .find(|l| &*l.name == "outbound")
            .expect("outbound listener");
        assert_eq!(l.address, "127.0.0.1:15001".parse().expect("address"));
        assert_eq!(l.codec, snap::Codec::Auto);
        assert_eq!(l.routes, snap::RouteSource::Rds(Arc::from("outbound")));
        assert_eq!(l.stream_idle_timeout, Some(Duration::from_secs(300)));
        let rc = snapshot.route_config_for(l).expect("route config");
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.routes.len(), 5);
        let snap::RouteAction::Forward(f) = &vh.routes[3].action else {
            panic!("forward expected")
        };
        let snap::ClusterTarget::Weighted { clusters, total } = &f.target else {
            panic!("weighted expected")
        };
        assert_eq!(*total, 100);
        assert_eq!(clusters.len(), 2);
        assert_eq!(f.prefix_rewrite.as_deref(), Some("/"));
        assert_eq!(f.timeout, Some(Duration::from_secs(5)));
        let retries = f.retry_policy.as_deref().expect("retry policy");
        assert_eq!(retries.num_retries, 2);
        assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(1)));
        let snap::RouteAction::Forward(f) = &vh.routes[4].action else {
            panic!("forward expected")
        };
        assert_eq!(f.target, snap::ClusterTarget::Single(Arc::from("orders")));
        assert_eq!(f.timeout, Some(Duration::from_secs(15)), "Envoy's default");
        assert_eq!(f.retry_policy, None);

        let c = &snapshot.clusters["payments-v1"];
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.max_requests_per_connection, Some(1000));
        let outlier = c.outlier_detection.as_ref().expect("outlier detection");
        assert_eq!(outlier.enforcing_failure_percentage, 100);
        assert_eq!(snapshot.clusters["payments-v2"].health_checks.len(), 1);
        assert_eq!(snapshot.clusters["orders"].outlier_detection, None);
        let c = &snapshot.clusters["catalog-stable"];
        assert_eq!(c.protocol, snap::UpstreamProtocol::Http2);
        assert!(matches!(c.lb_policy, snap::LbPolicy::LeastRequest { .. }));
        // The zero-weight version's cluster exists.
        assert!(snapshot.clusters.contains_key("catalog-experimental"));
        assert!(matches!(
            snapshot.clusters["orders"].discovery,
            snap::Discovery::StrictDns { refresh_rate, .. } if refresh_rate == Duration::from_secs(10)
        ));
    }

    #[test]
    fn expand_is_what_compile_compiles() {
        let mesh = reference();
        let expanded = mesh.expand();
        assert!(expanded.services.is_empty() && expanded.proxy.is_none());
        assert_eq!(expanded.check(), Ok(()));
        assert_eq!(compile(&expanded), compile(&mesh));
    }

    #[test]
    fn output_does_not_depend_on_the_order_services_are_written() {
        let mesh = reference();
        let mut reversed = mesh.clone();
        reversed.services.reverse();
        for s in &mut reversed.services {
            s.versions.reverse();
        }
        let (a, b) = (compile(&mesh), compile(&reversed));
        assert_eq!(a.clusters, b.clusters);
        assert_eq!(a.load_assignments, b.load_assignments);
        assert_eq!(a.listeners, b.listeners);
        // Only the order of a weighted split follows the order of the versions.
        let order = |r: &Resources| -> Vec<String> {
            r.route_configs[1].virtual_hosts[0]
                .routes
                .iter()
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(order(&a), order(&b));
    }

    #[test]
    fn proxy_defaults_and_written_listeners() {
        // Services without `proxy`: the defaults.
        let mesh = load("services: [{name: web, endpoints: [{address: 127.0.0.1:8080}]}]");
        let r = compile(&mesh);
        assert_eq!(names(r.listeners.iter().map(|l| &l.name)), ["outbound"]);
        assert_eq!(names(r.route_configs.iter().map(|l| &l.name)), ["outbound"]);
        assert_eq!(names(r.clusters.iter().map(|l| &l.name)), ["web"]);
        let g = generate(&mesh);
        let l = g.listener.expect("listener");
        assert_eq!(l.address, DEFAULT_PROXY_ADDRESS);
        assert_eq!(l.protocol, ListenerProtocol::Auto);
        assert!(l.websocket);
        assert!(snap::build("v1", &r).is_ok());

        // Neither services nor proxy: nothing generated.
        let mesh = load("clusters: [{name: c}]");
        let r = compile(&mesh);
        assert!(r.listeners.is_empty() && r.route_configs.is_empty());

        // `proxy` alone: the listener and an empty route config.
        let mesh = load("proxy: {listener: {address: '127.0.0.1:0'}, route_config: out}");
        let r = compile(&mesh);
        assert_eq!(names(r.route_configs.iter().map(|l| &l.name)), ["out"]);
        assert!(r.route_configs[0].virtual_hosts[0].routes.is_empty());
        assert!(snap::build("v1", &r).is_ok());

        // A written listener of the proxy's name is used as written, and may point at the
        // generated route config.
        let mesh = load(
            "\
listeners: [{name: outbound, address: '127.0.0.1:16001', route_config: outbound, protocol: http1}]
services: [{name: web, endpoints: [{address: 127.0.0.1:8080}]}]
",
        );
        let r = compile(&mesh);
        assert_eq!(r.listeners.len(), 1);
        let snapshot = match snap::build("v1", &r) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(snapshot.listeners[0].codec, snap::Codec::Http1);
        assert_eq!(
            snapshot.listeners[0].address,
            "127.0.0.1:16001".parse().expect("address")
        );
    }

    fn two_versions() -> Mesh {
        load(
            "\
services:
  - name: web
    versions:
      - {name: v1, weight: 100, endpoints: [{address: 127.0.0.1:8081}]}
      - {name: v2, weight: 0, endpoints: [{address: 127.0.0.1:8082}]}
      - {name: v3, weight: 0}
  - name: solo
    endpoints: [{address: 127.0.0.1:8083}]
",
        )
    }

    #[test]
    fn set_weights_shifts_traffic() {
        let mut mesh = two_versions();
        assert_eq!(
            set_weights(&mut mesh, "web", &[("v3", 0), ("v2", 25), ("v1", 75)]),
            Ok(())
        );
        assert_eq!(
            weights(&mesh, "web"),
            [
                ("v1".to_owned(), 75),
                ("v2".to_owned(), 25),
                ("v3".to_owned(), 0)
            ]
        );
        assert_eq!(mesh.check(), Ok(()));
        let names = [String::from("v1"), String::from("v2"), String::from("v3")];
        let owned: Vec<(&String, u32)> = names.iter().zip([0, 0, 1]).collect();
        assert_eq!(set_weights(&mut mesh, "web", &owned), Ok(()));
        assert_eq!(weights(&mesh, "web")[2], ("v3".to_owned(), 1));
    }

    #[test]
    fn set_weights_refuses_and_leaves_the_mesh_unchanged() {
        /// Service, weights, expected error.
        type Case = (&'static str, &'static [(&'static str, u32)], &'static str);
        let cases: &[Case] = &[
            ("nope", &[("v1", 1)], "services: unknown service `nope`"),
            (
                "solo",
                &[("solo", 1)],
                "services[1]: service `solo` has a single version (`endpoints`); weights \
                 need `versions`",
            ),
            (
                "web",
                &[("v1", 1), ("v2", 1), ("v9", 1)],
                "services[0].versions: service `web` has no version `v9` (it has `v1`, `v2` \
                 and `v3`)",
            ),
            (
                "web",
                &[("v1", 1), ("v1", 2), ("v2", 1), ("v3", 1)],
                "services[0].versions: version `v1` is given twice",
            ),
            (
                "web",
                &[("v2", 50)],
                "services[0].versions: every version needs a weight; missing `v1` and `v3`",
            ),
            (
                "web",
                &[("v1", 0), ("v2", 0), ("v3", 0)],
                "services[0].versions: version weights are all zero: no version would get traffic",
            ),
            (
                "web",
                &[("v1", u32::MAX), ("v2", 1), ("v3", 0)],
                "services[0].versions: version weights add up to 4294967296, more than \
                 4294967295",
            ),
        ];
        for (service, weights, expected) in cases {
            let mut mesh = two_versions();
            let before = mesh.clone();
            let e = set_weights(&mut mesh, service, weights).expect_err("should fail");
            assert_eq!(e.to_string(), *expected);
            assert_eq!(mesh, before, "{expected}");
        }
    }

    fn web(weights: &[(&str, u32)]) -> Service {
        Service {
            name: "web".into(),
            protocol: UpstreamProtocol::Http2,
            lb_policy: LbPolicy::default(),
            connect_timeout: None,
            idle_timeout: None,
            max_requests_per_connection: None,
            discovery: Discovery::Static,
            dns_refresh_rate: None,
            endpoints: None,
            versions: weights
                .iter()
                .enumerate()
                .map(|(i, (name, weight))| Version {
                    name: (*name).to_owned(),
                    weight: *weight,
                    endpoints: vec![crate::Endpoint {
                        address: format!("127.0.0.1:{}", 9000 + i),
                        weight: 1,
                    }],
                })
                .collect(),
            route: crate::ServiceRoute::default(),
            policies: crate::Policies::default(),
            tls: None,
            rollout: None,
        }
    }

    #[test]
    fn apply_service_inserts_and_replaces() {
        let mut mesh = two_versions();
        let mut api = web(&[("a", 1)]);
        api.name = "api".into();
        assert_eq!(apply_service(&mut mesh, api), Ok(()));
        assert_eq!(
            names(mesh.services.iter().map(|s| &s.name)),
            ["web", "solo", "api"]
        );
        // Replaced in place.
        assert_eq!(apply_service(&mut mesh, web(&[("v4", 1)])), Ok(()));
        assert_eq!(
            names(mesh.services.iter().map(|s| &s.name)),
            ["web", "solo", "api"]
        );
        assert_eq!(mesh.services[0].protocol, UpstreamProtocol::Http2);
        assert_eq!(mesh.services[0].cluster_names(), ["web-v4".to_owned()]);
        let r = compile(&mesh);
        assert!(r.clusters.iter().all(|c| !c.name.starts_with("web-v1")));
        assert!(snap::build("v1", &r).is_ok());
    }

    #[test]
    fn apply_service_refuses_and_leaves_the_mesh_unchanged() {
        let mut mesh = two_versions();
        let before = mesh.clone();

        let mut bad = web(&[("v1", 0), ("V2", 0)]);
        bad.route.prefix = Some("/solo/".into());
        bad.versions[0].endpoints[0].address = "nowhere".into();
        let problems = apply_service(&mut mesh, bad).expect_err("should fail");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "services[0].versions[0].endpoints[0].address: `nowhere` is not an ip:port \
                 address (static clusters take IP addresses; use `discovery: strict_dns` for \
                 host names)",
                "services[0].versions[1].name: `V2` is not a valid version name (lowercase \
                 letters, digits and `-`, at most 63, not starting or ending with `-`)",
                "services[0].versions: version weights are all zero: no version would get \
                 traffic",
                "services[1].route.prefix: prefix `/solo/` is also the prefix of service \
                 `web`",
            ]
        );
        assert_eq!(mesh, before);

        // A new service whose cluster name another one already generates.
        let mut clash = web(&[("v1", 1)]);
        clash.name = "web-v1".into();
        clash.versions.clear();
        clash.endpoints = Some(vec![]);
        let problems = apply_service(&mut mesh, clash).expect_err("should fail");
        assert_eq!(
            problems[0].to_string(),
            "services[2].name: cluster name `web-v1` is also generated by service `web`"
        );
        assert_eq!(mesh, before);
    }

    #[test]
    fn remove_service_checks_references() {
        let mut mesh = two_versions();
        mesh.route_configs.push(crate::RouteConfig {
            name: "ops".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                request_headers_to_add: Vec::new(),
                retries: None,
                routes: vec![Route {
                    forward: Some(Forward {
                        cluster: Some("solo".into()),
                        ..Forward::default()
                    }),
                    ..Route::default()
                }],
            }],
        });
        assert_eq!(mesh.check(), Ok(()));
        let before = mesh.clone();
        let problems = remove_service(&mut mesh, "solo").expect_err("should fail");
        assert_eq!(
            problems[0].to_string(),
            "route_configs[0].virtual_hosts[0].routes[0].forward.cluster: unknown cluster \
             `solo`"
        );
        assert_eq!(mesh, before);
        assert_eq!(
            remove_service(&mut mesh, "nope").expect_err("should fail")[0].to_string(),
            "services: unknown service `nope`"
        );
        let removed = remove_service(&mut mesh, "web").expect("removes");
        assert_eq!(removed.name, "web");
        assert_eq!(names(mesh.services.iter().map(|s| &s.name)), ["solo"]);
    }

    #[test]
    fn services_round_trip_through_yaml() {
        let mesh = reference();
        let text = serde_yaml_ng::to_string(&mesh).expect("serializes");
        let again = load(&text);
        assert_eq!(mesh, again);
        let mesh = two_versions();
        let text = serde_yaml_ng::to_string(&mesh).expect("serializes");
        assert_eq!(load(&text), mesh);
        // Defaults are not written back.
        assert!(!text.contains("route"), "{text}");
    }
}
