//! Control-plane fan-out load: many simulated proxies on real ADS streams, and how long a
//! change takes to reach all of them (the `legate-cp-load` binary).
//!
//! [`run`] opens `streams` ADS streams (state of the world or delta), each with its own node
//! id, multiplexed over a few HTTP/2 connections, and waits until every one holds its initial
//! configuration. Given several servers (replicas of one control plane), stream `i` goes to
//! server `i mod k`, over connections of its own server; the report stays one report over
//! every stream, with each server's share beside it. Then, per change, it notes the time, runs the trigger command (e.g.
//! `legatectl set-weights ...`) and waits until every stream has ACKed something new and the
//! fleet has been quiet for a moment. A stream's latency is the time from just before the
//! trigger command starts to the last ACK it sent for the change; so it includes starting the
//! command, the admin call, compiling and validating the mesh, the fan-out, and the simulated
//! proxy's own decoding. Progress is reported as [`Event`]s (JSON lines from the binary).
//!
//! The simulated proxies and the control plane share the machine: their CPU time competes,
//! and the tool reports its own CPU time next to legate-cp's so the reader can tell.

mod procstat;
mod sim;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

pub use procstat::{ProcSample, sample};

/// How often the controller looks at the streams' counters.
const POLL: Duration = Duration::from_millis(5);
/// Receive windows of the simulated proxies' connections (Envoy's are larger still): flow
/// control should not be what is measured.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Which ADS variant the simulated proxies speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Sotw,
    Delta,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sotw" => Ok(Mode::Sotw),
            "delta" => Ok(Mode::Delta),
            _ => Err(format!("'{s}': expected sotw or delta")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// xDS server URLs, `http://127.0.0.1:15010`; stream `i` goes to server `i mod k`.
    pub servers: Vec<String>,
    pub streams: usize,
    pub mode: Mode,
    /// HTTP/2 connections to each server, its streams spread over them (round robin);
    /// `None`: [`default_connections`](Self::default_connections) of the server's streams.
    pub connections: Option<usize>,
    /// Node ids are this prefix followed by the stream's index.
    pub node_prefix: String,
    pub node_cluster: String,
    /// How many changes to trigger.
    pub changes: usize,
    /// Shell commands (`sh -c`) that make one change each, used in turn; give two that
    /// undo each other (`... v1=80 v2=20`, `... v1=90 v2=10`) so every run is a real change.
    pub trigger_cmds: Vec<String>,
    /// Quiet time before the first change and between changes.
    pub interval: Duration,
    /// How long to keep the streams open after the last change (or, with no changes, after
    /// all are ready): for watching the server's idle cost.
    pub duration: Duration,
    /// Time allowed for every stream to get its initial configuration.
    pub ready_timeout: Duration,
    /// Time allowed, from the trigger, for every stream to ACK a change.
    pub change_timeout: Duration,
    /// A change is complete once every stream ACKed something new and no stream has sent an
    /// ACK for this long (a change may take several responses per stream).
    pub quiet: Duration,
    /// Streams loading their initial configuration at once (the rest wait to open).
    pub open_concurrency: usize,
    /// legate-cp's PID, to report its RSS and CPU time.
    pub cp_pid: Option<u32>,
}

impl LoadOptions {
    /// The default connection count: one per 100 streams.
    pub fn default_connections(streams: usize) -> usize {
        streams.div_ceil(100).max(1)
    }

    /// The server stream `i` goes to (an index into [`servers`](Self::servers)).
    fn server_of(&self, stream: usize) -> usize {
        stream % self.servers.len().max(1)
    }

    /// How many streams server `server` gets.
    fn streams_of(&self, server: usize) -> usize {
        let k = self.servers.len().max(1);
        (self.streams + k - 1).saturating_sub(server) / k
    }

    /// HTTP/2 connections to server `server`.
    fn connections_of(&self, server: usize) -> usize {
        self.connections
            .unwrap_or_else(|| Self::default_connections(self.streams_of(server)))
    }
}

/// One server's share of the streams, reported beside the totals when there are several
/// servers (with one, the event is exactly as it always was).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerShare {
    pub server: String,
    /// Streams sent to this server.
    pub streams: usize,
    /// HTTP/2 connections to it (`start`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Of its streams, those holding their initial configuration (`ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<usize>,
    /// Of its streams, those that ACKed the change (`change`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<usize>,
    /// Latency of its ACKing streams (`change`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Of its streams, those that ended (`done`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<usize>,
}

/// Readings of legate-cp (if its PID was given) and of this process.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub cp: Option<ProcSample>,
    pub load: Option<ProcSample>,
}

/// Distribution of per-stream latencies, milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `micros` (sorted here); `None` when empty.
    pub fn of(micros: &mut [u64]) -> Option<Latency> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let n = micros.len();
        let ms = |us: u64| us as f64 / 1000.0;
        let rank = |p: usize| -> f64 {
            let i = (p * n).div_ceil(100).clamp(1, n) - 1;
            ms(micros[i])
        };
        Some(Latency {
            p50_ms: rank(50),
            p90_ms: rank(90),
            p99_ms: rank(99),
            max_ms: ms(*micros.last()?),
            min_ms: ms(*micros.first()?),
        })
    }
}

/// What the tool reports, in order: `start`, `ready`, one `change` per change, `done`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Before any stream opens: the server idle.
    Start {
        mode: Mode,
        streams: usize,
        /// Over every server.
        connections: usize,
        usage: Usage,
        /// Each server's streams and connections (several servers only).
        #[serde(skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<ServerShare>>,
    },
    /// Every stream (or as many as made it in time) holds its initial configuration.
    Ready {
        mode: Mode,
        streams: usize,
        ready: usize,
        /// From the first connection attempt to the last stream ready.
        elapsed_ms: f64,
        usage: Usage,
        /// Each server's streams and ready streams (several servers only).
        #[serde(skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<ServerShare>>,
    },
    /// One change, from the trigger to every stream's ACK.
    Change {
        mode: Mode,
        index: usize,
        command: String,
        streams: usize,
        /// Streams that ACKed something after the trigger.
        acked: usize,
        /// `acked / streams`.
        acked_ratio: f64,
        /// Every ACKing stream ended on the same configuration.
        consistent: bool,
        /// Streams whose ACKed configuration differs from before the trigger.
        changed: usize,
        /// How long the trigger command took (start to exit).
        trigger_ms: f64,
        latency: Option<Latency>,
        /// legate-cp's CPU seconds from just before the trigger to the end of the change.
        cp_cpu_s: Option<f64>,
        /// This tool's CPU seconds over the same time.
        load_cpu_s: Option<f64>,
        usage: Usage,
        timed_out: bool,
        /// Each server's streams, ACKs and latency (several servers only); the fields above
        /// are over every stream.
        #[serde(skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<ServerShare>>,
    },
    /// The end: streams lost along the way and the first of their errors.
    Done {
        mode: Mode,
        streams: usize,
        ended: usize,
        errors: usize,
        first_errors: Vec<String>,
        usage: Usage,
        /// Each server's streams and ended streams (several servers only).
        #[serde(skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<ServerShare>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("cannot connect to {server}: {error}")]
    Connect { server: String, error: String },
    #[error("only {ready} of {streams} streams got their initial configuration in {timeout:?}")]
    NotReady {
        ready: usize,
        streams: usize,
        timeout: Duration,
    },
    #[error("trigger command `{command}` failed: {error}")]
    Trigger { command: String, error: String },
    #[error(
        "change {index}: only {acked} of {streams} streams ACKed within {timeout:?}{hint}",
        hint = if *acked == 0 { " (did the trigger command change anything? setting the \
            values already in force pushes nothing)" } else { "" }
    )]
    Incomplete {
        index: usize,
        acked: usize,
        streams: usize,
        timeout: Duration,
    },
}

/// Runs the load and reports through `emit`. Fails when streams do not all get ready or do
/// not all ACK a change in time; the events up to that point are still reported.
pub async fn run(options: LoadOptions, emit: &mut dyn FnMut(Event)) -> Result<(), LoadError> {
    check(&options)?;
    let mode = options.mode;
    let n = options.streams;
    let usage = || Usage {
        cp: options.cp_pid.and_then(|pid| sample(&pid.to_string())),
        load: sample("self"),
    };
    let k = options.servers.len();
    emit(Event::Start {
        mode,
        streams: n,
        connections: (0..k).map(|j| options.connections_of(j)).sum(),
        usage: usage(),
        servers: per_server(&options, |j, share| {
            share.connections = Some(options.connections_of(j))
        }),
    });

    let started = Instant::now();
    // Per server, its own connections.
    let mut channels: Vec<Vec<Channel>> = Vec::with_capacity(k);
    for (j, server) in options.servers.iter().enumerate() {
        let count = options.connections_of(j);
        let mut own = Vec::with_capacity(count);
        for _ in 0..count {
            own.push(connect(server).await?);
        }
        channels.push(own);
    }
    let shared = Arc::new(sim::Shared::new(n));
    let opening = Arc::new(Semaphore::new(options.open_concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let node = Node {
            id: format!("{}{i}", options.node_prefix),
            cluster: options.node_cluster.clone(),
            user_agent_name: "legate-cp-load".to_owned(),
            ..Default::default()
        };
        // Stream i is the (i / k)-th stream of server i mod k (with one server: channel
        // i mod connections, as always).
        let own = &channels[options.server_of(i)];
        let channel = own[(i / k) % own.len()].clone();
        let shared = Arc::clone(&shared);
        let opening = Arc::clone(&opening);
        tasks.spawn(async move {
            let Ok(permit) = opening.acquire_owned().await else {
                return;
            };
            sim::run_stream(mode, channel, node, i, shared, permit).await;
        });
    }

    let deadline = started + options.ready_timeout;
    loop {
        let ready = shared.ready.load(Ordering::Relaxed);
        let gone = ended_unready(&shared);
        if ready + gone >= n || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let ready = shared.ready.load(Ordering::Relaxed);
    emit(Event::Ready {
        mode,
        streams: n,
        ready,
        elapsed_ms: ms(started.elapsed()),
        usage: usage(),
        servers: per_server(&options, |j, share| {
            share.ready = Some(count_of(&options, &shared, j, |s| {
                s.ready.load(Ordering::Relaxed)
            }))
        }),
    });
    if ready < n {
        emit(done(&options, &shared, usage()));
        tasks.abort_all();
        return Err(LoadError::NotReady {
            ready,
            streams: n,
            timeout: options.ready_timeout,
        });
    }

    let mut result = Ok(());
    for index in 0..options.changes {
        tokio::time::sleep(options.interval).await;
        let command = options.trigger_cmds[index % options.trigger_cmds.len()].clone();
        let event = match change(&options, &shared, index, command, &usage).await {
            Ok(event) => event,
            Err(error) => {
                result = Err(error);
                break;
            }
        };
        if let Event::Change {
            acked, timed_out, ..
        } = &event
            && *timed_out
        {
            result = Err(LoadError::Incomplete {
                index,
                acked: *acked,
                streams: n,
                timeout: options.change_timeout,
            });
        }
        emit(event);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        tokio::time::sleep(options.duration).await;
    }
    emit(done(&options, &shared, usage()));
    tasks.abort_all();
    result
}

fn check(options: &LoadOptions) -> Result<(), LoadError> {
    let bad = |m: &str| Err(LoadError::Options(m.to_owned()));
    if options.streams == 0 {
        return bad("--streams must be at least 1");
    }
    if options.servers.is_empty() {
        return bad("--server must be given at least once");
    }
    if options.streams < options.servers.len() {
        return bad("--streams must be at least the number of servers");
    }
    if options.connections == Some(0) {
        return bad("--connections must be at least 1");
    }
    if options.open_concurrency == 0 {
        return bad("--open-concurrency must be at least 1");
    }
    if options.changes > 0 && options.trigger_cmds.is_empty() {
        return bad("--changes needs at least one --trigger-cmd");
    }
    Ok(())
}

async fn connect(server: &str) -> Result<Channel, LoadError> {
    let error = |e: &dyn fmt::Display| LoadError::Connect {
        server: server.to_owned(),
        error: e.to_string(),
    };
    Endpoint::from_shared(server.to_owned())
        .map_err(|e| error(&e))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect()
        .await
        .map_err(|e| error(&e))
}

/// Streams that ended without ever becoming ready (they never will).
fn ended_unready(shared: &sim::Shared) -> usize {
    shared
        .streams
        .iter()
        .filter(|s| s.ended.load(Ordering::Relaxed) && !s.ready.load(Ordering::Relaxed))
        .count()
}

fn done(options: &LoadOptions, shared: &sim::Shared, usage: Usage) -> Event {
    Event::Done {
        mode: options.mode,
        streams: options.streams,
        ended: shared.ended.load(Ordering::Relaxed),
        errors: shared.error_count.load(Ordering::Relaxed),
        first_errors: shared.errors(),
        usage,
        servers: per_server(options, |j, share| {
            share.ended = Some(count_of(options, shared, j, |s| {
                s.ended.load(Ordering::Relaxed)
            }))
        }),
    }
}

/// With several servers, one [`ServerShare`] per server (its URL and stream count), the rest
/// filled in by `fill(server index, share)`; `None` with one server, so single-server output
/// stays as it was.
fn per_server(
    options: &LoadOptions,
    mut fill: impl FnMut(usize, &mut ServerShare),
) -> Option<Vec<ServerShare>> {
    if options.servers.len() < 2 {
        return None;
    }
    Some(
        options
            .servers
            .iter()
            .enumerate()
            .map(|(j, server)| {
                let mut share = ServerShare {
                    server: server.clone(),
                    streams: options.streams_of(j),
                    ..ServerShare::default()
                };
                fill(j, &mut share);
                share
            })
            .collect(),
    )
}

/// Streams of server `server` for which `test` holds.
fn count_of(
    options: &LoadOptions,
    shared: &sim::Shared,
    server: usize,
    test: impl Fn(&sim::StreamStats) -> bool,
) -> usize {
    shared
        .streams
        .iter()
        .enumerate()
        .filter(|(i, s)| options.server_of(*i) == server && test(s))
        .count()
}

/// One change: trigger, wait for every open stream to ACK it, measure.
async fn change(
    options: &LoadOptions,
    shared: &sim::Shared,
    index: usize,
    command: String,
    usage: &dyn Fn() -> Usage,
) -> Result<Event, LoadError> {
    let before: Vec<(u64, u64)> = shared
        .streams
        .iter()
        .map(|s| {
            (
                s.acks.load(Ordering::Acquire),
                s.fingerprint.load(Ordering::Relaxed),
            )
        })
        .collect();
    let usage_before = usage();
    let start = Instant::now();
    let t0 = shared.now_us();
    let trigger = {
        let command = command.clone();
        tokio::task::spawn_blocking(move || run_command(&command))
    };
    let deadline = start + options.change_timeout;
    let quiet_us = u64::try_from(options.quiet.as_micros()).unwrap_or(u64::MAX);
    let mut trigger = Some(trigger);
    let mut trigger_ms = None;
    let mut timed_out = false;
    loop {
        tokio::time::sleep(POLL).await;
        if let Some(handle) = trigger.take_if(|h| h.is_finished()) {
            let outcome = handle.await.unwrap_or_else(|e| Err(e.to_string()));
            match outcome {
                Ok(took) => trigger_ms = Some(ms(took)),
                Err(error) => return Err(LoadError::Trigger { command, error }),
            }
        }
        let open = shared
            .streams
            .iter()
            .filter(|s| !s.ended.load(Ordering::Relaxed))
            .count();
        let acked = shared
            .streams
            .iter()
            .zip(&before)
            .filter(|(s, (acks, _))| s.acks.load(Ordering::Acquire) > *acks)
            .count();
        let quiet = shared
            .now_us()
            .saturating_sub(shared.last_ack_us.load(Ordering::Relaxed));
        if trigger.is_none() && acked >= open && quiet >= quiet_us {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
    }
    if let Some(handle) = trigger {
        // The command outlived the change timeout: let it finish in the background.
        drop(handle);
    }
    let usage_after = usage();

    let mut latencies = Vec::new();
    // Per server, the latencies of its ACKing streams.
    let mut server_latencies: Vec<Vec<u64>> = vec![Vec::new(); options.servers.len()];
    let mut fingerprints = Vec::new();
    let mut changed = 0;
    for (i, (s, (acks, fingerprint))) in shared.streams.iter().zip(&before).enumerate() {
        if s.acks.load(Ordering::Acquire) <= *acks {
            continue;
        }
        let latency = s.last_ack_us.load(Ordering::Relaxed).saturating_sub(t0);
        latencies.push(latency);
        if let Some(own) = server_latencies.get_mut(options.server_of(i)) {
            own.push(latency);
        }
        let now = s.fingerprint.load(Ordering::Relaxed);
        fingerprints.push(now);
        if now != *fingerprint {
            changed += 1;
        }
    }
    let acked = latencies.len();
    let consistent = fingerprints.windows(2).all(|w| w[0] == w[1]);
    let cpu = |f: fn(&Usage) -> Option<ProcSample>| {
        Some(f(&usage_after)?.cpu_s - f(&usage_before)?.cpu_s)
    };
    Ok(Event::Change {
        mode: options.mode,
        index,
        command,
        streams: options.streams,
        acked,
        acked_ratio: acked as f64 / options.streams as f64,
        consistent,
        changed,
        trigger_ms: trigger_ms.unwrap_or_default(),
        latency: Latency::of(&mut latencies),
        cp_cpu_s: cpu(|u| u.cp),
        load_cpu_s: cpu(|u| u.load),
        usage: usage_after,
        timed_out,
        servers: per_server(options, |j, share| {
            if let Some(own) = server_latencies.get_mut(j) {
                share.acked = Some(own.len());
                share.latency = Latency::of(own);
            }
        }),
    })
}

/// Runs `sh -c command`; the time it took, or its exit status and stderr.
fn run_command(command: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let took = start.elapsed();
    if output.status.success() {
        Ok(took)
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut us: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let l = Latency::of(&mut us).expect("some");
        assert_eq!(
            (l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (1.0, 50.0, 90.0, 99.0, 100.0)
        );
        let l = Latency::of(&mut [7000]).expect("one");
        assert_eq!((l.p50_ms, l.p99_ms), (7.0, 7.0));
        assert_eq!(Latency::of(&mut []), None);
    }

    fn options(servers: &[&str], streams: usize, connections: Option<usize>) -> LoadOptions {
        LoadOptions {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            streams,
            mode: Mode::Sotw,
            connections,
            node_prefix: "sim-".into(),
            node_cluster: "bench".into(),
            changes: 0,
            trigger_cmds: Vec::new(),
            interval: Duration::ZERO,
            duration: Duration::ZERO,
            ready_timeout: Duration::ZERO,
            change_timeout: Duration::ZERO,
            quiet: Duration::ZERO,
            open_concurrency: 1,
            cp_pid: None,
        }
    }

    #[test]
    fn streams_are_spread_round_robin_over_servers() {
        let o = options(&["a", "b", "c"], 1000, None);
        assert_eq!((o.server_of(0), o.server_of(1), o.server_of(2)), (0, 1, 2));
        assert_eq!((o.server_of(3), o.server_of(999)), (0, 0));
        assert_eq!(
            (0..3).map(|j| o.streams_of(j)).collect::<Vec<_>>(),
            [334, 333, 333]
        );
        // Connections are per server: one per 100 of its streams, or as many as given.
        assert_eq!(
            (0..3).map(|j| o.connections_of(j)).collect::<Vec<_>>(),
            [4, 4, 4]
        );
        let o = options(&["a", "b"], 3, Some(2));
        assert_eq!((o.streams_of(0), o.streams_of(1)), (2, 1));
        assert_eq!((o.connections_of(0), o.connections_of(1)), (2, 2));
        // One server: every stream, connections as before.
        let o = options(&["a"], 1000, None);
        assert_eq!((o.streams_of(0), o.connections_of(0)), (1000, 10));
        assert_eq!(per_server(&o, |_, _| {}), None);
    }

    #[test]
    fn options_are_checked() {
        let refused = |o: LoadOptions| matches!(check(&o), Err(LoadError::Options(_)));
        assert!(refused(options(&[], 10, None)));
        assert!(refused(options(&["a", "b", "c"], 2, None)));
        assert!(refused(options(&["a"], 10, Some(0))));
        assert!(check(&options(&["a", "b"], 2, Some(1))).is_ok());
    }

    #[test]
    fn one_server_reports_no_shares() {
        // The single-server events are what they always were (bench/fanout.py reads them).
        let usage = Usage {
            cp: None,
            load: None,
        };
        let start = Event::Start {
            mode: Mode::Delta,
            streams: 5,
            connections: 1,
            usage: usage.clone(),
            servers: per_server(&options(&["a"], 5, None), |_, _| {}),
        };
        assert_eq!(
            serde_json::to_string(&start).expect("json"),
            r#"{"event":"start","mode":"delta","streams":5,"connections":1,"usage":{"cp":null,"load":null}}"#
        );
        let o = options(&["a", "b"], 5, None);
        let start = Event::Start {
            mode: Mode::Delta,
            streams: 5,
            connections: 2,
            usage,
            servers: per_server(&o, |j, share| share.connections = Some(o.connections_of(j))),
        };
        assert_eq!(
            serde_json::to_value(&start).expect("json")["servers"],
            serde_json::json!([
                {"server": "a", "streams": 3, "connections": 1},
                {"server": "b", "streams": 2, "connections": 1},
            ])
        );
    }

    #[test]
    fn default_connections_are_one_per_hundred_streams() {
        assert_eq!(LoadOptions::default_connections(1), 1);
        assert_eq!(LoadOptions::default_connections(100), 1);
        assert_eq!(LoadOptions::default_connections(1000), 10);
        assert_eq!(LoadOptions::default_connections(10_001), 101);
    }
}
