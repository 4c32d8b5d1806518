//! Body types on both sides of the proxy. Bodies stream; the only buffering is the bounded
//! copy of a request body kept so a retry can send it again.
//!
//! That copy is bounded three ways: by the route's `request_body_buffer_limit`, and by two
//! [`BufferBudget`]s, one for the downstream connection (an HTTP/2 client may run hundreds
//! of streams on it) and one for the process. A body that does not fit is never refused: it
//! is streamed once, without a retry, and the reason is counted.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use legate_telemetry::Gauge;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::lb::ActiveRequest;
use crate::pool::UpstreamBody;
use crate::resilience::limits::LimitGuard;

/// What an access log learns of a request body as it is read: its bytes and when it
/// ended. Shared by the body, which can still be streaming after the response head came
/// back, and the request's log line; one per logged request, updated without a lock.
#[derive(Debug)]
pub(crate) struct BodyMeter {
    start: Instant,
    bytes: AtomicU64,
    /// Nanoseconds from `start` to the body's end, plus one; 0 until it ended.
    ended: AtomicU64,
}

impl BodyMeter {
    pub(crate) fn new(start: Instant) -> Arc<Self> {
        Arc::new(BodyMeter {
            start,
            bytes: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        })
    }

    fn count(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The body ended now (the first call counts).
    pub(crate) fn end(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let _ = self.ended.compare_exchange(
            0,
            nanos.saturating_add(1).max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Body bytes read from the client so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// When the body ended, from the request's start; `None` while it has not.
    pub(crate) fn ended(&self) -> Option<Duration> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }
}

/// The downstream request body as read off the client's connection, metered for the
/// access log when the request is logged.
#[derive(Debug)]
pub struct Downstream {
    inner: Incoming,
    meter: Option<Arc<BodyMeter>>,
}

impl Downstream {
    pub(crate) fn new(inner: Incoming, meter: Option<Arc<BodyMeter>>) -> Self {
        Downstream { inner, meter }
    }
}

impl Body for Downstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(m) = &this.meter {
            match &res {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        m.count(data.len());
                    }
                    // A reader may stop at a known length without polling the end.
                    if this.inner.is_end_stream() {
                        m.end();
                    }
                }
                Poll::Ready(None) => m.end(),
                Poll::Ready(Some(Err(_))) | Poll::Pending => {}
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the proxy sends upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The downstream request body, streamed through (not replayable).
    Incoming(Downstream),
    Empty,
    /// A small body legate makes itself (a token request's form), sent once.
    Full(Option<Bytes>),
    /// A buffered body, sent again on each attempt.
    Replay(ReplayBody),
    /// A body that could not be kept whole: the part already read, then the rest streamed.
    Tail {
        head: VecDeque<Bytes>,
        rest: Downstream,
        /// What `head` holds of the budgets, given back once it has been sent.
        reserved: Option<Reservation>,
    },
}

/// A complete request body held in memory; clones share the bytes.
#[derive(Clone, Debug)]
pub struct ReplayBody {
    kept: Arc<Kept>,
    trailers: Option<Arc<HeaderMap>>,
    next: usize,
    trailers_sent: bool,
}

/// The chunks of a buffered body and their share of the budgets, given back when the last
/// attempt holding them is dropped.
#[derive(Debug)]
struct Kept {
    chunks: Box<[Bytes]>,
    _reserved: Reservation,
}

impl ReplayBody {
    fn len(&self) -> u64 {
        self.kept.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

/// Memory that request bodies kept for retries may hold together: the process's
/// (`--retry-buffer-limit`) or one downstream connection's
/// (`--retry-buffer-connection-limit`).
#[derive(Debug)]
pub(crate) struct BufferBudget {
    limit: u64,
    used: AtomicU64,
    /// `legate_retry_buffer_bytes`, for the process's budget.
    gauge: Option<Arc<Gauge>>,
}

impl BufferBudget {
    pub(crate) fn new(limit: u64, gauge: Option<Arc<Gauge>>) -> Arc<Self> {
        Arc::new(BufferBudget {
            limit,
            used: AtomicU64::new(0),
            gauge,
        })
    }

    /// Take `n` bytes if they fit under the limit.
    fn try_take(&self, n: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if taken && let Some(g) = &self.gauge {
            g.add(i64::try_from(n).unwrap_or(i64::MAX));
        }
        taken
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.sub(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The budgets a request's retry copy is taken from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budgets<'a> {
    pub(crate) global: &'a Arc<BufferBudget>,
    pub(crate) connection: &'a Arc<BufferBudget>,
}

/// Bytes held in both budgets by one request body; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    global: Arc<BufferBudget>,
    connection: Arc<BufferBudget>,
    bytes: u64,
}

impl Reservation {
    fn new(budgets: Budgets<'_>) -> Self {
        Reservation {
            global: budgets.global.clone(),
            connection: budgets.connection.clone(),
            bytes: 0,
        }
    }

    /// Hold `total` bytes in all, taking what is missing from both budgets.
    fn grow_to(&mut self, total: u64) -> Result<(), Overflow> {
        let Some(more) = total.checked_sub(self.bytes).filter(|m| *m > 0) else {
            return Ok(());
        };
        if !self.connection.try_take(more) {
            return Err(Overflow::Connection);
        }
        if !self.global.try_take(more) {
            self.connection.give_back(more);
            return Err(Overflow::Global);
        }
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.connection.give_back(self.bytes);
            self.global.give_back(self.bytes);
        }
    }
}

/// Why a request body was not kept for retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Longer than the route's `request_body_buffer_limit`.
    Request,
    /// The downstream connection's budget was used up.
    Connection,
    /// The process's budget was used up.
    Global,
}

impl Overflow {
    pub(crate) const ALL: [Overflow; 3] =
        [Overflow::Request, Overflow::Connection, Overflow::Global];

    /// The `reason` label of `legate_retry_buffer_overflow_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Overflow::Request => "request",
            Overflow::Connection => "connection",
            Overflow::Global => "global",
        }
    }
}

/// How much of a request body [`buffer_request`] read.
pub(crate) enum Buffered {
    /// The whole body: it can be replayed.
    Complete(RequestBody),
    /// It could not be kept (why): sent once, streaming what was not read yet.
    TooLong(RequestBody, Overflow),
}

/// Read `body` into memory, up to `limit` bytes and what `budgets` allow, so it can be sent
/// more than once. A body with a declared length that does not fit is not read at all.
pub(crate) async fn buffer_request(
    mut body: Downstream,
    limit: u64,
    budgets: Budgets<'_>,
) -> Result<Buffered, ProxyError> {
    if body.is_end_stream() {
        return Ok(Buffered::Complete(RequestBody::Empty));
    }
    let mut reserved = Reservation::new(budgets);
    if let Some(declared) = body.size_hint().exact() {
        let fits = if declared > limit {
            Err(Overflow::Request)
        } else {
            reserved.grow_to(declared)
        };
        if let Err(why) = fits {
            return Ok(Buffered::TooLong(RequestBody::Incoming(body), why));
        }
    }
    let mut chunks = Vec::new();
    let mut len = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ProxyError::BadRequest)?;
        match frame.into_data() {
            Ok(data) => {
                len = len.saturating_add(data.len() as u64);
                chunks.push(data);
                let fits = if len > limit {
                    Err(Overflow::Request)
                } else {
                    reserved.grow_to(len)
                };
                if let Err(why) = fits {
                    return Ok(Buffered::TooLong(
                        RequestBody::Tail {
                            head: chunks.into(),
                            rest: body,
                            reserved: Some(reserved),
                        },
                        why,
                    ));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(Arc::new(t));
                }
            }
        }
    }
    Ok(Buffered::Complete(RequestBody::Replay(ReplayBody {
        kept: Arc::new(Kept {
            chunks: chunks.into(),
            _reserved: reserved,
        }),
        trailers,
        next: 0,
        trailers_sent: false,
    })))
}

impl RequestBody {
    /// A copy for another attempt, when this body can be sent again.
    pub(crate) fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Replay(r) => Some(RequestBody::Replay(ReplayBody {
                next: 0,
                trailers_sent: false,
                ..r.clone()
            })),
            RequestBody::Incoming(_) | RequestBody::Tail { .. } => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Replay(r) => {
                if let Some(chunk) = r.kept.chunks.get(r.next) {
                    r.next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                if !r.trailers_sent {
                    r.trailers_sent = true;
                    if let Some(t) = &r.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers((**t).clone()))));
                    }
                }
                Poll::Ready(None)
            }
            RequestBody::Tail {
                head,
                rest,
                reserved,
            } => match head.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => {
                    // What was read ahead is on its way: the budgets have it back.
                    *reserved = None;
                    Pin::new(rest).poll_frame(cx)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Replay(r) => {
                r.next >= r.kept.chunks.len() && (r.trailers_sent || r.trailers.is_none())
            }
            RequestBody::Tail { head, rest, .. } => head.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Replay(r) if r.next == 0 => SizeHint::with_exact(r.len()),
            RequestBody::Replay(_) => SizeHint::default(),
            RequestBody::Tail { head, rest, .. } => {
                let head_len: u64 = head.iter().map(|c| c.len() as u64).sum();
                let mut hint = SizeHint::new();
                let r = rest.size_hint();
                hint.set_lower(head_len + r.lower());
                if let Some(upper) = r.upper() {
                    hint.set_upper(head_len + upper);
                }
                hint
            }
        }
    }
}

/// Deadlines that keep running while an upstream response body streams: the route timeout
/// (and the winning attempt's per-try timeout), and the idle timeout (per-try idle or
/// stream idle, whichever is shorter). Firing resets the downstream stream. The timer
/// itself is only created the first time the body has to wait, so a body that is already
/// there costs two clock reads.
#[derive(Debug)]
pub(crate) struct BodyTimers {
    deadline: Option<(Instant, ProxyError)>,
    idle: Option<(Duration, ProxyError)>,
    last_activity: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl BodyTimers {
    pub(crate) fn new(
        deadline: Option<(Instant, ProxyError)>,
        idle: Option<(Duration, ProxyError)>,
    ) -> Option<Self> {
        if deadline.is_none() && idle.is_none() {
            return None;
        }
        Some(BodyTimers {
            deadline,
            idle,
            last_activity: Instant::now(),
            sleep: None,
        })
    }

    /// Called when the body is waiting: the error to end it with if a deadline passed,
    /// else arm the timer so this task wakes when one does.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<ProxyError> {
        loop {
            let now = Instant::now();
            let deadline = self.deadline;
            let idle = self.idle.map(|(d, e)| (self.last_activity + d, e));
            let next = match (deadline, idle) {
                (Some(a), Some(b)) => {
                    if b.0 < a.0 {
                        b
                    } else {
                        a
                    }
                }
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return None,
            };
            if next.0 <= now {
                return Some(next.1);
            }
            match &mut self.sleep {
                Some(sleep) => {
                    if sleep.deadline() != next.0 {
                        sleep.as_mut().reset(next.0);
                    }
                }
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(next.0))),
            }
            let Some(sleep) = &mut self.sleep else {
                return None;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }

    fn activity(&mut self) {
        if self.idle.is_some() {
            self.last_activity = Instant::now();
        }
    }
}

/// What stays with a response until its body ends: the host's in-flight count, the
/// circuit-breaker request slot and the body deadlines.
#[derive(Debug, Default)]
pub struct Held {
    // Both are held only for their `Drop`: given back when the body ends.
    pub(crate) _active: Option<ActiveRequest>,
    pub(crate) _request_slot: Option<LimitGuard>,
    pub(crate) timers: Option<BodyTimers>,
    /// The downstream connection's count of open requests.
    pub(crate) open: Option<crate::listener::OpenRequest>,
    /// The access log line, the spans and the gRPC status count, when the request is
    /// logged, traced or gRPC.
    pub(crate) tail: Option<Box<Tail>>,
}

/// What happens when a response body ends or is dropped, in this order: its access log line
/// is written, the CLIENT span of the attempt whose response it is ends, then the request's
/// server span, then a gRPC response is counted by its status. Boxed in [`Held`]: spans are
/// large and only logged, sampled or gRPC requests have any of this.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    pub(crate) log: Option<crate::access_log::Pending>,
    pub(crate) attempt_span: Option<crate::trace::AttemptSpan>,
    pub(crate) span: Option<crate::trace::ServerSpan>,
    /// A gRPC response's count by status, taken from its trailers.
    pub(crate) grpc: Option<crate::grpc::Tally>,
}

impl Held {
    /// The [`Tail`], made on first use.
    pub(crate) fn tail(&mut self) -> &mut Tail {
        self.tail.get_or_insert_with(Box::default)
    }

    fn log(&mut self) -> Option<&mut crate::access_log::Pending> {
        self.tail.as_mut().and_then(|t| t.log.as_mut())
    }

    /// The body failed after the headers went out (not by the client leaving): the log line
    /// and the spans say why.
    fn body_failed(&mut self, cause: ProxyError) {
        let Some(t) = &mut self.tail else { return };
        if let Some(l) = &mut t.log {
            l.ended_by(cause.response_flag());
        }
        if let Some(s) = &mut t.attempt_span {
            s.body_failed(cause);
        }
        if let Some(s) = &mut t.span {
            s.body_failed(cause);
        }
    }
}

/// The error a response body ends with when a deadline fires mid-stream.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyTimeout(pub ProxyError);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy sends downstream.
#[derive(Debug)]
pub enum ResponseBody {
    /// An upstream response body, streamed through.
    Upstream { body: UpstreamBody, held: Held },
    /// A local reply.
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        ResponseBody::Full(if b.is_empty() { None } else { Some(b) })
    }

    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, held } => {
                let res = Pin::new(&mut *body).poll_frame(cx);
                match res {
                    Poll::Ready(None) => {
                        if let Some(l) = held.log() {
                            l.completed = true;
                        }
                        *held = Held::default();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The upstream cut its body (a reset, a closed connection, a broken
                        // encoding): the log's flag says so, not the client's DC.
                        held.body_failed(crate::pool::classify(&e));
                        *held = Held::default();
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(t) = &mut held.timers {
                            t.activity();
                        }
                        if let Some(g) = held.tail.as_mut().and_then(|t| t.grpc.as_mut())
                            && let Some(trailers) = frame.trailers_ref()
                        {
                            g.trailers(trailers);
                        }
                        if let Some(l) = held.log() {
                            if let Some(data) = frame.data_ref() {
                                l.record.bytes_sent =
                                    l.record.bytes_sent.saturating_add(data.len() as u64);
                            }
                            // hyper stops polling a body that says it ended (a known length
                            // fully sent), so the last frame is where it completes.
                            if body.is_end_stream() {
                                l.completed = true;
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Pending => {
                        if let Some(t) = &mut held.timers
                            && let Some(e) = t.poll_expired(cx)
                        {
                            held.body_failed(e);
                            *held = Held::default();
                            return Poll::Ready(Some(Err(Box::new(BodyTimeout(e)))));
                        }
                        Poll::Pending
                    }
                }
            }
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_take_from_both_budgets_and_give_back_on_drop() {
        let gauge = Arc::new(Gauge::default());
        let global = BufferBudget::new(100, Some(gauge.clone()));
        let conn_a = BufferBudget::new(70, None);
        let conn_b = BufferBudget::new(70, None);
        let a = Budgets {
            global: &global,
            connection: &conn_a,
        };
        let b = Budgets {
            global: &global,
            connection: &conn_b,
        };
        let mut first = Reservation::new(a);
        assert_eq!(first.grow_to(60), Ok(()));
        assert_eq!(
            first.grow_to(60),
            Ok(()),
            "growing to the same total takes nothing"
        );
        assert_eq!(gauge.get(), 60);
        // The connection's budget is checked first, and nothing stays taken on refusal.
        let mut second = Reservation::new(a);
        assert_eq!(second.grow_to(20), Err(Overflow::Connection));
        let mut third = Reservation::new(b);
        assert_eq!(third.grow_to(50), Err(Overflow::Global));
        assert_eq!(conn_b.used.load(Ordering::Relaxed), 0);
        assert_eq!(third.grow_to(40), Ok(()));
        assert_eq!(gauge.get(), 100);
        drop(first);
        assert_eq!(gauge.get(), 40);
        assert_eq!(conn_a.used.load(Ordering::Relaxed), 0);
        drop((second, third));
        assert_eq!(global.used.load(Ordering::Relaxed), 0);
        assert_eq!(gauge.get(), 0);
        // A limit never wraps around.
        let mut huge = Reservation::new(b);
        assert_eq!(huge.grow_to(u64::MAX), Err(Overflow::Connection));
    }
}
