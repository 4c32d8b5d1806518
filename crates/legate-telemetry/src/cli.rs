//! What the three binaries (`legate`, `legate-cp`, `legatectl`) share on their command line
//! and in how they present themselves to an operator: the logging flags and their set-up, and
//! the address file a supervisor or a test reads the bound ports from. One copy, so the flags
//! have the same names, help and behaviour everywhere.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::Path;

use tracing_subscriber::EnvFilter;

/// The filter used when neither `--log-level` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal and `NO_COLOR` is not
    /// set.
    #[default]
    Text,
    /// One JSON object per line, with `timestamp`, `level`, `target`, `message` and the
    /// event's fields at the top level; never coloured.
    Json,
}

/// The logging flags, flattened into each binary's arguments.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log filter in RUST_LOG syntax, e.g. `info,legate_xds=debug`. The flag wins over the
    /// RUST_LOG environment variable; without either, `info`.
    #[arg(long, value_name = "FILTER", value_parser = parse_filter, global = true)]
    pub log_level: Option<String>,

    /// Log line format on stderr: `text` (coloured only on a terminal, never when NO_COLOR
    /// is set) or `json` (one object per line).
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// A `--log-level` or `RUST_LOG` that is not a valid filter.
#[derive(Debug, thiserror::Error)]
#[error("'{filter}' is not a log filter (RUST_LOG syntax, e.g. info,legate_xds=debug): {reason}")]
pub struct FilterError {
    filter: String,
    reason: String,
}

/// `--log-level`'s value parser: refused at parse time rather than silently ignored.
fn parse_filter(s: &str) -> Result<String, FilterError> {
    EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| FilterError {
            filter: s.to_owned(),
            reason: e.to_string(),
        })
}

/// Whether text logs get ANSI colours: only when stderr is a terminal, and never when
/// `NO_COLOR` is set to a non-empty value (<https://no-color.org>). Logs redirected to a file
/// or a pipe (journald, a log shipper, `2>file`) stay plain text.
pub fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

impl LogArgs {
    /// Install the process's tracing subscriber, writing to stderr. The filter is
    /// `--log-level`, else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`]. A bad `--log-level` was
    /// already refused by clap; a `RUST_LOG` that does not parse is reported as a warning
    /// and the default used, so a stray environment variable does not stop a service.
    pub fn init(&self) {
        let env = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let mut bad_env = None;
        let filter = match (&self.log_level, env) {
            (Some(flag), _) => EnvFilter::try_new(flag).ok(),
            (None, Some(env)) => match EnvFilter::try_new(&env) {
                Ok(f) => Some(f),
                Err(e) => {
                    bad_env = Some(FilterError {
                        filter: env,
                        reason: e.to_string(),
                    });
                    None
                }
            },
            (None, None) => None,
        }
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_FILTER));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        // Another subscriber already installed (a test calling this twice) is not an error
        // worth stopping for: logs still go somewhere.
        let _ = match self.log_format {
            LogFormat::Text => builder.with_ansi(colour_on_stderr()).try_init(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_ansi(false)
                .try_init(),
        };
        if let Some(error) = bad_env {
            tracing::warn!(%error, "ignoring RUST_LOG, logging at {DEFAULT_LOG_FILTER}");
        }
    }
}

/// Write the address file: one `NAME=ADDR` line per bound address (`admin=127.0.0.1:15000`),
/// written to a temporary file beside it and renamed, so a reader sees either nothing or
/// every line.
pub fn write_address_file(path: &Path, addresses: &[(&str, SocketAddr)]) -> std::io::Result<()> {
    let text: String = addresses
        .iter()
        .map(|(name, addr)| format!("{name}={addr}\n"))
        .collect();
    write_atomically(path, text.as_bytes())
}

/// Write `bytes` to a temporary file beside `path`, then rename it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Read an address file written by [`write_address_file`]: the addresses by name, in file
/// order. Lines that are not `NAME=ADDR` are an error.
pub fn parse_address_file(text: &str) -> Result<Vec<(String, SocketAddr)>, AddressFileError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let bad = || AddressFileError {
                line: i + 1,
                text: line.to_owned(),
            };
            let (name, addr) = line.split_once('=').ok_or_else(bad)?;
            let addr = addr.trim().parse().map_err(|_| bad())?;
            Ok((name.trim().to_owned(), addr))
        })
        .collect()
}

/// A line of an address file that is not `NAME=ADDR`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("address file line {line}: '{text}' is not NAME=ADDR")]
pub struct AddressFileError {
    pub line: usize,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("legate-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("addresses");
        let xds: SocketAddr = "127.0.0.1:15010".parse().expect("addr");
        let admin: SocketAddr = "[::1]:15011".parse().expect("addr");
        write_address_file(&path, &[("xds", xds), ("admin", admin)]).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "xds=127.0.0.1:15010\nadmin=[::1]:15011\n");
        assert_eq!(
            parse_address_file(&text),
            Ok(vec![("xds".to_owned(), xds), ("admin".to_owned(), admin)])
        );
        assert_eq!(
            parse_address_file("127.0.0.1:1\n"),
            Err(AddressFileError {
                line: 1,
                text: "127.0.0.1:1".to_owned()
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(parse_filter("info,legate_xds=debug").is_ok());
        let e = parse_filter("legate=loud").expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("'legate=loud' is not a log filter"),
            "{e}"
        );
    }
}
