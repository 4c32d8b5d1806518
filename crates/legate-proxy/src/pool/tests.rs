//! Pool behaviour against real in-process servers on 127.0.0.1.

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_snapshot::{Thresholds, UpstreamProtocol};
use legate_telemetry::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Inner, Pool, Settings};
use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::resilience::limits::{Resource, ResourceLimits};

/// A hyper server counting the connections it accepted and those still open.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl Server {
    async fn start(protocol: UpstreamProtocol) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, opn) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                opn.fetch_add(1, Ordering::SeqCst);
                let opn = opn.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let svc = service_fn(handle);
                    let _ = match protocol {
                        UpstreamProtocol::Http1 | UpstreamProtocol::Auto => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await
                        }
                        UpstreamProtocol::Http2 => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await
                        }
                    };
                    opn.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            addr,
            accepted,
            open,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Bytes::from_static(b"slow")
        }
        "/big" => Bytes::from(vec![b'x'; 1 << 20]),
        _ => Bytes::from_static(b"ok"),
    };
    Ok(Response::new(Full::new(body)))
}

/// A raw HTTP/1.1 server: answers each request with `reply`; closes the connection after
/// the first answer when `close_after`. Returns its address and the connections accepted.
async fn raw_server(reply: &'static [u8], close_after: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    if stream.write_all(reply).await.is_err() || close_after {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

struct Fixture {
    pool: Pool,
    open: Arc<Gauge>,
    limits: Arc<ResourceLimits>,
}

fn settings(protocol: UpstreamProtocol) -> Settings {
    Settings {
        protocol,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: None,
        max_requests_per_connection: None,
        tls: false,
        auto_sni: None,
    }
}

fn fixture(settings: Settings, thresholds: &Thresholds) -> Fixture {
    let open = Arc::new(Gauge::default());
    let remaining = std::array::from_fn(|_| Arc::new(Gauge::default()));
    let limits = ResourceLimits::new(thresholds, remaining);
    let pool = Pool::with_settings(settings, open.clone(), limits.clone());
    Fixture { pool, open, limits }
}

fn http1(tweak: impl FnOnce(&mut Settings)) -> Fixture {
    let mut s = settings(UpstreamProtocol::Http1);
    tweak(&mut s);
    fixture(s, &Thresholds::default())
}

fn request(protocol: UpstreamProtocol, addr: SocketAddr, path: &str) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::Empty);
    match protocol {
        UpstreamProtocol::Http1 | UpstreamProtocol::Auto => {
            *req.uri_mut() = format!("http://{addr}{path}").parse().expect("uri");
            req.headers_mut()
                .insert(header::HOST, "test.local".parse().expect("host"));
        }
        UpstreamProtocol::Http2 => {
            *req.uri_mut() = format!("http://test.local{path}").parse().expect("uri");
            *req.version_mut() = Version::HTTP_2;
        }
    }
    req
}

impl Fixture {
    fn protocol(&self) -> UpstreamProtocol {
        match self.pool.inner {
            Inner::Http2(_) => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        }
    }

    /// Send a GET and read the whole body.
    async fn fetch(&self, addr: SocketAddr, path: &str) -> Result<Bytes, ProxyError> {
        let res = self
            .pool
            .send(addr, request(self.protocol(), addr, path))
            .await?;
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.expect("body");
        Ok(body.to_bytes())
    }

    fn idle(&self) -> usize {
        match &self.pool.inner {
            Inner::Http1(p) => p.idle_count(),
            _ => 0,
        }
    }
}

/// Wait (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let f = http1(|_| {});
    for _ in 0..5 {
        assert_eq!(
            f.fetch(server.addr, "/").await,
            Ok(Bytes::from_static(b"ok"))
        );
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(f.open.get(), 1);
    assert_eq!(f.idle(), 1);
    assert_eq!(f.limits.in_use(Resource::Connections), 1);
    assert_eq!(f.limits.in_use(Resource::PendingRequests), 0);
}

#[tokio::test]
async fn max_requests_per_connection_closes_after_the_last_one() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let f = http1(|s| s.max_requests_per_connection = Some(2));
    for _ in 0..4 {
        f.fetch(server.addr, "/").await.expect("request");
    }
    assert_eq!(server.accepted(), 2);
    eventually("both connections closed", || server.open() == 0).await;
    eventually("gauge back to zero", || f.open.get() == 0).await;
    assert_eq!(f.limits.in_use(Resource::Connections), 0);
}

#[tokio::test]
async fn requests_queue_for_the_only_connection() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let t = Thresholds {
        max_connections: 1,
        ..Thresholds::default()
    };
    let f = fixture(settings(UpstreamProtocol::Http1), &t);
    let (a, b, c) = tokio::join!(
        f.fetch(server.addr, "/slow"),
        f.fetch(server.addr, "/slow"),
        f.fetch(server.addr, "/slow"),
    );
    for r in [a, b, c] {
        assert_eq!(r, Ok(Bytes::from_static(b"slow")));
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(f.limits.in_use(Resource::PendingRequests), 0);
}

#[tokio::test]
async fn a_cancelled_waiter_does_not_take_the_connection() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let t = Thresholds {
        max_connections: 1,
        ..Thresholds::default()
    };
    let f = fixture(settings(UpstreamProtocol::Http1), &t);
    let (a, b, c) = tokio::join!(
        f.fetch(server.addr, "/slow"),
        tokio::time::timeout(Duration::from_millis(50), f.fetch(server.addr, "/")),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            f.fetch(server.addr, "/").await
        },
    );
    assert!(a.is_ok());
    assert!(
        b.is_err(),
        "the second request should have timed out waiting"
    );
    assert_eq!(c, Ok(Bytes::from_static(b"ok")));
    assert_eq!(server.accepted(), 1);
    assert_eq!(f.limits.in_use(Resource::PendingRequests), 0);
}

#[tokio::test]
async fn no_pending_slot_overflows_at_once() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let f = http1(|_| {});
    let strict = Thresholds {
        max_connections: 1,
        max_pending_requests: 0,
        ..Thresholds::default()
    };
    // As in Envoy, a request that finds no ready connection is pending, even while its own
    // connection is dialled: with no pending slot, a cold pool refuses.
    f.limits.update(&strict);
    assert_eq!(
        f.fetch(server.addr, "/").await,
        Err(ProxyError::OverflowMaxPendingRequests)
    );
    f.limits.update(&Thresholds::default());
    f.fetch(server.addr, "/").await.expect("warm up");
    f.limits.update(&strict);
    let (slow, second) = tokio::join!(f.fetch(server.addr, "/slow"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.fetch(server.addr, "/").await
    });
    assert_eq!(slow, Ok(Bytes::from_static(b"slow")));
    assert_eq!(second, Err(ProxyError::OverflowMaxPendingRequests));
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn refused_connection_is_a_connect_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let f = http1(|_| {});
    assert_eq!(f.fetch(addr, "/").await, Err(ProxyError::ConnectFailure));
    assert_eq!(f.open.get(), 0);
    assert_eq!(f.limits.in_use(Resource::Connections), 0);
    assert_eq!(f.limits.in_use(Resource::PendingRequests), 0);
}

#[tokio::test]
async fn unanswered_connect_is_a_connect_timeout() {
    // A listener that never accepts, with a backlog of zero: once its accept queue is
    // full the kernel drops further SYNs, so a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => {
                full = true;
                break;
            }
        }
    }
    if !full {
        eprintln!("skipped: this kernel kept accepting connections into the backlog");
        return;
    }
    let f = http1(|s| s.connect_timeout = Duration::from_millis(100));
    assert_eq!(f.fetch(addr, "/").await, Err(ProxyError::ConnectTimeout));
    assert_eq!(f.open.get(), 0);
    assert_eq!(f.limits.in_use(Resource::Connections), 0);
}

#[tokio::test]
async fn server_closing_an_idle_connection_costs_nothing() {
    let (addr, accepted) =
        raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let f = http1(|_| {});
    for _ in 0..3 {
        assert_eq!(f.fetch(addr, "/").await, Ok(Bytes::from_static(b"ok")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    eventually("closed connections forgotten", || f.idle() == 0).await;
}

/// The keep-alive race: the upstream closed the idle connection, but the proxy has not
/// noticed when it picks it for the next request. hyper hands the unwritten request back
/// and the pool sends it once more on a new connection.
#[test]
fn request_on_a_connection_closed_under_it_is_resent_once() {
    // One thread, and the I/O driver polled after every task poll: the server's FIN is
    // seen right after the request is queued, before the connection's task runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .event_interval(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let answer = |stream: &mut std::net::TcpStream, body: &str| {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).expect("read");
                assert!(n > 0, "client closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).expect("write");
        };
        let (mut first, _) = listener.accept().expect("accept");
        answer(&mut first, "first");
        close_rx.recv().expect("close signal");
        drop(first);
        closed_tx.send(()).expect("closed signal");
        let (mut second, _) = listener.accept().expect("accept");
        answer(&mut second, "second");
        // Keep the connection until the client is done with it.
        let _ = second.read(&mut [0u8; 16]);
    });
    let f = Arc::new(http1(|_| {}));
    let client = f.clone();
    // A spawned task rather than the `block_on` future: the runtime polls its I/O driver
    // between two task polls, so the FIN lands between queueing the request and the
    // connection task running.
    let (first, second) = rt.block_on(async move {
        let task = tokio::spawn(async move {
            let first = client.fetch(addr, "/").await;
            // Let the connection's driver settle into idle, then block this (only)
            // runtime thread while the server closes it, so the driver cannot notice
            // before the next request picks the connection.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            close_tx.send(()).expect("close");
            closed_rx.recv().expect("closed");
            std::thread::sleep(Duration::from_millis(50));
            (first, client.fetch(addr, "/").await)
        });
        task.await.expect("client task")
    });
    assert_eq!(first, Ok(Bytes::from_static(b"first")));
    assert_eq!(second, Ok(Bytes::from_static(b"second")));
    let Inner::Http1(pool) = &f.pool.inner else {
        unreachable!()
    };
    assert_eq!(pool.resent.load(Ordering::Relaxed), 1);
    drop(f);
    drop(rt);
    server.join().expect("server thread");
}

#[tokio::test]
async fn idle_timeout_closes_idle_connections() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let f = http1(|s| s.idle_timeout = Some(Duration::from_millis(100)));
    f.fetch(server.addr, "/").await.expect("request");
    assert_eq!(server.open(), 1);
    eventually("the server sees the close", || server.open() == 0).await;
    eventually("gauge back to zero", || f.open.get() == 0).await;
    assert_eq!(f.idle(), 0);
    assert_eq!(f.limits.in_use(Resource::Connections), 0);
    // And the pool still works.
    f.fetch(server.addr, "/").await.expect("after idle close");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn body_dropped_early_closes_the_connection() {
    let server = Server::start(UpstreamProtocol::Http1).await;
    let f = http1(|_| {});
    let res = f
        .pool
        .send(
            server.addr,
            request(UpstreamProtocol::Http1, server.addr, "/big"),
        )
        .await
        .expect("response");
    drop(res);
    eventually("the server sees the close", || server.open() == 0).await;
    f.fetch(server.addr, "/").await.expect("next request");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn switching_protocols_never_returns_the_connection() {
    let (addr, accepted) = raw_server(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n",
        false,
    )
    .await;
    let f = http1(|_| {});
    for _ in 0..2 {
        let mut req = request(UpstreamProtocol::Http1, addr, "/");
        req.headers_mut()
            .insert(header::CONNECTION, "upgrade".parse().expect("value"));
        req.headers_mut()
            .insert(header::UPGRADE, "test".parse().expect("value"));
        let res = f.pool.send(addr, req).await.expect("response");
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(f.idle(), 0);
}

#[tokio::test]
async fn http2_multiplexes_concurrent_requests_on_one_connection() {
    let server = Server::start(UpstreamProtocol::Http2).await;
    let f = fixture(settings(UpstreamProtocol::Http2), &Thresholds::default());
    let results =
        futures_util::future::join_all((0..5).map(|_| f.fetch(server.addr, "/slow"))).await;
    for r in results {
        assert_eq!(r, Ok(Bytes::from_static(b"slow")));
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(f.open.get(), 1);
    assert_eq!(f.limits.in_use(Resource::Connections), 1);
    assert_eq!(f.limits.in_use(Resource::PendingRequests), 0);
}

#[tokio::test]
async fn http2_refused_stream_is_classified() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let f = fixture(settings(UpstreamProtocol::Http2), &Thresholds::default());
    assert_eq!(f.fetch(addr, "/").await, Err(ProxyError::RefusedStream));
}

#[tokio::test]
async fn http2_connect_failure_fails_every_waiter() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let f = fixture(settings(UpstreamProtocol::Http2), &Thresholds::default());
    let (a, b) = tokio::join!(f.fetch(addr, "/"), f.fetch(addr, "/"));
    assert_eq!(a, Err(ProxyError::ConnectFailure));
    assert_eq!(b, Err(ProxyError::ConnectFailure));
    assert_eq!(f.limits.in_use(Resource::Connections), 0);
    assert_eq!(f.limits.in_use(Resource::PendingRequests), 0);
}

/// Every request's future holds the pool's `send` future: the TLS, auto and per-name paths
/// and the dials are boxed so that it stays small (10.9 KiB once they were inline, 3.4 KiB
/// before TLS existed, in debug builds).
#[test]
fn the_send_future_stays_small() {
    let f = fixture(settings(UpstreamProtocol::Http1), &Thresholds::default());
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let fut = f
        .pool
        .send(addr, request(UpstreamProtocol::Http1, addr, "/"));
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 3 * 1024, "Pool::send future: {size} bytes");
}
