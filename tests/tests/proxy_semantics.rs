//! HTTP semantics of the proxy: forwarding headers, request ids, hop-by-hop headers, status
//! pass-through, large streamed bodies and WebSocket upgrades.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use legate_tests::client::{self, HttpClient, count_body};
use legate_tests::config::{cluster, single_vhost};
use legate_tests::{Legate, Protocol, Upstream};
use tokio_tungstenite::tungstenite::Message;

/// Everything to cluster `a` with a long route timeout (big bodies take a while in debug).
async fn proxy_to(a: &Upstream) -> Legate {
    let routes = r#"
        - match: {prefix: /}
          forward: {cluster: a, timeout: 300s}
    "#;
    Legate::start(&single_vhost(routes, &[cluster("a", &[a.addr()])])).await
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn adds_forwarding_headers() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let url = legate.url("outbound", "/fwd").await;
    let http = HttpClient::http1();

    let echo = http.get(&url).await.echo();
    assert_eq!(
        echo.headers.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(
        echo.headers.get("x-forwarded-proto").map(String::as_str),
        Some("http")
    );

    let echo = http
        .get_with(&url, &[("x-forwarded-for", "10.0.0.1")])
        .await
        .echo();
    assert_eq!(
        echo.headers.get("x-forwarded-for").map(String::as_str),
        Some("10.0.0.1, 127.0.0.1"),
        "the peer is appended to an existing x-forwarded-for"
    );

    let echo = client::get_h2(&url).await.echo();
    assert_eq!(
        echo.headers.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1"),
        "over h2 too"
    );
}

#[tokio::test]
async fn request_id_generated_or_preserved() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let url = legate.url("outbound", "/rid").await;
    let http = HttpClient::http1();

    let first = http.get(&url).await.echo();
    let second = http.get(&url).await.echo();
    let id1 = first
        .headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id generated: {first:?}"));
    let id2 = second
        .headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id generated: {second:?}"));
    assert!(
        is_uuid(id1),
        "generated x-request-id is not a UUID: {id1:?}"
    );
    assert!(
        is_uuid(id2),
        "generated x-request-id is not a UUID: {id2:?}"
    );
    assert_ne!(id1, id2, "each request gets its own id");

    let kept = http
        .get_with(&url, &[("x-request-id", "abc-123")])
        .await
        .echo();
    assert_eq!(
        kept.headers.get("x-request-id").map(String::as_str),
        Some("abc-123")
    );
}

#[tokio::test]
async fn strips_hop_by_hop_headers() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let url = legate.url("outbound", "/hop").await;
    let response = HttpClient::http1()
        .get_with(
            &url,
            &[
                ("connection", "x-custom-hop"),
                ("x-custom-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "gzip, trailers"),
                ("x-normal", "kept"),
            ],
        )
        .await;
    response.assert_status(200);
    let echo = response.echo();
    for hop in [
        "keep-alive",
        "proxy-connection",
        "x-custom-hop",
        "transfer-encoding",
    ] {
        assert!(
            !echo.headers.contains_key(hop),
            "hop-by-hop header {hop} reached the upstream: {:?}",
            echo.headers
        );
    }
    if let Some(connection) = echo.headers.get("connection") {
        assert!(
            !connection.contains("x-custom-hop"),
            "the downstream Connection header was forwarded: {connection}"
        );
    }
    assert_eq!(
        echo.headers.get("x-normal").map(String::as_str),
        Some("kept")
    );
    // `te` keeps only `trailers`, which gRPC servers require (Envoy does the same).
    assert_eq!(
        echo.headers.get("te").map(String::as_str),
        Some("trailers"),
        "{:?}",
        echo.headers
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let base = legate.url("outbound", "").await;
    for status in [201u16, 404, 500, 503] {
        let response = client::get(&format!("{base}/s?status={status}")).await;
        response.assert_status(status);
        assert_eq!(response.upstream(), Some("a"));
        assert_eq!(
            response.legate_error(),
            None,
            "an upstream {status} is not a local reply"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_streams_in_bounded_memory() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let url = legate.url("outbound", "/upload").await;
    let len: u64 = 1 << 30;
    let response = HttpClient::http1()
        .with_timeout(Duration::from_secs(300))
        .request("POST", &url, &[], client::generated(len, 64 * 1024))
        .await;
    response.assert_status(200);
    assert_eq!(response.echo().body_bytes, 1_073_741_824);
    let peak = legate.peak_rss_bytes();
    assert!(
        peak < 200 * 1024 * 1024,
        "legate's peak RSS (VmHWM) reached {} MiB while streaming 1 GiB: bodies must stream",
        peak / (1024 * 1024)
    );
}

#[tokio::test]
async fn chunked_upload_over_http1_and_h2() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let url = legate.url("outbound", "/upload").await;
    let len: u64 = 16 * 1024 * 1024 + 3;
    for http in [HttpClient::http1(), HttpClient::h2c()] {
        let response = http
            .with_timeout(Duration::from_secs(120))
            .request("POST", &url, &[], client::generated_chunked(len, 10_000))
            .await;
        response.assert_status(200);
        assert_eq!(response.echo().body_bytes, len);
    }
}

#[tokio::test]
async fn large_download_streams() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let len: u64 = 64 * 1024 * 1024;
    let url = legate
        .url("outbound", &format!("/download?size={len}"))
        .await;
    for http in [HttpClient::http1(), HttpClient::h2c()] {
        let http = http.with_timeout(Duration::from_secs(120));
        let req = client::build_request("GET", &url, &[], client::empty()).expect("request");
        let response = http.try_send(req).await.expect("download response head");
        assert_eq!(response.status(), 200);
        if response.version() == http::Version::HTTP_11 {
            assert_eq!(
                response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok()),
                Some("67108864"),
                "content-length is passed through"
            );
        }
        let received =
            tokio::time::timeout(Duration::from_secs(120), count_body(response.into_body()))
                .await
                .expect("download finished within 120s")
                .expect("download body");
        assert_eq!(received, len);
    }
    let peak = legate.peak_rss_bytes();
    assert!(
        peak < 200 * 1024 * 1024,
        "legate's peak RSS reached {} MiB for a 64 MiB download",
        peak / (1024 * 1024)
    );
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = proxy_to(&a).await;
    let addr = legate.listener_addr("outbound").await;
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("websocket handshake within 10s")
    .unwrap_or_else(|error| panic!("websocket handshake through legate failed: {error}"));
    assert_eq!(response.status(), 101);
    assert_eq!(
        response
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("a"),
        "the 101 came from the upstream"
    );
    for i in 0..10 {
        let message = if i % 2 == 0 {
            Message::text(format!("hello {i}"))
        } else {
            Message::binary(vec![i as u8; 1000 * i])
        };
        ws.send(message.clone()).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo within 5s")
            .expect("websocket still open")
            .expect("echo frame");
        assert_eq!(echoed, message);
    }
    ws.close(None).await.expect("close");
}
