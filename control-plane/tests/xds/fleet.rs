//! Many nodes: snapshot selection, isolation between streams, per-type services, registry.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use legate_snapshot::{ResourceKind, Resources};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

fn one_cluster(name: &str) -> Resources {
    Resources {
        clusters: vec![cluster(name, 1)],
        ..Default::default()
    }
}

#[tokio::test]
async fn nodes_get_their_id_then_cluster_then_default_snapshot() {
    let server = start().await;
    let mut client = server.sotw(node("n1", "c1")).await;
    client.subscribe(CDS, &[]).await;
    client.expect_silence().await; // no snapshot for this node yet

    server
        .cache
        .set_default(snapshot(&one_cluster("from-default")));
    assert_eq!(
        summary(&client.recv().await).1,
        vec!["from-default".to_owned()]
    );
    server
        .cache
        .set_for_cluster("c1", snapshot(&one_cluster("from-cluster")));
    assert_eq!(
        summary(&client.recv().await).1,
        vec!["from-cluster".to_owned()]
    );
    server
        .cache
        .set_for_id("n1", snapshot(&one_cluster("from-id")));
    let by_id = client.recv().await;
    assert_eq!(summary(&by_id).1, vec!["from-id".to_owned()]);
    client.ack(&by_id, &[]).await;

    // Other selectors do not disturb a node served by id.
    server
        .cache
        .set_for_cluster("c1", snapshot(&one_cluster("from-cluster-2")));
    server
        .cache
        .set_default(snapshot(&one_cluster("from-default-2")));
    client.expect_silence().await;

    // Removing the id's snapshot falls back to the cluster's, then the default.
    server.cache.remove_for_id("n1");
    assert_eq!(
        summary(&client.recv().await).1,
        vec!["from-cluster-2".to_owned()]
    );
    server.cache.remove_for_cluster("c1");
    assert_eq!(
        summary(&client.recv().await).1,
        vec!["from-default-2".to_owned()]
    );
}

#[tokio::test]
async fn streams_of_different_nodes_see_their_own_snapshots() {
    let server = start().await;
    server.cache.set_for_id("n1", snapshot(&one_cluster("one")));
    server.cache.set_for_id("n2", snapshot(&one_cluster("two")));
    let mut c1 = server.sotw(node("n1", "")).await;
    let mut c2 = server.sotw(node("n2", "")).await;
    c1.subscribe(CDS, &[]).await;
    c2.subscribe(CDS, &[]).await;
    assert_eq!(summary(&c1.recv().await).1, vec!["one".to_owned()]);
    assert_eq!(summary(&c2.recv().await).1, vec!["two".to_owned()]);
    server
        .cache
        .set_for_id("n2", snapshot(&one_cluster("two-b")));
    assert_eq!(summary(&c2.recv().await).1, vec!["two-b".to_owned()]);
    c1.expect_silence().await;
}

/// A stream whose client never reads fills HTTP/2 flow control and its buffer, and then
/// waits; every other stream keeps getting updates at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stream_does_not_delay_the_others() {
    const GENERATIONS: u32 = 20;
    let server = start().await;
    // ~1 MB per EDS response.
    let big = |generation: u32| Resources {
        load_assignments: vec![assignment("big", 12_000, generation)],
        ..Default::default()
    };
    server.cache.set_default(snapshot(&big(0)));

    let mut stuck = server.sotw(node("stuck", "")).await;
    stuck.subscribe(EDS, &["big"]).await;
    let mut healthy = server.sotw(node("healthy", "")).await;
    healthy.subscribe(EDS, &["big"]).await;
    let first = healthy.recv().await;
    healthy.ack(&first, &["big"]).await;

    // Far more than the stuck client's flow-control windows and the stream's buffer hold.
    for generation in 1..=GENERATIONS {
        let snap = snapshot(&big(generation));
        let started = Instant::now();
        server.cache.set_default(snap.clone());
        let update = healthy.recv().await;
        assert_eq!(
            update.version_info,
            snap.get(ResourceKind::ClusterLoadAssignment).version_info()
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "update {generation} took {:?}",
            started.elapsed()
        );
        healthy.ack(&update, &["big"]).await;
    }

    // The stuck stream, once it reads, gets an answer, and the newest one arrives in the end
    // (snapshots in between may be skipped: a watch keeps only the latest).
    let last = snapshot(&big(GENERATIONS));
    let want = last
        .get(ResourceKind::ClusterLoadAssignment)
        .version_info()
        .to_owned();
    let mut seen = 0;
    loop {
        let response = stuck.recv().await;
        seen += 1;
        if response.version_info == want {
            break;
        }
    }
    assert!(
        seen <= GENERATIONS as usize,
        "stuck stream received all {seen} responses: it was never held back"
    );
}

#[tokio::test]
async fn the_per_type_cluster_service_serves_clusters_only() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = ClusterDiscoveryServiceClient::new(server.channel().await);
    let (tx, rx) = mpsc::channel(4);
    let mut responses = client
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .expect("opens")
        .into_inner();
    // Non-aggregated clients may leave type_url empty.
    tx.send(DiscoveryRequest {
        node: Some(node("n1", "")),
        ..Default::default()
    })
    .await
    .expect("sends");
    let response = responses.message().await.expect("ok").expect("a response");
    assert_eq!(
        summary(&response),
        ("cds".into(), vec!["a".into(), "b".into()])
    );

    // Changes are pushed here too.
    server.cache.set_default(snapshot(&base(2)));
    tx.send(request(CDS, &[], &response.version_info, &response.nonce))
        .await
        .expect("sends");
    let pushed = responses.message().await.expect("ok").expect("a response");
    assert_ne!(pushed.version_info, response.version_info);

    // Another type on this service ends the stream with an error.
    tx.send(request(EDS, &["a"], "", "")).await.expect("sends");
    let status = responses.message().await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let fetch = client
        .fetch_clusters(DiscoveryRequest::default())
        .await
        .expect_err("unimplemented");
    assert_eq!(fetch.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn closed_streams_leave_the_registry() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut a = server.sotw(node("n1", "c1")).await;
    a.subscribe(CDS, &[]).await;
    let _ = a.recv().await;
    let mut b = server.delta(node("n2", "c1")).await;
    b.subscribe(CDS, &[]).await;
    let _ = b.recv().await;
    server.until("two nodes", |nodes| nodes.len() == 2).await;
    assert_eq!(server.registry.stream_count(), 2);
    let json = serde_json::to_value(server.registry.nodes()).expect("serializes");
    assert_eq!(json[0]["id"], "n1");
    assert_eq!(json[1]["streams"][0]["mode"], "delta");

    drop(a);
    server.until("n1 gone", |nodes| nodes.len() == 1).await;
    drop(b);
    server.until("all gone", |nodes| nodes.is_empty()).await;
    assert_eq!(server.cache.watched_nodes(), 0);
}
