//! What `/config_dump` shows of the bootstrap: the bootstrap as an Envoy `Bootstrap` (node,
//! static resources, the ADS servers, the admin address) and the static resources, loaded
//! once at start. The xDS client adds the dynamic ones; `legate-config-dump` renders both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap as XdsBootstrap};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
    Node as XdsNode, SocketAddress, address, api_config_source::ApiType, config_source,
    grpc_service, socket_address,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use legate_config_dump::{Inputs, Origin, Resource};
use legate_snapshot::ResourceKind;

use crate::bootstrap::Bootstrap;

/// The bootstrap's part of every dump. No `Debug`: its static secrets may hold keys.
pub(crate) struct StaticDump {
    bootstrap: XdsBootstrap,
    loaded: SystemTime,
    resources: Arc<[Resource]>,
}

impl StaticDump {
    pub(crate) fn new(b: &Bootstrap, node: XdsNode, admin: SocketAddr) -> StaticDump {
        let loaded = SystemTime::now();
        let s = &b.static_resources;
        let at = Some(loaded);
        let mut resources = Vec::new();
        // Every static list, each message as a resource of its kind.
        fn add<M: prost::Message>(
            out: &mut Vec<Resource>,
            kind: ResourceKind,
            at: Option<SystemTime>,
            list: &[M],
        ) {
            out.extend(
                list.iter()
                    .map(|r| Resource::from_message(kind, Origin::Static, at, r)),
            );
        }
        add(&mut resources, ResourceKind::Listener, at, &s.listeners);
        add(
            &mut resources,
            ResourceKind::RouteConfiguration,
            at,
            &s.route_configs,
        );
        add(&mut resources, ResourceKind::Cluster, at, &s.clusters);
        add(
            &mut resources,
            ResourceKind::ClusterLoadAssignment,
            at,
            &s.load_assignments,
        );
        add(&mut resources, ResourceKind::Secret, at, &s.secrets);
        let ads = || ConfigSource {
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                AggregatedConfigSource {},
            )),
            resource_api_version: ApiVersion::V3 as i32,
            ..ConfigSource::default()
        };
        let dynamic_resources = b.xds.as_ref().map(|x| {
            let timeout = PbDuration {
                seconds: i64::try_from(x.initial_fetch_timeout.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(x.initial_fetch_timeout.subsec_nanos()).unwrap_or(0),
            };
            DynamicResources {
                lds_config: Some(ConfigSource {
                    initial_fetch_timeout: Some(timeout),
                    ..ads()
                }),
                cds_config: Some(ConfigSource {
                    initial_fetch_timeout: Some(timeout),
                    ..ads()
                }),
                ads_config: Some(ApiConfigSource {
                    api_type: match x.mode {
                        legate_xds::Mode::Sotw => ApiType::Grpc,
                        legate_xds::Mode::Delta => ApiType::DeltaGrpc,
                    } as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    // legate dials the servers itself, in order; Envoy's nearest form for
                    // a server named by URL rather than by a cluster.
                    grpc_services: x
                        .servers
                        .iter()
                        .map(|server| GrpcService {
                            target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(
                                grpc_service::GoogleGrpc {
                                    target_uri: server.clone(),
                                    stat_prefix: "xds".to_owned(),
                                    ..Default::default()
                                },
                            )),
                            ..GrpcService::default()
                        })
                        .collect(),
                    ..ApiConfigSource::default()
                }),
                ..DynamicResources::default()
            }
        });
        let bootstrap = XdsBootstrap {
            node: Some(node),
            static_resources: Some(StaticResources {
                listeners: s.listeners.clone(),
                clusters: s.clusters.clone(),
                secrets: s.secrets.clone(),
            }),
            dynamic_resources,
            admin: Some(Admin {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: admin.ip().to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            admin.port(),
                        ))),
                        ..SocketAddress::default()
                    })),
                }),
                ..Admin::default()
            }),
            ..XdsBootstrap::default()
        };
        StaticDump {
            bootstrap,
            loaded,
            resources: resources.into(),
        }
    }

    /// The dump's inputs: the bootstrap, then the static resources, then the dynamic ones.
    pub(crate) fn inputs(&self, xds: Option<&legate_xds::XdsHandle>) -> Inputs {
        let mut resources: Vec<Resource> = self.resources.to_vec();
        let mut versions = Vec::new();
        if let Some(xds) = xds {
            let active = xds.active_resources();
            resources.extend(active.resources.iter().cloned());
            versions.clone_from(&active.versions);
        }
        Inputs {
            bootstrap: Some((self.bootstrap.clone(), self.loaded)),
            versions,
            resources,
        }
    }
}
