//! `legatectl`: the command-line client of legate-cp's admin API.

use legate_snapshot::ResourceKind;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use legate_cp::admin_client::{self, ClientOptions};
use legate_proto::admin::{
    AdminChange, ApplyRequest, ApplyResponse, GetNodeRequest, GetServiceResponse, ListNodesRequest,
    ListNodesResponse, NodeStatus, Refusal, ServiceRequest, SetWeightsRequest,
};

/// Drive a legate control plane: list proxies, read a node's configuration, apply service
/// changes and shift traffic between versions.
#[derive(Debug, Parser)]
#[command(name = "legatectl", version)]
struct Cli {
    /// Admin API of legate-cp (gRPC): http://HOST:PORT, or https://HOST:PORT over TLS; a bare
    /// HOST:PORT means https:// with --ca/--cert/--key and http:// without.
    #[arg(
        long,
        env = "LEGATE_CP_ADMIN",
        default_value = legate_cp::admin_client::DEFAULT_SERVER,
        global = true
    )]
    server: String,

    /// A file holding the admin token (legate-cp's --admin-token-file, or the admin.token it
    /// generated in its data directory). Takes precedence over LEGATE_CP_TOKEN.
    #[arg(long, env = "LEGATE_CP_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,

    /// CA bundle to verify an https:// server with (default: Mozilla's roots).
    #[arg(long, value_name = "FILE", global = true)]
    ca: Option<PathBuf>,

    /// Client certificate (PEM) carrying an admin identity, spiffe://TRUST-DOMAIN/admin/NAME.
    #[arg(long, value_name = "FILE", global = true, requires = "key")]
    cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", global = true, requires = "cert")]
    key: Option<PathBuf>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,

    #[command(flatten)]
    log: legate_telemetry::cli::LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connected proxies and which version of each resource type they ACKed, and the xDS
    /// streams refused for their identity.
    Status,
    /// Read something from the control plane.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Add or replace services from a mesh document (`services:` only). Of a service the
    /// mesh files define, the fields that differ from the files' override them.
    Apply {
        /// The mesh file (YAML) holding `services:`.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// Set route weights between a service's versions, e.g. `set-weights payments v1=90 v2=10`.
    SetWeights {
        service: String,
        /// `VERSION=WEIGHT`, one per version of the service; a weight is read as in mesh
        /// files (a whole number from 0 to 4294967295).
        #[arg(required = true, value_name = "VERSION=WEIGHT", value_parser = version_weight)]
        weights: Vec<(String, u32)>,
    },
    /// Load the fleet reports (LRS), per service and version: requests per second, error
    /// percentage, p50/p99 latency (from legate's buckets; `-` for Envoy, which sends none),
    /// nodes reporting.
    Top {
        /// One service (default: every service).
        service: Option<String>,
        /// How far back to look (default and at most: legate-cp's --lrs-window).
        #[arg(long, value_name = "DURATION", value_parser = legate_model::parse_duration)]
        window: Option<std::time::Duration>,
    },
    /// Canary rollouts: shift a service's traffic to a new version in steps, each judged on
    /// the fleet's load reports, promoted or rolled back by legate-cp (docs/canary.md).
    Canary {
        #[command(subcommand)]
        what: Canary,
    },
    /// Drop a service's admin changes (apply, set-weights): the mesh files' values serve
    /// again.
    Reset { service: String },
    /// Remove a service that an apply created. A service the mesh files define is removed
    /// from the files.
    Delete { service: String },
    /// Create a throwaway CA (kept when present) and certificates for servers, proxies and
    /// operators, as PEM files; no openssl needed. Does not contact legate-cp.
    Certs {
        /// Output directory (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// SPIFFE trust domain of the identities.
        #[arg(long, value_name = "DOMAIN", default_value = "legate.local")]
        trust_domain: String,
        /// A server certificate for this DNS name (also valid for localhost and loopback).
        #[arg(long = "host", value_name = "NAME")]
        servers: Vec<String>,
        /// A proxy certificate for this node id (`spiffe://<td>/node/<id>`).
        #[arg(long = "node", value_name = "ID")]
        nodes: Vec<String>,
        /// A proxy certificate shared by a node cluster (`spiffe://<td>/cluster/<name>`).
        #[arg(long = "cluster", value_name = "NAME")]
        clusters: Vec<String>,
        /// An operator certificate for the admin API (`spiffe://<td>/admin/<name>`).
        #[arg(long = "admin", value_name = "NAME")]
        admins: Vec<String>,
        /// How long leaf certificates are valid.
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = legate_model::parse_duration)]
        validity: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum Canary {
    /// Start a rollout, e.g. `canary start payments --to v2 --steps 5,25,50,100 --interval 30s
    /// --max-error-rate 1% --max-p99 250ms --min-requests 100`.
    Start {
        service: String,
        /// The new version.
        #[arg(long)]
        to: String,
        /// The version it replaces (default: the one with the highest weight now).
        #[arg(long)]
        from: Option<String>,
        /// Percent of traffic to the new version at each step, ascending, the last 100.
        #[arg(long, value_delimiter = ',', required = true)]
        steps: Vec<u32>,
        /// How long each step is judged (a duration: 30s).
        #[arg(long)]
        interval: String,
        /// The new version's error rate above which a step fails (a percentage: 1%).
        #[arg(long)]
        max_error_rate: String,
        /// The new version's p99 latency above which a step fails (a duration: 250ms;
        /// default: latency is not judged).
        #[arg(long)]
        max_p99: Option<String>,
        /// Requests to the new version a step needs before it can pass or fail; fewer hold
        /// the rollout.
        #[arg(long)]
        min_requests: u64,
    },
    /// One rollout (or every one): state, step, weights, figures per version, last decisions.
    Status {
        service: Option<String>,
        /// Redraw every second until the rollout ends (Ctrl-C stops watching); when stdout
        /// is not a terminal, print a frame each time it changes.
        #[arg(long, requires = "service")]
        watch: bool,
    },
    /// Stop at the current step: its weights stay, manual weight changes are allowed.
    Pause { service: String },
    /// Go on from a pause: the step's weights are set again and the step judged afresh.
    Resume { service: String },
    /// Roll back: the old version gets all traffic again.
    Abort { service: String },
    /// Give the new version all traffic now.
    Promote { service: String },
}

#[derive(Debug, Subcommand)]
enum GetWhat {
    /// A service's fields, each with where its value comes from: a mesh file (file:line:col)
    /// or an admin change (which, when, by whom).
    Service { name: String },
    /// The effective configuration a node receives.
    Node {
        id: String,
        /// The node's cluster, when it has no snapshot of its own.
        #[arg(long)]
        cluster: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("legatectl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `println!` for legatectl's output: a reader that went away (`legatectl status | head -1`)
/// ends the process quietly, as it ends other command-line tools, where `println!` would
/// panic with "Broken pipe".
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("legatectl: cannot write the output: {e}");
            std::process::exit(1);
        }
    }};
}

/// `VERSION=WEIGHT`, the weight read by the parser mesh files use, so a bad weight reads the
/// same on the command line and in a file.
fn version_weight(arg: &str) -> Result<(String, u32), String> {
    let (version, weight) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}': expected VERSION=WEIGHT"))?;
    let weight = legate_model::parse_weight(weight)
        .map_err(|e| format!("weight of version `{version}`: {e}"))?;
    Ok((version.to_owned(), weight))
}

/// The token: from --token-file (or LEGATE_CP_TOKEN_FILE), else LEGATE_CP_TOKEN.
fn token(cli: &Cli) -> Result<Option<String>, String> {
    if let Some(path) = &cli.token_file {
        return legate_cp::admin_auth::first_token(path)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    match std::env::var("LEGATE_CP_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
        Ok(_) => Err("LEGATE_CP_TOKEN is set but empty".to_owned()),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("LEGATE_CP_TOKEN is not valid UTF-8".to_owned())
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::Certs {
        out,
        trust_domain,
        servers,
        nodes,
        clusters,
        admins,
        validity,
    } = cli.command
    {
        let req = legate_cp::certs::CertsRequest {
            out,
            trust_domain,
            servers,
            nodes,
            clusters,
            admins,
            validity,
        };
        let written = legate_cp::certs::issue(&req).map_err(|e| e.to_string())?;
        for w in written {
            out!("{}  {}", w.path.display(), w.subject);
        }
        return Ok(());
    }
    let options = ClientOptions {
        server: cli.server.clone(),
        token: token(&cli)?,
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let mut client = admin_client::connect(&options)
        .await
        .map_err(|e| e.to_string())?;
    let status = |s: tonic::Status| admin_client::explain(&s);
    match cli.command {
        Command::Top { service, window } => {
            let res = client
                .get_load(legate_proto::admin::GetLoadRequest {
                    service: service.unwrap_or_default(),
                    window_ms: window
                        .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX).max(1))
                        .unwrap_or(0),
                })
                .await
                .map_err(status)?
                .into_inner();
            match cli.output {
                Output::Json => print_json(&top_json(&res)),
                Output::Table => print_top(&res),
            }
        }
        Command::Status => {
            let list = client
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            match cli.output {
                Output::Json => print_json(&status_json(&list)),
                Output::Table => {
                    print_status(&list.nodes);
                    print_refusals(&list);
                }
            }
        }
        Command::Get {
            what: GetWhat::Node { id, cluster },
        } => {
            let res = client
                .get_node(GetNodeRequest {
                    node_id: id,
                    node_cluster: cluster.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            match cli.output {
                Output::Json => {
                    let resources: Vec<serde_json::Value> = res
                        .resources
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "type_url": r.type_url,
                                "name": r.name,
                                "version": r.version,
                                "resource": serde_json::from_str::<serde_json::Value>(&r.json)
                                    .unwrap_or(serde_json::Value::Null),
                            })
                        })
                        .collect();
                    print_json(
                        &serde_json::json!({"node_id": res.node_id, "resources": resources}),
                    );
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = res
                        .resources
                        .iter()
                        .map(|r| {
                            vec![
                                short_type(&r.type_url).to_owned(),
                                r.name.clone(),
                                r.version.clone(),
                            ]
                        })
                        .collect();
                    print_table(&["TYPE", "NAME", "VERSION"], &rows);
                }
            }
        }
        Command::Apply { file } => {
            let document = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let res = client
                .apply(ApplyRequest {
                    document,
                    source: file.display().to_string(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_change(cli.output, &res);
        }
        Command::SetWeights { service, weights } => {
            let mut map = HashMap::new();
            for (version, weight) in weights {
                if map.insert(version.clone(), weight).is_some() {
                    return Err(format!("version '{version}' given twice"));
                }
            }
            let res = client
                .set_weights(SetWeightsRequest {
                    service,
                    weights: map,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_change(cli.output, &res);
        }
        Command::Reset { service } => {
            let res = client
                .reset_service(ServiceRequest { name: service })
                .await
                .map_err(status)?
                .into_inner();
            print_change(cli.output, &res);
        }
        Command::Delete { service } => {
            let res = client
                .delete_service(ServiceRequest { name: service })
                .await
                .map_err(status)?
                .into_inner();
            print_change(cli.output, &res);
        }
        Command::Get {
            what: GetWhat::Service { name },
        } => {
            let res = client
                .get_service(ServiceRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            match cli.output {
                Output::Json => print_json(&service_json(&res)),
                Output::Table => print_service(&res),
            }
        }
        Command::Canary { what } => canary(&mut client, cli.output, what).await?,
        // Handled above, before connecting.
        Command::Certs { .. } => {}
    }
    Ok(())
}

async fn canary(
    client: &mut admin_client::Client,
    output: Output,
    what: Canary,
) -> Result<(), String> {
    use legate_proto::admin::{GetRolloutsRequest, StartRolloutRequest};
    let status = |s: tonic::Status| admin_client::explain(&s);
    if let Canary::Status {
        service: Some(service),
        watch: true,
    } = &what
    {
        return watch_rollout(client, service).await;
    }
    let (one, list) = match what {
        Canary::Start {
            service,
            to,
            from,
            steps,
            interval,
            max_error_rate,
            max_p99,
            min_requests,
        } => {
            let req = StartRolloutRequest {
                service,
                to,
                from: from.unwrap_or_default(),
                steps,
                interval,
                max_error_rate,
                max_p99: max_p99.unwrap_or_default(),
                min_requests,
            };
            let res = client.start_rollout(req).await.map_err(status)?;
            (true, res.into_inner().rollout.into_iter().collect())
        }
        Canary::Pause { service } => steered(client, service, "pause").await?,
        Canary::Resume { service } => steered(client, service, "resume").await?,
        Canary::Abort { service } => steered(client, service, "abort").await?,
        Canary::Promote { service } => steered(client, service, "promote").await?,
        Canary::Status { service, .. } => {
            let one = service.is_some();
            let res = client
                .get_rollouts(GetRolloutsRequest {
                    service: service.unwrap_or_default(),
                })
                .await
                .map_err(status)?;
            (one, res.into_inner().rollouts)
        }
    };
    let statuses: Vec<serde_json::Value> = list
        .iter()
        .map(|r: &legate_proto::admin::Rollout| {
            serde_json::from_str(&r.status_json).unwrap_or(serde_json::Value::Null)
        })
        .collect();
    match output {
        // As the JSON API answers: one rollout's status, or `{"rollouts": [...]}`.
        Output::Json if one => print_json(statuses.first().unwrap_or(&serde_json::Value::Null)),
        Output::Json => print_json(&serde_json::json!({ "rollouts": statuses })),
        Output::Table => print_rollouts(&statuses),
    }
    Ok(())
}

/// `canary pause|resume|abort|promote SERVICE`: (one rollout, the rollout the action left).
async fn steered(
    client: &mut admin_client::Client,
    service: String,
    action: &str,
) -> Result<(bool, Vec<legate_proto::admin::Rollout>), String> {
    let req = legate_proto::admin::SteerRolloutRequest {
        service,
        action: action.to_owned(),
    };
    let res = client
        .steer_rollout(req)
        .await
        .map_err(|s| admin_client::explain(&s))?;
    Ok((true, res.into_inner().rollout.into_iter().collect()))
}

/// `canary status SERVICE --watch`, drawn by [`legate_cp::rollout_view`].
async fn watch_rollout(client: &admin_client::Client, service: &str) -> Result<(), String> {
    use legate_cp::rollout_view::{WatchError, watch};
    use std::io::IsTerminal;
    let fetch = || {
        let (mut client, service) = (client.clone(), service.to_owned());
        async move {
            let req = legate_proto::admin::GetRolloutsRequest { service };
            let res = client.get_rollouts(req).await?.into_inner();
            res.rollouts
                .first()
                .and_then(|r| serde_json::from_str(&r.status_json).ok())
                .ok_or_else(|| tonic::Status::internal("the rollout's status is not JSON"))
        }
    };
    let (stdout, period) = (std::io::stdout(), std::time::Duration::from_secs(1));
    let terminal = stdout.is_terminal();
    match watch(fetch, &mut stdout.lock(), terminal, period).await {
        Ok(_) => Ok(()),
        Err(WatchError::Fetch(status)) => Err(admin_client::explain(&status)),
        Err(e) => Err(e.to_string()),
    }
}

/// `1.23% 45.0ms 1200`: a version's error rate, p99 and requests in a rollout's figures.
fn rollout_figures(status: &serde_json::Value, version: &serde_json::Value) -> String {
    let f = &status["figures"][version.as_str().unwrap_or_default()];
    let err = f["error_percent"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |e| format!("{e:.2}%"));
    let p99 = f["p99_ms"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}ms"));
    format!("{err} {p99} {}", f["requests"].as_u64().unwrap_or(0))
}

/// One line per rollout, then each one's reason and last decisions.
fn print_rollouts(statuses: &[serde_json::Value]) {
    if statuses.is_empty() {
        out!("no rollouts");
        return;
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let weights = s["weights"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(v, w)| format!("{v}={w}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let steps = s["steps"].as_array().map_or(0, Vec::len);
            vec![
                s["service"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
                format!("{}/{steps}", s["step"]),
                weights,
                format!(
                    "{} {}",
                    s["to"].as_str().unwrap_or_default(),
                    rollout_figures(s, &s["to"])
                ),
                format!(
                    "{} {}",
                    s["from"].as_str().unwrap_or_default(),
                    rollout_figures(s, &s["from"])
                ),
            ]
        })
        .collect();
    print_table(
        &[
            "SERVICE",
            "STATE",
            "STEP",
            "WEIGHTS",
            "TO (ERR P99 REQS)",
            "FROM (ERR P99 REQS)",
        ],
        &rows,
    );
    for s in statuses {
        out!("");
        out!(
            "{}: {}",
            s["service"].as_str().unwrap_or_default(),
            s["reason"].as_str().unwrap_or_default()
        );
        if let Some(ms) = s["rollback_ms"].as_u64() {
            out!("  rolled back everywhere in {ms} ms");
        }
        let decisions = s["decisions"].as_array().map_or(&[][..], Vec::as_slice);
        for d in &decisions[decisions.len().saturating_sub(5)..] {
            out!(
                "  {} step {} ({}%) {}: {}",
                d["time"].as_str().unwrap_or_default(),
                d["step"],
                d["weight"],
                d["verdict"].as_str().unwrap_or_default(),
                d["reason"].as_str().unwrap_or_default()
            );
        }
    }
}

fn print_change(output: Output, res: &ApplyResponse) {
    match output {
        Output::Json => print_json(&serde_json::json!({
            "generation": res.generation, "changes": res.changes, "warnings": res.warnings,
        })),
        Output::Table => {
            for c in &res.changes {
                out!("{c}");
            }
            for w in &res.warnings {
                out!("warning: {w}");
            }
            out!("generation {}", res.generation);
        }
    }
    // Warnings also on stderr, where a script piping the output still shows them.
    for w in &res.warnings {
        eprintln!("legatectl: warning: {w}");
    }
}

/// `admin set-weights at 2026-01-02T03:04:05Z by bearer token`.
fn describe_change(c: &AdminChange) -> String {
    let at = legate_cp::store::rfc3339(u64::try_from(c.at_unix_ms).unwrap_or(0));
    let mut text = format!("admin {} at {at}", c.op);
    if !c.caller.is_empty() {
        text.push_str(&format!(" by {}", c.caller));
    }
    text
}

fn print_service(res: &GetServiceResponse) {
    let origin = match (&res.created, res.location.as_str()) {
        (Some(c), _) => format!("created by {}; in no mesh file", describe_change(c)),
        (None, "") => "mesh files".to_owned(),
        (None, at) => format!("mesh files, {at}"),
    };
    out!("SERVICE {} ({origin})", res.name);
    if !res.conflict.is_empty() {
        out!("CONFLICT: {}", res.conflict);
    }
    for w in &res.warnings {
        out!("WARNING: {w}");
    }
    let rows: Vec<Vec<String>> = res
        .fields
        .iter()
        .map(|f| {
            let value = match serde_json::from_str::<serde_json::Value>(&f.value_json) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(_) => "(unset)".to_owned(),
            };
            let mut source = match (&f.change, f.source.as_str()) {
                (Some(c), _) => describe_change(c),
                (None, _) if !f.location.is_empty() => f.location.clone(),
                (None, other) => other.to_owned(),
            };
            if !f.served {
                source.push_str(" (stored, not served: conflict)");
            }
            vec![f.field.clone(), value, source]
        })
        .collect();
    print_table(&["FIELD", "VALUE", "SOURCE"], &rows);
}

fn change_json(c: &AdminChange) -> serde_json::Value {
    let at = legate_cp::store::rfc3339(u64::try_from(c.at_unix_ms).unwrap_or(0));
    serde_json::json!({
        "op": c.op, "at_unix_ms": c.at_unix_ms,
        "at": at,
        "caller": (!c.caller.is_empty()).then_some(&c.caller),
    })
}

fn service_json(res: &GetServiceResponse) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = res
        .fields
        .iter()
        .map(|f| {
            serde_json::json!({
                "field": f.field,
                "value": serde_json::from_str::<serde_json::Value>(&f.value_json)
                    .unwrap_or(serde_json::Value::Null),
                "source": f.source,
                "location": (!f.location.is_empty()).then_some(&f.location),
                "change": f.change.as_ref().map(change_json),
                "served": f.served,
            })
        })
        .collect();
    serde_json::json!({
        "name": res.name,
        "origin": res.origin,
        "location": (!res.location.is_empty()).then_some(&res.location),
        "created": res.created.as_ref().map(change_json),
        "fields": fields,
        "conflict": (!res.conflict.is_empty()).then_some(&res.conflict),
        "warnings": res.warnings,
    })
}

/// `CDS`, `EDS`, ... for the five types legate uses; other type URLs as they are.
fn short_type(type_url: &str) -> &str {
    ResourceKind::from_type_url(type_url).map_or(type_url, |kind| kind.service())
}

fn top_json(res: &legate_proto::admin::GetLoadResponse) -> serde_json::Value {
    serde_json::json!({
        "reports_received": res.reports_received,
        "services": res.services.iter().map(|s| serde_json::json!({
            "service": s.service,
            "window_seconds": s.window_seconds,
            "versions": s.versions.iter().map(|v| serde_json::json!({
                "version": v.version, "cluster": v.cluster, "issued": v.issued,
                "succeeded": v.succeeded, "errored": v.errored, "dropped": v.dropped,
                "in_progress": v.in_progress, "requests_per_second": v.requests_per_second,
                "error_percent": v.error_percent, "p50_ms": v.p50_ms, "p99_ms": v.p99_ms,
                "nodes_reporting": v.nodes_reporting,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_top(res: &legate_proto::admin::GetLoadResponse) {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let rows: Vec<Vec<String>> = res
        .services
        .iter()
        .flat_map(|s| {
            s.versions.iter().map(|v| {
                vec![
                    s.service.clone(),
                    v.version.clone(),
                    format!("{:.2}", v.requests_per_second),
                    v.error_percent
                        .map_or_else(|| "-".to_owned(), |e| format!("{e:.1}")),
                    ms(v.p50_ms),
                    ms(v.p99_ms),
                    v.nodes_reporting.to_string(),
                    format!("{:.0}s", s.window_seconds),
                ]
            })
        })
        .collect();
    print_table(
        &[
            "SERVICE", "VERSION", "REQ/S", "ERROR%", "P50(ms)", "P99(ms)", "NODES", "WINDOW",
        ],
        &rows,
    );
}

fn print_status(nodes: &[NodeStatus]) {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut row = vec![
                n.id.clone(),
                n.cluster.clone(),
                n.user_agent.clone(),
                n.streams.to_string(),
                n.mode.clone(),
            ];
            for kind in ResourceKind::WARM_ORDER {
                let cell = n
                    .types
                    .iter()
                    .find(|s| s.type_url == kind.type_url())
                    .map(|s| {
                        if s.acked_version.is_empty() {
                            "-".to_owned()
                        } else if s.acked_version == s.sent_version {
                            s.acked_version.clone()
                        } else {
                            format!("{} (sent {})", s.acked_version, s.sent_version)
                        }
                    })
                    .unwrap_or_else(|| "-".to_owned());
                row.push(cell);
            }
            let nack = n
                .types
                .iter()
                .filter_map(|t| t.last_nack.as_ref().map(|k| (t, k)))
                .max_by_key(|(_, k)| k.at_unix_ms)
                .map(|(t, k)| {
                    // A later ACK of the same type means the NACKed version was replaced.
                    let state = if t.acked_at_unix_ms > k.at_unix_ms {
                        "since ACKed"
                    } else {
                        "current"
                    };
                    format!(
                        "{}: {} ({}, {state})",
                        short_type(&t.type_url),
                        k.message,
                        ago(k.at_unix_ms)
                    )
                })
                .unwrap_or_else(|| "-".to_owned());
            row.push(nack);
            let last_ack = n
                .types
                .iter()
                .map(|t| t.acked_at_unix_ms)
                .max()
                .unwrap_or(0);
            row.push(ago(last_ack));
            row
        })
        .collect();
    print_table(
        &[
            "NODE",
            "CLUSTER",
            "AGENT",
            "STREAMS",
            "MODE",
            ResourceKind::WARM_ORDER[0].service(),
            ResourceKind::WARM_ORDER[1].service(),
            ResourceKind::WARM_ORDER[2].service(),
            ResourceKind::WARM_ORDER[3].service(),
            ResourceKind::WARM_ORDER[4].service(),
            "LAST NACK",
            "LAST ACK",
        ],
        &rows,
    );
}

/// `12s ago` for a Unix time in milliseconds; `-` for none.
fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_owned();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    format!("{}s ago", (now - unix_ms).max(0) / 1000)
}

/// Refusals shown by `status` as a table (the newest; `-o json` has all that are kept).
const REFUSALS_SHOWN: usize = 10;

/// The refusal counts on one line, then the newest refusals, when there are any.
fn print_refusals(list: &ListNodesResponse) {
    if list.refusal_counts.is_empty() {
        return;
    }
    let counts: Vec<String> = list
        .refusal_counts
        .iter()
        .map(|c| format!("{}={}", c.reason, c.count))
        .collect();
    out!();
    out!("REFUSED STREAMS: {}", counts.join(" "));
    let skip = list.refused.len().saturating_sub(REFUSALS_SHOWN);
    let rows: Vec<Vec<String>> = list.refused[skip..]
        .iter()
        .map(|r| {
            let or_dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            vec![
                ago(r.at_unix_ms),
                or_dash(&r.node_id),
                or_dash(&r.node_cluster),
                or_dash(&r.identity),
                or_dash(&r.peer),
                r.reason.clone(),
                r.message.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "WHEN", "NODE", "CLUSTER", "IDENTITY", "PEER", "REASON", "MESSAGE",
        ],
        &rows,
    );
}

fn refusal_json(r: &Refusal) -> serde_json::Value {
    serde_json::json!({
        "node_id": r.node_id, "node_cluster": r.node_cluster,
        "identity": (!r.identity.is_empty()).then_some(&r.identity),
        "peer": (!r.peer.is_empty()).then_some(&r.peer),
        "reason": r.reason, "message": r.message, "at_unix_ms": r.at_unix_ms,
    })
}

fn status_json(list: &ListNodesResponse) -> serde_json::Value {
    let mut v = nodes_json(&list.nodes);
    v["refused"] = list.refused.iter().map(refusal_json).collect();
    v["refusal_counts"] = list
        .refusal_counts
        .iter()
        .map(|c| (c.reason.clone(), serde_json::Value::from(c.count)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    v
}

fn nodes_json(nodes: &[NodeStatus]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            let types: Vec<serde_json::Value> = n
                .types
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "type_url": t.type_url,
                        "sent_version": t.sent_version,
                        "acked_version": t.acked_version,
                        "acked_at_unix_ms": t.acked_at_unix_ms,
                        "last_nack": t.last_nack.as_ref().map(|k| serde_json::json!({
                            "version": k.version, "message": k.message, "at_unix_ms": k.at_unix_ms,
                        })),
                    })
                })
                .collect();
            serde_json::json!({
                "id": n.id, "cluster": n.cluster, "user_agent": n.user_agent,
                "streams": n.streams, "mode": n.mode,
                "connected_since_unix_ms": n.connected_since_unix_ms, "types": types,
                "identity": (!n.identity.is_empty()).then_some(&n.identity),
            })
        })
        .collect();
    serde_json::json!({ "nodes": list })
}

fn print_json(v: &serde_json::Value) {
    out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
