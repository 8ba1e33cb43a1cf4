//! The cluster objects an injected sidecar needs, which Dapr's operator would create: the
//! headless Service `<app-id>-dapr` that the `kubernetes` name resolver finds peers through, and
//! a RoleBinding that lets the pod's service account read the namespace's `dapr.io` resources and
//! Secrets (ClusterRole `tandem-sidecar` of the Helm chart). Both are created when a pod is
//! admitted; an existing one is left as it is.

use serde_json::{json, Value};
use tandem_components::kube_api::{KubeApi, KubeError};

use super::patch::{HTTP_PORT, INTERNAL_PORT, METRICS_PORT};

/// Marks the objects the injector created.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tandem-injector");

/// `<app-id>-dapr`, when that is a valid Service name (an RFC 1035 label).
pub fn service_name(app_id: &str) -> Option<String> {
    let name = format!("{app_id}-dapr");
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some(name)
}

/// The headless Service selecting every pod of `app_id`.
pub fn app_service(namespace: &str, name: &str, app_id: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"dapr.io/app-id": app_id, MANAGED_BY.0: MANAGED_BY.1},
        },
        "spec": {
            "clusterIP": "None",
            "selector": {"dapr.io/app-id": app_id},
            "ports": [
                {"name": "dapr-http", "port": 80, "targetPort": HTTP_PORT},
                {"name": "dapr-internal", "port": INTERNAL_PORT, "targetPort": INTERNAL_PORT},
                {"name": "dapr-metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    })
}

/// Binds `cluster_role` to the service account in its namespace.
pub fn role_binding(namespace: &str, service_account: &str, cluster_role: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": format!("{cluster_role}-{service_account}"),
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    })
}

/// Creates `object` in `collection` unless it exists.
pub async fn ensure(api: &KubeApi, collection: &str, object: &Value) -> Result<(), KubeError> {
    match api.create(collection, object).await {
        Ok(_) => {
            tracing::info!(
                "created {} {}",
                object["kind"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        assert_eq!(service_name("orders").as_deref(), Some("orders-dapr"));
        assert_eq!(service_name("Orders"), None);
        assert_eq!(service_name("my.app"), None);
        assert_eq!(service_name(&"a".repeat(60)), None);
    }

    #[test]
    fn the_service_is_headless_and_selects_the_app() {
        let service = app_service("shop", "orders-dapr", "orders");
        assert_eq!(service["spec"]["clusterIP"], "None");
        assert_eq!(service["spec"]["selector"]["dapr.io/app-id"], "orders");
        assert_eq!(service["spec"]["ports"][1]["port"], INTERNAL_PORT);
    }
}
