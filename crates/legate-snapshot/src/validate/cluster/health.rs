//! `health_checks`: active HTTP and TCP (connect-only) checks.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::health_check::{
    HealthChecker, HttpHealthCheck as XdsHttpHealthCheck, TcpHealthCheck as XdsTcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck as XdsHealthCheck, RequestMethod};
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range};
use envoy_types::pb::google::protobuf::{Duration as XdsDuration, UInt32Value};

use super::super::common::{
    Ctx, at, enum_value, headers_to_add, headers_to_remove, join, positive_duration, refuse,
};
use crate::{HealthCheck, HealthCheckKind, HttpHealthCheck};

/// Envoy's default `expected_statuses`: 200 only.
const DEFAULT_EXPECTED_STATUSES: (u16, u16) = (200, 201);

pub(super) fn health_check(cx: &mut Ctx, field: &str, h: &XdsHealthCheck) -> Option<HealthCheck> {
    let XdsHealthCheck {
        timeout,
        interval,
        initial_jitter,
        interval_jitter,
        interval_jitter_percent,
        unhealthy_threshold,
        healthy_threshold,
        alt_port,
        // Accepted and ignored: legate opens a fresh connection for every check.
        reuse_connection: _,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        // Ignored: health check event logging only.
        event_log_path: _,
        event_logger: _,
        event_service: _,
        always_log_health_check_failures: _,
        always_log_health_check_success: _,
        tls_options,
        transport_socket_match_criteria,
        health_checker,
    } = h;
    let before = cx.error_count();
    refuse!(cx, field; alt_port, tls_options, transport_socket_match_criteria);
    let timeout = required_positive(cx, &join(field, "timeout"), timeout);
    let interval = required_positive(cx, &join(field, "interval"), interval);
    let jitter = |cx: &mut Ctx, name: &str, d: &Option<XdsDuration>| {
        d.as_ref()
            .and_then(|d| super::super::common::duration(cx, &join(field, name), d))
            .unwrap_or(Duration::ZERO)
    };
    let initial_jitter = jitter(cx, "initial_jitter", initial_jitter);
    let interval_jitter = jitter(cx, "interval_jitter", interval_jitter);
    // Validated as Envoy does, then ignored: legate checks at `interval` whether or not the
    // cluster has seen traffic.
    positive_duration(cx, &join(field, "no_traffic_interval"), no_traffic_interval);
    positive_duration(
        cx,
        &join(field, "no_traffic_healthy_interval"),
        no_traffic_healthy_interval,
    );
    let unhealthy_interval =
        positive_duration(cx, &join(field, "unhealthy_interval"), unhealthy_interval);
    let unhealthy_edge_interval = positive_duration(
        cx,
        &join(field, "unhealthy_edge_interval"),
        unhealthy_edge_interval,
    );
    let healthy_edge_interval = positive_duration(
        cx,
        &join(field, "healthy_edge_interval"),
        healthy_edge_interval,
    );
    let unhealthy_threshold =
        threshold(cx, &join(field, "unhealthy_threshold"), unhealthy_threshold);
    let healthy_threshold = threshold(cx, &join(field, "healthy_threshold"), healthy_threshold);
    let kind = match health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            http_check(cx, &join(field, "http_health_check"), http).map(HealthCheckKind::Http)
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            tcp_check(cx, &join(field, "tcp_health_check"), tcp);
            Some(HealthCheckKind::Tcp)
        }
        Some(HealthChecker::GrpcHealthCheck(_)) => {
            cx.unsupported(field, "grpc_health_check");
            None
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            cx.unsupported(field, "custom_health_check");
            None
        }
        None => {
            cx.err(
                field,
                "one of http_health_check or tcp_health_check is required",
            );
            None
        }
    };
    if cx.error_count() != before {
        return None;
    }
    Some(HealthCheck {
        timeout: timeout?,
        interval: interval?,
        interval_jitter,
        interval_jitter_percent: *interval_jitter_percent,
        initial_jitter,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        unhealthy_threshold: unhealthy_threshold?,
        healthy_threshold: healthy_threshold?,
        kind: kind?,
    })
}

fn required_positive(cx: &mut Ctx, field: &str, d: &Option<XdsDuration>) -> Option<Duration> {
    if d.is_none() {
        cx.err(field, "required");
        return None;
    }
    positive_duration(cx, field, d)
}

fn threshold(cx: &mut Ctx, field: &str, t: &Option<UInt32Value>) -> Option<u32> {
    match t {
        None => {
            cx.err(field, "required");
            None
        }
        Some(UInt32Value { value: 0 }) => {
            cx.err(field, "must be at least 1");
            None
        }
        Some(UInt32Value { value }) => Some(*value),
    }
}

fn http_check(cx: &mut Ctx, field: &str, h: &XdsHttpHealthCheck) -> Option<HttpHealthCheck> {
    let XdsHttpHealthCheck {
        host,
        path,
        send,
        receive,
        // Ignored: it only bounds what `receive` (refused) is matched against.
        response_buffer_size: _,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = h;
    let before = cx.error_count();
    refuse!(cx, field; send, receive, retriable_statuses, service_name_matcher);
    if !host.is_empty() && http::HeaderValue::from_str(host).is_err() {
        cx.err(join(field, "host"), format!("'{host}' is not a valid host"));
    }
    if path.is_empty() {
        cx.err(join(field, "path"), "required");
    } else if !path.starts_with('/') || http::uri::PathAndQuery::from_str(path).is_err() {
        cx.err(
            join(field, "path"),
            format!("'{path}' is not a path starting with '/'"),
        );
    }
    let statuses: Vec<(u16, u16)> = if expected_statuses.is_empty() {
        vec![DEFAULT_EXPECTED_STATUSES]
    } else {
        expected_statuses
            .iter()
            .enumerate()
            .filter_map(|(i, r)| status_range(cx, &at(field, "expected_statuses", i), r))
            .collect()
    };
    let http2 = match enum_value::<CodecClientType>(
        cx,
        &join(field, "codec_client_type"),
        *codec_client_type,
    ) {
        Some(CodecClientType::Http1) | None => false,
        Some(CodecClientType::Http2) => true,
        Some(CodecClientType::Http3) => {
            cx.err(
                join(field, "codec_client_type"),
                "not supported by legate: HTTP3",
            );
            false
        }
    };
    match enum_value::<RequestMethod>(cx, &join(field, "method"), *method) {
        Some(RequestMethod::MethodUnspecified | RequestMethod::Get) | None => {}
        Some(RequestMethod::Connect) => {
            cx.err(join(field, "method"), "CONNECT is not allowed");
        }
        Some(other) => cx.err(
            join(field, "method"),
            format!(
                "not supported by legate: {} (only GET)",
                other.as_str_name()
            ),
        ),
    }
    let request_headers_to_add =
        headers_to_add(cx, field, "request_headers_to_add", request_headers_to_add);
    let request_headers_to_remove = headers_to_remove(
        cx,
        field,
        "request_headers_to_remove",
        request_headers_to_remove,
    );
    (cx.error_count() == before).then(|| HttpHealthCheck {
        host: Arc::from(host.as_str()),
        path: Arc::from(path.as_str()),
        expected_statuses: statuses,
        request_headers_to_add,
        request_headers_to_remove,
        http2,
    })
}

/// A half-open range of statuses within `[100, 600)`.
fn status_range(cx: &mut Ctx, field: &str, r: &Int64Range) -> Option<(u16, u16)> {
    let Int64Range { start, end } = *r;
    if start < 100 || end > 600 || start >= end {
        cx.err(
            field,
            format!("[{start}, {end}) is not a non-empty range within [100, 600)"),
        );
        return None;
    }
    // Within 100..=600 by the check above.
    Some((start as u16, end as u16))
}

/// `tcp_health_check`: connect only, no payloads.
fn tcp_check(cx: &mut Ctx, field: &str, t: &XdsTcpHealthCheck) {
    let XdsTcpHealthCheck {
        send,
        receive,
        proxy_protocol_config,
    } = t;
    refuse!(cx, field; send, receive, proxy_protocol_config);
}
