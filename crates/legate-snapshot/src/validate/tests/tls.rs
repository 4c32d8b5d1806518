//! TLS: `UpstreamTlsContext` on clusters, `DownstreamTlsContext` and server-name selection on
//! listeners, the `CommonTlsContext` parts both share, SDS references and `Secret`s. Every
//! accepted field is checked for its converted value, every refused one for its exact error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    ConfigSource, DataSource as XdsDataSource, PathConfigSource, TransportSocket,
    TypedExtensionConfig, UpstreamHttpProtocolOptions, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::CodecType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::{
    SystemRootCerts, TrustChainVerification,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CertificateProviderInstance, CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::downstream_tls_context::SessionTicketKeysType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType as XdsSanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, GenericSecret,
    SdsSecretConfig, Secret, SubjectAltNameMatcher, TlsCertificate as XdsTlsCertificate,
    TlsParameters, TlsSessionTicketKeys, UpstreamTlsContext, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    AutoHttpConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher as XdsStringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration as XdsDuration};
use prost::Message;

use super::{Filter, Resources, ads, any, base, cl, dur, edit_hcm, errors, filter, ok, u32v, yes};
use crate::{
    CertificateValidation, DataSource, DownstreamTls, ListenerTls, PrivateKey, SanMatcher, SanType,
    Snapshot, StringMatcher, StringPattern, TlsCertificate, TlsFilterChain, TlsParams, TlsVersion,
    UpstreamProtocol, UpstreamTls, type_url,
};

// ---------------------------------------------------------------------------------------------
// Builders

const UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

fn file(path: &str) -> Option<XdsDataSource> {
    Some(XdsDataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    })
}

fn inline(text: &str) -> Option<XdsDataSource> {
    Some(XdsDataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    })
}

fn cert_files() -> XdsTlsCertificate {
    XdsTlsCertificate {
        certificate_chain: file("/certs/client.pem"),
        private_key: file("/certs/client.key"),
        ..Default::default()
    }
}

fn ca_file() -> CertificateValidationContext {
    CertificateValidationContext {
        trusted_ca: file("/certs/ca.pem"),
        ..Default::default()
    }
}

fn exact(value: &str) -> Option<XdsStringMatcher> {
    Some(XdsStringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())),
        ignore_case: false,
    })
}

fn san(kind: XdsSanType, value: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: kind as i32,
        matcher: exact(value),
        oid: String::new(),
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn socket(type_url: &str, m: &impl Message) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(type_url, m))),
    })
}

/// The base set with cluster `static` speaking TLS with this context.
fn with_upstream(ctx: &UpstreamTlsContext) -> Resources {
    let mut r = base();
    cl(&mut r, "static").transport_socket = socket(UPSTREAM, ctx);
    r
}

/// An upstream context with a CA file and an edit applied to its common context.
fn upstream(edit: impl FnOnce(&mut CommonTlsContext)) -> UpstreamTlsContext {
    let mut common = CommonTlsContext {
        validation_context_type: Some(ValidationContextType::ValidationContext(ca_file())),
        ..Default::default()
    };
    edit(&mut common);
    UpstreamTlsContext {
        common_tls_context: Some(common),
        ..Default::default()
    }
}

fn downstream(edit: impl FnOnce(&mut CommonTlsContext)) -> DownstreamTlsContext {
    let mut common = CommonTlsContext {
        tls_certificates: vec![XdsTlsCertificate {
            certificate_chain: file("/certs/server.pem"),
            private_key: file("/certs/server.key"),
            ..Default::default()
        }],
        ..Default::default()
    };
    edit(&mut common);
    DownstreamTlsContext {
        common_tls_context: Some(common),
        ..Default::default()
    }
}

/// The base set with listener `l1` terminating TLS with this context on its one chain.
fn with_downstream(ctx: &DownstreamTlsContext) -> Resources {
    let mut r = base();
    r.listeners[0].filter_chains[0].transport_socket = socket(DOWNSTREAM, ctx);
    r
}

fn inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            INSPECTOR,
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// A copy of the base listener's chain for `names`, with its own server certificate.
fn named_chain(r: &Resources, name: &str, names: &[&str]) -> FilterChain {
    let mut chain = r.listeners[0].filter_chains[0].clone();
    chain.name = name.to_owned();
    chain.filter_chain_match = Some(FilterChainMatch {
        server_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    });
    chain.transport_socket = socket(
        DOWNSTREAM,
        &downstream(|c| {
            c.tls_certificates[0].certificate_chain = file(&format!("/certs/{name}.pem"));
            c.tls_certificates[0].private_key = file(&format!("/certs/{name}.key"));
        }),
    );
    chain
}

fn files(chain: &str, key: &str) -> TlsCertificate {
    TlsCertificate {
        certificate_chain: DataSource::Filename(Arc::from(chain)),
        private_key: PrivateKey(DataSource::Filename(Arc::from(key))),
    }
}

fn ca_validation(sans: Vec<SanMatcher>) -> CertificateValidation {
    CertificateValidation {
        trusted_ca: Some(DataSource::Filename(Arc::from("/certs/ca.pem"))),
        system_roots: false,
        match_typed_subject_alt_names: sans,
    }
}

fn matcher(san_type: SanType, value: &str) -> SanMatcher {
    SanMatcher {
        san_type,
        matcher: StringMatcher {
            pattern: StringPattern::Exact(Arc::from(value)),
            ignore_case: false,
        },
    }
}

fn cluster_tls(s: &Snapshot) -> &UpstreamTls {
    s.clusters["static"].tls.as_deref().expect("tls")
}

fn listener_tls(s: &Snapshot) -> &ListenerTls {
    s.listeners[0].tls.as_deref().expect("tls")
}

fn secret_cert(name: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(XdsTlsCertificate {
            certificate_chain: inline("CERT"),
            private_key: inline("KEY"),
            ..Default::default()
        })),
    }
}

fn secret_ca(name: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline("CA"),
                match_typed_subject_alt_names: vec![san(XdsSanType::Uri, "spiffe://td/sds")],
                ..Default::default()
            },
        )),
    }
}

fn inline_source(text: &str) -> DataSource {
    DataSource::Inline(Bytes::copy_from_slice(text.as_bytes()))
}

/// Each case edits the base set and must yield exactly this one error.
type Case = (fn() -> Resources, &'static str);

/// An edit of one message and the end of the error it must yield.
type Edit<T> = (fn(&mut T), &'static str);

/// A message to use whole and the end of the error it must yield.
type Make<T> = (fn() -> T, &'static str);

fn check(cases: &[Case]) {
    let mut failures = Vec::new();
    for (i, (make, expected)) in cases.iter().enumerate() {
        let got = errors(&make());
        if got != [*expected] {
            failures.push(format!("case {i}: expected [{expected}]\n    got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Upstream: accepted

#[test]
fn an_upstream_context_converts_in_full() {
    let ctx = UpstreamTlsContext {
        sni: "Payments.Internal".to_owned(),
        max_session_keys: u32v(0),
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificates: vec![cert_files()],
            alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    match_typed_subject_alt_names: vec![
                        san(XdsSanType::Uri, "spiffe://td/ns/pay/sa/api"),
                        san(XdsSanType::Dns, "payments.internal"),
                        san(XdsSanType::IpAddress, "10.0.0.1"),
                        san(XdsSanType::Email, "ops@example.com"),
                    ],
                    ..ca_file()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = ok(&with_upstream(&ctx));
    let expected = UpstreamTls {
        sni: Some(Arc::from("payments.internal")),
        auto_sni: false,
        auto_sni_header: None,
        auto_san_validation: false,
        certificate: Some(files("/certs/client.pem", "/certs/client.key")),
        certificate_sds: None,
        validation: Some(ca_validation(vec![
            matcher(SanType::Uri, "spiffe://td/ns/pay/sa/api"),
            matcher(SanType::Dns, "payments.internal"),
            matcher(SanType::IpAddress, "10.0.0.1"),
            matcher(SanType::Email, "ops@example.com"),
        ])),
        validation_sds: None,
        alpn_protocols: vec![Arc::from("h2"), Arc::from("http/1.1")],
        params: TlsParams {
            min_version: TlsVersion::V1_2,
            max_version: TlsVersion::V1_3,
        },
        max_session_keys: 0,
    };
    assert_eq!(*cluster_tls(&s), expected);
    // The protocol is still the cluster's own.
    assert_eq!(s.clusters["static"].protocol, UpstreamProtocol::Http1);
}

#[test]
fn upstream_defaults_follow_envoy() {
    // An empty context: TLS 1.2 only (Envoy's client default), one session key, and no
    // validation context (legate then checks Mozilla's roots and the server name).
    let s = ok(&with_upstream(&UpstreamTlsContext::default()));
    let t = cluster_tls(&s);
    assert_eq!(t.params, TlsParams::UPSTREAM_DEFAULT);
    assert_eq!(t.max_session_keys, 1);
    assert_eq!(t.validation, None);
    assert_eq!(t.certificate, None);
    assert_eq!(t.sni, None);
    // A minimum of TLS 1.3 lifts the default maximum with it.
    let s = ok(&with_upstream(&upstream(|c| {
        c.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        })
    })));
    assert_eq!(
        cluster_tls(&s).params,
        TlsParams {
            min_version: TlsVersion::V1_3,
            max_version: TlsVersion::V1_3
        }
    );
    // System roots instead of a bundle.
    let s = ok(&with_upstream(&upstream(|c| {
        c.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                system_root_certs: Some(SystemRootCerts {}),
                ..Default::default()
            },
        ))
    })));
    let v = cluster_tls(&s).validation.as_ref().expect("validation");
    assert!(v.system_roots);
    assert_eq!(v.trusted_ca, None);
    // Inline sources; a raw buffer socket is plaintext.
    let s = ok(&with_upstream(&upstream(|c| {
        c.tls_certificates = vec![XdsTlsCertificate {
            certificate_chain: inline("CHAIN"),
            private_key: Some(XdsDataSource {
                specifier: Some(data_source::Specifier::InlineBytes(b"KEY".to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        }]
    })));
    assert_eq!(
        cluster_tls(&s).certificate,
        Some(TlsCertificate {
            certificate_chain: inline_source("CHAIN"),
            private_key: PrivateKey(inline_source("KEY")),
        })
    );
    let mut r = base();
    cl(&mut r, "static").transport_socket = Some(TransportSocket {
        name: "raw".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    .to_owned(),
            value: Vec::new(),
        })),
    });
    assert_eq!(ok(&r).clusters["static"].tls, None);
}

fn typed_options(o: &HttpProtocolOptions) -> std::collections::HashMap<String, Any> {
    [(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(type_url::HTTP_PROTOCOL_OPTIONS, o),
    )]
    .into_iter()
    .collect()
}

fn auto_config() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::AutoConfig(
            AutoHttpConfig::default(),
        )),
        ..Default::default()
    }
}

#[test]
fn auto_config_negotiates_over_tls_only() {
    let mut r = with_upstream(&upstream(|_| {}));
    cl(&mut r, "static").typed_extension_protocol_options = typed_options(&auto_config());
    assert_eq!(ok(&r).clusters["static"].protocol, UpstreamProtocol::Auto);
    // In cleartext there is nothing to negotiate with: HTTP/1.1, as Envoy.
    let mut r = base();
    cl(&mut r, "static").typed_extension_protocol_options = typed_options(&auto_config());
    assert_eq!(ok(&r).clusters["static"].protocol, UpstreamProtocol::Http1);
    // Explicit HTTP/2 over TLS stays HTTP/2 (offered as h2).
    let mut r = with_upstream(&upstream(|_| {}));
    cl(&mut r, "static").typed_extension_protocol_options = typed_options(&HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            },
        )),
        ..Default::default()
    });
    assert_eq!(ok(&r).clusters["static"].protocol, UpstreamProtocol::Http2);
}

#[test]
fn auto_sni_comes_from_the_http_options() {
    let mut r = with_upstream(&upstream(|_| {}));
    cl(&mut r, "static").typed_extension_protocol_options = typed_options(&HttpProtocolOptions {
        upstream_http_protocol_options: Some(UpstreamHttpProtocolOptions {
            auto_sni: true,
            auto_san_validation: true,
            override_auto_sni_header: "X-Target".to_owned(),
        }),
        ..auto_config()
    });
    let s = ok(&r);
    let t = cluster_tls(&s);
    assert!(t.auto_sni && t.auto_san_validation);
    assert_eq!(
        t.auto_sni_header.as_ref().map(http::HeaderName::as_str),
        Some("x-target")
    );
    // The deprecated cluster-level field works the same.
    let mut r = with_upstream(&upstream(|_| {}));
    cl(&mut r, "static").upstream_http_protocol_options = Some(UpstreamHttpProtocolOptions {
        auto_sni: true,
        ..Default::default()
    });
    let s = ok(&r);
    let t = cluster_tls(&s);
    assert!(t.auto_sni && !t.auto_san_validation);
    assert_eq!(t.auto_sni_header, None);
}

// ---------------------------------------------------------------------------------------------
// SDS

#[test]
fn sds_references_resolve_against_the_secrets() {
    let mut r = with_upstream(&upstream(|c| {
        c.tls_certificate_sds_secret_configs = vec![sds("client")];
        c.validation_context_type = Some(ValidationContextType::ValidationContextSdsSecretConfig(
            sds("ca"),
        ));
    }));
    r.secrets = vec![
        secret_cert("client"),
        secret_ca("ca"),
        secret_cert("unused"),
    ];
    let s = ok(&r);
    let t = cluster_tls(&s);
    assert_eq!(t.certificate_sds.as_deref(), Some("client"));
    assert_eq!(t.validation_sds.as_deref(), Some("ca"));
    assert_eq!(
        t.certificate,
        Some(TlsCertificate {
            certificate_chain: inline_source("CERT"),
            private_key: PrivateKey(inline_source("KEY")),
        })
    );
    assert_eq!(
        t.validation,
        Some(CertificateValidation {
            trusted_ca: Some(inline_source("CA")),
            system_roots: false,
            match_typed_subject_alt_names: vec![matcher(SanType::Uri, "spiffe://td/sds")],
        })
    );
    assert_eq!(
        s.clusters["static"].secret_names().collect::<Vec<_>>(),
        ["client", "ca"]
    );

    // Istio's shape: SAN matchers inline, the CA from SDS, merged.
    let mut r = with_upstream(&upstream(|c| {
        c.validation_context_type = Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: vec![san(XdsSanType::Dns, "api.internal")],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ca")),
                ..Default::default()
            },
        ));
    }));
    r.secrets = vec![secret_ca("ca")];
    let s = ok(&r);
    assert_eq!(
        cluster_tls(&s).validation,
        Some(CertificateValidation {
            trusted_ca: Some(inline_source("CA")),
            system_roots: false,
            match_typed_subject_alt_names: vec![
                matcher(SanType::Dns, "api.internal"),
                matcher(SanType::Uri, "spiffe://td/sds"),
            ],
        })
    );

    // A listener's server certificate from SDS.
    let mut r = with_downstream(&downstream(|c| {
        c.tls_certificates.clear();
        c.tls_certificate_sds_secret_configs = vec![sds("server")];
    }));
    r.secrets = vec![secret_cert("server")];
    let s = ok(&r);
    let chain = &listener_tls(&s).chains[0];
    assert_eq!(chain.tls.certificate_sds.as_deref(), Some("server"));
    assert!(chain.tls.certificate.is_some());
    assert_eq!(
        s.listeners[0].secret_names().collect::<Vec<_>>(),
        ["server"]
    );
}

#[test]
fn sds_problems_name_the_secret() {
    check(&[
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![sds("client")];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: secret 'client' not found",
        ),
        (
            || {
                let mut r = with_upstream(&upstream(|c| {
                    c.validation_context_type = Some(
                        ValidationContextType::ValidationContextSdsSecretConfig(sds("ca")),
                    );
                }));
                r.secrets = vec![secret_cert("ca")];
                r
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.validation_context_sds_secret_config.name: secret 'ca' is not a validation_context",
        ),
        (
            || {
                let mut r = with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![sds("client")];
                }));
                r.secrets = vec![secret_ca("client")];
                r
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: secret 'client' is not a tls_certificate",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.validation_context_type =
                        Some(ValidationContextType::CombinedValidationContext(
                            CombinedCertificateValidationContext {
                                default_validation_context: None,
                                validation_context_sds_secret_config: Some(sds("ca")),
                                ..Default::default()
                            },
                        ));
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name: secret 'ca' not found",
        ),
        (
            || {
                with_downstream(&downstream(|c| {
                    c.tls_certificates.clear();
                    c.tls_certificate_sds_secret_configs = vec![sds("server")];
                }))
            },
            "listener 'l1': filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: secret 'server' not found",
        ),
        (
            || {
                // An invalid secret is reported once, on itself.
                let mut r = with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![sds("client")];
                }));
                let mut bad = secret_cert("client");
                if let Some(secret::Type::TlsCertificate(t)) = &mut bad.r#type {
                    t.password = inline("hunter2");
                }
                r.secrets = vec![bad];
                r
            },
            "secret 'client': tls_certificate.password: not supported by legate",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
                        name: "client".to_owned(),
                        sds_config: None,
                    }];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: required: legate has no static secrets (use {ads: {}})",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
                        name: "client".to_owned(),
                        sds_config: Some(ConfigSource {
                            config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                                PathConfigSource::default(),
                            )),
                            ..Default::default()
                        }),
                    }];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: only ads is supported by legate (secrets come over the ADS stream)",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![sds("")];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: must not be empty",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificate_sds_secret_configs = vec![sds("a"), sds("b")];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs: more than one certificate is not supported by legate",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificates = vec![cert_files()];
                    c.tls_certificate_sds_secret_configs = vec![sds("a")];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs: cannot be combined with tls_certificates (Envoy would ignore it)",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.validation_context_type =
                        Some(ValidationContextType::CombinedValidationContext(
                            CombinedCertificateValidationContext::default(),
                        ));
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.combined_validation_context.validation_context_sds_secret_config: required",
        ),
    ]);
}

#[test]
fn secrets_are_validated() {
    let with = |s: Secret| {
        let mut r = base();
        r.secrets = vec![s];
        r
    };
    // Valid secrets nobody references are accepted.
    ok(&with(secret_cert("a")));
    ok(&with(secret_ca("b")));
    check(&[
        (
            || {
                let mut r = base();
                r.secrets = vec![secret_cert("a"), secret_ca("a")];
                r
            },
            "secret 'a': name: duplicate secret name",
        ),
        (
            || {
                let mut r = base();
                r.secrets = vec![Secret {
                    name: "t".to_owned(),
                    r#type: Some(secret::Type::SessionTicketKeys(
                        TlsSessionTicketKeys::default(),
                    )),
                }];
                r
            },
            "secret 't': session_ticket_keys: not supported by legate",
        ),
        (
            || {
                let mut r = base();
                r.secrets = vec![Secret {
                    name: "g".to_owned(),
                    r#type: Some(secret::Type::GenericSecret(GenericSecret::default())),
                }];
                r
            },
            "secret 'g': generic_secret.secret: required",
        ),
        (
            || {
                let mut r = base();
                r.secrets = vec![Secret {
                    name: "n".to_owned(),
                    r#type: None,
                }];
                r
            },
            "secret 'n': : one of tls_certificate, validation_context or generic_secret is required",
        ),
        (
            || {
                let mut r = base();
                r.secrets = vec![secret_cert("")];
                r
            },
            "secret '': name: must not be empty",
        ),
        (
            || {
                let mut r = base();
                let mut s = secret_ca("ca");
                if let Some(secret::Type::ValidationContext(v)) = &mut s.r#type {
                    v.trusted_ca = None;
                }
                r.secrets = vec![s];
                r
            },
            "secret 'ca': validation_context.trusted_ca: trusted_ca is required: subject alt name checks without a trusted CA are insecure",
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Upstream: refused

const CTX: &str = "cluster 'static': transport_socket.typed_config";

#[test]
fn upstream_fields_refused() {
    check(&[
        (
            || {
                with_upstream(&UpstreamTlsContext {
                    auto_host_sni: true,
                    ..upstream(|_| {})
                })
            },
            "cluster 'static': transport_socket.typed_config.auto_host_sni: not supported by legate",
        ),
        (
            || {
                with_upstream(&UpstreamTlsContext {
                    auto_sni_san_validation: true,
                    ..upstream(|_| {})
                })
            },
            "cluster 'static': transport_socket.typed_config.auto_sni_san_validation: not supported by legate",
        ),
        (
            || {
                with_upstream(&UpstreamTlsContext {
                    allow_renegotiation: true,
                    ..upstream(|_| {})
                })
            },
            "cluster 'static': transport_socket.typed_config.allow_renegotiation: not supported by legate (rustls never renegotiates)",
        ),
        (
            || {
                with_upstream(&UpstreamTlsContext {
                    sni: "10.0.0.1".to_owned(),
                    ..upstream(|_| {})
                })
            },
            "cluster 'static': transport_socket.typed_config.sni: '10.0.0.1' is not a valid DNS name",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificates = vec![cert_files(), cert_files()];
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificates: a client context takes at most one certificate",
        ),
        (
            || with_upstream(&upstream(|c| c.alpn_protocols = vec!["h3".to_owned()])),
            "cluster 'static': transport_socket.typed_config.common_tls_context.alpn_protocols: 'h3' is not supported by legate (h2 or http/1.1)",
        ),
        (
            || {
                let mut r = with_upstream(&upstream(|_| {}));
                cl(&mut r, "static").upstream_http_protocol_options =
                    Some(UpstreamHttpProtocolOptions {
                        auto_san_validation: true,
                        ..Default::default()
                    });
                r
            },
            "cluster 'static': upstream_http_protocol_options.auto_san_validation: requires auto_sni in legate (the certificate is checked against the name sent)",
        ),
        (
            || {
                let mut r = with_upstream(&upstream(|_| {}));
                cl(&mut r, "static").upstream_http_protocol_options =
                    Some(UpstreamHttpProtocolOptions {
                        auto_sni: true,
                        override_auto_sni_header: "bad header".to_owned(),
                        ..Default::default()
                    });
                r
            },
            "cluster 'static': upstream_http_protocol_options.override_auto_sni_header: 'bad header' is not a valid header name: ' ' is not allowed (letters, digits and !#$%&'*+-.^_`|~ only)",
        ),
        (
            || {
                let mut r = with_upstream(&upstream(|_| {}));
                let c = cl(&mut r, "static");
                c.upstream_http_protocol_options = Some(UpstreamHttpProtocolOptions {
                    auto_sni: true,
                    ..Default::default()
                });
                c.typed_extension_protocol_options = typed_options(&HttpProtocolOptions {
                    upstream_http_protocol_options: Some(UpstreamHttpProtocolOptions::default()),
                    ..auto_config()
                });
                r
            },
            "cluster 'static': upstream_http_protocol_options: cannot be combined with typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].upstream_http_protocol_options",
        ),
        (
            || {
                let mut r = with_upstream(&upstream(|_| {}));
                cl(&mut r, "static").typed_extension_protocol_options =
                    typed_options(&HttpProtocolOptions {
                        upstream_protocol_options: Some(UpstreamProtocolOptions::AutoConfig(
                            AutoHttpConfig {
                                http3_protocol_options: Some(Default::default()),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    });
                r
            },
            "cluster 'static': typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].auto_config.http3_protocol_options: not supported by legate",
        ),
        (
            || {
                let mut r = base();
                cl(&mut r, "static").transport_socket = Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".to_owned(),
                    config_type: None,
                });
                r
            },
            "cluster 'static': transport_socket.typed_config: required for envoy.transport_sockets.tls (a UpstreamTlsContext)",
        ),
        (
            || {
                let mut r = base();
                cl(&mut r, "static").transport_socket =
                    socket(DOWNSTREAM, &DownstreamTlsContext::default());
                r
            },
            "cluster 'static': transport_socket.typed_config: transport socket type 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext' is not supported by legate (expected UpstreamTlsContext or RawBuffer)",
        ),
        (
            || {
                let mut r = base();
                cl(&mut r, "static").transport_socket = Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".to_owned(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                        type_url: UPSTREAM.to_owned(),
                        value: vec![0xff, 0xff],
                    })),
                });
                r
            },
            "cluster 'static': transport_socket.typed_config: cannot decode UpstreamTlsContext: failed to decode Protobuf message: invalid varint",
        ),
    ]);
}

#[test]
fn common_context_fields_refused() {
    let _ = CTX;
    check(&[
        (
            || {
                with_upstream(&upstream(|c| {
                    c.tls_certificate_provider_instance = Some(Default::default())
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance: not supported by legate",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.custom_tls_certificate_selector = Some(TypedExtensionConfig::default())
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.custom_tls_certificate_selector: not supported by legate",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.custom_handshaker = Some(TypedExtensionConfig::default())
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.custom_handshaker: not supported by legate",
        ),
        (
            || with_upstream(&upstream(|c| c.key_log = Some(Default::default()))),
            "cluster 'static': transport_socket.typed_config.common_tls_context.key_log: not supported by legate",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.validation_context_type = Some(
                        ValidationContextType::ValidationContextCertificateProviderInstance(
                            CertificateProviderInstance::default(),
                        ),
                    )
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.validation_context_certificate_provider_instance: not supported by legate",
        ),
        (
            || with_upstream(&upstream(|c| c.alpn_protocols = vec![String::new()])),
            "cluster 'static': transport_socket.typed_config.common_tls_context.alpn_protocols[0]: must be 1 to 255 bytes",
        ),
        (
            || {
                with_upstream(&upstream(|c| {
                    c.alpn_protocols = vec!["h2".to_owned(), "h2".to_owned()]
                }))
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.alpn_protocols[1]: duplicate protocol 'h2'",
        ),
    ]);
}

fn params(p: TlsParameters) -> Resources {
    with_upstream(&upstream(|c| c.tls_params = Some(p)))
}

#[test]
fn tls_params_refused() {
    check(&[
        (
            || {
                params(TlsParameters {
                    tls_minimum_protocol_version: TlsProtocol::TlSv10 as i32,
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version: TLSv1_0 is not supported by legate (TLSv1_2 or TLSv1_3)",
        ),
        (
            || {
                params(TlsParameters {
                    tls_maximum_protocol_version: TlsProtocol::TlSv11 as i32,
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.tls_maximum_protocol_version: TLSv1_1 is not supported by legate (TLSv1_2 or TLSv1_3)",
        ),
        (
            || {
                params(TlsParameters {
                    tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                    tls_maximum_protocol_version: TlsProtocol::TlSv12 as i32,
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version: is above tls_maximum_protocol_version",
        ),
        (
            || {
                params(TlsParameters {
                    tls_minimum_protocol_version: 9,
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version: unknown value 9",
        ),
        (
            || {
                params(TlsParameters {
                    cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".to_owned()],
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.cipher_suites: not supported by legate (rustls' AEAD suites with forward secrecy are always used)",
        ),
        (
            || {
                params(TlsParameters {
                    ecdh_curves: vec!["P-256".to_owned()],
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.ecdh_curves: not supported by legate (X25519MLKEM768, X25519, P-256 and P-384 are always offered)",
        ),
        (
            || {
                params(TlsParameters {
                    signature_algorithms: vec!["ecdsa_secp256r1_sha256".to_owned()],
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.signature_algorithms: not supported by legate",
        ),
        (
            || {
                params(TlsParameters {
                    compliance_policies: vec![0],
                    ..Default::default()
                })
            },
            "cluster 'static': transport_socket.typed_config.common_tls_context.tls_params.compliance_policies: not supported by legate",
        ),
    ]);
}

fn certificate(edit: fn(&mut XdsTlsCertificate)) -> Resources {
    with_upstream(&upstream(|c| {
        let mut t = cert_files();
        edit(&mut t);
        c.tls_certificates = vec![t];
    }))
}

const CERT: &str =
    "cluster 'static': transport_socket.typed_config.common_tls_context.tls_certificates[0]";

#[test]
fn certificate_and_data_source_fields_refused() {
    let cases: &[Edit<XdsTlsCertificate>] = &[
        (
            |t| t.pkcs12 = file("/a.p12"),
            "pkcs12: not supported by legate",
        ),
        (
            |t| t.password = inline("x"),
            "password: not supported by legate",
        ),
        (
            |t| t.ocsp_staple = file("/o"),
            "ocsp_staple: not supported by legate",
        ),
        (
            |t| t.private_key_provider = Some(Default::default()),
            "private_key_provider: not supported by legate",
        ),
        (
            |t| t.signed_certificate_timestamp = vec![XdsDataSource::default()],
            "signed_certificate_timestamp: not supported by legate",
        ),
        (
            |t| t.tls_params = Some(TlsParameters::default()),
            "tls_params: not supported by legate",
        ),
        (|t| t.private_key = None, "private_key: required"),
        (
            |t| t.certificate_chain = None,
            "certificate_chain: required",
        ),
        (
            |t| {
                t.private_key = Some(XdsDataSource {
                    specifier: Some(data_source::Specifier::EnvironmentVariable(
                        "KEY".to_owned(),
                    )),
                    ..Default::default()
                })
            },
            "private_key.environment_variable: not supported by legate (use filename, inline_bytes, inline_string or SDS)",
        ),
        (
            |t| t.private_key = file(""),
            "private_key.filename: must not be empty",
        ),
        (
            |t| t.private_key = inline(""),
            "private_key.inline_string: must not be empty",
        ),
        (
            |t| t.private_key = inline(&"k".repeat((1 << 20) + 1)),
            "private_key.inline_string: larger than 1048576 bytes",
        ),
        (
            |t| t.private_key = Some(XdsDataSource::default()),
            "private_key: one of filename, inline_bytes or inline_string is required",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (edit, tail)) in cases.iter().enumerate() {
        let expected = format!("{CERT}.{tail}");
        let got = errors(&certificate(*edit));
        if got != [expected.clone()] {
            failures.push(format!("case {i}: expected [{expected}]\n    got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const VC: &str =
    "cluster 'static': transport_socket.typed_config.common_tls_context.validation_context";

#[test]
fn validation_context_fields_refused() {
    let cases: &[Edit<CertificateValidationContext>] = &[
        (
            |v| v.trusted_ca = None,
            "trusted_ca: trusted_ca is required (a validation context without one would verify nothing)",
        ),
        (
            |v| {
                v.trusted_ca = None;
                v.match_typed_subject_alt_names = vec![san(XdsSanType::Dns, "a")];
            },
            "trusted_ca: trusted_ca is required: subject alt name checks without a trusted CA are insecure",
        ),
        (
            |v| v.system_root_certs = Some(SystemRootCerts {}),
            "system_root_certs: cannot be combined with trusted_ca",
        ),
        (
            |v| v.verify_certificate_spki = vec!["x".to_owned()],
            "verify_certificate_spki: not supported by legate",
        ),
        (
            |v| v.verify_certificate_hash = vec!["x".to_owned()],
            "verify_certificate_hash: not supported by legate",
        ),
        (|v| v.crl = file("/crl.pem"), "crl: not supported by legate"),
        (
            |v| v.allow_expired_certificate = true,
            "allow_expired_certificate: not supported by legate (expired certificates are always refused)",
        ),
        (
            |v| v.trust_chain_verification = TrustChainVerification::AcceptUntrusted as i32,
            "trust_chain_verification: ACCEPT_UNTRUSTED is not supported by legate (verification is never bypassed)",
        ),
        (
            |v| v.match_subject_alt_names = vec![exact("a").unwrap_or_default()],
            "match_subject_alt_names: not supported by legate (deprecated: use match_typed_subject_alt_names)",
        ),
        (
            |v| v.custom_validator_config = Some(TypedExtensionConfig::default()),
            "custom_validator_config: not supported by legate",
        ),
        (
            |v| v.max_verify_depth = u32v(3),
            "max_verify_depth: not supported by legate",
        ),
        (
            |v| v.suppress_client_ca_list = true,
            "suppress_client_ca_list: not supported by legate",
        ),
        (
            |v| v.only_verify_leaf_cert_crl = true,
            "only_verify_leaf_cert_crl: not supported by legate",
        ),
        (
            |v| v.require_signed_certificate_timestamp = yes(),
            "require_signed_certificate_timestamp: not supported by legate",
        ),
        (
            |v| v.ca_certificate_provider_instance = Some(Default::default()),
            "ca_certificate_provider_instance: not supported by legate",
        ),
        (
            |v| v.match_typed_subject_alt_names = vec![san(XdsSanType::Unspecified, "a")],
            "match_typed_subject_alt_names[0].san_type: required (DNS, URI, IP_ADDRESS or EMAIL)",
        ),
        (
            |v| v.match_typed_subject_alt_names = vec![san(XdsSanType::OtherName, "a")],
            "match_typed_subject_alt_names[0].san_type: OTHER_NAME is not supported by legate",
        ),
        (
            |v| {
                v.match_typed_subject_alt_names = vec![SubjectAltNameMatcher {
                    san_type: XdsSanType::Dns as i32,
                    matcher: None,
                    oid: String::new(),
                }]
            },
            "match_typed_subject_alt_names[0].matcher: required",
        ),
        (
            |v| {
                v.match_typed_subject_alt_names = vec![SubjectAltNameMatcher {
                    san_type: XdsSanType::Dns as i32,
                    matcher: Some(XdsStringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Prefix(String::new())),
                        ignore_case: false,
                    }),
                    oid: String::new(),
                }]
            },
            "match_typed_subject_alt_names[0].matcher.prefix: must not be empty",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (edit, tail)) in cases.iter().enumerate() {
        let expected = format!("{VC}.{tail}");
        let mut v = ca_file();
        edit(&mut v);
        let got = errors(&with_upstream(&upstream(|c| {
            c.validation_context_type = Some(ValidationContextType::ValidationContext(v))
        })));
        if got != [expected.clone()] {
            failures.push(format!("case {i}: expected [{expected}]\n    got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Downstream

#[test]
fn a_downstream_context_converts() {
    let s = ok(&with_downstream(&DownstreamTlsContext {
        require_client_certificate: yes(),
        ..downstream(|c| {
            c.alpn_protocols = vec!["h2".to_owned(), "http/1.1".to_owned()];
            c.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    match_typed_subject_alt_names: vec![san(
                        XdsSanType::Uri,
                        "spiffe://td/ns/app/sa/web",
                    )],
                    ..ca_file()
                },
            ));
        })
    }));
    let expected = ListenerTls {
        chains: vec![TlsFilterChain {
            name: Arc::from("filter_chains[0]"),
            server_names: Vec::new(),
            handshake_timeout: None,
            tls: DownstreamTls {
                certificate: Some(files("/certs/server.pem", "/certs/server.key")),
                certificate_sds: None,
                validation: Some(ca_validation(vec![matcher(
                    SanType::Uri,
                    "spiffe://td/ns/app/sa/web",
                )])),
                validation_sds: None,
                require_client_certificate: true,
                alpn_protocols: vec![Arc::from("h2"), Arc::from("http/1.1")],
                params: TlsParams::DOWNSTREAM_DEFAULT,
            },
        }],
        default_chain: None,
        client_hello_timeout: Some(Duration::from_secs(15)),
    };
    assert_eq!(*listener_tls(&s), expected);
}

#[test]
fn server_names_select_between_chains() {
    let mut r = base();
    let a = named_chain(&r, "a", &["A.example.com", "*.a.example.com"]);
    let b = named_chain(&r, "b", &["b.example.com"]);
    let fallback = named_chain(&r, "fallback", &[]);
    let mut default = named_chain(&r, "default", &[]);
    default.filter_chain_match = None;
    default.transport_socket_connect_timeout = dur(5);
    let l = &mut r.listeners[0];
    l.listener_filters = vec![inspector()];
    l.listener_filters_timeout = Some(XdsDuration {
        seconds: 2,
        nanos: 0,
    });
    l.filter_chains = vec![a, b, fallback];
    l.default_filter_chain = Some(default);
    let s = ok(&r);
    let t = listener_tls(&s);
    let names: Vec<(&str, Vec<&str>)> = t
        .chains
        .iter()
        .map(|c| (&*c.name, c.server_names.iter().map(|n| &**n).collect()))
        .collect();
    assert_eq!(
        names,
        [
            ("a", vec!["a.example.com", "*.a.example.com"]),
            ("b", vec!["b.example.com"]),
            ("fallback", vec![]),
            ("default", vec![]),
        ]
    );
    assert_eq!(t.default_chain, Some(3));
    assert_eq!(t.client_hello_timeout, Some(Duration::from_secs(2)));
    assert_eq!(t.chains[3].handshake_timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        t.chains[1].tls.certificate,
        Some(files("/certs/b.pem", "/certs/b.key"))
    );
    assert_eq!(t.select(Some("x.a.example.com")), Some(0));
    assert_eq!(t.select(Some("b.example.com")), Some(1));
    assert_eq!(t.select(Some("c.example.com")), Some(2));
}

fn listener_case(edit: fn(&mut Resources)) -> Resources {
    let mut r = base();
    let a = named_chain(&r, "a", &["a.example.com"]);
    let b = named_chain(&r, "b", &["b.example.com"]);
    r.listeners[0].listener_filters = vec![inspector()];
    r.listeners[0].filter_chains = vec![a, b];
    edit(&mut r);
    r
}

#[test]
fn listener_tls_refused() {
    check(&[
        (
            || listener_case(|r| r.listeners[0].listener_filters.clear()),
            "listener 'l1': listener_filters: server_names need the envoy.filters.listener.tls_inspector listener filter (as in Envoy, without it the server name is never read)",
        ),
        (
            || {
                listener_case(|r| {
                    let again = r.listeners[0].filter_chains[0].clone();
                    r.listeners[0].filter_chains.push(again);
                })
            },
            "listener 'l1': filter_chains[2].filter_chain_match.server_names: 'a.example.com' is already matched by filter_chains[0] (duplicate matching rules)",
        ),
        (
            || {
                listener_case(|r| {
                    for c in &mut r.listeners[0].filter_chains {
                        c.filter_chain_match = None;
                    }
                })
            },
            "listener 'l1': filter_chains[1].filter_chain_match: filter_chains[0] already matches every server name (duplicate matching rules)",
        ),
        (
            || listener_case(|r| r.listeners[0].filter_chains[1].transport_socket = None),
            "listener 'l1': filter_chains: mixing plaintext and TLS filter chains on one listener is not supported by legate",
        ),
        (
            || {
                listener_case(|r| {
                    let mut other = super::hcm(super::rds("rc1"));
                    other.stat_prefix = "other".to_owned();
                    r.listeners[0].filter_chains[1].filters = vec![Filter {
                        name: "hcm".to_owned(),
                        config_type: Some(filter::ConfigType::TypedConfig(any(
                            type_url::HTTP_CONNECTION_MANAGER,
                            &other,
                        ))),
                    }];
                })
            },
            "listener 'l1': filter_chains[1].filters: must be the same as filter_chains[0].filters: legate runs one http connection manager per listener (chains may differ in server_names and TLS only)",
        ),
        (
            || {
                listener_case(|r| {
                    let mut d = r.listeners[0].filter_chains[1].clone();
                    d.filter_chain_match = Some(FilterChainMatch {
                        server_names: vec!["d.example.com".to_owned()],
                        ..Default::default()
                    });
                    r.listeners[0].default_filter_chain = Some(d);
                })
            },
            "listener 'l1': default_filter_chain.filter_chain_match: must be empty on the default filter chain",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                        server_names: vec!["a.*.com".to_owned()],
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filter_chain_match.server_names[0]: 'a.*.com' is not a DNS name or a '*.' wildcard followed by one",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                        server_names: vec!["*".to_owned()],
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filter_chain_match.server_names[0]: '*' is not a DNS name or a '*.' wildcard followed by one",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                        server_names: vec!["a.example.com".to_owned(), "A.example.com".to_owned()],
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filter_chain_match.server_names[1]: duplicate server name 'A.example.com'",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                        server_names: vec!["a.example.com".to_owned()],
                        application_protocols: vec!["h2".to_owned()],
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filter_chain_match.application_protocols: not supported by legate",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].filter_chains[0].filter_chain_match = Some(FilterChainMatch {
                        server_names: vec!["a.example.com".to_owned()],
                        transport_protocol: "raw_buffer".to_owned(),
                        ..Default::default()
                    })
                })
            },
            "listener 'l1': filter_chains[0].filter_chain_match.transport_protocol: 'raw_buffer' is not supported by legate (only tls, on TLS chains)",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].listener_filters = vec![ListenerFilter {
                        name: "tls".to_owned(),
                        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                            INSPECTOR,
                            &TlsInspector {
                                enable_ja3_fingerprinting: yes(),
                                ..Default::default()
                            },
                        ))),
                        ..Default::default()
                    }]
                })
            },
            "listener 'l1': listener_filters[0].typed_config.enable_ja3_fingerprinting: not supported by legate",
        ),
        (
            || {
                listener_case(|r| {
                    r.listeners[0].listener_filters.push(inspector());
                })
            },
            "listener 'l1': listener_filters[1]: the tls inspector is listed twice",
        ),
        (
            || listener_case(|r| r.listeners[0].continue_on_listener_filters_timeout = true),
            "listener 'l1': continue_on_listener_filters_timeout: not supported by legate (a TLS handshake needs the whole ClientHello)",
        ),
        (
            || {
                let mut r = base();
                r.listeners[0].filter_chains[0].transport_socket_connect_timeout = dur(1);
                r
            },
            "listener 'l1': filter_chains[0].transport_socket_connect_timeout: only applies to TLS filter chains",
        ),
        (
            || {
                let mut r =
                    with_downstream(&downstream(|c| c.alpn_protocols = vec!["h2".to_owned()]));
                edit_hcm(&mut r, |h| h.codec_type = CodecType::Http1 as i32);
                r
            },
            "listener 'l1': filter_chains[0].transport_socket.typed_config.common_tls_context.alpn_protocols: offers h2, which the http connection manager's codec_type does not serve",
        ),
    ]);
}

const DCTX: &str = "listener 'l1': filter_chains[0].transport_socket.typed_config";

#[test]
fn downstream_fields_refused() {
    let cases: &[Make<DownstreamTlsContext>] = &[
        (
            || DownstreamTlsContext::default(),
            "common_tls_context: required (a server certificate)",
        ),
        (
            || downstream(|c| c.tls_certificates.clear()),
            "common_tls_context: a server certificate is required (tls_certificates or tls_certificate_sds_secret_configs)",
        ),
        (
            || downstream(|c| c.tls_certificates.push(cert_files())),
            "common_tls_context.tls_certificates: more than one server certificate per chain is not supported by legate (use one filter chain per server name)",
        ),
        (
            || DownstreamTlsContext {
                require_client_certificate: yes(),
                ..downstream(|_| {})
            },
            "require_client_certificate: needs a validation_context with trusted_ca to verify client certificates",
        ),
        (
            || DownstreamTlsContext {
                require_sni: yes(),
                ..downstream(|_| {})
            },
            "require_sni: not supported by legate",
        ),
        (
            || DownstreamTlsContext {
                session_timeout: dur(60),
                ..downstream(|_| {})
            },
            "session_timeout: not supported by legate",
        ),
        (
            || DownstreamTlsContext {
                ocsp_staple_policy: 2,
                ..downstream(|_| {})
            },
            "ocsp_staple_policy: not supported by legate",
        ),
        (
            || DownstreamTlsContext {
                prefer_client_ciphers: true,
                ..downstream(|_| {})
            },
            "prefer_client_ciphers: not supported by legate",
        ),
        (
            || DownstreamTlsContext {
                disable_stateful_session_resumption: true,
                ..downstream(|_| {})
            },
            "disable_stateful_session_resumption: not supported by legate",
        ),
        (
            || DownstreamTlsContext {
                full_scan_certs_on_sni_mismatch: yes(),
                ..downstream(|_| {})
            },
            "full_scan_certs_on_sni_mismatch: not supported by legate",
        ),
        (
            || DownstreamTlsContext {
                session_ticket_keys_type: Some(
                    SessionTicketKeysType::DisableStatelessSessionResumption(true),
                ),
                ..downstream(|_| {})
            },
            "session_ticket_keys_type: not supported by legate",
        ),
        (
            || {
                downstream(|c| {
                    c.validation_context_type = Some(ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            system_root_certs: Some(SystemRootCerts {}),
                            ..Default::default()
                        },
                    ))
                })
            },
            "common_tls_context.validation_context.system_root_certs: not supported by legate for client certificates (give the CA in trusted_ca)",
        ),
        (
            || downstream(|c| c.alpn_protocols = vec!["spdy/3".to_owned()]),
            "common_tls_context.alpn_protocols: 'spdy/3' is not supported by legate (h2 or http/1.1)",
        ),
        (
            || {
                downstream(|c| {
                    c.tls_params = Some(TlsParameters {
                        tls_minimum_protocol_version: TlsProtocol::TlSv11 as i32,
                        ..Default::default()
                    })
                })
            },
            "common_tls_context.tls_params.tls_minimum_protocol_version: TLSv1_1 is not supported by legate (TLSv1_2 or TLSv1_3)",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (make, tail)) in cases.iter().enumerate() {
        let expected = format!("{DCTX}.{tail}");
        let got = errors(&with_downstream(&make()));
        if got != [expected.clone()] {
            failures.push(format!("case {i}: expected [{expected}]\n    got {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
