//! A real Prometheus server (Debian's `prometheus` package) scraping a real legate
//! (`/stats/prometheus` on its admin port) and a real legate-cp (`/metrics` on
//! `--metrics-address`) every second; queried through its HTTP API for legate's request
//! latency quantile and legate-cp's xDS metrics. And the Grafana dashboard under
//! `deploy/grafana/`: every query it holds reads only metrics the two processes expose,
//! and Prometheus accepts it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::cp::ControlPlane as Cp;
use legate_tests::metrics::promtool_check_metrics;
use legate_tests::process::TempDir;
use legate_tests::prometheus::{
    Job, Prometheus, dashboard_exprs, exposed_names, metric_names, repo_root,
};
use legate_tests::{Legate, Mode, Protocol, Upstream, XdsFlags, eventually};

/// Every request the test sends waits this long at the upstream, so the latency quantile
/// has a known place among the histogram's buckets.
const UPSTREAM_DELAY: &str = "30ms";
/// Bounded traffic: this many requests, sent one after another.
const REQUESTS: usize = 60;

fn mesh(upstream: SocketAddr) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    endpoints: [{{address: {upstream}}}]
    route: {{prefix: /payments/, timeout: 5s}}
"#
    )
}

/// An upstream, legate-cp, and a legate it configures over ADS (SotW) that routes to the
/// upstream.
struct World {
    _upstream: Upstream,
    _dir: TempDir,
    cp: Cp,
    legate: Legate,
    url: String,
}

impl World {
    async fn start(name: &str) -> World {
        let upstream = Upstream::start("payments", "v1", Protocol::Auto).await;
        let dir = TempDir::new(name);
        let config = dir.write("mesh.yaml", &mesh(upstream.addr()));
        let cp = Cp::start(&config, &dir.path().join("data")).await;
        let legate =
            Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("proxy-1", "web")).await;
        let url = legate
            .url(
                "outbound",
                &format!("/payments/charge?delay={UPSTREAM_DELAY}"),
            )
            .await;
        eventually(Duration::from_secs(10), "payments routed", || async {
            let r = HttpClient::http1()
                .try_request("GET", &url, &[], legate_tests::client::empty())
                .await
                .map_err(|e| e.to_string())?;
            (r.status == 200)
                .then_some(())
                .ok_or_else(|| format!("status {}", r.status))
        })
        .await;
        World {
            _upstream: upstream,
            _dir: dir,
            cp,
            legate,
            url,
        }
    }

    /// `REQUESTS` requests through legate, each answered 200.
    async fn traffic(&self) {
        let http = HttpClient::http1();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..REQUESTS {
            assert!(Instant::now() < deadline, "traffic took over 30s at {i}");
            let r = http.get(&self.url).await;
            assert_eq!(r.status, 200, "request {i}: {}", r.describe());
        }
    }

    /// The names both processes expose now.
    async fn exposed(&self) -> BTreeSet<String> {
        let legate = self.legate.metrics().await.text;
        let cp = self.cp.metrics_text().await;
        let mut names = exposed_names(&legate);
        names.extend(exposed_names(&cp));
        names
    }
}

fn dashboard() -> serde_json::Value {
    let path = repo_root().join("deploy/grafana/legate.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_legate_and_legate_cp_and_answers_latency_quantiles() {
    let world = World::start("prometheus").await;
    // legate-cp's exposition passes Prometheus' own linter.
    let cp_text = world.cp.metrics_text().await;
    if let Err(e) = promtool_check_metrics(&cp_text) {
        panic!("{e}\n{cp_text}");
    }

    let prometheus = Prometheus::start(
        &[
            Job {
                name: "legate",
                path: "/stats/prometheus",
                target: world.legate.admin_addr(),
            },
            Job {
                name: "legate-cp",
                path: "/metrics",
                target: world.cp.metrics,
            },
        ],
        Duration::from_secs(1),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "both targets scraped and up",
        || async {
            let targets = prometheus.targets().await?;
            let up = targets
                .iter()
                .filter(|(_, health, _)| health == "up")
                .count();
            (up == 2)
                .then_some(())
                .ok_or_else(|| format!("{targets:?}"))
        },
    )
    .await;

    world.traffic().await;

    // legate's request latency through Prometheus: every request waited 30 ms upstream, so
    // the 99th percentile lies above 0.025 (histogram_quantile interpolates inside the
    // bucket), in the (0.025, 0.05] bucket on a quiet machine; a loaded one pushed 1 % of
    // the requests past 50 ms (p99 0.084), so the bound is the next bucket's. A wrong unit,
    // a wrong bucket or no samples still fails.
    let p99 = "histogram_quantile(0.99, sum(rate(legate_upstream_request_duration_seconds_bucket{job=\"legate\"}[1m])) by (le))";
    let value = eventually(Duration::from_secs(30), "p99 from Prometheus", || async {
        let v = prometheus.scalar(p99).await?;
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(format!("{p99} = {v}"))
        }
    })
    .await;
    assert!(
        value > 0.025 && value <= 0.1,
        "p99 {value}s, expected within (0.025, 0.1] for a {UPSTREAM_DELAY} upstream"
    );
    // And the requests counted add up to what was sent (the readiness probes add a few).
    let sent = eventually(Duration::from_secs(15), "request count", || async {
        let n = prometheus
            .scalar("sum(legate_upstream_request_duration_seconds_count{job=\"legate\"})")
            .await?;
        if n >= REQUESTS as f64 {
            Ok(n)
        } else {
            Err(format!("{n} requests"))
        }
    })
    .await;
    assert!(sent < (REQUESTS + 50) as f64, "{sent} requests counted");

    // legate-cp through Prometheus: one SotW stream of node cluster web, pushes, ACKs timed.
    eventually(Duration::from_secs(15), "legate-cp metrics", || async {
        let streams = prometheus
            .query("legate_cp_xds_streams{job=\"legate-cp\"}")
            .await?;
        let open: Vec<_> = streams.iter().filter(|(_, v)| *v > 0.0).collect();
        match open.as_slice() {
            [(labels, v)]
                if *v == 1.0 && labels["mode"] == "sotw" && labels["node_cluster"] == "web" => {}
            other => return Err(format!("streams {other:?}")),
        }
        let pushes = prometheus
            .scalar("sum(legate_cp_xds_pushes_total{job=\"legate-cp\"})")
            .await?;
        if pushes <= 0.0 {
            return Err(format!("pushes {pushes}"));
        }
        let acks = prometheus
            .scalar("sum(legate_cp_xds_ack_latency_seconds_count{job=\"legate-cp\"})")
            .await?;
        if acks <= 0.0 {
            return Err(format!("ACKs timed {acks}"));
        }
        let buckets = prometheus
            .query("legate_cp_xds_ack_latency_seconds_bucket{job=\"legate-cp\",le=\"+Inf\"}")
            .await?;
        if buckets.len() != 5 {
            return Err(format!("+Inf buckets per type: {buckets:?}"));
        }
        Ok(())
    })
    .await;

    // Every dashboard query is valid PromQL to this Prometheus (with Grafana's variables
    // given values), and those of the panels that have data by now return some.
    for (title, expr) in dashboard_exprs(&dashboard()) {
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$proxy_job", "legate")
            .replace("$cp_job", "legate-cp");
        let result = prometheus.query(&promql).await;
        assert!(
            result.is_ok(),
            "panel {title:?}: {promql}: {result:?}\n{}",
            prometheus.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_reads_metrics_that_legate_and_legate_cp_expose() {
    let world = World::start("dashboard").await;
    world.traffic().await;
    let exposed = world.exposed().await;
    let exprs = dashboard_exprs(&dashboard());
    assert!(exprs.len() >= 12, "{} queries", exprs.len());
    let mut read = BTreeSet::new();
    let mut missing = Vec::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title:?} reads no metric: {expr}");
        for name in names {
            if !exposed.contains(&name) {
                missing.push(format!("panel {title:?}: {name} in {expr}"));
            }
            read.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics not exposed by legate or legate-cp:\n{}\nexposed: {exposed:?}",
        missing.join("\n")
    );
    // The check can fail: a name neither exposes is reported.
    assert!(!exposed.contains("legate_cp_xds_pushes"));
    // The dashboard covers both processes.
    for needed in [
        "legate_downstream_requests_total",
        "legate_upstream_request_duration_seconds_bucket",
        "legate_xds_updates_total",
        "legate_cp_xds_streams",
        "legate_cp_xds_pushes_total",
        "legate_cp_xds_ack_latency_seconds_bucket",
        "legate_cp_xds_nacks_total",
    ] {
        assert!(read.contains(needed), "no panel reads {needed}");
    }
}

/// Wait until legate-cp has counted exactly one mesh reload with this outcome.
async fn one_reload(cp: &Cp, outcome: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("one {outcome} reload counted"),
        || async {
            let m = cp.metrics().await;
            let n = m.get_or_zero("legate_cp_mesh_reloads_total", &[("outcome", outcome)]);
            (n == 1.0).then_some(()).ok_or_else(|| format!("{n}"))
        },
    )
    .await;
}

/// legate-cp's counters of admin changes, admin refusals and mesh file reloads, read from
/// its `/metrics` (which needs no credentials, and serves nothing else).
#[tokio::test(flavor = "multi_thread")]
async fn legate_cp_counts_admin_changes_refusals_and_mesh_reloads() {
    let dir = TempDir::new("cp-metrics-counts");
    let text = mesh("127.0.0.1:18099".parse().expect("addr"));
    let config = dir.write("mesh.yaml", &text);
    let cp = Cp::start_with(
        &config,
        &dir.path().join("data"),
        &["--mesh-settle", "100ms"],
    )
    .await;
    let value = |m: &legate_tests::Metrics, name: &str, labels: &[(&str, &str)]| {
        m.get_or_zero(name, labels)
    };

    // Refused at the authorization point: a wrong token, then no credentials.
    let r = cp
        .json(
            "GET",
            "/v1/nodes",
            &[("authorization", "Bearer not-the-token")],
            legate_tests::client::empty(),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.describe());
    let r = cp
        .json("GET", "/v1/nodes", &[], legate_tests::client::empty())
        .await;
    assert_eq!(r.status, 401, "{}", r.describe());
    // An admin change refused (no such service), one applied.
    let (ok, _, _) = cp.ctl(&["set-weights", "nosuch", "v1=100"]);
    assert!(!ok, "set-weights of an unknown service succeeded");
    let doc = dir.write(
        "orders.yaml",
        "services:\n  - name: orders\n    endpoints: [{address: 127.0.0.1:18098}]\n    route: {prefix: /orders/}\n",
    );
    let (ok, out, err) = cp.ctl(&["apply", "-f", &doc.to_string_lossy()]);
    assert!(ok, "apply: {out}{err}");
    // A mesh file that does not parse is refused; a comment changes nothing served.
    std::fs::write(&config, "services: [").expect("write");
    one_reload(&cp, "refused").await;
    std::fs::write(&config, format!("# a comment\n{text}")).expect("write");
    one_reload(&cp, "unchanged").await;

    let m = cp.metrics().await;
    type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let expected: &[Expected] = &[
        (
            "legate_cp_admin_refusals_total",
            &[("reason", "wrong-token")],
            1.0,
        ),
        (
            "legate_cp_admin_refusals_total",
            &[("reason", "no-credentials")],
            1.0,
        ),
        (
            "legate_cp_admin_changes_total",
            &[("operation", "set_weights"), ("outcome", "unknown_service")],
            1.0,
        ),
        (
            "legate_cp_admin_changes_total",
            &[("operation", "apply"), ("outcome", "ok")],
            1.0,
        ),
        (
            "legate_cp_mesh_reloads_total",
            &[("outcome", "applied")],
            0.0,
        ),
    ];
    for (name, labels, want) in expected {
        assert_eq!(
            value(&m, name, labels),
            *want,
            "{name} {labels:?}\n{}",
            m.text
        );
    }
    // Nothing else is served there, and only GET and HEAD.
    let base = format!("http://{}", cp.metrics);
    let r = legate_tests::get(&format!("{base}/v1/nodes")).await;
    assert_eq!(r.status, 404);
    let r = legate_tests::request("POST", &format!("{base}/metrics"), &[], "x").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}
