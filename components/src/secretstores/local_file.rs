//! `secretstores.local.file`: secrets read from a JSON file at start-up.
//!
//! Metadata: `secretsFile` (required), `nestedSeparator` (default `:`), `multiValued` (default
//! false). Single-valued: every leaf becomes a secret named by its path (`db:password`) holding one
//! key of the same name. Multi-valued: every top-level key is a secret whose keys are the
//! flattened leaves below it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use super::{Secret, SecretError, SecretStore};
use crate::metadata::Metadata;
use crate::registry::BuildError;

pub struct LocalFileStore {
    secrets: BTreeMap<String, Secret>,
}

impl LocalFileStore {
    pub async fn load(md: &Metadata) -> Result<Self, BuildError> {
        let path = md.require("secretsFile")?.to_string();
        let separator = md.get("nestedSeparator").unwrap_or(":").to_string();
        let multi_valued = md.get_bool("multiValued", false)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| BuildError::Init(format!("cannot read secretsFile {path}: {e}")))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| BuildError::Init(format!("secretsFile {path} is not valid JSON: {e}")))?;
        let Value::Object(top) = json else {
            return Err(BuildError::Init(format!(
                "secretsFile {path} must hold a JSON object"
            )));
        };
        let mut secrets = BTreeMap::new();
        for (key, value) in top {
            let mut leaves = BTreeMap::new();
            if multi_valued {
                match &value {
                    Value::Object(_) => flatten(&value, "", &separator, &mut leaves),
                    _ => flatten(&value, &key, &separator, &mut leaves),
                }
                secrets.insert(key, leaves);
            } else {
                flatten(&value, &key, &separator, &mut leaves);
                for (name, v) in leaves {
                    secrets.insert(name.clone(), BTreeMap::from([(name, v)]));
                }
            }
        }
        Ok(Self { secrets })
    }
}

fn flatten(value: &Value, path: &str, separator: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}{separator}{k}")
                };
                flatten(v, &child, separator, out);
            }
        }
        other => {
            out.insert(path.to_string(), crate::spec::stringify_value(other));
        }
    }
}

#[async_trait]
impl SecretStore for LocalFileStore {
    async fn get_secret(
        &self,
        name: &str,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| SecretError::NotFound(name.to_string()))
    }

    async fn bulk_get_secret(
        &self,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(self.secrets.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(json: &str, extra: &[(&str, &str)]) -> LocalFileStore {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        std::fs::write(&path, json).unwrap();
        let mut md: Metadata = extra.iter().copied().collect();
        md.insert("secretsFile", path.to_string_lossy().to_string());
        LocalFileStore::load(&md).await.unwrap()
    }

    #[tokio::test]
    async fn single_valued_flattens_with_the_separator() {
        let s = store(r#"{"db":{"password":"p","port":5432},"token":"t"}"#, &[]).await;
        let none = BTreeMap::new();
        assert_eq!(
            s.get_secret("db:password", &none).await.unwrap(),
            BTreeMap::from([("db:password".to_string(), "p".to_string())])
        );
        assert_eq!(
            s.get_secret("db:port", &none).await.unwrap()["db:port"],
            "5432"
        );
        assert!(s.get_secret("db", &none).await.is_err());
        assert_eq!(s.bulk_get_secret(&none).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn multi_valued_groups_by_top_level_key() {
        let s = store(
            r#"{"db":{"user":"u","password":"p"},"token":"t"}"#,
            &[("multiValued", "true"), ("nestedSeparator", ".")],
        )
        .await;
        let none = BTreeMap::new();
        let db = s.get_secret("db", &none).await.unwrap();
        assert_eq!(db.len(), 2);
        assert_eq!(db["user"], "u");
        assert_eq!(s.get_secret("token", &none).await.unwrap()["token"], "t");
    }
}
