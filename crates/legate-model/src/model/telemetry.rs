//! The mesh's `telemetry` section: what every listener reports, compiled to Envoy's own
//! fields so any proxy reading them behaves the same: `tracing` to HCM `tracing` with
//! `envoy.tracers.opentelemetry`, `access_log` to HCM `access_log` with the file logger.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `telemetry`: tracing and access logs for every listener of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
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

/// `telemetry.tracing`: spans exported over OTLP/gRPC to one collector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The OTLP/gRPC collector, `host:port` or `ip:port`; compiled to a cluster named
    /// [`COLLECTOR_CLUSTER`].
    pub collector: String,
    /// Share of requests traced when no parent decided, as `1%` or a number of percent
    /// (0 to 100); 100% when unset. Compiled to `random_sampling`.
    #[serde(
        default,
        deserialize_with = "percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub sampling: Option<f64>,
    /// `service.name` on every span; `legate` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// The cluster `telemetry.tracing.collector` compiles to.
pub const COLLECTOR_CLUSTER: &str = "legate-trace-collector";

fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    let value = match Raw::deserialize(d)? {
        Raw::Number(n) => n,
        Raw::Text(t) => t
            .trim()
            .strip_suffix('%')
            .unwrap_or(t.trim())
            .trim()
            .parse::<f64>()
            .map_err(|_| {
                serde::de::Error::custom(format!("'{t}' is not a percentage such as 1%"))
            })?,
    };
    if !(0.0..=100.0).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "{value}% is not between 0% and 100%"
        )));
    }
    Ok(Some(value))
}
