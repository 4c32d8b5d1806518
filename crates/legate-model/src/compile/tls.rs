//! Upstream TLS → the cluster's `transport_socket` (`envoy.transport_sockets.tls` with an
//! `UpstreamTlsContext`), and `secrets` entries → SDS `Secret` resources.
//!
//! Certificates and CAs from `secrets` are referenced over SDS (`sds_config: {ads: {}}`), never
//! inlined, so the resources can be cached and logged and the certificates rotate on their
//! own. SAN matchers stay in the cluster: with a CA from SDS they go in a
//! `combined_validation_context`, whose default part Envoy merges with the secret.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, Secret as XdsSecret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, secret,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use legate_snapshot::type_url;

use super::{ads, any};
use crate::{Secret, UpstreamProtocol, UpstreamTls};

/// The transport socket name Envoy knows TLS by.
pub(crate) const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The ALPN protocol a cluster's HTTP version is negotiated as.
fn alpn(protocol: UpstreamProtocol) -> &'static str {
    match protocol {
        UpstreamProtocol::Http1 => "http/1.1",
        UpstreamProtocol::Http2 => "h2",
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..DataSource::default()
    })
}

/// A SAN as written → the SAN type it is matched as, exactly.
fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        SanType::Uri
    } else if san.parse::<IpAddr>().is_ok() {
        SanType::IpAddress
    } else {
        SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type.into(),
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(san.to_owned())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// The `transport_socket` of a cluster with `tls`, as a node in `node_cluster` gets it (its
/// client certificate may differ from other nodes').
pub(crate) fn transport_socket(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
    node_cluster: Option<&str>,
) -> TransportSocket {
    let sans: Vec<SubjectAltNameMatcher> = tls
        .subject_alt_names
        .iter()
        .map(|s| san_matcher(s))
        .collect();
    let validation = match (&tls.ca, &tls.ca_file) {
        (Some(ca), _) if sans.is_empty() => Some(
            ValidationContextType::ValidationContextSdsSecretConfig(sds(ca)),
        ),
        (Some(ca), _) => Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..CertificateValidationContext::default()
                }),
                validation_context_sds_secret_config: Some(sds(ca)),
                ..CombinedCertificateValidationContext::default()
            },
        )),
        (None, Some(path)) => Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: file(path),
                match_typed_subject_alt_names: sans,
                ..CertificateValidationContext::default()
            },
        )),
        (None, None) => None,
    };
    let context = UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_default(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec![alpn(protocol).to_owned()],
            tls_certificate_sds_secret_configs: tls
                .client_certificate_for(node_cluster)
                .map(sds)
                .into_iter()
                .collect(),
            validation_context_type: validation,
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(ConfigType::TypedConfig(any(
            type_url::UPSTREAM_TLS_CONTEXT,
            &context,
        ))),
    }
}

/// The `Secret` resources for the names in `wanted`, in the order `secrets` lists them. Their
/// data sources are file names: a proxy reading the mesh reads them itself, a control plane
/// replaces them with the files' contents before serving them.
pub(crate) fn secrets(all: &[Secret], wanted: &BTreeSet<String>) -> Vec<XdsSecret> {
    all.iter()
        .filter(|s| wanted.contains(&s.name))
        .map(secret)
        .collect()
}

fn secret(s: &Secret) -> XdsSecret {
    let kind = if let Some(value) = &s.value {
        secret::Type::GenericSecret(
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::GenericSecret {
                secret: file(value),
                ..Default::default()
            },
        )
    } else if s.is_certificate() {
        secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: s.cert.as_deref().and_then(file),
            private_key: s.key.as_deref().and_then(file),
            ..TlsCertificate::default()
        })
    } else {
        secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: s.ca.as_deref().and_then(file),
            ..CertificateValidationContext::default()
        })
    };
    XdsSecret {
        name: s.name.clone(),
        r#type: Some(kind),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use prost::Message;

    use super::*;
    use crate::{compile, compile_for_grpc, compile_for_node_cluster, load};

    const MESH: &str = "\
secrets:
  - {name: payments-ca, ca: /etc/legate/payments-ca.pem}
  - {name: web-client, cert: /etc/legate/web.pem, key: /etc/legate/web.key}
  - {name: billing-client, cert: /etc/legate/billing.pem, key: /etc/legate/billing.key}
  - {name: unused, ca: /etc/legate/unused.pem}
services:
  - name: payments
    protocol: http2
    versions:
      - {name: v1, weight: 1, endpoints: [{address: 127.0.0.1:8443}]}
    tls:
      sni: payments.internal
      ca: payments-ca
      subject_alt_names: ['spiffe://legate.local/ns/default/sa/payments', 10.0.0.1]
      client_certificate: web-client
      client_certificates: [{node_cluster: billing, secret: billing-client}]
  - name: orders
    endpoints: [{address: 127.0.0.1:8080}]
";

    fn context(r: &legate_snapshot::Resources, cluster: &str) -> Option<UpstreamTlsContext> {
        let c = r
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .expect("cluster");
        let socket = c.transport_socket.as_ref()?;
        assert_eq!(socket.name, TLS_TRANSPORT_SOCKET);
        let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("typed config");
        };
        assert_eq!(any.type_url, type_url::UPSTREAM_TLS_CONTEXT);
        Some(UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes"))
    }

    fn names(r: &legate_snapshot::Resources) -> Vec<&str> {
        r.secrets.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn service_tls_compiles_to_sds_references_and_secrets() {
        let mesh = load(MESH, "m.yaml").expect("valid");
        let r = compile(&mesh);
        assert!(context(&r, "orders").is_none(), "plaintext stays plaintext");
        let ctx = context(&r, "payments-v1").expect("tls");
        assert_eq!(ctx.sni, "payments.internal");
        let common = ctx.common_tls_context.expect("common");
        assert_eq!(common.alpn_protocols, vec!["h2".to_owned()]);
        let certs: Vec<&str> = common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(certs, ["web-client"]);
        let ads = |sds: &SdsSecretConfig| {
            matches!(
                sds.sds_config
                    .as_ref()
                    .and_then(|c| c.config_source_specifier.as_ref()),
                Some(ConfigSourceSpecifier::Ads(_))
            )
        };
        assert!(common.tls_certificate_sds_secret_configs.iter().all(ads));
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("a CA from SDS with SAN matchers is a combined validation context");
        };
        let ca = combined
            .validation_context_sds_secret_config
            .expect("ca over sds");
        assert_eq!(ca.name, "payments-ca");
        assert!(ads(&ca));
        let sans = combined
            .default_validation_context
            .expect("default")
            .match_typed_subject_alt_names;
        let types: Vec<i32> = sans.iter().map(|m| m.san_type).collect();
        assert_eq!(types, [SanType::Uri as i32, SanType::IpAddress as i32]);

        // Only what the clusters name, with file names as data sources.
        assert_eq!(names(&r), ["payments-ca", "web-client"]);
        let Some(secret::Type::TlsCertificate(cert)) = &r.secrets[1].r#type else {
            panic!("certificate secret");
        };
        assert_eq!(
            cert.private_key.as_ref().and_then(|d| d.specifier.clone()),
            Some(data_source::Specifier::Filename(
                "/etc/legate/web.key".to_owned()
            ))
        );
        // legate's own validation takes what the model produced, secrets resolved.
        if let Err(e) = legate_snapshot::build("v1", &r) {
            panic!("legate refuses the compiled TLS: {e}");
        }
        for nc in ["billing", "web"] {
            if let Err(e) = legate_snapshot::build("v1", &compile_for_node_cluster(&mesh, nc)) {
                panic!("legate refuses the compiled TLS for {nc}: {e}");
            }
        }
        let refs = legate_snapshot::refs::cluster_references(
            r.clusters
                .iter()
                .find(|c| c.name == "payments-v1")
                .expect("cluster"),
        );
        assert_eq!(refs.secrets, ["payments-ca", "web-client"]);
    }

    #[test]
    fn a_node_cluster_rule_picks_the_client_certificate() {
        let mesh = load(MESH, "m.yaml").expect("valid");
        assert_eq!(
            mesh.client_certificate_node_clusters()
                .into_iter()
                .collect::<Vec<_>>(),
            ["billing"]
        );
        let billing = compile_for_node_cluster(&mesh, "billing");
        let ctx = context(&billing, "payments-v1").expect("tls");
        let certs: Vec<String> = ctx
            .common_tls_context
            .expect("common")
            .tls_certificate_sds_secret_configs
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(certs, ["billing-client"]);
        assert_eq!(names(&billing), ["payments-ca", "billing-client"]);
        // Any other node cluster is a node no rule selects.
        assert_eq!(compile_for_node_cluster(&mesh, "web"), compile(&mesh));
    }

    #[test]
    fn ca_file_and_no_ca() {
        let text = "\
services:
  - name: a
    endpoints: [{address: 127.0.0.1:1}]
    tls: {ca_file: /etc/ssl/ca.pem, subject_alt_names: [a.internal]}
  - name: b
    endpoints: [{address: 127.0.0.1:2}]
    tls: {sni: example.com}
";
        let r = compile(&load(text, "m.yaml").expect("valid"));
        assert!(r.secrets.is_empty());
        let a = context(&r, "a")
            .expect("tls")
            .common_tls_context
            .expect("common");
        let Some(ValidationContextType::ValidationContext(v)) = a.validation_context_type else {
            panic!("inline validation context");
        };
        assert_eq!(
            v.trusted_ca.and_then(|d| d.specifier),
            Some(data_source::Specifier::Filename(
                "/etc/ssl/ca.pem".to_owned()
            ))
        );
        assert_eq!(
            v.match_typed_subject_alt_names[0].san_type,
            SanType::Dns as i32
        );
        let b = context(&r, "b")
            .expect("tls")
            .common_tls_context
            .expect("common");
        assert_eq!(b.validation_context_type, None);
        assert_eq!(b.alpn_protocols, ["http/1.1"]);
    }

    #[test]
    fn grpc_clients_are_not_offered_tls_services() {
        let mesh = load(MESH, "m.yaml").expect("valid");
        let grpc = compile_for_grpc(&mesh);
        let listeners: Vec<&str> = grpc.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(listeners, ["orders"]);
        assert!(grpc.secrets.is_empty());
        let problems = crate::check_for_grpc(&mesh).expect_err("reported");
        assert_eq!(problems[0].path, "services[0].tls");
    }
}
