//! `--mode kubernetes`: the `dapr.io` custom resources of the pod's namespace, read from the
//! Kubernetes API at start-up, where daprd would ask Dapr's operator. Components, Subscriptions,
//! Resiliencies and HTTPEndpoints are listed; Configurations are fetched by the names `--config`
//! gives. A kind whose CustomResourceDefinition is not installed counts as none.

use std::path::PathBuf;

use serde_json::Value;
use tandem_components::kube_api::{KubeApi, KubeError};
use tandem_components::spec::Origin;

/// The listed kinds: plural resource name, API versions to try in order, and kind.
const LISTED: &[(&str, &[&str], &str)] = &[
    ("components", &["v1alpha1"], "Component"),
    ("subscriptions", &["v2alpha1", "v1alpha1"], "Subscription"),
    ("resiliencies", &["v1alpha1"], "Resiliency"),
    ("httpendpoints", &["v1alpha1"], "HTTPEndpoint"),
];

/// The plural names of every `dapr.io` kind the sidecar reads (its RBAC role must cover them).
pub const RESOURCES: &[&str] = &[
    "components",
    "subscriptions",
    "resiliencies",
    "httpendpoints",
    "configurations",
];

/// Every resource of `namespace` the sidecar loads, each with the origin its errors name
/// (`kubernetes: components/statestore`).
pub async fn fetch(
    api: &KubeApi,
    namespace: &str,
    configurations: &[String],
) -> Result<Vec<(Origin, Value)>, KubeError> {
    let mut documents = Vec::new();
    for (plural, versions, kind) in LISTED {
        for item in list(api, namespace, plural, versions).await? {
            documents.push(document(plural, kind, item));
        }
    }
    for name in configurations {
        let path = format!("/apis/dapr.io/v1alpha1/namespaces/{namespace}/configurations/{name}");
        let item = api.get(&path).await?;
        documents.push(document("configurations", "Configuration", item));
    }
    Ok(documents)
}

/// The items of one kind; the first API version the server knows is used.
async fn list(
    api: &KubeApi,
    namespace: &str,
    plural: &str,
    versions: &[&str],
) -> Result<Vec<Value>, KubeError> {
    for version in versions {
        let path = format!("/apis/dapr.io/{version}/namespaces/{namespace}/{plural}");
        match api.get(&path).await {
            Ok(mut list) => {
                return Ok(match list.get_mut("items").map(Value::take) {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                })
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    tracing::info!("no {plural}.dapr.io resources: the custom resource is not installed");
    Ok(Vec::new())
}

/// The object as a resource document: list items may lack `kind`.
fn document(plural: &str, kind: &str, mut item: Value) -> (Origin, Value) {
    let name = item
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(object) = item.as_object_mut() {
        object
            .entry("kind")
            .or_insert_with(|| Value::String(kind.to_string()));
    }
    let origin = Origin {
        file: PathBuf::from(format!("kubernetes: {plural}/{name}")),
        document: 1,
    };
    (origin, item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_read_is_named_for_rbac() {
        for (plural, _, _) in LISTED {
            assert!(RESOURCES.contains(plural));
        }
    }

    #[test]
    fn list_items_get_their_kind_and_an_origin() {
        let (origin, doc) = document(
            "components",
            "Component",
            serde_json::json!({"metadata": {"name": "store"}, "spec": {}}),
        );
        assert_eq!(doc["kind"], "Component");
        assert_eq!(
            origin.to_string(),
            "kubernetes: components/store, document 1"
        );
        let (_, doc) = document(
            "subscriptions",
            "Subscription",
            serde_json::json!({"kind": "Subscription", "metadata": {"name": "s"}}),
        );
        assert_eq!(doc["kind"], "Subscription");
    }
}
