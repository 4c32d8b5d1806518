//! State-of-the-world ADS.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use legate_snapshot::ResourceKind;

use crate::support::*;

/// Subscribes to all four types as Envoy does; returns the client and the first responses
/// (CDS, EDS, LDS, RDS), all ACKed.
async fn connected(server: &Server, id: &str) -> (SotwClient, [DiscoveryResponse; 4]) {
    let mut client = server.sotw(node(id, "")).await;
    client.subscribe(CDS, &[]).await;
    let cds = client.recv().await;
    assert_eq!(summary(&cds), ("cds".into(), vec!["a".into(), "b".into()]));
    client.subscribe(EDS, &["a", "b"]).await;
    let eds = client.recv().await;
    assert_eq!(summary(&eds), ("eds".into(), vec!["a".into(), "b".into()]));
    client.ack(&cds, &[]).await;
    client.ack(&eds, &["a", "b"]).await;
    client.subscribe(LDS, &[]).await;
    let lds = client.recv().await;
    assert_eq!(summary(&lds), ("lds".into(), vec!["l1".into()]));
    client.subscribe(RDS, &["r1"]).await;
    let rds = client.recv().await;
    assert_eq!(summary(&rds), ("rds".into(), vec!["r1".into()]));
    client.ack(&lds, &[]).await;
    client.ack(&rds, &["r1"]).await;
    client.expect_silence().await;
    (client, [cds, eds, lds, rds])
}

#[tokio::test]
async fn initial_push_goes_out_in_warm_order() {
    let server = start().await;
    let mut client = server.sotw(node("n1", "")).await;
    // Asked for in the "wrong" order while the node has no snapshot yet.
    client.subscribe(RDS, &["r1"]).await;
    client.subscribe(LDS, &[]).await;
    client.subscribe(EDS, &["a", "b"]).await;
    client.subscribe(CDS, &[]).await;
    server
        .until("all four types requested", |nodes| {
            nodes
                .first()
                .is_some_and(|n| n.streams.first().is_some_and(|s| s.types.len() == 4))
        })
        .await;
    client.expect_silence().await;

    let snap = snapshot(&base(1));
    server.cache.set_default(snap.clone());
    let mut order = Vec::new();
    for _ in 0..4 {
        let response = client.recv().await;
        let kind = ResourceKind::from_type_url(&response.type_url).expect("known type");
        assert_eq!(response.version_info, snap.get(kind).version_info());
        assert!(!response.nonce.is_empty());
        order.push(summary(&response));
    }
    assert_eq!(
        order,
        vec![
            ("cds".into(), vec!["a".into(), "b".into()]),
            ("eds".into(), vec!["a".into(), "b".into()]),
            ("lds".into(), vec!["l1".into()]),
            ("rds".into(), vec!["r1".into()]),
        ]
    );
    client.expect_silence().await;
}

#[tokio::test]
async fn acks_are_recorded_per_type() {
    let server = start().await;
    let snap = snapshot(&base(1));
    server.cache.set_default(snap.clone());
    let (_client, _) = connected(&server, "n1").await;
    server
        .until("every type acked", |nodes| {
            [
                ResourceKind::Cluster,
                ResourceKind::ClusterLoadAssignment,
                ResourceKind::Listener,
                ResourceKind::RouteConfiguration,
            ]
            .into_iter()
            .all(|kind| {
                type_status(nodes, "n1", kind.type_url()).is_some_and(|t| {
                    t.acked_version.as_deref() == Some(snap.get(kind).version_info())
                        && t.sent_version == t.acked_version
                })
            })
        })
        .await;
    let nodes = server.registry.nodes();
    assert_eq!(nodes[0].streams[0].mode, legate_cp::StreamMode::Sotw);
    assert_eq!(nodes[0].streams[0].user_agent_name, "legate-cp-tests");
    assert_eq!(
        nodes[0].streams[0].snapshot_version.as_deref(),
        Some(snap.version())
    );
}

#[tokio::test]
async fn nack_is_recorded_and_not_resent_until_the_version_changes() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.sotw(node("n1", "")).await;
    client.subscribe(CDS, &[]).await;
    let cds = client.recv().await;
    client.nack(&cds, &[], "").await;
    client.expect_silence().await;
    server
        .until("nack recorded", |nodes| {
            type_status(nodes, "n1", CDS)
                .and_then(|t| t.last_nack.as_ref())
                .is_some_and(|n| n.version == cds.version_info && n.nonce == cds.nonce)
        })
        .await;
    let nack = &server.registry.recent_nacks()[0];
    assert_eq!(nack.node_id, "n1");
    assert_eq!(nack.nack.code, 13);
    assert_eq!(nack.nack.message, "listener 'x': something is wrong");
    let status = server.registry.nodes();
    assert_eq!(
        type_status(&status, "n1", CDS).and_then(|t| t.acked_version.clone()),
        None
    );

    // Same content again: still nothing.
    server.cache.set_default(snapshot(&base(1)));
    client.expect_silence().await;

    // A new version goes out.
    server.cache.set_default(snapshot(&base(2)));
    let next = client.recv().await;
    assert_eq!(short(&next.type_url), "cds");
    assert_ne!(next.version_info, cds.version_info);
    client.ack(&next, &[]).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn stale_nonces_are_ignored() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let (mut client, _) = connected(&server, "n1").await;

    // Only the assignments change: one EDS push.
    let mut next = base(1);
    next.load_assignments = vec![assignment("a", 2, 1), assignment("b", 2, 1)];
    server.cache.set_default(snapshot(&next));
    let eds = client.recv().await;
    assert_eq!(short(&eds.type_url), "eds");

    // A request still carrying an older nonce, narrowing the names: ignored entirely, so
    // neither answered nor recorded.
    let mut stale = request(
        EDS,
        &["a"],
        "",
        &(eds.nonce.parse::<u64>().expect("numeric") - 1).to_string(),
    );
    stale.error_detail = Some(envoy_types::pb::google::rpc::Status {
        code: 13,
        message: "stale".into(),
        details: vec![],
    });
    client.send(stale).await;
    client.expect_silence().await;
    assert!(server.registry.recent_nacks().is_empty());

    // With the latest nonce the narrowing is answered.
    client
        .send(request(EDS, &["a"], &eds.version_info, &eds.nonce))
        .await;
    let narrowed = client.recv().await;
    assert_eq!(summary(&narrowed), ("eds".into(), vec!["a".into()]));
}

#[tokio::test]
async fn named_subscriptions_get_only_existing_requested_resources() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.sotw(node("n1", "")).await;
    client.subscribe(EDS, &["a"]).await;
    let first = client.recv().await;
    assert_eq!(summary(&first), ("eds".into(), vec!["a".into()]));

    // Widening with a valid nonce: answered at the same version.
    client
        .send(request(
            EDS,
            &["a", "b", "missing"],
            &first.version_info,
            &first.nonce,
        ))
        .await;
    let wider = client.recv().await;
    assert_eq!(
        summary(&wider),
        ("eds".into(), vec!["a".into(), "b".into()])
    );
    assert_eq!(wider.version_info, first.version_info);

    // ACK with the same names: nothing more.
    client.ack(&wider, &["a", "b", "missing"]).await;
    client.expect_silence().await;

    // RDS by name too.
    client.subscribe(RDS, &["r1", "r2"]).await;
    let rds = client.recv().await;
    assert_eq!(summary(&rds), ("rds".into(), vec!["r1".into()]));
}

#[tokio::test]
async fn empty_names_unsubscribe_and_grpc_js_widening_resubscribes() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.sotw(node("n1", "")).await;
    client.subscribe(EDS, &["a"]).await;
    let eds = client.recv().await;
    client.ack(&eds, &["a"]).await;

    // grpc-js widens with an empty nonce before ACKing anything else.
    client.subscribe(EDS, &["a", "b"]).await;
    let wider = client.recv().await;
    assert_eq!(
        summary(&wider),
        ("eds".into(), vec!["a".into(), "b".into()])
    );

    // Unsubscribe everything (what grpc-js sends on close): not a wildcard.
    client.ack(&wider, &[]).await;
    client.expect_silence().await;
    let mut next = base(1);
    next.load_assignments = vec![assignment("a", 3, 1), assignment("b", 3, 1)];
    server.cache.set_default(snapshot(&next));
    client.expect_silence().await;

    // Subscribing again gets the current state.
    client.subscribe(EDS, &["b"]).await;
    let again = client.recv().await;
    assert_eq!(summary(&again), ("eds".into(), vec!["b".into()]));
    assert_ne!(again.version_info, eds.version_info);
}

#[tokio::test]
async fn changed_clusters_are_followed_by_their_assignments() {
    let server = start().await;
    let first = snapshot(&base(1));
    server.cache.set_default(first.clone());
    let (mut client, [_, old_eds, _, _]) = connected(&server, "n1").await;

    // Cluster definitions change, assignments do not: CDS, then EDS again at its unchanged
    // version, so re-created clusters finish warming.
    server.cache.set_default(snapshot(&base(2)));
    let cds = client.recv().await;
    assert_eq!(summary(&cds), ("cds".into(), vec!["a".into(), "b".into()]));
    let eds = client.recv().await;
    assert_eq!(summary(&eds), ("eds".into(), vec!["a".into(), "b".into()]));
    assert_eq!(
        eds.version_info,
        first
            .get(ResourceKind::ClusterLoadAssignment)
            .version_info()
    );
    client.expect_silence().await;

    // Envoy then re-requests EDS with the nonce it had ACKed before: already answered, so
    // ignored as stale; its ACKs of the new responses end the exchange.
    client.ack(&old_eds, &["a", "b"]).await;
    client.expect_silence().await;
    client.ack(&eds, &["a", "b"]).await;
    client.ack(&cds, &[]).await;
    client.expect_silence().await;

    // Likewise a changed listener is followed by its routes.
    let mut next = base(2);
    next.listeners = vec![listener("l1", "r1"), listener("l2", "r1")];
    server.cache.set_default(snapshot(&next));
    let lds = client.recv().await;
    assert_eq!(
        summary(&lds),
        ("lds".into(), vec!["l1".into(), "l2".into()])
    );
    let rds = client.recv().await;
    assert_eq!(summary(&rds), ("rds".into(), vec!["r1".into()]));
    client.expect_silence().await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_the_full_state_even_at_the_current_version() {
    let server = start().await;
    let snap = snapshot(&base(1));
    server.cache.set_default(snap.clone());
    let (connection, _) = connected(&server, "n1").await;
    drop(connection);
    server
        .until("first stream gone", |nodes| nodes.is_empty())
        .await;

    let mut client = server.sotw(node("n1", "")).await;
    let current = snap.get(ResourceKind::Cluster).version_info();
    client.send(request(CDS, &[], current, "")).await;
    let cds = client.recv().await;
    assert_eq!(cds.version_info, current);
    assert_eq!(cds.resources.len(), 2);
    // An older version is fine as well (versions are not ordered).
    client
        .send(request(EDS, &["a"], "0123456789abcdef", ""))
        .await;
    assert_eq!(
        summary(&client.recv().await),
        ("eds".into(), vec!["a".into()])
    );
}

#[tokio::test]
async fn explicit_wildcard_and_unknown_types() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let mut client = server.sotw(node("n1", "")).await;
    client
        .subscribe(
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            &[],
        )
        .await;
    client.expect_silence().await;
    client.subscribe(LDS, &["*"]).await;
    let lds = client.recv().await;
    assert_eq!(summary(&lds), ("lds".into(), vec!["l1".into()]));
    // Named LDS (as gRPC clients subscribe): only that listener.
    client
        .send(request(LDS, &["l1", "nope"], &lds.version_info, &lds.nonce))
        .await;
    let named = client.recv().await;
    assert_eq!(summary(&named), ("lds".into(), vec!["l1".into()]));
    // An empty list after explicit names is an unsubscribe, not a return to wildcard.
    client.ack(&named, &[]).await;
    client.expect_silence().await; // lets the server apply it before the change below
    let mut next = base(1);
    next.listeners.push(listener("l2", "r1"));
    server.cache.set_default(snapshot(&next));
    client.expect_silence().await;
}

#[tokio::test]
async fn deleted_resources_leave_the_state_of_the_world() {
    let server = start().await;
    server.cache.set_default(snapshot(&base(1)));
    let (mut client, _) = connected(&server, "n1").await;
    let mut next = base(1);
    next.clusters.retain(|c| c.name == "a");
    next.load_assignments.retain(|c| c.cluster_name == "a");
    server.cache.set_default(snapshot(&next));
    assert_eq!(
        summary(&client.recv().await),
        ("cds".into(), vec!["a".into()])
    );
    assert_eq!(
        summary(&client.recv().await),
        ("eds".into(), vec!["a".into()])
    );
    client.expect_silence().await;
}
