//! Bulk delivery: one POST carries many events (`com.dapr.event.sent.bulk`); the app answers a
//! status per entry. Entries answered RETRY (or missing) are retried together under the policy.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use serde_json::{json, Value};
use tandem_components::pubsub::{AckHandle, Message};

use super::dead_letter::DeadLetterReason;
use super::deliver::{app_available, delivery_headers, finish, post, prepare, EventHead, Failures};
use super::envelope::{self, BULK_EVENT_TYPE, CLOUDEVENTS_JSON};
use super::outcome::{entry_status, EntryStatus, Verdict};
use super::subscriber::SubscriptionContext;

struct Entry {
    id: String,
    event: Value,
    metadata: BTreeMap<String, String>,
    position: String,
    ack: AckHandle,
    failures: Failures,
}

pub async fn deliver_batch(ctx: &SubscriptionContext, batch: Vec<Message>) {
    // Group by route, keeping arrival order inside each group.
    let mut by_route: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for msg in batch {
        let prepared = prepare(ctx, &msg);
        let Message {
            metadata,
            position,
            ack,
            ..
        } = msg;
        let mut failures = Failures::none();
        if envelope::is_expired(prepared.head.expiration(), Utc::now()) {
            failures.error = "the message expired before delivery".into();
            finish(
                ctx,
                ack,
                prepared.event(),
                DeadLetterReason::Expired,
                "",
                &failures,
                &position,
            )
            .await;
            continue;
        }
        let Some(path) = ctx
            .routes
            .route_with(|| prepared.event())
            .map(str::to_string)
        else {
            failures.error = "no routing rule matched".into();
            finish(
                ctx,
                ack,
                prepared.event(),
                DeadLetterReason::NoRoute,
                "",
                &failures,
                &position,
            )
            .await;
            continue;
        };
        by_route.entry(path).or_default().push(Entry {
            id: uuid::Uuid::new_v4().to_string(),
            event: prepared.into_event(),
            metadata,
            position,
            ack,
            failures,
        });
    }
    for (path, entries) in by_route {
        deliver_route(ctx, &path, entries).await;
    }
}

fn bulk_body(ctx: &SubscriptionContext, entries: &[Entry]) -> Bytes {
    let items: Vec<Value> = entries
        .iter()
        .map(|e| {
            // As daprd: a raw subscription's entry is the payload, base64, as octet-stream.
            let (event, content_type) = match e.event.get("data_base64") {
                Some(raw) if ctx.raw => (raw.clone(), "application/octet-stream"),
                _ => (e.event.clone(), CLOUDEVENTS_JSON),
            };
            json!({
                "entryId": e.id,
                "event": event,
                "metadata": e.metadata,
                "contentType": content_type,
            })
        })
        .collect();
    Bytes::from(
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": BULK_EVENT_TYPE,
            "topic": ctx.spec.topic,
            "pubsubname": ctx.spec.pubsub_name,
            "metadata": {},
            "entries": items,
        })
        .to_string(),
    )
}

/// The per-entry statuses of a 2xx answer; entries not mentioned are RETRY.
fn statuses(body: &[u8]) -> BTreeMap<String, EntryStatus> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return BTreeMap::new();
    };
    value
        .get("statuses")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|s| {
                    let id = s.get("entryId")?.as_str()?.to_string();
                    Some((id, entry_status(s.get("status").and_then(Value::as_str))))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn deliver_route(ctx: &SubscriptionContext, path: &str, mut pending: Vec<Entry>) {
    let policy = &ctx.policy.retry;
    let mut retries = 0u32;
    let headers = delivery_headers(
        ctx,
        &EventHead::default(),
        &BTreeMap::new(),
        "application/json",
    );
    while !pending.is_empty() {
        if !app_available(ctx).await {
            for e in pending {
                e.ack.nack();
            }
            return;
        }
        let body = bulk_body(ctx, &pending);
        let (verdict, answer) = post(ctx, path, body, &headers, |status, _| {
            if (200..300).contains(&status) {
                Verdict::Success
            } else if status == 404 {
                Verdict::NotFound {
                    reason: "route not found".into(),
                }
            } else {
                Verdict::Retry {
                    status,
                    reason: format!("bulk delivery answered {status}"),
                }
            }
        })
        .await;
        let mut retry = Vec::new();
        match verdict {
            Verdict::Success => {
                let statuses = statuses(&answer);
                for mut e in pending {
                    match statuses.get(&e.id).copied().unwrap_or(EntryStatus::Retry) {
                        EntryStatus::Success => e.ack.ack(),
                        EntryStatus::Drop => {
                            e.failures.record(200, "app returned DROP");
                            finish(
                                ctx,
                                e.ack,
                                &e.event,
                                DeadLetterReason::Drop,
                                path,
                                &e.failures,
                                &e.position,
                            )
                            .await;
                        }
                        EntryStatus::Retry => {
                            e.failures.record(200, "app returned RETRY for the entry");
                            retry.push(e);
                        }
                    }
                }
            }
            Verdict::NotFound { reason }
            | Verdict::Retry {
                status: 404,
                reason,
            } => {
                for mut e in pending {
                    e.failures.record(404, &reason);
                    finish(
                        ctx,
                        e.ack,
                        &e.event,
                        DeadLetterReason::NotFound,
                        path,
                        &e.failures,
                        &e.position,
                    )
                    .await;
                }
            }
            Verdict::Retry { status, reason } => {
                for mut e in pending {
                    e.failures.record(status, &reason);
                    retry.push(e);
                }
            }
            Verdict::Drop => {
                for e in pending {
                    e.ack.ack();
                }
            }
        }
        pending = retry;
        if pending.is_empty() {
            return;
        }
        if !policy.allows_retry(retries) {
            for e in pending {
                finish(
                    ctx,
                    e.ack,
                    &e.event,
                    DeadLetterReason::RetriesExhausted,
                    path,
                    &e.failures,
                    &e.position,
                )
                .await;
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.delay(retries)) => {}
            _ = ctx.stop.cancelled() => {
                for e in pending {
                    e.ack.nack();
                }
                return;
            }
        }
        retries += 1;
    }
}
