//! `pubsub.in-memory`: an in-process broker (the embedded default).
//!
//! Each topic fans out to every consumer group subscribed to it (a group is the component's
//! `consumerID`, default the app id); subscribers in one group share its messages. Unlike Dapr's
//! in-memory broker a nacked message is redelivered in-process instead of being lost, and
//! messages published before the topic's first subscription are kept (up to
//! `maxBufferedMessages`, the latest ones) and delivered to the first group that subscribes, as
//! Redis Streams does; Dapr's in-memory broker drops them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{
    AckHandle, Message, PubSub, PubSubError, PublishRequest, Settle, Settlement, SubscribeRequest,
    Subscription, DEFAULT_CONCURRENCY, DEFAULT_QUEUE_DEPTH,
};
use crate::metadata::{Metadata, MetadataError};

/// Default bound of messages waiting in one consumer group (`maxBufferedMessages`).
pub const DEFAULT_MAX_BUFFERED: usize = 10_000;
/// How long a publish waits for room in a full consumer group before it is refused: publishers
/// slow down to the subscribers' pace instead of failing at the first burst.
pub const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Default wait before a nacked message is offered again (`redeliverInterval`), so a message
/// that keeps failing does not hammer the app.
pub const DEFAULT_REDELIVER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub consumer_id: String,
    pub queue_depth: usize,
    pub concurrency: usize,
    pub max_buffered: usize,
    pub redeliver_interval: std::time::Duration,
}

impl MemoryConfig {
    pub fn from_metadata(md: &Metadata, app_id: &str) -> Result<Self, MetadataError> {
        Ok(Self {
            consumer_id: md.get_non_empty("consumerID").unwrap_or(app_id).to_string(),
            queue_depth: md.get_u64("queueDepth", DEFAULT_QUEUE_DEPTH as u64)?.max(1) as usize,
            concurrency: md
                .get_u64("concurrency", DEFAULT_CONCURRENCY as u64)?
                .max(1) as usize,
            max_buffered: md
                .get_u64("maxBufferedMessages", DEFAULT_MAX_BUFFERED as u64)?
                .max(1) as usize,
            redeliver_interval: md.get_duration(
                "redeliverInterval",
                std::time::Duration::from_millis(1),
                DEFAULT_REDELIVER_INTERVAL,
            )?,
        })
    }
}

#[derive(Clone)]
struct Stored {
    seq: u64,
    topic: String,
    data: Bytes,
    metadata: BTreeMap<String, String>,
}

/// One consumer group's view of one topic.
struct Group {
    queue: Mutex<VecDeque<Stored>>,
    in_flight: Mutex<HashMap<u64, Stored>>,
    ready: Notify,
    /// Signalled when a message leaves the queue, for publishers waiting for room.
    room: Notify,
    redeliver_interval: std::time::Duration,
}

impl Group {
    fn requeue(&self, stored: Stored) {
        self.queue.lock().push_back(stored);
        self.ready.notify_one();
    }
}

impl Settle for Arc<Group> {
    fn settle(&self, position: &str, outcome: Settlement) {
        let Ok(seq) = position.parse::<u64>() else {
            return;
        };
        let Some(stored) = self.in_flight.lock().remove(&seq) else {
            return;
        };
        if outcome != Settlement::Nack {
            return;
        }
        let delay = self.redeliver_interval;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !delay.is_zero() => {
                let group = self.clone();
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    group.requeue(stored);
                });
            }
            _ => self.requeue(stored),
        }
    }
}

pub struct MemoryPubSub {
    config: MemoryConfig,
    /// topic -> group -> state
    topics: Mutex<HashMap<String, HashMap<String, Arc<Group>>>>,
    /// topic -> messages published before any group subscribed to it.
    backlog: Mutex<HashMap<String, VecDeque<Stored>>>,
    next_seq: AtomicU64,
}

impl MemoryPubSub {
    pub fn new(config: MemoryConfig) -> Self {
        Self {
            config,
            topics: Mutex::new(HashMap::new()),
            backlog: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
        }
    }

    fn group(&self, topic: &str) -> Arc<Group> {
        let mut topics = self.topics.lock();
        let groups = topics.entry(topic.to_string()).or_default();
        let first = groups.is_empty();
        groups
            .entry(self.config.consumer_id.clone())
            .or_insert_with(|| {
                // The first group of a topic takes what was published before it subscribed.
                let backlog = if first {
                    self.backlog.lock().remove(topic).unwrap_or_default()
                } else {
                    VecDeque::new()
                };
                Arc::new(Group {
                    queue: Mutex::new(backlog),
                    in_flight: Mutex::new(HashMap::new()),
                    ready: Notify::new(),
                    room: Notify::new(),
                    redeliver_interval: self.config.redeliver_interval,
                })
            })
            .clone()
    }

    /// Queues `stored` in `group`, waiting until `deadline` for room; false when none came.
    async fn enqueue(
        &self,
        group: &Group,
        stored: &Stored,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            // Registered before the check, so room made in between is not missed.
            let room = group.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut queue = group.queue.lock();
                if queue.len() < self.config.max_buffered {
                    queue.push_back(stored.clone());
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }
}

#[async_trait]
impl PubSub for MemoryPubSub {
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let stored = Stored {
            seq,
            topic: req.topic.clone(),
            data: req.data,
            metadata: req.metadata,
        };
        let groups: Vec<Arc<Group>> = {
            let topics = self.topics.lock();
            match topics.get(&req.topic) {
                Some(g) if !g.is_empty() => g.values().cloned().collect(),
                // Nobody subscribed yet: keep the latest messages for the first subscriber
                // (checked under the topics lock, so a subscriber arriving now sees it). As a
                // stream with a maximum length does, the oldest make room: nobody may ever
                // subscribe, and publishing must not start failing because of that.
                _ => {
                    let mut backlog = self.backlog.lock();
                    let queue = backlog.entry(req.topic.clone()).or_default();
                    if queue.len() >= self.config.max_buffered {
                        queue.pop_front();
                    }
                    queue.push_back(stored);
                    return Ok(());
                }
            }
        };
        let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
        for group in &groups {
            if !self.enqueue(group, &stored, deadline).await {
                return Err(PubSubError::Publish {
                    topic: req.topic,
                    message: format!(
                        "{} messages wait for delivery and none left the queue within \
                         {PUBLISH_WAIT:?} (maxBufferedMessages)",
                        self.config.max_buffered
                    ),
                });
            }
            group.ready.notify_one();
        }
        Ok(())
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, PubSubError> {
        let group = self.group(&req.topic);
        let (subscription, mut feed) =
            Subscription::new(self.config.queue_depth, self.config.concurrency);
        tokio::spawn(async move {
            loop {
                let next = group.queue.lock().pop_front();
                if next.is_some() {
                    group.room.notify_one();
                }
                let Some(stored) = next else {
                    tokio::select! {
                        _ = group.ready.notified() => continue,
                        _ = feed.wait_stopped() => return,
                    }
                };
                group.in_flight.lock().insert(stored.seq, stored.clone());
                let partition_key = stored.metadata.get("partitionKey").cloned();
                let msg = Message {
                    topic: stored.topic.clone(),
                    data: stored.data.clone(),
                    metadata: stored.metadata.clone(),
                    position: stored.seq.to_string(),
                    partition_key,
                    ack: AckHandle::new(Arc::new(group.clone()), stored.seq.to_string()),
                };
                if let Err(msg) = feed.send(msg).await {
                    // Not handed over: the nack on drop puts it back for the next subscriber.
                    drop(msg);
                    // Another waiting subscriber of the group may take it.
                    group.ready.notify_one();
                    return;
                }
            }
        });
        Ok(subscription)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> MemoryPubSub {
        MemoryPubSub::new(MemoryConfig {
            consumer_id: "app".into(),
            queue_depth: 4,
            concurrency: 2,
            max_buffered: 10,
            redeliver_interval: std::time::Duration::ZERO,
        })
    }

    fn publish(topic: &str, data: &'static str) -> PublishRequest {
        PublishRequest {
            topic: topic.into(),
            data: Bytes::from_static(data.as_bytes()),
            ..Default::default()
        }
    }

    async fn subscribe(ps: &MemoryPubSub, topic: &str) -> Subscription {
        ps.subscribe(SubscribeRequest {
            topic: topic.into(),
            ..Default::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn delivers_and_redelivers_nacked() {
        let ps = broker();
        let mut sub = subscribe(&ps, "t").await;
        ps.publish(publish("t", "a")).await.unwrap();
        let m = sub.messages.recv().await.unwrap();
        assert_eq!(m.data, "a");
        m.ack.nack();
        let m = sub.messages.recv().await.unwrap();
        assert_eq!(m.data, "a");
        m.ack.ack();
        ps.publish(publish("t", "b")).await.unwrap();
        assert_eq!(sub.messages.recv().await.unwrap().data, "b");
    }

    #[tokio::test]
    async fn keeps_messages_published_before_the_first_subscription() {
        let ps = broker();
        ps.publish(publish("early", "first")).await.unwrap();
        let mut sub = subscribe(&ps, "early").await;
        assert_eq!(sub.messages.recv().await.unwrap().data, "first");
    }

    #[tokio::test]
    async fn keeps_the_latest_messages_while_nobody_subscribes() {
        let ps = broker();
        for i in 0..25 {
            let req = PublishRequest {
                topic: "early".into(),
                data: Bytes::from(i.to_string()),
                ..Default::default()
            };
            ps.publish(req).await.unwrap();
        }
        let mut sub = subscribe(&ps, "early").await;
        for i in 15..25 {
            let m = sub.messages.recv().await.unwrap();
            assert_eq!(m.data, i.to_string());
            m.ack.ack();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_buffer_refuses_publish_after_waiting() {
        let ps = broker();
        let sub = subscribe(&ps, "t").await;
        sub.stop();
        let mut accepted = 0;
        let started = tokio::time::Instant::now();
        while ps.publish(publish("t", "x")).await.is_ok() {
            accepted += 1;
            assert!(accepted <= 10, "the buffer holds 10");
        }
        assert_eq!(accepted, 10);
        assert!(
            started.elapsed() >= PUBLISH_WAIT,
            "refused only after waiting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn publish_waits_for_room_while_the_subscriber_drains() {
        let ps = Arc::new(broker());
        let mut sub = subscribe(&ps, "t").await;
        let publisher = {
            let ps = ps.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    ps.publish(publish("t", "x")).await?;
                }
                Ok::<_, PubSubError>(())
            })
        };
        for _ in 0..50 {
            let m = sub.messages.recv().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            m.ack.ack();
        }
        publisher.await.unwrap().unwrap();
    }
}
