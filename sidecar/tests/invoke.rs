//! Service invocation end to end: several real sidecars finding each other through a shared
//! local registry (or a static list), scripted apps behind them, resiliency policies, app health,
//! external endpoints and the official Python SDK as a client.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use serde_json::Value;
use tandem::naming::local_registry::LocalRegistry;
use tandem_testkit::{eventually, free_port, http, Reply, ResourcesDir, Sidecar, TestApp, TestCa};

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// A private registry directory shared by the sidecars of one test.
struct Mesh {
    registry: tempfile::TempDir,
    /// An empty resources directory, so sidecars do not fall back to built-in components.
    no_components: ResourcesDir,
}

impl Mesh {
    fn new() -> Self {
        Self {
            registry: tempfile::tempdir().unwrap(),
            no_components: ResourcesDir::new(),
        }
    }

    fn dir(&self) -> &Path {
        self.registry.path()
    }

    fn sidecar(&self, app_id: &str) -> tandem_testkit::SidecarBuilder {
        Sidecar::builder(BIN)
            .app_id(app_id)
            .resources(self.no_components.path())
            .env("TANDEM_REGISTRY_DIR", &self.dir().display().to_string())
    }

    /// A callee: sidecar `app_id` in front of `app`, ready.
    async fn callee(&self, app_id: &str, app: &TestApp) -> Sidecar {
        let mut s = self.sidecar(app_id).app_port(app.port).start().await;
        s.wait_ready().await;
        s
    }
}

fn resiliency(yaml_spec: &str) -> ResourcesDir {
    let dir = ResourcesDir::new();
    dir.write(
        "resiliency.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n{yaml_spec}"
        ),
    );
    dir
}

async fn error_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Posts `mib` MiB chunked on a raw connection while reading the answer; returns its status.
async fn chunked_upload_status(port: u16, path: &str, mib: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut read, mut write) = conn.into_split();
    let head =
        format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n");
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'c'; 1 << 20];
        for _ in 0..mib {
            write.write_all(b"100000\r\n").await?;
            write.write_all(&chunk).await?;
            write.write_all(b"\r\n").await?;
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut head = vec![0u8; 12];
    read.read_exact(&mut head).await.unwrap();
    let _ = writer.await;
    String::from_utf8_lossy(&head[9..12]).into_owned()
}

/// Peak resident memory of a process, in KiB (Linux `VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn path_and_header_forms_pass_everything_through() {
    let mesh = Mesh::new();
    let app = TestApp::start(|req| match req.path() {
        "/unavailable" => Reply::status(503)
            .header("content-type", "text/plain")
            .header("retry-after", "7")
            .body("busy"),
        _ => Reply::status(201)
            .header("content-type", "application/x-custom")
            .header("x-reply", "yes")
            .body(format!("{} {} {}", req.method, req.uri, req.body.len())),
    })
    .await;
    let _b = mesh.callee("b", &app).await;
    let a = mesh.sidecar("a").start().await;
    let client = http();

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let resp = client
            .request(
                method.parse().unwrap(),
                a.url("/v1.0/invoke/b/method/api/v1/add?x=1&y=two"),
            )
            .header("x-custom", "hello")
            .body(if method == "GET" { "" } else { "payload" })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "{method}");
        assert_eq!(resp.headers()["content-type"], "application/x-custom");
        assert_eq!(resp.headers()["x-reply"], "yes");
        let expected_len = if method == "GET" { 0 } else { 7 };
        assert_eq!(
            resp.text().await.unwrap(),
            format!("{method} /api/v1/add?x=1&y=two {expected_len}")
        );
    }
    let seen = app.requests_to("/api/v1/add");
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-custom"), Some("hello"));
    assert_eq!(last.header("dapr-caller-app-id"), Some("a"));
    assert_eq!(last.header("dapr-callee-app-id"), Some("b"));
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        last.header("x-forwarded-host"),
        Some(format!("127.0.0.1:{}", a.http_port).as_str())
    );
    assert!(last.header("traceparent").unwrap().starts_with("00-"));

    // The header form: any path, the dapr-app-id header names the target.
    let resp = client
        .post(a.url("/orders/7?verbose=1"))
        .header("dapr-app-id", "b")
        .body("xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.text().await.unwrap(), "POST /orders/7?verbose=1 3");
    let seen = app.requests_to("/orders/7");
    assert!(seen[0].header("dapr-app-id").is_none());

    // Basic auth with user dapr-app-id names the target too (and is not forwarded).
    let resp = client
        .get(a.url("/basic"))
        .basic_auth("dapr-app-id", Some("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert!(app.requests_to("/basic")[0]
        .header("authorization")
        .is_none());

    // A trace context from the client is continued.
    client
        .get(a.url("/v1.0/invoke/b/method/traced"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    let traced = &app.requests_to("/traced")[0];
    assert!(traced
        .header("traceparent")
        .unwrap()
        .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));

    // A 503 from the app stays a 503, with its headers and body.
    let resp = client
        .get(a.url("/v1.0/invoke/b/method/unavailable"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.text().await.unwrap(), "busy");

    // The namespaced form reaches the same app on the local registry.
    let resp = client
        .get(a.url("/v1.0/invoke/b.default/method/ns"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
}

#[tokio::test]
async fn errors_use_err_direct_invoke() {
    let mesh = Mesh::new();
    let a = mesh.sidecar("a").start().await;
    let client = http();
    let (status, body) = error_json(
        client
            .get(a.url("/v1.0/invoke/nobody/method/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("failed to invoke, id: nobody")
            && message.contains("couldn't find service"),
        "{message}"
    );
    let (status, body) = error_json(
        client
            .get(a.url("/v1.0/invoke//method/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    let (status, body) = error_json(
        client
            .get(a.url("/v1.0/invoke/a.b.c/method/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert!(body["message"].as_str().unwrap().contains("invalid app id"));
    // Without the header, unknown paths stay 404.
    let resp = client.get(a.url("/no/such/route")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_within_the_body_limit() {
    let mesh = Mesh::new();
    // 100 MiB answered by the app; held once in the test process, streamed by the sidecars.
    let big = bytes::Bytes::from(vec![b'z'; 100 << 20]);
    let download = big.clone();
    let app = TestApp::start(move |req| match req.path() {
        "/download" => Reply::ok()
            .header("content-type", "application/octet-stream")
            .body(download.clone()),
        _ => Reply::ok().body(format!("{}", req.body.len())),
    })
    .await;
    let b = mesh.callee("b", &app).await;
    let a = mesh
        .sidecar("a")
        .args(["--max-body-size", "16Mi"])
        .start()
        .await;
    let client = http();

    // A 5 MB upload arrives whole.
    let upload = vec![b'u'; 5 * 1024 * 1024];
    let resp = client
        .post(a.url("/v1.0/invoke/b/method/upload"))
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), (5 * 1024 * 1024).to_string());
    assert_eq!(
        app.requests_to("/upload")[0].body.as_ref(),
        upload.as_slice()
    );

    // A streamed (chunked) upload over the caller's limit is refused with 413. Written on a raw
    // connection, read concurrently: the sidecar answers and closes while data still arrives.
    let status = chunked_upload_status(a.http_port, "/v1.0/invoke/b/method/too-big", 20).await;
    assert_eq!(status, "413");
    assert!(app
        .requests_to("/too-big")
        .iter()
        .all(|r| r.body.len() <= 16 << 20));

    // The 100 MiB download passes through both sidecars without either holding it.
    let before = (
        peak_rss_kib(a.pid().unwrap()),
        peak_rss_kib(b.pid().unwrap()),
    );
    let resp = client
        .get(a.url("/v1.0/invoke/b/method/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|b| *b == b'z'));
        total += chunk.len();
    }
    assert_eq!(total, big.len());
    let after = (
        peak_rss_kib(a.pid().unwrap()),
        peak_rss_kib(b.pid().unwrap()),
    );
    for (pre, post) in [(before.0, after.0), (before.1, after.1)] {
        assert!(
            post < pre + 40 * 1024,
            "peak RSS grew from {pre} KiB to {post} KiB"
        );
    }
}

#[tokio::test]
async fn default_body_limit_applies_to_invocations() {
    let mesh = Mesh::new();
    let app = TestApp::start(|_| Reply::ok()).await;
    let _b = mesh.callee("b", &app).await;
    let a = mesh.sidecar("a").start().await;
    // Declare a 5 MiB body and wait for the answer before sending it: the sidecar refuses at
    // once (a client still writing could see a broken pipe instead of the 413).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", a.http_port))
        .await
        .unwrap();
    conn.write_all(
        format!(
            "POST /v1.0/invoke/b/method/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n\r\n",
            5 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 12];
    conn.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    assert!(app.requests_to("/x").is_empty());
}

#[tokio::test]
async fn round_robin_failover_and_registry_cleanup() {
    let mesh = Mesh::new();
    let app1 = TestApp::start(|_| Reply::ok().body("one")).await;
    let app2 = TestApp::start(|_| Reply::ok().body("two")).await;
    let mut b1 = mesh.callee("b", &app1).await;
    let _b2 = mesh.callee("b", &app2).await;
    let a = mesh.sidecar("a").start().await;
    let client = http();
    let registry = LocalRegistry::at(mesh.dir());
    assert_eq!(registry.lookup("b").len(), 2);

    let mut answers = Vec::new();
    for _ in 0..6 {
        let resp = client
            .get(a.url("/v1.0/invoke/b/method/who"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        answers.push(resp.text().await.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|a| *a == "one").count(),
        3,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| *a == "two").count(),
        3,
        "{answers:?}"
    );

    // kill -9 one instance: every call still succeeds, on the other one.
    let killed_pid = b1.pid().unwrap();
    b1.kill().await;
    let before = app2.requests_to("/who").len();
    for _ in 0..6 {
        let resp = client
            .post(a.url("/v1.0/invoke/b/method/who"))
            .body("small body, replayable")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), "two");
    }
    assert_eq!(app2.requests_to("/who").len(), before + 6);
    // The dead sidecar's registry entry is gone.
    let lookup = registry.lookup("b");
    assert_eq!(lookup.len(), 1);
    assert_ne!(lookup[0].pid, killed_pid);
    let files: Vec<PathBuf> = std::fs::read_dir(mesh.dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        !files
            .iter()
            .any(|p| p.to_string_lossy().contains(&format!("-{killed_pid}."))),
        "{files:?}"
    );
}

#[tokio::test]
async fn an_instance_whose_app_is_gone_is_skipped() {
    let mesh = Mesh::new();
    let gone = TestApp::start(|_| Reply::ok().body("gone")).await;
    let alive = TestApp::start(|_| Reply::ok().body("alive")).await;
    let _b1 = mesh.callee("b", &gone).await;
    let _b2 = mesh.callee("b", &alive).await;
    let a = mesh.sidecar("a").start().await;
    // The app process stops; its sidecar keeps running.
    drop(gone);
    let client = http();
    for _ in 0..4 {
        let resp = client
            .get(a.url("/v1.0/invoke/b/method/who"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), "alive");
    }
}

#[tokio::test]
async fn graceful_shutdown_unregisters() {
    let mesh = Mesh::new();
    let mut a = mesh.sidecar("leaving").start().await;
    let registry = LocalRegistry::at(mesh.dir());
    let entry = registry.lookup("leaving").pop().expect("registered");
    assert_eq!(entry.http_port, a.http_port);
    assert!(entry.internal_port > 0);
    a.signal(nix::sys::signal::Signal::SIGTERM);
    a.wait().await;
    assert!(registry.lookup("leaving").is_empty());
    assert_eq!(std::fs::read_dir(mesh.dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn retries_a_failing_route_to_success() {
    let mesh = Mesh::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let app = TestApp::start(move |req| {
        if req.path() != "/flaky" {
            // The sidecar's own calls (subscription discovery) are not attempts.
            return Reply::status(404);
        }
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::status(500).body("not yet")
        } else {
            Reply::ok().body("done")
        }
    })
    .await;
    let _b = mesh.callee("b", &app).await;
    let res = resiliency(
        "  policies:\n    retries:\n      three:\n        policy: constant\n        duration: 10ms\n        maxRetries: 5\n  targets:\n    apps:\n      b:\n        retry: three\n",
    );
    let a = mesh.sidecar("a").resources(res.path()).start().await;
    let resp = http()
        .post(a.url("/v1.0/invoke/b/method/flaky"))
        .body("{\"n\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let requests = app.requests_to("/flaky");
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body.as_ref() == b"{\"n\":1}"));
}

#[tokio::test]
async fn bodies_too_large_to_buffer_are_sent_once() {
    let mesh = Mesh::new();
    let app = TestApp::start(|_| Reply::status(500)).await;
    let _b = mesh.callee("b", &app).await;
    let res = resiliency(
        "  policies:\n    retries:\n      many:\n        policy: constant\n        duration: 10ms\n        maxRetries: 5\n  targets:\n    apps:\n      b:\n        retry: many\n",
    );
    let a = mesh
        .sidecar("a")
        .resources(res.path())
        .args(["--max-body-size", "8Mi"])
        .start()
        .await;
    // 2 MiB is over the 1 MiB replay limit: the request streams and is not retried.
    let resp = http()
        .post(a.url("/v1.0/invoke/b/method/big"))
        .body(vec![b'b'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    assert_eq!(app.requests_to("/big").len(), 1);
    // A small body on the same route is retried up to maxRetries.
    let resp = http()
        .post(a.url("/v1.0/invoke/b/method/small"))
        .body("s")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    assert_eq!(app.requests_to("/small").len(), 6);
}

#[tokio::test]
async fn tokens_stay_per_hop() {
    let mesh = Mesh::new();
    let app = TestApp::start(|_| Reply::ok()).await;
    let mut b = mesh
        .sidecar("b")
        .app_port(app.port)
        .env("APP_API_TOKEN", "app-secret")
        .start()
        .await;
    b.wait_ready().await;
    let a = mesh
        .sidecar("a")
        .env("DAPR_API_TOKEN", "api-secret")
        .start()
        .await;
    let client = http();
    let url = a.url("/v1.0/invoke/b/method/guarded");
    assert_eq!(
        client.get(&url).send().await.unwrap().status().as_u16(),
        401
    );
    let resp = client
        .get(&url)
        .header("dapr-api-token", "api-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = app.requests_to("/guarded");
    assert_eq!(seen.len(), 1);
    // The caller's API token is not forwarded; the callee adds its own app token.
    assert_eq!(seen[0].header("dapr-api-token"), Some("app-secret"));
}

#[tokio::test]
async fn app_max_concurrency_bounds_calls_into_the_app() {
    let mesh = Mesh::new();
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (now, max) = (in_flight.clone(), peak.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Router::new().route(
        "/hold",
        get(move || {
            let (now, max) = (now.clone(), max.clone());
            async move {
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                "held"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut b = mesh
        .sidecar("b")
        .app_port(port)
        .args(["--app-max-concurrency", "1"])
        .start()
        .await;
    b.wait_ready().await;
    let a = mesh.sidecar("a").start().await;
    let client = http();
    let calls = (0..4).map(|_| {
        let client = client.clone();
        let url = a.url("/v1.0/invoke/b/method/hold");
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a == "held"), "{answers:?}");
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

/// An app whose `/slow` answers after 30 s and `/fast` at once.
async fn slow_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "slow"
            }),
        )
        .route("/fast", get(|| async { Body::from("fast") }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

#[tokio::test]
async fn timeouts_answer_with_err_direct_invoke() {
    let mesh = Mesh::new();
    let port = slow_app().await;
    let mut b = mesh.sidecar("b").app_port(port).start().await;
    b.wait_ready().await;
    let res = resiliency(
        "  policies:\n    timeouts:\n      quick: 300ms\n  targets:\n    apps:\n      b:\n        timeout: quick\n",
    );
    let a = mesh.sidecar("a").resources(res.path()).start().await;
    let client = http();
    let (status, body) = error_json(
        client
            .get(a.url("/v1.0/invoke/b/method/slow"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        body["message"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    let resp = client
        .get(a.url("/v1.0/invoke/b/method/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "fast");
}

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_half_opens_and_closes() {
    let mesh = Mesh::new();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = failing.clone();
    let app = TestApp::start(move |_| {
        if state.load(Ordering::SeqCst) {
            Reply::status(500)
        } else {
            Reply::ok().body("healthy")
        }
    })
    .await;
    let _b = mesh.callee("b", &app).await;
    let res = resiliency(
        "  policies:\n    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 2s\n        trip: consecutiveFailures >= 3\n  targets:\n    apps:\n      b:\n        circuitBreaker: cb\n",
    );
    let a = mesh.sidecar("a").resources(res.path()).start().await;
    let client = http();
    let url = a.url("/v1.0/invoke/b/method/op");
    for _ in 0..3 {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 500);
    }
    assert_eq!(app.requests_to("/op").len(), 3);
    // Open: answered at once, the app is not called.
    let (status, body) = error_json(client.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 500);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{body}"
    );
    assert_eq!(app.requests_to("/op").len(), 3);
    // After its timeout the breaker lets a probe through; the probe succeeds and it closes.
    failing.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || async {
            client.get(&url).send().await.unwrap().status().as_u16() == 200
        })
        .await
    );
    for _ in 0..5 {
        assert_eq!(
            client.get(&url).send().await.unwrap().status().as_u16(),
            200
        );
    }
}

#[tokio::test]
async fn an_unhealthy_instance_is_skipped() {
    let mesh = Mesh::new();
    let sick = TestApp::start(|req| match req.path() {
        "/healthz" => Reply::status(500),
        _ => Reply::ok().body("sick"),
    })
    .await;
    let well = TestApp::start(|_| Reply::ok().body("well")).await;
    // The sick app's sidecar probes every second and never sees it healthy.
    let _sick_sidecar = mesh
        .sidecar("b")
        .app_port(sick.port)
        .args([
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
            "--app-health-threshold",
            "1",
        ])
        .start()
        .await;
    let _well_sidecar = mesh.callee("b", &well).await;
    let a = mesh.sidecar("a").start().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            !sick.requests_to("/healthz").is_empty()
        })
        .await
    );
    let client = http();
    for _ in 0..6 {
        let resp = client
            .get(a.url("/v1.0/invoke/b/method/work"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), "well");
    }
    assert!(sick.requests_to("/work").is_empty());
}

#[tokio::test]
async fn an_unhealthy_only_instance_answers_err_direct_invoke() {
    let mesh = Mesh::new();
    let sick = TestApp::start(|req| match req.path() {
        "/healthz" => Reply::status(500),
        _ => Reply::ok(),
    })
    .await;
    let _b = mesh
        .sidecar("b")
        .app_port(sick.port)
        .args(["--enable-app-health-check", "--app-health-threshold", "1"])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    let (status, body) = error_json(
        http()
            .get(a.url("/v1.0/invoke/b/method/work"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("app is not in a healthy state"),
        "{body}"
    );
    assert!(sick.requests_to("/work").is_empty());
}

#[tokio::test]
async fn static_name_resolution() {
    let mesh = Mesh::new();
    let app = TestApp::start(|_| Reply::ok().body("static")).await;
    let internal = free_port();
    // The callee registers in a registry nobody else reads.
    let mut b = Sidecar::builder(BIN)
        .app_id("b")
        .resources(mesh.no_components.path())
        .app_port(app.port)
        .args(["--dapr-internal-grpc-port", &internal.to_string()])
        .start()
        .await;
    b.wait_ready().await;
    let config = ResourcesDir::new();
    let config_file = config.write(
        "config.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  nameResolution:\n    component: static\n    configuration:\n      apps:\n        b: [\"127.0.0.1:{internal}\"]\n"
        ),
    );
    let a = mesh
        .sidecar("a")
        .args(["--config", &config_file.display().to_string()])
        .start()
        .await;
    let resp = http()
        .get(a.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "static");
    let resp = http()
        .get(a.url("/v1.0/invoke/c/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
}

#[tokio::test]
async fn external_urls_and_http_endpoints() {
    let mesh = Mesh::new();
    let external = TestApp::start(|req| {
        Reply::ok().body(format!(
            "{} auth={}",
            req.uri,
            req.header("authorization").unwrap_or("-")
        ))
    })
    .await;
    let resources = ResourcesDir::new();
    resources.write(
        "secrets.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: envsecrets\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata: []\n",
    );
    resources.write(
        "endpoint.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: billing\nspec:\n  baseUrl: http://127.0.0.1:{}/base\n  headers:\n  - name: authorization\n    secretKeyRef:\n      name: BILLING_TOKEN\n      key: BILLING_TOKEN\n  - name: x-static\n    value: fixed\nauth:\n  secretStore: envsecrets\n",
            external.port
        ),
    );
    let a = mesh
        .sidecar("a")
        .resources(resources.path())
        .env("BILLING_TOKEN", "Bearer s3cret")
        .start()
        .await;
    let client = http();
    let resp = client
        .get(a.url("/v1.0/invoke/billing/method/invoices?id=4"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "/base/invoices?id=4 auth=Bearer s3cret"
    );
    assert_eq!(
        external.requests_to("/base/invoices")[0].header("x-static"),
        Some("fixed")
    );
    let resp = client
        .get(a.url(&format!(
            "/v1.0/invoke/http://127.0.0.1:{}/method/direct",
            external.port
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "/direct auth=-");
}

/// An HTTPS server with a certificate from a fresh test CA (requiring client certificates from
/// `client_ca` when given); returns its port and the server CA's PEM.
async fn tls_app(client_ca: Option<&TestCa>) -> (u16, String) {
    let ca = TestCa::new("tandem test ca");
    let config = ca.server_config(&["localhost", "127.0.0.1"], client_ca);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let text = format!(
                            "tls {} key={}",
                            req.uri(),
                            req.headers()
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                        );
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(text)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn https_endpoints_and_urls() {
    let mesh = Mesh::new();
    let (port, ca_pem) = tls_app(None).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let resources = ResourcesDir::new();
    resources.write(
        "endpoint.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: secure\nspec:\n  baseUrl: https://localhost:{port}\n  headers:\n  - name: x-api-key\n    value: k1\n"
        ),
    );
    let a = mesh
        .sidecar("a")
        .resources(resources.path())
        .env("SSL_CERT_FILE", &ca_file.display().to_string())
        .start()
        .await;
    let client = http();
    let resp = client
        .get(a.url("/v1.0/invoke/secure/method/v1/items?page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "tls /v1/items?page=2 key=k1");
    let resp = client
        .get(a.url(&format!(
            "/v1.0/invoke/https://127.0.0.1:{port}/method/direct"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "tls /direct key=-");

    // A sidecar that does not trust the CA refuses the server.
    let b = mesh
        .sidecar("b")
        .resources(resources.path())
        .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .start()
        .await;
    let (status, body) = error_json(
        client
            .get(b.url("/v1.0/invoke/secure/method/v1/items"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
}

#[tokio::test]
async fn http_endpoint_client_tls_root_ca_and_client_certificate() {
    let mesh = Mesh::new();
    let client_ca = TestCa::new("client ca");
    let (client_cert, client_key) = client_ca.issue(&["caller"]);
    let (port, server_ca_pem) = tls_app(Some(&client_ca)).await;
    let quote = |pem: &str| serde_json::to_string(pem).unwrap();
    let resources = ResourcesDir::new();
    resources.write(
        "secrets.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: envsecrets\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata: []\n",
    );
    resources.write(
        "endpoints.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: mtls\nspec:\n  baseUrl: https://localhost:{port}\n  clientTLS:\n    rootCA:\n      value: {}\n    certificate:\n      secretKeyRef: {{name: CLIENT_CERT, key: CLIENT_CERT}}\n    privateKey:\n      secretKeyRef: {{name: CLIENT_KEY, key: CLIENT_KEY}}\nauth:\n  secretStore: envsecrets\n---\napiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: anonymous\nspec:\n  baseUrl: https://localhost:{port}\n  clientTLS:\n    rootCA:\n      value: {}\n",
            quote(&server_ca_pem),
            quote(&server_ca_pem)
        ),
    );
    let a = mesh
        .sidecar("a")
        .resources(resources.path())
        .env("CLIENT_CERT", &client_cert.pem())
        .env("CLIENT_KEY", &client_key.serialize_pem())
        .start()
        .await;
    let client = http();
    let resp = client
        .get(a.url("/v1.0/invoke/mtls/method/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "tls /hello key=-");
    // Trusting the server is not enough when it requires a client certificate.
    let (status, body) = error_json(
        client
            .get(a.url("/v1.0/invoke/anonymous/method/hello"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
}

#[tokio::test]
async fn invalid_trip_expression_is_a_startup_error_naming_the_field() {
    let res = resiliency(
        "  policies:\n    circuitBreakers:\n      bad:\n        trip: consecutiveFailures >> 3\n",
    );
    let mut s = Sidecar::builder(BIN).resources(res.path()).spawn();
    let status = tokio::time::timeout(Duration::from_secs(30), s.wait())
        .await
        .expect("exits");
    assert!(!status.success());
    let logs = s.logs();
    assert!(
        logs.contains("spec.policies.circuitBreakers.bad.trip"),
        "{logs}"
    );
}

#[tokio::test]
async fn python_sdk_invoke_method_through_two_sidecars() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/python/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    let mesh = Mesh::new();
    let app = TestApp::start(|req| {
        Reply::json(
            200,
            serde_json::json!({"method": req.method.as_str(), "uri": req.uri, "body": String::from_utf8_lossy(&req.body)}),
        )
    })
    .await;
    let _b = mesh.callee("pyb", &app).await;
    let a = mesh.sidecar("pya").start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/python/invoke_method.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(&script)
            .env("DAPR_HTTP_PORT", a.http_port.to_string())
            .env("DAPR_GRPC_PORT", free_port().to_string())
            .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", "http")
            .env_remove("DAPR_API_TOKEN")
            .output(),
    )
    .await
    .expect("the script finishes")
    .expect("python runs");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = app.requests_to("/orders/place");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("dapr-caller-app-id"), Some("pya"));
}

/// Invocations by path skip the API router but not its bookkeeping: they are counted under
/// their route, as every other API request is.
#[tokio::test]
async fn invocations_by_path_are_counted_under_their_route() {
    let mesh = Mesh::new();
    let app = TestApp::start(|_| Reply::ok()).await;
    let _b = mesh.callee("b", &app).await;
    let a = mesh.sidecar("a").start().await;
    for _ in 0..2 {
        let resp = http()
            .post(a.url("/v1.0/invoke/b/method/counted"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    let text = a.metrics().await;
    assert!(
        text.contains(r#"dapr_http_server_request_count_total{app_id="a",method="POST",path="/v1.0/invoke/{*rest}",status="200"} 2"#),
        "{text}"
    );
}
