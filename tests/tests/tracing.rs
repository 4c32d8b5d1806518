//! Traces (issue 15 item 1), end to end: the real `legate`, real demo upstreams and a test
//! OTLP/gRPC receiver on the official protos. Tracing is configured by the mesh's
//! `telemetry.tracing`, which compiles to Envoy's HCM `tracing` (OpenTelemetry provider over
//! a collector cluster): once as a static bootstrap, once served over xDS.

use std::time::Duration;

use legate_tests::client::HttpClient;
use legate_tests::config::{self, indent};
use legate_tests::cp::ControlPlane as Cp;
use legate_tests::otlp::{OtlpReceiver, ReceivedSpan};
use legate_tests::peers::{Envoy, EnvoyAds};
use legate_tests::resilience::{Rig, SVC, Unaccepting, edit_hcm, retry, route_action};
use legate_tests::xds_server::Mode;
use legate_tests::xds_server::mesh_resources;
use legate_tests::{Legate, Protocol, Upstream, XdsFlags, closed_port};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

const WAIT: Duration = Duration::from_secs(10);

/// A mesh forwarding everything to cluster `svc`, not traced.
fn plain_mesh(upstream: std::net::SocketAddr) -> String {
    config::single_vhost_mesh(
        &format!("- match: {{prefix: /}}\n  forward: {{cluster: {SVC}, timeout: 10s}}"),
        &[config::cluster(SVC, &[upstream])],
    )
}

/// [`plain_mesh`], traced to `collector` at `sampling`.
fn traced_mesh(upstream: std::net::SocketAddr, collector: &str, sampling: &str) -> String {
    let mut mesh = plain_mesh(upstream);
    mesh.push_str(&format!(
        "telemetry:\n  tracing: {{collector: \"{collector}\", sampling: \"{sampling}\", service_name: tests}}\n"
    ));
    mesh
}

fn bootstrap(mesh: &str) -> String {
    format!(
        "node: {{id: test, cluster: tests}}\nadmin: {{address: 127.0.0.1:0}}\ndrain_timeout: 1s\nmesh:\n{}",
        indent(mesh, 2)
    )
}

async fn start_static(mesh: &str) -> (Legate, String) {
    let legate = Legate::start(&bootstrap(mesh)).await;
    let addr = legate.listener_addr("outbound").await;
    (legate, format!("http://{addr}"))
}

fn servers(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .collect()
}

/// Sends one request that a parent forces into the trace and waits until its server span
/// has arrived. Spans leave in the order they end, through one queue and one export at a
/// time, and every earlier request had ended before this one was sent, so once it is in,
/// everything sampled before it is in too. (Waiting until "exported equals received" does
/// not do that: with a batch still waiting for its delay, both are equal and short.)
async fn flush_through(client: &HttpClient, url: &str, otlp: &OtlpReceiver) {
    const FORCED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = client.get_with(url, &[("traceparent", FORCED)]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme[after_scheme.find('/').expect("a path in the URL")..].to_string();
    legate_tests::eventually(WAIT, "the marker's span arrives", || async {
        let spans = otlp.spans();
        if servers(&spans)
            .iter()
            .any(|s| s.attributes["url.path"] == path)
        {
            Ok(())
        } else {
            Err(format!("{} spans so far, not {path}", spans.len()))
        }
    })
    .await;
}

fn clients(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_server_span_with_two_attempt_spans_over_xds() {
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let mut res = mesh_resources(&traced_mesh(up.addr(), &otlp.addr.to_string(), "100%"));
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    let rig = Rig::start(&res).await;

    let r = HttpClient::http1()
        .with_timeout(WAIT)
        .get(&rig.url("/retried?status=503"))
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.describe());
    let spans = otlp
        .wait_for(WAIT, "one server and two client spans", |s| {
            servers(s).len() == 1 && clients(s).len() == 2
        })
        .await;
    let server = servers(&spans)[0];
    assert_eq!(server.service_name, "tests");
    assert_eq!(server.parent_span_id, "", "a root span");
    assert_eq!(server.attributes["http.request.method"], "GET");
    assert_eq!(server.attributes["url.path"], "/retried");
    assert_eq!(server.attributes["http.response.status_code"], "503");
    assert_eq!(server.attributes["network.protocol.version"], "1.1");
    for c in clients(&spans) {
        assert_eq!(c.trace_id, server.trace_id, "same trace");
        assert_eq!(c.parent_span_id, server.span_id, "child of the server span");
        assert_eq!(c.attributes["http.response.status_code"], "503");
    }
    let resends: Vec<_> = clients(&spans)
        .iter()
        .map(|c| c.attributes.get("http.request.resend_count").cloned())
        .collect();
    assert!(
        resends.contains(&None) && resends.contains(&Some("1".to_owned())),
        "{resends:?}"
    );

    // The upstream sees the same trace in traceparent, and the attempt span as parent.
    otlp.clear();
    let r = HttpClient::http1()
        .with_timeout(WAIT)
        .get(&rig.url("/echo"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let echo = r.echo();
    let tp = echo
        .headers
        .get("traceparent")
        .expect("traceparent upstream")
        .clone();
    let spans = otlp
        .wait_for(WAIT, "server and client span", |s| {
            servers(s).len() == 1 && clients(s).len() == 1
        })
        .await;
    let client = clients(&spans)[0];
    assert_eq!(tp, format!("00-{}-{}-01", client.trace_id, client.span_id));
    assert_eq!(client.trace_id, servers(&spans)[0].trace_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_are_honoured_and_b3_goes_out_as_it_came_with_a_static_bootstrap() {
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let (_legate, base) =
        start_static(&traced_mesh(up.addr(), &otlp.addr.to_string(), "100%")).await;
    let client = HttpClient::http1().with_timeout(WAIT);

    // A parent that says "not sampled": no spans, and its header goes upstream untouched.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let r = client
        .get_with(&format!("{base}/unsampled"), &[("traceparent", unsampled)])
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    assert_eq!(
        r.echo().headers.get("traceparent").map(String::as_str),
        Some(unsampled)
    );

    // A sampled W3C parent: the trace continues under it. Its spans arriving also shows
    // the unsampled request's would have arrived by now (one queue, in order).
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client
        .get_with(
            &format!("{base}/sampled"),
            &[("traceparent", sampled), ("x-request-id", "rid-1")],
        )
        .await;
    assert_eq!(
        r.echo().headers.get("x-request-id").map(String::as_str),
        Some("rid-1")
    );
    let spans = otlp
        .wait_for(WAIT, "the sampled request's spans", |s| {
            servers(s).len() == 1
        })
        .await;
    assert!(
        spans.iter().all(|s| s
            .attributes
            .get("url.path")
            .is_none_or(|p| p != "/unsampled")),
        "no span for the unsampled request: {spans:#?}"
    );
    let server = servers(&spans)[0];
    assert_eq!(server.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server.parent_span_id, "00f067aa0ba902b7");

    // B3 multi in: B3 multi and traceparent out, same trace.
    otlp.clear();
    let r = client
        .get_with(
            &format!("{base}/b3multi"),
            &[
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "1"),
            ],
        )
        .await;
    let h = r.echo().headers;
    assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(h["x-b3-sampled"], "1");
    assert_ne!(
        h["x-b3-spanid"], "e457b5a2e4d86bd1",
        "the attempt's own span"
    );
    assert!(
        h["traceparent"].starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-"),
        "{h:?}"
    );

    // B3 single in: b3 and traceparent out.
    let r = client
        .get_with(
            &format!("{base}/b3single"),
            &[("b3", "a3ce929d0e0e4736a3ce929d0e0e4736-e457b5a2e4d86bd1-1")],
        )
        .await;
    let h = r.echo().headers;
    assert!(
        h["b3"].starts_with("a3ce929d0e0e4736a3ce929d0e0e4736-"),
        "{h:?}"
    );
    assert!(
        h["b3"].contains("-1-"),
        "sampled, with the server span as parent: {h:?}"
    );
    assert!(h["traceparent"].starts_with("00-a3ce929d0e0e4736a3ce929d0e0e4736-"));
    otlp.wait_for(WAIT, "spans of both B3 requests", |s| servers(s).len() == 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_sampling_holds_within_binomial_bounds() {
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let (legate, base) = start_static(&traced_mesh(up.addr(), &otlp.addr.to_string(), "10%")).await;
    let client = HttpClient::http1().with_timeout(WAIT);
    const N: usize = 1000;
    for i in 0..N {
        let r = client.get(&format!("{base}/n{i}")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    }
    flush_through(&client, &format!("{base}/marker"), &otlp).await;
    let m = legate.metrics().await;
    for outcome in ["dropped_queue_full", "export_failed"] {
        let n = m.get_or_zero("legate_tracing_spans_total", &[("outcome", outcome)]);
        assert_eq!(n, 0.0, "{outcome}: every sampled span is exported");
    }
    let spans = otlp.spans();
    let exported = spans.len();
    let servers = servers(&spans)
        .iter()
        .filter(|s| s.attributes["url.path"].starts_with("/n"))
        .count();
    // Binomial(1000, 0.1): mean 100, sd 9.5; ±5 sd.
    assert!(
        (52..=148).contains(&servers),
        "{servers} of {N} sampled ({exported} spans)"
    );
}

/// `overall_sampling` and `client_sampling` as Envoy's HCM applies them, set on the HCM that
/// legate gets over xDS: with `random_sampling` 20 % and `overall_sampling` 10 %, 10 % of
/// requests are traced (the cap, not 2 %, the product); a request with `x-client-trace-id`
/// that `client_sampling` (0 %) does not pick still gets `random_sampling`'s chance, capped
/// the same way (10 %, not 0 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overall_sampling_caps_random_and_client_sampling_over_xds() {
    use envoy_types::pb::envoy::r#type::v3::Percent;
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let mut res = mesh_resources(&traced_mesh(up.addr(), &otlp.addr.to_string(), "20%"));
    edit_hcm(&mut res, |hcm| {
        let tracing = hcm.tracing.as_mut().expect("the mesh's tracing");
        tracing.overall_sampling = Some(Percent { value: 10.0 });
        tracing.client_sampling = Some(Percent { value: 0.0 });
    });
    let rig = Rig::start(&res).await;
    let client = HttpClient::http1().with_timeout(WAIT);
    const N: usize = 1000;
    for i in 0..N {
        let r = client.get(&rig.url(&format!("/random/{i}"))).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
        let r = client
            .get_with(
                &rig.url(&format!("/client/{i}")),
                &[("x-client-trace-id", "e2e")],
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    }
    flush_through(&client, &rig.url("/marker"), &otlp).await;
    for outcome in ["dropped_queue_full", "export_failed"] {
        let n = rig
            .metric("legate_tracing_spans_total", &[("outcome", outcome)])
            .await;
        assert_eq!(n, 0.0, "{outcome}: every sampled span is exported");
    }
    let spans = otlp.spans();
    for prefix in ["/random/", "/client/"] {
        let traced = servers(&spans)
            .iter()
            .filter(|s| s.attributes["url.path"].starts_with(prefix))
            .count();
        // Binomial(1000, 0.1): mean 100, sd 9.5; ±5 sd. 2 % would be 20, 0 % none.
        assert!(
            (52..=148).contains(&traced),
            "{prefix}: {traced} of {N} traced"
        );
    }
}

/// With the collector down or hung, requests still succeed and take what they take without
/// tracing: the same requests, alternated between a legate without tracing and legates
/// tracing everything to a closed port and to a collector that never completes a TCP
/// handshake, have the same latency within noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_for_requests() {
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let down = closed_port();
    // Its accept queue is full: a connection attempt hangs until the connect timeout.
    let hung = Unaccepting::start()
        .await
        .expect("a listener whose accept queue fills (the kernel accepted beyond it)");
    let hung_addr = hung.addr.to_string();
    let (legate, to_down) = start_static(&traced_mesh(up.addr(), &down.to_string(), "100%")).await;
    let (_hung_legate, to_hung) = start_static(&traced_mesh(up.addr(), &hung_addr, "100%")).await;
    let (_plain_legate, plain) = start_static(&plain_mesh(up.addr())).await;
    let client = HttpClient::http1().with_timeout(WAIT);
    const N: usize = 200;
    let mut times = [(); 3].map(|()| Vec::with_capacity(N));
    for i in 0..N {
        for (base, times) in [&plain, &to_down, &to_hung]
            .into_iter()
            .zip(times.iter_mut())
        {
            let started = std::time::Instant::now();
            let r = client.get(&format!("{base}/n{i}")).await;
            times.push(started.elapsed());
            assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
            assert_eq!(r.legate_error(), None);
        }
    }
    for t in &mut times {
        t.sort_unstable();
    }
    let [without, ..] = &times;
    for (with, collector) in times[1..].iter().zip(["down", "hung"]) {
        // A request that waited on the collector would wait for a connect or an export
        // timeout (seconds); the margins are far below that and above a shared machine's
        // noise.
        let (median, median_without) = (with[N / 2], without[N / 2]);
        let (p99, p99_without) = (with[N * 99 / 100], without[N * 99 / 100]);
        assert!(
            median <= median_without * 2 + Duration::from_millis(5),
            "median {median:?} with the collector {collector}, {median_without:?} without tracing"
        );
        assert!(
            p99 <= p99_without * 3 + Duration::from_millis(50),
            "p99 {p99:?} with the collector {collector}, {p99_without:?} without tracing"
        );
    }
    legate_tests::eventually(WAIT, "failed exports are counted", || async {
        let m = legate.metrics().await;
        let failed = m.get_or_zero(
            "legate_tracing_spans_total",
            &[("outcome", "export_failed")],
        );
        if failed > 0.0 {
            Ok(())
        } else {
            Err(format!("export_failed {failed}"))
        }
    })
    .await;
}

/// Tracing and an access log on the same listener: the request is traced as without the
/// log, and its line carries the trace id (`%TRACE_ID%`) its spans have; an unsampled
/// request's line has `-`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_request_is_traced_and_its_line_names_the_trace() {
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let dir = legate_tests::process::TempDir::new("legate-trace-log");
    let log = dir.path().join("access.log");
    let mut mesh = traced_mesh(up.addr(), &otlp.addr.to_string(), "100%");
    mesh.push_str(&format!(
        "  access_log: {{path: \"{}\", format: \"%REQ(:PATH)%|%TRACE_ID%\\n\"}}\n",
        log.display()
    ));
    let (_legate, base) = start_static(&mesh).await;
    let client = HttpClient::http1().with_timeout(WAIT);

    let r = client.get(&format!("{base}/logged")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let r = client
        .get_with(&format!("{base}/unsampled"), &[("traceparent", unsampled)])
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());

    let spans = otlp
        .wait_for(WAIT, "the logged request's spans", |s| {
            servers(s).len() == 1 && clients(s).len() == 1
        })
        .await;
    let trace_id = servers(&spans)[0].trace_id.clone();
    assert_eq!(clients(&spans)[0].trace_id, trace_id);
    let lines = legate_tests::eventually(WAIT, "both access log lines", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() == 2 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    assert_eq!(lines[0], format!("/logged|{trace_id}"));
    assert_eq!(lines[1], "/unsampled|-");
}

/// A mesh file for legate-cp: one service `payments` at `endpoint`, traced to `collector`
/// under `service_name`.
fn cp_mesh(
    endpoint: std::net::SocketAddr,
    collector: std::net::SocketAddr,
    service_name: &str,
) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    endpoints: [{{address: {endpoint}}}]
    # Kept whole, so the next proxy on the path routes it the same way.
    route: {{prefix: /payments/, rewrite: /payments/, timeout: 10s}}
telemetry:
  tracing: {{collector: "{collector}", service_name: {service_name}}}
"#
    )
}

/// legate-cp serving `mesh` from a file in `dir`.
async fn control_plane(dir: &legate_tests::process::TempDir, name: &str, mesh: &str) -> Cp {
    let config = dir.write(&format!("{name}.yaml"), mesh);
    Cp::start(&config, &dir.path().join(format!("{name}-data"))).await
}

fn of_service<'a>(spans: &'a [ReceivedSpan], service: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.service_name == service).collect()
}

/// The whole path users run: a mesh file with `telemetry.tracing`, compiled and served by
/// the real legate-cp, applied by legate over ADS; its spans reach the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_file_served_by_legate_cp_traces_legate() {
    let up = Upstream::start("payments", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let dir = legate_tests::process::TempDir::new("trace-cp");
    let cp = control_plane(&dir, "mesh", &cp_mesh(up.addr(), otlp.addr, "from-cp")).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node("proxy-1", "web")).await;
    let url = legate.url("outbound", "/payments/charge").await;

    let r = HttpClient::http1().with_timeout(WAIT).get(&url).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let tp = r
        .echo()
        .headers
        .get("traceparent")
        .cloned()
        .expect("traceparent upstream");
    let spans = otlp
        .wait_for(WAIT, "legate's server and attempt spans", |s| {
            servers(s).len() == 1 && clients(s).len() == 1
        })
        .await;
    let (server, client) = (servers(&spans)[0], clients(&spans)[0]);
    assert_eq!(server.service_name, "from-cp");
    assert_eq!(server.attributes["url.path"], "/payments/charge");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(tp, format!("00-{}-{}-01", client.trace_id, client.span_id));
}

/// Envoy 1.40 configured by its own legate-cp from [`cp_mesh`] (service `payments` at
/// `endpoint`, traced to `collector` as `service`): the listener and collector cluster
/// legate-model compiles are accepted (no CDS or LDS rejection). Returns the address of
/// Envoy's listener.
async fn envoy_hop(
    dir: &legate_tests::process::TempDir,
    endpoint: std::net::SocketAddr,
    collector: std::net::SocketAddr,
    service: &str,
) -> (Cp, Envoy, std::net::SocketAddr) {
    let cp = control_plane(dir, service, &cp_mesh(endpoint, collector, service)).await;
    let envoy = Envoy::start_ads(cp.xds, EnvoyAds::Sotw, service, "envoys").await;
    let addr = envoy.listener("outbound").await;
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        assert_eq!(envoy.stat(stat).await, Some(0), "{stat}");
    }
    (cp, envoy, addr)
}

/// legate configured the same way as [`envoy_hop`], over ADS from its own legate-cp.
async fn legate_hop(
    dir: &legate_tests::process::TempDir,
    endpoint: std::net::SocketAddr,
    collector: std::net::SocketAddr,
    service: &str,
) -> (Cp, Legate, std::net::SocketAddr) {
    let cp = control_plane(dir, service, &cp_mesh(endpoint, collector, service)).await;
    let legate =
        Legate::start_xds(&XdsFlags::new(&cp.url(), Mode::Sotw).node(service, "legates")).await;
    let addr = legate.listener_addr("outbound").await;
    (cp, legate, addr)
}

/// `GET http://{addr}/payments/through`, answered 200: the `traceparent` the upstream saw.
/// Retried while refused: Envoy reports a listener active a moment before its worker
/// accepts on it.
async fn traceparent_through(addr: std::net::SocketAddr) -> String {
    let url = format!("http://{addr}/payments/through");
    let r = legate_tests::eventually(WAIT, "the first proxy accepting", || async {
        HttpClient::http1()
            .with_timeout(WAIT)
            .try_request("GET", &url, &[], legate_tests::client::empty())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    r.echo()
        .headers
        .get("traceparent")
        .cloned()
        .expect("traceparent upstream")
}

/// The spans of one request through proxy `first`, then proxy `second` (by service name),
/// checked to be one trace: each proxy's SERVER span with its CLIENT span under it, the
/// first's SERVER span the root, the second's SERVER span under the first's CLIENT span.
/// Envoy's span for the request it received is `ingress` and its upstream span comes from
/// `spawn_upstream_span`. Waits for them (Envoy flushes every 5 s by default); returns the
/// four spans in path order.
async fn one_trace(otlp: &OtlpReceiver, first: &str, second: &str) -> [ReceivedSpan; 4] {
    let spans = otlp
        .wait_for(Duration::from_secs(30), "both proxies' spans", |s| {
            of_service(s, first).len() == 2 && of_service(s, second).len() == 2
        })
        .await;
    let of_kind = |service: &str, kind: SpanKind| {
        of_service(&spans, service)
            .into_iter()
            .find(|s| s.kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} span of {service}: {spans:#?}"))
    };
    let path = [
        of_kind(first, SpanKind::Server),
        of_kind(first, SpanKind::Client),
        of_kind(second, SpanKind::Server),
        of_kind(second, SpanKind::Client),
    ];
    assert_eq!(path[0].parent_span_id, "", "a root: {spans:#?}");
    for pair in path.windows(2) {
        assert_eq!(pair[1].trace_id, pair[0].trace_id, "one trace: {spans:#?}");
        assert_eq!(
            pair[1].parent_span_id, pair[0].span_id,
            "each span under the one before: {spans:#?}"
        );
    }
    // The first proxy makes a request id (the client sent none) before its span starts, and
    // the second keeps it: both servers' spans carry the same one. Envoy writes its trace
    // decision into the UUID's version digit (`pack_trace_reason`), so that one is not compared.
    let id = |span: &ReceivedSpan| {
        let id = span
            .attributes
            .get("guid:x-request-id")
            .unwrap_or_else(|| panic!("{} has no request id: {spans:#?}", span.service_name));
        assert_eq!(id.len(), 36, "a UUID: {id}");
        format!("{}{}", &id[..14], &id[15..])
    };
    assert_eq!(id(&path[0]), id(&path[2]), "one request id: {spans:#?}");
    path
}

/// Interop with Envoy 1.40: legate-cp serves Envoy the listener and collector cluster
/// legate-model compiles from `telemetry.tracing`; Envoy accepts them, its spans reach the
/// same OTLP receiver under the configured service name, and a request through Envoy, then
/// legate (each configured by its own legate-cp), is one trace: legate's server span is a
/// child of Envoy's upstream span, and the upstream sees legate's attempt span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_then_legate_continue_one_trace() {
    let up = Upstream::start("payments", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let dir = legate_tests::process::TempDir::new("trace-envoy");
    let (_cp_l, _legate, legate_addr) =
        legate_hop(&dir, up.addr(), otlp.addr, "legate-inner").await;
    let (_cp_e, _envoy, envoy_addr) = envoy_hop(&dir, legate_addr, otlp.addr, "envoy-edge").await;

    let tp = traceparent_through(envoy_addr).await;
    let [envoy_server, _, _, legate_client] = one_trace(&otlp, "envoy-edge", "legate-inner").await;
    assert_eq!(envoy_server.name, "ingress");
    assert!(envoy_server.attributes.contains_key("guid:x-request-id"));
    assert_eq!(
        tp,
        format!("00-{}-{}-01", legate_client.trace_id, legate_client.span_id)
    );
}

/// The other way round: legate, then Envoy. Envoy continues the trace legate's attempt span
/// sends in `traceparent`, and the upstream sees Envoy's upstream span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_then_envoy_continue_one_trace() {
    let up = Upstream::start("payments", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let dir = legate_tests::process::TempDir::new("trace-envoy-2");
    let (_cp_e, _envoy, envoy_addr) = envoy_hop(&dir, up.addr(), otlp.addr, "envoy-inner").await;
    let (_cp_l, _legate, legate_addr) =
        legate_hop(&dir, envoy_addr, otlp.addr, "legate-edge").await;

    let tp = traceparent_through(legate_addr).await;
    let [_, _, envoy_server, envoy_client] = one_trace(&otlp, "legate-edge", "envoy-inner").await;
    assert_eq!(envoy_server.name, "ingress");
    assert_eq!(
        tp,
        format!("00-{}-{}-01", envoy_client.trace_id, envoy_client.span_id)
    );
}

/// legate-cp refuses, at start, mesh files whose `telemetry` is wrong, each error placed in
/// the file that wrote it: a collector that is not `host:port`, the collector's reserved
/// cluster name taken by a service, and `telemetry` set in two files.
#[tokio::test]
async fn legate_cp_refuses_bad_telemetry_with_file_positions() {
    let dir = legate_tests::process::TempDir::new("trace-cp-refused");
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh).expect("mkdir");
    let write = |name: &str, text: &str| std::fs::write(mesh.join(name), text).expect("write");
    write(
        "a.yaml",
        "services:\n  - name: legate-trace-collector\n    endpoints: [{address: 127.0.0.1:1}]\n",
    );
    write(
        "b.yaml",
        "telemetry:\n  tracing: {collector: collector:99999}\n",
    );
    write(
        "c.yaml",
        "\ntelemetry:\n  access_log: {path: /dev/stdout}\n",
    );
    let out = match Cp::try_start(&mesh, &dir.path().join("data"), &[]).await {
        Ok(cp) => panic!("legate-cp started\n{}", cp.log()),
        Err(out) => out,
    };
    let at = |file: &str| mesh.join(file).display().to_string();
    for expected in [
        format!(
            "{}:2:11: services[0].name: service name `legate-trace-collector` is reserved",
            at("a.yaml")
        ),
        format!(
            "{}:2:24: telemetry.tracing.collector: `collector:99999` does not end with a port \
             1-65535",
            at("b.yaml")
        ),
        format!(
            "{}:2:1: telemetry: `telemetry` is set in more than one file (first in {}:1:1)",
            at("c.yaml"),
            at("b.yaml")
        ),
    ] {
        assert!(out.contains(&expected), "{expected}\nnot in:\n{out}");
    }
}

/// The server span lasts as long as the request's stream, as Envoy's downstream span does:
/// it ends when the response body has been sent, not when the response headers are ready;
/// and a client that goes away mid-body ends it then. The attempt span whose response is
/// sent ends with that body too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_span_ends_with_the_response_body() {
    const BODY_DELAY: Duration = Duration::from_millis(800);
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let (_legate, base) =
        start_static(&traced_mesh(up.addr(), &otlp.addr.to_string(), "100%")).await;

    let r = HttpClient::http1()
        .with_timeout(WAIT)
        .get(&format!("{base}/slow?body_delay=800ms"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let spans = otlp
        .wait_for(WAIT, "the slow request's spans", |s| {
            servers(s).len() == 1 && clients(s).len() == 1
        })
        .await;
    // The attempt's span too, as Envoy's upstream span ends when its request completes.
    for span in [servers(&spans)[0], clients(&spans)[0]] {
        assert!(
            span.duration >= BODY_DELAY,
            "the {:?} span ({:?}) covers the body's {BODY_DELAY:?}",
            span.kind,
            span.duration
        );
    }

    // A client that gives up on a body that would take 20 s: the span ends when it leaves.
    otlp.clear();
    let gave_up = HttpClient::http1()
        .with_timeout(Duration::from_millis(300))
        .try_request(
            "GET",
            &format!("{base}/abandoned?body_delay=20s"),
            &[],
            legate_tests::client::empty(),
        )
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    let spans = otlp
        .wait_for(WAIT, "the abandoned request's span", |s| {
            servers(s).len() == 1
        })
        .await;
    let server = servers(&spans)[0];
    assert_eq!(server.attributes["url.path"], "/abandoned");
    assert!(
        server.duration < Duration::from_secs(10),
        "ended when the client left: {:?}",
        server.duration
    );
}

/// A parent's decision wins over the sampling percentages, as Envoy's OpenTelemetry tracer
/// follows a `traceparent`'s sampled flag: at 0 % nothing else is traced, but a sampled
/// W3C parent is continued, and B3's decision alone (`b3: 1` or `b3: d`, no ids) starts a
/// new sampled trace that goes upstream in the same form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_decision_wins_over_zero_percent_sampling() {
    let up = Upstream::start("a", "v1", Protocol::Http1).await;
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let (_legate, base) = start_static(&traced_mesh(up.addr(), &otlp.addr.to_string(), "0%")).await;
    let client = HttpClient::http1().with_timeout(WAIT);

    let r = client.get(&format!("{base}/plain")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client
        .get_with(&format!("{base}/w3c"), &[("traceparent", sampled)])
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    for forced in ["1", "d"] {
        let r = client
            .get_with(&format!("{base}/b3-{forced}"), &[("b3", forced)])
            .await;
        let b3 = r.echo().headers.get("b3").cloned().unwrap_or_default();
        let parts: Vec<&str> = b3.split('-').collect();
        assert!(
            parts.len() == 4 && parts[0].len() == 32 && parts[2] == "1",
            "a new sampled trace goes upstream: b3 {b3:?}"
        );
    }
    let spans = otlp
        .wait_for(WAIT, "the three decided requests' server spans", |s| {
            servers(s).len() == 3
        })
        .await;
    let mut paths: Vec<&str> = servers(&spans)
        .iter()
        .map(|s| s.attributes["url.path"].as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/b3-1", "/b3-d", "/w3c"], "not /plain: {spans:#?}");
    for s in servers(&spans) {
        if s.attributes["url.path"] == "/w3c" {
            assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        } else {
            assert_eq!(s.parent_span_id, "", "a new root: {s:#?}");
        }
    }
}
