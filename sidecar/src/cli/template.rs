//! Dapr's multi-app run template (`dapr run -f dapr.yaml`, version 1): parsing, merging the
//! `common` section into each app, resolving paths like the Dapr CLI, and validation whose errors
//! name the file and the field.
//!
//! Paths in `common` are relative to the template's directory; paths inside an app (other than
//! `appDirPath` itself) are relative to that app's `appDirPath`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// The file looked for when `-f` names a directory.
pub const DEFAULT_TEMPLATE_NAME: &str = "dapr.yaml";

#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: PathBuf, message: String },
    #[error("{file}: {field}: {message}")]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
}

/// Where a log stream goes (Dapr's `appLogDestination` / `daprdLogDestination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDestination {
    Console,
    File,
    FileAndConsole,
}

impl LogDestination {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "console" => Some(Self::Console),
            "file" => Some(Self::File),
            "fileAndConsole" => Some(Self::FileAndConsole),
            _ => None,
        }
    }

    pub fn console(self) -> bool {
        matches!(self, Self::Console | Self::FileAndConsole)
    }

    pub fn file(self) -> bool {
        matches!(self, Self::File | Self::FileAndConsole)
    }
}

/// The fields an app entry (and, for the shared ones, `common`) may carry. One struct serves
/// both so that field paths in errors stay exact; app-only fields in `common` are ignored with a
/// warning, as the Dapr CLI ignores them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    // --- shared (common or app)
    config_file_path: Option<String>,
    app_protocol: Option<String>,
    api_listen_addresses: Option<String>,
    enable_profiling: Option<bool>,
    log_level: Option<String>,
    app_max_concurrency: Option<i64>,
    placement_host_address: Option<String>,
    scheduler_host_address: Option<String>,
    resources_path: Option<String>,
    resources_paths: Option<Vec<String>>,
    #[serde(rename = "appSSL")]
    app_ssl: Option<bool>,
    #[serde(rename = "daprHTTPMaxRequestSize")]
    dapr_http_max_request_size: Option<i64>,
    #[serde(rename = "daprHTTPReadBufferSize")]
    dapr_http_read_buffer_size: Option<i64>,
    enable_app_health_check: Option<bool>,
    app_health_check_path: Option<String>,
    app_health_probe_interval: Option<i64>,
    app_health_probe_timeout: Option<i64>,
    app_health_threshold: Option<i64>,
    enable_api_logging: Option<bool>,
    /// Where the Dapr CLI finds daprd; Tandem always runs itself.
    runtime_path: Option<String>,
    env: Option<BTreeMap<String, Value>>,
    daprd_log_destination: Option<String>,
    app_log_destination: Option<String>,
    // --- app only
    #[serde(rename = "appID")]
    app_id: Option<String>,
    app_dir_path: Option<String>,
    app_channel_address: Option<String>,
    app_port: Option<i64>,
    #[serde(rename = "daprHTTPPort")]
    dapr_http_port: Option<i64>,
    #[serde(rename = "daprGRPCPort")]
    dapr_grpc_port: Option<i64>,
    #[serde(rename = "daprInternalGRPCPort")]
    dapr_internal_grpc_port: Option<i64>,
    metrics_port: Option<i64>,
    profile_port: Option<i64>,
    unix_domain_socket: Option<String>,
    command: Option<Vec<String>>,
}

const SHARED_KEYS: &[&str] = &[
    "configFilePath",
    "appProtocol",
    "apiListenAddresses",
    "enableProfiling",
    "logLevel",
    "appMaxConcurrency",
    "placementHostAddress",
    "schedulerHostAddress",
    "resourcesPath",
    "resourcesPaths",
    "appSSL",
    "daprHTTPMaxRequestSize",
    "daprHTTPReadBufferSize",
    "enableAppHealthCheck",
    "appHealthCheckPath",
    "appHealthProbeInterval",
    "appHealthProbeTimeout",
    "appHealthThreshold",
    "enableApiLogging",
    "runtimePath",
    "env",
    "daprdLogDestination",
    "appLogDestination",
];

const APP_KEYS: &[&str] = &[
    "appID",
    "appDirPath",
    "appChannelAddress",
    "appPort",
    "daprHTTPPort",
    "daprGRPCPort",
    "daprInternalGRPCPort",
    "metricsPort",
    "profilePort",
    "unixDomainSocket",
    "command",
];

/// Kubernetes-only app fields of the Dapr template: accepted and without effect here.
const KUBERNETES_KEYS: &[&str] = &[
    "containerImage",
    "containerImagePullPolicy",
    "createService",
];

#[derive(Debug, Deserialize)]
struct RawTemplate {
    version: Option<i64>,
    #[allow(dead_code)] // Kept for field-path errors; Tandem has no use for the name.
    name: Option<String>,
    common: Option<Fields>,
    apps: Option<Vec<Fields>>,
}

/// One app of the template, fully resolved: what `run -f` starts.
#[derive(Debug, Clone)]
pub struct PlannedApp {
    pub app_id: String,
    pub app_dir: PathBuf,
    pub command: Vec<String>,
    pub app_port: Option<u16>,
    pub app_protocol: String,
    pub app_channel_address: String,
    pub http_port: Option<u16>,
    pub grpc_port: Option<u16>,
    pub metrics_port: Option<u16>,
    /// Sidecar flags other than app id, ports, and protocol (resources, config, health, ...).
    pub sidecar_flags: Vec<String>,
    pub env: Vec<(String, String)>,
    pub app_log: LogDestination,
    pub daprd_log: LogDestination,
}

/// A parsed and validated template.
#[derive(Debug, Clone)]
pub struct RunTemplate {
    /// The template file (absolute).
    pub file: PathBuf,
    pub apps: Vec<PlannedApp>,
    /// Fields that were ignored, for the CLI to show.
    pub warnings: Vec<String>,
}

/// `-f` accepts the template file or a directory holding `dapr.yaml`.
pub fn locate(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(DEFAULT_TEMPLATE_NAME)
    } else {
        path.to_path_buf()
    }
}

pub fn load(path: &Path) -> Result<RunTemplate, TemplateError> {
    let file = locate(path);
    let file = std::path::absolute(&file).unwrap_or(file);
    let text = std::fs::read_to_string(&file).map_err(|source| TemplateError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses template text; `file` names the template in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<RunTemplate, TemplateError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| TemplateError::Yaml {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let raw: RawTemplate = serde_path_to_error::deserialize(&value).map_err(|e| {
        let field = e.path().to_string();
        TemplateError::Field {
            file: file.to_path_buf(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })?;
    let base_dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Planner {
        file: file.to_path_buf(),
        base_dir,
        warnings: Vec::new(),
    }
    .plan(raw, &value)
}

struct Planner {
    file: PathBuf,
    base_dir: PathBuf,
    warnings: Vec<String>,
}

impl Planner {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> TemplateError {
        TemplateError::Field {
            file: self.file.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn warn_unknown(&mut self, value: Option<&Value>, path: &str, allowed: &[&[&str]]) {
        let Some(Value::Object(map)) = value else {
            return;
        };
        for key in map.keys() {
            if !allowed.iter().any(|set| set.contains(&key.as_str())) {
                self.warnings.push(format!(
                    "{}: {path}.{key}: unknown field, ignored",
                    self.file.display()
                ));
            }
        }
    }

    fn plan(mut self, raw: RawTemplate, value: &Value) -> Result<RunTemplate, TemplateError> {
        match raw.version {
            None => return Err(self.err("version", "required field is missing")),
            Some(1) => {}
            Some(v) => {
                return Err(self.err(
                    "version",
                    format!("unsupported version {v}; version 1 is supported"),
                ))
            }
        }
        if let Value::Object(top) = value {
            for key in top.keys() {
                if !["version", "name", "common", "apps"].contains(&key.as_str()) {
                    self.warnings.push(format!(
                        "{}: {key}: unknown field, ignored",
                        self.file.display()
                    ));
                }
            }
        }
        let common = raw.common.unwrap_or_default();
        self.warn_unknown(value.get("common"), "common", &[SHARED_KEYS]);
        if let Value::Object(map) = value.get("common").unwrap_or(&Value::Null) {
            for key in map.keys().filter(|k| APP_KEYS.contains(&k.as_str())) {
                self.warnings.push(format!(
                    "{}: common.{key}: only allowed per app, ignored",
                    self.file.display()
                ));
            }
        }
        let apps = match raw.apps {
            Some(apps) if !apps.is_empty() => apps,
            _ => return Err(self.err("apps", "at least one app is required")),
        };
        let common_dir = self.base_dir.clone();
        let common_resources = self.resources(&common, "common", &common_dir)?;
        let common_config = self.path_field(
            common.config_file_path.as_deref(),
            "common.configFilePath",
            &common_dir,
        )?;

        let mut planned: Vec<PlannedApp> = Vec::new();
        let mut seen_ids: HashMap<String, usize> = HashMap::new();
        let mut seen_ports: HashMap<u16, String> = HashMap::new();
        for (i, app) in apps.iter().enumerate() {
            let at = format!("apps[{i}]");
            self.warn_unknown(
                value.get("apps").and_then(|a| a.get(i)),
                &at,
                &[SHARED_KEYS, APP_KEYS, KUBERNETES_KEYS],
            );
            let plan = self.plan_app(
                app,
                &common,
                &at,
                common_resources.as_deref(),
                common_config.as_deref(),
            )?;
            if let Some(first) = seen_ids.insert(plan.app_id.clone(), i) {
                return Err(self.err(
                    format!("{at}.appID"),
                    format!("app id {:?} is already used by apps[{first}]", plan.app_id),
                ));
            }
            for (port, name) in [
                (plan.app_port, "appPort"),
                (plan.http_port, "daprHTTPPort"),
                (plan.grpc_port, "daprGRPCPort"),
                (plan.metrics_port, "metricsPort"),
            ] {
                let Some(port) = port else { continue };
                let field = format!("{at}.{name}");
                if let Some(other) = seen_ports.insert(port, field.clone()) {
                    return Err(self.err(field, format!("port {port} is also given in {other}")));
                }
            }
            planned.push(plan);
        }
        Ok(RunTemplate {
            file: self.file,
            apps: planned,
            warnings: self.warnings,
        })
    }

    fn plan_app(
        &mut self,
        app: &Fields,
        common: &Fields,
        at: &str,
        common_resources: Option<&[PathBuf]>,
        common_config: Option<&Path>,
    ) -> Result<PlannedApp, TemplateError> {
        let dir_text = app
            .app_dir_path
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .ok_or_else(|| self.err(format!("{at}.appDirPath"), "required field is missing"))?;
        let app_dir = self.base_dir.join(dir_text);
        if !app_dir.is_dir() {
            return Err(self.err(
                format!("{at}.appDirPath"),
                format!("{} is not a directory", app_dir.display()),
            ));
        }
        let app_dir = std::fs::canonicalize(&app_dir).unwrap_or(app_dir);
        let app_id = match app.app_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_string(),
            // The Dapr CLI names an app without appID after its directory.
            _ => app_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    self.err(
                        format!("{at}.appID"),
                        "required when appDirPath has no name",
                    )
                })?,
        };

        let port = |value: Option<i64>, name: &str| -> Result<Option<u16>, TemplateError> {
            match value {
                // Dapr's "unset" is -1 (and 0 means the same there).
                None | Some(-1) | Some(0) => Ok(None),
                Some(p) => u16::try_from(p).map(Some).map_err(|_| {
                    self.err(
                        format!("{at}.{name}"),
                        format!("{p} is not a port (1-65535)"),
                    )
                }),
            }
        };
        let app_port = port(app.app_port, "appPort")?;
        let http_port = port(app.dapr_http_port, "daprHTTPPort")?;
        let grpc_port = port(app.dapr_grpc_port, "daprGRPCPort")?;
        let metrics_port = port(app.metrics_port, "metricsPort")?;
        let internal_port = port(app.dapr_internal_grpc_port, "daprInternalGRPCPort")?;
        let profile_port = port(app.profile_port, "profilePort")?;

        // An app's own value wins over common's.
        let pick = |a: &Option<String>, c: &Option<String>| a.clone().or_else(|| c.clone());
        let pick_bool = |a: Option<bool>, c: Option<bool>| a.or(c).unwrap_or(false);
        let pick_int = |a: Option<i64>, c: Option<i64>| a.or(c);
        let field_at = |name: &str, own: bool| {
            if own {
                format!("{at}.{name}")
            } else {
                format!("common.{name}")
            }
        };

        let app_protocol =
            pick(&app.app_protocol, &common.app_protocol).unwrap_or_else(|| "http".to_string());
        if !["http", "https", "h2c", "grpc", "grpcs"].contains(&app_protocol.as_str()) {
            return Err(self.err(
                field_at("appProtocol", app.app_protocol.is_some()),
                format!("{app_protocol:?} is not one of http, https, h2c, grpc, grpcs"),
            ));
        }
        let app_log = self.destination(
            app.app_log_destination.as_deref(),
            common.app_log_destination.as_deref(),
            at,
            "appLogDestination",
        )?;
        let daprd_log = self.destination(
            app.daprd_log_destination.as_deref(),
            common.daprd_log_destination.as_deref(),
            at,
            "daprdLogDestination",
        )?;

        let mut flags: Vec<String> = Vec::new();
        let mut flag = |name: &str, value: String| {
            flags.push(format!("--{name}"));
            flags.push(value);
        };

        // Resources: the app's own, else <appDirPath>/.dapr/resources, else common's, else the
        // sidecar's default (~/.tandem/components, ~/.dapr/components).
        let resources = match self.resources(app, at, &app_dir)? {
            Some(paths) => Some(paths),
            None => {
                let local = app_dir.join(".dapr").join("resources");
                if local.is_dir() {
                    Some(vec![local])
                } else {
                    common_resources.map(<[PathBuf]>::to_vec)
                }
            }
        };
        for path in resources.unwrap_or_default() {
            flag("resources-path", path.display().to_string());
        }
        // Config: the app's own, else <appDirPath>/.dapr/config.yaml, else common's.
        let config = match self.path_field(
            app.config_file_path.as_deref(),
            &format!("{at}.configFilePath"),
            &app_dir,
        )? {
            Some(p) => Some(p),
            None => {
                let local = app_dir.join(".dapr").join("config.yaml");
                if local.is_file() {
                    Some(local)
                } else {
                    common_config.map(Path::to_path_buf)
                }
            }
        };
        if let Some(config) = config {
            flag("config", config.display().to_string());
        }

        if let Some(level) = pick(&app.log_level, &common.log_level) {
            if !["debug", "info", "warn", "warning", "error", "fatal"].contains(&level.as_str()) {
                return Err(self.err(
                    field_at("logLevel", app.log_level.is_some()),
                    format!("{level:?} is not one of debug, info, warn, error, fatal"),
                ));
            }
            flag("log-level", level);
        }
        if let Some(addresses) = pick(&app.api_listen_addresses, &common.api_listen_addresses) {
            flag("dapr-listen-addresses", addresses);
        }
        if let Some(n) = pick_int(app.app_max_concurrency, common.app_max_concurrency) {
            flag("app-max-concurrency", n.to_string());
        }
        if let Some(mb) = pick_int(
            app.dapr_http_max_request_size,
            common.dapr_http_max_request_size,
        ) {
            if mb > 0 {
                flag("dapr-http-max-request-size", mb.to_string());
            }
        }
        if let Some(kb) = pick_int(
            app.dapr_http_read_buffer_size,
            common.dapr_http_read_buffer_size,
        ) {
            if kb > 0 {
                flag("dapr-http-read-buffer-size", kb.to_string());
            }
        }
        if pick_bool(app.enable_app_health_check, common.enable_app_health_check) {
            flag("enable-app-health-check", "true".into());
        }
        if let Some(path) = pick(&app.app_health_check_path, &common.app_health_check_path) {
            flag("app-health-check-path", path);
        }
        for (name, own, shared) in [
            (
                "app-health-probe-interval",
                app.app_health_probe_interval,
                common.app_health_probe_interval,
            ),
            (
                "app-health-probe-timeout",
                app.app_health_probe_timeout,
                common.app_health_probe_timeout,
            ),
            (
                "app-health-threshold",
                app.app_health_threshold,
                common.app_health_threshold,
            ),
        ] {
            // Dapr passes these only when non-zero.
            match own.or(shared) {
                Some(n) if n > 0 => flag(name, n.to_string()),
                Some(n) if n < 0 => {
                    return Err(self.err(
                        field_at(&camel(name), own.is_some()),
                        format!("{n} must not be negative"),
                    ))
                }
                _ => {}
            }
        }
        if pick_bool(app.enable_api_logging, common.enable_api_logging) {
            flag("enable-api-logging", "true".into());
        }
        if pick_bool(app.enable_profiling, common.enable_profiling) {
            flag("enable-profiling", "true".into());
        }
        if pick_bool(app.app_ssl, common.app_ssl) {
            flag("app-ssl", "true".into());
        }
        if let Some(addr) = pick(&app.placement_host_address, &common.placement_host_address) {
            flag("placement-host-address", addr);
        }
        if let Some(addr) = pick(&app.scheduler_host_address, &common.scheduler_host_address) {
            flag("scheduler-host-address", addr);
        }
        if let Some(socket) = &app.unix_domain_socket {
            flag("unix-domain-socket", socket.clone());
        }
        if let Some(port) = internal_port {
            flag("dapr-internal-grpc-port", port.to_string());
        }
        if let Some(port) = profile_port {
            flag("profile-port", port.to_string());
        }
        if app.runtime_path.is_some() || common.runtime_path.is_some() {
            self.warnings.push(format!(
                "{}: runtimePath is ignored: Tandem runs its own sidecar",
                self.file.display()
            ));
        }

        // Environment: common's, then the app's on top.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (source, vars) in [("common", &common.env), (at, &app.env)] {
            for (key, value) in vars.iter().flatten() {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    Value::Bool(_) | Value::Number(_) => value.to_string(),
                    _ => {
                        return Err(self.err(
                            format!("{source}.env.{key}"),
                            "must be a string, number or boolean",
                        ))
                    }
                };
                env.insert(key.clone(), text);
            }
        }

        let command = app.command.clone().unwrap_or_default();
        if command.first().is_some_and(|c| c.trim().is_empty()) {
            return Err(self.err(format!("{at}.command[0]"), "the program name is empty"));
        }

        Ok(PlannedApp {
            app_id,
            app_dir,
            command,
            app_port,
            app_protocol,
            app_channel_address: app
                .app_channel_address
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into()),
            http_port,
            grpc_port,
            metrics_port,
            sidecar_flags: flags,
            env: env.into_iter().collect(),
            app_log,
            daprd_log,
        })
    }

    fn destination(
        &self,
        own: Option<&str>,
        shared: Option<&str>,
        at: &str,
        name: &str,
    ) -> Result<LogDestination, TemplateError> {
        let (text, field) = match (own, shared) {
            (Some(t), _) => (t, format!("{at}.{name}")),
            (None, Some(t)) => (t, format!("common.{name}")),
            (None, None) => return Ok(LogDestination::Console),
        };
        LogDestination::parse(text).ok_or_else(|| {
            self.err(
                field,
                format!("{text:?} is not one of console, file, fileAndConsole"),
            )
        })
    }

    /// `resourcesPaths` plus the older single `resourcesPath`, resolved against `dir`, each of
    /// which must exist; `None` when neither is given.
    fn resources(
        &self,
        fields: &Fields,
        at: &str,
        dir: &Path,
    ) -> Result<Option<Vec<PathBuf>>, TemplateError> {
        let mut out = Vec::new();
        for (i, p) in fields.resources_paths.iter().flatten().enumerate() {
            if let Some(p) = self.path_field(Some(p), &format!("{at}.resourcesPaths[{i}]"), dir)? {
                out.push(p);
            }
        }
        if let Some(p) = self.path_field(
            fields.resources_path.as_deref(),
            &format!("{at}.resourcesPath"),
            dir,
        )? {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn path_field(
        &self,
        text: Option<&str>,
        field: &str,
        dir: &Path,
    ) -> Result<Option<PathBuf>, TemplateError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let path = expand_home(text);
        let path = if path.is_absolute() {
            path
        } else {
            dir.join(path)
        };
        if !path.exists() {
            return Err(self.err(field, format!("{} does not exist", path.display())));
        }
        Ok(Some(std::fs::canonicalize(&path).unwrap_or(path)))
    }
}

fn expand_home(text: &str) -> PathBuf {
    match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(text),
    }
}

/// `app-health-probe-interval` -> `appHealthProbeInterval` (for error field names).
fn camel(flag: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in flag.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/.dapr/resources")).unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        let file = dir.path().join("dapr.yaml");
        (dir, file)
    }

    fn error_of(text: &str, file: &Path) -> String {
        parse(text, file).unwrap_err().to_string()
    }

    #[test]
    fn merges_common_and_resolves_paths() {
        let (dir, file) = setup();
        let t = parse(
            r#"
version: 1
common:
  resourcesPath: ./shared
  env:
    DEBUG: true
    LEVEL: common
  appLogDestination: fileAndConsole
apps:
  - appID: alpha
    appDirPath: ./a
    appPort: 3000
    command: ["python3", "app.py"]
    env:
      LEVEL: app
    daprHTTPPort: 3601
    enableAppHealthCheck: true
  - appDirPath: b
    daprdLogDestination: file
    containerImage: ignored/here
"#,
            &file,
        )
        .unwrap();
        assert_eq!(t.apps.len(), 2);
        let a = &t.apps[0];
        assert_eq!(a.app_id, "alpha");
        assert_eq!(a.app_port, Some(3000));
        assert_eq!(a.http_port, Some(3601));
        assert_eq!(a.command, ["python3", "app.py"]);
        assert_eq!(
            a.env,
            [
                ("DEBUG".to_string(), "true".to_string()),
                ("LEVEL".to_string(), "app".to_string())
            ]
        );
        let root = std::fs::canonicalize(dir.path()).unwrap();
        // The app's own .dapr/resources wins over common.
        assert!(a
            .sidecar_flags
            .windows(2)
            .any(|w| w[0] == "--resources-path"
                && w[1] == root.join("a/.dapr/resources").display().to_string()));
        assert!(a
            .sidecar_flags
            .contains(&"--enable-app-health-check".to_string()));
        assert_eq!(a.app_log, LogDestination::FileAndConsole);
        assert_eq!(a.daprd_log, LogDestination::Console);
        let b = &t.apps[1];
        assert_eq!(b.app_id, "b", "named after its directory");
        assert!(b.command.is_empty());
        assert!(b.sidecar_flags.windows(2).any(
            |w| w[0] == "--resources-path" && w[1] == root.join("shared").display().to_string()
        ));
        assert_eq!(b.daprd_log, LogDestination::File);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn errors_name_file_and_field() {
        let (_dir, file) = setup();
        let f = file.display().to_string();
        let e = error_of("apps:\n  - appDirPath: a\n", &file);
        assert!(e.starts_with(&f) && e.contains("version"), "{e}");
        let e = error_of("version: 2\napps: []\n", &file);
        assert!(e.contains("version") && e.contains("unsupported"), "{e}");
        let e = error_of("version: 1\napps: []\n", &file);
        assert!(e.contains(": apps: "), "{e}");
        let e = error_of("version: 1\napps:\n  - appID: x\n", &file);
        assert!(e.contains("apps[0].appDirPath"), "{e}");
        let e = error_of(
            "version: 1\napps:\n  - appDirPath: a\n  - appDirPath: b\n    appPort: http\n",
            &file,
        );
        assert!(e.starts_with(&f) && e.contains("apps[1].appPort"), "{e}");
        let e = error_of(
            "version: 1\napps:\n  - appDirPath: a\n    appPort: 70000\n",
            &file,
        );
        assert!(e.contains("apps[0].appPort") && e.contains("70000"), "{e}");
        let e = error_of(
            "version: 1\napps:\n  - appDirPath: a\n    appID: x\n  - appDirPath: b\n    appID: x\n",
            &file,
        );
        assert!(e.contains("apps[1].appID"), "{e}");
        let e = error_of("version: 1\napps:\n  - appDirPath: missing\n", &file);
        assert!(
            e.contains("apps[0].appDirPath") && e.contains("not a directory"),
            "{e}"
        );
        let e = error_of(
            "version: 1\ncommon:\n  appLogDestination: syslog\napps:\n  - appDirPath: a\n",
            &file,
        );
        assert!(e.contains("common.appLogDestination"), "{e}");
        let e = error_of(
            "version: 1\napps:\n  - appDirPath: a\n    resourcesPaths: [nope]\n",
            &file,
        );
        assert!(e.contains("apps[0].resourcesPaths[0]"), "{e}");
        let e = error_of(
            "version: 1\napps:\n  - appDirPath: a\n    daprHTTPPort: 4000\n  - appDirPath: b\n    appPort: 4000\n",
            &file,
        );
        assert!(
            e.contains("apps[1].appPort") && e.contains("apps[0].daprHTTPPort"),
            "{e}"
        );
        let e = error_of(
            "version: 1\napps:\n  - appDirPath: a\n    command: python3 app.py\n",
            &file,
        );
        assert!(e.contains("apps[0].command"), "{e}");
    }

    #[test]
    fn unknown_fields_are_warnings() {
        let (_dir, file) = setup();
        let t = parse(
            "version: 1\ncommon:\n  appID: nope\n  colour: red\napps:\n  - appDirPath: a\n    apport: 1\n",
            &file,
        )
        .unwrap();
        let all = t.warnings.join("\n");
        assert!(all.contains("common.appID"), "{all}");
        assert!(all.contains("common.colour"), "{all}");
        assert!(all.contains("apps[0].apport"), "{all}");
    }

    #[test]
    fn a_directory_means_its_dapr_yaml() {
        let (dir, file) = setup();
        assert_eq!(locate(dir.path()), file);
        assert_eq!(locate(&file), file);
    }
}
