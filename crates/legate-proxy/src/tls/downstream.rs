//! Downstream TLS: a listener's filter chains as rustls server configurations, and the
//! handshake of each accepted connection.
//!
//! The ClientHello is read first (rustls' `LazyConfigAcceptor`), its server name selects the
//! filter chain ([`legate_snapshot::ListenerTls::select`]: exact name, longest wildcard, the
//! chain without names, the default chain), and the chain's configuration finishes the
//! handshake: its certificate, its client certificate rule, its ALPN and versions. A
//! connection no chain takes is closed, as Envoy does.
//!
//! Time bounds: the ClientHello must arrive within `listener_filters_timeout` (Envoy's
//! default 15 s) and the whole handshake within the chain's
//! `transport_socket_connect_timeout`, or [`DEFAULT_HANDSHAKE_TIMEOUT`] when unset (Envoy
//! leaves it unbounded; legate does not let a silent client hold a connection forever).
//! Failures are counted in `legate_downstream_tls_handshake_failures_total{listener,cause}`.

use std::sync::Arc;
use std::time::Duration;

use legate_snapshot::{ListenerTls, TlsFilterChain};
use legate_telemetry::{Counter, Family};
use legate_tls::config::{ClientAuth, ServerParams, TlsVersion, server_config};
use legate_tls::reload::Current;
use legate_tls::rustls::ServerConfig;
use legate_tls::rustls::server::Acceptor;
use legate_tls::tokio_rustls::LazyConfigAcceptor;
use legate_tls::tokio_rustls::server::TlsStream;
use legate_tls::{HandshakeFailure, TlsError};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::expiry::Expiry;
use super::material::{self, SanRule};
use crate::metrics::Metrics;

/// The bound on a handshake whose chain sets no `transport_socket_connect_timeout`.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// One chain's server configuration.
#[derive(Debug)]
pub(crate) struct ServerTls {
    config: Arc<ServerConfig>,
}

fn version(v: legate_snapshot::TlsVersion) -> TlsVersion {
    match v {
        legate_snapshot::TlsVersion::V1_2 => TlsVersion::V1_2,
        legate_snapshot::TlsVersion::V1_3 => TlsVersion::V1_3,
    }
}

/// The name a chain's certificate is reported under: `listener/chain`.
fn chain_label(listener: &str, chain: &TlsFilterChain) -> String {
    format!("{listener}/{}", chain.name)
}

/// Build one chain's server configuration, reading its files (blocking), and record the
/// certificate's expiry.
pub(crate) fn build_server(
    chain: &TlsFilterChain,
    listener: &str,
    expiry: &Expiry,
) -> Result<ServerTls, TlsError> {
    let what = format!("listener '{listener}' chain '{}'", chain.name);
    let tls = &chain.tls;
    let Some(cert) = &tls.certificate else {
        return Err(TlsError::NoCertificate { what });
    };
    let (key, not_after) = material::certified_key(cert, &format!("{what} server"))?;
    let client_auth = match &tls.validation {
        None => ClientAuth::None,
        Some(v) => {
            let Some(ca) = &v.trusted_ca else {
                return Err(TlsError::Verifier {
                    what,
                    message: "client certificates need a trusted_ca".to_owned(),
                });
            };
            let roots = material::root_store(ca, &format!("{what} trusted_ca"))?;
            let required = tls.require_client_certificate;
            if v.match_typed_subject_alt_names.is_empty() {
                if required {
                    ClientAuth::Required(roots)
                } else {
                    ClientAuth::Optional(roots)
                }
            } else {
                ClientAuth::Checked {
                    roots,
                    required,
                    sans: Arc::new(SanRule(v.clone())),
                }
            }
        }
    };
    let config = server_config(
        ServerParams {
            cert: key,
            client_auth,
            alpn: tls
                .alpn_protocols
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            min_version: Some(version(tls.params.min_version)),
            max_version: Some(version(tls.params.max_version)),
        },
        &what,
    )?;
    expiry.record(
        "listener",
        &chain_label(listener, chain),
        "server",
        not_after,
    );
    Ok(ServerTls { config })
}

/// Why a downstream handshake failed: no filter chain for the server name asked for, the
/// ClientHello or handshake running out of time, or legate-tls' cause (a missing or refused
/// client certificate, no common version or ALPN protocol, ...). `label` is the metric's
/// `cause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    NoChain,
    Timeout,
    Tls(HandshakeFailure),
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::NoChain => "no-filter-chain",
            Failure::Timeout => "timeout",
            Failure::Tls(f) => f.as_str(),
        }
    }
}

/// A listener's TLS: its definition, each chain's current configuration, its counters.
pub(crate) struct ListenerTlsRuntime {
    pub(crate) spec: Arc<ListenerTls>,
    chains: Vec<Current<ServerTls>>,
    listener: Arc<str>,
    /// `legate_downstream_tls_handshake_failures_total`; members made on first use.
    failures: Arc<Family<Counter>>,
}

impl std::fmt::Debug for ListenerTlsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTlsRuntime")
            .field("chains", &self.chains.len())
            .finish_non_exhaustive()
    }
}

/// Build a listener's chains off the request path, watching their files.
pub(crate) async fn prepare(
    spec: Arc<ListenerTls>,
    listener: Arc<str>,
    expiry: Arc<Expiry>,
    metrics: &Metrics,
) -> Result<Arc<ListenerTlsRuntime>, TlsError> {
    let failures = metrics.downstream_tls_handshake_failures.clone();
    let name = listener.clone();
    let for_build = spec.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut chains = Vec::with_capacity(for_build.chains.len());
        for chain in &for_build.chains {
            let files = material::files(material::sources(
                chain.tls.certificate.as_ref(),
                chain.tls.validation.as_ref(),
            ));
            let (chain, listener, expiry) = (chain.clone(), listener.clone(), expiry.clone());
            chains.push(material::watched(files, move || {
                build_server(&chain, &listener, &expiry)
            })?);
        }
        Ok::<_, TlsError>(chains)
    });
    let chains = match task.await {
        Ok(result) => result?,
        Err(e) => {
            return Err(TlsError::Verifier {
                what: "tls".to_owned(),
                message: format!("building the configuration failed: {e}"),
            });
        }
    };
    Ok(Arc::new(ListenerTlsRuntime {
        spec,
        chains,
        listener: name,
        failures,
    }))
}

/// The names under which a listener's certificates are reported, for forgetting them.
pub(crate) fn labels(listener: &str, spec: &ListenerTls) -> Vec<String> {
    spec.chains
        .iter()
        .map(|c| chain_label(listener, c))
        .collect()
}

impl ListenerTlsRuntime {
    fn failed(&self, failure: Failure) {
        self.failures
            .get_or_create(&[&self.listener, failure.label()])
            .inc();
    }

    /// The handshake of an accepted connection; `None` when it failed (counted; the socket
    /// is closed when dropped).
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        let started = Instant::now();
        let hello_by = crate::deadline::after(
            started,
            self.spec
                .client_hello_timeout
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        );
        let fail = |failure: Failure| {
            tracing::debug!(cause = failure.label(), "downstream tls handshake failed");
            self.failed(failure);
            None
        };
        let start = match tokio::time::timeout_at(
            hello_by,
            LazyConfigAcceptor::new(Acceptor::default(), tcp),
        )
        .await
        {
            Err(_) => return fail(Failure::Timeout),
            Ok(Err(e)) => return fail(Failure::Tls(HandshakeFailure::classify(&e))),
            Ok(Ok(start)) => start,
        };
        let Some(i) = self.spec.select(start.client_hello().server_name()) else {
            return fail(Failure::NoChain);
        };
        let (Some(chain), Some(current)) = (self.spec.chains.get(i), self.chains.get(i)) else {
            return fail(Failure::NoChain);
        };
        let done_by = crate::deadline::after(
            started,
            chain.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        );
        let config = current.load().config.clone();
        match tokio::time::timeout_at(done_by, start.into_stream(config)).await {
            Err(_) => fail(Failure::Timeout),
            Ok(Err(e)) => fail(Failure::Tls(HandshakeFailure::classify(&e))),
            Ok(Ok(stream)) => Some(stream),
        }
    }
}
