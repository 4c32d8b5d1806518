//! A deterministic protobuf encoding, so that a resource's content hash is the same in every
//! process that builds it.
//!
//! prost encodes a `map<..>` field by iterating a `std::collections::HashMap`, whose order is
//! seeded randomly per map: the same `Cluster` with two `typed_extension_protocol_options`,
//! or any `Metadata` / `google.protobuf.Struct` with two keys, encodes to different bytes in
//! two runs. Protobuf gives map entries no order, so we rewrite the encoded bytes with every
//! map's entries sorted by key (duplicate keys keep the last one, as a parser would), and
//! leave everything else byte for byte: prost writes all other fields in field-number order,
//! which is already deterministic. The result is a valid encoding of the same message, so it
//! is both what we hash and what we send.
//!
//! Envoy messages carry no descriptors at run time, so [`schema`] names, for each message on a
//! path from a served resource type down to a map, the fields to descend into. It covers
//! every map reachable from Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
//! through plain message fields (metadata, per-filter configs, protocol options, named
//! endpoints, Struct/Value/ListValue), plus the `Any` hops where a type of the table is
//! packed: the HttpConnectionManager in a listener filter or `api_listener` (with its inline
//! RouteConfiguration), and a Struct in typed metadata. Left out on purpose: maps that only
//! occur under a ConfigSource's Google gRPC settings, xDS matcher trees and QUIC options,
//! which the mesh compiler never emits. A map missed by the table is still encoded correctly;
//! its resource's version may then differ between two runs of legate-cp, which costs one
//! redundant push after a restart and never hides a change. Bytes that do not parse as
//! protobuf are kept as they are.

use std::collections::BTreeMap;

/// How to descend into one field of a message.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// A (possibly repeated or oneof) message field of the named type.
    Msg(&'static str),
    /// A `google.protobuf.Any` field: descend into its value by its type URL.
    Any,
    /// A map field: sort its entries by key, descending into the values as given.
    Map(Value),
}

/// The value type of a map field.
#[derive(Clone, Copy, Debug)]
enum Value {
    Msg(&'static str),
    Any,
}

const ANY: &str = "google.protobuf.Any";
const STRUCT: &str = "google.protobuf.Struct";
const PB_VALUE: &str = "google.protobuf.Value";
const LIST_VALUE: &str = "google.protobuf.ListValue";
const METADATA: &str = "envoy.config.core.v3.Metadata";
const LISTENER: &str = "envoy.config.listener.v3.Listener";
const FILTER_CHAIN: &str = "envoy.config.listener.v3.FilterChain";
const NETWORK_FILTER: &str = "envoy.config.listener.v3.Filter";
const API_LISTENER: &str = "envoy.config.listener.v3.ApiListener";
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTE_CONFIGURATION: &str = "envoy.config.route.v3.RouteConfiguration";
const VIRTUAL_HOST: &str = "envoy.config.route.v3.VirtualHost";
const ROUTE: &str = "envoy.config.route.v3.Route";
const ROUTE_ACTION: &str = "envoy.config.route.v3.RouteAction";
const WEIGHTED_CLUSTER: &str = "envoy.config.route.v3.WeightedCluster";
const CLUSTER_WEIGHT: &str = "envoy.config.route.v3.WeightedCluster.ClusterWeight";
const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const HEALTH_CHECK: &str = "envoy.config.core.v3.HealthCheck";
const LB_SUBSET_CONFIG: &str = "envoy.config.cluster.v3.Cluster.LbSubsetConfig";
const TRANSPORT_SOCKET_MATCH: &str = "envoy.config.cluster.v3.Cluster.TransportSocketMatch";
const CLUSTER_LOAD_ASSIGNMENT: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";
const ENDPOINT: &str = "envoy.config.endpoint.v3.Endpoint";
const LOCALITY_LB_ENDPOINTS: &str = "envoy.config.endpoint.v3.LocalityLbEndpoints";
const LB_ENDPOINT_LIST: &str = "envoy.config.endpoint.v3.LocalityLbEndpoints.LbEndpointList";
const LB_ENDPOINT: &str = "envoy.config.endpoint.v3.LbEndpoint";

/// Fields to descend into, per message type (field numbers from the Envoy v3 protos). A
/// message that is not listed holds no map we know of and is copied as it is.
fn schema(type_name: &str) -> Option<&'static [(u32, Field)]> {
    use Field::{Any, Map, Msg};
    let fields: &'static [(u32, Field)] = match type_name {
        STRUCT => &[(1, Map(Value::Msg(PB_VALUE)))],
        PB_VALUE => &[(5, Msg(STRUCT)), (6, Msg(LIST_VALUE))],
        LIST_VALUE => &[(1, Msg(PB_VALUE))],
        // filter_metadata, typed_filter_metadata
        METADATA => &[(1, Map(Value::Msg(STRUCT))), (2, Map(Value::Any))],
        // filter_chains, metadata, api_listener, default_filter_chain
        LISTENER => &[
            (3, Msg(FILTER_CHAIN)),
            (6, Msg(METADATA)),
            (19, Msg(API_LISTENER)),
            (25, Msg(FILTER_CHAIN)),
        ],
        // filters, metadata
        FILTER_CHAIN => &[(3, Msg(NETWORK_FILTER)), (5, Msg(METADATA))],
        // typed_config
        NETWORK_FILTER => &[(4, Any)],
        // api_listener
        API_LISTENER => &[(1, Any)],
        // route_config (inline)
        HCM => &[(4, Msg(ROUTE_CONFIGURATION))],
        // virtual_hosts, typed_per_filter_config, metadata
        ROUTE_CONFIGURATION => &[
            (2, Msg(VIRTUAL_HOST)),
            (16, Map(Value::Any)),
            (17, Msg(METADATA)),
        ],
        // routes, typed_per_filter_config, metadata
        VIRTUAL_HOST => &[(3, Msg(ROUTE)), (15, Map(Value::Any)), (24, Msg(METADATA))],
        // route, metadata, typed_per_filter_config
        ROUTE => &[
            (2, Msg(ROUTE_ACTION)),
            (4, Msg(METADATA)),
            (13, Map(Value::Any)),
        ],
        // weighted_clusters, metadata_match
        ROUTE_ACTION => &[(3, Msg(WEIGHTED_CLUSTER)), (4, Msg(METADATA))],
        // clusters
        WEIGHTED_CLUSTER => &[(1, Msg(CLUSTER_WEIGHT))],
        // metadata_match, typed_per_filter_config
        CLUSTER_WEIGHT => &[(3, Msg(METADATA)), (10, Map(Value::Any))],
        // health_checks, lb_subset_config, metadata, load_assignment,
        // typed_extension_protocol_options, transport_socket_matches
        CLUSTER => &[
            (8, Msg(HEALTH_CHECK)),
            (22, Msg(LB_SUBSET_CONFIG)),
            (25, Msg(METADATA)),
            (33, Msg(CLUSTER_LOAD_ASSIGNMENT)),
            (36, Map(Value::Any)),
            (43, Msg(TRANSPORT_SOCKET_MATCH)),
        ],
        // transport_socket_match_criteria
        HEALTH_CHECK => &[(23, Msg(STRUCT))],
        // default_subset
        LB_SUBSET_CONFIG => &[(2, Msg(STRUCT))],
        // match
        TRANSPORT_SOCKET_MATCH => &[(2, Msg(STRUCT))],
        // endpoints, named_endpoints
        CLUSTER_LOAD_ASSIGNMENT => &[
            (2, Msg(LOCALITY_LB_ENDPOINTS)),
            (5, Map(Value::Msg(ENDPOINT))),
        ],
        // lb_endpoints, load_balancer_endpoints, metadata
        LOCALITY_LB_ENDPOINTS => &[
            (2, Msg(LB_ENDPOINT)),
            (7, Msg(LB_ENDPOINT_LIST)),
            (9, Msg(METADATA)),
        ],
        // lb_endpoints
        LB_ENDPOINT_LIST => &[(1, Msg(LB_ENDPOINT))],
        // metadata
        LB_ENDPOINT => &[(3, Msg(METADATA))],
        _ => return None,
    };
    Some(fields)
}

/// Deep enough for any real configuration; deeper input (a pathological Struct) is copied.
const MAX_DEPTH: usize = 100;

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// The canonical encoding of `bytes`, an encoded message of the protobuf type `type_name`
/// (full name, e.g. `envoy.config.cluster.v3.Cluster`).
pub(crate) fn canonicalize(type_name: &str, bytes: &[u8]) -> Vec<u8> {
    rewrite(type_name, bytes, 0).unwrap_or_else(|| bytes.to_vec())
}

/// `None` when the bytes do not parse; the caller then keeps the input.
fn rewrite(type_name: &str, bytes: &[u8], depth: usize) -> Option<Vec<u8>> {
    if depth > MAX_DEPTH {
        return None;
    }
    if type_name == ANY {
        return rewrite_any(bytes, depth);
    }
    let Some(schema) = schema(type_name) else {
        return Some(bytes.to_vec());
    };
    let fields = parse(bytes)?;
    let lookup = |number: u32| {
        schema
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, field)| *field)
    };

    // Every map's entries, sorted by key; emitted where the map's first entry was.
    let mut maps: BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
    for field in &fields {
        if let Some(Field::Map(value)) = lookup(field.number) {
            if field.wire != WIRE_LEN {
                return None;
            }
            let (key, entry) = rewrite_map_entry(field.payload, value, depth + 1)?;
            maps.entry(field.number).or_default().insert(key, entry);
        }
    }

    let mut out = Vec::with_capacity(bytes.len());
    for field in &fields {
        match (lookup(field.number), field.wire) {
            (Some(Field::Map(_)), _) => {
                for entry in maps.remove(&field.number).unwrap_or_default().values() {
                    put_len_field(&mut out, field.number, entry);
                }
            }
            (Some(Field::Msg(inner)), WIRE_LEN) => {
                let inner = rewrite(inner, field.payload, depth + 1)?;
                put_len_field(&mut out, field.number, &inner);
            }
            (Some(Field::Any), WIRE_LEN) => {
                let inner = rewrite_any(field.payload, depth + 1)?;
                put_len_field(&mut out, field.number, &inner);
            }
            _ => out.extend_from_slice(field.raw),
        }
    }
    Some(out)
}

/// A map entry is a message with the key as field 1 and the value as field 2. Returns the
/// key's encoded bytes (the sort key) and the rewritten entry.
fn rewrite_map_entry(bytes: &[u8], value: Value, depth: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let fields = parse(bytes)?;
    let mut key = Vec::new();
    let mut out = Vec::with_capacity(bytes.len());
    for field in &fields {
        match (field.number, field.wire) {
            (1, WIRE_LEN) => {
                key = field.payload.to_vec();
                out.extend_from_slice(field.raw);
            }
            (1, _) => {
                key = field.raw.to_vec();
                out.extend_from_slice(field.raw);
            }
            (2, WIRE_LEN) => {
                let inner = match value {
                    Value::Msg(inner) => rewrite(inner, field.payload, depth + 1)?,
                    Value::Any => rewrite_any(field.payload, depth + 1)?,
                };
                put_len_field(&mut out, 2, &inner);
            }
            _ => out.extend_from_slice(field.raw),
        }
    }
    Some((key, out))
}

/// `google.protobuf.Any`: the value is rewritten as the type its URL names.
fn rewrite_any(bytes: &[u8], depth: usize) -> Option<Vec<u8>> {
    let fields = parse(bytes)?;
    let type_url = fields
        .iter()
        .rev()
        .find(|f| f.number == 1 && f.wire == WIRE_LEN)
        .and_then(|f| std::str::from_utf8(f.payload).ok())
        .unwrap_or_default();
    let type_name = type_url.rsplit('/').next().unwrap_or_default();
    let mut out = Vec::with_capacity(bytes.len());
    for field in &fields {
        if field.number == 2 && field.wire == WIRE_LEN {
            let inner = rewrite(type_name, field.payload, depth + 1)?;
            put_len_field(&mut out, 2, &inner);
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    Some(out)
}

/// One field as found on the wire.
struct WireField<'a> {
    number: u32,
    wire: u8,
    /// The whole field: key and value.
    raw: &'a [u8],
    /// For length-delimited fields, the contents; otherwise empty.
    payload: &'a [u8],
}

fn parse(bytes: &[u8]) -> Option<Vec<WireField<'_>>> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = read_varint(bytes, &mut pos)?;
        let number = u32::try_from(key >> 3).ok().filter(|n| *n != 0)?;
        let wire = (key & 7) as u8;
        let mut payload: &[u8] = &[];
        match wire {
            WIRE_VARINT => {
                read_varint(bytes, &mut pos)?;
            }
            WIRE_I64 => pos = pos.checked_add(8)?,
            WIRE_LEN => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                payload = bytes.get(pos..end)?;
                pos = end;
            }
            WIRE_I32 => pos = pos.checked_add(4)?,
            // Groups (3, 4) are not used by any Envoy v3 message.
            _ => return None,
        }
        let raw = bytes.get(start..pos)?;
        fields.push(WireField {
            number,
            wire,
            raw,
            payload,
        });
    }
    Some(fields)
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost};
    use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
    use prost::Message;

    fn string_value(s: &str) -> PbValue {
        PbValue {
            kind: Some(Kind::StringValue(s.to_owned())),
        }
    }

    /// Encodes a Struct with its entries in exactly the given order.
    fn struct_bytes(keys: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for key in keys {
            let mut entry = Vec::new();
            put_len_field(&mut entry, 1, key.as_bytes());
            put_len_field(&mut entry, 2, &string_value(key).encode_to_vec());
            put_len_field(&mut out, 1, &entry);
        }
        out
    }

    #[test]
    fn map_entry_order_does_not_matter() {
        let a = canonicalize(STRUCT, &struct_bytes(&["a", "b", "c"]));
        let b = canonicalize(STRUCT, &struct_bytes(&["c", "a", "b"]));
        assert_eq!(a, b);
        assert_eq!(a, struct_bytes(&["a", "b", "c"]));
    }

    #[test]
    fn duplicate_keys_keep_the_last_like_a_parser() {
        let mut bytes = Vec::new();
        for value in ["first", "second"] {
            let mut entry = Vec::new();
            put_len_field(&mut entry, 1, b"k");
            put_len_field(&mut entry, 2, &string_value(value).encode_to_vec());
            put_len_field(&mut bytes, 1, &entry);
        }
        let parsed = Struct::decode(bytes.as_slice()).expect("decodes");
        let canonical = Struct::decode(canonicalize(STRUCT, &bytes).as_slice()).expect("decodes");
        assert_eq!(parsed, canonical);
        assert_eq!(canonical.fields["k"], string_value("second"));
    }

    #[test]
    fn nested_maps_are_sorted_and_the_message_is_unchanged() {
        let inner = |keys: &[&str]| {
            let mut s = Struct::default();
            for k in keys {
                s.fields.insert((*k).to_owned(), string_value(k));
            }
            s
        };
        let build = |order: &[&str]| {
            let mut metadata = Metadata::default();
            for k in order {
                metadata
                    .filter_metadata
                    .insert((*k).to_owned(), inner(&["x", "y", "z", "w"]));
            }
            metadata
        };
        let keys = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"];
        let mut reversed = keys;
        reversed.reverse();
        let a = build(&keys);
        let b = build(&reversed);
        let ca = canonicalize(METADATA, &a.encode_to_vec());
        let cb = canonicalize(METADATA, &b.encode_to_vec());
        assert_eq!(ca, cb);
        assert_eq!(Metadata::decode(ca.as_slice()).expect("decodes"), a);
    }

    #[test]
    fn repeated_fields_keep_their_order() {
        let route = |name: &str| Route {
            name: name.to_owned(),
            ..Default::default()
        };
        let vh = |names: &[&str]| VirtualHost {
            name: "vh".to_owned(),
            routes: names.iter().map(|n| route(n)).collect(),
            ..Default::default()
        };
        let a = canonicalize(VIRTUAL_HOST, &vh(&["a", "b"]).encode_to_vec());
        let b = canonicalize(VIRTUAL_HOST, &vh(&["b", "a"]).encode_to_vec());
        assert_ne!(a, b);
    }

    #[test]
    fn unknown_types_and_garbage_are_kept() {
        assert_eq!(canonicalize("some.Other", b"\x0a\x01a"), b"\x0a\x01a");
        // A truncated length-delimited field.
        assert_eq!(canonicalize(STRUCT, b"\x0a\x05ab"), b"\x0a\x05ab");
    }
}
