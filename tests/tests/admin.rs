//! The admin API of `legate`: readiness, config dump, clusters, listeners and metrics.

use std::net::SocketAddr;
use std::time::Duration;

use legate_tests::client::{self, HttpClient};
use legate_tests::config::{cluster, single_vhost};
use legate_tests::metrics::promtool_check_metrics;
use legate_tests::{Legate, Protocol, Upstream, eventually};

async fn payments_setup() -> (Upstream, Legate) {
    let payments = Upstream::start("payments", "v1", Protocol::Auto).await;
    let routes = r#"
        - match: {prefix: /payments/}
          forward: {cluster: payments, prefix_rewrite: /, timeout: 2s}
        - match: {path: /ping}
          direct_response: {status: 200, body: "pong\n"}
    "#;
    let legate = Legate::start(&single_vhost(
        routes,
        &[cluster("payments", &[payments.addr()])],
    ))
    .await;
    (payments, legate)
}

#[tokio::test]
async fn ready_and_healthz() {
    let (_payments, legate) = payments_setup().await;
    legate.admin_get("/ready").await.assert_status(200);
    legate.admin_get("/healthz").await.assert_status(200);
}

#[tokio::test]
async fn legate_internal_has_version_snapshot_and_node() {
    let (_payments, legate) = payments_setup().await;
    let dump = legate.admin_json("/legate_internal").await;
    let version = dump["version"]
        .as_str()
        .unwrap_or_else(|| panic!("config_dump has no string \"version\": {dump:#}"));
    assert!(!version.is_empty(), "empty config version: {dump:#}");
    assert!(
        dump["snapshot"].is_object(),
        "config_dump has no \"snapshot\" object: {dump:#}"
    );
    assert_eq!(dump["node"]["id"], "test", "{dump:#}");
    assert_eq!(dump["node"]["cluster"], "tests", "{dump:#}");
    let text = dump["snapshot"].to_string();
    assert!(
        text.contains("payments"),
        "the snapshot should mention cluster payments: {dump:#}"
    );

    // Nothing changed, so the version did not either.
    let again = legate.admin_json("/legate_internal").await;
    assert_eq!(again["version"], dump["version"]);
}

#[tokio::test]
async fn clusters_lists_hosts() {
    let (payments, legate) = payments_setup().await;
    let clusters = legate.admin_json("/clusters").await;
    let list = clusters["clusters"]
        .as_array()
        .unwrap_or_else(|| panic!("/clusters has no \"clusters\" list: {clusters:#}"));
    let entry = list
        .iter()
        .find(|c| c["name"] == "payments")
        .unwrap_or_else(|| panic!("cluster payments missing from /clusters: {clusters:#}"));
    let hosts = entry["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("cluster payments has no hosts list: {clusters:#}"));
    assert_eq!(hosts.len(), 1, "{clusters:#}");
    let host = &hosts[0];
    assert_eq!(
        host["address"],
        payments.addr().to_string().as_str(),
        "{clusters:#}"
    );
    assert_eq!(host["weight"], 1, "{clusters:#}");
    assert_eq!(host["health"], "healthy", "{clusters:#}");
    assert_eq!(host["active_requests"], 0, "{clusters:#}");
}

#[tokio::test]
async fn listeners_report_bound_addresses() {
    let (_payments, legate) = payments_setup().await;
    let listeners = legate.admin_json("/listeners").await;
    let list = listeners
        .as_array()
        .unwrap_or_else(|| panic!("/listeners is not a JSON list: {listeners:#}"));
    assert_eq!(list.len(), 1, "{listeners:#}");
    assert_eq!(list[0]["name"], "outbound");
    let addr: SocketAddr = list[0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("listener address is not ip:port: {listeners:#}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    let pong = client::get(&format!("http://{addr}/ping")).await;
    pong.assert_status(200);
    assert_eq!(pong.text(), "pong\n");
}

#[tokio::test]
async fn prometheus_metrics_count_requests() {
    let (_payments, legate) = payments_setup().await;
    let base = legate.url("outbound", "").await;
    let http = HttpClient::http1();
    http.get(&format!("{base}/payments/a"))
        .await
        .assert_status(200);
    http.get(&format!("{base}/payments/b?status=503"))
        .await
        .assert_status(503);
    http.get(&format!("{base}/nowhere"))
        .await
        .assert_status(404);

    let metrics = eventually(Duration::from_secs(3), "metrics settle", || async {
        let m = legate.metrics().await;
        let downstream = m.get_or_zero(
            "legate_downstream_requests_total",
            &[("listener", "outbound")],
        );
        if downstream == 3.0 {
            Ok(m)
        } else {
            Err(format!("downstream requests total = {downstream}"))
        }
    })
    .await;
    let down = |class: &str| {
        metrics.value(
            "legate_downstream_requests_total",
            &[("listener", "outbound"), ("code_class", class)],
        )
    };
    assert_eq!(down("2xx"), 1.0);
    assert_eq!(down("5xx"), 1.0);
    assert_eq!(down("4xx"), 1.0);
    let up = |class: &str| {
        metrics.value(
            "legate_upstream_requests_total",
            &[("cluster", "payments"), ("code_class", class)],
        )
    };
    assert_eq!(up("2xx"), 1.0);
    assert_eq!(up("5xx"), 1.0);
    assert_eq!(
        metrics.value(
            "legate_upstream_request_duration_seconds_count",
            &[("cluster", "payments")]
        ),
        2.0
    );
    assert_eq!(
        metrics.value(
            "legate_upstream_request_duration_seconds_bucket",
            &[("cluster", "payments"), ("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(
        metrics.value("legate_local_replies_total", &[("reason", "no-route")]),
        1.0
    );
    assert_eq!(
        metrics.value(
            "legate_upstream_connections_open",
            &[("cluster", "payments")]
        ),
        1.0
    );
    assert!(
        metrics
            .get(
                "legate_downstream_connections_active",
                &[("listener", "outbound")]
            )
            .is_some(),
        "legate_downstream_connections_active{{listener=\"outbound\"}} missing:\n{}",
        metrics.text
    );
    let types = metrics.types();
    for (family, kind) in [
        ("legate_downstream_requests_total", "counter"),
        ("legate_upstream_requests_total", "counter"),
        ("legate_upstream_request_duration_seconds", "histogram"),
        ("legate_upstream_connections_open", "gauge"),
        ("legate_downstream_connections_active", "gauge"),
        ("legate_local_replies_total", "counter"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}; scrape:\n{}",
            metrics.text
        );
    }
}

#[tokio::test]
async fn prometheus_output_passes_promtool() {
    let (_payments, legate) = payments_setup().await;
    let base = legate.url("outbound", "").await;
    client::get(&format!("{base}/payments/x"))
        .await
        .assert_status(200);
    client::get(&format!("{base}/nowhere"))
        .await
        .assert_status(404);
    let response = legate.admin_get("/stats/prometheus").await;
    response.assert_status(200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text should be served as text/plain, got {content_type:?}"
    );
    if let Err(problems) = promtool_check_metrics(&response.text()) {
        panic!("{problems}\n----- scrape -----\n{}", response.text());
    }
}

/// Configured header values that are credentials (by name: `authorization`, `*-api-key`,
/// `*token*`, ...) reach the upstream but never `/config_dump`, which shows `[redacted]`;
/// other values are shown as configured (issue 13, item 12).
#[tokio::test]
async fn config_dump_redacts_sensitive_header_values() {
    let payments = Upstream::start("payments", "v1", Protocol::Http1).await;
    let routes = r#"
        - match: {prefix: /}
          forward: {cluster: payments, timeout: 5s}
          request_headers_to_add:
            - {name: Authorization, value: "Bearer s3cr3t-bearer", append: false}
            - {name: x-api-key, value: "k-s3cr3t-key", append: false}
            - {name: x-team, value: blue}
    "#;
    let legate = Legate::start(&single_vhost(
        routes,
        &[cluster("payments", &[payments.addr()])],
    ))
    .await;

    let seen = client::get(&legate.url("outbound", "/").await).await.echo();
    assert_eq!(
        seen.headers.get("authorization").map(String::as_str),
        Some("Bearer s3cr3t-bearer")
    );
    assert_eq!(
        seen.headers.get("x-api-key").map(String::as_str),
        Some("k-s3cr3t-key")
    );

    let dump = legate.admin_get("/config_dump").await;
    dump.assert_status(200);
    let text = dump.text();
    assert!(
        !text.contains("s3cr3t"),
        "/config_dump shows a credential: {text}"
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("config_dump json");
    // In Envoy's JSON: `header.key` and `header.value` of each HeaderValueOption.
    let routes = json["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.RoutesConfigDump")
        })
        .unwrap_or_else(|| panic!("no RoutesConfigDump: {json:#}"));
    let added = &routes["static_route_configs"][0]["route_config"]["virtual_hosts"][0]["routes"][0]
        ["request_headers_to_add"];
    let value_of = |name: &str| {
        added
            .as_array()
            .and_then(|a| {
                a.iter().find(|h| {
                    h["header"]["key"]
                        .as_str()
                        .is_some_and(|k| k.eq_ignore_ascii_case(name))
                })
            })
            .map(|h| h["header"]["value"].clone())
            .unwrap_or_else(|| panic!("no {name} in {added:#}"))
    };
    assert_eq!(value_of("authorization"), "[redacted]");
    assert_eq!(value_of("x-api-key"), "[redacted]");
    assert_eq!(value_of("x-team"), "blue");

    // legate's own view redacts them too.
    let text = legate.admin_get("/legate_internal").await.text();
    assert!(
        !text.contains("s3cr3t"),
        "/legate_internal shows a credential: {text}"
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("legate_internal json");
    let added = &json["snapshot"]["route_configs"]["outbound"]["virtual_hosts"][0]["routes"][0]["request_headers_to_add"];
    let value_of = |name: &str| {
        added
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == name))
            .map(|h| h["value"].clone())
            .unwrap_or_else(|| panic!("no {name} in {added:#}"))
    };
    assert_eq!(value_of("authorization"), "[redacted]");
    assert_eq!(value_of("x-api-key"), "[redacted]");
    assert_eq!(value_of("x-team"), "blue");
}

/// The admin server is bounded like the listeners: a partial request head is cut off after
/// 10 s, and connections over 64 are closed unanswered.
#[tokio::test]
async fn admin_server_bounds_slow_and_excess_connections() {
    use legate_tests::raw;
    use tokio::io::AsyncWriteExt;
    let a = legate_tests::Upstream::start("a", "v1", legate_tests::Protocol::Auto).await;
    let legate = legate_tests::Legate::start(&legate_tests::config::forward_all(
        legate_tests::config::cluster("a", &[a.addr()]),
    ))
    .await;
    let admin = legate.admin_addr();

    let mut slow = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    slow.write_all(b"GET /ready HTT").await.expect("write");
    let started = std::time::Instant::now();

    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }
    // The slow connection and 63 of these fill the 64 slots; this one is over.
    let extra = raw::exchange(
        admin,
        b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n",
        std::time::Duration::from_secs(3),
    )
    .await;
    assert!(
        extra.closed && extra.bytes.is_empty(),
        "a connection over the admin limit must be closed unanswered: {extra:?}"
    );
    drop(held);

    assert!(
        raw::closed_within(&mut slow, std::time::Duration::from_secs(15)).await,
        "a partial admin request head was not cut off"
    );
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(9) && took < std::time::Duration::from_secs(14),
        "cut off after {took:?}, expected about 10s"
    );
    legate_tests::eventually(
        std::time::Duration::from_secs(5),
        "admin answers again",
        || async {
            match legate.ready_status().await {
                200 => Ok(()),
                s => Err(format!("{s}")),
            }
        },
    )
    .await;
}
