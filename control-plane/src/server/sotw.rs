//! State-of-the-world: every response carries the whole subscribed set of one type.
//!
//! Per type, a stream remembers what the client subscribes to, what it last sent (version,
//! nonce and the subscription it answered) and whether the client rejected it. The rules:
//!
//! - A request whose nonce is not the latest sent for its type is stale and ignored entirely,
//!   subscription included (the client will send another with the latest nonce). A request
//!   with an empty nonce, or the first one for a type on this stream, is a (re)subscription
//!   and is always answered, even with a version the client already has: that is how Envoy
//!   re-subscribes after a reconnect and how grpc-js widens a subscription.
//! - A response is sent when the type's version or the subscription differs from the last
//!   response, or when a re-send is due (above, or after a CDS push for EDS and an LDS push for
//!   RDS: a re-created cluster warms until it receives its endpoints again).
//! - A NACKed response is never sent again as it was: the next one goes out only when the
//!   version or the subscription changes.

use std::collections::{BTreeSet, HashSet};

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use legate_snapshot::ResourceKind;
use tonic::Status;

use super::{Protocol, log_unserved_secrets, resolve_kind};
use crate::registry::{StreamHandle, StreamMode};
use crate::resources::NodeSnapshot;

/// What a client subscribes to for one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    fn is_empty(&self) -> bool {
        !self.wildcard && self.names.is_empty()
    }
}

#[derive(Debug)]
struct Sent {
    version: String,
    nonce: String,
    subscription: Subscription,
}

#[derive(Debug, Default)]
struct TypeState {
    requested: bool,
    /// The first request had no names: a wildcard until the client names resources.
    legacy_wildcard: bool,
    subscription: Subscription,
    last: Option<Sent>,
    /// The client rejected `last`.
    nacked: bool,
    /// Answer even if the answer would be identical to `last`.
    resend: bool,
}

pub(super) struct Sotw {
    scope: Option<ResourceKind>,
    control_plane: Option<ControlPlane>,
    /// Indexed like [`ResourceKind::WARM_ORDER`].
    types: [TypeState; 5],
    nonce: u64,
    /// Secret names already logged as not served to this node.
    unserved: HashSet<String>,
}

impl Sotw {
    pub(super) fn new(scope: Option<ResourceKind>, control_plane: Option<ControlPlane>) -> Self {
        Sotw {
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
    ) -> Option<DiscoveryResponse> {
        let state = &mut self.types[kind.index()];
        if !state.requested || state.subscription.is_empty() {
            return None;
        }
        let resources = snapshot.get(kind);
        let version = resources.version_info();
        let identical = state
            .last
            .as_ref()
            .is_some_and(|l| l.version == version && l.subscription == state.subscription);
        if identical && (state.nacked || !state.resend) {
            state.resend = false;
            return None;
        }

        let subscription = &state.subscription;
        if kind == ResourceKind::Secret {
            log_unserved_secrets(&subscription.names, snapshot, stream, &mut self.unserved);
        }
        let anys: Vec<_> = if subscription.wildcard {
            resources.iter().map(|(_, r)| r.any.clone()).collect()
        } else {
            subscription
                .names
                .iter()
                .filter_map(|name| resources.get(name))
                .map(|r| r.any.clone())
                .collect()
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.last = Some(Sent {
            version: version.to_owned(),
            nonce: nonce.clone(),
            subscription: subscription.clone(),
        });
        state.nacked = false;
        state.resend = false;
        stream.sent(kind, version, anys.len());
        Some(DiscoveryResponse {
            version_info: version.to_owned(),
            resources: anys,
            type_url: kind.type_url().to_owned(),
            nonce,
            control_plane: self.control_plane.clone(),
            ..Default::default()
        })
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const MODE: StreamMode = StreamMode::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn longest_name(request: &DiscoveryRequest) -> usize {
        request
            .resource_names
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
    }

    fn handle(&mut self, request: DiscoveryRequest, stream: &StreamHandle) -> Result<(), Status> {
        let Some(kind) = resolve_kind(self.scope, &request.type_url)? else {
            return Ok(());
        };
        let state = &mut self.types[kind.index()];
        let nonce = request.response_nonce.as_str();
        match &state.last {
            // An empty nonce, or a nonce from an earlier stream: a fresh subscription.
            _ if nonce.is_empty() => state.resend = true,
            None => state.resend = true,
            Some(last) if last.nonce != nonce => {
                tracing::debug!(
                    type_url = kind.type_url(),
                    nonce,
                    latest = %last.nonce,
                    "ignoring a request with a stale nonce"
                );
                return Ok(());
            }
            Some(last) => match &request.error_detail {
                Some(error) => {
                    let message =
                        stream.nacked(kind, &last.version, nonce, error.code, &error.message);
                    tracing::warn!(
                        stream = stream.id(),
                        type_url = kind.type_url(),
                        version = %last.version,
                        code = error.code,
                        %message,
                        "xds client rejected a response"
                    );
                    state.nacked = true;
                }
                None => {
                    stream.acked(kind, &last.version);
                    state.nacked = false;
                }
            },
        }

        let first = !state.requested;
        state.requested = true;
        let mut names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let star = names.remove("*");
        if first && !star && names.is_empty() && kind.is_wildcard() {
            state.legacy_wildcard = true;
        } else if star || !names.is_empty() {
            state.legacy_wildcard = false;
        }
        state.subscription = Subscription {
            wildcard: star || state.legacy_wildcard,
            names,
        };
        stream.requested(kind);
        Ok(())
    }

    fn subscribed_names(&self) -> usize {
        self.types.iter().map(|t| t.subscription.names.len()).sum()
    }

    fn respond(
        &mut self,
        snapshot: &NodeSnapshot,
        stream: &StreamHandle,
    ) -> Vec<DiscoveryResponse> {
        let mut responses = Vec::new();
        for kind in ResourceKind::WARM_ORDER {
            let Some(response) = self.respond_one(kind, snapshot, stream) else {
                continue;
            };
            responses.push(response);
            // Dependents are answered again after their parent, in this same pass.
            match kind {
                ResourceKind::Cluster => {
                    self.types[ResourceKind::ClusterLoadAssignment.index()].resend = true;
                }
                ResourceKind::Listener => {
                    self.types[ResourceKind::RouteConfiguration.index()].resend = true;
                }
                _ => {}
            }
        }
        responses
    }
}
