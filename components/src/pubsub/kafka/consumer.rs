//! One subscription = one Kafka consumer in the component's consumer group, polled on a
//! dedicated thread.
//!
//! Why a thread with a `BaseConsumer` rather than a `StreamConsumer` task: librdkafka runs the
//! rebalance callback inside `poll`, and on revocation we must commit what is settled
//! *synchronously* before the partitions move to another member (otherwise the new owner starts
//! from an older offset and redelivers more than necessary). A blocking commit is fine on our
//! own thread and not on a tokio worker.
//!
//! The thread loop: commit settled positions, hand waiting messages to the subscription (bounded
//! channel, back-pressure), poll Kafka. While the subscriber is behind, fetching is paused but
//! polling continues, so group heartbeats, rebalances and commit results are still served.
//!
//! Nacks: a nacked message is redelivered by this consumer itself after `consumeRetryInterval`
//! (from a copy kept with its ack handle), instead of seeking the partition back. Seeking would
//! also re-deliver every later message of the partition that is in flight or already acked, and
//! reorder them around the retry; the local redelivery keeps the offset uncommitted (so a crash
//! or a rebalance still hands the message to whoever consumes the partition next) and touches
//! nothing else. Redeliveries stop when the partition is revoked: its new owner starts from the
//! committed offset, which is never past an unsettled message.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;

use super::config::{KafkaConfig, MAX_UNCOMMITTED};
use super::ledger::Ledger;
use crate::pubsub::{AckHandle, Message, Settle, Settlement, SubscriptionFeed};

/// How long one idle `poll` blocks the thread; it bounds how late a stop, a commit or a due
/// redelivery is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often settled positions are committed again even if they did not move: an asynchronous
/// commit can fail (a broker rejects commits while the group rebalances) and librdkafka does not
/// reliably report the outcome back, so a lost commit is repaired within this interval instead
/// of only by the next settlement.
const COMMIT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// The poll timeout while messages wait for room in the subscription.
const BACKLOG_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Metadata Dapr's Kafka component adds to every received message (besides the headers).
pub const KEY_METADATA: &str = "__key";
pub const TOPIC_METADATA: &str = "__topic";
pub const PARTITION_METADATA: &str = "__partition";
pub const OFFSET_METADATA: &str = "__offset";
pub const TIMESTAMP_METADATA: &str = "__timestamp";

/// The offsets of one partition while it is assigned to this consumer.
struct Partition {
    id: i32,
    state: Mutex<PartitionState>,
}

struct PartitionState {
    ledger: Ledger,
    /// Set when the partition was revoked: later settlements are ignored, because its next owner
    /// starts from the committed offset anyway.
    revoked: bool,
}

impl Partition {
    fn is_revoked(&self) -> bool {
        self.state.lock().revoked
    }
}

/// A received message's content, kept so a nack can redeliver it.
#[derive(Clone)]
struct Content {
    data: Bytes,
    metadata: BTreeMap<String, String>,
    key: Option<String>,
}

struct Redelivery {
    due: Instant,
    partition: Arc<Partition>,
    offset: i64,
    content: Content,
}

/// State shared by the polling thread, the rebalance callback and the ack handles.
struct Tracker {
    topic: String,
    retry_interval: Duration,
    partitions: Mutex<HashMap<i32, Arc<Partition>>>,
    /// Nacked messages waiting to be redelivered, in nack order (the delay is constant, so this
    /// is also due order). Bounded by the unsettled messages, i.e. by [`MAX_UNCOMMITTED`].
    redeliveries: Mutex<VecDeque<Redelivery>>,
    /// Some commit position moved since the last commit.
    dirty: AtomicBool,
}

impl Tracker {
    fn partition(&self, id: i32) -> Arc<Partition> {
        self.partitions
            .lock()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Partition {
                    id,
                    state: Mutex::new(PartitionState {
                        ledger: Ledger::default(),
                        revoked: false,
                    }),
                })
            })
            .clone()
    }

    fn uncommitted(&self) -> usize {
        self.partitions
            .lock()
            .values()
            .map(|p| p.state.lock().ledger.uncommitted())
            .sum()
    }

    /// Commit positions, marked as committed: those that moved since they were last committed,
    /// or with `settled` every settled position (again, in case an earlier asynchronous commit
    /// failed). With `revoke` the partitions are also marked revoked under the same lock, so no
    /// settlement can slip in between the last commit and the hand-over.
    fn take_commits(
        &self,
        which: &[Arc<Partition>],
        settled: bool,
        revoke: bool,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in which {
            let mut state = p.state.lock();
            let position = if settled {
                state.ledger.settled_position()
            } else {
                state.ledger.pending_commit()
            };
            if let Some(position) = position {
                if tpl
                    .add_partition_offset(&self.topic, p.id, Offset::Offset(position))
                    .is_ok()
                {
                    state.ledger.mark_committed(position);
                }
            }
            if revoke {
                state.revoked = true;
            }
        }
        tpl
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.lock().values().cloned().collect()
    }

    /// Stops tracking `ids` (all when `None`) and returns what is settled there, to commit.
    fn revoke(&self, ids: Option<&[i32]>) -> TopicPartitionList {
        let removed: Vec<Arc<Partition>> = {
            let mut map = self.partitions.lock();
            match ids {
                None => map.drain().map(|(_, p)| p).collect(),
                Some(ids) => ids.iter().filter_map(|id| map.remove(id)).collect(),
            }
        };
        let tpl = self.take_commits(&removed, true, true);
        self.redeliveries
            .lock()
            .retain(|r| !r.partition.is_revoked());
        tpl
    }

    fn due_redeliveries(&self, now: Instant) -> Vec<Redelivery> {
        let mut queue = self.redeliveries.lock();
        let mut due = Vec::new();
        while queue.front().is_some_and(|r| r.due <= now) {
            if let Some(r) = queue.pop_front() {
                due.push(r);
            }
        }
        due
    }
}

/// The settlement target of one delivered message.
struct Delivered {
    tracker: Arc<Tracker>,
    partition: Arc<Partition>,
    offset: i64,
    content: Content,
}

impl Settle for Delivered {
    fn settle(&self, _position: &str, outcome: Settlement) {
        match outcome {
            Settlement::Ack => {
                let moved = {
                    let mut state = self.partition.state.lock();
                    !state.revoked && state.ledger.ack(self.offset)
                };
                if moved {
                    self.tracker.dirty.store(true, Ordering::Release);
                }
            }
            Settlement::Nack => {
                if self.partition.is_revoked() {
                    return;
                }
                self.tracker.redeliveries.lock().push_back(Redelivery {
                    due: Instant::now() + self.tracker.retry_interval,
                    partition: self.partition.clone(),
                    offset: self.offset,
                    content: self.content.clone(),
                });
            }
        }
    }
}

fn message(
    tracker: &Arc<Tracker>,
    partition: Arc<Partition>,
    offset: i64,
    content: Content,
) -> Message {
    let position = format!("{}:{offset}", partition.id);
    Message {
        topic: tracker.topic.clone(),
        data: content.data.clone(),
        metadata: content.metadata.clone(),
        position: position.clone(),
        partition_key: content.key.clone(),
        ack: AckHandle::new(
            Arc::new(Delivered {
                tracker: tracker.clone(),
                partition,
                offset,
                content,
            }),
            position,
        ),
    }
}

fn content_of(m: &BorrowedMessage<'_>) -> Content {
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let mut metadata = BTreeMap::new();
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            metadata.insert(h.key.to_string(), value);
        }
    }
    if let Some(key) = &key {
        metadata.insert(KEY_METADATA.to_string(), key.clone());
    }
    metadata.insert(TOPIC_METADATA.to_string(), m.topic().to_string());
    metadata.insert(PARTITION_METADATA.to_string(), m.partition().to_string());
    metadata.insert(OFFSET_METADATA.to_string(), m.offset().to_string());
    if let Some(ms) = m.timestamp().to_millis() {
        metadata.insert(TIMESTAMP_METADATA.to_string(), ms.to_string());
    }
    Content {
        data: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        metadata,
        key,
    }
}

/// librdkafka callbacks: log through `tracing`, commit on revocation.
struct SubscriptionContext {
    tracker: Arc<Tracker>,
}

impl ClientContext for SubscriptionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(topic = %self.tracker.topic, %error, reason, "kafka consumer error");
    }
}

impl ConsumerContext for SubscriptionContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let ids: Vec<i32> = revoked
                .elements_for_topic(&self.tracker.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            let settled = self.tracker.revoke(Some(&ids));
            tracing::debug!(topic = %self.tracker.topic, partitions = ?ids, "kafka partitions revoked");
            commit(consumer, &settled, CommitMode::Sync);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(topic = %self.tracker.topic, %error, ?offsets, "kafka offset commit failed");
        }
    }
}

pub(super) fn forward_log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{log_message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
    }
}

fn commit(
    consumer: &BaseConsumer<SubscriptionContext>,
    tpl: &TopicPartitionList,
    mode: CommitMode,
) {
    if tpl.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(tpl, mode) {
        tracing::warn!(%error, offsets = ?tpl, "kafka offset commit failed");
    }
}

/// Creates the consumer, subscribes it and starts its thread.
pub(super) fn start(
    config: &KafkaConfig,
    topic: &str,
    feed: SubscriptionFeed,
    closing: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, KafkaError> {
    let tracker = Arc::new(Tracker {
        topic: topic.to_string(),
        retry_interval: config.consume_retry_interval,
        partitions: Mutex::new(HashMap::new()),
        redeliveries: Mutex::new(VecDeque::new()),
        dirty: AtomicBool::new(false),
    });
    let consumer: BaseConsumer<SubscriptionContext> = config
        .consumer_config()
        .create_with_context(SubscriptionContext {
            tracker: tracker.clone(),
        })?;
    consumer.subscribe(&[topic])?;
    let runner = Runner {
        consumer,
        tracker,
        feed,
        closing,
        outbox: VecDeque::new(),
        outbox_limit: config.channel_buffer_size,
        paused: false,
        last_refresh: Instant::now(),
    };
    std::thread::Builder::new()
        .name(format!("kafka-sub-{topic}"))
        .spawn(move || runner.run())
        .map_err(|e| KafkaError::Subscription(format!("cannot start the consumer thread: {e}")))
}

struct Runner {
    consumer: BaseConsumer<SubscriptionContext>,
    tracker: Arc<Tracker>,
    feed: SubscriptionFeed,
    closing: Arc<AtomicBool>,
    /// Messages polled (or due for redelivery) that the subscription has no room for yet; at
    /// most `outbox_limit` before fetching is paused.
    outbox: VecDeque<(Arc<Partition>, Message)>,
    outbox_limit: usize,
    paused: bool,
    /// When settled positions were last committed regardless of change.
    last_refresh: Instant,
}

impl Runner {
    fn run(mut self) {
        loop {
            if self.feed.is_stopped() || self.closing.load(Ordering::Acquire) {
                break;
            }
            let refresh = self.last_refresh.elapsed() >= COMMIT_REFRESH_INTERVAL;
            if self.tracker.dirty.swap(false, Ordering::AcqRel) || refresh {
                let tpl = self
                    .tracker
                    .take_commits(&self.tracker.all_partitions(), refresh, false);
                commit(&self.consumer, &tpl, CommitMode::Async);
                if refresh {
                    self.last_refresh = Instant::now();
                }
            }
            let due = self.tracker.due_redeliveries(Instant::now());
            for r in due.into_iter().rev() {
                let msg = message(&self.tracker, r.partition.clone(), r.offset, r.content);
                self.outbox.push_front((r.partition, msg));
            }
            if !self.flush() {
                break;
            }
            self.pause_or_resume();
            // While the subscription is full, come back soon to hand over what waits (polling
            // with a short timeout rather than blocking on the channel keeps the group
            // membership served and needs no async runtime on this thread).
            let timeout = if self.outbox.is_empty() {
                POLL_INTERVAL
            } else {
                BACKLOG_POLL_INTERVAL
            };
            let polled = match self.consumer.poll(timeout) {
                None => None,
                Some(Ok(m)) => {
                    let partition = self.tracker.partition(m.partition());
                    partition.state.lock().ledger.track(m.offset());
                    Some((partition, m.offset(), content_of(&m)))
                }
                Some(Err(error)) => {
                    tracing::warn!(topic = %self.tracker.topic, %error, "kafka consume error");
                    None
                }
            };
            if let Some((partition, offset, content)) = polled {
                let msg = message(&self.tracker, partition.clone(), offset, content);
                self.outbox.push_back((partition, msg));
            }
        }
        // Stopping: commit what is settled, stop tracking (later settlements are moot: the next
        // consumer starts from the committed offset), and leave the group.
        let settled = self.tracker.revoke(None);
        commit(&self.consumer, &settled, CommitMode::Sync);
        self.outbox.clear();
        self.consumer.unsubscribe();
        tracing::debug!(topic = %self.tracker.topic, "kafka subscription stopped");
    }

    /// Hands waiting messages to the subscription as far as it has room. Returns false once the
    /// subscriber is gone.
    fn flush(&mut self) -> bool {
        while let Some((partition, _)) = self.outbox.front() {
            if partition.is_revoked() {
                // Its partition moved to another consumer, which will deliver it from the
                // committed offset; dropping the handle here is a no-op settlement.
                self.outbox.pop_front();
                continue;
            }
            match self.feed.tx.try_reserve() {
                Ok(permit) => {
                    if let Some((_, msg)) = self.outbox.pop_front() {
                        permit.send(msg);
                    }
                }
                Err(TrySendError::Full(())) => return true,
                Err(TrySendError::Closed(())) => return false,
            }
        }
        true
    }

    /// Pauses fetching while the subscriber is behind or too much is unsettled, so neither the
    /// outbox nor the ledgers grow without bound; polling goes on to keep the membership alive.
    fn pause_or_resume(&mut self) {
        let behind =
            self.outbox.len() >= self.outbox_limit || self.tracker.uncommitted() >= MAX_UNCOMMITTED;
        let caught_up = self.outbox.is_empty() && self.tracker.uncommitted() < MAX_UNCOMMITTED;
        let resume = self.paused && caught_up;
        if !behind && !resume {
            return;
        }
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "kafka assignment unavailable");
                return;
            }
        };
        // Paused again on every round while behind: partitions assigned meanwhile start unpaused.
        if behind {
            if let Err(error) = self.consumer.pause(&assignment) {
                tracing::warn!(%error, "kafka pause failed");
            }
            self.paused = true;
        } else if resume {
            if let Err(error) = self.consumer.resume(&assignment) {
                tracing::warn!(%error, "kafka resume failed");
            }
            self.paused = false;
        }
    }
}
