//! Checks on resilience policies: names, ranges, and settings that only mean something
//! together (`status_codes` without `retriable-status-codes` would be silently ignored).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use super::{Checker, check_value};
use crate::{
    Breaker, CircuitBreakers, DEFAULT_BACKOFF_BASE, Fault, Hash, HealthCheck, OutlierDetection,
    RETRY_CONDITIONS, RateLimit, Retries,
};

/// Envoy retry conditions legate does not implement, refused by name rather than as typos.
const UNSUPPORTED_RETRY_CONDITIONS: [&str; 2] = ["envoy-ratelimited", "http3-post-connect-failure"];

/// Envoy's shortest `fill_interval` for a local rate limit.
const MIN_RATE_LIMIT_PER: Duration = Duration::from_millis(50);

/// Envoy's `base_ejection_time` when unset.
const ENVOY_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);

/// The cluster-level policies of a low-level cluster or of a service.
pub(super) struct ClusterPolicies<'a> {
    pub(super) circuit_breakers: Option<&'a CircuitBreakers>,
    pub(super) outlier_detection: Option<&'a OutlierDetection>,
    pub(super) health_check: Option<&'a HealthCheck>,
    pub(super) panic_threshold: Option<f64>,
    pub(super) breaker: Option<&'a Breaker>,
}

/// The last field of a path, to name it in a message.
fn field(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl Checker<'_> {
    /// A duration that must not be zero (nor longer than a protobuf Duration holds).
    fn positive(&mut self, path: &str, d: Option<Duration>) {
        match d {
            Some(Duration::ZERO) => {
                let message = format!("`{}` must be greater than 0s", field(path));
                self.report(path, message);
            }
            d => self.duration(path, d),
        }
    }

    fn at_least_one(&mut self, path: &str, n: Option<u32>) {
        if n == Some(0) {
            let message = format!("`{}` must be at least 1", field(path));
            self.report(path, message);
        }
    }

    fn percent(&mut self, path: &str, n: Option<u32>) {
        if let Some(n) = n
            && n > 100
        {
            let message = format!("`{}` is a percentage, 0 to 100; found {n}", field(path));
            self.report(path, message);
        }
    }

    fn percent_f64(&mut self, path: &str, v: Option<f64>) {
        if let Some(v) = v
            && !(0.0..=100.0).contains(&v)
        {
            let message = format!("`{}` is a percentage, 0 to 100; found {v}", field(path));
            self.report(path, message);
        }
    }

    pub(super) fn retries(&mut self, path: &str, r: &Retries) {
        if r.on.is_empty() {
            self.report(
                format!("{path}.on"),
                format!(
                    "name at least one retry condition: {}",
                    RETRY_CONDITIONS.map(|c| format!("`{c}`")).join(", ")
                ),
            );
        }
        let mut seen = HashSet::new();
        for (i, c) in r.on.iter().enumerate() {
            let p = format!("{path}.on[{i}]");
            if UNSUPPORTED_RETRY_CONDITIONS.contains(&c.as_str()) {
                self.report(
                    p,
                    format!("retry condition `{c}` is not supported by legate"),
                );
            } else if !RETRY_CONDITIONS.contains(&c.as_str()) {
                self.report(
                    p,
                    format!(
                        "unknown retry condition `{c}`, expected one of {}",
                        RETRY_CONDITIONS.map(|c| format!("`{c}`")).join(", ")
                    ),
                );
            } else if !seen.insert(c) {
                self.report(p, format!("retry condition `{c}` is listed twice"));
            } else if c == "retriable-status-codes" && r.status_codes.is_empty() {
                self.report(p, "`retriable-status-codes` needs `status_codes`");
            } else if c == "retriable-headers" && r.response_headers.is_empty() {
                self.report(p, "`retriable-headers` needs `response_headers`");
            }
        }
        self.at_least_one(&format!("{path}.attempts"), r.attempts);
        self.positive(&format!("{path}.per_try_timeout"), r.per_try_timeout);
        self.positive(
            &format!("{path}.per_try_idle_timeout"),
            r.per_try_idle_timeout,
        );
        if let Some(b) = &r.backoff {
            self.positive(&format!("{path}.backoff.base"), b.base);
            self.positive(&format!("{path}.backoff.max"), b.max);
            let base = b.base.unwrap_or(DEFAULT_BACKOFF_BASE);
            if let Some(max) = b.max
                && !max.is_zero()
                && max < base
            {
                let default = if b.base.is_none() {
                    ", the default"
                } else {
                    ""
                };
                self.report(
                    format!("{path}.backoff.max"),
                    format!("`max` ({max:?}) is less than `base` ({base:?}{default})"),
                );
            }
        }
        if let Some(ra) = &r.retry_after {
            let hpath = format!("{path}.retry_after.headers");
            if ra.headers.as_ref().is_some_and(Vec::is_empty) {
                self.report(
                    &hpath,
                    "name at least one header (or leave `headers` out for `retry-after`)",
                );
            }
            for (i, h) in ra.headers.iter().flatten().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    self.report(
                        format!("{hpath}[{i}]"),
                        format!("`{h}` is not a valid header name"),
                    );
                }
            }
            self.positive(&format!("{path}.retry_after.max_interval"), ra.max_interval);
        }
        for (i, &code) in r.status_codes.iter().enumerate() {
            if !(100..=599).contains(&code) {
                self.report(
                    format!("{path}.status_codes[{i}]"),
                    format!("status {code} is out of range 100-599"),
                );
            }
        }
        if !r.status_codes.is_empty() && !r.retries_on("retriable-status-codes") {
            self.report(
                format!("{path}.status_codes"),
                "`status_codes` are retried only with `retriable-status-codes` in `on`",
            );
        }
        for (i, h) in r.response_headers.iter().enumerate() {
            self.header_match(&format!("{path}.response_headers[{i}]"), h);
        }
        if !r.response_headers.is_empty() && !r.retries_on("retriable-headers") {
            self.report(
                format!("{path}.response_headers"),
                "`response_headers` are retried only with `retriable-headers` in `on`",
            );
        }
        if r.host_selection_attempts.is_some() && !r.previous_hosts {
            self.report(
                format!("{path}.host_selection_attempts"),
                "`host_selection_attempts` applies only with `previous_hosts: true`",
            );
        }
        self.at_least_one(
            &format!("{path}.host_selection_attempts"),
            r.host_selection_attempts,
        );
        let max_buffer = legate_snapshot::MAX_RETRY_BUFFER_LIMIT;
        if let Some(limit) = r.buffer_limit
            && limit > max_buffer
        {
            self.report(
                format!("{path}.buffer_limit"),
                format!(
                    "{limit} bytes is above legate's maximum of {max_buffer} (64 MiB) for one \
                     request's retry copy"
                ),
            );
        }
        if r.hedge_on_per_try_timeout && r.per_try_timeout.is_none() {
            self.report(
                format!("{path}.hedge_on_per_try_timeout"),
                "hedging on per-try timeout needs `per_try_timeout`",
            );
        }
    }

    /// The cluster policies, as fields of `path`.
    pub(super) fn cluster_policies(&mut self, path: &str, p: &ClusterPolicies<'_>) {
        if let Some(cb) = p.circuit_breakers {
            self.circuit_breakers(&format!("{path}.circuit_breakers"), cb);
        }
        if let Some(o) = p.outlier_detection {
            self.outlier_detection(&format!("{path}.outlier_detection"), o);
        }
        if let Some(h) = p.health_check {
            self.health_check(&format!("{path}.health_check"), h);
        }
        self.percent_f64(&format!("{path}.panic_threshold"), p.panic_threshold);
        if let Some(b) = p.breaker {
            self.breaker(&format!("{path}.breaker"), b);
        }
    }

    fn circuit_breakers(&mut self, path: &str, cb: &CircuitBreakers) {
        for (name, value) in [
            ("max_connections", cb.max_connections),
            ("max_requests", cb.max_requests),
        ] {
            if value == Some(0) {
                self.report(
                    format!("{path}.{name}"),
                    format!("`{name}` must be at least 1 (0 would refuse every request)"),
                );
            }
        }
        if let Some(b) = &cb.retry_budget {
            self.percent_f64(&format!("{path}.retry_budget.percent"), b.percent);
            if cb.max_retries.is_some() {
                self.report(
                    format!("{path}.max_retries"),
                    "`max_retries` does not apply with `retry_budget`, which replaces it; set \
                     one of the two",
                );
            }
        }
    }

    fn outlier_detection(&mut self, path: &str, o: &OutlierDetection) {
        for (name, value) in [
            ("consecutive_5xx", o.consecutive_5xx),
            ("consecutive_gateway_failure", o.consecutive_gateway_failure),
            (
                "consecutive_local_origin_failure",
                o.consecutive_local_origin_failure,
            ),
        ] {
            self.at_least_one(&format!("{path}.{name}"), value);
        }
        for (name, value) in [
            ("enforcing_consecutive_5xx", o.enforcing_consecutive_5xx),
            (
                "enforcing_consecutive_gateway_failure",
                o.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                o.enforcing_consecutive_local_origin_failure,
            ),
            ("enforcing_success_rate", o.enforcing_success_rate),
            (
                "enforcing_local_origin_success_rate",
                o.enforcing_local_origin_success_rate,
            ),
            (
                "enforcing_failure_percentage",
                o.enforcing_failure_percentage,
            ),
            (
                "enforcing_failure_percentage_local_origin",
                o.enforcing_failure_percentage_local_origin,
            ),
            ("max_ejection_percent", o.max_ejection_percent),
            (
                "failure_percentage_threshold",
                o.failure_percentage_threshold,
            ),
        ] {
            self.percent(&format!("{path}.{name}"), value);
        }
        self.positive(&format!("{path}.interval"), o.interval);
        self.positive(&format!("{path}.base_ejection_time"), o.base_ejection_time);
        self.positive(&format!("{path}.max_ejection_time"), o.max_ejection_time);
        self.duration(
            &format!("{path}.max_ejection_time_jitter"),
            o.max_ejection_time_jitter,
        );
        let base = o.base_ejection_time.unwrap_or(ENVOY_BASE_EJECTION_TIME);
        if let Some(max) = o.max_ejection_time
            && !max.is_zero()
            && max < base
        {
            let default = if o.base_ejection_time.is_none() {
                ", the default"
            } else {
                ""
            };
            self.report(
                format!("{path}.max_ejection_time"),
                format!(
                    "`max_ejection_time` ({max:?}) is less than `base_ejection_time` \
                     ({base:?}{default})"
                ),
            );
        }
        // Envoy reads these only when local-origin errors are counted apart.
        if o.split_external_local_origin_errors != Some(true) {
            for (name, set) in [
                (
                    "consecutive_local_origin_failure",
                    o.consecutive_local_origin_failure.is_some(),
                ),
                (
                    "enforcing_consecutive_local_origin_failure",
                    o.enforcing_consecutive_local_origin_failure.is_some(),
                ),
                (
                    "enforcing_local_origin_success_rate",
                    o.enforcing_local_origin_success_rate.is_some(),
                ),
                (
                    "enforcing_failure_percentage_local_origin",
                    o.enforcing_failure_percentage_local_origin.is_some(),
                ),
            ] {
                if set {
                    self.report(
                        format!("{path}.{name}"),
                        format!(
                            "`{name}` applies only with `split_external_local_origin_errors: \
                             true`"
                        ),
                    );
                }
            }
        }
    }

    fn health_check(&mut self, path: &str, h: &HealthCheck) {
        match (&h.http, &h.tcp) {
            (None, None) => self.report(path, "a health check needs one of `http` and `tcp`"),
            (Some(_), Some(_)) => self.report(
                path,
                "a health check takes one of `http` and `tcp`, found both",
            ),
            _ => {}
        }
        if let Some(http) = &h.http {
            let p = format!("{path}.http.path");
            if !http.path.starts_with('/') {
                self.report(p, format!("`{}` does not start with `/`", http.path));
            } else if http::uri::PathAndQuery::from_str(&http.path).is_err() {
                self.report(p, format!("`{}` is not a valid path", http.path));
            }
            if let Some(host) = &http.host {
                let p = format!("{path}.http.host");
                if host.is_empty() {
                    self.report(p, "host is empty (leave it out for the cluster's name)");
                } else if let Err(m) = check_value(host) {
                    self.report(p, m);
                }
            }
            for (i, r) in http.expected_statuses.iter().enumerate() {
                let p = format!("{path}.http.expected_statuses[{i}]");
                if r.first > r.last {
                    self.report(
                        p,
                        format!(
                            "range {}-{} is empty (the first status is greater than the last)",
                            r.first, r.last
                        ),
                    );
                } else if !(100..=599).contains(&r.first) || !(100..=599).contains(&r.last) {
                    let written = if r.first == r.last {
                        format!("status {}", r.first)
                    } else {
                        format!("range {}-{}", r.first, r.last)
                    };
                    self.report(p, format!("{written} is out of range 100-599"));
                }
            }
        }
        self.positive(&format!("{path}.interval"), h.interval);
        self.positive(&format!("{path}.timeout"), h.timeout);
        self.duration(&format!("{path}.jitter"), h.jitter);
        self.duration(&format!("{path}.initial_jitter"), h.initial_jitter);
        self.at_least_one(&format!("{path}.healthy_threshold"), h.healthy_threshold);
        self.at_least_one(
            &format!("{path}.unhealthy_threshold"),
            h.unhealthy_threshold,
        );
    }

    /// A rate limit: Envoy refuses a bucket refilled more often than every 50 ms, or with
    /// no tokens.
    pub(super) fn rate_limit(&mut self, path: &str, rl: &RateLimit) {
        self.at_least_one(&format!("{path}.requests"), Some(rl.requests));
        self.at_least_one(&format!("{path}.burst"), rl.burst);
        if rl.per < MIN_RATE_LIMIT_PER {
            self.report(
                format!("{path}.per"),
                format!(
                    "`per` must be at least 50ms (Envoy's shortest refill interval); found {}",
                    crate::units::format_duration(rl.per)
                ),
            );
        } else {
            self.duration(&format!("{path}.per"), Some(rl.per));
        }
        if let Some(h) = &rl.per_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            self.report(
                format!("{path}.per_header"),
                format!("`per_header` must be a header name; found {h:?}"),
            );
        }
        if let Some(n) = rl.max_keys {
            if rl.per_header.is_none() {
                self.report(
                    format!("{path}.max_keys"),
                    "`max_keys` counts `per_header` values; set `per_header` too",
                );
            } else if !(1..=100_000).contains(&n) {
                self.report(
                    format!("{path}.max_keys"),
                    format!("`max_keys` must be from 1 to 100000; found {n}"),
                );
            }
        }
    }

    /// A hash key: a valid header name, a cookie name that is an RFC 6265 token and a path
    /// that fits in `Set-Cookie`, a query parameter name.
    pub(super) fn hash(&mut self, path: &str, h: &Hash) {
        match h {
            Hash::Header(name) => {
                if name.starts_with(':') || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.report(
                        format!("{path}.header"),
                        format!("`{name}` is not a valid header name"),
                    );
                }
            }
            Hash::Cookie(c) => {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
                };
                if !token(&c.name) {
                    self.report(
                        format!("{path}.cookie.name"),
                        format!(
                            "`{}` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                            c.name
                        ),
                    );
                }
                self.duration(&format!("{path}.cookie.ttl"), c.ttl);
                if let Some(p) = &c.path
                    && (p.contains(';') || check_value(p).is_err())
                {
                    self.report(
                        format!("{path}.cookie.path"),
                        format!("{p:?} cannot be a cookie path (`;` or control characters)"),
                    );
                }
            }
            Hash::SourceIp => {}
            Hash::Query(name) => {
                if name.is_empty() || name.contains(['&', '=', '#']) {
                    self.report(
                        format!("{path}.query"),
                        format!("`{name}` is not a query parameter name"),
                    );
                }
            }
        }
    }

    /// Faults: a status Envoy can send, percentages from 0 to 100, at least one fault.
    pub(super) fn fault(&mut self, path: &str, f: &Fault) {
        if f.delay.is_none() && f.abort.is_none() {
            self.report(path, "a fault needs `delay` or `abort`");
        }
        if let Some(d) = &f.delay {
            self.duration(&format!("{path}.delay.duration"), Some(d.duration));
            self.percent_f64(&format!("{path}.delay.percent"), d.percent);
        }
        if let Some(a) = &f.abort {
            if !(200..600).contains(&a.status) {
                self.report(
                    format!("{path}.abort.status"),
                    format!("`status` must be from 200 to 599; found {}", a.status),
                );
            }
            self.percent_f64(&format!("{path}.abort.percent"), a.percent);
        }
        self.at_least_one(&format!("{path}.max_active"), f.max_active);
    }

    /// Credentials: one of a secret or OAuth2, names of secrets that hold a `value`, a
    /// header name, a token URL with a host, RFC 6749 scope tokens.
    pub(super) fn credentials(&mut self, path: &str, c: &crate::Credentials) {
        match (&c.secret, &c.oauth2) {
            (Some(secret), None) => {
                self.credential_secret_ref(&format!("{path}.secret"), secret);
                if let Some(h) = &c.header {
                    let ok = http::HeaderName::from_bytes(h.as_bytes()).is_ok();
                    if !ok || h.starts_with(':') {
                        self.report(
                            format!("{path}.header"),
                            format!("`{h}` is not a valid header name"),
                        );
                    }
                }
                if let Some(p) = &c.prefix
                    && http::HeaderValue::from_str(p).is_err()
                {
                    self.report(format!("{path}.prefix"), "not a valid header value");
                }
            }
            (None, Some(o)) => {
                let o_path = format!("{path}.oauth2");
                if c.header.is_some() || c.prefix.is_some() {
                    self.report(
                        path,
                        "an OAuth2 token always goes in `authorization` as `Bearer <token>`: \
                         leave `header` and `prefix` out",
                    );
                }
                self.credential_secret_ref(&format!("{o_path}.client_secret"), &o.client_secret);
                let rest = o
                    .token_url
                    .strip_prefix("http://")
                    .or_else(|| o.token_url.strip_prefix("https://"));
                let host_ok = rest.is_some_and(|r| {
                    let host = r.split('/').next().unwrap_or("");
                    !host.is_empty() && http::uri::Authority::try_from(host).is_ok()
                });
                if !host_ok {
                    self.report(
                        format!("{o_path}.token_url"),
                        format!(
                            "`{}` is not an http:// or https:// URL with a host",
                            o.token_url
                        ),
                    );
                }
                if o.client_id.is_empty() {
                    self.report(format!("{o_path}.client_id"), "must not be empty");
                }
                if o.cluster.is_empty() {
                    self.report(format!("{o_path}.cluster"), "must not be empty");
                } else {
                    self.cluster_ref(&format!("{o_path}.cluster"), &o.cluster);
                }
                for (i, scope) in o.scopes.iter().enumerate() {
                    let ok = !scope.is_empty()
                        && scope.bytes().all(|b| {
                            b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
                        });
                    if !ok {
                        self.report(
                            format!("{o_path}.scopes[{i}]"),
                            format!("`{scope}` is not an OAuth2 scope (RFC 6749 §3.3)"),
                        );
                    }
                }
                self.positive(&format!("{o_path}.timeout"), o.timeout);
                if let Some(r) = o.retry_interval
                    && r < Duration::from_secs(1)
                {
                    self.report(
                        format!("{o_path}.retry_interval"),
                        "`retry_interval` must be at least 1s (as in Envoy)",
                    );
                }
            }
            (Some(_), Some(_)) => {
                self.report(path, "credentials take `secret` or `oauth2`, not both")
            }
            (None, None) => self.report(path, "credentials need `secret` or `oauth2`"),
        }
    }

    fn breaker(&mut self, path: &str, b: &Breaker) {
        // Kept in thousandths: a smaller ratio would be 0.
        if let Some(r) = b.failure_ratio
            && !(0.001..=1.0).contains(&r)
        {
            self.report(
                format!("{path}.failure_ratio"),
                format!("`failure_ratio` must be from 0.001 to 1; found {r}"),
            );
        }
        self.positive(&format!("{path}.window"), b.window);
        self.positive(&format!("{path}.open_timeout"), b.open_timeout);
        self.at_least_one(&format!("{path}.minimum_requests"), b.minimum_requests);
        self.at_least_one(
            &format!("{path}.half_open_max_requests"),
            b.half_open_max_requests,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_mesh, validate};

    /// Check `text` and return its problems as `line:column: path: message`.
    fn problems(text: &str) -> Vec<String> {
        let mesh = match parse_mesh(text, "m.yaml") {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        match validate(&mesh, text, "m.yaml") {
            Ok(()) => vec![],
            Err(errors) => errors
                .iter()
                .map(|e| {
                    let s = e.to_string();
                    s.strip_prefix("m.yaml:").unwrap_or(&s).to_owned()
                })
                .collect(),
        }
    }

    fn parse_error(text: &str) -> String {
        match parse_mesh(text, "m.yaml") {
            Ok(m) => panic!("expected an error, parsed {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn retry_buffer_limit_is_capped() {
        let at = |limit: u64| {
            format!(
                "services: [{{name: a, endpoints: [], policies: {{retries: {{on: [5xx], \
                 buffer_limit: {limit}}}}}}}]"
            )
        };
        assert_eq!(problems(&at(64 << 20)), Vec::<String>::new());
        assert_eq!(
            problems(&at((64 << 20) + 1)),
            [
                "1:83: services[0].policies.retries.buffer_limit: 67108865 bytes is above \
              legate's maximum of 67108864 (64 MiB) for one request's retry copy"
            ]
        );
    }

    #[test]
    fn retries() {
        let text = "\
services:
  - name: payments
    endpoints: []
    route: {timeout: 1s}
    policies:
      timeout: 2s
      retries:
        on: [5xx, x, 5xx, envoy-ratelimited, retriable-status-codes, retriable-headers]
        attempts: 0
        per_try_timeout: 0s
        backoff: {base: 100ms, max: 50ms}
        retry_after: {headers: ['bad header'], max_interval: 0s}
        host_selection_attempts: 2
  - name: orders
    endpoints: []
    policies:
      retries:
        on: []
        backoff: {max: 10ms}
        retry_after: {headers: []}
        status_codes: [429, 700]
        response_headers: [{name: x-retry}]
        hedge_on_per_try_timeout: true
";
        assert_eq!(
            problems(text),
            [
                "6:16: services[0].policies.timeout: the timeout is also set in \
                 `route.timeout`; set it in one place",
                "8:19: services[0].policies.retries.on[1]: unknown retry condition `x`, \
                 expected one of `5xx`, `gateway-error`, `reset`, `reset-before-request`, \
                 `connect-failure`, `refused-stream`, `retriable-4xx`, \
                 `retriable-status-codes`, `retriable-headers`, `cancelled`, \
                 `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable`",
                "8:22: services[0].policies.retries.on[2]: retry condition `5xx` is listed \
                 twice",
                "8:27: services[0].policies.retries.on[3]: retry condition \
                 `envoy-ratelimited` is not supported by legate",
                "8:46: services[0].policies.retries.on[4]: `retriable-status-codes` needs \
                 `status_codes`",
                "8:70: services[0].policies.retries.on[5]: `retriable-headers` needs \
                 `response_headers`",
                "9:19: services[0].policies.retries.attempts: `attempts` must be at least 1",
                "10:26: services[0].policies.retries.per_try_timeout: `per_try_timeout` must \
                 be greater than 0s",
                "11:37: services[0].policies.retries.backoff.max: `max` (50ms) is less than \
                 `base` (100ms)",
                "12:33: services[0].policies.retries.retry_after.headers[0]: `bad header` is \
                 not a valid header name",
                "12:62: services[0].policies.retries.retry_after.max_interval: \
                 `max_interval` must be greater than 0s",
                "13:34: services[0].policies.retries.host_selection_attempts: \
                 `host_selection_attempts` applies only with `previous_hosts: true`",
                "18:13: services[1].policies.retries.on: name at least one retry condition: \
                 `5xx`, `gateway-error`, `reset`, `reset-before-request`, `connect-failure`, \
                 `refused-stream`, `retriable-4xx`, `retriable-status-codes`, \
                 `retriable-headers`, `cancelled`, `deadline-exceeded`, \
                 `resource-exhausted`, `internal`, `unavailable`",
                "19:24: services[1].policies.retries.backoff.max: `max` (10ms) is less than \
                 `base` (25ms, the default)",
                "20:32: services[1].policies.retries.retry_after.headers: name at least one \
                 header (or leave `headers` out for `retry-after`)",
                "21:29: services[1].policies.retries.status_codes[1]: status 700 is out of \
                 range 100-599",
                "21:23: services[1].policies.retries.status_codes: `status_codes` are retried \
                 only with `retriable-status-codes` in `on`",
                "22:28: services[1].policies.retries.response_headers[0]: a match needs one \
                 of `exact`, `prefix`, `suffix`, `contains`, `regex`, `present`",
                "22:27: services[1].policies.retries.response_headers: `response_headers` are \
                 retried only with `retriable-headers` in `on`",
                "23:35: services[1].policies.retries.hedge_on_per_try_timeout: hedging on \
                 per-try timeout needs `per_try_timeout`",
            ]
        );
    }

    #[test]
    fn low_level_retries_and_idle_timeout() {
        let text = "\
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ['*']
        retries: {on: [5xx], attempts: 0}
        routes:
          - forward:
              cluster: c
              idle_timeout: 400000000000s
              retries: {on: [reset], per_try_idle_timeout: 0s}
clusters: [{name: c}]
";
        assert_eq!(
            problems(text),
            [
                "6:40: route_configs[0].virtual_hosts[0].retries.attempts: `attempts` must \
                 be at least 1",
                "10:29: route_configs[0].virtual_hosts[0].routes[0].forward.idle_timeout: \
                 duration is longer than 10000 years",
                "11:60: route_configs[0].virtual_hosts[0].routes[0].forward.retries\
                 .per_try_idle_timeout: `per_try_idle_timeout` must be greater than 0s",
            ]
        );
    }

    #[test]
    fn cluster_policies() {
        let text = "\
clusters:
  - name: c
    max_requests_per_connection: 1000
    circuit_breakers:
      max_connections: 0
      max_requests: 0
      max_retries: 3
      retry_budget: {percent: 120}
    outlier_detection:
      consecutive_5xx: 0
      enforcing_consecutive_5xx: 101
      max_ejection_percent: 200
      interval: 0s
      base_ejection_time: 1m
      max_ejection_time: 30s
      consecutive_local_origin_failure: 3
      enforcing_local_origin_success_rate: 50
    health_check:
      http: {path: healthz, host: '', expected_statuses: [700, '300-200', '100-600']}
      tcp: {}
      timeout: 0s
      healthy_threshold: 0
    panic_threshold: 100.5
    breaker:
      failure_ratio: 0
      window: 0s
      minimum_requests: 0
      half_open_max_requests: 0
  - name: d
    health_check: {interval: 0s}
    breaker: {failure_ratio: 1.5, open_timeout: 0s}
";
        assert_eq!(
            problems(text),
            [
                "5:24: clusters[0].circuit_breakers.max_connections: `max_connections` must \
                 be at least 1 (0 would refuse every request)",
                "6:21: clusters[0].circuit_breakers.max_requests: `max_requests` must be at \
                 least 1 (0 would refuse every request)",
                "8:31: clusters[0].circuit_breakers.retry_budget.percent: `percent` is a \
                 percentage, 0 to 100; found 120",
                "7:20: clusters[0].circuit_breakers.max_retries: `max_retries` does not apply \
                 with `retry_budget`, which replaces it; set one of the two",
                "10:24: clusters[0].outlier_detection.consecutive_5xx: `consecutive_5xx` must \
                 be at least 1",
                "11:34: clusters[0].outlier_detection.enforcing_consecutive_5xx: \
                 `enforcing_consecutive_5xx` is a percentage, 0 to 100; found 101",
                "12:29: clusters[0].outlier_detection.max_ejection_percent: \
                 `max_ejection_percent` is a percentage, 0 to 100; found 200",
                "13:17: clusters[0].outlier_detection.interval: `interval` must be greater \
                 than 0s",
                "15:26: clusters[0].outlier_detection.max_ejection_time: `max_ejection_time` \
                 (30s) is less than `base_ejection_time` (60s)",
                "16:41: clusters[0].outlier_detection.consecutive_local_origin_failure: \
                 `consecutive_local_origin_failure` applies only with \
                 `split_external_local_origin_errors: true`",
                "17:44: clusters[0].outlier_detection.enforcing_local_origin_success_rate: \
                 `enforcing_local_origin_success_rate` applies only with \
                 `split_external_local_origin_errors: true`",
                "18:5: clusters[0].health_check: a health check takes one of `http` and \
                 `tcp`, found both",
                "19:20: clusters[0].health_check.http.path: `healthz` does not start with `/`",
                "19:35: clusters[0].health_check.http.host: host is empty (leave it out for \
                 the cluster's name)",
                "19:59: clusters[0].health_check.http.expected_statuses[0]: status 700 is out \
                 of range 100-599",
                "19:64: clusters[0].health_check.http.expected_statuses[1]: range 300-200 is \
                 empty (the first status is greater than the last)",
                "19:75: clusters[0].health_check.http.expected_statuses[2]: range 100-600 is \
                 out of range 100-599",
                "21:16: clusters[0].health_check.timeout: `timeout` must be greater than 0s",
                "22:26: clusters[0].health_check.healthy_threshold: `healthy_threshold` must \
                 be at least 1",
                "23:22: clusters[0].panic_threshold: `panic_threshold` is a percentage, 0 to \
                 100; found 100.5",
                "25:22: clusters[0].breaker.failure_ratio: `failure_ratio` must be from 0.001 \
                 to 1; found 0",
                "26:15: clusters[0].breaker.window: `window` must be greater than 0s",
                "27:25: clusters[0].breaker.minimum_requests: `minimum_requests` must be at \
                 least 1",
                "28:31: clusters[0].breaker.half_open_max_requests: `half_open_max_requests` \
                 must be at least 1",
                "30:19: clusters[1].health_check: a health check needs one of `http` and \
                 `tcp`",
                "30:30: clusters[1].health_check.interval: `interval` must be greater than 0s",
                "31:30: clusters[1].breaker.failure_ratio: `failure_ratio` must be from 0.001 \
                 to 1; found 1.5",
                "31:49: clusters[1].breaker.open_timeout: `open_timeout` must be greater than \
                 0s",
            ]
        );
    }

    #[test]
    fn service_cluster_policies_use_the_policies_path() {
        let text = "\
services:
  - name: web
    endpoints: []
    policies:
      outlier_detection: {failure_percentage_threshold: 101, max_ejection_time: 10s}
      panic_threshold: -1
";
        assert_eq!(
            problems(text),
            [
                "5:57: services[0].policies.outlier_detection.failure_percentage_threshold: \
                 `failure_percentage_threshold` is a percentage, 0 to 100; found 101",
                "5:81: services[0].policies.outlier_detection.max_ejection_time: \
                 `max_ejection_time` (10s) is less than `base_ejection_time` (30s, the \
                 default)",
                "6:24: services[0].policies.panic_threshold: `panic_threshold` is a \
                 percentage, 0 to 100; found -1",
            ]
        );
    }

    #[test]
    fn good_policies_pass() {
        let text = "\
services:
  - name: web
    endpoints: [{address: 127.0.0.1:8080}]
    max_requests_per_connection: 100
    policies:
      retries:
        on: [retriable-status-codes, reset]
        status_codes: [429, 503]
        retry_after: true
        previous_hosts: true
        host_selection_attempts: 3
        per_try_timeout: 1s
        hedge_on_per_try_timeout: true
      circuit_breakers: {retry_budget: {percent: 12.5}, max_pending_requests: 0}
      outlier_detection:
        split_external_local_origin_errors: true
        consecutive_local_origin_failure: 2
      health_check: {http: {path: /ready, expected_statuses: ['200-204']}}
      panic_threshold: 0
      breaker: {failure_ratio: 1}
";
        assert_eq!(problems(text), Vec::<String>::new());
    }

    #[test]
    fn malformed_policies_are_parse_errors() {
        for (text, expected) in [
            (
                "clusters: [{name: c, health_check: {http: {path: /, expected_statuses: \
                 [2xx]}}}]",
                "m.yaml:1:73: clusters[0].health_check.http.expected_statuses[0]: invalid \
                 value: string \"2xx\", expected a status like 200, or a range like \
                 \"200-299\"",
            ),
            (
                "clusters: [{name: c, health_check: {http: {}}}]",
                "m.yaml:1:43: clusters[0].health_check.http: missing field `path`",
            ),
            (
                "clusters: [{name: c, breaker: {ratio: 0.5}}]",
                "m.yaml:1:32: clusters[0].breaker.ratio: unknown field `ratio`, expected one \
                 of `failure_ratio`, `window`, `minimum_requests`, `open_timeout`, \
                 `half_open_max_requests`",
            ),
            (
                "services: [{name: a, endpoints: [], policies: {retries: {attempts: 2}}}]",
                "m.yaml:1:57: services[0].policies.retries: missing field `on`",
            ),
            (
                "services: [{name: a, endpoints: [], policies: {retries: {on: [5xx], \
                 retry_after: yes}}}]",
                "m.yaml:1:82: services[0].policies.retries.retry_after: invalid type: string \
                 \"yes\", expected true, false, or a mapping with `headers` and \
                 `max_interval`",
            ),
            (
                "services: [{name: a, endpoints: [], policies: {retries: {on: [5xx], \
                 retry_after: {header: [x]}}}}]",
                "m.yaml:1:83: services[0].policies.retries.retry_after.header: unknown field \
                 `header`, expected `headers` or `max_interval`",
            ),
            (
                "services: [{name: a, endpoints: [], policies: {retries: {on: [5xx], \
                 retries: 3}}}]",
                "m.yaml:1:69: services[0].policies.retries.retries: unknown field `retries`, \
                 expected one of `on`, `attempts`, `per_try_timeout`, \
                 `per_try_idle_timeout`, `backoff`, `retry_after`, `status_codes`, \
                 `response_headers`, `previous_hosts`, `host_selection_attempts`, \
                 `hedge_on_per_try_timeout`, `non_idempotent`, `buffer_limit`",
            ),
        ] {
            assert_eq!(parse_error(text), expected, "{text}");
        }
    }

    #[test]
    fn hash_keys_and_their_lb_policy() {
        let text = "\
services:
  - name: a
    lb_policy: ring_hash
    endpoints: []
    policies: {hash: {header: 'bad name'}}
  - name: b
    endpoints: []
    policies: {hash: {query: user}}
  - name: c
    lb_policy: maglev
    endpoints: []
    policies: {hash: {cookie: {name: 'a;b', path: '/x;Domain=evil'}}}
  - name: d
    lb_policy: maglev
    endpoints: []
    policies: {hash: {query: 'a=b'}}
  - name: e
    lb_policy: ring_hash
    endpoints: []
    policies: {hash: source_ip}
";
        assert_eq!(
            problems(text),
            [
                "5:31: services[0].policies.hash.header: `bad name` is not a valid header name",
                "8:22: services[1].policies.hash: a hash needs `lb_policy: ring_hash` or \
                 `maglev` (other policies ignore it)",
                "12:38: services[2].policies.hash.cookie.name: `a;b` is not a valid cookie name \
                 (letters, digits and !#$%&'*+-.^_`|~)",
                "12:51: services[2].policies.hash.cookie.path: \"/x;Domain=evil\" cannot be a \
                 cookie path (`;` or control characters)",
                "16:30: services[3].policies.hash.query: `a=b` is not a query parameter name",
            ]
        );
        assert!(
            parse_error("services: [{name: a, endpoints: [], policies: {hash: {ip: x}}}]")
                .contains("unknown variant `ip`"),
        );
    }
}
