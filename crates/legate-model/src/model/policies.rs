//! Resilience policies as written: retries on routes; connection limits, outlier detection,
//! active health checks, the panic threshold and the classic breaker on clusters.
//!
//! Each maps onto one Envoy message (the classic breaker, which xDS has no field for, onto
//! cluster metadata that legate reads), with Envoy's names in snake case where Envoy has a
//! name and Envoy's defaults where a field is left out. Left-out fields are `None`, so a
//! policy serializes back to what its author wrote.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{HeaderMatch, UpstreamProtocol};

/// The retry conditions legate implements, by their names in Envoy's `retry_on`.
pub const RETRY_CONDITIONS: [&str; 14] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
];

/// Back-off base interval when `backoff.base` is not set (Envoy's default).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// The header `retry_after: true` waits on.
pub const DEFAULT_RETRY_AFTER_HEADER: &str = "retry-after";
/// Health check interval when `health_check.interval` is not set.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Health check timeout when `health_check.timeout` is not set.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed checks in a row that make a host unhealthy, when not set.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Passed checks in a row that make a host healthy again, when not set.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
// The classic breaker's defaults, for the fields left out of `breaker`; the same as
// legate's when it reads cluster metadata without them.
/// [`Breaker::failure_ratio`] when unset.
pub const DEFAULT_BREAKER_FAILURE_RATIO: f64 = 0.5;
/// [`Breaker::window`] when unset.
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
/// [`Breaker::minimum_requests`] when unset.
pub const DEFAULT_BREAKER_MINIMUM_REQUESTS: u32 = 20;
/// [`Breaker::open_timeout`] when unset.
pub const DEFAULT_BREAKER_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// [`Breaker::half_open_max_requests`] when unset.
pub const DEFAULT_BREAKER_HALF_OPEN_MAX_REQUESTS: u32 = 3;

/// When and how a forwarded request is tried again (Envoy's `retry_policy`, with the hedge
/// policy, body buffer limit and idempotency opt-in that go with it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// At least one of [`RETRY_CONDITIONS`], Envoy's `retry_on`.
    pub on: Vec<String>,
    /// Retries after the first try (Envoy's `num_retries`); at least 1, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Deadline of each try, until its response is received in full. Envoy's default is
    /// none: only the route's `timeout` applies.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Longest silence from the upstream within one try.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_idle_timeout: Option<Duration>,
    /// Exponential back-off between tries with full jitter: the wait before retry n is drawn
    /// uniformly from `[0, min(base × 2^n, max)]`. Envoy's (25ms, up to 250ms) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Wait as long as the upstream asks (`Retry-After: <seconds>`) instead of backing off:
    /// `true` for the `retry-after` header, or the headers to read and the longest wait.
    #[serde(
        default,
        deserialize_with = "retry_after::deserialize",
        serialize_with = "retry_after::serialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<RetryAfter>,
    /// Statuses retried with `retriable-status-codes` (Envoy's `retriable_status_codes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u32>,
    /// Responses retried with `retriable-headers`: any rule matching the response headers
    /// (Envoy's `retriable_headers`; the rules of a route's `match.headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<HeaderMatch>,
    /// Retry on another host than the ones already tried (Envoy's `previous_hosts` retry
    /// host predicate).
    #[serde(default, skip_serializing_if = "is_false")]
    pub previous_hosts: bool,
    /// With `previous_hosts`: how many times a host is picked again to find one not yet
    /// tried (Envoy's `host_selection_retry_max_attempts`, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_attempts: Option<u32>,
    /// When a try's `per_try_timeout` expires, send another try without cancelling it and
    /// take the first response (Envoy's `hedge_policy.hedge_on_per_try_timeout`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub hedge_on_per_try_timeout: bool,
    /// Retry and hedge non-idempotent requests (POST, PATCH) that may have reached the
    /// upstream. Off by default: legate retries those only when they provably were not
    /// sent, or carry an `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "is_false")]
    pub non_idempotent: bool,
    /// Largest request body, in bytes, kept to be sent again (Envoy's
    /// `request_body_buffer_limit`; legate's default 1 MiB). A longer body is streamed and
    /// its request not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_limit: Option<u64>,
}

impl Retries {
    /// Whether `on` names `condition`.
    pub fn retries_on(&self, condition: &str) -> bool {
        self.on.iter().any(|c| c == condition)
    }
}

/// Envoy's `retry_back_off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// [`DEFAULT_BACKOFF_BASE`] when unset; greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub base: Option<Duration>,
    /// At least `base`; Envoy's default is 10 × base.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max: Option<Duration>,
}

/// Envoy's `rate_limited_retry_back_off`, with every header read as whole seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryAfter {
    /// Response headers holding the seconds to wait, the first present wins;
    /// [`DEFAULT_RETRY_AFTER_HEADER`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// A longer wait in a header is not honoured (the back-off applies); Envoy's default
    /// is 300s.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_interval: Option<Duration>,
}

impl RetryAfter {
    /// The headers, default applied.
    pub fn header_names(&self) -> Vec<&str> {
        match &self.headers {
            Some(h) => h.iter().map(String::as_str).collect(),
            None => vec![DEFAULT_RETRY_AFTER_HEADER],
        }
    }
}

/// `retry_after: true | false | {headers, max_interval}`.
mod retry_after {
    use super::*;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<RetryAfter>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<RetryAfter>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a mapping with `headers` and `max_interval`")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(v.then(RetryAfter::default))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RetryAfter::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
        d.deserialize_any(V)
    }

    // serde's `serialize_with` passes the field by reference; `skip_serializing_if` leaves
    // `None` out.
    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(
        v: &Option<RetryAfter>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(r) if *r == RetryAfter::default() => s.serialize_bool(true),
            Some(r) => r.serialize(s),
            None => s.serialize_bool(false),
        }
    }
}

/// Envoy's `circuit_breakers` (one `thresholds` entry, DEFAULT priority): limits on what a
/// cluster has open at once, across its hosts. A request over a limit is answered 503 at
/// once. Envoy's default for each limit when unset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Upstream connections (default 1024); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight (default 1024); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight (default 3); not with `retry_budget`, which replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// The retry budget of a cluster whose policies limit retries neither way (no
/// `circuit_breakers.retry_budget`, no `circuit_breakers.max_retries`): retries in flight at
/// most 20 % of the requests in flight, and 3 whatever the load, as Linkerd and Envoy's
/// own budget defaults. It scales with the load, unlike a fixed `max_retries`: a busy
/// cluster keeps retrying its occasional failures, while an outage cannot make the fleet
/// send much more than 1.2 attempts per request. Resources written by hand (xDS from any
/// server, a bootstrap) keep Envoy's semantics: `max_retries` 3 when unset.
pub const DEFAULT_RETRY_BUDGET: RetryBudget = RetryBudget {
    percent: Some(20.0),
    min_concurrency: Some(3),
};

/// Retries in flight limited to a share of the requests in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// 0 to 100 (default 20), Envoy's `budget_percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries always allowed in flight, whatever the share (default 3), Envoy's
    /// `min_retry_concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_concurrency: Option<u32>,
}

/// Envoy's `outlier_detection`: eject hosts that fail, for a while. Every field is Envoy's,
/// with Envoy's default when unset; percentages are whole percent 0-100. `{}` enables it with
/// Envoy's defaults (5 consecutive 5xx eject a host for 30s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx responses in a row that eject a host (default 5); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// 502, 503 or 504 responses in a row (default 5); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    /// With `split_external_local_origin_errors`: connect failures, resets and timeouts in a
    /// row (default 5); at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failure: Option<u32>,
    /// Chance, in percent, that a detected outlier is ejected (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_5xx: Option<u32>,
    /// Default 0: detected but not ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_local_origin_failure: Option<u32>,
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_success_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_local_origin_success_rate: Option<u32>,
    /// Default 0: failure-percentage ejection is off until this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_failure_percentage: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_failure_percentage_local_origin: Option<u32>,
    /// How often success rate and failure percentage are computed and ejections expire
    /// (default 10s); greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// An ejection lasts this times the number of times the host was ejected (default 30s);
    /// greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<Duration>,
    /// The longest ejection (default 300s, or `base_ejection_time` if longer); not less than
    /// `base_ejection_time`.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_time: Option<Duration>,
    /// Up to this much is added at random to each ejection (default 0s).
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_time_jitter: Option<Duration>,
    /// Most of the cluster's hosts ejected at once, in percent (default 10); one host may
    /// always be ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Hosts with enough requests needed to compute success rates (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_minimum_hosts: Option<u32>,
    /// Requests a host needs in an interval to be counted (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_request_volume: Option<u32>,
    /// A host below mean − factor/1000 × stdev is an outlier (default 1900, i.e. 1.9), as
    /// Envoy's integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_stdev_factor: Option<u32>,
    /// A host whose failures reach this percent of its requests is an outlier (default 85).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_threshold: Option<u32>,
    /// Hosts needed to apply failure-percentage ejection (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_minimum_hosts: Option<u32>,
    /// Requests a host needs in an interval to be counted (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_request_volume: Option<u32>,
    /// Count local-origin failures (connect failure, reset, timeout) apart from the
    /// upstream's 5xx (default false: they count as 5xx too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// A passing active health check returns an ejected host (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_active_health_check_uneject_host: Option<bool>,
}

/// Envoy's `health_checks` (one entry): probe every host, and stop sending requests to those
/// that fail. Exactly one of `http` and `tcp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// [`DEFAULT_HEALTH_CHECK_INTERVAL`] when unset; greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// A probe not answered in time fails; [`DEFAULT_HEALTH_CHECK_TIMEOUT`] when unset;
    /// greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Up to this much added at random to each interval (Envoy's `interval_jitter`).
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// The first probe of each host waits a random time up to this.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_jitter: Option<Duration>,
    /// Passed probes in a row that make a host healthy again; [`DEFAULT_HEALTHY_THRESHOLD`]
    /// when unset; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failed probes in a row that make a host unhealthy; [`DEFAULT_UNHEALTHY_THRESHOLD`]
    /// when unset; at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// A `GET` of `path`, passed by an expected status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    /// The Host sent; the cluster's name when unset (Envoy's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that pass, each `200` or `"200-299"` (inclusive); only 200 when empty
    /// (Envoy's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<StatusRange>,
    /// HTTP version of the probe; the cluster's `protocol` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
}

/// A TCP connect: the host passes when it accepts the connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Statuses `first` to `last` inclusive, written `200` or `"200-299"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    pub first: u32,
    pub last: u32,
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u32(self.first)
        } else {
            s.serialize_str(&format!("{}-{}", self.first, self.last))
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status like 200, or a range like \"200-299\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let code = u32::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))?;
                Ok(StatusRange {
                    first: code,
                    last: code,
                })
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))?;
                self.visit_u64(v)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                let bad = || E::invalid_value(de::Unexpected::Str(v), &self);
                let number = |s: &str| s.trim().parse::<u32>().map_err(|_| bad());
                match v.split_once('-') {
                    Some((a, b)) => Ok(StatusRange {
                        first: number(a)?,
                        last: number(b)?,
                    }),
                    None => {
                        let code = number(v)?;
                        Ok(StatusRange {
                            first: code,
                            last: code,
                        })
                    }
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The classic circuit breaker, per cluster: closed until, over the last `window`, at least
/// `minimum_requests` requests finished and `failure_ratio` of them failed (5xx, connect
/// failure, reset, timeout); then open, answering 503 at once, for `open_timeout`; then
/// half-open, letting `half_open_max_requests` requests through: all succeed and it closes,
/// any fails and it opens again. Every field has a default (the `DEFAULT_BREAKER_*`
/// constants), so `breaker: {}` enables it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// 0.001 to 1 (a ratio is kept in thousandths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    /// Greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_requests: Option<u32>,
    /// Greater than 0.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub open_timeout: Option<Duration>,
    /// At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_max_requests: Option<u32>,
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

/// Faults injected on purpose, for chaos testing: a delay and an abort, each for a
/// percentage of requests (the delay first). Compiled to Envoy's `envoy.filters.http.fault`,
/// configured per route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// No new fault while this many are in progress; no limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
}

/// Delay `percent` of requests by `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(with = "crate::units")]
    pub duration: Duration,
    /// 0 to 100; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// Answer `percent` of requests with `status` instead of forwarding them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// 200 to 599.
    pub status: u16,
    /// 0 to 100; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// A local rate limit: a token bucket that refills `requests` tokens every `per` and holds at
/// most `burst` (default: `requests`). A request takes one token; without one it is answered
/// 429 by the proxy with `x-legate-error: rate-limited`, and every answer carries
/// `x-ratelimit-limit`/`-remaining`/`-reset`. Compiled to Envoy's
/// `envoy.filters.http.local_ratelimit`, configured per route; each route has its own bucket
/// on each proxy (a service's canary rules each have one too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// At least 1.
    pub requests: u32,
    /// At least 50 ms (Envoy's shortest fill interval).
    #[serde(with = "crate::units")]
    pub per: Duration,
    /// At least 1; `requests` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// A bucket of this size per value of this request header (an API key, a user id)
    /// instead of one for all; requests without the header share one. Compiles to a
    /// wildcard descriptor with a `request_headers` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_header: Option<String>,
    /// With `per_header`: values kept at once, least recently used out
    /// ([`DEFAULT_RATE_LIMIT_MAX_KEYS`] when unset; 1 to 100000). Envoy's
    /// `max_dynamic_descriptors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
}

/// [`RateLimit::max_keys`] when unset.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: u32 = 1000;

impl RateLimit {
    /// The bucket's size, default applied.
    pub fn max_tokens(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

/// What the requests of a route or service are hashed on, so that a `ring_hash` or `maglev`
/// cluster sends the same key to the same endpoint (Envoy's route `hash_policy`).
///
/// ```yaml
/// hash: {header: x-user}
/// hash: {cookie: {name: sticky, ttl: 1h, path: /}}
/// hash: source_ip
/// hash: {query: user}
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hash {
    /// A request header's value (all of its values when repeated).
    Header(String),
    /// A cookie's value; with `ttl`, a client without the cookie is given one.
    Cookie(HashCookie),
    /// The client's IP address.
    SourceIp,
    /// A query parameter's (first, raw) value.
    Query(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    /// When set, a request without the cookie gets one (`Set-Cookie` with this `Max-Age`;
    /// `0s` makes a session cookie). Unset: such a request is not hashed.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// The generated cookie's `Path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The keys of a [`Hash`] written as a map.
const HASH_KEYS: &[&str] = &["header", "cookie", "source_ip", "query"];

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if let Hash::SourceIp = self {
            return s.serialize_str("source_ip");
        }
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Hash::Header(h) => m.serialize_entry("header", h)?,
            Hash::Cookie(c) => m.serialize_entry("cookie", c)?,
            Hash::Query(q) => m.serialize_entry("query", q)?,
            Hash::SourceIp => {}
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hash;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`source_ip` or one of {header: NAME}, {cookie: {name: NAME}}, {query: NAME}",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Hash, E> {
                match v {
                    "source_ip" => Ok(Hash::SourceIp),
                    other => Err(E::unknown_variant(other, &["source_ip"])),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hash, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                let hash = match key.as_str() {
                    "header" => Hash::Header(map.next_value()?),
                    "cookie" => Hash::Cookie(map.next_value()?),
                    "query" => Hash::Query(map.next_value()?),
                    "source_ip" => {
                        if !map.next_value::<bool>()? {
                            return Err(de::Error::custom(
                                "`source_ip: false` hashes nothing; leave `hash` out",
                            ));
                        }
                        Hash::SourceIp
                    }
                    other => return Err(de::Error::unknown_variant(other, HASH_KEYS)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a hash has one key, found `{key}` and `{extra}`"
                    )));
                }
                Ok(hash)
            }
        }
        d.deserialize_any(V)
    }
}

/// A credential the proxy adds to every request of a route, which the application never
/// sees: a `secrets` entry with `value` put in a header (an API key, a fixed bearer token),
/// or an OAuth2 access token obtained with client credentials (RFC 6749 §4.4) and renewed
/// before it expires. Compiled to Envoy's `envoy.filters.http.credential_injector` (one per
/// distinct credential on the listener, disabled by the routes that do not use it) and an
/// SDS generic secret. A request that matches no route passes every credential filter of
/// the listener before its 404 (it is never forwarded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The header that carries a `secret` (default `authorization`); an OAuth2 token always
    /// goes in `authorization` as `Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Put before the secret's value (e.g. `"Bearer "`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A `secrets` entry with `value`: the credential itself. One of `secret` or `oauth2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2>,
    /// Replace the header when the application sent one (default true); false keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// Send the request without the credential when it is not available, instead of
    /// answering 401 (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_without: Option<bool>,
}

/// OAuth2 client credentials: a token from `token_url`, reached through `cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    /// `http://host[:port]/path` or `https://...`: its host is the token request's `Host`,
    /// its path where it is posted. TLS follows the cluster, as in Envoy.
    pub token_url: String,
    /// The cluster (a `clusters` entry or a service's version cluster) that reaches the
    /// token endpoint.
    pub cluster: String,
    pub client_id: String,
    /// A `secrets` entry with `value`: the client secret.
    pub client_secret: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Bound of one token request; default 5s.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Wait between failed token requests; default 2s (Envoy's), at least 1s.
    #[serde(
        default,
        with = "crate::units::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_interval: Option<Duration>,
}
