//! The mesh's `telemetry` section: what every listener reports. `access_log` is compiled
//! to Envoy's HCM `access_log` with the file logger; tracing (OTLP) is configured beside
//! it, in its own part of this section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// An access log on every listener of the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSettings>,
}

/// Compiled to `envoy.access_loggers.file` (`FileAccessLog`) on each listener's HCM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSettings {
    /// A file, or `/dev/stdout` / `/dev/stderr`.
    pub path: String,
    /// An Envoy format string (`log_format.text_format_source`); Envoy's default format
    /// when neither this nor `json` is given. Add the trailing newline yourself, as in Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A JSON line per request: keys to format strings (`log_format.json_format`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<BTreeMap<String, String>>,
}
