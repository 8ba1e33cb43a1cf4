//! Publishing: one record per request, `partitionKey` as the record key and every other request
//! metadata entry as a header (what Dapr's Kafka component does). A publish returns only when
//! the broker acknowledged the record with the configured `acks`.

use futures_util::future::join_all;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::config::PUBLISH_TIMEOUT;
use crate::pubsub::{PubSubError, PublishRequest};

/// The request metadata key whose value becomes the record key.
pub const PARTITION_KEY: &str = "partitionKey";

/// Forwards the producer's librdkafka log lines to `tracing`.
pub struct ProducerContext;

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::consumer::forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka producer error");
    }
}

pub struct Producer {
    inner: FutureProducer<ProducerContext>,
}

impl Producer {
    pub fn new(inner: FutureProducer<ProducerContext>) -> Self {
        Self { inner }
    }

    pub fn client(&self) -> &FutureProducer<ProducerContext> {
        &self.inner
    }

    pub async fn publish(&self, req: &PublishRequest) -> Result<(), PubSubError> {
        let mut key = None;
        let mut headers = OwnedHeaders::new_with_capacity(req.metadata.len());
        for (name, value) in &req.metadata {
            if name.eq_ignore_ascii_case(PARTITION_KEY) {
                key = Some(value.as_str());
            } else {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
        }
        let mut record = FutureRecord::to(&req.topic)
            .payload(req.data.as_ref())
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        // The queue timeout bounds the wait for room in the producer's local queue; the broker
        // acknowledgement itself is bounded by `message.timeout.ms` (also PUBLISH_TIMEOUT).
        self.inner
            .send(record, PUBLISH_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(err, _)| PubSubError::Publish {
                topic: req.topic.clone(),
                message: err.to_string(),
            })
    }

    /// Sends every record at once (librdkafka batches them) and waits for all acknowledgements.
    pub async fn bulk_publish(&self, reqs: &[PublishRequest]) -> Vec<Result<(), PubSubError>> {
        join_all(reqs.iter().map(|r| self.publish(r))).await
    }
}
