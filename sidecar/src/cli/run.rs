//! `tandem run` / `dapr run`: start a sidecar, then the app beside it, stream both outputs, and
//! stop the sidecar when the app exits, exiting with the app's code. With `-f` it runs a
//! multi-app template instead (see `multi_run`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use super::flags::{SidecarArgs, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT};
use super::output::LogTarget;
use super::supervisor::{termination_signal, AppInstance, AppSpec, SupervisorError};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sidecar: SidecarArgs,

    /// Run every app of a multi-app run template (a file, or a directory holding dapr.yaml).
    #[arg(long = "run-file", short = 'f', value_name = "PATH")]
    pub run_file: Option<PathBuf>,

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
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
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

/// A free port not handed out yet to another app of the same run (the sidecars bind them only
/// when they start, so the operating system alone cannot tell).
pub fn free_port_except(taken: &mut HashSet<u16>) -> std::io::Result<u16> {
    // Bounded: the kernel hands out ephemeral ports round-robin, so repeats are rare.
    for _ in 0..64 {
        let port = free_port()?;
        if taken.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no unused free port found in 64 attempts",
    ))
}

pub fn random_app_id() -> String {
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

pub async fn run(args: RunArgs) -> ExitCode {
    if let Some(path) = &args.run_file {
        return super::multi_run::run(path).await;
    }
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

    let mut sidecar_args = sidecar_flag_words(args.command.len());
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
    let spec = AppSpec {
        app_id,
        sidecar_args,
        http_port,
        grpc_port,
        metrics_port,
        app_port: sc.app_port,
        app_protocol: sc.app_protocol.clone(),
        app_channel_address: sc.app_channel_address.clone(),
        command: args.command.clone(),
        app_dir: None,
        env: Vec::new(),
        inherit_stdin: true,
        app_output: LogTarget::console("== APP == "),
        sidecar_output: LogTarget::console(""),
        metadata: Vec::new(),
        grace: sc.graceful_shutdown() + Duration::from_secs(5),
        label: None,
    };
    let instance = AppInstance::start(spec).await?;
    println!("✅  You're up and running! Both Dapr and your app logs will appear here.");
    let signal = termination_signal()?;
    let stop = async {
        let sig = signal.await;
        println!("ℹ️  terminated signal received: shutting down");
        sig
    };
    Ok(instance.supervise(stop).await)
}
