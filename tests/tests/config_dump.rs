//! `/config_dump` is Envoy's: the Envoy resources in Envoy's JSON (issue 14, item 6), so a
//! user can compare them with what they wrote or with a real Envoy's dump. The strongest
//! check: the same resources, served by a real legate-cp to a real legate and a real Envoy
//! 1.40, print the same JSON in both dumps, and the same again in `legatectl get node -o
//! json`. Fails (never skips) when Envoy is missing: run `make peers`.

use std::time::Duration;

use legate_tests::access_log::{FILE_ACCESS_LOG, file_log, file_log_with};
use legate_tests::config::{cluster, single_vhost};
use legate_tests::cp::ControlPlane;
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::process::TempDir;
use legate_tests::resilience::{Rig, edit_hcm, svc_mesh};
use legate_tests::xds_server::Mode;
use legate_tests::{Legate, XdsFlags, closed_port, eventually};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// The entry of `configs` whose `@type` is `envoy.admin.v3.<short>`.
fn config<'a>(dump: &'a Value, short: &str) -> Option<&'a Value> {
    let t = format!("type.googleapis.com/envoy.admin.v3.{short}");
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"] == t.as_str())
}

/// The resource named `name` in list `list` (`dynamic_active_clusters`), field `field`
/// (`cluster`) of each item.
fn item<'a>(
    dump: &'a Value,
    short: &str,
    list: &str,
    field: &str,
    name: &str,
) -> Option<&'a Value> {
    config(dump, short)?[list]
        .as_array()?
        .iter()
        .map(|i| &i[field])
        .find(|r| r["name"] == name)
}

/// A static bootstrap: every dump type, durations as strings, sensitive header values
/// redacted (private keys: `tls_upstream.rs` and `sds.rs`, and the unit tests).
#[tokio::test]
async fn static_dump_is_envoys_json_with_secrets_redacted() {
    let routes = r#"
        - match: {prefix: /}
          forward: {cluster: payments, timeout: 5s}
          request_headers_to_add:
            - {name: authorization, value: "Bearer s3cr3t", append: false}
    "#;
    let upstream = "127.0.0.1:9".parse().expect("addr");
    let legate = Legate::start(&single_vhost(routes, &[cluster("payments", &[upstream])])).await;
    let res = legate.admin_get("/config_dump").await;
    res.assert_status(200);
    let text = res.text();
    let dump: Value = serde_json::from_str(&text).expect("valid JSON");
    for short in [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "ListenersConfigDump",
        "RoutesConfigDump",
        "SecretsConfigDump",
    ] {
        assert!(config(&dump, short).is_some(), "no {short}: {dump:#}");
    }
    let c = item(
        &dump,
        "ClustersConfigDump",
        "static_clusters",
        "cluster",
        "payments",
    )
    .unwrap_or_else(|| panic!("no static cluster payments: {dump:#}"));
    assert_eq!(
        c["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert!(
        c["connect_timeout"]
            .as_str()
            .is_some_and(|t| t.ends_with('s')),
        "{c:#}"
    );
    let r = item(
        &dump,
        "RoutesConfigDump",
        "static_route_configs",
        "route_config",
        "outbound",
    )
    .unwrap_or_else(|| panic!("no route config outbound: {dump:#}"));
    assert_eq!(
        r["virtual_hosts"][0]["routes"][0]["route"]["timeout"], "5s",
        "{r:#}"
    );
    for internal in ["\"secs\"", "\"nanos\"", "permille", "s3cr3t"] {
        assert!(
            !text.contains(internal),
            "{internal} in /config_dump: {text}"
        );
    }
    assert!(text.contains("[redacted]"), "{text}");

    // Envoy's filters: one list, and masks.
    let res = legate
        .admin_json("/config_dump?resource=static_clusters&mask=cluster.name")
        .await;
    assert_eq!(
        res["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    );
    assert_eq!(
        res["configs"][0]["cluster"],
        serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "payments",
        })
    );
    legate
        .admin_get("/config_dump?resource=nope")
        .await
        .assert_status(404);
    // legate's own view is still there, apart.
    let internal = legate.admin_json("/legate_internal").await;
    assert!(internal["snapshot"].is_object(), "{internal:#}");
}

const MESH: &str = r#"
proxy:
  listener: {name: outbound, address: 127.0.0.1:0, protocol: auto}
services:
  - name: payments
    versions:
      - {name: v1, weight: 90, endpoints: [{address: 127.0.0.1:1}]}
      - {name: v2, weight: 10, endpoints: [{address: 127.0.0.1:2}]}
    route: {prefix: /payments/, timeout: 5s}
    policies:
      request_headers_to_add:
        - {name: x-team, value: payments}
      retries:
        on: [5xx, reset]
        attempts: 2
        per_try_timeout: 1500ms
      circuit_breakers: {max_connections: 10, max_pending_requests: 5}
      outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s}
      panic_threshold: 40
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_envoy_and_legatectl_print_the_same_resources() {
    let dir = TempDir::new("dump-cp");
    let mesh = dir.write("mesh.yaml", MESH);
    let cp = ControlPlane::start(&mesh, &dir.path().join("data")).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("proxy-1", "web")).await;
    let envoy = Envoy::start_ads(cp.xds, EnvoyAds::Sotw, "envoy-1", "web").await;

    let cluster_name = "payments-v1";
    let route_name = "outbound";
    let find = |dump: &Value| -> Option<(Value, Value)> {
        Some((
            item(
                dump,
                "ClustersConfigDump",
                "dynamic_active_clusters",
                "cluster",
                cluster_name,
            )?
            .clone(),
            item(
                dump,
                "RoutesConfigDump",
                "dynamic_route_configs",
                "route_config",
                route_name,
            )?
            .clone(),
        ))
    };
    let (ours_cluster, ours_routes) =
        eventually(WAIT, "legate dumps the cluster and routes", || async {
            let dump = legate.admin_json("/config_dump").await;
            find(&dump).ok_or_else(|| format!("{dump:#}"))
        })
        .await;
    let (envoy_cluster, envoy_routes) =
        eventually(WAIT, "Envoy dumps the cluster and routes", || async {
            let (status, body) = envoy.admin_get("/config_dump").await;
            let dump: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}"))?;
            find(&dump).ok_or_else(|| "not yet".to_owned())
        })
        .await;

    // Durations as Envoy writes them, and nothing of legate's own model.
    assert_eq!(
        ours_routes["virtual_hosts"][0]["routes"][0]["route"]["timeout"], "5s",
        "{ours_routes:#}"
    );
    let text = format!("{ours_cluster}{ours_routes}");
    for internal in ["\"secs\"", "\"nanos\"", "permille"] {
        assert!(!text.contains(internal), "{internal} in {text}");
    }
    // The same resources print the same JSON in legate's dump and in Envoy's.
    assert_eq!(
        ours_cluster, envoy_cluster,
        "cluster {cluster_name}: legate vs Envoy"
    );
    assert_eq!(
        ours_routes, envoy_routes,
        "route config {route_name}: legate vs Envoy"
    );

    // legatectl shows what legate-cp serves the node, in the same JSON.
    let (ok, out, err) = cp.ctl(&["get", "node", "proxy-1", "-o", "json"]);
    assert!(ok, "legatectl get node: {err}");
    let node: Value = serde_json::from_str(&out).expect("legatectl JSON");
    let served = |kind: &str, name: &str| {
        node["resources"]
            .as_array()
            .and_then(|r| {
                r.iter().find(|r| {
                    r["name"] == name && r["type_url"].as_str().is_some_and(|t| t.ends_with(kind))
                })
            })
            .map(|r| r["resource"].clone())
            .unwrap_or_else(|| panic!("no {kind} {name} in {node:#}"))
    };
    assert_eq!(
        served(".Cluster", cluster_name),
        envoy_cluster,
        "legatectl vs Envoy"
    );
    assert_eq!(
        served(".RouteConfiguration", route_name),
        envoy_routes,
        "legatectl vs Envoy"
    );
}

/// The HCM's file access logger prints as Envoy's JSON, not as a type legate cannot show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_shows_the_file_access_log() {
    let dir = TempDir::new("alog-dump");
    let path = dir.path().join("access.log");
    let mut res = svc_mesh(&[closed_port()]);
    edit_hcm(&mut res, |h| {
        h.access_log = vec![
            file_log(&path, "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"),
            file_log_with(&path, None),
        ];
    });
    let rig = Rig::start(&res).await;
    let dump = rig.legate.admin_json("/config_dump").await;
    let text = dump.to_string();
    assert!(!text.contains("not shown"), "{dump:#}");
    let listener = config(&dump, "ListenersConfigDump").and_then(|l| {
        l["dynamic_listeners"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "outbound")
    });
    let listener = listener.unwrap_or_else(|| panic!("no dynamic listener outbound: {dump:#}"));
    let hcm =
        &listener["active_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "{listener:#}"
    );
    let logs = &hcm["access_log"];
    let file = path.display().to_string();
    assert_eq!(
        logs[0],
        serde_json::json!({
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_ACCESS_LOG,
                "path": file,
                "log_format": {
                    "text_format_source": {"inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"}
                }
            }
        }),
        "{hcm:#}"
    );
    assert_eq!(
        logs[1]["typed_config"],
        serde_json::json!({"@type": FILE_ACCESS_LOG, "path": file}),
        "Envoy's default format: no log_format"
    );
}

/// The HCM's OpenTelemetry tracer prints as Envoy's JSON too: provider, collector cluster,
/// service name and sampling, as the mesh's `telemetry.tracing` compiled them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_shows_the_opentelemetry_tracer() {
    let mut mesh = legate_tests::config::single_vhost_mesh(
        "- match: {prefix: /}\n  forward: {cluster: svc, timeout: 10s}",
        &[cluster("svc", &[closed_port()])],
    );
    mesh.push_str(&format!(
        "telemetry:\n  tracing: {{collector: \"{}\", sampling: \"25%\", service_name: dumped}}\n",
        closed_port()
    ));
    let rig = Rig::start(&legate_tests::xds_server::mesh_resources(&mesh)).await;
    let dump = rig.legate.admin_json("/config_dump").await;
    assert!(!dump.to_string().contains("not shown"), "{dump:#}");
    let listener = config(&dump, "ListenersConfigDump")
        .and_then(|l| {
            l["dynamic_listeners"]
                .as_array()?
                .iter()
                .find(|d| d["name"] == "outbound")
        })
        .unwrap_or_else(|| panic!("no dynamic listener outbound: {dump:#}"));
    let tracing = &listener["active_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
        ["tracing"];
    assert_eq!(tracing["random_sampling"]["value"], 25.0, "{tracing:#}");
    let provider = &tracing["provider"];
    assert_eq!(
        provider["name"], "envoy.tracers.opentelemetry",
        "{tracing:#}"
    );
    let otel = &provider["typed_config"];
    assert_eq!(
        otel["@type"], "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "{tracing:#}"
    );
    assert_eq!(otel["service_name"], "dumped", "{tracing:#}");
    assert!(
        otel["grpc_service"]["envoy_grpc"]["cluster_name"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "the collector's cluster: {tracing:#}"
    );
}
