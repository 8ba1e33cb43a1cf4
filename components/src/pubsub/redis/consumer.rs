//! One subscription's consumer: reads new entries, re-reads its own pending ones at start,
//! reclaims idle pending entries, and XACKs settled ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{decode_metadata, RedisConfig, READ_BLOCK};
use crate::pubsub::{AckHandle, Message, Settle, Settlement, SubscriptionFeed};
use crate::resp::{error_code, Pool, Value};

/// Most entry ids XACKed in one command.
const ACK_BATCH: usize = 512;
/// Waits between attempts after a Redis error grow up to this.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(2);

/// Creates the consumer group at the start of the stream (and the stream), unless it exists.
pub(super) async fn ensure_group(pool: &Pool, topic: &str, group: &str) -> Result<(), String> {
    let reply = pool
        .query_one(&[&"XGROUP", &"CREATE", &topic, &group, &"0", &"MKSTREAM"])
        .await
        .map_err(|e| e.to_string())?;
    match reply {
        Value::Error(e) if error_code(&e) != "BUSYGROUP" => Err(e),
        _ => Ok(()),
    }
}

/// Why a stream command failed.
enum StreamError {
    /// The consumer group does not exist (Redis restarted empty, or someone deleted it).
    NoGroup,
    Other(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::NoGroup => f.write_str("the consumer group does not exist"),
            StreamError::Other(e) => f.write_str(e),
        }
    }
}

/// Runs one command; an error reply becomes a [`StreamError`].
async fn stream_command(
    pool: &Pool,
    args: &[&(dyn AsRef<[u8]> + Sync)],
) -> Result<Value, StreamError> {
    match pool.query_one(args).await {
        Ok(Value::Error(e)) if error_code(&e) == "NOGROUP" => Err(StreamError::NoGroup),
        Ok(Value::Error(e)) => Err(StreamError::Other(e)),
        Ok(value) => Ok(value),
        Err(e) => Err(StreamError::Other(e.to_string())),
    }
}

/// One stream entry as XREADGROUP and XAUTOCLAIM return it.
struct StreamEntry {
    id: String,
    data: Option<Bytes>,
    metadata: Option<Bytes>,
}

impl StreamEntry {
    /// `[id, [field, value, …]]`; the fields are nil for an entry deleted while pending.
    fn parse(value: Value) -> Option<Self> {
        let Value::Array(parts) = value else {
            return None;
        };
        let mut parts = parts.into_iter();
        let id = String::from_utf8(parts.next()?.as_bytes()?.to_vec()).ok()?;
        let mut entry = StreamEntry {
            id,
            data: None,
            metadata: None,
        };
        if let Some(Value::Array(fields)) = parts.next() {
            let mut fields = fields.into_iter();
            while let (Some(name), Some(Value::Bulk(value))) = (fields.next(), fields.next()) {
                match name.as_bytes() {
                    Some(b"data") => entry.data = Some(value),
                    Some(b"metadata") => entry.metadata = Some(value),
                    _ => {}
                }
            }
        }
        Some(entry)
    }

    fn list(value: Value) -> Vec<StreamEntry> {
        match value {
            Value::Array(entries) => entries.into_iter().filter_map(Self::parse).collect(),
            _ => Vec::new(),
        }
    }
}

/// XREADGROUP's reply for one stream: `[[stream, [entry, …]]]`, or nil when nothing came.
fn read_reply_entries(reply: Value) -> Vec<StreamEntry> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|stream| match stream {
            Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
            _ => None,
        })
        .flat_map(StreamEntry::list)
        .collect()
}

/// XAUTOCLAIM's reply: `[next cursor, [entry, …], …]`.
fn autoclaim_reply(reply: Value) -> Result<(String, Vec<StreamEntry>), StreamError> {
    let malformed = || StreamError::Other(format!("unexpected XAUTOCLAIM reply {reply:?}"));
    let Value::Array(parts) = &reply else {
        return Err(malformed());
    };
    let cursor = parts
        .first()
        .and_then(Value::as_bytes)
        .and_then(|c| std::str::from_utf8(c).ok())
        .ok_or_else(malformed)?
        .to_string();
    let entries = parts
        .get(1)
        .cloned()
        .map(StreamEntry::list)
        .unwrap_or_default();
    Ok((cursor, entries))
}

/// Entries handed to the subscriber and not yet settled; never handed out twice at once.
#[derive(Default)]
struct InFlight(Mutex<HashSet<String>>);

/// How many just-acknowledged entry ids are remembered (see [`RecentlyAcked`]).
const RECENT_ACKS: usize = 8192;

/// Entry ids XACKed lately. A reclaim (or read) answer computed just before an XACK landed may
/// still list the entry; remembering recent acks keeps it from being delivered a second time.
#[derive(Default)]
struct RecentlyAcked(Mutex<(HashSet<String>, std::collections::VecDeque<String>)>);

impl RecentlyAcked {
    fn remember(&self, ids: &[String]) {
        let mut guard = self.0.lock();
        let (set, order) = &mut *guard;
        for id in ids {
            if set.insert(id.clone()) {
                order.push_back(id.clone());
            }
        }
        while order.len() > RECENT_ACKS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.0.lock().0.contains(id)
    }
}

/// The settle side: forwards settlements to the ack task. The channel is unbounded, but it never
/// holds more than the in-flight entries (at most `queueDepth` + `concurrency` per subscription).
struct Acker {
    tx: mpsc::UnboundedSender<(String, Settlement)>,
    in_flight: Arc<InFlight>,
}

impl Settle for Acker {
    fn settle(&self, position: &str, outcome: Settlement) {
        if outcome == Settlement::Nack {
            // Stays pending in Redis; the reclaim loop hands it out again after processingTimeout.
            self.in_flight.0.lock().remove(position);
            return;
        }
        if self.tx.send((position.to_string(), outcome)).is_err() {
            self.in_flight.0.lock().remove(position);
        }
    }
}

pub(super) struct Consumer {
    config: RedisConfig,
    topic: String,
    pool: Arc<Pool>,
    in_flight: Arc<InFlight>,
    recently_acked: RecentlyAcked,
    acker: Arc<Acker>,
}

impl Consumer {
    pub(super) fn start(
        config: RedisConfig,
        topic: String,
        pool: Arc<Pool>,
        reader: Pool,
        feed: SubscriptionFeed,
        closed: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let in_flight = Arc::new(InFlight::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer = Arc::new(Consumer {
            acker: Arc::new(Acker {
                tx,
                in_flight: in_flight.clone(),
            }),
            config,
            topic,
            pool,
            in_flight,
            recently_acked: RecentlyAcked::default(),
        });
        let acks = tokio::spawn(consumer.clone().ack_loop(rx, closed));
        tokio::spawn(consumer.read_loop(reader, feed));
        acks
    }

    fn group(&self) -> &str {
        &self.config.consumer_id
    }

    /// XACKs settled entries in batches, retrying through Redis outages.
    async fn ack_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(String, Settlement)>,
        mut closed: watch::Receiver<bool>,
    ) {
        let mut batch: Vec<String> = Vec::new();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some((id, _)) => batch.push(id),
                        None => return,
                    },
                    _ = closed.wait_for(|c| *c) => {
                        // Components close after deliveries drained: flush what is queued.
                        while let Ok((id, _)) = rx.try_recv() {
                            batch.push(id);
                        }
                        if batch.is_empty() {
                            return;
                        }
                    }
                }
            }
            while batch.len() < ACK_BATCH {
                match rx.try_recv() {
                    Ok((id, _)) => batch.push(id),
                    Err(_) => break,
                }
            }
            let mut backoff = Duration::from_millis(50);
            loop {
                let mut args: Vec<&(dyn AsRef<[u8]> + Sync)> =
                    vec![&"XACK", &self.topic, &self.config.consumer_id];
                args.extend(batch.iter().map(|id| id as &(dyn AsRef<[u8]> + Sync)));
                match stream_command(&self.pool, &args).await {
                    Ok(_) => break,
                    // The group is gone (Redis restarted empty): nothing left to acknowledge.
                    Err(StreamError::NoGroup) => break,
                    Err(e) => {
                        if *closed.borrow() {
                            tracing::warn!(
                                "redis pub/sub: {} acknowledgements for {} not written at shutdown ({e}); \
                                 the entries will be redelivered",
                                batch.len(),
                                self.topic
                            );
                            break;
                        }
                        tracing::warn!(
                            "redis pub/sub: XACK on {} failed: {e}; retrying",
                            self.topic
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
                    }
                }
            }
            self.recently_acked.remember(&batch);
            {
                let mut in_flight = self.in_flight.0.lock();
                for id in &batch {
                    in_flight.remove(id);
                }
            }
            batch.clear();
        }
    }

    async fn read_loop(self: Arc<Self>, reader: Pool, mut feed: SubscriptionFeed) {
        let mut backoff = Duration::from_millis(50);
        // First our own pending entries (left by a crash), then new ones.
        let mut pending_cursor = Some("0".to_string());
        let reclaim_enabled =
            !self.config.processing_timeout.is_zero() && !self.config.redeliver_interval.is_zero();
        let mut reclaim_at = tokio::time::Instant::now() + self.config.redeliver_interval;
        while !feed.is_stopped() {
            if reclaim_enabled && tokio::time::Instant::now() >= reclaim_at {
                if let Err(e) = self.reclaim(&reader, &mut feed).await {
                    tracing::warn!(
                        "redis pub/sub: reclaiming pending entries of {} failed: {e}",
                        self.topic
                    );
                }
                reclaim_at = tokio::time::Instant::now() + self.config.redeliver_interval;
            }
            let start = pending_cursor.as_deref().unwrap_or(">");
            let count = self.config.queue_depth.to_string();
            let block = READ_BLOCK.as_millis().to_string();
            let group = self.group();
            let mut args: Vec<&(dyn AsRef<[u8]> + Sync)> =
                vec![&"XREADGROUP", &"GROUP", &group, &group, &"COUNT", &count];
            if pending_cursor.is_none() {
                args.extend([&"BLOCK" as &(dyn AsRef<[u8]> + Sync), &block]);
            }
            args.extend([&"STREAMS" as &(dyn AsRef<[u8]> + Sync), &self.topic, &start]);
            let read = stream_command(&reader, &args).await;
            let entries = match read {
                Ok(reply) => {
                    backoff = Duration::from_millis(50);
                    read_reply_entries(reply)
                }
                Err(e) => {
                    if matches!(e, StreamError::NoGroup) {
                        tracing::warn!(
                            "redis pub/sub: consumer group for {} is gone; recreating it",
                            self.topic
                        );
                        let _ = ensure_group(&self.pool, &self.topic, self.group()).await;
                    } else {
                        tracing::warn!(
                            "redis pub/sub: reading {} failed: {e}; retrying",
                            self.topic
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = feed.wait_stopped() => return,
                    }
                    backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
                    continue;
                }
            };
            if let Some(cursor) = &mut pending_cursor {
                match entries.last() {
                    Some(last) => *cursor = last.id.clone(),
                    None => pending_cursor = None,
                }
            }
            for entry in entries {
                if !self.hand_over(entry, &mut feed).await {
                    return;
                }
            }
        }
    }

    /// Claims entries pending longer than processingTimeout (a crashed consumer's, or nacked).
    async fn reclaim(&self, reader: &Pool, feed: &mut SubscriptionFeed) -> Result<(), StreamError> {
        let mut cursor = "0-0".to_string();
        let idle = self.config.processing_timeout.as_millis().to_string();
        let count = self.config.queue_depth.to_string();
        let group = self.group();
        loop {
            let reply = stream_command(
                reader,
                &[
                    &"XAUTOCLAIM",
                    &self.topic,
                    &group,
                    &group,
                    &idle,
                    &cursor,
                    &"COUNT",
                    &count,
                ],
            )
            .await?;
            let (next, claimed) = autoclaim_reply(reply)?;
            for entry in claimed {
                if !self.hand_over(entry, feed).await {
                    return Ok(());
                }
            }
            if next == "0-0" || feed.is_stopped() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Gives one entry to the subscriber unless it is already in flight. False once stopped.
    async fn hand_over(&self, entry: StreamEntry, feed: &mut SubscriptionFeed) -> bool {
        if self.recently_acked.contains(&entry.id)
            || !self.in_flight.0.lock().insert(entry.id.clone())
        {
            return true;
        }
        let Some(data) = entry.data else {
            // Trimmed away (MAXLEN) or not written by a Dapr-compatible publisher: nothing to
            // deliver, so acknowledge it to keep the pending list clean.
            tracing::warn!(
                "redis pub/sub: entry {} of {} has no data; acknowledged",
                entry.id,
                self.topic
            );
            AckHandle::new(self.acker.clone(), entry.id).ack();
            return true;
        };
        let metadata = decode_metadata(entry.metadata.as_ref());
        let partition_key = metadata.get("partitionKey").cloned();
        let msg = Message {
            topic: self.topic.clone(),
            data,
            metadata,
            position: entry.id.clone(),
            partition_key,
            ack: AckHandle::new(self.acker.clone(), entry.id),
        };
        // A message the subscriber did not take is nacked on drop and stays pending.
        feed.send(msg).await.is_ok()
    }
}
