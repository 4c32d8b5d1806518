//! Real handshakes over loopback sockets between the configurations this crate builds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use legate_tls::config::{
    CertifiedKey, ClientAuth, ClientParams, NameCheck, Roots, SanCheck, ServerParams, TlsVersion,
    client_config, server_config,
};
use legate_tls::issue::{Authority, Issued, LeafSpec};
use legate_tls::pki_types::ServerName;
use legate_tls::rustls::{CertificateError, Error as RustlsError};
use legate_tls::{San, pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn key(issued: &Issued) -> CertifiedKey {
    CertifiedKey::from_pem(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        "test",
    )
    .expect("key")
}

fn roots(ca: &Authority) -> Arc<legate_tls::rustls::RootCertStore> {
    Arc::new(pem::root_store(ca.cert_pem().as_bytes(), "ca").expect("roots"))
}

/// Serve one TLS connection that echoes a line; report the client's result.
async fn handshake(
    server: ServerParams,
    client: ClientParams,
    sni: &str,
) -> Result<Vec<u8>, std::io::Error> {
    let server = server_config(server, "server").expect("server config");
    let client = client_config(client, "client").expect("client config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = legate_tls::tokio_rustls::TlsAcceptor::from(server);
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        tls.write_all(&buf).await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let connector = legate_tls::tokio_rustls::TlsConnector::from(client);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    let result = async {
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"hello").await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(out)
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), srv).await;
    result
}

fn rustls_error(e: &std::io::Error) -> Option<&RustlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<RustlsError>())
}

fn server(ca: &Authority, spec: LeafSpec) -> ServerParams {
    ServerParams {
        cert: key(&ca.issue(&spec).expect("leaf")),
        client_auth: ClientAuth::None,
        alpn: vec![],
        min_version: None,
        max_version: None,
    }
}

fn client(ca: &Authority, names: NameCheck) -> ClientParams {
    ClientParams {
        roots: Roots::Custom(roots(ca)),
        names,
        client_cert: None,
        alpn: vec![],
        min_version: None,
        max_version: None,
    }
}

#[derive(Debug)]
struct UriIs(&'static str);
impl SanCheck for UriIs {
    fn accepts(&self, sans: &[San]) -> bool {
        sans.iter().any(|s| matches!(s, San::Uri(u) if u == self.0))
    }
}

#[tokio::test]
async fn trusted_chain_and_server_name() {
    let ca = Authority::new("ca").expect("ca");
    let out = handshake(
        server(&ca, LeafSpec::new("s").dns("svc.test")),
        client(&ca, NameCheck::ServerName),
        "svc.test",
    )
    .await
    .expect("handshake");
    assert_eq!(out, b"hello");
}

#[tokio::test]
async fn wrong_ca_is_unknown_issuer() {
    let ca = Authority::new("ca").expect("ca");
    let other = Authority::new("other").expect("ca");
    let err = handshake(
        server(&ca, LeafSpec::new("s").dns("svc.test")),
        client(&other, NameCheck::ChainOnly),
        "svc.test",
    )
    .await
    .expect_err("must fail");
    assert!(
        matches!(
            rustls_error(&err),
            Some(RustlsError::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn san_rule_decides_and_server_name_is_not_needed() {
    let ca = Authority::new("ca").expect("ca");
    let spec = LeafSpec::new("s").uri("spiffe://td/ns/default/sa/payments");
    handshake(
        server(&ca, spec.clone()),
        client(
            &ca,
            NameCheck::Sans(Arc::new(UriIs("spiffe://td/ns/default/sa/payments"))),
        ),
        "anything.test",
    )
    .await
    .expect("matching SAN");
    let err = handshake(
        server(&ca, spec),
        client(
            &ca,
            NameCheck::Sans(Arc::new(UriIs("spiffe://td/ns/default/sa/other"))),
        ),
        "anything.test",
    )
    .await
    .expect_err("SAN mismatch");
    assert!(
        matches!(
            rustls_error(&err),
            Some(RustlsError::InvalidCertificate(
                CertificateError::NotValidForName
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let ca = Authority::new("ca").expect("ca");
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let err = handshake(
        server(
            &ca,
            LeafSpec::new("s")
                .dns("svc.test")
                .valid(now - 3 * day, now - day),
        ),
        client(&ca, NameCheck::ServerName),
        "svc.test",
    )
    .await
    .expect_err("expired");
    assert!(
        matches!(
            rustls_error(&err),
            Some(RustlsError::InvalidCertificate(
                CertificateError::ExpiredContext { .. } | CertificateError::Expired
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn required_client_certificate() {
    let ca = Authority::new("ca").expect("ca");
    let mut srv = server(&ca, LeafSpec::new("s").dns("svc.test"));
    srv.client_auth = ClientAuth::Required(roots(&ca));
    // Without a client certificate the server aborts the handshake. With TLS 1.3 the client
    // learns it on its first read.
    let err = handshake(srv, client(&ca, NameCheck::ServerName), "svc.test")
        .await
        .expect_err("no client certificate");
    assert!(rustls_error(&err).is_some(), "{err:?}");

    let mut srv = server(&ca, LeafSpec::new("s").dns("svc.test"));
    srv.client_auth = ClientAuth::Required(roots(&ca));
    let mut cl = client(&ca, NameCheck::ServerName);
    cl.client_cert = Some(key(&ca
        .issue(&LeafSpec::new("c").client_only())
        .expect("leaf")));
    assert_eq!(
        handshake(srv, cl, "svc.test").await.expect("mTLS"),
        b"hello"
    );
}

#[tokio::test]
async fn version_floor_is_enforced() {
    let ca = Authority::new("ca").expect("ca");
    let mut srv = server(&ca, LeafSpec::new("s").dns("svc.test"));
    srv.max_version = Some(TlsVersion::V1_2);
    let mut cl = client(&ca, NameCheck::ServerName);
    cl.min_version = Some(TlsVersion::V1_3);
    let err = handshake(srv, cl, "svc.test")
        .await
        .expect_err("1.2 server, 1.3 client");
    assert!(rustls_error(&err).is_some(), "{err:?}");
}

#[tokio::test]
async fn client_certificate_sans_are_checked() {
    let ca = Authority::new("ca").expect("ca");
    let with_client = |uri: &str| {
        let mut cl = client(&ca, NameCheck::ServerName);
        cl.client_cert = Some(key(&ca
            .issue(&LeafSpec::new("c").uri(uri).client_only())
            .expect("leaf")));
        cl
    };
    let checked = |required: bool| {
        let mut srv = server(&ca, LeafSpec::new("s").dns("svc.test"));
        srv.client_auth = ClientAuth::Checked {
            roots: roots(&ca),
            required,
            sans: Arc::new(UriIs("spiffe://td/ns/a/sa/web")),
        };
        srv
    };
    assert_eq!(
        handshake(
            checked(true),
            with_client("spiffe://td/ns/a/sa/web"),
            "svc.test"
        )
        .await
        .expect("matching SAN"),
        b"hello"
    );
    let err = handshake(
        checked(true),
        with_client("spiffe://td/ns/a/sa/other"),
        "svc.test",
    )
    .await
    .expect_err("SAN mismatch");
    assert!(rustls_error(&err).is_some(), "{err:?}");
    // Not required: no certificate is fine, a wrong one is not.
    assert_eq!(
        handshake(
            checked(false),
            client(&ca, NameCheck::ServerName),
            "svc.test"
        )
        .await
        .expect("no certificate"),
        b"hello"
    );
    handshake(
        checked(false),
        with_client("spiffe://td/ns/a/sa/other"),
        "svc.test",
    )
    .await
    .expect_err("a presented certificate must pass");
}
