//! The xDS listener's connections: TCP, or TLS accepted here with tokio-rustls, each carrying
//! what is known about its peer ([`XdsPeer`]) into tonic's request extensions.
//!
//! Handshakes run in their own tasks (a slow or silent client never holds up the accept loop),
//! bounded in number and in time. The server configuration is loaded from the
//! [`Current`] value once per connection, so certificate files rewritten on disk apply to the
//! next connection while open ones keep theirs. A handshake refused for a TLS reason (no
//! client certificate, one from an unknown CA, no common version) is logged with its cause and
//! recorded in the registry beside the refused streams.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use legate_tls::reload::Current;
use legate_tls::rustls::ServerConfig;
use legate_tls::tokio_rustls::TlsAcceptor;
use legate_tls::tokio_rustls::server::TlsStream;
use legate_tls::{CertInfo, HandshakeFailure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::registry::{NodeRegistry, Refusal, RefusalReason};

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 512;
/// Connections handed to tonic but not yet picked up.
const ACCEPTED_BUFFER: usize = 64;
/// After refusing a handshake, how long and how much the client may still send before the
/// socket is closed (see [`linger`]).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Who is on the other end of an xDS connection. tonic inserts it into every request's
/// extensions (it is the connection's [`Connected::ConnectInfo`]).
#[derive(Clone, Debug, Default)]
pub struct XdsPeer {
    pub remote: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate, verified against the client CA during the handshake.
    pub certificate: Option<Arc<CertInfo>>,
}

/// One accepted xDS connection.
pub struct XdsConn {
    io: Io,
    peer: XdsPeer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for XdsConn {
    type ConnectInfo = XdsPeer;

    fn connect_info(&self) -> XdsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for XdsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for XdsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, as tonic's `serve_with_incoming` takes them: TLS
/// when `tls` is given, plain TCP otherwise. The accept loop ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Current<Arc<ServerConfig>>>,
    registry: Arc<NodeRegistry>,
) -> ReceiverStream<Result<XdsConn, Infallible>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BUFFER);
    tokio::spawn(accept_loop(listener, tls, registry, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Current<Arc<ServerConfig>>>,
    registry: Arc<NodeRegistry>,
    tx: mpsc::Sender<Result<XdsConn, Infallible>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "xds accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            let conn = XdsConn {
                io: Io::Plain(stream),
                peer: XdsPeer {
                    remote: Some(remote),
                    tls: false,
                    certificate: None,
                },
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = TlsAcceptor::from(Arc::clone(&**tls.load()));
        let (tx, registry) = (tx.clone(), registry.clone());
        tokio::spawn(async move {
            let accept = acceptor.accept(stream).into_fallible();
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await;
            let stream = match result {
                Ok(Ok(stream)) => stream,
                Ok(Err((error, tcp))) => {
                    handshake_failed(&registry, remote, &error);
                    linger(tcp).await;
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %remote, "xds tls handshake timed out");
                    return;
                }
            };
            drop(permit);
            let certificate =
                legate_tls::config::peer_info(stream.get_ref().1.peer_certificates()).map(Arc::new);
            let conn = XdsConn {
                io: Io::Tls(Box::new(stream)),
                peer: XdsPeer {
                    remote: Some(remote),
                    tls: true,
                    certificate,
                },
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// Closes a connection whose handshake was refused so that the client reads the alert saying
/// why. With TLS 1.3 a client whose certificate is refused has already sent its first
/// requests; closing a socket with unread data resets it, and the reset can overtake the alert.
/// So: send FIN, then read and discard what the client still sends, bounded in bytes and time.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut seen = 0;
        while seen < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

fn handshake_failed(registry: &NodeRegistry, remote: SocketAddr, error: &io::Error) {
    let cause = HandshakeFailure::classify(error);
    if cause == HandshakeFailure::Io {
        // Closed or reset before finishing: port probes and health checks, not refusals.
        tracing::debug!(peer = %remote, %error, "xds connection closed during the tls handshake");
        return;
    }
    let message = format!(
        "tls handshake refused: {cause} ({}: {error})",
        cause.as_str()
    );
    tracing::warn!(peer = %remote, cause = cause.as_str(), %error, "xds tls handshake refused");
    registry.refused(Refusal {
        node_id: String::new(),
        node_cluster: String::new(),
        identity: None,
        peer: Some(remote),
        reason: RefusalReason::TlsHandshake,
        message,
    });
}
