//! Envoy's file access logger on the HCM, as tests configure it, and reading its lines back.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString, data_source};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::eventually;

/// The type URL of `FileAccessLog`.
pub const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// `envoy.access_loggers.file` writing to `path` with the text `format`; `None`: Envoy's
/// default format.
pub fn file_log_with(path: &Path, format: Option<&str>) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".to_owned(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: FILE_ACCESS_LOG.to_owned(),
            value: FileAccessLog {
                path: path.display().to_string(),
                access_log_format: format.map(|f| {
                    AccessLogFormat::LogFormat(SubstitutionFormatString {
                        format: Some(Format::TextFormatSource(DataSource {
                            specifier: Some(data_source::Specifier::InlineString(f.to_owned())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                }),
            }
            .encode_to_vec(),
        })),
    }
}

/// `envoy.access_loggers.file` writing to `path` with the text `format`.
pub fn file_log(path: &Path, format: &str) -> AccessLog {
    file_log_with(path, Some(format))
}

/// The first line of `path` that `pick` accepts, once it is written (10 s at most).
pub async fn line_where(path: &Path, what: &str, pick: impl Fn(&str) -> bool) -> String {
    eventually(Duration::from_secs(10), what, || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .find(|l| pick(l))
            .map(str::to_owned)
            .ok_or_else(|| format!("not in {}: {text:?}", path.display()))
    })
    .await
}

/// A line in Envoy's default format split into its fields: `[start]` and each `"quoted"`
/// field are one field (without their brackets or quotes), the rest split at spaces.
pub fn default_format_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = line.trim_end_matches('\n');
    while let Some(c) = rest.chars().next() {
        let (field, after) = match c {
            ' ' => {
                rest = &rest[1..];
                continue;
            }
            '[' | '"' => {
                let close = if c == '[' { ']' } else { '"' };
                match rest[1..].find(close) {
                    Some(end) => (&rest[1..=end], &rest[end + 2..]),
                    None => (&rest[1..], ""),
                }
            }
            _ => match rest.find(' ') {
                Some(end) => (&rest[..end], &rest[end..]),
                None => (rest, ""),
            },
        };
        fields.push(field.to_owned());
        rest = after;
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_lines_split_into_fields() {
        let line = "[2026-12-07T06:00:00.123Z] \"GET /a?b=c HTTP/1.1\" 503 UH 0 19 0 - \"-\" \"-\" \
                    \"ab-cd\" \"127.0.0.1:1\" \"-\"\n";
        assert_eq!(
            default_format_fields(line),
            [
                "2026-12-07T06:00:00.123Z",
                "GET /a?b=c HTTP/1.1",
                "503",
                "UH",
                "0",
                "19",
                "0",
                "-",
                "-",
                "-",
                "ab-cd",
                "127.0.0.1:1",
                "-"
            ]
        );
    }
}
