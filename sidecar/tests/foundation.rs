//! The sidecar process end to end: resources, defaults, health and start-up order, metadata,
//! secrets, the API token, body limits, graceful shutdown, `tandem run` and the `dapr`/`daprd`
//! personalities.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tandem_testkit::{free_port, http, Reply, ResourcesDir, Sidecar, TestApp};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

fn component(name: &str, component_type: &str, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {component_type}\n  version: v1\n  metadata: []\n{extra}"
    )
}

async fn metadata(sidecar: &Sidecar) -> Value {
    tandem_testkit::get_json(&sidecar.url("/v1.0/metadata")).await
}

/// Runs the binary to completion (it must exit on its own) and returns (code, stdout+stderr).
async fn run_to_exit(program: &str, args: &[&str], home: &std::path::Path) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(program)
            .args(args)
            .env("HOME", home)
            .env_remove("DAPR_API_TOKEN")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("process exits")
    .expect("process runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn embedded_defaults_appear_in_metadata() {
    let sidecar = Sidecar::builder(BIN).app_id("defaults").start().await;
    let md = metadata(&sidecar).await;
    assert_eq!(md["id"], "defaults");
    let components = md["components"].as_array().expect("components");
    let names: Vec<(&str, &str)> = components
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert!(names.contains(&("statestore", "state.in-memory")), "{md}");
    assert!(names.contains(&("pubsub", "pubsub.in-memory")), "{md}");
    assert!(sidecar.logs().contains("built-in components"));
}

#[tokio::test]
async fn dapr_components_dir_in_home_is_used() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".dapr/components");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("env.yaml"),
        component("from-dapr-home", "secretstores.local.env", ""),
    )
    .unwrap();
    let sidecar = Sidecar::builder(BIN).home(home.path()).start().await;
    let md = metadata(&sidecar).await;
    assert_eq!(md["components"][0]["name"], "from-dapr-home", "{md}");
    assert_eq!(md["components"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn scopes_exclude_components_for_other_apps() {
    let res = ResourcesDir::new();
    res.write(
        "a.yaml",
        &component("mine", "secretstores.local.env", "scopes: [scoped-app]\n"),
    );
    res.write(
        "b.yaml",
        &component(
            "theirs",
            "secretstores.local.env",
            "scopes: [someone-else]\n",
        ),
    );
    let sidecar = Sidecar::builder(BIN)
        .app_id("scoped-app")
        .resources(res.path())
        .start()
        .await;
    let md = metadata(&sidecar).await;
    let names: Vec<&str> = md["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mine"]);
}

async fn start_fails_naming(files: &[(&str, &str)], must_mention: &[&str]) {
    let res = ResourcesDir::new();
    for (name, text) in files {
        res.write(name, text);
    }
    let home = tempfile::tempdir().unwrap();
    let dir = res.path().display().to_string();
    let port = free_port().to_string();
    let (code, out) = run_to_exit(
        BIN,
        &[
            "sidecar",
            "--app-id",
            "bad",
            "--dapr-http-port",
            &port,
            "--resources-path",
            &dir,
        ],
        home.path(),
    )
    .await;
    assert_ne!(code, 0, "must fail:\n{out}");
    for needle in must_mention {
        assert!(out.contains(needle), "output lacks {needle:?}:\n{out}");
    }
}

#[tokio::test]
async fn malformed_yaml_fails_naming_the_file() {
    start_fails_naming(
        &[(
            "broken.yaml",
            "kind: Component\nmetadata: {name: x\nspec: [",
        )],
        &["broken.yaml", "not valid YAML"],
    )
    .await;
}

#[tokio::test]
async fn unknown_type_fails_naming_the_file_and_supported_types() {
    start_fails_naming(
        &[("odd.yaml", &component("odd", "state.cassandra-ish", ""))],
        &[
            "odd.yaml",
            "spec.type",
            "state.cassandra-ish",
            "secretstores.local.env",
        ],
    )
    .await;
}

#[tokio::test]
async fn duplicate_names_fail_naming_both_files() {
    start_fails_naming(
        &[
            ("one.yaml", &component("same", "secretstores.local.env", "")),
            ("two.yaml", &component("same", "secretstores.local.env", "")),
        ],
        &["one.yaml", "two.yaml", "duplicate"],
    )
    .await;
}

#[tokio::test]
async fn invalid_field_fails_naming_the_field() {
    start_fails_naming(
        &[(
            "timeout.yaml",
            &component("t", "secretstores.local.env", "")
                .replace("version: v1", "version: v1\n  initTimeout: soon"),
        )],
        &["timeout.yaml", "spec.initTimeout"],
    )
    .await;
}

#[tokio::test]
async fn component_init_failure_is_fatal_unless_ignored() {
    let missing = component("files", "secretstores.local.file", "").replace(
        "metadata: []",
        "metadata:\n  - name: secretsFile\n    value: /nonexistent/secrets.json",
    );
    start_fails_naming(
        &[("files.yaml", &missing)],
        &["files.yaml", "files", "secretsFile"],
    )
    .await;

    let res = ResourcesDir::new();
    res.write(
        "files.yaml",
        &missing.replace("version: v1", "version: v1\n  ignoreErrors: true"),
    );
    let sidecar = Sidecar::builder(BIN).resources(res.path()).start().await;
    let md = metadata(&sidecar).await;
    assert!(md.get("components").is_none(), "{md}");
}

#[tokio::test]
async fn secret_key_ref_and_env_ref_resolve() {
    let res = ResourcesDir::new();
    let secrets = res.write(
        "secrets.json",
        r#"{"db": {"password": "s3cret"}, "plain": "p"}"#,
    );
    // An env store exposes TANDEM_TEST_SECRETS_PATH; the file store reads its path from there
    // through secretKeyRef, and a second file store through envRef.
    res.write(
        "1-env.yaml",
        &component("envsecrets", "secretstores.local.env", ""),
    );
    res.write(
        "2-file.yaml",
        &component("filesecrets", "secretstores.local.file", "auth:\n  secretStore: envsecrets\n")
            .replace(
                "metadata: []",
                "metadata:\n  - name: secretsFile\n    secretKeyRef:\n      name: TANDEM_TEST_SECRETS_PATH\n      key: TANDEM_TEST_SECRETS_PATH\n  - name: nestedSeparator\n    value: \".\"",
            ),
    );
    res.write(
        "3-file.yaml",
        &component("envrefsecrets", "secretstores.local.file", "").replace(
            "metadata: []",
            "metadata:\n  - name: secretsFile\n    envRef: TANDEM_TEST_SECRETS_PATH",
        ),
    );
    let sidecar = Sidecar::builder(BIN)
        .resources(res.path())
        .env("TANDEM_TEST_SECRETS_PATH", &secrets.display().to_string())
        .start()
        .await;
    let v: Value =
        tandem_testkit::get_json(&sidecar.url("/v1.0/secrets/filesecrets/db.password")).await;
    assert_eq!(v, serde_json::json!({"db.password": "s3cret"}));
    let v: Value =
        tandem_testkit::get_json(&sidecar.url("/v1.0/secrets/envrefsecrets/db:password")).await;
    assert_eq!(v, serde_json::json!({"db:password": "s3cret"}));
}

#[tokio::test]
async fn secrets_api_status_codes_and_scopes() {
    let res = ResourcesDir::new();
    let secrets = res.write("secrets.json", r#"{"a": "1", "b": "2", "c": "3"}"#);
    res.write(
        "file.yaml",
        &component("store", "secretstores.local.file", "").replace(
            "metadata: []",
            &format!(
                "metadata:\n  - name: secretsFile\n    value: {}",
                secrets.display()
            ),
        ),
    );
    let config = res.write(
        "config.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: cfg}\nspec:\n  secrets:\n    scopes:\n    - storeName: store\n      defaultAccess: allow\n      deniedSecrets: [c]\n",
    );
    let sidecar = Sidecar::builder(BIN)
        .resources(res.path())
        .args(["--config", &config.display().to_string()])
        .start()
        .await;
    let client = http();
    let get = |path: &str| client.get(sidecar.url(path)).send();

    let resp = get("/v1.0/secrets/store/a").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        serde_json::json!({"a": "1"})
    );

    let resp = get("/v1.0/secrets/store/c").await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "ERR_PERMISSION_DENIED"
    );

    let resp = get("/v1.0/secrets/nope/a").await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "ERR_SECRET_STORE_NOT_FOUND"
    );

    let resp = get("/v1.0/secrets/store/missing").await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "ERR_SECRET_GET"
    );

    let bulk: Value = get("/v1.0/secrets/store/bulk")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        bulk,
        serde_json::json!({"a": {"a": "1"}, "b": {"b": "2"}}),
        "denied secrets are left out of bulk"
    );

    let empty = ResourcesDir::new();
    let bare = Sidecar::builder(BIN).resources(empty.path()).start().await;
    let resp = client
        .get(bare.url("/v1.0/secrets/store/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "ERR_SECRET_STORES_NOT_CONFIGURED"
    );
}

#[tokio::test]
async fn api_token_is_enforced_and_healthz_is_exempt() {
    let empty = ResourcesDir::new();
    let sidecar = Sidecar::builder(BIN)
        .resources(empty.path())
        .env("DAPR_API_TOKEN", "let-me-in")
        .start()
        .await;
    let client = http();
    let resp = client
        .get(sidecar.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap().trim(), "invalid api token");
    let resp = client
        .get(sidecar.url("/v1.0/metadata"))
        .header("dapr-api-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(sidecar.url("/v1.0/metadata"))
        .header("dapr-api-token", "let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        let resp = client.get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 204, "{path}");
    }
}

#[tokio::test]
async fn app_token_is_sent_to_the_app() {
    let app = TestApp::start(|_| Reply::ok()).await;
    let empty = ResourcesDir::new();
    let _sidecar = Sidecar::builder(BIN)
        .resources(empty.path())
        .app_port(app.port)
        .env("APP_API_TOKEN", "app-secret")
        .args([
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
        ])
        .start()
        .await;
    let probes = app
        .wait_for(1, Duration::from_secs(10), |r| r.path() == "/healthz")
        .await;
    assert!(!probes.is_empty(), "health probe reached the app");
    assert_eq!(probes[0].header("dapr-api-token"), Some("app-secret"));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let empty = ResourcesDir::new();
    let sidecar = Sidecar::builder(BIN)
        .resources(empty.path())
        .args(["--max-body-size", "1Ki"])
        .start()
        .await;
    let client = http();
    let resp = client
        .put(sidecar.url("/v1.0/metadata/big"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "ERR_BODY_TOO_LARGE"
    );

    // A chunked body (no Content-Length) is cut off at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'y'; 512])).collect();
    let resp = client
        .put(sidecar.url("/v1.0/metadata/chunked"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    let resp = client
        .put(sidecar.url("/v1.0/metadata/small"))
        .body("fits")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let md = metadata(&sidecar).await;
    assert_eq!(md["extended"]["small"], "fits");
    assert!(md["extended"].get("big").is_none());
}

#[tokio::test]
async fn start_up_order_outbound_first_then_ready_when_the_app_listens() {
    let app_port = free_port();
    let empty = ResourcesDir::new();
    let sidecar = Sidecar::builder(BIN)
        .resources(empty.path())
        .app_port(app_port)
        .start()
        .await;
    let client = http();
    let resp = client
        .get(sidecar.url("/v1.0/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errorCode"],
        "ERR_HEALTH_NOT_READY"
    );
    assert!(sidecar
        .logs()
        .contains(&format!("waiting on port {app_port}")));

    let _app = TestApp::start_on(app_port, |_| Reply::ok()).await;
    let ready = tandem_testkit::eventually(Duration::from_secs(10), || async {
        client
            .get(sidecar.url("/v1.0/healthz"))
            .send()
            .await
            .map(|r| r.status() == 204)
            .unwrap_or(false)
    })
    .await;
    assert!(ready, "healthz turns 204 once the app listens");
    let resp = client
        .get(sidecar.url("/v1.0/healthz?appid=other"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let md = metadata(&sidecar).await;
    assert_eq!(md["appConnectionProperties"]["port"], app_port);
}

#[tokio::test]
async fn shutdown_api_stops_the_sidecar() {
    let empty = ResourcesDir::new();
    let mut sidecar = Sidecar::builder(BIN).resources(empty.path()).start().await;
    let resp = http()
        .post(sidecar.url("/v1.0/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let status = tokio::time::timeout(Duration::from_secs(10), sidecar.wait())
        .await
        .expect("exits after /v1.0/shutdown");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let empty = ResourcesDir::new();
    let mut sidecar = Sidecar::builder(BIN)
        .resources(empty.path())
        .args(["--dapr-graceful-shutdown-seconds", "10"])
        .start()
        .await;
    // A request whose body arrives slowly is in flight when SIGTERM comes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let request = tokio::spawn(
        http()
            .put(sidecar.url("/v1.0/metadata/slow"))
            .body(body)
            .send(),
    );
    tx.send(Ok(b"first half, ".to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(Ok(b"second half".to_vec())).await.unwrap();
    drop(tx);
    let resp = request
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 204);
    let status = tokio::time::timeout(Duration::from_secs(15), sidecar.wait())
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "{}", sidecar.logs());
    assert!(sidecar.logs().contains("received SIGTERM"));
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn unknown_flags_are_named() {
    let home = tempfile::tempdir().unwrap();
    let (code, out) = run_to_exit(
        BIN,
        &["sidecar", "--app-id", "x", "--frobnicate", "1"],
        home.path(),
    )
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("--frobnicate"), "{out}");
}

#[tokio::test]
async fn logs_can_be_json() {
    let empty = ResourcesDir::new();
    let sidecar = Sidecar::builder(BIN)
        .resources(empty.path())
        .arg("--log-as-json")
        .start()
        .await;
    let logs = sidecar.logs();
    let line = logs
        .lines()
        .find(|l| !l.trim().is_empty())
        .expect("a log line");
    let v: Value = serde_json::from_str(line).expect("JSON log line");
    assert!(
        v.get("level").is_some() && v.get("message").is_some(),
        "{v}"
    );
}

#[tokio::test]
async fn tandem_run_passes_the_environment_and_the_exit_code() {
    let home = tempfile::tempdir().unwrap();
    let empty = ResourcesDir::new();
    let dir = empty.path().display().to_string();
    let (code, out) = run_to_exit(
        BIN,
        &[
            "run", "--app-id", "envcheck", "--app-port", "4321", "--resources-path", &dir, "--",
            "sh", "-c", "echo \"ids=$APP_ID port=$APP_PORT http=$DAPR_HTTP_PORT grpc=$DAPR_GRPC_PORT proto=$APP_PROTOCOL\"; exit 7",
        ],
        home.path(),
    )
    .await;
    assert_eq!(code, 7, "{out}");
    assert!(
        out.contains("== APP == ids=envcheck port=4321 http="),
        "{out}"
    );
    assert!(out.contains("proto=http"), "{out}");
    assert!(!out.contains("http= "), "DAPR_HTTP_PORT is set: {out}");
    assert!(
        out.contains("The App process exited with error code: 7"),
        "{out}"
    );
}

#[tokio::test]
async fn dapr_and_daprd_names_work() {
    let bin_dir = tempfile::tempdir().unwrap();
    let daprd = bin_dir.path().join("daprd");
    let dapr = bin_dir.path().join("dapr");
    std::os::unix::fs::symlink(BIN, &daprd).unwrap();
    std::os::unix::fs::symlink(BIN, &dapr).unwrap();
    let home = tempfile::tempdir().unwrap();
    let empty = ResourcesDir::new();
    let dir = empty.path().display().to_string();

    // daprd with Go-style single-dash flags, as scripts written for Dapr call it.
    let port = free_port();
    let mut child = Command::new(&daprd)
        .args([
            "-app-id",
            "legacy",
            "-dapr-http-port",
            &port.to_string(),
            "-resources-path",
            &dir,
        ])
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = http();
    let up = tandem_testkit::eventually(Duration::from_secs(10), || async {
        client
            .get(format!("http://127.0.0.1:{port}/v1.0/metadata"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(up, "daprd personality serves the API");
    let md: Value =
        tandem_testkit::get_json(&format!("http://127.0.0.1:{port}/v1.0/metadata")).await;
    assert_eq!(md["id"], "legacy");
    child.kill().await.unwrap();

    let (code, out) = run_to_exit(
        dapr.to_str().unwrap(),
        &[
            "run",
            "--app-id",
            "viadapr",
            "--resources-path",
            &dir,
            "--",
            "sh",
            "-c",
            "echo hello",
        ],
        home.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Started Dapr with app id \"viadapr\". HTTP Port: "),
        "{out}"
    );
    assert!(out.contains("You're up and running!"), "{out}");
    assert!(out.contains("== APP == hello"), "{out}");
    assert!(out.contains("Exited App successfully"), "{out}");
}

#[tokio::test]
async fn prometheus_metrics_count_api_requests() {
    let empty = ResourcesDir::new();
    let sidecar = Sidecar::builder(BIN).resources(empty.path()).start().await;
    metadata(&sidecar).await;
    let text = sidecar.metrics().await;
    assert!(
        text.contains(r#"dapr_http_server_request_count_total{app_id="testapp",method="GET",path="/v1.0/metadata",status="200"} 1"#),
        "{text}"
    );
}

/// The binary loads only libc (and libgcc_s for unwinding): every other shared library (libm,
/// libz, libssl) would add resident pages to every idle sidecar.
#[test]
fn binary_loads_only_libc() {
    let out = std::process::Command::new("readelf")
        .args(["-d", BIN])
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -d {BIN} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.strip_suffix(']'))
        .collect();
    assert!(!needed.is_empty(), "no NEEDED entries in:\n{text}");
    for lib in &needed {
        assert!(
            ["libc.so", "libgcc_s.so", "ld-linux"]
                .iter()
                .any(|allowed| lib.starts_with(allowed)),
            "the binary needs {lib}; all it needs: {needed:?}"
        );
    }
}
