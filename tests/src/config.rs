//! Builders for `legate --config` bootstrap files, so tests state only what they are about.
//!
//! Tests may also write the YAML by hand; these helpers only remove the repetition (and the
//! indentation mistakes). Clusters are rendered in YAML flow style, one line each.

use std::fmt::Write;
use std::net::SocketAddr;

/// One `mesh.clusters` entry.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub name: String,
    /// `static` or `strict_dns`.
    pub discovery: String,
    /// `round_robin`, `least_request` or `random`.
    pub lb_policy: String,
    /// `http1` or `http2`.
    pub protocol: String,
    pub connect_timeout: String,
    pub idle_timeout: Option<String>,
    pub dns_refresh_rate: Option<String>,
    /// `(address, weight)`; the address is `ip:port`, or `host:port` for `strict_dns`.
    pub endpoints: Vec<(String, u32)>,
}

/// A static round-robin HTTP/1.1 cluster over `endpoints`, each of weight 1.
pub fn cluster(name: &str, endpoints: &[SocketAddr]) -> ClusterSpec {
    ClusterSpec {
        name: name.to_owned(),
        discovery: "static".to_owned(),
        lb_policy: "round_robin".to_owned(),
        protocol: "http1".to_owned(),
        connect_timeout: "1s".to_owned(),
        idle_timeout: None,
        dns_refresh_rate: None,
        endpoints: endpoints.iter().map(|a| (a.to_string(), 1)).collect(),
    }
}

impl ClusterSpec {
    pub fn lb(mut self, policy: &str) -> Self {
        self.lb_policy = policy.to_owned();
        self
    }

    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = protocol.to_owned();
        self
    }

    pub fn connect_timeout(mut self, timeout: &str) -> Self {
        self.connect_timeout = timeout.to_owned();
        self
    }

    pub fn idle_timeout(mut self, timeout: &str) -> Self {
        self.idle_timeout = Some(timeout.to_owned());
        self
    }

    /// Replace the endpoints with weighted ones.
    pub fn weighted(mut self, endpoints: &[(SocketAddr, u32)]) -> Self {
        self.endpoints = endpoints.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        self
    }

    /// Make it a `strict_dns` cluster over `host:port` names.
    pub fn strict_dns(mut self, hosts: &[&str], refresh: &str) -> Self {
        self.discovery = "strict_dns".to_owned();
        self.dns_refresh_rate = Some(refresh.to_owned());
        self.endpoints = hosts.iter().map(|h| ((*h).to_owned(), 1)).collect();
        self
    }

    /// The entry as one YAML flow-style list item, `- {name: ..., ...}`.
    pub fn yaml(&self) -> String {
        let mut out = format!(
            "- {{name: {}, discovery: {}, lb_policy: {}, protocol: {}, connect_timeout: {}",
            self.name, self.discovery, self.lb_policy, self.protocol, self.connect_timeout
        );
        if let Some(idle) = &self.idle_timeout {
            let _ = write!(out, ", idle_timeout: {idle}");
        }
        if let Some(refresh) = &self.dns_refresh_rate {
            let _ = write!(out, ", dns_refresh_rate: {refresh}");
        }
        out.push_str(", endpoints: [");
        for (i, (address, weight)) in self.endpoints.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{{address: \"{address}\", weight: {weight}}}");
        }
        out.push_str("]}");
        out
    }
}

/// Removes the common leading whitespace of the non-blank lines, then indents every line by
/// `spaces`. Lets tests write YAML fragments in raw strings at any indentation.
pub fn indent(text: &str, spaces: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(spaces);
    let mut out = String::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(&pad);
        out.push_str(&line[common..]);
        out.push('\n');
    }
    out
}

/// A whole bootstrap file from its three lists, each given as YAML list items (any
/// indentation; see [`indent`]).
pub fn bootstrap(listeners: &str, route_configs: &str, clusters: &[ClusterSpec]) -> String {
    bootstrap_with_drain(listeners, route_configs, clusters, "5s")
}

/// [`bootstrap`] with a chosen `drain_timeout`.
pub fn bootstrap_with_drain(
    listeners: &str,
    route_configs: &str,
    clusters: &[ClusterSpec],
    drain_timeout: &str,
) -> String {
    let mut out = format!(
        "node: {{id: test, cluster: tests}}\n\
         admin: {{address: 127.0.0.1:0}}\n\
         drain_timeout: {drain_timeout}\n\
         mesh:\n"
    );
    out.push_str(&indent(&mesh(listeners, route_configs, clusters), 2));
    out
}

/// A mesh document (the authoring format alone, as the control plane and
/// [`crate::xds_server::mesh_resources`] read it) from its three lists, each given as YAML
/// list items (any indentation; see [`indent`]).
pub fn mesh(listeners: &str, route_configs: &str, clusters: &[ClusterSpec]) -> String {
    let mut out = "listeners:\n".to_owned();
    if listeners.trim().is_empty() {
        out = "listeners: []\n".to_owned();
    } else {
        out.push_str(&indent(listeners, 2));
    }
    if route_configs.trim().is_empty() {
        out.push_str("route_configs: []\n");
    } else {
        out.push_str("route_configs:\n");
        out.push_str(&indent(route_configs, 2));
    }
    if clusters.is_empty() {
        out.push_str("clusters: []\n");
    } else {
        out.push_str("clusters:\n");
        for cluster in clusters {
            out.push_str("  ");
            out.push_str(&cluster.yaml());
            out.push('\n');
        }
    }
    out
}

/// A mesh with one listener `outbound` (protocol `auto`, route config `outbound`) whose
/// single virtual host `all` matches every domain, with `routes` (YAML list items).
pub fn single_vhost_mesh(routes: &str, clusters: &[ClusterSpec]) -> String {
    let (listeners, route_configs) = single_vhost_parts(routes, "auto");
    mesh(&listeners, &route_configs, clusters)
}

fn single_vhost_parts(routes: &str, protocol: &str) -> (String, String) {
    let listeners = format!(
        "- {{name: outbound, address: 127.0.0.1:0, protocol: {protocol}, route_config: outbound}}"
    );
    let route_configs = format!(
        "- name: outbound\n  virtual_hosts:\n    - name: all\n      domains: [\"*\"]\n      routes:\n{}",
        indent(routes, 8)
    );
    (listeners, route_configs)
}

/// The common case: one listener `outbound` (protocol `auto`) whose route config `outbound`
/// has a single virtual host `all` matching every domain, with `routes` (YAML list items).
pub fn single_vhost(routes: &str, clusters: &[ClusterSpec]) -> String {
    single_vhost_on(routes, clusters, "auto")
}

/// [`single_vhost`] with the listener's protocol chosen (`auto`, `http1`, `http2`).
pub fn single_vhost_on(routes: &str, clusters: &[ClusterSpec], protocol: &str) -> String {
    let (listeners, route_configs) = single_vhost_parts(routes, protocol);
    bootstrap(&listeners, &route_configs, clusters)
}

/// A config that forwards everything (`prefix: /`) to one cluster `name` over `endpoints`,
/// with a generous route timeout.
pub fn forward_all(cluster_spec: ClusterSpec) -> String {
    let routes = format!(
        "- match: {{prefix: /}}\n  forward: {{cluster: {}, timeout: 30s}}",
        cluster_spec.name
    );
    single_vhost(&routes, &[cluster_spec])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_single_vhost() {
        let addr: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        let yaml = single_vhost(
            r#"
                - match: {prefix: /}
                  forward: {cluster: a}
            "#,
            &[cluster("a", &[addr]).lb("random")],
        );
        let expected = "\
node: {id: test, cluster: tests}
admin: {address: 127.0.0.1:0}
drain_timeout: 5s
mesh:
  listeners:
    - {name: outbound, address: 127.0.0.1:0, protocol: auto, route_config: outbound}
  route_configs:
    - name: outbound
      virtual_hosts:
        - name: all
          domains: [\"*\"]
          routes:
            - match: {prefix: /}
              forward: {cluster: a}
  clusters:
    - {name: a, discovery: static, lb_policy: random, protocol: http1, connect_timeout: 1s, endpoints: [{address: \"127.0.0.1:8081\", weight: 1}]}
";
        assert_eq!(yaml, expected);
    }
}
