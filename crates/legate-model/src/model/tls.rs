//! Upstream TLS as written: what a cluster (or every cluster of a service) verifies and
//! presents, and the `secrets` section naming the certificate files those settings use.
//!
//! Certificates are never written inline: a `secrets` entry names PEM files, and `tls`
//! settings name `secrets` entries. The compiler turns each into Envoy's
//! `UpstreamTlsContext` with SDS references (`sds_config: {ads: {}}`) and `Secret`
//! resources, so a control plane can serve the files' contents over SDS and rotate them
//! without touching clusters.

use serde::{Deserialize, Serialize};

/// Certificate files, named for `tls` settings to use: either a certificate with its private
/// key (`cert` and `key`), or a trust bundle (`ca`).
///
/// A control plane reads the files on its own disk and serves their contents over SDS (and
/// re-reads them when they change); a proxy reading a mesh itself reads them on its disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Unique among secrets; the SDS resource name.
    pub name: String,
    /// PEM certificate chain, leaf first; with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// PEM CA certificates to trust; not with `cert` and `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A file whose contents (without the final line end) are a credential: an API key, a
    /// token, an OAuth2 client secret. Served as an SDS generic secret; alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Secret {
    /// Whether this is a certificate with its key (rather than a trust bundle).
    pub fn is_certificate(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }

    /// The files it names, in the order `cert`, `key`, `ca`, `value`.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        [&self.cert, &self.key, &self.ca, &self.value]
            .into_iter()
            .filter_map(|f| f.as_deref())
    }
}

/// TLS to a cluster's endpoints (Envoy's `UpstreamTlsContext`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent in the handshake (SNI); none is sent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// A `secrets` entry with `ca`: the upstream's certificate must chain to it. Served over
    /// SDS. Not with `ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A CA bundle on the proxy's own disk, read there (not served over SDS). Not with `ca`.
    /// With neither, the proxy's default trust applies (legate: Mozilla's roots and the SNI as
    /// the name to verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The upstream's certificate must carry one of these subject alternative names, exactly:
    /// a value with `://` (such as `spiffe://legate.local/ns/default/sa/payments`) is a URI
    /// SAN, an IP address an IP SAN, anything else a DNS SAN. Needs `ca` or `ca_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// A `secrets` entry with `cert` and `key`, presented when the upstream asks for a client
    /// certificate (mTLS), by every node that no rule of `client_certificates` selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Client certificates by the node's cluster (`Node.cluster`), which take precedence over
    /// `client_certificate`: each node gets only the certificate meant for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<ClientCertificate>,
}

impl UpstreamTls {
    /// The client certificate (a `secrets` name) for a node in `node_cluster` (`None`: a node
    /// no rule selects).
    pub fn client_certificate_for(&self, node_cluster: Option<&str>) -> Option<&str> {
        node_cluster
            .and_then(|nc| {
                self.client_certificates
                    .iter()
                    .find(|r| r.node_cluster == nc)
            })
            .map(|r| r.secret.as_str())
            .or(self.client_certificate.as_deref())
    }
}

/// The client certificate of the nodes in one node cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    /// Nodes whose `Node.cluster` is exactly this.
    pub node_cluster: String,
    /// A `secrets` entry with `cert` and `key`.
    pub secret: String,
}

impl crate::Mesh {
    /// Every node cluster some `tls.client_certificates` rule names (on clusters and
    /// services), sorted: the node clusters [`compile_for_node_cluster`] gives different
    /// resources than [`compile`].
    ///
    /// [`compile`]: crate::compile
    /// [`compile_for_node_cluster`]: crate::compile_for_node_cluster
    pub fn client_certificate_node_clusters(&self) -> std::collections::BTreeSet<String> {
        self.clusters
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .chain(self.services.iter().filter_map(|s| s.tls.as_ref()))
            .flat_map(|t| &t.client_certificates)
            .map(|r| r.node_cluster.clone())
            .collect()
    }
}
