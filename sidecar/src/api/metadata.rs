//! `GET /v1.0/metadata` and `PUT /v1.0/metadata/{key}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use tandem_components::metadata::format_go_duration;

use super::body::{read_body, BodyLimit};
use super::error::ApiError;
use crate::runtime::{Runtime, RUNTIME_VERSION};

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new()
        .route("/v1.0/metadata", get(get_metadata))
        .route("/v1.0/metadata/{key}", put(put_metadata))
}

async fn get_metadata(State(rt): State<Arc<Runtime>>) -> Json<Value> {
    Json(describe(&rt))
}

/// The metadata document; empty sections are left out, as Dapr does.
pub fn describe(rt: &Runtime) -> Value {
    let mut doc = Map::new();
    doc.insert("id".into(), json!(rt.settings.app_id));
    doc.insert("runtimeVersion".into(), json!(RUNTIME_VERSION));
    doc.insert("enabledFeatures".into(), json!([]));
    let components: Vec<Value> = rt
        .components
        .iter()
        .map(|c| {
            let mut entry = json!({
                "name": c.name,
                "type": c.component_type,
                "version": c.version,
            });
            let caps = c.component.capabilities();
            if !caps.is_empty() {
                entry["capabilities"] = json!(caps);
            }
            entry
        })
        .collect();
    if !components.is_empty() {
        doc.insert("components".into(), json!(components));
    }
    let endpoints: Vec<Value> = rt
        .http_endpoints
        .iter()
        .map(|e| json!({ "name": e.name }))
        .collect();
    if !endpoints.is_empty() {
        doc.insert("httpEndpoints".into(), json!(endpoints));
    }
    let subscriptions: Vec<Value> = rt
        .subscriptions
        .read()
        .iter()
        .map(|s| {
            let rules: Vec<Value> = s
                .rules
                .iter()
                .map(|r| json!({ "match": r.match_expr.clone().unwrap_or_default(), "path": r.path }))
                .collect();
            let mut entry = json!({
                "type": s.kind,
                "pubsubname": s.pubsub_name,
                "topic": s.topic,
                "rules": rules,
            });
            if let Some(dlq) = &s.dead_letter_topic {
                entry["deadLetterTopic"] = json!(dlq);
            }
            if !s.metadata.is_empty() {
                entry["metadata"] = json!(s.metadata);
            }
            entry
        })
        .collect();
    if !subscriptions.is_empty() {
        doc.insert("subscriptions".into(), json!(subscriptions));
    }
    let mut extended = rt.extended_metadata.read().clone();
    extended.insert("daprRuntimeVersion".into(), RUNTIME_VERSION.into());
    doc.insert("extended".into(), json!(extended));
    if let Some(app) = &rt.app {
        let cfg = app.config();
        let mut props = json!({
            "port": cfg.port,
            "protocol": rt.settings.app_protocol,
            "channelAddress": cfg.address,
            "maxConcurrency": cfg.max_concurrency.unwrap_or(0),
        });
        if let Some(h) = &cfg.health_check {
            props["health"] = json!({
                "healthCheckPath": h.path,
                "healthProbeInterval": format_go_duration(h.interval),
                "healthProbeTimeout": format_go_duration(h.timeout),
                "healthThreshold": h.threshold,
            });
        }
        doc.insert("appConnectionProperties".into(), props);
    }
    doc.insert(
        "actorRuntime".into(),
        json!({ "runtimeStatus": "DISABLED", "activeActors": [], "hostReady": false }),
    );
    Value::Object(doc)
}

async fn put_metadata(
    State(rt): State<Arc<Runtime>>,
    Path(key): Path<String>,
    limit: Option<Extension<BodyLimit>>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bytes = read_body(body, limit.map(|l| l.0)).await?;
    let value = String::from_utf8_lossy(&bytes).into_owned();
    rt.extended_metadata.write().insert(key, value);
    Ok(StatusCode::NO_CONTENT)
}
