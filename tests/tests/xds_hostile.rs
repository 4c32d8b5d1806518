//! legate's xDS client against a control plane that sends what no honest one would, and
//! against configurations larger than gRPC's default message limit: the real `legate` binary
//! on the scriptable ADS server (`legate_tests::xds_server`), over state of the world and
//! delta (`both_modes!`).

use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use legate_tests::client::HttpClient;
use legate_tests::config::{cluster, single_vhost_mesh};
use legate_tests::xds_server::{CDS, Resource, nested_wrappers};
use legate_tests::{Legate, Mode, Protocol, Upstream, XdsFlags, XdsServer, both_modes, eventually};

/// Upper bound of every wait on the server or the proxy.
const WAIT: Duration = Duration::from_secs(20);

/// Waits until `GET path` on listener `outbound` is answered 200 by upstream `name`.
async fn expect_upstream(legate: &Legate, path: &str, name: &str) {
    let http = HttpClient::http1().with_timeout(Duration::from_secs(3));
    eventually(WAIT, &format!("GET {path} answered by {name}"), || async {
        let addr = legate
            .try_listener_addr("outbound")
            .await
            .ok_or("no listener yet")?;
        let r = http.get(&format!("http://{addr}{path}")).await;
        if r.status == 200 && r.upstream() == Some(name) {
            Ok(())
        } else {
            Err(r.describe())
        }
    })
    .await;
}

both_modes!(deeply_nested_resource_wrapper_is_nacked);

/// A cluster inside 100,000 `discovery.v3.Resource` envelopes (6.6 MB on the wire): legate
/// NACKs it naming the limit, stays up, keeps serving the configuration it had, and takes
/// the next good update. Before the fix each level was unwrapped by a recursive call holding
/// a copy of everything inside it, and the process died (stack overflow or out of memory).
async fn deeply_nested_resource_wrapper_is_nacked(mode: Mode) {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let server = XdsServer::start().await;
    server.set_mesh(&single_vhost_mesh(
        "- match: {prefix: /}\n  forward: {cluster: a, timeout: 5s}",
        &[cluster("a", &[a.addr()])],
    ));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;

    let good = server.resources(CDS);
    let inner = Any {
        type_url: CDS.to_owned(),
        value: good[0].any.value.clone(),
    };
    let deep = nested_wrappers(&inner, 100_000);
    assert!(deep.value.len() > 4 << 20, "{} bytes", deep.value.len());
    let push = server.set(CDS, vec![Resource::from_any(&good[0].name, deep)]);
    let nack = server.wait_nacked(&push, WAIT).await.remove(0);
    let message = nack.error.expect("error_detail").message;
    assert!(
        message.contains(
            "wraps another resource wrapper: only one level of \
             envoy.service.discovery.v3.Resource is allowed"
        ),
        "{message}"
    );
    assert!(
        legate.try_exit_status().is_none(),
        "legate died: {}",
        legate.describe()
    );
    expect_upstream(&legate, "/after-nack", "a").await;

    // One level of wrapping is the protocol's own and is accepted.
    let once = nested_wrappers(&inner, 1);
    let push = server.set(CDS, vec![Resource::from_any(&good[0].name, once)]);
    server.wait_acked(&push, WAIT).await;
    expect_upstream(&legate, "/after-ack", "a").await;
}

/// A mesh whose listener routes `/svc-0/` to `first`, with `n` clusters in all, each with
/// a name of the longest length the format allows and Envoy's circuit breakers and outlier
/// detection spelled out, as fleets that tune them have.
fn fleet_mesh(n: usize, first: std::net::SocketAddr) -> String {
    let mut yaml = format!(
        "proxy:\n  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}\n\
         services:\n  - name: svc-0\n    endpoints: [{{address: {first}}}]\n    \
         route: {{prefix: /svc-0/, timeout: 5s}}\nclusters:\n"
    );
    for i in 1..n {
        yaml.push_str(&format!(
            "  - name: payments-ledger-reconciliation-worker-eu-west-1-canary-{i:05}\n    \
             endpoints: [{{address: 127.0.0.1:{port}}}]\n    \
             circuit_breakers: {{max_connections: 2048, max_pending_requests: 2048, \
             max_requests: 2048, retry_budget: {{percent: 25, min_concurrency: 5}}}}\n    \
             outlier_detection: {{consecutive_5xx: 7, consecutive_gateway_failure: 7, \
             interval: 15s, base_ejection_time: 45s, max_ejection_time: 600s, \
             max_ejection_percent: 20, success_rate_minimum_hosts: 7, \
             success_rate_request_volume: 150, success_rate_stdev_factor: 2100, \
             failure_percentage_threshold: 80, enforcing_failure_percentage: 50, \
             failure_percentage_minimum_hosts: 7, failure_percentage_request_volume: 70}}\n",
            port = 20_000 + i % 20_000
        ));
    }
    yaml
}

both_modes!(config_over_four_mib_reaches_legate_with_the_default_limit);

/// 10,000 clusters whose CDS response is over gRPC's usual 4 MiB: legate's default limit
/// (64 MiB) takes it and serves it. A legate started with a smaller
/// `--xds-max-message-size` does not, and says why in `/ready` and `/legate_internal`, naming the
/// setting. Before the fix the client kept tonic's 4 MiB and reconnected forever.
async fn config_over_four_mib_reaches_legate_with_the_default_limit(mode: Mode) {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let server = XdsServer::start().await;
    server.set_mesh(&fleet_mesh(10_000, a.addr()));
    let cds: usize = server
        .resources(CDS)
        .iter()
        .map(|r| prost::Message::encoded_len(&r.any) + 3)
        .sum();
    assert!(cds > 4 << 20, "the CDS response is only {cds} bytes");
    eprintln!("CDS response of 10,000 clusters: {cds} bytes");

    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/svc-0/x", "a").await;
    let clusters = legate.admin_json("/clusters").await;
    let count = clusters
        .as_array()
        .map(Vec::len)
        .or_else(|| clusters["clusters"].as_array().map(Vec::len))
        .unwrap_or_default();
    assert_eq!(count, 10_000, "clusters served");

    let small =
        Legate::spawn_xds(&XdsFlags::new(&server.url(), mode).arg("--xds-max-message-size=1MiB"))
            .await;
    let why = eventually(WAIT, "/ready names the exceeded limit", || async {
        let r = small.admin_get("/ready").await;
        let text = r.text();
        if r.status == 503 && text.contains("--xds-max-message-size") {
            Ok(text)
        } else {
            Err(r.describe())
        }
    })
    .await;
    assert!(
        why.contains("exceeded the client's limit of 1048576 bytes"),
        "{why}"
    );
    let dump = small.admin_json("/legate_internal").await;
    let last_error = dump["xds"]["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(last_error.contains("xds.max_message_size"), "{dump:#}");
    // The log is read from the process's pipe as it arrives: wait for the line.
    eventually(WAIT, "the log says it too", || async {
        let log = small.output();
        if log.contains("exceeded the client's limit") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
}
