//! `envoy.filters.http.local_ratelimit`, end to end: resources pushed over ADS to the real
//! `legate` binary in front of a real demo upstream. Each test asserts what the client got
//! (status, `x-legate-error`, the `x-ratelimit-*` headers), what the upstream saw (its own
//! request count) and legate's metrics.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{FilterConfig, Route};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::TokenBucket;
use envoy_types::pb::google::protobuf::UInt32Value;
use legate_snapshot::{Resources, type_url};
use legate_tests::resilience::{
    Rig, any, ms, outcome, route, runtime_percent, set_http_filter, svc_mesh,
};
use legate_tests::{Protocol, Upstream};

const FILTER: &str = "envoy.filters.http.local_ratelimit";

/// A limit of `max` tokens, one more every `refill_ms`; enabled and enforced for every
/// request, with the `x-ratelimit-*` headers and `x-limited: yes` on limited answers.
fn limit(max: u32, refill_ms: u64) -> LocalRateLimit {
    LocalRateLimit {
        stat_prefix: "rl".to_owned(),
        token_bucket: Some(TokenBucket {
            max_tokens: max,
            tokens_per_fill: Some(UInt32Value { value: 1 }),
            fill_interval: Some(ms(refill_ms)),
        }),
        filter_enabled: runtime_percent(100),
        filter_enforced: runtime_percent(100),
        enable_x_ratelimit_headers: 1,
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-limited".to_owned(),
                value: "yes".to_owned(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Puts the filter, configured with `l`, before the router of every listener.
fn with_filter(res: &mut Resources, l: &LocalRateLimit) {
    set_http_filter(res, FILTER, type_url::LOCAL_RATE_LIMIT, l);
}

async fn upstream() -> Upstream {
    Upstream::start("a", "v1", Protocol::Http1).await
}

async fn limited_metric(rig: &Rig) -> f64 {
    rig.metric(
        "legate_http_local_rate_limited_total",
        &[("listener", "outbound")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_429_with_headers_then_refill() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    // Three tokens, one more every 2 s: three requests sent at once pass, the fourth not.
    with_filter(&mut res, &limit(3, 2000));
    let rig = Rig::start(&res).await;

    for remaining in ["2", "1", "0"] {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (200, None), "{}", rig.describe());
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
        // As Envoy: 0 while a token is left, else the seconds until the next one.
        let reset = r.header("x-ratelimit-reset").expect("x-ratelimit-reset");
        assert_eq!(reset == "0", remaining != "0", "reset {reset}");
        assert_eq!(r.header("x-limited"), None);
    }
    let (r, _) = rig.get("/").await;
    let limited_at = Instant::now();
    assert_eq!(
        outcome(&r),
        (429, Some("rate-limited".to_owned())),
        "{}",
        rig.describe()
    );
    assert_eq!(r.header("x-limited"), Some("yes"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = r
        .header("x-ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .expect("x-ratelimit-reset in seconds");
    assert!((1..=2).contains(&reset), "reset {reset}");
    assert_eq!(
        a.requests().await,
        3,
        "the limited request never left legate"
    );
    assert_eq!(limited_metric(&rig).await, 1.0);
    assert_eq!(
        rig.metric("legate_local_replies_total", &[("reason", "rate-limited")])
            .await,
        1.0
    );

    // The bucket refills: within the next 2 s (and a margin) a request passes again.
    let deadline = limited_at + Duration::from_secs(6);
    let mut refused = 0;
    loop {
        let (r, _) = rig.get("/").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(outcome(&r), (429, Some("rate-limited".to_owned())));
        refused += 1;
        assert!(Instant::now() < deadline, "no token after 6 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.requests().await, 4);
    assert_eq!(limited_metric(&rig).await, f64::from(1 + refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_survives_an_unrelated_push_and_a_changed_one_starts_full() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    // Two tokens, one more a minute: the test never sees a refill.
    with_filter(&mut res, &limit(2, 60_000));
    let rig = Rig::start(&res).await;
    for _ in 0..2 {
        assert_eq!(outcome(&rig.get("/").await.0), (200, None));
    }
    assert_eq!(outcome(&rig.get("/").await.0).0, 429);

    // A push that changes something else (the route's timeout) keeps the empty bucket.
    let mut unrelated = res.clone();
    legate_tests::resilience::route_action(&mut unrelated).timeout = Some(ms(9000));
    rig.apply(&unrelated).await;
    let (r, _) = rig.get("/").await;
    assert_eq!(
        outcome(&r),
        (429, Some("rate-limited".to_owned())),
        "the bucket was rebuilt by an unrelated push: {}",
        rig.describe()
    );

    // A push that changes the bucket gives a new, full one.
    with_filter(&mut unrelated, &limit(5, 60_000));
    rig.apply(&unrelated).await;
    let (r, _) = rig.get("/").await;
    assert_eq!(outcome(&r), (200, None), "{}", rig.describe());
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(a.requests().await, 3);
}

/// A route like the mesh's only one, matching `prefix`.
fn prefixed_route(res: &mut Resources, prefix: &str) -> Route {
    let mut r = route(res).clone();
    r.name = prefix.trim_matches('/').to_owned();
    if let Some(m) = r.r#match.as_mut() {
        m.path_specifier = Some(PathSpecifier::Prefix(prefix.to_owned()));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_override_and_disable() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    // The listener's bucket is large; /strict has one token of its own, /free none at all.
    with_filter(&mut res, &limit(100, 60_000));
    let mut strict = prefixed_route(&mut res, "/strict");
    strict.typed_per_filter_config.insert(
        FILTER.to_owned(),
        any(type_url::LOCAL_RATE_LIMIT, &limit(1, 60_000)),
    );
    let mut free = prefixed_route(&mut res, "/free");
    free.typed_per_filter_config.insert(
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
    let rc = &mut res.route_configs[0];
    // The route configuration's own limit replaces the listener's where nothing more
    // specific says otherwise.
    rc.typed_per_filter_config.insert(
        FILTER.to_owned(),
        any(type_url::LOCAL_RATE_LIMIT, &limit(50, 60_000)),
    );
    let routes = &mut rc.virtual_hosts[0].routes;
    routes.insert(0, free);
    routes.insert(0, strict);
    let rig = Rig::start(&res).await;

    let (r, _) = rig.get("/strict").await;
    assert_eq!(outcome(&r), (200, None), "{}", rig.describe());
    assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
    let (r, _) = rig.get("/strict").await;
    assert_eq!(outcome(&r), (429, Some("rate-limited".to_owned())));
    for _ in 0..5 {
        let (r, _) = rig.get("/free").await;
        assert_eq!(outcome(&r), (200, None));
        assert_eq!(
            r.header("x-ratelimit-limit"),
            None,
            "the filter is disabled here"
        );
    }
    // Other routes use the route configuration's bucket, which /strict did not take from.
    let (r, _) = rig.get("/other").await;
    assert_eq!(outcome(&r), (200, None));
    assert_eq!(r.header("x-ratelimit-limit"), Some("50"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("49"));
    assert_eq!(a.requests().await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_enabled_zero_never_limits() {
    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut l = limit(1, 60_000);
    l.filter_enabled = runtime_percent(0);
    with_filter(&mut res, &l);
    let rig = Rig::start(&res).await;
    for _ in 0..5 {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (200, None), "{}", rig.describe());
        assert_eq!(r.header("x-ratelimit-limit"), None);
    }
    // Enabled but not enforced: the bucket runs dry, the requests still pass.
    let mut l = limit(1, 60_000);
    l.filter_enforced = runtime_percent(0);
    with_filter(&mut res, &l);
    rig.apply(&res).await;
    for remaining in ["0", "0", "0"] {
        let (r, _) = rig.get("/").await;
        assert_eq!(outcome(&r), (200, None));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    assert_eq!(a.requests().await, 8);
    assert_eq!(limited_metric(&rig).await, 0.0);
}

/// Descriptors: a bucket per value of `x-client` (a wildcard descriptor, at most two kept),
/// a bigger one for `gold`, and the default bucket only for requests no descriptor matched
/// (`always_consume_default_token_bucket: false`). Limited answers carry `retry-after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_give_each_client_its_own_bucket() {
    use envoy_types::pb::envoy::config::route::v3::RateLimit as XdsRateLimit;
    use envoy_types::pb::envoy::config::route::v3::rate_limit::Action;
    use envoy_types::pb::envoy::config::route::v3::rate_limit::action::{
        ActionSpecifier, RequestHeaders,
    };
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::BoolValue;

    let a = upstream().await;
    let mut res = svc_mesh(&[a.addr()]);
    let hour = 3_600_000;
    let descriptor = |value: &str, max: u32| LocalRateLimitDescriptor {
        entries: vec![Entry {
            key: "client".to_owned(),
            value: value.to_owned(),
        }],
        token_bucket: limit(max, hour).token_bucket,
        shadow_mode: false,
    };
    let l = LocalRateLimit {
        descriptors: vec![descriptor("gold", 5), descriptor("", 2)],
        rate_limits: vec![XdsRateLimit {
            actions: vec![Action {
                action_specifier: Some(ActionSpecifier::RequestHeaders(RequestHeaders {
                    header_name: "x-client".to_owned(),
                    descriptor_key: "client".to_owned(),
                    skip_if_absent: false,
                })),
            }],
            ..Default::default()
        }],
        always_consume_default_token_bucket: Some(BoolValue { value: false }),
        max_dynamic_descriptors: Some(UInt32Value { value: 2 }),
        enable_retry_after_header: true,
        response_headers_to_add: Vec::new(),
        ..limit(1, hour)
    };
    with_filter(&mut res, &l);
    let rig = Rig::start(&res).await;
    let http = legate_tests::HttpClient::http1();
    let url = rig.url("/");
    let status = |client: Option<&'static str>| {
        let (http, url) = (&http, &url);
        async move {
            let headers: Vec<(&str, &str)> = client.map(|c| ("x-client", c)).into_iter().collect();
            http.request("GET", url, &headers, legate_tests::client::empty())
                .await
        }
    };
    // Each client its own two tokens.
    for client in ["a", "b"] {
        for _ in 0..2 {
            assert_eq!(status(Some(client)).await.status, 200, "{client}");
        }
        let r = status(Some(client)).await;
        assert_eq!(
            outcome(&r),
            (429, Some("rate-limited".to_owned())),
            "{client}"
        );
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"), "{client}");
        let retry_after: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("retry-after");
        assert!((1..=3600).contains(&retry_after), "{retry_after}");
    }
    // gold matches its own descriptor first: five.
    for _ in 0..5 {
        assert_eq!(status(Some("gold")).await.status, 200);
    }
    assert_eq!(status(Some("gold")).await.status, 429);
    // No header, no descriptor: the default bucket's one token.
    assert_eq!(status(None).await.status, 200);
    assert_eq!(status(None).await.status, 429);
    // At most two values kept: c pushes out a, the least recently used, whose next
    // request starts a full bucket again; b, used since, is still empty.
    assert_eq!(status(Some("c")).await.status, 200);
    assert_eq!(status(Some("b")).await.status, 429);
    assert_eq!(status(Some("a")).await.status, 200);
    assert_eq!(a.requests().await, 2 + 2 + 5 + 1 + 1 + 1);
}
