//! Envoy resources as Envoy's own `/config_dump` prints them: an `envoy.admin.v3.ConfigDump`
//! in the proto3 JSON mapping with the original (snake_case) field names, durations as
//! `"5s"`, `Any` as `{"@type": ..., ...}`, one entry per configuration type
//! (`BootstrapConfigDump`, `ClustersConfigDump`, ...) holding `static_*` and
//! `dynamic_active_*` lists with `version_info` and `last_updated`. legate's admin server
//! renders its running configuration with it, and legate-cp what it serves a node, so users
//! can compare either with what they wrote, or with a real Envoy's dump.
//!
//! The generated `envoy-types` structs have no serde support. The JSON comes from
//! `prost-reflect`: a resource's encoding is decoded as a `DynamicMessage` against the
//! descriptors of Envoy's API (vendored in `descriptors/envoy.binpb`, cut from the set
//! `envoy-types` ships; regenerate with `make envoy-descriptors`), then serialized.
//!
//! Secrets are redacted as Envoy redacts them: every string and bytes value below a field
//! Envoy's API marks `udpa.annotations.sensitive` (private keys, key passwords, generic
//! secrets, session ticket keys) becomes `"[redacted]"`, inside `Any` too. legate also
//! redacts the values of headers it treats as secrets
//! ([`legate_snapshot::is_sensitive_header`]) wherever a `HeaderValue` carries one.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap as XdsBootstrap;
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use legate_snapshot::ResourceKind;
use prost::{Message, Name};
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};

mod query;
pub use query::{MAX_MASK_PATHS, Query};

/// What secrets print as.
pub const REDACTED: &str = "[redacted]";

/// The messages whose definitions the vendored descriptor set holds, with everything they
/// import: the config dump itself, the bootstrap, and every type legate accepts inside an
/// `Any` (a resource holding another `Any` type is refused by `legate-snapshot`, or, where
/// legate ignores the field, printed as a placeholder naming the type).
pub const ROOT_MESSAGES: &[&str] = &[
    "envoy.admin.v3.ConfigDump",
    "envoy.admin.v3.BootstrapConfigDump",
    "envoy.admin.v3.ClustersConfigDump",
    "envoy.admin.v3.EndpointsConfigDump",
    "envoy.admin.v3.ListenersConfigDump",
    "envoy.admin.v3.RoutesConfigDump",
    "envoy.admin.v3.SecretsConfigDump",
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.service.discovery.v3.Resource",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.Secret",
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.transport_sockets.alts.v3.Alts",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
    "envoy.extensions.load_balancing_policies.random.v3.Random",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.config.trace.v3.OpenTelemetryConfig",
    "google.protobuf.Struct",
    "google.protobuf.StringValue",
];

static DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy.binpb");

/// Why a dump could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("the built-in Envoy descriptors do not load: {0}")]
    Descriptors(String),
    #[error("the built-in Envoy descriptors lack {0}")]
    MissingType(String),
    #[error("cannot decode a {type_url}: {source}")]
    Decode {
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Query(#[from] query::QueryError),
}

impl DumpError {
    /// The HTTP status an admin server answers with: 400 for a bad query, 404 for a
    /// `resource` no dump has, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            DumpError::Query(e) => e.http_status(),
            _ => 500,
        }
    }
}

/// Where a resource came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The bootstrap (`static_*` lists).
    Static,
    /// A control plane, at this version (`dynamic_active_*` lists).
    Dynamic { version: String },
}

/// One resource to dump.
#[derive(Clone, PartialEq)]
pub struct Resource {
    pub kind: ResourceKind,
    pub origin: Origin,
    /// When it was loaded or last changed.
    pub last_updated: Option<SystemTime>,
    /// The resource as received (never wrapped in `discovery.v3.Resource`); shared with the
    /// xDS client's state.
    pub any: Arc<Any>,
}

impl std::fmt::Debug for Resource {
    // The encoding is left out: a secret's carries its private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("bytes", &self.any.value.len())
            .finish_non_exhaustive()
    }
}

impl Resource {
    /// `message` as a resource of `kind`.
    pub fn from_message<M: Message>(
        kind: ResourceKind,
        origin: Origin,
        last_updated: Option<SystemTime>,
        message: &M,
    ) -> Resource {
        Resource {
            kind,
            origin,
            last_updated,
            any: Arc::new(Any {
                type_url: kind.type_url().to_owned(),
                value: message.encode_to_vec(),
            }),
        }
    }
}

/// Everything a dump shows. No `Debug`: the bootstrap's static secrets may hold keys.
#[derive(Clone, Default)]
pub struct Inputs {
    /// The bootstrap as an Envoy `Bootstrap` (node, static resources, xDS sources, admin),
    /// and when it was loaded.
    pub bootstrap: Option<(XdsBootstrap, SystemTime)>,
    /// The `version_info` of the last accepted response, per dynamic type.
    pub versions: Vec<(ResourceKind, String)>,
    pub resources: Vec<Resource>,
}

/// The descriptor pool of Envoy's API, decoded on first use and kept (about the size of
/// the set decoded: a few megabytes, only once something asked for a dump).
pub fn pool() -> Result<&'static DescriptorPool, DumpError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| DumpError::Descriptors(e.clone()))
}

fn message_descriptor(pool: &DescriptorPool, name: &str) -> Result<MessageDescriptor, DumpError> {
    pool.get_message_by_name(name)
        .ok_or_else(|| DumpError::MissingType(name.to_owned()))
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    // Envoy prints milliseconds.
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_millis() * 1_000_000).unwrap_or(0),
    }
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The dump as Envoy builds it: one entry per type, in Envoy's order (bootstrap, clusters,
/// endpoints when asked for, listeners, routes, secrets).
fn config_dump(inputs: &Inputs, include_eds: bool) -> admin::ConfigDump {
    let version = |kind: ResourceKind| {
        inputs
            .versions
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut clusters = admin::ClustersConfigDump {
        version_info: version(ResourceKind::Cluster),
        ..Default::default()
    };
    let mut endpoints = admin::EndpointsConfigDump::default();
    let mut listeners = admin::ListenersConfigDump {
        version_info: version(ResourceKind::Listener),
        ..Default::default()
    };
    let mut routes = admin::RoutesConfigDump::default();
    let mut secrets = admin::SecretsConfigDump::default();
    for r in &inputs.resources {
        let any = Some((*r.any).clone());
        let last_updated = r.last_updated.map(timestamp);
        match (&r.origin, r.kind) {
            (Origin::Static, ResourceKind::Cluster) => {
                clusters
                    .static_clusters
                    .push(admin::clusters_config_dump::StaticCluster {
                        cluster: any,
                        last_updated,
                    });
            }
            (Origin::Dynamic { version }, ResourceKind::Cluster) => clusters
                .dynamic_active_clusters
                .push(admin::clusters_config_dump::DynamicCluster {
                    version_info: version.clone(),
                    cluster: any,
                    last_updated,
                    ..Default::default()
                }),
            (Origin::Static, ResourceKind::ClusterLoadAssignment) => endpoints
                .static_endpoint_configs
                .push(admin::endpoints_config_dump::StaticEndpointConfig {
                    endpoint_config: any,
                    last_updated,
                }),
            (Origin::Dynamic { version }, ResourceKind::ClusterLoadAssignment) => endpoints
                .dynamic_endpoint_configs
                .push(admin::endpoints_config_dump::DynamicEndpointConfig {
                    version_info: version.clone(),
                    endpoint_config: any,
                    last_updated,
                    ..Default::default()
                }),
            (Origin::Static, ResourceKind::Listener) => {
                listeners
                    .static_listeners
                    .push(admin::listeners_config_dump::StaticListener {
                        listener: any,
                        last_updated,
                    });
            }
            (Origin::Dynamic { version }, ResourceKind::Listener) => {
                let name = resource_name(r);
                listeners
                    .dynamic_listeners
                    .push(admin::listeners_config_dump::DynamicListener {
                        name,
                        active_state: Some(admin::listeners_config_dump::DynamicListenerState {
                            version_info: version.clone(),
                            listener: any,
                            last_updated,
                        }),
                        ..Default::default()
                    });
            }
            (Origin::Static, ResourceKind::RouteConfiguration) => {
                routes
                    .static_route_configs
                    .push(admin::routes_config_dump::StaticRouteConfig {
                        route_config: any,
                        last_updated,
                    })
            }
            (Origin::Dynamic { version }, ResourceKind::RouteConfiguration) => routes
                .dynamic_route_configs
                .push(admin::routes_config_dump::DynamicRouteConfig {
                    version_info: version.clone(),
                    route_config: any,
                    last_updated,
                    ..Default::default()
                }),
            (Origin::Static, ResourceKind::Secret) => {
                secrets
                    .static_secrets
                    .push(admin::secrets_config_dump::StaticSecret {
                        name: resource_name(r),
                        last_updated,
                        secret: any,
                    });
            }
            (Origin::Dynamic { version }, ResourceKind::Secret) => secrets
                .dynamic_active_secrets
                .push(admin::secrets_config_dump::DynamicSecret {
                    name: resource_name(r),
                    version_info: version.clone(),
                    last_updated,
                    secret: any,
                    ..Default::default()
                }),
        }
    }
    let mut configs = Vec::new();
    if let Some((bootstrap, loaded)) = &inputs.bootstrap {
        configs.push(pack(&admin::BootstrapConfigDump {
            bootstrap: Some(bootstrap.clone()),
            last_updated: Some(timestamp(*loaded)),
        }));
    }
    configs.push(pack(&clusters));
    if include_eds {
        configs.push(pack(&endpoints));
    }
    configs.push(pack(&listeners));
    configs.push(pack(&routes));
    configs.push(pack(&secrets));
    admin::ConfigDump { configs }
}

/// The name inside a resource's encoding (field 1 of every kind).
fn resource_name(r: &Resource) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    Named::decode(r.any.value.as_slice())
        .map(|n| n.name)
        .unwrap_or_default()
}

/// Render the dump `query` asks for (`resource`, `mask`, `include_eds`), as Envoy's admin
/// server would: pretty JSON, one space per level.
pub fn render(inputs: &Inputs, query: &Query) -> Result<Vec<u8>, DumpError> {
    let pool = pool()?;
    let dump = config_dump(inputs, query.include_eds);
    let desc = message_descriptor(pool, admin::ConfigDump::full_name().as_str())?;
    let mut msg = decode(&desc, &dump.encode_to_vec())?;
    let redactor = Redactor::new(pool);
    redactor.message(&mut msg)?;
    let msg = query.apply(pool, msg)?;
    to_json(&msg)
}

/// One resource (or any `Any` of a type this crate knows) in Envoy's JSON, redacted, with
/// its `@type`: what `/config_dump` shows in place of the resource.
pub fn any_json(any: &Any) -> Result<serde_json::Value, DumpError> {
    let pool = pool()?;
    let desc = message_descriptor(pool, "google.protobuf.Any")?;
    let mut msg = decode(&desc, &any.encode_to_vec())?;
    Redactor::new(pool).message(&mut msg)?;
    let bytes = to_json(&msg)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn decode(desc: &MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, DumpError> {
    DynamicMessage::decode(desc.clone(), bytes).map_err(|source| DumpError::Decode {
        type_url: desc.full_name().to_owned(),
        source,
    })
}

fn to_json(msg: &DynamicMessage) -> Result<Vec<u8>, DumpError> {
    let mut out = Vec::new();
    let formatter = EnvoyFormatter(serde_json::ser::PrettyFormatter::with_indent(b" "));
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    msg.serialize_with_options(&mut ser, &options)?;
    out.push(b'\n');
    Ok(out)
}

/// Pretty JSON with one space per level, as Envoy's admin server writes it, and floating
/// point numbers as protobuf's C++ JSON writer (Envoy's) prints them: a whole number has no
/// `.0` (`"value": 40` for a `Percent`), so the two dumps compare equal as text too.
struct EnvoyFormatter(serde_json::ser::PrettyFormatter<'static>);

/// Whole numbers up to this print as integers; beyond it, the shortest exact form.
const MAX_WHOLE: f64 = 1e15;

impl serde_json::ser::Formatter for EnvoyFormatter {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        if v.fract() == 0.0 && v.abs() < MAX_WHOLE {
            // Exact: |v| < 2^53.
            #[allow(clippy::cast_possible_truncation)]
            return write!(w, "{}", v as i64);
        }
        serde_json::ser::CompactFormatter.write_f64(w, v)
    }
    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        if v.fract() == 0.0 && f64::from(v).abs() < MAX_WHOLE {
            #[allow(clippy::cast_possible_truncation)]
            return write!(w, "{}", f64::from(v) as i64);
        }
        serde_json::ser::CompactFormatter.write_f32(w, v)
    }
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// Envoy's redaction (`MessageUtil::redact`), plus legate's sensitive headers.
struct Redactor<'a> {
    pool: &'a DescriptorPool,
    sensitive: Option<ExtensionDescriptor>,
}

/// `HeaderValue` and its `key`, `value` and `raw_value` fields.
const HEADER_VALUE: &str = "envoy.config.core.v3.HeaderValue";

/// Anys nested deeper than this are not unpacked (a placeholder stands in): a hostile
/// resource cannot make the walk recurse without bound. Envoy's own API nests a handful.
const MAX_ANY_DEPTH: usize = 16;

impl<'a> Redactor<'a> {
    fn new(pool: &'a DescriptorPool) -> Self {
        Redactor {
            pool,
            sensitive: pool.get_extension_by_name("udpa.annotations.sensitive"),
        }
    }

    fn message(&self, msg: &mut DynamicMessage) -> Result<(), DumpError> {
        self.walk(msg, false, 0)
    }

    fn is_sensitive(&self, field: &prost_reflect::FieldDescriptor) -> bool {
        let Some(ext) = &self.sensitive else {
            return false;
        };
        let options = field.options();
        options.has_extension(ext) && options.get_extension(ext).as_bool() == Some(true)
    }

    /// Redact below `msg`; `all`: every string and bytes value (inside a sensitive field).
    fn walk(&self, msg: &mut DynamicMessage, all: bool, depth: usize) -> Result<(), DumpError> {
        if msg.descriptor().full_name() == "google.protobuf.Any" {
            return self.any(msg, all, depth);
        }
        if msg.descriptor().full_name() == HEADER_VALUE && !all {
            let secret = msg
                .get_field_by_name("key")
                .and_then(|k| {
                    k.as_str()
                        .and_then(|k| http::HeaderName::from_bytes(k.as_bytes()).ok())
                })
                .is_some_and(|k| legate_snapshot::is_sensitive_header(&k));
            if secret {
                return self.walk_fields(msg, true, depth, &["key"]);
            }
        }
        self.walk_fields(msg, all, depth, &[])
    }

    fn walk_fields(
        &self,
        msg: &mut DynamicMessage,
        all: bool,
        depth: usize,
        keep: &[&str],
    ) -> Result<(), DumpError> {
        for (field, value) in msg.fields_mut() {
            if keep.contains(&field.name()) {
                continue;
            }
            let all = all || self.is_sensitive(&field);
            self.value(value, &field.kind(), all, depth)?;
        }
        Ok(())
    }

    fn value(&self, v: &mut Value, kind: &Kind, all: bool, depth: usize) -> Result<(), DumpError> {
        match v {
            Value::String(s) if all => *s = REDACTED.to_owned(),
            Value::Bytes(b) if all => *b = REDACTED.as_bytes().to_vec().into(),
            Value::Message(m) => self.walk(m, all, depth)?,
            Value::List(list) => {
                for item in list {
                    self.value(item, kind, all, depth)?;
                }
            }
            Value::Map(map) => {
                // Keys stay (Envoy redacts values); values of message kind are walked.
                let value_kind = match kind {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    other => other.clone(),
                };
                for item in map.values_mut() {
                    self.value(item, &value_kind, all, depth)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Unpack, redact and repack an `Any`; one of a type this build does not know, or
    /// nested too deep, is replaced by a `StringValue` saying so (its JSON could not be
    /// written, and its contents could hold a secret).
    fn any(&self, msg: &mut DynamicMessage, all: bool, depth: usize) -> Result<(), DumpError> {
        let type_url = msg
            .get_field_by_name("type_url")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let value = msg
            .get_field_by_name("value")
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        let name = type_url.rsplit('/').next().unwrap_or_default();
        let inner = match self.pool.get_message_by_name(name) {
            Some(desc) if depth < MAX_ANY_DEPTH => {
                DynamicMessage::decode(desc, value.as_ref()).ok()
            }
            _ => None,
        };
        let Some(mut inner) = inner else {
            let note = if depth >= MAX_ANY_DEPTH {
                format!("[{type_url}: nested too deep to show]")
            } else {
                format!("[{type_url}: not shown, legate does not know this type]")
            };
            msg.set_field_by_name(
                "type_url",
                Value::String("type.googleapis.com/google.protobuf.StringValue".to_owned()),
            );
            let note = envoy_types::pb::google::protobuf::StringValue { value: note };
            msg.set_field_by_name("value", Value::Bytes(note.encode_to_vec().into()));
            return Ok(());
        };
        self.walk(&mut inner, all, depth + 1)?;
        msg.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
