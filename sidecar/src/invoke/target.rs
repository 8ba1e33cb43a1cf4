//! What an invocation addresses: a Dapr app (`id` or `id.namespace`), an `HTTPEndpoint`
//! resource by name, or a full `http://host:port` URL.

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use tandem_components::spec::{HttpEndpointSpec, MetadataSource};

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

/// Resolves the `HTTPEndpoint` resources' headers (literal, `envRef`, or `secretKeyRef` through
/// `auth.secretStore`) once at start-up.
pub async fn load_endpoints(
    specs: &[HttpEndpointSpec],
    components: &ComponentSet,
) -> Result<BTreeMap<String, ExternalEndpoint>, String> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let context =
            |msg: String| format!("HTTPEndpoint {:?} ({}): {msg}", spec.name, spec.origin);
        let mut headers = Vec::new();
        for (i, item) in spec.headers.iter().enumerate() {
            let value = match &item.source {
                MetadataSource::Value(v) => v.clone(),
                MetadataSource::EnvRef(var) => std::env::var(var).map_err(|_| {
                    context(format!(
                        "spec.headers[{i}]: environment variable {var} is not set"
                    ))
                })?,
                MetadataSource::SecretKeyRef(secret) => {
                    let store_name = spec.secret_store.as_deref().ok_or_else(|| {
                        context(format!(
                            "spec.headers[{i}]: secretKeyRef needs auth.secretStore"
                        ))
                    })?;
                    let store = components.secret_store(store_name).ok_or_else(|| {
                        context(format!(
                            "spec.headers[{i}]: secret store {store_name:?} is not loaded"
                        ))
                    })?;
                    let values = store
                        .get_secret(&secret.name, &BTreeMap::new())
                        .await
                        .map_err(|e| context(format!("spec.headers[{i}]: {e}")))?;
                    let key = secret.key.as_deref().unwrap_or(&secret.name);
                    values.get(key).cloned().ok_or_else(|| {
                        context(format!(
                            "spec.headers[{i}]: secret {:?} has no key {key:?}",
                            secret.name
                        ))
                    })?
                }
            };
            let name = HeaderName::from_bytes(item.name.as_bytes())
                .map_err(|_| context(format!("spec.headers[{i}].name is not a header name")))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                context(format!(
                    "spec.headers[{i}]: the value is not a valid header value"
                ))
            })?;
            headers.push((name, value));
        }
        out.insert(
            spec.name.clone(),
            ExternalEndpoint {
                name: spec.name.clone(),
                base_url: spec.base_url.clone(),
                headers,
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
        };
        assert!(matches!(
            odd.url("/"),
            Err(InvokeError::UnsupportedScheme(_))
        ));
    }
}
