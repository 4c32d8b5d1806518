//! Consistent hashing end to end: RING_HASH and MAGLEV clusters with a route `hash_policy`
//! (header, cookie with a generated cookie, source IP, query parameter, `terminal`), a host
//! removed by an xDS push, and retries with `previous_hosts`. Real `legate` on the test ADS
//! server, real demo upstreams; who answered is the demo's `x-upstream` header.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, LbPolicy, RingHashLbConfig};
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt64Value};
use legate_snapshot::Resources;
use legate_tests::config::cluster;
use legate_tests::resilience::{
    Rig, SVC, cluster_mut, control, retry, retry_other_hosts, route_action, set_endpoint_health,
    svc_mesh_with,
};
use legate_tests::{HttpClient, Protocol, Upstream};
use serde_json::json;

async fn upstreams(n: usize) -> Vec<Upstream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(Upstream::start(&format!("u{i}"), "v1", Protocol::Http1).await);
    }
    out
}

fn addrs(ups: &[Upstream]) -> Vec<SocketAddr> {
    ups.iter().map(Upstream::addr).collect()
}

/// `svc` over `endpoints` with `policy` (ring hash with a small ring, or Maglev), and the
/// route hashing by `hash_policy`.
fn hashed(endpoints: &[SocketAddr], policy: LbPolicy, hash_policy: Vec<HashPolicy>) -> Resources {
    let mut res = svc_mesh_with(cluster(SVC, endpoints));
    let c = cluster_mut(&mut res, SVC);
    c.lb_policy = policy as i32;
    c.lb_config = match policy {
        LbPolicy::RingHash => Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 256 }),
            ..Default::default()
        })),
        _ => None,
    };
    route_action(&mut res).hash_policy = hash_policy;
    res
}

fn on(spec: PolicySpecifier, terminal: bool) -> HashPolicy {
    HashPolicy {
        terminal,
        policy_specifier: Some(spec),
    }
}

fn header(name: &str) -> PolicySpecifier {
    PolicySpecifier::Header(Header {
        header_name: name.to_owned(),
        regex_rewrite: None,
    })
}

/// Who answered `GET path` with `headers`; panics on anything but a 200.
async fn who(rig: &Rig, path: &str, headers: &[(&str, &str)]) -> String {
    let r = HttpClient::http1()
        .request(
            "GET",
            &rig.url(path),
            headers,
            legate_tests::client::empty(),
        )
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.describe(), rig.describe());
    r.upstream().expect("x-upstream").to_owned()
}

/// The upstream each of `keys` lands on by header `x-user`, asked `rounds` times each;
/// panics when one key is answered by two upstreams.
async fn by_user(
    rig: &Rig,
    keys: impl Iterator<Item = String>,
    rounds: usize,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for key in keys {
        let mut seen = BTreeSet::new();
        for _ in 0..rounds {
            seen.insert(who(rig, "/", &[("x-user", &key)]).await);
        }
        assert_eq!(seen.len(), 1, "key {key} was answered by {seen:?}");
        out.insert(key, seen.pop_first().expect("one"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_query_and_source_ip_keys_stick_to_one_host() {
    let ups = upstreams(4).await;
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let rig = Rig::start(&hashed(
            &addrs(&ups),
            policy,
            vec![on(header("x-user"), false)],
        ))
        .await;
        // Each key always reaches the same host, and the keys spread over the hosts.
        let map = by_user(&rig, (0..40).map(|i| format!("user-{i}")), 4).await;
        let used: BTreeSet<&String> = map.values().collect();
        assert!(used.len() >= 3, "{policy:?}: 40 keys used only {used:?}");
        // No key: a random point of the ring, so several hosts.
        let mut unkeyed = BTreeSet::new();
        for _ in 0..40 {
            unkeyed.insert(who(&rig, "/", &[]).await);
        }
        assert!(
            unkeyed.len() >= 2,
            "{policy:?}: requests without a key: {unkeyed:?}"
        );

        // Query parameter.
        rig.apply(&hashed(
            &addrs(&ups),
            policy,
            vec![on(
                PolicySpecifier::QueryParameter(QueryParameter {
                    name: "user".to_owned(),
                }),
                false,
            )],
        ))
        .await;
        let mut hosts_of_keys = BTreeSet::new();
        for i in 0..20 {
            let mut seen = BTreeSet::new();
            for _ in 0..3 {
                seen.insert(who(&rig, &format!("/?a=1&user=q{i}"), &[]).await);
            }
            assert_eq!(seen.len(), 1, "{policy:?}: query key q{i}: {seen:?}");
            hosts_of_keys.extend(seen);
        }
        assert!(hosts_of_keys.len() >= 2, "{policy:?}: {hosts_of_keys:?}");

        // Source IP: every test request comes from 127.0.0.1, so one host for all.
        rig.apply(&hashed(
            &addrs(&ups),
            policy,
            vec![on(
                PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
                false,
            )],
        ))
        .await;
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            seen.insert(who(&rig, "/", &[]).await);
        }
        assert_eq!(seen.len(), 1, "{policy:?}: source IP 127.0.0.1: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_stops_at_the_first_policy_that_hashes() {
    let ups = upstreams(4).await;
    let policies = |terminal| vec![on(header("x-a"), terminal), on(header("x-b"), false)];
    let rig = Rig::start(&hashed(&addrs(&ups), LbPolicy::RingHash, policies(true))).await;
    // x-a is terminal: x-b does not matter when x-a is there.
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        seen.insert(who(&rig, "/", &[("x-a", "one"), ("x-b", &format!("b{i}"))]).await);
    }
    assert_eq!(seen.len(), 1, "terminal x-a: {seen:?}");
    // Without x-a, x-b decides.
    let mut by_b = BTreeSet::new();
    for i in 0..30 {
        by_b.insert(who(&rig, "/", &[("x-b", &format!("b{i}"))]).await);
    }
    assert!(by_b.len() >= 2, "x-b alone: {by_b:?}");
    // Not terminal: both are folded into the hash, so x-b moves requests again.
    rig.apply(&hashed(&addrs(&ups), LbPolicy::RingHash, policies(false)))
        .await;
    let mut both = BTreeSet::new();
    for i in 0..30 {
        both.insert(who(&rig, "/", &[("x-a", "one"), ("x-b", &format!("b{i}"))]).await);
    }
    assert!(both.len() >= 2, "x-a and x-b folded: {both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_cookie_carries_its_ttl_and_keeps_the_client_on_its_host() {
    let ups = upstreams(4).await;
    let cookie = |ttl: Option<i64>| {
        vec![on(
            PolicySpecifier::Cookie(Cookie {
                name: "sticky".to_owned(),
                ttl: ttl.map(|seconds| PbDuration { seconds, nanos: 0 }),
                path: "/".to_owned(),
                attributes: Vec::new(),
            }),
            false,
        )]
    };
    let rig = Rig::start(&hashed(
        &addrs(&ups),
        LbPolicy::RingHash,
        cookie(Some(3600)),
    ))
    .await;
    let mut hosts = BTreeSet::new();
    for _ in 0..8 {
        // A client without the cookie is given one (a new connection each time, so a new
        // value) ...
        let first = HttpClient::http1().get(&rig.url("/")).await;
        assert_eq!(first.status, 200, "{}", first.describe());
        let set = first.header("set-cookie").expect("set-cookie").to_owned();
        let (pair, attrs) = set.split_once("; ").expect("attributes");
        assert_eq!(attrs, "Max-Age=3600; Path=/; HttpOnly", "{set}");
        let host = first.upstream().expect("x-upstream").to_owned();
        // ... and sending it back keeps it on the host that answered the first request.
        for _ in 0..5 {
            assert_eq!(who(&rig, "/", &[("cookie", pair)]).await, host, "{pair}");
        }
        let again = HttpClient::http1()
            .request(
                "GET",
                &rig.url("/"),
                &[("cookie", pair)],
                legate_tests::client::empty(),
            )
            .await;
        assert!(again.header("set-cookie").is_none(), "{}", again.describe());
        hosts.insert(host);
    }
    assert!(hosts.len() >= 2, "eight clients all on {hosts:?}");
    // Without a ttl nothing is generated, and a request without the cookie has no hash.
    rig.apply(&hashed(&addrs(&ups), LbPolicy::RingHash, cookie(None)))
        .await;
    let r = HttpClient::http1().get(&rig.url("/")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.header("set-cookie").is_none(), "{}", r.describe());
}

/// Removing one of five hosts by an xDS push moves exactly the keys it had (about 1/5) and
/// no other; adding it back returns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_host_by_xds_moves_only_its_keys() {
    let ups = upstreams(5).await;
    let all = addrs(&ups);
    let policy = vec![on(header("x-user"), false)];
    let rig = Rig::start(&hashed(&all, LbPolicy::RingHash, policy.clone())).await;
    const KEYS: usize = 300;
    let keys = || (0..KEYS).map(|i| format!("k{i}"));
    let before = by_user(&rig, keys(), 1).await;
    let gone = ups[2].name().to_owned();
    let owned = before.values().filter(|h| **h == gone).count();
    assert!(
        (KEYS / 10..KEYS * 3 / 10).contains(&owned),
        "{gone} owns {owned} of {KEYS} keys"
    );

    let mut fewer = all.clone();
    fewer.remove(2);
    rig.apply(&hashed(&fewer, LbPolicy::RingHash, policy.clone()))
        .await;
    let after = by_user(&rig, keys(), 1).await;
    let mut moved = 0;
    for (k, h) in &before {
        if *h == gone {
            assert_ne!(after[k], gone);
            moved += 1;
        } else {
            assert_eq!(after[k], *h, "key {k} moved from a host that stayed");
        }
    }
    assert_eq!(moved, owned);

    rig.apply(&hashed(&all, LbPolicy::RingHash, policy)).await;
    assert_eq!(
        by_user(&rig, keys(), 1).await,
        before,
        "the host's keys come back"
    );
}

/// A host EDS marks unhealthy is walked past on the table: its keys go to other hosts, no
/// other key moves, and they come back when it is healthy again (RING_HASH and MAGLEV).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_host_gives_up_only_its_own_keys() {
    let ups = upstreams(5).await;
    let policy = vec![on(header("x-user"), false)];
    for lb in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let healthy = hashed(&addrs(&ups), lb, policy.clone());
        let rig = Rig::start(&healthy).await;
        let keys = || (0..200).map(|i| format!("k{i}"));
        let before = by_user(&rig, keys(), 1).await;
        let sick = ups[1].name().to_owned();
        assert!(
            before.values().any(|h| *h == sick),
            "{lb:?}: no key on {sick}"
        );
        let mut res = healthy.clone();
        set_endpoint_health(&mut res, SVC, 1, HealthStatus::Unhealthy);
        rig.apply(&res).await;
        let after = by_user(&rig, keys(), 1).await;
        for (k, h) in &before {
            if *h == sick {
                assert_ne!(
                    after[k], sick,
                    "{lb:?}: key {k} still on the unhealthy host"
                );
            } else {
                assert_eq!(after[k], *h, "{lb:?}: key {k} moved from a healthy host");
            }
        }
        rig.apply(&healthy).await;
        assert_eq!(
            by_user(&rig, keys(), 1).await,
            before,
            "{lb:?}: keys come back"
        );
    }
}

/// A retry with `previous_hosts` goes to another host, always the same one for a key (the
/// next on the ring); without the predicate the retry hashes to the failing host again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_hosts_retry_walks_to_the_next_host_on_the_ring() {
    let ups = upstreams(3).await;
    let policy = vec![on(header("x-user"), false)];
    let mut res = hashed(&addrs(&ups), LbPolicy::RingHash, policy.clone());
    route_action(&mut res).retry_policy = Some(retry_other_hosts("5xx", 1));
    let rig = Rig::start(&res).await;
    let map = by_user(&rig, (0..30).map(|i| format!("user-{i}")), 1).await;
    let failing = ups[0].name().to_owned();
    let keys: Vec<&String> = map
        .iter()
        .filter(|(_, h)| **h == failing)
        .map(|(k, _)| k)
        .collect();
    assert!(!keys.is_empty(), "no key on {failing}: {map:?}");
    control(&ups[0], json!({"fail_ratio": 1.0})).await;
    for k in &keys {
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            seen.insert(who(&rig, "/", &[("x-user", k)]).await);
        }
        assert_eq!(seen.len(), 1, "retries of {k} went to {seen:?}");
        assert!(!seen.contains(&failing));
    }
    // Keys of hosts that work never retry, and stay where they were.
    for (k, h) in map.iter().filter(|(_, h)| **h != failing) {
        assert_eq!(who(&rig, "/", &[("x-user", k)]).await, *h);
    }
    assert_eq!(
        rig.retries().await,
        keys.len() as u64 * 4,
        "one retry per request of a failing key"
    );

    // Plain retries: the same hash, the same failing host, so the 503 comes back.
    route_action(&mut res).retry_policy = Some(retry("5xx", 1));
    rig.apply(&res).await;
    let r = HttpClient::http1()
        .request(
            "GET",
            &rig.url("/"),
            &[("x-user", keys[0])],
            legate_tests::client::empty(),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.upstream(), Some(failing.as_str()));
}
