//! legate's xDS client when the control plane misbehaves or goes away: stream resumption,
//! outages, failover between servers, and the last-known-good disk cache. Each scenario runs
//! over state of the world and over delta (`both_modes!`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::config::{ClusterSpec, cluster, single_vhost_mesh};
use legate_tests::process::TempDir;
use legate_tests::xds_server::{ALL_TYPES, Behavior, CDS, EDS, LDS, RDS, short};
use legate_tests::{
    HttpResponse, Legate, Mode, Protocol, Upstream, XdsFlags, XdsServer, both_modes, closed_port,
    eventually,
};

/// Upper bound of every wait on the server or the proxy.
const WAIT: Duration = Duration::from_secs(10);

async fn upstream(name: &str) -> Upstream {
    Upstream::start(name, "v1", Protocol::Auto).await
}

/// A mesh whose listener `outbound` forwards every path to `target`.
fn forward_mesh(target: &str, clusters: &[ClusterSpec]) -> String {
    single_vhost_mesh(
        &format!("- match: {{prefix: /}}\n  forward: {{cluster: {target}, timeout: 5s}}"),
        clusters,
    )
}

/// Upstreams `a` and `b`, and the two clusters over them.
async fn two_upstreams() -> (Upstream, Upstream, [ClusterSpec; 2]) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let clusters = [cluster("a", &[a.addr()]), cluster("b", &[b.addr()])];
    (a, b, clusters)
}

/// Waits until `GET path` on listener `outbound` is answered 200 by upstream `name`.
async fn expect_upstream(legate: &Legate, path: &str, name: &str) -> HttpResponse {
    let http = HttpClient::http1().with_timeout(Duration::from_secs(3));
    eventually(WAIT, &format!("GET {path} answered by {name}"), || async {
        let Some(addr) = legate.try_listener_addr("outbound").await else {
            return Err("no listener outbound".to_owned());
        };
        match http.try_get(&format!("http://{addr}{path}")).await {
            Ok(r) if r.status == 200 && r.upstream() == Some(name) => Ok(r),
            Ok(r) => Err(r.describe()),
            Err(error) => Err(format!("{error:#}")),
        }
    })
    .await
}

/// Sends requests for `duration`, each asserted 200 from `name`.
async fn keeps_serving(legate: &Legate, name: &str, duration: Duration, why: &str) {
    let url = legate.url("outbound", "/steady").await;
    let http = HttpClient::http1().with_timeout(Duration::from_secs(3));
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < duration {
        let r = match http.try_get(&url).await {
            Ok(r) => r,
            Err(error) => panic!(
                "{why}: request {n} failed: {error:#}\n{}",
                legate.describe()
            ),
        };
        assert!(
            r.status == 200 && r.upstream() == Some(name),
            "{why}: request {n} should be answered by {name}: {}",
            r.describe()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `/legate_internal`'s `xds` object satisfies `ok`; returns it.
async fn expect_xds(
    legate: &Legate,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(WAIT, &format!("config_dump xds: {what}"), || async {
        let dump = legate.admin_json("/legate_internal").await;
        let xds = dump["xds"].clone();
        if ok(&xds) {
            Ok(xds)
        } else {
            Err(format!("{xds:#}"))
        }
    })
    .await
}

/// Waits until metric `name` (no labels) equals `value`.
async fn expect_metric(legate: &Legate, name: &str, labels: &[(&str, &str)], value: f64) {
    eventually(WAIT, &format!("{name}{labels:?} = {value}"), || async {
        let got = legate.metrics().await.get_or_zero(name, labels);
        if got == value {
            Ok(())
        } else {
            Err(format!("{got}"))
        }
    })
    .await;
}

both_modes!(
    reconnect_resumes_from_accepted_state,
    outage_keeps_serving_and_reconnects,
    failover_when_first_server_is_down,
    failover_when_first_server_goes_away,
    refused_streams_are_retried_with_capped_backoff,
    cache_serves_at_once_when_refused,
    cache_serves_at_once_when_streams_end,
    silent_server_gets_the_fetch_timeout,
    corrupt_cache_is_refused,
    cache_with_an_invalid_resource_is_refused_whole,
    cache_of_another_node_is_refused,
);

// ---------------------------------------------------------------------------------------------
// Streams and servers

async fn reconnect_resumes_from_accepted_state(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    let old = server.streams()[0].id;

    let cursor = server.cursor();
    assert_eq!(server.drop_streams(), 1);
    let new = server.wait_for_new_stream(old, WAIT).await;
    for type_url in ALL_TYPES {
        let first = server
            .wait_for_request_after(
                cursor,
                WAIT,
                &format!("the first {} request on the new stream", short(type_url)),
                |r| r.stream == new && r.type_url == type_url,
            )
            .await;
        assert!(first.error.is_none(), "{}", first.describe());
        match mode {
            Mode::Sotw => {
                // The last accepted version, and an empty nonce (nothing to answer yet).
                assert_eq!(
                    Some(first.version_info.clone()),
                    server.version(type_url),
                    "{}",
                    first.describe()
                );
                assert_eq!(first.response_nonce, "", "{}", first.describe());
                let names: &[&str] = match type_url {
                    EDS => &["a", "b"],
                    RDS => &["outbound"],
                    _ => &[],
                };
                let mut got = first.resource_names.clone();
                got.sort();
                assert_eq!(got, names, "{}", first.describe());
            }
            Mode::Delta => {
                // Every accepted resource with its version.
                assert_eq!(
                    first.initial_resource_versions,
                    server.resource_versions(type_url),
                    "{}",
                    first.describe()
                );
                assert_eq!(first.response_nonce, "", "{}", first.describe());
                if type_url == CDS || type_url == LDS {
                    assert!(first.subscribe.is_empty(), "{}", first.describe());
                }
            }
        }
    }
    keeps_serving(
        &legate,
        "a",
        Duration::from_millis(300),
        "after a reconnect",
    )
    .await;

    // The new stream carries updates.
    let pushes = server.set_mesh(&forward_mesh("b", &clusters));
    server.wait_all_acked(&pushes, WAIT).await;
    expect_upstream(&legate, "/", "b").await;
    assert!(
        legate
            .metrics()
            .await
            .value("legate_xds_stream_restarts_total", &[])
            >= 1.0
    );
}

async fn outage_keeps_serving_and_reconnects(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), mode)).await;
    expect_upstream(&legate, "/", "a").await;
    expect_metric(&legate, "legate_xds_connected", &[], 1.0).await;

    server.shutdown().await;
    expect_metric(&legate, "legate_xds_connected", &[], 0.0).await;
    expect_xds(&legate, "disconnected", |x| x["connected"] == false).await;
    keeps_serving(
        &legate,
        "a",
        Duration::from_millis(1500),
        "with the control plane down",
    )
    .await;
    legate.admin_get("/ready").await.assert_status(200);

    // It comes back with a change, which reaches the proxy.
    server.set_mesh(&forward_mesh("b", &clusters));
    server.restart().await;
    server.wait_for_streams(1, WAIT).await;
    expect_upstream(&legate, "/", "b").await;
    expect_metric(&legate, "legate_xds_connected", &[], 1.0).await;
    let xds = expect_xds(&legate, "connected", |x| x["connected"] == true).await;
    assert_eq!(xds["source"], "xds", "{xds:#}");
    assert!(
        legate
            .metrics()
            .await
            .value("legate_xds_stream_restarts_total", &[])
            >= 1.0
    );
}

async fn failover_when_first_server_is_down(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let dead = format!("http://{}", closed_port());
    let legate = Legate::start_xds(&XdsFlags::new(&dead, mode).server(&server.url())).await;
    expect_upstream(&legate, "/", "a").await;
    let xds = expect_xds(&legate, "on the second server", |x| {
        x["connected"] == true && x["server"] == server.url().as_str()
    })
    .await;
    assert_eq!(xds["source"], "xds", "{xds:#}");
}

async fn failover_when_first_server_goes_away(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let first = XdsServer::start().await;
    let second = XdsServer::start().await;
    first.set_mesh(&forward_mesh("a", &clusters));
    second.set_mesh(&forward_mesh("b", &clusters));
    let legate = Legate::start_xds(&XdsFlags::new(&first.url(), mode).server(&second.url())).await;
    expect_upstream(&legate, "/", "a").await;
    assert_eq!(second.stream_attempts(), 0, "the first server is preferred");

    first.shutdown().await;
    expect_upstream(&legate, "/", "b").await;
    expect_xds(&legate, "on the second server", |x| {
        x["connected"] == true && x["server"] == second.url().as_str()
    })
    .await;
    assert_eq!(second.connected_streams(), 1);
}

async fn refused_streams_are_retried_with_capped_backoff(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    server.set_behavior(Behavior::Refuse);
    // Backoff: 250 ms base, doubling, capped at 1 s (--xds-backoff-max), full jitter.
    let legate = Legate::spawn_xds(&XdsFlags::new(&server.url(), mode).backoff_max("1s")).await;
    eventually(WAIT, "a first stream attempt", || async {
        match server.stream_attempts() {
            0 => Err("none".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let times = server.attempt_times();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Full jitter: waits uniform in [0, c] for c = 250 ms, 500 ms, then 1 s, so about 9
    // retries in 4 s on average; a loop without back-off would make hundreds.
    assert!(
        (3..=25).contains(&gaps.len()),
        "expected 3 to 25 retries within 4 s with a 250 ms base and a 1 s cap: {gaps:?}"
    );
    let slack = Duration::from_millis(400);
    assert!(
        gaps[0] <= Duration::from_millis(250) + slack,
        "the first retry comes within the 250 ms base (with jitter): {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(1) + slack),
        "no wait exceeds the 1 s cap: {gaps:?}"
    );
    // Once capped, waits average 500 ms; four or more averaging under 100 ms would happen by
    // chance less than once in a thousand runs.
    let capped = &gaps[2..];
    let mean = capped.iter().sum::<Duration>() / u32::try_from(capped.len()).unwrap_or(1);
    assert!(
        mean >= Duration::from_millis(100),
        "waits grow: the capped ones average {mean:?}: {gaps:?}"
    );
    assert_eq!(legate.ready_status().await, 503, "nothing served yet");

    // Streams are accepted again: the next retry (within the cap) gets the configuration.
    server.set_behavior(Behavior::Serve);
    let serving = Instant::now();
    legate.wait_ready(WAIT).await;
    assert!(
        serving.elapsed() <= Duration::from_secs(1) + Duration::from_millis(1500),
        "ready {:?} after the server accepted streams again; the backoff cap is 1 s",
        serving.elapsed()
    );
    expect_upstream(&legate, "/", "a").await;
}

// ---------------------------------------------------------------------------------------------
// The disk cache

fn cache_file(dir: &Path) -> PathBuf {
    dir.join("xds-cache.bin")
}

/// Runs a legate (node `node_id`) against `server` until its cache file holds the
/// configuration, then stops it.
async fn seed_cache(mode: Mode, server: &XdsServer, dir: &Path, node_id: &str) {
    let legate = Legate::start_xds(
        &XdsFlags::new(&server.url(), mode)
            .node(node_id, "tests")
            .cache_dir(dir),
    )
    .await;
    expect_upstream(&legate, "/", "a").await;
    let file = cache_file(dir);
    eventually(WAIT, "the cache file is written", || async {
        match std::fs::metadata(&file) {
            Ok(m) if m.len() > 0 => Ok(()),
            Ok(_) => Err("empty".to_owned()),
            Err(error) => Err(format!("{}: {error}", file.display())),
        }
    })
    .await;
    drop(legate);
}

/// Lines of legate's output that mention the cache file.
fn cache_log_lines(legate: &Legate) -> Vec<String> {
    legate
        .output()
        .lines()
        .filter(|l| l.contains("xds-cache.bin"))
        .map(str::to_owned)
        .collect()
}

/// Starts a legate on `dir` that must refuse its cache (`reason`): not ready, counted, one
/// log line (returned); then the control plane comes up and the proxy serves.
async fn refused_cache_then_control_plane(
    mode: Mode,
    server: &XdsServer,
    dir: &Path,
    node_id: &str,
    reason: &str,
) -> String {
    let legate = Legate::spawn_xds(
        &XdsFlags::new(&server.url(), mode)
            .node(node_id, "tests")
            .cache_dir(dir),
    )
    .await;
    expect_metric(
        &legate,
        "legate_xds_cache_load_failures_total",
        &[("reason", reason)],
        1.0,
    )
    .await;
    // Past the 1 s initial fetch timeout, with nothing to serve: still not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = legate.admin_get("/ready").await;
    assert_eq!(
        ready.status,
        503,
        "a refused cache must not make legate ready: {}",
        ready.describe()
    );
    let lines = cache_log_lines(&legate);
    assert_eq!(
        lines.len(),
        1,
        "one clear log line about the refused cache, got: {lines:#?}\n{}",
        legate.output()
    );
    let xds = legate.admin_json("/legate_internal").await["xds"].clone();
    assert_eq!(xds["source"], "none", "{xds:#}");
    // Nothing of the refused file is served: not even the parts that were fine.
    assert_eq!(
        legate.try_listener_addr("outbound").await,
        None,
        "a listener from a refused cache is bound"
    );

    server.restart().await;
    legate.wait_ready(WAIT).await;
    expect_upstream(&legate, "/", "a").await;
    expect_xds(&legate, "served from xds", |x| x["source"] == "xds").await;
    lines.into_iter().next().unwrap_or_default()
}

/// How a control plane fails to answer at a cold start.
#[derive(Clone, Copy, Debug)]
enum Unreachable {
    /// Nothing listens on its port: every connection is refused.
    Refused,
    /// It accepts connections and ends every stream with UNAVAILABLE before any response.
    EndsStreams,
}

/// A legate restarted while its control plane cannot be reached (`how`) serves its disk
/// cache at once, not after the initial fetch timeout (60 s here, so the test fails on a
/// proxy that waits it out); `/ready`, `/legate_internal` and a metric say the configuration is
/// the stale cache. When the control plane comes back on its port with a changed
/// configuration, that configuration replaces the cache whole and is ACKed.
async fn cache_serves_at_once_when_unreachable(mode: Mode, how: Unreachable) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let dir = TempDir::new("legate-xds-cache");
    seed_cache(mode, &server, dir.path(), "test").await;
    match how {
        Unreachable::Refused => server.shutdown().await,
        Unreachable::EndsStreams => server.set_behavior(Behavior::Refuse),
    }

    let started = Instant::now();
    let legate = Legate::spawn_xds(
        &XdsFlags::new(&server.url(), mode)
            .cache_dir(dir.path())
            .initial_fetch_timeout("60s"),
    )
    .await;
    // WAIT (10 s) is far below the 60 s fetch timeout: only a cache served at once passes.
    expect_upstream(&legate, "/", "a").await;
    let served_after = started.elapsed();
    assert!(
        served_after < WAIT,
        "{how:?}: the cache served {served_after:?} after start"
    );
    let ready = legate.admin_get("/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.describe());
    assert!(
        ready.text().contains("serving the xDS cache"),
        "/ready says the configuration is the cache: {}",
        ready.describe()
    );
    let xds = expect_xds(&legate, "served from the cache", |x| x["source"] == "cache").await;
    assert_eq!(xds["connected"], false, "{xds:#}");
    assert_eq!(xds["cache"]["reason"], "unreachable", "{xds:#}");
    assert!(
        xds["cache"]["written_at_unix_ms"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{xds:#}"
    );
    expect_metric(&legate, "legate_xds_serving_cache", &[], 1.0).await;
    assert!(
        legate
            .output()
            .contains("no control plane is reachable: serving the last good configuration"),
        "{}",
        legate.output()
    );

    // The control plane comes back on its port with a change: it replaces the cache.
    let pushes = server.set_mesh(&forward_mesh("b", &clusters));
    match how {
        Unreachable::Refused => server.restart().await,
        Unreachable::EndsStreams => server.set_behavior(Behavior::Serve),
    }
    expect_upstream(&legate, "/", "b").await;
    server.wait_all_acked(&pushes, WAIT).await;
    let xds = expect_xds(&legate, "served from xds", |x| {
        x["source"] == "xds" && x["connected"] == true
    })
    .await;
    assert!(xds["cache"].is_null(), "{xds:#}");
    expect_metric(&legate, "legate_xds_serving_cache", &[], 0.0).await;
    let ready = legate.admin_get("/ready").await;
    assert_eq!(ready.text(), "ready\n", "{}", ready.describe());
    keeps_serving(
        &legate,
        "b",
        Duration::from_millis(500),
        "the control plane's configuration stays",
    )
    .await;
    assert_eq!(
        legate
            .metrics()
            .await
            .get_or_zero("legate_xds_cache_load_failures_total", &[]),
        0.0
    );
}

async fn cache_serves_at_once_when_refused(mode: Mode) {
    cache_serves_at_once_when_unreachable(mode, Unreachable::Refused).await;
}

async fn cache_serves_at_once_when_streams_end(mode: Mode) {
    cache_serves_at_once_when_unreachable(mode, Unreachable::EndsStreams).await;
}

/// A control plane that accepts the stream but says nothing may still answer: the cache
/// waits for the initial fetch timeout (2 s), then serves; the control plane's configuration
/// replaces it once it answers.
async fn silent_server_gets_the_fetch_timeout(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let dir = TempDir::new("legate-xds-cache");
    seed_cache(mode, &server, dir.path(), "test").await;
    server.set_behavior(Behavior::Hang);
    let attempts = server.stream_attempts();

    // Long enough that a slow start on a loaded machine still leaves a window to look in.
    let timeout = Duration::from_secs(4);
    let started = Instant::now();
    let legate = Legate::spawn_xds(
        &XdsFlags::new(&server.url(), mode)
            .cache_dir(dir.path())
            .initial_fetch_timeout("4s"),
    )
    .await;
    eventually(WAIT, "a stream to the silent server", || async {
        if server.connected_streams() > 0 && server.stream_attempts() > attempts {
            Ok(())
        } else {
            Err(server.describe())
        }
    })
    .await;
    // Until the timeout (less a margin for the process's own start), nothing serves.
    let mut checks = 0;
    while started.elapsed() < timeout - Duration::from_millis(300) {
        let ready = legate.admin_get("/ready").await;
        assert_eq!(
            ready.status,
            503,
            "ready {:?} after start, before the 4 s fetch timeout, with a control plane \
             connected: {}",
            started.elapsed(),
            ready.describe()
        );
        assert_eq!(legate.try_listener_addr("outbound").await, None);
        checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        checks > 0,
        "the silent server took the whole timeout to accept"
    );
    legate.wait_ready(WAIT).await;
    assert!(
        started.elapsed() >= timeout,
        "ready after {:?}",
        started.elapsed()
    );
    expect_upstream(&legate, "/", "a").await;
    let xds = expect_xds(&legate, "served from the cache", |x| x["source"] == "cache").await;
    assert_eq!(xds["cache"]["reason"], "initial_fetch_timeout", "{xds:#}");
    assert!(
        legate
            .output()
            .contains("no control plane answered within the initial fetch timeout: serving"),
        "{}",
        legate.output()
    );

    // The server speaks again (on a new stream): its configuration replaces the cache.
    server.set_mesh(&forward_mesh("b", &clusters));
    server.set_behavior(Behavior::Serve);
    server.drop_streams();
    expect_upstream(&legate, "/", "b").await;
    expect_xds(&legate, "served from xds", |x| {
        x["source"] == "xds" && x["cache"].is_null()
    })
    .await;
}

/// No cache and no control plane: nothing is served, `/ready` says why, and one log line says
/// that nothing can be served until a control plane answers (at once when every control plane
/// is unreachable and a cache directory is set; at the fetch timeout without one).
#[tokio::test]
async fn no_cache_and_unreachable_server_serves_nothing() {
    let dead = format!("http://{}", closed_port());
    let dir = TempDir::new("legate-xds-cache");
    let with_dir = Legate::spawn_xds(
        &XdsFlags::new(&dead, Mode::Sotw)
            .cache_dir(dir.path())
            .initial_fetch_timeout("60s"),
    )
    .await;
    let without_dir =
        Legate::spawn_xds(&XdsFlags::new(&dead, Mode::Sotw).initial_fetch_timeout("1s")).await;
    for (legate, line) in [
        (
            &with_dir,
            "no control plane is reachable and there is no xDS cache to serve: not ready until \
             a control plane answers",
        ),
        (
            &without_dir,
            "no control plane answered within the initial fetch timeout and there is no xDS \
             cache to serve: not ready until a control plane answers",
        ),
    ] {
        eventually(WAIT, "the log line", || async {
            let output = legate.output();
            match output.matches(line).count() {
                1 => Ok(()),
                _ => Err(output),
            }
        })
        .await;
        let ready = legate.admin_get("/ready").await;
        assert_eq!(ready.status, 503, "{}", ready.describe());
        assert!(
            ready
                .text()
                .contains("not ready: no configuration yet; xds server"),
            "{}",
            ready.describe()
        );
        let xds = legate.admin_json("/legate_internal").await["xds"].clone();
        assert_eq!(xds["source"], "none", "{xds:#}");
        assert_eq!(
            legate
                .metrics()
                .await
                .get_or_zero("legate_xds_serving_cache", &[]),
            0.0
        );
    }
}

async fn corrupt_cache_is_refused(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let dir = TempDir::new("legate-xds-cache");
    seed_cache(mode, &server, dir.path(), "test").await;

    // Flip one byte of the payload (the last byte of the file).
    let file = cache_file(dir.path());
    let mut bytes = std::fs::read(&file).expect("read the cache file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write the cache file");

    server.shutdown().await;
    let line =
        refused_cache_then_control_plane(mode, &server, dir.path(), "test", "checksum").await;
    assert!(line.contains("checksum"), "{line}");
}

/// A file whose frame and checksum are intact but one of whose resources does not decode (a
/// buggy writer, or an edit that re-framed the file): the whole cache is refused, with one
/// log line naming the file, and none of its good resources are served.
async fn cache_with_an_invalid_resource_is_refused_whole(mode: Mode) {
    use legate_xds::cache::{self, CachedResource};

    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let dir = TempDir::new("legate-xds-cache");
    seed_cache(mode, &server, dir.path(), "test").await;

    let mut config = cache::load(dir.path(), "test").expect("the seeded cache loads");
    let clusters_type = config
        .types
        .iter_mut()
        .find(|t| t.type_url == CDS)
        .expect("the cache holds clusters");
    let good = clusters_type.resources.len();
    assert!(good > 0, "the seeded cache holds clusters");
    clusters_type.resources.push(CachedResource {
        name: "broken".to_owned(),
        version: String::new(),
        resource: envoy_types::pb::google::protobuf::Any {
            type_url: CDS.to_owned(),
            // Field 1 (name) claims 100 bytes and has 2.
            value: vec![0x0a, 100, b'x', b'y'],
        },
    });
    cache::write(dir.path(), &config).expect("write the re-framed cache");

    server.shutdown().await;
    let line = refused_cache_then_control_plane(mode, &server, dir.path(), "test", "invalid").await;
    assert!(
        line.contains("refused whole"),
        "the log line says the cache was refused whole: {line}"
    );
}

async fn cache_of_another_node_is_refused(mode: Mode) {
    let (_a, _b, clusters) = two_upstreams().await;
    let server = XdsServer::start().await;
    server.set_mesh(&forward_mesh("a", &clusters));
    let dir = TempDir::new("legate-xds-cache");
    seed_cache(mode, &server, dir.path(), "node-a").await;

    server.shutdown().await;
    let line =
        refused_cache_then_control_plane(mode, &server, dir.path(), "node-b", "wrong_node").await;
    assert!(
        line.contains("node-a"),
        "the log line names the cache's node: {line}"
    );
}
