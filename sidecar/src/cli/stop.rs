//! `tandem stop` / `dapr stop`: stop running apps by app id or by run template.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::Signal;

use super::instances::{self, Instance};
use super::sidecar_http::SidecarHttp;
use super::supervisor::signal_pid;
use super::template;
use crate::naming::local_registry::process_alive;

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// The app id to stop; repeatable or comma-separated.
    #[arg(long, short = 'a', value_delimiter = ',')]
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
    let all = instances::list(&client).await;
    // How many running apps each CLI process supervises (a multi-app run has several).
    let mut apps_per_cli: HashMap<u32, usize> = HashMap::new();
    for i in all
        .iter()
        .filter(|i| i.cli_pid > 0 && process_alive(i.cli_pid))
    {
        *apps_per_cli.entry(i.cli_pid).or_default() += 1;
    }
    let mut failed = false;
    for app_id in &app_ids {
        match stop_app(&all, app_id, &mut apps_per_cli) {
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

/// As the Dapr CLI decides: SIGTERM to the CLI that started the app when it supervises only
/// this app (it then stops app and sidecar in order), else to the sidecar alone (the CLI then
/// stops that app and keeps the template's other apps running). Stopping the last app of a
/// multi-app run thus ends its CLI.
fn stop_app(
    all: &[Instance],
    app_id: &str,
    apps_per_cli: &mut HashMap<u32, usize>,
) -> Result<(), String> {
    let found: Vec<&Instance> = all.iter().filter(|i| i.app_id == app_id).collect();
    if found.is_empty() {
        return Err(format!("couldn't find app id {app_id}"));
    }
    for instance in found {
        let pid = match apps_per_cli.get_mut(&instance.cli_pid) {
            Some(n) if *n > 1 => {
                *n -= 1;
                instance.daprd_pid
            }
            Some(_) => instance.cli_pid,
            None => instance.daprd_pid,
        };
        signal_pid(pid, Signal::SIGTERM)
            .map_err(|e| format!("cannot signal process {pid}: {e}"))?;
    }
    Ok(())
}
