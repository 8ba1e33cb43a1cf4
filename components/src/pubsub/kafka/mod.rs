//! `pubsub.kafka`: Apache Kafka through librdkafka (`rdkafka`).
//!
//! Publishing uses one shared producer; every subscription gets its own consumer in the
//! component's consumer group (`consumerGroup`, default the app id) on its own thread, whose
//! offsets are committed only up to the first message not yet settled by the delivery engine
//! (see `consumer.rs` and `ledger.rs`).

pub mod config;
mod consumer;
mod ledger;
mod producer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};
use thiserror::Error;

pub use config::{KafkaConfig, KafkaConfigError};
pub use consumer::{
    KEY_METADATA, OFFSET_METADATA, PARTITION_METADATA, TIMESTAMP_METADATA, TOPIC_METADATA,
};
pub use producer::PARTITION_KEY;

use super::{PubSub, PubSubError, PublishRequest, SubscribeRequest, Subscription};
use crate::registry::BuildError;

/// How long init waits for the brokers to answer a metadata request (connection check, like
/// Dapr's Sarama client creation). The component's `initTimeout` may cut it shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `close` waits for records still in the producer's queue to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `close` waits in all for the consumers to commit and leave and the producer to
/// flush; an unreachable broker must not hold the sidecar's shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum KafkaInitError {
    #[error(transparent)]
    Config(#[from] KafkaConfigError),
    #[error("pubsub.kafka: cannot create the Kafka client: {0}")]
    Client(KafkaError),
    #[error("pubsub.kafka: the connection check did not complete: {0}")]
    Probe(String),
    #[error("pubsub.kafka: brokers {brokers} did not answer: {error}")]
    Connect { brokers: String, error: KafkaError },
}

impl From<KafkaInitError> for BuildError {
    fn from(e: KafkaInitError) -> Self {
        BuildError::Init(e.to_string())
    }
}

pub struct KafkaPubSub {
    config: KafkaConfig,
    producer: producer::Producer,
    closing: Arc<AtomicBool>,
    subscriptions: Mutex<Vec<JoinHandle<()>>>,
}

impl KafkaPubSub {
    /// Creates the producer and checks that the brokers answer.
    pub async fn connect(config: KafkaConfig) -> Result<Self, KafkaInitError> {
        let inner: FutureProducer<producer::ProducerContext> = config
            .producer_config()
            .create_with_context(producer::ProducerContext)
            .map_err(KafkaInitError::Client)?;
        let probe = inner.clone();
        let checked = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, CONNECT_TIMEOUT)
                .map(|_| ())
        })
        .await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(KafkaInitError::Connect {
                    brokers: config.brokers.join(","),
                    error,
                })
            }
            Err(join) => return Err(KafkaInitError::Probe(join.to_string())),
        }
        Ok(Self {
            config,
            producer: producer::Producer::new(inner),
            closing: Arc::new(AtomicBool::new(false)),
            subscriptions: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }
}

#[async_trait]
impl PubSub for KafkaPubSub {
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(PubSubError::Closed);
        }
        self.producer.publish(&req).await
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        if self.closing.load(Ordering::Acquire) {
            return reqs.iter().map(|_| Err(PubSubError::Closed)).collect();
        }
        self.producer.bulk_publish(&reqs).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, PubSubError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(PubSubError::Closed);
        }
        let (subscription, feed) =
            Subscription::new(self.config.channel_buffer_size, self.config.concurrency);
        let thread = consumer::start(&self.config, &req.topic, feed, self.closing.clone())
            .map_err(|e| PubSubError::Subscribe {
                topic: req.topic.clone(),
                message: e.to_string(),
            })?;
        let mut threads = self.subscriptions.lock();
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(subscription)
    }

    async fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *self.subscriptions.lock());
        let producer = self.producer.client().clone();
        let joined = tokio::task::spawn_blocking(move || {
            // Each consumer thread commits what is settled and leaves the group before it ends.
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a kafka consumer thread panicked");
                }
            }
            if let Err(error) = producer.flush(FLUSH_TIMEOUT) {
                tracing::warn!(%error, "kafka producer flush on close failed");
            }
        });
        match tokio::time::timeout(CLOSE_TIMEOUT, joined).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("kafka close task failed"),
            Err(_) => tracing::warn!(
                "kafka consumers did not leave their group within {CLOSE_TIMEOUT:?}; closing anyway"
            ),
        }
    }
}
