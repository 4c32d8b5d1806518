//! Traces: a SERVER span per downstream request and a CLIENT span per upstream attempt,
//! exported over OTLP/gRPC to the cluster named by the listener's HCM `tracing`.
//!
//! The decision is made once, when a request arrives, before anything is allocated: a
//! request that is not sampled costs a header lookup or two and one random number, and its
//! trace headers go upstream as they came. Finished spans go into a bounded queue
//! ([`Queue`]) that a background task drains into the exporter; a full queue drops the span
//! and counts it, so a collector that is down or slow never holds a request.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use legate_snapshot::{CustomTagValue, EndpointAddress, Snapshot, Tracing};
use legate_telemetry::{Counter, Family};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor,
};
use tokio::sync::mpsc;

use crate::error::ProxyError;

/// Spans waiting for export at most; more are dropped and counted.
const QUEUE_CAPACITY: usize = 4096;
/// Spans per export call at most.
const MAX_BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export call's bound when `grpc_service.timeout` is not set.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout towards the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Counters of what became of finished spans.
#[derive(Clone, Debug)]
pub(crate) struct SpanStats {
    exported: Arc<Counter>,
    dropped_queue_full: Arc<Counter>,
    export_failed: Arc<Counter>,
}

impl SpanStats {
    pub(crate) fn new(family: &Family<Counter>) -> Self {
        SpanStats {
            exported: family.get_or_create(&["exported"]),
            dropped_queue_full: family.get_or_create(&["dropped_queue_full"]),
            export_failed: family.get_or_create(&["export_failed"]),
        }
    }
}

/// What identifies an export pipeline: pipelines are reused across snapshots while it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    endpoints: Vec<EndpointAddress>,
    service_name: Arc<str>,
    timeout: Duration,
}

/// The tracers of the current snapshot, one per distinct collector and service name.
#[derive(Default)]
pub(crate) struct Tracers {
    pipelines: HashMap<PipelineKey, SdkTracer>,
}

impl Tracers {
    /// Tracers for `snapshot`'s listeners, keyed by listener name; pipelines whose key did
    /// not change are kept, the others are dropped (their queues drain in the background).
    /// Must run inside the tokio runtime (the collector channel spawns its connection task).
    pub(crate) fn update(
        &mut self,
        snapshot: &Snapshot,
        stats: &SpanStats,
    ) -> HashMap<Arc<str>, Arc<Tracer>> {
        let mut next = HashMap::new();
        let mut out = HashMap::new();
        for l in &snapshot.listeners {
            let Some(cfg) = &l.tracing else { continue };
            let Some(cluster) = snapshot.clusters.get(&cfg.collector_cluster) else {
                continue;
            };
            let key = PipelineKey {
                endpoints: cluster
                    .load_assignment
                    .endpoints()
                    .map(|e| e.address.clone())
                    .collect(),
                service_name: cfg.service_name.clone(),
                timeout: cfg.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT),
            };
            let tracer = match next.get(&key).or_else(|| self.pipelines.get(&key)) {
                Some(t) => Some(SdkTracer::clone(t)),
                None => pipeline(&key, stats),
            };
            let Some(tracer) = tracer else { continue };
            next.insert(key, tracer.clone());
            out.insert(l.name.clone(), Arc::new(Tracer::new(cfg.clone(), tracer)));
        }
        self.pipelines = next;
        out
    }
}

/// An OTLP exporter on a channel to the collector's endpoints, behind the bounded queue.
fn pipeline(key: &PipelineKey, stats: &SpanStats) -> Option<SdkTracer> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let endpoints: Vec<_> = key
        .endpoints
        .iter()
        .filter_map(|a| {
            tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                .ok()
                .map(|e| e.connect_timeout(CONNECT_TIMEOUT))
        })
        .collect();
    let channel = match endpoints.as_slice() {
        [] => {
            tracing::warn!("trace collector cluster has no endpoints; spans are not exported");
            return None;
        }
        [one] => one.connect_lazy(),
        _ => tonic::transport::Channel::balance_list(endpoints.into_iter()),
    };
    let mut exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(key.timeout)
        .build()
    {
        Ok(e) => e,
        Err(error) => {
            tracing::warn!(%error, "cannot build the OTLP exporter; spans are not exported");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !key.service_name.is_empty() {
        resource = resource.with_service_name(key.service_name.to_string());
    }
    let resource = resource.build();
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(drain(rx, exporter, key.timeout, stats.clone()));
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .with_span_processor(Queue {
            tx,
            stats: stats.clone(),
        })
        .build();
    Some(opentelemetry::trace::TracerProvider::tracer(
        &provider, "legate",
    ))
}

/// Export batches until every sender is gone (the pipeline was replaced), then stop.
async fn drain(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    timeout: Duration,
    stats: SpanStats,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        // The exporter bounds the call by its own timeout; this one is a backstop.
        match tokio::time::timeout(
            timeout.saturating_add(Duration::from_secs(1)),
            exporter.export(sent),
        )
        .await
        {
            Ok(Ok(())) => stats.exported.add(n),
            Ok(Err(error)) => {
                stats.export_failed.add(n);
                tracing::debug!(%error, spans = n, "trace export failed");
            }
            Err(_) => {
                stats.export_failed.add(n);
                tracing::debug!(spans = n, "trace export timed out");
            }
        }
    }
}

/// The SDK's span processor: finished spans go into the bounded queue, never waiting.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<SpanData>,
    stats: SpanStats,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped_queue_full.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The drain task stops by itself once the queue's senders are dropped.
        Ok(())
    }
}

/// A listener's tracing: its configuration, the tags fixed at apply time and its tracer.
#[derive(Debug)]
pub(crate) struct Tracer {
    cfg: Arc<Tracing>,
    fixed_tags: Vec<KeyValue>,
    tracer: SdkTracer,
}

impl Tracer {
    fn new(cfg: Arc<Tracing>, tracer: SdkTracer) -> Self {
        let fixed_tags = cfg
            .custom_tags
            .iter()
            .filter_map(|t| match &t.value {
                CustomTagValue::Literal(v) => Some(KeyValue::new(t.tag.to_string(), v.to_string())),
                CustomTagValue::Environment {
                    name,
                    default_value,
                } => {
                    let v = std::env::var(&**name).unwrap_or_else(|_| default_value.to_string());
                    Some(KeyValue::new(t.tag.to_string(), v))
                }
                CustomTagValue::RequestHeader { .. } => None,
            })
            .collect();
        Tracer {
            cfg,
            fixed_tags,
            tracer,
        }
    }

    /// The server span of a request, when it is sampled; `None` (and nothing allocated)
    /// when it is not.
    pub(crate) fn start<B>(self: &Arc<Self>, req: &http::Request<B>) -> Option<ServerSpan> {
        let headers = req.headers();
        let parent = Parent::read(headers);
        let sampled = match parent.as_ref().and_then(|p| p.sampled) {
            Some(s) => s,
            None => {
                let client_draw = headers
                    .contains_key(CLIENT_TRACE_ID)
                    .then(|| fastrand::u32(..PPM));
                decide(&self.cfg, fastrand::u32(..PPM), client_draw)
            }
        };
        if !sampled {
            return None;
        }
        let format = parent.as_ref().map_or(Format::W3c, |p| p.format);
        let cx = match &parent {
            // `b3: 1` or `b3: d` decides without naming a trace: a new sampled root.
            Some(p) if p.trace_id != TraceId::INVALID => {
                let state = headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| TraceState::from_str(s).ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    p.trace_id,
                    p.span_id,
                    TraceFlags::SAMPLED,
                    true,
                    state,
                ))
            }
            _ => Context::new(),
        };
        let method = req.method();
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let mut attributes = Vec::with_capacity(8 + self.cfg.custom_tags.len());
        attributes.push(KeyValue::new("http.request.method", method.to_string()));
        attributes.push(KeyValue::new("url.path", req.uri().path().to_owned()));
        attributes.push(KeyValue::new("server.address", host.to_owned()));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol(req.version()),
        ));
        if let Some(id) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("guid:x-request-id", id.to_owned()));
        }
        attributes.extend(self.fixed_tags.iter().cloned());
        for t in &self.cfg.custom_tags {
            if let CustomTagValue::RequestHeader {
                name,
                default_value,
            } = &t.value
            {
                let v = headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| default_value.to_string(), str::to_owned);
                if !v.is_empty() {
                    attributes.push(KeyValue::new(t.tag.to_string(), v));
                }
            }
        }
        let span = self
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &cx);
        Some(ServerSpan {
            tracer: self.clone(),
            format,
            span,
        })
    }
}

/// One million: sampling shares are parts per million.
const PPM: u32 = 1_000_000;

/// The decision for a request no parent decided, as Envoy's HCM makes it: a request with
/// `x-client-trace-id` is traced at `client_sampling` (its own draw, `client_draw`, present
/// only for such a request); one that is not (or has no such header) at `random_sampling`;
/// and `overall_sampling` then caps both. `random_sampling` and `overall_sampling` read the
/// same draw (`draw`), as Envoy reads both from the one number it takes from the request,
/// so `overall_sampling` is an upper limit (random 50 % and overall 10 % trace 10 % of
/// requests, not 5 %). Draws are below [`PPM`].
fn decide(cfg: &Tracing, draw: u32, client_draw: Option<u32>) -> bool {
    let chosen =
        client_draw.is_some_and(|d| d < cfg.client_sampling_ppm) || draw < cfg.random_sampling_ppm;
    chosen && draw < cfg.overall_sampling_ppm
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Which headers carried the parent context; the same kind is written upstream, with W3C's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// A parent context read from the request.
struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    /// The parent's decision; `None` when it defers (B3 without a sampling state).
    sampled: Option<bool>,
    format: Format,
}

impl Parent {
    /// W3C `traceparent` first, then B3 single, then B3 multi, as Envoy reads them.
    fn read(headers: &HeaderMap) -> Option<Parent> {
        let text = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(p) = text(&TRACEPARENT).and_then(parse_traceparent) {
            return Some(p);
        }
        if let Some(b3) = text(&B3) {
            return parse_b3_single(b3);
        }
        let trace_id = text(&B3_TRACE_ID)?;
        let span_id = text(&B3_SPAN_ID)?;
        let sampled = if text(&B3_FLAGS) == Some("1") {
            Some(true)
        } else {
            text(&B3_SAMPLED).and_then(b3_sampled)
        };
        Some(Parent {
            trace_id: b3_trace_id(trace_id)?,
            span_id: hex_span_id(span_id)?,
            sampled,
            format: Format::B3Multi,
        })
    }
}

/// `version-traceid-parentid-flags`: version 00 exactly, later versions by their prefix.
fn parse_traceparent(v: &str) -> Option<Parent> {
    let mut parts = v.trim().splitn(5, '-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = hex_trace_id(trace)?;
    let span_id = hex_span_id(span)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        format: Format::W3c,
    })
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or only `{sampling}`.
fn parse_b3_single(v: &str) -> Option<Parent> {
    let mut parts = v.trim().split('-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        // A sampling state alone (`0`, `1`, `d`): no parent, but its decision holds; a
        // sampled request starts a new trace.
        return Some(Parent {
            trace_id: TraceId::INVALID,
            span_id: SpanId::INVALID,
            sampled: Some(b3_sampled(first)?),
            format: Format::B3Single,
        });
    };
    let sampled = match parts.next() {
        Some(s) => Some(b3_sampled(s)?),
        None => None,
    };
    Some(Parent {
        trace_id: b3_trace_id(first)?,
        span_id: hex_span_id(span)?,
        sampled,
        format: Format::B3Single,
    })
}

fn b3_sampled(v: &str) -> Option<bool> {
    match v {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// B3 trace ids are 64 or 128 bits.
fn b3_trace_id(v: &str) -> Option<TraceId> {
    match v.len() {
        16 | 32 => hex_trace_id(v),
        _ => None,
    }
}

fn hex_trace_id(v: &str) -> Option<TraceId> {
    if !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(v, 16).ok()?;
    (id != 0).then(|| TraceId::from_bytes(id.to_be_bytes()))
}

fn hex_span_id(v: &str) -> Option<SpanId> {
    if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(v, 16).ok()?;
    (id != 0).then(|| SpanId::from_bytes(id.to_be_bytes()))
}

/// A sampled request's SERVER span. It ends when it is dropped: with the response's
/// body (its end, an error, or the client going away), which a response from upstream
/// carries in its [`Held`](crate::body::Held), as Envoy ends its downstream span when the
/// stream completes; or at once for a local reply.
#[derive(Debug)]
pub(crate) struct ServerSpan {
    tracer: Arc<Tracer>,
    format: Format,
    span: Span,
}

impl ServerSpan {
    /// Called once per upstream attempt with its request headers: starts the attempt's
    /// CLIENT span (with `spawn_upstream_span`) and writes the context that goes upstream.
    pub(crate) fn attempt<B>(
        &self,
        req: &mut http::Request<B>,
        host: std::net::SocketAddr,
        attempt: u32,
    ) -> Option<AttemptSpan> {
        let method = req.method().clone();
        let headers = req.headers_mut();
        let parent = self.span.span_context().clone();
        if !self.tracer.cfg.spawn_upstream_span {
            inject(headers, &parent, None, self.format);
            return None;
        }
        let cx = Context::new().with_remote_span_context(parent.clone());
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("server.address", host.ip().to_string()),
            KeyValue::new("server.port", i64::from(host.port())),
        ];
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        let span = self
            .tracer
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer.tracer, &cx);
        inject(headers, span.span_context(), Some(&parent), self.format);
        Some(AttemptSpan { span })
    }

    /// The trace's id as 32 lowercase hex digits (`%TRACE_ID%` in access logs).
    pub(crate) fn trace_id(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    /// Record the response's status and legate's cause, if any, when its headers are ready;
    /// the span goes on until it is dropped.
    pub(crate) fn respond(&mut self, status: http::StatusCode, headers: &HeaderMap) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(cause) = headers
            .get(crate::error::LEGATE_ERROR)
            .and_then(|v| v.to_str().ok())
        {
            self.span
                .set_attribute(KeyValue::new("legate.error", cause.to_owned()));
        }
        if status.is_server_error() {
            self.span.set_status(Status::error(""));
        }
    }

    /// The response body failed after its headers were sent (an upstream reset, a
    /// deadline): the span says why, as an error.
    pub(crate) fn body_failed(&mut self, cause: ProxyError) {
        body_failed(&mut self.span, cause);
    }
}

/// An upstream attempt's CLIENT span. It ends when dropped: with the response body of its
/// attempt when that response is the one sent downstream, else when the attempt is
/// settled (an error, or a response a retry replaces), as Envoy ends an upstream request's
/// span when that request completes.
#[derive(Debug)]
pub(crate) struct AttemptSpan {
    span: Span,
}

impl AttemptSpan {
    /// Record the attempt's outcome once its response headers (or its failure) are in.
    pub(crate) fn record<B>(&mut self, result: &Result<http::Response<B>, ProxyError>) {
        match result {
            Ok(res) => {
                let status = res.status();
                self.span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_server_error() {
                    self.span.set_status(Status::error(""));
                }
            }
            Err(e) => {
                self.span
                    .set_attribute(KeyValue::new("legate.error", e.code()));
                self.span
                    .set_attribute(KeyValue::new("error.type", e.code()));
                self.span.set_status(Status::error(""));
            }
        }
    }

    /// The response body failed after its headers were in.
    pub(crate) fn body_failed(&mut self, cause: ProxyError) {
        body_failed(&mut self.span, cause);
    }
}

/// A span whose response body failed after its headers: legate's cause, as an error.
fn body_failed(span: &mut Span, cause: ProxyError) {
    span.set_attribute(KeyValue::new("legate.error", cause.code()));
    span.set_status(Status::error(""));
}

/// Write `cx` upstream: `traceparent` always, and B3 in the format the request came with.
fn inject(headers: &mut HeaderMap, cx: &SpanContext, parent: Option<&SpanContext>, format: Format) {
    let trace = cx.trace_id();
    let span = cx.span_id();
    let value = |s: String| HeaderValue::from_str(&s).ok();
    if let Some(v) = value(format!("00-{trace}-{span}-01")) {
        headers.insert(TRACEPARENT, v);
    }
    match format {
        Format::W3c => {}
        Format::B3Single => {
            let s = match parent {
                Some(p) => format!("{trace}-{span}-1-{}", p.span_id()),
                None => format!("{trace}-{span}-1"),
            };
            if let Some(v) = value(s) {
                headers.insert(B3, v);
            }
        }
        Format::B3Multi => {
            if let Some(v) = value(trace.to_string()) {
                headers.insert(B3_TRACE_ID, v);
            }
            if let Some(v) = value(span.to_string()) {
                headers.insert(B3_SPAN_ID, v);
            }
            match parent.and_then(|p| value(p.span_id().to_string())) {
                Some(v) => {
                    headers.insert(B3_PARENT_SPAN_ID, v);
                }
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
            headers.insert(B3_SAMPLED, HeaderValue::from_static("1"));
            headers.remove(B3_FLAGS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        let p = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(p.sampled, Some(true));
        let p = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .expect("valid");
        assert_eq!(p.sampled, Some(false));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn sampling_decisions_follow_envoys_hcm() {
        let cfg = |random: u32, client: u32, overall: u32| Tracing {
            random_sampling_ppm: random,
            client_sampling_ppm: client,
            overall_sampling_ppm: overall,
            ..test_tracing()
        };
        // Every draw, counted: the share traced is exact.
        let share = |cfg: &Tracing, client: bool| {
            let step = 1000;
            let mut traced = 0u64;
            let mut total = 0u64;
            for draw in (0..PPM).step_by(step) {
                for client_draw in (0..PPM).step_by(step * 100) {
                    total += 1;
                    traced += u64::from(decide(cfg, draw, client.then_some(client_draw)));
                }
            }
            traced as f64 / total as f64
        };
        // overall_sampling caps random_sampling: the smaller of the two, not their product.
        assert_eq!(share(&cfg(500_000, PPM, 100_000), false), 0.1);
        assert_eq!(share(&cfg(100_000, PPM, 500_000), false), 0.1);
        assert_eq!(share(&cfg(PPM, PPM, PPM), false), 1.0);
        assert_eq!(share(&cfg(0, PPM, PPM), false), 0.0);
        // x-client-trace-id: client_sampling first; a request it does not pick still gets
        // random_sampling's chance; overall_sampling caps the whole.
        assert_eq!(share(&cfg(0, 500_000, PPM), true), 0.5);
        assert_eq!(share(&cfg(0, PPM, 100_000), true), 0.1);
        let mixed = share(&cfg(200_000, 500_000, PPM), true);
        assert!((mixed - 0.6).abs() < 1e-9, "{mixed}");
    }

    fn test_tracing() -> Tracing {
        Tracing {
            collector_cluster: Arc::from("c"),
            export_timeout: None,
            service_name: Arc::from("s"),
            random_sampling_ppm: PPM,
            client_sampling_ppm: PPM,
            overall_sampling_ppm: PPM,
            custom_tags: Vec::new(),
            spawn_upstream_span: true,
        }
    }

    #[test]
    fn b3() {
        let p =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
                .expect("valid");
        assert_eq!(p.sampled, Some(true));
        assert_eq!(p.span_id.to_string(), "e457b5a2e4d86bd1");
        let p = parse_b3_single("a3ce929d0e0e4736-e457b5a2e4d86bd1").expect("64-bit id");
        assert_eq!(p.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(p.sampled, None);
        assert_eq!(parse_b3_single("0").map(|p| p.sampled), Some(Some(false)));
        for forced in ["1", "d"] {
            let p = parse_b3_single(forced).expect("a decision alone");
            assert_eq!((p.sampled, p.trace_id), (Some(true), TraceId::INVALID));
        }
        assert!(parse_b3_single("x").is_none());
        assert!(parse_b3_single("xyz-e457b5a2e4d86bd1").is_none());
    }
}
