//! The mesh's `telemetry` section: what every listener reports, compiled to Envoy's own
//! fields (HCM `tracing` with `envoy.tracers.opentelemetry`) so any proxy reading them
//! behaves the same.

use serde::{Deserialize, Serialize};

/// `telemetry`: tracing (and, separately, access logs) for every listener of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
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
