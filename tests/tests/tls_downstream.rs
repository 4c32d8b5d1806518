//! TLS listeners end to end: the real `legate` binary terminating TLS with Envoy's
//! `DownstreamTlsContext`, two filter chains chosen by the ClientHello's server name, one of
//! them requiring client certificates; a hyper + rustls client makes real handshakes.

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, ListenerFilter};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext,
};
use envoy_types::pb::google::protobuf::BoolValue;
use legate_snapshot::Resources;
use legate_tests::config::{cluster, single_vhost_mesh};
use legate_tests::tls::{CertFiles, Pki, TlsClient, certificate, transport_socket, validation};
use legate_tests::xds_server::mesh_resources;
use legate_tests::{Legate, Mode, Protocol, Upstream, XdsFlags, XdsServer, eventually};
use legate_tls::issue::LeafSpec;

const WAIT: Duration = Duration::from_secs(10);

fn server_context(cert: &CertFiles, alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![certificate(cert)],
            alpn_protocols: alpn.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Listener `outbound` with chain `a` (server name a.test) and chain `b` (b.test, client
/// certificates from `client_ca` required), forwarding to `upstream`.
fn resources(
    upstream: std::net::SocketAddr,
    a: &CertFiles,
    b: &CertFiles,
    client_ca: &std::path::Path,
) -> Resources {
    let mut r = mesh_resources(&single_vhost_mesh(
        "- match: {prefix: /}\n  forward: {cluster: up, timeout: 10s}",
        &[cluster("up", &[upstream])],
    ));
    let l = &mut r.listeners[0];
    let base = l.filter_chains[0].clone();
    let chain = |name: &str, names: &[&str], ctx: &DownstreamTlsContext| {
        let mut c = base.clone();
        c.name = name.to_owned();
        c.filter_chain_match = Some(FilterChainMatch {
            server_names: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        });
        c.transport_socket = transport_socket(ctx);
        c
    };
    let mut b_ctx = server_context(b, &["http/1.1"]);
    b_ctx.require_client_certificate = Some(BoolValue { value: true });
    if let Some(c) = b_ctx.common_tls_context.as_mut() {
        c.validation_context_type = validation(client_ca, Vec::new());
    }
    l.filter_chains = vec![
        chain("a", &["a.test"], &server_context(a, &["h2", "http/1.1"])),
        chain("b", &["b.test", "*.b.test"], &b_ctx),
    ];
    l.listener_filters = vec![ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_owned(),
        ..Default::default()
    }];
    r
}

async fn handshake_failures(legate: &Legate, cause: &str) -> f64 {
    legate.metrics().await.get_or_zero(
        "legate_downstream_tls_handshake_failures_total",
        &[("listener", "outbound"), ("cause", cause)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_pick_the_chain_and_its_client_certificate_rule() {
    let pki = Pki::new("edge-ca");
    let clients = Pki::new("clients-ca");
    let a = pki.server("a", "a.test");
    let b = pki.issue("b", &LeafSpec::new("b").dns("b.test").dns("*.b.test"));
    let client = clients.issue("client", &LeafSpec::new("app").client_only());
    let up = Upstream::start("behind", "v1", Protocol::Auto).await;

    let server = XdsServer::start().await;
    server.set_resources(&resources(up.addr(), &a, &b, &clients.ca_file()));
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), Mode::Sotw)).await;
    let addr = legate.listener_addr("outbound").await;
    let ca = pki.ca_file();

    // a.test: chain a's certificate, HTTP/2 or HTTP/1.1 by ALPN, no client certificate.
    let h2 = TlsClient::new(&ca, None, &["h2", "http/1.1"]);
    let res = h2.get(addr, "a.test", "/x").await.expect("a.test over h2");
    assert_eq!(res.server_cert_der, a.cert_der, "chain a's certificate");
    assert_eq!(res.alpn.as_deref(), Some("h2"));
    res.response.assert_status(200);
    assert_eq!(res.response.version, http::Version::HTTP_2);
    assert_eq!(res.response.upstream(), Some("behind"));
    let h1 = TlsClient::new(&ca, None, &["http/1.1"]);
    let res = h1
        .get(addr, "a.test", "/y")
        .await
        .expect("a.test over http/1.1");
    assert_eq!(res.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(res.response.version, http::Version::HTTP_11);
    res.response.assert_status(200);
    let echo = res.response.echo();
    assert_eq!(echo.path, "/y");
    // The upstream learns the client spoke TLS.
    assert_eq!(
        echo.headers.get("x-forwarded-proto").map(String::as_str),
        Some("https")
    );

    // b.test (and its wildcard) requires a client certificate.
    let with_cert = TlsClient::new(&ca, Some(&client), &["h2", "http/1.1"]);
    for name in ["b.test", "api.b.test"] {
        let res = with_cert
            .get(addr, name, "/z")
            .await
            .expect("b with a client certificate");
        assert_eq!(
            res.server_cert_der, b.cert_der,
            "{name}: chain b's certificate"
        );
        // Chain b offers only http/1.1.
        assert_eq!(res.alpn.as_deref(), Some("http/1.1"));
        res.response.assert_status(200);
    }
    let refused = h2.get(addr, "b.test", "/z").await;
    assert!(
        refused.is_err(),
        "no client certificate must be refused: {refused:?}"
    );
    eventually(WAIT, "the refused handshake is counted", || async {
        let n = handshake_failures(&legate, "no-certificate").await;
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    // A certificate from a CA the chain does not trust is refused too.
    let stranger = pki.issue("stranger", &LeafSpec::new("stranger").client_only());
    let refused = TlsClient::new(&ca, Some(&stranger), &["http/1.1"])
        .get(addr, "b.test", "/z")
        .await;
    assert!(
        refused.is_err(),
        "an untrusted client certificate: {refused:?}"
    );

    // No chain for c.test (and no default chain): the connection is closed.
    let none = h2.get(addr, "c.test", "/").await;
    assert!(none.is_err(), "c.test has no chain: {none:?}");
    eventually(WAIT, "failures counted", || async {
        let no_chain = handshake_failures(&legate, "no-filter-chain").await;
        let missing = handshake_failures(&legate, "no-certificate").await;
        let untrusted = handshake_failures(&legate, "unknown-ca").await;
        if (no_chain, missing, untrusted) == (1.0, 1.0, 1.0) {
            Ok(())
        } else {
            Err(format!(
                "no-filter-chain {no_chain}, no-certificate {missing}, unknown-ca {untrusted}"
            ))
        }
    })
    .await;
    // Plaintext HTTP to a TLS listener is not served.
    let plain = legate_tests::HttpClient::http1()
        .with_timeout(Duration::from_secs(5))
        .try_get(&format!("http://{addr}/"))
        .await;
    assert!(plain.is_err(), "plaintext must not be served: {plain:?}");
    // Only the successful requests reached the upstream.
    assert_eq!(up.requests().await, 4);

    // Server certificates are reported with their remaining lifetime.
    let m = legate.metrics().await;
    for chain in ["outbound/a", "outbound/b"] {
        let left = m.value(
            "legate_tls_certificate_expiry_seconds",
            &[("owner", "listener"), ("name", chain), ("role", "server")],
        );
        assert!(left > 300.0 * 86_400.0, "{chain}: {left}");
    }
}
