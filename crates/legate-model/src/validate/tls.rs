//! Checks on `secrets` and on clusters' and services' `tls`: every name a `tls` setting uses
//! is a `secrets` entry of the right kind, a secret is either a certificate with its key or
//! a trust bundle, and SAN matching has a CA to chain to (Envoy refuses SAN checks without
//! one: anyone could present the names).

use std::collections::HashSet;
use std::net::IpAddr;

use super::Checker;
use crate::{Secret, UpstreamTls};

/// The longest secret name accepted (it is an SDS resource name and a log field).
const MAX_SECRET_NAME: usize = 253;

impl Checker<'_> {
    pub(super) fn secrets(&mut self) {
        let mesh = self.mesh;
        self.unique_names(
            "secrets",
            "secret",
            mesh.secrets.iter().map(|s| &s.name[..]),
        );
        for (i, s) in mesh.secrets.iter().enumerate() {
            self.secret(&format!("secrets[{i}]"), s);
        }
    }

    fn secret(&mut self, path: &str, s: &Secret) {
        let name_ok = s.name.len() <= MAX_SECRET_NAME
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !s.name.is_empty() && !name_ok {
            self.report(
                format!("{path}.name"),
                format!(
                    "`{}` is not a valid secret name (letters, digits, `-`, `.` and `_`, at \
                     most {MAX_SECRET_NAME})",
                    s.name
                ),
            );
        }
        if s.value.is_some() {
            if s.cert.is_some() || s.key.is_some() || s.ca.is_some() {
                self.report(
                    format!("{path}.value"),
                    "a credential `value` stands alone, without `cert`, `key` or `ca`: write \
                     two secrets",
                );
            }
            if s.value.as_deref().is_some_and(|p| p.trim().is_empty()) {
                self.report(format!("{path}.value"), "file name is empty");
            }
            return;
        }
        match (&s.cert, &s.key, &s.ca) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            (Some(_), None, None) => {
                self.report(path, "a certificate needs its private key: set `key`")
            }
            (None, Some(_), None) => {
                self.report(path, "a private key needs its certificate: set `cert`")
            }
            (None, None, None) => self.report(
                path,
                "a secret needs `cert` and `key` (a certificate), `ca` (a trust bundle) or \
                 `value` (a credential)",
            ),
            (_, _, Some(_)) => self.report(
                format!("{path}.ca"),
                "a secret is a certificate (`cert` and `key`) or a trust bundle (`ca`), not \
                 both: write two secrets",
            ),
        }
        for (field, value) in [("cert", &s.cert), ("key", &s.key), ("ca", &s.ca)] {
            if value.as_deref().is_some_and(|p| p.trim().is_empty()) {
                self.report(format!("{path}.{field}"), "file name is empty");
            }
        }
    }

    /// The `tls` of a cluster or service at `path`.
    pub(super) fn upstream_tls(&mut self, path: &str, tls: &UpstreamTls) {
        if let Some(sni) = &tls.sni
            && let Err(m) = check_server_name(sni)
        {
            self.report(format!("{path}.sni"), m);
        }
        match (&tls.ca, &tls.ca_file) {
            (Some(_), Some(_)) => self.report(
                format!("{path}.ca_file"),
                "set one of `ca` (a secret served over SDS) and `ca_file` (a file on the \
                 proxy's disk)",
            ),
            (Some(ca), None) => self.secret_ref(&format!("{path}.ca"), ca, false),
            (None, Some(f)) if f.trim().is_empty() => {
                self.report(format!("{path}.ca_file"), "file name is empty");
            }
            _ => {}
        }
        if !tls.subject_alt_names.is_empty() && tls.ca.is_none() && tls.ca_file.is_none() {
            self.report(
                format!("{path}.subject_alt_names"),
                "matching subject alt names needs a CA to verify against: set `ca` or \
                 `ca_file`",
            );
        }
        for (i, san) in tls.subject_alt_names.iter().enumerate() {
            if san.is_empty() || san.contains(|c: char| c.is_whitespace() || c.is_control()) {
                self.report(
                    format!("{path}.subject_alt_names[{i}]"),
                    format!("`{san}` is not a subject alt name"),
                );
            }
        }
        if let Some(cert) = &tls.client_certificate {
            self.secret_ref(&format!("{path}.client_certificate"), cert, true);
        }
        let mut seen = HashSet::new();
        for (i, rule) in tls.client_certificates.iter().enumerate() {
            let rpath = format!("{path}.client_certificates[{i}]");
            if rule.node_cluster.is_empty() {
                self.report(format!("{rpath}.node_cluster"), "node cluster is empty");
            } else if !seen.insert(&rule.node_cluster) {
                self.report(
                    format!("{rpath}.node_cluster"),
                    format!(
                        "node cluster `{}` already has a client certificate in this list",
                        rule.node_cluster
                    ),
                );
            }
            self.secret_ref(&format!("{rpath}.secret"), &rule.secret, true);
        }
    }

    /// `name` must be a `secrets` entry: a certificate when `certificate`, else a trust
    /// bundle.
    fn secret_ref(&mut self, path: &str, name: &str, certificate: bool) {
        let found = self.mesh.secrets.iter().find(|s| s.name == name);
        let (want, other) = if certificate {
            ("a certificate (`cert` and `key`)", "a trust bundle (`ca`)")
        } else {
            ("a trust bundle (`ca`)", "a certificate (`cert` and `key`)")
        };
        match found {
            None => self.report(path, format!("unknown secret `{name}`")),
            Some(s) if s.value.is_some() => self.report(
                path,
                format!("secret `{name}` is a credential (`value`); this takes {want}"),
            ),
            Some(s) if s.is_certificate() != certificate => self.report(
                path,
                format!("secret `{name}` is {other}; this takes {want}"),
            ),
            Some(_) => {}
        }
    }
}

impl Checker<'_> {
    /// `name` must be a `secrets` entry with `value` (a credential).
    pub(super) fn credential_secret_ref(&mut self, path: &str, name: &str) {
        match self.mesh.secrets.iter().find(|s| s.name == name) {
            None => self.report(path, format!("unknown secret `{name}`")),
            Some(s) if s.value.is_none() => self.report(
                path,
                format!("secret `{name}` is not a credential: this takes a secret with `value`"),
            ),
            Some(_) => {}
        }
    }
}

/// An SNI value: a DNS host name, without a port, a wildcard or an IP address (RFC 6066 has
/// no IP server names).
fn check_server_name(sni: &str) -> Result<(), String> {
    if sni.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "`{sni}` is an IP address; SNI carries host names only (leave `sni` out, and \
             match the address with `subject_alt_names`)"
        ));
    }
    let labels_ok = !sni.is_empty()
        && sni.len() <= 253
        && sni.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if labels_ok {
        Ok(())
    } else {
        Err(format!("`{sni}` is not a host name"))
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_mesh, validate};

    /// `text` checked, as `line:column: path: message`.
    fn problems(text: &str) -> Vec<String> {
        let mesh = parse_mesh(text, "m.yaml").unwrap_or_else(|e| panic!("{e}"));
        match validate(&mesh, text, "m.yaml") {
            Ok(()) => vec![],
            Err(errors) => errors
                .iter()
                .map(|e| {
                    let s = e.to_string();
                    s.strip_prefix("m.yaml:").unwrap_or(&s).to_owned()
                })
                .collect(),
        }
    }

    const SECRETS: &str = "\
secrets:
  - {name: payments-ca, ca: /etc/legate/ca.pem}
  - {name: web-client, cert: /etc/legate/web.pem, key: /etc/legate/web.key}
";

    fn service(tls: &str) -> String {
        format!(
            "{SECRETS}services:\n  - name: payments\n    endpoints: [{{address: \
             127.0.0.1:8443}}]\n    tls: {tls}\n"
        )
    }

    #[test]
    fn good_tls_passes() {
        for tls in [
            "{sni: payments.internal, ca: payments-ca, subject_alt_names: \
             ['spiffe://legate.local/ns/default/sa/payments', 10.0.0.1, payments.internal], \
             client_certificate: web-client}",
            "{ca_file: /etc/ssl/ca.pem}",
            "{}",
            "{ca: payments-ca, client_certificates: [{node_cluster: web, secret: web-client}]}",
        ] {
            assert_eq!(problems(&service(tls)), Vec::<String>::new(), "{tls}");
        }
    }

    #[test]
    fn tls_mistakes_are_located() {
        let check = |tls: &str, expected: &[&str]| {
            assert_eq!(problems(&service(tls)), expected, "{tls}");
        };
        check(
            "{ca: web-client}",
            &[
                "7:15: services[0].tls.ca: secret `web-client` is a certificate (`cert` and \
               `key`); this takes a trust bundle (`ca`)",
            ],
        );
        check(
            "{client_certificate: payments-ca}",
            &[
                "7:31: services[0].tls.client_certificate: secret `payments-ca` is a trust \
               bundle (`ca`); this takes a certificate (`cert` and `key`)",
            ],
        );
        check(
            "{ca: nope}",
            &["7:15: services[0].tls.ca: unknown secret `nope`"],
        );
        check(
            "{ca: payments-ca, ca_file: /x.pem}",
            &[
                "7:37: services[0].tls.ca_file: set one of `ca` (a secret served over SDS) and \
               `ca_file` (a file on the proxy's disk)",
            ],
        );
        check(
            "{subject_alt_names: [a.example]}",
            &[
                "7:30: services[0].tls.subject_alt_names: matching subject alt names needs a CA \
               to verify against: set `ca` or `ca_file`",
            ],
        );
        check(
            "{sni: 10.0.0.1}",
            &[
                "7:16: services[0].tls.sni: `10.0.0.1` is an IP address; SNI carries host names \
               only (leave `sni` out, and match the address with `subject_alt_names`)",
            ],
        );
        check(
            "{sni: 'a..b'}",
            &["7:16: services[0].tls.sni: `a..b` is not a host name"],
        );
        check(
            "{client_certificates: [{node_cluster: web, secret: web-client}, {node_cluster: \
             web, secret: web-client}]}",
            &[
                "7:89: services[0].tls.client_certificates[1].node_cluster: node cluster `web` \
               already has a client certificate in this list",
            ],
        );
    }

    #[test]
    fn secret_mistakes_are_located() {
        let text = "\
secrets:
  - {name: a, cert: /a.pem}
  - {name: b, key: /b.key}
  - {name: c}
  - {name: d, cert: /d.pem, key: /d.key, ca: /ca.pem}
  - {name: 'e e', ca: /ca.pem}
  - {name: a, ca: ''}
";
        assert_eq!(
            problems(text),
            [
                "7:12: secrets[5].name: duplicate secret name `a` (first at index 0)",
                "2:5: secrets[0]: a certificate needs its private key: set `key`",
                "3:5: secrets[1]: a private key needs its certificate: set `cert`",
                "4:5: secrets[2]: a secret needs `cert` and `key` (a certificate), `ca` (a \
                 trust bundle) or `value` (a credential)",
                "5:46: secrets[3].ca: a secret is a certificate (`cert` and `key`) or a trust \
                 bundle (`ca`), not both: write two secrets",
                "6:12: secrets[4].name: `e e` is not a valid secret name (letters, digits, `-`, \
                 `.` and `_`, at most 253)",
                "7:19: secrets[5].ca: file name is empty",
            ]
        );
    }

    #[test]
    fn clusters_take_tls_too() {
        let text = format!(
            "{SECRETS}clusters:\n  - name: c\n    endpoints: [{{address: 127.0.0.1:1}}]\n    \
             tls: {{ca: missing}}\n"
        );
        assert_eq!(
            problems(&text),
            ["7:15: clusters[0].tls.ca: unknown secret `missing`"]
        );
    }

    /// The example in the README's "Upstream TLS in the mesh", with the mistake it shows.
    #[test]
    fn readme_example() {
        let text = "\
secrets:                          # files relative to the mesh file's directory
  - {name: mesh-ca, ca: certs/ca.pem}                           # a trust bundle
  - {name: web-client, cert: certs/web.pem, key: certs/web.key}  # a certificate and its key
  - {name: billing-client, cert: certs/billing.pem, key: certs/billing.key}
services:
  - name: payments
    endpoints: [{address: 10.0.0.7:8443}]
    tls:
      sni: payments.internal      # UpstreamTlsContext.sni
      ca: mesh-ca                 # validation context over SDS (or ca_file: a path on the proxy)
      subject_alt_names: [spiffe://legate.local/ns/default/sa/payments]   # exact; URI, IP or DNS
      client_certificate: web-client                                      # mTLS, over SDS
      client_certificates: [{node_cluster: billing, secret: billing-client}]  # per node cluster
";
        assert_eq!(problems(text), Vec::<String>::new());
        let wrong = text.replace(
            "client_certificate: web-client ",
            "client_certificate: mesh-ca    ",
        );
        assert_eq!(
            problems(&wrong),
            [
                "12:27: services[0].tls.client_certificate: secret `mesh-ca` is a trust bundle \
              (`ca`); this takes a certificate (`cert` and `key`)"
            ]
        );
    }
}
