//! Pub/sub delivery: subscriptions (declarative and programmatic), routing with CEL, the
//! CloudEvent envelope, outcome classification, retries, dead letters, bulk delivery, per-key
//! ordering and bounded concurrency.
//!
//! Start: after the app is ready, `GET /dapr/subscribe` is read, every subscription in scope is
//! opened on its pub/sub component, and each gets a task that pulls messages and delivers them.
//! Shutdown: pulling stops, queued messages are nacked, in-flight deliveries finish (a pending
//! retry is abandoned and the message nacked), all before components close.

mod bulk;
pub mod dead_letter;
mod deliver;
mod discovery;
pub mod envelope;
pub mod outcome;
pub mod policy;
pub mod routing;
pub mod scopes;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use tandem_components::pubsub::SubscribeRequest;
use tandem_components::spec::SubscriptionSpec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::Runtime;
use subscriber::SubscriptionContext;

/// The running deliveries of this sidecar.
#[derive(Default)]
pub struct Delivery {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Delivery {
    pub fn new() -> Self {
        Self::default()
    }

    /// Discovers programmatic subscriptions and starts delivering every subscription.
    pub async fn start(&self, rt: &Arc<Runtime>) {
        let Some(app) = rt.app.clone() else {
            return;
        };
        let programmatic = discovery::discover(&app, &rt.settings.app_id, &self.stop).await;
        if !programmatic.is_empty() {
            rt.subscriptions.write().extend(programmatic);
        }
        let subscriptions: Vec<SubscriptionSpec> = rt.subscriptions.read().clone();
        for spec in subscriptions {
            if let Err(e) = self.open(rt, &app, spec.clone()).await {
                tracing::error!(
                    "subscription to topic {} on pub/sub {} not started: {e}",
                    spec.topic,
                    spec.pubsub_name
                );
            }
        }
    }

    async fn open(
        &self,
        rt: &Arc<Runtime>,
        app: &Arc<crate::app::AppChannel>,
        spec: SubscriptionSpec,
    ) -> Result<(), String> {
        let loaded = rt
            .components
            .get(&spec.pubsub_name)
            .ok_or_else(|| format!("pub/sub {} is not loaded", spec.pubsub_name))?;
        let pubsub = rt
            .components
            .pubsub(&spec.pubsub_name)
            .cloned()
            .ok_or_else(|| format!("component {} is not a pub/sub", spec.pubsub_name))?;
        let scopes = scopes::TopicScopes::from_metadata(&loaded.metadata, &rt.settings.app_id);
        if !scopes.may_subscribe(&spec.topic) {
            return Err(format!(
                "topic {} is not allowed for app id {} (subscriptionScopes/allowedTopics/protectedTopics)",
                spec.topic, rt.settings.app_id
            ));
        }
        if spec.rules.is_empty() {
            return Err("it has no route".into());
        }
        let routes = routing::Routes::compile(&spec.rules).map_err(|e| e.to_string())?;
        let subscription = pubsub
            .subscribe(SubscribeRequest {
                topic: spec.topic.clone(),
                metadata: spec.metadata.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            "subscribed to topic {} on pub/sub {} ({:?}, {} route(s){})",
            spec.topic,
            spec.pubsub_name,
            spec.kind,
            spec.rules.len(),
            spec.dead_letter_topic
                .as_deref()
                .map(|d| format!(", dead letters to {d}"))
                .unwrap_or_default()
        );
        let ctx = Arc::new(SubscriptionContext {
            policy: policy::DeliveryPolicy::for_component(&rt.resiliency, &spec.pubsub_name),
            raw: spec.raw_payload(),
            spec,
            routes,
            pubsub,
            app: app.clone(),
            app_id: rt.settings.app_id.clone(),
            stop: self.stop.clone(),
        });
        self.tasks.spawn(subscriber::run(ctx, subscription));
        Ok(())
    }

    /// Stops pulling and waits up to `within` for in-flight deliveries to settle.
    pub async fn drain(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }
}
