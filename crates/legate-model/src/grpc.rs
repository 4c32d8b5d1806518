//! A mesh's services → the resources gRPC's xDS clients resolve `xds:///<service>` with.
//!
//! gRPC has no socket listeners: a channel asks LDS for the Listener named like its target
//! and reads the HttpConnectionManager from its `api_listener`. The rest is stricter than
//! Envoy (see `XDS-PEERS.md`): EDS or LOGICAL_DNS clusters only, ROUND_ROBIN or RING_HASH
//! only, a positive weight on every locality, virtual host domains that match the target or
//! `*`. These resources are for gRPC nodes only: legate refuses `api_listener`, and Envoy
//! ignores such listeners with a warning.

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction as RingHashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy as XdsLbPolicy,
    RingHashLbConfig,
};
use envoy_types::pb::google::protobuf::UInt64Value;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener as XdsListener};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration as XdsRouteConfiguration, VirtualHost as XdsVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use legate_snapshot::{Resources, type_url};

use crate::compile::{
    ads, any, circuit_breakers, duration, load_assignment, outlier_detection, route, router_filter,
};
use crate::{DEFAULT_CONNECT_TIMEOUT, Discovery, Endpoint, Mesh, Problem, Service};

/// Compile a mesh's services for gRPC xDS clients, one set per service, sorted by name:
///
/// - a Listener named `<service>` whose `api_listener` is an HttpConnectionManager taking
///   route config `<service>` over RDS (ADS), with the router as its only filter;
/// - a RouteConfiguration `<service>` with one virtual host for domains `<service>` and `*`,
///   routing the service's canary rules, then prefix `/`, to its version clusters by weight
///   (zero-weight versions left out, so clients do not subscribe to them);
/// - the service's Clusters (EDS, or LOGICAL_DNS for `strict_dns` services, which
///   [`check_for_grpc`] vets) and the ClusterLoadAssignments of the EDS ones.
///
/// The low-level layer (`listeners`, `route_configs`, `clusters`) is not included: it
/// describes socket listeners, which gRPC has no use for. The prefix rewrite, timeouts,
/// retries and header additions of a service's route are left out too, as gRPC does not
/// apply them (it takes deadlines from the application, and retries on gRPC statuses).
/// Of the cluster policies, `circuit_breakers` and `outlier_detection` are included.
///
/// Services with `tls` are left out whole: gRPC takes TLS certificates from certificate
/// provider plugins, not from SDS, and a client must never reach a TLS service in plaintext.
/// [`check_for_grpc`] reports them.
pub fn compile_for_grpc(mesh: &Mesh) -> Resources {
    let mut services: Vec<&Service> = mesh.services.iter().filter(|s| s.tls.is_none()).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Resources::default();
    for s in services {
        out.listeners.push(api_listener(&s.name));
        out.route_configs.push(XdsRouteConfiguration {
            name: s.name.clone(),
            virtual_hosts: vec![XdsVirtualHost {
                name: s.name.clone(),
                // gRPC matches domains against the target's name; `*` also covers a channel
                // that overrides its authority.
                domains: vec![s.name.clone(), "*".to_owned()],
                routes: s.routes("/", false).iter().map(route).collect(),
                ..Default::default()
            }],
            ..Default::default()
        });
        for (name, endpoints) in s.clusters() {
            let (cluster, cla) = cluster(s, name, endpoints);
            out.clusters.push(cluster);
            out.load_assignments.extend(cla);
        }
    }
    // Across services (`a` version `b-c` against service `a-b`), version order is not name
    // order.
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.load_assignments
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out
}

/// What about a (checked) mesh's services gRPC clients would refuse, which [`Mesh::check`]
/// does not: legate and Envoy accept it.
///
/// gRPC has no STRICT_DNS clusters; a `strict_dns` service reaches it as LOGICAL_DNS, which
/// takes exactly one `host:port` per cluster. Services with `tls` are not offered to gRPC
/// clients at all.
pub fn check_for_grpc(mesh: &Mesh) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for (i, s) in mesh.services.iter().enumerate() {
        if s.tls.is_some() {
            problems.push(Problem {
                path: format!("services[{i}].tls"),
                message: "gRPC clients are not served services with `tls` (gRPC takes \
                          certificates from certificate providers, not SDS)"
                    .to_owned(),
            });
        }
        if s.discovery != Discovery::StrictDns {
            continue;
        }
        let lists: Vec<(String, usize)> = if s.versions.is_empty() {
            vec![(
                format!("services[{i}].endpoints"),
                s.endpoints.as_ref().map_or(0, Vec::len),
            )]
        } else {
            s.versions
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    (
                        format!("services[{i}].versions[{j}].endpoints"),
                        v.endpoints.len(),
                    )
                })
                .collect()
        };
        for (path, n) in lists {
            if n != 1 {
                problems.push(Problem {
                    path,
                    message: format!(
                        "gRPC clients take a `strict_dns` service as LOGICAL_DNS, which needs \
                         exactly one endpoint per version; found {n}"
                    ),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn api_listener(name: &str) -> XdsListener {
    let hcm = HttpConnectionManager {
        // gRPC does not read it; Envoy requires it, and the message is the same type.
        stat_prefix: name.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    XdsListener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(type_url::HTTP_CONNECTION_MANAGER, &hcm)),
        }),
        ..Default::default()
    }
}

fn cluster(
    s: &Service,
    name: String,
    endpoints: &[Endpoint],
) -> (XdsCluster, Option<XdsClusterLoadAssignment>) {
    let assignment = load_assignment(&name, endpoints);
    let mut c = XdsCluster {
        connect_timeout: Some(duration(
            s.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )),
        // gRPC takes ROUND_ROBIN and RING_HASH (gRFC A42); it NACKs LEAST_REQUEST and
        // MAGLEV and has no RANDOM. So a hashing service is RING_HASH (with Envoy's default
        // sizes, written out; gRPC caps the ring at 4096 entries itself) and every other
        // `lb_policy` round robin, the nearest to what the service asks for. Protocol options
        // are left out too: gRPC always speaks HTTP/2, with its own keepalive and idle
        // settings.
        lb_policy: if s.lb_policy.is_hashing() {
            XdsLbPolicy::RingHash
        } else {
            XdsLbPolicy::RoundRobin
        }
        .into(),
        lb_config: s.lb_policy.is_hashing().then(|| {
            LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: 1024 }),
                maximum_ring_size: Some(UInt64Value {
                    value: 8 * 1024 * 1024,
                }),
                hash_function: RingHashFunction::XxHash.into(),
            })
        }),
        name,
        // gRPC honours both (gRFCs A32 and A50): `max_requests` of the DEFAULT thresholds,
        // and success-rate and failure-percentage ejection counting failed RPCs. Health
        // checks, the panic threshold and the classic breaker are legate's and Envoy's only.
        circuit_breakers: s.policies.circuit_breakers.as_ref().map(circuit_breakers),
        outlier_detection: s.policies.outlier_detection.as_ref().map(outlier_detection),
        ..Default::default()
    };
    match s.discovery {
        // gRPC NACKs STATIC clusters: endpoints go over EDS.
        Discovery::Static => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into()));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: c.name.clone(),
            });
            (c, Some(assignment))
        }
        // No STRICT_DNS in gRPC: LOGICAL_DNS, which gRPC resolves itself.
        Discovery::StrictDns => {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns.into()));
            c.load_assignment = Some(assignment);
            (c, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion};
    use envoy_types::pb::envoy::config::route::v3::Route as XdsRoute;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use prost::Message;

    use super::*;

    const REFERENCE: &str = include_str!("../../../examples/mesh-services.yaml");

    fn reference() -> Resources {
        match crate::load(REFERENCE, "mesh-services.yaml") {
            Ok(mesh) => compile_for_grpc(&mesh),
            Err(errors) => panic!("{errors:?}"),
        }
    }

    fn hcm(l: &XdsListener) -> HttpConnectionManager {
        assert!(l.address.is_none(), "an API listener has no address");
        assert!(l.filter_chains.is_empty());
        let a = l
            .api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
            .expect("api_listener");
        assert_eq!(a.type_url, type_url::HTTP_CONNECTION_MANAGER);
        HttpConnectionManager::decode(&a.value[..]).expect("decodes")
    }

    fn target(r: &XdsRoute) -> Vec<(&str, u32)> {
        let Some(Action::Route(a)) = &r.action else {
            panic!("forward expected")
        };
        // Nothing gRPC would ignore.
        assert_eq!(a.prefix_rewrite, "");
        assert_eq!(a.timeout, None);
        assert!(r.request_headers_to_add.is_empty());
        match &a.cluster_specifier {
            Some(ClusterSpecifier::WeightedClusters(w)) => w
                .clusters
                .iter()
                .map(|c| (&c.name[..], c.weight.as_ref().map_or(0, |w| w.value)))
                .collect(),
            Some(ClusterSpecifier::Cluster(c)) => vec![(&c[..], 1)],
            other => panic!("cluster expected, got {other:?}"),
        }
    }

    #[test]
    fn api_listeners_carry_an_hcm_over_rds() {
        let r = reference();
        let names: Vec<&str> = r.listeners.iter().map(|l| &l.name[..]).collect();
        assert_eq!(names, ["catalog", "orders", "payments"]);
        for l in &r.listeners {
            let h = hcm(l);
            let Some(RouteSpecifier::Rds(rds)) = &h.route_specifier else {
                panic!("rds expected")
            };
            assert_eq!(rds.route_config_name, l.name);
            let source = rds.config_source.as_ref().expect("config source");
            assert_eq!(
                source.config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
            );
            assert_eq!(source.resource_api_version, i32::from(ApiVersion::V3));
            let [router] = &h.http_filters[..] else {
                panic!("only the router expected")
            };
            assert_eq!(router.name, crate::compile::names::ROUTER);
            let Some(http_filter::ConfigType::TypedConfig(a)) = &router.config_type else {
                panic!("typed config expected")
            };
            assert_eq!(a.type_url, type_url::ROUTER);
            Router::decode(&a.value[..]).expect("decodes");
        }
    }

    #[test]
    fn route_configs_match_the_target_and_split_by_weight() {
        let r = reference();
        let names: Vec<&str> = r.route_configs.iter().map(|c| &c.name[..]).collect();
        assert_eq!(names, ["catalog", "orders", "payments"]);
        for rc in &r.route_configs {
            let [vh] = &rc.virtual_hosts[..] else {
                panic!("one virtual host expected")
            };
            assert_eq!(vh.domains, [rc.name.clone(), "*".to_owned()]);
            for route in &vh.routes {
                let m = route.r#match.as_ref().expect("match");
                assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/".into())));
            }
        }
        let routes = |i: usize| &r.route_configs[i].virtual_hosts[0].routes;

        // catalog: the zero-weight version only through its canary rule.
        let catalog = routes(0);
        assert_eq!(catalog.len(), 2);
        assert_eq!(target(&catalog[0]), [("catalog-experimental", 1)]);
        let headers: Vec<&str> = catalog[0]
            .r#match
            .as_ref()
            .map(|m| m.headers.iter().map(|h| &h.name[..]).collect())
            .unwrap_or_default();
        assert_eq!(headers, ["x-canary", "x-internal"]);
        assert_eq!(
            target(&catalog[1]),
            [("catalog-stable", 3), ("catalog-next", 1)]
        );

        assert_eq!(target(&routes(1)[0]), [("orders", 1)]);

        let payments = routes(2);
        assert_eq!(target(&payments[0]), [("payments-v2", 1)]);
        assert_eq!(
            target(&payments[1]),
            [("payments-v1", 90), ("payments-v2", 10)]
        );
    }

    #[test]
    fn clusters_are_eds_round_robin_with_weighted_localities() {
        let r = reference();
        let names: Vec<&str> = r.clusters.iter().map(|c| &c.name[..]).collect();
        assert_eq!(
            names,
            [
                "catalog-experimental",
                "catalog-next",
                "catalog-stable",
                "orders",
                "payments-v1",
                "payments-v2"
            ]
        );
        for c in &r.clusters {
            // catalog asks for least_request: gRPC gets round robin.
            assert_eq!(
                c.lb_policy,
                i32::from(XdsLbPolicy::RoundRobin),
                "{}",
                c.name
            );
            assert!(c.typed_extension_protocol_options.is_empty());
            let kind = if c.name == "orders" {
                DiscoveryType::LogicalDns
            } else {
                DiscoveryType::Eds
            };
            assert_eq!(
                c.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(kind.into())),
                "{}",
                c.name
            );
        }
        let orders = &r.clusters[3];
        let inline = orders.load_assignment.as_ref().expect("inline endpoints");
        assert_eq!(inline.endpoints.len(), 1);
        assert_eq!(inline.endpoints[0].lb_endpoints.len(), 1);

        let eds: Vec<&str> = r
            .clusters
            .iter()
            .filter(|c| c.eds_cluster_config.is_some())
            .map(|c| &c.name[..])
            .collect();
        let claimed: Vec<&str> = r
            .load_assignments
            .iter()
            .map(|c| &c.cluster_name[..])
            .collect();
        assert_eq!(eds, claimed, "one assignment per EDS cluster, same order");
        for cla in &r.load_assignments {
            assert!(!cla.endpoints.is_empty(), "{}", cla.cluster_name);
            for locality in &cla.endpoints {
                // gRPC fails every RPC on a locality without a positive weight.
                assert!(
                    locality.load_balancing_weight.is_some_and(|w| w.value > 0),
                    "{}",
                    cla.cluster_name
                );
            }
        }

        // Every cluster a route names exists.
        let known: HashSet<&str> = names.iter().copied().collect();
        for rc in &r.route_configs {
            for route in &rc.virtual_hosts[0].routes {
                for (cluster, _) in target(route) {
                    assert!(known.contains(cluster), "{cluster}");
                }
            }
        }
    }

    #[test]
    fn only_services_are_compiled() {
        let mesh = crate::parse_mesh(
            "listeners: [{name: l, address: '127.0.0.1:0', route_config: rc}]\n\
             route_configs: [{name: rc, virtual_hosts: []}]\n\
             clusters: [{name: c}]\n",
            "m.yaml",
        )
        .expect("parses");
        assert_eq!(compile_for_grpc(&mesh), Resources::default());
    }

    #[test]
    fn dns_services_need_one_endpoint_per_version_for_grpc() {
        let mesh = crate::load(REFERENCE, "m.yaml").expect("loads");
        assert_eq!(check_for_grpc(&mesh), Ok(()));
        let text = "\
services:
  - name: one
    discovery: strict_dns
    endpoints: [{address: 'a.example:80'}, {address: 'b.example:80'}]
  - name: many
    discovery: strict_dns
    versions:
      - {name: v1, weight: 1, endpoints: [{address: 'a.example:80'}]}
      - {name: v2, weight: 1}
  - name: fine
    endpoints: [{address: '127.0.0.1:80'}, {address: '127.0.0.2:80'}]
";
        let mesh = crate::load(text, "m.yaml").expect("loads");
        let problems: Vec<String> = check_for_grpc(&mesh)
            .expect_err("should fail")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "services[0].endpoints: gRPC clients take a `strict_dns` service as \
                 LOGICAL_DNS, which needs exactly one endpoint per version; found 2",
                "services[1].versions[1].endpoints: gRPC clients take a `strict_dns` service \
                 as LOGICAL_DNS, which needs exactly one endpoint per version; found 0",
            ]
        );
    }
}
