//! The demo upstream on its own (no legate): these prove the tool the proxy tests rely on.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use legate_tests::client::{self, HttpClient, count_body};
use legate_tests::demo::{DemoConfig, InProcessDemo};
use legate_tests::process::TempDir;
use legate_tests::{Charges, FaultSettings, Protocol, Upstream, eventually};
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

// ---------------------------------------------------------------------------------------------
// Server-wide faults (`/control`), `/health` and the charge ledger

fn faults() -> FaultSettings {
    FaultSettings::default()
}

#[tokio::test]
async fn control_reports_and_keeps_omitted_fields() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let initial = up.faults().await;
    assert_eq!(
        initial,
        FaultSettings {
            fail_ratio: Some(0.0),
            fail_status: Some(503),
            retry_after: Some(0),
            delay: Some(Duration::ZERO),
            hang: Some(false),
            reset: Some(false),
            refuse: Some(false),
            refuse_for: None,
            health_status: Some(200),
        }
    );
    let after = up
        .set_faults(&FaultSettings {
            fail_status: Some(429),
            delay: Some(Duration::from_millis(20)),
            ..faults()
        })
        .await;
    let after_second = up
        .set_faults(&FaultSettings {
            health_status: Some(500),
            ..faults()
        })
        .await;
    assert_eq!(after.fail_status, Some(429));
    assert_eq!(
        after_second.fail_status,
        Some(429),
        "omitted fields keep their value"
    );
    assert_eq!(after_second.delay, Some(Duration::from_millis(20)));
    assert_eq!(after_second.health_status, Some(500));
    assert_eq!(up.faults().await, after_second);

    // Typos and out-of-range values are refused, and change nothing.
    for body in [
        r#"{"fail_rate":0.5}"#,
        r#"{"fail_ratio":2}"#,
        r#"{"delay":"soon"}"#,
        "not json",
    ] {
        let r = client::request("POST", &up.url("/control"), &[], body).await;
        r.assert_status(400);
    }
    assert_eq!(up.faults().await, after_second);
    // The control endpoints are not counted.
    assert_eq!(up.counters().await.requests, 0);
}

#[tokio::test]
async fn fail_ratio_fails_an_exact_share_of_requests() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    up.set_faults(&FaultSettings {
        fail_ratio: Some(0.5),
        fail_status: Some(503),
        ..faults()
    })
    .await;
    let http = HttpClient::http1();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(http.get(&up.url("/x")).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [503, 200, 503, 200, 503, 200, 503, 200, 503, 200],
        "0.5 fails requests 1, 3, 5, ..."
    );
    let counters = up.counters().await;
    assert_eq!(counters.status(503), 5);
    assert_eq!(counters.status(200), 5);

    // The failure carries the configured status, the echo body and, if asked, Retry-After.
    up.set_faults(&FaultSettings {
        fail_ratio: Some(1.0),
        fail_status: Some(429),
        retry_after: Some(2),
        ..faults()
    })
    .await;
    let r = http.get(&up.url("/y")).await;
    r.assert_status(429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.echo().path, "/y");
    // Over HTTP/2 as well; the health check is not affected.
    client::get_h2(&up.url("/z")).await.assert_status(429);
    http.get(&up.url("/health")).await.assert_status(200);

    up.set_faults(&FaultSettings {
        fail_ratio: Some(0.0),
        ..faults()
    })
    .await;
    let r = http.get(&up.url("/y")).await;
    r.assert_status(200);
    assert_eq!(r.header("retry-after"), None);
}

#[tokio::test]
async fn delay_hang_and_reset_faults() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    up.set_faults(&FaultSettings {
        delay: Some(Duration::from_millis(300)),
        ..faults()
    })
    .await;
    let started = Instant::now();
    client::get(&up.url("/?delay=100ms"))
        .await
        .assert_status(200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the fault's delay adds to the query's: {:?}",
        started.elapsed()
    );

    up.set_faults(&FaultSettings {
        delay: Some(Duration::ZERO),
        hang: Some(true),
        ..faults()
    })
    .await;
    let hung = HttpClient::http1()
        .with_timeout(Duration::from_millis(400))
        .try_get(&up.url("/"))
        .await
        .expect_err("hang: no answer");
    assert!(format!("{hung:#}").contains("no response head"), "{hung:#}");

    up.set_faults(&FaultSettings {
        hang: Some(false),
        reset: Some(true),
        ..faults()
    })
    .await;
    for http in [HttpClient::http1(), HttpClient::h2c()] {
        let error = http
            .with_timeout(Duration::from_secs(5))
            .try_get(&up.url("/"))
            .await
            .expect_err("reset: no answer");
        assert!(
            !format!("{error:#}").contains("no response head"),
            "{error:#}"
        );
    }
    let resets = up.counters().await.resets;
    assert_eq!(resets, 2);

    up.set_faults(&FaultSettings {
        reset: Some(false),
        ..faults()
    })
    .await;
    client::get(&up.url("/")).await.assert_status(200);
}

#[tokio::test]
async fn health_follows_health_status() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let r = client::get(&up.url("/health")).await;
    r.assert_status(200);
    assert_eq!(r.text(), "healthy\n");
    up.set_health(503).await;
    client::get(&up.url("/health")).await.assert_status(503);
    client::get_h2(&up.url("/health")).await.assert_status(503);
    // Other requests are unaffected, and /health is not counted.
    client::get(&up.url("/other")).await.assert_status(200);
    up.set_health(200).await;
    client::get(&up.url("/health")).await.assert_status(200);
    let counters = up.counters().await;
    assert_eq!(counters.requests, 1, "only /other counts: {counters:?}");

    // A hanging host hangs its health checks too.
    up.set_faults(&FaultSettings {
        hang: Some(true),
        ..faults()
    })
    .await;
    let hung = HttpClient::http1()
        .with_timeout(Duration::from_millis(300))
        .try_get(&up.url("/health"))
        .await;
    assert!(hung.is_err(), "{hung:?}");
}

#[tokio::test]
async fn refuse_for_closes_the_port_then_reopens_it() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
    // A pooled keep-alive connection: refusing must close it too.
    http.get(&up.url("/before")).await.assert_status(200);

    let settings = up
        .set_faults(&FaultSettings {
            refuse_for: Some(Duration::from_millis(1500)),
            ..faults()
        })
        .await;
    assert_eq!(settings.refuse, Some(true));
    let refused_at = Instant::now();
    let error = tokio::net::TcpStream::connect(up.addr())
        .await
        .expect_err("the port is closed");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}"
    );
    // The pooled connection is closed by the upstream; the client may still pick it before it
    // has seen the close (then the request fails as "connection closed"), or open a new one
    // (refused). Either way nothing answers.
    let error = http
        .try_get(&up.url("/during"))
        .await
        .expect_err("no answer while refusing");
    let text = format!("{error:#}").to_lowercase();
    assert!(
        text.contains("refused") || text.contains("connection closed before message completed"),
        "{error:#}"
    );

    eventually(Duration::from_secs(5), "the port re-opens", || async {
        http.try_get(&up.url("/after"))
            .await
            .map(|r| r.assert_status(200).clone())
            .map_err(|error| format!("{error:#}"))
    })
    .await;
    assert!(
        refused_at.elapsed() >= Duration::from_millis(1300),
        "re-opened early: {:?}",
        refused_at.elapsed()
    );
    assert_eq!(up.faults().await.refuse, Some(false));
    assert_eq!(up.counters().await.requests, 2, "/before and /after");
}

#[tokio::test]
async fn refuse_until_told_otherwise_on_the_control_port() {
    let up = Upstream::start_with_control("alpha", "v1", Protocol::Http1).await;
    assert_ne!(up.control_addr(), up.addr());
    client::get(&up.url("/a")).await.assert_status(200);

    up.set_faults(&FaultSettings {
        refuse: Some(true),
        ..faults()
    })
    .await;
    for _ in 0..3 {
        let error = tokio::net::TcpStream::connect(up.addr())
            .await
            .expect_err("refused");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.faults().await.refuse, Some(true));
    // The control port serves only the control endpoints.
    client::get(&format!("http://{}/a", up.control_addr()))
        .await
        .assert_status(404);

    // Answered once the port listens again: no polling needed.
    up.set_faults(&FaultSettings {
        refuse: Some(false),
        ..faults()
    })
    .await;
    client::get(&up.url("/b")).await.assert_status(200);
    assert_eq!(up.counters().await.requests, 2);

    // Refusing twice and re-opening twice is fine.
    for _ in 0..2 {
        up.set_faults(&FaultSettings {
            refuse: Some(true),
            ..faults()
        })
        .await;
        assert!(tokio::net::TcpStream::connect(up.addr()).await.is_err());
        up.set_faults(&FaultSettings {
            refuse: Some(false),
            ..faults()
        })
        .await;
        client::get(&up.url("/c")).await.assert_status(200);
    }
}

#[tokio::test]
async fn reset_after_sends_part_of_the_body_then_aborts() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    for (label, http) in [("http1", HttpClient::http1()), ("h2c", HttpClient::h2c())] {
        let req = client::build_request(
            "GET",
            &up.url("/dl?size=100000&reset_after=1000"),
            &[],
            client::empty(),
        )
        .expect("request");
        let response = http.try_send(req).await.expect("the head arrives");
        assert_eq!(response.status(), 200, "{label}");
        assert_eq!(
            response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some("100000"),
            "{label}: the full length is announced"
        );
        let mut body = response.into_body();
        let mut received = 0u64;
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    received += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Some(Err(error)) => break error,
                None => panic!("{label}: the body ended cleanly after {received} bytes"),
            }
        };
        assert_eq!(received, 1000, "{label}: {error}");

        // The echo body is cut the same way.
        let cut = http.try_get(&up.url("/e?reset_after=5")).await;
        let error = cut.expect_err("an incomplete body is an error");
        assert!(
            format!("{error:#}").contains("reading the response body"),
            "{label}: {error:#}"
        );
    }
    let counters = up.counters().await;
    assert_eq!(counters.resets, 4);
    assert_eq!(counters.status(200), 4);
    client::get(&up.url("/fine")).await.assert_status(200);
}

#[tokio::test]
async fn charges_are_counted_per_idempotency_key() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    assert_eq!(up.charges().await, Charges::default());
    let http = HttpClient::http1();
    for (key, expected_count) in [(Some("k1"), 1), (Some("k1"), 2), (Some("k2"), 1), (None, 1)] {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        let r = http
            .request("POST", &up.url("/charge"), &headers, client::full("{}"))
            .await;
        r.assert_status(200);
        assert_eq!(
            r.header("x-charge-count"),
            Some(expected_count.to_string().as_str())
        );
        assert_eq!(r.echo().body_bytes, 2);
    }
    // Any method is a charge, over HTTP/2 too.
    client::request_h2("PUT", &up.url("/charge"), &[("Idempotency-Key", "k2")], "")
        .await
        .assert_status(200);
    // Other paths are not.
    http.get(&up.url("/charged-not")).await.assert_status(200);
    let ledger = up.charges().await;
    assert_eq!(
        ledger,
        Charges {
            total: 5,
            by_key: [("k1".to_owned(), 2), ("k2".to_owned(), 2)].into(),
            without_key: 1,
        }
    );
    // The raw JSON has the documented shape.
    let raw = client::get(&up.url("/charges")).await.json();
    assert_eq!(
        raw,
        serde_json::json!({"total": 5, "by_key": {"k1": 2, "k2": 2}, "without_key": 1})
    );
}

#[tokio::test]
async fn charges_are_recorded_before_failures_and_resets() {
    let up = Upstream::start("alpha", "v1", Protocol::Auto).await;
    let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
    let r = http
        .request(
            "POST",
            &up.url("/charge?fail_after_charge=1"),
            &[("idempotency-key", "k1")],
            client::full("{}"),
        )
        .await;
    r.assert_status(503);
    assert_eq!(up.charges().await.total, 1);

    let reset = http
        .try_request(
            "POST",
            &up.url("/charge?reset_after_charge=1"),
            &[("idempotency-key", "k1")],
            client::full("{}"),
        )
        .await;
    assert!(
        reset.is_err(),
        "reset_after_charge answers nothing: {reset:?}"
    );
    let ledger = up.charges().await;
    assert_eq!(ledger.total, 2);
    assert_eq!(ledger.by_key.get("k1"), Some(&2));

    // Server-wide faults also come after the charge.
    up.set_faults(&FaultSettings {
        fail_ratio: Some(1.0),
        ..faults()
    })
    .await;
    http.request("POST", &up.url("/charge"), &[], client::full("{}"))
        .await
        .assert_status(503);
    up.set_faults(&FaultSettings {
        fail_ratio: Some(0.0),
        reset: Some(true),
        ..faults()
    })
    .await;
    assert!(
        http.try_request("POST", &up.url("/charge"), &[], client::full("{}"))
            .await
            .is_err()
    );
    let ledger = up.charges().await;
    assert_eq!(ledger.total, 4);
    assert_eq!(ledger.without_key, 2);

    // Charge controls elsewhere are a mistake.
    up.set_faults(&FaultSettings {
        reset: Some(false),
        ..faults()
    })
    .await;
    client::get(&up.url("/x?fail_after_charge=1"))
        .await
        .assert_status(400);
    let counters = up.counters().await;
    assert_eq!(counters.resets, 2);
    assert_eq!(counters.status(503), 2);
}
