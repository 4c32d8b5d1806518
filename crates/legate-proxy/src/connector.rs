//! Dialling upstream hosts: a TCP connect bounded by the cluster's `connect_timeout` (a TLS
//! handshake, when the cluster has one, follows in `tls::upstream` within the same bound),
//! and the socket wrapper that counts every open upstream connection in its cluster's gauge
//! for as long as the socket lives.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use legate_telemetry::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::ProxyError;

/// Open a TCP connection to `addr` with `TCP_NODELAY` set. A refused or unreachable host is
/// a [`ProxyError::ConnectFailure`]; no answer within `timeout`, a
/// [`ProxyError::ConnectTimeout`].
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Requests are written whole; Nagle would only add latency.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, %addr, "upstream connect failed");
            Err(ProxyError::ConnectFailure)
        }
        Err(_) => {
            tracing::debug!(%addr, ?timeout, "upstream connect timed out");
            Err(ProxyError::ConnectTimeout)
        }
    }
}

/// A connected upstream socket (TCP, or TLS over TCP) that decrements the open-connections
/// gauge when dropped.
///
/// `held` lives exactly as long as the socket (through an HTTP/1 upgrade too): the pool
/// keeps its per-connection bookkeeping there (circuit-breaker slot, per-host count), so
/// the connection is accounted for until the file descriptor is really closed. Generic over
/// the stream, so the cleartext path is the same code as before TLS existed.
pub(crate) struct CountedIo<I, H> {
    // Declared first so the socket is closed before `held` is released.
    io: TokioIo<I>,
    open: Arc<Gauge>,
    _held: H,
}

impl<I, H> CountedIo<I, H> {
    /// Count `stream` as an open connection and keep `held` until it is dropped.
    pub(crate) fn with_held(stream: I, open: Arc<Gauge>, held: H) -> Self {
        open.inc();
        CountedIo {
            io: TokioIo::new(stream),
            open,
            _held: held,
        }
    }
}

impl<I, H> Drop for CountedIo<I, H> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

// `H` is only held, never pinned through: the wrapper is `Unpin` whenever the stream is.
impl<I: Unpin, H> Unpin for CountedIo<I, H> {}

impl<I: AsyncRead + AsyncWrite + Unpin, H> Read for CountedIo<I, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin, H> Write for CountedIo<I, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
