//! `legate-cp-load`: simulated proxies on real ADS streams against legate-cp, and how long a
//! change takes to reach every one of them. One JSON object per line on stdout (`start`,
//! `ready`, one `change` per change, `done`); exit status 1 if a stream never got ready or a
//! change did not reach every stream in time.
//!
//! Several `--server`s (repeated, or comma-separated) are replicas of one control plane:
//! stream `i` goes to server `i mod k`, each server over its own connections, and the
//! events (still one report over every stream) gain a `servers` list with each one's share.
//!
//! ```text
//! legate-cp-load --server http://127.0.0.1:15010 --streams 10000 --mode delta \
//!   --changes 3 --cp-pid $(pidof legate-cp) \
//!   --trigger-cmd 'legatectl set-weights payments v1=80 v2=20' \
//!   --trigger-cmd 'legatectl set-weights payments v1=90 v2=10'
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use legate_cp::load::{self, Event, LoadOptions, Mode};
use legate_model::parse_duration;

/// Opens N simulated proxies (ADS streams, each its own node) against legate-cp, triggers
/// changes and reports, per change, the time from the trigger to each stream's ACK.
#[derive(Debug, Parser)]
#[command(name = "legate-cp-load", version)]
struct Args {
    /// legate-cp's xDS address. Repeat it (or separate with commas) for replicas: stream i
    /// goes to server i mod count.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:15010",
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// Simulated proxies (one ADS stream each).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    streams: usize,
    /// ADS variant: sotw (state of the world) or delta.
    #[arg(long, value_name = "MODE", default_value = "sotw")]
    mode: Mode,
    /// HTTP/2 connections to each server, shared by its streams [default: one per 100 of
    /// its streams].
    #[arg(long, value_name = "C")]
    connections: Option<usize>,
    /// Node ids are this prefix and the stream's index.
    #[arg(long, value_name = "PREFIX", default_value = "sim-")]
    node_prefix: String,
    /// Node cluster of every simulated proxy.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    node_cluster: String,
    /// Changes to trigger once every stream is ready.
    #[arg(long, value_name = "K", default_value_t = 0)]
    changes: usize,
    /// Shell command making one change; repeat it to alternate (change i runs command
    /// i mod count). The clock starts just before the command does.
    #[arg(long, value_name = "CMD")]
    trigger_cmd: Vec<String>,
    /// Pause before the first change and between changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Keep the streams open this long after the last change (or after ready).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    duration: Duration,
    /// Time allowed for every stream to get its initial configuration.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// Time allowed, from the trigger, for every stream to ACK a change.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    change_timeout: Duration,
    /// A change is over when every stream ACKed and none has for this long.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    quiet: Duration,
    /// Streams fetching their initial configuration at once.
    #[arg(long, value_name = "K", default_value_t = 1000)]
    open_concurrency: usize,
    /// legate-cp's PID: report its RSS (VmRSS) and CPU time (utime+stime) from /proc.
    #[arg(long, value_name = "PID")]
    cp_pid: Option<u32>,
    /// Worker threads of this tool's runtime [default: one per CPU].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("legate-cp-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = LoadOptions {
        connections: args.connections,
        servers: args.server,
        streams: args.streams,
        mode: args.mode,
        node_prefix: args.node_prefix,
        node_cluster: args.node_cluster,
        changes: args.changes,
        trigger_cmds: args.trigger_cmd,
        interval: args.interval,
        duration: args.duration,
        ready_timeout: args.ready_timeout,
        change_timeout: args.change_timeout,
        quiet: args.quiet,
        open_concurrency: args.open_concurrency,
        cp_pid: args.cp_pid,
    };
    let mut emit = |event: Event| {
        let line = serde_json::to_string(&event).unwrap_or_else(|e| {
            serde_json::json!({"event": "error", "error": e.to_string()}).to_string()
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let result = runtime.block_on(load::run(options, &mut emit));
    // Streams still open are dropped with the runtime, without waiting for the server.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("legate-cp-load: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_repeat_or_separate_with_commas() {
        let servers = |argv: &[&str]| {
            Args::try_parse_from(std::iter::once("legate-cp-load").chain(argv.iter().copied()))
                .expect("parses")
                .server
        };
        assert_eq!(servers(&[]), ["http://127.0.0.1:15010"]);
        assert_eq!(servers(&["--server", "http://a:1"]), ["http://a:1"]);
        assert_eq!(
            servers(&[
                "--server",
                "http://a:1",
                "--server",
                "http://b:2,http://c:3"
            ]),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
    }
}
