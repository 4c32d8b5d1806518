//! `envoy.filters.http.credential_injector`, end to end: resources pushed over ADS (secrets
//! over SDS) to the real `legate` binary in front of the demo upstream, which echoes the
//! headers it received; OAuth2 tokens come from a real RFC 6749 §4.4 token endpoint
//! ([`legate_tests::oauth::TokenEndpoint`]) that counts its requests.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HttpUri, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::OAuth2;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::o_auth2::{
    ClientCredentials, FlowType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, SdsSecretConfig, Secret, secret,
};
use envoy_types::pb::google::protobuf::Any;
use legate_snapshot::{Resources, type_url};
use legate_tests::client::HttpClient;
use legate_tests::config::{cluster, single_vhost_mesh};
use legate_tests::eventually;
use legate_tests::oauth::{Behaviour, TokenEndpoint};
use legate_tests::resilience::{Rig, SVC, concurrent_gets, edit_hcm, ms, outcome};
use legate_tests::xds_server::mesh_resources;
use legate_tests::{Protocol, Upstream};
use prost::Message;

const FILTER: &str = "envoy.filters.http.credential_injector";
const WAIT: Duration = Duration::from_secs(10);
const IDP: &str = "idp";
const CLIENT_ID: &str = "legate client";
/// Characters that RFC 6749 §2.3.1's form encoding must escape before Basic.
const CLIENT_SECRET: &str = "s3cr:t/+%é";

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3.into(),
        ..Default::default()
    })
}

fn sds(name: &str) -> Option<SdsSecretConfig> {
    Some(SdsSecretConfig {
        name: name.to_owned(),
        sds_config: ads(),
    })
}

fn generic_secret(name: &str, source: Specifier) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(source),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn generic(header: &str, prefix: &str, secret: &str) -> Any {
    any(
        type_url::GENERIC_CREDENTIAL,
        &Generic {
            credential: sds(secret),
            header: header.to_owned(),
            header_value_prefix: prefix.to_owned(),
        },
    )
}

fn oauth2(scopes: &[&str], retry_ms: u64) -> Any {
    oauth2_with(scopes, retry_ms, 1000)
}

/// [`oauth2`] with the token request's timeout.
fn oauth2_with(scopes: &[&str], retry_ms: u64, timeout_ms: u64) -> Any {
    any(
        type_url::OAUTH2_CREDENTIAL,
        &OAuth2 {
            token_endpoint: Some(HttpUri {
                uri: "http://idp.test/oauth/token".to_owned(),
                timeout: Some(ms(timeout_ms)),
                http_upstream_type: Some(HttpUpstreamType::Cluster(IDP.to_owned())),
            }),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_fetch_retry_interval: Some(ms(retry_ms)),
            flow_type: Some(FlowType::ClientCredentials(ClientCredentials {
                client_id: CLIENT_ID.to_owned(),
                client_secret: sds("oauth-client"),
                auth_type: 0,
            })),
            ..Default::default()
        },
    )
}

/// Puts the credential injector first on every listener.
fn with_injector(res: &mut Resources, overwrite: bool, allow: bool, credential: Any) {
    let filter = HttpFilter {
        name: FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            type_url::CREDENTIAL_INJECTOR,
            &CredentialInjector {
                overwrite,
                allow_request_without_credential: allow,
                credential: Some(TypedExtensionConfig {
                    name: "cred".to_owned(),
                    typed_config: Some(credential),
                }),
            },
        ))),
        ..Default::default()
    };
    edit_hcm(res, |h| {
        h.http_filters.retain(|f| f.name != FILTER);
        h.http_filters.insert(0, filter.clone());
    });
}

/// `svc` over the upstream, plus the `idp` cluster when a token endpoint is given.
fn mesh(upstream: &Upstream, idp: Option<&TokenEndpoint>) -> Resources {
    let mut clusters = vec![cluster(SVC, &[upstream.addr()])];
    if let Some(idp) = idp {
        clusters.push(cluster(IDP, &[idp.addr()]));
    }
    mesh_resources(&single_vhost_mesh(
        &format!("- match: {{prefix: /}}\n  forward: {{cluster: {SVC}, timeout: 10s}}"),
        &clusters,
    ))
}

/// What the upstream saw in `header` for one request through the proxy (with the client's
/// own headers).
async fn seen(
    rig: &Rig,
    header: &str,
    sent: &[(&str, &str)],
) -> (u16, Option<String>, Option<String>) {
    let r = HttpClient::http1().get_with(&rig.url("/"), sent).await;
    let (status, cause) = outcome(&r);
    let value = (status == 200)
        .then(|| r.echo().headers.get(header).cloned())
        .flatten();
    (status, cause, value)
}

fn tmp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("legate-cred-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The secret's text must appear nowhere legate shows: /config_dump (every resource,
/// secrets included), /legate_internal views, metrics and its log.
async fn assert_not_shown(rig: &Rig, secret: &str) {
    for path in [
        "/config_dump",
        "/config_dump?include_eds",
        "/legate_internal",
    ] {
        let r = rig.legate.admin_get(path).await;
        assert!(
            !r.text().contains(secret),
            "{path} shows the secret:\n{}",
            r.text()
        );
    }
    // The secrets are in the dump, with their values redacted.
    let dump = rig.legate.admin_get("/config_dump").await.text();
    assert!(
        dump.contains("generic_secret") && dump.contains("[redacted]"),
        "{dump}"
    );
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", rig.legate.admin_addr()))
        .await;
    assert!(!metrics.text().contains(secret), "metrics show the secret");
    assert!(
        !rig.legate.output().contains(secret),
        "the log shows the secret:\n{}",
        rig.legate.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_secret_from_sds_is_injected_kept_or_overwritten_and_follows_pushes() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let mut res = mesh(&a, None);
    res.secrets.push(generic_secret(
        "api-key",
        Specifier::InlineString("k-one-7f3a".to_owned()),
    ));
    with_injector(&mut res, false, false, generic("x-api-key", "", "api-key"));
    let rig = Rig::start(&res).await;

    let (status, cause, value) = seen(&rig, "x-api-key", &[]).await;
    assert_eq!((status, cause), (200, None), "{}", rig.describe());
    assert_eq!(value.as_deref(), Some("k-one-7f3a"));
    // overwrite: false keeps what the client sent.
    let (_, _, value) = seen(&rig, "x-api-key", &[("x-api-key", "mine")]).await;
    assert_eq!(value.as_deref(), Some("mine"));

    // overwrite: true replaces it; a new secret value over SDS is used from the next
    // request on.
    let mut res2 = res.clone();
    res2.secrets = vec![generic_secret(
        "api-key",
        Specifier::InlineString("k-two-9c1d".to_owned()),
    )];
    with_injector(
        &mut res2,
        true,
        false,
        generic("x-api-key", "Key ", "api-key"),
    );
    rig.apply(&res2).await;
    let (_, _, value) = seen(&rig, "x-api-key", &[("x-api-key", "mine")]).await;
    assert_eq!(
        value.as_deref(),
        Some("Key k-two-9c1d"),
        "{}",
        rig.describe()
    );

    assert_not_shown(&rig, "k-one-7f3a").await;
    assert_not_shown(&rig, "k-two-9c1d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_secret_from_a_file_is_reread_when_it_changes() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = tmp_dir("file");
    let path = dir.join("token");
    std::fs::write(&path, "Bearer f-one-51ab\n").expect("write secret");
    let mut res = mesh(&a, None);
    res.secrets.push(generic_secret(
        "bearer",
        Specifier::Filename(path.display().to_string()),
    ));
    with_injector(&mut res, true, false, generic("", "", "bearer"));
    let rig = Rig::start(&res).await;

    let (status, cause, value) =
        seen(&rig, "authorization", &[("authorization", "Bearer app")]).await;
    assert_eq!((status, cause), (200, None), "{}", rig.describe());
    assert_eq!(
        value.as_deref(),
        Some("Bearer f-one-51ab"),
        "the file's line end is not sent"
    );

    // Rotated in place (as a script would): picked up without a push.
    std::fs::write(&path, "Bearer f-two-77e0\n").expect("rewrite secret");
    eventually(WAIT, "the new file content is injected", || async {
        match seen(&rig, "authorization", &[]).await {
            (200, _, Some(v)) if v == "Bearer f-two-77e0" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A file that cannot be read leaves no credential: 401 with the named cause.
    std::fs::remove_file(&path).expect("remove secret");
    eventually(WAIT, "a missing file answers 401", || async {
        match seen(&rig, "authorization", &[]).await {
            (401, Some(c), _) if c == "credential-unavailable" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let refused = rig
        .metric(
            "legate_local_replies_total",
            &[("reason", "credential-unavailable")],
        )
        .await;
    assert!(refused >= 1.0, "{refused}");
    assert_not_shown(&rig, "f-one-51ab").await;
    assert_not_shown(&rig, "f-two-77e0").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credential_401_unless_allowed() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = tmp_dir("absent");
    let absent = dir.join("never-written");
    let mut res = mesh(&a, None);
    res.secrets.push(generic_secret(
        "gone",
        Specifier::Filename(absent.display().to_string()),
    ));
    with_injector(&mut res, false, false, generic("x-api-key", "", "gone"));
    let rig = Rig::start(&res).await;
    let (status, cause, _) = seen(&rig, "x-api-key", &[]).await;
    assert_eq!(
        (status, cause.as_deref()),
        (401, Some("credential-unavailable")),
        "{}",
        rig.describe()
    );
    assert_eq!(
        a.requests().await,
        0,
        "a refused request never reaches the upstream"
    );
    // To a gRPC request: a trailers-only UNAUTHENTICATED, as Envoy maps its 401.
    let g = HttpClient::h2c()
        .request(
            "POST",
            &rig.url("/pkg.Svc/Call"),
            &[("content-type", "application/grpc"), ("te", "trailers")],
            legate_tests::client::empty(),
        )
        .await;
    assert_eq!(
        (g.status.as_u16(), g.header("grpc-status"), g.legate_error()),
        (200, Some("16"), Some("credential-unavailable")),
        "{}",
        g.describe()
    );
    // overwrite false: a client's own header is kept and nothing is required.
    let (status, _, value) = seen(&rig, "x-api-key", &[("x-api-key", "mine")]).await;
    assert_eq!((status, value.as_deref()), (200, Some("mine")));

    let mut allowed = res.clone();
    with_injector(&mut allowed, false, true, generic("x-api-key", "", "gone"));
    rig.apply(&allowed).await;
    let (status, cause, value) = seen(&rig, "x-api-key", &[]).await;
    assert_eq!((status, cause, value), (200, None, None));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn oauth_rig(idp: &TokenEndpoint, scopes: &[&str], retry_ms: u64) -> (Upstream, Rig) {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let mut res = mesh(&a, Some(idp));
    res.secrets.push(generic_secret(
        "oauth-client",
        Specifier::InlineString(CLIENT_SECRET.to_owned()),
    ));
    with_injector(&mut res, true, false, oauth2(scopes, retry_ms));
    let rig = Rig::start(&res).await;
    (a, rig)
}

fn bearer(r: &legate_tests::client::HttpResponse) -> Option<String> {
    (r.status == 200)
        .then(|| r.echo().headers.get("authorization").cloned())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_cold_start_with_50_parallel_requests_fetches_one_token() {
    let idp = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET, "read write").await;
    // The first answer is held until 50 requests wait behind the one fetch.
    idp.set(Behaviour {
        hold: true,
        ..Behaviour::default()
    });
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let mut res = mesh(&a, Some(&idp));
    res.secrets.push(generic_secret(
        "oauth-client",
        Specifier::InlineString(CLIENT_SECRET.to_owned()),
    ));
    with_injector(
        &mut res,
        true,
        false,
        oauth2_with(&["read", "write"], 1000, 5000),
    );
    let rig = Rig::start(&res).await;
    eventually(WAIT, "the token request is in flight", || async {
        (idp.requests() == 1)
            .then_some(())
            .ok_or_else(|| format!("{} token requests", idp.requests()))
    })
    .await;
    let url = rig.url("/");
    let batch = tokio::spawn(async move { concurrent_gets(&url, 50).await });
    eventually(WAIT, "50 clients connected and waiting", || async {
        let open = rig
            .metric("legate_downstream_connections_active", &[])
            .await;
        (open >= 50.0)
            .then_some(())
            .ok_or_else(|| format!("{open} connections"))
    })
    .await;
    assert_eq!(
        idp.requests(),
        1,
        "waiting requests start no fetch of their own"
    );
    idp.set(Behaviour::default());
    let answers = batch.await.expect("requests");
    for r in &answers {
        let r = r.as_ref().expect("answered");
        assert_eq!(
            outcome(r),
            (200, None),
            "{}\n{}",
            r.describe(),
            rig.describe()
        );
        assert_eq!(bearer(r).as_deref(), Some("Bearer tok-1"));
    }
    assert_eq!(idp.malformed(), (0, None), "RFC 6749 §4.4.2 request");
    assert_eq!(
        idp.body_auth(),
        0,
        "the client authenticates with HTTP Basic"
    );
    assert_eq!(idp.requests(), 1, "one fetch for 50 requests and the start");
    assert_eq!(
        rig.metric(
            "legate_oauth2_token_fetches_total",
            &[("cluster", IDP), ("result", "ok")]
        )
        .await,
        1.0
    );
    assert_not_shown(&rig, "tok-1").await;
    assert_not_shown(&rig, "s3cr").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_is_renewed_before_it_expires_without_failing_a_request() {
    let idp = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET, "").await;
    // Two-second tokens: renewed after 1.6 s, each before the previous one expires.
    idp.set(Behaviour {
        expires_in: 2,
        ..Behaviour::default()
    });
    let (_a, rig) = oauth_rig(&idp, &[], 1000).await;
    let start = Instant::now();
    let mut seen_tokens: Vec<(String, Duration)> = Vec::new();
    let mut requests = 0;
    // Bounded: at most 400 requests and 4.5 s.
    while start.elapsed() < Duration::from_millis(4500) && requests < 400 {
        let r = HttpClient::http1().get(&rig.url("/")).await;
        requests += 1;
        assert_eq!(
            outcome(&r),
            (200, None),
            "{}\n{}",
            r.describe(),
            rig.describe()
        );
        let token = bearer(&r).expect("a token");
        if seen_tokens.last().map(|(t, _)| t) != Some(&token) {
            seen_tokens.push((token, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let names: Vec<&str> = seen_tokens.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        names.len() >= 3 && names[..3] == ["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"],
        "tokens in order: {seen_tokens:?}"
    );
    // tok-2 was fetched at 80 % of tok-1's two seconds (as the endpoint's clock saw it),
    // and replaced tok-1 before tok-1 expired.
    let issued = idp.issued_at();
    let renewal = issued[1].duration_since(issued[0]);
    assert!(
        renewal > Duration::from_millis(1450) && renewal < Duration::from_millis(1900),
        "renewed {renewal:?} after the first token"
    );
    // An upper bound: the answer carrying tok-2 came back then.
    let tok2_seen = start + seen_tokens[1].1;
    assert!(
        tok2_seen < issued[0] + Duration::from_secs(2),
        "tok-2 in use {:?} after tok-1 was issued",
        tok2_seen.duration_since(issued[0])
    );
    // One fetch per renewal, no more: about 4.5 s / 1.6 s.
    assert!(
        (3..=4).contains(&idp.requests()),
        "{} fetches",
        idp.requests()
    );
    assert_eq!(idp.malformed(), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_endpoint_outage_answers_503_at_once_and_fetches_only_at_the_retry_interval() {
    let idp = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET, "read").await;
    idp.set(Behaviour {
        fail: Some(503),
        ..Behaviour::default()
    });
    let (a, rig) = oauth_rig(&idp, &["read"], 1000).await;
    eventually(WAIT, "the first fetch failed", || async {
        (idp.requests() >= 1)
            .then_some(())
            .ok_or_else(|| "no fetch yet".to_owned())
    })
    .await;
    // Keep requests coming for 3 s: each fails fast, none triggers a fetch.
    let start = Instant::now();
    let fetches_before = idp.requests();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) && n < 300 {
        let (r, took) =
            legate_tests::resilience::timed(HttpClient::http1().get(&rig.url("/"))).await;
        n += 1;
        if n > 1 || outcome(&r).0 != 200 {
            assert_eq!(
                outcome(&r),
                (503, Some("token-unavailable".to_owned())),
                "{}\n{}",
                r.describe(),
                rig.describe()
            );
        }
        assert!(took < Duration::from_millis(500), "failed fast: {took:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = idp.requests() - fetches_before;
    assert!(n > 50, "{n} requests");
    // One fetch per retry interval (1 s) over 3 s, whatever the request rate.
    assert!(
        (2..=4).contains(&during),
        "{during} fetches for {n} requests"
    );
    assert_eq!(a.requests().await, 0, "no request went out without a token");
    assert!(
        rig.metric(
            "legate_oauth2_token_fetches_total",
            &[("cluster", IDP), ("result", "failed")]
        )
        .await
            >= 3.0
    );

    // The endpoint recovers: the next retry brings a token.
    idp.set(Behaviour::default());
    eventually(WAIT, "a token after the outage", || async {
        let r = HttpClient::http1().get(&rig.url("/")).await;
        match bearer(&r) {
            Some(t) if t == "Bearer tok-1" => Ok(()),
            _ => Err(r.describe()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_is_kept_across_a_push_that_leaves_the_filter_alone() {
    let idp = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET, "").await;
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let b = Upstream::start("b", "v1", Protocol::Http1).await;
    let mut res = mesh(&a, Some(&idp));
    res.secrets.push(generic_secret(
        "oauth-client",
        Specifier::InlineString(CLIENT_SECRET.to_owned()),
    ));
    with_injector(&mut res, true, false, oauth2(&[], 1000));
    let rig = Rig::start(&res).await;
    let r = HttpClient::http1().get(&rig.url("/")).await;
    assert_eq!(
        bearer(&r).as_deref(),
        Some("Bearer tok-1"),
        "{}",
        rig.describe()
    );

    // A push that changes the upstream but not the filter: same token, no new fetch.
    let mut moved = mesh(&b, Some(&idp));
    moved.secrets = res.secrets.clone();
    with_injector(&mut moved, true, false, oauth2(&[], 1000));
    rig.apply(&moved).await;
    let r = HttpClient::http1().get(&rig.url("/")).await;
    assert_eq!(r.upstream(), Some("b"));
    assert_eq!(bearer(&r).as_deref(), Some("Bearer tok-1"));
    assert_eq!(idp.requests(), 1);

    // A changed filter (other scopes) gets its own token.
    let mut scoped = moved.clone();
    with_injector(&mut scoped, true, false, oauth2(&["x"], 1000));
    let idp_scope_mismatch = idp.requests();
    rig.apply(&scoped).await;
    eventually(WAIT, "the changed filter fetched", || async {
        (idp.requests() > idp_scope_mismatch)
            .then_some(())
            .ok_or_else(|| "no new fetch".to_owned())
    })
    .await;
}

/// The real control plane: a mesh file's `policies.credentials` and `secrets` entry with
/// `value` are compiled, the file is read and served over SDS as a generic secret, and a
/// rotated file reaches the proxy without a restart. Neither process shows the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_cp_serves_the_credential_of_a_mesh_policy() {
    use legate_tests::cp::ControlPlane;
    use legate_tests::process::TempDir;
    use legate_tests::{Legate, Mode, XdsFlags};
    let up = Upstream::start("api", "v1", Protocol::Http1).await;
    let dir = TempDir::new("cred-cp");
    dir.write("api-key", "cp-key-0a9f\n");
    dir.write("client-secret", &format!("{CLIENT_SECRET}\n"));
    let idp = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET, "read").await;
    let mesh = format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
secrets:
  - {{name: api-key, value: api-key}}
  - {{name: idp-client, value: client-secret}}
clusters:
  - {{name: idp, endpoints: [{{address: {idp}}}]}}
services:
  - name: keyed
    endpoints: [{{address: {up}}}]
    route: {{prefix: /keyed/, rewrite: /}}
    policies:
      credentials: {{header: x-api-key, secret: api-key}}
  - name: tokened
    endpoints: [{{address: {up}}}]
    route: {{prefix: /tokened/, rewrite: /}}
    policies:
      credentials:
        oauth2: {{token_url: 'http://idp.test/token', cluster: idp, client_id: '{CLIENT_ID}', client_secret: idp-client, scopes: [read]}}
  - name: plain
    endpoints: [{{address: {up}}}]
    route: {{prefix: /plain/, rewrite: /}}
"#,
        up = up.addr(),
        idp = idp.addr(),
    );
    let config = dir.write("mesh.yaml", &mesh);
    let cp = ControlPlane::start(&config, &dir.path().join("data")).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).initial_fetch_timeout("5s")).await;
    let key_of = |path: &'static str| {
        let legate = &legate;
        async move {
            let r = HttpClient::http1()
                .get(&legate.url("outbound", path).await)
                .await;
            (
                r.status.as_u16(),
                (r.status == 200)
                    .then(|| r.echo().headers.get("x-api-key").cloned())
                    .flatten(),
            )
        }
    };
    eventually(WAIT, "the key is injected", || async {
        match key_of("/keyed/x").await {
            (200, Some(k)) if k == "cp-key-0a9f" => Ok(()),
            other => Err(format!("{other:?}\n{}", legate.describe())),
        }
    })
    .await;
    assert_eq!(
        key_of("/plain/x").await,
        (200, None),
        "only on its own service"
    );

    // Rotated on disk: legate-cp re-reads it and pushes the new secret.
    dir.write("api-key", "cp-key-1b7c\n");
    eventually(WAIT, "the rotated key is injected", || async {
        match key_of("/keyed/x").await {
            (200, Some(k)) if k == "cp-key-1b7c" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for secret in ["cp-key-0a9f", "cp-key-1b7c", "s3cr:t", "tok-1"] {
        let dump = legate.admin_get("/config_dump").await.text();
        assert!(!dump.contains(secret), "{dump}");
        assert!(!legate.output().contains(secret), "{}", legate.output());
        assert!(!cp.log().contains(secret), "{}", cp.log());
    }
}

/// Without a control plane: a bootstrap's mesh with a `secrets` entry (`value` file) and a
/// route's `credentials`. The proxy reads the file itself and follows its rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_secret_file_is_injected_and_followed() {
    use legate_tests::Legate;
    use legate_tests::config::{bootstrap, indent};
    let up = Upstream::start("api", "v1", Protocol::Http1).await;
    let dir = tmp_dir("bootstrap");
    let key = dir.join("key");
    std::fs::write(&key, "b-key-3e1f\n").expect("write key");
    let routes = format!(
        "- name: outbound\n  virtual_hosts:\n    - name: all\n      domains: [\"*\"]\n      routes:\n        - match: {{prefix: /}}\n          forward: {{cluster: {SVC}}}\n          credentials: {{header: x-api-key, secret: key}}\n"
    );
    let mut config = bootstrap(
        "- {name: outbound, address: 127.0.0.1:0, route_config: outbound}",
        &routes,
        &[cluster(SVC, &[up.addr()])],
    );
    config.push_str(&indent(
        &format!("secrets:\n  - {{name: key, value: {}}}\n", key.display()),
        2,
    ));
    let legate = Legate::start(&config).await;
    let key_seen = || async {
        let r = HttpClient::http1()
            .get(&legate.url("outbound", "/").await)
            .await;
        (r.status == 200)
            .then(|| r.echo().headers.get("x-api-key").cloned())
            .flatten()
    };
    assert_eq!(
        key_seen().await.as_deref(),
        Some("b-key-3e1f"),
        "{}",
        legate.describe()
    );
    std::fs::write(&key, "b-key-9a0c\n").expect("rotate key");
    eventually(WAIT, "the rotated key is injected", || async {
        match key_seen().await {
            Some(k) if k == "b-key-9a0c" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let dump = legate.admin_get("/config_dump").await.text();
    assert!(!dump.contains("b-key-"), "{dump}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A generic secret over SDS that has not arrived: legate subscribes to it, waits the
/// initial fetch timeout, then serves the listener with the credential unavailable (401),
/// as Envoy does, and injects it from the push that brings it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_has_not_arrived_answers_401_until_it_does() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let mut res = mesh(&a, None);
    with_injector(&mut res, true, false, generic("x-api-key", "", "late-key"));
    // The listener comes up once the initial fetch timeout (1 s) for the secret passed.
    let rig = Rig::start(&res).await;
    let subscribed = rig
        .server
        .requests()
        .iter()
        .any(|r| r.type_url.ends_with("Secret") && r.names().contains("late-key"));
    assert!(
        subscribed,
        "legate asked for the secret\n{}",
        rig.describe()
    );
    let (status, cause, _) = seen(&rig, "x-api-key", &[]).await;
    assert_eq!(
        (status, cause.as_deref()),
        (401, Some("credential-unavailable")),
        "{}",
        rig.describe()
    );
    assert_eq!(a.requests().await, 0);

    let mut with_secret = res.clone();
    with_secret.secrets.push(generic_secret(
        "late-key",
        Specifier::InlineString("late-5c2b".to_owned()),
    ));
    rig.apply(&with_secret).await;
    let (status, _, value) = seen(&rig, "x-api-key", &[]).await;
    assert_eq!((status, value.as_deref()), (200, Some("late-5c2b")));
}
