//! gRPC as gRPC, end to end: a real grpcio server behind legate (h2c upstream) and a real
//! grpcio client in front of it (h2c downstream), configured over ADS with Envoy's fields
//! (`retry_policy.retry_on` gRPC conditions, `max_stream_duration.grpc_timeout_header_max`).
//!
//! The peer is `tests/interop/grpc_peer.py` in the venv of `make peers`
//! (`$LEGATE_PEERS_VENV`); a missing venv fails the test with instructions. The server
//! prints one line per call it received, so a test counts attempts from the upstream's side.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::route_action::MaxStreamDuration;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use legate_snapshot::type_url;
use legate_tests::ListeningProcess;
use legate_tests::config::cluster;
use legate_tests::grpc::{all_calls, call, calls, failing_grpc_server, grpc_server};
use legate_tests::resilience::{
    Rig, SVC, cluster_mut, edit_hcm, ms, one_token_an_hour, outlier, retry, retry_non_idempotent,
    route, route_action, set_http_filter, svc_mesh_with, u32v,
};

/// The listener's gRPC request count with `grpc_status`.
async fn by_status(rig: &Rig, status: &str) -> f64 {
    rig.metric(
        "legate_downstream_grpc_requests_total",
        &[("listener", "outbound"), ("grpc_status", status)],
    )
    .await
}

fn h2_mesh(server: &ListeningProcess) -> legate_snapshot::Resources {
    svc_mesh_with(cluster(SVC, &[server.addr()]).protocol("http2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_in_headers_is_retried() {
    let server = grpc_server().await;
    let mut res = h2_mesh(&server);
    route_action(&mut res).retry_policy = Some(retry("unavailable,cancelled", 2));
    // gRPC is POST: legate resends a request that reached the upstream only when the route
    // opts in (or the request carries Idempotency-Key), stricter than Envoy.
    route(&mut res).metadata = Some(retry_non_idempotent());
    let rig = Rig::start(&res).await;

    let c = call(rig.addr(), "Unary", "key=r;fail=1", Some(10.0)).await;
    assert_eq!(c.code, "OK", "{c:?}\n{}", rig.describe());
    assert_eq!(c.messages, ["ok attempt=2"], "{c:?}");
    assert_eq!(calls(&server, "Unary", "r"), 2, "{}", server.output());
    assert_eq!(rig.retries().await, 1);

    // A status that is not among the conditions is answered as is, once.
    let c = call(
        rig.addr(),
        "Unary",
        "key=i;fail=1;code=INTERNAL",
        Some(10.0),
    )
    .await;
    assert_eq!(c.code, "INTERNAL", "{c:?}");
    assert_eq!(c.details, "probe failure 1", "{c:?}");
    assert_eq!(calls(&server, "Unary", "i"), 1, "{}", server.output());

    // Exhausted: three attempts, the last status goes to the client.
    let c = call(rig.addr(), "Unary", "key=x;fail=5", Some(10.0)).await;
    assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
    assert_eq!(c.details, "probe failure 3", "{c:?}");
    assert_eq!(calls(&server, "Unary", "x"), 3, "{}", server.output());
    assert_eq!(rig.retries().await, 3);

    // Without the opt-in, the same failure is not sent again.
    route(&mut res).metadata = None;
    rig.apply(&res).await;
    let c = call(rig.addr(), "Unary", "key=n;fail=1", Some(10.0)).await;
    assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
    assert_eq!(calls(&server, "Unary", "n"), 1, "{}", server.output());
    assert_eq!(rig.retries().await, 3);

    // Counted by the status the client got: one OK, one INTERNAL, two UNAVAILABLE.
    assert_eq!(by_status(&rig, "0").await, 1.0);
    assert_eq!(by_status(&rig, "13").await, 1.0);
    assert_eq!(by_status(&rig, "14").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_in_trailers_is_not_retried() {
    let server = grpc_server().await;
    let mut res = h2_mesh(&server);
    route_action(&mut res).retry_policy = Some(retry("unavailable", 2));
    route(&mut res).metadata = Some(retry_non_idempotent());
    let rig = Rig::start(&res).await;

    // The message went downstream before the status: too late to retry, as in Envoy.
    let c = call(rig.addr(), "Stream", "key=t;fail=1", Some(10.0)).await;
    assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
    assert_eq!(c.messages, ["first attempt=1"], "{c:?}");
    assert_eq!(calls(&server, "Stream", "t"), 1, "{}", server.output());
    assert_eq!(rig.retries().await, 0);

    let c = call(rig.addr(), "Stream", "key=ok", Some(10.0)).await;
    assert_eq!(c.code, "OK", "{c:?}");

    // Counted from the trailers, once each, after the body ended.
    legate_tests::eventually(Duration::from_secs(5), "trailers counted", || async {
        let (ok, unavailable) = (by_status(&rig, "0").await, by_status(&rig, "14").await);
        if (ok, unavailable) == (1.0, 1.0) {
            Ok(())
        } else {
            Err(format!("OK {ok}, UNAVAILABLE {unavailable}"))
        }
    })
    .await;
    assert_eq!(by_status(&rig, "2").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured_and_capped() {
    let server = grpc_server().await;
    let mut res = h2_mesh(&server);
    route_action(&mut res).timeout = Some(ms(10_000));
    route_action(&mut res).max_stream_duration = Some(MaxStreamDuration {
        max_stream_duration: None,
        grpc_timeout_header_max: Some(ms(300)),
        grpc_timeout_header_offset: None,
    });
    let rig = Rig::start(&res).await;

    // The client allows 5 s; the route caps it at 300 ms: legate answers, not the client.
    let c = call(rig.addr(), "Unary", "key=slow;sleep=3", Some(5.0)).await;
    assert_eq!(c.code, "DEADLINE_EXCEEDED", "{c:?}");
    assert_eq!(c.details, "upstream request timeout", "{c:?}");
    assert!(c.seconds < 2.5, "{c:?}");
    assert_eq!(
        rig.metric(
            "legate_local_replies_total",
            &[("reason", "upstream-timeout")]
        )
        .await,
        1.0
    );
    assert_eq!(by_status(&rig, "4").await, 1.0);

    // Without a deadline the header is absent: only the route's 10 s applies.
    let c = call(rig.addr(), "Unary", "key=calm;sleep=0.5", None).await;
    assert_eq!(c.code, "OK", "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_is_unavailable_with_a_message() {
    let res = svc_mesh_with(cluster(SVC, &[]).protocol("http2"));
    let rig = Rig::start(&res).await;

    let c = call(rig.addr(), "Unary", "key=none", Some(10.0)).await;
    assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
    assert_eq!(c.details, "no healthy upstream host", "{c:?}");
    assert_eq!(by_status(&rig, "14").await, 1.0);
    assert_eq!(
        rig.metric(
            "legate_local_replies_total",
            &[("reason", "no-healthy-upstream")]
        )
        .await,
        1.0
    );
    // A plain HTTP request still gets the text reply.
    let (r, _) = rig.get("/").await;
    assert_eq!(r.status, 503, "{}", r.describe());
}

/// A host that answers every call with a trailers-only UNAVAILABLE is a failing host to
/// outlier detection (HTTP 200 on the wire, judged as the 503 it stands for, as in Envoy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_only_failures_eject_the_host() {
    let good = grpc_server().await;
    let bad = failing_grpc_server("UNAVAILABLE").await;
    let mut res = svc_mesh_with(cluster(SVC, &[good.addr(), bad.addr()]).protocol("http2"));
    let mut od = outlier();
    od.consecutive_5xx = u32v(3);
    od.enforcing_consecutive_5xx = u32v(100);
    od.base_ejection_time = Some(ms(60_000));
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;

    // Round robin: the bad host fails three times within the first few calls (bounded).
    let mut failures = 0;
    for i in 0..20 {
        let c = call(rig.addr(), "Unary", &format!("key=e{i}"), Some(10.0)).await;
        if c.code != "OK" {
            assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
            failures += 1;
            if failures == 3 {
                break;
            }
        }
    }
    assert_eq!(failures, 3, "{}", bad.output());
    assert_eq!(
        rig.metric("legate_outlier_ejected_hosts", &[("cluster", SVC)])
            .await,
        1.0
    );
    // Ejected for a minute: every call now reaches the good host.
    let before = all_calls(&bad);
    for i in 0..6 {
        let c = call(rig.addr(), "Unary", &format!("key=after{i}"), Some(10.0)).await;
        assert_eq!(c.code, "OK", "{c:?}");
    }
    assert_eq!(all_calls(&bad), before, "{}", bad.output());
}

/// A rate limit or a fault answering a gRPC call answers in gRPC (trailers-only, the
/// status Envoy gives), never with an HTTP error the client cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_replies_are_grpc_statuses() {
    let server = grpc_server().await;
    let mut res = h2_mesh(&server);
    // One token, refilled once an hour: the second call is limited.
    let mut limit = one_token_an_hour();
    let rl = (
        "envoy.filters.http.local_ratelimit",
        type_url::LOCAL_RATE_LIMIT,
    );
    set_http_filter(&mut res, rl.0, rl.1, &limit);
    let rig = Rig::start(&res).await;

    let c = call(rig.addr(), "Unary", "key=a", Some(10.0)).await;
    assert_eq!(c.code, "OK", "{c:?}\n{}", rig.describe());
    // 429 reads UNAVAILABLE, Envoy's mapping.
    let c = call(rig.addr(), "Unary", "key=b", Some(10.0)).await;
    assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
    assert!(c.details.contains("rate"), "{c:?}");
    assert_eq!(calls(&server, "Unary", "b"), 0, "{}", server.output());

    // rate_limited_as_resource_exhausted: RESOURCE_EXHAUSTED instead (the bucket is the
    // same, so it stays empty across the push).
    limit.rate_limited_as_resource_exhausted = true;
    set_http_filter(&mut res, rl.0, rl.1, &limit);
    rig.apply(&res).await;
    let c = call(rig.addr(), "Unary", "key=d", Some(10.0)).await;
    assert_eq!(c.code, "RESOURCE_EXHAUSTED", "{c:?}");

    // A fault abort with a gRPC status, ahead of the rate limit: that status, as is.
    edit_hcm(&mut res, |h| h.http_filters.retain(|f| f.name != rl.0));
    let fault = HttpFault {
        abort: Some(FaultAbort {
            percentage: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            error_type: Some(ErrorType::GrpcStatus(9)),
            ..Default::default()
        }),
        ..Default::default()
    };
    set_http_filter(
        &mut res,
        "envoy.filters.http.fault",
        type_url::FAULT,
        &fault,
    );
    rig.apply(&res).await;
    let c = call(rig.addr(), "Unary", "key=e", Some(10.0)).await;
    assert_eq!(c.code, "FAILED_PRECONDITION", "{c:?}");
    assert_eq!(calls(&server, "Unary", "e"), 0, "{}", server.output());

    // Counted by the status the client read.
    assert_eq!(by_status(&rig, "0").await, 1.0);
    assert_eq!(by_status(&rig, "14").await, 1.0);
    assert_eq!(by_status(&rig, "8").await, 1.0);
    assert_eq!(by_status(&rig, "9").await, 1.0);
}
