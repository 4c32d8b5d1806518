//! Canary rollouts end to end: a fleet of proxies (legate and real Envoy) configured by one
//! legate-cp and reporting their load to it every second, payments v1 and v2 as demo
//! upstreams whose failure ratio is set at runtime, traffic loops bounded in count and time,
//! and readers of the rollout status JSON (`GET /v1/rollouts/{service}`).
//!
//! Every process is killed by its own PID when the [`Fleet`] drops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
/// it from the start), no retries, so what a proxy reports is what the client sees. `extra`
/// (indented lines ending in a newline, or empty) goes under the service: a `rollout:` block.
pub fn mesh(v1: SocketAddr, v2: SocketAddr, extra: &str) -> String {
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
{extra}"#
    )
}

/// legate-cp on `config` and `data`, load reports every second; on `xds` when given.
async fn start_cp(config: &Path, data: &Path, xds: Option<SocketAddr>) -> ControlPlane {
    let xds = xds.map(|a| a.to_string());
    let mut args = vec!["--lrs-interval", "1s"];
    if let Some(xds) = &xds {
        args.extend(["--xds-address", xds.as_str()]);
    }
    ControlPlane::start_with(config, data, &args).await
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
    /// Always set; taken only while [`restart_cp`](Self::restart_cp) replaces it.
    cp: Option<ControlPlane>,
    pub v1: Upstream,
    pub v2: Upstream,
    /// Node id, proxy, and the URL of `/payments/charge` through it.
    pub proxies: Vec<(String, Proxy, String)>,
    /// Holds the mesh file and legate-cp's data directory (`data`).
    pub dir: TempDir,
    /// The mesh file legate-cp watches.
    pub config: PathBuf,
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
        Fleet::start_with(legates, envoys, "").await
    }

    /// [`start`](Self::start) with `extra` under the service in the mesh file (see [`mesh`]).
    pub async fn start_with(legates: &[&str], envoys: &[&str], extra: &str) -> Fleet {
        let v1 = Upstream::start_with_control(SERVICE, "v1", Protocol::Auto).await;
        let v2 = Upstream::start_with_control(SERVICE, "v2", Protocol::Auto).await;
        let dir = TempDir::new("canary-fleet");
        let config = dir.write("mesh.yaml", &mesh(v1.addr(), v2.addr(), extra));
        let cp = start_cp(&config, &dir.path().join("data"), None).await;
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
            cp: Some(cp),
            v1,
            v2,
            proxies,
            dir,
            config,
        };
        fleet.wait_reporting(FLEET_READY_TIMEOUT).await;
        fleet
    }

    /// The fleet's legate-cp.
    pub fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("legate-cp is running")
    }

    /// SIGKILLs legate-cp (by its PID: dropping the handle kills it) and starts it again on
    /// the same mesh file, data directory and xDS address, so the proxies reconnect to it.
    pub async fn restart_cp(&mut self) {
        let old = self.cp.take().expect("legate-cp is running");
        let xds = old.xds;
        drop(old);
        self.cp = Some(start_cp(&self.config, &self.dir.path().join("data"), Some(xds)).await);
    }

    /// The legate proxies of the fleet, in start order.
    pub fn legates(&self) -> Vec<&Legate> {
        self.proxies
            .iter()
            .filter_map(|(_, p, _)| match p {
                Proxy::Legate(legate) => Some(legate),
                Proxy::Envoy(_) => None,
            })
            .collect()
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
                    .cp()
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
        self.cp().ctl(&full)
    }

    /// `POST path` on legate-cp's admin API with a JSON `body` and the bearer token: the
    /// answer's status and JSON body (`null` when it is not JSON).
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let cp = self.cp();
        let r = cp
            .json(
                "POST",
                path,
                &[
                    ("authorization", &cp.bearer()),
                    ("content-type", "application/json"),
                ],
                crate::client::full(body.to_string()),
            )
            .await;
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status.as_u16(), v)
    }

    /// `POST /v1/rollouts/payments` with `body` (`{"to": "v2", "steps": [...], ...}`): the
    /// status of the rollout started, or the answer's status and body.
    pub async fn start_rollout(
        &self,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let path = format!("/v1/rollouts/{SERVICE}");
        match self.post(&path, body).await {
            (200, v) if v.is_object() => Ok(v),
            (status, v) => Err(format!("POST {path} {body}: {status} {v}")),
        }
    }

    /// `GET /v1/rollouts/payments`.
    pub async fn rollout(&self) -> Result<serde_json::Value, String> {
        self.cp().get_json(&format!("/v1/rollouts/{SERVICE}")).await
    }

    /// Polls the rollout's status until `check` says yes and returns that status; panics
    /// with the last status after `timeout` (`what` names the wait).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(timeout, what, || async {
            let status = self.rollout().await?;
            if check(&status) {
                Ok(status)
            } else {
                Err(format!("{status:#}"))
            }
        })
        .await
    }

    /// Polls the rollout's status until it has one of `states`; panics with the last status
    /// after `timeout`, or at once when it reaches another final state.
    pub async fn wait_state(&self, states: &[&str], timeout: Duration) -> serde_json::Value {
        let what = format!("rollout of {SERVICE} in state {states:?}");
        self.wait_for(&what, timeout, |status| {
            let state = status["state"].as_str().unwrap_or_default();
            assert!(
                states.contains(&state) || !is_final(state),
                "the rollout ended {state}, not {states:?}: {status:#}"
            );
            states.contains(&state)
        })
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
            .arg(self.cp().admin_url());
        if let Some(file) = self.cp().token_file() {
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

/// The weight of `payments-VERSION` in the route a legate proxy runs now (its
/// `/config_dump`), out of 100: a route to one cluster alone (one version at 100 %, the
/// others at 0) is 100 or 0. `None` when the dump has no payments route.
pub async fn served_weight(legate: &Legate, version: &str) -> Option<u64> {
    fn find(v: &serde_json::Value, cluster: &str) -> Option<u64> {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                if let Some(route) = m.get("route").filter(|r| r.is_object()) {
                    if let Some(clusters) = route["weighted_clusters"]["clusters"].as_array() {
                        let w = clusters
                            .iter()
                            .find(|c| c["name"] == cluster)
                            .map_or(0, |c| c["weight"].as_u64().unwrap_or(0));
                        return Some(w);
                    }
                    if let Some(c) = route["cluster"].as_str()
                        && c.starts_with(&format!("{SERVICE}-"))
                    {
                        return Some(if c == cluster { 100 } else { 0 });
                    }
                }
                m.values().find_map(|v| find(v, cluster))
            }
            Value::Array(a) => a.iter().find_map(|v| find(v, cluster)),
            _ => None,
        }
    }
    find(
        &legate.admin_json("/config_dump").await,
        &format!("{SERVICE}-{version}"),
    )
}

/// Every decision of a status, in order: (step, verdict).
pub fn verdicts(status: &serde_json::Value) -> Vec<(u64, String)> {
    status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["step"].as_u64().unwrap_or(0),
                d["verdict"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
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
    /// How fast it sends: the pace, not a synchronisation.
    pub pace: Pace,
}

/// The pace of a traffic loop.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// A round of one request per URL, then this pause.
    PauseAfterRound(Duration),
    /// One request per tick of this period, to the URLs in turn (a fixed rate in all, as
    /// long as an answer takes less than a period).
    RequestEvery(Duration),
}

/// What a traffic loop saw: per URL, answers per version (or `status N`, `error: ...`).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub per_url: BTreeMap<String, BTreeMap<String, u64>>,
    /// Why the loop ended: `stopped`, `max requests`, `max duration`, `no URLs`.
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
            let mut tick = match limits.pace {
                Pace::RequestEvery(period) => Some(tokio::time::interval(period)),
                Pace::PauseAfterRound(_) => None,
            };
            let mut next = 0usize;
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
                let round = match &mut tick {
                    Some(tick) => {
                        tick.tick().await;
                        let Some(url) = urls.get(next % urls.len().max(1)) else {
                            break "no URLs";
                        };
                        next = next.wrapping_add(1);
                        std::slice::from_ref(url)
                    }
                    None => &urls[..],
                };
                for url in round {
                    let who = answered_by(&http, url).await;
                    *tally
                        .per_url
                        .entry(url.clone())
                        .or_default()
                        .entry(who)
                        .or_insert(0) += 1;
                    tally.sent += 1;
                }
                if let Pace::PauseAfterRound(pause) = limits.pace {
                    tokio::time::sleep(pause).await;
                }
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
