//! Retry buffers under memory budgets (issue 13 item 9), end to end: the real `legate`
//! with small `--retry-buffer-limit` / `--retry-buffer-connection-limit`, a real demo
//! upstream, POSTs on a route that retries them.
//!
//! A request whose body does not fit a budget is never failed for it: it is streamed once,
//! its body arrives whole, it is not retried even when the upstream fails, and it is counted
//! in `legate_retry_buffer_overflow_total{reason}`. Budget held by a request is given back
//! when it ends, so the next request is buffered and retried again.

use legate_tests::client::{HttpClient, HttpResponse, ReqBody, generated, generated_chunked};
use legate_tests::resilience::{
    Rig, SVC, WAIT, outcome, retry, retry_non_idempotent, route, route_action, svc_mesh,
};
use legate_tests::{Protocol, Upstream, eventually};

const KIB: u64 = 1024;

/// `legate_retry_buffer_overflow_total{cluster=svc,reason}`.
async fn overflows(rig: &Rig, reason: &str) -> u64 {
    rig.metric(
        "legate_retry_buffer_overflow_total",
        &[("cluster", SVC), ("reason", reason)],
    )
    .await as u64
}

async fn post(rig: &Rig, path: &str, body: ReqBody) -> HttpResponse {
    HttpClient::http1()
        .with_timeout(WAIT)
        .request("POST", &rig.url(path), &[], body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_a_budget_are_streamed_once_and_the_budget_comes_back() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let mut res = svc_mesh(&[a.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    route(&mut res).metadata = Some(retry_non_idempotent());
    // Global 100 KiB, 70 KiB per connection; the route's own limit stays at 1 MiB.
    let rig = Rig::start_with_args(
        &res,
        &[
            "--retry-buffer-limit",
            "100KiB",
            "--retry-buffer-connection-limit",
            "70KiB",
        ],
    )
    .await;
    for reason in ["request", "connection", "global"] {
        assert_eq!(overflows(&rig, reason).await, 0, "{reason} starts at 0");
    }

    // A retriable request under both budgets is kept (it retries: 2 tries upstream).
    let before = a.requests().await;
    let r = post(&rig, "/?status=503", generated(50 * KIB, 8 * 1024)).await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    assert_eq!(a.requests().await - before, 2, "buffered, so retried once");
    assert_eq!(rig.retries().await, 1);

    // One request holds 60 KiB of the global budget while its slow answer is pending.
    let holder = {
        let url = rig.url("/?delay=4s");
        tokio::spawn(async move {
            HttpClient::http1()
                .with_timeout(WAIT)
                .request("POST", &url, &[], generated(60 * KIB, 8 * 1024))
                .await
        })
    };
    eventually(WAIT, "the slow request's body is held", || async {
        let held = rig.metric("legate_retry_buffer_bytes", &[]).await;
        if held >= (60 * KIB) as f64 {
            Ok(())
        } else {
            Err(format!("legate_retry_buffer_bytes {held}"))
        }
    })
    .await;

    // Meanwhile, 50 KiB bodies fit their connections (70 KiB) but not what is left of the
    // global budget (40 KiB): with a declared length and chunked, to a failing path and to
    // a good one, all at once.
    let before = a.requests().await;
    let cases: Vec<(&str, bool)> = vec![
        ("/?status=503", true),
        ("/?status=503", false),
        ("/", true),
        ("/", false),
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|&(path, declared)| {
            let url = rig.url(path);
            tokio::spawn(async move {
                let body = if declared {
                    generated(50 * KIB, 8 * 1024)
                } else {
                    generated_chunked(50 * KIB, 8 * 1024)
                };
                HttpClient::http1()
                    .with_timeout(WAIT)
                    .request("POST", &url, &[], body)
                    .await
            })
        })
        .collect();
    for ((path, declared), h) in cases.iter().zip(handles) {
        let r = h.await.expect("request task");
        let expected = if path.contains("503") { 503 } else { 200 };
        assert_eq!(
            outcome(&r),
            (expected, None),
            "{path} declared={declared}: the upstream's own answer, never a local reply: {}",
            r.describe()
        );
        assert_eq!(
            r.echo().body_bytes,
            50 * KIB,
            "{path} declared={declared}: the body arrived whole"
        );
    }
    assert_eq!(
        a.requests().await - before,
        4,
        "over the global budget: each request tried once, the failing ones not retried"
    );
    assert_eq!(overflows(&rig, "global").await, 4);
    assert_eq!(rig.retries().await, 1, "no retry since the first request");

    let r = holder.await.expect("holder task");
    assert_eq!(outcome(&r), (200, None), "{}", r.describe());

    // The budget is given back when requests end.
    eventually(WAIT, "every retry buffer is given back", || async {
        let held = rig.metric("legate_retry_buffer_bytes", &[]).await;
        if held == 0.0 {
            Ok(())
        } else {
            Err(format!("legate_retry_buffer_bytes {held}"))
        }
    })
    .await;

    // Over the connection's budget (80 KiB > 70 KiB), though the global one has room.
    let before = a.requests().await;
    let r = post(&rig, "/?status=503", generated_chunked(80 * KIB, 8 * 1024)).await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    assert_eq!(r.echo().body_bytes, 80 * KIB);
    assert_eq!(a.requests().await - before, 1, "not retried");
    assert_eq!(overflows(&rig, "connection").await, 1);

    // A follow-up that fits is buffered and retried again.
    let before = a.requests().await;
    let r = post(&rig, "/?status=503", generated(50 * KIB, 8 * 1024)).await;
    assert_eq!(outcome(&r), (503, None), "{}", r.describe());
    assert_eq!(r.echo().body_bytes, 50 * KIB, "the replayed body is whole");
    assert_eq!(a.requests().await - before, 2, "buffered and retried again");
    assert_eq!(rig.retries().await, 2);
    assert_eq!(overflows(&rig, "global").await, 4, "unchanged");
    assert_eq!(overflows(&rig, "request").await, 0);
    eventually(WAIT, "the follow-up's buffer is given back", || async {
        match rig.metric("legate_retry_buffer_bytes", &[]).await {
            0.0 => Ok(()),
            held => Err(format!("legate_retry_buffer_bytes {held}")),
        }
    })
    .await;
}
