//! Chaos: while a few clients send requests through legate, legate-cp is killed (SIGKILL) and
//! restarted ten times on the same address and data directory, one host of a two-host
//! cluster is killed and restarted, and the weights are changed twice between restarts. No
//! request may fail, and legate must end on the latest configuration: the one legate-cp
//! serves, which has every request going to the version the last change chose.
//!
//! The route is configured as an operator would for idempotent GETs: retries on
//! connect-failure and reset, on a host not tried yet, with a retry limit that the clients'
//! concurrency cannot exhaust. legate's own behaviour during a control plane outage (it
//! keeps serving what it has and reconnects with capped backoff) needs no configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::cp::ControlPlane;
use legate_tests::process::TempDir;
use legate_tests::{Legate, Mode, Protocol, Upstream, XdsFlags, eventually, free_port};

/// Upper bound of each wait for the proxy or legate-cp to reach a state.
const WAIT: Duration = Duration::from_secs(20);
const CLIENTS: usize = 4;
/// Each client stops after this many requests or this long, whichever comes first.
const MAX_REQUESTS_PER_CLIENT: u64 = 50_000;
const MAX_DURATION: Duration = Duration::from_secs(180);
const CP_RESTARTS: usize = 10;

fn mesh(listener: SocketAddr, a: [SocketAddr; 2], b: SocketAddr) -> String {
    format!(
        "proxy:
  listener: {{name: outbound, address: {listener}, protocol: auto}}
services:
  - name: svc
    connect_timeout: 1s
    versions:
      - name: a
        weight: 100
        endpoints: [{{address: {}}}, {{address: {}}}]
      - name: b
        weight: 0
        endpoints: [{{address: {b}}}]
    route: {{prefix: /, timeout: 10s}}
    policies:
      retries:
        on: [connect-failure, reset]
        attempts: 3
        per_try_timeout: 3s
        previous_hosts: true
      circuit_breakers: {{max_retries: 1000}}
",
        a[0], a[1]
    )
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    by_upstream: std::sync::Mutex<BTreeMap<String, u64>>,
    failures: std::sync::Mutex<Vec<String>>,
}

fn start_clients(
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| {
            let (url, stop, tally) = (url.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let http = HttpClient::http1().with_timeout(Duration::from_secs(15));
                let started = Instant::now();
                for _ in 0..MAX_REQUESTS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_DURATION {
                        break;
                    }
                    match http.try_get(&url).await {
                        Ok(r) if r.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let name = r.upstream().unwrap_or("?").to_owned();
                            *tally
                                .by_upstream
                                .lock()
                                .expect("tally")
                                .entry(name)
                                .or_default() += 1;
                        }
                        Ok(r) => tally.failures.lock().expect("tally").push(r.describe()),
                        Err(error) => tally
                            .failures
                            .lock()
                            .expect("tally")
                            .push(format!("{error:#}")),
                    }
                }
            })
        })
        .collect()
}

/// Waits until the clients have had `n` more successful answers (progress under chaos).
async fn progress(tally: &Tally, n: u64, what: &str) {
    let from = tally.ok.load(Ordering::Relaxed);
    eventually(WAIT, what, || async {
        let now = tally.ok.load(Ordering::Relaxed);
        if now >= from + n {
            Ok(())
        } else {
            Err(format!("{} answers since", now - from))
        }
    })
    .await;
}

async fn xds_connected(legate: &Legate, want: bool) {
    let value = if want { 1.0 } else { 0.0 };
    eventually(
        WAIT,
        &format!("legate_xds_connected == {value}"),
        || async {
            let got = legate
                .metrics()
                .await
                .get_or_zero("legate_xds_connected", &[]);
            if got == value {
                Ok(())
            } else {
                Err(format!("{got}"))
            }
        },
    )
    .await;
}

async fn start_cp(config: &Path, data: &Path, xds: Option<SocketAddr>) -> ControlPlane {
    match xds {
        Some(addr) => {
            let addr = addr.to_string();
            ControlPlane::start_with(config, data, &["--xds-address", &addr]).await
        }
        None => ControlPlane::start(config, data).await,
    }
}

fn set_weights(cp: &ControlPlane, weights: &[&str]) {
    let mut args = vec!["set-weights", "svc"];
    args.extend_from_slice(weights);
    let (ok, out, err) = cp.ctl(&args);
    assert!(ok, "set-weights {weights:?} failed: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cp_and_upstream_restarts_lose_no_request_and_end_on_the_latest_config() {
    let a1 = Upstream::start("a1", "v1", Protocol::Auto).await;
    let a2 = Upstream::start("a2", "v1", Protocol::Auto).await;
    let b1 = Upstream::start("b1", "v1", Protocol::Auto).await;
    let listener = free_port();
    let dir = TempDir::new("chaos");
    let config = dir.write(
        "mesh.yaml",
        &mesh(listener, [a1.addr(), a2.addr()], b1.addr()),
    );
    let data = dir.path().join("cp-data");

    let mut cp = start_cp(&config, &data, None).await;
    let xds = cp.xds;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("chaos-1", "chaos")).await;
    let url = format!("http://{listener}/chaos");
    let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
    eventually(WAIT, "legate serves svc", || async {
        match http.try_get(&url).await {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(r.describe()),
            Err(error) => Err(format!("{error:#}")),
        }
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_clients(url.clone(), stop.clone(), tally.clone());
    progress(&tally, 20, "requests flow before the chaos").await;

    let mut a1 = Some(a1);
    for round in 0..CP_RESTARTS {
        // SIGKILL, by PID (the handle's drop).
        drop(cp);
        xds_connected(&legate, false).await;
        progress(&tally, 20, "legate serves while legate-cp is down").await;

        if round == 2 {
            // One host of the two goes away and comes back on the same address.
            let gone = a1.take().expect("a1 runs");
            let addr = gone.addr().to_string();
            drop(gone);
            progress(&tally, 50, "requests succeed with a host down").await;
            let back =
                Upstream::start_with_args("a1", "v1", Protocol::Auto, &["--listen", &addr]).await;
            assert_eq!(back.addr().to_string(), addr, "a1 came back elsewhere");
            eventually(WAIT, "the restarted host takes requests again", || async {
                if back.requests().await > 0 {
                    Ok(())
                } else {
                    Err("no request yet".to_owned())
                }
            })
            .await;
            a1 = Some(back);
        }

        cp = start_cp(&config, &data, Some(xds)).await;
        xds_connected(&legate, true).await;
        match round {
            3 => set_weights(&cp, &["a=50", "b=50"]),
            7 => set_weights(&cp, &["a=0", "b=100"]),
            _ => {}
        }
        progress(&tally, 20, "legate serves after legate-cp is back").await;
    }

    // The last change holds after the restarts that followed it: everything goes to b.
    eventually(WAIT, "every request goes to b1", || async {
        let names = HttpClient::http1()
            .with_timeout(Duration::from_secs(5))
            .upstream_tally(&url, 20)
            .await;
        if names.keys().all(|n| n == "b1") {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    // And legate ACKed exactly what legate-cp serves it now.
    eventually(
        WAIT,
        "legate ACKed legate-cp's current versions",
        || async {
            let (ok, out, err) = cp.ctl(&["status", "-o", "json"]);
            if !ok {
                return Err(err);
            }
            let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            let node = v["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["id"] == "chaos-1"))
                .ok_or_else(|| format!("node missing: {out}"))?;
            let types = node["types"].as_array().ok_or("no types")?;
            let settled = !types.is_empty()
                && types.iter().all(|t| {
                    t["last_nack"].is_null()
                        && !t["acked_version"].is_null()
                        && t["acked_version"] == t["sent_version"]
                });
            if settled { Ok(()) } else { Err(out) }
        },
    )
    .await;
    let dump = legate.admin_json("/legate_internal").await;
    assert_eq!(dump["xds"]["source"], "xds", "{:#}", dump["xds"]);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let failures = tally.failures.lock().expect("tally").clone();
    let by_upstream = tally.by_upstream.lock().expect("tally").clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {ok} answered, by upstream {by_upstream:?}, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed; first ones: {:#?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    for name in ["a1", "a2", "b1"] {
        assert!(
            by_upstream.get(name).copied().unwrap_or(0) > 0,
            "{name} never answered: {by_upstream:?}"
        );
    }
}
