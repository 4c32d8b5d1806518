//! legate-cp's admin API is authenticated and hardened: every change over gRPC and JSON needs
//! a valid bearer token or an admin client certificate, browsers from other origins are
//! refused, bodies and requests are bounded, and the safe defaults hold. Real legate-cp
//! processes, real HTTP, HTTPS and gRPC clients, and the real legatectl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use legate_proto::admin::{ApplyRequest, ListNodesRequest, SetWeightsRequest};
use legate_tests::client::{empty, full};
use legate_tests::cp::{ControlPlane, Pki, https_request};
use legate_tests::eventually;
use legate_tests::process::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MESH: &str = r#"
proxy:
  listener: {name: outbound, address: 127.0.0.1:0, protocol: auto}
services:
  - name: payments
    versions:
      - {name: v1, weight: 100, endpoints: [{address: 127.0.0.1:1}]}
      - {name: v2, weight: 0, endpoints: [{address: 127.0.0.1:2}]}
    route: {prefix: /payments/, timeout: 5s}
"#;

const ORDERS: &str = "services:\n  - name: orders\n    endpoints: [{address: 127.0.0.1:3}]\n";
const TOKEN: &str = "first-token-0123456789abcdef";
const WRONG: &str = "wrong-token-0123456789abcdef";

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Setup {
    dir: TempDir,
    config: PathBuf,
    data: PathBuf,
    token_file: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let config = dir.write("mesh.yaml", MESH);
    let token_file = dir.write("admin.token", &format!("{TOKEN}\n"));
    let data = dir.path().join("data");
    Setup {
        dir,
        config,
        data,
        token_file,
    }
}

fn grpc_request<T>(message: T, metadata: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    for (k, v) in metadata {
        req.metadata_mut()
            .insert(*k, v.parse().expect("metadata value"));
    }
    req
}

/// The four ways to change state, each tried with `headers`; returns one outcome per call:
/// the HTTP status for JSON, the gRPC code (or "ok") for gRPC.
async fn mutations(cp: &ControlPlane, headers: &[(&'static str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut json_headers: Vec<(&str, &str)> = headers.to_vec();
    json_headers.push(("content-type", "application/yaml"));
    let r = cp
        .json("POST", "/v1/apply", &json_headers, full(ORDERS))
        .await;
    if r.status.as_u16() == 401 {
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{}", r.describe());
    }
    out.push(format!("json apply {}", r.status.as_u16()));
    let mut json_headers: Vec<(&str, &str)> = headers.to_vec();
    json_headers.push(("content-type", "application/json"));
    let r = cp
        .json(
            "POST",
            "/v1/services/payments/weights",
            &json_headers,
            full(r#"{"v1": 50, "v2": 50}"#),
        )
        .await;
    out.push(format!("json weights {}", r.status.as_u16()));

    let mut grpc = cp.grpc().await;
    let code = |r: Result<_, tonic::Status>| match r {
        Ok(_) => "ok".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    };
    let r = grpc
        .apply(grpc_request(
            ApplyRequest {
                document: ORDERS.to_owned(),
                source: "test".to_owned(),
            },
            headers,
        ))
        .await;
    out.push(format!("grpc apply {}", code(r)));
    let r = grpc
        .set_weights(grpc_request(
            SetWeightsRequest {
                service: "payments".to_owned(),
                weights: [("v1".to_owned(), 60), ("v2".to_owned(), 40)].into(),
            },
            headers,
        ))
        .await;
    out.push(format!("grpc weights {}", code(r)));
    out
}

fn expect(json: u16, grpc: &str) -> Vec<String> {
    vec![
        format!("json apply {json}"),
        format!("json weights {json}"),
        format!("grpc apply {grpc}"),
        format!("grpc weights {grpc}"),
    ]
}

/// The generation legate-cp persisted, 0 when nothing was.
fn generation(data: &Path) -> u64 {
    std::fs::read_to_string(data.join("overlay.yaml"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("generation:"))
                .and_then(|g| g.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn every_mutation_needs_a_valid_token_from_the_same_origin() {
    let s = setup("cp-admin-auth");
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp =
        ControlPlane::start_with(&s.config, &s.data, &["--admin-token-file", token_file]).await;
    let good = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {WRONG}");

    assert_eq!(mutations(&cp, &[]).await, expect(401, "Unauthenticated"));
    assert_eq!(
        mutations(&cp, &[("authorization", &wrong)]).await,
        expect(401, "Unauthenticated")
    );
    assert_eq!(
        mutations(&cp, &[("authorization", &format!("Basic {TOKEN}"))]).await,
        expect(401, "Unauthenticated")
    );
    // The right token, but sent by a page of another origin: refused.
    let own = format!("http://{}", cp.admin);
    for origin in ["http://evil.example", "null", "https://127.0.0.1:1"] {
        assert_eq!(
            mutations(&cp, &[("authorization", &good), ("origin", origin)]).await,
            expect(403, "PermissionDenied"),
            "origin {origin}"
        );
    }
    for site in ["cross-site", "same-site"] {
        assert_eq!(
            mutations(&cp, &[("authorization", &good), ("sec-fetch-site", site)]).await,
            expect(403, "PermissionDenied"),
            "sec-fetch-site {site}"
        );
    }
    // Nothing was persisted or published by any of them.
    assert_eq!(generation(&s.data), 0, "a refused call changed state");
    let (ok, out, err) = cp.ctl(&["get", "node", "probe", "--cluster", "web"]);
    assert!(ok && !out.contains("orders"), "{out}{err}");

    // Reads are closed too.
    let r = cp.json("GET", "/v1/nodes", &[], empty()).await;
    r.assert_status(401);
    assert!(r.header("www-authenticate").is_some(), "{}", r.describe());
    let denied = cp
        .grpc()
        .await
        .list_nodes(ListNodesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");

    // The right token from the server's own origin (or no browser at all) works; each change
    // is one generation, so nothing slipped through before. The second apply of the same
    // document changes nothing, and is no generation.
    assert_eq!(
        mutations(&cp, &[("authorization", &good), ("origin", &own)]).await,
        expect(200, "ok")
    );
    assert_eq!(generation(&s.data), 3);
    cp.json("GET", "/v1/nodes", &[("authorization", &good)], empty())
        .await
        .assert_status(200);

    // An authorized change that does not apply says why, and changes nothing.
    let r = cp
        .json(
            "POST",
            "/v1/services/nosuch/weights",
            &[
                ("authorization", &good),
                ("content-type", "application/json"),
            ],
            full(r#"{"v1": 1}"#),
        )
        .await;
    r.assert_status(404);
    assert!(
        r.text().contains("unknown service 'nosuch'"),
        "{}",
        r.describe()
    );
    let missing = cp
        .grpc()
        .await
        .set_weights(grpc_request(
            SetWeightsRequest {
                service: "nosuch".to_owned(),
                weights: [("v1".to_owned(), 1)].into(),
            },
            &[("authorization", &good)],
        ))
        .await
        .expect_err("unknown service");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert_eq!(generation(&s.data), 3);

    // Refusals are logged with call, peer and reason, never with a token.
    let log = cp.log();
    assert!(
        log.contains("admin call refused")
            && log.contains("reason=\"wrong-token\"")
            && log.contains("reason=\"cross-origin\"")
            && log.contains("POST /v1/apply")
            && log.contains("legate.admin.v1.Admin/SetWeights")
            && log.contains("peer=127.0.0.1:"),
        "{log}"
    );
    assert!(
        !log.contains(TOKEN) && !log.contains(WRONG),
        "a token reached the log"
    );
}

#[tokio::test]
async fn legatectl_sends_the_token_and_explains_refusals() {
    let s = setup("cp-admin-ctl");
    let cp = ControlPlane::start(&s.config, &s.data).await;

    // With no credential configured, legate-cp generated a private token in its data dir
    // and logged where, not what.
    let generated = s.data.join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&generated)
            .expect("generated token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let token = cp.token();
    assert_eq!(token.len(), 64, "{token}");
    let log = cp.log();
    assert!(log.contains(&generated.display().to_string()), "{log}");
    assert!(!log.contains(&token), "the token reached the log");

    let (ok, _, err) = cp.legatectl(&["set-weights", "payments", "v1=0", "v2=100"], &[]);
    assert!(!ok, "no token must be refused");
    assert!(
        err.contains("not authorized") && err.contains("--token-file"),
        "{err}"
    );
    let (ok, _, err) = cp.legatectl(
        &["status"],
        &[("LEGATE_CP_TOKEN", "wrong-token-0123456789abcdef")],
    );
    assert!(!ok && err.contains("not authorized"), "{err}");
    assert_eq!(generation(&s.data), 0);

    let (ok, out, err) = cp.ctl(&["set-weights", "payments", "v1=0", "v2=100"]);
    assert!(ok && out.contains("generation 1"), "{out}{err}");
    let (ok, out, err) = cp.legatectl(
        &["set-weights", "payments", "v1=10", "v2=90"],
        &[("LEGATE_CP_TOKEN", &token)],
    );
    assert!(ok && out.contains("generation 2"), "{out}{err}");
    let token_file = generated.to_str().expect("utf-8");
    let (ok, out, err) = cp.legatectl(&["status"], &[("LEGATE_CP_TOKEN_FILE", token_file)]);
    assert!(ok && out.starts_with("NODE"), "{out}{err}");
    // --token-file wins over LEGATE_CP_TOKEN.
    let (ok, _, err) = cp.legatectl(
        &["--token-file", token_file, "status"],
        &[("LEGATE_CP_TOKEN", "wrong-token-0123456789abcdef")],
    );
    assert!(ok, "{err}");
    // A missing or empty token file is named.
    let empty_file = s.dir.write("empty.token", "\n");
    let (ok, _, err) = cp.legatectl(
        &[
            "--token-file",
            empty_file.to_str().expect("utf-8"),
            "status",
        ],
        &[],
    );
    assert!(
        !ok && err.contains("empty.token") && err.contains("empty"),
        "{err}"
    );

    // A restart keeps the generated token.
    drop(cp);
    let cp = ControlPlane::start(&s.config, &s.data).await;
    assert_eq!(cp.token(), token);
    let (ok, _, err) = cp.ctl(&["status"]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn open_reads_open_only_reads() {
    let s = setup("cp-admin-open");
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &["--admin-token-file", token_file, "--admin-open-reads"],
    )
    .await;
    cp.json("GET", "/v1/nodes", &[], empty())
        .await
        .assert_status(200);
    cp.json("GET", "/v1/nodes/probe?cluster=web", &[], empty())
        .await
        .assert_status(200);
    let (ok, out, err) = cp.legatectl(&["status"], &[]);
    assert!(ok && out.starts_with("NODE"), "{out}{err}");
    assert_eq!(mutations(&cp, &[]).await, expect(401, "Unauthenticated"));
    // A wrong token is refused even on a read.
    cp.json(
        "GET",
        "/v1/nodes",
        &[("authorization", &format!("Bearer {WRONG}"))],
        empty(),
    )
    .await
    .assert_status(401);
    // Cross-origin reads are refused whatever the flag.
    cp.json(
        "GET",
        "/v1/nodes",
        &[("origin", "http://evil.example")],
        empty(),
    )
    .await
    .assert_status(403);
    // So is a page that re-pointed its own name at 127.0.0.1 (DNS rebinding): the browser
    // sees no other origin, but the name it sends is not this server's.
    let port = cp.admin.port();
    let rebound = raw(
        cp.admin,
        &format!("GET /v1/nodes HTTP/1.1\r\nhost: evil.example:{port}\r\n\r\n"),
        b"",
    )
    .await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    let local = raw(
        cp.admin,
        &format!("GET /v1/nodes HTTP/1.1\r\nhost: localhost:{port}\r\n\r\n"),
        b"",
    )
    .await;
    assert!(local.starts_with("HTTP/1.1 200"), "{local}");
    assert_eq!(generation(&s.data), 0);
}

/// Sends `head` and `body` on a new connection (writes may fail once the server answered)
/// and returns what the server answered within 10 s, as text.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn content_types_body_size_headers_and_time_are_bounded() {
    let s = setup("cp-admin-limits");
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &[
            "--admin-token-file",
            token_file,
            "--admin-max-body",
            "4KiB",
            "--admin-request-timeout",
            "1s",
        ],
    )
    .await;
    let auth = format!("Bearer {TOKEN}");

    // Only JSON and YAML bodies change anything: the types a page can send cross-origin
    // without asking are refused.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(ct.map(|c| ("content-type", c)));
        let r = cp.json("POST", "/v1/apply", &headers, full(ORDERS)).await;
        r.assert_status(415);
        assert!(r.text().contains("application/json"), "{}", r.describe());
    }
    assert_eq!(generation(&s.data), 0);

    // Over the limit: refused from content-length before reading...
    let big = format!("services: []\n# {}\n", "x".repeat(5000));
    let r = cp
        .json(
            "POST",
            "/v1/apply",
            &[
                ("authorization", &auth),
                ("content-type", "application/yaml"),
            ],
            full(big),
        )
        .await;
    r.assert_status(413);
    assert!(r.text().contains("4096"), "{}", r.describe());
    // ...even when the body never comes,
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-type: application/yaml\r\ncontent-length: 100000000\r\n\r\n",
        cp.admin
    );
    let answer = raw(cp.admin, &head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // ...and, without a length, as soon as the bytes read pass it: the request is still
    // incomplete (no last chunk) when the answer comes.
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-type: application/yaml\r\ntransfer-encoding: chunked\r\n\r\n",
        cp.admin
    );
    let chunk = format!("400\r\n{}\r\n", "#".repeat(1024));
    let answer = raw(cp.admin, &head, chunk.repeat(6).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(generation(&s.data), 0);

    // gRPC has the same bound on its message.
    let mut grpc = cp.grpc().await;
    let refused = grpc
        .apply(grpc_request(
            ApplyRequest {
                document: format!("services: []\n# {}\n", "x".repeat(5000)),
                source: "big".to_owned(),
            },
            &[("authorization", &auth)],
        ))
        .await
        .expect_err("over the limit");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{refused:?}"
    );
    assert_eq!(generation(&s.data), 0);

    // Within the limit, YAML works.
    cp.json(
        "POST",
        "/v1/apply",
        &[
            ("authorization", &auth),
            ("content-type", "application/yaml; charset=utf-8"),
        ],
        full(ORDERS),
    )
    .await
    .assert_status(200);
    assert_eq!(generation(&s.data), 1);

    // Too many headers: 431.
    let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        cp.admin,
        &format!("GET /v1/nodes HTTP/1.1\r\nhost: x\r\n{many}\r\n"),
        b"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A header larger than the bound is refused (431, or the connection is closed).
    let answer = raw(
        cp.admin,
        &format!(
            "GET /v1/nodes HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(100 << 10)
        ),
        b"",
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // A body that trickles in is cut off by the request timeout.
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-type: application/yaml\r\ncontent-length: 100\r\n\r\n",
        cp.admin
    );
    let started = Instant::now();
    let answer = raw(cp.admin, &head, b"services:").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(generation(&s.data), 1);
}

#[tokio::test]
async fn a_rotated_token_file_applies_without_a_restart() {
    let s = setup("cp-admin-rotate");
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp =
        ControlPlane::start_with(&s.config, &s.data, &["--admin-token-file", token_file]).await;
    let status_with = |token: &'static str| {
        let cp = &cp;
        async move {
            cp.json(
                "GET",
                "/v1/nodes",
                &[("authorization", &format!("Bearer {token}"))],
                empty(),
            )
            .await
            .status
            .as_u16()
        }
    };
    const NEXT: &str = "second-token-0123456789abcdef";
    const THIRD: &str = "third-token-0123456789abcdef";
    assert_eq!(status_with(TOKEN).await, 200);
    assert_eq!(status_with(NEXT).await, 401);

    write_atomically(&s.token_file, &format!("{NEXT}\n"));
    eventually(Duration::from_secs(10), "the new token applies", || async {
        match (status_with(TOKEN).await, status_with(NEXT).await) {
            (401, 200) => Ok(()),
            other => Err(format!("old, new: {other:?}")),
        }
    })
    .await;

    // Two tokens at once, to overlap a rotation.
    write_atomically(&s.token_file, &format!("{NEXT}\n{THIRD}\n"));
    eventually(Duration::from_secs(10), "both tokens apply", || async {
        match (status_with(NEXT).await, status_with(THIRD).await) {
            (200, 200) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // An empty file is an error: logged, and the tokens in force stay.
    write_atomically(&s.token_file, "\n");
    eventually(Duration::from_secs(10), "the refusal is logged", || async {
        let log = cp.log();
        if log.contains("changed admin token file not applied") && log.contains("holds no token") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    assert_eq!(status_with(THIRD).await, 200);
    // And at start-up it is fatal.
    drop(cp);
    let err = ControlPlane::try_start(&s.config, &s.data, &["--admin-token-file", token_file])
        .await
        .err()
        .expect("an empty token file must be refused");
    assert!(err.contains("holds no token"), "{err}");
}

#[tokio::test]
async fn admin_client_certificates_over_tls() {
    let s = setup("cp-admin-tls");
    let pki = Pki::new(s.dir.path(), "admin");
    let other = Pki::new(s.dir.path(), "other");
    let (cert, key) = pki.server("server");
    let alice = pki.client("alice", "spiffe://legate.local/admin/alice");
    let node = pki.client("node", "spiffe://legate.local/node/x");
    let foreign_td = pki.client("foreign", "spiffe://elsewhere/admin/alice");
    let mallory = other.client("mallory", "spiffe://legate.local/admin/mallory");
    let ca = pki.ca_file();
    let p = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let (cert_s, key_s, ca_s) = (p(&cert), p(&key), p(&ca));

    // Certificates only: no token file is generated, and the handshake demands a certificate.
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &[
            "--admin-tls-cert",
            &cert_s,
            "--admin-tls-key",
            &key_s,
            "--admin-client-ca",
            &ca_s,
        ],
    )
    .await;
    assert!(!s.data.join("admin.token").exists());
    let tls_flags = |c: &(PathBuf, PathBuf)| {
        vec![
            "--ca".to_owned(),
            ca_s.clone(),
            "--cert".to_owned(),
            p(&c.0),
            "--key".to_owned(),
            p(&c.1),
        ]
    };
    let ctl = |c: &(PathBuf, PathBuf), args: &[&str]| {
        let mut all = tls_flags(c);
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        cp.legatectl(&all, &[])
    };

    let (ok, out, err) = ctl(&alice, &["set-weights", "payments", "v1=0", "v2=100"]);
    assert!(ok && out.contains("generation 1"), "{out}{err}");
    let (ok, out, err) = ctl(&alice, &["status"]);
    assert!(ok && out.starts_with("NODE"), "{out}{err}");

    // A node's certificate is valid but carries no admin right.
    let (ok, _, err) = ctl(&node, &["set-weights", "payments", "v1=50", "v2=50"]);
    assert!(!ok, "a node certificate must be refused");
    assert!(
        err.contains("forbidden") && err.contains("spiffe://legate.local/node/x"),
        "{err}"
    );
    let (ok, _, err) = ctl(&foreign_td, &["status"]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    // A certificate from another CA fails the handshake.
    let (ok, _, err) = ctl(&mallory, &["status"]);
    assert!(!ok, "another CA's certificate must be refused: {err}");
    // legatectl checks the server too: without --ca it does not trust the test CA.
    let (ok, _, err) = cp.legatectl(
        &["--cert", &p(&alice.0), "--key", &p(&alice.1), "status"],
        &[],
    );
    assert!(!ok && err.contains("certificate"), "{err}");
    // TLS flags with a plaintext server are a usage error.
    let (ok, _, err) = {
        let out = std::process::Command::new(legate_tests::cp::bin("legatectl"))
            .args(["--server", &format!("http://{}", cp.admin), "--ca", &ca_s])
            .arg("status")
            .output()
            .expect("legatectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok && err.contains("https://"), "{err}");

    // The JSON API over TLS: the same identities, the same answers.
    let set = |client: Option<&(PathBuf, PathBuf)>, origin: Option<String>| {
        let (ca, addr) = (ca.clone(), cp.admin);
        let client = client.cloned();
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(o) = &origin {
                headers.push(("origin", o.as_str()));
            }
            https_request(
                addr,
                &ca,
                client.as_ref(),
                "POST",
                "/v1/services/payments/weights",
                &headers,
                r#"{"v1": 30, "v2": 70}"#,
            )
            .await
        }
    };
    set(Some(&alice), None)
        .await
        .expect("https")
        .assert_status(200);
    assert_eq!(generation(&s.data), 2);
    let r = set(Some(&node), None).await.expect("https");
    r.assert_status(403);
    assert!(
        r.text().contains("spiffe://legate.local/node/x"),
        "{}",
        r.describe()
    );
    // Same-origin is https://<addr> here; the plaintext origin is another one.
    set(Some(&alice), Some(format!("https://{}", cp.admin)))
        .await
        .expect("https")
        .assert_status(200);
    set(Some(&alice), Some(format!("http://{}", cp.admin)))
        .await
        .expect("https")
        .assert_status(403);
    // Without a client certificate the handshake itself fails. The second call set the
    // same weights: unchanged, no generation.
    assert!(set(None, None).await.is_err(), "a certificate is required");
    assert_eq!(generation(&s.data), 2);
    let log = cp.log();
    assert!(
        log.contains("reason=\"not-admin\"") && log.contains("admin connection refused"),
        "{log}"
    );
    drop(cp);

    // Certificates and tokens together: a client without a certificate may use a token.
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &[
            "--admin-tls-cert",
            &cert_s,
            "--admin-tls-key",
            &key_s,
            "--admin-client-ca",
            &ca_s,
            "--admin-token-file",
            token_file,
        ],
    )
    .await;
    let get = |headers: Vec<(&'static str, String)>| {
        let ca = ca.clone();
        let addr = cp.admin;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            https_request(addr, &ca, None, "GET", "/v1/nodes", &h, "")
                .await
                .expect("https")
                .status
                .as_u16()
        }
    };
    assert_eq!(get(vec![]).await, 401);
    assert_eq!(
        get(vec![("authorization", format!("Bearer {TOKEN}"))]).await,
        200
    );
    let (ok, out, err) = cp.legatectl(&["--ca", &ca_s, "--token-file", token_file, "status"], &[]);
    assert!(ok && out.starts_with("NODE"), "{out}{err}");
    let (ok, _, err) = cp.legatectl(&["--ca", &ca_s, "status"], &[]);
    assert!(!ok && err.contains("not authorized"), "{err}");
}

#[tokio::test]
async fn non_loopback_admin_needs_tls_or_insecure() {
    let s = setup("cp-admin-bind");
    let token_file = s.token_file.to_str().expect("utf-8");
    let err = ControlPlane::try_start(
        &s.config,
        &s.data,
        &[
            "--admin-address",
            "0.0.0.0:0",
            "--admin-token-file",
            token_file,
        ],
    )
    .await
    .err()
    .expect("a plaintext wildcard bind must be refused");
    assert!(
        err.contains("non-loopback")
            && err.contains("0.0.0.0:0")
            && err.contains("--insecure")
            && err.contains("without TLS"),
        "{err}"
    );

    // With --insecure it starts, says so, and still wants a token.
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &[
            "--admin-address",
            "0.0.0.0:0",
            "--admin-token-file",
            token_file,
            "--insecure",
        ],
    )
    .await;
    assert!(
        cp.log()
            .contains("--insecure: serving the admin API on a non-loopback address"),
        "{}",
        cp.log()
    );
    cp.json("GET", "/v1/nodes", &[], empty())
        .await
        .assert_status(401);
    cp.json(
        "GET",
        "/v1/nodes",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        empty(),
    )
    .await
    .assert_status(200);
    drop(cp);

    // TLS makes a wildcard bind acceptable; open reads do not.
    let pki = Pki::new(s.dir.path(), "bind");
    let (cert, key) = pki.server("server");
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let tls = [
        "--admin-address",
        "0.0.0.0:0",
        "--admin-token-file",
        token_file,
        "--admin-tls-cert",
        cert,
        "--admin-tls-key",
        key,
    ];
    let cp = ControlPlane::start_with(&s.config, &s.data, &tls).await;
    let r = https_request(
        cp.admin,
        &pki.ca_file(),
        None,
        "GET",
        "/v1/nodes",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await
    .expect("https");
    r.assert_status(200);
    drop(cp);
    let mut open = tls.to_vec();
    open.push("--admin-open-reads");
    let err = ControlPlane::try_start(&s.config, &s.data, &open)
        .await
        .err()
        .expect("open reads on a wildcard bind must be refused");
    assert!(
        err.contains("--admin-open-reads") && err.contains("--insecure"),
        "{err}"
    );
}

/// The certificates `legatectl certs` makes are what the admin API over TLS takes: its
/// admin certificate may change state, its node certificate may not.
#[tokio::test]
async fn legatectl_certs_make_a_working_admin_identity() {
    let s = setup("cp-admin-certs");
    let out = s.dir.path().join("pki");
    let made = std::process::Command::new(legate_tests::cp::bin("legatectl"))
        .arg("certs")
        .arg("--out")
        .arg(&out)
        .args(["--host", "localhost", "--admin", "alice", "--node", "x"])
        .output()
        .expect("legatectl certs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let f = |name: &str| out.join(name).to_str().expect("utf-8").to_owned();
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &[
            "--admin-tls-cert",
            &f("localhost.pem"),
            "--admin-tls-key",
            &f("localhost.key"),
            "--admin-client-ca",
            &f("ca.pem"),
        ],
    )
    .await;
    let (ok, out_text, err) = cp.legatectl(
        &[
            "--ca",
            &f("ca.pem"),
            "--cert",
            &f("admin-alice.pem"),
            "--key",
            &f("admin-alice.key"),
            "set-weights",
            "payments",
            "v1=0",
            "v2=100",
        ],
        &[],
    );
    assert!(ok && out_text.contains("generation 1"), "{out_text}{err}");
    let (ok, _, err) = cp.legatectl(
        &[
            "--ca",
            &f("ca.pem"),
            "--cert",
            &f("node-x.pem"),
            "--key",
            &f("node-x.key"),
            "status",
        ],
        &[],
    );
    assert!(
        !ok && err.contains("forbidden") && err.contains("spiffe://legate.local/node/x"),
        "{err}"
    );
    assert_eq!(generation(&s.data), 1);
}

/// An HTTP/2 admin connection on which no request starts is shut down after
/// `--admin-idle-timeout` (a GOAWAY), so idle clients do not hold the 256 connection slots.
#[tokio::test]
async fn idle_admin_connections_are_closed() {
    use legate_tests::raw;
    let s = setup("cp-admin-idle");
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp = ControlPlane::start_with(
        &s.config,
        &s.data,
        &[
            "--admin-token-file",
            token_file,
            "--admin-idle-timeout",
            "1s",
        ],
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(cp.admin)
        .await
        .expect("connect");
    conn.write_all(&raw::h2_start()).await.expect("write");
    let started = Instant::now();
    let (frames, closed) =
        raw::read_frames_until(&mut conn, Duration::from_secs(10), |f| f.0 == raw::GOAWAY).await;
    assert!(
        closed || raw::goaway_code(&frames).is_some(),
        "an idle HTTP/2 admin connection was still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?} with a 1s idle timeout",
        started.elapsed()
    );
}

/// Runs legatectl with exactly these arguments (no `--server` added) and the token file.
fn legatectl_raw(token_file: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(legate_tests::cp::bin("legatectl"))
        .env_remove("LEGATE_CP_TOKEN")
        .env_remove("LEGATE_CP_TOKEN_FILE")
        .env_remove("LEGATE_CP_ADMIN")
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .expect("run legatectl")
}

#[tokio::test]
async fn legatectl_takes_host_port_explains_the_wrong_port_and_survives_a_closed_pipe() {
    let s = setup("cp-admin-ctl");
    let token_file = s.token_file.to_str().expect("utf-8");
    let cp =
        ControlPlane::start_with(&s.config, &s.data, &["--admin-token-file", token_file]).await;

    // HOST:PORT without a scheme, as legate-cp's own flags take addresses.
    let admin = cp.admin.to_string();
    let out = legatectl_raw(&s.token_file, &["--server", &admin, "status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("NODE"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|h| h.contains("LAST ACK")),
        "every column has a header: {stdout}"
    );

    // Pointed at the xDS port: a message that says what is wrong, not an empty one.
    let xds = cp.xds.to_string();
    let out = legatectl_raw(&s.token_file, &["--server", &xds, "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not serve legate-cp's admin API") && stderr.contains("xDS port"),
        "{stderr}"
    );

    // A reader that goes away (`legatectl status | true`): no panic, no exit code 101.
    let mut child = std::process::Command::new(legate_tests::cp::bin("legatectl"))
        .env_remove("LEGATE_CP_TOKEN")
        .env_remove("LEGATE_CP_TOKEN_FILE")
        .env_remove("LEGATE_CP_ADMIN")
        .args(["--token-file", token_file, "--server", &admin, "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn legatectl");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("legatectl ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}
