//! HCM `tracing`: the accepted OpenTelemetry shape converts to [`crate::Tracing`], and every
//! refused field or value is NACKed with its path.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{
    EnvoyGrpc, GoogleGrpc, TargetSpecifier,
};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TracingHttp;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag as XdsCustomTag;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::{
    Header, Literal, Metadata, Type as TagType,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as XdsDuration};

use super::{Resources, any, base, edit_hcm, errors, ok};
use crate::{CustomTag, CustomTagValue, type_url};

const AT: &str = "listener 'l1': filter_chains[0].filters[0].typed_config.tracing";

fn otel_config(cluster: &str) -> OpenTelemetryConfig {
    OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: cluster.to_owned(),
                ..Default::default()
            })),
            timeout: Some(XdsDuration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        }),
        service_name: "checkout".to_owned(),
        ..Default::default()
    }
}

fn provider(config: &OpenTelemetryConfig) -> Option<TracingHttp> {
    Some(TracingHttp {
        name: "envoy.tracers.opentelemetry".to_owned(),
        config_type: Some(ConfigType::TypedConfig(any(
            type_url::OPENTELEMETRY_CONFIG,
            config,
        ))),
    })
}

fn tracing(config: &OpenTelemetryConfig) -> HcmTracing {
    HcmTracing {
        provider: provider(config),
        random_sampling: Some(Percent { value: 10.0 }),
        ..Default::default()
    }
}

fn with_tracing(t: HcmTracing) -> Resources {
    let mut r = base();
    edit_hcm(&mut r, |h| h.tracing = Some(t));
    r
}

#[test]
fn the_opentelemetry_provider_converts_with_envoys_defaults() {
    let mut t = tracing(&otel_config("static"));
    t.overall_sampling = Some(Percent { value: 0.5 });
    t.spawn_upstream_span = Some(BoolValue { value: true });
    t.custom_tags = vec![
        XdsCustomTag {
            tag: "team".to_owned(),
            r#type: Some(TagType::Literal(Literal {
                value: "payments".to_owned(),
            })),
        },
        XdsCustomTag {
            tag: "tenant".to_owned(),
            r#type: Some(TagType::RequestHeader(Header {
                name: "x-tenant".to_owned(),
                default_value: "none".to_owned(),
            })),
        },
    ];
    let s = ok(&with_tracing(t));
    let got = s.listeners[0]
        .tracing
        .as_deref()
        .expect("tracing converted");
    assert_eq!(&*got.collector_cluster, "static");
    assert_eq!(&*got.service_name, "checkout");
    assert_eq!(got.export_timeout, Some(Duration::from_secs(2)));
    assert_eq!(got.random_sampling_ppm, 100_000);
    // Unset percentages are Envoy's default, 100 %.
    assert_eq!(got.client_sampling_ppm, 1_000_000);
    assert_eq!(got.overall_sampling_ppm, 5_000);
    assert!(got.spawn_upstream_span);
    assert_eq!(
        got.custom_tags,
        vec![
            CustomTag {
                tag: Arc::from("team"),
                value: CustomTagValue::Literal(Arc::from("payments")),
            },
            CustomTag {
                tag: Arc::from("tenant"),
                value: CustomTagValue::RequestHeader {
                    name: http::HeaderName::from_static("x-tenant"),
                    default_value: Arc::from("none"),
                },
            },
        ]
    );
    // Without `tracing`, nothing is traced.
    assert!(ok(&base()).listeners[0].tracing.is_none());
}

#[test]
fn refused_tracing_fields_are_nacked_with_their_path() {
    type Edit = fn(&mut HcmTracing, &mut OpenTelemetryConfig);
    let cases: Vec<(Edit, String)> = vec![
        (
            |t, _| t.provider = None,
            format!("{AT}.provider: required (legate supports envoy.tracers.opentelemetry)"),
        ),
        (
            |t, _| t.random_sampling = Some(Percent { value: 101.0 }),
            format!("{AT}.random_sampling: 101 is not between 0 and 100"),
        ),
        (
            |t, _| t.no_context_propagation = true,
            format!(
                "{AT}.no_context_propagation: not supported by legate (trace context always goes upstream)"
            ),
        ),
        (
            |t, _| {
                t.custom_tags = vec![XdsCustomTag {
                    tag: "m".to_owned(),
                    r#type: Some(TagType::Metadata(Metadata::default())),
                }]
            },
            format!(
                "{AT}.custom_tags[0].metadata: not supported by legate (literal, environment and request_header are)"
            ),
        ),
        (
            |t, _| {
                t.custom_tags = vec![XdsCustomTag {
                    tag: "h".to_owned(),
                    r#type: Some(TagType::RequestHeader(Header {
                        name: "bad header".to_owned(),
                        default_value: String::new(),
                    })),
                }]
            },
            format!("{AT}.custom_tags[0].request_header.name: 'bad header' is not a header name"),
        ),
        (
            |_, c| {
                c.grpc_service = Some(GrpcService {
                    target_specifier: Some(TargetSpecifier::GoogleGrpc(GoogleGrpc::default())),
                    ..Default::default()
                })
            },
            format!(
                "{AT}.provider.typed_config.grpc_service.google_grpc: not supported by legate (use envoy_grpc with a cluster)"
            ),
        ),
        (
            |_, c| c.grpc_service = None,
            format!(
                "{AT}.provider.typed_config.grpc_service: required (legate exports over OTLP/gRPC)"
            ),
        ),
        (
            |_, c| c.set_instrumentation_scope = Some(BoolValue { value: false }),
            format!(
                "{AT}.provider.typed_config.set_instrumentation_scope: only true (the default) is supported by legate"
            ),
        ),
    ];
    for (edit, expected) in cases {
        let mut config = otel_config("static");
        let mut t = tracing(&config);
        edit(&mut t, &mut config);
        if t.provider.is_some() {
            t.provider = provider(&config);
        }
        assert_eq!(errors(&with_tracing(t)), vec![expected]);
    }
}

#[test]
fn the_collector_must_be_a_known_cluster_and_the_provider_opentelemetry() {
    let errs = errors(&with_tracing(tracing(&otel_config("nowhere"))));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("grpc_service.envoy_grpc.cluster_name") && errs[0].contains("nowhere"),
        "{errs:?}"
    );
    let mut t = tracing(&otel_config("static"));
    t.provider = Some(TracingHttp {
        name: "envoy.tracers.zipkin".to_owned(),
        config_type: Some(ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            &OpenTelemetryConfig::default(),
        ))),
    });
    assert_eq!(
        errors(&with_tracing(t)),
        vec![format!(
            "{AT}.provider.typed_config: tracing provider 'type.googleapis.com/envoy.config.trace.v3.ZipkinConfig' is not supported by legate (only envoy.tracers.opentelemetry)"
        )]
    );
}
