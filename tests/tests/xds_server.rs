//! The test xDS server itself, checked with tonic's generated ADS client over a real socket:
//! SotW and delta serving rules, recording, and the scripting hooks the legate tests rely on.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use legate_tests::config::{cluster, mesh, single_vhost_mesh};
use legate_tests::xds_server::{
    Behavior, CDS, EDS, LDS, RDS, Resource, XdsServer, by_type, mesh_resources,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for a response that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// Clusters `a` and `b`, a listener `outbound` and its route config, all compiled from the
/// authoring format. The endpoints are never dialled.
fn two_cluster_mesh() -> String {
    let a = cluster("a", &["127.0.0.1:1".parse().expect("addr")]);
    let b = cluster("b", &["127.0.0.1:2".parse().expect("addr")]);
    single_vhost_mesh(
        r#"
            - match: {prefix: /b/}
              forward: {cluster: b}
            - match: {prefix: /}
              forward: {cluster: a}
        "#,
        &[a, b],
    )
}

fn node() -> Node {
    Node {
        id: "client-1".to_owned(),
        cluster: "tests".to_owned(),
        ..Default::default()
    }
}

async fn connect(server: &XdsServer) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(server.url())
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", server.url()))
}

/// A client stream: requests go into `tx`, responses come out of `rx`.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(server: &XdsServer) -> Sotw {
        let (tx, requests) = mpsc::channel(16);
        let rx = connect(server)
            .await
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap_or_else(|status| panic!("StreamAggregatedResources failed: {status}"))
            .into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.expect("request stream open");
    }

    async fn next(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("the SotW stream ended"),
            Ok(Err(status)) => panic!("the SotW stream failed: {status}"),
            Err(_) => panic!("no SotW response within {WAIT:?}"),
        }
    }

    async fn assert_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(server: &XdsServer) -> Delta {
        let (tx, requests) = mpsc::channel(16);
        let rx = connect(server)
            .await
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap_or_else(|status| panic!("DeltaAggregatedResources failed: {status}"))
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.expect("request stream open");
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("the delta stream ended"),
            Ok(Err(status)) => panic!("the delta stream failed: {status}"),
            Err(_) => panic!("no delta response within {WAIT:?}"),
        }
    }

    async fn assert_quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

fn sotw_request(type_url: &str, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn names_of(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            let r = Resource::from_any("", any.clone());
            match any.type_url.as_str() {
                CDS => r.decode::<XdsCluster>().name,
                EDS => {
                    r.decode::<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>(
                    )
                    .cluster_name
                }
                other => panic!("unexpected type {other}"),
            }
        })
        .collect()
}

fn delta_names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn mesh_yaml_compiles_to_resources_per_type() {
    let resources = mesh_resources(&two_cluster_mesh());
    let per_type: BTreeMap<&str, Vec<String>> = by_type(&resources)
        .into_iter()
        .map(|(t, list)| (t, list.into_iter().map(|r| r.name).collect()))
        .collect();
    assert_eq!(per_type[CDS], ["a", "b"]);
    assert_eq!(
        per_type[EDS],
        ["a", "b"],
        "static clusters are served over EDS"
    );
    assert_eq!(per_type[LDS], ["outbound"]);
    assert_eq!(per_type[RDS], ["outbound"]);
    // Versions are content hashes: the same resource twice has the same version.
    let again = by_type(&mesh_resources(&two_cluster_mesh()));
    assert_eq!(by_type(&resources), again);
}

#[tokio::test]
async fn sotw_wildcard_named_ack_nack_and_push() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());
    let mut client = Sotw::open(&server).await;

    // CDS wildcard: every cluster, with the node recorded.
    let mut first = sotw_request(CDS, "", "", &[]);
    first.node = Some(node());
    client.send(first).await;
    let cds = client.next().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(cds.version_info, "v1");
    assert_eq!(names_of(&cds), ["a", "b"]);
    assert!(!cds.nonce.is_empty());
    let recorded = server
        .wait_for_request(WAIT, "the first CDS request", |r| r.type_url == CDS)
        .await;
    assert_eq!(
        recorded.node.as_ref().map(|n| n.id.as_str()),
        Some("client-1")
    );
    assert_eq!(
        server.streams()[0].node.as_ref().map(|n| n.id.as_str()),
        Some("client-1")
    );

    // ACK: recorded, not answered.
    client
        .send(sotw_request(CDS, &cds.version_info, &cds.nonce, &[]))
        .await;
    let ack = server.wait_for_answer(1, &cds.nonce, WAIT).await;
    assert!(ack.is_ack(), "{}", ack.describe());
    client.assert_quiet().await;

    // EDS by name: only what was asked for.
    client.send(sotw_request(EDS, "", "", &["b"])).await;
    let eds = client.next().await;
    assert_eq!(names_of(&eds), ["b"]);

    // A push reaches the subscribed stream; a NACK is recorded with its detail.
    let push = server.set(CDS, vec![server.resources(CDS)[0].clone()]);
    assert_eq!(push.version, "v2");
    let pushed = client.next().await;
    assert_eq!(pushed.nonce, push.nonce());
    assert_eq!(names_of(&pushed), ["a"]);
    let mut nack = sotw_request(CDS, "v1", &pushed.nonce, &[]);
    nack.error_detail = Some(RpcStatus {
        code: 13,
        message: "cluster 'a': no".to_owned(),
        details: Vec::new(),
    });
    client.send(nack).await;
    let nacks = server.wait_nacked(&push, WAIT).await;
    assert_eq!(nacks[0].version_info, "v1");
    let error = nacks[0].error.clone().expect("error detail");
    assert_eq!(
        (error.code, error.message.as_str()),
        (13, "cluster 'a': no")
    );
    assert_eq!(server.nacks_for(CDS).len(), 1);
    assert_eq!(server.acks_for(CDS).len(), 1);
    client.assert_quiet().await;

    // A request carrying a superseded nonce is ignored, even with new names.
    client.send(sotw_request(EDS, "", &cds.nonce, &["a"])).await;
    client.assert_quiet().await;
    // The latest nonce with new names is answered.
    client
        .send(sotw_request(
            EDS,
            &eds.version_info,
            &eds.nonce,
            &["a", "b"],
        ))
        .await;
    assert_eq!(names_of(&client.next().await), ["a", "b"]);
}

#[tokio::test]
async fn sotw_unknown_type_waits_until_set() {
    let server = XdsServer::start().await;
    let mut client = Sotw::open(&server).await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    client.assert_quiet().await;
    let resources = by_type(&mesh_resources(&two_cluster_mesh()));
    let push = server.set(CDS, resources[0].1.clone());
    let response = client.next().await;
    assert_eq!(response.nonce, push.nonce());
    assert_eq!(names_of(&response), ["a", "b"]);
}

#[tokio::test]
async fn delta_sends_only_differences() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());
    let mut client = Delta::open(&server).await;

    client
        .send(DeltaDiscoveryRequest {
            node: Some(node()),
            type_url: CDS.to_owned(),
            ..Default::default()
        })
        .await;
    let first = client.next().await;
    assert_eq!(first.system_version_info, "v1");
    assert_eq!(delta_names(&first), ["a", "b"]);
    let versions = server.resource_versions(CDS);
    for r in &first.resources {
        assert_eq!(Some(&r.version), versions.get(&r.name));
    }
    client
        .send(DeltaDiscoveryRequest {
            type_url: CDS.to_owned(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await;
    client.assert_quiet().await;

    // Change one cluster: only it is sent.
    let mut a: XdsCluster = server.resources(CDS)[0].decode();
    a.connect_timeout = Some(PbDuration {
        seconds: 9,
        nanos: 0,
    });
    let push = server.upsert(CDS, vec![Resource::cluster(&a)]);
    let changed = client.next().await;
    assert_eq!(changed.nonce, push.nonce());
    assert_eq!(delta_names(&changed), ["a"]);
    assert!(changed.removed_resources.is_empty());

    // Remove one: removed_resources.
    let push = server.remove(CDS, &["b"]);
    let removed = client.next().await;
    assert_eq!(removed.nonce, push.nonce());
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, ["b"]);

    // Named EDS: subscribe, unsubscribe, subscribe again (sent again).
    let subscribe = |names: &[&str], unsubscribe: &[&str]| DeltaDiscoveryRequest {
        type_url: EDS.to_owned(),
        resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    };
    client.send(subscribe(&["a"], &[])).await;
    assert_eq!(delta_names(&client.next().await), ["a"]);
    client.send(subscribe(&[], &["a"])).await;
    client.assert_quiet().await;
    client.send(subscribe(&["a"], &[])).await;
    assert_eq!(delta_names(&client.next().await), ["a"]);

    // A NACK is recorded and not answered.
    client
        .send(DeltaDiscoveryRequest {
            type_url: CDS.to_owned(),
            response_nonce: removed.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: "no".to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    client.assert_quiet().await;
    assert_eq!(server.nacks_for(CDS).len(), 1);
    assert_eq!(server.nacks_for(CDS)[0].response_nonce, removed.nonce);
}

#[tokio::test]
async fn delta_initial_resource_versions_seed_the_client_state() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());
    let versions = server.resource_versions(CDS);
    let mut client = Delta::open(&server).await;
    // The client has `a` at the current version, `b` at an old one, and `gone`, which the
    // server no longer has.
    let initial = [
        ("a".to_owned(), versions["a"].clone()),
        ("b".to_owned(), "old".to_owned()),
        ("gone".to_owned(), "old".to_owned()),
    ];
    client
        .send(DeltaDiscoveryRequest {
            type_url: CDS.to_owned(),
            initial_resource_versions: initial.into_iter().collect(),
            ..Default::default()
        })
        .await;
    let response = client.next().await;
    assert_eq!(delta_names(&response), ["b"]);
    assert_eq!(response.removed_resources, ["gone"]);
    let recorded = server
        .wait_for_request(WAIT, "the CDS request", |r| r.type_url == CDS)
        .await;
    assert_eq!(recorded.initial_resource_versions.len(), 3);

    // A first wildcard request is answered even when the client is up to date.
    let mut up_to_date = Delta::open(&server).await;
    up_to_date
        .send(DeltaDiscoveryRequest {
            type_url: CDS.to_owned(),
            initial_resource_versions: versions.clone().into_iter().collect(),
            ..Default::default()
        })
        .await;
    let empty = up_to_date.next().await;
    assert!(empty.resources.is_empty() && empty.removed_resources.is_empty());
}

#[tokio::test]
async fn raw_responses_carry_the_chosen_nonce_and_version() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());
    let mut client = Sotw::open(&server).await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let _ = client.next().await;
    let sent = server.send_raw_sotw(
        None,
        DiscoveryResponse {
            version_info: "chosen".to_owned(),
            type_url: CDS.to_owned(),
            nonce: "stale-1".to_owned(),
            ..Default::default()
        },
    );
    assert_eq!(sent.len(), 1);
    assert!(sent[0].raw);
    let raw = client.next().await;
    assert_eq!(
        (raw.version_info.as_str(), raw.nonce.as_str()),
        ("chosen", "stale-1")
    );
    client
        .send(sotw_request(CDS, "chosen", "stale-1", &[]))
        .await;
    let answer = server.wait_for_answer(1, "stale-1", WAIT).await;
    assert_eq!(answer.version_info, "chosen");

    // Delta: raw responses to delta streams only.
    let mut delta = Delta::open(&server).await;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: LDS.to_owned(),
            ..Default::default()
        })
        .await;
    let _ = delta.next().await;
    let sent = server.send_raw_delta(
        None,
        DeltaDiscoveryResponse {
            system_version_info: "x".to_owned(),
            type_url: LDS.to_owned(),
            removed_resources: vec!["outbound".to_owned()],
            ..Default::default()
        },
    );
    assert_eq!(sent.len(), 1, "only the delta stream: {sent:#?}");
    let raw = delta.next().await;
    assert_eq!(raw.removed_resources, ["outbound"]);
    assert_eq!(raw.nonce, sent[0].nonce, "an empty nonce is filled in");
    assert!(!raw.nonce.is_empty());
}

#[tokio::test]
async fn drop_streams_ends_them_with_unavailable() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());
    let mut client = Sotw::open(&server).await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let _ = client.next().await;
    assert_eq!(server.connected_streams(), 1);
    assert_eq!(server.drop_streams(), 1);
    assert_eq!(server.connected_streams(), 0);
    match tokio::time::timeout(WAIT, client.rx.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
        other => panic!("expected the stream to fail with UNAVAILABLE, got {other:?}"),
    }
    // The server still serves new streams.
    let mut again = Sotw::open(&server).await;
    again.send(sotw_request(CDS, "v1", "", &[])).await;
    assert_eq!(again.next().await.version_info, "v1");
    assert_eq!(server.streams().len(), 2);
    assert!(!server.streams()[0].open);
}

#[tokio::test]
async fn shutdown_cuts_connections_and_restart_serves_on_the_same_port() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());
    let mut client = Sotw::open(&server).await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let _ = client.next().await;

    server.shutdown().await;
    assert!(!server.is_running());
    assert_eq!(server.connected_streams(), 0);
    match tokio::time::timeout(WAIT, client.rx.message()).await {
        Ok(Err(_)) | Ok(Ok(None)) => {}
        other => panic!("expected the stream to die with the server, got {other:?}"),
    }
    let refused = AggregatedDiscoveryServiceClient::connect(server.url()).await;
    assert!(refused.is_err(), "connected to a shut down server");

    server.restart().await;
    let mut client = Sotw::open(&server).await;
    client.send(sotw_request(CDS, "v1", "", &[])).await;
    let response = client.next().await;
    assert_eq!(response.version_info, "v1", "resources survive a restart");
    assert_eq!(server.streams().len(), 2);
}

#[tokio::test]
async fn refuse_and_hang() {
    let server = XdsServer::start().await;
    server.set_mesh(&two_cluster_mesh());

    server.set_behavior(Behavior::Refuse);
    let (_tx, requests) = mpsc::channel::<DiscoveryRequest>(1);
    let refused = connect(&server)
        .await
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await;
    match refused {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable),
        Ok(_) => panic!("a refused stream was opened"),
    }
    assert_eq!(server.stream_attempts(), 1);
    assert_eq!(server.connected_streams(), 0);

    server.set_behavior(Behavior::Hang);
    let mut hanging = Sotw::open(&server).await;
    hanging.send(sotw_request(CDS, "", "", &[])).await;
    server
        .wait_for_request(WAIT, "the CDS request", |r| r.type_url == CDS)
        .await;
    hanging.assert_quiet().await;
    let push = server.push(CDS);
    assert!(push.sent.is_empty(), "nothing is pushed while hanging");

    server.set_behavior(Behavior::Serve);
    let push = server.push(CDS);
    assert_eq!(push.sent.len(), 1, "pushes resume on the open stream");
    assert_eq!(names_of(&hanging.next().await), ["a", "b"]);
}

#[tokio::test]
async fn set_mesh_pushes_only_changed_types() {
    let server = XdsServer::start().await;
    let a = cluster("a", &["127.0.0.1:1".parse().expect("addr")]);
    let first = single_vhost_mesh(
        "- direct_response: {status: 200, body: one}",
        std::slice::from_ref(&a),
    );
    let pushes = server.set_mesh(&first);
    assert_eq!(pushes.len(), 4);
    let second = single_vhost_mesh("- direct_response: {status: 200, body: two}", &[a]);
    let pushes = server.set_mesh(&second);
    let types: Vec<&str> = pushes.iter().map(|p| p.type_url.as_str()).collect();
    assert_eq!(types, [RDS]);
    assert!(server.set_mesh(&second).is_empty());
    // An empty mesh clears every type.
    let pushes = server.set_mesh(&mesh("", "", &[]));
    assert_eq!(pushes.len(), 4);
    assert!(server.resources(LDS).is_empty());
}
