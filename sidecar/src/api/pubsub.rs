//! Publishing: `POST|PUT /v1.0/publish/{pubsub}/{topic}` and bulk publish at
//! `/v1.0-alpha1/publish/bulk/{pubsub}/{topic}` and `/v1.0/publish/bulk/{pubsub}/{topic}`.
//! Topics may contain `/`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_components::pubsub::{PubSub, PubSubError, PublishRequest};
use tandem_components::registry::Component;

use super::body::{read_body, BodyLimit};
use super::error::ApiError;
use super::secrets::request_metadata;
use crate::delivery::envelope::{self, EnvelopeContext, TraceContext, CLOUDEVENTS_JSON};
use crate::delivery::scopes::TopicScopes;
use crate::runtime::Runtime;

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new()
        .route("/v1.0/publish/{pubsub}", post(no_topic).put(no_topic))
        .route("/v1.0/publish/{pubsub}/", post(no_topic).put(no_topic))
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(publish).put(publish),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(bulk_publish).put(bulk_publish),
        )
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(bulk_publish).put(bulk_publish),
        )
}

/// The pub/sub component named `name`, checked as Dapr does (none configured, empty, unknown).
fn lookup<'a>(rt: &'a Runtime, name: &str) -> Result<(&'a Arc<dyn PubSub>, TopicScopes), ApiError> {
    if rt.components.count(|c| matches!(c, Component::PubSub(_))) == 0 {
        return Err(
            ApiError::bad_request("ERR_PUBSUB_NOT_CONFIGURED", "no pubsub is configured")
                .with_reason("DAPR_PUBSUB_NOT_CONFIGURED", json!({})),
        );
    }
    if name.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_EMPTY",
            "pubsub name is empty",
        )
        .with_reason("DAPR_PUBSUB_NAME_EMPTY", json!({})));
    }
    let (Some(pubsub), Some(loaded)) = (rt.components.pubsub(name), rt.components.get(name)) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_NOT_FOUND",
            format!("pubsub {name} is not found"),
        )
        .with_reason("DAPR_PUBSUB_NOT_FOUND", json!({ "pubsubName": name })));
    };
    Ok((
        pubsub,
        TopicScopes::from_metadata(&loaded.metadata, &rt.settings.app_id),
    ))
}

fn check_topic(
    rt: &Runtime,
    pubsub: &str,
    topic: &str,
    scopes: &TopicScopes,
) -> Result<(), ApiError> {
    if topic.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_TOPIC_NAME_EMPTY",
            format!("topic is empty in pubsub {pubsub}"),
        )
        .with_reason(
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
            json!({ "pubsubName": pubsub }),
        ));
    }
    if !scopes.may_publish(topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ERR_PUBSUB_FORBIDDEN",
            format!(
                "topic {topic} is not allowed for app id {}",
                rt.settings.app_id
            ),
        )
        .with_reason(
            "DAPR_PUBSUB_FORBIDDEN",
            json!({ "pubsubName": pubsub, "topic": topic, "appID": rt.settings.app_id }),
        ));
    }
    Ok(())
}

async fn no_topic(
    State(rt): State<Arc<Runtime>>,
    Path(pubsub): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, scopes) = lookup(&rt, &pubsub)?;
    check_topic(&rt, &pubsub, "", &scopes).map(|_| StatusCode::NO_CONTENT)
}

fn metadata_error(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "ERR_PUBSUB_REQUEST_METADATA",
        format!("failed deserializing metadata: {message}"),
    )
    .with_reason("DAPR_PUBSUB_METADATA_DESERIALIZATION", json!({}))
}

/// `rawPayload` from request metadata; a value that is not a boolean is a 400.
fn raw_payload(metadata: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    match metadata.get("rawPayload") {
        None => Ok(false),
        Some(v) if v.is_empty() => Ok(false),
        Some(v) => tandem_components::metadata::parse_bool(v)
            .ok_or_else(|| metadata_error(format!("rawPayload: {v:?} is not a boolean"))),
    }
}

pub(crate) fn trace_of(headers: &HeaderMap) -> TraceContext {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    TraceContext::from_headers(h("traceparent"), h("tracestate"))
}

fn cloud_event_error(pubsub: &str, topic: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
        format!("cannot create cloudevent for topic {topic} in pubsub {pubsub}: {e}"),
    )
    .with_reason(
        "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
        json!({ "pubsubName": pubsub, "topic": topic }),
    )
}

/// The bytes to publish for one body: the raw payload, a completed CloudEvent, or a new one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn envelope_bytes(
    rt: &Runtime,
    pubsub: &Arc<dyn PubSub>,
    pubsub_name: &str,
    topic: &str,
    body: &[u8],
    content_type: Option<&str>,
    metadata: &BTreeMap<String, String>,
    trace: &TraceContext,
) -> Result<Bytes, ApiError> {
    if raw_payload(metadata)? {
        return Ok(Bytes::copy_from_slice(body));
    }
    let ctx = EnvelopeContext {
        app_id: &rt.settings.app_id,
        pubsub: pubsub_name,
        topic,
        trace,
        metadata,
        stamp_expiration: !pubsub.features().message_ttl,
        now: Utc::now(),
    };
    match content_type {
        Some(ct) if envelope::is_cloudevent(ct) => {
            let event = envelope::complete(body, &ctx)
                .map_err(|e| cloud_event_error(pubsub_name, topic, e))?;
            serde_json::to_vec(&event)
                .map(Bytes::from)
                .map_err(|e| cloud_event_error(pubsub_name, topic, e))
        }
        _ => Ok(Bytes::from(envelope::wrap(body, content_type, &ctx))),
    }
}

fn publish_error(pubsub: &str, topic: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        format!("error when publish to topic {topic} in pubsub {pubsub}: {e}"),
    )
    .with_reason(
        "DAPR_PUBSUB_PUBLISH_MESSAGE",
        json!({ "pubsubName": pubsub, "topic": topic }),
    )
}

async fn publish(
    State(rt): State<Arc<Runtime>>,
    Path((pubsub_name, topic)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    limit: Option<Extension<BodyLimit>>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let (pubsub, scopes) = lookup(&rt, &pubsub_name)?;
    let topic = topic.trim_start_matches('/').to_string();
    check_topic(&rt, &pubsub_name, &topic, &scopes)?;
    let metadata = request_metadata(&query);
    raw_payload(&metadata)?;
    let body = read_body(body, limit.map(|Extension(l)| l)).await?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let data = envelope_bytes(
        &rt,
        pubsub,
        &pubsub_name,
        &topic,
        &body,
        content_type.as_deref(),
        &metadata,
        &trace_of(&headers),
    )?;
    pubsub
        .publish(PublishRequest {
            topic: topic.clone(),
            data,
            content_type,
            metadata,
        })
        .await
        .map_err(|e| publish_error(&pubsub_name, &topic, e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BulkEntry {
    #[serde(rename = "entryId", alias = "entryID", default)]
    entry_id: Option<String>,
    #[serde(default)]
    event: Value,
    #[serde(rename = "contentType", default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

fn events_error(pubsub: &str, topic: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "ERR_PUBSUB_EVENTS_SER",
        format!("error when unmarshaling the request for topic {topic} pubsub {pubsub}: {message}"),
    )
    .with_reason(
        "DAPR_PUBSUB_UNMARSHAL_EVENTS",
        json!({ "pubsubName": pubsub, "topic": topic }),
    )
}

/// The bytes of a bulk entry's event as its content type says.
fn entry_bytes(event: &Value, content_type: &str) -> Bytes {
    match event {
        Value::String(s) if !envelope::is_json(content_type) => Bytes::from(s.clone()),
        other => Bytes::from(other.to_string()),
    }
}

/// Bulk publish metadata: the most event bytes handed to the broker in one call.
const MAX_BULK_PUB_BYTES: &str = "maxBulkPubBytes";

/// Publishes `requests` in order, in broker calls of at most `max_bytes` of event data each (a
/// larger event goes alone); one result per request.
async fn publish_in_batches(
    pubsub: &dyn PubSub,
    requests: Vec<PublishRequest>,
    max_bytes: Option<usize>,
) -> Vec<Result<(), PubSubError>> {
    let Some(max) = max_bytes else {
        return pubsub.bulk_publish(requests).await;
    };
    let mut results = Vec::with_capacity(requests.len());
    let mut batch = Vec::new();
    let mut size = 0;
    for request in requests {
        if !batch.is_empty() && size + request.data.len() > max {
            results.extend(pubsub.bulk_publish(std::mem::take(&mut batch)).await);
            size = 0;
        }
        size += request.data.len();
        batch.push(request);
    }
    if !batch.is_empty() {
        results.extend(pubsub.bulk_publish(batch).await);
    }
    results
}

async fn bulk_publish(
    State(rt): State<Arc<Runtime>>,
    Path((pubsub_name, topic)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    limit: Option<Extension<BodyLimit>>,
    body: Body,
) -> Result<Response, ApiError> {
    let (pubsub, scopes) = lookup(&rt, &pubsub_name)?;
    let topic = topic.trim_start_matches('/').to_string();
    check_topic(&rt, &pubsub_name, &topic, &scopes)?;
    let mut request_md = request_metadata(&query);
    raw_payload(&request_md)?;
    // A limit for the broker calls, not metadata for the messages. As in Dapr, a value that is
    // not a number means no limit.
    let max_batch_bytes = request_md
        .remove(MAX_BULK_PUB_BYTES)
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let body = read_body(body, limit.map(|Extension(l)| l)).await?;
    let entries: Vec<BulkEntry> =
        serde_json::from_slice(&body).map_err(|e| events_error(&pubsub_name, &topic, e))?;
    let mut seen = HashSet::new();
    for entry in &entries {
        match entry.entry_id.as_deref() {
            None | Some("") => {
                return Err(events_error(
                    &pubsub_name,
                    &topic,
                    "entryId is required for every entry",
                ))
            }
            Some(id) if !seen.insert(id.to_string()) => {
                return Err(events_error(
                    &pubsub_name,
                    &topic,
                    format!("duplicate entryId {id:?}"),
                ))
            }
            Some(_) => {}
        }
    }
    let trace = trace_of(&headers);
    let mut ids = Vec::with_capacity(entries.len());
    let mut requests = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut metadata = request_md.clone();
        metadata.extend(entry.metadata.unwrap_or_default());
        let content_type = entry
            .content_type
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| match entry.event {
                Value::String(_) => envelope::DEFAULT_CONTENT_TYPE.to_string(),
                _ => "application/json".to_string(),
            });
        let raw = entry_bytes(&entry.event, &content_type);
        let data = envelope_bytes(
            &rt,
            pubsub,
            &pubsub_name,
            &topic,
            &raw,
            Some(&content_type),
            &metadata,
            &trace,
        )?;
        ids.push(entry.entry_id.unwrap_or_default());
        requests.push(PublishRequest {
            topic: topic.clone(),
            data,
            content_type: Some(if raw_payload(&metadata)? {
                content_type
            } else {
                CLOUDEVENTS_JSON.to_string()
            }),
            metadata,
        });
    }
    let results = publish_in_batches(pubsub.as_ref(), requests, max_batch_bytes).await;
    let failed: Vec<Value> = ids
        .iter()
        .zip(results)
        .filter_map(|(id, r)| {
            r.err()
                .map(|e| json!({ "entryId": id, "error": e.to_string() }))
        })
        .collect();
    if failed.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let error = format!(
        "error when publish to topic {topic} in pubsub {pubsub_name}: {} of {} entries failed",
        failed.len(),
        ids.len()
    );
    let mut resp = (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE" })),
    )
        .into_response();
    if let Ok(v) = http::HeaderValue::from_str(&error) {
        resp.headers_mut().insert("metadata.error", v);
    }
    Ok(resp)
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use parking_lot::Mutex;
    use tandem_components::pubsub::{SubscribeRequest, Subscription};

    /// Records the size of each bulk call.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    #[async_trait::async_trait]
    impl PubSub for Recorder {
        async fn publish(&self, _req: PublishRequest) -> Result<(), PubSubError> {
            Ok(())
        }

        async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<(), PubSubError>> {
            self.0.lock().push(reqs.len());
            reqs.iter().map(|_| Ok(())).collect()
        }

        async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, PubSubError> {
            Err(PubSubError::Subscribe {
                topic: req.topic,
                message: "not here".into(),
            })
        }
    }

    fn requests(sizes: &[usize]) -> Vec<PublishRequest> {
        sizes
            .iter()
            .map(|n| PublishRequest {
                topic: "t".into(),
                data: Bytes::from(vec![b'x'; *n]),
                content_type: None,
                metadata: BTreeMap::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn max_bulk_pub_bytes_splits_the_broker_calls() {
        let broker = Recorder::default();
        let results = publish_in_batches(&broker, requests(&[4, 4, 4, 10, 1]), Some(8)).await;
        assert_eq!(results.len(), 5);
        assert_eq!(*broker.0.lock(), vec![2, 1, 1, 1]);
        let broker = Recorder::default();
        publish_in_batches(&broker, requests(&[4, 4, 4]), None).await;
        assert_eq!(*broker.0.lock(), vec![3]);
    }
}
