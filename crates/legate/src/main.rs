//! The `legate` binary: parse flags, load the bootstrap, start, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use legate::bootstrap::{Args, Bootstrap};

// jemalloc with background purging (see .cargo/config.toml): after a large configuration
// update the transient peak goes back to the OS; glibc's malloc kept most of it resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();

    let bootstrap = match Bootstrap::load(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.validate {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // One worker runs on the calling thread: no work-stealing bookkeeping on the hot path.
    let mut builder = match args.concurrency {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = legate::app::build(bootstrap).await?;
        app.run_until_signal().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "legate failed");
            ExitCode::FAILURE
        }
    }
}
