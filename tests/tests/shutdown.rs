//! SIGTERM, as Envoy's drain: `/ready` answers 503 and listeners keep accepting for
//! `--drain-time` while clients are told to go (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY);
//! then they stop accepting, in-flight requests get `drain_timeout`, what is left is closed,
//! and legate exits 0. Also: a listener port is never shared with another process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::config::{bootstrap, bootstrap_with_drain, cluster, mesh};
use legate_tests::raw::{self, exchange};
use legate_tests::xds_server::LDS;
use legate_tests::{
    Legate, Mode, Protocol, Upstream, XdsFlags, XdsServer, eventually, free_port, get, run_legate,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// legate with `drain_timeout`, and no drain window (`--drain-time 0s`): SIGTERM stops
/// accepting at once.
async fn start(a: &Upstream, drain_timeout: &str) -> Legate {
    start_draining(a, drain_timeout, "0s").await
}

async fn start_draining(a: &Upstream, drain_timeout: &str, drain_time: &str) -> Legate {
    let route_configs = r#"
        - name: outbound
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {prefix: /}
                  forward: {cluster: a, timeout: 60s}
    "#;
    Legate::start_with_args(
        &bootstrap_with_drain(
            "- {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}",
            route_configs,
            &[cluster("a", &[a.addr()])],
            drain_timeout,
        ),
        &["--drain-time", drain_time],
    )
    .await
}

/// Whether a new TCP connection to `addr` is refused (or fails) within 500 ms.
async fn connect_refused(addr: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Err(_)) => Ok(()),
        Ok(Ok(_)) => Err(format!("a new connection to {addr} was accepted")),
        Err(_) => Err(format!(
            "connecting to {addr} hung instead of being refused"
        )),
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, "5s").await;
    let addr = legate.listener_addr("outbound").await;

    let in_flight = tokio::spawn(async move {
        HttpClient::http1()
            .try_get(&format!("http://{addr}/slow?delay=2s"))
            .await
    });
    eventually(
        Duration::from_secs(5),
        "the slow request reached the upstream",
        || async {
            match a.requests().await {
                1 => Ok(()),
                n => Err(format!("upstream saw {n} requests")),
            }
        },
    )
    .await;

    legate.sigterm();
    eventually(
        Duration::from_secs(1),
        "new connections refused after SIGTERM",
        || connect_refused(addr),
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before the listener closed; it should still be running"
    );

    let response = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("in-flight request finished within 10s")
        .expect("request task")
        .unwrap_or_else(|error| panic!("the in-flight request failed during drain: {error:#}"));
    response.assert_status(200);
    assert_eq!(response.upstream(), Some("a"));

    let status = legate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "legate exit status: {status}");
}

#[tokio::test]
async fn sigterm_with_idle_keep_alive_exits_promptly() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, "5s").await;
    let url = legate.url("outbound", "/").await;
    // Leaves an idle keep-alive connection open in the client's pool.
    let http = HttpClient::http1();
    http.get(&url).await.assert_status(200);

    let started = Instant::now();
    legate.sigterm();
    let status = legate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "legate exit status: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "with nothing in flight, exit should not wait out the 5s drain_timeout (took {:?})",
        started.elapsed()
    );
    drop(http);
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start(&a, "1s").await;
    let addr = legate.listener_addr("outbound").await;
    let stuck = tokio::spawn(async move {
        HttpClient::http1()
            .with_timeout(Duration::from_secs(20))
            .try_get(&format!("http://{addr}/stuck?hang=1"))
            .await
    });
    eventually(
        Duration::from_secs(5),
        "the stuck request reached the upstream",
        || async {
            match a.requests().await {
                1 => Ok(()),
                n => Err(format!("upstream saw {n} requests")),
            }
        },
    )
    .await;

    let started = Instant::now();
    legate.sigterm();
    let status = legate.wait_exit(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "legate exit status: {status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a 1s drain_timeout with a stuck request should exit after about 1s, took {took:?}"
    );
    let result = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("stuck request ended once legate exited")
        .expect("request task");
    assert!(
        !matches!(&result, Ok(r) if r.status == 200),
        "a request cut off by the drain timeout cannot have succeeded: {result:?}"
    );
}

const ROUTES: &str = r#"
    - name: outbound
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              forward: {cluster: a, timeout: 60s}
"#;

/// Read one HTTP/1.1 answer's head from a keep-alive connection.
async fn answer_head(s: &mut TcpStream) -> raw::Reply {
    raw::read_until(s, Duration::from_secs(5), |b| {
        b.windows(4).any(|w| w == b"\r\n\r\n")
    })
    .await
}

#[tokio::test]
async fn sigterm_drain_window_keeps_accepting_and_tells_clients_to_go() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let legate = start_draining(&a, "5s", "3s").await;
    let addr = legate.listener_addr("outbound").await;
    assert_eq!(legate.ready_status().await, 200);

    // An HTTP/1.1 keep-alive connection and an HTTP/2 one, each with a request done.
    let mut h1 = TcpStream::connect(addr).await.expect("connect");
    h1.write_all(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let before = answer_head(&mut h1).await;
    assert_eq!(before.statuses(), vec![200], "{}", before.text());
    let mut h2 = TcpStream::connect(addr).await.expect("connect");
    let mut start = raw::h2_start();
    start.extend(raw::frame(
        raw::HEADERS,
        raw::END_HEADERS | raw::END_STREAM,
        1,
        &raw::get_block("x", "/before"),
    ));
    h2.write_all(&start).await.expect("write");
    let (frames, closed) = raw::read_frames_until(&mut h2, Duration::from_secs(5), |f| {
        f.0 == raw::HEADERS && f.2 == 1
    })
    .await;
    assert!(
        !closed && frames.iter().any(|f| f.0 == raw::HEADERS),
        "h2 request answered"
    );

    let signalled = Instant::now();
    legate.sigterm();
    eventually(Duration::from_secs(2), "/ready answers 503", || async {
        match legate.ready_status().await {
            503 => Ok(()),
            s => Err(format!("{s}")),
        }
    })
    .await;

    // HTTP/2: a GOAWAY right away.
    let (frames, _) =
        raw::read_frames_until(&mut h2, Duration::from_secs(2), |f| f.0 == raw::GOAWAY).await;
    assert_eq!(
        raw::goaway_code(&frames),
        Some(0),
        "an HTTP/2 connection gets GOAWAY NO_ERROR when the drain starts"
    );

    // HTTP/1.1: the next answer carries Connection: close, and the connection closes.
    h1.write_all(b"GET /during HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let during = raw::read_until_closed(&mut h1, Duration::from_secs(5)).await;
    assert_eq!(during.statuses(), vec![200], "{}", during.text());
    assert!(
        during
            .text()
            .to_ascii_lowercase()
            .contains("connection: close"),
        "an answer during the drain must carry Connection: close: {}",
        during.text()
    );
    assert!(during.closed, "the connection closes after that answer");

    // New connections are still accepted and served during the window.
    assert!(
        signalled.elapsed() < Duration::from_millis(2500),
        "still in the window"
    );
    let fresh = exchange(
        addr,
        b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(fresh.statuses(), vec![200], "{}", fresh.text());
    assert!(
        fresh.closed,
        "a new connection is closed after its answer during the drain"
    );

    // After the window the listener closes, and legate exits 0.
    eventually(
        Duration::from_secs(6),
        "new connections refused after the drain window",
        || connect_refused(addr),
    )
    .await;
    assert!(
        signalled.elapsed() >= Duration::from_millis(2900),
        "the listener closed before the 3s drain window ended ({:?})",
        signalled.elapsed()
    );
    let status = legate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "legate exit status: {status}");
}

/// A listener removed over xDS stops accepting and drains; a connection still busy when
/// `drain_timeout` ends is closed, while legate goes on serving its other listeners.
#[tokio::test]
async fn a_removed_listener_closes_lingering_connections_after_drain_timeout() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let server = XdsServer::start().await;
    let both = "
        - {name: outbound, address: 127.0.0.1:0, route_config: outbound}
        - {name: other, address: 127.0.0.1:0, route_config: outbound}
    ";
    let only_other = "- {name: other, address: 127.0.0.1:0, route_config: outbound}";
    server.set_mesh(&mesh(both, ROUTES, &[cluster("a", &[a.addr()])]));
    let legate = Legate::start_xds(
        &XdsFlags::new(&server.url(), Mode::Sotw)
            .arg("--drain-timeout")
            .arg("1s"),
    )
    .await;
    let addr = legate.listener_addr("outbound").await;
    let mut stuck = TcpStream::connect(addr).await.expect("connect");
    stuck
        .write_all(b"GET /stuck?hang=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    eventually(
        Duration::from_secs(5),
        "the stuck request reached the upstream",
        || async {
            match a.requests().await {
                1 => Ok(()),
                n => Err(format!("upstream saw {n} requests")),
            }
        },
    )
    .await;

    let removed = Instant::now();
    let pushes = server.set_mesh(&mesh(only_other, ROUTES, &[cluster("a", &[a.addr()])]));
    for p in pushes.iter().filter(|p| p.type_url == LDS) {
        server.wait_acked(p, Duration::from_secs(10)).await;
    }
    assert!(
        raw::closed_within(&mut stuck, Duration::from_secs(5)).await,
        "a connection on a removed listener outlived drain_timeout"
    );
    let took = removed.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed before the 1s drain_timeout ({took:?})"
    );
    let other = legate.url("other", "/after").await;
    get(&other).await.assert_status(200);
}

/// Two legate processes configured with the same listener address: the second fails to
/// start with a clear error instead of sharing the port (SO_REUSEPORT let the kernel split
/// requests between them).
#[tokio::test]
async fn a_second_legate_cannot_share_a_listener_port() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let port = free_port();
    let config = bootstrap(
        &format!("- {{name: outbound, address: '{port}', route_config: outbound}}"),
        ROUTES,
        &[cluster("a", &[a.addr()])],
    );
    let first = Legate::start(&config).await;
    assert_eq!(first.listener_addr("outbound").await, port);

    let path = first.dir().join("second.yaml");
    std::fs::write(&path, &config).expect("write config");
    let path = path.display().to_string();
    let second = run_legate(&["--config", &path], Duration::from_secs(20));
    assert_eq!(
        second.status.code(),
        Some(1),
        "a second legate on {port} must fail: {second:?}"
    );
    let text = format!("{}{}", second.stdout, second.stderr);
    assert!(
        text.contains(&format!("cannot bind {port}")) && text.contains("in use"),
        "the error must name the address and the cause: {text}"
    );
    // Every request reaches the first legate.
    let url = format!("http://{port}/shared");
    for _ in 0..20 {
        get(&url).await.assert_status(200);
    }
    assert_eq!(a.requests().await, 20);
}

/// A listener from xDS on a port another process serves (two nodes on one host given the
/// same listener) is NACKed with the bind error, and the old listeners keep serving.
#[tokio::test]
async fn an_xds_listener_on_a_taken_port_is_nacked_and_the_old_config_serves() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let port = free_port();
    let taken = Legate::start(&bootstrap(
        &format!("- {{name: outbound, address: '{port}', route_config: outbound}}"),
        ROUTES,
        &[cluster("a", &[a.addr()])],
    ))
    .await;
    assert_eq!(taken.listener_addr("outbound").await, port);

    let server = XdsServer::start().await;
    let clusters = [cluster("a", &[a.addr()])];
    server.set_mesh(&mesh(
        "- {name: outbound, address: 127.0.0.1:0, route_config: outbound}",
        ROUTES,
        &clusters,
    ));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), Mode::Sotw)).await;
    let old = legate.listener_addr("outbound").await;
    let pushes = server.set_mesh(&mesh(
        &format!("- {{name: outbound, address: '{port}', route_config: outbound}}"),
        ROUTES,
        &clusters,
    ));
    let lds = pushes
        .iter()
        .find(|p| p.type_url == LDS)
        .expect("an LDS push");
    let nack = server
        .wait_nacked(lds, Duration::from_secs(10))
        .await
        .remove(0);
    let message = nack.error.clone().expect("error_detail").message;
    assert!(
        message.contains(&format!("cannot bind {port}")) && message.contains("in use"),
        "the NACK must carry the bind error: {message}"
    );
    get(&format!("http://{old}/still")).await.assert_status(200);
    assert_eq!(legate.listener_addr("outbound").await, old);
}
