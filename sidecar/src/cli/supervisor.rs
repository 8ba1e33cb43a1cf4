//! One app instance: a `tandem sidecar` child and the app's command beside it. Both `run` (one
//! app) and `run -f` (a template of apps) start and stop apps through this supervisor.

use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::process::{Child, Command};

use super::output::{Forwarder, LogTarget};
use super::sidecar_http::{api_base, SidecarHttp};

/// How long the CLI waits for a sidecar's outbound health after starting it.
pub const SIDECAR_START_LIMIT: Duration = Duration::from_secs(120);

/// How long output still being written after a process exited may take to reach its destination.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Per-request limit for the CLI's own calls to the sidecar (health probe, metadata).
const CONTROL_REQUEST_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error("cannot find the tandem executable: {0}")]
    Executable(std::io::Error),
    #[error("cannot start the sidecar for {app_id}: {source}")]
    SpawnSidecar {
        app_id: String,
        source: std::io::Error,
    },
    #[error("cannot start the app {command:?}: {source}")]
    SpawnApp {
        command: String,
        source: std::io::Error,
    },
    #[error("the sidecar for {app_id} exited before it was ready ({status})")]
    SidecarExited { app_id: String, status: ExitStatus },
    #[error("the sidecar for {app_id} was not ready within {limit:?}")]
    SidecarNotReady { app_id: String, limit: Duration },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// Everything needed to start one app with its sidecar.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub app_id: String,
    /// The words after `tandem sidecar`.
    pub sidecar_args: Vec<String>,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub app_port: Option<u16>,
    pub app_protocol: String,
    pub app_channel_address: String,
    /// Empty: only the sidecar runs.
    pub command: Vec<String>,
    /// The app's working directory (`appDirPath` in a template).
    pub app_dir: Option<PathBuf>,
    /// Extra environment for both the sidecar and the app.
    pub env: Vec<(String, String)>,
    /// The app reads the CLI's stdin (single-app run only).
    pub inherit_stdin: bool,
    pub app_output: LogTarget,
    pub sidecar_output: LogTarget,
    /// Extra `PUT /v1.0/metadata/{key}` entries besides cliPID, appPID and appCommand.
    pub metadata: Vec<(String, String)>,
    /// How long the app and the sidecar may take to stop after a signal before they are killed.
    pub grace: Duration,
    /// Named in status lines when several apps share the console.
    pub label: Option<String>,
}

impl AppSpec {
    fn named(&self, what: &str) -> String {
        match &self.label {
            Some(id) => format!("{what} \"{id}\""),
            None => what.to_string(),
        }
    }
}

/// A running app and its sidecar.
pub struct AppInstance {
    spec: AppSpec,
    sidecar: Child,
    sidecar_output: Option<Forwarder>,
    app: Option<Child>,
    app_output: Option<Forwarder>,
}

/// Why supervision ended.
enum Outcome {
    AppExited(Option<ExitStatus>),
    SidecarExited(Option<ExitStatus>),
    Signal(Signal),
}

impl AppInstance {
    /// Starts the sidecar, waits for its outbound health, records the CLI's pid in its metadata,
    /// then starts the app and records the app's pid and command.
    pub async fn start(spec: AppSpec) -> Result<Self, SupervisorError> {
        let exe = std::env::current_exe().map_err(SupervisorError::Executable)?;
        let app_id = spec.app_id.clone();
        println!(
            "ℹ️  Starting Dapr with id {app_id}. HTTP Port: {}. gRPC Port: {}",
            spec.http_port, spec.grpc_port
        );
        let mut cmd = Command::new(exe);
        cmd.arg("sidecar")
            .args(&spec.sidecar_args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches the CLI (and the app), not the
            // sidecar, which the CLI stops after the app so the app can still use it meanwhile.
            .process_group(0)
            .kill_on_drop(true);
        let mut sidecar = cmd
            .spawn()
            .map_err(|source| SupervisorError::SpawnSidecar {
                app_id: app_id.clone(),
                source,
            })?;
        let sidecar_output = Some(Forwarder::start(
            sidecar.stdout.take(),
            sidecar.stderr.take(),
            spec.sidecar_output.clone(),
        ));
        let client = SidecarHttp::new();
        let base = api_base("127.0.0.1", spec.http_port);
        wait_outbound_ready(&client, &base, &app_id, &mut sidecar).await?;
        println!(
            "✅  Started Dapr with app id \"{app_id}\". HTTP Port: {}. gRPC Port: {}",
            spec.http_port, spec.grpc_port
        );
        put_metadata(&client, &base, "cliPID", &std::process::id().to_string()).await;
        for (key, value) in &spec.metadata {
            put_metadata(&client, &base, key, value).await;
        }

        let mut instance = Self {
            spec,
            sidecar,
            sidecar_output,
            app: None,
            app_output: None,
        };
        if let Some((program, rest)) = instance.spec.command.split_first() {
            let spec = &instance.spec;
            let mut cmd = Command::new(program);
            cmd.args(rest)
                .env("APP_ID", &spec.app_id)
                .env("APP_PROTOCOL", &spec.app_protocol)
                .env("DAPR_HTTP_PORT", spec.http_port.to_string())
                .env("DAPR_GRPC_PORT", spec.grpc_port.to_string())
                .env("DAPR_METRICS_PORT", spec.metrics_port.to_string())
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(if spec.inherit_stdin {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(port) = spec.app_port {
                cmd.env("APP_PORT", port.to_string());
            }
            if spec.app_channel_address != "127.0.0.1" {
                cmd.env("APP_CHANNEL_ADDRESS", &spec.app_channel_address);
            }
            if let Some(dir) = &spec.app_dir {
                cmd.current_dir(dir);
            }
            if !spec.inherit_stdin {
                // Apps that do not read the terminal get the CLI's forwarded signal only, once.
                // (One that does must stay in the terminal's foreground group to read it.)
                cmd.process_group(0);
            }
            let command = spec.command.join(" ");
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(source) => {
                    // Stop the sidecar cleanly (it unregisters itself) rather than kill it.
                    stop_child(&mut instance.sidecar, Signal::SIGTERM, spec.grace).await;
                    return Err(SupervisorError::SpawnApp { command, source });
                }
            };
            instance.app_output = Some(Forwarder::start(
                child.stdout.take(),
                child.stderr.take(),
                spec.app_output.clone(),
            ));
            if let Some(pid) = child.id() {
                put_metadata(&client, &base, "appPID", &pid.to_string()).await;
            }
            put_metadata(&client, &base, "appCommand", &command).await;
            instance.app = Some(child);
        }
        Ok(instance)
    }

    pub fn app_id(&self) -> &str {
        &self.spec.app_id
    }

    /// Runs until the app exits (then stops the sidecar), the sidecar exits (then stops the app),
    /// or `stop` yields a signal (then forwards it to the app and stops the sidecar). Returns the
    /// exit code the CLI should report for this app.
    pub async fn supervise(mut self, stop: impl Future<Output = Signal>) -> u8 {
        let grace = self.spec.grace;
        let outcome = {
            let app_wait = async {
                match self.app.as_mut() {
                    Some(child) => child.wait().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = app_wait => Outcome::AppExited(status),
                status = self.sidecar.wait() => Outcome::SidecarExited(status.ok()),
                sig = stop => Outcome::Signal(sig),
            }
        };
        let code = match outcome {
            Outcome::AppExited(status) => {
                self.drain_app_output().await;
                let code = exit_code(status);
                if code == 0 {
                    println!("✅  Exited {} successfully", self.spec.named("App"));
                } else {
                    println!(
                        "❌  The {} process exited with error code: {code}",
                        self.spec.named("App")
                    );
                }
                stop_child(&mut self.sidecar, Signal::SIGTERM, grace).await;
                println!("✅  Exited {} successfully", self.spec.named("Dapr"));
                code
            }
            Outcome::SidecarExited(status) => {
                let code = exit_code(status);
                let stopped_cleanly = match &self.spec.label {
                    // In a multi-app run `stop --app-id` ends one app by stopping its sidecar.
                    Some(id) if code == 0 => {
                        println!("ℹ️  Dapr \"{id}\" stopped: stopping its app");
                        true
                    }
                    _ => {
                        println!(
                            "❌  The daprd process{} exited with error code: {code}",
                            self.spec
                                .label
                                .as_ref()
                                .map(|id| format!(" of \"{id}\""))
                                .unwrap_or_default(),
                        );
                        false
                    }
                };
                if let Some(child) = self.app.as_mut() {
                    stop_child(child, Signal::SIGTERM, grace).await;
                }
                self.drain_app_output().await;
                if stopped_cleanly {
                    println!("✅  Exited {} successfully", self.spec.named("App"));
                    0
                } else {
                    code.max(1)
                }
            }
            Outcome::Signal(sig) => {
                let mut code = 0;
                if let Some(child) = self.app.as_mut() {
                    code = exit_code(stop_child(child, sig, grace).await);
                    self.drain_app_output().await;
                    println!("✅  Exited {} successfully", self.spec.named("App"));
                }
                stop_child(&mut self.sidecar, Signal::SIGTERM, grace).await;
                println!("✅  Exited {} successfully", self.spec.named("Dapr"));
                code
            }
        };
        if let Some(out) = self.sidecar_output.take() {
            out.finish(OUTPUT_DRAIN_LIMIT).await;
        }
        code
    }

    async fn drain_app_output(&mut self) {
        if let Some(out) = self.app_output.take() {
            out.finish(OUTPUT_DRAIN_LIMIT).await;
        }
    }
}

async fn wait_outbound_ready(
    client: &SidecarHttp,
    base: &str,
    app_id: &str,
    sidecar: &mut Child,
) -> Result<(), SupervisorError> {
    let url = format!("{base}/v1.0/healthz/outbound");
    let probe = async {
        loop {
            match sidecar.try_wait() {
                Ok(Some(status)) => {
                    return Err(SupervisorError::SidecarExited {
                        app_id: app_id.to_string(),
                        status,
                    })
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(SupervisorError::SpawnSidecar {
                        app_id: app_id.to_string(),
                        source,
                    })
                }
            }
            if let Ok(r) = client.get(&url, CONTROL_REQUEST_LIMIT).await {
                if r.status.is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(SIDECAR_START_LIMIT, probe).await {
        Ok(result) => result,
        Err(_) => Err(SupervisorError::SidecarNotReady {
            app_id: app_id.to_string(),
            limit: SIDECAR_START_LIMIT,
        }),
    }
}

/// Best effort: `list` shows what it can when a key is missing.
async fn put_metadata(client: &SidecarHttp, base: &str, key: &str, value: &str) {
    let url = format!("{base}/v1.0/metadata/{key}");
    let _ = client
        .send(
            Method::PUT,
            &url,
            Some("text/plain"),
            Bytes::from(value.to_string()),
            CONTROL_REQUEST_LIMIT,
        )
        .await;
}

pub fn signal_pid(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    kill(Pid::from_raw(pid), signal)
}

/// Sends `signal` and waits; kills the process if it does not exit within `grace`.
pub async fn stop_child(child: &mut Child, signal: Signal, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = signal_pid(pid, signal);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// The shell convention: the exit code, or 128 + the signal that ended the process.
pub fn exit_code(status: Option<ExitStatus>) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
            _ => 1,
        },
        None => 1,
    }
}

/// Resolves with the first SIGINT or SIGTERM the CLI receives.
pub fn termination_signal() -> Result<impl Future<Output = Signal>, SupervisorError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(SupervisorError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SupervisorError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
        }
    })
}
