//! Secret stores: `secretstores.local.env`, `secretstores.local.file` and
//! `secretstores.kubernetes`.

pub mod kubernetes;
pub mod local_env;
pub mod local_file;

use std::collections::BTreeMap;

use async_trait::async_trait;
use thiserror::Error;

/// One secret: a map of key → value (most stores hold one key named like the secret).
pub type Secret = BTreeMap<String, String>;

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("secret {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Backend(String),
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    async fn get_secret(
        &self,
        name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError>;

    async fn bulk_get_secret(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError>;
}
