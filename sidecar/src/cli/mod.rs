//! The command line: `tandem sidecar`, `tandem run`, `list`, `stop`, `invoke`, `publish`, and
//! the `daprd` / `dapr` personalities selected by the name the binary is invoked under
//! (`ln -s tandem daprd`).

pub mod flags;
pub mod instances;
pub mod invoke;
pub mod list;
pub mod multi_run;
pub mod output;
pub mod publish;
pub mod run;
pub mod sidecar_http;
pub mod stop;
pub mod supervisor;
pub mod template;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::kubernetes::injector::InjectorArgs;
use flags::SidecarArgs;
use invoke::InvokeArgs;
use list::ListArgs;
use publish::PublishArgs;
use run::RunArgs;
use stop::StopArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A sidecar runtime that speaks Dapr's HTTP API"
)]
struct TandemCli {
    #[command(subcommand)]
    command: TandemCommand,
}

#[derive(Debug, Subcommand)]
enum TandemCommand {
    /// Run the sidecar process (what `daprd` does).
    Sidecar(SidecarArgs),
    /// Run an app with a sidecar beside it (what `dapr run` does); `-f` runs a multi-app template.
    Run(RunArgs),
    /// List the running sidecars.
    List(ListArgs),
    /// Stop running apps (and their sidecars).
    Stop(StopArgs),
    /// Invoke a method of a running app.
    Invoke(InvokeArgs),
    /// Publish an event through a running app's sidecar.
    Publish(PublishArgs),
    /// Serve the Kubernetes admission webhook that injects the sidecar into pods.
    Injector(InjectorArgs),
}

/// `daprd [flags]`.
#[derive(Debug, Parser)]
#[command(name = "daprd", version)]
struct DaprdCli {
    #[command(flatten)]
    args: SidecarArgs,
}

/// `dapr <command>`: the Dapr CLI commands Tandem implements.
#[derive(Debug, Parser)]
#[command(name = "dapr", version)]
struct DaprCli {
    #[command(subcommand)]
    command: DaprCommand,
}

// Parsed once and moved out at start-up: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum DaprCommand {
    /// Run an app with a sidecar beside it; `-f` runs a multi-app template.
    Run(RunArgs),
    /// List the running sidecars.
    List(ListArgs),
    /// Stop running apps (and their sidecars).
    Stop(StopArgs),
    /// Invoke a method of a running app.
    Invoke(InvokeArgs),
    /// Publish an event through a running app's sidecar.
    Publish(PublishArgs),
}

/// What the process was asked to do.
enum Invocation {
    Sidecar(SidecarArgs),
    Run(RunArgs),
    List(ListArgs),
    Stop(StopArgs),
    Invoke(InvokeArgs),
    Publish(PublishArgs),
    Injector(InjectorArgs),
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

fn parse() -> Invocation {
    let args: Vec<String> = std::env::args().collect();
    match program_name().as_str() {
        "daprd" => Invocation::Sidecar(DaprdCli::parse_from(flags::normalize_go_flags(args)).args),
        "dapr" => match DaprCli::parse_from(args).command {
            DaprCommand::Run(a) => Invocation::Run(a),
            DaprCommand::List(a) => Invocation::List(a),
            DaprCommand::Stop(a) => Invocation::Stop(a),
            DaprCommand::Invoke(a) => Invocation::Invoke(a),
            DaprCommand::Publish(a) => Invocation::Publish(a),
        },
        _ => {
            let is_sidecar = args.get(1).map(String::as_str) == Some("sidecar");
            let args = if is_sidecar {
                flags::normalize_go_flags(args)
            } else {
                args
            };
            match TandemCli::parse_from(args).command {
                TandemCommand::Sidecar(a) => Invocation::Sidecar(a),
                TandemCommand::Run(a) => Invocation::Run(a),
                TandemCommand::List(a) => Invocation::List(a),
                TandemCommand::Stop(a) => Invocation::Stop(a),
                TandemCommand::Invoke(a) => Invocation::Invoke(a),
                TandemCommand::Publish(a) => Invocation::Publish(a),
                TandemCommand::Injector(a) => Invocation::Injector(a),
            }
        }
    }
}

pub fn main() -> ExitCode {
    let invocation = parse();
    // A supervisor or a one-shot command needs no more than one worker thread.
    let workers = match &invocation {
        Invocation::Sidecar(args) => usize::from(args.worker_threads),
        _ => 1,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match invocation {
        Invocation::Sidecar(args) => {
            crate::logging::init(&args.log_level, args.log_as_json);
            match runtime.block_on(crate::runtime::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("fatal: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::Run(args) => runtime.block_on(run::run(args)),
        Invocation::List(args) => runtime.block_on(list::run(args)),
        Invocation::Stop(args) => runtime.block_on(stop::run(args)),
        Invocation::Invoke(args) => runtime.block_on(invoke::run(args)),
        Invocation::Publish(args) => runtime.block_on(publish::run(args)),
        Invocation::Injector(args) => {
            crate::logging::init(&args.log_level, args.log_as_json);
            match runtime.block_on(crate::kubernetes::injector::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("fatal: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_thread_unless_asked() {
        let args = DaprdCli::try_parse_from(["daprd", "--app-id", "a"])
            .unwrap()
            .args;
        assert_eq!(args.worker_threads, 1);
        let args = DaprdCli::try_parse_from(["daprd", "--worker-threads", "4"])
            .unwrap()
            .args;
        assert_eq!(args.worker_threads, 4);
        let err = DaprdCli::try_parse_from(["daprd", "--worker-threads", "0"]).unwrap_err();
        assert!(err.to_string().contains("--worker-threads"), "{err}");
    }
}
