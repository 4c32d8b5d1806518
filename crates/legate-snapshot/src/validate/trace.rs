//! HCM `tracing`: the OpenTelemetry provider, sampling percentages and custom tags.
//!
//! Only `envoy.tracers.opentelemetry` over `grpc_service.envoy_grpc` is honoured; every other
//! provider, exporter and option that would change what is traced is refused with its path.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::GrpcService as XdsGrpcService;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{
    EnvoyGrpc as XdsEnvoyGrpc, TargetSpecifier,
};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig as XdsOpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as XdsTracingHttp;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as XdsProviderConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as XdsTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag as XdsCustomTag;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::{
    Environment as XdsEnvironment, Header as XdsHeader, Literal as XdsLiteral, Type as XdsTagType,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::Message;

use super::common::{Ctx, at, join, refuse, timeout};
use super::route::ClusterRef;
use crate::{CustomTag, CustomTagValue, Tracing, type_url};

/// Parts per million for 100%: Envoy's default for all three sampling percentages.
const PPM_ALL: u32 = 1_000_000;

/// At most this many custom tags per HCM.
const MAX_CUSTOM_TAGS: usize = 64;

/// HCM `tracing`. `refs` receives the collector cluster, checked against the whole set.
pub(super) fn tracing(
    cx: &mut Ctx,
    field: &str,
    t: &XdsTracing,
    refs: &mut Vec<ClusterRef>,
) -> Option<Arc<Tracing>> {
    let XdsTracing {
        client_sampling,
        random_sampling,
        overall_sampling,
        // Ignored: verbose adds span logs for filter events legate does not have.
        verbose: _,
        max_path_tag_length,
        custom_tags,
        provider,
        spawn_upstream_span,
        operation,
        upstream_operation,
        no_context_propagation,
    } = t;
    // Span names are the method (OpenTelemetry's HTTP conventions); formats are not read.
    refuse!(cx, field; max_path_tag_length, operation, upstream_operation);
    if *no_context_propagation {
        cx.err(
            join(field, "no_context_propagation"),
            "not supported by legate (trace context always goes upstream)",
        );
    }
    let sampling = |cx: &mut Ctx, name: &str, p: &Option<Percent>| match p {
        Some(p) => percent_ppm(cx, &join(field, name), p).unwrap_or(PPM_ALL),
        None => PPM_ALL,
    };
    let random_sampling_ppm = sampling(cx, "random_sampling", random_sampling);
    let client_sampling_ppm = sampling(cx, "client_sampling", client_sampling);
    let overall_sampling_ppm = sampling(cx, "overall_sampling", overall_sampling);
    if custom_tags.len() > MAX_CUSTOM_TAGS {
        cx.err(
            join(field, "custom_tags"),
            format!("at most {MAX_CUSTOM_TAGS} custom tags"),
        );
    }
    let custom_tags = custom_tags
        .iter()
        .take(MAX_CUSTOM_TAGS)
        .enumerate()
        .filter_map(|(i, tag)| custom_tag(cx, &at(field, "custom_tags", i), tag))
        .collect();
    let pfield = join(field, "provider");
    let Some(XdsTracingHttp {
        name: _,
        config_type,
    }) = provider
    else {
        // Envoy traces nothing without a provider; neither does legate.
        cx.err(
            pfield,
            "required (legate supports envoy.tracers.opentelemetry)",
        );
        return None;
    };
    let cfield = join(&pfield, "typed_config");
    let Some(XdsProviderConfig::TypedConfig(Any { type_url, value })) = config_type else {
        cx.err(cfield, "required");
        return None;
    };
    if type_url != type_url::OPENTELEMETRY_CONFIG {
        cx.err(
            cfield,
            format!(
                "tracing provider '{type_url}' is not supported by legate (only envoy.tracers.opentelemetry)"
            ),
        );
        return None;
    }
    let otel = match XdsOpenTelemetryConfig::decode(value.as_slice()) {
        Ok(o) => o,
        Err(e) => {
            cx.err(cfield, format!("cannot decode OpenTelemetryConfig: {e}"));
            return None;
        }
    };
    let XdsOpenTelemetryConfig {
        grpc_service,
        http_service,
        exporter,
        service_name,
        resource_detectors,
        sampler,
        // Ignored: a bound on spans buffered per flush; legate's queue has its own bound.
        max_cache_size: _,
        set_telemetry_sdk_resource_attributes,
        set_service_name_resource_attribute,
        set_instrumentation_scope,
    } = &otel;
    refuse!(cx, &cfield; http_service, exporter, resource_detectors, sampler);
    for (name, v) in [
        (
            "set_telemetry_sdk_resource_attributes",
            set_telemetry_sdk_resource_attributes,
        ),
        (
            "set_service_name_resource_attribute",
            set_service_name_resource_attribute,
        ),
        ("set_instrumentation_scope", set_instrumentation_scope),
    ] {
        if matches!(v, Some(BoolValue { value: false })) {
            cx.err(
                join(&cfield, name),
                "only true (the default) is supported by legate",
            );
        }
    }
    let gfield = join(&cfield, "grpc_service");
    let Some(XdsGrpcService {
        timeout: export_timeout,
        initial_metadata,
        retry_policy,
        target_specifier,
    }) = grpc_service
    else {
        cx.err(gfield, "required (legate exports over OTLP/gRPC)");
        return None;
    };
    refuse!(cx, &gfield; initial_metadata, retry_policy);
    let export_timeout = timeout(cx, &join(&gfield, "timeout"), export_timeout, None);
    let efield = join(&gfield, "envoy_grpc");
    let cluster: Arc<str> = match target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(XdsEnvoyGrpc {
            cluster_name,
            authority,
            retry_policy,
            max_receive_message_length,
            skip_envoy_headers: _,
        })) => {
            refuse!(cx, &efield; authority, retry_policy, max_receive_message_length);
            let nfield = join(&efield, "cluster_name");
            if cluster_name.is_empty() {
                cx.err(nfield, "must not be empty");
                return None;
            }
            let name: Arc<str> = Arc::from(cluster_name.as_str());
            refs.push(ClusterRef {
                field: nfield,
                cluster: name.clone(),
            });
            name
        }
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            cx.err(
                join(&gfield, "google_grpc"),
                "not supported by legate (use envoy_grpc with a cluster)",
            );
            return None;
        }
        None => {
            cx.err(efield, "required");
            return None;
        }
    };
    let spawn_upstream_span = matches!(spawn_upstream_span, Some(BoolValue { value: true }));
    Some(Arc::new(Tracing {
        collector_cluster: cluster,
        export_timeout,
        service_name: Arc::from(service_name.as_str()),
        random_sampling_ppm,
        client_sampling_ppm,
        overall_sampling_ppm,
        custom_tags,
        spawn_upstream_span,
    }))
}

fn custom_tag(cx: &mut Ctx, field: &str, t: &XdsCustomTag) -> Option<CustomTag> {
    let XdsCustomTag { tag, r#type } = t;
    if tag.is_empty() {
        cx.err(join(field, "tag"), "must not be empty");
    }
    let value = match r#type {
        Some(XdsTagType::Literal(XdsLiteral { value })) => {
            CustomTagValue::Literal(Arc::from(value.as_str()))
        }
        Some(XdsTagType::Environment(XdsEnvironment {
            name,
            default_value,
        })) => CustomTagValue::Environment {
            name: Arc::from(name.as_str()),
            default_value: Arc::from(default_value.as_str()),
        },
        Some(XdsTagType::RequestHeader(XdsHeader {
            name,
            default_value,
        })) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => CustomTagValue::RequestHeader {
                name,
                default_value: Arc::from(default_value.as_str()),
            },
            Err(_) => {
                cx.err(
                    join(field, "request_header.name"),
                    format!("'{name}' is not a header name"),
                );
                return None;
            }
        },
        Some(XdsTagType::Metadata(_)) => {
            cx.err(
                join(field, "metadata"),
                "not supported by legate (literal, environment and request_header are)",
            );
            return None;
        }
        Some(XdsTagType::Value(_)) => {
            cx.err(
                join(field, "value"),
                "not supported by legate (literal, environment and request_header are)",
            );
            return None;
        }
        None => {
            cx.err(
                field,
                "one of literal, environment or request_header is required",
            );
            return None;
        }
    };
    (!tag.is_empty()).then(|| CustomTag {
        tag: Arc::from(tag.as_str()),
        value,
    })
}

/// A `type.v3.Percent` in parts per million, rounded to the nearest.
fn percent_ppm(cx: &mut Ctx, field: &str, p: &Percent) -> Option<u32> {
    let Percent { value } = *p;
    if !(0.0..=100.0).contains(&value) {
        cx.err(field, format!("{value} is not between 0 and 100"));
        return None;
    }
    // In 0..=1_000_000 by the check above.
    Some((value * 10_000.0).round() as u32)
}
