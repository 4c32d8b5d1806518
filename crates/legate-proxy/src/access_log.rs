//! Access logs: what a request leaves behind ([`Record`]), rendered with the listener's
//! compiled formats when its response ends, and handed to one writer thread per file.
//!
//! The request path never waits for a disk: lines go into a queue bounded in lines and in
//! bytes with `try_send`; a full queue drops the line and counts it
//! (`legate_access_log_dropped_total`). Nor does it wake the writer for each line: the
//! writer wakes every [`WRITE_INTERVAL`] and writes what has queued up in one go, or sooner
//! when the queue is half full. Each file's writer thread reopens it when [`Sinks::reopen`]
//! is called (SIGUSR1, for logrotate).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Uri, Version};
use legate_snapshot::AccessLog;
use legate_snapshot::access_log::{HeaderSel, JsonValue, LogFormat, OpKind, Operator, Piece};
use legate_telemetry::{Counter, Family};
use tokio::time::Instant;

use crate::error::ResponseFlags;

/// Lines waiting for a file's writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Bytes those lines may hold together: a line can carry request headers, so a count of
/// lines alone does not bound the memory a stuck file holds.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How long a line may wait before its writer wakes and writes everything queued. Envoy
/// flushes its access log files every second; a tenth of that keeps a busy proxy from
/// filling [`QUEUE`] between two wakes (a half-full queue wakes the writer anyway).
const WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// The buffer between the writer and its file: one `write` per this many bytes at most.
const FILE_BUFFER: usize = 64 * 1024;

/// What a file's queue holds: lines and their bytes.
#[derive(Debug, Default)]
struct Queued {
    lines: AtomicUsize,
    bytes: AtomicUsize,
}

impl Queued {
    /// A line was written (or lost with its file): the queue has room for it again.
    fn taken(&self, len: usize) {
        self.lines.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(len, Ordering::AcqRel);
    }
}

/// One file's writer: the channel to its thread, what is in it, and its drop counter.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: SyncSender<String>,
    queued: Arc<Queued>,
    /// The writer thread, woken early when the queue is half full or the file is reopened.
    writer: Option<std::thread::Thread>,
    dropped: Arc<Counter>,
}

impl Sink {
    fn send(&self, line: String) {
        let len = line.len();
        let bytes = self
            .queued
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(len).filter(|total| *total <= QUEUE_BYTES)
            });
        let Ok(bytes) = bytes else {
            self.dropped.inc();
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {
                let lines = self.queued.lines.fetch_add(1, Ordering::AcqRel) + 1;
                if lines >= QUEUE / 2 || bytes + len >= QUEUE_BYTES / 2 {
                    self.wake();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.bytes.fetch_sub(len, Ordering::AcqRel);
                self.dropped.inc();
            }
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.writer {
            w.unpark();
        }
    }
}

/// Every file the live configuration names, each with its writer. A file no longer named
/// leaves the map; its writer thread writes what is queued, closes the file and ends once
/// the last [`Sink`] handle (held by views of draining listeners and by requests still in
/// flight) is dropped.
#[derive(Debug)]
pub(crate) struct Sinks {
    files: Mutex<HashMap<Arc<str>, Arc<Sink>>>,
    generation: Arc<AtomicU64>,
    dropped: Arc<Family<Counter>>,
}

/// A listener's access logs, resolved to their writers when a snapshot is applied.
pub(crate) type Logs = Arc<[(Arc<AccessLog>, Arc<Sink>)]>;

impl Sinks {
    pub(crate) fn new(dropped: Arc<Family<Counter>>) -> Self {
        Sinks {
            files: Mutex::new(HashMap::new()),
            generation: Arc::new(AtomicU64::new(0)),
            dropped,
        }
    }

    /// The writers for `logs`, started for files not seen before. Runs at apply time.
    pub(crate) fn resolve(&self, logs: &[Arc<AccessLog>]) -> Logs {
        if logs.is_empty() {
            return Arc::from([]);
        }
        hostname();
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter()
            .map(|l| {
                let sink = files
                    .entry(l.path.clone())
                    .or_insert_with(|| self.start(l.path.clone()))
                    .clone();
                (l.clone(), sink)
            })
            .collect()
    }

    fn start(&self, path: Arc<str>) -> Arc<Sink> {
        let (tx, rx) = sync_channel(QUEUE);
        let generation = self.generation.clone();
        let queued = Arc::new(Queued::default());
        let thread_path = path.clone();
        let thread_queued = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("legate-access-log".to_owned())
            .spawn(move || write_loop(&thread_path, &rx, &generation, &thread_queued));
        let writer = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(error) => {
                tracing::warn!(%path, %error, "cannot start the access log writer");
                None
            }
        };
        Arc::new(Sink {
            tx,
            queued,
            writer,
            dropped: self.dropped.get_or_create(&[&path]),
        })
    }

    /// Forget the files that none of `listeners` names.
    pub(crate) fn retain(&self, listeners: &[Arc<legate_snapshot::Listener>]) {
        let named: std::collections::HashSet<&str> = listeners
            .iter()
            .flat_map(|l| l.access_logs.iter().map(|a| &*a.path))
            .collect();
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|path, _| named.contains(&**path));
    }

    /// Reopen every file before its next line (logrotate's `postrotate` sends SIGUSR1).
    pub(crate) fn reopen(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for sink in files.values() {
            sink.wake();
        }
    }
}

fn open(path: &str) -> Option<Box<dyn std::io::Write + Send>> {
    match path {
        "/dev/stdout" => Some(Box::new(std::io::stdout())),
        "/dev/stderr" => Some(Box::new(std::io::stderr())),
        _ => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(Box::new(std::io::BufWriter::with_capacity(FILE_BUFFER, f))),
            Err(error) => {
                tracing::warn!(%path, %error, "cannot open access log; its lines are dropped");
                None
            }
        },
    }
}

/// A file's writer: wakes every [`WRITE_INTERVAL`] (or when woken), reopens the file if
/// [`Sinks::reopen`] was called since, writes every queued line and flushes. Ends, after
/// writing what was queued, once every [`Sink`] handle is gone; the file closes with it.
fn write_loop(path: &str, rx: &Receiver<String>, generation: &AtomicU64, queued: &Queued) {
    let mut seen = generation.load(Ordering::Acquire);
    let mut out = open(path);
    loop {
        std::thread::park_timeout(WRITE_INTERVAL);
        let now = generation.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            if let Some(mut o) = out.take() {
                let _ = o.flush();
            }
            out = open(path);
        }
        let mut wrote = false;
        // One warning per wake, not one per line, when the file refuses writes.
        let mut failed: Option<(std::io::Error, u64)> = None;
        let closed = loop {
            let line = match rx.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            };
            if let Some(o) = out.as_mut()
                && let Err(error) = o.write_all(line.as_bytes())
            {
                let lost = failed.take().map_or(0, |(_, n)| n);
                failed = Some((error, lost + 1));
            }
            queued.taken(line.len());
            wrote = true;
        };
        if wrote
            && let Some(o) = out.as_mut()
            && let Err(error) = o.flush()
        {
            let lost = failed.take().map_or(0, |(_, n)| n);
            failed = Some((error, lost));
        }
        if let Some((error, lines)) = failed {
            tracing::warn!(%path, %error, lines, "access log write failed");
        }
        if closed {
            return;
        }
    }
}

/// The machine's name for `%HOSTNAME%`, read once.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "-".to_owned())
    })
}

/// What the request path learns about a request that a log line can show. Filled as the
/// request goes; forward adds the upstream side.
#[derive(Debug, Default)]
pub(crate) struct Trail {
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) upstream_host: Option<SocketAddr>,
    pub(crate) attempts: u32,
    pub(crate) flags: ResponseFlags,
    /// The `x-request-id` sent upstream (set only when the request is logged).
    pub(crate) request_id: Option<http::HeaderValue>,
}

/// A request being logged; the line is written when this is dropped (when the response
/// body ended, or was abandoned).
#[derive(Debug)]
pub(crate) struct Pending {
    logs: Logs,
    pub(crate) record: Record,
    /// The response ended on legate's or the upstream's side: sent whole, or cut by the
    /// upstream or a timer (whose flag says so). Dropped otherwise, the client left (DC).
    pub(crate) completed: bool,
    /// The body's exact length when known: sending that many bytes completes it (hyper
    /// stops polling a body once its length is reached).
    pub(crate) expected: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) wall: SystemTime,
    pub(crate) start: Instant,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) req_headers: HeaderMap,
    pub(crate) status: u16,
    pub(crate) resp_headers: HeaderMap,
    /// The legate cause of a local reply; `None` for an upstream's answer.
    pub(crate) cause: Option<&'static str>,
    /// Why the connection to the upstream failed, when it did.
    pub(crate) transport_failure: Option<&'static str>,
    /// The request body's bytes and end, as it is read.
    pub(crate) request_body: Arc<crate::body::BodyMeter>,
    pub(crate) response_start: Option<Duration>,
    pub(crate) trail: Trail,
    pub(crate) bytes_sent: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The trace id of a sampled request.
    pub(crate) trace_id: Option<String>,
}

impl Pending {
    pub(crate) fn new(logs: Logs, record: Record) -> Self {
        Pending {
            logs,
            record,
            completed: false,
            expected: None,
        }
    }

    /// The response body was cut for the reason `flag` names (not by the client).
    pub(crate) fn ended_by(&mut self, flag: ResponseFlags) {
        self.record.trail.flags.insert(flag);
        self.completed = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let duration = self.record.start.elapsed();
        if !self.completed && self.expected != Some(self.record.bytes_sent) {
            // The client went away before the response ended (Envoy's DC).
            self.record.trail.flags.insert(ResponseFlags::DC);
        }
        for (log, sink) in self.logs.iter() {
            sink.send(render(&log.format, &self.record, duration));
        }
    }
}

/// One line in `format`.
pub(crate) fn render(format: &LogFormat, r: &Record, duration: Duration) -> String {
    let mut out = String::with_capacity(256);
    match format {
        LogFormat::Text(pieces) => text(&mut out, pieces, r, duration),
        LogFormat::Json(fields) => {
            json_object(&mut out, fields, r, duration);
            out.push('\n');
        }
    }
    out
}

fn text(out: &mut String, pieces: &[Piece], r: &Record, duration: Duration) {
    for p in pieces {
        match p {
            Piece::Literal(l) => out.push_str(l),
            Piece::Op(op) => {
                if !value(out, op, r, duration) {
                    out.push('-');
                }
            }
        }
    }
}

fn json_object(out: &mut String, fields: &[(Arc<str>, JsonValue)], r: &Record, d: Duration) {
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, k);
        out.push(':');
        match v {
            JsonValue::Object(inner) => json_object(out, inner, r, d),
            JsonValue::Text(pieces) => {
                let mut s = String::new();
                text(&mut s, pieces, r, d);
                json_string(out, &s);
            }
            JsonValue::Typed(op) => {
                let mut s = String::new();
                if !value(&mut s, op, r, d) {
                    out.push_str("null");
                } else if op.kind.is_numeric() && op.max_len.is_none() {
                    out.push_str(&s);
                } else {
                    json_string(out, &s);
                }
            }
        }
    }
    out.push('}');
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Write an operator's value; `false` when it has none (`-` in text, `null` in JSON).
fn value(out: &mut String, op: &Operator, r: &Record, duration: Duration) -> bool {
    let start = out.len();
    let ms = |d: Duration| d.as_millis().to_string();
    let wrote = match &op.kind {
        OpKind::StartTime(f) => {
            f.render(
                r.wall
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
                out,
            );
            true
        }
        OpKind::Req(main, alt) => {
            request_header(out, r, main) || alt.as_ref().is_some_and(|a| request_header(out, r, a))
        }
        OpKind::Resp(main, alt) => {
            header(out, &r.resp_headers, main)
                || alt
                    .as_ref()
                    .is_some_and(|a| header(out, &r.resp_headers, a))
        }
        OpKind::ResponseCode => push(out, &r.status.to_string()),
        OpKind::ResponseFlags => {
            if r.trail.flags.is_empty() {
                false
            } else {
                r.trail.flags.write(out);
                true
            }
        }
        OpKind::ResponseCodeDetails => push(out, r.cause.unwrap_or("via_upstream")),
        OpKind::Duration => push(out, &ms(duration)),
        OpKind::RequestDuration => r.request_body.ended().is_some_and(|d| push(out, &ms(d))),
        OpKind::ResponseDuration => r.response_start.is_some_and(|d| push(out, &ms(d))),
        OpKind::UpstreamHost => r
            .trail
            .upstream_host
            .is_some_and(|h| push(out, &h.to_string())),
        OpKind::UpstreamCluster => r.trail.cluster.as_deref().is_some_and(|c| push(out, c)),
        OpKind::BytesReceived => push(out, &r.request_body.bytes().to_string()),
        OpKind::BytesSent => push(out, &r.bytes_sent.to_string()),
        OpKind::Protocol => push(
            out,
            match r.version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            },
        ),
        OpKind::DownstreamRemoteAddress => push(out, &r.peer.to_string()),
        OpKind::DownstreamRemoteAddressWithoutPort => push(out, &r.peer.ip().to_string()),
        OpKind::DownstreamLocalAddress => push(out, &r.local.to_string()),
        OpKind::DownstreamLocalAddressWithoutPort => push(out, &r.local.ip().to_string()),
        OpKind::UpstreamTransportFailureReason => r.transport_failure.is_some_and(|f| push(out, f)),
        OpKind::RouteName => r
            .trail
            .route
            .as_deref()
            .is_some_and(|n| !n.is_empty() && push(out, n)),
        OpKind::UpstreamRequestAttemptCount => push(out, &r.trail.attempts.to_string()),
        OpKind::Hostname => push(out, hostname()),
        OpKind::TraceId => r.trace_id.as_deref().is_some_and(|t| push(out, t)),
    };
    if wrote && let Some(max) = op.max_len {
        // Truncate on a character boundary at most `max` bytes in.
        let mut end = start.saturating_add(max).min(out.len());
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    wrote
}

fn push(out: &mut String, s: &str) -> bool {
    out.push_str(s);
    true
}

fn request_header(out: &mut String, r: &Record, sel: &HeaderSel) -> bool {
    match sel {
        HeaderSel::Method => push(out, r.method.as_str()),
        HeaderSel::Path => r
            .uri
            .path_and_query()
            .is_some_and(|p| push(out, p.as_str())),
        HeaderSel::Authority => match r.req_headers.get(http::header::HOST) {
            Some(h) => push(out, &String::from_utf8_lossy(h.as_bytes())),
            None => r.uri.authority().is_some_and(|a| push(out, a.as_str())),
        },
        HeaderSel::Scheme => r.uri.scheme_str().is_some_and(|s| push(out, s)),
        HeaderSel::Name(_) => header(out, &r.req_headers, sel),
    }
}

fn header(out: &mut String, headers: &HeaderMap, sel: &HeaderSel) -> bool {
    let HeaderSel::Name(n) = sel else {
        return false;
    };
    headers
        .get(n)
        .is_some_and(|v| push(out, &String::from_utf8_lossy(v.as_bytes())))
}
