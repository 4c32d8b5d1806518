//! The HTTP filters a listener runs before the router: the one place where they run, in
//! order, each either answering the request itself or letting it continue.
//!
//! A filter's configuration comes from the listener, or from the matched route's or virtual
//! host's `typed_per_filter_config` (the route's wins). Long-lived state (token buckets) is
//! made when a snapshot is applied and kept across snapshots that do not change it
//! ([`Buckets`]); the request path only reads what was resolved then.

mod bucket;
mod credential;
mod fault;
mod local_ratelimit;

pub(crate) use local_ratelimit::Origin;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use http::{HeaderMap, HeaderName, HeaderValue, Response};
use legate_snapshot::filter::{FilterKind, HttpFilter, PerFilterConfig, per_filter};
use legate_snapshot::{Listener, Route, RouteConfig, VirtualHost};
use legate_telemetry::Counter;

use crate::body::ResponseBody;
use crate::error::{ProxyError, ResponseFlags};

pub(crate) use bucket::Bucket;
use credential::TokenSource;
use local_ratelimit::RateLimiter;

/// A listener's filters, resolved against its route configuration.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    filters: Vec<Filter>,
}

#[derive(Debug)]
struct Filter {
    name: Arc<str>,
    disabled: bool,
    /// The listener's own configuration.
    listener: Runtime,
    /// Per-route and per-virtual-host configurations, by the address of their configuration
    /// in the route configuration the listener's view holds (so stable while it is used).
    overrides: HashMap<usize, Runtime>,
}

#[derive(Debug)]
enum Runtime {
    LocalRateLimit(RateLimiter),
    Fault(fault::Injector),
    Credential(credential::Injector),
}

/// Whether this request falls in a fraction of `ppm` parts per million.
fn chance(ppm: u32) -> bool {
    const ALL: u32 = 1_000_000;
    match ppm {
        0 => false,
        p if p >= ALL => true,
        p => fastrand::u32(..ALL) < p,
    }
}

/// Where a filter's decision leaves the request.
pub(crate) enum Decision {
    Continue,
    /// Answered here, for this cause (also in `x-legate-error` and the access log flags).
    Reply(ProxyError, Box<Response<ResponseBody>>),
}

/// Headers filters add to the response once it is there (the router's or a local one).
#[derive(Debug, Default)]
pub(crate) struct ResponseHeaders(Vec<(HeaderName, HeaderValue)>);

impl ResponseHeaders {
    pub(crate) fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.push((name, value));
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        for (n, v) in self.0 {
            headers.insert(n, v);
        }
    }
}

/// What a request's filters see of it.
pub(crate) struct Request<'a> {
    pub(crate) headers: &'a mut HeaderMap,
    pub(crate) routes: &'a RouteConfig,
    pub(crate) vhost: Option<&'a VirtualHost>,
    pub(crate) route: Option<&'a Route>,
    /// A gRPC request (`content-type: application/grpc`): local replies are trailers-only.
    pub(crate) grpc: bool,
    pub(crate) origin: local_ratelimit::Origin,
}

impl Chain {
    pub(crate) fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Run the filters in order until one answers.
    pub(crate) async fn decode(
        &self,
        req: Request<'_>,
        out: &mut ResponseHeaders,
        flags: &mut ResponseFlags,
    ) -> Decision {
        for f in &self.filters {
            let Some(runtime) = f.pick(req.routes, req.vhost, req.route) else {
                continue;
            };
            let decision = match runtime {
                Runtime::LocalRateLimit(r) => r.decode(req.headers, &req.origin, req.grpc, out),
                Runtime::Fault(f) => f.decode(req.headers, req.grpc, out, flags).await,
                Runtime::Credential(c) => c.decode(req.headers, req.grpc, out).await,
            };
            if let Decision::Reply(cause, _) = &decision {
                flags.insert(cause.response_flag());
                return decision;
            }
        }
        Decision::Continue
    }
}

impl Filter {
    /// The configuration in force for this request: the route's, else the virtual host's,
    /// else the route configuration's, else the listener's unless the listener disables
    /// the filter.
    fn pick(
        &self,
        routes: &RouteConfig,
        vhost: Option<&VirtualHost>,
        route: Option<&Route>,
    ) -> Option<&Runtime> {
        let specific = route
            .and_then(|r| per_filter(&r.per_filter, &self.name))
            .or_else(|| vhost.and_then(|v| per_filter(&v.per_filter, &self.name)))
            .or_else(|| per_filter(&routes.per_filter, &self.name));
        match specific {
            Some(PerFilterConfig::Disabled) => None,
            Some(PerFilterConfig::Enabled) => Some(&self.listener),
            Some(PerFilterConfig::Config(kind)) => self.overrides.get(&kind_key(kind)),
            None if self.disabled => None,
            None => Some(&self.listener),
        }
    }
}

fn kind_key(kind: &FilterKind) -> usize {
    match kind {
        FilterKind::LocalRateLimit(c) => Arc::as_ptr(c) as usize,
        FilterKind::Fault(c) => Arc::as_ptr(c) as usize,
        FilterKind::CredentialInjector(c) => Arc::as_ptr(c) as usize,
    }
}

/// Token buckets by where they are configured and how, kept across snapshots: a push that
/// leaves a bucket's place and configuration alone keeps its tokens. OAuth2 token sources
/// are kept the same way (their token and their background task).
#[derive(Debug, Default)]
pub(crate) struct Buckets {
    live: HashMap<BucketKey, Arc<Bucket>>,
    dynamic: HashMap<BucketKey, Arc<local_ratelimit::DynamicBuckets>>,
    tokens: HashMap<TokenKey, Arc<TokenSource>>,
    files: HashMap<FileKey, credential::FileSecret>,
}

/// A generic secret file and the prefix its value is sent with: one watcher each, kept
/// across snapshots that still name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    prefix: Arc<str>,
    path: Arc<str>,
}

/// An OAuth2 token source's place (listener and filter name) and configuration, its client
/// secret's source included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    listener: Arc<str>,
    filter: Arc<str>,
    config: Arc<legate_snapshot::filter::OAuth2Credential>,
}

/// A bucket's place (listener, filter name, and `vhost/route` for an override) and its
/// configuration. Envoy gives every route with its own configuration its own bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BucketKey {
    listener: Arc<str>,
    filter: Arc<str>,
    scope: String,
    config: legate_snapshot::filter::TokenBucket,
    /// The descriptor's entries (none for the default bucket) and, for a wildcard one, its
    /// `max_dynamic_descriptors`.
    descriptor: Vec<legate_snapshot::filter::DescriptorEntry>,
    max_dynamic: u32,
}

/// Makes [`Chain`]s for one snapshot; [`Builder::finish`] keeps the buckets in use.
pub(crate) struct Builder {
    old: HashMap<BucketKey, Arc<Bucket>>,
    next: HashMap<BucketKey, Arc<Bucket>>,
    old_tokens: HashMap<TokenKey, Arc<TokenSource>>,
    next_tokens: HashMap<TokenKey, Arc<TokenSource>>,
    old_files: HashMap<FileKey, credential::FileSecret>,
    next_files: HashMap<FileKey, credential::FileSecret>,
    /// What token sources send their requests through (the live clusters).
    shared: Weak<crate::Shared>,
    /// `legate_oauth2_token_fetches_total`.
    fetches: Arc<legate_telemetry::Family<Counter>>,
    old_dynamic: HashMap<BucketKey, Arc<local_ratelimit::DynamicBuckets>>,
    next_dynamic: HashMap<BucketKey, Arc<local_ratelimit::DynamicBuckets>>,
}

impl Builder {
    /// Start from the buckets and token sources live now (copied: the lock is not held
    /// while building).
    pub(crate) fn new(
        old: &Buckets,
        shared: Weak<crate::Shared>,
        fetches: Arc<legate_telemetry::Family<Counter>>,
    ) -> Self {
        Builder {
            old: old.live.clone(),
            next: HashMap::new(),
            old_tokens: old.tokens.clone(),
            next_tokens: HashMap::new(),
            old_files: old.files.clone(),
            next_files: HashMap::new(),
            shared,
            fetches,
            old_dynamic: old.dynamic.clone(),
            next_dynamic: HashMap::new(),
        }
    }

    fn secret_file(&mut self, key: FileKey, name: &Arc<str>) -> credential::FileSecret {
        if let Some(f) = self.next_files.get(&key) {
            return f.clone();
        }
        let f =
            self.old_files.get(&key).cloned().unwrap_or_else(|| {
                credential::watch_file(key.prefix.clone(), name.clone(), &key.path)
            });
        self.next_files.insert(key, f.clone());
        f
    }

    fn token_source(&mut self, key: TokenKey) -> Arc<TokenSource> {
        if let Some(t) = self.next_tokens.get(&key) {
            return t.clone();
        }
        let t = self.old_tokens.get(&key).cloned().unwrap_or_else(|| {
            let cluster = &*key.config.cluster;
            let fetches = &self.fetches;
            TokenSource::start(
                key.config.clone(),
                self.shared.clone(),
                credential::Fetches {
                    ok: fetches.get_or_create(&[cluster, "ok"]),
                    failed: fetches.get_or_create(&[cluster, "failed"]),
                },
            )
        });
        self.next_tokens.insert(key, t.clone());
        t
    }

    fn dynamic(&mut self, key: BucketKey) -> Arc<local_ratelimit::DynamicBuckets> {
        if let Some(b) = self.next_dynamic.get(&key) {
            return b.clone();
        }
        let b = self.old_dynamic.get(&key).cloned().unwrap_or_else(|| {
            Arc::new(local_ratelimit::DynamicBuckets::new(
                key.config,
                key.max_dynamic,
            ))
        });
        self.next_dynamic.insert(key, b.clone());
        b
    }

    fn bucket(&mut self, key: BucketKey) -> Arc<Bucket> {
        if let Some(b) = self.next.get(&key) {
            return b.clone();
        }
        let b = self
            .old
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Arc::new(Bucket::new(key.config)));
        self.next.insert(key, b.clone());
        b
    }

    /// The chain of `listener` over `routes`; `rate_limited` counts its limited requests.
    pub(crate) fn chain(
        &mut self,
        listener: &Listener,
        routes: &RouteConfig,
        rate_limited: &Arc<Counter>,
    ) -> Chain {
        let mut filters = Vec::with_capacity(listener.http_filters.len());
        for f in listener.http_filters.iter() {
            let HttpFilter {
                name,
                disabled,
                config,
            } = f;
            let runtime = self.runtime(listener, name, "", config, rate_limited);
            let mut overrides = HashMap::new();
            if let Some(PerFilterConfig::Config(kind)) = per_filter(&routes.per_filter, name) {
                let rt = self.runtime(listener, name, "routes", kind, rate_limited);
                overrides.insert(kind_key(kind), rt);
            }
            for vh in &routes.virtual_hosts {
                if let Some(PerFilterConfig::Config(kind)) = per_filter(&vh.per_filter, name) {
                    let scope = format!("vhost:{}", vh.name);
                    let rt = self.runtime(listener, name, &scope, kind, rate_limited);
                    overrides.insert(kind_key(kind), rt);
                }
                for (i, r) in vh.routes.iter().enumerate() {
                    if let Some(PerFilterConfig::Config(kind)) = per_filter(&r.per_filter, name) {
                        let scope = if r.name.is_empty() {
                            format!("route:{}/#{i}", vh.name)
                        } else {
                            format!("route:{}/{}", vh.name, r.name)
                        };
                        let rt = self.runtime(listener, name, &scope, kind, rate_limited);
                        overrides.insert(kind_key(kind), rt);
                    }
                }
            }
            filters.push(Filter {
                name: name.clone(),
                disabled: *disabled,
                listener: runtime,
                overrides,
            });
        }
        Chain { filters }
    }

    fn runtime(
        &mut self,
        listener: &Listener,
        filter: &Arc<str>,
        scope: &str,
        kind: &FilterKind,
        rate_limited: &Arc<Counter>,
    ) -> Runtime {
        match kind {
            FilterKind::LocalRateLimit(config) => {
                let key = |config, descriptor, max_dynamic| BucketKey {
                    listener: listener.name.clone(),
                    filter: filter.clone(),
                    scope: format!("{}/{scope}", routes_name(listener)),
                    config,
                    descriptor,
                    max_dynamic,
                };
                let bucket = config
                    .token_bucket
                    .map(|tb| self.bucket(key(tb, Vec::new(), 0)));
                let descriptors = config
                    .descriptors
                    .iter()
                    .map(|d| {
                        if d.entries.iter().any(|e| e.value.is_none()) {
                            let k = key(
                                d.token_bucket,
                                d.entries.clone(),
                                config.max_dynamic_descriptors,
                            );
                            local_ratelimit::DescriptorBucket::Dynamic(self.dynamic(k))
                        } else {
                            let k = key(d.token_bucket, d.entries.clone(), 0);
                            local_ratelimit::DescriptorBucket::Fixed(self.bucket(k))
                        }
                    })
                    .collect();
                Runtime::LocalRateLimit(RateLimiter::new(
                    config.clone(),
                    bucket,
                    descriptors,
                    rate_limited.clone(),
                ))
            }
            FilterKind::Fault(config) => Runtime::Fault(fault::Injector::new(config.clone())),
            FilterKind::CredentialInjector(config) => {
                use legate_snapshot::filter::Credential;
                let source = match &config.credential {
                    Credential::Oauth2(o) => {
                        credential::Source::Token(self.token_source(TokenKey {
                            listener: listener.name.clone(),
                            filter: filter.clone(),
                            config: Arc::new(o.clone()),
                        }))
                    }
                    Credential::Generic(g) => match &g.secret.value {
                        Some(legate_snapshot::DataSource::Filename(path)) => {
                            credential::Source::File(self.secret_file(
                                FileKey {
                                    prefix: g.header_value_prefix.clone(),
                                    path: path.clone(),
                                },
                                &g.secret.name,
                            ))
                        }
                        _ => credential::fixed_source(&g.header_value_prefix, &g.secret),
                    },
                };
                Runtime::Credential(credential::Injector::new(config.clone(), source))
            }
        }
    }

    /// Keep only the buckets this snapshot uses: call once the snapshot is live.
    pub(crate) fn finish(self, into: &mut Buckets) {
        into.live = self.next;
        into.tokens = self.next_tokens;
        into.files = self.next_files;
        into.dynamic = self.next_dynamic;
    }
}

fn routes_name(listener: &Listener) -> &str {
    match &listener.routes {
        legate_snapshot::RouteSource::Rds(n) => n,
        legate_snapshot::RouteSource::Inline(rc) => &rc.name,
    }
}

/// A local reply from a filter: the error's response with the filter's status and headers.
/// To a gRPC request (`grpc` is then the status it reads) it is trailers-only, as every local
/// reply legate makes to one.
pub(crate) fn local_reply(
    cause: ProxyError,
    status: http::StatusCode,
    grpc: Option<u32>,
    add: &[legate_snapshot::HeaderValueOption],
    out: &mut ResponseHeaders,
) -> Decision {
    let mut res = match grpc {
        Some(code) => {
            let mut res = cause.grpc_response();
            res.headers_mut()
                .insert(crate::grpc::GRPC_STATUS, http::HeaderValue::from(code));
            res
        }
        None => {
            let mut res = cause.response();
            *res.status_mut() = status;
            res
        }
    };
    crate::headers::apply(res.headers_mut(), &[], add);
    std::mem::take(out).apply(res.headers_mut());
    Decision::Reply(cause, Box::new(res))
}
