//! HCM `access_log` → [`AccessLog`]s: the file logger (`envoy.access_loggers.file`) with
//! its text or JSON format, compiled once here. Other loggers, filters and format options
//! legate does not implement are refused with their field path.

use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as XdsAccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as XdsFormat;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource as XdsDataSource, SubstitutionFormatString as XdsSubstitutionFormatString,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog as XdsFileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;

use super::common::{Ctx, at, join, refuse, struct_fields, value_kind};
use crate::access_log::{self as fmt, AccessLog, JsonValue, LogFormat, Piece};
use crate::type_url;

/// Deepest nesting of a JSON format accepted.
const MAX_JSON_DEPTH: usize = 8;
/// Access logs per listener.
const MAX_ACCESS_LOGS: usize = 16;

pub(super) fn access_logs(cx: &mut Ctx, field: &str, logs: &[XdsAccessLog]) -> Vec<Arc<AccessLog>> {
    if logs.len() > MAX_ACCESS_LOGS {
        cx.err(
            join(field, "access_log"),
            format!("at most {MAX_ACCESS_LOGS} access logs per listener"),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let f = at(field, "access_log", i);
        let XdsAccessLog {
            // The extension name is informational; the typed config decides, as in Envoy.
            name: _,
            filter,
            config_type,
        } = l;
        refuse!(cx, &f; filter);
        match config_type {
            Some(access_log::ConfigType::TypedConfig(Any { type_url, value }))
                if type_url == type_url::FILE_ACCESS_LOG =>
            {
                let tf = join(&f, "typed_config");
                match XdsFileAccessLog::decode(value.as_slice()) {
                    Ok(file) => {
                        if let Some(log) = file_log(cx, &tf, &file) {
                            out.push(Arc::new(log));
                        }
                    }
                    Err(e) => cx.err(tf, format!("cannot decode FileAccessLog: {e}")),
                }
            }
            Some(access_log::ConfigType::TypedConfig(Any { type_url, .. })) => cx.err(
                join(&f, "typed_config"),
                format!(
                    "access logger {type_url} is not supported by legate (only {})",
                    type_url::FILE_ACCESS_LOG
                ),
            ),
            None => cx.err(join(&f, "typed_config"), "required"),
        }
    }
    out
}

#[allow(deprecated)]
fn file_log(cx: &mut Ctx, field: &str, f: &XdsFileAccessLog) -> Option<AccessLog> {
    let XdsFileAccessLog {
        path,
        access_log_format,
    } = f;
    let errors = cx.error_count();
    if path.is_empty() {
        cx.err(join(field, "path"), "must not be empty");
    } else if path.len() > 4096 || path.contains('\0') {
        cx.err(
            join(field, "path"),
            "must be a file path of at most 4096 bytes",
        );
    }
    let format = match access_log_format {
        None => text(cx, &join(field, "path"), fmt::DEFAULT_FORMAT),
        Some(AccessLogFormat::Format(s)) if s.is_empty() => {
            text(cx, &join(field, "format"), fmt::DEFAULT_FORMAT)
        }
        Some(AccessLogFormat::Format(s)) => text(cx, &join(field, "format"), s),
        Some(AccessLogFormat::JsonFormat(s)) => json(cx, &join(field, "json_format"), s),
        Some(AccessLogFormat::TypedJsonFormat(s)) => json(cx, &join(field, "typed_json_format"), s),
        Some(AccessLogFormat::LogFormat(s)) => substitution(cx, &join(field, "log_format"), s),
    };
    let format = format?;
    (cx.error_count() == errors).then(|| AccessLog {
        path: Arc::from(path.as_str()),
        format,
    })
}

#[allow(deprecated)]
fn substitution(cx: &mut Ctx, field: &str, s: &XdsSubstitutionFormatString) -> Option<LogFormat> {
    let XdsSubstitutionFormatString {
        omit_empty_values,
        content_type,
        formatters,
        json_format_options,
        format,
    } = s;
    refuse!(cx, field; omit_empty_values, content_type, formatters, json_format_options);
    match format {
        Some(XdsFormat::TextFormat(t)) => text(cx, &join(field, "text_format"), t),
        Some(XdsFormat::JsonFormat(j)) => json(cx, &join(field, "json_format"), j),
        Some(XdsFormat::TextFormatSource(src)) => {
            let f = join(field, "text_format_source");
            let t = inline_text(cx, &f, src)?;
            text(cx, &f, &t)
        }
        None => text(cx, field, fmt::DEFAULT_FORMAT),
    }
}

/// An inline data source's text. Files and environment variables are refused: the
/// snapshot reads nothing from the host.
fn inline_text(cx: &mut Ctx, field: &str, d: &XdsDataSource) -> Option<String> {
    let XdsDataSource {
        watched_directory,
        specifier,
    } = d;
    refuse!(cx, field; watched_directory);
    match specifier {
        Some(Specifier::InlineString(s)) => Some(s.clone()),
        Some(Specifier::InlineBytes(b)) => match String::from_utf8(b.clone()) {
            Ok(s) => Some(s),
            Err(_) => {
                cx.err(join(field, "inline_bytes"), "must be UTF-8");
                None
            }
        },
        Some(Specifier::Filename(_)) => {
            cx.err(
                join(field, "filename"),
                "not supported by legate (use inline_string)",
            );
            None
        }
        Some(Specifier::EnvironmentVariable(_)) => {
            cx.err(
                join(field, "environment_variable"),
                "not supported by legate (use inline_string)",
            );
            None
        }
        None => {
            cx.err(field, "one of inline_string or inline_bytes is required");
            None
        }
    }
}

fn text(cx: &mut Ctx, field: &str, s: &str) -> Option<LogFormat> {
    match fmt::parse_format(s) {
        Ok(p) => Some(LogFormat::Text(p)),
        Err(e) => {
            cx.err(field, e.to_string());
            None
        }
    }
}

fn json(cx: &mut Ctx, field: &str, s: &Struct) -> Option<LogFormat> {
    if s.fields.is_empty() {
        cx.err(field, "must have at least one key");
        return None;
    }
    json_object(cx, field, s, 0).map(LogFormat::Json)
}

fn json_object(
    cx: &mut Ctx,
    field: &str,
    s: &Struct,
    depth: usize,
) -> Option<Vec<(Arc<str>, JsonValue)>> {
    if depth >= MAX_JSON_DEPTH {
        cx.err(field, format!("nested deeper than {MAX_JSON_DEPTH} levels"));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (path, key, v) in struct_fields(field, s) {
        let value = match &v.kind {
            Some(Kind::StringValue(t)) => match fmt::parse_format(t) {
                Ok(mut pieces) => Some(match pieces.as_slice() {
                    [Piece::Op(_)] => match pieces.pop() {
                        Some(Piece::Op(op)) => JsonValue::Typed(op),
                        _ => JsonValue::Text(pieces),
                    },
                    _ => JsonValue::Text(pieces),
                }),
                Err(e) => {
                    cx.err(&path, e.to_string());
                    None
                }
            },
            Some(Kind::StructValue(inner)) => {
                json_object(cx, &path, inner, depth + 1).map(JsonValue::Object)
            }
            _ => {
                cx.err(
                    &path,
                    format!(
                        "must be a format string or an object, not {}",
                        value_kind(v)
                    ),
                );
                None
            }
        };
        match value {
            Some(v) => out.push((Arc::from(key), v)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
