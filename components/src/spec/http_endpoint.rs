//! `kind: HTTPEndpoint` (dapr.io/v1alpha1): a named external HTTP service for service invocation.

use serde::Deserialize;
use serde_json::Value;

use super::component::RawMetadataItem;
use super::{from_value, FieldError, MetadataItem, ObjectMeta, Origin};

#[derive(Debug, Clone, PartialEq)]
pub struct HttpEndpointSpec {
    pub name: String,
    pub base_url: String,
    /// Headers added to every request; values may come from secrets.
    pub headers: Vec<MetadataItem>,
    /// `spec.clientTLS`, kept as written.
    pub client_tls: Option<Value>,
    pub secret_store: Option<String>,
    pub scopes: Vec<String>,
    pub origin: Origin,
}

#[derive(Deserialize)]
struct RawEndpoint {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: RawSpec,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    base_url: String,
    #[serde(default)]
    headers: Option<Vec<RawMetadataItem>>,
    #[serde(default, rename = "clientTLS")]
    client_tls: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuth {
    #[serde(default)]
    secret_store: Option<String>,
}

pub(crate) fn parse(value: Value, origin: Origin) -> Result<HttpEndpointSpec, FieldError> {
    let raw: RawEndpoint = from_value(value)?;
    let name = raw.metadata.name.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(FieldError::new("metadata.name", "is required"));
    }
    let base_url = raw.spec.base_url.trim().trim_end_matches('/').to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(FieldError::new(
            "spec.baseUrl",
            format!("{base_url:?} must start with http:// or https://"),
        ));
    }
    let headers = raw
        .spec
        .headers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.into_item(&format!("spec.headers[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(HttpEndpointSpec {
        name,
        base_url,
        headers,
        client_tls: raw.spec.client_tls,
        secret_store: raw.auth.and_then(|a| a.secret_store),
        scopes: raw.scopes.unwrap_or_default(),
        origin,
    })
}
