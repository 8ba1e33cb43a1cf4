//! `GET /v1.0/secrets/{store}/{key}` and `GET /v1.0/secrets/{store}/bulk`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tandem_components::registry::Component;
use tandem_components::secretstores::SecretStore;

use super::error::ApiError;
use crate::runtime::Runtime;

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new()
        .route("/v1.0/secrets/{store}/bulk", get(bulk))
        .route("/v1.0/secrets/{store}/{*key}", get(one))
}

/// `metadata.*` query parameters with the prefix removed.
pub fn request_metadata(query: &HashMap<String, String>) -> BTreeMap<String, String> {
    query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
        .collect()
}

fn lookup<'a>(rt: &'a Runtime, store: &str) -> Result<&'a Arc<dyn SecretStore>, ApiError> {
    if rt
        .components
        .count(|c| matches!(c, Component::SecretStore(_)))
        == 0
    {
        return Err(ApiError::internal(
            "ERR_SECRET_STORES_NOT_CONFIGURED",
            "secret store is not configured",
        ));
    }
    rt.components.secret_store(store).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ERR_SECRET_STORE_NOT_FOUND",
            format!("failed finding secret store with key {store}"),
        )
    })
}

fn allowed(rt: &Runtime, store: &str, key: &str) -> bool {
    rt.secret_scopes
        .iter()
        .filter(|s| s.store_name == store)
        .all(|s| s.allows(key))
}

async fn one(
    State(rt): State<Arc<Runtime>>,
    Path((store_name, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    if !allowed(&rt, &store_name, &key) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ERR_PERMISSION_DENIED",
            format!("access denied by policy to get {key:?} from {store_name:?}"),
        ));
    }
    let secret = store.get_secret(&key, &request_metadata(&query)).await?;
    if secret.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(secret).into_response())
}

async fn bulk(
    State(rt): State<Arc<Runtime>>,
    Path(store_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    let mut secrets = store.bulk_get_secret(&request_metadata(&query)).await?;
    secrets.retain(|name, _| allowed(&rt, &store_name, name));
    Ok(Json(secrets).into_response())
}
