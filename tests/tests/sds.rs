//! SDS end to end: legate-cp reads certificate files named by the mesh's `secrets`, serves them
//! over SDS only to the nodes whose clusters name them, and legate and real Envoy 1.40 take
//! their client certificate and CA from there to do mTLS with an upstream that requires client
//! certificates (`tests/interop/tls_server.py`: Python's `ssl`, OpenSSL, nothing shared with
//! rustls). Rotating the files on
//! legate-cp's disk reaches new connections with no failed request; the disk cache never holds
//! a private key. Fails (never skips) when Envoy or python3 is missing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use legate_tests::client::HttpClient;
use legate_tests::cp::ControlPlane;
use legate_tests::peers::repo_root;
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::process::ListeningProcess;
use legate_tests::process::TempDir;
use legate_tests::tls::replace_file;
use legate_tests::xds_server::{Mode, SDS, XdsServer};
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, both_modes, eventually};
use legate_tls::issue::{Authority, LeafSpec};

const PAYMENTS_ID: &str = "spiffe://legate.local/ns/default/sa/payments";

/// The mesh: `payments` over mTLS (client certificate `web-client`, or `billing-client` for
/// nodes of cluster `billing`), `orders` in plaintext.
fn mesh(payments: SocketAddr, orders: SocketAddr, max_requests_per_connection: u32) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
secrets:
  - {{name: mesh-ca, ca: mesh-ca.pem}}
  - {{name: web-client, cert: web-client.pem, key: web-client.key}}
  - {{name: billing-client, cert: billing-client.pem, key: billing-client.key}}
services:
  - name: payments
    endpoints: [{{address: "{payments}"}}]
    max_requests_per_connection: {max_requests_per_connection}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
    tls:
      sni: payments.internal
      ca: mesh-ca
      subject_alt_names: ["{PAYMENTS_ID}"]
      client_certificate: web-client
      client_certificates: [{{node_cluster: billing, secret: billing-client}}]
  - name: orders
    endpoints: [{{address: "{orders}"}}]
    route: {{prefix: /orders/, rewrite: /, timeout: 5s}}
"#
    )
}

/// A PKI, the TLS upstream that requires its client certificates, a plaintext upstream, the
/// mesh, and legate-cp serving it (all files in one directory, named relative to the mesh).
struct World {
    dir: TempDir,
    ca: Authority,
    payments: ListeningProcess,
    orders: Upstream,
    mesh: String,
    cp: Option<ControlPlane>,
}

impl World {
    /// The world with legate-cp serving the mesh.
    async fn start(max_requests_per_connection: u32) -> World {
        let mut world = World::without_cp(max_requests_per_connection).await;
        let config = world.dir.path().join("mesh.yaml");
        world.cp = Some(ControlPlane::start(&config, &world.dir.path().join("data")).await);
        world
    }

    fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("this world runs legate-cp")
    }

    /// The mesh's resources as legate-cp serves them to nodes no client certificate rule
    /// selects: compiled, the secrets' files read into them.
    fn served(&self) -> legate_snapshot::Resources {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
        let mesh = legate_model::load(&self.mesh, "mesh.yaml").expect("mesh");
        let mut r = legate_model::compile(&mesh);
        for secret in &mut r.secrets {
            let sources = match &mut secret.r#type {
                Some(Type::TlsCertificate(c)) => vec![&mut c.certificate_chain, &mut c.private_key],
                Some(Type::ValidationContext(v)) => vec![&mut v.trusted_ca],
                _ => Vec::new(),
            };
            for source in sources.into_iter().flatten() {
                if let Some(Specifier::Filename(f)) = &source.specifier {
                    let bytes = std::fs::read(self.dir.path().join(f)).expect("secret file");
                    source.specifier = Some(Specifier::InlineBytes(bytes));
                }
            }
        }
        r
    }

    async fn without_cp(max_requests_per_connection: u32) -> World {
        let dir = TempDir::new("sds");
        let ca = Authority::new("mesh ca").expect("ca");
        let ca_file = dir.write("mesh-ca.pem", ca.cert_pem());
        let server = LeafSpec::new("payments")
            .dns("payments.internal")
            .uri(PAYMENTS_ID);
        write_pair(&ca, dir.path(), "payments", &server);
        for name in ["web-client", "billing-client"] {
            write_pair(&ca, dir.path(), name, &LeafSpec::new(name).client_only());
        }
        let (cert, key) = (
            dir.path().join("payments.pem"),
            dir.path().join("payments.key"),
        );
        let payments = python_tls(&cert, &key, &ca_file).await;
        let orders = Upstream::start("orders", "v1", Protocol::Auto).await;
        let mesh = mesh(payments.addr(), orders.addr(), max_requests_per_connection);
        dir.write("mesh.yaml", &mesh);
        World {
            dir,
            ca,
            payments,
            orders,
            mesh,
            cp: None,
        }
    }

    /// Replace `name`'s certificate and key with a new pair whose common name is `cn`, the way
    /// a rotation script would: each file written to a temporary name, then renamed over.
    fn rotate(&self, name: &str, cn: &str) {
        write_pair(
            &self.ca,
            self.dir.path(),
            name,
            &LeafSpec::new(cn).client_only(),
        );
    }

    /// Every private key this world holds, as the middle line of its PEM (any run of a key's
    /// base64 would betray it).
    fn key_lines(&self) -> Vec<String> {
        ["payments", "web-client", "billing-client"]
            .iter()
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("{n}.key")))
                    .expect("key")
                    .lines()
                    .nth(1)
                    .expect("key body")
                    .to_owned()
            })
            .collect()
    }
}

/// The Python TLS server (OpenSSL) with `cert`, requiring client certificates `client_ca`
/// signed.
async fn python_tls(cert: &Path, key: &Path, client_ca: &Path) -> ListeningProcess {
    let script = repo_root().join("tests/interop/tls_server.py");
    let args = [
        script.display().to_string(),
        "--cert".to_owned(),
        cert.display().to_string(),
        "--key".to_owned(),
        key.display().to_string(),
        "--client-ca".to_owned(),
        client_ca.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ListeningProcess::start("python tls server", Path::new("python3"), &args).await
}

/// The client certificate common names of the server's completed handshakes, in order.
fn handshakes(server: &ListeningProcess) -> Vec<String> {
    server
        .output()
        .lines()
        .filter_map(|l| l.split("handshake ok CN=").nth(1))
        .map(str::to_owned)
        .collect()
}

/// The client certificate's common name the Python server saw, from its answer (`None` for
/// any other answer).
fn seen_cn(r: &legate_tests::HttpResponse) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    body["client_subject"]["commonName"]
        .as_str()
        .map(str::to_owned)
}

/// Issue `spec` into `<dir>/<name>.pem` and `.key`, each written to a temporary name and
/// renamed over, the way a rotation script (or cert-manager) replaces files.
fn write_pair(ca: &Authority, dir: &Path, name: &str, spec: &LeafSpec) {
    let issued = ca.issue(spec).expect("issue");
    replace_file(&dir.join(format!("{name}.pem")), &issued.cert_pem);
    replace_file(&dir.join(format!("{name}.key")), &issued.key_pem);
}

async fn legate(
    world: &World,
    mode: Mode,
    id: &str,
    node_cluster: &str,
    cache: Option<&Path>,
) -> Legate {
    let mut flags = XdsFlags::new(&world.cp().url(), mode)
        .node(id, node_cluster)
        .initial_fetch_timeout("5s");
    if let Some(dir) = cache {
        flags = flags.cache_dir(dir);
    }
    Legate::start_xds(&flags).await
}

async fn client_cn(legate: &Legate) -> String {
    let url = legate.url("outbound", "/payments/who").await;
    let r = HttpClient::http1().get(&url).await;
    r.assert_status(200);
    seen_cn(&r).unwrap_or_else(|| panic!("no client certificate seen: {}", r.describe()))
}

async fn mtls_with_certificates_from_sds(mode: Mode) {
    let world = World::start(0).await;
    let web = legate(&world, mode, "web-1", "web", None).await;
    assert_eq!(client_cn(&web).await, "web-client");
    HttpClient::http1()
        .get(&web.url("outbound", "/orders/x").await)
        .await
        .assert_status(200);
    // The certificate SDS delivered is the one whose expiry legate reports (a year, as issued).
    let left = web.metrics().await.value(
        "legate_tls_certificate_expiry_seconds",
        &[
            ("owner", "cluster"),
            ("name", "payments"),
            ("role", "client"),
        ],
    );
    let year = 365.0 * 86_400.0;
    assert!((year - 600.0..=year).contains(&left), "{left}");
    // Another node cluster gets its own certificate, and only it.
    let billing = legate(&world, mode, "billing-1", "billing", None).await;
    assert_eq!(client_cn(&billing).await, "billing-client");

    // Nothing the proxy or the control plane shows carries a private key.
    let dump = web.admin_get("/config_dump").await.text();
    let dump_json: serde_json::Value = serde_json::from_str(&dump).expect("config_dump json");
    let (ok, node, err) = world.cp().ctl(&["get", "node", "web-1", "-o", "json"]);
    assert!(ok, "legatectl get node: {err}");
    // Envoy's redaction of an inline key: the bytes of `[redacted]`, base64 in JSON.
    assert!(
        node.contains("W3JlZGFjdGVkXQ=="),
        "the secret is listed: {node}"
    );
    for line in world.key_lines() {
        assert!(!dump.contains(&line), "/config_dump holds a private key");
        assert!(!node.contains(&line), "legatectl holds a private key");
        assert!(
            !world.cp().log().contains(&line),
            "legate-cp logged a private key"
        );
        assert!(!web.output().contains(&line), "legate logged a private key");
    }
    assert!(
        !node.contains("billing-client"),
        "a web node is not sent the billing certificate: {node}"
    );
    // Envoy's dump lists both secrets, keys redacted as Envoy does.
    let secrets = dump_json["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump")
        })
        .map(|c| c["dynamic_active_secrets"].clone())
        .unwrap_or_default();
    assert_eq!(secrets.as_array().map(Vec::len), Some(2), "{dump}");
    assert!(dump.contains("W3JlZGFjdGVkXQ=="), "{dump}");
    let internal = web.admin_json("/legate_internal").await;
    let sds = internal["xds"]["types"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["type_url"] == legate_tests::xds_server::SDS)
        .cloned()
        .unwrap_or_default();
    assert_eq!(sds["resources"], 2, "{sds}");
    assert_eq!(sds["rejected"], 0, "{sds}");
}

both_modes!(mtls_with_certificates_from_sds);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    // Connections are recycled every 20 requests, so new ones keep being opened under load.
    let world = World::start(20).await;
    let web = legate(&world, Mode::Sotw, "web-1", "web", None).await;
    assert_eq!(client_cn(&web).await, "web-client");
    let url = Arc::new(web.url("outbound", "/payments/load").await);

    const REQUESTS: usize = 2_000;
    const CONCURRENCY: usize = 8;
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rotated_seen = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (url, next, failures, rotated_seen) = (
            url.clone(),
            next.clone(),
            failures.clone(),
            rotated_seen.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = HttpClient::http1().with_timeout(Duration::from_secs(10));
            while next.fetch_add(1, Ordering::Relaxed) < REQUESTS && Instant::now() < deadline {
                match http.try_get(&url).await {
                    Ok(r) if r.status == 200 => {
                        if seen_cn(&r).as_deref() == Some("web-client-2") {
                            rotated_seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => failures.lock().expect("lock").push(r.describe()),
                    Err(e) => failures.lock().expect("lock").push(format!("{e:#}")),
                }
            }
        }));
    }
    // Rotate once a quarter of the load went through.
    eventually(Duration::from_secs(30), "load started", || async {
        let n = next.load(Ordering::Relaxed);
        if n >= REQUESTS / 4 {
            Ok(())
        } else {
            Err(format!("{n} requests"))
        }
    })
    .await;
    world.rotate("web-client", "web-client-2");
    for t in tasks {
        t.await.expect("load task");
    }
    let failures = failures.lock().expect("lock").clone();
    let sent = next.load(Ordering::Relaxed).min(REQUESTS);
    assert_eq!(
        sent, REQUESTS,
        "the load did not finish within its 60 s bound"
    );
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed through the rotation; first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        rotated_seen.load(Ordering::Relaxed) > 0,
        "no request went out on a connection with the new certificate; handshakes: {:?}\n{}",
        handshakes(&world.payments),
        world.cp().log()
    );
    // Every connection after the switch presents the new certificate.
    let handshakes = handshakes(&world.payments);
    let first_new = handshakes
        .iter()
        .position(|cn| cn == "web-client-2")
        .expect("a handshake with the new certificate");
    assert!(
        handshakes[first_new..]
            .iter()
            .all(|cn| cn == "web-client-2"),
        "the old certificate came back: {handshakes:?}"
    );
    assert!(
        !world.payments.output().contains("handshake failed"),
        "{}",
        world.payments.output()
    );
    assert!(
        world
            .cp()
            .log()
            .contains("certificate files changed: new secrets pushed"),
        "{}",
        world.cp().log()
    );
}

/// The cache keeps the CA (public) and never a key; a cold start from it serves everything
/// but the clusters whose certificate only SDS can bring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_never_holds_a_private_key() {
    let world = World::start(0).await;
    let cache = TempDir::new("sds-cache");
    {
        let web = legate(&world, Mode::Delta, "web-1", "web", Some(cache.path())).await;
        assert_eq!(client_cn(&web).await, "web-client");
    }
    let bytes = std::fs::read(cache.path().join("xds-cache.bin")).expect("cache written");
    let text = String::from_utf8_lossy(&bytes);
    for line in world.key_lines() {
        assert!(!text.contains(&line), "the cache holds a private key");
    }
    let ca = world.ca.cert_pem();
    assert!(
        text.contains(ca.lines().nth(1).expect("ca body")),
        "the CA, which is public, is cached"
    );

    // No control plane: the cache serves `orders`; `payments` waits for SDS.
    let later = legate_tests::free_port();
    let flags = XdsFlags::new(&format!("http://{later}"), Mode::Delta)
        .node("web-1", "web")
        .initial_fetch_timeout("1s")
        .cache_dir(cache.path());
    let cold = Legate::start_xds(&flags).await;
    let dump = cold.admin_json("/legate_internal").await;
    assert_eq!(dump["xds"]["source"], "cache", "{dump}");
    HttpClient::http1()
        .get(&cold.url("outbound", "/orders/x").await)
        .await
        .assert_status(200);
    let r = HttpClient::http1()
        .get(&cold.url("outbound", "/payments/x").await)
        .await;
    r.assert_status(503);
    assert_eq!(
        r.legate_error(),
        Some("cluster-not-found"),
        "{}",
        r.describe()
    );
    assert!(
        cold.output()
            .contains("left out of the configuration: its secret has not arrived"),
        "{}",
        cold.output()
    );

    // The control plane comes up: the secrets arrive and `payments` is back.
    let _cp = ControlPlane::start_with(
        &world.dir.path().join("mesh.yaml"),
        &world.dir.path().join("data-later"),
        &["--xds-address", &later.to_string()],
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "payments served after SDS",
        || async {
            let r = HttpClient::http1()
                .get(&cold.url("outbound", "/payments/x").await)
                .await;
            match seen_cn(&r) {
                Some(cn) if r.status == 200 => Ok(cn),
                _ => Err(r.describe()),
            }
        },
    )
    .await;
}

// ---- legate against a scripted control plane -----------------------------------------------

/// The names a request subscribes to, either variant, sorted.
fn subscribed(r: &legate_tests::xds_server::RecordedRequest) -> Vec<String> {
    let mut names: Vec<String> = r
        .resource_names
        .iter()
        .chain(&r.subscribe)
        .cloned()
        .collect();
    names.sort();
    names
}

/// Every type of `resources` but secrets set on `server`; returns the secrets.
fn set_all_but_secrets(
    server: &XdsServer,
    resources: &legate_snapshot::Resources,
) -> Vec<legate_tests::xds_server::Resource> {
    let mut secrets = Vec::new();
    for (type_url, list) in legate_tests::xds_server::by_type(resources) {
        if type_url == SDS {
            secrets = list;
        } else {
            server.set(type_url, list);
        }
    }
    secrets
}

async fn secrets_are_subscribed_by_name_and_warm_until_they_arrive(mode: Mode) {
    let world = World::without_cp(0).await;
    let server = XdsServer::start().await;
    let secrets = set_all_but_secrets(&server, &world.served());
    let flags = XdsFlags::new(&server.url(), mode)
        .node("web-1", "web")
        .initial_fetch_timeout("20s");
    let legate = Legate::spawn_xds(&flags).await;
    let request = server
        .wait_for_request(Duration::from_secs(10), "an SDS subscription", |r| {
            r.type_url == SDS && !subscribed(r).is_empty()
        })
        .await;
    assert_eq!(subscribed(&request), ["mesh-ca", "web-client"]);
    // Clusters and listeners are accepted, their secrets are missing: nothing is served yet.
    server
        .wait_for_request(Duration::from_secs(10), "LDS acknowledged", |r| {
            r.type_url == legate_tests::xds_server::LDS && r.is_ack()
        })
        .await;
    assert_eq!(
        legate.ready_status().await,
        503,
        "warming until the secrets arrive"
    );

    let push = server.set(SDS, secrets);
    server.wait_acked(&push, Duration::from_secs(10)).await;
    legate.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(client_cn(&legate).await, "web-client");
}

both_modes!(secrets_are_subscribed_by_name_and_warm_until_they_arrive);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_never_arrives_leaves_only_its_cluster_out() {
    let world = World::without_cp(0).await;
    let server = XdsServer::start().await;
    let secrets = set_all_but_secrets(&server, &world.served());
    let flags = XdsFlags::new(&server.url(), Mode::Sotw)
        .node("web-1", "web")
        .initial_fetch_timeout("1s");
    let legate = Legate::start_xds(&flags).await;
    let http = HttpClient::http1();
    http.get(&legate.url("outbound", "/orders/x").await)
        .await
        .assert_status(200);
    let r = http.get(&legate.url("outbound", "/payments/x").await).await;
    r.assert_status(503);
    assert_eq!(
        r.legate_error(),
        Some("cluster-not-found"),
        "{}",
        r.describe()
    );

    // The secrets arrive late: the cluster is back.
    let push = server.set(SDS, secrets);
    server.wait_acked(&push, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "payments served", || async {
        let r = http.get(&legate.url("outbound", "/payments/x").await).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.describe())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_secret_is_nacked_by_name_and_never_echoed() {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    let world = World::without_cp(0).await;
    let server = XdsServer::start().await;
    let mut resources = world.served();
    // web-client's key swapped for another certificate's: a pair that does not match.
    let other = world
        .ca
        .issue(&LeafSpec::new("other").client_only())
        .expect("issue");
    for s in &mut resources.secrets {
        if let (true, Some(Type::TlsCertificate(c))) = (s.name == "web-client", &mut s.r#type) {
            c.private_key = Some(envoy_types::pb::envoy::config::core::v3::DataSource {
                specifier: Some(Specifier::InlineBytes(other.key_pem.clone().into_bytes())),
                ..Default::default()
            });
        }
    }
    server.set_resources(&resources);
    let flags = XdsFlags::new(&server.url(), Mode::Delta)
        .node("web-1", "web")
        .initial_fetch_timeout("2s");
    let legate = Legate::spawn_xds(&flags).await;
    let nack = server
        .wait_for_request(Duration::from_secs(20), "an SDS NACK", |r| {
            r.type_url == SDS && r.is_nack()
        })
        .await;
    let message = nack.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("web-client"), "{message}");
    let key_line = other.key_pem.lines().nth(1).expect("key body");
    assert!(
        !message.contains(key_line),
        "the NACK echoes the key: {message}"
    );
    assert!(!legate.output().contains(key_line), "legate logged the key");
}

// ---- Envoy ---------------------------------------------------------------------------------

async fn envoy_takes_certificates_from_legate_cp(mode: EnvoyAds) {
    // One request per upstream connection: every request is a new handshake.
    let world = World::start(1).await;
    let envoy = Envoy::start_ads(world.cp().xds, mode, "envoy-1", "web").await;
    let addr = envoy.listener("outbound").await;
    let http = HttpClient::http1();
    let url = format!("http://{addr}/payments/who");
    let r = eventually(
        Duration::from_secs(30),
        "Envoy reaches payments over mTLS",
        || async {
            // Envoy reports the listener active slightly before its worker accepts on it.
            match http.try_get(&url).await {
                Ok(r) if r.status == 200 => Ok(r),
                Ok(r) => Err(r.describe()),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )
    .await;
    assert_eq!(
        seen_cn(&r).as_deref(),
        Some("web-client"),
        "{}",
        r.describe()
    );
    assert_eq!(
        http.get(&format!("http://{addr}/orders/x")).await.status,
        200
    );
    for stat in [
        "sds.web-client.update_success",
        "sds.mesh-ca.update_success",
    ] {
        assert!(
            envoy.stat(stat).await.unwrap_or(0) >= 1,
            "{stat}: {:?}\n{}",
            envoy.stat(stat).await,
            envoy.log()
        );
    }
    for stat in [
        "sds.web-client.update_rejected",
        "sds.mesh-ca.update_rejected",
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        assert_eq!(
            envoy.stat(stat).await.unwrap_or(0),
            0,
            "{stat}\n{}",
            envoy.log()
        );
    }
    // Envoy was never sent the other node cluster's certificate.
    assert_eq!(envoy.stat("sds.billing-client.update_success").await, None);

    // A changed cluster is re-created by Envoy; it must not wait for its secrets again (it
    // would sit warming for the 15 s initial fetch timeout, its CDS update unacknowledged).
    let updates = envoy
        .stat("cluster_manager.cds.update_success")
        .await
        .unwrap_or(0);
    let edited = mesh(world.payments.addr(), world.orders.addr(), 1).replace(
        "    max_requests_per_connection: 1\n",
        "    max_requests_per_connection: 1\n    connect_timeout: 2s\n",
    );
    assert_ne!(edited, mesh(world.payments.addr(), world.orders.addr(), 1));
    world.dir.write("mesh.yaml", &edited);
    let started = Instant::now();
    eventually(
        Duration::from_secs(10),
        "Envoy takes the changed cluster",
        || async {
            let now = envoy
                .stat("cluster_manager.cds.update_success")
                .await
                .unwrap_or(0);
            let warming = envoy.stat("cluster_manager.warming_clusters").await;
            if now > updates && warming == Some(0) {
                Ok(())
            } else {
                Err(format!(
                    "cds updates {now} (was {updates}), warming {warming:?}"
                ))
            }
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the changed cluster warmed for {:?}",
        started.elapsed()
    );
    assert_eq!(
        seen_cn(&http.get(&url).await).as_deref(),
        Some("web-client")
    );

    // Rotated on legate-cp's disk: Envoy's new connections present the new certificate.
    world.rotate("web-client", "web-client-2");
    eventually(
        Duration::from_secs(30),
        "Envoy uses the rotated certificate",
        || async {
            let r = http.get(&url).await;
            match seen_cn(&r).as_deref() {
                Some("web-client-2") => Ok(()),
                other => Err(format!("{other:?}: {}", r.describe())),
            }
        },
    )
    .await;
    let (ok, status, err) = world.cp().ctl(&["status", "-o", "json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    let nacks: Vec<&serde_json::Value> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["types"].as_array().into_iter().flatten())
        .filter(|t| !t["last_nack"].is_null())
        .collect();
    assert!(nacks.is_empty(), "Envoy NACKed: {nacks:?}");
}

#[tokio::test]
async fn envoy_takes_certificates_from_legate_cp_sotw() {
    envoy_takes_certificates_from_legate_cp(EnvoyAds::Sotw).await;
}

#[tokio::test]
async fn envoy_takes_certificates_from_legate_cp_delta() {
    envoy_takes_certificates_from_legate_cp(EnvoyAds::Delta).await;
}

// ---- entitlement ---------------------------------------------------------------------------

/// A node asking legate-cp for another node cluster's certificate gets nothing for it, and
/// legate-cp says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_served_only_to_the_nodes_entitled_to_it() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

    let world = World::start(0).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(world.cp().url())
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "web-9".to_owned(),
            cluster: "web".to_owned(),
            ..Node::default()
        }),
        type_url: SDS.to_owned(),
        resource_names_subscribe: vec!["billing-client".to_owned(), "web-client".to_owned()],
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .expect("send");
    let mut responses = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an answer in time")
        .expect("stream ok")
        .expect("stream open");
    let sent: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["web-client"]);
    assert_eq!(response.removed_resources, ["billing-client"]);
    eventually(Duration::from_secs(5), "the refusal logged", || async {
        let log = world.cp().log();
        if log.contains("not serving a secret this node is not entitled to")
            && log.contains("billing-client")
        {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    drop(tx);
}

/// A proxy reading the mesh itself (bootstrap, no control plane) reads the `secrets` files on
/// its own disk: the same syntax, no SDS stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_mesh_reads_its_secret_files_itself() {
    let world = World::without_cp(0).await;
    // The bootstrap's mesh, with the secrets' file names made absolute.
    let dir = world.dir.path().display().to_string();
    let mesh = world
        .mesh
        .replace(": mesh-ca.pem", &format!(": {dir}/mesh-ca.pem"))
        .replace(": web-client.", &format!(": {dir}/web-client."))
        .replace(": billing-client.", &format!(": {dir}/billing-client."));
    let indented: String = mesh.lines().map(|l| format!("  {l}\n")).collect();
    let legate = Legate::start(&format!("mesh:\n{indented}")).await;
    assert_eq!(client_cn(&legate).await, "web-client");
}
