//! The etcd harness itself (tests/src/etcd.rs): a real three-member cluster comes up on
//! loopback ports, replicates a write, and survives its leader being frozen.

use std::time::{Duration, Instant};

use legate_tests::etcd::{EtcdCluster, MemberState};

/// Bound on a new election once the leader is frozen: a few election timeouts.
const ELECTION_BOUND: Duration = Duration::from_secs(15);

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `check` every 50 ms until it returns `Ok`, for at most `timeout`.
fn until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: still not true after {timeout:?}; last observation: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn three_members_replicate_and_elect_a_new_leader_when_one_freezes() {
    let mut etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(etcd.url(), format!("etcd://{}", endpoints.join(",")));
    for endpoint in &endpoints {
        let port: u16 = endpoint
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not 127.0.0.1:PORT: {endpoint}"));
        assert!(
            port != 2379 && port != 2380,
            "etcd's default ports are never used: {endpoint}"
        );
    }

    // A write through one member reads back, with its revisions, through another.
    let put = etcd.etcdctl_at(&endpoints[..1], &["put", "harness/a", "one"]);
    assert!(put.status.success(), "{put:?}");
    let got = etcd.etcdctl_at(&endpoints[2..], &["get", "harness/a", "--print-value-only"]);
    assert_eq!(stdout(&got).trim(), "one", "{got:?}");
    let kvs = etcd.get_prefix_json("harness/");
    assert_eq!(kvs.len(), 1, "{kvs:?}");
    assert_eq!(kvs[0].key, "harness/a");
    assert_eq!(kvs[0].value, b"one");
    assert_eq!(kvs[0].mod_revision, kvs[0].create_revision);
    assert!(kvs[0].mod_revision > 0, "{kvs:?}");
    assert_eq!(kvs[0].lease, 0);
    // A key on a lease reports the lease's id (etcdctl prints it in hex when granting).
    let granted = etcd.etcdctl_ok(&["lease", "grant", "60"]);
    let lease_hex = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected `lease grant` output: {granted}"));
    let lease = i64::from_str_radix(lease_hex, 16).expect("hex lease id");
    etcd.etcdctl_ok(&["put", "--lease", lease_hex, "leased/x", "held"]);
    let leased = etcd.get_prefix_json("leased/");
    assert_eq!(leased.len(), 1, "{leased:?}");
    assert_eq!(
        (leased[0].lease, leased[0].value.as_slice()),
        (lease, &b"held"[..])
    );

    // Freeze the leader: the other two elect one of themselves and take writes.
    let leader = etcd.wait_for_leader(ELECTION_BOUND);
    let pid = etcd.member_pid(leader);
    etcd.stop_member(leader);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
    assert_eq!(state, Some('T'), "SIGSTOP froze the member: {stat}");
    let started = Instant::now();
    let new_leader = etcd.wait_for_leader(ELECTION_BOUND);
    assert_ne!(new_leader, leader);
    let live: Vec<String> = (0..3)
        .filter(|&i| etcd.member_state(i) == MemberState::Running)
        .map(|i| etcd.endpoint(i))
        .collect();
    assert_eq!(live.len(), 2);
    until(ELECTION_BOUND, "a write without the frozen member", || {
        let put = etcd.etcdctl_at(&live, &["put", "harness/b", "two"]);
        if put.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&put.stderr).into_owned())
        }
    });
    eprintln!(
        "member {leader} frozen; member {new_leader} leads and took a write after {:?}",
        started.elapsed()
    );
    let kvs = etcd.get_prefix_json("harness/");
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["harness/a", "harness/b"]);
    assert!(kvs[1].mod_revision > kvs[0].mod_revision, "{kvs:?}");

    // Thawed, the old leader catches up: it serves the write it missed.
    etcd.cont_member(leader);
    let own = [etcd.endpoint(leader)];
    until(ELECTION_BOUND, "the thawed member catches up", || {
        let got = etcd.etcdctl_at(&own, &["get", "harness/b", "--print-value-only"]);
        match stdout(&got).trim() {
            "two" => Ok(()),
            other => Err(format!(
                "{other:?} {}",
                String::from_utf8_lossy(&got.stderr)
            )),
        }
    });
    let all = etcd.wait_for_leader(ELECTION_BOUND);
    assert_eq!(etcd.member_state(all), MemberState::Running);

    // Killed and restarted on its data directory, a member still holds the keys.
    etcd.kill_member(leader);
    assert_eq!(etcd.member_state(leader), MemberState::Down);
    etcd.restart_member(leader);
    let got = etcd.etcdctl_at(&own, &["get", "harness/a", "--print-value-only"]);
    assert_eq!(stdout(&got).trim(), "one", "{got:?}");

    // Dropping the handle ends its members, and only them.
    let pids: Vec<u32> = (0..3).map(|i| etcd.member_pid(i)).collect();
    let dir = etcd.dir().to_path_buf();
    drop(etcd);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "etcd pid {pid} outlived its handle"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
