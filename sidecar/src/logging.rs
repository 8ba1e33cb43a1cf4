//! Logs through `tracing`: human-readable text by default, JSON lines with `--log-as-json`.

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, json: bool) {
    let level = match level {
        "warning" => "warn",
        "fatal" => "error",
        other => other,
    };
    // RUST_LOG, when set, refines the level (e.g. `tandem=debug,hyper=info`).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
