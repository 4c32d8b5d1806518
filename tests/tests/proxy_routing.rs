//! Listeners, virtual hosts, route matching and route actions, end to end through `legate`.

use std::time::{Duration, Instant};

use http::Version;
use legate_tests::client::{self, HttpClient};
use legate_tests::config::{bootstrap, cluster, forward_all, single_vhost};
use legate_tests::{Legate, Protocol, Upstream};

/// A request path, its extra headers, and which upstream should answer (`None`: none).
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
);

async fn upstream(name: &str) -> Upstream {
    Upstream::start(name, "v1", Protocol::Auto).await
}

#[tokio::test]
async fn auto_listener_serves_http1_and_h2c() {
    let a = upstream("a").await;
    let legate = Legate::start(&forward_all(cluster("a", &[a.addr()]))).await;
    let url = legate.url("outbound", "/hello?x=1").await;

    let h1 = client::get(&url).await;
    h1.assert_status(200);
    assert_eq!(h1.version, Version::HTTP_11);
    let echo = h1.echo();
    assert_eq!(echo.name, "a");
    assert_eq!(echo.path, "/hello?x=1");
    assert_eq!(echo.protocol, "HTTP/1.1", "cluster a is http1");

    let h2 = client::request_h2("POST", &url, &[], vec![7u8; 1000]).await;
    h2.assert_status(200);
    assert_eq!(h2.version, Version::HTTP_2);
    let echo = h2.echo();
    assert_eq!(echo.name, "a");
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/hello?x=1");
    assert_eq!(echo.body_bytes, 1000);
    assert_eq!(echo.protocol, "HTTP/1.1", "downstream h2 → upstream http1");
}

#[tokio::test]
async fn http1_and_http2_only_listeners_at_once() {
    let a = upstream("a").await;
    let listeners = r#"
        - {name: h1only, address: 127.0.0.1:0, protocol: http1, route_config: outbound}
        - {name: h2only, address: 127.0.0.1:0, protocol: http2, route_config: outbound}
    "#;
    let route_configs = r#"
        - name: outbound
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {prefix: /}
                  forward: {cluster: a}
    "#;
    let legate = Legate::start(&bootstrap(
        listeners,
        route_configs,
        &[cluster("a", &[a.addr()])],
    ))
    .await;
    let h1_url = legate.url("h1only", "/one").await;
    let h2_url = legate.url("h2only", "/two").await;
    assert_ne!(h1_url, h2_url);

    let h1 = client::get(&h1_url).await;
    h1.assert_status(200);
    assert_eq!(h1.version, Version::HTTP_11);
    assert_eq!(h1.echo().path, "/one");

    let h2 = client::get_h2(&h2_url).await;
    h2.assert_status(200);
    assert_eq!(h2.version, Version::HTTP_2);
    assert_eq!(h2.echo().path, "/two");

    let short = Duration::from_secs(3);
    let wrong = HttpClient::h2c().with_timeout(short).try_get(&h1_url).await;
    assert!(
        !matches!(&wrong, Ok(r) if r.status == 200),
        "h2 prior knowledge must not work on an http1 listener: {wrong:?}"
    );
    let wrong = HttpClient::http1()
        .with_timeout(short)
        .try_get(&h2_url)
        .await;
    assert!(
        !matches!(&wrong, Ok(r) if r.status == 200),
        "HTTP/1.1 must not work on an http2 listener: {wrong:?}"
    );
}

#[tokio::test]
async fn two_listeners_with_their_own_routes() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let listeners = r#"
        - {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: one}
        - {name: second, address: 127.0.0.1:0, protocol: auto, route_config: two}
    "#;
    let route_configs = r#"
        - name: one
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {prefix: /}
                  forward: {cluster: a}
        - name: two
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {prefix: /}
                  forward: {cluster: b}
    "#;
    let legate = Legate::start(&bootstrap(
        listeners,
        route_configs,
        &[cluster("a", &[a.addr()]), cluster("b", &[b.addr()])],
    ))
    .await;
    let first = legate.url("outbound", "/x").await;
    let second = legate.url("second", "/x").await;
    let (r1, r2) = tokio::join!(client::get(&first), client::get(&second));
    assert_eq!(r1.assert_status(200).upstream(), Some("a"));
    assert_eq!(r2.assert_status(200).upstream(), Some("b"));
}

#[tokio::test]
async fn virtual_host_domains_exact_suffix_and_catch_all() {
    let exact = upstream("exact").await;
    let suffix = upstream("suffix").await;
    let fallback = upstream("fallback").await;
    let route_configs = r#"
        - name: outbound
          virtual_hosts:
            - name: fallback
              domains: ["*"]
              routes: [{match: {prefix: /}, forward: {cluster: fallback}}]
            - name: suffix
              domains: ["*.example.com"]
              routes: [{match: {prefix: /}, forward: {cluster: suffix}}]
            - name: exact
              domains: ["api.example.com"]
              routes: [{match: {prefix: /}, forward: {cluster: exact}}]
    "#;
    let legate = Legate::start(&bootstrap(
        "- {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}",
        route_configs,
        &[
            cluster("exact", &[exact.addr()]),
            cluster("suffix", &[suffix.addr()]),
            cluster("fallback", &[fallback.addr()]),
        ],
    ))
    .await;
    let url = legate.url("outbound", "/").await;
    let http = HttpClient::http1();
    // Envoy's precedence: exact, then the longest suffix wildcard, then `*`, whatever the
    // order in the file (the catch-all is listed first on purpose).
    for (host, expected) in [
        ("api.example.com", "exact"),
        ("API.Example.COM", "exact"),
        ("www.example.com", "suffix"),
        ("a.b.example.com", "suffix"),
        ("example.com", "fallback"),
        ("other.org", "fallback"),
    ] {
        let response = http.get_with(&url, &[("host", host)]).await;
        response.assert_status(200);
        assert_eq!(
            response.upstream(),
            Some(expected),
            "Host: {host} → {}",
            response.describe()
        );
        assert_eq!(
            response.echo().headers.get("host").map(String::as_str),
            Some(host),
            "the Host header is passed through unchanged"
        );
    }
}

#[tokio::test]
async fn path_header_and_query_matching() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let routes = r#"
        - match: {path: /exact}
          forward: {cluster: a}
        - match: {regex: "/items/[0-9]+"}
          forward: {cluster: b}
        - match: {prefix: /hdr, headers: [{name: x-canary, exact: "1"}]}
          forward: {cluster: c}
        - match: {prefix: /qry, query: [{name: v, exact: "2"}]}
          forward: {cluster: c}
        - match: {prefix: /}
          direct_response: {status: 200, body: "default\n"}
    "#;
    let legate = Legate::start(&single_vhost(
        routes,
        &[
            cluster("a", &[a.addr()]),
            cluster("b", &[b.addr()]),
            cluster("c", &[c.addr()]),
        ],
    ))
    .await;
    let base = legate.url("outbound", "").await;
    let http = HttpClient::http1();
    // `None`: the catch-all direct response answered.
    let cases: &[Case] = &[
        ("/exact", &[], Some("a")),
        ("/exact?q=1", &[], Some("a")),
        ("/exact/more", &[], None),
        ("/exactly", &[], None),
        ("/items/42", &[], Some("b")),
        ("/items/42?page=2", &[], Some("b")),
        ("/items/abc", &[], None),
        ("/items/42/x", &[], None),
        ("/hdr", &[("x-canary", "1")], Some("c")),
        ("/hdr/deeper", &[("x-canary", "1")], Some("c")),
        ("/hdr", &[("x-canary", "2")], None),
        ("/hdr", &[], None),
        ("/qry?v=2", &[], Some("c")),
        ("/qry?a=1&v=2", &[], Some("c")),
        ("/qry?v=3", &[], None),
        ("/qry", &[], None),
    ];
    for (path, headers, expected) in cases {
        let response = http.get_with(&format!("{base}{path}"), headers).await;
        response.assert_status(200);
        match expected {
            Some(name) => {
                assert_eq!(
                    response.upstream(),
                    Some(*name),
                    "{path} {headers:?}: {}",
                    response.describe()
                );
                assert_eq!(response.echo().path, *path, "path forwarded unchanged");
            }
            None => assert_eq!(
                response.text(),
                "default\n",
                "{path} {headers:?} should fall through to the catch-all: {}",
                response.describe()
            ),
        }
    }
}

#[tokio::test]
async fn prefix_rewrite_changes_the_upstream_path() {
    let payments = upstream("payments").await;
    let routes = r#"
        - match: {prefix: /payments/}
          forward: {cluster: payments, prefix_rewrite: /, timeout: 2s}
    "#;
    let legate = Legate::start(&single_vhost(
        routes,
        &[cluster("payments", &[payments.addr()])],
    ))
    .await;
    let listener = legate.listener_addr("outbound").await;
    for (path, expected) in [
        ("/payments/charge?id=7", "/charge?id=7"),
        ("/payments/", "/"),
        ("/payments/a/b/c", "/a/b/c"),
    ] {
        let response = client::get(&format!("http://{listener}{path}")).await;
        response.assert_status(200);
        let echo = response.echo();
        assert_eq!(echo.path, expected, "{path}");
        assert_eq!(
            echo.headers.get("host"),
            Some(&listener.to_string()),
            "prefix_rewrite keeps the Host header"
        );
    }
}

#[tokio::test]
async fn host_rewrite_changes_the_upstream_host() {
    let b = upstream("b").await;
    let b2 = Upstream::start("b2", "v1", Protocol::Http2).await;
    let routes = r#"
        - match: {prefix: /h, headers: [{name: x-canary, exact: "1"}], query: [{name: v, exact: "2"}]}
          forward: {cluster: b, host_rewrite: rewritten.example}
        - match: {prefix: /h2}
          forward: {cluster: b2, host_rewrite: rewritten.example}
    "#;
    let legate = Legate::start(&single_vhost(
        routes,
        &[
            cluster("b", &[b.addr()]),
            cluster("b2", &[b2.addr()]).protocol("http2"),
        ],
    ))
    .await;
    let base = legate.url("outbound", "").await;
    let response = HttpClient::http1()
        .get_with(&format!("{base}/h?v=2"), &[("x-canary", "1")])
        .await;
    response.assert_status(200);
    let echo = response.echo();
    assert_eq!(echo.name, "b");
    assert_eq!(
        echo.headers.get("host").map(String::as_str),
        Some("rewritten.example")
    );
    assert_eq!(echo.authority, "rewritten.example");

    // Over an HTTP/2 upstream the rewritten host is the :authority.
    let response = client::get(&format!("{base}/h2")).await;
    response.assert_status(200);
    let echo = response.echo();
    assert_eq!(echo.name, "b2");
    assert_eq!(echo.protocol, "HTTP/2.0");
    assert_eq!(echo.authority, "rewritten.example");
}

#[tokio::test]
async fn weighted_clusters_split_traffic() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let routes = r#"
        - match: {prefix: /split/}
          forward: {weighted: [{cluster: a, weight: 90}, {cluster: b, weight: 10}]}
    "#;
    let legate = Legate::start(&single_vhost(
        routes,
        &[cluster("a", &[a.addr()]), cluster("b", &[b.addr()])],
    ))
    .await;
    let url = legate.url("outbound", "/split/x").await;
    let counts = HttpClient::http1().upstream_tally(&url, 400).await;
    let to_a = counts.get("a").copied().unwrap_or(0);
    let to_b = counts.get("b").copied().unwrap_or(0);
    assert_eq!(to_a + to_b, 400, "{counts:?}");
    // Expected 40 to b; the standard deviation of a random split is 6, so ±30 is 5σ.
    assert!((10..=70).contains(&to_b), "90/10 split gave {counts:?}");
    assert_eq!(a.requests().await, to_a as u64);
    assert_eq!(b.requests().await, to_b as u64);
}

#[tokio::test]
async fn direct_response_is_answered_locally() {
    let a = upstream("a").await;
    let routes = r#"
        - match: {path: /ping}
          direct_response: {status: 200, body: "pong\n"}
        - match: {path: /teapot}
          direct_response: {status: 418, body: "short and stout"}
        - match: {prefix: /}
          forward: {cluster: a}
    "#;
    let legate = Legate::start(&single_vhost(routes, &[cluster("a", &[a.addr()])])).await;
    let base = legate.url("outbound", "").await;
    let response = client::get(&format!("{base}/ping")).await;
    response.assert_status(200);
    assert_eq!(response.text(), "pong\n");
    assert_eq!(response.upstream(), None, "no upstream involved");
    assert_eq!(
        response.legate_error(),
        None,
        "a direct response is not an error"
    );
    let teapot = client::get(&format!("{base}/teapot")).await;
    teapot.assert_status(418);
    assert_eq!(teapot.text(), "short and stout");
    assert_eq!(
        a.requests().await,
        0,
        "direct responses never reach the cluster"
    );
}

#[tokio::test]
async fn route_timeout_answers_504() {
    let a = upstream("a").await;
    let routes = r#"
        - match: {prefix: /slow/}
          forward: {cluster: a, timeout: 500ms}
    "#;
    let legate = Legate::start(&single_vhost(routes, &[cluster("a", &[a.addr()])])).await;
    let base = legate.url("outbound", "").await;

    let started = Instant::now();
    let response = client::get(&format!("{base}/slow/x?delay=3s")).await;
    let took = started.elapsed();
    response.assert_status(504);
    assert_eq!(
        response.legate_error(),
        Some("upstream-timeout"),
        "{}",
        response.describe()
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "a 500ms route timeout answered after {took:?}"
    );

    let quick = client::get(&format!("{base}/slow/x?delay=100ms")).await;
    quick.assert_status(200);
    assert_eq!(quick.upstream(), Some("a"));
}

#[tokio::test]
async fn unrouted_requests_get_404_and_are_not_forwarded() {
    let a = upstream("a").await;
    let route_configs = r#"
        - name: outbound
          virtual_hosts:
            - name: api
              domains: ["api.example.com"]
              routes:
                - match: {prefix: /api}
                  forward: {cluster: a}
    "#;
    let legate = Legate::start(&bootstrap(
        "- {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}",
        route_configs,
        &[cluster("a", &[a.addr()])],
    ))
    .await;
    let base = legate.url("outbound", "").await;
    let http = HttpClient::http1();

    // The route works, so the 404s below are about matching, not a broken setup.
    http.get_with(&format!("{base}/api/x"), &[("host", "api.example.com")])
        .await
        .assert_status(200);
    assert_eq!(a.requests().await, 1);

    for (path, host) in [
        ("/other", "api.example.com"),
        ("/api/x", "unknown.example.com"),
    ] {
        let response = http
            .get_with(&format!("{base}{path}"), &[("host", host)])
            .await;
        response.assert_status(404);
        assert_eq!(
            response.legate_error(),
            Some("no-route"),
            "{path} with Host {host}: {}",
            response.describe()
        );
    }
    assert_eq!(
        a.requests().await,
        1,
        "unrouted requests must not reach the upstream"
    );
}
