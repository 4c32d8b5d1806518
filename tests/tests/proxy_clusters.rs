//! Clusters: load balancing, endpoint weights, discovery, upstream protocols, pooling and
//! upstream failures, end to end through `legate`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use legate_tests::client::{HttpClient, tally};
use legate_tests::config::{cluster, forward_all};
use legate_tests::{Legate, Protocol, Upstream, closed_port, eventually};

async fn upstreams(names: &[&str]) -> Vec<Upstream> {
    let mut out = Vec::new();
    for name in names {
        out.push(Upstream::start(name, "v1", Protocol::Auto).await);
    }
    out
}

fn addrs(upstreams: &[Upstream]) -> Vec<std::net::SocketAddr> {
    upstreams.iter().map(Upstream::addr).collect()
}

fn count(counts: &BTreeMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn round_robin_cycles_through_hosts() {
    let ups = upstreams(&["a", "b", "c"]).await;
    let legate = Legate::start(&forward_all(cluster("rr", &addrs(&ups)))).await;
    let url = legate.url("outbound", "/").await;
    let sequence = HttpClient::http1().upstream_sequence(&url, 30).await;
    let first_three: std::collections::BTreeSet<_> = sequence[..3].iter().collect();
    assert_eq!(
        first_three.len(),
        3,
        "the first three requests should hit three different hosts: {sequence:?}"
    );
    for (i, name) in sequence.iter().enumerate() {
        assert_eq!(
            name,
            &sequence[i % 3],
            "round robin must repeat the same cycle: {sequence:?}"
        );
    }
    let counts = tally(sequence);
    for up in &ups {
        assert_eq!(count(&counts, up.name()), 10, "{counts:?}");
        assert_eq!(up.requests().await, 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_request_avoids_a_slow_host() {
    let slow = Upstream::start_with_args("slow", "v1", Protocol::Auto, &["--delay", "300ms"]).await;
    let fast = upstreams(&["fast1", "fast2"]).await;
    let mut endpoints = addrs(&fast);
    endpoints.push(slow.addr());
    let legate = Legate::start(&forward_all(cluster("lr", &endpoints).lb("least_request"))).await;
    let url = Arc::new(legate.url("outbound", "/").await);

    const TOTAL: usize = 300;
    const WORKERS: usize = 8;
    let next = Arc::new(AtomicUsize::new(0));
    let http = HttpClient::http1();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (next, http, url) = (next.clone(), http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                names.extend(http.upstream_sequence(&url, 1).await);
            }
            names
        }));
    }
    let mut names = Vec::new();
    for task in tasks {
        names.extend(task.await.expect("worker panicked"));
    }
    let counts = tally(names);
    assert_eq!(counts.values().sum::<usize>(), TOTAL, "{counts:?}");
    // Round robin would give the slow host 100; least request sends it only a trickle.
    assert!(
        count(&counts, "slow") < TOTAL / 6,
        "least_request sent too much to the slow host: {counts:?}"
    );
    assert!(
        count(&counts, "fast1") > 0 && count(&counts, "fast2") > 0,
        "{counts:?}"
    );
}

#[tokio::test]
async fn random_reaches_every_host() {
    let ups = upstreams(&["a", "b", "c"]).await;
    let legate = Legate::start(&forward_all(cluster("rnd", &addrs(&ups)).lb("random"))).await;
    let url = legate.url("outbound", "/").await;
    let counts = HttpClient::http1().upstream_tally(&url, 60).await;
    // Missing a host in 60 uniform picks has probability 3·(2/3)^60 ≈ 1e-10.
    for up in &ups {
        assert!(count(&counts, up.name()) > 0, "{counts:?}");
    }
    assert_eq!(counts.values().sum::<usize>(), 60);
}

#[tokio::test]
async fn endpoint_weights_split_three_to_one() {
    for lb in ["round_robin", "random"] {
        let ups = upstreams(&["heavy", "light"]).await;
        let legate = Legate::start(&forward_all(
            cluster("w", &[])
                .lb(lb)
                .weighted(&[(ups[0].addr(), 3), (ups[1].addr(), 1)]),
        ))
        .await;
        let url = legate.url("outbound", "/").await;
        let counts = HttpClient::http1().upstream_tally(&url, 400).await;
        // Expected 300/100; ±50 is more than 5σ for a random pick.
        assert!(
            (250..=350).contains(&count(&counts, "heavy")),
            "{lb}: 3:1 weights gave {counts:?}"
        );
        assert_eq!(counts.values().sum::<usize>(), 400);
    }
}

#[tokio::test]
async fn strict_dns_resolves_localhost() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    let host = format!("localhost:{}", a.addr().port());
    let legate = Legate::start(&forward_all(cluster("dns", &[]).strict_dns(&[&host], "1s"))).await;
    let url = legate.url("outbound", "/dns").await;
    let counts = HttpClient::http1().upstream_tally(&url, 10).await;
    assert_eq!(count(&counts, "a"), 10, "{counts:?}");

    let clusters = legate.admin_json("/clusters").await;
    let expected = a.addr().to_string();
    let hosts = clusters["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "dns"))
        .and_then(|c| c["hosts"].as_array())
        .unwrap_or_else(|| panic!("no cluster dns with hosts in /clusters: {clusters}"));
    assert!(
        hosts.iter().any(|h| h["address"] == expected.as_str()),
        "localhost should resolve to {expected}: {clusters}"
    );
}

#[tokio::test]
async fn http2_upstream_cluster() {
    let a = Upstream::start("a", "v1", Protocol::Http2).await;
    let legate = Legate::start(&forward_all(cluster("h2", &[a.addr()]).protocol("http2"))).await;
    let url = legate.url("outbound", "/over-h2?x=1").await;
    let http = HttpClient::http1();
    for _ in 0..20 {
        let response = http.get(&url).await;
        response.assert_status(200);
        let echo = response.echo();
        assert_eq!(echo.protocol, "HTTP/2.0");
        assert_eq!(echo.path, "/over-h2?x=1");
    }
    let response = http
        .request(
            "POST",
            &url,
            &[],
            legate_tests::client::full(vec![1u8; 100_000]),
        )
        .await;
    assert_eq!(response.echo().body_bytes, 100_000);
    assert_eq!(
        a.counters().await.connections,
        1,
        "sequential requests share one HTTP/2 connection"
    );
}

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let legate = Legate::start(&forward_all(cluster("a", &[a.addr()]).idle_timeout("60s"))).await;
    let url = legate.url("outbound", "/ka").await;
    let http = HttpClient::http1();
    for round in 0..5 {
        for _ in 0..10 {
            http.get(&url).await.assert_status(200);
        }
        let open = legate
            .metrics()
            .await
            .value("legate_upstream_connections_open", &[("cluster", "a")]);
        assert_eq!(
            open,
            1.0,
            "after {} sequential requests there should be one pooled connection",
            (round + 1) * 10
        );
    }
    let counters = a.counters().await;
    assert_eq!(counters.requests, 50);
    assert_eq!(
        counters.connections, 1,
        "the upstream saw more than one connection"
    );
}

/// `idle_timeout` closes pooled upstream connections that carried no request for that
/// long, for both HTTP/1.1 and HTTP/2 clusters; the next request opens a new one.
#[tokio::test]
async fn idle_upstream_connections_are_closed() {
    for protocol in ["http1", "http2"] {
        let a = Upstream::start("a", "v1", Protocol::Auto).await;
        let legate = Legate::start(&forward_all(
            cluster("a", &[a.addr()])
                .protocol(protocol)
                .idle_timeout("300ms"),
        ))
        .await;
        let url = legate.url("outbound", "/idle").await;
        let http = HttpClient::http1();
        http.get(&url).await.assert_status(200);
        let open = legate
            .metrics()
            .await
            .value("legate_upstream_connections_open", &[("cluster", "a")]);
        assert_eq!(
            open, 1.0,
            "{protocol}: one pooled connection after a request"
        );
        eventually(
            Duration::from_secs(5),
            "idle upstream connection closed",
            || async {
                let open = legate
                    .metrics()
                    .await
                    .value("legate_upstream_connections_open", &[("cluster", "a")]);
                if open == 0.0 {
                    Ok(())
                } else {
                    Err(format!("{protocol}: {open} open"))
                }
            },
        )
        .await;
        http.get(&url).await.assert_status(200);
        assert_eq!(
            a.counters().await.connections,
            2,
            "{protocol}: a new connection after idle"
        );
    }
}

#[tokio::test]
async fn connect_failure_answers_503() {
    let dead = closed_port();
    let legate = Legate::start(&forward_all(cluster("dead", &[dead]))).await;
    let url = legate.url("outbound", "/").await;
    let started = Instant::now();
    let response = HttpClient::http1().get(&url).await;
    response.assert_status(503);
    assert_eq!(
        response.legate_error(),
        Some("connect-failure"),
        "{}",
        response.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection should fail fast, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn upstream_reset_answers_503() {
    let h1 = Upstream::start("h1", "v1", Protocol::Http1).await;
    let h2 = Upstream::start("h2", "v1", Protocol::Http2).await;
    for (up, protocol) in [(&h1, "http1"), (&h2, "http2")] {
        let legate =
            Legate::start(&forward_all(cluster("r", &[up.addr()]).protocol(protocol))).await;
        let url = legate.url("outbound", "/r?reset=1").await;
        let response = HttpClient::http1().get(&url).await;
        response.assert_status(503);
        assert_eq!(
            response.legate_error(),
            Some("upstream-reset"),
            "{protocol} upstream: {}",
            response.describe()
        );
        // The pool recovers: the next request works.
        let ok = HttpClient::http1()
            .get(&legate.url("outbound", "/fine").await)
            .await;
        ok.assert_status(200);
    }
}

#[tokio::test]
async fn no_healthy_upstream_metric_settles() {
    // A cluster without endpoints has nothing to pick.
    let legate = Legate::start(&forward_all(cluster("empty", &[]))).await;
    let url = legate.url("outbound", "/").await;
    let response = HttpClient::http1().get(&url).await;
    response.assert_status(503);
    assert_eq!(
        response.legate_error(),
        Some("no-healthy-upstream"),
        "{}",
        response.describe()
    );
    eventually(Duration::from_secs(2), "local reply counted", || async {
        let metrics = legate.metrics().await;
        match metrics.get(
            "legate_local_replies_total",
            &[("reason", "no-healthy-upstream")],
        ) {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
