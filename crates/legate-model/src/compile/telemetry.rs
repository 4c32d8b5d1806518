//! The mesh's `telemetry` section compiled: `tracing` → HCM `tracing` (OpenTelemetry over the
//! collector's cluster) and that cluster; `access_log` → HCM `access_log` with the file logger.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as XdsAccessLog, access_log as xds_access_log};
use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TracingProvider;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::BoolValue;

use crate::model::{
    COLLECTOR_CLUSTER, Cluster, Discovery, Endpoint, LbPolicy, Telemetry, TracingSpec,
    UpstreamProtocol,
};

/// Envoy's name for the OpenTelemetry tracer.
const OPENTELEMETRY: &str = "envoy.tracers.opentelemetry";

/// The HCM `tracing` every listener gets.
pub(crate) fn hcm_tracing(t: &TracingSpec) -> Tracing {
    let otel = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: COLLECTOR_CLUSTER.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        service_name: t
            .service_name
            .clone()
            .unwrap_or_else(|| "legate".to_owned()),
        ..Default::default()
    };
    Tracing {
        random_sampling: t.sampling.map(|value| Percent { value }),
        provider: Some(TracingProvider {
            name: OPENTELEMETRY.to_owned(),
            config_type: Some(ConfigType::TypedConfig(super::any(
                legate_snapshot::type_url::OPENTELEMETRY_CONFIG,
                &otel,
            ))),
        }),
        // One span per upstream attempt, so retries and hedges show.
        spawn_upstream_span: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The collector's cluster: HTTP/2 (gRPC), static for an `ip:port`, else re-resolved.
pub(crate) fn collector_cluster(t: &TracingSpec) -> Cluster {
    let discovery = if t.collector.parse::<std::net::SocketAddr>().is_ok() {
        Discovery::Static
    } else {
        Discovery::StrictDns
    };
    Cluster {
        name: COLLECTOR_CLUSTER.to_owned(),
        discovery,
        lb_policy: LbPolicy::RoundRobin,
        protocol: UpstreamProtocol::Http2,
        connect_timeout: None,
        idle_timeout: None,
        max_requests_per_connection: None,
        dns_refresh_rate: None,
        circuit_breakers: None,
        outlier_detection: None,
        health_check: None,
        panic_threshold: None,
        breaker: None,
        tls: None,
        endpoints: vec![Endpoint {
            address: t.collector.clone(),
            weight: 1,
        }],
    }
}

/// `telemetry.access_log` as Envoy's file logger.
pub(crate) fn access_logs(t: Option<&Telemetry>) -> Vec<XdsAccessLog> {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, SubstitutionFormatString, data_source,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let Some(a) = t.and_then(|t| t.access_log.as_ref()) else {
        return Vec::new();
    };
    let format = match (&a.json, &a.format) {
        (Some(j), _) => Some(Format::JsonFormat(Struct {
            fields: j
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value {
                            kind: Some(Kind::StringValue(v.clone())),
                        },
                    )
                })
                .collect(),
        })),
        (None, Some(f)) => Some(Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(f.clone())),
            ..Default::default()
        })),
        (None, None) => None,
    };
    vec![XdsAccessLog {
        name: super::names::FILE_ACCESS_LOG.to_owned(),
        filter: None,
        config_type: Some(xds_access_log::ConfigType::TypedConfig(super::any(
            legate_snapshot::type_url::FILE_ACCESS_LOG,
            &FileAccessLog {
                path: a.path.clone(),
                access_log_format: format.map(|format| {
                    AccessLogFormat::LogFormat(SubstitutionFormatString {
                        format: Some(format),
                        ..Default::default()
                    })
                }),
            },
        ))),
    }]
}
