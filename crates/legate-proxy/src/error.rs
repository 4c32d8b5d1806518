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
    /// `envoy.filters.http.local_ratelimit` found its bucket empty (status: the filter's,
    /// 429 by default).
    #[error("local rate limit exceeded")]
    RateLimited,
    /// `envoy.filters.http.fault` aborted the request (status: the fault's).
    #[error("fault filter abort")]
    FaultAbort,
    /// `envoy.filters.http.credential_injector`: the credential (a generic secret) is not
    /// available and the filter does not allow requests without it (401, as Envoy).
    #[error("credential not available")]
    CredentialUnavailable,
    /// `envoy.filters.http.credential_injector` with OAuth2: no valid access token (the
    /// token endpoint failed or is failing). 503, where Envoy answers 401: the token
    /// endpoint, a dependency, is down; the application is not unauthorised, and a 503 is
    /// what its retries and breakers treat as a failure to try again.
    #[error("oauth2 access token not available")]
    TokenUnavailable,
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
            ProxyError::RateLimited => "rate-limited",
            ProxyError::FaultAbort => "fault-abort",
            ProxyError::CredentialUnavailable => "credential-unavailable",
            ProxyError::TokenUnavailable => "token-unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::UpgradeNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultAbort => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::CredentialUnavailable => StatusCode::UNAUTHORIZED,
            ProxyError::TokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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
    pub const ALL: [ProxyError; 26] = [
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
        ProxyError::RateLimited,
        ProxyError::FaultAbort,
        ProxyError::CredentialUnavailable,
        ProxyError::TokenUnavailable,
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

    /// The local reply to a request: a trailers-only gRPC status for a gRPC request, else
    /// [`ProxyError::response`].
    pub(crate) fn response_for(self, grpc: bool) -> Response<ResponseBody> {
        if grpc {
            self.grpc_response()
        } else {
            self.response()
        }
    }

    /// The gRPC status a local reply to a gRPC request carries.
    pub(crate) fn grpc_status(self) -> u32 {
        crate::grpc::status_for_http(self.status())
    }

    /// The local reply to a gRPC request: a trailers-only response (HTTP 200, one HEADERS
    /// frame that ends the stream) with `grpc-status`, `grpc-message` naming the cause and
    /// `x-legate-error`; no body, which a gRPC client could not read.
    pub(crate) fn grpc_response(self) -> Response<ResponseBody> {
        let mut res = Response::new(ResponseBody::empty());
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            crate::grpc::GRPC_STATUS,
            HeaderValue::from(self.grpc_status()),
        );
        h.insert(
            crate::grpc::GRPC_MESSAGE,
            crate::grpc::encode_message(&self.to_string()),
        );
        h.insert(LEGATE_ERROR, HeaderValue::from_static(self.code()));
        res
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

/// Envoy's response flags (`%RESPONSE_FLAGS%`), as a set. Printed comma-separated in the
/// order Envoy prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    pub const UH: Self = Self(1 << 1);
    pub const UT: Self = Self(1 << 2);
    pub const UR: Self = Self(1 << 4);
    pub const UF: Self = Self(1 << 5);
    pub const UC: Self = Self(1 << 6);
    pub const UO: Self = Self(1 << 7);
    pub const NR: Self = Self(1 << 8);
    pub const DI: Self = Self(1 << 9);
    pub const FI: Self = Self(1 << 10);
    pub const RL: Self = Self(1 << 11);
    pub const DC: Self = Self(1 << 14);
    pub const URX: Self = Self(1 << 15);
    pub const SI: Self = Self(1 << 16);
    pub const DPE: Self = Self(1 << 18);
    pub const UPE: Self = Self(1 << 23);
    pub const NC: Self = Self(1 << 24);

    /// Envoy's order (its `CoreResponseFlag` enum) and short codes.
    const CODES: [(Self, &'static str); 16] = [
        (Self::UH, "UH"),
        (Self::UT, "UT"),
        (Self::UR, "UR"),
        (Self::UF, "UF"),
        (Self::UC, "UC"),
        (Self::UO, "UO"),
        (Self::NR, "NR"),
        (Self::DI, "DI"),
        (Self::FI, "FI"),
        (Self::RL, "RL"),
        (Self::DC, "DC"),
        (Self::URX, "URX"),
        (Self::SI, "SI"),
        (Self::DPE, "DPE"),
        (Self::UPE, "UPE"),
        (Self::NC, "NC"),
    ];

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes, comma-separated.
    pub fn write(self, out: &mut String) {
        let mut first = true;
        for (flag, code) in Self::CODES {
            if self.0 & flag.0 != 0 {
                if !first {
                    out.push(',');
                }
                out.push_str(code);
                first = false;
            }
        }
    }
}

impl ProxyError {
    /// The Envoy response flag a failure stands for: the one mapping from legate's causes
    /// (`x-legate-error`) to Envoy's codes (table in `docs/access-log.md`).
    pub fn response_flag(self) -> ResponseFlags {
        match self {
            ProxyError::NoRoute => ResponseFlags::NR,
            ProxyError::ClusterNotFound => ResponseFlags::NC,
            ProxyError::NoHealthyUpstream => ResponseFlags::UH,
            ProxyError::ConnectFailure
            | ProxyError::ConnectTimeout
            | ProxyError::UpstreamTlsHandshake
            | ProxyError::UpstreamTlsCertificate => ResponseFlags::UF,
            ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout => ResponseFlags::UT,
            ProxyError::StreamIdleTimeout => ResponseFlags::SI,
            ProxyError::UpstreamReset | ProxyError::ResetBeforeRequest => ResponseFlags::UC,
            ProxyError::RefusedStream => ResponseFlags::UR,
            ProxyError::OverflowMaxConnections
            | ProxyError::OverflowMaxPendingRequests
            | ProxyError::OverflowMaxRequests
            | ProxyError::OverflowMaxRetries
            | ProxyError::CircuitOpen => ResponseFlags::UO,
            ProxyError::ProtocolError => ResponseFlags::UPE,
            ProxyError::BadRequest => ResponseFlags::DPE,
            ProxyError::UpgradeNotAllowed => ResponseFlags::default(),
            ProxyError::RateLimited => ResponseFlags::RL,
            ProxyError::FaultAbort => ResponseFlags::FI,
            // Envoy sets no flag for its credential injector's 401.
            ProxyError::CredentialUnavailable | ProxyError::TokenUnavailable => {
                ResponseFlags::default()
            }
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: the cause of a failed upstream connection.
    pub fn transport_failure(self) -> Option<&'static str> {
        matches!(
            self,
            ProxyError::ConnectFailure
                | ProxyError::ConnectTimeout
                | ProxyError::UpstreamTlsHandshake
                | ProxyError::UpstreamTlsCertificate
        )
        .then(|| self.code())
    }
}

#[cfg(test)]
mod flag_tests {
    use super::*;

    #[test]
    fn grpc_local_replies_are_trailers_only() {
        let check = |e: ProxyError, status: &str| {
            let res = e.response_for(true);
            assert_eq!(res.status(), StatusCode::OK, "{e:?}");
            let h = res.headers();
            assert_eq!(h["content-type"], "application/grpc");
            assert_eq!(h["grpc-status"], status, "{e:?}");
            assert_eq!(h["grpc-message"], e.to_string().as_str());
            assert_eq!(h["x-legate-error"], e.code());
            assert!(http_body::Body::is_end_stream(res.body()), "{e:?}");
        };
        check(ProxyError::NoHealthyUpstream, "14");
        check(ProxyError::OverflowMaxRequests, "14");
        check(ProxyError::UpstreamTimeout, "4");
        check(ProxyError::PerTryTimeout, "4");
        check(ProxyError::ProtocolError, "14");
        check(ProxyError::NoRoute, "12");
        check(ProxyError::BadRequest, "13");
        check(ProxyError::UpgradeNotAllowed, "7");
        // Not gRPC: the text reply.
        let res = ProxyError::NoHealthyUpstream.response_for(false);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn flags_print_in_envoys_order() {
        let mut f = ResponseFlags::default();
        f.insert(ResponseFlags::URX);
        f.insert(ResponseFlags::UT);
        let mut s = String::new();
        f.write(&mut s);
        assert_eq!(s, "UT,URX");
        for e in ProxyError::ALL {
            // Every cause but a refused upgrade and a missing credential (Envoy sets no
            // flag for its credential injector) maps to a flag.
            assert_eq!(
                e.response_flag().is_empty(),
                matches!(
                    e,
                    ProxyError::UpgradeNotAllowed
                        | ProxyError::CredentialUnavailable
                        | ProxyError::TokenUnavailable
                ),
                "{e:?}"
            );
        }
    }
}
