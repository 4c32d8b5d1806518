//! `legate-otlp-sink`: an OTLP/gRPC trace collector that decodes every export and drops it,
//! for `make bench` to measure what tracing costs a proxy against a real gRPC server.
//!
//! It is the test receiver (`legate_tests::otlp`) in its counting mode, on one
//! current-thread runtime. It prints `listening on ADDR` once bound and, when stopped
//! (SIGTERM or Ctrl-C), one line with the export calls and spans it received.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use legate_tests::otlp::{Keep, OtlpReceiver};

#[derive(Debug, Parser)]
#[command(
    name = "legate-otlp-sink",
    about = "OTLP/gRPC trace collector that counts spans and drops them (for make bench)"
)]
struct Args {
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let receiver = OtlpReceiver::serve(listener, Keep::CountOnly)?;
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "listening on {}", receiver.addr).context("writing to stdout")?;
            stdout.flush().context("flushing stdout")?;
        }
        shutdown_signal().await;
        let (exports, spans) = receiver.counts();
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "received exports={exports} spans={spans}")
            .context("writing to stdout")?;
        stdout.flush().context("flushing stdout")
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            eprintln!("legate-otlp-sink: cannot listen for SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
