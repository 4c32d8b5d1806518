//! Upstream connection pools, one per cluster.
//!
//! HTTP/1.1 uses hyper-util's pooled client (keep-alive, idle timeout) with the request URI
//! pointing at the chosen host's address and `Host` carrying the logical authority. HTTP/2
//! keeps one multiplexed connection per host, dialled by address, so the request's
//! `:authority` can be the logical host (hyper-util's client would send the address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use legate_snapshot::{Cluster, UpstreamProtocol};
use legate_telemetry::Gauge;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::connector::{CountedIo, CountingConnector};
use crate::error::ProxyError;
use crate::resilience::limits::ResourceLimits;

pub(crate) enum Pool {
    Http1(Box<Client<CountingConnector, RequestBody>>),
    Http2(Arc<H2Pool>),
}

/// An upstream response body. Today a plain pass-through of hyper's body; the pool uses it
/// to learn when a response has been read to its end.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
}

impl UpstreamBody {
    fn new(inner: Incoming) -> Self {
        UpstreamBody { inner }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Pool {
    pub(crate) fn new(config: &Cluster, open: Arc<Gauge>, limits: Arc<ResourceLimits>) -> Self {
        let _ = limits;
        match config.protocol {
            UpstreamProtocol::Http1 => {
                let connector = CountingConnector::new(config.connect_timeout, open);
                let client = Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(config.idle_timeout)
                    .pool_max_idle_per_host(usize::MAX)
                    .set_host(false)
                    .build(connector);
                Pool::Http1(Box::new(client))
            }
            UpstreamProtocol::Http2 => Pool::Http2(Arc::new(H2Pool {
                conns: Mutex::new(HashMap::new()),
                connect_timeout: config.connect_timeout,
                idle_timeout: config.idle_timeout,
                open,
            })),
        }
    }

    /// Send `req` to `addr`. For HTTP/1.1 the URI must be `http://addr/...`; for HTTP/2 its
    /// authority is sent as `:authority` and the connection goes to `addr`.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let res = match self {
            Pool::Http1(client) => client.request(req).await.map_err(|e| {
                tracing::debug!(error = %e, %addr, "upstream request failed");
                ProxyError::from_client(&e)
            }),
            Pool::Http2(pool) => pool.send(addr, req).await,
        }?;
        Ok(res.map(UpstreamBody::new))
    }
}

struct H2Conn {
    id: u64,
    sender: SendRequest<RequestBody>,
    last_used: Arc<AtomicU64>,
}

pub(crate) struct H2Pool {
    conns: Mutex<HashMap<SocketAddr, H2Conn>>,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    open: Arc<Gauge>,
}

fn now_millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

impl H2Pool {
    fn ready_sender(&self, addr: SocketAddr) -> Option<SendRequest<RequestBody>> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let c = conns.get(&addr)?;
        if c.sender.is_closed() {
            return None;
        }
        c.last_used.store(now_millis(epoch()), Ordering::Relaxed);
        Some(c.sender.clone())
    }

    async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = match self.ready_sender(addr) {
            Some(s) => s,
            None => self.connect(addr).await?,
        };
        sender
            .ready()
            .await
            .map_err(|_| ProxyError::UpstreamReset)?;
        sender.send_request(req).await.map_err(|e| {
            tracing::debug!(error = %e, %addr, "upstream h2 request failed");
            classify(&e)
        })
    }

    async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<SendRequest<RequestBody>, ProxyError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectFailure)?
            .map_err(|_| ProxyError::ConnectFailure)?;
        let _ = stream.set_nodelay(true);
        let io = CountedIo::new(TokioIo::new(stream), self.open.clone());
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(|_| ProxyError::ConnectFailure)?;
        let last_used = Arc::new(AtomicU64::new(now_millis(epoch())));
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.insert(
                addr,
                H2Conn {
                    id,
                    sender: sender.clone(),
                    last_used: last_used.clone(),
                },
            );
        }
        let pool = Arc::downgrade(self);
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            tokio::pin!(conn);
            let check = idle.map_or(Duration::from_secs(3600), |d| {
                (d / 4).max(Duration::from_millis(50))
            });
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(error) = res {
                            tracing::debug!(%error, %addr, "upstream h2 connection closed");
                        }
                        break;
                    }
                    () = tokio::time::sleep(check) => {
                        let Some(idle) = idle else { continue };
                        let used = Duration::from_millis(last_used.load(Ordering::Relaxed));
                        if epoch().elapsed().saturating_sub(used) >= idle {
                            // No new request for `idle`: take it out of the pool. hyper
                            // closes the connection once its open streams finish and no
                            // sender is left.
                            forget(&pool, addr, id);
                            let _ = conn.as_mut().await;
                            break;
                        }
                    }
                }
            }
            forget(&pool, addr, id);
        });
        Ok(sender)
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

fn forget(pool: &std::sync::Weak<H2Pool>, addr: SocketAddr, id: u64) {
    if let Some(pool) = pool.upgrade() {
        let mut conns = pool.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.get(&addr).is_some_and(|c| c.id == id) {
            conns.remove(&addr);
        }
    }
}

fn classify(e: &hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::ProtocolError
    } else if e.is_timeout() {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamReset
    }
}
