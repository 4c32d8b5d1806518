//! Why a request could not be proxied, and the one place those reasons become responses.

use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// The header of a local reply that names its cause ([`ProxyError::code`]).
pub(crate) const LEGATE_ERROR: http::HeaderName = http::HeaderName::from_static("x-legate-error");

/// A local failure, in the spirit of Envoy's response flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched the request")]
    NoRoute,
    #[error("the route's cluster is not configured")]
    ClusterNotFound,
    #[error("no healthy upstream host")]
    NoHealthyUpstream,
    #[error("upstream connect failure")]
    ConnectFailure,
    #[error("upstream connect timeout")]
    ConnectTimeout,
    /// The TLS handshake with the upstream failed: no common version or ALPN protocol, or
    /// the peer does not speak TLS.
    #[error("upstream tls handshake failed")]
    UpstreamTlsHandshake,
    /// The upstream's certificate was refused (unknown CA, expired, wrong name or SAN), or
    /// the upstream refused ours.
    #[error("upstream tls certificate refused")]
    UpstreamTlsCertificate,
    /// The route's `timeout` (the whole request, every attempt included) expired.
    #[error("upstream request timeout")]
    UpstreamTimeout,
    #[error("upstream per-try timeout")]
    PerTryTimeout,
    #[error("upstream per-try idle timeout")]
    PerTryIdleTimeout,
    #[error("stream idle timeout")]
    StreamIdleTimeout,
    #[error("upstream connection reset before the response")]
    UpstreamReset,
    /// The connection failed before any byte of the request was written: the upstream
    /// provably never saw it.
    #[error("upstream connection reset before the request was sent")]
    ResetBeforeRequest,
    /// HTTP/2 REFUSED_STREAM: the upstream says it did not process the request.
    #[error("upstream refused the stream")]
    RefusedStream,
    #[error("circuit breaker overflow: max_connections")]
    OverflowMaxConnections,
    #[error("circuit breaker overflow: max_pending_requests")]
    OverflowMaxPendingRequests,
    #[error("circuit breaker overflow: max_requests")]
    OverflowMaxRequests,
    #[error("circuit breaker overflow: max_retries")]
    OverflowMaxRetries,
    /// The classic (closed/open/half-open) breaker is open.
    #[error("circuit breaker open")]
    CircuitOpen,
    #[error("upstream sent an invalid response")]
    ProtocolError,
    #[error("the request could not be forwarded")]
    BadRequest,
    #[error("this upgrade is not enabled on the route")]
    UpgradeNotAllowed,
}

impl ProxyError {
    /// The value of `x-legate-error` and of the `reason` metric label.
    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::ClusterNotFound => "cluster-not-found",
            ProxyError::NoHealthyUpstream => "no-healthy-upstream",
            ProxyError::ConnectFailure => "connect-failure",
            ProxyError::ConnectTimeout => "connect-timeout",
            ProxyError::UpstreamTlsHandshake => "upstream-tls-handshake",
            ProxyError::UpstreamTlsCertificate => "upstream-tls-certificate",
            ProxyError::UpstreamTimeout => "upstream-timeout",
            ProxyError::PerTryTimeout => "per-try-timeout",
            ProxyError::PerTryIdleTimeout => "per-try-idle-timeout",
            ProxyError::StreamIdleTimeout => "stream-idle-timeout",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::ResetBeforeRequest => "upstream-reset-before-request",
            ProxyError::RefusedStream => "refused-stream",
            ProxyError::OverflowMaxConnections => "overflow-max-connections",
            ProxyError::OverflowMaxPendingRequests => "overflow-max-pending-requests",
            ProxyError::OverflowMaxRequests => "overflow-max-requests",
            ProxyError::OverflowMaxRetries => "overflow-max-retries",
            ProxyError::CircuitOpen => "circuit-open",
            ProxyError::ProtocolError => "protocol-error",
            ProxyError::BadRequest => "bad-request",
            ProxyError::UpgradeNotAllowed => "upgrade-not-allowed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::UpgradeNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::ClusterNotFound
            | ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailure
            | ProxyError::UpstreamTlsHandshake
            | ProxyError::UpstreamTlsCertificate
            | ProxyError::UpstreamReset
            | ProxyError::ResetBeforeRequest
            | ProxyError::RefusedStream
            | ProxyError::OverflowMaxConnections
            | ProxyError::OverflowMaxPendingRequests
            | ProxyError::OverflowMaxRequests
            | ProxyError::OverflowMaxRetries
            | ProxyError::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout
            | ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout
            | ProxyError::StreamIdleTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ProtocolError => StatusCode::BAD_GATEWAY,
        }
    }

    /// Every variant, for metric pre-registration.
    pub const ALL: [ProxyError; 22] = [
        ProxyError::NoRoute,
        ProxyError::ClusterNotFound,
        ProxyError::NoHealthyUpstream,
        ProxyError::ConnectFailure,
        ProxyError::ConnectTimeout,
        ProxyError::UpstreamTlsHandshake,
        ProxyError::UpstreamTlsCertificate,
        ProxyError::UpstreamTimeout,
        ProxyError::PerTryTimeout,
        ProxyError::PerTryIdleTimeout,
        ProxyError::StreamIdleTimeout,
        ProxyError::UpstreamReset,
        ProxyError::ResetBeforeRequest,
        ProxyError::RefusedStream,
        ProxyError::OverflowMaxConnections,
        ProxyError::OverflowMaxPendingRequests,
        ProxyError::OverflowMaxRequests,
        ProxyError::OverflowMaxRetries,
        ProxyError::CircuitOpen,
        ProxyError::ProtocolError,
        ProxyError::BadRequest,
        ProxyError::UpgradeNotAllowed,
    ];

    /// Whether the upstream provably never received the request, so even a
    /// non-idempotent request can be sent again.
    pub fn never_sent(self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailure
                | ProxyError::ConnectTimeout
                | ProxyError::UpstreamTlsHandshake
                | ProxyError::UpstreamTlsCertificate
                | ProxyError::ResetBeforeRequest
                | ProxyError::RefusedStream
                | ProxyError::OverflowMaxConnections
                | ProxyError::OverflowMaxPendingRequests
                | ProxyError::NoHealthyUpstream
        )
    }

    /// The local reply: status, a one-line body and `x-legate-error`.
    pub fn response(self) -> Response<ResponseBody> {
        let mut res = Response::new(ResponseBody::full(format!("{self}\n")));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(LEGATE_ERROR, HeaderValue::from_static(self.code()));
        if self == ProxyError::BadRequest {
            // A client that sent a request legate cannot make sense of is not trusted with
            // the rest of its connection (HTTP/1.1; hyper drops the header on HTTP/2).
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}
