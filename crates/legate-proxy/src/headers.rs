//! Header handling on the way through: hop-by-hop removal, forwarding headers, request ids
//! and the configured additions and removals.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use legate_snapshot::{HeaderAppend, HeaderValueOption};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers, including any named by `Connection`. When `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive so an upgrade can pass through.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the (few) names instead of eight
    // hashed removals.
    let any = h.keys().any(|n| {
        n == header::CONNECTION
            || n == header::TRANSFER_ENCODING
            || n == header::TE
            || n == header::TRAILER
            || n == header::UPGRADE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
    });
    if !any && !keep_upgrade {
        return;
    }
    if let Some(conn) = h.get(header::CONNECTION)
        && conn.as_bytes() != b"keep-alive"
        && conn.as_bytes() != b"close"
    {
        {
            let named: Vec<HeaderName> = conn
                .to_str()
                .unwrap_or("")
                .split(',')
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == header::UPGRADE))
                .collect();
            for n in named {
                h.remove(n);
            }
        }
    }
    // `te: trailers` is end to end in practice: gRPC servers refuse a request without it
    // (HTTP/2 allows `te` with that one value). As Envoy does, it is kept and every other
    // `te` token dropped.
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    });
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    h.remove(header::TRAILER);
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// The peer address as a header value, formatted once per connection.
pub(crate) fn peer_value(peer: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 64];
    HeaderValue::from_str(format_ip(peer, &mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Append the peer (from [`peer_value`]) to `x-forwarded-for`.
pub(crate) fn append_forwarded_for(h: &mut HeaderMap, peer: &HeaderValue) {
    match h.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(slot) => {
            slot.insert(peer.clone());
        }
        header::Entry::Occupied(mut slot) => {
            let prev = slot.get();
            let value = if prev.is_empty() {
                Some(peer.clone())
            } else {
                let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer.as_bytes());
                HeaderValue::from_bytes(&v).ok()
            };
            // `insert` replaces every value under the name, as a single joined list.
            if let Some(v) = value {
                slot.insert(v);
            }
        }
    }
}

/// `x-forwarded-proto`: the downstream connection's scheme, `https` when it is TLS.
pub(crate) fn set_forwarded_proto(h: &mut HeaderMap, tls: bool) {
    let scheme = if tls { "https" } else { "http" };
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
}

fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let n = cursor.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// Ensure an `x-request-id`, generating a random UUIDv4 when absent.
pub(crate) fn ensure_request_id(h: &mut HeaderMap) {
    // One lookup: the entry is filled only when vacant.
    if let header::Entry::Vacant(slot) = h.entry(&X_REQUEST_ID) {
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(s) {
            slot.insert(v);
        }
    }
}

/// Apply configured removals then additions, Envoy's `*_headers_to_remove` /
/// `*_headers_to_add`.
/// Names and values were parsed when the snapshot was built: here they are only cloned.
pub(crate) fn apply(h: &mut HeaderMap, remove: &[HeaderName], add: &[HeaderValueOption]) {
    for name in remove {
        h.remove(name);
    }
    for opt in add {
        let (name, value) = (opt.name.clone(), opt.value.clone());
        match opt.append {
            HeaderAppend::AppendIfExistsOrAdd => {
                h.append(name, value);
            }
            HeaderAppend::AddIfAbsent => {
                if let header::Entry::Vacant(slot) = h.entry(name) {
                    slot.insert(value);
                }
            }
            HeaderAppend::OverwriteIfExistsOrAdd => {
                h.insert(name, value);
            }
            HeaderAppend::OverwriteIfExists => {
                if h.contains_key(&name) {
                    h.insert(name, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
    }

    /// gRPC needs `te: trailers` to reach the upstream; other `te` tokens go.
    #[test]
    fn te_trailers_survives_alone() {
        for (sent, kept) in [
            ("trailers", Some("trailers")),
            ("gzip, Trailers", Some("trailers")),
            ("trailers;q=0.5", Some("trailers")),
            ("gzip", None),
            ("trailersx", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_static(sent));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(
                h.get(header::TE).map(|v| v.to_str().unwrap_or("?")),
                kept,
                "{sent}"
            );
        }
    }

    #[test]
    fn upgrade_survives_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &peer_value("10.1.2.3".parse().expect("ip")));
        append_forwarded_for(&mut h, &peer_value("::1".parse().expect("ip")));
        set_forwarded_proto(&mut h, false);
        assert_eq!(h.get(&X_FORWARDED_FOR).expect("xff"), "10.1.2.3, ::1");
        assert_eq!(h.get(&X_FORWARDED_PROTO).expect("xfp"), "http");
    }

    #[test]
    fn request_id_generated_once() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h.get(&X_REQUEST_ID).expect("id").clone();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        ensure_request_id(&mut h);
        assert_eq!(h.get(&X_REQUEST_ID), Some(&id));
    }

    #[test]
    fn add_and_remove_follow_append_action() {
        let opt = |name: &'static str, value: &'static str, append| HeaderValueOption {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            append,
        };
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("gone", HeaderValue::from_static("1"));
        apply(
            &mut h,
            &[HeaderName::from_static("gone")],
            &[
                opt("a", "2", HeaderAppend::AppendIfExistsOrAdd),
                opt("b", "1", HeaderAppend::AddIfAbsent),
                opt("b", "2", HeaderAppend::AddIfAbsent),
                opt("c", "1", HeaderAppend::OverwriteIfExists),
                opt("a", "3", HeaderAppend::OverwriteIfExistsOrAdd),
            ],
        );
        assert_eq!(h.get_all("a").iter().count(), 1);
        assert_eq!(h.get("a").expect("a"), "3");
        assert_eq!(h.get("b").expect("b"), "1");
        assert!(!h.contains_key("c"));
        assert!(!h.contains_key("gone"));
    }
}
