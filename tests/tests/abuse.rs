//! Hostile downstream clients against a real legate over raw TCP sockets: slow and partial
//! request heads, too many connections, request smuggling, oversized and too many headers,
//! HTTP/2 rapid reset and CONTINUATION floods, and a bounded fuzz of request bytes. After
//! each, legate must still be alive and serving.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use legate_tests::config::{bootstrap, cluster};
use legate_tests::raw::{self, exchange};
use legate_tests::{Legate, Protocol, Upstream, eventually, get};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ROUTES: &str = r#"
    - name: outbound
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              forward: {cluster: a, timeout: 30s}
"#;

/// `outbound` (auto codec, 1 s request-headers timeout), `h1` and `h2` (one codec each),
/// `limited` (at most 2 connections).
async fn start(a: &Upstream, extra_args: &[&str]) -> Legate {
    let listeners = "
        - {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound, request_headers_timeout: 1s}
        - {name: h2, address: 127.0.0.1:0, protocol: http2, route_config: outbound}
        - {name: limited, address: 127.0.0.1:0, route_config: outbound, max_connections: 2}
    ";
    Legate::start_with_args(
        &bootstrap(listeners, ROUTES, &[cluster("a", &[a.addr()])]),
        extra_args,
    )
    .await
}

/// legate still answers a normal request on `outbound`.
async fn assert_alive(legate: &Legate) {
    assert!(
        legate.try_exit_status().is_none(),
        "legate exited: {}",
        legate.describe()
    );
    let url = legate.url("outbound", "/alive").await;
    get(&url).await.assert_status(200);
}

async fn metric(legate: &Legate, name: &str, labels: &[(&str, &str)]) -> f64 {
    legate.metrics().await.get_or_zero(name, labels)
}

#[tokio::test]
async fn a_partial_request_head_is_closed_after_request_headers_timeout() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("outbound").await;

    // Half a request line, then nothing: closed after about 1 s, not the 1 h idle timeout.
    let started = Instant::now();
    let reply = exchange(addr, b"GET /half HTT", Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        reply.closed,
        "a half request line held the connection: {reply:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}, expected about the 1s request_headers_timeout"
    );

    // A client dripping a byte every 200 ms never finishes its head: the timer runs from the
    // first byte, so activity does not keep it alive.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let drip = b"GET /drip HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in drip.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let closed = closed || raw::closed_within(&mut s, Duration::from_secs(2)).await;
    assert!(closed, "a dripping head was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the drip was cut off only after {:?}",
        started.elapsed()
    );
    assert_eq!(
        a.requests().await,
        0,
        "no partial head reached the upstream"
    );
    eventually(Duration::from_secs(5), "both timeouts counted", || async {
        match metric(
            &legate,
            "legate_downstream_request_headers_timeouts_total",
            &[("listener", "outbound")],
        )
        .await
        {
            n if n >= 2.0 => Ok(()),
            n => Err(format!("{n} counted")),
        }
    })
    .await;
    assert_alive(&legate).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_request_headers_timeout() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("outbound").await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (frames, _) = (
        raw::read_until_closed(&mut s, Duration::from_millis(1500)).await,
        (),
    );
    assert_eq!(frames.statuses(), vec![200], "{}", frames.text());
    assert!(
        !frames.closed,
        "an idle keep-alive connection was closed by the request-headers timer (Envoy's starts at a request's first byte)"
    );
    // Still usable after well over the 1 s timeout.
    s.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write on the idle connection");
    let reply = raw::read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(reply.statuses(), vec![200], "{}", reply.text());
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_refused_and_counted() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("limited").await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET /held{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let reply = raw::read_until_closed(&mut s, Duration::from_millis(500)).await;
        assert_eq!(
            reply.statuses(),
            vec![200],
            "held connection {i}: {reply:?}"
        );
        held.push(s);
    }
    // The third is closed at once, without an answer.
    let reply = exchange(
        addr,
        b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        reply.closed && reply.bytes.is_empty(),
        "a connection over the limit must be closed unanswered: {reply:?}"
    );
    assert_eq!(
        metric(
            &legate,
            "legate_downstream_connections_refused_total",
            &[("listener", "limited"), ("reason", "listener_limit")]
        )
        .await,
        1.0
    );
    // Another listener is not limited by this one's count.
    assert_alive(&legate).await;
    // Once a held connection goes, a new one is served.
    drop(held.pop());
    eventually(Duration::from_secs(5), "a slot freed", || async {
        let r = exchange(
            addr,
            b"GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if r.statuses() == vec![200] {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
}

#[tokio::test]
async fn connections_over_max_connections_are_refused_on_every_listener() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &["--max-connections", "2"]).await;
    let addr = legate.listener_addr("h2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&raw::h2_start()).await.expect("write");
        // The server's SETTINGS shows the connection was taken.
        let (frames, closed) =
            raw::read_frames_until(&mut s, Duration::from_secs(2), |f| f.0 == raw::SETTINGS).await;
        assert!(!closed && !frames.is_empty(), "connection not served");
        held.push(s);
    }
    let outbound = legate.listener_addr("outbound").await;
    let reply = exchange(
        outbound,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        reply.closed && reply.bytes.is_empty(),
        "over --max-connections a connection must be closed unanswered: {reply:?}"
    );
    assert_eq!(
        metric(
            &legate,
            "legate_downstream_connections_refused_total",
            &[("listener", "outbound"), ("reason", "global_limit")]
        )
        .await,
        1.0
    );
    drop(held);
    eventually(Duration::from_secs(5), "slots freed", || async {
        let r = exchange(
            outbound,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if r.statuses() == vec![200] {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
}

/// One raw HTTP/1.1 exchange that must not pass a smuggled request: legate answers
/// `expected` (or, where `expected` is empty, anything but a second answer), closes the
/// connection, and the upstream sees at most `max_upstream` requests.
async fn smuggle(addr: SocketAddr, a: &Upstream, what: &str, request: &str, expected: &[u16]) {
    let before = a.requests().await;
    let reply = exchange(addr, request.as_bytes(), Duration::from_secs(5)).await;
    let statuses = reply.statuses();
    assert!(
        reply.closed,
        "{what}: the connection must be closed after the answer: {}",
        reply.text()
    );
    assert!(
        statuses.len() <= 1,
        "{what}: a smuggled second request was answered: {}",
        reply.text()
    );
    if !expected.is_empty() {
        assert!(
            statuses.len() == 1 && expected.contains(&statuses[0]),
            "{what}: expected one of {expected:?}, got {}",
            reply.text()
        );
    }
    let after = a.requests().await;
    assert!(
        after - before <= 1,
        "{what}: the upstream saw {} requests",
        after - before
    );
}

#[tokio::test]
async fn request_smuggling_attempts_are_refused() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("outbound").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            // RFC 9112 6.3: Transfer-Encoding wins and the connection closes after the
            // answer (hyper's choice); Envoy answers 400. Either way nothing is smuggled.
            "CL.TE: both Content-Length and Transfer-Encoding",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[200, 400],
        ),
        (
            "conflicting Content-Length headers",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{smuggled}"
            ),
            &[400],
        ),
        (
            "a Content-Length list",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 40\r\n\r\nabc{smuggled}"),
            &[400],
        ),
        (
            "a signed Content-Length",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc{smuggled}"),
            &[400],
        ),
        (
            "obs-fold continuation line",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "whitespace before the colon",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n{smuggled}"),
            &[400],
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &[400, 501],
        ),
        (
            "a bad chunk size",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
            &[],
        ),
        (
            "an oversized chunk size",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
            &[],
        ),
        (
            "a NUL in a header value",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n{smuggled}"),
            &[400],
        ),
    ];
    for (what, request, expected) in cases {
        smuggle(addr, &a, what, &request, expected).await;
    }
    assert_alive(&legate).await;
}

#[tokio::test]
async fn oversized_and_too_many_headers_are_answered_431() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("outbound").await;

    let big = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(80 << 10)
    );
    let reply = exchange(addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(reply.statuses(), vec![431], "{}", reply.text());
    assert!(reply.closed, "the connection must close after a 431");

    let mut many = "GET /many HTTP/1.1\r\nHost: x\r\n".to_owned();
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = exchange(addr, many.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(reply.statuses(), vec![431], "{}", reply.text());
    assert!(reply.closed, "the connection must close after a 431");

    // Within the limits (99 headers, 60 KiB) is fine.
    let mut ok = "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_owned();
    ok.push_str(&format!("X-Big: {}\r\n", "a".repeat(60 << 10)));
    for i in 0..90 {
        ok.push_str(&format!("X-H{i}: v\r\n"));
    }
    ok.push_str("\r\n");
    let reply = exchange(addr, ok.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(reply.statuses(), vec![200], "{}", reply.text());
    assert_eq!(
        a.requests().await,
        1,
        "only the request within limits went upstream"
    );
    assert_alive(&legate).await;
}

#[tokio::test]
async fn http2_rapid_reset_ends_the_connection() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("h2").await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut burst = raw::h2_start();
    // Open and cancel streams back to back (CVE-2023-44487), bounded to 2,000 streams.
    let block = raw::get_block("x", "/reset");
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(raw::frame(
            raw::HEADERS,
            raw::END_HEADERS | raw::END_STREAM,
            id,
            &block,
        ));
        burst.extend(raw::frame(
            raw::RST_STREAM,
            0,
            id,
            &raw::CANCEL.to_be_bytes(),
        ));
    }
    let _ = s.write_all(&burst).await;
    let (frames, closed) =
        raw::read_frames_until(&mut s, Duration::from_secs(10), |f| f.0 == raw::GOAWAY).await;
    assert_eq!(
        raw::goaway_code(&frames),
        Some(raw::ENHANCE_YOUR_CALM),
        "rapid reset must end the connection with GOAWAY ENHANCE_YOUR_CALM (closed: {closed}, {} frames)",
        frames.len()
    );
    let upstream = a.requests().await;
    assert!(
        upstream < 500,
        "{upstream} of 2000 reset streams reached the upstream"
    );
    assert_alive(&legate).await;
}

#[tokio::test]
async fn http2_header_and_continuation_floods_end_the_connection() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("h2").await;

    // CONTINUATION flood: one header block that never ends, 1,000 frames of 1 KiB.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut flood = raw::h2_start();
    flood.extend(raw::frame(
        raw::HEADERS,
        0,
        1,
        &raw::get_block("x", "/flood"),
    ));
    let chunk = raw::hpack_literal("x-flood", &"a".repeat(1000));
    let mut sent_all = true;
    s.write_all(&flood).await.expect("write");
    for _ in 0..1000 {
        if s.write_all(&raw::frame(raw::CONTINUATION, 0, 1, &chunk))
            .await
            .is_err()
        {
            sent_all = false;
            break;
        }
    }
    let (frames, closed) =
        raw::read_frames_until(&mut s, Duration::from_secs(10), |f| f.0 == raw::GOAWAY).await;
    assert!(
        !sent_all || closed || raw::goaway_code(&frames).is_some(),
        "an endless header block (1 MB of CONTINUATION) must end the connection"
    );

    // One header list over the 64 KiB limit, with END_HEADERS: refused, not forwarded.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut big = raw::h2_start();
    let mut block = raw::get_block("x", "/big");
    block.extend(raw::hpack_literal("x-big", &"a".repeat(80 << 10)));
    // Split over HEADERS + CONTINUATION frames of 16 KiB (the largest frame legate takes).
    let pieces: Vec<&[u8]> = block.chunks(16 << 10).collect();
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let kind = if i == 0 {
            raw::HEADERS
        } else {
            raw::CONTINUATION
        };
        let flags =
            if last { raw::END_HEADERS } else { 0 } | if i == 0 { raw::END_STREAM } else { 0 };
        big.extend(raw::frame(kind, flags, 1, p));
    }
    let _ = s.write_all(&big).await;
    let (frames, closed) = raw::read_frames_until(&mut s, Duration::from_secs(10), |f| {
        f.0 == raw::GOAWAY || f.0 == raw::RST_STREAM || (f.0 == raw::HEADERS && f.2 == 1)
    })
    .await;
    let answered_ok = frames.iter().any(|f| {
        f.0 == raw::HEADERS && f.2 == 1 && f.3.first() == Some(&0x88) // :status 200
    });
    assert!(
        !answered_ok,
        "an 80 KiB header list passed the 64 KiB limit"
    );
    assert!(
        closed
            || frames
                .iter()
                .any(|f| f.0 == raw::GOAWAY || f.0 == raw::RST_STREAM || f.0 == raw::HEADERS),
        "an oversized header list got no answer at all"
    );
    assert_eq!(a.requests().await, 0, "nothing reached the upstream");
    assert_alive(&legate).await;
}

// --- fuzz ----------------------------------------------------------------------------------

/// Cases per run: a few hundred in `make test`, more with `LEGATE_FUZZ_CASES` (`make fuzz`).
fn fuzz_cases() -> usize {
    std::env::var("LEGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Valid requests to mutate.
const SEEDS: &[&[u8]] = &[
    b"GET /seed HTTP/1.1\r\nHost: example.com\r\nUser-Agent: fuzz\r\n\r\n",
    b"POST /seed HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /seed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /seed?q=1 HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
];

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b":",
    b"\r\n ",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Host: a\r\nHost: b\r\n",
    b"\xff\xfe",
    b"HTTP/2.0",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n",
    b"Expect: 100-continue\r\n",
];

/// One fuzz input: random bytes, or a valid request mutated a few times.
fn fuzz_input(rng: &mut fastrand::Rng) -> Vec<u8> {
    if rng.u8(0..8) == 0 {
        let len = rng.usize(0..2048);
        return (0..len).map(|_| rng.u8(..)).collect();
    }
    let mut v = SEEDS[rng.usize(0..SEEDS.len())].to_vec();
    for _ in 0..rng.usize(1..5) {
        let at = rng.usize(0..=v.len());
        match rng.u8(0..6) {
            0 => {
                v.insert(at, rng.u8(..));
            }
            1 if !v.is_empty() => {
                v.remove(at.min(v.len() - 1));
            }
            2 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.u8(..);
            }
            3 => {
                let piece = INTERESTING[rng.usize(0..INTERESTING.len())];
                v.splice(at..at, piece.iter().copied());
            }
            4 => {
                // A long run, to cross the size limits.
                let run = vec![rng.alphanumeric() as u8; rng.usize(1..100_000)];
                v.splice(at..at, run);
            }
            _ => {
                v.truncate(at);
            }
        }
    }
    v
}

/// Answers to input that is not HTTP legate can serve: after one, the connection closes.
const REFUSALS: &[u16] = &[400, 413, 414, 431, 501, 505];

/// Send `input` on a new connection and judge what comes back: statuses a client may get
/// for bad input (400, 413, 414, 431, 501) or a valid answer; after an error answer, or no
/// answer at all, the connection must be closed (a partial head by the 1 s
/// request_headers_timeout).
async fn fuzz_one(addr: SocketAddr, case: usize, seed: u64, input: Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(&input).await;
    let reply = raw::read_until(&mut s, Duration::from_secs(4), |b| {
        // A complete success answer ends the wait early: a valid request may keep its
        // connection.
        let r = raw::Reply {
            bytes: b.to_vec(),
            closed: false,
        };
        let st = r.statuses();
        !st.is_empty()
            && st.iter().all(|c| !REFUSALS.contains(c))
            && b.windows(4).any(|w| w == b"\r\n\r\n")
    })
    .await;
    let what = || {
        format!(
            "case {case} (LEGATE_FUZZ_SEED={seed}): input {:?}\nreply {:?} closed={}",
            String::from_utf8_lossy(&input[..input.len().min(300)]),
            reply.text().chars().take(300).collect::<String>(),
            reply.closed
        )
    };
    let statuses = reply.statuses();
    for status in &statuses {
        assert!(
            (100..500).contains(status) || matches!(status, 501..=504),
            "unexpected status {status}: {}",
            what()
        );
    }
    let h2 = !reply.bytes.is_empty() && !reply.bytes.starts_with(b"HTTP/1.");
    if h2 {
        assert_eq!(
            raw::parse_frames(&reply.bytes).first().map(|f| f.0),
            Some(raw::SETTINGS),
            "neither HTTP/1 nor HTTP/2 came back: {}",
            what()
        );
        return;
    }
    let error = statuses.iter().any(|c| REFUSALS.contains(c));
    // Without an answer, a complete head may be waiting for its body (bounded by the
    // stream idle timeout, as in Envoy); an incomplete one must have been cut off.
    let head_complete =
        input.windows(4).any(|w| w == b"\r\n\r\n") || input.windows(2).any(|w| w == b"\n\n");
    // No byte at all is an idle connection: the idle timeout's business, as in Envoy.
    if error || (statuses.is_empty() && !head_complete && !input.is_empty()) {
        assert!(
            reply.closed,
            "the connection stayed open after an error or a partial head: {}",
            what()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_request_bytes_get_valid_answers_and_closed_connections() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, &[]).await;
    let addr = legate.listener_addr("outbound").await;
    let seed = std::env::var("LEGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1e6a7e);
    let mut rng = fastrand::Rng::with_seed(seed);
    let cases = fuzz_cases();
    let inputs: Vec<Vec<u8>> = (0..cases).map(|_| fuzz_input(&mut rng)).collect();
    // Bounded in time as well as count: 25 connections at a time, at most 4 s each.
    let started = Instant::now();
    let bound = Duration::from_secs(30 + 5 * cases as u64 / 25);
    let mut case = 0;
    for batch in inputs.chunks(25) {
        let mut set = tokio::task::JoinSet::new();
        for input in batch {
            set.spawn(fuzz_one(addr, case, seed, input.clone()));
            case += 1;
        }
        while let Some(res) = set.join_next().await {
            if let Err(e) = res {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        assert!(
            started.elapsed() < bound,
            "fuzz run over its time bound after {case} cases"
        );
        assert!(
            legate.try_exit_status().is_none(),
            "legate exited during the fuzz run (after case {case}): {}",
            legate.describe()
        );
    }
    assert_alive(&legate).await;
}
