//! Canary rollouts end to end: a real legate-cp drives real legate proxies, which send real
//! traffic to demo upstreams (v1, v2) and report their load (LRS, every second); v2's failure
//! ratio is set at runtime through the upstream's `POST /control`. The fleet, traffic and
//! status readers are tests/src/canary.rs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use legate_tests::canary::{
    Fleet, Pace, Traffic, TrafficLimits, decisions, mesh, served_weight, verdicts,
};
use legate_tests::cp::ControlPlane as Cp;
use legate_tests::eventually;
use legate_tests::process::TempDir;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// About 100 requests a second over every proxy, at most 40 000 or two minutes.
const TRAFFIC: TrafficLimits = TrafficLimits {
    max_requests: 40_000,
    max_duration: Duration::from_secs(120),
    pace: Pace::RequestEvery(Duration::from_millis(10)),
};

/// legate-cp, legate proxies `proxy-1` to `proxy-N` and the two upstreams; `extra` goes
/// under the service in the mesh file.
async fn fleet(n: usize, extra: &str) -> Fleet {
    let ids: Vec<String> = (1..=n).map(|i| format!("proxy-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    Fleet::start_with(&ids, &[], extra).await
}

/// `GET /v1/rollouts/payments`, which must answer.
async fn status(fleet: &Fleet) -> Value {
    fleet.rollout().await.unwrap_or_else(|e| panic!("{e}"))
}

/// `POST /v1/rollouts/payments`, which must start it.
async fn start_rollout(fleet: &Fleet, body: Value) -> Value {
    fleet
        .start_rollout(&body)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// The steps of the `pass` decisions, in order.
fn passes(status: &Value) -> Vec<u64> {
    decisions(status, "pass")
        .iter()
        .map(|d| d["step"].as_u64().unwrap_or(0))
        .collect()
}

/// Waits until every legate proxy serves `percent` % v2.
async fn wait_every_v2_weight(fleet: &Fleet, percent: u64, what: &str) {
    eventually(WAIT, what, || async {
        for p in fleet.legates() {
            let w = served_weight(p, "v2").await;
            if w != Some(percent) {
                return Err(format!("{w:?}"));
            }
        }
        Ok(())
    })
    .await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_v2_is_promoted_through_every_step() {
    let rig = fleet(2, "").await;
    let traffic = Traffic::start(rig.urls(), TRAFFIC);
    let started = start_rollout(
        &rig,
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
    let done = rig
        .wait_for("promoted", WAIT, |s| s["state"] == "promoted")
        .await;
    let sent = traffic.stop().await.sent;
    assert!(sent > 0);
    assert_eq!(done["weights"], json!({"v1": 0, "v2": 100}), "{done:#}");
    assert_eq!(passes(&done), [1, 2, 3], "{done:#}");
    // Every pass was judged on load of both versions, with every node's ACK recorded.
    for d in done["decisions"].as_array().expect("decisions") {
        if d["verdict"] == "pass" {
            assert!(d["figures"]["v2"]["requests"].as_u64() >= Some(10), "{d:#}");
            assert_eq!(d["acked"].as_object().map(|a| a.len()), Some(2), "{d:#}");
        }
    }
    for p in rig.legates() {
        assert_eq!(served_weight(p, "v2").await, Some(100));
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
    let rig = fleet(3, "").await;
    let traffic = Traffic::start(rig.urls(), TRAFFIC);
    start_rollout(
        &rig,
        json!({"to": "v2", "from": "v1", "steps": [10, 25, 50, 100], "interval": "2s",
               "max_error_rate": "5%", "min_requests": 20}),
    )
    .await;
    rig.wait_for("step 2", WAIT, |s| s["step"] == 2).await;
    rig.v2_fails(0.2).await;
    // When each proxy is first seen running 0 % v2.
    let legates = rig.legates();
    let mut back: Vec<Option<u64>> = vec![None; legates.len()];
    let deadline = Instant::now() + WAIT;
    while back.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "not rolled back everywhere: {back:?}"
        );
        for (i, p) in legates.iter().enumerate() {
            if back[i].is_none() && served_weight(p, "v2").await == Some(0) {
                back[i] = Some(now_ms());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traffic.stop().await;
    let s = rig
        .wait_for("rolled back, measured", WAIT, |s| {
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
    let rig = fleet(2, "").await;
    start_rollout(
        &rig,
        json!({"to": "v2", "steps": [50, 100], "interval": "1s",
               "max_error_rate": "1%", "min_requests": 10}),
    )
    .await;
    let held = rig
        .wait_for("holding", WAIT, |s| s["state"] == "holding")
        .await;
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
        let s = status(&rig).await;
        assert_eq!(
            (s["state"].as_str(), s["step"].as_u64()),
            (Some("holding"), Some(1)),
            "{s:#}"
        );
        assert_eq!(s["weights"], json!({"v1": 50, "v2": 50}), "{s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(verdicts(&status(&rig).await).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_control_plane_resumes_at_the_same_step() {
    let mut rig = fleet(2, "").await;
    let traffic = Traffic::start(rig.urls(), TRAFFIC);
    start_rollout(
        &rig,
        json!({"to": "v2", "steps": [10, 50, 100], "interval": "2s",
               "max_error_rate": "5%", "min_requests": 10}),
    )
    .await;
    let before = rig.wait_for("step 2", WAIT, |s| s["step"] == 2).await;
    rig.restart_cp().await;
    // At once, before anything else is judged: the same step, set again, in charge.
    let after = status(&rig).await;
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
    let done = rig
        .wait_for("promoted after the restart", WAIT, |s| {
            s["state"] == "promoted"
        })
        .await;
    traffic.stop().await;
    // Step 1 passed once, before the restart; never again from the first step.
    assert_eq!(passes(&done), [1, 2, 3], "{done:#}");
    for p in rig.legates() {
        assert_eq!(served_weight(p, "v2").await, Some(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_rolls_back() {
    let rig = fleet(2, "").await;
    start_rollout(
        &rig,
        json!({"to": "v2", "steps": [50, 100], "interval": "30s",
               "max_error_rate": "1%", "min_requests": 10}),
    )
    .await;
    wait_every_v2_weight(&rig, 50, "every proxy at 50 % v2").await;
    let (ok, out, err) = rig.cp().ctl(&["canary", "abort", "payments"]);
    assert!(ok, "{err}");
    assert!(out.contains("aborted"), "{out}");
    wait_every_v2_weight(&rig, 0, "every proxy back at 0 % v2").await;
    let s = rig
        .wait_for("abort measured", WAIT, |s| !s["rollback_ms"].is_null())
        .await;
    assert_eq!(s["state"], "aborted", "{s:#}");
    assert_eq!(s["weights"], json!({"v1": 100, "v2": 0}), "{s:#}");
    assert_eq!(verdicts(&s).last().map(|(_, v)| v.as_str()), Some("manual"));
    // Finished: nothing left to steer, manual weights are allowed again.
    let (status_code, v) = rig.post("/v1/rollouts/payments/abort", &json!({})).await;
    assert_eq!(status_code, 409, "{v}");
    let (ok, _, err) = rig.cp().ctl(&["set-weights", "payments", "v1=90", "v2=10"]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_weights_are_refused_while_rolling_out() {
    let rig = fleet(2, "").await;
    let cp = rig.cp();
    // Invalid requests: 400, unknown service or rollout: 404.
    let (code, v) = rig
        .post(
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
    let (code, v) = rig
        .post(
            "/v1/rollouts/payments",
            &json!({"to": "v2", "steps": [100],
        "interval": "1s", "max_error_rate": "1%", "min_requests": 1, "extra": 1}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = rig
        .post(
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
    let (code, v) = rig
        .post(
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
    let (code, v) = rig
        .post(
            "/v1/rollouts/payments",
            &json!({"to": "v2", "steps": [100],
        "interval": "1s", "max_error_rate": "1%", "min_requests": 1}),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    // Paused, the weights are the operator's again (documented).
    let (code, v) = rig.post("/v1/rollouts/payments/pause", &json!({})).await;
    assert_eq!((code, v["state"].as_str()), (200, Some("paused")), "{v}");
    let (ok, _, err) = cp.ctl(&["set-weights", "payments", "v1=60", "v2=40"]);
    assert!(ok, "{err}");
    let (code, v) = rig.post("/v1/rollouts/payments/resume", &json!({})).await;
    assert_eq!(
        (code, v["state"].as_str()),
        (200, Some("progressing")),
        "{v}"
    );
    assert_eq!(v["weights"], json!({"v1": 50, "v2": 50}), "{v}");
    let (code, v) = rig.post("/v1/rollouts/payments/launch", &json!({})).await;
    assert_eq!(code, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_declared_in_the_mesh_runs_once() {
    let block = "    rollout: {to: v2, steps: [50, 100], interval: 1s, max_error_rate: 5%, \
                 min_requests: 10}\n";
    let rig = fleet(2, block).await;
    let traffic = Traffic::start(rig.urls(), TRAFFIC);
    let done = rig
        .wait_for("the declared rollout promoted", WAIT, |s| {
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
    let after = status(&rig).await;
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

/// A proxy that reads a mesh with a `rollout:` block itself (no legate-cp) serves the weights
/// as written and says that the block is legate-cp's to run, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_legate_says_it_does_not_run_a_rollout() {
    let block = "    rollout: {to: v2, steps: [50, 100], interval: 1s, max_error_rate: 5%, min_requests: 5}\n";
    let mesh = legate_tests::canary::mesh(
        legate_tests::closed_port(),
        legate_tests::closed_port(),
        block,
    );
    let legate = legate_tests::Legate::start(&mesh).await;
    eventually(WAIT, "the rollout warning", || async {
        let out = legate.output();
        if out.contains("a rollout is run by legate-cp") && out.contains("services[0].rollout") {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
}
