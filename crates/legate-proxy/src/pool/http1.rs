//! The HTTP/1.1 pool: per host, idle keep-alive connections (LIFO) and a queue of requests
//! waiting for one.
//!
//! One mutex per pool guards every host's state; each critical section is a few pointer
//! moves (no I/O, no allocation on the reuse path). A connection is always in exactly one
//! place: in use (owned by a request or its response body), idle in its host's list, or
//! handed to a waiter. Its bookkeeping ([`ConnSlot`]) lives inside the socket wrapper, so a
//! connection is counted until its socket is really closed, whoever drops it.
//!
//! No lost wakeups: a waiter registers under the same lock that returns connections, and
//! every connection of a host either comes back (and is handed to the first live waiter) or
//! closes (and its slot is offered to the first live waiter as a [`Handoff::Retry`]). A
//! request waits only while its host has a connection, so one of the two always happens.
//! A waiter cancelled after being chosen passes what it was given on ([`Waiting`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Common, UpstreamBody, classify_with_tls};
use crate::body::RequestBody;
use crate::connector::{self, CountedIo};
use crate::error::ProxyError;
use crate::resilience::limits::{LimitGuard, Resource};

pub(crate) struct H1Pool {
    common: Common,
    state: Mutex<State>,
    /// Requests sent again on a fresh connection after a reused one failed before writing
    /// them (for tests).
    #[cfg(test)]
    pub(super) resent: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct State {
    hosts: HashMap<SocketAddr, Host>,
    next_id: u64,
    /// Whether the idle reaper task is running.
    reaper: bool,
}

#[derive(Default)]
struct Host {
    /// Most recently returned last.
    idle: Vec<Idle>,
    waiters: VecDeque<oneshot::Sender<Handoff>>,
    /// Connections open or being dialled.
    conns: u32,
}

impl Host {
    fn is_unused(&self) -> bool {
        self.conns == 0 && self.idle.is_empty() && self.waiters.is_empty()
    }

    /// Give `h` to the first waiter still waiting, or give it back.
    fn hand_off(&mut self, mut h: Handoff) -> Option<Handoff> {
        while let Some(tx) = self.waiters.pop_front() {
            match tx.send(h) {
                Ok(()) => return None,
                Err(back) => h = back,
            }
        }
        Some(h)
    }

    fn push_waiter(&mut self, tx: oneshot::Sender<Handoff>) {
        // Waiters that gave up stay queued until popped; prune them whenever the queue
        // doubles so it stays proportional to the live ones.
        let len = self.waiters.len();
        if len >= 16 && len.is_power_of_two() {
            self.waiters.retain(|w| !w.is_closed());
        }
        self.waiters.push_back(tx);
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection out of the pool.
pub(crate) struct Conn {
    sender: SendRequest<RequestBody>,
    id: u64,
    /// Requests sent on it so far.
    used: u32,
}

enum Handoff {
    /// A connection that came back.
    Conn(Conn),
    /// A connection closed: its slot is free, try again (dial).
    Retry,
}

enum Step {
    Reuse(Idle),
    Dial(ConnSlot),
    Wait(oneshot::Receiver<Handoff>),
}

impl H1Pool {
    pub(super) fn new(common: Common) -> Arc<Self> {
        Arc::new(H1Pool {
            common,
            state: Mutex::new(State::default()),
            #[cfg(test)]
            resent: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        origin_form(&mut req);
        let (mut conn, mut reused) = self.checkout(addr, false).await?;
        let mut resent = false;
        loop {
            conn.used += 1;
            match conn.sender.try_send_request(req).await {
                Ok(res) => return Ok(self.respond(addr, conn, res)),
                Err(mut e) => {
                    tracing::debug!(error = %e.error(), %addr, reused, "upstream request failed");
                    match e.take_message() {
                        // Never written: the keep-alive connection was closed under us. The
                        // upstream never saw the request, so send it once more on a new
                        // connection whatever its method.
                        Some(back) if reused && !resent => {
                            req = back;
                            resent = true;
                            drop(conn);
                            #[cfg(test)]
                            self.resent
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            (conn, reused) = self.checkout(addr, true).await?;
                        }
                        Some(_) => return Err(ProxyError::ResetBeforeRequest),
                        None => return Err(classify_with_tls(e.error(), self.common.tls.as_ref())),
                    }
                }
            }
        }
    }

    /// A ready connection to `addr`: an idle one (unless `fresh`), a new one, or the next
    /// one to come back. The flag says whether it carried requests before.
    async fn checkout(
        self: &Arc<Self>,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<(Conn, bool), ProxyError> {
        // Held from the moment the request has to wait (or dial) until it has a connection.
        let mut pending = None;
        loop {
            match self.step(addr, fresh, &mut pending)? {
                Step::Reuse(idle) => {
                    if let Some(timeout) = self.common.settings.idle_timeout
                        && idle.since.elapsed() >= timeout
                    {
                        continue;
                    }
                    let mut conn = idle.conn;
                    // A connection just given back may need its driver to run once more;
                    // a closed one fails and is dropped (its driver cleans up).
                    if conn.sender.ready().await.is_ok() {
                        return Ok((conn, true));
                    }
                }
                // Boxed: a dial's state (connect, handshake) would otherwise be carried by
                // every request's future; the allocation is per new connection.
                Step::Dial(slot) => return Ok((Box::pin(self.dial(addr, slot)).await?, false)),
                Step::Wait(rx) => {
                    let mut waiting = Waiting {
                        rx,
                        pool: self,
                        addr,
                    };
                    if let Ok(Handoff::Conn(mut conn)) = (&mut waiting.rx).await
                        && conn.sender.ready().await.is_ok()
                    {
                        return Ok((conn, true));
                    }
                }
            }
        }
    }

    /// Under the lock: take an idle connection, or reserve a dial, or queue as a waiter.
    fn step(
        self: &Arc<Self>,
        addr: SocketAddr,
        fresh: bool,
        pending: &mut Option<LimitGuard>,
    ) -> Result<Step, ProxyError> {
        let limits = &self.common.limits;
        let mut guard = self.lock();
        let st = &mut *guard;
        if !fresh
            && let Some(host) = st.hosts.get_mut(&addr)
            && let Some(idle) = host.idle.pop()
        {
            return Ok(Step::Reuse(idle));
        }
        if pending.is_none() {
            match limits.try_acquire(Resource::PendingRequests) {
                Some(g) => *pending = Some(g),
                None => {
                    tracing::debug!(%addr, "upstream pending requests overflow");
                    return Err(ProxyError::OverflowMaxPendingRequests);
                }
            }
        }
        let host = st.hosts.entry(addr).or_default();
        let slot = limits.try_acquire(Resource::Connections);
        if slot.is_some() || host.conns == 0 {
            host.conns += 1;
            st.next_id += 1;
            return Ok(Step::Dial(ConnSlot {
                pool: Arc::downgrade(self),
                addr,
                id: st.next_id,
                limit: slot,
            }));
        }
        // A resend wants a new connection, but with no room for one an idle connection
        // beats waiting.
        if let Some(idle) = host.idle.pop() {
            return Ok(Step::Reuse(idle));
        }
        let (tx, rx) = oneshot::channel();
        host.push_waiter(tx);
        Ok(Step::Wait(rx))
    }

    async fn dial(&self, addr: SocketAddr, slot: ConnSlot) -> Result<Conn, ProxyError> {
        // On failure `slot` is dropped here, which frees it for a waiter.
        let timeout = self.common.settings.connect_timeout;
        let deadline = crate::deadline::after(Instant::now(), timeout);
        let stream = connector::connect(addr, timeout).await?;
        match &self.common.tls {
            None => self.start(addr, slot, stream).await,
            Some(tls) => {
                let (stream, _) = tls.connect(stream, addr, deadline).await?;
                self.start(addr, slot, stream).await
            }
        }
    }

    /// HTTP/1.1 on a connected stream: the connection task is spawned, the sender returned.
    async fn start<I>(
        &self,
        addr: SocketAddr,
        slot: ConnSlot,
        stream: I,
    ) -> Result<Conn, ProxyError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let id = slot.id;
        let io = CountedIo::with_held(stream, self.common.open.clone(), slot);
        let (sender, conn) = Builder::new().handshake(io).await.map_err(|error| {
            tracing::debug!(%error, %addr, "upstream handshake failed");
            ProxyError::ConnectFailure
        })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, %addr, "upstream connection closed");
            }
        });
        Ok(Conn {
            sender,
            id,
            used: 0,
        })
    }

    /// Take a connection dialled elsewhere (the auto pool's first connection to a host that
    /// chose HTTP/1.1) into the pool as an idle connection. Dropped when the circuit
    /// breaker has no room for it.
    pub(super) async fn adopt<I>(
        self: &Arc<Self>,
        addr: SocketAddr,
        stream: I,
    ) -> Result<(), ProxyError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let slot = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let host = st.hosts.entry(addr).or_default();
            let limit = self.common.limits.try_acquire(Resource::Connections);
            if limit.is_none() && host.conns > 0 {
                return Ok(());
            }
            host.conns += 1;
            st.next_id += 1;
            ConnSlot {
                pool: Arc::downgrade(self),
                addr,
                id: st.next_id,
                limit,
            }
        };
        let conn = self.start(addr, slot, stream).await?;
        self.put(addr, conn);
        Ok(())
    }

    /// The response, with its connection attached to the body when it can be reused.
    fn respond(
        self: &Arc<Self>,
        addr: SocketAddr,
        conn: Conn,
        res: Response<Incoming>,
    ) -> Response<UpstreamBody> {
        let reusable = res.status() != StatusCode::SWITCHING_PROTOCOLS
            && self
                .common
                .settings
                .max_requests_per_connection
                .is_none_or(|max| conn.used < max);
        if !reusable {
            // Dropping the sender closes the connection once this response is done (or
            // leaves the socket to the upgrade).
            return res.map(UpstreamBody::new);
        }
        if res.body().is_end_stream() {
            self.put(addr, conn);
            return res.map(UpstreamBody::new);
        }
        let lease = Lease {
            pool: self.clone(),
            addr,
            conn,
        };
        res.map(|inner| UpstreamBody {
            inner,
            lease: Some(lease),
        })
    }

    /// A connection comes back: to the first waiter, else to the idle list.
    fn put(self: &Arc<Self>, addr: SocketAddr, conn: Conn) {
        let mut guard = self.lock();
        let st = &mut *guard;
        // A live connection keeps its host's entry (`conns` > 0).
        let Some(host) = st.hosts.get_mut(&addr) else {
            return;
        };
        let Some(Handoff::Conn(conn)) = host.hand_off(Handoff::Conn(conn)) else {
            return;
        };
        host.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        if let Some(timeout) = self.common.settings.idle_timeout
            && !st.reaper
        {
            st.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self), timeout));
        }
    }

    /// A connection's slot is free again: let a waiter of its host dial.
    fn retry(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if let Some(host) = st.hosts.get_mut(&addr) {
            let _ = host.hand_off(Handoff::Retry);
            if host.is_unused() {
                st.hosts.remove(&addr);
            }
        }
    }

    /// The socket of connection `id` closed (or its dial failed).
    fn closed(&self, addr: SocketAddr, id: u64) {
        let mut stale = None;
        let mut st = self.lock();
        if let Some(host) = st.hosts.get_mut(&addr) {
            host.conns = host.conns.saturating_sub(1);
            if let Some(i) = host.idle.iter().position(|i| i.conn.id == id) {
                stale = Some(host.idle.remove(i));
            }
            let _ = host.hand_off(Handoff::Retry);
            if host.is_unused() {
                st.hosts.remove(&addr);
            }
        }
        drop(st);
        drop(stale);
    }

    /// Take out idle connections older than `timeout` or already closed. Returns them (to be
    /// dropped outside the lock) and whether any idle connection is left.
    fn sweep(&self, timeout: Duration) -> (Vec<Idle>, bool) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut st = self.lock();
        for host in st.hosts.values_mut() {
            expired.extend(host.idle.extract_if(.., |i| {
                now.saturating_duration_since(i.since) >= timeout || i.conn.sender.is_closed()
            }));
        }
        st.hosts.retain(|_, h| !h.is_unused());
        let more = st.hosts.values().any(|h| !h.idle.is_empty());
        if !more {
            st.reaper = false;
        }
        (expired, more)
    }

    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock().hosts.values().map(|h| h.idle.len()).sum()
    }
}

/// Closes idle connections older than `timeout`, checking every half timeout; stops when
/// no connection is idle (the next one to go idle starts it again) or the pool is gone.
async fn reap(pool: Weak<H1Pool>, timeout: Duration) {
    let every = (timeout / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let (expired, more) = pool.sweep(timeout);
        drop(pool);
        drop(expired);
        if !more {
            return;
        }
    }
}

/// hyper's connection sends the URI as it is: send origin form (`/path?query`), as Envoy
/// does, rather than the absolute form the caller builds.
fn origin_form(req: &mut Request<RequestBody>) {
    if req.method() == Method::CONNECT || req.uri().scheme().is_none() {
        return;
    }
    let uri = match req.uri().path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    *req.uri_mut() = uri;
}

/// Per-connection bookkeeping, kept inside the socket wrapper: the circuit-breaker slot
/// (when one was free) and the host's connection count, both given back when the socket
/// closes.
struct ConnSlot {
    pool: Weak<H1Pool>,
    addr: SocketAddr,
    id: u64,
    limit: Option<LimitGuard>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        // Release the breaker slot before a waiter is told to dial with it.
        drop(self.limit.take());
        if let Some(pool) = self.pool.upgrade() {
            pool.closed(self.addr, self.id);
        }
    }
}

/// A queued request. Dropped after being chosen but before taking what it was given (the
/// request was cancelled), it passes the connection or the retry on.
struct Waiting<'a> {
    rx: oneshot::Receiver<Handoff>,
    pool: &'a Arc<H1Pool>,
    addr: SocketAddr,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Handoff::Conn(conn)) => self.pool.put(self.addr, conn),
            Ok(Handoff::Retry) => self.pool.retry(self.addr),
            Err(_) => {}
        }
    }
}

/// A connection carried by its response body, back to the pool when the body ends.
pub(crate) struct Lease {
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    conn: Conn,
}

impl Lease {
    pub(super) fn release(self) {
        self.pool.put(self.addr, self.conn);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("addr", &self.addr)
            .field("conn", &self.conn.id)
            .finish()
    }
}
