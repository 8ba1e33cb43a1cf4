//! What the injector adds to a pod: the `daprd` container running `tandem sidecar`, the
//! environment the app's containers expect, and labels, as a JSON Patch (RFC 6902). The
//! `dapr.io/*` annotations are read as Dapr's injector reads them.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use thiserror::Error;

pub const SIDECAR_CONTAINER: &str = "daprd";
pub const HTTP_PORT: u16 = 3500;
pub const GRPC_PORT: u16 = 50001;
pub const INTERNAL_PORT: u16 = 50002;
pub const PUBLIC_PORT: u16 = 3501;
pub const METRICS_PORT: u16 = 9090;
/// `dapr.io/sidecar-listen-addresses` when not given: the API only inside the pod.
const DEFAULT_LISTEN_ADDRESSES: &str = "[::1],127.0.0.1";

/// How the injector builds sidecars (its own flags).
#[derive(Debug, Clone)]
pub struct SidecarTemplate {
    pub image: String,
    pub pull_policy: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the object is not a Pod")]
    NotAPod,
    #[error("no app id: set the dapr.io/app-id annotation")]
    NoAppId,
    #[error("annotation dapr.io/{annotation}: {message}")]
    Annotation { annotation: String, message: String },
}

/// The pod's `dapr.io/*` annotations, read once.
struct Annotations<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> Annotations<'a> {
    fn of(pod: &'a Value) -> Self {
        let map = pod
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.strip_prefix("dapr.io/")?, v.as_str()?)))
            .collect();
        Self(map)
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }

    fn number(&self, name: &str) -> Result<Option<u64>, PatchError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| PatchError::Annotation {
                    annotation: name.to_string(),
                    message: format!("{v:?} is not a whole number"),
                })
            })
            .transpose()
    }
}

/// Whether the pod asks for a sidecar and does not have one yet.
pub fn wants_sidecar(pod: &Value) -> bool {
    let annotations = Annotations::of(pod);
    annotations.flag("enabled") && !has_sidecar(pod)
}

fn has_sidecar(pod: &Value) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .any(|list| {
            pod.pointer(list)
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == SIDECAR_CONTAINER))
        })
}

/// The app id: `dapr.io/app-id`, else the pod's name (or `generateName` stem).
pub fn app_id(pod: &Value) -> Result<String, PatchError> {
    if let Some(id) = Annotations::of(pod).get("app-id") {
        return Ok(id.to_string());
    }
    let meta = pod.get("metadata").ok_or(PatchError::NotAPod)?;
    meta.get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| {
            meta.get("generateName")
                .and_then(Value::as_str)
                .map(|g| g.trim_end_matches('-'))
                .filter(|g| !g.is_empty())
        })
        .map(str::to_string)
        .ok_or(PatchError::NoAppId)
}

/// The JSON Patch operations that inject the sidecar into `pod`.
pub fn sidecar_patch(pod: &Value, template: &SidecarTemplate) -> Result<Vec<Value>, PatchError> {
    if pod.get("spec").and_then(Value::as_object).is_none() {
        return Err(PatchError::NotAPod);
    }
    let annotations = Annotations::of(pod);
    let app_id = app_id(pod)?;
    let container = sidecar_container(&annotations, &app_id, template)?;
    let mut ops = Vec::new();

    if annotations.flag("enable-native-sidecar") {
        // A native sidecar (Kubernetes 1.29+): an init container that keeps running, started
        // before and stopped after the app's containers.
        let mut container = container;
        container["restartPolicy"] = json!("Always");
        match pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
        {
            Some(_) => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}))
            }
            None => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}))
            }
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": container}));
    }

    let app_env = [
        ("DAPR_HTTP_PORT", HTTP_PORT.to_string()),
        ("DAPR_GRPC_PORT", GRPC_PORT.to_string()),
        (
            "APP_PROTOCOL",
            annotations
                .get("app-protocol")
                .unwrap_or("http")
                .to_string(),
        ),
    ];
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (index, app) in containers.iter().enumerate() {
        let existing = app.get("env").and_then(Value::as_array);
        let missing: Vec<Value> = app_env
            .iter()
            .filter(|(name, _)| !existing.is_some_and(|env| env.iter().any(|e| e["name"] == *name)))
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        if missing.is_empty() {
            continue;
        }
        match existing {
            Some(_) => {
                for var in missing {
                    ops.push(json!({"op": "add", "path": format!("/spec/containers/{index}/env/-"), "value": var}));
                }
            }
            None => ops.push(
                json!({"op": "add", "path": format!("/spec/containers/{index}/env"), "value": missing}),
            ),
        }
    }

    let metrics = annotations.get("enable-metrics") != Some("false");
    let labels = [
        ("dapr.io/sidecar-injected", "true".to_string()),
        ("dapr.io/app-id", app_id.clone()),
        ("dapr.io/metrics-enabled", metrics.to_string()),
    ];
    match pod.pointer("/metadata/labels").and_then(Value::as_object) {
        Some(_) => {
            for (key, value) in labels {
                ops.push(json!({"op": "add", "path": format!("/metadata/labels/{}", escape_pointer(key)), "value": value}));
            }
        }
        None => {
            let map: Map<String, Value> = labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect();
            ops.push(json!({"op": "add", "path": "/metadata/labels", "value": map}));
        }
    }
    Ok(ops)
}

/// RFC 6901: `~` and `/` inside a path segment.
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn sidecar_container(
    a: &Annotations,
    app_id: &str,
    template: &SidecarTemplate,
) -> Result<Value, PatchError> {
    let metrics_port = a.number("metrics-port")?.unwrap_or(u64::from(METRICS_PORT));
    let metrics = a.get("enable-metrics") != Some("false");
    let mut args: Vec<String> = [
        "sidecar",
        "--mode",
        "kubernetes",
        "--dapr-http-port",
        &HTTP_PORT.to_string(),
        "--dapr-internal-grpc-port",
        &INTERNAL_PORT.to_string(),
        "--dapr-public-port",
        &PUBLIC_PORT.to_string(),
        "--dapr-listen-addresses",
        a.get("sidecar-listen-addresses")
            .unwrap_or(DEFAULT_LISTEN_ADDRESSES),
        "--app-id",
        app_id,
        "--app-protocol",
        a.get("app-protocol").unwrap_or("http"),
        "--log-level",
        a.get("log-level").unwrap_or("info"),
        "--enable-metrics",
        &metrics.to_string(),
        "--metrics-port",
        &metrics_port.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_string());
        args.push(value);
    };
    if let Some(port) = a.number("app-port")? {
        push("--app-port", port.to_string());
    }
    if let Some(address) = a.get("app-channel-address") {
        push("--app-channel-address", address.to_string());
    }
    if let Some(config) = a.get("config") {
        push("--config", config.to_string());
    }
    if let Some(n) = a.number("app-max-concurrency")? {
        push("--app-max-concurrency", n.to_string());
    }
    if let Some(size) = a.get("max-body-size") {
        push("--max-body-size", size.to_string());
    } else if let Some(mb) = a.number("http-max-request-size")? {
        push("--max-body-size", format!("{mb}Mi"));
    }
    if let Some(seconds) = a.number("graceful-shutdown-seconds")? {
        push("--dapr-graceful-shutdown-seconds", seconds.to_string());
    }
    if a.flag("log-as-json") {
        push("--log-as-json", "true".into());
    }
    if a.flag("disable-builtin-k8s-secret-store") {
        push("--disable-builtin-k8s-secret-store", "true".into());
    }
    if a.flag("enable-app-health-check") {
        push("--enable-app-health-check", "true".into());
        push(
            "--app-health-check-path",
            a.get("app-health-check-path").unwrap_or("/healthz").into(),
        );
        push(
            "--app-health-probe-interval",
            a.number("app-health-probe-interval")?
                .unwrap_or(5)
                .to_string(),
        );
        push(
            "--app-health-probe-timeout",
            a.number("app-health-probe-timeout")?
                .unwrap_or(500)
                .to_string(),
        );
        push(
            "--app-health-threshold",
            a.number("app-health-threshold")?.unwrap_or(3).to_string(),
        );
    }

    let mut env = vec![
        field_env("NAMESPACE", "metadata.namespace"),
        field_env("POD_NAME", "metadata.name"),
        field_env("DAPR_HOST_IP", "status.podIP"),
    ];
    for (variable, annotation) in [
        ("DAPR_API_TOKEN", "api-token-secret"),
        ("APP_API_TOKEN", "app-token-secret"),
    ] {
        if let Some(secret) = a.get(annotation) {
            env.push(json!({"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}));
        }
    }
    for (name, value) in key_values(a.get("env").unwrap_or_default(), "env")? {
        env.push(json!({"name": name, "value": value}));
    }

    let mut ports = vec![
        json!({"name": "dapr-http", "containerPort": HTTP_PORT}),
        json!({"name": "dapr-internal", "containerPort": INTERNAL_PORT}),
    ];
    if metrics {
        ports.push(json!({"name": "dapr-metrics", "containerPort": metrics_port}));
    }

    let mut container = json!({
        "name": SIDECAR_CONTAINER,
        "image": template.image,
        "imagePullPolicy": template.pull_policy,
        "args": args,
        "env": env,
        "ports": ports,
        "readinessProbe": probe(a, "readiness", json!({"httpGet": {"path": "/v1.0/healthz", "port": PUBLIC_PORT}}))?,
        "livenessProbe": probe(a, "liveness", json!({"tcpSocket": {"port": PUBLIC_PORT}}))?,
        "securityContext": security_context(a),
    });
    let resources = resources(a);
    if !resources.is_empty() {
        container["resources"] = Value::Object(resources);
    }
    let mounts = volume_mounts(a)?;
    if !mounts.is_empty() {
        container["volumeMounts"] = Value::Array(mounts);
    }
    Ok(container)
}

fn field_env(name: &str, field: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}})
}

/// Probe timings from `dapr.io/sidecar-<kind>-probe-*` (Dapr's defaults: 3 s delay, 3 s
/// timeout, every 6 s, 3 failures).
fn probe(a: &Annotations, kind: &str, action: Value) -> Result<Value, PatchError> {
    let mut probe = action;
    for (suffix, field, default) in [
        ("delay-seconds", "initialDelaySeconds", 3),
        ("timeout-seconds", "timeoutSeconds", 3),
        ("period-seconds", "periodSeconds", 6),
        ("threshold", "failureThreshold", 3),
    ] {
        let annotation = format!("sidecar-{kind}-probe-{suffix}");
        let value = match a.get(&annotation) {
            Some(v) => v.parse::<u64>().map_err(|_| PatchError::Annotation {
                annotation: annotation.clone(),
                message: format!("{v:?} is not a whole number"),
            })?,
            None => default,
        };
        probe[field] = json!(value);
    }
    Ok(probe)
}

fn security_context(a: &Annotations) -> Value {
    let mut context = json!({
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    });
    if let Some(profile) = a.get("sidecar-seccomp-profile-type") {
        context["seccompProfile"] = json!({"type": profile});
    }
    context
}

fn resources(a: &Annotations) -> Map<String, Value> {
    let mut resources = Map::new();
    for (kind, field) in [("request", "requests"), ("limit", "limits")] {
        let mut values = Map::new();
        for resource in ["cpu", "memory"] {
            if let Some(v) = a.get(&format!("sidecar-{resource}-{kind}")) {
                values.insert(resource.to_string(), json!(v));
            }
        }
        if !values.is_empty() {
            resources.insert(field.to_string(), Value::Object(values));
        }
    }
    resources
}

/// `dapr.io/volume-mounts` (read-only) and `dapr.io/volume-mounts-rw`: `volume:/path,…`.
fn volume_mounts(a: &Annotations) -> Result<Vec<Value>, PatchError> {
    let mut mounts = Vec::new();
    for (annotation, read_only) in [("volume-mounts", true), ("volume-mounts-rw", false)] {
        for (volume, path) in pairs(a.get(annotation).unwrap_or_default(), ':', annotation)? {
            mounts.push(json!({"name": volume, "mountPath": path, "readOnly": read_only}));
        }
    }
    Ok(mounts)
}

/// `K=V,K2=V2`.
fn key_values(text: &str, annotation: &str) -> Result<Vec<(String, String)>, PatchError> {
    pairs(text, '=', annotation)
}

fn pairs(
    text: &str,
    separator: char,
    annotation: &str,
) -> Result<Vec<(String, String)>, PatchError> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.split_once(separator)
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| PatchError::Annotation {
                    annotation: annotation.to_string(),
                    message: format!("{item:?} is not of the form name{separator}value"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> SidecarTemplate {
        SidecarTemplate {
            image: "tandem:test".into(),
            pull_policy: "IfNotPresent".into(),
        }
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"name": "orders-1", "annotations": annotations, "labels": {"app": "orders"}},
            "spec": {"containers": [
                {"name": "app", "image": "orders:1", "env": [{"name": "DAPR_HTTP_PORT", "value": "1"}]},
                {"name": "helper", "image": "helper:1"}
            ]}
        })
    }

    fn arg_after<'a>(args: &'a [Value], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)?.as_str()
    }

    #[test]
    fn only_enabled_pods_without_a_sidecar_are_injected() {
        assert!(wants_sidecar(&pod(json!({"dapr.io/enabled": "true"}))));
        assert!(!wants_sidecar(&pod(json!({"dapr.io/enabled": "false"}))));
        assert!(!wants_sidecar(&pod(json!({}))));
        let mut injected = pod(json!({"dapr.io/enabled": "true"}));
        injected["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "daprd"}));
        assert!(!wants_sidecar(&injected));
    }

    #[test]
    fn annotations_become_sidecar_flags() {
        let pod = pod(json!({
            "dapr.io/enabled": "true",
            "dapr.io/app-id": "orders",
            "dapr.io/app-port": "8080",
            "dapr.io/config": "tracing",
            "dapr.io/http-max-request-size": "16",
            "dapr.io/enable-app-health-check": "true",
            "dapr.io/api-token-secret": "api-token",
            "dapr.io/env": "A=1, B=two",
            "dapr.io/sidecar-memory-limit": "64Mi",
            "dapr.io/volume-mounts": "certs:/certs",
        }));
        let ops = sidecar_patch(&pod, &template()).unwrap();
        assert_eq!(ops[0]["path"], "/spec/containers/-");
        let container = &ops[0]["value"];
        assert_eq!(container["name"], "daprd");
        let args = container["args"].as_array().unwrap();
        assert_eq!(args[0], "sidecar");
        assert_eq!(arg_after(args, "--app-id"), Some("orders"));
        assert_eq!(arg_after(args, "--app-port"), Some("8080"));
        assert_eq!(arg_after(args, "--config"), Some("tracing"));
        assert_eq!(arg_after(args, "--max-body-size"), Some("16Mi"));
        assert_eq!(arg_after(args, "--mode"), Some("kubernetes"));
        assert_eq!(arg_after(args, "--app-health-check-path"), Some("/healthz"));
        assert_eq!(
            arg_after(args, "--dapr-listen-addresses"),
            Some("[::1],127.0.0.1")
        );
        let env = container["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "DAPR_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "token"}}})));
        assert!(env.contains(&json!({"name": "B", "value": "two"})));
        assert_eq!(container["resources"]["limits"]["memory"], "64Mi");
        assert_eq!(container["volumeMounts"][0]["mountPath"], "/certs");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], PUBLIC_PORT);
    }

    #[test]
    fn app_containers_get_the_missing_environment_and_the_pod_labels() {
        let ops = sidecar_patch(&pod(json!({"dapr.io/enabled": "true"})), &template()).unwrap();
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        // The first container already sets DAPR_HTTP_PORT.
        assert_eq!(
            paths
                .iter()
                .filter(|p| **p == "/spec/containers/0/env/-")
                .count(),
            2
        );
        assert!(paths.contains(&"/spec/containers/1/env"));
        assert!(paths.contains(&"/metadata/labels/dapr.io~1app-id"));
        let id = ops
            .iter()
            .find(|o| o["path"] == "/metadata/labels/dapr.io~1app-id")
            .unwrap();
        assert_eq!(
            id["value"], "orders-1",
            "the pod name is the default app id"
        );
    }

    #[test]
    fn native_sidecars_are_init_containers_that_keep_running() {
        let ops = sidecar_patch(
            &pod(json!({"dapr.io/enabled": "true", "dapr.io/enable-native-sidecar": "true"})),
            &template(),
        )
        .unwrap();
        assert_eq!(ops[0]["path"], "/spec/initContainers");
        assert_eq!(ops[0]["value"][0]["restartPolicy"], "Always");
    }

    #[test]
    fn bad_annotations_are_named() {
        let err = sidecar_patch(
            &pod(json!({"dapr.io/enabled": "true", "dapr.io/app-port": "http"})),
            &template(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("dapr.io/app-port"), "{err}");
        let err = sidecar_patch(
            &pod(json!({"dapr.io/enabled": "true", "dapr.io/env": "NOVALUE"})),
            &template(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("dapr.io/env"), "{err}");
        let no_name = json!({"metadata": {"annotations": {"dapr.io/enabled": "true"}}, "spec": {"containers": []}});
        assert_eq!(
            sidecar_patch(&no_name, &template()).unwrap_err(),
            PatchError::NoAppId
        );
    }
}
