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
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::{PubSub, PubSubError, PublishRequest, SubscribeRequest, Subscription};
use super::{DEFAULT_CONCURRENCY, DEFAULT_QUEUE_DEPTH};
use crate::metadata::{Metadata, MetadataError};
use crate::registry::BuildError;

/// Dapr's code defaults (the docs list them swapped).
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_secs(15);
/// Every Redis call gives up after this long (the connection then reconnects).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one XREADGROUP waits for new entries before checking for shutdown.
const READ_BLOCK: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// `enableTLS`: rustls, verified against the system roots or `caCert`; `clientCert` and
    /// `clientKey` for mTLS (the same settings as state.redis).
    pub tls: bool,
    pub consumer_id: String,
    pub concurrency: usize,
    pub queue_depth: usize,
    pub processing_timeout: Duration,
    pub redeliver_interval: Duration,
    pub max_len_approx: Option<u64>,
}

impl RedisConfig {
    pub fn from_metadata(md: &Metadata, app_id: &str) -> Result<Self, BuildError> {
        let address = md.require("redisHost")?;
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().map_err(|_| MetadataError::Invalid {
                    field: "redisHost".into(),
                    value: address.to_string(),
                    expected: "host:port",
                })?,
            ),
            None => (address.to_string(), 6379),
        };
        let max_len = md.get_u64("maxLenApprox", 0)?;
        Ok(Self {
            host,
            port,
            username: md.get_non_empty("redisUsername").map(str::to_string),
            password: md.get_non_empty("redisPassword").map(str::to_string),
            db: md.get_i64("redisDB", 0)?,
            tls: md.get_bool("enableTLS", false)?,
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

    fn client(&self, md: &Metadata) -> Result<redis::Client, BuildError> {
        let mut settings = RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| BuildError::Init(format!("redisHost: {e}")))?
            .set_redis_settings(settings)
            .set_tcp_settings(crate::state::redis::tcp_settings());
        if self.tls {
            crate::state::redis::tls_client(md, info)
        } else {
            redis::Client::open(info).map_err(|e| BuildError::Init(format!("redisHost: {e}")))
        }
    }
}

pub struct RedisPubSub {
    config: RedisConfig,
    client: redis::Client,
    conn: ConnectionManager,
    closed: tokio::sync::watch::Sender<bool>,
    /// The acknowledgement tasks, awaited at close so settled messages are XACKed before exit.
    ack_tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// How long `close` waits for outstanding acknowledgements to be written.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// A connection that reconnects by itself after Redis restarts.
async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(3);
    ConnectionManager::new_with_config(client.clone(), config).await
}

impl RedisPubSub {
    pub async fn connect(config: RedisConfig, md: &Metadata) -> Result<Self, BuildError> {
        let client = config.client(md)?;
        let mut conn = connect(&client, RESPONSE_TIMEOUT).await.map_err(|e| {
            BuildError::Init(format!(
                "cannot connect to Redis at {}:{}: {e}",
                config.host, config.port
            ))
        })?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| BuildError::Init(format!("Redis PING failed: {e}")))?;
        Ok(Self {
            config,
            client,
            conn,
            closed: tokio::sync::watch::channel(false).0,
            ack_tasks: parking_lot::Mutex::new(Vec::new()),
        })
    }

    fn xadd(&self, req: &PublishRequest) -> Result<redis::Cmd, PubSubError> {
        let metadata = serde_json::to_string(&req.metadata).map_err(|e| PubSubError::Publish {
            topic: req.topic.clone(),
            message: e.to_string(),
        })?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&req.topic);
        if let Some(max) = self.config.max_len_approx {
            cmd.arg("MAXLEN").arg("~").arg(max);
        }
        cmd.arg("*")
            .arg("data")
            .arg(req.data.as_ref())
            .arg("metadata")
            .arg(metadata);
        Ok(cmd)
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        let cmd = self.xadd(&req)?;
        let mut conn = self.conn.clone();
        cmd.query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| PubSubError::Publish {
                topic: req.topic,
                message: e.to_string(),
            })
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        // One round trip for the batch; a failed batch fails every entry.
        let mut pipe = redis::pipe();
        let mut prepared = Vec::with_capacity(reqs.len());
        for req in &reqs {
            match self.xadd(req) {
                Ok(cmd) => {
                    pipe.add_command(cmd);
                    prepared.push(None);
                }
                Err(e) => prepared.push(Some(e)),
            }
        }
        let mut conn = self.conn.clone();
        let outcome = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
        reqs.into_iter()
            .zip(prepared)
            .map(|(req, early)| match (early, &outcome) {
                (Some(e), _) => Err(e),
                (None, Ok(_)) => Ok(()),
                (None, Err(e)) => Err(PubSubError::Publish {
                    topic: req.topic,
                    message: e.to_string(),
                }),
            })
            .collect()
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, PubSubError> {
        let reader = connect(&self.client, READ_BLOCK + RESPONSE_TIMEOUT)
            .await
            .map_err(|e| PubSubError::Subscribe {
                topic: req.topic.clone(),
                message: e.to_string(),
            })?;
        let mut conn = self.conn.clone();
        consumer::ensure_group(&mut conn, &req.topic, &self.config.consumer_id)
            .await
            .map_err(|e| PubSubError::Subscribe {
                topic: req.topic.clone(),
                message: e.to_string(),
            })?;
        let (subscription, feed) =
            Subscription::new(self.config.queue_depth, self.config.concurrency);
        let acks = consumer::Consumer::start(
            self.config.clone(),
            req.topic,
            conn,
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
fn decode_metadata(value: Option<&redis::Value>) -> BTreeMap<String, String> {
    let bytes: Option<Vec<u8>> = value.and_then(|v| redis::from_redis_value_ref(v).ok());
    bytes
        .and_then(|b| serde_json::from_slice(&b).ok())
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
        assert_eq!((c.host.as_str(), c.port), ("localhost", 6380));
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
