//! TLS for end-to-end tests: certificates issued by `legate_tls::issue` and written to files,
//! demo upstreams serving TLS, the Envoy TLS contexts legate is configured with, and a
//! curl-like client (hyper on rustls) that makes one request per TLS connection and reports
//! what the handshake established.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use http::{Request, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_tls::config::{CertifiedKey, ClientParams, NameCheck, Roots, client_config};
use legate_tls::issue::{Authority, LeafSpec};
use legate_tls::pki_types::ServerName;
use legate_tls::tokio_rustls::TlsConnector;
use prost::Message;
use tokio::net::TcpStream;

use crate::client::HttpResponse;
use crate::demo::Protocol;
use crate::process::{TempDir, Upstream};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate, DER (to compare with what a peer presented).
    pub cert_der: Vec<u8>,
}

/// A certificate authority whose certificates are written to a directory.
pub struct Pki {
    pub ca: Authority,
    dir: TempDir,
    name: String,
}

impl Pki {
    /// A new CA named `name` (its common name too).
    pub fn new(name: &str) -> Pki {
        Pki {
            ca: Authority::new(name).expect("issue a CA"),
            dir: TempDir::new(&format!("pki-{name}")),
            name: name.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate's file (written on first use).
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join(format!("{}-ca.pem", self.name));
        if !path.exists() {
            std::fs::write(&path, self.ca.cert_pem()).expect("write CA");
        }
        path
    }

    /// Issue a leaf certificate and write it as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, spec: &LeafSpec) -> CertFiles {
        let issued = self.ca.issue(spec).expect("issue a certificate");
        let cert = self.dir.path().join(format!("{file}.pem"));
        let key = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write certificate");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        CertFiles {
            cert,
            key,
            cert_der: issued.cert_der,
        }
    }

    /// A server certificate for `dns` (also valid for 127.0.0.1).
    pub fn server(&self, file: &str, dns: &str) -> CertFiles {
        self.issue(
            file,
            &LeafSpec::new(dns)
                .dns(dns)
                .ip("127.0.0.1".parse().expect("ip")),
        )
    }
}

/// A file holding several CA certificates (a bundle).
pub fn bundle(dir: &Path, name: &str, cas: &[&Pki]) -> PathBuf {
    let text: String = cas.iter().map(|p| p.ca.cert_pem().to_owned()).collect();
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write bundle");
    path
}

/// Replace `target` with `contents` atomically (write, then rename), as cert-manager and
/// kubelet do.
pub fn replace_file(target: &Path, contents: &str) {
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, target).expect("rename");
}

impl Upstream {
    /// A demo upstream serving TLS with `cert` on its main port (with a plaintext control
    /// port for `/counters` and `/control`), plus extra flags such as `--client-ca`.
    pub async fn start_tls(
        name: &str,
        protocol: Protocol,
        cert: &CertFiles,
        extra: &[&str],
    ) -> Upstream {
        let cert_path = cert.cert.display().to_string();
        let key_path = cert.key.display().to_string();
        let mut args = vec![
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
            "--control-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Upstream::start_with_args(name, "v1", protocol, &args).await
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy TLS contexts

/// A `DataSource` naming a file.
pub fn file(path: &Path) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.display().to_string())),
        ..Default::default()
    })
}

/// A `DataSource` holding text inline.
pub fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    })
}

/// A `TlsCertificate` from files.
pub fn certificate(files: &CertFiles) -> TlsCertificate {
    TlsCertificate {
        certificate_chain: file(&files.cert),
        private_key: file(&files.key),
        ..Default::default()
    }
}

/// An exact matcher for a SAN of `kind`.
pub fn san(kind: SanType, value: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: kind as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// A validation context trusting the CA in `ca`, with SAN matchers.
pub fn validation(ca: &Path, sans: Vec<SubjectAltNameMatcher>) -> Option<ValidationContextType> {
    Some(ValidationContextType::ValidationContext(
        CertificateValidationContext {
            trusted_ca: file(ca),
            match_typed_subject_alt_names: sans,
            ..Default::default()
        },
    ))
}

/// An `UpstreamTlsContext` sending `sni`, trusting `ca` and checking `sans`.
pub fn upstream_context(
    sni: &str,
    ca: &Path,
    sans: Vec<SubjectAltNameMatcher>,
) -> UpstreamTlsContext {
    UpstreamTlsContext {
        sni: sni.to_owned(),
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: validation(ca, sans),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The TLS transport socket carrying an upstream or downstream context.
pub fn transport_socket(context: &impl TlsContext) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url: context.type_url().to_owned(),
            value: context.encode(),
        })),
    })
}

/// The two TLS context messages a transport socket may carry.
pub trait TlsContext {
    fn type_url(&self) -> &'static str;
    fn encode(&self) -> Vec<u8>;
}

impl TlsContext for UpstreamTlsContext {
    fn type_url(&self) -> &'static str {
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    }
    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl TlsContext for DownstreamTlsContext {
    fn type_url(&self) -> &'static str {
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    }
    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

// ---------------------------------------------------------------------------------------------
// A TLS client

/// What a TLS request saw: the response, the negotiated protocol and the server's
/// certificate.
#[derive(Debug)]
pub struct TlsResponse {
    pub response: HttpResponse,
    /// The ALPN protocol negotiated, if any.
    pub alpn: Option<String>,
    /// The server's leaf certificate, DER.
    pub server_cert_der: Vec<u8>,
}

/// One request per TLS connection, verifying the server against a CA and the name asked for
/// (SNI), optionally presenting a client certificate.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<legate_tls::rustls::ClientConfig>,
    timeout: Duration,
}

impl TlsClient {
    /// Trust `ca`; offer `alpn` (e.g. `["h2", "http/1.1"]`); present `client` if given.
    pub fn new(ca: &Path, client: Option<&CertFiles>, alpn: &[&str]) -> TlsClient {
        let roots =
            legate_tls::pem::root_store(&std::fs::read(ca).expect("read CA"), "test client CA")
                .expect("CA bundle");
        let client_cert = client.map(|c| {
            CertifiedKey::from_pem(
                &std::fs::read(&c.cert).expect("read client cert"),
                &std::fs::read(&c.key).expect("read client key"),
                "test client",
            )
            .expect("client certificate")
        });
        let config = client_config(
            ClientParams {
                roots: Roots::Custom(Arc::new(roots)),
                names: NameCheck::ServerName,
                client_cert,
                alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
                min_version: None,
                max_version: None,
            },
            "test client",
        )
        .expect("client config");
        TlsClient {
            config,
            timeout: Duration::from_secs(10),
        }
    }

    /// `GET path` on a new TLS connection to `addr` with server name `sni` (also the `Host`).
    pub async fn get(
        &self,
        addr: SocketAddr,
        sni: &str,
        path: &str,
    ) -> anyhow::Result<TlsResponse> {
        tokio::time::timeout(self.timeout, self.get_inner(addr, sni, path))
            .await
            .map_err(|_| anyhow!("GET https://{sni}{path} via {addr}: timed out"))?
    }

    async fn get_inner(
        &self,
        addr: SocketAddr,
        sni: &str,
        path: &str,
    ) -> anyhow::Result<TlsResponse> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let name = ServerName::try_from(sni.to_owned()).context("server name")?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let (_, conn) = tls.get_ref();
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let server_cert_der = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| der.as_ref().to_vec())
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let h2 = alpn.as_deref() == Some("h2");
        let mut req = Request::builder().method("GET");
        req = if h2 {
            req.uri(format!("https://{sni}{path}"))
                .version(Version::HTTP_2)
        } else {
            req.uri(path).header(header::HOST, sni)
        };
        let req = req.body(Empty::<Bytes>::new()).context("request")?;
        let res = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        };
        let (parts, body) = res.into_parts();
        let body = body.collect().await.context("reading the body")?.to_bytes();
        Ok(TlsResponse {
            response: HttpResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            },
            alpn,
            server_cert_der,
        })
    }
}
