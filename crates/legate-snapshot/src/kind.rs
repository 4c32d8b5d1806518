//! The five resource types legate consumes and legate-cp serves, and everything that is a
//! property of the type alone: its type URL, its name in messages, the order in which a
//! client warms it, whether it is subscribed by wildcard. The xDS client, legate-cp, its load
//! tools and the test harnesses all read these here; none keeps its own table.

use crate::type_url;

/// One of the resource types of the xDS protocol legate speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Listener,
    RouteConfiguration,
    Cluster,
    ClusterLoadAssignment,
    /// An SDS `Secret` (a TLS certificate and key, or a validation context).
    Secret,
}

impl ResourceKind {
    /// Every kind in Envoy's warm order: clusters before the endpoints they load, then the
    /// secrets clusters and listeners name, listeners after the clusters their routes name,
    /// route configurations last. A control plane pushes a change in this order and a client
    /// warms in it.
    pub const WARM_ORDER: [ResourceKind; 5] = [
        ResourceKind::Cluster,
        ResourceKind::ClusterLoadAssignment,
        ResourceKind::Secret,
        ResourceKind::Listener,
        ResourceKind::RouteConfiguration,
    ];

    /// The kind's name in messages (`kind 'name': field: message`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Listener => "listener",
            ResourceKind::RouteConfiguration => "route configuration",
            ResourceKind::Cluster => "cluster",
            ResourceKind::ClusterLoadAssignment => "cluster load assignment",
            ResourceKind::Secret => "secret",
        }
    }

    /// The discovery service's short name, upper case as Envoy's docs write it: `LDS`,
    /// `RDS`, `CDS`, `EDS`, `SDS`.
    pub fn service(self) -> &'static str {
        match self {
            ResourceKind::Listener => "LDS",
            ResourceKind::RouteConfiguration => "RDS",
            ResourceKind::Cluster => "CDS",
            ResourceKind::ClusterLoadAssignment => "EDS",
            ResourceKind::Secret => "SDS",
        }
    }

    /// The xDS type URL of this kind.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceKind::Listener => type_url::LISTENER,
            ResourceKind::RouteConfiguration => type_url::ROUTE_CONFIGURATION,
            ResourceKind::Cluster => type_url::CLUSTER,
            ResourceKind::ClusterLoadAssignment => type_url::CLUSTER_LOAD_ASSIGNMENT,
            ResourceKind::Secret => type_url::SECRET,
        }
    }

    /// The kind a type URL names, `None` for a type legate does not consume.
    pub fn from_type_url(url: &str) -> Option<ResourceKind> {
        Self::WARM_ORDER.into_iter().find(|k| k.type_url() == url)
    }

    /// Listeners and clusters are subscribed as a wildcard ("all of them"); route
    /// configurations, load assignments and secrets by the names accepted listeners and
    /// clusters reference ([`crate::refs`]).
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceKind::Listener | ResourceKind::Cluster)
    }

    /// The kind's position in [`Self::WARM_ORDER`], for per-type state kept in an array.
    pub fn index(self) -> usize {
        match self {
            ResourceKind::Cluster => 0,
            ResourceKind::ClusterLoadAssignment => 1,
            ResourceKind::Secret => 2,
            ResourceKind::Listener => 3,
            ResourceKind::RouteConfiguration => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ResourceKind;

    #[test]
    fn every_kind_round_trips_through_its_type_url_and_index() {
        for (i, kind) in ResourceKind::WARM_ORDER.into_iter().enumerate() {
            assert_eq!(ResourceKind::from_type_url(kind.type_url()), Some(kind));
            assert_eq!(kind.index(), i);
        }
        assert_eq!(
            ResourceKind::from_type_url("type.googleapis.com/other"),
            None
        );
        assert_eq!(
            ResourceKind::from_type_url(crate::type_url::RESOURCE_WRAPPER),
            None
        );
    }
}
