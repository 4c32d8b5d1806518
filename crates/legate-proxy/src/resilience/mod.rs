//! Resilience layers shared by the request path and the cluster manager: circuit-breaker
//! resource limits, the classic breaker, retries, outlier detection and active health
//! checks. `FIELDS.md` beside this file lists every Envoy field involved and its status.

pub(crate) mod breaker;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod limits;
pub(crate) mod outlier;
pub(crate) mod retry;
