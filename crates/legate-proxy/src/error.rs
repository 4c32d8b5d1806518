//! Why a request could not be proxied, and the one place those reasons become responses.

use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

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
    #[error("upstream request timeout")]
    UpstreamTimeout,
    #[error("upstream connection reset before the response")]
    UpstreamReset,
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
            ProxyError::UpstreamTimeout => "upstream-timeout",
            ProxyError::UpstreamReset => "upstream-reset",
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
            | ProxyError::UpstreamReset => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ProtocolError => StatusCode::BAD_GATEWAY,
        }
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
        h.insert("x-legate-error", HeaderValue::from_static(self.code()));
        res
    }

    /// Classify a failure of the pooled client.
    pub(crate) fn from_client(err: &hyper_util::client::legacy::Error) -> Self {
        if err.is_connect() {
            return ProxyError::ConnectFailure;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
        while let Some(e) = source {
            if let Some(he) = e.downcast_ref::<hyper::Error>() {
                if he.is_parse() || he.is_parse_status() || he.is_parse_too_large() {
                    return ProxyError::ProtocolError;
                }
                if he.is_timeout() {
                    return ProxyError::UpstreamTimeout;
                }
            }
            source = e.source();
        }
        ProxyError::UpstreamReset
    }
}
