//! `legate-otlp-sink`, the bench's trace collector: a real OTLP/gRPC server that counts what
//! it is sent and reports the counts when stopped.

use std::time::Duration;

use legate_tests::process::ListeningProcess;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

fn sink_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_legate-otlp-sink"))
}

fn request(spans: usize) -> ExportTraceServiceRequest {
    let span = |i: usize| Span {
        trace_id: vec![1; 16],
        span_id: u64::try_from(i + 1).unwrap_or(1).to_be_bytes().to_vec(),
        name: "GET".to_owned(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans).map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn the_sink_answers_exports_and_reports_their_spans_when_stopped() {
    let sink = ListeningProcess::start(
        "legate-otlp-sink",
        &sink_bin(),
        &["--listen", "127.0.0.1:0"],
    )
    .await;
    let mut client = TraceServiceClient::connect(format!("http://{}", sink.addr()))
        .await
        .expect("connecting to the sink");
    for spans in [3, 5] {
        client
            .export(request(spans))
            .await
            .expect("the sink accepts an export");
    }
    sink.sigterm();
    let status = sink.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "sink exit: {status:?}\n{}", sink.output());
    // The process has exited; its last line may still be on its way through the reader.
    legate_tests::eventually(
        Duration::from_secs(10),
        "the sink's summary line",
        || async {
            let out = sink.output();
            if out.contains("received exports=2 spans=8") {
                Ok(())
            } else {
                Err(format!("sink output: {out}"))
            }
        },
    )
    .await;
}
