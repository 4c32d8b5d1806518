//! legate-cp's two sources of truth, through the real binary, its admin API and legatectl:
//! an admin change overrides only the fields it names, later file edits of other fields
//! take effect, a file edit of an overridden field wins, a service removed from the files
//! goes, `reset` and `delete` undo admin changes, `get service` says where each value comes
//! from, and stored admin changes that no longer fit never stop a start. Also what `apply`
//! refuses and warns about.

use std::path::Path;
use std::time::Duration;

use legate_tests::cp::ControlPlane as Cp;
use legate_tests::eventually;
use legate_tests::process::TempDir;

const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// The mesh file: payments with two versions (weights, a header and a timeout given), and
/// orders.
fn mesh(weights: (u32, u32), header: &str, timeout: &str, payments: bool) -> String {
    let mut text = String::from(
        "proxy:\n  listener: {name: outbound, address: 127.0.0.1:0, protocol: auto}\nservices:\n",
    );
    if payments {
        text.push_str(&format!(
            "  - name: payments
    versions:
      - {{name: v1, weight: {}, endpoints: [{{address: 127.0.0.1:18081}}]}}
      - {{name: v2, weight: {}, endpoints: [{{address: 127.0.0.1:18082}}]}}
    route: {{prefix: /payments/}}
    policies:
      timeout: {timeout}
      request_headers_to_add: [{{name: x-edit, value: {header}}}]
",
            weights.0, weights.1
        ));
    }
    text.push_str("  - name: orders\n    endpoints: [{address: 127.0.0.1:18090}]\n    route: {prefix: /orders/}\n");
    text
}

/// Replace a file the way most tools save: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn start(config: &Path, data: &Path) -> Cp {
    Cp::start_with(config, data, &["--mesh-settle", "100ms"]).await
}

/// The served resource of this type and name, as text (whatever the rendering, names and
/// header values appear in it as written).
async fn served(cp: &Cp, type_url: &str, name: &str) -> Result<String, String> {
    let body = cp.get_json("/v1/nodes/probe?cluster=web").await?;
    body["resources"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|r| r["type_url"] == type_url && r["name"] == name)
        })
        .map(|r| r["resource"].to_string())
        .ok_or_else(|| format!("no {name} served"))
}

async fn route(cp: &Cp) -> Result<String, String> {
    served(cp, ROUTE_TYPE, "outbound").await
}

fn ctl(cp: &Cp, args: &[&str]) -> String {
    let (ok, out, err) = cp.ctl(args);
    assert!(ok, "legatectl {args:?} failed:\n{out}{err}");
    out
}

fn ctl_fails(cp: &Cp, args: &[&str]) -> String {
    let (ok, out, err) = cp.ctl(args);
    assert!(!ok, "legatectl {args:?} should fail:\n{out}{err}");
    err
}

/// `get service NAME -o json`, the field `field` of source `source`.
fn field(view: &serde_json::Value, field: &str, source: &str) -> Option<serde_json::Value> {
    view["fields"]
        .as_array()?
        .iter()
        .find(|f| f["field"] == field && f["source"] == source)
        .cloned()
}

fn service_json(cp: &Cp, name: &str) -> serde_json::Value {
    serde_json::from_str(&ctl(cp, &["get", "service", name, "-o", "json"])).expect("json")
}

/// Wait until legate-cp's output has `needle` (its output is read by another thread).
async fn logged(cp: &Cp, needle: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("log line {needle:?}"),
        || async {
            if cp.log().contains(needle) {
                Ok(())
            } else {
                Err(cp.log())
            }
        },
    )
    .await;
}

fn pushes(cp: &Cp) -> usize {
    cp.log().matches("new configuration pushed").count()
}

#[tokio::test]
async fn file_edits_after_set_weights_take_effect_and_a_file_edit_of_the_weights_wins() {
    let dir = TempDir::new("cp-overlay-edit");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &mesh((100, 0), "one", "5s", true));
    let cp = start(&config, &data).await;
    eventually(Duration::from_secs(10), "payments served", || async {
        let r = route(&cp).await?;
        r.contains("payments-v1").then_some(()).ok_or(r)
    })
    .await;

    let out = ctl(&cp, &["set-weights", "payments", "v1=0", "v2=100"]);
    assert!(
        out.contains("service payments weights v1=0 v2=100"),
        "{out}"
    );
    let r = route(&cp).await.expect("route");
    assert!(
        r.contains("payments-v2") && !r.contains("payments-v1"),
        "{r}"
    );

    // The file changes the header and the timeout: both serve, the admin weights stay.
    replace(&config, &mesh((100, 0), "two", "7s", true));
    eventually(
        Duration::from_secs(10),
        "the header edit served",
        || async {
            let r = route(&cp).await?;
            r.contains("two").then_some(()).ok_or(r)
        },
    )
    .await;
    let r = route(&cp).await.expect("route");
    assert!(
        r.contains("payments-v2") && !r.contains("payments-v1"),
        "weights kept: {r}"
    );

    // Where each value comes from.
    let view = service_json(&cp, "payments");
    assert_eq!(view["origin"], "files", "{view}");
    let timeout = field(&view, "policies.timeout", "file").expect("timeout from the file");
    assert_eq!(timeout["value"], "7s", "{view}");
    let at = timeout["location"].as_str().expect("location");
    assert!(
        at.starts_with(&format!("{}:10:", config.display())),
        "file:line:col of `timeout: 7s`: {at}"
    );
    let weights = field(&view, "weights", "admin").expect("weights from the admin change");
    assert_eq!(weights["value"], serde_json::json!({"v1": 0, "v2": 100}));
    assert_eq!(weights["change"]["op"], "set-weights");
    assert_eq!(weights["change"]["caller"], "bearer token");
    assert!(
        weights["change"]["at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let table = ctl(&cp, &["get", "service", "payments"]);
    assert!(
        table.contains("admin set-weights at ")
            && table.contains(&format!("{}:10:", config.display())),
        "{table}"
    );

    // A comment changes nothing served: nothing is pushed, and the log does not say so.
    // (The header edit's push is read from the log's pipe first, so it is not counted late.)
    logged(&cp, "mesh files changed: new configuration pushed").await;
    let before = pushes(&cp);
    replace(
        &config,
        &format!("# a comment\n{}", mesh((100, 0), "two", "7s", true)),
    );
    logged(&cp, "nothing pushed").await;
    assert_eq!(pushes(&cp), before, "{}", cp.log());

    // The file edits the weights: the newer change wins, the override is dropped.
    replace(&config, &mesh((50, 50), "two", "7s", true));
    eventually(
        Duration::from_secs(10),
        "the file's weights served",
        || async {
            let r = route(&cp).await?;
            (r.contains("payments-v1") && r.contains("payments-v2"))
                .then_some(())
                .ok_or(r)
        },
    )
    .await;
    logged(
        &cp,
        "field `weights`, which an admin change (set-weights at ",
    )
    .await;
    let view = service_json(&cp, "payments");
    assert!(field(&view, "weights", "file").is_some(), "{view}");
    assert!(field(&view, "weights", "admin").is_none(), "{view}");
}

#[tokio::test]
async fn removing_a_file_service_with_overrides_removes_it() {
    let dir = TempDir::new("cp-overlay-remove");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &mesh((100, 0), "one", "5s", true));
    let cp = start(&config, &data).await;
    ctl(&cp, &["set-weights", "payments", "v1=50", "v2=50"]);
    replace(&config, &mesh((100, 0), "one", "5s", false));
    eventually(Duration::from_secs(10), "payments gone", || async {
        let r = route(&cp).await?;
        (!r.contains("payments")).then_some(()).ok_or(r)
    })
    .await;
    assert!(served(&cp, CLUSTER_TYPE, "payments-v1").await.is_err());
    let err = ctl_fails(&cp, &["get", "service", "payments"]);
    assert!(err.contains("unknown service 'payments'"), "{err}");
    logged(
        &cp,
        "service `payments` was removed from the mesh files: its admin overrides (weights) are dropped",
    )
    .await;
    // Back in the file, it serves the file's values: the overrides went with it.
    replace(&config, &mesh((100, 0), "one", "5s", true));
    eventually(Duration::from_secs(10), "payments back", || async {
        let r = route(&cp).await?;
        (r.contains("payments-v1") && !r.contains("payments-v2"))
            .then_some(())
            .ok_or(r)
    })
    .await;
}

const CREATED: &str = "services:\n  - name: extra\n    endpoints: [{address: 127.0.0.1:18099}]\n    route: {prefix: /x/}\n";

#[tokio::test]
async fn reset_and_delete() {
    let dir = TempDir::new("cp-overlay-reset");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &mesh((100, 0), "one", "5s", true));
    let cp = start(&config, &data).await;
    ctl(&cp, &["set-weights", "payments", "v1=0", "v2=100"]);
    let out = ctl(&cp, &["reset", "payments"]);
    assert!(
        out.contains("service payments reset: weights from the mesh files again"),
        "{out}"
    );
    let r = route(&cp).await.expect("route");
    assert!(
        r.contains("payments-v1") && !r.contains("payments-v2"),
        "{r}"
    );
    let out = ctl(&cp, &["reset", "payments"]);
    assert!(out.contains("unchanged: it has no admin changes"), "{out}");

    // A service only an apply created: reset has nothing to return to; delete removes it.
    let file = dir.write("extra.yaml.in", CREATED);
    let out = ctl(&cp, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(out.contains("service extra created"), "{out}");
    let view = service_json(&cp, "extra");
    assert_eq!(view["origin"], "admin", "{view}");
    assert_eq!(view["created"]["op"], "apply", "{view}");
    let table = ctl(&cp, &["get", "service", "extra"]);
    assert!(table.contains("created by admin apply at "), "{table}");
    let err = ctl_fails(&cp, &["reset", "extra"]);
    assert!(err.contains("legatectl delete extra"), "{err}");
    // A file service is the file's to remove.
    let err = ctl_fails(&cp, &["delete", "payments"]);
    assert!(
        err.contains(&format!(
            "defined in the mesh files at {}:4:5",
            config.display()
        )) && err.contains("legatectl reset payments"),
        "{err}"
    );
    let out = ctl(&cp, &["delete", "extra"]);
    assert!(out.contains("service extra deleted"), "{out}");
    assert!(served(&cp, CLUSTER_TYPE, "extra").await.is_err());
    let err = ctl_fails(&cp, &["delete", "extra"]);
    assert!(err.contains("unknown service 'extra'"), "{err}");

    // The JSON API has the same calls, with the same authorization.
    let r = cp
        .json(
            "DELETE",
            "/v1/services/payments",
            &[],
            legate_tests::client::empty(),
        )
        .await;
    r.assert_status(401);
    let r = cp
        .json(
            "DELETE",
            "/v1/services/payments",
            &[("authorization", &cp.bearer())],
            legate_tests::client::empty(),
        )
        .await;
    r.assert_status(409);
    let r = cp
        .json(
            "POST",
            "/v1/services/payments/reset",
            &[
                ("authorization", &cp.bearer()),
                ("content-type", "application/json"),
            ],
            legate_tests::client::empty(),
        )
        .await;
    r.assert_status(200);
    let view = cp.get_json("/v1/services/payments").await.expect("view");
    assert!(field(&view, "weights", "file").is_some(), "{view}");
}

#[tokio::test]
async fn a_stored_change_that_no_longer_fits_does_not_stop_a_restart() {
    let dir = TempDir::new("cp-overlay-conflict");
    let data = dir.path().join("data");
    let config = dir.write("mesh.yaml", &mesh((100, 0), "one", "5s", true));
    let cp = start(&config, &data).await;
    let file = dir.write("extra.yaml.in", CREATED);
    ctl(&cp, &["apply", "-f", file.to_str().expect("utf-8")]);

    // At apply time, a clash with the files is refused naming both sources.
    let clash = dir.write(
        "clash.yaml.in",
        "services:\n  - name: other\n    endpoints: [{address: 127.0.0.1:9}]\n    route: {prefix: /payments/}\n",
    );
    let err = ctl_fails(&cp, &["apply", "-f", clash.to_str().expect("utf-8")]);
    assert!(
        err.contains("prefix `/payments/` is taken by service `payments` at ")
            && err.contains(&format!("{}:8:21", config.display())),
        "{err}"
    );
    assert!(!err.contains("services[2]"), "an index in no file: {err}");
    drop(cp);

    // While legate-cp is down, the file takes the prefix the admin service has.
    let mut text = mesh((100, 0), "one", "5s", true);
    text.push_str(
        "  - name: web\n    endpoints: [{address: 127.0.0.1:18095}]\n    route: {prefix: /x/}\n",
    );
    replace(&config, &text);
    let cp = start(&config, &data).await;
    // It serves the files, and says what it left out.
    served(&cp, CLUSTER_TYPE, "web")
        .await
        .expect("the file's service served");
    assert!(served(&cp, CLUSTER_TYPE, "extra").await.is_err());
    let status = cp.get_json("/v1/mesh").await.expect("mesh status");
    let conflict = status["conflicts"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        conflict.starts_with("service `extra` from an admin change (apply at ")
            && conflict.contains("is not served")
            && conflict.contains(&format!(
                "prefix `/x/` is taken by service `web` at {}:17:",
                config.display()
            )),
        "{status}"
    );
    logged(&cp, &conflict).await;
    let view = service_json(&cp, "extra");
    assert_eq!(view["conflict"].as_str(), Some(conflict.as_str()), "{view}");
    let table = ctl(&cp, &["get", "service", "extra"]);
    assert!(
        table.contains("CONFLICT: ") && table.contains("not served: conflict"),
        "{table}"
    );
    // Applying it again is refused with the same explanation, and changes nothing.
    let err = ctl_fails(&cp, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(
        err.contains("service `extra` conflicts with the mesh files")
            && err.contains("is taken by service `web` at "),
        "{err}"
    );
    // Kept until deleted.
    ctl(&cp, &["delete", "extra"]);
    let status = cp.get_json("/v1/mesh").await.expect("mesh status");
    assert_eq!(status["conflicts"], serde_json::json!([]), "{status}");
}

#[tokio::test]
async fn an_overlay_of_the_previous_release_is_migrated() {
    let dir = TempDir::new("cp-overlay-migrate");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let config = dir.write("mesh.yaml", &mesh((100, 0), "one", "5s", true));
    // What the previous release wrote after `set-weights payments v1=0 v2=100`: the whole
    // service.
    std::fs::write(
        data.join("overlay.yaml"),
        "generation: 1
services:
  payments:
    name: payments
    versions:
    - name: v1
      weight: 0
      endpoints: [{address: 127.0.0.1:18081}]
    - name: v2
      weight: 100
      endpoints: [{address: 127.0.0.1:18082}]
    route: {prefix: /payments/}
    policies:
      timeout: 5s
      request_headers_to_add: [{name: x-edit, value: one}]
",
    )
    .expect("write");
    let cp = start(&config, &data).await;
    logged(&cp, "from whole services to per-field overrides").await;
    let r = route(&cp).await.expect("route");
    assert!(
        r.contains("payments-v2") && !r.contains("payments-v1"),
        "{r}"
    );
    // Only the weights are the admin's now: a header edit takes effect.
    replace(&config, &mesh((100, 0), "two", "5s", true));
    eventually(
        Duration::from_secs(10),
        "the header edit served",
        || async {
            let r = route(&cp).await?;
            (r.contains("two") && !r.contains("payments-v1"))
                .then_some(())
                .ok_or(r)
        },
    )
    .await;
}

#[tokio::test]
async fn apply_refuses_other_sections_reports_unchanged_and_warns() {
    let dir = TempDir::new("cp-overlay-apply");
    let data = dir.path().join("data");
    let mut text = mesh((100, 0), "one", "5s", true);
    // A mesh file with a per_try_timeout longer than its timeout: served, with a warning.
    text.push_str("  - name: slow\n    endpoints: [{address: 127.0.0.1:18096}]\n    policies:\n      timeout: 1s\n      retries: {on: [5xx], per_try_timeout: 3s}\n");
    let config = dir.write("mesh.yaml", &text);
    let cp = start(&config, &data).await;
    let warning = format!(
        "{}:19:45: services[2].policies.retries.per_try_timeout: per_try_timeout 3s is longer than the service's timeout 1s",
        config.display()
    );
    logged(&cp, &warning).await;
    let status = cp.get_json("/v1/mesh").await.expect("status");
    assert!(
        status["warnings"]
            .to_string()
            .contains("per_try_timeout 3s"),
        "{status}"
    );

    let with_proxy = dir.write(
        "proxy.yaml.in",
        &format!("proxy:\n  listener: {{address: 127.0.0.1:0}}\n{CREATED}"),
    );
    let err = ctl_fails(&cp, &["apply", "-f", with_proxy.to_str().expect("utf-8")]);
    assert!(
        err.contains("applies `services` only, and this document also has `proxy`"),
        "{err}"
    );
    assert!(
        served(&cp, CLUSTER_TYPE, "extra").await.is_err(),
        "nothing applied"
    );

    let file = dir.write("extra.yaml.in", CREATED);
    let before = pushes(&cp);
    let first = ctl(&cp, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(
        first.contains("service extra created\ngeneration 1"),
        "{first}"
    );
    // The log is read from a pipe: wait until the first apply's push has been read.
    eventually(
        Duration::from_secs(10),
        "the first apply's push logged",
        || async {
            if pushes(&cp) > before {
                Ok(())
            } else {
                Err(cp.log())
            }
        },
    )
    .await;
    let pushed = pushes(&cp);
    let again = ctl(&cp, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(
        again.contains("service extra unchanged\ngeneration 1"),
        "{again}"
    );
    assert_eq!(
        pushes(&cp),
        pushed,
        "an unchanged apply pushed: {}",
        cp.log()
    );

    // The same service, applied from the file's own definition: unchanged too.
    let payments = dir.write(
        "payments.yaml.in",
        &mesh((100, 0), "one", "5s", true)
            .lines()
            .skip(3)
            .take(8)
            .fold(String::from("services:\n"), |t, l| t + l + "\n"),
    );
    let same = ctl(&cp, &["apply", "-f", payments.to_str().expect("utf-8")]);
    assert!(same.contains("service payments unchanged"), "{same}");

    // An applied per_try_timeout longer than the timeout: applied, with a warning.
    let slow = dir.write(
        "slow.yaml.in",
        "services:\n  - name: extra\n    endpoints: [{address: 127.0.0.1:18099}]\n    route: {prefix: /x/}\n    policies: {timeout: 2s, retries: {on: [5xx], per_try_timeout: 5s}}\n",
    );
    let (ok, out, err) = cp.ctl(&["apply", "-f", slow.to_str().expect("utf-8")]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("warning: admin change (apply at ")
            && out.contains("per_try_timeout 5s is longer than the service's timeout 2s"),
        "{out}"
    );
    assert!(err.contains("legatectl: warning:"), "{err}");
    logged(&cp, "per_try_timeout 5s is longer").await;
    // The applied `slow` is generation 2, the one push since the first apply: wait until its
    // line has been read, then no unchanged apply may have pushed in between.
    eventually(
        Duration::from_secs(10),
        "generation 2's push logged",
        || async {
            let log = cp.log();
            if log
                .lines()
                .any(|l| l.contains("generation=2") && l.contains("new configuration pushed"))
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    assert_eq!(
        pushes(&cp),
        pushed + 1,
        "an unchanged apply pushed: {}",
        cp.log()
    );
}
