//! `ClusterLoadAssignment` → [`LoadAssignment`], from EDS or inline in a cluster.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus as XdsHealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as XdsClusterLoadAssignment, Endpoint as XdsEndpoint,
    LbEndpoint as XdsLbEndpoint, LocalityLbEndpoints as XdsLocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::common::{AddressRule, Ctx, address, at, enum_value, join, refuse};
use crate::{
    Endpoint, HealthStatus, LoadAssignment, LocalityEndpoints, ResourceError, ResourceKind,
};

/// A ClusterLoadAssignment received over EDS: endpoints must be IP addresses.
pub(super) fn cluster_load_assignment(
    x: &XdsClusterLoadAssignment,
) -> Result<LoadAssignment, Vec<ResourceError>> {
    let mut cx = Ctx::new(ResourceKind::ClusterLoadAssignment, &x.cluster_name);
    if x.cluster_name.is_empty() {
        cx.err("cluster_name", "must not be empty");
    }
    let assignment = load_assignment_in(&mut cx, "", x, AddressRule::EndpointIp);
    cx.finish(assignment)
}

/// A load assignment at `base` inside the resource `cx` reports on.
pub(super) fn load_assignment_in(
    cx: &mut Ctx,
    base: &str,
    x: &XdsClusterLoadAssignment,
    rule: AddressRule,
) -> LoadAssignment {
    let XdsClusterLoadAssignment {
        // Checked by the caller for EDS; ignored inline in a cluster, as Envoy does.
        cluster_name: _,
        endpoints,
        named_endpoints,
        policy,
    } = x;
    refuse!(cx, base; named_endpoints);
    if let Some(Policy {
        drop_overloads,
        overprovisioning_factor,
        endpoint_stale_after,
        weighted_priority_health,
    }) = policy
    {
        let field = join(base, "policy");
        refuse!(cx, &field; drop_overloads, endpoint_stale_after, weighted_priority_health);
        // Accepted: with priority 0 only and no locality-weighted balancing, the factor has
        // nothing to scale.
        if matches!(overprovisioning_factor, Some(UInt32Value { value: 0 })) {
            cx.err(
                join(&field, "overprovisioning_factor"),
                "must be greater than zero",
            );
        }
    }
    LoadAssignment {
        localities: endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, l)| locality(cx, &at(base, "endpoints", i), l, rule))
            .collect(),
    }
}

fn locality(
    cx: &mut Ctx,
    field: &str,
    l: &XdsLocalityLbEndpoints,
    rule: AddressRule,
) -> Option<LocalityEndpoints> {
    let XdsLocalityLbEndpoints {
        locality,
        // Ignored: no effect on traffic.
        metadata: _,
        lb_endpoints,
        load_balancing_weight,
        priority,
        // Ignored: Envoy does not implement it either.
        proximity: _,
        lb_config,
    } = l;
    let before = cx.error_count();
    refuse!(cx, field; lb_config);
    if *priority != 0 {
        cx.err(
            join(field, "priority"),
            "only priority 0 is supported by legate",
        );
    }
    if matches!(load_balancing_weight, Some(UInt32Value { value: 0 })) {
        cx.err(join(field, "load_balancing_weight"), "must be at least 1");
    }
    let (region, zone, sub_zone) = match locality {
        Some(Locality {
            region,
            zone,
            sub_zone,
        }) => (region.as_str(), zone.as_str(), sub_zone.as_str()),
        None => ("", "", ""),
    };
    let endpoints: Vec<Endpoint> = lb_endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| lb_endpoint(cx, &at(field, "lb_endpoints", i), e, rule))
        .collect();
    (cx.error_count() == before).then(|| LocalityEndpoints {
        region: Arc::from(region),
        zone: Arc::from(zone),
        sub_zone: Arc::from(sub_zone),
        weight: load_balancing_weight.map(|UInt32Value { value }| value),
        endpoints,
    })
}

fn lb_endpoint(
    cx: &mut Ctx,
    field: &str,
    e: &XdsLbEndpoint,
    rule: AddressRule,
) -> Option<Endpoint> {
    let XdsLbEndpoint {
        health_status,
        // Ignored: no effect on traffic (subset balancing, which reads it, is refused).
        metadata: _,
        load_balancing_weight,
        host_identifier,
    } = e;
    let before = cx.error_count();
    let health =
        match enum_value::<XdsHealthStatus>(cx, &join(field, "health_status"), *health_status) {
            Some(XdsHealthStatus::Unknown | XdsHealthStatus::Healthy) | None => {
                HealthStatus::Healthy
            }
            Some(XdsHealthStatus::Degraded) => HealthStatus::Degraded,
            Some(
                XdsHealthStatus::Unhealthy | XdsHealthStatus::Draining | XdsHealthStatus::Timeout,
            ) => HealthStatus::Unhealthy,
        };
    let weight = match load_balancing_weight {
        None => 1,
        Some(UInt32Value { value: 0 }) => {
            cx.err(join(field, "load_balancing_weight"), "must be at least 1");
            1
        }
        Some(UInt32Value { value }) => *value,
    };
    let endpoint = match host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => {
            Some(endpoint(cx, &join(field, "endpoint"), ep, rule))
        }
        Some(HostIdentifier::EndpointName(_)) => {
            cx.unsupported(field, "endpoint_name");
            None
        }
        None => {
            cx.err(join(field, "endpoint"), "required");
            None
        }
    };
    let (address, hostname) = endpoint.flatten()?;
    (cx.error_count() == before).then_some(Endpoint {
        address,
        weight,
        health,
        hostname,
    })
}

type AddressAndHostname = (crate::EndpointAddress, Option<Arc<str>>);

fn endpoint(
    cx: &mut Ctx,
    field: &str,
    e: &XdsEndpoint,
    rule: AddressRule,
) -> Option<AddressAndHostname> {
    let XdsEndpoint {
        address: endpoint_address,
        // Ignored: only active health checking reads it, and that is refused on the cluster.
        health_check_config: _,
        hostname,
        additional_addresses,
        // Ignored: statistics and logging only.
        observability_name: _,
    } = e;
    refuse!(cx, field; additional_addresses);
    let address = address(cx, &join(field, "address"), endpoint_address, rule)?;
    let hostname = (!hostname.is_empty()).then(|| Arc::from(hostname.as_str()));
    Some((address, hostname))
}
