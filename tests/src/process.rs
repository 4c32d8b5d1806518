//! Child processes under test: the `legate` binary and the demo upstream.
//!
//! Each handle owns exactly one child and kills it by its PID when dropped (never by name).
//! Both children's stdout and stderr are captured; when a test panics while a handle is alive,
//! the handle prints the captured output, so the failure shows what the process said.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::client::{HttpClient, HttpResponse};
use crate::demo::{Counters, Protocol};
use crate::metrics::Metrics;
use crate::xds_server::Mode;

/// How long `legate` gets to become ready.
pub const LEGATE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the demo upstream gets to print its `listening on` line.
pub const UPSTREAM_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Captured output lines kept per process (the most recent ones).
const LOG_LINES_KEPT: usize = 4000;

// ---------------------------------------------------------------------------------------------
// Locating binaries

/// The directory cargo put this package's binaries in: the test executable lives in
/// `<target>/<profile>/deps/`, the binaries one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|error| {
        panic!("cannot locate the running test executable (needed to find binaries): {error}")
    });
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// The `legate` binary: `$LEGATE_BIN` if set, else `<target>/<profile>/legate`.
pub fn legate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LEGATE_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "LEGATE_BIN is set to {}, which is not a file",
            path.display()
        );
        return path;
    }
    let path = bin_dir().join("legate");
    assert!(
        path.is_file(),
        "the legate binary was not found at {}: it belongs to another package, so `cargo test \
         -p legate-tests` does not build it. Run `cargo build -p legate` first (the Makefile \
         does), or point LEGATE_BIN at a binary",
        path.display()
    );
    path
}

/// The `legate-demo-upstream` binary of this package.
pub fn demo_upstream_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_legate-demo-upstream") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return path;
        }
    }
    let path = bin_dir().join("legate-demo-upstream");
    assert!(
        path.is_file(),
        "the demo upstream binary was not found at {}: run `cargo build -p legate-tests --bins` \
         (cargo builds it automatically for this package's integration tests)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Temporary directories

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop unless a test is panicking
/// (then it is kept, and its path printed, for inspection).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for inspection)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Captured output

#[derive(Clone, Default)]
struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, line: String) {
        let mut lines = self.lock();
        if lines.len() == LOG_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn text(&self) -> String {
        let lines = self.lock();
        let mut out = String::new();
        if lines.len() == LOG_LINES_KEPT {
            out.push_str("[earlier lines dropped]\n");
        }
        for line in lines.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Drains `reader` line by line into the log on a thread; `on_line` sees each line first.
    fn capture(
        &self,
        reader: impl Read + Send + 'static,
        stream: &'static str,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf));
                        let line = line.trim_end_matches(['\n', '\r']);
                        on_line(line);
                        log.push(format!("[{stream}] {line}"));
                    }
                }
            }
        });
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`) so captured logs read as text.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One spawned child, killed by PID on drop.
pub(crate) struct ChildProcess {
    label: String,
    command_line: String,
    child: Mutex<Child>,
    log: Log,
    /// Set once the output was already shown in a panic message.
    log_shown: bool,
}

impl ChildProcess {
    /// Spawns `program args` with stdout and stderr captured; `on_stdout` sees stdout lines.
    pub(crate) fn spawn(
        label: &str,
        program: &Path,
        args: &[OsString],
        on_stdout: impl FnMut(&str) + Send + 'static,
    ) -> ChildProcess {
        let command_line = std::iter::once(program.as_os_str().to_owned())
            .chain(args.iter().cloned())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {label} ({command_line}): {error}"));
        let log = Log::default();
        if let Some(stdout) = child.stdout.take() {
            log.capture(stdout, "stdout", on_stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            log.capture(stderr, "stderr", |_| {});
        }
        let age = std::fs::metadata(program)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|age| format!(" (binary built {}s ago)", age.as_secs()))
            .unwrap_or_default();
        ChildProcess {
            label: format!("{label} (pid {})", child.id()),
            command_line: format!("{command_line}{age}"),
            child: Mutex::new(child),
            log,
            log_shown: false,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.lock().id()
    }

    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        self.lock().try_wait().ok().flatten()
    }

    /// Everything the process printed so far (both streams, interleaved by arrival).
    pub(crate) fn output(&self) -> String {
        self.log.text()
    }

    /// A block describing the process for failure messages.
    pub(crate) fn describe(&self) -> String {
        let state = match self.try_wait() {
            Some(status) => format!("exited: {status}"),
            None => "still running".to_owned(),
        };
        format!(
            "{} [{state}]\ncommand: {}\n----- output -----\n{}------------------",
            self.label,
            self.command_line,
            self.output()
        )
    }

    pub(crate) fn sigterm(&self) {
        send_signal(self.pid(), "TERM", &self.label);
    }

    pub(crate) async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`wait_exit`](Self::wait_exit), panicking (with `who` and the output) after `timeout`.
    pub(crate) async fn exited_within(&self, timeout: Duration, who: &str) -> ExitStatus {
        match self.wait_exit(timeout).await {
            Some(status) => status,
            None => panic!("{who} did not exit within {timeout:?}\n{}", self.describe()),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // `Child::kill` sends SIGKILL to this child's PID only.
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        drop(child);
        if std::thread::panicking() && !self.log_shown {
            eprintln!("\n===== {} =====\n{}", self.label, self.describe());
        }
    }
}

/// Reads `/proc/PID/status` field `field` (e.g. `VmHWM`), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{path} has no {field} line:\n{status}"));
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse {field} in {path}: {line:?}"));
    kib * 1024
}

// ---------------------------------------------------------------------------------------------
// The demo upstream

/// A `legate-demo-upstream` process.
pub struct Upstream {
    process: ChildProcess,
    addr: SocketAddr,
    name: String,
    protocol: Protocol,
}

impl Upstream {
    /// Starts the demo upstream on `127.0.0.1:0` and waits for its `listening on` line.
    pub async fn start(name: &str, version: &str, protocol: Protocol) -> Upstream {
        Upstream::start_with_args(name, version, protocol, &[]).await
    }

    /// [`start`](Self::start) with extra command-line arguments (e.g. `["--delay", "300ms"]`).
    pub async fn start_with_args(
        name: &str,
        version: &str,
        protocol: Protocol,
        extra_args: &[&str],
    ) -> Upstream {
        // `--listen ADDR` among the extra arguments (a restart on the same address) replaces
        // the default `127.0.0.1:0`.
        let listen = if extra_args.contains(&"--listen") {
            None
        } else {
            Some(["--listen", "127.0.0.1:0"])
        };
        let mut args: Vec<OsString> = listen
            .into_iter()
            .flatten()
            .chain([
                "--name",
                name,
                "--version",
                version,
                "--protocol",
                protocol.as_arg(),
            ])
            .map(OsString::from)
            .collect();
        args.extend(extra_args.iter().map(OsString::from));

        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let mut tx = Some(tx);
        let mut process = ChildProcess::spawn(
            &format!("demo upstream {name:?}"),
            &demo_upstream_bin(),
            &args,
            move |line| {
                if let Some(addr) = line.strip_prefix("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
            },
        );
        let addr = match tokio::time::timeout(UPSTREAM_START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                // Give the process a moment to be reaped so the status is shown.
                let _ = process.wait_exit(Duration::from_millis(500)).await;
                process.log_shown = true;
                panic!(
                    "demo upstream closed stdout without printing `listening on ADDR`\n{}",
                    process.describe()
                )
            }
            Err(_) => {
                process.log_shown = true;
                panic!(
                    "demo upstream printed no `listening on ADDR` line within {:?}\n{}",
                    UPSTREAM_START_TIMEOUT,
                    process.describe()
                )
            }
        };
        let addr: SocketAddr = addr.parse().unwrap_or_else(|error| {
            panic!("demo upstream printed an unparsable address {addr:?}: {error}")
        });
        Upstream {
            process,
            addr,
            name: name.to_owned(),
            protocol,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://ADDR{path}` straight to this upstream (not through legate).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A client that speaks this upstream's protocol (h2c for an `http2` upstream).
    pub fn client(&self) -> HttpClient {
        match self.protocol {
            Protocol::Http2 => HttpClient::h2c(),
            Protocol::Auto | Protocol::Http1 => HttpClient::http1(),
        }
    }

    /// The upstream's own `/counters` (queried directly, on the control port when there is
    /// one; not counted by it).
    pub async fn counters(&self) -> Counters {
        self.control_json("/counters").await
    }

    /// Requests this upstream has seen (excluding `/counters`).
    pub async fn requests(&self) -> u64 {
        self.counters().await.requests
    }

    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Waits for the process to exit; panics (showing its output) after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        self.process.exited_within(timeout, "demo upstream").await
    }

    /// Peak resident memory (`VmHWM`) in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_bytes(self.pid(), "VmHWM")
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

// ---------------------------------------------------------------------------------------------
// Other servers

/// Any server process that prints `listening on ADDR` once it serves (for example the Python
/// TLS server of `tests/interop/tls_server.py`); killed by its PID on drop.
pub struct ListeningProcess {
    process: ChildProcess,
    addr: SocketAddr,
}

impl ListeningProcess {
    /// Starts `program args` and waits (bounded) for its `listening on ADDR` line.
    pub async fn start(label: &str, program: &Path, args: &[&str]) -> ListeningProcess {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let mut tx = Some(tx);
        let mut process = ChildProcess::spawn(label, program, &args, move |line| {
            if let Some(addr) = line.strip_prefix("listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_owned());
            }
        });
        let addr = match tokio::time::timeout(UPSTREAM_START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = process.wait_exit(Duration::from_millis(500)).await;
                process.log_shown = true;
                panic!(
                    "{label} printed no `listening on ADDR` line within {:?}\n{}",
                    UPSTREAM_START_TIMEOUT,
                    process.describe()
                )
            }
        };
        let addr = addr.parse().unwrap_or_else(|error| {
            panic!("{label} printed an unparsable address {addr:?}: {error}")
        });
        ListeningProcess { process, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Waits for the process to exit; panics (showing its output) after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        self.process.exited_within(timeout, "the process").await
    }
}

// ---------------------------------------------------------------------------------------------
// legate

#[cfg(test)]
mod tests {
    #[test]
    fn strips_ansi() {
        assert_eq!(
            super::strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "time  INFO x"
        );
    }
}

#[derive(Debug, Deserialize)]
struct ListenerInfo {
    name: String,
    address: String,
}

/// A running `legate` process.
pub struct Legate {
    process: ChildProcess,
    admin: SocketAddr,
    config_path: Option<PathBuf>,
    // Dropped after the process (field order), so the files outlive it.
    dir: TempDir,
}

/// What [`Legate::launch`] waits for before returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// The admin address file and `GET /ready` = 200.
    Ready,
    /// Only the admin address file (for tests of a proxy that must not become ready).
    Admin,
}

impl Legate {
    /// Writes `config_yaml` to a temp file and starts
    /// `legate --config FILE --admin-address 127.0.0.1:0 --address-file PATH`, then waits
    /// (up to [`LEGATE_START_TIMEOUT`]) for the admin address file and `GET /ready` = 200.
    pub async fn start(config_yaml: &str) -> Legate {
        Legate::start_with_args(config_yaml, &[]).await
    }

    /// [`start`](Self::start) with extra command-line arguments (e.g. `--node-id`).
    pub async fn start_with_args(config_yaml: &str, extra_args: &[&str]) -> Legate {
        Legate::launch(Some(config_yaml), extra_args, WaitFor::Ready).await
    }

    /// Starts a legate configured by xDS alone (no `--config`): see [`XdsFlags`]. Waits for
    /// `/ready`.
    pub async fn start_xds(flags: &XdsFlags) -> Legate {
        let args = flags.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Legate::launch(None, &args, WaitFor::Ready).await
    }

    /// [`start_xds`](Self::start_xds) but returns once the admin server listens, ready or not.
    pub async fn spawn_xds(flags: &XdsFlags) -> Legate {
        let args = flags.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Legate::launch(None, &args, WaitFor::Admin).await
    }

    /// Starts `legate [--config FILE] --admin-address 127.0.0.1:0 --address-file PATH
    /// EXTRA...` and waits (up to [`LEGATE_START_TIMEOUT`]) for what `wait` says.
    pub async fn launch(config_yaml: Option<&str>, extra_args: &[&str], wait: WaitFor) -> Legate {
        let dir = TempDir::new("legate-test");
        let config_path = config_yaml.map(|yaml| dir.write("legate.yaml", yaml));
        let admin_path = dir.path().join("admin-address");
        let mut args: Vec<OsString> = Vec::new();
        if let Some(path) = &config_path {
            args.push("--config".into());
            args.push(path.clone().into());
        }
        args.extend([
            "--admin-address".into(),
            "127.0.0.1:0".into(),
            "--address-file".into(),
            admin_path.clone().into(),
        ]);
        args.extend(extra_args.iter().map(OsString::from));
        let mut process = ChildProcess::spawn("legate", &legate_bin(), &args, |_| {});

        let client = HttpClient::http1().with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + LEGATE_START_TIMEOUT;
        let mut admin: Option<SocketAddr> = None;
        let mut last = "the admin address file was never written".to_owned();
        let failure = loop {
            if let Some(status) = process.try_wait() {
                break format!("legate exited during startup ({status})");
            }
            if admin.is_none()
                && let Ok(text) = std::fs::read_to_string(&admin_path)
            {
                match address_in_file(&text, "admin") {
                    Some(addr) => admin = Some(addr),
                    None => {
                        last = format!(
                            "the address file {} holds {text:?}, not admin=ADDR",
                            admin_path.display()
                        )
                    }
                }
            }
            if let Some(addr) = admin {
                if wait == WaitFor::Admin {
                    return Legate {
                        process,
                        admin: addr,
                        config_path,
                        dir,
                    };
                }
                match client.try_get(&format!("http://{addr}/ready")).await {
                    Ok(response) if response.status == 200 => {
                        return Legate {
                            process,
                            admin: addr,
                            config_path,
                            dir,
                        };
                    }
                    Ok(response) => last = format!("GET /ready answered {}", response.describe()),
                    Err(error) => last = format!("GET /ready failed: {error:#}"),
                }
            }
            if Instant::now() >= deadline {
                break format!("legate was not ready within {LEGATE_START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        process.log_shown = true;
        let config = match (&config_path, config_yaml) {
            (Some(path), Some(yaml)) => format!("\n----- config {} -----\n{yaml}", path.display()),
            _ => String::new(),
        };
        panic!(
            "{failure}; last observation: {last}\n{}{config}",
            process.describe(),
        );
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The bootstrap file legate was started with, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The temp directory holding the config and the admin address file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `GET` on the admin API, panicking (with legate's output) on a transport error.
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        match HttpClient::http1()
            .with_timeout(Duration::from_secs(10))
            .try_get(&self.admin_url(path))
            .await
        {
            Ok(response) => response,
            Err(error) => panic!(
                "admin request GET {path} failed: {error:#}\n{}",
                self.process.describe()
            ),
        }
    }

    /// `GET path` on the admin API, asserting 200 and returning its JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let response = self.admin_get(path).await;
        assert_eq!(
            response.status,
            200,
            "admin GET {path}: {}",
            response.describe()
        );
        response.json()
    }

    /// The bound address of the listener called `name`, from `GET /listeners`.
    pub async fn listener_addr(&self, name: &str) -> SocketAddr {
        let response = self.admin_get("/listeners").await;
        assert_eq!(
            response.status,
            200,
            "admin GET /listeners: {}",
            response.describe()
        );
        let listeners: Vec<ListenerInfo> =
            serde_json::from_slice(&response.body).unwrap_or_else(|error| {
                panic!(
                    "GET /listeners is not a JSON list of {{name, address}} ({error}): {}",
                    response.describe()
                )
            });
        let listener = listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no listener named {name:?} in GET /listeners: {}",
                    response.text()
                )
            });
        let addr: SocketAddr = listener.address.parse().unwrap_or_else(|error| {
            panic!(
                "listener {name:?} has an unparsable address {:?}: {error}",
                listener.address
            )
        });
        assert_ne!(
            addr.port(),
            0,
            "listener {name:?} reports port 0: /listeners must show the bound port"
        );
        addr
    }

    /// The bound address of the listener called `name`, or `None` when `GET /listeners`
    /// does not list it (for listeners that come and go with xDS updates).
    pub async fn try_listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let response = self.admin_get("/listeners").await;
        let listeners: Vec<ListenerInfo> = serde_json::from_slice(&response.body).ok()?;
        listeners
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.address.parse().ok())
    }

    /// `http://LISTENER{path}` for the listener called `name`.
    pub async fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.listener_addr(listener).await)
    }

    /// The status of `GET /ready`.
    pub async fn ready_status(&self) -> u16 {
        self.admin_get("/ready").await.status.as_u16()
    }

    /// Waits until `GET /ready` answers 200; panics (showing legate's output) after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.ready_status().await;
            if status == 200 {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "legate was not ready within {timeout:?} (GET /ready = {status})\n{}",
                    self.process.describe()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A scrape of `/stats/prometheus`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let response = self.admin_get("/stats/prometheus").await;
        assert_eq!(
            response.status,
            200,
            "admin GET /stats/prometheus: {}",
            response.describe()
        );
        Metrics::parse(&response.text())
    }

    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Whether the process has exited, without waiting.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.process.try_wait()
    }

    /// Waits for legate to exit; panics (showing its output) after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        self.process.exited_within(timeout, "legate").await
    }

    /// Peak resident memory (`VmHWM` from `/proc/PID/status`) in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        proc_status_bytes(self.pid(), "VmHWM")
    }

    /// What legate printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// The process description (state, command line, output) for assertion messages.
    pub fn describe(&self) -> String {
        self.process.describe()
    }
}

// ---------------------------------------------------------------------------------------------
// Flags of an xDS-configured legate

/// Command-line flags for a legate configured by xDS alone: node, control planes, mode,
/// cache directory, initial fetch timeout and backoff cap. Defaults suit tests: node
/// `test`/`tests`, a 1 s initial fetch timeout, a 1 s backoff cap and no cache.
#[derive(Clone, Debug)]
pub struct XdsFlags {
    pub node_id: String,
    pub node_cluster: String,
    /// `http://127.0.0.1:PORT`, tried in order.
    pub servers: Vec<String>,
    pub mode: Mode,
    pub cache_dir: Option<PathBuf>,
    pub initial_fetch_timeout: String,
    pub backoff_max: String,
    pub extra: Vec<String>,
}

impl XdsFlags {
    pub fn new(server_url: &str, mode: Mode) -> XdsFlags {
        XdsFlags {
            node_id: "test".to_owned(),
            node_cluster: "tests".to_owned(),
            servers: vec![server_url.to_owned()],
            mode,
            cache_dir: None,
            initial_fetch_timeout: "1s".to_owned(),
            backoff_max: "1s".to_owned(),
            extra: Vec::new(),
        }
    }

    /// Adds a failover server after the others.
    pub fn server(mut self, url: &str) -> Self {
        self.servers.push(url.to_owned());
        self
    }

    pub fn node(mut self, id: &str, cluster: &str) -> Self {
        self.node_id = id.to_owned();
        self.node_cluster = cluster.to_owned();
        self
    }

    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }

    pub fn initial_fetch_timeout(mut self, timeout: &str) -> Self {
        self.initial_fetch_timeout = timeout.to_owned();
        self
    }

    pub fn backoff_max(mut self, max: &str) -> Self {
        self.backoff_max = max.to_owned();
        self
    }

    /// Any other flag (e.g. `--log-level`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// The flags, in order.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--node-id".to_owned(),
            self.node_id.clone(),
            "--node-cluster".to_owned(),
            self.node_cluster.clone(),
        ];
        for server in &self.servers {
            args.push("--xds-server".to_owned());
            args.push(server.clone());
        }
        args.extend([
            "--xds-mode".to_owned(),
            self.mode.as_arg().to_owned(),
            "--initial-fetch-timeout".to_owned(),
            self.initial_fetch_timeout.clone(),
            "--xds-backoff-max".to_owned(),
            self.backoff_max.clone(),
        ]);
        if let Some(dir) = &self.cache_dir {
            args.push("--cache-dir".to_owned());
            args.push(dir.display().to_string());
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot runs

/// The result of a finished one-shot run.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `legate ARGS` to completion (killing it and panicking after `timeout`).
pub fn run_legate(args: &[&str], timeout: Duration) -> Finished {
    let mut command = Command::new(legate_bin());
    command.args(args);
    let output = run_bounded(command, timeout);
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `command` to completion with stdin closed and both output streams captured; kills it
/// (by its PID) and panics, naming the command, when it has not finished after `timeout`.
pub fn run_bounded(mut command: Command, timeout: Duration) -> std::process::Output {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {shown}: {error}"));
    let stdout = read_all_on_thread(child.stdout.take());
    let stderr = read_all_on_thread(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn read_all_on_thread(
    reader: Option<impl Read + Send + 'static>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut reader) = reader {
            let _ = reader.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Sends `SIGNAL` (`TERM`, `STOP`, `CONT`, ...) to `pid` with `kill(1)`, panicking (naming
/// `who`) when that fails. Only ever called with the PID of a child a handle owns.
pub fn send_signal(pid: u32, signal: &str, who: &str) {
    let pid = pid.to_string();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap_or_else(|error| panic!("cannot run `kill -{signal} {pid}`: {error}"));
    assert!(
        status.success(),
        "`kill -{signal} {pid}` failed ({status}) for {who}"
    );
}

/// The address named `name` in an address file (`--address-file` of legate and legate-cp:
/// `NAME=ADDR` lines), read with the binaries' own parser.
pub fn address_in_file(text: &str, name: &str) -> Option<SocketAddr> {
    legate_telemetry::cli::parse_address_file(text)
        .ok()?
        .into_iter()
        .find_map(|(n, addr)| (n == name).then_some(addr))
}

/// A 127.0.0.1 address free at the time of the call (bound, then released), for a process
/// to bind next. Unlike [`closed_port`] nothing keeps it reserved; see [`free_ports`].
pub fn free_port() -> SocketAddr {
    let [port] = free_ports::<1>();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `N` distinct 127.0.0.1 ports, each free when checked, for processes under test to bind
/// later. They are taken from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port the kernel picked for a `:0` bind is handed out
/// again to the next `:0` bind or outgoing connection of any parallel test once released,
/// which once made a demo upstream fail to listen. Ports below the range are only ever taken
/// by explicit choice; a counter keeps this process from choosing one twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().clamp(LOW_PORT + 1024, 65535) as u32;
    let span = low - LOW_PORT as u32;
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Spread parallel test processes over the span.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        let _ = NEXT.compare_exchange(0, seed % span + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut ports = [0u16; N];
    let mut found = 0;
    for _ in 0..span {
        if found == N {
            break;
        }
        let candidate = (LOW_PORT as u32 + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            ports[found] = candidate;
            found += 1;
        }
    }
    assert_eq!(found, N, "fewer than {N} free ports below {low}");
    ports
}

/// The first port of tests' explicit choices: above the well-known ports and the demo's own
/// defaults (15001, 18081-18085, ...).
const LOW_PORT: u16 = 20000;

/// The lowest port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// An address on 127.0.0.1 where nothing listens: a socket bound but never listening, kept
/// open for the rest of the test process so no other process can be given the port (a port
/// bound then released can be handed to a parallel test's upstream).
pub fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4()
        .unwrap_or_else(|error| panic!("cannot create a socket: {error}"));
    socket
        .bind(
            "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|error| panic!("address: {error}")),
        )
        .unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:0: {error}"));
    let addr = socket
        .local_addr()
        .unwrap_or_else(|error| panic!("cannot read a bound address: {error}"));
    // Deliberately leaked: the reservation must outlive every use of the address.
    std::mem::forget(socket);
    addr
}
