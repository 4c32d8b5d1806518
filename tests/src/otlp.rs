//! A test OTLP/gRPC trace receiver on the official protos (`opentelemetry-proto`'s tonic
//! server): it keeps every span it is sent, flattened for assertions, or (for the bench's
//! `legate-otlp-sink`) only counts them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span; ids in lowercase hex, attribute values as text.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// From its start to its end (zero when the end is before the start).
    pub duration: Duration,
}

/// What the receiver does with the spans it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Keep every span for [`OtlpReceiver::spans`].
    Spans,
    /// Count them and drop them: a collector that costs its clients what a real one does
    /// (a gRPC server decoding every request) and holds no memory.
    CountOnly,
}

#[derive(Clone)]
struct Store {
    keep: Keep,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    exports: AtomicU64,
    spans: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let received: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.counts.exports.fetch_add(1, Ordering::Relaxed);
        self.counts.spans.fetch_add(
            u64::try_from(received).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if self.keep == Keep::CountOnly {
            return Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }));
        }
        let mut out = Vec::new();
        for rs in request.resource_spans {
            let resource = rs
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        service_name: service.clone(),
                        name: s.name.clone(),
                        kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: attributes(&s.attributes),
                        duration: Duration::from_nanos(
                            s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                        ),
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(out);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match &kv.value {
                Some(AnyValue { value: Some(v) }) => match v {
                    Value::StringValue(s) => s.clone(),
                    Value::IntValue(i) => i.to_string(),
                    Value::BoolValue(b) => b.to_string(),
                    Value::DoubleValue(d) => d.to_string(),
                    other => format!("{other:?}"),
                },
                _ => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The receiver: serves until dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    store: Store,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Bind `127.0.0.1:0` and serve, keeping every span.
    pub async fn start() -> anyhow::Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0").await?, Keep::Spans)
    }

    /// Serve OTLP/gRPC on `listener` until dropped.
    pub fn serve(listener: TcpListener, keep: Keep) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let store = Store {
            keep,
            spans: Arc::default(),
            counts: Arc::default(),
        };
        let (stop, stop_rx) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(store.clone());
        tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(error) = result {
                eprintln!("test OTLP receiver stopped with an error: {error}");
            }
        });
        Ok(OtlpReceiver {
            addr,
            store,
            _stop: stop,
        })
    }

    /// Every span received so far (none with [`Keep::CountOnly`]).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many export calls and spans were received so far, kept or not.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.store.counts.exports.load(Ordering::Relaxed),
            self.store.counts.spans.load(Ordering::Relaxed),
        )
    }

    /// Forget the spans kept (the counts go on).
    pub fn clear(&self) {
        self.store
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Poll until `check` holds for the spans received, for at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        crate::eventually(timeout, what, || {
            let spans = self.spans();
            let ok = check(&spans);
            async move {
                if ok {
                    Ok(spans)
                } else {
                    Err(format!("{} spans: {spans:#?}", spans.len()))
                }
            }
        })
        .await
    }
}
