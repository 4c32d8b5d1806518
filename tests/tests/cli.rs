//! The `legate` command line: `--validate` and flags overriding the bootstrap file.

use std::time::Duration;

use legate_tests::config::{cluster, forward_all};
use legate_tests::process::TempDir;
use legate_tests::{Legate, Protocol, Upstream, run_legate};

const VALIDATE_TIMEOUT: Duration = Duration::from_secs(20);

/// A valid bootstrap in block style, so line and column numbers below are easy to read.
/// Line numbers are 1-based; see the `lines` helper below.
const GOOD: &str = r#"node: {id: test, cluster: tests}
admin: {address: 127.0.0.1:0}
drain_timeout: 5s
mesh:
  listeners:
    - {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}
  route_configs:
    - name: outbound
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {prefix: /}
              forward:
                cluster: payments
  clusters:
    - name: payments
      discovery: static
      lb_policy: round_robin
      protocol: http1
      connect_timeout: 1s
      endpoints:
        - {address: "127.0.0.1:8081", weight: 1}
"#;

/// The 1-based line `n` of `text`, asserted to be `expected` so the expectations below cannot
/// silently drift from the YAML.
#[track_caller]
fn assert_line(text: &str, n: usize, expected: &str) {
    assert_eq!(
        text.lines().nth(n - 1),
        Some(expected),
        "line {n} of the test YAML"
    );
}

#[test]
fn validate_accepts_a_good_file() {
    let dir = TempDir::new("legate-cli");
    let path = dir.write("good.yaml", GOOD);
    let path = path.to_string_lossy();
    let out = run_legate(&["--validate", "--config", &path], VALIDATE_TIMEOUT);
    assert!(
        out.status.success(),
        "--validate rejected a good file ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

#[test]
fn validate_reports_an_unknown_field_with_its_position() {
    let bad = GOOD.replace(
        "      lb_policy: round_robin",
        "      lb_polcy: round_robin",
    );
    assert_line(&bad, 19, "      lb_polcy: round_robin");
    let dir = TempDir::new("legate-cli");
    let path = dir.write("unknown-field.yaml", &bad);
    let path = path.to_string_lossy();
    let out = run_legate(&["--validate", "--config", &path], VALIDATE_TIMEOUT);
    assert!(
        !out.status.success(),
        "--validate accepted an unknown field; stderr:\n{}",
        out.stderr
    );
    // Line 19, column 7: where the unknown key starts (1-based, as serde_yaml reports it).
    let expected = format!("{path}:19:7: mesh.clusters[0].lb_polcy: ");
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&expected)),
        "expected a stderr line starting with {expected:?}; stderr was:\n{}",
        out.stderr
    );
}

#[test]
fn validate_reports_an_unknown_cluster_with_its_position() {
    let bad = GOOD.replace(
        "                cluster: payments",
        "                cluster: nope",
    );
    assert_line(&bad, 15, "                cluster: nope");
    let dir = TempDir::new("legate-cli");
    let path = dir.write("unknown-cluster.yaml", &bad);
    let path = path.to_string_lossy();
    let out = run_legate(&["--validate", "--config", &path], VALIDATE_TIMEOUT);
    assert!(
        !out.status.success(),
        "--validate accepted a route to an unknown cluster; stderr:\n{}",
        out.stderr
    );
    // Line 15, column 26: where the offending value `nope` starts.
    let expected =
        format!("{path}:15:26: mesh.route_configs[0].virtual_hosts[0].routes[0].forward.cluster: ");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&expected))
        .unwrap_or_else(|| {
            panic!(
                "expected a stderr line starting with {expected:?}; stderr was:\n{}",
                out.stderr
            )
        });
    assert!(
        line.contains("nope"),
        "the message should name the cluster: {line}"
    );
}

#[test]
fn validate_reports_a_missing_file() {
    let dir = TempDir::new("legate-cli");
    let missing = dir.path().join("does-not-exist.yaml");
    let missing = missing.to_string_lossy();
    let out = run_legate(&["--validate", "--config", &missing], VALIDATE_TIMEOUT);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(missing.as_ref()),
        "the error should name the file; stderr:\n{}",
        out.stderr
    );
}

#[tokio::test]
async fn flags_override_the_file() {
    let a = Upstream::start("a", "v1", Protocol::Auto).await;
    // The file's admin address is taken (we hold it), so legate can only start if the
    // --admin-address flag (127.0.0.1:0, passed by the harness) wins.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("local addr");
    let yaml = forward_all(cluster("a", &[a.addr()])).replace(
        "admin: {address: 127.0.0.1:0}",
        &format!("admin: {{address: {taken_addr}}}"),
    );
    assert!(yaml.contains(&taken_addr.to_string()));
    let legate = Legate::start_with_args(
        &yaml,
        &[
            "--node-id",
            "override-id",
            "--node-cluster",
            "override-cluster",
        ],
    )
    .await;
    assert_ne!(legate.admin_addr(), taken_addr);
    let dump = legate.admin_json("/legate_internal").await;
    assert_eq!(dump["node"]["id"], "override-id", "{dump:#}");
    assert_eq!(dump["node"]["cluster"], "override-cluster", "{dump:#}");
    drop(taken);
}

/// `legate ARGS` must fail (exit non-zero, within the timeout) with one stderr line that
/// contains every one of `wanted`; returns the whole stderr.
#[track_caller]
fn refused(args: &[&str], wanted: &[&str]) -> String {
    let out = run_legate(args, VALIDATE_TIMEOUT);
    assert!(
        !out.status.success(),
        "`legate {}` succeeded; stdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| wanted.iter().all(|w| l.contains(w))),
        "`legate {}`: expected a stderr line with all of {wanted:?}; stderr was:\n{}",
        args.join(" "),
        out.stderr
    );
    out.stderr
}

/// A bootstrap with neither a listener nor a control plane would run serving nothing while
/// `/ready` said 200: `--validate` and a start both refuse it, saying what is missing.
#[test]
fn a_bootstrap_with_nothing_to_serve_is_refused() {
    let dir = TempDir::new("legate-cli");
    let clusters_only = GOOD
        .split_once("  listeners:")
        .map(|(head, _)| head.to_owned())
        .unwrap_or_default()
        + GOOD
            .split_once("  clusters:")
            .map(|(_, tail)| format!("  clusters:{tail}"))
            .unwrap_or_default()
            .as_str();
    assert!(clusters_only.contains("clusters:") && !clusters_only.contains("listeners"));
    for (name, yaml) in [
        (
            "node-only.yaml",
            "node: {id: test, cluster: tests}\n".to_owned(),
        ),
        (
            "empty-mesh.yaml",
            "admin: {address: 127.0.0.1:0}\nmesh: {}\n".to_owned(),
        ),
        ("clusters-only.yaml", clusters_only),
    ] {
        let path = dir.write(name, &yaml);
        let path = path.to_string_lossy();
        let wanted = [
            "nothing to serve",
            path.as_ref(),
            "has no listeners",
            "no control plane (xds.servers or --xds-server)",
        ];
        refused(&["--validate", "--config", &path], &wanted);
        // Started for real, it exits at once with the same message instead of running.
        refused(
            &["--config", &path, "--admin-address", "127.0.0.1:0"],
            &wanted,
        );
    }
}

/// A static listener on the admin server's address (the same one, or a wildcard covering it)
/// is refused by `--validate` and at start, naming the listener, both addresses and where the
/// admin address was set, at the listener's line in the file.
#[test]
fn a_listener_on_the_admin_address_is_refused() {
    let dir = TempDir::new("legate-cli");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let on = |listener: &str, admin: Option<&str>| {
        let yaml = GOOD.replace(
            "address: 127.0.0.1:0, protocol",
            &format!("address: {listener}, protocol"),
        );
        match admin {
            Some(admin) => yaml.replace(
                "admin: {address: 127.0.0.1:0}",
                &format!("admin: {{address: {admin}}}"),
            ),
            None => yaml.replace("admin: {address: 127.0.0.1:0}\n", ""),
        }
    };
    let same = format!("127.0.0.1:{port}");
    let wildcard = format!("0.0.0.0:{port}");

    // The same address, both in the file.
    let path = dir.write("same.yaml", &on(&same, Some(&same)));
    let path = path.to_string_lossy();
    let wanted = [
        &format!("{path}:6:") as &str,
        "mesh.listeners[0].address",
        &format!(
            "listener 'outbound' on {same} clashes with the admin address {same} (admin.address)"
        ),
    ];
    refused(&["--validate", "--config", &path], &wanted);
    // At start it is refused before anything binds: no OS error.
    let stderr = refused(&["--config", &path], &wanted);
    assert!(!stderr.contains("os error"), "{stderr}");

    // A wildcard listener covers the admin address given by the flag.
    let path = dir.write("wildcard.yaml", &on(&wildcard, None));
    let path = path.to_string_lossy();
    refused(
        &["--validate", "--config", &path, "--admin-address", &same],
        &[&format!(
            "listener 'outbound' on {wildcard} clashes with the admin address {same} (--admin-address)"
        )],
    );
    // The default admin address (127.0.0.1:15000) is named as the default.
    let path = dir.write("default.yaml", &on("0.0.0.0:15000", None));
    let path = path.to_string_lossy();
    refused(
        &["--validate", "--config", &path],
        &["clashes with the admin address 127.0.0.1:15000 (the default"],
    );

    // Another address on the same port does not clash.
    let path = dir.write("other.yaml", &on(&format!("127.0.0.2:{port}"), Some(&same)));
    let path = path.to_string_lossy();
    let out = run_legate(&["--validate", "--config", &path], VALIDATE_TIMEOUT);
    assert!(out.status.success(), "{}", out.stderr);
}

/// A listener whose port another socket holds fails the start with the OS error printed
/// once, naming the listener and its address.
#[test]
fn a_bind_error_is_printed_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local addr");
    let dir = TempDir::new("legate-cli");
    let yaml = GOOD.replace(
        "address: 127.0.0.1:0, protocol",
        &format!("address: {addr}, protocol"),
    );
    let path = dir.write("taken.yaml", &yaml);
    let path = path.to_string_lossy();
    let stderr = refused(
        &["--config", &path, "--admin-address", "127.0.0.1:0"],
        &[&format!("listener 'outbound': cannot bind {addr}: ")],
    );
    assert_eq!(
        stderr.matches("os error").count(),
        1,
        "the OS error once; stderr:\n{stderr}"
    );
    drop(taken);
}
