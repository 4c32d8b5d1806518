//! Several mesh documents (a directory of mesh files) → one mesh.
//!
//! Lists are concatenated in the order the parts are given; a name defined twice is a
//! conflict, reported with both places, and the repeat is left out. Merging happens before
//! validation, so a route in one file may forward to a cluster or service in another.

use std::collections::HashMap;
use std::fmt;

use crate::locate::Locator;
use crate::{ConfigError, Mesh, parse_mesh};

/// A name defined twice among the meshes given to [`Mesh::merge`] (in two parts, or twice in
/// one), or a second `proxy` or `telemetry` section (the whole section: tracing in one file
/// and an access log in another is a conflict too).
///
/// Displays as `{source}: {path}: duplicate cluster name `payments` (first in {first_source}
/// at {first_path})`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeConflict {
    /// What is defined twice: `listener`, `route config`, `cluster`, `service`, `secret`, or
    /// one of the sections `proxy` and `telemetry`.
    pub kind: &'static str,
    /// The name defined twice; empty for a section.
    pub name: String,
    /// The part (file) of the first definition, and its field path there.
    pub first_source: String,
    pub first_path: String,
    /// The part (file) of the repeat, and its field path there.
    pub source: String,
    pub path: String,
}

impl MergeConflict {
    fn message(&self, first: &str) -> String {
        if self.name.is_empty() {
            // A section rather than a named item: `proxy` or `telemetry`.
            format!(
                "`{}` is set in more than one file (first in {first})",
                self.kind
            )
        } else {
            format!(
                "duplicate {} name `{}` (first in {first})",
                self.kind, self.name
            )
        }
    }
}

impl fmt::Display for MergeConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = format!("{} at {}", self.first_source, self.first_path);
        write!(
            f,
            "{}: {}: {}",
            self.source,
            self.path,
            self.message(&first)
        )
    }
}

// Not derived with thiserror: it would take the field named `source` for the error's cause.
impl std::error::Error for MergeConflict {}

impl Mesh {
    /// Merge meshes, each with the name of where it came from (usually its file name), into
    /// one; lists are concatenated in the order given.
    ///
    /// Every conflict is reported: a listener, route config, cluster, service or secret name
    /// defined twice (across parts or within one), or `proxy` or `telemetry` set in more than one part. Give the
    /// parts in a stable order (file names sorted) so the merged mesh, and the resources
    /// compiled from it, do not depend on directory listing order. The result still needs
    /// [`Mesh::check`]; [`load_files`] parses, merges and validates with positions.
    pub fn merge<S: Into<String>>(
        parts: impl IntoIterator<Item = (S, Mesh)>,
    ) -> Result<Mesh, Vec<MergeConflict>> {
        let merged = merge_parts(parts.into_iter().map(|(s, m)| (s.into(), m)).collect());
        if merged.conflicts.is_empty() {
            Ok(merged.mesh)
        } else {
            Err(merged.conflicts.into_iter().map(|c| c.conflict).collect())
        }
    }
}

/// Parse, merge and validate several mesh documents, given as `(source, text)` in a stable
/// order; every error is located in the file it is about.
///
/// Parse errors are reported for every file that has one (and stop there); otherwise merge
/// conflicts and the merged mesh's semantic problems are reported together, each problem's
/// path relative to the file that wrote the item, e.g.
/// `payments.yaml:7:17: services[0].versions[1].weight: ...`.
pub fn load_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Mesh, Vec<ConfigError>> {
    load_files_with_sources(files).map(|(mesh, _)| mesh)
}

/// [`load_files`], keeping what it takes to place a field path of the merged mesh in its
/// file later ([`Sources::locate`]).
pub fn load_files_with_sources<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(Mesh, Sources), Vec<ConfigError>> {
    let files: Vec<(&str, &str)> = files.into_iter().collect();
    let mut parts = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for &(source, text) in &files {
        match parse_mesh(text, source) {
            Ok(mesh) => parts.push((source.to_owned(), mesh)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let merged = merge_parts(parts);
    let locators: Vec<Locator<'_>> = files.iter().map(|(_, t)| Locator::new(t)).collect();
    let locate = |part: usize, path: String, message: String| {
        let (line, column) = locators[part].position(&path);
        ConfigError {
            source: files[part].0.to_owned(),
            line,
            column,
            path,
            message,
        }
    };
    for c in &merged.conflicts {
        let (line, column) = locators[c.first_part].position(&c.conflict.first_path);
        let first = format!("{}:{line}:{column}", c.conflict.first_source);
        errors.push(locate(
            c.part,
            c.conflict.path.clone(),
            c.conflict.message(&first),
        ));
    }
    if let Err(problems) = merged.mesh.check() {
        for p in problems {
            let (part, path) = merged.origins.origin(&p.path);
            errors.push(locate(part, path, p.message));
        }
    }
    if errors.is_empty() {
        let sources = Sources {
            files: files
                .iter()
                .map(|(s, t)| ((*s).to_owned(), (*t).to_owned()))
                .collect(),
            origins: merged.origins,
        };
        Ok((merged.mesh, sources))
    } else {
        Err(errors)
    }
}

/// The mesh files a merged mesh was read from, with where each of its list items was
/// written: places a field path of the merged mesh (`services[4].route.prefix`) in its file
/// (`payments.yaml:7:15`, path `services[1].route.prefix` there).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// (source, text), in the order merged.
    files: Vec<(String, String)>,
    origins: Origins,
}

/// A place in a mesh file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub source: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The field path within that file.
    pub path: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source, self.line, self.column)
    }
}

impl Sources {
    /// Where the merged mesh's field `path` is written (or its nearest written ancestor);
    /// `None` for an item none of the files wrote.
    pub fn locate(&self, path: &str) -> Option<Location> {
        self.locate_all(&[path]).into_iter().next().flatten()
    }

    /// [`locate`](Self::locate) for several paths, reading each file's text once.
    pub fn locate_all(&self, paths: &[&str]) -> Vec<Option<Location>> {
        let mut locators: HashMap<usize, Locator<'_>> = HashMap::new();
        paths
            .iter()
            .map(|path| {
                let (part, local) = self.origins.find(path)?;
                let (source, text) = self.files.get(part)?;
                let locator = locators.entry(part).or_insert_with(|| Locator::new(text));
                let (line, column) = locator.position(&local);
                Some(Location {
                    source: source.clone(),
                    line,
                    column,
                    path: local,
                })
            })
            .collect()
    }
}

struct Conflict {
    conflict: MergeConflict,
    part: usize,
    first_part: usize,
}

/// The merged mesh, with where each list item came from.
struct Merged {
    mesh: Mesh,
    conflicts: Vec<Conflict>,
    origins: Origins,
}

/// Where each list item of a merged mesh came from: (part, index in that part).
#[derive(Clone, Debug, Default)]
struct Origins {
    lists: HashMap<&'static str, Vec<(usize, usize)>>,
    proxy: Option<usize>,
    /// The part that set `telemetry`.
    telemetry: Option<usize>,
    /// Where the services layer's implicit proxy section is attributed when no part sets
    /// one: the first part with services.
    services: Option<usize>,
}

impl Origins {
    /// The part a merged mesh's field path belongs to, and the path within that part.
    fn origin(&self, path: &str) -> (usize, String) {
        self.find(path).unwrap_or_else(|| (0, path.to_owned()))
    }

    /// [`origin`](Self::origin), or `None` for an item no part wrote (one added to the
    /// merged mesh afterwards).
    fn find(&self, path: &str) -> Option<(usize, String)> {
        if path.starts_with("proxy") {
            return Some((self.proxy.or(self.services).unwrap_or(0), path.to_owned()));
        }
        if path.starts_with("telemetry") {
            return Some((self.telemetry.unwrap_or(0), path.to_owned()));
        }
        let Some((list, rest)) = path.split_once('[') else {
            return Some((0, path.to_owned()));
        };
        let (index, tail) = rest.split_once(']')?;
        let index: usize = index.parse().ok()?;
        let &(part, local) = self.lists.get(list)?.get(index)?;
        Some((part, format!("{list}[{local}]{tail}")))
    }
}

fn merge_parts(parts: Vec<(String, Mesh)>) -> Merged {
    let sources: Vec<String> = parts.iter().map(|(s, _)| s.clone()).collect();
    let mut conflicts = Vec::new();
    let mut mesh = Mesh::default();
    let mut origins = HashMap::new();
    let mut proxy: Option<usize> = None;
    let mut telemetry: Option<usize> = None;
    let mut services: Option<usize> = None;
    let mut lists = Lists {
        sources: &sources,
        conflicts: &mut conflicts,
        seen: HashMap::new(),
    };
    for (part, (_, m)) in parts.into_iter().enumerate() {
        if !m.services.is_empty() && services.is_none() {
            services = Some(part);
        }
        lists.take(
            part,
            "listeners",
            "listener",
            m.listeners,
            &mut mesh.listeners,
            |l| &l.name,
        );
        lists.take(
            part,
            "route_configs",
            "route config",
            m.route_configs,
            &mut mesh.route_configs,
            |r| &r.name,
        );
        lists.take(
            part,
            "clusters",
            "cluster",
            m.clusters,
            &mut mesh.clusters,
            |c| &c.name,
        );
        lists.take(
            part,
            "services",
            "service",
            m.services,
            &mut mesh.services,
            |s| &s.name,
        );
        lists.take(
            part,
            "secrets",
            "secret",
            m.secrets,
            &mut mesh.secrets,
            |s| &s.name,
        );
        if let Some(t) = m.telemetry {
            match telemetry {
                Some(first) => lists.conflicts.push(Conflict {
                    conflict: MergeConflict {
                        kind: "telemetry",
                        name: String::new(),
                        first_source: sources[first].clone(),
                        first_path: "telemetry".into(),
                        source: sources[part].clone(),
                        path: "telemetry".into(),
                    },
                    part,
                    first_part: first,
                }),
                None => {
                    telemetry = Some(part);
                    mesh.telemetry = Some(t);
                }
            }
        }
        if let Some(p) = m.proxy {
            match proxy {
                Some(first) => lists.conflicts.push(Conflict {
                    conflict: MergeConflict {
                        kind: "proxy",
                        name: String::new(),
                        first_source: sources[first].clone(),
                        first_path: "proxy".into(),
                        source: sources[part].clone(),
                        path: "proxy".into(),
                    },
                    part,
                    first_part: first,
                }),
                None => {
                    proxy = Some(part);
                    mesh.proxy = Some(p);
                }
            }
        }
    }
    for (list, seen) in lists.seen {
        origins.insert(list, seen.kept);
    }
    Merged {
        mesh,
        conflicts,
        origins: Origins {
            lists: origins,
            proxy,
            telemetry,
            services,
        },
    }
}

#[derive(Default)]
struct Seen {
    /// Name → (part, index) of its first definition.
    first: HashMap<String, (usize, usize)>,
    /// (part, index) of each kept item, in merged order.
    kept: Vec<(usize, usize)>,
}

struct Lists<'a> {
    sources: &'a [String],
    conflicts: &'a mut Vec<Conflict>,
    seen: HashMap<&'static str, Seen>,
}

impl Lists<'_> {
    fn take<T>(
        &mut self,
        part: usize,
        list: &'static str,
        kind: &'static str,
        items: Vec<T>,
        out: &mut Vec<T>,
        name: impl Fn(&T) -> &str,
    ) {
        let seen = self.seen.entry(list).or_default();
        for (index, item) in items.into_iter().enumerate() {
            let n = name(&item);
            // An empty name is not a name to clash on; validation reports it.
            if !n.is_empty() {
                if let Some(&(first_part, first_index)) = seen.first.get(n) {
                    self.conflicts.push(Conflict {
                        conflict: MergeConflict {
                            kind,
                            name: n.to_owned(),
                            first_source: self.sources[first_part].clone(),
                            first_path: format!("{list}[{first_index}].name"),
                            source: self.sources[part].clone(),
                            path: format!("{list}[{index}].name"),
                        },
                        part,
                        first_part,
                    });
                    continue;
                }
                seen.first.insert(n.to_owned(), (part, index));
            }
            seen.kept.push((part, index));
            out.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: &str = include_str!("../../../examples/mesh/00-proxy.yaml");
    const ORDERS: &str = include_str!("../../../examples/mesh/orders.yaml");
    const PAYMENTS: &str = include_str!("../../../examples/mesh/payments.yaml");

    fn example() -> [(&'static str, &'static str); 3] {
        // File name order, as a directory is read.
        [
            ("00-proxy.yaml", PROXY),
            ("orders.yaml", ORDERS),
            ("payments.yaml", PAYMENTS),
        ]
    }

    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        load_files(files.iter().copied())
            .expect_err("should fail")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn example_directory_loads_and_compiles() {
        let mesh = match load_files(example()) {
            Ok(m) => m,
            Err(e) => panic!("{e:?}"),
        };
        let names: Vec<&str> = mesh.services.iter().map(|s| &s.name[..]).collect();
        assert_eq!(names, ["orders", "payments"]);
        assert_eq!(
            mesh.proxy.as_ref().map(|p| p.address()),
            Some("127.0.0.1:15001")
        );
        // orders.yaml routes to a cluster payments.yaml generates.
        let resources = crate::compile(&mesh);
        let snapshot = match legate_snapshot::build("v1", &resources) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let listeners: Vec<&str> = snapshot.listeners.iter().map(|l| &*l.name).collect();
        assert_eq!(listeners, ["ops", "outbound"]);
        assert!(snapshot.clusters.contains_key("payments-v2"));
        assert!(snapshot.clusters.contains_key("orders"));
    }

    #[test]
    fn merge_concatenates_in_order() {
        let part = |text: &str| crate::parse_mesh(text, "x").expect("parses");
        let merged = Mesh::merge([
            (
                "a.yaml",
                part("clusters: [{name: a}]\nservices: [{name: s, endpoints: []}]"),
            ),
            ("b.yaml", part("clusters: [{name: b}]\nproxy: {}")),
        ])
        .expect("merges");
        let names: Vec<&str> = merged.clusters.iter().map(|c| &c.name[..]).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(merged.services.len(), 1);
        assert_eq!(merged.proxy, Some(crate::Proxy::default()));
        assert_eq!(
            Mesh::merge(Vec::<(String, Mesh)>::new()),
            Ok(Mesh::default())
        );
    }

    #[test]
    fn merge_reports_every_conflict_with_both_places() {
        let part = |text: &str| crate::parse_mesh(text, "x").expect("parses");
        let conflicts = Mesh::merge([
            (
                "a.yaml",
                part("clusters: [{name: c}]\nservices: [{name: s, endpoints: []}]\nproxy: {}"),
            ),
            (
                "b.yaml",
                part(
                    "clusters: [{name: d}, {name: c}]\nservices: [{name: s, endpoints: []}]\n\
                     proxy: {}",
                ),
            ),
            ("c.yaml", part("clusters: [{name: e}, {name: e}]")),
        ])
        .expect_err("should fail");
        let text: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "b.yaml: clusters[1].name: duplicate cluster name `c` (first in a.yaml at \
                 clusters[0].name)",
                "b.yaml: services[0].name: duplicate service name `s` (first in a.yaml at \
                 services[0].name)",
                "b.yaml: proxy: `proxy` is set in more than one file (first in a.yaml at proxy)",
                "c.yaml: clusters[1].name: duplicate cluster name `e` (first in c.yaml at \
                 clusters[0].name)",
            ]
        );
        assert_eq!(conflicts[0].kind, "cluster");
        assert_eq!(conflicts[0].first_source, "a.yaml");
    }

    #[test]
    fn load_files_locates_errors_in_their_file() {
        let a = "\
services:
  - name: web
    endpoints: [{address: 127.0.0.1:80}]
clusters:
  - name: shared
";
        let b = "\
clusters:
  - name: other
  - name: shared
services:
  - name: api
    versions:
      - {name: v1, weight: 0}
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ['*']
        routes:
          - forward: {cluster: web}
          - forward: {cluster: nowhere}
";
        assert_eq!(
            errors(&[("a.yaml", a), ("b.yaml", b)]),
            [
                "b.yaml:3:11: clusters[1].name: duplicate cluster name `shared` (first in \
                 a.yaml:5:11)",
                "b.yaml:15:32: route_configs[0].virtual_hosts[0].routes[1].forward.cluster: \
                 unknown cluster `nowhere`",
                "b.yaml:6:5: services[0].versions: version weights are all zero: no version \
                 would get traffic",
            ]
        );
    }

    #[test]
    fn telemetry_is_one_section_set_in_one_file() {
        let a = "services:\n  - name: web\n    endpoints: [{address: 127.0.0.1:80}]\n";
        let tracing = "telemetry:\n  tracing: {collector: '127.0.0.1:4317'}\n";
        let access_log = "\n\ntelemetry:\n  access_log: {path: /dev/stdout}\n";
        // Tracing in one file and an access log in another is still two `telemetry`s.
        assert_eq!(
            errors(&[("a.yaml", a), ("b.yaml", tracing), ("c.yaml", access_log)]),
            [
                "c.yaml:3:1: telemetry: `telemetry` is set in more than one file (first in \
              b.yaml:1:1)"
            ]
        );
        // A problem inside the section is placed in the file that wrote it.
        let bad = "\n\ntelemetry:\n  tracing: {collector: nowhere}\n";
        assert_eq!(
            errors(&[("a.yaml", a), ("b.yaml", bad)]),
            ["b.yaml:4:24: telemetry.tracing.collector: `nowhere` is not a host:port address"]
        );
        let merged = load_files([("a.yaml", a), ("b.yaml", tracing)]).expect("one telemetry");
        assert!(merged.telemetry.is_some_and(|t| t.tracing.is_some()));
    }

    #[test]
    fn load_files_reports_parse_errors_of_every_file() {
        assert_eq!(
            errors(&[
                ("a.yaml", "services: [{name: a, colour: blue}]"),
                ("b.yaml", "clusters: []"),
                ("c.yaml", "proxy: {listener: {address: 1}, extra: 2}"),
            ]),
            [
                "a.yaml:1:22: services[0].colour: unknown field `colour`, expected one of \
                 `name`, `protocol`, `lb_policy`, `connect_timeout`, `idle_timeout`, \
                 `max_requests_per_connection`, `discovery`, `dns_refresh_rate`, `endpoints`, \
                 `versions`, `route`, `policies`, `tls`, `rollout`",
                "c.yaml:1:33: proxy.extra: unknown field `extra`, expected `listener` or \
                 `route_config`",
            ]
        );
    }

    #[test]
    fn the_implicit_proxy_belongs_to_the_first_file_with_services() {
        let a = "listeners: [{name: l, address: '127.0.0.1:15001', route_config: rc}]\n\
                 route_configs: [{name: rc, virtual_hosts: []}]\n";
        let b = "services: [{name: s, endpoints: []}]\n";
        assert_eq!(
            errors(&[("a.yaml", a), ("b.yaml", b)]),
            [
                "b.yaml:1:1: proxy.listener.address: address 127.0.0.1:15001 (the default; set \
              `proxy.listener.address`) is also used by listener `l`"
            ]
        );
    }
}
