//! Canary rollouts judged on a mixed fleet: one legate and one real Envoy 1.40, both
//! configured by legate-cp over ADS and both reporting their load (LRS) to it every second,
//! both sending traffic. A healthy v2 is promoted through every step; a v2 failing a fifth
//! of its requests is rolled back; the status shows both nodes reporting and ACKing.
//!
//! Envoy reports no latency in legate's scheme, so its share is judged on errors alone and
//! the p99 comes from legate's reports (see `judge` in control-plane/src/rollout.rs).

use std::time::Duration;

use legate_tests::canary::{Fleet, Pace, Traffic, TrafficLimits, acked_nodes, decisions, weights};

const LEGATE: &str = "legate-1";
const ENVOY: &str = "envoy-1";

/// Short steps, so a rollout ends within seconds: each step needs 20 requests to v2 and
/// lasts 3 s once every node ACKed its weights (`legatectl canary start payments --to v2
/// --from v1 --steps 10,50,100 --interval 3s --max-error-rate 5% --max-p99 500ms
/// --min-requests 20`, through the JSON admin API).
fn start_body() -> serde_json::Value {
    serde_json::json!({
        "to": "v2",
        "from": "v1",
        "steps": [10, 50, 100],
        "interval": "3s",
        "max_error_rate": "5%",
        "max_p99": "500ms",
        "min_requests": 20,
    })
}

/// The traffic of one rollout: about 100 rounds a second through both proxies, at most a
/// minute and 12,000 requests.
const TRAFFIC: TrafficLimits = TrafficLimits {
    max_requests: 12_000,
    max_duration: Duration::from_secs(60),
    pace: Pace::PauseAfterRound(Duration::from_millis(10)),
};

/// How long a rollout of three 3 s steps gets to end (ACKs and 1 s reports included).
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(45);

async fn start_rollout(fleet: &Fleet) {
    let status = fleet
        .start_rollout(&start_body())
        .await
        .unwrap_or_else(|e| panic!("starting the rollout: {e}"));
    assert_eq!(status["service"], "payments", "{status:#}");
}

/// Every decision judged on load (pass or fail) saw both nodes reporting both versions and
/// both nodes' ACKs.
fn assert_judged_on_both(fleet: &Fleet, status: &serde_json::Value, verdict: &str) {
    let judged = decisions(status, verdict);
    assert!(!judged.is_empty(), "no {verdict} decision: {status:#}");
    for d in judged {
        // At 100 % v1 gets nothing: whether an idle cluster is reported is up to the proxy.
        let versions: &[&str] = if d["weight"].as_u64() == Some(100) {
            &["v2"]
        } else {
            &["v1", "v2"]
        };
        for version in versions {
            assert_eq!(
                d["figures"][version]["nodes_reporting"].as_u64(),
                Some(2),
                "a {verdict} decision without both nodes reporting {version}: {d:#}\n{status:#}"
            );
        }
        assert_eq!(
            acked_nodes(d),
            fleet.node_ids(),
            "a {verdict} decision without both nodes' ACKs: {d:#}"
        );
    }
    assert_eq!(
        status["not_reporting"].as_array().map(Vec::len),
        Some(0),
        "nodes not reporting: {status:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_v2_is_promoted_on_a_mixed_fleet() {
    let fleet = Fleet::start(&[LEGATE], &[ENVOY]).await;
    let traffic = Traffic::start(fleet.urls(), TRAFFIC);
    start_rollout(&fleet).await;
    let watch = fleet.watch();
    let status = fleet.wait_state(&["promoted"], ROLLOUT_TIMEOUT).await;
    assert!(
        traffic.running(),
        "the traffic stopped before the promotion"
    );
    let tally = traffic.stop().await;

    // `canary status --watch`, piped: one frame per change, ending with the promotion.
    let (exited, frames) = watch.finish(Duration::from_secs(10)).await;
    assert_eq!(
        exited,
        Some(true),
        "the watch did not end with the rollout:\n{frames}"
    );
    for needle in [
        "step 1/3 (v2 at 10 %)",
        "step 2/3 (v2 at 50 %)",
        "  NODES\n",
    ] {
        assert!(
            frames.contains(needle),
            "no {needle:?} in the frames:\n{frames}"
        );
    }
    let last = frames
        .rsplit("payments: v1 -> v2")
        .next()
        .unwrap_or_default();
    assert!(
        last.starts_with("   promoted   step 3/3") && last.contains("[####################] 100 %"),
        "the last frame is not the promotion:\n{last}"
    );
    assert!(
        last.contains(&format!("{LEGATE}=")) && last.contains(&format!("{ENVOY}=")),
        "the last frame does not show both nodes' ACKs:\n{last}"
    );
    let frame_count = frames.matches("payments: v1 -> v2").count();
    eprintln!("--watch printed {frame_count} frames; the last one:\npayments: v1 -> v2{last}");

    let w = weights(&status);
    assert_eq!(
        (w.get("v1"), w.get("v2")),
        (Some(&0), Some(&100)),
        "{status:#}"
    );
    // Every step was judged and passed, on at least 20 requests to v2.
    let passed = decisions(&status, "pass");
    for (step, weight) in [(1, 10), (2, 50), (3, 100)] {
        let d = passed
            .iter()
            .find(|d| d["step"].as_u64() == Some(step))
            .unwrap_or_else(|| panic!("no pass decision at step {step}: {status:#}"));
        assert_eq!(d["weight"].as_u64(), Some(weight), "{d:#}");
        let requests = d["figures"]["v2"]["requests"].as_u64().unwrap_or(0);
        assert!(
            requests >= 20,
            "step {step} passed on {requests} requests: {d:#}"
        );
        assert_eq!(d["figures"]["v2"]["errors"].as_u64(), Some(0), "{d:#}");
    }
    assert!(decisions(&status, "fail").is_empty(), "{status:#}");
    assert_judged_on_both(&fleet, &status, "pass");

    // Both proxies carried canary traffic, and nothing failed on the way.
    for (node, n) in fleet.upstream_requests("v2").await {
        assert!(n > 0, "{node} sent nothing to v2");
    }
    let failed: u64 = tally.sent - tally.count("v1") - tally.count("v2");
    assert_eq!(failed, 0, "answers other than v1 and v2: {tally:?}");
    fleet
        .wait_all_served_by("v2", 10, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_v2_is_rolled_back_on_a_mixed_fleet() {
    let fleet = Fleet::start(&[LEGATE], &[ENVOY]).await;
    // Half of v2's answers fail: each proxy sends v2 only a dozen requests or so before the
    // rollback, and at 20 % one of them saw no failure in about one run out of 14 (0.8^12);
    // at 50 % that is one in 4,000.
    fleet.v2_fails(0.5).await;
    let traffic = Traffic::start(fleet.urls(), TRAFFIC);
    start_rollout(&fleet).await;
    fleet.wait_state(&["rolled_back"], ROLLOUT_TIMEOUT).await;
    // The rollback is ACKed by every node before rollback_ms is set.
    let status = legate_tests::eventually(Duration::from_secs(10), "rollback_ms set", || async {
        let s = fleet.rollout().await?;
        if s["rollback_ms"].is_u64() {
            Ok(s)
        } else {
            Err(format!("{s}"))
        }
    })
    .await;
    let tally = traffic.stop().await;

    let w = weights(&status);
    assert_eq!(
        (w.get("v1"), w.get("v2")),
        (Some(&100), Some(&0)),
        "{status:#}"
    );
    let failed = decisions(&status, "fail");
    let d = failed
        .first()
        .unwrap_or_else(|| panic!("no fail decision: {status:#}"));
    let v2 = &d["figures"]["v2"];
    assert!(v2["errors"].as_u64().unwrap_or(0) > 0, "{d:#}");
    assert!(
        v2["error_percent"].as_f64().unwrap_or(0.0) > 5.0,
        "failed below the threshold: {d:#}"
    );
    assert!(decisions(&status, "pass").is_empty(), "{status:#}");
    assert_judged_on_both(&fleet, &status, "fail");
    let rollback_ms = status["rollback_ms"].as_u64().unwrap_or(u64::MAX);
    eprintln!("rollback: {rollback_ms} ms from the failing report to every node's ACK");
    assert!(
        rollback_ms < 5_000,
        "rollback took {rollback_ms} ms (target: under 5 s): {status:#}"
    );

    // Both proxies sent v2 requests that failed: the failure was seen through both.
    for url in fleet.urls() {
        let seen = tally.per_url.get(&url).cloned().unwrap_or_default();
        assert!(
            seen.get("status 503").copied().unwrap_or(0) > 0,
            "no failed v2 answer through {url}: {seen:?}"
        );
    }
    fleet
        .wait_all_served_by("v1", 10, Duration::from_secs(5))
        .await;
}
