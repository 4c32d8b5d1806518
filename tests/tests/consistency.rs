//! The three binaries agree with each other and with the README (issue 14, item 12): every
//! flag documented, one address-file format, one mesh format for `--validate`, one wording
//! for a bad duration or weight wherever it is written, and logs that are plain text on a
//! pipe or JSON on request.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use legate_tests::client::full;
use legate_tests::cp::{ControlPlane, bin};
use legate_tests::process::{TempDir, legate_bin};

/// How long a command that only parses and validates may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to write its address file.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn workspace_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A finished command: exit status, stdout, stderr.
struct Ran {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn read_on_thread(reader: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut reader) = reader {
            let _ = reader.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Wait for `child` to exit within `timeout` (killed by its PID otherwise, and the test
/// fails).
fn finish(mut child: Child, what: &str, timeout: Duration) -> Ran {
    let stdout = read_on_thread(child.stdout.take());
    let stderr = read_on_thread(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        ok: status.success(),
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A command with stdout and stderr as pipes and no NO_COLOR, so colour decisions are the
/// binary's own (the harness's spawner sets NO_COLOR; these tests must not).
fn command(program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("LEGATE_CP_TOKEN")
        .env_remove("LEGATE_CP_TOKEN_FILE")
        .env_remove("LEGATE_CP_ADMIN")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(program: &Path, args: &[&str]) -> Ran {
    let child = command(program, args).spawn().expect("spawn");
    finish(
        child,
        &format!("{} {}", program.display(), args.join(" ")),
        RUN_TIMEOUT,
    )
}

/// Start a server writing `address_file`, wait until the file names `name`, then stop it
/// (by its PID) and return the file's text and everything it wrote to stderr.
fn run_until_listening(program: &Path, args: &[&str], address_file: &Path) -> (String, String) {
    let mut child = command(program, args).spawn().expect("spawn");
    let stderr = read_on_thread(child.stderr.take());
    let stdout = read_on_thread(child.stdout.take());
    let deadline = Instant::now() + START_TIMEOUT;
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(address_file)
            && !text.is_empty()
        {
            break text;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "{} exited ({status}) before writing {}:\n{}",
                program.display(),
                address_file.display(),
                stderr.join().unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not write {} within {START_TIMEOUT:?}:\n{}",
                program.display(),
                address_file.display(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = stdout.join();
    (text, stderr.join().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// README flag tables

/// The long flags `--help` lists (without --help and --version).
fn help_flags(program: &Path, args: &[&str]) -> BTreeSet<String> {
    let out = run(program, args);
    assert!(
        out.ok,
        "{} {args:?} failed:\n{}",
        program.display(),
        out.stderr
    );
    out.stdout
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = match line.strip_prefix('-') {
                // `-c, --config <FILE>`
                Some(rest) if !rest.starts_with('-') => rest.split_once(", ")?.1,
                Some(_) => line,
                None => return None,
            };
            let flag: String = line
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Some(format!("--{flag}"))
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// The `--flags` named in the first column of the table that follows the line containing
/// `marker` in `text`.
fn table_flags(text: &str, marker: &str) -> BTreeSet<String> {
    let start = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line containing {marker:?}"));
    let rows: Vec<&str> = text
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() > 2, "no table after {marker:?}");
    let mut flags = BTreeSet::new();
    for row in rows {
        let first = row.split('|').nth(1).unwrap_or_default();
        let mut rest = first;
        while let Some(i) = rest.find("--") {
            let flag: String = rest[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag.starts_with(|c: char| c.is_ascii_lowercase()) {
                flags.insert(format!("--{flag}"));
            }
            rest = &rest[i + 2..];
        }
    }
    flags
}

#[track_caller]
fn same_flags(binary: &str, help: &BTreeSet<String>, documented: &BTreeSet<String>) {
    let missing: Vec<_> = help.difference(documented).collect();
    let stale: Vec<_> = documented.difference(help).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{binary}: flags in --help but not in README's table: {missing:?}; in the table but \
         not in --help: {stale:?}"
    );
}

#[test]
fn readme_flag_tables_list_every_flag_of_every_binary() {
    let readme = workspace_file("README.md");
    same_flags(
        "legate",
        &help_flags(&legate_bin(), &["--help"]),
        &table_flags(&readme, "legate's flags"),
    );
    same_flags(
        "legate-cp",
        &help_flags(&bin("legate-cp"), &["--help"]),
        &table_flags(&readme, "legate-cp's flags"),
    );
    // legatectl's flags are global: the top-level help lists them.
    same_flags(
        "legatectl",
        &help_flags(&bin("legatectl"), &["--help"]),
        &table_flags(&readme, "legatectl's flags"),
    );
    // The detailed xDS limits table in control-plane/README.md names real flags too.
    let cp_help = help_flags(&bin("legate-cp"), &["--help"]);
    let cp_readme = table_flags(&workspace_file("control-plane/README.md"), "| flag |");
    let stale: Vec<_> = cp_readme.difference(&cp_help).collect();
    assert!(stale.is_empty(), "control-plane/README.md names {stale:?}");
}

#[test]
fn the_three_binaries_share_the_logging_flags_and_their_help() {
    // The same words in all three, since one definition serves them.
    let help = |program: &Path| {
        let out = run(program, &["--help"]);
        let text = out.stdout;
        let start = text.find("--log-level").expect("--log-level in help");
        let end = text[start..]
            .find("--log-format")
            .map_or(text.len(), |i| start + i);
        text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let legate = help(&legate_bin());
    assert!(legate.contains("RUST_LOG"), "{legate}");
    assert_eq!(help(&bin("legate-cp")), legate);
    assert_eq!(help(&bin("legatectl")), legate);
}

// ---------------------------------------------------------------------------------------
// Address files

const STATIC_MESH: &str = "\
listeners: [{name: out, address: '127.0.0.1:0', route_config: rc}]
route_configs:
  - name: rc
    virtual_hosts: [{name: all, domains: ['*'], routes: [{forward: {cluster: web}}]}]
clusters: [{name: web, endpoints: [{address: '127.0.0.1:9'}]}]
";

/// The contents of `path` once it is written (non-empty), within [`START_TIMEOUT`].
fn poll_file(path: &Path) -> String {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written within {START_TIMEOUT:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn address(text: &str, name: &str) -> SocketAddr {
    legate_tests::process::address_in_file(text, name)
        .unwrap_or_else(|| panic!("no {name}=ADDR line in {text:?}"))
}

#[test]
fn legate_and_legate_cp_write_the_same_address_file_format() {
    let dir = TempDir::new("consistency-addr");
    let mesh = dir.write("mesh.yaml", STATIC_MESH);
    let mesh = mesh.to_string_lossy();

    let file = dir.path().join("legate.addr");
    let envoy_style = dir.path().join("legate.envoy-addr");
    let args = [
        "--config",
        &mesh,
        "--admin-address",
        "127.0.0.1:0",
        "--address-file",
        &file.to_string_lossy(),
        "--admin-address-path",
        &envoy_style.to_string_lossy(),
    ];
    let (text, _) = run_until_listening(&legate_bin(), &args, &file);
    // One `admin=ADDR` line, nothing else.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text:?}");
    assert!(lines[0].starts_with("admin=127.0.0.1:"), "{text:?}");
    let admin = address(&text, "admin");
    assert_ne!(admin.port(), 0);
    // Envoy's flag keeps Envoy's format: the bare address (written just before or after).
    let bare = poll_file(&envoy_style);
    assert_eq!(
        bare.trim().parse::<SocketAddr>().ok(),
        Some(admin),
        "{bare:?}"
    );

    let cp_file = dir.path().join("cp.addr");
    let data = dir.path().join("cp-data");
    let args = [
        "--config",
        &mesh,
        "--data-dir",
        &data.to_string_lossy(),
        "--xds-address",
        "127.0.0.1:0",
        "--admin-address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
        "--address-file",
        &cp_file.to_string_lossy(),
    ];
    let mut child = command(&bin("legate-cp"), &args).spawn().expect("spawn");
    let _stderr = read_on_thread(child.stderr.take());
    let text = poll_file(&cp_file);
    let names: Vec<String> = legate_telemetry::cli::parse_address_file(&text)
        .expect("NAME=ADDR lines")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["xds", "admin", "metrics"], "{text:?}");
    let (xds, admin, metrics) = (
        address(&text, "xds"),
        address(&text, "admin"),
        address(&text, "metrics"),
    );
    assert!(
        answers(xds) && answers(admin) && answers(metrics),
        "{text:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------
// Logs

/// A colour escape sequence.
const ESC: &str = "\x1b[";

#[tokio::test(flavor = "multi_thread")]
async fn logs_on_a_pipe_have_no_colour_and_json_logs_parse() {
    let dir = TempDir::new("consistency-logs");
    let mesh = dir.write("mesh.yaml", STATIC_MESH);
    let mesh = mesh.to_string_lossy().into_owned();

    // legate: text, then JSON.
    for format in ["text", "json"] {
        let file = dir.path().join(format!("legate-{format}.addr"));
        let args = [
            "--config",
            &mesh,
            "--admin-address",
            "127.0.0.1:0",
            "--address-file",
            &file.to_string_lossy(),
            "--log-format",
            format,
        ];
        let (_, logs) = run_until_listening(&legate_bin(), &args, &file);
        check_logs("legate", format, &logs);
    }

    // legate-cp: text, then JSON.
    for format in ["text", "json"] {
        let file = dir.path().join(format!("cp-{format}.addr"));
        let data = dir.path().join(format!("cp-{format}-data"));
        let args = [
            "--config",
            &mesh,
            "--data-dir",
            &data.to_string_lossy(),
            "--xds-address",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
            "--address-file",
            &file.to_string_lossy(),
            "--log-format",
            format,
        ];
        let (_, logs) = run_until_listening(&bin("legate-cp"), &args, &file);
        check_logs("legate-cp", format, &logs);
    }

    // legatectl: its client stack logs at debug level while it talks to a real legate-cp.
    let cp_dir = TempDir::new("consistency-logs-cp");
    let cp_mesh = cp_dir.write("mesh.yaml", STATIC_MESH);
    let cp = ControlPlane::start(&cp_mesh, &cp_dir.path().join("data")).await;
    for format in ["text", "json"] {
        let token = cp
            .token_file()
            .expect("token file")
            .to_string_lossy()
            .into_owned();
        let admin = cp.admin_url();
        let out = run(
            &bin("legatectl"),
            &[
                "--server",
                &admin,
                "--token-file",
                &token,
                "--log-level",
                "debug",
                "--log-format",
                format,
                "status",
            ],
        );
        assert!(out.ok, "legatectl status failed:\n{}", out.stderr);
        check_logs("legatectl", format, &out.stderr);
    }
}

#[track_caller]
fn check_logs(binary: &str, format: &str, logs: &str) {
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "{binary} --log-format {format} logged nothing"
    );
    assert!(
        !logs.contains(ESC),
        "{binary} --log-format {format} wrote colour codes to a pipe:\n{logs:?}"
    );
    if format == "json" {
        let mut with_message = 0;
        for line in &lines {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{binary}: not a JSON line ({e}): {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(value.get(key).is_some(), "{binary}: no {key} in {line}");
            }
            if value.get("message").and_then(|m| m.as_str()).is_some() {
                with_message += 1;
            }
        }
        assert!(with_message > 0, "{binary}: no line has a message:\n{logs}");
    } else {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" INFO ") || l.contains(" DEBUG ")),
            "{binary}: no text log line:\n{logs}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// --validate: one mesh format for both binaries

/// A services mesh with a `proxy:` section, the shape legate-cp serves.
const SERVICES_MESH: &str = "\
proxy:
  listener: {name: outbound, address: '127.0.0.1:0'}
services:
  - name: payments
    versions:
      - {name: v1, weight: 90, endpoints: [{address: '127.0.0.1:18081'}]}
      - {name: v2, weight: 10, endpoints: [{address: '127.0.0.1:18083'}]}
    policies:
      timeout: 5s
";

fn cp_validate(mesh: &Path, data: &Path, extra: &[&str]) -> Ran {
    let mut args = vec![
        "--validate".to_owned(),
        "--config".to_owned(),
        mesh.display().to_string(),
        "--data-dir".to_owned(),
        data.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&bin("legate-cp"), &args)
}

fn legate_validate(mesh: &Path) -> Ran {
    run(
        &legate_bin(),
        &["--validate", "--config", &mesh.to_string_lossy()],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn legate_cp_validate_checks_without_binding_or_writing() {
    let dir = TempDir::new("consistency-cp-validate");
    let good = dir.write("mesh.yaml", SERVICES_MESH);
    let data = dir.path().join("data-never-created");
    // A port held here: binding it would fail, so a 0 exit also shows nothing was bound.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").to_string();
    let out = cp_validate(
        &good,
        &data,
        &["--xds-address", &port, "--admin-address", &port],
    );
    assert!(out.ok, "good mesh refused:\n{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("configuration is valid"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("services: 1 from the files, 0 with stored admin changes"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("snapshot for proxies: 2 CDS, 2 EDS, 0 SDS, 1 LDS, 1 RDS"),
        "{}",
        out.stdout
    );
    assert!(!data.exists(), "--validate created the data directory");

    // A bad mesh: exit 1, every error with file:line:col.
    let bad = dir.write(
        "bad.yaml",
        "services:\n  - name: payments\n    versions:\n      - {name: v1, weight: 0, endpoints: [{address: '127.0.0.1:1'}]}\n    route: {prefix: nope}\n",
    );
    let out = cp_validate(&bad, &data, &[]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let first = format!(
        "{}:3:5: services[0].versions: version weights are all zero",
        bad.display()
    );
    assert!(out.stderr.contains(&first), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{}:5:21: services[0].route.prefix:",
            bad.display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("configuration is valid"),
        "{}",
        out.stdout
    );

    // The stored admin changes are read and applied too (written here by a real legate-cp).
    let cp_data = dir.path().join("cp-data");
    let cp = ControlPlane::start(&good, &cp_data).await;
    let (ok, _, stderr) = cp.ctl(&["set-weights", "payments", "v1=50", "v2=50"]);
    assert!(ok, "{stderr}");
    drop(cp);
    let out = cp_validate(&good, &cp_data, &[]);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("services: 1 from the files, 1 with stored admin changes (generation 1)"),
        "{}",
        out.stdout
    );
}

#[test]
fn one_mesh_file_with_a_proxy_section_validates_in_legate_and_legate_cp() {
    let dir = TempDir::new("consistency-proxy-section");
    let mesh = dir.write("mesh.yaml", SERVICES_MESH);
    let out = legate_validate(&mesh);
    assert!(out.ok, "legate refused the mesh file:\n{}", out.stderr);
    let out = cp_validate(&mesh, &dir.path().join("data"), &[]);
    assert!(out.ok, "legate-cp refused the mesh file:\n{}", out.stderr);

    // A mistake in it reads the same in both, down to file:line:col.
    let bad = dir.write(
        "bad.yaml",
        &SERVICES_MESH.replace("address: '127.0.0.1:0'}", "address: 'nowhere'}"),
    );
    let legate = legate_validate(&bad);
    let cp = cp_validate(&bad, &dir.path().join("data"), &[]);
    assert!(!legate.ok && !cp.ok);
    let line = format!("{}:2:39: proxy.listener.address:", bad.display());
    assert!(legate.stderr.contains(&line), "legate:\n{}", legate.stderr);
    assert!(cp.stderr.contains(&line), "legate-cp:\n{}", cp.stderr);
    let first = |s: &str| s.lines().find(|l| l.contains(&line)).map(str::to_owned);
    assert_eq!(first(&legate.stderr), first(&cp.stderr));

    // A bootstrap file that mixes bootstrap keys with mesh keys is still refused, and says so.
    let mixed = dir.write("mixed.yaml", &format!("node: {{id: n1}}\n{SERVICES_MESH}"));
    let out = legate_validate(&mixed);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("unknown field `proxy`"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------
// One wording for a bad duration or weight, on the command line and in files

#[test]
fn a_bad_duration_reads_the_same_on_the_command_line_and_in_files() {
    let expected =
        "'5parsecs': unknown unit 'parsecs' (use ms, s, m, h or d, e.g. 500ms, 2s or 1m30s)";
    let dir = TempDir::new("consistency-duration");
    let data = dir.path().join("data");

    // Flags of all three binaries.
    let out = run(
        &legate_bin(),
        &["--drain-timeout", "5parsecs", "--validate"],
    );
    assert!(
        !out.ok && out.stderr.contains(expected),
        "legate flag:\n{}",
        out.stderr
    );
    let out = run(
        &bin("legate-cp"),
        &["--config", "x", "--mesh-settle", "5parsecs"],
    );
    assert!(
        !out.ok && out.stderr.contains(expected),
        "legate-cp flag:\n{}",
        out.stderr
    );
    let out = run(
        &bin("legatectl"),
        &[
            "certs",
            "--out",
            &dir.path().join("pki").to_string_lossy(),
            "--validity",
            "5parsecs",
        ],
    );
    assert!(
        !out.ok && out.stderr.contains(expected),
        "legatectl flag:\n{}",
        out.stderr
    );

    // A mesh file, read by both binaries.
    let mesh = dir.write(
        "mesh.yaml",
        &SERVICES_MESH.replace("timeout: 5s", "timeout: 5parsecs"),
    );
    let at = format!(
        "{}:9:16: services[0].policies.timeout: {expected}",
        mesh.display()
    );
    let out = legate_validate(&mesh);
    assert!(out.stderr.contains(&at), "legate file:\n{}", out.stderr);
    let out = cp_validate(&mesh, &data, &[]);
    assert!(out.stderr.contains(&at), "legate-cp file:\n{}", out.stderr);

    // A bootstrap file's own durations, too.
    let bootstrap = dir.write(
        "bootstrap.yaml",
        "drain_timeout: 5parsecs\nxds: {servers: ['http://127.0.0.1:1']}\n",
    );
    let out = legate_validate(&bootstrap);
    let at = format!("{}:1:16: drain_timeout: {expected}", bootstrap.display());
    assert!(out.stderr.contains(&at), "bootstrap file:\n{}", out.stderr);

    // A number without a unit: refused alike, not guessed.
    let unitless = "'5': a duration needs a unit, e.g. 5s or 5ms";
    let out = run(&bin("legate-cp"), &["--config", "x", "--mesh-settle", "5"]);
    assert!(out.stderr.contains(unitless), "{}", out.stderr);
    let mesh = dir.write(
        "unitless.yaml",
        &SERVICES_MESH.replace("timeout: 5s", "timeout: 5"),
    );
    let out = cp_validate(&mesh, &data, &[]);
    assert!(out.stderr.contains(unitless), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_weight_reads_the_same_in_set_weights_in_files_and_in_the_json_api() {
    let expected = "'many': expected a weight, a whole number from 0 to 4294967295";
    let dir = TempDir::new("consistency-weight");

    // legatectl refuses it before contacting anything.
    let out = run(
        &bin("legatectl"),
        &[
            "--server",
            "127.0.0.1:1",
            "set-weights",
            "payments",
            "v1=many",
            "v2=10",
        ],
    );
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("weight of version `v1`: {expected}")),
        "{}",
        out.stderr
    );

    // A mesh file.
    let mesh = dir.write(
        "mesh.yaml",
        &SERVICES_MESH.replace("weight: 90", "weight: many"),
    );
    let at = format!(
        "{}:6:28: services[0].versions[0].weight: {expected}",
        mesh.display()
    );
    let out = cp_validate(&mesh, &dir.path().join("data"), &[]);
    assert!(out.stderr.contains(&at), "legate-cp:\n{}", out.stderr);
    let out = legate_validate(&mesh);
    assert!(out.stderr.contains(&at), "legate:\n{}", out.stderr);
    // Out of range reads the same as not a number.
    let big = dir.write(
        "big.yaml",
        &SERVICES_MESH.replace("weight: 90", "weight: 4294967296"),
    );
    let out = cp_validate(&big, &dir.path().join("data"), &[]);
    assert!(
        out.stderr
            .contains("'4294967296': expected a weight, a whole number from 0 to 4294967295"),
        "{}",
        out.stderr
    );

    // The JSON admin API and set-weights against a running legate-cp, and the all-zero
    // refusal a file gets.
    let good = dir.write("good.yaml", SERVICES_MESH);
    let cp = ControlPlane::start(&good, &dir.path().join("cp-data")).await;
    let (ok, _, stderr) = cp.ctl(&["set-weights", "payments", "v1=0", "v2=0"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "services[0].versions: version weights are all zero: no version would get traffic"
        ),
        "{stderr}"
    );
    let zero = dir.write(
        "zero.yaml",
        &SERVICES_MESH
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 0"),
    );
    let out = cp_validate(&zero, &dir.path().join("data"), &[]);
    assert!(
        out.stderr.contains(
            "services[0].versions: version weights are all zero: no version would get traffic"
        ),
        "{}",
        out.stderr
    );
    let bearer = cp.bearer();
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let response = cp
        .json(
            "POST",
            "/v1/services/payments/weights",
            &headers,
            full(r#"{"v1": "many", "v2": 10}"#),
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(response.text().contains(expected), "{}", response.text());
}
