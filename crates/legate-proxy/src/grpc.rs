//! gRPC as gRPC: recognising a gRPC request, reading `grpc-timeout` and `grpc-status`,
//! the status a local reply carries, and counting requests by status.
//!
//! Wire format: <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>. Everything
//! here reads headers a client or an upstream sent, so every parse is bounded and total.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use legate_snapshot::ForwardAction;
use legate_telemetry::{Counter, Family};

pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The highest status gRPC defines (UNAUTHENTICATED); anything above reads as UNKNOWN.
pub(crate) const MAX_STATUS: u32 = 16;
pub(crate) const UNKNOWN: u32 = 2;
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
pub(crate) const RESOURCE_EXHAUSTED: u32 = 8;
pub(crate) const INTERNAL: u32 = 13;
pub(crate) const UNAVAILABLE: u32 = 14;

/// Whether a request is gRPC: `content-type` `application/grpc` or `application/grpc+...`
/// (as Envoy decides; `application/grpc-web` is another protocol).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    const BASE: &[u8] = b"application/grpc";
    ct.len() >= BASE.len()
        && ct[..BASE.len()].eq_ignore_ascii_case(BASE)
        && matches!(ct.get(BASE.len()), None | Some(b'+') | Some(b';'))
}

/// A `grpc-timeout` value: one to eight ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). Anything else is `None`, as if the header were absent. Eight digits of hours fit a
/// `Duration` without overflow; deadlines built from it saturate ([`crate::deadline`]).
pub(crate) fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let b = value.as_bytes();
    let (&unit, digits) = b.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The whole-request timeout of a forwarded request: the route's `timeout`, or, for a gRPC
/// request on a route that reads `grpc-timeout`, what the header says, capped.
///
/// - `max_grpc_timeout` (deprecated): the header replaces the route's `timeout`; without the
///   header (or with a zero value) the cap alone applies, no deadline when the cap is 0.
/// - `max_stream_duration.grpc_timeout_header_max`: the header's value, capped, bounds the
///   request next to the route's `timeout` (the earlier wins); without the header only the
///   route's `timeout` applies.
pub(crate) fn request_timeout(
    fwd: &ForwardAction,
    grpc: bool,
    headers: &HeaderMap,
) -> Option<Duration> {
    let Some(g) = fwd.grpc_timeout.filter(|_| grpc) else {
        return fwd.timeout;
    };
    // Zero means "no deadline", as Envoy reads it.
    let header = headers
        .get(GRPC_TIMEOUT)
        .and_then(parse_timeout)
        .filter(|d| !d.is_zero());
    if g.replaces_route_timeout {
        match (header, g.max) {
            (Some(h), Some(max)) => Some(h.min(max)),
            (Some(h), None) => Some(h),
            (None, max) => max,
        }
    } else {
        let capped = header.map(|h| g.max.map_or(h, |max| h.min(max)));
        match (fwd.timeout, capped) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `grpc-status` in a header map (response headers of a trailers-only response, or
/// trailers): a number, else `None`. Values above [`MAX_STATUS`] are kept; callers that
/// label by status fold them to UNKNOWN.
pub(crate) fn status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get(GRPC_STATUS)?.as_bytes();
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The gRPC status of a local reply with this HTTP status. Envoy's table (from gRPC's
/// `http-grpc-status-mapping.md`), except that 504, legate's answer to every timeout, is
/// DEADLINE_EXCEEDED: a client's deadline or the route's ran out, which gRPC clients treat
/// differently from UNAVAILABLE (Envoy maps 504 to UNAVAILABLE).
pub(crate) fn status_for_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 => UNAVAILABLE,
        504 => DEADLINE_EXCEEDED,
        _ => UNKNOWN,
    }
}

/// The HTTP status a gRPC status stands for when outlier detection and load reports judge
/// an attempt (Envoy's `grpcToHttpStatus`): UNAVAILABLE is a 503, INTERNAL, UNKNOWN and
/// DATA_LOSS are 500, DEADLINE_EXCEEDED a 504, UNIMPLEMENTED a 501; client-side statuses
/// map to 4xx, so they never count as an upstream failure.
pub(crate) fn http_status_for(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        // UNKNOWN (2), INTERNAL (13), DATA_LOSS (15), and anything gRPC does not define.
        _ => 500,
    }
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII and `%` itself.
pub(crate) fn encode_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Only printable ASCII remains, which is always a valid header value.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A listener's gRPC request counters, one per status 0-16, resolved when the listener is
/// applied.
#[derive(Debug)]
pub(crate) struct ByGrpcStatus([Arc<Counter>; (MAX_STATUS + 1) as usize]);

impl ByGrpcStatus {
    pub(crate) fn new(family: &Family<Counter>, listener: &str) -> Self {
        ByGrpcStatus(std::array::from_fn(|i| {
            family.get_or_create(&[listener, i.to_string().as_str()])
        }))
    }

    /// Count one request; a status gRPC does not define counts as UNKNOWN.
    pub(crate) fn record(&self, status: u32) {
        let i = if status > MAX_STATUS { UNKNOWN } else { status };
        self.0[i as usize].inc();
    }
}

/// A gRPC response whose status arrives in its trailers: counted once, when the trailers
/// pass, or as UNKNOWN when the body ends or is dropped without them (the upstream cut the
/// stream, or the client left).
#[derive(Debug)]
pub(crate) struct Tally {
    counters: Arc<ByGrpcStatus>,
    status: Option<u32>,
}

impl Tally {
    pub(crate) fn new(counters: Arc<ByGrpcStatus>) -> Self {
        Tally {
            counters,
            status: None,
        }
    }

    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if self.status.is_none() {
            self.status = Some(status(trailers).unwrap_or(UNKNOWN));
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.counters.record(self.status.unwrap_or(UNKNOWN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn grpc_content_types() {
        let check = |ct: Option<&'static str>, want: bool| {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(http::header::CONTENT_TYPE, hv(ct));
            }
            assert_eq!(is_grpc(&h), want, "{ct:?}");
        };
        check(Some("application/grpc"), true);
        check(Some("application/grpc+proto"), true);
        check(Some("Application/GRPC+json"), true);
        check(Some("application/grpc-web"), false);
        check(Some("application/grpcx"), false);
        check(Some("application/json"), false);
        check(Some("application/grp"), false);
        check(None, false);
    }

    #[test]
    fn timeouts_in_every_unit() {
        let check = |s: &'static str, want: Option<Duration>| {
            assert_eq!(parse_timeout(&hv(s)), want, "{s}");
        };
        check("2H", Some(Duration::from_secs(7200)));
        check("3M", Some(Duration::from_secs(180)));
        check("10S", Some(Duration::from_secs(10)));
        check("250m", Some(Duration::from_millis(250)));
        check("7u", Some(Duration::from_micros(7)));
        check("99999999n", Some(Duration::from_nanos(99_999_999)));
        check("99999999H", Some(Duration::from_secs(99_999_999 * 3600)));
        check("0S", Some(Duration::ZERO));
        // Nine digits, no digits, no unit, unknown unit, signs and blanks: not a timeout.
        check("123456789S", None);
        check("S", None);
        check("100", None);
        check("10s", None);
        check("10x", None);
        check("-1S", None);
        check(" 1S", None);
        check("", None);
    }

    pub(super) fn fwd(
        timeout: Option<Duration>,
        g: Option<(Option<Duration>, bool)>,
    ) -> ForwardAction {
        ForwardAction {
            target: legate_snapshot::ClusterTarget::Single(Arc::from("c")),
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: legate_snapshot::HostRewrite::Keep,
            timeout,
            idle_timeout: None,
            upgrades: Vec::new(),
            retry_policy: None,
            hedge_on_per_try_timeout: false,
            retry_buffer_limit: 0,
            retry_non_idempotent: false,
            grpc_timeout: g.map(
                |(max, replaces_route_timeout)| legate_snapshot::GrpcTimeout {
                    max,
                    replaces_route_timeout,
                },
            ),
        }
    }

    #[test]
    fn request_timeouts() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let mut with = HeaderMap::new();
        with.insert(GRPC_TIMEOUT, hv("500m"));
        let mut long = HeaderMap::new();
        long.insert(GRPC_TIMEOUT, hv("1H"));
        let none = HeaderMap::new();
        // Not a gRPC request, or a route that does not read the header: the route's timeout.
        assert_eq!(
            request_timeout(&fwd(Some(s(15)), Some((None, false))), false, &with),
            Some(s(15))
        );
        assert_eq!(
            request_timeout(&fwd(Some(s(15)), None), true, &with),
            Some(s(15))
        );
        // grpc_timeout_header_max: the earlier of the route's and the capped header's.
        let hm = fwd(Some(s(15)), Some((Some(s(2)), false)));
        assert_eq!(request_timeout(&hm, true, &with), Some(ms(500)));
        assert_eq!(request_timeout(&hm, true, &long), Some(s(2)));
        assert_eq!(request_timeout(&hm, true, &none), Some(s(15)));
        let uncapped = fwd(None, Some((None, false)));
        assert_eq!(request_timeout(&uncapped, true, &long), Some(s(3600)));
        assert_eq!(request_timeout(&uncapped, true, &none), None);
        // max_grpc_timeout: the header replaces the route's timeout; the cap applies alone
        // without it.
        let mg = fwd(Some(s(15)), Some((Some(s(30)), true)));
        assert_eq!(request_timeout(&mg, true, &long), Some(s(30)));
        assert_eq!(request_timeout(&mg, true, &with), Some(ms(500)));
        assert_eq!(request_timeout(&mg, true, &none), Some(s(30)));
        let mg0 = fwd(Some(s(15)), Some((None, true)));
        assert_eq!(request_timeout(&mg0, true, &none), None);
        assert_eq!(request_timeout(&mg0, true, &long), Some(s(3600)));
    }

    #[test]
    fn statuses() {
        let check = |v: &'static str, want: Option<u32>| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_STATUS, hv(v));
            assert_eq!(status(&h), want, "{v}");
        };
        check("0", Some(0));
        check("14", Some(14));
        check("99", Some(99));
        check("", None);
        check("1a", None);
        check("-1", None);
        check("99999999999", None);
        assert_eq!(status(&HeaderMap::new()), None);
        assert_eq!(
            status_for_http(StatusCode::SERVICE_UNAVAILABLE),
            UNAVAILABLE
        );
        assert_eq!(status_for_http(StatusCode::TOO_MANY_REQUESTS), UNAVAILABLE);
        assert_eq!(status_for_http(StatusCode::BAD_GATEWAY), UNAVAILABLE);
        assert_eq!(
            status_for_http(StatusCode::GATEWAY_TIMEOUT),
            DEADLINE_EXCEEDED
        );
        assert_eq!(status_for_http(StatusCode::NOT_FOUND), 12);
        assert_eq!(status_for_http(StatusCode::BAD_REQUEST), INTERNAL);
        assert_eq!(status_for_http(StatusCode::FORBIDDEN), 7);
        assert_eq!(status_for_http(StatusCode::IM_A_TEAPOT), UNKNOWN);
    }

    #[test]
    fn statuses_as_http_for_judging() {
        for (code, http) in [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            (17, 500),
        ] {
            assert_eq!(http_status_for(code), http, "{code}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no healthy upstream"), "no healthy upstream");
        assert_eq!(encode_message("100% é"), "100%25 %C3%A9");
        assert_eq!(encode_message("a\nb"), "a%0Ab");
    }

    #[test]
    fn counts_fold_unknown_statuses() {
        let r = legate_telemetry::Registry::new();
        let f = r.family::<Counter>("g_total", "G.", &["listener", "grpc_status"]);
        let c = Arc::new(ByGrpcStatus::new(&f, "l"));
        c.record(14);
        c.record(99);
        {
            let mut t = Tally::new(c.clone());
            let mut h = HeaderMap::new();
            h.insert(GRPC_STATUS, hv("0"));
            t.trailers(&h);
        }
        drop(Tally::new(c.clone()));
        let text = r.render();
        assert!(
            text.contains("g_total{listener=\"l\",grpc_status=\"14\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("g_total{listener=\"l\",grpc_status=\"2\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("g_total{listener=\"l\",grpc_status=\"0\"} 1\n"),
            "{text}"
        );
    }
}

/// Property tests: `make test` runs proptest's default case count (256, well under a
/// second); `make fuzz` sets `PROPTEST_CASES` much higher.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a client sends as `grpc-timeout`, parsing neither panics nor accepts
        /// anything but 1-8 digits and a known unit, and reads those exactly.
        #[test]
        fn timeouts_parse_exactly(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let parsed = parse_timeout(&value);
            let valid = bytes.len() >= 2
                && bytes.len() <= 9
                && bytes[..bytes.len() - 1].iter().all(u8::is_ascii_digit)
                && b"HMSmun".contains(&bytes[bytes.len() - 1]);
            prop_assert_eq!(parsed.is_some(), valid, "{:?}", bytes);
            if let Some(d) = parsed {
                let n: u128 = std::str::from_utf8(&bytes[..bytes.len() - 1])
                    .expect("digits")
                    .parse()
                    .expect("number");
                let nanos = n * match bytes[bytes.len() - 1] {
                    b'H' => 3_600_000_000_000,
                    b'M' => 60_000_000_000,
                    b'S' => 1_000_000_000,
                    b'm' => 1_000_000,
                    b'u' => 1_000,
                    _ => 1,
                };
                prop_assert_eq!(d.as_nanos(), nanos);
            }
        }

        /// `grpc-status` from anything: no panic, and a number only from digits.
        #[test]
        fn statuses_parse_from_digits_only(bytes in proptest::collection::vec(any::<u8>(), 0..14)) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(GRPC_STATUS, value);
            if status(&h).is_some() {
                prop_assert!(!bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit));
            }
        }

        /// With `grpc_timeout_header_max`, the deadline is never later than the route's
        /// timeout, nor than the cap when the header names a deadline.
        #[test]
        fn header_max_never_extends(
            route_ms in proptest::option::of(1u64..100_000),
            cap_ms in proptest::option::of(1u64..100_000),
            header in "[0-9]{1,8}[HMSmun]",
        ) {
            let fwd = tests::fwd(
                route_ms.map(Duration::from_millis),
                Some((cap_ms.map(Duration::from_millis), false)),
            );
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_str(&header).expect("value"));
            let got = request_timeout(&fwd, true, &h);
            if let Some(r) = route_ms {
                prop_assert!(got.is_some_and(|g| g <= Duration::from_millis(r)));
            }
            // A zero header means "no deadline" (Envoy's reading): only the route's applies.
            let zero = header[..header.len() - 1].bytes().all(|b| b == b'0');
            if let (Some(c), Some(g), false) = (cap_ms, got, zero) {
                prop_assert!(g <= Duration::from_millis(c));
            }
        }
    }
}
