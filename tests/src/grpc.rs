//! grpcio as an independent peer: `tests/interop/grpc_peer.py` (in the venv of `make
//! peers`, `$LEGATE_PEERS_VENV`) serving a test service, and as a client making one call and
//! printing what it saw as JSON. The server prints one line per call it received, so a test
//! counts attempts from the upstream's side.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::ListeningProcess;
use crate::peers::{peers_python, repo_root};

/// Bound on one client call (process start, import of grpcio, the call).
const CALL_LIMIT: Duration = Duration::from_secs(30);

fn script() -> String {
    repo_root()
        .join("tests/interop/grpc_peer.py")
        .display()
        .to_string()
}

pub async fn grpc_server() -> ListeningProcess {
    let python = peers_python();
    ListeningProcess::start("grpc peer", &python, &[&script(), "serve"]).await
}

/// A server whose every unary call fails with `code` in a trailers-only response.
pub async fn failing_grpc_server(code: &str) -> ListeningProcess {
    let python = peers_python();
    ListeningProcess::start(
        "failing grpc peer",
        &python,
        &[&script(), "serve", "--fail-all", code],
    )
    .await
}

/// Calls of any method and key the server received.
pub fn all_calls(server: &ListeningProcess) -> usize {
    server
        .output()
        .lines()
        .filter(|l| l.starts_with("call "))
        .count()
}

/// What the grpcio client saw.
#[derive(Debug)]
pub struct Call {
    pub code: String,
    pub details: String,
    pub messages: Vec<String>,
    pub seconds: f64,
}

/// One call to `target` (h2c) with the grpcio client; `timeout` becomes its deadline (sent as
/// `grpc-timeout`).
pub async fn call(target: SocketAddr, method: &str, payload: &str, timeout: Option<f64>) -> Call {
    let mut cmd = std::process::Command::new(peers_python());
    cmd.arg(script())
        .args(["call", "--target", &target.to_string()])
        .args(["--method", method, "--payload", payload])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(t) = timeout {
        cmd.args(["--timeout", &t.to_string()]);
    }
    let mut child = cmd.spawn().expect("start the grpc client");
    // Its output is one short line, so the pipes cannot fill before it exits.
    let limit = tokio::time::Instant::now() + CALL_LIMIT;
    loop {
        if child.try_wait().expect("poll the grpc client").is_some() {
            break;
        }
        if tokio::time::Instant::now() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the grpc client did not finish within {CALL_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().expect("grpc client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "grpc client output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Call {
        code: v["code"].as_str().unwrap_or_default().to_owned(),
        details: v["details"].as_str().unwrap_or_default().to_owned(),
        messages: v["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        seconds: v["seconds"].as_f64().unwrap_or(f64::MAX),
    }
}

/// How many calls of `method` with `key` the server received.
pub fn calls(server: &ListeningProcess, method: &str, key: &str) -> usize {
    let prefix = format!("call {method} key={key} ");
    server
        .output()
        .lines()
        .filter(|l| l.contains(&prefix))
        .count()
}
