//! The admin API as JSON over HTTP, beside the gRPC service on the same port
//! ([`crate::admin_server`] sends `/v1/...` here once the caller is authorized):
//!
//! | method and path | |
//! |---|---|
//! | `GET /v1/nodes` | connected nodes, versions sent and ACKed, last NACK; refused streams |
//! | `GET /v1/nodes/{id}[?cluster=C]` | the resources a node receives |
//! | `GET /v1/mesh` | the mesh files applied (paths, digest, when), the last refusal, refusals so far |
//! | `POST /v1/apply` | body: a mesh document with `services:` |
//! | `POST /v1/services/{name}/weights` | body: `{"v1": 90, "v2": 10}` |
//! | `GET /v1/services/{name}` | the service's fields, each with its source (file:line:col or admin change) |
//! | `POST /v1/services/{name}/reset` | drop the service's admin changes (body: empty or `{}`) |
//! | `DELETE /v1/services/{name}` | remove a service an apply created |
//! | `POST /v1/rollouts/{service}` | start a canary rollout (body: `{"to": "v2", "steps": [5, 25, 50, 100], ...}`, see docs/canary.md) |
//! | `GET /v1/rollouts[/{service}]` | rollouts: state, step, weights, figures, decisions |
//! | `POST /v1/rollouts/{service}/{pause,resume,abort,promote}` | steer a rollout |
//!
//! A change needs a `content-type` of JSON or YAML (415 otherwise: a browser can send
//! `text/plain` or a form anywhere without asking, but not these) and a body within the
//! limit (413). Errors answer with `{"error": "..."}`: 400 (bad input), 401 (no or bad
//! credentials, with `www-authenticate: Bearer`), 403 (not allowed, or another origin), 404
//! (unknown node, service or rollout), 408 (too slow), 409 (reset of a service only an
//! apply created, delete of one the mesh files define, a weight change to a service that is
//! rolling out, a rollout action its state does not allow), 413, 415, and 503 for a change asked for
//! once legate-cp is shutting down (reads are answered until it exits).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use tonic::body::Body;

use crate::admin_auth::{Refusal, RefusalKind};
use crate::app::{ChangeError, ControlPlane, Outcome, parse_weights};
use crate::rollout::{Action, StartRequest};

type Resp = http::Response<Body>;

/// Bounds on one JSON request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: usize,
}

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

/// The answer to a refused request: 401 with a `www-authenticate: Bearer` challenge (RFC 6750,
/// `error="invalid_token"` when a token was presented and is wrong), or 403.
pub fn refusal(refusal: &Refusal) -> Resp {
    match refusal.kind() {
        RefusalKind::Unauthenticated => {
            let mut res = error(401, &format!("not authorized: {refusal}"));
            let challenge = match refusal {
                Refusal::WrongToken => r#"Bearer realm="legate-cp", error="invalid_token""#,
                Refusal::MalformedAuthorization => {
                    r#"Bearer realm="legate-cp", error="invalid_request""#
                }
                _ => r#"Bearer realm="legate-cp""#,
            };
            res.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(challenge),
            );
            res
        }
        RefusalKind::Forbidden => error(403, &format!("forbidden: {refusal}")),
    }
}

/// The answer to a change asked for once legate-cp is shutting down.
pub fn shutting_down() -> Resp {
    error(503, crate::SHUTTING_DOWN)
}

/// The answer to a request that took longer than `timeout`.
pub fn timed_out(timeout: std::time::Duration) -> Resp {
    error(
        408,
        &format!("the request took longer than {timeout:?} (body included)"),
    )
}

/// How a change's body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// The accepted media types, for the 415 message.
const ACCEPTED_TYPES: &str =
    "application/json, application/yaml (or application/x-yaml, text/yaml)";

fn body_format(headers: &http::HeaderMap) -> Option<Format> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Some(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Some(Format::Yaml)
        }
        _ => None,
    }
}

/// Read a change's body: its format from `content-type`, at most `limit` bytes.
async fn read_change<B>(req: http::Request<B>, limit: usize) -> Result<(Format, Bytes), Resp>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(format) = body_format(req.headers()) else {
        return Err(error(
            415,
            &format!("a change needs content-type {ACCEPTED_TYPES}"),
        ));
    };
    let too_large = || {
        error(
            413,
            &format!("the body is larger than the limit of {limit} bytes (--admin-max-body)"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok((format, b.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(error(400, &format!("cannot read the request body: {e}"))),
    }
}

/// The answer to an admin change.
fn changed(result: Result<Outcome, ChangeError>) -> Resp {
    match result {
        Ok(outcome) => json(
            200,
            &serde_json::to_value(outcome).unwrap_or(serde_json::Value::Null),
        ),
        Err(e) => change_error(&e),
    }
}

/// The answer to a refused change.
fn change_error(e: &ChangeError) -> Resp {
    let status = match e {
        ChangeError::UnknownService(_) | ChangeError::NotFound(_) => 404,
        ChangeError::Invalid(_) => 400,
        ChangeError::Precondition(_) | ChangeError::Conflict(_) => 409,
        ChangeError::Stopped | ChangeError::Unavailable(_) => 503,
    };
    error(status, &e.to_string())
}

/// The answer to a rollout call: its status (or every rollout's, `list`).
fn rollout_answer(result: Result<serde_json::Value, ChangeError>) -> Resp {
    match result {
        Ok(v) => json(200, &v),
        Err(e) => change_error(&e),
    }
}

/// `POST /v1/rollouts/{service}`: the body read as JSON (or YAML) into a start request.
fn start_request(format: Format, body: &[u8]) -> Result<StartRequest, String> {
    match format {
        Format::Json => serde_json::from_slice(body).map_err(|e| format!("body: {e}")),
        Format::Yaml => serde_yaml_ng::from_slice(body).map_err(|e| format!("body: {e}")),
    }
}

/// Answer one request; the caller is already authorized for it (`caller`: who, to record
/// with a change).
pub async fn handle<B>(
    cp: Arc<ControlPlane>,
    req: http::Request<B>,
    limits: Limits,
    caller: Option<String>,
) -> Resp
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Only changes have a body; a read's body is never read.
    let (format, body) = if method == http::Method::POST {
        match read_change(req, limits.max_body).await {
            Ok(read) => read,
            Err(res) => return res,
        }
    } else {
        (Format::Json, Bytes::new())
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
                        "identity": (!n.identity.is_empty()).then_some(&n.identity),
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
            json(
                200,
                &serde_json::json!({
                    "nodes": list,
                    "refused": cp.registry.recent_refusals(),
                    "refusal_counts": cp.registry.refusal_counts(),
                }),
            )
        }
        ("GET", ["v1", "load"]) => load(&cp, &query),
        ("GET", ["v1", "mesh"]) => json(
            200,
            &serde_json::to_value(cp.mesh_status()).unwrap_or(serde_json::Value::Null),
        ),
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
            changed(cp.apply(text, "request", caller).await)
        }
        ("POST", ["v1", "services", name, "weights"]) => {
            let parsed = match format {
                Format::Json => parse_weights(&body),
                Format::Yaml => parse_weights_yaml(&body),
            };
            let weights = match parsed {
                Ok(w) => w,
                Err(e) => return error(400, &e),
            };
            changed(cp.set_weights(name, &weights, caller).await)
        }
        ("POST", ["v1", "services", name, "reset"]) => changed(cp.reset(name).await),
        ("GET", ["v1", "rollouts"]) => match cp.rollouts(None).await {
            Ok(list) => json(200, &serde_json::json!({ "rollouts": list })),
            Err(e) => change_error(&e),
        },
        ("GET", ["v1", "rollouts", service]) => rollout_answer(
            cp.rollouts(Some(service))
                .await
                .map(|mut list| list.pop().unwrap_or_default()),
        ),
        ("POST", ["v1", "rollouts", service]) => match start_request(format, &body) {
            Ok(request) => rollout_answer(cp.start_rollout(service, request, caller).await),
            Err(e) => error(400, &e),
        },
        ("POST", ["v1", "rollouts", service, action]) => match Action::parse(action) {
            Some(action) => rollout_answer(cp.steer_rollout(service, action, caller).await),
            None => error(
                404,
                &format!(
                    "no such endpoint: POST {}: a rollout takes pause, resume, abort or promote",
                    path.chars().take(200).collect::<String>()
                ),
            ),
        },
        ("DELETE", ["v1", "services", name]) => changed(cp.delete(name).await),
        ("GET", ["v1", "services", name]) => match cp.service(name).await {
            Ok(Some(view)) => json(
                200,
                &serde_json::to_value(view).unwrap_or(serde_json::Value::Null),
            ),
            Ok(None) => error(
                404,
                &ChangeError::UnknownService((*name).to_owned()).to_string(),
            ),
            Err(e) => error(503, &e.to_string()),
        },
        _ => error(
            404,
            &format!(
                "no such endpoint: {method} {}",
                path.chars().take(200).collect::<String>()
            ),
        ),
    }
}

/// `GET /v1/load[?service=NAME][&window=DURATION]`: reported load per service version over
/// the window (default and at most the store's, `--lrs-window`).
fn load(cp: &ControlPlane, query: &str) -> Resp {
    let mut service = None;
    let mut window = cp.load.window();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "service" => service = Some(v.to_owned()),
            "window" => match legate_model::parse_duration(v) {
                Ok(d) => window = d,
                Err(e) => return error(400, &format!("window: {e}")),
            },
            _ => {
                return error(
                    400,
                    &format!(
                        "unknown parameter '{}', expected service or window",
                        k.chars().take(100).collect::<String>()
                    ),
                );
            }
        }
    }
    let services = match service {
        Some(s) => vec![s],
        None => cp.load.services(),
    };
    let list: Vec<_> = services
        .iter()
        .map(|s| cp.load.service_window(s, window))
        .collect();
    json(
        200,
        &serde_json::json!({
            "services": list,
            "reports_received": cp.metrics.lrs_reports_received(),
        }),
    )
}

/// Weights from a YAML mapping of version to weight.
fn parse_weights_yaml(body: &[u8]) -> Result<Vec<(String, u32)>, String> {
    let map: std::collections::BTreeMap<String, u32> = serde_yaml_ng::from_slice(body)
        .map_err(|e| format!("body must be a mapping of version to weight: {e}"))?;
    Ok(map.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One service as an operator writes it: two versions, a canary route, retries and
    /// outlier detection.
    fn service(i: usize) -> String {
        let (a, b) = (i / 250, i % 250);
        format!(
            r#"  - name: svc-{i}
    lb_policy: round_robin
    connect_timeout: 1s
    versions:
      - name: v1
        weight: 90
        endpoints: [{{address: 10.0.{a}.{b}:8080}}, {{address: 10.1.{a}.{b}:8080}}]
      - name: v2
        weight: 10
        endpoints: [{{address: 10.2.{a}.{b}:8080}}]
    route:
      prefix: /svc-{i}/
      rewrite: /
      canary:
        - version: v2
          headers: [{{name: x-canary, exact: "1"}}]
    policies:
      request_headers_to_add: [{{name: x-mesh, value: legate}}]
      timeout: 5s
      retries:
        on: [5xx, reset, connect-failure]
        attempts: 2
        per_try_timeout: 1500ms
        previous_hosts: true
      outlier_detection:
        failure_percentage_threshold: 50
        enforcing_failure_percentage: 100
        failure_percentage_minimum_hosts: 2
        failure_percentage_request_volume: 20
        interval: 10s
        base_ejection_time: 30s
        max_ejection_percent: 50
"#
        )
    }

    #[test]
    fn the_default_body_limit_fits_a_10000_service_mesh() {
        let sample = format!("services:\n{}{}", service(1), service(9999));
        let mesh: legate_model::Mesh =
            legate_model::parse_yaml(&sample, "sample").expect("a valid mesh document");
        assert_eq!(mesh.services.len(), 2);
        let yaml: usize =
            "services:\n".len() + (0..10_000).map(|i| service(i).len()).sum::<usize>();
        // The same document as JSON, measured on one service with the widest numbers.
        let value: serde_json::Value = serde_yaml_ng::from_str(&sample).expect("yaml");
        let json_per_service = serde_json::to_string(&value["services"][1])
            .expect("json")
            .len()
            + 1;
        let json = 10_000 * json_per_service;
        let limit = crate::admin_server::DEFAULT_MAX_BODY;
        assert!(yaml < limit * 3 / 4, "yaml {yaml} bytes");
        assert!(json < limit * 7 / 8, "json {json} bytes");
    }

    #[test]
    fn change_bodies_must_be_json_or_yaml() {
        let check = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_str(ct).expect("header"),
            );
            body_format(&h)
        };
        assert_eq!(check("application/json"), Some(Format::Json));
        assert_eq!(check("Application/JSON; charset=utf-8"), Some(Format::Json));
        assert_eq!(check("application/yaml"), Some(Format::Yaml));
        assert_eq!(check("text/yaml"), Some(Format::Yaml));
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert_eq!(check(refused), None, "{refused}");
        }
        assert_eq!(body_format(&http::HeaderMap::new()), None);
        assert_eq!(
            parse_weights_yaml(b"v1: 90\nv2: 10\n"),
            Ok(vec![("v1".to_owned(), 90), ("v2".to_owned(), 10)])
        );
    }
}
