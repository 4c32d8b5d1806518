//! The demo upstream: a small HTTP server that tells the caller what it received.
//!
//! The `legate-demo-upstream` binary is a thin wrapper around [`serve`]; tests should run the
//! binary as a process (see [`crate::Upstream`]), but the server can also run in-process.
//!
//! Every request is answered with a JSON echo ([`Echo`]) unless query parameters ask for
//! something else: `delay=250ms`, `status=503`, `fail=0.5`, `size=N`, `reset=1`, `hang=1`.
//! `GET /counters` reports how many requests and connections were seen (it does not count
//! itself), and a WebSocket upgrade (on any path, e.g. `/ws`) echoes messages back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Size of the chunks a `size=N` response body is sent in.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// How long in-flight connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
}

impl DemoConfig {
    pub fn new(name: &str) -> Self {
        DemoConfig {
            name: name.to_owned(),
            version: "v1".to_owned(),
            protocol: Protocol::Auto,
            base_delay: Duration::ZERO,
        }
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests seen, not counting `/counters` itself.
    pub requests: u64,
    /// Connections that carried at least one counted request.
    pub connections: u64,
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

type RespBody = BoxBody<Bytes, Infallible>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Returned from the service to make hyper drop the connection (HTTP/1.1) or reset the
/// stream (HTTP/2) without a response.
#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by the query (reset=1)")
    }
}

impl std::error::Error for ResetRequested {}

/// Runs a hyper connection until it ends, or until `stopping` turns true, then shuts it
/// down gracefully (finish in-flight requests, close idle keep-alive).
macro_rules! drive {
    ($conn:expr, $stopping:expr) => {{
        let mut conn = std::pin::pin!($conn);
        let mut stopping = $stopping;
        tokio::select! {
            _ = conn.as_mut() => {}
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }};
}

struct State {
    config: DemoConfig,
    requests: AtomicU64,
    connections: AtomicU64,
}

/// Serves connections from `listener` until `shutdown` completes, then gives in-flight
/// connections `SHUTDOWN_GRACE` to finish.
pub async fn serve(
    listener: TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let protocol = config.protocol;
    let state = Arc::new(State {
        config,
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    // hyper-util's auto builder ignores `http1_only`/`http2_only` once upgrades are enabled,
    // so the single-protocol modes use hyper's own builders.
    let auto = Arc::new(auto::Builder::new(TokioExecutor::new()));
    // Connection tasks hold a sender each; when all are gone, every connection has ended.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Resource exhaustion (EMFILE) is transient; do not spin on it.
                    eprintln!("demo-upstream: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let state = state.clone();
        let counted = Arc::new(AtomicBool::new(false));
        let service = service_fn(move |req| handle(state.clone(), counted.clone(), req));
        let alive = alive.clone();
        let stopping = stopping.clone();
        // Errors from connections are expected (reset=1, clients going away): not reported.
        match protocol {
            Protocol::Auto => {
                let auto = auto.clone();
                tokio::spawn(async move {
                    let conn = auto.serve_connection_with_upgrades(io, service);
                    drive!(conn, stopping);
                    drop(alive);
                });
            }
            Protocol::Http1 => {
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades();
                    drive!(conn, stopping);
                    drop(alive);
                });
            }
            Protocol::Http2 => {
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service);
                    drive!(conn, stopping);
                    drop(alive);
                });
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, all_done.recv()).await;
    Ok(())
}

/// A demo server running in this process; stops when dropped.
pub struct InProcessDemo {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcessDemo {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(config: DemoConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
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
                "reset" => controls.reset = parse_flag(key, value)?,
                "hang" => controls.hang = parse_flag(key, value)?,
                // Other parameters are the caller's business (routing tests use them).
                _ => {}
            }
        }
        Ok(controls)
    }
}

fn parse_delay(value: &str) -> Result<Duration, String> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(value).map_err(|error| format!("delay={value}: {error}"))
}

fn parse_flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(format!("{key}={value}: expected 1 or 0")),
    }
}

async fn handle(
    state: Arc<State>,
    counted: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, BoxError> {
    if req.uri().path() == "/counters" {
        let counters = Counters {
            requests: state.requests.load(Ordering::SeqCst),
            connections: state.connections.load(Ordering::SeqCst),
        };
        return Ok(json_response(&state, StatusCode::OK, &counters));
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    if !counted.swap(true, Ordering::SeqCst) {
        state.connections.fetch_add(1, Ordering::SeqCst);
    }

    if wants_websocket(req.headers()) || req.uri().path() == "/ws" {
        return Ok(websocket(&state, req));
    }

    let controls = match Controls::parse(req.uri().query()) {
        Ok(controls) => controls,
        Err(message) => {
            return Ok(text_response(
                &state,
                StatusCode::BAD_REQUEST,
                format!("demo-upstream: bad query: {message}\n"),
            ));
        }
    };

    let (parts, mut body) = req.into_parts();
    // Count the body frame by frame: never hold more than one chunk.
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_bytes += data.len() as u64;
        }
    }

    let delay = state.config.base_delay + controls.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if controls.hang {
        std::future::pending::<()>().await;
    }
    if controls.reset {
        return Err(Box::new(ResetRequested));
    }
    let status = if controls.fail > 0.0 && fastrand::f64() < controls.fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        controls.status.unwrap_or(StatusCode::OK)
    };

    if let Some(size) = controls.size {
        let mut response = Response::new(PatternBody::new(size, CHUNK_SIZE).boxed());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        add_identity(&state, headers);
        return Ok(response);
    }

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
    let echo = Echo {
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
    };
    Ok(json_response(&state, status, &echo))
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
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
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

fn json_response(state: &State, status: StatusCode, value: &impl Serialize) -> Response<RespBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_identity(state, response.headers_mut());
    response
}

fn text_response(state: &State, status: StatusCode, text: String) -> Response<RespBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    add_identity(state, response.headers_mut());
    response
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
        assert!(Controls::parse(Some("status=abc")).is_err());
        assert!(Controls::parse(Some("fail=2")).is_err());
        assert!(Controls::parse(Some("delay=soon")).is_err());
    }
}
