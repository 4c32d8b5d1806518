//! HCM `access_log`: the file logger with each way of giving its format, and the exact
//! NACK text of what legate refuses.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as XdsAccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString, data_source};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use prost::Message;

use super::{base, edit_hcm, errors, ok};
use crate::access_log::{DEFAULT_FORMAT, JsonValue, LogFormat, OpKind, parse_format};
use crate::type_url;

fn file_log(path: &str, format: Option<AccessLogFormat>) -> XdsAccessLog {
    XdsAccessLog {
        name: "envoy.access_loggers.file".to_owned(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: type_url::FILE_ACCESS_LOG.to_owned(),
            value: FileAccessLog {
                path: path.to_owned(),
                access_log_format: format,
            }
            .encode_to_vec(),
        })),
    }
}

fn text_source(s: &str) -> Option<AccessLogFormat> {
    Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
        format: Some(Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(s.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    }))
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

#[test]
fn file_logger_formats_compile() {
    let mut r = base();
    let json = Struct {
        fields: HashMap::from([
            ("code".to_owned(), string("%RESPONSE_CODE%")),
            ("line".to_owned(), string("%REQ(:METHOD)% %REQ(:PATH)%")),
        ]),
    };
    #[allow(deprecated)]
    edit_hcm(&mut r, |h| {
        h.access_log = vec![
            file_log("/dev/stdout", None),
            file_log("/tmp/a.log", text_source("%RESPONSE_FLAGS% %DURATION%\n")),
            file_log(
                "/tmp/b.log",
                Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
                    format: Some(Format::JsonFormat(json)),
                    ..Default::default()
                })),
            ),
            file_log(
                "/tmp/c.log",
                Some(AccessLogFormat::Format("%PROTOCOL%\n".to_owned())),
            ),
        ]
    });
    let s = ok(&r);
    let logs = &s.listeners[0].access_logs;
    assert_eq!(logs.len(), 4);
    assert_eq!(&*logs[0].path, "/dev/stdout");
    assert_eq!(
        logs[0].format,
        LogFormat::Text(parse_format(DEFAULT_FORMAT).expect("parses"))
    );
    assert_eq!(
        logs[1].format,
        LogFormat::Text(parse_format("%RESPONSE_FLAGS% %DURATION%\n").expect("parses"))
    );
    let LogFormat::Json(fields) = &logs[2].format else {
        panic!("json format expected");
    };
    assert_eq!(&*fields[0].0, "code");
    assert!(matches!(&fields[0].1, JsonValue::Typed(op) if op.kind == OpKind::ResponseCode));
    assert!(matches!(&fields[1].1, JsonValue::Text(p) if p.len() == 3));
}

#[test]
fn unsupported_access_logs_are_refused_with_their_field() {
    let hcm = "filter_chains[0].filters[0].typed_config";
    let mut r = base();
    edit_hcm(&mut r, |h| {
        h.access_log = vec![file_log(
            "/tmp/x.log",
            text_source("[%START_TIME%] %DYNAMIC_METADATA(a:b)%\n"),
        )]
    });
    assert_eq!(
        errors(&r),
        vec![format!(
            "listener 'l1': {hcm}.access_log[0].typed_config.log_format.text_format_source: \
             position 15: command operator %DYNAMIC_METADATA% is not supported by legate"
        )]
    );

    let mut r = base();
    edit_hcm(&mut r, |h| {
        let mut grpc = file_log("/x", None);
        if let Some(access_log::ConfigType::TypedConfig(a)) = &mut grpc.config_type {
            a.type_url =
                "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
                    .to_owned();
        }
        let mut filtered = file_log("/y", None);
        filtered.filter = Some(Default::default());
        h.access_log = vec![grpc, filtered, file_log("", None)];
    });
    assert_eq!(
        errors(&r),
        vec![
            format!(
                "listener 'l1': {hcm}.access_log[0].typed_config: access logger \
                 type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig \
                 is not supported by legate (only {})",
                type_url::FILE_ACCESS_LOG
            ),
            format!("listener 'l1': {hcm}.access_log[1].filter: not supported by legate"),
            format!("listener 'l1': {hcm}.access_log[2].typed_config.path: must not be empty"),
        ]
    );

    let mut r = base();
    let json = Struct {
        fields: HashMap::from([
            (
                "n".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(1.0)),
                },
            ),
            ("x".to_owned(), string("%BAD_THING%")),
        ]),
    };
    #[allow(deprecated)]
    edit_hcm(&mut r, |h| {
        h.access_log = vec![file_log("/z", Some(AccessLogFormat::JsonFormat(json)))]
    });
    assert_eq!(
        errors(&r),
        vec![
            format!(
                "listener 'l1': {hcm}.access_log[0].typed_config.json_format.n: must be a \
                 format string or an object, not a number"
            ),
            format!(
                "listener 'l1': {hcm}.access_log[0].typed_config.json_format.x: position 0: \
                 command operator %BAD_THING% is not supported by legate"
            ),
        ]
    );
}
