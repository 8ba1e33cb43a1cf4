//! What an invocation addresses: a Dapr app (`id` or `id.namespace`), an `HTTPEndpoint`
//! resource by name, or a full `http://host:port` URL.

use std::collections::{BTreeMap, HashMap};

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use serde_json::Value;
use tandem_components::spec::{HttpEndpointSpec, MetadataSource, SecretKeyRef};

use super::tls::{client_config, https_client, HttpsClient, TlsMaterial, HTTP_ENDPOINT_TLS};
use super::InvokeError;
use crate::component_set::ComponentSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeTarget {
    App {
        id: String,
        namespace: Option<String>,
    },
    External(ExternalEndpoint),
}

impl InvokeTarget {
    /// The name resiliency targets (`targets.apps.<name>`) and breakers use.
    pub fn policy_name(&self) -> &str {
        match self {
            InvokeTarget::App { id, .. } => id,
            InvokeTarget::External(e) => &e.name,
        }
    }
}

/// A non-Dapr HTTP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEndpoint {
    pub name: String,
    /// `http://host:port` plus an optional base path, without a trailing slash.
    pub base_url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `spec.clientTLS`, when given (its client is in `LoadedEndpoints::clients`).
    pub tls: Option<TlsMaterial>,
}

/// The HTTPEndpoint resources, ready to call.
#[derive(Default)]
pub struct LoadedEndpoints {
    pub endpoints: BTreeMap<String, ExternalEndpoint>,
    /// Clients for endpoints with their own `clientTLS`.
    pub clients: HashMap<String, HttpsClient>,
}

impl ExternalEndpoint {
    /// The URL for `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> Result<Uri, InvokeError> {
        let text = format!("{}{path_and_query}", self.base_url);
        let uri: Uri = text
            .parse()
            .map_err(|_| InvokeError::InvalidRequest(format!("{text:?} is not a valid URL")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => Ok(uri),
            Some(other) => Err(InvokeError::UnsupportedScheme(other.to_string())),
            None => Err(InvokeError::InvalidRequest(format!(
                "{text:?} has no scheme"
            ))),
        }
    }
}

/// One value of an HTTPEndpoint: literal, `envRef`, or `secretKeyRef` through
/// `auth.secretStore`.
async fn resolve_source(
    spec: &HttpEndpointSpec,
    source: &MetadataSource,
    components: &ComponentSet,
) -> Result<String, String> {
    match source {
        MetadataSource::Value(v) => Ok(v.clone()),
        MetadataSource::EnvRef(var) => {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
        }
        MetadataSource::SecretKeyRef(secret) => {
            let store_name = spec
                .secret_store
                .as_deref()
                .ok_or("secretKeyRef needs auth.secretStore")?;
            let store = components
                .secret_store(store_name)
                .ok_or_else(|| format!("secret store {store_name:?} is not loaded"))?;
            let values = store
                .get_secret(&secret.name, &BTreeMap::new())
                .await
                .map_err(|e| e.to_string())?;
            let key = secret.key.as_deref().unwrap_or(&secret.name);
            values
                .get(key)
                .cloned()
                .ok_or_else(|| format!("secret {:?} has no key {key:?}", secret.name))
        }
    }
}

/// `clientTLS.<field>` written as `{value}`, `{envRef}` or `{secretKeyRef: {name, key}}`.
fn tls_source(client_tls: &Value, field: &str) -> Result<Option<MetadataSource>, String> {
    let Some(item) = client_tls.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if let Some(v) = item.get("value").and_then(Value::as_str) {
        return Ok(Some(MetadataSource::Value(v.to_string())));
    }
    if let Some(v) = item.get("envRef").and_then(Value::as_str) {
        return Ok(Some(MetadataSource::EnvRef(v.to_string())));
    }
    if let Some(r) = item.get("secretKeyRef") {
        let secret: SecretKeyRef = serde_json::from_value(r.clone())
            .map_err(|e| format!("spec.clientTLS.{field}.secretKeyRef: {e}"))?;
        return Ok(Some(MetadataSource::SecretKeyRef(secret)));
    }
    Err(format!(
        "spec.clientTLS.{field}: write it as value, envRef or secretKeyRef"
    ))
}

/// Resolves the `HTTPEndpoint` resources' headers and client TLS once at start-up.
pub async fn load_endpoints(
    specs: &[HttpEndpointSpec],
    components: &ComponentSet,
) -> Result<LoadedEndpoints, String> {
    let mut out = LoadedEndpoints::default();
    for spec in specs {
        let context =
            |msg: String| format!("HTTPEndpoint {:?} ({}): {msg}", spec.name, spec.origin);
        let mut headers = Vec::new();
        for (i, item) in spec.headers.iter().enumerate() {
            let value = resolve_source(spec, &item.source, components)
                .await
                .map_err(|e| context(format!("spec.headers[{i}]: {e}")))?;
            let name = HeaderName::from_bytes(item.name.as_bytes())
                .map_err(|_| context(format!("spec.headers[{i}].name is not a header name")))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                context(format!(
                    "spec.headers[{i}]: the value is not a valid header value"
                ))
            })?;
            headers.push((name, value));
        }
        let tls = match &spec.client_tls {
            None | Some(Value::Null) => None,
            Some(client_tls) => {
                let mut material = TlsMaterial::default();
                for (field, slot) in [
                    ("rootCA", &mut material.root_ca),
                    ("certificate", &mut material.certificate),
                    ("privateKey", &mut material.private_key),
                ] {
                    if let Some(source) = tls_source(client_tls, field).map_err(context)? {
                        *slot = Some(
                            resolve_source(spec, &source, components)
                                .await
                                .map_err(|e| context(format!("spec.clientTLS.{field}: {e}")))?,
                        );
                    }
                }
                let config = client_config(Some(&material), &HTTP_ENDPOINT_TLS)
                    .map_err(|e| context(format!("spec.{e}")))?;
                out.clients.insert(spec.name.clone(), https_client(config));
                Some(material)
            }
        };
        out.endpoints.insert(
            spec.name.clone(),
            ExternalEndpoint {
                name: spec.name.clone(),
                base_url: spec.base_url.clone(),
                headers,
                tls,
            },
        );
    }
    Ok(out)
}

/// Parses the `{appId}` part: `http(s)://…` URLs, HTTPEndpoint names, `id` and `id.namespace`.
pub fn parse_target(
    raw: &str,
    endpoints: &BTreeMap<String, ExternalEndpoint>,
) -> Result<InvokeTarget, InvokeError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(InvokeError::NoAppId);
    }
    let lower = raw.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(InvokeTarget::External(ExternalEndpoint {
            name: raw.trim_end_matches('/').to_string(),
            base_url: raw.trim_end_matches('/').to_string(),
            headers: Vec::new(),
            tls: None,
        }));
    }
    if let Some(endpoint) = endpoints.get(raw) {
        return Ok(InvokeTarget::External(endpoint.clone()));
    }
    let parts: Vec<&str> = raw.split('.').collect();
    match parts.as_slice() {
        [id] => Ok(InvokeTarget::App {
            id: id.to_string(),
            namespace: None,
        }),
        [id, ns] if !id.is_empty() && !ns.is_empty() => Ok(InvokeTarget::App {
            id: id.to_string(),
            namespace: Some(ns.to_string()),
        }),
        _ => Err(InvokeError::InvalidAppId(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_namespaces_urls_and_endpoints() {
        let mut endpoints = BTreeMap::new();
        let ext = ExternalEndpoint {
            name: "github".into(),
            base_url: "http://127.0.0.1:9".into(),
            headers: vec![],
            tls: None,
        };
        endpoints.insert("github".to_string(), ext.clone());
        assert_eq!(
            parse_target("orders", &endpoints).unwrap(),
            InvokeTarget::App {
                id: "orders".into(),
                namespace: None
            }
        );
        assert_eq!(
            parse_target("orders.prod", &endpoints).unwrap(),
            InvokeTarget::App {
                id: "orders".into(),
                namespace: Some("prod".into())
            }
        );
        assert!(matches!(
            parse_target("a.b.c", &endpoints),
            Err(InvokeError::InvalidAppId(_))
        ));
        assert!(matches!(
            parse_target("", &endpoints),
            Err(InvokeError::NoAppId)
        ));
        assert_eq!(
            parse_target("github", &endpoints).unwrap(),
            InvokeTarget::External(ext)
        );
        let InvokeTarget::External(url) = parse_target("http://10.0.0.1:80/", &endpoints).unwrap()
        else {
            panic!("not external")
        };
        assert_eq!(
            url.url("/x?y=1").unwrap().to_string(),
            "http://10.0.0.1:80/x?y=1"
        );
        let InvokeTarget::External(tls) = parse_target("https://h", &endpoints).unwrap() else {
            panic!("not external")
        };
        assert_eq!(tls.url("/a").unwrap().to_string(), "https://h/a");
        let odd = ExternalEndpoint {
            name: "x".into(),
            base_url: "ftp://h".into(),
            headers: vec![],
            tls: None,
        };
        assert!(matches!(
            odd.url("/"),
            Err(InvokeError::UnsupportedScheme(_))
        ));
    }
}
