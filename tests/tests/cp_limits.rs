//! legate-cp's limits on what one xDS client may cost it, through a real legate-cp process and
//! real ADS streams: the stream limit, the subscribed names per stream, the length of a
//! resource name, and NACK messages kept only up to a bound (seen through `/v1/nodes` and
//! `legatectl status`). Each refusal is `RESOURCE_EXHAUSTED` with a message naming the
//! limit's flag.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use legate_tests::client::empty;
use legate_tests::cp::ControlPlane;
use legate_tests::eventually;
use legate_tests::process::TempDir;
use legate_tests::xds_server::{CDS, EDS};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

const MESH: &str = r#"
proxy:
  listener: {name: outbound, address: 127.0.0.1:0, protocol: auto}
services:
  - name: payments
    endpoints: [{address: 127.0.0.1:1}]
    route: {prefix: /payments/, timeout: 5s}
"#;

async fn start(extra: &[&str]) -> (TempDir, ControlPlane) {
    let dir = TempDir::new("cp-limits");
    let config = dir.write("mesh.yaml", MESH);
    let data = dir.path().join("data");
    let cp = ControlPlane::start_with(&config, &data, extra).await;
    (dir, cp)
}

async fn channel(cp: &ControlPlane) -> Channel {
    tonic::transport::Endpoint::from_shared(cp.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to legate-cp's xDS port")
}

/// One open ADS stream: its request sender and its responses.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

/// Opens an ADS stream as node `id` whose first request subscribes to `type_url` with
/// `names`; `Err` when legate-cp refuses the stream itself.
async fn open(
    channel: &Channel,
    id: &str,
    type_url: &str,
    names: Vec<String>,
) -> Result<Ads, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: id.to_owned(),
            cluster: "web".to_owned(),
            ..Default::default()
        }),
        type_url: type_url.to_owned(),
        resource_names: names,
        ..Default::default()
    })
    .await
    .expect("queue the first request");
    let responses = AggregatedDiscoveryServiceClient::new(channel.clone())
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Ads { tx, responses })
}

/// The next response, or the status that ended the stream.
async fn next(ads: &mut Ads) -> Result<DiscoveryResponse, tonic::Status> {
    match tokio::time::timeout(WAIT, ads.responses.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => panic!("the stream ended without a status"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no response within {WAIT:?}"),
    }
}

#[tokio::test]
async fn stream_limit_refuses_one_more_and_frees_on_close() {
    let (_dir, cp) = start(&["--xds-max-streams", "2"]).await;
    let channel = channel(&cp).await;
    let mut a = open(&channel, "a", CDS, vec![]).await.expect("stream a");
    let mut b = open(&channel, "b", CDS, vec![]).await.expect("stream b");
    next(&mut a).await.expect("a answered");
    next(&mut b).await.expect("b answered");

    // A third stream, on another connection, is refused at once.
    let other = self::channel(&cp).await;
    let refused = match open(&other, "c", CDS, vec![]).await {
        Ok(mut c) => next(&mut c).await.expect_err("the third stream is refused"),
        Err(status) => status,
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("at most 2 xDS streams")
            && refused.message().contains("--xds-max-streams"),
        "{refused:?}"
    );
    // legate-cp's log is read from its pipe as it arrives: wait for the line.
    eventually(WAIT, "legate-cp logs the refusal", || async {
        let log = cp.log();
        if log.contains("stream limit is reached") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    // Closing one frees its place.
    drop(a);
    eventually(
        WAIT,
        "a stream is accepted again after one closed",
        || async {
            let mut c = open(&other, "c", CDS, vec![])
                .await
                .map_err(|e| format!("{e:?}"))?;
            next(&mut c).await.map_err(|e| format!("{e:?}"))
        },
    )
    .await;
    drop(b);
}

#[tokio::test]
async fn names_per_stream_are_bounded() {
    let (_dir, cp) = start(&["--xds-max-names-per-stream", "3"]).await;
    let channel = channel(&cp).await;
    let names = |n: usize| (0..n).map(|i| format!("cla-{i}")).collect::<Vec<_>>();

    // At the limit: served.
    let mut ok = open(&channel, "ok", EDS, names(3)).await.expect("stream");
    ok.tx
        .send(DiscoveryRequest {
            type_url: CDS.to_owned(),
            ..Default::default()
        })
        .await
        .expect("send");
    next(&mut ok)
        .await
        .expect("a stream at the limit is served");

    // One over, in a later request on an open stream: the stream ends.
    let mut over = open(&channel, "over", CDS, vec![]).await.expect("stream");
    next(&mut over).await.expect("CDS answered");
    over.tx
        .send(DiscoveryRequest {
            type_url: EDS.to_owned(),
            resource_names: names(4),
            ..Default::default()
        })
        .await
        .expect("send");
    let status = loop {
        match next(&mut over).await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("4 resource names")
            && status
                .message()
                .contains("the 3 legate-cp allows per stream")
            && status.message().contains("--xds-max-names-per-stream"),
        "{status:?}"
    );
}

#[tokio::test]
async fn resource_names_are_bounded_in_length() {
    let (_dir, cp) = start(&["--xds-max-name-length", "64"]).await;
    let channel = channel(&cp).await;

    // At the limit: served.
    let mut ok = open(&channel, "ok", EDS, vec!["n".repeat(64)])
        .await
        .expect("stream");
    next(&mut ok).await.expect("a name at the limit is served");

    // One byte over, in a later request on an open stream: the stream ends.
    let mut over = open(&channel, "over", CDS, vec![]).await.expect("stream");
    next(&mut over).await.expect("CDS answered");
    over.tx
        .send(DiscoveryRequest {
            type_url: EDS.to_owned(),
            resource_names: vec!["short".to_owned(), "n".repeat(65)],
            ..Default::default()
        })
        .await
        .expect("send");
    let status = loop {
        match next(&mut over).await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("resource name of 65 bytes")
            && status.message().contains("--xds-max-name-length"),
        "{status:?}"
    );
}

#[tokio::test]
async fn nack_messages_are_kept_truncated() {
    let (_dir, cp) = start(&[]).await;
    let channel = channel(&cp).await;
    let mut ads = open(&channel, "nacker", CDS, vec![]).await.expect("stream");
    let response = next(&mut ads).await.expect("CDS answered");
    // 1 MiB of text, with a two-byte character straddling the 4 KiB cut.
    let mut message = "x".repeat(4095);
    message.push('é');
    message.push_str(&"y".repeat((1 << 20) - message.len()));
    ads.tx
        .send(DiscoveryRequest {
            type_url: CDS.to_owned(),
            version_info: String::new(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: message.clone(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("send the NACK");

    let kept = eventually(WAIT, "the NACK is listed in /v1/nodes", || async {
        let r = cp
            .json(
                "GET",
                "/v1/nodes",
                &[("authorization", &cp.bearer())],
                empty(),
            )
            .await;
        let text = r.text();
        let found = (|| {
            let start = text.find("xxxx")?;
            let end = start + text[start..].find('"')?;
            Some(text[start..end].to_owned())
        })();
        found.ok_or_else(|| format!("no NACK yet: {text:.200}"))
    })
    .await;
    let expected = format!(
        "{}… [truncated: {} bytes in all]",
        "x".repeat(4095),
        message.len()
    );
    assert_eq!(kept, expected);

    let (ok, out, err) = cp.ctl(&["status"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("[truncated: 1048576 bytes in all]") && !out.contains("yyyy"),
        "legatectl status: {out}{err}"
    );
    // Nothing was ACKed after it: the NACK is shown as current, with its age.
    assert!(
        out.contains("bytes in all] (") && out.contains("s ago, current)"),
        "legatectl status: {out}"
    );

    // An ACK of the same type after it: the NACK is shown as past.
    ads.tx
        .send(DiscoveryRequest {
            type_url: CDS.to_owned(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
        .expect("send the ACK");
    eventually(WAIT, "legatectl status shows the NACK as past", || async {
        let (ok, out, err) = cp.ctl(&["status"]);
        if ok && out.contains("s ago, since ACKed)") {
            Ok(())
        } else {
            Err(format!("{out}{err}"))
        }
    })
    .await;
    // The log line is cut the same way.
    assert!(!cp.log().contains("yyyy"), "the whole message was logged");
}
