//! The admin API's listener: gRPC (`legate.admin.v1.Admin`, for legatectl) and JSON under
//! `/v1/` on one port, plaintext or TLS, every request authorized before it reaches a
//! handler (see [`crate::admin_auth`] for the rules).
//!
//! Hardening, all of it bounded: concurrent connections, TLS handshake time, header bytes and
//! count, HTTP/2 streams per connection, request time (body included) and body size. A body
//! over the limit is refused from its `content-length` before a byte of it is read, or as soon
//! as the bytes read pass the limit.
//!
//! Start-up rules ([`AdminApi::prepare`]): without `--admin-token-file` and without
//! `--admin-client-ca`, legate-cp uses the token in `<data-dir>/admin.token`, creating it
//! (random, mode 0600) when missing, and logs the file's path, never the token. A
//! non-loopback address without TLS, or with open reads, needs `--insecure`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_tls::TlsError;
use legate_tls::reload::{self, Current};
use legate_tls::rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tonic::body::Body;
use tonic::service::Routes;

use crate::admin_auth::{
    self, Access, Caller, PeerCert, Policy, Refusal, RefusalKind, TokenError, Tokens,
};
use crate::admin_json;
use crate::app::{AdminService, CallerId, ControlPlane};

/// Default body limit: a 10,000-service mesh applied in one document fits with room to spare
/// (each service with two versions, a canary route, retries and outlier detection: about
/// 9 MiB as YAML, 8 MiB as compact JSON; `admin_json` tests measure it).
pub const DEFAULT_MAX_BODY: usize = 16 << 20;
/// Default bound on one request, from its headers to its handler's answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may go without starting a request before it is shut down
/// gracefully (HTTP/2 gets a GOAWAY; requests in flight finish).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Request line plus headers (HTTP/1.1) or the header list (HTTP/2).
const MAX_HEADER_BYTES: usize = 64 << 10;
const MAX_HEADERS: usize = 64;
const MAX_CONNECTIONS: usize = 256;
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// How often token and certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Refusals logged per second at most; the rest are counted and summarised.
const REFUSAL_LOGS_PER_SECOND: u32 = 20;

/// How the admin API is exposed and protected.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// The address it is configured to listen on (checked before binding).
    pub address: SocketAddr,
    /// legate-cp's data directory, where a generated token goes.
    pub data_dir: PathBuf,
    pub token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// Trust domain of admin client certificates (`spiffe://<td>/admin/<name>`).
    pub trust_domain: String,
    pub open_reads: bool,
    pub max_body: usize,
    pub request_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Accept a non-loopback address without TLS or with open reads.
    pub insecure: bool,
    pub reload_interval: Duration,
}

impl AdminOptions {
    /// Safe defaults: tokens from `<data_dir>/admin.token`, no TLS, reads closed.
    pub fn new(address: SocketAddr, data_dir: PathBuf) -> Self {
        AdminOptions {
            address,
            data_dir,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            trust_domain: "legate.local".to_owned(),
            open_reads: false,
            max_body: DEFAULT_MAX_BODY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            insecure: false,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// Why the admin API cannot start as configured.
#[derive(Debug, thiserror::Error)]
pub enum AdminSetupError {
    #[error("--admin-tls-cert and --admin-tls-key must be given together")]
    TlsPair,
    #[error("--admin-client-ca needs TLS: give --admin-tls-cert and --admin-tls-key too")]
    CaWithoutTls,
    #[error("invalid --admin-trust-domain '{0}': lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    #[error("--admin-max-body must be at least 1 KiB")]
    MaxBody,
    #[error(
        "refusing to serve the admin API on {address}, a non-loopback address, {problems}: \
         give --admin-tls-cert/--admin-tls-key (and no --admin-open-reads), bind a loopback \
         address, or pass --insecure to accept the risk"
    )]
    Insecure {
        address: SocketAddr,
        problems: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What exposing the admin API on `address` risks, if anything, as a phrase.
fn exposure(address: SocketAddr, tls: bool, open_reads: bool) -> Option<String> {
    if address.ip().is_loopback() {
        return None;
    }
    let mut problems = Vec::new();
    if !tls {
        problems.push("without TLS (tokens would cross the network in clear text)");
    }
    if open_reads {
        problems.push("with --admin-open-reads (anyone who reaches it reads the fleet)");
    }
    (!problems.is_empty()).then(|| problems.join(" and "))
}

/// The admin API, ready to serve.
pub struct AdminApi {
    shared: Arc<Shared>,
}

struct Shared {
    policy: Policy,
    tls: Option<Current<Arc<ServerConfig>>>,
    max_body: usize,
    request_timeout: Duration,
    idle_timeout: Duration,
    builder: auto::Builder<TokioExecutor>,
    refusals: RefusalLog,
}

/// One accepted connection, as the server sees it.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    /// `Origin` values that are this server.
    own_origins: Vec<String>,
    cert: Option<PeerCert>,
}

fn server_tls(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    tokens_too: bool,
    interval: Duration,
) -> Result<Current<Arc<ServerConfig>>, TlsError> {
    // With tokens accepted too, a client may come without a certificate and is then judged
    // on its token; otherwise the handshake demands one.
    legate_tls::files::ServerFiles {
        cert,
        key,
        client_ca,
        client_cert_optional: tokens_too,
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    }
    .watch("admin TLS", interval)
}

impl AdminApi {
    /// Check the options, load the token file (creating the default one when no credential
    /// is configured) and the TLS files, and start watching them for changes. Blocking (reads
    /// files) and needs a Tokio runtime: call it at start-up.
    pub fn prepare(options: AdminOptions) -> Result<AdminApi, AdminSetupError> {
        let tls_files = match (&options.tls_cert, &options.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(AdminSetupError::TlsPair),
        };
        if options.client_ca.is_some() && tls_files.is_none() {
            return Err(AdminSetupError::CaWithoutTls);
        }
        if legate_tls::SpiffeId::parse(&format!("spiffe://{}/admin/x", options.trust_domain))
            .is_none()
        {
            return Err(AdminSetupError::TrustDomain(options.trust_domain));
        }
        if options.max_body < 1024 {
            return Err(AdminSetupError::MaxBody);
        }
        if let Some(problems) = exposure(options.address, tls_files.is_some(), options.open_reads) {
            if !options.insecure {
                return Err(AdminSetupError::Insecure {
                    address: options.address,
                    problems,
                });
            }
            tracing::warn!(
                address = %options.address,
                "--insecure: serving the admin API on a non-loopback address {problems}"
            );
        }

        let token_file = match (&options.token_file, &options.client_ca) {
            (Some(file), _) => Some(file.clone()),
            (None, Some(_)) => None,
            (None, None) => {
                let path = options.data_dir.join(admin_auth::GENERATED_TOKEN_FILE);
                if admin_auth::create_token_file(&path)? {
                    tracing::info!(
                        path = %path.display(),
                        "generated an admin token; give it to legatectl with --token-file"
                    );
                }
                Some(path)
            }
        };
        let tokens = match &token_file {
            Some(path) => {
                if admin_auth::readable_by_others(path) {
                    tracing::warn!(
                        path = %path.display(),
                        "the admin token file is readable by other users; chmod 600 it"
                    );
                }
                let p = path.clone();
                Some(reload::watch_with(
                    "admin token file",
                    vec![path.clone()],
                    options.reload_interval,
                    move || Tokens::load(&p),
                )?)
            }
            None => None,
        };
        let tls = match tls_files {
            Some((cert, key)) => Some(server_tls(
                cert,
                key,
                options.client_ca.clone(),
                tokens.is_some(),
                options.reload_interval,
            )?),
            None => None,
        };
        tracing::info!(
            token_file = %token_file.as_deref().map_or("none".into(), |p| p.display().to_string()),
            tls = tls.is_some(),
            client_certificates = options.client_ca.is_some(),
            open_reads = options.open_reads,
            "admin API authentication"
        );

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        Ok(AdminApi {
            shared: Arc::new(Shared {
                policy: Policy {
                    tokens,
                    trust_domain: options.trust_domain,
                    open_reads: options.open_reads,
                },
                tls,
                max_body: options.max_body,
                request_timeout: options.request_timeout,
                idle_timeout: options.idle_timeout,
                builder,
                refusals: RefusalLog::default(),
            }),
        })
    }

    /// Whether the API is served over TLS.
    pub fn tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// Serve connections from `listener` until the task is dropped.
    pub async fn serve(self, cp: Arc<ControlPlane>, listener: TcpListener) {
        let routes = Routes::new(
            legate_proto::admin::admin_server::AdminServer::new(AdminService(cp.clone()))
                .max_decoding_message_size(self.shared.max_body),
        )
        .prepare();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "admin API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (shared, cp, routes) = (self.shared.clone(), cp.clone(), routes.clone());
            tokio::spawn(async move {
                connection(shared, cp, routes, stream, peer).await;
                drop(permit);
            });
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    cp: Arc<ControlPlane>,
    routes: Routes,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = &shared.tls else {
        let conn = Conn {
            peer,
            local,
            own_origins: admin_auth::own_origins(local, false),
            cert: None,
        };
        return serve_io(shared, cp, routes, conn, stream).await;
    };
    let acceptor = legate_tls::tokio_rustls::TlsAcceptor::from((**tls.load()).clone());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            cp.metrics.admin_refused("tls-handshake");
            shared
                .refusals
                .handshake(peer, &error.to_string(), "tls-handshake");
            return;
        }
        Err(_) => {
            cp.metrics.admin_refused("tls-timeout");
            shared
                .refusals
                .handshake(peer, "no handshake within 10s", "tls-timeout");
            return;
        }
    };
    let cert = legate_tls::config::peer_info(stream.get_ref().1.peer_certificates())
        .map(|info| PeerCert::from(&info));
    let conn = Conn {
        peer,
        local,
        own_origins: admin_auth::own_origins(local, true),
        cert,
    };
    serve_io(shared, cp, routes, conn, stream).await;
}

async fn serve_io<I>(shared: Arc<Shared>, cp: Arc<ControlPlane>, routes: Routes, conn: Conn, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let started = Arc::new(AtomicU64::new(0));
    let svc = {
        let shared = shared.clone();
        let started = started.clone();
        service_fn(move |req| {
            started.fetch_add(1, Ordering::Relaxed);
            handle(
                shared.clone(),
                cp.clone(),
                routes.clone(),
                conn.clone(),
                req,
            )
        })
    };
    let served = shared.builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    // Idle: no request started for a whole `idle_timeout` (HTTP/1.1 keep-alive connections
    // are closed sooner, by hyper's header read timeout, which also runs between requests).
    let mut seen = 0;
    let res = loop {
        tokio::select! {
            res = served.as_mut() => break res,
            () = tokio::time::sleep(shared.idle_timeout) => {
                let now = started.load(Ordering::Relaxed);
                if now == seen {
                    tracing::debug!("closing an idle admin connection");
                    served.as_mut().graceful_shutdown();
                    break served.as_mut().await;
                }
                seen = now;
            }
        }
    };
    if let Err(error) = res {
        tracing::debug!(%error, "admin connection ended with an error");
    }
}

/// The longest request target quoted in a log line.
const MAX_LOGGED_PATH: usize = 200;

async fn handle(
    shared: Arc<Shared>,
    cp: Arc<ControlPlane>,
    mut routes: Routes,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let json = path == "/v1" || path.starts_with("/v1/");
    let access = if json {
        admin_auth::json_access(req.method())
    } else {
        admin_auth::grpc_access(path)
    };
    let host = admin_auth::request_host(&req);
    let decision = admin_auth::loopback_host(host.as_deref(), conn.local)
        .and_then(|()| admin_auth::same_origin(req.headers(), &conn.own_origins))
        .and_then(|()| {
            shared.policy.authorize(
                access,
                req.headers().get(http::header::AUTHORIZATION),
                conn.cert.as_ref(),
            )
        });
    let what = || {
        let p: String = path.chars().take(MAX_LOGGED_PATH).collect();
        if json {
            format!("{} {p}", req.method())
        } else {
            p
        }
    };
    let caller = match decision {
        Ok(caller) => caller,
        Err(refusal) => {
            cp.metrics.admin_refused(refusal.reason());
            shared.refusals.refused(&what(), conn.peer, &refusal);
            return Ok(if json {
                admin_json::refusal(&refusal)
            } else {
                grpc_refusal(&refusal)
            });
        }
    };
    if access == Access::Write && cp.is_shutting_down() {
        tracing::info!(call = %what(), caller = %caller, peer = %conn.peer, "admin change refused: legate-cp is shutting down");
        return Ok(if json {
            admin_json::shutting_down()
        } else {
            tonic::Status::unavailable(crate::SHUTTING_DOWN).into_http()
        });
    }
    if access == Access::Write {
        tracing::info!(call = %what(), caller = %caller, peer = %conn.peer, "admin change requested");
    } else if caller != Caller::Anonymous {
        tracing::debug!(call = %what(), caller = %caller, peer = %conn.peer, "admin read");
    }
    let timeout = shared.request_timeout;
    // Recorded with the change it makes.
    let caller = (caller != Caller::Anonymous).then(|| caller.to_string());
    let response = if json {
        let limits = admin_json::Limits {
            max_body: shared.max_body,
        };
        tokio::time::timeout(timeout, admin_json::handle(cp, req, limits, caller))
            .await
            .unwrap_or_else(|_| admin_json::timed_out(timeout))
    } else {
        let mut req = req;
        if let Some(caller) = caller {
            req.extensions_mut().insert(CallerId(caller));
        }
        let call = tower_service::Service::call(&mut routes, req);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => tonic::Status::deadline_exceeded(format!(
                "the request took longer than {timeout:?}"
            ))
            .into_http(),
        }
    };
    Ok(response)
}

fn grpc_refusal(refusal: &Refusal) -> Response<Body> {
    let status = match refusal.kind() {
        RefusalKind::Unauthenticated => tonic::Status::unauthenticated(refusal.to_string()),
        RefusalKind::Forbidden => tonic::Status::permission_denied(refusal.to_string()),
    };
    status.into_http()
}

/// Refusal log lines, at most [`REFUSAL_LOGS_PER_SECOND`]: a client hammering the port with
/// bad tokens cannot flood the log, and the lines it does not get are still counted.
#[derive(Default)]
struct RefusalLog {
    state: Mutex<RefusalWindow>,
}

#[derive(Default)]
struct RefusalWindow {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether to log one more refusal now.
    fn admit(&self) -> bool {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if w.started
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            if w.suppressed > 0 {
                tracing::warn!(
                    suppressed = w.suppressed,
                    "more admin refusals than logged in the last second"
                );
            }
            *w = RefusalWindow {
                started: Some(now),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged < REFUSAL_LOGS_PER_SECOND {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    fn refused(&self, call: &str, peer: SocketAddr, refusal: &Refusal) {
        if self.admit() {
            tracing::warn!(
                call,
                %peer,
                reason = refusal.reason(),
                error = %refusal,
                "admin call refused"
            );
        }
    }

    fn handshake(&self, peer: SocketAddr, error: &str, reason: &str) {
        if self.admit() {
            tracing::warn!(%peer, reason, error, "admin connection refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_rules() {
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:1".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        let lan: SocketAddr = "10.1.2.3:1".parse().expect("addr");
        assert_eq!(exposure(lo, false, true), None);
        assert_eq!(exposure(lo6, false, false), None);
        assert_eq!(exposure(lan, true, false), None);
        let plain = exposure(any, false, false).expect("risky");
        assert!(plain.contains("without TLS"), "{plain}");
        let open = exposure(lan, true, true).expect("risky");
        assert!(open.contains("--admin-open-reads"), "{open}");
    }

    #[tokio::test]
    async fn refuses_bad_option_sets() {
        let dir = std::env::temp_dir().join(format!(
            "legate-cp-admin-opts-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let base = AdminOptions::new("127.0.0.1:0".parse().expect("addr"), dir.clone());
        let check = |o: AdminOptions| AdminApi::prepare(o).err().map(|e| e.to_string());
        let mut o = base.clone();
        o.tls_cert = Some(dir.join("c.pem"));
        assert_eq!(
            check(o),
            Some(AdminSetupError::TlsPair.to_string()),
            "a certificate without its key"
        );
        let mut o = base.clone();
        o.client_ca = Some(dir.join("ca.pem"));
        assert_eq!(check(o), Some(AdminSetupError::CaWithoutTls.to_string()));
        let mut o = base.clone();
        o.trust_domain = "Bad Domain".to_owned();
        assert!(check(o).is_some_and(|e| e.contains("trust-domain")));
        let mut o = base.clone();
        o.address = "0.0.0.0:0".parse().expect("addr");
        let e = check(o).expect("refused");
        assert!(e.contains("--insecure") && e.contains("0.0.0.0:0"), "{e}");
        let mut o = base.clone();
        o.token_file = Some(dir.join("missing.token"));
        let e = check(o).expect("refused");
        assert!(e.contains("missing.token"), "{e}");
        // The defaults work, and create the token file.
        assert!(AdminApi::prepare(base).is_ok());
        assert!(dir.join(admin_auth::GENERATED_TOKEN_FILE).is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
