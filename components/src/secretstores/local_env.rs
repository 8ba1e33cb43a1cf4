//! `secretstores.local.env`: the process environment as a secret store. With metadata `prefix`,
//! only variables starting with it are visible, under their names without the prefix.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{Secret, SecretError, SecretStore};
use crate::metadata::{Metadata, MetadataError};

pub struct LocalEnvStore {
    prefix: String,
}

impl LocalEnvStore {
    pub fn new(md: &Metadata) -> Result<Self, MetadataError> {
        Ok(Self {
            prefix: md.get("prefix").unwrap_or_default().to_string(),
        })
    }
}

#[async_trait]
impl SecretStore for LocalEnvStore {
    async fn get_secret(
        &self,
        name: &str,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        let value = std::env::var(format!("{}{name}", self.prefix))
            .map_err(|_| SecretError::NotFound(name.to_string()))?;
        Ok(BTreeMap::from([(name.to_string(), value)]))
    }

    async fn bulk_get_secret(
        &self,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(std::env::vars()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(&self.prefix)?.to_string();
                (!name.is_empty()).then(|| (name.clone(), BTreeMap::from([(name, v)])))
            })
            .collect())
    }
}
