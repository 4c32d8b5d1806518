//! `envoy.filters.http.local_ratelimit`: a token bucket per listener, virtual host or route.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use legate_snapshot::filter::LocalRateLimit;
use legate_telemetry::Counter;

use super::{Bucket, Decision, ResponseHeaders, chance};
use crate::error::ProxyError;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

#[derive(Debug)]
pub(super) struct RateLimiter {
    config: Arc<LocalRateLimit>,
    /// `None`: a listener-level filter without a bucket, which limits nothing itself.
    bucket: Option<Arc<Bucket>>,
    status: StatusCode,
    limited: Arc<Counter>,
}

impl RateLimiter {
    pub(super) fn new(
        config: Arc<LocalRateLimit>,
        bucket: Option<Arc<Bucket>>,
        limited: Arc<Counter>,
    ) -> Self {
        RateLimiter {
            status: StatusCode::from_u16(config.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            config,
            bucket,
            limited,
        }
    }

    /// Envoy's order: not enabled for this request → continue without taking a token;
    /// otherwise take one; without one, answer when enforced, else mark the request and
    /// let it through.
    pub(super) fn decode(
        &self,
        headers: &mut HeaderMap,
        grpc: bool,
        out: &mut ResponseHeaders,
    ) -> Decision {
        let Some(bucket) = &self.bucket else {
            return Decision::Continue;
        };
        if !chance(self.config.enabled_ppm) {
            return Decision::Continue;
        }
        let taken = bucket.take();
        if self.config.x_ratelimit_headers {
            out.push(
                X_RATELIMIT_LIMIT,
                HeaderValue::from(bucket.config().max_tokens),
            );
            out.push(X_RATELIMIT_REMAINING, HeaderValue::from(taken.remaining));
            // As Envoy: 0 while a token is left, else whole seconds until the next one,
            // rounded up.
            let secs = if taken.remaining > 0 {
                0
            } else {
                u64::try_from(taken.next_token.as_nanos().div_ceil(1_000_000_000))
                    .unwrap_or(u64::MAX)
            };
            out.push(X_RATELIMIT_RESET, HeaderValue::from(secs));
        }
        if taken.allowed {
            return Decision::Continue;
        }
        if !chance(self.config.enforced_ppm) {
            crate::headers::apply(
                headers,
                &[],
                &self.config.request_headers_to_add_when_not_enforced,
            );
            return Decision::Continue;
        }
        self.limited.inc();
        // Envoy's mapping of the status (429 reads UNAVAILABLE), unless told to say
        // RESOURCE_EXHAUSTED.
        let grpc = grpc.then(|| {
            if self.config.grpc_resource_exhausted {
                crate::grpc::RESOURCE_EXHAUSTED
            } else {
                crate::grpc::status_for_http(self.status)
            }
        });
        super::local_reply(
            ProxyError::RateLimited,
            self.status,
            grpc,
            &self.config.response_headers_to_add,
            out,
        )
    }
}
