//! `legate-demo-upstream`: the upstream used by legate's end-to-end tests and demos.
//!
//! With `--tls-cert`/`--tls-key` the main port speaks TLS (ALPN `h2` and `http/1.1`),
//! `--client-ca` makes it require client certificates, and every answer reports the
//! handshake (`x-tls-version`, `x-tls-sni`, `x-tls-alpn`, `x-client-subject`,
//! `x-client-san`). The control port stays plaintext.
//!
//! Prints exactly one line, `listening on ADDR`, once the socket is bound (preceded by
//! `control listening on ADDR` when `--control-listen` is given); then answers every request
//! with a JSON echo unless the query or `POST /control` asks otherwise (see
//! `legate_tests::demo`). Exits 0 on SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use legate_tests::demo::{self, DemoConfig, DemoTls, Protocol};
use legate_tls::config::TlsVersion;

#[derive(Debug, Parser)]
#[command(
    name = "legate-demo-upstream",
    about = "Echoing HTTP upstream for legate's tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name reported in the echo and in the `x-upstream` header.
    #[arg(long, default_value = "demo")]
    name: String,
    /// Version reported in the echo and in the `x-upstream-version` header.
    #[arg(long, default_value = "v1")]
    version: String,
    /// HTTP versions served: `auto` is HTTP/1.1 plus h2 with prior knowledge.
    #[arg(long, value_enum, default_value_t = Protocol::Auto)]
    protocol: Protocol,
    /// Also serve `/control`, `/counters` and `/charges` here, on a port that keeps
    /// listening while the main one refuses connections.
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Extra delay before every answer (e.g. `200ms`): makes a slow host.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    delay: Duration,
    /// Serve the main port over TLS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates chaining to a CA in this bundle (PEM).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// The highest TLS version served: `1.2` or `1.3` (default).
    #[arg(long, value_parser = parse_version, requires = "tls_cert")]
    tls_max_version: Option<TlsVersion>,
}

fn parse_version(v: &str) -> Result<TlsVersion, String> {
    match v {
        "1.2" => Ok(TlsVersion::V1_2),
        "1.3" => Ok(TlsVersion::V1_3),
        other => Err(format!("'{other}': expected 1.2 or 1.3")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let control = match args.control_listen {
        Some(control_addr) => {
            let control = demo::bind(control_addr)
                .with_context(|| format!("binding the control port {control_addr}"))?;
            let bound = control
                .local_addr()
                .context("reading the bound control address")?;
            Some((control, bound))
        }
        None => None,
    };
    let listener = demo::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    if let Some(path) = &args.ready_file {
        // Write then rename, so a reader never sees a partial address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    {
        let mut stdout = std::io::stdout().lock();
        // The control line first: whoever waits for `listening on` then has both.
        if let Some((_, control_addr)) = &control {
            writeln!(stdout, "control listening on {control_addr}").context("writing to stdout")?;
        }
        writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
        stdout.flush().context("flushing stdout")?;
    }

    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(DemoTls {
            cert,
            key,
            client_ca: args.client_ca,
            max_version: args.tls_max_version,
        }),
        _ => None,
    };
    let config = DemoConfig {
        name: args.name,
        version: args.version,
        protocol: args.protocol,
        base_delay: args.delay,
        tls,
    };
    let control = control.map(|(control, _)| control);
    demo::serve_with_control(listener, control, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            eprintln!("demo-upstream: cannot listen for SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
