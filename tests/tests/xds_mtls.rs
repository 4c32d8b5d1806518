//! The xDS channel over mTLS with node identity, end to end: the real legate-cp serving xDS
//! over TLS with required client certificates, the real legate dialling it over `https://`,
//! real Envoy 1.40 as another client, and direct gRPC clients from the test where the exact
//! status code matters. Certificates come from `legate_tls::issue`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use legate_tests::client::HttpClient;
use legate_tests::cp::{ControlPlane as Cp, Pki};
use legate_tests::peers::{Envoy, EnvoyAds, EnvoyXdsTls};
use legate_tests::process::TempDir;
use legate_tests::xds_server::Mode;
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, both_modes, eventually};
use legate_tls::files::ClientFiles;
use legate_tls::issue::LeafSpec;
use legate_xds::tls::TlsConnector;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const CDS: &str = legate_snapshot::type_url::CLUSTER;
const PATIENCE: Duration = Duration::from_secs(20);

/// A certificate and its key, on disk.
#[derive(Clone, Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn cert_str(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    fn key_str(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }
}

/// The harness' test CA, with the certificates this file needs.
struct TestPki(Pki);

impl TestPki {
    fn new(dir: &Path, name: &str) -> TestPki {
        TestPki(Pki::new(dir, name))
    }

    fn ca_path(&self) -> PathBuf {
        self.0.ca_file()
    }

    fn ca_str(&self) -> String {
        self.ca_path().display().to_string()
    }

    /// `spec` written to `DIR/STEM.pem` and `DIR/STEM.key` (replacing them if present).
    fn issue(&self, stem: &str, spec: &LeafSpec) -> CertFiles {
        let (cert, key) = self.0.issue(stem, spec);
        CertFiles { cert, key }
    }

    /// A server certificate for `localhost` and `127.0.0.1` with common name `cn`.
    fn server(&self, stem: &str, cn: &str) -> CertFiles {
        self.issue(
            stem,
            &LeafSpec::new(cn)
                .dns("localhost")
                .ip("127.0.0.1".parse().expect("ip")),
        )
    }

    /// A client certificate for `spiffe://legate.local/node/ID`.
    fn node(&self, stem: &str, id: &str) -> CertFiles {
        self.client(stem, &format!("spiffe://legate.local/node/{id}"))
    }

    fn client(&self, stem: &str, uri: &str) -> CertFiles {
        let (cert, key) = self.0.client(stem, uri);
        CertFiles { cert, key }
    }
}

/// What this file asks of the control plane beyond the harness.
trait CpExt {
    /// `https://localhost:PORT`: the name the test server certificates carry.
    fn https_url(&self) -> String;
    /// `legatectl status -o json`, parsed.
    fn status_json(&self) -> serde_json::Value;
}

impl CpExt for Cp {
    fn https_url(&self) -> String {
        format!("https://localhost:{}", self.xds.port())
    }

    fn status_json(&self) -> serde_json::Value {
        let (ok, out, err) = self.ctl(&["status", "-o", "json"]);
        assert!(ok, "legatectl status failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }
}

fn mesh(upstream: SocketAddr) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    endpoints: [{{address: {upstream}}}]
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
"#
    )
}

/// A control plane serving xDS over mTLS, its CA and the directory holding everything.
struct Setup {
    dir: TempDir,
    pki: TestPki,
    server: CertFiles,
    cp: Cp,
    _upstream: Upstream,
}

impl Setup {
    async fn start(name: &str) -> Setup {
        Setup::start_with(name, &[]).await
    }

    async fn start_with(name: &str, extra: &[&str]) -> Setup {
        let upstream = Upstream::start("payments", "v1", Protocol::Auto).await;
        let dir = TempDir::new(name);
        let pki = TestPki::new(dir.path(), "mesh");
        let server = pki.server("cp", "cp-one");
        let config = dir.write("mesh.yaml", &mesh(upstream.addr()));
        let ca = pki.ca_str();
        let mut args = vec![
            "--xds-tls-cert",
            server.cert_str(),
            "--xds-tls-key",
            server.key_str(),
            "--xds-client-ca",
            &ca,
        ];
        args.extend_from_slice(extra);
        let cp = Cp::start_with(&config, &dir.path().join("data"), &args).await;
        Setup {
            dir,
            pki,
            server,
            cp,
            _upstream: upstream,
        }
    }

    /// legate flags for node `id`/`cluster` dialling the control plane over https with
    /// `client` (or no client certificate).
    fn legate(&self, mode: Mode, id: &str, cluster: &str, client: Option<&CertFiles>) -> XdsFlags {
        let mut flags = XdsFlags::new(&self.cp.https_url(), mode)
            .node(id, cluster)
            .arg("--xds-ca")
            .arg(&self.pki.ca_str());
        if let Some(client) = client {
            flags = flags
                .arg("--xds-cert")
                .arg(client.cert_str())
                .arg("--xds-key")
                .arg(client.key_str());
        }
        flags
    }
}

/// A gRPC channel to `cp` over TLS, trusting `ca` and presenting `client`.
async fn tls_channel(
    cp: &Cp,
    ca: &Path,
    client: Option<&CertFiles>,
) -> Result<Channel, tonic::transport::Error> {
    let files = ClientFiles {
        ca: Some(ca.to_path_buf()),
        identity: client.map(|c| (c.cert.clone(), c.key.clone())),
        alpn: vec![b"h2".to_vec()],
    };
    let config = files
        .watch("test client", Duration::from_secs(60))
        .expect("client TLS config");
    Endpoint::from_shared(cp.https_url())
        .expect("url")
        .connect_with_connector(TlsConnector::new(config, None))
        .await
}

fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: cluster.to_owned(),
        ..Default::default()
    }
}

fn cds_request(node: Option<Node>, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        type_url: CDS.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// Opens an ADS stream as `first`, and (once answered) sends a second request naming
/// `second`. Returns the first status the stream ends with, or `Ok` with the number of
/// responses when it is still open after the last request was answered.
async fn ads_as(
    channel: Channel,
    first: Node,
    second: Option<Node>,
) -> Result<usize, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(cds_request(Some(first), ""))
        .await
        .expect("queue a request");
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(PATIENCE, responses.message())
        .await
        .expect("an answer in time")?
        .expect("a response before the end of the stream");
    let Some(second) = second else {
        return Ok(1);
    };
    tx.send(cds_request(Some(second), &answer.nonce))
        .await
        .expect("queue a request");
    // The ACK with a changed node is refused; nothing else would come after an ACK.
    match tokio::time::timeout(PATIENCE, responses.message())
        .await
        .expect("an answer in time")
    {
        Ok(Some(_)) => Ok(2),
        Ok(None) => Ok(1),
        Err(status) => Err(status),
    }
}

/// legate's `/legate_internal` `xds.last_error`, once there is one matching `want`.
async fn last_error(legate: &Legate, want: &str) -> serde_json::Value {
    eventually(PATIENCE, "legate reports the xDS error", || async {
        let dump = legate.admin_json("/legate_internal").await;
        let error = dump["xds"]["last_error"].clone();
        if error.to_string().contains(want) {
            Ok(error)
        } else {
            Err(format!("last_error: {error}"))
        }
    })
    .await
}

/// legate over mTLS gets its configuration and serves traffic, with a node identity and with
/// a shared cluster identity; legatectl shows who connected with which identity.
async fn legate_over_mtls_gets_config_and_serves(mode: Mode) {
    let s = Setup::start("xds-mtls").await;
    let proxy1 = s.pki.node("proxy-1", "proxy-1");
    let web = s.pki.client("web", "spiffe://legate.local/cluster/web");

    let a = Legate::start_xds(&s.legate(mode, "proxy-1", "web", Some(&proxy1))).await;
    let b = Legate::start_xds(&s.legate(mode, "proxy-2", "web", Some(&web))).await;
    for legate in [&a, &b] {
        let url = legate.url("outbound", "/payments/charge").await;
        let response = HttpClient::http1().get(&url).await;
        response.assert_status(200);
        assert_eq!(response.echo().name, "payments");
        let dump = legate.admin_json("/legate_internal").await;
        assert_eq!(dump["xds"]["connected"], true, "{}", dump["xds"]);
        assert_eq!(dump["xds"]["server"], s.cp.https_url().as_str());
    }

    let status = s.cp.status_json();
    for (id, identity) in [
        ("proxy-1", "spiffe://legate.local/node/proxy-1"),
        ("proxy-2", "spiffe://legate.local/cluster/web"),
    ] {
        let n = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {status}"));
        assert_eq!(n["identity"], identity, "{n}");
        let types = n["types"].as_array().expect("types");
        assert_eq!(types.len(), 4, "{n}");
        for t in types {
            assert_eq!(
                t["sent_version"], t["acked_version"],
                "{id} has not ACKed: {t}"
            );
        }
    }
    assert_eq!(status["refused"], serde_json::json!([]), "{status}");
    assert!(
        s.cp.log()
            .contains("xds_security=\"mtls, trust domain legate.local\""),
        "{}",
        s.cp.log()
    );
}

both_modes!(legate_over_mtls_gets_config_and_serves);

/// A certificate for node A claiming node B is refused with PermissionDenied: legate says so
/// in /ready and /config_dump, legate-cp logs it, counts it and lists it in legatectl status,
/// and the count moves as legate retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_a_claiming_node_b_is_refused() {
    let s = Setup::start("xds-mtls-steal").await;
    let node_a = s.pki.node("node-a", "node-a");
    let legate = Legate::spawn_xds(&s.legate(Mode::Sotw, "node-b", "web", Some(&node_a))).await;

    let error = last_error(&legate, "PermissionDenied").await;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "xds stream refused: identity 'spiffe://legate.local/node/node-a' may claim node id 'node-a' only, not 'node-b'"
        ),
        "{error}"
    );
    assert_eq!(error["tls_cause"], serde_json::Value::Null, "{error}");
    let ready = legate.admin_get("/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("may claim node id 'node-a' only"),
        "{}",
        ready.text()
    );

    let refusal = |status: &serde_json::Value| {
        status["refused"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["node_id"] == "node-b")
            .cloned()
    };
    let status = s.cp.status_json();
    let r = refusal(&status).unwrap_or_else(|| panic!("no refusal listed: {status}"));
    assert_eq!(r["reason"], "node-id", "{r}");
    assert_eq!(r["node_cluster"], "web", "{r}");
    assert_eq!(r["identity"], "spiffe://legate.local/node/node-a", "{r}");
    assert!(
        r["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{r}"
    );
    assert!(r["at_unix_ms"].as_i64() > Some(0), "{r}");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert!(
        nodes.iter().all(|n| n["id"] != "node-b"),
        "a refused node is not listed as connected: {status}"
    );
    let first = status["refusal_counts"]["node-id"]
        .as_u64()
        .expect("counted");
    assert!(first >= 1);
    // legate retries (backoff capped at 1 s in tests): each attempt is refused and counted.
    eventually(PATIENCE, "the refusal count moves", || async {
        let now = s.cp.status_json()["refusal_counts"]["node-id"]
            .as_u64()
            .unwrap_or_default();
        if now > first {
            Ok(())
        } else {
            Err(format!("still {now}"))
        }
    })
    .await;
    // The JSON admin API lists the same.
    let bearer = s.cp.bearer();
    let json =
        s.cp.json(
            "GET",
            "/v1/nodes",
            &[("authorization", bearer.as_str())],
            legate_tests::client::empty(),
        )
        .await;
    assert_eq!(json.status.as_u16(), 200, "{}", json.describe());
    let v: serde_json::Value = json.json();
    assert!(v["refusal_counts"]["node-id"].as_u64() >= Some(1), "{v}");
    assert!(
        v["refused"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["node_id"] == "node-b" && r["reason"] == "node-id"),
        "{v}"
    );
    let (ok, table, err) = s.cp.ctl(&["status"]);
    assert!(ok, "{err}");
    assert!(table.contains("REFUSED STREAMS: node-id="), "{table}");
    assert!(
        table.contains("spiffe://legate.local/node/node-a"),
        "{table}"
    );
    let log = s.cp.log();
    assert!(
        log.contains("xds stream refused") && log.contains("reason=\"node-id\""),
        "{log}"
    );

    // The exact code, seen by a gRPC client of our own, for each way a node may be claimed.
    let ca = s.pki.ca_path();
    let denied = |result: Result<usize, tonic::Status>, want: &str| match result {
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(status.message().contains(want), "{status:?}");
        }
        Ok(n) => panic!("not refused ({n} responses); wanted: {want}"),
    };
    let channel = tls_channel(&s.cp, &ca, Some(&node_a))
        .await
        .expect("handshake");
    denied(
        ads_as(channel.clone(), node("node-b", "web"), None).await,
        "may claim node id 'node-a' only, not 'node-b'",
    );
    assert_eq!(
        ads_as(channel.clone(), node("node-a", "web"), None)
            .await
            .ok(),
        Some(1)
    );
    denied(
        ads_as(channel, node("node-a", "web"), Some(node("node-c", "web"))).await,
        "the node changed within the stream, from 'node-a/web' to 'node-c/web'",
    );
    let web = s.pki.client("web", "spiffe://legate.local/cluster/web");
    let channel = tls_channel(&s.cp, &ca, Some(&web))
        .await
        .expect("handshake");
    assert_eq!(
        ads_as(channel.clone(), node("any-1", "web"), None)
            .await
            .ok(),
        Some(1)
    );
    denied(
        ads_as(channel, node("any-1", "db"), None).await,
        "may claim nodes of cluster 'web' only, not cluster 'db'",
    );
    let elsewhere = s
        .pki
        .client("elsewhere", "spiffe://other.domain/node/node-a");
    let channel = tls_channel(&s.cp, &ca, Some(&elsewhere))
        .await
        .expect("handshake");
    denied(
        ads_as(channel, node("node-a", "web"), None).await,
        "is not in trust domain 'legate.local'",
    );
    let anonymous = s.pki.issue(
        "anon",
        &LeafSpec::new("anon").dns("anon.internal").client_only(),
    );
    let channel = tls_channel(&s.cp, &ca, Some(&anonymous))
        .await
        .expect("handshake");
    denied(
        ads_as(channel, node("node-a", "web"), None).await,
        "carries no spiffe:// URI SAN",
    );
    let counts = s.cp.status_json()["refusal_counts"].clone();
    for reason in [
        "node-id",
        "node-changed",
        "node-cluster",
        "trust-domain",
        "no-identity",
    ] {
        assert!(counts[reason].as_u64() >= Some(1), "{reason}: {counts}");
    }
}

/// TLS-level refusals on both sides, each named by its cause: no client certificate, a client
/// certificate from another CA (refused by legate-cp), and a control plane certificate from an
/// unknown CA, for another name, or expired (refused by legate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_refused_with_their_cause() {
    let s = Setup::start("xds-mtls-handshake").await;

    // No client certificate: legate-cp requires one.
    let legate = Legate::spawn_xds(&s.legate(Mode::Sotw, "p1", "web", None)).await;
    let error = last_error(&legate, "certificate-required").await;
    assert_eq!(error["tls_cause"], "certificate-required", "{error}");
    drop(legate);
    // A client certificate from another CA.
    let other = TestPki::new(s.dir.path(), "other");
    let stranger = other.node("stranger", "p1");
    let legate = Legate::spawn_xds(&s.legate(Mode::Delta, "p1", "web", Some(&stranger))).await;
    let error = last_error(&legate, "rejected-unknown-ca").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("UnknownCA"),
        "{error}"
    );
    let metrics = legate.metrics().await;
    let failures = metrics.get_or_zero(
        "legate_xds_tls_failures_total",
        &[("cause", "rejected-unknown-ca")],
    );
    assert!(failures >= 1.0, "legate_xds_tls_failures_total: {failures}");
    drop(legate);

    let status = s.cp.status_json();
    let handshakes: Vec<&serde_json::Value> = status["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["reason"] == "tls-handshake")
        .collect();
    for cause in ["no-certificate", "unknown-ca"] {
        assert!(
            handshakes
                .iter()
                .any(|r| r["message"].as_str().is_some_and(|m| m.contains(cause))),
            "no {cause} handshake refusal: {status}"
        );
    }
    assert!(
        status["refusal_counts"]["tls-handshake"].as_u64() >= Some(2),
        "{status}"
    );
    assert!(
        s.cp.log().contains("xds tls handshake refused"),
        "{}",
        s.cp.log()
    );

    // legate verifies the control plane: unknown CA, name mismatch.
    let client = s.pki.node("p1", "p1");
    let flags = XdsFlags::new(&s.cp.https_url(), Mode::Sotw)
        .node("p1", "web")
        .arg("--xds-ca")
        .arg(&other.ca_str())
        .arg("--xds-cert")
        .arg(client.cert_str())
        .arg("--xds-key")
        .arg(client.key_str());
    let legate = Legate::spawn_xds(&flags).await;
    let error = last_error(&legate, "\"unknown-ca\"").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("signed by an unknown CA"),
        "{error}"
    );
    drop(legate);
    let flags = s
        .legate(Mode::Sotw, "p1", "web", Some(&client))
        .arg("--xds-server-name")
        .arg("cp.elsewhere.test");
    let legate = Legate::spawn_xds(&flags).await;
    let error = last_error(&legate, "name-mismatch").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("server name 'cp.elsewhere.test'"),
        "{error}"
    );
    drop(legate);

    // An expired control plane certificate.
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    s.pki.issue(
        "expired",
        &LeafSpec::new("expired")
            .dns("localhost")
            .valid(now - 3 * day, now - day),
    );
    let expired_dir = TempDir::new("xds-mtls-expired");
    let upstream: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let config = expired_dir.write("mesh.yaml", &mesh(upstream));
    let cert = s.dir.path().join("expired.pem");
    let key = s.dir.path().join("expired.key");
    let cp = Cp::start_with(
        &config,
        &expired_dir.path().join("data"),
        &[
            "--xds-tls-cert",
            cert.to_str().expect("path"),
            "--xds-tls-key",
            key.to_str().expect("path"),
        ],
    )
    .await;
    let flags = XdsFlags::new(&cp.https_url(), Mode::Sotw)
        .node("p1", "web")
        .arg("--xds-ca")
        .arg(&s.pki.ca_str());
    let legate = Legate::spawn_xds(&flags).await;
    let error = last_error(&legate, "\"expired\"").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("has expired"),
        "{error}"
    );
    assert!(
        legate.output().contains("tls_cause=\"expired\""),
        "{}",
        legate.output()
    );
}

/// Rotating legate-cp's certificate files: a new connection gets the new certificate, the
/// proxy already connected keeps its stream and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_rotation_applies_to_new_connections() {
    let s = Setup::start("xds-mtls-rotate").await;
    let proxy = s.pki.node("proxy-1", "proxy-1");
    let legate = Legate::start_xds(&s.legate(Mode::Sotw, "proxy-1", "web", Some(&proxy))).await;
    let url = legate.url("outbound", "/payments/x").await;

    assert_eq!(presented_cn(&s, &proxy).await, "cp-one");

    let rotated = s.pki.server("cp", "cp-two");
    assert_eq!(
        rotated.cert, s.server.cert,
        "rewrites the files legate-cp watches"
    );
    eventually(
        PATIENCE,
        "new connections get the new certificate",
        || async {
            match presented_cn(&s, &proxy).await.as_str() {
                "cp-two" => Ok(()),
                other => Err(format!("still {other}")),
            }
        },
    )
    .await;
    // The reload is logged after the new files are in use: wait for the line.
    eventually(PATIENCE, "legate-cp logs the reload", || async {
        if s.cp.log().contains("reloaded changed TLS files") {
            Ok(())
        } else {
            Err(s.cp.log())
        }
    })
    .await;

    // The proxy's stream, opened before the rotation, is still the one it had.
    let status = s.cp.status_json();
    let n = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == "proxy-1")
        .cloned()
        .unwrap_or_else(|| panic!("proxy-1 missing: {status}"));
    assert_eq!(n["streams"], 1, "{n}");
    let restarts = legate
        .metrics()
        .await
        .get_or_zero("legate_xds_stream_restarts_total", &[]);
    assert_eq!(
        restarts, 0.0,
        "the stream opened before the rotation was never restarted"
    );
    HttpClient::http1().get(&url).await.assert_status(200);
}

/// The common name of the certificate legate-cp presents to a new TLS connection.
async fn presented_cn(s: &Setup, client: &CertFiles) -> String {
    use legate_tls::tokio_rustls::TlsConnector as RawConnector;
    let files = ClientFiles {
        ca: Some(s.pki.ca_path()),
        identity: Some((client.cert.clone(), client.key.clone())),
        alpn: vec![b"h2".to_vec()],
    };
    let config = files.load("probe").expect("client config");
    let tcp = tokio::net::TcpStream::connect(s.cp.xds)
        .await
        .expect("connect");
    let name = legate_tls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = RawConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    let info = legate_tls::config::peer_info(session.peer_certificates()).expect("a certificate");
    info.subject
        .strip_prefix("CN=")
        .unwrap_or(&info.subject)
        .to_owned()
}

/// Real Envoy connects to legate-cp over mTLS with a certificate carrying its node's SPIFFE
/// id, gets listeners and clusters, ACKs them and routes traffic.
async fn envoy_over_mtls(mode: EnvoyAds) {
    let s = Setup::start("xds-mtls-envoy").await;
    let cert = s.pki.node("envoy-1", "envoy-1");
    let tls = EnvoyXdsTls {
        ca: s.pki.ca_path(),
        server_name: "localhost".to_owned(),
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    };
    let envoy = Envoy::start_ads_tls(s.cp.xds, mode, "envoy-1", "web", &tls).await;
    let url = eventually(Duration::from_secs(30), "Envoy listener active", || async {
        if envoy.stat("listener_manager.total_listeners_active").await != Some(1) {
            return Err(format!("not active yet\n{}", s.cp.log()));
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
    // The listener is active; the first requests may still race its cluster's warm-up.
    eventually(PATIENCE, "Envoy routes to the upstream", || async {
        let response = HttpClient::http1()
            .try_request("GET", &url, &[], legate_tests::client::empty())
            .await
            .map_err(|e| format!("{e:#}"))?;
        if response.status.as_u16() == 200 && response.echo().name == "payments" {
            Ok(())
        } else {
            Err(response.describe())
        }
    })
    .await;
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_rejected").await,
        Some(0)
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        Some(0)
    );
    assert_eq!(envoy.stat("control_plane.connected_state").await, Some(1));

    eventually(PATIENCE, "Envoy ACKed every type", || async {
        let status = s.cp.status_json();
        let n = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == "envoy-1")
            .cloned()
            .ok_or_else(|| format!("envoy-1 missing: {status}"))?;
        if n["identity"] != "spiffe://legate.local/node/envoy-1" {
            return Err(format!("identity: {n}"));
        }
        let types = n["types"].as_array().cloned().unwrap_or_default();
        if types.len() != 4 {
            return Err(format!("types: {n}"));
        }
        for t in &types {
            if !t["last_nack"].is_null() {
                panic!("Envoy NACKed: {t}");
            }
            if t["sent_version"] != t["acked_version"] {
                return Err(format!("not ACKed: {t}"));
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(s.cp.status_json()["refused"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_mtls_sotw() {
    envoy_over_mtls(EnvoyAds::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_mtls_delta() {
    envoy_over_mtls(EnvoyAds::Delta).await;
}

/// Envoy with a certificate for another node is refused like legate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_another_nodes_certificate_is_refused() {
    let s = Setup::start("xds-mtls-envoy-steal").await;
    let cert = s.pki.node("envoy-1", "envoy-1");
    let tls = EnvoyXdsTls {
        ca: s.pki.ca_path(),
        server_name: "localhost".to_owned(),
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    };
    let _envoy = Envoy::start_ads_tls(s.cp.xds, EnvoyAds::Sotw, "envoy-2", "web", &tls).await;
    eventually(PATIENCE, "the refusal is listed", || async {
        let status = s.cp.status_json();
        let found = status["refused"].as_array().into_iter().flatten().any(|r| {
            r["node_id"] == "envoy-2"
                && r["reason"] == "node-id"
                && r["identity"] == "spiffe://legate.local/node/envoy-1"
        });
        if found {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
}

/// xDS without client certificates on a non-loopback address needs --insecure; client CA
/// flags need a server certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_xds_without_client_certificates_needs_insecure() {
    let dir = TempDir::new("xds-insecure");
    let config = dir.write("mesh.yaml", &mesh("127.0.0.1:1".parse().expect("addr")));
    let data = dir.path().join("data");
    let refused = |extra: &'static [&'static str]| {
        let (config, data) = (config.clone(), data.clone());
        async move {
            match Cp::try_start(&config, &data, extra).await {
                Ok(_) => panic!("legate-cp started with {extra:?}"),
                Err(output) => output,
            }
        }
    };
    let output = refused(&["--xds-address", "0.0.0.0:0"]).await;
    assert!(
        output.contains("refusing to serve xDS with plaintext on non-loopback address 0.0.0.0:0"),
        "{output}"
    );
    let output = refused(&["--xds-client-ca", "/nonexistent/ca.pem"]).await;
    assert!(output.contains("--xds-tls-cert"), "{output}");

    let cp = Cp::start_with(
        &config,
        &data,
        &["--xds-address", "0.0.0.0:0", "--insecure"],
    )
    .await;
    let log = cp.log();
    assert!(
        log.contains("serving xDS with plaintext on a non-loopback address (--insecure)"),
        "{log}"
    );
}

/// legate's own certificate files are re-read: a certificate that may not claim the node is
/// refused until the files are replaced with one that may, and the next reconnect succeeds.
/// The TLS settings come from the bootstrap file here, and the URL is an address verified
/// under another name (`server_name`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_rotation_applies_at_the_next_reconnect() {
    let s = Setup::start("xds-mtls-client-rotate").await;
    let client = s.pki.node("client", "someone-else");
    let bootstrap = format!(
        r#"node: {{id: proxy-9, cluster: web}}
xds:
  servers: ["https://127.0.0.1:{port}"]
  server_name: localhost
  ca: "{ca}"
  cert: "{cert}"
  key: "{key}"
  initial_fetch_timeout: 1s
  backoff_max: 1s
"#,
        port = s.cp.xds.port(),
        ca = s.pki.ca_str(),
        cert = client.cert_str(),
        key = client.key_str(),
    );
    let legate = Legate::launch(Some(&bootstrap), &[], legate_tests::WaitFor::Admin).await;
    let error = last_error(&legate, "PermissionDenied").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("may claim node id 'someone-else' only, not 'proxy-9'"),
        "{error}"
    );
    assert_eq!(legate.ready_status().await, 503);

    let rotated = s.pki.node("client", "proxy-9");
    assert_eq!(
        rotated.cert, client.cert,
        "rewrites the files legate watches"
    );
    legate.wait_ready(PATIENCE).await;
    let url = legate.url("outbound", "/payments/x").await;
    HttpClient::http1().get(&url).await.assert_status(200);
    assert!(
        legate.output().contains("reloaded changed TLS files"),
        "{}",
        legate.output()
    );
    let status = s.cp.status_json();
    let n = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == "proxy-9")
        .cloned()
        .unwrap_or_else(|| panic!("proxy-9 missing: {status}"));
    assert_eq!(n["identity"], "spiffe://legate.local/node/proxy-9", "{n}");
}

/// Opens a load report (LRS) stream whose first request names `first`; once answered, sends
/// a report for `cluster` (three requests) naming `later` as its node. Returns the status the
/// stream ends with, or `Ok` when the report was taken and the stream stays open.
async fn lrs_as(
    channel: Channel,
    first: Node,
    later: Option<Node>,
    cluster: &str,
) -> Result<(), tonic::Status> {
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};
    use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
    use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
    let (tx, rx) = mpsc::channel(4);
    tx.send(LoadStatsRequest {
        node: Some(first),
        cluster_stats: Vec::new(),
    })
    .await
    .expect("queue a request");
    let mut responses = LoadReportingServiceClient::new(channel)
        .stream_load_stats(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::time::timeout(PATIENCE, responses.message())
        .await
        .expect("an answer in time")?
        .expect("settings before the end of the stream");
    tx.send(LoadStatsRequest {
        node: later,
        cluster_stats: vec![ClusterStats {
            cluster_name: cluster.to_owned(),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                total_issued_requests: 3,
                total_successful_requests: 3,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
    .await
    .expect("queue a report");
    // legate-cp answers an LRS stream once; the next thing on it is its end, if any.
    match tokio::time::timeout(Duration::from_secs(3), responses.message()).await {
        Err(_) | Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(m))) => panic!("a second answer: {m:?}"),
        Ok(Err(status)) => Err(status),
    }
}

async fn payments_load(cp: &Cp) -> serde_json::Value {
    let l = cp
        .get_json("/v1/load?service=payments")
        .await
        .unwrap_or_else(|e| panic!("GET /v1/load: {e}"));
    l["services"][0]["versions"][0].clone()
}

/// The load report stream (LRS) obeys the same node identity as xDS: a certificate for node A
/// opening it as node B, or switching to node B within it, is refused with PermissionDenied
/// (listed by legatectl status); as node A its reports are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lrs_stream_claiming_another_node_is_refused() {
    let s = Setup::start_with("lrs-mtls-steal", &["--lrs-interval", "1s"]).await;
    let node_a = s.pki.node("node-a", "node-a");
    let channel = || async {
        tls_channel(&s.cp, &s.pki.ca_path(), Some(&node_a))
            .await
            .expect("TLS channel")
    };

    let status = lrs_as(channel().await, node("node-b", "web"), None, "payments")
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "xds stream refused: identity 'spiffe://legate.local/node/node-a' may claim node id \
         'node-a' only, not 'node-b'"
    );
    let status = lrs_as(
        channel().await,
        node("node-a", "web"),
        Some(node("node-b", "web")),
        "payments",
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "xds stream refused: the node changed within the stream, from 'node-a/web' to 'node-b/web'"
    );
    // Neither refused stream's report was kept.
    assert_eq!(payments_load(&s.cp).await["issued"].as_u64(), Some(0));
    let refused = s.cp.status_json()["refused"].clone();
    assert!(
        refused
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["node_id"] == "node-b" && r["reason"] == "node-id"),
        "{refused}"
    );

    // As itself, node A reports (its later requests may repeat its node or leave it out).
    lrs_as(
        channel().await,
        node("node-a", "web"),
        Some(node("node-a", "web")),
        "payments",
    )
    .await
    .expect("node-a reports");
    let v = payments_load(&s.cp).await;
    assert_eq!(v["issued"].as_u64(), Some(3), "{v}");
    assert_eq!(v["nodes_reporting"].as_u64(), Some(1), "{v}");
}

/// legate's load reports go over the xDS channel's TLS, with its client certificate and
/// node: legate-cp (client certificates required) takes them as that identity, and a legate
/// whose certificate may not speak for its node is refused on LRS as on xDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_reports_load_over_mtls_with_its_xds_identity() {
    let s = Setup::start_with("lrs-mtls", &["--lrs-interval", "1s"]).await;
    let proxy1 = s.pki.node("proxy-1", "proxy-1");
    let legate = Legate::start_xds(&s.legate(Mode::Sotw, "proxy-1", "web", Some(&proxy1))).await;
    let url = legate.url("outbound", "/payments/charge").await;
    let http = HttpClient::http1();
    for _ in 0..5 {
        http.get(&url).await.assert_status(200);
    }
    let v = eventually(PATIENCE, "legate's load at legate-cp", || async {
        let v = payments_load(&s.cp).await;
        if v["issued"].as_u64() == Some(5) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(v["nodes_reporting"].as_u64(), Some(1), "{v}");
    let log = s.cp.log();
    assert!(
        log.lines().any(|l| l.contains("load report stream opened")
            && l.contains("proxy-1")
            && l.contains("spiffe://legate.local/node/proxy-1")),
        "{log}"
    );

    // proxy-1's certificate does not let another node report.
    let thief = Legate::spawn_xds(&s.legate(Mode::Sotw, "proxy-2", "web", Some(&proxy1))).await;
    eventually(PATIENCE, "legate's load report stream refused", || async {
        let out = thief.output();
        let refused = out.lines().any(|l| {
            l.contains("load report stream failed")
                && l.contains("may claim node id 'proxy-1' only, not 'proxy-2'")
        });
        if refused { Ok(()) } else { Err(out) }
    })
    .await;
    assert!(
        !s.cp
            .log()
            .lines()
            .any(|l| l.contains("load report stream opened") && l.contains("proxy-2")),
        "{}",
        s.cp.log()
    );
}
