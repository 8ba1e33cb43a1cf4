//! `tandem run` / `dapr run`: start a sidecar, then the app beside it, stream both outputs, and
//! stop the sidecar when the app exits, exiting with the app's code.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::flags::{SidecarArgs, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sidecar: SidecarArgs,

    /// The app's command line (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Error)]
enum RunError {
    #[error("cannot find the tandem executable: {0}")]
    Executable(std::io::Error),
    #[error("cannot start the sidecar: {0}")]
    SpawnSidecar(std::io::Error),
    #[error("cannot start the app {command:?}: {source}")]
    SpawnApp {
        command: String,
        source: std::io::Error,
    },
    #[error("the sidecar exited before it was ready ({0})")]
    SidecarExited(std::process::ExitStatus),
    #[error("no free port: {0}")]
    Port(std::io::Error),
}

/// The flag words given to `run`, without the app's command, to pass on to the sidecar.
fn sidecar_flag_words(command_len: usize) -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut flags = args[..args.len().saturating_sub(command_len)].to_vec();
    if flags.last().map(String::as_str) == Some("--") {
        flags.pop();
    }
    flags
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The given port, else the default when free, else any free port.
fn choose_port(given: Option<u16>, default: u16) -> Result<u16, RunError> {
    match given {
        Some(p) => Ok(p),
        None if port_is_free(default) => Ok(default),
        None => free_port().map_err(RunError::Port),
    }
}

fn random_app_id() -> String {
    const ADJECTIVES: &[&str] = &[
        "brave", "calm", "eager", "gentle", "lively", "quiet", "swift",
    ];
    const NOUNS: &[&str] = &[
        "otter", "heron", "lynx", "maple", "comet", "harbor", "falcon",
    ];
    let n = rand::random::<u32>() as usize;
    format!(
        "{}-{}-{:04x}",
        ADJECTIVES[n % ADJECTIVES.len()],
        NOUNS[(n / 7) % NOUNS.len()],
        n & 0xffff
    )
}

fn forward_lines(stream: impl AsyncRead + Unpin + Send + 'static, prefix: &'static str) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{prefix}{line}");
        }
    });
}

async fn wait_outbound_ready(port: u16, sidecar: &mut Child) -> Result<(), RunError> {
    let url = format!("127.0.0.1:{port}");
    loop {
        if let Some(status) = sidecar.try_wait().map_err(RunError::SpawnSidecar)? {
            return Err(RunError::SidecarExited(status));
        }
        if healthz_outbound(&url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bare HTTP/1.1 probe of `/v1.0/healthz/outbound` (no client library needed for one request).
async fn healthz_outbound(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request =
        format!("GET /v1.0/healthz/outbound HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 204")
}

async fn put_metadata(addr: &str, key: &str, value: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let mut request = format!(
        "PUT /v1.0/metadata/{key} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        value.len()
    );
    if let Ok(token) = std::env::var("DAPR_API_TOKEN") {
        request.push_str(&format!("dapr-api-token: {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(value);
    let _ = stream.write_all(request.as_bytes()).await;
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink).await;
}

fn signal_child(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Sends SIGTERM and waits; kills the process if it does not exit within `grace`.
async fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    signal_child(child, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

fn exit_code(status: Option<std::process::ExitStatus>) -> u8 {
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

pub async fn run(args: RunArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("❌  {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(args: RunArgs) -> Result<u8, RunError> {
    let sc = &args.sidecar;
    let app_id = if sc.app_id.is_empty() {
        random_app_id()
    } else {
        sc.app_id.clone()
    };
    let http_port = choose_port(sc.dapr_http_port, DEFAULT_HTTP_PORT)?;
    let grpc_port = choose_port(sc.accepted.dapr_grpc_port, DEFAULT_GRPC_PORT)?;
    let metrics_port = choose_port(sc.metrics_port, DEFAULT_METRICS_PORT)?;

    let mut sidecar_args = vec!["sidecar".to_string()];
    sidecar_args.extend(sidecar_flag_words(args.command.len()));
    if sc.app_id.is_empty() {
        sidecar_args.extend(["--app-id".into(), app_id.clone()]);
    }
    for (given, flag, port) in [
        (sc.dapr_http_port, "--dapr-http-port", http_port),
        (sc.accepted.dapr_grpc_port, "--dapr-grpc-port", grpc_port),
        (sc.metrics_port, "--metrics-port", metrics_port),
    ] {
        if given.is_none() {
            sidecar_args.extend([flag.to_string(), port.to_string()]);
        }
    }
    let exe = std::env::current_exe().map_err(RunError::Executable)?;
    println!("ℹ️  Starting Dapr with id {app_id}. HTTP Port: {http_port}. gRPC Port: {grpc_port}");
    let mut sidecar = Command::new(exe)
        .args(&sidecar_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(RunError::SpawnSidecar)?;
    if let Some(out) = sidecar.stdout.take() {
        forward_lines(out, "");
    }
    if let Some(err) = sidecar.stderr.take() {
        forward_lines(err, "");
    }
    wait_outbound_ready(http_port, &mut sidecar).await?;
    println!(
        "✅  Started Dapr with app id \"{app_id}\". HTTP Port: {http_port}. gRPC Port: {grpc_port}"
    );
    let api_addr = format!("127.0.0.1:{http_port}");
    put_metadata(&api_addr, "cliPID", &std::process::id().to_string()).await;

    let mut app = match args.command.split_first() {
        None => None,
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest)
                .env("APP_ID", &app_id)
                .env("APP_PROTOCOL", &sc.app_protocol)
                .env("DAPR_HTTP_PORT", http_port.to_string())
                .env("DAPR_GRPC_PORT", grpc_port.to_string())
                .env("DAPR_METRICS_PORT", metrics_port.to_string())
                .stdin(Stdio::inherit())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(port) = sc.app_port {
                cmd.env("APP_PORT", port.to_string());
            }
            if sc.app_channel_address != "127.0.0.1" {
                cmd.env("APP_CHANNEL_ADDRESS", &sc.app_channel_address);
            }
            let mut child = cmd.spawn().map_err(|source| RunError::SpawnApp {
                command: args.command.join(" "),
                source,
            })?;
            if let Some(out) = child.stdout.take() {
                forward_lines(out, "== APP == ");
            }
            if let Some(err) = child.stderr.take() {
                forward_lines(err, "== APP == ");
            }
            if let Some(pid) = child.id() {
                put_metadata(&api_addr, "appPID", &pid.to_string()).await;
            }
            put_metadata(&api_addr, "appCommand", &args.command.join(" ")).await;
            Some(child)
        }
    };
    println!("✅  You're up and running! Both Dapr and your app logs will appear here.");

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::SpawnSidecar)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::SpawnSidecar)?;
    let grace = sc.graceful_shutdown() + Duration::from_secs(5);

    let app_wait = async {
        match app.as_mut() {
            Some(child) => child.wait().await.ok(),
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        status = app_wait => Outcome::AppExited(status),
        status = sidecar.wait() => Outcome::SidecarExited(status.ok()),
        _ = term.recv() => Outcome::Signal(Signal::SIGTERM),
        _ = int.recv() => Outcome::Signal(Signal::SIGINT),
    };

    let code = match outcome {
        Outcome::AppExited(status) => {
            let code = exit_code(status);
            if code == 0 {
                println!("✅  Exited App successfully");
            } else {
                println!("❌  The App process exited with error code: {code}");
            }
            stop(&mut sidecar, grace).await;
            println!("✅  Exited Dapr successfully");
            code
        }
        Outcome::SidecarExited(status) => {
            println!(
                "❌  The daprd process exited with error code: {}",
                exit_code(status)
            );
            if let Some(child) = app.as_mut() {
                stop(child, grace).await;
            }
            exit_code(status).max(1)
        }
        Outcome::Signal(sig) => {
            println!("ℹ️  terminated signal received: shutting down");
            let mut code = 0;
            if let Some(child) = app.as_mut() {
                signal_child(child, sig);
                let status = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status.ok(),
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await.ok()
                    }
                };
                code = exit_code(status);
                println!("✅  Exited App successfully");
            }
            stop(&mut sidecar, grace).await;
            println!("✅  Exited Dapr successfully");
            code
        }
    };
    Ok(code)
}

enum Outcome {
    AppExited(Option<std::process::ExitStatus>),
    SidecarExited(Option<std::process::ExitStatus>),
    Signal(Signal),
}
