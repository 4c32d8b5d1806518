//! `envoy.filters.http.fault`: delay a fraction of requests, then abort a fraction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use legate_snapshot::filter::{Fault, Fraction};

use super::{Decision, ResponseHeaders, chance};
use crate::error::{ProxyError, ResponseFlags};

const DELAY: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
const DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
const ABORT: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
const ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
const ABORT_GRPC: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");

/// What an abort answers: an HTTP status, or a gRPC status (HTTP 200 to a request that is
/// not gRPC), as Envoy's fault filter does.
#[derive(Clone, Copy)]
enum Abort {
    Http(u16),
    Grpc(u32),
}

#[derive(Debug)]
pub(super) struct Injector {
    config: Arc<Fault>,
    /// Faults in progress (a delay while it runs, an abort while it is answered).
    active: Arc<AtomicU32>,
}

/// Holds one of `max_active_faults`.
struct Active(Arc<AtomicU32>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Injector {
    pub(super) fn new(config: Arc<Fault>) -> Self {
        Injector {
            config,
            active: Arc::new(AtomicU32::new(0)),
        }
    }

    /// A slot under `max_active_faults`, or `None` when they are all taken.
    fn begin(&self) -> Option<Active> {
        let max = self.config.max_active_faults.unwrap_or(u32::MAX);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then(|| n.saturating_add(1))
            })
            .ok()
            .map(|_| Active(self.active.clone()))
    }

    pub(super) async fn decode(
        &self,
        headers: &HeaderMap,
        grpc: bool,
        out: &mut ResponseHeaders,
        flags: &mut ResponseFlags,
    ) -> Decision {
        // Decided first, as Envoy does: the delay, then whether to abort after it.
        let delay = self.config.delay.as_ref().and_then(|d| {
            let by = match d.fixed {
                Some(fixed) => fixed,
                None => Duration::from_millis(number::<u64>(headers, &DELAY)?),
            };
            injected(d.percentage, headers, &DELAY_PERCENTAGE).then_some(by)
        });
        let abort = self.config.abort.as_ref().and_then(|a| {
            let with = match (a.http_status, a.grpc_status) {
                (Some(s), _) => Abort::Http(s),
                (None, Some(g)) => Abort::Grpc(g),
                // The caller says; an HTTP status wins over a gRPC one, as in Envoy.
                (None, None) => match number::<u16>(headers, &ABORT) {
                    Some(s) if (200..600).contains(&s) => Abort::Http(s),
                    _ => Abort::Grpc(
                        number::<u32>(headers, &ABORT_GRPC)
                            .filter(|g| *g <= crate::grpc::MAX_STATUS)?,
                    ),
                },
            };
            injected(a.percentage, headers, &ABORT_PERCENTAGE).then_some(with)
        });
        if delay.is_none() && abort.is_none() {
            return Decision::Continue;
        }
        let Some(_active) = self.begin() else {
            return Decision::Continue;
        };
        if let Some(by) = delay {
            flags.insert(ResponseFlags::DI);
            tokio::time::sleep(by).await;
        }
        let (status, grpc) = match abort {
            None => return Decision::Continue,
            Some(Abort::Http(s)) => {
                let Ok(status) = StatusCode::from_u16(s) else {
                    return Decision::Continue;
                };
                (status, grpc.then(|| crate::grpc::status_for_http(status)))
            }
            Some(Abort::Grpc(g)) => (StatusCode::OK, grpc.then_some(g)),
        };
        super::local_reply(ProxyError::FaultAbort, status, grpc, &[], out)
    }
}

/// Whether this request is in the fault's fraction. A percentage header (when sent) gives
/// the numerator over the configured denominator, at most the configured numerator.
fn injected(configured: Fraction, headers: &HeaderMap, header: &HeaderName) -> bool {
    let fraction = match number::<u32>(headers, header) {
        Some(n) => Fraction {
            numerator: n.min(configured.numerator),
            denominator: configured.denominator,
        },
        None => configured,
    };
    chance(fraction.ppm())
}

fn number<T: std::str::FromStr>(headers: &HeaderMap, name: &HeaderName) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}
