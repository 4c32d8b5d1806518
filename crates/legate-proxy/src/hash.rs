//! Consistent hashing: the ring (RING_HASH) and lookup table (MAGLEV) over a cluster's
//! hosts, and a request's hash from its route's `hash_policy`.
//!
//! The tables are built with Envoy's hash function and keys (XXH64 of `address_index` ring
//! points, searched ketama-style; Maglev permutations from XXH64 of the address with seeds
//! 0 and 1, hosts in address order, Envoy's weighting), so a Maglev key lands on the host it
//! would land on with Envoy when every host is healthy. The ring gives each host a number
//! of points independent of the others (see [`ring`]), so it differs from Envoy's. They are
//! built over every host of the cluster when its membership changes, never on the request
//! path and never for a health change: a host that cannot take traffic (unhealthy, ejected,
//! failing health checks, or avoided by a retry's `previous_hosts` predicate) is walked past
//! to the next entry, so only that host's keys move, each to its neighbour on the ring.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use legate_snapshot::{CookieHash, HashMethod, HashPolicy, LbPolicy};
use xxhash_rust::xxh64::xxh64;

use crate::lb::Host;

/// The largest table built where the host set changes (about a millisecond of work);
/// larger ones go to the blocking pool. Envoy's default Maglev table (65537) and rings of up
/// to 128 equal hosts stay inline.
pub(crate) const INLINE_ENTRIES: u128 = 131_072;

/// A ring or Maglev table over a host list, as indices into that list.
#[derive(Debug)]
pub(crate) struct HashTable {
    policy: LbPolicy,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Ring points sorted by hash, and the host index of each.
    Ring { points: Vec<u64>, hosts: Vec<u32> },
    /// `table_size` host indices.
    Maglev { hosts: Vec<u32> },
}

impl HashTable {
    /// The table `policy` asks for over `hosts` (every host, whatever its health), or
    /// `None` when the policy does not hash or there is no host.
    pub(crate) fn build(policy: &LbPolicy, hosts: &[Arc<Host>]) -> Option<Self> {
        if hosts.is_empty() || hosts.len() > u32::MAX as usize {
            return None;
        }
        let kind = match *policy {
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => ring(hosts, min_ring_size, max_ring_size),
            LbPolicy::Maglev { table_size } => {
                let total: f64 = hosts.iter().map(|h| f64::from(h.weight)).sum();
                let normalized: Vec<f64> =
                    hosts.iter().map(|h| f64::from(h.weight) / total).collect();
                maglev(hosts, &normalized, table_size)
            }
            _ => return None,
        };
        Some(HashTable {
            policy: *policy,
            kind,
        })
    }

    /// Whether the table `policy` asks for over `hosts` is large enough (more than
    /// [`INLINE_ENTRIES`]) to be built on the blocking pool rather than where the host
    /// set changes.
    pub(crate) fn is_large(policy: &LbPolicy, hosts: &[Arc<Host>]) -> bool {
        let entries = match *policy {
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => {
                let w_min = u128::from(hosts.iter().map(|h| h.weight).min().unwrap_or(1).max(1));
                let wanted: u128 = hosts
                    .iter()
                    .map(|h| (u128::from(min_ring_size) * u128::from(h.weight)).div_ceil(w_min))
                    .sum();
                wanted.min(u128::from(max_ring_size))
            }
            LbPolicy::Maglev { table_size } => u128::from(table_size),
            _ => 0,
        };
        entries > INLINE_ENTRIES
    }

    /// The policy the table was built for.
    pub(crate) fn policy(&self) -> &LbPolicy {
        &self.policy
    }

    /// Entries in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match &self.kind {
            Kind::Ring { hosts, .. } | Kind::Maglev { hosts } => hosts.len(),
        }
    }

    /// Where `hash` lands: the first ring point at or after it (wrapping to the first), or
    /// the Maglev slot `hash mod size`.
    fn start(&self, hash: u64) -> usize {
        match &self.kind {
            Kind::Ring { points, .. } => {
                let i = points.partition_point(|&p| p < hash);
                if i == points.len() { 0 } else { i }
            }
            Kind::Maglev { hosts } => (hash % hosts.len() as u64) as usize,
        }
    }

    /// Host indices in the order a key meets them: its own entry, then the following ones
    /// around the table, at most `limit` entries.
    pub(crate) fn walk(&self, hash: u64, limit: usize) -> impl Iterator<Item = usize> + '_ {
        let hosts = match &self.kind {
            Kind::Ring { hosts, .. } | Kind::Maglev { hosts } => hosts,
        };
        let start = if hosts.is_empty() {
            0
        } else {
            self.start(hash)
        };
        let n = hosts.len();
        (0..n.min(limit)).map(move |k| hosts[(start + k) % n] as usize)
    }
}

/// The key a host is hashed by: its address as Envoy prints it (`1.2.3.4:80`, `[::1]:80`).
fn host_key(h: &Host) -> String {
    h.addr.to_string()
}

/// The ring: host `h` of weight `w` owns the points XXH64(`address_i`) for i below
/// `min × w / w_min` (rounded up), so the lightest host owns `min` points. Unlike Envoy,
/// which spreads `min` over the whole ring, a host's points do not depend on how many
/// other hosts there are: adding or removing a host moves only the keys it gains or loses
/// (about 1/N), where Envoy's ring also reshuffles about as many keys among the others.
/// Above `max` points in all, every host's count is scaled down to fit (then a change of
/// membership moves more keys, as in Envoy).
fn ring(hosts: &[Arc<Host>], min: u64, max: u64) -> Kind {
    let w_min = u128::from(hosts.iter().map(|h| h.weight).min().unwrap_or(1).max(1));
    let w_total: u128 = hosts.iter().map(|h| u128::from(h.weight)).sum();
    let (min, max) = (u128::from(min), u128::from(max));
    let wanted: Vec<u128> = hosts
        .iter()
        .map(|h| (min * u128::from(h.weight)).div_ceil(w_min))
        .collect();
    let counts: Vec<u64> = if wanted.iter().sum::<u128>() <= max {
        wanted.iter().map(|&c| c as u64).collect()
    } else {
        hosts
            .iter()
            .map(|h| ((max * u128::from(h.weight)) / w_total.max(1)).max(1) as u64)
            .collect()
    };
    // Bounded by `max` (validated to at most 8M) plus one point per host.
    let total: u64 = counts.iter().sum();
    let mut entries: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
    for (idx, (h, &count)) in hosts.iter().zip(&counts).enumerate() {
        let base = host_key(h);
        for i in 0..count {
            let key = format!("{base}_{i}");
            entries.push((xxh64(key.as_bytes(), 0), idx as u32));
        }
    }
    entries.sort_unstable_by_key(|e| e.0);
    let (points, hosts) = entries.into_iter().unzip();
    Kind::Ring { points, hosts }
}

/// Maglev (Eisenbud et al., 2016) with Envoy's weighting: hosts in address order take
/// turns filling their preferred free slot; a host of weight w takes a turn every
/// `max weight / w` rounds. Rounds are visited through a heap of each host's next due
/// round, so a very light host does not make the build loop over rounds it skips.
fn maglev(hosts: &[Arc<Host>], normalized: &[f64], size: u64) -> Kind {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let size_usize = size as usize;
    let max_weight = normalized.iter().copied().fold(0.0, f64::max);
    struct Entry {
        idx: u32,
        offset: u64,
        skip: u64,
        next: u64,
        weight: f64,
        target: f64,
    }
    let mut order: Vec<(String, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (host_key(h), i))
        .collect();
    order.sort();
    let mut entries: Vec<Entry> = order
        .iter()
        .map(|(key, i)| Entry {
            idx: *i as u32,
            offset: xxh64(key.as_bytes(), 0) % size,
            skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
            next: 0,
            weight: normalized[*i],
            target: 0.0,
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size_usize];
    // (round, position in `entries`): every host is due in round 1.
    let mut due: BinaryHeap<Reverse<(u64, usize)>> =
        (0..entries.len()).map(|i| Reverse((1, i))).collect();
    let mut filled = 0usize;
    while filled < size_usize {
        let Some(Reverse((round, i))) = due.pop() else {
            break;
        };
        let e = &mut entries[i];
        e.target += max_weight;
        // `next` stays below `size` in practice; the reduction keeps the product in range.
        let permutation = |e: &Entry| (e.offset + e.skip * (e.next % size)) % size;
        let mut c = permutation(e);
        while table[c as usize] != EMPTY {
            e.next += 1;
            c = permutation(e);
        }
        table[c as usize] = e.idx;
        e.next += 1;
        filled += 1;
        // The first later round r with r * weight >= target, as Envoy's loop tests it.
        let mut r = round + 1;
        if e.weight > 0.0 {
            let estimate = (e.target / e.weight).ceil();
            if estimate.is_finite() && estimate > r as f64 && estimate < 1e15 {
                r = estimate as u64;
                while r > round + 1 && ((r - 1) as f64) * e.weight >= e.target {
                    r -= 1;
                }
            }
            while (r as f64) * e.weight < e.target {
                r += 1;
            }
        }
        due.push(Reverse((r, i)));
    }
    Kind::Maglev { hosts: table }
}

/// A request's hash and the cookie to set when a cookie policy made one.
#[derive(Debug, Default)]
pub(crate) struct RequestHash {
    /// `None` when no policy yielded a hash: the balancer then picks at random.
    pub(crate) hash: Option<u64>,
    /// `Set-Cookie` for the response, when a cookie policy with a `ttl` found no cookie.
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// The connection a request came on, for `source_ip` and generated cookies.
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// Evaluate `policies` in order as Envoy does: each hash is folded into the previous one
/// (rotated left by one bit, then XOR, so equal entries do not cancel out), and a `terminal`
/// entry that yielded a hash ends the evaluation.
pub(crate) fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    query: Option<&str>,
    conn: &Conn,
) -> RequestHash {
    let mut out = RequestHash::default();
    for p in policies {
        let h = match &p.method {
            HashMethod::Header { name } => header_hash(headers, name),
            HashMethod::Cookie(c) => cookie_hash(c, headers, conn, &mut out.set_cookie),
            HashMethod::SourceIp => Some(ip_hash(conn.peer.ip())),
            HashMethod::QueryParameter { name } => query_value(query, name).map(|v| xxh64(v, 0)),
        };
        if let Some(h) = h {
            out.hash = Some(match out.hash {
                Some(old) => old.rotate_left(1) ^ h,
                None => h,
            });
        }
        if p.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

/// Every value of the header, sorted, each hashed with the previous hash as its seed.
fn header_hash(headers: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    let mut values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
}

fn ip_hash(ip: IpAddr) -> u64 {
    xxh64(ip.to_string().as_bytes(), 0)
}

/// The raw (not percent-decoded) value of the first `name` parameter; `a` alone is an
/// empty value.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q [u8]> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

/// The value of cookie `name` in the request's `Cookie` headers, without surrounding
/// double quotes.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            (k == name.as_bytes()).then(|| {
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
        })
    })
}

fn cookie_hash(
    c: &CookieHash,
    headers: &HeaderMap,
    conn: &Conn,
    set_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    if let Some(v) = cookie_value(headers, &c.name) {
        return Some(xxh64(v, 0));
    }
    let ttl = c.ttl?;
    // As Envoy: the value is a hash of the connection's two addresses, so the requests of
    // one connection that carry no cookie yet agree on one; it is hashed like a cookie the
    // client sends back.
    let value = format!(
        "{:016x}",
        xxh64(format!("{}{}", conn.peer, conn.local).as_bytes(), 0)
    );
    if set_cookie.is_none() {
        *set_cookie = HeaderValue::try_from(set_cookie_line(c, &value, ttl)).ok();
    }
    Some(xxh64(value.as_bytes(), 0))
}

/// `name="value"; Max-Age=N; Path=p; attributes; HttpOnly`: Envoy's layout. A ttl under
/// one second makes a session cookie (no `Max-Age`). Validation keeps every part free of
/// `;` and control characters.
fn set_cookie_line(c: &CookieHash, value: &str, ttl: Duration) -> String {
    let mut line = format!("{}=\"{value}\"", c.name);
    if ttl.as_secs() > 0 {
        line.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(path) = &c.path {
        line.push_str(&format!("; Path={path}"));
    }
    for (name, value) in &c.attributes {
        if value.is_empty() {
            line.push_str(&format!("; {name}"));
        } else {
            line.push_str(&format!("; {name}={value}"));
        }
    }
    line.push_str("; HttpOnly");
    line
}

#[cfg(test)]
mod tests;
