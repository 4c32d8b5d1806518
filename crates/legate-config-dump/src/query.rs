//! `/config_dump`'s query parameters, with Envoy's meanings: `resource=FIELD` lists the items
//! of that repeated field of every dump type (`dynamic_active_clusters`, `static_listeners`),
//! each as its own entry; `mask=PATH,PATH` keeps only those fields (of each dump type, or of
//! each item with `resource`, where a path may go on into the resource itself:
//! `cluster.name`); `include_eds` adds the endpoints. Other parameters are ignored, as Envoy
//! ignores them.

use std::collections::BTreeMap;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value};

use crate::DumpError;

/// Paths one `mask` may hold.
pub const MAX_MASK_PATHS: usize = 64;
/// Bytes of one `mask` or `resource` value.
const MAX_VALUE_BYTES: usize = 4096;

/// A bad query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0} not found in config dump")]
    UnknownResource(String),
    #[error("FieldMask {0} could not be successfully applied to any configs.")]
    MaskNotApplied(String),
    #[error("query parameter '{0}' is longer than {MAX_VALUE_BYTES} bytes")]
    TooLong(&'static str),
    #[error("mask has more than {MAX_MASK_PATHS} paths")]
    TooManyPaths,
    #[error("query parameter '{0}' is not valid UTF-8 once decoded")]
    NotUtf8(&'static str),
}

impl QueryError {
    pub(crate) fn http_status(&self) -> u16 {
        match self {
            QueryError::UnknownResource(_) => 404,
            _ => 400,
        }
    }
}

/// What a `/config_dump` request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub resource: Option<String>,
    /// The mask as given (for messages) and its paths.
    pub mask: Option<(String, Vec<String>)>,
    pub include_eds: bool,
}

impl Query {
    /// Parse a request's query string (without the `?`).
    pub fn parse(query: &str) -> Result<Query, DumpError> {
        let mut q = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |name: &'static str| -> Result<String, QueryError> {
                if value.len() > MAX_VALUE_BYTES {
                    return Err(QueryError::TooLong(name));
                }
                percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map(|v| v.into_owned())
                    .map_err(|_| QueryError::NotUtf8(name))
            };
            match key {
                "resource" => q.resource = Some(decode("resource")?).filter(|r| !r.is_empty()),
                "mask" => {
                    let mask = decode("mask")?;
                    let paths: Vec<String> = mask
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if paths.len() > MAX_MASK_PATHS {
                        return Err(QueryError::TooManyPaths.into());
                    }
                    if !paths.is_empty() {
                        q.mask = Some((mask, paths));
                    }
                }
                "include_eds" => q.include_eds = true,
                _ => {}
            }
        }
        Ok(q)
    }

    /// Apply `resource` and `mask` to a rendered (and redacted) `ConfigDump`.
    pub(crate) fn apply(
        &self,
        pool: &DescriptorPool,
        dump: DynamicMessage,
    ) -> Result<DynamicMessage, DumpError> {
        let configs = unpack_list(pool, &dump, "configs");
        let mut out = Vec::new();
        match &self.resource {
            Some(resource) => {
                let mut found = false;
                let mut any_item = false;
                for config in &configs {
                    let Some(field) = config.descriptor().get_field_by_name(resource) else {
                        continue;
                    };
                    if !field.is_list() || field.kind().as_message().is_none() {
                        continue;
                    }
                    found = true;
                    let Some(Value::List(items)) =
                        config.get_field_by_name(resource).map(|v| v.into_owned())
                    else {
                        continue;
                    };
                    for item in items {
                        let Value::Message(mut item) = item else {
                            continue;
                        };
                        any_item = true;
                        if let Some((_, paths)) = &self.mask {
                            if !valid(&item.descriptor(), paths, true) {
                                continue;
                            }
                            trim(pool, &mut item, &tree(paths), true);
                        }
                        out.push(item);
                    }
                }
                if !found {
                    return Err(QueryError::UnknownResource(resource.clone()).into());
                }
                if let Some((mask, _)) = &self.mask
                    && any_item
                    && out.is_empty()
                {
                    return Err(QueryError::MaskNotApplied(mask.clone()).into());
                }
            }
            None => {
                for mut config in configs {
                    if let Some((_, paths)) = &self.mask {
                        if !valid(&config.descriptor(), paths, false) {
                            continue;
                        }
                        trim(pool, &mut config, &tree(paths), false);
                    }
                    out.push(config);
                }
                if let Some((mask, _)) = &self.mask
                    && out.is_empty()
                {
                    return Err(QueryError::MaskNotApplied(mask.clone()).into());
                }
            }
        }
        let mut dump = DynamicMessage::new(dump.descriptor());
        let list = out
            .iter()
            .map(|m| Value::Message(pack_any(pool, m)))
            .collect();
        dump.set_field_by_name("configs", Value::List(list));
        Ok(dump)
    }
}

/// The messages inside the `Any`s of list field `name`.
fn unpack_list(pool: &DescriptorPool, msg: &DynamicMessage, name: &str) -> Vec<DynamicMessage> {
    let Some(Value::List(list)) = msg.get_field_by_name(name).map(|v| v.into_owned()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| v.as_message())
        .filter_map(|any| unpack_any(pool, any))
        .collect()
}

fn unpack_any(pool: &DescriptorPool, any: &DynamicMessage) -> Option<DynamicMessage> {
    let type_url = any.get_field_by_name("type_url")?;
    let name = type_url.as_str()?.rsplit('/').next()?;
    let desc = pool.get_message_by_name(name)?;
    let value = any.get_field_by_name("value")?;
    DynamicMessage::decode(desc, value.as_bytes()?.as_ref()).ok()
}

fn pack_any(pool: &DescriptorPool, msg: &DynamicMessage) -> DynamicMessage {
    use prost::Message;
    let mut any = pool
        .get_message_by_name("google.protobuf.Any")
        .map(DynamicMessage::new)
        .unwrap_or_else(|| msg.clone());
    any.set_field_by_name(
        "type_url",
        Value::String(format!(
            "type.googleapis.com/{}",
            msg.descriptor().full_name()
        )),
    );
    any.set_field_by_name("value", Value::Bytes(msg.encode_to_vec().into()));
    any
}

/// Paths as a tree: an empty subtree keeps the whole field.
#[derive(Debug, Default)]
struct Tree(BTreeMap<String, Tree>);

fn tree(paths: &[String]) -> Tree {
    let mut root = Tree::default();
    for path in paths {
        let mut node = &mut root;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let whole = parts.peek().is_none();
            node = node.0.entry(part.to_owned()).or_default();
            if whole {
                // The whole field: drop anything narrower asked for it.
                node.0.clear();
                break;
            }
        }
    }
    root
}

/// Envoy's (protobuf's) rule: every path names fields, and only its last step may be a
/// repeated field; with `into_any`, a step may go on inside an `Any` (which is checked when
/// it is unpacked).
fn valid(desc: &MessageDescriptor, paths: &[String], into_any: bool) -> bool {
    paths.iter().all(|path| {
        let mut desc = desc.clone();
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some(field) = desc.get_field_by_name(part) else {
                return false;
            };
            if parts.peek().is_none() {
                return true;
            }
            let Some(next) = field.kind().as_message().cloned() else {
                return false;
            };
            if field.is_list() || field.is_map() {
                return false;
            }
            if next.full_name() == "google.protobuf.Any" {
                return into_any;
            }
            desc = next;
        }
        true
    })
}

/// Keep only the fields `tree` names.
fn trim(pool: &DescriptorPool, msg: &mut DynamicMessage, tree: &Tree, into_any: bool) {
    let fields: Vec<_> = msg.fields().map(|(f, _)| f).collect();
    for field in fields {
        let Some(sub) = tree.0.get(field.name()) else {
            msg.clear_field(&field);
            continue;
        };
        if sub.0.is_empty() {
            continue;
        }
        if let Value::Message(inner) = msg.get_field_mut(&field) {
            if inner.descriptor().full_name() == "google.protobuf.Any" {
                if !into_any {
                    continue;
                }
                // The Any's own `@type` stays, as in Envoy's output.
                if let Some(mut unpacked) = unpack_any(pool, inner) {
                    trim(pool, &mut unpacked, sub, into_any);
                    *inner = pack_any(pool, &unpacked);
                }
            } else {
                trim(pool, inner, sub, into_any);
            }
        }
    }
}
