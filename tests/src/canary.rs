//! Canary rollouts end to end: a fleet of proxies (legate and real Envoy) configured by one
//! legate-cp and reporting their load to it every second, payments v1 and v2 as demo
//! upstreams whose failure ratio is set at runtime, traffic loops bounded in count and time,
//! and readers of the rollout status JSON (`GET /v1/rollouts/{service}`).
//!
//! Every process is killed by its own PID when the [`Fleet`] drops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::client::HttpClient;
use crate::cp::ControlPlane;
use crate::peers::{Envoy, EnvoyAds};
use crate::process::TempDir;
use crate::xds_server::Mode;
use crate::{FaultSettings, Legate, Protocol, Upstream, XdsFlags, eventually};

/// The service every rollout here shifts.
pub const SERVICE: &str = "payments";

/// How long a fleet gets until every proxy listens and reports both versions' clusters.
const FLEET_READY_TIMEOUT: Duration = Duration::from_secs(45);

/// The mesh: payments v1 at 100 %, v2 at 0 % (its cluster exists, so every proxy reports
/// it from the start), no retries, so what a proxy reports is what the client sees.
pub fn mesh(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: {SERVICE}
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {v1}}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: {v2}}}]}}
    route: {{prefix: /{SERVICE}/, rewrite: /, timeout: 5s}}
"#
    )
}

/// One proxy of the fleet.
pub enum Proxy {
    Legate(Legate),
    Envoy(Envoy),
}

impl Proxy {
    pub fn kind(&self) -> &'static str {
        match self {
            Proxy::Legate(_) => "legate",
            Proxy::Envoy(_) => "envoy",
        }
    }

    /// Requests this proxy sent to the cluster of `version` that got a response (its own
    /// counter), to check that it carried traffic to that version.
    pub async fn upstream_requests(&self, version: &str) -> u64 {
        let cluster = format!("{SERVICE}-{version}");
        match self {
            Proxy::Envoy(envoy) => envoy
                .stat(&format!("cluster.{cluster}.upstream_rq_total"))
                .await
                .unwrap_or(0),
            Proxy::Legate(legate) => {
                let metrics = legate.metrics().await;
                metrics.get_or_zero(
                    "legate_upstream_requests_total",
                    &[("cluster", cluster.as_str())],
                ) as u64
            }
        }
    }
}

/// legate-cp, payments v1 and v2, and the proxies, each known by its node id.
pub struct Fleet {
    pub cp: ControlPlane,
    pub v1: Upstream,
    pub v2: Upstream,
    /// Node id, proxy, and the URL of `/payments/charge` through it.
    pub proxies: Vec<(String, Proxy, String)>,
    _dir: TempDir,
}

impl Fleet {
    /// Starts legate-cp (LRS every second), the two upstreams (each with a control port), a
    /// legate per id of `legates` and an Envoy (SotW ADS, LRS to legate-cp) per id of
    /// `envoys`. Returns once every proxy listens and legate-cp has a report from every Envoy
    /// naming both clusters: Envoy starts counting a cluster only at the first reporting
    /// period after it learnt it (tests/tests/lrs.rs, `envoy_reports_to_legate_cp`), so
    /// traffic sent before then would never be reported. legate needs no such wait: it
    /// reports what was sent since its last report, even from before its stream was up.
    pub async fn start(legates: &[&str], envoys: &[&str]) -> Fleet {
        let v1 = Upstream::start_with_control(SERVICE, "v1", Protocol::Auto).await;
        let v2 = Upstream::start_with_control(SERVICE, "v2", Protocol::Auto).await;
        let dir = TempDir::new("canary-fleet");
        let config = dir.write("mesh.yaml", &mesh(v1.addr(), v2.addr()));
        let cp =
            ControlPlane::start_with(&config, &dir.path().join("data"), &["--lrs-interval", "1s"])
                .await;
        let mut proxies = Vec::new();
        for id in legates {
            let flags = XdsFlags::new(&cp.url(), Mode::Sotw).node(id, "web");
            let legate = Legate::start_xds(&flags).await;
            let url = legate.url("outbound", &format!("/{SERVICE}/charge")).await;
            proxies.push(((*id).to_owned(), Proxy::Legate(legate), url));
        }
        for id in envoys {
            let envoy = Envoy::start_ads_lrs(cp.xds, EnvoyAds::Sotw, id, "web").await;
            let addr = envoy.listener("outbound").await;
            let url = format!("http://{addr}/{SERVICE}/charge");
            proxies.push(((*id).to_owned(), Proxy::Envoy(envoy), url));
        }
        let fleet = Fleet {
            cp,
            v1,
            v2,
            proxies,
            _dir: dir,
        };
        fleet.wait_reporting(FLEET_READY_TIMEOUT).await;
        fleet
    }

    /// The node ids, sorted.
    pub fn node_ids(&self) -> BTreeSet<String> {
        self.proxies.iter().map(|(id, _, _)| id.clone()).collect()
    }

    /// The `/payments/charge` URL through every proxy.
    pub fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(|(_, _, url)| url.clone()).collect()
    }

    /// Waits until `GET /v1/load` shows every Envoy reporting both versions' clusters. Before
    /// any traffic, only Envoys count: Envoy names every cluster it has in its reports, idle
    /// or not, while legate leaves idle clusters out (crates/legate-xds/src/lrs.rs).
    pub async fn wait_reporting(&self, timeout: Duration) {
        let envoys = self
            .proxies
            .iter()
            .filter(|(_, p, _)| matches!(p, Proxy::Envoy(_)))
            .count() as u64;
        eventually(
            timeout,
            "every Envoy reporting payments v1 and v2",
            || async {
                let load = self
                    .cp
                    .get_json(&format!("/v1/load?service={SERVICE}"))
                    .await?;
                let reporting: BTreeMap<String, u64> = load["services"][0]["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| {
                        Some((
                            v["version"].as_str()?.to_owned(),
                            v["nodes_reporting"].as_u64()?,
                        ))
                    })
                    .collect();
                if ["v1", "v2"]
                    .iter()
                    .all(|v| reporting.get(*v).copied().unwrap_or(0) >= envoys)
                {
                    Ok(())
                } else {
                    Err(format!("{reporting:?}, {envoys} Envoys: {load}"))
                }
            },
        )
        .await;
    }

    /// Makes v2 answer `fail_ratio` of its requests with a 503 (0 heals it).
    pub async fn v2_fails(&self, fail_ratio: f64) {
        self.v2
            .set_faults(&FaultSettings {
                fail_ratio: Some(fail_ratio),
                ..FaultSettings::default()
            })
            .await;
    }

    /// Waits until `n` requests through every proxy are all answered by `version` (polls
    /// for at most `timeout`): the proxies have the weights a rollout left.
    pub async fn wait_all_served_by(&self, version: &str, n: usize, timeout: Duration) {
        for (id, _, url) in &self.proxies {
            eventually(
                timeout,
                &format!("{id} sending every request to {version}"),
                || async {
                    let served = versions_served(url, n).await;
                    if served.keys().eq([version].iter()) {
                        Ok(())
                    } else {
                        Err(format!("{n} requests through {id}: {served:?}"))
                    }
                },
            )
            .await;
        }
    }

    /// `legatectl canary ARGS...` against this legate-cp: (success, stdout, stderr).
    pub fn canary(&self, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["canary"];
        full.extend_from_slice(args);
        self.cp.ctl(&full)
    }

    /// `POST /v1/rollouts/payments` with `body` (`{"to": "v2", "steps": [...], ...}`): the
    /// status of the rollout started, or the answer's status and body.
    pub async fn start_rollout(
        &self,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let r = self
            .cp
            .json(
                "POST",
                &format!("/v1/rollouts/{SERVICE}"),
                &[
                    ("authorization", &self.cp.bearer()),
                    ("content-type", "application/json"),
                ],
                crate::client::full(body.to_string()),
            )
            .await;
        if r.status.as_u16() != 200 {
            return Err(format!(
                "POST /v1/rollouts/{SERVICE} {body}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("POST /v1/rollouts/{SERVICE}: {e}"))
    }

    /// `GET /v1/rollouts/payments`.
    pub async fn rollout(&self) -> Result<serde_json::Value, String> {
        self.cp.get_json(&format!("/v1/rollouts/{SERVICE}")).await
    }

    /// Polls the rollout's status until it has one of `states`; panics with the last status
    /// after `timeout`, or at once when it reaches another final state.
    pub async fn wait_state(&self, states: &[&str], timeout: Duration) -> serde_json::Value {
        eventually(
            timeout,
            &format!("rollout of {SERVICE} in state {states:?}"),
            || async {
                let status = self.rollout().await?;
                let state = status["state"].as_str().unwrap_or_default();
                if states.contains(&state) {
                    return Ok(status);
                }
                assert!(
                    !is_final(state),
                    "the rollout ended {state}, not {states:?}: {status:#}"
                );
                Err(format!("{state}: {status}"))
            },
        )
        .await
    }

    /// Every proxy's own count of requests it sent to `version`'s cluster.
    pub async fn upstream_requests(&self, version: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (id, proxy, _) in &self.proxies {
            counts.insert(id.clone(), proxy.upstream_requests(version).await);
        }
        counts
    }
}

/// `legatectl canary status payments --watch` running with its output piped (not a
/// terminal: one frame per change), killed by its PID if it is still running on drop.
pub struct Watch {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Fleet {
    /// Starts `legatectl canary status payments --watch` against this legate-cp.
    pub fn watch(&self) -> Watch {
        let mut command = std::process::Command::new(crate::cp::bin("legatectl"));
        command
            .env_remove("LEGATE_CP_TOKEN")
            .env_remove("LEGATE_CP_TOKEN_FILE")
            .env_remove("LEGATE_CP_ADMIN")
            .arg("--server")
            .arg(self.cp.admin_url());
        if let Some(file) = self.cp.token_file() {
            command.arg("--token-file").arg(file);
        }
        let mut child = command
            .args(["canary", "status", SERVICE, "--watch"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start legatectl: {error}"));
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut out, &mut text);
                text
            })
        });
        Watch { child, stdout }
    }
}

impl Watch {
    /// Waits (polling, at most `timeout`) for the watch to end on its own; returns whether it
    /// exited successfully and what it printed. Killed by its PID at the deadline.
    pub async fn finish(mut self, timeout: Duration) -> (Option<bool>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                break Some(status.success());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let out = self
            .stdout
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (status, out)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `progressing`, `paused` and `holding` are not final; the others are.
pub fn is_final(state: &str) -> bool {
    matches!(state, "promoted" | "rolled_back" | "aborted")
}

/// The versions answering `n` requests to `url` (a failed answer counts as `status N`).
pub async fn versions_served(url: &str, n: usize) -> BTreeMap<String, usize> {
    let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let who = answered_by(&http, url).await;
        *served.entry(who).or_insert(0) += 1;
    }
    served
}

/// The version that answered one request (from the demo upstream's echo), or `status N`,
/// or `error: ...` when no answer came.
async fn answered_by(http: &HttpClient, url: &str) -> String {
    match http
        .try_request("GET", url, &[], crate::client::empty())
        .await
    {
        Ok(r) if r.status.is_success() => serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|echo| echo["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unparsable answer".to_owned()),
        Ok(r) => format!("status {}", r.status.as_u16()),
        Err(error) => format!("error: {error}"),
    }
}

/// The weights of a status: version to percent.
pub fn weights(status: &serde_json::Value) -> BTreeMap<String, u64> {
    status["weights"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(v, w)| Some((v.clone(), w.as_u64()?)))
        .collect()
}

/// The decisions of a status with this verdict (`pass`, `fail`, `inconclusive`, `manual`).
pub fn decisions<'a>(status: &'a serde_json::Value, verdict: &str) -> Vec<&'a serde_json::Value> {
    status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["verdict"] == verdict)
        .collect()
}

/// The node ids a decision records an ACKed version for (`-`, none yet, left out).
pub fn acked_nodes(decision: &serde_json::Value) -> BTreeSet<String> {
    decision["acked"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, version)| version.as_str().is_some_and(|v| !v.is_empty() && v != "-"))
        .map(|(node, _)| node.clone())
        .collect()
}

/// A traffic loop's limits: it stops at whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct TrafficLimits {
    /// Requests in all, over every URL.
    pub max_requests: u64,
    pub max_duration: Duration,
    /// The pause after each round (one request per URL): the pace, not a synchronisation.
    pub pause: Duration,
}

/// What a traffic loop saw: per URL, answers per version (or `status N`, `error: ...`).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub per_url: BTreeMap<String, BTreeMap<String, u64>>,
    /// Why the loop ended: `stopped`, `max requests`, `max duration`.
    pub ended: &'static str,
}

impl Tally {
    /// Answers from `who` (a version, or `status 503`) over every URL.
    pub fn count(&self, who: &str) -> u64 {
        self.per_url.values().filter_map(|m| m.get(who)).sum()
    }
}

/// Requests sent round-robin to some URLs in a background task, until stopped or a limit.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

impl Traffic {
    pub fn start(urls: Vec<String>, limits: TrafficLimits) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = HttpClient::http1().with_timeout(Duration::from_secs(5));
            let started = Instant::now();
            let mut tally = Tally::default();
            tally.ended = loop {
                if flag.load(Ordering::Relaxed) {
                    break "stopped";
                }
                if started.elapsed() >= limits.max_duration {
                    break "max duration";
                }
                if tally.sent >= limits.max_requests {
                    break "max requests";
                }
                for url in &urls {
                    let who = answered_by(&http, url).await;
                    *tally
                        .per_url
                        .entry(url.clone())
                        .or_default()
                        .entry(who)
                        .or_insert(0) += 1;
                    tally.sent += 1;
                }
                tokio::time::sleep(limits.pause).await;
            };
            tally
        });
        Traffic { stop, task }
    }

    /// Still sending (no limit reached yet).
    pub fn running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the loop and returns its tally.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .unwrap_or_else(|error| panic!("the traffic loop failed: {error}"))
    }
}
