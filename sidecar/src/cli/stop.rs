//! `tandem stop` / `dapr stop`: stop running apps by app id or by run template.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::Signal;

use super::instances;
use super::sidecar_http::SidecarHttp;
use super::supervisor::signal_pid;
use super::template;

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// The app id to stop; repeatable.
    #[arg(long, short = 'a')]
    pub app_id: Vec<String>,

    /// Stop every app of this run template (a file, or a directory holding dapr.yaml).
    #[arg(long = "run-file", short = 'f', value_name = "PATH")]
    pub run_file: Option<PathBuf>,
}

pub async fn run(args: StopArgs) -> ExitCode {
    let mut app_ids = args.app_id.clone();
    if let Some(path) = &args.run_file {
        match template::load(path) {
            Ok(t) => app_ids.extend(t.apps.into_iter().map(|a| a.app_id)),
            Err(e) => {
                eprintln!("❌  {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if app_ids.is_empty() {
        eprintln!("❌  give --app-id or --run-file");
        return ExitCode::FAILURE;
    }
    let client = SidecarHttp::new();
    let mut signalled: HashSet<u32> = HashSet::new();
    let mut failed = false;
    for app_id in &app_ids {
        match stop_app(&client, app_id, &mut signalled).await {
            Ok(()) => println!("✅  app stopped successfully: {app_id}"),
            Err(message) => {
                eprintln!("❌  failed to stop app id {app_id}: {message}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGTERM to the CLI that started the app (it then stops app and sidecar in order), else to the
/// sidecar itself. A process already signalled (apps of one template share their CLI) is skipped.
async fn stop_app(
    client: &SidecarHttp,
    app_id: &str,
    signalled: &mut HashSet<u32>,
) -> Result<(), String> {
    let found = instances::find(client, app_id).await;
    if found.is_empty() {
        return Err(format!("couldn't find app id {app_id}"));
    }
    for instance in found {
        let pid = if instance.cli_pid > 0
            && crate::naming::local_registry::process_alive(instance.cli_pid)
        {
            instance.cli_pid
        } else {
            instance.daprd_pid
        };
        if !signalled.insert(pid) {
            continue;
        }
        signal_pid(pid, Signal::SIGTERM)
            .map_err(|e| format!("cannot signal process {pid}: {e}"))?;
    }
    Ok(())
}
