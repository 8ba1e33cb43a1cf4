//! The transactional outbox, configured on a state store as in Dapr (`outboxPublishPubsub`,
//! `outboxPublishTopic`, `outboxPubsub`, `outboxDiscardWhenMissingState`): every upsert of a
//! state transaction is published to `outboxPublishTopic` once, and only if the transaction
//! committed.
//!
//! Before the transaction runs, each upsert's event is published to an internal topic
//! (`<namespace><appId><outboxPublishTopic>outbox` on `outboxPubsub`) with the key of a marker
//! that the transaction then writes along with the data. A relay in the sidecar reads the internal
//! topic. When the marker is there, the transaction committed: the relay publishes the event to
//! the real topic, deletes the marker and acknowledges. When the marker does not show up (the
//! transaction failed, or is still running), the relay waits for it with backoff for
//! [`MARKER_WAIT`], then drops the event if `outboxDiscardWhenMissingState` is true, and otherwise
//! leaves it to the broker to deliver again. The relay checks first after 5 ms (a transaction
//! usually commits within that), then at doubling intervals; Dapr's waits a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_components::pubsub::{Message, PubSub, PublishRequest, SubscribeRequest};
use tandem_components::state::{
    value, DeleteRequest, GetRequest, SetRequest, StateStore, TransactionOperation,
};
use thiserror::Error;
use tokio::task::JoinSet;

use crate::component_set::{ComponentSet, LoadedComponent};
use crate::delivery::envelope::CLOUDEVENTS_JSON;
use crate::runtime::Runtime;

const PUBLISH_PUBSUB: &str = "outboxPublishPubsub";
const PUBLISH_TOPIC: &str = "outboxPublishTopic";
const INTERNAL_PUBSUB: &str = "outboxPubsub";
const DISCARD_WHEN_MISSING: &str = "outboxDiscardWhenMissingState";
/// Operation metadata: this upsert is not stored; its value is what gets published for the
/// upsert of the same key.
pub const PROJECTION: &str = "outbox.projection";
/// Internal message metadata: the stored key of the transaction's marker.
const MARKER_METADATA: &str = "outbox.marker";
const MARKER_PREFIX: &str = "outbox-";

/// How long the relay waits for a marker before giving up on it for now.
const MARKER_WAIT: Duration = Duration::from_secs(10);
const FIRST_CHECK: Duration = Duration::from_millis(5);
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// Waits between attempts to subscribe to the internal topic.
const RESUBSCRIBE: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum OutboxError {
    #[error("state store {store}: {missing} is required with {given}")]
    Incomplete {
        store: String,
        missing: &'static str,
        given: &'static str,
    },
    #[error("state store {store}: {field} {pubsub:?} is not a loaded pub/sub component")]
    UnknownPubSub {
        store: String,
        field: &'static str,
        pubsub: String,
    },
    #[error("state store {store}: {DISCARD_WHEN_MISSING} {value:?} is not true or false")]
    NotABool { store: String, value: String },
    #[error("state store {store} has an outbox but does not support transactions")]
    NotTransactional { store: String },
}

/// One state store's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub store: String,
    pub publish_pubsub: String,
    pub publish_topic: String,
    /// Carries the internal topic.
    pub internal_pubsub: String,
    pub discard_when_missing: bool,
}

impl OutboxConfig {
    /// The outbox of a state store component, if its metadata configures one.
    fn of(component: &LoadedComponent) -> Result<Option<Self>, OutboxError> {
        let md = &component.metadata;
        let store = component.name.clone();
        let pubsub = md.get_non_empty(PUBLISH_PUBSUB);
        let topic = md.get_non_empty(PUBLISH_TOPIC);
        let (publish_pubsub, publish_topic) = match (pubsub, topic) {
            (None, None) => return Ok(None),
            (Some(p), Some(t)) => (p.to_string(), t.to_string()),
            (Some(_), None) => {
                return Err(OutboxError::Incomplete {
                    store,
                    missing: PUBLISH_TOPIC,
                    given: PUBLISH_PUBSUB,
                })
            }
            (None, Some(_)) => {
                return Err(OutboxError::Incomplete {
                    store,
                    missing: PUBLISH_PUBSUB,
                    given: PUBLISH_TOPIC,
                })
            }
        };
        let discard_when_missing = match md.get_non_empty(DISCARD_WHEN_MISSING) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(OutboxError::NotABool {
                    store,
                    value: v.to_string(),
                })
            }
        };
        Ok(Some(Self {
            internal_pubsub: md
                .get_non_empty(INTERNAL_PUBSUB)
                .unwrap_or(&publish_pubsub)
                .to_string(),
            store,
            publish_pubsub,
            publish_topic,
            discard_when_missing,
        }))
    }

    /// `<namespace><appId><outboxPublishTopic>outbox`, as Dapr names it.
    pub fn internal_topic(&self, namespace: Option<&str>, app_id: &str) -> String {
        format!(
            "{}{app_id}{}outbox",
            namespace.unwrap_or_default(),
            self.publish_topic
        )
    }
}

/// The outboxes of the loaded state stores, checked against the loaded pub/sub components.
pub fn configure(components: &ComponentSet) -> Result<BTreeMap<String, OutboxConfig>, OutboxError> {
    let mut outboxes = BTreeMap::new();
    for component in components.iter() {
        let Some(store) = components.state_store(&component.name) else {
            continue;
        };
        let Some(config) = OutboxConfig::of(component)? else {
            continue;
        };
        if !store.features().transactional {
            return Err(OutboxError::NotTransactional {
                store: config.store,
            });
        }
        for (field, pubsub) in [
            (PUBLISH_PUBSUB, &config.publish_pubsub),
            (INTERNAL_PUBSUB, &config.internal_pubsub),
        ] {
            if components.pubsub(pubsub).is_none() {
                return Err(OutboxError::UnknownPubSub {
                    store: config.store.clone(),
                    field,
                    pubsub: pubsub.clone(),
                });
            }
        }
        outboxes.insert(config.store.clone(), config);
    }
    Ok(outboxes)
}

/// Why an outbox transaction was refused before it ran.
#[derive(Debug, Error)]
pub enum StageError {
    #[error("outbox projection for key {0} has no upsert of that key in the transaction")]
    OrphanProjection(String),
    #[error("cannot publish to the outbox topic {topic}: {message}")]
    Publish { topic: String, message: String },
    #[error("{0}")]
    Event(String),
}

/// The event published for one upsert: its final CloudEvent, made by `envelope`.
pub type Envelope<'a> =
    dyn Fn(&[u8], Option<&str>, &BTreeMap<String, String>) -> Result<Bytes, String> + Sync + 'a;

/// Prepares a transaction on an outbox store: takes the projections out of `ops`, publishes one
/// internal message per remaining upsert, and adds each upsert's marker to `ops`.
/// `marker_key` turns a marker name into the store's key for it.
pub async fn stage(
    rt: &Runtime,
    config: &OutboxConfig,
    ops: &mut Vec<TransactionOperation>,
    marker_key: impl Fn(&str) -> String + Sync,
    envelope: &Envelope<'_>,
) -> Result<(), StageError> {
    let mut projections: BTreeMap<String, SetRequest> = BTreeMap::new();
    ops.retain(|op| match op {
        TransactionOperation::Upsert(req) if is_projection(req) => {
            projections.insert(req.key.clone(), req.clone());
            false
        }
        _ => true,
    });
    let upserts: Vec<&SetRequest> = ops
        .iter()
        .filter_map(|op| match op {
            TransactionOperation::Upsert(req) => Some(req),
            TransactionOperation::Delete(_) => None,
        })
        .collect();
    if let Some(key) = projections
        .keys()
        .find(|k| !upserts.iter().any(|u| &u.key == *k))
    {
        return Err(StageError::OrphanProjection(key.clone()));
    }
    let topic = config.internal_topic(rt.settings.namespace.as_deref(), &rt.settings.app_id);
    let mut messages = Vec::with_capacity(upserts.len());
    let mut markers = Vec::with_capacity(upserts.len());
    for upsert in upserts {
        let published = projections.get(&upsert.key).unwrap_or(upsert);
        let content_type = published
            .metadata
            .get("contentType")
            .map(String::as_str)
            .or(if value::is_json(&published.value) {
                Some("application/json")
            } else {
                Some("application/octet-stream")
            });
        let overrides: BTreeMap<String, String> = published
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("cloudevent."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let event =
            envelope(&published.value, content_type, &overrides).map_err(StageError::Event)?;
        let marker = marker_key(&format!("{MARKER_PREFIX}{}", uuid::Uuid::new_v4()));
        messages.push(PublishRequest {
            topic: topic.clone(),
            data: event,
            content_type: Some(CLOUDEVENTS_JSON.to_string()),
            metadata: BTreeMap::from([(MARKER_METADATA.to_string(), marker.clone())]),
        });
        markers.push(marker);
    }
    if messages.is_empty() {
        return Ok(());
    }
    let internal = rt
        .components
        .pubsub(&config.internal_pubsub)
        .ok_or_else(|| StageError::Publish {
            topic: topic.clone(),
            message: format!("pub/sub {} is not loaded", config.internal_pubsub),
        })?;
    for result in internal.bulk_publish(messages).await {
        result.map_err(|e| StageError::Publish {
            topic: topic.clone(),
            message: e.to_string(),
        })?;
    }
    ops.extend(markers.into_iter().map(|key| {
        TransactionOperation::Upsert(SetRequest {
            key,
            value: Bytes::from_static(b"1"),
            ..Default::default()
        })
    }));
    Ok(())
}

fn is_projection(req: &SetRequest) -> bool {
    req.metadata
        .get(PROJECTION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Starts one relay per outbox; each runs until `rt.shutdown`, then finishes what it holds.
pub fn start_relays(rt: &Arc<Runtime>) -> JoinSet<()> {
    let mut relays = JoinSet::new();
    for config in rt.outboxes.values() {
        relays.spawn(relay(rt.clone(), config.clone()));
    }
    relays
}

async fn relay(rt: Arc<Runtime>, config: OutboxConfig) {
    let (Some(store), Some(internal), Some(target)) = (
        rt.components.state_store(&config.store).cloned(),
        rt.components.pubsub(&config.internal_pubsub).cloned(),
        rt.components.pubsub(&config.publish_pubsub).cloned(),
    ) else {
        return;
    };
    let topic = config.internal_topic(rt.settings.namespace.as_deref(), &rt.settings.app_id);
    let mut subscription = loop {
        let request = SubscribeRequest {
            topic: topic.clone(),
            ..Default::default()
        };
        match internal.subscribe(request).await {
            Ok(subscription) => break subscription,
            Err(e) => {
                tracing::error!(
                    "outbox of {}: cannot read {topic}: {e}; retrying",
                    config.store
                );
                tokio::select! {
                    _ = tokio::time::sleep(RESUBSCRIBE) => {}
                    _ = rt.shutdown.cancelled() => return,
                }
            }
        }
    };
    tracing::info!(
        "outbox of {}: relaying {topic} on {} to {} on {}",
        config.store,
        config.internal_pubsub,
        config.publish_topic,
        config.publish_pubsub
    );
    let config = Arc::new(config);
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.len() >= subscription.concurrency {
            in_flight.join_next().await;
        }
        let message = tokio::select! {
            m = subscription.messages.recv() => m,
            _ = rt.shutdown.cancelled() => None,
        };
        let Some(message) = message else { break };
        in_flight.spawn(forward(
            config.clone(),
            store.clone(),
            target.clone(),
            message,
        ));
    }
    subscription.stop();
    while in_flight.join_next().await.is_some() {}
}

/// Publishes one staged event once its transaction's marker is found.
async fn forward(
    config: Arc<OutboxConfig>,
    store: Arc<dyn StateStore>,
    target: Arc<dyn PubSub>,
    message: Message,
) {
    let Some(marker) = message.metadata.get(MARKER_METADATA).cloned() else {
        tracing::warn!(
            "outbox of {}: a message without a marker; dropped",
            config.store
        );
        message.ack.ack();
        return;
    };
    let deadline = tokio::time::Instant::now() + MARKER_WAIT;
    let mut wait = FIRST_CHECK;
    loop {
        tokio::time::sleep(
            wait.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        let found = store
            .get(GetRequest {
                key: marker.clone(),
                ..Default::default()
            })
            .await;
        match found {
            Ok(Some(_)) => break,
            Ok(None) if tokio::time::Instant::now() < deadline => {
                wait = (wait * 2).min(MAX_CHECK_INTERVAL);
            }
            Ok(None) if config.discard_when_missing => {
                tracing::info!(
                    "outbox of {}: no committed transaction for {marker}; event dropped",
                    config.store
                );
                message.ack.ack();
                return;
            }
            Ok(None) => {
                tracing::warn!(
                    "outbox of {}: no committed transaction for {marker} yet; left for redelivery",
                    config.store
                );
                message.ack.nack();
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "outbox of {}: cannot read {marker}: {e}; left for redelivery",
                    config.store
                );
                message.ack.nack();
                return;
            }
        }
    }
    let published = target
        .publish(PublishRequest {
            topic: config.publish_topic.clone(),
            data: message.data.clone(),
            content_type: Some(CLOUDEVENTS_JSON.to_string()),
            metadata: BTreeMap::new(),
        })
        .await;
    if let Err(e) = published {
        tracing::warn!(
            "outbox of {}: publishing to {} failed: {e}; left for redelivery",
            config.store,
            config.publish_topic
        );
        message.ack.nack();
        return;
    }
    // The event is out; a marker left behind (if this delete fails) only means that a
    // redelivered copy of the message would publish it again.
    if let Err(e) = store
        .delete(DeleteRequest {
            key: marker.clone(),
            ..Default::default()
        })
        .await
    {
        tracing::warn!("outbox of {}: cannot delete {marker}: {e}", config.store);
    }
    message.ack.ack();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_components::Metadata;

    /// A state store component with `md` (the in-memory store needs a runtime).
    fn component(md: &[(&str, &str)]) -> LoadedComponent {
        LoadedComponent {
            name: "orders".into(),
            component_type: "state.in-memory".into(),
            version: "v1".into(),
            component: tandem_components::Component::State(Arc::new(
                tandem_components::state::memory::MemoryStore::new(
                    &Metadata::new(),
                    &tandem_components::BuildContext {
                        name: "orders".into(),
                        app_id: "shop".into(),
                        namespace: None,
                    },
                )
                .unwrap(),
            )),
            metadata: md
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Metadata>(),
        }
    }

    #[tokio::test]
    async fn configuration_from_the_store_metadata() {
        assert_eq!(OutboxConfig::of(&component(&[])).unwrap(), None);
        let c = OutboxConfig::of(&component(&[
            (PUBLISH_PUBSUB, "pubsub"),
            (PUBLISH_TOPIC, "orders"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.internal_pubsub, "pubsub");
        assert!(!c.discard_when_missing);
        assert_eq!(
            c.internal_topic(Some("prod"), "shop"),
            "prodshopordersoutbox"
        );
        assert_eq!(c.internal_topic(None, "shop"), "shopordersoutbox");
        let err = OutboxConfig::of(&component(&[(PUBLISH_PUBSUB, "pubsub")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "state store orders: outboxPublishTopic is required with outboxPublishPubsub"
        );
        let err = OutboxConfig::of(&component(&[
            (PUBLISH_PUBSUB, "pubsub"),
            (PUBLISH_TOPIC, "orders"),
            (DISCARD_WHEN_MISSING, "maybe"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");
    }
}
