//! `envoy.filters.http.local_ratelimit`: a token bucket per listener, virtual host or route.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use legate_snapshot::filter::{DescriptorAction, DescriptorEntry, LocalRateLimit, TokenBucket};
use legate_telemetry::Counter;

use super::bucket::Taken;
use super::{Bucket, Decision, ResponseHeaders, chance};
use crate::error::ProxyError;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Longest descriptor value legate keeps (a request header's, or the client address): a
/// longer value makes no descriptor, so a hostile header cannot grow a bucket table by
/// its size.
const MAX_VALUE_LEN: usize = 256;

#[derive(Debug)]
pub(super) struct RateLimiter {
    config: Arc<LocalRateLimit>,
    /// `None`: no `token_bucket`, so nothing is limited but matched descriptors.
    bucket: Option<Arc<Bucket>>,
    /// One per `config.descriptors`, in the same order.
    descriptors: Vec<DescriptorBucket>,
    status: StatusCode,
    limited: Arc<Counter>,
}

/// A configured descriptor's bucket: one, or one per distinct value of its wildcard
/// entries.
#[derive(Debug, Clone)]
pub(super) enum DescriptorBucket {
    Fixed(Arc<Bucket>),
    Dynamic(Arc<DynamicBuckets>),
}

/// The buckets of a wildcard descriptor, by the values its wildcard entries had, least
/// recently used first out beyond `max_dynamic_descriptors`. One short lock per request
/// that matches it.
#[derive(Debug)]
pub(crate) struct DynamicBuckets {
    config: TokenBucket,
    buckets: std::sync::Mutex<hashlink::LruCache<Vec<Arc<str>>, Arc<Bucket>>>,
}

impl DynamicBuckets {
    pub(super) fn new(config: TokenBucket, max: u32) -> Self {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        DynamicBuckets {
            config,
            buckets: std::sync::Mutex::new(hashlink::LruCache::new(max)),
        }
    }

    fn bucket(&self, values: Vec<Arc<str>>) -> Arc<Bucket> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(&values) {
            return b.clone();
        }
        let b = Arc::new(Bucket::new(self.config));
        map.insert(values, b.clone());
        b
    }
}

/// What a request's descriptors are made of besides its headers.
pub(crate) struct Origin {
    /// The client's address (`remote_address`).
    pub(crate) remote: std::net::IpAddr,
}

impl RateLimiter {
    pub(super) fn new(
        config: Arc<LocalRateLimit>,
        bucket: Option<Arc<Bucket>>,
        descriptors: Vec<DescriptorBucket>,
        limited: Arc<Counter>,
    ) -> Self {
        RateLimiter {
            status: StatusCode::from_u16(config.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            config,
            bucket,
            descriptors,
            limited,
        }
    }

    /// The buckets of the configured descriptors this request's descriptors match, slowest
    /// filling first (Envoy's order), without repeats.
    fn matched(&self, headers: &HeaderMap, origin: &Origin) -> Vec<Arc<Bucket>> {
        let mut out: Vec<Arc<Bucket>> = Vec::new();
        if self.descriptors.is_empty() {
            return out;
        }
        for actions in &self.config.rate_limits {
            let Some(entries) = generate(&actions.actions, headers, origin) else {
                continue;
            };
            let found = self
                .config
                .descriptors
                .iter()
                .zip(&self.descriptors)
                .find(|(d, _)| matches(&d.entries, &entries));
            let Some((d, bucket)) = found else { continue };
            let bucket = match bucket {
                DescriptorBucket::Fixed(b) => b.clone(),
                DescriptorBucket::Dynamic(dynamic) => {
                    let values = d
                        .entries
                        .iter()
                        .zip(&entries)
                        .filter(|(e, _)| e.value.is_none())
                        .map(|(_, (_, v))| Arc::from(v.as_str()))
                        .collect();
                    dynamic.bucket(values)
                }
            };
            if !out.iter().any(|b| Arc::ptr_eq(b, &bucket)) {
                out.push(bucket);
            }
        }
        out.sort_by(|a, b| a.fill_rate().total_cmp(&b.fill_rate()));
        out
    }

    /// Envoy's order: not enabled for this request → continue without taking a token;
    /// otherwise take one from each matched descriptor's bucket (slowest first), then from
    /// the default bucket (always, or only when nothing matched); the first bucket without
    /// a token refuses. Refused: answer when enforced, else mark the request and let it
    /// through.
    pub(super) fn decode(
        &self,
        headers: &mut HeaderMap,
        origin: &Origin,
        grpc: bool,
        out: &mut ResponseHeaders,
    ) -> Decision {
        if self.bucket.is_none() && self.descriptors.is_empty() {
            return Decision::Continue;
        }
        if !chance(self.config.enabled_ppm) {
            return Decision::Continue;
        }
        let matched = self.matched(headers, origin);
        let mut verdict: Option<(&Arc<Bucket>, Taken)> = None;
        for b in &matched {
            let taken = b.take();
            let refused = !taken.allowed;
            verdict = Some(match verdict {
                // The headers describe the most restrictive bucket: the first matched.
                Some((first, t)) if !refused => (first, t),
                _ => (b, taken),
            });
            if refused {
                break;
            }
        }
        let refused = verdict.is_some_and(|(_, t)| !t.allowed);
        if !refused
            && (matched.is_empty() || self.config.always_consume_default)
            && let Some(default) = &self.bucket
        {
            let taken = default.take();
            if !taken.allowed || verdict.is_none() {
                verdict = Some((default, taken));
            }
        }
        let Some((bucket, taken)) = verdict else {
            return Decision::Continue;
        };
        if self.config.x_ratelimit_headers {
            out.push(
                X_RATELIMIT_LIMIT,
                HeaderValue::from(bucket.config().max_tokens),
            );
            out.push(X_RATELIMIT_REMAINING, HeaderValue::from(taken.remaining));
            out.push(X_RATELIMIT_RESET, HeaderValue::from(reset_secs(&taken)));
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
        if self.config.retry_after_header && self.status == StatusCode::TOO_MANY_REQUESTS {
            // At least a second; a `retry-after` of `response_headers_to_add` wins (applied
            // after this).
            let secs = u64::try_from(taken.next_token.as_nanos().div_ceil(1_000_000_000))
                .unwrap_or(u64::MAX)
                .max(1);
            out.push(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
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

/// `x-ratelimit-reset`, as Envoy: 0 while a token is left, else whole seconds until the
/// next one, rounded up.
fn reset_secs(taken: &Taken) -> u64 {
    if taken.remaining > 0 {
        0
    } else {
        u64::try_from(taken.next_token.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
    }
}

/// The descriptor one `rate_limits` entry makes for this request: its actions' entries in
/// order, or `None` when an action has nothing to say (a header absent without
/// `skip_if_absent`, a value too long).
fn generate(
    actions: &[DescriptorAction],
    headers: &HeaderMap,
    origin: &Origin,
) -> Option<Vec<(Arc<str>, String)>> {
    let mut entries = Vec::with_capacity(actions.len());
    for a in actions {
        match a {
            DescriptorAction::RequestHeader {
                header,
                key,
                skip_if_absent,
            } => match headers.get(&**header).and_then(|v| v.to_str().ok()) {
                Some(v) if v.len() <= MAX_VALUE_LEN => entries.push((key.clone(), v.to_owned())),
                Some(_) => return None,
                None if *skip_if_absent => {}
                None => return None,
            },
            DescriptorAction::RemoteAddress => {
                entries.push((Arc::from("remote_address"), origin.remote.to_string()));
            }
            DescriptorAction::GenericKey { key, value } => {
                entries.push((key.clone(), value.to_string()));
            }
        }
    }
    (!entries.is_empty()).then_some(entries)
}

/// Whether a request's descriptor matches a configured one: the same keys in the same
/// order, and the same value wherever the configured entry has one.
fn matches(config: &[DescriptorEntry], request: &[(Arc<str>, String)]) -> bool {
    config.len() == request.len()
        && config.iter().zip(request).all(|(c, (k, v))| {
            c.key == *k && c.value.as_deref().is_none_or(|want| want == v.as_str())
        })
}
