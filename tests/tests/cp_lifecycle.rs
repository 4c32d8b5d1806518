//! legate-cp's start and stop, through the real binary: on SIGTERM it refuses admin changes,
//! ends every xDS stream with `UNAVAILABLE` and exits 0 within `--shutdown-timeout`, while a
//! connected legate keeps serving what it had and tries to reconnect; mesh files that say
//! nothing (an empty or comment-only file, a directory without mesh files or with only an
//! empty one) are refused at start and on reload with the path named, and an explicitly empty
//! mesh is served with a warning.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use legate_tests::client::{HttpClient, empty, full};
use legate_tests::cp::ControlPlane as Cp;
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::process::TempDir;
use legate_tests::xds_server::{CDS, Mode};
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, eventually};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);
const SHUTTING_DOWN: &str = "legate-cp is shutting down";

fn mesh(v1: SocketAddr) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {v1}}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: {v1}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
"#
    )
}

/// One open ADS stream that never closes its side: its request sender and its responses.
struct Ads {
    _tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

/// Opens an ADS stream subscribed to every cluster, on `endpoint`'s own connection.
async fn open_ads(endpoint: tonic::transport::Endpoint, id: &str) -> Ads {
    let channel = endpoint.connect().await.expect("connect to legate-cp");
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: id.to_owned(),
            cluster: "web".to_owned(),
            ..Default::default()
        }),
        type_url: CDS.to_owned(),
        ..Default::default()
    })
    .await
    .expect("queue the first request");
    let responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("legate-cp accepts the stream")
        .into_inner();
    Ads { _tx: tx, responses }
}

fn endpoint(cp: &Cp) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(cp.url()).expect("endpoint")
}

async fn wait_log(cp: &Cp, what: &str, needle: &str) {
    eventually(WAIT, what, || async {
        let log = cp.log();
        if log.contains(needle) {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
}

/// The route config (with the payments weights) a node of cluster `web` is served, as the
/// admin API renders it.
async fn served_routes(cp: &Cp) -> String {
    let r = cp
        .json(
            "GET",
            "/v1/nodes/probe?cluster=web",
            &[("authorization", &cp.bearer())],
            empty(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let body = r.json();
    let routes = body["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            r["name"] == "outbound"
                && r["type_url"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("RouteConfiguration"))
        })
        .map(ToString::to_string);
    routes.unwrap_or_else(|| panic!("no outbound route config served: {body}"))
}

/// SIGTERM with a real legate, a real Envoy and a raw ADS stream connected (none of which
/// ever closes its stream): legate-cp logs the signal, ends the streams with `UNAVAILABLE`
/// and exits 0 well within the default `--shutdown-timeout`, without waiting for the bound.
/// The proxies keep serving the configuration they had and keep trying to reconnect.
/// (Before, the xDS port closed but legate-cp waited for every stream to end: forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_while_proxies_keep_serving() {
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let dir = TempDir::new("cp-sigterm");
    let config = dir.write("mesh.yaml", &mesh(v1.addr()));
    let cp = Cp::start(&config, &dir.path().join("data")).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Delta).node("proxy-1", "web")).await;
    let proxy_url = legate.url("outbound", "/payments/charge").await;
    HttpClient::http1().get(&proxy_url).await.assert_status(200);
    let envoy = Envoy::start_ads(cp.xds, EnvoyAds::Sotw, "envoy-1", "web").await;
    // A listener on port 0 may be replaced (and moved) while Envoy warms: ask until it answers.
    let envoy_url = eventually(Duration::from_secs(30), "Envoy serves", || async {
        let url = format!(
            "http://{}/payments/charge",
            envoy.listener("outbound").await
        );
        let r = HttpClient::http1()
            .try_request("GET", &url, &[], empty())
            .await
            .map_err(|e| e.to_string())?;
        if r.status.as_u16() == 200 {
            Ok(url)
        } else {
            Err(r.describe())
        }
    })
    .await;
    let mut raw = open_ads(endpoint(&cp), "raw").await;
    tokio::time::timeout(WAIT, raw.responses.message())
        .await
        .expect("a response within 10s")
        .expect("the stream is up")
        .expect("clusters are served");

    let signalled = Instant::now();
    cp.sigterm();
    let status = cp.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "legate-cp still runs 15s after SIGTERM with streams open\n{}",
            cp.describe()
        )
    });
    assert!(status.success(), "exit status {status}\n{}", cp.describe());
    assert!(
        took < Duration::from_secs(4),
        "legate-cp took {took:?} to exit: the streams were not ended, it waited for its bound\n{}",
        cp.describe()
    );
    let log = cp.log();
    assert!(
        log.contains("SIGTERM") && log.contains("shutting down"),
        "{log}"
    );
    assert!(
        log.contains("legate-cp stopped") && !log.contains("abandoned"),
        "{log}"
    );

    // The raw stream was ended with a transient status and says why.
    let ended = tokio::time::timeout(WAIT, raw.responses.message())
        .await
        .expect("the stream ends");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), SHUTTING_DOWN, "{status:?}");

    // The proxy serves what it had, logs why its stream ended, and tries again.
    HttpClient::http1().get(&proxy_url).await.assert_status(200);
    eventually(WAIT, "legate retries the control plane", || async {
        let out = legate.output();
        let failures = out.matches("ADS stream failed").count();
        if out.contains(SHUTTING_DOWN) && failures >= 2 {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    HttpClient::http1().get(&proxy_url).await.assert_status(200);

    // So does Envoy: its listener still answers, and it keeps trying to connect.
    HttpClient::http1().get(&envoy_url).await.assert_status(200);
    eventually(WAIT, "Envoy retries the control plane", || async {
        let connected = envoy.stat("control_plane.connected_state").await;
        let failed = envoy.stat("cluster.xds.upstream_cx_connect_fail").await;
        if connected == Some(0) && failed.unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(format!(
                "connected_state {connected:?}, connect failures {failed:?}"
            ))
        }
    })
    .await;
    HttpClient::http1().get(&envoy_url).await.assert_status(200);
}

/// A client that stops reading (no HTTP/2 window) keeps its connection from closing; legate-cp
/// still exits, 0, once `--shutdown-timeout` has passed, and says what it abandoned. Until it
/// exits, admin changes over JSON and gRPC (legatectl) are refused as UNAVAILABLE / 503 and
/// nothing is pushed or persisted; reads are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_refused_after_sigterm_and_a_stuck_client_cannot_hold_the_exit() {
    const BOUND: Duration = Duration::from_secs(6);
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let dir = TempDir::new("cp-stuck");
    let config = dir.write("mesh.yaml", &mesh(v1.addr()));
    let data = dir.path().join("data");
    let cp = Cp::start_with(&config, &data, &["--shutdown-timeout", "6s"]).await;
    let before = served_routes(&cp).await;
    // A stream whose client never grants the server room to send a byte of a response.
    let _stuck = open_ads(
        endpoint(&cp)
            .initial_stream_window_size(0)
            .initial_connection_window_size(0),
        "stuck",
    )
    .await;
    eventually(WAIT, "the stuck stream is registered", || async {
        let (ok, out, err) = cp.ctl(&["status", "-o", "json"]);
        if ok && out.contains("\"stuck\"") {
            Ok(())
        } else {
            Err(format!("{out}{err}"))
        }
    })
    .await;

    let signalled = Instant::now();
    cp.sigterm();
    wait_log(&cp, "legate-cp logs the signal", "shutting down").await;

    let json_headers = [
        ("authorization", cp.bearer()),
        ("content-type", "application/json".to_owned()),
    ];
    let json_headers: Vec<(&str, &str)> =
        json_headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = cp
        .json(
            "POST",
            "/v1/services/payments/weights",
            &json_headers,
            full(r#"{"v1": 0, "v2": 100}"#),
        )
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.describe());
    assert_eq!(r.json()["error"], SHUTTING_DOWN, "{}", r.describe());
    let (ok, out, err) = cp.ctl(&["set-weights", "payments", "v1=0", "v2=100"]);
    assert!(!ok, "legatectl set-weights succeeded after SIGTERM: {out}");
    assert!(err.contains(SHUTTING_DOWN), "{err}");
    // Nothing pushed, nothing persisted; reads still work.
    assert_eq!(served_routes(&cp).await, before);
    assert!(
        !data.join("overlay.yaml").exists(),
        "an admin change was persisted"
    );
    assert!(
        cp.log()
            .contains("admin change refused: legate-cp is shutting down"),
        "{}",
        cp.log()
    );
    assert!(
        signalled.elapsed() < BOUND,
        "the checks above ran after the bound: the test proves nothing"
    );

    let status = cp.wait_exit(BOUND + Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "legate-cp still runs {took:?} after SIGTERM (bound {BOUND:?})\n{}",
            cp.describe()
        )
    });
    assert!(status.success(), "exit status {status}\n{}", cp.describe());
    assert!(
        took >= BOUND - Duration::from_millis(500),
        "exited after {took:?}: the stuck client was not stuck"
    );
    wait_log(&cp, "the abandon is logged", "abandoned").await;
}

/// legate-cp's output when it refuses to start on `config`.
async fn refused_start(config: &Path, data: &Path) -> String {
    match Cp::try_start(config, data, &[]).await {
        Ok(cp) => panic!(
            "legate-cp started on {}\n{}",
            config.display(),
            cp.describe()
        ),
        Err(output) => output,
    }
}

/// Mesh files that say nothing stop legate-cp from starting, with the path and the reason on
/// its last line; an explicit empty mesh starts, with a warning.
#[tokio::test]
async fn mesh_files_that_say_nothing_are_refused_at_start() {
    let dir = TempDir::new("cp-start-empty");
    let data = dir.path().join("data");
    let empty_doc = "1:1: empty document";

    let file = dir.write("empty.yaml", "");
    let out = refused_start(&file, &data).await;
    assert!(
        out.contains(&format!("legate-cp: {}:{empty_doc}", file.display())),
        "{out}"
    );

    let file = dir.write("comments.yaml", "# to be written\n\n# later\n");
    let out = refused_start(&file, &data).await;
    assert!(
        out.contains(&format!("legate-cp: {}:{empty_doc}", file.display())),
        "{out}"
    );

    let none = dir.path().join("no-mesh-files");
    std::fs::create_dir_all(&none).expect("mkdir");
    std::fs::write(none.join("README.md"), "mesh files go here\n").expect("write");
    std::fs::write(none.join("mesh.json"), "{}").expect("write");
    let out = refused_start(&none, &data).await;
    assert!(
        out.contains(&format!(
            "legate-cp: {}: no mesh files (*.yaml, *.yml) in the directory",
            none.display()
        )),
        "{out}"
    );

    let only_empty = dir.path().join("only-empty");
    std::fs::create_dir_all(&only_empty).expect("mkdir");
    std::fs::write(only_empty.join("mesh.yaml"), "").expect("write");
    let out = refused_start(&only_empty, &data).await;
    assert!(
        out.contains(&format!(
            "legate-cp: {}:{empty_doc}",
            only_empty.join("mesh.yaml").display()
        )),
        "{out}"
    );

    // Explicitly nothing: served, and said so.
    let file = dir.write("nothing.yaml", "services: []\n");
    let cp = Cp::start(&file, &data).await;
    wait_log(
        &cp,
        "the empty mesh is warned about",
        "serving no listeners and no services",
    )
    .await;
    let line = cp
        .log()
        .lines()
        .find(|l| l.contains("serving no listeners and no services"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains(&file.display().to_string()),
        "{line}"
    );
}

/// The same on reload, in a mesh directory: every mesh file removed, then only an empty one,
/// are refused (the last good configuration stays served, `GET /v1/mesh` names the path);
/// `services: []` is applied with a warning.
#[tokio::test]
async fn mesh_files_that_say_nothing_are_refused_on_reload() {
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let dir = TempDir::new("cp-reload-empty");
    let data = dir.path().join("data");
    let meshes = dir.path().join("mesh");
    std::fs::create_dir_all(&meshes).expect("mkdir");
    let file = meshes.join("payments.yaml");
    std::fs::write(&file, mesh(v1.addr())).expect("write");
    let cp = Cp::start(&meshes, &data).await;
    let before = served_routes(&cp).await;
    let mesh_status = || async {
        let r = cp
            .json(
                "GET",
                "/v1/mesh",
                &[("authorization", &cp.bearer())],
                empty(),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
        r.json()
    };

    std::fs::remove_file(&file).expect("remove");
    let expected = format!(
        "{}: no mesh files (*.yaml, *.yml) in the directory",
        meshes.display()
    );
    eventually(WAIT, "removing every mesh file is refused", || async {
        let status = mesh_status().await;
        if status["refused"]["error"] == expected.as_str() {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_eq!(served_routes(&cp).await, before);

    let empty_file = meshes.join("a.yaml");
    std::fs::write(&empty_file, "").expect("write");
    let expected = format!("{}:1:1: empty document", empty_file.display());
    eventually(WAIT, "an empty mesh file alone is refused", || async {
        let status = mesh_status().await;
        if status["refused"]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&expected))
        {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_eq!(served_routes(&cp).await, before);
    assert!(cp.log().contains("mesh files refused"), "{}", cp.log());
    assert!(!cp.log().contains("serving no listeners"), "{}", cp.log());

    std::fs::write(&empty_file, "services: []\n").expect("write");
    eventually(WAIT, "an explicit empty mesh is applied", || async {
        let status = mesh_status().await;
        if status["refused"].is_null() {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    wait_log(
        &cp,
        "the empty mesh is warned about",
        "serving no listeners and no services",
    )
    .await;
}
