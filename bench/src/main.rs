#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tandem_bench::report::{Report, RunInfo, ScenarioReport, Status};
use tandem_bench::scenarios::{self, Ctx, Profile};
use tandem_bench::{app, generator_check, machine};

/// Tandem's benchmark suite: every figure against a baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "tandem-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,

    /// Short runs and fewer repetitions (under two minutes); the CI smoke test.
    #[arg(long, global = true)]
    quick: bool,

    /// Write every figure as JSON to this file.
    #[arg(long, global = true, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Write the report (run information, table, notes) as Markdown to this file.
    #[arg(long, global = true, value_name = "PATH")]
    markdown: Option<PathBuf>,

    /// With `all`: also run the soak scenario.
    #[arg(long, global = true)]
    soak: bool,

    /// Length of the soak in minutes.
    #[arg(long, global = true, default_value_t = 10)]
    soak_minutes: u64,

    /// Measure this tandem binary instead of building one with `cargo build --release -p tandem`.
    #[arg(long, global = true, value_name = "PATH")]
    tandem: Option<PathBuf>,

    /// Treat a scenario the binary cannot run ("unavailable") as an error.
    #[arg(long, global = true)]
    require_all: bool,

    /// Never try to install nginx.
    #[arg(long, global = true)]
    no_install: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every scenario (the soak only with --soak).
    All,
    /// 1. Start-up time, idle RSS, binary size.
    Startup,
    /// 2. Service invocation through two sidecars vs direct and vs two chained nginx.
    Invoke,
    /// 3. State GET/SET and bulk get vs a direct Redis client.
    State,
    /// 4. Publish vs raw XADD.
    Publish,
    /// 5. Delivery end to end, and the maximum sustained rate.
    Delivery,
    /// 6. Soak: steady load, RSS must not grow.
    Soak,
    /// Compare this generator with wrk on the direct-to-app baseline.
    CompareWrk {
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// The trivial app the scenarios talk to (started by the suite itself).
    #[command(hide = true)]
    App {
        #[arg(long)]
        port: u16,
        /// pubsub=topic, repeatable: answered from /dapr/subscribe, routed to /events.
        #[arg(long)]
        subscribe: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Cmd::App { port, subscribe } => {
            let subs: Vec<(String, String)> = subscribe
                .iter()
                .filter_map(|s| s.split_once('='))
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect();
            match runtime.block_on(app::serve(*port, &subs)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("app: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::CompareWrk {
            reps,
            seconds,
            connections,
        } => match runtime.block_on(generator_check::run(*reps, *seconds, *connections)) {
            Ok(check) => {
                println!("{}", check.markdown());
                if let Some(path) = &cli.json {
                    let json = serde_json::to_string_pretty(&check).unwrap_or_default();
                    if let Err(e) = std::fs::write(path, json) {
                        eprintln!("writing {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("generator check: {e}");
                ExitCode::FAILURE
            }
        },
        _ => runtime.block_on(run_scenarios(&cli)),
    }
}

async fn run_scenarios(cli: &Cli) -> ExitCode {
    let tandem = match &cli.tandem {
        Some(p) => p.clone(),
        None => match machine::build_release_tandem() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut setup_notes = Vec::new();
    if !cli.no_install && matches!(cli.command, Cmd::All | Cmd::Invoke) {
        if let Some(note) = machine::ensure_nginx() {
            setup_notes.push(note);
        }
    }
    let profile = if cli.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    let mut ctx = match Ctx::new(tandem.clone(), profile) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let all = matches!(cli.command, Cmd::All);
    let wants = |c: fn(&Cmd) -> bool| all || c(&cli.command);
    if wants(|c| matches!(c, Cmd::Startup)) {
        reports.push(progress(scenarios::startup::run(&mut ctx).await));
    }
    if wants(|c| matches!(c, Cmd::Invoke)) {
        reports.push(progress(scenarios::invoke::run(&mut ctx).await));
    }
    if wants(|c| matches!(c, Cmd::State)) {
        reports.push(progress(scenarios::state::run(&mut ctx).await));
    }
    if wants(|c| matches!(c, Cmd::Publish)) {
        reports.push(progress(scenarios::publish::run(&mut ctx).await));
    }
    if wants(|c| matches!(c, Cmd::Delivery)) {
        reports.push(progress(scenarios::delivery::run(&mut ctx).await));
    }
    if matches!(cli.command, Cmd::Soak) || (all && cli.soak) {
        reports.push(progress(
            scenarios::soak::run(&mut ctx, cli.soak_minutes).await,
        ));
    }
    if let Some(first) = reports.first_mut() {
        first.notes.extend(setup_notes);
    }

    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = Report {
        run: RunInfo {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine: machine::machine(),
            commit: machine::commit(),
            command: format!("cargo run --release -p tandem-bench -- {}", args.join(" ")),
            mode: profile.name.to_string(),
            generator: "tandem-bench in-process hyper generator (open loop from a scheduler thread, latency from intended send time; closed loop for saturation)".into(),
            tandem_binary: tandem.display().to_string(),
        },
        scenarios: reports,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &cli.markdown {
        if let Err(e) = std::fs::write(path, format!("# Tandem benchmark results\n\n{markdown}")) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let failed = report.scenarios.iter().any(|s| match &s.status {
        Status::Ran => false,
        Status::Failed(_) => true,
        Status::Unavailable(_) => cli.require_all,
    });
    if failed {
        eprintln!("at least one scenario did not run (see the table)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn progress(r: ScenarioReport) -> ScenarioReport {
    let status = match &r.status {
        Status::Ran => "done".to_string(),
        Status::Unavailable(reason) => format!("unavailable: {reason}"),
        Status::Failed(reason) => format!("ERROR: {reason}"),
    };
    eprintln!("[tandem-bench] {}: {status}", r.name);
    r
}
