//! The upstream connector: hyper-util's TCP connector wrapped so every open upstream
//! connection is counted in its cluster's gauge for as long as the socket lives.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use legate_telemetry::Gauge;
use tokio::net::TcpStream;

/// Connects to `http://ip:port` URIs (the proxy only ever dials resolved host addresses).
#[derive(Clone)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    open: Arc<Gauge>,
}

impl CountingConnector {
    pub(crate) fn new(connect_timeout: Duration, open: Arc<Gauge>) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_connect_timeout(Some(connect_timeout));
        inner.set_nodelay(true);
        inner.enforce_http(true);
        CountingConnector { inner, open }
    }
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = CountedIo;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<CountedIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let fut = self.inner.call(dst);
        let open = self.open.clone();
        Box::pin(async move {
            let io = fut.await?;
            Ok(CountedIo::new(io, open))
        })
    }
}

/// A connected upstream socket that decrements the open-connections gauge when dropped.
pub(crate) struct CountedIo {
    io: TokioIo<TcpStream>,
    open: Arc<Gauge>,
}

impl CountedIo {
    /// Count `io` as an open connection until it is dropped.
    pub(crate) fn new(io: TokioIo<TcpStream>, open: Arc<Gauge>) -> Self {
        open.inc();
        CountedIo { io, open }
    }
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
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
