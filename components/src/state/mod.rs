//! State stores.

use async_trait::async_trait;

/// A state store backend.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Capabilities as Dapr names them: `ETAG`, `TRANSACTIONAL`, `TTL`, `ACTOR`.
    fn capabilities(&self) -> Vec<String>;

    async fn close(&self) {}
}
