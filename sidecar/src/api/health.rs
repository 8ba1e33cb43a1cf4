//! `GET /v1.0/healthz` and `GET /v1.0/healthz/outbound`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use crate::runtime::Runtime;

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(outbound))
}

async fn healthz(
    State(rt): State<Arc<Runtime>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    if let Some(id) = query.get("appid") {
        if id != &rt.settings.app_id {
            return Err(ApiError::internal(
                "ERR_HEALTH_APPID_NOT_MATCH",
                "dapr app-id does not match",
            ));
        }
    }
    if rt.ready() {
        Ok(StatusCode::NO_CONTENT)
    } else {
        let waiting = match &rt.app {
            Some(app) => format!("[app channel: waiting for port {}]", app.port()),
            None => "[initialising]".to_string(),
        };
        Err(ApiError::internal(
            "ERR_HEALTH_NOT_READY",
            format!("dapr is not ready: {waiting}"),
        ))
    }
}

async fn outbound(State(rt): State<Arc<Runtime>>) -> Result<StatusCode, ApiError> {
    if rt.outbound_ready() {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::internal(
            "ERR_OUTBOUND_HEALTH_NOT_READY",
            "dapr outbound is not ready",
        ))
    }
}
