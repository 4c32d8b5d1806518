//! A cluster's metric series follow the cluster: they exist from the moment its
//! configuration is applied (so the request path never creates one) and leave
//! `/stats/prometheus` when the cluster leaves the configuration. Real `legate` on the test
//! ADS server, real upstream.

use legate_tests::config::{cluster, single_vhost_mesh};
use legate_tests::resilience::{Rig, SVC, WAIT, retry, route_action};
use legate_tests::xds_server::mesh_resources;
use legate_tests::{Protocol, Upstream, eventually};

/// Every sample line of the scrape that carries `cluster="name"`.
fn lines_of(text: &str, name: &str) -> Vec<String> {
    let label = format!("cluster=\"{name}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cluster_leaves_the_scrape_and_a_new_one_starts_at_zero() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let routes = format!("- match: {{prefix: /}}\n  forward: {{cluster: {SVC}, timeout: 10s}}");
    let mut with_retries = mesh_resources(&single_vhost_mesh(
        &routes,
        &[cluster(SVC, &[a.addr()]), cluster("gone", &[a.addr()])],
    ));
    route_action(&mut with_retries).retry_policy = Some(retry("5xx", 1));
    let rig = Rig::start(&with_retries).await;

    // Series are there before any request: made when the configuration was applied.
    let m = rig.metrics().await;
    for family in [
        "legate_upstream_retries_total",
        "legate_upstream_retry_overflow_total",
        "legate_upstream_hedges_total",
        "legate_cluster_hosts",
        "legate_upstream_requests_total",
    ] {
        for name in [SVC, "gone"] {
            assert!(
                m.get(family, &[("cluster", name)]).is_some(),
                "{family}{{cluster={name}}} exists at config time:\n{}",
                m.text
            );
        }
    }
    let (r, _) = rig.get("/?status=503").await;
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(rig.retries().await, 1);

    // The same configuration without `gone`.
    let mut only_svc_retries =
        mesh_resources(&single_vhost_mesh(&routes, &[cluster(SVC, &[a.addr()])]));
    route_action(&mut only_svc_retries).retry_policy = Some(retry("5xx", 1));
    rig.apply(&only_svc_retries).await;
    let text = eventually(WAIT, "cluster gone leaves /stats/prometheus", || async {
        let text = rig.metrics().await.text;
        let left = lines_of(&text, "gone");
        if left.is_empty() {
            Ok(text)
        } else {
            Err(format!("still listed: {left:#?}"))
        }
    })
    .await;
    assert!(
        !lines_of(&text, SVC).is_empty(),
        "the cluster that stayed keeps its series:\n{text}"
    );
    assert_eq!(rig.retries().await, 1, "svc's counters carried over");

    // The name coming back is a new cluster: its series start over.
    rig.apply(&with_retries).await;
    eventually(WAIT, "cluster gone is back, its retries at 0", || async {
        let m = rig.metrics().await;
        match m.get("legate_upstream_retries_total", &[("cluster", "gone")]) {
            Some(0.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
