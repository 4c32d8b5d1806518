//! legate's own API, generated from the `.proto` files beside this crate. Today that is
//! the control plane's admin service (`legate.admin.v1.Admin`), spoken by `legatectl`.

/// `legate.admin.v1`: nodes, effective configuration, apply and set-weights.
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod admin {
    tonic::include_proto!("legate.admin.v1");
}
