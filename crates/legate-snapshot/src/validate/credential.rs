//! `envoy.filters.http.credential_injector` and its two credential extensions (generic and
//! OAuth2 client credentials) → [`crate::filter::CredentialInjector`].
//!
//! Secrets are named here, never read: the resource set's generic secrets are joined in by
//! [`resolve`] once every resource is converted, the same way TLS contexts get theirs.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::config::core::v3::{HttpUri, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::filters::http::credential_injector::v3::CredentialInjector as XdsCredentialInjector;
use envoy_types::pb::envoy::extensions::http::injected_credentials::generic::v3::Generic as XdsGeneric;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::OAuth2 as XdsOAuth2;
use envoy_types::pb::envoy::extensions::http::injected_credentials::oauth2::v3::o_auth2::{
    AuthType, ClientCredentials, FlowType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::common::{Ctx, duration, enum_value, join, refuse};
use crate::filter::{
    Credential, CredentialInjector, GenericCredential, OAuth2Credential, SecretRef,
};
use crate::type_url;

/// Envoy's default and smallest `token_fetch_retry_interval`.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);
const MIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A token request that may take longer than this is refused: requests wait for it.
const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Scopes one token request may ask for.
const MAX_SCOPES: usize = 64;

pub(super) fn credential_injector(
    cx: &mut Ctx,
    field: &str,
    any: &Any,
    per_route: bool,
) -> Option<CredentialInjector> {
    let c = match XdsCredentialInjector::decode(any.value.as_slice()) {
        Ok(c) => c,
        Err(e) => {
            cx.err(field, format!("cannot decode CredentialInjector: {e}"));
            return None;
        }
    };
    if per_route {
        cx.err(
            field,
            "credential_injector has no per-route configuration (as in Envoy)",
        );
        return None;
    }
    let XdsCredentialInjector {
        overwrite,
        allow_request_without_credential,
        credential,
    } = c;
    let before = cx.error_count();
    let f = join(field, "credential");
    let credential = match &credential {
        None => {
            cx.err(&f, "required");
            None
        }
        Some(TypedExtensionConfig {
            name: _,
            typed_config,
        }) => {
            let tf = join(&f, "typed_config");
            match typed_config {
                None => {
                    cx.err(&tf, "required");
                    None
                }
                Some(Any { type_url, value }) => match type_url.as_str() {
                    type_url::GENERIC_CREDENTIAL => match XdsGeneric::decode(value.as_slice()) {
                        Ok(g) => generic(cx, &tf, &g).map(Credential::Generic),
                        Err(e) => {
                            cx.err(&tf, format!("cannot decode Generic: {e}"));
                            None
                        }
                    },
                    type_url::OAUTH2_CREDENTIAL => match XdsOAuth2::decode(value.as_slice()) {
                        Ok(o) => oauth2(cx, &tf, &o).map(Credential::Oauth2),
                        Err(e) => {
                            cx.err(&tf, format!("cannot decode OAuth2: {e}"));
                            None
                        }
                    },
                    other => {
                        cx.err(
                            &tf,
                            format!("credential type '{other}' is not supported by legate"),
                        );
                        None
                    }
                },
            }
        }
    };
    let out = CredentialInjector {
        overwrite,
        allow_request_without_credential,
        credential: credential?,
    };
    (cx.error_count() == before).then_some(out)
}

fn generic(cx: &mut Ctx, field: &str, g: &XdsGeneric) -> Option<GenericCredential> {
    let XdsGeneric {
        credential,
        header,
        header_value_prefix,
    } = g;
    let header = if header.is_empty() {
        "authorization".to_owned()
    } else {
        header.to_ascii_lowercase()
    };
    let header_ok =
        http::HeaderName::from_bytes(header.as_bytes()).is_ok() && !header.starts_with(':');
    if !header_ok {
        cx.err(
            join(field, "header"),
            format!("'{header}' is not a valid header name"),
        );
    }
    if http::HeaderValue::from_str(header_value_prefix).is_err() {
        cx.err(
            join(field, "header_value_prefix"),
            "not a valid header value",
        );
    }
    let secret = match credential {
        Some(s) => secret_ref(cx, &join(field, "credential"), s),
        None => {
            cx.err(join(field, "credential"), "required");
            None
        }
    };
    Some(GenericCredential {
        header: Arc::from(header),
        header_value_prefix: Arc::from(header_value_prefix.as_str()),
        secret: secret?,
    })
    .filter(|_| header_ok)
}

fn oauth2(cx: &mut Ctx, field: &str, o: &XdsOAuth2) -> Option<OAuth2Credential> {
    let XdsOAuth2 {
        token_endpoint,
        scopes,
        token_fetch_retry_interval,
        endpoint_params,
        flow_type,
    } = o;
    let before = cx.error_count();
    refuse!(cx, field; endpoint_params);
    let endpoint = match token_endpoint {
        Some(u) => http_uri(cx, &join(field, "token_endpoint"), u),
        None => {
            cx.err(join(field, "token_endpoint"), "required");
            None
        }
    };
    if scopes.len() > MAX_SCOPES {
        cx.err(
            join(field, "scopes"),
            format!("more than legate's limit of {MAX_SCOPES} scopes"),
        );
    }
    for (i, s) in scopes.iter().enumerate() {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            cx.err(
                format!("{field}.scopes[{i}]"),
                "not an RFC 6749 scope token (printable ASCII without space, '\"' or '\\')",
            );
        }
    }
    let retry_interval = match token_fetch_retry_interval {
        None => DEFAULT_RETRY_INTERVAL,
        Some(d) => {
            let f = join(field, "token_fetch_retry_interval");
            let d = duration(cx, &f, d)?;
            if d < MIN_RETRY_INTERVAL {
                cx.err(f, "must be at least 1s (as in Envoy)");
            }
            d
        }
    };
    let (client_id, client_secret, basic_auth) = match flow_type {
        Some(FlowType::ClientCredentials(ClientCredentials {
            client_id,
            client_secret,
            auth_type,
        })) => {
            let f = join(field, "client_credentials");
            if client_id.is_empty() {
                cx.err(join(&f, "client_id"), "must not be empty");
            }
            let basic = matches!(
                enum_value::<AuthType>(cx, &join(&f, "auth_type"), *auth_type),
                Some(AuthType::BasicAuth)
            );
            let secret = match client_secret {
                Some(s) => secret_ref(cx, &join(&f, "client_secret"), s),
                None => {
                    cx.err(join(&f, "client_secret"), "required");
                    None
                }
            };
            (Arc::from(client_id.as_str()), secret, basic)
        }
        None => {
            cx.err(join(field, "client_credentials"), "required");
            return None;
        }
    };
    let Endpoint {
        cluster,
        authority,
        path,
        timeout,
    } = endpoint?;
    let out = OAuth2Credential {
        cluster,
        authority,
        path,
        timeout,
        scopes: scopes.iter().map(|s| Arc::from(s.as_str())).collect(),
        client_id,
        client_secret: client_secret?,
        basic_auth,
        retry_interval,
    };
    (cx.error_count() == before).then_some(out)
}

/// A validated `HttpUri`.
struct Endpoint {
    cluster: Arc<str>,
    authority: Arc<str>,
    path: Arc<str>,
    timeout: Duration,
}

/// `HttpUri` → [`Endpoint`]. The scheme, when written, is not used: the cluster's transport
/// socket decides TLS, as in Envoy.
fn http_uri(cx: &mut Ctx, field: &str, u: &HttpUri) -> Option<Endpoint> {
    let HttpUri {
        uri,
        timeout,
        http_upstream_type,
    } = u;
    let before = cx.error_count();
    let cluster = match http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => Some(Arc::from(c.as_str())),
        _ => {
            cx.err(join(field, "cluster"), "required");
            None
        }
    };
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .unwrap_or(uri);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let parsed = http::uri::Authority::try_from(authority).is_ok()
        && http::uri::PathAndQuery::try_from(path).is_ok();
    if authority.is_empty() || !parsed {
        cx.err(
            join(field, "uri"),
            format!("'{uri}' is not a URI with a host (e.g. http://idp.example/token)"),
        );
    }
    let tf = join(field, "timeout");
    let timeout = match timeout {
        Some(d) => duration(cx, &tf, d),
        None => {
            cx.err(&tf, "required");
            None
        }
    };
    if let Some(t) = timeout
        && (t.is_zero() || t > MAX_TOKEN_TIMEOUT)
    {
        cx.err(
            &tf,
            format!(
                "must be above 0 and at most {}s",
                MAX_TOKEN_TIMEOUT.as_secs()
            ),
        );
    }
    if cx.error_count() != before {
        return None;
    }
    Some(Endpoint {
        cluster: cluster?,
        authority: Arc::from(authority),
        path: Arc::from(path),
        timeout: timeout?,
    })
}

/// An `SdsSecretConfig` naming a generic secret: over ADS, or (without `sds_config`) a
/// static secret of the bootstrap.
fn secret_ref(cx: &mut Ctx, field: &str, s: &SdsSecretConfig) -> Option<SecretRef> {
    if s.sds_config.is_none() {
        if s.name.is_empty() {
            cx.err(join(field, "name"), "must not be empty");
            return None;
        }
        return Some(SecretRef {
            name: Arc::from(s.name.as_str()),
            over_ads: false,
            value: None,
        });
    }
    let name = super::tls::sds_secret_config(cx, field, s)?;
    Some(SecretRef {
        name,
        over_ads: true,
        value: None,
    })
}

/// Where a credential filter's secret reference sits, for errors.
pub(super) fn secret_field(credential: &Credential) -> &'static str {
    match credential {
        Credential::Generic(_) => "typed_config.credential.typed_config.credential.name",
        Credential::Oauth2(_) => {
            "typed_config.credential.typed_config.client_credentials.client_secret.name"
        }
    }
}
