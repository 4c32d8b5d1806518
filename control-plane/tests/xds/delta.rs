//! Delta (incremental) ADS.

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use legate_snapshot::ResourceKind;

use crate::support::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

#[tokio::test]
async fn initial_resource_versions_skip_what_the_client_has() {
    let server = start().await;
    let snap = snapshot(&base(1));
    server.cache.set_default(snap.clone());
    let clusters = snap.get(ResourceKind::Cluster);
    let version_of = |name: &str| clusters.get(name).expect("exists").version.clone();

    let mut client = server.delta(node("n1", "")).await;
    client
        .send(DeltaDiscoveryRequest {
            type_url: CDS.to_owned(),
            initial_resource_versions: [
                ("a".to_owned(), version_of("a")),
                ("b".to_owned(), "0000000000000000".to_owned()),
                ("gone".to_owned(), "1111111111111111".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await;
    let response = client.recv().await;
    assert_eq!(
        delta_summary(&response),
        ("cds".into(), names(&["b"]), names(&["gone"]))
    );
    assert_eq!(response.resources[0].version, version_of("b"));
    assert_eq!(response.system_version_info, snap.version());
    client.ack(&response).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn a_first_wildcard_request_is_answered_even_when_up_to_date() {
    let server = start().await;
    let snap = snapshot(&base(1));
    server.cache.set_default(snap.clone());
    let mut client = server.delta(node("n1", "")).await;
    client
        .send(DeltaDiscoveryRequest {
            type_url: LDS.to_owned(),
            initial_resource_versions: snap
                .get(ResourceKind::Listener)
                .iter()
                .map(|(n, r)| (n.to_owned(), r.version.clone()))
                .collect(),
            ..Default::default()
        })
        .await;
    let response = client.recv().await;
    assert_eq!(delta_summary(&response), ("lds".into(), vec![], vec![]));
}

#[tokio::test]
async fn deletions_are_sent_as_removed_resources() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.delta(node("n1", "")).await;
    client.subscribe(CDS, &[]).await;
    let cds = client.recv().await;
    assert_eq!(
        delta_summary(&cds),
        ("cds".into(), names(&["a", "b"]), vec![])
    );
    client.ack(&cds).await;
    client.subscribe(EDS, &["a", "b"]).await;
    let eds = client.recv().await;
    assert_eq!(
        delta_summary(&eds),
        ("eds".into(), names(&["a", "b"]), vec![])
    );
    client.ack(&eds).await;
    client.expect_silence().await;

    let mut next = base(1);
    next.clusters.retain(|c| c.name == "a");
    next.load_assignments.retain(|c| c.cluster_name == "a");
    server.cache.set_default(snapshot(&next));
    assert_eq!(
        delta_summary(&client.recv().await),
        ("cds".into(), vec![], names(&["b"]))
    );
    assert_eq!(
        delta_summary(&client.recv().await),
        ("eds".into(), vec![], names(&["b"]))
    );
    client.expect_silence().await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_by_name() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.delta(node("n1", "")).await;
    client.subscribe(EDS, &["a"]).await;
    let first = client.recv().await;
    assert_eq!(delta_summary(&first), ("eds".into(), names(&["a"]), vec![]));
    client.ack(&first).await;

    client.subscribe(EDS, &["b", "missing"]).await;
    let second = client.recv().await;
    // A name that does not exist is reported once as removed, so the client stops waiting.
    assert_eq!(
        delta_summary(&second),
        ("eds".into(), names(&["b"]), names(&["missing"]))
    );
    client.ack(&second).await;

    client.unsubscribe(EDS, &["a"]).await;
    client.expect_silence().await;

    // `a` changes: not subscribed any more. `b` changes: sent.
    let mut next = base(1);
    next.load_assignments = vec![assignment("a", 2, 1), assignment("b", 1, 1)];
    server.cache.set_default(snapshot(&next));
    client.expect_silence().await;
    next.load_assignments = vec![assignment("a", 2, 1), assignment("b", 2, 1)];
    server.cache.set_default(snapshot(&next));
    let third = client.recv().await;
    assert_eq!(delta_summary(&third), ("eds".into(), names(&["b"]), vec![]));

    // Subscribing again asks for the current state; "*" turns a type into a wildcard.
    client.subscribe(EDS, &["a"]).await;
    assert_eq!(
        delta_summary(&client.recv().await),
        ("eds".into(), names(&["a"]), vec![])
    );
    client.subscribe(LDS, &["*"]).await;
    assert_eq!(
        delta_summary(&client.recv().await),
        ("lds".into(), names(&["l1"]), vec![])
    );
}

#[tokio::test]
async fn nack_is_recorded_and_the_same_version_not_resent() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.delta(node("n1", "")).await;
    client.subscribe(CDS, &[]).await;
    let cds = client.recv().await;
    client.nack(&cds).await;
    client.expect_silence().await;
    server
        .until("delta nack recorded", |nodes| {
            type_status(nodes, "n1", CDS)
                .and_then(|t| t.last_nack.as_ref())
                .is_some_and(|n| n.nonce == cds.nonce && n.message == "cluster 'a': bad")
        })
        .await;
    assert_eq!(
        server.registry.nodes()[0].streams[0].mode,
        legate_cp::StreamMode::Delta
    );

    // Only `a` changes: only `a` is sent; `b` (rejected with it) is not re-sent.
    let mut next = base(1);
    next.clusters = vec![cluster("a", 5), cluster("b", 1)];
    server.cache.set_default(snapshot(&next));
    let again = client.recv().await;
    assert_eq!(delta_summary(&again).1, names(&["a"]));
    client.ack(&again).await;
    server
        .until("ack recorded", |nodes| {
            type_status(nodes, "n1", CDS).is_some_and(|t| t.acked_version == t.sent_version)
        })
        .await;
}

#[tokio::test]
async fn changed_clusters_are_followed_by_their_assignments() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.delta(node("n1", "")).await;
    client.subscribe(CDS, &[]).await;
    let cds = client.recv().await;
    client.subscribe(EDS, &["a", "b"]).await;
    let eds = client.recv().await;
    client.ack(&cds).await;
    client.ack(&eds).await;
    client.expect_silence().await;

    // Only cluster `a` is redefined: its assignment follows (unchanged), `b`'s does not.
    let mut next = base(1);
    next.clusters = vec![cluster("a", 7), cluster("b", 1)];
    server.cache.set_default(snapshot(&next));
    let cds = client.recv().await;
    assert_eq!(delta_summary(&cds), ("cds".into(), names(&["a"]), vec![]));
    let eds_again = client.recv().await;
    assert_eq!(
        delta_summary(&eds_again),
        ("eds".into(), names(&["a"]), vec![])
    );
    let before = eds.resources.iter().find(|r| r.name == "a").expect("a");
    assert_eq!(eds_again.resources[0].version, before.version);
    client.expect_silence().await;
}
