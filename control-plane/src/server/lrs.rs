//! Envoy's `LoadReportingService` on the xDS port: one task per stream, the same stream
//! limit, shutdown and node identity rules as xDS.
//!
//! The first request names the node (checked against the connection's certificate when
//! client certificates are required), within two reporting intervals of the stream opening
//! (`DEADLINE_EXCEEDED` otherwise); legate-cp answers once, asking for all clusters
//! (`send_all_clusters`) every `--lrs-interval`, and then only reads: every later request's
//! cluster stats go to the [`LoadStore`](crate::load_report::LoadStore). A later request
//! naming another node ends the stream, as on xDS.

use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, Shared, XdsPeer, XdsServer, identity, refuse};

impl XdsServer {
    pub fn lrs_service(&self) -> LoadReportingServiceServer<XdsServer> {
        LoadReportingServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.limits.max_request_size)
    }
}

#[tonic::async_trait]
impl LoadReportingService for XdsServer {
    type StreamLoadStatsStream = ResponseStream<LoadStatsResponse>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let Some((store, interval)) = self.shared.load.clone() else {
            return Err(Status::unimplemented("load reports are not served"));
        };
        let (permit, peer) = self.admit(&request)?;
        let (tx, rx) = mpsc::channel(1);
        let shared = std::sync::Arc::clone(&self.shared);
        let mut requests = request.into_inner();
        tokio::spawn(async move {
            let stream = Stream {
                shared: &shared,
                store: &store,
                interval,
                tx: &tx,
            };
            stream.run(&peer, &mut requests).await;
            drop(permit);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// How long a new stream may take to send its first request (its node): two reporting
/// intervals, and at least [`MIN_FIRST_REQUEST_TIMEOUT`].
fn first_request_timeout(interval: std::time::Duration) -> std::time::Duration {
    interval.saturating_mul(2).max(MIN_FIRST_REQUEST_TIMEOUT)
}

/// The shortest wait for a stream's first request.
const MIN_FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

struct Stream<'a> {
    shared: &'a Shared,
    store: &'a crate::load_report::LoadStore,
    interval: std::time::Duration,
    tx: &'a mpsc::Sender<Result<LoadStatsResponse, Status>>,
}

impl Stream<'_> {
    async fn next(&self, requests: &mut Streaming<LoadStatsRequest>) -> Option<LoadStatsRequest> {
        tokio::select! {
            message = requests.message() => match message {
                Ok(Some(m)) => {
                    // Every message read counts, the first and refused ones too.
                    self.shared.registry.metrics().lrs_report_received();
                    Some(m)
                }
                Ok(None) => None,
                Err(status) => {
                    // A message past --xds-max-request-size, or one that does not decode:
                    // the client is told why.
                    tracing::debug!(%status, "load report stream failed");
                    let _ = self.tx.try_send(Err(status));
                    None
                }
            },
            () = self.tx.closed() => None,
            () = self.shared.stopping.cancelled() => {
                let _ = self.tx.try_send(Err(Status::unavailable(crate::SHUTTING_DOWN)));
                None
            }
        }
    }

    async fn run(&self, peer: &XdsPeer, requests: &mut Streaming<LoadStatsRequest>) {
        // Proxies name their node as soon as the stream opens; a stream that says nothing
        // would hold one of the `--xds-max-streams` permits for ever.
        let wait = first_request_timeout(self.interval);
        let Ok(first) = tokio::time::timeout(wait, self.next(requests)).await else {
            let _ = self
                .tx
                .send(Err(Status::deadline_exceeded(format!(
                    "the first load report must name its node within {}s",
                    wait.as_secs()
                ))))
                .await;
            return;
        };
        let Some(first) = first else {
            return;
        };
        let node = first.node.clone().unwrap_or_default();
        let identity = match &self.shared.node_auth {
            Some(auth) => match auth.check(peer.certificate.as_deref(), first.node.as_ref()) {
                Ok(identity) => Some(identity),
                Err(refusal) => return refuse(self.shared, peer, &node, &refusal, self.tx).await,
            },
            None => None,
        };
        if node.id.is_empty() {
            let _ = self
                .tx
                .send(Err(Status::invalid_argument(
                    "the first load report must name its node",
                )))
                .await;
            return;
        }
        if node.id.len() > self.shared.limits.max_name_length {
            let _ = self
                .tx
                .send(Err(Status::invalid_argument(format!(
                    "node id longer than {} bytes (--xds-max-name-length)",
                    self.shared.limits.max_name_length
                ))))
                .await;
            return;
        }
        tracing::info!(
            node.id = %node.id,
            node.cluster = %node.cluster,
            identity = identity.as_deref().unwrap_or("-"),
            "load report stream opened"
        );
        let settings = LoadStatsResponse {
            clusters: Vec::new(),
            send_all_clusters: true,
            load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: i64::try_from(self.interval.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(self.interval.subsec_nanos()).unwrap_or(0),
            }),
            report_endpoint_granularity: false,
        };
        if self.tx.send(Ok(settings)).await.is_err() {
            return;
        }
        if !first.cluster_stats.is_empty() {
            self.store.record(&node.id, &first.cluster_stats);
        }
        while let Some(request) = self.next(requests).await {
            if self.shared.node_auth.is_some()
                && let Err(refusal) = identity::check_unchanged(&node, request.node.as_ref())
            {
                return refuse(self.shared, peer, &node, &refusal, self.tx).await;
            }
            self.store.record(&node.id, &request.cluster_stats);
        }
        tracing::info!(node.id = %node.id, "load report stream closed");
    }
}
