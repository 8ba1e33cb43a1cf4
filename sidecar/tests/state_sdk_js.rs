//! The official Dapr JS SDK (`@dapr/dapr`, HTTP protocol) as a client of the state API:
//! `tests/sdk/js/state.mjs` must exit 0 against the real binary.

use std::path::PathBuf;
use std::process::Command;

use tandem_testkit::{RedisServer, ResourcesDir, Sidecar};

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/js")
}

/// `None` (with a message) when node is not installed; installs the SDK when it is missing.
fn prepare() -> Option<PathBuf> {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: `node` is not installed, so the JS SDK test cannot run");
        return None;
    }
    let dir = sdk_dir();
    if !dir.join("node_modules/@dapr/dapr").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("run npm ci");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    Some(dir)
}

async fn run_script(dir: PathBuf, sidecar: &Sidecar) {
    let port = sidecar.http_port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("state.mjs")
            .current_dir(dir)
            .env("DAPR_HTTP_PORT", port)
            .env("STATE_STORE", "statestore")
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "state.mjs failed ({}):\n{stdout}\n{stderr}\nsidecar logs:\n{}",
        out.status,
        sidecar.logs()
    );
    assert!(stdout.contains("all state checks passed"), "{stdout}");
}

fn component(ty: &str, metadata: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: {ty}\n  version: v1\n  metadata:{metadata}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_state_in_memory() {
    let Some(dir) = prepare() else { return };
    let resources = ResourcesDir::new();
    resources.write("statestore.yaml", &component("state.in-memory", " []"));
    let sidecar = Sidecar::builder(BIN)
        .app_id("js-state")
        .resources(resources.path())
        .start()
        .await;
    run_script(dir, &sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_state_redis() {
    let Some(dir) = prepare() else { return };
    let redis = RedisServer::start().await;
    let resources = ResourcesDir::new();
    resources.write(
        "statestore.yaml",
        &component(
            "state.redis",
            &format!("\n  - name: redisHost\n    value: \"{}\"", redis.address()),
        ),
    );
    let sidecar = Sidecar::builder(BIN)
        .app_id("js-state")
        .resources(resources.path())
        .start()
        .await;
    run_script(dir, &sidecar).await;
}
