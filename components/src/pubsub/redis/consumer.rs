//! One subscription's consumer: reads new entries, re-reads its own pending ones at start,
//! reclaims idle pending entries, and XACKs settled ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::{mpsc, watch};

use super::{decode_metadata, RedisConfig, READ_BLOCK};
use crate::pubsub::{AckHandle, Message, Settle, Settlement, SubscriptionFeed};

/// Most entry ids XACKed in one command.
const ACK_BATCH: usize = 512;
/// Waits between attempts after a Redis error grow up to this.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(2);

pub(super) async fn ensure_group(
    conn: &mut ConnectionManager,
    topic: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(topic)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
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
    conn: ConnectionManager,
    in_flight: Arc<InFlight>,
    recently_acked: RecentlyAcked,
    acker: Arc<Acker>,
}

impl Consumer {
    pub(super) fn start(
        config: RedisConfig,
        topic: String,
        conn: ConnectionManager,
        reader: ConnectionManager,
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
            conn,
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
        let mut conn = self.conn.clone();
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
                let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                    .arg(&self.topic)
                    .arg(self.group())
                    .arg(&batch)
                    .query_async(&mut conn)
                    .await;
                match acked {
                    Ok(_) => break,
                    // The group is gone (Redis restarted empty): nothing left to acknowledge.
                    Err(e) if is_nogroup(&e) => break,
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

    async fn read_loop(self: Arc<Self>, mut reader: ConnectionManager, mut feed: SubscriptionFeed) {
        let mut backoff = Duration::from_millis(50);
        // First our own pending entries (left by a crash), then new ones.
        let mut pending_cursor = Some("0".to_string());
        let reclaim_enabled =
            !self.config.processing_timeout.is_zero() && !self.config.redeliver_interval.is_zero();
        let mut reclaim_at = tokio::time::Instant::now() + self.config.redeliver_interval;
        while !feed.is_stopped() {
            if reclaim_enabled && tokio::time::Instant::now() >= reclaim_at {
                if let Err(e) = self.reclaim(&mut reader, &mut feed).await {
                    tracing::warn!(
                        "redis pub/sub: reclaiming pending entries of {} failed: {e}",
                        self.topic
                    );
                }
                reclaim_at = tokio::time::Instant::now() + self.config.redeliver_interval;
            }
            let start = pending_cursor.clone().unwrap_or_else(|| ">".to_string());
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(self.group())
                .arg(self.group())
                .arg("COUNT")
                .arg(self.config.queue_depth);
            if pending_cursor.is_none() {
                cmd.arg("BLOCK").arg(READ_BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&self.topic).arg(&start);
            let read: redis::RedisResult<Option<StreamReadReply>> =
                cmd.query_async(&mut reader).await;
            let entries = match read {
                Ok(reply) => {
                    backoff = Duration::from_millis(50);
                    reply
                        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
                        .unwrap_or_default()
                }
                Err(e) => {
                    if is_nogroup(&e) {
                        tracing::warn!(
                            "redis pub/sub: consumer group for {} is gone; recreating it",
                            self.topic
                        );
                        let _ =
                            ensure_group(&mut self.conn.clone(), &self.topic, self.group()).await;
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
    async fn reclaim(
        &self,
        reader: &mut ConnectionManager,
        feed: &mut SubscriptionFeed,
    ) -> redis::RedisResult<()> {
        let mut cursor = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.topic)
                .arg(self.group())
                .arg(self.group())
                .arg(self.config.processing_timeout.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.config.queue_depth)
                .query_async(reader)
                .await?;
            for entry in reply.claimed {
                if !self.hand_over(entry, feed).await {
                    return Ok(());
                }
            }
            if reply.next_stream_id == "0-0" || feed.is_stopped() {
                return Ok(());
            }
            cursor = reply.next_stream_id;
        }
    }

    /// Gives one entry to the subscriber unless it is already in flight. False once stopped.
    async fn hand_over(&self, entry: StreamId, feed: &mut SubscriptionFeed) -> bool {
        if self.recently_acked.contains(&entry.id)
            || !self.in_flight.0.lock().insert(entry.id.clone())
        {
            return true;
        }
        let data: Option<Vec<u8>> = entry
            .map
            .get("data")
            .and_then(|v| redis::from_redis_value_ref(v).ok());
        let Some(data) = data else {
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
        let metadata = decode_metadata(entry.map.get("metadata"));
        let partition_key = metadata.get("partitionKey").cloned();
        let msg = Message {
            topic: self.topic.clone(),
            data: data.into(),
            metadata,
            position: entry.id.clone(),
            partition_key,
            ack: AckHandle::new(self.acker.clone(), entry.id),
        };
        // A message the subscriber did not take is nacked on drop and stays pending.
        feed.send(msg).await.is_ok()
    }
}
