//! SIGTERM: stop accepting, let in-flight requests finish (up to `drain_timeout`), exit 0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::config::{bootstrap_with_drain, cluster};
use legate_tests::{Legate, Protocol, Upstream, eventually};

async fn start(a: &Upstream, drain_timeout: &str) -> Legate {
    let route_configs = r#"
        - name: outbound
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {prefix: /}
                  forward: {cluster: a, timeout: 60s}
    "#;
    Legate::start(&bootstrap_with_drain(
        "- {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}",
        route_configs,
        &[cluster("a", &[a.addr()])],
        drain_timeout,
    ))
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
