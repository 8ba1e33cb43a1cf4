//! The state API: `GET|DELETE /v1.0/state/{store}/{key}`, `POST|PUT /v1.0/state/{store}` (save),
//! `.../bulk` (bulk get) and `.../transaction`.
//!
//! This layer owns everything Dapr does above the store: key prefixing (`appid||key`), the `||`
//! check, merging `metadata.*` query parameters into item metadata, parsing `ttlInSeconds`,
//! concurrency and consistency, and the response shapes. Stores see stored keys and raw bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tandem_components::registry::Component;
use tandem_components::state::options::KEY_SEPARATOR;
use tandem_components::state::{
    value, BulkGetResult, Concurrency, Consistency, DeleteRequest, GetRequest, SetRequest,
    StateError, StateItem, StateStore, TransactionOperation, Ttl,
};

use super::body::{read_body, BodyLimit};
use super::error::{state_error, ApiError};
use super::secrets::request_metadata;
use crate::outbox::{self, OutboxConfig};
use crate::runtime::Runtime;

/// Bulk get runs this many reads at once unless the request says otherwise.
pub const DEFAULT_BULK_GET_PARALLELISM: usize = 10;
/// The most reads a bulk get runs at once, whatever the request asks.
pub const MAX_BULK_GET_PARALLELISM: usize = 100;

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new()
        .route("/v1.0/state/{store}", post(save).put(save))
        // `bulk` and `transaction` are also valid key names for GET and DELETE.
        .route(
            "/v1.0/state/{store}/bulk",
            post(bulk_get)
                .put(bulk_get)
                .get(|rt, Path(store): Path<String>, query| {
                    get_state(rt, store, "bulk".into(), query)
                })
                .delete(|rt, Path(store): Path<String>, query, headers| {
                    delete_state(rt, store, "bulk".into(), query, headers)
                }),
        )
        .route(
            "/v1.0/state/{store}/transaction",
            post(transaction)
                .put(transaction)
                .get(|rt, Path(store): Path<String>, query| {
                    get_state(rt, store, "transaction".into(), query)
                })
                .delete(|rt, Path(store): Path<String>, query, headers| {
                    delete_state(rt, store, "transaction".into(), query, headers)
                }),
        )
        .route("/v1.0/state/{store}/{key}", get(get_one).delete(delete_one))
}

/// The store named in the path, with Dapr's errors when there is none.
fn lookup(rt: &Runtime, name: &str) -> Result<Arc<dyn StateStore>, ApiError> {
    if rt.components.count(|c| matches!(c, Component::State(_))) == 0 {
        return Err(ApiError::internal(
            "ERR_STATE_STORE_NOT_CONFIGURED",
            "state store is not configured",
        )
        .with_reason(
            "DAPR_STATE_NOT_CONFIGURED",
            serde_json::json!({ "appID": rt.settings.app_id }),
        ));
    }
    rt.components.state_store(name).cloned().ok_or_else(|| {
        ApiError::bad_request(
            "ERR_STATE_STORE_NOT_FOUND",
            format!("state store {name} is not found"),
        )
        .with_reason(
            "DAPR_STATE_NOT_FOUND",
            serde_json::json!({ "appID": rt.settings.app_id }),
        )
    })
}

/// The key as stored, refusing keys that contain the reserved separator.
fn stored_key(store: &dyn StateStore, key: &str) -> Result<String, ApiError> {
    if key.contains(KEY_SEPARATOR) {
        return Err(ApiError::malformed_request(format!(
            "input key/keyPrefix '{key}' can't contain '||'"
        ))
        .with_reason("DAPR_STATE_ILLEGAL_KEY", serde_json::json!({})));
    }
    Ok(store.options().stored_key(key))
}

fn parse_concurrency(value: Option<&str>) -> Result<Concurrency, ApiError> {
    match value.unwrap_or("") {
        "" => Ok(Concurrency::Unspecified),
        "first-write" => Ok(Concurrency::FirstWrite),
        "last-write" => Ok(Concurrency::LastWrite),
        other => Err(ApiError::malformed_request(format!(
            "unrecognized concurrency model '{other}' (expected first-write or last-write)"
        ))),
    }
}

fn parse_consistency(value: Option<&str>) -> Result<Consistency, ApiError> {
    match value.unwrap_or("") {
        "" | "eventual" => Ok(Consistency::Eventual),
        "strong" => Ok(Consistency::Strong),
        other => Err(ApiError::malformed_request(format!(
            "unrecognized consistency model '{other}' (expected eventual or strong)"
        ))),
    }
}

/// `ttlInSeconds` from the merged metadata: a positive number of seconds, `-1` (or 0) to keep
/// the value forever, absent for the store's default.
fn parse_ttl(metadata: &BTreeMap<String, String>) -> Result<Ttl, ApiError> {
    let Some(text) = metadata.get("ttlInSeconds") else {
        return Ok(Ttl::StoreDefault);
    };
    let seconds: i64 = text.trim().parse().map_err(|_| {
        ApiError::malformed_request(format!(
            "metadata ttlInSeconds must be an integer number of seconds, got {text:?}"
        ))
    })?;
    Ok(match u64::try_from(seconds) {
        Ok(s) if s > 0 => Ttl::Seconds(s),
        _ => Ttl::Never,
    })
}

/// An empty etag counts as none, as in Dapr (`HasETag`).
fn non_empty(etag: Option<String>) -> Option<String> {
    etag.filter(|e| !e.is_empty())
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::malformed_request(format!("failed deserializing HTTP body: {e}")))
}

/// The stored bytes of a request value: its JSON text exactly as sent (a JSON string stays a
/// quoted JSON string). A missing value is `null`, as Go marshals a nil value.
fn value_bytes(value: Option<&RawValue>) -> Bytes {
    match value {
        Some(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
        None => Bytes::from_static(b"null"),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ItemOptions {
    concurrency: Option<String>,
    consistency: Option<String>,
}

/// One item of a save, or the `request` of a transaction operation.
#[derive(Debug, Deserialize)]
struct StateItemBody {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    options: Option<ItemOptions>,
}

impl StateItemBody {
    fn key(&self) -> Result<&str, ApiError> {
        match self.key.as_deref() {
            Some(k) if !k.is_empty() => Ok(k),
            _ => Err(ApiError::malformed_request("\"key\" is a required field")),
        }
    }

    /// Item metadata with the request-level metadata laid over it (request wins, as in Dapr).
    fn merged_metadata(&self, request: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut md = self.metadata.clone().unwrap_or_default();
        md.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
        md
    }

    fn options(&self) -> Result<(Concurrency, Consistency), ApiError> {
        let opts = self.options.as_ref();
        Ok((
            parse_concurrency(opts.and_then(|o| o.concurrency.as_deref()))?,
            parse_consistency(opts.and_then(|o| o.consistency.as_deref()))?,
        ))
    }

    fn into_set(
        self,
        store: &dyn StateStore,
        request_md: &BTreeMap<String, String>,
    ) -> Result<SetRequest, ApiError> {
        let key = stored_key(store, self.key()?)?;
        let metadata = self.merged_metadata(request_md);
        let (concurrency, consistency) = self.options()?;
        Ok(SetRequest {
            key,
            value: value_bytes(self.value.as_deref()),
            etag: non_empty(self.etag),
            concurrency,
            consistency,
            ttl: parse_ttl(&metadata)?,
            metadata,
        })
    }

    fn into_delete(
        self,
        store: &dyn StateStore,
        request_md: &BTreeMap<String, String>,
    ) -> Result<DeleteRequest, ApiError> {
        let key = stored_key(store, self.key()?)?;
        let metadata = self.merged_metadata(request_md);
        let (concurrency, consistency) = self.options()?;
        Ok(DeleteRequest {
            key,
            etag: non_empty(self.etag),
            concurrency,
            consistency,
            metadata,
        })
    }
}

async fn save(
    State(rt): State<Arc<Runtime>>,
    Path(store_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    limit: Option<Extension<BodyLimit>>,
    body: Body,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    let bytes = read_body(body, limit.map(|l| l.0)).await?;
    let items: Vec<StateItemBody> = parse_json(&bytes)?;
    if items.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let request_md = request_metadata(&query);
    let reqs = items
        .into_iter()
        .map(|item| item.into_set(store.as_ref(), &request_md))
        .collect::<Result<Vec<_>, _>>()?;
    let context = || format!("failed saving state in state store {store_name}");
    match <[SetRequest; 1]>::try_from(reqs) {
        Ok([req]) => store
            .set(req)
            .await
            .map_err(|e| state_error("ERR_STATE_SAVE", &context(), &e))?,
        Err(reqs) => {
            let keys: Vec<String> = reqs.iter().map(|r| r.key.clone()).collect();
            let results = store.bulk_set(reqs).await;
            // Every item was attempted. As with Dapr's joined error, an etag failure anywhere
            // decides the status; otherwise the first failure is reported.
            let failures: Vec<(String, StateError)> = keys
                .into_iter()
                .zip(results)
                .filter_map(|(key, r)| r.err().map(|e| (key, e)))
                .collect();
            let chosen = failures
                .iter()
                .find(|(_, e)| {
                    matches!(e, StateError::EtagMismatch(_) | StateError::InvalidEtag(_))
                })
                .or(failures.first());
            if let Some((key, err)) = chosen {
                return Err(state_error(
                    "ERR_STATE_SAVE",
                    &format!("{} (key {key})", context()),
                    err,
                ));
            }
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A header value; text that cannot be one is left out.
fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

fn item_response(item: StateItem) -> Response {
    let mut headers = HeaderMap::new();
    let content_type = item
        .metadata
        .get("contentType")
        .and_then(|ct| header_value(ct))
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(etag) = item.etag.as_deref().and_then(header_value) {
        headers.insert(header::ETAG, etag);
    }
    for (k, v) in &item.metadata {
        if let (Ok(name), Some(value)) = (
            HeaderName::from_bytes(format!("metadata.{k}").as_bytes()),
            header_value(v),
        ) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, item.data).into_response()
}

async fn get_one(
    rt: State<Arc<Runtime>>,
    Path((store_name, key)): Path<(String, String)>,
    query: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    get_state(rt, store_name, key, query).await
}

async fn get_state(
    State(rt): State<Arc<Runtime>>,
    store_name: String,
    key: String,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    let req = GetRequest {
        key: stored_key(store.as_ref(), &key)?,
        consistency: parse_consistency(query.get("consistency").map(String::as_str))?,
        metadata: request_metadata(&query),
    };
    let item = store.get(req).await.map_err(|e| {
        state_error(
            "ERR_STATE_GET",
            &format!("fail to get {key} from state store {store_name}"),
            &e,
        )
    })?;
    Ok(match item {
        Some(item) => item_response(item),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn delete_one(
    rt: State<Arc<Runtime>>,
    Path((store_name, key)): Path<(String, String)>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_state(rt, store_name, key, query, headers).await
}

async fn delete_state(
    State(rt): State<Arc<Runtime>>,
    store_name: String,
    key: String,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    let etag = match headers.get(header::IF_MATCH) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::malformed_request("If-Match header is not valid text"))?
                .to_string(),
        ),
        None => None,
    };
    let req = DeleteRequest {
        key: stored_key(store.as_ref(), &key)?,
        etag: non_empty(etag),
        concurrency: parse_concurrency(query.get("concurrency").map(String::as_str))?,
        consistency: parse_consistency(query.get("consistency").map(String::as_str))?,
        metadata: request_metadata(&query),
    };
    store.delete(req).await.map_err(|e| {
        state_error(
            "ERR_STATE_DELETE",
            &format!("failed deleting state with key {key}"),
            &e,
        )
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct BulkGetBody {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    parallelism: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// The bulk get response, written directly (values are embedded, not parsed and encoded
/// again): one entry per key, in order, as daprd's `BulkGetResponse` encodes it — `key`, then
/// `data`, `etag` and `metadata` for a value, `error` for a failed key, nothing more for a
/// missing one. `data` is the stored JSON as is; bytes that are not JSON are a base64 string,
/// as Go encodes a byte slice.
fn bulk_get_body(
    keys: &[String],
    results: Vec<BulkGetResult>,
) -> Result<Vec<u8>, serde_json::Error> {
    let size: usize = results
        .iter()
        .map(|r| match &r.result {
            Ok(Some(item)) => item.data.len() * 4 / 3 + 64,
            _ => 64,
        })
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    out.push(b'[');
    for (i, (key, r)) in keys.iter().zip(results).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        serde_json::to_writer(&mut out, key)?;
        match r.result {
            Ok(Some(item)) => {
                out.extend_from_slice(b",\"data\":");
                if value::is_json(&item.data) {
                    out.extend_from_slice(&item.data);
                } else {
                    serde_json::to_writer(&mut out, &value::to_base64(&item.data))?;
                }
                if let Some(etag) = &item.etag {
                    out.extend_from_slice(b",\"etag\":");
                    serde_json::to_writer(&mut out, etag)?;
                }
                if !item.metadata.is_empty() {
                    out.extend_from_slice(b",\"metadata\":");
                    serde_json::to_writer(&mut out, &item.metadata)?;
                }
            }
            Ok(None) => {}
            Err(e) => {
                out.extend_from_slice(b",\"error\":");
                serde_json::to_writer(&mut out, &e.to_string())?;
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(out)
}

async fn bulk_get(
    State(rt): State<Arc<Runtime>>,
    Path(store_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    limit: Option<Extension<BodyLimit>>,
    body: Body,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    let bytes = read_body(body, limit.map(|l| l.0)).await?;
    let req: BulkGetBody = parse_json(&bytes)?;
    let mut metadata = req.metadata.unwrap_or_default();
    metadata.extend(request_metadata(&query));
    let parallelism = match req.parallelism {
        Some(n) if n > 0 => usize::try_from(n)
            .unwrap_or(MAX_BULK_GET_PARALLELISM)
            .min(MAX_BULK_GET_PARALLELISM),
        _ => DEFAULT_BULK_GET_PARALLELISM,
    };
    let gets = req
        .keys
        .iter()
        .map(|k| {
            Ok(GetRequest {
                key: stored_key(store.as_ref(), k)?,
                consistency: Consistency::Eventual,
                metadata: metadata.clone(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let results = store.bulk_get(gets, parallelism).await;
    let body = bulk_get_body(&req.keys, results).map_err(|e| {
        ApiError::internal(
            "ERR_STATE_BULK_GET",
            format!("failed encoding the bulk get response: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Publishes the transaction's events to the outbox's internal topic and adds their markers.
async fn stage_outbox(
    rt: &Runtime,
    outbox: &OutboxConfig,
    store: &dyn StateStore,
    ops: &mut Vec<TransactionOperation>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let target = rt
        .components
        .pubsub(&outbox.publish_pubsub)
        .ok_or_else(|| outbox_error(format!("pub/sub {} is not loaded", outbox.publish_pubsub)))?;
    let trace = super::pubsub::trace_of(headers);
    let envelope =
        |data: &[u8], content_type: Option<&str>, metadata: &BTreeMap<String, String>| {
            super::pubsub::envelope_bytes(
                rt,
                target,
                &outbox.publish_pubsub,
                &outbox.publish_topic,
                data,
                content_type,
                metadata,
                &trace,
            )
            .map_err(|e| e.to_string())
        };
    outbox::stage(
        rt,
        outbox,
        ops,
        |marker| store.options().stored_key(marker),
        &envelope,
    )
    .await
    .map_err(|e| outbox_error(e.to_string()))
}

fn outbox_error(message: String) -> ApiError {
    ApiError::internal("ERR_PUBLISH_OUTBOX", message)
}

#[derive(Debug, Deserialize)]
struct TransactionBody {
    #[serde(default)]
    operations: Vec<OperationBody>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct OperationBody {
    operation: String,
    request: StateItemBody,
}

async fn transaction(
    State(rt): State<Arc<Runtime>>,
    Path(store_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    limit: Option<Extension<BodyLimit>>,
    body: Body,
) -> Result<Response, ApiError> {
    let store = lookup(&rt, &store_name)?;
    if !store.features().transactional {
        return Err(ApiError::internal(
            "ERR_STATE_STORE_NOT_SUPPORTED",
            format!("state store {store_name} doesn't support transaction"),
        )
        .with_reason(
            "DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED",
            serde_json::json!({}),
        ));
    }
    let bytes = read_body(body, limit.map(|l| l.0)).await?;
    let tx: TransactionBody = parse_json(&bytes)?;
    if tx.operations.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if let Some(max) = store.max_transaction_operations() {
        if tx.operations.len() > max {
            return Err(ApiError::bad_request(
                "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS",
                format!(
                    "the transaction contains {} operations, which is more than what the state store supports: {max}",
                    tx.operations.len()
                ),
            )
            .with_reason(
                "DAPR_STATE_TOO_MANY_TRANSACTIONS",
                serde_json::json!({
                    "currentOpsTransaction": tx.operations.len().to_string(),
                    "maxOpsPerTransaction": max.to_string(),
                }),
            ));
        }
    }
    // Request-level metadata (body, then query) applies to every operation and wins over the
    // operation's own, as on save.
    let mut request_md = tx.metadata.unwrap_or_default();
    request_md.extend(request_metadata(&query));
    let mut ops = Vec::with_capacity(tx.operations.len());
    for op in tx.operations {
        let parsed = match op.operation.as_str() {
            "upsert" => {
                TransactionOperation::Upsert(op.request.into_set(store.as_ref(), &request_md)?)
            }
            "delete" => {
                TransactionOperation::Delete(op.request.into_delete(store.as_ref(), &request_md)?)
            }
            other => {
                return Err(ApiError::bad_request(
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                    format!("operation type {other} not supported"),
                ))
            }
        };
        ops.push(parsed);
    }
    if let Some(outbox) = rt.outboxes.get(&store_name) {
        stage_outbox(&rt, outbox, store.as_ref(), &mut ops, &headers).await?;
    }
    store.transact(ops).await.map_err(|e| {
        state_error(
            "ERR_STATE_TRANSACTION",
            "error while executing state transaction",
            &e,
        )
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        let md = |v: &str| BTreeMap::from([("ttlInSeconds".to_string(), v.to_string())]);
        assert_eq!(parse_ttl(&BTreeMap::new()).unwrap(), Ttl::StoreDefault);
        assert_eq!(parse_ttl(&md("5")).unwrap(), Ttl::Seconds(5));
        assert_eq!(parse_ttl(&md("-1")).unwrap(), Ttl::Never);
        assert_eq!(parse_ttl(&md("0")).unwrap(), Ttl::Never);
        assert!(parse_ttl(&md("soon")).is_err());
    }

    #[test]
    fn bulk_get_body_keeps_json_encodes_binary_and_reports_errors() {
        let item = |data: &'static [u8], etag: Option<&str>| {
            Ok(Some(StateItem {
                data: Bytes::from_static(data),
                etag: etag.map(str::to_string),
                metadata: BTreeMap::new(),
            }))
        };
        let results = vec![
            BulkGetResult {
                key: "a".into(),
                result: item(br#"{"a":1}"#, Some("1")),
            },
            BulkGetResult {
                key: "s".into(),
                result: item(br#""s""#, None),
            },
            BulkGetResult {
                key: "b".into(),
                result: item(b"\xff\x01", None),
            },
            BulkGetResult {
                key: "q".into(),
                result: item(b"\"\xff\"", None),
            },
            BulkGetResult {
                key: "m".into(),
                result: Ok(None),
            },
            BulkGetResult {
                key: "e".into(),
                result: Err(StateError::Backend("down".into())),
            },
        ];
        let keys: Vec<String> = ["a", "s", "b", "q", "m", "e\"x"].map(String::from).to_vec();
        let body = bulk_get_body(&keys, results).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                {"key": "a", "data": {"a": 1}, "etag": "1"},
                {"key": "s", "data": "s"},
                {"key": "b", "data": "/wE="},
                {"key": "q", "data": "Iv8i"},
                {"key": "m"},
                {"key": "e\"x", "error": "down"},
            ])
        );
    }
}
