//! `telemetry.tracing` → HCM `tracing` (OpenTelemetry over the collector's cluster) and that
//! cluster.

use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TracingProvider;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::BoolValue;

use crate::model::{
    COLLECTOR_CLUSTER, Cluster, Discovery, Endpoint, LbPolicy, TracingSpec, UpstreamProtocol,
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
