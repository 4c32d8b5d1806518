//! Canary rollouts end to end: a real legate-cp drives real legate proxies, which send real
//! traffic to demo upstreams (v1, v2) and report their load (LRS, every second); v2's failure
//! ratio is set at runtime through the upstream's `POST /control`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use legate_tests::client::HttpClient;
use legate_tests::cp::ControlPlane as Cp;
use legate_tests::process::TempDir;
use legate_tests::resilience::control;
use legate_tests::xds_server::Mode;
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The mesh: payments v1 at 100 %, v2 at 0; `extra` goes under the service (`rollout:`).
fn mesh(v1: SocketAddr, v2: SocketAddr, extra: &str) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {v1}}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: {v2}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
{extra}"#
    )
}

/// legate-cp, `n` proxies and the two upstreams.
struct Rig {
    dir: TempDir,
    config: std::path::PathBuf,
    /// Always set; taken only to restart it.
    cp: Option<Cp>,
    proxies: Vec<Legate>,
    v2: Upstream,
    _v1: Upstream,
}

impl Rig {
    async fn start(n: usize) -> Rig {
        Rig::start_with(n, "").await
    }

    /// With `extra` under the service in the mesh file.
    async fn start_with(n: usize, extra: &str) -> Rig {
        let v1 = Upstream::start("payments-v1", "v1", Protocol::Auto).await;
        let v2 = Upstream::start("payments-v2", "v2", Protocol::Auto).await;
        let dir = TempDir::new("canary");
        let config = dir.write("mesh.yaml", &mesh(v1.addr(), v2.addr(), extra));
        let cp = start_cp(&config, &dir.path().join("data"), None).await;
        let mut proxies = Vec::new();
        for i in 1..=n {
            let flags = XdsFlags::new(&cp.url(), Mode::Sotw).node(&format!("proxy-{i}"), "web");
            proxies.push(Legate::start_xds(&flags).await);
        }
        Rig {
            dir,
            config,
            cp: Some(cp),
            proxies,
            v2,
            _v1: v1,
        }
    }

    fn cp(&self) -> &Cp {
        self.cp.as_ref().expect("legate-cp")
    }

    /// SIGKILL legate-cp (by PID: dropping the handle kills it) and start it again on the
    /// same xDS address and data directory.
    async fn restart_cp(&mut self) {
        let old = self.cp.take().expect("legate-cp");
        let xds = old.xds;
        drop(old);
        let data = self.dir.path().join("data");
        self.cp = Some(start_cp(&self.config, &data, Some(xds)).await);
    }

    async fn urls(&self) -> Vec<String> {
        let mut urls = Vec::new();
        for p in &self.proxies {
            urls.push(p.url("outbound", "/payments/pay").await);
        }
        urls
    }
}

async fn start_cp(config: &std::path::Path, data: &std::path::Path, xds: Option<SocketAddr>) -> Cp {
    let mut args = vec!["--lrs-interval", "1s"];
    let addr = xds.map(|a| a.to_string());
    if let Some(addr) = &addr {
        args.extend(["--xds-address", addr]);
    }
    Cp::start_with(config, data, &args).await
}

/// Requests spread over the proxies until stopped, at most `MAX_REQUESTS` or `MAX_TIME`.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const MAX_REQUESTS: u64 = 40_000;
const MAX_TIME: Duration = Duration::from_secs(120);

impl Traffic {
    fn start(urls: Vec<String>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
            let end = Instant::now() + MAX_TIME;
            // About 100 requests a second in all: a pace, not a synchronisation.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed)
                && Instant::now() < end
                && n.load(Ordering::Relaxed) < MAX_REQUESTS
            {
                tick.tick().await;
                let url = &urls[i % urls.len()];
                i += 1;
                let _ = http
                    .try_request("GET", url, &[], legate_tests::client::empty())
                    .await;
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        Traffic { stop, sent, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.sent.load(Ordering::Relaxed)
    }
}

async fn post(cp: &Cp, path: &str, body: &Value) -> (u16, Value) {
    let r = cp
        .json(
            "POST",
            path,
            &[
                ("authorization", &cp.bearer()),
                ("content-type", "application/json"),
            ],
            legate_tests::client::full(body.to_string()),
        )
        .await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), v)
}

async fn start_rollout(cp: &Cp, body: Value) -> Value {
    let (status, v) = post(cp, "/v1/rollouts/payments", &body).await;
    assert_eq!(status, 200, "start: {v}");
    v
}

async fn status(cp: &Cp) -> Value {
    cp.get_json("/v1/rollouts/payments")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls the rollout until `check` says yes.
async fn wait_for(cp: &Cp, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    eventually(timeout, what, || async {
        let s = status(cp).await;
        if check(&s) {
            Ok(s)
        } else {
            Err(format!("{s:#}"))
        }
    })
    .await
}

/// The weight of `payments-v2` in the route a proxy runs now (its `/config_dump`), out of
/// 100: a route to one cluster alone (a version at 100 %, the others at 0) is 100 or 0.
async fn v2_weight(proxy: &Legate) -> Option<u64> {
    fn find(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => {
                if let Some(route) = m.get("route").filter(|r| r.is_object()) {
                    if let Some(clusters) = route["weighted_clusters"]["clusters"].as_array() {
                        let w = clusters
                            .iter()
                            .find(|c| c["name"] == "payments-v2")
                            .map_or(0, |c| c["weight"].as_u64().unwrap_or(0));
                        return Some(w);
                    }
                    if let Some(c) = route["cluster"].as_str()
                        && c.starts_with("payments-")
                    {
                        return Some(if c == "payments-v2" { 100 } else { 0 });
                    }
                }
                m.values().find_map(find)
            }
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&proxy.admin_json("/config_dump").await)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn verdicts(s: &Value) -> Vec<(u64, String)> {
    s["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| {
                    (
                        d["step"].as_u64().unwrap_or(0),
                        d["verdict"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_v2_is_promoted_through_every_step() {
    let rig = Rig::start(2).await;
    let traffic = Traffic::start(rig.urls().await);
    let started = start_rollout(
        rig.cp(),
        json!({"to": "v2", "steps": [25, 50, 100], "interval": "1s",
               "max_error_rate": "5%", "max_p99": "2s", "min_requests": 10}),
    )
    .await;
    assert_eq!(started["from"], "v1", "{started:#}");
    assert_eq!(started["step"], 1, "{started:#}");
    assert_eq!(
        started["weights"],
        json!({"v1": 75, "v2": 25}),
        "{started:#}"
    );
    let done = wait_for(rig.cp(), "promoted", WAIT, |s| s["state"] == "promoted").await;
    let sent = traffic.stop().await;
    assert!(sent > 0);
    assert_eq!(done["weights"], json!({"v1": 0, "v2": 100}), "{done:#}");
    let passes: Vec<u64> = verdicts(&done)
        .into_iter()
        .filter(|(_, v)| v == "pass")
        .map(|(s, _)| s)
        .collect();
    assert_eq!(passes, [1, 2, 3], "{done:#}");
    // Every pass was judged on load of both versions, with every node's ACK recorded.
    for d in done["decisions"].as_array().expect("decisions") {
        if d["verdict"] == "pass" {
            assert!(d["figures"]["v2"]["requests"].as_u64() >= Some(10), "{d:#}");
            assert_eq!(d["acked"].as_object().map(|a| a.len()), Some(2), "{d:#}");
        }
    }
    for p in &rig.proxies {
        assert_eq!(v2_weight(p).await, Some(100));
    }
    // The weights' provenance names the rollout.
    let svc = rig
        .cp()
        .get_json("/v1/services/payments")
        .await
        .expect("service");
    let weights = svc["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == "weights"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(weights["source"], "rollout", "{svc:#}");
    assert_eq!(weights["change"]["op"], "rollout", "{svc:#}");
    // legatectl shows it too, as a table and as the API's JSON.
    let (ok, out, err) = rig.cp().ctl(&["canary", "status"]);
    assert!(ok, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("payments") && row.contains("promoted") && row.contains("3/3"),
        "{out}"
    );
    let (ok, out, err) = rig
        .cp()
        .ctl(&["canary", "status", "payments", "-o", "json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["state"], "promoted");
    assert_eq!(v["decisions"], done["decisions"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_failing_at_step_2_is_rolled_back_within_seconds() {
    let rig = Rig::start(3).await;
    let traffic = Traffic::start(rig.urls().await);
    start_rollout(
        rig.cp(),
        json!({"to": "v2", "from": "v1", "steps": [10, 25, 50, 100], "interval": "2s",
               "max_error_rate": "5%", "min_requests": 20}),
    )
    .await;
    wait_for(rig.cp(), "step 2", WAIT, |s| s["step"] == 2).await;
    control(&rig.v2, json!({"fail_ratio": 0.2})).await;
    // When each proxy is first seen running 0 % v2.
    let mut back: Vec<Option<u64>> = vec![None; rig.proxies.len()];
    let deadline = Instant::now() + WAIT;
    while back.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "not rolled back everywhere: {back:?}"
        );
        for (i, p) in rig.proxies.iter().enumerate() {
            if back[i].is_none() && v2_weight(p).await == Some(0) {
                back[i] = Some(now_ms());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traffic.stop().await;
    let s = wait_for(rig.cp(), "rolled back, measured", WAIT, |s| {
        s["state"] == "rolled_back" && !s["rollback_ms"].is_null()
    })
    .await;
    let fail = s["decisions"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["verdict"] == "fail"))
        .cloned()
        .unwrap_or_else(|| panic!("no fail decision: {s:#}"));
    assert_eq!(fail["step"], 2, "{fail:#}");
    assert_eq!(fail["weight"], 25, "{fail:#}");
    assert!(
        fail["figures"]["v2"]["error_percent"].as_f64() > Some(5.0),
        "{fail:#}"
    );
    assert_eq!(
        fail["acked"].as_object().map(|a| a.len()),
        Some(3),
        "{fail:#}"
    );
    let failed_at = fail["at_unix_ms"].as_u64().expect("at_unix_ms");
    let last = back.iter().flatten().max().copied().unwrap_or(0);
    let measured = last.saturating_sub(failed_at);
    let rollback_ms = s["rollback_ms"].as_u64().expect("rollback_ms");
    println!(
        "rollback: failing report to 0 % v2 at all 3 proxies in {measured} ms (seen by polling \
         /config_dump every ~20 ms); legate-cp measured {rollback_ms} ms to every ACK"
    );
    assert!(measured < 5_000, "{measured} ms: {s:#}");
    assert!(rollback_ms < 5_000, "{s:#}");
    assert_eq!(s["weights"], json!({"v1": 100, "v2": 0}), "{s:#}");
    let metrics = rig.cp().metrics_text().await;
    assert!(
        metrics.contains("legate_cp_rollout_rollback_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("legate_cp_rollout_decisions_total{verdict=\"fail\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_traffic_a_rollout_holds_and_never_promotes() {
    let rig = Rig::start(2).await;
    start_rollout(
        rig.cp(),
        json!({"to": "v2", "steps": [50, 100], "interval": "1s",
               "max_error_rate": "1%", "min_requests": 10}),
    )
    .await;
    let held = wait_for(rig.cp(), "holding", WAIT, |s| s["state"] == "holding").await;
    assert!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("too few requests to v2"),
        "{held:#}"
    );
    assert_eq!(
        held["not_reporting"],
        json!(["proxy-1", "proxy-2"]),
        "{held:#}"
    );
    assert_eq!(
        verdicts(&held),
        [(1, "manual".into()), (1, "inconclusive".into())]
    );
    // It stays so over several intervals (a bounded watch: holding is the absence of
    // progress), with no further decision.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        let s = status(rig.cp()).await;
        assert_eq!(
            (s["state"].as_str(), s["step"].as_u64()),
            (Some("holding"), Some(1)),
            "{s:#}"
        );
        assert_eq!(s["weights"], json!({"v1": 50, "v2": 50}), "{s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(verdicts(&status(rig.cp()).await).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_control_plane_resumes_at_the_same_step() {
    let mut rig = Rig::start(2).await;
    let traffic = Traffic::start(rig.urls().await);
    start_rollout(
        rig.cp(),
        json!({"to": "v2", "steps": [10, 50, 100], "interval": "2s",
               "max_error_rate": "5%", "min_requests": 10}),
    )
    .await;
    let before = wait_for(rig.cp(), "step 2", WAIT, |s| s["step"] == 2).await;
    rig.restart_cp().await;
    // At once, before anything else is judged: the same step, set again, in charge.
    let after = status(rig.cp()).await;
    assert_eq!(after["step"], 2, "{after:#}");
    assert_eq!(after["weights"], json!({"v1": 50, "v2": 50}), "{after:#}");
    assert!(after["resumed"].is_string(), "{after:#}");
    assert_eq!(
        after["decisions"].as_array().map(Vec::len),
        before["decisions"].as_array().map(Vec::len),
        "decisions survive: {after:#}"
    );
    // Manual weights are still refused: someone is in charge.
    let (ok, _, err) = rig.cp().ctl(&["set-weights", "payments", "v1=100", "v2=0"]);
    assert!(!ok && err.contains("rolling out"), "{err}");
    let done = wait_for(rig.cp(), "promoted after the restart", WAIT, |s| {
        s["state"] == "promoted"
    })
    .await;
    traffic.stop().await;
    let passes: Vec<u64> = verdicts(&done)
        .into_iter()
        .filter(|(_, v)| v == "pass")
        .map(|(s, _)| s)
        .collect();
    // Step 1 passed once, before the restart; never again from the first step.
    assert_eq!(passes, [1, 2, 3], "{done:#}");
    for p in &rig.proxies {
        assert_eq!(v2_weight(p).await, Some(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_rolls_back() {
    let rig = Rig::start(2).await;
    start_rollout(
        rig.cp(),
        json!({"to": "v2", "steps": [50, 100], "interval": "30s",
               "max_error_rate": "1%", "min_requests": 10}),
    )
    .await;
    eventually(WAIT, "every proxy at 50 % v2", || async {
        for p in &rig.proxies {
            let w = v2_weight(p).await;
            if w != Some(50) {
                return Err(format!("{w:?}"));
            }
        }
        Ok(())
    })
    .await;
    let (ok, out, err) = rig.cp().ctl(&["canary", "abort", "payments"]);
    assert!(ok, "{err}");
    assert!(out.contains("aborted"), "{out}");
    eventually(WAIT, "every proxy back at 0 % v2", || async {
        for p in &rig.proxies {
            let w = v2_weight(p).await;
            if w != Some(0) {
                return Err(format!("{w:?}"));
            }
        }
        Ok(())
    })
    .await;
    let s = wait_for(rig.cp(), "abort measured", WAIT, |s| {
        !s["rollback_ms"].is_null()
    })
    .await;
    assert_eq!(s["state"], "aborted", "{s:#}");
    assert_eq!(s["weights"], json!({"v1": 100, "v2": 0}), "{s:#}");
    assert_eq!(verdicts(&s).last().map(|(_, v)| v.as_str()), Some("manual"));
    // Finished: nothing left to steer, manual weights are allowed again.
    let (status_code, v) = post(rig.cp(), "/v1/rollouts/payments/abort", &json!({})).await;
    assert_eq!(status_code, 409, "{v}");
    let (ok, _, err) = rig.cp().ctl(&["set-weights", "payments", "v1=90", "v2=10"]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_weights_are_refused_while_rolling_out() {
    let rig = Rig::start(2).await;
    let cp = rig.cp();
    // Invalid requests: 400, unknown service or rollout: 404.
    let (code, v) = post(
        cp,
        "/v1/rollouts/payments",
        &json!({"to": "v9", "steps": [100],
        "interval": "1s", "max_error_rate": "1%", "min_requests": 1}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no version `v9`"),
        "{v}"
    );
    let (code, v) = post(
        cp,
        "/v1/rollouts/payments",
        &json!({"to": "v2", "steps": [100],
        "interval": "1s", "max_error_rate": "1%", "min_requests": 1, "extra": 1}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = post(
        cp,
        "/v1/rollouts/nope",
        &json!({"to": "v2", "steps": [100],
        "interval": "1s", "max_error_rate": "1%", "min_requests": 1}),
    )
    .await;
    assert_eq!(code, 404, "{v}");
    let missing = cp
        .get_json("/v1/rollouts/payments")
        .await
        .expect_err("no rollout yet");
    assert!(missing.contains("404"), "{missing}");

    let (ok, out, err) = cp.ctl(&[
        "canary",
        "start",
        "payments",
        "--to",
        "v2",
        "--steps",
        "50,100",
        "--interval",
        "30s",
        "--max-error-rate",
        "1%",
        "--max-p99",
        "250ms",
        "--min-requests",
        "10",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("payments") && out.contains("progressing"),
        "{out}"
    );
    let want = "service payments is rolling out (step 1 of 2); pause or abort it first";
    // legatectl (gRPC: FAILED_PRECONDITION), the JSON API (409), and an apply that changes
    // the weights.
    let (ok, _, err) = cp.ctl(&["set-weights", "payments", "v1=100", "v2=0"]);
    assert!(!ok && err.contains(want), "{err}");
    let (code, v) = post(
        cp,
        "/v1/services/payments/weights",
        &json!({"v1": 100, "v2": 0}),
    )
    .await;
    assert_eq!((code, v["error"].as_str()), (409, Some(want)), "{v}");
    let mut grpc = cp.grpc().await;
    let mut req = tonic::Request::new(legate_proto::admin::SetWeightsRequest {
        service: "payments".into(),
        weights: [("v1".to_owned(), 100), ("v2".to_owned(), 0)].into(),
    });
    let bearer = cp.bearer();
    req.metadata_mut()
        .insert("authorization", bearer.parse().expect("metadata"));
    let e = grpc.set_weights(req).await.expect_err("refused over gRPC");
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::FailedPrecondition, want)
    );
    let mut req = tonic::Request::new(legate_proto::admin::GetRolloutsRequest {
        service: "payments".into(),
    });
    req.metadata_mut()
        .insert("authorization", bearer.parse().expect("metadata"));
    let listed = grpc
        .get_rollouts(req)
        .await
        .expect("GetRollouts")
        .into_inner();
    let r = &listed.rollouts[0];
    assert_eq!(
        (r.service.as_str(), r.state.as_str(), r.step),
        ("payments", "progressing", 1)
    );
    let json: Value = serde_json::from_str(&r.status_json).expect("status json");
    assert_eq!(json["weights"], json!({"v1": 50, "v2": 50}), "{json:#}");
    let doc = rig.dir.write(
        "change.yaml",
        &std::fs::read_to_string(&rig.config)
            .expect("mesh")
            .replace("weight: 100", "weight: 70")
            .replace("weight: 0", "weight: 30")
            .split("services:")
            .nth(1)
            .map(|rest| format!("services:{rest}"))
            .expect("services"),
    );
    let (ok, _, err) = cp.ctl(&["apply", "-f", &doc.display().to_string()]);
    assert!(!ok && err.contains(want), "{err}");
    // A second rollout of the same service: 409.
    let (code, v) = post(
        cp,
        "/v1/rollouts/payments",
        &json!({"to": "v2", "steps": [100],
        "interval": "1s", "max_error_rate": "1%", "min_requests": 1}),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    // Paused, the weights are the operator's again (documented).
    let (code, v) = post(cp, "/v1/rollouts/payments/pause", &json!({})).await;
    assert_eq!((code, v["state"].as_str()), (200, Some("paused")), "{v}");
    let (ok, _, err) = cp.ctl(&["set-weights", "payments", "v1=60", "v2=40"]);
    assert!(ok, "{err}");
    let (code, v) = post(cp, "/v1/rollouts/payments/resume", &json!({})).await;
    assert_eq!(
        (code, v["state"].as_str()),
        (200, Some("progressing")),
        "{v}"
    );
    assert_eq!(v["weights"], json!({"v1": 50, "v2": 50}), "{v}");
    let (code, v) = post(cp, "/v1/rollouts/payments/launch", &json!({})).await;
    assert_eq!(code, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_declared_in_the_mesh_runs_once() {
    let block = "    rollout: {to: v2, steps: [50, 100], interval: 1s, max_error_rate: 5%, \
                 min_requests: 10}\n";
    let rig = Rig::start_with(2, block).await;
    let traffic = Traffic::start(rig.urls().await);
    let done = wait_for(rig.cp(), "the declared rollout promoted", WAIT, |s| {
        s["state"] == "promoted"
    })
    .await;
    traffic.stop().await;
    let first = &done["decisions"][0];
    assert_eq!(first["verdict"], "manual", "{done:#}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("by mesh files"),
        "{done:#}"
    );
    // The files change (not the block): the finished rollout is not started again.
    let before = rig.cp().get_json("/v1/mesh").await.expect("mesh")["digest"].clone();
    let text = std::fs::read_to_string(&rig.config).expect("mesh file");
    std::fs::write(&rig.config, format!("# edited\n{text}")).expect("write mesh file");
    eventually(WAIT, "the edited files applied", || async {
        let m = rig.cp().get_json("/v1/mesh").await?;
        if m["digest"] != before && m["refused"].is_null() {
            Ok(())
        } else {
            Err(format!("{m}"))
        }
    })
    .await;
    let after = status(rig.cp()).await;
    assert_eq!(after["state"], "promoted", "{after:#}");
    assert_eq!(after["started"], done["started"], "{after:#}");
    assert_eq!(after["decisions"], done["decisions"], "{after:#}");
}

#[tokio::test]
async fn a_corrupt_rollout_file_is_refused_at_start() {
    let dir = TempDir::new("canary-corrupt");
    let config = dir.write(
        "mesh.yaml",
        &mesh(
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
            "",
        ),
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("rollouts.json"),
        r#"{"format": 1, "rollouts": [{"#,
    )
    .expect("write");
    let output = Cp::try_start(&config, &data, &[])
        .await
        .err()
        .expect("legate-cp must refuse to start");
    assert!(
        output.contains("rollouts.json") && output.contains("does not start on rollout state"),
        "{output}"
    );
}
