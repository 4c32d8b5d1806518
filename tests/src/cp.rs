//! The `legate-cp` binary under test and the clients of its admin API: the real `legatectl`,
//! JSON over HTTP or HTTPS, and gRPC.
//!
//! [`ControlPlane`] starts legate-cp on `127.0.0.1:0` (xDS, admin and metrics), learns the addresses
//! from `--address-file`, and knows the admin token it was started with: the one in
//! `--admin-token-file` when given, else the one legate-cp generated in
//! `<data-dir>/admin.token`. [`ControlPlane::ctl`] runs legatectl with that token.
//! [`Pki`] issues the certificates TLS tests need, into files.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use legate_tls::config::{CertifiedKey, ClientParams, NameCheck, Roots};
use legate_tls::issue::{Authority, LeafSpec};

use crate::client::{HttpClient, HttpResponse, ReqBody};
use crate::process::{ChildProcess, bin_dir};

/// How long legate-cp gets to write its address file (or to exit, for refusals).
pub const CP_START_TIMEOUT: Duration = Duration::from_secs(20);

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A binary built next to the tests; panics naming the build command when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// A running legate-cp, killed by PID on drop.
pub struct ControlPlane {
    proc: ChildProcess,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    /// The unauthenticated `/metrics` listener (`--metrics-address`).
    pub metrics: SocketAddr,
    tls: bool,
    token_file: Option<PathBuf>,
    address_file: PathBuf,
}

fn flag_value(args: &[&str], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| (*v).to_owned())
}

impl ControlPlane {
    /// legate-cp on `config` with safe defaults: plaintext admin on loopback, the token it
    /// generates in `data_dir`.
    pub async fn start(config: &Path, data_dir: &Path) -> ControlPlane {
        ControlPlane::start_with(config, data_dir, &[]).await
    }

    /// legate-cp with extra flags (`--xds-address` or `--admin-address` among them replaces
    /// `127.0.0.1:0`).
    pub async fn start_with(config: &Path, data_dir: &Path, extra: &[&str]) -> ControlPlane {
        match ControlPlane::try_start(config, data_dir, extra).await {
            Ok(cp) => cp,
            Err(output) => panic!("legate-cp did not start:\n{output}"),
        }
    }

    /// Start legate-cp; `Err` carries its output when it exits instead of listening.
    pub async fn try_start(
        config: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<ControlPlane, String> {
        let address_file = std::env::temp_dir().join(format!(
            "legate-cp-{}-{}.addr",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::SeqCst)
        ));
        let mut args: Vec<OsString> = vec![
            "--config".into(),
            config.into(),
            "--data-dir".into(),
            data_dir.into(),
            "--address-file".into(),
            address_file.clone().into(),
        ];
        for flag in ["--xds-address", "--admin-address", "--metrics-address"] {
            if !extra.contains(&flag) {
                args.extend([flag.into(), "127.0.0.1:0".into()]);
            }
        }
        args.extend(extra.iter().map(OsString::from));
        let token_file = match flag_value(extra, "--admin-token-file") {
            Some(f) => Some(PathBuf::from(f)),
            None if extra.contains(&"--admin-client-ca") => None,
            None => Some(data_dir.join("admin.token")),
        };
        let tls = extra.contains(&"--admin-tls-cert");
        let proc = ChildProcess::spawn("legate-cp", &bin("legate-cp"), &args, |_| {});
        let deadline = Instant::now() + CP_START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&address_file) {
                let get = |name: &str| crate::process::address_in_file(&text, name);
                if let (Some(xds), Some(admin), Some(metrics)) =
                    (get("xds"), get("admin"), get("metrics"))
                {
                    // A wildcard bind is reached through loopback.
                    let admin = if admin.ip().is_unspecified() {
                        SocketAddr::from(([127, 0, 0, 1], admin.port()))
                    } else {
                        admin
                    };
                    return Ok(ControlPlane {
                        proc,
                        xds,
                        admin,
                        metrics,
                        tls,
                        token_file,
                        address_file,
                    });
                }
            }
            if let Some(status) = proc.try_wait() {
                // Let the output threads drain what the process printed before it exited.
                let drained = Instant::now() + Duration::from_secs(2);
                while !proc.output().contains("legate-cp:") && Instant::now() < drained {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Err(format!("exited with {status}\n{}", proc.output()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no address file after {CP_START_TIMEOUT:?}\n{}",
                    proc.describe()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics` on the metrics listener, without credentials: the text, checked to be
    /// a 200 with Prometheus' text format.
    pub async fn metrics_text(&self) -> String {
        let response = crate::client::get(&format!("http://{}/metrics", self.metrics)).await;
        assert_eq!(
            response.status,
            200,
            "legate-cp GET /metrics: {}",
            response.describe()
        );
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        response.text()
    }

    /// legate-cp's metrics, parsed.
    pub async fn metrics(&self) -> crate::metrics::Metrics {
        crate::metrics::Metrics::parse(&self.metrics_text().await)
    }

    /// The xDS server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.xds)
    }

    /// The admin API's URL (`https://` when it serves TLS).
    pub fn admin_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything legate-cp printed so far.
    pub fn log(&self) -> String {
        self.proc.output()
    }

    /// Sends SIGTERM to legate-cp (its PID alone).
    pub fn sigterm(&self) {
        self.proc.sigterm();
    }

    /// Waits for legate-cp to exit: `None` when it is still running after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// The process description (state, command line, output) for assertion messages.
    pub fn describe(&self) -> String {
        self.proc.describe()
    }

    /// The token file legatectl is given by [`ctl`](Self::ctl).
    pub fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }

    /// The admin token (the file's first line).
    pub fn token(&self) -> String {
        let path = self
            .token_file
            .as_deref()
            .expect("this legate-cp takes no token");
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_owned()
    }

    /// `authorization` header value with the token.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token())
    }

    /// Run legatectl against this legate-cp with its token file: (success, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let mut full: Vec<String> = Vec::new();
        if let Some(f) = &self.token_file {
            full.push("--token-file".into());
            full.push(f.display().to_string());
        }
        full.extend(args.iter().map(|a| (*a).to_owned()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.legatectl(&full, &[])
    }

    /// Run legatectl with only `--server` added, and these environment variables.
    pub fn legatectl(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new(bin("legatectl"))
            .env_remove("LEGATE_CP_TOKEN")
            .env_remove("LEGATE_CP_TOKEN_FILE")
            .env_remove("LEGATE_CP_ADMIN")
            .envs(env.iter().copied())
            .arg("--server")
            .arg(self.admin_url())
            .args(args)
            .output()
            .expect("run legatectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A plaintext JSON request to the admin API, with exactly these headers.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> HttpResponse {
        HttpClient::http1()
            .request(
                method,
                &format!("http://{}{path}", self.admin),
                headers,
                body,
            )
            .await
    }

    /// `GET path` on the JSON admin API with the token: the parsed body of a 200, or the
    /// status and body of anything else.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let r = self
            .json(
                "GET",
                path,
                &[("authorization", &self.bearer())],
                crate::client::empty(),
            )
            .await;
        if r.status.as_u16() != 200 {
            return Err(format!(
                "GET {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: {e}"))
    }

    /// A gRPC admin client without credentials (tests add metadata per call).
    pub async fn grpc(
        &self,
    ) -> legate_proto::admin::admin_client::AdminClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.admin))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the admin API");
        legate_proto::admin::admin_client::AdminClient::new(channel)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.address_file);
    }
}

/// A test certificate authority whose certificates are written to files.
pub struct Pki {
    ca: Authority,
    name: String,
    dir: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its certificate at `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca = Authority::new(name).expect("test CA");
        let pki = Pki {
            ca,
            name: name.to_owned(),
            dir: dir.to_owned(),
        };
        std::fs::write(pki.ca_file(), pki.ca.cert_pem()).expect("write CA");
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Issue `spec` into `<dir>/<name>.pem` and `<dir>/<name>.key`; returns both paths.
    pub fn issue(&self, name: &str, spec: &LeafSpec) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(spec).expect("issue");
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        (cert, key)
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue(
            name,
            &LeafSpec::new(name)
                .dns("localhost")
                .ip(std::net::IpAddr::from([127, 0, 0, 1])),
        )
    }

    /// A client certificate carrying `uri` as its URI SAN.
    pub fn client(&self, name: &str, uri: &str) -> (PathBuf, PathBuf) {
        self.issue(name, &LeafSpec::new(name).uri(uri).client_only())
    }
}

/// One HTTP/1.1 request over TLS to `addr` (verified against `ca` as `127.0.0.1`), with an
/// optional client certificate; the whole exchange is bounded by 10 s.
pub async fn https_request(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpResponse> {
    let roots = legate_tls::pem::root_store(&std::fs::read(ca)?, "ca")?;
    let client_cert = match client {
        Some((cert, key)) => Some(CertifiedKey::from_pem(
            &std::fs::read(cert)?,
            &std::fs::read(key)?,
            "client",
        )?),
        None => None,
    };
    let config = legate_tls::config::client_config(
        ClientParams {
            roots: Roots::Custom(Arc::new(roots)),
            names: NameCheck::ServerName,
            client_cert,
            alpn: vec![b"http/1.1".to_vec()],
            min_version: None,
            max_version: None,
        },
        "test client",
    )?;
    let body: Bytes = body.into();
    let exchange = async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = legate_tls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = legate_tls::tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(http_body_util::Full::new(body))?;
        let res = sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(HttpResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("no answer within 10s")?
}
