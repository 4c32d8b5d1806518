//! End-to-end test harness for legate: real processes, real sockets.
//!
//! - [`Upstream`] runs the `legate-demo-upstream` binary (built from [`demo`]), which echoes
//!   what it received as JSON and can be told, per request, to delay, fail, reset, hang or
//!   send a large body, and server-wide ([`FaultSettings`] via [`Upstream::set_faults`]) to
//!   fail a share of requests, refuse connections or fail its health checks; it keeps a
//!   ledger of `/charge` requests ([`Charges`]).
//! - [`Legate`] runs the `legate` binary from a bootstrap YAML (see [`config`] for builders)
//!   and exposes its admin API; listener ports are discovered from `GET /listeners`.
//! - [`cp::ControlPlane`] runs the `legate-cp` binary and drives its admin API (legatectl,
//!   JSON over HTTP or HTTPS, gRPC) with the right credentials; [`cp::Pki`] issues test
//!   certificates into files.
//! - [`etcd::EtcdCluster`] runs a real etcd cluster (Debian's `etcd`) of N members on
//!   loopback ports, freezes, kills and restarts members, and reads keys with `etcdctl`.
//! - [`client`] is a bounded-time HTTP/1.1 and h2c client; [`metrics`] reads Prometheus text.
//! - [`xds_server::XdsServer`] is a scriptable ADS control plane (SotW and delta) on a real
//!   socket; [`XdsFlags`] starts `legate` against it without a bootstrap file, and
//!   [`both_modes!`] runs one scenario once per ADS variant.
//!
//! Every child is killed by its own PID when its handle drops, and its captured output is
//! printed if the test is failing. Everything binds `127.0.0.1:0`, so tests run in parallel.

pub mod access_log;
pub mod canary;
pub mod cli_help;
pub mod client;
pub mod config;
pub mod cp;
pub mod demo;
pub mod etcd;
pub mod grpc;
pub mod metrics;
pub mod oauth;
pub mod otlp;
pub mod peers;
pub mod process;
pub mod prometheus;
pub mod raw;
pub mod resilience;
pub mod tls;
pub mod xds_server;

use std::future::Future;
use std::time::{Duration, Instant};

pub use client::{HttpClient, HttpResponse, get, get_h2, request, request_h2};
pub use demo::{Charges, Counters, Echo, FaultSettings, Protocol};
pub use metrics::Metrics;
pub use process::{
    Legate, ListeningProcess, Upstream, WaitFor, XdsFlags, closed_port, free_port, run_legate,
};
pub use xds_server::{Mode, XdsServer};

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

/// Turns `async fn NAME(mode: Mode)` scenarios into two tests each, `NAME::sotw` and
/// `NAME::delta`, so every xDS scenario runs over both ADS variants without copies.
///
/// ```ignore
/// async fn initial_config(mode: Mode) { /* ... */ }
/// both_modes!(initial_config);
/// ```
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sotw() {
                    super::$name($crate::xds_server::Mode::Sotw).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn delta() {
                    super::$name($crate::xds_server::Mode::Delta).await
                }
            }
        )+
    };
}
