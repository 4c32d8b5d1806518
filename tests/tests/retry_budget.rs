//! Safe retries by default: a service that legate-cp compiles gets a retry budget (20 % of
//! the requests in flight, at least 3) unless its policies limit retries themselves. During a
//! total upstream outage under a bounded load, legate sends at most 1.2 attempts per request.
//! The same load against a service whose policies lift the limit (`max_retries: 1000`) sends
//! every retry its route allows, which shows the budget is what holds the first one back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::cp::ControlPlane;
use legate_tests::process::TempDir;
use legate_tests::{
    FaultSettings, Legate, Mode, Protocol, Upstream, XdsFlags, eventually, free_port,
};

const WAIT: Duration = Duration::from_secs(20);
/// Clients at once: enough that 20 % of the requests in flight exceeds the budget's floor.
const CLIENTS: usize = 40;
/// Each client stops after this many requests or this long, whichever comes first.
const REQUESTS_PER_CLIENT: u64 = 25;
const MAX_DURATION: Duration = Duration::from_secs(60);

fn mesh(listener: SocketAddr, guarded: SocketAddr, unguarded: SocketAddr) -> String {
    format!(
        "proxy:
  listener: {{name: outbound, address: {listener}, protocol: auto}}
services:
  - name: guarded
    endpoints: [{{address: {guarded}}}]
    route: {{prefix: /guarded, timeout: 10s}}
    policies:
      retries: {{on: [5xx], attempts: 3}}
  - name: unguarded
    endpoints: [{{address: {unguarded}}}]
    route: {{prefix: /unguarded, timeout: 10s}}
    policies:
      retries: {{on: [5xx], attempts: 3}}
      circuit_breakers: {{max_retries: 1000}}
"
    )
}

/// Sends `CLIENTS` × `REQUESTS_PER_CLIENT` GETs (bounded in time too); returns how many
/// were answered, and checks each was a 503.
async fn load(url: &str) -> u64 {
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, answered) = (url.to_owned(), answered.clone());
            tokio::spawn(async move {
                let http = HttpClient::http1().with_timeout(Duration::from_secs(15));
                for _ in 0..REQUESTS_PER_CLIENT {
                    if started.elapsed() > MAX_DURATION {
                        break;
                    }
                    let r = http.get(&url).await;
                    assert_eq!(r.status, 503, "{}", r.describe());
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("a client panicked");
    }
    answered.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_not_amplified_by_retries() {
    let guarded = Upstream::start("guarded", "v1", Protocol::Auto).await;
    let unguarded = Upstream::start("unguarded", "v1", Protocol::Auto).await;
    let listener = free_port();
    let dir = TempDir::new("retry-budget");
    let config = dir.write(
        "mesh.yaml",
        &mesh(listener, guarded.addr(), unguarded.addr()),
    );
    let cp = ControlPlane::start(&config, &dir.path().join("cp-data")).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("budget-1", "budget")).await;
    let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
    for name in ["guarded", "unguarded"] {
        let url = format!("http://{listener}/{name}");
        eventually(WAIT, &format!("legate serves {name}"), || async {
            match http.try_get(&url).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(r.describe()),
                Err(error) => Err(format!("{error:#}")),
            }
        })
        .await;
    }

    // The budget is in what legate received.
    let dump = http.get(&legate.admin_url("/config_dump")).await.text();
    assert!(dump.contains("\"budget_percent\""), "{dump}");

    // The outage: every request answered 503, at once and then, as by an overloaded
    // backend, after 10 ms.
    let mut ratios = Vec::new();
    for delay in [None, Some(Duration::from_millis(10))] {
        let outage = FaultSettings {
            fail_ratio: Some(1.0),
            fail_status: Some(503),
            delay: Some(delay.unwrap_or_default()),
            ..Default::default()
        };
        guarded.set_faults(&outage).await;
        let before = guarded.counters().await.requests;
        let requests = load(&format!("http://{listener}/guarded")).await;
        let attempts = guarded.counters().await.requests - before;
        let ratio = attempts as f64 / requests as f64;
        assert!(requests >= 100, "{requests} requests answered");
        assert!(
            ratio <= 1.2,
            "{attempts} attempts for {requests} requests ({ratio:.3}) with the default budget, \
             failures delayed {delay:?}\n{}",
            legate.describe()
        );
        // Retries were not simply off: the budget let some through.
        assert!(
            attempts > requests,
            "{attempts} attempts, {requests} requests"
        );
        ratios.push(ratio);
    }

    unguarded
        .set_faults(&FaultSettings {
            fail_ratio: Some(1.0),
            fail_status: Some(503),
            ..Default::default()
        })
        .await;
    let before = unguarded.counters().await.requests;
    let requests = load(&format!("http://{listener}/unguarded")).await;
    let attempts = unguarded.counters().await.requests - before;
    let ratio = attempts as f64 / requests as f64;
    assert!(
        ratio >= 3.0,
        "{attempts} attempts for {requests} requests ({ratio:.3}) without a limit"
    );
    eprintln!(
        "attempts per request with the default budget: {:.3} (instant 503), {:.3} (503 after \
         10 ms); without a limit: {ratio:.3}",
        ratios[0], ratios[1]
    );
}
