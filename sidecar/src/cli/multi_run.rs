//! `tandem run -f run.yaml` / `dapr run -f .`: every app of a multi-app template with its own
//! sidecar, output prefixed `== APP - <id> == `, all stopped together on Ctrl-C / SIGTERM.

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::output::LogTarget;
use super::run::free_port_except;
use super::supervisor::{termination_signal, AppInstance, AppSpec};
use super::template::{self, LogDestination, PlannedApp};

/// Time an app and its sidecar get to stop after a signal before they are killed (the sidecar's
/// default graceful-shutdown time plus margin, as single-app `run` uses).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(path: &Path) -> ExitCode {
    let template = match template::load(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("❌  {e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &template.warnings {
        eprintln!("⚠️  {warning}");
    }
    let signal = match termination_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("❌  {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = watch::channel::<Option<Signal>>(None);
    let stopped = |mut rx: watch::Receiver<Option<Signal>>| async move {
        match rx.wait_for(Option::is_some).await {
            Ok(sig) => (*sig).unwrap_or(Signal::SIGTERM),
            // The sender lives as long as `run`; treat its loss as a stop request.
            Err(_) => Signal::SIGTERM,
        }
    };

    let specs = match specs(&template.apps, &template.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("❌  {e}");
            return ExitCode::FAILURE;
        }
    };

    // Start the apps one after another; a signal meanwhile stops what is already running.
    let mut running: JoinSet<(String, u8)> = JoinSet::new();
    let mut failed_start = false;
    let mut signal = Box::pin(signal);
    let mut received: Option<Signal> = None;
    for spec in specs {
        if spec.app_output.file.is_some() || spec.sidecar_output.file.is_some() {
            if let Some(dir) = spec
                .app_output
                .file
                .as_ref()
                .or(spec.sidecar_output.file.as_ref())
                .and_then(|f| f.parent())
            {
                println!("ℹ️  Writing log files to directory : {}", dir.display());
            }
        }
        let app_id = spec.app_id.clone();
        let started = tokio::select! {
            r = AppInstance::start(spec) => r,
            sig = &mut signal => { received = Some(sig); break; }
        };
        match started {
            Ok(instance) => {
                let rx = stop_rx.clone();
                running.spawn(async move {
                    let id = instance.app_id().to_string();
                    (id, instance.supervise(stopped(rx)).await)
                });
            }
            Err(e) => {
                eprintln!("❌  {app_id}: {e}");
                failed_start = true;
                break;
            }
        }
    }
    if received.is_none() && !failed_start {
        println!("✅  You're up and running! Dapr logs will appear here.");
    } else {
        let _ = stop_tx.send(Some(received.unwrap_or(Signal::SIGTERM)));
    }

    let mut worst = 0u8;
    let mut stop_sent = received.is_some() || failed_start;
    loop {
        tokio::select! {
            joined = running.join_next() => match joined {
                None => break,
                Some(Ok((_, code))) => worst = worst.max(code),
                Some(Err(e)) => {
                    eprintln!("❌  an app supervisor failed: {e}");
                    worst = worst.max(1);
                }
            },
            sig = &mut signal, if !stop_sent => {
                println!("ℹ️  Received signal to stop Dapr and app processes. Shutting down Dapr and app processes.");
                stop_sent = true;
                received = Some(sig);
                let _ = stop_tx.send(Some(sig));
            }
        }
    }
    if failed_start {
        return ExitCode::FAILURE;
    }
    if received.is_some() {
        // Stopped on request: the apps' answers to the signal are not failures.
        return ExitCode::SUCCESS;
    }
    ExitCode::from(worst)
}

/// Turns planned apps into supervisor specs: ports chosen (free, and distinct across apps),
/// prefixes and log files set.
fn specs(apps: &[PlannedApp], template_file: &Path) -> std::io::Result<Vec<AppSpec>> {
    let mut taken: HashSet<u16> = apps
        .iter()
        .flat_map(|a| [a.app_port, a.http_port, a.grpc_port, a.metrics_port])
        .flatten()
        .collect();
    let stamp = chrono::Local::now().format("%Y%m%d%H%M%S").to_string();
    let mut out = Vec::with_capacity(apps.len());
    for app in apps {
        let mut pick = |given: Option<u16>| match given {
            Some(p) => Ok(p),
            None => free_port_except(&mut taken),
        };
        let http_port = pick(app.http_port)?;
        let grpc_port = pick(app.grpc_port)?;
        let metrics_port = pick(app.metrics_port)?;
        let mut sidecar_args = vec![
            "--app-id".to_string(),
            app.app_id.clone(),
            "--dapr-http-port".into(),
            http_port.to_string(),
            "--dapr-grpc-port".into(),
            grpc_port.to_string(),
            "--metrics-port".into(),
            metrics_port.to_string(),
            "--app-protocol".into(),
            app.app_protocol.clone(),
            "--app-channel-address".into(),
            app.app_channel_address.clone(),
        ];
        if let Some(port) = app.app_port {
            sidecar_args.extend(["--app-port".to_string(), port.to_string()]);
        }
        sidecar_args.extend(app.sidecar_flags.iter().cloned());

        let log_dir = app.app_dir.join(".dapr").join("logs");
        let target = |dest: LogDestination, prefix: String, kind: &str| LogTarget {
            prefix,
            console: dest.console(),
            file: dest
                .file()
                .then(|| log_dir.join(format!("{}_{kind}_{stamp}.log", app.app_id))),
        };
        let app_output = target(app.app_log, format!("== APP - {} == ", app.app_id), "app");
        let sidecar_output = target(app.daprd_log, String::new(), "daprd");
        let mut metadata = vec![(
            "runTemplatePath".to_string(),
            template_file.display().to_string(),
        )];
        if let Some(f) = &app_output.file {
            metadata.push(("appLogPath".into(), f.display().to_string()));
        }
        if let Some(f) = &sidecar_output.file {
            metadata.push(("daprdLogPath".into(), f.display().to_string()));
        }
        out.push(AppSpec {
            app_id: app.app_id.clone(),
            sidecar_args,
            http_port,
            grpc_port,
            metrics_port,
            app_port: app.app_port,
            app_protocol: app.app_protocol.clone(),
            app_channel_address: app.app_channel_address.clone(),
            command: app.command.clone(),
            app_dir: Some(app.app_dir.clone()),
            env: app.env.clone(),
            inherit_stdin: false,
            app_output,
            sidecar_output,
            metadata,
            grace: STOP_GRACE,
            label: Some(app.app_id.clone()),
        });
    }
    Ok(out)
}
