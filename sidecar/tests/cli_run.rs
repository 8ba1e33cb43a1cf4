//! `tandem run` through the real binary: multi-app templates (`run -f`), their validation, and
//! single-app run behaviour after the supervisor refactor.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tandem_testkit::{eventually, free_port, http};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// A tiny HTTP app: says hello on start, answers every GET with its app id and the X variable,
/// says bye when interrupted.
const APP_PY: &str = r#"
import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ["APP_ID"] + " " + os.environ.get("X", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("hello from", os.environ["APP_ID"], "dapr port", os.environ["DAPR_HTTP_PORT"], flush=True)
try:
    http.server.HTTPServer(("127.0.0.1", int(os.environ["APP_PORT"])), H).serve_forever()
except KeyboardInterrupt:
    print("bye from", os.environ["APP_ID"], flush=True)
"#;

/// A process started by a test, with everything it prints collected.
struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
    /// The tasks reading stdout and stderr, done at end of file.
    collectors: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("DAPR_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tandem");
        let output = Arc::new(Mutex::new(String::new()));
        let collectors = [
            collect(child.stdout.take(), output.clone()),
            collect(child.stderr.take(), output.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Self {
            child,
            output,
            collectors,
        }
    }

    fn output(&self) -> String {
        self.output.lock().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits for the exit, then for the last lines still in the pipes.
    async fn wait(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("tandem did not exit:\n{}", self.output()))
            .expect("wait");
        for collector in self.collectors.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), collector).await;
        }
        status
    }
}

fn collect(
    stream: Option<impl AsyncRead + Unpin + Send + 'static>,
    into: Arc<Mutex<String>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let stream = stream?;
    Some(tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if std::env::var_os("TANDEM_TEST_LOGS").is_some() {
                eprintln!("[cli] {line}");
            }
            let mut all = into.lock();
            all.push_str(&line);
            all.push('\n');
        }
    }))
}

/// Direct children of `pid`, read from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the parenthesised command: state, ppid, ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Processes whose command line or working directory mentions `dir` (this test's own temporary
/// directory): what a run left behind, even after being re-parented.
fn processes_using(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) || cwd.starts_with(&dir) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

struct Template {
    dir: tempfile::TempDir,
    alpha_port: u16,
    beta_port: u16,
    alpha_http: u16,
}

/// Two python apps, alpha (console output) and beta (app output to file and console, sidecar
/// output to file only), sharing an empty resources directory and an env var from `common`.
fn two_app_template() -> Template {
    let dir = tempfile::tempdir().unwrap();
    for app in ["alpha", "beta"] {
        std::fs::create_dir_all(dir.path().join(app)).unwrap();
        std::fs::write(dir.path().join(app).join("app.py"), APP_PY).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("resources")).unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let (alpha_port, beta_port, alpha_http) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("dapr.yaml"),
        format!(
            r#"version: 1
common:
  resourcesPath: ./resources
  env:
    X: from-common
apps:
  - appID: alpha
    appDirPath: ./alpha
    appPort: {alpha_port}
    daprHTTPPort: {alpha_http}
    command: ["python3", "app.py"]
  - appDirPath: ./beta
    appPort: {beta_port}
    command: ["python3", "app.py"]
    appLogDestination: fileAndConsole
    daprdLogDestination: file
"#
        ),
    )
    .unwrap();
    Template {
        dir,
        alpha_port,
        beta_port,
        alpha_http,
    }
}

fn env_for(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("HOME", dir.join("home")),
        ("TANDEM_REGISTRY_DIR", dir.join("registry")),
    ]
}

async fn app_answers(port: u16, expected: &str) -> bool {
    match http().get(format!("http://127.0.0.1:{port}/")).send().await {
        Ok(r) => r.text().await.is_ok_and(|t| t == expected),
        Err(_) => false,
    }
}

#[tokio::test]
async fn multi_app_run_starts_every_app_prefixes_output_and_stops_all_on_ctrl_c() {
    let t = two_app_template();
    let env = env_for(t.dir.path());
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    // A directory holding dapr.yaml is accepted in place of the file.
    let mut run = Running::start(&["run", "-f", t.dir.path().to_str().unwrap()], &env);

    let up = eventually(Duration::from_secs(60), || async {
        app_answers(t.alpha_port, "alpha from-common").await
            && app_answers(t.beta_port, "beta from-common").await
    })
    .await;
    assert!(up, "both apps answer:\n{}", run.output());
    assert!(
        eventually(Duration::from_secs(10), || async {
            let out = run.output();
            out.contains("== APP - alpha == hello from alpha")
                && out.contains("== APP - beta == hello from beta")
        })
        .await,
        "prefixed app output:\n{}",
        run.output()
    );

    // The sidecar of alpha is on the port the template gave, and knows the CLI and the app.
    let meta: serde_json::Value =
        tandem_testkit::get_json(&format!("http://127.0.0.1:{}/v1.0/metadata", t.alpha_http)).await;
    assert_eq!(meta["id"], "alpha");
    assert_eq!(meta["extended"]["cliPID"], run.pid().to_string());
    assert_eq!(meta["extended"]["appCommand"], "python3 app.py");
    let app_pid: u32 = meta["extended"]["appPID"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let children = children_of(run.pid());
    assert!(children.contains(&app_pid), "the app is the CLI's child");
    assert_eq!(children.len(), 4, "two sidecars and two apps");
    assert!(
        processes_using(t.dir.path()).len() >= 4,
        "the leftover check sees them"
    );

    // beta's sidecar logs go to its file only; its app output to both.
    let logs = t.dir.path().join("beta/.dapr/logs");
    let files: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let app_log = files
        .iter()
        .find(|f| f.starts_with("beta_app_") && f.ends_with(".log"))
        .expect("beta app log file");
    assert!(files.iter().any(|f| f.starts_with("beta_daprd_")));
    assert!(std::fs::read_to_string(logs.join(app_log))
        .unwrap()
        .contains("hello from beta"));
    assert!(!t.dir.path().join("alpha/.dapr/logs").exists());

    kill(Pid::from_raw(run.pid() as i32), Signal::SIGINT).unwrap();
    let status = run.wait().await;
    let out = run.output();
    assert!(status.success(), "exit status {status}:\n{out}");
    // The apps got the interrupt (python's KeyboardInterrupt) and their last words were kept.
    assert!(out.contains("== APP - alpha == bye from alpha"), "{out}");
    assert!(out.contains("== APP - beta == bye from beta"), "{out}");
    for pid in children {
        assert!(!alive(pid), "process {pid} still running after Ctrl-C");
    }
    assert!(processes_using(t.dir.path()).is_empty());
    assert!(!app_answers(t.alpha_port, "alpha from-common").await);
}

#[tokio::test]
async fn multi_app_run_exits_when_every_app_has_exited() {
    let dir = tempfile::tempdir().unwrap();
    for app in ["one", "two"] {
        std::fs::create_dir_all(dir.path().join(app)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("resources")).unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let file = dir.path().join("run.yaml");
    std::fs::write(
        &file,
        r#"version: 1
common:
  resourcesPaths: [./resources]
apps:
  - appDirPath: one
    command: ["sh", "-c", "echo first $APP_ID in $(basename $PWD)"]
  - appDirPath: two
    command: ["sh", "-c", "echo second $APP_ID"]
"#,
    )
    .unwrap();
    let env = env_for(dir.path());
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let mut run = Running::start(&["run", "-f", file.to_str().unwrap()], &env);
    let status = run.wait().await;
    let out = run.output();
    assert!(status.success(), "{out}");
    assert!(out.contains("== APP - one == first one in one"), "{out}");
    assert!(out.contains("== APP - two == second two"), "{out}");
    assert!(processes_using(dir.path()).is_empty());
}

#[tokio::test]
async fn template_errors_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let cases = [
        ("no-version.yaml", "apps:\n  - appDirPath: a\n", "version"),
        (
            "bad-port.yaml",
            "version: 1\napps:\n  - appDirPath: a\n  - appDirPath: a\n    appID: b\n    appPort: eighty\n",
            "apps[1].appPort",
        ),
        (
            "no-dir.yaml",
            "version: 1\napps:\n  - appID: x\n    command: [\"true\"]\n",
            "apps[0].appDirPath",
        ),
        (
            "bad-dest.yaml",
            "version: 1\napps:\n  - appDirPath: a\n    appLogDestination: syslog\n",
            "apps[0].appLogDestination",
        ),
        (
            "bad-resources.yaml",
            "version: 1\ncommon:\n  resourcesPaths: [./nowhere]\napps:\n  - appDirPath: a\n",
            "common.resourcesPaths[0]",
        ),
    ];
    for (name, text, field) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args(["run", "-f", file.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} must fail");
        assert!(stderr.contains(name), "{name}: names the file: {stderr}");
        assert!(
            stderr.contains(field),
            "{name}: names the field {field}: {stderr}"
        );
    }
    // A directory without dapr.yaml.
    let out = Command::new(BIN)
        .args(["run", "-f", dir.path().join("a").to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dapr.yaml"));
}

#[tokio::test]
async fn single_app_run_prefixes_output_and_exits_with_the_apps_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("resources")).unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let env = env_for(dir.path());
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let port = free_port().to_string();
    let resources = dir.path().join("resources");
    let mut run = Running::start(
        &[
            "run",
            "--app-id",
            "solo",
            "--dapr-http-port",
            &port,
            "--resources-path",
            resources.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo hi from $APP_ID on $DAPR_HTTP_PORT; exit 3",
        ],
        &env,
    );
    let status = run.wait().await;
    let out = run.output();
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(
        out.contains(&format!("== APP == hi from solo on {port}")),
        "{out}"
    );
    assert!(
        out.contains("❌  The App process exited with error code: 3"),
        "{out}"
    );
    assert!(out.contains("✅  Exited Dapr successfully"), "{out}");
}

#[tokio::test]
async fn multi_app_run_fails_cleanly_when_an_app_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    for app in ["good", "bad"] {
        std::fs::create_dir_all(dir.path().join(app)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("resources")).unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    std::fs::write(
        dir.path().join("dapr.yaml"),
        "version: 1\ncommon:\n  resourcesPath: ./resources\napps:\n  - appDirPath: good\n    command: [\"sleep\", \"600\"]\n  - appDirPath: bad\n    command: [\"no-such-program-for-tandem\"]\n",
    )
    .unwrap();
    let env = env_for(dir.path());
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let mut run = Running::start(&["run", "-f", dir.path().to_str().unwrap()], &env);
    let status = run.wait().await;
    let out = run.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("no-such-program-for-tandem"), "{out}");
    // The app that did start was stopped with its sidecar.
    assert!(
        out.contains("✅  Exited App \"good\" successfully"),
        "{out}"
    );
    assert!(processes_using(dir.path()).is_empty());
}
