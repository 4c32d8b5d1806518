//! A real OAuth2 token endpoint for the credential tests: RFC 6749 §4.4 client credentials,
//! served over HTTP/1.1 on 127.0.0.1 by this process.
//!
//! It checks what a client must send (POST, `application/x-www-form-urlencoded` body with
//! `grant_type=client_credentials` and the expected `scope`, client authentication with HTTP
//! Basic over the form-encoded id and secret, or `client_id`/`client_secret` in the body,
//! which it counts apart) and answers 400/401 with an RFC 6749
//! §5.2 error otherwise. A good request gets `{"access_token": "tok-N", "token_type":
//! "Bearer", "expires_in": E}` where N counts the tokens issued. The test can make it fail
//! (any status), delay its answer, or change `expires_in`, and reads how many token requests
//! arrived and how many were malformed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the endpoint answers from now on.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// `Some(status)`: answer every token request with this status and an error body.
    pub fail: Option<u16>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// `expires_in` of issued tokens.
    pub expires_in: u64,
    /// Hold every answer until this is set back to false (checked every 10 ms, for at most
    /// 10 s).
    pub hold: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            fail: None,
            delay: Duration::ZERO,
            expires_in: 3600,
            hold: false,
        }
    }
}

#[derive(Debug)]
struct State {
    client_id: String,
    client_secret: String,
    scope: String,
    behaviour: Mutex<Behaviour>,
    /// Token requests received (good or not).
    requests: AtomicUsize,
    /// Token requests that broke RFC 6749 §4.4.2 or carried the wrong client credentials.
    malformed: AtomicUsize,
    issued: AtomicUsize,
    /// When each token was issued, in order.
    issued_at: Mutex<Vec<std::time::Instant>>,
    /// Good requests that sent the client credentials in the body rather than with Basic
    /// (RFC 6749 §2.3.1 allows it, not recommended).
    body_auth: AtomicUsize,
    /// Why the last malformed request was refused.
    last_error: Mutex<Option<String>>,
}

/// The running endpoint; stops when dropped.
pub struct TokenEndpoint {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    /// Serve on a fresh port of 127.0.0.1, expecting this client and `scope` (space
    /// separated, as RFC 6749 §3.3 joins scopes).
    pub async fn start(client_id: &str, client_secret: &str, scope: &str) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the token endpoint");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            scope: scope.to_owned(),
            behaviour: Mutex::new(Behaviour::default()),
            requests: AtomicUsize::new(0),
            malformed: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            issued_at: Mutex::new(Vec::new()),
            body_auth: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenEndpoint { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, b: Behaviour) {
        *self.state.behaviour.lock().expect("lock") = b;
    }

    pub fn behaviour(&self) -> Behaviour {
        self.state.behaviour.lock().expect("lock").clone()
    }

    /// Token requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// When each token (`tok-1`, `tok-2`, ...) was issued.
    pub fn issued_at(&self) -> Vec<std::time::Instant> {
        self.state.issued_at.lock().expect("lock").clone()
    }

    /// Good token requests that authenticated the client in the form body, not with Basic.
    pub fn body_auth(&self) -> usize {
        self.state.body_auth.load(Ordering::SeqCst)
    }

    /// Token requests refused as malformed, and the last reason.
    pub fn malformed(&self) -> (usize, Option<String>) {
        (
            self.state.malformed.load(Ordering::SeqCst),
            self.state.last_error.lock().expect("lock").clone(),
        )
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// Decode one `application/x-www-form-urlencoded` component.
fn form_decode(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

async fn answer(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let behaviour = st.behaviour.lock().expect("lock").clone();
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    for _ in 0..1000 {
        if !st.behaviour.lock().expect("lock").hold {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(status) = behaviour.fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json(
            status,
            serde_json::json!({"error": "temporarily_unavailable"}),
        );
    }
    let refuse = |status: StatusCode, error: &str, why: String| {
        st.malformed.fetch_add(1, Ordering::SeqCst);
        *st.last_error.lock().expect("lock") = Some(why);
        json(status, serde_json::json!({"error": error}))
    };
    if req.method() != http::Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            format!("method {}", req.method()),
        );
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("content-type {content_type:?}"),
        );
    }
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut grant = None;
    let mut scope = None;
    let mut body_id = None;
    let mut body_secret = None;
    for pair in body.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, form_decode(v)) {
            ("grant_type", v) => grant = v,
            ("scope", v) => scope = v,
            ("client_id", v) => body_id = v,
            ("client_secret", v) => body_secret = v,
            _ => {}
        }
    }
    if grant.as_deref() != Some("client_credentials") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant:?} in {body:?}"),
        );
    }
    if scope.as_deref().unwrap_or("") != st.scope {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("scope {scope:?}"),
        );
    }
    // RFC 6749 §2.3.1: the id and secret are form-encoded, then joined for Basic.
    use base64::Engine as _;
    let pair = basic
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let in_body = pair.is_none() && body_id.is_some();
    let creds = match (pair.as_deref(), body_id, body_secret) {
        (Some(p), None, None) => p
            .split_once(':')
            .and_then(|(i, s)| Some((form_decode(i)?, form_decode(s)?))),
        (None, Some(i), Some(s)) => Some((i, s)),
        // Both ways at once, or neither: RFC 6749 §2.3 allows one.
        _ => None,
    };
    match creds {
        Some((id, secret)) if id == st.client_id && secret == st.client_secret => {}
        _ => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!("wrong or missing basic client authentication: {pair:?} in {body:?}"),
            );
        }
    }
    if in_body {
        st.body_auth.fetch_add(1, Ordering::SeqCst);
    }
    st.issued_at
        .lock()
        .expect("lock")
        .push(std::time::Instant::now());
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": behaviour.expires_in,
        }),
    )
}
