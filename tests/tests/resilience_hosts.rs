//! Host-level resilience, end to end: circuit-breaker limits, the classic breaker, outlier
//! detection, active health checks, EDS health and the panic threshold, and the whole
//! "hired ambassador" scenario. Set with Envoy's own cluster fields on resources pushed over
//! ADS to the real `legate` binary, against real demo upstreams whose faults are switched
//! at run time (`POST /control`).
//!
//! Timings are short (outlier interval 300 ms, base ejection 1 s, health checks every
//! 200 ms) and every wait is bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use legate_tests::client::HttpClient;
use legate_tests::resilience::{
    ClassicBreaker, Load, Rig, SVC, cluster_mut, concurrent_gets, control, http_health_check,
    load_assignment_mut, ms, outcome, outlier, retry_other_hosts, route_action,
    set_endpoint_health, set_panic_threshold, set_thresholds, svc_mesh, tcp_health_check,
    thresholds, u32v,
};
use legate_tests::{Protocol, Upstream, closed_port, eventually};
use serde_json::json;

async fn upstream(name: &str) -> Upstream {
    Upstream::start(name, "v1", Protocol::Http1).await
}

fn err(code: &str) -> Option<String> {
    Some(code.to_owned())
}

/// `n` sequential `GET url`: how many each upstream answered (any status; `x-upstream`,
/// or the `x-legate-error` code for local replies).
async fn tally(url: &str, n: usize) -> BTreeMap<String, usize> {
    let client = HttpClient::http1().with_timeout(Duration::from_secs(5));
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = client.get(url).await;
        let who = match (r.upstream(), r.legate_error()) {
            (Some(name), _) => name.to_owned(),
            (None, Some(code)) => format!("legate:{code}"),
            (None, None) => "?".to_owned(),
        };
        *out.entry(who).or_default() += 1;
    }
    out
}

/// Sends batches of `batch` requests every 100 ms until `done(tally)` holds, for at most
/// `timeout`; returns when it held (time since `since`) and the last tally.
async fn until_traffic(
    url: &str,
    batch: usize,
    timeout: Duration,
    since: Instant,
    what: &str,
    done: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> Duration {
    let deadline = Instant::now() + timeout;
    loop {
        let t = tally(url, batch).await;
        if done(&t) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {timeout:?}; last batch: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn gauge_remaining(resource: &'static str) -> [(&'static str, &'static str); 2] {
    [("cluster", SVC), ("resource", resource)]
}

// ---------------------------------------------------------------------------------------------
// Circuit-breaker limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflow_answers_503() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut t = thresholds();
    t.max_requests = u32v(1);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;
    assert_eq!(
        rig.metric(
            "legate_circuit_breaker_remaining",
            &gauge_remaining("requests")
        )
        .await,
        1.0,
        "an idle cluster has its whole max_requests left"
    );

    let slow_url = rig.url("/?delay=800ms");
    let slow = tokio::spawn(async move { HttpClient::http1().get(&slow_url).await });
    let remaining = eventually(Duration::from_secs(3), "one request in flight", || async {
        let v = rig
            .metric(
                "legate_circuit_breaker_remaining",
                &gauge_remaining("requests"),
            )
            .await;
        if v == 0.0 {
            Ok(v)
        } else {
            Err(format!("remaining requests = {v}"))
        }
    })
    .await;
    assert_eq!(remaining, 0.0);

    let (r, _) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (503, err("overflow-max-requests")),
        "{}",
        r.describe()
    );
    let first = slow.await.expect("the slow request task");
    assert_eq!(outcome(&first), (200, None));
    assert_eq!(
        a.requests().await,
        1,
        "the overflow never reached the upstream"
    );
    eventually(Duration::from_secs(3), "the slot is given back", || async {
        let v = rig
            .metric(
                "legate_circuit_breaker_remaining",
                &gauge_remaining("requests"),
            )
            .await;
        if v == 1.0 {
            Ok(())
        } else {
            Err(format!("remaining requests = {v}"))
        }
    })
    .await;
    assert_eq!(
        rig.metric(
            "legate_local_replies_total",
            &[("reason", "overflow-max-requests")]
        )
        .await,
        1.0
    );
}

/// One connection allowed and one request may wait for it: a third request overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_requests_overflow_when_the_connection_is_busy() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut t = thresholds();
    t.max_connections = u32v(1);
    t.max_pending_requests = u32v(1);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    // The first request holds the one connection for 800 ms.
    let slow_url = rig.url("/?delay=800ms");
    let first = tokio::spawn(async move { HttpClient::http1().get(&slow_url).await });
    eventually(
        Duration::from_secs(3),
        "the first request reached a",
        || async {
            match a.requests().await {
                1 => Ok(()),
                n => Err(format!("a saw {n}")),
            }
        },
    )
    .await;
    // The second waits for it, in the one pending slot.
    let queued_url = rig.url("/");
    let second = tokio::spawn(async move { HttpClient::http1().get(&queued_url).await });
    eventually(
        Duration::from_secs(3),
        "the second request is pending",
        || async {
            let v = rig
                .metric(
                    "legate_circuit_breaker_remaining",
                    &gauge_remaining("pending_requests"),
                )
                .await;
            if v == 0.0 {
                Ok(())
            } else {
                Err(format!("remaining pending_requests = {v}"))
            }
        },
    )
    .await;
    // The third finds no slot.
    let (r, took) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (503, err("overflow-max-pending-requests")),
        "{}",
        r.describe()
    );
    assert!(
        took < Duration::from_millis(500),
        "an overflow does not wait: {took:?}"
    );

    assert_eq!(outcome(&first.await.expect("first task")), (200, None));
    assert_eq!(outcome(&second.await.expect("second task")), (200, None));
    let counters = a.counters().await;
    assert_eq!(counters.requests, 2, "the overflow never reached a");
    assert_eq!(
        counters.connections, 1,
        "the queued request reused the one connection"
    );
    assert_eq!(
        rig.metric(
            "legate_local_replies_total",
            &[("reason", "overflow-max-pending-requests")]
        )
        .await,
        1.0
    );
}

/// As in Envoy, a request waiting for a connection to be dialled is pending too: with
/// `max_pending_requests: 0` a cold pool can open no connection and every request
/// overflows without reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_requests_zero_overflows_on_a_cold_pool() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut t = thresholds();
    t.max_connections = u32v(1);
    t.max_pending_requests = u32v(0);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    for _ in 0..3 {
        let (r, _) = rig.get("/").await;
        assert_eq!(
            outcome(&r),
            (503, err("overflow-max-pending-requests")),
            "{}",
            r.describe()
        );
    }
    assert_eq!(a.counters().await.connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_one_queues_requests_on_one_connection() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut t = thresholds();
    t.max_connections = u32v(1);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    let start = Instant::now();
    let results = concurrent_gets(&rig.url("/?delay=300ms"), 3).await;
    let took = start.elapsed();
    for (i, r) in results.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|error| panic!("request {i}: {error:#}"));
        assert_eq!(outcome(r), (200, None), "request {i}: {}", r.describe());
    }
    let counters = a.counters().await;
    assert_eq!(counters.requests, 3);
    assert_eq!(
        counters.connections, 1,
        "all three shared the one allowed connection"
    );
    assert!(
        took >= Duration::from_millis(850),
        "three 300 ms requests on one HTTP/1.1 connection take ~900 ms: {took:?}"
    );
    assert_eq!(
        rig.metric(
            "legate_circuit_breaker_remaining",
            &gauge_remaining("connections")
        )
        .await,
        0.0,
        "the one connection stays open in the pool"
    );
}

// ---------------------------------------------------------------------------------------------
// The classic breaker (cluster metadata `legate.circuit_breaker`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_breaker_opens_probes_and_closes() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    cluster_mut(&mut res, SVC).metadata = Some(
        ClassicBreaker {
            failure_ratio: 0.5,
            window: "10s",
            minimum_requests: 5,
            open_timeout: "1s",
            half_open_max_requests: 1,
        }
        .metadata(),
    );
    let rig = Rig::start(&res).await;

    // Closed: five failures go through to the upstream.
    for i in 0..5 {
        let (r, _) = rig.get("/?status=503").await;
        assert_eq!(
            outcome(&r),
            (503, None),
            "failure {i} is the upstream's: {}",
            r.describe()
        );
    }
    let opened = Instant::now();
    assert_eq!(a.requests().await, 5);

    // Open: refused locally, good requests included.
    for _ in 0..3 {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (503, err("circuit-open")), "{}", r.describe());
    }
    assert_eq!(
        a.requests().await,
        5,
        "an open breaker does not reach the upstream"
    );

    // Half-open after open_timeout: one probe at a time.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(opened.elapsed())).await;
    let probe_url = rig.url("/?delay=500ms");
    let probe = tokio::spawn(async move { HttpClient::http1().get(&probe_url).await });
    eventually(Duration::from_secs(3), "the probe reached a", || async {
        match a.requests().await {
            6 => Ok(()),
            n => Err(format!("a saw {n}")),
        }
    })
    .await;
    let (r, _) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (503, err("circuit-open")),
        "half_open_max_requests is 1: a second request waits for the probe's verdict"
    );
    assert_eq!(outcome(&probe.await.expect("probe task")), (200, None));

    // Closed again.
    for _ in 0..5 {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (200, None), "{}", r.describe());
    }
    assert_eq!(a.requests().await, 11);
    assert!(
        rig.metric("legate_local_replies_total", &[("reason", "circuit-open")])
            .await
            >= 4.0
    );
}

// ---------------------------------------------------------------------------------------------
// Outlier detection

fn ejections(labels_reason: &'static str) -> [(&'static str, &'static str); 2] {
    [("cluster", SVC), ("reason", labels_reason)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_ejects_the_host_until_its_time_is_up() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    control(&a, json!({"fail_ratio": 1.0, "fail_status": 503})).await;
    let mut res = svc_mesh(&[a.addr(), b.addr()]);
    let mut od = outlier();
    od.consecutive_5xx = u32v(3);
    od.enforcing_consecutive_5xx = u32v(100);
    // A 1 s interval: the multiplier drops at each interval a host spends in service, so
    // the three failures that eject it again must come within one (a loaded machine once
    // took longer than 300 ms for them, and the second ejection lasted 1 s).
    od.interval = Some(ms(1000));
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;
    let url = rig.url("/");
    let client = HttpClient::http1();

    // Round robin until a failed three times in a row.
    let mut failures = 0;
    for _ in 0..20 {
        let r = client.get(&url).await;
        if r.upstream() == Some("a") {
            assert_eq!(r.status, 503);
            failures += 1;
            if failures == 3 {
                break;
            }
        } else {
            assert_eq!(outcome(&r), (200, None));
        }
    }
    assert_eq!(failures, 3, "a got three tries in 20 requests");
    let ejected_at = Instant::now();
    assert_eq!(
        rig.metric("legate_outlier_ejected_hosts", &[("cluster", SVC)])
            .await,
        1.0
    );
    assert_eq!(
        rig.metric(
            "legate_outlier_ejections_total",
            &ejections("consecutive_5xx")
        )
        .await,
        1.0
    );

    // Ejected: everything goes to b.
    let t = tally(&url, 10).await;
    assert_eq!(t, BTreeMap::from([("b".to_owned(), 10)]));

    // Back after base_ejection_time (1 s), checked on the next 1 s interval.
    let back = until_traffic(&url, 2, Duration::from_secs(5), ejected_at, "a back", |t| {
        t.contains_key("a")
    })
    .await;
    eprintln!("a came back {back:?} after its ejection");
    assert!(
        back >= Duration::from_millis(900) && back <= Duration::from_millis(3000),
        "a came back {back:?} after a 1 s ejection"
    );
    assert_eq!(
        rig.metric("legate_outlier_ejected_hosts", &[("cluster", SVC)])
            .await,
        0.0
    );

    // Still failing: three more failures eject it again, for twice the base time.
    let mut failures = 1; // the answer that showed it back
    for _ in 0..20 {
        if failures == 3 {
            break;
        }
        let r = client.get(&url).await;
        if r.upstream() == Some("a") {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "a got three more tries in 20 requests");
    let ejected_again = Instant::now();
    assert_eq!(
        rig.metric(
            "legate_outlier_ejections_total",
            &ejections("consecutive_5xx")
        )
        .await,
        2.0
    );
    let back = until_traffic(
        &url,
        2,
        Duration::from_secs(8),
        ejected_again,
        "a back again",
        |t| t.contains_key("a"),
    )
    .await;
    eprintln!("a came back {back:?} after its second ejection");
    assert!(
        back >= Duration::from_millis(1900) && back <= Duration::from_millis(4500),
        "the second ejection lasts 2 × base_ejection_time: back after {back:?}"
    );
}

/// `max_ejection_percent` of 10% of three hosts rounds down to none, but one host may
/// always be ejected: of two failing hosts exactly one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_still_ejects_one_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    for failing in [&a, &b] {
        control(failing, json!({"fail_ratio": 1.0, "fail_status": 503})).await;
    }
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    let mut od = outlier();
    od.consecutive_5xx = u32v(3);
    od.enforcing_consecutive_5xx = u32v(100);
    od.max_ejection_percent = u32v(10);
    od.base_ejection_time = Some(ms(10_000));
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    let t = tally(&url, 30).await;
    assert!(
        t.get("a").copied().unwrap_or(0) >= 3 && t.get("b").copied().unwrap_or(0) >= 3,
        "both failing hosts reached the threshold: {t:?}"
    );
    assert_eq!(ejected_hosts(&rig).await, 1.0);
    let t = tally(&url, 20).await;
    assert_eq!(t.len(), 2, "c and one failing host still serve: {t:?}");
    assert!(t.contains_key("c"));
}

/// `consecutive_gateway_failure` counts 502, 503 and 504 only: a host answering 500 is
/// left alone by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_gateway_failure_ejects_only_gateway_errors() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    control(&a, json!({"fail_ratio": 1.0, "fail_status": 502})).await;
    control(&b, json!({"fail_ratio": 1.0, "fail_status": 500})).await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    let mut od = outlier();
    od.consecutive_gateway_failure = u32v(3);
    od.enforcing_consecutive_gateway_failure = u32v(100);
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    tally(&url, 12).await;
    assert_eq!(ejected_hosts(&rig).await, 1.0);
    let t = tally(&url, 20).await;
    assert_eq!(
        t,
        BTreeMap::from([("b".to_owned(), 10), ("c".to_owned(), 10)]),
        "a (502) is out, b (500) is not"
    );
    assert_eq!(
        rig.metric(
            "legate_outlier_ejections_total",
            &ejections("consecutive_gateway_failure")
        )
        .await,
        1.0
    );
}

/// With `split_external_local_origin_errors`, connect failures count as local-origin
/// failures and eject the host that refuses connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_local_origin_failure_ejects_a_refusing_host() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr(), closed_port()]);
    let mut od = outlier();
    od.split_external_local_origin_errors = true;
    od.consecutive_local_origin_failure = u32v(2);
    od.enforcing_consecutive_local_origin_failure = u32v(100);
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    let t = tally(&url, 6).await;
    assert_eq!(
        t.get("legate:connect-failure"),
        Some(&2),
        "two connect failures, then the closed port is out: {t:?}"
    );
    let t = tally(&url, 10).await;
    assert_eq!(t, BTreeMap::from([("a".to_owned(), 10)]));
    assert_eq!(
        rig.metric(
            "legate_outlier_ejections_total",
            &ejections("consecutive_local_origin_failure")
        )
        .await,
        1.0
    );
}

async fn ejected_hosts(rig: &Rig) -> f64 {
    rig.metric("legate_outlier_ejected_hosts", &[("cluster", SVC)])
        .await
}

/// Sequential traffic until `legate_outlier_ejected_hosts` is 1; returns how many requests
/// it took.
async fn traffic_until_ejected(rig: &Rig, max: Duration) -> usize {
    let url = rig.url("/");
    let client = HttpClient::http1();
    let deadline = Instant::now() + max;
    let mut sent = 0;
    loop {
        for _ in 0..20 {
            let _ = client.get(&url).await;
            sent += 1;
        }
        let ejected = rig
            .metric("legate_outlier_ejected_hosts", &[("cluster", SVC)])
            .await;
        if ejected >= 1.0 {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "no host ejected after {sent} requests in {max:?}\n{}",
            rig.metrics().await.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_percentage_ejects_the_failing_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    // Every other request fails: never two failures in a row, so only the percentage counts.
    control(&a, json!({"fail_ratio": 0.5, "fail_status": 503})).await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    let mut od = outlier();
    od.failure_percentage_threshold = u32v(40);
    od.failure_percentage_request_volume = u32v(5);
    od.failure_percentage_minimum_hosts = u32v(3);
    od.enforcing_failure_percentage = u32v(100);
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;

    let sent = traffic_until_ejected(&rig, Duration::from_secs(5)).await;
    eprintln!("ejected after {sent} requests");
    let t = tally(&rig.url("/"), 20).await;
    assert!(!t.contains_key("a"), "a is ejected: {t:?}");
    assert_eq!(t.values().sum::<usize>(), 20);
    assert_eq!(
        rig.metric(
            "legate_outlier_ejections_total",
            &ejections("failure_percentage")
        )
        .await,
        1.0
    );
    assert_eq!(
        rig.metrics()
            .await
            .get_or_zero("legate_outlier_ejections_total", &[("cluster", SVC)]),
        1.0,
        "no other detector ejected anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_the_outlier() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    control(&a, json!({"fail_ratio": 1.0, "fail_status": 503})).await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    let mut od = outlier();
    od.success_rate_minimum_hosts = u32v(3);
    od.success_rate_request_volume = u32v(5);
    // With three hosts (1, 1, 0) the mean is 0.67 and the deviation 0.47: Envoy's default
    // factor of 1.9 would put the threshold below zero, so use 1.0.
    od.success_rate_stdev_factor = u32v(1000);
    od.enforcing_success_rate = u32v(100);
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;

    let sent = traffic_until_ejected(&rig, Duration::from_secs(5)).await;
    eprintln!("ejected after {sent} requests");
    let t = tally(&rig.url("/"), 20).await;
    assert!(!t.contains_key("a"), "a is ejected: {t:?}");
    assert_eq!(
        rig.metric("legate_outlier_ejections_total", &ejections("success_rate"))
            .await,
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Active health checks, EDS health, panic threshold

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_takes_a_host_out_and_back() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    cluster_mut(&mut res, SVC).health_checks = vec![http_health_check("/health", 200, 2, 2)];
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    // All three pass their first check.
    eventually(Duration::from_secs(5), "every host checked", || async {
        let passed = rig
            .metric(
                "legate_health_checks_total",
                &[("cluster", SVC), ("result", "success")],
            )
            .await;
        if passed >= 3.0 {
            Ok(())
        } else {
            Err(format!("{passed} passing checks"))
        }
    })
    .await;
    let t = tally(&url, 9).await;
    assert_eq!(t.len(), 3, "all three serve: {t:?}");

    // A status outside expected_statuses fails the host at once, as in Envoy: the host
    // said so itself (unhealthy_threshold counts network failures).
    control(&a, json!({"health_status": 503})).await;
    let failing = Instant::now();
    let out = until_traffic(
        &url,
        9,
        Duration::from_secs(5),
        failing,
        "a taken out",
        |t| !t.contains_key("a"),
    )
    .await;
    eprintln!("a out {out:?} after its health endpoint started failing");
    assert!(
        out <= Duration::from_millis(700),
        "one failed check (every 200 ms) takes a out: {out:?}"
    );
    let t = tally(&url, 20).await;
    assert!(!t.contains_key("a"), "a stays out: {t:?}");

    control(&a, json!({"health_status": 200})).await;
    let passing = Instant::now();
    let back = until_traffic(&url, 9, Duration::from_secs(5), passing, "a back", |t| {
        t.contains_key("a")
    })
    .await;
    eprintln!("a back {back:?} after its health endpoint recovered");
    assert!(
        back >= Duration::from_millis(200),
        "two passing checks in {back:?}?"
    );

    let metrics = rig.metrics().await;
    let checks: Vec<_> = metrics
        .matching("legate_health_checks_total", &[("cluster", SVC)])
        .map(|s| (s.labels.get("result").cloned().unwrap_or_default(), s.value))
        .collect();
    eprintln!("health checks: {checks:?}");
    for result in ["success", "failure"] {
        assert!(
            metrics.get_or_zero(
                "legate_health_checks_total",
                &[("cluster", SVC), ("result", result)]
            ) > 0.0,
            "{result} checks are counted: {checks:?}"
        );
    }
}

/// Network failures (here: refused connections) take `unhealthy_threshold` checks in a
/// row before the host is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_needs_unhealthy_threshold_network_failures() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    cluster_mut(&mut res, SVC).health_checks = vec![http_health_check("/health", 200, 3, 1)];
    let rig = Rig::start(&res).await;
    let url = rig.url("/");
    until_traffic(
        &url,
        6,
        Duration::from_secs(5),
        Instant::now(),
        "all serve",
        |t| t.len() == 3,
    )
    .await;

    control(&a, json!({"refuse_for": "3s"})).await;
    let refusing = Instant::now();
    let out = until_traffic(&url, 6, Duration::from_secs(3), refusing, "a out", |t| {
        !t.contains_key("a") && !t.keys().any(|k| k.starts_with("legate:"))
    })
    .await;
    eprintln!("a out {out:?} after it stopped listening");
    assert!(
        out >= Duration::from_millis(400),
        "three failed checks 200 ms apart take at least 400 ms: {out:?}"
    );
    let t = tally(&url, 20).await;
    assert!(!t.contains_key("a"), "{t:?}");
}

/// A host added by EDS to a health-checked cluster takes traffic after one passing check,
/// not `healthy_threshold` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_host_is_healthy_after_one_passing_check() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let d = upstream("d").await;
    control(&d, json!({"health_status": 503})).await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr(), d.addr()]);
    cluster_mut(&mut res, SVC).health_checks = vec![http_health_check("/health", 500, 2, 3)];
    let full = res.clone();
    for locality in &mut load_assignment_mut(&mut res, SVC).endpoints {
        locality.lb_endpoints.truncate(2);
    }
    let rig = Rig::start(&res).await;
    let url = rig.url("/");
    until_traffic(
        &url,
        6,
        Duration::from_secs(5),
        Instant::now(),
        "a and b serve",
        |t| t.len() == 2 && t.contains_key("a") && t.contains_key("b"),
    )
    .await;

    rig.apply(&full).await;
    let added = Instant::now();
    let took = until_traffic(&url, 6, Duration::from_secs(5), added, "c serves", |t| {
        t.contains_key("c")
    })
    .await;
    eprintln!("the new host served {took:?} after it was added");
    assert!(
        took < Duration::from_millis(900),
        "three checks 500 ms apart take at least 1 s; one passing check is enough: {took:?}"
    );
    // d, added at the same time, failed its first check: it never took traffic.
    let t = tally(&url, 30).await;
    assert!(!t.contains_key("d"), "{t:?}");
    assert_eq!(
        d.requests().await,
        0,
        "a new host is out until its first check passes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_keeps_traffic_off_a_refusing_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), closed_port()]);
    cluster_mut(&mut res, SVC).health_checks = vec![tcp_health_check(200, 1, 1)];
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    until_traffic(
        &url,
        6,
        Duration::from_secs(5),
        Instant::now(),
        "checks ran",
        |t| t.keys().all(|k| k == "a" || k == "b"),
    )
    .await;
    let t = tally(&url, 30).await;
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        ["a", "b"],
        "no request went to the refusing host: {t:?}"
    );
}

/// A host that starts refusing connections is taken out by the TCP check and comes back
/// when it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_follows_a_host_that_stops_and_starts_listening() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    cluster_mut(&mut res, SVC).health_checks = vec![tcp_health_check(200, 1, 1)];
    let rig = Rig::start(&res).await;
    let url = rig.url("/");
    until_traffic(
        &url,
        6,
        Duration::from_secs(5),
        Instant::now(),
        "all serve",
        |t| t.len() == 3 && !t.keys().any(|k| k.starts_with("legate:")),
    )
    .await;

    control(&a, json!({"refuse_for": "2s"})).await;
    let refusing = Instant::now();
    let out = until_traffic(&url, 6, Duration::from_secs(3), refusing, "a out", |t| {
        !t.contains_key("a") && !t.keys().any(|k| k.starts_with("legate:"))
    })
    .await;
    eprintln!("a out {out:?} after it stopped listening");
    let t = tally(&url, 20).await;
    assert_eq!(
        t,
        BTreeMap::from([("b".to_owned(), 10), ("c".to_owned(), 10)])
    );
    let back = until_traffic(&url, 6, Duration::from_secs(5), refusing, "a back", |t| {
        t.contains_key("a")
    })
    .await;
    eprintln!("a back {back:?} after it stopped listening for 2 s");
    assert!(
        back >= Duration::from_millis(1900) && back <= Duration::from_millis(3500),
        "a listens again after 2 s and passes its next check: {back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_unhealthy_endpoint_gets_no_traffic() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    set_endpoint_health(&mut res, SVC, 0, HealthStatus::Unhealthy);
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    let t = tally(&url, 30).await;
    assert_eq!(
        t,
        BTreeMap::from([("b".to_owned(), 15), ("c".to_owned(), 15)]),
        "a is UNHEALTHY in EDS"
    );
    assert_eq!(a.requests().await, 0);

    set_endpoint_health(&mut res, SVC, 0, HealthStatus::Healthy);
    rig.apply(&res).await;
    until_traffic(
        &url,
        6,
        Duration::from_secs(5),
        Instant::now(),
        "a healthy",
        |t| t.contains_key("a"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_threshold_spreads_traffic_over_every_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    set_endpoint_health(&mut res, SVC, 0, HealthStatus::Unhealthy);
    set_endpoint_health(&mut res, SVC, 1, HealthStatus::Unhealthy);
    let rig = Rig::start(&res).await;
    let url = rig.url("/");

    // One healthy host of three (33%) is under the default 50% panic threshold.
    let t = tally(&url, 30).await;
    assert_eq!(
        t,
        BTreeMap::from([
            ("a".to_owned(), 10),
            ("b".to_owned(), 10),
            ("c".to_owned(), 10)
        ]),
        "in panic, every host takes traffic"
    );

    // A panic threshold of 0 disables panic: only the healthy host serves.
    set_panic_threshold(&mut res, SVC, 0.0);
    rig.apply(&res).await;
    let t = tally(&url, 12).await;
    assert_eq!(t, BTreeMap::from([("c".to_owned(), 12)]));
}

// ---------------------------------------------------------------------------------------------
// The whole scenario

/// Three replicas; mid-run one starts failing every other request. With retries on other
/// hosts and failure-percentage ejection, callers see (almost) nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hired_ambassador_keeps_callers_whole_when_a_replica_degrades() {
    const TOTAL: usize = 3000;
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    route_action(&mut res).retry_policy = Some(retry_other_hosts("5xx", 2));
    let mut od = outlier();
    od.failure_percentage_threshold = u32v(25);
    od.failure_percentage_request_volume = u32v(10);
    od.failure_percentage_minimum_hosts = u32v(3);
    od.enforcing_failure_percentage = u32v(100);
    od.max_ejection_time = Some(ms(10_000));
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    // Envoy's default of 3 retries in flight is too tight for 8 callers while one replica
    // in three fails half its requests (bursts of 4+ failures at once are common until the
    // ejection): allow as many retries in flight as there are callers, twice over.
    let mut t = thresholds();
    t.max_retries = u32v(16);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    let load = Load::spawn(&rig.url("/"), TOTAL, 8, Duration::from_secs(60));
    load.wait_completed(TOTAL / 6, Duration::from_secs(30))
        .await;
    control(&a, json!({"fail_ratio": 0.5, "fail_status": 503})).await;
    let degraded_at = load.completed();
    let report = load.finish().await;

    let metrics = rig.metrics().await;
    let retries = metrics.get_or_zero("legate_upstream_retries_total", &[("cluster", SVC)]);
    let overflow = metrics.get_or_zero("legate_upstream_retry_overflow_total", &[("cluster", SVC)]);
    let ejections = metrics.get_or_zero("legate_outlier_ejections_total", &[("cluster", SVC)]);
    eprintln!(
        "hired ambassador: {} requests in {:?}, {} ok ({:.3}%), a degraded after {degraded_at}; \
         by status {:?}; failures {:?}; answered by {:?}; retries {retries}, retry overflows \
         {overflow}, ejections {ejections}; a saw {}, b {}, c {}",
        report.sent,
        report.elapsed,
        report.ok,
        report.success_ratio() * 100.0,
        report.by_status,
        report.failures,
        report.by_upstream,
        a.requests().await,
        b.requests().await,
        c.requests().await,
    );
    assert_eq!(report.sent, TOTAL, "the run finished within its time bound");
    assert!(
        report.success_ratio() >= 0.999,
        "success {:.3}% < 99.9%; samples: {:#?}",
        report.success_ratio() * 100.0,
        report.samples
    );
    assert!(
        ejections >= 1.0,
        "the degraded replica was ejected at least once"
    );
    assert!(
        retries >= 1.0,
        "retries absorbed the failures before the ejection"
    );
}

/// Retries on other hosts under concurrency: with one of three hosts always failing, two
/// retries on other hosts and room for every retry, no caller sees a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_always_avoid_the_failing_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    control(&a, json!({"fail_ratio": 1.0, "fail_status": 503})).await;
    let mut res = svc_mesh(&[a.addr(), b.addr(), c.addr()]);
    route_action(&mut res).retry_policy = Some(retry_other_hosts("5xx", 2));
    let mut t = thresholds();
    t.max_retries = u32v(1000);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    let report = Load::spawn(&rig.url("/"), 900, 8, Duration::from_secs(30))
        .finish()
        .await;
    let retries = rig.retries().await;
    eprintln!(
        "{} requests, {} ok; failures {:?}; answered by {:?}; retries {retries}; a saw {}",
        report.sent,
        report.ok,
        report.failures,
        report.by_upstream,
        a.requests().await
    );
    assert_eq!(report.ok, 900, "samples: {:#?}", report.samples);
    assert_eq!(retries, a.requests().await, "one retry per try on a");
}
