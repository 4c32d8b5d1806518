//! Interoperability with real Envoy 1.40: the resources legate's compiler produces (the
//! same ones the control plane serves) are accepted by Envoy over ADS, in state-of-the-world
//! and delta, with no NACK, and route HTTP to local upstreams; a weight change moves
//! Envoy's traffic. Fails (never skips) when Envoy is missing: run `make peers`.

use std::net::SocketAddr;
use std::time::Duration;

use legate_tests::client::HttpClient;
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::xds_server::{ALL_TYPES, CDS, LDS, XdsServer};
use legate_tests::{Protocol, Upstream, eventually};

fn mesh(v1: SocketAddr, v2: SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        r#"
proxy:
  # The limits compile to Envoy's connection_limit filter and request_headers_timeout.
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto, max_connections: 1000, request_headers_timeout: 10s}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: {w1}, endpoints: [{{address: {v1}}}]}}
      - {{name: v2, weight: {w2}, endpoints: [{{address: {v2}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
"#
    )
}

async fn versions_seen(url: &str, n: usize) -> (usize, usize) {
    let http = HttpClient::http1();
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..n {
        let r = http.get(url).await;
        r.assert_status(200);
        match r.echo().version.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected version {other}"),
        }
    }
    (v1, v2)
}

async fn envoy_accepts_and_routes(mode: EnvoyAds) {
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let v2 = Upstream::start("payments", "v2", Protocol::Auto).await;
    let xds = XdsServer::start().await;
    let pushes = xds.set_mesh(&mesh(v1.addr(), v2.addr(), 100, 0));
    let envoy = Envoy::start_ads(xds.addr(), mode, "envoy-1", "envoys").await;
    for push in &pushes {
        xds.wait_acked(push, Duration::from_secs(30)).await;
    }
    let addr = envoy.listener("outbound").await;
    let url = format!("http://{addr}/payments/charge");
    let (a, b) = versions_seen(&url, 20).await;
    assert_eq!((a, b), (20, 0), "all traffic on v1 at weights 100/0");
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_rejected").await,
        Some(0)
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        Some(0)
    );

    // Shift everything to v2: Envoy's traffic follows.
    let pushes = xds.set_mesh(&mesh(v1.addr(), v2.addr(), 0, 100));
    for push in pushes
        .iter()
        .filter(|p| p.type_url != CDS && p.type_url != LDS)
    {
        xds.wait_acked(push, Duration::from_secs(30)).await;
    }
    eventually(Duration::from_secs(20), "traffic moves to v2", || async {
        let (a, b) = versions_seen(&url, 10).await;
        if a == 0 && b == 10 {
            Ok(())
        } else {
            Err(format!("v1={a} v2={b}"))
        }
    })
    .await;
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_rejected").await,
        Some(0)
    );
    for t in ALL_TYPES {
        let nacks = xds.nacks_for(t);
        assert!(nacks.is_empty(), "Envoy NACKed {t}: {nacks:?}");
    }
    assert_eq!(
        envoy.stat("listener_manager.total_listeners_active").await,
        Some(1)
    );
}

#[tokio::test]
async fn envoy_accepts_compiled_resources_sotw() {
    envoy_accepts_and_routes(EnvoyAds::Sotw).await;
}

#[tokio::test]
async fn envoy_accepts_compiled_resources_delta() {
    envoy_accepts_and_routes(EnvoyAds::Delta).await;
}
