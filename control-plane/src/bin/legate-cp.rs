//! `legate-cp`: the control plane. Serves xDS v3 (ADS state-of-the-world and delta, plus
//! LDS/RDS/CDS/EDS) compiled from mesh files, and an admin API (gRPC + JSON) that
//! `legatectl` drives.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use legate_cp::admin_server::{AdminApi, AdminOptions};
use legate_cp::app::{ControlPlane, CpOptions, SharedStart, bind, shared_state};
use legate_cp::etcd::{Etcd, EtcdError, EtcdOptions, EtcdTls, SharedState, StoreUrl, Stored};
use legate_cp::server::NodeAuth;
use legate_cp::server::XdsLimits;
use legate_cp::store::{Overlay, StoreError};
use legate_cp::{NodeSnapshot, XdsServer};
use legate_model::parse_duration;
use legate_model::parse_size;
use legate_snapshot::ResourceKind;
use legate_tls::files::{DEFAULT_RELOAD_INTERVAL, ServerFiles};

// jemalloc with background purging (see .cargo/config.toml): memory a fleet's streams used
// goes back to the OS once they close.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// legate-cp: turns a declarative mesh into Envoy xDS for a fleet of proxies.
#[derive(Debug, Parser)]
#[command(name = "legate-cp", version)]
struct Args {
    /// A mesh file, or a directory of `*.yaml` mesh files (watched for changes; hidden files,
    /// editors' lock and backup files are not mesh files).
    #[arg(long, short = 'c', value_name = "PATH")]
    config: PathBuf,
    /// Check the configuration and exit, binding nothing: read, merge and validate the mesh
    /// files, apply the admin changes stored in DATA-DIR (in etcd with --store etcd://),
    /// compile every snapshot. Prints a
    /// summary and exits 0, or prints the errors (file:line:col) and exits 1.
    #[arg(long)]
    validate: bool,
    /// xDS gRPC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    xds_address: SocketAddr,
    /// Admin API address (gRPC for legatectl, JSON under /v1/).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15011")]
    admin_address: SocketAddr,
    /// Prometheus metrics (`GET /metrics`), served without authentication as Envoy's and
    /// istiod's are: bind a loopback address (the default) or one only your scraper
    /// reaches. The admin API's authentication is unaffected.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15014")]
    metrics_address: SocketAddr,
    /// Bearer tokens accepted by the admin API, one per line (re-read when it changes).
    /// Without it and without --admin-client-ca, DATA-DIR/admin.token is used, created
    /// with a random token when missing.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve the admin API over TLS with this certificate chain (PEM; re-read on change).
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Accept admin client certificates issued by this CA (PEM); the certificate must carry
    /// the URI SAN spiffe://TRUST-DOMAIN/admin/NAME. Needs --admin-tls-cert.
    #[arg(long, value_name = "FILE")]
    admin_client_ca: Option<PathBuf>,
    /// Trust domain of admin client certificates.
    #[arg(long, value_name = "DOMAIN", default_value = "legate.local")]
    admin_trust_domain: String,
    /// Let anyone who reaches the admin API read status and node configurations; changes
    /// still need credentials.
    #[arg(long)]
    admin_open_reads: bool,
    /// Largest admin request body (a mesh document): bytes, or with KiB/MiB.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    admin_max_body: usize,
    /// Longest an admin request may take, body included.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    admin_request_timeout: Duration,
    /// Close an admin connection (HTTP/2: GOAWAY) on which no request started for this
    /// long; HTTP/1.1 keep-alive connections already close after 10s without a request.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    admin_idle_timeout: Duration,
    /// Allow, on a non-loopback address, serving the admin API without TLS or with open
    /// reads, and serving xDS without client certificates (plaintext, or TLS without
    /// --xds-client-ca: any client could read any node's configuration). Each is logged as a
    /// warning. Never needed on a loopback address.
    #[arg(long)]
    insecure: bool,
    /// How long changed mesh files must keep the same contents before they are applied: a
    /// file caught half-written, or truncated in the middle of a save, is not applied.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    mesh_settle: Duration,
    /// How often the mesh and certificate files are read even without a change notification
    /// (a safety net for changes inotify does not report, e.g. on network filesystems).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    mesh_recheck: Duration,
    /// How often every node is asked to report its load (LRS,
    /// `envoy.service.load_stats.v3.LoadReportingService` on the xDS port); 1s at least.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    lrs_interval: Duration,
    /// How much reported load is kept per node and cluster, for `GET /v1/load` and
    /// `legatectl top` (at most 50,000 node and cluster series of 64 reports each).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    lrs_window: Duration,
    /// Where admin changes and rollouts are kept: `dir` (files in --data-dir, for one
    /// legate-cp), or `etcd://HOST:PORT[,HOST:PORT...]` (shared by every replica given the
    /// same etcd and --etcd-prefix; see the README's "Several replicas").
    #[arg(long, value_name = "URL", default_value = "dir")]
    store: legate_cp::etcd::StoreUrl,
    /// Connect to etcd over TLS, trusting this CA bundle (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (PEM), when etcd requires one; needs --etcd-ca.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Every etcd key legate-cp uses starts with this: meshes sharing one etcd need
    /// different prefixes.
    #[arg(long, value_name = "PREFIX", default_value = "/legate/")]
    etcd_prefix: String,
    /// This replica's name in etcd (the leader key, the audit trail) and the logs.
    /// Default: $HOSTNAME (a Kubernetes pod's name), else the host name.
    #[arg(long, value_name = "NAME")]
    replica_id: Option<String>,
    /// With etcd, the rollout controller runs on one replica, elected with a lease of this
    /// TTL (whole seconds, 2s at least): a leader that dies is replaced within it.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    leader_lease: Duration,
    /// Where admin changes (overlay.yaml) and the generated admin.token are kept; created
    /// when missing. Default: $STATE_DIRECTORY (set by systemd's StateDirectory=) when set,
    /// else ./legate-cp-data, relative to the working directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Nodes of this cluster are gRPC xDS clients and get one API listener per service.
    #[arg(long, value_name = "NAME", default_value = "grpc")]
    grpc_cluster: String,
    /// Once they listen, write `xds=ADDR`, `admin=ADDR` and `metrics=ADDR` lines to this file
    /// (useful with port 0); legate's --address-file writes the same format.
    #[arg(long, value_name = "FILE")]
    address_file: Option<PathBuf>,
    #[command(flatten)]
    log: legate_telemetry::cli::LogArgs,
    /// Serve xDS over TLS with this certificate chain (PEM, leaf first). Re-read when it
    /// changes; new connections get the new certificate.
    #[arg(long, value_name = "FILE", requires = "xds_tls_key")]
    xds_tls_cert: Option<PathBuf>,
    /// The private key of --xds-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "xds_tls_cert")]
    xds_tls_key: Option<PathBuf>,
    /// Require xDS clients to present a certificate signed by this CA bundle (PEM), and allow
    /// each stream only the node ids its certificate's SPIFFE id names (see the README).
    #[arg(long, value_name = "FILE", requires = "xds_tls_cert")]
    xds_client_ca: Option<PathBuf>,
    /// Most xDS streams served at once; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = XdsLimits::default().max_streams)]
    xds_max_streams: usize,
    /// Most resource names one xDS stream may subscribe to, all types together (delta:
    /// with the names it says it holds); a stream over it is ended with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = XdsLimits::default().max_names_per_stream)]
    xds_max_names_per_stream: usize,
    /// Longest resource name an xDS request may carry: bytes, or with KiB/MiB; a request with
    /// a longer one ends its stream with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_size)]
    xds_max_name_length: usize,
    /// Largest xDS request accepted (gRPC's decode limit): bytes, or with KiB/MiB.
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = parse_size)]
    xds_max_request_size: usize,
    /// NACK messages are kept (status, /v1/nodes) and logged up to this size; longer ones are
    /// cut and marked.
    #[arg(long, value_name = "SIZE", default_value = "4KiB", value_parser = parse_size)]
    xds_max_nack_message: usize,
    /// The trust domain of node identities (`spiffe://<domain>/node/<id>`,
    /// `spiffe://<domain>/cluster/<name>`).
    #[arg(long, value_name = "DOMAIN", default_value = legate_cp::server::DEFAULT_TRUST_DOMAIN)]
    xds_trust_domain: String,
    /// On SIGTERM or SIGINT, admin changes are refused and every xDS stream is ended at once
    /// (proxies keep their configuration and reconnect); legate-cp exits when their
    /// connections have closed, or after this long with whatever is left abandoned. A second
    /// signal exits at once.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    if args.validate {
        return validate(&args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // What is still running was abandoned at the shutdown timeout: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("legate-cp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--data-dir`, or its default.
fn data_dir(args: &Args) -> PathBuf {
    if let Some(dir) = &args.data_dir {
        return dir.clone();
    }
    // systemd sets STATE_DIRECTORY to the StateDirectory= paths, separated by ':'.
    match std::env::var_os("STATE_DIRECTORY") {
        Some(dirs) if !dirs.is_empty() => std::env::split_paths(&dirs)
            .next()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// `--data-dir` without STATE_DIRECTORY: a directory in the working directory.
const DEFAULT_DATA_DIR: &str = "legate-cp-data";

fn cp_options(args: &Args) -> CpOptions {
    CpOptions::new(
        args.config.clone(),
        data_dir(args),
        args.grpc_cluster.clone(),
    )
}

/// `--validate`: everything start-up checks, nothing bound or written. With `--store
/// etcd://`, the admin changes and rollouts checked are etcd's (read once, never written).
fn validate(args: &Args) -> ExitCode {
    let mut options = cp_options(args);
    if let StoreUrl::Etcd(endpoints) = &args.store {
        match read_shared_once(args, endpoints.clone()) {
            Ok(start) => options.shared = Some(start),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let validated = match ControlPlane::validate(&options) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let count = |s: &NodeSnapshot| {
        ResourceKind::WARM_ORDER
            .iter()
            .map(|&kind| format!("{} {}", s.get(kind).len(), kind.service()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("mesh files: {}", validated.files.join(", "));
    println!(
        "services: {} from the files, {} with stored admin changes (generation {})",
        validated.file_services, validated.overlay_services, validated.generation
    );
    for line in validated
        .notes
        .iter()
        .chain(&validated.conflicts)
        .chain(&validated.warnings)
    {
        println!("warning: {line}");
    }
    let snapshots = &validated.snapshots;
    println!("snapshot for proxies: {}", count(&snapshots.default));
    for (cluster, snapshot) in &snapshots.by_cluster {
        println!("snapshot for node cluster {cluster}: {}", count(snapshot));
    }
    println!(
        "snapshot for gRPC clients (cluster {}): {}",
        args.grpc_cluster,
        count(&snapshots.grpc)
    );
    println!("configuration is valid");
    ExitCode::SUCCESS
}

/// How xDS is served, from the flags: checked before anything binds.
fn xds_security(args: &Args) -> Result<(Option<ServerFiles>, Option<NodeAuth>), String> {
    let files = match (&args.xds_tls_cert, &args.xds_tls_key) {
        (Some(cert), Some(key)) => Some(ServerFiles {
            client_cert_optional: false,
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.xds_client_ca.clone(),
            alpn: vec![b"h2".to_vec()],
        }),
        _ => None,
    };
    let auth = match &args.xds_client_ca {
        Some(_) => Some(NodeAuth::new(&args.xds_trust_domain).map_err(|e| e.to_string())?),
        None => None,
    };
    if auth.is_none() && !args.xds_address.ip().is_loopback() {
        let how = if files.is_some() {
            "TLS without client certificates"
        } else {
            "plaintext"
        };
        if !args.insecure {
            return Err(format!(
                "refusing to serve xDS with {how} on non-loopback address {}: any client could \
                 claim any node; pass --xds-tls-cert, --xds-tls-key and --xds-client-ca, or \
                 --insecure to accept that",
                args.xds_address
            ));
        }
        tracing::warn!(
            address = %args.xds_address,
            "serving xDS with {how} on a non-loopback address (--insecure): any client can \
             read any node's configuration"
        );
    }
    Ok((files, auth))
}

async fn run(args: Args) -> Result<(), String> {
    let (tls_files, node_auth) = xds_security(&args)?;
    let tls = match tls_files {
        Some(files) => Some(
            files
                .watch("--xds-tls", DEFAULT_RELOAD_INTERVAL)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let admin = AdminApi::prepare(AdminOptions {
        token_file: args.admin_token_file.clone(),
        tls_cert: args.admin_tls_cert.clone(),
        tls_key: args.admin_tls_key.clone(),
        client_ca: args.admin_client_ca.clone(),
        trust_domain: args.admin_trust_domain.clone(),
        open_reads: args.admin_open_reads,
        max_body: args.admin_max_body,
        request_timeout: args.admin_request_timeout,
        idle_timeout: args.admin_idle_timeout,
        insecure: args.insecure,
        ..AdminOptions::new(args.admin_address, data_dir(&args))
    })
    .map_err(|e| e.to_string())?;
    let mut options = CpOptions {
        settle: args.mesh_settle,
        recheck_interval: args.mesh_recheck.max(Duration::from_millis(100)),
        load_window: args
            .lrs_window
            .clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        ..cp_options(&args)
    };
    if let StoreUrl::Etcd(endpoints) = &args.store {
        options.shared = Some(connect_etcd(&args, endpoints.clone(), &options).await?);
    }
    let cp = ControlPlane::load(options).map_err(|e| e.to_string())?;
    let xds_listener = bind(args.xds_address)
        .await
        .map_err(|e| format!("cannot bind xDS address {}: {e}", args.xds_address))?;
    let admin_listener = bind(args.admin_address)
        .await
        .map_err(|e| format!("cannot bind admin address {}: {e}", args.admin_address))?;
    let metrics_listener = bind(args.metrics_address)
        .await
        .map_err(|e| format!("cannot bind metrics address {}: {e}", args.metrics_address))?;
    let xds_addr = xds_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
    let security = match (&tls, &node_auth) {
        (Some(_), Some(auth)) => format!("mtls, trust domain {}", auth.trust_domain()),
        (Some(_), None) => "tls".to_owned(),
        (None, _) => "plaintext".to_owned(),
    };
    tracing::info!(
        xds = %xds_addr,
        admin = %admin_addr,
        metrics = %metrics_addr,
        xds_security = security,
        admin_tls = admin.tls(),
        data_dir = %data_dir(&args).display(),
        "legate-cp listening"
    );
    if let Some(path) = &args.address_file {
        legate_telemetry::cli::write_address_file(
            path,
            &[
                ("xds", xds_addr),
                ("admin", admin_addr),
                ("metrics", metrics_addr),
            ],
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    cp.registry
        .set_nack_message_limit(args.xds_max_nack_message);
    let mut server = XdsServer::new(cp.cache.clone(), cp.registry.clone())
        .with_limits(XdsLimits {
            max_streams: args.xds_max_streams,
            max_names_per_stream: args.xds_max_names_per_stream,
            max_request_size: args.xds_max_request_size,
            max_name_length: args.xds_max_name_length,
        })
        .with_load_reports(
            cp.load.clone(),
            args.lrs_interval
                .clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        );
    if let Some(auth) = node_auth {
        server = server.with_node_auth(auth);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut xds = match tls {
        Some(tls) => {
            tokio::spawn(server.serve_tls(xds_listener, tls, stop.clone().cancelled_owned()))
        }
        None => tokio::spawn(server.serve(xds_listener, stop.clone().cancelled_owned())),
    };
    let admin = tokio::spawn(admin.serve(cp.clone(), admin_listener));
    let ready_cp = cp.clone();
    tokio::spawn(legate_cp::metrics::serve(
        metrics_listener,
        cp.metrics.clone(),
        Arc::new(move || ready_cp.ready()),
    ));
    let mut signals = Signals::new()?;
    let signal = tokio::select! {
        r = &mut xds => {
            r.map_err(|e| e.to_string())?.map_err(|e| format!("xDS server: {e}"))?;
            return Err("the xDS server stopped".to_owned());
        }
        r = admin => {
            r.map_err(|e| format!("admin server: {e}"))?;
            return Err("the admin server stopped".to_owned());
        }
        signal = signals.next() => signal,
    };
    shut_down(&cp, &stop, xds, signal, &mut signals, args.shutdown_timeout).await;
    Ok(())
}

/// How long a replica starting with `--store etcd://` waits for etcd before it gives up.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect to etcd and read the shared state (or write its first version), retrying for
/// [`ETCD_START_TIMEOUT`]: a replica serves nothing before it has the shared state, since
/// the files alone would serve other proxies' configuration than its peers do.
async fn connect_etcd(
    args: &Args,
    endpoints: Vec<String>,
    options: &CpOptions,
) -> Result<SharedStart, String> {
    let etcd_options = etcd_options(args, endpoints)?;
    let replica = etcd_options.replica.clone();
    let give_up = tokio::time::Instant::now() + ETCD_START_TIMEOUT;
    let mut logged = false;
    loop {
        let attempt = async {
            let etcd = Etcd::connect(etcd_options.clone()).await?;
            let stored = shared_state(&etcd, options).await?;
            Ok::<_, StoreError>(SharedStart { etcd, stored })
        };
        match attempt.await {
            Ok(start) => {
                tracing::info!(
                    replica,
                    endpoints = ?etcd_options.endpoints,
                    prefix = etcd_options.prefix,
                    revision = start.stored.revision,
                    "shared state read from etcd"
                );
                return Ok(start);
            }
            // Only an unreachable etcd is waited for; anything else is wrong for good.
            Err(StoreError::Etcd(EtcdError::Unavailable(e)))
                if tokio::time::Instant::now() < give_up =>
            {
                if !logged {
                    tracing::warn!(error = %e, "waiting for etcd");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The etcd settings from the flags, checked.
fn etcd_options(args: &Args, endpoints: Vec<String>) -> Result<EtcdOptions, String> {
    let lease = args.leader_lease;
    if lease < legate_cp::etcd::MIN_LEASE || lease.subsec_nanos() != 0 {
        return Err(format!(
            "--leader-lease {}: whole seconds, 2s at least",
            humantime::format_duration(lease)
        ));
    }
    if args.etcd_prefix.is_empty() || args.etcd_prefix.len() > 256 {
        return Err("--etcd-prefix: 1 to 256 bytes".to_owned());
    }
    let replica = replica_id(args);
    if replica.is_empty()
        || replica.len() > 128
        || !replica
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "--replica-id `{replica}`: 1 to 128 letters, digits, `.`, `_` or `-` (a pod's name)"
        ));
    }
    Ok(EtcdOptions {
        endpoints,
        tls: args.etcd_ca.clone().map(|ca| EtcdTls {
            ca,
            cert: args.etcd_cert.clone(),
            key: args.etcd_key.clone(),
        }),
        prefix: args.etcd_prefix.clone(),
        replica,
        lease,
    })
}

/// The shared state as etcd holds it now (empty when no replica wrote it yet), for
/// `--validate`: one attempt, nothing written.
fn read_shared_once(args: &Args, endpoints: Vec<String>) -> Result<SharedStart, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let options = etcd_options(args, endpoints)?;
    runtime.block_on(async {
        let etcd = Etcd::connect(options)
            .await
            .map_err(|e| format!("--store etcd: {e}"))?;
        let stored = etcd
            .read_async()
            .await
            .map_err(|e| format!("--store etcd: {e}"))?
            .unwrap_or_else(|| Stored {
                revision: 0,
                state: SharedState {
                    format: legate_cp::etcd::STATE_FORMAT,
                    overlay: Overlay::default(),
                    rollouts: serde_json::Value::Null,
                },
            });
        Ok(SharedStart { etcd, stored })
    })
}

/// `--replica-id`, or $HOSTNAME (a pod's name), or the host name.
fn replica_id(args: &Args) -> String {
    if let Some(id) = &args.replica_id {
        return id.clone();
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("legate-cp-{}", std::process::id()))
}

/// Stop taking changes, end every xDS stream, and give what is running `timeout` to finish.
async fn shut_down(
    cp: &ControlPlane,
    stop: &tokio_util::sync::CancellationToken,
    xds: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    signal: &str,
    signals: &mut Signals,
    timeout: Duration,
) {
    tracing::info!(
        signal,
        timeout = ?timeout,
        "shutting down: admin changes refused, ending xDS streams (proxies keep their configuration)"
    );
    stop.cancel();
    let finished = async {
        cp.shut_down().await;
        if let Ok(Err(error)) = xds.await {
            tracing::warn!(%error, "xDS server");
        }
    };
    tokio::select! {
        () = finished => tracing::info!("legate-cp stopped"),
        () = tokio::time::sleep(timeout) => tracing::warn!(
            timeout = ?timeout,
            "not stopped within --shutdown-timeout: exiting; xDS connections still open \
             (clients that do not read) are abandoned"
        ),
        signal = signals.next() => tracing::warn!(signal, "second signal: exiting at once"),
    }
}

/// SIGTERM and SIGINT, as they come.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| signal(kind).map_err(|e| format!("cannot listen for signals: {e}"));
        Ok(Signals {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
