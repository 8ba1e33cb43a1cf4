//! `tandem invoke` / `dapr invoke`: call a method of a running app through its own sidecar.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::Method;

use super::instances;
use super::sidecar_http::SidecarHttp;

/// How long one invocation may take, end to end.
pub const INVOKE_LIMIT: Duration = Duration::from_secs(60);

/// Largest `--data-file` read.
pub const MAX_DATA_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct InvokeArgs {
    /// The app to invoke.
    #[arg(long, short = 'a')]
    pub app_id: String,

    /// The method to call (may contain `/` and a query string).
    #[arg(long, short = 'm')]
    pub method: String,

    /// The HTTP verb.
    #[arg(long, short = 'v', default_value = "POST")]
    pub verb: String,

    /// The request body.
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    pub data: Option<String>,

    /// A file whose contents are the request body.
    #[arg(long, short = 'f')]
    pub data_file: Option<PathBuf>,
}

pub async fn run(args: InvokeArgs) -> ExitCode {
    match invoke(&args).await {
        Ok(body) => {
            if !body.is_empty() {
                println!("{}", String::from_utf8_lossy(&body));
            }
            println!("✅  App invoked successfully");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("❌  error invoking app {}: {message}", args.app_id);
            ExitCode::FAILURE
        }
    }
}

/// `--data`, else the contents of `--data-file` (size-limited), else nothing.
pub async fn payload(data: &Option<String>, file: &Option<PathBuf>) -> Result<Bytes, String> {
    if let Some(d) = data {
        return Ok(Bytes::from(d.clone()));
    }
    let Some(path) = file else {
        return Ok(Bytes::new());
    };
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > MAX_DATA_FILE_BYTES {
        return Err(format!(
            "{} is {size} bytes; the limit is {MAX_DATA_FILE_BYTES}",
            path.display()
        ));
    }
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| format!("{}: {e}", path.display()))
}

async fn invoke(args: &InvokeArgs) -> Result<Bytes, String> {
    let verb = Method::from_bytes(args.verb.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP verb", args.verb))?;
    let body = payload(&args.data, &args.data_file).await?;
    let client = SidecarHttp::new();
    let instance = instances::find(&client, &args.app_id)
        .await
        .into_iter()
        .next()
        .ok_or_else(|| format!("app ID {} not found", args.app_id))?;
    let url = format!(
        "{}/v1.0/invoke/{}/method/{}",
        instance.api_base(),
        args.app_id,
        args.method.trim_start_matches('/')
    );
    let response = client
        .send(verb, &url, Some("application/json"), body, INVOKE_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status.is_success() {
        return Err(if response.body.is_empty() {
            format!("http status code {}", response.status.as_u16())
        } else {
            String::from_utf8_lossy(&response.body).into_owned()
        });
    }
    Ok(response.body)
}
