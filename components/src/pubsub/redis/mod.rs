//! `pubsub.redis`: Redis Streams.
//!
//! A topic is a stream; a subscriber reads it through the consumer group `consumerID` (default the
//! app id) as consumer `consumerID`, like Dapr. The group is created at id 0, so messages
//! published before the first subscription are delivered. Settling a message XACKs it; a nacked
//! or unsettled entry stays pending and is claimed again once idle for `processingTimeout`
//! (checked every `redeliverInterval`). On start a consumer first re-reads its own pending
//! entries, so a sidecar killed mid-stream redelivers them right away.

mod consumer;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{PubSub, PubSubError, PublishRequest, SubscribeRequest, Subscription};
use super::{DEFAULT_CONCURRENCY, DEFAULT_QUEUE_DEPTH};
use crate::metadata::Metadata;
use crate::registry::BuildError;
use crate::resp::{self, Commands, ConnectSettings, Pool, RetryPolicy, Value};

/// Dapr's code defaults (the docs list them swapped).
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_secs(15);
/// How long one XREADGROUP waits for new entries before checking for shutdown.
const READ_BLOCK: Duration = Duration::from_millis(1000);

#[derive(Clone)]
pub struct RedisConfig {
    /// Address, credentials, database, TLS (`enableTLS`, `caCert`, `clientCert`, `clientKey`) and
    /// timeouts, as for state.redis.
    pub connection: ConnectSettings,
    pub retry: RetryPolicy,
    pub pool_size: usize,
    pub consumer_id: String,
    pub concurrency: usize,
    pub queue_depth: usize,
    pub processing_timeout: Duration,
    pub redeliver_interval: Duration,
    pub max_len_approx: Option<u64>,
}

impl RedisConfig {
    pub fn from_metadata(md: &Metadata, app_id: &str) -> Result<Self, BuildError> {
        let max_len = md.get_u64("maxLenApprox", 0)?;
        Ok(Self {
            connection: resp::connect_settings(md)?,
            retry: resp::retry_policy(md)?,
            pool_size: resp::pool_size(md)?,
            consumer_id: md.get_non_empty("consumerID").unwrap_or(app_id).to_string(),
            concurrency: md
                .get_u64("concurrency", DEFAULT_CONCURRENCY as u64)?
                .max(1) as usize,
            queue_depth: md.get_u64("queueDepth", DEFAULT_QUEUE_DEPTH as u64)?.max(1) as usize,
            processing_timeout: md.get_duration(
                "processingTimeout",
                Duration::from_millis(1),
                DEFAULT_PROCESSING_TIMEOUT,
            )?,
            redeliver_interval: md.get_duration(
                "redeliverInterval",
                Duration::from_millis(1),
                DEFAULT_REDELIVER_INTERVAL,
            )?,
            max_len_approx: (max_len > 0).then_some(max_len),
        })
    }

    fn address(&self) -> String {
        format!("{}:{}", self.connection.host, self.connection.port)
    }
}

pub struct RedisPubSub {
    config: RedisConfig,
    /// Publishing, acknowledgements and group management.
    pool: std::sync::Arc<Pool>,
    closed: tokio::sync::watch::Sender<bool>,
    /// The acknowledgement tasks, awaited at close so settled messages are XACKed before exit.
    ack_tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// How long `close` waits for outstanding acknowledgements to be written.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

impl RedisPubSub {
    pub async fn connect(config: RedisConfig) -> Result<Self, BuildError> {
        let pool = Pool::connect(config.connection.clone(), config.retry, config.pool_size)
            .await
            .map_err(|e| BuildError::Init(format!("redis at {}: {e}", config.address())))?;
        Ok(Self {
            config,
            pool: std::sync::Arc::new(pool),
            closed: tokio::sync::watch::channel(false).0,
            ack_tasks: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Appends an XADD for `req` to `commands`.
    fn xadd(&self, commands: &mut Commands, req: &PublishRequest) -> Result<(), PubSubError> {
        let metadata = serde_json::to_string(&req.metadata).map_err(|e| PubSubError::Publish {
            topic: req.topic.clone(),
            message: e.to_string(),
        })?;
        match self.config.max_len_approx {
            Some(max) => commands.push(&[
                &"XADD",
                &req.topic,
                &"MAXLEN",
                &"~",
                &max.to_string(),
                &"*",
                &"data",
                &req.data,
                &"metadata",
                &metadata,
            ]),
            None => commands.push(&[
                &"XADD",
                &req.topic,
                &"*",
                &"data",
                &req.data,
                &"metadata",
                &metadata,
            ]),
        };
        Ok(())
    }

    /// A reader of its own: XREADGROUP blocks its connection.
    async fn reader(&self) -> Result<Pool, resp::RespError> {
        let mut settings = self.config.connection.clone();
        settings.read_timeout += READ_BLOCK;
        let no_retry = RetryPolicy {
            max_retries: 0,
            ..self.config.retry
        };
        Pool::connect(settings, no_retry, 1).await
    }
}

/// An XADD reply: the new entry's id, or why there is none.
fn xadd_outcome(reply: Result<&Value, &resp::RespError>, topic: &str) -> Result<(), PubSubError> {
    let message = match reply {
        Ok(Value::Error(e)) => e.clone(),
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    Err(PubSubError::Publish {
        topic: topic.to_string(),
        message,
    })
}

#[async_trait]
impl PubSub for RedisPubSub {
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        let mut commands = Commands::new();
        self.xadd(&mut commands, &req)?;
        let reply = self.pool.query(&commands).await;
        let reply = reply.as_ref().map(|r| r.first().unwrap_or(&Value::Nil));
        xadd_outcome(reply, &req.topic)
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        // One round trip for the batch; each entry gets its own reply.
        let mut commands = Commands::new();
        let prepared: Vec<Option<PubSubError>> = reqs
            .iter()
            .map(|req| self.xadd(&mut commands, req).err())
            .collect();
        let outcome = self.pool.query(&commands).await;
        let mut replies = outcome.as_ref().map(|r| r.iter());
        reqs.iter()
            .zip(prepared)
            .map(|(req, early)| match (early, &mut replies) {
                (Some(e), _) => Err(e),
                (None, Ok(replies)) => {
                    xadd_outcome(Ok(replies.next().unwrap_or(&Value::Nil)), &req.topic)
                }
                (None, Err(e)) => xadd_outcome(Err(e), &req.topic),
            })
            .collect()
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, PubSubError> {
        let failed = |message: String| PubSubError::Subscribe {
            topic: req.topic.clone(),
            message,
        };
        let reader = self.reader().await.map_err(|e| failed(e.to_string()))?;
        consumer::ensure_group(&self.pool, &req.topic, &self.config.consumer_id)
            .await
            .map_err(failed)?;
        let (subscription, feed) =
            Subscription::new(self.config.queue_depth, self.config.concurrency);
        let acks = consumer::Consumer::start(
            self.config.clone(),
            req.topic,
            self.pool.clone(),
            reader,
            feed,
            self.closed.subscribe(),
        );
        self.ack_tasks.lock().push(acks);
        Ok(subscription)
    }

    async fn close(&self) {
        self.closed.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.ack_tasks.lock());
        let flush = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(CLOSE_FLUSH, flush).await.is_err() {
            tracing::warn!("redis pub/sub: acknowledgements not all written at close; those entries will be redelivered");
        }
    }
}

/// Decodes the `metadata` field written by [`RedisPubSub::publish`].
fn decode_metadata(value: Option<&Bytes>) -> BTreeMap<String, String> {
    value
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_defaults_and_units() {
        let md: Metadata = [
            ("redisHost", "localhost:6380"),
            ("processingTimeout", "2000"),
            ("redeliverInterval", "1s"),
            ("maxLenApprox", "1000"),
        ]
        .into_iter()
        .collect();
        let c = RedisConfig::from_metadata(&md, "app").unwrap();
        assert_eq!(c.address(), "localhost:6380");
        assert_eq!(c.consumer_id, "app");
        assert_eq!(c.concurrency, 10);
        assert_eq!(c.queue_depth, 100);
        assert_eq!(c.processing_timeout, Duration::from_secs(2));
        assert_eq!(c.redeliver_interval, Duration::from_secs(1));
        assert_eq!(c.max_len_approx, Some(1000));
        let md: Metadata = [("redisHost", "h")].into_iter().collect();
        let c = RedisConfig::from_metadata(&md, "app").unwrap();
        assert_eq!(c.processing_timeout, DEFAULT_PROCESSING_TIMEOUT);
        assert!(RedisConfig::from_metadata(&Metadata::new(), "app").is_err());
    }
}
