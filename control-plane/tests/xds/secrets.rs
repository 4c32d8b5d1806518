//! SDS: secrets are pushed in Envoy's warm order, and a node gets only the secrets its own
//! clusters and listeners name (its client certificate chosen by its node cluster).

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use legate_cp::NodeKey;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

const MESH: &str = "\
secrets:
  - {name: payments-ca, ca: /etc/legate/payments-ca.pem}
  - {name: web-client, cert: /etc/legate/web.pem, key: /etc/legate/web.key}
  - {name: billing-client, cert: /etc/legate/billing.pem, key: /etc/legate/billing.key}
proxy:
  listener: {name: outbound, address: 127.0.0.1:15001}
services:
  - name: payments
    endpoints: [{address: 127.0.0.1:8443}]
    tls:
      ca: payments-ca
      client_certificate: web-client
      client_certificates: [{node_cluster: billing, secret: billing-client}]
";

/// Publishes the mesh as legate-cp does: the default snapshot, and one for the node cluster
/// a client certificate rule names.
fn publish(server: &Server) {
    let mesh = legate_model::load(MESH, "mesh.yaml").expect("mesh");
    let default = legate_model::compile(&mesh);
    let billing = legate_model::compile_for_node_cluster(&mesh, "billing");
    server.cache.update(|s| {
        s.set(
            NodeKey::Default,
            Arc::new(legate_cp::NodeSnapshot::from_resources(&default)),
        );
        s.set(
            NodeKey::Cluster("billing".to_owned()),
            Arc::new(legate_cp::NodeSnapshot::from_resources(&billing)),
        );
    });
}

const ALL: [&str; 3] = ["billing-client", "payments-ca", "web-client"];

#[tokio::test]
async fn sotw_serves_only_the_secrets_a_node_is_entitled_to() {
    let server = start().await;
    publish(&server);
    for (node_cluster, expected) in [
        ("web", ["payments-ca", "web-client"]),
        ("billing", ["billing-client", "payments-ca"]),
    ] {
        let mut client = server.sotw(node("n-1", node_cluster)).await;
        // A node asking for every secret, its neighbours' client certificate included.
        client.subscribe(SDS, &ALL).await;
        let response = client.recv().await;
        assert_eq!(
            summary(&response),
            (
                "sds".to_owned(),
                expected.iter().map(|s| (*s).to_owned()).collect()
            ),
            "node cluster {node_cluster}"
        );
        client.ack(&response, &ALL).await;
        client.expect_silence().await;
    }
}

#[tokio::test]
async fn delta_reports_an_unentitled_secret_as_absent() {
    let server = start().await;
    publish(&server);
    let mut client = server.delta(node("n-1", "web")).await;
    client
        .subscribe(SDS, &["billing-client", "payments-ca"])
        .await;
    let response = client.recv().await;
    assert_eq!(
        delta_summary(&response),
        (
            "sds".to_owned(),
            vec!["payments-ca".to_owned()],
            vec!["billing-client".to_owned()]
        )
    );
    client.ack(&response).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn secrets_go_out_after_endpoints_and_before_listeners() {
    let server = start().await;
    let mut client = server.sotw(node("n-1", "web")).await;
    client.subscribe(RDS, &["outbound"]).await;
    client.subscribe(LDS, &[]).await;
    client.subscribe(SDS, &["payments-ca", "web-client"]).await;
    client.subscribe(EDS, &["payments"]).await;
    client.subscribe(CDS, &[]).await;
    server
        .until("all five types requested", |nodes| {
            nodes
                .first()
                .is_some_and(|n| n.streams.first().is_some_and(|s| s.types.len() == 5))
        })
        .await;
    publish(&server);
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(summary(&client.recv().await).0);
    }
    assert_eq!(order, ["cds", "eds", "sds", "lds", "rds"]);
    // The registry lists types in the same order.
    let nodes = server.registry.nodes();
    let types: Vec<String> = nodes[0].streams[0]
        .types
        .iter()
        .map(|t| short(&t.type_url))
        .collect();
    assert_eq!(types, ["cds", "eds", "sds", "lds", "rds"]);
}

#[tokio::test]
async fn the_per_type_sds_service_answers_too() {
    let server = start().await;
    publish(&server);
    let mut client = SecretDiscoveryServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("n-1", "billing")),
        resource_names_subscribe: vec!["billing-client".to_owned(), "web-client".to_owned()],
        ..Default::default()
    })
    .await
    .expect("send");
    let mut responses = client
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), responses.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!(
        delta_summary(&response),
        (
            "sds".to_owned(),
            vec!["billing-client".to_owned()],
            vec!["web-client".to_owned()]
        )
    );
}
