use std::path::PathBuf;

/// Why TLS material could not be loaded or turned into a configuration. `what` names the
/// setting or resource the material came from, so the message points at the operator's input.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: cannot read '{}': {source}", path.display())]
    Read {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: '{}' is larger than {limit} bytes", path.display())]
    TooLarge {
        what: String,
        path: PathBuf,
        limit: usize,
    },
    #[error("{what}: invalid PEM: {message}")]
    Pem { what: String, message: String },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: no PEM private key found")]
    NoPrivateKey { what: String },
    #[error("{what}: invalid certificate: {message}")]
    Certificate { what: String, message: String },
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("{what}: {message}")]
    Verifier { what: String, message: String },
    #[error("cannot issue certificate '{name}': {message}")]
    Issue { name: String, message: String },
}
