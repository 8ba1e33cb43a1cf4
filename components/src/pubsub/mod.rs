//! Pub/sub brokers.

use async_trait::async_trait;

/// A pub/sub backend.
#[async_trait]
pub trait PubSub: Send + Sync {
    /// Capabilities reported in `/v1.0/metadata`.
    fn capabilities(&self) -> Vec<String>;

    async fn close(&self) {}
}
