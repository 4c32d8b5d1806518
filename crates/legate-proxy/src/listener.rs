//! Listener lifecycle: bind, accept, terminate TLS when the listener has it, serve HTTP
//! connections, and drain on stop. Kept apart from routing: a listener knows only its name,
//! socket, codec and TLS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::task::AtomicWaker;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_snapshot::{Codec, Listener};
use legate_telemetry::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::service::{self, ConnCtx};
use crate::tls::downstream::ListenerTlsRuntime;
use crate::{ListenerView, Shared};

pub(crate) struct ListenerHandle {
    pub(crate) config: Arc<Listener>,
    /// What the listener's connections fall back to when the live configuration no longer
    /// has this listener (it is draining): kept current while it is live, so a connection
    /// never pins an old view (and with it, say, an access log file no longer named).
    pub(crate) view: Arc<ArcSwap<ListenerView>>,
    pub(crate) local_addr: SocketAddr,
    /// TLS for the next connections accepted; `None`: plaintext.
    pub(crate) tls: Arc<ArcSwapOption<ListenerTlsRuntime>>,
    /// The listening socket, handed to a replacement listener on the same address (a new
    /// codec) instead of binding a second socket to the port.
    pub(crate) socket: Arc<TcpListener>,
    /// Connections open on this listener and its current limit.
    pub(crate) limit: Arc<ConnLimit>,
    phase: Arc<watch::Sender<Phase>>,
    task: JoinHandle<()>,
}

/// Where a listener is in its life; its connections watch it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// The process is shutting down but still accepts connections: HTTP/1.1 answers carry
    /// `Connection: close`, HTTP/2 connections get a GOAWAY.
    Draining,
    /// Not accepting any more: every connection is shut down gracefully and has at most this
    /// long to finish.
    Stopping(Duration),
    /// The drain time is up: the connections still open are closed.
    Closed,
}

impl ListenerHandle {
    /// Keep accepting, but tell clients to go away (process drain, [`Phase::Draining`]).
    pub(crate) fn drain(&self) {
        self.phase.send_if_modified(|p| {
            let serving = *p == Phase::Serving;
            if serving {
                *p = Phase::Draining;
            }
            serving
        });
    }

    /// Stop accepting and drain connections for at most `drain`, then close what is left;
    /// the returned handle completes when the last connection is gone.
    pub(crate) fn stop(self, drain: Duration) -> JoinHandle<()> {
        let _ = self.phase.send(Phase::Stopping(drain));
        self.task
    }
}

/// Open connections and their limit, for one listener or for the whole process.
#[derive(Debug)]
pub(crate) struct ConnLimit {
    open: AtomicU64,
    /// 0: no limit.
    max: AtomicU64,
}

impl ConnLimit {
    pub(crate) fn new(max: Option<u64>) -> Self {
        ConnLimit {
            open: AtomicU64::new(0),
            max: AtomicU64::new(max.unwrap_or(0)),
        }
    }

    pub(crate) fn set_max(&self, max: Option<u64>) {
        self.max.store(max.unwrap_or(0), Ordering::Relaxed);
    }

    /// Take a slot unless the limit is reached.
    fn try_acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        let max = self.max.load(Ordering::Relaxed);
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n.saturating_add(1))
            })
            .is_ok();
        taken.then(|| ConnSlot(self.clone()))
    }
}

/// A connection counted against a [`ConnLimit`] until dropped.
struct ConnSlot(Arc<ConnLimit>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bind a listening socket. `SO_REUSEADDR` lets a restart rebind over connections in
/// TIME_WAIT; `SO_REUSEPORT` is never set, so a port that another socket (another legate
/// process, another node on the host) already listens on fails to bind instead of being
/// shared silently with the kernel splitting connections between the two. A listener
/// re-created on its own address takes over the old socket ([`ListenerHandle::socket`]).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    view: Arc<ListenerView>,
    socket: Arc<TcpListener>,
    tls: Option<Arc<ListenerTlsRuntime>>,
    draining: bool,
) -> ListenerHandle {
    let local_addr = socket.local_addr().unwrap_or(view.config.address);
    let phase = Arc::new(watch::Sender::new(if draining {
        Phase::Draining
    } else {
        Phase::Serving
    }));
    let config = view.config.clone();
    let view = Arc::new(ArcSwap::new(view));
    let tls = Arc::new(ArcSwapOption::new(tls));
    let limit = Arc::new(ConnLimit::new(config.max_connections));
    let task = tokio::spawn(accept_loop(
        shared,
        view.clone(),
        socket.clone(),
        tls.clone(),
        limit.clone(),
        phase.clone(),
    ));
    ListenerHandle {
        config,
        view,
        local_addr,
        tls,
        socket,
        limit,
        phase,
        task,
    }
}

/// Limits of hyper's servers, set explicitly rather than left to hyper's defaults (which
/// differ between versions). See `resilience/FIELDS.md` ("Downstream limits").
mod limits {
    use std::time::Duration;

    /// HTTP/1.1: the read buffer, so the most a request line and headers may take. Larger
    /// heads are answered 431. Envoy's `max_request_headers_kb` default is 60 KiB.
    pub(super) const H1_MAX_BUF: usize = 64 << 10;
    /// HTTP/1.1: headers per request (Envoy's `max_request_headers_count` default); more are
    /// answered 431.
    pub(super) const H1_MAX_HEADERS: usize = 100;
    /// HTTP/2: streams a client may have open at once on one connection.
    pub(super) const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
    /// HTTP/2: the decoded size of one header block (HEADERS plus CONTINUATION frames);
    /// larger blocks are refused, which also bounds CONTINUATION floods.
    pub(super) const H2_MAX_HEADER_LIST: u32 = 64 << 10;
    /// HTTP/2: streams the client reset before legate accepted them, pending at once; more
    /// ends the connection with ENHANCE_YOUR_CALM (the "rapid reset" attack, CVE-2023-44487).
    pub(super) const H2_MAX_PENDING_ACCEPT_RESET: usize = 20;
    /// HTTP/2: streams legate itself reset because the client broke the protocol; more ends
    /// the connection (CVE-2019-9514-style floods).
    pub(super) const H2_MAX_LOCAL_ERROR_RESET: usize = 1024;
    /// HTTP/2: the largest frame legate accepts (the protocol's minimum, hyper's default).
    pub(super) const H2_MAX_FRAME: u32 = 16 << 10;
    /// HTTP/2: bytes queued for sending per stream.
    pub(super) const H2_MAX_SEND_BUF: usize = 400 << 10;
    /// HTTP/2 keep-alive pings are off, as Envoy's `connection_keepalive` is by default; a
    /// dead peer is found by the idle timeout or by TCP.
    pub(super) const H2_KEEP_ALIVE: Option<Duration> = None;
}

/// The HTTP server for a listener's codec. hyper-util's auto builder detects HTTP/2 by its
/// preface; a single-protocol listener uses hyper's own builder so the other protocol is
/// really refused (the auto builder's `*_only` settings do not apply with upgrades on).
///
/// hyper's HTTP/1 header-read timeout is off: it would also close keep-alive connections
/// idle for that long. legate applies HCM `request_headers_timeout` itself, from the first
/// byte of a request to its last header as Envoy does ([`HeadTimer`]); a connection that
/// sends nothing is closed by the HCM `idle_timeout`, watched once per connection
/// ([`drive`]).
#[derive(Clone)]
enum Server {
    Auto(auto::Builder<TokioExecutor>),
    Http1(http1::Builder),
    Http2(http2::Builder<TokioExecutor>),
}

/// The HTTP/1.1 settings of every listener, for hyper's own builder and the one inside the
/// auto builder (two types with the same methods).
macro_rules! configure_h1 {
    ($b:expr) => {
        $b.timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(None)
            .max_buf_size(limits::H1_MAX_BUF)
            .max_headers(limits::H1_MAX_HEADERS)
    };
}

/// The HTTP/2 settings of every listener, as `configure_h1!` is for HTTP/1.1.
macro_rules! configure_h2 {
    ($b:expr) => {
        $b.timer(TokioTimer::new())
            .max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(limits::H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(limits::H2_MAX_PENDING_ACCEPT_RESET)
            .max_local_error_reset_streams(limits::H2_MAX_LOCAL_ERROR_RESET)
            .max_frame_size(limits::H2_MAX_FRAME)
            .max_send_buf_size(limits::H2_MAX_SEND_BUF)
            .keep_alive_interval(limits::H2_KEEP_ALIVE)
    };
}

impl Server {
    fn new(codec: Codec) -> Self {
        match codec {
            Codec::Auto => {
                let mut b = auto::Builder::new(TokioExecutor::new());
                configure_h1!(b.http1());
                configure_h2!(b.http2());
                Server::Auto(b)
            }
            Codec::Http1 => {
                let mut b = http1::Builder::new();
                configure_h1!(b);
                Server::Http1(b)
            }
            Codec::Http2 => {
                let mut b = http2::Builder::new(TokioExecutor::new());
                configure_h2!(b);
                Server::Http2(b)
            }
        }
    }

    /// Serve one connection until it ends, following the listener's [`Phase`]. Generic over
    /// the stream: a TLS connection and a plaintext one run the same code, each compiled for
    /// its own stream type.
    async fn serve<I>(
        &self,
        stream: I,
        ctx: Arc<ConnCtx>,
        phase: watch::Receiver<Phase>,
        head_timeouts: &Counter,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = ctx.peer;
        let limits = {
            let view = ctx.listener.load();
            ConnLimits {
                idle: view.config.idle_timeout.filter(|d| !d.is_zero()),
                head: view.config.request_headers_timeout.filter(|d| !d.is_zero()),
            }
        };
        let activity = ctx.activity.clone();
        let svc = {
            let ctx = ctx.clone();
            service_fn(move |req: Request<Incoming>| respond(ctx.clone(), req))
        };
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let res = match self {
            Server::Auto(b) => {
                let conn = b.serve_connection_with_upgrades(io, svc);
                drive(conn, phase, &activity, limits, |c| c.graceful_shutdown()).await
            }
            Server::Http1(b) => {
                let conn = b.serve_connection(io, svc).with_upgrades();
                drive(conn, phase, &activity, limits, |c| c.graceful_shutdown()).await
            }
            Server::Http2(b) => {
                let conn = b.serve_connection(io, svc);
                drive(conn, phase, &activity, limits, |c| c.graceful_shutdown()).await
            }
        };
        match res {
            Ok(()) => {}
            Err(Ended::HeadTimeout) => {
                head_timeouts.inc();
                tracing::debug!(%peer, "request headers did not arrive in time: closing");
            }
            Err(Ended::Error(error)) => {
                tracing::debug!(%error, %peer, "downstream connection ended with an error");
            }
        }
    }
}

/// The request path, plus what a drain adds to each answer: `Connection: close` on
/// HTTP/1.x (hyper then closes the connection after it), a GOAWAY on HTTP/2.
async fn respond(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<crate::ResponseBody>, Infallible> {
    let h1 = req.version() < Version::HTTP_2;
    let mut res = service::handle(ctx.clone(), req).await?;
    if ctx.shared.draining.load(Ordering::Relaxed) {
        if !h1 {
            ctx.activity.request_shutdown();
        } else if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    Ok(res)
}

/// How a connection ended, when not cleanly.
enum Ended {
    /// A request's headers took longer than `request_headers_timeout`.
    HeadTimeout,
    Error(BoxError),
}

/// A connection's own time bounds.
#[derive(Clone, Copy)]
struct ConnLimits {
    /// HCM `idle_timeout`.
    idle: Option<Duration>,
    /// HCM `request_headers_timeout`.
    head: Option<Duration>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests on one downstream connection, for its idle and request-headers timeouts: counted
/// without a clock, so the request path pays a few atomic operations. A separate task looks
/// at the counts now and then ([`watch_idle`]); the connection's own task only checks flags.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Requests started on the connection.
    started: AtomicU64,
    /// Requests whose response has not ended yet.
    open: AtomicU32,
    /// Set once the connection should shut down gracefully: idle for the timeout, or an
    /// HTTP/2 request seen while the process drains.
    shutdown: AtomicBool,
    waker: AtomicWaker,
    /// When the first byte of a request head arrived, in milliseconds since `epoch` plus
    /// one; 0 while no request head is being read.
    head_since: AtomicU64,
    /// The connection began with the HTTP/2 preface: request heads arrive as whole header
    /// blocks, bounded by the h2 limits, so the request-headers timer is not armed.
    h2: AtomicBool,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: AtomicU64::new(0),
            open: AtomicU32::new(0),
            shutdown: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    /// A request starts (its head is complete); it counts as open until the guard is dropped
    /// (with its response body, or at once for a local reply).
    pub(crate) fn begin(self: &Arc<Self>) -> OpenRequest {
        self.head_since.store(0, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// Ask the connection's task to shut the connection down gracefully.
    fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Bytes arrived: a request head starts if none is open or being read.
    fn bytes_read(&self) {
        if self.head_since.load(Ordering::Relaxed) == 0
            && self.open.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.head_since.store(ms + 1, Ordering::Relaxed);
        }
    }

    /// The deadline of the request head being read, if one is.
    fn head_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.epoch + Duration::from_millis(since - 1) + timeout),
        }
    }
}

/// One open request on a downstream connection (see [`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The downstream stream as hyper reads it: tells [`Activity`] when bytes arrive, which
/// starts the request-headers timer, and whether the connection speaks HTTP/2.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Bytes of [`H2_PREFACE`] matched so far; `None` once decided.
    preface: Option<usize>,
}

impl<I> Watched<I> {
    fn new(inner: I, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            activity,
            preface: Some(0),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if let Some(matched) = self.preface {
            let want = &H2_PREFACE[matched..];
            let n = want.len().min(bytes.len());
            if bytes[..n] != want[..n] {
                self.preface = None;
            } else if matched + n == H2_PREFACE.len() {
                self.preface = None;
                self.activity.h2.store(true, Ordering::Relaxed);
                self.activity.head_since.store(0, Ordering::Relaxed);
                return;
            } else {
                self.preface = Some(matched + n);
            }
        }
        self.activity.bytes_read();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let new = &buf.filled()[before..];
            self.saw(new);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How many consecutive quiet checks make a connection idle: it is closed between
/// `idle_timeout` and 1.25 x `idle_timeout` after its last request ended.
const IDLE_CHECKS: u32 = 4;

/// Check `activity` every quarter of `timeout`; ask for a shutdown after [`IDLE_CHECKS`]
/// checks in a row with no request open and none started.
fn watch_idle(activity: Arc<Activity>, timeout: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = (timeout / IDLE_CHECKS).max(Duration::from_millis(1));
        let mut last = u64::MAX;
        let mut quiet = 0;
        loop {
            tokio::time::sleep(period).await;
            let started = activity.started.load(Ordering::Relaxed);
            if activity.open.load(Ordering::Relaxed) == 0 && started == last {
                quiet += 1;
                if quiet >= IDLE_CHECKS {
                    tracing::debug!("closing an idle downstream connection");
                    activity.request_shutdown();
                    return;
                }
            } else {
                quiet = 0;
            }
            last = started;
        }
    })
}

/// Resolves once a shutdown is requested ([`Activity::request_shutdown`]); polling it is a
/// load and a waker comparison, cheap enough to sit beside the connection on every wake-up.
struct ShutdownFlag<'a>(&'a Activity);

impl Future for ShutdownFlag<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.shutdown.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        if self.0.shutdown.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Resolves when a request head has been arriving for longer than the timeout. The timer
/// is armed lazily: a request costs a clock read when its first byte arrives; the timer
/// fires at most once per timeout and then looks again at the head being read.
///
/// Arming happens while hyper reads in this same task, just before this future is polled,
/// so it needs no waker of its own while no head is being read.
struct HeadTimer<'a> {
    activity: &'a Activity,
    timeout: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadTimer<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        loop {
            let Some(deadline) = self.activity.head_deadline(timeout) else {
                return Poll::Pending;
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            // A timer left from an earlier head fires early; the check below re-arms it.
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: is the head still being read, and since when?
            match self.activity.head_deadline(timeout) {
                None => {
                    self.sleep = None;
                    return Poll::Pending;
                }
                Some(d) if d <= Instant::now() => return Poll::Ready(()),
                Some(d) => {
                    if let Some(s) = self.sleep.as_mut() {
                        s.as_mut().reset(d);
                    }
                }
            }
        }
    }
}

/// Drive a connection to its end. It shuts down gracefully when the listener stops, when
/// the process drains and the connection speaks HTTP/2 (a GOAWAY; HTTP/1.1 answers carry
/// `Connection: close` instead, see [`respond`]), or when no request was open or started
/// for the idle timeout. It is closed outright when a request head takes longer than the
/// request-headers timeout, or when the listener's drain time is up.
async fn drive<C, E, F>(
    conn: C,
    mut phase: watch::Receiver<Phase>,
    activity: &Arc<Activity>,
    limits: ConnLimits,
    shutdown: F,
) -> Result<(), Ended>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
    F: Fn(Pin<&mut C>),
{
    tokio::pin!(conn);
    let watcher = limits
        .idle
        .map(|timeout| watch_idle(activity.clone(), timeout));
    let mut head = HeadTimer {
        activity,
        timeout: limits.head,
        sleep: None,
    };
    let mut shut = false;
    let mut phase_open = true;
    let res = loop {
        let now = *phase.borrow_and_update();
        match now {
            Phase::Closed => break Ok(()),
            Phase::Stopping(_) if !shut => {
                shutdown(conn.as_mut());
                shut = true;
            }
            Phase::Draining if !shut && activity.h2.load(Ordering::Relaxed) => {
                shutdown(conn.as_mut());
                shut = true;
            }
            _ => {}
        }
        tokio::select! {
            biased;
            res = conn.as_mut() => break res.map_err(|e| Ended::Error(e.into())),
            changed = phase.changed(), if phase_open => {
                if changed.is_err() {
                    phase_open = false;
                }
            }
            () = ShutdownFlag(activity), if !shut => {
                shutdown(conn.as_mut());
                shut = true;
            }
            () = &mut head => break Err(Ended::HeadTimeout),
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    res
}

/// How long the listener waits for its connections to go once it closed them.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

async fn accept_loop(
    shared: Arc<Shared>,
    view: Arc<ArcSwap<ListenerView>>,
    socket: Arc<TcpListener>,
    tls: Arc<ArcSwapOption<ListenerTlsRuntime>>,
    limit: Arc<ConnLimit>,
    phase_tx: Arc<watch::Sender<Phase>>,
) {
    let mut phase = phase_tx.subscribe();
    // Name, codec and address never change for a listener (a change re-creates it).
    let (name, codec, address) = {
        let v = view.load();
        (v.config.name.clone(), v.config.codec, v.config.address)
    };
    let server = Arc::new(Server::new(codec));
    let local = socket.local_addr().unwrap_or(address);
    let m = &shared.metrics;
    let active_gauge = m.downstream_connections_active.get_or_create(&[&name]);
    let accepted = m.downstream_connections_total.get_or_create(&[&name]);
    let refused_listener = m
        .downstream_connections_refused
        .get_or_create(&[&name, "listener_limit"]);
    let refused_global = m
        .downstream_connections_refused
        .get_or_create(&[&name, "global_limit"]);
    let head_timeouts = m
        .downstream_request_headers_timeouts
        .get_or_create(&[&name]);
    // Every connection task holds a sender; when all are gone, the drain is complete.
    let (conn_tx, mut conn_rx) = mpsc::channel::<()>(1);
    let drain_for = loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break Duration::ZERO;
                }
                if let Phase::Stopping(d) = *phase.borrow() {
                    break d;
                }
            }
            accepted_conn = socket.accept() => {
                let (stream, peer) = match accepted_conn {
                    Ok(a) => a,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(listener = %name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over a limit the connection is closed at once (dropped), and counted.
                let Some(global_slot) = shared.connections.try_acquire() else {
                    refused_global.inc();
                    tracing::debug!(listener = %name, %peer, "connection refused: global connection limit");
                    continue;
                };
                let Some(listener_slot) = limit.try_acquire() else {
                    refused_listener.inc();
                    tracing::debug!(listener = %name, %peer, "connection refused: listener connection limit");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                accepted.inc();
                let tls = tls.load_full();
                let ctx = Arc::new(ConnCtx {
                    shared: shared.clone(),
                    listener: view.clone(),
                    peer,
                    local,
                    peer_ip: crate::headers::peer_value(peer.ip()),
                    activity: Arc::default(),
                    tls: tls.is_some(),
                    retry_buffers: shared.connection_retry_buffers(),
                });
                let server = server.clone();
                let gauge = active_gauge.clone();
                let conn_tx = conn_tx.clone();
                let conn_phase = phase_tx.subscribe();
                let head_timeouts = head_timeouts.clone();
                tokio::spawn(async move {
                    let _alive = (conn_tx, global_slot, listener_slot);
                    gauge.inc();
                    match tls {
                        None => server.serve(stream, ctx, conn_phase, &head_timeouts).await,
                        // The handshake runs in the connection's task: a slow client never
                        // holds up the accept loop.
                        Some(tls) => {
                            if let Some(stream) = tls.accept(stream).await {
                                server.serve(stream, ctx, conn_phase, &head_timeouts).await;
                            }
                        }
                    }
                    gauge.dec();
                });
            }
        }
    };
    // Stop accepting: this loop's hold on the socket goes (it closes unless a replacement
    // listener on the same address took it over), so new connections are refused.
    drop(socket);
    drop(conn_tx);
    if tokio::time::timeout(drain_for, conn_rx.recv())
        .await
        .is_err()
    {
        tracing::info!(listener = %name, "drain time is up: closing the connections still open");
        let _ = phase_tx.send(Phase::Closed);
        let _ = tokio::time::timeout(CLOSE_WAIT, conn_rx.recv()).await;
    }
}
