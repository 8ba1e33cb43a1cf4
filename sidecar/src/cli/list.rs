//! `tandem list` / `dapr list`: the running sidecars as a table, JSON or YAML.

use std::process::ExitCode;

use clap::Args;

use super::instances::{self, Instance};
use super::sidecar_http::SidecarHttp;

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Output format: table, json or yaml.
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json", "yaml"])]
    pub output: String,
}

pub async fn run(args: ListArgs) -> ExitCode {
    let list = instances::list(&SidecarHttp::new()).await;
    match args.output.as_str() {
        "json" => match serde_json::to_string_pretty(&list) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("❌  cannot encode the list: {e}");
                return ExitCode::FAILURE;
            }
        },
        "yaml" => match serde_saphyr::to_string(&list) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("❌  cannot encode the list: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ if list.is_empty() => println!("ℹ️  No Dapr instances found."),
        _ => print!("{}", table(&list)),
    }
    ExitCode::SUCCESS
}

const HEADERS: [&str; 10] = [
    "APP ID",
    "HTTP PORT",
    "GRPC PORT",
    "APP PORT",
    "COMMAND",
    "AGE",
    "CREATED",
    "DAPRD PID",
    "CLI PID",
    "APP PID",
];

/// Left-aligned columns separated by two spaces, as the Dapr CLI prints them.
pub fn table(list: &[Instance]) -> String {
    let rows: Vec<[String; 10]> = list
        .iter()
        .map(|i| {
            [
                i.app_id.clone(),
                i.http_port.to_string(),
                i.grpc_port.to_string(),
                i.app_port.to_string(),
                i.command.clone(),
                i.age.clone(),
                i.created.clone(),
                i.daprd_pid.to_string(),
                i.cli_pid.to_string(),
                i.app_pid.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADERS.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}
