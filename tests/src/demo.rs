//! The demo upstream: a small HTTP server that tells the caller what it received, and
//! misbehaves on request.
//!
//! The `legate-demo-upstream` binary is a thin wrapper around [`serve_with_control`]; tests
//! should run the binary as a process (see [`crate::Upstream`]), but the server can also run
//! in-process ([`InProcessDemo`]).
//!
//! # Per-request controls (query parameters)
//!
//! Every request is answered with a JSON echo ([`Echo`]) unless the query asks otherwise:
//! `delay=250ms`, `status=503`, `fail=0.5` (random, answers 500), `size=N` (a body of N
//! bytes), `reset=1` (no answer: HTTP/1.1 drops the connection, HTTP/2 resets the stream),
//! `hang=1` (never answers), `reset_after=N` (the head and the first N body bytes, then
//! the same abort as `reset=1`; the announced length is the full one, so the client sees an
//! incomplete body), and `body_delay=300ms` (the head at once, the body that much later). A
//! malformed control answers 400.
//!
//! # Endpoints
//!
//! - `GET /counters`: requests and connections seen, answers per status and resets
//!   ([`Counters`]). The control endpoints (`/counters`, `/control`, `/charges`) and
//!   `/health` are not counted.
//! - `GET /health`: the configured `health_status` (default 200), for active health checks.
//!   The `delay`, `hang` and `reset` faults apply to it (a stuck host is stuck for its health
//!   checker too); `fail_ratio` does not.
//! - `/charge` (any method): a payment-like request. The charge is recorded in the ledger
//!   as soon as the request body has been read, keyed by its `Idempotency-Key` header, and
//!   only then do delays and faults apply, so a failed answer still shows a charge that was
//!   made. `fail_after_charge=1` answers 503 after charging; `reset_after_charge=1` resets
//!   after charging. `GET /charges` returns the ledger ([`Charges`]).
//! - `GET /control` and `POST /control`: the server-wide faults below.
//! - A WebSocket upgrade (on any path, e.g. `/ws`) echoes messages back; faults do not apply.
//!
//! # Server-wide faults (`/control`)
//!
//! `POST /control` takes a JSON object ([`FaultSettings`]); every field is optional and an
//! omitted field keeps its value; unknown fields answer 400. The answer, like
//! `GET /control`, is the complete current settings.
//!
//! | field | default | effect on every counted request |
//! |---|---|---|
//! | `fail_ratio` | 0 | share of requests answered `fail_status`; deterministic: setting it restarts a counter and the k-th request fails when ⌈k·ratio⌉ grows, so 0.5 fails requests 1, 3, 5, ... and any first n requests fail ⌈n·ratio⌉ times |
//! | `fail_status` | 503 | the status of those failures |
//! | `retry_after` | 0 | seconds for a `Retry-After` header on those failures; 0 sends none |
//! | `delay` | `"0s"` | added before every answer (to `--delay` and `delay=`) |
//! | `hang` | false | never answer |
//! | `reset` | false | abort every request before answering |
//! | `health_status` | 200 | the status of `GET /health` |
//! | `refuse` | false | close the listening socket: connections are refused |
//! | `refuse_for` | | like `refuse: true`, and re-open by itself after this long (`"2s"`) |
//!
//! Precedence of the answer: `hang`, then `reset`, `reset_after_charge`,
//! `fail_after_charge` (503), `fail=` (500), `fail_ratio`, `status=`.
//!
//! # Refusing connections
//!
//! `refuse` closes the listening socket, so new connections get `ECONNREFUSED` exactly as
//! from a host that is down, and closes the open connections too (gracefully: in-flight
//! requests get [`SHUTDOWN_GRACE`] to finish), so a pooled client cannot keep using the
//! host either. The `/control` request that asked for it is answered once the socket is
//! closed. Re-opening binds the same address again (with `SO_REUSEADDR`, so connections left
//! in `TIME_WAIT` do not prevent it).
//!
//! A refusing server cannot be reached on its port, so there are two ways back:
//! - `{"refuse_for": "2s"}` re-opens by itself; the simplest, enough for most tests;
//! - `--control-listen ADDR` serves `/control`, `/counters` and `/charges` (nothing else) on
//!   a second port that never refuses; there `{"refuse": false}` re-opens the main port and
//!   is answered once it is listening again. The binary then prints
//!   `control listening on ADDR` before its `listening on ADDR` line, and
//!   [`Upstream::control_addr`](crate::Upstream::control_addr) finds it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use legate_tls::config::{CertifiedKey, ClientAuth, ServerParams, TlsVersion, server_config};
use legate_tls::rustls::ServerConfig;
use legate_tls::tokio_rustls::TlsAcceptor;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::client::{self, HttpClient};
use crate::process::Upstream;

/// Size of the chunks a `size=N` response body is sent in.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// How long in-flight requests get to finish when their connection is closed (shutdown,
/// or `refuse`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a `reset_after=N` body waits after its N bytes before aborting, so the
/// connection flushes them first (hyper's HTTP/2 reset would discard queued data).
const FLUSH_PAUSE: Duration = Duration::from_millis(50);

/// The largest `POST /control` body read.
const CONTROL_BODY_LIMIT: usize = 64 * 1024;

/// The header a `/charge` request is keyed by.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Which HTTP versions the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), detected from the connection preface.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge only.
    Http2,
}

impl Protocol {
    /// The value of the `--protocol` flag.
    pub fn as_arg(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// Identity and behaviour of one demo server.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub name: String,
    pub version: String,
    pub protocol: Protocol,
    /// Added before every answer (on top of any `delay=` in the query): makes a slow host.
    pub base_delay: Duration,
    /// Serve the main port over TLS (the control port stays plaintext).
    pub tls: Option<DemoTls>,
}

impl DemoConfig {
    pub fn new(name: &str) -> Self {
        DemoConfig {
            name: name.to_owned(),
            version: "v1".to_owned(),
            protocol: Protocol::Auto,
            base_delay: Duration::ZERO,
            tls: None,
        }
    }
}

/// TLS on the demo server's main port: its certificate, and the CA bundle client
/// certificates must chain to (required when given). ALPN offers what `--protocol` serves
/// (`h2` and `http/1.1` for auto).
#[derive(Clone, Debug)]
pub struct DemoTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The highest TLS version spoken (to test clients' minimum versions).
    pub max_version: Option<TlsVersion>,
}

impl DemoTls {
    /// The rustls server configuration (reads the files).
    pub fn server_config(&self, protocol: Protocol) -> anyhow::Result<Arc<ServerConfig>> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let cert = CertifiedKey::from_pem(&read(&self.cert)?, &read(&self.key)?, "demo")?;
        let client_auth = match &self.client_ca {
            Some(ca) => ClientAuth::Required(Arc::new(legate_tls::pem::root_store(
                &read(ca)?,
                "--client-ca",
            )?)),
            None => ClientAuth::None,
        };
        let alpn = match protocol {
            Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        };
        Ok(server_config(
            ServerParams {
                cert,
                client_auth,
                alpn,
                min_version: None,
                max_version: self.max_version,
            },
            "demo",
        )?)
    }
}

/// What a TLS connection's handshake established, reported on every answer as headers:
/// `x-tls-version`, `x-tls-sni`, `x-tls-alpn` and, with a client certificate,
/// `x-client-subject` and `x-client-san` (its URI SANs, comma-separated).
#[derive(Clone, Debug, Default)]
struct TlsInfo {
    headers: Vec<(&'static str, HeaderValue)>,
}

impl TlsInfo {
    fn of(conn: &legate_tls::rustls::ServerConnection) -> TlsInfo {
        let mut headers = Vec::new();
        let mut add = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.push((name, v));
            }
        };
        if let Some(v) = conn.protocol_version() {
            add(
                "x-tls-version",
                match v {
                    legate_tls::rustls::ProtocolVersion::TLSv1_3 => "TLSv1_3",
                    legate_tls::rustls::ProtocolVersion::TLSv1_2 => "TLSv1_2",
                    _ => "other",
                },
            );
        }
        if let Some(sni) = conn.server_name() {
            add("x-tls-sni", sni);
        }
        if let Some(alpn) = conn.alpn_protocol() {
            add("x-tls-alpn", &String::from_utf8_lossy(alpn));
        }
        if let Some(info) = legate_tls::config::peer_info(conn.peer_certificates()) {
            add("x-client-subject", &info.subject);
            let uris: Vec<String> = info
                .sans
                .iter()
                .filter_map(|s| match s {
                    legate_tls::San::Uri(u) => Some(u.clone()),
                    _ => None,
                })
                .collect();
            add("x-client-san", &uris.join(","));
        }
        TlsInfo { headers }
    }
}

/// The JSON body of a default answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    pub name: String,
    pub version: String,
    pub method: String,
    /// Path and query exactly as received.
    pub path: String,
    /// Lowercase header names; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The URI authority for HTTP/2 (`:authority`), else the `Host` header, else empty.
    pub authority: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Request body bytes read.
    pub body_bytes: u64,
}

/// The JSON body of `GET /counters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests seen, not counting the control endpoints and `/health`.
    pub requests: u64,
    /// Connections that carried at least one counted request.
    pub connections: u64,
    /// Counted requests by the status they were answered with (a `reset_after=N` answer is
    /// here too).
    #[serde(default)]
    pub by_status: BTreeMap<u16, u64>,
    /// Counted requests aborted on purpose: `reset=1`, `reset_after=N`,
    /// `reset_after_charge=1` and the `reset` fault.
    #[serde(default)]
    pub resets: u64,
}

impl Counters {
    /// Counted requests answered with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// The JSON body of `GET /charges`: the `/charge` requests received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charges {
    pub total: u64,
    /// Charges per `Idempotency-Key` value.
    #[serde(default)]
    pub by_key: BTreeMap<String, u64>,
    /// Charges that carried no `Idempotency-Key`.
    #[serde(default)]
    pub without_key: u64,
}

/// The body of `POST /control` (omitted fields keep their value) and of its answer and
/// `GET /control` (every field but `refuse_for` present). See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_status: Option<u16>,
    /// Seconds; 0 sends no `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// A humantime string in JSON (`"200ms"`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub delay: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse: Option<bool>,
    /// A humantime string in JSON (`"2s"`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub refuse_for: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<u16>,
}

impl FaultSettings {
    /// Checks ranges and combinations; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.fail_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!("fail_ratio {r}: must be within 0..=1"));
        }
        for (field, status) in [
            ("fail_status", self.fail_status),
            ("health_status", self.health_status),
        ] {
            if let Some(code) = status
                && !(200..=599).contains(&code)
            {
                return Err(format!("{field} {code}: must be within 200..=599"));
            }
        }
        if self.refuse == Some(false) && self.refuse_for.is_some() {
            return Err("refuse_for with refuse false: pick one".to_owned());
        }
        Ok(())
    }
}

/// `Option<Duration>` as a humantime string (`"200ms"`).
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_duration(&text).map_err(de::Error::custom))
            .transpose()
    }
}

/// A body of `len` filler bytes sent in chunks of a shared buffer: no per-chunk allocation,
/// so gigabytes can be streamed in bounded memory.
#[derive(Debug)]
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
    exact_length: bool,
}

impl PatternBody {
    /// `len` bytes in chunks of `chunk_size` bytes; the length is announced
    /// (`content-length` for HTTP/1.1).
    pub fn new(len: u64, chunk_size: usize) -> Self {
        PatternBody {
            remaining: len,
            chunk: Bytes::from(vec![b'x'; chunk_size.max(1)]),
            exact_length: true,
        }
    }

    /// Do not announce the length (HTTP/1.1 uses chunked transfer-encoding).
    pub fn without_length(mut self) -> Self {
        self.exact_length = false;
        self
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        // `n` is at most the chunk length, so the cast cannot truncate.
        let data = self.chunk.slice(..n as usize);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_length {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

type RespBody = BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Returned from the service (or from a body) to make hyper drop the connection
/// (HTTP/1.1) or reset the stream (HTTP/2).
#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "reset requested (reset=1, reset_after=N, reset_after_charge=1 or the reset fault)",
        )
    }
}

impl std::error::Error for ResetRequested {}

/// Runs a hyper connection until it ends, or until `stop` completes; then shuts it down
/// gracefully (finish in-flight requests, close idle keep-alive), for at most
/// `SHUTDOWN_GRACE`.
macro_rules! drive {
    ($conn:expr, $stop:expr) => {{
        let mut conn = std::pin::pin!($conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = $stop => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
            }
        }
    }};
}

/// Which listener a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Main,
    /// `--control-listen`: control endpoints only, never refused.
    Control,
}

/// The server-wide faults; see [`FaultSettings`].
#[derive(Clone, Debug)]
struct Faults {
    fail_ratio: f64,
    fail_status: StatusCode,
    retry_after: u64,
    /// Requests that reached the `fail_ratio` decision since `fail_ratio` was last set.
    fail_seq: u64,
    delay: Duration,
    hang: bool,
    reset: bool,
    /// Mirrors the listener: true while it is closed.
    refusing: bool,
    health_status: StatusCode,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_ratio: 0.0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: 0,
            fail_seq: 0,
            delay: Duration::ZERO,
            hang: false,
            reset: false,
            refusing: false,
            health_status: StatusCode::OK,
        }
    }
}

impl Faults {
    /// Applies the fields present in `s`, which [`FaultSettings::validate`] accepted.
    fn apply(&mut self, s: &FaultSettings) {
        if let Some(ratio) = s.fail_ratio {
            self.fail_ratio = ratio;
            self.fail_seq = 0;
        }
        if let Some(code) = s.fail_status.and_then(|c| StatusCode::from_u16(c).ok()) {
            self.fail_status = code;
        }
        if let Some(code) = s.health_status.and_then(|c| StatusCode::from_u16(c).ok()) {
            self.health_status = code;
        }
        if let Some(seconds) = s.retry_after {
            self.retry_after = seconds;
        }
        if let Some(delay) = s.delay {
            self.delay = delay;
        }
        if let Some(hang) = s.hang {
            self.hang = hang;
        }
        if let Some(reset) = s.reset {
            self.reset = reset;
        }
    }

    fn settings(&self) -> FaultSettings {
        FaultSettings {
            fail_ratio: Some(self.fail_ratio),
            fail_status: Some(self.fail_status.as_u16()),
            retry_after: Some(self.retry_after),
            delay: Some(self.delay),
            hang: Some(self.hang),
            reset: Some(self.reset),
            refuse: Some(self.refusing),
            refuse_for: None,
            health_status: Some(self.health_status.as_u16()),
        }
    }

    /// Counts one request against `fail_ratio`; true when it is one to fail.
    fn next_fails(&mut self) -> bool {
        if self.fail_ratio <= 0.0 {
            return false;
        }
        self.fail_seq += 1;
        nth_fails(self.fail_seq, self.fail_ratio)
    }
}

/// Whether request `k` (from 1) fails at `ratio`: it does when ⌈k·ratio⌉ grows, so failures
/// are spread evenly, the first request fails, and any first n requests hold exactly
/// ⌈n·ratio⌉ failures. The small tolerance absorbs binary rounding (3 × 0.1 is
/// 0.30000000000000004, 3 × ⅔ is 1.9999999999999998).
fn nth_fails(k: u64, ratio: f64) -> bool {
    // Counts stay far below 2^52: the conversions are exact.
    let failures = |n: u64| (n as f64 * ratio - 1e-9).ceil();
    k > 0 && failures(k) > failures(k - 1)
}

/// What the main listener should do, sent from `/control` to the accept loop.
#[derive(Debug)]
enum Listen {
    Accept,
    Refuse { until: Option<Instant> },
}

#[derive(Debug)]
struct ListenCommand {
    listen: Listen,
    /// Answered once the listener is in the asked state.
    done: oneshot::Sender<Result<(), String>>,
}

struct State {
    config: DemoConfig,
    requests: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    faults: Mutex<Faults>,
    charges: Mutex<Charges>,
    listen: mpsc::Sender<ListenCommand>,
}

impl State {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    fn counters(&self) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::SeqCst),
            connections: self.connections.load(Ordering::SeqCst),
            by_status: lock(&self.by_status).clone(),
            resets: self.resets.load(Ordering::SeqCst),
        }
    }

    /// Records one charge; returns how many this key (or the keyless) has now.
    fn charge(&self, key: Option<String>) -> u64 {
        let mut charges = lock(&self.charges);
        charges.total += 1;
        match key {
            Some(key) => {
                let n = charges.by_key.entry(key).or_default();
                *n += 1;
                *n
            }
            None => {
                charges.without_key += 1;
                charges.without_key
            }
        }
    }

    fn reset(&self) -> Result<Response<RespBody>, BoxError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        Err(Box::new(ResetRequested))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here can panic half-way; the data stays consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds `addr` with `SO_REUSEADDR`, as every (re-)bind of the demo server does.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How long a TLS client gets to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Spawns connection tasks; each holds a clone of `alive` until it ends.
#[derive(Clone)]
struct Spawner {
    state: Arc<State>,
    // hyper-util's auto builder ignores `http1_only`/`http2_only` once upgrades are
    // enabled, so the single-protocol modes use hyper's own builders.
    auto: Arc<auto::Builder<TokioExecutor>>,
    alive: mpsc::Sender<()>,
    stopping: watch::Receiver<bool>,
    /// TLS on the main port.
    tls: Option<TlsAcceptor>,
}

impl Spawner {
    /// Serves one connection until it ends, the server stops, or `close` changes; main-port
    /// connections of a TLS server complete their handshake first (in their own task).
    fn spawn(
        &self,
        stream: TcpStream,
        port: Port,
        protocol: Protocol,
        close: Option<watch::Receiver<u64>>,
    ) {
        let _ = stream.set_nodelay(true);
        match (&self.tls, port) {
            (Some(acceptor), Port::Main) => {
                let (acceptor, this) = (acceptor.clone(), self.clone());
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    // Failed handshakes are the client's business (tests provoke them).
                    if let Ok(Ok(tls)) = accepted {
                        let info = Arc::new(TlsInfo::of(tls.get_ref().1));
                        this.serve(tls, port, protocol, close, Some(info));
                    }
                });
            }
            _ => self.serve(stream, port, protocol, close, None),
        }
    }

    fn serve<I>(
        &self,
        stream: I,
        port: Port,
        protocol: Protocol,
        close: Option<watch::Receiver<u64>>,
        tls: Option<Arc<TlsInfo>>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(stream);
        let state = self.state.clone();
        let counted = Arc::new(AtomicBool::new(false));
        let service = service_fn(move |req| {
            handle_reporting_tls(state.clone(), counted.clone(), port, tls.clone(), req)
        });
        let alive = self.alive.clone();
        let stop = stop_requested(self.stopping.clone(), close);
        // Errors from connections are expected (resets, clients going away): not reported.
        match protocol {
            Protocol::Auto => {
                let auto = self.auto.clone();
                tokio::spawn(async move {
                    let conn = auto.serve_connection_with_upgrades(io, service);
                    drive!(conn, stop);
                    drop(alive);
                });
            }
            Protocol::Http1 => {
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades();
                    drive!(conn, stop);
                    drop(alive);
                });
            }
            Protocol::Http2 => {
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service);
                    drive!(conn, stop);
                    drop(alive);
                });
            }
        }
    }
}

/// Completes when the server stops or, for main-port connections, when `close` changes
/// (the listener started refusing).
async fn stop_requested(mut stopping: watch::Receiver<bool>, close: Option<watch::Receiver<u64>>) {
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    match close {
        None => stop.await,
        Some(mut close) => tokio::select! {
            () = stop => {}
            _ = close.changed() => {}
        },
    }
}

/// Serves connections from `listener` until `shutdown` completes, then gives in-flight
/// connections `SHUTDOWN_GRACE` to finish.
pub async fn serve(
    listener: TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_control(listener, None, config, shutdown).await
}

/// [`serve`], plus the control endpoints on `control` (which never refuses).
pub async fn serve_with_control(
    listener: TcpListener,
    control: Option<TcpListener>,
    config: DemoConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let protocol = config.protocol;
    let tls = match &config.tls {
        Some(t) => Some(
            t.server_config(protocol)
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?,
        ),
        None => None,
    };
    let (listen_tx, mut listen_rx) = mpsc::channel::<ListenCommand>(4);
    let state = Arc::new(State {
        config,
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        resets: AtomicU64::new(0),
        by_status: Mutex::default(),
        faults: Mutex::default(),
        charges: Mutex::default(),
        listen: listen_tx,
    });
    // Connection tasks hold a sender each; when all are gone, every connection has ended.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let (stop, stopping) = watch::channel(false);
    // Bumped when the main listener closes, to close its connections too.
    let (close_main, _) = watch::channel(0u64);
    let spawner = Spawner {
        state: state.clone(),
        auto: Arc::new(auto::Builder::new(TokioExecutor::new())),
        alive,
        stopping: stopping.clone(),
        tls: tls.map(TlsAcceptor::from),
    };
    if let Some(control) = control {
        let spawner = spawner.clone();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = control.accept() => match accepted {
                        Ok((stream, _)) => spawner.spawn(stream, Port::Control, Protocol::Auto, None),
                        Err(error) => accept_failed(&error).await,
                    },
                    () = async { let _ = stopping.wait_for(|stop| *stop).await; } => break,
                }
            }
        });
    }

    let mut listener = Some(listener);
    let mut reopen_at: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(stream) => {
                    spawner.spawn(stream, Port::Main, protocol, Some(close_main.subscribe()));
                }
                Err(error) => accept_failed(&error).await,
            },
            Some(command) = listen_rx.recv() => {
                let result = match command.listen {
                    Listen::Refuse { until } => {
                        if listener.take().is_some() {
                            close_main.send_modify(|epoch| *epoch += 1);
                        }
                        reopen_at = until;
                        state.faults().refusing = true;
                        Ok(())
                    }
                    Listen::Accept => {
                        reopen_at = None;
                        reopen(&mut listener, addr, &state).await
                    }
                };
                let _ = command.done.send(result);
            }
            () = sleep_until(reopen_at) => {
                reopen_at = match reopen(&mut listener, addr, &state).await {
                    Ok(()) => None,
                    Err(error) => {
                        eprintln!("demo-upstream: {error}; trying again");
                        Some(Instant::now() + Duration::from_millis(100))
                    }
                };
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(spawner);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, all_done.recv()).await;
    Ok(())
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<TcpStream> {
    match listener {
        Some(listener) => Ok(listener.accept().await?.0),
        None => std::future::pending().await,
    }
}

async fn accept_failed(error: &std::io::Error) {
    // Resource exhaustion (EMFILE) is transient; do not spin on it.
    eprintln!("demo-upstream: accept failed: {error}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Binds the main address again if it is closed; for about a second if the port is busy.
async fn reopen(
    listener: &mut Option<TcpListener>,
    addr: SocketAddr,
    state: &State,
) -> Result<(), String> {
    let mut tries = 0;
    while listener.is_none() {
        match bind(addr) {
            Ok(bound) => *listener = Some(bound),
            Err(error) if tries >= 20 => return Err(format!("re-binding {addr}: {error}")),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    state.faults().refusing = false;
    Ok(())
}

/// A demo server running in this process; stops when dropped.
pub struct InProcessDemo {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl InProcessDemo {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(config: DemoConfig) -> std::io::Result<Self> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Ok(InProcessDemo {
            addr,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for InProcessDemo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Query controls, parsed up front so a typo answers 400 instead of being ignored.
#[derive(Debug, Default)]
struct Controls {
    delay: Duration,
    status: Option<StatusCode>,
    fail: f64,
    size: Option<u64>,
    reset: bool,
    hang: bool,
    reset_after: Option<u64>,
    body_delay: Option<Duration>,
    fail_after_charge: bool,
    reset_after_charge: bool,
}

impl Controls {
    fn parse(query: Option<&str>) -> Result<Controls, String> {
        let mut controls = Controls::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "delay" => controls.delay = parse_delay(value)?,
                "status" => {
                    let code: u16 = value
                        .parse()
                        .map_err(|_| format!("status={value}: not a number"))?;
                    if !(200..=599).contains(&code) {
                        return Err(format!("status={value}: must be within 200..=599"));
                    }
                    controls.status = Some(
                        StatusCode::from_u16(code)
                            .map_err(|error| format!("status={value}: {error}"))?,
                    );
                }
                "fail" => {
                    let p: f64 = value
                        .parse()
                        .map_err(|_| format!("fail={value}: not a number"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!("fail={value}: must be a probability in 0..=1"));
                    }
                    controls.fail = p;
                }
                "size" => {
                    controls.size = Some(
                        value
                            .parse()
                            .map_err(|_| format!("size={value}: not a byte count"))?,
                    );
                }
                "reset_after" => {
                    controls.reset_after = Some(
                        value
                            .parse()
                            .map_err(|_| format!("reset_after={value}: not a byte count"))?,
                    );
                }
                "body_delay" => {
                    controls.body_delay =
                        Some(parse_duration(value).map_err(|error| format!("body_delay={error}"))?);
                }
                "reset" => controls.reset = parse_flag(key, value)?,
                "hang" => controls.hang = parse_flag(key, value)?,
                "fail_after_charge" => controls.fail_after_charge = parse_flag(key, value)?,
                "reset_after_charge" => controls.reset_after_charge = parse_flag(key, value)?,
                // Other parameters are the caller's business (routing tests use them).
                _ => {}
            }
        }
        Ok(controls)
    }
}

fn parse_delay(value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|error| format!("delay={error}"))
}

/// Milliseconds as a bare number, else a humantime duration (`250ms`, `2s`).
fn parse_duration(value: &str) -> Result<Duration, String> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(value).map_err(|error| format!("{value}: {error}"))
}

fn parse_flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(format!("{key}={value}: expected 1 or 0")),
    }
}

/// [`handle`], with the connection's TLS facts added to the answer.
async fn handle_reporting_tls(
    state: Arc<State>,
    counted: Arc<AtomicBool>,
    port: Port,
    tls: Option<Arc<TlsInfo>>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, BoxError> {
    let mut res = handle(state, counted, port, req).await;
    if let (Ok(r), Some(tls)) = (&mut res, &tls) {
        for (name, value) in &tls.headers {
            r.headers_mut().insert(*name, value.clone());
        }
    }
    res
}

async fn handle(
    state: Arc<State>,
    counted: Arc<AtomicBool>,
    port: Port,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, BoxError> {
    match req.uri().path() {
        "/counters" => return Ok(json_response(&state, StatusCode::OK, &state.counters())),
        "/charges" => {
            let charges = lock(&state.charges).clone();
            return Ok(json_response(&state, StatusCode::OK, &charges));
        }
        "/control" => return Ok(control(&state, req).await),
        _ => {}
    }
    if port == Port::Control {
        return Ok(text_response(
            &state,
            StatusCode::NOT_FOUND,
            "demo-upstream: the control port serves /control, /counters and /charges only\n"
                .to_owned(),
        ));
    }
    if req.uri().path() == "/health" {
        return health(&state).await;
    }

    state.requests.fetch_add(1, Ordering::SeqCst);
    if !counted.swap(true, Ordering::SeqCst) {
        state.connections.fetch_add(1, Ordering::SeqCst);
    }
    let result = if wants_websocket(req.headers()) || req.uri().path() == "/ws" {
        Ok(websocket(&state, req))
    } else {
        answer(&state, req).await
    };
    if let Ok(response) = &result {
        *lock(&state.by_status)
            .entry(response.status().as_u16())
            .or_default() += 1;
    }
    result
}

/// `GET /control` and `POST /control`.
async fn control(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    let bad = |status, message: String| {
        text_response(
            state,
            status,
            format!("demo-upstream: /control: {message}\n"),
        )
    };
    match *req.method() {
        Method::GET => return json_response(state, StatusCode::OK, &state.faults().settings()),
        Method::POST | Method::PUT => {}
        _ => {
            return bad(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET or POST a JSON object".to_owned(),
            );
        }
    }
    let body = match Limited::new(req.into_body(), CONTROL_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}"),
            );
        }
    };
    let settings: FaultSettings = match serde_json::from_slice(&body) {
        Ok(settings) => settings,
        Err(error) => return bad(StatusCode::BAD_REQUEST, error.to_string()),
    };
    if let Err(message) = settings.validate() {
        return bad(StatusCode::BAD_REQUEST, message);
    }
    state.faults().apply(&settings);

    let listen = match (settings.refuse, settings.refuse_for) {
        (_, Some(d)) => Some(Listen::Refuse {
            until: Some(Instant::now() + d),
        }),
        (Some(true), None) => Some(Listen::Refuse { until: None }),
        (Some(false), None) => Some(Listen::Accept),
        (None, None) => None,
    };
    if let Some(listen) = listen {
        let (done, acked) = oneshot::channel();
        let sent = state.listen.send(ListenCommand { listen, done }).await;
        let result = match sent {
            Ok(()) => acked
                .await
                .unwrap_or_else(|_| Err("shutting down".to_owned())),
            Err(_) => Err("shutting down".to_owned()),
        };
        if let Err(message) = result {
            return bad(StatusCode::INTERNAL_SERVER_ERROR, message);
        }
    }
    json_response(state, StatusCode::OK, &state.faults().settings())
}

/// `GET /health`: the `delay`, `hang` and `reset` faults, then `health_status`.
async fn health(state: &State) -> Result<Response<RespBody>, BoxError> {
    let (delay, hang, reset) = {
        let faults = state.faults();
        (faults.delay, faults.hang, faults.reset)
    };
    let delay = state.config.base_delay + delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if hang {
        std::future::pending::<()>().await;
    }
    if reset {
        return Err(Box::new(ResetRequested));
    }
    let status = state.faults().health_status;
    let text = if status.is_success() {
        "healthy\n"
    } else {
        "unhealthy\n"
    };
    Ok(text_response(state, status, text.to_owned()))
}

/// Every counted request but WebSocket upgrades.
async fn answer(state: &State, req: Request<Incoming>) -> Result<Response<RespBody>, BoxError> {
    let controls = match Controls::parse(req.uri().query()) {
        Ok(controls) => controls,
        Err(message) => {
            return Ok(text_response(
                state,
                StatusCode::BAD_REQUEST,
                format!("demo-upstream: bad query: {message}\n"),
            ));
        }
    };
    let is_charge = req.uri().path() == "/charge";
    if !is_charge && (controls.fail_after_charge || controls.reset_after_charge) {
        return Ok(text_response(
            state,
            StatusCode::BAD_REQUEST,
            "demo-upstream: bad query: fail_after_charge and reset_after_charge are for /charge\n"
                .to_owned(),
        ));
    }

    let (parts, mut body) = req.into_parts();
    // Count the body frame by frame: never hold more than one chunk.
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    let charged = is_charge.then(|| {
        let key = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        state.charge(key)
    });

    let (delay, hang, reset) = {
        let faults = state.faults();
        (faults.delay, faults.hang, faults.reset)
    };
    let delay = state.config.base_delay + controls.delay + delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if controls.hang || hang {
        std::future::pending::<()>().await;
    }
    if controls.reset || reset || controls.reset_after_charge {
        return state.reset();
    }
    let mut retry_after = None;
    let status = {
        let mut faults = state.faults();
        let ratio_fails = faults.next_fails();
        if controls.fail_after_charge {
            StatusCode::SERVICE_UNAVAILABLE
        } else if controls.fail > 0.0 && fastrand::f64() < controls.fail {
            StatusCode::INTERNAL_SERVER_ERROR
        } else if ratio_fails {
            retry_after = (faults.retry_after > 0).then_some(faults.retry_after);
            faults.fail_status
        } else {
            controls.status.unwrap_or(StatusCode::OK)
        }
    };

    let mut response = if let Some(size) = controls.size {
        let mut response = Response::new(
            PatternBody::new(size, CHUNK_SIZE)
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        add_identity(state, headers);
        response
    } else {
        json_response(state, status, &echo(state, &parts, body_bytes))
    };
    let headers = response.headers_mut();
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(n) = charged {
        headers.insert("x-charge-count", HeaderValue::from(n));
    }
    if let Some(n) = controls.reset_after {
        state.resets.fetch_add(1, Ordering::SeqCst);
        response = response.map(|body| ResetAfter::new(body, n).boxed());
    }
    if let Some(delay) = controls.body_delay {
        response = response.map(|body| {
            DelayedBody {
                inner: body,
                pause: Box::pin(tokio::time::sleep(delay)),
                waited: false,
            }
            .boxed()
        });
    }
    Ok(response)
}

fn echo(state: &State, parts: &http::request::Parts, body_bytes: u64) -> Echo {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    Echo {
        name: state.config.name.clone(),
        version: state.config.version.clone(),
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        headers,
        authority,
        protocol: format!("{:?}", parts.version),
        body_bytes,
    }
}

/// `body_delay=D`: the head goes at once, the body's first frame `D` later (a slow
/// streaming body).
struct DelayedBody {
    inner: RespBody,
    pause: Pin<Box<Sleep>>,
    waited: bool,
}

impl Body for DelayedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.waited {
            if self.pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.waited = true;
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.waited && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `reset_after=N`: passes the first N bytes of `inner` (keeping its announced length),
/// pauses so they are flushed, then fails, which makes hyper abort the connection
/// (HTTP/1.1) or reset the stream (HTTP/2). It never ends cleanly, even when `inner` is
/// shorter than N.
struct ResetAfter {
    inner: RespBody,
    remaining: u64,
    pause: Option<Pin<Box<Sleep>>>,
}

impl ResetAfter {
    fn new(inner: RespBody, n: u64) -> Self {
        ResetAfter {
            inner,
            remaining: n,
            pause: None,
        }
    }
}

impl Body for ResetAfter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining > 0 {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        let n = self.remaining.min(data.len() as u64);
                        self.remaining -= n;
                        // `n` is at most the chunk length, so the cast cannot truncate.
                        data.truncate(n as usize);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // Trailers: the body is over; abort instead.
                    Err(_) => self.remaining = 0,
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => self.remaining = 0,
            }
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_PAUSE)));
        match pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ResetRequested)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

fn websocket(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    if !wants_websocket(req.headers()) {
        return text_response(
            state,
            StatusCode::UPGRADE_REQUIRED,
            "demo-upstream: this path needs `Upgrade: websocket` (was it stripped on the way?)\n"
                .to_owned(),
        );
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text_response(
            state,
            StatusCode::BAD_REQUEST,
            "demo-upstream: websocket upgrade without sec-websocket-key\n".to_owned(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let name = state.config.name.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                eprintln!("demo-upstream {name}: websocket upgrade failed: {error}");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(message) = ws.next().await {
            match message {
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings and close frames itself.
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    add_identity(state, headers);
    response
}

fn add_identity(state: &State, headers: &mut HeaderMap) {
    if let Ok(name) = HeaderValue::from_str(&state.config.name) {
        headers.insert("x-upstream", name);
    }
    if let Ok(version) = HeaderValue::from_str(&state.config.version) {
        headers.insert("x-upstream-version", version);
    }
}

fn full(bytes: Bytes) -> RespBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn json_response(state: &State, status: StatusCode, value: &impl Serialize) -> Response<RespBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_identity(state, response.headers_mut());
    response
}

fn text_response(state: &State, status: StatusCode, text: String) -> Response<RespBody> {
    let mut response = Response::new(full(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    add_identity(state, response.headers_mut());
    response
}

// ---------------------------------------------------------------------------------------------
// Test-side helpers on the process handle

/// The `--control-listen` flag with an OS-chosen port, for [`Upstream::start_with_args`].
pub const CONTROL_LISTEN_ARGS: [&str; 2] = ["--control-listen", "127.0.0.1:0"];

impl Upstream {
    /// [`start`](Self::start) with a control port ([`CONTROL_LISTEN_ARGS`]), so the faults
    /// can be changed while the main port refuses connections.
    pub async fn start_with_control(name: &str, version: &str, protocol: Protocol) -> Upstream {
        Upstream::start_with_args(name, version, protocol, &CONTROL_LISTEN_ARGS).await
    }

    /// Where `/control`, `/counters` and `/charges` answer: the `--control-listen` port
    /// when the process was started with one, else the main port.
    pub fn control_addr(&self) -> SocketAddr {
        self.output()
            .lines()
            .find_map(|line| line.strip_prefix("[stdout] control listening on "))
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| self.addr())
    }

    /// A client for [`control_addr`](Self::control_addr): the control port speaks HTTP/1.1
    /// and h2c, the main port only what `--protocol` allows.
    fn control_client(&self) -> (HttpClient, SocketAddr) {
        let addr = self.control_addr();
        let client = if addr == self.addr() {
            self.client()
        } else {
            HttpClient::http1()
        };
        (client.with_timeout(Duration::from_secs(10)), addr)
    }

    /// `POST /control`; returns the settings now in force, or why it failed.
    pub async fn try_set_faults(&self, settings: &FaultSettings) -> anyhow::Result<FaultSettings> {
        let (client, addr) = self.control_client();
        let body = serde_json::to_string(settings).context("encoding the fault settings")?;
        let response = client
            .try_request(
                "POST",
                &format!("http://{addr}/control"),
                &[("content-type", "application/json")],
                client::full(body.clone()),
            )
            .await?;
        if !response.status.is_success() {
            bail!("POST /control {body}: {}", response.describe());
        }
        serde_json::from_slice(&response.body)
            .with_context(|| format!("bad /control answer: {}", response.describe()))
    }

    /// `POST /control`, panicking unless it succeeds; returns the settings now in force.
    pub async fn set_faults(&self, settings: &FaultSettings) -> FaultSettings {
        self.try_set_faults(settings)
            .await
            .unwrap_or_else(|error| panic!("demo upstream {}: {error:#}", self.name()))
    }

    /// `GET /control`: the settings in force.
    pub async fn faults(&self) -> FaultSettings {
        self.control_json("/control").await
    }

    /// `GET /charges`: the charge ledger.
    pub async fn charges(&self) -> Charges {
        self.control_json("/charges").await
    }

    /// Makes `GET /health` answer `status`.
    pub async fn set_health(&self, status: u16) {
        self.set_faults(&FaultSettings {
            health_status: Some(status),
            ..FaultSettings::default()
        })
        .await;
    }

    pub(crate) async fn control_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (client, addr) = self.control_client();
        let response = client.get(&format!("http://{addr}{path}")).await;
        serde_json::from_slice(&response.body).unwrap_or_else(|error| {
            panic!(
                "bad {path} answer from {} ({error}): {}",
                self.name(),
                response.describe()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_controls() {
        let c = Controls::parse(Some("delay=250ms&status=503&fail=0.5&size=10&reset=1&x=y"))
            .expect("valid query");
        assert_eq!(c.delay, Duration::from_millis(250));
        assert_eq!(c.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(c.fail, 0.5);
        assert_eq!(c.size, Some(10));
        assert!(c.reset);
        assert!(!c.hang);
        assert_eq!(
            Controls::parse(Some("delay=2s")).expect("valid").delay,
            Duration::from_secs(2)
        );
        assert_eq!(
            Controls::parse(Some("delay=40")).expect("valid").delay,
            Duration::from_millis(40)
        );
        let c = Controls::parse(Some("reset_after=7&fail_after_charge=1&reset_after_charge"))
            .expect("valid");
        assert_eq!(c.reset_after, Some(7));
        assert!(c.fail_after_charge && c.reset_after_charge);
        assert!(Controls::parse(Some("status=abc")).is_err());
        assert!(Controls::parse(Some("fail=2")).is_err());
        assert!(Controls::parse(Some("delay=soon")).is_err());
        assert!(Controls::parse(Some("reset_after=-1")).is_err());
    }

    #[test]
    fn fail_ratio_pattern_is_exact() {
        #[track_caller]
        fn check(ratio: f64, n: u64, expected: &str) {
            let mut faults = Faults::default();
            faults.apply(&FaultSettings {
                fail_ratio: Some(ratio),
                ..FaultSettings::default()
            });
            let pattern: String = (0..n)
                .map(|_| if faults.next_fails() { 'F' } else { '.' })
                .collect();
            assert_eq!(pattern, expected, "fail_ratio {ratio}");
        }
        check(0.0, 6, "......");
        check(1.0, 4, "FFFF");
        check(0.5, 10, "F.F.F.F.F.");
        check(0.25, 8, "F...F...");
        check(0.1, 30, "F.........F.........F.........");
        check(2.0 / 3.0, 6, "FF.FF.");
        check(0.3, 10, "F..F..F...");
        check(0.3, 20, "F..F..F...F..F..F...");
    }

    #[test]
    fn setting_the_ratio_restarts_the_pattern() {
        let mut faults = Faults::default();
        let half = FaultSettings {
            fail_ratio: Some(0.5),
            ..FaultSettings::default()
        };
        faults.apply(&half);
        assert!(faults.next_fails());
        faults.apply(&FaultSettings {
            delay: Some(Duration::from_millis(5)),
            ..FaultSettings::default()
        });
        assert!(!faults.next_fails(), "other fields keep the count");
        faults.apply(&half);
        assert!(faults.next_fails(), "fail_ratio restarts it");
    }

    #[test]
    fn fault_settings_json() {
        let s: FaultSettings = serde_json::from_str(
            r#"{"fail_ratio":0.5,"fail_status":503,"delay":"200ms","hang":false,
                "reset":false,"refuse":false,"health_status":200,"retry_after":1}"#,
        )
        .expect("the documented example");
        assert_eq!(s.delay, Some(Duration::from_millis(200)));
        assert_eq!(s.fail_ratio, Some(0.5));
        assert_eq!(s.retry_after, Some(1));
        s.validate().expect("valid");
        let timed: FaultSettings = serde_json::from_str(r#"{"refuse_for":"2s"}"#).expect("timed");
        assert_eq!(timed.refuse_for, Some(Duration::from_secs(2)));
        assert_eq!(timed.refuse, None);

        // Only what is set goes on the wire, so the rest keeps its value.
        let only = FaultSettings {
            hang: Some(true),
            delay: Some(Duration::from_millis(1500)),
            ..FaultSettings::default()
        };
        assert_eq!(
            serde_json::to_string(&only).expect("encode"),
            r#"{"delay":"1s 500ms","hang":true}"#
        );
        assert_eq!(
            serde_json::from_str::<FaultSettings>(&serde_json::to_string(&only).expect("encode"))
                .expect("decode"),
            only
        );

        for (json, error) in [
            (r#"{"fail_ratio":1.5}"#, "fail_ratio"),
            (r#"{"fail_status":99}"#, "fail_status"),
            (r#"{"health_status":600}"#, "health_status"),
            (r#"{"refuse":false,"refuse_for":"1s"}"#, "refuse_for"),
        ] {
            let s: FaultSettings = serde_json::from_str(json).expect("well-formed");
            let message = s.validate().expect_err(json);
            assert!(message.contains(error), "{json}: {message}");
        }
        assert!(serde_json::from_str::<FaultSettings>(r#"{"fail_rate":1}"#).is_err());
        assert!(serde_json::from_str::<FaultSettings>(r#"{"delay":"soon"}"#).is_err());
    }

    #[tokio::test]
    async fn reset_after_passes_n_bytes_then_fails() {
        let inner = full(Bytes::from_static(b"0123456789"));
        let mut body = ResetAfter::new(inner, 4);
        assert_eq!(
            body.size_hint().exact(),
            Some(10),
            "the full length is announced"
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"0123")
        );
        let error = body
            .frame()
            .await
            .expect("not the end")
            .expect_err("the abort");
        assert!(error.is::<ResetRequested>());

        let mut short = ResetAfter::new(full(Bytes::from_static(b"ab")), 100);
        let first = short.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"ab"));
        assert!(short.frame().await.expect("not the end").is_err());
    }
}
