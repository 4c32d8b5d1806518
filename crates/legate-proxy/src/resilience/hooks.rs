//! Where the request path meets the per-cluster resilience state: the classic breaker
//! and outlier detection. Kept in one place so `forward.rs` reads as the request flow.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Response;

use crate::body::ResponseBody;
use crate::cluster::ClusterRuntime;
use crate::error::ProxyError;
use crate::lb::Host;

/// A classic-breaker admission held for the length of a request.
pub(crate) struct BreakerTicket;

pub(crate) fn breaker_acquire(_cluster: &ClusterRuntime) -> Result<Option<BreakerTicket>, ProxyError> {
    Ok(None)
}

pub(crate) fn breaker_record(
    _ticket: Option<BreakerTicket>,
    _res: &Result<Response<ResponseBody>, ProxyError>,
) {
}

pub(crate) fn outlier_response(_cluster: &ClusterRuntime, _host: &Arc<Host>, _status: u16) {}

pub(crate) fn outlier_failure(_cluster: &ClusterRuntime, _host: &Arc<Host>, _e: ProxyError) {}

pub(crate) fn pick_avoiding(
    cluster: &ClusterRuntime,
    _avoid: &[SocketAddr],
    _attempts: u32,
) -> Option<Arc<Host>> {
    cluster.pick()
}
