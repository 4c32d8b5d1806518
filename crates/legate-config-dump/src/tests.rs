use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret as XdsSecret, TlsCertificate, secret,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use legate_snapshot::{ResourceKind, type_url};
use prost::Message;
use prost_reflect::{DynamicMessage, Value};
use serde_json::Value as Json;

use super::*;

fn cluster(name: &str) -> XdsCluster {
    XdsCluster {
        name: name.to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: 5,
            nanos: 0,
        }),
        ..XdsCluster::default()
    }
}

fn secret_with_key(name: &str, key: Specifier) -> XdsSecret {
    XdsSecret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(DataSource {
                specifier: Some(Specifier::Filename("/certs/chain.pem".to_owned())),
                ..DataSource::default()
            }),
            private_key: Some(DataSource {
                specifier: Some(key),
                ..DataSource::default()
            }),
            ..TlsCertificate::default()
        })),
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..HeaderValue::default()
        }),
        ..HeaderValueOption::default()
    }
}

fn inputs() -> Inputs {
    let at = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
    let routes = RouteConfiguration {
        name: "outbound".to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "all".to_owned(),
            domains: vec!["*".to_owned()],
            request_headers_to_add: vec![
                header("authorization", "Bearer sekrit"),
                header("x-team", "payments"),
            ],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    };
    Inputs {
        bootstrap: None,
        versions: vec![(ResourceKind::Cluster, "v7".to_owned())],
        resources: vec![
            Resource::from_message(ResourceKind::Cluster, Origin::Static, at, &cluster("web")),
            Resource::from_message(
                ResourceKind::Cluster,
                Origin::Dynamic {
                    version: "v7".to_owned(),
                },
                at,
                &cluster("api"),
            ),
            Resource::from_message(
                ResourceKind::RouteConfiguration,
                Origin::Static,
                at,
                &routes,
            ),
            Resource::from_message(
                ResourceKind::Secret,
                Origin::Static,
                at,
                &secret_with_key(
                    "inline",
                    Specifier::InlineString("-----BEGIN PRIVATE KEY-----".to_owned()),
                ),
            ),
            Resource::from_message(
                ResourceKind::Secret,
                Origin::Dynamic {
                    version: "3".to_owned(),
                },
                at,
                &secret_with_key("file", Specifier::Filename("/certs/key.pem".to_owned())),
            ),
        ],
    }
}

fn dump(query: &str) -> Json {
    let q = Query::parse(query).expect("query");
    let bytes = render(&inputs(), &q).expect("renders");
    serde_json::from_slice(&bytes).expect("valid JSON")
}

fn config<'a>(dump: &'a Json, short: &str) -> &'a Json {
    let t = format!("type.googleapis.com/envoy.admin.v3.{short}");
    dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["@type"] == t.as_str()))
        .unwrap_or_else(|| panic!("no {short} in {dump:#}"))
}

#[test]
fn descriptors_hold_every_type_legate_accepts() {
    let pool = pool().expect("descriptors load");
    let accepted = [
        type_url::RESOURCE_WRAPPER,
        type_url::LISTENER,
        type_url::ROUTE_CONFIGURATION,
        type_url::CLUSTER,
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        type_url::SECRET,
        type_url::HTTP_CONNECTION_MANAGER,
        type_url::CONNECTION_LIMIT,
        type_url::ROUTER,
        type_url::UPSTREAM_TLS_CONTEXT,
        type_url::DOWNSTREAM_TLS_CONTEXT,
        type_url::HTTP_PROTOCOL_OPTIONS,
        type_url::FILE_ACCESS_LOG,
    ];
    for url in accepted {
        let name = url.trim_start_matches("type.googleapis.com/");
        assert!(pool.get_message_by_name(name).is_some(), "{name} missing");
    }
    for name in ROOT_MESSAGES {
        assert!(pool.get_message_by_name(name).is_some(), "{name} missing");
    }
    assert!(
        pool.get_extension_by_name("udpa.annotations.sensitive")
            .is_some(),
        "the sensitive annotation is what redaction goes by"
    );
}

/// The vendored descriptors were cut from the `envoy-types` this workspace builds with; a
/// version bump must regenerate them (`make envoy-descriptors`).
#[test]
fn descriptors_match_the_locked_envoy_types() {
    let vendored = include_str!("../descriptors/ENVOY_TYPES_VERSION").trim();
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
        .expect("Cargo.lock");
    let locked = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("envoy-types in Cargo.lock");
    assert_eq!(
        vendored, locked,
        "descriptors/envoy.binpb is from envoy-types {vendored}, the build uses {locked}: run `make envoy-descriptors`"
    );
}

/// Every field of a compiled mesh's resources is known to the descriptors: none decodes as
/// an unknown field (which the JSON would silently drop).
#[test]
fn descriptors_know_every_field_the_compiler_sets() {
    fn no_unknown(msg: &DynamicMessage, path: &str) {
        assert_eq!(msg.unknown_fields().count(), 0, "unknown fields at {path}");
        for (field, value) in msg.fields() {
            let path = format!("{path}.{}", field.name());
            let mut check = |v: &Value| {
                if let Value::Message(m) = v {
                    no_unknown(m, &path);
                }
            };
            match value {
                Value::List(l) => l.iter().for_each(&mut check),
                Value::Map(m) => m.values().for_each(&mut check),
                v => check(v),
            }
        }
    }
    let mesh = legate_model::parse_mesh(MESH, "test").expect("mesh");
    let r = legate_model::compile(&mesh);
    let pool = pool().expect("descriptors");
    let mut n = 0;
    let mut each = |kind: ResourceKind, bytes: Vec<u8>| {
        let name = kind.type_url().trim_start_matches("type.googleapis.com/");
        let desc = pool.get_message_by_name(name).expect("known");
        let msg = DynamicMessage::decode(desc, bytes.as_slice()).expect("decodes");
        no_unknown(&msg, name);
        n += 1;
    };
    r.listeners
        .iter()
        .for_each(|x| each(ResourceKind::Listener, x.encode_to_vec()));
    r.clusters
        .iter()
        .for_each(|x| each(ResourceKind::Cluster, x.encode_to_vec()));
    r.route_configs
        .iter()
        .for_each(|x| each(ResourceKind::RouteConfiguration, x.encode_to_vec()));
    r.load_assignments
        .iter()
        .for_each(|x| each(ResourceKind::ClusterLoadAssignment, x.encode_to_vec()));
    r.secrets
        .iter()
        .for_each(|x| each(ResourceKind::Secret, x.encode_to_vec()));
    assert!(n >= 6, "the mesh compiled to {n} resources");
}

/// Every field of the authoring format.
const MESH: &str = include_str!("../../../examples/mesh-reference.yaml");

#[test]
fn dump_is_envoys_shape_with_durations_as_strings() {
    let d = dump("");
    let clusters = config(&d, "ClustersConfigDump");
    assert_eq!(clusters["version_info"], "v7");
    let s = &clusters["static_clusters"][0];
    assert_eq!(
        s["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(s["cluster"]["name"], "web");
    assert_eq!(s["cluster"]["connect_timeout"], "5s");
    assert_eq!(s["last_updated"], "2023-11-14T22:13:20.123Z");
    let a = &clusters["dynamic_active_clusters"][0];
    assert_eq!(a["version_info"], "v7");
    assert_eq!(a["cluster"]["name"], "api");
    assert!(config(&d, "RoutesConfigDump")["static_route_configs"][0]["route_config"].is_object());
    let text = d.to_string();
    for internal in ["\"secs\"", "\"nanos\"", "permille"] {
        assert!(!text.contains(internal), "{internal} in {text}");
    }
    // Endpoints only when asked for, as Envoy.
    assert!(!text.contains("EndpointsConfigDump"));
    assert!(
        dump("include_eds")
            .to_string()
            .contains("EndpointsConfigDump")
    );
}

#[test]
fn secrets_and_sensitive_headers_are_redacted_as_envoy_does() {
    let d = dump("");
    let secrets = config(&d, "SecretsConfigDump");
    let inline = &secrets["static_secrets"][0];
    assert_eq!(inline["name"], "inline");
    let cert = &inline["secret"]["tls_certificate"];
    assert_eq!(cert["private_key"]["inline_string"], REDACTED);
    // Not sensitive: shown.
    assert_eq!(cert["certificate_chain"]["filename"], "/certs/chain.pem");
    // Envoy redacts every string below a sensitive field, a file name too.
    let file = &secrets["dynamic_active_secrets"][0];
    assert_eq!(file["version_info"], "3");
    assert_eq!(
        file["secret"]["tls_certificate"]["private_key"]["filename"],
        REDACTED
    );
    let headers = &config(&d, "RoutesConfigDump")["static_route_configs"][0]["route_config"]["virtual_hosts"]
        [0]["request_headers_to_add"];
    assert_eq!(headers[0]["header"]["key"], "authorization");
    assert_eq!(headers[0]["header"]["value"], REDACTED);
    assert_eq!(headers[1]["header"]["value"], "payments");
    let text = d.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("sekrit"),
        "{text}"
    );
}

#[test]
fn inline_bytes_are_redacted_to_the_bytes_of_redacted() {
    let any = Any {
        type_url: type_url::SECRET.to_owned(),
        value: secret_with_key("b", Specifier::InlineBytes(b"KEY".to_vec())).encode_to_vec(),
    };
    let v = any_json(&any).expect("renders");
    assert_eq!(v["@type"], type_url::SECRET);
    // base64("[redacted]"), what Envoy prints.
    assert_eq!(
        v["tls_certificate"]["private_key"]["inline_bytes"],
        "W3JlZGFjdGVkXQ=="
    );
}

#[test]
fn resource_lists_the_items_of_one_field() {
    let d = dump("resource=dynamic_active_clusters");
    let items = d["configs"].as_array().expect("configs");
    assert_eq!(items.len(), 1, "{d:#}");
    assert_eq!(
        items[0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster"
    );
    assert_eq!(items[0]["cluster"]["name"], "api");
    // A field no dump type has.
    let err =
        render(&inputs(), &Query::parse("resource=nope").expect("parses")).expect_err("refused");
    assert_eq!(err.http_status(), 404);
    assert_eq!(err.to_string(), "nope not found in config dump");
    // A known field with nothing in it.
    let d = dump("resource=dynamic_route_configs");
    assert!(d.get("configs").is_none(), "{d:#}");
}

#[test]
fn mask_keeps_the_named_fields_and_reaches_into_the_resource_with_resource() {
    let d = dump("resource=static_clusters&mask=cluster.name");
    let item = &d["configs"][0];
    assert_eq!(item["cluster"]["name"], "web");
    assert!(item["cluster"].get("connect_timeout").is_none(), "{d:#}");
    assert!(item.get("last_updated").is_none(), "{d:#}");
    // Without resource: per dump type, and only the types that have the field.
    let d = dump("mask=static_clusters");
    let configs = d["configs"].as_array().expect("configs");
    assert_eq!(configs.len(), 1, "{d:#}");
    assert!(configs[0].get("version_info").is_none(), "{d:#}");
    assert_eq!(configs[0]["static_clusters"][0]["cluster"]["name"], "web");
    // Through a repeated field: invalid everywhere, as in Envoy.
    let err = render(
        &inputs(),
        &Query::parse("mask=static_clusters.cluster").expect("parses"),
    )
    .expect_err("refused");
    assert_eq!(err.http_status(), 400);
}

/// Found by comparing with a real Envoy: a `Percent` of 40 printed as `40.0`.
#[test]
fn whole_doubles_print_as_envoy_prints_them() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    let mut c = cluster("p");
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 40.0 }),
        ..CommonLbConfig::default()
    });
    let inputs = Inputs {
        resources: vec![Resource::from_message(
            ResourceKind::Cluster,
            Origin::Static,
            None,
            &c,
        )],
        ..Inputs::default()
    };
    let text =
        String::from_utf8(render(&inputs, &Query::default()).expect("renders")).expect("utf-8");
    assert!(text.contains("\"value\": 40\n"), "{text}");
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 12.5 }),
        ..CommonLbConfig::default()
    });
    let any = Any {
        type_url: type_url::CLUSTER.to_owned(),
        value: c.encode_to_vec(),
    };
    assert_eq!(
        any_json(&any).expect("renders")["common_lb_config"]["healthy_panic_threshold"]["value"],
        12.5
    );
}

#[test]
fn queries_are_bounded() {
    let many = vec!["a"; MAX_MASK_PATHS + 1].join(",");
    assert!(Query::parse(&format!("mask={many}")).is_err());
    assert!(Query::parse(&format!("resource={}", "x".repeat(5000))).is_err());
    let q = Query::parse("resource=static_clusters&mask=cluster.name%2Clast_updated&include_eds")
        .expect("parses");
    assert_eq!(q.resource.as_deref(), Some("static_clusters"));
    assert_eq!(
        q.mask.map(|m| m.1),
        Some(vec!["cluster.name".to_owned(), "last_updated".to_owned()])
    );
    assert!(q.include_eds);
}

#[test]
fn an_any_of_an_unknown_type_is_named_not_dropped() {
    let mut c = cluster("odd");
    c.typed_extension_protocol_options.insert(
        "x".to_owned(),
        Any {
            type_url: "type.googleapis.com/example.Unknown".to_owned(),
            value: vec![8, 1],
        },
    );
    let any = Any {
        type_url: type_url::CLUSTER.to_owned(),
        value: c.encode_to_vec(),
    };
    let v = any_json(&any).expect("renders");
    let shown = &v["typed_extension_protocol_options"]["x"];
    assert_eq!(
        shown["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    assert!(
        shown["value"]
            .as_str()
            .is_some_and(|s| s.contains("example.Unknown")),
        "{v:#}"
    );
}

#[test]
fn resource_debug_never_shows_the_encoding() {
    let r = Resource {
        kind: ResourceKind::Secret,
        origin: Origin::Static,
        last_updated: None,
        any: Arc::new(Any {
            type_url: type_url::SECRET.to_owned(),
            value: b"PRIVATE".to_vec(),
        }),
    };
    assert!(!format!("{r:?}").contains("PRIVATE"));
}
