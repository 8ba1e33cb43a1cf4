//! Every example in examples/ runs to success under `tandem run`.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[tokio::test]
async fn hello_python_runs_on_the_embedded_defaults() {
    let home = tempfile::tempdir().unwrap();
    let app = examples_dir().join("hello-python/app.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .args(["run", "--app-id", "hello", "--", "python3"])
            .arg(&app)
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("example finishes")
    .expect("tandem runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("== APP == counter is now 1"), "{text}");
}
