//! `outlier_detection`: passive ejection of hosts that fail, with Envoy's defaults.

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as XdsOutlierDetection;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::super::common::{
    Ctx, duration, join, positive_duration as positive, refuse, refuse_true,
};
use crate::OutlierDetection;

pub(super) fn outlier_detection(
    cx: &mut Ctx,
    field: &str,
    o: &XdsOutlierDetection,
) -> Option<OutlierDetection> {
    let XdsOutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = o;
    let before = cx.error_count();
    refuse!(cx, field; monitors);
    refuse_true(cx, field, "always_eject_one_host", always_eject_one_host);
    refuse_true(cx, field, "detect_degraded_hosts", detect_degraded_hosts);

    let d = OutlierDetection::default();
    let count = |v: &Option<UInt32Value>, default: u32| -> u32 {
        v.map_or(default, |UInt32Value { value }| value)
    };
    let consecutive_5xx = count(consecutive_5xx, d.consecutive_5xx);
    let consecutive_gateway_failure =
        count(consecutive_gateway_failure, d.consecutive_gateway_failure);
    let consecutive_local_origin_failure = count(
        consecutive_local_origin_failure,
        d.consecutive_local_origin_failure,
    );
    let success_rate_minimum_hosts =
        count(success_rate_minimum_hosts, d.success_rate_minimum_hosts);
    let success_rate_request_volume =
        count(success_rate_request_volume, d.success_rate_request_volume);
    let success_rate_stdev_factor = count(success_rate_stdev_factor, d.success_rate_stdev_factor);
    let failure_percentage_minimum_hosts = count(
        failure_percentage_minimum_hosts,
        d.failure_percentage_minimum_hosts,
    );
    let failure_percentage_request_volume = count(
        failure_percentage_request_volume,
        d.failure_percentage_request_volume,
    );

    let mut percent = |name: &str, v: &Option<UInt32Value>, default: u32| -> u32 {
        match v {
            None => default,
            Some(UInt32Value { value }) if *value <= 100 => *value,
            Some(UInt32Value { value }) => {
                cx.err(join(field, name), format!("{value} is above 100"));
                default
            }
        }
    };
    let max_ejection_percent = percent(
        "max_ejection_percent",
        max_ejection_percent,
        d.max_ejection_percent,
    );
    let enforcing_consecutive_5xx = percent(
        "enforcing_consecutive_5xx",
        enforcing_consecutive_5xx,
        d.enforcing_consecutive_5xx,
    );
    let enforcing_success_rate = percent(
        "enforcing_success_rate",
        enforcing_success_rate,
        d.enforcing_success_rate,
    );
    let enforcing_consecutive_gateway_failure = percent(
        "enforcing_consecutive_gateway_failure",
        enforcing_consecutive_gateway_failure,
        d.enforcing_consecutive_gateway_failure,
    );
    let enforcing_consecutive_local_origin_failure = percent(
        "enforcing_consecutive_local_origin_failure",
        enforcing_consecutive_local_origin_failure,
        d.enforcing_consecutive_local_origin_failure,
    );
    let enforcing_local_origin_success_rate = percent(
        "enforcing_local_origin_success_rate",
        enforcing_local_origin_success_rate,
        d.enforcing_local_origin_success_rate,
    );
    let failure_percentage_threshold = percent(
        "failure_percentage_threshold",
        failure_percentage_threshold,
        d.failure_percentage_threshold,
    );
    let enforcing_failure_percentage = percent(
        "enforcing_failure_percentage",
        enforcing_failure_percentage,
        d.enforcing_failure_percentage,
    );
    let enforcing_failure_percentage_local_origin = percent(
        "enforcing_failure_percentage_local_origin",
        enforcing_failure_percentage_local_origin,
        d.enforcing_failure_percentage_local_origin,
    );

    let interval = positive(cx, &join(field, "interval"), interval).unwrap_or(d.interval);
    let base_ejection_time = positive(cx, &join(field, "base_ejection_time"), base_ejection_time)
        .unwrap_or(d.base_ejection_time);
    // Unset: Envoy's 300 s, or the base ejection time when that is longer.
    let max_ejection_time = match positive(cx, &join(field, "max_ejection_time"), max_ejection_time)
    {
        Some(max) if max < base_ejection_time => {
            cx.err(
                join(field, "max_ejection_time"),
                "must not be less than base_ejection_time",
            );
            base_ejection_time
        }
        Some(max) => max,
        None => d.max_ejection_time.max(base_ejection_time),
    };
    let max_ejection_time_jitter = max_ejection_time_jitter
        .as_ref()
        .and_then(|j| duration(cx, &join(field, "max_ejection_time_jitter"), j))
        .unwrap_or(d.max_ejection_time_jitter);

    let outlier = OutlierDetection {
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter,
        max_ejection_percent,
        consecutive_5xx,
        enforcing_consecutive_5xx,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors: *split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        enforcing_success_rate,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        successful_active_health_check_uneject_host: successful_active_health_check_uneject_host
            .is_none_or(|BoolValue { value }| value),
    };
    (cx.error_count() == before).then_some(outlier)
}
