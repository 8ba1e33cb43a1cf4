//! Delivering one message: prepare the event, route it, post it under the retry policy, then
//! settle it (ack, dead-letter then ack, or nack).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::Value;
use tandem_components::pubsub::{AckHandle, Message, PublishRequest};

use super::dead_letter::{dead_letter_event, DeadLetterReason, FailureRecord};
use super::envelope::{self, CLOUDEVENTS_JSON};
use super::outcome::{classify, truncate_error, Verdict};
use super::subscriber::SubscriptionContext;

/// A response body is read up to this size to find a `status`.
const MAX_RESPONSE: usize = 64 << 10;
/// Attempts to write a dead-letter copy before the original is nacked instead.
const DEAD_LETTER_ATTEMPTS: u32 = 3;

/// The members of a CloudEvent that delivery itself reads.
#[derive(Debug, Default, Deserialize)]
pub struct EventHead {
    #[serde(default)]
    traceparent: Option<Value>,
    #[serde(default)]
    tracestate: Option<Value>,
    #[serde(default)]
    expiration: Option<Value>,
}

impl EventHead {
    fn of(event: &Value) -> Self {
        Self {
            traceparent: event.get("traceparent").cloned(),
            tracestate: event.get("tracestate").cloned(),
            expiration: event.get("expiration").cloned(),
        }
    }

    pub fn expiration(&self) -> Option<&str> {
        self.expiration.as_ref().and_then(Value::as_str)
    }

    fn trace(&self) -> [(&'static str, Option<&str>); 2] {
        [
            (
                "traceparent",
                self.traceparent.as_ref().and_then(Value::as_str),
            ),
            (
                "tracestate",
                self.tracestate.as_ref().and_then(Value::as_str),
            ),
        ]
    }
}

/// The event as the app will see it: the bytes to post and the members delivery reads. The
/// whole CloudEvent is parsed only when something needs it (routing rules, a dead letter,
/// a bulk envelope), so a plain delivery reads the event once without building it.
pub struct Prepared {
    pub body: Bytes,
    pub head: EventHead,
    event: OnceLock<Value>,
}

impl Prepared {
    /// The whole CloudEvent.
    pub fn event(&self) -> &Value {
        self.event
            .get_or_init(|| serde_json::from_slice(&self.body).unwrap_or(Value::Null))
    }

    pub fn into_event(self) -> Value {
        self.event();
        self.event.into_inner().unwrap_or(Value::Null)
    }

    fn parsed(event: Value, body: Bytes) -> Self {
        Self {
            body,
            head: EventHead::of(&event),
            event: OnceLock::from(event),
        }
    }
}

/// The CloudEvent of a message. Raw subscriptions (and bodies that are not a JSON object) get
/// Dapr's raw-payload envelope.
pub fn prepare(ctx: &SubscriptionContext, msg: &Message) -> Prepared {
    let data = &msg.data;
    let object = data.trim_ascii_start().first() == Some(&b'{');
    if !ctx.raw && object && std::str::from_utf8(data).is_ok() {
        if let Ok(head) = serde_json::from_slice::<EventHead>(data) {
            return Prepared {
                body: data.clone(),
                head,
                event: OnceLock::new(),
            };
        }
        // Valid JSON the quick read refused (a repeated member, say) is read whole.
        if let Ok(event @ Value::Object(_)) = serde_json::from_slice::<Value>(data) {
            return Prepared::parsed(event, data.clone());
        }
    }
    let event = envelope::from_raw_payload(data, &ctx.spec.pubsub_name, &ctx.spec.topic);
    let body = Bytes::from(event.to_string());
    Prepared::parsed(event, body)
}

/// Headers of a delivery: content type, trace context, pub/sub name and broker metadata.
pub fn delivery_headers(
    ctx: &SubscriptionContext,
    event: &EventHead,
    metadata: &BTreeMap<String, String>,
    content_type: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    let mut add = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.push((n, v));
        }
    };
    // Broker metadata becomes headers, except names the delivery itself sets or HTTP owns.
    const RESERVED: &[&str] = &[
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "host",
        "pubsubname",
        "traceparent",
        "tracestate",
        "dapr-api-token",
    ];
    for (k, v) in metadata {
        if !RESERVED.iter().any(|r| k.eq_ignore_ascii_case(r)) {
            add(k, v);
        }
    }
    add("content-type", content_type);
    add("pubsubname", &ctx.spec.pubsub_name);
    for (key, value) in event.trace() {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            add(key, v);
        }
    }
    headers
}

/// One POST to the app; the verdict.
pub async fn post(
    ctx: &SubscriptionContext,
    path: &str,
    body: Bytes,
    headers: &[(HeaderName, HeaderValue)],
    classify_answer: impl Fn(u16, &[u8]) -> Verdict,
) -> (Verdict, Bytes) {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut builder = Request::post(path.as_str());
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    let req = match builder.body(Body::from(body)) {
        Ok(r) => r,
        Err(e) => {
            return (
                Verdict::Retry {
                    status: 0,
                    reason: format!("invalid request: {e}"),
                },
                Bytes::new(),
            )
        }
    };
    let call = async {
        let resp = ctx.app.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // A body over the cap is not a status document: it counts as non-JSON.
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    let ticket = match &ctx.policy.breaker {
        None => None,
        Some(breaker) => match breaker.try_acquire() {
            Ok(ticket) => Some((breaker, ticket)),
            Err(rejection) => {
                return (
                    Verdict::Retry {
                        status: 0,
                        reason: format!("{rejection} ({})", breaker.name()),
                    },
                    Bytes::new(),
                )
            }
        },
    };
    let (verdict, body) = attempt(ctx, call, classify_answer).await;
    if let Some((breaker, ticket)) = ticket {
        match verdict {
            Verdict::Success | Verdict::Drop => breaker.success(ticket),
            Verdict::Retry { .. } | Verdict::NotFound { .. } => breaker.failure(ticket),
        }
    }
    (verdict, body)
}

async fn attempt(
    ctx: &SubscriptionContext,
    call: impl std::future::Future<Output = Result<(u16, Bytes), String>>,
    classify_answer: impl Fn(u16, &[u8]) -> Verdict,
) -> (Verdict, Bytes) {
    match tokio::time::timeout(ctx.policy.timeout, call).await {
        Ok(Ok((status, body))) => (classify_answer(status, &body), body),
        Ok(Err(e)) => (
            Verdict::Retry {
                status: 0,
                reason: e,
            },
            Bytes::new(),
        ),
        Err(_) => (
            Verdict::Retry {
                status: 0,
                reason: format!("the app did not answer within {:?}", ctx.policy.timeout),
            },
            Bytes::new(),
        ),
    }
}

/// Waits while the app's health checks fail (deliveries to an unhealthy app are paused, not
/// counted as failed attempts). False when the sidecar shuts down meanwhile.
pub async fn app_available(ctx: &SubscriptionContext) -> bool {
    if ctx.app.config().health_check.is_none() || ctx.app.is_healthy() {
        return true;
    }
    let mut health = ctx.app.health_watch();
    tokio::select! {
        r = health.wait_for(|healthy| *healthy) => r.is_ok(),
        _ = ctx.stop.cancelled() => false,
    }
}

/// What failed, for logs and the dead-letter extensions.
pub struct Failures {
    pub status: u16,
    pub error: String,
    pub attempts: u32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

impl Failures {
    pub fn none() -> Self {
        let now = Utc::now();
        Self {
            status: 0,
            error: String::new(),
            attempts: 0,
            first: now,
            last: now,
        }
    }

    pub fn record(&mut self, status: u16, error: &str) {
        let now = Utc::now();
        if self.attempts == 0 {
            self.first = now;
        }
        self.attempts += 1;
        self.status = status;
        self.error = truncate_error(error);
        self.last = now;
    }
}

pub async fn deliver(ctx: &SubscriptionContext, msg: Message) {
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
        tracing::warn!(
            "message {position} on {} expired; not delivered",
            ctx.spec.topic
        );
        return finish(
            ctx,
            ack,
            prepared.event(),
            DeadLetterReason::Expired,
            "",
            &failures,
            &position,
        )
        .await;
    }
    let Some(path) = ctx
        .routes
        .route_with(|| prepared.event())
        .map(str::to_string)
    else {
        failures.error = "no routing rule matched".into();
        tracing::warn!(
            "message {position} on {} matched no route; dropped",
            ctx.spec.topic
        );
        return finish(
            ctx,
            ack,
            prepared.event(),
            DeadLetterReason::NoRoute,
            "",
            &failures,
            &position,
        )
        .await;
    };
    let headers = delivery_headers(ctx, &prepared.head, &metadata, CLOUDEVENTS_JSON);
    let policy = &ctx.policy.retry;
    let mut retries = 0u32;
    loop {
        if !app_available(ctx).await {
            ack.nack();
            return;
        }
        let (verdict, _) = post(ctx, &path, prepared.body.clone(), &headers, classify).await;
        match verdict {
            Verdict::Success => {
                ack.ack();
                return;
            }
            Verdict::Drop => {
                failures.record(200, "app returned DROP");
                tracing::warn!("app dropped message {position} on {}", ctx.spec.topic);
                return finish(
                    ctx,
                    ack,
                    prepared.event(),
                    DeadLetterReason::Drop,
                    &path,
                    &failures,
                    &position,
                )
                .await;
            }
            Verdict::NotFound { reason } => {
                failures.record(404, &reason);
                tracing::error!(
                    "route {path} not found (404); message {position} on {} dropped",
                    ctx.spec.topic
                );
                return finish(
                    ctx,
                    ack,
                    prepared.event(),
                    DeadLetterReason::NotFound,
                    &path,
                    &failures,
                    &position,
                )
                .await;
            }
            Verdict::Retry { status, reason } => {
                failures.record(status, &reason);
                let retriable = status == 0 || policy.retries_status(status);
                if !retriable || !policy.allows_retry(retries) {
                    tracing::warn!(
                        "delivery of {position} on {} to {path} failed after {} attempt(s): {reason}",
                        ctx.spec.topic,
                        failures.attempts
                    );
                    return finish(
                        ctx,
                        ack,
                        prepared.event(),
                        DeadLetterReason::RetriesExhausted,
                        &path,
                        &failures,
                        &position,
                    )
                    .await;
                }
                tracing::debug!("delivery of {position} to {path} failed ({reason}); retrying");
                tokio::select! {
                    _ = tokio::time::sleep(policy.delay(retries)) => {}
                    _ = ctx.stop.cancelled() => {
                        // Shutting down: hand it back to the broker rather than wait.
                        ack.nack();
                        return;
                    }
                }
                retries += 1;
            }
        }
    }
}

/// Settles a message that was not processed: dead-letter it when a topic is configured (acked
/// only once the copy is written), else drop it (ack) or, when retries ran out, nack it.
pub async fn finish(
    ctx: &SubscriptionContext,
    ack: AckHandle,
    event: &Value,
    reason: DeadLetterReason,
    route: &str,
    failures: &Failures,
    position: &str,
) {
    let Some(dlq) = ctx.spec.dead_letter_topic.as_deref() else {
        match reason {
            DeadLetterReason::RetriesExhausted => ack.nack(),
            _ => ack.ack(),
        }
        return;
    };
    let copy = dead_letter_event(
        event,
        &FailureRecord {
            reason,
            status: failures.status,
            error: &failures.error,
            attempts: failures.attempts,
            pubsub: &ctx.spec.pubsub_name,
            topic: &ctx.spec.topic,
            subscriber: &ctx.app_id,
            route,
            first_failure: failures.first,
            last_failure: failures.last,
            position,
        },
    );
    if publish_dead_letter(ctx, dlq, copy).await {
        ack.ack();
    } else {
        ack.nack();
    }
}

/// Writes a dead-letter copy to `dlq` on the same pub/sub; true once the broker confirmed it.
pub async fn publish_dead_letter(ctx: &SubscriptionContext, dlq: &str, copy: Value) -> bool {
    let data = Bytes::from(copy.to_string());
    for attempt in 1..=DEAD_LETTER_ATTEMPTS {
        let req = PublishRequest {
            topic: dlq.to_string(),
            data: data.clone(),
            content_type: Some(CLOUDEVENTS_JSON.to_string()),
            metadata: BTreeMap::new(),
        };
        match ctx.pubsub.publish(req).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!("writing a dead letter to {dlq} failed (attempt {attempt}): {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                    .await;
            }
        }
    }
    false
}
