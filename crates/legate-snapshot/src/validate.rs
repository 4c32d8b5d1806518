//! Envoy resources → [`Snapshot`]: per-resource conversion, then whole-set consistency.
//!
//! Each resource kind has a conversion (`listener`, `route`, `cluster`, `endpoint`) that
//! returns the validated value or every error it found. Conventions they all follow:
//!
//! - Every Envoy message read is destructured in full, without `..`, so that a field legate
//!   does not honour is refused with its path when it is set (differs from its proto default),
//!   and a field added upstream breaks the build here instead of being ignored silently.
//!   Fields that cannot change traffic (names, statistics, metadata, logging and tracing
//!   options) are bound to `_` with a comment saying why.
//! - Errors never stop a conversion: everything wrong with a resource set is reported at once.
//! - Paths are dotted and indexed from the resource root, e.g.
//!   `virtual_hosts[1].routes[0].route.weighted_clusters.clusters[2].name`.
//!
//! The whole-set pass then checks what no single resource can: unique names, every listener's
//! RDS name and every route's cluster exist, every EDS cluster has its ClusterLoadAssignment,
//! and no two listeners share an address.

// Deprecated Envoy fields must still be read, to honour or refuse them.
#![allow(deprecated)]

mod access_log;
mod cluster;
mod common;
mod credential;
mod endpoint;
mod filter;
mod listener;
mod route;
pub use route::{DEFAULT_ROUTE_TIMEOUT, MAX_RETRY_BUFFER_LIMIT};
mod tls;
mod trace;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as XdsSecret;

use crate::{
    Cluster, Discovery, InvalidSnapshot, Listener, LoadAssignment, ResourceError, ResourceKind,
    RouteConfig, Snapshot,
};

/// A complete resource set, as a state-of-the-world client holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<XdsListener>,
    pub route_configs: Vec<XdsRouteConfiguration>,
    pub clusters: Vec<XdsCluster>,
    pub load_assignments: Vec<XdsClusterLoadAssignment>,
    /// SDS secrets that clusters and listeners name in their TLS contexts.
    pub secrets: Vec<XdsSecret>,
}

/// Validate a whole resource set into a snapshot, or list every problem found.
pub fn build(
    version: impl Into<String>,
    resources: &Resources,
) -> Result<Snapshot, InvalidSnapshot> {
    let Resources {
        listeners: xds_listeners,
        route_configs: xds_route_configs,
        clusters: xds_clusters,
        load_assignments: xds_load_assignments,
        secrets: xds_secrets,
    } = resources;
    let mut errors = Vec::new();

    // Converted resources, without later duplicates (reported below as duplicates only).
    let listeners = first_of_each_name(
        convert_all(&mut errors, xds_listeners, listener::listener),
        |c| &c.listener.name,
    );
    let route_configs = first_of_each_name(
        convert_all(&mut errors, xds_route_configs, route::route_configuration),
        |c| &c.config.name,
    );
    let mut clusters = first_of_each_name(
        convert_all(&mut errors, xds_clusters, cluster::cluster),
        |c| &c.name,
    );
    let secrets = first_of_each_name(
        convert_all(&mut errors, xds_secrets, tls::secret),
        |(name, _)| name,
    );
    let load_assignments = first_of_each_name(
        convert_all(&mut errors, xds_load_assignments, |x| {
            endpoint::cluster_load_assignment(x).map(|la| (x.cluster_name.as_str(), la))
        }),
        |(name, _)| name,
    );

    unique_names(
        &mut errors,
        ResourceKind::Listener,
        "name",
        xds_listeners.iter().map(|x| x.name.as_str()),
    );
    unique_names(
        &mut errors,
        ResourceKind::RouteConfiguration,
        "name",
        xds_route_configs.iter().map(|x| x.name.as_str()),
    );
    unique_names(
        &mut errors,
        ResourceKind::Cluster,
        "name",
        xds_clusters.iter().map(|x| x.name.as_str()),
    );
    unique_names(
        &mut errors,
        ResourceKind::ClusterLoadAssignment,
        "cluster_name",
        xds_load_assignments.iter().map(|x| x.cluster_name.as_str()),
    );
    unique_names(
        &mut errors,
        ResourceKind::Secret,
        "name",
        xds_secrets.iter().map(|x| x.name.as_str()),
    );

    // Names of every resource received, valid or not: a reference to a resource that failed
    // its own validation is already reported there and is not reported again as missing.
    let route_config_names: HashSet<&str> =
        xds_route_configs.iter().map(|x| x.name.as_str()).collect();
    let cluster_names: HashSet<&str> = xds_clusters.iter().map(|x| x.name.as_str()).collect();
    let load_assignment_names: HashSet<&str> = xds_load_assignments
        .iter()
        .map(|x| x.cluster_name.as_str())
        .collect();

    // SDS references: the secrets' contents go into the TLS contexts that name them.
    let by_secret: tls::Secrets<'_> = secrets.iter().map(|(n, s)| (*n, s)).collect();
    let valid_secrets: HashSet<&str> = by_secret.keys().copied().collect();
    let invalid_secrets: HashSet<&str> = xds_secrets
        .iter()
        .map(|x| x.name.as_str())
        .filter(|n| !valid_secrets.contains(n))
        .collect();
    for cluster in &mut clusters {
        if let Some(t) = cluster.tls.as_mut() {
            let t = Arc::make_mut(t);
            tls::resolve(
                &mut errors,
                ResourceKind::Cluster,
                &cluster.name,
                "transport_socket.typed_config",
                &by_secret,
                &invalid_secrets,
                t.certificate_sds.as_ref(),
                &mut t.certificate,
                t.validation_sds.as_ref(),
                &mut t.validation,
            );
        }
    }
    let mut listeners = listeners;
    for c in &mut listeners {
        let name = c.listener.name.clone();
        if let Some(t) = c.listener.tls.as_mut() {
            let t = Arc::make_mut(t);
            let default = t.default_chain;
            for (i, chain) in t.chains.iter_mut().enumerate() {
                let field = if default == Some(i) {
                    "default_filter_chain.transport_socket.typed_config".to_owned()
                } else {
                    format!("filter_chains[{i}].transport_socket.typed_config")
                };
                let d = &mut chain.tls;
                tls::resolve(
                    &mut errors,
                    ResourceKind::Listener,
                    &name,
                    &field,
                    &by_secret,
                    &invalid_secrets,
                    d.certificate_sds.as_ref(),
                    &mut d.certificate,
                    d.validation_sds.as_ref(),
                    &mut d.validation,
                );
            }
        }
    }

    for c in &mut listeners {
        credential_secrets(&mut errors, &mut c.listener, &by_secret, &invalid_secrets);
    }

    let mut addresses: HashMap<SocketAddr, &str> = HashMap::new();
    for c in &listeners {
        let name = &*c.listener.name;
        if let Some((field, rds)) = &c.rds
            && !route_config_names.contains(&**rds)
        {
            errors.push(ResourceError::new(
                ResourceKind::Listener,
                name,
                field.as_str(),
                format!("route configuration '{rds}' not found"),
            ));
        }
        missing_clusters(
            &mut errors,
            ResourceKind::Listener,
            name,
            &c.cluster_refs,
            &cluster_names,
        );
        // Port 0 asks the kernel for a fresh port each time: never a clash.
        let address = c.listener.address;
        if address.port() != 0
            && let Some(other) = addresses.insert(address, name)
        {
            addresses.insert(address, other);
            errors.push(ResourceError::new(
                ResourceKind::Listener,
                name,
                "address",
                format!("{address} is already used by listener '{other}'"),
            ));
        }
    }
    for rc in &route_configs {
        if rc.validate_clusters {
            missing_clusters(
                &mut errors,
                ResourceKind::RouteConfiguration,
                &rc.config.name,
                &rc.cluster_refs,
                &cluster_names,
            );
        }
    }

    let by_service: HashMap<&str, &LoadAssignment> = load_assignments
        .iter()
        .map(|(name, la)| (*name, la))
        .collect();
    for cluster in &mut clusters {
        let Discovery::Eds { service_name } = &cluster.discovery else {
            continue;
        };
        match by_service.get(&**service_name) {
            Some(la) => cluster.load_assignment = (*la).clone(),
            None if load_assignment_names.contains(&**service_name) => {}
            None => {
                let field = if service_name == &cluster.name {
                    "name"
                } else {
                    "eds_cluster_config.service_name"
                };
                errors.push(ResourceError::new(
                    ResourceKind::Cluster,
                    &*cluster.name,
                    field,
                    format!("cluster load assignment '{service_name}' not found"),
                ));
            }
        }
    }

    if !errors.is_empty() {
        return Err(InvalidSnapshot { errors });
    }
    let mut listeners: Vec<Arc<Listener>> = listeners
        .into_iter()
        .map(|c| Arc::new(c.listener))
        .collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot {
        version: version.into(),
        listeners,
        route_configs: route_configs
            .into_iter()
            .map(|rc| (rc.config.name.clone(), Arc::new(rc.config)))
            .collect::<BTreeMap<_, _>>(),
        clusters: clusters
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// Join the generic secrets credential filters name into them. A secret over ADS that has
/// not arrived leaves the credential unavailable (the filter answers 401, or lets the
/// request through without it); a static secret must exist.
fn credential_secrets(
    errors: &mut Vec<ResourceError>,
    listener: &mut Listener,
    secrets: &tls::Secrets<'_>,
    invalid: &HashSet<&str>,
) {
    use crate::filter::{Credential, FilterKind};
    if !listener
        .http_filters
        .iter()
        .any(|f| matches!(f.config, FilterKind::CredentialInjector(_)))
    {
        return;
    }
    let mut filters = listener.http_filters.to_vec();
    for f in &mut filters {
        let FilterKind::CredentialInjector(ci) = &mut f.config else {
            continue;
        };
        let ci = Arc::make_mut(ci);
        let field = format!(
            "http_filters[\"{}\"].{}",
            f.name,
            credential::secret_field(&ci.credential)
        );
        let secret = match &mut ci.credential {
            Credential::Generic(g) => &mut g.secret,
            Credential::Oauth2(o) => &mut o.client_secret,
        };
        match secrets.get(&*secret.name) {
            Some(tls::ConvertedSecret::Generic(d)) => secret.value = Some(d.clone()),
            Some(_) => errors.push(ResourceError::new(
                ResourceKind::Listener,
                &*listener.name,
                field,
                format!("secret '{}' is not a generic_secret", secret.name),
            )),
            None if invalid.contains(&*secret.name) => {}
            None if secret.over_ads => secret.value = None,
            None => errors.push(ResourceError::new(
                ResourceKind::Listener,
                &*listener.name,
                field,
                format!(
                    "static secret '{}' not found (a reference without sds_config names a \
                     secret of the bootstrap's static_resources)",
                    secret.name
                ),
            )),
        }
    }
    listener.http_filters = Arc::from(filters);
}

fn convert_all<'a, X, T>(
    errors: &mut Vec<ResourceError>,
    xs: &'a [X],
    convert: impl Fn(&'a X) -> Result<T, Vec<ResourceError>>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(xs.len());
    for x in xs {
        match convert(x) {
            Ok(t) => out.push(t),
            Err(e) => errors.extend(e),
        }
    }
    out
}

fn first_of_each_name<T>(items: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if seen.insert(name(&item).to_owned()) {
            out.push(item);
        }
    }
    out
}

/// Every resource after the first with a given name is an error. Empty names are reported
/// by the conversions.
fn unique_names<'a>(
    errors: &mut Vec<ResourceError>,
    kind: ResourceKind,
    field: &str,
    names: impl Iterator<Item = &'a str>,
) {
    let mut seen = HashSet::new();
    for name in names {
        if !name.is_empty() && !seen.insert(name) {
            errors.push(ResourceError::new(
                kind,
                name,
                field,
                format!("duplicate {} name", kind.as_str()),
            ));
        }
    }
}

fn missing_clusters(
    errors: &mut Vec<ResourceError>,
    kind: ResourceKind,
    name: &str,
    refs: &[route::ClusterRef],
    clusters: &HashSet<&str>,
) {
    for r in refs {
        if !clusters.contains(&*r.cluster) {
            errors.push(ResourceError::new(
                kind,
                name,
                r.field.as_str(),
                format!("cluster '{}' not found", r.cluster),
            ));
        }
    }
}

/// One listener on its own; an RDS route configuration it names is not looked up.
impl TryFrom<&XdsListener> for Listener {
    type Error = Vec<ResourceError>;

    fn try_from(x: &XdsListener) -> Result<Self, Self::Error> {
        listener::listener(x).map(|c| c.listener)
    }
}

/// One route configuration on its own; the clusters it names are not looked up.
impl TryFrom<&XdsRouteConfiguration> for RouteConfig {
    type Error = Vec<ResourceError>;

    fn try_from(x: &XdsRouteConfiguration) -> Result<Self, Self::Error> {
        route::route_configuration(x).map(|c| c.config)
    }
}

/// One cluster on its own: an EDS cluster's endpoints stay empty until [`build`] attaches its
/// ClusterLoadAssignment.
impl TryFrom<&XdsCluster> for Cluster {
    type Error = Vec<ResourceError>;

    fn try_from(x: &XdsCluster) -> Result<Self, Self::Error> {
        cluster::cluster(x)
    }
}

/// One ClusterLoadAssignment as received over EDS (endpoints must be IP addresses).
impl TryFrom<&XdsClusterLoadAssignment> for LoadAssignment {
    type Error = Vec<ResourceError>;

    fn try_from(x: &XdsClusterLoadAssignment) -> Result<Self, Self::Error> {
        endpoint::cluster_load_assignment(x)
    }
}
