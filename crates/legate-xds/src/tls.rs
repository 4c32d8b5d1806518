//! Dialling `https://` control planes: TCP, then TLS with tokio-rustls, offering ALPN `h2`,
//! handed to tonic through `Endpoint::connect_with_connector`.
//!
//! The client configuration (trusted CA, client certificate for mTLS) comes from files kept
//! current by `legate_tls::files::ClientFiles::watch`, loaded once per connection: rotated
//! files apply at the next reconnect. The server's certificate is verified against the CA
//! and the URL's host, or `server_name` when set (for a control plane reached by an address
//! its certificate does not name).
//!
//! tonic is built without its own TLS, so it passes `https` URIs to this connector untouched;
//! the scheme still tells the server (`:scheme`) that the stream is encrypted.
//!
//! With TLS 1.3 a server that refuses our client certificate says so with an alert after our
//! side of the handshake is complete, on the first read; hyper then reports only "connection
//! closed". So each connection's stream records the first TLS error it sees, and
//! [`TlsConnector::take_failure`] gives it to whoever explains the failure.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use legate_tls::files::ClientFiles;
use legate_tls::pki_types::ServerName;
use legate_tls::reload::Current;
use legate_tls::rustls::ClientConfig;
use legate_tls::tokio_rustls::client::TlsStream;
use legate_tls::{HandshakeFailure, TlsError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Longest a TCP connect plus TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How `https://` control planes are dialled: the settings from flags or the bootstrap.
#[derive(Clone, Debug)]
pub struct XdsTls {
    pub files: ClientFiles,
    /// Verify the server's certificate against this name (and send it as SNI) instead of the
    /// URL's host.
    pub server_name: Option<String>,
}

/// Why dialling a control plane failed, before gRPC.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the URL '{0}' names no host")]
    NoHost(String),
    #[error("'{0}' is not a valid TLS server name")]
    ServerName(String),
    #[error("tcp connect to {addr} failed: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("tcp connect to {addr} timed out")]
    Timeout { addr: String },
    #[error("tls handshake with {addr} (server name '{server_name}') failed: {cause} [{}]: {source}", cause.as_str())]
    Tls {
        addr: String,
        server_name: String,
        cause: HandshakeFailure,
        source: io::Error,
    },
}

/// A TLS error seen on an established connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFailure {
    pub cause: HandshakeFailure,
    /// The error as rustls reported it.
    pub detail: String,
}

type FailureSlot = Arc<Mutex<Option<TlsFailure>>>;

/// A tonic connector for `https://` control planes.
#[derive(Clone)]
pub struct TlsConnector {
    config: Current<Arc<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    failure: FailureSlot,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Load the files (blocking: call at start-up) and keep watching them.
    pub fn from_settings(tls: &XdsTls) -> Result<TlsConnector, TlsError> {
        let server_name = match &tls.server_name {
            Some(name) => {
                Some(
                    ServerName::try_from(name.clone()).map_err(|_| TlsError::Verifier {
                        what: "xds server name".to_owned(),
                        message: format!("'{name}' is not a valid DNS name or IP address"),
                    })?,
                )
            }
            None => None,
        };
        let mut files = tls.files.clone();
        files.alpn = vec![b"h2".to_vec()];
        let config = files.watch("xds tls", legate_tls::files::DEFAULT_RELOAD_INTERVAL)?;
        Ok(TlsConnector::new(config, server_name))
    }

    /// A connector on an already loaded configuration; `server_name` overrides the URL host.
    pub fn new(
        config: Current<Arc<ClientConfig>>,
        server_name: Option<ServerName<'static>>,
    ) -> TlsConnector {
        TlsConnector {
            config,
            server_name,
            failure: FailureSlot::default(),
        }
    }

    /// The first TLS error seen on a connection since the last call, if any.
    pub fn take_failure(&self) -> Option<TlsFailure> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// TCP connect to the URI's host and port (443 by default), then the TLS handshake.
    pub async fn connect(&self, uri: &Uri) -> Result<TlsStream<TcpStream>, ConnectError> {
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::NoHost(uri.to_string()))?;
        // `[::1]` in a URL is `::1` to a resolver and a server name.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let addr = format!("{host}:{port}");
        let server_name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.clone())
                .map_err(|_| ConnectError::ServerName(host.clone()))?,
        };
        let config = Arc::clone(&**self.config.load());
        let attempt = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|source| ConnectError::Tcp {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let connector = legate_tls::tokio_rustls::TlsConnector::from(config);
            connector
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    addr: addr.clone(),
                    server_name: server_name.to_str().into_owned(),
                    cause: HandshakeFailure::classify(&source),
                    source,
                })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { addr }),
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<Recording<TlsStream<TcpStream>>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = this.connect(&uri).await?;
            Ok(TokioIo::new(Recording {
                inner: stream,
                failure: this.failure.clone(),
            }))
        })
    }
}

/// A connection that records its first TLS error (an alert from the server, most often) in
/// its connector.
pub struct Recording<S> {
    inner: S,
    failure: FailureSlot,
}

impl<S> Recording<S> {
    fn record<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(error)) = &result {
            let cause = HandshakeFailure::classify(error);
            if cause != HandshakeFailure::Io {
                let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.is_none() {
                    *slot = Some(TlsFailure {
                        cause,
                        detail: error.to_string(),
                    });
                }
            }
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.record(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.record(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.record(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.record(result)
    }
}

/// The TLS cause somewhere in `error`'s chain: a failed handshake, or (TLS 1.3) the server
/// refusing our certificate with an alert that arrives on the first read after it.
pub fn tls_cause(error: &(dyn StdError + 'static)) -> Option<HandshakeFailure> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(ConnectError::Tls { cause, .. }) = e.downcast_ref::<ConnectError>() {
            return Some(*cause);
        }
        if let Some(tls) = e.downcast_ref::<legate_tls::rustls::Error>() {
            return Some(HandshakeFailure::from_rustls(tls));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let cause = HandshakeFailure::classify(io);
            if cause != HandshakeFailure::Io {
                return Some(cause);
            }
        }
        next = e.source();
    }
    None
}

/// `error` and its sources, joined with `: ` (tonic's transport errors say little on their
/// own), skipping a source whose text its parent already includes. A gRPC status shows as
/// `Code: message`, e.g. `PermissionDenied: xds stream refused: ...`.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let text = |e: &(dyn StdError + 'static)| match e.downcast_ref::<tonic::Status>() {
        Some(status) => format!("{:?}: {}", status.code(), status.message()),
        None => e.to_string(),
    };
    let mut out = text(error);
    let mut next = error.source();
    while let Some(e) = next {
        let text = text(e);
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn finds_the_tls_cause_in_a_chain() {
        let alert = legate_tls::rustls::Error::AlertReceived(
            legate_tls::rustls::AlertDescription::CertificateRequired,
        );
        let wrapped = Wrapper(io::Error::new(io::ErrorKind::InvalidData, alert));
        assert_eq!(
            tls_cause(&wrapped),
            Some(HandshakeFailure::CertificateRequired)
        );
        let text = error_chain(&wrapped);
        assert!(text.starts_with("transport error: "), "{text}");
        assert!(text.contains("CertificateRequired"), "{text}");
        let plain = Wrapper(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(tls_cause(&plain), None);
        assert_eq!(error_chain(&plain), "transport error: refused");
    }
}
