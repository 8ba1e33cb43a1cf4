//! `secretstores.kubernetes`: Secrets of the pod's namespace, read through the Kubernetes API
//! with the pod's service account. In `--mode kubernetes` the sidecar loads one named
//! `kubernetes` by itself, as daprd does. Request metadata `namespace` reads another namespace.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;
use serde_json::Value;

use super::{Secret, SecretError, SecretStore};
use crate::kube_api::{is_object_name, KubeApi, KubeError};

pub struct KubernetesSecretStore {
    api: KubeApi,
    namespace: String,
}

impl KubernetesSecretStore {
    /// The store for `namespace` (else the service account's own namespace).
    pub fn in_cluster(namespace: Option<&str>) -> Result<Self, KubeError> {
        let api = KubeApi::in_cluster()?;
        let namespace = namespace
            .or(api.namespace())
            .map(str::to_string)
            .ok_or(KubeError::NotInCluster("NAMESPACE"))?;
        Ok(Self { api, namespace })
    }

    fn namespace<'a>(&'a self, metadata: &'a BTreeMap<String, String>) -> &'a str {
        metadata
            .get("namespace")
            .map(String::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.namespace)
    }
}

#[async_trait]
impl SecretStore for KubernetesSecretStore {
    async fn get_secret(
        &self,
        name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        let namespace = self.namespace(metadata);
        if !is_object_name(name) || !is_object_name(namespace) {
            return Err(SecretError::NotFound(name.to_string()));
        }
        let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
        match self.api.get(&path).await {
            Ok(secret) => decode_data(&secret).map_err(SecretError::Backend),
            Err(e) if e.is_not_found() => Err(SecretError::NotFound(name.to_string())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn bulk_get_secret(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        let namespace = self.namespace(metadata);
        if !is_object_name(namespace) {
            return Err(SecretError::Backend(format!(
                "{namespace:?} is not a namespace name"
            )));
        }
        let list = self
            .api
            .get(&format!("/api/v1/namespaces/{namespace}/secrets"))
            .await
            .map_err(backend)?;
        let mut all = BTreeMap::new();
        for item in list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) {
                all.insert(
                    name.to_string(),
                    decode_data(item).map_err(SecretError::Backend)?,
                );
            }
        }
        Ok(all)
    }
}

fn backend(e: KubeError) -> SecretError {
    SecretError::Backend(e.to_string())
}

/// A Secret's `data` (base64 values) as text.
fn decode_data(secret: &Value) -> Result<Secret, String> {
    let mut out = Secret::new();
    let data = secret.get("data").and_then(Value::as_object);
    for (key, value) in data.into_iter().flatten() {
        let encoded = value.as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("secret key {key:?} is not base64: {e}"))?;
        out.insert(key.clone(), String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_secret_data() {
        let secret = serde_json::json!({"data": {"password": "czNjcjN0", "empty": ""}});
        let data = decode_data(&secret).unwrap();
        assert_eq!(data["password"], "s3cr3t");
        assert_eq!(data["empty"], "");
        assert!(decode_data(&serde_json::json!({"data": {"k": "!!"}})).is_err());
    }
}
