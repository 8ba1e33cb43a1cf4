//! daprd's command-line flags, with daprd's defaults, shared by `tandem sidecar`, `daprd` and
//! (through `run`) `tandem run` / `dapr run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};

pub const DEFAULT_HTTP_PORT: u16 = 3500;
pub const DEFAULT_GRPC_PORT: u16 = 50001;
pub const DEFAULT_METRICS_PORT: u16 = 9090;

#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// The id of the application this sidecar runs beside.
    #[arg(long, short = 'a', default_value = "")]
    pub app_id: String,

    /// The port the application listens on; without it there is no app channel.
    #[arg(long, short = 'p')]
    pub app_port: Option<u16>,

    /// The protocol of the app channel: http, or h2c (HTTP/2 without TLS). https and gRPC are
    /// refused at start-up.
    #[arg(long, short = 'P', default_value = "http", value_parser = ["http", "https", "h2c", "grpc", "grpcs"])]
    pub app_protocol: String,

    /// The address the application listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub app_channel_address: String,

    /// Port of the HTTP API [default: 3500].
    #[arg(long, short = 'H')]
    pub dapr_http_port: Option<u16>,

    /// Addresses the API listens on, comma-separated [default: all interfaces].
    #[arg(long)]
    pub dapr_listen_addresses: Option<String>,

    /// Port other sidecars call for service invocation [default: a free port].
    #[arg(long)]
    pub dapr_internal_grpc_port: Option<u16>,

    /// Address of the internal port [default: all interfaces in kubernetes mode, else the API's].
    #[arg(long)]
    pub dapr_internal_grpc_listen_address: Option<String>,

    /// Port serving only healthz and metadata (Kubernetes probes).
    #[arg(long)]
    pub dapr_public_port: Option<u16>,

    /// Address of the public port [default: all interfaces in kubernetes mode, else the API's].
    #[arg(long)]
    pub dapr_public_listen_address: Option<String>,

    /// A directory (or file) of resource YAML; repeatable.
    #[arg(long = "resources-path", visible_alias = "components-path", short = 'd', action = ArgAction::Append)]
    pub resources_path: Vec<PathBuf>,

    /// A Configuration resource file; repeatable.
    #[arg(long, short = 'c', action = ArgAction::Append)]
    pub config: Vec<PathBuf>,

    /// debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "warning", "error", "fatal"])]
    pub log_level: String,

    /// Write logs as JSON lines.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub log_as_json: bool,

    /// Largest accepted request body (4Mi, 512Ki, 10M, or bytes).
    #[arg(long, default_value = "4Mi", value_parser = parse_byte_size)]
    pub max_body_size: u64,

    /// Legacy form of --max-body-size, in MB.
    #[arg(long, hide = true)]
    pub dapr_http_max_request_size: Option<u64>,

    /// Most concurrent requests into the app; -1 is unlimited.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub app_max_concurrency: i64,

    /// Probe the app's health endpoint and stop traffic to it while unhealthy.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub enable_app_health_check: bool,

    #[arg(long, default_value = "/healthz")]
    pub app_health_check_path: String,

    /// Seconds between probes.
    #[arg(long, default_value_t = 5)]
    pub app_health_probe_interval: u64,

    /// Milliseconds before a probe counts as failed.
    #[arg(long, default_value_t = 500)]
    pub app_health_probe_timeout: u64,

    /// Failed probes in a row before the app is unhealthy.
    #[arg(long, default_value_t = 3)]
    pub app_health_threshold: u32,

    /// Seconds in-flight work may take to finish at shutdown.
    #[arg(long, default_value_t = 5)]
    pub dapr_graceful_shutdown_seconds: u64,

    /// Port of the Prometheus endpoint `GET /metrics` [default: 9090].
    #[arg(long, short = 'M')]
    pub metrics_port: Option<u16>,

    /// Serve Prometheus metrics on --metrics-port.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = ArgAction::Set)]
    pub enable_metrics: bool,

    /// Address the metrics endpoint listens on [default: all interfaces].
    #[arg(long)]
    pub metrics_listen_address: Option<String>,

    /// standalone or kubernetes.
    #[arg(long, default_value = "standalone", value_parser = ["standalone", "kubernetes"])]
    pub mode: String,

    /// In kubernetes mode, do not load the built-in secret store `kubernetes`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub disable_builtin_k8s_secret_store: bool,

    /// Threads that run the sidecar's work. One keeps each request on one thread, which costs
    /// the least CPU at ordinary load; raise it for a sidecar that needs more than a core.
    #[arg(long, env = "TANDEM_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,

    #[command(flatten)]
    pub accepted: AcceptedFlags,
}

/// daprd flags that scripts and the Dapr CLI pass but that select features Tandem does not have
/// (gRPC API, actors placement, mTLS control plane, profiling). They are accepted so such
/// command lines run unchanged, and logged at start-up.
#[derive(Debug, Clone, Default, Args)]
pub struct AcceptedFlags {
    #[arg(long, short = 'G', hide = true)]
    pub dapr_grpc_port: Option<u16>,
    #[arg(long, hide = true)]
    pub placement_host_address: Option<String>,
    #[arg(long, hide = true)]
    pub scheduler_host_address: Option<String>,
    #[arg(long, hide = true)]
    pub control_plane_address: Option<String>,
    #[arg(long, hide = true)]
    pub control_plane_namespace: Option<String>,
    #[arg(long, hide = true)]
    pub control_plane_trust_domain: Option<String>,
    #[arg(long, hide = true)]
    pub sentry_address: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_mtls: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_profiling: Option<String>,
    #[arg(long, hide = true)]
    pub profile_port: Option<u16>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_api_logging: Option<String>,
    #[arg(long, hide = true)]
    pub read_buffer_size: Option<String>,
    #[arg(long, hide = true)]
    pub dapr_http_read_buffer_size: Option<String>,
    #[arg(long, hide = true)]
    pub dapr_block_shutdown_duration: Option<String>,
    #[arg(long, short = 'u', hide = true)]
    pub unix_domain_socket: Option<String>,
    #[arg(long, hide = true)]
    pub disable_init_endpoints: Option<String>,
    #[arg(long, hide = true)]
    pub allowed_origins: Option<String>,
    #[arg(long, hide = true)]
    pub app_binding_options_timeout: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub app_ssl: Option<String>,
}

impl AcceptedFlags {
    /// Names of the accepted-but-inactive flags that were given.
    pub fn given(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        let mut note = |set: bool, name| {
            if set {
                names.push(name)
            }
        };
        note(
            self.placement_host_address.is_some(),
            "--placement-host-address",
        );
        note(
            self.scheduler_host_address.is_some(),
            "--scheduler-host-address",
        );
        note(
            self.control_plane_address.is_some(),
            "--control-plane-address",
        );
        note(self.sentry_address.is_some(), "--sentry-address");
        note(self.enable_mtls.is_some(), "--enable-mtls");
        note(self.enable_profiling.is_some(), "--enable-profiling");
        note(self.unix_domain_socket.is_some(), "--unix-domain-socket");
        note(
            self.dapr_block_shutdown_duration.is_some(),
            "--dapr-block-shutdown-duration",
        );
        names
    }
}

impl SidecarArgs {
    pub fn http_port(&self) -> u16 {
        self.dapr_http_port.unwrap_or(DEFAULT_HTTP_PORT)
    }

    pub fn body_limit(&self) -> u64 {
        match self.dapr_http_max_request_size {
            Some(mb) => mb.saturating_mul(1024 * 1024),
            None => self.max_body_size,
        }
    }

    pub fn health_probe_interval(&self) -> Duration {
        Duration::from_secs(self.app_health_probe_interval.max(1))
    }

    pub fn health_probe_timeout(&self) -> Duration {
        Duration::from_millis(self.app_health_probe_timeout.max(1))
    }

    pub fn graceful_shutdown(&self) -> Duration {
        Duration::from_secs(self.dapr_graceful_shutdown_seconds)
    }

    /// `--mode kubernetes`.
    pub fn kubernetes_mode(&self) -> bool {
        self.mode == "kubernetes"
    }

    /// The listen addresses: the comma list given, or every interface.
    pub fn listen_addresses(&self) -> Vec<String> {
        parse_addresses(self.dapr_listen_addresses.as_deref())
    }

    /// Where the internal and public ports listen: `flag` if given, every interface in
    /// kubernetes mode (peers and the kubelet come from outside the pod), else as the API.
    pub fn side_listen_addresses(&self, flag: Option<&str>) -> Vec<String> {
        match flag {
            Some(given) if !given.trim().is_empty() => parse_addresses(Some(given)),
            _ if self.kubernetes_mode() => vec!["0.0.0.0".to_string()],
            _ => self.listen_addresses(),
        }
    }
}

/// A comma list of addresses (IPv6 in brackets or not); empty or absent means every interface.
fn parse_addresses(list: Option<&str>) -> Vec<String> {
    let addresses: Vec<String> = list
        .unwrap_or_default()
        .split(',')
        .map(|a| {
            a.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .filter(|a| !a.is_empty())
        .collect();
    if addresses.is_empty() {
        vec!["0.0.0.0".to_string()]
    } else {
        addresses
    }
}

/// Parses Kubernetes-style quantities: `4Mi`, `512Ki`, `1Gi`, `10M`, `4MB`, or a byte count.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4Mi, 512Ki or 1048576"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "k" | "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; use Ki, Mi, Gi, K, M or G"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Go's flag package (daprd) accepts `-app-id x` as well as `--app-id x`; clap wants two dashes.
pub fn normalize_go_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        if passthrough || arg == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let bytes = arg.as_bytes();
        let single_dash_long = bytes.len() > 2
            && bytes[0] == b'-'
            && bytes[1].is_ascii_alphabetic()
            && (bytes[2].is_ascii_alphabetic() || bytes[2] == b'-');
        if single_dash_long {
            out.push(format!("-{arg}"));
        } else {
            out.push(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SidecarArgs,
    }

    fn args(line: &[&str]) -> SidecarArgs {
        <Cli as clap::Parser>::try_parse_from(std::iter::once("daprd").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn internal_and_public_ports_listen_outside_the_pod_in_kubernetes() {
        let standalone = args(&["--dapr-listen-addresses", "[::1],127.0.0.1"]);
        assert_eq!(standalone.listen_addresses(), ["::1", "127.0.0.1"]);
        assert_eq!(standalone.side_listen_addresses(None), ["::1", "127.0.0.1"]);
        let pod = args(&[
            "--mode",
            "kubernetes",
            "--dapr-listen-addresses",
            "[::1],127.0.0.1",
        ]);
        assert_eq!(pod.side_listen_addresses(None), ["0.0.0.0"]);
        assert_eq!(pod.side_listen_addresses(Some("10.0.0.7")), ["10.0.0.7"]);
        assert_eq!(args(&[]).listen_addresses(), ["0.0.0.0"]);
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("4Mi"), Ok(4 << 20));
        assert_eq!(parse_byte_size("512Ki"), Ok(512 << 10));
        assert_eq!(parse_byte_size("10M"), Ok(10_000_000));
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert!(parse_byte_size("4Xi").is_err());
        assert!(parse_byte_size("Mi").is_err());
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        let args = normalize_go_flags(
            [
                "-app-id",
                "x",
                "--app-port",
                "1",
                "-p",
                "2",
                "-1",
                "--",
                "-app-id",
            ]
            .map(String::from),
        );
        assert_eq!(
            args,
            [
                "--app-id",
                "x",
                "--app-port",
                "1",
                "-p",
                "2",
                "-1",
                "--",
                "-app-id"
            ]
        );
    }
}
