//! legate-cp replicas sharing their state in a real etcd cluster (Debian's etcd-server 3.4,
//! three members on loopback, tests/src/etcd.rs): admin changes made on one replica served
//! by all, concurrent changes kept or refused, the rollout controller on one elected leader
//! that another replaces when it dies, proxies failing over between replicas without a
//! failed request or a re-sent resource, and etcd unreachable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use legate_tests::canary::{Pace, Traffic, TrafficLimits};
use legate_tests::client::full;
use legate_tests::cp::ControlPlane;
use legate_tests::etcd::EtcdCluster;
use legate_tests::process::{TempDir, send_signal};
use legate_tests::{Legate, Mode, Protocol, Upstream, XdsFlags, eventually};

/// The leader's lease: long enough that a loaded CI machine does not lose it by accident,
/// short enough that a takeover is quick.
const LEASE: &str = "3s";
const TOKEN: &str = "ha-test-token-0123456789abcdef";

static PREFIXES: AtomicUsize = AtomicUsize::new(0);

/// payments and orders, each v1 at 100 % and v2 at 0 %.
fn mesh(p1: &Upstream, p2: &Upstream) -> String {
    format!(
        r#"
proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {a}}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: {b}}}]}}
    route: {{prefix: /payments/, rewrite: /, timeout: 5s}}
  - name: orders
    versions:
      - {{name: v1, weight: 100, endpoints: [{{address: {a}}}]}}
      - {{name: v2, weight: 0, endpoints: [{{address: {b}}}]}}
    route: {{prefix: /orders/, rewrite: /, timeout: 5s}}
"#,
        a = p1.addr(),
        b = p2.addr()
    )
}

/// An etcd cluster, the two upstreams, and legate-cp replicas on one mesh file and one etcd
/// prefix. A killed replica's slot is `None`.
struct Ha {
    /// First, so the replicas are killed before etcd when the test ends.
    replicas: Vec<Option<ControlPlane>>,
    etcd: EtcdCluster,
    /// payments' and orders' v1 and v2, kept running.
    _upstreams: (Upstream, Upstream),
    dir: TempDir,
    config: PathBuf,
    token: PathBuf,
    prefix: String,
}

impl Ha {
    async fn start(replicas: usize) -> Ha {
        let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
            .await
            .expect("etcd harness");
        let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
        let v2 = Upstream::start("payments", "v2", Protocol::Auto).await;
        let dir = TempDir::new("cp-ha");
        let config = dir.write("mesh.yaml", &mesh(&v1, &v2));
        let token = dir.write("token", TOKEN);
        set_private(&token);
        let prefix = format!(
            "/legate-test-{}-{}/",
            std::process::id(),
            PREFIXES.fetch_add(1, Ordering::SeqCst)
        );
        let mut ha = Ha {
            etcd,
            _upstreams: (v1, v2),
            dir,
            config,
            token,
            prefix,
            replicas: Vec::new(),
        };
        for i in 0..replicas {
            let cp = ha.start_replica(i).await;
            ha.replicas.push(Some(cp));
        }
        ha
    }

    async fn start_replica(&self, i: usize) -> ControlPlane {
        let data = self.dir.path().join(format!("data-{i}"));
        let (url, token, replica) = (
            self.etcd.url(),
            self.token.display().to_string(),
            format!("r{i}"),
        );
        ControlPlane::start_with(
            &self.config,
            &data,
            &[
                "--store",
                &url,
                "--etcd-prefix",
                &self.prefix,
                "--replica-id",
                &replica,
                "--leader-lease",
                LEASE,
                "--lrs-interval",
                "1s",
                "--admin-token-file",
                &token,
            ],
        )
        .await
    }

    fn cp(&self, i: usize) -> &ControlPlane {
        self.replicas[i].as_ref().expect("replica running")
    }

    /// SIGKILL replica `i` (by its PID: the handle's drop).
    fn kill(&mut self, i: usize) {
        drop(self.replicas[i].take());
    }

    /// The replica the `leader` key names, as an index.
    fn leader(&self) -> Option<usize> {
        let key = format!("{}leader", self.prefix);
        let out = self.etcd.etcdctl(&["get", &key, "--print-value-only"]);
        let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        name.strip_prefix('r')?.parse().ok()
    }

    async fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> usize {
        eventually(timeout, "a leader replica", || async {
            match self.leader() {
                Some(i) if Some(i) != not && self.replicas.get(i).is_some_and(Option::is_some) => {
                    Ok(i)
                }
                other => Err(format!("leader key names {other:?}")),
            }
        })
        .await
    }

    /// The audit trail in revision order: (revision, replica, term, what).
    fn audit(&self) -> Vec<(i64, String, i64, String)> {
        let mut entries: Vec<(i64, String, i64, String)> = self
            .etcd
            .get_prefix_json(&format!("{}audit/", self.prefix))
            .into_iter()
            .map(|kv| {
                let v: serde_json::Value =
                    serde_json::from_slice(&kv.value).expect("audit entry is JSON");
                (
                    kv.mod_revision,
                    v["replica"].as_str().unwrap_or_default().to_owned(),
                    v["term"].as_i64().unwrap_or_default(),
                    v["what"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        entries.sort();
        entries
    }

    /// `POST` a JSON body to replica `i`'s admin API: status and body.
    async fn post(
        &self,
        i: usize,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {TOKEN}");
        let r = self
            .cp(i)
            .json(
                "POST",
                path,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                full(body.to_string()),
            )
            .await;
        let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&r.body).into_owned())
        });
        (r.status.as_u16(), v)
    }

    async fn get(&self, i: usize, path: &str) -> Result<serde_json::Value, String> {
        self.cp(i).get_json(path).await
    }

    /// The weights replica `i` serves for `service`.
    async fn weights(&self, i: usize, service: &str) -> Result<BTreeMap<String, u64>, String> {
        let view = self.get(i, &format!("/v1/services/{service}")).await?;
        let fields = view["fields"].as_array().cloned().unwrap_or_default();
        let mut weights = BTreeMap::new();
        for f in fields.iter().filter(|f| f["served"] == true) {
            match f["field"].as_str() {
                Some("weights") => {
                    for (v, w) in f["value"].as_object().into_iter().flatten() {
                        weights.insert(v.clone(), w.as_u64().unwrap_or_default());
                    }
                }
                Some("versions") if weights.is_empty() => {
                    for v in f["value"].as_array().into_iter().flatten() {
                        weights.insert(
                            v["name"].as_str().unwrap_or_default().to_owned(),
                            v["weight"].as_u64().unwrap_or_default(),
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(weights)
    }

    /// The node ids connected to replica `i`.
    async fn nodes(&self, i: usize) -> Vec<String> {
        let nodes = self.get(i, "/v1/nodes").await.unwrap_or_default();
        nodes["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn set_private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

fn weights_of(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect()
}

/// A change made on one replica is served by every replica, with the same resource versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_is_served_by_all_with_the_same_versions() {
    let ha = Ha::start(3).await;
    let (status, body) = ha
        .post(
            1,
            "/v1/services/payments/weights",
            &serde_json::json!({"v1": 70, "v2": 30}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for i in 0..3 {
        eventually(
            Duration::from_secs(5),
            &format!("replica r{i} serving 70/30"),
            || async {
                let w = ha.weights(i, "payments").await?;
                (w == weights_of(&[("v1", 70), ("v2", 30)]))
                    .then_some(())
                    .ok_or(format!("{w:?}"))
            },
        )
        .await;
    }
    // The same snapshot: every resource of a node has the same version on every replica.
    let ha = &ha;
    let versions = |i: usize| async move {
        let r = ha
            .get(i, "/v1/nodes/any?cluster=web")
            .await
            .expect("node resources");
        r["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["version"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect::<BTreeMap<String, String>>()
    };
    let first = versions(0).await;
    assert!(first.len() >= 4, "resources of replica r0: {first:?}");
    for i in 1..3 {
        assert_eq!(
            versions(i).await,
            first,
            "replica r{i} serves other versions than r0"
        );
    }
    // One leader, which every replica's status and metrics agree on.
    let leader = ha.wait_leader(None, Duration::from_secs(10)).await;
    let mut leaders = Vec::new();
    for i in 0..3 {
        let mesh = ha.get(i, "/v1/mesh").await.expect("GET /v1/mesh");
        assert_eq!(mesh["store"]["kind"], "etcd", "{mesh}");
        assert_eq!(mesh["store"]["replica"], format!("r{i}"), "{mesh}");
        let metric = ha.cp(i).metrics().await.value("legate_cp_leader", &[]);
        assert_eq!(
            mesh["store"]["leader"] == true,
            metric == 1.0,
            "r{i}: {mesh} {metric}"
        );
        if metric == 1.0 {
            leaders.push(i);
        }
    }
    assert_eq!(leaders, vec![leader], "leaders: {leaders:?}");
    // The generation is the shared document's, the same everywhere.
    let generations: Vec<u64> = futures_gen(ha).await;
    assert!(
        generations.iter().all(|g| *g == generations[0]),
        "{generations:?}"
    );
}

async fn futures_gen(ha: &Ha) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..ha.replicas.len() {
        let mesh = ha.get(i, "/v1/mesh").await.expect("GET /v1/mesh");
        out.push(mesh["generation"].as_u64().unwrap_or(u64::MAX));
    }
    out
}

/// Two replicas changing weights at the same time: changes of different services are both
/// kept; of the same service, both are applied one after the other (the later one serves)
/// or one is refused with a conflict. Never a change reported applied and then lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_set_weights_on_two_replicas_are_kept_or_refused() {
    let ha = Ha::start(2).await;
    let mut refused = 0;
    for round in 1..=10u64 {
        // Different services at once: both kept.
        let (pa, pb) = (
            serde_json::json!({"v1": 100 - round, "v2": round}),
            serde_json::json!({"v1": round, "v2": 100 - round}),
        );
        let (a, b) = tokio::join!(
            ha.post(0, "/v1/services/payments/weights", &pa),
            ha.post(1, "/v1/services/orders/weights", &pb),
        );
        assert_eq!((a.0, b.0), (200, 200), "round {round}: {a:?} {b:?}");
        for i in 0..2 {
            eventually(Duration::from_secs(5), "both changes served", || async {
                let (p, o) = (
                    ha.weights(i, "payments").await?,
                    ha.weights(i, "orders").await?,
                );
                (p == weights_of(&[("v1", 100 - round), ("v2", round)])
                    && o == weights_of(&[("v1", round), ("v2", 100 - round)]))
                .then_some(())
                .ok_or(format!("r{i}: payments {p:?}, orders {o:?}"))
            })
            .await;
        }
        // The same service at once.
        let (wa, wb) = (
            serde_json::json!({"v1": 10 + round, "v2": 90 - round}),
            serde_json::json!({"v1": 60 + round, "v2": 40 - round}),
        );
        let (a, b) = tokio::join!(
            ha.post(0, "/v1/services/payments/weights", &wa),
            ha.post(1, "/v1/services/payments/weights", &wb),
        );
        let ok: Vec<(u64, &serde_json::Value)> = [(&a, &wa), (&b, &wb)]
            .into_iter()
            .filter_map(|((status, body), w)| match status {
                200 => Some((body["generation"].as_u64().expect("generation"), w)),
                409 => {
                    let message = body.to_string();
                    assert!(message.contains("another replica"), "refusal: {message}");
                    None
                }
                other => panic!("round {round}: status {other}: {body}"),
            })
            .collect();
        assert!(!ok.is_empty(), "round {round}: both refused: {a:?} {b:?}");
        refused += 2 - ok.len();
        // The one applied last (highest generation) is what serves, on both replicas.
        let (_, last) = ok.iter().max_by_key(|(g, _)| *g).expect("one applied");
        let want: BTreeMap<String, u64> = serde_json::from_value((*last).clone()).expect("weights");
        if ok.len() == 2 {
            assert_ne!(
                ok[0].0, ok[1].0,
                "two changes with one generation: {a:?} {b:?}"
            );
        }
        for i in 0..2 {
            eventually(
                Duration::from_secs(5),
                "the later change served",
                || async {
                    let w = ha.weights(i, "payments").await?;
                    (w == want)
                        .then_some(())
                        .ok_or(format!("r{i}: {w:?}, want {want:?}"))
                },
            )
            .await;
        }
    }
    // Conflicts are possible but not guaranteed in ten rounds; either way nothing was lost.
    eprintln!("same-service rounds with a refusal: {refused} of 10");
    let generations = futures_gen(&ha).await;
    assert_eq!(generations[0], generations[1], "{generations:?}");
}

/// The replica a proxy is connected to dies under a bounded client loop: no request fails,
/// and the proxy converges on another replica, which re-sends it nothing (delta: the versions
/// it holds are the ones every replica serves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fails_over_between_replicas_without_a_failed_request_or_a_resend() {
    let mut ha = Ha::start(3).await;
    let mut flags = XdsFlags::new(&ha.cp(0).url(), Mode::Delta).node("edge-1", "web");
    flags = flags.server(&ha.cp(1).url()).server(&ha.cp(2).url());
    let legate = Legate::start_xds(&flags).await;
    let url = legate.url("outbound", "/payments/charge").await;
    eventually(Duration::from_secs(10), "edge-1 on replica r0", || async {
        let nodes = ha.nodes(0).await;
        nodes
            .contains(&"edge-1".to_owned())
            .then_some(())
            .ok_or(format!("{nodes:?}"))
    })
    .await;
    let pushes_before: Vec<f64> = {
        let mut v = Vec::new();
        for i in 1..3 {
            v.push(delta_pushes(ha.cp(i)).await);
        }
        v
    };
    let traffic = Traffic::start(
        vec![url],
        TrafficLimits {
            max_requests: 3_000,
            max_duration: Duration::from_secs(30),
            pace: Pace::RequestEvery(Duration::from_millis(5)),
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ha.kill(0);
    let next = eventually(
        Duration::from_secs(15),
        "edge-1 on another replica",
        || async {
            for i in 1..3 {
                if ha.nodes(i).await.contains(&"edge-1".to_owned()) {
                    return Ok(i);
                }
            }
            Err("not connected".to_owned())
        },
    )
    .await;
    // The new stream has ACKed: it holds what that replica serves.
    eventually(
        Duration::from_secs(10),
        "edge-1 ACKed on the new replica",
        || async {
            let nodes = ha.get(next, "/v1/nodes").await?;
            let node = nodes["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["id"] == "edge-1")
                .cloned()
                .unwrap_or_default();
            // Clusters and listeners are answered (empty) even when nothing is new; every
            // response sent is ACKed.
            let types = node["types"].as_array().cloned().unwrap_or_default();
            let acked = |t: &serde_json::Value| t["acked_version"] == t["sent_version"];
            (types.iter().filter(|t| t["sent_version"] != "").count() >= 2
                && types.iter().all(acked))
            .then_some(())
            .ok_or(format!("{node}"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = traffic.stop().await;
    let answered = tally.count("v1");
    assert!(answered > 200, "too little traffic to tell: {tally:?}");
    assert_eq!(
        answered, tally.sent,
        "failed requests during the failover: {tally:?}"
    );
    let after = delta_pushes(ha.cp(next)).await;
    assert_eq!(
        after,
        pushes_before[next - 1],
        "replica r{next} re-sent resources edge-1 already held"
    );
}

/// `legate_cp_xds_resources_sent_total` of delta streams, all types.
async fn delta_pushes(cp: &ControlPlane) -> f64 {
    cp.metrics()
        .await
        .get_or_zero("legate_cp_xds_resources_sent_total", &[("mode", "delta")])
}

/// The leader dies mid-rollout: another replica takes over within the lease and the rollout
/// goes on to promotion; the audit trail shows the two terms, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_continues_on_another_replica_when_the_leader_dies() {
    let mut ha = Ha::start(3).await;
    let leader = ha.wait_leader(None, Duration::from_secs(10)).await;
    // The proxy reports its load to a replica that is not the leader: the leader judges on
    // load relayed through etcd.
    let other = (leader + 1) % 3;
    let flags = XdsFlags::new(&ha.cp(other).url(), Mode::Sotw)
        .node("edge-1", "web")
        .server(&ha.cp((leader + 2) % 3).url());
    let legate = Legate::start_xds(&flags).await;
    let url = legate.url("outbound", "/payments/charge").await;
    let traffic = rollout_traffic(url);
    let (status, body) = ha
        .post(
            other,
            "/v1/rollouts/payments",
            &serde_json::json!({"to": "v2", "steps": [20, 50, 100], "interval": "2s",
                "max_error_rate": "50%", "min_requests": 5}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Past the first step: the leader judged load it got from another replica.
    eventually(Duration::from_secs(30), "the rollout at step 2", || async {
        let r = ha.get(other, "/v1/rollouts/payments").await?;
        (r["step"].as_u64().unwrap_or(0) >= 2 || r["state"] == "promoted")
            .then_some(())
            .ok_or(format!("{r}"))
    })
    .await;
    ha.kill(leader);
    let next = ha.wait_leader(Some(leader), Duration::from_secs(15)).await;
    let done = eventually(Duration::from_secs(45), "the rollout promoted", || async {
        let r = ha.get(next, "/v1/rollouts/payments").await?;
        assert_ne!(r["state"], "rolled_back", "rolled back: {r:#}");
        (r["state"] == "promoted")
            .then_some(r.clone())
            .ok_or(format!("{r}"))
    })
    .await;
    let tally = traffic.stop().await;
    assert_eq!(
        tally.count("v1") + tally.count("v2"),
        tally.sent,
        "{tally:?}"
    );
    assert_eq!(
        ha.weights(next, "payments").await.expect("weights"),
        weights_of(&[("v1", 0), ("v2", 100)]),
        "{done:#}"
    );
    let audit = ha.audit();
    let by = |replica: String| audit.iter().filter(|e| e.1 == replica).count();
    assert!(
        by(format!("r{leader}")) >= 2,
        "the first leader's writes: {audit:#?}"
    );
    assert!(
        by(format!("r{next}")) >= 2,
        "the new leader's writes: {audit:#?}"
    );
    assert_terms_never_interleave(&audit);
}

/// Traffic through a proxy for the length of a rollout: 100 requests a second, bounded.
fn rollout_traffic(url: String) -> Traffic {
    Traffic::start(
        vec![url],
        TrafficLimits {
            max_requests: 20_000,
            max_duration: Duration::from_secs(90),
            pace: Pace::RequestEvery(Duration::from_millis(10)),
        },
    )
}

/// Audit entries in revision order: terms only go up, and each term is one replica's.
fn assert_terms_never_interleave(audit: &[(i64, String, i64, String)]) {
    let mut owner: BTreeMap<i64, &str> = BTreeMap::new();
    let mut last_term = 0;
    for (revision, replica, term, what) in audit {
        assert!(
            *term >= last_term,
            "revision {revision}: {replica} wrote `{what}` under term {term} after term \
             {last_term} had begun: two leaders acting at once\n{audit:#?}"
        );
        last_term = *term;
        let first = owner.entry(*term).or_insert(replica.as_str());
        assert_eq!(
            first, replica,
            "term {term} written by two replicas\n{audit:#?}"
        );
    }
}

/// An etcd member frozen, then the leader replica frozen: another replica leads once the
/// lease ends, and the frozen leader, woken, writes nothing more (its writes are fenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_leaders_when_an_etcd_member_and_the_leader_freeze() {
    let mut ha = Ha::start(3).await;
    let leader = ha.wait_leader(None, Duration::from_secs(10)).await;
    let flags = XdsFlags::new(&ha.cp((leader + 1) % 3).url(), Mode::Sotw).node("edge-1", "web");
    let legate = Legate::start_xds(&flags).await;
    let url = legate.url("outbound", "/payments/charge").await;
    let traffic = rollout_traffic(url);
    // A long rollout: the leader writes at every step.
    let (status, body) = ha
        .post(
            leader,
            "/v1/rollouts/payments",
            &serde_json::json!({"to": "v2", "steps": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50,
                55, 60, 65, 70, 75, 80, 85, 90, 95, 100], "interval": "1s",
                "max_error_rate": "50%", "min_requests": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(30), "the rollout at step 3", || async {
        let r = ha.get(leader, "/v1/rollouts/payments").await?;
        (r["step"].as_u64().unwrap_or(0) >= 3)
            .then_some(())
            .ok_or(format!("{r}"))
    })
    .await;
    // Freeze an etcd member (not necessarily raft's leader), then the leader replica.
    ha.etcd.stop_member(1);
    let frozen = ha.cp(leader).pid();
    send_signal(frozen, "STOP", "the leader replica");
    let next = ha.wait_leader(Some(leader), Duration::from_secs(20)).await;
    // The new leader moves the rollout on.
    let step_at_takeover = ha.get(next, "/v1/rollouts/payments").await.expect("status")["step"]
        .as_u64()
        .unwrap_or(0);
    eventually(
        Duration::from_secs(30),
        "the new leader moving the rollout on",
        || async {
            let r = ha.get(next, "/v1/rollouts/payments").await?;
            (r["step"].as_u64().unwrap_or(0) > step_at_takeover || r["state"] == "promoted")
                .then_some(())
                .ok_or(format!("{r}"))
        },
    )
    .await;
    // Wake both: the old leader finds its term over.
    send_signal(frozen, "CONT", "the leader replica");
    ha.etcd.cont_member(1);
    eventually(
        Duration::from_secs(15),
        "the woken replica stepping down",
        || async {
            let log = ha.cp(leader).log();
            log.contains("no longer the leader")
                .then_some(())
                .ok_or_else(|| log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = traffic.stop().await;
    let audit = ha.audit();
    let terms: std::collections::BTreeSet<i64> = audit.iter().map(|e| e.2).collect();
    assert!(terms.len() >= 2, "one term only: {audit:#?}");
    assert_terms_never_interleave(&audit);
    // After the new leader's first entry, nothing from the frozen leader.
    let old_name = format!("r{leader}");
    let new_name = format!("r{next}");
    let new_term_began = audit
        .iter()
        .find(|e| e.1 == new_name)
        .map(|e| e.0)
        .unwrap_or_else(|| panic!("no entry of the new leader {new_name}: {audit:#?}"));
    assert!(
        audit.iter().any(|e| e.1 == old_name),
        "no entry of the first leader {old_name}: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .all(|e| e.0 < new_term_began || e.1 != old_name),
        "the old leader wrote after the new term began: {audit:#?}"
    );
}

/// etcd unreachable: every replica keeps serving the last configuration, refuses admin
/// changes with a clear error, and says so in /ready and its metrics; all of it ends when
/// etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_keeps_serving_and_refuses_changes() {
    let mut ha = Ha::start(2).await;
    let flags = XdsFlags::new(&ha.cp(0).url(), Mode::Sotw).node("edge-1", "web");
    let legate = Legate::start_xds(&flags).await;
    let url = legate.url("outbound", "/payments/charge").await;
    for i in 0..3 {
        ha.etcd.stop_member(i);
    }
    eventually(Duration::from_secs(10), "replica r0 not ready", || async {
        let r = legate_tests::get(&format!("http://{}/ready", ha.cp(0).metrics)).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        (r.status.as_u16() == 503 && body.contains("etcd"))
            .then_some(())
            .ok_or(format!("{} {body}", r.status))
    })
    .await;
    let metrics = ha.cp(0).metrics_text().await;
    assert!(metrics.contains("legate_cp_store_up 0"), "{metrics}");
    let (status, body) = ha
        .post(
            0,
            "/v1/services/payments/weights",
            &serde_json::json!({"v1": 50, "v2": 50}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("etcd is unreachable"), "{body}");
    // Served all along.
    let r = legate_tests::get(&url).await;
    assert_eq!(r.status.as_u16(), 200);
    for i in 0..3 {
        ha.etcd.cont_member(i);
    }
    eventually(
        Duration::from_secs(15),
        "replica r0 ready again",
        || async {
            let r = legate_tests::get(&format!("http://{}/ready", ha.cp(0).metrics)).await;
            (r.status.as_u16() == 200)
                .then_some(())
                .ok_or(format!("{}", r.status))
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "a change accepted again",
        || async {
            let (status, body) = ha
                .post(
                    0,
                    "/v1/services/payments/weights",
                    &serde_json::json!({"v1": 50, "v2": 50}),
                )
                .await;
            (status == 200)
                .then_some(())
                .ok_or(format!("{status} {body}"))
        },
    )
    .await;
    ha.kill(1);
}

/// One etcd member serving TLS and requiring client certificates, killed by PID on drop.
struct TlsEtcd {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--etcd-ca`, `--etcd-cert` and `--etcd-key`: legate-cp keeps its state in an etcd that
/// serves TLS only and requires a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_mutual_tls() {
    let dir = TempDir::new("cp-ha-tls");
    let pki = legate_tests::cp::Pki::new(dir.path(), "etcd");
    let (server_cert, server_key) = pki.server("etcd-server");
    let (client_cert, client_key) = pki.client("legate-cp", "spiffe://legate.local/cp");
    let [client_port, peer_port] = legate_tests::process::free_ports::<2>();
    let endpoint = format!("127.0.0.1:{client_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
    let child = std::process::Command::new("etcd")
        .args(["--name", "tls0", "--data-dir"])
        .arg(dir.path().join("etcd-data"))
        .args([
            "--listen-client-urls",
            &format!("https://{endpoint}"),
            "--advertise-client-urls",
            &format!("https://{endpoint}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
            "--initial-cluster",
            &format!("tls0=http://127.0.0.1:{peer_port}"),
            "--client-cert-auth",
        ])
        .arg("--trusted-ca-file")
        .arg(pki.ca_file())
        .arg("--cert-file")
        .arg(&server_cert)
        .arg("--key-file")
        .arg(&server_key)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start etcd");
    let etcd = TlsEtcd { child, endpoint };
    let v1 = Upstream::start("payments", "v1", Protocol::Auto).await;
    let v2 = Upstream::start("payments", "v2", Protocol::Auto).await;
    let config = dir.write("mesh.yaml", &mesh(&v1, &v2));
    let token = dir.write("token", TOKEN);
    set_private(&token);
    let (store, ca, cert, key, token) = (
        format!("etcd://{}", etcd.endpoint),
        pki.ca_file().display().to_string(),
        client_cert.display().to_string(),
        client_key.display().to_string(),
        token.display().to_string(),
    );
    let cp = ControlPlane::start_with(
        &config,
        &dir.path().join("data"),
        &[
            "--store",
            &store,
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
            "--admin-token-file",
            &token,
        ],
    )
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let r = cp
        .json(
            "POST",
            "/v1/services/payments/weights",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            full(r#"{"v1": 40, "v2": 60}"#),
        )
        .await;
    assert_eq!(
        r.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The change is in etcd, read over TLS with the same client certificate.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("https://{}", etcd.endpoint)])
        .args(["--cacert", &ca, "--cert", &cert, "--key", &key])
        .args(["get", "/legate/state", "--print-value-only"])
        .output()
        .expect("etcdctl");
    let stored = String::from_utf8_lossy(&out.stdout);
    assert!(
        stored.contains(r#""v2":60"#) || stored.contains(r#""v2": 60"#),
        "etcd holds: {stored} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ready = legate_tests::get(&format!("http://{}/ready", cp.metrics)).await;
    assert_eq!(ready.status.as_u16(), 200);
}

/// 1,000 simulated proxies (legate-cp-load's ADS streams) spread over three replicas: a
/// change made on one replica reaches every stream, on every replica, within 2 s at p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_1000_proxies_on_three_replicas_within_2s_at_p99() {
    use std::io::BufRead;
    const STREAMS: usize = 1_000;
    let ha = Ha::start(3).await;
    let admin = format!("http://{}", ha.cp(1).admin);
    let token = ha.token.display().to_string();
    let set = |weights: &str| {
        format!(
            "{} --server {admin} --token-file {token} set-weights payments {weights} >/dev/null",
            legate_tests::cp::bin("legatectl").display()
        )
    };
    let mut cmd = std::process::Command::new(legate_tests::cp::bin("legate-cp-load"));
    for i in 0..3 {
        cmd.args(["--server", &ha.cp(i).url()]);
    }
    cmd.args(["--mode", "delta", "--streams", &STREAMS.to_string()])
        .args(["--changes", "2", "--interval", "500ms", "--threads", "2"])
        .args([
            "--ready-timeout",
            "90s",
            "--change-timeout",
            "20s",
            "--duration",
            "0s",
        ])
        .arg("--trigger-cmd")
        .arg(set("v1=70 v2=30"))
        .arg("--trigger-cmd")
        .arg(set("v1=20 v2=80"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("start legate-cp-load");
    let stdout = child.stdout.take().expect("stdout");
    let events = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(8)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .collect::<Vec<_>>()
    });
    let events = tokio::time::timeout(Duration::from_secs(240), events)
        .await
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("legate-cp-load did not finish within 240 s")
        })
        .expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    let changes: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "change").collect();
    assert_eq!(changes.len(), 2, "{events:#?}");
    for change in changes {
        assert_eq!(change["acked"], STREAMS, "{change}");
        assert_eq!(change["timed_out"], false, "{change}");
        assert_eq!(
            change["consistent"], true,
            "replicas served different versions: {change}"
        );
        let servers = change["servers"].as_array().expect("servers");
        assert_eq!(servers.len(), 3, "{change}");
        for s in servers {
            assert!(s["acked"].as_u64() >= Some(333), "{change}");
        }
        let p99 = change["latency"]["p99_ms"].as_f64().expect("p99");
        eprintln!(
            "change {}: p99 {p99} ms over {STREAMS} streams on 3 replicas",
            change["index"]
        );
        assert!(p99 <= 2_000.0, "p99 {p99} ms, over 2 s: {change}");
    }
}

/// `legate-cp --validate --store etcd://...` checks the files with the admin changes etcd
/// holds (not the data directory's), reading etcd once and writing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_admin_changes_in_etcd() {
    let ha = Ha::start(1).await;
    let (status, body) = ha
        .post(
            0,
            "/v1/services/payments/weights",
            &serde_json::json!({"v1": 10, "v2": 90}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = ha.etcd.get_prefix_json(&format!("{}state", ha.prefix));
    let empty_data = ha.dir.path().join("no-such-data-dir");
    let out = std::process::Command::new(legate_tests::cp::bin("legate-cp"))
        .arg("--validate")
        .arg("--config")
        .arg(&ha.config)
        .arg("--data-dir")
        .arg(&empty_data)
        .args(["--store", &ha.etcd.url(), "--etcd-prefix", &ha.prefix])
        .output()
        .expect("legate-cp --validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 with stored admin changes (generation 1)"),
        "{stdout}"
    );
    assert!(
        !empty_data.exists(),
        "--validate created the data directory"
    );
    assert_eq!(
        ha.etcd.get_prefix_json(&format!("{}state", ha.prefix)),
        before,
        "--validate wrote to etcd"
    );
    // An unreachable etcd is an error, not a pass on the files alone.
    let out = std::process::Command::new(legate_tests::cp::bin("legate-cp"))
        .arg("--validate")
        .arg("--config")
        .arg(&ha.config)
        .args([
            "--store",
            &format!("etcd://{}", legate_tests::closed_port()),
        ])
        .output()
        .expect("legate-cp --validate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("etcd"), "{stderr}");
}
