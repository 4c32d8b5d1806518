//! Access log formats, compiled once when a listener is validated: Envoy's substitution
//! format strings (`%COMMAND(arg):N%`) and JSON formats, turned into a list of pieces the
//! proxy renders per request without parsing anything.
//!
//! Which operators legate supports, and which it refuses, is listed in
//! `docs/access-log.md`; this module is the one table of them.

use std::sync::Arc;

use http::HeaderName;
use serde::Serialize;

/// Envoy's default format, used when a file logger names none.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Longest format string accepted, in bytes.
pub const MAX_FORMAT_LEN: usize = 16 * 1024;

/// One access log of a listener: where lines go and what they say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessLog {
    /// A file path; `/dev/stdout` and `/dev/stderr` name the process's own streams.
    pub path: Arc<str>,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// A text line: the pieces joined (the format carries its own newline, as Envoy's).
    Text(Vec<Piece>),
    /// One JSON object per line; keys sorted as Envoy writes them.
    Json(Vec<(Arc<str>, JsonValue)>),
}

/// A value of a JSON format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonValue {
    /// A single operator: rendered with its type (numbers as numbers), `null` when unset.
    Typed(Operator),
    /// Text with or without operators: a JSON string, unset operators as `-`.
    Text(Vec<Piece>),
    Object(Vec<(Arc<str>, JsonValue)>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Piece {
    Literal(Arc<str>),
    Op(Operator),
}

/// A command operator with its arguments; `max_len` is the `:N` suffix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Operator {
    pub kind: OpKind,
    pub max_len: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    StartTime(TimeFormat),
    /// `%REQ(X?Y)%`: the first header, else the second.
    Req(HeaderSel, Option<HeaderSel>),
    Resp(HeaderSel, Option<HeaderSel>),
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    Duration,
    RequestDuration,
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    BytesReceived,
    BytesSent,
    Protocol,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    UpstreamTransportFailureReason,
    RouteName,
    UpstreamRequestAttemptCount,
    Hostname,
    /// The request's trace id when it is traced (sampled), 32 hex digits.
    TraceId,
}

impl OpKind {
    /// Whether the JSON format renders it as a number.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            OpKind::ResponseCode
                | OpKind::Duration
                | OpKind::RequestDuration
                | OpKind::ResponseDuration
                | OpKind::BytesReceived
                | OpKind::BytesSent
                | OpKind::UpstreamRequestAttemptCount
        )
    }
}

/// A request or response header an operator reads: a pseudo-header or a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderSel {
    Method,
    Path,
    Authority,
    Scheme,
    Name(#[serde(serialize_with = "crate::types::http_serde::name")] HeaderName),
}

/// Operators legate supports, by name.
pub const SUPPORTED: &[&str] = &[
    "START_TIME",
    "REQ",
    "RESP",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "RESPONSE_CODE_DETAILS",
    "DURATION",
    "REQUEST_DURATION",
    "RESPONSE_DURATION",
    "UPSTREAM_HOST",
    "UPSTREAM_CLUSTER",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "PROTOCOL",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "ROUTE_NAME",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "HOSTNAME",
    "TRACE_ID",
];

/// Why a format string was refused; the position is a byte offset into it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("format is longer than {MAX_FORMAT_LEN} bytes")]
    TooLong,
    #[error(
        "position {0}: '%' does not start a command operator (%NAME%, %NAME(arg)%, %NAME(arg):N%)"
    )]
    Malformed(usize),
    #[error("position {pos}: command operator %{name}% is not supported by legate")]
    Unsupported { pos: usize, name: String },
    #[error("position {pos}: %{name}% {why}")]
    BadArgument {
        pos: usize,
        name: String,
        why: String,
    },
}

/// Parse a text format into pieces.
pub fn parse_format(s: &str) -> Result<Vec<Piece>, FormatError> {
    if s.len() > MAX_FORMAT_LEN {
        return Err(FormatError::TooLong);
    }
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = s;
    let mut pos = 0;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        let start = pos + i;
        let (op, used) = parse_operator(&rest[i..], start)?;
        if !literal.is_empty() {
            out.push(Piece::Literal(Arc::from(std::mem::take(&mut literal))));
        }
        out.push(Piece::Op(op));
        rest = &rest[i + used..];
        pos = start + used;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Piece::Literal(Arc::from(literal)));
    }
    Ok(out)
}

/// One operator at the start of `s` (which starts with `%`), and the bytes it spans.
fn parse_operator(s: &str, pos: usize) -> Result<(Operator, usize), FormatError> {
    let body = &s[1..];
    let name_len = body
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(body.len());
    if name_len == 0 {
        return Err(FormatError::Malformed(pos));
    }
    let name = &body[..name_len];
    let mut cursor = name_len;
    let mut arg = None;
    if body[cursor..].starts_with('(') {
        let close = body[cursor..]
            .find(')')
            .ok_or(FormatError::Malformed(pos))?;
        arg = Some(&body[cursor + 1..cursor + close]);
        cursor += close + 1;
    }
    let mut max_len = None;
    if body[cursor..].starts_with(':') {
        let digits = body[cursor + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(body.len() - cursor - 1);
        let n: usize = body[cursor + 1..cursor + 1 + digits]
            .parse()
            .map_err(|_| FormatError::Malformed(pos))?;
        max_len = Some(n);
        cursor += 1 + digits;
    }
    if !body[cursor..].starts_with('%') {
        return Err(FormatError::Malformed(pos));
    }
    let bad = |why: &str| FormatError::BadArgument {
        pos,
        name: name.to_owned(),
        why: why.to_owned(),
    };
    let no_arg = |k: OpKind| match arg {
        None => Ok(k),
        Some(_) => Err(bad("takes no argument")),
    };
    let kind = match name {
        "START_TIME" => OpKind::StartTime(match arg {
            None | Some("") => TimeFormat::default_format(),
            Some(f) => TimeFormat::parse(f).map_err(|why| bad(&why))?,
        }),
        "REQ" | "RESP" => {
            let arg =
                arg.ok_or_else(|| bad("needs a header name: (NAME) or (NAME?ALTERNATIVE)"))?;
            let (main, alt) = match arg.split_once('?') {
                Some((m, a)) => (m, Some(a)),
                None => (arg, None),
            };
            let main = header_sel(main).map_err(|why| bad(&why))?;
            let alt = alt.map(header_sel).transpose().map_err(|why| bad(&why))?;
            if name == "REQ" {
                OpKind::Req(main, alt)
            } else {
                OpKind::Resp(main, alt)
            }
        }
        "RESPONSE_CODE" => no_arg(OpKind::ResponseCode)?,
        "RESPONSE_FLAGS" => no_arg(OpKind::ResponseFlags)?,
        "RESPONSE_CODE_DETAILS" => no_arg(OpKind::ResponseCodeDetails)?,
        "DURATION" => no_arg(OpKind::Duration)?,
        "REQUEST_DURATION" => no_arg(OpKind::RequestDuration)?,
        "RESPONSE_DURATION" => no_arg(OpKind::ResponseDuration)?,
        "UPSTREAM_HOST" => no_arg(OpKind::UpstreamHost)?,
        "UPSTREAM_CLUSTER" => no_arg(OpKind::UpstreamCluster)?,
        "BYTES_RECEIVED" => no_arg(OpKind::BytesReceived)?,
        "BYTES_SENT" => no_arg(OpKind::BytesSent)?,
        "PROTOCOL" => no_arg(OpKind::Protocol)?,
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(OpKind::DownstreamRemoteAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(OpKind::DownstreamRemoteAddressWithoutPort)?
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(OpKind::DownstreamLocalAddress)?,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_arg(OpKind::DownstreamLocalAddressWithoutPort)?
        }
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(OpKind::UpstreamTransportFailureReason)?,
        "ROUTE_NAME" => no_arg(OpKind::RouteName)?,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(OpKind::UpstreamRequestAttemptCount)?,
        "HOSTNAME" => no_arg(OpKind::Hostname)?,
        "TRACE_ID" => no_arg(OpKind::TraceId)?,
        other => {
            return Err(FormatError::Unsupported {
                pos,
                name: other.to_owned(),
            });
        }
    };
    Ok((Operator { kind, max_len }, cursor + 2))
}

fn header_sel(name: &str) -> Result<HeaderSel, String> {
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        ":method" => HeaderSel::Method,
        ":path" => HeaderSel::Path,
        ":authority" => HeaderSel::Authority,
        ":scheme" => HeaderSel::Scheme,
        "" => return Err("has an empty header name".to_owned()),
        other => HeaderSel::Name(
            HeaderName::from_bytes(other.as_bytes())
                .map_err(|_| format!("'{name}' is not a valid header name"))?,
        ),
    })
}

/// A `%START_TIME(...)%` format: a strftime subset, rendered in UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimeFormat(pub Vec<TimeItem>);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeItem {
    Literal(Arc<str>),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// `%E<n>S`: seconds with `n` fractional digits.
    SecondFrac(u8),
    /// `%<n>f` (`%f` = 9): fractional seconds with `n` digits.
    Frac(u8),
    /// `%s`: seconds since the epoch.
    Epoch,
    DayOfYear,
    /// `%z`: always `+0000` (UTC).
    Offset,
    /// `%Z`: always `UTC`.
    Zone,
}

impl TimeFormat {
    /// Envoy's default: `2016-04-15T20:17:00.310Z`.
    pub fn default_format() -> Self {
        TimeFormat(vec![
            TimeItem::Year,
            TimeItem::Literal(Arc::from("-")),
            TimeItem::Month,
            TimeItem::Literal(Arc::from("-")),
            TimeItem::Day,
            TimeItem::Literal(Arc::from("T")),
            TimeItem::Hour,
            TimeItem::Literal(Arc::from(":")),
            TimeItem::Minute,
            TimeItem::Literal(Arc::from(":")),
            TimeItem::SecondFrac(3),
            TimeItem::Literal(Arc::from("Z")),
        ])
    }

    fn parse(f: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        let mut lit = String::new();
        let mut chars = f.chars().peekable();
        let unsupported = |spec: &str| format!("uses %{spec}, which legate does not support");
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let item = match chars.next() {
                Some('%') => {
                    lit.push('%');
                    continue;
                }
                Some('Y') => TimeItem::Year,
                Some('m') => TimeItem::Month,
                Some('d') => TimeItem::Day,
                Some('H') => TimeItem::Hour,
                Some('M') => TimeItem::Minute,
                Some('S') => TimeItem::Second,
                Some('s') => TimeItem::Epoch,
                Some('j') => TimeItem::DayOfYear,
                Some('z') => TimeItem::Offset,
                Some('Z') => TimeItem::Zone,
                Some('f') => TimeItem::Frac(9),
                Some('F') => {
                    push_lit(&mut items, &mut lit);
                    items.extend([
                        TimeItem::Year,
                        TimeItem::Literal(Arc::from("-")),
                        TimeItem::Month,
                        TimeItem::Literal(Arc::from("-")),
                        TimeItem::Day,
                    ]);
                    continue;
                }
                Some('T') => {
                    push_lit(&mut items, &mut lit);
                    items.extend([
                        TimeItem::Hour,
                        TimeItem::Literal(Arc::from(":")),
                        TimeItem::Minute,
                        TimeItem::Literal(Arc::from(":")),
                        TimeItem::Second,
                    ]);
                    continue;
                }
                Some(d @ '1'..='9') => match chars.next() {
                    Some('f') => TimeItem::Frac(d as u8 - b'0'),
                    _ => return Err(unsupported(&d.to_string())),
                },
                Some('E') => match (chars.next(), chars.next()) {
                    (Some(d @ '1'..='9'), Some('S')) => TimeItem::SecondFrac(d as u8 - b'0'),
                    _ => return Err(unsupported("E")),
                },
                Some(other) => return Err(unsupported(&other.to_string())),
                None => return Err("ends with a lone '%'".to_owned()),
            };
            push_lit(&mut items, &mut lit);
            items.push(item);
        }
        push_lit(&mut items, &mut lit);
        Ok(TimeFormat(items))
    }

    /// Render `since_epoch` (UTC) into `out`.
    pub fn render(&self, since_epoch: std::time::Duration, out: &mut String) {
        use std::fmt::Write;
        let secs = since_epoch.as_secs();
        let nanos = since_epoch.subsec_nanos();
        let days = secs / 86_400;
        let tod = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let frac = |n: u8, out: &mut String| {
            let n = u32::from(n.clamp(1, 9));
            let v = nanos / 10u32.pow(9 - n);
            let _ = write!(out, "{v:0width$}", width = n as usize);
        };
        for item in &self.0 {
            let _ = match item {
                TimeItem::Literal(l) => {
                    out.push_str(l);
                    Ok(())
                }
                TimeItem::Year => write!(out, "{y:04}"),
                TimeItem::Month => write!(out, "{m:02}"),
                TimeItem::Day => write!(out, "{d:02}"),
                TimeItem::Hour => write!(out, "{:02}", tod / 3600),
                TimeItem::Minute => write!(out, "{:02}", tod / 60 % 60),
                TimeItem::Second => write!(out, "{:02}", tod % 60),
                TimeItem::SecondFrac(n) => {
                    let r = write!(out, "{:02}.", tod % 60);
                    frac(*n, out);
                    r
                }
                TimeItem::Frac(n) => {
                    frac(*n, out);
                    Ok(())
                }
                TimeItem::Epoch => write!(out, "{secs}"),
                TimeItem::DayOfYear => {
                    let jan1 = days_from_civil(y, 1, 1);
                    write!(out, "{:03}", days.saturating_sub(jan1) + 1)
                }
                TimeItem::Offset => {
                    out.push_str("+0000");
                    Ok(())
                }
                TimeItem::Zone => {
                    out.push_str("UTC");
                    Ok(())
                }
            };
        }
    }
}

fn push_lit(items: &mut Vec<TimeItem>, lit: &mut String) {
    if !lit.is_empty() {
        items.push(TimeItem::Literal(Arc::from(std::mem::take(lit))));
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ops(s: &str) -> Vec<OpKind> {
        parse_format(s)
            .expect("parses")
            .into_iter()
            .filter_map(|p| match p {
                Piece::Op(o) => Some(o.kind),
                Piece::Literal(_) => None,
            })
            .collect()
    }

    #[test]
    fn default_format_parses() {
        let k = ops(DEFAULT_FORMAT);
        assert_eq!(k.len(), 15);
        assert_eq!(
            k[2],
            OpKind::Req(
                HeaderSel::Name(HeaderName::from_static("x-envoy-original-path")),
                Some(HeaderSel::Path)
            )
        );
    }

    #[test]
    fn operators_and_errors() {
        let p = parse_format("a %REQ(USER-AGENT):5% b %% c").expect_err("refused");
        assert_eq!(p, FormatError::Malformed(24));
        let p = parse_format("x %REQ(USER-AGENT):5%").expect("parses");
        assert_eq!(
            p[1],
            Piece::Op(Operator {
                kind: OpKind::Req(HeaderSel::Name(HeaderName::from_static("user-agent")), None),
                max_len: Some(5)
            })
        );
        assert_eq!(
            parse_format("%DYNAMIC_METADATA(a:b)%")
                .expect_err("refused")
                .to_string(),
            "position 0: command operator %DYNAMIC_METADATA% is not supported by legate"
        );
        assert!(matches!(
            parse_format("%REQ%"),
            Err(FormatError::BadArgument { .. })
        ));
        assert!(matches!(
            parse_format("%DURATION(x)%"),
            Err(FormatError::BadArgument { .. })
        ));
        assert_eq!(parse_format("100%"), Err(FormatError::Malformed(3)));
        assert_eq!(
            parse_format("%START_TIME(%Q)%")
                .expect_err("refused")
                .to_string(),
            "position 0: %START_TIME% uses %Q, which legate does not support"
        );
        assert_eq!(
            parse_format(&"a".repeat(MAX_FORMAT_LEN + 1)),
            Err(FormatError::TooLong)
        );
    }

    #[test]
    fn times_render_in_utc() {
        let t = Duration::new(1_460_751_420, 310_000_000); // 2016-04-15T20:17:00.310Z
        let mut s = String::new();
        TimeFormat::default_format().render(t, &mut s);
        assert_eq!(s, "2016-04-15T20:17:00.310Z");
        let f = TimeFormat::parse("%F %T %s %6f %j %z").expect("parses");
        let mut s = String::new();
        f.render(t, &mut s);
        assert_eq!(s, "2016-04-15 20:17:00 1460751420 310000 106 +0000");
        let mut s = String::new();
        TimeFormat::default_format().render(Duration::new(951_782_400, 0), &mut s);
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }
}
