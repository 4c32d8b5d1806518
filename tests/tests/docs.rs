//! The documentation runs: every `try:` line the demo (`make run`, that is
//! `deploy/run-demo.sh`) prints, and every command in README.md's `sh` blocks.
//!
//! The demo is started on free ports with a state directory of its own (the script's `DEMO_*`
//! variables), so a developer's running `make run` and parallel tests are left alone. README
//! commands run in a sandbox directory holding a copy of `examples/` with the README's fixed
//! ports (15000, 15001, 15010, 15011, 15014) replaced by free ones, the same replacement applied to
//! each command. Every README command must be listed in [`README_COMMANDS`] with how it is
//! checked (run, or not run and why): a command added to the README without a check, or a
//! check whose command left the README, fails the test with the list to reconcile.
//!
//! Needs `bash` and `curl` (the demo and its `try:` lines use them).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use legate_tests::process::{TempDir, bin_dir, free_ports};

/// How long the demo gets to print its banner (it builds nothing: binaries exist).
const DEMO_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the demo gets to stop after SIGTERM (legate drains for 1s).
const DEMO_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one documented command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("the tests crate has no parent directory"))
}

fn port_answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Running commands

/// A finished command: status (None when it was killed at the timeout) and both outputs.
struct Ran {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    timeout: Duration,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("still running after {:?}, killed", self.timeout),
        };
        format!(
            "status: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

fn drain(reader: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut reader) = reader {
            let _ = reader.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` to completion, for at most [`COMMAND_TIMEOUT`] (then kills it by its PID).
fn run(command: &mut Command) -> Ran {
    run_within(command, COMMAND_TIMEOUT)
}

/// [`run`] with another timeout.
fn run_within(command: &mut Command, timeout: Duration) -> Ran {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        timeout,
    }
}

/// `bash -c LINE` in `dir` with the binaries on PATH and no colour.
fn shell(line: &str, dir: &Path) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir()];
    paths.extend(std::env::split_paths(&path));
    let mut command = Command::new("bash");
    command
        .args(["-c", line])
        .current_dir(dir)
        .env(
            "PATH",
            std::env::join_paths(paths).unwrap_or_else(|error| panic!("PATH: {error}")),
        )
        .env("NO_COLOR", "1")
        // A developer's own settings must not point commands at their control plane.
        .env_remove("LEGATE_CP_ADMIN")
        .env_remove("LEGATE_CP_TOKEN_FILE")
        .env_remove("LEGATE_CP_TOKEN");
    command
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------------
// The demo

/// The demo's ports, all free: the script's defaults are a developer's `make run`'s.
struct DemoPorts {
    proxy: u16,
    admin: u16,
    cp_xds: u16,
    cp_admin: u16,
    cp_metrics: u16,
    upstreams: [u16; 5],
}

impl DemoPorts {
    fn free() -> DemoPorts {
        let [proxy, admin, cp_xds, cp_admin, cp_metrics, a, b, c, d, e] = free_ports::<10>();
        DemoPorts {
            proxy,
            admin,
            cp_xds,
            cp_admin,
            cp_metrics,
            upstreams: [a, b, c, d, e],
        }
    }

    fn all(&self) -> Vec<u16> {
        let mut all = vec![
            self.proxy,
            self.admin,
            self.cp_xds,
            self.cp_admin,
            self.cp_metrics,
        ];
        all.extend(self.upstreams);
        all
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let upstreams = self.upstreams.map(|p| p.to_string()).join(" ");
        vec![
            ("DEMO_PROXY_PORT", self.proxy.to_string()),
            ("DEMO_ADMIN_PORT", self.admin.to_string()),
            ("DEMO_CP_XDS_PORT", self.cp_xds.to_string()),
            ("DEMO_CP_ADMIN_PORT", self.cp_admin.to_string()),
            ("DEMO_CP_METRICS_PORT", self.cp_metrics.to_string()),
            ("DEMO_UPSTREAM_PORTS", upstreams),
        ]
    }
}

/// `deploy/run-demo.sh` running: its output captured; stopped with SIGTERM on drop (then, if it
/// is still there, killed by PID, with every process it listed in `demo.pids`).
struct Demo {
    child: Child,
    output: Arc<Mutex<String>>,
    state: PathBuf,
}

impl Demo {
    fn spawn(state: &Path, ports: &DemoPorts, args: &[&str]) -> Demo {
        let mut command = shell("exec deploy/run-demo.sh \"$@\"", &repo_root());
        let mut child = command
            .arg("run-demo.sh")
            .args(args)
            .env("BIN", bin_dir())
            .env("DEMO_STATE_DIR", state)
            .envs(ports.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start deploy/run-demo.sh: {error}"));
        let output = Arc::new(Mutex::new(String::new()));
        for reader in [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(reader);
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                    output
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&line);
                    line.clear();
                }
            });
        }
        Demo {
            child,
            output,
            state: state.to_path_buf(),
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the banner's last line; returns the output so far.
    fn wait_banner(&mut self) -> String {
        let deadline = Instant::now() + DEMO_START_TIMEOUT;
        loop {
            let output = self.output();
            if output.contains("Press Ctrl-C to stop.") {
                return output;
            }
            if let Some(status) = self.child.try_wait().ok().flatten() {
                // Let the readers take what was printed last.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the demo exited ({status}) before its banner:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no banner after {DEMO_START_TIMEOUT:?}:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as Ctrl-C's cleanup: the script must stop and say so.
    fn stop(&mut self) {
        kill("-TERM", self.child.id());
        let status = self.wait_exit(DEMO_STOP_TIMEOUT);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            status.is_some(),
            "the demo did not stop within {DEMO_STOP_TIMEOUT:?} of SIGTERM:\n{}",
            self.output()
        );
        assert!(
            self.output().contains("demo stopped"),
            "no `demo stopped` after SIGTERM:\n{}",
            self.output()
        );
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill("-TERM", self.child.id());
            if self.wait_exit(DEMO_STOP_TIMEOUT).is_none() {
                // The script did not stop its processes: kill them by PID, those it lists in
                // demo.pids that are still its children (not a concurrent demo's), then it.
                let script = self.child.id();
                let children: Vec<u32> = std::fs::read_to_string(self.state.join("demo.pids"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                    .filter(|pid| parent_pid(*pid) == Some(script))
                    .collect();
                for pid in children {
                    kill("-KILL", pid);
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("===== deploy/run-demo.sh output =====\n{}", self.output());
        }
    }
}

/// The parent of process `pid`, from `/proc/PID/stat` (its fourth field, after the name).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The payments versions that answer `n` requests through the demo proxy.
fn payments_versions(proxy: u16, n: usize) -> BTreeMap<String, usize> {
    let mut versions = BTreeMap::new();
    for _ in 0..n {
        let ran = run(Command::new("curl").args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{proxy}/payments/charge"),
        ]));
        assert!(ran.ok(), "curl payments: {}", ran.describe());
        let echo: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|error| panic!("payments answered no JSON ({error}): {}", ran.stdout));
        let version = echo["version"].as_str().unwrap_or("?").to_owned();
        *versions.entry(version).or_insert(0) += 1;
    }
    versions
}

/// The `try:` lines of a banner, with the test's ports, binary directory and state directory
/// replaced by placeholders so they compare with [`TRY_LINES`].
fn try_lines(banner: &str, ports: &DemoPorts, state: &Path) -> Vec<(String, String)> {
    let bin = bin_dir().display().to_string();
    let state = state.display().to_string();
    banner
        .lines()
        .filter_map(|l| l.strip_prefix("try: "))
        .map(|line| {
            let generic = line
                .replace(&bin, "{bin}")
                .replace(&state, "{state}")
                .replace(&format!(":{}/", ports.proxy), ":{proxy}/")
                .replace(&format!(":{}/", ports.admin), ":{admin}/")
                .replace(&format!(":{}/control", ports.upstreams[2]), ":{v2}/control")
                .replace(&format!("127.0.0.1:{} ", ports.cp_admin), "{cp_admin} ");
            (generic, line.to_owned())
        })
        .collect()
}

/// Every `try:` line the banner prints, with what its output must contain.
const TRY_LINES: &[(&str, &[&str])] = &[
    (
        "curl http://127.0.0.1:{proxy}/payments/charge",
        &[r#""name":"payments""#],
    ),
    (
        "curl -H 'x-canary: 1' http://127.0.0.1:{proxy}/payments/charge",
        &[r#""version":"v2""#, r#""x-canary":"1""#],
    ),
    (
        "curl --http2-prior-knowledge http://127.0.0.1:{proxy}/inventory/items",
        &[r#""name":"inventory""#, r#""protocol":"HTTP/2.0""#],
    ),
    (
        "curl -i http://127.0.0.1:{proxy}/ledger/entries   # mTLS upstream: see x-tls-version, x-client-san",
        &[
            "HTTP/1.1 200",
            "x-tls-version: TLSv1_2",
            "x-client-san: spiffe://legate.local/cluster/demo",
        ],
    ),
    (
        "{bin}/legatectl --server {cp_admin} --token-file {state}/admin.token set-weights payments v1=0 v2=100   # then curl payments again: all v2",
        &[],
    ),
    (
        "{bin}/legatectl --server {cp_admin} --token-file {state}/admin.token status",
        &["demo-proxy"],
    ),
    ("curl http://127.0.0.1:{admin}/config_dump", &["payments"]),
    // The canary lines: run by `canary_lines_promote_then_roll_back`, in the order a
    // newcomer runs them (the traffic in the background), not one after the other.
    (CANARY_TRAFFIC, &[]),
    (CANARY_START, &[]),
    (CANARY_WATCH, &["promoted"]),
    (CANARY_FAIL, &[r#""fail_ratio":0.2"#]),
    (CANARY_HEAL, &[r#""fail_ratio":0"#]),
];

const CANARY_TRAFFIC: &str = "for i in $(seq 3000); do curl -s -o /dev/null http://127.0.0.1:{proxy}/payments/charge; sleep 0.01; done   # about a minute of traffic";
const CANARY_START: &str = "{bin}/legatectl --server {cp_admin} --token-file {state}/admin.token canary start payments --to v2 --steps 10,50,100 --interval 10s --max-error-rate 1% --min-requests 20";
const CANARY_WATCH: &str = "{bin}/legatectl --server {cp_admin} --token-file {state}/admin.token canary status payments --watch   # until the rollout ends; Ctrl-C stops watching";
const CANARY_FAIL: &str = r#"curl -X POST http://127.0.0.1:{v2}/control -d '{"fail_ratio":0.2}'   # v2 fails 20 %: start the rollout again"#;
const CANARY_HEAL: &str =
    r#"curl -X POST http://127.0.0.1:{v2}/control -d '{"fail_ratio":0}'   # v2 heals"#;
const CANARY_LINES: [&str; 5] = [
    CANARY_TRAFFIC,
    CANARY_START,
    CANARY_WATCH,
    CANARY_FAIL,
    CANARY_HEAL,
];

/// How long `canary status --watch` may take to see a rollout end: three 10 s steps, each
/// judged once every node ACKed its weights and reported (every second).
const CANARY_WATCH_TIMEOUT: Duration = Duration::from_secs(75);

/// The banner's traffic line, run in the background as in a second terminal, again whenever
/// it ends, until stopped (at most [`CANARY_TRAFFIC_TIMEOUT`] in all).
struct BackgroundTraffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Ran>>,
}

const CANARY_TRAFFIC_TIMEOUT: Duration = Duration::from_secs(180);

impl BackgroundTraffic {
    fn start(line: &str) -> BackgroundTraffic {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let line = line.to_owned();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + CANARY_TRAFFIC_TIMEOUT;
            let mut runs = Vec::new();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut child = shell(&line, &repo_root())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|error| panic!("cannot start {line}: {error}"));
                let stdout = drain(child.stdout.take());
                let stderr = drain(child.stderr.take());
                let status = loop {
                    if let Some(status) = child.try_wait().ok().flatten() {
                        break Some(status);
                    }
                    if flag.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        // Our own bash, by its PID: the loop ends after its current curl.
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                runs.push(Ran {
                    status,
                    stdout: stdout.join().unwrap_or_default(),
                    stderr: stderr.join().unwrap_or_default(),
                    timeout: CANARY_TRAFFIC_TIMEOUT,
                });
            }
            runs
        });
        BackgroundTraffic { stop, thread }
    }

    /// Stops the traffic; the runs that ended on their own must have succeeded.
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = self
            .thread
            .join()
            .unwrap_or_else(|_| panic!("the traffic thread panicked"));
        for ran in runs.iter().filter(|r| r.status.is_some()) {
            assert!(
                ran.ok(),
                "the traffic line failed:
{}",
                ran.describe()
            );
        }
    }
}

/// The rollout's status through legatectl (`canary status payments -o json`).
fn canary_status(ctl: &str) -> serde_json::Value {
    let ran = run(&mut shell(
        &format!("{ctl} canary status payments -o json"),
        &repo_root(),
    ));
    assert!(ran.ok(), "canary status -o json: {}", ran.describe());
    serde_json::from_str(&ran.stdout).unwrap_or_else(|error| {
        panic!(
            "canary status -o json is not JSON ({error}): {}",
            ran.describe()
        )
    })
}

/// The banner's canary lines as a newcomer runs them: traffic in a second terminal; the
/// rollout started and watched until promoted; v2 made to fail, the rollout started again
/// and watched until it rolls back; v2 healed. All within a minute and a half (the banner
/// promises a promotion in about 30 s; the rollback comes at the first step).
fn canary_lines_promote_then_roll_back(lines: &[(String, String)], ctl: &str) {
    let line = |generic: &str| {
        lines
            .iter()
            .find(|(g, _)| g == generic)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| panic!("the banner has no line {generic:?}"))
    };
    let expected = |generic: &str| -> &'static [&'static str] {
        TRY_LINES
            .iter()
            .find(|(l, _)| *l == generic)
            .map(|(_, e)| *e)
            .unwrap_or_default()
    };
    let check = |generic: &str, ran: &Ran, also: &[&str]| {
        let line = line(generic);
        assert!(
            ran.ok(),
            "try: {line}
{}",
            ran.describe()
        );
        let output = format!("{}{}", ran.stdout, ran.stderr);
        for needle in expected(generic).iter().chain(also) {
            assert!(
                output.contains(needle),
                "try: {line}
expected {needle:?} in its output:
{}",
                ran.describe()
            );
        }
    };
    // A try: line run to its end, checked; the watch line, run within its own bound.
    let run_line =
        |generic: &str| check(generic, &run(&mut shell(&line(generic), &repo_root())), &[]);
    let run_watch = || {
        run_within(
            &mut shell(&line(CANARY_WATCH), &repo_root()),
            CANARY_WATCH_TIMEOUT,
        )
    };
    let traffic = BackgroundTraffic::start(&line(CANARY_TRAFFIC));
    let started = Instant::now();

    run_line(CANARY_START);
    let watch = run_watch();
    check(CANARY_WATCH, &watch, &["step 1/3", "step 3/3"]);
    let status = canary_status(ctl);
    assert_eq!(status["state"], "promoted", "{status:#}");
    assert_eq!(status["weights"]["v2"], 100, "{status:#}");
    let promoted_after = started.elapsed();

    run_line(CANARY_FAIL);
    let rollback_started = Instant::now();
    run_line(CANARY_START);
    let watch = run_watch();
    // The watch ends with the rollout; its last frame says how.
    let ran_ok = watch.ok();
    assert!(
        ran_ok,
        "try: {}
{}",
        line(CANARY_WATCH),
        watch.describe()
    );
    assert!(
        watch.stdout.contains("rolled_back"),
        "the second watch did not end rolled back:
{}",
        watch.describe()
    );
    let status = canary_status(ctl);
    assert_eq!(status["state"], "rolled_back", "{status:#}");
    assert_eq!(status["weights"]["v2"], 0, "{status:#}");
    let rolled_back_after = rollback_started.elapsed();

    run_line(CANARY_HEAL);
    traffic.stop();
    eprintln!(
        "demo canary: promoted {promoted_after:?} after the start, rolled back \
         {rolled_back_after:?} after v2 began failing"
    );
    assert!(
        promoted_after < Duration::from_secs(60) && rolled_back_after < Duration::from_secs(30),
        "the demo promised a promotion in about 30 s and a rollback at the first step: \
         promoted after {promoted_after:?}, rolled back after {rolled_back_after:?}"
    );
}

/// Starts the demo as `make run` does (on free ports) and runs every `try:` line of its banner.
#[test]
fn demo_try_lines_work() {
    let state = TempDir::new("legate-demo");
    let ports = DemoPorts::free();
    let mut demo = Demo::spawn(state.path(), &ports, &[]);
    let banner = demo.wait_banner();

    // legate-cp starts first and the proxy only once it listens: no warning on the way.
    let warnings: Vec<&str> = banner.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(
        warnings.is_empty(),
        "the demo logged warnings while starting: {warnings:#?}\n{banner}"
    );

    let position = |needle: &str| {
        banner
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the demo's output:\n{banner}"))
    };
    assert!(
        position("legate-cp listening") < position("starting the xDS client"),
        "the proxy started before legate-cp listened:\n{banner}"
    );

    let lines = try_lines(&banner, &ports, state.path());
    let known: Vec<&str> = TRY_LINES.iter().map(|(l, _)| *l).collect();
    let unknown: Vec<&str> = lines
        .iter()
        .map(|(g, _)| g.as_str())
        .filter(|g| !known.contains(g))
        .collect();
    let missing: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| !lines.iter().any(|(g, _)| g == k))
        .collect();
    assert!(
        unknown.is_empty() && missing.is_empty(),
        "the banner's try: lines and TRY_LINES in {} differ; give each new line the text its \
         output must contain.\nprinted but not checked: {unknown:#?}\nchecked but not printed: \
         {missing:#?}\nbanner:\n{banner}",
        file!()
    );

    // Before the weights change: the clean start serves v1 only, v2 waits for a rollout.
    let before = payments_versions(ports.proxy, 20);
    assert!(
        before.keys().eq(["v1"].iter()),
        "a clean demo serves payments v1 only (v2 at 0 %); 20 requests got {before:?}"
    );

    // examples/cp-demo.yaml's header: `?delay=2s` outlasts the 1500ms per-try timeout of all
    // three tries, which ends before the 5s whole-request timeout.
    let started = Instant::now();
    let ran = run(Command::new("curl").args([
        "-sS",
        "-i",
        &format!("http://127.0.0.1:{}/payments/charge?delay=2s", ports.proxy),
    ]));
    let elapsed = started.elapsed();
    assert!(
        ran.ok()
            && ran.stdout.starts_with("HTTP/1.1 504")
            && ran.stdout.contains("x-legate-error: per-try-timeout")
            && elapsed >= Duration::from_millis(4400)
            // (the 5s route timeout would answer `upstream-timeout` instead)
            && elapsed < Duration::from_secs(10),
        "?delay=2s: expected a 504 per-try-timeout after about 4.5s, got after {elapsed:?}: {}",
        ran.describe()
    );

    for (generic, line) in &lines {
        if CANARY_LINES.contains(&generic.as_str()) {
            continue;
        }
        let ran = run(&mut shell(line, &repo_root()));
        assert!(ran.ok(), "try: {line}\n{}", ran.describe());
        let output = format!("{}{}", ran.stdout, ran.stderr);
        let expected = TRY_LINES
            .iter()
            .find(|(l, _)| l == generic)
            .map(|(_, e)| *e)
            .unwrap_or_default();
        for needle in expected {
            assert!(
                output.contains(needle),
                "try: {line}\nexpected {needle:?} in its output:\n{}",
                ran.describe()
            );
        }
        if generic.contains("set-weights payments v1=0 v2=100") {
            // "then curl payments again: all v2", once the proxy has the new weights.
            wait_all_v2(ports.proxy);
        }
    }

    let ctl = format!(
        "legatectl --server 127.0.0.1:{} --token-file {}",
        ports.cp_admin,
        state.path().join("admin.token").display()
    );
    canary_lines_promote_then_roll_back(&lines, &ctl);

    demo.stop();
    for port in ports.all() {
        assert!(
            !port_answers(port),
            "127.0.0.1:{port} still answers after the demo stopped:\n{}",
            demo.output()
        );
    }
}

/// `make run` starts clean unless told to keep state; a second one while the first runs fails
/// before printing anything to try, names the busy port, and leaves the first one's state alone.
#[test]
fn demo_starts_clean_and_refuses_to_run_twice() {
    let state = TempDir::new("legate-demo");
    let ports = DemoPorts::free();
    let mut first = Demo::spawn(state.path(), &ports, &[]);
    first.wait_banner();
    let token = std::fs::read_to_string(state.path().join("admin.token"))
        .unwrap_or_else(|error| panic!("the demo wrote no admin.token: {error}"));
    let ctl = format!(
        "legatectl --server 127.0.0.1:{} --token-file {}",
        ports.cp_admin,
        state.path().join("admin.token").display()
    );
    let ran = run(&mut shell(
        &format!("{ctl} set-weights payments v1=0 v2=100"),
        &repo_root(),
    ));
    assert!(ran.ok(), "set-weights: {}", ran.describe());

    // A second demo on the same ports and state directory.
    let mut second = Demo::spawn(state.path(), &ports, &[]);
    let status = second.wait_exit(Duration::from_secs(10));
    let output = second.output();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second demo on busy ports must fail at once ({status:?}):\n{output}"
    );
    assert!(
        !output.contains("try:"),
        "the second demo printed its banner:\n{output}"
    );
    assert!(
        output.contains(&format!(
            "127.0.0.1:{} (the proxy's listener) is already in use",
            ports.proxy
        )) && output.contains("a demo seems to be running already"),
        "the refusal names neither the busy port nor the running demo:\n{output}"
    );
    drop(second);
    // The first one is untouched: same token, still answering, weights as set.
    assert_eq!(
        std::fs::read_to_string(state.path().join("admin.token")).ok(),
        Some(token),
        "the second demo replaced the first one's admin token"
    );
    let ran = run(&mut shell(&format!("{ctl} status"), &repo_root()));
    assert!(
        ran.ok(),
        "status after the refused second demo: {}",
        ran.describe()
    );
    wait_all_v2(ports.proxy);
    first.stop();

    // Started again: clean, so the weights are the file's again.
    let mut clean = Demo::spawn(state.path(), &ports, &[]);
    let banner = clean.wait_banner();
    let versions = payments_versions(ports.proxy, 20);
    assert!(
        versions.contains_key("v1"),
        "a clean start still serves the last run's v1=0 v2=100: 20 requests got {versions:?}"
    );
    assert!(banner.contains("started clean"), "{banner}");
    let ran = run(&mut shell(
        &format!("{ctl} set-weights payments v1=0 v2=100"),
        &repo_root(),
    ));
    assert!(ran.ok(), "set-weights: {}", ran.describe());
    wait_all_v2(ports.proxy);
    clean.stop();

    // --keep-state (make run KEEP_STATE=1): the admin change survives.
    let mut kept = Demo::spawn(state.path(), &ports, &["--keep-state"]);
    let banner = kept.wait_banner();
    assert!(banner.contains("kept from the last run"), "{banner}");
    let versions = payments_versions(ports.proxy, 20);
    assert!(
        versions.keys().eq(["v2"].iter()),
        "--keep-state lost the last run's v1=0 v2=100: 20 requests got {versions:?}"
    );
    kept.stop();
}

fn wait_all_v2(proxy: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let versions = payments_versions(proxy, 10);
        if versions.keys().eq(["v2"].iter()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after set-weights v1=0 v2=100 payments still answers from {versions:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// README.md

/// How a README command is checked.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// Run (ports and paths replaced as the module docs say); must exit 0.
    Exits0,
    /// A server: must keep running and answer `url` (README ports, replaced) with `status`
    /// until the end of its block; then stopped by its PID.
    Serves { url: &'static str, status: u16 },
    /// `export NAME=VALUE`: set for the block's later commands.
    Export,
    /// Not run in a test, for the reason given.
    NotRun(&'static str),
}

/// Why the README's canary commands are not run on their own.
const DEMO_CANARY: &str = "needs the demo running with traffic; the demo's banner prints the same \
                           lines, which demo_try_lines_work runs (a promotion, then a rollback)";

/// Every command of README.md's `sh` blocks (continuation lines joined, comments removed,
/// spaces collapsed), in the order they appear, with its check.
const README_COMMANDS: &[(&str, Check)] = &[
    (
        "make run",
        Check::NotRun(
            "builds, then runs deploy/run-demo.sh, which demo_try_lines_work and \
             demo_starts_clean_and_refuses_to_run_twice start on free ports",
        ),
    ),
    (
        "make test",
        Check::NotRun("runs this test, among all the others"),
    ),
    (
        "legatectl canary start payments --to v2 --steps 10,50,100 --interval 10s --max-error-rate 1% --min-requests 20",
        Check::NotRun(DEMO_CANARY),
    ),
    (
        "legatectl canary status payments --watch",
        Check::NotRun(DEMO_CANARY),
    ),
    (
        r#"curl -X POST http://127.0.0.1:18083/control -d '{"fail_ratio":0.2}'"#,
        Check::NotRun(DEMO_CANARY),
    ),
    (
        r#"curl -X POST http://127.0.0.1:18083/control -d '{"fail_ratio":0}'"#,
        Check::NotRun(DEMO_CANARY),
    ),
    (
        "legatectl certs --out .demo/pki --host localhost --host ledger --node demo-proxy --cluster demo",
        Check::Exits0,
    ),
    (
        "legate-cp --config examples/cp-demo.yaml --xds-address 127.0.0.1:15010 --admin-address 127.0.0.1:15011 --metrics-address 127.0.0.1:15014 --data-dir /var/lib/legate-cp",
        Check::Serves {
            url: "http://127.0.0.1:15011/v1/nodes",
            status: 401,
        },
    ),
    (
        "export LEGATE_CP_TOKEN_FILE=/var/lib/legate-cp/admin.token",
        Check::Export,
    ),
    ("legatectl status", Check::Exits0),
    (
        "legatectl get node demo-proxy --cluster demo",
        Check::Exits0,
    ),
    ("legatectl apply -f payments.yaml", Check::Exits0),
    ("legatectl set-weights payments v1=90 v2=10", Check::Exits0),
    ("legatectl get service payments", Check::Exits0),
    ("legatectl reset payments", Check::Exits0),
    ("legatectl delete extra", Check::Exits0),
    ("legatectl top payments", Check::Exits0),
    (
        "legatectl certs --out pki --host cp.internal --admin alice",
        Check::Exits0,
    ),
    (
        "legate-cp --config mesh.yaml --admin-address 0.0.0.0:15011 --admin-client-ca pki/ca.pem --admin-tls-cert pki/cp.internal.pem --admin-tls-key pki/cp.internal.key",
        Check::NotRun(
            "binds the default xDS address 127.0.0.1:15010, which a developer's make run \
             holds; cp_admin tests the admin API over TLS with client certificates",
        ),
    ),
    (
        "legatectl --server https://cp.internal:15011 --ca pki/ca.pem --cert pki/admin-alice.pem --key pki/admin-alice.key status",
        Check::NotRun("needs a host named cp.internal; cp_admin runs legatectl over mTLS"),
    ),
    (
        "legatectl certs --out pki --host cp.internal --node proxy-1 --cluster web",
        Check::Exits0,
    ),
    (
        "legate-cp --config mesh.yaml --xds-address 0.0.0.0:15010 --xds-tls-cert pki/cp.internal.pem --xds-tls-key pki/cp.internal.key --xds-client-ca pki/ca.pem",
        Check::NotRun(
            "binds the default admin address 127.0.0.1:15011, which a developer's make run \
             holds; xds_mtls tests xDS over mTLS",
        ),
    ),
    (
        "legate --node-id proxy-1 --node-cluster web --xds-server https://cp.internal:15010 --xds-ca pki/ca.pem --xds-cert pki/node-proxy-1.pem --xds-key pki/node-proxy-1.key",
        Check::NotRun("needs a host named cp.internal; xds_mtls runs legate over mTLS xDS"),
    ),
    (
        "legate --config examples/demo.yaml",
        Check::Serves {
            url: "http://127.0.0.1:15001/ping",
            status: 200,
        },
    ),
    (
        "legate --validate --config examples/demo.yaml",
        Check::Exits0,
    ),
    (
        "make bench",
        Check::NotRun("takes ~30 minutes on release builds"),
    ),
    (
        "BENCH_QUICK=1 make bench",
        Check::NotRun("takes ~5 minutes on release builds"),
    ),
    (
        "export LEGATE_CP_TOKEN_FILE=legate-cp-data/admin.token",
        Check::Export,
    ),
    (
        "legate-cp-load --server http://127.0.0.1:15010 --streams 10000 --mode delta --changes 2 --trigger-cmd 'legatectl set-weights payments v1=80 v2=20' --trigger-cmd 'legatectl set-weights payments v1=90 v2=10'",
        Check::NotRun("needs a legate-cp already running; make bench runs it"),
    ),
];

/// README.md's `sh` blocks, each as its commands.
fn readme_blocks(readme: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in readme.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(lang)) if matches!(lang.trim(), "sh" | "bash" | "shell" | "console") => {
                current = Some(Vec::new());
            }
            (Some(_), Some(_)) => {
                blocks.extend(current.take());
            }
            (Some(commands), None) => {
                let (body, continued) = match line.trim_end().strip_suffix('\\') {
                    Some(body) => (body, true),
                    None => (line, false),
                };
                pending.push_str(body);
                pending.push(' ');
                if !continued {
                    let command = strip_comment(&pending)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    pending.clear();
                    if !command.is_empty() {
                        commands.push(command);
                    }
                }
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The line without its shell comment: from a `#` that starts a word outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut word_start = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if word_start => return &line[..i],
            _ => {}
        }
        word_start = quote.is_none() && c.is_whitespace();
    }
    line
}

#[test]
fn readme_parser_joins_lines_and_strips_comments() {
    let readme =
        "text\n```sh\na --x 1 \\\n  --y 2   # note\nb 'c # d' # e\n```\n```yaml\nz: 1\n```\n";
    assert_eq!(
        readme_blocks(readme),
        vec![vec!["a --x 1 --y 2".to_owned(), "b 'c # d'".to_owned()]]
    );
}

/// The README's fixed ports and paths, replaced in commands and in the sandbox's examples.
struct Sandbox {
    dir: TempDir,
    replacements: Vec<(String, String)>,
    cp_admin: u16,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = TempDir::new("legate-readme");
        let [admin, proxy, xds, cp_admin, cp_metrics] = free_ports::<5>();
        let mut replacements = Vec::new();
        for (from, to) in [
            (15000, admin),
            (15001, proxy),
            (15010, xds),
            (15011, cp_admin),
            (15014, cp_metrics),
        ] {
            for host in ["127.0.0.1", "0.0.0.0", "localhost"] {
                replacements.push((format!("{host}:{from}"), format!("{host}:{to}")));
            }
        }
        for path in ["/var/lib/legate-cp", "/var/lib/legate"] {
            let local = dir.path().join(path.trim_start_matches('/'));
            replacements.push((path.to_owned(), local.display().to_string()));
        }
        let sandbox = Sandbox {
            dir,
            replacements,
            cp_admin,
        };
        sandbox.copy_dir(
            &repo_root().join("examples"),
            &sandbox.dir.path().join("examples"),
        );
        // `legatectl apply -f payments.yaml`: the reader's own file; this one overrides the
        // demo's payments service and creates `extra`, which `legatectl delete extra` removes.
        sandbox.dir.write(
            "payments.yaml",
            "services:\n  - name: payments\n    versions:\n      \
             - {name: v1, weight: 90, endpoints: [{address: 127.0.0.1:18081}]}\n      \
             - {name: v2, weight: 10, endpoints: [{address: 127.0.0.1:18083}]}\n    \
             route: {prefix: /payments/, rewrite: /}\n  \
             - name: extra\n    \
             versions: [{name: v1, weight: 100, endpoints: [{address: 127.0.0.1:18081}]}]\n    \
             route: {prefix: /extra/, rewrite: /}\n",
        );
        sandbox
    }

    fn replace(&self, text: &str) -> String {
        self.replacements
            .iter()
            .fold(text.to_owned(), |t, (from, to)| t.replace(from, to))
    }

    fn copy_dir(&self, from: &Path, to: &Path) {
        std::fs::create_dir_all(to)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", to.display()));
        let entries = std::fs::read_dir(from)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", from.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let target = to.join(entry.file_name());
            if path.is_dir() {
                self.copy_dir(&path, &target);
            } else {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
                std::fs::write(&target, self.replace(&text))
                    .unwrap_or_else(|error| panic!("cannot write {}: {error}", target.display()));
            }
        }
    }
}

/// A server started by a README command, killed by its PID when its block ends.
struct Server {
    child: Child,
    output: Option<[std::thread::JoinHandle<String>; 2]>,
}

impl Server {
    /// Stops the server (by its PID) and returns what it printed.
    fn output(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output
            .take()
            .map(|output| {
                output
                    .map(|h| h.join().unwrap_or_default())
                    .join("\n--- stderr ---\n")
            })
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_status(url: &str) -> Option<u16> {
    let ran = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "2",
        "-w",
        "%{http_code}",
        url,
    ]));
    ran.stdout.trim().parse().ok().filter(|s| *s != 0)
}

/// Every command in README.md's `sh` blocks is in [`README_COMMANDS`], and each one the table
/// says runs does.
#[test]
fn readme_commands_run() {
    let readme_path = repo_root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", readme_path.display()));
    let blocks = readme_blocks(&readme);
    let commands: Vec<&String> = blocks.iter().flatten().collect();
    let unknown: Vec<&&String> = commands
        .iter()
        .filter(|c| !README_COMMANDS.iter().any(|(k, _)| *k == c.as_str()))
        .collect();
    let stale: Vec<&str> = README_COMMANDS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !commands.iter().any(|c| c == k))
        .collect();
    assert!(
        unknown.is_empty() && stale.is_empty(),
        "README.md's commands and README_COMMANDS in {} differ.\n\
         In README.md, not checked (add each to README_COMMANDS as Exits0, Serves, Export, or \
         NotRun with the reason it cannot run in a test; commands run in order within their \
         block, against the servers the block started, with ports 15000/15001/15010/15011 \
         replaced): {unknown:#?}\n\
         In README_COMMANDS, no longer in README.md (remove or update): {stale:#?}",
        file!()
    );

    let sandbox = Sandbox::new();
    let mut ran_count = 0;
    for block in &blocks {
        let mut servers: Vec<(String, Server)> = Vec::new();
        let mut exports: Vec<(String, String)> = Vec::new();
        for command in block {
            let check = README_COMMANDS
                .iter()
                .find(|(k, _)| k == command)
                .map(|(_, c)| *c)
                .unwrap_or(Check::NotRun("unreachable: checked above"));
            let line = sandbox.replace(command);
            let mut shell = shell(&format!("exec {line}"), sandbox.dir.path());
            shell.env(
                "LEGATE_CP_ADMIN",
                format!("http://127.0.0.1:{}", sandbox.cp_admin),
            );
            shell.envs(exports.iter().map(|(k, v)| (k, v)));
            match check {
                Check::NotRun(reason) => {
                    assert!(!reason.is_empty(), "`{command}`: NotRun needs a reason");
                    eprintln!("README.md: not run: `{command}`: {reason}");
                    continue;
                }
                Check::Export => {
                    let assignment = line.strip_prefix("export ").unwrap_or(&line);
                    let (name, value) = assignment.split_once('=').unwrap_or_else(|| {
                        panic!("`{command}` is listed as Export but sets nothing")
                    });
                    let value = if value.starts_with('/') {
                        value.to_owned()
                    } else {
                        sandbox.dir.path().join(value).display().to_string()
                    };
                    exports.push((name.to_owned(), value));
                }
                Check::Exits0 => {
                    let ran = run(&mut shell);
                    assert!(
                        ran.ok(),
                        "README.md: `{command}` (run as `{line}`) failed\n{}\nservers of its block: {:?}",
                        ran.describe(),
                        servers.iter().map(|(c, _)| c).collect::<Vec<_>>()
                    );
                }
                Check::Serves { url, status } => {
                    let mut child = shell
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap_or_else(|error| panic!("cannot start `{line}`: {error}"));
                    let output = Some([drain(child.stdout.take()), drain(child.stderr.take())]);
                    let mut server = Server { child, output };
                    let url = sandbox.replace(url);
                    let deadline = Instant::now() + COMMAND_TIMEOUT;
                    let mut last = None;
                    loop {
                        let exited = server.child.try_wait().ok().flatten();
                        if exited.is_none() {
                            last = http_status(&url);
                            if last == Some(status) {
                                break;
                            }
                        }
                        assert!(
                            exited.is_none() && Instant::now() < deadline,
                            "README.md: `{command}` (run as `{line}`) should serve {url} with \
                             {status}; {}, last answer {last:?}\n{}",
                            match exited {
                                Some(s) => format!("it exited ({s})"),
                                None => format!("nothing after {COMMAND_TIMEOUT:?}"),
                            },
                            server.output()
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    servers.push((command.clone(), server));
                }
            }
            ran_count += 1;
        }
        // Servers must have kept running through their block.
        for (command, mut server) in servers {
            if let Some(status) = server.child.try_wait().ok().flatten() {
                panic!(
                    "README.md: `{command}` exited ({status}) before its block ended\n{}",
                    server.output()
                );
            }
        }
    }
    assert!(ran_count >= 8, "only {ran_count} README commands ran");
}
