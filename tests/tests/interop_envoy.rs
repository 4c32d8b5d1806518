//! Interoperability with real Envoy 1.40: the resources legate's compiler produces (the
//! same ones the control plane serves) are accepted by Envoy over ADS, in state-of-the-world
//! and delta, with no NACK, and route HTTP to local upstreams; a weight change moves
//! Envoy's traffic. Fails (never skips) when Envoy is missing: run `make peers`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use legate_snapshot::Resources;
use legate_tests::access_log::{default_format_fields, file_log, file_log_with, line_where};
use legate_tests::client::{HttpClient, ReqBody, empty, generated_chunked};
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::process::TempDir;
use legate_tests::resilience::{
    SVC, edit_hcm, retry, route_action, set_endpoint_health, set_panic_threshold, svc_mesh,
};
use legate_tests::xds_server::{ALL_TYPES, CDS, LDS, XdsServer};
use legate_tests::{Legate, Mode, Protocol, Upstream, XdsFlags, eventually};

fn mesh(v1: SocketAddr, v2: SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        r#"
proxy:
  # The limits compile to Envoy's connection_limit filter and request_headers_timeout.
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto, max_connections: 1000, request_headers_timeout: 10s}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: {w1}, endpoints: [{{address: {v1}}}]}}
      - {{name: v2, weight: {w2}, endpoints: [{{address: {v2}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
"#
    )
}

async fn versions_seen(url: &str, n: usize) -> (usize, usize) {
    let http = HttpClient::http1();
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..n {
        let r = http.get(url).await;
        r.assert_status(200);
        match r.echo().version.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected version {other}"),
        }
    }
    (v1, v2)
}

async fn envoy_accepts_and_routes(mode: EnvoyAds) {
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let v2 = Upstream::start("payments", "v2", Protocol::Auto).await;
    let xds = XdsServer::start().await;
    let pushes = xds.set_mesh(&mesh(v1.addr(), v2.addr(), 100, 0));
    let envoy = Envoy::start_ads(xds.addr(), mode, "envoy-1", "envoys").await;
    for push in &pushes {
        xds.wait_acked(push, Duration::from_secs(30)).await;
    }
    let addr = envoy.listener("outbound").await;
    let url = format!("http://{addr}/payments/charge");
    let (a, b) = versions_seen(&url, 20).await;
    assert_eq!((a, b), (20, 0), "all traffic on v1 at weights 100/0");
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_rejected").await,
        Some(0)
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected").await,
        Some(0)
    );

    // Shift everything to v2: Envoy's traffic follows.
    let pushes = xds.set_mesh(&mesh(v1.addr(), v2.addr(), 0, 100));
    for push in pushes
        .iter()
        .filter(|p| p.type_url != CDS && p.type_url != LDS)
    {
        xds.wait_acked(push, Duration::from_secs(30)).await;
    }
    eventually(Duration::from_secs(20), "traffic moves to v2", || async {
        let (a, b) = versions_seen(&url, 10).await;
        if a == 0 && b == 10 {
            Ok(())
        } else {
            Err(format!("v1={a} v2={b}"))
        }
    })
    .await;
    assert_eq!(
        envoy.stat("cluster_manager.cds.update_rejected").await,
        Some(0)
    );
    for t in ALL_TYPES {
        let nacks = xds.nacks_for(t);
        assert!(nacks.is_empty(), "Envoy NACKed {t}: {nacks:?}");
    }
    assert_eq!(
        envoy.stat("listener_manager.total_listeners_active").await,
        Some(1)
    );
}

/// Real Envoy and legate, each fed `mesh` (compiled by legate-cp's compiler) by an ADS server
/// of its own, once both have ACKed everything, Envoy without a NACK.
struct Pair {
    envoy: Envoy,
    legate: Legate,
    /// The servers, kept for the proxies' lifetime.
    _xds: (XdsServer, XdsServer),
}

async fn envoy_and_legate(mesh: &str) -> Pair {
    let envoy_xds = XdsServer::start().await;
    let pushes = envoy_xds.set_mesh(mesh);
    let envoy = Envoy::start_ads(envoy_xds.addr(), EnvoyAds::Sotw, "envoy-1", "envoys").await;
    envoy_xds
        .wait_all_acked(&pushes, Duration::from_secs(30))
        .await;
    for t in ALL_TYPES {
        let nacks = envoy_xds.nacks_for(t);
        assert!(nacks.is_empty(), "Envoy NACKed {t}: {nacks:?}");
    }
    let legate_xds = XdsServer::start().await;
    let pushes = legate_xds.set_mesh(mesh);
    let legate = Legate::start_xds(&XdsFlags::new(&legate_xds.url(), Mode::Sotw)).await;
    legate_xds
        .wait_all_acked(&pushes, Duration::from_secs(30))
        .await;
    Pair {
        envoy,
        legate,
        _xds: (envoy_xds, legate_xds),
    }
}

#[tokio::test]
async fn envoy_accepts_compiled_resources_sotw() {
    envoy_accepts_and_routes(EnvoyAds::Sotw).await;
}

#[tokio::test]
async fn envoy_accepts_compiled_resources_delta() {
    envoy_accepts_and_routes(EnvoyAds::Delta).await;
}

// ---------------------------------------------------------------------------------------------
// Access logs: the same HCM access_log on Envoy and on legate

/// One field per value both proxies must agree on (and the request's id first).
const CUSTOM_FORMAT: &str = "%REQ(X-TEST-ID)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|\
%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|%BYTES_RECEIVED%|%BYTES_SENT%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|\
%REQ(:METHOD)%|%REQ(:PATH)%|%PROTOCOL%|%RESPONSE_CODE_DETAILS%|%REQ(:AUTHORITY)%\n";

/// A proxy under test: Envoy or legate, on its own control plane, logging to its own files.
struct Side {
    name: &'static str,
    xds: XdsServer,
    dir: TempDir,
    addr: SocketAddr,
}

impl Side {
    async fn new(name: &'static str) -> Side {
        Side {
            name,
            xds: XdsServer::start().await,
            dir: TempDir::new(&format!("alog-{name}")),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// `res` with this side's two access logs: Envoy's default format and [`CUSTOM_FORMAT`].
    fn resources(&self, res: &Resources) -> Resources {
        let mut res = res.clone();
        let (default, custom) = (self.default_log(), self.custom_log());
        edit_hcm(&mut res, |h| {
            h.access_log = vec![
                file_log_with(&default, None),
                file_log(&custom, CUSTOM_FORMAT),
            ];
        });
        res
    }

    fn default_log(&self) -> PathBuf {
        self.dir.path().join("default.log")
    }

    fn custom_log(&self) -> PathBuf {
        self.dir.path().join("custom.log")
    }

    async fn apply(&self, res: &Resources) {
        let pushes = self.xds.set_resources(&self.resources(res));
        self.xds
            .wait_all_acked(&pushes, Duration::from_secs(30))
            .await;
    }

    /// Sends the request with `x-test-id: id` and a fixed `Host` (the listeners' ports
    /// differ), returning the status.
    async fn send(&self, method: &str, path: &str, id: &str, body: ReqBody) -> u16 {
        let url = format!("http://{}{path}", self.addr);
        let headers = [("x-test-id", id), ("host", "svc.test")];
        let r = HttpClient::http1()
            .request(method, &url, &headers, body)
            .await;
        r.status.as_u16()
    }

    /// The custom-format line of request `id`, split into fields.
    async fn custom_line(&self, id: &str) -> Vec<String> {
        let what = format!("{}'s line for {id}", self.name);
        line_where(&self.custom_log(), &what, |l| {
            l.split('|').next() == Some(id)
        })
        .await
        .split('|')
        .map(str::to_owned)
        .collect()
    }

    /// The default-format line of the request for `path`, split into fields.
    async fn default_line(&self, path: &str) -> Vec<String> {
        let what = format!("{}'s default line for {path}", self.name);
        let needle = format!(" {path} ");
        default_format_fields(
            &line_where(&self.default_log(), &what, |l| l.contains(&needle)).await,
        )
    }
}

/// A request both proxies get.
struct Case {
    id: &'static str,
    method: &'static str,
    path: &'static str,
    /// Bytes of a chunked request body; 0: none.
    body: u64,
    status: u16,
}

impl Case {
    async fn send_to(&self, sides: &[&Side]) {
        for s in sides {
            let body = if self.body > 0 {
                generated_chunked(self.body, 1000)
            } else {
                empty()
            };
            let status = s.send(self.method, self.path, self.id, body).await;
            assert_eq!(status, self.status, "{}: {}", s.name, self.id);
        }
    }
}

#[tokio::test]
async fn access_logs_agree_with_envoy() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let mut res = svc_mesh(&[a.addr()]);
    let mut legate = Side::new("legate").await;
    let mut envoy = Side::new("envoy").await;

    let pushes = legate.xds.set_resources(&legate.resources(&res));
    let legate_process = Legate::start_xds(&XdsFlags::new(&legate.xds.url(), Mode::Sotw)).await;
    legate
        .xds
        .wait_all_acked(&pushes, Duration::from_secs(30))
        .await;
    legate.addr = legate_process.listener_addr("outbound").await;

    let pushes = envoy.xds.set_resources(&envoy.resources(&res));
    let envoy_process =
        Envoy::start_ads(envoy.xds.addr(), EnvoyAds::Sotw, "envoy-1", "envoys").await;
    envoy
        .xds
        .wait_all_acked(&pushes, Duration::from_secs(30))
        .await;
    envoy.addr = envoy_process.listener("outbound").await;
    let sides = [&envoy, &legate];

    let case = |id, method, path, body, status| Case {
        id,
        method,
        path,
        body,
        status,
    };
    let cases = [
        case("ok", "GET", "/ok?size=10", 0, 200),
        case("upload", "PUT", "/upload?size=20", 3000, 200),
        // With a retry policy: retries exhausted on the upstream's 503s.
        case("retry", "GET", "/retry?status=503&size=30", 0, 503),
        // The only host unhealthy, no panic mode: no healthy upstream.
        case("uh", "GET", "/uh", 0, 503),
    ];
    for c in &cases[..2] {
        c.send_to(&sides).await;
    }
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    for s in sides {
        s.apply(&res).await;
    }
    cases[2].send_to(&sides).await;
    route_action(&mut res).retry_policy = None;
    set_endpoint_health(&mut res, SVC, 0, HealthStatus::Unhealthy);
    set_panic_threshold(&mut res, SVC, 0.0);
    for s in sides {
        s.apply(&res).await;
    }
    cases[3].send_to(&sides).await;

    for Case { id, path, .. } in &cases {
        let e = envoy.custom_line(id).await;
        let l = legate.custom_line(id).await;
        assert_eq!(e.len(), l.len(), "envoy {e:?}\nlegate {l:?}");
        // Code, flags, cluster, host, bytes received, attempts, method, path, protocol,
        // authority.
        for i in [1, 2, 3, 4, 5, 7, 8, 9, 10, 12] {
            assert_eq!(e[i], l[i], "field {i} of {id}:\nenvoy  {e:?}\nlegate {l:?}");
        }
        // An upstream's answer: the same body, and Envoy's detail.
        let via_upstream = e[11] == "via_upstream";
        assert_eq!(via_upstream, l[11] == "via_upstream", "{id}: {e:?} / {l:?}");
        if via_upstream {
            assert_eq!(e[6], l[6], "bytes sent of {id}: {e:?} / {l:?}");
        }

        let e = envoy.default_line(path).await;
        let l = legate.default_line(path).await;
        assert_eq!((e.len(), l.len()), (13, 13), "envoy {e:?}\nlegate {l:?}");
        for f in [&e, &l] {
            assert!(f[0].len() == 24 && f[0].ends_with('Z'), "start time {f:?}");
        }
        // Request line, code, flags, bytes received, user agent, authority, upstream host.
        for i in [1, 2, 3, 4, 9, 11, 12] {
            assert_eq!(
                e[i], l[i],
                "default field {i} of {id}:\nenvoy  {e:?}\nlegate {l:?}"
            );
        }
        if via_upstream {
            assert_eq!(e[5], l[5], "default bytes sent of {id}: {e:?} / {l:?}");
        }
        // Each logs the request id its connection manager set (generated: a UUID).
        for f in [&e, &l] {
            assert_eq!(f[10].len(), 36, "x-request-id of {id}: {f:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Local rate limiting and fault injection: the mesh's `policies.rate_limit` and
// `policies.fault` on Envoy and on legate

/// What each of `n` requests got: status, `x-ratelimit-limit`, `x-ratelimit-remaining` and
/// `x-ratelimit-reset`.
type RateLimitAnswer = (u16, Option<String>, Option<String>, Option<String>);

async fn rate_limited_answers(addr: SocketAddr, n: usize) -> Vec<RateLimitAnswer> {
    let http = HttpClient::http1();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = http.get(&format!("http://{addr}/payments/x")).await;
        let h = |name: &str| r.header(name).map(str::to_owned);
        out.push((
            r.status.as_u16(),
            h("x-ratelimit-limit"),
            h("x-ratelimit-remaining"),
            h("x-ratelimit-reset"),
        ));
    }
    out
}

#[tokio::test]
async fn rate_limit_and_fault_policies_act_the_same_on_envoy_and_legate() {
    let v1 = Upstream::start("payments", "v1", Protocol::Http1).await;
    let mesh = format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
services:
  - name: payments
    endpoints: [{{address: {}}}]
    route: {{prefix: /payments/, rewrite: /}}
    policies:
      # Three at once, then one a minute: the test never sees a refill.
      rate_limit: {{requests: 1, per: 60s, burst: 3}}
  - name: chaos
    endpoints: [{{address: {}}}]
    route: {{prefix: /chaos/, rewrite: /}}
    policies:
      fault: {{delay: {{duration: 200ms}}, abort: {{status: 418}}}}
  - name: keyed
    endpoints: [{{address: {}}}]
    route: {{prefix: /keyed/, rewrite: /}}
    policies:
      rate_limit: {{requests: 1, per: 60s, burst: 2, per_header: x-api-key}}
"#,
        v1.addr(),
        v1.addr(),
        v1.addr()
    );
    let Pair { envoy, legate, .. } = envoy_and_legate(&mesh).await;

    let e = rate_limited_answers(envoy.listener("outbound").await, 5).await;
    let l = rate_limited_answers(legate.listener_addr("outbound").await, 5).await;
    let statuses = |v: &[RateLimitAnswer]| v.iter().map(|a| a.0).collect::<Vec<_>>();
    assert_eq!(statuses(&e), vec![200, 200, 200, 429, 429], "envoy {e:?}");
    assert_eq!(statuses(&l), statuses(&e), "legate {l:?}\nenvoy {e:?}");
    // The same headers too: the reset is 0 while a token is left, else the seconds until
    // the next one (60, rounded up, on both within the test's first second).
    assert_eq!(l, e, "legate {l:?}\nenvoy  {e:?}");
    assert_eq!(v1.requests().await, 6, "three from each proxy");

    // policies.fault: delayed, then aborted with the configured status, on both.
    for addr in [
        envoy.listener("outbound").await,
        legate.listener_addr("outbound").await,
    ] {
        let start = std::time::Instant::now();
        let r = HttpClient::http1()
            .get(&format!("http://{addr}/chaos/x"))
            .await;
        assert_eq!(r.status.as_u16(), 418, "{addr}: {}", r.text());
        // Envoy's timers may fire a few milliseconds early by this clock (198 ms seen).
        assert!(
            start.elapsed() >= Duration::from_millis(180),
            "{addr} delayed: answered after {:?}: {:?} {}",
            start.elapsed(),
            r.headers,
            r.text()
        );
    }
    assert_eq!(
        v1.requests().await,
        6,
        "aborted requests never reach the upstream"
    );

    // policies.rate_limit.per_header: a bucket of two per API key, one more for requests
    // without a key; the same answers from both.
    let mut answers = Vec::new();
    for addr in [
        envoy.listener("outbound").await,
        legate.listener_addr("outbound").await,
    ] {
        let http = HttpClient::http1();
        let url = format!("http://{addr}/keyed/x");
        let mut got = Vec::new();
        for key in ["a", "a", "a", "b", "", "", "", "b", "b"] {
            let headers: Vec<(&str, &str)> = if key.is_empty() {
                Vec::new()
            } else {
                vec![("x-api-key", key)]
            };
            let r = http.request("GET", &url, &headers, empty()).await;
            got.push(r.status.as_u16());
        }
        answers.push(got);
    }
    let want = vec![200, 200, 429, 200, 200, 200, 429, 200, 429];
    assert_eq!(answers[0], want, "envoy");
    assert_eq!(answers[1], want, "legate");
}

/// gRPC as gRPC on both: legate-cp's compiled `retries.on: [unavailable]` and
/// `grpc_timeout_max` are accepted by Envoy, and a grpcio client through Envoy and through
/// legate sees the same: a call failing once with UNAVAILABLE is retried and succeeds, and a
/// client deadline above the cap is cut to the cap (DEADLINE_EXCEEDED well before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_retries_and_timeouts_act_the_same_on_envoy_and_legate() {
    let server = legate_tests::grpc::grpc_server().await;
    let mesh = format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: http2}}
services:
  - name: greeter
    protocol: http2
    endpoints: [{{address: {}}}]
    route: {{prefix: /, rewrite: /}}
    policies:
      timeout: 10s
      grpc_timeout_max: 300ms
      retries: {{on: [unavailable], attempts: 2, non_idempotent: true}}
"#,
        server.addr()
    );
    let Pair { envoy, legate, .. } = envoy_and_legate(&mesh).await;

    use legate_tests::grpc::{call, calls};
    for (who, addr) in [
        ("envoy", envoy.listener("outbound").await),
        ("legate", legate.listener_addr("outbound").await),
    ] {
        let key = format!("{who}-retry");
        let c = call(addr, "Unary", &format!("key={key};fail=1"), Some(10.0)).await;
        assert_eq!(c.code, "OK", "{who}: {c:?}");
        assert_eq!(c.messages, ["ok attempt=2"], "{who}: {c:?}");
        assert_eq!(
            calls(&server, "Unary", &key),
            2,
            "{who}: {}",
            server.output()
        );

        let key = format!("{who}-slow");
        let c = call(addr, "Unary", &format!("key={key};sleep=3"), Some(5.0)).await;
        assert_eq!(c.code, "DEADLINE_EXCEEDED", "{who}: {c:?}");
        assert!(c.seconds < 2.5, "{who}: {c:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Consistent hashing: the mesh's `lb_policy: ring_hash | maglev` and `policies.hash` on Envoy
// and on legate

/// Who answers each of `keys` (header `x-user`) at `addr`, asked three times each; panics
/// when a key is answered by two upstreams.
async fn sticky_hosts(addr: SocketAddr, prefix: &str, keys: usize) -> Vec<String> {
    let http = HttpClient::http1();
    let mut out = Vec::new();
    for k in 0..keys {
        let key = format!("user-{k}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let r = http
                .request(
                    "GET",
                    &format!("http://{addr}{prefix}x"),
                    &[("x-user", &key)],
                    empty(),
                )
                .await;
            assert_eq!(r.status.as_u16(), 200, "{addr}: {}", r.describe());
            seen.insert(r.upstream().unwrap_or_default().to_owned());
        }
        assert_eq!(
            seen.len(),
            1,
            "{addr}{prefix}: key {key} answered by {seen:?}"
        );
        out.extend(seen);
    }
    out
}

#[tokio::test]
async fn hash_policies_keep_keys_on_one_host_on_envoy_and_legate() {
    let mut ups = Vec::new();
    for name in ["c0", "c1", "c2"] {
        ups.push(Upstream::start(name, "v1", Protocol::Http1).await);
    }
    let endpoints = ups
        .iter()
        .map(|u| format!("{{address: {}}}", u.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let mesh = format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
services:
  - name: carts
    lb_policy: ring_hash
    endpoints: [{endpoints}]
    route: {{prefix: /carts/, rewrite: /}}
    policies:
      hash: {{header: x-user}}
  - name: sessions
    lb_policy: maglev
    endpoints: [{endpoints}]
    route: {{prefix: /sessions/, rewrite: /}}
    policies:
      hash: {{header: x-user}}
  - name: sticky
    lb_policy: ring_hash
    endpoints: [{endpoints}]
    route: {{prefix: /sticky/, rewrite: /}}
    policies:
      hash: {{cookie: {{name: sticky, ttl: 1h, path: /}}}}
"#
    );
    let Pair { envoy, legate, .. } = envoy_and_legate(&mesh).await;
    let (e, l) = (
        envoy.listener("outbound").await,
        legate.listener_addr("outbound").await,
    );

    // Ring hash: each proxy keeps every key on one host and spreads the keys.
    for addr in [e, l] {
        let hosts = sticky_hosts(addr, "/carts/", 24).await;
        let used: std::collections::BTreeSet<&String> = hosts.iter().collect();
        assert!(used.len() >= 2, "{addr}: 24 keys on {used:?}");
    }
    // Maglev is built as Envoy builds it (same hash function, keys, order and weighting),
    // so a key lands on the same host behind both proxies.
    assert_eq!(
        sticky_hosts(l, "/sessions/", 24).await,
        sticky_hosts(e, "/sessions/", 24).await,
        "legate's Maglev placement differs from Envoy's"
    );

    // A generated cookie: the same attributes from both, and it keeps the client where its
    // first request went.
    for addr in [e, l] {
        let http = HttpClient::http1();
        let first = http.get(&format!("http://{addr}/sticky/x")).await;
        assert_eq!(first.status.as_u16(), 200, "{addr}: {}", first.describe());
        let set = first
            .header("set-cookie")
            .unwrap_or_else(|| panic!("{addr}: no set-cookie: {}", first.describe()))
            .to_owned();
        let (pair, attributes) = set.split_once("; ").expect("attributes");
        assert_eq!(
            attributes, "Max-Age=3600; Path=/; HttpOnly",
            "{addr}: {set}"
        );
        assert!(pair.starts_with("sticky=\""), "{addr}: {set}");
        let host = first.upstream().unwrap_or_default().to_owned();
        for _ in 0..5 {
            let r = http
                .request(
                    "GET",
                    &format!("http://{addr}/sticky/x"),
                    &[("cookie", pair)],
                    empty(),
                )
                .await;
            assert_eq!(
                r.upstream(),
                Some(host.as_str()),
                "{addr}: {}",
                r.describe()
            );
            assert!(r.header("set-cookie").is_none(), "{addr}: {}", r.describe());
        }
    }
}

/// `policies.credentials` compiled by legate's model: real Envoy 1.40 accepts the credential
/// injectors (generic over SDS, and OAuth2 client credentials against a real token
/// endpoint) and both proxies inject the same headers.
#[tokio::test]
async fn credential_policies_inject_the_same_headers_on_envoy_and_legate() {
    use legate_tests::oauth::TokenEndpoint;
    let up = Upstream::start("api", "v1", Protocol::Http1).await;
    let dir = TempDir::new("cred-interop");
    let key = dir.path().join("api-key");
    let client = dir.path().join("client-secret");
    // Without a final line end: Envoy sends a file's bytes as they are (legate drops a
    // trailing line end).
    std::fs::write(&key, "k-7d2e").expect("write key");
    std::fs::write(&client, "cs-1").expect("write client secret");
    let idp = TokenEndpoint::start("legate", "cs-1", "read").await;
    let mesh = format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0}}
secrets:
  - {{name: api-key, value: {key}}}
  - {{name: idp-client, value: {client}}}
clusters:
  - {{name: idp, endpoints: [{{address: {idp}}}]}}
services:
  - name: keyed
    endpoints: [{{address: {up}}}]
    route: {{prefix: /keyed/, rewrite: /}}
    policies:
      credentials: {{header: x-api-key, secret: api-key, overwrite: false}}
  - name: tokened
    endpoints: [{{address: {up}}}]
    route: {{prefix: /tokened/, rewrite: /}}
    policies:
      credentials:
        oauth2: {{token_url: 'http://idp.test/oauth/token', cluster: idp, client_id: legate, client_secret: idp-client, scopes: [read]}}
  - name: plain
    endpoints: [{{address: {up}}}]
    route: {{prefix: /plain/, rewrite: /}}
"#,
        key = key.display(),
        client = client.display(),
        idp = idp.addr(),
        up = up.addr(),
    );
    let Pair { envoy, legate, .. } = envoy_and_legate(&mesh).await;

    let mut answers = Vec::new();
    for addr in [
        envoy.listener("outbound").await,
        legate.listener_addr("outbound").await,
    ] {
        let http = HttpClient::http1();
        let seen = |r: &legate_tests::client::HttpResponse, h: &str| {
            assert_eq!(r.status.as_u16(), 200, "{addr}: {}", r.describe());
            r.echo().headers.get(h).cloned()
        };
        let keyed = http.get(&format!("http://{addr}/keyed/x")).await;
        let kept = http
            .get_with(&format!("http://{addr}/keyed/x"), &[("x-api-key", "mine")])
            .await;
        // The token may still be on its way when the listener comes up: Envoy then
        // answers 401, so ask until a token is there.
        let tokened = eventually(Duration::from_secs(10), "a token is injected", || async {
            let r = http.get(&format!("http://{addr}/tokened/x")).await;
            match r.status.as_u16() {
                200 => Ok(r),
                _ => Err(format!(
                    "{}\ntoken endpoint: {} requests, malformed {:?}",
                    r.describe(),
                    idp.requests(),
                    idp.malformed()
                )),
            }
        })
        .await;
        let plain = http.get(&format!("http://{addr}/plain/x")).await;
        answers.push((
            seen(&keyed, "x-api-key"),
            seen(&kept, "x-api-key"),
            seen(&tokened, "authorization").map(|t| t.starts_with("Bearer tok-")),
            seen(&plain, "x-api-key").or(seen(&plain, "authorization")),
        ));
    }
    assert_eq!(
        answers[0],
        (
            Some("k-7d2e".to_owned()),
            Some("mine".to_owned()),
            Some(true),
            None
        ),
        "envoy"
    );
    assert_eq!(answers[1], answers[0], "legate like envoy");
    assert_eq!(idp.malformed(), (0, None), "both speak RFC 6749 §4.4");
    // Envoy 1.40 sends the client credentials in the form body whatever `auth_type` says;
    // legate uses HTTP Basic (`auth_type: BASIC_AUTH`, the default), as RFC 6749 §2.3.1
    // recommends. One token each.
    assert_eq!((idp.requests(), idp.body_auth()), (2, 1));
}
