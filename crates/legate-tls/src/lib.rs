//! TLS building blocks shared by every legate binary: the proxy (upstream and downstream TLS),
//! its xDS client, legate-cp (xDS and admin servers) and legatectl.
//!
//! - [`pem`]: bounded reading and parsing of PEM certificates, keys and CA bundles;
//! - [`config`]: rustls client and server configurations on the aws-lc-rs provider, with a server
//!   certificate verifier that checks the chain and then either the server name or the
//!   subject alternative names against a caller's rule (Envoy's `match_typed_subject_alt_names`);
//! - [`identity`]: what a certificate says about its holder (SANs, validity) and the
//!   SPIFFE-style workload identities legate uses for nodes;
//! - [`reload`]: a value rebuilt from files whenever their contents change, swapped atomically;
//! - [`files`]: server and client configurations from certificate files, kept current;
//! - [`failure`]: why a handshake failed, as a stable cause (`unknown-ca`, `expired`, ...);
//! - [`issue`]: a small certificate authority (rcgen) for demos and tests.
//!
//! Nothing here blocks an async runtime on its own: functions that read files say so and are
//! meant for `spawn_blocking` or start-up code.

pub mod config;
mod error;
pub mod failure;
pub mod files;
pub mod identity;
pub mod issue;
pub mod pem;
pub mod reload;

pub use error::TlsError;
pub use failure::HandshakeFailure;
pub use identity::{CertInfo, San, SpiffeId};
pub use rustls;
pub use rustls_pki_types as pki_types;
pub use tokio_rustls;
