//! legate-cp end to end: the real control plane binary serving the real legate proxy and a
//! real Envoy, driven by the real legatectl; mesh-file edits, persistence and bad input.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::cp::{ControlPlane as Cp, bin};
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::process::TempDir;
use legate_tests::xds_server::Mode;
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, eventually};

fn mesh(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {v1}}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: {v2}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
"#
    )
}

async fn versions(url: &str, n: usize) -> Result<(usize, usize), String> {
    let http = HttpClient::http1();
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let r = http
            .try_request("GET", url, &[], legate_tests::client::empty())
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if r.status.as_u16() != 200 {
            return Err(format!("{url}: status {}", r.status));
        }
        if r.echo().version == "v1" {
            a += 1;
        } else {
            b += 1;
        }
    }
    Ok((a, b))
}

async fn wait_versions(url: &str, want: (usize, usize)) {
    eventually(Duration::from_secs(10), "traffic split", || async {
        let got = versions(url, want.0 + want.1).await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

async fn proxy_and_envoy_follow_set_weights(mode: Mode, envoy_mode: EnvoyAds) {
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let v2 = Upstream::start("payments", "v2", Protocol::Auto).await;
    let dir = TempDir::new("cp");
    let config = dir.write("mesh.yaml", &mesh(v1.addr(), v2.addr()));
    let cp = Cp::start(&config, &dir.path().join("data")).await;

    let legate = Legate::start_xds(&XdsFlags::new(&cp.url(), mode).node("proxy-1", "web")).await;
    let proxy_url = legate.url("outbound", "/payments/charge").await;
    wait_versions(&proxy_url, (10, 0)).await;

    let envoy = Envoy::start_ads(cp.xds, envoy_mode, "envoy-1", "web").await;
    let envoy_url = eventually(Duration::from_secs(30), "Envoy listener", || async {
        if envoy.stat("listener_manager.total_listeners_active").await != Some(1) {
            return Err("not active".to_owned());
        }
        let (_, body) = envoy.admin_get("/listeners?format=json").await;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
        Ok(format!(
            "http://{}:{}/payments/charge",
            sa["address"].as_str().unwrap_or("127.0.0.1"),
            sa["port_value"].as_u64().unwrap_or(0)
        ))
    })
    .await;
    wait_versions(&envoy_url, (10, 0)).await;

    let (ok, out, err) = cp.ctl(&["set-weights", "payments", "v1=0", "v2=100"]);
    assert!(ok, "set-weights failed: {out}{err}");
    assert!(out.contains("weights"), "{out}");
    wait_versions(&proxy_url, (0, 10)).await;
    wait_versions(&envoy_url, (0, 10)).await;

    // Both show in status with their ACKs, and nothing was NACKed.
    let (ok, out, err) = cp.ctl(&["status", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let nodes = v["nodes"].as_array().expect("nodes");
    for id in ["proxy-1", "envoy-1"] {
        let n = nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {out}"));
        let types = n["types"].as_array().expect("types");
        assert!(!types.is_empty(), "{id}: {out}");
        for t in types {
            assert!(t["last_nack"].is_null(), "{id} NACKed: {t}");
            assert_eq!(
                t["sent_version"], t["acked_version"],
                "{id} has not ACKed: {t}"
            );
        }
    }
    let (ok, table, _) = cp.ctl(&["status"]);
    assert!(ok && table.starts_with("NODE"), "{table}");
}

#[tokio::test]
async fn legate_and_envoy_follow_set_weights_sotw() {
    proxy_and_envoy_follow_set_weights(Mode::Sotw, EnvoyAds::Sotw).await;
}

#[tokio::test]
async fn legate_and_envoy_follow_set_weights_delta() {
    proxy_and_envoy_follow_set_weights(Mode::Delta, EnvoyAds::Delta).await;
}

#[tokio::test]
async fn mesh_edits_bad_input_and_persistence() {
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let v2 = Upstream::start("payments", "v2", Protocol::Auto).await;
    let dir = TempDir::new("cp-edit");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &mesh(v1.addr(), v2.addr()));
    let cp = Cp::start(&config, &data).await;
    let legate = Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("p", "web")).await;
    let url = legate.url("outbound", "/payments/x").await;
    wait_versions(&url, (10, 0)).await;

    // An invalid edit is refused with file, line and column; the old config keeps serving.
    std::fs::write(
        &config,
        mesh(v1.addr(), v2.addr()).replace("weight: 100", "weight: lots"),
    )
    .expect("write");
    eventually(Duration::from_secs(5), "refusal logged", || async {
        let log = cp.log();
        if log.contains("mesh.yaml:") && log.contains("refused") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    wait_versions(&url, (10, 0)).await;

    // A valid edit is pushed within a second or so.
    let started = Instant::now();
    std::fs::write(
        &config,
        mesh(v1.addr(), v2.addr())
            .replace("weight: 100", "weight: SWAP")
            .replace("weight: 0", "weight: 100")
            .replace("weight: SWAP", "weight: 0"),
    )
    .expect("write");
    // The weights are swapped: v1=0, v2=100.
    wait_versions(&url, (0, 10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "edit took {:?}",
        started.elapsed()
    );

    // Bad admin input changes nothing.
    let (ok, _, err) = cp.ctl(&["set-weights", "nosuch", "v1=1"]);
    assert!(!ok && err.contains("nosuch"), "{err}");
    let (ok, _, err) = cp.ctl(&["set-weights", "payments", "v1=0", "v2=0"]);
    assert!(!ok, "all-zero weights must be refused");
    assert!(!err.is_empty());
    let (ok, _, err) = cp.ctl(&["set-weights", "payments", "v1=50"]);
    assert!(!ok, "missing versions must be refused: {err}");
    let json = cp
        .json(
            "POST",
            "/v1/services/payments/weights",
            &[
                ("authorization", &cp.bearer()),
                ("content-type", "application/json"),
            ],
            legate_tests::client::full("not json"),
        )
        .await;
    assert_eq!(json.status.as_u16(), 400);
    wait_versions(&url, (0, 10)).await;

    // Unknown nodes are a clear error; a known one shows its resources.
    let (ok, _, err) = cp.ctl(&["get", "node", "nosuch"]);
    assert!(!ok && err.contains("nosuch"), "{err}");
    let (ok, out, err) = cp.ctl(&["get", "node", "p"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("payments-v1") && out.contains("outbound"),
        "{out}"
    );

    // `apply -f` adds a service that every connected proxy then routes.
    let orders = Upstream::start("orders", "v1", Protocol::Auto).await;
    let doc = dir.write(
        "orders.yaml",
        &format!(
            "services:\n  - name: orders\n    endpoints: [{{address: {}}}]\n",
            orders.addr()
        ),
    );
    let (ok, out, err) = cp.ctl(&["apply", "-f", doc.to_str().expect("utf-8 path")]);
    assert!(ok && out.contains("service orders created"), "{out}{err}");
    let orders_url = legate.url("outbound", "/orders/list").await;
    eventually(Duration::from_secs(10), "orders routed", || async {
        match HttpClient::http1()
            .try_request("GET", &orders_url, &[], legate_tests::client::empty())
            .await
        {
            Ok(r) if r.status.as_u16() == 200 && r.echo().name == "orders" => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    // A document that does not validate is refused and changes nothing.
    let bad = dir.write(
        "bad.yaml",
        "services:\n  - name: orders\n    endpoints: [{address: nowhere}]\n",
    );
    let (ok, _, err) = cp.ctl(&["apply", "-f", bad.to_str().expect("utf-8 path")]);
    assert!(!ok && err.contains("address"), "{err}");
    HttpClient::http1()
        .get(&orders_url)
        .await
        .assert_status(200);

    // A change through the admin API survives a restart of legate-cp.
    let (ok, out, err) = cp.ctl(&["set-weights", "payments", "v1=100", "v2=0"]);
    assert!(ok, "{out}{err}");
    wait_versions(&url, (10, 0)).await;
    drop(legate);
    drop(cp);
    let cp = Cp::start(&config, &data).await;
    let legate = Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Delta).node("p2", "web")).await;
    let url = legate.url("outbound", "/payments/x").await;
    wait_versions(&url, (10, 0)).await;
}

/// gRPC's own xDS client (grpcio, C-core) resolves `xds:///payments` through legate-cp and
/// completes RPCs to a local gRPC server.
#[tokio::test]
async fn grpc_xds_client_resolves_through_legate_cp() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let dir = TempDir::new("cp-grpc");
    let config = dir.write(
        "mesh.yaml",
        &format!(
            r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
services:
  - name: payments
    protocol: http2
    endpoints: [{{address: 127.0.0.1:{port}}}]
"#
        ),
    );
    let cp = Cp::start(&config, &dir.path().join("data")).await;
    let v = run_grpc_xds_client(
        &cp,
        &dir,
        "grpc-client-1",
        vec![
            "--server-port".to_owned(),
            port.to_string(),
            "--target".to_owned(),
            "xds:///payments".to_owned(),
            "--calls".to_owned(),
            "10".to_owned(),
            "--timeout".to_owned(),
            "30".to_owned(),
        ],
    )
    .await;
    let replies = v["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 10, "{v}");
    assert!(replies.iter().all(|r| r == "payments-v1:hello"), "{v}");
    // The gRPC client accepted every resource: legate-cp logs each NACK it receives.
    let log = cp.log();
    assert!(
        log.contains("grpc-client-1"),
        "the gRPC node never connected:\n{log}"
    );
    assert!(
        !log.contains("rejected a response"),
        "the gRPC client NACKed:\n{log}"
    );
}

/// A hashing service reaches gRPC's xDS client as RING_HASH with its header hash (gRFC
/// A42): grpcio accepts it (no NACK) and keeps each key on one of three servers.
#[tokio::test]
async fn grpc_xds_client_gets_ring_hash_and_keeps_keys_on_one_server() {
    let ports = legate_tests::process::free_ports::<3>();
    let dir = TempDir::new("cp-grpc-hash");
    let endpoints = ports
        .iter()
        .map(|p| format!("{{address: 127.0.0.1:{p}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.write(
        "mesh.yaml",
        &format!(
            r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
services:
  - name: carts
    protocol: http2
    lb_policy: maglev
    endpoints: [{endpoints}]
    policies:
      hash: {{header: x-user}}
"#
        ),
    );
    let cp = Cp::start(&config, &dir.path().join("data")).await;
    let more = format!("s1={},s2={}", ports[1], ports[2]);
    let args = [
        "--server-port",
        &ports[0].to_string(),
        "--server-name",
        "s0",
        "--more-servers",
        &more,
        "--target",
        "xds:///carts",
        "--hash-header",
        "x-user",
        "--keys",
        "16",
        "--calls",
        "4",
        "--timeout",
        "60",
    ];
    let v = run_grpc_xds_client(
        &cp,
        &dir,
        "grpc-client-hash",
        args.iter().map(|a| (*a).to_owned()).collect(),
    )
    .await;
    let by_key = v["by_key"].as_object().expect("by_key");
    assert_eq!(by_key.len(), 16, "{v}");
    let mut used = std::collections::BTreeSet::new();
    for (key, servers) in by_key {
        let servers = servers.as_array().expect("servers");
        assert_eq!(servers.len(), 1, "key {key} answered by {servers:?}: {v}");
        used.insert(servers[0].to_string());
    }
    assert!(used.len() >= 2, "16 keys all on {used:?}: {v}");
    let log = cp.log();
    assert!(
        log.contains("grpc-client-hash"),
        "the gRPC node never connected:\n{log}"
    );
    assert!(
        !log.contains("rejected a response"),
        "the gRPC client NACKed:\n{log}"
    );
}

/// Runs gRPC's own xDS client (tests/interop/grpc_xds_client.py, grpcio) with `args`, as node
/// `node_id` of cluster `grpc` bootstrapped on `cp`'s xDS address; checks it succeeded and
/// returns the JSON line it printed.
async fn run_grpc_xds_client(
    cp: &Cp,
    dir: &TempDir,
    node_id: &str,
    args: Vec<String>,
) -> serde_json::Value {
    let python = legate_tests::peers::peers_python();
    let bootstrap = dir.write(
        "grpc-bootstrap.json",
        &serde_json::json!({
            "xds_servers": [{
                "server_uri": cp.xds.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": node_id, "cluster": "grpc"},
        })
        .to_string(),
    );
    let script = legate_tests::peers::repo_root().join("tests/interop/grpc_xds_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .output()
            .expect("run the grpcio client")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client failed:\n{stdout}\n{stderr}\n{}",
        cp.log()
    );
    serde_json::from_str(stdout.trim()).expect("json line")
}

/// Runs `legate-cp-load` against `cp` with `streams` simulated proxies and the given
/// triggers (one change each); returns the child and a reader of its JSON events.
fn start_load(
    cp: &Cp,
    mode: &str,
    streams: usize,
    weights: &[&str],
    extra: &[&str],
) -> (
    Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let ctl = bin("legatectl");
    let triggers: Vec<String> = weights
        .iter()
        .map(|w| {
            let (v1, v2) = w.split_once('/').expect("v1/v2");
            format!(
                "{} --server http://{} --token-file {} set-weights payments v1={v1} v2={v2}",
                ctl.display(),
                cp.admin,
                cp.token_file().expect("token file").display()
            )
        })
        .collect();
    start_load_on(&[cp], mode, streams, &triggers, extra)
}

/// Runs `legate-cp-load` with `streams` simulated proxies spread over `servers` (one
/// `--server` each; the first's PID is reported) and one change per trigger command.
fn start_load_on(
    servers: &[&Cp],
    mode: &str,
    streams: usize,
    triggers: &[String],
    extra: &[&str],
) -> (
    Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut cmd = Command::new(bin("legate-cp-load"));
    for cp in servers {
        cmd.args(["--server", &cp.url()]);
    }
    cmd.args(["--mode", mode])
        .args(["--streams", &streams.to_string(), "--connections", "3"])
        .args([
            "--changes",
            &triggers.len().to_string(),
            "--interval",
            "200ms",
        ])
        .args(["--cp-pid", &servers[0].pid().to_string(), "--threads", "2"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for trigger in triggers {
        cmd.arg("--trigger-cmd").arg(trigger);
    }
    let mut child = cmd.spawn().expect("start legate-cp-load");
    let out = child.stdout.take().expect("stdout");
    (child, std::io::BufReader::new(out).lines())
}

fn next_event(
    lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) -> serde_json::Value {
    let line = lines
        .next()
        .expect("legate-cp-load ended early")
        .expect("read");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The fan-out load tool opens real ADS streams, each a node legate-cp lists, and reports a
/// change as ACKed by every stream only when legate-cp agrees they all hold it.
async fn load_tool_measures_fan_out(mode: &str) {
    const STREAMS: usize = 150;
    let dir = TempDir::new("cp-load");
    let v1: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let config = dir.write("mesh.yaml", &mesh(v1, v1));
    let cp = Cp::start(&config, &dir.path().join("data")).await;
    let (mut child, mut events) = start_load(
        &cp,
        mode,
        STREAMS,
        &["70/30", "20/80"],
        &["--duration", "60s", "--change-timeout", "20s"],
    );

    let start = next_event(&mut events);
    assert_eq!(start["event"], "start", "{start}");
    assert!(start["usage"]["cp"]["rss_kb"].as_u64() > Some(0), "{start}");
    let ready = next_event(&mut events);
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["ready"], STREAMS, "{ready}");
    for index in 0..2 {
        let change = next_event(&mut events);
        assert_eq!(change["event"], "change", "{change}");
        assert_eq!(change["index"], index, "{change}");
        assert_eq!(change["acked"], STREAMS, "{change}");
        assert_eq!(change["changed"], STREAMS, "{change}");
        assert_eq!(change["consistent"], true, "{change}");
        assert_eq!(change["timed_out"], false, "{change}");
        let latency = &change["latency"];
        let (min, p50, p99, max) = (
            latency["min_ms"].as_f64().expect("min"),
            latency["p50_ms"].as_f64().expect("p50"),
            latency["p99_ms"].as_f64().expect("p99"),
            latency["max_ms"].as_f64().expect("max"),
        );
        // Every stream ACKs after the trigger started, and the spread is ordered.
        assert!(
            0.0 < min && min <= p50 && p50 <= p99 && p99 <= max,
            "{change}"
        );
    }

    // While the streams stay open, legate-cp lists every simulated proxy as having ACKed
    // the same, final route configuration.
    let (ok, out, err) = cp.ctl(&["status", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let sims: Vec<&serde_json::Value> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["id"].as_str().is_some_and(|id| id.starts_with("sim-")))
        .collect();
    assert_eq!(sims.len(), STREAMS, "{out}");
    let mut route_versions = std::collections::BTreeSet::new();
    for n in &sims {
        let types = n["types"].as_array().expect("types");
        assert_eq!(types.len(), 4, "{n}");
        for t in types {
            assert_eq!(t["sent_version"], t["acked_version"], "{n}");
            assert!(t["last_nack"].is_null(), "{n}");
            if t["type_url"]
                .as_str()
                .is_some_and(|u| u.ends_with("RouteConfiguration"))
            {
                route_versions.insert(t["acked_version"].to_string());
            }
        }
    }
    assert_eq!(route_versions.len(), 1, "{route_versions:?}");
    let _ = child.kill();
    let _ = child.wait();

    // A trigger that changes nothing is reported as a failed change, with a hint.
    let (child, mut events) = start_load(&cp, mode, 10, &["20/80"], &["--change-timeout", "1s"]);
    let output = child.wait_with_output().expect("wait");
    let mut last = serde_json::Value::Null;
    while let Some(Ok(line)) = events.next() {
        last = serde_json::from_str(&line).expect("JSON");
    }
    assert_eq!(output.status.code(), Some(1), "{last}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("only 0 of 10 streams ACKed") && stderr.contains("change anything"),
        "{stderr}"
    );
    assert_eq!(last["event"], "done", "{last}");
}

#[tokio::test]
async fn load_tool_measures_fan_out_sotw() {
    load_tool_measures_fan_out("sotw").await;
}

#[tokio::test]
async fn load_tool_measures_fan_out_delta() {
    load_tool_measures_fan_out("delta").await;
}

/// With two `--server`s the load tool sends stream i to server i mod 2, each server over its
/// own connections, and still reports each change once over every stream, with each
/// server's share. The servers are two independent legate-cp processes (each its own data
/// dir) on one mesh file; the change is an edit of that file, which both pick up.
async fn load_tool_spreads_streams_over_servers(mode: &str) {
    const STREAMS: usize = 61;
    let dir = TempDir::new("cp-load-two");
    let v1: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let mesh_dir = dir.path().join("mesh");
    std::fs::create_dir(&mesh_dir).expect("mesh dir");
    let config = mesh_dir.join("mesh.yaml");
    let original = mesh(v1, v1);
    let swapped = original
        .replace("weight: 100", "weight: SWAP")
        .replace("weight: 0", "weight: 100")
        .replace("weight: SWAP", "weight: 0");
    assert_ne!(original, swapped);
    std::fs::write(&config, &original).expect("write mesh");
    let a = dir.write("a.yaml", &original);
    let b = dir.write("b.yaml", &swapped);
    let cps = [
        Cp::start(&config, &dir.path().join("data-0")).await,
        Cp::start(&config, &dir.path().join("data-1")).await,
    ];
    // Each change replaces the mesh file in one rename, so neither legate-cp reads half a
    // file: to the swapped weights, then back.
    let staging = dir.path().join("staging.yaml");
    let replace_with = |source: &std::path::Path| {
        format!(
            "cp {} {} && mv -f {} {}",
            source.display(),
            staging.display(),
            staging.display(),
            config.display()
        )
    };
    let triggers = [replace_with(&b), replace_with(&a)];
    let (mut child, mut events) = start_load_on(
        &[&cps[0], &cps[1]],
        mode,
        STREAMS,
        &triggers,
        &["--duration", "60s", "--change-timeout", "20s"],
    );
    let urls = [cps[0].url(), cps[1].url()];
    // Stream i goes to server i mod 2: 31 and 30 streams, 3 connections each.
    let shares = [31, 30];

    let start = next_event(&mut events);
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(start["streams"], STREAMS, "{start}");
    assert_eq!(start["connections"], 6, "{start}");
    let servers = start["servers"].as_array().expect("servers in start");
    assert_eq!(servers.len(), 2, "{start}");
    for (j, server) in servers.iter().enumerate() {
        assert_eq!(server["server"], urls[j].as_str(), "{start}");
        assert_eq!(server["streams"], shares[j], "{start}");
        assert_eq!(server["connections"], 3, "{start}");
    }

    let ready = next_event(&mut events);
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["ready"], STREAMS, "{ready}");
    for (j, server) in ready["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .enumerate()
    {
        assert_eq!(server["ready"], shares[j], "{ready}");
    }

    for index in 0..2 {
        let change = next_event(&mut events);
        assert_eq!(change["event"], "change", "{change}");
        assert_eq!(change["index"], index, "{change}");
        // One report over every stream of both servers.
        assert_eq!(change["streams"], STREAMS, "{change}");
        assert_eq!(change["acked"], STREAMS, "{change}");
        assert_eq!(change["changed"], STREAMS, "{change}");
        assert_eq!(change["timed_out"], false, "{change}");
        // Content-hash versions: both legate-cps serve the same configuration.
        assert_eq!(change["consistent"], true, "{change}");
        let max = change["latency"]["max_ms"].as_f64().expect("max");
        let servers = change["servers"].as_array().expect("servers in change");
        assert_eq!(servers.len(), 2, "{change}");
        let mut server_max = 0.0f64;
        for (j, server) in servers.iter().enumerate() {
            assert_eq!(server["server"], urls[j].as_str(), "{change}");
            assert_eq!(server["streams"], shares[j], "{change}");
            assert_eq!(server["acked"], shares[j], "{change}");
            server_max = server_max.max(server["latency"]["max_ms"].as_f64().expect("max"));
        }
        // The overall maximum is the larger of the servers' maxima.
        assert_eq!(max, server_max, "{change}");
    }

    // Each legate-cp lists exactly its share of the simulated proxies: the even-numbered
    // ones on the first, the odd-numbered on the second.
    for (j, cp) in cps.iter().enumerate() {
        let (ok, out, err) = cp.ctl(&["status", "-o", "json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
        let mut sims: Vec<usize> = v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["id"].as_str()?.strip_prefix("sim-")?.parse().ok())
            .collect();
        sims.sort_unstable();
        let expected: Vec<usize> = (0..STREAMS).filter(|i| i % 2 == j).collect();
        assert_eq!(sims, expected, "legate-cp {j}: {out}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn load_tool_spreads_streams_over_servers_sotw() {
    load_tool_spreads_streams_over_servers("sotw").await;
}

#[tokio::test]
async fn load_tool_spreads_streams_over_servers_delta() {
    load_tool_spreads_streams_over_servers("delta").await;
}
