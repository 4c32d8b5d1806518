//! Listener lifecycle: bind, accept, serve HTTP connections, and drain on stop.
//! Kept apart from routing: a listener knows only its name, socket and codec.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_snapshot::{Codec, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::service::{self, ConnCtx};
use crate::{ListenerView, Shared};

pub(crate) struct ListenerHandle {
    pub(crate) config: Arc<Listener>,
    pub(crate) local_addr: SocketAddr,
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
) -> ListenerHandle {
    let local_addr = socket.local_addr().unwrap_or(view.config.address);
    let (stop_tx, stop_rx) = watch::channel(None);
    let config = view.config.clone();
    let task = tokio::spawn(accept_loop(shared, view, socket, stop_rx));
    ListenerHandle {
        config,
        local_addr,
        stop: stop_tx,
        task,
    }
}

/// The HTTP server for a listener's codec. hyper-util's auto builder detects HTTP/2 by its
/// preface; a single-protocol listener uses hyper's own builder so the other protocol is
/// really refused (the auto builder's `*_only` settings do not apply with upgrades on).
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
                b.http1().timer(TokioTimer::new()).keep_alive(true);
                b.http2().timer(TokioTimer::new());
                Server::Auto(b)
            }
            Codec::Http1 => {
                let mut b = http1::Builder::new();
                b.timer(TokioTimer::new()).keep_alive(true);
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
    async fn serve(&self, stream: TcpStream, ctx: Arc<ConnCtx>, drain: watch::Receiver<bool>) {
        let peer = ctx.peer;
        let svc = service_fn(move |req| service::handle(ctx.clone(), req));
        let io = TokioIo::new(stream);
        let res = match self {
            Server::Auto(b) => {
                let conn = b.serve_connection_with_upgrades(io, svc);
                drive(conn, drain, |c| c.graceful_shutdown()).await
            }
            Server::Http1(b) => {
                let conn = b.serve_connection(io, svc).with_upgrades();
                drive(conn, drain, |c| c.graceful_shutdown()).await
            }
            Server::Http2(b) => {
                let conn = b.serve_connection(io, svc);
                drive(conn, drain, |c| c.graceful_shutdown()).await
            }
        };
        if let Err(error) = res {
            tracing::debug!(%error, %peer, "downstream connection ended with an error");
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn drive<C, E, F>(
    conn: C,
    mut drain: watch::Receiver<bool>,
    shutdown: F,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
    F: FnOnce(Pin<&mut C>),
{
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = async { let _ = drain.wait_for(|d| *d).await; } => {
            shutdown(conn.as_mut());
            conn.as_mut().await
        }
    };
    res.map_err(Into::into)
}

async fn accept_loop(
    shared: Arc<Shared>,
    view: Arc<ListenerView>,
    socket: TcpListener,
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
                let ctx = Arc::new(ConnCtx { shared: shared.clone(), listener: view.clone(), peer });
                let server = server.clone();
                let gauge = active_gauge.clone();
                let conn_tx = conn_tx.clone();
                let drain_rx = drain_rx.clone();
                tokio::spawn(async move {
                    let _alive = conn_tx;
                    gauge.inc();
                    server.serve(stream, ctx, drain_rx).await;
                    gauge.dec();
                });
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
