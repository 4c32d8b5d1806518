//! Sending a routed request to its cluster: circuit breakers, attempts, retries with
//! back-off, hedging on per-try timeout, and the timeouts that bound all of it.
//!
//! A route without a retry policy takes the direct path: one host, one attempt, the body
//! streamed through. With a policy, the request body is first read into memory up to the
//! route's retry buffer limit so it can be sent again; a longer body is streamed once and
//! that request is not retried. Attempts run as futures side by side (several at once
//! only when hedging); the first response that is not retriable wins and the others are
//! dropped, which cancels them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderValue, Response};
use legate_snapshot::{ForwardAction, RetryPolicy};
use tokio::time::Instant;

use crate::access_log::Trail;
use crate::body::{self, BodyTimers, Budgets, Buffered, Held, RequestBody, ResponseBody, Tail};
use crate::cluster::ClusterRuntime;
use crate::deadline;
use crate::error::ProxyError;
use crate::error::ResponseFlags;
use crate::lb::{ActiveRequest, Host};
use crate::load::{self, Attempt};
use crate::pool::UpstreamBody;
use crate::resilience::limits::{LimitGuard, Resource};
use crate::resilience::{hooks, retry};
use crate::service::Template;
use crate::trace::AttemptSpan;

/// A routed request ready to go upstream.
pub(crate) struct Request<'a> {
    /// Where a retry copy of the body is taken from.
    pub(crate) budgets: Budgets<'a>,
    pub(crate) cluster: &'a Arc<ClusterRuntime>,
    pub(crate) fwd: &'a ForwardAction,
    pub(crate) tpl: Template,
    pub(crate) body: body::Downstream,
    pub(crate) upgrade: bool,
    /// The whole-request timeout: the route's, or what a gRPC request's `grpc-timeout`
    /// makes of it ([`crate::grpc::request_timeout`]).
    pub(crate) timeout: Option<Duration>,
    /// The stream idle timeout in force (route `idle_timeout`, else the listener's).
    pub(crate) stream_idle: Option<Duration>,
    /// What the access log learns: the host, the attempts, retry exhaustion.
    pub(crate) trail: &'a mut Trail,
    /// The request's server span, when it is sampled.
    pub(crate) trace: Option<&'a crate::trace::ServerSpan>,
}

pub(crate) async fn forward(r: Request<'_>) -> Result<Response<ResponseBody>, ProxyError> {
    // As Envoy counts (%UPSTREAM_REQUEST_ATTEMPT_COUNT%): the first attempt exists once the
    // request is forwarded to a cluster, even when no host can be picked or a breaker
    // refuses it.
    r.trail.attempts = 1;
    let cluster = r.cluster;
    let res = forward_inner(r).await;
    if let Err(e) = &res
        && load::refused_unsent(*e)
    {
        cluster.stats.load.dropped();
    }
    res
}

async fn forward_inner(r: Request<'_>) -> Result<Response<ResponseBody>, ProxyError> {
    let start = Instant::now();
    let deadline = r.timeout.map(|t| deadline::after(start, t));
    let breaker = hooks::breaker_acquire(r.cluster)?;
    let policy = match r.fwd.retry_policy.as_deref() {
        Some(p) if !r.upgrade => p,
        _ => {
            let res = single(r, deadline).await;
            hooks::breaker_record(breaker, &res);
            return res;
        }
    };
    let Request {
        budgets,
        cluster,
        fwd,
        tpl,
        body,
        stream_idle,
        trail,
        trace,
        ..
    } = r;
    let buffering = body::buffer_request(body, fwd.retry_buffer_limit, budgets);
    let body = match deadline {
        Some(at) => tokio::time::timeout_at(at, buffering)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)??,
        None => buffering.await?,
    };
    let (body, replayable) = match body {
        Buffered::Complete(b) => (b, true),
        Buffered::TooLong(b, why) => {
            cluster.stats.buffer_overflow(why);
            (b, false)
        }
    };
    let may_resend = retry::is_idempotent(tpl.method())
        || fwd.retry_non_idempotent
        || tpl.headers().contains_key(retry::IDEMPOTENCY_KEY);
    let request_ok = retry::request_allows_retry(policy, tpl.headers());
    let grpc = crate::grpc::is_grpc(tpl.headers());
    let driver = Driver {
        grpc,
        cluster,
        policy,
        tpl,
        body: Some(body),
        replayable,
        may_resend,
        request_ok,
        hedge: fwd.hedge_on_per_try_timeout && policy.per_try_timeout.is_some(),
        deadline,
        stream_idle,
        tried: Vec::new(),
        trace,
        attempts: 0,
        max_attempts: policy.num_retries.saturating_add(1),
        trail,
    };
    let res = driver.run().await;
    hooks::breaker_record(breaker, &res);
    res
}

/// One attempt, no retries: the hot path.
async fn single(
    r: Request<'_>,
    deadline: Option<Instant>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Request {
        cluster,
        mut tpl,
        body,
        upgrade,
        stream_idle,
        trail,
        trace,
        ..
    } = r;
    let body = if upgrade {
        RequestBody::Empty
    } else {
        RequestBody::Incoming(body)
    };
    let host = cluster.pick().ok_or(ProxyError::NoHealthyUpstream)?;
    trail.upstream_host = Some(host.addr);
    let slot = cluster
        .limits
        .try_acquire(Resource::Requests)
        .ok_or(ProxyError::OverflowMaxRequests)?;
    let active = host.start_request();
    let grpc = crate::grpc::is_grpc(tpl.headers());
    let mut req = tpl.build(&host, body, true)?;
    let span = trace.and_then(|t| t.attempt(&mut req, host.addr, 1));
    let attempt = cluster.stats.load.begin();
    let started = Instant::now();
    let limit = earliest(
        deadline.map(|at| (at, ProxyError::UpstreamTimeout)),
        stream_idle.map(|d| (started + d, ProxyError::StreamIdleTimeout)),
    );
    let result = send_until(cluster, host.addr, req, limit).await;
    let span = span.map(|mut s| {
        s.record(&result);
        s
    });
    let res = observe(cluster, &host, started, attempt, grpc, result)?;
    let timers = BodyTimers::new(
        deadline.map(|at| (at, ProxyError::UpstreamTimeout)),
        stream_idle.map(|d| (d, ProxyError::StreamIdleTimeout)),
    );
    Ok(wrap(res, active, slot, timers, span))
}

async fn send_until(
    cluster: &ClusterRuntime,
    addr: SocketAddr,
    req: http::Request<RequestBody>,
    limit: Option<(Instant, ProxyError)>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    match limit {
        Some((at, e)) => tokio::time::timeout_at(at, cluster.pool.send(addr, req))
            .await
            .unwrap_or(Err(e)),
        None => cluster.pool.send(addr, req).await,
    }
}

/// Record an attempt's outcome (stats, outlier detection, load report) and pass it on.
/// For a gRPC request whose response headers carry `grpc-status` (trailers-only), outlier
/// detection and the load report judge the HTTP status that status stands for, as Envoy's
/// router does; the per-cluster response counts keep the HTTP status.
fn observe(
    cluster: &ClusterRuntime,
    host: &Arc<Host>,
    started: Instant,
    attempt: Attempt,
    grpc: bool,
    result: Result<Response<UpstreamBody>, ProxyError>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let judged = |res: &Response<UpstreamBody>| {
        let status = res.status().as_u16();
        match grpc.then(|| crate::grpc::status(res.headers())).flatten() {
            Some(code) if status == 200 => crate::grpc::http_status_for(code),
            _ => status,
        }
    };
    attempt.finish(matches!(&result, Ok(res) if judged(res) < 500));
    match &result {
        Ok(res) => {
            cluster.stats.latency.observe(started.elapsed());
            cluster.stats.requests.record(res.status().as_u16());
            hooks::outlier_response(cluster, host, judged(res));
        }
        Err(e) => hooks::outlier_failure(cluster, host, *e),
    }
    result
}

fn wrap(
    res: Response<UpstreamBody>,
    active: ActiveRequest,
    slot: LimitGuard,
    timers: Option<BodyTimers>,
    attempt_span: Option<AttemptSpan>,
) -> Response<ResponseBody> {
    res.map(|body| ResponseBody::Upstream {
        body,
        held: Held {
            _active: Some(active),
            _request_slot: Some(slot),
            timers,
            open: None,
            tail: attempt_span.map(|s| {
                Box::new(Tail {
                    attempt_span: Some(s),
                    ..Tail::default()
                })
            }),
        },
    })
}

/// The earlier of two optional deadlines, with the error each stands for.
fn earliest(
    a: Option<(Instant, ProxyError)>,
    b: Option<(Instant, ProxyError)>,
) -> Option<(Instant, ProxyError)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

fn shorter(
    a: Option<(Duration, ProxyError)>,
    b: Option<(Duration, ProxyError)>,
) -> Option<(Duration, ProxyError)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// What an attempt future resolves to.
struct Done {
    host: Arc<Host>,
    active: ActiveRequest,
    slot: LimitGuard,
    started: Instant,
    /// Its load-report entry, finished when it is observed.
    attempt: Attempt,
    /// This attempt's per-try deadline, which keeps running over the response body.
    per_try_deadline: Option<Instant>,
    result: Result<Response<UpstreamBody>, ProxyError>,
    /// Its CLIENT span, when traced; it ends with the response body of this attempt.
    span: Option<AttemptSpan>,
}

/// What a response keeps of its attempt until its body ends.
struct Meta {
    active: ActiveRequest,
    slot: LimitGuard,
    per_try_deadline: Option<Instant>,
    span: Option<AttemptSpan>,
}

type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// The best answer so far, returned when no further attempt is possible.
enum Last {
    Response(Box<(Meta, Response<UpstreamBody>)>),
    Error(ProxyError),
}

/// A retry waiting for its back-off to pass, holding its circuit-breaker retry slot.
struct PendingRetry {
    at: Instant,
    slot: LimitGuard,
}

struct Driver<'a> {
    cluster: &'a Arc<ClusterRuntime>,
    policy: &'a RetryPolicy,
    tpl: Template,
    /// The request body; taken by the last attempt that can be made.
    body: Option<RequestBody>,
    replayable: bool,
    /// The method is idempotent, the request carries an idempotency key, or the route
    /// allows resending non-idempotent requests.
    may_resend: bool,
    /// `retriable_request_headers` admit this request.
    request_ok: bool,
    /// The request is gRPC: a trailers-only `grpc-status` is judged as an HTTP status.
    grpc: bool,
    hedge: bool,
    deadline: Option<Instant>,
    stream_idle: Option<Duration>,
    /// Hosts already tried, for the previous-hosts predicate.
    tried: Vec<SocketAddr>,
    trace: Option<&'a crate::trace::ServerSpan>,
    attempts: u32,
    max_attempts: u32,
    trail: &'a mut Trail,
}

impl<'a> Driver<'a> {
    async fn run(mut self) -> Result<Response<ResponseBody>, ProxyError> {
        let mut in_flight: FuturesUnordered<AttemptFuture<'a>> = FuturesUnordered::new();
        let mut last: Option<Last> = None;
        let mut pending: Option<PendingRetry> = None;
        // The slot of the retry last started, held until an attempt's outcome is known, as
        // Envoy holds it (from scheduling the retry to judging the next answer): a retry
        // counts against `max_retries` or the budget for its back-off *and* its attempt, so
        // a budget of P % of the requests in flight bounds the retries per request by
        // P/(100-P) whatever the timings.
        let mut retrying: Option<LimitGuard> = None;
        let mut start_now = true;
        let mut hedge_at: Option<Instant> = None;
        let mut idle_at = self.stream_idle.map(|d| deadline::after(Instant::now(), d));
        loop {
            let now = Instant::now();
            if pending.as_ref().is_some_and(|p| p.at <= now) {
                if let Some(p) = pending.take() {
                    retrying.replace(p.slot);
                }
                start_now = true;
            }
            if start_now {
                start_now = false;
                match self.start() {
                    Ok(fut) => {
                        in_flight.push(fut);
                        // The response being retried is no longer needed.
                        if matches!(last, Some(Last::Response(..))) {
                            last = None;
                        }
                        if self.hedge {
                            hedge_at = self.policy.per_try_timeout.map(|d| deadline::after(now, d));
                        }
                        idle_at = self.stream_idle.map(|d| deadline::after(now, d));
                    }
                    Err(e) if in_flight.is_empty() => return self.finish(last, Some(e)),
                    Err(_) => {}
                }
            }
            if in_flight.is_empty() && pending.is_none() {
                return self.finish(last, None);
            }
            let wake = [
                self.deadline,
                pending.as_ref().map(|p| p.at),
                hedge_at,
                idle_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    drop(retrying.take());
                    idle_at = self.stream_idle.map(|d| deadline::after(Instant::now(), d));
                    match self.settle(done, &mut pending, !in_flight.is_empty()) {
                        Settled::Win(res) => return Ok(res),
                        // A response is a better fallback than a later error.
                        Settled::Keep(Last::Error(e)) if matches!(last, Some(Last::Response(..))) => {
                            tracing::debug!(error = %e, "attempt failed; keeping an earlier response");
                        }
                        Settled::Keep(l) => last = Some(l),
                        Settled::Fail(e) => return Err(e),
                    }
                }
                () = timer => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| d <= now) {
                        return Err(ProxyError::UpstreamTimeout);
                    }
                    if idle_at.is_some_and(|d| d <= now) {
                        return Err(ProxyError::StreamIdleTimeout);
                    }
                    if hedge_at.is_some_and(|d| d <= now) {
                        hedge_at = None;
                        if pending.is_none()
                            && self.can_retry(false)
                            && let Some(slot) = self.retry_slot()
                        {
                            self.cluster.stats.hedges.inc();
                            pending = Some(PendingRetry { at: now, slot });
                        }
                    }
                }
            }
        }
    }

    /// Whether another attempt may be made. `never_sent`: the failed attempt provably did
    /// not reach the upstream, so even a non-idempotent request may go again.
    fn can_retry(&self, never_sent: bool) -> bool {
        self.attempts < self.max_attempts
            && self.replayable
            && self.request_ok
            && (self.may_resend || never_sent)
    }

    fn retry_slot(&self) -> Option<LimitGuard> {
        let slot = self.cluster.limits.try_acquire(Resource::Retries);
        if slot.is_none() {
            self.cluster.stats.retry_overflow.inc();
        }
        slot
    }

    /// Start the next attempt.
    fn start(&mut self) -> Result<AttemptFuture<'a>, ProxyError> {
        let host = if self.policy.previous_hosts && !self.tried.is_empty() {
            hooks::pick_avoiding(
                self.cluster,
                &self.tried,
                self.policy.host_selection_retry_max_attempts,
            )
        } else {
            self.cluster.pick()
        }
        .ok_or(ProxyError::NoHealthyUpstream)?;
        let slot = self
            .cluster
            .limits
            .try_acquire(Resource::Requests)
            .ok_or(ProxyError::OverflowMaxRequests)?;
        let last = !self.can_retry_after_this();
        let body = if last {
            self.body.take()
        } else {
            self.body.as_ref().and_then(RequestBody::try_clone)
        }
        .ok_or(ProxyError::BadRequest)?;
        let mut req = self.tpl.build(&host, body, last)?;
        if self.attempts > 0 {
            self.cluster.stats.retries.inc();
        }
        self.attempts += 1;
        self.trail.attempts = self.attempts;
        self.trail.upstream_host = Some(host.addr);
        let span = self
            .trace
            .and_then(|t| t.attempt(&mut req, host.addr, self.attempts));
        self.tried.push(host.addr);
        let active = host.start_request();
        let attempt = self.cluster.stats.load.begin();
        let started = Instant::now();
        let per_try_deadline = self
            .policy
            .per_try_timeout
            .map(|d| deadline::after(started, d));
        // A hedged attempt is not cut off by its per-try timeout: the timeout starts
        // another attempt instead (in `run`).
        let limit = earliest(
            if self.hedge {
                None
            } else {
                per_try_deadline.map(|at| (at, ProxyError::PerTryTimeout))
            },
            self.policy
                .per_try_idle_timeout
                .map(|d| (started + d, ProxyError::PerTryIdleTimeout)),
        );
        let cluster: &'a ClusterRuntime = self.cluster;
        let hedge = self.hedge;
        Ok(Box::pin(async move {
            let result = send_until(cluster, host.addr, req, limit).await;
            let span = span.map(|mut s| {
                s.record(&result);
                s
            });
            Done {
                host,
                active,
                slot,
                started,
                attempt,
                per_try_deadline: if hedge { None } else { per_try_deadline },
                result,
                span,
            }
        }))
    }

    /// A retriable outcome with no attempt left: Envoy's URX.
    fn note_exhausted(&mut self) {
        if self.attempts >= self.max_attempts {
            self.trail.flags.insert(ResponseFlags::URX);
        }
    }

    /// Whether an attempt after the one being started could still happen, i.e. whether
    /// the body must be kept.
    fn can_retry_after_this(&self) -> bool {
        self.attempts + 1 < self.max_attempts && self.replayable
    }

    fn settle(
        &mut self,
        done: Done,
        pending: &mut Option<PendingRetry>,
        others_in_flight: bool,
    ) -> Settled {
        let Done {
            host,
            active,
            slot,
            started,
            attempt,
            per_try_deadline,
            result,
            span,
        } = done;
        match observe(self.cluster, &host, started, attempt, self.grpc, result) {
            Ok(res) => {
                let meta = Meta {
                    active,
                    slot,
                    per_try_deadline,
                    span,
                };
                if !retry::retriable_response(self.policy, res.status().as_u16(), res.headers()) {
                    return Settled::Win(self.win(meta, res));
                }
                if pending.is_some() {
                    // A retry is already scheduled (hedging): keep this as the fallback.
                    return keep(meta, res);
                }
                if !self.can_retry(false) {
                    self.note_exhausted();
                    return if others_in_flight {
                        keep(meta, res)
                    } else {
                        Settled::Win(self.win(meta, res))
                    };
                }
                let wait = retry::rate_limited_delay(self.policy, res.headers())
                    .unwrap_or_else(|| self.policy.back_off.delay(self.attempts - 1));
                let at = deadline::after(Instant::now(), wait);
                if self.deadline.is_some_and(|d| at >= d) {
                    // The retry could not finish in time: answer with what we have.
                    return Settled::Win(self.win(meta, res));
                }
                match self.retry_slot() {
                    Some(slot) => {
                        *pending = Some(PendingRetry { at, slot });
                        keep(meta, res)
                    }
                    None if others_in_flight => keep(meta, res),
                    None => {
                        self.trail.flags.insert(ResponseFlags::UO);
                        let mut won = self.win(meta, res);
                        won.headers_mut().insert(
                            "x-legate-error",
                            HeaderValue::from_static(ProxyError::OverflowMaxRetries.code()),
                        );
                        Settled::Win(won)
                    }
                }
            }
            Err(e) => {
                drop((active, slot, span));
                if pending.is_some() || !retry::retriable_error(self.policy, e) {
                    return if others_in_flight || pending.is_some() {
                        Settled::Keep(Last::Error(e))
                    } else {
                        Settled::Fail(e)
                    };
                }
                if !self.can_retry(e.never_sent()) {
                    self.note_exhausted();
                    return if others_in_flight {
                        Settled::Keep(Last::Error(e))
                    } else {
                        Settled::Fail(e)
                    };
                }
                let at = deadline::after(
                    Instant::now(),
                    self.policy.back_off.delay(self.attempts - 1),
                );
                if self.deadline.is_some_and(|d| at >= d) {
                    return if others_in_flight {
                        Settled::Keep(Last::Error(e))
                    } else {
                        Settled::Fail(e)
                    };
                }
                match self.retry_slot() {
                    Some(slot) => {
                        *pending = Some(PendingRetry { at, slot });
                        Settled::Keep(Last::Error(e))
                    }
                    None if others_in_flight => Settled::Keep(Last::Error(e)),
                    None => Settled::Fail(ProxyError::OverflowMaxRetries),
                }
            }
        }
    }

    /// The answer when nothing is left to wait for.
    fn finish(
        &self,
        last: Option<Last>,
        start_error: Option<ProxyError>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        match last {
            Some(Last::Response(b)) => {
                let (meta, res) = *b;
                Ok(self.win(meta, res))
            }
            Some(Last::Error(e)) => Err(e),
            None => Err(start_error.unwrap_or(ProxyError::NoHealthyUpstream)),
        }
    }

    fn win(&self, meta: Meta, res: Response<UpstreamBody>) -> Response<ResponseBody> {
        let deadline = earliest(
            self.deadline.map(|at| (at, ProxyError::UpstreamTimeout)),
            meta.per_try_deadline
                .map(|at| (at, ProxyError::PerTryTimeout)),
        );
        let idle = shorter(
            self.policy
                .per_try_idle_timeout
                .map(|d| (d, ProxyError::PerTryIdleTimeout)),
            self.stream_idle.map(|d| (d, ProxyError::StreamIdleTimeout)),
        );
        wrap(
            res,
            meta.active,
            meta.slot,
            BodyTimers::new(deadline, idle),
            meta.span,
        )
    }
}

/// A response kept as the fallback while another attempt runs: its attempt is over for
/// tracing (its span ends now, as Envoy's does when it moves on to a retry), and a
/// fallback that wins later is sent without one.
fn keep(mut meta: Meta, res: Response<UpstreamBody>) -> Settled {
    meta.span = None;
    Settled::Keep(Last::Response(Box::new((meta, res))))
}

/// Settling is per attempt, not per request, so the size of `Win` is not worth a box.
#[allow(clippy::large_enum_variant)]
enum Settled {
    Win(Response<ResponseBody>),
    Keep(Last),
    Fail(ProxyError),
}
