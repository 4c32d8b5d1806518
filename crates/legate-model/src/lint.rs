//! Warnings: settings that are valid, and served as written, but do not do what they seem to.
//!
//! Envoy accepts these too. Its `per_try_timeout` documentation says a try's deadline is
//! bounded by the route's `timeout` (which covers every try): a `per_try_timeout` longer
//! than the route's `timeout` never fires, since the whole request has ended first. legate
//! serves the mesh the same way and says so, rather than refusing a mesh Envoy would take.

use std::time::Duration;

use crate::{Mesh, Problem, Retries};

impl Mesh {
    /// The mesh's warnings, each with its field path (place it in a file with
    /// [`Sources`](crate::Sources) or [`crate::ConfigError::locate`]). Empty when there is
    /// nothing to say; never a reason to refuse the mesh.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            if let Some(m) = per_try_longer(s.policies.retries.as_ref(), s.timeout(), "service") {
                out.push(Problem {
                    path: format!("services[{i}].policies.retries.per_try_timeout"),
                    message: m,
                });
            }
        }
        for (i, rc) in self.route_configs.iter().enumerate() {
            for (j, vh) in rc.virtual_hosts.iter().enumerate() {
                for (k, r) in vh.routes.iter().enumerate() {
                    let Some(f) = &r.forward else { continue };
                    let route = format!("route_configs[{i}].virtual_hosts[{j}].routes[{k}]");
                    let (retries, path) = match &f.retries {
                        Some(own) => (
                            Some(own),
                            format!("{route}.forward.retries.per_try_timeout"),
                        ),
                        // The virtual host's retries apply; the route's timeout is the one
                        // to change, so point there.
                        None => (vh.retries.as_ref(), format!("{route}.forward.timeout")),
                    };
                    if let Some(m) = per_try_longer(retries, f.timeout, "route") {
                        out.push(Problem { path, message: m });
                    }
                }
            }
        }
        out
    }
}

/// The warning for a `per_try_timeout` longer than the whole-request `timeout` (unset:
/// Envoy's default; zero: no timeout, so nothing to say).
fn per_try_longer(
    retries: Option<&Retries>,
    timeout: Option<Duration>,
    what: &str,
) -> Option<String> {
    let per_try = retries?.per_try_timeout?;
    let (timeout, note) = match timeout {
        Some(t) if t.is_zero() => return None,
        Some(t) => (t, String::new()),
        None => (
            legate_snapshot::DEFAULT_ROUTE_TIMEOUT,
            " (Envoy's default, as `timeout` is unset)".to_owned(),
        ),
    };
    (per_try > timeout).then(|| {
        format!(
            "per_try_timeout {} is longer than the {what}'s timeout {}{note}: the timeout ends \
             the request first, so no try ever times out on its own and is retried; make \
             per_try_timeout shorter than timeout",
            crate::units::format_duration(per_try),
            crate::units::format_duration(timeout),
        )
    })
}

#[cfg(test)]
mod tests {
    fn warnings(text: &str) -> Vec<String> {
        let mesh = crate::load(text, "m.yaml").expect("valid");
        mesh.warnings().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn per_try_timeout_longer_than_the_timeout_is_a_warning() {
        let service = |policies: &str| {
            format!(
                "services:\n  - name: s\n    endpoints: [{{address: 127.0.0.1:1}}]\n    policies: {policies}\n"
            )
        };
        assert_eq!(
            warnings(&service(
                "{timeout: 2s, retries: {on: [5xx], per_try_timeout: 3s}}"
            )),
            [
                "services[0].policies.retries.per_try_timeout: per_try_timeout 3s is longer than \
              the service's timeout 2s: the timeout ends the request first, so no try ever \
              times out on its own and is retried; make per_try_timeout shorter than timeout"
            ]
        );
        let unset = warnings(&service("{retries: {on: [5xx], per_try_timeout: 20s}}"));
        assert!(
            unset[0].contains("timeout 15s (Envoy's default"),
            "{unset:?}"
        );
        for quiet in [
            "{timeout: 0s, retries: {on: [5xx], per_try_timeout: 20s}}",
            "{timeout: 5s, retries: {on: [5xx], per_try_timeout: 5s}}",
            "{retries: {on: [5xx], per_try_timeout: 1s}}",
            "{timeout: 1s, retries: {on: [5xx]}}",
        ] {
            assert_eq!(warnings(&service(quiet)), Vec::<String>::new(), "{quiet}");
        }
    }

    #[test]
    fn routes_and_inherited_virtual_host_retries_are_checked() {
        let text = "\
listeners: [{name: l, address: '127.0.0.1:0', route_config: rc}]
clusters: [{name: c, endpoints: [{address: '127.0.0.1:1'}]}]
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ['*']
        retries: {on: [5xx], per_try_timeout: 4s}
        routes:
          - match: {prefix: /a}
            forward: {cluster: c, timeout: 2s, retries: {on: [5xx], per_try_timeout: 3s}}
          - match: {prefix: /b}
            forward: {cluster: c, timeout: 3s}
          - match: {prefix: /c}
            forward: {cluster: c, timeout: 5s}
";
        let w = warnings(text);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with(
            "route_configs[0].virtual_hosts[0].routes[0].forward.retries.per_try_timeout: \
             per_try_timeout 3s is longer than the route's timeout 2s"
        ));
        assert!(w[1].starts_with(
            "route_configs[0].virtual_hosts[0].routes[1].forward.timeout: per_try_timeout 4s"
        ));
    }
}
