//! A small HTTP client for tests, on hyper-util's legacy client.
//!
//! Every call is bounded by a timeout. `try_*` methods return errors (for tests that expect a
//! failure, such as a refused connection); the others panic with the method, URL and the full
//! error chain, so a failing test says what it was doing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::demo::{Echo, PatternBody};

/// Errors carried by request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type every client here sends.
pub type ReqBody = BoxBody<Bytes, BoxError>;

/// Timeout of a whole request (headers and body) unless changed with
/// [`HttpClient::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An empty request body.
pub fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A request body held in memory.
pub fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request body of `len` bytes generated on the fly in `chunk_size` chunks, with its length
/// announced (`content-length`).
pub fn generated(len: u64, chunk_size: usize) -> ReqBody {
    PatternBody::new(len, chunk_size)
        .map_err(|never| match never {})
        .boxed()
}

/// Like [`generated`] but without announcing the length (HTTP/1.1 chunked encoding).
pub fn generated_chunked(len: u64, chunk_size: usize) -> ReqBody {
    PatternBody::new(len, chunk_size)
        .without_length()
        .map_err(|never| match never {})
        .boxed()
}

/// A fully read response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The first value of a header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The `x-legate-error` header of a local reply.
    pub fn legate_error(&self) -> Option<&str> {
        self.header("x-legate-error")
    }

    /// The `x-upstream` header set by the demo upstream: who answered.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics showing the response if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!("response body is not JSON ({error}): {}", self.describe())
        })
    }

    /// The demo upstream's echo; panics showing the response if it is not one.
    pub fn echo(&self) -> Echo {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "expected a demo-upstream JSON echo ({error}); got: {}",
                self.describe()
            )
        })
    }

    /// Status, headers and the start of the body, for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = format!("{:?} {}", self.version, self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!(
                "\n  {name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let text = self.text();
        let shown: String = text.chars().take(2000).collect();
        out.push_str(&format!("\n  body ({} bytes): {shown}", self.body.len()));
        out
    }

    /// Panics unless the status is `expected`, showing the whole response.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            expected,
            "unexpected status; response: {}",
            self.describe()
        );
        self
    }
}

/// A pooled client: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, ReqBody>,
    timeout: Duration,
    label: &'static str,
}

impl HttpClient {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            timeout: DEFAULT_TIMEOUT,
            label: "http1",
        }
    }

    /// HTTP/2 with prior knowledge (h2c): no upgrade, the connection starts with the preface.
    pub fn h2c() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
            timeout: DEFAULT_TIMEOUT,
            label: "h2c",
        }
    }

    /// Bound every request (headers and body) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `req` and returns once the response head arrived; the body is left to stream.
    /// Only the head is bounded by the timeout.
    pub async fn try_send(&self, req: Request<ReqBody>) -> anyhow::Result<Response<Incoming>> {
        self.send_by(req, tokio::time::Instant::now() + self.timeout)
            .await
    }

    /// Sends `req`; fails unless the response head arrives by `deadline`.
    async fn send_by(
        &self,
        req: Request<ReqBody>,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Response<Incoming>> {
        let what = format!("{} {} ({})", req.method(), req.uri(), self.label);
        match tokio::time::timeout_at(deadline, self.inner.request(req)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(anyhow::Error::from(error).context(what)),
            Err(_) => bail!("{what}: no response head within {:?}", self.timeout),
        }
    }

    /// Sends a request and reads the whole response, all within the timeout. One deadline
    /// bounds both parts, so a missing head always reads "no response head" (two timers of
    /// the same length once raced under load and named the body instead).
    pub async fn try_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> anyhow::Result<HttpResponse> {
        let req = build_request(method, url, headers, body)?;
        let what = format!("{method} {url} ({})", self.label);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = self.send_by(req, deadline).await?;
        let (parts, body) = response.into_parts();
        let body = match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(body) => body
                .with_context(|| format!("{what}: reading the response body"))?
                .to_bytes(),
            Err(_) => bail!("{what}: no complete response within {:?}", self.timeout),
        };
        Ok(HttpResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// [`try_request`](Self::try_request), panicking with the full error chain.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> HttpResponse {
        match self.try_request(method, url, headers, body).await {
            Ok(response) => response,
            Err(error) => panic!("HTTP request failed: {error:#}"),
        }
    }

    /// `GET url`, panicking on a transport error.
    pub async fn get(&self, url: &str) -> HttpResponse {
        self.request("GET", url, &[], empty()).await
    }

    /// `GET url` with extra headers, panicking on a transport error.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.request("GET", url, headers, empty()).await
    }

    /// `GET url`, returning transport errors.
    pub async fn try_get(&self, url: &str) -> anyhow::Result<HttpResponse> {
        self.try_request("GET", url, &[], empty()).await
    }

    /// `n` sequential `GET url`, each asserted 200; returns the answering upstreams (the
    /// demo's `x-upstream` header) in order.
    pub async fn upstream_sequence(&self, url: &str, n: usize) -> Vec<String> {
        let mut names = Vec::with_capacity(n);
        for i in 0..n {
            let response = self.get(url).await;
            assert_eq!(
                response.status,
                200,
                "request {i} of {n} to {url}: {}",
                response.describe()
            );
            let name = response.upstream().unwrap_or_else(|| {
                panic!(
                    "request {i} of {n} to {url}: no x-upstream header: {}",
                    response.describe()
                )
            });
            names.push(name.to_owned());
        }
        names
    }

    /// `n` sequential `GET url`; how many each upstream answered.
    pub async fn upstream_tally(&self, url: &str, n: usize) -> BTreeMap<String, usize> {
        tally(self.upstream_sequence(url, n).await)
    }
}

/// Counts occurrences of each name.
pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Builds a request; the `host` header, if given, overrides the one derived from the URL.
pub fn build_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> anyhow::Result<Request<ReqBody>> {
    let method = Method::from_bytes(method.as_bytes())
        .with_context(|| format!("invalid method {method:?}"))?;
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .with_context(|| format!("invalid request URL {url:?}"))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("invalid value for header {name}: {value:?}"))?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

/// Reads a streaming body to its end, counting bytes without keeping them.
pub async fn count_body(mut body: Incoming) -> anyhow::Result<u64> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading a response body frame")?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// `GET url` over HTTP/1.1 on a fresh client.
pub async fn get(url: &str) -> HttpResponse {
    HttpClient::http1().get(url).await
}

/// Any request over HTTP/1.1 on a fresh client.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    HttpClient::http1()
        .request(method, url, headers, full(body))
        .await
}

/// `GET url` over h2c (HTTP/2 prior knowledge) on a fresh client.
pub async fn get_h2(url: &str) -> HttpResponse {
    HttpClient::h2c().get(url).await
}

/// Any request over h2c (HTTP/2 prior knowledge) on a fresh client.
pub async fn request_h2(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    HttpClient::h2c()
        .request(method, url, headers, full(body))
        .await
}
