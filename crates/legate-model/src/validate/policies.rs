//! Checks on resilience policies: names, ranges, and settings that only mean something
//! together (`status_codes` without `retriable-status-codes` would be silently ignored).

use std::collections::HashSet;
use std::time::Duration;

use super::{Checker, check_value};
use crate::{
    Breaker, CircuitBreakers, DEFAULT_BACKOFF_BASE, HealthCheck, OutlierDetection,
    RETRY_CONDITIONS, Retries,
};

/// Envoy retry conditions legate does not implement, refused by name rather than as typos.
const UNSUPPORTED_RETRY_CONDITIONS: [&str; 7] = [
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

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
                    " (the default)"
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
        if let (Some(base), Some(max)) = (o.base_ejection_time, o.max_ejection_time)
            && max < base
        {
            self.report(
                format!("{path}.max_ejection_time"),
                format!(
                    "`max_ejection_time` ({max:?}) is less than `base_ejection_time` ({base:?})"
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
            } else if let Err(m) = check_value(&http.path) {
                self.report(p, m);
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

    fn breaker(&mut self, path: &str, b: &Breaker) {
        if let Some(r) = b.failure_ratio
            && !(r > 0.0 && r <= 1.0)
        {
            self.report(
                format!("{path}.failure_ratio"),
                format!("`failure_ratio` must be greater than 0 and at most 1; found {r}"),
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
