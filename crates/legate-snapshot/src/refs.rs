//! What a resource names in other resources, read from the raw Envoy messages.
//!
//! The xDS client subscribes to what its accepted listeners and clusters name (RDS route
//! configurations, EDS load assignments, SDS secrets) and the control plane decides which
//! secrets a node is entitled to from the same references. Both read them here, so "what does
//! this resource reference" has one answer.
//!
//! These functions do not validate: they read what a resource asks for even when other fields
//! of it are invalid (validation reports those), and a typed config that does not decode simply
//! names nothing. Only SDS references delivered over ADS (`sds_config: {ads: {}}`) count as
//! secrets to fetch; a reference without `sds_config` names a static secret.

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportConfigType;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as XdsHttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret as XdsSecret,
    UpstreamTlsContext, secret,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::type_url;

/// The names one listener or cluster refers to, each sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct References {
    /// RouteConfigurations loaded over RDS (listeners).
    pub route_configs: Vec<String>,
    /// The ClusterLoadAssignment loaded over EDS (EDS clusters): the EDS service name, or
    /// the cluster's own name when that is empty.
    pub load_assignment: Option<String>,
    /// Secrets loaded over SDS through ADS: TLS certificates and validation contexts named in
    /// the resource's TLS transport sockets. The resource cannot work without them.
    pub secrets: Vec<String>,
    /// Generic secrets over ADS that a listener's credential injectors name. Fetched like
    /// [`Self::secrets`], but a listener does not depend on them: until one arrives, its
    /// credential is unavailable (the filter answers 401), as in Envoy.
    pub credential_secrets: Vec<String>,
}

impl References {
    /// Whether the resource names nothing.
    pub fn is_empty(&self) -> bool {
        self.route_configs.is_empty()
            && self.load_assignment.is_none()
            && self.secrets.is_empty()
            && self.credential_secrets.is_empty()
    }

    /// Every secret to fetch: [`Self::secrets`] then [`Self::credential_secrets`].
    pub fn all_secrets(&self) -> impl Iterator<Item = &String> {
        self.secrets.iter().chain(&self.credential_secrets)
    }

    fn finish(mut self) -> Self {
        self.route_configs.sort();
        self.route_configs.dedup();
        self.secrets.sort();
        self.secrets.dedup();
        self.credential_secrets.sort();
        self.credential_secrets.dedup();
        self
    }
}

/// What a listener names: the RDS route configurations of its HTTP connection managers (every
/// filter chain, the default chain and an `api_listener`), the SDS secrets of its filter
/// chains' TLS transport sockets and the generic secrets its credential injectors name.
pub fn listener_references(listener: &XdsListener) -> References {
    let chains = || {
        listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.as_ref())
    };
    let filters = chains()
        .flat_map(|chain| &chain.filters)
        .filter_map(|filter| match &filter.config_type {
            Some(FilterConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        });
    let api = listener
        .api_listener
        .as_ref()
        .and_then(|api| api.api_listener.as_ref());
    let hcms: Vec<XdsHttpConnectionManager> = filters
        .chain(api)
        .filter(|any| any.type_url == type_url::HTTP_CONNECTION_MANAGER)
        .filter_map(|any| XdsHttpConnectionManager::decode(any.value.as_slice()).ok())
        .collect();
    let mut credentials = Vec::new();
    for hcm in &hcms {
        credential_secrets(hcm, &mut credentials);
    }
    let mut secrets = Vec::new();
    let route_configs = hcms
        .into_iter()
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect();
    for socket in chains().filter_map(|chain| chain.transport_socket.as_ref()) {
        if let Some(common) = downstream_context(socket).and_then(|c| c.common_tls_context) {
            ads_secrets(&common, &mut secrets);
        }
    }
    References {
        route_configs,
        load_assignment: None,
        secrets,
        credential_secrets: credentials,
    }
    .finish()
}

/// What a cluster names: its EDS load assignment (EDS clusters only) and the SDS secrets of
/// its TLS transport socket (and of its `transport_socket_matches`).
pub fn cluster_references(cluster: &XdsCluster) -> References {
    let eds = matches!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    let load_assignment = eds.then(|| {
        cluster
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|name| !name.is_empty())
            .unwrap_or(&cluster.name)
            .to_owned()
    });
    let mut secrets = Vec::new();
    for socket in cluster_sockets(cluster) {
        if let Some(common) = upstream_context(socket).and_then(|c| c.common_tls_context) {
            ads_secrets(&common, &mut secrets);
        }
    }
    References {
        route_configs: Vec::new(),
        load_assignment,
        secrets,
        credential_secrets: Vec::new(),
    }
    .finish()
}

/// Whether a listener carries private key material inline in a TLS transport socket (a key
/// in `inline_bytes` or `inline_string`, rather than a file name or an SDS reference).
pub fn listener_holds_private_key(listener: &XdsListener) -> bool {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .filter_map(|chain| chain.transport_socket.as_ref())
        .filter_map(|socket| downstream_context(socket).and_then(|c| c.common_tls_context))
        .any(|common| common_holds_private_key(&common))
}

/// Whether a cluster carries private key material inline in a TLS transport socket.
pub fn cluster_holds_private_key(cluster: &XdsCluster) -> bool {
    cluster_sockets(cluster)
        .filter_map(|socket| upstream_context(socket).and_then(|c| c.common_tls_context))
        .any(|common| common_holds_private_key(&common))
}

/// Whether a secret holds anything that must stay private: every kind of secret does (a
/// certificate's key, session ticket keys, generic secrets) except a validation context,
/// which holds only public trust material (CA certificates, SAN rules, CRLs).
pub fn secret_is_private(secret: &XdsSecret) -> bool {
    !matches!(secret.r#type, Some(secret::Type::ValidationContext(_)))
}

fn cluster_sockets(cluster: &XdsCluster) -> impl Iterator<Item = &TransportSocket> {
    cluster.transport_socket.iter().chain(
        cluster
            .transport_socket_matches
            .iter()
            .filter_map(|m| m.transport_socket.as_ref()),
    )
}

fn typed_config(socket: &TransportSocket) -> Option<&Any> {
    match &socket.config_type {
        Some(TransportConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    }
}

fn upstream_context(socket: &TransportSocket) -> Option<UpstreamTlsContext> {
    let any = typed_config(socket)?;
    (any.type_url == type_url::UPSTREAM_TLS_CONTEXT)
        .then(|| UpstreamTlsContext::decode(any.value.as_slice()).ok())
        .flatten()
}

fn downstream_context(socket: &TransportSocket) -> Option<DownstreamTlsContext> {
    let any = typed_config(socket)?;
    (any.type_url == type_url::DOWNSTREAM_TLS_CONTEXT)
        .then(|| DownstreamTlsContext::decode(any.value.as_slice()).ok())
        .flatten()
}

/// The SDS-over-ADS names in a common TLS context: certificates, then the validation context
/// (plain or combined with a default one).
fn ads_secrets(common: &CommonTlsContext, out: &mut Vec<String>) {
    let validation = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => Some(sds),
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            combined.validation_context_sds_secret_config.as_ref()
        }
        _ => None,
    };
    out.extend(
        common
            .tls_certificate_sds_secret_configs
            .iter()
            .chain(validation)
            .filter(|sds| over_ads(sds))
            .map(|sds| sds.name.clone()),
    );
}

/// The generic secrets over ADS that an HCM's credential injectors name (the generic
/// credential's, OAuth2's client secret).
fn credential_secrets(hcm: &XdsHttpConnectionManager, out: &mut Vec<String>) {
    use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
    use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::OAuth2;
    use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::o_auth2::FlowType;
    for f in &hcm.http_filters {
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url != type_url::CREDENTIAL_INJECTOR {
            continue;
        }
        let Some(cred) = CredentialInjector::decode(any.value.as_slice())
            .ok()
            .and_then(|c| c.credential)
            .and_then(|c| c.typed_config)
        else {
            continue;
        };
        let sds = match cred.type_url.as_str() {
            type_url::GENERIC_CREDENTIAL => Generic::decode(cred.value.as_slice())
                .ok()
                .and_then(|g| g.credential),
            type_url::OAUTH2_CREDENTIAL => {
                OAuth2::decode(cred.value.as_slice())
                    .ok()
                    .and_then(|o| match o.flow_type {
                        Some(FlowType::ClientCredentials(c)) => c.client_secret,
                        None => None,
                    })
            }
            _ => None,
        };
        out.extend(sds.filter(over_ads).map(|s| s.name));
    }
}

fn over_ads(sds: &SdsSecretConfig) -> bool {
    matches!(
        sds.sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    )
}

fn common_holds_private_key(common: &CommonTlsContext) -> bool {
    common
        .tls_certificates
        .iter()
        .any(|c| c.private_key.as_ref().is_some_and(is_inline))
}

fn is_inline(data: &DataSource) -> bool {
    matches!(
        data.specifier,
        Some(DataSpecifier::InlineBytes(_) | DataSpecifier::InlineString(_))
    )
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource};
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::CombinedCertificateValidationContext;

    use super::*;

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value: m.encode_to_vec(),
        }
    }

    fn sds(name: &str, ads: bool) -> SdsSecretConfig {
        SdsSecretConfig {
            name: name.to_owned(),
            sds_config: ads.then(|| ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..ConfigSource::default()
            }),
        }
    }

    fn socket(type_url: &str, m: &impl Message) -> TransportSocket {
        TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(TransportConfigType::TypedConfig(any(type_url, m))),
        }
    }

    fn common(
        certs: &[SdsSecretConfig],
        validation: Option<ValidationContextType>,
    ) -> CommonTlsContext {
        CommonTlsContext {
            tls_certificate_sds_secret_configs: certs.to_vec(),
            validation_context_type: validation,
            ..CommonTlsContext::default()
        }
    }

    fn eds_cluster(name: &str, service: &str) -> XdsCluster {
        XdsCluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.to_owned(),
                ..EdsClusterConfig::default()
            }),
            ..XdsCluster::default()
        }
    }

    #[test]
    fn cluster_names_its_assignment_and_ads_secrets() {
        let mut c = eds_cluster("payments", "");
        c.transport_socket = Some(socket(
            type_url::UPSTREAM_TLS_CONTEXT,
            &UpstreamTlsContext {
                common_tls_context: Some(common(
                    &[sds("client", true), sds("static-only", false)],
                    Some(ValidationContextType::CombinedValidationContext(
                        CombinedCertificateValidationContext {
                            validation_context_sds_secret_config: Some(sds("ca", true)),
                            ..CombinedCertificateValidationContext::default()
                        },
                    )),
                )),
                ..UpstreamTlsContext::default()
            },
        ));
        let r = cluster_references(&c);
        assert_eq!(r.load_assignment.as_deref(), Some("payments"));
        assert_eq!(r.secrets, vec!["ca".to_owned(), "client".to_owned()]);
        assert!(r.route_configs.is_empty());
        assert!(!cluster_holds_private_key(&c));

        let named = eds_cluster("payments", "payments-eds");
        assert_eq!(
            cluster_references(&named).load_assignment.as_deref(),
            Some("payments-eds")
        );
        let plain = XdsCluster {
            name: "static".to_owned(),
            ..XdsCluster::default()
        };
        assert!(cluster_references(&plain).is_empty());
    }

    #[test]
    fn a_context_of_the_wrong_type_or_undecodable_names_nothing() {
        let mut c = eds_cluster("c", "");
        c.transport_socket = Some(socket(
            type_url::DOWNSTREAM_TLS_CONTEXT,
            &DownstreamTlsContext {
                common_tls_context: Some(common(&[sds("x", true)], None)),
                ..DownstreamTlsContext::default()
            },
        ));
        assert!(cluster_references(&c).secrets.is_empty());
        c.transport_socket = Some(TransportSocket {
            name: "tls".to_owned(),
            config_type: Some(TransportConfigType::TypedConfig(Any {
                type_url: type_url::UPSTREAM_TLS_CONTEXT.to_owned(),
                value: vec![0xff, 0xff, 0xff],
            })),
        });
        assert!(cluster_references(&c).secrets.is_empty());
    }

    #[test]
    fn listener_names_routes_and_secrets_of_every_chain() {
        let hcm = |rc: &str| Filter {
            name: "envoy.filters.network.http_connection_manager".to_owned(),
            config_type: Some(FilterConfigType::TypedConfig(any(
                type_url::HTTP_CONNECTION_MANAGER,
                &XdsHttpConnectionManager {
                    route_specifier: Some(RouteSpecifier::Rds(Rds {
                        route_config_name: rc.to_owned(),
                        ..Rds::default()
                    })),
                    ..XdsHttpConnectionManager::default()
                },
            ))),
        };
        let tls = |cert: &str| {
            Some(socket(
                type_url::DOWNSTREAM_TLS_CONTEXT,
                &DownstreamTlsContext {
                    common_tls_context: Some(common(
                        &[sds(cert, true)],
                        Some(ValidationContextType::ValidationContextSdsSecretConfig(
                            sds("clients-ca", true),
                        )),
                    )),
                    ..DownstreamTlsContext::default()
                },
            ))
        };
        let l = XdsListener {
            name: "in".to_owned(),
            filter_chains: vec![
                FilterChain {
                    filters: vec![hcm("b")],
                    transport_socket: tls("server-b"),
                    ..FilterChain::default()
                },
                FilterChain {
                    filters: vec![hcm("a")],
                    transport_socket: tls("server-a"),
                    ..FilterChain::default()
                },
            ],
            default_filter_chain: Some(FilterChain {
                filters: vec![hcm("a")],
                ..FilterChain::default()
            }),
            ..XdsListener::default()
        };
        let r = listener_references(&l);
        assert_eq!(r.route_configs, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            r.secrets,
            vec![
                "clients-ca".to_owned(),
                "server-a".to_owned(),
                "server-b".to_owned()
            ]
        );
        assert_eq!(r.load_assignment, None);
    }

    #[test]
    fn inline_keys_and_private_secrets_are_recognised() {
        let key = |specifier| TlsCertificate {
            private_key: Some(DataSource {
                specifier: Some(specifier),
                ..DataSource::default()
            }),
            ..TlsCertificate::default()
        };
        let cluster_with = |cert: TlsCertificate| XdsCluster {
            name: "c".to_owned(),
            transport_socket: Some(socket(
                type_url::UPSTREAM_TLS_CONTEXT,
                &UpstreamTlsContext {
                    common_tls_context: Some(CommonTlsContext {
                        tls_certificates: vec![cert],
                        ..CommonTlsContext::default()
                    }),
                    ..UpstreamTlsContext::default()
                },
            )),
            ..XdsCluster::default()
        };
        assert!(cluster_holds_private_key(&cluster_with(key(
            DataSpecifier::InlineString("k".to_owned())
        ))));
        assert!(cluster_holds_private_key(&cluster_with(key(
            DataSpecifier::InlineBytes(b"k".to_vec())
        ))));
        assert!(!cluster_holds_private_key(&cluster_with(key(
            DataSpecifier::Filename("/etc/key.pem".to_owned())
        ))));

        let secret = |t| XdsSecret {
            name: "s".to_owned(),
            r#type: Some(t),
        };
        assert!(secret_is_private(&secret(secret::Type::TlsCertificate(
            TlsCertificate::default()
        ))));
        assert!(!secret_is_private(&secret(
            secret::Type::ValidationContext(Default::default())
        )));
        assert!(secret_is_private(&XdsSecret::default()));
    }

    #[test]
    fn listener_names_the_ads_secrets_of_its_credential_injectors() {
        use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
        use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpFilter, http_filter,
        };
        use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
        let injector = |secret: SdsSecretConfig| HttpFilter {
            name: format!("cred-{}", secret.name),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                type_url::CREDENTIAL_INJECTOR,
                &CredentialInjector {
                    credential: Some(TypedExtensionConfig {
                        name: "generic".to_owned(),
                        typed_config: Some(any(
                            type_url::GENERIC_CREDENTIAL,
                            &Generic {
                                credential: Some(secret),
                                ..Generic::default()
                            },
                        )),
                    }),
                    ..CredentialInjector::default()
                },
            ))),
            ..HttpFilter::default()
        };
        let hcm = XdsHttpConnectionManager {
            http_filters: vec![
                injector(sds("api-key", true)),
                injector(sds("static", false)),
            ],
            ..XdsHttpConnectionManager::default()
        };
        let listener = XdsListener {
            name: "l".to_owned(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "hcm".to_owned(),
                    config_type: Some(FilterConfigType::TypedConfig(any(
                        type_url::HTTP_CONNECTION_MANAGER,
                        &hcm,
                    ))),
                }],
                ..FilterChain::default()
            }],
            ..XdsListener::default()
        };
        // Only the one delivered over ADS is fetched; the other is a bootstrap secret.
        let r = listener_references(&listener);
        assert_eq!(r.credential_secrets, vec!["api-key".to_owned()]);
        assert!(r.secrets.is_empty(), "the listener does not depend on it");
    }
}
