//! `envoy.filters.http.credential_injector`: what legate keeps, how its generic secrets are
//! joined in, and the exact NACK text of what it refuses.

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, DataSource as XdsDataSource, HttpUri,
    TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector as XdsInjector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::OAuth2;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::o_auth2::{
    ClientCredentials, EndpointParameter, FlowType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, SdsSecretConfig, Secret, secret,
};
use envoy_types::pb::google::protobuf::{Any, Duration as XdsDuration};

use super::{any, base, edit_hcm, errors, ok, rt};
use crate::DataSource;
use crate::filter::{Credential, FilterKind};
use crate::type_url;

const HCM: &str = "listener 'l1': filter_chains[0].filters[0].typed_config.http_filters[0]";

fn sds(name: &str, ads: bool) -> Option<SdsSecretConfig> {
    Some(SdsSecretConfig {
        name: name.to_owned(),
        sds_config: ads.then(|| ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
    })
}

fn generic_secret(name: &str, value: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(XdsDataSource {
                specifier: Some(Specifier::InlineString(value.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn generic(secret: &str, ads: bool) -> Any {
    any(
        type_url::GENERIC_CREDENTIAL,
        &Generic {
            credential: sds(secret, ads),
            header: String::new(),
            header_value_prefix: "Bearer ".to_owned(),
        },
    )
}

fn oauth2() -> OAuth2 {
    OAuth2 {
        token_endpoint: Some(HttpUri {
            uri: "https://idp.example/oauth/token?x=1".to_owned(),
            timeout: Some(XdsDuration {
                seconds: 2,
                nanos: 0,
            }),
            http_upstream_type: Some(HttpUpstreamType::Cluster("idp".to_owned())),
        }),
        scopes: vec!["read".to_owned()],
        flow_type: Some(FlowType::ClientCredentials(ClientCredentials {
            client_id: "me".to_owned(),
            client_secret: sds("client", true),
            auth_type: 0,
        })),
        ..Default::default()
    }
}

fn injector(credential: Any) -> Any {
    any(
        type_url::CREDENTIAL_INJECTOR,
        &XdsInjector {
            overwrite: true,
            allow_request_without_credential: false,
            credential: Some(TypedExtensionConfig {
                name: "c".to_owned(),
                typed_config: Some(credential),
            }),
        },
    )
}

fn add(r: &mut crate::Resources, config: Any) {
    edit_hcm(r, |h| {
        h.http_filters.insert(
            0,
            HttpFilter {
                name: "cred".to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(config.clone())),
                ..Default::default()
            },
        )
    });
}

#[test]
fn generic_and_oauth2_are_kept_with_their_secrets_joined_in() {
    let mut r = base();
    r.secrets.push(generic_secret("key", "k1"));
    add(&mut r, injector(generic("key", true)));
    let s = ok(&r);
    let FilterKind::CredentialInjector(c) = &s.listeners[0].http_filters[0].config else {
        panic!("a credential injector");
    };
    let Credential::Generic(g) = &c.credential else {
        panic!("generic");
    };
    assert_eq!(
        (&*g.header, &*g.header_value_prefix),
        ("authorization", "Bearer ")
    );
    assert_eq!(
        g.secret.value,
        Some(DataSource::Inline(bytes::Bytes::from_static(b"k1")))
    );
    // The secret's bytes never show in the snapshot's debug or JSON forms.
    assert!(!format!("{s:?}").contains("k1"));
    let json = serde_json_text(&s);
    assert!(
        !json.contains("\"k1\"") && json.contains("<2 bytes>"),
        "{json}"
    );

    // Over ADS and not arrived yet: kept, without a value (the filter answers 401).
    let mut r = base();
    add(&mut r, injector(generic("later", true)));
    let s = ok(&r);
    let FilterKind::CredentialInjector(c) = &s.listeners[0].http_filters[0].config else {
        panic!("a credential injector");
    };
    let Credential::Generic(g) = &c.credential else {
        panic!("generic");
    };
    assert_eq!(g.secret.value, None);

    let mut r = base();
    r.secrets.push(generic_secret("client", "cs"));
    add(
        &mut r,
        injector(any(type_url::OAUTH2_CREDENTIAL, &oauth2())),
    );
    let s = ok(&r);
    let FilterKind::CredentialInjector(c) = &s.listeners[0].http_filters[0].config else {
        panic!("a credential injector");
    };
    let Credential::Oauth2(o) = &c.credential else {
        panic!("oauth2");
    };
    assert_eq!(
        (&*o.cluster, &*o.authority, &*o.path),
        ("idp", "idp.example", "/oauth/token?x=1")
    );
    assert!(o.basic_auth);
    assert_eq!(
        o.retry_interval,
        std::time::Duration::from_secs(2),
        "Envoy's default"
    );
    assert!(o.client_secret.value.is_some());
}

fn serde_json_text(s: &crate::Snapshot) -> String {
    serde_json::to_string(s).expect("json")
}

#[test]
fn refused_with_their_paths() {
    let cred = "typed_config.credential.typed_config";
    let cases: Vec<(Any, Vec<Secret>, String)> = vec![
        (
            injector(any(
                type_url::OAUTH2_CREDENTIAL,
                &OAuth2 {
                    endpoint_params: vec![EndpointParameter::default()],
                    ..oauth2()
                },
            )),
            vec![],
            format!("{HCM}.{cred}.endpoint_params: not supported by legate"),
        ),
        (
            injector(any(
                type_url::OAUTH2_CREDENTIAL,
                &OAuth2 {
                    token_fetch_retry_interval: Some(XdsDuration {
                        seconds: 0,
                        nanos: 500_000_000,
                    }),
                    ..oauth2()
                },
            )),
            vec![],
            format!("{HCM}.{cred}.token_fetch_retry_interval: must be at least 1s (as in Envoy)"),
        ),
        (
            injector(any(
                type_url::OAUTH2_CREDENTIAL,
                &OAuth2 {
                    scopes: vec!["a b".to_owned()],
                    ..oauth2()
                },
            )),
            vec![],
            format!(
                "{HCM}.{cred}.scopes[0]: not an RFC 6749 scope token (printable ASCII without space, '\"' or '\\')"
            ),
        ),
        (
            injector(Any {
                type_url: "type.googleapis.com/other".to_owned(),
                value: vec![],
            }),
            vec![],
            format!(
                "{HCM}.{cred}: credential type 'type.googleapis.com/other' is not supported by legate"
            ),
        ),
        (
            injector(generic("static", false)),
            vec![],
            "listener 'l1': http_filters[\"cred\"].typed_config.credential.typed_config.credential.name: static secret 'static' not found (a reference without sds_config names a secret of the bootstrap's static_resources)".to_owned(),
        ),
    ];
    for (config, secrets, expected) in cases {
        let mut r = base();
        r.secrets.extend(secrets);
        add(&mut r, config);
        assert_eq!(errors(&r), vec![expected]);
    }

    // A per-route configuration: Envoy has none for this filter.
    let mut r = base();
    rt(&mut r, 0)
        .typed_per_filter_config
        .insert("cred".to_owned(), injector(generic("key", true)));
    assert_eq!(
        errors(&r),
        vec![
            "route configuration 'rc1': virtual_hosts[0].routes[0].typed_per_filter_config[\"cred\"]: credential_injector has no per-route configuration (as in Envoy)"
        ]
    );

    // A generic secret where a TLS certificate is wanted, and the reverse, are refused.
    let mut r = base();
    let mut not_generic = generic_secret("key", "x");
    let file = |f: &str| {
        Some(XdsDataSource {
            specifier: Some(Specifier::Filename(f.to_owned())),
            ..Default::default()
        })
    };
    not_generic.r#type = Some(secret::Type::TlsCertificate(
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate {
            certificate_chain: file("c.pem"),
            private_key: file("k.pem"),
            ..Default::default()
        },
    ));
    r.secrets.push(not_generic);
    add(&mut r, injector(generic("key", true)));
    let e = errors(&r);
    assert!(
        e.iter()
            .any(|m| m.ends_with("secret 'key' is not a generic_secret")),
        "{e:?}"
    );
}
