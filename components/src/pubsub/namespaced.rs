//! Namespace-scoped topics, as daprd does them: when any metadata value of a pub/sub component
//! holds the `{namespace}` template, its topics on the broker are `<namespace><topic>`, so apps
//! of different namespaces that share one broker keep to their own events. Apps, subscriptions
//! and CloudEvents keep the topic they named.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Features, PubSub, PubSubError, PublishRequest, SubscribeRequest, Subscription};

pub struct NamespacedPubSub {
    inner: Arc<dyn PubSub>,
    namespace: String,
}

impl NamespacedPubSub {
    pub fn new(inner: Arc<dyn PubSub>, namespace: impl Into<String>) -> Self {
        Self {
            inner,
            namespace: namespace.into(),
        }
    }

    fn broker_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.namespace)
    }
}

#[async_trait]
impl PubSub for NamespacedPubSub {
    fn capabilities(&self) -> Vec<String> {
        self.inner.capabilities()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    async fn publish(&self, mut req: PublishRequest) -> Result<(), PubSubError> {
        req.topic = self.broker_topic(&req.topic);
        self.inner.publish(req).await
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        let reqs = reqs
            .into_iter()
            .map(|mut req| {
                req.topic = self.broker_topic(&req.topic);
                req
            })
            .collect();
        self.inner.bulk_publish(reqs).await
    }

    async fn subscribe(&self, mut req: SubscribeRequest) -> Result<Subscription, PubSubError> {
        req.topic = self.broker_topic(&req.topic);
        self.inner.subscribe(req).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Metadata;
    use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};

    fn publish(topic: &str) -> PublishRequest {
        PublishRequest {
            topic: topic.into(),
            data: bytes::Bytes::from_static(b"x"),
            content_type: None,
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn topics_on_the_broker_carry_the_namespace() {
        let config = MemoryConfig::from_metadata(&Metadata::new(), "app").unwrap();
        let broker: Arc<dyn PubSub> = Arc::new(MemoryPubSub::new(config));
        let shop = NamespacedPubSub::new(broker.clone(), "shop");
        let mut in_shop = shop
            .subscribe(SubscribeRequest {
                topic: "orders".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        // Another namespace on the same broker publishes to its own topic.
        NamespacedPubSub::new(broker.clone(), "other")
            .publish(publish("orders"))
            .await
            .unwrap();
        shop.publish(publish("orders")).await.unwrap();
        let mine = in_shop.messages.recv().await.unwrap();
        assert_eq!(mine.topic, "shoporders");
        mine.ack.ack();
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            in_shop.messages.recv(),
        );
        assert!(
            more.await.is_err(),
            "the other namespace's event stayed out"
        );
    }
}
