//! Kubernetes without a cluster: a fake API server over TLS (with a service account directory
//! of token, CA and namespace, as a pod has) stands in for the cluster. The sidecar in
//! `--mode kubernetes` reads its `dapr.io` resources and Secrets from it; `tandem injector`
//! answers AdmissionReviews over HTTPS, creates the app's Service and RoleBinding through it,
//! and the sidecar it injects starts with exactly the arguments of the patch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tandem_testkit::{free_port, http, Sidecar};

#[path = "support/injector.rs"]
mod injector;
#[path = "support/tls.rs"]
mod tls;

use tls::{https_post, serve_tls, Certificates};

const BIN: &str = env!("CARGO_BIN_EXE_tandem");
const TOKEN: &str = "test-service-account-token";
const NAMESPACE: &str = "shop";

/// One scripted answer: method, path, status and JSON body.
type Answer = (Method, String, u16, Value);

/// A fake Kubernetes API: answers from a table of `(method, path) → (status, body)`, records
/// every request, and refuses requests without the service account's token.
#[derive(Clone, Default)]
struct FakeApi {
    answers: Arc<Mutex<Vec<Answer>>>,
    requests: Arc<Mutex<Vec<(Method, String, Value)>>>,
}

impl FakeApi {
    fn answer(&self, method: Method, path: &str, status: u16, body: Value) {
        self.answers
            .lock()
            .push((method, path.to_string(), status, body));
    }

    fn requests(&self, method: Method, path: &str) -> Vec<Value> {
        self.requests
            .lock()
            .iter()
            .filter(|(m, p, _)| *m == method && p == path)
            .map(|(_, _, body)| body.clone())
            .collect()
    }

    async fn handle(
        State(api): State<FakeApi>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {TOKEN}"))
        {
            return (
                StatusCode::UNAUTHORIZED,
                json!({"kind": "Status", "message": "Unauthorized"}).to_string(),
            );
        }
        let path = uri.path().to_string();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        api.requests
            .lock()
            .push((method.clone(), path.clone(), body));
        let answers = api.answers.lock();
        match answers.iter().find(|(m, p, _, _)| *m == method && *p == path) {
            Some((_, _, status, body)) => (StatusCode::from_u16(*status).unwrap(), body.to_string()),
            None => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "message": "the server could not find the requested resource"}).to_string(),
            ),
        }
    }

    /// Starts the server; returns the environment a pod would have to reach it.
    async fn start(&self, dir: &Path) -> Vec<(String, String)> {
        let certs = Certificates::new();
        std::fs::write(dir.join("token"), TOKEN).unwrap();
        std::fs::write(dir.join("ca.crt"), &certs.ca_pem).unwrap();
        std::fs::write(dir.join("namespace"), NAMESPACE).unwrap();
        let router = Router::new()
            .fallback(FakeApi::handle)
            .with_state(self.clone());
        let port = serve_tls(router, &certs).await;
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
            (
                "TANDEM_SERVICEACCOUNT_DIR".into(),
                dir.display().to_string(),
            ),
        ]
    }
}

fn list(items: Vec<Value>) -> Value {
    json!({"kind": "List", "items": items})
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The resources of namespace `shop`: a state store whose metadata comes from a Kubernetes
/// Secret, a v1alpha1 Subscription (the v2alpha1 version is not installed), a Configuration,
/// and the Secret itself.
fn cluster_with_resources() -> FakeApi {
    let api = FakeApi::default();
    let base = format!("/apis/dapr.io/v1alpha1/namespaces/{NAMESPACE}");
    api.answer(
        Method::GET,
        &format!("{base}/components"),
        200,
        list(vec![
            json!({
                "apiVersion": "dapr.io/v1alpha1", "kind": "Component",
                "metadata": {"name": "orders-store", "namespace": NAMESPACE},
                "spec": {"type": "state.in-memory", "version": "v1", "metadata": [
                    {"name": "keyPrefix", "secretKeyRef": {"name": "store-settings", "key": "prefix"}}
                ]}
            }),
            json!({
                "apiVersion": "dapr.io/v1alpha1", "kind": "Component",
                "metadata": {"name": "other-apps-store"},
                "spec": {"type": "state.in-memory", "version": "v1"},
                "scopes": ["someone-else"]
            }),
        ]),
    );
    api.answer(
        Method::GET,
        &format!("{base}/subscriptions"),
        200,
        list(vec![json!({
            "metadata": {"name": "orders-sub"},
            "spec": {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
        })]),
    );
    api.answer(
        Method::GET,
        &format!("{base}/resiliencies"),
        200,
        list(vec![]),
    );
    api.answer(
        Method::GET,
        &format!("{base}/configurations/appconfig"),
        200,
        json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
            "metadata": {"name": "appconfig"},
            "spec": {"secrets": {"scopes": [{"storeName": "kubernetes", "defaultAccess": "allow", "deniedSecrets": ["hidden"]}]}}
        }),
    );
    api.answer(
        Method::GET,
        &format!("/api/v1/namespaces/{NAMESPACE}/secrets/store-settings"),
        200,
        json!({"metadata": {"name": "store-settings"}, "data": {"prefix": b64("name"), "password": b64("s3cr3t")}}),
    );
    api.answer(
        Method::GET,
        &format!("/api/v1/namespaces/{NAMESPACE}/secrets/hidden"),
        200,
        json!({"metadata": {"name": "hidden"}, "data": {"x": b64("y")}}),
    );
    api
}

/// A sidecar for app `orders` in a pod of namespace `shop`, on free ports.
fn pod_sidecar(env: &[(String, String)]) -> tandem_testkit::SidecarBuilder {
    let mut builder = Sidecar::builder(BIN)
        .app_id("orders")
        .args(["--dapr-public-port", &free_port().to_string()])
        .args(["--dapr-internal-grpc-port", &free_port().to_string()])
        .env("NAMESPACE", NAMESPACE);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder
}

fn kubernetes_sidecar(env: &[(String, String)]) -> tandem_testkit::SidecarBuilder {
    pod_sidecar(env).args(["--mode", "kubernetes", "--config", "appconfig"])
}

#[tokio::test]
async fn kubernetes_mode_reads_resources_and_secrets_from_the_api() {
    let api = cluster_with_resources();
    let dir = tempfile::tempdir().unwrap();
    let env = api.start(dir.path()).await;
    let sidecar = kubernetes_sidecar(&env).start().await;

    let md = tandem_testkit::get_json(&sidecar.url("/v1.0/metadata")).await;
    let components: Vec<(&str, &str)> = md["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert!(
        components.contains(&("orders-store", "state.in-memory")),
        "{md}"
    );
    assert!(
        components.contains(&("kubernetes", "secretstores.kubernetes")),
        "{md}"
    );
    assert!(
        !components.iter().any(|(n, _)| *n == "other-apps-store"),
        "scoped out: {md}"
    );
    assert!(
        !components.iter().any(|(n, _)| *n == "statestore"),
        "no embedded defaults in kubernetes mode: {md}"
    );
    assert_eq!(md["subscriptions"][0]["topic"], "orders", "{md}");

    // keyPrefix came from the Secret: "name" prefixes keys with the component name.
    let client = http();
    let saved = client
        .post(sidecar.url("/v1.0/state/orders-store"))
        .json(&json!([{"key": "k1", "value": "v1"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status().as_u16(), 204);
    let got = client
        .get(sidecar.url("/v1.0/state/orders-store/k1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "\"v1\"");

    let secret =
        tandem_testkit::get_json(&sidecar.url("/v1.0/secrets/kubernetes/store-settings")).await;
    assert_eq!(secret, json!({"prefix": "name", "password": "s3cr3t"}));
    let missing = client
        .get(sidecar.url("/v1.0/secrets/kubernetes/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 500, "as daprd: ERR_SECRET_GET");
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["errorCode"], "ERR_SECRET_GET");
    assert!(
        error["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
    let denied = client
        .get(sidecar.url("/v1.0/secrets/kubernetes/hidden"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        denied.status().as_u16(),
        403,
        "the Configuration's secret scope applies"
    );
}

#[tokio::test]
async fn kubernetes_mode_without_rights_fails_naming_the_request() {
    let api = FakeApi::default();
    api.answer(
        Method::GET,
        &format!("/apis/dapr.io/v1alpha1/namespaces/{NAMESPACE}/components"),
        403,
        json!({"kind": "Status", "message": "components.dapr.io is forbidden: User \"system:serviceaccount:shop:default\" cannot list resource"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let env = api.start(dir.path()).await;
    let mut sidecar = kubernetes_sidecar(&env).spawn();
    let status = tokio::time::timeout(Duration::from_secs(30), sidecar.wait())
        .await
        .expect("the sidecar exits");
    assert!(!status.success());
    let logs = sidecar.logs();
    assert!(logs.contains("components"), "{logs}");
    assert!(logs.contains("403"), "{logs}");
    assert!(logs.contains("cannot list resource"), "{logs}");
}

/// Applies the `add` operations of a JSON Patch (all the injector emits).
fn apply_patch(mut document: Value, ops: &[Value]) -> Value {
    for op in ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = document
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("no {parent}"));
        let value = op["value"].clone();
        match target {
            Value::Object(map) => {
                map.insert(last, value);
            }
            Value::Array(items) if last == "-" => items.push(value),
            Value::Array(items) => items.insert(last.parse().unwrap(), value),
            other => panic!("cannot add into {other}"),
        }
    }
    document
}

#[tokio::test]
async fn the_injector_patches_pods_and_prepares_the_cluster() {
    let api = cluster_with_resources();
    let created = json!({"kind": "Status"});
    api.answer(
        Method::POST,
        &format!("/api/v1/namespaces/{NAMESPACE}/services"),
        201,
        created.clone(),
    );
    api.answer(
        Method::POST,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings"),
        409,
        json!({"kind": "Status", "message": "already exists"}),
    );
    let sa_dir = tempfile::tempdir().unwrap();
    let env = api.start(sa_dir.path()).await;

    let certs = Certificates::new();
    let tls_dir = tempfile::tempdir().unwrap();
    std::fs::write(tls_dir.path().join("tls.crt"), &certs.cert_pem).unwrap();
    std::fs::write(tls_dir.path().join("tls.key"), &certs.key_pem).unwrap();
    let port = free_port();
    let args: Vec<std::ffi::OsString> = vec![
        "injector".into(),
        "--port".into(),
        port.to_string().into(),
        "--listen-address".into(),
        "127.0.0.1".into(),
        "--tls-cert-file".into(),
        tls_dir.path().join("tls.crt").into(),
        "--tls-key-file".into(),
        tls_dir.path().join("tls.key").into(),
        "--sidecar-image".into(),
        "example.org/tandem:test".into(),
    ];
    let _injector = injector::start(BIN, &args, &env, port).await;

    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "orders-7d9f-", "annotations": {
            "dapr.io/enabled": "true", "dapr.io/app-id": "orders", "dapr.io/config": "appconfig",
            "dapr.io/app-port": "8080"
        }},
        "spec": {"containers": [{"name": "app", "image": "orders:1"}]}
    });
    let review = |object: Value| {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "uid-1", "namespace": NAMESPACE, "operation": "CREATE", "object": object, "dryRun": false}
        })
    };
    let (status, answer) = https_post(
        port,
        &certs.ca_pem,
        "127.0.0.1",
        "/mutate",
        review(pod.clone()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-1");
    assert_eq!(response["allowed"], true);
    assert!(
        response.get("warnings").is_none(),
        "an existing RoleBinding is fine: {response}"
    );
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let injected = apply_patch(pod.clone(), &ops);
    let containers = injected["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["image"], "example.org/tandem:test");
    assert_eq!(injected["metadata"]["labels"]["dapr.io/app-id"], "orders");
    assert!(containers[0]["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "DAPR_HTTP_PORT", "value": "3500"})));

    let services = api.requests(
        Method::POST,
        &format!("/api/v1/namespaces/{NAMESPACE}/services"),
    );
    assert_eq!(services.len(), 1);
    assert_eq!(services[0]["metadata"]["name"], "orders-dapr");
    assert_eq!(services[0]["spec"]["selector"]["dapr.io/app-id"], "orders");
    let bindings = api.requests(
        Method::POST,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings"),
    );
    assert_eq!(bindings[0]["subjects"][0]["name"], "default");
    assert_eq!(bindings[0]["roleRef"]["name"], "tandem-sidecar");

    // Pods without the annotation pass unchanged; garbage is a 400.
    let (_, answer) = https_post(
        port,
        &certs.ca_pem,
        "127.0.0.1",
        "/mutate",
        review(json!({"metadata": {"name": "plain"}, "spec": {"containers": []}})),
    )
    .await;
    assert_eq!(answer["response"], json!({"uid": "uid-1", "allowed": true}));
    let (status, _) = https_post(
        port,
        &certs.ca_pem,
        "127.0.0.1",
        "/mutate",
        json!("not a review"),
    )
    .await;
    assert_eq!(status, 400);

    // A dry run is patched but creates nothing.
    let mut dry_run = review(pod.clone());
    dry_run["request"]["dryRun"] = json!(true);
    let (_, answer) = https_post(port, &certs.ca_pem, "127.0.0.1", "/mutate", dry_run).await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let services_path = format!("/api/v1/namespaces/{NAMESPACE}/services");
    assert_eq!(api.requests(Method::POST, &services_path).len(), 1);

    // The injected container's arguments start a working sidecar. The test harness picks the
    // app id, free ports and a loopback address instead of the pod's fixed ones.
    let replaced = [
        "--app-id",
        "--dapr-http-port",
        "--dapr-internal-grpc-port",
        "--dapr-public-port",
        "--metrics-port",
        "--dapr-listen-addresses",
    ];
    let injected_args: Vec<&str> = containers[1]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(injected_args[0], "sidecar");
    let mut args = Vec::new();
    let mut rest = injected_args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().expect("every injected flag has a value");
        if !replaced.contains(flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    let sidecar = pod_sidecar(&env).args(args).start().await;
    let md = tandem_testkit::get_json(&sidecar.url("/v1.0/metadata")).await;
    assert_eq!(md["id"], "orders");
}
