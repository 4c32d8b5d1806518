//! Upstream TLS end to end: the real `legate` binary, configured over xDS with Envoy's own
//! `UpstreamTlsContext`, reaching TLS upstreams (the demo upstream on rustls, and Python's
//! `ssl` on OpenSSL) with real handshakes; certificates from `legate_tls::issue`.
//!
//! Clusters are written in legate's mesh format and compiled, then given their
//! `transport_socket` in Envoy terms (the mesh format has no TLS syntax of its own here).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use legate_snapshot::Resources;
use legate_tests::client::HttpClient;
use legate_tests::config::{ClusterSpec, cluster, single_vhost_mesh};
use legate_tests::peers::repo_root;
use legate_tests::tls::{
    CertFiles, Pki, bundle, certificate, replace_file, san, transport_socket, upstream_context,
};
use legate_tests::xds_server::mesh_resources;
use legate_tests::{
    HttpResponse, Legate, ListeningProcess, Mode, Protocol, Upstream, XdsFlags, XdsServer,
    eventually,
};
use legate_tls::issue::LeafSpec;
use prost::Message;

const WAIT: Duration = Duration::from_secs(10);
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// One route per `(prefix, cluster)`, each cluster over one endpoint.
fn mesh(routes: &[(&str, &str, std::net::SocketAddr)]) -> Resources {
    let mut yaml_routes = String::new();
    let mut clusters: Vec<ClusterSpec> = Vec::new();
    for (prefix, name, addr) in routes {
        yaml_routes.push_str(&format!(
            "- match: {{prefix: {prefix}}}\n  forward: {{cluster: {name}, timeout: 10s}}\n"
        ));
        clusters.push(cluster(name, &[*addr]));
    }
    mesh_resources(&single_vhost_mesh(&yaml_routes, &clusters))
}

fn cl<'a>(
    r: &'a mut Resources,
    name: &str,
) -> &'a mut envoy_types::pb::envoy::config::cluster::v3::Cluster {
    r.clusters
        .iter_mut()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("cluster {name}"))
}

fn set_tls(r: &mut Resources, name: &str, ctx: &UpstreamTlsContext) {
    cl(r, name).transport_socket = transport_socket(ctx);
}

/// Edit the cluster's `HttpProtocolOptions` (the mesh compiler always writes one).
fn edit_protocol(r: &mut Resources, name: &str, edit: impl FnOnce(&mut HttpProtocolOptions)) {
    let any = cl(r, name)
        .typed_extension_protocol_options
        .get_mut(HTTP_PROTOCOL_OPTIONS)
        .expect("compiled protocol options");
    let mut o = HttpProtocolOptions::decode(any.value.as_slice()).expect("decodes");
    edit(&mut o);
    any.value = o.encode_to_vec();
}

fn auto_config(r: &mut Resources, name: &str) {
    edit_protocol(r, name, |o| {
        o.upstream_protocol_options = Some(UpstreamProtocolOptions::AutoConfig(
            AutoHttpConfig::default(),
        ))
    });
}

fn http2(r: &mut Resources, name: &str) {
    edit_protocol(r, name, |o| {
        o.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            },
        ))
    });
}

/// legate on a test xDS server holding `resources`, serving.
async fn legate_with(resources: &Resources) -> (XdsServer, Legate) {
    let server = XdsServer::start().await;
    server.set_resources(resources);
    let legate = Legate::start_xds(&XdsFlags::new(&server.url(), Mode::Sotw)).await;
    (server, legate)
}

async fn get(legate: &Legate, path: &str) -> HttpResponse {
    let url = legate.url("outbound", path).await;
    HttpClient::http1()
        .with_timeout(Duration::from_secs(10))
        .get(&url)
        .await
}

/// `legate_upstream_tls_handshake_failures_total{cluster, cause}`.
async fn failures(legate: &Legate, cluster: &str, cause: &str) -> f64 {
    legate.metrics().await.get_or_zero(
        "legate_upstream_tls_handshake_failures_total",
        &[("cluster", cluster), ("cause", cause)],
    )
}

/// A client certificate with a SPIFFE id, valid for `days`.
fn client_cert(pki: &Pki, file: &str, cn: &str, days: u64) -> CertFiles {
    let now = SystemTime::now();
    pki.issue(
        file,
        &LeafSpec::new(cn)
            .uri(&format!("spiffe://legate.test/ns/default/sa/{cn}"))
            .client_only()
            .valid(
                now - Duration::from_secs(3600),
                now + Duration::from_secs(days * 86_400),
            ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_demo_upstream_over_http1_and_http2_by_alpn() {
    let pki = Pki::new("up-ca");
    let cert = pki.server("up", "up.test");
    // `auto` offers h2 and http/1.1 in ALPN; `h1` only http/1.1.
    let both = Upstream::start_tls("both", Protocol::Auto, &cert, &[]).await;
    let h1 = Upstream::start_tls("h1", Protocol::Http1, &cert, &[]).await;
    let mut r = mesh(&[
        ("/auto-both", "auto_both", both.addr()),
        ("/auto-h1", "auto_h1", h1.addr()),
        ("/explicit-h1", "explicit_h1", both.addr()),
        ("/explicit-h2", "explicit_h2", both.addr()),
    ]);
    let ctx = upstream_context(
        "up.test",
        &pki.ca_file(),
        vec![san(SanType::Dns, "up.test")],
    );
    for name in ["auto_both", "auto_h1", "explicit_h1", "explicit_h2"] {
        set_tls(&mut r, name, &ctx);
    }
    auto_config(&mut r, "auto_both");
    auto_config(&mut r, "auto_h1");
    http2(&mut r, "explicit_h2");
    let (_server, legate) = legate_with(&r).await;

    // (path, upstream, protocol the upstream saw, ALPN it negotiated)
    let cases = [
        ("/auto-both", "both", "HTTP/2.0", "h2"),
        ("/auto-h1", "h1", "HTTP/1.1", "http/1.1"),
        ("/explicit-h1", "both", "HTTP/1.1", "http/1.1"),
        ("/explicit-h2", "both", "HTTP/2.0", "h2"),
    ];
    for (path, upstream, protocol, alpn) in cases {
        // Twice: the second request reuses the pooled connection (or the remembered choice).
        for round in 0..2 {
            let res = get(&legate, path).await;
            res.assert_status(200);
            assert_eq!(res.upstream(), Some(upstream), "{path}: {}", res.describe());
            assert_eq!(res.echo().protocol, protocol, "{path} round {round}");
            assert_eq!(res.header("x-tls-alpn"), Some(alpn), "{path}");
            assert_eq!(res.header("x-tls-sni"), Some("up.test"), "{path}");
            // Envoy's client default: TLS 1.2 at most.
            assert_eq!(res.header("x-tls-version"), Some("TLSv1_2"), "{path}");
            assert_eq!(res.header("x-client-subject"), None, "{path}");
        }
    }
    for name in ["auto_both", "auto_h1", "explicit_h1", "explicit_h2"] {
        for cause in ["unknown-ca", "protocol", "alpn"] {
            assert_eq!(failures(&legate, name, cause).await, 0.0, "{name} {cause}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_presents_the_client_certificate() {
    let pki = Pki::new("mtls-ca");
    let cert = pki.server("up", "up.test");
    let client = client_cert(&pki, "client", "legate-client", 90);
    let ca = pki.ca_file();
    let ca_arg = ca.display().to_string();
    let up = Upstream::start_tls("mtls", Protocol::Auto, &cert, &["--client-ca", &ca_arg]).await;
    let mut r = mesh(&[("/", "mtls", up.addr())]);
    let mut ctx = upstream_context("up.test", &ca, Vec::new());
    if let Some(c) = ctx.common_tls_context.as_mut() {
        c.tls_certificates = vec![certificate(&client)];
        c.tls_params = Some(TlsParameters {
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        });
    }
    set_tls(&mut r, "mtls", &ctx);
    let (_server, legate) = legate_with(&r).await;

    let res = get(&legate, "/who").await;
    res.assert_status(200);
    assert_eq!(res.header("x-tls-version"), Some("TLSv1_3"));
    assert!(
        res.header("x-client-subject")
            .is_some_and(|s| s.contains("CN=legate-client")),
        "{}",
        res.describe()
    );
    assert_eq!(
        res.header("x-client-san"),
        Some("spiffe://legate.test/ns/default/sa/legate-client")
    );
    // The client certificate's remaining lifetime (90 days) is reported.
    let left = legate.metrics().await.value(
        "legate_tls_certificate_expiry_seconds",
        &[("owner", "cluster"), ("name", "mtls"), ("role", "client")],
    );
    let expected = (90 * 86_400) as f64;
    assert!(
        (expected - 120.0..=expected + 5.0).contains(&left),
        "{left}"
    );
    // /legate_internal names the key's file; /config_dump redacts even that, as Envoy
    // does; neither shows key material.
    let internal = legate.admin_get("/legate_internal").await.text();
    assert!(
        internal.contains(&client.key.display().to_string()),
        "{internal}"
    );
    let dump = legate.admin_get("/config_dump").await.text();
    assert!(!dump.contains(&client.key.display().to_string()), "{dump}");
    for text in [&internal, &dump] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}

/// The Python TLS server (OpenSSL), requiring a client certificate.
async fn python_tls(cert: &CertFiles, client_ca: &std::path::Path) -> ListeningProcess {
    let script = repo_root().join("tests/interop/tls_server.py");
    let (c, k, ca) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        client_ca.display().to_string(),
    );
    ListeningProcess::start(
        "python tls server",
        &PathBuf::from("python3"),
        &[
            &script.display().to_string(),
            "--cert",
            &c,
            "--key",
            &k,
            "--client-ca",
            &ca,
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_tls_server_with_san_validation() {
    let pki = Pki::new("py-ca");
    let server_cert = pki.issue(
        "python",
        &LeafSpec::new("python")
            .dns("py.test")
            .uri("spiffe://legate.test/ns/py/sa/server"),
    );
    let client = client_cert(&pki, "client", "legate-client", 30);
    let ca = pki.ca_file();
    let py = python_tls(&server_cert, &ca).await;
    let mut r = mesh(&[
        ("/right-san", "right_san", py.addr()),
        ("/wrong-san", "wrong_san", py.addr()),
    ]);
    for (name, uri) in [
        ("right_san", "spiffe://legate.test/ns/py/sa/server"),
        ("wrong_san", "spiffe://legate.test/ns/py/sa/impostor"),
    ] {
        let mut ctx = upstream_context("py.test", &ca, vec![san(SanType::Uri, uri)]);
        if let Some(c) = ctx.common_tls_context.as_mut() {
            c.tls_certificates = vec![certificate(&client)];
        }
        set_tls(&mut r, name, &ctx);
    }
    let (_server, legate) = legate_with(&r).await;

    let res = get(&legate, "/right-san").await;
    res.assert_status(200);
    assert_eq!(res.upstream(), Some("python-tls"), "{}", res.describe());
    let body = res.json();
    assert_eq!(body["path"], "/right-san");
    assert_eq!(body["tls_version"], "TLSv1.2");
    assert_eq!(body["client_subject"]["commonName"], "legate-client");

    let res = get(&legate, "/wrong-san").await;
    res.assert_status(503);
    assert_eq!(res.legate_error(), Some("upstream-tls-certificate"));
    assert_eq!(failures(&legate, "wrong_san", "name-mismatch").await, 1.0);
    assert_eq!(failures(&legate, "right_san", "name-mismatch").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_failures_fail_closed_with_their_named_error() {
    let pki = Pki::new("good-ca");
    let rogue = Pki::new("rogue-ca");
    let ca = pki.ca_file();
    let ca_arg = ca.display().to_string();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let good = pki.server("good", "up.test");
    let expired = pki.issue(
        "expired",
        &LeafSpec::new("expired")
            .dns("up.test")
            .valid(now - 3 * day, now - day),
    );
    let wrong_ca = rogue.server("rogue", "up.test");

    let rogue_up = Upstream::start_tls("rogue", Protocol::Auto, &wrong_ca, &[]).await;
    let good_up = Upstream::start_tls("good", Protocol::Auto, &good, &[]).await;
    let expired_up = Upstream::start_tls("expired", Protocol::Auto, &expired, &[]).await;
    let needs_cert = Upstream::start_tls(
        "needs-cert",
        Protocol::Auto,
        &good,
        &["--client-ca", &ca_arg],
    )
    .await;
    let old_tls = Upstream::start_tls(
        "old-tls",
        Protocol::Auto,
        &good,
        &["--tls-max-version", "1.2"],
    )
    .await;
    let plaintext = Upstream::start("plaintext", "v1", Protocol::Auto).await;

    // (prefix, cluster, upstream, expected error, expected cause)
    let cases: [(&str, &str, &Upstream, &str, &str); 7] = [
        (
            "/wrong-ca",
            "wrong_ca",
            &rogue_up,
            "upstream-tls-certificate",
            "unknown-ca",
        ),
        (
            "/wrong-san",
            "wrong_san",
            &good_up,
            "upstream-tls-certificate",
            "name-mismatch",
        ),
        (
            "/expired",
            "expired",
            &expired_up,
            "upstream-tls-certificate",
            "expired",
        ),
        (
            "/no-client-cert",
            "no_client_cert",
            &needs_cert,
            "upstream-tls-certificate",
            "certificate-required",
        ),
        (
            "/old-tls",
            "old_tls",
            &old_tls,
            "upstream-tls-handshake",
            "protocol-version",
        ),
        (
            "/not-tls",
            "not_tls",
            &plaintext,
            "upstream-tls-handshake",
            "protocol",
        ),
        // No validation context: legate checks Mozilla's roots (Envoy would check nothing).
        (
            "/no-validation",
            "no_validation",
            &good_up,
            "upstream-tls-certificate",
            "unknown-ca",
        ),
    ];
    let mut r = mesh(
        &cases
            .iter()
            .map(|(prefix, name, up, _, _)| (*prefix, *name, up.addr()))
            .collect::<Vec<_>>(),
    );
    for (_, name, _, _, _) in &cases {
        let sans = if *name == "wrong_san" {
            vec![san(SanType::Uri, "spiffe://legate.test/ns/pay/sa/api")]
        } else {
            vec![san(SanType::Dns, "up.test")]
        };
        let mut ctx = upstream_context("up.test", &ca, sans);
        if *name == "no_validation" {
            ctx = UpstreamTlsContext {
                sni: "up.test".to_owned(),
                ..Default::default()
            };
        }
        if *name == "old_tls" {
            ctx.common_tls_context
                .get_or_insert_with(CommonTlsContext::default)
                .tls_params = Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            });
        }
        set_tls(&mut r, name, &ctx);
    }
    let (_server, legate) = legate_with(&r).await;

    for (prefix, name, up, error, cause) in &cases {
        let res = get(&legate, prefix).await;
        res.assert_status(503);
        assert_eq!(
            res.legate_error(),
            Some(*error),
            "{prefix}: {}",
            res.describe()
        );
        assert_eq!(
            failures(&legate, name, cause).await,
            1.0,
            "{prefix} cause {cause}"
        );
        // Never bypassed: the upstream never got the request.
        assert_eq!(up.requests().await, 0, "{prefix}");
    }
    // Each local reply is counted under its reason.
    let m = legate.metrics().await;
    assert_eq!(
        m.value(
            "legate_local_replies_total",
            &[("reason", "upstream-tls-certificate")]
        ),
        5.0
    );
    assert_eq!(
        m.value(
            "legate_local_replies_total",
            &[("reason", "upstream-tls-handshake")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificate_rotation_under_load_loses_no_request() {
    let old_ca = Pki::new("old-ca");
    let new_ca = Pki::new("new-ca");
    let server_cert = old_ca.server("up", "up.test");
    // The upstream trusts both CAs, as during a CA rotation.
    let trusted = bundle(old_ca.dir(), "both-cas.pem", &[&old_ca, &new_ca]);
    let trusted_arg = trusted.display().to_string();
    // A slow-ish upstream spreads the loop over a few seconds.
    let up = Upstream::start_tls(
        "rotating",
        Protocol::Auto,
        &server_cert,
        &["--client-ca", &trusted_arg, "--delay", "10ms"],
    )
    .await;

    // The client certificate legate reads from files: the old one expires in 30 days.
    let live = client_cert(&old_ca, "live", "client-old", 30);
    let fresh = client_cert(&new_ca, "fresh", "client-new", 365);
    let mut r = mesh(&[("/", "rotating", up.addr())]);
    let mut ctx = upstream_context("up.test", &old_ca.ca_file(), Vec::new());
    if let Some(c) = ctx.common_tls_context.as_mut() {
        c.tls_certificates = vec![certificate(&live)];
    }
    set_tls(&mut r, "rotating", &ctx);
    // Connections are renewed every 20 requests, so new ones keep being opened.
    edit_protocol(&mut r, "rotating", |o| {
        if let Some(common) = o.common_http_protocol_options.as_mut() {
            common.max_requests_per_connection = Some(UInt32Value { value: 20 });
        }
    });
    let (_server, legate) = legate_with(&r).await;
    let expiry = |m: &legate_tests::Metrics| {
        m.value(
            "legate_tls_certificate_expiry_seconds",
            &[
                ("owner", "cluster"),
                ("name", "rotating"),
                ("role", "client"),
            ],
        )
    };
    let before = expiry(&legate.metrics().await);
    assert!((before - (30 * 86_400) as f64).abs() < 7200.0, "{before}");

    const TOTAL: usize = 2000;
    const WORKERS: usize = 8;
    const ROTATE_AFTER: usize = 300;
    let url = Arc::new(legate.url("outbound", "/").await);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let http = HttpClient::http1().with_timeout(Duration::from_secs(10));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (url, next, done, http) = (url.clone(), next.clone(), done.clone(), http.clone());
        workers.push(tokio::spawn(async move {
            let mut seen: Vec<(usize, u16, String)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    return seen;
                }
                let res = http.try_get(&url).await;
                let (status, subject) = match res {
                    Ok(r) => (
                        r.status.as_u16(),
                        r.header("x-client-subject").unwrap_or("").to_owned(),
                    ),
                    Err(e) => (0, format!("{e:#}")),
                };
                seen.push((i, status, subject));
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let rotate = {
        let (done, live, fresh) = (done.clone(), live.clone(), fresh.clone());
        async move {
            eventually(WAIT, "the first requests", || async {
                let n = done.load(Ordering::SeqCst);
                if n >= ROTATE_AFTER {
                    Ok(())
                } else {
                    Err(format!("{n} done"))
                }
            })
            .await;
            // Key first, then certificate: a reader in between sees a mismatched pair,
            // which legate refuses and retries.
            replace_file(
                &live.key,
                &std::fs::read_to_string(&fresh.key).expect("key"),
            );
            replace_file(
                &live.cert,
                &std::fs::read_to_string(&fresh.cert).expect("cert"),
            );
        }
    };
    let all = async {
        let mut seen = Vec::new();
        for w in workers {
            seen.extend(w.await.expect("worker"));
        }
        seen
    };
    let (seen, ()) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(all, rotate) })
            .await
            .expect("the loop finishes within 20 s");

    assert_eq!(seen.len(), TOTAL);
    let failed: Vec<_> = seen.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let by_subject = |cn: &str| seen.iter().filter(|(_, _, s)| s.contains(cn)).count();
    let (old, new) = (by_subject("CN=client-old"), by_subject("CN=client-new"));
    eprintln!("rotation: {old} answers named the old certificate, {new} the new one");
    assert_eq!(
        old + new,
        TOTAL,
        "every answer names one of the two certificates"
    );
    assert!(old >= ROTATE_AFTER, "old: {old}");
    assert!(new > 0, "no new connection presented the new certificate");
    // Once the new certificate is in use, the old one never comes back.
    let first_new = seen
        .iter()
        .filter(|(_, _, s)| s.contains("CN=client-new"))
        .map(|(i, _, _)| *i)
        .min()
        .unwrap_or(TOTAL);
    let late_old = seen
        .iter()
        .filter(|(i, _, s)| *i > first_new + 200 && s.contains("CN=client-old"))
        .count();
    assert_eq!(
        late_old, 0,
        "pooled connections must turn over (20 requests each)"
    );
    // The expiry gauge follows the new certificate.
    let after = expiry(&legate.metrics().await);
    assert!((after - (365 * 86_400) as f64).abs() < 7200.0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sni_follows_the_request_and_auto_san_validation_checks_it() {
    let pki = Pki::new("sni-ca");
    let cert = pki.issue(
        "multi",
        &LeafSpec::new("multi").dns("a.up.test").dns("b.up.test"),
    );
    let up = Upstream::start_tls("multi", Protocol::Auto, &cert, &[]).await;
    let mut r = mesh(&[("/", "by_name", up.addr())]);
    // No static SNI: every name comes from the request.
    set_tls(
        &mut r,
        "by_name",
        &upstream_context("", &pki.ca_file(), Vec::new()),
    );
    edit_protocol(&mut r, "by_name", |o| {
        o.upstream_http_protocol_options = Some(
            envoy_types::pb::envoy::config::core::v3::UpstreamHttpProtocolOptions {
                auto_sni: true,
                auto_san_validation: true,
                override_auto_sni_header: String::new(),
            },
        )
    });
    let (_server, legate) = legate_with(&r).await;
    let url = legate.url("outbound", "/").await;
    let http = HttpClient::http1().with_timeout(Duration::from_secs(10));
    for name in ["a.up.test", "b.up.test", "a.up.test"] {
        let res = http.get_with(&url, &[("host", name)]).await;
        res.assert_status(200);
        assert_eq!(res.header("x-tls-sni"), Some(name), "{}", res.describe());
    }
    // A name the certificate does not cover is refused, whatever the CA says.
    let res = http.get_with(&url, &[("host", "c.up.test")]).await;
    res.assert_status(503);
    assert_eq!(res.legate_error(), Some("upstream-tls-certificate"));
    assert_eq!(failures(&legate, "by_name", "name-mismatch").await, 1.0);
    // One connection per name: a and b were each dialled once.
    assert_eq!(up.counters().await.connections, 2);
}
