//! `envoy.filters.http.credential_injector`: a credential the application never sees, put
//! into each request's header.
//!
//! Two sources. A generic secret (SDS or the bootstrap, inline or a file that is read again
//! when it changes) is injected as it is, after an optional prefix. An OAuth2 access token is
//! fetched with the client credentials grant (RFC 6749 §4.4) by one background task per
//! filter configuration, which every request only reads: a cold start or a refresh makes
//! exactly one token request whatever the traffic, the token is renewed early (at 80 % of its
//! lifetime), and while the token endpoint fails requests are answered at once instead of
//! each trying again. The task lives as long as the configuration (kept across pushes that
//! do not change it: see [`super::Builder`]).
//!
//! Nothing here logs or formats a secret or a token: errors name causes and lengths only.

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use legate_snapshot::DataSource;
use legate_snapshot::filter::{Credential, CredentialInjector, OAuth2Credential, SecretRef};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Decision, ResponseHeaders};
use crate::Shared;
use crate::body::RequestBody;
use crate::error::ProxyError;

/// A secret file or token response larger than this is refused (a misconfigured path or a
/// hostile endpoint must not make legate hold megabytes).
const MAX_SECRET_BYTES: usize = 16 * 1024;
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// An access token longer than this is refused: it goes into every request's headers.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// `expires_in` is hostile input: it is bounded to this range before any arithmetic.
const MIN_EXPIRES_IN: Duration = Duration::from_secs(1);
const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);
/// The lifetime assumed when the answer carries no `expires_in` (RFC 6749 only recommends
/// it).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// How often a secret file is checked for changes (as TLS files are).
const FILE_RELOAD_INTERVAL: Duration = crate::tls::material::RELOAD_INTERVAL;
/// What a request waits for a token being fetched, beyond the token request's own timeout.
const WAIT_MARGIN: Duration = Duration::from_millis(500);

const AUTHORIZATION: HeaderName = http::header::AUTHORIZATION;

/// RFC 6749 appendix B: `application/x-www-form-urlencoded` leaves only these unescaped
/// (space becomes `+`, done separately).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

#[derive(Debug)]
pub(super) struct Injector {
    config: Arc<CredentialInjector>,
    header: HeaderName,
    source: Source,
}

/// Where an injector's value comes from.
#[derive(Debug)]
pub(super) enum Source {
    /// An inline generic secret (or `None`: the secret has not arrived).
    Fixed(Option<HeaderValue>),
    /// A generic secret in a file, re-read when it changes (kept across snapshots).
    File(FileSecret),
    Token(Arc<TokenSource>),
}

/// A generic secret file's current header value.
pub(crate) type FileSecret = legate_tls::reload::Current<Option<HeaderValue>>;

impl Injector {
    pub(super) fn new(config: Arc<CredentialInjector>, source: Source) -> Self {
        let header = match &config.credential {
            Credential::Generic(g) => {
                HeaderName::from_bytes(g.header.as_bytes()).unwrap_or(AUTHORIZATION)
            }
            Credential::Oauth2(_) => AUTHORIZATION,
        };
        Injector {
            config,
            header,
            source,
        }
    }

    /// `grpc`: the request is gRPC, so a refusal is a trailers-only status (UNAUTHENTICATED,
    /// what a 401 stands for).
    pub(super) async fn decode(
        &self,
        headers: &mut HeaderMap,
        grpc: bool,
        out: &mut ResponseHeaders,
    ) -> Decision {
        // Envoy: a header already there is kept unless `overwrite`, and then nothing is
        // fetched or checked.
        if !self.config.overwrite && headers.contains_key(&self.header) {
            return Decision::Continue;
        }
        let (value, cause) = match &self.source {
            Source::Fixed(v) => (v.clone(), ProxyError::CredentialUnavailable),
            Source::File(current) => (
                current.load().as_ref().clone(),
                ProxyError::CredentialUnavailable,
            ),
            Source::Token(t) => (t.token().await, ProxyError::TokenUnavailable),
        };
        match value {
            Some(v) => {
                headers.insert(self.header.clone(), v);
                Decision::Continue
            }
            None if self.config.allow_request_without_credential => {
                if self.config.overwrite {
                    // What the client sent is not the credential the filter stands for.
                    headers.remove(&self.header);
                }
                Decision::Continue
            }
            None => super::local_reply(
                cause,
                cause.status(),
                grpc.then(|| cause.grpc_status()),
                &[],
                out,
            ),
        }
    }
}

/// The header value of a generic secret: `prefix` then the secret, without the line end a
/// file usually has. Marked sensitive (HPACK never indexes it).
fn header_value(prefix: &str, secret: &[u8]) -> Option<HeaderValue> {
    let secret = secret.trim_ascii_end();
    if secret.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(prefix.len() + secret.len());
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(secret);
    let mut v = HeaderValue::from_bytes(&bytes).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The source of a generic secret that is inline, or has not arrived.
pub(super) fn fixed_source(prefix: &str, secret: &SecretRef) -> Source {
    match &secret.value {
        Some(DataSource::Inline(bytes)) => {
            let v = header_value(prefix, bytes);
            if v.is_none() {
                tracing::warn!(
                    secret = %secret.name,
                    "generic secret is empty or not a valid header value; requests get no credential"
                );
            }
            Source::Fixed(v)
        }
        _ => Source::Fixed(None),
    }
}

/// Read a generic secret file now (blocking, once, when a snapshot first names it) and
/// again whenever it changes, in the background.
pub(super) fn watch_file(prefix: Arc<str>, name: Arc<str>, path: &str) -> FileSecret {
    let path = std::path::PathBuf::from(path);
    let p = path.clone();
    let read = move || -> Result<Option<HeaderValue>, std::convert::Infallible> {
        Ok(match read_secret_file(&p) {
            Ok(bytes) => {
                let v = header_value(&prefix, &bytes);
                if v.is_none() {
                    tracing::warn!(secret = %name, file = %p.display(),
                        "generic secret file is empty or not a valid header value");
                }
                v
            }
            Err(error) => {
                tracing::warn!(secret = %name, %error, "generic secret file not read");
                None
            }
        })
    };
    match legate_tls::reload::watch_with(
        "generic secret file",
        vec![path],
        FILE_RELOAD_INTERVAL,
        read,
    ) {
        Ok(current) => current,
        Err(never) => match never {},
    }
}

/// Why a secret could not be read or a token fetched. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge { path: String },
    #[error("client secret '{0}' has not arrived")]
    NoClientSecret(Arc<str>),
    #[error("token endpoint cluster '{0}' not found")]
    NoCluster(Arc<str>),
    #[error("token request failed: {0}")]
    Upstream(ProxyError),
    #[error("token request timed out after {0:?}")]
    Timeout(Duration),
    #[error("token endpoint answered {0}")]
    Status(StatusCode),
    #[error("token response body failed or exceeded {MAX_TOKEN_RESPONSE_BYTES} bytes")]
    Body,
    #[error("token response is not a JSON object with a string access_token")]
    Json,
    #[error("access token is empty, longer than {MAX_TOKEN_LEN} bytes or not a valid header value")]
    BadToken,
    #[error("cannot build the token request from the token endpoint's uri")]
    Request,
    #[error("token endpoint is stopping")]
    Stopped,
}

/// Blocking: call from a blocking context (the file watcher's, or `spawn_blocking`).
fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, CredentialError> {
    use std::io::Read as _;
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| CredentialError::Read {
        path: shown(),
        source,
    })?;
    let mut buf = Vec::new();
    file.take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| CredentialError::Read {
            path: shown(),
            source,
        })?;
    if buf.len() > MAX_SECRET_BYTES {
        return Err(CredentialError::TooLarge { path: shown() });
    }
    Ok(buf)
}

/// What requests see of the token.
#[derive(Clone, Debug)]
enum TokenState {
    /// The first fetch has not finished.
    Pending,
    /// `Bearer <token>`, valid until `expires`.
    Ready {
        value: HeaderValue,
        expires: Instant,
    },
    /// No valid token and the last fetch failed: answer at once until the next one.
    Failed,
}

/// One OAuth2 filter configuration's token, fetched and renewed by a background task that
/// ends when this is dropped.
#[derive(Debug)]
pub(crate) struct TokenSource {
    state: watch::Receiver<TokenState>,
    wait: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenSource {
    /// Start fetching now. `fetches` counts token requests by result.
    pub(crate) fn start(
        config: Arc<OAuth2Credential>,
        shared: Weak<Shared>,
        fetches: Fetches,
    ) -> Arc<Self> {
        let (tx, rx) = watch::channel(TokenState::Pending);
        let wait = config.timeout.saturating_add(WAIT_MARGIN);
        let task = tokio::spawn(run(config, shared, tx, fetches));
        Arc::new(TokenSource {
            state: rx,
            wait,
            task,
        })
    }

    /// The current token; waits (boundedly) only while one is being fetched and none is
    /// valid.
    async fn token(&self) -> Option<HeaderValue> {
        let mut rx = self.state.clone();
        let deadline = Instant::now() + self.wait;
        loop {
            match &*rx.borrow_and_update() {
                TokenState::Ready { value, expires } if *expires > Instant::now() => {
                    return Some(value.clone());
                }
                TokenState::Failed => return None,
                // Pending, or a token that expired while its renewal is under way.
                _ => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

/// Token requests by result (`ok`, `failed`).
#[derive(Clone, Debug)]
pub(crate) struct Fetches {
    pub(crate) ok: Arc<legate_telemetry::Counter>,
    pub(crate) failed: Arc<legate_telemetry::Counter>,
}

/// When to renew a token valid for `lifetime`: at 80 % of it.
fn renew_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.8)
}

/// `expires_in` bounded to a sane lifetime.
fn lifetime(expires_in: Option<u64>) -> Duration {
    match expires_in {
        None => DEFAULT_EXPIRES_IN,
        Some(s) => Duration::from_secs(s).clamp(MIN_EXPIRES_IN, MAX_EXPIRES_IN),
    }
}

async fn run(
    config: Arc<OAuth2Credential>,
    shared: Weak<Shared>,
    tx: watch::Sender<TokenState>,
    fetches: Fetches,
) {
    // The token still valid, if any, and when it expires.
    let mut valid_until: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let result = fetch(&config, &shared).await;
        let now = Instant::now();
        let next = match result {
            Ok((value, lifetime)) => {
                fetches.ok.inc();
                // Counted from when the request left: the endpoint's clock started then.
                let expires = started + lifetime;
                valid_until = Some(expires);
                tx.send_replace(TokenState::Ready { value, expires });
                started + renew_after(lifetime)
            }
            Err(CredentialError::Stopped) => return,
            Err(error) => {
                fetches.failed.inc();
                tracing::warn!(%error, cluster = %config.cluster, "oauth2 token fetch failed");
                if valid_until.is_none_or(|t| t <= now) {
                    valid_until = None;
                    tx.send_replace(TokenState::Failed);
                }
                now + config.retry_interval
            }
        };
        // A token that expires before the next fetch stops being served at its expiry.
        if let Some(expires) = valid_until
            && expires < next
        {
            tokio::time::sleep_until(expires).await;
            valid_until = None;
            tx.send_replace(TokenState::Failed);
        }
        tokio::time::sleep_until(next.max(Instant::now())).await;
    }
}

/// One token request: RFC 6749 §4.4.2, client authentication per §2.3.1.
async fn fetch(
    config: &OAuth2Credential,
    shared: &Weak<Shared>,
) -> Result<(HeaderValue, Duration), CredentialError> {
    let secret = client_secret(&config.client_secret).await?;
    let mut form = String::from("grant_type=client_credentials");
    if !config.scopes.is_empty() {
        let scopes: Vec<&str> = config.scopes.iter().map(|s| &**s).collect();
        form.push_str("&scope=");
        form.push_str(&form_encode(scopes.join(" ").as_bytes()));
    }
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{}", config.authority, config.path))
        .header(http::header::HOST, &*config.authority)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json");
    if config.basic_auth {
        let mut pair = form_encode(config.client_id.as_bytes());
        pair.push(':');
        pair.push_str(&form_encode(&secret));
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| CredentialError::Request)?;
        v.set_sensitive(true);
        req = req.header(AUTHORIZATION, v);
    } else {
        form.push_str("&client_id=");
        form.push_str(&form_encode(config.client_id.as_bytes()));
        form.push_str("&client_secret=");
        form.push_str(&form_encode(&secret));
    }
    let body = Bytes::from(form);
    let req = req
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(RequestBody::Full(Some(body)))
        .map_err(|_| CredentialError::Request)?;
    let exchange = async {
        let cluster = {
            let shared = shared.upgrade().ok_or(CredentialError::Stopped)?;
            let active = shared.active.load();
            active
                .clusters
                .get(&config.cluster)
                .cloned()
                .ok_or_else(|| CredentialError::NoCluster(config.cluster.clone()))?
        };
        let host = cluster
            .pick(None)
            .ok_or(CredentialError::Upstream(ProxyError::NoHealthyUpstream))?;
        let res = cluster
            .pool
            .send(host.addr, req)
            .await
            .map_err(CredentialError::Upstream)?;
        let status = res.status();
        let limited = http_body_util::Limited::new(res.into_body(), MAX_TOKEN_RESPONSE_BYTES);
        let body = limited
            .collect()
            .await
            .map_err(|_| CredentialError::Body)?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(CredentialError::Status(status));
        }
        parse_token(&body)
    };
    tokio::time::timeout(config.timeout, exchange)
        .await
        .map_err(|_| CredentialError::Timeout(config.timeout))?
}

/// The client secret's bytes (a file is read off the runtime's workers).
async fn client_secret(secret: &SecretRef) -> Result<Vec<u8>, CredentialError> {
    let bytes = match &secret.value {
        None => return Err(CredentialError::NoClientSecret(secret.name.clone())),
        Some(DataSource::Inline(b)) => b.to_vec(),
        Some(DataSource::Filename(path)) => {
            let path = std::path::PathBuf::from(&**path);
            tokio::task::spawn_blocking(move || read_secret_file(&path))
                .await
                .map_err(|_| CredentialError::Stopped)??
        }
    };
    let trimmed = bytes.trim_ascii_end().to_vec();
    if trimmed.is_empty() {
        return Err(CredentialError::NoClientSecret(secret.name.clone()));
    }
    Ok(trimmed)
}

/// `application/x-www-form-urlencoded` (space as `+`).
fn form_encode(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    utf8_percent_encode(&text, FORM)
        .to_string()
        .replace(' ', "+")
}

/// RFC 6749 §5.1: `access_token` (required), `expires_in` (recommended; a number, or a
/// numeric string as some servers send). `token_type` is not checked: the token is sent as
/// a bearer token, as Envoy does.
fn parse_token(body: &[u8]) -> Result<(HeaderValue, Duration), CredentialError> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| CredentialError::Json)?;
    let obj = json.as_object().ok_or(CredentialError::Json)?;
    let token = obj
        .get("access_token")
        .and_then(|t| t.as_str())
        .ok_or(CredentialError::Json)?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(CredentialError::BadToken);
    }
    let expires_in = match obj.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.min(u64::MAX as f64) as u64)
        }),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| CredentialError::BadToken)?;
    value.set_sensitive(true);
    Ok((value, lifetime(expires_in)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_follows_rfc_6749_appendix_b() {
        assert_eq!(form_encode(b"a b+c/d:e%f"), "a+b%2Bc%2Fd%3Ae%25f");
        assert_eq!(form_encode("é".as_bytes()), "%C3%A9");
        assert_eq!(form_encode(b"A-z0_9.*~"), "A-z0_9.*%7E");
    }

    #[test]
    fn token_answers_are_bounded() {
        let (v, life) =
            parse_token(br#"{"access_token":"abc","token_type":"Bearer","expires_in":120}"#)
                .expect("token");
        assert_eq!(v, "Bearer abc");
        assert!(v.is_sensitive());
        assert_eq!(life, Duration::from_secs(120));
        // Hostile lifetimes are bounded before any arithmetic.
        let huge = parse_token(br#"{"access_token":"a","expires_in":18446744073709551615}"#)
            .expect("token");
        assert_eq!(huge.1, MAX_EXPIRES_IN);
        let float = parse_token(br#"{"access_token":"a","expires_in":1e300}"#).expect("token");
        assert_eq!(float.1, MAX_EXPIRES_IN);
        let zero = parse_token(br#"{"access_token":"a","expires_in":0}"#).expect("token");
        assert_eq!(zero.1, MIN_EXPIRES_IN);
        let negative = parse_token(br#"{"access_token":"a","expires_in":-5}"#).expect("token");
        assert_eq!(negative.1, DEFAULT_EXPIRES_IN);
        let text = parse_token(br#"{"access_token":"a","expires_in":"30"}"#).expect("token");
        assert_eq!(text.1, Duration::from_secs(30));
        assert!(parse_token(br#"{"token":"a"}"#).is_err());
        assert!(parse_token(b"[]").is_err());
        assert!(parse_token(br#"{"access_token":"a\nb"}"#).is_err());
        let long = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(parse_token(long.as_bytes()).is_err());
        assert_eq!(renew_after(Duration::from_secs(10)), Duration::from_secs(8));
    }

    #[test]
    fn generic_values_drop_the_line_end_and_are_sensitive() {
        let v = header_value("Bearer ", b"s3cret\n").expect("value");
        assert_eq!(v, "Bearer s3cret");
        assert!(v.is_sensitive());
        assert!(header_value("", b"\n").is_none());
        assert!(header_value("", b"a\nb").is_none());
    }
}
