//! Active health checking, with Envoy's semantics.
//!
//! One task per cluster checks every host against every configured [`HealthCheck`]: an
//! HTTP `GET` (HTTP/1.1, or HTTP/2 with prior knowledge) whose status must fall in
//! `expected_statuses`, or a TCP connect. Each check uses a fresh connection of its own,
//! outside the cluster's pool and circuit breakers, and must finish within `timeout`.
//!
//! As in Envoy:
//! - a host added to a cluster with health checks starts failed and pending, and the first
//!   passing check makes it healthy at once; after that `healthy_threshold` passes in a row
//!   make a failed host healthy again;
//! - a healthy host fails after `unhealthy_threshold` network failures in a row (connect
//!   failure, reset, timeout), but at once when it answers with a status outside
//!   `expected_statuses` (a 503 included): the host said so itself;
//! - a passing HTTP response with `x-envoy-degraded` marks the host degraded;
//! - the next check comes after `interval`, `unhealthy_interval` after a failed check, or
//!   the edge intervals while a transition is pending (some but not all of the threshold
//!   reached), plus random jitter (`interval_jitter`, and `interval_jitter_percent` of the
//!   base); a new host's first check waits a random time up to `initial_jitter`.
//!
//! Simplifications: no `no_traffic_interval` (checks run at `interval` whether or not the
//! cluster has had traffic) and the response body is not read (the verdict is taken at the
//! response headers). With several health checks a host fails when any of them fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_snapshot::{HealthCheck, HealthCheckKind, HttpHealthCheck};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cluster::ClusterHosts;
use crate::deadline;
use crate::lb::{Host, flag};
use crate::tls::upstream::{Alpn, ClusterTls};

/// The `User-Agent` of health check requests (Envoy sends `Envoy/HC`).
const USER_AGENT: &str = "legate/HC";

/// How long the checker sleeps when nothing is scheduled (no hosts); membership changes
/// wake it earlier.
const IDLE: Duration = Duration::from_secs(3600);

/// Start checking `cluster`'s hosts; the task ends when the cluster is dropped (or is
/// aborted when the checks are reconfigured).
pub(crate) fn spawn(cluster: &Arc<ClusterHosts>, checks: Vec<HealthCheck>) -> JoinHandle<()> {
    tokio::spawn(run(
        Arc::downgrade(cluster),
        cluster.membership.clone(),
        Arc::from(checks),
        cluster.name.clone(),
    ))
}

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass {
        degraded: bool,
    },
    /// `network`: connect failure, reset or timeout (counted against the threshold);
    /// otherwise the host answered with a failing status (immediately unhealthy).
    Fail {
        network: bool,
    },
}

/// Envoy's `HealthTransition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    Unchanged,
    /// Part of the way to a threshold.
    Pending,
    Changed,
}

/// One host's standing with one health check.
#[derive(Debug)]
struct CheckState {
    failed: bool,
    /// No check has completed yet.
    first: bool,
    degraded: bool,
    healthy_run: u32,
    unhealthy_run: u32,
    next: Instant,
    in_flight: Option<AbortHandle>,
}

impl CheckState {
    fn new(host: &Host, hc: &HealthCheck, now: Instant) -> Self {
        CheckState {
            failed: host.state.has(flag::HC_FAILED),
            first: true,
            degraded: host.state.has(flag::HC_DEGRADED),
            healthy_run: 0,
            unhealthy_run: 0,
            next: deadline::after(now, random_up_to(hc.initial_jitter)),
            in_flight: None,
        }
    }

    fn apply(&mut self, hc: &HealthCheck, verdict: Verdict) -> Transition {
        let mut t = Transition::Unchanged;
        match verdict {
            Verdict::Pass { degraded } => {
                self.unhealthy_run = 0;
                if self.failed {
                    self.healthy_run = self.healthy_run.saturating_add(1);
                    // The very first check of a new host needs only one pass.
                    if self.first || self.healthy_run >= hc.healthy_threshold {
                        self.failed = false;
                        t = Transition::Changed;
                    } else {
                        t = Transition::Pending;
                    }
                }
                if degraded != self.degraded {
                    self.degraded = degraded;
                    if t == Transition::Unchanged {
                        t = Transition::Changed;
                    }
                }
            }
            Verdict::Fail { network } => {
                self.healthy_run = 0;
                if !self.failed {
                    self.unhealthy_run = self.unhealthy_run.saturating_add(1);
                    if !network || self.unhealthy_run >= hc.unhealthy_threshold {
                        self.failed = true;
                        t = Transition::Changed;
                    } else {
                        t = Transition::Pending;
                    }
                }
            }
        }
        if self.first {
            // Leaving "pending" is a change of its own (Envoy's clearPendingFlag).
            self.first = false;
            t = Transition::Changed;
        }
        t
    }
}

/// The wait before the next check, from this check's result and transition.
fn next_interval(hc: &HealthCheck, passed: bool, t: Transition) -> Duration {
    let edge = t == Transition::Pending;
    let base = if passed {
        match hc.healthy_edge_interval {
            Some(d) if edge => d,
            _ => hc.interval,
        }
    } else {
        let unhealthy = hc.unhealthy_interval.unwrap_or(hc.interval);
        match hc.unhealthy_edge_interval {
            Some(d) if edge => d,
            _ => unhealthy,
        }
    };
    let percent = base.saturating_mul(hc.interval_jitter_percent.min(100)) / 100;
    base.saturating_add(random_up_to(percent))
        .saturating_add(random_up_to(hc.interval_jitter))
        .max(Duration::from_millis(1))
}

/// A random duration in `[0, max)`, zero when `max` is.
fn random_up_to(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(fastrand::u64(..nanos))
    }
}

/// A host being checked.
struct Session {
    /// Tells results for an earlier session of the same address apart.
    id: u64,
    host: Arc<Host>,
    checks: Vec<CheckState>,
}

impl Session {
    /// The host's `HC_*` flags from its standing with every check.
    fn flags(&self) -> u8 {
        let failed = self.checks.iter().any(|c| c.failed);
        let pending = self.checks.iter().any(|c| c.first);
        let degraded = !failed && self.checks.iter().any(|c| c.degraded);
        (if failed { flag::HC_FAILED } else { 0 })
            | (if pending { flag::HC_PENDING } else { 0 })
            | (if degraded { flag::HC_DEGRADED } else { 0 })
    }

    fn abort(&self) {
        for c in &self.checks {
            if let Some(h) = &c.in_flight {
                h.abort();
            }
        }
    }
}

type Completed = (SocketAddr, u64, usize, Verdict);

async fn run(
    cluster: Weak<ClusterHosts>,
    membership: Arc<Notify>,
    checks: Arc<[HealthCheck]>,
    name: Arc<str>,
) {
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut in_flight: JoinSet<Completed> = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let now = Instant::now();
        sync(
            &c.current().hosts,
            &mut sessions,
            &checks,
            &mut next_id,
            now,
        );
        // Checks use the cluster's transport socket, as in Envoy: TLS when it has TLS.
        let tls = c.tls.load_full();
        drop(c);

        let mut wake = now + IDLE;
        for (addr, s) in &mut sessions {
            for (i, st) in s.checks.iter_mut().enumerate() {
                if st.in_flight.is_some() {
                    continue;
                }
                if st.next <= now {
                    let (addr, id, checks, name) = (*addr, s.id, checks.clone(), name.clone());
                    let tls = tls.clone();
                    st.in_flight = Some(in_flight.spawn(async move {
                        let verdict = check(addr, &checks[i], &name, tls).await;
                        (addr, id, i, verdict)
                    }));
                } else {
                    wake = wake.min(st.next);
                }
            }
        }

        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = membership.notified() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                // A cancelled check belonged to a removed host.
                let Ok((addr, id, i, verdict)) = done else { continue };
                let Some(c) = cluster.upgrade() else { return };
                let Some(s) = sessions.get_mut(&addr).filter(|s| s.id == id) else { continue };
                let hc = &checks[i];
                let st = &mut s.checks[i];
                st.in_flight = None;
                let t = st.apply(hc, verdict);
                let passed = matches!(verdict, Verdict::Pass { .. });
                st.next = deadline::after(Instant::now(), next_interval(hc, passed, t));
                c.metrics.health_checks[usize::from(!passed)].inc();
                if t == Transition::Changed {
                    tracing::debug!(cluster = %name, host = %addr, ?verdict, failed = st.failed, "health check transition");
                }
                c.set_active_health(&s.host, s.flags(), passed);
            }
        }
    }
}

/// Start sessions for new hosts, end those of removed ones (cancelling their checks) and
/// keep each session's `Host` the newest value for its address.
fn sync(
    hosts: &[Arc<Host>],
    sessions: &mut HashMap<SocketAddr, Session>,
    checks: &[HealthCheck],
    next_id: &mut u64,
    now: Instant,
) {
    sessions.retain(|addr, s| {
        let keep = hosts
            .iter()
            .any(|h| h.addr == *addr && Arc::ptr_eq(&h.state, &s.host.state));
        if !keep {
            s.abort();
        }
        keep
    });
    for h in hosts {
        match sessions.get_mut(&h.addr) {
            Some(s) => {
                if !Arc::ptr_eq(&s.host, h) {
                    s.host = h.clone();
                }
            }
            None => {
                *next_id += 1;
                sessions.insert(
                    h.addr,
                    Session {
                        id: *next_id,
                        host: h.clone(),
                        checks: checks
                            .iter()
                            .map(|hc| CheckState::new(h, hc, now))
                            .collect(),
                    },
                );
            }
        }
    }
}

/// One check of one host, within the check's timeout.
async fn check(
    addr: SocketAddr,
    hc: &HealthCheck,
    cluster: &str,
    tls: Option<Arc<ClusterTls>>,
) -> Verdict {
    let deadline = deadline::after(Instant::now(), hc.timeout);
    tokio::time::timeout_at(deadline, probe(addr, &hc.kind, cluster, tls, deadline))
        .await
        .unwrap_or(Verdict::Fail { network: true })
}

async fn probe(
    addr: SocketAddr,
    kind: &HealthCheckKind,
    cluster: &str,
    tls: Option<Arc<ClusterTls>>,
    deadline: Instant,
) -> Verdict {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Verdict::Fail { network: true };
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return match kind {
            HealthCheckKind::Tcp => Verdict::Pass { degraded: false },
            HealthCheckKind::Http(h) => http_probe(stream, addr, h, cluster).await,
        };
    };
    // A TCP check of a TLS cluster passes once the handshake does.
    let alpn = match kind {
        HealthCheckKind::Http(h) if h.http2 => Alpn::H2,
        _ => Alpn::Http1,
    };
    let Ok((stream, _)) = tls.connect(stream, addr, None, alpn, deadline).await else {
        return Verdict::Fail { network: true };
    };
    match kind {
        HealthCheckKind::Tcp => Verdict::Pass { degraded: false },
        HealthCheckKind::Http(h) => http_probe(stream, addr, h, cluster).await,
    }
}

async fn http_probe<I>(stream: I, addr: SocketAddr, h: &HttpHealthCheck, cluster: &str) -> Verdict
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(req) = request(addr, h, cluster) else {
        // Not a request we can send: the host cannot pass.
        return Verdict::Fail { network: false };
    };
    let io = TokioIo::new(stream);
    let res = if h.http2 {
        let Ok((mut sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
        else {
            return Verdict::Fail { network: true };
        };
        let send = sender.send_request(req);
        drive(send, conn).await
    } else {
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return Verdict::Fail { network: true };
        };
        let send = sender.send_request(req);
        drive(send, conn).await
    };
    let Ok(res) = res else {
        return Verdict::Fail { network: true };
    };
    let status = res.status().as_u16();
    if h.expected_statuses
        .iter()
        .any(|&(start, end)| (start..end).contains(&status))
    {
        Verdict::Pass {
            degraded: res.headers().contains_key("x-envoy-degraded"),
        }
    } else {
        Verdict::Fail { network: false }
    }
}

/// Wait for the response while driving the connection. A connection that ends first (the
/// server answered and closed, `connection: close`) still yields the response it carried.
async fn drive<S, C, T>(send: S, conn: C) -> Result<T, hyper::Error>
where
    S: Future<Output = Result<T, hyper::Error>>,
    C: Future,
{
    tokio::pin!(send);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        res = &mut send => res,
        _ = &mut conn => send.await,
    }
}

/// The check request: `GET path`, `Host` (or `:authority`) the configured host or the
/// cluster name, then the configured header removals and additions.
fn request(addr: SocketAddr, h: &HttpHealthCheck, cluster: &str) -> Option<Request<Empty<Bytes>>> {
    let host: &str = if h.host.is_empty() { cluster } else { &h.host };
    let path = PathAndQuery::try_from(&*h.path).ok()?;
    let mut req = Request::new(Empty::new());
    if h.http2 {
        let authority = Authority::try_from(host)
            .or_else(|_| Authority::try_from(addr.to_string()))
            .ok()?;
        *req.uri_mut() = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path)
            .build()
            .ok()?;
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.uri_mut() = Uri::from(path);
        let value = HeaderValue::from_str(host)
            .or_else(|_| HeaderValue::from_str(&addr.to_string()))
            .ok()?;
        req.headers_mut().insert(header::HOST, value);
    }
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    crate::headers::apply(
        req.headers_mut(),
        &h.request_headers_to_remove,
        &h.request_headers_to_add,
    );
    if h.http2 {
        req.headers_mut().remove(header::HOST);
    }
    Some(req)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

    use http::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use legate_snapshot::{HeaderAppend, HeaderValueOption, OutlierDetection};
    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::ClusterRuntime;
    use crate::cluster::testing::{cluster, metrics, until};
    use crate::lb::ActiveHealth;
    use crate::metrics::Metrics;
    use crate::resilience::outlier::Outcome;

    const WAIT: Duration = Duration::from_secs(5);

    /// What a test upstream saw of one check request.
    #[derive(Clone, Debug)]
    struct Seen {
        host: Option<String>,
        path: String,
        user_agent: Option<String>,
        custom: Option<String>,
    }

    /// An HTTP upstream answering every request with `status`.
    struct Upstream {
        addr: SocketAddr,
        status: Arc<AtomicU16>,
        hits: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: JoinHandle<()>,
    }

    impl Upstream {
        async fn start(http2: bool, degraded: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let status = Arc::new(AtomicU16::new(200));
            let hits = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (s, h, v) = (status.clone(), hits.clone(), seen.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (s, h, v) = (s.clone(), h.clone(), v.clone());
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let host =
                            header("host").or_else(|| req.uri().authority().map(|a| a.to_string()));
                        v.lock().expect("seen").push(Seen {
                            host,
                            path: req.uri().path().to_owned(),
                            user_agent: header("user-agent"),
                            custom: header("x-check"),
                        });
                        h.fetch_add(1, Ordering::SeqCst);
                        let mut res = Response::builder().status(s.load(Ordering::SeqCst));
                        if !http2 {
                            // Closing after the answer is fine for a check.
                            res = res.header("connection", "close");
                        }
                        if degraded {
                            res = res.header("x-envoy-degraded", "1");
                        }
                        let res = res.body(Empty::<Bytes>::new()).expect("response");
                        async move { Ok::<_, Infallible>(res) }
                    });
                    let io = TokioIo::new(stream);
                    tokio::spawn(async move {
                        if http2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        }
                    });
                }
            });
            Upstream {
                addr,
                status,
                hits,
                seen,
                task,
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn http_check(interval: Duration) -> HealthCheck {
        HealthCheck {
            timeout: Duration::from_millis(500),
            interval,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            initial_jitter: Duration::ZERO,
            unhealthy_interval: None,
            unhealthy_edge_interval: None,
            healthy_edge_interval: None,
            unhealthy_threshold: 3,
            healthy_threshold: 3,
            kind: HealthCheckKind::Http(HttpHealthCheck {
                host: Arc::from(""),
                path: Arc::from("/healthz"),
                expected_statuses: vec![(200, 201)],
                request_headers_to_add: Vec::new(),
                request_headers_to_remove: Vec::new(),
                http2: false,
            }),
        }
    }

    fn counter(m: &Metrics, result: &str) -> u64 {
        m.health_checks.get_or_create(&["c", result]).get()
    }

    fn runtime(m: &Metrics, addrs: &[SocketAddr], hc: HealthCheck) -> Arc<ClusterRuntime> {
        let mut c = cluster("c", addrs);
        c.health_checks = vec![hc];
        ClusterRuntime::new(Arc::new(c), m, None)
    }

    fn host(rt: &ClusterRuntime, addr: SocketAddr) -> Arc<Host> {
        rt.hosts()
            .hosts
            .iter()
            .find(|h| h.addr == addr)
            .cloned()
            .expect("host")
    }

    #[tokio::test]
    async fn new_host_passes_after_one_check_then_fails_at_once_on_a_bad_status() {
        let up = Upstream::start(false, false).await;
        let m = metrics();
        let rt = runtime(&m, &[up.addr], http_check(Duration::from_millis(300)));
        let h = host(&rt, up.addr);
        // Pending: not available, but panic mode keeps the only host in use.
        assert!(!h.is_available());
        assert!(rt.hosts().in_panic());
        until(WAIT, "first pass", || {
            h.active_health() == ActiveHealth::Passed
        })
        .await;
        assert_eq!(up.hits(), 1, "one pass is enough for a new host");
        assert!(!rt.hosts().in_panic());
        assert_eq!(m.cluster_hosts.get_or_create(&["c", "healthy"]).get(), 1);

        // A 503 answer fails the host at the next check, without waiting for the threshold.
        up.status.store(503, Ordering::SeqCst);
        until(WAIT, "failed", || h.active_health() == ActiveHealth::Failed).await;
        assert_eq!(counter(&m, "failure"), 1);
        assert_eq!(m.cluster_hosts.get_or_create(&["c", "hc_failed"]).get(), 1);

        // Back to 200: three passes in a row (healthy_threshold) to return.
        up.status.store(200, Ordering::SeqCst);
        let passes = counter(&m, "success");
        until(WAIT, "healthy again", || {
            h.active_health() == ActiveHealth::Passed
        })
        .await;
        assert_eq!(counter(&m, "success") - passes, 3);
    }

    #[tokio::test]
    async fn request_carries_path_host_and_configured_headers() {
        for http2 in [false, true] {
            let up = Upstream::start(http2, false).await;
            let m = metrics();
            let mut hc = http_check(Duration::from_secs(60));
            if let HealthCheckKind::Http(h) = &mut hc.kind {
                h.http2 = http2;
                h.request_headers_to_add = vec![HeaderValueOption {
                    name: http::HeaderName::from_static("x-check"),
                    value: HeaderValue::from_static("yes"),
                    append: HeaderAppend::OverwriteIfExistsOrAdd,
                }];
            }
            let rt = runtime(&m, &[up.addr], hc.clone());
            let h = host(&rt, up.addr);
            until(WAIT, "pass", || h.active_health() == ActiveHealth::Passed).await;
            let seen = up.seen.lock().expect("seen")[0].clone();
            assert_eq!(seen.path, "/healthz");
            // The cluster name when `host` is empty.
            assert_eq!(seen.host.as_deref(), Some("c"), "http2: {http2}");
            assert_eq!(seen.user_agent.as_deref(), Some(USER_AGENT));
            assert_eq!(seen.custom.as_deref(), Some("yes"));

            // A configured host, and a removed default header.
            let up = Upstream::start(http2, false).await;
            if let HealthCheckKind::Http(h) = &mut hc.kind {
                h.host = Arc::from("health.example");
                h.request_headers_to_remove = vec![header::USER_AGENT];
            }
            let rt = runtime(&m, &[up.addr], hc);
            let h = host(&rt, up.addr);
            until(WAIT, "pass", || h.active_health() == ActiveHealth::Passed).await;
            let seen = up.seen.lock().expect("seen")[0].clone();
            assert_eq!(seen.host.as_deref(), Some("health.example"));
            assert_eq!(seen.user_agent, None);
        }
    }

    #[tokio::test]
    async fn degraded_header_marks_the_host_degraded() {
        let up = Upstream::start(false, true).await;
        let m = metrics();
        let rt = runtime(&m, &[up.addr], http_check(Duration::from_secs(60)));
        let h = host(&rt, up.addr);
        until(WAIT, "pass", || h.active_health() == ActiveHealth::Passed).await;
        assert_eq!(
            h.effective_health(),
            legate_snapshot::HealthStatus::Degraded
        );
        assert!(rt.pick(None).is_some());
    }

    #[tokio::test]
    async fn tcp_network_failures_count_to_the_threshold_on_the_edge_interval() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                drop(s);
            }
        });
        let m = metrics();
        let mut hc = http_check(Duration::from_millis(100));
        hc.kind = HealthCheckKind::Tcp;
        hc.unhealthy_threshold = 2;
        hc.unhealthy_edge_interval = Some(Duration::from_millis(50));
        hc.unhealthy_interval = Some(Duration::from_secs(60));
        let rt = runtime(&m, &[addr], hc);
        let h = host(&rt, addr);
        until(WAIT, "pass", || h.active_health() == ActiveHealth::Passed).await;
        // Closing the listener refuses connections.
        accept.abort();
        let _ = accept.await;
        until(WAIT, "failed", || h.active_health() == ActiveHealth::Failed).await;
        assert_eq!(counter(&m, "failure"), 2);
        // Failed: the next check waits `unhealthy_interval` (a minute).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(counter(&m, "failure"), 2);
    }

    #[tokio::test]
    async fn a_silent_host_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and holds connections, never answers.
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..64 {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                held.push(s);
            }
        });
        let m = metrics();
        let mut hc = http_check(Duration::from_millis(50));
        hc.timeout = Duration::from_millis(100);
        hc.unhealthy_threshold = 1;
        let mut c = cluster("c", &[addr]);
        c.health_checks = vec![hc];
        c.healthy_panic_threshold_permille = 0;
        let rt = ClusterRuntime::new(Arc::new(c), &m, None);
        let h = host(&rt, addr);
        assert!(
            rt.pick(None).is_none(),
            "no host before its first check without panic mode"
        );
        until(WAIT, "timed out", || {
            h.active_health() == ActiveHealth::Failed
        })
        .await;
        assert!(rt.pick(None).is_none());
        hold.abort();
    }

    #[tokio::test]
    async fn removed_hosts_stop_being_checked_and_added_hosts_start() {
        let (a, b, c) = (
            Upstream::start(false, false).await,
            Upstream::start(false, false).await,
            Upstream::start(false, false).await,
        );
        let m = metrics();
        let interval = Duration::from_millis(40);
        let mut def = cluster("c", &[a.addr, b.addr]);
        def.health_checks = vec![http_check(interval)];
        let rt = ClusterRuntime::new(Arc::new(def.clone()), &m, None);
        until(WAIT, "both checked twice", || {
            a.hits() >= 2 && b.hits() >= 2
        })
        .await;

        let mut def2 = cluster("c", &[a.addr, c.addr]);
        def2.health_checks = def.health_checks.clone();
        let rt2 = rt.with_config(Arc::new(def2), &m, None);
        let hc = host(&rt2, c.addr);
        assert_eq!(hc.active_health(), ActiveHealth::Pending);
        until(WAIT, "new host passes", || {
            hc.active_health() == ActiveHealth::Passed
        })
        .await;
        // Let a check that was already on the wire land, then watch.
        tokio::time::sleep(interval).await;
        let (a0, b0) = (a.hits(), b.hits());
        tokio::time::sleep(interval * 6).await;
        assert_eq!(b.hits(), b0, "removed host still checked");
        assert!(
            a.hits() >= a0 + 3,
            "kept host not checked: {a0} -> {}",
            a.hits()
        );
        // The host that stayed was not reset to pending.
        assert_eq!(host(&rt2, a.addr).active_health(), ActiveHealth::Passed);

        // Health checks removed: flags cleared, checks stop.
        let rt3 = rt2.with_config(Arc::new(cluster("c", &[a.addr, c.addr])), &m, None);
        tokio::time::sleep(interval).await;
        let a1 = a.hits();
        tokio::time::sleep(interval * 4).await;
        assert_eq!(a.hits(), a1);
        assert!(
            rt3.hosts()
                .hosts
                .iter()
                .all(|h| h.active_health() == ActiveHealth::Passed)
        );
    }

    #[tokio::test]
    async fn checks_added_to_a_serving_cluster_keep_hosts_in_service() {
        let up = Upstream::start(false, false).await;
        let m = metrics();
        let def = cluster("c", &[up.addr]);
        let rt = ClusterRuntime::new(Arc::new(def.clone()), &m, None);
        let mut def2 = def.clone();
        def2.health_checks = vec![http_check(Duration::from_secs(60))];
        def2.healthy_panic_threshold_permille = 0;
        let rt2 = rt.with_config(Arc::new(def2), &m, None);
        let h = host(&rt2, up.addr);
        assert!(h.is_available());
        assert!(rt2.pick(None).is_some());
        until(WAIT, "checked", || up.hits() == 1).await;
        until(WAIT, "passed", || h.active_health() == ActiveHealth::Passed).await;
    }

    #[tokio::test]
    async fn a_passing_check_returns_an_ejected_host() {
        let up = Upstream::start(false, false).await;
        let m = metrics();
        let mut def = cluster("c", &[up.addr]);
        def.health_checks = vec![http_check(Duration::from_millis(50))];
        def.outlier_detection = Some(OutlierDetection {
            base_ejection_time: Duration::from_secs(3600),
            interval: Duration::from_secs(3600),
            ..OutlierDetection::default()
        });
        let rt = ClusterRuntime::new(Arc::new(def.clone()), &m, None);
        let h = host(&rt, up.addr);
        until(WAIT, "pass", || h.active_health() == ActiveHealth::Passed).await;
        for _ in 0..5 {
            rt.report(&h, Outcome::Response(500));
        }
        assert!(h.is_ejected());
        until(WAIT, "unejected by a passing check", || !h.is_ejected()).await;

        // Without successful_active_health_check_uneject_host it stays out.
        if let Some(o) = &mut def.outlier_detection {
            o.successful_active_health_check_uneject_host = false;
        }
        let rt2 = rt.with_config(Arc::new(def), &m, None);
        for _ in 0..5 {
            rt2.report(&h, Outcome::Response(500));
        }
        assert!(h.is_ejected());
        let checks = counter(&m, "success");
        until(WAIT, "two more checks", || {
            counter(&m, "success") >= checks + 2
        })
        .await;
        assert!(h.is_ejected());
    }

    #[test]
    fn intervals_follow_result_and_transition() {
        let mut hc = http_check(Duration::from_secs(10));
        let pass = |t| next_interval(&hc, true, t);
        assert_eq!(pass(Transition::Unchanged), Duration::from_secs(10));
        assert_eq!(pass(Transition::Pending), Duration::from_secs(10));
        hc.healthy_edge_interval = Some(Duration::from_secs(1));
        hc.unhealthy_interval = Some(Duration::from_secs(20));
        hc.unhealthy_edge_interval = Some(Duration::from_secs(2));
        assert_eq!(
            next_interval(&hc, true, Transition::Pending),
            Duration::from_secs(1)
        );
        assert_eq!(
            next_interval(&hc, true, Transition::Changed),
            Duration::from_secs(10)
        );
        assert_eq!(
            next_interval(&hc, false, Transition::Changed),
            Duration::from_secs(20)
        );
        assert_eq!(
            next_interval(&hc, false, Transition::Unchanged),
            Duration::from_secs(20)
        );
        assert_eq!(
            next_interval(&hc, false, Transition::Pending),
            Duration::from_secs(2)
        );
        hc.interval_jitter = Duration::from_secs(1);
        hc.interval_jitter_percent = 50;
        for _ in 0..100 {
            let d = next_interval(&hc, true, Transition::Unchanged);
            assert!(
                d >= Duration::from_secs(10) && d < Duration::from_secs(16),
                "{d:?}"
            );
        }
    }

    #[test]
    fn thresholds_and_first_check() {
        let hc = http_check(Duration::from_secs(1));
        let net = Verdict::Fail { network: true };
        let bad = Verdict::Fail { network: false };
        let ok = Verdict::Pass { degraded: false };
        let fresh = |failed| CheckState {
            failed,
            first: true,
            degraded: false,
            healthy_run: 0,
            unhealthy_run: 0,
            next: Instant::now(),
            in_flight: None,
        };
        // New host: one pass.
        let mut s = fresh(true);
        assert_eq!(s.apply(&hc, ok), Transition::Changed);
        assert!(!s.failed);
        // Network failures: threshold 3; a pass in between starts over.
        assert_eq!(s.apply(&hc, net), Transition::Pending);
        assert_eq!(s.apply(&hc, net), Transition::Pending);
        assert_eq!(s.apply(&hc, ok), Transition::Unchanged);
        assert_eq!(s.apply(&hc, net), Transition::Pending);
        assert_eq!(s.apply(&hc, net), Transition::Pending);
        assert_eq!(s.apply(&hc, net), Transition::Changed);
        assert!(s.failed);
        // Three passes to come back.
        assert_eq!(s.apply(&hc, ok), Transition::Pending);
        assert_eq!(s.apply(&hc, ok), Transition::Pending);
        assert_eq!(s.apply(&hc, ok), Transition::Changed);
        assert!(!s.failed);
        // A bad status fails at once.
        assert_eq!(s.apply(&hc, bad), Transition::Changed);
        assert!(s.failed);
        // A new host failing its first check stays failed (and is no longer pending).
        let mut s = fresh(true);
        assert_eq!(s.apply(&hc, net), Transition::Changed);
        assert!(s.failed && !s.first);
    }
}
