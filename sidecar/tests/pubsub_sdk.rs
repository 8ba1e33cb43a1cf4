//! Pub/sub with real client stacks: the official Dapr JS SDK (DaprServer + DaprClient over HTTP)
//! and a Python Flask app using only `requests`. Both run against the real binary with the
//! in-memory pub/sub. Needs `npm ci` in tests/sdk/js and the Python venv at
//! tests/sdk/python/.venv (see the test brief); a missing toolchain fails the test.

use std::path::PathBuf;
use std::time::Duration;

use tandem_testkit::{free_port, ResourcesDir, Sidecar};

fn sdk_dir(lang: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/sdk")
        .join(lang)
}

async fn run_with_sidecar(program: PathBuf, args: Vec<PathBuf>, cwd: PathBuf) {
    let app_port = free_port();
    let resources = ResourcesDir::new();
    resources.write(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec: {type: pubsub.in-memory, version: v1, metadata: []}\n",
    );
    let sc = Sidecar::builder(env!("CARGO_BIN_EXE_tandem"))
        .app_id("sdkapp")
        .app_port(app_port)
        .resources(resources.path())
        .start()
        .await;
    let child = tokio::process::Command::new(&program)
        .args(&args)
        .current_dir(&cwd)
        .env("DAPR_HTTP_PORT", sc.http_port.to_string())
        .env("APP_PORT", app_port.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the SDK program finished in time")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} failed:\nstdout:\n{}\nstderr:\n{}\nsidecar:\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_daprserver_and_daprclient_over_http() {
    let dir = sdk_dir("js");
    assert!(
        dir.join("node_modules/@dapr/dapr").is_dir(),
        "run `npm ci --no-audit --no-fund` in tests/sdk/js first"
    );
    run_with_sidecar(
        PathBuf::from("node"),
        vec![dir.join("pubsub-roundtrip.mjs")],
        dir,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_flask_app_with_requests() {
    let dir = sdk_dir("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "create the venv at tests/sdk/python/.venv (flask, requests)"
    );
    run_with_sidecar(python, vec![dir.join("pubsub_flask_app.py")], dir).await;
}
