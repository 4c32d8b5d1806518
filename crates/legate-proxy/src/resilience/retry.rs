//! Retry decisions: which outcomes a `retry_policy` retries, which requests may be sent
//! twice, and how long an upstream asked us to wait. Pure functions; the request path
//! (`forward.rs`) drives the attempts, waiting `RetryBackOff::delay` between them
//! (legate-snapshot's one back-off).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use legate_snapshot::{ResetHeaderFormat, RetryPolicy};

use crate::error::ProxyError;

/// The header that makes a non-idempotent request safe to send again: the upstream is
/// expected to deduplicate on it.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// RFC 9110 idempotent methods.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a response with this status and headers is retried under `policy`. The gRPC
/// conditions read `grpc-status` from the response headers only (a trailers-only
/// response), as Envoy does: a status in trailers comes after the headers and body went
/// downstream, too late to retry.
pub(crate) fn retriable_response(policy: &RetryPolicy, status: u16, headers: &HeaderMap) -> bool {
    let on = &policy.retry_on;
    (on.any_grpc() && crate::grpc::status(headers).is_some_and(|c| on.grpc_status(c)))
        || (on.five_xx && (500..600).contains(&status))
        || (on.gateway_error && (502..=504).contains(&status))
        || (on.retriable_4xx && status == 409)
        || (on.retriable_status_codes && policy.retriable_status_codes.contains(&status))
        || (on.retriable_headers && policy.retriable_headers.iter().any(|m| m.matches(headers)))
}

/// Whether a local failure of an attempt is retried under `policy`. As in Envoy, `5xx`,
/// `gateway-error` and `reset` cover every reset, connect failure and attempt timeout;
/// overflows and a missing host are never retried.
pub(crate) fn retriable_error(policy: &RetryPolicy, e: ProxyError) -> bool {
    let on = &policy.retry_on;
    let any_reset = on.five_xx || on.gateway_error || on.reset;
    match e {
        // A failed TLS handshake is a failed connection, as in Envoy; the request was never
        // sent.
        ProxyError::ConnectFailure
        | ProxyError::ConnectTimeout
        | ProxyError::UpstreamTlsHandshake
        | ProxyError::UpstreamTlsCertificate => {
            any_reset || on.connect_failure || on.reset_before_request
        }
        ProxyError::RefusedStream => any_reset || on.refused_stream || on.reset_before_request,
        ProxyError::ResetBeforeRequest => any_reset || on.reset_before_request,
        ProxyError::UpstreamReset
        | ProxyError::ProtocolError
        | ProxyError::PerTryTimeout
        | ProxyError::PerTryIdleTimeout => any_reset,
        _ => false,
    }
}

/// Whether the request itself allows a retry: when `retriable_request_headers` is set, the
/// request must match at least one of them (as in Envoy).
pub(crate) fn request_allows_retry(policy: &RetryPolicy, headers: &HeaderMap) -> bool {
    policy.retriable_request_headers.is_empty()
        || policy
            .retriable_request_headers
            .iter()
            .any(|m| m.matches(headers))
}

/// The wait an upstream asked for in one of the policy's reset headers (e.g.
/// `Retry-After: 2`), when rate-limited back-off is configured. A value above the policy's
/// `max_interval`, or one that cannot be read, is skipped for the next header.
pub(crate) fn rate_limited_delay(policy: &RetryPolicy, headers: &HeaderMap) -> Option<Duration> {
    let rl = policy.rate_limited_back_off.as_ref()?;
    for h in &rl.reset_headers {
        let Some(value) = headers.get(&h.name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(n) = value.trim().parse::<u64>() else {
            continue;
        };
        let wait = match h.format {
            ResetHeaderFormat::Seconds => Duration::from_secs(n),
            ResetHeaderFormat::UnixTimestamp => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Duration::from_secs(n).saturating_sub(now)
            }
        };
        if wait <= rl.max_interval {
            return Some(wait);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderValue;
    use legate_snapshot::{
        HeaderMatchRule, HeaderMatcher, RateLimitedBackOff, ResetHeader, RetryBackOff, RetryOn,
        StringMatcher, StringPattern,
    };

    use super::*;

    fn policy(retry_on: RetryOn) -> RetryPolicy {
        RetryPolicy {
            retry_on,
            num_retries: 2,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            back_off: RetryBackOff {
                base: Duration::from_millis(25),
                max: Duration::from_millis(250),
            },
            rate_limited_back_off: None,
            retriable_status_codes: vec![429],
            retriable_headers: vec![HeaderMatcher {
                name: legate_snapshot::HeaderMatchName::Header(http::HeaderName::from_static(
                    "x-retry",
                )),
                rule: HeaderMatchRule::String(StringMatcher {
                    pattern: StringPattern::Exact(Arc::from("yes")),
                    ignore_case: false,
                }),
                invert: false,
                treat_missing_as_empty: false,
            }],
            retriable_request_headers: Vec::new(),
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }

    #[test]
    fn response_conditions() {
        let empty = HeaderMap::new();
        let five = policy(RetryOn {
            five_xx: true,
            ..RetryOn::default()
        });
        assert!(retriable_response(&five, 500, &empty));
        assert!(retriable_response(&five, 503, &empty));
        assert!(!retriable_response(&five, 429, &empty));
        assert!(!retriable_response(&five, 200, &empty));
        let gw = policy(RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        });
        assert!(!retriable_response(&gw, 500, &empty));
        assert!(retriable_response(&gw, 502, &empty));
        assert!(retriable_response(&gw, 504, &empty));
        let codes = policy(RetryOn {
            retriable_status_codes: true,
            retriable_4xx: true,
            ..RetryOn::default()
        });
        assert!(retriable_response(&codes, 429, &empty));
        assert!(retriable_response(&codes, 409, &empty));
        assert!(!retriable_response(&codes, 503, &empty));
        let hdr = policy(RetryOn {
            retriable_headers: true,
            ..RetryOn::default()
        });
        let mut h = HeaderMap::new();
        h.insert("x-retry", HeaderValue::from_static("yes"));
        assert!(retriable_response(&hdr, 200, &h));
        assert!(!retriable_response(&hdr, 200, &empty));
    }

    #[test]
    fn grpc_conditions_read_headers() {
        let on = RetryOn {
            grpc_unavailable: true,
            grpc_cancelled: true,
            ..RetryOn::default()
        };
        let p = policy(on);
        let with = |s: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(s));
            h
        };
        assert!(retriable_response(&p, 200, &with("14")));
        assert!(retriable_response(&p, 200, &with("1")));
        assert!(!retriable_response(&p, 200, &with("4")));
        assert!(!retriable_response(&p, 200, &with("0")));
        assert!(!retriable_response(&p, 200, &with("x")));
        assert!(!retriable_response(&p, 200, &HeaderMap::new()));
        // Every condition maps to its own code.
        for (on, code) in [
            (
                RetryOn {
                    grpc_cancelled: true,
                    ..RetryOn::default()
                },
                "1",
            ),
            (
                RetryOn {
                    grpc_deadline_exceeded: true,
                    ..RetryOn::default()
                },
                "4",
            ),
            (
                RetryOn {
                    grpc_resource_exhausted: true,
                    ..RetryOn::default()
                },
                "8",
            ),
            (
                RetryOn {
                    grpc_internal: true,
                    ..RetryOn::default()
                },
                "13",
            ),
            (
                RetryOn {
                    grpc_unavailable: true,
                    ..RetryOn::default()
                },
                "14",
            ),
        ] {
            let p = policy(on);
            assert!(retriable_response(&p, 200, &with(code)), "{code}");
            assert!(!retriable_response(&p, 200, &with("2")), "{code}");
        }
        // 5xx does not cover gRPC statuses on a 200.
        let five = policy(RetryOn {
            five_xx: true,
            ..RetryOn::default()
        });
        assert!(!retriable_response(&five, 200, &with("14")));
    }

    #[test]
    fn error_conditions() {
        let connect = policy(RetryOn {
            connect_failure: true,
            ..RetryOn::default()
        });
        assert!(retriable_error(&connect, ProxyError::ConnectFailure));
        assert!(retriable_error(&connect, ProxyError::ConnectTimeout));
        assert!(!retriable_error(&connect, ProxyError::UpstreamReset));
        assert!(!retriable_error(&connect, ProxyError::PerTryTimeout));
        let refused = policy(RetryOn {
            refused_stream: true,
            ..RetryOn::default()
        });
        assert!(retriable_error(&refused, ProxyError::RefusedStream));
        assert!(!retriable_error(&refused, ProxyError::ConnectFailure));
        let reset = policy(RetryOn {
            reset: true,
            ..RetryOn::default()
        });
        for e in [
            ProxyError::UpstreamReset,
            ProxyError::ConnectFailure,
            ProxyError::PerTryTimeout,
            ProxyError::PerTryIdleTimeout,
            ProxyError::RefusedStream,
        ] {
            assert!(retriable_error(&reset, e), "{e:?}");
        }
        for e in [
            ProxyError::OverflowMaxRequests,
            ProxyError::OverflowMaxPendingRequests,
            ProxyError::NoHealthyUpstream,
            ProxyError::UpstreamTimeout,
        ] {
            assert!(!retriable_error(&reset, e), "{e:?}");
        }
        let before = policy(RetryOn {
            reset_before_request: true,
            ..RetryOn::default()
        });
        assert!(retriable_error(&before, ProxyError::ResetBeforeRequest));
        assert!(!retriable_error(&before, ProxyError::UpstreamReset));
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn retry_after_seconds_and_timestamps() {
        let mut p = policy(RetryOn::default());
        p.rate_limited_back_off = Some(RateLimitedBackOff {
            reset_headers: vec![
                ResetHeader {
                    name: http::header::RETRY_AFTER,
                    format: ResetHeaderFormat::Seconds,
                },
                ResetHeader {
                    name: http::HeaderName::from_static("x-ratelimit-reset"),
                    format: ResetHeaderFormat::UnixTimestamp,
                },
            ],
            max_interval: Duration::from_secs(5),
        });
        let mut h = HeaderMap::new();
        assert_eq!(rate_limited_delay(&p, &h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(rate_limited_delay(&p, &h), Some(Duration::from_secs(2)));
        // Too long: skipped, the next header is tried.
        h.insert("retry-after", HeaderValue::from_static("60"));
        assert_eq!(rate_limited_delay(&p, &h), None);
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 3;
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&soon.to_string()).expect("value"),
        );
        let d = rate_limited_delay(&p, &h).expect("timestamp");
        assert!(
            d <= Duration::from_secs(3) && d >= Duration::from_secs(1),
            "{d:?}"
        );
    }
}
