//! The running sidecars on this machine, as `list`, `stop`, `invoke` and `publish` see them: the
//! local registry's entries plus what each sidecar's metadata (`extended`) adds.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::sidecar_http::{api_base, SidecarHttp};
use crate::naming::local_registry::{LocalRegistry, RegistryEntry};

/// How long `list` waits for one sidecar's metadata.
const METADATA_LIMIT: Duration = Duration::from_secs(2);

/// One running sidecar, in the Dapr CLI's `list -o json` shape.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub app_id: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub app_port: u16,
    pub command: String,
    pub age: String,
    pub created: String,
    pub daprd_pid: u32,
    pub cli_pid: u32,
    pub app_pid: u32,
    pub run_template_path: String,
    pub app_log_path: String,
    pub daprd_log_path: String,
    #[serde(skip)]
    pub address: String,
}

impl Instance {
    pub fn api_base(&self) -> String {
        api_base(&self.address, self.http_port)
    }
}

/// Every live sidecar, sorted by app id.
pub async fn list(client: &SidecarHttp) -> Vec<Instance> {
    describe_all(client, LocalRegistry::from_env().list()).await
}

/// The live sidecars of one app id.
pub async fn find(client: &SidecarHttp, app_id: &str) -> Vec<Instance> {
    describe_all(client, LocalRegistry::from_env().lookup(app_id)).await
}

/// One instance per sidecar process, even if it was registered more than once.
async fn describe_all(client: &SidecarHttp, entries: Vec<RegistryEntry>) -> Vec<Instance> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if seen.insert(entry.pid) {
            out.push(describe(client, entry).await);
        }
    }
    out
}

async fn describe(client: &SidecarHttp, entry: RegistryEntry) -> Instance {
    let url = format!(
        "{}/v1.0/metadata",
        api_base(&entry.address, entry.http_port)
    );
    let extended: serde_json::Map<String, Value> = match client.get(&url, METADATA_LIMIT).await {
        Ok(r) if r.status.is_success() => serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("extended").and_then(Value::as_object).cloned())
            .unwrap_or_default(),
        _ => Default::default(),
    };
    let text = |key: &str| {
        extended
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let pid = |key: &str| text(key).trim().parse::<u32>().unwrap_or(0);
    let (age, created) = match chrono::DateTime::parse_from_rfc3339(&entry.started_at) {
        Ok(t) => {
            let elapsed = chrono::Utc::now()
                .signed_duration_since(t)
                .to_std()
                .unwrap_or_default();
            (
                format_age(elapsed),
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M.%S")
                    .to_string(),
            )
        }
        Err(_) => (String::new(), entry.started_at.clone()),
    };
    Instance {
        grpc_port: grpc_port_of(entry.pid).unwrap_or(0),
        app_id: entry.app_id,
        http_port: entry.http_port,
        app_port: entry.app_port.unwrap_or(0),
        command: text("appCommand"),
        age,
        created,
        daprd_pid: entry.pid,
        cli_pid: pid("cliPID"),
        app_pid: pid("appPID"),
        run_template_path: text("runTemplatePath"),
        app_log_path: text("appLogPath"),
        daprd_log_path: text("daprdLogPath"),
        address: entry.address,
    }
}

/// The Dapr CLI's age format: the largest whole unit (`42s`, `5m`, `3h`, `2d`).
pub fn format_age(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The sidecar's `--dapr-grpc-port` read from its command line (the registry does not record
/// it; the Dapr CLI reads daprd's command line the same way).
fn grpc_port_of(pid: u32) -> Option<u16> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    grpc_port_in(&words)
}

fn grpc_port_in(words: &[String]) -> Option<u16> {
    let mut iter = words.iter();
    while let Some(word) = iter.next() {
        let flag = word.trim_start_matches('-');
        if word.starts_with('-') {
            if flag == "dapr-grpc-port" || word == "-G" {
                return iter.next()?.parse().ok();
            }
            if let Some(value) = flag.strip_prefix("dapr-grpc-port=") {
                return value.parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(format_age(Duration::from_secs(5)), "5s");
        assert_eq!(format_age(Duration::from_secs(125)), "2m");
        assert_eq!(format_age(Duration::from_secs(7300)), "2h");
        assert_eq!(format_age(Duration::from_secs(200_000)), "2d");
    }

    #[test]
    fn grpc_port_from_command_line() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            grpc_port_in(&w("tandem sidecar --dapr-grpc-port 50002")),
            Some(50002)
        );
        assert_eq!(grpc_port_in(&w("daprd -dapr-grpc-port=50003")), Some(50003));
        assert_eq!(grpc_port_in(&w("daprd -G 50004")), Some(50004));
        assert_eq!(grpc_port_in(&w("daprd --app-id x")), None);
    }
}
