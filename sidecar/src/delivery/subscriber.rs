//! One subscription's pulling loop: bounded concurrency, per-key ordering lanes, bulk batches,
//! and the drain at shutdown.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tandem_components::pubsub::{Message, PubSub, Subscription};
use tandem_components::spec::SubscriptionSpec;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::policy::DeliveryPolicy;
use super::routing::Routes;
use crate::app::AppChannel;

/// Messages waiting in one ordering lane (back-pressure on the pulling loop beyond that).
const LANE_DEPTH: usize = 64;

/// Everything the deliveries of one subscription share.
pub struct SubscriptionContext {
    pub spec: SubscriptionSpec,
    pub routes: Routes,
    pub pubsub: Arc<dyn PubSub>,
    pub app: Arc<AppChannel>,
    pub app_id: String,
    pub policy: DeliveryPolicy,
    pub raw: bool,
    pub stop: CancellationToken,
}

/// Pulls and delivers until shutdown, then settles everything it holds.
pub async fn run(ctx: Arc<SubscriptionContext>, mut sub: Subscription) {
    let permits = Arc::new(Semaphore::new(sub.concurrency));
    let mut tasks = JoinSet::new();
    match ctx.spec.bulk_subscribe.filter(|b| b.enabled) {
        Some(bulk) => {
            pull_batches(
                &ctx,
                &mut sub,
                &permits,
                &mut tasks,
                bulk.max_messages_count.max(1) as usize,
                Duration::from_millis(bulk.max_await_duration_ms),
            )
            .await
        }
        None => pull_each(&ctx, &mut sub, &permits, &mut tasks).await,
    }
    // Stop pulling; what the broker already handed over but nobody started goes back.
    sub.stop();
    sub.messages.close();
    while let Ok(msg) = sub.messages.try_recv() {
        msg.ack.nack();
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!(
        "subscription to {} on {} drained",
        ctx.spec.topic,
        ctx.spec.pubsub_name
    );
}

async fn next(ctx: &SubscriptionContext, sub: &mut Subscription) -> Option<Message> {
    // As daprd: no new deliveries while the app's health checks fail.
    if ctx.app.config().health_check.is_some() && !ctx.app.is_healthy() {
        tracing::info!("app unhealthy: delivery of {} paused", ctx.spec.topic);
        let mut health = ctx.app.health_watch();
        tokio::select! {
            _ = health.wait_for(|healthy| *healthy) => {}
            _ = ctx.stop.cancelled() => return None,
        }
        tracing::info!("app healthy: delivery of {} resumed", ctx.spec.topic);
    }
    tokio::select! {
        biased;
        _ = ctx.stop.cancelled() => None,
        m = sub.messages.recv() => m,
    }
}

async fn pull_each(
    ctx: &Arc<SubscriptionContext>,
    sub: &mut Subscription,
    permits: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    let mut lanes: Vec<mpsc::Sender<Message>> = Vec::new();
    for _ in 0..sub.concurrency {
        let (tx, rx) = mpsc::channel(LANE_DEPTH);
        tasks.spawn(run_lane(ctx.clone(), permits.clone(), rx));
        lanes.push(tx);
    }
    while let Some(msg) = next(ctx, sub).await {
        while tasks.try_join_next().is_some() {}
        match &msg.partition_key {
            Some(key) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                let lane = &lanes[(hasher.finish() % lanes.len() as u64) as usize];
                if let Err(e) = lane.send(msg).await {
                    e.0.ack.nack();
                }
            }
            None => {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p,
                    _ = ctx.stop.cancelled() => { msg.ack.nack(); break; }
                };
                let Ok(permit) = permit else {
                    msg.ack.nack();
                    break;
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    super::deliver::deliver(&ctx, msg).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Delivers the messages of the keys hashed to this lane one at a time, in order.
async fn run_lane(
    ctx: Arc<SubscriptionContext>,
    permits: Arc<Semaphore>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(msg) = rx.recv().await {
        if ctx.stop.is_cancelled() {
            msg.ack.nack();
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            msg.ack.nack();
            continue;
        };
        super::deliver::deliver(&ctx, msg).await;
        drop(permit);
    }
}

async fn pull_batches(
    ctx: &Arc<SubscriptionContext>,
    sub: &mut Subscription,
    permits: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    max_count: usize,
    max_wait: Duration,
) {
    while let Some(first) = next(ctx, sub).await {
        while tasks.try_join_next().is_some() {}
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_wait;
        while batch.len() < max_count {
            tokio::select! {
                m = sub.messages.recv() => match m {
                    Some(m) => batch.push(m),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ctx.stop.cancelled() => break,
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.ok(),
            _ = ctx.stop.cancelled() => None,
        };
        let Some(permit) = permit else {
            for m in batch {
                m.ack.nack();
            }
            break;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            super::bulk::deliver_batch(&ctx, batch).await;
            drop(permit);
        });
    }
}
