//! Delta (incremental) xDS: responses carry only what changed for the client.
//!
//! Per type, a stream tracks the subscription (names and/or wildcard) and the version of each
//! resource the client holds: seeded from `initial_resource_versions` on the first request,
//! then updated with everything sent. A response carries each subscribed resource whose
//! version differs from the client's, and lists in `removed_resources` what the client holds
//! that no longer exists, plus (once) an explicitly subscribed name that does not exist, so
//! the client does not wait for it. The client's versions are updated when sending, so a
//! NACKed resource is not sent again until its version changes. A first wildcard request is
//! always answered, even with nothing, so the client completes its initial fetch.
//!
//! Envoy re-creates a cluster whose definition changed and keeps it warming until it
//! receives its ClusterLoadAssignment again, without asking for it. So after sending clusters,
//! the stream re-sends the subscribed assignments of those clusters even if unchanged, and
//! likewise the route configurations of listeners it sent (unless the client rejected that
//! very version).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
};
use legate_snapshot::ResourceKind;
use tonic::Status;

use super::{Protocol, log_unserved_secrets, resolve_kind};
use crate::registry::{StreamHandle, StreamMode};
use crate::resources::NodeSnapshot;

/// Unacknowledged responses remembered per type (a client answers each one in order).
const PENDING_LIMIT: usize = 16;

#[derive(Debug)]
struct Pending {
    nonce: String,
    /// The type's `version_info` when sent; what an ACK acknowledges.
    version: String,
    resources: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct TypeState {
    requested: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version the client holds (or was last sent).
    client: HashMap<String, String>,
    /// Explicitly subscribed names already reported as not existing.
    absent: HashSet<String>,
    /// Names to send even if the client holds their version.
    resend: BTreeSet<String>,
    /// Name → version the client rejected.
    rejected: HashMap<String, String>,
    /// The first wildcard request is answered even when there is nothing to send.
    answer_due: bool,
    pending: VecDeque<Pending>,
}

impl TypeState {
    fn subscribes(&self, name: &str) -> bool {
        self.requested && (self.wildcard || self.names.contains(name))
    }
}

pub(super) struct Delta {
    scope: Option<ResourceKind>,
    control_plane: Option<ControlPlane>,
    /// Indexed like [`ResourceKind::WARM_ORDER`].
    types: [TypeState; 5],
    nonce: u64,
    /// Secret names already logged as not served to this node.
    unserved: HashSet<String>,
}

impl Delta {
    pub(super) fn new(scope: Option<ResourceKind>, control_plane: Option<ControlPlane>) -> Self {
        Delta {
            scope,
            control_plane,
            types: Default::default(),
            nonce: 0,
            unserved: HashSet::new(),
        }
    }

    fn respond_one(
        &mut self,
        kind: ResourceKind,
        snapshot: &NodeSnapshot,
        stream: &StreamHandle,
    ) -> Option<(DeltaDiscoveryResponse, Vec<String>)> {
        let state = &mut self.types[kind.index()];
        if !state.requested {
            return None;
        }
        let resources = snapshot.get(kind);
        if kind == ResourceKind::Secret {
            log_unserved_secrets(&state.names, snapshot, stream, &mut self.unserved);
        }

        let mut wanted: BTreeSet<&str> = state.names.iter().map(String::as_str).collect();
        if state.wildcard {
            wanted.extend(resources.names());
        }
        let mut send = Vec::new();
        let mut removed = Vec::new();
        for name in wanted {
            match resources.get(name) {
                Some(resource) => {
                    let held = state.client.get(name) == Some(&resource.version);
                    let resend = state.resend.contains(name)
                        && state.rejected.get(name) != Some(&resource.version);
                    if !held || resend {
                        send.push((name.to_owned(), resource));
                    }
                }
                None => {
                    let held = state.client.remove(name).is_some();
                    let newly_absent =
                        state.names.contains(name) && state.absent.insert(name.to_owned());
                    if held || newly_absent {
                        removed.push(name.to_owned());
                    }
                }
            }
        }
        if state.wildcard {
            let gone: Vec<String> = state
                .client
                .keys()
                .filter(|name| !resources.contains(name))
                .cloned()
                .collect();
            for name in gone {
                state.client.remove(&name);
                removed.push(name);
            }
        }
        state.resend.clear();
        if send.is_empty() && removed.is_empty() && !state.answer_due {
            return None;
        }
        state.answer_due = false;

        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let mut sent = Vec::with_capacity(send.len());
        let mut xds_resources = Vec::with_capacity(send.len());
        for (name, resource) in send {
            state.client.insert(name.clone(), resource.version.clone());
            state.absent.remove(&name);
            if state.rejected.get(&name) != Some(&resource.version) {
                state.rejected.remove(&name);
            }
            xds_resources.push(XdsResource {
                name: name.clone(),
                version: resource.version.clone(),
                resource: Some(resource.any.clone()),
                ..Default::default()
            });
            sent.push((name, resource.version.clone()));
        }
        let names_sent = sent.iter().map(|(name, _)| name.clone()).collect();
        if state.pending.len() == PENDING_LIMIT {
            state.pending.pop_front();
        }
        state.pending.push_back(Pending {
            nonce: nonce.clone(),
            version: resources.version_info().to_owned(),
            resources: sent,
        });
        stream.sent(kind, resources.version_info(), xds_resources.len());
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.version().to_owned(),
            resources: xds_resources,
            type_url: kind.type_url().to_owned(),
            removed_resources: removed,
            nonce,
            control_plane: self.control_plane.clone(),
            ..Default::default()
        };
        Some((response, names_sent))
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const MODE: StreamMode = StreamMode::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn longest_name(request: &DeltaDiscoveryRequest) -> usize {
        request
            .resource_names_subscribe
            .iter()
            .chain(&request.resource_names_unsubscribe)
            .chain(request.initial_resource_versions.keys())
            .map(String::len)
            .max()
            .unwrap_or(0)
    }

    fn handle(
        &mut self,
        request: DeltaDiscoveryRequest,
        stream: &StreamHandle,
    ) -> Result<(), Status> {
        let Some(kind) = resolve_kind(self.scope, &request.type_url)? else {
            return Ok(());
        };
        let DeltaDiscoveryRequest {
            resource_names_subscribe,
            resource_names_unsubscribe,
            initial_resource_versions,
            response_nonce,
            error_detail,
            ..
        } = request;
        let state = &mut self.types[kind.index()];

        // ACK or NACK of an earlier response. Subscription changes below apply either way:
        // unlike state of the world, a delta request is a diff and must not be dropped.
        if !response_nonce.is_empty() {
            let pending = state
                .pending
                .iter()
                .position(|p| p.nonce == response_nonce)
                .and_then(|i| state.pending.remove(i));
            match (error_detail, pending) {
                (Some(error), pending) => {
                    let version = pending
                        .as_ref()
                        .map(|p| p.version.clone())
                        .unwrap_or_default();
                    let message =
                        stream.nacked(kind, &version, &response_nonce, error.code, &error.message);
                    tracing::warn!(
                        stream = stream.id(),
                        type_url = kind.type_url(),
                        version,
                        code = error.code,
                        %message,
                        "xds client rejected a delta response"
                    );
                    for (name, version) in pending.map(|p| p.resources).unwrap_or_default() {
                        state.rejected.insert(name, version);
                    }
                }
                (None, Some(pending)) => stream.acked(kind, &pending.version),
                (None, None) => {}
            }
        }

        let first = !state.requested;
        state.requested = true;
        if first {
            state.client = initial_resource_versions;
            if resource_names_subscribe.is_empty() && kind.is_wildcard() {
                state.wildcard = true;
            }
        }
        for name in resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
                continue;
            }
            if !first {
                // Subscribing again to a name asks for its current state.
                state.client.remove(&name);
            }
            state.absent.remove(&name);
            state.names.insert(name);
        }
        for name in resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
                let names = &state.names;
                state.client.retain(|name, _| names.contains(name));
                continue;
            }
            state.names.remove(&name);
            state.absent.remove(&name);
            state.resend.remove(&name);
            if !state.wildcard {
                state.client.remove(&name);
            }
        }
        if first && state.wildcard {
            state.answer_due = true;
        }
        stream.requested(kind);
        Ok(())
    }

    fn subscribed_names(&self) -> usize {
        self.types
            .iter()
            .map(|t| t.names.len().saturating_add(t.client.len()))
            .sum()
    }

    fn respond(
        &mut self,
        snapshot: &NodeSnapshot,
        stream: &StreamHandle,
    ) -> Vec<DeltaDiscoveryResponse> {
        let mut responses = Vec::new();
        for kind in ResourceKind::WARM_ORDER {
            let Some((response, names)) = self.respond_one(kind, snapshot, stream) else {
                continue;
            };
            responses.push(response);
            match kind {
                ResourceKind::Cluster => {
                    let eds = &mut self.types[ResourceKind::ClusterLoadAssignment.index()];
                    for cluster in &names {
                        if let Some(name) = snapshot.eds_name_of_cluster(cluster)
                            && eds.subscribes(name)
                        {
                            eds.resend.insert(name.to_owned());
                        }
                    }
                }
                ResourceKind::Listener => {
                    let rds = &mut self.types[ResourceKind::RouteConfiguration.index()];
                    for listener in &names {
                        for name in snapshot.rds_names_of_listener(listener) {
                            if rds.subscribes(name) {
                                rds.resend.insert(name.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        responses
    }
}
