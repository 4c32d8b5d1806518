//! Listener lifecycle: bind, accept, terminate TLS when the listener has it, serve HTTP
//! connections, and drain on stop. Kept apart from routing: a listener knows only its name,
//! socket, codec and TLS.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::task::AtomicWaker;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_snapshot::{Codec, Listener};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::service::{self, ConnCtx};
use crate::tls::downstream::ListenerTlsRuntime;
use crate::{ListenerView, Shared};

pub(crate) struct ListenerHandle {
    pub(crate) config: Arc<Listener>,
    pub(crate) local_addr: SocketAddr,
    /// TLS for the next connections accepted; `None`: plaintext.
    pub(crate) tls: Arc<ArcSwapOption<ListenerTlsRuntime>>,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stop accepting and drain connections for at most `drain`; the returned handle
    /// completes when the last connection is gone or the drain time is up.
    pub(crate) fn stop(self, drain: Duration) -> JoinHandle<()> {
        let _ = self.stop.send(Some(drain));
        self.task
    }
}

/// Bind a listening socket. Address reuse lets a restart rebind at once; port reuse lets a
/// listener be re-created on the same address (new codec) while the old socket drains.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if addr.port() != 0 {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    view: Arc<ListenerView>,
    socket: TcpListener,
    tls: Option<Arc<ListenerTlsRuntime>>,
) -> ListenerHandle {
    let local_addr = socket.local_addr().unwrap_or(view.config.address);
    let (stop_tx, stop_rx) = watch::channel(None);
    let config = view.config.clone();
    let tls = Arc::new(ArcSwapOption::new(tls));
    let task = tokio::spawn(accept_loop(shared, view, socket, tls.clone(), stop_rx));
    ListenerHandle {
        config,
        local_addr,
        tls,
        stop: stop_tx,
        task,
    }
}

/// The HTTP server for a listener's codec. hyper-util's auto builder detects HTTP/2 by its
/// preface; a single-protocol listener uses hyper's own builder so the other protocol is
/// really refused (the auto builder's `*_only` settings do not apply with upgrades on).
///
/// hyper's HTTP/1 header-read timeout is off: it arms and clears a timer on every request.
/// As in Envoy (whose `request_headers_timeout` is off by default), a connection that sends
/// nothing is closed by the HCM `idle_timeout` instead, watched once per connection
/// ([`drive`]).
#[derive(Clone)]
enum Server {
    Auto(auto::Builder<TokioExecutor>),
    Http1(http1::Builder),
    Http2(http2::Builder<TokioExecutor>),
}

impl Server {
    fn new(codec: Codec) -> Self {
        match codec {
            Codec::Auto => {
                let mut b = auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .keep_alive(true)
                    .header_read_timeout(None);
                b.http2().timer(TokioTimer::new());
                Server::Auto(b)
            }
            Codec::Http1 => {
                let mut b = http1::Builder::new();
                b.timer(TokioTimer::new())
                    .keep_alive(true)
                    .header_read_timeout(None);
                Server::Http1(b)
            }
            Codec::Http2 => {
                let mut b = http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new());
                Server::Http2(b)
            }
        }
    }

    /// Serve one connection until it ends, shutting it down gracefully once `drain` flips.
    /// Generic over the stream: a TLS connection and a plaintext one run the same code, each
    /// compiled for its own stream type.
    async fn serve<I>(&self, stream: I, ctx: Arc<ConnCtx>, drain: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = ctx.peer;
        let idle = ctx
            .listener
            .config
            .idle_timeout
            .filter(|d| !d.is_zero())
            .map(|d| (d, ctx.activity.clone()));
        let svc = service_fn(move |req| service::handle(ctx.clone(), req));
        let io = TokioIo::new(stream);
        let res = match self {
            Server::Auto(b) => {
                let conn = b.serve_connection_with_upgrades(io, svc);
                drive(conn, drain, idle, |c| c.graceful_shutdown()).await
            }
            Server::Http1(b) => {
                let conn = b.serve_connection(io, svc).with_upgrades();
                drive(conn, drain, idle, |c| c.graceful_shutdown()).await
            }
            Server::Http2(b) => {
                let conn = b.serve_connection(io, svc);
                drive(conn, drain, idle, |c| c.graceful_shutdown()).await
            }
        };
        if let Err(error) = res {
            tracing::debug!(%error, %peer, "downstream connection ended with an error");
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests on one downstream connection, for its idle timeout: counted without a clock,
/// so the request path pays two atomic increments and a decrement. A separate task looks at
/// the counts now and then ([`watch_idle`]); the connection's own task only checks a flag.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests started on the connection.
    started: AtomicU64,
    /// Requests whose response has not ended yet.
    open: AtomicU32,
    /// Set by the watcher once the connection has been idle for the timeout.
    idle: AtomicBool,
    waker: AtomicWaker,
}

impl Activity {
    /// A request starts; it counts as open until the guard is dropped (with its response
    /// body, or at once for a local reply).
    pub(crate) fn begin(self: &Arc<Self>) -> OpenRequest {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
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

/// How many consecutive quiet checks make a connection idle: it is closed between
/// `idle_timeout` and 1.25 x `idle_timeout` after its last request ended.
const IDLE_CHECKS: u32 = 4;

/// Check `activity` every quarter of `timeout`; flag it idle after [`IDLE_CHECKS`] checks in
/// a row with no request open and none started.
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
                    activity.idle.store(true, Ordering::Release);
                    activity.waker.wake();
                    return;
                }
            } else {
                quiet = 0;
            }
            last = started;
        }
    })
}

/// Resolves once the watcher flags the connection idle; polling it is a load and a waker
/// comparison, cheap enough to sit beside the connection on every wake-up.
struct IdleFlag<'a>(Option<&'a Activity>);

impl Future for IdleFlag<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(activity) = self.0 else {
            return Poll::Pending;
        };
        if activity.idle.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        activity.waker.register(cx.waker());
        if activity.idle.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Drive a connection to its end. It shuts down gracefully when the listener drains, or when
/// `idle` is set and no request was open or started for that long (HCM `idle_timeout`;
/// HTTP/2 peers get a GOAWAY).
async fn drive<C, E, F>(
    conn: C,
    mut drain: watch::Receiver<bool>,
    idle: Option<(Duration, Arc<Activity>)>,
    shutdown: F,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
    F: FnOnce(Pin<&mut C>),
{
    tokio::pin!(conn);
    let watcher = idle
        .as_ref()
        .map(|(timeout, activity)| watch_idle(activity.clone(), *timeout));
    let res = tokio::select! {
        biased;
        res = conn.as_mut() => res,
        () = async { let _ = drain.wait_for(|d| *d).await; } => {
            shutdown(conn.as_mut());
            conn.as_mut().await
        }
        () = IdleFlag(idle.as_ref().map(|(_, a)| &**a)) => {
            tracing::debug!("closing an idle downstream connection");
            shutdown(conn.as_mut());
            conn.as_mut().await
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    res.map_err(Into::into)
}

async fn accept_loop(
    shared: Arc<Shared>,
    view: Arc<ListenerView>,
    socket: TcpListener,
    tls: Arc<ArcSwapOption<ListenerTlsRuntime>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let name = view.config.name.clone();
    let server = Arc::new(Server::new(view.config.codec));
    let active_gauge = shared
        .metrics
        .downstream_connections_active
        .get_or_create(&[&name]);
    let accepted = shared
        .metrics
        .downstream_connections_total
        .get_or_create(&[&name]);
    // Every connection task holds a sender; when all are gone, the drain is complete.
    let (conn_tx, mut conn_rx) = mpsc::channel::<()>(1);
    let (drain_tx, drain_rx) = watch::channel(false);
    let drain_for = loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break Duration::ZERO;
                }
                if let Some(d) = *stop.borrow() {
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
                let _ = stream.set_nodelay(true);
                accepted.inc();
                let tls = tls.load_full();
                let ctx = Arc::new(ConnCtx {
                    shared: shared.clone(),
                    listener: view.clone(),
                    peer,
                    peer_ip: crate::headers::peer_value(peer.ip()),
                    activity: Arc::default(),
                    tls: tls.is_some(),
                    retry_buffers: shared.connection_retry_buffers(),
                });
                let server = server.clone();
                let gauge = active_gauge.clone();
                let conn_tx = conn_tx.clone();
                let drain_rx = drain_rx.clone();
                match tls {
                    None => {
                        tokio::spawn(async move {
                            let _alive = conn_tx;
                            gauge.inc();
                            server.serve(stream, ctx, drain_rx).await;
                            gauge.dec();
                        });
                    }
                    // The handshake runs in the connection's task: a slow client never holds
                    // up the accept loop.
                    Some(tls) => {
                        tokio::spawn(async move {
                            let _alive = conn_tx;
                            gauge.inc();
                            if let Some(stream) = tls.accept(stream).await {
                                server.serve(stream, ctx, drain_rx).await;
                            }
                            gauge.dec();
                        });
                    }
                }
            }
        }
    };
    // Stop accepting: the socket closes here, so new connections are refused.
    drop(socket);
    let _ = drain_tx.send(true);
    drop(conn_tx);
    if tokio::time::timeout(drain_for, conn_rx.recv())
        .await
        .is_err()
    {
        tracing::info!(listener = %name, "drain timeout reached with connections still open");
    }
}
