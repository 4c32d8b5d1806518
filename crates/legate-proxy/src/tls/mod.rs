//! TLS in the data plane: clusters that dial their hosts over TLS ([`upstream`]) and
//! listeners that terminate TLS ([`downstream`]).
//!
//! rustls configurations are built when a snapshot is applied, off the request path (file
//! reads in `spawn_blocking`), with `legate_tls::config`. Each cluster and listener keeps its
//! configuration behind an `ArcSwap`: a certificate file whose contents change is re-read by
//! `legate_tls::reload::watch` and swapped in; a changed definition (a new SDS secret, new
//! file names) swaps in a configuration built for it. Either way only new connections use
//! it; open ones, pooled ones included, keep the session they have until they close.
//!
//! Every certificate legate holds reports its remaining lifetime in
//! `legate_tls_certificate_expiry_seconds` ([`expiry`]). Field by field status: `FIELDS.md`.

pub(crate) mod downstream;
pub(crate) mod expiry;
pub(crate) mod material;
pub(crate) mod upstream;
