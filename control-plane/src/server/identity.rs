//! Which nodes a client certificate may speak for.
//!
//! The identity is the certificate's one SPIFFE id (a `spiffe://` URI SAN), in the scheme of
//! `legate_tls::identity`:
//!
//! - `spiffe://<trust-domain>/node/<id>` may claim exactly `Node.id == <id>`, in any cluster;
//! - `spiffe://<trust-domain>/cluster/<name>` is shared by a group of proxies and may claim
//!   any non-empty `Node.id` whose `Node.cluster == <name>`.
//!
//! The trust domain must be the configured one. A certificate without a SPIFFE id, with more
//! than one, or with one of another shape is not a node identity. The first request of every
//! stream is checked; later requests may repeat the node but not change it.

use envoy_types::pb::envoy::config::core::v3::Node;
use legate_tls::{CertInfo, San, SpiffeId};

use crate::registry::RefusalReason;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "legate.local";

/// Node ids and clusters are quoted in messages up to this many characters.
const QUOTED_CHARS: usize = 128;

/// The rule streams are checked against when client certificates are required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAuth {
    trust_domain: String,
}

/// A trust domain that is not one (SPIFFE: lowercase letters, digits, `.`, `-`, `_`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid trust domain '{0}': expected lowercase letters, digits, '.', '-' and '_'")]
pub struct InvalidTrustDomain(pub String);

/// Why a stream may not speak for the node it claims. Displays as the message the client
/// receives with `PermissionDenied`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeRefusal {
    #[error("a client certificate is required")]
    NoCertificate,
    #[error("the client certificate ({subject}) carries no spiffe:// URI SAN")]
    NoIdentity { subject: String },
    #[error("the client certificate carries {count} spiffe:// URI SANs; exactly one is allowed")]
    SeveralIdentities { count: usize },
    #[error("identity '{identity}' is not in trust domain '{expected}'")]
    TrustDomain { identity: String, expected: String },
    #[error("identity '{identity}' names neither /node/<id> nor /cluster/<name>")]
    NotANodeIdentity { identity: String },
    #[error("the stream's first request names no node id")]
    NoNode,
    #[error("identity '{identity}' may claim node id '{allowed}' only, not '{claimed}'")]
    NodeId {
        identity: String,
        allowed: String,
        claimed: String,
    },
    #[error(
        "identity '{identity}' may claim nodes of cluster '{allowed}' only, not cluster '{claimed}'"
    )]
    NodeCluster {
        identity: String,
        allowed: String,
        claimed: String,
    },
    #[error("the node changed within the stream, from '{from}' to '{to}'")]
    NodeChanged { from: String, to: String },
}

impl NodeRefusal {
    pub fn reason(&self) -> RefusalReason {
        match self {
            NodeRefusal::NoCertificate => RefusalReason::NoCertificate,
            NodeRefusal::NoIdentity { .. } | NodeRefusal::SeveralIdentities { .. } => {
                RefusalReason::NoIdentity
            }
            NodeRefusal::TrustDomain { .. } => RefusalReason::TrustDomain,
            NodeRefusal::NotANodeIdentity { .. } => RefusalReason::NotANodeIdentity,
            NodeRefusal::NoNode => RefusalReason::NoNode,
            NodeRefusal::NodeId { .. } => RefusalReason::NodeId,
            NodeRefusal::NodeCluster { .. } => RefusalReason::NodeCluster,
            NodeRefusal::NodeChanged { .. } => RefusalReason::NodeChanged,
        }
    }
}

/// What a certificate is called in logs and in `legatectl status`: its SPIFFE id, or its
/// subject when it has none.
pub fn identity_label(cert: &CertInfo) -> String {
    let spiffe: Vec<&str> = spiffe_uris(cert).collect();
    match spiffe.as_slice() {
        [one] => (*one).to_owned(),
        _ => format!("subject {}", cert.subject),
    }
}

fn spiffe_uris(cert: &CertInfo) -> impl Iterator<Item = &str> {
    cert.sans.iter().filter_map(|san| match san {
        San::Uri(u) if u.starts_with("spiffe://") => Some(u.as_str()),
        _ => None,
    })
}

/// `s` in a message: at most [`QUOTED_CHARS`] characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTED_CHARS) {
        Some((index, _)) => format!("{}…", &s[..index]),
        None => s.to_owned(),
    }
}

impl NodeAuth {
    pub fn new(trust_domain: &str) -> Result<NodeAuth, InvalidTrustDomain> {
        // A trust domain is valid exactly when an id in it parses.
        if SpiffeId::parse(&format!("spiffe://{trust_domain}/node/x")).is_none() {
            return Err(InvalidTrustDomain(trust_domain.to_owned()));
        }
        Ok(NodeAuth {
            trust_domain: trust_domain.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Whether the holder of `cert` may open a stream for `node`. On success, the identity.
    pub fn check(
        &self,
        cert: Option<&CertInfo>,
        node: Option<&Node>,
    ) -> Result<String, NodeRefusal> {
        let cert = cert.ok_or(NodeRefusal::NoCertificate)?;
        let uris: Vec<&str> = spiffe_uris(cert).collect();
        let uri = match uris.as_slice() {
            [] => {
                return Err(NodeRefusal::NoIdentity {
                    subject: quoted(&cert.subject),
                });
            }
            [one] => *one,
            many => {
                return Err(NodeRefusal::SeveralIdentities { count: many.len() });
            }
        };
        let identity = quoted(uri);
        let id = SpiffeId::parse(uri).ok_or_else(|| NodeRefusal::NotANodeIdentity {
            identity: identity.clone(),
        })?;
        if id.trust_domain != self.trust_domain {
            return Err(NodeRefusal::TrustDomain {
                identity,
                expected: self.trust_domain.clone(),
            });
        }
        let node = node
            .filter(|n| !n.id.is_empty())
            .ok_or(NodeRefusal::NoNode)?;
        if let Some(allowed) = id.node_id() {
            if node.id != allowed {
                return Err(NodeRefusal::NodeId {
                    identity,
                    allowed: quoted(allowed),
                    claimed: quoted(&node.id),
                });
            }
        } else if let Some(allowed) = id.node_cluster() {
            if node.cluster != allowed {
                return Err(NodeRefusal::NodeCluster {
                    identity,
                    allowed: quoted(allowed),
                    claimed: quoted(&node.cluster),
                });
            }
        } else {
            return Err(NodeRefusal::NotANodeIdentity { identity });
        }
        Ok(uri.to_owned())
    }
}

/// A later request's node, compared with the first one's: only id and cluster matter (they
/// pick the snapshot and were checked against the certificate).
pub fn check_unchanged(first: &Node, later: Option<&Node>) -> Result<(), NodeRefusal> {
    match later {
        Some(n) if n.id != first.id || n.cluster != first.cluster => {
            Err(NodeRefusal::NodeChanged {
                from: format!("{}/{}", quoted(&first.id), quoted(&first.cluster)),
                to: format!("{}/{}", quoted(&n.id), quoted(&n.cluster)),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(uris: &[&str]) -> CertInfo {
        CertInfo {
            subject: "CN=proxy".into(),
            sans: uris
                .iter()
                .map(|u| San::Uri((*u).to_owned()))
                .chain([San::Dns("proxy.internal".into())])
                .collect(),
            not_before_unix: 0,
            not_after_unix: 1,
        }
    }

    fn node(id: &str, cluster: &str) -> Node {
        Node {
            id: id.into(),
            cluster: cluster.into(),
            ..Default::default()
        }
    }

    fn check(uris: &[&str], claim: Option<(&str, &str)>) -> Result<String, RefusalReason> {
        let auth = NodeAuth::new("legate.local").expect("trust domain");
        let node = claim.map(|(id, cluster)| node(id, cluster));
        auth.check(Some(&cert(uris)), node.as_ref())
            .map_err(|e| e.reason())
    }

    #[test]
    fn node_and_cluster_identities() {
        let a = "spiffe://legate.local/node/a";
        let web = "spiffe://legate.local/cluster/web";
        assert_eq!(check(&[a], Some(("a", "web"))), Ok(a.to_owned()));
        assert_eq!(check(&[a], Some(("a", "other"))), Ok(a.to_owned()));
        assert_eq!(check(&[a], Some(("b", "web"))), Err(RefusalReason::NodeId));
        assert_eq!(check(&[web], Some(("any-1", "web"))), Ok(web.to_owned()));
        assert_eq!(
            check(&[web], Some(("any-1", "db"))),
            Err(RefusalReason::NodeCluster)
        );
        assert_eq!(check(&[web], Some(("", "web"))), Err(RefusalReason::NoNode));
        assert_eq!(check(&[a], None), Err(RefusalReason::NoNode));
    }

    #[test]
    fn unusable_identities() {
        assert_eq!(check(&[], Some(("a", "c"))), Err(RefusalReason::NoIdentity));
        assert_eq!(
            check(
                &[
                    "spiffe://legate.local/node/a",
                    "spiffe://legate.local/node/b"
                ],
                Some(("a", "c"))
            ),
            Err(RefusalReason::NoIdentity)
        );
        assert_eq!(
            check(&["spiffe://other.domain/node/a"], Some(("a", "c"))),
            Err(RefusalReason::TrustDomain)
        );
        for shape in [
            "spiffe://legate.local/ns/default/sa/payments",
            "spiffe://legate.local/node/a/extra",
            "spiffe://legate.local/admin/alice",
            "spiffe://legate.local/node/../a",
        ] {
            assert_eq!(
                check(&[shape], Some(("a", "c"))),
                Err(RefusalReason::NotANodeIdentity),
                "{shape}"
            );
        }
        let auth = NodeAuth::new("legate.local").expect("trust domain");
        assert_eq!(
            auth.check(None, Some(&node("a", "c"))),
            Err(NodeRefusal::NoCertificate)
        );
    }

    #[test]
    fn messages_name_both_sides_and_stay_short() {
        let auth = NodeAuth::new("legate.local").expect("trust domain");
        let long = "b".repeat(10_000);
        let refusal = auth
            .check(
                Some(&cert(&["spiffe://legate.local/node/a"])),
                Some(&node(&long, "web")),
            )
            .expect_err("refused");
        let message = refusal.to_string();
        assert!(
            message.starts_with(
                "identity 'spiffe://legate.local/node/a' may claim node id 'a' only, not 'bbb"
            ),
            "{message}"
        );
        assert!(message.len() < 400, "{}", message.len());
    }

    #[test]
    fn trust_domains_and_changes() {
        assert!(NodeAuth::new("Legate.Local").is_err());
        assert!(NodeAuth::new("").is_err());
        assert!(NodeAuth::new("example.org").is_ok());
        let first = node("a", "web");
        assert_eq!(check_unchanged(&first, None), Ok(()));
        assert_eq!(check_unchanged(&first, Some(&node("a", "web"))), Ok(()));
        assert_eq!(
            check_unchanged(&first, Some(&node("b", "web"))).map_err(|e| e.reason()),
            Err(RefusalReason::NodeChanged)
        );
    }
}
