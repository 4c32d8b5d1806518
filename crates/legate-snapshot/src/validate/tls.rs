//! TLS transport sockets and SDS secrets: `UpstreamTlsContext` on clusters,
//! `DownstreamTlsContext` on listener filter chains, the `CommonTlsContext` both embed, and
//! `Secret` resources. SDS references are kept by name here and resolved against the secrets
//! of the whole set by [`resolve_upstream`] and [`resolve_downstream`].
//!
//! What legate refuses and why is listed in `crates/legate-proxy/src/tls/FIELDS.md`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource as XdsConfigSource,
    DataSource as XdsDataSource, TransportSocket, WatchedDirectory,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::{
    SystemRootCerts, TrustChainVerification,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType as XdsSanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext as XdsCertificateValidationContext,
    CommonTlsContext as XdsCommonTlsContext, DownstreamTlsContext as XdsDownstreamTlsContext,
    GenericSecret as XdsGenericSecret, SdsSecretConfig, Secret as XdsSecret, SubjectAltNameMatcher, TlsCertificate as XdsTlsCertificate,
    TlsParameters, UpstreamTlsContext as XdsUpstreamTlsContext, secret,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use prost::Message;

use super::common::{Ctx, at, enum_value, join, refuse, refuse_true, string_matcher};
use crate::{
    CertificateValidation, DataSource, DownstreamTls, PrivateKey, ResourceError, ResourceKind,
    SanMatcher, SanType, TlsCertificate, TlsParams, TlsVersion, UpstreamTls,
};

/// The transport socket name of TLS (informational in Envoy; the type URL decides).
pub(super) const TLS_NAME: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER_NAME: &str = "envoy.transport_sockets.raw_buffer";
const RAW_BUFFER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
pub(super) const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub(super) const DOWNSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// The largest inline certificate, key or CA bundle accepted (the proxy bounds files alike).
pub(super) const MAX_INLINE_BYTES: usize = 1 << 20;

/// The ALPN protocols legate speaks.
const ALPN_H2: &str = "h2";
const ALPN_HTTP11: &str = "http/1.1";

/// What a `transport_socket` asks for.
pub(super) enum Transport<T> {
    Plaintext,
    Tls(T),
    /// Invalid; the error is recorded.
    Invalid,
}

/// Decode a transport socket that must be raw buffer or TLS with the context type at
/// `type_url`, and hand the decoded context to `convert`.
pub(super) fn transport_socket<X: Message + Default, T>(
    cx: &mut Ctx,
    field: &str,
    ts: &TransportSocket,
    type_url: &str,
    convert: impl FnOnce(&mut Ctx, &str, &X) -> Option<T>,
) -> Transport<T> {
    // The name is informational: Envoy picks the extension by the type of `typed_config`.
    let TransportSocket { name, config_type } = ts;
    match config_type {
        None if name == RAW_BUFFER_NAME => Transport::Plaintext,
        None if name == TLS_NAME => {
            cx.err(
                join(field, "typed_config"),
                format!("required for {TLS_NAME} (a {})", short_type(type_url)),
            );
            Transport::Invalid
        }
        None => {
            cx.err(
                field,
                format!(
                    "'{name}' is not supported by legate (only {RAW_BUFFER_NAME} and {TLS_NAME})"
                ),
            );
            Transport::Invalid
        }
        Some(TransportConfigType::TypedConfig(Any {
            type_url: got,
            value,
        })) => {
            let f = join(field, "typed_config");
            if got == RAW_BUFFER_TYPE_URL {
                return Transport::Plaintext;
            }
            if got != type_url {
                cx.err(
                    f,
                    format!(
                        "transport socket type '{got}' is not supported by legate (expected {} or RawBuffer)",
                        short_type(type_url)
                    ),
                );
                return Transport::Invalid;
            }
            match X::decode(value.as_slice()) {
                Ok(x) => match convert(cx, &f, &x) {
                    Some(t) => Transport::Tls(t),
                    None => Transport::Invalid,
                },
                Err(e) => {
                    cx.err(f, format!("cannot decode {}: {e}", short_type(type_url)));
                    Transport::Invalid
                }
            }
        }
    }
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// The TLS settings a cluster takes from `upstream_http_protocol_options`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct AutoSni {
    pub(super) auto_sni: bool,
    pub(super) header: Option<http::HeaderName>,
    pub(super) auto_san_validation: bool,
}

/// `UpstreamTlsContext` → [`UpstreamTls`] (SDS references unresolved).
pub(super) fn upstream_tls_context(
    cx: &mut Ctx,
    field: &str,
    x: &XdsUpstreamTlsContext,
    auto: &AutoSni,
) -> Option<UpstreamTls> {
    let XdsUpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys,
        // Deprecated and ignored by Envoy, which always enforces keyUsage (as rustls does).
        enforce_rsa_key_usage: _,
    } = x;
    let errors = cx.error_count();
    refuse!(cx, field; auto_host_sni, auto_sni_san_validation);
    if *allow_renegotiation {
        cx.err(
            join(field, "allow_renegotiation"),
            "not supported by legate (rustls never renegotiates)",
        );
    }
    let sni = if sni.is_empty() {
        None
    } else if valid_server_name(sni) {
        Some(Arc::from(sni.to_ascii_lowercase()))
    } else {
        cx.err(
            join(field, "sni"),
            format!("'{sni}' is not a valid DNS name"),
        );
        None
    };
    let common = match common_tls_context {
        Some(c) => common_context(cx, &join(field, "common_tls_context"), c, Role::Client),
        None => Common::empty(TlsParams::UPSTREAM_DEFAULT),
    };
    let cert_field = join(field, "common_tls_context");
    if common.certificates.len() > 1 {
        cx.err(
            join(&cert_field, "tls_certificates"),
            "a client context takes at most one certificate",
        );
    }
    if auto.auto_san_validation && !auto.auto_sni {
        cx.err(
            "upstream_http_protocol_options.auto_san_validation",
            "requires auto_sni in legate (the certificate is checked against the name sent)",
        );
    }
    for p in &common.alpn {
        if **p != *ALPN_H2 && **p != *ALPN_HTTP11 {
            cx.err(
                join(&cert_field, "alpn_protocols"),
                format!("'{p}' is not supported by legate (h2 or http/1.1)"),
            );
        }
    }
    let out = UpstreamTls {
        sni,
        auto_sni: auto.auto_sni,
        auto_sni_header: auto.header.clone(),
        auto_san_validation: auto.auto_san_validation,
        certificate: common.certificates.into_iter().next(),
        certificate_sds: common.certificate_sds,
        validation: common.validation,
        validation_sds: common.validation_sds,
        alpn_protocols: common.alpn,
        params: common.params,
        max_session_keys: max_session_keys.map_or(1, |UInt32Value { value }| value),
    };
    (cx.error_count() == errors).then_some(out)
}

/// `DownstreamTlsContext` → [`DownstreamTls`] (SDS references unresolved).
pub(super) fn downstream_tls_context(
    cx: &mut Ctx,
    field: &str,
    x: &XdsDownstreamTlsContext,
) -> Option<DownstreamTls> {
    let XdsDownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        disable_stateful_session_resumption,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
        session_ticket_keys_type,
    } = x;
    let errors = cx.error_count();
    // `ocsp_staple_policy` is an enum whose default (LENIENT_STAPLING) is what legate does
    // without staples; the others are refused. rustls keeps a session cache and issues
    // tickets with its own rotating keys, Envoy's defaults.
    refuse!(cx, field;
        session_timeout, ocsp_staple_policy, prefer_client_ciphers, session_ticket_keys_type,
    );
    refuse_true(cx, field, "require_sni", require_sni);
    refuse_true(
        cx,
        field,
        "full_scan_certs_on_sni_mismatch",
        full_scan_certs_on_sni_mismatch,
    );
    if *disable_stateful_session_resumption {
        cx.unsupported(field, "disable_stateful_session_resumption");
    }
    let cf = join(field, "common_tls_context");
    let common = match common_tls_context {
        Some(c) => common_context(cx, &cf, c, Role::Server),
        None => {
            cx.err(&cf, "required (a server certificate)");
            return None;
        }
    };
    match common.certificates.len() + usize::from(common.certificate_sds.is_some()) {
        0 => cx.err(
            &cf,
            "a server certificate is required (tls_certificates or tls_certificate_sds_secret_configs)",
        ),
        1 => {}
        _ => cx.err(
            join(&cf, "tls_certificates"),
            "more than one server certificate per chain is not supported by legate (use one filter chain per server name)",
        ),
    }
    if common.validation.as_ref().is_some_and(|v| v.system_roots) {
        cx.err(
            join(&cf, "validation_context.system_root_certs"),
            "not supported by legate for client certificates (give the CA in trusted_ca)",
        );
    }
    let require = matches!(require_client_certificate, Some(BoolValue { value: true }));
    if require && common.validation.is_none() && common.validation_sds.is_none() {
        cx.err(
            join(field, "require_client_certificate"),
            "needs a validation_context with trusted_ca to verify client certificates",
        );
    }
    for p in &common.alpn {
        if **p != *ALPN_H2 && **p != *ALPN_HTTP11 {
            cx.err(
                join(&cf, "alpn_protocols"),
                format!("'{p}' is not supported by legate (h2 or http/1.1)"),
            );
        }
    }
    let out = DownstreamTls {
        certificate: common.certificates.into_iter().next(),
        certificate_sds: common.certificate_sds,
        validation: common.validation,
        validation_sds: common.validation_sds,
        require_client_certificate: require,
        alpn_protocols: common.alpn,
        params: common.params,
    };
    (cx.error_count() == errors).then_some(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

/// What a `CommonTlsContext` says.
struct Common {
    certificates: Vec<TlsCertificate>,
    certificate_sds: Option<Arc<str>>,
    validation: Option<CertificateValidation>,
    validation_sds: Option<Arc<str>>,
    alpn: Vec<Arc<str>>,
    params: TlsParams,
}

impl Common {
    fn empty(params: TlsParams) -> Self {
        Common {
            certificates: Vec::new(),
            certificate_sds: None,
            validation: None,
            validation_sds: None,
            alpn: Vec::new(),
            params,
        }
    }
}

fn common_context(cx: &mut Ctx, field: &str, c: &XdsCommonTlsContext, role: Role) -> Common {
    let XdsCommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = c;
    refuse!(cx, field;
        tls_certificate_provider_instance, custom_tls_certificate_selector,
        tls_certificate_certificate_provider, tls_certificate_certificate_provider_instance,
        custom_handshaker, key_log,
    );
    let default = match role {
        Role::Client => TlsParams::UPSTREAM_DEFAULT,
        Role::Server => TlsParams::DOWNSTREAM_DEFAULT,
    };
    let params = match tls_params {
        Some(p) => tls_parameters(cx, &join(field, "tls_params"), p, default),
        None => default,
    };
    let certificates: Vec<TlsCertificate> = tls_certificates
        .iter()
        .enumerate()
        .filter_map(|(i, t)| tls_certificate(cx, &at(field, "tls_certificates", i), t))
        .collect();
    if !tls_certificates.is_empty() && !tls_certificate_sds_secret_configs.is_empty() {
        cx.err(
            join(field, "tls_certificate_sds_secret_configs"),
            "cannot be combined with tls_certificates (Envoy would ignore it)",
        );
    }
    let certificate_sds = match tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [one] => sds_secret_config(cx, &at(field, "tls_certificate_sds_secret_configs", 0), one),
        _ => {
            cx.err(
                join(field, "tls_certificate_sds_secret_configs"),
                "more than one certificate is not supported by legate",
            );
            None
        }
    };
    let (validation, validation_sds) = match validation_context_type {
        None => (None, None),
        Some(ValidationContextType::ValidationContext(v)) => (
            validation_context(cx, &join(field, "validation_context"), v, true),
            None,
        ),
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => (
            None,
            sds_secret_config(cx, &join(field, "validation_context_sds_secret_config"), s),
        ),
        Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context,
                validation_context_sds_secret_config,
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            },
        )) => {
            let f = join(field, "combined_validation_context");
            refuse!(cx, &f;
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            );
            // The CA usually comes from SDS and the SAN matchers from the default part, so
            // the default part need not have a CA of its own.
            let default = default_validation_context.as_ref().and_then(|v| {
                validation_context(cx, &join(&f, "default_validation_context"), v, false)
            });
            let sds = match validation_context_sds_secret_config {
                Some(s) => {
                    sds_secret_config(cx, &join(&f, "validation_context_sds_secret_config"), s)
                }
                None => {
                    cx.err(join(&f, "validation_context_sds_secret_config"), "required");
                    None
                }
            };
            (
                Some(default.unwrap_or_else(|| CertificateValidation {
                    trusted_ca: None,
                    system_roots: false,
                    match_typed_subject_alt_names: Vec::new(),
                })),
                sds,
            )
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            cx.unsupported(field, "validation_context_certificate_provider");
            (None, None)
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(_)) => {
            cx.unsupported(field, "validation_context_certificate_provider_instance");
            (None, None)
        }
    };
    let mut alpn: Vec<Arc<str>> = Vec::new();
    for (i, p) in alpn_protocols.iter().enumerate() {
        let f = at(field, "alpn_protocols", i);
        if p.is_empty() || p.len() > 255 {
            cx.err(f, "must be 1 to 255 bytes");
        } else if alpn.iter().any(|a| **a == **p) {
            cx.err(f, format!("duplicate protocol '{p}'"));
        } else {
            alpn.push(Arc::from(p.as_str()));
        }
    }
    Common {
        certificates,
        certificate_sds,
        validation,
        validation_sds,
        alpn,
        params,
    }
}

fn version(cx: &mut Ctx, field: &str, v: i32) -> Option<Option<TlsVersion>> {
    match enum_value::<TlsProtocol>(cx, field, v)? {
        TlsProtocol::TlsAuto => Some(None),
        TlsProtocol::TlSv12 => Some(Some(TlsVersion::V1_2)),
        TlsProtocol::TlSv13 => Some(Some(TlsVersion::V1_3)),
        old @ (TlsProtocol::TlSv10 | TlsProtocol::TlSv11) => {
            cx.err(
                field,
                format!(
                    "{} is not supported by legate (TLSv1_2 or TLSv1_3)",
                    old.as_str_name()
                ),
            );
            None
        }
    }
}

fn tls_parameters(cx: &mut Ctx, field: &str, p: &TlsParameters, default: TlsParams) -> TlsParams {
    let TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = p;
    if !cipher_suites.is_empty() {
        cx.err(
            join(field, "cipher_suites"),
            "not supported by legate (rustls' AEAD suites with forward secrecy are always used)",
        );
    }
    if !ecdh_curves.is_empty() {
        cx.err(
            join(field, "ecdh_curves"),
            "not supported by legate (X25519MLKEM768, X25519, P-256 and P-384 are always offered)",
        );
    }
    refuse!(cx, field; signature_algorithms, compliance_policies);
    let min = version(
        cx,
        &join(field, "tls_minimum_protocol_version"),
        *tls_minimum_protocol_version,
    )
    .flatten()
    .unwrap_or(default.min_version);
    // Raising the minimum above the default maximum raises the maximum with it, as a
    // client asking for TLS 1.3 only expects.
    let max = version(
        cx,
        &join(field, "tls_maximum_protocol_version"),
        *tls_maximum_protocol_version,
    )
    .flatten()
    .unwrap_or(default.max_version.max(min));
    if min > max {
        cx.err(
            join(field, "tls_minimum_protocol_version"),
            "is above tls_maximum_protocol_version",
        );
        return default;
    }
    TlsParams {
        min_version: min,
        max_version: max,
    }
}

fn tls_certificate(cx: &mut Ctx, field: &str, t: &XdsTlsCertificate) -> Option<TlsCertificate> {
    let XdsTlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        // Ignored: legate notices changed file contents however they are written.
        watched_directory: _,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = t;
    refuse!(cx, field;
        pkcs12, private_key_provider, password, ocsp_staple, signed_certificate_timestamp,
        tls_params,
    );
    let chain = match certificate_chain {
        Some(d) => data_source(cx, &join(field, "certificate_chain"), d),
        None => {
            cx.err(join(field, "certificate_chain"), "required");
            None
        }
    };
    let key = match private_key {
        Some(d) => data_source(cx, &join(field, "private_key"), d),
        None => {
            cx.err(join(field, "private_key"), "required");
            None
        }
    };
    Some(TlsCertificate {
        certificate_chain: chain?,
        private_key: PrivateKey(key?),
    })
}

/// `core.v3.DataSource`: a file name or inline bytes (bounded). Environment variables are
/// refused: secrets belong in files or SDS, not in the proxy's environment.
pub(super) fn data_source(cx: &mut Ctx, field: &str, d: &XdsDataSource) -> Option<DataSource> {
    let XdsDataSource {
        // Ignored: legate notices changed file contents however they are written.
        watched_directory,
        specifier,
    } = d;
    let _: &Option<WatchedDirectory> = watched_directory;
    let inline = |cx: &mut Ctx, name: &str, bytes: Bytes| {
        if bytes.is_empty() {
            cx.err(join(field, name), "must not be empty");
            None
        } else if bytes.len() > MAX_INLINE_BYTES {
            cx.err(
                join(field, name),
                format!("larger than {MAX_INLINE_BYTES} bytes"),
            );
            None
        } else {
            Some(DataSource::Inline(bytes))
        }
    };
    match specifier {
        Some(Specifier::Filename(path)) => {
            if path.is_empty() {
                cx.err(join(field, "filename"), "must not be empty");
                None
            } else if path.contains('\0') {
                cx.err(join(field, "filename"), "must not contain NUL");
                None
            } else {
                Some(DataSource::Filename(Arc::from(path.as_str())))
            }
        }
        Some(Specifier::InlineBytes(b)) => inline(cx, "inline_bytes", Bytes::copy_from_slice(b)),
        Some(Specifier::InlineString(s)) => {
            inline(cx, "inline_string", Bytes::copy_from_slice(s.as_bytes()))
        }
        Some(Specifier::EnvironmentVariable(_)) => {
            cx.err(
                join(field, "environment_variable"),
                "not supported by legate (use filename, inline_bytes, inline_string or SDS)",
            );
            None
        }
        None => {
            cx.err(
                field,
                "one of filename, inline_bytes or inline_string is required",
            );
            None
        }
    }
}

/// `CertificateValidationContext`. `needs_ca`: a standalone context must say what to trust
/// (the default part of a combined context gets its CA from SDS).
fn validation_context(
    cx: &mut Ctx,
    field: &str,
    v: &XdsCertificateValidationContext,
    needs_ca: bool,
) -> Option<CertificateValidation> {
    let XdsCertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        // Ignored: legate notices changed file contents however they are written.
        watched_directory: _,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = v;
    let errors = cx.error_count();
    refuse!(cx, field;
        ca_certificate_provider_instance, verify_certificate_spki, verify_certificate_hash,
        crl, custom_validator_config, only_verify_leaf_cert_crl, max_verify_depth,
        suppress_client_ca_list,
    );
    if !match_subject_alt_names.is_empty() {
        cx.err(
            join(field, "match_subject_alt_names"),
            "not supported by legate (deprecated: use match_typed_subject_alt_names)",
        );
    }
    refuse_true(
        cx,
        field,
        "require_signed_certificate_timestamp",
        require_signed_certificate_timestamp,
    );
    if *allow_expired_certificate {
        cx.err(
            join(field, "allow_expired_certificate"),
            "not supported by legate (expired certificates are always refused)",
        );
    }
    let tcv = join(field, "trust_chain_verification");
    if let Some(TrustChainVerification::AcceptUntrusted) =
        enum_value::<TrustChainVerification>(cx, &tcv, *trust_chain_verification)
    {
        cx.err(
            tcv,
            "ACCEPT_UNTRUSTED is not supported by legate (verification is never bypassed)",
        );
    }
    let ca = trusted_ca
        .as_ref()
        .and_then(|d| data_source(cx, &join(field, "trusted_ca"), d));
    let system_roots = match system_root_certs {
        Some(SystemRootCerts {}) => {
            if trusted_ca.is_some() {
                cx.err(
                    join(field, "system_root_certs"),
                    "cannot be combined with trusted_ca",
                );
            }
            true
        }
        None => false,
    };
    let sans: Vec<SanMatcher> = match_typed_subject_alt_names
        .iter()
        .enumerate()
        .filter_map(|(i, m)| san_matcher(cx, &at(field, "match_typed_subject_alt_names", i), m))
        .collect();
    if needs_ca && trusted_ca.is_none() && !system_roots {
        let message = if sans.is_empty() {
            "trusted_ca is required (a validation context without one would verify nothing)"
        } else {
            "trusted_ca is required: subject alt name checks without a trusted CA are insecure"
        };
        cx.err(join(field, "trusted_ca"), message);
    }
    (cx.error_count() == errors).then_some(CertificateValidation {
        trusted_ca: ca,
        system_roots,
        match_typed_subject_alt_names: sans,
    })
}

fn san_matcher(cx: &mut Ctx, field: &str, m: &SubjectAltNameMatcher) -> Option<SanMatcher> {
    let SubjectAltNameMatcher {
        san_type,
        matcher,
        // Only read for OTHER_NAME, which is refused.
        oid: _,
    } = m;
    let tf = join(field, "san_type");
    let san_type = match enum_value::<XdsSanType>(cx, &tf, *san_type)? {
        XdsSanType::Dns => SanType::Dns,
        XdsSanType::Uri => SanType::Uri,
        XdsSanType::IpAddress => SanType::IpAddress,
        XdsSanType::Email => SanType::Email,
        XdsSanType::Unspecified => {
            cx.err(tf, "required (DNS, URI, IP_ADDRESS or EMAIL)");
            return None;
        }
        XdsSanType::OtherName => {
            cx.err(tf, "OTHER_NAME is not supported by legate");
            return None;
        }
    };
    let matcher = match matcher {
        Some(m) => string_matcher(cx, &join(field, "matcher"), m)?,
        None => {
            cx.err(join(field, "matcher"), "required");
            return None;
        }
    };
    Some(SanMatcher { san_type, matcher })
}

/// An SDS reference: a non-empty name and `sds_config: {ads: {}}` (legate receives secrets on
/// its ADS stream only).
pub(super) fn sds_secret_config(
    cx: &mut Ctx,
    field: &str,
    s: &SdsSecretConfig,
) -> Option<Arc<str>> {
    let SdsSecretConfig { name, sds_config } = s;
    let errors = cx.error_count();
    if name.is_empty() {
        cx.err(join(field, "name"), "must not be empty");
    }
    match sds_config {
        Some(XdsConfigSource {
            authorities,
            // Ignored: the xDS client applies its own initial fetch timeout.
            initial_fetch_timeout: _,
            resource_api_version,
            config_source_specifier,
        }) => {
            let f = join(field, "sds_config");
            refuse!(cx, &f; authorities);
            if let Some(ApiVersion::V2) = enum_value::<ApiVersion>(
                cx,
                &join(&f, "resource_api_version"),
                *resource_api_version,
            ) {
                cx.err(
                    join(&f, "resource_api_version"),
                    "v2 is not supported by legate",
                );
            }
            if !matches!(
                config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
            ) {
                cx.err(
                    f,
                    "only ads is supported by legate (secrets come over the ADS stream)",
                );
            }
        }
        None => cx.err(
            join(field, "sds_config"),
            "required: legate has no static secrets (use {ads: {}})",
        ),
    }
    (cx.error_count() == errors).then(|| Arc::from(name.as_str()))
}

/// A validated SDS secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ConvertedSecret {
    Certificate(TlsCertificate),
    Validation(CertificateValidation),
    /// `generic_secret.secret`: what credential filters inject.
    Generic(DataSource),
}

/// `Secret` → a certificate or a validation context.
pub(super) fn secret(x: &XdsSecret) -> Result<(&str, ConvertedSecret), Vec<ResourceError>> {
    let XdsSecret { name, r#type } = x;
    let mut cx = Ctx::new(ResourceKind::Secret, name);
    if name.is_empty() {
        cx.err("name", "must not be empty");
    }
    let converted = match r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            tls_certificate(&mut cx, "tls_certificate", t).map(ConvertedSecret::Certificate)
        }
        Some(secret::Type::ValidationContext(v)) => {
            validation_context(&mut cx, "validation_context", v, true)
                .map(ConvertedSecret::Validation)
        }
        Some(secret::Type::SessionTicketKeys(_)) => {
            cx.unsupported("", "session_ticket_keys");
            None
        }
        Some(secret::Type::GenericSecret(g)) => {
            let XdsGenericSecret { secret, secrets } = g;
            refuse!(cx, "generic_secret"; secrets);
            match secret {
                Some(d) => {
                    data_source(&mut cx, "generic_secret.secret", d).map(ConvertedSecret::Generic)
                }
                None => {
                    cx.err("generic_secret.secret", "required");
                    None
                }
            }
        }
        None => {
            cx.err(
                "",
                "one of tls_certificate, validation_context or generic_secret is required",
            );
            None
        }
    };
    match converted {
        Some(c) if cx.error_count() == 0 => Ok((name.as_str(), c)),
        _ => Err(cx.into_errors()),
    }
}

/// The SDS secrets of a resource set by name, for resolution.
pub(super) type Secrets<'a> = HashMap<&'a str, &'a ConvertedSecret>;

/// Why a reference could not be resolved.
fn unresolved(
    secrets: &Secrets<'_>,
    invalid: &std::collections::HashSet<&str>,
    name: &str,
    want: &str,
) -> Option<String> {
    match secrets.get(name) {
        Some(_) => Some(format!("secret '{name}' is not a {want}")),
        // An invalid secret is reported on its own.
        None if invalid.contains(name) => None,
        None => Some(format!("secret '{name}' not found")),
    }
}

/// Fill in the SDS-provided certificate and validation context of one TLS context. Errors
/// name the referencing field (`field_prefix` is the path of the context).
#[allow(clippy::too_many_arguments)]
pub(super) fn resolve(
    errors: &mut Vec<ResourceError>,
    kind: ResourceKind,
    resource: &str,
    field_prefix: &str,
    secrets: &Secrets<'_>,
    invalid: &std::collections::HashSet<&str>,
    certificate_sds: Option<&Arc<str>>,
    certificate: &mut Option<TlsCertificate>,
    validation_sds: Option<&Arc<str>>,
    validation: &mut Option<CertificateValidation>,
) {
    let common = join(field_prefix, "common_tls_context");
    if let Some(name) = certificate_sds {
        match secrets.get(&**name) {
            Some(ConvertedSecret::Certificate(c)) => *certificate = Some(c.clone()),
            _ => {
                if let Some(message) = unresolved(secrets, invalid, name, "tls_certificate") {
                    errors.push(ResourceError::new(
                        kind,
                        resource,
                        join(&common, "tls_certificate_sds_secret_configs[0].name"),
                        message,
                    ));
                }
            }
        }
    }
    if let Some(name) = validation_sds {
        match secrets.get(&**name) {
            Some(ConvertedSecret::Validation(v)) => {
                *validation = Some(match validation.as_ref() {
                    // A combined context: its default part plus what SDS sends.
                    Some(default) => default.merged_with(v),
                    None => v.clone(),
                });
            }
            _ => {
                if let Some(message) = unresolved(secrets, invalid, name, "validation_context") {
                    let f = if validation.is_some() {
                        "combined_validation_context.validation_context_sds_secret_config.name"
                    } else {
                        "validation_context_sds_secret_config.name"
                    };
                    errors.push(ResourceError::new(
                        kind,
                        resource,
                        join(&common, f),
                        message,
                    ));
                }
            }
        }
    }
}

/// Whether `name` is a DNS name rustls can send as SNI: labels of letters, digits and `-`,
/// not an IP address.
pub(super) fn valid_server_name(name: &str) -> bool {
    name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
