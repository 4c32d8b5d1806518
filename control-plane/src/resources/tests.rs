use std::collections::HashMap;
use std::fmt::Write as _;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::google::protobuf::{Any, ListValue, Struct, Value as PbValue, value::Kind};
use legate_snapshot::{ResourceKind, Resources, type_url};
use prost::Message;

use super::*;

fn string(s: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// 16 keys, inserted in the given direction: a map with as many entries iterates in a
/// different order in (almost) every independently built HashMap.
fn keys(reverse: bool) -> Vec<String> {
    let mut keys: Vec<String> = (0..16).map(|i| format!("key-{i:02}")).collect();
    if reverse {
        keys.reverse();
    }
    keys
}

fn structure(reverse: bool, depth: usize) -> Struct {
    let mut fields = HashMap::new();
    for key in keys(reverse) {
        let value = if depth > 0 && key.ends_with('3') {
            PbValue {
                kind: Some(Kind::StructValue(structure(!reverse, depth - 1))),
            }
        } else if key.ends_with('5') {
            PbValue {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![string("b"), string("a")],
                })),
            }
        } else {
            string(&key)
        };
        fields.insert(key, value);
    }
    Struct { fields }
}

fn metadata(reverse: bool) -> Metadata {
    let mut metadata = Metadata::default();
    for key in keys(reverse) {
        metadata
            .filter_metadata
            .insert(key.clone(), structure(reverse, 2));
        metadata.typed_filter_metadata.insert(
            key,
            Any {
                type_url: "type.googleapis.com/google.protobuf.Struct".to_owned(),
                value: structure(!reverse, 1).encode_to_vec(),
            },
        );
    }
    metadata
}

fn per_filter_config(reverse: bool) -> HashMap<String, Any> {
    keys(reverse)
        .into_iter()
        .map(|key| {
            let any = Any {
                type_url: "type.googleapis.com/google.protobuf.Struct".to_owned(),
                value: structure(reverse, 0).encode_to_vec(),
            };
            (key, any)
        })
        .collect()
}

fn route_config(name: &str, reverse: bool) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                name: "r".to_owned(),
                metadata: Some(metadata(reverse)),
                typed_per_filter_config: per_filter_config(reverse),
                ..Default::default()
            }],
            typed_per_filter_config: per_filter_config(!reverse),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn hcm_any(route_specifier: RouteSpecifier) -> Any {
    Any {
        type_url: type_url::HTTP_CONNECTION_MANAGER.to_owned(),
        value: HttpConnectionManager {
            stat_prefix: "http".to_owned(),
            route_specifier: Some(route_specifier),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

/// Resources with maps at many depths; `reverse` flips every insertion order.
fn fixture(reverse: bool) -> Resources {
    let socket_listener = Listener {
        name: "egress".to_owned(),
        metadata: Some(metadata(reverse)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(ConfigType::TypedConfig(hcm_any(RouteSpecifier::Rds(Rds {
                    route_config_name: "egress-routes".to_owned(),
                    config_source: None,
                })))),
            }],
            metadata: Some(metadata(!reverse)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let api_listener = Listener {
        name: "grpc-target".to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(hcm_any(RouteSpecifier::RouteConfig(route_config(
                "inline", reverse,
            )))),
        }),
        ..Default::default()
    };
    let cluster = Cluster {
        name: "backend".to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: "backend-eds".to_owned(),
            eds_config: None,
        }),
        metadata: Some(metadata(reverse)),
        typed_extension_protocol_options: per_filter_config(!reverse),
        ..Default::default()
    };
    let endpoint = |port: u32| LbEndpoint {
        metadata: Some(metadata(reverse)),
        host_identifier: Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
                Endpoint {
                    hostname: format!("h{port}"),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    let assignment = ClusterLoadAssignment {
        cluster_name: "backend-eds".to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![endpoint(1), endpoint(2)],
            metadata: Some(metadata(!reverse)),
            ..Default::default()
        }],
        named_endpoints: keys(reverse)
            .into_iter()
            .map(|k| {
                let e = Endpoint {
                    hostname: k.clone(),
                    ..Default::default()
                };
                (k, e)
            })
            .collect(),
        ..Default::default()
    };
    Resources {
        listeners: vec![socket_listener, api_listener],
        route_configs: vec![route_config("egress-routes", reverse)],
        clusters: vec![cluster],
        load_assignments: vec![assignment],
        secrets: Vec::new(),
    }
}

/// Every version in a snapshot, one line each.
fn describe(snapshot: &NodeSnapshot) -> String {
    let mut out = format!("snapshot {}\n", snapshot.version());
    for kind in ResourceKind::WARM_ORDER {
        let resources = snapshot.get(kind);
        let _ = writeln!(out, "{} {}", kind.type_url(), resources.version_info());
        for (name, resource) in resources.iter() {
            let _ = writeln!(out, "  {name} {}", resource.version);
        }
    }
    out
}

#[test]
fn versions_are_short_hex_content_hashes() {
    let snapshot = NodeSnapshot::from_resources(&fixture(false));
    let cluster = snapshot
        .get(ResourceKind::Cluster)
        .get("backend")
        .expect("cluster");
    assert_eq!(cluster.version.len(), 16);
    assert!(cluster.version.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(cluster.any.type_url, type_url::CLUSTER);
    assert_eq!(snapshot.version().len(), 16);
    // The canonical bytes are the same message (nested `Any`s are canonical too, so only
    // the decoded maps compare equal), and canonicalizing them again changes nothing.
    let decoded = Cluster::decode(cluster.any.value.as_slice()).expect("decodes");
    let original = &fixture(false).clusters[0];
    assert!(
        decoded.name == original.name && decoded.eds_cluster_config == original.eds_cluster_config
    );
    let filter_metadata = |c: &Cluster| c.metadata.as_ref().map(|m| m.filter_metadata.clone());
    assert!(filter_metadata(&decoded) == filter_metadata(original));
    let again =
        canonical::canonicalize("envoy.config.cluster.v3.Cluster", &decoded.encode_to_vec());
    assert!(again == cluster.any.value);
}

#[test]
fn independent_builds_of_the_same_resources_hash_the_same() {
    let a = NodeSnapshot::from_resources(&fixture(false));
    let b = NodeSnapshot::from_resources(&fixture(true));
    assert_eq!(describe(&a), describe(&b));
    assert_eq!(a, b);

    // The test means something only if prost's own encoding does differ between builds.
    let raw = |r: &Resources| r.clusters[0].encode_to_vec();
    let first = raw(&fixture(false));
    assert!(
        (0..5).any(|i| raw(&fixture(i % 2 == 0)) != first),
        "prost encoded the maps in the same order every time"
    );
}

/// Set by [`versions_are_stable_across_processes`] for the child it starts.
const CHILD: &str = "LEGATE_CP_PRINT_VERSIONS";

/// Not a test on its own: prints the fixture's versions when run as the child below.
#[test]
fn print_versions_for_parent() {
    if std::env::var_os(CHILD).is_some() {
        let snapshot = NodeSnapshot::from_resources(&fixture(true));
        println!("<<<{}>>>", describe(&snapshot));
    }
}

#[test]
fn versions_are_stable_across_processes() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let output = std::process::Command::new(exe)
        .args([
            "resources::tests::print_versions_for_parent",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("runs the test binary");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let start = stdout.find("<<<").expect("child printed versions") + 3;
    let end = stdout.find(">>>").expect("child printed versions");
    let theirs = &stdout[start..end];
    let ours = describe(&NodeSnapshot::from_resources(&fixture(false)));
    assert_eq!(theirs, ours);
}

#[test]
fn type_version_follows_content_only() {
    let mut resources = fixture(false);
    let a = NodeSnapshot::from_resources(&resources);
    resources.listeners.reverse();
    let b = NodeSnapshot::from_resources(&resources);
    assert_eq!(a, b, "input order does not matter");

    resources.clusters[0].name = "renamed".to_owned();
    let c = NodeSnapshot::from_resources(&resources);
    assert_ne!(
        a.get(ResourceKind::Cluster).version_info(),
        c.get(ResourceKind::Cluster).version_info()
    );
    assert_eq!(
        a.get(ResourceKind::Listener).version_info(),
        c.get(ResourceKind::Listener).version_info()
    );
    assert_ne!(a.version(), c.version());
}

#[test]
fn first_resource_of_a_name_wins() {
    let mut resources = fixture(false);
    let mut second = resources.clusters[0].clone();
    second.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 9,
        nanos: 0,
    });
    resources.clusters.push(second);
    let snapshot = NodeSnapshot::from_resources(&resources);
    let only = NodeSnapshot::from_resources(&fixture(false));
    assert_eq!(
        snapshot.get(ResourceKind::Cluster),
        only.get(ResourceKind::Cluster)
    );
}

#[test]
fn dependencies_between_types() {
    let snapshot = NodeSnapshot::from_resources(&fixture(false));
    assert_eq!(snapshot.eds_name_of_cluster("backend"), Some("backend-eds"));
    assert_eq!(snapshot.rds_names_of_listener("egress"), ["egress-routes"]);
    assert!(snapshot.rds_names_of_listener("grpc-target").is_empty());
    assert!(snapshot.rds_names_of_listener("unknown").is_empty());
}

#[test]
fn type_urls() {
    let empty = NodeSnapshot::empty();
    assert!(empty.get(ResourceKind::Listener).is_empty());
    assert!(
        empty
            .by_type_url(type_url::CLUSTER_LOAD_ASSIGNMENT)
            .is_some_and(TypeSnapshot::is_empty)
    );
}

/// A mesh whose `up` cluster names a CA and a client certificate over SDS; `other-client`
/// is declared but named by nothing.
fn tls_resources() -> Resources {
    let mesh = legate_model::load(
        "\
secrets:
  - {name: ca, ca: ca.pem}
  - {name: client, cert: c.pem, key: c.key}
  - {name: other-client, cert: o.pem, key: o.key}
clusters:
  - name: up
    endpoints: [{address: 127.0.0.1:8443}]
    tls: {ca: ca, client_certificate: client}
",
        "m.yaml",
    )
    .expect("mesh");
    let mut r = legate_model::compile(&mesh);
    // The compiler emits only what is named; a snapshot handed more must not leak it either.
    r.secrets.extend(
        mesh.secrets
            .iter()
            .filter(|s| s.name == "other-client")
            .map(
                |s| envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
                    name: s.name.clone(),
                    r#type: None,
                },
            ),
    );
    r
}

#[test]
fn a_snapshot_holds_only_the_secrets_its_resources_name() {
    let r = tls_resources();
    assert_eq!(r.secrets.len(), 3);
    let snapshot = NodeSnapshot::from_resources(&r);
    let names: Vec<&str> = snapshot.get(ResourceKind::Secret).names().collect();
    assert_eq!(names, ["ca", "client"]);
    let mut without = r.clone();
    without.clusters.clear();
    let snapshot = NodeSnapshot::from_resources(&without);
    assert!(snapshot.get(ResourceKind::Secret).is_empty());
    // Secrets count in the snapshot version.
    let mut changed = r.clone();
    changed.secrets[0].r#type = None;
    assert_ne!(
        NodeSnapshot::from_resources(&r).version(),
        NodeSnapshot::from_resources(&changed).version()
    );
}

#[test]
fn secrets_are_pushed_after_endpoints_and_before_listeners() {
    assert_eq!(
        ResourceKind::WARM_ORDER,
        [
            ResourceKind::Cluster,
            ResourceKind::ClusterLoadAssignment,
            ResourceKind::Secret,
            ResourceKind::Listener,
            ResourceKind::RouteConfiguration,
        ]
    );
    assert_eq!(
        ResourceKind::from_type_url(type_url::SECRET),
        Some(ResourceKind::Secret)
    );
}
