//! The admin API as JSON over HTTP, beside the gRPC service on the same port (tonic routes
//! `/v1/...` here by the first path segment):
//!
//! | method and path | |
//! |---|---|
//! | `GET /v1/nodes` | connected nodes, versions sent and ACKed, last NACK |
//! | `GET /v1/nodes/{id}[?cluster=C]` | the resources a node receives |
//! | `POST /v1/apply` | body: a mesh document with `services:` |
//! | `POST /v1/services/{name}/weights` | body: `{"v1": 90, "v2": 10}` |
//!
//! Errors answer 400 (bad input), 404 (unknown node or service) with `{"error": "..."}`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::app::{ControlPlane, parse_weights};

#[derive(Clone)]
pub struct JsonApi(pub Arc<ControlPlane>);

impl NamedService for JsonApi {
    const NAME: &'static str = "v1";
}

type Resp = http::Response<Body>;

fn json(status: u16, v: &serde_json::Value) -> Resp {
    let mut res = http::Response::new(Body::new(
        http_body_util::Full::new(bytes::Bytes::from(v.to_string()))
            .map_err(|never| match never {}),
    ));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn error(status: u16, message: &str) -> Resp {
    json(status, &serde_json::json!({ "error": message }))
}

impl tower_service::Service<http::Request<Body>> for JsonApi {
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let cp = self.0.clone();
        Box::pin(async move { Ok(handle(cp, req).await) })
    }
}

async fn handle(cp: Arc<ControlPlane>, req: http::Request<Body>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(400, &format!("cannot read the request body: {e}")),
    };
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "nodes"]) => {
            let nodes = cp.nodes();
            let list: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "id": n.id, "cluster": n.cluster, "user_agent": n.user_agent,
                        "streams": n.streams, "mode": n.mode,
                        "connected_since_unix_ms": n.connected_since_unix_ms,
                        "types": n.types.iter().map(|t| serde_json::json!({
                            "type_url": t.type_url, "sent_version": t.sent_version,
                            "acked_version": t.acked_version,
                            "acked_at_unix_ms": t.acked_at_unix_ms,
                            "last_nack": t.last_nack.as_ref().map(|k| serde_json::json!({
                                "version": k.version, "message": k.message, "at_unix_ms": k.at_unix_ms,
                            })),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json(200, &serde_json::json!({ "nodes": list }))
        }
        ("GET", ["v1", "nodes", id]) => {
            let cluster = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("cluster="))
                .map(str::to_owned)
                .or_else(|| {
                    cp.registry
                        .nodes()
                        .into_iter()
                        .find(|n| n.id == *id)
                        .map(|n| n.cluster)
                });
            let Some(cluster) = cluster else {
                return error(
                    404,
                    &format!(
                        "unknown node '{id}': not connected (add ?cluster=C to see what it would get)"
                    ),
                );
            };
            match cp.node_resources(id, &cluster) {
                Some(resources) => {
                    let list: Vec<serde_json::Value> = resources
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "type_url": r.type_url, "name": r.name, "version": r.version,
                                "resource": serde_json::from_str::<serde_json::Value>(&r.json)
                                    .unwrap_or(serde_json::Value::Null),
                            })
                        })
                        .collect();
                    json(
                        200,
                        &serde_json::json!({ "node_id": id, "resources": list }),
                    )
                }
                None => error(404, &format!("no configuration for node '{id}'")),
            }
        }
        ("POST", ["v1", "apply"]) => {
            let Ok(text) = std::str::from_utf8(&body) else {
                return error(400, "the body must be UTF-8 YAML or JSON");
            };
            match cp.apply(text, "request") {
                Ok((generation, changes)) => json(
                    200,
                    &serde_json::json!({ "generation": generation, "changes": changes }),
                ),
                Err(e) => error(400, &e),
            }
        }
        ("POST", ["v1", "services", name, "weights"]) => {
            let weights = match parse_weights(&body) {
                Ok(w) => w,
                Err(e) => return error(400, &e),
            };
            match cp.set_weights(name, &weights) {
                Ok((generation, changes)) => json(
                    200,
                    &serde_json::json!({ "generation": generation, "changes": changes }),
                ),
                Err(e) if e.contains("unknown service") => error(404, &e),
                Err(e) => error(400, &e),
            }
        }
        _ => error(404, &format!("no such endpoint: {method} {path}")),
    }
}
