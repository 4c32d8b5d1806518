//! legate's mesh authoring format and its compiler to Envoy v3 resources.
//!
//! Operators describe a mesh in YAML, in two layers that may share a document:
//! - the low-level layer: listeners, route configs with virtual hosts and routes, and
//!   clusters with their endpoints (`examples/mesh-reference.yaml` documents every field);
//! - the services layer: [`Service`]s with weighted versions, a route prefix, canary rules and
//!   [`Policies`], and the [`Proxy`] section for the outbound listener every proxy node gets
//!   (`examples/mesh-services.yaml`). It expands into low-level resources
//!   ([`Mesh::expand`]): a cluster per version, a route per service.
//!
//! Resilience policies are written on either layer: [`Retries`] and timeouts on routes (and
//! virtual hosts), [`CircuitBreakers`], [`OutlierDetection`], a [`HealthCheck`], the panic
//! threshold and the classic [`Breaker`] on clusters; a service's `policies` hold them all and
//! apply them to each of its routes and clusters. Each compiles to the Envoy field that
//! carries it (the classic breaker, which xDS has no field for, to cluster metadata that
//! legate reads).
//!
//! This crate is the single owner of that format. The proxy's static mode and the control
//! plane both read meshes here and [`compile`] them into the Envoy resources that
//! `legate_snapshot::build` validates, so there is one authoring format and one compiler.
//! [`compile_for_grpc`] is the second target: the API listeners, route configs and EDS
//! clusters gRPC's xDS clients need to resolve `xds:///<service>` (not valid for legate).
//!
//! The control plane's admin API edits the services layer with [`set_weights`],
//! [`apply_service`] and [`remove_service`], which validate the whole mesh and leave it
//! unchanged on error. A directory of mesh files is read with [`load_files`] (or merged in
//! code with [`Mesh::merge`]).
//!
//! Reading a mesh is two steps, both reporting `file:line:column: field.path: message`:
//! - [`parse_mesh`] (or [`parse_yaml`] for a document that embeds a mesh) turns the text into
//!   a [`Mesh`]; serde stops at the first error, unknown fields included.
//! - [`validate`] (or [`validate_at`] for an embedded mesh) runs the semantic checks —
//!   references between resources, duplicate names, addresses, regexes, header names,
//!   statuses, conflicting choices — and returns every problem, each located in the text by
//!   walking the YAML node tree along its field path.
//!
//! [`load`] does both. [`Mesh::check`] runs the same checks on a mesh built in code, without
//! positions.
//!
//! ```
//! let text = "\
//! listeners: [{name: out, address: '127.0.0.1:0', route_config: rc}]
//! route_configs:
//!   - name: rc
//!     virtual_hosts: [{name: all, domains: ['*'], routes: [{forward: {cluster: web}}]}]
//! clusters: [{name: web, endpoints: [{address: '127.0.0.1:8080'}]}]
//! ";
//! let mesh = legate_model::load(text, "mesh.yaml").expect("valid mesh");
//! let resources = legate_model::compile(&mesh);
//! assert_eq!(resources.clusters.len(), 1);
//! assert_eq!(resources.load_assignments.len(), 1);
//! ```

mod compile;
mod error;
mod grpc;
mod lint;
mod locate;
mod merge;
mod model;
mod parse;
pub mod rollout;
mod services;
mod size;
pub mod units;
mod validate;

pub use compile::{compile, compile_for_node_cluster};
pub use error::{ConfigError, Problem};
pub use grpc::{check_for_grpc, compile_for_grpc};
pub use merge::{Location, MergeConflict, Sources, load_files, load_files_with_sources};
pub use model::*;
pub use parse::{EMPTY_DOCUMENT, parse_yaml};
pub use services::{apply_service, remove_service, set_weights};
pub use size::{SizeError, parse_size};
pub use units::{DurationError, WeightError, parse_duration, parse_weight};
pub use validate::{validate, validate_at};

/// Parse a mesh document, without the semantic checks of [`validate`].
///
/// A document that says nothing is refused ([`EMPTY_DOCUMENT`]): an empty file, one
/// with only comments, `{}`, or only keys without a value (`clusters:`). That is what a file
/// truncated by a crash, or caught while an editor rewrites it, looks like, and serving it
/// would remove every listener and cluster. A mesh that serves nothing on purpose says so
/// with an empty list, e.g. `listeners: []`.
pub fn parse_mesh(text: &str, source: &str) -> Result<Mesh, ConfigError> {
    let mesh: Mesh = parse_yaml(text, source)?;
    if mesh == Mesh::default() && !parse::says_something(text) {
        return Err(ConfigError {
            source: source.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: parse::EMPTY_DOCUMENT.to_owned(),
        });
    }
    Ok(mesh)
}

/// Parse and validate a mesh document, returning every error found.
///
/// A parse error stops there (a single error); otherwise every semantic problem is
/// returned, in document order of the checks.
pub fn load(text: &str, source: &str) -> Result<Mesh, Vec<ConfigError>> {
    let mesh = parse_mesh(text, source).map_err(|e| vec![e])?;
    validate(&mesh, text, source)?;
    Ok(mesh)
}
