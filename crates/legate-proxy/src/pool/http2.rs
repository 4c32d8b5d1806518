//! The HTTP/2 pool: one multiplexed connection per host, dialled by address.
//!
//! The first request to a host without a connection dials it; requests arriving meanwhile
//! queue behind that one dial (holding a pending-request slot) and share its outcome. A
//! connection is forgotten when it closes, when it has been idle (no new stream) for the
//! idle timeout, or when it has carried `max_requests_per_connection` streams; hyper then
//! closes it once its open streams are done.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::{Common, classify_with_tls};
use crate::body::RequestBody;
use crate::connector::{self, CountedIo};
use crate::error::ProxyError;
use crate::resilience::limits::{LimitGuard, Resource};

pub(crate) struct H2Pool {
    common: Common,
    conns: Mutex<HashMap<SocketAddr, Entry>>,
}

/// What a dial's waiters receive: the connection, the dial's error, or `Err(None)` when the
/// dialling request was cancelled (try again).
type DialOutcome = Result<(SendRequest<RequestBody>, u64), Option<ProxyError>>;

enum Entry {
    Connecting {
        id: u64,
        waiters: Vec<oneshot::Sender<DialOutcome>>,
    },
    Ready(H2Conn),
}

struct H2Conn {
    id: u64,
    sender: SendRequest<RequestBody>,
    last_used: Arc<AtomicU64>,
    /// Streams opened so far.
    streams: u32,
}

enum Step {
    Dial(u64),
    Wait(oneshot::Receiver<DialOutcome>),
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

impl H2Pool {
    pub(super) fn new(common: Common) -> Arc<Self> {
        Arc::new(H2Pool {
            common,
            conns: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Entry>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut sender, mut id, mut reused) = self.checkout(addr).await?;
        let mut resent = false;
        loop {
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(res),
                Err(mut e) => {
                    tracing::debug!(error = %e.error(), %addr, "upstream h2 request failed");
                    match e.take_message() {
                        // The connection closed before the stream was opened: the upstream
                        // never saw it; once more on a new connection.
                        Some(back) if reused && !resent => {
                            req = back;
                            resent = true;
                            self.forget(addr, id);
                            (sender, id, reused) = self.checkout(addr).await?;
                        }
                        Some(_) => return Err(ProxyError::ResetBeforeRequest),
                        None => return Err(classify_with_tls(e.error(), self.common.tls.as_ref())),
                    }
                }
            }
        }
    }

    /// The host's connection, dialling it (or waiting for the dial under way) when there
    /// is none. The flag says whether the connection existed before this request.
    async fn checkout(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(SendRequest<RequestBody>, u64, bool), ProxyError> {
        let mut pending = None;
        loop {
            let step = {
                let mut conns = self.lock();
                match conns.get_mut(&addr) {
                    Some(Entry::Ready(c)) if !c.sender.is_closed() => {
                        c.last_used.store(now_millis(), Ordering::Relaxed);
                        c.streams = c.streams.saturating_add(1);
                        let out = (c.sender.clone(), c.id, true);
                        if self.exhausted(c.streams) {
                            conns.remove(&addr);
                        }
                        return Ok(out);
                    }
                    Some(Entry::Connecting { waiters, .. }) => {
                        self.pending(addr, &mut pending)?;
                        let (tx, rx) = oneshot::channel();
                        waiters.retain(|w| !w.is_closed());
                        waiters.push(tx);
                        Step::Wait(rx)
                    }
                    _ => {
                        self.pending(addr, &mut pending)?;
                        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
                        conns.insert(
                            addr,
                            Entry::Connecting {
                                id,
                                waiters: Vec::new(),
                            },
                        );
                        Step::Dial(id)
                    }
                }
            };
            match step {
                Step::Wait(rx) => match rx.await {
                    Ok(Ok((sender, id))) => return Ok((sender, id, false)),
                    Ok(Err(Some(e))) => return Err(e),
                    Ok(Err(None)) | Err(_) => {}
                },
                Step::Dial(id) => {
                    let mut dialing = Dialing {
                        pool: self,
                        addr,
                        id,
                        done: false,
                    };
                    // Boxed: a dial's state would otherwise be carried by every request's
                    // future; the allocation is per new connection.
                    let res = Box::pin(self.dial(addr, id)).await;
                    dialing.done = true;
                    let sender = self.dialled(addr, id, res)?;
                    return Ok((sender, id, false));
                }
            }
        }
    }

    fn exhausted(&self, streams: u32) -> bool {
        self.common
            .settings
            .max_requests_per_connection
            .is_some_and(|max| streams >= max)
    }

    fn pending(
        &self,
        addr: SocketAddr,
        pending: &mut Option<LimitGuard>,
    ) -> Result<(), ProxyError> {
        if pending.is_none() {
            let Some(g) = self.common.limits.try_acquire(Resource::PendingRequests) else {
                tracing::debug!(%addr, "upstream pending requests overflow");
                return Err(ProxyError::OverflowMaxPendingRequests);
            };
            *pending = Some(g);
        }
        Ok(())
    }

    async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        id: u64,
    ) -> Result<SendRequest<RequestBody>, ProxyError> {
        let timeout = self.common.settings.connect_timeout;
        let deadline = crate::deadline::after(tokio::time::Instant::now(), timeout);
        // The host's only connection may always be opened (Envoy does the same), counted
        // against `max_connections` when there is room.
        let slot = self.common.limits.try_acquire(Resource::Connections);
        let stream = connector::connect(addr, timeout).await?;
        match &self.common.tls {
            None => self.start(addr, id, slot, stream, deadline).await,
            Some(tls) => {
                let (stream, _) = tls.connect(stream, addr, deadline).await?;
                self.start(addr, id, slot, stream, deadline).await
            }
        }
    }

    /// HTTP/2 on a connected stream: the handshake (within `deadline`), the connection task,
    /// and the connection published for the requests waiting for dial `id`.
    async fn start<I>(
        self: &Arc<Self>,
        addr: SocketAddr,
        id: u64,
        slot: Option<LimitGuard>,
        stream: I,
        deadline: tokio::time::Instant,
    ) -> Result<SendRequest<RequestBody>, ProxyError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = CountedIo::with_held(stream, self.common.open.clone(), slot);
        let handshake = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, RequestBody>(io);
        let (sender, conn) = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                tracing::debug!(%error, %addr, "upstream h2 handshake failed");
                return Err(ProxyError::ConnectFailure);
            }
            Err(_) => return Err(ProxyError::ConnectTimeout),
        };
        let last_used = Arc::new(AtomicU64::new(now_millis()));
        let pool = Arc::downgrade(self);
        let idle = self.common.settings.idle_timeout;
        let used = last_used.clone();
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
                        let used = Duration::from_millis(used.load(Ordering::Relaxed));
                        if epoch().elapsed().saturating_sub(used) >= idle {
                            // No new stream for `idle`: take it out of the pool. hyper
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
        self.store(addr, id, sender.clone(), last_used);
        Ok(sender)
    }

    /// Take a connection dialled elsewhere (the auto pool's first connection to a host that
    /// chose h2) as the host's connection, unless it already has one.
    pub(super) async fn adopt<I>(
        self: &Arc<Self>,
        addr: SocketAddr,
        stream: I,
    ) -> Result<(), ProxyError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let id = {
            let mut conns = self.lock();
            if matches!(conns.get(&addr), Some(Entry::Ready(c)) if !c.sender.is_closed())
                || matches!(conns.get(&addr), Some(Entry::Connecting { .. }))
            {
                return Ok(());
            }
            let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
            conns.insert(
                addr,
                Entry::Connecting {
                    id,
                    waiters: Vec::new(),
                },
            );
            id
        };
        let mut dialing = Dialing {
            pool: self,
            addr,
            id,
            done: false,
        };
        let slot = self.common.limits.try_acquire(Resource::Connections);
        let deadline = crate::deadline::after(
            tokio::time::Instant::now(),
            self.common.settings.connect_timeout,
        );
        let res = self.start(addr, id, slot, stream, deadline).await;
        dialing.done = true;
        self.dialled(addr, id, res).map(drop)
    }

    /// Publish a new connection and hand it to the requests that waited for it.
    fn store(
        &self,
        addr: SocketAddr,
        id: u64,
        sender: SendRequest<RequestBody>,
        last_used: Arc<AtomicU64>,
    ) {
        let waiters = {
            let mut conns = self.lock();
            let waiters = match conns.get_mut(&addr) {
                Some(Entry::Connecting { id: cid, waiters }) if *cid == id => {
                    std::mem::take(waiters)
                }
                _ => Vec::new(),
            };
            // The dialler and every waiter each open one stream.
            let streams = u32::try_from(waiters.len() + 1).unwrap_or(u32::MAX);
            if self.exhausted(streams) {
                conns.remove(&addr);
            } else {
                conns.insert(
                    addr,
                    Entry::Ready(H2Conn {
                        id,
                        sender: sender.clone(),
                        last_used,
                        streams,
                    }),
                );
            }
            waiters
        };
        for w in waiters {
            let _ = w.send(Ok((sender.clone(), id)));
        }
    }

    /// The dial finished: on failure, drop the reservation and fail its waiters too.
    fn dialled(
        &self,
        addr: SocketAddr,
        id: u64,
        res: Result<SendRequest<RequestBody>, ProxyError>,
    ) -> Result<SendRequest<RequestBody>, ProxyError> {
        if let Err(e) = &res {
            self.abandon(addr, id, Some(*e));
        }
        res
    }

    /// Remove the dial reservation `id`, telling its waiters `why` (`None`: try again).
    fn abandon(&self, addr: SocketAddr, id: u64, why: Option<ProxyError>) {
        let waiters = {
            let mut conns = self.lock();
            match conns.get(&addr) {
                Some(Entry::Connecting { id: cid, .. }) if *cid == id => {
                    match conns.remove(&addr) {
                        Some(Entry::Connecting { waiters, .. }) => waiters,
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            }
        };
        for w in waiters {
            let _ = w.send(Err(why));
        }
    }

    fn forget(&self, addr: SocketAddr, id: u64) {
        let mut conns = self.lock();
        if let Some(Entry::Ready(c)) = conns.get(&addr)
            && c.id == id
        {
            conns.remove(&addr);
        }
    }
}

/// A dial in progress; if the dialling request is cancelled, its waiters try again.
struct Dialing<'a> {
    pool: &'a Arc<H2Pool>,
    addr: SocketAddr,
    id: u64,
    done: bool,
}

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.pool.abandon(self.addr, self.id, None);
        }
    }
}

fn forget(pool: &Weak<H2Pool>, addr: SocketAddr, id: u64) {
    if let Some(pool) = pool.upgrade() {
        pool.forget(addr, id);
    }
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

fn now_millis() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}
