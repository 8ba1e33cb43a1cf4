//! Starting the real binary.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::free_port;

/// A temporary directory of resource YAML files.
pub struct ResourcesDir {
    dir: tempfile::TempDir,
}

impl ResourcesDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Writes `name` (e.g. `statestore.yaml`) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write resource");
        path
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for ResourcesDir {
    fn default() -> Self {
        Self::new()
    }
}

pub struct SidecarBuilder {
    binary: PathBuf,
    app_id: String,
    http_port: u16,
    metrics_port: u16,
    app_port: Option<u16>,
    resources: Vec<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    home: Option<PathBuf>,
}

impl SidecarBuilder {
    pub fn app_id(mut self, id: &str) -> Self {
        self.app_id = id.to_string();
        self
    }

    pub fn app_port(mut self, port: u16) -> Self {
        self.app_port = Some(port);
        self
    }

    pub fn resources(mut self, path: &Path) -> Self {
        self.resources.push(path.to_path_buf());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs with `HOME` set to `dir` (for the ~/.tandem and ~/.dapr defaults). By default HOME is
    /// an empty temporary directory so the machine's own ~/.dapr never leaks into a test.
    pub fn home(mut self, dir: &Path) -> Self {
        self.home = Some(dir.to_path_buf());
        self
    }

    /// The full argument list the sidecar will get.
    pub fn command_line(&self) -> Vec<String> {
        let mut args = vec![
            "sidecar".to_string(),
            "--app-id".into(),
            self.app_id.clone(),
            "--dapr-http-port".into(),
            self.http_port.to_string(),
            "--dapr-listen-addresses".into(),
            "127.0.0.1".into(),
            "--metrics-port".into(),
            self.metrics_port.to_string(),
        ];
        if let Some(p) = self.app_port {
            args.extend(["--app-port".into(), p.to_string()]);
        }
        for r in &self.resources {
            args.extend(["--resources-path".into(), r.display().to_string()]);
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(self) -> Sidecar {
        let home = match &self.home {
            Some(h) => h.clone(),
            None => tempfile::tempdir().expect("temp home").keep(),
        };
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.command_line())
            .env("HOME", &home)
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tandem");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut collectors = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            collectors.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("TANDEM_TEST_LOGS").is_some() {
                        eprintln!("[sidecar] {line}");
                    }
                    let mut all = logs.lock();
                    all.push_str(&line);
                    all.push('\n');
                }
            }));
        }
        Sidecar {
            child,
            http_port: self.http_port,
            metrics_port: self.metrics_port,
            app_id: self.app_id,
            logs,
            collectors,
        }
    }

    /// Starts the process and waits until `/v1.0/healthz/outbound` answers 204.
    pub async fn start(self) -> Sidecar {
        let mut sidecar = self.spawn();
        sidecar.wait_outbound().await;
        sidecar
    }
}

/// A running `tandem` process; killed when dropped.
pub struct Sidecar {
    child: Child,
    pub http_port: u16,
    pub metrics_port: u16,
    pub app_id: String,
    logs: Arc<Mutex<String>>,
    /// The tasks copying stdout and stderr into `logs`.
    collectors: Vec<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    pub fn builder(binary: impl Into<PathBuf>) -> SidecarBuilder {
        SidecarBuilder {
            binary: binary.into(),
            app_id: "testapp".into(),
            http_port: free_port(),
            metrics_port: free_port(),
            app_port: None,
            resources: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            home: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The Prometheus text of the metrics endpoint.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let resp = reqwest::get(&url).await.expect("metrics endpoint");
        resp.text().await.expect("metrics text")
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn wait_for(&mut self, path: &str) {
        let client = crate::http();
        for _ in 0..1500 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tandem exited with {status} before {path} was 204:\n{}",
                    self.logs()
                );
            }
            if let Ok(resp) = client.get(self.url(path)).send().await {
                if resp.status().as_u16() == 204 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{path} never became 204:\n{}", self.logs());
    }

    pub async fn wait_outbound(&mut self) {
        self.wait_for("/v1.0/healthz/outbound").await;
    }

    pub async fn wait_ready(&mut self) {
        self.wait_for("/v1.0/healthz").await;
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Waits for the process to exit and for what it printed to be in [`Sidecar::logs`] (the
    /// last lines can still be in the pipes when the process is gone).
    pub async fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().await.expect("wait for tandem");
        for collector in self.collectors.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), collector).await;
        }
        status
    }

    /// SIGKILL, as in a crash.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
