//! legate-cp: the control plane's xDS server core.
//!
//! Drives a fleet of proxies (legate, Envoy, gRPC's xDS clients) over Envoy's xDS v3
//! protocol, in go-control-plane's shape, small:
//!
//! - [`resources`]: what one node is served ([`NodeSnapshot`]): the five resource types
//!   encoded as `Any`, with content-hash versions that are stable across runs; a node's
//!   secrets are only those its own clusters and listeners name.
//! - [`secrets`]: the certificate files a mesh names, read, checked and put inline for SDS.
//! - [`cache`]: snapshots by node selector (id, then cluster, then default) and a watch per
//!   connected node that always holds its latest snapshot ([`SnapshotCache`]).
//! - [`server`]: the gRPC services, ADS state-of-the-world and delta plus per-type LDS, RDS,
//!   CDS, EDS and SDS ([`XdsServer`]); one task per stream, pushes in warm order; over TCP or
//!   TLS, with each stream's node checked against its client certificate when one is required.
//! - [`registry`]: who is connected, what they were sent, ACKed and NACKed
//!   ([`NodeRegistry`]), for the admin API.
//! - [`admin_server`], [`admin_auth`], [`admin_json`]: the admin API (gRPC and JSON on one
//!   port, plaintext or TLS), who may call it (bearer tokens, admin client certificates) and
//!   the JSON endpoints; [`admin_client`] is legatectl's side.
//! - [`app`], [`store`], [`watch`]: the configuration state (mesh files plus persisted admin
//!   changes) and its one owner, which applies file changes and admin changes in order;
//!   mesh files are watched (inotify) and applied once stable.
//! - [`rollout`]: canary rollouts, driven by the state's owner: stepwise weight shifts,
//!   each step judged on the fleet's load reports once every node ACKed its weights,
//!   promoted, held or rolled back at once; persisted in the data directory.
//!   [`rollout_view`] draws a rollout's status for `legatectl canary status --watch`.
//! - [`metrics`]: legate-cp's Prometheus metrics (streams, pushes, ACK latency, NACKs, admin
//!   changes and refusals, mesh reloads, LRS reports) and the unauthenticated `/metrics`
//!   listener that serves them.
//! - [`load`]: simulated proxies for measuring fan-out (the `legate-cp-load` binary).
//!
//! The protocol rules, and the peers' quirks they satisfy, are written down next to the code
//! (`server::sotw`, `server::delta`) and summarised in this crate's README.

pub mod admin_auth;
pub mod admin_client;
pub mod admin_json;
pub mod admin_server;
pub mod app;
pub mod cache;
pub mod certs;
pub mod etcd;
pub mod load;
pub mod load_report;
pub mod metrics;
pub mod registry;
pub mod resources;
pub mod rollout;
pub mod rollout_view;
pub mod secrets;
pub mod server;
pub mod store;
pub mod watch;

pub use cache::{NodeKey, Selectors, SnapshotCache, SnapshotWatch};
pub use registry::{NodeRegistry, NodeStatus, StreamMode};
pub use resources::{NodeSnapshot, Resource, TypeSnapshot};
pub use server::XdsServer;

/// The message of everything legate-cp refuses or ends once it has been told to stop
/// (SIGTERM or SIGINT): xDS streams (`UNAVAILABLE`), admin changes (`UNAVAILABLE`, HTTP 503).
pub const SHUTTING_DOWN: &str = "legate-cp is shutting down";
