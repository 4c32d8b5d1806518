//! legate as an xDS client, end to end: the real `legate` binary against the scriptable ADS
//! server (`legate_tests::xds_server`), with real upstreams. Every scenario runs twice, over
//! state of the world and over delta (`both_modes!`).
//!
//! Resources are written in legate's authoring YAML and compiled with `legate-model`, except
//! where a test needs what the format cannot express (an invalid cluster).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::google::protobuf::value::Kind;
use legate_tests::client::HttpClient;
use legate_tests::config::{ClusterSpec, cluster, mesh, single_vhost_mesh};
use legate_tests::xds_server::{
    ALL_TYPES, CDS, EDS, LDS, RDS, RecordedRequest, Resource, SDS, mesh_resources, short,
};
use legate_tests::{
    Legate, Mode, Protocol, Upstream, XdsFlags, XdsServer, both_modes, eventually, free_port,
};

/// Upper bound of every wait on the server or the proxy.
const WAIT: Duration = Duration::from_secs(10);

async fn upstream(name: &str) -> Upstream {
    Upstream::start(name, "v1", Protocol::Auto).await
}

/// A mesh whose listener `outbound` forwards every path to `target`.
fn forward_mesh(target: &str, clusters: &[ClusterSpec]) -> String {
    single_vhost_mesh(
        &format!("- match: {{prefix: /}}\n  forward: {{cluster: {target}, timeout: 5s}}"),
        clusters,
    )
}

/// One upstream `a`, a server whose mesh forwards everything to it, and a legate on that
/// server, serving.
struct Setup {
    a: Upstream,
    server: XdsServer,
    legate: Legate,
}

async fn setup(mode: Mode) -> Setup {
    let a = upstream("a").await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &[cluster("a", &[a.addr()])]));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    Setup { a, server, legate }
}

/// Waits until `GET path` on listener `outbound` is answered 200 by upstream `name`.
async fn expect_upstream(legate: &Legate, path: &str, name: &str) {
    expect_response(
        legate,
        "outbound",
        path,
        &format!("answered by {name}"),
        |r| r.status == 200 && r.upstream() == Some(name),
    )
    .await;
}

/// Waits until `GET path` on `listener` gives a response satisfying `ok`.
async fn expect_response(
    legate: &Legate,
    listener: &str,
    path: &str,
    what: &str,
    ok: impl Fn(&legate_tests::HttpResponse) -> bool,
) -> legate_tests::HttpResponse {
    let http = HttpClient::http1().with_timeout(Duration::from_secs(3));
    eventually(WAIT, &format!("GET {listener}{path} {what}"), || async {
        let Some(addr) = legate.try_listener_addr(listener).await else {
            return Err(format!("no listener {listener} yet"));
        };
        match http.try_get(&format!("http://{addr}{path}")).await {
            Ok(r) if ok(&r) => Ok(r),
            Ok(r) => Err(r.describe()),
            Err(error) => Err(format!("{error:#}")),
        }
    })
    .await
}

/// `n` sequential requests, each asserted 200 from `name`.
async fn assert_served_by(legate: &Legate, path: &str, name: &str, n: usize) {
    let url = legate.url("outbound", path).await;
    let names = HttpClient::http1().upstream_sequence(&url, n).await;
    assert!(
        names.iter().all(|u| u == name),
        "expected every answer from {name}: {names:?}"
    );
}

/// The only stream the server saw; panics if there were several.
fn only_stream(server: &XdsServer) -> u64 {
    let streams = server.streams();
    assert_eq!(
        streams.len(),
        1,
        "expected one ADS stream: {streams:#?}\n{}",
        server.describe()
    );
    streams[0].id
}

/// The first request of `type_url` on `stream`.
fn first_request(server: &XdsServer, stream: u64, type_url: &str) -> RecordedRequest {
    server
        .requests()
        .into_iter()
        .find(|r| r.stream == stream && r.type_url == type_url)
        .unwrap_or_else(|| {
            panic!(
                "no {} request on stream {stream}\n{}",
                short(type_url),
                server.describe()
            )
        })
}

/// The `xds.types[]` entry of `type_url` in `/legate_internal`.
fn dump_type<'a>(dump: &'a serde_json::Value, type_url: &str) -> &'a serde_json::Value {
    dump["xds"]["types"]
        .as_array()
        .and_then(|types| types.iter().find(|t| t["type_url"] == type_url))
        .unwrap_or_else(|| {
            panic!("no xds.types entry for {type_url} in /legate_internal: {dump:#}")
        })
}

fn cluster_names(clusters: &serde_json::Value) -> Vec<String> {
    clusters["clusters"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

both_modes!(
    initial_config_over_ads_then_traffic,
    ack_and_first_requests,
    invalid_cluster_is_nacked_and_old_config_serves,
    route_change_under_load_loses_nothing,
    unrelated_route_change_keeps_the_upstream_pool,
    in_flight_requests_finish_on_their_snapshot,
    listener_address_change_rebinds_and_removed_listener_closes,
    subscriptions_follow_references,
    removed_cluster_disappears,
    warming_waits_for_endpoints_then_times_out,
    warming_ends_when_the_resource_arrives,
    config_dump_and_metrics_show_xds_state,
    bootstrap_file_node_identity_and_static_mesh,
);

// ---------------------------------------------------------------------------------------------

async fn initial_config_over_ads_then_traffic(mode: Mode) {
    let s = setup(mode).await;
    let url = s.legate.url("outbound", "/hello?x=1").await;
    let response = HttpClient::http1().get(&url).await;
    response.assert_status(200);
    let echo = response.echo();
    assert_eq!(echo.name, "a");
    assert_eq!(echo.path, "/hello?x=1");
    s.legate.admin_get("/ready").await.assert_status(200);
    let streams = s.server.streams();
    assert!(
        !streams.is_empty() && streams.iter().all(|st| st.mode == mode),
        "legate must speak {mode:?}: {streams:#?}"
    );
    assert!(s.a.requests().await >= 1);
}

async fn ack_and_first_requests(mode: Mode) {
    let s = setup(mode).await;
    let server = &s.server;
    let stream = only_stream(server);

    // The node, on the first request of the stream.
    let first = server
        .requests()
        .into_iter()
        .find(|r| r.stream == stream)
        .expect("a first request");
    let node = first
        .node
        .clone()
        .unwrap_or_else(|| panic!("the first request carries no node: {}", first.describe()));
    assert_eq!(node.id, "test");
    assert_eq!(node.cluster, "tests");
    assert_eq!(node.user_agent_name, "legate");
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => assert!(!v.is_empty()),
        other => panic!("user_agent_version_type should be a version string: {other:?}"),
    }

    // The first request per type: wildcard for CDS and LDS, names for EDS and RDS.
    let expected: [(&str, &[&str]); 4] =
        [(CDS, &[]), (LDS, &[]), (EDS, &["a"]), (RDS, &["outbound"])];
    for (type_url, names) in expected {
        let r = first_request(server, stream, type_url);
        assert!(r.response_nonce.is_empty(), "{}", r.describe());
        assert!(r.error.is_none(), "{}", r.describe());
        match mode {
            Mode::Sotw => {
                assert_eq!(r.resource_names, names, "{}", r.describe());
                assert_eq!(r.version_info, "", "{}", r.describe());
            }
            Mode::Delta => {
                assert_eq!(r.subscribe, names, "{}", r.describe());
                assert!(r.unsubscribe.is_empty(), "{}", r.describe());
                assert!(r.initial_resource_versions.is_empty(), "{}", r.describe());
            }
        }
    }

    // Every response was ACKed: SotW with its version and nonce (and the same names),
    // delta with its type and nonce.
    for response in server.responses() {
        let ack = server
            .wait_for_answer(response.stream, &response.nonce, WAIT)
            .await;
        assert!(
            ack.is_ack(),
            "{} must be ACKed: {}",
            response.describe(),
            ack.describe()
        );
        assert_eq!(ack.type_url, response.type_url);
        if mode == Mode::Sotw {
            assert_eq!(ack.version_info, response.version, "{}", ack.describe());
            let names: &[&str] = match response.type_url.as_str() {
                EDS => &["a"],
                RDS => &["outbound"],
                _ => &[],
            };
            assert_eq!(ack.resource_names, names, "{}", ack.describe());
        }
    }
    assert_eq!(server.nacks_for(CDS).len() + server.nacks_for(LDS).len(), 0);
    for type_url in ALL_TYPES {
        assert!(
            !server.acks_for(type_url).is_empty(),
            "no ACK of {}",
            short(type_url)
        );
    }
}

async fn invalid_cluster_is_nacked_and_old_config_serves(mode: Mode) {
    let s = setup(mode).await;
    let server = &s.server;
    let accepted = server.version(CDS).expect("CDS version");
    let good = server.resources(CDS);
    // Not expressible in the authoring format: a CLUSTER_PROVIDED cluster. Sent with an otherwise
    // valid new cluster `c`, which must not be taken either (the whole response is refused).
    let mut bad: XdsCluster = good[0].decode();
    bad.name = "bad".to_owned();
    bad.lb_policy = LbPolicy::ClusterProvided.into();
    let mut c: XdsCluster = good[0].decode();
    c.name = "c".to_owned();
    let mut resources = good.clone();
    resources.push(Resource::cluster(&bad));
    resources.push(Resource::cluster(&c));
    let push = server.set(CDS, resources);

    let nack = server.wait_nacked(&push, WAIT).await.remove(0);
    assert_eq!(nack.response_nonce, push.nonce());
    let error = nack.error.clone().expect("error_detail");
    assert_eq!(
        error.code,
        13,
        "Envoy NACKs with INTERNAL: {}",
        nack.describe()
    );
    assert!(
        error.message.contains("bad") && error.message.contains("lb_policy"),
        "the NACK message must name the resource and the field: {:?}",
        error.message
    );
    if mode == Mode::Sotw {
        assert_eq!(
            nack.version_info, accepted,
            "a SotW NACK carries the last accepted version"
        );
    }

    // The old configuration keeps serving, and nothing of the rejected response was taken.
    assert_served_by(&s.legate, "/after-nack", "a", 10).await;
    let clusters = s.legate.admin_json("/clusters").await;
    assert_eq!(cluster_names(&clusters), ["a"], "{clusters:#}");

    // A valid update after the NACK is accepted.
    let push = server.set(CDS, good);
    server.wait_acked(&push, WAIT).await;
    assert_served_by(&s.legate, "/fixed", "a", 3).await;
}

async fn route_change_under_load_loses_nothing(mode: Mode) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let clusters = [cluster("a", &[a.addr()]), cluster("b", &[b.addr()])];
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    let url = legate.url("outbound", "/load").await;

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
            let mut answered: BTreeMap<String, usize> = BTreeMap::new();
            let mut failures = Vec::new();
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                match http.try_get(&url).await {
                    Ok(r) if r.status == 200 => {
                        let name = r.upstream().unwrap_or("?").to_owned();
                        *answered.entry(name).or_default() += 1;
                    }
                    Ok(r) => failures.push(r.describe()),
                    Err(error) => failures.push(format!("{error:#}")),
                }
            }
            (answered, failures)
        }));
    }

    // 20 route updates, alternating the target, each ACKed before the next.
    for i in 0..20 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        let pushes = server.set_mesh(&forward_mesh(target, &clusters));
        let types: Vec<&str> = pushes.iter().map(|p| short(&p.type_url)).collect();
        assert_eq!(types, ["RDS"], "only the route configuration changes");
        server.wait_all_acked(&pushes, WAIT).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for client in clients {
        let (answered, failed) = client.await.expect("load client task");
        for (name, n) in answered {
            *total.entry(name).or_default() += n;
        }
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} request(s) failed during hot swaps (answered: {total:?}); first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total.values().sum::<usize>() >= 40,
        "the load should overlap the updates (about two requests per update at least): \
         {total:?}"
    );
    assert!(
        total.get("a").copied().unwrap_or(0) > 0 && total.get("b").copied().unwrap_or(0) > 0,
        "both upstreams should have had traffic: {total:?}"
    );
    // The last update routes to `a`.
    expect_upstream(&legate, "/", "a").await;
}

async fn unrelated_route_change_keeps_the_upstream_pool(mode: Mode) {
    let a = upstream("a").await;
    let clusters = [cluster("a", &[a.addr()])];
    let mesh_with = |pong: &str| {
        single_vhost_mesh(
            &format!(
                "- match: {{path: /ping}}\n  direct_response: {{status: 200, body: \"{pong}\"}}\n\
                 - match: {{prefix: /}}\n  forward: {{cluster: a, timeout: 5s}}"
            ),
            &clusters,
        )
    };
    let server = XdsServer::start().await;
    server.set_mesh(&mesh_with("pong-0"));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/warm", "a").await;
    let url = legate.url("outbound", "/x").await;
    let http = HttpClient::http1();
    http.get(&url).await.assert_status(200);
    let before = a.counters().await;

    for i in 1..=5 {
        let pong = format!("pong-{i}");
        let pushes = server.set_mesh(&mesh_with(&pong));
        server.wait_all_acked(&pushes, WAIT).await;
        expect_response(&legate, "outbound", "/ping", &format!("= {pong}"), |r| {
            r.status == 200 && r.text() == pong
        })
        .await;
        http.get(&url).await.assert_status(200);
    }
    let after = a.counters().await;
    assert_eq!(
        after.requests,
        before.requests + 5,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        after.connections, before.connections,
        "a cluster untouched by the updates keeps its pooled connection: {before:?} → {after:?}"
    );
}

async fn in_flight_requests_finish_on_their_snapshot(mode: Mode) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let clusters = [cluster("a", &[a.addr()]), cluster("b", &[b.addr()])];
    let route_configs = |target: &str| {
        format!(
            "- name: outbound\n  virtual_hosts:\n    - name: all\n      domains: [\"*\"]\n      \
             routes: [{{match: {{prefix: /}}, forward: {{cluster: {target}, timeout: 10s}}}}]"
        )
    };
    let both = r#"
        - {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}
        - {name: second, address: 127.0.0.1:0, protocol: auto, route_config: outbound}
    "#;
    let server = XdsServer::start().await;
    server.set_mesh(&mesh(both, &route_configs("a"), &clusters));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    let outbound = legate.url("outbound", "/slow?delay=1500ms").await;
    let second = legate.url("second", "/slow?delay=1500ms").await;

    // Two slow requests in flight: one on a listener that stays (whose route moves to b),
    // one on a listener that is removed.
    let base = a.requests().await;
    let http = HttpClient::http1().with_timeout(Duration::from_secs(10));
    let slow_outbound = tokio::spawn({
        let http = http.clone();
        async move { http.try_get(&outbound).await }
    });
    let slow_second = tokio::spawn({
        let http = http.clone();
        async move { http.try_get(&second).await }
    });
    eventually(WAIT, "both slow requests reach a", || async {
        let n = a.requests().await - base;
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("a saw {n}"))
        }
    })
    .await;
    let only_outbound =
        "- {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}";
    let pushes = server.set_mesh(&mesh(only_outbound, &route_configs("b"), &clusters));
    server.wait_all_acked(&pushes, WAIT).await;
    expect_upstream(&legate, "/", "b").await;
    assert!(
        !slow_outbound.is_finished() && !slow_second.is_finished(),
        "the update must land while both requests are in flight"
    );

    for (name, task) in [("outbound", slow_outbound), ("second", slow_second)] {
        let response = task
            .await
            .expect("request task")
            .unwrap_or_else(|error| panic!("the in-flight request on {name} failed: {error:#}"));
        assert_eq!(
            (response.status.as_u16(), response.upstream()),
            (200, Some("a")),
            "the in-flight request on {name} finishes on the snapshot it started with: {}",
            response.describe()
        );
    }
}

async fn listener_address_change_rebinds_and_removed_listener_closes(mode: Mode) {
    let a = upstream("a").await;
    let clusters = [cluster("a", &[a.addr()])];
    let route_configs = r#"
        - name: outbound
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: /}, forward: {cluster: a}}]
    "#;
    let two = mesh(
        r#"
            - {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}
            - {name: second, address: 127.0.0.1:0, protocol: auto, route_config: outbound}
        "#,
        route_configs,
        &clusters,
    );
    let server = XdsServer::start().await;
    server.set_mesh(&two);
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    let old_outbound = legate.listener_addr("outbound").await;
    let second = legate.listener_addr("second").await;
    HttpClient::http1()
        .get(&format!("http://{second}/"))
        .await
        .assert_status(200);

    let new_addr = free_port();
    let one = mesh(
        &format!(
            "- {{name: outbound, address: \"{new_addr}\", protocol: auto, route_config: outbound}}"
        ),
        route_configs,
        &clusters,
    );
    let pushes = server.set_mesh(&one);
    server.wait_all_acked(&pushes, WAIT).await;

    eventually(WAIT, "outbound moved and second removed", || async {
        let outbound = legate.try_listener_addr("outbound").await;
        let second = legate.try_listener_addr("second").await;
        if outbound == Some(new_addr) && second.is_none() {
            Ok(())
        } else {
            Err(format!("outbound at {outbound:?}, second at {second:?}"))
        }
    })
    .await;
    let moved = HttpClient::http1()
        .get(&format!("http://{new_addr}/"))
        .await;
    moved.assert_status(200);
    assert_eq!(moved.upstream(), Some("a"));
    for (name, addr) in [("old outbound", old_outbound), ("second", second)] {
        eventually(
            WAIT,
            &format!("{name} ({addr}) stops accepting"),
            || async {
                // A fresh client each time: no pooled connection to an old socket.
                match HttpClient::http1()
                    .with_timeout(Duration::from_secs(2))
                    .try_get(&format!("http://{addr}/"))
                    .await
                {
                    Err(_) => Ok(()),
                    Ok(r) => Err(format!("still answered: {}", r.describe())),
                }
            },
        )
        .await;
    }
}

async fn subscriptions_follow_references(mode: Mode) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let clusters = [cluster("a", &[a.addr()]), cluster("b", &[b.addr()])];
    let route_configs = r#"
        - name: one
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: /}, forward: {cluster: a}}]
        - name: two
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: /}, forward: {cluster: b}}]
    "#;
    let listener = |rc: &str| {
        format!("- {{name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: {rc}}}")
    };
    let server = XdsServer::start().await;
    server.set_mesh(&mesh(&listener("one"), route_configs, &clusters));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    let stream = only_stream(&server);
    let rds = first_request(&server, stream, RDS);
    match mode {
        Mode::Sotw => assert_eq!(rds.resource_names, ["one"], "{}", rds.describe()),
        Mode::Delta => assert_eq!(rds.subscribe, ["one"], "{}", rds.describe()),
    }
    let eds = first_request(&server, stream, EDS);
    let mut eds_names = match mode {
        Mode::Sotw => eds.resource_names.clone(),
        Mode::Delta => eds.subscribe.clone(),
    };
    eds_names.sort();
    assert_eq!(eds_names, ["a", "b"], "{}", eds.describe());

    // The listener switches to route config `two`.
    let cursor = server.cursor();
    let pushes = server.set_mesh(&mesh(&listener("two"), route_configs, &clusters));
    server.wait_all_acked(&pushes, WAIT).await;
    match mode {
        Mode::Sotw => {
            server
                .wait_for_request_after(cursor, WAIT, "RDS names = [two]", |r| {
                    r.type_url == RDS && r.resource_names == ["two"]
                })
                .await;
        }
        Mode::Delta => {
            server
                .wait_for_request_after(cursor, WAIT, "RDS subscribe two", |r| {
                    r.type_url == RDS && r.subscribe.iter().any(|n| n == "two")
                })
                .await;
            server
                .wait_for_request_after(cursor, WAIT, "RDS unsubscribe one", |r| {
                    r.type_url == RDS && r.unsubscribe.iter().any(|n| n == "one")
                })
                .await;
        }
    }
    expect_upstream(&legate, "/", "b").await;
    // Route config `one` is no longer referenced: dropped.
    eventually(WAIT, "one RDS resource held", || async {
        let dump = legate.admin_json("/legate_internal").await;
        let held = &dump_type(&dump, RDS)["resources"];
        if held == 1 {
            Ok(())
        } else {
            Err(format!("RDS resources = {held}"))
        }
    })
    .await;

    // A cluster removed from CDS leaves the EDS subscription too.
    let cursor = server.cursor();
    let push = server.remove(CDS, &["a"]);
    server.wait_acked(&push, WAIT).await;
    match mode {
        Mode::Sotw => {
            server
                .wait_for_request_after(cursor, WAIT, "EDS names = [b]", |r| {
                    r.type_url == EDS && r.resource_names == ["b"]
                })
                .await;
        }
        Mode::Delta => {
            server
                .wait_for_request_after(cursor, WAIT, "EDS unsubscribe a", |r| {
                    r.type_url == EDS && r.unsubscribe.iter().any(|n| n == "a")
                })
                .await;
        }
    }
    assert_served_by(&legate, "/", "b", 3).await;
}

async fn removed_cluster_disappears(mode: Mode) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let server = XdsServer::start().await;
    server.set_mesh(&single_vhost_mesh(
        r#"
            - match: {prefix: /b/}
              forward: {cluster: b, timeout: 5s}
            - match: {prefix: /}
              forward: {cluster: a, timeout: 5s}
        "#,
        &[cluster("a", &[a.addr()]), cluster("b", &[b.addr()])],
    ));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/b/x", "b").await;
    expect_upstream(&legate, "/", "a").await;

    // The route to `b` stays (RDS may name unknown clusters); the cluster goes.
    let push = server.remove(CDS, &["b"]);
    let sent = &push.sent[0];
    match mode {
        Mode::Sotw => assert_eq!(sent.names(), ["a"], "{}", sent.describe()),
        Mode::Delta => {
            assert_eq!(sent.removed, ["b"], "{}", sent.describe());
            assert!(sent.resources.is_empty(), "{}", sent.describe());
        }
    }
    server.wait_acked(&push, WAIT).await;
    eventually(WAIT, "cluster b gone from /clusters", || async {
        let clusters = legate.admin_json("/clusters").await;
        let names = cluster_names(&clusters);
        if names == ["a"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let gone = expect_response(&legate, "outbound", "/b/x", "= 503", |r| r.status == 503).await;
    assert_eq!(gone.upstream(), None, "{}", gone.describe());
    assert_served_by(&legate, "/", "a", 3).await;
    let dump = legate.admin_json("/legate_internal").await;
    assert_eq!(dump_type(&dump, CDS)["resources"], 1, "{dump:#}");
}

async fn warming_waits_for_endpoints_then_times_out(mode: Mode) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &[cluster("a", &[a.addr()])]));
    let fetch_timeout = Duration::from_secs(3);
    let legate =
        Legate::start_xds(&XdsFlags::new(&server.url(), mode).initial_fetch_timeout("3s")).await;
    expect_upstream(&legate, "/", "a").await;

    // Cluster `b` arrives and the route moves to it, but b's ClusterLoadAssignment does not.
    let next = mesh_resources(&forward_mesh(
        "b",
        &[cluster("a", &[a.addr()]), cluster("b", &[b.addr()])],
    ));
    let cds = server.set(CDS, next.clusters.iter().map(Resource::cluster).collect());
    let rds = server.set(
        RDS,
        next.route_configs
            .iter()
            .map(Resource::route_config)
            .collect(),
    );
    let pushed = Instant::now();
    server.wait_acked(&cds, WAIT).await;
    server.wait_acked(&rds, WAIT).await;

    // Warming: `b` is not used; the configuration already live keeps serving (docs/xds.md:
    // warming gates the whole snapshot).
    let http = HttpClient::http1().with_timeout(Duration::from_secs(3));
    let url = legate.url("outbound", "/w").await;
    while pushed.elapsed() < fetch_timeout / 2 {
        let r = http.get(&url).await;
        assert!(
            r.status == 200 && r.upstream() == Some("a"),
            "while b warms ({:?} after the push), requests stay on a: {}",
            pushed.elapsed(),
            r.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.requests().await, 0);

    // After the initial fetch timeout: `b` is used without endpoints.
    let unavailable = expect_response(&legate, "outbound", "/w", "= 503 (b, no endpoints)", |r| {
        r.status == 503
    })
    .await;
    assert!(
        pushed.elapsed() >= fetch_timeout - Duration::from_millis(200),
        "b was used {:?} after the push, before the {fetch_timeout:?} fetch timeout: {}",
        pushed.elapsed(),
        unavailable.describe()
    );

    // Its endpoints arrive: traffic flows to b.
    server.upsert(
        EDS,
        next.load_assignments
            .iter()
            .map(Resource::load_assignment)
            .collect(),
    );
    expect_upstream(&legate, "/", "b").await;
}

/// A resource that was warming arrives before its fetch timeout: once applied, the timeout
/// passing changes nothing (no second build and apply of the same configuration).
async fn warming_ends_when_the_resource_arrives(mode: Mode) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &[cluster("a", &[a.addr()])]));
    let fetch_timeout = Duration::from_secs(2);
    let legate =
        Legate::start_xds(&XdsFlags::new(&server.url(), mode).initial_fetch_timeout("2s")).await;
    expect_upstream(&legate, "/", "a").await;

    let next = mesh_resources(&forward_mesh(
        "b",
        &[cluster("a", &[a.addr()]), cluster("b", &[b.addr()])],
    ));
    let cds = server.set(CDS, next.clusters.iter().map(Resource::cluster).collect());
    server.wait_acked(&cds, WAIT).await;
    let pushed = Instant::now();
    server.set(
        RDS,
        next.route_configs
            .iter()
            .map(Resource::route_config)
            .collect(),
    );
    server.upsert(
        EDS,
        next.load_assignments
            .iter()
            .map(Resource::load_assignment)
            .collect(),
    );
    expect_upstream(&legate, "/", "b").await;
    assert!(
        pushed.elapsed() < fetch_timeout,
        "b took {:?}, longer than the fetch timeout this test needs to outlast",
        pushed.elapsed()
    );
    let applied = |log: &str| log.matches("applied xDS configuration").count();
    let before = applied(&legate.output());
    assert!(before >= 2, "{}", legate.output());
    tokio::time::sleep(fetch_timeout + Duration::from_millis(700)).await;
    let output = legate.output();
    assert_eq!(
        applied(&output),
        before,
        "the configuration was applied again when the fetch timeout passed: {output}"
    );
    assert_served_by(&legate, "/", "b", 3).await;
}

async fn config_dump_and_metrics_show_xds_state(mode: Mode) {
    let s = setup(mode).await;
    let server = &s.server;
    let accepted: BTreeMap<&str, String> = ALL_TYPES
        .iter()
        .map(|t| (*t, server.version(t).expect("version")))
        .collect();

    // One NACK, to see it reported.
    let mut bad: XdsCluster = server.resources(CDS)[0].decode();
    bad.name = "bad".to_owned();
    bad.lb_policy = LbPolicy::ClusterProvided.into();
    let mut resources = server.resources(CDS);
    resources.push(Resource::cluster(&bad));
    let push = server.set(CDS, resources);
    server.wait_nacked(&push, WAIT).await;
    let rejected_nonce = push.nonce().to_owned();

    let dump = eventually(WAIT, "config_dump shows the NACK", || async {
        let dump = s.legate.admin_json("/legate_internal").await;
        if dump_type(&dump, CDS)["last_nack"].is_object() {
            Ok(dump)
        } else {
            Err(format!("{dump:#}"))
        }
    })
    .await;
    let xds = &dump["xds"];
    assert_eq!(xds["connected"], true, "{xds:#}");
    assert_eq!(xds["server"], server.url().as_str(), "{xds:#}");
    assert_eq!(xds["mode"], mode.as_arg(), "{xds:#}");
    assert_eq!(xds["source"], "xds", "{xds:#}");
    assert_eq!(
        xds["types"].as_array().map(Vec::len),
        Some(5),
        "one entry per type, SDS included: {xds:#}"
    );
    assert_eq!(
        dump_type(&dump, SDS)["resources"],
        0,
        "no secret named: {xds:#}"
    );
    for type_url in ALL_TYPES {
        let t = dump_type(&dump, type_url);
        assert_eq!(t["version_info"], accepted[type_url].as_str(), "{t:#}");
        assert_eq!(t["resources"], 1, "{t:#}");
        assert!(t["accepted"].as_u64().is_some_and(|n| n >= 1), "{t:#}");
        assert!(!t["last_update"].is_null(), "{t:#}");
        if type_url == CDS {
            assert_eq!(t["rejected"], 1, "{t:#}");
            let nack = &t["last_nack"];
            assert_eq!(nack["nonce"], rejected_nonce.as_str(), "{t:#}");
            let message = nack["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("bad") && message.contains("lb_policy"),
                "{t:#}"
            );
            assert!(nack["version_info"].is_string(), "{t:#}");
            assert!(!nack["at"].is_null(), "{t:#}");
        } else {
            assert_eq!(t["rejected"], 0, "{t:#}");
            assert!(t["last_nack"].is_null(), "{t:#}");
        }
    }

    let metrics = s.legate.metrics().await;
    assert_eq!(metrics.value("legate_xds_connected", &[]), 1.0);
    assert!(
        metrics.value(
            "legate_xds_updates_total",
            &[("type_url", CDS), ("result", "accepted")]
        ) >= 1.0
    );
    assert_eq!(
        metrics.value(
            "legate_xds_updates_total",
            &[("type_url", CDS), ("result", "rejected")]
        ),
        1.0
    );
    for type_url in [EDS, LDS, RDS] {
        assert!(
            metrics.value(
                "legate_xds_updates_total",
                &[("type_url", type_url), ("result", "accepted")]
            ) >= 1.0
        );
        assert_eq!(
            metrics.get_or_zero(
                "legate_xds_updates_total",
                &[("type_url", type_url), ("result", "rejected")]
            ),
            0.0
        );
    }
    let since = metrics.value("legate_xds_seconds_since_last_update", &[]);
    assert!((0.0..60.0).contains(&since), "{since}");
    assert_eq!(
        metrics.get_or_zero("legate_xds_stream_restarts_total", &[]),
        0.0
    );
    assert_eq!(
        metrics.get_or_zero("legate_xds_cache_load_failures_total", &[]),
        0.0
    );
}

async fn bootstrap_file_node_identity_and_static_mesh(mode: Mode) {
    let a = upstream("a").await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &[cluster("a", &[a.addr()])]));
    let cache = legate_tests::process::TempDir::new("legate-xds-cache");
    let config = format!(
        r#"node:
  id: web-1
  cluster: web
  locality: {{region: eu-west, zone: eu-west-1a, sub_zone: rack-7}}
  metadata: {{team: payments, tier: 2}}
xds:
  servers: ["{url}"]
  mode: {mode}
  cache_dir: "{cache}"
  initial_fetch_timeout: 1s
mesh:
  listeners:
    - {{name: static, address: 127.0.0.1:0, protocol: auto, route_config: static}}
  route_configs:
    - name: static
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - direct_response: {{status: 200, body: "static"}}
  clusters: []
"#,
        url = server.url(),
        mode = mode.as_arg(),
        cache = cache.path().display(),
    );
    let legate = Legate::start(&config).await;
    expect_upstream(&legate, "/", "a").await;
    let static_reply = expect_response(&legate, "static", "/", "= static", |r| {
        r.status == 200 && r.text() == "static"
    })
    .await;
    assert_eq!(static_reply.upstream(), None);

    let stream = only_stream(&server);
    let first = server
        .requests()
        .into_iter()
        .find(|r| r.stream == stream)
        .expect("a request");
    let node = first.node.clone().expect("node on the first request");
    assert_eq!((node.id.as_str(), node.cluster.as_str()), ("web-1", "web"));
    let locality = node.locality.clone().expect("locality");
    assert_eq!(
        (
            locality.region.as_str(),
            locality.zone.as_str(),
            locality.sub_zone.as_str()
        ),
        ("eu-west", "eu-west-1a", "rack-7")
    );
    let metadata = node.metadata.clone().expect("metadata").fields;
    assert_eq!(
        metadata.get("team").and_then(|v| v.kind.clone()),
        Some(Kind::StringValue("payments".to_owned()))
    );
    assert_eq!(
        metadata.get("tier").and_then(|v| v.kind.clone()),
        Some(Kind::NumberValue(2.0))
    );
    assert_eq!(node.user_agent_name, "legate");

    // The file's cache_dir is used.
    let cache_file = cache.path().join("xds-cache.bin");
    eventually(WAIT, "the cache file is written", || async {
        if cache_file.is_file() {
            Ok(())
        } else {
            Err(format!("no {}", cache_file.display()))
        }
    })
    .await;
}
