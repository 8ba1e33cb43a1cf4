//! The Helm chart in `charts/tandem`, rendered offline by Helm's own library (PyPI
//! `helm-python-sdk`, in tests/sdk/python/.venv) and checked against the binary it deploys:
//! `helm lint --strict` passes; the rendered injector Deployment, started with its own arguments
//! and the certificate of the rendered Secret, answers the rendered webhook configuration (its
//! service name, path and caBundle) with a sidecar of the rendered image; the sidecar's role and
//! the CRDs cover every `dapr.io` kind the sidecar reads.

#[path = "support/injector.rs"]
mod injector;
#[path = "support/tls.rs"]
mod tls;

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};
use tandem::kubernetes::resources::RESOURCES;
use tandem_testkit::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");
const RELEASE: &str = "tandem";
const NAMESPACE: &str = "tandem-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every rendered object of the chart with `values`.
fn render(values: Value) -> Vec<Value> {
    let python = repo().join("tests/sdk/python/.venv/bin/python");
    assert!(
        python.exists(),
        "create the venv at tests/sdk/python/.venv (scripts/install-test-deps.sh)"
    );
    let output = std::process::Command::new(python)
        .arg(repo().join("tests/sdk/python/render_chart.py"))
        .arg(repo().join("charts/tandem"))
        .args([RELEASE, NAMESPACE, &values.to_string()])
        .output()
        .expect("run render_chart.py");
    assert!(
        output.status.success(),
        "helm lint or render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON from render_chart.py");
    let mut objects = Vec::new();
    for (path, text) in answer["manifests"].as_object().unwrap() {
        if path.ends_with(".yaml") {
            let documents: Vec<Value> = serde_saphyr::from_multiple(text.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{path} renders to invalid YAML: {e}"));
            objects.extend(documents.into_iter().filter(|d| !d.is_null()));
        }
    }
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart renders no {kind}"))
}

fn crd_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("charts/tandem/crds/dapr.io.yaml")).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    documents
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_rendered_injector_serves_the_webhook_the_chart_configures() {
    let objects = render(json!({"image": {"repository": "registry.example/tandem", "tag": "t1"}}));
    let deployment = find(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/tandem:t1");
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    let secret = find(&objects, "Secret");
    let decode = |key: &str| {
        let text = secret["data"][key].as_str().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap(),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), decode("tls.crt")).unwrap();
    std::fs::write(dir.path().join("tls.key"), decode("tls.key")).unwrap();

    // The chart's own arguments, with the certificate where this test put it, a free port on
    // loopback, and no cluster to create Services in.
    let port = free_port();
    let mut command_line = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let replacement = match arg.as_str() {
            "--tls-cert-file" => Some(dir.path().join("tls.crt").display().to_string()),
            "--tls-key-file" => Some(dir.path().join("tls.key").display().to_string()),
            "--port" => Some(port.to_string()),
            "--manage-cluster-objects" => Some("false".to_string()),
            _ => None,
        };
        command_line.push(arg.clone());
        if let Some(value) = replacement {
            rest.next();
            command_line.push(value);
        }
    }
    command_line.extend(["--listen-address".to_string(), "127.0.0.1".to_string()]);
    let injector_args: Vec<std::ffi::OsString> = command_line.iter().map(Into::into).collect();
    let _injector = injector::start(BIN, &injector_args, &[], port).await;

    // Call it as the API server would: the service's DNS name, the path and the caBundle of the
    // webhook configuration.
    let webhook = &find(&objects, "MutatingWebhookConfiguration")["webhooks"][0];
    let service = &webhook["clientConfig"]["service"];
    let server_name = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap(),
        service["namespace"].as_str().unwrap()
    );
    let ca = base64::engine::general_purpose::STANDARD
        .decode(webhook["clientConfig"]["caBundle"].as_str().unwrap())
        .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "namespace": "shop", "operation": "CREATE", "object": {
            "metadata": {"name": "p", "annotations": {"dapr.io/enabled": "true", "dapr.io/app-id": "orders"}},
            "spec": {"containers": [{"name": "app"}]}
        }}
    });
    let (status, answer) = tls::https_post(
        port,
        &String::from_utf8(ca).unwrap(),
        &server_name,
        service["path"].as_str().unwrap(),
        review,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    assert_eq!(ops[0]["value"]["image"], "registry.example/tandem:t1");

    // What the injector binds, the chart defines; and it covers what sidecars read.
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .collect();
    let bound = &args[args
        .iter()
        .position(|a| a == "--sidecar-cluster-role")
        .unwrap()
        + 1];
    let sidecar_role = roles
        .iter()
        .find(|r| r["metadata"]["name"] == bound.as_str())
        .expect("the ClusterRole the injector binds");
    let dapr_rule = sidecar_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["apiGroups"][0] == "dapr.io")
        .unwrap();
    let crds = crd_names();
    for plural in RESOURCES {
        assert!(
            dapr_rule["resources"]
                .as_array()
                .unwrap()
                .contains(&json!(plural)),
            "the sidecar role does not grant {plural}"
        );
        assert!(
            crds.contains(&format!("{plural}.dapr.io")),
            "no CRD for {plural}"
        );
    }
}

#[test]
fn the_chart_deploys_this_version() {
    let text = std::fs::read_to_string(repo().join("charts/tandem/Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}
