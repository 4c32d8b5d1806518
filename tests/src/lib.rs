//! End-to-end test harness for legate: real processes, real sockets.
//!
//! - [`Upstream`] runs the `legate-demo-upstream` binary (built from [`demo`]), which echoes
//!   what it received as JSON and can be told, per request, to delay, fail, reset, hang or
//!   send a large body.
//! - [`Legate`] runs the `legate` binary from a bootstrap YAML (see [`config`] for builders)
//!   and exposes its admin API; listener ports are discovered from `GET /listeners`.
//! - [`client`] is a bounded-time HTTP/1.1 and h2c client; [`metrics`] reads Prometheus text.
//!
//! Every child is killed by its own PID when its handle drops, and its captured output is
//! printed if the test is failing. Everything binds `127.0.0.1:0`, so tests run in parallel.

pub mod client;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod process;

use std::future::Future;
use std::time::{Duration, Instant};

pub use client::{HttpClient, HttpResponse, get, get_h2, request, request_h2};
pub use demo::{Counters, Echo, Protocol};
pub use metrics::Metrics;
pub use process::{Legate, Upstream, closed_port, run_legate};

/// Polls `check` every 50 ms until it returns `Ok`, for at most `timeout`; then panics with
/// `what` and the last `Err` message. For state that settles shortly after a response (metrics
/// updated after the body is sent, connections closing).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("{what}: still not true after {timeout:?}; last observation: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
