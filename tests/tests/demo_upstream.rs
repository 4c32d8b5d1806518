//! The demo upstream on its own (no legate): these prove the tool the proxy tests rely on.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use legate_tests::client::{self, HttpClient, count_body};
use legate_tests::demo::{DemoConfig, InProcessDemo};
use legate_tests::process::TempDir;
use legate_tests::{Protocol, Upstream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echoes_http1_request() {
    let up = Upstream::start("alpha", "v7", Protocol::Auto).await;
    let response = HttpClient::http1()
        .get_with(
            &up.url("/some/path?x=1&y=two"),
            &[("x-test", "a"), ("x-multi", "1"), ("x-multi", "2")],
        )
        .await;
    response.assert_status(200);
    assert_eq!(response.upstream(), Some("alpha"));
    assert_eq!(response.header("x-upstream-version"), Some("v7"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let echo = response.echo();
    assert_eq!(echo.name, "alpha");
    assert_eq!(echo.version, "v7");
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/some/path?x=1&y=two");
    assert_eq!(echo.protocol, "HTTP/1.1");
    assert_eq!(echo.body_bytes, 0);
    assert_eq!(echo.headers.get("x-test").map(String::as_str), Some("a"));
    assert_eq!(
        echo.headers.get("x-multi").map(String::as_str),
        Some("1, 2")
    );
    let host = up.addr().to_string();
    assert_eq!(echo.headers.get("host"), Some(&host));
    assert_eq!(echo.authority, host);
}

#[tokio::test]
async fn echoes_h2c_request_on_auto() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let response = client::request_h2("PUT", &up.url("/h2?q=1"), &[("x-a", "b")], "hello").await;
    response.assert_status(200);
    assert_eq!(response.version, http::Version::HTTP_2);
    let echo = response.echo();
    assert_eq!(echo.protocol, "HTTP/2.0");
    assert_eq!(echo.method, "PUT");
    assert_eq!(echo.path, "/h2?q=1");
    assert_eq!(echo.body_bytes, 5);
    assert_eq!(echo.authority, up.addr().to_string());
    assert_eq!(echo.headers.get("x-a").map(String::as_str), Some("b"));
}

#[tokio::test]
async fn protocol_flags_restrict_versions() {
    let h1 = Upstream::start("h1", "v1", Protocol::Http1).await;
    assert_eq!(client::get(&h1.url("/")).await.echo().protocol, "HTTP/1.1");
    let h2_on_h1 = HttpClient::h2c()
        .with_timeout(Duration::from_secs(3))
        .try_get(&h1.url("/"))
        .await;
    assert!(
        h2_on_h1.is_err(),
        "an http1-only upstream answered h2: {h2_on_h1:?}"
    );

    let h2 = Upstream::start("h2", "v1", Protocol::Http2).await;
    assert_eq!(
        client::get_h2(&h2.url("/")).await.echo().protocol,
        "HTTP/2.0"
    );
    let h1_on_h2 = HttpClient::http1()
        .with_timeout(Duration::from_secs(3))
        .try_get(&h2.url("/"))
        .await;
    assert!(
        h1_on_h2.is_err(),
        "an http2-only upstream answered HTTP/1.1: {h1_on_h2:?}"
    );
}

#[tokio::test]
async fn counts_streamed_request_bodies() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let len = 10 * 1024 * 1024 + 7;
    for (label, body) in [
        ("content-length", client::generated(len, 64 * 1024)),
        ("chunked", client::generated_chunked(len, 10_000)),
    ] {
        let response = HttpClient::http1()
            .request("POST", &up.url("/upload"), &[], body)
            .await;
        response.assert_status(200);
        assert_eq!(response.echo().body_bytes, len, "{label} upload");
    }
    let response = HttpClient::h2c()
        .request(
            "POST",
            &up.url("/upload"),
            &[],
            client::generated(len, 16_384),
        )
        .await;
    assert_eq!(response.echo().body_bytes, len, "h2 upload");
}

#[tokio::test]
async fn size_sends_a_body_of_that_length() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let response = client::get(&up.url("/dl?size=1000001")).await;
    response.assert_status(200);
    assert_eq!(response.body.len(), 1_000_001);
    assert_eq!(response.header("content-length"), Some("1000001"));
    assert_eq!(response.upstream(), Some("alpha"));

    let empty = client::get(&up.url("/dl?size=0")).await;
    empty.assert_status(200);
    assert!(empty.body.is_empty());

    // 64 MiB, streamed and counted, over both protocols.
    for http in [HttpClient::http1(), HttpClient::h2c()] {
        let req = client::build_request("GET", &up.url("/dl?size=67108864"), &[], client::empty())
            .expect("request");
        let response = http.try_send(req).await.expect("64 MiB download");
        assert_eq!(response.status(), 200);
        assert_eq!(
            count_body(response.into_body()).await.expect("body"),
            64 * 1024 * 1024
        );
    }

    let status_and_size = client::get(&up.url("/dl?size=10&status=206")).await;
    status_and_size.assert_status(206);
    assert_eq!(status_and_size.body.len(), 10);
}

#[tokio::test]
async fn status_and_fail_controls() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let response = client::get(&up.url("/x?status=503")).await;
    response.assert_status(503);
    assert_eq!(response.echo().path, "/x?status=503");

    client::get(&up.url("/x?fail=1")).await.assert_status(500);
    client::get(&up.url("/x?fail=0")).await.assert_status(200);
    client::get(&up.url("/x?fail=1&status=404"))
        .await
        .assert_status(500);

    let mut failures = 0;
    for _ in 0..200 {
        if client::get(&up.url("/x?fail=0.5")).await.status == 500 {
            failures += 1;
        }
    }
    assert!(
        (50..=150).contains(&failures),
        "fail=0.5 failed {failures} of 200"
    );

    let bad = client::get(&up.url("/x?status=abc")).await;
    bad.assert_status(400);
    assert!(bad.text().contains("status=abc"), "{}", bad.describe());
    client::get(&up.url("/x?delay=soon"))
        .await
        .assert_status(400);
}

#[tokio::test]
async fn delay_waits_before_answering() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    for (query, expected) in [
        ("delay=300ms", Duration::from_millis(300)),
        ("delay=1s", Duration::from_secs(1)),
        ("delay=200", Duration::from_millis(200)),
    ] {
        let started = Instant::now();
        client::get(&up.url(&format!("/?{query}")))
            .await
            .assert_status(200);
        let took = started.elapsed();
        assert!(
            took >= expected && took < expected + Duration::from_secs(2),
            "{query} took {took:?}"
        );
    }
}

#[tokio::test]
async fn base_delay_flag_slows_every_request() {
    let up = Upstream::start_with_args("slow", "v1", Protocol::Auto, &["--delay", "300ms"]).await;
    let started = Instant::now();
    client::get(&up.url("/")).await.assert_status(200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn reset_drops_without_a_response() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    for http in [HttpClient::http1(), HttpClient::h2c()] {
        let http = http.with_timeout(Duration::from_secs(5));
        let result = http.try_get(&up.url("/r?reset=1")).await;
        let error = result.expect_err("reset=1 must not produce a response");
        let text = format!("{error:#}");
        assert!(
            !text.contains("no response head"),
            "reset=1 must fail fast, not time out: {text}"
        );
        // The server is still fine afterwards.
        http.get(&up.url("/after")).await.assert_status(200);
    }
}

#[tokio::test]
async fn hang_never_answers() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let started = Instant::now();
    let result = HttpClient::http1()
        .with_timeout(Duration::from_millis(500))
        .try_get(&up.url("/?hang=1"))
        .await;
    let error = result.expect_err("hang=1 must not answer");
    assert!(
        format!("{error:#}").contains("no response head"),
        "{error:#}"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn counters_count_requests_and_connections_but_not_themselves() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    assert_eq!(up.counters().await.requests, 0);
    assert_eq!(up.counters().await.connections, 0);
    let http = HttpClient::http1();
    for _ in 0..5 {
        http.get(&up.url("/a")).await.assert_status(200);
    }
    let counters = up.counters().await;
    assert_eq!(counters.requests, 5);
    assert_eq!(counters.connections, 1, "one keep-alive connection");
    client::get(&up.url("/b")).await.assert_status(200);
    let counters = up.counters().await;
    assert_eq!(counters.requests, 6);
    assert_eq!(counters.connections, 2);
}

#[tokio::test]
async fn websocket_echo() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", up.addr()))
        .await
        .expect("websocket handshake with the demo upstream");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("alpha")
    );
    ws.send(Message::text("hello")).await.expect("send text");
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5s")
        .expect("stream open")
        .expect("text echo");
    assert_eq!(echoed, Message::text("hello"));
    let payload = vec![0u8, 1, 2, 255];
    ws.send(Message::binary(payload.clone()))
        .await
        .expect("send binary");
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5s")
        .expect("stream open")
        .expect("binary echo");
    assert_eq!(echoed, Message::binary(payload));
    ws.close(None).await.expect("close");

    // Without the upgrade headers, /ws explains itself.
    let plain = client::get(&up.url("/ws")).await;
    plain.assert_status(426);
}

#[tokio::test]
async fn ready_file_holds_the_address() {
    let dir = TempDir::new("demo-ready");
    let ready = dir.path().join("ready");
    let ready_arg = ready.to_string_lossy().into_owned();
    let up =
        Upstream::start_with_args("alpha", "v1", Protocol::Auto, &["--ready-file", &ready_arg])
            .await;
    let written = std::fs::read_to_string(&ready).expect("ready file written before the line");
    assert_eq!(written, up.addr().to_string());
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    client::get(&up.url("/")).await.assert_status(200);
    up.sigterm();
    let status = up.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "demo upstream exit status {status}");
    assert_eq!(
        up.output()
            .lines()
            .filter(|l| l.starts_with("[stdout]"))
            .count(),
        1,
        "exactly one stdout line expected:\n{}",
        up.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_in_bounded_memory() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let len: u64 = 1 << 30;
    let response = HttpClient::http1()
        .with_timeout(Duration::from_secs(120))
        .request(
            "POST",
            &up.url("/upload"),
            &[],
            client::generated(len, 64 * 1024),
        )
        .await;
    response.assert_status(200);
    assert_eq!(response.echo().body_bytes, len);
    let peak = up.peak_rss_bytes();
    assert!(
        peak < 64 * 1024 * 1024,
        "demo upstream peak RSS {} MiB after a 1 GiB upload",
        peak / (1024 * 1024)
    );
}

#[tokio::test]
async fn in_process_server_works_too() {
    let demo = InProcessDemo::start(DemoConfig::new("inproc"))
        .await
        .expect("bind");
    let echo = client::get(&format!("http://{}/p", demo.addr()))
        .await
        .echo();
    assert_eq!(echo.name, "inproc");
    assert_eq!(echo.path, "/p");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let url = up.url("/?delay=500ms");
    let in_flight = tokio::spawn(async move { client::get(&url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    up.sigterm();
    let response = in_flight.await.expect("request task");
    response.assert_status(200);
    let status = up.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "demo upstream exit status {status}");
}

#[tokio::test]
async fn sigterm_does_not_wait_forever_for_hanging_requests() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let url = up.url("/?hang=1");
    let _hanging = tokio::spawn(async move {
        HttpClient::http1()
            .with_timeout(Duration::from_secs(20))
            .try_get(&url)
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    up.sigterm();
    let status = up.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "demo upstream exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(4));
}
