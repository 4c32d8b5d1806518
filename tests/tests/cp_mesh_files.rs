//! legate-cp's mesh files, through the real binary and its admin API: only contents that
//! stayed the same for the settle interval are applied, a document that says nothing is
//! refused while the last good configuration keeps being served, editors' lock and backup
//! files are not read, and file edits and admin changes are applied in order by one owner,
//! so what is served ends equal to what is persisted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use legate_tests::cp::ControlPlane as Cp;
use legate_tests::eventually;
use legate_tests::process::TempDir;

/// What a node of cluster `web` is served: (type URL, name) → the resource as the admin API
/// renders it.
type Served = BTreeMap<(String, String), serde_json::Value>;

const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ENDPOINTS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

fn services(payments: (u32, u32), orders: bool) -> String {
    let mut text = format!(
        r#"proxy:
  listener: {{name: outbound, address: 127.0.0.1:0, protocol: auto}}
services:
  - name: payments
    versions:
      - {{name: v1, weight: {}, endpoints: [{{address: 127.0.0.1:18081}}]}}
      - {{name: v2, weight: {}, endpoints: [{{address: 127.0.0.1:18082}}]}}
    route: {{prefix: /payments/, timeout: 5s}}
"#,
        payments.0, payments.1
    );
    if orders {
        text.push_str(
            r#"  - name: orders
    endpoints: [{address: 127.0.0.1:18090}]
    route: {prefix: /orders/}
"#,
        );
    }
    text
}

async fn served(cp: &Cp) -> Result<Served, String> {
    let body = cp.get_json("/v1/nodes/probe?cluster=web").await?;
    let list = body["resources"]
        .as_array()
        .ok_or_else(|| format!("no resources in {body}"))?;
    Ok(list
        .iter()
        .map(|r| {
            (
                (
                    r["type_url"].as_str().unwrap_or_default().to_owned(),
                    r["name"].as_str().unwrap_or_default().to_owned(),
                ),
                r["resource"].clone(),
            )
        })
        .collect())
}

fn clusters(s: &Served) -> BTreeSet<String> {
    s.keys()
        .filter(|(t, _)| t == CLUSTER_TYPE)
        .map(|(_, n)| n.clone())
        .collect()
}

/// The version weights the payments route is served with.
fn payments_weights(s: &Served) -> Option<BTreeMap<String, u64>> {
    let rc = s.get(&(ROUTE_TYPE.to_owned(), "outbound".to_owned()))?;
    let routes = rc["virtual_hosts"][0]["routes"].as_array()?;
    let route = routes.iter().find(|r| r["name"] == "payments")?;
    let weighted = route["route"]["weighted_clusters"]["clusters"].as_array()?;
    Some(
        weighted
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["weight"].as_u64().unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// The configuration that the files on disk and the persisted admin changes describe,
/// compiled and rendered as the admin API renders what it serves.
fn persisted(config: &Path, data: &Path) -> Served {
    use legate_cp::store;
    use prost::Message;
    let text = std::fs::read_to_string(config).expect("read mesh file");
    let files = [(config.display().to_string(), text)];
    let (base, sources) = store::load_mesh(&files).expect("the file on disk is valid");
    let (overlay, _) = store::load_overlay(data, &base).expect("overlay loads");
    let effective = store::effective(&base, &sources, &overlay);
    assert!(effective.conflicts.is_empty(), "{:?}", effective.conflicts);
    let mesh = effective.mesh;
    let r = legate_model::compile(&mesh);
    let mut out = Served::new();
    let mut put = |t: &str, name: &str, v: serde_json::Value| {
        out.insert((t.to_owned(), name.to_owned()), v);
    };
    // As legate-cp renders them: Envoy's JSON (legate-config-dump).
    let mut render = |t: &str, name: &str, value: Vec<u8>| {
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: t.to_owned(),
            value,
        };
        put(
            t,
            name,
            legate_config_dump::any_json(&any).expect("renders"),
        );
    };
    for c in &r.clusters {
        render(CLUSTER_TYPE, &c.name, c.encode_to_vec());
    }
    for c in &r.route_configs {
        render(ROUTE_TYPE, &c.name, c.encode_to_vec());
    }
    for c in &r.listeners {
        render(LISTENER_TYPE, &c.name, c.encode_to_vec());
    }
    for c in &r.load_assignments {
        render(ENDPOINTS_TYPE, &c.cluster_name, c.encode_to_vec());
    }
    out
}

/// Replace a file the way most tools do when they save: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Truncating the mesh file to nothing (or to comments only) is refused: the last good
/// configuration keeps being served, and the refusal is logged and shown by `GET /v1/mesh`.
/// A valid edit after that is applied promptly, and an explicit empty list serves nothing.
#[tokio::test]
async fn an_empty_mesh_file_is_refused_and_the_last_good_one_served() {
    let dir = TempDir::new("cp-empty");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &services((100, 0), true));
    let cp = Cp::start(&config, &data).await;
    let before = eventually(Duration::from_secs(10), "payments served", || async {
        let s = served(&cp).await?;
        if clusters(&s).contains("orders") {
            Ok(s)
        } else {
            Err(format!("{:?}", clusters(&s)))
        }
    })
    .await;

    for (i, text) in ["", "# being rewritten\n"].into_iter().enumerate() {
        // Truncate in place, as a crash in the middle of a save leaves it.
        std::fs::write(&config, text).expect("truncate");
        eventually(
            Duration::from_secs(10),
            "the empty file refused, or served",
            || async {
                let s = served(&cp).await?;
                if s != before {
                    return Ok(());
                }
                let status = cp.get_json("/v1/mesh").await?;
                let refusals = status["refusals"].as_u64().unwrap_or(0);
                if refusals > i as u64 {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            },
        )
        .await;
        assert_eq!(
            clusters(&served(&cp).await.expect("served")),
            clusters(&before),
            "an empty mesh file ({text:?}) was published"
        );
        let status = cp.get_json("/v1/mesh").await.expect("status");
        let error = status["refused"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("mesh.yaml:1:1: empty document") && error.contains("listeners: []"),
            "{status}"
        );
        // The log is read from legate-cp's pipe as it arrives: wait for the line.
        eventually(Duration::from_secs(10), "the refusal logged", || async {
            let log = cp.log();
            if log.contains("empty document") {
                Ok(())
            } else {
                Err(log)
            }
        })
        .await;
    }

    // A valid edit is applied within the settle interval and a little more.
    let started = Instant::now();
    std::fs::write(&config, services((0, 100), true)).expect("write");
    eventually(Duration::from_secs(10), "the edit applied", || async {
        let s = served(&cp).await?;
        let w = payments_weights(&s);
        if w == Some(BTreeMap::from([("payments-v2".to_owned(), 100)])) {
            Ok(())
        } else {
            Err(format!("{w:?}"))
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a valid edit took {:?}",
        started.elapsed()
    );
    let status = cp.get_json("/v1/mesh").await.expect("status");
    assert!(status["refused"].is_null(), "{status}");

    // Serving nothing is possible, when the file says so.
    std::fs::write(&config, "# nothing is served from here on\nlisteners: []\n").expect("write");
    eventually(
        Duration::from_secs(10),
        "an explicit empty mesh",
        || async {
            let s = served(&cp).await?;
            if s.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}", s.keys()))
            }
        },
    )
    .await;
}

/// A file written in two halves with a pause in between (a slow copy, a script that writes
/// as it goes) is applied only once whole: the first half, though valid on its own, is
/// never served.
#[tokio::test]
async fn a_half_written_file_is_never_published() {
    let dir = TempDir::new("cp-half");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &services((100, 0), true));
    let cp = Cp::start(&config, &data).await;
    eventually(Duration::from_secs(10), "orders served", || async {
        let s = served(&cp).await?;
        if clusters(&s).contains("orders") {
            Ok(())
        } else {
            Err(format!("{:?}", clusters(&s)))
        }
    })
    .await;

    // The new contents; their first half (payments only, at new weights) is a valid mesh.
    let whole = services((50, 50), true);
    let cut = whole.find("  - name: orders").expect("orders section");
    let (first, second) = whole.split_at(cut);
    legate_model::load(first, "half").expect("the first half is valid on its own");
    let path = config.clone();
    let (first, second) = (first.to_owned(), second.to_owned());
    // The writer's pause is the scenario, not synchronisation: shorter than the settle
    // interval (1 s by default), longer than the old 250 ms polling.
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).expect("open");
        f.write_all(first.as_bytes()).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(500));
        f.write_all(second.as_bytes()).expect("write");
        f.flush().expect("flush");
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut observations = 0;
    loop {
        let s = served(&cp).await.expect("served");
        observations += 1;
        assert!(
            clusters(&s).contains("orders"),
            "the first half of a file was published (observation {observations}): {:?}",
            clusters(&s)
        );
        if payments_weights(&s).is_some_and(|w| w.len() == 2) && writer.is_finished() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the whole file was not applied within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.expect("writer");
}

/// Editors' lock, swap and backup files and other hidden files in a mesh directory are not
/// mesh files: an edit is applied though they are there (Emacs' lock is a dangling symlink,
/// Vim's swap file is binary).
#[tokio::test]
async fn editor_files_in_the_mesh_directory_are_ignored() {
    let dir = TempDir::new("cp-editor");
    let data = dir.path().join("data");
    let meshes = dir.path().join("mesh");
    std::fs::create_dir_all(&meshes).expect("mkdir");
    let config = meshes.join("payments.yaml");
    std::fs::write(&config, services((100, 0), false)).expect("write");
    let cp = Cp::start(&meshes, &data).await;
    eventually(Duration::from_secs(10), "payments served", || async {
        let s = served(&cp).await?;
        if clusters(&s).contains("payments-v1") {
            Ok(())
        } else {
            Err(format!("{:?}", clusters(&s)))
        }
    })
    .await;

    std::os::unix::fs::symlink("ops@host.4242:1767225600", meshes.join(".#payments.yaml"))
        .expect("emacs lock");
    std::fs::write(meshes.join(".payments.yaml.swp"), b"b0VIM 9.1\0\0\0").expect("swap");
    std::fs::write(meshes.join(".payments.yaml.swx"), b"b0VIM").expect("swap");
    std::fs::write(meshes.join("payments.yaml~"), "services: [broken").expect("backup");
    std::fs::write(meshes.join("#payments.yaml#"), "services: [broken").expect("autosave");
    std::fs::write(meshes.join("4913"), "").expect("vim probe");
    std::fs::write(meshes.join("payments.yaml.tmp"), "services: [").expect("tmp");
    std::fs::write(meshes.join(".draft.yaml"), "services: [broken").expect("hidden");

    let started = Instant::now();
    replace(&config, &services((0, 100), false));
    eventually(Duration::from_secs(10), "the edit applied", || async {
        let s = served(&cp).await?;
        let w = payments_weights(&s);
        if w == Some(BTreeMap::from([("payments-v2".to_owned(), 100)])) {
            Ok(())
        } else {
            let status = cp.get_json("/v1/mesh").await.unwrap_or_default();
            Err(format!("{w:?}; {status}"))
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a valid edit took {:?}",
        started.elapsed()
    );
    let status = cp.get_json("/v1/mesh").await.expect("status");
    assert_eq!(
        status["files"],
        serde_json::json!([config.display().to_string()]),
        "{status}"
    );
}

/// File edits and `set-weights` calls at the same time, in rounds: after each round the
/// configuration served equals the one persisted (mesh file plus the admin overlay on disk).
/// Before there was one owner, a watcher's publish built from an overlay read before a
/// concurrent admin change could land after it, and stay.
#[tokio::test]
async fn concurrent_file_edits_and_set_weights_end_as_persisted() {
    const ROUNDS: u16 = 10;
    const FILLERS: usize = 100;
    let dir = TempDir::new("cp-race");
    let data = dir.path().join("data");
    // Enough services that compiling the mesh takes a while: the window the race needs.
    let mesh = |round: u16| {
        let mut text = services((100, 0), false);
        text.push_str(&format!(
            "  - name: marker\n    endpoints: [{{address: 127.0.0.1:{}}}]\n",
            20000 + round
        ));
        for i in 0..FILLERS {
            text.push_str(&format!(
                "  - name: filler-{i}\n    versions:\n      - {{name: a, weight: 1, endpoints: [{{address: 127.0.{}.{}:80}}]}}\n      - {{name: b, weight: 1, endpoints: [{{address: 127.1.{}.{}:80}}]}}\n",
                i / 200, i % 200 + 1, i / 200, i % 200 + 1
            ));
        }
        text
    };
    let config = dir.write("mesh.yaml", &mesh(0));
    let cp = Cp::start(&config, &data).await;
    eventually(Duration::from_secs(20), "first configuration", || async {
        let s = served(&cp).await?;
        if clusters(&s).contains("marker") {
            Ok(())
        } else {
            Err(format!("{} clusters", clusters(&s).len()))
        }
    })
    .await;

    let url = format!("http://{}/v1/services/payments/weights", cp.admin);
    let bearer = cp.bearer();
    for round in 1..=ROUNDS {
        // The edit, then one admin change at a random moment over the time the change can
        // take to be noticed: with the old 250 ms polling, one round in a few had the change
        // land while the watcher compiled, and the watcher's stale publish stayed.
        replace(&config, &mesh(round));
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
        let v1 = fastrand::u32(0..=100);
        let body = format!(r#"{{"v1": {v1}, "v2": {}}}"#, 100 - v1);
        let r = legate_tests::client::HttpClient::http1()
            .request(
                "POST",
                &url,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                legate_tests::client::full(body),
            )
            .await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        // Quiet now: what is served must come to equal what is persisted, and stay so.
        let want = eventually(
            Duration::from_secs(8),
            &format!("round {round}: served equals persisted"),
            || async {
                let want = persisted(&config, &data);
                let got = served(&cp).await?;
                if got == want {
                    Ok(want)
                } else {
                    let differ: Vec<_> = want
                        .keys()
                        .chain(got.keys())
                        .filter(|k| want.get(*k) != got.get(*k))
                        .take(4)
                        .collect();
                    Err(format!(
                        "differ: {differ:?}; served weights {:?}, persisted {:?}",
                        payments_weights(&got),
                        payments_weights(&want)
                    ))
                }
            },
        )
        .await;
        assert!(
            want.contains_key(&(ENDPOINTS_TYPE.to_owned(), "marker".to_owned())),
            "the marker service is missing from the persisted configuration"
        );
    }
}
