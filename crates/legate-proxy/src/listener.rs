//! Listener lifecycle: bind, accept, serve HTTP connections, and drain on stop.
//! Kept apart from routing: a listener knows only its name, socket and codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_snapshot::{Codec, Listener};
use tokio::net::TcpListener;
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

/// Bind a listening socket (address reuse on, so a restart rebinds at once).
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

fn builder(codec: Codec) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).keep_alive(true);
    b.http2().timer(TokioTimer::new());
    match codec {
        Codec::Auto => b,
        Codec::Http1 => b.http1_only(),
        Codec::Http2 => b.http2_only(),
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    view: Arc<ListenerView>,
    socket: TcpListener,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let name = view.config.name.clone();
    let builder = Arc::new(builder(view.config.codec));
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
                let builder = builder.clone();
                let gauge = active_gauge.clone();
                let conn_tx = conn_tx.clone();
                let mut drain_rx = drain_rx.clone();
                tokio::spawn(async move {
                    let _alive = conn_tx;
                    gauge.inc();
                    let svc = service_fn(move |req| service::handle(ctx.clone(), req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    let res = tokio::select! {
                        res = conn.as_mut() => res,
                        () = async { let _ = drain_rx.wait_for(|d| *d).await; } => {
                            conn.as_mut().graceful_shutdown();
                            conn.as_mut().await
                        }
                    };
                    if let Err(error) = res {
                        tracing::debug!(%error, %peer, "downstream connection ended with an error");
                    }
                    gauge.dec();
                });
            }
        }
    };
    // Stop accepting: the socket closes here, so new connections are refused.
    drop(socket);
    let _ = drain_tx.send(true);
    drop(conn_tx);
    if tokio::time::timeout(drain_for, conn_rx.recv()).await.is_err() {
        tracing::info!(listener = %name, "drain timeout reached with connections still open");
    }
}
