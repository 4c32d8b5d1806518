//! `circuit_breakers` (Envoy's resource limits) and the classic closed/open/half-open breaker
//! that legate reads from `metadata.filter_metadata.legate.circuit_breaker`.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers as XdsCircuitBreakers;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds as XdsThresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget as XdsRetryBudget;
use envoy_types::pb::envoy::config::core::v3::{Metadata as XdsMetadata, RoutingPriority};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value};

use super::super::common::{
    Ctx, at, capped_duration, enum_value, join, legate_metadata, nonzero_duration,
    percent_permille, refuse, struct_fields, value_kind,
};
use crate::{CircuitBreakers, ClassicBreaker, RetryBudget, Thresholds};

/// The cluster metadata key (under `legate`) holding the classic breaker.
const CIRCUIT_BREAKER: &str = "circuit_breaker";
/// Envoy's default retry budget: 20% of active requests, at least 3 retries.
const DEFAULT_BUDGET_PERMILLE: u32 = 200;
const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

/// `circuit_breakers`: one `thresholds` entry per priority at most; Envoy's defaults for a
/// priority without one.
pub(super) fn circuit_breakers(
    cx: &mut Ctx,
    field: &str,
    cb: Option<&XdsCircuitBreakers>,
) -> CircuitBreakers {
    let mut out = CircuitBreakers::default();
    let Some(XdsCircuitBreakers {
        thresholds,
        per_host_thresholds,
    }) = cb
    else {
        return out;
    };
    refuse!(cx, field; per_host_thresholds);
    let mut seen: [Option<usize>; 2] = [None, None];
    for (i, t) in thresholds.iter().enumerate() {
        let f = at(field, "thresholds", i);
        let priority_field = join(&f, "priority");
        let Some(priority) = enum_value::<RoutingPriority>(cx, &priority_field, t.priority) else {
            continue;
        };
        let slot = match priority {
            RoutingPriority::Default => 0,
            RoutingPriority::High => 1,
        };
        if let Some(first) = seen[slot] {
            cx.err(
                priority_field,
                format!(
                    "duplicate priority {} (already set by thresholds[{first}])",
                    priority.as_str_name()
                ),
            );
            continue;
        }
        seen[slot] = Some(i);
        let converted = threshold(cx, &f, t);
        match priority {
            RoutingPriority::Default => out.default = converted,
            RoutingPriority::High => out.high = converted,
        }
    }
    out
}

fn threshold(cx: &mut Ctx, field: &str, t: &XdsThresholds) -> Thresholds {
    let XdsThresholds {
        priority: _, // read by the caller
        max_connections,
        max_pending_requests,
        max_requests,
        max_retries,
        retry_budget,
        track_remaining,
        max_connection_pools,
    } = t;
    refuse!(cx, field; max_connection_pools);
    let defaults = Thresholds::default();
    let or =
        |v: &Option<UInt32Value>, default: u32| v.map_or(default, |UInt32Value { value }| value);
    Thresholds {
        max_connections: or(max_connections, defaults.max_connections),
        max_pending_requests: or(max_pending_requests, defaults.max_pending_requests),
        max_requests: or(max_requests, defaults.max_requests),
        max_retries: or(max_retries, defaults.max_retries),
        retry_budget: retry_budget
            .as_ref()
            .map(|b| budget(cx, &join(field, "retry_budget"), b)),
        track_remaining: *track_remaining,
    }
}

fn budget(cx: &mut Ctx, field: &str, b: &XdsRetryBudget) -> RetryBudget {
    let XdsRetryBudget {
        budget_percent,
        budget_interval,
        min_retry_concurrency,
    } = b;
    // Envoy's default of 0 counts only requests in flight, which is what legate does.
    if nonzero_duration(budget_interval) {
        cx.unsupported(field, "budget_interval");
    }
    RetryBudget {
        budget_permille: budget_percent
            .as_ref()
            .and_then(|p| percent_permille(cx, &join(field, "budget_percent"), p))
            .unwrap_or(DEFAULT_BUDGET_PERMILLE),
        min_retry_concurrency: min_retry_concurrency
            .map_or(DEFAULT_MIN_RETRY_CONCURRENCY, |UInt32Value { value }| value),
    }
}

/// The legate keys of a cluster's metadata: only `circuit_breaker`.
pub(super) fn classic_breaker(
    cx: &mut Ctx,
    field: &str,
    metadata: Option<&XdsMetadata>,
) -> Option<ClassicBreaker> {
    let mut breaker = None;
    for (path, key, value) in legate_metadata(cx, field, metadata) {
        if key != CIRCUIT_BREAKER {
            cx.err(
                path,
                format!("unknown key '{key}' (legate knows {CIRCUIT_BREAKER} on clusters)"),
            );
            continue;
        }
        match &value.kind {
            Some(Kind::StructValue(s)) => breaker = breaker_settings(cx, &path, s),
            _ => cx.err(path, format!("must be a struct, not {}", value_kind(value))),
        }
    }
    breaker
}

/// The classic breaker's defaults.
fn default_breaker() -> ClassicBreaker {
    ClassicBreaker {
        failure_ratio_permille: 500,
        window: Duration::from_secs(10),
        minimum_requests: 20,
        open_timeout: Duration::from_secs(30),
        half_open_max_requests: 3,
    }
}

fn breaker_settings(cx: &mut Ctx, field: &str, s: &Struct) -> Option<ClassicBreaker> {
    let before = cx.error_count();
    let mut b = default_breaker();
    for (path, key, value) in struct_fields(field, s) {
        match key {
            "failure_ratio" => {
                if let Some(p) = ratio_permille(cx, &path, value) {
                    b.failure_ratio_permille = p;
                }
            }
            "window" => {
                if let Some(d) = breaker_duration(cx, &path, value) {
                    b.window = d;
                }
            }
            "open_timeout" => {
                if let Some(d) = breaker_duration(cx, &path, value) {
                    b.open_timeout = d;
                }
            }
            "minimum_requests" => {
                if let Some(n) = count(cx, &path, value) {
                    b.minimum_requests = n;
                }
            }
            "half_open_max_requests" => {
                if let Some(n) = count(cx, &path, value) {
                    b.half_open_max_requests = n;
                }
            }
            _ => cx.err(
                path,
                format!(
                    "unknown key '{key}' (legate knows failure_ratio, window, minimum_requests, \
                     open_timeout and half_open_max_requests)"
                ),
            ),
        }
    }
    (cx.error_count() == before).then_some(b)
}

/// `failure_ratio`: a number in (0, 1], kept in permille.
fn ratio_permille(cx: &mut Ctx, field: &str, v: &Value) -> Option<u32> {
    let Some(Kind::NumberValue(r)) = v.kind else {
        cx.err(field, format!("must be a number, not {}", value_kind(v)));
        return None;
    };
    if !(r > 0.0 && r <= 1.0) {
        cx.err(field, format!("{r} is not greater than 0 and at most 1"));
        return None;
    }
    // In 0..=1000 by the check above.
    let permille = (r * 1000.0).round() as u32;
    if permille == 0 {
        cx.err(field, format!("{r} is below the smallest ratio, 0.001"));
        return None;
    }
    Some(permille)
}

/// A whole number of at least 1.
fn count(cx: &mut Ctx, field: &str, v: &Value) -> Option<u32> {
    let Some(Kind::NumberValue(n)) = v.kind else {
        cx.err(field, format!("must be a number, not {}", value_kind(v)));
        return None;
    };
    if n.fract() != 0.0 || !(1.0..=f64::from(u32::MAX)).contains(&n) {
        cx.err(
            field,
            format!("{n} is not a whole number between 1 and {}", u32::MAX),
        );
        return None;
    }
    // A whole number in range by the check above.
    Some(n as u32)
}

/// A duration greater than zero: a number of seconds, or a string such as `10s`, `0.250s`,
/// `500ms` or `1m` (units `ms`, `s`, `m`, `h`; the JSON form of `google.protobuf.Duration`
/// is the `s` case).
fn breaker_duration(cx: &mut Ctx, field: &str, v: &Value) -> Option<Duration> {
    let parsed = match &v.kind {
        Some(Kind::NumberValue(secs)) => {
            Duration::try_from_secs_f64(*secs).map_err(|_| format!("{secs} is not a duration"))
        }
        Some(Kind::StringValue(s)) => {
            parse_duration(s).ok_or_else(|| format!("'{s}' is not a duration (e.g. 10s, 500ms)"))
        }
        _ => Err(format!(
            "must be a duration string or a number of seconds, not {}",
            value_kind(v)
        )),
    };
    match parsed {
        Ok(d) if d.is_zero() => {
            cx.err(field, "must be greater than zero");
            None
        }
        Ok(d) => capped_duration(cx, field, d),
        Err(message) => {
            cx.err(field, message);
            None
        }
    }
}

/// `<digits>[.<digits>]<unit>`, unit one of `ms`, `s`, `m`, `h`; precision to the nanosecond.
fn parse_duration(s: &str) -> Option<Duration> {
    let digits_end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if fraction.contains('.') || fraction.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    if !fraction.is_empty() {
        let numerator: u128 = fraction.parse().ok()?;
        let denominator = 10u128.pow(u32::try_from(fraction.len()).ok()?);
        nanos = nanos.checked_add(numerator * unit_nanos / denominator)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    // Below one billion by the modulo.
    let subsec = (nanos % 1_000_000_000) as u32;
    Some(Duration::new(secs, subsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("10s", Some(ms(10_000))),
            ("0.250s", Some(ms(250))),
            ("0.000000001s", Some(Duration::from_nanos(1))),
            ("500ms", Some(ms(500))),
            ("1.5ms", Some(Duration::from_micros(1500))),
            ("1m", Some(ms(60_000))),
            ("2h", Some(ms(7_200_000))),
            (".5s", Some(ms(500))),
            ("0s", Some(Duration::ZERO)),
            ("", None),
            ("s", None),
            ("10", None),
            ("10 s", None),
            ("-1s", None),
            ("1.2.3s", None),
            ("1d", None),
            ("99999999999999999999999h", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text}");
        }
    }
}
