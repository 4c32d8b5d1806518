//! Where the request path meets the per-cluster resilience state: the classic breaker
//! and outlier detection. Kept in one place so `forward.rs` reads as the request flow.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Response;

use crate::body::ResponseBody;
use crate::cluster::ClusterRuntime;
use crate::error::ProxyError;
use crate::lb::Host;
use crate::resilience::breaker::BreakerPermit;
use crate::resilience::outlier::{LocalFailure, Outcome};

/// Admission by the cluster's classic breaker: `None` when it has none, an error when it
/// is open.
pub(crate) fn breaker_acquire(
    cluster: &ClusterRuntime,
) -> Result<Option<BreakerPermit>, ProxyError> {
    match &cluster.classic {
        None => Ok(None),
        Some(b) => b.try_acquire().map(Some).ok_or(ProxyError::CircuitOpen),
    }
}

/// Tell the classic breaker how the request ended: a 5xx response or a local failure
/// counts against the upstream; a request refused before it was sent (overflow, no host)
/// counts as neither.
pub(crate) fn breaker_record(
    permit: Option<BreakerPermit>,
    res: &Result<Response<ResponseBody>, ProxyError>,
) {
    let Some(permit) = permit else { return };
    match res {
        Ok(r) => permit.record(r.status().as_u16() < 500),
        Err(e) if LocalFailure::from_error(*e).is_some() => permit.record(false),
        Err(_) => drop(permit),
    }
}

pub(crate) fn outlier_response(cluster: &ClusterRuntime, host: &Arc<Host>, status: u16) {
    cluster.report(host, Outcome::Response(status));
}

pub(crate) fn outlier_failure(cluster: &ClusterRuntime, host: &Arc<Host>, e: ProxyError) {
    if let Some(f) = LocalFailure::from_error(e) {
        cluster.report(host, Outcome::LocalOrigin(f));
    }
}

pub(crate) fn pick_avoiding(
    cluster: &ClusterRuntime,
    avoid: &[SocketAddr],
    attempts: u32,
    hash: Option<u64>,
) -> Option<Arc<Host>> {
    cluster.pick_avoiding(avoid, attempts, hash)
}
