//! legatectl's side of the admin API: a gRPC channel to legate-cp, over TLS for an
//! `https://` server (optionally with a client certificate), sending a bearer token with
//! every call when one is given, and error messages that say what to do about a refusal.

use std::error::Error as StdError;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use legate_proto::admin::admin_client::AdminClient;
use legate_tls::TlsError;
use legate_tls::config::{CertifiedKey, ClientParams, NameCheck, Roots};
use legate_tls::pki_types::ServerName;
use legate_tls::rustls::ClientConfig;
use tokio::net::TcpStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::admin_auth::TokenError;

/// How to reach legate-cp.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `http://host:port` or `https://host:port`.
    pub server: String,
    /// The bearer token (never logged).
    pub token: Option<String>,
    /// CA bundle that signed the server's certificate (Mozilla's roots when absent).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for an admin identity.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why legatectl cannot talk to legate-cp.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad --server '{server}': {message}")]
    BadServer { server: String, message: String },
    #[error("--ca, --cert and --key need an https:// --server")]
    TlsNeedsHttps,
    #[error("--cert and --key must be given together")]
    CertPair,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the admin token is not usable in a header (letters, digits and '-._~+/=' only)")]
    BadToken,
    #[error("cannot reach legate-cp at {server}: {cause}")]
    Connect { server: String, cause: String },
}

/// An admin client that sends the token, if any, with every call.
pub type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to each call, marked sensitive so HTTP/2 never puts it
/// in its header compression table.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// Where legatectl finds legate-cp's admin API unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15011";

/// The largest admin reply accepted (`status` of a large fleet lists as several MiB).
pub const MAX_REPLY_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to legate-cp.
pub async fn connect(options: &ClientOptions) -> Result<Client, ClientError> {
    let server = &options.server;
    let bad = |message: String| ClientError::BadServer {
        server: server.clone(),
        message,
    };
    let wants_tls = options.ca.is_some() || options.cert.is_some() || options.key.is_some();
    // legate-cp's own flags take HOST:PORT; so does --server, meaning https:// when TLS
    // options are given and http:// otherwise.
    let with_scheme = if server.contains("://") {
        server.clone()
    } else if wants_tls {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    };
    let uri: http::Uri = with_scheme.parse().map_err(|e| bad(format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(bad(
                "expected HOST:PORT, http://HOST:PORT or https://HOST:PORT".into(),
            ));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| bad("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if wants_tls && !https {
        return Err(ClientError::TlsNeedsHttps);
    }
    let bearer = match &options.token {
        Some(token) => {
            let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::BadToken)?;
            value.set_sensitive(true);
            Bearer(Some(value))
        }
        None => Bearer(None),
    };
    let connect_err = |e: tonic::transport::Error| ClientError::Connect {
        server: server.clone(),
        cause: error_chain(&e),
    };
    let channel = if https {
        let config = client_tls(options)?;
        let name = ServerName::try_from(host.clone()).map_err(|e| bad(e.to_string()))?;
        let port = uri.port_u16().unwrap_or(443);
        // tonic is given a plain `http://` URI and the TLS happens in the connector: tonic's
        // own https handling would refuse a custom connector if a TLS feature were enabled.
        let plain = format!("http://{}:{port}", bracket(&host));
        Endpoint::from_shared(plain)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(TlsConnector { config, name })
            .await
            .map_err(connect_err)?
    } else {
        Endpoint::from_shared(with_scheme.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(connect_err)?
    };
    Ok(AdminClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_REPLY_BYTES))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn client_tls(options: &ClientOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let roots = match &options.ca {
        Some(ca) => Roots::Custom(Arc::new(legate_tls::pem::root_store(
            &legate_tls::pem::read_file(ca, "--ca")?,
            "--ca",
        )?)),
        None => Roots::WebPki,
    };
    let client_cert = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => Some(CertifiedKey::from_pem(
            &legate_tls::pem::read_file(cert, "--cert")?,
            &legate_tls::pem::read_file(key, "--key")?,
            "--cert/--key",
        )?),
        (None, None) => None,
        _ => return Err(ClientError::CertPair),
    };
    Ok(legate_tls::config::client_config(
        ClientParams {
            roots,
            names: NameCheck::ServerName,
            client_cert,
            alpn: vec![b"h2".to_vec()],
            min_version: None,
            max_version: None,
        },
        "legatectl TLS",
    )?)
}

/// TCP, then a TLS handshake verifying the server's certificate for `name`.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<legate_tls::tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (config, name) = (self.config.clone(), self.name.clone());
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("no host")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or("no port")?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = legate_tls::tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// An error and its causes, joined with `: `, each cause once.
pub fn error_chain(e: &dyn StdError) -> String {
    with_causes(e.to_string(), e.source())
}

fn with_causes(mut text: String, mut source: Option<&(dyn StdError + 'static)>) -> String {
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

/// What a failed call means for the user, with what to do about it.
pub fn explain(status: &tonic::Status) -> String {
    let message = status.message();
    match status.code() {
        tonic::Code::Unauthenticated => format!(
            "not authorized: {message}; use --token-file FILE (or LEGATE_CP_TOKEN), or an admin client certificate with --cert/--key"
        ),
        tonic::Code::PermissionDenied => format!("forbidden: {message}"),
        // A gRPC server without legate-cp's admin service (its xDS port, say) answers
        // UNIMPLEMENTED with no message.
        tonic::Code::Unimplemented => format!(
            "the server does not serve legate-cp's admin API ({}); is --server legate-cp's \
             admin address (default {DEFAULT_SERVER}) rather than its xDS port?",
            if message.is_empty() {
                "unimplemented"
            } else {
                message
            }
        ),
        code if message.is_empty() => with_causes(
            format!("the call failed with gRPC status {code:?} and no message"),
            StdError::source(status),
        ),
        _ => with_causes(message.to_owned(), StdError::source(status)),
    }
}
