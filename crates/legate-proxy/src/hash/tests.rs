use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use legate_snapshot::{CookieHash, HashMethod, HashPolicy, HealthStatus, LbPolicy};
use xxhash_rust::xxh64::xxh64;

use super::{Conn, HashTable, request_hash};
use crate::lb::{Host, HostSet, flag};

const RING: LbPolicy = LbPolicy::RingHash {
    min_ring_size: 1024,
    max_ring_size: 8 * 1024 * 1024,
};
const MAGLEV: LbPolicy = LbPolicy::Maglev { table_size: 65537 };
const KEYS: u64 = 10_000;

fn host(port: u16, weight: u32) -> Arc<Host> {
    Arc::new(Host::new(
        SocketAddr::from(([10, 0, 0, 1], port)),
        None,
        weight,
        HealthStatus::Healthy,
    ))
}

fn hosts(n: u16) -> Vec<Arc<Host>> {
    (0..n).map(|i| host(8000 + i, 1)).collect()
}

fn set(policy: &LbPolicy, hosts: Vec<Arc<Host>>) -> HostSet {
    HostSet::new(hosts, 500).with_table(policy)
}

/// The port each of `KEYS` keys lands on.
fn assignment(s: &HostSet) -> Vec<u16> {
    (0..KEYS)
        .map(|k| {
            let h = xxh64(format!("user-{k}").as_bytes(), 0);
            s.pick_hashed(h, &[]).expect("a host").addr.port()
        })
        .collect()
}

fn moved(a: &[u16], b: &[u16]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn ring_gives_each_host_points_by_weight_whatever_the_others() {
    // Equal hosts: the minimum each, so 3 x 1024.
    let t = HashTable::build(&RING, &hosts(3)).expect("table");
    assert_eq!(t.len(), 3 * 1024);
    // Weights 1:2 with a minimum of 4: 4 and 8 points.
    let small = LbPolicy::RingHash {
        min_ring_size: 4,
        max_ring_size: 100,
    };
    let t = HashTable::build(&small, &[host(1, 1), host(2, 2)]).expect("table");
    assert_eq!(t.len(), 12);
    let owned: Vec<usize> = t.walk(0, 12).collect();
    assert_eq!(owned.iter().filter(|&&i| i == 0).count(), 4, "{owned:?}");
    // Capped by the maximum whatever the weights ask for, each host keeping a point.
    let capped = LbPolicy::RingHash {
        min_ring_size: 1024,
        max_ring_size: 2048,
    };
    let t = HashTable::build(&capped, &[host(1, 1), host(2, 1_000_000)]).expect("table");
    assert!(t.len() <= 2049, "{}", t.len());
    assert!(t.walk(0, usize::MAX).any(|i| i == 0));
    assert!(HashTable::build(&RING, &[]).is_none());
    assert!(HashTable::build(&LbPolicy::RoundRobin, &hosts(2)).is_none());
}

#[test]
fn maglev_fills_the_table_in_proportion_to_weights() {
    let hs = vec![host(1, 1), host(2, 2), host(3, 1)];
    let t = HashTable::build(&MAGLEV, &hs).expect("table");
    assert_eq!(t.len(), 65537);
    let mut counts = [0usize; 3];
    for i in t.walk(0, usize::MAX) {
        counts[i] += 1;
    }
    assert_eq!(counts.iter().sum::<usize>(), 65537);
    let share = counts[1] as f64 / 65537.0;
    assert!((0.49..0.51).contains(&share), "{counts:?}");
    // A very light host among heavy ones still gets its share, and the build stays
    // bounded (the heap skips the rounds it is not due in).
    let hs = vec![host(1, 1_000_000), host(2, 1)];
    let t = HashTable::build(&MAGLEV, &hs).expect("table");
    let light = t.walk(0, usize::MAX).filter(|&i| i == 1).count();
    assert!(light <= 1, "{light}");
}

/// With N hosts and 10k keys, adding one host moves about 1/(N+1) of the keys, all of them
/// to the new host; removing it moves them back.
fn check_minimal_movement(policy: &LbPolicy, extra_movement: f64) {
    for n in [3u16, 5, 10] {
        let before = assignment(&set(policy, hosts(n)));
        let after = assignment(&set(policy, hosts(n + 1)));
        let m = moved(&before, &after);
        let expected = KEYS as f64 / f64::from(n + 1);
        let ratio = m as f64 / expected;
        assert!(
            (0.8..1.2 + extra_movement).contains(&ratio),
            "{policy:?}, {n} -> {} hosts: {m} of {KEYS} keys moved, expected about {expected:.0}",
            n + 1
        );
        let new_port = 8000 + n;
        let to_new = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y && **y == new_port)
            .count();
        assert!(
            to_new as f64 >= m as f64 * (1.0 - extra_movement),
            "{policy:?}: {to_new} of {m} moved keys went to the new host"
        );
    }
}

#[test]
fn ring_moves_about_one_nth_of_keys() {
    check_minimal_movement(&RING, 0.0);
}

#[test]
fn maglev_moves_about_one_nth_of_keys() {
    // Maglev trades a little extra disruption for its even spread (the paper's
    // "minimal disruption" is approximate).
    check_minimal_movement(&MAGLEV, 0.05);
}

#[test]
fn an_unavailable_host_moves_only_its_own_keys_to_the_next_on_the_ring() {
    for policy in [RING, MAGLEV] {
        let hs = hosts(5);
        let before = assignment(&set(&policy, hs.clone()));
        hs[2].state.set(flag::EJECTED);
        // Same hosts: the table is reused, only eligibility changed.
        let first = set(&policy, hs.clone());
        let mut again = HostSet::new(hs.clone(), 500);
        assert!(again.reuse_table(&policy, &first));
        assert!(Arc::ptr_eq(
            first.table().expect("table"),
            again.table().expect("table")
        ));
        let after = assignment(&again);
        for (b, a) in before.iter().zip(&after) {
            if *b == 8002 {
                assert_ne!(*a, 8002);
            } else {
                assert_eq!(a, b, "{policy:?}: a key of a healthy host moved");
            }
        }
        // Below the panic threshold every host is used again, the ejected one included.
        for h in &hs[..3] {
            h.state.set(flag::EJECTED);
        }
        let mut panic = HostSet::new(hs.clone(), 500);
        assert!(panic.reuse_table(&policy, &again));
        assert!(panic.in_panic());
        assert_eq!(assignment(&panic), before);
    }
}

#[test]
fn previous_hosts_walk_to_the_next_host_deterministically() {
    let s = set(&RING, hosts(4));
    for k in 0..200u64 {
        let h = xxh64(&k.to_le_bytes(), 0);
        let first = s.pick_hashed(h, &[]).expect("host").addr;
        let second = s.pick_hashed(h, &[first]).expect("host").addr;
        assert_ne!(first, second);
        assert_eq!(s.pick_hashed(h, &[first]).expect("host").addr, second);
        let third = s.pick_hashed(h, &[first, second]).expect("host").addr;
        assert!(third != first && third != second);
        // Every host tried: the key's own host again.
        let all: Vec<SocketAddr> = s.hosts.iter().map(|h| h.addr).collect();
        assert_eq!(s.pick_hashed(h, &all).expect("host").addr, first);
    }
}

#[test]
fn without_a_hash_picks_spread_over_the_hosts() {
    let s = set(&RING, hosts(3));
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    let mut counts = [0usize; 3];
    for _ in 0..3000 {
        let h = s.pick(&RING, &cursor).expect("host");
        counts[usize::from(h.addr.port() - 8000)] += 1;
    }
    assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
}

fn conn() -> Conn {
    Conn {
        peer: SocketAddr::from(([192, 0, 2, 7], 40000)),
        local: SocketAddr::from(([127, 0, 0, 1], 15001)),
    }
}

fn header_policy(name: &'static str, terminal: bool) -> HashPolicy {
    HashPolicy {
        method: HashMethod::Header {
            name: HeaderName::from_static(name),
        },
        terminal,
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

#[test]
fn request_hashes_follow_envoy() {
    let c = conn();
    let p = [header_policy("x-user", false)];
    // One value: XXH64 of it.
    let got = request_hash(&p, &headers(&[("x-user", "alice")]), None, &c);
    assert_eq!(got.hash, Some(xxh64(b"alice", 0)));
    // Several: sorted, chained through the seed.
    let got = request_hash(&p, &headers(&[("x-user", "b"), ("x-user", "a")]), None, &c);
    assert_eq!(got.hash, Some(xxh64(b"b", xxh64(b"a", 0))));
    // Absent: no hash.
    assert_eq!(request_hash(&p, &HeaderMap::new(), None, &c).hash, None);

    // Two entries fold: rotate the first left by one, XOR the second.
    let two = [header_policy("x-a", false), header_policy("x-b", false)];
    let got = request_hash(&two, &headers(&[("x-a", "1"), ("x-b", "2")]), None, &c);
    assert_eq!(
        got.hash,
        Some(xxh64(b"1", 0).rotate_left(1) ^ xxh64(b"2", 0))
    );
    // `terminal` on the first stops there when it hashed, not when it did not.
    let term = [header_policy("x-a", true), header_policy("x-b", false)];
    let got = request_hash(&term, &headers(&[("x-a", "1"), ("x-b", "2")]), None, &c);
    assert_eq!(got.hash, Some(xxh64(b"1", 0)));
    let got = request_hash(&term, &headers(&[("x-b", "2")]), None, &c);
    assert_eq!(got.hash, Some(xxh64(b"2", 0)));

    // Source IP: the address without the port.
    let ip = [HashPolicy {
        method: HashMethod::SourceIp,
        terminal: false,
    }];
    let got = request_hash(&ip, &HeaderMap::new(), None, &c);
    assert_eq!(got.hash, Some(xxh64(b"192.0.2.7", 0)));

    // Query parameter: the first value, raw.
    let q = [HashPolicy {
        method: HashMethod::QueryParameter {
            name: "user".into(),
        },
        terminal: false,
    }];
    let got = request_hash(&q, &HeaderMap::new(), Some("a=1&user=bob%20x&user=c"), &c);
    assert_eq!(got.hash, Some(xxh64(b"bob%20x", 0)));
    assert_eq!(
        request_hash(&q, &HeaderMap::new(), Some("username=x"), &c).hash,
        None
    );
    assert_eq!(request_hash(&q, &HeaderMap::new(), None, &c).hash, None);
}

fn cookie_policy(ttl: Option<Duration>) -> [HashPolicy; 1] {
    [HashPolicy {
        method: HashMethod::Cookie(CookieHash {
            name: "sticky".into(),
            ttl,
            path: Some("/".into()),
            attributes: vec![
                ("SameSite".into(), "Lax".into()),
                ("Secure".into(), "".into()),
            ],
        }),
        terminal: false,
    }]
}

#[test]
fn cookies_are_read_or_generated_with_their_ttl() {
    let c = conn();
    let p = cookie_policy(Some(Duration::from_secs(3600)));
    // Present (quoted or not): its value is hashed, nothing is set.
    for raw in ["a=1; sticky=\"abc\"", "sticky=abc", "x=y;sticky=abc"] {
        let h = headers(&[("cookie", raw)]);
        let got = request_hash(&p, &h, None, &c);
        assert_eq!(got.hash, Some(xxh64(b"abc", 0)), "{raw}");
        assert!(got.set_cookie.is_none());
    }
    // Absent with a ttl: generated from the connection, returned, and hashed as the
    // client will send it back.
    let got = request_hash(&p, &headers(&[("cookie", "other=1")]), None, &c);
    let set = got.set_cookie.expect("set-cookie");
    let set = set.to_str().expect("ascii");
    let value = format!("{:016x}", xxh64(b"192.0.2.7:40000127.0.0.1:15001", 0));
    assert_eq!(
        set,
        format!("sticky=\"{value}\"; Max-Age=3600; Path=/; SameSite=Lax; Secure; HttpOnly")
    );
    assert_eq!(got.hash, Some(xxh64(value.as_bytes(), 0)));
    let back = format!("sticky=\"{value}\"");
    let h = HeaderMap::from_iter([(
        http::header::COOKIE,
        HeaderValue::from_str(&back).expect("value"),
    )]);
    assert_eq!(request_hash(&p, &h, None, &c).hash, got.hash);
    // A zero ttl makes a session cookie; no ttl makes none and yields no hash.
    let s = request_hash(
        &cookie_policy(Some(Duration::ZERO)),
        &HeaderMap::new(),
        None,
        &c,
    );
    assert!(
        !s.set_cookie
            .expect("set-cookie")
            .to_str()
            .expect("ascii")
            .contains("Max-Age")
    );
    let none = request_hash(&cookie_policy(None), &HeaderMap::new(), None, &c);
    assert_eq!((none.hash, none.set_cookie), (None, None));
}
