//! Pub/sub brokers.
//!
//! A broker publishes bytes to a topic and hands subscribers a bounded stream of [`Message`]s.
//! Every message carries an [`AckHandle`] that is settled exactly once, `ack` or `nack`; a handle
//! dropped unsettled counts as a nack. Settling is what moves the broker's position: Redis Streams
//! XACKs the entry, the in-memory broker forgets it; a partitioned broker (Kafka) commits an
//! offset only when that message and every one before it in the partition are settled, which is
//! why a message also names its `position` and `partition_key`.

pub mod kafka;
pub mod memory;
pub mod namespaced;
pub mod redis;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

/// Default bound of a subscription's message stream when a component has no `queueDepth`.
pub const DEFAULT_QUEUE_DEPTH: usize = 100;
/// Default number of messages of one subscription delivered at once (`concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 10;

#[derive(Debug, Error)]
pub enum PubSubError {
    #[error("publish to topic {topic:?} failed: {message}")]
    Publish { topic: String, message: String },
    #[error("subscribe to topic {topic:?} failed: {message}")]
    Subscribe { topic: String, message: String },
    #[error("the pub/sub is closed")]
    Closed,
}

/// What a component can do that the sidecar must know about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// The broker expires messages itself (`ttlInSeconds`); otherwise the sidecar stamps an
    /// `expiration` on the envelope and drops expired messages on receipt.
    pub message_ttl: bool,
}

/// One message to publish: the bytes as they travel (an envelope, or the raw payload) and the
/// request metadata (`partitionKey`, `ttlInSeconds`, component-specific keys).
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    pub topic: String,
    pub data: Bytes,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// How a subscriber asks for a topic.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    pub topic: String,
    /// The subscription's `metadata` (e.g. `rawPayload`), for components that use it.
    pub metadata: BTreeMap<String, String>,
}

/// A live subscription: a bounded stream of messages and the switch that stops pulling.
pub struct Subscription {
    pub messages: mpsc::Receiver<Message>,
    /// How many messages of this subscription the sidecar may deliver at once.
    pub concurrency: usize,
    stop: watch::Sender<bool>,
}

impl Subscription {
    /// A subscription fed through `messages`; the component's pulling task watches `stopped`.
    pub fn new(capacity: usize, concurrency: usize) -> (Self, SubscriptionFeed) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        (
            Self {
                messages: rx,
                concurrency: concurrency.max(1),
                stop,
            },
            SubscriptionFeed { tx, stopped },
        )
    }

    /// Stops pulling new messages from the broker. Messages already in the stream stay readable.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// The component's end of a [`Subscription`].
pub struct SubscriptionFeed {
    pub tx: mpsc::Sender<Message>,
    pub stopped: watch::Receiver<bool>,
}

impl SubscriptionFeed {
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow() || self.tx.is_closed()
    }

    /// Resolves once the subscriber stopped pulling or went away.
    pub async fn wait_stopped(&mut self) {
        let closed = self.tx.clone();
        tokio::select! {
            _ = self.stopped.wait_for(|s| *s) => {}
            _ = closed.closed() => {}
        }
    }

    /// Hands a message to the subscriber, waiting for room (back-pressure). Returns the message
    /// back when the subscriber stopped, so the caller can settle it.
    pub async fn send(&mut self, msg: Message) -> Result<(), Box<Message>> {
        if *self.stopped.borrow() {
            return Err(Box::new(msg));
        }
        let permit = tokio::select! {
            p = self.tx.reserve() => p,
            _ = self.stopped.wait_for(|s| *s) => return Err(Box::new(msg)),
        };
        match permit {
            Ok(permit) => {
                permit.send(msg);
                Ok(())
            }
            Err(_) => Err(Box::new(msg)),
        }
    }
}

/// A received message.
pub struct Message {
    pub topic: String,
    pub data: Bytes,
    pub metadata: BTreeMap<String, String>,
    /// Where the message sits in the broker: a stream entry id, `partition:offset`, a sequence.
    pub position: String,
    /// Messages with the same key are delivered in order, one at a time.
    pub partition_key: Option<String>,
    pub ack: AckHandle,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("position", &self.position)
            .field("len", &self.data.len())
            .finish()
    }
}

/// The result of handling a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done with: the broker may forget it.
    Ack,
    /// Not handled: the broker redelivers it by its own rules.
    Nack,
}

/// Receives the settlement of one message; implemented by each broker.
pub trait Settle: Send + Sync {
    fn settle(&self, position: &str, outcome: Settlement);
}

/// Settled exactly once: `ack()`/`nack()` consume the handle, and dropping it unsettled nacks.
pub struct AckHandle {
    target: Option<(std::sync::Arc<dyn Settle>, String)>,
}

impl AckHandle {
    pub fn new(target: std::sync::Arc<dyn Settle>, position: impl Into<String>) -> Self {
        Self {
            target: Some((target, position.into())),
        }
    }

    /// A handle whose settlement goes nowhere (messages with no broker position).
    pub fn detached() -> Self {
        Self { target: None }
    }

    pub fn ack(mut self) {
        self.settle(Settlement::Ack);
    }

    pub fn nack(mut self) {
        self.settle(Settlement::Nack);
    }

    fn settle(&mut self, outcome: Settlement) {
        if let Some((target, position)) = self.target.take() {
            target.settle(&position, outcome);
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        self.settle(Settlement::Nack);
    }
}

/// A pub/sub backend.
#[async_trait]
pub trait PubSub: Send + Sync {
    /// Capabilities reported in `/v1.0/metadata`.
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }

    fn features(&self) -> Features {
        Features::default()
    }

    /// Publishes one message; returns once the broker confirmed it.
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError>;

    /// Publishes many; one result per request, in order. Brokers with a native batch override it.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.publish(req).await);
        }
        out
    }

    /// Starts consuming `req.topic` in this sidecar's consumer group.
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, PubSubError>;

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    #[derive(Default)]
    struct Record(Mutex<Vec<(String, Settlement)>>);
    impl Settle for Record {
        fn settle(&self, position: &str, outcome: Settlement) {
            self.0.lock().push((position.to_string(), outcome));
        }
    }

    #[test]
    fn settled_exactly_once_and_drop_nacks() {
        let rec = Arc::new(Record::default());
        AckHandle::new(rec.clone(), "1").ack();
        drop(AckHandle::new(rec.clone(), "2"));
        AckHandle::new(rec.clone(), "3").nack();
        assert_eq!(
            *rec.0.lock(),
            vec![
                ("1".into(), Settlement::Ack),
                ("2".into(), Settlement::Nack),
                ("3".into(), Settlement::Nack)
            ]
        );
    }
}
