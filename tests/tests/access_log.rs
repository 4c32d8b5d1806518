//! Access logs end to end: Envoy's HCM `access_log` (file logger) pushed over ADS and set
//! by the static mesh's `telemetry.access_log`, the real `legate` binary and real demo
//! upstreams. Every line is parsed and checked field by field, response flags included
//! (UF, UH, UT, URX, UO); SIGUSR1 reopens a file moved away as logrotate does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use legate_tests::access_log::{file_log, line_where};
use legate_tests::client::{HttpClient, ReqBody};
use legate_tests::config::{bootstrap, cluster};
use legate_tests::process::TempDir;
use legate_tests::resilience::{
    Rig, SVC, edit_hcm, ms, outcome, retry, route_action, set_endpoint_health, set_panic_threshold,
    set_thresholds, svc_mesh, thresholds, u32v,
};
use legate_tests::{Legate, Protocol, Upstream, closed_port, eventually};

/// Fields separated by `|`, one line per request.
const FORMAT: &str = "%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|\
%REQ(:METHOD)%|%REQ(:PATH)%|%PROTOCOL%|%BYTES_SENT%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|\
%RESPONSE_CODE_DETAILS%|%REQ(X-TEST-ID)%|%UPSTREAM_TRANSPORT_FAILURE_REASON%|%DURATION%\n";

/// The line whose `x-test-id` field is `id`, split into fields, once it is written.
async fn line_for(path: &Path, id: &str) -> Vec<String> {
    line_with(path, 10, id).await
}

/// The line whose field `index` is `id`, split at `|`, once it is written.
async fn line_with(path: &Path, index: usize, id: &str) -> Vec<String> {
    line_where(path, "the access log line", |l| {
        l.split('|').nth(index) == Some(id)
    })
    .await
    .split('|')
    .map(str::to_owned)
    .collect()
}

async fn get_id(rig: &Rig, path: &str, id: &str) -> u16 {
    let r = HttpClient::http1()
        .get_with(&rig.url(path), &[("x-test-id", id)])
        .await;
    r.status.as_u16()
}

/// [`svc_mesh`] over `endpoints` whose HCM logs every request to `log` in `format`.
fn logged_mesh(
    endpoints: &[std::net::SocketAddr],
    log: &std::path::Path,
    format: &str,
) -> legate_snapshot::Resources {
    let mut res = svc_mesh(endpoints);
    let l = file_log(log, format);
    edit_hcm(&mut res, |h| h.access_log = vec![l.clone()]);
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_text_lines_carry_envoy_fields_and_flags() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let log = dir.path().join("access.log");
    let mut res = logged_mesh(&[a.addr()], &log, FORMAT);
    let rig = Rig::start(&res).await;

    // A plain answer from the upstream.
    assert_eq!(get_id(&rig, "/hello?size=10", "ok").await, 200);
    let f = line_for(&log, "ok").await;
    assert_eq!(f[0], "200");
    assert_eq!(f[1], "-", "no flags");
    assert_eq!(f[2], SVC);
    assert_eq!(f[3], a.addr().to_string());
    assert_eq!(f[4], "GET");
    assert_eq!(f[5], "/hello?size=10");
    assert_eq!(f[6], "HTTP/1.1");
    assert_eq!(f[7], "10", "bytes sent is the body");
    assert_eq!(f[8], "1");
    assert_eq!(f[9], "via_upstream");
    assert_eq!(f[11], "-");
    assert!(f[12].parse::<u64>().is_ok(), "duration in ms: {f:?}");

    // The route timeout: UT.
    route_action(&mut res).timeout = Some(ms(300));
    rig.apply(&res).await;
    assert_eq!(get_id(&rig, "/?delay=3s", "ut").await, 504);
    let f = line_for(&log, "ut").await;
    assert_eq!((&*f[0], &*f[1], &*f[9]), ("504", "UT", "upstream-timeout"));

    // Retries exhausted on 503s: the upstream's answer with URX, after two attempts.
    route_action(&mut res).timeout = Some(ms(5000));
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    rig.apply(&res).await;
    assert_eq!(get_id(&rig, "/?status=503", "urx").await, 503);
    let f = line_for(&log, "urx").await;
    assert_eq!(
        (&*f[0], &*f[1], &*f[8], &*f[9]),
        ("503", "URX", "2", "via_upstream")
    );

    // A per-try timeout on the last attempt: UT, and URX since no retry was left.
    let mut p = retry("5xx", 1);
    p.per_try_timeout = Some(ms(200));
    route_action(&mut res).retry_policy = Some(p);
    rig.apply(&res).await;
    assert_eq!(get_id(&rig, "/?delay=3s", "perytry").await, 504);
    let f = line_for(&log, "perytry").await;
    assert_eq!(
        (&*f[0], &*f[1], &*f[8], &*f[9]),
        ("504", "UT,URX", "2", "per-try-timeout")
    );

    // No healthy host: UH, no upstream host.
    route_action(&mut res).retry_policy = None;
    set_endpoint_health(&mut res, SVC, 0, HealthStatus::Unhealthy);
    // Without this, the lone unhealthy host would still be used (panic mode).
    set_panic_threshold(&mut res, SVC, 0.0);
    rig.apply(&res).await;
    assert_eq!(get_id(&rig, "/", "uh").await, 503);
    let f = line_for(&log, "uh").await;
    assert_eq!(
        (&*f[0], &*f[1], &*f[3], &*f[9]),
        ("503", "UH", "-", "no-healthy-upstream")
    );

    // Nothing listening: UF with the transport failure reason.
    let res = logged_mesh(&[closed_port()], &log, FORMAT);
    rig.apply(&res).await;
    assert_eq!(get_id(&rig, "/", "uf").await, 503);
    let f = line_for(&log, "uf").await;
    assert_eq!((&*f[0], &*f[1], &*f[11]), ("503", "UF", "connect-failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_is_uo() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let log = dir.path().join("access.log");
    let mut res = logged_mesh(&[a.addr()], &log, FORMAT);
    let mut t = thresholds();
    t.max_requests = u32v(1);
    set_thresholds(&mut res, SVC, t);
    let rig = Rig::start(&res).await;
    let slow_url = rig.url("/?delay=1500ms");
    let slow = tokio::spawn(async move {
        HttpClient::http1()
            .get_with(&slow_url, &[("x-test-id", "slow")])
            .await
    });
    // Once the slow request holds the only slot, the next one overflows.
    eventually(Duration::from_secs(5), "one request in flight", || async {
        let v = rig
            .metric(
                "legate_circuit_breaker_remaining",
                &[("cluster", SVC), ("resource", "requests")],
            )
            .await;
        if v == 0.0 {
            Ok(())
        } else {
            Err(format!("remaining requests = {v}"))
        }
    })
    .await;
    let r = HttpClient::http1()
        .get_with(&rig.url("/"), &[("x-test-id", "over")])
        .await;
    assert_eq!(outcome(&r), (503, Some("overflow-max-requests".to_owned())));
    let f = line_for(&log, "over").await;
    assert_eq!(
        (&*f[0], &*f[1], &*f[9]),
        ("503", "UO", "overflow-max-requests")
    );
    assert_eq!(slow.await.expect("slow request").status.as_u16(), 200);
    let f = line_for(&log, "slow").await;
    assert_eq!(f[1], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_operator_is_nacked() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let mut res = svc_mesh(&[a.addr()]);
    let rig = Rig::start(&res).await;
    let l = file_log(&dir.path().join("x.log"), "%DYNAMIC_METADATA(a:b)%\n");
    edit_hcm(&mut res, |h| h.access_log = vec![l.clone()]);
    let pushes = rig.server.set_resources(&res);
    let nack = rig
        .server
        .wait_nacked(&pushes[0], Duration::from_secs(10))
        .await
        .remove(0);
    let message = nack.error.clone().expect("error_detail").message;
    assert!(
        message.contains(
            "access_log[0].typed_config.log_format.text_format_source: position 0: \
             command operator %DYNAMIC_METADATA% is not supported by legate"
        ),
        "{message}"
    );
}

fn json_bootstrap(upstream: &Upstream, log: &Path) -> String {
    let mut b = bootstrap(
        "- {name: outbound, address: 127.0.0.1:0, route_config: rc}",
        "- name: rc\n  virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n    \
         - match: {prefix: /}\n      forward: {cluster: svc, timeout: 5s}",
        &[cluster(SVC, &[upstream.addr()])],
    );
    b.push_str(&format!(
        "  telemetry:\n    access_log:\n      path: {}\n      json:\n        code: '%RESPONSE_CODE%'\n        \
         flags: '%RESPONSE_FLAGS%'\n        method: '%REQ(:METHOD)%'\n        id: '%REQ(X-TEST-ID)%'\n        \
         missing: '%REQ(X-NOT-THERE)%'\n        bytes: '%BYTES_SENT%'\n        line: '%REQ(:METHOD)% %REQ(:PATH)%'\n        \
         start: '%START_TIME%'\n",
        log.display()
    ));
    b
}

async fn json_line(path: &Path, id: &str) -> serde_json::Value {
    eventually(
        Duration::from_secs(10),
        "the JSON access log line",
        || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["id"] == id)
                .ok_or_else(|| format!("no line with id {id} in {text:?}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_json_lines_and_sigusr1_reopen() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let log: PathBuf = dir.path().join("access.json");
    let legate = Legate::start(&json_bootstrap(&a, &log)).await;
    let url = legate.url("outbound", "/x?size=5").await;
    let r = HttpClient::http1()
        .get_with(&url, &[("x-test-id", "one")])
        .await;
    assert_eq!(r.status.as_u16(), 200);
    let v = json_line(&log, "one").await;
    assert_eq!(v["code"], 200, "typed: a number");
    assert_eq!(v["flags"], serde_json::Value::Null, "no flags: null");
    assert_eq!(v["missing"], serde_json::Value::Null);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["bytes"], 5);
    assert_eq!(v["line"], "GET /x?size=5");
    let start = v["start"].as_str().expect("start time");
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "{start}"
    );

    // logrotate: move the file, signal, and the next line goes to a new file.
    let rotated = dir.path().join("access.json.1");
    std::fs::rename(&log, &rotated).expect("rename");
    let status = std::process::Command::new("kill")
        .args(["-USR1", &legate.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually(Duration::from_secs(10), "the log reopened", || async {
        let r = HttpClient::http1()
            .get_with(&url, &[("x-test-id", "probe")])
            .await;
        if r.status.as_u16() != 200 {
            return Err(format!("status {}", r.status));
        }
        if log.exists() {
            Ok(())
        } else {
            Err("no new file yet".to_owned())
        }
    })
    .await;
    let r = HttpClient::http1()
        .get_with(&url, &[("x-test-id", "two")])
        .await;
    assert_eq!(r.status.as_u16(), 200);
    json_line(&log, "two").await;
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(
        old.contains("\"id\":\"one\"") && !old.contains("\"id\":\"two\""),
        "{old}"
    );
    assert_eq!(
        legate
            .metrics()
            .await
            .get_or_zero("legate_access_log_dropped_total", &[]),
        0.0
    );
}

/// The next message, or `None` after 30 s.
async fn recv_within<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .ok()
        .flatten()
}

/// A named pipe at `path` (`mkfifo`).
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_cannot_keep_up_drops_lines_and_never_slows_requests() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    // Nobody reads the pipe yet: its writer cannot even open it.
    let fifo = dir.path().join("access.fifo");
    mkfifo(&fifo);
    let fifo_label = fifo.display().to_string();
    // Long lines (about 15 KB each) fill the queue's byte budget in a few hundred requests.
    let format = format!("%REQ(X-TEST-ID)% {}\n", "x".repeat(15_000));
    let mut res = svc_mesh(&[a.addr()]);
    edit_hcm(&mut res, |h| h.access_log = vec![file_log(&fifo, &format)]);
    let rig = Rig::start(&res).await;
    let dropped = || async {
        rig.metric(
            "legate_access_log_dropped_total",
            &[("path", fifo_label.as_str())],
        )
        .await as u64
    };

    // Bounded: at most 3000 requests and 60 s, whichever comes first.
    let client = HttpClient::http1();
    let url = rig.url("/");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    let mut slowest = Duration::ZERO;
    while dropped().await == 0 {
        assert!(
            sent < 3000 && std::time::Instant::now() < deadline,
            "no line dropped after {sent} requests: {}",
            rig.describe()
        );
        for _ in 0..50 {
            let id = format!("n{sent}");
            let (r, took) =
                legate_tests::resilience::timed(client.get_with(&url, &[("x-test-id", &id)])).await;
            assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
            slowest = slowest.max(took);
            sent += 1;
        }
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited for the log: {slowest:?}"
    );
    let lost = dropped().await;
    assert!(lost > 0 && lost < sent, "dropped {lost} of {sent}");

    // A reader drains the pipe: every line that was not dropped arrives, then new ones.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let Ok(f) = std::fs::File::open(&reader_path) else {
            return;
        };
        for line in std::io::BufReader::new(f).lines() {
            let Ok(line) = line else { return };
            let id = line.split(' ').next().unwrap_or_default().to_owned();
            if tx.send(id).is_err() {
                return;
            }
        }
    });
    let written = sent - lost;
    let mut ids = Vec::new();
    while (ids.len() as u64) < written {
        let id = recv_within(&mut rx).await;
        let Some(id) = id else {
            panic!("{} of {written} lines read, then nothing", ids.len());
        };
        ids.push(id);
    }
    // Every request was either written or counted as dropped, and what was written is the
    // oldest requests, in order (the queue held them while the pipe had no reader).
    let expected: Vec<String> = (0..written).map(|i| format!("n{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(dropped().await, lost, "nothing more was dropped");
    // The queue has room again: a new request's line arrives.
    let r = client.get_with(&url, &[("x-test-id", "after")]).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(recv_within(&mut rx).await.as_deref(), Some("after"));
}

/// A chunked request body: `chunks` chunks of `size` bytes, `gap` apart.
fn slow_chunked(chunks: usize, size: usize, gap: Duration) -> ReqBody {
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent == chunks {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(gap).await;
        }
        let frame = Frame::data(Bytes::from(vec![b'u'; size]));
        Some((Ok::<_, legate_tests::client::BoxError>(frame), sent + 1))
    });
    StreamBody::new(stream).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_received_and_request_duration_count_the_body_read() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let log = dir.path().join("access.log");
    let format = "%REQ(X-TEST-ID)%|%BYTES_RECEIVED%|%REQUEST_DURATION%|%DURATION%|%RESPONSE_CODE%|\
%UPSTREAM_REQUEST_ATTEMPT_COUNT%\n";
    let mut res = logged_mesh(&[a.addr()], &log, format);
    let rig = Rig::start(&res).await;
    let send = |method: &'static str, id: &'static str, path: &'static str, body: ReqBody| {
        let url = rig.url(path);
        async move {
            HttpClient::http1()
                .request(method, &url, &[("x-test-id", id)], body)
                .await
        }
    };
    let ms = |f: &str| -> u64 {
        f.parse()
            .unwrap_or_else(|_| panic!("not a duration: {f:?}"))
    };

    // Streamed through (no retry policy): four chunks of 10,000 bytes, 200 ms apart.
    let gap = Duration::from_millis(200);
    let r = send("POST", "streamed", "/", slow_chunked(4, 10_000, gap)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
    assert_eq!(
        r.echo().body_bytes,
        40_000,
        "the upstream read the whole body"
    );
    let f = line_with(&log, 0, "streamed").await;
    assert_eq!(f[1], "40000", "{f:?}");
    let (request_ms, total_ms) = (ms(&f[2]), ms(&f[3]));
    assert!(
        request_ms >= 600 && request_ms <= total_ms,
        "the body ended after its three gaps, before the response: {f:?}"
    );

    // Kept for a retry and sent twice: counted once, as read from the client.
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    rig.apply(&res).await;
    // (PUT: idempotent, so it may be sent again.)
    let r = send(
        "PUT",
        "retried",
        "/?status=503",
        slow_chunked(3, 5_000, gap),
    )
    .await;
    assert_eq!(r.status.as_u16(), 503);
    let f = line_with(&log, 0, "retried").await;
    assert_eq!((&*f[1], &*f[5]), ("15000", "2"), "{f:?}");
    assert!(ms(&f[2]) >= 400, "{f:?}");

    // A declared length, and no body at all.
    let r = send(
        "POST",
        "sized",
        "/",
        legate_tests::client::full(vec![b'z'; 1234]),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    let f = line_with(&log, 0, "sized").await;
    assert_eq!(f[1], "1234");
    ms(&f[2]);
    let r = HttpClient::http1()
        .get_with(&rig.url("/"), &[("x-test-id", "bodiless")])
        .await;
    assert_eq!(r.status.as_u16(), 200);
    let f = line_with(&log, 0, "bodiless").await;
    assert_eq!(f[1], "0");
    assert!(ms(&f[2]) <= ms(&f[3]), "{f:?}");
}

/// `GET path` on a raw HTTP/1.1 connection with `x-test-id: id`.
fn raw_get(path: &str, id: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: svc\r\nx-test-id: {id}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_upstream_is_uc_a_timer_ut_and_a_client_leaving_dc() {
    use tokio::io::AsyncWriteExt as _;
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let log = dir.path().join("access.log");
    let res = logged_mesh(&[a.addr()], &log, FORMAT);
    let rig = Rig::start(&res).await;
    let wait = Duration::from_secs(10);

    // The upstream sends the head and 1,000 of 100,000 bytes, then drops its connection.
    let reply = legate_tests::raw::exchange(
        rig.addr(),
        &raw_get("/?size=100000&reset_after=1000", "uc"),
        wait,
    )
    .await;
    assert_eq!(reply.statuses(), [200]);
    assert!(reply.closed, "legate closes a response it cannot finish");
    let f = line_for(&log, "uc").await;
    assert_eq!((&*f[0], &*f[1], &*f[7]), ("200", "UC", "1000"), "{f:?}");

    // The client reads the head and some of a 50 MB body, then closes its socket.
    let mut s = tokio::net::TcpStream::connect(rig.addr())
        .await
        .expect("connect");
    s.write_all(&raw_get("/?size=50000000", "dc"))
        .await
        .expect("write");
    let got = legate_tests::raw::read_until(&mut s, wait, |b| b.len() > 100_000).await;
    assert!(
        got.bytes.len() > 100_000 && !got.closed,
        "{} bytes",
        got.bytes.len()
    );
    drop(s);
    let f = line_for(&log, "dc").await;
    assert_eq!((&*f[0], &*f[1]), ("200", "DC"), "{f:?}");
    let sent: u64 = f[7].parse().expect("bytes sent");
    assert!(sent < 50_000_000, "{f:?}");

    // The route timeout fires while the body is stalled: UT, not DC.
    let stalling = legate_tests::resilience::StallingUpstream::start(100_000, 500).await;
    let mut res = logged_mesh(&[stalling.addr], &log, FORMAT);
    route_action(&mut res).timeout = Some(ms(500));
    rig.apply(&res).await;
    let reply = legate_tests::raw::exchange(rig.addr(), &raw_get("/", "ut"), wait).await;
    assert_eq!(reply.statuses(), [200]);
    let f = line_for(&log, "ut").await;
    assert_eq!((&*f[0], &*f[1], &*f[7]), ("200", "UT", "500"), "{f:?}");
}

/// Whether process `pid` has `path` open (a link in `/proc/<pid>/fd`).
fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| target == path)
}

async fn wait_closed(pid: u32, path: &Path) {
    eventually(Duration::from_secs(10), "the log file closed", || async {
        if has_open(pid, path) {
            Err(format!("{} is still open", path.display()))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_no_longer_configured_are_closed() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let (first, second) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut res = svc_mesh(&[a.addr()]);
    edit_hcm(&mut res, |h| h.access_log = vec![file_log(&first, FORMAT)]);
    let rig = Rig::start(&res).await;
    let pid = rig.legate.pid();
    // One keep-alive connection for the whole test: a connection accepted under the first
    // configuration must not keep its file open.
    let client = HttpClient::http1();
    let get = |id: &'static str| {
        let (client, url) = (client.clone(), rig.url("/"));
        async move {
            let r = client.get_with(&url, &[("x-test-id", id)]).await;
            assert_eq!(r.status.as_u16(), 200, "{}", r.describe());
        }
    };
    get("one").await;
    line_for(&first, "one").await;
    assert!(has_open(pid, &first));

    // The path changes: the new file gets the lines, the old one is closed.
    edit_hcm(&mut res, |h| h.access_log = vec![file_log(&second, FORMAT)]);
    rig.apply(&res).await;
    get("two").await;
    line_for(&second, "two").await;
    wait_closed(pid, &first).await;
    let old = std::fs::read_to_string(&first).expect("first.log");
    assert!(old.contains("|one|") && !old.contains("|two|"), "{old}");

    // No access log any more: the last file is closed too.
    edit_hcm(&mut res, |h| h.access_log = vec![]);
    rig.apply(&res).await;
    get("three").await;
    wait_closed(pid, &second).await;
    assert!(
        !std::fs::read_to_string(&second)
            .expect("second.log")
            .contains("|three|")
    );

    // Named again: a new writer opens it and appends.
    edit_hcm(&mut res, |h| h.access_log = vec![file_log(&first, FORMAT)]);
    rig.apply(&res).await;
    get("four").await;
    line_for(&first, "four").await;
    assert!(has_open(pid, &first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_logged_is_the_one_sent_upstream() {
    let a = Upstream::start("a", "v1", Protocol::Http1).await;
    let dir = TempDir::new("alog");
    let log = dir.path().join("access.log");
    let res = logged_mesh(&[a.addr()], &log, "%REQ(X-TEST-ID)%|%REQ(X-REQUEST-ID)%\n");
    let rig = Rig::start(&res).await;

    // legate generates one: the upstream's and the log's are the same.
    let r = HttpClient::http1()
        .get_with(&rig.url("/"), &[("x-test-id", "generated")])
        .await;
    let sent = r.echo().headers.get("x-request-id").cloned();
    let sent = sent.unwrap_or_else(|| panic!("no x-request-id upstream: {}", r.describe()));
    assert_eq!(sent.len(), 36, "a UUID: {sent}");
    let f = line_with(&log, 0, "generated").await;
    assert_eq!(f[1], sent);

    // The client's own is kept, and logged.
    let r = HttpClient::http1()
        .get_with(
            &rig.url("/"),
            &[("x-test-id", "client"), ("x-request-id", "client-id-1")],
        )
        .await;
    assert_eq!(r.echo().headers["x-request-id"], "client-id-1");
    let f = line_with(&log, 0, "client").await;
    assert_eq!(f[1], "client-id-1");
}
