//! One `AdmissionReview` (admission.k8s.io/v1) in, one out: pods that ask for a sidecar are
//! allowed with a JSON Patch adding it; every other object is allowed unchanged.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_components::kube_api::KubeApi;
use thiserror::Error;

use super::cluster;
use super::patch::{self, SidecarTemplate};

/// What the injector does besides patching.
pub struct Injector {
    pub template: SidecarTemplate,
    /// The API, when the injector may create Services and RoleBindings.
    pub api: Option<KubeApi>,
    /// The ClusterRole bound to each injected pod's service account (None: bind nothing).
    pub sidecar_cluster_role: Option<String>,
}

#[derive(Debug, Error)]
pub enum AdmissionError {
    #[error("not an AdmissionReview: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

#[derive(Deserialize)]
struct Review {
    request: Option<ReviewRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest {
    uid: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    object: Value,
    #[serde(default)]
    dry_run: bool,
}

impl Injector {
    /// The answer to one review.
    pub async fn review(&self, body: &[u8]) -> Result<Value, AdmissionError> {
        let request = serde_json::from_slice::<Review>(body)?
            .request
            .ok_or(AdmissionError::NoRequest)?;
        let response = self.admit(&request).await;
        Ok(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }))
    }

    async fn admit(&self, request: &ReviewRequest) -> Value {
        let uid = &request.uid;
        let pod = &request.object;
        if !patch::wants_sidecar(pod) {
            return json!({"uid": uid, "allowed": true});
        }
        let ops = match patch::sidecar_patch(pod, &self.template) {
            Ok(ops) => ops,
            Err(e) => {
                tracing::warn!("pod in namespace {} refused: {e}", request.namespace);
                return json!({
                    "uid": uid,
                    "allowed": false,
                    "status": {"code": 400, "message": format!("tandem injector: {e}")},
                });
            }
        };
        let warnings = if request.dry_run {
            Vec::new()
        } else {
            self.prepare_cluster(request).await
        };
        let patch = base64::engine::general_purpose::STANDARD.encode(Value::from(ops).to_string());
        let mut response = json!({
            "uid": uid,
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": patch,
        });
        if !warnings.is_empty() {
            response["warnings"] = json!(warnings);
        }
        response
    }

    /// Creates the app's Service and the service account's RoleBinding; what fails becomes an
    /// admission warning (the pod still starts, and `kubectl` shows why calls to it may fail).
    async fn prepare_cluster(&self, request: &ReviewRequest) -> Vec<String> {
        let Some(api) = &self.api else {
            return Vec::new();
        };
        let namespace = request.namespace.as_str();
        let mut warnings = Vec::new();
        let app_id = patch::app_id(&request.object).unwrap_or_default();
        match cluster::service_name(&app_id) {
            Some(name) => {
                let service = cluster::app_service(namespace, &name, &app_id);
                let path = format!("/api/v1/namespaces/{namespace}/services");
                if let Err(e) = cluster::ensure(api, &path, &service).await {
                    warnings.push(format!("tandem injector: Service {name} not created: {e}"));
                }
            }
            None => warnings.push(format!(
                "tandem injector: app id {app_id:?} is not a DNS label, so no Service \
                 {app_id}-dapr: other apps cannot invoke it"
            )),
        }
        if let Some(role) = &self.sidecar_cluster_role {
            let account = request
                .object
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            let binding = cluster::role_binding(namespace, account, role);
            let path =
                format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings");
            if let Err(e) = cluster::ensure(api, &path, &binding).await {
                warnings.push(format!(
                    "tandem injector: RoleBinding for service account {account} not created: {e}"
                ));
            }
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector() -> Injector {
        Injector {
            template: SidecarTemplate {
                image: "tandem:test".into(),
                pull_policy: "IfNotPresent".into(),
            },
            api: None,
            sidecar_cluster_role: None,
        }
    }

    fn review(object: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u-1", "namespace": "shop", "operation": "CREATE", "object": object},
        })
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn pods_without_the_annotation_pass_unchanged() {
        let answer = injector()
            .review(&review(
                json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
            ))
            .await
            .unwrap();
        assert_eq!(answer["response"], json!({"uid": "u-1", "allowed": true}));
    }

    #[tokio::test]
    async fn enabled_pods_get_a_patch_and_bad_ones_a_reason() {
        let pod = json!({
            "metadata": {"name": "p", "annotations": {"dapr.io/enabled": "true"}},
            "spec": {"containers": [{"name": "app"}]},
        });
        let answer = injector().review(&review(pod)).await.unwrap();
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
        assert_eq!(ops[0]["value"]["name"], "daprd");

        let bad = json!({
            "metadata": {"name": "p", "annotations": {"dapr.io/enabled": "true", "dapr.io/app-port": "x"}},
            "spec": {"containers": []},
        });
        let answer = injector().review(&review(bad)).await.unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("dapr.io/app-port"), "{message}");
    }

    #[tokio::test]
    async fn malformed_reviews_are_errors() {
        assert!(injector().review(b"{").await.is_err());
        assert!(matches!(
            injector().review(b"{}").await,
            Err(AdmissionError::NoRequest)
        ));
    }
}
