//! Who may call legate-cp's admin API, decided once per request before any handler runs.
//!
//! Two kinds of credentials are accepted:
//! - a bearer token (`authorization: Bearer <token>`, the same header over gRPC and JSON)
//!   matching one of the tokens in the admin token file. Only SHA-256 digests of the tokens
//!   are kept in memory, and a presented token is compared with every digest in constant time,
//!   so neither the answer's timing nor its content tells how close a guess was;
//! - a client certificate, verified by the TLS handshake against `--admin-client-ca`, whose
//!   SPIFFE URI SAN is `spiffe://<trust-domain>/admin/<name>`. A verified certificate with any
//!   other identity (a node's, say) authenticates its holder but carries no admin right.
//!
//! Reads (status, node dumps) need the same credentials unless the operator opened them.
//! Requests from browsers are refused when they come from another origin, whatever their
//! credentials: a page cannot be used to reach an admin API on the operator's machine.

use std::fmt;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue};
use legate_tls::reload::Current;
use legate_tls::{CertInfo, SpiffeId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token file legate-cp creates in its data directory when no credential is configured.
pub const GENERATED_TOKEN_FILE: &str = "admin.token";
/// The largest token file read.
pub const MAX_TOKEN_FILE_BYTES: usize = 64 << 10;
/// At most this many tokens (one per line) are accepted at once: enough to overlap a rotation.
pub const MAX_TOKENS: usize = 16;
/// A token shorter than this is refused: a guessable token protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;
/// A token longer than this is refused (it must fit comfortably in a header).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Why a token file cannot be used. Messages name the file and line, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token file '{}' is larger than {MAX_TOKEN_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("admin token file '{}' holds no token (it is empty)", path.display())]
    Empty { path: PathBuf },
    #[error("admin token file '{}' holds more than {MAX_TOKENS} tokens", path.display())]
    TooMany { path: PathBuf },
    #[error("admin token file '{}': line {line}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: TokenProblem,
    },
    #[error("cannot create admin token file '{}': {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate an admin token: no secure random numbers")]
    Random,
}

/// What is wrong with one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("the token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort,
    #[error("the token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("the token has a character outside letters, digits and '-._~+/=' (RFC 6750 b64token)")]
    BadCharacter,
}

/// RFC 6750's `b64token` characters: what a bearer token may contain in a header.
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

fn check_token(token: &[u8]) -> Result<(), TokenProblem> {
    if token.len() < MIN_TOKEN_LEN {
        Err(TokenProblem::TooShort)
    } else if token.len() > MAX_TOKEN_LEN {
        Err(TokenProblem::TooLong)
    } else if !token.iter().copied().all(token_char) {
        Err(TokenProblem::BadCharacter)
    } else {
        Ok(())
    }
}

/// The accepted tokens, as digests.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} accepted)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Tokens from a file's contents: one per line, surrounding whitespace and blank lines
    /// ignored. `path` names the file in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<Tokens, TokenError> {
        let mut digests = Vec::new();
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            let token = line.trim_ascii();
            if token.is_empty() {
                continue;
            }
            check_token(token).map_err(|problem| TokenError::Invalid {
                path: path.to_owned(),
                line: index + 1,
                problem,
            })?;
            if digests.len() == MAX_TOKENS {
                return Err(TokenError::TooMany {
                    path: path.to_owned(),
                });
            }
            digests.push(digest(token));
        }
        if digests.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Tokens { digests })
    }

    /// Read and parse a token file. Blocking.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        Tokens::parse(&read_bounded(path)?, path)
    }

    /// Whether `presented` is one of the tokens. Every digest is compared, each in constant
    /// time, whatever matches.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        for d in &self.digests {
            found |= d.ct_eq(&presented);
        }
        found.into()
    }
}

/// A file's contents, refusing one over [`MAX_TOKEN_FILE_BYTES`]. Blocking.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() > MAX_TOKEN_FILE_BYTES {
        return Err(TokenError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(buf)
}

/// The first token of a token file, for clients (legatectl). Blocking.
pub fn first_token(path: &Path) -> Result<String, TokenError> {
    let text = read_bounded(path)?;
    Tokens::parse(&text, path)?;
    text.split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .find(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .ok_or_else(|| TokenError::Empty {
            path: path.to_owned(),
        })
}

/// A new random token: 32 bytes from the TLS provider's secure random source, in hex.
pub fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    legate_tls::config::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Create `path` holding a new random token, readable by its owner only (mode 0600), unless
/// it exists. Returns whether it was created. Blocking.
pub fn create_token_file(path: &Path) -> Result<bool, TokenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let create_err = |source| TokenError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(create_err)?;
    }
    let token = random_token()?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(create_err(e)),
    };
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(create_err)?;
    Ok(true)
}

/// Whether users other than the owner may read or write the file (a token file should be
/// mode 0600, like an SSH key).
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Status and dumps.
    Read,
    /// Anything that changes state.
    Write,
}

/// The gRPC methods of `legate.admin.v1.Admin` that only read. Every other method, including
/// ones added later, needs write access.
const GRPC_READS: [&str; 5] = [
    "ListNodes",
    "GetNode",
    "GetService",
    "GetLoad",
    "GetRollouts",
];

/// The access a gRPC call at `path` (`/package.Service/Method`) needs.
pub fn grpc_access(path: &str) -> Access {
    let service = legate_proto::admin::admin_server::SERVICE_NAME;
    match path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(service))
        .and_then(|p| p.strip_prefix('/'))
    {
        Some(method) if GRPC_READS.contains(&method) => Access::Read,
        _ => Access::Write,
    }
}

/// The access a JSON request needs: only `GET` and `HEAD` read.
pub fn json_access(method: &http::Method) -> Access {
    if method == http::Method::GET || method == http::Method::HEAD {
        Access::Read
    } else {
        Access::Write
    }
}

/// The identity in a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// Its SPIFFE id, when it has one.
    pub spiffe: Option<SpiffeId>,
    /// Its subject, to name a certificate without a SPIFFE id.
    pub subject: String,
}

impl From<&CertInfo> for PeerCert {
    fn from(info: &CertInfo) -> Self {
        PeerCert {
            spiffe: info.spiffe_id(),
            subject: info.subject.clone(),
        }
    }
}

impl fmt::Display for PeerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spiffe {
            Some(id) => write!(f, "{id}"),
            None => write!(f, "subject '{}' (no SPIFFE id)", self.subject),
        }
    }
}

/// Who is calling, once authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Presented a valid bearer token.
    Token,
    /// Presented an admin client certificate.
    Certificate(SpiffeId),
    /// No credentials, on a read the operator opened.
    Anonymous,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Token => f.write_str("bearer token"),
            Caller::Certificate(id) => write!(f, "{id}"),
            Caller::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// How a refusal is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// No usable credentials: HTTP 401, gRPC `Unauthenticated`.
    Unauthenticated,
    /// Known caller or browser context without the right: HTTP 403, gRPC `PermissionDenied`.
    Forbidden,
}

/// Why a request was refused. Messages never contain a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no credentials: send 'authorization: Bearer <token>' or an admin client certificate")]
    NoCredentials,
    #[error("the bearer token is not valid")]
    WrongToken,
    #[error("malformed authorization header: expected 'Bearer <token>'")]
    MalformedAuthorization,
    #[error("bearer tokens are not accepted here: use an admin client certificate")]
    TokensDisabled,
    #[error(
        "client certificate {identity} has no admin right: an admin certificate carries spiffe://{trust_domain}/admin/<name>"
    )]
    NotAdmin {
        identity: String,
        trust_domain: String,
    },
    #[error("cross-origin request refused: origin '{origin}' is not this server")]
    CrossOrigin { origin: String },
    #[error("cross-origin request refused: sec-fetch-site is '{site}'")]
    CrossSite { site: String },
    #[error(
        "host '{host}' refused: on a loopback address the admin API answers only to localhost or an IP address"
    )]
    ForeignHost { host: String },
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::NoCredentials
            | Refusal::WrongToken
            | Refusal::MalformedAuthorization
            | Refusal::TokensDisabled => RefusalKind::Unauthenticated,
            Refusal::NotAdmin { .. }
            | Refusal::CrossOrigin { .. }
            | Refusal::CrossSite { .. }
            | Refusal::ForeignHost { .. } => RefusalKind::Forbidden,
        }
    }

    /// A short stable name for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no-credentials",
            Refusal::WrongToken => "wrong-token",
            Refusal::MalformedAuthorization => "malformed-authorization",
            Refusal::TokensDisabled => "tokens-disabled",
            Refusal::NotAdmin { .. } => "not-admin",
            Refusal::CrossOrigin { .. } => "cross-origin",
            Refusal::CrossSite { .. } => "cross-site",
            Refusal::ForeignHost { .. } => "foreign-host",
        }
    }
}

/// The admin API's rules.
#[derive(Debug)]
pub struct Policy {
    /// Accepted bearer tokens, re-read when their file changes; `None`: tokens are refused.
    pub tokens: Option<Current<Tokens>>,
    /// The trust domain of admin certificates.
    pub trust_domain: String,
    /// Reads need no credentials.
    pub open_reads: bool,
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl Policy {
    /// Decide on a request needing `access`, given its `authorization` header and the
    /// connection's verified client certificate.
    pub fn authorize(
        &self,
        access: Access,
        authorization: Option<&HeaderValue>,
        cert: Option<&PeerCert>,
    ) -> Result<Caller, Refusal> {
        if let Some(id) = cert.and_then(|c| c.spiffe.as_ref())
            && id.trust_domain == self.trust_domain
            && id.admin().is_some()
        {
            return Ok(Caller::Certificate(id.clone()));
        }
        if let Some(value) = authorization {
            let tokens = self.tokens.as_ref().ok_or(Refusal::TokensDisabled)?;
            let token = bearer(value).ok_or(Refusal::MalformedAuthorization)?;
            return if tokens.load().matches(token) {
                Ok(Caller::Token)
            } else {
                Err(Refusal::WrongToken)
            };
        }
        if access == Access::Read && self.open_reads {
            return Ok(Caller::Anonymous);
        }
        match cert {
            Some(c) => Err(Refusal::NotAdmin {
                identity: c.to_string(),
                trust_domain: self.trust_domain.clone(),
            }),
            None => Err(Refusal::NoCredentials),
        }
    }
}

/// The origins that are this server itself, on a connection accepted at `local`:
/// `http(s)://<ip>:<port>` and, on a loopback address, `http(s)://localhost:<port>`.
pub fn own_origins(local: SocketAddr, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let mut origins = vec![format!("{scheme}://{local}")];
    if local.ip().is_loopback() {
        origins.push(format!("{scheme}://localhost:{}", local.port()));
    }
    origins
}

/// The longest origin quoted back in a refusal.
const MAX_QUOTED_ORIGIN: usize = 128;

/// Refuse requests a browser sent from another origin: an `Origin` header that is not one of
/// `own` (including `null`), or `Sec-Fetch-Site` saying `cross-site` or `same-site` (another
/// port or subdomain is another origin too). Clients that are not browsers send neither.
pub fn same_origin(headers: &HeaderMap, own: &[String]) -> Result<(), Refusal> {
    for origin in headers.get_all(http::header::ORIGIN) {
        let text = String::from_utf8_lossy(origin.as_bytes());
        if !own.iter().any(|o| o.eq_ignore_ascii_case(&text)) {
            return Err(Refusal::CrossOrigin {
                origin: text.chars().take(MAX_QUOTED_ORIGIN).collect(),
            });
        }
    }
    for site in headers.get_all("sec-fetch-site") {
        let site = String::from_utf8_lossy(site.as_bytes()).to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Err(Refusal::CrossSite { site });
        }
    }
    Ok(())
}

/// The host a request names (`:authority`, else `Host`), without its port.
pub fn request_host<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.host().to_owned());
    }
    let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let authority: http::uri::Authority = value.parse().ok()?;
    Some(authority.host().to_owned())
}

/// On a loopback address, answer only requests naming `localhost` or an IP address. A page
/// that re-points its own DNS name at 127.0.0.1 (DNS rebinding) is same-origin in the
/// browser's eyes, so the `Origin` checks cannot see it; the name it must send can. A request
/// without a host (HTTP/1.0) passes.
pub fn loopback_host(host: Option<&str>, local: SocketAddr) -> Result<(), Refusal> {
    let Some(host) = host else { return Ok(()) };
    if !local.ip().is_loopback() {
        return Ok(());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(Refusal::ForeignHost {
            host: host.chars().take(MAX_QUOTED_ORIGIN).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use arc_swap::ArcSwap;

    const GOOD: &str = "0123456789abcdef-good";

    fn policy(open_reads: bool, tokens: bool) -> Policy {
        Policy {
            tokens: tokens.then(|| {
                Arc::new(ArcSwap::from_pointee(
                    Tokens::parse(format!("{GOOD}\n").as_bytes(), Path::new("t")).expect("tokens"),
                ))
            }),
            trust_domain: "legate.local".to_owned(),
            open_reads,
        }
    }

    fn cert(uri: &str) -> PeerCert {
        PeerCert {
            spiffe: SpiffeId::parse(uri),
            subject: "CN=x".to_owned(),
        }
    }

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).expect("header")
    }

    #[test]
    fn token_files() {
        let p = Path::new("admin.token");
        let t = Tokens::parse(b"\n  0123456789abcdef \n\nZZZZZZZZZZZZZZZZ==\n", p).expect("ok");
        assert!(t.matches(b"0123456789abcdef"));
        assert!(t.matches(b"ZZZZZZZZZZZZZZZZ=="));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b""));
        assert!(matches!(
            Tokens::parse(b" \n\n", p),
            Err(TokenError::Empty { .. })
        ));
        let check = |text: &[u8], want: TokenProblem, line: usize| match Tokens::parse(text, p) {
            Err(TokenError::Invalid {
                problem, line: l, ..
            }) => {
                assert_eq!((problem, l), (want, line));
            }
            other => panic!("{other:?}"),
        };
        check(b"short\n", TokenProblem::TooShort, 1);
        check(
            b"0123456789abcdef\n0123456789abcdef0123\"\n",
            TokenProblem::BadCharacter,
            2,
        );
        check(&[b'a'; MAX_TOKEN_LEN + 1], TokenProblem::TooLong, 1);
        let many: String = (0..=MAX_TOKENS)
            .map(|i| format!("token-number-{i:04}\n"))
            .collect();
        assert!(matches!(
            Tokens::parse(many.as_bytes(), p),
            Err(TokenError::TooMany { .. })
        ));
        // Neither errors nor Debug show a token.
        let secret = "s3cret-s3cret-s3cret-\u{1}";
        let err = Tokens::parse(secret.as_bytes(), p).expect_err("bad char");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(!format!("{t:?}").contains("0123"), "{t:?}");
    }

    #[test]
    fn generated_tokens_are_random_private_and_kept() {
        let dir = std::env::temp_dir().join(format!(
            "legate-cp-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let path = dir.join("data").join(GENERATED_TOKEN_FILE);
        assert!(create_token_file(&path).expect("create"));
        let first = std::fs::read_to_string(&path).expect("read");
        assert_eq!(first.trim().len(), 64, "{} bytes", first.len());
        assert!(!readable_by_others(&path));
        Tokens::load(&path).expect("a valid token file");
        assert!(!create_token_file(&path).expect("exists"), "kept");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        assert_eq!(first_token(&path).expect("token"), first.trim());
        assert_ne!(random_token().expect("r"), random_token().expect("r"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn method_access() {
        assert_eq!(
            grpc_access("/legate.admin.v1.Admin/ListNodes"),
            Access::Read
        );
        assert_eq!(grpc_access("/legate.admin.v1.Admin/GetNode"), Access::Read);
        for write in [
            "/legate.admin.v1.Admin/Apply",
            "/legate.admin.v1.Admin/SetWeights",
            "/legate.admin.v1.Admin/SomethingNew",
            "/other.Service/ListNodes",
            "/legate.admin.v1.AdminX/ListNodes",
            "",
        ] {
            assert_eq!(grpc_access(write), Access::Write, "{write}");
        }
        assert_eq!(json_access(&http::Method::GET), Access::Read);
        assert_eq!(json_access(&http::Method::POST), Access::Write);
        assert_eq!(json_access(&http::Method::DELETE), Access::Write);
    }

    #[test]
    fn decisions() {
        use Access::*;
        let p = policy(false, true);
        let good = header(&format!("Bearer {GOOD}"));
        let lower = header(&format!("bearer   {GOOD} "));
        assert_eq!(p.authorize(Write, Some(&good), None), Ok(Caller::Token));
        assert_eq!(p.authorize(Read, Some(&lower), None), Ok(Caller::Token));
        assert_eq!(
            p.authorize(Write, Some(&header("Bearer 0123456789abcdef-bad")), None),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            p.authorize(Write, Some(&header(&format!("Basic {GOOD}"))), None),
            Err(Refusal::MalformedAuthorization)
        );
        assert_eq!(
            p.authorize(Write, Some(&header("Bearer ")), None),
            Err(Refusal::MalformedAuthorization)
        );
        assert_eq!(p.authorize(Read, None, None), Err(Refusal::NoCredentials));

        let admin = cert("spiffe://legate.local/admin/alice");
        assert_eq!(
            p.authorize(Write, None, Some(&admin)),
            Ok(Caller::Certificate(
                SpiffeId::parse("spiffe://legate.local/admin/alice").expect("id")
            ))
        );
        for other in [
            "spiffe://legate.local/node/x",
            "spiffe://elsewhere/admin/alice",
            "spiffe://legate.local/admin/alice/extra",
        ] {
            let r = p.authorize(Write, None, Some(&cert(other)));
            assert!(
                matches!(&r, Err(e @ Refusal::NotAdmin { .. }) if e.kind() == RefusalKind::Forbidden),
                "{other}: {r:?}"
            );
        }
        // A node certificate with a valid token: the token decides.
        let node = cert("spiffe://legate.local/node/x");
        assert_eq!(
            p.authorize(Write, Some(&good), Some(&node)),
            Ok(Caller::Token)
        );

        let open = policy(true, true);
        assert_eq!(open.authorize(Read, None, None), Ok(Caller::Anonymous));
        assert_eq!(
            open.authorize(Read, None, Some(&node)),
            Ok(Caller::Anonymous)
        );
        assert_eq!(
            open.authorize(Write, None, None),
            Err(Refusal::NoCredentials)
        );
        assert_eq!(
            open.authorize(Read, Some(&header("Bearer 0123456789abcdef-bad")), None),
            Err(Refusal::WrongToken),
            "a wrong token is refused even where none is needed"
        );

        let certs_only = policy(false, false);
        assert_eq!(
            certs_only.authorize(Write, Some(&good), None),
            Err(Refusal::TokensDisabled)
        );
        assert_eq!(Refusal::TokensDisabled.kind(), RefusalKind::Unauthenticated);
    }

    #[test]
    fn hosts_on_loopback() {
        let lo: SocketAddr = "127.0.0.1:15011".parse().expect("addr");
        let lan: SocketAddr = "10.0.0.5:15011".parse().expect("addr");
        for ok in ["localhost", "LOCALHOST", "127.0.0.1", "[::1]", "10.9.8.7"] {
            assert_eq!(loopback_host(Some(ok), lo), Ok(()), "{ok}");
        }
        assert_eq!(loopback_host(None, lo), Ok(()));
        let refused = loopback_host(Some("evil.example"), lo).expect_err("rebinding");
        assert_eq!(refused.reason(), "foreign-host");
        assert_eq!(refused.kind(), RefusalKind::Forbidden);
        assert_eq!(loopback_host(Some("cp.internal"), lan), Ok(()));
        let req = |uri: &str, host: Option<&str>| {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(http::header::HOST, h);
            }
            request_host(&b.body(()).expect("request"))
        };
        assert_eq!(
            req("/v1/nodes", Some("evil.example:15011")).as_deref(),
            Some("evil.example")
        );
        assert_eq!(
            req("/v1/nodes", Some("[::1]:15011")).as_deref(),
            Some("[::1]")
        );
        assert_eq!(
            req("http://localhost:1/x", Some("other")).as_deref(),
            Some("localhost")
        );
        assert_eq!(req("/v1/nodes", None), None);
    }

    #[test]
    fn origins() {
        let local: SocketAddr = "127.0.0.1:15011".parse().expect("addr");
        let own = own_origins(local, false);
        assert_eq!(own, ["http://127.0.0.1:15011", "http://localhost:15011"]);
        assert_eq!(
            own_origins("[::1]:9".parse().expect("addr"), true),
            ["https://[::1]:9", "https://localhost:9"]
        );
        assert_eq!(
            own_origins("10.0.0.5:9".parse().expect("addr"), true),
            ["https://10.0.0.5:9"]
        );
        let check = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    header(v),
                );
            }
            same_origin(&h, &own).map_err(|e| e.reason())
        };
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&[("origin", "http://127.0.0.1:15011")]), Ok(()));
        assert_eq!(check(&[("origin", "HTTP://LOCALHOST:15011")]), Ok(()));
        assert_eq!(check(&[("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(check(&[("sec-fetch-site", "none")]), Ok(()));
        for (k, v) in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "https://127.0.0.1:15011"),
            ("origin", "http://127.0.0.1:15012"),
            ("origin", "http://localhost.evil.example:15011"),
        ] {
            assert_eq!(check(&[(k, v)]), Err("cross-origin"), "{v}");
        }
        assert_eq!(
            check(&[("origin", "http://127.0.0.1:15011"), ("origin", "http://x")]),
            Err("cross-origin")
        );
        assert_eq!(
            check(&[("sec-fetch-site", "cross-site")]),
            Err("cross-site")
        );
        assert_eq!(check(&[("sec-fetch-site", "same-site")]), Err("cross-site"));
    }
}
