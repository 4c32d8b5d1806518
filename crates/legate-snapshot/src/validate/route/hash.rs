//! `RouteAction.hash_policy`: what a request is hashed on for RING_HASH and MAGLEV clusters.

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as XdsHashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, CookieAttribute, Header, PolicySpecifier, QueryParameter,
};

use super::super::common::{Ctx, duration, header_name, join, refuse};
use crate::{CookieHash, HashMethod, HashPolicy};

/// Most `hash_policy` entries on one route: each costs work per request.
pub(super) const MAX_HASH_POLICIES: usize = 16;
/// Most `attributes` of a generated cookie.
const MAX_COOKIE_ATTRIBUTES: usize = 16;
/// Longest cookie name, path or attribute legate puts in a `Set-Cookie` header.
const MAX_COOKIE_PART: usize = 256;

pub(super) fn hash_policies(
    cx: &mut Ctx,
    field: &str,
    policies: &[XdsHashPolicy],
) -> Arc<[HashPolicy]> {
    let field = join(field, "hash_policy");
    if policies.len() > MAX_HASH_POLICIES {
        cx.err(
            &field,
            format!(
                "{} entries, at most {MAX_HASH_POLICIES} are allowed",
                policies.len()
            ),
        );
        return Arc::from([]);
    }
    policies
        .iter()
        .enumerate()
        .filter_map(|(i, p)| hash_policy(cx, &format!("{field}[{i}]"), p))
        .collect()
}

fn hash_policy(cx: &mut Ctx, field: &str, p: &XdsHashPolicy) -> Option<HashPolicy> {
    let XdsHashPolicy {
        terminal,
        policy_specifier,
    } = p;
    let method = match policy_specifier {
        None => {
            cx.err(
                field,
                "one of header, cookie, connection_properties or query_parameter is required",
            );
            return None;
        }
        Some(PolicySpecifier::Header(Header {
            header_name: name,
            regex_rewrite,
        })) => {
            let f = join(field, "header");
            refuse!(cx, &f; regex_rewrite);
            HashMethod::Header {
                name: header_name(cx, &join(&f, "header_name"), name)?,
            }
        }
        Some(PolicySpecifier::Cookie(c)) => {
            HashMethod::Cookie(cookie(cx, &join(field, "cookie"), c)?)
        }
        Some(PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip })) => {
            if !source_ip {
                // Envoy yields no hash for it; an entry that can never hash is a mistake.
                cx.err(
                    join(field, "connection_properties.source_ip"),
                    "must be true (false never yields a hash)",
                );
                return None;
            }
            HashMethod::SourceIp
        }
        Some(PolicySpecifier::QueryParameter(QueryParameter { name })) => {
            if name.is_empty() {
                cx.err(join(field, "query_parameter.name"), "must not be empty");
                return None;
            }
            if name.len() > MAX_COOKIE_PART {
                cx.err(
                    join(field, "query_parameter.name"),
                    format!("longer than {MAX_COOKIE_PART} bytes"),
                );
                return None;
            }
            HashMethod::QueryParameter {
                name: Arc::from(name.as_str()),
            }
        }
        Some(PolicySpecifier::FilterState(_)) => {
            cx.unsupported(field, "filter_state");
            return None;
        }
    };
    Some(HashPolicy {
        method,
        terminal: *terminal,
    })
}

fn cookie(cx: &mut Ctx, field: &str, c: &Cookie) -> Option<CookieHash> {
    let Cookie {
        name,
        ttl,
        path,
        attributes,
    } = c;
    let before = cx.error_count();
    if name.is_empty() {
        cx.err(join(field, "name"), "must not be empty");
    } else {
        cookie_token(cx, &join(field, "name"), name);
    }
    let ttl = ttl
        .as_ref()
        .and_then(|d| duration(cx, &join(field, "ttl"), d));
    let path = (!path.is_empty()).then(|| {
        cookie_text(cx, &join(field, "path"), path);
        Arc::from(path.as_str())
    });
    if attributes.len() > MAX_COOKIE_ATTRIBUTES {
        cx.err(
            join(field, "attributes"),
            format!("at most {MAX_COOKIE_ATTRIBUTES} are allowed"),
        );
    }
    let attributes = attributes
        .iter()
        .take(MAX_COOKIE_ATTRIBUTES)
        .enumerate()
        .map(|(i, CookieAttribute { name, value })| {
            let f = format!("{field}.attributes[{i}]");
            if name.is_empty() {
                cx.err(join(&f, "name"), "must not be empty");
            } else {
                cookie_token(cx, &join(&f, "name"), name);
            }
            cookie_text(cx, &join(&f, "value"), value);
            (Arc::from(name.as_str()), Arc::from(value.as_str()))
        })
        .collect();
    (cx.error_count() == before).then(|| CookieHash {
        name: Arc::from(name.as_str()),
        ttl,
        path,
        attributes,
    })
}

/// A cookie or attribute name: an RFC 6265 token.
fn cookie_token(cx: &mut Ctx, field: &str, s: &str) {
    if s.len() > MAX_COOKIE_PART {
        cx.err(field, format!("longer than {MAX_COOKIE_PART} bytes"));
    } else if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)))
    {
        cx.err(field, format!("{c:?} is not allowed in a cookie name"));
    }
}

/// A path or attribute value in `Set-Cookie`: visible ASCII without `;`.
fn cookie_text(cx: &mut Ctx, field: &str, s: &str) {
    if s.len() > MAX_COOKIE_PART {
        cx.err(field, format!("longer than {MAX_COOKIE_PART} bytes"));
    } else if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_graphic() || c == ' ') || c == ';')
    {
        cx.err(field, format!("{c:?} is not allowed in a cookie attribute"));
    }
}
