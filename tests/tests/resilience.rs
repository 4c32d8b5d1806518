//! Request-path resilience, end to end: timeouts, retries, request safety and hedging, set
//! with Envoy's own fields (`RouteAction.timeout`, `retry_policy`, `hedge_policy`, the HCM's
//! `stream_idle_timeout`, the cluster's `connect_timeout` and circuit breakers) on resources
//! pushed over ADS to the real `legate` binary, against real demo upstreams.
//!
//! Every test asserts the exact outcome: status, `x-legate-error`, how many requests each
//! upstream saw (its own `/counters`, or its charge ledger), and who answered. Host
//! selection is round robin, so when a test needs "the first try went to the bad host" it
//! sends requests until that happened (bounded) and checks the counts relate exactly.
//!
//! Host-level resilience (circuit breakers, outlier detection, health checks, panic
//! threshold, the whole scenario) is in `resilience_hosts.rs`.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CoreHttpProtocolOptions;
use envoy_types::pb::envoy::config::route::v3::HedgePolicy;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader, ResetHeaderFormat,
};
use envoy_types::pb::google::protobuf::UInt64Value;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use legate_tests::client::{HttpClient, full, generated};
use legate_tests::config::cluster;
use legate_tests::resilience::{
    Rig, SVC, StallingUpstream, Unaccepting, charges, cluster_mut, concurrent_gets, control,
    edit_hcm, get_partial, ms, outcome, retry, retry_non_idempotent, retry_other_hosts, route,
    route_action, set_thresholds, svc_mesh, svc_mesh_with, thresholds, timed, u32v,
};
use legate_tests::{Protocol, Upstream, closed_port};
use serde_json::json;

async fn upstream(name: &str) -> Upstream {
    Upstream::start(name, "v1", Protocol::Http1).await
}

/// An upstream that waits `delay` (e.g. `2s`) before every answer.
async fn slow_upstream(name: &str, delay: &str) -> Upstream {
    Upstream::start_with_args(name, "v1", Protocol::Http1, &["--delay", delay]).await
}

fn err(code: &str) -> Option<String> {
    Some(code.to_owned())
}

#[track_caller]
fn assert_between(took: Duration, min_ms: u64, max_ms: u64, what: &str) {
    assert!(
        took >= Duration::from_millis(min_ms) && took <= Duration::from_millis(max_ms),
        "{what}: took {took:?}, expected between {min_ms} ms and {max_ms} ms"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_upstream_timeout() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).timeout = Some(ms(500));
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/?delay=3s").await;
    assert_eq!(
        outcome(&r),
        (504, err("upstream-timeout")),
        "{}",
        r.describe()
    );
    assert_between(took, 450, 2000, "route timeout of 500 ms");
    assert_eq!(a.requests().await, 1);
    assert_eq!(
        rig.metric(
            "legate_local_replies_total",
            &[("reason", "upstream-timeout")]
        )
        .await,
        1.0
    );

    // A fast answer under the same route is untouched.
    let (r, _) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_on_a_fast_host() {
    let slow = slow_upstream("slow", "2s").await;
    let fast = upstream("fast").await;
    let mut res = svc_mesh(&[slow.addr(), fast.addr()]);
    let mut policy = retry_other_hosts("5xx", 1);
    policy.per_try_timeout = Some(ms(200));
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    // Round robin: send until the slow host got a first try (bounded).
    let mut sent = 0;
    while sent < 8 && slow.requests().await < 2 {
        let (r, took) = rig.get("/").await;
        sent += 1;
        assert_eq!(outcome(&r), (200, None), "{}", r.describe());
        assert_eq!(r.upstream(), Some("fast"), "{}", r.describe());
        assert!(
            took < Duration::from_millis(1200),
            "request {sent} took {took:?}"
        );
    }
    let slow_seen = slow.requests().await;
    assert!(
        slow_seen >= 1,
        "the slow host never got a try in {sent} requests"
    );
    assert_eq!(
        fast.requests().await,
        sent,
        "the fast host answered every request exactly once"
    );
    assert_eq!(
        rig.retries().await,
        slow_seen,
        "one retry per try that timed out on the slow host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_without_retries_answers_504() {
    let slow = slow_upstream("slow", "2s").await;
    let mut res = svc_mesh(&[slow.addr()]);
    let mut policy = retry("5xx", 0);
    policy.per_try_timeout = Some(ms(200));
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (504, err("per-try-timeout")),
        "{}",
        r.describe()
    );
    assert_between(took, 180, 1500, "per-try timeout of 200 ms");
    assert_eq!(slow.requests().await, 1);
    assert_eq!(rig.retries().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_idle_timeout_on_a_hanging_upstream() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut policy = retry("5xx", 0);
    policy.per_try_idle_timeout = Some(ms(300));
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/?hang=1").await;
    assert_eq!(
        outcome(&r),
        (504, err("per-try-idle-timeout")),
        "{}",
        r.describe()
    );
    assert_between(took, 280, 2000, "per-try idle timeout of 300 ms");
    assert_eq!(a.requests().await, 1);

    // An answer that comes within the idle timeout passes.
    let (r, _) = rig.get("/?delay=100ms").await;
    assert_eq!(outcome(&r), (200, None));
}

/// Once the response head went downstream, a timeout can only cut the stream: the client
/// sees a 200 whose body ends early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_idle_timeout_after_headers_truncates_the_body() {
    let stall = StallingUpstream::start(100_000, 1000).await;
    let mut res = svc_mesh(&[stall.addr]);
    let mut policy = retry("5xx", 2);
    policy.per_try_idle_timeout = Some(ms(300));
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    let ((status, received, error), took) =
        timed(get_partial(&rig.url("/"), Duration::from_secs(5))).await;
    assert_eq!(status, 200);
    assert_eq!(received, 1000, "the bytes sent before the stall, no more");
    assert!(
        error.is_some(),
        "the body must end in an error, not look complete (received {received} of 100000)"
    );
    assert_between(took, 250, 3000, "idle timeout of 300 ms after the head");
    assert_eq!(
        stall.requests(),
        1,
        "no retry once the response head went downstream"
    );
}

/// An upstream that resets after part of its body: the head already went downstream, so
/// there is no retry and the client sees the body cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_truncates_the_response() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx,reset", 2));
    let rig = Rig::start(&res).await;

    let (status, received, error) = get_partial(
        &rig.url("/?size=200000&reset_after=1000"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        (1000..200_000).contains(&received),
        "received {received} of 200000"
    );
    assert!(error.is_some(), "the body must end in an error");
    assert_eq!(
        a.requests().await,
        1,
        "no retry after the head went downstream"
    );
    assert_eq!(rig.retries().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_after_headers_truncates_the_body() {
    let stall = StallingUpstream::start(100_000, 1000).await;
    let mut res = svc_mesh(&[stall.addr]);
    route_action(&mut res).timeout = Some(ms(500));
    let rig = Rig::start(&res).await;

    let ((status, received, error), took) =
        timed(get_partial(&rig.url("/"), Duration::from_secs(5))).await;
    assert_eq!(status, 200);
    assert_eq!(received, 1000);
    assert!(error.is_some(), "the body must end in an error");
    assert_between(took, 450, 3000, "route timeout of 500 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_from_the_connection_manager() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    edit_hcm(&mut res, |hcm| hcm.stream_idle_timeout = Some(ms(300)));
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/?delay=3s").await;
    assert_eq!(
        outcome(&r),
        (504, err("stream-idle-timeout")),
        "{}",
        r.describe()
    );
    assert_between(took, 280, 2000, "stream idle timeout of 300 ms");
    let (r, _) = rig.get("/?delay=50ms").await;
    assert_eq!(outcome(&r), (200, None));
}

/// HCM `common_http_protocol_options.idle_timeout`: a keep-alive connection is closed once
/// no request has been open on it for that long; a response still on its way keeps it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_downstream_connection() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    edit_hcm(&mut res, |hcm| {
        hcm.common_http_protocol_options = Some(CoreHttpProtocolOptions {
            idle_timeout: Some(ms(400)),
            ..Default::default()
        });
    });
    let rig = Rig::start(&res).await;

    let stream = tokio::net::TcpStream::connect(rig.addr())
        .await
        .expect("connect to the listener");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        std::time::Instant::now()
    });
    let host = rig.addr().to_string();
    let mut get = async |path: &str| {
        let req = http::Request::get(path)
            .header(http::header::HOST, &host)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        sender
            .ready()
            .await
            .expect("connection ready for a request");
        let res = sender.send_request(req).await.expect("answer");
        let status = res.status().as_u16();
        res.into_body().collect().await.expect("body");
        status
    };

    // Longer than the idle timeout, but open all along: the connection stays.
    let (status, took) = timed(get("/?delay=1s")).await;
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(950), "took {took:?}");
    assert_eq!(
        get("/").await,
        200,
        "the connection outlived a slow request"
    );
    let quiet_from = std::time::Instant::now();

    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("legate closes the idle connection")
        .expect("connection task");
    assert_between(
        closed_at - quiet_from,
        380,
        1500,
        "idle timeout of 400 ms (checked every 100 ms)",
    );
    assert_eq!(a.requests().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_answers_504_stream_idle_timeout() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).idle_timeout = Some(ms(300));
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/?delay=3s").await;
    assert_eq!(
        outcome(&r),
        (504, err("stream-idle-timeout")),
        "{}",
        r.describe()
    );
    assert_between(took, 280, 2000, "route idle timeout of 300 ms");
}

// ---------------------------------------------------------------------------------------------
// Connection failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_answers_503_connect_failure() {
    let res = svc_mesh(&[closed_port()]);
    let rig = Rig::start(&res).await;
    let (r, took) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (503, err("connect-failure")),
        "{}",
        r.describe()
    );
    assert!(
        took < Duration::from_secs(2),
        "a refused connect fails fast: {took:?}"
    );
    assert_eq!(
        rig.metric(
            "legate_local_replies_total",
            &[("reason", "connect-failure")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_host() {
    let live = upstream("live").await;
    let mut res = svc_mesh(&[closed_port(), live.addr()]);
    route_action(&mut res).retry_policy = Some(retry_other_hosts("connect-failure", 2));
    let rig = Rig::start(&res).await;

    let names = HttpClient::http1()
        .upstream_sequence(&rig.url("/"), 6)
        .await;
    assert!(names.iter().all(|n| n == "live"), "{names:?}");
    assert_eq!(
        live.requests().await,
        6,
        "each request reached the live host once"
    );
    let retries = rig.retries().await;
    assert!(
        (1..=6).contains(&retries),
        "round robin must have tried the closed port at least once, and each request at \
         most once there: {retries} retries"
    );
}

/// A listener whose accept queue is full never answers the SYN, so the connect hangs until
/// the cluster's `connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_answers_504_connect_timeout() {
    let Some(blackhole) = Unaccepting::start().await else {
        eprintln!(
            "SKIPPED: this kernel completes connections beyond a full accept queue, so a \
             connect timeout cannot be provoked on 127.0.0.1"
        );
        return;
    };
    let mut res = svc_mesh(&[blackhole.addr]);
    cluster_mut(&mut res, SVC).connect_timeout = Some(ms(300));
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (504, err("connect-timeout")),
        "{}",
        r.describe()
    );
    assert_between(took, 280, 2000, "connect timeout of 300 ms");
}

// ---------------------------------------------------------------------------------------------
// Retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_xx_is_retried_on_another_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    control(&a, json!({"fail_ratio": 1.0, "fail_status": 503})).await;
    let a_before = a.requests().await;
    let b_before = b.requests().await;
    let mut res = svc_mesh(&[a.addr(), b.addr()]);
    route_action(&mut res).retry_policy = Some(retry_other_hosts("5xx", 1));
    let rig = Rig::start(&res).await;

    let names = HttpClient::http1()
        .upstream_sequence(&rig.url("/"), 10)
        .await;
    assert!(
        names.iter().all(|n| n == "b"),
        "every answer from b: {names:?}"
    );
    assert_eq!(b.requests().await - b_before, 10);
    let a_seen = a.requests().await - a_before;
    assert!(
        a_seen >= 1,
        "round robin gave a no first try in 10 requests"
    );
    assert_eq!(rig.retries().await, a_seen, "one retry per failed try on a");
}

/// `previous_hosts` under random balancing: without the predicate a retry would land on
/// the failing host again one time in three (60 requests would all pass with probability
/// (8/9)^60 < 0.1%); with it, never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_hosts_keeps_retries_off_the_failed_host() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    control(&a, json!({"fail_ratio": 1.0, "fail_status": 503})).await;
    let mut res = svc_mesh_with(cluster(SVC, &[a.addr(), b.addr(), c.addr()]).lb("random"));
    let mut policy = retry_other_hosts("5xx", 1);
    // The predicate re-selects at most this many times (then the last pick stands): with
    // random picks, 20 re-selections all landing on a happen with probability 3^-21.
    policy.host_selection_retry_max_attempts = 20;
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    let names = HttpClient::http1()
        .upstream_sequence(&rig.url("/"), 60)
        .await;
    assert!(names.iter().all(|n| n == "b" || n == "c"), "{names:?}");
    let a_seen = a.requests().await;
    assert!(
        a_seen >= 1,
        "random balancing never picked a in 60 requests"
    );
    assert_eq!(
        rig.retries().await,
        a_seen,
        "a saw each first try once, never a retry"
    );
}

/// `retriable-status-codes` with rate-limited back-off: a 429 carrying `Retry-After: 1` is
/// retried after that second, not after the (5 ms) exponential back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_for() {
    let a = upstream("a").await;
    control(
        &a,
        json!({"fail_ratio": 0.5, "fail_status": 429, "retry_after": 1}),
    )
    .await;
    let before = a.requests().await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut policy = retry("retriable-status-codes", 1);
    policy.retriable_status_codes = vec![429];
    policy.rate_limited_retry_back_off = Some(RateLimitedRetryBackOff {
        reset_headers: vec![ResetHeader {
            name: "retry-after".to_owned(),
            format: ResetHeaderFormat::Seconds.into(),
        }],
        max_interval: Some(ms(5000)),
    });
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None), "{}", r.describe());
    assert_between(took, 950, 3000, "Retry-After: 1");
    assert_eq!(a.requests().await - before, 2, "the 429, then the retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_return_the_upstream_answer() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 3));
    let rig = Rig::start(&res).await;

    let (r, _) = rig.get("/?status=503").await;
    assert_eq!(
        outcome(&r),
        (503, None),
        "the upstream's own 503: {}",
        r.describe()
    );
    assert_eq!(r.upstream(), Some("a"));
    assert_eq!(a.requests().await, 4, "the first try and 3 retries");
    assert_eq!(rig.retries().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_error_does_not_retry_a_500() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("gateway-error", 2));
    let rig = Rig::start(&res).await;

    let (r, _) = rig.get("/?status=500").await;
    assert_eq!(outcome(&r), (500, None));
    assert_eq!(a.requests().await, 1, "500 is not a gateway error");
    let (r, _) = rig.get("/?status=502").await;
    assert_eq!(outcome(&r), (502, None));
    assert_eq!(a.requests().await, 4, "502 is: the try and 2 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_request_headers_gate_retries() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut policy = retry("5xx", 1);
    policy.retriable_request_headers = vec![
        envoy_types::pb::envoy::config::route::v3::HeaderMatcher {
            name: "x-retry-me".to_owned(),
            header_match_specifier: Some(
                envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
            ),
            ..Default::default()
        },
    ];
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;
    let url = rig.url("/?status=503");

    let r = HttpClient::http1().get(&url).await;
    assert_eq!(outcome(&r), (503, None));
    assert_eq!(a.requests().await, 1, "without the header: no retry");
    let r = HttpClient::http1()
        .get_with(&url, &[("x-retry-me", "1")])
        .await;
    assert_eq!(outcome(&r), (503, None));
    assert_eq!(a.requests().await, 3, "with it: the try and one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_the_response_is_retried_then_reported() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("reset", 1));
    let rig = Rig::start(&res).await;

    let (r, _) = rig.get("/?reset=1").await;
    assert_eq!(
        outcome(&r),
        (503, err("upstream-reset")),
        "{}",
        r.describe()
    );
    assert_eq!(a.requests().await, 2, "the try and one retry");
    assert_eq!(rig.retries().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_4xx_retries_409_only() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("retriable-4xx", 1));
    let rig = Rig::start(&res).await;

    let (r, _) = rig.get("/?status=409").await;
    assert_eq!(outcome(&r), (409, None));
    assert_eq!(a.requests().await, 2, "409 is retried once");
    let (r, _) = rig.get("/?status=404").await;
    assert_eq!(outcome(&r), (404, None));
    assert_eq!(a.requests().await, 3, "404 is not");
}

/// `retriable-headers`: a failure is retried because of a header of the response (here
/// the demo's `Retry-After` on its `fail_ratio` failures), not because of its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_headers_match_the_response() {
    use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;

    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut policy = retry("retriable-headers", 1);
    policy.retriable_headers = vec![HeaderMatcher {
        name: "retry-after".to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    }];
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    // A 500 without the header is final.
    let (r, _) = rig.get("/?status=500").await;
    assert_eq!(outcome(&r), (500, None));
    assert_eq!(a.requests().await, 1);

    // Every other request fails with `Retry-After: 1`: the first is retried and passes.
    control(
        &a,
        json!({"fail_ratio": 0.5, "fail_status": 500, "retry_after": 1}),
    )
    .await;
    let (r, took) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None), "{}", r.describe());
    assert_eq!(a.requests().await, 3, "the failure and its retry");
    assert!(
        took < Duration::from_millis(900),
        "without rate_limited_retry_back_off the header is not waited for: {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Request safety: non-idempotent requests and bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_that_reached_the_upstream_is_not_sent_again() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx,reset", 2));
    let rig = Rig::start(&res).await;

    let r = rig
        .send("POST", "/charge?fail_after_charge=1", &[], full("{}"))
        .await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    assert_eq!(charges(&a).await.total, 1, "charged exactly once");

    // A reset after the charge is not retried either.
    let r = rig
        .send("POST", "/charge?reset_after_charge=1", &[], full("{}"))
        .await;
    assert_eq!(r.status.as_u16() / 100, 5, "{}", r.describe());
    assert_eq!(charges(&a).await.total, 2, "one more charge, not three");

    // PATCH is not idempotent either.
    let r = rig
        .send("PATCH", "/charge?fail_after_charge=1", &[], full("{}"))
        .await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    assert_eq!(charges(&a).await.total, 3);
    assert_eq!(rig.retries().await, 0);

    // PUT is: the same failure is retried twice.
    let r = rig
        .send("PUT", "/charge?fail_after_charge=1", &[], full("{}"))
        .await;
    assert_eq!(outcome(&r), (503, None));
    assert_eq!(charges(&a).await.total, 6);
    assert_eq!(rig.retries().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_an_idempotency_key_is_retried() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 2));
    let rig = Rig::start(&res).await;

    let r = rig
        .send(
            "POST",
            "/charge?fail_after_charge=1",
            &[("idempotency-key", "k1")],
            full("{}"),
        )
        .await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    let ledger = charges(&a).await;
    assert_eq!(ledger.total, 3, "the try and 2 retries: {ledger:?}");
    assert_eq!(
        ledger.by_key.get("k1"),
        Some(&3),
        "every try carried k1: {ledger:?}"
    );
    assert_eq!(ledger.without_key, 0, "{ledger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_on_a_route_that_allows_it_is_retried() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 2));
    route(&mut res).metadata = Some(retry_non_idempotent());
    let rig = Rig::start(&res).await;

    let r = rig
        .send("POST", "/charge?fail_after_charge=1", &[], full("{}"))
        .await;
    assert_eq!(outcome(&r), (503, None));
    let ledger = charges(&a).await;
    assert_eq!(ledger.total, 3, "{ledger:?}");
    assert_eq!(ledger.without_key, 3, "{ledger:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_sent_again_when_the_connection_never_opened() {
    let live = upstream("live").await;
    let mut res = svc_mesh(&[closed_port(), live.addr()]);
    route_action(&mut res).retry_policy = Some(retry_other_hosts("connect-failure", 2));
    let rig = Rig::start(&res).await;

    for i in 0..4 {
        let r = rig.send("POST", "/charge", &[], full("{}")).await;
        assert_eq!(outcome(&r), (200, None), "POST {i}: {}", r.describe());
    }
    let ledger = charges(&live).await;
    assert_eq!(ledger.total, 4, "one charge per POST: {ledger:?}");
    assert!(
        rig.retries().await >= 1,
        "round robin must have picked the closed port first at least once"
    );
}

/// A body longer than the route's buffer limit cannot be replayed, so the request is tried
/// once and its body streams through whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_buffer_limit_is_not_retried() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 2));
    route(&mut res).request_body_buffer_limit = Some(UInt64Value { value: 1024 });
    let rig = Rig::start(&res).await;

    let r = rig
        .send("PUT", "/?status=503", &[], generated(64 * 1024, 8 * 1024))
        .await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    assert_eq!(r.echo().body_bytes, 64 * 1024, "the body arrived whole");
    assert_eq!(a.requests().await, 1, "no retry for an unbuffered body");

    // Under the limit the same request is retried, with its body each time.
    let r = rig
        .send("PUT", "/?status=503", &[], generated(512, 512))
        .await;
    assert_eq!(outcome(&r), (503, None));
    assert_eq!(r.echo().body_bytes, 512, "the replayed body is whole");
    assert_eq!(a.requests().await, 4, "1 + the try and 2 retries");
}

// ---------------------------------------------------------------------------------------------
// Retry limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_zero_overflows_with_the_upstream_answer() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 2));
    let mut t = thresholds();
    t.max_retries = u32v(0);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    let (r, _) = rig.get("/?status=503").await;
    assert_eq!(
        outcome(&r),
        (503, err("overflow-max-retries")),
        "{}",
        r.describe()
    );
    assert_eq!(r.upstream(), Some("a"), "the upstream's answer, marked");
    assert_eq!(a.requests().await, 1);
    assert_eq!(
        rig.metric("legate_upstream_retry_overflow_total", &[("cluster", SVC)])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_concurrent_retries() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 2));
    let mut t = thresholds();
    t.retry_budget = Some(
        envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget {
            budget_percent: legate_tests::resilience::percent(20.0),
            min_retry_concurrency: u32v(1),
            ..Default::default()
        },
    );
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;

    let results = concurrent_gets(&rig.url("/?status=503&delay=300ms"), 20).await;
    for (i, r) in results.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|error| panic!("request {i}: {error:#}"));
        assert_eq!(r.status, 503, "request {i}: {}", r.describe());
    }
    let seen = a.requests().await;
    let overflows = rig
        .metric("legate_upstream_retry_overflow_total", &[("cluster", SVC)])
        .await;
    eprintln!("retry budget: upstream saw {seen} tries for 20 requests, {overflows} overflows");
    assert!(seen >= 20, "every request was tried once: {seen}");
    assert!(
        seen < 60,
        "a 20% budget cannot allow 2 retries for each of 20 concurrent requests: {seen}"
    );
    assert!(overflows >= 1.0, "some retries were refused by the budget");
    assert_eq!(rig.retries().await + 20, seen);
}

// ---------------------------------------------------------------------------------------------
// Hedging

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_on_per_try_timeout_takes_the_first_good_answer() {
    let slow = slow_upstream("slow", "1s").await;
    let fast = upstream("fast").await;
    let mut res = svc_mesh(&[slow.addr(), fast.addr()]);
    let mut policy = retry_other_hosts("5xx", 1);
    policy.per_try_timeout = Some(ms(150));
    let action = route_action(&mut res);
    action.retry_policy = Some(policy);
    action.hedge_policy = Some(HedgePolicy {
        hedge_on_per_try_timeout: true,
        ..Default::default()
    });
    let rig = Rig::start(&res).await;

    let mut sent = 0;
    while sent < 6 && slow.requests().await < 1 {
        let (r, took) = rig.get("/").await;
        sent += 1;
        assert_eq!(outcome(&r), (200, None), "{}", r.describe());
        assert_eq!(r.upstream(), Some("fast"));
        assert!(
            took < Duration::from_millis(800),
            "the hedge answered, not the 1 s host: {took:?}"
        );
    }
    let slow_seen = slow.requests().await;
    assert!(
        slow_seen >= 1,
        "the slow host never got a first try in {sent} requests"
    );
    assert_eq!(fast.requests().await, sent);
    assert_eq!(
        rig.metric("legate_upstream_hedges_total", &[("cluster", SVC)])
            .await as u64,
        slow_seen,
        "one hedge per try that outlived its per-try timeout"
    );
}

/// Without hedging the per-try timeout cancels the slow try; the counts match the hedged
/// case, so this pins what hedging adds: the slow try is not cut when its timer fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_first_try_keeps_running() {
    // One host: the hedge goes to the same (slow) host, and the first try, still running,
    // answers first, at about its delay rather than timeout + delay.
    let slow = slow_upstream("slow", "600ms").await;
    let mut res = svc_mesh(&[slow.addr()]);
    let mut policy = retry("5xx", 1);
    policy.per_try_timeout = Some(ms(300));
    let action = route_action(&mut res);
    action.retry_policy = Some(policy);
    action.hedge_policy = Some(HedgePolicy {
        hedge_on_per_try_timeout: true,
        ..Default::default()
    });
    let rig = Rig::start(&res).await;

    let (r, took) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None), "{}", r.describe());
    assert_between(took, 550, 850, "the first try's answer at ~600 ms");
    assert_eq!(slow.requests().await, 2, "the first try and the hedge");
}

// ---------------------------------------------------------------------------------------------
// Absurd durations (issue 13, item 4)

/// An upstream asking for an absurd wait (`Retry-After` of about three million years, then
/// `u64::MAX` seconds) neither panics the proxy nor holds the request: the wait is over the
/// policy's `max_interval`, so the ordinary back-off applies, and the proxy keeps serving.
/// A control plane cannot raise `max_interval` (or any duration) past one year: such a
/// route is NACKed with its field path and the served configuration stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_and_durations_do_not_break_the_proxy() {
    let a = upstream("a").await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut policy = retry("retriable-status-codes", 1);
    policy.retriable_status_codes = vec![429];
    policy.rate_limited_retry_back_off = Some(RateLimitedRetryBackOff {
        reset_headers: vec![
            ResetHeader {
                name: "retry-after".to_owned(),
                format: ResetHeaderFormat::Seconds.into(),
            },
            ResetHeader {
                name: "retry-after".to_owned(),
                format: ResetHeaderFormat::UnixTimestamp.into(),
            },
        ],
        // The longest interval validation accepts: one year.
        max_interval: Some(ms(365 * 24 * 3600 * 1000)),
    });
    route_action(&mut res).retry_policy = Some(policy);
    let rig = Rig::start(&res).await;

    for retry_after in [99_999_999_999_999u64, u64::MAX] {
        control(
            &a,
            json!({"fail_ratio": 1.0, "fail_status": 429, "retry_after": retry_after}),
        )
        .await;
        let (r, took) = rig.get("/").await;
        assert_eq!(outcome(&r), (429, None), "{}", r.describe());
        assert!(
            r.headers
                .get("retry-after")
                .is_some_and(|v| v == retry_after.to_string().as_str()),
            "the upstream's header reaches the client: {}",
            r.describe()
        );
        assert!(
            took < Duration::from_secs(5),
            "Retry-After {retry_after} was waited for: {took:?}"
        );
    }
    control(&a, json!({"fail_ratio": 0.0})).await;
    let (r, _) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None), "{}", rig.describe());

    // A route timeout of i64::MAX seconds is NACKed, naming the field.
    let mut huge = res.clone();
    route_action(&mut huge).timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: i64::MAX,
        nanos: 0,
    });
    let pushes = rig.server.set_resources(&huge);
    assert_eq!(pushes.len(), 1, "only the route configuration changed");
    let nack = rig
        .server
        .wait_nacked(&pushes[0], Duration::from_secs(10))
        .await
        .remove(0);
    let message = nack.error.clone().expect("error_detail").message;
    assert!(
        message.contains("virtual_hosts[0].routes[0].route.timeout")
            && message.contains("9223372036854775807s is longer than legate's limit of one year"),
        "{message}"
    );
    let (r, _) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None), "{}", rig.describe());
}
