//! `deploy/systemd/`: both units pass `systemd-analyze verify` (Debian's `systemd` package;
//! no running systemd needed) without a single warning; every `--flag` their `ExecStart=`
//! lines (and the README's drop-in examples) pass exists in that binary's `--help`; and each
//! unit's `ExecStartPost=` readiness wait, run against the real binaries with the unit's own
//! `ExecStart=` command line, returns only once the process serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use legate_tests::cli_help::Help;
use legate_tests::peers::repo_root;
use legate_tests::process::{TempDir, bin_dir};

/// Each unit file, and the unit name to verify it as (a template needs an instance).
const UNITS: [(&str, &str); 2] = [
    ("legate-cp.service", "legate-cp.service"),
    ("legate@.service", "legate@demo.service"),
];

/// Where the units expect the binaries (`make build-release`, then `install`).
const INSTALL_DIR: &str = "/usr/local/bin/";

fn systemd_dir() -> PathBuf {
    repo_root().join("deploy/systemd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn unit_text(file: &str) -> String {
    read(&systemd_dir().join(file))
}

/// The unit with the binaries' install directory pointing at this build's binaries, so that
/// `systemd-analyze verify` finds executables where `ExecStart=` says.
fn with_built_binaries(text: &str) -> String {
    let dir = format!("{}/", bin_dir().display());
    text.replace(INSTALL_DIR, &dir)
}

fn systemd_analyze(args: &[&str]) -> Output {
    systemd_analyze_in(args, None)
}

/// `systemd-analyze`, with `unit_dir` searched for units (and their `.d/` drop-ins) before
/// the system's directories.
fn systemd_analyze_in(args: &[&str], unit_dir: Option<&Path>) -> Output {
    let mut command = Command::new("systemd-analyze");
    if let Some(dir) = unit_dir {
        // The trailing ':' keeps the built-in search path after it.
        command.env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()));
    }
    command
        .args(args)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run systemd-analyze ({error}): install Debian's `systemd` package \
                 (`make test-tools` does)"
            )
        })
}

/// `systemd-analyze verify` on each unit, as installed but with this build's binaries: no
/// output at all (every warning is a line on stderr) and exit 0.
#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let dir = TempDir::new("legate-systemd-verify");
    for (file, unit) in UNITS {
        dir.write(file, &with_built_binaries(&unit_text(file)));
        let path = dir.path().join(unit);
        let out = systemd_analyze(&["verify", &path.to_string_lossy()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }

    // The README's drop-ins, each on the unit it names, found through SYSTEMD_UNIT_PATH as
    // systemd finds /etc/systemd/system/UNIT.d/.
    let drop_ins = readme_drop_ins();
    assert!(!drop_ins.is_empty(), "README.md has no drop-in");
    for (unit, name, text) in drop_ins {
        let units = TempDir::new("legate-systemd-drop-in");
        let file = UNITS
            .iter()
            .find(|(file, verified)| *file == unit || *verified == unit)
            .map(|(file, _)| *file)
            .unwrap_or_else(|| panic!("README.md: a drop-in for {unit}, which is not ours"));
        units.write(file, &with_built_binaries(&unit_text(file)));
        let dir = units.path().join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir).expect("create the drop-in directory");
        std::fs::write(dir.join(&name), with_built_binaries(&text)).expect("write the drop-in");
        let verified = UNITS
            .iter()
            .find(|(f, _)| *f == file)
            .map(|(_, v)| *v)
            .unwrap_or(file);
        let out = systemd_analyze_in(&["verify", verified], Some(units.path()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
            "systemd-analyze verify {verified} with README.md's {unit}.d/{name}: {}\n\
             stdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }

    // The check can fail: an unknown setting and a missing binary are both reported.
    let broken = with_built_binaries(&unit_text("legate-cp.service"))
        .replace(
            "NoNewPrivileges=yes",
            "NoNewPrivileges=yes\nNoSuchSetting=1",
        )
        .replace(
            &format!("{}/legate-cp ", bin_dir().display()),
            "/nonexistent/legate-cp ",
        );
    let path = dir.write("broken.service", &broken);
    let out = systemd_analyze(&["verify", &path.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NoSuchSetting") && stderr.contains("/nonexistent/legate-cp"),
        "systemd-analyze verify did not report a broken unit:\n{stderr}"
    );
}

/// The README's `ini` blocks: drop-ins whose first line names their path,
/// `# /etc/systemd/system/UNIT.d/NAME.conf`. As (UNIT, NAME.conf, text).
fn readme_drop_ins() -> Vec<(String, String, String)> {
    let readme = read(&systemd_dir().join("README.md"));
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```ini" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let first = block.first().copied().unwrap_or_default();
        let path = first
            .strip_prefix("# /etc/systemd/system/")
            .unwrap_or_else(|| {
                panic!("README.md: an ini block starts with {first:?}, not its path")
            });
        let (unit, name) = path
            .split_once(".d/")
            .unwrap_or_else(|| panic!("README.md: {path} is not UNIT.d/NAME.conf"));
        blocks.push((unit.to_owned(), name.to_owned(), block.join("\n") + "\n"));
    }
    blocks
}

/// The value of every `KEY=` line of a unit (or of the README's unit snippets).
fn settings<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .filter(|value| !value.is_empty())
        .collect()
}

/// Every `--flag` of every `ExecStart=` line, in the units and in the README's drop-ins,
/// exists in that binary's `--help`.
#[test]
fn exec_start_flags_exist_in_the_binaries_help() {
    let mut sources: Vec<(String, String)> = UNITS
        .iter()
        .map(|(file, _)| (file.to_string(), unit_text(file)))
        .collect();
    sources.push(("README.md".into(), read(&systemd_dir().join("README.md"))));
    let mut cache = BTreeMap::new();
    for (source, text) in &sources {
        let lines = settings(text, "ExecStart");
        assert!(!lines.is_empty(), "{source}: no ExecStart= line");
        for line in lines {
            let mut words = line.split_whitespace();
            let program = words.next().unwrap_or_default();
            assert!(
                program.starts_with(INSTALL_DIR),
                "{source}: ExecStart={line}: the binary is expected in {INSTALL_DIR}"
            );
            let name = &program[INSTALL_DIR.len()..];
            let flags: Vec<&str> = words
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap_or(w))
                .collect();
            assert!(!flags.is_empty(), "{source}: ExecStart={line}: no flags");
            let help = cache
                .entry(name.to_owned())
                .or_insert_with(|| Help::of(name));
            for flag in flags {
                assert!(
                    help.flag(flag).is_some(),
                    "{source}: ExecStart={line}: {name} --help has no {flag}"
                );
            }
        }
    }
}

/// What systemd does to a command line before running it, for the settings the units use:
/// specifiers (`%t` runtime, `%S` state, `%i` instance) and `$$` (a literal `$`). Absolute
/// paths under /etc and the binaries' install directory move into `root`.
fn expand(line: &str, root: &Path, instance: &str) -> String {
    let root_s = root.display().to_string();
    line.replace("%t", &format!("{root_s}/run"))
        .replace("%S", &format!("{root_s}/state"))
        .replace("%i", instance)
        .replace("$$", "$")
        .replace("/etc/", &format!("{root_s}/etc/"))
        .replace(INSTALL_DIR, &format!("{}/", bin_dir().display()))
}

/// A process started by this test, killed (by PID) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The unit's `ExecStart=`, expanded, started with `extra` arguments appended.
fn start(unit: &str, root: &Path, instance: &str, extra: &[String]) -> Running {
    let line = expand(settings(unit, "ExecStart")[0], root, instance);
    let mut words = line.split_whitespace();
    let program = words.next().unwrap_or_default().to_owned();
    // Its log (stderr) beside the unit's directories: the temp dir is kept when a test fails.
    let name = Path::new(&program)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let log_path = root.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", log_path.display()));
    let child = Command::new(&program)
        .args(words)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {line}: {error}"));
    Running(child)
}

/// The unit's `ExecStartPost=` (a `/bin/sh -c '...'` line), expanded and started.
fn start_post(unit: &str, root: &Path, instance: &str) -> Running {
    let line = expand(settings(unit, "ExecStartPost")[0], root, instance);
    let script = line
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("ExecStartPost={line} is not /bin/sh -c '...'"));
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {script}: {error}"));
    Running(child)
}

/// Waits (bounded) for the readiness command to exit, and asserts it succeeded.
fn wait_success(post: &mut Running, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match post.0.try_wait() {
            Ok(Some(status)) => {
                assert!(status.success(), "{what}'s ExecStartPost= failed: {status}");
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => panic!("{what}'s ExecStartPost= did not finish within 30s"),
            Err(error) => panic!("cannot wait for {what}'s ExecStartPost=: {error}"),
        }
    }
}

fn address_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A blocking HTTP/1.1 GET (`Connection: close`): the whole answer, headers included.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|error| panic!("cannot connect to {addr}: {error}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}

/// The readiness waits: legate-cp's returns once its three ports listen, legate's once
/// `/ready` answers 200 (configured by that legate-cp over xDS). Each is started before the
/// process it waits for, so it can only succeed by waiting.
#[test]
fn exec_start_post_waits_until_the_process_serves() {
    let root = TempDir::new("legate-systemd-ready");
    let r = root.path();
    for dir in [
        "run/legate-cp",
        "run/legate/demo",
        "state/legate-cp",
        "state/legate/demo",
        "etc/legate-cp/mesh",
        "etc/legate",
    ] {
        std::fs::create_dir_all(r.join(dir)).expect("create the unit's directories");
    }
    std::fs::write(
        r.join("etc/legate-cp/mesh/mesh.yaml"),
        "proxy:\n  listener: {name: outbound, address: 127.0.0.1:0}\n\
         services:\n  - name: payments\n    endpoints: [{address: 127.0.0.1:9}]\n",
    )
    .expect("write the mesh");

    let cp_unit = unit_text("legate-cp.service");
    let mut cp_post = start_post(&cp_unit, r, "");
    // Ports 0 so the test runs beside anything; the data directory is what systemd's
    // StateDirectory= would give it through $STATE_DIRECTORY.
    let cp_extra: Vec<String> = [
        "--xds-address",
        "127.0.0.1:0",
        "--admin-address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([r.join("state/legate-cp").display().to_string()])
    .collect();
    let _cp = start(&cp_unit, r, "", &cp_extra);
    wait_success(&mut cp_post, "legate-cp.service");
    let cp = address_file(&r.join("run/legate-cp/addresses"));
    for name in ["xds", "admin", "metrics"] {
        assert!(
            cp.contains_key(name),
            "legate-cp's address file lacks {name}: {cp:?}"
        );
    }

    std::fs::write(
        r.join("etc/legate/demo.yaml"),
        format!(
            "node: {{id: demo, cluster: demo}}\nadmin: {{address: 127.0.0.1:0}}\n\
             xds: {{servers: [http://{}]}}\n",
            cp["xds"]
        ),
    )
    .expect("write the proxy's bootstrap");
    let proxy_unit = unit_text("legate@.service");
    let mut proxy_post = start_post(&proxy_unit, r, "demo");
    let _proxy = start(&proxy_unit, r, "demo", &[]);
    wait_success(&mut proxy_post, "legate@demo.service");
    let proxy = address_file(&r.join("run/legate/demo/addresses"));
    let admin = proxy
        .get("admin")
        .expect("legate's address file names its admin address");
    let ready = http_get(admin, "/ready");
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "legate's /ready after the wait:\n{ready}"
    );
    // The xDS cache went where the unit's StateDirectory= is.
    let cache = r.join("state/legate/demo");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "no xDS cache written in {}",
            cache.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
