//! The HCM's HTTP filters before the router, validated, and their per-route overrides
//! (`typed_per_filter_config` on virtual hosts and routes).
//!
//! A listener keeps its filters in order ([`HttpFilter`]); a virtual host or route keeps a
//! small table from filter name to [`PerFilterConfig`]. The request path looks a filter's
//! name up in the route's table, then the virtual host's (Envoy: the most specific wins),
//! so nothing decodes an `Any` per request.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::HeaderValueOption;

/// One HTTP filter of a listener, in chain order. The router is not one of them: it is
/// what runs after the last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpFilter {
    /// The filter's `name`: the key of its per-route overrides.
    pub name: Arc<str>,
    /// `disabled`: the filter runs only on routes or virtual hosts whose
    /// `typed_per_filter_config` names it (with a configuration, or a `FilterConfig` that
    /// does not disable it).
    pub disabled: bool,
    pub config: FilterKind,
}

/// A filter's validated configuration, at listener level or as a per-route override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum FilterKind {
    /// `envoy.filters.http.local_ratelimit`.
    LocalRateLimit(Arc<LocalRateLimit>),
    /// `envoy.filters.http.fault`.
    Fault(Arc<Fault>),
    /// `envoy.filters.http.credential_injector` (listener level only: Envoy has no
    /// per-route configuration for it).
    CredentialInjector(Arc<CredentialInjector>),
}

/// One `typed_per_filter_config` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PerFilterConfig {
    /// A `FilterConfig` with `disabled: true`: the filter does not run here.
    Disabled,
    /// A `FilterConfig` without a config and not disabled: the filter runs here with its
    /// listener configuration, even when the listener disables it.
    Enabled,
    /// A configuration that replaces the listener's here.
    Config(FilterKind),
}

/// The per-filter overrides of a virtual host or route, by filter name. Few entries: a
/// linear scan beats hashing.
pub type PerFilterConfigs = Arc<[(Arc<str>, PerFilterConfig)]>;

/// Find `name` in a per-filter table.
pub fn per_filter<'a>(
    table: &'a [(Arc<str>, PerFilterConfig)],
    name: &str,
) -> Option<&'a PerFilterConfig> {
    table.iter().find(|(n, _)| **n == *name).map(|(_, c)| c)
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalRateLimit {
    /// `stat_prefix`.
    pub stat_prefix: Arc<str>,
    /// `status`: the status of a limited request (Envoy: 429, and 429 for anything below
    /// 400).
    pub status: u16,
    /// `token_bucket`; `None` only at listener level, where the filter then limits nothing
    /// and only routes or virtual hosts with their own configuration are limited.
    pub token_bucket: Option<TokenBucket>,
    /// `filter_enabled.default_value` in parts per million (Envoy's default: 0).
    pub enabled_ppm: u32,
    /// `filter_enforced.default_value` in parts per million (Envoy's default: 0).
    pub enforced_ppm: u32,
    /// `request_headers_to_add_when_not_enforced`.
    pub request_headers_to_add_when_not_enforced: Vec<HeaderValueOption>,
    /// `response_headers_to_add`: on a limited request's reply.
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`: `x-ratelimit-limit`,
    /// `x-ratelimit-remaining` and `x-ratelimit-reset` on every response of a request the
    /// filter saw.
    pub x_ratelimit_headers: bool,
    /// `rate_limited_as_resource_exhausted`: a limited gRPC request reads
    /// RESOURCE_EXHAUSTED (8) instead of the status mapped from `status` (UNAVAILABLE for
    /// 429).
    pub grpc_resource_exhausted: bool,
    /// `descriptors`: buckets of their own for requests whose generated descriptor matches
    /// one of these entirely.
    pub descriptors: Vec<LocalDescriptor>,
    /// `rate_limits`: the actions that make a request's descriptors.
    pub rate_limits: Vec<DescriptorActions>,
    /// `always_consume_default_token_bucket` (default true): the default bucket is taken
    /// from even when a descriptor matched.
    pub always_consume_default: bool,
    /// `max_dynamic_descriptors` (default 20): distinct values kept per wildcard
    /// descriptor, least recently used first out.
    pub max_dynamic_descriptors: u32,
    /// `enable_retry_after_header`: `retry-after` on a limited 429.
    pub retry_after_header: bool,
}

/// `common.ratelimit.v3.LocalRateLimitDescriptor`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LocalDescriptor {
    /// Matched in order against a generated descriptor's entries, all of them.
    pub entries: Vec<DescriptorEntry>,
    pub token_bucket: TokenBucket,
}

/// One entry of a configured descriptor: a key and its value, or any value (`None`: a
/// wildcard, Envoy's entry with the value left out; each distinct value gets a bucket).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DescriptorEntry {
    pub key: Arc<str>,
    pub value: Option<Arc<str>>,
}

/// `config.route.v3.RateLimit`: one descriptor made of its actions' entries. A descriptor
/// any of whose actions yields nothing (a header absent without `skip_if_absent`) is not
/// made at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DescriptorActions {
    pub actions: Vec<DescriptorAction>,
}

/// `RateLimit.Action`, the kinds legate implements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DescriptorAction {
    /// `request_headers`: the header's value under `key`.
    RequestHeader {
        header: Arc<str>,
        key: Arc<str>,
        skip_if_absent: bool,
    },
    /// `remote_address`: the client's address, under `remote_address`.
    RemoteAddress,
    /// `generic_key`: a fixed entry (key `generic_key` unless set).
    GenericKey { key: Arc<str>, value: Arc<str> },
}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`: delay, then abort, a fraction of
/// requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// `max_active_faults`: no new fault while this many are in progress; `None`: no limit.
    pub max_active_faults: Option<u32>,
}

/// `FaultDelay`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    /// `fixed_delay`, or `None` for `header_delay` (`x-envoy-fault-delay-request`, in ms).
    pub fixed: Option<Duration>,
    pub percentage: Fraction,
}

/// `FaultAbort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    /// `http_status`; `None` with `grpc_status` also `None` for `header_abort`
    /// (`x-envoy-fault-abort-request`, `x-envoy-fault-abort-grpc-request`).
    pub http_status: Option<u16>,
    /// `grpc_status`: a gRPC request is answered with this status (trailers-only), any
    /// other with HTTP 200, as Envoy does.
    pub grpc_status: Option<u32>,
    pub percentage: Fraction,
}

/// A `FractionalPercent` kept as written: a header-controlled fault's percentage header
/// is a numerator over the configured denominator, capped at the configured numerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Fraction {
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
}

impl Fraction {
    /// Parts per million, at most 1 000 000.
    pub fn ppm(self) -> u32 {
        let scale = 1_000_000 / self.denominator.max(1);
        self.numerator.saturating_mul(scale).min(1_000_000)
    }
}

/// `type.v3.TokenBucket`: `max_tokens` held at most, `tokens_per_fill` added every
/// `fill_interval`. The bucket starts full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// `envoy.extensions.filters.http.credential_injector.v3.CredentialInjector`: puts a
/// credential the application never sees into each request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialInjector {
    /// `overwrite`: replace a header the request already carries (otherwise keep it).
    pub overwrite: bool,
    /// `allow_request_without_credential`: when the credential is not available, send the
    /// request without it instead of answering 401.
    pub allow_request_without_credential: bool,
    pub credential: Credential,
}

/// The `credential` extension of a [`CredentialInjector`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// `envoy.http.injected_credentials.generic`.
    Generic(GenericCredential),
    /// `envoy.http.injected_credentials.oauth2` (client credentials grant).
    Oauth2(OAuth2Credential),
}

/// `injected_credentials.generic.v3.Generic`: a generic secret's value in a header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GenericCredential {
    /// `header`, lower case (Envoy's default: `authorization`).
    pub header: Arc<str>,
    /// `header_value_prefix`, put before the secret (e.g. `Bearer `).
    pub header_value_prefix: Arc<str>,
    pub secret: SecretRef,
}

/// A reference to a generic secret (`SdsSecretConfig`), with the secret's data source once
/// the resource set delivered it. The data source never prints inline bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SecretRef {
    pub name: Arc<str>,
    /// `sds_config: {ads: {}}`: the secret comes over ADS and may be missing for a while;
    /// otherwise it is a static secret of the bootstrap and must exist.
    pub over_ads: bool,
    /// `generic_secret.secret` of the named secret; `None` until it arrives.
    pub value: Option<crate::tls::DataSource>,
}

/// `injected_credentials.oauth2.v3.OAuth2` with `client_credentials` (RFC 6749 §4.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct OAuth2Credential {
    /// `token_endpoint.cluster`: the cluster the token request goes to (its hosts, its TLS).
    pub cluster: Arc<str>,
    /// `token_endpoint.uri`'s authority: the token request's `Host`.
    pub authority: Arc<str>,
    /// `token_endpoint.uri`'s path and query (`/` when it has none).
    pub path: Arc<str>,
    /// `token_endpoint.timeout`: bounds one token request.
    pub timeout: Duration,
    /// `scopes`, sent space-separated in `scope`.
    pub scopes: Vec<Arc<str>>,
    /// `client_credentials.client_id`.
    pub client_id: Arc<str>,
    /// `client_credentials.client_secret`.
    pub client_secret: SecretRef,
    /// `client_credentials.auth_type`: HTTP Basic (the default) or the form body.
    pub basic_auth: bool,
    /// `token_fetch_retry_interval` (Envoy's default: 2 s, at least 1 s).
    pub retry_interval: Duration,
}
