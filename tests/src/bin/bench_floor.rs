//! `legate-bench-floor`: the least an HTTP proxy built on tokio and hyper can do, measured by
//! `make bench` beside legate and Envoy to show where this design's ceiling is.
//!
//! One current-thread runtime (one worker, like `legate --concurrency 1`) and hyper-util's
//! server (HTTP/1.1 and h2c by preface). Every request goes to the one upstream with its
//! path and headers unchanged: no routing, no header edits, no timeouts, no metrics, no
//! logging. Not a product; a yardstick, in two connection models:
//!
//! - `pooled` (the default): hyper-util's pooled legacy client, whose connections each run
//!   in their own task and take requests through channels, as legate's pool does;
//! - `per-connection`: every downstream connection opens its own upstream HTTP/1.1
//!   connection and drives it in the same task, so a request never changes task. HTTP/1.1
//!   downstream only.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[derive(Debug, Parser)]
#[command(
    name = "legate-bench-floor",
    about = "Minimal tokio + hyper proxy: the benchmark's floor"
)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream every request goes to (HTTP/1.1).
    #[arg(long)]
    upstream: SocketAddr,
    /// How upstream connections are held and driven.
    #[arg(long, value_enum, default_value_t = Mode::Pooled)]
    mode: Mode,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Pooled,
    PerConnection,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match args.mode {
        Mode::Pooled => rt.block_on(serve(args)),
        Mode::PerConnection => tokio::task::LocalSet::new().block_on(&rt, serve_paired(args)),
    }
}

/// `per-connection`: one upstream connection per downstream connection, one task for both.
async fn serve_paired(args: Args) -> anyhow::Result<()> {
    let listener = listen(args.listen).await?;
    loop {
        let stream = accept(&listener).await?;
        let upstream = args.upstream;
        tokio::task::spawn_local(async move {
            let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let Ok((sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
            else {
                return;
            };
            // HTTP/1.1 downstream: one request at a time, so the sender is never shared by
            // two requests at once.
            let sender = std::rc::Rc::new(tokio::sync::Mutex::new(sender));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sender = sender.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    parts.uri = Uri::from(
                        parts
                            .uri
                            .path_and_query()
                            .cloned()
                            .unwrap_or_else(|| PathAndQuery::from_static("/")),
                    );
                    parts.version = http::Version::HTTP_11;
                    let sent = {
                        let mut sender = sender.lock().await;
                        match sender.ready().await {
                            Ok(()) => Some(sender.send_request(Request::from_parts(parts, body))),
                            Err(_) => None,
                        }
                    };
                    let res = match sent {
                        Some(fut) => fut.await.ok(),
                        None => None,
                    };
                    Ok::<_, Infallible>(match res {
                        Some(res) => res.map(http_body_util::Either::Left),
                        None => bad_gateway(),
                    })
                }
            });
            let server = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // The upstream connection may end first (`Connection: close`): the answer it
            // carried must still be written, so only the downstream side ends the task.
            let upstream_side = async {
                let _ = conn.await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = server => {}
                () = upstream_side => {}
            }
        });
    }
}

/// Bind `addr` and print the one line the bench waits for.
async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

async fn accept(listener: &tokio::net::TcpListener) -> anyhow::Result<tokio::net::TcpStream> {
    let (stream, _) = listener.accept().await.context("accepting")?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

type Answer =
    hyper::Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>>;

fn bad_gateway() -> Answer {
    let mut res = hyper::Response::new(http_body_util::Either::Right(http_body_util::Empty::new()));
    *res.status_mut() = http::StatusCode::BAD_GATEWAY;
    res
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let authority = Authority::try_from(args.upstream.to_string()).context("upstream")?;
    let listener = listen(args.listen).await?;
    loop {
        let stream = accept(&listener).await?;
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let mut uri = Uri::builder().scheme(Scheme::HTTP).authority(authority);
                    if let Some(pq) = parts.uri.path_and_query() {
                        uri = uri.path_and_query(pq.clone());
                    } else {
                        uri = uri.path_and_query(PathAndQuery::from_static("/"));
                    }
                    parts.uri = uri.build().unwrap_or_default();
                    parts.version = http::Version::HTTP_11;
                    let res = match client.request(Request::from_parts(parts, body)).await {
                        Ok(res) => res.map(http_body_util::Either::Left),
                        Err(_) => bad_gateway(),
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
