//! Load reports (LRS) end to end: real legate and a real Envoy report to the real legate-cp,
//! which aggregates per service version; the totals must match the traffic sent.

use std::net::SocketAddr;
use std::time::Duration;

use legate_tests::client::HttpClient;
use legate_tests::cp::ControlPlane as Cp;
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::process::TempDir;
use legate_tests::xds_server::Mode;
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, eventually};

/// What the demo upstream is told to do for the successful requests: 60 ms, which falls in
/// legate's (50 ms, 100 ms] latency bucket.
const DELAY: &str = "delay=60ms";
const OK: u64 = 40;
const ERRORS: u64 = 10;

fn mesh(v1: SocketAddr) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {v1}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
"#
    )
}

/// `OK` requests answered after [`DELAY`], then `ERRORS` answered 503. Returns the longest
/// any request took, as this client saw it (at least what legate measured upstream).
async fn send_traffic(base: &str) -> std::time::Duration {
    let http = HttpClient::http1();
    let mut longest = std::time::Duration::ZERO;
    for (n, query, want) in [(OK, DELAY, 200), (ERRORS, "status=503", 503)] {
        for _ in 0..n {
            let url = format!("{base}?{query}");
            let sent = std::time::Instant::now();
            let r = http
                .try_request("GET", &url, &[], legate_tests::client::empty())
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            longest = longest.max(sent.elapsed());
            assert_eq!(r.status.as_u16(), want, "{url}");
        }
    }
    longest
}

async fn load(cp: &Cp) -> serde_json::Value {
    cp.get_json("/v1/load?service=payments")
        .await
        .unwrap_or_else(|e| panic!("GET /v1/load: {e}"))
}

fn v1(load: &serde_json::Value) -> serde_json::Value {
    load["services"][0]["versions"][0].clone()
}

/// Waits until legate-cp's aggregate for payments v1 shows `issued`, then checks it stays so
/// over two more reports (nothing counted twice).
async fn wait_totals(cp: &Cp, issued: u64) -> serde_json::Value {
    let got = eventually(Duration::from_secs(15), "load totals", || async {
        let l = load(cp).await;
        let v = v1(&l);
        if v["issued"].as_u64() == Some(issued) {
            Ok(l)
        } else {
            Err(format!("{v}"))
        }
    })
    .await;
    let seen = got["reports_received"].as_u64().unwrap_or(0);
    eventually(Duration::from_secs(10), "two more reports", || async {
        let l = load(cp).await;
        if l["reports_received"].as_u64().unwrap_or(0) >= seen + 2 {
            Ok(())
        } else {
            Err(format!("{l}"))
        }
    })
    .await;
    let later = load(cp).await;
    assert_eq!(v1(&later)["issued"].as_u64(), Some(issued), "{later}");
    later
}

#[tokio::test]
async fn legate_reports_match_the_traffic_sent() {
    let up = Upstream::start("payments", "v1", Protocol::Auto).await;
    let dir = TempDir::new("lrs");
    let config = dir.write("mesh.yaml", &mesh(up.addr()));
    let cp = Cp::start_with(&config, &dir.path().join("data"), &["--lrs-interval", "1s"]).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("proxy-1", "web")).await;
    let url = legate.url("outbound", "/payments/charge").await;
    let longest = send_traffic(&url).await;

    let l = wait_totals(&cp, OK + ERRORS).await;
    let v = v1(&l);
    assert_eq!(v["version"], "v1", "{l}");
    assert_eq!(v["succeeded"].as_u64(), Some(OK), "{l}");
    assert_eq!(v["errored"].as_u64(), Some(ERRORS), "{l}");
    assert_eq!(v["in_progress"].as_u64(), Some(0), "{l}");
    assert_eq!(v["nodes_reporting"].as_u64(), Some(1), "{l}");
    let error_percent = v["error_percent"].as_f64().expect("error percent");
    assert!((error_percent - 20.0).abs() < 1e-9, "{l}");
    // Every attempt is in one bucket, and the 40 answers that took at least 60 ms are in
    // (50, 100] ms or above: the median and p99 are never below 50 ms. Neither is above the
    // bucket of the slowest request this client saw (it is (50, 100] on an idle machine; a
    // busy one slows some answers, and legate measures no more than the client waited).
    let buckets: Vec<u64> = v["latency_buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b.as_u64().expect("a count"))
        .collect();
    assert_eq!(buckets.iter().sum::<u64>(), OK + ERRORS, "{l}");
    let at_least_50ms = legate_telemetry::LATENCY_BUCKETS
        .iter()
        .position(|&bound| bound > 0.05)
        .expect("a bucket above 50 ms");
    assert!(
        buckets[at_least_50ms..].iter().sum::<u64>() >= OK,
        "the delayed answers below 50 ms: {l}"
    );
    let ceiling_ms = legate_telemetry::LATENCY_BUCKETS
        .iter()
        .find(|&&bound| bound >= longest.as_secs_f64())
        .map_or(f64::INFINITY, |&bound| (bound * 1000.0).max(100.0));
    let p50 = v["p50_ms"].as_f64().expect("p50");
    let p99 = v["p99_ms"].as_f64().expect("p99");
    assert!(
        p50 > 50.0 && p50 <= ceiling_ms,
        "p50 {p50} (ceiling {ceiling_ms}): {l}"
    );
    assert!(
        p99 > 50.0 && p99 <= ceiling_ms,
        "p99 {p99} (ceiling {ceiling_ms}): {l}"
    );

    let (ok, out, err) = cp.ctl(&["top", "payments"]);
    assert!(ok, "legatectl top: {err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("payments"))
        .unwrap_or_else(|| panic!("no payments row in:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "v1", "{out}");
    assert_eq!(cells[3], "20.0", "{out}");
    assert_eq!(cells[6], "1", "{out}");
    assert!(out.starts_with("SERVICE"), "{out}");
}

#[tokio::test]
async fn envoy_reports_to_legate_cp() {
    let up = Upstream::start("payments", "v1", Protocol::Auto).await;
    let dir = TempDir::new("lrs-envoy");
    let config = dir.write("mesh.yaml", &mesh(up.addr()));
    let cp = Cp::start_with(&config, &dir.path().join("data"), &["--lrs-interval", "1s"]).await;
    let envoy = Envoy::start_ads_lrs(cp.xds, EnvoyAds::Sotw, "envoy-1", "web").await;
    let url = eventually(Duration::from_secs(30), "Envoy listener", || async {
        if envoy.stat("listener_manager.total_listeners_active").await != Some(1) {
            return Err("not active".to_owned());
        }
        let (_, body) = envoy.admin_get("/listeners?format=json").await;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
        Ok(format!(
            "http://{}:{}/payments/charge",
            sa["address"].as_str().unwrap_or("127.0.0.1"),
            sa["port_value"].as_u64().unwrap_or(0)
        ))
    })
    .await;
    // Envoy's reporter picks up a cluster it did not have at the start of a reporting period
    // only at the start of the next one, and then resets the cluster's counters: requests
    // sent before that are never reported (load_stats_reporter.cc says so of every new
    // cluster). So wait until a report names payments-v1 (nodes_reporting counts a node
    // whose report names the cluster, load or none); from then on nothing may go missing.
    eventually(
        Duration::from_secs(15),
        "Envoy reporting payments-v1",
        || async {
            let l = load(&cp).await;
            if v1(&l)["nodes_reporting"].as_u64() == Some(1) {
                Ok(())
            } else {
                Err(format!("{l}"))
            }
        },
    )
    .await;
    send_traffic(&url).await;
    // Envoy's own count of what it sent, next to what it reported.
    assert_eq!(
        envoy.stat("cluster.payments-v1.upstream_rq_total").await,
        Some(OK + ERRORS)
    );
    let l = wait_totals(&cp, OK + ERRORS).await;
    let v = v1(&l);
    assert_eq!(v["issued"].as_u64(), Some(OK + ERRORS), "{l}");
    assert_eq!(v["succeeded"].as_u64(), Some(OK), "{l}");
    assert_eq!(v["errored"].as_u64(), Some(ERRORS), "{l}");
    assert_eq!(v["nodes_reporting"].as_u64(), Some(1), "{l}");
    // Envoy sends no latency in legate's scheme.
    assert!(v["p50_ms"].is_null(), "{l}");
}

/// Traffic sent before any load report server answered is reported once one does: legate
/// reports from its last report, not from the server's answer.
#[tokio::test]
async fn load_sent_before_the_server_answers_is_reported() {
    let up = Upstream::start("payments", "v1", Protocol::Auto).await;
    let dir = TempDir::new("lrs-late");
    let config = dir.write("mesh.yaml", &mesh(up.addr()));
    let xds = Cp::start(&config, &dir.path().join("data")).await;
    // The load report server is not up yet: its address is only reserved.
    let lrs_addr = legate_tests::process::free_port();
    let lrs_url = format!("http://{lrs_addr}");
    let mut flags = XdsFlags::new(&xds.url(), Mode::Sotw).node("proxy-1", "web");
    flags.extra.extend(["--lrs-server".to_owned(), lrs_url]);
    let legate = Legate::start_xds(&flags).await;
    let url = legate.url("outbound", "/payments/charge").await;
    send_traffic(&url).await;

    let lrs_address = lrs_addr.to_string();
    let cp = Cp::start_with(
        &config,
        &dir.path().join("data-lrs"),
        &["--xds-address", &lrs_address, "--lrs-interval", "1s"],
    )
    .await;
    let l = wait_totals(&cp, OK + ERRORS).await;
    let v = v1(&l);
    assert_eq!(v["succeeded"].as_u64(), Some(OK), "{l}");
    assert_eq!(v["errored"].as_u64(), Some(ERRORS), "{l}");
    assert_eq!(v["nodes_reporting"].as_u64(), Some(1), "{l}");
}

/// A service with `endpoints` and no `versions` is one cluster named after it: its load is
/// shown per service with version `-`, in `GET /v1/load` and `legatectl top`.
#[tokio::test]
async fn services_without_versions_are_shown_with_version_dash() {
    let up = Upstream::start("ledger", "v1", Protocol::Auto).await;
    let dir = TempDir::new("lrs-endpoints");
    let config = dir.write(
        "mesh.yaml",
        &format!(
            r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: ledger
    endpoints: [{{address: {}}}]
    route: {{prefix: /ledger/, rewrite: /, timeout: 5s}}
"#,
            up.addr()
        ),
    );
    let cp = Cp::start_with(&config, &dir.path().join("data"), &["--lrs-interval", "1s"]).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("proxy-1", "web")).await;
    let url = legate.url("outbound", "/ledger/entries").await;
    let http = HttpClient::http1();
    for _ in 0..7 {
        http.get(&url).await.assert_status(200);
    }
    let l = eventually(Duration::from_secs(15), "ledger load", || async {
        let l = cp
            .get_json("/v1/load")
            .await
            .unwrap_or_else(|e| panic!("GET /v1/load: {e}"));
        if l["services"][0]["versions"][0]["issued"].as_u64() == Some(7) {
            Ok(l)
        } else {
            Err(l.to_string())
        }
    })
    .await;
    let s = &l["services"][0];
    assert_eq!(s["service"], "ledger", "{l}");
    assert_eq!(s["versions"].as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(s["versions"][0]["version"], "-", "{l}");
    assert_eq!(s["versions"][0]["cluster"], "ledger", "{l}");
    assert_eq!(s["versions"][0]["succeeded"].as_u64(), Some(7), "{l}");
    assert_eq!(s["versions"][0]["nodes_reporting"].as_u64(), Some(1), "{l}");

    let (ok, out, err) = cp.ctl(&["top", "ledger"]);
    assert!(ok, "legatectl top: {err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("ledger"))
        .unwrap_or_else(|| panic!("no ledger row in:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "-", "{out}");
    assert_eq!(cells[3], "0.0", "{out}");
    assert_eq!(cells[6], "1", "{out}");
}
