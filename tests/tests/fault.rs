//! `envoy.filters.http.fault`, end to end: resources pushed over ADS to the real `legate`
//! binary in front of a real demo upstream. Each test asserts the status and
//! `x-legate-error` the client got, how long it waited, and what the upstream saw.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{FilterConfig, Route};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::{
    FaultDelaySecifier, HeaderDelay,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::{
    ErrorType, HeaderAbort,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::UInt32Value;
use legate_snapshot::{Resources, type_url};
use legate_tests::client::{HttpClient, empty};
use legate_tests::resilience::{
    Rig, SVC, any, cluster_mut, edit_hcm, ms, one_token_an_hour, outcome, outlier, retry, route,
    route_action, set_http_filter, svc_mesh, timed, u32v,
};
use legate_tests::{Protocol, Upstream};

const FILTER: &str = "envoy.filters.http.fault";

fn all() -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: 100,
        denominator: 0,
    })
}

fn abort(status: u32) -> Option<FaultAbort> {
    Some(FaultAbort {
        percentage: all(),
        error_type: Some(ErrorType::HttpStatus(status)),
        ..Default::default()
    })
}

fn delay(delay_ms: u64) -> Option<FaultDelay> {
    Some(FaultDelay {
        percentage: all(),
        fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(ms(delay_ms))),
    })
}

fn with_filter(res: &mut Resources, f: &HttpFault) {
    set_http_filter(res, FILTER, type_url::FAULT, f);
}

async fn upstream() -> Upstream {
    Upstream::start("a", "v1", Protocol::Http1).await
}

fn fault_abort() -> Option<String> {
    Some("fault-abort".to_owned())
}

async fn get_with(rig: &Rig, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    outcome(
        &HttpClient::http1()
            .request("GET", &rig.url(path), headers, empty())
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_abort_answers_the_configured_status() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    with_filter(
        &mut res,
        &HttpFault {
            abort: abort(418),
            ..Default::default()
        },
    );
    let rig = Rig::start(&res).await;
    for _ in 0..3 {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (418, fault_abort()), "{}", rig.describe());
    }
    assert_eq!(a.requests().await, 0, "aborted requests never leave legate");
    assert_eq!(
        rig.metric("legate_local_replies_total", &[("reason", "fault-abort")])
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_faults_only_when_the_filter_allows_them() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    // A fixed abort at 0 %: the fault headers are not honoured.
    with_filter(
        &mut res,
        &HttpFault {
            abort: Some(FaultAbort {
                percentage: None,
                error_type: Some(ErrorType::HttpStatus(500)),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let rig = Rig::start(&res).await;
    let abort_503 = [("x-envoy-fault-abort-request", "503")];
    assert_eq!(get_with(&rig, "/", &abort_503).await, (200, None));

    // header_abort and header_delay: the caller says.
    with_filter(
        &mut res,
        &HttpFault {
            abort: Some(FaultAbort {
                percentage: all(),
                error_type: Some(ErrorType::HeaderAbort(HeaderAbort {})),
                ..Default::default()
            }),
            delay: Some(FaultDelay {
                percentage: all(),
                fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(HeaderDelay {})),
            }),
            ..Default::default()
        },
    );
    rig.apply(&res).await;
    assert_eq!(get_with(&rig, "/", &[]).await, (200, None));
    assert_eq!(get_with(&rig, "/", &abort_503).await, (503, fault_abort()));
    // The percentage header: 0 of 100 never aborts.
    assert_eq!(
        get_with(
            &rig,
            "/",
            &[
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-request-percentage", "0")
            ]
        )
        .await,
        (200, None)
    );
    // Out of range: ignored.
    assert_eq!(
        get_with(&rig, "/", &[("x-envoy-fault-abort-request", "700")]).await,
        (200, None)
    );
    let (r, took) = timed(get_with(
        &rig,
        "/",
        &[("x-envoy-fault-delay-request", "400")],
    ))
    .await;
    assert_eq!(r, (200, None));
    assert!(took >= Duration::from_millis(400), "delayed {took:?}");
    assert_eq!(a.requests().await, 5, "all but the aborted one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_delay_and_max_active_faults() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    with_filter(
        &mut res,
        &HttpFault {
            delay: delay(2000),
            max_active_faults: Some(UInt32Value { value: 1 }),
            ..Default::default()
        },
    );
    let rig = Rig::start(&res).await;
    let (first, second) = tokio::join!(
        timed(rig.get("/")),
        // The second starts while the first is delayed: over max_active_faults, no fault.
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            timed(rig.get("/")).await
        }
    );
    assert_eq!(outcome(&first.0.0), (200, None));
    assert_eq!(outcome(&second.0.0), (200, None));
    assert!(
        first.1 >= Duration::from_secs(2),
        "first delayed {:?}",
        first.1
    );
    assert!(
        second.1 < Duration::from_millis(1500),
        "second not delayed: {:?}",
        second.1
    );
    assert_eq!(a.requests().await, 2);
}

fn prefixed_route(res: &mut Resources, prefix: &str) -> Route {
    let mut r = route(res).clone();
    r.name = prefix.trim_matches('/').to_owned();
    if let Some(m) = r.r#match.as_mut() {
        m.path_specifier = Some(PathSpecifier::Prefix(prefix.to_owned()));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_overrides() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    // The listener aborts everything; /calm disables the filter, /teapot aborts with 418.
    with_filter(
        &mut res,
        &HttpFault {
            abort: abort(503),
            ..Default::default()
        },
    );
    let mut calm = prefixed_route(&mut res, "/calm");
    calm.typed_per_filter_config.insert(
        FILTER.to_owned(),
        any(
            type_url::FILTER_CONFIG,
            &FilterConfig {
                config: None,
                is_optional: false,
                disabled: true,
            },
        ),
    );
    let mut teapot = prefixed_route(&mut res, "/teapot");
    teapot.typed_per_filter_config.insert(
        FILTER.to_owned(),
        any(
            type_url::FAULT,
            &HttpFault {
                abort: abort(418),
                ..Default::default()
            },
        ),
    );
    let routes = &mut res.route_configs[0].virtual_hosts[0].routes;
    routes.insert(0, calm);
    routes.insert(0, teapot);
    let rig = Rig::start(&res).await;
    assert_eq!(get_with(&rig, "/calm", &[]).await, (200, None));
    assert_eq!(get_with(&rig, "/teapot", &[]).await, (418, fault_abort()));
    assert_eq!(get_with(&rig, "/other", &[]).await, (503, fault_abort()));
    assert_eq!(a.requests().await, 1);
}

/// Chaos testing: a legate injecting aborts in front of one of two hosts; the client-side
/// legate retries the injected 503s on the other host and ejects the faulty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_outlier_ejection_react_to_injected_faults() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let b = Upstream::start("b", "v1", Protocol::Http1).await;
    // The chaos proxy: every request to `a` through it is aborted with 503.
    let mut chaos = svc_mesh(&[a.addr()]);
    with_filter(
        &mut chaos,
        &HttpFault {
            abort: abort(503),
            ..Default::default()
        },
    );
    let chaos = Rig::start(&chaos).await;
    // The client's proxy: hosts `chaos` and `b`, one retry on 5xx, ejection after three
    // 5xx in a row.
    let mut res = svc_mesh(&[chaos.addr(), b.addr()]);
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    let mut od = outlier();
    od.consecutive_5xx = u32v(3);
    od.enforcing_consecutive_5xx = u32v(100);
    od.base_ejection_time = Some(ms(60_000));
    cluster_mut(&mut res, SVC).outlier_detection = Some(od);
    let rig = Rig::start(&res).await;

    for i in 0..12 {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (200, None), "request {i}: {}", rig.describe());
        assert_eq!(r.upstream(), Some("b"), "request {i}");
    }
    assert_eq!(a.requests().await, 0, "the chaos proxy aborted everything");
    assert_eq!(b.requests().await, 12);
    // Three injected faults, each retried on b; then the chaos host is ejected and sees
    // nothing more.
    assert_eq!(
        chaos
            .metric("legate_local_replies_total", &[("reason", "fault-abort")])
            .await,
        3.0
    );
    assert_eq!(rig.retries().await, 3);
    assert_eq!(
        rig.metric("legate_outlier_ejected_hosts", &[("cluster", SVC)])
            .await,
        1.0
    );
}

/// The access log says what the filters did: `DI` on a delayed request, `FI` on an aborted
/// one, `RL` on one the local rate limit refused, with the status each got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_flags_name_the_filters() {
    use legate_tests::access_log::{file_log, line_where};

    let a = upstream().await;
    let dir = legate_tests::process::TempDir::new("filter-flags");
    let log = dir.path().join("access.log");
    let mut res = svc_mesh(&[a.addr()]);
    edit_hcm(&mut res, |h| {
        h.access_log = vec![file_log(
            &log,
            "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n",
        )]
    });
    // Faults by header only; then a rate limit of one token an hour.
    with_filter(
        &mut res,
        &HttpFault {
            delay: Some(FaultDelay {
                percentage: all(),
                fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(HeaderDelay {})),
            }),
            abort: Some(FaultAbort {
                percentage: all(),
                error_type: Some(ErrorType::HeaderAbort(HeaderAbort {})),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let limit = one_token_an_hour();
    // The rate limit second, after the fault filter.
    set_http_filter(
        &mut res,
        "envoy.filters.http.local_ratelimit",
        type_url::LOCAL_RATE_LIMIT,
        &limit,
    );
    edit_hcm(&mut res, |h| {
        let rl = h.http_filters.remove(0);
        h.http_filters.insert(1, rl);
    });
    let rig = Rig::start(&res).await;

    assert_eq!(
        get_with(&rig, "/delayed", &[("x-envoy-fault-delay-request", "10")]).await,
        (200, None)
    );
    assert_eq!(
        get_with(&rig, "/aborted", &[("x-envoy-fault-abort-request", "503")]).await,
        (503, fault_abort())
    );
    assert_eq!(
        get_with(&rig, "/limited", &[]).await,
        (429, Some("rate-limited".to_owned()))
    );
    for (path, want) in [
        ("/delayed", "/delayed 200 DI"),
        ("/aborted", "/aborted 503 FI"),
        ("/limited", "/limited 429 RL"),
    ] {
        let line = line_where(&log, path, |l| l.starts_with(&format!("{path} "))).await;
        assert_eq!(line, want);
    }
}
